"""``-option-rom FILE``: extra option ROMs in 0xC0000-0xDFFFF, after the video BIOS.

QEMU hands such a ROM to the firmware as the fw_cfg file ``genroms/NAME`` and
SeaBIOS copies it into the option-ROM area.  Our BIOS finds ROMs the way a PC
BIOS does, by scanning that area (``firmware/bios/optrom.inc``), so the machine
copies each ROM into RAM there, at the next 2 KiB boundary after the video BIOS
and after each other, at power-on and every reset.  The same bytes are also
offered as ``genroms/NAME``, so a foreign BIOS given with ``--bios`` (SeaBIOS)
runs them as under QEMU.

The host checks only what makes the file no ROM at all (no 55h AAh signature)
or what cannot fit the area; the length byte and the checksum are the BIOS's to
judge, as on a PC: ours skips a ROM whose bytes do not sum to 0 and says so on
the console.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from qemu_lite.devices.fw_cfg import FwCfg
from qemu_lite.loaders.files import InputFileError, read_input_file

if TYPE_CHECKING:
    from qemu_lite.platform import HostMemory

AREA_START = 0xC0000
AREA_END = 0xE0000
ALIGN = 0x800  # the BIOS looks every 2 KiB


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def read_option_rom(path: str | os.PathLike[str]) -> bytes:
    """The ROM's bytes; refuses a file without the 55h AAh signature or over 128 KiB."""
    data = read_input_file(path, "option ROM")
    if data[:2] != b"\x55\xaa":
        raise InputFileError(f"option ROM '{os.fspath(path)}' does not start with 55 AA "
                             "(not an option ROM)")
    if len(data) > AREA_END - AREA_START:
        raise InputFileError(f"option ROM '{os.fspath(path)}' is {len(data)} bytes; "
                             f"the option-ROM area holds {AREA_END - AREA_START}")
    return data


def first_free(machine: HostMemory) -> int:
    """The 2 KiB boundary after the ROM at 0xC0000 (the video BIOS), or 0xC0000."""
    header = machine.read_memory(AREA_START, 3)
    if header[:2] != b"\x55\xaa":
        return AREA_START
    return AREA_START + _align(max(header[2] * 512, 1))


def read_option_roms(paths: list[str | os.PathLike[str]]) -> list[tuple[str, bytes]]:
    """Each ROM as (path, bytes), read and checked before the machine creates any output."""
    return [(os.fspath(path), read_option_rom(path)) for path in paths]


class OptionRoms:
    """Copies the ROMs into RAM at their places (power-on and reset)."""

    def __init__(self, machine: HostMemory, fw_cfg: FwCfg, roms: list[tuple[str, bytes]]) -> None:
        self._machine = machine
        self.placed: list[tuple[int, bytes]] = []
        address = first_free(machine)
        names: set[str] = set()
        for path, data in roms:
            if address + len(data) > AREA_END:
                raise InputFileError(
                    f"option ROM '{path}' ({len(data)} bytes) does not fit: "
                    f"{max(AREA_END - address, 0)} bytes are free up to {AREA_END:#x}")
            self.placed.append((address, data))
            address = _align(address + len(data))
            name = os.path.basename(path)
            while name in names:
                name = "_" + name
            names.add(name)
            fw_cfg.add_file(f"genroms/{name}"[:55], data)
        self.reset()

    def reset(self) -> None:
        for address, data in self.placed:
            self._machine.write_memory(address, data)

    def save_state(self) -> dict[str, Any]:
        return {"version": 1}  # the ROMs' bytes are in RAM, saved with it

    def load_state(self, state: dict[str, Any]) -> None:
        from qemu_lite.devices.base import check_state

        check_state(state, "option-roms", (1,))
