"""Helpers for guest-code tests: a Multiboot prologue, serial output routines, a runner.

Guests are nasm sources assembled at test time.  ``protected_mode_guest``
wraps a body in a Multiboot a.out-kludge header, so the guest starts in flat
32-bit protected mode at 1 MiB with a stack, and provides ``putc``,
``puts`` (ESI), ``puthex`` (EAX) and ``exit`` (AL -> isa-debug-exit); the
64-bit variants ``putc64`` etc. are available after the guest enters long mode.
``interrupts=True`` adds the interrupt plumbing of :data:`INTERRUPT_HELPERS`: a
256-gate IDT, the 8259 pair, IOAPIC routes and PIT-timed waits.  ``smp=True`` adds
the AP start-up macros of ``benchmarks/guests/ap_startup.inc`` (``AP_TRAMPOLINE``,
``COPY_AP_TRAMPOLINE``, ``START_APS``), which the SMP benchmark guest shares.
"""

from __future__ import annotations

from pathlib import Path

from qemu_lite import Machine, RunResult
from qemu_lite.loaders import multiboot

PROLOGUE = r"""
bits 32
org 0x100000
%define ABS(x) ((x) - $$ + 0x100000)
mb_header:
    dd 0x1BADB002, 0x00010000, -(0x1BADB002 + 0x00010000)
    dd mb_header, mb_header, 0, 0, mb_start
mb_start:
    mov esp, 0x90000
    jmp main

putc:                       ; al -> COM1
    push edx
    push eax
    mov dx, 0x3FD
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop eax
    mov dx, 0x3F8
    out dx, al
    pop edx
    ret
puts:                       ; esi -> zero-terminated string
    push eax
.next:
    lodsb
    test al, al
    jz .done
    call putc
    jmp .next
.done:
    pop eax
    ret
puthex:                     ; eax -> 8 hex digits
    push ecx
    push eax
    mov ecx, 8
.digit:
    rol eax, 4
    push eax
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    call putc
    pop eax
    loop .digit
    pop eax
    pop ecx
    ret
exit:                       ; al -> isa-debug-exit
    out 0xF4, al
    hlt

%macro PRINT 1+
    jmp %%over
%%str: db %1, 0
%%over:
    push esi
    mov esi, %%str
    call puts
    pop esi
%endmacro

%macro GATE32 3             ; handler, selector, type/attr byte
    dw ABS(%1) & 0xFFFF
    dw %2
    db 0, %3
    dw ABS(%1) >> 16
%endmacro

%macro GATE64 4             ; handler, selector, type/attr byte, IST
    dw ABS(%1) & 0xFFFF
    dw %2
    db %4, %3
    dw (ABS(%1) >> 16) & 0xFFFF
    dd 0, 0
%endmacro

%macro IDT_GP32 1           ; an IDT (idt, idtr) whose only gate is #GP -> %1
align 8
idt:
    times 13 dq 0
    GATE32 %1, 0x08, 0x8E
idt_end:
idtr:
    dw idt_end - idt - 1
    dd idt
%endmacro

; A GDT with kernel/user segments; the TSS descriptor (0x28) is filled by SET_TSS
; (32-bit) or SET_TSS64.
align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF   ; 0x08 kernel code 32
    dq 0x00CF92000000FFFF   ; 0x10 kernel data
    dq 0x00CFFA000000FFFF   ; 0x18 user code 32 (DPL 3)
    dq 0x00CFF2000000FFFF   ; 0x20 user data (DPL 3)
    dq 0, 0                 ; 0x28 TSS (16 bytes so a 64-bit TSS fits)
    dq 0x00AF9A000000FFFF   ; 0x38 kernel code 64
    dq 0x00AFFA000000FFFF   ; 0x40 user code 64 (DPL 3)
gdt_end:
gdtr:
    dw gdt_end - gdt - 1
    dd gdt, 0

%macro PARK 0               ; halt for good with IF=0 (an AP whose work is done)
    cli
%%halt:
    hlt
    jmp %%halt
%endmacro

%macro LOAD_GDT 0
    lgdt [gdtr]
    jmp 0x08:%%reload
%%reload:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
%endmacro

%macro SET_TSS 2            ; tss label, type byte (0x89 = available 32/64-bit TSS)
    mov eax, %1
    mov word [gdt + 0x28], 0x67
    mov [gdt + 0x2A], ax
    shr eax, 16
    mov [gdt + 0x2C], al
    mov byte [gdt + 0x2D], %2
    mov byte [gdt + 0x2E], 0
    mov [gdt + 0x2F], ah
    mov ax, 0x28
    ltr ax
%endmacro
"""

INTERRUPT_HELPERS = r"""
%define APIC 0xFEE00000
%define IOAPIC 0xFEC00000
align 8
idt: times 256 dq 0
idtr:
    dw 256 * 8 - 1
    dd idt

%macro SET_GATE 2           ; vector, handler: a 32-bit interrupt gate (IF cleared)
    mov eax, %2
    mov word [idt + %1 * 8], ax
    mov word [idt + %1 * 8 + 2], 0x08
    mov word [idt + %1 * 8 + 4], 0x8E00
    shr eax, 16
    mov word [idt + %1 * 8 + 6], ax
%endmacro

%macro PIC_INIT 2           ; master mask, slave mask: IRQ 0-7 at 0x20, 8-15 at 0x28
    mov al, 0x11
    out 0x20, al
    out 0xA0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xA1, al
    mov al, 1
    out 0x21, al
    out 0xA1, al
    mov al, %1
    out 0x21, al
    mov al, %2
    out 0xA1, al
%endmacro

%macro PIC_MASK_ALL 0
    mov al, 0xFF
    out 0x21, al
    out 0xA1, al
%endmacro

%macro IOAPIC_ROUTE 3       ; pin, low dword (vector, mode, trigger, mask), high dword
    mov dword [IOAPIC], 0x10 + 2 * %1
    mov dword [IOAPIC + 0x10], %2
    mov dword [IOAPIC], 0x11 + 2 * %1
    mov dword [IOAPIC + 0x10], %3
%endmacro

wait_110ms:                 ; two full mode 0 runs of PIT counter 2, polled on port 0x61
    push eax
    push ecx
    mov ecx, 2
.again:
    in al, 0x61
    and al, 0xFC            ; speaker off
    or al, 1                ; gate 2 on
    out 0x61, al
    mov al, 0xB0            ; counter 2, LSB then MSB, mode 0: OUT2 low until 65535 clocks
    out 0x43, al
    mov al, 0xFF
    out 0x42, al
    out 0x42, al
.poll:
    in al, 0x61
    test al, 0x20
    jz .poll
    loop .again
    pop ecx
    pop eax
    ret

%macro WAIT_UNTIL 2         ; with IF=0: sti; hlt until the dword at %1 reaches %2
%%loop:
    cmp dword [%1], %2
    jae %%done
    sti                     ; the interrupt is taken after the HLT (STI shadow)
    hlt
    cli
    jmp %%loop
%%done:
%endmacro
"""

LONG_MODE_HELPERS = r"""
%macro SYSCALL_SETUP 2      ; entry, SFMASK: EFER.SCE on; STAR kernel CS 0x38 (SS 0x40),
    mov ecx, 0xC0000080     ; user base 0x30; LSTAR entry
    rdmsr
    or eax, 1
    wrmsr
    mov ecx, 0xC0000081
    xor eax, eax
    mov edx, 0x00300038
    wrmsr
    mov ecx, 0xC0000082
    mov rax, %1
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xC0000084
    mov eax, %2
    xor edx, edx
    wrmsr
%endmacro
bits 64
putc64:
    push rdx
    push rax
    mov dx, 0x3FD
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop rax
    mov dx, 0x3F8
    out dx, al
    pop rdx
    ret
puts64:
    push rax
.next:
    lodsb
    test al, al
    jz .done
    call putc64
    jmp .next
.done:
    pop rax
    ret
puthex64:                   ; rax -> 16 hex digits
    push rcx
    push rax
    mov ecx, 16
.digit:
    rol rax, 4
    push rax
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    call putc64
    pop rax
    loop .digit
    pop rax
    pop rcx
    ret
%macro PRINT64 1+
    jmp %%over
%%str: db %1, 0
%%over:
    push rsi
    mov rsi, %%str
    call puts64
    pop rsi
%endmacro

%macro SET_TSS64 1          ; 64-bit TSS label below 4 GiB: descriptor at 0x28, then LTR
    mov rax, %1
    mov word [gdt + 0x28], 0x67
    mov [gdt + 0x2A], ax
    shr rax, 16
    mov [gdt + 0x2C], al
    mov byte [gdt + 0x2D], 0x89
    mov byte [gdt + 0x2E], 0
    mov [gdt + 0x2F], ah
    mov dword [gdt + 0x30], 0
    mov ax, 0x28
    ltr ax
%endmacro
bits 32

; Identity-map the first 4 MiB with 2 MiB user pages and enter long mode at %1.
%macro ENTER_LONG_MODE 1
    mov edi, pml4
    mov dword [edi], pdpt + 7
    mov dword [pdpt], pd + 7
    mov dword [pd], 0x000087
    mov dword [pd + 8], 0x200087
    mov cr3, edi
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    jmp 0x38:%1
%endmacro

; The usual start of a long-mode guest: the GDT, long mode as above, flat DS and SS;
; what follows the macro is 64-bit code.
%macro START_LONG_MODE 0
    LOAD_GDT
    ENTER_LONG_MODE %%entry
bits 64
%%entry:
    mov ax, 0x10
    mov ds, ax
    mov ss, ax
%endmacro
"""

LONG_MODE_TABLES = r"""
align 4096
pml4: times 512 dq 0
pdpt: times 512 dq 0
pd:   times 512 dq 0
"""


# Indexed VGA registers: the sequencer, the graphics controller and Bochs' DISPI
# (index, value; they use DX and AL/AX).
VGA_HELPERS = r"""
%macro SEQ 2
    mov dx, 0x3C4
    mov al, %1
    out dx, al
    inc dx
    mov al, %2
    out dx, al
%endmacro
%macro GFX 2
    mov dx, 0x3CE
    mov al, %1
    out dx, al
    inc dx
    mov al, %2
    out dx, al
%endmacro
%macro DISPI 2
    mov dx, 0x1CE
    mov ax, %1
    out dx, ax
    inc dx
    mov ax, %2
    out dx, ax
%endmacro
"""

AP_STARTUP = (Path(__file__).parents[1] / "benchmarks" / "guests" / "ap_startup.inc").read_text()


def protected_mode_guest(body: str, long_mode: bool = False, interrupts: bool = False,
                         smp: bool = False) -> str:
    src = (PROLOGUE + (INTERRUPT_HELPERS if interrupts else "") + (AP_STARTUP if smp else "")
           + (LONG_MODE_HELPERS if long_mode else "") + "\nmain:\n" + body)
    if long_mode:
        src += LONG_MODE_TABLES
    return src


def run_multiboot_guest(assemble, tmp_path: Path, source: str, *, timeout: float = 20,
                        **machine_args) -> tuple[RunResult, str]:
    """Assemble ``source``, boot it as a Multiboot kernel, return the result and COM1 output."""
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(source))
    out = bytearray()
    machine_args.setdefault("memory", "32M")
    with Machine(serial="none", **machine_args) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=timeout)
    return result, out.decode(errors="replace")


# Address spaces n = 0, 1, ...: page directory PD(n), its first page table PT(n);
# SWITCH n loads CR3, READ v prints the dword at virtual v and a space.
ADDRESS_SPACES = r"""
%define PD(n) (0x200000 + (n) * 0x2000)
%define PT(n) (PD(n) + 0x1000)
%macro SWITCH 1
    mov eax, PD(%1)
    mov cr3, eax
%endmacro
%macro READ 1
    mov eax, [%1]
    call puthex
    mov al, ' '
    call putc
%endmacro
"""


def run_mmu_guest(assemble, tmp_path: Path, body: str, mmu: str, *,
                  contexts: int | None = None, global_pages: bool | None = None,
                  unsync: bool = False, prefetch: int = 0,
                  address_spaces: bool = True) -> tuple[list[str], dict]:
    """Run a protected-mode guest (:data:`ADDRESS_SPACES` included unless
    ``address_spaces=False``) with the shadow
    MMU configured as given; it must exit with status 1 and pass the MMU's audit.
    Returns the words it printed and ``mmu_stats()``."""
    kernel = tmp_path / "guest.bin"
    source = protected_mode_guest((ADDRESS_SPACES if address_spaces else "") + body)
    kernel.write_bytes(assemble(source))
    out = bytearray()
    with Machine(serial="none", memory="32M", mmu=mmu) as m:
        if contexts is not None:
            m.core.set_tlb_contexts(contexts)
        if global_pages is not None:
            m.core.set_global_pages(global_pages)
        if prefetch:
            m.core.set_pte_prefetch(prefetch)
        if mmu != "native":
            m.core.set_unsync(unsync)
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=20)
        assert result.reason == "exit" and result.exit_status == 1, (result, bytes(out))
        stats = m.core.mmu_stats()
        if mmu != "native":
            assert m.core.audit() == []
    return out.decode().split(), stats
