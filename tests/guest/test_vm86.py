"""Virtual-8086 mode (SDM vol. 3, ch. 20), driven by a guest monitor.

A 32-bit monitor copies a real-mode program to 0x20000, enters it with IRETD
(EFLAGS.VM) and services it: with IOPL 0, INT 10h, CLI and PUSHF fault to
the monitor's #GP handler, which emulates them; with IOPL 3, INT 10h goes
through the IDT to the monitor's vector-0x10 handler and CLI/PUSHF run
natively.  HLT always faults (CPL 3) and ends the run.  Paging is on, with a
user-accessible identity mapping, so every MMU mode is exercised."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

MMU_MODES = ("cached", "naive", "native")

MONITOR = r"""
    LOAD_GDT
    SET_TSS tss, 0x89
    mov dword [tss + 4], 0x80000      ; ESP0
    mov dword [tss + 8], 0x10         ; SS0
    ; IDT: #GP (13) and INT 10h (DPL 3, reachable from vm86 with IOPL 3)
    mov eax, gp_handler
    mov word [idt + 13 * 8], ax
    mov word [idt + 13 * 8 + 2], 0x08
    mov word [idt + 13 * 8 + 4], 0x8E00
    shr eax, 16
    mov word [idt + 13 * 8 + 6], ax
    mov eax, int10_handler
    mov word [idt + 0x10 * 8], ax
    mov word [idt + 0x10 * 8 + 2], 0x08
    mov word [idt + 0x10 * 8 + 4], 0xEE00
    shr eax, 16
    mov word [idt + 0x10 * 8 + 6], ax
    lidt [idtr]
    ; identity-map 4 MiB with one user-accessible PSE page
    mov dword [pgdir], 0x87
    mov eax, cr4
    or eax, 1 << 4
    mov cr4, eax
    mov eax, pgdir
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    ; copy the real-mode program to 0x2000:0000
    mov esi, rm_start
    mov edi, 0x20000
    mov ecx, rm_end - rm_start
    rep movsb
    push dword 0              ; GS
    push dword 0              ; FS
    push dword 0x2000         ; DS
    push dword 0x2000         ; ES
    push dword 0x2000         ; SS
    push dword 0xFFFE         ; ESP
    push dword (1 << 17) | (IOPL << 12) | 2   ; EFLAGS: VM, IOPL
    push dword 0x2000         ; CS
    push dword 0              ; EIP
    iretd

; #GP from vm86: [esp] error code, then EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS
gp_handler:
    push eax                  ; the vm86 program's EAX (AL/AH for INT 10h)
    mov eax, ds
    mov [entry_ds], eax       ; DS/ES/FS/GS are null on entry from vm86
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    movzx eax, word [esp + 12]          ; vm86 CS
    shl eax, 4
    movzx ebx, word [esp + 8]           ; vm86 IP
    add ebx, eax
    movzx ecx, byte [ebx]               ; the faulting opcode
    cmp cl, 0xCD
    je .int
    cmp cl, 0xFA
    je .cli
    cmp cl, 0x9C
    je .pushf
    cmp cl, 0xF4
    je .hlt
    PRINT "unexpected #GP", 10
    mov al, 7
    call exit
.int:
    cmp byte [ebx + 1], 0x10
    jne .bad_int
    mov eax, [esp]
    call bios_teletype
    inc dword [emulated]
    add word [esp + 8], 2
    jmp .resume
.bad_int:
    PRINT "unexpected INT", 10
    mov al, 8
    call exit
.cli:
    PRINT "[cli]"
    and dword [esp + 16], ~(1 << 9)     ; the virtual IF lives in the saved EFLAGS
    inc word [esp + 8]
    jmp .resume
.pushf:
    PRINT "[pushf]"
    movzx eax, word [esp + 24]          ; vm86 SS:SP - 2 <- FLAGS
    shl eax, 4
    movzx ecx, word [esp + 20]
    sub cx, 2
    mov [esp + 20], cx
    add eax, ecx
    mov ecx, [esp + 16]
    mov [eax], cx
    inc word [esp + 8]
    jmp .resume
.hlt:
    PRINT "[hlt] emulated INTs "
    mov eax, [emulated]
    call puthex
    PRINT " entry DS "
    mov eax, [entry_ds]
    call puthex
    PRINT " vm86 DS "
    movzx eax, word [esp + 32]
    call puthex
    mov al, 10
    call putc
    mov al, 0
    call exit
.resume:
    pop eax
    add esp, 4                ; the error code
    iretd

; INT 10h straight through the IDT (IOPL 3): EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS
int10_handler:
    push ds
    push eax
    mov ax, 0x10
    mov ds, ax
    pop eax
    call bios_teletype
    pop ds
    iretd

bios_teletype:                ; AH=0Eh: print AL
    cmp ah, 0x0E
    jne .done
    call putc
.done:
    ret

emulated: dd 0
entry_ds: dd 0xFFFF
align 8
idt: times 256 dq 0
idtr:
    dw 256 * 8 - 1
    dd idt
align 16
tss: times 0x68 db 0

bits 16
rm_start:                     ; runs at 2000:0000 with DS = ES = SS = 0x2000
    mov si, msg - rm_start
.next:
    lodsb
    test al, al
    jz .done
    mov ah, 0x0E
    int 0x10
    jmp .next
.done:
    cli
    pushf
    pop ax
    hlt
msg: db "real mode hello", 10, 0
rm_end:
bits 32
align 4096
pgdir: times 1024 dd 0
"""


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_vm86_monitor_emulates_int10_cli_and_pushf_with_iopl0(assemble, tmp_path, mmu):
    src = protected_mode_guest("%define IOPL 0\n" + MONITOR)
    result, out = run_multiboot_guest(assemble, tmp_path, src, mmu=mmu)
    assert out == ("real mode hello\n[cli][pushf][hlt] emulated INTs 00000010 "
                   "entry DS 00000000 vm86 DS 00002000\n")
    assert result.exit_status == 1


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_vm86_int10_through_the_idt_with_iopl3(assemble, tmp_path, mmu):
    src = protected_mode_guest("%define IOPL 3\n" + MONITOR)
    result, out = run_multiboot_guest(assemble, tmp_path, src, mmu=mmu)
    assert out == ("real mode hello\n[hlt] emulated INTs 00000000 "
                   "entry DS 00000000 vm86 DS 00002000\n")
    assert result.exit_status == 1
