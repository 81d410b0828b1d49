"""A VGA adapter as QEMU's ``-vga std``: VGA registers, the legacy window, Bochs VBE, PCI.

Register names and behaviour follow IBM's *VGA Technical Reference* (the "VGA"
chapter of the IBM PS/2 and PC BIOS Interface Technical Reference, register
sections 4-7), the Bochs VBE DISPI interface as documented in Bochs'
``vbe.h``/``vga.h`` headers and QEMU's ``docs/specs/standard-vga.rst``.

================ ==================================================================
ports / address  what
================ ==================================================================
0x3B4/0x3D4-5    CRTC index/data (0x3Bx when misc output bit 0 is clear)
0x3BA/0x3DA      input status 1 (read: vertical retrace, display enable; resets the
                 attribute flip-flop), feature control (write)
0x3C0/0x3C1      attribute controller index/data flip-flop, data read
0x3C2            misc output (write), input status 0 (read)
0x3C4/0x3C5      sequencer index/data
0x3C6-0x3C9      DAC pixel mask, read index / state, write index, data (6-bit RGB)
0x3CA/0x3CC      feature control read, misc output read
0x3CE/0x3CF      graphics controller index/data
0x1CE/0x1CF      Bochs VBE DISPI index/data (16-bit)
0xA0000-0xB7FFF  the VGA memory window through :meth:`VgaMemoryWindow.io_read` /
                 ``io_write``: planar, odd/even and chain-4 modes, VBE banks
0xB8000-0xBFFFF  colour text memory: ordinary guest RAM, read when drawing (the
                 machine wires it; see :class:`Vga` ``text_memory``)
BAR0             linear framebuffer: :attr:`Vga.vram` itself, mapped as RAM
================ ==================================================================

VRAM is interleaved as QEMU keeps it: byte ``4 * a + p`` is plane ``p`` at plane
address ``a``, so chain-4 (mode 13h) and the VBE framebuffer are linear.  A caller
may serve window accesses itself as :meth:`Vga.fast_window` describes (the machine
does, in C), hearing of every register change through ``on_change``.

The text screen lives in RAM at 0xB8000 (character, attribute pairs), so text
stores cost the guest nothing; consequence: while the graphics controller maps
the 128 KiB window (memory map 0), stores to 0xB8000-0xBFFFF reach that RAM
instead of the planes, and monochrome text (0xB0000) is not drawn.

Drawing (:meth:`Vga.render`) returns an :class:`Frame` (width, height, RGB
bytes) of what a monitor would show, in the resolution QEMU's ``screendump``
uses: text modes at 9 or 8 dots a character, mode 13h pixel-doubled to 640x400.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import StateError, check_state
from .pci import PCI_BAR0, PciFunction

# -- ports (offsets from 0x3B0) ------------------------------------------------------------
VGA_PORT_BASE = 0x3B0
VGA_PORT_COUNT = 0x30
MDA_CRTC_INDEX, MDA_CRTC_DATA, MDA_STATUS = 0x3B4, 0x3B5, 0x3BA
ATT_INDEX, ATT_DATA_READ = 0x3C0, 0x3C1
MISC_WRITE, INPUT_STATUS_0 = 0x3C2, 0x3C2
SEQ_INDEX, SEQ_DATA = 0x3C4, 0x3C5
DAC_MASK, DAC_READ_INDEX, DAC_STATE, DAC_WRITE_INDEX, DAC_DATA = 0x3C6, 0x3C7, 0x3C7, 0x3C8, 0x3C9
FEATURE_READ, MISC_READ = 0x3CA, 0x3CC
GFX_INDEX, GFX_DATA = 0x3CE, 0x3CF
CGA_CRTC_INDEX, CGA_CRTC_DATA, CGA_STATUS = 0x3D4, 0x3D5, 0x3DA

# Misc output register.
MISC_IO_ADDRESS_SELECT = 0x01  # 1: CRTC at 0x3Dx (colour), 0: 0x3Bx (mono)

# Input status 1.
ST1_DISPLAY_DISABLED = 0x01
ST1_VERTICAL_RETRACE = 0x08

# Sequencer (VGA TR "Sequencer Registers").
SR_RESET, SR_CLOCKING_MODE, SR_MAP_MASK, SR_CHAR_MAP_SELECT, SR_MEMORY_MODE = 0, 1, 2, 3, 4
SR_CLOCK_8DOT = 0x01  # clocking mode bit 0: 8-dot characters (else 9)
SR_SCREEN_OFF = 0x20
SR_MEM_EXTENDED = 0x02
SR_MEM_ODD_EVEN_DISABLE = 0x04  # memory mode bit 2: 1 = sequential addressing
SR_MEM_CHAIN4 = 0x08

# Graphics controller.
GR_SET_RESET, GR_ENABLE_SET_RESET, GR_COLOR_COMPARE, GR_DATA_ROTATE = 0, 1, 2, 3
GR_READ_MAP_SELECT, GR_MODE, GR_MISC, GR_COLOR_DONT_CARE, GR_BIT_MASK = 4, 5, 6, 7, 8
GR_MODE_READ_MODE1 = 0x08
GR_MODE_ODD_EVEN = 0x10
GR_MODE_SHIFT_256 = 0x40
GR_MODE_SHIFT_CGA = 0x20
GR_MISC_GRAPHICS = 0x01
GR_MISC_CHAIN_ODD_EVEN = 0x02
GR_MISC_MAP_SHIFT = 2  # bits 3-2: 0 A0000/128K, 1 A0000/64K, 2 B0000/32K, 3 B8000/32K

# Attribute controller.
AR_PALETTE_COUNT = 16
AR_MODE_CONTROL, AR_OVERSCAN, AR_PLANE_ENABLE, AR_H_PEL_PANNING, AR_COLOR_SELECT = (
    0x10, 0x11, 0x12, 0x13, 0x14)
AR_INDEX_PAS = 0x20  # palette address source: 1 = the screen is on
AR_MODE_GRAPHICS = 0x01
AR_MODE_LINE_GRAPHICS = 0x04  # 9th dot repeats the 8th for characters C0h-DFh
AR_MODE_BLINK = 0x08
AR_MODE_P54S = 0x80
AR_MODE_8BIT = 0x40

# CRT controller.
CR_H_DISPLAY_END = 0x01
CR_OVERFLOW = 0x07
CR_MAX_SCAN_LINE = 0x09
CR_CURSOR_START, CR_CURSOR_END = 0x0A, 0x0B
CR_START_HI, CR_START_LO = 0x0C, 0x0D
CR_CURSOR_HI, CR_CURSOR_LO = 0x0E, 0x0F
CR_V_DISPLAY_END = 0x12
CR_OFFSET = 0x13
CR_UNDERLINE = 0x14
CR_MODE_CONTROL = 0x17
CR_LINE_COMPARE = 0x18
CR_CURSOR_DISABLE = 0x20
CR_MAX_SCAN_DOUBLE = 0x80

# Bochs VBE DISPI (Bochs vbe.h).
VBE_DISPI_INDEX_PORT, VBE_DISPI_DATA_PORT = 0x1CE, 0x1CF
VBE_DISPI_INDEX_ID, VBE_DISPI_INDEX_XRES, VBE_DISPI_INDEX_YRES, VBE_DISPI_INDEX_BPP = 0, 1, 2, 3
VBE_DISPI_INDEX_ENABLE, VBE_DISPI_INDEX_BANK = 4, 5
VBE_DISPI_INDEX_VIRT_WIDTH, VBE_DISPI_INDEX_VIRT_HEIGHT = 6, 7
VBE_DISPI_INDEX_X_OFFSET, VBE_DISPI_INDEX_Y_OFFSET = 8, 9
VBE_DISPI_INDEX_VIDEO_MEMORY_64K = 0xA
VBE_DISPI_INDEX_COUNT = 0xB
VBE_DISPI_ID0, VBE_DISPI_ID5 = 0xB0C0, 0xB0C5
VBE_DISPI_ENABLED = 0x01
VBE_DISPI_GETCAPS = 0x02
VBE_DISPI_8BIT_DAC = 0x20
VBE_DISPI_LFB_ENABLED = 0x40
VBE_DISPI_NOCLEARMEM = 0x80
VBE_DISPI_MAX_XRES, VBE_DISPI_MAX_YRES, VBE_DISPI_MAX_BPP = 2560, 1600, 32
VBE_BPPS = (4, 8, 15, 16, 24, 32)

# PCI identity of QEMU's std-vga.
VGA_VENDOR_ID, VGA_DEVICE_ID = 0x1234, 0x1111
CLASS_VGA = 0x030000
LFB_DEFAULT_BASE = 0xFD000000  # where SeaBIOS puts QEMU's BAR0
VRAM_SIZE_DEFAULT = 16 << 20

WINDOW_BASE = 0xA0000
WINDOW_SIZE = 0x18000  # 0xA0000-0xB7FFF; 0xB8000-0xBFFFF is RAM (text)
TEXT_BASE = 0xB8000
TEXT_SIZE = 0x8000

# QEMU's EGA default palette is irrelevant here: the BIOS programs the DAC.


# Byte b -> a 64-bit integer whose eight bytes are b's bits, most significant first.
_PLANE_SPREAD = tuple(sum(((b >> (7 - i)) & 1) << (8 * (7 - i)) for i in range(8))
                      for b in range(256))


def dac_to_8bit(v: int) -> int:
    """A 6-bit DAC value widened to 8 bits the way QEMU's VGA does (low bit replicated)."""
    v &= 0x3F
    b = v & 1
    return (v << 2) | (b << 1) | b


@dataclass
class Frame:
    """One drawn screen: ``rgb`` holds ``width * height * 3`` bytes, rows top down."""

    width: int
    height: int
    rgb: bytes


class VgaPci(PciFunction):
    """PCI function 1234:1111 (QEMU's std-vga): BAR0 is the prefetchable framebuffer."""

    name = "vga"
    vendor_id = VGA_VENDOR_ID
    device_id = VGA_DEVICE_ID
    revision = 2
    class_code = CLASS_VGA
    command_reset = 0x0003  # I/O and memory decoding on, as firmware leaves them
    command_mask = 0x0003

    def __init__(self, vram_size: int, on_bar_change: Callable[[int | None, int | None], None]
                 | None = None) -> None:
        self.vram_size = vram_size
        self.on_bar_change = on_bar_change
        self._mapped: int | None = None
        super().__init__()
        self.set_writable(PCI_BAR0, 4, ~(vram_size - 1) & 0xFFFFFFF0)

    def reset(self) -> None:
        super().reset()
        self.set_config(PCI_BAR0, 4, LFB_DEFAULT_BASE | 0x08)  # memory, 32-bit, prefetchable
        self._update_mapping()

    @property
    def lfb_base(self) -> int | None:
        """Where the framebuffer is decoded, or None (memory decoding off / BAR unset)."""
        if not self.command & 0x0002:
            return None
        base = self.get_config(PCI_BAR0, 4) & 0xFFFFFFF0
        return base or None

    def config_written(self, offset: int, size: int) -> None:
        self._update_mapping()

    def state_loaded(self) -> None:
        self._update_mapping()

    def _update_mapping(self) -> None:
        if self.on_bar_change is None:
            return
        new = self.lfb_base
        if new == self._mapped:
            return
        old, self._mapped = self._mapped, new
        self.on_bar_change(old, new)


class Vga:
    """The adapter's state: registers, VRAM, DAC, VBE; drawing in :meth:`render`.

    ``text_memory`` reads the colour text window (0xB8000, 32 KiB of guest RAM):
    a callable ``(offset, n) -> bytes`` the machine supplies.
    """

    def __init__(self, vram_size: int = VRAM_SIZE_DEFAULT,
                 text_memory: Callable[[int, int], bytes] | None = None) -> None:
        if vram_size & (vram_size - 1) or vram_size < (1 << 20):
            raise ValueError("VGA memory must be a power of two of at least 1 MiB")
        self.vram_size = vram_size
        self.vram = bytearray(vram_size)
        self.text_memory = text_memory or (lambda offset, n: bytes(n))
        self.ports = VgaPorts(self)
        self.dispi_ports = VbeDispiPorts(self)
        self.window = VgaMemoryWindow(self)
        #: Called after writes to the registers :meth:`fast_window` reads (sequencer,
        #: graphics controller, VBE), reset and load_state.
        self.on_change: Callable[[], None] | None = None
        #: Called as ``(offset, length)`` after this model writes VRAM itself (window
        #: accesses it serves, a VBE mode set clearing memory): the machine's dirty log.
        self.on_vram_write: Callable[[int, int], None] | None = None
        self.reset()

    STATE_VERSION = 1

    def save_state(self, *, vram: bool = True) -> dict[str, Any]:
        """Registers, DAC and latches, and the whole VRAM (the text cells are guest RAM).

        ``vram=False`` leaves VRAM out, for a caller that keeps it itself (in-memory
        snapshots copy back only its written pages)."""
        state: dict[str, Any] = {"version": self.STATE_VERSION}
        if vram:
            state["vram"] = bytes(self.vram)
        for name in _VGA_STATE_FIELDS:
            value = getattr(self, name)
            state[name] = bytes(value) if isinstance(value, (bytes, bytearray)) else value
        state["vbe"] = list(self.vbe)
        return state

    def load_state(self, state: dict[str, Any], *, vram: bool = True) -> None:
        """Load :meth:`save_state`'s dict; ``vram=False``: VRAM is not in it and stays."""
        check_state(state, "vga", (self.STATE_VERSION,))
        if vram and not isinstance(state.get("vram"), (bytes, bytearray)):
            raise StateError("vga: the saved state has no VRAM")
        if (vram and len(state["vram"]) != self.vram_size) or len(state["vbe"]) != len(self.vbe):
            raise StateError("vga: saved VRAM or DISPI registers have the wrong size")
        for name in _VGA_STATE_FIELDS:
            old = getattr(self, name)
            value = state[name]
            if isinstance(old, (bytes, bytearray)):
                if len(value) != len(old):
                    raise StateError(f"vga: saved {name} has the wrong size")
                value = type(old)(value)
            setattr(self, name, value)
        if vram:
            self.vram[:] = state["vram"]
        self.vbe: list[int] = [int(v) & 0xFFFF for v in state["vbe"]]
        self._changed()

    def reset(self) -> None:
        self.misc = 0x00
        self.seq_index = 0
        self.sr = bytearray(8)
        self.gr_index = 0
        self.gr = bytearray(16)
        self.cr_index = 0
        self.cr = bytearray(0x19)
        self.ar_index = 0
        self.ar = bytearray(0x15)
        self.ar_flip_flop = False  # False: the next write to 0x3C0 is an index
        self.dac = bytearray(256 * 3)
        self.dac_mask = 0xFF
        self.dac_read_index = 0
        self.dac_write_index = 0
        self.dac_sub = 0
        self.dac_state = 0
        self.dac_latch = bytearray(3)
        self.latch = bytes(4)
        self.status_toggle = 0
        self.vbe_index = 0
        self.vbe = [0] * VBE_DISPI_INDEX_COUNT
        self.vbe[VBE_DISPI_INDEX_ID] = VBE_DISPI_ID5
        self.vbe[VBE_DISPI_INDEX_VIDEO_MEMORY_64K] = self.vram_size >> 16
        self.vbe_line_offset = 0
        self.vbe_start = 0
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _vram_written(self, offset: int, length: int) -> None:
        if self.on_vram_write is not None:
            self.on_vram_write(offset, length)

    def fast_window(self) -> tuple[str, int, int, int, int, int] | None:
        """How window accesses reach VRAM when they need no latches, for a caller that
        serves them itself: ``(kind, lo, hi, bank, map_mask, plane_hi)``.  Offsets ``lo
        .. hi-1`` are decoded (plane address ``offset - lo``); kind ``"bank"`` (VBE:
        ``vram[bank + offset]`` below 64 KiB), ``"chain4"``, ``"odd-even"`` (plane
        ``plane_hi | a & 1``) or ``"planar"`` (stores only: write mode 0 without
        rotation, logical operation or set/reset, bit mask FF).  None: every access
        needs :meth:`mem_read` / :meth:`mem_write`."""
        if self.vbe_enabled:
            return "bank", 0, 0x10000, self.vbe[VBE_DISPI_INDEX_BANK] << 16, 0xF, 0
        lo, hi = ((0, WINDOW_SIZE), (0, 0x10000), (0x10000, 0x18000), (0, 0))[self.memory_map]
        sr4, mask, gr = self.sr[SR_MEMORY_MODE], self.sr[SR_MAP_MASK] & 0xF, self.gr
        if sr4 & SR_MEM_CHAIN4:
            return "chain4", lo, hi, 0, mask, 0
        if not sr4 & SR_MEM_ODD_EVEN_DISABLE or gr[GR_MODE] & GR_MODE_ODD_EVEN:
            return "odd-even", lo, hi, 0, mask, gr[GR_READ_MAP_SELECT] & 2
        if (gr[GR_MODE] & 3 == 0 and gr[GR_DATA_ROTATE] & 0x1F == 0
                and gr[GR_ENABLE_SET_RESET] & 0xF == 0 and gr[GR_BIT_MASK] == 0xFF):
            return "planar", lo, hi, 0, mask, 0
        return None

    # -- derived state -----------------------------------------------------------------------

    @property
    def vbe_enabled(self) -> bool:
        return bool(self.vbe[VBE_DISPI_INDEX_ENABLE] & VBE_DISPI_ENABLED)

    @property
    def graphics(self) -> bool:
        return bool(self.gr[GR_MISC] & GR_MISC_GRAPHICS)

    @property
    def memory_map(self) -> int:
        return (self.gr[GR_MISC] >> GR_MISC_MAP_SHIFT) & 3

    def cursor_position(self) -> tuple[int, int] | None:
        """(row, column) of the text cursor, or None when it is off or off screen."""
        if self.graphics or self.vbe_enabled or self.cr[CR_CURSOR_START] & CR_CURSOR_DISABLE:
            return None
        cols, rows = self.text_geometry()[:2]
        pos = ((self.cr[CR_CURSOR_HI] << 8 | self.cr[CR_CURSOR_LO]) - self.start_address())
        if not 0 <= pos < cols * rows:
            return None
        return divmod(pos, cols)

    def start_address(self) -> int:
        return self.cr[CR_START_HI] << 8 | self.cr[CR_START_LO]

    def text_geometry(self) -> tuple[int, int, int, int]:
        """(columns, rows, character width, character height) of the text mode."""
        cols = self.cr[CR_H_DISPLAY_END] + 1
        char_h = (self.cr[CR_MAX_SCAN_LINE] & 0x1F) + 1
        char_w = 8 if self.sr[SR_CLOCKING_MODE] & SR_CLOCK_8DOT else 9
        lines = self._vertical_lines()
        if self.cr[CR_MAX_SCAN_LINE] & CR_MAX_SCAN_DOUBLE:
            lines //= 2
        rows = max(1, lines // char_h)
        return cols, rows, char_w, char_h

    def _vertical_lines(self) -> int:
        overflow = self.cr[CR_OVERFLOW]
        vde = self.cr[CR_V_DISPLAY_END] | (overflow & 0x02) << 7 | (overflow & 0x40) << 3
        return vde + 1

    # -- text ---------------------------------------------------------------------------------

    def text_cells(self) -> tuple[int, int, bytes]:
        """(columns, rows, character/attribute pairs) of the text screen."""
        cols, rows = self.text_geometry()[:2]
        stride = max(self.cr[CR_OFFSET] * 2, cols)
        start = self.start_address() * 2
        out = bytearray()
        for row in range(rows):
            at = (start + row * stride * 2) % TEXT_SIZE
            line = self.text_memory(at, min(cols * 2, TEXT_SIZE - at))
            if len(line) < cols * 2:
                line += self.text_memory(0, cols * 2 - len(line))
            out += line
        return cols, rows, bytes(out)

    def screen_text(self) -> list[str] | None:
        """The text screen as lines (code page 437, trailing blanks kept), or None in graphics."""
        if self.graphics or self.vbe_enabled:
            return None
        cols, rows, cells = self.text_cells()
        chars = cells[0::2]
        return [chars[r * cols:(r + 1) * cols].decode("cp437") for r in range(rows)]

    # -- palette ------------------------------------------------------------------------------

    def _dac_rgb(self, index: int) -> tuple[int, int, int]:
        index &= self.dac_mask
        d = self.dac
        if self.vbe[VBE_DISPI_INDEX_ENABLE] & VBE_DISPI_8BIT_DAC and self.vbe_enabled:
            return d[3 * index], d[3 * index + 1], d[3 * index + 2]
        return dac_to_8bit(d[3 * index]), dac_to_8bit(d[3 * index + 1]), dac_to_8bit(d[3 * index + 2])

    def _attribute_palette(self) -> list[bytes]:
        """RGB of the 16 attribute colours: attribute palette -> colour select -> DAC."""
        mode = self.ar[AR_MODE_CONTROL]
        select = self.ar[AR_COLOR_SELECT]
        out = []
        for i in range(16):
            v = self.ar[i] & 0x3F
            if mode & AR_MODE_P54S:
                v = (v & 0x0F) | (select & 0x0F) << 4
            else:
                v = (v & 0x3F) | (select & 0x0C) << 4
            out.append(bytes(self._dac_rgb(v)))
        return out

    def _dac_palette(self) -> list[bytes]:
        return [bytes(self._dac_rgb(i)) for i in range(256)]

    # -- drawing ------------------------------------------------------------------------------

    def render(self, blink_on: bool = True) -> Frame:
        """The screen as a monitor shows it. ``blink_on``: the phase of blinking and the cursor."""
        if self.vbe_enabled:
            return self._render_vbe()
        if not self.ar_index & AR_INDEX_PAS or self.sr[SR_CLOCKING_MODE] & SR_SCREEN_OFF:
            cols, rows, cw, ch = self.text_geometry()
            width = cols * (8 if self.graphics else cw)
            return Frame(width, rows * ch, bytes(width * rows * ch * 3))
        if not self.graphics:
            return self._render_text(blink_on)
        if self.gr[GR_MODE] & GR_MODE_SHIFT_256:
            return self._render_256()
        return self._render_planar()

    def _font_bases(self) -> tuple[int, int]:
        sel = self.sr[SR_CHAR_MAP_SELECT]
        b = (sel & 0x03) | (sel >> 2) & 0x04
        a = (sel >> 2) & 0x03 | (sel >> 3) & 0x04

        def base(n: int) -> int:
            return (n & 3) * 0x4000 + (n >> 2) * 0x2000

        return base(a), base(b)

    def _render_text(self, blink_on: bool) -> Frame:
        cols, rows, cw, ch = self.text_geometry()
        _, _, cells = self.text_cells()
        palette = self._attribute_palette()
        mode = self.ar[AR_MODE_CONTROL]
        font_a, font_b = self._font_bases()
        plane2 = self.vram[2::4]
        cursor = self.cursor_position() if blink_on else None
        cstart = self.cr[CR_CURSOR_START] & 0x1F
        cend = self.cr[CR_CURSOR_END] & 0x1F
        width = cols * cw
        row_bytes = width * 3
        out = bytearray(row_bytes * rows * ch)
        glyph_cache: dict[tuple[int, int, int, bool], list[bytes]] = {}
        for r in range(rows):
            for c in range(cols):
                i = (r * cols + c) * 2
                code, attr = cells[i], cells[i + 1]
                fg, bg = attr & 0x0F, attr >> 4
                visible = True
                if mode & AR_MODE_BLINK:
                    if bg & 0x08 and not blink_on:
                        visible = False
                    bg &= 0x07
                base = font_a if attr & 0x08 else font_b
                key = (code | base << 8, fg, bg, visible)
                rows_px = glyph_cache.get(key)
                if rows_px is None:
                    rows_px = self._glyph(plane2, base, code, fg, bg, visible, palette, cw, ch, mode)
                    glyph_cache[key] = rows_px
                x0 = c * cw * 3
                for y in range(ch):
                    at = (r * ch + y) * row_bytes + x0
                    out[at:at + cw * 3] = rows_px[y]
                if cursor == (r, c) and cstart <= cend:
                    colour = palette[fg]
                    for y in range(cstart, min(cend, ch - 1) + 1):
                        at = (r * ch + y) * row_bytes + x0
                        out[at:at + cw * 3] = colour * cw
        return Frame(width, rows * ch, bytes(out))

    @staticmethod
    def _glyph(plane2: bytes | bytearray, base: int, code: int, fg: int, bg: int, visible: bool,
               palette: list[bytes], cw: int, ch: int, mode: int) -> list[bytes]:
        fgc, bgc = palette[fg], palette[bg]
        line_graphics = mode & AR_MODE_LINE_GRAPHICS and 0xC0 <= code <= 0xDF
        rows = []
        for y in range(ch):
            bits = plane2[base + code * 32 + y] if visible else 0
            px = bytearray()
            for x in range(8):
                px += fgc if bits & (0x80 >> x) else bgc
            if cw == 9:
                px += fgc if line_graphics and bits & 1 else bgc
            rows.append(bytes(px))
        return rows

    def _graphics_geometry(self) -> tuple[int, int, int]:
        """(width in dots, visible scan lines, lines per row repeat) of a graphics mode."""
        width = (self.cr[CR_H_DISPLAY_END] + 1) * 8
        height = self._vertical_lines()
        repeat = (self.cr[CR_MAX_SCAN_LINE] & 0x1F) + 1
        if self.cr[CR_MAX_SCAN_LINE] & CR_MAX_SCAN_DOUBLE:
            repeat *= 2
        return width, height, repeat

    @staticmethod
    def _indexed_to_rgb(indices: bytes, palette: list[bytes]) -> bytes:
        """Colour indices -> RGB bytes, one channel at a time through ``bytes.translate``."""
        out = bytearray(len(indices) * 3)
        for channel in range(3):
            table = bytes(palette[i][channel] if i < len(palette) else 0 for i in range(256))
            out[channel::3] = indices.translate(table)
        return bytes(out)

    def _render_256(self) -> Frame:
        width, height, repeat = self._graphics_geometry()
        start = self.start_address() * 4
        stride = self.cr[CR_OFFSET] * 8
        lines = []
        for y in range(0, height, repeat):
            at = start + (y // repeat) * stride
            src = bytes(self.vram[at:at + width // 2]).ljust(width // 2, b"\0")
            doubled = bytearray(width)  # each pixel is two dots wide (8D2)
            doubled[0::2] = src
            doubled[1::2] = src
            lines.extend([bytes(doubled)] * min(repeat, height - y))
        return Frame(width, height, self._indexed_to_rgb(b"".join(lines), self._dac_palette()))

    def _render_planar(self) -> Frame:
        width, height, repeat = self._graphics_geometry()
        plane_enable = self.ar[AR_PLANE_ENABLE] & 0x0F
        start = self.start_address() * 4
        stride = self.cr[CR_OFFSET] * 8
        spread = _PLANE_SPREAD
        lines = []
        for y in range(0, height, repeat):
            at = start + (y // repeat) * stride
            src = bytes(self.vram[at:at + width // 2]).ljust(width // 2, b"\0")
            # Eight pixels a byte per plane: spread each plane byte to eight 0/1 bytes
            # (as one 64-bit integer) and weigh the planes 1, 2, 4, 8.
            line = bytearray()
            for i in range(0, len(src), 4):
                v = spread[src[i]] | spread[src[i + 1]] << 1 | spread[src[i + 2]] << 2 \
                    | spread[src[i + 3]] << 3
                line += v.to_bytes(8, "big")
            lines.extend([bytes(line)] * min(repeat, height - y))
        indices = b"".join(lines)
        if plane_enable != 0x0F:
            indices = indices.translate(bytes(i & plane_enable for i in range(256)))
        return Frame(width, height, self._indexed_to_rgb(indices, self._attribute_palette()))

    def _render_vbe(self) -> Frame:
        width = self.vbe[VBE_DISPI_INDEX_XRES]
        height = self.vbe[VBE_DISPI_INDEX_YRES]
        bpp = self.vbe[VBE_DISPI_INDEX_BPP]
        stride = self.vbe_line_offset
        start = self.vbe_start
        out = bytearray()
        if bpp == 8:
            rows = b"".join(bytes(self.vram[start + y * stride:start + y * stride + width])
                            for y in range(height))
            out = bytearray(self._indexed_to_rgb(rows, self._dac_palette()))
        elif bpp == 32 or bpp == 24:
            step = bpp // 8
            for y in range(height):
                at = start + y * stride
                row = self.vram[at:at + width * step]
                line = bytearray(width * 3)
                line[0::3] = row[2::step]
                line[1::3] = row[1::step]
                line[2::3] = row[0::step]
                out += line
        elif bpp in (15, 16):
            for y in range(height):
                at = start + y * stride
                row = self.vram[at:at + width * 2]
                for x in range(width):
                    v = row[2 * x] | row[2 * x + 1] << 8
                    if bpp == 16:
                        r, g, b = v >> 11, (v >> 5) & 0x3F, v & 0x1F
                        out += bytes(((r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2)))
                    else:
                        r, g, b = (v >> 10) & 0x1F, (v >> 5) & 0x1F, v & 0x1F
                        out += bytes(((r << 3) | (r >> 2), (g << 3) | (g >> 2), (b << 3) | (b >> 2)))
        else:
            out = bytearray(width * height * 3)
        out += bytes(width * height * 3 - len(out))
        return Frame(width, height, bytes(out))

    def fingerprint(self) -> bytes:
        """Cheap summary of everything a drawing depends on: equal prints, equal frames."""
        parts: list[bytes | bytearray] = [bytes(self.sr), bytes(self.gr), bytes(self.cr), bytes(self.ar), bytes(self.dac),
                 bytes([self.ar_index & AR_INDEX_PAS, self.dac_mask]),
                 str(self.vbe).encode()]
        if self.vbe_enabled:
            size = self.vbe_line_offset * self.vbe[VBE_DISPI_INDEX_YRES]
            parts.append(self.vram[self.vbe_start:self.vbe_start + size])
        elif self.graphics:
            parts.append(self.vram[:0x40000])
        else:
            parts.append(self.text_memory(0, TEXT_SIZE))
            parts.append(self.vram[2:0x40000:4])
        return b"".join(bytes(p) for p in parts)

    # -- registers ----------------------------------------------------------------------------

    def _crtc_ports(self) -> tuple[int, int, int]:
        if self.misc & MISC_IO_ADDRESS_SELECT:
            return CGA_CRTC_INDEX, CGA_CRTC_DATA, CGA_STATUS
        return MDA_CRTC_INDEX, MDA_CRTC_DATA, MDA_STATUS

    def read_port(self, port: int) -> int:
        crtc_index, crtc_data, status = self._crtc_ports()
        if port in (MDA_CRTC_INDEX, MDA_CRTC_DATA, MDA_STATUS, CGA_CRTC_INDEX, CGA_CRTC_DATA,
                    CGA_STATUS) and port not in (crtc_index, crtc_data, status):
            return 0xFF  # the other CRTC address range is not decoded
        if port == ATT_INDEX:
            return self.ar_index
        if port == ATT_DATA_READ:
            index = self.ar_index & 0x1F
            return self.ar[index] if index < len(self.ar) else 0
        if port == INPUT_STATUS_0:
            return 0
        if port == SEQ_INDEX:
            return self.seq_index
        if port == SEQ_DATA:
            return self.sr[self.seq_index] if self.seq_index < len(self.sr) else 0
        if port == DAC_MASK:
            return self.dac_mask
        if port == DAC_STATE:
            return self.dac_state
        if port == DAC_WRITE_INDEX:
            return self.dac_write_index
        if port == DAC_DATA:
            v = self.dac[self.dac_read_index * 3 + self.dac_sub]
            self.dac_sub += 1
            if self.dac_sub == 3:
                self.dac_sub = 0
                self.dac_read_index = (self.dac_read_index + 1) & 0xFF
            return v
        if port == FEATURE_READ:
            return 0
        if port == MISC_READ:
            return self.misc
        if port == GFX_INDEX:
            return self.gr_index
        if port == GFX_DATA:
            return self.gr[self.gr_index] if self.gr_index < 9 else 0
        if port == crtc_index:
            return self.cr_index
        if port == crtc_data:
            return self.cr[self.cr_index] if self.cr_index < len(self.cr) else 0
        if port == status:
            # No real timing: toggle retrace and display-enable so polling loops finish.
            self.ar_flip_flop = False
            self.status_toggle ^= ST1_VERTICAL_RETRACE | ST1_DISPLAY_DISABLED
            return self.status_toggle
        return 0xFF

    def write_port(self, port: int, value: int) -> None:
        value &= 0xFF
        crtc_index, crtc_data, _ = self._crtc_ports()
        if port == ATT_INDEX:
            if not self.ar_flip_flop:
                self.ar_index = value & 0x3F
            else:
                index = self.ar_index & 0x1F
                if index < len(self.ar):
                    self.ar[index] = value
            self.ar_flip_flop = not self.ar_flip_flop
        elif port == MISC_WRITE:
            self.misc = value
        elif port == SEQ_INDEX:
            self.seq_index = value & 0x07
        elif port == SEQ_DATA:
            if self.seq_index < len(self.sr):
                self.sr[self.seq_index] = value
        elif port == DAC_MASK:
            self.dac_mask = value
        elif port == DAC_READ_INDEX:
            self.dac_read_index = value
            self.dac_sub = 0
            self.dac_state = 3
        elif port == DAC_WRITE_INDEX:
            self.dac_write_index = value
            self.dac_sub = 0
            self.dac_state = 0
        elif port == DAC_DATA:
            self.dac_latch[self.dac_sub] = value
            self.dac_sub += 1
            if self.dac_sub == 3:
                i = self.dac_write_index * 3
                self.dac[i:i + 3] = self.dac_latch
                self.dac_sub = 0
                self.dac_write_index = (self.dac_write_index + 1) & 0xFF
        elif port == GFX_INDEX:
            self.gr_index = value & 0x0F
        elif port == GFX_DATA:
            if self.gr_index < 9:
                self.gr[self.gr_index] = value
        elif port == crtc_index:
            self.cr_index = value & 0x1F
        elif port == crtc_data:
            if self.cr_index < len(self.cr):
                # CR11 bit 7 write-protects CR00-CR07 (except the overflow's line compare bit).
                if self.cr[0x11] & 0x80 and self.cr_index <= 7:
                    if self.cr_index == CR_OVERFLOW:
                        self.cr[7] = (self.cr[7] & ~0x10) | (value & 0x10)
                    return
                self.cr[self.cr_index] = value

    # -- memory window ------------------------------------------------------------------------

    def _window_target(self, offset: int) -> int | None:
        """The window offset within the mapped aperture, or None when not decoded there."""
        addr = WINDOW_BASE + offset
        m = self.memory_map
        if m == 0:
            return addr - 0xA0000
        if m == 1:
            return addr - 0xA0000 if addr < 0xB0000 else None
        if m == 2:
            return addr - 0xB0000 if 0xB0000 <= addr < 0xB8000 else None
        return None  # 0xB8000: RAM

    def mem_read(self, offset: int) -> int:
        if self.vbe_enabled:
            if offset >= 0x10000:
                return 0xFF
            at = (self.vbe[VBE_DISPI_INDEX_BANK] << 16) + offset
            return self.vram[at] if at < self.vram_size else 0xFF
        a = self._window_target(offset)
        if a is None:
            return 0xFF
        sr4 = self.sr[SR_MEMORY_MODE]
        if sr4 & SR_MEM_CHAIN4:
            return self.vram[a]
        if not sr4 & SR_MEM_ODD_EVEN_DISABLE or self.gr[GR_MODE] & GR_MODE_ODD_EVEN:
            plane = (self.gr[GR_READ_MAP_SELECT] & 2) | (a & 1)
            return self.vram[((a & ~1) << 2) | plane]
        base = a << 2
        self.latch = bytes(self.vram[base:base + 4])
        if not self.gr[GR_MODE] & GR_MODE_READ_MODE1:
            return self.latch[self.gr[GR_READ_MAP_SELECT] & 3]
        # Read mode 1: a bit is 1 where every cared-about plane matches the compare colour.
        compare = self.gr[GR_COLOR_COMPARE] & 0x0F
        care = self.gr[GR_COLOR_DONT_CARE] & 0x0F
        result = 0xFF
        for p in range(4):
            if care & (1 << p):
                want = 0xFF if compare & (1 << p) else 0x00
                result &= ~(self.latch[p] ^ want)
        return result & 0xFF

    def mem_write(self, offset: int, value: int) -> None:
        value &= 0xFF
        if self.vbe_enabled:
            if offset < 0x10000:
                at = (self.vbe[VBE_DISPI_INDEX_BANK] << 16) + offset
                if at < self.vram_size:
                    self.vram[at] = value
                    self._vram_written(at, 1)
            return
        a = self._window_target(offset)
        if a is None:
            return
        sr4 = self.sr[SR_MEMORY_MODE]
        mask = self.sr[SR_MAP_MASK]
        if sr4 & SR_MEM_CHAIN4:
            if mask & (1 << (a & 3)):
                self.vram[a] = value
                self._vram_written(a, 1)
            return
        if not sr4 & SR_MEM_ODD_EVEN_DISABLE or self.gr[GR_MODE] & GR_MODE_ODD_EVEN:
            plane = (self.gr[GR_READ_MAP_SELECT] & 2) | (a & 1)
            if mask & (1 << plane):
                at = ((a & ~1) << 2) | plane
                self.vram[at] = value
                self._vram_written(at, 1)
            return
        self._planar_write(a, value, mask)

    def _planar_write(self, a: int, value: int, mask: int) -> None:
        gr = self.gr
        write_mode = gr[GR_MODE] & 3
        latch = self.latch
        bit_mask = gr[GR_BIT_MASK]
        rotate = gr[GR_DATA_ROTATE] & 7
        func = (gr[GR_DATA_ROTATE] >> 3) & 3
        if write_mode == 1:
            planes = latch
        else:
            if write_mode == 0:
                value = ((value >> rotate) | (value << (8 - rotate))) & 0xFF
                sr_enable = gr[GR_ENABLE_SET_RESET]
                planes = bytes((0xFF if gr[GR_SET_RESET] & (1 << p) else 0) if sr_enable & (1 << p)
                               else value for p in range(4))
            elif write_mode == 2:
                planes = bytes(0xFF if value & (1 << p) else 0 for p in range(4))
            else:  # write mode 3: rotated data ANDed with the bit mask; set/reset gives colour
                value = ((value >> rotate) | (value << (8 - rotate))) & 0xFF
                bit_mask &= value
                planes = bytes(0xFF if gr[GR_SET_RESET] & (1 << p) else 0 for p in range(4))
            if func == 1:
                planes = bytes(planes[p] & latch[p] for p in range(4))
            elif func == 2:
                planes = bytes(planes[p] | latch[p] for p in range(4))
            elif func == 3:
                planes = bytes(planes[p] ^ latch[p] for p in range(4))
            planes = bytes((planes[p] & bit_mask) | (latch[p] & ~bit_mask & 0xFF)
                           for p in range(4))
        base = a << 2
        if base + 4 > self.vram_size:
            return
        for p in range(4):
            if mask & (1 << p):
                self.vram[base + p] = planes[p]
        self._vram_written(base, 4)

    # -- Bochs VBE DISPI ---------------------------------------------------------------------

    def vbe_read(self) -> int:
        index = self.vbe_index
        if index >= VBE_DISPI_INDEX_COUNT:
            return 0
        if self.vbe[VBE_DISPI_INDEX_ENABLE] & VBE_DISPI_GETCAPS and index in (
                VBE_DISPI_INDEX_XRES, VBE_DISPI_INDEX_YRES, VBE_DISPI_INDEX_BPP):
            return {VBE_DISPI_INDEX_XRES: VBE_DISPI_MAX_XRES, VBE_DISPI_INDEX_YRES:
                    VBE_DISPI_MAX_YRES, VBE_DISPI_INDEX_BPP: VBE_DISPI_MAX_BPP}[index]
        return self.vbe[index]

    def vbe_write(self, value: int) -> None:
        index = self.vbe_index
        value &= 0xFFFF
        if index == VBE_DISPI_INDEX_ID:
            if VBE_DISPI_ID0 <= value <= VBE_DISPI_ID5:
                self.vbe[index] = value
        elif index in (VBE_DISPI_INDEX_XRES, VBE_DISPI_INDEX_YRES, VBE_DISPI_INDEX_BPP,
                       VBE_DISPI_INDEX_VIRT_WIDTH, VBE_DISPI_INDEX_X_OFFSET,
                       VBE_DISPI_INDEX_Y_OFFSET):
            if index == VBE_DISPI_INDEX_BPP and value == 0:
                value = 8
            if not self.vbe_enabled or index in (VBE_DISPI_INDEX_VIRT_WIDTH,
                                                 VBE_DISPI_INDEX_X_OFFSET,
                                                 VBE_DISPI_INDEX_Y_OFFSET):
                self.vbe[index] = value
                self._vbe_update_layout()
        elif index == VBE_DISPI_INDEX_BANK:
            banks = self.vram_size >> 16
            self.vbe[index] = value & (banks - 1)
        elif index == VBE_DISPI_INDEX_ENABLE:
            self._vbe_enable(value)
        # VIRT_HEIGHT and VIDEO_MEMORY_64K are read-only.

    def _vbe_bytes_per_pixel(self) -> int:
        bpp = self.vbe[VBE_DISPI_INDEX_BPP]
        return 1 if bpp <= 8 else (bpp + 7) // 8 if bpp != 15 else 2

    def _vbe_update_layout(self) -> None:
        v = self.vbe
        bytes_pp = self._vbe_bytes_per_pixel()
        virt_w = max(v[VBE_DISPI_INDEX_VIRT_WIDTH], v[VBE_DISPI_INDEX_XRES])
        line = virt_w * bytes_pp if v[VBE_DISPI_INDEX_BPP] != 4 else virt_w // 2
        if line == 0:
            return
        virt_h = min(self.vram_size // line, 0xFFFF)
        if virt_h < v[VBE_DISPI_INDEX_YRES]:
            virt_w = v[VBE_DISPI_INDEX_XRES]
            line = virt_w * bytes_pp
            virt_h = self.vram_size // line if line else 0
        v[VBE_DISPI_INDEX_VIRT_WIDTH] = virt_w
        v[VBE_DISPI_INDEX_VIRT_HEIGHT] = virt_h
        self.vbe_line_offset = line
        start = v[VBE_DISPI_INDEX_Y_OFFSET] * line + v[VBE_DISPI_INDEX_X_OFFSET] * bytes_pp
        self.vbe_start = start if start + line * v[VBE_DISPI_INDEX_YRES] <= self.vram_size else 0

    def _vbe_enable(self, value: int) -> None:
        v = self.vbe
        was_enabled = self.vbe_enabled
        if value & VBE_DISPI_ENABLED and not was_enabled:
            xres, yres, bpp = v[VBE_DISPI_INDEX_XRES], v[VBE_DISPI_INDEX_YRES], v[
                VBE_DISPI_INDEX_BPP]
            if (bpp not in VBE_BPPS or not 0 < xres <= VBE_DISPI_MAX_XRES
                    or not 0 < yres <= VBE_DISPI_MAX_YRES
                    or xres * yres * ((bpp + 7) // 8) > self.vram_size):
                value &= ~VBE_DISPI_ENABLED  # an impossible mode is refused
            else:
                v[VBE_DISPI_INDEX_VIRT_WIDTH] = xres
                v[VBE_DISPI_INDEX_X_OFFSET] = v[VBE_DISPI_INDEX_Y_OFFSET] = 0
                self._vbe_update_layout()
                if not value & VBE_DISPI_NOCLEARMEM:
                    n = self.vbe_line_offset * yres
                    self.vram[:n] = bytes(n)
                    self._vram_written(0, n)
                # As QEMU: a VBE mode set makes the VGA core a 256-colour graphics mode.
                self.gr[GR_MISC] = (self.gr[GR_MISC] & ~0x0C) | 0x05
                self.sr[SR_MEMORY_MODE] |= SR_MEM_CHAIN4
                self.cr[CR_MAX_SCAN_LINE] &= ~0x9F
        v[VBE_DISPI_INDEX_ENABLE] = value & (VBE_DISPI_ENABLED | VBE_DISPI_GETCAPS
                                             | VBE_DISPI_8BIT_DAC | VBE_DISPI_LFB_ENABLED
                                             | VBE_DISPI_NOCLEARMEM)
        if not value & VBE_DISPI_ENABLED:
            v[VBE_DISPI_INDEX_BANK] = 0


_VGA_STATE_FIELDS = (
    "misc", "seq_index", "sr", "gr_index", "gr", "cr_index", "cr", "ar_index", "ar",
    "ar_flip_flop", "dac", "dac_mask", "dac_read_index", "dac_write_index", "dac_sub",
    "dac_state", "dac_latch", "latch", "status_toggle", "vbe_index", "vbe_line_offset",
    "vbe_start")


class VgaPorts:
    """The VGA's I/O ports 0x3B0-0x3DF; byte and word accesses (a word is two bytes)."""

    def __init__(self, vga: Vga) -> None:
        self.vga = vga

    def reset(self) -> None:
        pass

    def io_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self.vga.read_port(VGA_PORT_BASE + offset + i) << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        first = VGA_PORT_BASE + offset
        for i in range(size):
            self.vga.write_port(first + i, value >> (8 * i))
        # Only the sequencer and graphics registers decide fast_window(); CRTC cursor and
        # DAC writes, most of what a text console does, need no recomputation.
        if first <= SEQ_DATA < first + size or first <= GFX_DATA < first + size:
            self.vga._changed()


class VbeDispiPorts:
    """Ports 0x1CE (index) and 0x1CF (data), 16 bits; a word at 0x1CF's odd byte also lands."""

    def __init__(self, vga: Vga) -> None:
        self.vga = vga

    def reset(self) -> None:
        pass

    def io_read(self, offset: int, size: int) -> int:
        value = self.vga.vbe_index if offset == 0 else self.vga.vbe_read()
        return value & ((1 << (8 * size)) - 1)  # a byte read gets the low byte, as QEMU's

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.vga.vbe_index = value & 0xFFFF
        else:
            self.vga.vbe_write(value)
            self.vga._changed()


class VgaMemoryWindow:
    """0xA0000-0xB7FFF as MMIO: each byte of an access through :meth:`Vga.mem_read`/``mem_write``."""

    def __init__(self, vga: Vga) -> None:
        self.vga = vga

    def reset(self) -> None:
        pass

    def io_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self.vga.mem_read(offset + i) << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self.vga.mem_write(offset + i, value >> (8 * i))
