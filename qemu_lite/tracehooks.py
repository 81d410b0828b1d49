"""Embedding hooks for tracing and fuzzing: coverage, memory watches, port and MMIO
tracing, system-call entries.

:class:`TraceHooks` is a mixin of :class:`~qemu_lite.machine.Machine`.  Each hook
costs nothing until it is set, and each docstring states what it costs while set.
Callbacks run on the vCPU thread, inside the guest's instruction (a memory or
port access) or between slices (system calls); they may read registers and
memory and call ``Machine.stop_at_next_block()`` to end the run, but must not
run the machine.  An exception from a callback ends :meth:`Machine.run` with
that exception.

>>> from qemu_lite import Machine, DEFAULT_IMAGE
>>> with Machine(DEFAULT_IMAGE, snapshot=True) as m:
...     cov = m.coverage()                      # AFL-style edges, in C
...     ports = []
...     m.trace_ports(lambda port, size, value, write: ports.append((port, write)))
...     result = m.run(timeout=60)
>>> result.exit_status, (0xF4, True) in ports  # isa-debug-exit: an OUT to port 0xF4
(1, True)
>>> cov.edge_count() > 100 and 0x7C00 in cov.blocks()  # the MBR's first block ran
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE

from qemu_lite.paging import PageFault

if TYPE_CHECKING:
    from unicorn import Uc

    from mmu_core import Core
    from qemu_lite._coverage import EdgeCoverage
    from qemu_lite.machine import Machine
    from qemu_lite.runloop import RunLoop
    from qemu_lite.vcpu import VCpu

__all__ = ["MemoryWatch", "TraceHooks"]

# callback(machine, kind, address, size, value): kind "read" or "write".
WatchCallback = Callable[["Machine", str, int, int, int], None]
# callback(port_or_address, size, value, is_write)
IoTracer = Callable[[int, int, int, bool], None]
# callback(machine, kind): kind "int80", "syscall" or "sysenter".
SyscallCallback = Callable[["Machine", str], None]


class MemoryWatch:
    """A memory watch set by :meth:`TraceHooks.watch_memory`; :meth:`remove` ends it."""

    def __init__(self, machine: TraceHooks, handles: list[Any]) -> None:
        self._machine = machine
        self._handles = handles

    def remove(self) -> None:
        """Stop watching (idempotent); translations are flushed so accesses get fast again."""
        for handle in self._handles:
            self._machine.uc.hook_del(handle)
        if self._handles:
            self._machine.uc.ctl_flush_tb()  # type: ignore[attr-defined]
        self._handles = []


class TraceHooks:
    """Coverage, memory watches, port/MMIO tracing and a system-call hook for
    :class:`Machine`."""

    _coverage: EdgeCoverage | None = None
    if TYPE_CHECKING:  # provided by Machine
        uc: Uc
        core: Core
        cpu: VCpu
        mmu_mode: str

        def _virtual_pieces(self, vaddr: int, size: int) -> list[tuple[int, int]]: ...
        runloop: RunLoop
        def read_memory(self, address: int, size: int) -> bytes: ...
        def read_virtual(self, vaddr: int, size: int) -> bytes: ...
        def _refuse_multi(self, what: str) -> None: ...

    # -- coverage ------------------------------------------------------------------

    def coverage(self, *, map_size: int = 65536, record_blocks: bool = True) -> EdgeCoverage:
        """Start recording block and edge coverage (or return the recorder already
        running): a :class:`~qemu_lite._coverage.EdgeCoverage`, AFL's edge bitmap
        and the set of executed blocks' linear addresses (see its docstring for the
        API a fuzzer uses).  ``close()`` on it stops recording.

        Cost while recording: a C call per executed translation block (no Python),
        plus a hash-set probe per block with ``record_blocks``; one translation-cache
        flush when it starts.  Addresses are linear, so processes sharing an address
        share its counters, as in AFL's QEMU mode."""
        self._refuse_multi("coverage maps")
        from qemu_lite._coverage import EdgeCoverage

        if self._coverage is not None and self._coverage.active:
            return self._coverage
        self._coverage = EdgeCoverage(self.uc, map_size, record_blocks)
        self.uc.ctl_flush_tb()  # type: ignore[attr-defined]  # existing blocks get the hook
        return self._coverage

    # -- memory watches --------------------------------------------------------------

    def watch_memory(self, address: int, size: int, callback: WatchCallback,
                     access: str = "write", *, linear: bool = False) -> MemoryWatch:
        """Call ``callback(machine, kind, address, size, value)`` for each guest access
        (``access``: ``"write"``, ``"read"`` or ``"access"``) to ``address ..
        address+size-1``: physical, or linear with ``linear=True`` (translated once,
        now: the pages must be mapped, PageFault otherwise).  ``value`` is what was
        written or read (0 for a read of something other than RAM or ROM); the
        address reported is physical (linear under
        ``mmu="native"``, which only watches linear ranges).

        Cost while set: every guest load or store of the watched kind takes
        Unicorn's slow path with a range check (the whole guest slows down, several
        times on store-heavy code); a Python call per access in the range; a
        translation-cache flush when set and when removed."""
        self._refuse_multi("memory watches")
        kinds = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ,
                 "access": UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ}
        if access not in kinds:
            raise ValueError(f"access must be one of {', '.join(kinds)}, not {access!r}")
        if size < 1:
            raise ValueError(f"watch size must be at least 1, not {size}")
        if not 0 <= address < 1 << 64 or address + size > 1 << 64:
            raise ValueError(f"{address:#x}+{size:#x} is outside the address space")
        if self.mmu_mode == "native":
            if not linear:
                raise ValueError("mmu='native' reports linear addresses to memory hooks: "
                                 "watch with linear=True")
            pieces = [(address, size)]
        elif linear:
            pieces = self._virtual_pieces(address, size)
        else:
            pieces = [(address, size)]
        machine = cast("Machine", self)
        read = self.read_virtual if self.mmu_mode == "native" else self.read_memory

        def hook(uc: object, kind: int, addr: int, n: int, value: int,
                 piece: tuple[int, int]) -> None:
            if addr + n <= piece[0] or addr >= piece[1]:
                return  # an access starting before the range that does not reach it
            try:
                if kind != UC_MEM_WRITE:  # the hook runs before the load: read what it will
                    try:
                        value = int.from_bytes(read(addr, n), "little")
                    except (ValueError, PageFault):  # not RAM or ROM: no value to show
                        value = 0
                callback(machine, "write" if kind == UC_MEM_WRITE else "read", addr, n,
                         value & ((1 << (8 * n)) - 1))
            except BaseException as exc:
                self.runloop.callback_failed(exc)

        # Unicorn checks a hook's range against an access's first byte only: start the
        # range 7 bytes early so an 8-byte access ending inside it is seen too.
        handles = [self.uc.hook_add(kinds[access], hook, (start, start + n),
                                    max(0, start - 7), start + n - 1)
                   for start, n in pieces]
        self.uc.ctl_flush_tb()  # type: ignore[attr-defined]
        return MemoryWatch(self, handles)

    # -- port and MMIO tracing ---------------------------------------------------------

    def trace_ports(self, callback: IoTracer | None) -> None:
        """Call ``callback(port, size, value, is_write)`` after every guest IN/OUT
        (claimed by a device or not, string I/O included), with the value read or
        written; ``None`` turns tracing off.

        Cost: off, a flag test in the C port hook; on, a Python call per access."""
        self._refuse_multi("port traces")
        self.core.set_port_tracer(callback)

    def trace_mmio(self, callback: IoTracer | None) -> None:
        """Call ``callback(address, size, value, is_write)`` after every guest access
        to a device's MMIO range (local APIC, IOAPIC, VGA window, NIC registers),
        physical address and value; ``None`` turns it off.  RAM, ROM and
        unassigned space are not MMIO here.

        Cost: off, a flag test in Core's C MMIO callbacks; on, a Python call per
        access (C fast paths such as the VGA window included)."""
        self._refuse_multi("MMIO traces")
        self.core.set_mmio_tracer(callback)

    # -- system calls ----------------------------------------------------------------

    def add_syscall_hook(self, callback: SyscallCallback | None) -> None:
        """Call ``callback(machine, kind)`` at each system-call entry, ``kind`` being
        ``"int80"`` (INT 0x80 executed, at any privilege level), ``"syscall"`` or
        ``"sysenter"``, before the CPU enters the kernel: the registers are the
        caller's (the number in EAX/RAX), RIP is past the instruction.  ``None``
        removes it.

        Cost: a Python call per entry, and while it is set every INT n and SYSCALL ends
        a slice and is delivered in Python (the C path, ``cpu.fast_events``, is off)."""
        self._refuse_multi("syscall hooks")
        machine = cast("Machine", self)
        if callback is None:
            self.cpu.syscall_observer = None
        else:
            self.cpu.syscall_observer = lambda kind: callback(machine, kind)
