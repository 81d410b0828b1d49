"""Non-canonical addresses in 64-bit mode: #GP(0), or #SS(0) for stack references.

SDM vol. 1 3.3.7.1 and vol. 3 6.15: a memory reference to a non-canonical
address raises #GP(0), or #SS(0) when it goes through SS (implicit stack
operations, or RSP/RBP as the base register).  A canonical address that is not
mapped still raises #PF.  The handlers run on an IST stack, so a non-canonical
RSP does not turn delivery into a double fault.
"""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

from qemu_lite import Machine
from qemu_lite.canonical import is_stack_fault
from qemu_lite.loaders import multiboot

NONCANON = 0x8000000000000000

BODY = r"""
    START_LONG_MODE
    SET_TSS64 tss64
    mov qword [tss64 + 0x24], ist1_top
    lidt [idtr64]
    mov rsp, 0x80000
    mov [good_rsp], rsp
    mov r14, 0x8000000000000000         ; non-canonical, upper hole
    mov r13, 0xFFFF7FFFFFFFF000         ; non-canonical, just below the upper half

%macro CASE 3                           ; name, set-up, instruction
    PRINT64 %1, ": "
    mov qword [resume], %%after
    mov qword [expect_rip], %%insn
    %2
%%insn:
    %3
    PRINT64 "no fault", 10
%%after:
    mov rsp, [good_rsp]
%endmacro

    mov rbx, 0x0000800000000000         ; the first non-canonical address
    mov rcx, 0x00007FFFFFFFFFF8         ; canonical, not mapped
    CASE "load", {}, {mov rax, [r14]}
    CASE "store", {}, {mov [r13 + 8], rax}
    CASE "unmapped", {}, {mov rax, [rcx]}
    CASE "jmp", {}, {jmp rbx}
    CASE "call", {}, {call rbx}
    CASE "push", {mov rsp, r14}, {push rax}
    CASE "pop", {mov rsp, r13}, {pop rax}
    CASE "rbp", {mov rbp, r13}, {mov rax, [rbp + 16]}
    CASE "rsp", {mov rsp, r14}, {mov [rsp + 8], eax}
    CASE "fs", {mov rbp, r13}, {mov rax, [fs:rbp]}
    PRINT64 "done", 10
    mov al, 0
    out 0xF4, al

ss_handler:
    mov r15, 12
    jmp fault_common
gp_handler:
    mov r15, 13
    jmp fault_common
pf_handler:
    mov r15, 14
fault_common:                               ; [rsp] error code, [rsp + 8] RIP, [rsp + 32] RSP
    PRINT64 "vec="
    mov rax, r15
    call puthex64
    PRINT64 " err="
    mov rax, [rsp]
    call puthex64
    mov rax, [rsp + 8]
    cmp rax, [expect_rip]
    jne .target
    PRINT64 " rip=insn"
    jmp .cr2
.target:
    cmp rax, rbx
    jne .other
    PRINT64 " rip=target"
    jmp .cr2
.other:
    PRINT64 " rip="
    call puthex64
.cr2:
    cmp r15, 14
    jne .eol
    PRINT64 " cr2="
    mov rax, cr2
    call puthex64
.eol:
    mov al, 10
    call putc64
    mov rax, [resume]
    mov [rsp + 8], rax
    mov rax, [good_rsp]
    mov [rsp + 32], rax
    add rsp, 8
    iretq

align 8
good_rsp: dq 0
resume: dq 0
expect_rip: dq 0
align 16
idt64:
    times 12 dq 0, 0
    GATE64 ss_handler, 0x38, 0x8E, 1
    GATE64 gp_handler, 0x38, 0x8E, 1
    GATE64 pf_handler, 0x38, 0x8E, 1
idt64_end:
idtr64:
    dw idt64_end - idt64 - 1
    dq idt64
align 16
tss64: times 0x68 db 0
align 16
    times 1024 db 0
ist1_top:
bits 32
"""


def _fault(vector: int, rip: str = "insn") -> str:
    return f"vec={vector:016X} err={0:016X} rip={rip}"


GP, SS, PF = 13, 12, 14


@pytest.mark.parametrize("mmu", ["cached", "naive", "native"])
def test_noncanonical_references_fault_as_the_sdm_says(assemble, tmp_path, mmu):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(BODY, True),
                                      mmu=mmu)
    # A branch to a non-canonical target faults on the fetch, so the frame holds
    # the target, as under QEMU's TCG (the SDM has the branch itself fault).
    assert out.splitlines() == [
        "load: " + _fault(GP),
        "store: " + _fault(GP),
        "unmapped: " + _fault(PF) + " cr2=00007FFFFFFFFFF8",
        "jmp: " + _fault(GP, "target"),
        "call: " + _fault(GP, "target"),
        "push: " + _fault(SS),
        "pop: " + _fault(SS),
        "rbp: " + _fault(SS),
        "rsp: " + _fault(SS),
        "fs: " + _fault(GP),
        "done",
    ]
    assert result.exit_status == 1


@pytest.mark.parametrize("code, stack", [
    (b"\x50", True),                       # push rax
    (b"\x41\x5c", True),                   # pop r12
    (b"\xc3", True),                       # ret
    (b"\xe8\0\0\0\0", True),               # call rel32
    (b"\xff\xd0", True),                   # call rax (pushes)
    (b"\xff\x30", True),                   # push qword [rax]: the push is through SS
    (b"\xc9", False),                      # leave reads [rbp]; rbp canonical here
    (b"\x48\x8b\x04\x24", True),           # mov rax, [rsp]
    (b"\x48\x8b\x45\x08", False),          # mov rax, [rbp + 8]
    (b"\x49\x8b\x04\x24", False),          # mov rax, [r12]: not SS despite the encoding
    (b"\x48\x8b\x00", False),              # mov rax, [rax]
    (b"\x64\x48\x8b\x04\x24", False),      # mov rax, [fs:rsp]
    (b"\x48\x8d\x04\x24", False),          # lea rax, [rsp]: no access
    (b"\x67\x8b\x04\x24", False),          # mov eax, [esp]: 32-bit address
    (b"\xc5\xfa\x6f\x04\x24", True),       # vmovdqu xmm0, [rsp]
    (b"\x0f\xa0", True),                   # push fs
])
def test_stack_reference_decoder(code, stack):
    gpr = [0] * 16
    gpr[4] = NONCANON                      # RSP non-canonical
    gpr[5] = 0x1000                        # RBP canonical
    assert is_stack_fault(code + bytes(15), gpr) is stack
    gpr[4] = 0x80000
    assert is_stack_fault(code + bytes(15), gpr) is False


def test_rbp_based_reference_with_noncanonical_rbp_is_a_stack_fault():
    gpr = [0] * 16
    gpr[4], gpr[5] = 0x80000, NONCANON
    assert is_stack_fault(b"\x48\x8b\x45\x08" + bytes(11), gpr)   # mov rax, [rbp + 8]
    assert is_stack_fault(b"\xc9" + bytes(14), gpr)               # leave
    assert not is_stack_fault(b"\x48\x8b\x03" + bytes(12), gpr)   # mov rax, [rbx]


DELIVERY_BODY = r"""
    START_LONG_MODE
    SET_TSS64 tss64
    mov qword [tss64 + 0x24], ist1_top
    lidt [idtr64]
    mov rsp, 0x80000
    mov [good_rsp], rsp
    PRINT64 "int, bad stack: "
    mov qword [resume], .next
    mov rsp, 0x8000000000001000         ; aliases physical 0x1000 in a 48-bit walk
    int 0x30
    PRINT64 "delivered", 10
.next:
    mov rsp, [good_rsp]
    PRINT64 "int, bad handler: "
    mov qword [resume], .done
    int 0x31
.done:
    PRINT64 "done", 10
    mov al, 0
    out 0xF4, al

int30:
    PRINT64 "int30 ran", 10
    jmp $
ss_handler:
    mov r15, 12
    jmp report
gp_handler:
    mov r15, 13
report:
    PRINT64 "vec="
    mov rax, r15
    call puthex64
    PRINT64 " err="
    mov rax, [rsp]
    call puthex64
    mov al, 10
    call putc64
    mov rax, [resume]
    mov [rsp + 8], rax
    mov rax, [good_rsp]
    mov [rsp + 32], rax
    add rsp, 8
    iretq

align 8
good_rsp: dq 0
resume: dq 0
align 16
idt64:
    times 12 dq 0, 0
    GATE64 ss_handler, 0x38, 0x8E, 1
    GATE64 gp_handler, 0x38, 0x8E, 1
    times 0x30 - 14 dq 0, 0
    GATE64 int30, 0x38, 0x8E, 0
    dw 0x1000, 0x38, 0x8E00, 0          ; int 0x31: handler at 0x0000_8000_0000_1000,
    dd 0x00008000, 0                    ;   not canonical
idt64_end:
idtr64:
    dw idt64_end - idt64 - 1
    dq idt64
align 16
tss64: times 0x68 db 0
align 16
    times 1024 db 0
ist1_top:
bits 32
"""


@pytest.mark.parametrize("mmu", ["cached", "native"])
def test_event_delivery_checks_canonical_stack_and_handler(assemble, tmp_path, mmu):
    """Delivery pushing onto a non-canonical RSP raises #SS(0), and a gate whose
    handler address is non-canonical #GP(0); nothing is written through the
    address's 48-bit alias."""
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(DELIVERY_BODY, True)))
    out = bytearray()
    with Machine(serial="none", memory="32M", mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        m.write_memory(0xF00, b"\x5a" * 0x100)
        result = m.run(timeout=20)
        alias = m.read_memory(0xF00, 0x100)
    assert out.decode().splitlines() == [
        "int, bad stack: " + _fault(SS).removesuffix(" rip=insn"),
        "int, bad handler: " + _fault(GP).removesuffix(" rip=insn"),
        "done",
    ]
    assert alias == b"\x5a" * 0x100
    assert result.exit_status == 1
