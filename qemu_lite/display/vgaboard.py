"""Puts :mod:`qemu_lite.devices.vga` on a machine: ports, the legacy window, the LFB, the ROM.

- 0x3B0-0x3DF and 0x1CE-0x1CF go to the device's port objects;
- 0xA0000-0xB7FFF is taken out of guest RAM and mapped as MMIO (planar modes
  need the graphics controller on every access; ``devfast`` serves in C the
  accesses that need no latches);
- 0xB8000-0xBFFFF stays guest RAM: text stores run at RAM speed and the
  device reads the cells from RAM when it draws;
- the framebuffer (the device's ``vram``) is mapped as RAM wherever BAR0 of
  the PCI function points (a "ram" row of the board table, which
  ``pcibars.BarClaims`` moves between slices), so LFB stores need no Python either;
- the video BIOS (SeaVGABIOS ``vgabios-stdvga.bin``, for 1234:1111) is copied
  to 0xC0000 at power-on and every reset, where our BIOS's option-ROM scan
  finds it.  It lives in RAM (SeaVGABIOS writes its own variables during
  initialisation, as it may in the shadow RAM SeaBIOS gives it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu_lite import devfast
from qemu_lite.devices.pci import PciBus
from qemu_lite.devices.vga import (
    TEXT_BASE,
    VBE_DISPI_INDEX_PORT,
    VGA_PORT_BASE,
    VGA_PORT_COUNT,
    WINDOW_BASE,
    WINDOW_SIZE,
    Vga,
    VgaPci,
)
from qemu_lite.platform import PciBar, Slot

if TYPE_CHECKING:
    from qemu_lite.platform import Platform as Machine

#: (first port, count) of the VGA ports whose writes may reach the device later
#: (Core.post_port_writes): attribute 0x3C0-0x3C2, DAC 0x3C6-0x3C9, both CRTCs.
POSTED_VGA_PORTS = ((0x3C0, 3), (0x3C6, 4), (0x3B4, 2), (0x3D4, 2))
VGA_PCI_DEVICE = 2  # 00:02.0, where QEMU's pc machine puts the display
OPTION_ROM_BASE = 0xC0000
OPTION_ROM_MAX = 0x10000
VGA_BIOS_NAME = "vgabios-stdvga.bin"
VGA_BIOS_DIRS = ("/usr/share/seabios", "/usr/share/qemu", "/usr/share/qemu/firmware")


def find_vga_bios() -> Path | None:
    """SeaVGABIOS for std-vga: ``$QEMU_LITE_VGABIOS``, else Debian's seabios/qemu packages."""
    env = os.environ.get("QEMU_LITE_VGABIOS")
    if env:
        return Path(env)
    for d in VGA_BIOS_DIRS:
        p = Path(d) / VGA_BIOS_NAME
        if p.is_file():
            return p
    return None


def load_vga_bios(path: str | os.PathLike[str]) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the VGA BIOS {path}: {exc.strerror}") from None
    if len(data) < 512 or data[:2] != b"\x55\xaa" or len(data) > OPTION_ROM_MAX:
        raise ValueError(f"{path} is not an option ROM (55 AA, at most 64 KiB)")
    return data


class Framebuffer:
    """BAR0's memory (:class:`~qemu_lite.platform.RamBar`): the device's VRAM mapped as
    RAM by ``Core.map_vram``, so LFB stores run at RAM speed and are still logged for
    snapshots.  The board's BAR claims move it (between slices, never in a hook)."""

    name = "vga-framebuffer"

    def __init__(self, core: Any) -> None:
        self._core = core

    def map(self, base: int) -> None:
        self._core.map_vram(base)

    def unmap(self) -> None:
        self._core.unmap_vram()


def attach_vga(machine: Machine, pci: PciBus, vga_bios: str | os.PathLike[str] | None) -> Slot:
    """Build the std-vga adapter on ``machine``; ``vga_bios`` None means the default ROM.

    Returns its board row: the device, and BAR0 (the framebuffer) for the machine's
    BAR claims; ports and the legacy window are claimed here, before the fast paths
    that need them."""
    ram = machine.core.ram

    def text_memory(offset: int, n: int) -> bytes:
        return bytes(ram[TEXT_BASE + offset:TEXT_BASE + offset + n])

    vga = Vga(text_memory=text_memory)
    machine.add_device(VGA_PORT_BASE, VGA_PORT_COUNT, vga.ports)
    machine.add_device(VBE_DISPI_INDEX_PORT, 2, vga.dispi_ports)
    machine.uc.mem_unmap(WINDOW_BASE, WINDOW_SIZE)
    window = machine.add_mmio(WINDOW_BASE, WINDOW_SIZE, vga.window)
    fast = devfast.applies(machine.accel_thread)
    devfast.attach_vga(machine.core, vga, window, fast)  # stores that need no latches, in C
    # Palette, attribute, misc and CRTC writes only matter to the device's own reads and
    # drawing: queued in C (a mode set loads 768 DAC bytes, every character moves the
    # cursor).  Not the sequencer's or graphics controller's: the C window follows them.
    for base, count in POSTED_VGA_PORTS if fast else ():
        machine.core.post_port_writes(base, count)
    machine.remove_from_memory_ranges(WINDOW_BASE, WINDOW_BASE + WINDOW_SIZE)
    function = VgaPci(vga.vram_size)
    pci.add(VGA_PCI_DEVICE, 0, function)
    path = vga_bios if vga_bios is not None else find_vga_bios()
    if path is not None:
        machine.add_ram_image(OPTION_ROM_BASE, load_vga_bios(path))  # again at each reset
    # Its PCI function's state is saved with the bus; the Vga's here.
    return Slot("vga", vga, bars=[PciBar("ram", vga.vram_size, Framebuffer(machine.core),
                                         function, lambda: function.lfb_base)])
