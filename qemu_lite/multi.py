"""Several vCPUs on host threads of their own (``-smp N -accel tcg,thread=multi``).

The BSP keeps the machine's engine, Core and run loop.  Each AP gets its own Unicorn
engine and :class:`~mmu_core.Core` that maps the BSP's guest RAM (``Core(ram_from=)``)
and the BIOS ROM, its own local APIC page, and one forwarding region over every other
address: an AP's loads and stores there, and its port I/O, reach the handler the
BSP's Core has for that address or port, so devices, PCI BARs the guest moves and
the VGA window are one map, kept by the BSP.  Every vCPU runs its own
:class:`~qemu_lite.runloop.RunLoop` on its own thread.

One lock, :attr:`ParallelVcpus.lock`, serialises the Python side: every device
access, MSR hook and run loop's work between slices holds it, and each loop lets go
of it only inside ``emu_start`` and while halted.  Guest code runs in parallel.

Coherence between engines (issue 18 item 3):

- page tables: the engines use Unicorn's own MMU (``mmu="native"``); its TLB is the
  architectural one, which the guest keeps coherent itself (INVLPG and CR3 writes
  after a shootdown IPI), so nothing of the shadow MMU's kind needs a remote flush;
- translated code: each engine's translation cache is its own, so the engines of a
  machine form one code-share group (engine patch o, ``uc_ql_code_share``): a store by
  any vCPU to a page another engine holds code in traps there, and once it has landed
  the other engine drops that code before its next block (Linux's runtime text
  patching: alternatives, static keys, text_poke);
- LOCK'd instructions: engine patch n (``uc_ql_set_parallel``) translates with
  CF_PARALLEL, so they become host atomics; patch p makes XCHG one and steps the
  LOCK'd accesses a host cannot make atomic (unaligned ones) under a process-wide
  lock.  LOCK CMPXCHG16B in a CF_PARALLEL block is the host's own (Unicorn's build
  has CONFIG_CMPXCHG128), so CPUID offers CX16 as under single.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from typing import Any

from unicorn import Uc

import mmu_core
from mmu_core._core import TLB_NATIVE
from qemu_lite import engine as engine_mod
from qemu_lite._vcpu_hooks import VcpuHooks, VirtualTsc, keep_gil_for_engine_calls
from qemu_lite.clock import TSC_KHZ
from qemu_lite.cpuid import CpuidModel
from qemu_lite.devices.lapic import DM_INIT, LocalApic
from qemu_lite.runloop import RunLoop, RunResult
from qemu_lite.smp import (
    APIC_BASE_BSP,
    RUNNING,
    WAIT_FOR_SIPI,
    start_at,
)
from qemu_lite.vcpu import VCpu, new_engine

APIC_PAGE = 0xFEE00000
PORTS = 65536
PARK = "park"  # an AP's run ended because the machine's run did
INIT = "init"  # an INIT message reached a running AP


def set_parallel(uc: Uc) -> bool:
    """Patch n: translate with CF_PARALLEL (LOCK'd accesses become host atomics)."""
    from unicorn.unicorn_py3 import unicorn as binding

    fn = getattr(binding.uclib, "uc_ql_set_parallel", None)
    if fn is None:
        return False
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_bool]
    return fn(uc._uch, True) == 0


def join_code_group(uc: Uc, key: int) -> bool:
    """Patch o: keep ``uc``'s translations coherent with those of the other engines
    joined under ``key`` (an address that names the machine)."""
    from unicorn.unicorn_py3 import unicorn as binding

    fn = getattr(binding.uclib, "uc_ql_code_share", None)
    if fn is None:
        return False
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]
    return fn(uc._uch, key) == 0


_CODE_STATS = ("code_invalidations_received", "code_rearms_received",
               "code_invalidations_sent", "code_inbox_overflows")


def code_group_stats(uc: Uc) -> dict[str, int]:
    """Patch o's counters for one engine (see :data:`_CODE_STATS`)."""
    from unicorn.unicorn_py3 import unicorn as binding

    fn = binding.uclib.uc_ql_code_share_stats
    fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p]
    out = (ctypes.c_uint64 * len(_CODE_STATS))()
    fn(uc._uch, out)
    return dict(zip(_CODE_STATS, out, strict=True))


def multi_supported() -> str | None:
    """Why ``thread=multi`` cannot run on this engine, or None."""
    if not all(engine_mod.is_patched(p) for p in "nop"):
        return ("thread=multi needs the patched engine's parallel atomics and shared code "
                "invalidation (patches n, o and p)")
    return None


class Locked:
    """A device handler whose accesses hold the machine's lock."""

    def __init__(self, handler: Any, lock: threading.RLock) -> None:
        self.handler = handler
        self._lock = lock
        self.name = getattr(handler, "name", type(handler).__name__)

    def io_read(self, offset: int, size: int) -> int:
        with self._lock:
            return int(self.handler.io_read(offset, size))

    def io_write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self.handler.io_write(offset, size, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handler, name)


class _PortForward:
    """Every port of an AP's engine: the BSP's Core says who answers (its handlers are
    :class:`Locked` already: ``Machine.add_device`` wraps them under thread=multi)."""

    name = "ports"

    def __init__(self, bsp_core: Any) -> None:
        self._core = bsp_core

    def io_read(self, port: int, size: int) -> int:
        owner = self._core.port_handler(port)
        if owner is None:
            return (1 << (8 * size)) - 1
        handler, base = owner
        return int(handler.io_read(port - base, size))

    def io_write(self, port: int, size: int, value: int) -> None:
        owner = self._core.port_handler(port)
        if owner is not None:
            handler, base = owner
            handler.io_write(port - base, size, value)


class _MmioForward:
    """One gap of an AP's address space: the machine's MMIO map says who answers."""

    name = "mmio"

    def __init__(self, machine: Any, base: int) -> None:
        self._m = machine
        self._base = base

    def io_read(self, offset: int, size: int) -> int:
        return int(self._m.forward_mmio_read(self._base + offset, size))

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._m.forward_mmio_write(self._base + offset, size, value)


class _ApLoop(RunLoop):
    """An AP's run loop: the BSP's loop services the clock and the pollers."""

    def __init__(self, ap: _Ap, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ap = ap

    def service(self) -> None:
        self._ap.apply_pending()

    def _next_due(self, wall_deadline: int | None, guest: int | None) -> int | None:
        return wall_deadline  # timers are the BSP's to run

    def do_reset(self) -> None:
        # A triple fault on an AP resets the machine: the BSP does it.
        self._ap.owner.machine.runloop.request_reset()
        self.stop(INIT, None, "machine reset")


@dataclass
class _Ap:
    index: int
    owner: ParallelVcpus
    lapic: LocalApic
    uc: Uc = field(init=False)
    core: Any = field(init=False)
    cpu: VCpu = field(init=False)
    hooks: VcpuHooks = field(init=False)
    loop: _ApLoop = field(init=False)
    state: str = WAIT_FOR_SIPI
    sipi_vector: int | None = None
    parked: bool = True
    thread: threading.Thread | None = None
    pam: tuple[int, ...] | None = None  # PAM attributes to apply on this thread
    msrs: Any = None
    keep: list[Any] = field(default_factory=list)

    def apply_pending(self) -> None:
        """On the AP's thread, between slices: what the BSP changed in the map."""
        pam, self.pam = self.pam, None
        if pam is not None:
            self.core.set_pam(list(pam))


class ParallelVcpus:
    """The APs of a ``thread=multi`` machine, each on an engine and thread of its own."""

    def __init__(self, machine: Any, lapics: list[LocalApic]) -> None:
        self.machine = machine
        self.lock = machine.big_lock
        self._cond = threading.Condition(self.lock)
        self.running = False  # the machine's run() is in progress
        self._quit = False
        self.error: BaseException | None = None
        self._code_group = ctypes.c_int(0)  # patch o's group key: its address
        machine.runloop.peers = self
        self.aps = [self._build(i, apic) for i, apic in enumerate(lapics) if i > 0]
        self._join_engine(machine.uc)
        bus = machine.board.apic_bus
        bus.on_init_sipi = self._init_sipi
        # Each loop counts into the bus's per-vCPU stats, which count the IPIs.
        self.stats = bus.stats
        for loop, stats in zip(self._loops(), bus.stats, strict=True):
            loop.stats = stats

    # -- building ---------------------------------------------------------------------

    def _join_engine(self, uc: Uc) -> None:
        if not set_parallel(uc):
            raise RuntimeError("cannot translate with CF_PARALLEL (patch n)")
        if not join_code_group(uc, ctypes.addressof(self._code_group)):
            raise RuntimeError("cannot share code invalidation among engines (patch o)")

    def _build(self, index: int, apic: LocalApic) -> _Ap:
        m = self.machine
        ap = _Ap(index, self, apic)
        uc, reset_ctx = new_engine()
        keep_gil_for_engine_calls(uc)
        core = mmu_core.Core(uc, m.memory_size, TLB_NATIVE, ram_from=m.core)
        ap.uc, ap.core = uc, core
        self._join_engine(uc)
        (low, low_end), (high, high_end) = m.rom_ranges
        if low < 0xF0000:  # a BIOS over 64 KiB covers RAM below the BIOS window
            uc.mem_unmap(low, 0xF0000 - low)
        core.map_rom(low, m.read_memory(low, low_end - low))
        core.map_rom(high, m.read_memory(high, high_end - high))
        if m.board.vga is not None:  # the window is a device's, not RAM
            uc.mem_unmap(0xA0000, 0x20000)
        ap.cpu = VCpu(uc, core, reset_ctx)
        ap.hooks = VcpuHooks(uc)
        tsc = VirtualTsc(uc, ap.hooks, TSC_KHZ, m.clock.start_ns)
        cpuid = CpuidModel(tsc_mhz=TSC_KHZ // 1000)
        cpuid.table = m.cpuid.table  # the BSP's, with what the machine offers
        cpuid.apic_id = apic.initial_apic_id
        core.set_cpuid_handler(lambda: cpuid.hook(uc))
        core.claim_ports(0, PORTS, _PortForward(m.core))
        core.map_mmio(APIC_PAGE, 0x1000, Locked(apic, self.lock))
        for start, end in _gaps(uc, 1 << m.cpuid.physical_address_bits()):
            core.map_mmio(start, end - start, _MmioForward(m, start))
        loop = _ApLoop(ap, ap.cpu, core, ap.hooks, m.clock, pollers=[],
                       reset_devices=lambda: None)
        loop.irq_source = apic
        loop.lock = self.lock
        loop.peers = self
        loop.no_reboot = m.runloop.no_reboot
        if m.count_instructions:
            loop.count_instructions()
        ap.loop = loop
        apic.on_request = lambda: self._wake(ap)
        msrs = m.msrs_for_ap(ap.uc, tsc, apic, loop) if m.msrs is not None else None
        ap.msrs = msrs
        ap.keep += [tsc, cpuid]
        if msrs is not None:
            loop.pollers.append(msrs.apply_pending)
        return ap

    # -- messages (under the lock, from device callbacks) -----------------------------

    def _wake(self, ap: _Ap) -> None:
        ap.loop.wake()
        self._notify()

    def _notify(self) -> None:
        try:
            self._cond.notify_all()
        except RuntimeError:  # not under the lock (an unlocked caller): the loop's wake will do
            pass

    def _init_sipi(self, i: int, mode: int, vector: int) -> None:
        if i == 0:
            return  # INIT or STARTUP to the BSP: not modelled (no CPU resets itself so)
        ap = self.aps[i - 1]
        if mode == DM_INIT:
            ap.lapic.reset()
            ap.sipi_vector = None
            if ap.state == RUNNING:
                ap.loop.stop_at_next_block(INIT, "INIT")
            ap.state = WAIT_FOR_SIPI
        elif ap.state == WAIT_FOR_SIPI and ap.sipi_vector is None:
            ap.sipi_vector = vector
        self._notify()

    # -- halting -------------------------------------------------------------------------

    def halted_for_good(self, loop: RunLoop) -> bool:
        """``loop``'s vCPU halted with IF=0: is every vCPU now stopped for good?  If so
        and the caller is an AP, the machine's run ends ``halted``."""
        loop.done = True
        done = all(self._done(lp) for lp in self._loops())
        if done and loop is not self.machine.runloop:
            self.machine.stop("halted", None, "every vCPU halted with interrupts disabled")
        return done

    def _loops(self) -> list[RunLoop]:
        return [self.machine.runloop, *(ap.loop for ap in self.aps)]

    def _done(self, loop: RunLoop) -> bool:
        if isinstance(loop, _ApLoop) and loop._ap.state != RUNNING:
            return loop._ap.sipi_vector is None
        return loop.done

    # -- running (the machine's thread, under the lock) -----------------------------------

    def start(self) -> None:
        """The machine's run begins: the APs run too."""
        if self.error is not None:
            raise self.error
        self.running = True
        for ap in self.aps:
            ap.loop.no_reboot = self.machine.runloop.no_reboot
            if ap.thread is None:
                ap.thread = threading.Thread(target=self._ap_main, args=(ap,),
                                             name=f"vcpu{ap.index}", daemon=True)
                ap.thread.start()
        self._notify()

    def stop(self) -> None:
        """The machine's run ended: park every AP (they keep their state)."""
        self.running = False
        for ap in self.aps:
            if not ap.parked:
                ap.loop.stop_at_next_block(PARK, "the machine's run ended")
        self._cond.wait_for(lambda: all(ap.parked for ap in self.aps))
        error, self.error = self.error, None
        if error is not None:
            raise error

    def reset(self) -> None:
        """Machine reset (the BSP's thread): every AP waits for SIPI again."""
        for ap in self.aps:
            if not ap.parked:
                ap.loop.stop_at_next_block(INIT, "machine reset")
        self._cond.wait_for(lambda: all(ap.parked for ap in self.aps))
        for ap in self.aps:
            ap.state = WAIT_FOR_SIPI
            ap.sipi_vector = None
            ap.loop.done = False
            ap.cpu.halted = False
        self.machine.runloop.done = False

    def close(self) -> None:
        with self.lock:
            self._quit = True
            for ap in self.aps:
                ap.loop.stop_at_next_block(PARK, "closed")
            self._notify()
        for ap in self.aps:
            if ap.thread is not None:
                ap.thread.join(timeout=5)

    def set_pam(self, attrs: list[int]) -> None:
        """The BSP's PAM registers changed: each AP applies them on its own thread."""
        for ap in self.aps:
            if ap.parked:
                ap.core.set_pam(list(attrs))
            else:
                ap.pam = tuple(attrs)
                ap.loop.hooks.poke()

    def _runnable(self, ap: _Ap) -> bool:
        return self.running and (ap.state == RUNNING or ap.sipi_vector is not None)

    def _ap_main(self, ap: _Ap) -> None:
        with self.lock:
            while not self._quit:
                if not self._runnable(ap):
                    ap.parked = True
                    self._cond.notify_all()
                    self._cond.wait()
                    continue
                ap.parked = False
                ap.apply_pending()
                if ap.sipi_vector is not None:
                    start_at(ap.uc, ap.sipi_vector)
                    ap.sipi_vector = None
                    ap.state = RUNNING
                    ap.cpu.halted = False
                    ap.loop.done = False
                    if ap.msrs is not None:
                        ap.msrs.apic_base &= ~APIC_BASE_BSP
                try:
                    result = self._run_ap(ap)
                except BaseException as exc:  # noqa: BLE001 - re-raised by the BSP's run
                    self.error = self.error or exc
                    ap.state = WAIT_FOR_SIPI
                    self.machine.stop("error", None, f"vCPU {ap.index}: {exc}")
                    continue
                if result.reason == INIT:
                    ap.state = WAIT_FOR_SIPI if ap.sipi_vector is None else ap.state
                elif result.reason == "halted":
                    ap.parked = True
                    self._cond.notify_all()
                    self._cond.wait_for(lambda: self._quit or not self.running
                                        or not ap.loop.done)
                elif result.reason != PARK:
                    # A stop made on this vCPU (the exit port, a reset): the machine's run
                    # ends with that reason.
                    self.machine.stop(result.reason, result.exit_status, result.message)
                    ap.parked = True
                    self._cond.notify_all()
                    self._cond.wait_for(lambda: self._quit or not self.running)

    def _run_ap(self, ap: _Ap) -> RunResult:
        loop = ap.loop
        loop.begin()
        try:
            return loop.run(None)
        finally:
            loop.end()

    # -- what the machine reports ------------------------------------------------------------

    def run_state(self, index: int) -> str:
        if index == 0:
            return "halted" if self.machine.cpu.halted else "running"
        ap = self.aps[index - 1]
        if ap.state != RUNNING:
            return ap.state
        return "halted" if ap.cpu.halted else "running"

    def code_stats(self) -> list[dict[str, int]]:
        return [code_group_stats(uc) for uc in [self.machine.uc, *(ap.uc for ap in self.aps)]]


def _gaps(uc: Uc, limit: int) -> list[tuple[int, int]]:
    """The ranges below ``limit`` that nothing is mapped at in ``uc``."""
    out = []
    at = 0
    for start, end in sorted((s, e + 1) for s, e, _ in uc.mem_regions()):
        if start >= limit:
            break
        if start > at:
            out.append((at, start))
        at = max(at, end)
    if at < limit:
        out.append((at, limit))
    return out
