"""The VGA adapter alone: registers, memory modes, DISPI, PCI, drawing."""

from __future__ import annotations

import pytest

from qemu_lite.devices import vga as V
from qemu_lite.devices.vga import Vga, VgaPci


def out(v: Vga, port: int, value: int) -> None:
    v.ports.io_write(port - V.VGA_PORT_BASE, 1, value)


def inp(v: Vga, port: int) -> int:
    return v.ports.io_read(port - V.VGA_PORT_BASE, 1)


def seq(v: Vga, index: int, value: int) -> None:
    v.ports.io_write(V.SEQ_INDEX - V.VGA_PORT_BASE, 2, index | value << 8)


def gfx(v: Vga, index: int, value: int) -> None:
    v.ports.io_write(V.GFX_INDEX - V.VGA_PORT_BASE, 2, index | value << 8)


def crtc(v: Vga, index: int, value: int) -> None:
    out(v, V.CGA_CRTC_INDEX, index)
    out(v, V.CGA_CRTC_DATA, value)


def attr(v: Vga, index: int, value: int) -> None:
    inp(v, V.CGA_STATUS)  # reset the flip-flop
    out(v, V.ATT_INDEX, index)
    out(v, V.ATT_INDEX, value)


def dac(v: Vga, index: int, rgb: tuple[int, int, int]) -> None:
    out(v, V.DAC_WRITE_INDEX, index)
    for c in rgb:
        out(v, V.DAC_DATA, c)


def dispi(v: Vga, index: int, value: int | None = None) -> int:
    v.dispi_ports.io_write(0, 2, index)
    if value is not None:
        v.dispi_ports.io_write(1, 2, value)
    return v.dispi_ports.io_read(1, 2)


def test_crtc_follows_misc_io_select() -> None:
    v = Vga()
    out(v, V.MISC_WRITE, 0x01)
    crtc(v, V.CR_CURSOR_LO, 0x42)
    assert v.cr[V.CR_CURSOR_LO] == 0x42
    out(v, V.MISC_WRITE, 0x00)  # mono addressing: 0x3Dx no longer decodes
    assert inp(v, V.CGA_CRTC_DATA) == 0xFF
    out(v, V.MDA_CRTC_INDEX, V.CR_CURSOR_LO)
    assert inp(v, V.MDA_CRTC_DATA) == 0x42
    assert inp(v, V.MISC_READ) == 0x00


def test_crtc_write_protect_keeps_timing_registers() -> None:
    v = Vga()
    out(v, V.MISC_WRITE, 0x01)
    crtc(v, V.CR_H_DISPLAY_END, 0x4F)
    crtc(v, 0x11, 0x80)
    crtc(v, V.CR_H_DISPLAY_END, 0x27)
    assert v.cr[V.CR_H_DISPLAY_END] == 0x4F


def test_attribute_flip_flop_and_status_reset() -> None:
    v = Vga()
    out(v, V.MISC_WRITE, 0x01)
    out(v, V.ATT_INDEX, 0x05)
    out(v, V.ATT_INDEX, 0x3F)
    assert v.ar[5] == 0x3F
    out(v, V.ATT_INDEX, 0x06)  # flip-flop back at index
    inp(v, V.CGA_STATUS)       # ... and reading status 1 resets it anyway
    out(v, V.ATT_INDEX, 0x07 | V.AR_INDEX_PAS)
    out(v, V.ATT_INDEX, 0x11)
    assert v.ar[7] == 0x11 and inp(v, V.ATT_DATA_READ) == 0x11


def test_status_register_toggles_retrace() -> None:
    v = Vga()
    out(v, V.MISC_WRITE, 0x01)
    a, b = inp(v, V.CGA_STATUS), inp(v, V.CGA_STATUS)
    assert (a ^ b) & V.ST1_VERTICAL_RETRACE


def test_dac_write_and_read_auto_increment() -> None:
    v = Vga()
    dac(v, 10, (1, 2, 3))
    dac(v, 11, (4, 5, 6))
    out(v, V.DAC_READ_INDEX, 10)
    assert [inp(v, V.DAC_DATA) for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    assert inp(v, V.DAC_STATE) == 3
    assert V.dac_to_8bit(0x3F) == 0xFF and V.dac_to_8bit(0x2A) == 0xA8 and V.dac_to_8bit(0x15) == 0x57


def planar_setup(v: Vga) -> None:
    seq(v, V.SR_MEMORY_MODE, V.SR_MEM_ODD_EVEN_DISABLE | V.SR_MEM_EXTENDED)
    gfx(v, V.GR_MISC, 1 << V.GR_MISC_MAP_SHIFT | V.GR_MISC_GRAPHICS)
    gfx(v, V.GR_MODE, 0)
    gfx(v, V.GR_BIT_MASK, 0xFF)
    seq(v, V.SR_MAP_MASK, 0x0F)


def test_planar_write_mode_0_with_map_mask() -> None:
    v = Vga()
    planar_setup(v)
    seq(v, V.SR_MAP_MASK, 0x05)  # planes 0 and 2
    v.window.io_write(0x10, 1, 0xA5)
    assert v.vram[0x40:0x44] == bytes([0xA5, 0, 0xA5, 0])
    gfx(v, V.GR_READ_MAP_SELECT, 2)
    assert v.window.io_read(0x10, 1) == 0xA5
    gfx(v, V.GR_READ_MAP_SELECT, 1)
    assert v.window.io_read(0x10, 1) == 0


def test_set_reset_bit_mask_and_latches() -> None:
    v = Vga()
    planar_setup(v)
    v.window.io_write(0, 1, 0xFF)          # all planes 0xFF
    gfx(v, V.GR_ENABLE_SET_RESET, 0x0F)
    gfx(v, V.GR_SET_RESET, 0x03)           # colour 3: planes 0,1 set, 2,3 clear
    gfx(v, V.GR_BIT_MASK, 0x0F)            # only the low nibble changes
    v.window.io_read(0, 1)                 # load latches
    v.window.io_write(0, 1, 0x00)
    assert v.vram[0:4] == bytes([0xFF, 0xFF, 0xF0, 0xF0])


def test_write_mode_1_copies_latches() -> None:
    v = Vga()
    planar_setup(v)
    v.vram[0:4] = bytes([1, 2, 3, 4])
    v.window.io_read(0, 1)
    gfx(v, V.GR_MODE, 1)
    v.window.io_write(5, 1, 0)
    assert v.vram[20:24] == bytes([1, 2, 3, 4])


def test_write_mode_2_and_xor_function() -> None:
    v = Vga()
    planar_setup(v)
    gfx(v, V.GR_MODE, 2)
    v.window.io_write(0, 1, 0x09)          # colour 9 -> planes 0 and 3 all ones
    assert v.vram[0:4] == bytes([0xFF, 0, 0, 0xFF])
    v.window.io_read(0, 1)
    gfx(v, V.GR_DATA_ROTATE, 3 << 3)       # XOR with the latches
    v.window.io_write(0, 1, 0x01)
    assert v.vram[0:4] == bytes([0x00, 0, 0, 0xFF])


def test_read_mode_1_colour_compare() -> None:
    v = Vga()
    planar_setup(v)
    v.vram[0:4] = bytes([0b1100, 0b1010, 0, 0])
    gfx(v, V.GR_MODE, V.GR_MODE_READ_MODE1)
    gfx(v, V.GR_COLOR_COMPARE, 0b0011)
    gfx(v, V.GR_COLOR_DONT_CARE, 0x0F)
    assert v.window.io_read(0, 1) == 0b1000


def test_chain4_is_linear_and_odd_even_interleaves() -> None:
    v = Vga()
    seq(v, V.SR_MEMORY_MODE, V.SR_MEM_CHAIN4 | V.SR_MEM_EXTENDED | V.SR_MEM_ODD_EVEN_DISABLE)
    seq(v, V.SR_MAP_MASK, 0x0F)
    gfx(v, V.GR_MISC, 1 << V.GR_MISC_MAP_SHIFT | V.GR_MISC_GRAPHICS)
    v.window.io_write(0x1234, 2, 0xBBAA)
    assert v.vram[0x1234:0x1236] == b"\xaa\xbb"
    seq(v, V.SR_MEMORY_MODE, V.SR_MEM_EXTENDED)  # odd/even
    gfx(v, V.GR_MODE, V.GR_MODE_ODD_EVEN)
    v.window.io_write(0x10, 2, 0x2211)
    assert v.vram[0x40] == 0x11 and v.vram[0x41] == 0x22


def test_memory_map_select_decodes_windows() -> None:
    v = Vga()
    planar_setup(v)
    gfx(v, V.GR_MISC, 2 << V.GR_MISC_MAP_SHIFT | V.GR_MISC_GRAPHICS)  # B0000, 32K
    v.window.io_write(0x0000, 1, 0x77)     # 0xA0000: not decoded
    assert v.vram[0] == 0
    v.window.io_write(0x10000, 1, 0x77)    # 0xB0000: plane address 0
    assert v.vram[0] == 0x77


def test_dispi_id_caps_and_mode_set() -> None:
    v = Vga()
    assert dispi(v, V.VBE_DISPI_INDEX_ID, V.VBE_DISPI_ID0) == V.VBE_DISPI_ID0
    assert dispi(v, V.VBE_DISPI_INDEX_ID, 0x1234) == V.VBE_DISPI_ID0  # bad IDs ignored
    assert dispi(v, V.VBE_DISPI_INDEX_VIDEO_MEMORY_64K) == 256
    dispi(v, V.VBE_DISPI_INDEX_ENABLE, V.VBE_DISPI_GETCAPS)
    assert dispi(v, V.VBE_DISPI_INDEX_XRES) == V.VBE_DISPI_MAX_XRES
    dispi(v, V.VBE_DISPI_INDEX_ENABLE, 0)
    dispi(v, V.VBE_DISPI_INDEX_XRES, 1024)
    dispi(v, V.VBE_DISPI_INDEX_YRES, 768)
    dispi(v, V.VBE_DISPI_INDEX_BPP, 32)
    v.vram[0] = 0x55
    dispi(v, V.VBE_DISPI_INDEX_ENABLE, V.VBE_DISPI_ENABLED | V.VBE_DISPI_LFB_ENABLED)
    assert v.vbe_enabled and v.vram[0] == 0  # cleared without NOCLEARMEM
    assert v.vbe_line_offset == 4096
    assert dispi(v, V.VBE_DISPI_INDEX_VIRT_HEIGHT) == (16 << 20) // 4096
    dispi(v, V.VBE_DISPI_INDEX_XRES, 640)   # ignored while enabled
    assert dispi(v, V.VBE_DISPI_INDEX_XRES) == 1024


def test_dispi_refuses_a_mode_larger_than_vram() -> None:
    v = Vga(vram_size=1 << 20)
    dispi(v, V.VBE_DISPI_INDEX_XRES, 1024)
    dispi(v, V.VBE_DISPI_INDEX_YRES, 768)
    dispi(v, V.VBE_DISPI_INDEX_BPP, 32)
    dispi(v, V.VBE_DISPI_INDEX_ENABLE, V.VBE_DISPI_ENABLED)
    assert not v.vbe_enabled


def test_vbe_bank_window_and_render_32bpp() -> None:
    v = Vga()
    dispi(v, V.VBE_DISPI_INDEX_XRES, 64)
    dispi(v, V.VBE_DISPI_INDEX_YRES, 1100)
    dispi(v, V.VBE_DISPI_INDEX_BPP, 32)
    dispi(v, V.VBE_DISPI_INDEX_ENABLE, V.VBE_DISPI_ENABLED)
    dispi(v, V.VBE_DISPI_INDEX_BANK, 4)    # 256 KiB in: row 1024
    v.window.io_write(0, 4, 0x00112233)    # B, G, R, X = 33 22 11
    frame = v.render()
    assert (frame.width, frame.height) == (64, 1100)
    assert frame.rgb[1024 * 64 * 3:1024 * 64 * 3 + 3] == bytes([0x11, 0x22, 0x33])


def test_vbe_8bpp_uses_the_dac() -> None:
    v = Vga()
    dac(v, 7, (0x3F, 0, 0x2A))
    dispi(v, V.VBE_DISPI_INDEX_XRES, 8)
    dispi(v, V.VBE_DISPI_INDEX_YRES, 2)
    dispi(v, V.VBE_DISPI_INDEX_BPP, 8)
    dispi(v, V.VBE_DISPI_INDEX_ENABLE, V.VBE_DISPI_ENABLED)
    v.vram[9] = 7
    assert v.render().rgb[27:30] == bytes([0xFF, 0, 0xA8])


def test_pci_identity_and_bar_moves() -> None:
    moves: list[tuple[int | None, int | None]] = []
    f = VgaPci(16 << 20)
    f.on_bar_change = lambda old, new: moves.append((old, new))
    f.reset()
    assert f.config_read(0, 4) == 0x1111_1234
    assert f.config_read(0x08, 4) >> 8 == V.CLASS_VGA >> 0
    assert moves == [(None, V.LFB_DEFAULT_BASE)]
    f.config_write(0x10, 4, 0xFFFFFFFF)
    assert f.config_read(0x10, 4) == 0xFF000008  # 16 MiB, prefetchable memory
    f.config_write(0x10, 4, 0xE0000000)
    f.config_write(0x04, 2, 0)
    assert moves[1:] == [(V.LFB_DEFAULT_BASE, 0xFF000000), (0xFF000000, 0xE0000000),
                         (0xE0000000, None)]


def text_mode(v: Vga, cols: int = 80, rows: int = 25, char_h: int = 16, nine: bool = True,
              text: bytes = b"") -> None:
    """Registers of an 80x25 text mode, a one-glyph font, a grey-on-blue palette."""
    out(v, V.MISC_WRITE, 0x67)
    seq(v, V.SR_CLOCKING_MODE, 0 if nine else V.SR_CLOCK_8DOT)
    seq(v, V.SR_MEMORY_MODE, V.SR_MEM_EXTENDED)
    gfx(v, V.GR_MISC, 3 << V.GR_MISC_MAP_SHIFT | V.GR_MISC_CHAIN_ODD_EVEN)
    crtc(v, V.CR_H_DISPLAY_END, cols - 1)
    lines = rows * char_h
    crtc(v, V.CR_V_DISPLAY_END, (lines - 1) & 0xFF)
    crtc(v, V.CR_OVERFLOW, ((lines - 1) >> 8 & 1) << 1 | ((lines - 1) >> 9 & 1) << 6)
    crtc(v, V.CR_MAX_SCAN_LINE, char_h - 1)
    crtc(v, V.CR_OFFSET, cols // 2)
    crtc(v, V.CR_CURSOR_START, 0x20)  # cursor off
    for i in range(16):
        attr(v, i, i)
    attr(v, V.AR_MODE_CONTROL, 0x0C)
    out(v, V.ATT_INDEX, V.AR_INDEX_PAS)
    dac(v, 1, (0, 0, 0x2A))
    dac(v, 7, (0x2A, 0x2A, 0x2A))
    # glyph 'A': top row full, the rest empty
    v.vram[(ord("A") * 32) * 4 + 2] = 0xFF


def test_text_screen_and_drawing() -> None:
    text = bytearray(b" \x07" * 2000)
    text[0:2] = b"A\x17"
    text[160:166] = b"h\x07i\x07!\x07"
    v = Vga(text_memory=lambda off, n: bytes(text[off:off + n]))
    text_mode(v)
    lines = v.screen_text()
    assert lines is not None and len(lines) == 25 and lines[1].startswith("hi!")
    frame = v.render()
    assert (frame.width, frame.height) == (720, 400)
    grey, blue = bytes([0xA8] * 3), bytes([0, 0, 0xA8])
    assert frame.rgb[0:24] == grey * 8       # top row of 'A': foreground
    assert frame.rgb[24:27] == blue          # ninth dot: background
    assert frame.rgb[720 * 3:720 * 3 + 3] == blue


def test_80x50_geometry_and_8_dot_characters() -> None:
    v = Vga()
    text_mode(v, rows=50, char_h=8, nine=False)
    assert v.text_geometry() == (80, 50, 8, 8)
    assert (v.render().width, v.render().height) == (640, 400)


def test_cursor_and_blink() -> None:
    text = bytearray(b" \x07" * 2000)
    text[2:4] = b"A\x87"  # blinking
    v = Vga(text_memory=lambda off, n: bytes(text[off:off + n]))
    text_mode(v)
    crtc(v, V.CR_CURSOR_START, 14)
    crtc(v, V.CR_CURSOR_END, 15)
    crtc(v, V.CR_CURSOR_LO, 81)   # row 1, column 1
    assert v.cursor_position() == (1, 1)
    on, off = v.render(blink_on=True), v.render(blink_on=False)
    row = 720 * 3
    at = (16 + 14) * row + 9 * 3   # cursor scan line 14 of cell (1, 1)
    assert on.rgb[at:at + 3] == bytes([0xA8] * 3) and off.rgb[at:at + 3] == bytes(3)
    at = 9 * 3                      # the blinking 'A' top row
    assert on.rgb[at:at + 3] == bytes([0xA8] * 3) and off.rgb[at:at + 3] == bytes(3)


def test_mode13h_draws_pixel_doubled() -> None:
    v = Vga()
    seq(v, V.SR_CLOCKING_MODE, V.SR_CLOCK_8DOT)
    seq(v, V.SR_MEMORY_MODE, V.SR_MEM_CHAIN4 | V.SR_MEM_EXTENDED | V.SR_MEM_ODD_EVEN_DISABLE)
    seq(v, V.SR_MAP_MASK, 0x0F)
    gfx(v, V.GR_MODE, V.GR_MODE_SHIFT_256)
    gfx(v, V.GR_MISC, 1 << V.GR_MISC_MAP_SHIFT | V.GR_MISC_GRAPHICS)
    out(v, V.MISC_WRITE, 0x63)
    crtc(v, V.CR_H_DISPLAY_END, 0x4F)
    crtc(v, V.CR_V_DISPLAY_END, 0x8F)
    crtc(v, V.CR_OVERFLOW, 0x1F)
    crtc(v, V.CR_MAX_SCAN_LINE, 0x41)
    crtc(v, V.CR_OFFSET, 0x28)
    out(v, V.ATT_INDEX, V.AR_INDEX_PAS)
    dac(v, 4, (0x3F, 0, 0))
    v.window.io_write(320 * 2 + 3, 1, 4)   # pixel (3, 2)
    frame = v.render()
    assert (frame.width, frame.height) == (640, 400)
    red = bytes([0xFF, 0, 0])
    for y in (4, 5):
        at = (y * 640 + 6) * 3
        assert frame.rgb[at:at + 6] == red * 2
    assert frame.rgb[(3 * 640 + 6) * 3:(3 * 640 + 6) * 3 + 3] == bytes(3)


def test_fingerprint_changes_with_text_and_not_otherwise() -> None:
    text = bytearray(b" \x07" * 2000)
    v = Vga(text_memory=lambda off, n: bytes(text[off:off + n]) + bytes(max(0, n - 4000)))
    text_mode(v)
    a = v.fingerprint()
    assert v.fingerprint() == a
    text[0] = ord("x")
    assert v.fingerprint() != a


def test_bad_vram_size() -> None:
    with pytest.raises(ValueError):
        Vga(vram_size=3 << 20)
