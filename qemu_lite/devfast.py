"""Device registers served in C: a 16550's LSR and THR, the VGA window.

A guest printing on the serial port reads LSR and writes THR once per byte, and the
video BIOS loads its fonts into VGA plane 2 a byte at a time: each access in Python
takes the GIL, which other machines' threads hold meanwhile.  mmu_core's port and
MMIO hooks answer these accesses in C while the device allows it.  The device stays
the owner of its state: after every change it says (``on_change``) and this module
tells :class:`~mmu_core.Core` what it may now do; bytes the guest transmitted reach
the device's ``transmit`` on a newline, before any other Python callback, and when
the slice ends (``Core.take_stop``), so their order and content never change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmu_core._core import VGA_BANK, VGA_CHAIN4, VGA_ODD_EVEN, VGA_OFF, VGA_PLANAR

if TYPE_CHECKING:
    from mmu_core import Core
    from qemu_lite.devices.uart16550 import Uart16550
    from qemu_lite.devices.vga import Vga

_VGA_KINDS = {"bank": VGA_BANK, "chain4": VGA_CHAIN4, "odd-even": VGA_ODD_EVEN,
              "planar": VGA_PLANAR}


def attach_uart(core: Core, index: int, uart: Uart16550, port: int) -> None:
    """Serve ``uart`` (at ``port``, fast-path slot ``index``) in C where it allows."""
    last: list[tuple[int, bool]] = []

    def changed() -> None:
        allowed = uart.fast_path()
        if last != [allowed]:  # most changes leave it as it was
            last[:] = [allowed]
            core.uart_set(index, *allowed)

    core.uart_attach(index, port, uart.transmit)
    uart.on_change = changed
    changed()


def attach_vga(core: Core, vga: Vga) -> None:
    """Serve ``vga.window`` (already mapped) in C where its addressing mode allows."""
    last: list[object] = []

    def changed() -> None:
        window = vga.fast_window()
        if last != [window]:
            last[:] = [window]
            if window is None:
                core.vga_set(VGA_OFF)
            else:
                kind, lo, hi, bank, mask, plane_hi = window
                core.vga_set(_VGA_KINDS[kind], lo, hi, bank, mask, plane_hi)

    core.vga_attach(vga.window, vga.vram)
    vga.on_change = changed
    changed()
