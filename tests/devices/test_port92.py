"""Port 0x92: fast A20 gate and fast reset."""

from __future__ import annotations

from qemu_lite.devices.port92 import SystemControlPortA


class Recorder:
    def __init__(self) -> None:
        self.a20: list[bool] = []
        self.resets = 0

    def set_a20(self, enabled: bool) -> None:
        self.a20.append(enabled)

    def on_reset(self) -> None:
        self.resets += 1


def make() -> tuple[SystemControlPortA, Recorder]:
    rec = Recorder()
    return SystemControlPortA(set_a20=rec.set_a20, on_reset=rec.on_reset), rec


def test_a20_set_and_clear_read_back() -> None:
    port, rec = make()
    assert port.io_read(0, 1) == 0x00
    port.io_write(0, 1, 0x02)
    assert port.io_read(0, 1) == 0x02
    assert port.a20
    port.io_write(0, 1, 0x00)
    assert port.io_read(0, 1) == 0x00
    assert not port.a20
    assert rec.a20 == [True, False]
    assert rec.resets == 0


def test_reset_pulse_on_rising_bit_0() -> None:
    port, rec = make()
    port.io_write(0, 1, 0x03)
    assert rec.resets == 1
    assert rec.a20 == [True]
    assert port.io_read(0, 1) == 0x02  # bit 0 reads clear once the pulse was taken
    port.io_write(0, 1, 0x03)  # a new 0 -> 1 transition
    assert rec.resets == 2


def test_reset_keeps_a20_latch_but_clears_reset_bit() -> None:
    port = SystemControlPortA()  # works without callbacks too
    port.io_write(0, 1, 0x03)
    assert port.io_read(0, 1) == 0x02
    port.load_state({"version": 1, "value": 0x03})  # saved mid-pulse
    port.reset()
    assert port.io_read(0, 1) == 0x02


def test_save_load() -> None:
    port, _ = make()
    port.io_write(0, 1, 0x0A)
    other = SystemControlPortA()
    other.load_state(port.save_state())
    assert other.io_read(0, 1) == 0x0A
