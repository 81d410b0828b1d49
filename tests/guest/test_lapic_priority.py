"""Local APIC priority rules seen by guest code (SDM vol. 3, 11.8.3-11.8.5).

The guest records the order in which its handlers run into a log in RAM and
prints it; each test checks what the guest observed."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

MMU_MODES = ("cached", "naive", "native")

SETUP = r"""
%macro SELF_IPI 1
    mov dword [0xFEE00300], 0x40000 | %1   ; ICR: fixed, shorthand self
%endmacro
%define EOI mov dword [0xFEE000B0], 0
    LOAD_GDT
    PIC_MASK_ALL              ; only the local APIC interrupts
    mov dword [0xFEE000F0], 0x1FF     ; APIC on, spurious vector 0xFF
    jmp body

log_vector:                   ; al -> next byte of the log
    push ebx
    mov ebx, [log_len]
    mov [log + ebx], al
    inc dword [log_len]
    pop ebx
    ret
print_log:                    ; print the log as hex bytes, then a newline
    xor ecx, ecx
.next:
    cmp ecx, [log_len]
    jae .done
    movzx eax, byte [log + ecx]
    push eax
    shr al, 4
    call .nibble
    pop eax
    call .nibble
    mov al, ' '
    call putc
    inc ecx
    jmp .next
.done:
    mov al, 10
    call putc
    ret
.nibble:
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    jmp putc
log_len: dd 0
log: times 64 db 0
body:
"""


def _run(assemble, tmp_path, body: str, mmu: str) -> str:
    source = protected_mode_guest(SETUP + body, interrupts=True)
    result, out = run_multiboot_guest(assemble, tmp_path, source, mmu=mmu)
    assert result.exit_status == 1, (result, out)
    return out


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_two_self_ipis_are_taken_highest_first_each_after_the_eoi(assemble, tmp_path, mmu):
    """Vectors 32 and 33 sent with IF=0: 33 is taken first; 32 (same priority
    class, so not above PPR) waits for 33's EOI although IF is set in 33's handler."""
    body = r"""
    SET_GATE 32, h32
    SET_GATE 33, h33
    SET_GATE 0xFF, spurious
    lidt [idtr]
    SELF_IPI 32
    SELF_IPI 33
    mov al, 0xAA              ; marks the point where interrupts are enabled
    call log_vector
    sti
    nop
    nop
    cli
    mov al, 0xBB
    call log_vector
    call print_log
    mov al, 0
    call exit
h33:
    push eax
    mov al, 33
    call log_vector
    sti                       ; 32 is in the same class as 33: still held back
    nop
    nop
    mov al, 0x33
    call log_vector
    EOI                       ; retires 33: now 32 may be taken
    nop
    nop
    cli
    pop eax
    iret
h32:
    push eax
    mov al, 32
    call log_vector
    EOI
    pop eax
    iret
spurious:
    push eax
    mov al, 0xFF
    call log_vector
    pop eax
    iret
"""
    assert _run(assemble, tmp_path, body, mmu) == "AA 21 33 20 BB \n"


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_higher_class_preempts_a_handler_and_eoi_retires_the_highest(assemble, tmp_path, mmu):
    """While 0x41 is in service, 0x30 waits but 0x61 (higher class) preempts;
    each EOI retires the highest in-service vector."""
    body = r"""
    SET_GATE 0x30, h30
    SET_GATE 0x41, h41
    SET_GATE 0x61, h61
    SET_GATE 0xFF, spurious
    lidt [idtr]
    SELF_IPI 0x41
    sti
    nop
    cli
    call print_log
    mov al, 0
    call exit
h41:
    push eax
    mov al, 0x41
    call log_vector
    SELF_IPI 0x30             ; lower class: held until 0x41's EOI
    SELF_IPI 0x61             ; higher class: preempts once IF is set
    mov eax, [0xFEE000A0]     ; PPR = 0x40 (class of 0x41)
    call log_vector
    sti
    nop
    cli
    mov al, 0x4E
    call log_vector
    EOI
    sti
    nop
    cli
    pop eax
    iret
h61:
    push eax
    mov al, 0x61
    call log_vector
    mov eax, [0xFEE00100 + 0x30]  ; ISR bits 96-127: 0x61 is bit 1
    call log_vector
    mov eax, [0xFEE00100 + 0x20]  ; ISR bits 64-95: 0x41 is bit 1
    call log_vector
    EOI                       ; retires 0x61, not 0x41
    mov eax, [0xFEE00100 + 0x30]
    call log_vector
    mov eax, [0xFEE00100 + 0x20]
    call log_vector
    pop eax
    iret
h30:
    push eax
    mov al, 0x30
    call log_vector
    EOI
    pop eax
    iret
spurious:
    push eax
    mov al, 0xFF
    call log_vector
    pop eax
    iret
"""
    assert _run(assemble, tmp_path, body, mmu) == "41 40 61 02 02 00 02 4E 30 \n"


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_vector_at_or_below_tpr_is_held_until_tpr_drops(assemble, tmp_path, mmu):
    """TPR 0x50 holds back 0x50 and 0x45 (IRR keeps them); TPR 0x40 lets 0x50
    through; TPR 0 lets 0x45 through."""
    body = r"""
    SET_GATE 0x45, h45
    SET_GATE 0x50, h50
    SET_GATE 0xFF, spurious
    lidt [idtr]
    mov dword [0xFEE00080], 0x50  ; TPR class 5
    SELF_IPI 0x45
    SELF_IPI 0x50
    sti
    nop
    nop
    mov al, 0xA0
    call log_vector
    mov eax, [0xFEE00200 + 0x20]  ; IRR bits 64-95: 0x45 is bit 5
    shr eax, 5
    call log_vector
    mov eax, [0xFEE00200 + 0x20]  ; 0x50 is bit 16
    shr eax, 16
    call log_vector
    mov eax, [0xFEE000A0]         ; PPR = TPR with nothing in service
    call log_vector
    mov dword [0xFEE00080], 0x4F  ; class 4: 0x50 may go, 0x45 not
    nop
    nop
    mov al, 0xA1
    call log_vector
    mov dword [0xFEE00080], 0
    jmp .taken                ; taken by this branch at the latest (a block boundary)
.taken:
    cli
    call print_log
    mov al, 0
    call exit
h45:
    push eax
    mov al, 0x45
    call log_vector
    EOI
    pop eax
    iret
h50:
    push eax
    mov al, 0x50
    call log_vector
    EOI
    pop eax
    iret
spurious:
    push eax
    mov al, 0xFF
    call log_vector
    pop eax
    iret
"""
    assert _run(assemble, tmp_path, body, mmu) == "A0 01 01 50 50 A1 45 \n"
