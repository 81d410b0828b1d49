"""QEMU's debug ports: isa-debug-exit (0xF4), debugcon (0xE9) and the POST code port (0x80);
qemu_lite's firmware event port (0x5F4)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qemu_lite.devices.base import Device, check_state

log = logging.getLogger(__name__)


class IsaDebugExit(Device):
    """A write of ``v`` ends the run with process exit status ``(v << 1) | 1``, as QEMU does."""

    name = "isa-debug-exit"

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._on_exit((value << 1) | 1)


class DebugCon(Device):
    """Bochs/QEMU debug console: bytes written go to ``output``; reads return 0xE9."""

    name = "debugcon"

    def __init__(self, output: Callable[[bytes], None] | None = None) -> None:
        self.output = output

    def io_read(self, offset: int, size: int) -> int:
        return 0xE9

    def io_write(self, offset: int, size: int, value: int) -> None:
        if self.output is not None:
            self.output(bytes([value & 0xFF]))


class PostCode(Device):
    """Port 0x80: remembers the last POST code; writes double as an I/O delay."""

    name = "post"

    def __init__(self) -> None:
        self.last = 0

    def reset(self) -> None:
        self.last = 0

    def save_state(self) -> dict[str, Any]:
        return {"version": self.STATE_VERSION, "last": self.last}

    def load_state(self, state: dict[str, Any]) -> None:
        check_state(state, self.name, (self.STATE_VERSION,))
        self.last = int(state["last"]) & 0xFF

    def io_read(self, offset: int, size: int) -> int:
        return self.last

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.last = value & 0xFF
        log.debug("POST code %#04x", self.last)


FW_EVENT_MAGIC = 0x514C0000  # "QL" in the high word
FW_EVENT_NO_BOOT = 1         # INT 18h: the BIOS found nothing to boot


class FirmwareEvents(Device):
    """qemu_lite's firmware event port (write-only): our BIOS reports what only it knows.

    Only a 32-bit write of ``FW_EVENT_MAGIC | event`` counts, so guest code that
    happens to touch the port does not fake an event; other writes are ignored."""

    name = "fw-events"

    def __init__(self, on_event: Callable[[int], None]) -> None:
        self._on_event = on_event

    def io_read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4 and value & 0xFFFF0000 == FW_EVENT_MAGIC:
            self._on_event(value & 0xFFFF)
        else:
            log.debug("ignored write of %#x (%d bytes) to the firmware event port", value, size)
