"""i8042 keyboard controller with its PS/2 keyboard and mouse."""

from __future__ import annotations

import pytest

from qemu_lite.devices.base import IrqLine, RecordingIrqSink
from qemu_lite.devices.i8042 import (
    I8042,
    MODE_AUX_INT,
    MODE_KBD_INT,
    MODE_SYS,
    MODE_XLATE,
    STAT_AUX_OBF,
    STAT_CMD,
    STAT_OBF,
    STAT_SYS,
    break_code,
    make_code,
    text_to_set2,
    translate_set2_to_set1,
)


class Board:
    def __init__(self) -> None:
        self.sink = RecordingIrqSink()
        self.kbd_irq = IrqLine(self.sink, 1)
        self.aux_irq = IrqLine(self.sink, 12)
        self.resets = 0
        self.a20: list[bool] = []
        self.ctrl = I8042(self.kbd_irq, self.aux_irq, on_reset=self._reset,
                          set_a20=self.a20.append)

    def _reset(self) -> None:
        self.resets += 1

    def status(self) -> int:
        return self.ctrl.command_port.io_read(0, 1)

    def command(self, value: int, data: int | None = None) -> None:
        self.ctrl.command_port.io_write(0, 1, value)
        if data is not None:
            self.ctrl.data_port.io_write(0, 1, data)

    def send(self, value: int) -> None:
        self.ctrl.data_port.io_write(0, 1, value)

    def read(self) -> int:
        assert self.status() & STAT_OBF
        return self.ctrl.data_port.io_read(0, 1)

    def drain(self) -> list[int]:
        out = []
        while self.status() & STAT_OBF:
            out.append(self.ctrl.data_port.io_read(0, 1))
        return out


def test_power_on_status() -> None:
    b = Board()
    assert b.status() == 0x18  # A2 (command) and not inhibited; no SYS until the self test
    b.command(0x20)
    assert b.read() == MODE_KBD_INT | MODE_AUX_INT


def test_self_test_and_interface_tests() -> None:
    b = Board()
    b.command(0xAA)
    assert b.read() == 0x55
    assert b.status() & STAT_SYS
    b.command(0xAB)
    assert b.read() == 0x00
    b.command(0xA9)
    assert b.read() == 0x00
    assert b.drain() == []


def test_command_byte_write_and_read() -> None:
    b = Board()
    b.command(0x60, MODE_XLATE | MODE_SYS | MODE_KBD_INT)
    assert not b.status() & STAT_CMD  # last write went to the data port
    b.command(0x20)
    assert b.status() & STAT_CMD
    assert b.read() == 0x45
    assert b.status() & STAT_SYS  # command byte bit 2 sets the system flag


def test_disable_enable_commands_change_command_byte() -> None:
    b = Board()
    b.command(0xAD)
    b.command(0xA7)
    b.command(0x20)
    assert b.read() == 0x33
    b.command(0xAE)
    b.command(0xA8)
    b.command(0x20)
    assert b.read() == 0x03


def test_keyboard_reset_and_identify() -> None:
    b = Board()
    b.send(0xFF)
    assert b.drain() == [0xFA, 0xAA]
    b.send(0xF2)
    assert b.drain() == [0xFA, 0xAB, 0x83]
    b.command(0x60, MODE_XLATE | MODE_KBD_INT)
    b.send(0xF2)
    assert b.drain() == [0xFA, 0xAB, 0x41]  # the ID byte goes through translation too


def test_keyboard_commands_with_arguments() -> None:
    b = Board()
    b.send(0xED)
    b.send(0x07)
    assert b.drain() == [0xFA, 0xFA]
    assert b.ctrl.keyboard.leds == 7
    b.send(0xF3)
    b.send(0x20)
    assert b.drain() == [0xFA, 0xFA]
    assert b.ctrl.keyboard.typematic == 0x20
    b.send(0xF0)
    b.send(0x00)
    assert b.drain() == [0xFA, 0xFA, 0x02]  # ACK for F0, ACK for the argument, the set
    b.send(0xEE)
    assert b.drain() == [0xEE]
    b.send(0x42)
    assert b.drain() == [0xFE]
    b.send(0xED)
    b.send(0xF2)  # a command instead of the argument: the LED command is dropped
    assert b.drain() == [0xFA, 0xFA, 0xAB, 0x83]


def test_scanning_disable_drops_keys() -> None:
    b = Board()
    b.send(0xF5)
    assert b.drain() == [0xFA]
    b.ctrl.key_input(make_code("a"))
    assert b.drain() == []
    b.send(0xF4)
    b.ctrl.key_input(make_code("a"))
    assert b.drain() == [0xFA, 0x1C]


def test_irq1_only_when_enabled_and_full() -> None:
    b = Board()
    b.command(0x60, 0x00)  # interrupts off
    b.ctrl.key_input(make_code("a"))
    assert b.status() & STAT_OBF
    assert not b.kbd_irq.level
    b.command(0x60, MODE_KBD_INT)  # enabling with a full buffer raises the line
    assert b.kbd_irq.level
    assert b.read() == 0x1C
    assert not b.kbd_irq.level
    assert b.sink.history == [(1, True), (1, False)]
    assert not b.aux_irq.level


def test_read_empties_buffer_and_next_byte_follows() -> None:
    b = Board()
    b.ctrl.key_input(make_code("a") + break_code("a"))
    assert b.read() == 0x1C
    assert b.kbd_irq.level  # the next byte moved in
    assert b.read() == 0xF0
    assert b.read() == 0x1C
    assert not b.status() & STAT_OBF
    assert not b.kbd_irq.level
    assert b.ctrl.data_port.io_read(0, 1) == 0x1C  # an empty buffer reads stale


def test_disabled_keyboard_interface_holds_bytes() -> None:
    b = Board()
    b.command(0xAD)
    b.ctrl.key_input(make_code("b"))
    assert b.drain() == []
    b.command(0xAE)
    assert b.drain() == [0x32]


def test_type_text_translated_to_set1() -> None:
    b = Board()
    b.command(0x60, MODE_XLATE | MODE_SYS | MODE_KBD_INT)
    b.ctrl.type_text("Hi\n")
    assert b.drain() == [0x2A, 0x23, 0xA3, 0xAA,  # shift, H, release H, release shift
                         0x17, 0x97,  # i
                         0x1C, 0x9C]  # Enter


def test_type_text_untranslated_is_set2() -> None:
    b = Board()
    b.ctrl.type_text("a!")
    assert b.drain() == [0x1C, 0xF0, 0x1C, 0x12, 0x16, 0xF0, 0x16, 0xF0, 0x12]


def test_extended_keys_translate_with_e0_prefix() -> None:
    b = Board()
    b.command(0x60, MODE_XLATE | MODE_KBD_INT)
    b.ctrl.key_input(make_code("up") + break_code("up") + make_code("left"))
    assert b.drain() == [0xE0, 0x48, 0xE0, 0xC8, 0xE0, 0x4B]


@pytest.mark.parametrize(
    ("text", "set1"),
    [("a", [0x1E, 0x9E]), ("z", [0x2C, 0xAC]), ("0", [0x0B, 0x8B]), (" ", [0x39, 0xB9]),
     ("\b", [0x0E, 0x8E]), ("\t", [0x0F, 0x8F]), ("\x1b", [0x01, 0x81]),
     ("?", [0x2A, 0x35, 0xB5, 0xAA])],
)
def test_set1_codes_of_common_keys(text: str, set1: list[int]) -> None:
    assert list(translate_set2_to_set1(text_to_set2(text))) == set1


def test_untypable_character() -> None:
    with pytest.raises(ValueError):
        text_to_set2("é")


def test_keyboard_in_set1_sends_set1() -> None:
    b = Board()
    b.send(0xF0)
    b.send(0x01)
    assert b.drain() == [0xFA, 0xFA]
    b.ctrl.key_input(make_code("a") + break_code("a"))
    assert b.drain() == [0x1E, 0x9E]


def test_pulse_reset_line() -> None:
    b = Board()
    b.command(0xFE)
    assert b.resets == 1
    b.command(0xFF)  # no line pulsed
    b.command(0xFD)  # bit 1 is not the reset line
    assert b.resets == 1
    b.command(0xF0)
    assert b.resets == 2


def test_output_port_a20_and_reset() -> None:
    b = Board()
    b.command(0xD0)
    assert b.read() == 0xCF
    b.command(0xD1, 0xDD)  # A20 off, reset line high
    assert b.a20 == [False]
    assert b.resets == 0
    b.command(0xD1, 0xDF)
    assert b.a20 == [False, True]
    b.command(0xD0)
    assert b.read() & 0x02
    b.command(0xD1, 0xDE)  # bit 0 low: reset
    assert b.resets == 1


def test_a20_commands_dd_df() -> None:
    b = Board()
    b.command(0xDD)
    b.command(0xD0)
    assert not b.read() & 0x02
    b.command(0xDF)
    assert b.a20 == [False, True]


def test_read_input_port() -> None:
    b = Board()
    b.command(0xC0)
    assert b.read() == 0x80


def test_write_kbd_and_aux_output_buffer() -> None:
    b = Board()
    b.command(0xD2, 0x5A)
    assert b.kbd_irq.level and not b.status() & STAT_AUX_OBF
    assert b.read() == 0x5A
    b.command(0xD3, 0xA5)
    assert b.aux_irq.level and not b.kbd_irq.level
    assert b.status() & STAT_AUX_OBF
    assert b.read() == 0xA5
    assert not b.aux_irq.level


def test_mouse_commands_on_aux() -> None:
    b = Board()
    b.command(0xD4, 0xFF)
    assert b.status() & (STAT_OBF | STAT_AUX_OBF) == STAT_OBF | STAT_AUX_OBF
    assert b.aux_irq.level and not b.kbd_irq.level
    assert b.drain() == [0xFA, 0xAA, 0x00]
    assert (12, True) in b.sink.history
    assert not b.aux_irq.level
    b.command(0xD4, 0xF2)
    assert b.drain() == [0xFA, 0x00]
    b.command(0xD4, 0xF3)
    b.command(0xD4, 40)
    assert b.drain() == [0xFA, 0xFA]
    assert b.ctrl.mouse.sample_rate == 40
    b.command(0xD4, 0xE9)
    assert b.drain() == [0xFA, 0x00, 0x02, 40]


def test_mouse_movement_packets() -> None:
    b = Board()
    b.ctrl.mouse_input(5, 5)
    assert b.drain() == []  # reporting is off after reset
    b.command(0xD4, 0xF4)
    assert b.drain() == [0xFA]
    b.ctrl.mouse_input(10, -3, buttons=1)
    assert b.status() & STAT_AUX_OBF
    assert b.drain() == [0x08 | 0x20 | 0x01, 10, 0xFD]


def test_aux_irq_gated_by_command_byte() -> None:
    b = Board()
    b.command(0x60, MODE_KBD_INT)  # aux interrupt off
    b.command(0xD4, 0xF2)
    assert b.status() & STAT_AUX_OBF
    assert not b.aux_irq.level
    assert b.drain() == [0xFA, 0x00]


def test_replies_come_before_typed_keys() -> None:
    b = Board()
    b.ctrl.type_text("ab")
    assert b.read() == 0x1C
    b.send(0xF2)
    assert b.drain()[:4] == [0xF0, 0xFA, 0xAB, 0x83]  # the byte already in the buffer first


def test_reset_and_state_roundtrip() -> None:
    b = Board()
    b.command(0x60, MODE_XLATE | MODE_KBD_INT)
    b.ctrl.type_text("ok")
    first = b.read()
    state = b.ctrl.save_state()
    other = Board()
    other.ctrl.load_state(state)
    assert other.kbd_irq.level
    assert [first] + other.drain() == [0x18, 0x98, 0x25, 0xA5]
    other.ctrl.reset()
    assert other.status() == 0x18
    assert not other.kbd_irq.level
