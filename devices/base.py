"""The contract between device models and the machine.

A device exposes ``io_read(offset, size)`` / ``io_write(offset, size, value)``
for the port or MMIO range it claims (``offset`` is relative to the range
start) and ``reset()``.  It raises interrupts through an :class:`IrqLine` and
schedules work through a :class:`Clock`.  None of these know about Unicorn.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol


class IrqSink(Protocol):
    """Something that receives the level of numbered interrupt inputs."""

    def set_irq(self, irq: int, level: bool) -> None: ...


class IrqLine:
    """A level-triggered wire from a device to one input of an interrupt controller.

    Edge-triggered consumers see a rising edge when the level goes 0 -> 1.
    """

    __slots__ = ("_sink", "_irq", "level")

    def __init__(self, sink: IrqSink | None = None, irq: int = 0) -> None:
        self._sink = sink
        self._irq = irq
        self.level = False

    def set_level(self, level: bool) -> None:
        level = bool(level)
        if level == self.level:
            return
        self.level = level
        if self._sink is not None:
            self._sink.set_irq(self._irq, level)

    def raise_(self) -> None:
        self.set_level(True)

    def lower(self) -> None:
        self.set_level(False)

    def pulse(self) -> None:
        """An edge for edge-triggered inputs: raise then lower."""
        self.set_level(True)
        self.set_level(False)


class RecordingIrqSink:
    """Test helper: remembers every level change it is told about."""

    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}
        self.history: list[tuple[int, bool]] = []

    def set_irq(self, irq: int, level: bool) -> None:
        self.levels[irq] = level
        self.history.append((irq, level))


class StateError(ValueError):
    """A saved state this version cannot load (wrong version, or values out of range)."""


def check_state(state: object, name: str, versions: tuple[int, ...]) -> dict[str, Any]:
    """``state`` as a dict whose ``version`` is one of ``versions``, or :class:`StateError`."""
    if not isinstance(state, dict):
        raise StateError(f"{name}: saved state is not a mapping")
    version = state.get("version")
    if version not in versions:
        raise StateError(f"{name}: saved state version {version!r} is not one this version "
                         f"of qemu_lite reads ({', '.join(map(str, versions))})")
    return state


class Device:
    """Base class for port/MMIO devices.

    The state contract: :meth:`reset` returns to the power-on state;
    :meth:`save_state` returns a versioned dict of plain values (ints, strings,
    bytes, lists, dicts) that :meth:`load_state` of a freshly built device of the
    same configuration takes back, refusing (``StateError``) a version it cannot
    read.  Timers are not part of it: the clock saves and re-arms them.  A device
    without registers keeps these defaults."""

    name = "device"
    STATE_VERSION = 1

    def reset(self) -> None:
        """Return to power-on state."""

    def save_state(self) -> dict[str, Any]:
        return {"version": self.STATE_VERSION}

    def load_state(self, state: dict[str, Any]) -> None:
        check_state(state, self.name, (self.STATE_VERSION,))

    def io_read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, offset: int, size: int, value: int) -> None:
        return None


class Timer:
    """A one-shot timer on a :class:`Clock`; ``arm`` again to repeat."""

    __slots__ = ("_clock", "callback", "deadline", "_seq")

    def __init__(self, clock: Clock, callback: Callable[[], None]) -> None:
        self._clock = clock
        self.callback = callback
        self.deadline: int | None = None
        self._seq = 0

    def arm(self, deadline_ns: int) -> None:
        """Fire ``callback`` once the clock reaches ``deadline_ns`` (guest ns)."""
        deadline = int(deadline_ns)
        if deadline == self.deadline:
            return  # already queued for exactly that
        was_armed = self.deadline is not None
        self.deadline = deadline
        self._seq += 1
        if was_armed:
            self._clock._dropped()
        self._clock._schedule(self)

    def cancel(self) -> None:
        was_armed = self.deadline is not None
        self.deadline = None
        self._seq += 1
        if was_armed:
            self._clock._dropped()

    @property
    def armed(self) -> bool:
        return self.deadline is not None


class Clock:
    """Guest time in nanoseconds plus a queue of timers.

    Subclasses decide where time comes from (:meth:`now`).  The machine calls
    :meth:`run_due` at every stop; :meth:`next_deadline` tells it when the
    next timer is due.  This base class is a manual clock for tests: time moves
    only through :meth:`advance`.
    """

    # The heap keeps an entry per arm; re-arming or cancelling a timer leaves its old
    # entry stale until it comes to the top.  Once stale entries outnumber the live
    # ones (and there are more than this many), they are swept out in place.
    SWEEP_MIN = 64

    def __init__(self) -> None:
        self._now = 0
        self._heap: list[tuple[int, int, int, Timer]] = []
        self._stale = 0  # entries in _heap of re-armed or cancelled timers
        self._order = itertools.count()
        self.on_schedule: Callable[[int], None] | None = None
        self._timers: list[Timer] = []  # every timer made, in order: their saved identity

    def now(self) -> int:
        return self._now

    def timer(self, callback: Callable[[], None]) -> Timer:
        timer = Timer(self, callback)
        self._timers.append(timer)
        return timer

    # -- saved state: guest time and every armed timer ------------------------------------

    CLOCK_STATE_VERSION = 1

    def save_state(self) -> dict[str, Any]:
        """Guest time and the deadline of every armed timer, in the order they were armed
        (timers are named by their creation index: a machine of the same configuration
        makes the same timers in the same order)."""
        armed = {id(t): i for i, t in enumerate(self._timers)}
        live = sorted((order, deadline, armed[id(t)]) for deadline, order, seq, t in self._heap
                      if _live((deadline, order, seq, t)) and id(t) in armed)
        return {"version": self.CLOCK_STATE_VERSION, "now": self.now(),
                "timers": len(self._timers), "armed": [[i, d] for _, d, i in live]}

    def load_state(self, state: dict[str, Any]) -> None:
        check_state(state, "clock", (self.CLOCK_STATE_VERSION,))
        if state["timers"] != len(self._timers):
            raise StateError(f"clock: saved state has {state['timers']} timers, this machine "
                             f"{len(self._timers)} (a different configuration)")
        self._set_now(int(state["now"]))
        for timer in self._timers:
            timer.cancel()
        self._heap.clear()
        self._stale = 0
        for index, deadline in state["armed"]:
            if not 0 <= index < len(self._timers):
                raise StateError(f"clock: saved timer {index} does not exist")
            self._timers[index].arm(int(deadline))

    def _set_now(self, ns: int) -> None:
        self._now = ns

    def _schedule(self, timer: Timer) -> None:
        assert timer.deadline is not None
        heapq.heappush(self._heap, (timer.deadline, next(self._order), timer._seq, timer))
        if self.on_schedule is not None:
            self.on_schedule(timer.deadline)

    def _dropped(self) -> None:
        """An armed timer was re-armed or cancelled: its entry is stale now."""
        self._stale += 1
        if self._stale > self.SWEEP_MIN and 2 * self._stale > len(self._heap):
            # In place: run_due may be iterating this very list (a callback re-arms).
            self._heap[:] = [entry for entry in self._heap if _live(entry)]
            heapq.heapify(self._heap)
            self._stale = 0

    def next_deadline(self) -> int | None:
        heap = self._heap
        while heap:
            if _live(heap[0]):
                return heap[0][0]
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def run_due(self) -> int:
        """Fire every timer whose deadline has passed; return how many fired."""
        fired = 0
        now = self.now()
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not _live(entry):
                self._stale -= 1
                continue
            timer = entry[3]
            timer.deadline = None
            timer.callback()
            fired += 1
        return fired

    def advance(self, ns: int, max_fired: int | None = None) -> int:
        """Manual clock only: move time forward, firing timers in order; return how many
        fired.  With ``max_fired``, once that many have fired the rest of the way is one
        jump: what is due at the end fires then, late, as on a host that fell behind
        (a periodic timer of a microsecond would otherwise fire 10,000 times in 10 ms)."""
        target = self._now + ns
        fired = 0
        while max_fired is None or fired < max_fired:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            self._now = max(self._now, deadline)
            fired += self.run_due()
        self._now = target
        if max_fired is not None and fired >= max_fired:
            fired += self.run_due()
        return fired


def _live(entry: tuple[int, int, int, Timer]) -> bool:
    """Is this heap entry the timer's current arming (not re-armed or cancelled since)?"""
    deadline, _, seq, timer = entry
    return timer._seq == seq and timer.deadline == deadline


class PhysicalMemory(Protocol):
    """Guest physical memory as a bus master (DMA engine) sees it.

    ``read`` returns exactly ``n`` bytes from physical address ``paddr``;
    ``write`` stores ``data`` there.  Both raise :class:`ValueError` for an
    address range they cannot serve: the DMA engine then reports a bus error.
    The machine's implementation also tells the MMU about the frames a
    ``write`` touched, as it does for any other store that bypasses the CPU.
    """

    def read(self, paddr: int, n: int) -> bytes: ...

    def write(self, paddr: int, data: bytes) -> None: ...
