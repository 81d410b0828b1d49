"""A reference x86 page walker in Python.

It translates a linear address the way the CPU does for every paging form
(none, 32-bit with PSE, PAE, 4-level long mode with 2 MiB / 1 GiB pages):
permissions combined across levels, CR0.WP, EFER.NXE, SMEP/SMAP,
reserved-bit checks, accessed bits on every entry used and the dirty bit
on writes.  The vCPU uses it for the memory it touches while delivering
events; tests use it as the oracle for mmu_core's C walker.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from qemu_lite.x86 import (
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_PSE,
    CR4_SMAP,
    CR4_SMEP,
    EFER_LMA,
    EFER_NXE,
    EFLAGS_AC,
)

# Page-fault error code bits (KVM's PFERR_*).
PFERR_PRESENT = 1 << 0
PFERR_WRITE = 1 << 1
PFERR_USER = 1 << 2
PFERR_RSVD = 1 << 3
PFERR_FETCH = 1 << 4

PTE_P = 1 << 0
PTE_W = 1 << 1
PTE_U = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_NX = 1 << 63


MAXPHYADDR = 40  # what the CPU model reports in CPUID 0x80000008 (ENGINE_FACTS.md fact 10)
PHYS_MASK = (1 << MAXPHYADDR) - 1

READ, WRITE, FETCH = "read", "write", "fetch"


class PhysicalMemory(Protocol):
    def read_u64(self, paddr: int) -> int: ...
    def read_u32(self, paddr: int) -> int: ...
    def write_u64(self, paddr: int, value: int) -> None: ...
    def write_u32(self, paddr: int, value: int) -> None: ...


class PageFault(Exception):
    """The access faults: deliver #PF with CR2 = ``address``."""

    def __init__(self, address: int, error_code: int) -> None:
        super().__init__(f"#PF at {address:#x} error code {error_code:#x}")
        self.address = address
        self.error_code = error_code


@dataclass(frozen=True)
class PagingState:
    cr0: int
    cr3: int
    cr4: int
    efer: int
    eflags: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.cr0 & CR0_PG)

    @property
    def levels(self) -> int:
        """Guest paging levels as KVM counts them: 0 (off), 2, 3 (PAE) or 4."""
        if not self.cr0 & CR0_PG:
            return 0
        if self.efer & EFER_LMA:
            return 4
        return 3 if self.cr4 & CR4_PAE else 2


@dataclass(frozen=True)
class Translation:
    paddr: int
    page_size: int
    writable: bool
    user: bool
    executable: bool


class RamView:
    """PhysicalMemory over a bytes-like view of guest RAM (bounds-checked)."""

    def __init__(self, ram: memoryview) -> None:
        self._ram = ram
        self._size = len(ram)

    def _check(self, paddr: int, n: int) -> None:
        if paddr < 0 or paddr + n > self._size:
            raise IndexError(paddr)

    def read_u64(self, paddr: int) -> int:
        self._check(paddr, 8)
        return int(struct.unpack_from("<Q", self._ram, paddr)[0])

    def read_u32(self, paddr: int) -> int:
        self._check(paddr, 4)
        return int(struct.unpack_from("<I", self._ram, paddr)[0])

    def write_u64(self, paddr: int, value: int) -> None:
        self._check(paddr, 8)
        struct.pack_into("<Q", self._ram, paddr, value)

    def write_u32(self, paddr: int, value: int) -> None:
        self._check(paddr, 4)
        struct.pack_into("<I", self._ram, paddr, value)


def _rsvd_mask_64(level: int, large: bool, nxe: bool, long_mode: bool) -> int:
    """Reserved bits of a 64-bit-format entry at ``level`` (1 = PTE ... 4 = PML4E)."""
    mask = ((1 << 52) - 1) & ~PHYS_MASK  # physical address bits above MAXPHYADDR
    if not nxe:
        mask |= PTE_NX
    if long_mode:
        if level == 4:
            mask |= PTE_PS
        if large and level == 3:
            mask |= 0x3FFFE000  # bits 29:13 of a 1 GiB page
        if large and level == 2:
            mask |= 0x1FE000  # bits 20:13 of a 2 MiB page
    else:
        if large and level == 2:
            mask |= 0x1FE000
        mask |= 0xFFF0_0000_0000_0000 & ~PTE_NX
    return mask


def translate(mem: PhysicalMemory, st: PagingState, linear: int, access: str,
              user: bool, set_bits: bool = True) -> Translation:
    """Translate ``linear`` for an access of kind READ/WRITE/FETCH.

    ``user`` is True for CPL-3 accesses that are not implicit supervisor
    accesses.  Raises :class:`PageFault`; bad physical addresses in entries
    raise PageFault with RSVD (the walker never reads outside RAM)."""
    if not st.enabled:
        return Translation(linear & 0xFFFFFFFF if not st.efer & EFER_LMA else linear,
                           4096, True, True, True)
    write, fetch = access == WRITE, access == FETCH
    nxe = bool(st.efer & EFER_NXE)
    base_err = (PFERR_WRITE if write else 0) | (PFERR_USER if user else 0)
    if fetch and (nxe or st.cr4 & CR4_SMEP):
        base_err |= PFERR_FETCH
    levels = st.levels
    entries: list[tuple[int, int, bool]] = []  # (entry address, value, is_64bit)

    def fault(extra: int) -> PageFault:
        return PageFault(linear, base_err | extra)

    def read_entry(addr: int, wide: bool) -> int:
        try:
            return mem.read_u64(addr) if wide else mem.read_u32(addr)
        except IndexError:
            raise fault(PFERR_RSVD) from None

    if levels == 2:
        pde_addr = (st.cr3 & 0xFFFFF000) + ((linear >> 22) & 0x3FF) * 4
        pde = read_entry(pde_addr, False)
        if not pde & PTE_P:
            raise fault(0)
        entries.append((pde_addr, pde, False))
        if pde & PTE_PS and st.cr4 & CR4_PSE:
            if pde & (1 << 21):
                raise fault(PFERR_PRESENT | PFERR_RSVD)
            page = (pde & 0xFFC00000) | ((pde >> 13) & 0xFF) << 32
            paddr, size = page | (linear & 0x3FFFFF), 1 << 22
        else:
            pte_addr = (pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4
            pte = read_entry(pte_addr, False)
            if not pte & PTE_P:
                raise fault(0)
            entries.append((pte_addr, pte, False))
            paddr, size = (pte & 0xFFFFF000) | (linear & 0xFFF), 4096
    else:
        long_mode = levels == 4
        if long_mode:
            canon = linear >> 47
            if canon not in (0, (1 << 17) - 1):
                raise fault(0)  # the CPU raises #GP; callers check canonicality first
            table = st.cr3 & PHYS_MASK & ~0xFFF
            top = 4
        else:
            pdpte_addr = (st.cr3 & 0xFFFFFFE0) + ((linear >> 30) & 3) * 8
            pdpte = read_entry(pdpte_addr, True)
            if not pdpte & PTE_P:
                raise fault(0)
            if pdpte & (0x1E6 | (((1 << 64) - 1) & ~PHYS_MASK & ~0xFFF)):
                raise fault(PFERR_PRESENT | PFERR_RSVD)
            table = pdpte & PHYS_MASK & ~0xFFF
            top = 2
        size = 4096
        for level in range(top, 0, -1):
            shift = 12 + 9 * (level - 1)
            addr = table + ((linear >> shift) & 0x1FF) * 8
            entry = read_entry(addr, True)
            if not entry & PTE_P:
                raise fault(0)
            large = bool(entry & PTE_PS) and level in (2, 3) and (level == 2 or long_mode)
            if entry & _rsvd_mask_64(level, large, nxe, long_mode):
                raise fault(PFERR_PRESENT | PFERR_RSVD)
            entries.append((addr, entry, True))
            if large or level == 1:
                size = 1 << shift
                paddr = (entry & PHYS_MASK & ~(size - 1)) | (linear & (size - 1))
                break
            table = entry & PHYS_MASK & ~0xFFF
    writable = all(e & PTE_W for _, e, _ in entries)
    is_user = all(e & PTE_U for _, e, _ in entries)
    nx = nxe and any(e & PTE_NX for _, e, wide in entries if wide)
    if user and not is_user:
        raise fault(PFERR_PRESENT)
    if write and not writable and (user or st.cr0 & CR0_WP):
        raise fault(PFERR_PRESENT)
    if fetch and nx:
        raise fault(PFERR_PRESENT)
    if not user and is_user:
        if fetch and st.cr4 & CR4_SMEP:
            raise fault(PFERR_PRESENT)
        if not fetch and st.cr4 & CR4_SMAP and not st.eflags & EFLAGS_AC:
            raise fault(PFERR_PRESENT)
    if set_bits:
        last = len(entries) - 1
        for i, (addr, value, wide) in enumerate(entries):
            new = value | PTE_A
            if i == last and write:
                new |= PTE_D
            if new != value:
                (mem.write_u64 if wide else mem.write_u32)(addr, new if wide else new & 0xFFFFFFFF)
    return Translation(paddr, size, writable, is_user, not nx)
