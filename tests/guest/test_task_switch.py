"""Task switches through task gates (SDM vol. 3, ch. 8), seen by guest code.

The kernel runs in task A (TSS selector 0x28); a second TSS at 0x48 is the
target of the task gates.  Each guest reports what it observed (link field,
busy bits, EFLAGS.NT, error codes, TR) on COM1."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

from qemu_lite import engine

MMU_MODES = ("cached", "naive", "native")

# gdt2 (0x48) follows the common GDT: a second TSS descriptor, a spare (0x50), 32-bit
# code based at the image (0x58) and a 16-bit data/stack segment (0x60).
EXTRA_GDT = ("gdt2: dq 0\ngdt3: dq 0\ngdt4: dq 0x00CF9A100000FFFF\n"
             "gdt5: dq 0x000092000000FFFF\ngdt2_end:\n")

SETUP = r"""
    jmp setup
%macro TASK_GATE 2            ; vector, TSS selector
    mov word [idt + %1 * 8], 0
    mov word [idt + %1 * 8 + 2], %2
    mov word [idt + %1 * 8 + 4], 0x8500
    mov word [idt + %1 * 8 + 6], 0
%endmacro
%macro TSS_DESC 3             ; descriptor address, tss, limit
    mov eax, %2
    mov word [%1], %3
    mov [%1 + 2], ax
    shr eax, 16
    mov [%1 + 4], al
    mov byte [%1 + 5], 0x89
    mov byte [%1 + 6], 0
    mov [%1 + 7], ah
%endmacro
%macro TASK 3                 ; tss, eip, esp: a flat ring-0 task with the current CR3
    mov dword [%1 + 0x20], %2
    mov dword [%1 + 0x24], 0x2
    mov dword [%1 + 0x38], %3
    mov word [%1 + 0x48], 0x10
    mov word [%1 + 0x4C], 0x08
    mov word [%1 + 0x50], 0x10
    mov word [%1 + 0x54], 0x10
    mov word [%1 + 0x58], 0x10
    mov word [%1 + 0x5C], 0x10
    mov eax, cr3
    mov [%1 + 0x1C], eax
%endmacro
newline:
    push eax
    mov al, 10
    call putc
    pop eax
    ret
space:
    push eax
    mov al, ' '
    call putc
    pop eax
    ret
setup:
    lgdt [gdtr2]
    jmp 0x08:.cs
.cs:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    SET_TSS tss_a, 0x89
    lidt [idtr]
    jmp body
align 16
gdtr2:
    dw gdt2_end - gdt - 1
    dd gdt
align 16
tss_a: times 0x68 db 0
tss_b: times 0x68 db 0
body:
"""


def _guest(body: str) -> str:
    src = protected_mode_guest(SETUP + body, interrupts=True)
    return src.replace("gdt_end:\ngdtr:", EXTRA_GDT + "gdt_end:\ngdtr:")


def _run(assemble, tmp_path, body: str, mmu: str) -> str:
    result, out = run_multiboot_guest(assemble, tmp_path, _guest(body), mmu=mmu,
                                      no_reboot=True)
    assert result.exit_status == 1, (result, out)
    return out


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_double_fault_task_gate_catches_a_kernel_stack_overflow(assemble, tmp_path, mmu):
    """The stack runs into a not-present guard page: the #PF cannot push its frame,
    so #DF is raised, and its task gate switches to a task with a good stack."""
    body = r"""
    TSS_DESC gdt2, tss_b, 0x67
    TASK tss_b, df_task, 0x80000
    TASK_GATE 8, 0x48
    SET_GATE 14, pf_handler
    ; identity-map 4 MiB with 4 KiB pages, the page at 0x300000 not present
    mov edi, ptab
    mov eax, 0x3
    mov ecx, 1024
.map:
    stosd
    add eax, 0x1000
    loop .map
    mov dword [ptab + (0x300000 >> 12) * 4], 0
    mov dword [pgdir], ptab + 3
    mov eax, pgdir
    mov cr3, eax
    mov [tss_b + 0x1C], eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    PRINT "recursing", 10
    mov esp, 0x301000 + 64
    mov ebx, 0
recurse:
    inc ebx
    call recurse              ; overflows into the guard page

pf_handler:                   ; never reached: its frame cannot be pushed
    PRINT "pf handler ran", 10
    mov al, 7
    call exit

df_task:
    PRINT "double fault task: error "
    pop eax                   ; #DF pushes 0 on the new task's stack
    call puthex
    call space
    movzx eax, word [tss_b]   ; link = the overflowing task
    call puthex
    call space
    pushfd
    pop eax
    and eax, 1 << 14          ; NT
    call puthex
    call space
    str ax
    call puthex
    call space
    mov eax, [tss_a + 0x38]   ; the old task's ESP, saved at the switch
    call puthex
    call space
    mov eax, cr2
    call puthex
    call space
    mov eax, cr0
    and eax, 1 << 3           ; TS
    call puthex
    call newline
    mov al, 0
    call exit
align 4096
pgdir: times 1024 dd 0
ptab: times 1024 dd 0
"""
    out = _run(assemble, tmp_path, body, mmu)
    assert out == ("recursing\n"
                   "double fault task: error 00000000 00000028 00004000 00000048 00301000 "
                   "00300FFC 00000008\n")


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_interrupt_task_gate_nests_and_iret_returns_to_the_interrupted_task(
        assemble, tmp_path, mmu):
    """INT 0x40 through a task gate: link, busy bits and NT set; IRET (NT) goes back
    and clears the handler task's busy bit; the next INT resumes the handler
    task after its IRET, because the switch back saved its EIP."""
    body = r"""
    TSS_DESC gdt2, tss_b, 0x67
    TASK tss_b, handler_task, 0x80000
    TASK_GATE 0x40, 0x48
    mov eax, 0x1111
    int 0x40
    PRINT "back "
    call puthex               ; EAX survives: it was saved in the old TSS
    call space
    mov eax, [gdt2 + 4]       ; the handler TSS is available again (type 9)
    shr eax, 8
    and eax, 0xF
    call puthex
    call newline
    int 0x40
    PRINT "back again", 10
    mov al, 0
    call exit

handler_task:
    PRINT "task "
    movzx eax, word [tss_b]   ; link
    call puthex
    call space
    pushfd
    pop eax
    and eax, 1 << 14
    call puthex
    call space
    mov eax, [gdt + 0x2C]     ; both TSSs busy (type 0xB)
    shr eax, 8
    and eax, 0xF
    call puthex
    mov eax, [gdt2 + 4]
    shr eax, 8
    and eax, 0xF
    call puthex
    call newline
    iretd
    PRINT "task resumed after its iret", 10
    iretd
"""
    out = _run(assemble, tmp_path, body, mmu)
    assert out == ("task 00000028 00004000 0000000B0000000B\n"
                   "back 00001111 00000009\n"
                   "task resumed after its iret\n"
                   "back again\n")


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_task_gate_faults_short_tss_and_busy_tss(assemble, tmp_path, mmu):
    """A TSS below the 32-bit minimum limit is #TS(selector); a task gate to the
    running (busy) task is #GP(selector); both are raised in the current task."""
    body = r"""
    TSS_DESC gdt2, tss_b, 0x40  ; limit 0x40 < 0x67
    TASK_GATE 0x40, 0x48
    TASK_GATE 0x41, 0x28        ; the current task: busy
    SET_GATE 10, ts_handler
    SET_GATE 13, gp_handler
int40_at:
    int 0x40
int41_at:
    int 0x41
    PRINT "done", 10
    mov al, 0
    call exit
%macro FAULT_AT 1               ; print whether the frame returns to %1, then skip its INT n
    cmp dword [esp], %1
    sete al
    add al, '0'
    call putc
    add dword [esp], 2
%endmacro
ts_handler:
    PRINT "#TS "
    pop eax
    call puthex
    PRINT " at int="            ; a fault of the INT n itself: EIP is the INT's
    FAULT_AT int40_at
    call newline
    iretd
gp_handler:
    PRINT "#GP "
    pop eax
    call puthex
    PRINT " at int="
    FAULT_AT int41_at
    call newline
    iretd
"""
    out = _run(assemble, tmp_path, body, mmu)
    assert out == "#TS 00000048 at int=1\n#GP 00000028 at int=1\ndone\n"


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_jmp_between_tasks_moves_the_busy_bit_and_sets_no_link(assemble, tmp_path, mmu):
    """JMP to a TSS (run natively by the engine): the old task becomes available, the
    new one busy, NT stays clear; jumping back resumes the first task after its JMP."""
    body = r"""
    TSS_DESC gdt2, tss_b, 0x67
    TASK tss_b, task_b, 0x80000
    mov word [tss_b], 0x1234  ; link: must stay untouched by a JMP
    jmp 0x48:0
    PRINT "A resumed "
    mov eax, [gdt + 0x2C]
    shr eax, 8
    and eax, 0xF
    call puthex
    mov eax, [gdt2 + 4]
    shr eax, 8
    and eax, 0xF
    call puthex
    call newline
    mov al, 0
    call exit
task_b:
    PRINT "B "
    mov eax, [gdt + 0x2C]     ; task A: available again (9)
    shr eax, 8
    and eax, 0xF
    call puthex
    mov eax, [gdt2 + 4]       ; task B: busy (B)
    shr eax, 8
    and eax, 0xF
    call puthex
    call space
    movzx eax, word [tss_b]
    call puthex
    call space
    pushfd
    pop eax
    and eax, 1 << 14
    call puthex
    call newline
    jmp 0x28:0
"""
    out = _run(assemble, tmp_path, body, mmu)
    assert out == ("B 000000090000000B 00001234 00000000\n"
                   "A resumed 0000000B00000009\n")


@pytest.mark.skipif(not engine.is_patched("j"), reason="the stock engine's IRET saves a "
                    "16-bit task in the 32-bit TSS layout (engine patch j)")
@pytest.mark.parametrize("mmu", MMU_MODES)
def test_task_gates_into_a_16_bit_tss(assemble, tmp_path, mmu):
    """INT 0x40 through a task gate to a 16-bit TSS (type 1): the task starts at the
    TSS's IP (in a code segment based at 1 MiB, so IP fits 16 bits) with its AX,
    the 32-bit task's link, busy type 3 and NT; its IRET (the engine's switch,
    patch j) stores its state in the 16-bit layout, and a #GP through a second
    task gate resumes it there with a 16-bit error code on its stack. EAX of the
    32-bit task survives the round trip."""
    body = r"""
    TSS_DESC gdt3, tss16, 0x2B
    mov byte [gdt3 + 5], 0x81   ; 16-bit TSS, available
    mov word [tss16 + 0x0E], task16 - $$   ; IP
    mov word [tss16 + 0x10], 0x2    ; FLAGS
    mov word [tss16 + 0x12], 0x1616 ; AX
    mov word [tss16 + 0x1A], 0xF000 ; SP
    mov word [tss16 + 0x22], 0x10   ; ES
    mov word [tss16 + 0x24], 0x58   ; CS
    mov word [tss16 + 0x26], 0x60   ; SS: 16-bit, so only SP counts
    mov word [tss16 + 0x28], 0x10   ; DS
    TASK_GATE 0x40, 0x50
    TASK_GATE 13, 0x50
    mov eax, 0x1111
    int 0x40
    PRINT "back "
    call puthex
    call space
    mov eax, [gdt3 + 4]         ; the 16-bit TSS is available again (type 1)
    shr eax, 8
    and eax, 0xF
    call puthex
    call newline
    mov ax, 0x1235
    mov ds, ax                  ; #GP(0x1234): beyond the GDT
    PRINT "no fault", 10
    mov al, 7
    call exit

task16:
    movzx eax, ax
    PRINT "t16 "
    call puthex
    call space
    movzx eax, word [tss16]     ; link
    call puthex
    call space
    mov eax, [gdt3 + 4]         ; busy 16-bit TSS (type 3)
    shr eax, 8
    and eax, 0xF
    call puthex
    call space
    pushfd
    pop eax
    and eax, 1 << 14
    call puthex
    call newline
    mov ebx, esp
    iretd
    sub ebx, esp                ; the error code: one word
    o16 pop ax
    movzx eax, ax
    PRINT "#GP in t16 "
    call puthex
    call space
    mov eax, ebx
    call puthex
    call newline
    mov al, 0
    call exit
align 16
tss16: times 0x2C db 0
"""
    out = _run(assemble, tmp_path, body, mmu)
    assert out == ("t16 00001616 00000028 00000003 00004000\n"
                   "back 00001111 00000001\n"
                   "#GP in t16 00001234 00000002\n")
