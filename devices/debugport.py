"""QEMU's debug ports: isa-debug-exit (0xF4), debugcon (0xE9) and the POST code port (0x80)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from qemu_lite.devices.base import Device

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

    def io_read(self, offset: int, size: int) -> int:
        return self.last

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.last = value & 0xFF
        log.debug("POST code %#04x", self.last)
