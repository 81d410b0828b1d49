"""Multiboot v1 kernels, loaded as QEMU's ``-kernel`` does.

The kernel's image (ELF, or the a.out kludge of header flag 16) is copied to
its load addresses, modules are placed page-aligned after it, and a multiboot
information structure with memory map and command line is built in low
memory.  The CPU enters the kernel in flat 32-bit protected mode with
EAX = 0x2BADB002 and EBX = the structure's address.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qemu_lite.loaders.files import input_file_size, read_input_file

if TYPE_CHECKING:
    from qemu_lite.machine import Machine

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH_LIMIT = 8192
ELF32_HEADER_SIZE, ELF32_PHDR_SIZE = 52, 32
FLAG_PAGE_ALIGN = 1 << 0
FLAG_MEMORY_INFO = 1 << 1
FLAG_VIDEO_MODE = 1 << 2
FLAG_AOUT_KLUDGE = 1 << 16

# multiboot_info.flags bits
MBI_MEM = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

# Where the loader keeps its own structures (conventional memory, below the EBDA).
GDT_ADDR = 0x800
INFO_ADDR = 0x9000
INFO_LIMIT = 0x9F000
LOW_MEMORY_KIB = 639


class MultibootError(ValueError):
    """The file is not a loadable Multiboot v1 kernel."""


@dataclass
class Segment:
    address: int
    data: bytes
    memsize: int


@dataclass
class MultibootImage:
    entry: int
    segments: list[Segment]

    @property
    def end(self) -> int:
        return max(s.address + s.memsize for s in self.segments)


def find_header(image: bytes) -> tuple[int, tuple[int, ...]] | None:
    """Offset and fields of the Multiboot header in the first 8 KiB, or None."""
    for off in range(0, min(len(image), SEARCH_LIMIT) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", image, off)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            fields = struct.unpack_from("<5I", image, off + 12) if len(image) >= off + 32 else ()
            return off, (flags, *fields)
    return None


def is_multiboot(image: bytes) -> bool:
    return find_header(image) is not None


def parse(image: bytes, name: str = "kernel") -> MultibootImage:
    found = find_header(image)
    if found is None:
        raise MultibootError(f"{name}: no Multiboot header in the first 8 KiB")
    off, (flags, *addr) = found
    if flags & 0xFFFF & ~(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE):
        raise MultibootError(f"{name}: Multiboot header asks for unsupported features "
                             f"(flags {flags:#x})")
    if flags & FLAG_AOUT_KLUDGE:
        if len(addr) < 5:
            raise MultibootError(f"{name}: truncated Multiboot header")
        header_addr, load_addr, load_end, bss_end, entry = addr
        start = off - (header_addr - load_addr)
        if start < 0 or load_addr > header_addr:
            raise MultibootError(f"{name}: inconsistent a.out kludge addresses")
        size = (load_end - load_addr) if load_end else len(image) - start
        if start + size > len(image) or size <= 0:
            raise MultibootError(f"{name}: image is shorter than its header says")
        memsize = max(size, (bss_end - load_addr) if bss_end else 0)
        return MultibootImage(entry, [Segment(load_addr, image[start:start + size], memsize)])
    return _parse_elf(image, name)


def _parse_elf(image: bytes, name: str) -> MultibootImage:
    if image[:4] != b"\x7fELF":
        raise MultibootError(f"{name}: neither ELF nor an a.out-kludge Multiboot image")
    if len(image) < ELF32_HEADER_SIZE:
        raise MultibootError(f"{name}: truncated ELF header")
    if image[4] != 1:
        raise MultibootError(f"{name}: 64-bit ELF Multiboot kernels are not supported "
                             "(Multiboot v1 needs ELF32)")
    entry, phoff = struct.unpack_from("<II", image, 24)
    phentsize, phnum = struct.unpack_from("<HH", image, 42)
    if phnum and phentsize < ELF32_PHDR_SIZE:
        raise MultibootError(f"{name}: ELF program header entries of {phentsize} bytes "
                             f"(at least {ELF32_PHDR_SIZE} are needed)")
    segments = []
    for i in range(phnum):
        p = phoff + i * phentsize
        if p + ELF32_PHDR_SIZE > len(image):
            raise MultibootError(f"{name}: truncated ELF program headers")
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from("<6I", image, p)
        if p_type != 1 or p_memsz == 0:  # PT_LOAD only
            continue
        if p_memsz < p_filesz:
            raise MultibootError(f"{name}: ELF segment {i} has p_memsz {p_memsz:#x} smaller "
                                 f"than p_filesz {p_filesz:#x}")
        if p_offset + p_filesz > len(image):
            raise MultibootError(f"{name}: ELF segment extends past the end of the file")
        segments.append(Segment(p_paddr, image[p_offset:p_offset + p_filesz], p_memsz))
    if not segments:
        raise MultibootError(f"{name}: ELF file has nothing to load")
    return MultibootImage(entry, segments)


def _check_fits(mb: MultibootImage, ram: int, name: str, module_sizes: list[tuple[str, int]]
                ) -> list[int]:
    """Refuse segments outside RAM above 1 MiB; return the modules' page-aligned addresses."""
    for seg in mb.segments:
        if seg.address < 0x100000 or seg.address + seg.memsize > ram:
            raise MultibootError(f"{name}: segment at {seg.address:#x} "
                                 f"(+{seg.memsize:#x}) is outside RAM above 1 MiB")
    addresses = []
    next_free = (mb.end + 0xFFF) & ~0xFFF
    for path, size in module_sizes:
        if next_free + size > ram:
            raise MultibootError(f"module {path} does not fit in RAM")
        addresses.append(next_free)
        next_free = (next_free + size + 0xFFF) & ~0xFFF
    return addresses


def check(kernel_path: str | os.PathLike[str], cmdline: str = "",
          modules: list[tuple[str, str]] | None = None, *, memory_size: int) -> None:
    """Raise the error :func:`load` would raise, without a machine (the CLI checks its
    inputs before it opens any output)."""
    name = os.fspath(kernel_path)
    mb = parse(read_input_file(kernel_path, "kernel"), name)
    sizes = [(path, input_file_size(path, "module", allow_empty=True))
             for path, _ in modules or []]
    _check_fits(mb, memory_size, name, sizes)
    strings = [cmdline, *(string for _, string in modules or [])]
    # The information structure, memory map and module list take well under 4 KiB.
    if sum(len(os.fsencode(s)) + 8 for s in strings) + 4096 > INFO_LIMIT - INFO_ADDR:
        raise MultibootError("multiboot information does not fit below 640 KiB "
                             "(command line or module strings too long)")


def load(machine: Machine, kernel_path: str | os.PathLike[str], cmdline: str = "",
         modules: list[tuple[str, str]] | None = None) -> None:
    """Load a Multiboot kernel into ``machine`` and point its CPU at the entry.

    ``modules`` holds ``(path, string)`` pairs (QEMU's ``-initrd "a arg,b"``)."""
    name = os.fspath(kernel_path)
    mb = parse(read_input_file(kernel_path, "kernel"), name)
    ram = machine.memory_size
    contents = [(path, string, read_input_file(path, "module", allow_empty=True))
                for path, string in modules or []]
    addresses = _check_fits(mb, ram, name, [(path, len(data)) for path, _, data in contents])
    for seg in mb.segments:
        machine.write_memory(seg.address, seg.data + bytes(seg.memsize - len(seg.data)))

    info = _InfoBuilder(machine)
    mods = b""
    for addr, (_path, string, data) in zip(addresses, contents, strict=True):
        machine.write_memory(addr, data)
        mods += struct.pack("<4I", addr, addr + len(data), info.string(string), 0)

    mmap = b"".join(struct.pack("<IQQI", 20, base, length, kind) for base, length, kind in (
        (0, LOW_MEMORY_KIB * 1024, 1),
        (LOW_MEMORY_KIB * 1024, 0xA0000 - LOW_MEMORY_KIB * 1024, 2),
        (0xF0000, 0x10000, 2),
        (0x100000, ram - 0x100000, 1),
    ))
    flags = MBI_MEM | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME
    mods_addr = info.blob(mods) if mods else 0
    if mods:
        flags |= MBI_MODS
    mmap_addr = info.blob(mmap)
    mbi = struct.pack("<12I", flags, LOW_MEMORY_KIB, (ram - 0x100000) // 1024, 0,
                      info.string(cmdline), len(modules or []), mods_addr, 0, 0, 0, 0,
                      len(mmap)) + struct.pack("<I", mmap_addr)
    mbi += bytes(4 * 4) + struct.pack("<I", info.string("qemu_lite"))
    mbi_addr = info.blob(mbi)

    machine.cpu.enter_flat_protected_mode(mb.entry, GDT_ADDR)
    machine.set_reg("eax", BOOTLOADER_MAGIC)
    machine.set_reg("ebx", mbi_addr)


class _InfoBuilder:
    """Bump allocator for the multiboot structures in conventional memory."""

    def __init__(self, machine: Machine) -> None:
        self._m = machine
        self._next = INFO_ADDR

    def blob(self, data: bytes) -> int:
        addr = (self._next + 7) & ~7
        if addr + len(data) > INFO_LIMIT:
            raise MultibootError("multiboot information does not fit below 640 KiB")
        self._m.write_memory(addr, data)
        self._next = addr + len(data)
        return addr

    def string(self, text: str) -> int:
        return self.blob(os.fsencode(text) + b"\0")  # argv bytes as given, even non-UTF-8
