"""The Linux x86 boot protocol, as QEMU's ``-kernel`` uses it (Documentation/x86/boot.rst).

A bzImage's protected-mode part is loaded at 1 MiB, ``boot_params`` (the
"zero page") gets the setup header, an E820 map, the command line and the
initrd's place, and the CPU enters the kernel through the 64-bit boot
protocol (long mode with identity-mapped page tables, flat __BOOT_CS/__BOOT_DS
segments, RSI = boot_params, at the load address + 0x200) or, when asked, the
32-bit one (flat protected mode at code32_start).

The 16-bit entry is the one QEMU always takes and the only one older kernels
(boot protocol before 2.10: iPXE's ``ipxe.lkrn``, say) have: the real-mode setup
code is loaded at 0x10000 and runs after the BIOS's POST, asking the BIOS for
the memory map, the video mode and the disks itself.  The machine hands the
BIOS the entry in the fw_cfg file ``etc/qemu-lite/linuxboot``; its INT 19h
jumps there instead of booting a disk.  A reset loads the kernel again, as
QEMU's linuxboot option ROM does.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qemu_lite.acpi.platform import TABLES_BASE
from qemu_lite.loaders.files import input_file_size, read_input_file

if TYPE_CHECKING:
    from qemu_lite.machine import Machine

HDRS_MAGIC = b"HdrS"
XLF_KERNEL_64 = 1 << 0
LOADED_HIGH = 1 << 0
CAN_USE_HEAP = 1 << 7

# Where the loader puts things in conventional memory.
BOOT_PARAMS = 0x10000
REAL_MODE = 0x10000  # the 16-bit entry's setup code (its boot_params, as the kernel sees it)
REAL_MODE_STACK = 0xFFF0  # SS:SP = REAL_MODE:this, below the command line (as QEMU sets it)
REAL_MODE_SETUP_MAX = 0x8000  # the setup code's most; its heap and stack above it
CMDLINE = 0x20000
GDT = 0x1000
PAGE_TABLES = 0x2000  # PML4, PDPT, then four page directories
KERNEL_LOAD = 0x100000
CMDLINE_MAX = 0x7FFF  # the longest command line placed at CMDLINE (Linux takes 2 KiB)

E820_RAM, E820_RESERVED = 1, 2
LOW_RAM_END = 0x9FC00
LINUXBOOT_FILE = "etc/qemu-lite/linuxboot"  # to the BIOS: u16 segment, u16 SP of the entry
TYPE_OF_LOADER_QEMU = 0xB0  # what QEMU's loader writes (boot.rst's table of IDs)


class LinuxBootError(ValueError):
    """The file is not a kernel this loader can boot."""


def is_bzimage(image: bytes) -> bool:
    return len(image) > 0x264 and image[0x202:0x206] == HDRS_MAGIC


def e820_map(ram_size: int) -> list[tuple[int, int, int]]:
    """Our BIOS's map: the EBDA's KiB, and the firmware tables' window with the ROM."""
    return [(0, LOW_RAM_END, E820_RAM),
            (LOW_RAM_END, 0xA0000 - LOW_RAM_END, E820_RESERVED),
            (TABLES_BASE, 0x100000 - TABLES_BASE, E820_RESERVED),
            (0x100000, ram_size - 0x100000, E820_RAM)]


def install_firmware_tables(machine: Machine) -> int:
    """Write the machine's ACPI and MP tables where the BIOS would; return the RSDP's
    address, or 0 for a machine without ACPI."""
    for address, data in machine.board.firmware_tables:
        machine.write_memory(address, data)
    return TABLES_BASE if machine.board.firmware_tables else 0


@dataclass
class _Plan:
    """Where a checked bzImage's parts go."""

    image: bytes
    setup: bytes  # the real-mode part: setup sectors and the header
    kernel: bytes
    cmdline: bytes
    initrd_addr: int
    entry: str  # "64", "32" or "16": the boot protocol's entry taken


def _plan(image: bytes, name: str, ram: int, cmdline: str, initrd_size: int | None,
          initrd_name: str = "", entry: str = "auto") -> _Plan:
    """Check a bzImage's header against the file and the RAM; place command line and initrd."""
    if not is_bzimage(image):
        raise LinuxBootError(f"{name}: not a Linux bzImage (no HdrS setup header)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    protocol = f"boot protocol {version >> 8}.{version & 0xFF:02d}"
    setup_size = ((image[0x1F1] or 4) + 1) * 512
    if entry == "auto":  # the 16-bit entry for kernels that may not take a flat one
        entry = "16" if version < 0x20A else "64" if _has_64(image, version) else "32"
    if entry == "16":
        if version < 0x202 or not image[0x211] & LOADED_HIGH:
            raise LinuxBootError(f"{name}: {protocol} is too old (a bzImage of 2.02 or newer "
                                 "is needed)")
        if setup_size > REAL_MODE_SETUP_MAX:  # boot.rst: the real-mode code is up to 32 KiB
            raise LinuxBootError(f"{name}: {setup_size} bytes of real-mode setup code do not "
                                 f"fit below its heap and stack ({REAL_MODE_SETUP_MAX} at most)")
    elif version < 0x20A:
        raise LinuxBootError(f"{name}: {protocol} has no {entry}-bit entry (2.10 or newer; "
                             "the 16-bit entry boots it)")
    if entry == "64" and not _has_64(image, version):
        raise LinuxBootError(f"{name}: kernel has no 64-bit entry point")
    syssize = struct.unpack_from("<I", image, 0x1F4)[0] * 16
    if syssize == 0:
        raise LinuxBootError(f"{name}: the setup header promises no protected-mode kernel "
                             "(syssize 0)")
    # syssize counts 16-byte paragraphs, rounded up: the last one may be short in the file
    # (memtest86+'s is 8 bytes short, and QEMU loads it).
    if setup_size + syssize - 15 > len(image):
        raise LinuxBootError(f"{name}: truncated kernel: its header promises "
                             f"{setup_size + syssize} bytes, the file has {len(image)}")
    kernel = image[setup_size:]
    init_size = struct.unpack_from("<I", image, 0x260)[0] if version >= 0x20A else 0
    needed = max(init_size, len(kernel))
    if KERNEL_LOAD + needed > ram:
        raise LinuxBootError(f"{name}: needs {-(-needed >> 20)} MiB above 1 MiB; give the "
                             "machine more memory (-m)")
    cmd = os.fsencode(cmdline) + b"\0"  # argv's bytes as given, even non-UTF-8
    cmdline_size = min(struct.unpack_from("<I", image, 0x238)[0], CMDLINE_MAX) \
        if version >= 0x206 else 255
    if len(cmd) > cmdline_size + 1:
        raise LinuxBootError(f"command line longer than the kernel accepts ({cmdline_size})")
    addr = 0
    if initrd_size is not None:
        initrd_max = (struct.unpack_from("<I", image, 0x22C)[0] if version >= 0x203 else 0) \
            or 0x37FFFFFF
        top = min(ram, initrd_max + 1)
        addr = (top - initrd_size) & ~0xFFF
        if addr < KERNEL_LOAD + init_size:
            raise LinuxBootError(f"initrd {initrd_name} ({initrd_size} bytes) does not fit "
                                 "beside the kernel; give the machine more memory (-m)")
    return _Plan(image, image[:setup_size], kernel, cmd, addr, entry)


def _has_64(image: bytes, version: int) -> bool:
    xloadflags = struct.unpack_from("<H", image, 0x236)[0] if version >= 0x20C else 0
    return bool(xloadflags & XLF_KERNEL_64)


def check(kernel_path: str | os.PathLike[str], cmdline: str = "",
          initrd_path: str | os.PathLike[str] | None = None, *, memory_size: int) -> None:
    """Raise the error :func:`load` would raise, without a machine (the CLI checks its
    inputs before it opens any output)."""
    image = read_input_file(kernel_path, "kernel")
    size = None if initrd_path is None else input_file_size(initrd_path, "initrd")
    _plan(image, os.fspath(kernel_path), memory_size, cmdline, size,
          "" if initrd_path is None else os.fspath(initrd_path))


def load(machine: Machine, kernel_path: str | os.PathLike[str], cmdline: str = "",
         initrd_path: str | os.PathLike[str] | None = None, entry: str = "auto") -> None:
    """Load a bzImage (and initrd) into ``machine`` and point its CPU at an entry.

    ``entry`` is ``"64"`` (long mode at the load address + 0x200), ``"32"``
    (flat protected mode at ``code32_start``, as GRUB's ``linux`` enters), ``"16"``
    (the real-mode setup code, after the BIOS's POST, as QEMU and GRUB's ``linux16``
    enter) or ``"auto"``: the 64-bit entry when the kernel has one, else the 32-bit
    one, and the 16-bit one for kernels older than boot protocol 2.10."""
    if entry not in ("auto", "16", "32", "64"):
        raise ValueError(f"unknown Linux entry {entry!r} (auto, 16, 32 or 64)")
    image = read_input_file(kernel_path, "kernel")
    initrd = None if initrd_path is None else read_input_file(initrd_path, "initrd")
    ram = machine.memory_size
    plan = _plan(image, os.fspath(kernel_path), ram, cmdline,
                 None if initrd is None else len(initrd),
                 "" if initrd_path is None else os.fspath(initrd_path), entry)
    if plan.entry == "16":
        _load_for_real_mode(machine, plan, initrd)
        return
    machine.write_memory(KERNEL_LOAD, plan.kernel)

    params = bytearray(4096)
    header_end = 0x202 + image[0x201]  # the jump at 0x200 skips the header
    params[0x1F1:header_end] = image[0x1F1:header_end]
    params[0x210] = 0xFF  # type_of_loader: undefined loader
    params[0x211] |= LOADED_HIGH | CAN_USE_HEAP
    struct.pack_into("<H", params, 0x224, 0xFE00)  # heap_end_ptr
    machine.write_memory(CMDLINE, plan.cmdline)
    struct.pack_into("<I", params, 0x228, CMDLINE)
    if initrd is not None:
        machine.write_memory(plan.initrd_addr, initrd)
        struct.pack_into("<II", params, 0x218, plan.initrd_addr, len(initrd))

    entries = e820_map(ram)
    params[0x1E8] = len(entries)
    for i, (base, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", params, 0x2D0 + 20 * i, base, size, kind)
    struct.pack_into("<H", params, 0x02, (ram - 0x100000) // 1024 if ram < (64 << 20) else 0xFC00)
    struct.pack_into("<Q", params, 0x070, install_firmware_tables(machine))  # acpi_rsdp_addr
    machine.write_memory(BOOT_PARAMS, bytes(params))

    if plan.entry == "64":
        _write_identity_page_tables(machine)
        machine.cpu.enter_long_mode(KERNEL_LOAD + 0x200, GDT, PAGE_TABLES)
    else:
        # 32-bit boot protocol: flat __BOOT_CS (0x10) / __BOOT_DS (0x18), paging off,
        # ESI = boot_params, EBP = EDI = EBX = 0, at code32_start.
        code32_start = struct.unpack_from("<I", image, 0x214)[0] or KERNEL_LOAD
        machine.cpu.enter_flat_protected_mode(code32_start, GDT, code_sel=0x10)
        for reg in ("ebp", "edi", "ebx"):
            machine.set_reg(reg, 0)
    machine.set_reg("rsi", BOOT_PARAMS)


def _load_for_real_mode(machine: Machine, plan: _Plan, initrd: bytes | None) -> None:
    setup = bytearray(plan.setup)
    setup[0x210] = TYPE_OF_LOADER_QEMU
    setup[0x211] |= CAN_USE_HEAP
    struct.pack_into("<H", setup, 0x224, CMDLINE - REAL_MODE - 0x200)  # heap_end_ptr
    struct.pack_into("<I", setup, 0x228, CMDLINE)
    if initrd is not None:
        struct.pack_into("<II", setup, 0x218, plan.initrd_addr, len(initrd))
        machine.add_ram_image(plan.initrd_addr, initrd)
    # Written again at every reset: a guest that reboots boots the same kernel.
    for address, data in ((REAL_MODE, bytes(setup)), (CMDLINE, plan.cmdline),
                          (KERNEL_LOAD, plan.kernel)):
        machine.add_ram_image(address, data)
    machine.board.fw_cfg.add_file(LINUXBOOT_FILE,
                                  struct.pack("<HH", REAL_MODE >> 4, REAL_MODE_STACK))


def _write_identity_page_tables(machine: Machine) -> None:
    """Map the first 4 GiB 1:1 with 2 MiB pages."""
    pml4, pdpt, pds = PAGE_TABLES, PAGE_TABLES + 0x1000, PAGE_TABLES + 0x2000
    machine.write_memory(pml4, struct.pack("<Q", pdpt | 0x3) + bytes(4088))
    machine.write_memory(pdpt, b"".join(struct.pack("<Q", (pds + i * 0x1000) | 0x3)
                                        for i in range(4)) + bytes(4096 - 32))
    machine.write_memory(pds, b"".join(struct.pack("<Q", (i << 21) | 0x83)
                                       for i in range(2048)))
