"""Intel 8042 keyboard controller with a PS/2 keyboard and a PS/2 mouse.

Port 0x60 (:attr:`I8042.data_port`) reads the output buffer and writes data to
the keyboard or to the argument of a pending controller command; port 0x64
(:attr:`I8042.command_port`) reads the status register and writes controller
commands.  The output buffer holds one byte; the controller refills it from its
own replies first, then from the keyboard, then from the mouse.  Keyboard
bytes pass through the set 2 -> set 1 translation when command-byte bit 6 is
set, as on the AT.  IRQ 1 follows "buffer full of a keyboard byte" and IRQ 12
"buffer full of a mouse byte", each gated by its enable bit in the command
byte; reading port 0x60 empties the buffer.

Commands are executed at once, so IBF always reads 0.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .base import Device, IrqLine

# Controller commands (port 0x64)
# Command replies a guest has not read yet, per PS/2 device and in the controller: QEMU's
# PS2_QUEUE_SIZE.  Without a bound, a guest writing commands it never reads the answers
# of grows host memory without end; past it, new replies are dropped (as QEMU drops them).
REPLY_QUEUE_LIMIT = 16

CCMD_READ_MODE = 0x20  # read the command byte
CCMD_WRITE_MODE = 0x60  # write the command byte (next data byte)
CCMD_AUX_DISABLE = 0xA7
CCMD_AUX_ENABLE = 0xA8
CCMD_AUX_TEST = 0xA9  # aux interface test: 0x00 = no error
CCMD_SELF_TEST = 0xAA  # controller self test: 0x55 = passed
CCMD_KBD_TEST = 0xAB  # keyboard interface test: 0x00 = no error
CCMD_KBD_DISABLE = 0xAD
CCMD_KBD_ENABLE = 0xAE
CCMD_READ_INPORT = 0xC0
CCMD_READ_OUTPORT = 0xD0
CCMD_WRITE_OUTPORT = 0xD1
CCMD_WRITE_KBD_OBUF = 0xD2  # next data byte appears as if sent by the keyboard
CCMD_WRITE_AUX_OBUF = 0xD3  # next data byte appears as if sent by the mouse
CCMD_WRITE_AUX = 0xD4  # next data byte goes to the mouse
CCMD_DISABLE_A20 = 0xDD  # (HP Vectra style, used by some BIOSes)
CCMD_ENABLE_A20 = 0xDF
CCMD_PULSE = 0xF0  # 0xF0-0xFF: pulse output port bits 3-0 whose command bit is 0

# Status register (port 0x64 read)
STAT_OBF = 0x01  # output buffer full
STAT_IBF = 0x02  # input buffer full
STAT_SYS = 0x04  # system flag: self test passed
STAT_CMD = 0x08  # A2: last write was to port 0x64
STAT_UNLOCKED = 0x10  # keyboard not inhibited by the key lock
STAT_AUX_OBF = 0x20  # the output buffer holds mouse data
STAT_TIMEOUT = 0x40
STAT_PARITY = 0x80

# Command byte
MODE_KBD_INT = 0x01
MODE_AUX_INT = 0x02
MODE_SYS = 0x04
MODE_NO_KEYLOCK = 0x08
MODE_DISABLE_KBD = 0x10
MODE_DISABLE_AUX = 0x20
MODE_XLATE = 0x40  # translate keyboard scan codes to set 1

# Output port
OUT_RESET = 0x01  # 0 = hold the CPU in reset
OUT_A20 = 0x02
OUT_KBD_OBF = 0x10  # the IRQ 1 output
OUT_AUX_OBF = 0x20  # the IRQ 12 output
OUT_ONES = 0xCC  # unused bits and idle keyboard clock/data lines read 1

INPORT_VALUE = 0x80  # bit 7: keyboard not inhibited (as QEMU)

# PS/2 keyboard commands and replies
KBD_CMD_SET_LEDS = 0xED
KBD_CMD_ECHO = 0xEE
KBD_CMD_SCANCODE = 0xF0
KBD_CMD_GET_ID = 0xF2
KBD_CMD_SET_RATE = 0xF3
KBD_CMD_ENABLE = 0xF4
KBD_CMD_RESET_DISABLE = 0xF5
KBD_CMD_RESET_ENABLE = 0xF6
KBD_CMD_RESEND = 0xFE
KBD_CMD_RESET = 0xFF
KBD_REPLY_POR = 0xAA  # power-on self test passed
KBD_REPLY_ID = (0xAB, 0x83)  # MF2 keyboard
KBD_REPLY_ACK = 0xFA
KBD_REPLY_RESEND = 0xFE
KBD_DEFAULT_TYPEMATIC = 0x2B  # 10.9 characters/s after 500 ms

# PS/2 mouse commands
AUX_SET_SCALE11 = 0xE6
AUX_SET_SCALE21 = 0xE7
AUX_SET_RES = 0xE8
AUX_GET_STATUS = 0xE9
AUX_SET_STREAM = 0xEA
AUX_POLL = 0xEB
AUX_RESET_WRAP = 0xEC
AUX_SET_WRAP = 0xEE
AUX_SET_REMOTE = 0xF0
AUX_GET_TYPE = 0xF2
AUX_SET_SAMPLE = 0xF3
AUX_ENABLE_DEV = 0xF4
AUX_DISABLE_DEV = 0xF5
AUX_SET_DEFAULT = 0xF6
AUX_RESET = 0xFF
AUX_ID = 0x00  # standard PS/2 mouse

# The 8042's set 2 -> set 1 translation ROM (IBM AT): row n holds codes 16n..16n+15.
# Codes 0x80-0xFF pass unchanged except 0x83 (F7) and 0x84 (Alt+SysRq).
XLATE_TABLE: tuple[int, ...] = (
    0xFF, 0x43, 0x41, 0x3F, 0x3D, 0x3B, 0x3C, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3E, 0x0F, 0x29, 0x59,
    0x65, 0x38, 0x2A, 0x70, 0x1D, 0x10, 0x02, 0x5A, 0x66, 0x71, 0x2C, 0x1F, 0x1E, 0x11, 0x03, 0x5B,
    0x67, 0x2E, 0x2D, 0x20, 0x12, 0x05, 0x04, 0x5C, 0x68, 0x39, 0x2F, 0x21, 0x14, 0x13, 0x06, 0x5D,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5E, 0x6A, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5F,
    0x6B, 0x33, 0x25, 0x17, 0x18, 0x0B, 0x0A, 0x60, 0x6C, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0C, 0x61,
    0x6D, 0x73, 0x28, 0x74, 0x1A, 0x0D, 0x62, 0x6E, 0x3A, 0x36, 0x1C, 0x1B, 0x75, 0x2B, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7A, 0x0E, 0x7B, 0x7C, 0x4F, 0x7D, 0x4B, 0x47, 0x7E, 0x7F, 0x6F,
    0x52, 0x53, 0x50, 0x4C, 0x4D, 0x48, 0x01, 0x45, 0x57, 0x4E, 0x51, 0x4A, 0x37, 0x49, 0x46, 0x54,
) + (0x80, 0x81, 0x82, 0x41, 0x54) + tuple(range(0x85, 0x100))

SET2_BREAK = 0xF0
SET2_EXTENDED = 0xE0

# Set 2 make codes of a US keyboard (extended keys start with 0xE0).
SET2_KEYS: dict[str, bytes] = {
    **{c: bytes([code]) for c, code in zip(
        "abcdefghijklmnopqrstuvwxyz",
        (0x1C, 0x32, 0x21, 0x23, 0x24, 0x2B, 0x34, 0x33, 0x43, 0x3B, 0x42, 0x4B, 0x3A,
         0x31, 0x44, 0x4D, 0x15, 0x2D, 0x1B, 0x2C, 0x3C, 0x2A, 0x1D, 0x22, 0x35, 0x1A),
        strict=True)},
    **{c: bytes([code]) for c, code in zip(
        "1234567890", (0x16, 0x1E, 0x26, 0x25, 0x2E, 0x36, 0x3D, 0x3E, 0x46, 0x45), strict=True)},
    "`": b"\x0e", "-": b"\x4e", "=": b"\x55", "[": b"\x54", "]": b"\x5b", "\\": b"\x5d",
    ";": b"\x4c", "'": b"\x52", ",": b"\x41", ".": b"\x49", "/": b"\x4a",
    "space": b"\x29", "enter": b"\x5a", "tab": b"\x0d", "backspace": b"\x66", "esc": b"\x76",
    "lshift": b"\x12", "rshift": b"\x59", "lctrl": b"\x14", "lalt": b"\x11", "capslock": b"\x58",
    "f1": b"\x05", "f2": b"\x06", "f3": b"\x04", "f4": b"\x0c", "f5": b"\x03", "f6": b"\x0b",
    "f7": b"\x83", "f8": b"\x0a", "f9": b"\x01", "f10": b"\x09", "f11": b"\x78", "f12": b"\x07",
    "rctrl": b"\xe0\x14", "ralt": b"\xe0\x11",
    "up": b"\xe0\x75", "down": b"\xe0\x72", "left": b"\xe0\x6b", "right": b"\xe0\x74",
    "home": b"\xe0\x6c", "end": b"\xe0\x69", "pageup": b"\xe0\x7d", "pagedown": b"\xe0\x7a",
    "insert": b"\xe0\x70", "delete": b"\xe0\x71",
}

_SHIFTED = dict(zip('~!@#$%^&*()_+{}|:"<>?', "`1234567890-=[]\\;',./", strict=True))
_CONTROL_CHARS = {"\n": "enter", "\r": "enter", "\t": "tab", "\b": "backspace", "\x1b": "esc",
                  " ": "space"}


def make_code(key: str) -> bytes:
    """Set 2 make code of a key named in :data:`SET2_KEYS`."""
    return SET2_KEYS[key]


def break_code(key: str) -> bytes:
    """Set 2 break code: 0xF0 before the last byte of the make code."""
    make = SET2_KEYS[key]
    return make[:-1] + bytes([SET2_BREAK, make[-1]])


def text_to_set2(text: str) -> bytes:
    """Make/break pairs in set 2 that type ``text`` (ASCII) on a US keyboard."""
    out = bytearray()
    for ch in text:
        if ch in _CONTROL_CHARS:
            key, shift = _CONTROL_CHARS[ch], False
        elif ch in SET2_KEYS:  # lower-case letters, digits, unshifted symbols
            key, shift = ch, False
        elif "A" <= ch <= "Z":
            key, shift = ch.lower(), True
        elif ch in _SHIFTED:
            key, shift = _SHIFTED[ch], True
        else:
            raise ValueError(f"cannot type {ch!r} on a US keyboard")
        if shift:
            out += make_code("lshift")
        out += make_code(key) + break_code(key)
        if shift:
            out += break_code("lshift")
    return bytes(out)


def translate_set2_to_set1(data: Iterable[int]) -> bytes:
    """Translate a complete set 2 byte stream to set 1, as the 8042 does."""
    out = bytearray()
    release = False
    for byte in data:
        if byte == SET2_BREAK:
            release = True
            continue
        out.append(XLATE_TABLE[byte] | (0x80 if release else 0))
        release = False
    return bytes(out)


class _PS2Device:
    """A PS/2 device: command replies are sent before pending input data."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self._notify = notify
        self.replies: deque[int] = deque()
        self.data: deque[int] = deque()
        self.last = KBD_REPLY_ACK  # last byte sent, for the resend command

    def has_output(self) -> bool:
        return bool(self.replies or self.data)

    def pop(self) -> int:
        byte = self.replies.popleft() if self.replies else self.data.popleft()
        self.last = byte
        return byte

    def _reply(self, *values: int) -> None:
        self.replies.extend(values[:REPLY_QUEUE_LIMIT - len(self.replies)])
        self._notify()

    def _send(self, values: Iterable[int]) -> None:
        self.data.extend(values)
        self._notify()


class PS2Keyboard(_PS2Device):
    """An MF2 keyboard.  Host input arrives in set 2; the keyboard sends set 1
    if the guest selected it, and set 2 for sets 2 and 3 (set 3 is not modelled)."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__(notify)
        self.reset()

    def reset(self) -> None:
        """Power-on: scanning enabled, scan code set 2, LEDs off, empty buffers."""
        self.replies.clear()
        self.data.clear()
        self.last = KBD_REPLY_ACK
        self._set_defaults()
        self.scanning = True
        self.leds = 0
        self._expect = 0  # command waiting for its argument byte

    def _set_defaults(self) -> None:
        self.scancode_set = 2
        self.typematic = KBD_DEFAULT_TYPEMATIC

    def key_input(self, scancodes: bytes) -> None:
        """Keys pressed or released on the host, as set 2 scan codes."""
        if not self.scanning:
            return
        if self.scancode_set == 1:
            scancodes = translate_set2_to_set1(scancodes)
        self._send(scancodes)

    def write(self, byte: int) -> None:
        """A byte sent by the controller."""
        if self._expect and byte < KBD_CMD_SET_LEDS:  # a command byte aborts the wait
            self._argument(self._expect, byte)
            return
        self._expect = 0
        if byte == KBD_CMD_RESET:
            self.reset()
            self._reply(KBD_REPLY_ACK, KBD_REPLY_POR)
        elif byte == KBD_CMD_RESEND:
            self._reply(self.last)
        elif byte == KBD_CMD_RESET_ENABLE:
            self._set_defaults()
            self.scanning = True
            self._reply(KBD_REPLY_ACK)
        elif byte == KBD_CMD_RESET_DISABLE:
            self._set_defaults()
            self.scanning = False
            self._reply(KBD_REPLY_ACK)
        elif byte == KBD_CMD_ENABLE:
            self.scanning = True
            self._reply(KBD_REPLY_ACK)
        elif byte == KBD_CMD_GET_ID:
            self._reply(KBD_REPLY_ACK, *KBD_REPLY_ID)
        elif byte in (KBD_CMD_SET_LEDS, KBD_CMD_SET_RATE, KBD_CMD_SCANCODE):
            self._expect = byte
            self._reply(KBD_REPLY_ACK)
        elif byte == KBD_CMD_ECHO:
            self._reply(KBD_CMD_ECHO)
        elif 0xF7 <= byte <= 0xFD:  # set 3 key-type commands: accepted, ignored
            self._reply(KBD_REPLY_ACK)
        else:
            self._reply(KBD_REPLY_RESEND)

    def _argument(self, command: int, byte: int) -> None:
        self._expect = 0
        if command == KBD_CMD_SET_LEDS:
            self.leds = byte & 0x07
            self._reply(KBD_REPLY_ACK)
        elif command == KBD_CMD_SET_RATE:
            self.typematic = byte & 0x7F
            self._reply(KBD_REPLY_ACK)
        elif byte == 0:  # KBD_CMD_SCANCODE: query
            self._reply(KBD_REPLY_ACK, self.scancode_set)
        elif byte <= 3:
            self.scancode_set = byte
            self._reply(KBD_REPLY_ACK)
        else:
            self._reply(KBD_REPLY_RESEND)

    def save_state(self) -> dict[str, Any]:
        return {"replies": list(self.replies), "data": list(self.data), "last": self.last,
                "scanning": self.scanning, "leds": self.leds, "set": self.scancode_set,
                "typematic": self.typematic, "expect": self._expect}

    def load_state(self, state: dict[str, Any]) -> None:
        self.replies = deque(state["replies"][:REPLY_QUEUE_LIMIT])
        self.data = deque(state["data"])
        self.last = state["last"]
        self.scanning = state["scanning"]
        self.leds = state["leds"]
        self.scancode_set = state["set"]
        self.typematic = state["typematic"]
        self._expect = state["expect"]


class PS2Mouse(_PS2Device):
    """A standard 3-button PS/2 mouse (ID 0x00) in stream or remote mode."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__(notify)
        self.reset()

    def reset(self) -> None:
        """Power-on: stream mode, reporting off, 100 samples/s, 4 counts/mm, 1:1."""
        self.replies.clear()
        self.data.clear()
        self.last = KBD_REPLY_ACK
        self._set_defaults()
        self.buttons = 0
        self._expect = 0

    def _set_defaults(self) -> None:
        self.reporting = False
        self.remote = False
        self.sample_rate = 100
        self.resolution = 2
        self.scaling21 = False

    def _packet(self, dx: int, dy: int) -> list[int]:
        """Standard 3-byte packet; dy > 0 is up."""
        head = 0x08 | (self.buttons & 0x07)
        if not -256 <= dx <= 255:
            head |= 0x40
            dx = max(-256, min(255, dx))
        if not -256 <= dy <= 255:
            head |= 0x80
            dy = max(-256, min(255, dy))
        if dx < 0:
            head |= 0x10
        if dy < 0:
            head |= 0x20
        return [head, dx & 0xFF, dy & 0xFF]

    def move(self, dx: int, dy: int, buttons: int = 0) -> None:
        """Host mouse motion; ``buttons`` bit 0 = left, 1 = right, 2 = middle."""
        self.buttons = buttons & 0x07
        if self.reporting and not self.remote:
            self._send(self._packet(dx, dy))

    def write(self, byte: int) -> None:
        """A byte sent through the controller's 0xD4 command."""
        if self._expect:
            command, self._expect = self._expect, 0
            if command == AUX_SET_SAMPLE:
                self.sample_rate = byte
            else:
                self.resolution = byte & 0x03
            self._reply(KBD_REPLY_ACK)
            return
        if byte == AUX_RESET:
            self.reset()
            self._reply(KBD_REPLY_ACK, KBD_REPLY_POR, AUX_ID)
        elif byte == AUX_GET_TYPE:
            self._reply(KBD_REPLY_ACK, AUX_ID)
        elif byte in (AUX_SET_SAMPLE, AUX_SET_RES):
            self._expect = byte
            self._reply(KBD_REPLY_ACK)
        elif byte == AUX_GET_STATUS:
            status = ((0x40 if self.remote else 0) | (0x20 if self.reporting else 0)
                      | (0x10 if self.scaling21 else 0) | (self.buttons & 1) << 2
                      | (self.buttons & 4) >> 1 | (self.buttons & 2) >> 1)
            self._reply(KBD_REPLY_ACK, status, self.resolution, self.sample_rate)
        elif byte == AUX_POLL:
            self._reply(KBD_REPLY_ACK, *self._packet(0, 0))
        elif byte == AUX_SET_DEFAULT:
            self._set_defaults()
            self._reply(KBD_REPLY_ACK)
        elif byte in (AUX_ENABLE_DEV, AUX_DISABLE_DEV):
            self.reporting = byte == AUX_ENABLE_DEV
            self._reply(KBD_REPLY_ACK)
        elif byte in (AUX_SET_STREAM, AUX_SET_REMOTE):
            self.remote = byte == AUX_SET_REMOTE
            self._reply(KBD_REPLY_ACK)
        elif byte in (AUX_SET_SCALE11, AUX_SET_SCALE21):
            self.scaling21 = byte == AUX_SET_SCALE21
            self._reply(KBD_REPLY_ACK)
        elif byte in (AUX_RESET_WRAP, AUX_SET_WRAP):  # wrap (echo) mode is not modelled
            self._reply(KBD_REPLY_ACK)
        elif byte == KBD_CMD_RESEND:
            self._reply(self.last)
        else:
            self._reply(KBD_REPLY_RESEND)

    def save_state(self) -> dict[str, Any]:
        return {"replies": list(self.replies), "data": list(self.data), "last": self.last,
                "reporting": self.reporting, "remote": self.remote, "rate": self.sample_rate,
                "resolution": self.resolution, "scaling21": self.scaling21,
                "buttons": self.buttons, "expect": self._expect}

    def load_state(self, state: dict[str, Any]) -> None:
        self.replies = deque(state["replies"][:REPLY_QUEUE_LIMIT])
        self.data = deque(state["data"])
        self.last = state["last"]
        self.reporting = state["reporting"]
        self.remote = state["remote"]
        self.sample_rate = state["rate"]
        self.resolution = state["resolution"]
        self.scaling21 = state["scaling21"]
        self.buttons = state["buttons"]
        self._expect = state["expect"]


class I8042DataPort(Device):
    """Port 0x60 of an :class:`I8042`."""

    name = "i8042-data"

    def __init__(self, ctrl: I8042) -> None:
        self._ctrl = ctrl

    def reset(self) -> None:
        self._ctrl.reset()

    def io_read(self, offset: int, size: int) -> int:
        return self._ctrl.read_data()

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._ctrl.write_data(value & 0xFF)


class I8042CommandPort(Device):
    """Port 0x64 of an :class:`I8042`."""

    name = "i8042-command"

    def __init__(self, ctrl: I8042) -> None:
        self._ctrl = ctrl

    def reset(self) -> None:
        self._ctrl.reset()

    def io_read(self, offset: int, size: int) -> int:
        return self._ctrl.status()

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._ctrl.write_command(value & 0xFF)


class I8042:
    """The keyboard controller; register ``data_port`` at 0x60 and ``command_port`` at 0x64.

    ``on_reset()`` is called when the guest pulses the CPU reset line and
    ``set_a20(enabled)`` when it writes the A20 bit of the output port.
    """

    def __init__(self, kbd_irq: IrqLine | None = None, aux_irq: IrqLine | None = None,
                 on_reset: Callable[[], None] | None = None,
                 set_a20: Callable[[bool], None] | None = None) -> None:
        self.kbd_irq = kbd_irq if kbd_irq is not None else IrqLine()
        self.aux_irq = aux_irq if aux_irq is not None else IrqLine()
        self._on_reset = on_reset
        self._set_a20 = set_a20
        self.replies: deque[tuple[int, bool]] = deque()  # controller output: (byte, is_aux)
        self.keyboard = PS2Keyboard(self._service)
        self.mouse = PS2Mouse(self._service)
        self.data_port = I8042DataPort(self)
        self.command_port = I8042CommandPort(self)
        self.reset()

    def reset(self) -> None:
        """Power-on values (QEMU's): both interrupts enabled, no translation,
        SYS clear until the self test, reset line high and A20 enabled."""
        self.mode = MODE_KBD_INT | MODE_AUX_INT
        self.sys_flag = False
        self.last_was_command = True
        self.outport = OUT_ONES | OUT_A20 | OUT_RESET
        self.obuf = 0
        self.obuf_full = False
        self.obuf_aux = False
        self.write_cmd = 0  # controller command waiting for its data byte
        self._xlate_release = False
        self.replies.clear()
        self.keyboard.reset()
        self.mouse.reset()
        self._update_irq()

    # -- host input ---------------------------------------------------------------

    def key_input(self, scancodes: bytes) -> None:
        """Queue set 2 scan codes from the host keyboard."""
        self.keyboard.key_input(scancodes)

    def type_text(self, text: str) -> None:
        """Type ASCII ``text`` as make/break pairs (with shift where needed)."""
        self.keyboard.key_input(text_to_set2(text))

    def mouse_input(self, dx: int, dy: int, buttons: int = 0) -> None:
        """Host mouse motion and buttons (bit 0 left, 1 right, 2 middle)."""
        self.mouse.move(dx, dy, buttons)

    # -- registers -------------------------------------------------------------------

    def status(self) -> int:
        st = STAT_UNLOCKED
        if self.obuf_full:
            st |= STAT_OBF | (STAT_AUX_OBF if self.obuf_aux else 0)
        if self.sys_flag:
            st |= STAT_SYS
        if self.last_was_command:
            st |= STAT_CMD
        return st

    def read_data(self) -> int:
        """Port 0x60 read: takes the output buffer (a stale byte if it is empty)."""
        value = self.obuf
        if self.obuf_full:
            self.obuf_full = False
            # OBF drops with the read, so IRQ1/12 fall before the next byte raises them:
            # an edge-triggered 8259 or IOAPIC input sees every byte.
            self._update_irq()
            self._service()  # the next byte, if any, moves in at once
        return value

    def write_data(self, value: int) -> None:
        self.last_was_command = False
        command, self.write_cmd = self.write_cmd, 0
        if command == CCMD_WRITE_MODE:
            self._write_mode(value)
        elif command == CCMD_WRITE_OUTPORT:
            self._write_outport(value)
        elif command == CCMD_WRITE_KBD_OBUF:
            self._output(value, False)
        elif command == CCMD_WRITE_AUX_OBUF:
            self._output(value, True)
        elif command == CCMD_WRITE_AUX:
            self.mode &= ~MODE_DISABLE_AUX  # sending to the mouse enables its interface
            self.mouse.write(value)
        else:
            self.mode &= ~MODE_DISABLE_KBD  # sending to the keyboard enables its interface
            self.keyboard.write(value)
        self._service()

    def write_command(self, value: int) -> None:
        self.last_was_command = True
        self.write_cmd = 0
        if value >= CCMD_PULSE:
            if not value & OUT_RESET:  # bit 0 clear: pulse the reset line
                self._request_reset()
        elif value == CCMD_READ_MODE:
            self._output(self.mode, False)
        elif value in (CCMD_WRITE_MODE, CCMD_WRITE_OUTPORT, CCMD_WRITE_KBD_OBUF,
                       CCMD_WRITE_AUX_OBUF, CCMD_WRITE_AUX):
            self.write_cmd = value
        elif value == CCMD_AUX_DISABLE:
            self.mode |= MODE_DISABLE_AUX
        elif value == CCMD_AUX_ENABLE:
            self.mode &= ~MODE_DISABLE_AUX
        elif value in (CCMD_AUX_TEST, CCMD_KBD_TEST):
            self._output(0x00, False)
        elif value == CCMD_SELF_TEST:
            self.sys_flag = True
            self._output(0x55, False)
        elif value == CCMD_KBD_DISABLE:
            self.mode |= MODE_DISABLE_KBD
        elif value == CCMD_KBD_ENABLE:
            self.mode &= ~MODE_DISABLE_KBD
        elif value == CCMD_READ_INPORT:
            self._output(INPORT_VALUE, False)
        elif value == CCMD_READ_OUTPORT:
            self._output(self._outport_value(), False)
        elif value == CCMD_DISABLE_A20:
            self._write_outport(self.outport & ~OUT_A20)
        elif value == CCMD_ENABLE_A20:
            self._write_outport(self.outport | OUT_A20)
        # other commands (controller RAM, version, password) are ignored
        self._service()

    def _output(self, value: int, aux: bool) -> None:
        """A byte the controller itself answers (dropped once the queue is full)."""
        if len(self.replies) < REPLY_QUEUE_LIMIT:
            self.replies.append((value, aux))

    def _write_mode(self, value: int) -> None:
        self.mode = value
        self.sys_flag = bool(value & MODE_SYS)
        if not value & MODE_XLATE:
            self._xlate_release = False

    def _outport_value(self) -> int:
        return ((self.outport & ~(OUT_KBD_OBF | OUT_AUX_OBF))
                | (OUT_KBD_OBF if self.kbd_irq.level else 0)
                | (OUT_AUX_OBF if self.aux_irq.level else 0))

    def _write_outport(self, value: int) -> None:
        self.outport = value & ~(OUT_KBD_OBF | OUT_AUX_OBF)
        if self._set_a20 is not None:
            self._set_a20(bool(value & OUT_A20))
        if not value & OUT_RESET:
            self._request_reset()

    def _request_reset(self) -> None:
        if self._on_reset is not None:
            self._on_reset()

    # -- output buffer and interrupts -----------------------------------------------

    def _next_keyboard_byte(self) -> int | None:
        while self.keyboard.has_output():
            byte = self.keyboard.pop()
            if not self.mode & MODE_XLATE:
                return byte
            if byte == SET2_BREAK:
                self._xlate_release = True
                continue
            byte = XLATE_TABLE[byte] | (0x80 if self._xlate_release else 0)
            self._xlate_release = False
            return byte
        return None

    def _service(self) -> None:
        """Refill the output buffer if it is empty, then recompute the IRQs."""
        if not self.obuf_full:
            byte: int | None = None
            aux = False
            if self.replies:
                byte, aux = self.replies.popleft()
            elif not self.mode & MODE_DISABLE_KBD:
                byte = self._next_keyboard_byte()
            if byte is None and not self.mode & MODE_DISABLE_AUX and self.mouse.has_output():
                byte, aux = self.mouse.pop(), True
            if byte is not None:
                self.obuf, self.obuf_full, self.obuf_aux = byte, True, aux
        self._update_irq()

    def _update_irq(self) -> None:
        self.kbd_irq.set_level(self.obuf_full and not self.obuf_aux
                               and bool(self.mode & MODE_KBD_INT))
        self.aux_irq.set_level(self.obuf_full and self.obuf_aux
                               and bool(self.mode & MODE_AUX_INT))

    # -- state -------------------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        return {
            "version": 1, "mode": self.mode, "sys": self.sys_flag,
            "cmd": self.last_was_command, "outport": self.outport, "obuf": self.obuf,
            "obuf_full": self.obuf_full, "obuf_aux": self.obuf_aux,
            "write_cmd": self.write_cmd, "xlate_release": self._xlate_release,
            "replies": [list(r) for r in self.replies],
            "keyboard": self.keyboard.save_state(), "mouse": self.mouse.save_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError("unsupported i8042 state")
        self.mode = state["mode"]
        self.sys_flag = state["sys"]
        self.last_was_command = state["cmd"]
        self.outport = state["outport"]
        self.obuf = state["obuf"]
        self.obuf_full = state["obuf_full"]
        self.obuf_aux = state["obuf_aux"]
        self.write_cmd = state["write_cmd"]
        self._xlate_release = state["xlate_release"]
        self.replies = deque((int(b), bool(a))
                             for b, a in state["replies"][:REPLY_QUEUE_LIMIT])
        self.keyboard.load_state(state["keyboard"])
        self.mouse.load_state(state["mouse"])
        self._update_irq()
