"""Firmware images of any 64 KiB multiple up to 16 MiB, mapped as QEMU's pc machine maps them:
the image ends at 4 GiB and its last 128 KiB also ends at 1 MiB."""

from __future__ import annotations

import pytest

from qemu_lite import Machine

# A 16-bit ROM: the reset vector at F000:FFF0 jumps to E000:0000, which only
# the low window of a 128 KiB image holds; that code prints through COM1 a byte
# it reads from the first 64 KiB of the image and exits through isa-debug-exit.
ROM_128K = r"""
bits 16
org 0
start:                        ; E000:0000 (image offset 0)
    mov ax, 0xE000
    mov ds, ax
    mov al, [marker]
    mov dx, 0x3F8
    out dx, al
    mov al, 'K'
    out dx, al
    mov al, 0
    out 0xF4, al
    hlt
marker: db 'O'
    times 0x1FFF0 - ($ - $$) db 0xFF
reset:                        ; F000:FFF0 (image offset 0x1FFF0)
    jmp 0xE000:start
    times 0x20000 - ($ - $$) db 0xFF
"""


@pytest.mark.parametrize("mmu", ("cached", "naive", "native"))
def test_128k_image_runs_from_its_low_window_at_0xe0000(assemble, mmu):
    image = assemble(ROM_128K)
    assert len(image) == 0x20000
    out = bytearray()
    with Machine(serial="none", memory="16M", bios=image, mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=10)
        assert m.rom_ranges == [(0xE0000, 0x100000), (0xFFFE0000, 0x100000000)]
    assert out == b"OK"
    assert result.exit_status == 1


@pytest.mark.parametrize("size", [0x10000, 0x40000, 1 << 20, 16 << 20])
def test_image_maps_at_the_top_of_4g_with_its_last_128k_below_1m(size):
    image = bytes((i >> 16) & 0xFF for i in range(size))  # each 64 KiB holds its index
    with Machine(memory="16M", bios=image) as m:
        top = 1 << 32
        assert m.read_memory(top - size, 1)[0] == 0
        assert m.read_memory(top - 1, 1)[0] == (size - 1) >> 16
        isa = min(size, 0x20000)
        assert m.read_memory(0x100000 - isa, isa) == image[-isa:]
        assert m.memory_ranges(write=True)[0] == (0, 0x100000 - isa)


@pytest.mark.parametrize("size", [0, 0x8000, 0x18000, (16 << 20) + 0x10000])
def test_other_sizes_are_refused_with_one_line(size):
    with pytest.raises(ValueError, match="multiple of 64 KiB up to 16 MiB"):
        Machine(memory="16M", bios=bytes(size))
