"""System control port A (port 0x92, PS/2 "fast A20 and reset").

Bit 1 gates address line 20; a 0 -> 1 transition of bit 0 resets the CPU.
The other bits (3 = CMOS lock, 6-7 = disk activity light) are only latched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Device

PORT92_RESET = 0x01  # alternate hot reset (write 1 to pulse)
PORT92_A20 = 0x02  # alternate gate A20


class SystemControlPortA(Device):
    """Port 0x92: ``set_a20(enabled)`` is called on every write, ``on_reset()``
    on a 0 -> 1 transition of bit 0."""

    name = "port92"

    def __init__(self, set_a20: Callable[[bool], None] | None = None,
                 on_reset: Callable[[], None] | None = None) -> None:
        self._set_a20 = set_a20
        self._on_reset = on_reset
        self.value = 0x00  # power-on value

    def reset(self) -> None:
        """A system reset clears only the reset bit; the A20 latch survives (as QEMU)."""
        self.value &= ~PORT92_RESET

    @property
    def a20(self) -> bool:
        return bool(self.value & PORT92_A20)

    def io_read(self, offset: int, size: int) -> int:
        return self.value

    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        old = self.value
        self.value = value
        if self._set_a20 is not None:
            self._set_a20(bool(value & PORT92_A20))
        if value & PORT92_RESET and not old & PORT92_RESET:
            if self._on_reset is not None:
                self._on_reset()
            self.value &= ~PORT92_RESET  # the pulse has been taken

    def save_state(self) -> dict[str, Any]:
        return {"version": 1, "value": self.value}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError("unsupported port92 state")
        self.value = int(state["value"]) & 0xFF
