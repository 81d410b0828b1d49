"""A level-triggered IOAPIC line: the local APIC's EOI broadcast clears remote IRR,
and a line still asserted is delivered again (SDM vol. 3, 11.8.5; 82093AA)."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest


@pytest.mark.parametrize("mmu", ("cached", "native"))
def test_level_line_is_redelivered_after_eoi_until_the_source_clears(assemble, tmp_path, mmu):
    body = r"""
    jmp setup
count: dd 0
setup:
    LOAD_GDT
    SET_GATE 0x44, serial_irq
    lidt [idtr]
    PIC_MASK_ALL
    mov dword [0xFEE000F0], 0x1FF     ; local APIC on
    IOAPIC_ROUTE 4, 0x8044, 0         ; vector 0x44, level, active high
    mov dx, 0x3FC
    mov al, 0x08              ; OUT2: the UART drives IRQ4
    out dx, al
    mov dx, 0x3F9
    mov al, 0x02              ; THRE interrupt: the line stays high until IER drops it
    out dx, al
    sti
.wait:
    cmp dword [count], 3
    jb .wait
    cli
    mov dword [0xFEC00000], 0x18
    mov eax, [0xFEC00010]     ; remote IRR (bit 14) clear after the last EOI
    shr eax, 14
    and eax, 1
    call puthex
    mov eax, [count]
    call puthex
    mov al, 0
    call exit

serial_irq:
    push eax
    push edx
    mov dword [0xFEC00000], 0x18
    mov eax, [0xFEC00010]     ; remote IRR set while the vector is in service
    shr eax, 14
    and eax, 1
    add [remote_seen], eax
    inc dword [count]
    cmp dword [count], 3
    jb .eoi                   ; the first two times: leave the source asserted
    mov dx, 0x3F9
    xor al, al
    out dx, al                ; IER off: the line drops
.eoi:
    mov dword [0xFEE000B0], 0 ; EOI: broadcast to the IOAPIC (level vector, TMR set)
    pop edx
    pop eax
    iret
remote_seen: dd 0
"""
    body = body.replace("    call puthex\n    mov al, 0\n    call exit",
                        "    call puthex\n    mov eax, [remote_seen]\n    call puthex\n"
                        "    mov al, 0\n    call exit")
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body, interrupts=True), mmu=mmu)
    assert out == "000000000000000300000003"
    assert result.exit_status == 1
