"""Long-mode guests on the shadow MMU: 1 GiB pages, NX (EFER.NXE) and the #PF error code."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

BODY = r"""
    START_LONG_MODE
    mov rsp, 0x80000
    lidt [idtr64]
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 11                     ; EFER.NXE
    wrmsr
    ; PDPT[1]: a 1 GiB page at physical 0; PDPT[2]: the same, not executable
    mov qword [pdpt + 8], 0x83
    mov rax, 0x8000000000000083
    mov [pdpt + 16], rax
    mov rbx, 0x40000000
    mov eax, [rbx + 0x100000]           ; the Multiboot header through the 1 GiB page
    cmp eax, 0x1BADB002
    jne fail
    mov rbx, 0x80000000
    mov dword [rbx + 0x300000], 0x12345678  ; data through the NX page is fine
    mov eax, [0x300000]
    cmp eax, 0x12345678
    jne fail
    PRINT64 "1g ok", 10
    mov rax, 0x80000000 + ret_insn      ; run through the NX alias: #PF I/D|P
    call rax
    PRINT64 "after nx", 10
    mov al, 0
    out 0xF4, al
ret_insn:
    ret

fail:
    PRINT64 "FAIL", 10
    mov al, 1
    out 0xF4, al

pf_handler:
    PRINT64 "PF cr2="
    mov rax, cr2
    call puthex64
    PRINT64 " err="
    mov rax, [rsp]
    call puthex64
    mov al, 10
    call putc64
    add rsp, 8
    mov qword [rsp], ret_insn           ; resume at the identity-mapped ret
    iretq

align 16
idt64:
    times 14 dq 0, 0
    GATE64 pf_handler, 0x38, 0x8E, 0
idt64_end:
idtr64:
    dw idt64_end - idt64 - 1
    dq idt64
bits 32
"""


@pytest.mark.parametrize("mmu", ["cached", "naive", "native"])
def test_long_mode_1g_pages_and_nx(assemble, tmp_path, mmu):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(BODY, True), mmu=mmu)
    lines = out.splitlines()
    assert lines[0] == "1g ok"
    assert lines[1].startswith("PF cr2=0000000080")
    assert lines[1].endswith(" err=0000000000000011")
    assert lines[2] == "after nx"
    assert result.exit_status == 1
