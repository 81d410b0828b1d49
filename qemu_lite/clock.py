"""Guest time and the thread that stops the vCPU when a timer is due."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from qemu_lite.devices.base import Clock


class HostClock(Clock):
    """Real-time guest clock: guest nanoseconds follow the host's monotonic clock."""

    def __init__(self) -> None:
        super().__init__()
        self._t0 = time.monotonic_ns()

    def now(self) -> int:
        return time.monotonic_ns() - self._t0

    def host_deadline(self, guest_ns: int) -> float:
        """The host ``time.monotonic()`` at which guest time reaches ``guest_ns``."""
        return (self._t0 + guest_ns) / 1e9


class Kicker:
    """A daemon thread that calls ``kick()`` when the next timer or the wall deadline is due.

    ``emu_stop`` from another thread is lost if the engine is not running at
    that moment, so a due deadline is kicked again every millisecond until
    the run loop has serviced it.
    """

    RETRY = 0.001

    def __init__(self, clock: HostClock, kick: Callable[[], None]) -> None:
        self._clock = clock
        self._kick = kick
        self._cond = threading.Condition()
        self._wall_deadline: float | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        clock.on_schedule = lambda _deadline: self.poke()

    def start(self, wall_deadline: float | None) -> None:
        with self._cond:
            self._wall_deadline = wall_deadline
            self._running = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="qemu-lite-kicker",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()

    def poke(self) -> None:
        """A timer was armed: recompute the next wake-up."""
        with self._cond:
            self._cond.notify()

    def _next_due(self) -> float | None:
        due = self._wall_deadline
        guest = self._clock.next_deadline()
        if guest is not None:
            t = self._clock.host_deadline(guest)
            due = t if due is None else min(due, t)
        return due

    def _loop(self) -> None:
        with self._cond:
            while True:
                if not self._running:
                    self._cond.wait()
                    continue
                due = self._next_due()
                now = time.monotonic()
                if due is None:
                    self._cond.wait()
                elif due > now:
                    self._cond.wait(due - now)
                else:
                    self._kick()
                    self._cond.wait(self.RETRY)
