"""Where the CPU state keeps what the TLB fill reads: CR0/CR3/CR4, EFER, hflags, EFLAGS.

The patched engine hands out a pointer to the CPU state itself
(``uc_ql_cpu_state``); a saved context is a copy of it from offset 0, so the
offsets are found by diffing contexts of a scratch engine across register
writes, as ``qemu_lite.cpustate`` finds the segment caches: never hard-coded.
``Core`` checks them against ``uc_reg_read`` on its own engine before using
them, and keeps reading registers through the API when anything disagrees.
"""

from __future__ import annotations

import ctypes
import functools
import struct

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

EFER = 0xC0000080


def _context(uc: Uc) -> bytes:
    ctx = uc.context_save()
    return ctypes.string_at(ctx.context.value, ctx.size)


def _only(a: bytes, b: bytes, fmt: str, va: int, vb: int) -> int:
    size = struct.calcsize(fmt)
    hits = [o for o in range(0, min(len(a), len(b)) - size + 1, 4)
            if struct.unpack_from(fmt, a, o)[0] == va and struct.unpack_from(fmt, b, o)[0] == vb]
    if len(hits) != 1:
        raise LookupError(f"{len(hits)} candidates")
    return hits[0]


@functools.cache
def discover() -> dict[str, int] | None:
    """Offsets ``cr0 cr3 cr4 efer hflags eflags`` in the CPU state, or None if not found."""
    try:
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.reg_write(X.UC_X86_REG_CR3, 0x12345000)
        a = _context(uc)
        uc.reg_write(X.UC_X86_REG_CR3, 0x2468A000)
        b = _context(uc)
        cr3 = _only(a, b, "<Q", 0x12345000, 0x2468A000)
        cr0, cr4 = cr3 - 24, cr3 + 8   # target_ulong cr[5]
        if struct.unpack_from("<Q", b, cr0)[0] != uc.reg_read(X.UC_X86_REG_CR0) or \
                struct.unpack_from("<Q", b, cr4)[0] != uc.reg_read(X.UC_X86_REG_CR4):
            return None
        base = uc.msr_read(EFER)
        uc.msr_write(EFER, base | 1)           # SCE
        a = _context(uc)
        va = uc.msr_read(EFER)
        uc.msr_write(EFER, (base & ~1) | 0x800)  # NXE
        b = _context(uc)
        efer = _only(a, b, "<Q", va, uc.msr_read(EFER))
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x40202)   # AC | IF
        a = _context(uc)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x20202)   # VM | IF
        b = _context(uc)
        eflags = _only(a, b, "<Q", 0x40202, 0x20202)
        # hflags sits 8 bytes before the segment caches (see qemu_lite.cpustate).
        uc.reg_write(X.UC_X86_REG_ES, 0x1234)
        a = _context(uc)
        uc.reg_write(X.UC_X86_REG_ES, 0x4321)
        b = _context(uc)
        hflags = _only(a, b, "<I", 0x1234, 0x4321) - 8
        hf = struct.unpack_from("<I", b, hflags)[0]
        if hf & 3 or not hf & (1 << 14) or not hf & (1 << 15):   # CPL 0, LMA, CS64
            return None
    except Exception:  # any surprise: the fill keeps uc_reg_read
        return None
    return {"cr0": cr0, "cr3": cr3, "cr4": cr4, "efer": efer, "hflags": hflags,
            "eflags": eflags}
