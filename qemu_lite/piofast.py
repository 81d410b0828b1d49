"""The C fast path for IDE PIO data transfers.

``rep insw`` on the data port makes one port access per word.  Between the
channel's Python register accesses, mmu_core's PIO window streams the
channel's buffer in C; only the access that completes a block (and every
other register access) reaches the device model, which first learns how
far the window got.  The device itself knows nothing of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qemu_lite.devices.base import Device
from qemu_lite.devices.ide import PIO_NONE, PIO_OUT, ST_DRQ, IdeChannel

if TYPE_CHECKING:
    from mmu_core import Core


class PioWindowedBlock(Device):
    """Wraps one of an :class:`IdeChannel`'s port blocks, keeping the C window in sync."""

    def __init__(self, core: Core, index: int, channel: IdeChannel, block: Device,
                 data_port: int) -> None:
        self._core = core
        self._index = index
        self._channel = channel
        self._block = block
        self._data_port = data_port
        self.name = getattr(block, "name", "ide")

    def _sync(self) -> None:
        pos = self._core.pio_window_close(self._index)
        if pos >= 0:
            self._channel.pio_pos = pos

    def _reopen(self) -> None:
        ch = self._channel
        if ch.pio_dir != PIO_NONE and ch.selected.status & ST_DRQ and ch.pio_pos < ch.pio_end:
            self._core.pio_window_open(self._index, self._data_port, ch.pio_buffer, ch.pio_pos,
                                       ch.pio_end, ch.pio_dir == PIO_OUT)

    def reset(self) -> None:
        self._sync()
        self._block.reset()

    def io_read(self, offset: int, size: int) -> int:
        self._sync()
        value = self._block.io_read(offset, size)
        self._reopen()
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._sync()
        self._block.io_write(offset, size, value)
        self._reopen()


class PioChannel:
    """An :class:`IdeChannel` as its board slot: reset and saved state see the transfer
    position the C window reached, and a loaded transfer streams in C again."""

    def __init__(self, core: Core, index: int, channel: IdeChannel, data_port: int) -> None:
        self._window = PioWindowedBlock(core, index, channel, channel.command_block, data_port)
        self.channel = channel

    def reset(self) -> None:
        self._window._sync()
        self.channel.reset()

    def save_state(self) -> dict[str, Any]:
        self._window._sync()
        state = self.channel.save_state()
        self._window._reopen()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self._window._sync()
        self.channel.load_state(state)
        self._window._reopen()
