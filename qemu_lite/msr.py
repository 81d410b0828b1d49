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

Unknown MSRs are left to the engine (patch h decides about #GP for them).  On
an engine without patch f nothing here runs: a guest then sees Unicorn's own
values (docs/ENGINE_FACTS.md fact 11).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X

from qemu_lite import engine

if TYPE_CHECKING:
    from qemu_lite._vcpu_hooks import VirtualTsc

MSR_IA32_TSC = 0x10
MSR_IA32_APIC_BASE = 0x1B
MSR_IA32_TSC_ADJUST = 0x3B
MSR_IA32_MISC_ENABLE = 0x1A0

APIC_BASE_BSP = 1 << 8
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_ADDR = 0xFFFFFF000         # bits 12-35 (MAXPHYADDR 36 for this field)
APIC_BASE_DEFAULT = 0xFEE00000

MISC_FAST_STRINGS = 1 << 0
MISC_BTS_UNAVAILABLE = 1 << 11
MISC_PEBS_UNAVAILABLE = 1 << 12
MISC_ENABLE_RESET = MISC_FAST_STRINGS | MISC_BTS_UNAVAILABLE | MISC_PEBS_UNAVAILABLE

HOOK_PASS, HOOK_HANDLED = 0, 1

_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class ApicWindow:
    """What IA32_APIC_BASE changes on the board: where the LAPIC's page is mapped
    (``move(old, new)`` remaps, False when the new page is not free) and whether
    the APIC is enabled (``enable(bool)``)."""

    def __init__(self, move: Callable[[int, int], bool], enable: Callable[[bool], None]) -> None:
        self.move = move
        self.enable = enable


class MsrModel:
    """The platform's MSRs for one machine; ``install`` hooks RDMSR/WRMSR (patch f)."""

    def __init__(self, tsc: VirtualTsc, apic: ApicWindow, on_error: Callable[[BaseException], None],
                 request_stop: Callable[[], None]) -> None:
        self._tsc = tsc
        self._apic = apic
        self._on_error = on_error
        self._request_stop = request_stop  # ends the slice: moves apply between slices
        self._callbacks: list[object] = []
        self._pending_base: int | None = None
        self.reset()

    def reset(self) -> None:
        """Power-on values (the TSC itself is reset by the VirtualTsc); a moved APIC
        page goes back (resets run between slices)."""
        self.apic_base = APIC_BASE_DEFAULT | APIC_BASE_BSP | APIC_BASE_ENABLE
        self.tsc_adjust = 0
        self.misc_enable = MISC_ENABLE_RESET
        self._pending_base = None
        mapped = getattr(self, "_mapped_base", APIC_BASE_DEFAULT)
        if mapped != APIC_BASE_DEFAULT and self._apic.move(mapped, APIC_BASE_DEFAULT):
            mapped = APIC_BASE_DEFAULT
        self._mapped_base = mapped

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
        return None

    def write(self, msr: int, value: int) -> bool:
        """Apply a guest WRMSR; False when the engine should handle it."""
        if msr == MSR_IA32_APIC_BASE:
            self._write_apic_base(value)
        elif msr == MSR_IA32_TSC:
            self.tsc_adjust = (self.tsc_adjust + value - int(self._tsc.read())) % (1 << 64)
            self._tsc.write(value)
        elif msr == MSR_IA32_TSC_ADJUST:
            delta = value - self.tsc_adjust
            self.tsc_adjust = value
            self._tsc.write((int(self._tsc.read()) + delta) % (1 << 64))
        elif msr == MSR_IA32_MISC_ENABLE:
            self.misc_enable = value
        else:
            return False
        return True

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
