"""INT n and SYSCALL of a 64-bit guest: the C path in the engine's hooks
(mmu_core/fastevent.pxi) gives the guest exactly what the Python path
(qemu_lite/events.py, VCpu.do_syscall) gives.

One guest takes software interrupts through every gate kind the C path handles
(interrupt and trap gates, DPL 0 and 3, same privilege, RSP0 and IST stacks,
INT3), one it hands back to Python (a ring-3 INT n through a DPL-0 gate: #GP),
and a SYSCALL whose SFMASK clears arithmetic flags and DF.  Each handler prints
the frame the CPU pushed, its own stack pointer, EFLAGS and the flags as
conditional instructions see them on entry; the run with the C path and the run
forced through Python must print the same, and the C path must have done the work.
"""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

pytestmark = pytest.mark.requires_patched_engine("i")  # the CPU state in place

BODY = r"""
    START_LONG_MODE
    mov rsp, 0x80000
    SET_TSS64 tss64
    mov qword [tss64 + 4], 0x90000          ; RSP0
    mov qword [tss64 + 0x24], ist1_top + 8  ; IST1 (misaligned: the CPU aligns it)
    lidt [idtr64]
    SYSCALL_SETUP syscall_entry, 0x40641  ; SFMASK: AC, DF, IF, ZF, CF
    mov al, 0xFF              ; no device interrupt may come in between
    out 0x21, al
    out 0xA1, al
    sti
    stc
    int 0x50                  ; ring 0, interrupt gate: IF cleared
    int 0x51                  ; ring 0, trap gate: IF kept
    xor eax, eax              ; ZF PF
    int 0x52                  ; ring 0, interrupt gate on IST1
    push 0x23                 ; to ring 3
    push 0x70003              ; odd: RSP0's frame is not aligned for us
    push 0x202
    push 0x43
    push user_code
    iretq

user_code:
    mov eax, 0x80000000
    add eax, eax              ; CF ZF PF OF
    int 0x60                  ; ring 3 -> 0, interrupt gate, RSP0
    int 0x61                  ; ring 3 -> 0, trap gate on IST1
    int3                      ; ring 3 -> 0, vector 3
    int 0x50                  ; DPL 0 gate from ring 3: #GP(0x282)
after_gp:
    push 0xED7                ; OF DF IF SF ZF AF PF CF
    popfq
    syscall
after_syscall:
    int 0x81                  ; exit

%macro HANDLER 1
h%1:
    pushfq
    push %1
    jmp report
%endmacro
    HANDLER 0x50
    HANDLER 0x51
    HANDLER 0x52
    HANDLER 0x60
    HANDLER 0x61
    HANDLER 3

report:                       ; [rsp] vector, [rsp+8] EFLAGS on entry, [rsp+16] the frame
    PRINT64 "int "
    mov rax, [rsp]
    call puthex64
    PRINT64 " fl="
    mov rax, [rsp + 8]
    call puthex64
    PRINT64 " frame="
    mov rbx, 16
.frame:
    mov rax, [rsp + rbx]
    call puthex64
    mov al, ' '
    call putc64
    add rbx, 8
    cmp rbx, 56
    jne .frame
    PRINT64 "rsp="
    lea rax, [rsp + 16]
    call puthex64
    PRINT64 " cs="
    mov ax, cs
    movzx eax, ax
    call puthex64
    PRINT64 " ss="
    mov ax, ss
    movzx eax, ax
    call puthex64
    mov al, 10
    call putc64
    add rsp, 16
    iretq

hgp:
    PRINT64 "gp err="
    mov rax, [rsp]
    call puthex64
    mov al, 10
    call putc64
    add rsp, 8
    mov rax, after_gp         ; on past the INT
    mov [rsp], rax
    iretq

syscall_entry:
    pushfq
    setc r8b
    setz r9b
    sets r10b
    seto r12b
    setp r13b
    PRINT64 "syscall fl="
    pop rax
    call puthex64
    PRINT64 " r11="
    mov rax, r11
    call puthex64
    PRINT64 " rcx-ok="
    mov rax, after_syscall
    cmp rcx, rax
    sete al
    add al, '0'
    call putc64
    PRINT64 " c z s o p="
    mov al, r8b
    add al, '0'
    call putc64
    mov al, r9b
    add al, '0'
    call putc64
    mov al, r10b
    add al, '0'
    call putc64
    mov al, r12b
    add al, '0'
    call putc64
    mov al, r13b
    add al, '0'
    call putc64
    PRINT64 " cs="
    mov ax, cs
    movzx eax, ax
    call puthex64
    PRINT64 " ss="
    mov ax, ss
    movzx eax, ax
    call puthex64
    PRINT64 " rsp="
    mov rax, rsp
    call puthex64
    mov al, 10
    call putc64
    and r11, ~0x400           ; ring 3 gets DF clear back (the exit handler prints)
    o64 sysret

hexit:
    PRINT64 "exit rsp="
    mov rax, rsp
    call puthex64
    mov al, 10
    call putc64
    mov al, 0
    out 0xF4, al

align 16
idt64:
%assign v 0
%rep 0x82
  %if v == 3
    GATE64 h3, 0x38, 0xEE, 0
  %elif v == 13
    GATE64 hgp, 0x38, 0x8E, 0
  %elif v == 0x50
    GATE64 h0x50, 0x38, 0x8E, 0
  %elif v == 0x51
    GATE64 h0x51, 0x38, 0x8F, 0
  %elif v == 0x52
    GATE64 h0x52, 0x38, 0x8E, 1
  %elif v == 0x60
    GATE64 h0x60, 0x38, 0xEE, 0
  %elif v == 0x61
    GATE64 h0x61, 0x38, 0xEF, 1
  %elif v == 0x81
    GATE64 hexit, 0x38, 0xEE, 0
  %else
    dq 0, 0
  %endif
  %assign v v + 1
%endrep
idt64_end:
idtr64:
    dw idt64_end - idt64 - 1
    dq idt64
align 16
tss64: times 0x68 db 0
align 16
    times 512 db 0
ist1_top:
    times 64 db 0
"""


def _run_one(kernel, disk, fast: bool) -> tuple[str, tuple[int, int], int | None]:
    out = bytearray()
    with Machine(disk, memory="16M") if disk is not None else \
            Machine(serial="none", memory="32M") as m:
        m.board.com1.add_output_listener(out.extend)
        if kernel is not None:
            multiboot.load(m, kernel)
        m.cpu.fast_events = fast
        assert m.cpu.fast_events == fast
        result = m.run(timeout=30)
        counts = m.core.fast_event_counts()
    return out.decode(errors="replace"), counts, result.exit_status


def _both_paths(kernel=None, disk=None) -> tuple[str, tuple[int, int]]:
    """Run the guest on the C path and on the Python path: the same output and exit
    status 1 on both, nothing in C on the second.  Returns the output and the C
    path's counts."""
    c_out, c_counts, c_status = _run_one(kernel, disk, True)
    py_out, py_counts, py_status = _run_one(kernel, disk, False)
    assert c_out == py_out
    assert c_status == py_status == 1
    assert py_counts == (0, 0)
    return c_out, c_counts


def test_int_gates_and_syscall_same_on_c_and_python_paths(assemble, tmp_path):
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(BODY, long_mode=True)))
    c_out, c_counts = _both_paths(kernel=kernel)
    # Seven software interrupts in C (0x50-0x52, 0x60, 0x61, INT3, the exit), one
    # handed to Python (#GP), the SYSCALL in C.
    assert c_counts == (7, 1)
    lines = c_out.splitlines()
    assert len(lines) == 9, c_out
    # ring 0, interrupt gate: IF (0x200) pushed set, clear on entry, CF ZF PF kept;
    # the same stack, 16-byte aligned
    assert lines[0].startswith("int 0000000000000050 fl=0000000000000047 frame=")
    assert lines[0].endswith(" 0000000000000038 0000000000000247 0000000000080000 "
                             "0000000000000010 rsp=000000000007FFD8 cs=0000000000000038 "
                             "ss=0000000000000010")
    # trap gate: IF stays set
    assert lines[1].startswith("int 0000000000000051 fl=0000000000000247 ")
    # IST1: its top aligned down, no privilege change so SS kept
    assert lines[2].startswith("int 0000000000000052 fl=0000000000000046 ")
    assert lines[2].endswith(" cs=0000000000000038 ss=0000000000000010")
    assert lines[2].split()[-3] != "rsp=000000000007FFD8"
    # ring 3 -> 0 through RSP0: SS null with RPL 0; the user's SS:RSP (odd) pushed
    assert lines[3].startswith("int 0000000000000060 fl=0000000000000847 ")
    assert lines[3].endswith(" 0000000000000043 0000000000000A47 0000000000070003 "
                             "0000000000000023 rsp=000000000008FFD8 cs=0000000000000038 "
                             "ss=0000000000000000")
    # ring 3 -> 0 trap gate on IST1: IF kept, the IST stack as for vector 0x52
    assert lines[4].startswith("int 0000000000000061 fl=0000000000000A47 ")
    assert lines[4].split()[-3] == lines[2].split()[-3]
    assert lines[5].startswith("int 0000000000000003 fl=0000000000000847 ")
    assert lines[6] == "gp err=0000000000000282"
    # SYSCALL: SFMASK cleared CF ZF DF IF; OF SF AF PF stay, as flags and as conditions
    assert lines[7] == ("syscall fl=0000000000000896 r11=0000000000000ED7 rcx-ok=1 "
                        "c z s o p=00111 cs=0000000000000038 ss=0000000000000040 "
                        "rsp=0000000000070003")
    assert lines[8] == "exit rsp=000000000008FFD8"


BODY32 = r"""
    LOAD_GDT
    SET_TSS tss32, 0x89
    mov dword [tss32 + 4], 0x90000          ; ESP0
    mov word [tss32 + 8], 0x10              ; SS0
    lidt [idtr32]
    mov esp, 0x80000
    mov al, 0xFF              ; no device interrupt may come in between
    out 0x21, al
    out 0xA1, al
    sti
    stc
    int 0x50                  ; ring 0, interrupt gate: IF cleared
    int 0x51                  ; ring 0, trap gate: IF kept
    mov dword [resume], after_np
    int 0x52                  ; ring 0, gate not present: #NP(0x292), Python's
after_np:
    push 0x23                 ; to ring 3
    push 0x70003
    push 0x202
    push 0x1B
    push user32
    iret

user32:
    mov eax, 0x80000000
    add eax, eax              ; CF ZF PF OF
    int 0x60                  ; ring 3 -> 0, interrupt gate, SS0:ESP0
    int 0x61                  ; ring 3 -> 0, trap gate
    int3
    int 0x50                  ; DPL 0 gate from ring 3: #GP(0x282), Python's
after_gp32:
    int 0x81                  ; exit

%macro HANDLER32 1
g%1:
    pushfd
    push ds
    push %1
    mov ax, 0x10
    mov ds, ax
    jmp report32
%endmacro
    HANDLER32 0x50
    HANDLER32 0x51
    HANDLER32 0x60
    HANDLER32 0x61
    HANDLER32 3

report32:                     ; [esp] vector, DS, EFLAGS on entry, then the frame
    PRINT "int "
    mov eax, [esp]
    call puthex
    PRINT " fl="
    mov eax, [esp + 8]
    call puthex
    PRINT " frame="
    mov ebx, 12
.frame:
    mov eax, [esp + ebx]
    call puthex
    mov al, ' '
    call putc
    add ebx, 4
    cmp ebx, 32
    jne .frame
    PRINT "esp="
    lea eax, [esp + 12]
    call puthex
    PRINT " cs="
    mov ax, cs
    movzx eax, ax
    call puthex
    PRINT " ss="
    mov ax, ss
    movzx eax, ax
    call puthex
    mov al, 10
    call putc
    add esp, 4
    pop ds
    popfd
    iret

gfault:                       ; #NP, #GP: print the error code, go on at [resume]
    push ds
    mov ax, 0x10
    mov ds, ax
    PRINT "fault err="
    mov eax, [esp + 4]
    call puthex
    mov al, 10
    call putc
    mov eax, [resume]
    mov [esp + 8], eax
    mov dword [resume], after_gp32
    pop ds
    add esp, 4
    iret
resume: dd after_gp32

gexit:
    mov ax, 0x10
    mov ds, ax
    PRINT "exit esp="
    mov eax, esp
    call puthex
    mov al, 10
    call putc
    mov al, 0
    out 0xF4, al

align 8
idt32:
%assign v 0
%rep 0x82
  %if v == 3
    GATE32 g3, 0x08, 0xEE
  %elif v == 11
    GATE32 gfault, 0x08, 0x8E
  %elif v == 13
    GATE32 gfault, 0x08, 0x8E
  %elif v == 0x50
    GATE32 g0x50, 0x08, 0x8E
  %elif v == 0x51
    GATE32 g0x51, 0x08, 0x8F
  %elif v == 0x52
    GATE32 g0x50, 0x08, 0x0E
  %elif v == 0x60
    GATE32 g0x60, 0x08, 0xEE
  %elif v == 0x61
    GATE32 g0x61, 0x08, 0xEF
  %elif v == 0x81
    GATE32 gexit, 0x08, 0xEE
  %else
    dq 0
  %endif
  %assign v v + 1
%endrep
idt32_end:
idtr32:
    dw idt32_end - idt32 - 1
    dd idt32
align 16
tss32: times 0x68 db 0
"""


def test_protected_mode_int_gates_same_on_c_and_python_paths(assemble, tmp_path):
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(BODY32)))
    c_out, c_counts = _both_paths(kernel=kernel)
    # 0x50, 0x51, 0x60, 0x61, INT3 and the exit in C; the #NP and the #GP in Python
    assert c_counts == (6, 0)
    lines = c_out.splitlines()
    assert len(lines) == 8, c_out
    # ring 0: IF pushed set, clear on entry through the interrupt gate, kept by the trap gate
    assert lines[0].startswith("int 00000050 fl=00000003 frame=")
    assert " 00000008 00000203 " in lines[0]
    assert lines[0].endswith(" esp=0007FFF4 cs=00000008 ss=00000010")
    assert lines[1].startswith("int 00000051 fl=00000203 ")
    assert lines[2] == "fault err=00000292"
    # ring 3 -> 0: SS0:ESP0 from the TSS, the user's SS:ESP pushed
    assert lines[3].startswith("int 00000060 fl=00000847 ")
    assert lines[3].endswith(" 0000001B 00000A47 00070003 00000023 esp=0008FFEC "
                             "cs=00000008 ss=00000010")
    assert lines[4].startswith("int 00000061 fl=00000A47 ")
    assert lines[5].startswith("int 00000003 fl=00000847 ")
    assert lines[6] == "fault err=00000282"
    assert lines[7] == "exit esp=0008FFEC"


# Real mode, booted by our BIOS: INT 0x60 through the IVT to a handler seen through
# another CS, once on an ordinary stack and once where the three words wrap around
# the 64 KiB stack segment; the handler prints with INT 10h (the BIOS's own IVT path).
MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    mov word [0x60 * 4], handler - 0x7B00
    mov word [0x60 * 4 + 2], 0x07B0
    sti
    stc
    int 0x60
    cli
    mov ax, 0x2000
    mov ss, ax
    mov sp, 0x0002            ; FLAGS at 2000:0000, CS and IP at 2000:FFFE and FFFC
    int 0x60
    xor ax, ax
    mov ss, ax
    mov sp, 0x7C00
    mov al, 0
    out 0xF4, al

handler:                      ; [bp+2] FLAGS on entry, [bp+4] IP, [bp+6] CS, [bp+8] FLAGS
    pushf
    push bp
    mov bp, sp
    mov ax, [bp + 2]
    call hex16
    mov ax, [bp + 4]
    call hex16
    mov ax, [bp + 6]
    call hex16
    mov ax, [bp + 8]
    call hex16
    mov ax, cs
    call hex16
    mov ax, sp
    call hex16
    mov ax, 0x0E0D
    int 0x10
    mov ax, 0x0E0A
    int 0x10
    pop bp
    popf
    iret

hex16:                        ; AX as 4 hex digits and a space, through INT 10h
    push cx
    push ax
    mov cx, 4
.digit:
    rol ax, 4
    push ax
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    mov ah, 0x0E
    int 0x10
    pop ax
    loop .digit
    mov ax, 0x0E20
    int 0x10
    pop ax
    pop cx
    ret
times 510 - ($ - $$) db 0
    dw 0xAA55
"""


def test_real_mode_int_same_on_c_and_python_paths(assemble, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(assemble(MBR) + bytes(512 * 63))
    c_out, c_counts = _both_paths(disk=disk)
    assert c_counts[0] > 60     # our two, the BIOS's INT 10h and the boot's INT 13h/19h
    lines = [line.split() for line in c_out.splitlines()]
    lines = [w for w in lines if len(w) == 6 and all(len(x) == 4 for x in w)]
    assert len(lines) == 2, c_out
    # IF cleared on entry (ZF PF kept); the return IP, CS 0000 and the old FLAGS pushed;
    # the handler runs at 07B0 with SP three words (and its own two) lower, wrapped
    assert lines[0][0] == "0047" and lines[0][2:] == ["0000", "0247", "07B0", "7BF6"]
    assert lines[1][0] == "0047" and lines[1][2:] == ["0000", "0047", "07B0", "FFF8"]
