"""The virtual CPU: reset, run slices, and event delivery.

Unicorn never delivers an exception or interrupt through the guest's tables
(DESIGN fact 2): every event stops ``emu_start`` (mmu_core's C hook) and the
vCPU delivers it here, between slices, as an x86 CPU would.
"""

from __future__ import annotations

import struct

from unicorn import UC_ARCH_X86, UC_MODE_16, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from mmu_core import Core
from qemu_lite.cpustate import CS, DS, ES, FS, GS, SS, Segment, SegmentEditor, segment_hflags

# emu_start's "until": a non-canonical address no guest can execute.
NEVER = 0xFFFF_FFFF_FFFF_FFF0

CR0_PE = 1 << 0
CR0_PG = 1 << 31
EFLAGS_IF = 1 << 9
EFLAGS_TF = 1 << 8
EFLAGS_AC = 1 << 18
EFLAGS_VM = 1 << 17


class GuestError(RuntimeError):
    """The guest did something the machine cannot continue from."""


class TripleFault(GuestError):
    """A fault while delivering a double fault: a real PC resets."""


def new_engine() -> tuple[Uc, object]:
    """A 64-bit engine whose CPU is in real mode at F000:FFF0, and its reset context.

    A UC_MODE_64 engine starts in long mode and cannot load real-mode segment
    caches through its API, so the reset state is made by a UC_MODE_16 engine
    and transplanted (DESIGN fact 5).
    """
    uc16 = Uc(UC_ARCH_X86, UC_MODE_16)
    uc16.reg_write(X.UC_X86_REG_CS, 0xF000)
    uc16.reg_write(X.UC_X86_REG_IP, 0xFFF0)
    uc16.reg_write(X.UC_X86_REG_EDX, 0x0663)  # family 6 reset signature
    reset = uc16.context_save()
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.context_restore(reset)
    return uc, reset


class VCpu:
    """One x86 CPU backed by a Unicorn engine and an ``mmu_core.Core``."""

    def __init__(self, uc: Uc, core: Core, reset_context: object) -> None:
        self.uc = uc
        self.core = core
        self.segments = SegmentEditor(core)
        self._reset_context = reset_context
        self.halted = False

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

    def reset(self) -> None:
        """CPU reset (INIT): real mode at F000:FFF0, RAM untouched."""
        self.uc.context_restore(self._reset_context)
        self.halted = False

    def enter_flat_protected_mode(self, entry: int, gdt_addr: int) -> None:
        """Flat 32-bit protected mode at ``entry`` (as a Multiboot loader leaves it).

        A three-entry GDT (null, code 0x08, data 0x10) is written at
        ``gdt_addr`` and loaded, so the guest may reload its segments."""
        code = 0x00CF9A000000FFFF
        data = 0x00CF92000000FFFF
        self.uc.mem_write(gdt_addr, struct.pack("<3Q", 0, code, data))
        self.uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_addr, 23, 0))
        self.set_reg("cr0", (self.reg("cr0") | CR0_PE) & ~CR0_PG)
        cs = Segment.from_descriptor(0x08, code)
        ds = Segment.from_descriptor(0x10, data)
        segs = {CS: cs, SS: ds, DS: ds, ES: ds, FS: ds, GS: ds}
        hf = segment_hflags(self.segments.hflags(), cs, ds, 0, protected=True, vm86=False)
        self.segments.load({k: Segment(v.selector, v.base, v.limit, v.flags | 0x100)
                            for k, v in segs.items()},
                           hflags_set=hf, hflags_clear=0xFFFFFFFF)
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
            return self.uc.mem_read(self.linear_pc() - 1, 1) == b"\xf4"
        except UcError:
            return False

    # -- event delivery -----------------------------------------------------------

    def deliver_event(self, vector: int) -> None:
        """Deliver the exception or software interrupt that stopped the CPU."""
        is_int, error_code, next_eip = self.segments.last_event()
        return_ip = next_eip if is_int else self.rip
        if self.in_real_mode():
            self._deliver_real_mode(vector, return_ip)
            return
        raise GuestError(f"unhandled {'INT' if is_int else 'exception'} {vector:#x} "
                         f"(error code {error_code:#x}) at {self.linear_pc():#x} in protected "
                         f"mode: protected-mode event delivery is not implemented yet")

    def _deliver_real_mode(self, vector: int, return_ip: int) -> None:
        uc = self.uc
        ivt = uc.mem_read(vector * 4, 4)
        new_ip, new_cs = struct.unpack("<HH", ivt)
        flags = self.reg("rflags")
        cs = self.segments.read(CS)
        ss_base = self.segments.read(2).base
        sp = self.reg("sp")
        for value in (flags & 0xFFFF, cs.selector, return_ip & 0xFFFF):
            sp = (sp - 2) & 0xFFFF
            uc.mem_write(ss_base + sp, struct.pack("<H", value))
        self.set_reg("sp", sp)
        self.set_reg("rflags", flags & ~(EFLAGS_IF | EFLAGS_TF | EFLAGS_AC))
        cs.selector, cs.base = new_cs, new_cs << 4
        self.segments.load({CS: cs})
        self.set_reg("rip", new_ip)


_REGS: dict[str, int] = {}


def _reg_id(name: str) -> int:
    rid = _REGS.get(name)
    if rid is None:
        rid = getattr(X, "UC_X86_REG_" + name.upper(), None)
        if rid is None:
            raise KeyError(f"unknown register {name!r}")
        _REGS[name] = rid
    return rid
