"""The MSRs the PC platform answers itself (patch f's RDMSR/WRMSR hooks).

Unicorn keeps most MSRs in its own CPU state (EFER, STAR, SYSENTER, PAT, the
MTRRs and MTRRcap, FS/GS base...), and those stay there: the hooks return 0 and
Unicorn's code runs.  Ours are the ones a PC's chipset or a KVM-style
hypervisor owns:

- IA32_APIC_BASE (0x1B): the local APIC's page, the BSP flag and the global
  enable bit.  A write that moves the page is applied between slices (the
  MMIO window is remapped there, never from inside a hook), so it takes
  effect at the next block boundary: the translator does not end a block
  after WRMSR, and a guest that relocates and at once touches the new page
  must branch first; Linux never relocates.  Clearing the
  enable bit makes the APIC hardware-disabled (SDM vol. 3 10.4.3: its state
  is reset, and only a reset or a write setting the bit again brings it back).
- IA32_TSC (0x10) and IA32_TSC_ADJUST (0x3B): writes go through the
  machine's VirtualTsc, so RDTSC sees them; writing one moves the other by the
  same amount, as the SDM (17.17.3) describes.
- IA32_MISC_ENABLE (0x1A0): fast strings on, branch-trace and PEBS
  unavailable, what Linux expects to read on an Intel CPU; writes are kept.
- IA32_BIOS_SIGN_ID (0x8B): the microcode revision in the high dword (writes,
  the "clear, then CPUID" protocol, are ignored).  Reported as Haswell's last
  revision: Linux keeps the TSC-deadline timer off on Haswell below revision
  0x22 (an erratum of the real part, not of this timer).
- IA32_TSC_DEADLINE (0x6E0): the local APIC's TSC-deadline timer (SDM vol. 3
  10.5.4.1).  A write converts the TSC value into the guest time at which the
  virtual TSC reaches it (a deadline already passed fires at once) and hands
  both to the LAPIC; a read gives the armed deadline, 0 once it fired.  The
  deadline compares against the TSC, so a write of IA32_TSC or TSC_ADJUST
  moves when an armed one fires (converted again from the new count; one the
  TSC jumped past fires at once).

Unknown MSRs are left to the engine (patch h decides about #GP for them).  On
an engine without patch f nothing here runs: a guest then sees Unicorn's own
values (docs/ENGINE_FACTS.md fact 11).

The model is a slot of the machine ("msrs"): reset with it, and its registers
are part of a saved state (the TSC's count is saved by the machine itself; the
engine's own MSRs, EFER included, are in the engine's CPU context).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X

from qemu_lite import engine
from qemu_lite.devices.base import StateError, check_state

if TYPE_CHECKING:
    from qemu_lite._vcpu_hooks import VirtualTsc

MSR_IA32_TSC = 0x10
MSR_IA32_APIC_BASE = 0x1B
MSR_IA32_TSC_ADJUST = 0x3B
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_TSC_DEADLINE = 0x6E0
MSR_IA32_BIOS_SIGN_ID = 0x8B
MICROCODE_REVISION = 0x28

APIC_BASE_BSP = 1 << 8
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_ADDR = 0xFFFFFF000         # bits 12-35 (MAXPHYADDR 36 for this field)
APIC_BASE_DEFAULT = 0xFEE00000

MISC_FAST_STRINGS = 1 << 0
MISC_BTS_UNAVAILABLE = 1 << 11
MISC_PEBS_UNAVAILABLE = 1 << 12
MISC_ENABLE_RESET = MISC_FAST_STRINGS | MISC_BTS_UNAVAILABLE | MISC_PEBS_UNAVAILABLE

HOOK_PASS, HOOK_HANDLED = 0, 1
STATE_VERSION = 1

_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class ApicWindow:
    """What IA32_APIC_BASE changes on the board: where the LAPIC's page is mapped
    (``move(old, new)`` remaps, False when the new page is not free) and whether
    the APIC is enabled (``enable(bool)``)."""

    def __init__(self, move: Callable[[int, int], bool], enable: Callable[[bool], None]) -> None:
        self.move = move
        self.enable = enable


class DeadlineTimer(Protocol):
    """The local APIC's side of IA32_TSC_DEADLINE (devices/lapic.py)."""

    @property
    def tsc_deadline(self) -> int: ...

    def write_tsc_deadline(self, value: int, due_ns: int) -> None: ...


class TscDeadline:
    """IA32_TSC_DEADLINE: TSC values to and from the guest time the LAPIC's timer uses."""

    def __init__(self, timer: DeadlineTimer, tsc: VirtualTsc, now: Callable[[], int]) -> None:
        self._timer = timer
        self._tsc = tsc
        self._now = now  # guest ns: the clock the virtual TSC follows

    def read(self) -> int:
        return self._timer.tsc_deadline

    def write(self, value: int) -> None:
        now = self._now()
        ahead = value - int(self._tsc.read())
        due = now + (-(-ahead * 1_000_000 // self._tsc.khz) if ahead > 0 else 0)
        self._timer.write_tsc_deadline(value, due)

    def retarget(self) -> None:
        """The TSC was written: an armed deadline now falls at another guest time."""
        value = self._timer.tsc_deadline  # one already due fires first, and reads 0
        if value:
            self.write(value)


class MsrModel:
    """The platform's MSRs for one machine; ``install`` hooks RDMSR/WRMSR (patch f)."""

    def __init__(self, tsc: VirtualTsc, apic: ApicWindow, on_error: Callable[[BaseException], None],
                 request_stop: Callable[[], None], deadline: TscDeadline | None = None) -> None:
        self._tsc = tsc
        self._apic = apic
        self._deadline = deadline
        self._on_error = on_error
        self._request_stop = request_stop  # ends the slice: moves apply between slices
        self._callbacks: list[object] = []
        self._pending_base: int | None = None
        self.reset()

    def reset(self) -> None:
        """Power-on values (the TSC itself is reset by the VirtualTsc); a moved APIC
        page goes back and a globally disabled APIC is enabled again (resets run
        between slices)."""
        was_enabled = bool(getattr(self, "apic_base", APIC_BASE_ENABLE) & APIC_BASE_ENABLE)
        self.apic_base = APIC_BASE_DEFAULT | APIC_BASE_BSP | APIC_BASE_ENABLE
        self.tsc_adjust = 0
        self.misc_enable = MISC_ENABLE_RESET
        if not was_enabled:
            self._apic.enable(True)
        self._place_apic(APIC_BASE_DEFAULT)

    def _place_apic(self, base: int) -> None:
        """Between slices: map the APIC's page at ``base`` now (it stays where it was
        when that page is not free)."""
        self._pending_base = None
        mapped = getattr(self, "_mapped_base", APIC_BASE_DEFAULT)
        if mapped != base and self._apic.move(mapped, base):
            mapped = base
        self._mapped_base = mapped

    # -- saved state -----------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """The registers, and where the APIC's page is mapped (a move the guest asked
        for is applied before anything saves, at the slice boundary)."""
        return {"version": STATE_VERSION, "apic_base": self.apic_base,
                "tsc_adjust": self.tsc_adjust, "misc_enable": self.misc_enable,
                "mapped_base": self._mapped_base if self._pending_base is None
                else self._pending_base}

    def load_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`save_state`'s dict between runs (the TSC count is the machine's)."""
        check_state(state, "msrs", (STATE_VERSION,))
        values = {}
        for key in ("apic_base", "tsc_adjust", "misc_enable", "mapped_base"):
            value = state.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
                raise StateError(f"msrs: saved {key} {value!r} is not a 64-bit register value")
            values[key] = value
        if values["mapped_base"] & ~APIC_BASE_ADDR:
            raise StateError(f"msrs: saved APIC page {values['mapped_base']:#x} is not a "
                             "page address")
        was_enabled = bool(self.apic_base & APIC_BASE_ENABLE)
        self.apic_base = values["apic_base"] | APIC_BASE_BSP
        self.tsc_adjust = values["tsc_adjust"]
        self.misc_enable = values["misc_enable"]
        enabled = bool(self.apic_base & APIC_BASE_ENABLE)
        if enabled != was_enabled:
            # Loaded after the LAPIC's own state: disabling resets it, which is what a
            # globally disabled APIC holds anyway (it drops writes and messages).
            self._apic.enable(enabled)
        self._place_apic(values["mapped_base"])

    # -- the registers ---------------------------------------------------------------

    def read(self, msr: int) -> int | None:
        """The value of ``msr``, or None when the engine answers it."""
        if msr == MSR_IA32_APIC_BASE:
            return self.apic_base
        if msr == MSR_IA32_TSC:
            return int(self._tsc.read())
        if msr == MSR_IA32_TSC_ADJUST:
            return self.tsc_adjust
        if msr == MSR_IA32_MISC_ENABLE:
            return self.misc_enable
        if msr == MSR_IA32_TSC_DEADLINE and self._deadline is not None:
            return self._deadline.read()
        if msr == MSR_IA32_BIOS_SIGN_ID:
            return MICROCODE_REVISION << 32
        return None

    def write(self, msr: int, value: int) -> bool:
        """Apply a guest WRMSR; False when the engine should handle it."""
        if msr == MSR_IA32_APIC_BASE:
            self._write_apic_base(value)
        elif msr == MSR_IA32_TSC:
            self.tsc_adjust = (self.tsc_adjust + value - int(self._tsc.read())) % (1 << 64)
            self._tsc.write(value)
            self._tsc_written()
        elif msr == MSR_IA32_TSC_ADJUST:
            delta = value - self.tsc_adjust
            self.tsc_adjust = value
            self._tsc.write((int(self._tsc.read()) + delta) % (1 << 64))
            self._tsc_written()
        elif msr == MSR_IA32_MISC_ENABLE:
            self.misc_enable = value
        elif msr == MSR_IA32_TSC_DEADLINE and self._deadline is not None:
            self._deadline.write(value)
        elif msr == MSR_IA32_BIOS_SIGN_ID:
            pass
        else:
            return False
        return True

    def _tsc_written(self) -> None:
        if self._deadline is not None:
            self._deadline.retarget()

    def _write_apic_base(self, value: int) -> None:
        was_enabled = bool(self.apic_base & APIC_BASE_ENABLE)
        self.apic_base = (value & (APIC_BASE_ADDR | APIC_BASE_ENABLE)) | APIC_BASE_BSP
        enabled = bool(self.apic_base & APIC_BASE_ENABLE)
        if enabled != was_enabled:
            self._apic.enable(enabled)
        base = self.apic_base & APIC_BASE_ADDR
        if base != self._mapped_base:
            self._pending_base = base
            self._request_stop()

    def apply_pending(self) -> None:
        """Between slices (a machine poller): remap a moved APIC page."""
        base, self._pending_base = self._pending_base, None
        if base is not None and base != self._mapped_base:
            if self._apic.move(self._mapped_base, base):
                self._mapped_base = base

    # -- the hooks -------------------------------------------------------------------

    def install(self, uc) -> bool:  # noqa: ANN001 - the binding's Uc
        """Hook RDMSR and WRMSR on ``uc``; False when the engine cannot (no patch f)."""
        if not engine.is_patched("f"):
            return False
        from unicorn.unicorn_py3 import unicorn as binding

        def on_rdmsr(_uc: int, _ud: int) -> int:
            try:
                value = self.read(uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF)
                if value is None:
                    return HOOK_PASS
                uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
                uc.reg_write(X.UC_X86_REG_RDX, (value >> 32) & 0xFFFFFFFF)
                return HOOK_HANDLED
            except BaseException as exc:  # noqa: BLE001 - must not reach ctypes
                self._on_error(exc)
                return HOOK_PASS

        def on_wrmsr(_uc: int, _ud: int) -> int:
            try:
                msr = uc.reg_read(X.UC_X86_REG_ECX) & 0xFFFFFFFF
                value = ((uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32
                         | uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF)
                return HOOK_HANDLED if self.write(msr, value) else HOOK_PASS
            except BaseException as exc:  # noqa: BLE001 - must not reach ctypes
                self._on_error(exc)
                return HOOK_PASS

        for insn, fn in ((X.UC_X86_INS_RDMSR, on_rdmsr), (X.UC_X86_INS_WRMSR, on_wrmsr)):
            cb = _INSN_CB(fn)
            handle = ctypes.c_size_t()
            err = binding.uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN,
                                            ctypes.cast(cb, ctypes.c_void_p), None,
                                            ctypes.c_uint64(1), ctypes.c_uint64(0),
                                            ctypes.c_int(insn))
            if err:
                raise RuntimeError(f"cannot hook RDMSR/WRMSR: Unicorn error {err}")
            self._callbacks.append(cb)  # the engine holds its address
        return True


class LockedMsrs(MsrModel):
    """thread=multi: an MsrModel whose hooks hold the machine's lock (they reach the
    local APIC and the clock, which every vCPU's thread shares)."""

    lock: Any = None

    def read(self, msr: int) -> int | None:
        with self.lock:
            return super().read(msr)

    def write(self, msr: int, value: int) -> bool:
        with self.lock:
            return super().write(msr, value)
