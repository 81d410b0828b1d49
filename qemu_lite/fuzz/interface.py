"""What the snapshot-fuzzing harness needs from a machine: snapshots and edge coverage.

Two small interfaces, each with the machine's own implementation when it has one and a
stand-in until then:

- :func:`snapshots_for` uses ``Machine.snapshot()`` / ``Machine.restore(snap)`` (the state
  issue's in-memory snapshots: CPU, RAM and every device) when the machine has them, else
  :class:`CpuRamSnapshots`, which saves the CPU context and the RAM ranges it is told.
  That stand-in is exact only for a guest that touches no device state between its ready
  point and its end (the bundled TLV example: it reads memory and writes two ports).
- :func:`coverage_for` uses ``Machine.coverage()`` (the C edge recorder, ``_coverage.pyx``)
  when there, else :class:`BlockEdgeCoverage`: a Python block hook over the guest's code
  range that counts AFL-style edges (previous block, this block), about a microsecond a
  block.  (The harness's instruction budget is the machine's guest-time deadline, which
  the engine keeps: no hook.)
"""

from __future__ import annotations

from typing import Any, Protocol

EDGE_MAP = 1 << 16


class Snapshots(Protocol):
    def take(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...


class Coverage(Protocol):
    def reset(self) -> None: ...

    def edges(self) -> dict[int, int]:
        """Edge index (below EDGE_MAP) -> hit count, since :meth:`reset`."""
        ...


class _MachineSnapshots:
    def __init__(self, machine: Any) -> None:
        self.machine = machine

    def take(self) -> Any:
        return self.machine.snapshot()

    def restore(self, snap: Any) -> None:
        self.machine.restore(snap)


class CpuRamSnapshots:
    """Stand-in snapshots: the engine's CPU context plus copies of ``ranges`` of RAM."""

    def __init__(self, machine: Any, ranges: list[tuple[int, int]]) -> None:
        self.machine = machine
        self.ranges = ranges

    def take(self) -> Any:
        m = self.machine
        return (m.uc.context_save(), [(s, m.read_memory(s, e - s)) for s, e in self.ranges])

    def restore(self, snap: Any) -> None:
        m = self.machine
        context, memory = snap
        for start, data in memory:
            m.write_memory(start, data)
        m.uc.context_restore(context)


def snapshots_for(machine: Any, ranges: list[tuple[int, int]]) -> Snapshots:
    if callable(getattr(machine, "snapshot", None)) and callable(getattr(machine, "restore",
                                                                         None)):
        return _MachineSnapshots(machine)
    return CpuRamSnapshots(machine, ranges)


class BlockEdgeCoverage:
    """Edges between translation blocks in ``code`` (a [start, end) linear range), from a
    Python block hook."""

    def __init__(self, machine: Any, code: tuple[int, int]) -> None:
        from unicorn import UC_HOOK_BLOCK

        self.counts: dict[int, int] = {}
        self._prev = 0
        self._handle = machine.uc.hook_add(UC_HOOK_BLOCK, self._block, None, code[0],
                                           code[1] - 1)

    def _block(self, _uc: Any, address: int, _size: int, _user: Any) -> None:
        cur = ((address >> 4) ^ (address << 8)) & (EDGE_MAP - 1)
        edge = cur ^ self._prev
        self.counts[edge] = self.counts.get(edge, 0) + 1
        self._prev = cur >> 1

    def reset(self) -> None:
        self.counts = {}
        self._prev = 0

    def edges(self) -> dict[int, int]:
        return self.counts


class _MachineCoverage:
    """The machine's C edge bitmap (EDGE_MAP counters, AFL's hash), read after each input."""

    def __init__(self, machine: Any) -> None:
        self.recorder = machine.coverage(map_size=EDGE_MAP, record_blocks=False)

    def reset(self) -> None:
        self.recorder.clear()

    def edges(self) -> dict[int, int]:
        return dict(self.recorder.hits())


def coverage_for(machine: Any, code: tuple[int, int]) -> Coverage:
    if callable(getattr(machine, "coverage", None)):
        return _MachineCoverage(machine)
    return BlockEdgeCoverage(machine, code)
