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
    with Machine(memory="16M", bios=image, vga="none") as m:  # no VGA hole at 0xA0000
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


# Real-mode ROM code that shadows the F segment through the i440FX PAM0 register
# (config 0x59): RAM read/write (0x30), RAM read-only (0x10), back to the ROM (0x00).
ROM_PAM = r"""
bits 16
org 0
%macro PAM0 1
    mov dx, 0xCF8
    mov eax, 0x80000058
    out dx, eax
    mov dx, 0xCFD             ; byte 1 of the dword at 0x58: PAM0
    mov al, %1
    out dx, al
%endmacro
%macro REPORT 2               ; expected byte in [es:0x100], character
    mov al, [es:0x100]
    cmp al, %1
    mov al, '-'
    jne %%out
    mov al, %2
%%out:
    mov dx, 0x3F8
    out dx, al
%endmacro
start:
    mov ax, 0xF000
    mov es, ax
    PAM0 0x30                 ; F segment: RAM, read and write
    mov byte [es:0x100], 0x5A
    REPORT 0x5A, 'W'
    PAM0 0x10                 ; F segment: RAM, read only: the store is dropped
    mov byte [es:0x100], 0xA5
    REPORT 0x5A, 'R'
    PAM0 0x00                 ; back to the ROM
    REPORT 0xFF, 'O'
    PAM0 0x30                 ; the RAM kept what was written while it was RAM
    REPORT 0x5A, 'K'
    mov al, 0
    out 0xF4, al
    hlt
    times 0x1FFF0 - ($ - $$) db 0xFF
    jmp 0xE000:start
    times 0x20000 - ($ - $$) db 0xFF
"""


@pytest.mark.parametrize("mmu", ("cached", "naive", "identity"))
def test_pam_registers_shadow_the_bios_window(assemble, mmu):
    """(Under mmu="native" a store to read-only memory ends the run, as for the ROM.)"""
    out = bytearray()
    with Machine(serial="none", memory="16M", bios=assemble(ROM_PAM), mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=10)
    assert out == b"WROK"
    assert result.exit_status == 1
