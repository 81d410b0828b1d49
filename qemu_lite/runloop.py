"""The vCPU's run loop: slices, the work between them, and why a run ends.

:class:`RunLoop` runs the vCPU in slices (``uc.emu_start``) and, between
slices, services due timers and pollers, injects pending interrupts, delivers
the event that ended the slice and sleeps while the guest is halted.  It owns
the stop state: :meth:`stop` (from the vCPU thread it cuts the current slice
short) and :meth:`stop_at_next_block` (any thread or a signal handler).  The
:class:`~qemu_lite.machine.Machine` owns the engine, devices and board and
keeps the public API; it hands the loop what it needs at construction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from unicorn import UcError
from unicorn import unicorn_const as UCC

from mmu_core import Core
from mmu_core._core import (
    STOP_ERROR,
    STOP_FAULT,
    STOP_INTERRUPT,
    STOP_INVALID,
    STOP_KICK,
    STOP_REQUEST,
    STOP_SYSCALL,
    STOP_SYSENTER,
)
from qemu_lite._vcpu_hooks import VcpuHooks
from qemu_lite.clock import HostClock, VirtualClock
from qemu_lite.events import GuestError, TripleFault
from qemu_lite.smp import VcpuSet, VcpuStats, count_slice
from qemu_lite.vcpu import EFLAGS_IF, VCpu

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Why :meth:`Machine.run` returned.

    ``reason`` is one of ``"exit"`` (isa-debug-exit; ``exit_status`` set),
    ``"halted"`` (HLT with interrupts disabled), ``"timeout"``,
    ``"instructions"`` (budget spent), ``"guest-time"`` (``run(guest_ns=)``),
    ``"stopped"`` (:meth:`Machine.stop`),
    ``"breakpoint"`` / ``"step"`` (:meth:`Machine.add_breakpoint`, :meth:`Machine.step`),
    ``"reset"`` (the guest reset the machine and ``no_reboot`` was set),
    ``"triple-fault"``, ``"powered-off"`` (ACPI S5: Linux's ``poweroff``),
    ``"no-boot"`` (the BIOS found nothing to boot) or
    ``"no-boot-after-reset"`` (the same, after the guest had reset the machine:
    a crashed kernel, say).
    """

    reason: str
    exit_status: int | None = None
    message: str = ""


class InterruptSource(Protocol):
    """What the vCPU asks at instruction boundaries (the PIC, or the local APIC)."""

    def has_interrupt(self) -> bool: ...

    def acknowledge(self) -> int: ...


class Peers(Protocol):
    """The other vCPUs of a ``thread=multi`` machine (qemu_lite.multi.ParallelVcpus)."""

    def halted_for_good(self, loop: RunLoop) -> bool: ...


class NoInterrupts:
    def has_interrupt(self) -> bool:
        return False

    def acknowledge(self) -> int:
        raise RuntimeError("no interrupt pending")


class RunLoop:
    """The loop around ``emu_start`` and the stop state of one machine's vCPU."""

    def __init__(self, cpu: VCpu, core: Core, hooks: VcpuHooks,
                 clock: HostClock | VirtualClock, *, pollers: list[Callable[[], None]],
                 reset_devices: Callable[[], None]) -> None:
        self.cpu = cpu
        self.core = core
        self.hooks = hooks
        hooks.report_stops_to(core, STOP_KICK)  # one stop channel: core.take_stop()
        self.clock = clock
        self.irq_source: InterruptSource = NoInterrupts()
        self.no_reboot = False
        self.pollers = pollers
        self._reset_devices = reset_devices
        self.guest_resets = 0  # resets since power-on (triple faults, reset requests)
        self.vcpu_thread: int | None = None
        # A wake-up token: released by wake(), taken by the halted vCPU's sleep.  A
        # plain Lock, not an Event: release() never blocks, so wake() is safe from a
        # signal handler that interrupted the vCPU thread (an Event's own lock
        # could be held by that very thread).
        self._wake_token = threading.Lock()
        self._wake_token.acquire()
        self.stop_reason: RunResult | None = None
        self.stop_requested: RunResult | None = None  # survives run()'s reset
        self.pending_reset = False
        self.callback_error: BaseException | None = None
        # -smp N: the vCPUs that take turns on the engine (qemu_lite/smp.py); None: one CPU.
        self.vcpus: VcpuSet | None = None
        # thread=multi (qemu_lite/multi.py): the machine's lock, held except inside
        # emu_start and while halted; the other vCPUs' loops; this vCPU's counters.
        self.lock: threading.RLock | None = None
        self.peers: Peers | None = None
        self.stats: VcpuStats | None = None
        self.done = False  # halted with IF=0 while other vCPUs run: only an NMI wakes it
        self.counting = False  # count_instructions() was called

    def count_instructions(self) -> None:
        """Count each slice's instructions into :attr:`stats` (wall-clock time only,
        before the first run): patch b's block-start clock step with one unit an
        instruction, a counter that wall-clock time leaves unused otherwise."""
        self.hooks.ns_per_insn = 1
        self.counting = True

    # -- stopping and waking (any thread unless noted) --------------------------------

    def stop(self, reason: str = "stopped", exit_status: int | None = None,
             message: str = "") -> None:
        if self.stop_reason is None:
            self.stop_reason = RunResult(reason, exit_status, message)
        if threading.get_ident() == self.vcpu_thread:
            self.core.request_stop(STOP_REQUEST)
        else:
            self.wake()

    def stop_at_next_block(self, reason: str = "stopped", message: str = "") -> None:
        if self.stop_requested is None:
            self.stop_requested = RunResult(reason, None, message)
        self.wake()

    def wake(self) -> None:
        try:
            self._wake_token.release()
        except RuntimeError:  # a wake-up is already pending
            pass
        self.hooks.poke()

    def request_reset(self) -> None:
        """The guest asked for a reset: done between slices (or the run ends, no_reboot)."""
        if self.no_reboot:
            self.stop("reset", None, "guest requested a reset (--no-reboot)")
            return
        self.core.request_stop(STOP_REQUEST)
        self.pending_reset = True
        if threading.get_ident() != self.vcpu_thread:
            self.wake()  # another vCPU's thread asked

    def do_reset(self) -> None:
        self.guest_resets += 1
        self.cpu.reset()
        self._reset_devices()

    def _stop_result(self) -> RunResult | None:
        """What ends the run now, if anything (stop(), or stop_at_next_block())."""
        if self.stop_reason is not None:
            return self.stop_reason
        request = self.stop_requested
        if request is not None:  # checked first: a signal handler may set it at any time
            self.stop_requested = None
        return request

    # -- the loop (vCPU thread) -----------------------------------------------------

    def begin(self) -> None:
        """Start a run on this thread: clear what a previous run left."""
        self.stop_reason = None
        self.pending_reset = False
        self.hooks.end_slice(report=False)  # a stop left by a run an exception ended
        self.vcpu_thread = threading.get_ident()

    def end(self) -> None:
        self.vcpu_thread = None

    def service(self) -> None:
        self.clock.run_due()
        for poll in self.pollers:
            poll()

    def run(self, wall_deadline: int | None) -> RunResult:
        cpu, core, hooks = self.cpu, self.core, self.hooks
        while True:
            self.service()
            stop = self._stop_result()
            if stop is not None:
                return stop
            if wall_deadline is not None and time.monotonic_ns() >= wall_deadline:
                return RunResult("timeout", None, "time budget spent")
            if self.pending_reset:
                self.pending_reset = False
                self.do_reset()
            if self.vcpus is not None:
                self.vcpus.schedule()
            if self._take_nmi():
                try:
                    cpu.inject_nmi()
                except TripleFault as exc:
                    if self._triple_fault(exc):
                        return self.stop_reason  # type: ignore[return-value]
                    continue
            if self.irq_source.has_interrupt():
                if cpu.interrupts_enabled():
                    try:
                        cpu.inject_external(self.irq_source.acknowledge())
                    except TripleFault as exc:
                        if self._triple_fault(exc):
                            return self.stop_reason  # type: ignore[return-value]
                        continue
                    hooks.waiting = False
                else:
                    # Masked: the block hook stops the slice once EFLAGS.IF is set.
                    hooks.waiting = True
                    if cpu.in_interrupt_shadow():
                        hooks.skip_once_at(cpu.linear_pc())
            if cpu.halted:
                self._wait_while_halted(wall_deadline)
                continue
            guest_due = self.clock.next_deadline()
            if self.vcpus is not None:
                guest_due = self.vcpus.guest_deadline(guest_due)
            due = self._next_due(wall_deadline, guest_due)
            if self.vcpus is not None:
                due = self.vcpus.slice_deadline(due)
                self.vcpus.begin_slice()
            hooks.begin_slice(due or 0)
            started = time.monotonic_ns()
            counted = hooks.vclock_ns if self.counting else None
            lock = self.lock  # thread=multi: the other vCPUs reach devices meanwhile
            if lock is not None:
                lock.release()
            try:
                err = cpu.run_slice()
            finally:
                if lock is not None:
                    lock.acquire()
                hooks.end_slice()
            flags, intno = core.take_stop()  # why it ended: one word (STOP_KICK: our exits)
            insns = None if counted is None else hooks.vclock_ns - counted
            if self.vcpus is not None:
                self.vcpus.end_slice(flags, insns)
            elif self.stats is not None:
                count_slice(self.stats, flags, time.monotonic_ns() - started, insns)
            if flags & STOP_ERROR:
                callback_error = core.take_error()
                if callback_error is not None:
                    raise callback_error
            if self.callback_error is not None:
                callback_error, self.callback_error = self.callback_error, None
                raise callback_error
            stop = self._stop_result()
            if stop is not None:
                return stop
            try:
                if flags & STOP_FAULT:
                    cpu.deliver_mmu_fault(*core.take_fault())
                elif flags & STOP_INTERRUPT:
                    cpu.deliver_cpu_event(intno)
                elif flags & STOP_INVALID:
                    cpu.deliver_invalid_opcode()
                elif flags & STOP_SYSCALL:
                    cpu.do_syscall()
                elif flags & STOP_SYSENTER:
                    cpu.do_sysenter()
                elif err is not None:
                    raise GuestError(self._describe_error(err))
                elif not flags and self._stopped_on_hlt():
                    # Only HLT ends a slice without a stop flag.
                    if (not cpu.reg("rflags") & EFLAGS_IF and not self.nmi_pending()
                            and (self.vcpus is None or self.vcpus.halted_for_good())
                            and (self.peers is None or self.peers.halted_for_good(self))):
                        return RunResult("halted", None, "guest halted with interrupts "
                                         f"disabled at {cpu.linear_pc() - 1:#x}")
                    cpu.halted = True
                    if self.stats is not None:
                        self.stats.exits["hlt"] = self.stats.exits.get("hlt", 0) + 1
            except TripleFault as exc:
                if self._triple_fault(exc):
                    return self.stop_reason  # type: ignore[return-value]

    def callback_failed(self, exc: BaseException) -> None:
        """A Python hook the engine called directly (the MSR hooks) raised: the run
        re-raises it once the slice ends."""
        if self.callback_error is None:
            self.callback_error = exc
        self.hooks.poke()

    def _stopped_on_hlt(self) -> bool:
        halted = self.hooks.stopped_on_hlt()  # None: the stock engine cannot say
        return self.cpu.stopped_on_hlt() if halted is None else halted

    def nmi_pending(self) -> bool:
        return bool(getattr(self.irq_source, "nmi_pending", False))

    def _take_nmi(self) -> bool:
        take = getattr(self.irq_source, "take_nmi", None)
        return bool(take()) if take is not None else False

    def _triple_fault(self, exc: TripleFault) -> bool:
        """A real PC resets on a triple fault; under no_reboot the run ends."""
        log.info("%s; resetting", exc)  # a reset loop must not flood the console
        if self.no_reboot:
            self.stop("triple-fault", None, str(exc))
            return True
        self.do_reset()
        return False

    def _next_due(self, wall_deadline: int | None, guest: int | None) -> int | None:
        """Host monotonic ns of the next timer (due at guest time ``guest``, None: no
        timer) or the end of the time budget.

        In deterministic mode timers are block deadlines instead (set here too)."""
        due = wall_deadline
        if isinstance(self.clock, VirtualClock):
            self.hooks.set_block_deadline(0 if guest is None else self.clock.block_deadline(guest))
        elif guest is not None:
            t = self.clock.host_deadline_ns(guest)
            due = t if due is None else min(due, t)
        return due

    def _wait_while_halted(self, wall_deadline: int | None) -> None:
        """Sleep until a timer is due, input arrives, the run is stopped or the time
        budget ends."""
        while self.stop_reason is None and self.stop_requested is None:
            if self.vcpus is not None:
                if self.vcpus.any_wakeup():
                    return  # the schedule picks who runs; injection ends the halt
            elif (self.irq_source.has_interrupt() and not self.done) or self.nmi_pending():
                self.cpu.halted = False
                self.done = False
                return
            guest = self.clock.next_deadline()
            if isinstance(self.clock, VirtualClock) and guest is not None:
                self.clock.skip_to(guest)  # idle time costs nothing in virtual time
                self.service()
                continue
            due = self._next_due(wall_deadline, guest)
            now = time.monotonic_ns()
            if due is not None and due <= now:
                return
            with self._unlocked():
                self._wake_token.acquire(timeout=-1 if due is None else (due - now) / 1e9)
            self.service()
            if self.stop_reason is not None:
                return  # stop() from another thread (or a poller) while halted

    @contextmanager
    def _unlocked(self) -> Iterator[None]:
        """thread=multi: let the other vCPUs' threads at the devices meanwhile."""
        lock = self.lock
        if lock is None:
            yield
            return
        lock.release()
        try:
            yield
        finally:
            lock.acquire()

    def _describe_error(self, err: UcError) -> str:
        pc = self.cpu.linear_pc()
        names = {UCC.UC_ERR_READ_UNMAPPED: "read of unmapped memory",
                 UCC.UC_ERR_WRITE_UNMAPPED: "write to unmapped memory",
                 UCC.UC_ERR_FETCH_UNMAPPED: "execution of unmapped memory",
                 UCC.UC_ERR_WRITE_PROT: "write to read-only memory",
                 UCC.UC_ERR_INSN_INVALID: "invalid instruction"}
        what = names.get(err.errno, str(err))
        return f"guest stopped: {what} at pc {pc:#x}"
