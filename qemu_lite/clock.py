"""Guest time for the machine's timers."""

from __future__ import annotations

import time
from typing import Protocol

from qemu_lite.devices.base import Clock


class HostClock(Clock):
    """Real-time guest clock: guest nanoseconds follow the host's monotonic clock."""

    def __init__(self) -> None:
        super().__init__()
        self._t0 = time.monotonic_ns()

    @property
    def start_ns(self) -> int:
        """The host ``time.monotonic_ns()`` at guest time 0."""
        return self._t0

    def now(self) -> int:
        return time.monotonic_ns() - self._t0

    def host_deadline_ns(self, guest_ns: int) -> int:
        """The host ``time.monotonic_ns()`` at which guest time reaches ``guest_ns``."""
        return self._t0 + guest_ns

    def _set_now(self, ns: int) -> None:
        # Guest time goes on from the saved value: the host time between save and load
        # did not pass for the guest.
        self._t0 = time.monotonic_ns() - ns


class VirtualClock(Clock):
    """Deterministic guest time, derived from guest progress.

    Guest time is the C virtual clock of ``_vcpu_hooks`` (``vclock_ns``): it
    advances by ``NS_PER_INSN`` for every instruction the vCPU executes (the
    patched engine counts them at each block start, as QEMU's icount does; the
    stock engine's block hook adds ``NS_PER_BLOCK`` a block instead), by ``PORT_NS`` for every port access and by a device's MMIO cost for every
    MMIO access (charged in C by the hooks, so a guest that polls a device
    sees time pass at about a real bus's rate), and jumps straight to the next
    timer deadline while the guest is halted.  The same guest with the same
    input therefore sees the same times, interrupts at the same instructions,
    and produces the same output.
    """

    NS_PER_BLOCK = 10
    NS_PER_INSN = 2
    PORT_NS = 1000          # an ISA bus I/O cycle is about 1 us
    MMIO_NS = 500           # an uncached MMIO access to a chipset device (IOAPIC)
    LAPIC_MMIO_NS = 100     # the local APIC sits on the core: cheaper

    def __init__(self, progress: VirtualProgress) -> None:
        super().__init__()
        self._progress = progress
        progress.ns_per_block = self.NS_PER_BLOCK
        progress.ns_per_insn = self.NS_PER_INSN

    def now(self) -> int:
        return int(self._progress.vclock_ns)

    def block_deadline(self, guest_ns: int) -> int:
        """The virtual-clock value at which the block hook stops for ``guest_ns``
        (the hook's deadline is in guest nanoseconds; 0 would mean none)."""
        return max(1, guest_ns)

    def _set_now(self, ns: int) -> None:
        self._progress.restore_vclock(ns)  # the setter only moves forward

    def skip_to(self, guest_ns: int) -> None:
        """Idle until ``guest_ns``: the halted guest loses no host time."""
        if guest_ns > self.now():
            self._progress.vclock_ns = guest_ns


class VirtualProgress(Protocol):
    """The C counter behind :class:`VirtualClock` (``_vcpu_hooks.VcpuHooks``)."""

    vclock_ns: int
    ns_per_block: int
    ns_per_insn: int

    def restore_vclock(self, value: int) -> None: ...


# The virtual TSC's frequency in both clock modes (qemu_lite/_tsc.pxi), which
# CPUID leaf 0x16 advertises: Linux prints "tsc: Detected 2000.000 MHz
# processor" without calibrating against the PIT.
TSC_KHZ = 2_000_000
