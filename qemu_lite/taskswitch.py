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
segment that is not present).

A 16-bit TSS (SDM 8.6) holds IP, FLAGS, the eight 16-bit registers, ES, CS,
SS, DS and the LDT selector, and no CR3.  As the engine's own switch (JMP,
CALL and IRET; engine patch j fixes its 16-bit layout) does, a switch into one
loads each register's low 16 bits with the upper 16 set, loads FS and GS null,
keeps CR3 and the upper FLAGS bits, and pushes a 16-bit error code.
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
TSS32_AVAILABLE, TSS32_BUSY, TSS16_AVAILABLE, TSS16_BUSY = 0x9, 0xB, 0x1, 0x3
TSS_BUSY_BIT = 1 << 41            # in the 8-byte descriptor
TSS32_MIN_LIMIT, TSS16_MIN_LIMIT = 0x67, 0x2B
EFLAGS_KEPT_BY_16BIT = 0xFFFF0000 & ~(EFLAGS_VM | 1 << 16)   # upper FLAGS bits but VM and RF
DESC_S, DESC_CODE, DESC_CONFORMING, DESC_RW, DESC_P = 1 << 44, 1 << 43, 1 << 42, 1 << 41, 1 << 47
_SEG_ORDER = (ES, CS, SS, DS, FS, GS)  # as the TSS stores the selectors (0x48 + 4 * i)
_GPRS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX,
         X.UC_X86_REG_RSP, X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI)


class UnsupportedTask(Exception):
    pass


class _Task:
    """The fields of a TSS that a switch loads, in either format."""

    def __init__(self, raw: bytes, wide: bool) -> None:
        self.wide = wide
        if wide:
            self.cr3: int | None = struct.unpack_from("<I", raw, 0x1C)[0]
            self.eip, self.eflags = struct.unpack_from("<II", raw, 0x20)
            self.regs = list(struct.unpack_from("<8I", raw, 0x28))
            self.sels = [struct.unpack_from("<H", raw, 0x48 + 4 * i)[0] for i in range(6)]
            self.ldt = struct.unpack_from("<H", raw, 0x60)[0]
        else:
            self.cr3 = None
            self.eip, self.eflags = struct.unpack_from("<HH", raw, 0x0E)
            self.regs = list(struct.unpack_from("<8H", raw, 0x12))
            self.sels = list(struct.unpack_from("<4H", raw, 0x22)) + [0, 0]   # FS, GS null
            self.ldt = struct.unpack_from("<H", raw, 0x2A)[0]


def _save_task(d: EventDelivery, base: int, wide: bool, ip: int, eflags: int) -> None:
    """Store the interrupted task's dynamic state in its TSS, in that TSS's format."""
    uc = d.uc
    gprs = [int(uc.reg_read(r)) for r in _GPRS]
    sels = [d._segs[s].selector for s in _SEG_ORDER]
    if wide:
        d.write(base + 0x20, struct.pack("<II8I", ip & 0xFFFFFFFF, eflags & 0xFFFFFFFF,
                                         *(r & 0xFFFFFFFF for r in gprs)))
        d.write(base + 0x48, b"".join(struct.pack("<HH", sel, 0) for sel in sels))
    else:
        d.write(base + 0x0E, struct.pack("<HH8H4H", ip & 0xFFFF, eflags & 0xFFFF,
                                         *(r & 0xFFFF for r in gprs), *sels[:4]))


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
    wide = dtype == TSS32_AVAILABLE
    new = Segment.from_descriptor(tss_sel, desc)
    if new.limit < (TSS32_MIN_LIMIT if wide else TSS16_MIN_LIMIT):
        raise DeliveryFault(TS, err)
    old_sel, old_base, old_limit, old_flags = uc.reg_read(X.UC_X86_REG_TR)
    old_type = (old_flags >> 8) & 0xF
    old_wide = old_type in (TSS32_BUSY, TSS32_AVAILABLE)
    if not old_wide and old_type not in (TSS16_BUSY, TSS16_AVAILABLE) \
            or old_limit < (TSS32_MIN_LIMIT if old_wide else TSS16_MIN_LIMIT):
        raise UnsupportedTask("task switch away from a missing or short TSS")

    # Read the new task before anything changes (a fault here leaves the old task intact).
    task = _Task(d.read(new.base, 0x68 if wide else 0x2C), wide)
    old_eflags = int(uc.reg_read(X.UC_X86_REG_RFLAGS)) & 0xFFFFFFFF
    _save_task(d, old_base, old_wide, return_ip, old_eflags)
    # Link back to the old task, mark the new one busy (the old one stays busy: nested).
    d.write(new.base, struct.pack("<H", old_sel))
    d.write(gdt_base + index, struct.pack("<Q", desc | TSS_BUSY_BIT))
    if wide:
        eflags, eip, regs = task.eflags, task.eip, task.regs
    else:
        eflags = task.eflags | (old_eflags & EFLAGS_KEPT_BY_16BIT)
        eip = task.eip
        regs = [0xFFFF0000 | v for v in task.regs]
    eflags |= EFLAGS_NT

    # Load the new task: from here on, faults belong to it.
    cr0 = int(uc.reg_read(X.UC_X86_REG_CR0))
    uc.reg_write(X.UC_X86_REG_CR0, cr0 | CR0_TS)
    if cr0 & CR0_PG and task.cr3 is not None:
        uc.reg_write(X.UC_X86_REG_CR3, task.cr3)
    busy = TSS32_BUSY if wide else TSS16_BUSY
    uc.reg_write(X.UC_X86_REG_TR, (tss_sel, new.base, new.limit, new.flags | (busy << 8)))
    for reg, value in zip(_GPRS, regs, strict=True):
        uc.reg_write(reg, value)
    d._state = None                # CR3 may have changed: re-read paging state
    d._state = d._paging()

    fault = _load_ldt(d, task.ldt, gdt_base, gdtr[2])
    segs, seg_fault = _task_segments(d, task.sels, eflags)
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
        size = 4 if wide else 2
        esp = (regs[4] - size) & mask
        d.write(ss.base + esp, (error_code & 0xFFFFFFFF).to_bytes(4, "little")[:size])
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
