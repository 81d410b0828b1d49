"""The virtual CPU: reset, run slices, and event delivery.

Unicorn never delivers an exception or interrupt through the guest's tables
(ENGINE_FACTS.md fact 2): every event stops ``emu_start`` (mmu_core's C hook) and the
vCPU delivers it here, between slices, as an x86 CPU would.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from unicorn import UC_ARCH_X86, UC_MODE_16, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from mmu_core import Core
from qemu_lite.canonical import is_canonical, is_stack_fault
from qemu_lite.cpustate import (
    CS,
    DS,
    ES,
    FS,
    GS,
    HF_CS64,
    HF_INHIBIT_IRQ,
    SS,
    Segment,
    SegmentEditor,
)
from qemu_lite.events import (
    EXCEPTION,
    EXTERNAL,
    GP,
    NMI,
    PF,
    SOFTWARE,
    SSF,
    UD,
    DeliveryFault,
    Event,
    EventDelivery,
    GuestError,
    TripleFault,
    UnsupportedEvent,
)
from qemu_lite.paging import RamView
from qemu_lite.x86 import (
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_SCE,
    EFLAGS_IF,
    EFLAGS_RF,
    EFLAGS_VM,
    MSR_CSTAR,
    MSR_EFER,
    MSR_FMASK,
    MSR_LSTAR,
    MSR_STAR,
    MSR_SYSENTER_CS,
    MSR_SYSENTER_EIP,
    MSR_SYSENTER_ESP,
)

# emu_start's "until", ignored since exits are enabled (see new_engine).
NEVER = 0xFFFF_FFFF_FFFF_FFF0



def new_engine() -> tuple[Uc, object]:
    """A 64-bit engine whose CPU is in real mode at F000:FFF0, and its reset context.

    A UC_MODE_64 engine starts in long mode and cannot load real-mode segment
    caches through its API, so the reset state is made by a UC_MODE_16 engine
    and transplanted (ENGINE_FACTS.md fact 5).
    """
    uc16 = Uc(UC_ARCH_X86, UC_MODE_16)
    uc16.reg_write(X.UC_X86_REG_CS, 0xF000)
    uc16.reg_write(X.UC_X86_REG_IP, 0xFFF0)
    uc16.reg_write(X.UC_X86_REG_EDX, 0x0663)  # family 6 reset signature
    uc16.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0xFFFF, 0))  # reset values (SDM 9.1.1)
    uc16.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
    reset = uc16.context_save()
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.context_restore(reset)
    # With exits enabled and none set, emu_start's "until" is ignored.  Without
    # this, every emu_start ends by invalidating translations at until - 1,
    # which walks the guest page tables for that address: where it is not
    # mapped, QEMU records a page fault (CR2, error code, nested-exception
    # state) that the guest later observes (qemu/softmmu/cpus.c).
    uc.ctl_exits_enabled(True)
    return uc, reset


class VCpu:
    """One x86 CPU backed by a Unicorn engine and an ``mmu_core.Core``."""

    def __init__(self, uc: Uc, core: Core, reset_context: object) -> None:
        self.uc = uc
        self.core = core
        self.segments = SegmentEditor(core)
        self._reset_context = reset_context
        self.halted = False
        self.walk_memory = _TrackedRam(core.ram, self.notify_phys_write)
        lay = self.segments.layout
        core.set_event_layout(lay.error_code, lay.exception_is_int, lay.exception_next_eip,
                              X.UC_X86_REG_CR2)
        attach = getattr(core, "attach_fast_events", None)
        self._fast_events_available = bool(attach is not None and attach(lay.old_exception))
        self._fast_events_wanted = os.environ.get("QEMU_LITE_EVENTS", "") != "python"
        self._syscall_observer: Callable[[str], None] | None = None
        self._update_fast_events()
        self.events = EventDelivery(self)

    # -- INT n / SYSCALL in C (mmu_core/fastevent.pxi) -------------------------------

    @property
    def syscall_observer(self) -> Callable[[str], None] | None:
        """Told "int80", "syscall" or "sysenter" before the vCPU performs that entry, the
        caller's registers still in place (Machine.add_syscall_hook); None: off.  While
        one is set every entry stops the slice and is delivered here, in Python."""
        return self._syscall_observer

    @syscall_observer.setter
    def syscall_observer(self, observer: Callable[[str], None] | None) -> None:
        self._syscall_observer = observer
        self._update_fast_events()

    @property
    def fast_events(self) -> bool:
        """Are INT n (real mode, 32- and 64-bit gates) and 64-bit SYSCALLs delivered
        inside the engine's hooks (mmu_core's C path; the patched engine only)?  Setting False sends every
        one through :class:`~qemu_lite.events.EventDelivery` (as does
        ``QEMU_LITE_EVENTS=python`` in the environment); both give the guest the same
        state.  A syscall observer also turns the C path off while it is set."""
        return bool(getattr(self.core, "fast_events", False))

    @fast_events.setter
    def fast_events(self, on: bool) -> None:
        self._fast_events_wanted = on
        self._update_fast_events()

    def _update_fast_events(self) -> None:
        if self._fast_events_available:
            self.core.set_fast_events(self._fast_events_wanted
                                      and self._syscall_observer is None)

    # -- registers --------------------------------------------------------------

    def reg(self, name: str) -> int:
        return int(self.uc.reg_read(_reg_id(name)))

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(_reg_id(name), value)

    @property
    def rip(self) -> int:
        return int(self.uc.reg_read(X.UC_X86_REG_RIP))

    def linear_pc(self) -> int:
        return self.segments.read(CS).base + self.rip

    def in_real_mode(self) -> bool:
        return not self.reg("cr0") & CR0_PE

    @property
    def reset_context(self) -> object:
        """The engine context of a CPU after RESET or INIT (real mode at F000:FFF0)."""
        return self._reset_context

    def reset(self) -> None:
        """CPU reset (INIT): real mode at F000:FFF0, RAM untouched."""
        self.uc.context_restore(self._reset_context)
        flush = getattr(self.core, "flush_mmu", None)
        if flush is not None:
            flush()
        self.halted = False

    def enter_flat_protected_mode(self, entry: int, gdt_addr: int, code_sel: int = 0x08) -> None:
        """Flat 32-bit protected mode at ``entry`` (as a Multiboot loader leaves it).

        A GDT with the flat code segment at ``code_sel`` (0x08; the Linux
        32-bit boot protocol's __BOOT_CS is 0x10) and the data segment after
        it is written at ``gdt_addr`` and loaded, so the guest may reload its
        segments."""
        code = 0x00CF9A000000FFFF
        data = 0x00CF92000000FFFF
        table = [0] * (code_sel // 8) + [code, data]
        self.uc.mem_write(gdt_addr, struct.pack(f"<{len(table)}Q", *table))
        self.notify_phys_write(gdt_addr, 8 * len(table))
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_addr, 8 * len(table) - 1, 0))
        self.set_reg("cr0", (self.reg("cr0") | CR0_PE) & ~CR0_PG)
        cs = Segment.from_descriptor(code_sel, code | (1 << 40))  # accessed, as a load sets it
        ds = Segment.from_descriptor(code_sel + 8, data | (1 << 40))
        self.segments.commit({CS: cs, SS: ds, DS: ds, ES: ds, FS: ds, GS: ds}, 0x2)
        self.set_reg("rflags", 0x2)
        self.set_reg("rip", entry)
        self.halted = False

    def enter_long_mode(self, entry: int, gdt_addr: int, cr3: int) -> None:
        """64-bit mode at ``entry`` with page tables at ``cr3`` (the Linux 64-bit boot protocol).

        The GDT written at ``gdt_addr`` holds __BOOT_CS (0x10, 64-bit code) and
        __BOOT_DS (0x18, flat data)."""
        code64 = 0x00AF9A000000FFFF
        data = 0x00CF92000000FFFF
        self.uc.mem_write(gdt_addr, struct.pack("<4Q", 0, 0, code64, data))
        self.notify_phys_write(gdt_addr, 32)
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_addr, 31, 0))
        self.set_reg("cr3", cr3)
        self.set_reg("cr4", self.reg("cr4") | CR4_PAE)
        self.uc.msr_write(MSR_EFER, self.uc.msr_read(MSR_EFER) | EFER_LME)
        self.set_reg("cr0", self.reg("cr0") | CR0_PE | CR0_PG)  # sets EFER.LMA
        cs = Segment.from_descriptor(0x10, code64 | (1 << 40))
        ds = Segment.from_descriptor(0x18, data | (1 << 40))
        self.segments.commit({CS: cs, SS: ds, DS: ds, ES: ds, FS: ds, GS: ds}, 0x2)
        self.set_reg("rflags", 0x2)
        self.set_reg("rip", entry)
        self.halted = False

    # -- running ----------------------------------------------------------------

    def run_slice(self, count: int = 0) -> UcError | None:
        """Run until something stops the engine; return Unicorn's error, if any."""
        try:
            self.uc.emu_start(self.rip, NEVER, 0, count)
        except UcError as err:
            return err
        return None

    def stopped_on_hlt(self) -> bool:
        """After a slice that ended on its own: was it HLT (EIP is past the HLT)?"""
        try:
            return self.events.read(self.linear_pc() - 1, 1) == b"\xf4"
        except DeliveryFault:
            return False

    def notify_phys_write(self, paddr: int, length: int) -> None:
        """Tell the MMU that RAM was written behind the guest's back."""
        notify = getattr(self.core, "notify_phys_write", None)
        if notify is not None:
            notify(paddr, length)

    # -- event delivery -----------------------------------------------------------

    def deliver_cpu_event(self, vector: int) -> None:
        """Deliver the exception or software interrupt that just stopped the CPU."""
        is_int, error_code, next_eip, cr2 = self.core.take_event()
        if is_int:
            if vector == 0x80 and self.syscall_observer is not None:
                self.syscall_observer("int80")
            ev = Event(vector, SOFTWARE, None, next_eip)
        else:
            if vector == GP and error_code == 0 and self._stack_fault():
                vector = SSF  # Unicorn's MMU raises #GP for every non-canonical access
            ev = Event(vector, EXCEPTION, error_code, self.rip, cr2 if vector == PF else None)
        self._deliver(ev)

    def deliver_mmu_fault(self, address: int, error_code: int, non_canonical: bool) -> None:
        """Deliver what the shadow MMU's refused fill means: #PF, or for a
        non-canonical address #GP(0), #SS(0) when the reference is through SS."""
        if not non_canonical:
            self.deliver_exception(PF, error_code, cr2=address)
        elif address >> 12 == self.rip >> 12:
            self.deliver_exception(GP)  # the fetch itself: RIP is non-canonical
        else:
            self.deliver_exception(SSF if self._stack_fault() else GP)

    def _stack_fault(self) -> bool:
        """In 64-bit mode, does the instruction at RIP make a non-canonical reference
        through SS?  Asked only of faults a non-canonical address can cause."""
        if not self.segments.hflags() & HF_CS64:
            return False
        rip = self.rip
        if not is_canonical(rip):
            return False
        first = min(15, 4096 - (rip & 0xFFF))
        try:
            code = self.events.read(rip, first)
        except DeliveryFault:
            return False
        if first < 15 and is_canonical(rip + 15):
            try:
                code += self.events.read(rip + first, 15 - first)
            except DeliveryFault:
                pass  # an instruction that fits in the first page still decodes
        regs = [int(self.uc.reg_read(r)) for r in _GPRS]
        return is_stack_fault(code, regs)

    def deliver_invalid_opcode(self) -> None:
        self._deliver(Event(UD, EXCEPTION, 0, self.rip))

    def deliver_exception(self, vector: int, error_code: int = 0, cr2: int | None = None) -> None:
        """Raise a CPU exception at the current instruction (e.g. #PF from the MMU)."""
        self._deliver(Event(vector, EXCEPTION, error_code, self.rip, cr2))

    def inject_nmi(self) -> None:
        """Deliver an NMI (vector 2): IF does not block it."""
        self.halted = False
        self._deliver(Event(NMI, EXTERNAL, None, self.rip))

    def inject_external(self, vector: int) -> None:
        """Deliver an external interrupt (the caller checked IF and the STI shadow)."""
        self.halted = False
        self._deliver(Event(vector, EXTERNAL, None, self.rip))

    def _deliver(self, ev: Event) -> None:
        try:
            self.events.deliver(ev)
        except TripleFault as tf:
            raise TripleFault(f"{tf} at pc {self.linear_pc():#x}") from None
        except UnsupportedEvent as exc:
            raise GuestError(f"{exc} (vector {ev.vector} at pc {self.linear_pc():#x})") from None

    def interrupts_enabled(self) -> bool:
        """EFLAGS.IF set and no STI / MOV SS interrupt shadow on the next instruction."""
        if not self.reg("rflags") & EFLAGS_IF:
            return False
        return not self.segments.hflags() & HF_INHIBIT_IRQ

    def in_interrupt_shadow(self) -> bool:
        """EFLAGS.IF is set but the next instruction is in an STI / MOV SS shadow."""
        return bool(self.reg("rflags") & EFLAGS_IF) and bool(self.segments.hflags() & HF_INHIBIT_IRQ)

    def commit_delivery(self, segs: dict[int, Segment], cpl: int | None, rip: int, rsp: int,
                        rsp_mask: int, rflags: int) -> None:
        """Load the state an event delivery computed, in one context round trip.

        Clears QEMU's nested-exception memory (ENGINE_FACTS.md fact 2) and the
        interrupt shadow, as real delivery does."""
        old_rsp = self.reg("rsp")
        self.segments.commit(segs, rflags)
        self.uc.reg_write(X.UC_X86_REG_RSP, (old_rsp & ~rsp_mask) | (rsp & rsp_mask))
        self.uc.reg_write(X.UC_X86_REG_RFLAGS, rflags)
        self.uc.reg_write(X.UC_X86_REG_RIP, rip)

    # -- SYSCALL / SYSENTER (their effect is ours to do: ENGINE_FACTS.md fact 3) -------------------

    def do_syscall(self) -> None:
        if self.syscall_observer is not None:
            self.syscall_observer("syscall")
        uc = self.uc
        efer = uc.msr_read(MSR_EFER)
        if not efer & EFER_SCE:
            self._deliver(Event(UD, EXCEPTION, 0, self.rip - 2))
            return
        star = uc.msr_read(MSR_STAR)
        sel = (star >> 32) & 0xFFFC
        rip = self.rip  # already past SYSCALL
        rflags = self.reg("rflags")
        if efer & EFER_LMA:
            long_cs = bool(self.segments.hflags() & HF_CS64)
            uc.reg_write(X.UC_X86_REG_RCX, rip)
            uc.reg_write(X.UC_X86_REG_R11, rflags & ~EFLAGS_RF)
            fmask = uc.msr_read(MSR_FMASK)
            target = uc.msr_read(MSR_LSTAR if long_cs else MSR_CSTAR)
            cs = Segment(sel, 0, 0xFFFFFFFF, FLAT_CODE64)
            new_flags = rflags & ~(fmask | EFLAGS_RF)
        else:
            uc.reg_write(X.UC_X86_REG_RCX, rip & 0xFFFFFFFF)
            target = star & 0xFFFFFFFF
            cs = Segment(sel, 0, 0xFFFFFFFF, FLAT_CODE32)
            new_flags = rflags & ~(EFLAGS_IF | EFLAGS_VM | EFLAGS_RF)
        ss = Segment((sel + 8) & 0xFFFC, 0, 0xFFFFFFFF, FLAT_DATA)
        self.commit_delivery({CS: cs, SS: ss}, 0, target, 0, 0, new_flags)

    def do_sysenter(self) -> None:
        if self.syscall_observer is not None:
            self.syscall_observer("sysenter")
        uc = self.uc
        sel = uc.msr_read(MSR_SYSENTER_CS) & 0xFFFC
        if sel == 0:
            self._deliver(Event(GP, EXCEPTION, 0, self.rip - 2))
            return
        long_mode = bool(uc.msr_read(MSR_EFER) & EFER_LMA)
        cs = Segment(sel, 0, 0xFFFFFFFF, FLAT_CODE64 if long_mode else FLAT_CODE32)
        ss = Segment(sel + 8, 0, 0xFFFFFFFF, FLAT_DATA)
        new_flags = self.reg("rflags") & ~(EFLAGS_IF | EFLAGS_VM | EFLAGS_RF)
        self.commit_delivery({CS: cs, SS: ss}, 0, uc.msr_read(MSR_SYSENTER_EIP),
                             uc.msr_read(MSR_SYSENTER_ESP), 0xFFFFFFFFFFFFFFFF, new_flags)


# Hidden-descriptor flags of the flat segments SYSCALL/SYSENTER load (P, S, type, G, D/L).
FLAT_CODE32 = 0x00C09B00
FLAT_CODE64 = 0x00A09B00
FLAT_DATA = 0x00C09300


class _TrackedRam(RamView):
    """Guest RAM for the Python walker: A/D-bit updates are reported to the MMU."""

    def __init__(self, ram: memoryview, notify: Callable[[int, int], None]) -> None:
        super().__init__(ram)
        self._notify = notify

    def write_u64(self, paddr: int, value: int) -> None:
        super().write_u64(paddr, value)
        self._notify(paddr, 8)

    def write_u32(self, paddr: int, value: int) -> None:
        super().write_u32(paddr, value)
        self._notify(paddr, 4)


_GPRS = [X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX,
         X.UC_X86_REG_RSP, X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI,
         X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
         X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15]

_REGS: dict[str, int] = {}


def _reg_id(name: str) -> int:
    rid = _REGS.get(name)
    if rid is None:
        rid = getattr(X, "UC_X86_REG_" + name.upper(), None)
        if rid is None:
            raise KeyError(f"unknown register {name!r}")
        _REGS[name] = rid
    return rid
