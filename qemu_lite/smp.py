"""Several vCPUs on one engine (``-smp N``, ``-accel tcg,thread=single``).

The vCPUs take turns on the machine's one Unicorn engine: between slices the
run loop asks :class:`VcpuSet` which vCPU runs next, and a switch saves the
engine's context (registers, segment caches, MSRs, hflags) into the outgoing
vCPU and restores the incoming one's, then flushes Unicorn's TLB.  One engine
means one translation cache and one shadow MMU for every vCPU, so a store to a
code page (Linux patching its text) or to a guest page table by any vCPU is
seen by all of them without a remote flush: the coherence of issue 18 item 3
holds by construction.  A vCPU runs until its quantum ends, it halts, or it
sends an IPI to another vCPU (the sender yields, so a waiting receiver answers
promptly).

:class:`ApicBus` is the wire between the local APICs: the ICR's destinations
(physical, logical flat and cluster, the self / all / all-but-self shorthands),
fixed, lowest-priority, NMI, INIT and STARTUP messages, and the IOAPIC's
messages to the APICs their destination selects.  :class:`ApicPage` is the
MMIO page at 0xFEE00000, which each CPU sees as its own APIC.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from unicorn import UC_ARCH_X86, UC_MODE_16, Uc
from unicorn import unicorn_const as UCC
from unicorn import x86_const as X

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
from qemu_lite.devices.base import StateError, check_state
from qemu_lite.devices.lapic import (
    DM_EXTINT,
    DM_FIXED,
    DM_INIT,
    DM_LOWEST,
    DM_NMI,
    DM_STARTUP,
    ICR_DEST_LOGICAL,
    ICR_LEVEL_ASSERT,
    ICR_LEVEL_TRIGGER,
    ICR_SHORTHAND_SHIFT,
    LVT_DELIVERY_MODE_SHIFT,
    SHORTHAND_ALL_EXCLUDING_SELF,
    SHORTHAND_ALL_INCLUDING_SELF,
    SHORTHAND_NONE,
    SHORTHAND_SELF,
    LocalApic,
)

MAX_CPUS = 8
DEFAULT_QUANTUM_NS = 2_000_000  # a turn on the engine while other vCPUs can run
ACCEL_THREADS = ("single", "multi")

# A vCPU's run state, as the SDM's: running, or waiting for a STARTUP IPI after INIT
# (an AP from power-on, SDM vol. 3 8.4.1).
RUNNING = "running"
WAIT_FOR_SIPI = "wait-for-sipi"


@dataclass
class VcpuStats:
    """What one vCPU did (:meth:`qemu_lite.Machine.vcpu_stats`).

    ``slices``: turns on the engine's ``emu_start``; ``exits``: why slices ended
    (an exception, INT n, a #PF from the shadow MMU, SYSCALL/SYSENTER, a device's
    stop request, ``kick``: the run loop's own exits for a deadline, the end of a
    turn, an interrupt window or a wake-up) and halts, by kind; ``ipis_sent`` / ``ipis_received``: interrupt
    messages through the ICR; ``switches_in``: times it was given the engine,
    each a full flush of Unicorn's TLB (the only invalidation one vCPU causes in
    another's view: page-table and code stores reach the shared caches directly);
    ``run_ns``: host time spent in its slices; ``instructions`` (only with
    ``Machine(count_instructions=True)``): guest instructions it executed, counted per
    block at the block's start as QEMU's icount counts them (a block an exception
    leaves early counts whole)."""

    slices: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    ipis_sent: int = 0
    ipis_received: int = 0
    switches_in: int = 0
    run_ns: int = 0
    instructions: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"slices": self.slices, "exits": dict(self.exits), "ipis_sent": self.ipis_sent,
               "ipis_received": self.ipis_received, "switches_in": self.switches_in,
               "run_ns": self.run_ns}
        if self.instructions is not None:
            out["instructions"] = self.instructions
        return out


def parse_accel(text: str) -> str:
    """``tcg`` or ``tcg,thread=single|multi`` (QEMU's -accel) -> the thread mode."""
    parts = text.split(",")
    if parts[0] != "tcg":
        raise ValueError(f"unknown accelerator {parts[0]!r} (only tcg)")
    thread = "single"
    for opt in parts[1:]:
        key, _, value = opt.partition("=")
        if key != "thread" or value not in ACCEL_THREADS:
            raise ValueError(f"unknown -accel option {opt!r} (thread=single or thread=multi)")
        thread = value
    return thread


def parse_smp(text: str | int) -> int:
    """QEMU's ``-smp N`` or ``-smp cpus=N`` (1..8)."""
    if isinstance(text, bool):
        raise TypeError("smp must be a number of CPUs")
    if isinstance(text, int):
        n = text
    else:
        value = text.split(",")[0].removeprefix("cpus=")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"invalid -smp {text!r} (a number of CPUs, 1 to {MAX_CPUS})") from None
    if not 1 <= n <= MAX_CPUS:
        raise ValueError(f"-smp {n}: 1 to {MAX_CPUS} CPUs")
    return n


class ApicBus:
    """Interrupt messages between the local APICs, and from the IOAPIC."""

    def __init__(self, lapics: list[LocalApic]) -> None:
        self.lapics = lapics
        self.current = 0  # the vCPU on the engine: whose APIC the page shows
        self.stats = [VcpuStats() for _ in lapics]
        # Called with (cpu index, mode, vector) for INIT and STARTUP messages.
        self.on_init_sipi: Callable[[int, int, int], None] | None = None
        # Called with the index of each vCPU other than the sender's a message reaches.
        self.on_remote: Callable[[int], None] | None = None
        for apic in lapics:
            apic.ipi_bus = self

    def _targets(self, src: int, dest: int, logical: bool, shorthand: int) -> list[int]:
        if shorthand == SHORTHAND_SELF:
            return [src]
        if shorthand == SHORTHAND_ALL_INCLUDING_SELF:
            return list(range(len(self.lapics)))
        if shorthand == SHORTHAND_ALL_EXCLUDING_SELF:
            return [i for i in range(len(self.lapics)) if i != src]
        return [i for i, apic in enumerate(self.lapics) if apic.match_destination(dest, logical)]

    def send_ipi(self, src_apic: LocalApic, icr_low: int, icr_high: int) -> None:
        """The ICR's low word was written on ``src_apic``: deliver the message."""
        src = self.lapics.index(src_apic)
        mode = (icr_low >> LVT_DELIVERY_MODE_SHIFT) & 7
        shorthand = (icr_low >> ICR_SHORTHAND_SHIFT) & 3
        targets = self._targets(src, icr_high >> 24, bool(icr_low & ICR_DEST_LOGICAL),
                                shorthand)
        if mode == DM_INIT and icr_low & ICR_LEVEL_TRIGGER and not icr_low & ICR_LEVEL_ASSERT:
            return  # INIT level de-assert: no effect on P4 and later (SDM 10.6.1)
        if mode == DM_LOWEST and shorthand == SHORTHAND_NONE and targets:
            targets = [self._lowest_priority(targets)]
        self.stats[src].ipis_sent += 1
        for i in targets:
            if i != src and self.on_remote is not None:
                self.on_remote(i)
            self._deliver(i, mode, icr_low & 0xFF, level=False)
            self.stats[i].ipis_received += 1

    def _lowest_priority(self, targets: list[int]) -> int:
        # The arbitration: the lowest task priority wins, ties to the lowest index.
        return min(targets, key=lambda i: (self.lapics[i].task_priority, i))

    def _deliver(self, i: int, mode: int, vector: int, level: bool) -> None:
        apic = self.lapics[i]
        if mode in (DM_FIXED, DM_LOWEST):
            apic.accept(vector, level)
        elif mode == DM_NMI:
            apic.deliver_nmi()
        elif mode == DM_EXTINT:
            apic.deliver_extint()
        elif mode in (DM_INIT, DM_STARTUP) and self.on_init_sipi is not None:
            if apic.hardware_enabled:
                self.on_init_sipi(i, mode, vector)

    def ioapic_deliver(self, vector: int, delivery_mode: int, level_trigger: bool, dest: int,
                       dest_mode: int) -> None:
        """The IOAPIC's ``deliver``: to every APIC its destination selects (one, for
        lowest priority)."""
        targets = self._targets(-1, dest, bool(dest_mode), SHORTHAND_NONE)
        if delivery_mode == DM_LOWEST and targets:
            targets = [self._lowest_priority(targets)]
        for i in targets:
            if delivery_mode in (DM_FIXED, DM_LOWEST, DM_NMI, DM_EXTINT):
                self._deliver(i, delivery_mode, vector, level_trigger)


class ApicPage:
    """The local APIC page as each CPU sees it: its own APIC's registers."""

    name = "lapic-page"

    def __init__(self, bus: ApicBus) -> None:
        self._bus = bus

    def _apic(self) -> LocalApic:
        return self._bus.lapics[self._bus.current]

    def io_read(self, offset: int, size: int) -> int:
        return self._apic().io_read(offset, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._apic().io_write(offset, size, value)

    def set_hardware_enabled(self, enabled: bool) -> None:
        self._apic().set_hardware_enabled(enabled)

    # IA32_TSC_DEADLINE is per CPU: the MSR reaches the APIC of the vCPU that ran WRMSR.
    def enable_tsc_deadline(self) -> None:
        for apic in self._bus.lapics:
            apic.enable_tsc_deadline()

    @property
    def tsc_deadline(self) -> int:
        return self._apic().tsc_deadline

    def write_tsc_deadline(self, value: int, due_ns: int) -> None:
        self._apic().write_tsc_deadline(value, due_ns)

    def reset(self) -> None:
        pass  # the APICs are slots of their own


@dataclass
class _Vcpu:
    index: int
    lapic: LocalApic
    state: str = RUNNING
    halted: bool = False
    context: Any = None  # the engine's saved context while another vCPU runs
    sipi_vector: int | None = None  # a STARTUP received, applied when it next runs
    apic_base: int | None = None  # IA32_APIC_BASE while another vCPU runs
    done: bool = False  # halted with IF=0 and no NMI: only INIT or NMI wakes it


class VcpuSet:
    """The vCPUs of one machine, taking turns on its engine (``thread=single``)."""

    def __init__(self, machine: Any, bus: ApicBus, quantum_ns: int = DEFAULT_QUANTUM_NS) -> None:
        self._m = machine
        self.bus = bus
        self.quantum_ns = quantum_ns
        self.vcpus = [_Vcpu(i, apic) for i, apic in enumerate(bus.lapics)]
        self.current = 0
        # Turns are measured in guest time under --deterministic (the virtual clock
        # counts instructions, so the same guest switches at the same instructions),
        # in host time otherwise.
        self._deterministic = bool(machine.deterministic)
        self._now: Callable[[], int] = machine.clock.now if self._deterministic \
            else time.monotonic_ns
        self._turn_started = self._now()
        self._turn_used_on_load: int | None = None  # load_state: the clock loads after
        self._yield = False
        self._slice_started = 0
        self._viewed: tuple[int, bool] | None = None  # viewing(): (index, current's halted)
        bus.on_init_sipi = self._init_sipi
        bus.on_remote = self._remote
        self.reset()

    def __len__(self) -> int:
        return len(self.vcpus)

    # -- messages (vCPU thread, from MMIO callbacks) --------------------------------

    def _init_sipi(self, i: int, mode: int, vector: int) -> None:
        v = self.vcpus[i]
        if i == self.current:
            return  # INIT or STARTUP to the sender itself: not modelled (no CPU resets itself)
        if mode == DM_INIT:
            # The reset state waits for a STARTUP; its context is made then (_start_at).
            v.lapic.reset()
            v.state = WAIT_FOR_SIPI
            v.context = None
            v.sipi_vector = None
            v.halted = v.done = False
            v.apic_base = None
        elif v.state == WAIT_FOR_SIPI and v.sipi_vector is None:
            v.sipi_vector = vector  # a second SIPI before it starts is ignored, as on hardware
        self._m.wake()

    def _remote(self, _index: int) -> None:
        self._yield = True
        self._m.wake()

    # -- scheduling (vCPU thread, between slices) -----------------------------------

    def reset(self) -> None:
        """Machine reset: the engine holds the BSP's reset state; the APs wait for SIPI."""
        for v in self.vcpus:
            v.halted = False
            v.done = False
            v.context = None
            v.sipi_vector = None
            v.apic_base = None
            v.state = RUNNING if v.index == 0 else WAIT_FOR_SIPI
        self.current = 0
        self.bus.current = 0
        self._m.cpuid.apic_id = self.vcpus[0].lapic.initial_apic_id
        self._m.runloop.irq_source = self.vcpus[0].lapic
        self._turn_started = self._now()

    def _wants_cpu(self, v: _Vcpu) -> bool:
        """Could ``v`` do anything if given the engine now?"""
        if v.sipi_vector is not None:
            return True
        if v.state != RUNNING:
            return False
        apic = v.lapic
        if apic.nmi_pending:
            return True
        if not v.halted:
            return True
        return not v.done and apic.has_interrupt()

    def any_wakeup(self) -> bool:
        """While the current vCPU is halted: can any vCPU run?"""
        return any(self._wants_cpu(v) for v in self.vcpus)

    def others_can_run(self) -> bool:
        return any(self._wants_cpu(v) for v in self.vcpus if v.index != self.current)

    def schedule(self) -> None:
        """Pick the vCPU that runs next and put it on the engine."""
        cur = self.vcpus[self.current]
        if self._m.cpu.halted and not cur.halted:
            exits = self.bus.stats[self.current].exits
            exits["hlt"] = exits.get("hlt", 0) + 1
        cur.halted = self._m.cpu.halted
        if not cur.halted:
            cur.done = False
        now = self._turn_clock()
        expired = now - self._turn_started >= self.quantum_ns
        keep = self._wants_cpu(cur)
        if keep and not expired and not self._yield:
            return
        self._yield = False
        n = len(self.vcpus)
        for step in range(1, n + 1):
            nxt = self.vcpus[(self.current + step) % n]
            if nxt is cur and keep:
                break
            if self._wants_cpu(nxt):
                self._switch(nxt, now)
                return
        self._turn_started = now

    def _switch(self, nxt: _Vcpu, now: int) -> None:
        m = self._m
        cur = self.vcpus[self.current]
        if nxt is not cur:
            cur.context = m.uc.context_save()
            cur.halted = m.cpu.halted
            if m.msrs is not None:
                cur.apic_base = m.msrs.apic_base
            if nxt.context is not None:
                m.uc.context_restore(nxt.context)
            nxt.context = None
            self.current = nxt.index
            self.bus.current = nxt.index
            m.cpuid.apic_id = nxt.lapic.initial_apic_id
            m.runloop.irq_source = nxt.lapic
            m.hooks.waiting = False
            if m.msrs is not None:
                if nxt.apic_base is None:  # an AP's power-on value: no BSP flag
                    nxt.apic_base = m.msrs.apic_base & ~APIC_BASE_BSP
                m.msrs.apic_base = nxt.apic_base
            _flush_tlb(m.uc)
            self.bus.stats[nxt.index].switches_in += 1
        m.cpu.halted = nxt.halted
        if nxt.sipi_vector is not None:
            self._start_at(nxt.sipi_vector)
            nxt.sipi_vector = None
            nxt.state = RUNNING
            nxt.halted = m.cpu.halted = False
        if nxt.lapic.nmi_pending:
            nxt.done = False
        self._turn_started = now

    def _start_at(self, vector: int) -> None:
        start_at(self._m.uc, vector)

    def halted_for_good(self) -> bool:
        """The current vCPU halted with IF=0: does the run end (no other vCPU can run,
        now or after an interrupt)?  Otherwise only that vCPU stops."""
        self.vcpus[self.current].done = True
        return not any(v.state == RUNNING and not v.done for v in self.vcpus)

    def _turn_clock(self) -> int:
        now = self._now()
        if self._turn_used_on_load is not None:
            self._turn_started = now - self._turn_used_on_load
            self._turn_used_on_load = None
        return now

    def slice_deadline(self, due: int | None) -> int | None:
        """The host deadline of the next slice: the turn's end when others wait
        (under --deterministic the turn ends at a guest time: :meth:`guest_deadline`)."""
        if self._deterministic or not self.others_can_run():
            return due
        end = self._turn_started + self.quantum_ns
        return end if due is None else min(due, end)

    def guest_deadline(self, due: int | None) -> int | None:
        """Under --deterministic, the guest-time deadline of the next slice: the
        next timer's or the turn's end when others wait."""
        if not self._deterministic or not self.others_can_run():
            return due
        end = self._turn_started + self.quantum_ns
        return end if due is None else min(due, end)

    def begin_slice(self) -> None:
        self._slice_started = time.monotonic_ns()

    def end_slice(self, stop_flags: int, instructions: int | None = None) -> None:
        """Count the slice that just ended, by what stopped it (mmu_core's STOP_* flags)."""
        count_slice(self.bus.stats[self.current], stop_flags,
                    time.monotonic_ns() - self._slice_started, instructions)

    # -- between runs: another vCPU's view, saved state -----------------------------

    def select(self, index: int) -> None:
        """Put vCPU ``index`` on the engine now (between runs), as a switch does: the
        debugger's step of a chosen thread.  It keeps the engine for a full turn."""
        self._check_index(index)
        self._not_viewing()
        now = self._turn_clock()
        if index != self.current:
            self._switch(self.vcpus[index], now)
        self._turn_started = now  # a fresh turn, even for the vCPU already on the engine
        self._yield = False

    @contextmanager
    def viewing(self, index: int) -> Iterator[None]:
        """Between runs, for the block: the engine shows vCPU ``index`` (registers,
        paging, halted, its APIC in the page at 0xFEE00000), then the current vCPU
        again; the schedule does not change.  Register writes made meanwhile stay
        with ``index``, except for a vCPU waiting for SIPI, which shows its INIT
        state and drops them (its STARTUP sets its registers).  Costs two context
        switches and two flushes of Unicorn's TLB."""
        self._check_index(index)
        if self._viewed is not None:
            raise RuntimeError("viewing() does not nest")
        if index == self.current:
            yield
            return
        m = self._m
        v = self.vcpus[index]
        own_ctx, own_halted = m.uc.context_save(), m.cpu.halted
        self._viewed = (index, own_halted)
        own_base = m.msrs.apic_base if m.msrs is not None else None
        m.uc.context_restore(v.context if v.context is not None else m.cpu.reset_context)
        m.cpu.halted = v.halted
        self.bus.current = index
        if m.msrs is not None and own_base is not None:
            m.msrs.apic_base = v.apic_base if v.apic_base is not None \
                else own_base & ~APIC_BASE_BSP
        _flush_tlb(m.uc)
        try:
            yield
        finally:
            if v.context is not None:
                v.context = m.uc.context_save()
                v.halted = m.cpu.halted
                if m.msrs is not None:
                    v.apic_base = m.msrs.apic_base
            m.uc.context_restore(own_ctx)
            m.cpu.halted = own_halted
            self._viewed = None
            self.bus.current = self.current
            if m.msrs is not None and own_base is not None:
                m.msrs.apic_base = own_base
            _flush_tlb(m.uc)

    def run_state(self, index: int) -> str:
        """``"running"``, ``"halted"`` or ``"wait-for-sipi"``."""
        self._check_index(index)
        v = self.vcpus[index]
        if v.state == WAIT_FOR_SIPI:
            return WAIT_FOR_SIPI
        if self._viewed is not None and index in (self._viewed[0], self.current):
            # Inside viewing(): the machine's flag is the viewed vCPU's.
            halted = self._m.cpu.halted if index == self._viewed[0] else self._viewed[1]
        else:
            halted = self._m.cpu.halted if index == self.current else v.halted
        return "halted" if halted else RUNNING

    def _not_viewing(self) -> None:
        if self._viewed is not None:
            raise RuntimeError("not inside viewing(): the engine shows another vCPU")

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int) \
                or not 0 <= index < len(self.vcpus):
            raise ValueError(f"CPU {index!r} does not exist (this machine has CPUs 0 to "
                             f"{len(self.vcpus) - 1})")

    STATE_VERSION = 1

    def save_state(self) -> dict[str, Any]:
        """Every vCPU's run state; for the vCPUs off the engine their saved engine
        context and IA32_APIC_BASE too (the machine's CPU state and platform MSRs
        hold the current one's); which vCPU is on the engine.  The APICs are board
        slots of their own."""
        self._not_viewing()
        m = self._m
        out = []
        for v in self.vcpus:
            current = v.index == self.current
            base = v.apic_base
            if current:
                base = m.msrs.apic_base if m.msrs is not None else None
            out.append({"state": v.state, "halted": m.cpu.halted if current else v.halted,
                        "done": v.done, "sipi_vector": v.sipi_vector, "apic_base": base,
                        "context": None if current or v.context is None else bytes(v.context)})
        return {"version": self.STATE_VERSION, "current": self.current,
                "yield": self._yield, "turn_ns": self._turn_clock() - self._turn_started,
                "vcpus": out}

    def load_state(self, state: object) -> None:
        """Load :meth:`save_state`'s dict between runs, after the machine's CPU context
        and before the board's devices (the APIC page must show the current vCPU's
        APIC while the platform MSRs load); :meth:`finish_load` after them."""
        self._not_viewing()
        values = check_state(state, "vcpus", (self.STATE_VERSION,))
        saved, current = values.get("vcpus"), values.get("current")
        if not isinstance(saved, list) or len(saved) != len(self.vcpus):
            raise StateError(f"vcpus: the state has {len(saved) if isinstance(saved, list) else '?'}"
                             f" vCPUs, this machine {len(self.vcpus)}")
        if isinstance(current, bool) or not isinstance(current, int) \
                or not 0 <= current < len(self.vcpus):
            raise StateError(f"vcpus: saved current vCPU {current!r} does not exist")
        m = self._m
        size = len(bytes(m.uc.context_save()))
        loaded = []
        for i, item in enumerate(saved):
            loaded.append(self._check_vcpu(i, item, size, i == current))
        for v, (run_state, halted, done, vector, base, data) in zip(self.vcpus, loaded,
                                                                     strict=True):
            v.state, v.halted, v.done, v.sipi_vector, v.apic_base = (run_state, halted, done,
                                                                    vector, base)
            v.context = None
            if data is not None:
                v.context = m.uc.context_save()
                ctypes.memmove(v.context.context, data, size)
        self.current = current
        self.bus.current = current
        self._yield = bool(values.get("yield"))
        cur = self.vcpus[current]
        m.cpuid.apic_id = cur.lapic.initial_apic_id
        m.runloop.irq_source = cur.lapic
        used = values.get("turn_ns", 0)  # absent in states saved before it was kept
        if isinstance(used, bool) or not isinstance(used, int) or used < 0:
            raise StateError(f"vcpus: turn_ns {used!r} is not a duration in ns")
        self._turn_used_on_load = min(used, self.quantum_ns)

    def finish_load(self) -> None:
        """After the devices loaded: the platform MSRs hold the current vCPU's
        IA32_APIC_BASE (their own load assumes one CPU, the BSP)."""
        cur = self.vcpus[self.current]
        if self._m.msrs is not None and cur.apic_base is not None:
            self._m.msrs.apic_base = cur.apic_base
        cur.apic_base = None

    @staticmethod
    def _check_vcpu(i: int, item: object, size: int, current: bool
                    ) -> tuple[str, bool, bool, int | None, int | None, bytes | None]:
        if not isinstance(item, dict):
            raise StateError(f"vcpus: vCPU {i}'s state is not a mapping")
        run_state, vector, base, data = (item.get("state"), item.get("sipi_vector"),
                                         item.get("apic_base"), item.get("context"))
        if run_state not in (RUNNING, WAIT_FOR_SIPI):
            raise StateError(f"vcpus: vCPU {i}'s run state {run_state!r} is unknown")
        if vector is not None and (isinstance(vector, bool) or not isinstance(vector, int)
                                   or not 0 <= vector <= 0xFF):
            raise StateError(f"vcpus: vCPU {i}'s STARTUP vector {vector!r} is not a byte")
        if base is not None and (isinstance(base, bool) or not isinstance(base, int)
                                 or not 0 <= base < 1 << 64):
            raise StateError(f"vcpus: vCPU {i}'s IA32_APIC_BASE {base!r} is not a 64-bit value")
        if data is not None and (not isinstance(data, bytes) or len(data) != size or current):
            raise StateError(f"vcpus: vCPU {i}'s saved engine context does not fit this "
                             "engine" if not current else
                             f"vcpus: vCPU {i} is on the engine and has a parked context")
        return run_state, bool(item.get("halted")), bool(item.get("done")), vector, base, data


APIC_BASE_BSP = 1 << 8


def start_at(uc: Uc, vector: int) -> None:
    """A STARTUP IPI: real mode at vector:0000, the rest as after INIT (SDM 8.4.4)."""
    uc16 = Uc(UC_ARCH_X86, UC_MODE_16)
    uc16.reg_write(X.UC_X86_REG_CS, vector << 8)
    uc16.reg_write(X.UC_X86_REG_IP, 0)
    uc16.reg_write(X.UC_X86_REG_EDX, 0x0663)
    uc16.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0xFFFF, 0))
    uc16.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
    uc.context_restore(uc16.context_save())
    _flush_tlb(uc)


def count_slice(s: VcpuStats, stop_flags: int, run_ns: int,
                instructions: int | None = None) -> None:
    """One slice of a vCPU, by what stopped it (mmu_core's STOP_* flags)."""
    s.slices += 1
    s.run_ns += run_ns
    if instructions is not None:
        s.instructions = (s.instructions or 0) + instructions
    for bit, kind in _EXIT_KINDS:
        if stop_flags & bit:
            s.exits[kind] = s.exits.get(kind, 0) + 1


def flush_translations(uc: Uc) -> None:
    """Drop every translated block of ``uc`` (its own thread only)."""
    uc.ctl(UCC.UC_CTL_TB_FLUSH, UCC.UC_CTL_IO_WRITE)


def _flush_tlb(uc: Uc) -> None:
    # The TLB is not part of a context: the incoming vCPU must not see the outgoing one's.
    uc.ctl(UCC.UC_CTL_TLB_FLUSH, UCC.UC_CTL_IO_WRITE)
_EXIT_KINDS = ((STOP_FAULT, "page-fault"), (STOP_INTERRUPT, "exception-or-int"),
               (STOP_INVALID, "invalid-opcode"), (STOP_SYSCALL, "syscall"),
               (STOP_SYSENTER, "sysenter"), (STOP_REQUEST, "device-stop"),
               (STOP_ERROR, "callback-error"), (STOP_KICK, "kick"))
