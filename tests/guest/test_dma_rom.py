"""Bus-master DMA from the IDE disk into the BIOS ROM: dropped, as on a PC."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot
from qemu_lite.machine import bundled_firmware

SECTOR = 512

# Programs the PIIX IDE function's BAR4 at 0xC000, reads two sectors by DMA
# through a PRD table whose first region is the BIOS at 0xF0000 and whose
# second is RAM at 0x9000, then checks both.
BODY = r"""
%ifndef REGION
%define REGION 0xF0000
%endif
    mov dx, 0xCF8
    mov eax, 0x80000920         ; 00:01.1 BAR4
    out dx, eax
    mov dx, 0xCFC
    mov eax, 0xC001
    out dx, eax
    mov dx, 0xCF8
    mov eax, 0x80000904         ; command: I/O space, bus master
    out dx, eax
    mov dx, 0xCFC
    mov ax, 0x0005
    out dx, ax

    mov esi, 0xF0000            ; keep the BIOS's first sector
    mov edi, saved
    mov ecx, 128
    rep movsd

    mov dword [0x8000], REGION
    mov dword [0x8004], 512
    mov dword [0x8008], 0x9000
    mov dword [0x800C], 0x80000000 | 512
    mov dx, 0xC004
    mov eax, 0x8000
    out dx, eax
    mov dx, 0xC002
    mov al, 0x06                ; clear interrupt and error
    out dx, al

    mov dx, 0x1F6
    mov al, 0xE0                ; drive 0, LBA
    out dx, al
    mov dx, 0x1F2
    mov al, 2
    out dx, al
    xor al, al
    mov dx, 0x1F3
    out dx, al
    inc dx
    out dx, al
    inc dx
    out dx, al
    mov dx, 0x1F7
    mov al, 0xC8                ; READ DMA
    out dx, al
    mov dx, 0xC000
    mov al, 0x09                ; start, bus master writes memory
    out dx, al

    mov dx, 0xC002
    mov ecx, 1000000
.poll:
    in al, dx
    test al, 0x04
    jnz .done
    loop .poll
    PRINT "no interrupt", 10
    jmp fail
.done:
    mov bl, al
    mov dx, 0xC000
    xor al, al
    out dx, al
    PRINT "status "
    movzx eax, bl
    call puthex
    mov al, 10
    call putc
    test bl, 0x02
    jnz fail
    mov esi, 0xF0000
    mov edi, saved
    mov ecx, 128
    repe cmpsd
    jne .rom_changed
    PRINT "rom intact", 10
    cmp dword [0x9000], 0x5EC70001  ; sector 1's first word reached RAM
    jne fail
    PRINT "ram written", 10
    mov al, 0
    call exit
.rom_changed:
    PRINT "rom changed", 10
fail:
    mov al, 1
    call exit

align 4
saved: times 128 dd 0
"""


def test_dma_into_bios_rom_is_dropped(assemble, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xAA" * SECTOR + (0x5EC70001).to_bytes(4, "little") * (SECTOR // 4))
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(BODY),
                                      disk=str(disk))
    assert "rom intact" in out and "ram written" in out, out
    assert "status 00000004" in out, out   # interrupt, no error, table used up
    assert (result.reason, result.exit_status) == ("exit", 1), (result, out)


def test_bios_image_unchanged_after_dma(assemble, tmp_path):
    """Both ROM windows (the reset vector's included) still hold the BIOS image."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xAA" * SECTOR + (0x5EC70001).to_bytes(4, "little") * (SECTOR // 4))
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(BODY)))
    with Machine(serial="none", memory="32M", disk=str(disk)) as m:
        multiboot.load(m, kernel)
        assert m.run(timeout=20).reason == "exit"
        bios = bundled_firmware("bios.bin")
        assert m.read_memory(0xF0000, 0x10000) == bios
        assert m.read_memory(0xFFFF0000, 0x10000) == bios


@pytest.mark.parametrize("region", [0x4000000, 0xFEE00000])   # past 32 MiB of RAM; LAPIC MMIO
def test_dma_outside_ram_and_rom_sets_the_error_bit(assemble, tmp_path, region):
    """A master abort: BMISTA reports interrupt and error (82371AB BMISTA bit 1)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xAA" * SECTOR * 2)
    result, out = run_multiboot_guest(assemble, tmp_path,
                                      f"%define REGION {region:#x}\n" + protected_mode_guest(BODY),
                                      disk=str(disk))
    assert out.splitlines()[0] == "status 00000006", out
    assert result.exit_status == 3


# Protected mode, ESP inside the BIOS ROM, INT 0x30: the CPU's pushes of the
# interrupt frame hit ROM and are lost, as any store to ROM is on a PC.
ROM_STACK_BODY = r"""
    LOAD_GDT
    lidt [idtr]
    mov esi, 0xF0000 + 0x100 - 12       ; what the frame will overwrite if it can
    mov edi, saved
    mov ecx, 3
    rep movsd
    mov esp, 0xF0000 + 0x100
    int 0x30
    PRINT "returned", 10
    mov al, 1
    call exit
handler:
    mov esp, 0x90000
    mov esi, 0xF0000 + 0x100 - 12
    mov edi, saved
    mov ecx, 3
    repe cmpsd
    jne .changed
    PRINT "rom intact", 10
    mov al, 0
    call exit
.changed:
    PRINT "rom changed", 10
    mov al, 1
    call exit
align 4
saved: times 3 dd 0
align 8
idt:
    times 0x30 dq 0
    GATE32 handler, 0x08, 0x8E
idt_end:
idtr:
    dw idt_end - idt - 1
    dd idt
"""


@pytest.mark.parametrize("mmu", ["cached", "native"])
def test_interrupt_frame_pushed_onto_rom_is_dropped(assemble, tmp_path, mmu):
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(ROM_STACK_BODY)))
    out = bytearray()
    with Machine(serial="none", memory="32M", mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=20)
        assert m.read_memory(0xF0000, 0x10000) == bundled_firmware("bios.bin")
    assert out == b"rom intact\n"
    assert result.exit_status == 1
