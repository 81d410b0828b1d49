"""Task switches for events delivered through a task gate (SDM vol. 3, 8.3).

JMP/CALL to a TSS or task gate and IRET with EFLAGS.NT are instructions, and
Unicorn runs them natively (QEMU's switch_tss).  An interrupt or exception
whose IDT entry is a task gate is delivered by the vCPU (ENGINE_FACTS.md fact 2), so
that switch is done here, the way a CALL to the task does it: the current
state is saved in the old TSS, the new TSS gets the old selector in its link
field and is marked busy, the CPU loads the new task with EFLAGS.NT and
CR0.TS set, and an exception's error code is pushed on the new task's stack.

Faults found before the old state is saved (a bad TSS descriptor, a TSS
below its minimum limit) are raised in the interrupted task; faults found
while loading the new task's segments are raised after the switch, in the
new task, as the SDM orders them (#TS with the offending selector, #NP for a
segment that is not present).  Only 32-bit TSSs are switched to; a 16-bit
TSS is refused with a clear error.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from qemu_lite.cpustate import CS, DS, ES, FS, GS, SS, Segment  # noqa: F401

if TYPE_CHECKING:
    from qemu_lite.events import EventDelivery

TS, NP, GP = 10, 11, 13
CR0_TS = 1 << 3
CR0_PG = 1 << 31
EFLAGS_NT = 1 << 14
EFLAGS_VM = 1 << 17
TSS32_AVAILABLE, TSS32_BUSY, TSS16_AVAILABLE = 0x9, 0xB, 0x1
TSS_BUSY_BIT = 1 << 41            # in the 8-byte descriptor
TSS32_MIN_LIMIT = 0x67
DESC_S, DESC_CODE, DESC_CONFORMING, DESC_RW, DESC_P = 1 << 44, 1 << 43, 1 << 42, 1 << 41, 1 << 47
_SEG_ORDER = (ES, CS, SS, DS, FS, GS)  # as the TSS stores the selectors (0x48 + 4 * i)
_GPRS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX,
         X.UC_X86_REG_RSP, X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI)


class UnsupportedTask(Exception):
    pass


def switch_through_gate(d: EventDelivery, tss_sel: int, ext: int, return_ip: int,
                        error_code: int | None) -> None:
    """Switch to the task ``tss_sel`` names (a task gate's selector), nesting it."""
    from qemu_lite.events import DeliveryFault

    uc = d.uc
    err = (tss_sel & ~3) | ext
    if tss_sel & 4:
        raise DeliveryFault(GP, err)  # a TSS descriptor lives in the GDT only
    gdtr = uc.reg_read(X.UC_X86_REG_GDTR)
    gdt_base = gdtr[1]
    index = tss_sel & ~7
    if index == 0 or index + 7 > gdtr[2]:
        raise DeliveryFault(GP, err)
    desc = int(struct.unpack("<Q", d.read(gdt_base + index, 8))[0])
    dtype = (desc >> 40) & 0xF
    if desc & DESC_S or dtype not in (TSS32_AVAILABLE, TSS16_AVAILABLE):
        raise DeliveryFault(GP, err)  # not a TSS, or busy: a task cannot nest into itself
    if not desc & DESC_P:
        raise DeliveryFault(NP, err)
    if dtype == TSS16_AVAILABLE:
        raise UnsupportedTask("task switch to a 16-bit TSS")
    new = Segment.from_descriptor(tss_sel, desc)
    if new.limit < TSS32_MIN_LIMIT:
        raise DeliveryFault(TS, err)
    old_sel, old_base, old_limit, old_flags = uc.reg_read(X.UC_X86_REG_TR)
    if (old_flags >> 8) & 0xF not in (TSS32_BUSY, TSS32_AVAILABLE) or old_limit < TSS32_MIN_LIMIT:
        raise UnsupportedTask("task switch away from a 16-bit or missing TSS")

    # Read the new task before anything changes (a fault here leaves the old task intact).
    raw = d.read(new.base, 0x68)
    cr3, eip, eflags = struct.unpack_from("<III", raw, 0x1C)
    regs = struct.unpack_from("<8I", raw, 0x28)
    sels = [struct.unpack_from("<H", raw, 0x48 + 4 * i)[0] for i in range(6)]
    ldt_sel = struct.unpack_from("<H", raw, 0x60)[0]

    # Save the old task.
    old_eflags = int(uc.reg_read(X.UC_X86_REG_RFLAGS)) & 0xFFFFFFFF
    snapshot = d._segs
    state = struct.pack("<II8I", return_ip & 0xFFFFFFFF, old_eflags,
                        *(int(uc.reg_read(r)) & 0xFFFFFFFF for r in _GPRS))
    d.write(old_base + 0x20, state)
    d.write(old_base + 0x48, b"".join(struct.pack("<HH", snapshot[s].selector, 0)
                                      for s in _SEG_ORDER))
    # Link back to the old task, mark the new one busy (the old one stays busy: nested).
    d.write(new.base, struct.pack("<H", old_sel))
    d.write(gdt_base + index, struct.pack("<Q", desc | TSS_BUSY_BIT))
    eflags |= EFLAGS_NT

    # Load the new task: from here on, faults belong to it.
    cr0 = int(uc.reg_read(X.UC_X86_REG_CR0))
    uc.reg_write(X.UC_X86_REG_CR0, cr0 | CR0_TS)
    if cr0 & CR0_PG:
        uc.reg_write(X.UC_X86_REG_CR3, cr3)
    uc.reg_write(X.UC_X86_REG_TR, (tss_sel, new.base, new.limit,
                                   new.flags | (TSS32_BUSY << 8)))
    for reg, value in zip(_GPRS, regs, strict=True):
        uc.reg_write(reg, value)
    d._state = None                # CR3 may have changed: re-read paging state
    d._state = d._paging()

    fault = _load_ldt(d, ldt_sel, gdt_base, gdtr[2])
    segs, seg_fault = _task_segments(d, sels, eflags)
    d.cpu.commit_delivery(segs, None, eip, regs[4], 0xFFFFFFFFFFFFFFFF, eflags | 0x2)
    d._segs, d._hflags = d.cpu.segments.snapshot()
    fault = fault or seg_fault
    if fault is not None:
        raise DeliveryFault(fault[0], fault[1] | ext, return_ip=eip)
    if not eflags & EFLAGS_VM and eip > segs[CS].limit:
        raise DeliveryFault(GP, 0, return_ip=eip)
    if error_code is not None:
        ss = segs[SS]
        big = bool(ss.flags & (1 << 22))
        mask = 0xFFFFFFFF if big else 0xFFFF
        esp = (regs[4] - 4) & mask
        d.write(ss.base + esp, struct.pack("<I", error_code & 0xFFFFFFFF))
        uc.reg_write(X.UC_X86_REG_RSP, (regs[4] & ~mask) | esp)


def _load_ldt(d: EventDelivery, sel: int, gdt_base: int, gdt_limit: int
              ) -> tuple[int, int] | None:
    uc = d.uc
    if not sel & ~3:
        uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0))
        return None
    index = sel & ~7
    if sel & 4 or index + 7 > gdt_limit:
        uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0))
        return (TS, sel & ~3)
    desc = int(struct.unpack("<Q", d.read(gdt_base + index, 8))[0])
    if desc & DESC_S or (desc >> 40) & 0xF != 0x2:
        uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0))
        return (TS, sel & ~3)
    if not desc & DESC_P:
        uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0))
        return (TS, sel & ~3)
    ldt = Segment.from_descriptor(sel, desc)
    uc.reg_write(X.UC_X86_REG_LDTR, (sel, ldt.base, ldt.limit, ldt.flags))
    return None


def _task_segments(d: EventDelivery, sels: list[int], eflags: int
                   ) -> tuple[dict[int, Segment], tuple[int, int] | None]:
    """The new task's segment caches, checked as a task switch loads them (SDM 8.3 step 13)."""
    from qemu_lite.events import DeliveryFault

    segs: dict[int, Segment] = {}
    if eflags & EFLAGS_VM:
        for seg, sel in zip(_SEG_ORDER, sels, strict=True):
            segs[seg] = Segment(sel, sel << 4, 0xFFFF, 0xF300)  # P, S, DPL 3, writable
        return segs, None
    cpl = sels[1] & 3
    fault: tuple[int, int] | None = None
    for seg, sel in zip(_SEG_ORDER, sels, strict=True):
        if fault is not None:
            segs[seg] = Segment(sel, 0, 0, 0)
            continue
        if not sel & ~3:
            if seg in (CS, SS):
                fault = (TS, sel & ~3)
            segs[seg] = Segment(sel, 0, 0, 0)
            continue
        try:
            desc = d._descriptor(sel, 0)
        except DeliveryFault:
            fault = (TS, sel & ~3)
            segs[seg] = Segment(sel, 0, 0, 0)
            continue
        fault = _check_segment(seg, sel, desc, cpl)
        segs[seg] = Segment.from_descriptor(sel, desc | (1 << 40)) if fault is None \
            else Segment(sel, 0, 0, 0)
    return segs, fault


def _check_segment(seg: int, sel: int, desc: int, cpl: int) -> tuple[int, int] | None:
    err = sel & ~3
    if not desc & DESC_S:
        return (TS, err)
    rpl, dpl = sel & 3, (desc >> 45) & 3
    code = bool(desc & DESC_CODE)
    if seg == CS:
        if not code or dpl != rpl:  # (conforming code is allowed with DPL <= CPL)
            if not (code and desc & DESC_CONFORMING and dpl <= rpl):
                return (TS, err)
    elif seg == SS:
        if code or not desc & DESC_RW or dpl != cpl or rpl != cpl:
            return (TS, err)
    else:
        if code and not desc & DESC_RW:
            return (TS, err)  # execute-only code
        if not (code and desc & DESC_CONFORMING) and (dpl < cpl or dpl < rpl):
            return (TS, err)
    if not desc & DESC_P:
        return (NP, err)
    return None


__all__ = ["UnsupportedTask", "switch_through_gate"]
