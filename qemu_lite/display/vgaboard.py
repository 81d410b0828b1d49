"""Puts :mod:`qemu_lite.devices.vga` on a machine: ports, the legacy window, the LFB, the ROM.

- 0x3B0-0x3DF and 0x1CE-0x1CF go to the device's port objects;
- 0xA0000-0xB7FFF is taken out of guest RAM and mapped as MMIO (planar modes
  need the graphics controller on every access; ``devfast`` serves in C the
  accesses that need no latches);
- 0xB8000-0xBFFFF stays guest RAM: text stores run at RAM speed and the
  device reads the cells from RAM when it draws;
- the framebuffer (the device's ``vram``) is mapped as RAM wherever BAR0 of
  the PCI function points, so LFB stores need no Python either;
- the video BIOS (SeaVGABIOS ``vgabios-stdvga.bin``, for 1234:1111) is copied
  to 0xC0000 at power-on and every reset, where our BIOS's option-ROM scan
  finds it.  It lives in RAM (SeaVGABIOS writes its own variables during
  initialisation, as it may in the shadow RAM SeaBIOS gives it).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn import unicorn_const as UCC

from mmu_core._core import STOP_FAULT
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

if TYPE_CHECKING:
    from qemu_lite.platform import Platform as Machine

log = logging.getLogger(__name__)

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


class _RomLoader:
    """Copies the video BIOS into RAM at 0xC0000 (power-on and reset)."""

    def __init__(self, machine: Machine, data: bytes) -> None:
        self._machine = machine
        self._data = data

    def reset(self) -> None:
        self._machine.write_memory(OPTION_ROM_BASE, self._data)


class _LfbMapping:
    """Keeps the framebuffer mapped at BAR0 (RAM-speed stores; unmapped while disabled).

    A BAR write arrives in a port callback, in the middle of a slice, where
    changing Unicorn's memory map corrupted the guest (a spurious #PF at the old
    base during Linux's BAR sizing).  So the callback only records the wish and
    ends the slice; the machine's poller applies it between slices."""

    def __init__(self, machine: Machine, vga: Vga) -> None:
        self._machine = machine
        self._size = vga.vram_size
        self._buffer = (ctypes.c_char * vga.vram_size).from_buffer(vga.vram)
        self._mapped: int | None = None
        self._wanted: int | None = None
        machine.add_poller(self.apply)

    def _machine_built(self) -> bool:
        # fill_gaps runs once at the end of Machine.__init__; before that, leave gaps alone.
        return hasattr(self._machine, "host_input")

    def __call__(self, old: int | None, new: int | None) -> None:
        self._wanted = new
        self._machine.wake()

    def apply(self) -> None:
        new = self._wanted
        if new == self._mapped:
            return
        uc = self._machine.uc
        if self._mapped is not None:
            uc.mem_unmap(self._mapped, self._size)
            self._mapped = None
        unassigned = getattr(self._machine, "unassigned", None)
        if new is not None and new >= self._machine.memory_size:
            if unassigned is not None:
                unassigned.release(new, self._size)  # the gap filler gives the BAR room
            try:
                uc.mem_map_ptr(new, self._size, UCC.UC_PROT_ALL, ctypes.addressof(self._buffer))
                self._mapped = new
            except UcError:
                # Overlaps the BIOS, an APIC or the top of 4 GiB (a BAR being sized):
                # a real bus would decode garbage there; this one decodes nothing.
                log.debug("VGA framebuffer not mapped at %#x (overlap)", new)
        if unassigned is not None and self._machine_built():
            unassigned.fill_gaps()  # where the framebuffer was: unassigned again
        # Every unmap above (ours, and the gap filler's release) invalidates translated
        # code in the range by looking the address up as a *virtual* fetch through our TLB
        # fill, which records a guest #PF that no guest instruction caused: drop it (this
        # runs between slices, after the run loop took the previous slice's stop).
        flags, _ = self._machine.core.take_stop()
        if flags & STOP_FAULT:
            self._machine.core.take_fault()
        # Unicorn flushes its TLB on map changes; the shadow MMU caches no memory types.


def attach_vga(machine: Machine, pci: PciBus, vga_bios: str | os.PathLike[str] | None) -> Vga:
    """Build the std-vga adapter on ``machine``; ``vga_bios`` None means the default ROM."""
    ram = machine.core.ram

    def text_memory(offset: int, n: int) -> bytes:
        return bytes(ram[TEXT_BASE + offset:TEXT_BASE + offset + n])

    vga = Vga(text_memory=text_memory)
    machine.add_device(VGA_PORT_BASE, VGA_PORT_COUNT, vga.ports)
    machine.add_device(VBE_DISPI_INDEX_PORT, 2, vga.dispi_ports)
    machine.uc.mem_unmap(WINDOW_BASE, WINDOW_SIZE)
    machine.add_mmio(WINDOW_BASE, WINDOW_SIZE, vga.window)
    devfast.attach_vga(machine.core, vga)  # stores that need no latches, in C
    # Palette, attribute, misc and CRTC writes only matter to the device's own reads and
    # drawing: queued in C (a mode set loads 768 DAC bytes, every character moves the
    # cursor).  Not the sequencer's or graphics controller's: the C window follows them.
    for base, count in POSTED_VGA_PORTS:
        machine.core.post_port_writes(base, count)
    machine.remove_from_memory_ranges(WINDOW_BASE, WINDOW_BASE + WINDOW_SIZE)
    function = VgaPci(vga.vram_size)
    lfb = _LfbMapping(machine, vga)
    function.on_bar_change = lfb
    function.reset()  # map BAR0 now that someone listens
    lfb.apply()
    pci.add(VGA_PCI_DEVICE, 0, function)
    path = vga_bios if vga_bios is not None else find_vga_bios()
    if path is not None:
        loader = _RomLoader(machine, load_vga_bios(path))
        loader.reset()
        machine.add_resettable(loader)
    return vga
