"""Event delivery: exceptions and interrupts through the IVT or IDT, as an x86 CPU does.

Unicorn stops at every event without delivering it (ENGINE_FACTS.md fact 2); the
vCPU calls :meth:`EventDelivery.deliver` between slices.  Real mode uses the
IVT; protected mode uses 8-byte interrupt and trap gates with a stack switch
through the TSS on a privilege change; long mode uses 16-byte gates, IST
stacks, 16-byte stack alignment and always pushes SS:RSP.  Faults raised
while delivering follow the architecture's double-fault rules; a fault while
delivering #DF is a triple fault.  In long mode a frame that would cross the
canonical boundary is #SS and a non-canonical handler address #GP; stores
that land in ROM are dropped, as on a PC.

A task gate switches tasks as a CALL to the TSS would (qemu_lite.taskswitch).
An event taken in virtual-8086 mode goes to a CPL-0 handler with the vm86
data segments pushed and DS/ES/FS/GS nulled (SDM vol. 3, 20.3.1.1).

Left approximate (documented): task switches to a 16-bit TSS are refused
with a GuestError; PAE PDPTEs are re-read from memory at each walk instead
of being cached at CR3 load.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn import x86_const as X

from qemu_lite.canonical import is_canonical
from qemu_lite.cpustate import CS, DS, ES, FS, GS, HF_CPL_MASK, HF_LMA, SS, Segment, segment_hflags
from qemu_lite.paging import READ, WRITE, PagingState
from qemu_lite.taskswitch import UnsupportedTask, switch_through_gate
from qemu_lite.x86 import EFER_LMA, EFLAGS_IF, EFLAGS_NT, EFLAGS_RF, EFLAGS_TF, EFLAGS_VM

if TYPE_CHECKING:
    from qemu_lite.vcpu import VCpu

DE, DB, NMI, BP, OF, BR, UD, NM, DF, TS, NP, SSF, GP, PF, MF, AC, MC, XM = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19)
HAS_ERROR_CODE = frozenset({DF, TS, NP, SSF, GP, PF, AC, 21, 29, 30})
CONTRIBUTORY = frozenset({DE, TS, NP, SSF, GP})


# kinds of event
EXCEPTION, SOFTWARE, EXTERNAL = "exception", "software", "external"


class DeliveryFault(Exception):
    """An exception raised while delivering another one."""

    def __init__(self, vector: int, error_code: int = 0, cr2: int | None = None,
                 return_ip: int | None = None) -> None:
        super().__init__(f"vector {vector} error code {error_code:#x}")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.return_ip = return_ip  # set when the fault belongs to a task switched to


class GuestError(RuntimeError):
    """The guest did something the machine cannot continue from."""


class TripleFault(GuestError):
    """A fault while delivering a double fault: a real PC resets."""


class UnsupportedEvent(Exception):
    pass


@dataclass
class Event:
    vector: int
    kind: str
    error_code: int | None
    return_ip: int
    cr2: int | None = None


def combine(first: int, second: int) -> int | None:
    """The exception to deliver when ``second`` occurs while delivering ``first``.

    Returns DF for the double-fault cases and None for a triple fault."""
    if first == DF and (second in CONTRIBUTORY or second == PF):
        return None
    if first in CONTRIBUTORY and second in CONTRIBUTORY:
        return DF
    if first == PF and (second in CONTRIBUTORY or second == PF):
        return DF
    return second


class EventDelivery:
    """Performs delivery for one :class:`~qemu_lite.vcpu.VCpu`."""

    def __init__(self, cpu: VCpu) -> None:
        self.cpu = cpu
        self.uc = cpu.uc
        self.delivered = 0
        self._state: PagingState | None = None  # paging registers, read once per delivery
        self._segs: tuple[Segment, ...] = ()     # segment caches and hflags, likewise
        self._hflags = 0

    # -- guest memory as the CPU sees it during delivery ------------------------------

    def _paging(self) -> PagingState:
        if self._state is not None:
            return self._state
        uc = self.uc
        return PagingState(uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR3),
                           uc.reg_read(X.UC_X86_REG_CR4), uc.msr_read(0xC0000080),
                           uc.reg_read(X.UC_X86_REG_RFLAGS))

    def _phys(self, linear: int, size: int, access: str, user: bool) -> list[tuple[int, int]]:
        st = self._paging()
        if st.efer & EFER_LMA and not (is_canonical(linear) and is_canonical(linear + size - 1)):
            # A 48-bit walk would reach the address's canonical alias instead.
            raise DeliveryFault(GP, 0)
        pieces = []
        walk = self.cpu.core.walk  # the fills' C walker: no Python per paging level
        while size > 0:
            chunk = min(size, 4096 - (linear & 0xFFF))
            paddr = walk(st.cr0, st.cr3, st.cr4, st.efer, st.eflags, linear, access, user)
            if paddr < 0:
                raise DeliveryFault(PF, -1 - paddr, linear)
            pieces.append((paddr, chunk))
            linear += chunk
            size -= chunk
        return pieces

    def read(self, linear: int, size: int, user: bool = False) -> bytes:
        out = b""
        for paddr, n in self._phys(linear, size, READ, user):
            try:
                out += bytes(self.uc.mem_read(paddr, n))
            except UcError:
                out += b"\xff" * n
        return out

    def write(self, linear: int, data: bytes, user: bool = False) -> None:
        pos = 0
        for paddr, n in self._phys(linear, len(data), WRITE, user):
            if not self.cpu.core.is_rom(paddr, n):  # stores to ROM are lost, as on a PC
                try:
                    self.uc.mem_write(paddr, data[pos:pos + n])
                except UcError:
                    pass
                self.cpu.notify_phys_write(paddr, n)
            pos += n

    # -- entry point ---------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Deliver ``event``, escalating to #DF or a triple fault as the CPU would."""
        self._state = None
        self._state = self._paging()
        self._segs, self._hflags = self.cpu.segments.snapshot()
        try:
            self._deliver_escalating(event)
        finally:
            self._state = None

    def _deliver_escalating(self, event: Event) -> None:
        first = event
        while True:
            try:
                self._deliver_once(event)
                self.delivered += 1
                return
            except DeliveryFault as f:
                if event.kind != EXCEPTION:
                    nxt: int | None = f.vector
                else:
                    nxt = combine(event.vector, f.vector)
                if nxt is None:
                    raise TripleFault(f"triple fault: {_name(f.vector)} while delivering "
                                      f"{_name(event.vector)} (first event "
                                      f"{_name(first.vector)})") from None
                code = 0 if nxt == DF else f.error_code
                ret = self._fault_return_ip(first) if f.return_ip is None else f.return_ip
                event = Event(nxt, EXCEPTION, code, ret, f.cr2 if nxt == PF else None)

    def _fault_return_ip(self, first: Event) -> int:
        """Where a fault raised while delivering ``first`` returns.  For INT n, INT3 or
        INTO that is the instruction itself (SDM 6.12.1), while ``first.return_ip`` and
        RIP are past it: its length is read from its bytes (CD nn, else one byte)."""
        if first.kind != SOFTWARE:
            return first.return_ip
        try:
            code = self.read(self.cpu.linear_pc() - 2, 2)
        except DeliveryFault:
            return first.return_ip - 2
        return first.return_ip - (2 if code[0] == 0xCD and code[1] == first.vector else 1)

    def _deliver_once(self, ev: Event) -> None:
        if ev.cr2 is not None:
            self.uc.reg_write(X.UC_X86_REG_CR2, ev.cr2)
        if self.cpu.in_real_mode():
            self._deliver_real(ev)
        elif self._hflags & HF_LMA:
            self._deliver_long(ev)
        else:
            self._deliver_protected(ev)

    # -- real mode -----------------------------------------------------------------------

    def _deliver_real(self, ev: Event) -> None:
        uc = self.uc
        idtr = uc.reg_read(X.UC_X86_REG_IDTR)
        base, limit = idtr[1], idtr[2]
        if ev.vector * 4 + 3 > limit:
            raise DeliveryFault(GP, 0)
        new_ip, new_cs = struct.unpack("<HH", self.read(base + ev.vector * 4, 4))
        flags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        cs = self._segment(CS)
        ss = self._segment(SS)
        sp = uc.reg_read(X.UC_X86_REG_RSP) & 0xFFFF
        for value in (flags & 0xFFFF, cs.selector, ev.return_ip & 0xFFFF):
            sp = (sp - 2) & 0xFFFF
            self.write(ss.base + sp, struct.pack("<H", value))
        cs.selector, cs.base = new_cs, new_cs << 4
        self.cpu.commit_delivery({CS: cs}, None, new_ip, sp, 0xFFFF,
                                 flags & ~(EFLAGS_IF | EFLAGS_TF | (1 << 18)))

    # -- protected mode (legacy 32-bit) ----------------------------------------------------

    def _descriptor(self, selector: int, ext: int) -> int:
        uc = self.uc
        if selector & 4:
            ldtr = uc.reg_read(X.UC_X86_REG_LDTR)
            base, limit = ldtr[1], ldtr[2]
        else:
            gdtr = uc.reg_read(X.UC_X86_REG_GDTR)
            base, limit = gdtr[1], gdtr[2]
        index = selector & ~7
        if index + 7 > limit:
            raise DeliveryFault(GP, (selector & ~3) | ext)
        return int(struct.unpack("<Q", self.read(base + index, 8))[0])

    def _gate(self, ev: Event, entry_size: int) -> tuple[int, int, int, int, int]:
        """Read and check the IDT gate: (type, dpl, selector, offset, ist)."""
        ext = 1 if ev.kind == EXTERNAL else 0
        gate_err = ev.vector * 8 + 2 + ext
        idtr = self.uc.reg_read(X.UC_X86_REG_IDTR)
        if ev.vector * entry_size + entry_size - 1 > idtr[2]:
            raise DeliveryFault(GP, gate_err)
        raw = self.read(idtr[1] + ev.vector * entry_size, entry_size)
        lo = struct.unpack_from("<Q", raw)[0]
        gtype = (lo >> 40) & 0xF
        dpl = (lo >> 45) & 3
        selector = (lo >> 16) & 0xFFFF
        offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000)
        ist = (lo >> 32) & 7
        if entry_size == 16:
            offset |= struct.unpack_from("<I", raw, 8)[0] << 32
            valid = gtype in (0xE, 0xF)
        else:
            valid = gtype in (0x6, 0x7, 0xE, 0xF, 0x5)
            ist = 0
        if not valid:
            raise DeliveryFault(GP, gate_err)
        if ev.kind == SOFTWARE and dpl < self._cpl():
            raise DeliveryFault(GP, gate_err)
        if not (lo >> 47) & 1:
            raise DeliveryFault(NP, gate_err)
        if gtype in (0x6, 0x7):
            offset &= 0xFFFF
        return gtype, dpl, selector, offset, ist

    def _cpl(self) -> int:
        return self._hflags & HF_CPL_MASK

    def _segment(self, seg: int) -> Segment:
        """A copy of a segment cache as it was when delivery began."""
        s = self._segs[seg]
        return Segment(s.selector, s.base, s.limit, s.flags)

    def _code_segment(self, selector: int, ext: int, cpl: int) -> tuple[Segment, int]:
        if selector & ~3 == 0:
            raise DeliveryFault(GP, ext)
        desc = self._descriptor(selector, ext)
        hi = desc >> 32
        err = (selector & ~3) | ext
        if not hi & (1 << 12) or not hi & (1 << 11):  # must be a code segment
            raise DeliveryFault(GP, err)
        dpl = (hi >> 13) & 3
        if dpl > cpl:
            raise DeliveryFault(GP, err)
        if not hi & (1 << 15):
            raise DeliveryFault(NP, err)
        conforming = bool(hi & (1 << 10))
        new_cpl = cpl if conforming else dpl
        seg = Segment.from_descriptor((selector & ~3) | new_cpl, desc | (1 << 40))
        return seg, new_cpl

    def _deliver_protected(self, ev: Event) -> None:
        uc = self.uc
        ext = 1 if ev.kind == EXTERNAL else 0
        flags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        vm86 = bool(flags & EFLAGS_VM)
        gtype, _dpl, selector, offset, _ = self._gate(ev, 8)
        if gtype == 0x5:
            code = ev.error_code or 0 if ev.kind == EXCEPTION and ev.vector in HAS_ERROR_CODE \
                else None
            try:
                switch_through_gate(self, selector, ext, ev.return_ip, code)
            except UnsupportedTask as exc:
                raise UnsupportedEvent(str(exc)) from None
            return
        cpl = self._cpl()
        cs_new, new_cpl = self._code_segment(selector, ext, cpl)
        if vm86 and new_cpl != 0:
            raise DeliveryFault(GP, (selector & ~3) | ext)  # the monitor runs at CPL 0
        old_cs = self._segment(CS)
        ss_old = self._segment(SS)
        esp = uc.reg_read(X.UC_X86_REG_RSP)
        wide = gtype in (0xE, 0xF)
        push = []
        new_ss = None
        if new_cpl < cpl:
            tr = uc.reg_read(X.UC_X86_REG_TR)
            tss_base, tss_limit = tr[1], tr[2]
            tss32 = ((self._descriptor(tr[0], ext) >> 40) & 0xF) in (0x9, 0xB) if tr[0] else True
            if tss32:
                if 8 + new_cpl * 8 + 1 > tss_limit:
                    raise DeliveryFault(TS, (tr[0] & ~3) | ext)
                new_esp, new_ss_sel = struct.unpack("<IH", self.read(tss_base + 4 + new_cpl * 8, 6))
            else:
                new_esp, new_ss_sel = struct.unpack("<HH", self.read(tss_base + 2 + new_cpl * 4, 4))
            ss_desc = self._descriptor(new_ss_sel, ext) if new_ss_sel & ~3 else 0
            hi = ss_desc >> 32
            if (not new_ss_sel & ~3 or new_ss_sel & 3 != new_cpl or (hi >> 13) & 3 != new_cpl
                    or (hi >> 11) & 1 or not (hi >> 9) & 1):
                raise DeliveryFault(TS, (new_ss_sel & ~3) | ext)
            if not hi & (1 << 15):
                raise DeliveryFault(SSF, (new_ss_sel & ~3) | ext)
            new_ss = Segment.from_descriptor(new_ss_sel, ss_desc | (1 << 40))
            if vm86:  # the monitor gets the virtual-8086 data segments on its stack
                push += [self._segs[seg].selector for seg in (GS, FS, DS, ES)]
            push += [ss_old.selector, esp]
            stack, sp = new_ss, new_esp
        else:
            stack, sp = ss_old, esp
        push += [flags, old_cs.selector, ev.return_ip]
        if ev.kind == EXCEPTION and ev.vector in HAS_ERROR_CODE:
            push.append(ev.error_code or 0)
        size = 4 if wide else 2
        sp_mask = 0xFFFFFFFF if stack.flags & (1 << 22) else 0xFFFF
        mask = 0xFFFFFFFF if wide else 0xFFFF
        frame = struct.pack(f"<{len(push)}{'I' if wide else 'H'}",
                            *(v & mask for v in reversed(push)))
        sp = (sp - len(frame)) & sp_mask
        if sp + len(frame) <= sp_mask + 1:
            self.write(stack.base + sp, frame)
        else:  # the frame wraps around a 16-bit stack segment
            for i in range(0, len(frame), size):
                self.write(stack.base + ((sp + i) & sp_mask), frame[i:i + size])
        new_flags = flags & ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM)
        if gtype in (0x6, 0xE):
            new_flags &= ~EFLAGS_IF
        segs = {CS: cs_new}
        if new_ss is not None:
            segs[SS] = new_ss
        if vm86:
            for seg in (DS, ES, FS, GS):
                segs[seg] = Segment(0, 0, 0, 0)
        full_sp = (esp & ~sp_mask) | sp if new_ss is None else sp
        self.cpu.commit_delivery(segs, new_cpl, offset, full_sp, 0xFFFFFFFFFFFFFFFF, new_flags)

    # -- long mode -----------------------------------------------------------------------

    def _deliver_long(self, ev: Event) -> None:
        uc = self.uc
        ext = 1 if ev.kind == EXTERNAL else 0
        gtype, _dpl, selector, offset, ist = self._gate(ev, 16)
        cpl = self._cpl()
        cs_new, new_cpl = self._code_segment(selector, ext, cpl)
        if not (cs_new.flags >> 21) & 1 or (cs_new.flags >> 22) & 1:  # L=1, D=0
            raise DeliveryFault(GP, (selector & ~3) | ext)
        old_cs = self._segment(CS)
        ss_old = self._segment(SS)
        rsp = uc.reg_read(X.UC_X86_REG_RSP)
        flags = uc.reg_read(X.UC_X86_REG_RFLAGS)
        tss_base = uc.reg_read(X.UC_X86_REG_TR)[1]
        if ist:
            new_rsp = struct.unpack("<Q", self.read(tss_base + 0x24 + (ist - 1) * 8, 8))[0]
        elif new_cpl < cpl:
            new_rsp = struct.unpack("<Q", self.read(tss_base + 4 + new_cpl * 8, 8))[0]
        else:
            new_rsp = rsp
        new_rsp &= ~0xF
        push = [ss_old.selector, rsp, flags, old_cs.selector, ev.return_ip]
        if ev.kind == EXCEPTION and ev.vector in HAS_ERROR_CODE:
            push.append(ev.error_code or 0)
        frame = struct.pack(f"<{len(push)}Q",
                            *(v & 0xFFFFFFFFFFFFFFFF for v in reversed(push)))
        sp = (new_rsp - len(frame)) & 0xFFFFFFFFFFFFFFFF
        # SDM vol. 2, INT n, 64-bit mode exceptions: a frame that crosses the
        # canonical boundary is #SS, a handler address that is not canonical #GP.
        if not (is_canonical(sp) and is_canonical(new_rsp - 1)):
            raise DeliveryFault(SSF, ext)
        if not is_canonical(offset):
            raise DeliveryFault(GP, ext)
        self.write(sp, frame)
        new_flags = flags & ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM)
        if gtype == 0xE:
            new_flags &= ~EFLAGS_IF
        segs = {CS: cs_new}
        if new_cpl < cpl:
            segs[SS] = Segment(new_cpl, 0, 0, new_cpl << 13)
        self.cpu.commit_delivery(segs, new_cpl, offset, sp, 0xFFFFFFFFFFFFFFFF, new_flags)


_NAMES = {DE: "#DE", DB: "#DB", NMI: "NMI", BP: "#BP", OF: "#OF", BR: "#BR", UD: "#UD",
          NM: "#NM", DF: "#DF", TS: "#TS", NP: "#NP", SSF: "#SS", GP: "#GP", PF: "#PF",
          MF: "#MF", AC: "#AC", MC: "#MC", XM: "#XM"}


def _name(vector: int) -> str:
    return _NAMES.get(vector, f"vector {vector}")


__all__ = ["Event", "EventDelivery", "DeliveryFault", "GuestError", "TripleFault",
           "UnsupportedEvent", "combine", "segment_hflags"]
