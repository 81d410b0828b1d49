"""Device registers served in C: a 16550's LSR and THR, the VGA window, fw_cfg's data.

A guest printing on the serial port reads LSR and writes THR once per byte, and the
video BIOS loads its fonts into VGA plane 2 a byte at a time: each access in Python
takes the GIL, which other machines' threads hold meanwhile.  mmu_core's port and
MMIO hooks answer these accesses in C while the device allows it.  The device stays
the owner of its state: after every change it says (``on_change``) and this module
tells :class:`~mmu_core.Core` what it may now do; bytes the guest transmitted reach
the device's ``transmit`` on a newline, before any other Python callback, and when
the slice ends (``Core.take_stop``), so their order and content never change.
fw_cfg's data port streams the selected item through one of Core's PIO windows, as
the IDE data port does (``piofast``).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from mmu_core._core import VGA_BANK, VGA_CHAIN4, VGA_ODD_EVEN, VGA_OFF, VGA_PLANAR

if TYPE_CHECKING:
    from mmu_core import Core
    from qemu_lite.devices.fw_cfg import FwCfg
    from qemu_lite.devices.uart16550 import Uart16550
    from qemu_lite.devices.vga import Vga

_VGA_KINDS = {"bank": VGA_BANK, "chain4": VGA_CHAIN4, "odd-even": VGA_ODD_EVEN,
              "planar": VGA_PLANAR}


def applies(accel_thread: str) -> bool:
    """Whether the BSP's C fast paths may serve devices: not under thread=multi, where
    the other vCPUs reach the same devices through Python (qemu_lite/multi.py) and the
    state these paths keep in the BSP's Core would race theirs (and the posted writes
    would be reordered after theirs)."""
    return accel_thread != "multi"


def attach_uart(core: Core, index: int, uart: Uart16550, port: int) -> None:
    """Serve ``uart`` (at ``port``, fast-path slot ``index``) in C where it allows."""
    last: list[tuple[int, bool]] = []
    core_ref = weakref.ref(core)  # a thread holding the device must not hold the machine

    def changed() -> None:
        allowed = uart.fast_path()
        live = core_ref()
        if live is not None and last != [allowed]:  # most changes leave it as it was
            last[:] = [allowed]
            live.uart_set(index, *allowed)

    core.uart_attach(index, port, uart.transmit)
    uart.on_change = changed
    changed()


def attach_vga(core: Core, vga: Vga, window: Any, fast: bool = True) -> None:
    """Serve ``vga.window`` (already mapped; ``window`` is the handler ``add_mmio``
    registered for it) in C where its addressing mode allows, and log VRAM pages
    written on either path for snapshots (``Core.vram_log_take``).  ``fast=False``
    (thread=multi, where other vCPUs reach the window through Python) attaches the
    VRAM only, for the framebuffer BAR, and leaves every window access to Python."""
    last: list[object] = []
    core_ref = weakref.ref(core)  # display threads hold the Vga: not the machine through it

    def changed() -> None:
        window = vga.fast_window()
        live = core_ref()
        if live is not None and last != [window]:
            last[:] = [window]
            if window is None:
                live.vga_set(VGA_OFF)
            else:
                kind, lo, hi, bank, mask, plane_hi = window
                live.vga_set(_VGA_KINDS[kind], lo, hi, bank, mask, plane_hi)

    def vram_written(offset: int, length: int) -> None:
        live = core_ref()
        if live is not None:
            live.vram_log_mark(offset, length)  # the stores the C path leaves to Python

    core.vga_attach(window, vga.vram)
    vga.on_vram_write = vram_written
    if fast:
        vga.on_change = changed
        changed()


#: Core's PIO windows 0 and 1 are the IDE channels' (pc.py); fw_cfg takes the next.
FW_CFG_PIO_WINDOW = 2


class FwCfgStream:
    """fw_cfg's two ports and its board slot, with data port reads of the selected item
    streamed in C: a PIO window over a copy of the item, from the device's offset to
    the item's end (the read reaching the end, and any other access, go to the device,
    which first learns how far the window got)."""

    def __init__(self, core: Core, fw_cfg: FwCfg, data_port: int) -> None:
        self._core = core
        self.device = fw_cfg
        self._data_port = data_port
        self._item: bytes | None = None  # what ``_buffer`` copies
        self._buffer = bytearray()

    def _sync(self) -> None:
        pos = self._core.pio_window_close(FW_CFG_PIO_WINDOW)
        if pos >= 0:
            self.device.offset = pos

    def _reopen(self) -> None:
        item = self.device.selected_item()
        if self.device.offset >= len(item):
            return
        if item is not self._item:
            self._item, self._buffer = item, bytearray(item)
        self._core.pio_window_open(FW_CFG_PIO_WINDOW, self._data_port, self._buffer,
                                   self.device.offset, len(item), False)

    def io_read(self, offset: int, size: int) -> int:
        self._sync()
        value = self.device.io_read(offset, size)
        self._reopen()
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._sync()
        self.device.io_write(offset, size, value)
        self._reopen()

    def reset(self) -> None:
        self._sync()
        self.device.reset()
        self._reopen()

    def save_state(self) -> dict[str, Any]:
        self._sync()
        state = self.device.save_state()
        self._reopen()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self._sync()
        self.device.load_state(state)
        self._reopen()
