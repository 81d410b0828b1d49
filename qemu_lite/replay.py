"""Serial input from a file, replayed at points fixed by guest time.

Input from a terminal or socket arrives whenever the host delivers it, so a
guest that reads it does not repeat.  :class:`SerialReplay` instead offers a
file's bytes to a UART on a guest-time timer: one character per character
time at the UART's programmed rate, only while the guest has the receive
interrupt enabled (IER.ERBFI, as Linux's tty layer sets it when a program
opens the port) and the receiver has room, so nothing is lost to a FIFO reset
or an overrun.  Under ``--deterministic`` every byte therefore arrives at the
same guest instruction on every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qemu_lite.devices.base import Clock, StateError, check_state
from qemu_lite.devices.uart16550 import IER_ERBFI, Uart16550

if TYPE_CHECKING:
    from qemu_lite.machine import Machine

IDLE_POLL_NS = 1_000_000  # while the guest is not receiving, look again every 1 ms


class SerialReplay:
    """Feeds ``data`` to ``uart``'s receive line, driven by ``clock``'s timers."""

    def __init__(self, clock: Clock, uart: Uart16550, data: bytes) -> None:
        self._clock = clock
        self._uart = uart
        self._data = bytes(data)
        self.position = 0
        self._timer = clock.timer(self._tick)
        if self._data:
            self._timer.arm(clock.now() + IDLE_POLL_NS)

    def reset(self) -> None:
        """The file is fed from where it is: a guest reset does not rewind the input."""

    def save_state(self) -> dict[str, Any]:
        return {"version": 1, "position": self.position, "length": len(self._data)}

    def load_state(self, state: dict[str, Any]) -> None:
        check_state(state, "serial input", (1,))
        if state["length"] != len(self._data) or not 0 <= state["position"] <= len(self._data):
            raise StateError("serial input: the saved state was replaying another file")
        self.position = int(state["position"])

    @property
    def done(self) -> bool:
        return self.position >= len(self._data)

    def _tick(self) -> None:
        uart = self._uart
        if uart.ier & IER_ERBFI and uart.rx_room > 0:
            uart.receive(self._data[self.position:self.position + 1])
            self.position += 1
            delay = uart.char_time_ns()
        else:
            delay = IDLE_POLL_NS
        if not self.done:
            self._timer.arm(self._clock.now() + delay)


def replay_file(machine: Machine, path: str) -> SerialReplay:
    """Replay the file at ``path`` into COM1 of ``machine``."""
    with open(path, "rb") as f:
        data = f.read()
    replay = SerialReplay(machine.clock, machine.board.com1, data)
    machine.add_state("serial-input", replay)
    return replay
