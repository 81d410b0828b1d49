"""Where Unicorn keeps what its API cannot set: segment caches and hflags.

A 64-bit Unicorn engine's ``reg_write`` of CS/SS/DS changes only the
selector (ENGINE_FACTS.md fact 5), so the vCPU loads segments by editing the CPU
context buffer between ``emu_start`` calls.  The offsets are discovered once
per process by diffing contexts of scratch engines across known changes,
never hard-coded, so a different Unicorn build fails loudly instead of
corrupting state.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_16, UC_MODE_32, Uc
from unicorn import x86_const as X

# Segment order inside QEMU's CPUX86State.segs[].
ES, CS, SS, DS, FS, GS = range(6)
SEG_REGS = (X.UC_X86_REG_ES, X.UC_X86_REG_CS, X.UC_X86_REG_SS,
            X.UC_X86_REG_DS, X.UC_X86_REG_FS, X.UC_X86_REG_GS)

# QEMU hflags bits that follow the code and stack segments.
HF_CPL_MASK = 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_CS64 = 1 << 15
HF_INHIBIT_IRQ = 1 << 3
HF_PE = 1 << 7


def _context_bytes(uc: Uc) -> bytes:
    ctx = uc.context_save()
    return ctypes.string_at(ctx.context.value, ctx.size)


def _find(a: bytes, b: bytes, fmt: str, va: int, vb: int) -> int:
    size = struct.calcsize(fmt)
    hits = [o for o in range(0, min(len(a), len(b)) - size + 1, 4)
            if struct.unpack_from(fmt, a, o)[0] == va and struct.unpack_from(fmt, b, o)[0] == vb]
    if len(hits) != 1:
        raise RuntimeError(f"cannot locate a CPU context field ({len(hits)} candidates); "
                           "unsupported Unicorn build")
    return hits[0]


@dataclass(frozen=True)
class ContextLayout:
    """Byte offsets inside a saved Unicorn x86 context."""

    segments: tuple[int, ...]  # offset of {u32 selector, u64 base, u32 limit, u32 flags} per segment
    hflags: int
    error_code: int          # error code of the last CPU-raised exception
    exception_is_int: int    # 1 when the last event came from INT n / INT3 / INTO
    exception_next_eip: int  # EIP after that INT instruction
    old_exception: int       # QEMU's nested-exception memory (ENGINE_FACTS.md fact 2)

    @staticmethod
    @functools.cache
    def discover() -> ContextLayout:
        uc = Uc(UC_ARCH_X86, UC_MODE_16)
        offsets = []
        for reg in SEG_REGS:
            uc.reg_write(reg, 0x1234)
            a = _context_bytes(uc)
            uc.reg_write(reg, 0x4321)
            b = _context_bytes(uc)
            sel = _find(a, b, "<I", 0x1234, 0x4321)
            base = _find(a, b, "<Q", 0x12340, 0x43210)
            if base != sel + 8:
                raise RuntimeError("unexpected segment cache layout in Unicorn's CPU context")
            offsets.append(sel)
        if offsets != [offsets[0] + 24 * i for i in range(6)]:
            raise RuntimeError("unexpected segment order in Unicorn's CPU context")
        # hflags sits just before the segment array, after hflags2; check it
        # against what a 16-bit and a 32-bit engine must hold there.
        hflags = offsets[0] - 8
        real = struct.unpack_from("<I", _context_bytes(uc), hflags)[0]
        prot = struct.unpack_from("<I", _context_bytes(Uc(UC_ARCH_X86, UC_MODE_32)), hflags)[0]
        if real & (HF_CS32 | HF_SS32) or prot & (HF_CS32 | HF_SS32) != HF_CS32 | HF_SS32:
            raise RuntimeError("cannot locate hflags in Unicorn's CPU context")
        return ContextLayout(tuple(offsets), hflags, **_discover_event_fields())


def _run_scratch(code: bytes) -> tuple[bytes, bytes]:
    """Run ``code`` in a flat 32-bit scratch engine until its first event."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code)
    before = _context_bytes(uc)
    uc.hook_add(UC_HOOK_INTR, lambda u, n, d: u.emu_stop())
    uc.emu_start(0x1000, 0x1000 + len(code))
    return before, _context_bytes(uc)


def _discover_event_fields() -> dict[str, int]:
    # mov ax, SEL; mov ds, ax -> #GP(SEL & ~3) with an empty GDT; int 0x55 -> software event.
    b1, gp1 = _run_scratch(b"\x66\xb8\x37\x12\x8e\xd8\x90")
    _, gp2 = _run_scratch(b"\x66\xb8\x67\x24\x8e\xd8\x90")
    b3, sw = _run_scratch(b"\x90\xcd\x55\x90")
    u32 = functools.partial(struct.unpack_from, "<I")
    i32 = functools.partial(struct.unpack_from, "<i")
    n = min(len(gp1), len(gp2), len(sw))

    def only(pred) -> int:
        hits = [o for o in range(0, n - 8, 4) if pred(o)]
        if len(hits) != 1:
            raise RuntimeError("cannot locate exception fields in Unicorn's CPU context")
        return hits[0]

    error_code = only(lambda o: u32(gp1, o)[0] == 0x1234 and u32(gp2, o)[0] == 0x2464)
    old_exception = only(lambda o: i32(b1, o)[0] == -1 and i32(gp1, o)[0] == 13)
    is_int = only(lambda o: u32(sw, o)[0] == 1 and u32(gp1, o)[0] == 0 and u32(b3, o)[0] == 0)
    next_eip = is_int + 4
    if struct.unpack_from("<Q", sw, next_eip)[0] != 0x1003:
        raise RuntimeError("cannot locate exception_next_eip in Unicorn's CPU context")
    return {"error_code": error_code, "exception_is_int": is_int,
            "exception_next_eip": next_eip, "old_exception": old_exception}


@dataclass
class Segment:
    """A loaded segment register: selector and its hidden descriptor cache."""

    selector: int
    base: int
    limit: int
    flags: int  # descriptor bits 8-23 of the high dword, as QEMU keeps them

    @staticmethod
    def from_descriptor(selector: int, desc: int) -> Segment:
        """Decode an 8-byte GDT/LDT descriptor (as an integer)."""
        lo, hi = desc & 0xFFFFFFFF, desc >> 32
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        if hi & (1 << 23):  # granularity: 4 KiB units
            limit = (limit << 12) | 0xFFF
        return Segment(selector, base, limit, hi & 0x00F0FF00)

    @staticmethod
    def real_mode(selector: int, flags: int) -> Segment:
        return Segment(selector, selector << 4, 0xFFFF, flags)


class SegmentEditor:
    """Read and write segment caches and hflags of a ``mmu_core.Core``'s CPU."""

    def __init__(self, core) -> None:  # core: mmu_core.Core
        self._core = core
        self.layout = ContextLayout.discover()

    def read(self, seg: int) -> Segment:
        buf = self._core.context_save()
        return self._get(buf, seg)

    def snapshot(self) -> tuple[tuple[Segment, ...], int]:
        """All six segment caches and hflags from one context save."""
        buf = self._core.context_save()
        segs = tuple(self._get(buf, seg) for seg in range(6))
        return segs, int(struct.unpack_from("<I", buf, self.layout.hflags)[0])

    def _get(self, buf: memoryview, seg: int) -> Segment:
        o = self.layout.segments[seg]
        sel, base, limit, flags = struct.unpack_from("<I4xQII", buf, o)
        return Segment(sel, base, limit, flags)

    def commit(self, segments: dict[int, Segment], eflags: int) -> None:
        """Load segment caches after an event delivery or SYSCALL-like transfer.

        Recomputes CPL and the CS/SS-dependent hflags from the new segments,
        clears the interrupt shadow and QEMU's nested-exception memory."""
        buf = self._core.context_save()
        lay = self.layout
        for seg, s in segments.items():
            struct.pack_into("<I4xQII", buf, lay.segments[seg], s.selector, s.base, s.limit, s.flags)
        cs, ss = self._get(buf, CS), self._get(buf, SS)
        bases = self._get(buf, DS).base | self._get(buf, ES).base | ss.base
        hf = struct.unpack_from("<I", buf, lay.hflags)[0]
        protected = bool(hf & HF_PE)
        hf = segment_hflags(hf & ~HF_INHIBIT_IRQ, cs, ss, bases, protected,
                            bool(eflags & (1 << 17)))
        struct.pack_into("<I", buf, lay.hflags, hf)
        struct.pack_into("<i", buf, lay.old_exception, -1)
        self._core.context_restore()

    def hflags(self) -> int:
        buf = self._core.context_save()
        return int(struct.unpack_from("<I", buf, self.layout.hflags)[0])


HF_ADDSEG = 1 << 6
HF_LMA = 1 << 14
DESC_B = 1 << 22
DESC_L = 1 << 21


def segment_hflags(hflags: int, cs: Segment, ss: Segment, ds_es_ss_bases: int,
                   protected: bool, vm86: bool) -> int:
    """Recompute the hflags bits that depend on CS and SS, as QEMU's segment loads do."""
    hf = hflags & ~(HF_CS32 | HF_SS32 | HF_CS64 | HF_ADDSEG | HF_CPL_MASK)
    if hflags & HF_LMA and cs.flags & DESC_L:
        hf |= HF_CS32 | HF_SS32 | HF_CS64
    else:
        if cs.flags & DESC_B:
            hf |= HF_CS32
        if ss.flags & DESC_B:
            hf |= HF_SS32
    if protected and not vm86:
        hf |= cs.selector & 3  # CPL is CS.RPL after any far transfer
    if not hf & HF_CS64:
        if not protected or vm86 or not hf & HF_CS32:
            hf |= HF_ADDSEG
        elif ds_es_ss_bases:
            hf |= HF_ADDSEG
    return hf
