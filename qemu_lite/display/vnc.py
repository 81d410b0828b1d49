"""A small VNC server: RFB 3.8 (RFC 6143) with the raw encoding and DesktopSize.

What it speaks (section numbers of RFC 6143):

- 7.1 handshake: ProtocolVersion 3.8 (3.3 and 3.7 clients are served too),
  security type 1 "None", SecurityResult, ClientInit, ServerInit;
- 7.5 client messages: SetPixelFormat (true colour, 8/16/32 bits per pixel,
  any shifts and byte order), SetEncodings, FramebufferUpdateRequest,
  KeyEvent, PointerEvent, ClientCutText (ignored);
- 7.6.1 FramebufferUpdate with Raw rectangles (7.7.1) and the DesktopSize
  pseudo-encoding (-223, 7.8.2) when the guest changes mode.

Each client is served by its own thread, which draws the screen only while the
client has asked for an update: with nobody connected the server costs the
guest nothing (the listening thread sleeps in ``accept``).  Keys and pointer
motion go to the i8042 through the machine's input queue (the vCPU thread).
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Literal

from qemu_lite.devices.i8042 import SET2_KEYS, break_code, make_code
from qemu_lite.devices.vga import Frame

log = logging.getLogger(__name__)

VNC_BASE_PORT = 5900
PROTOCOL_38 = b"RFB 003.008\n"
SECURITY_NONE = 1
ENCODING_RAW = 0
ENCODING_DESKTOP_SIZE = -223
MSG_SET_PIXEL_FORMAT, MSG_SET_ENCODINGS, MSG_UPDATE_REQUEST = 0, 2, 3
MSG_KEY_EVENT, MSG_POINTER_EVENT, MSG_CLIENT_CUT_TEXT = 4, 5, 6
POLL_INTERVAL = 1 / 30  # how often a waiting incremental request looks for changes

# X11 keysyms (RFC 6143 7.5.4 refers to <X11/keysymdef.h>) -> our key names.
KEYSYMS: dict[int, str] = {
    0xFF08: "backspace", 0xFF09: "tab", 0xFF0D: "enter", 0xFF1B: "esc", 0xFFFF: "delete",
    0xFF50: "home", 0xFF51: "left", 0xFF52: "up", 0xFF53: "right", 0xFF54: "down",
    0xFF55: "pageup", 0xFF56: "pagedown", 0xFF57: "end", 0xFF63: "insert",
    0xFFE1: "lshift", 0xFFE2: "rshift", 0xFFE3: "lctrl", 0xFFE4: "rctrl",
    0xFFE9: "lalt", 0xFFEA: "ralt", 0xFFE5: "capslock", 0x20: "space",
    **{0xFFBE + i: f"f{i + 1}" for i in range(12)},
}
_SHIFTED = dict(zip('~!@#$%^&*()_+{}|:"<>?', "`1234567890-=[]\\;',./", strict=True))


def parse_vnc_display(spec: str) -> tuple[str, int]:
    """QEMU's ``-vnc [HOST]:N`` -> (host, TCP port 5900 + N); the host defaults to 127.0.0.1."""
    host, sep, number = spec.rpartition(":")
    if not sep or not number.isdigit() or int(number) > 65535 - VNC_BASE_PORT:
        raise ValueError(f"invalid VNC display {spec!r} (use :N or HOST:N, e.g. :0)")
    return host or "127.0.0.1", VNC_BASE_PORT + int(number)


def keysym_to_key(keysym: int) -> tuple[str, bool] | None:
    """(key name, needs shift) for an X11 keysym, or None if the PC keyboard has no such key."""
    if keysym in KEYSYMS:
        return KEYSYMS[keysym], False
    if 0x21 <= keysym <= 0x7E:
        ch = chr(keysym)
        if "A" <= ch <= "Z":
            return ch.lower(), True
        if ch in _SHIFTED:
            return _SHIFTED[ch], True
        if ch in SET2_KEYS:
            return ch, False
    return None


class PixelFormat:
    """RFC 6143 7.4: how the client wants pixels."""

    def __init__(self, bpp: int = 32, depth: int = 24, big_endian: bool = False,
                 true_colour: bool = True, maxes: tuple[int, int, int] = (255, 255, 255),
                 shifts: tuple[int, int, int] = (16, 8, 0)) -> None:
        self.bpp, self.depth, self.big_endian, self.true_colour = bpp, depth, big_endian, true_colour
        self.maxes, self.shifts = maxes, shifts

    def pack(self) -> bytes:
        return struct.pack(">BBBBHHHBBB3x", self.bpp, self.depth, self.big_endian,
                           self.true_colour, *self.maxes, *self.shifts)

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        bpp, depth, be, tc, rm, gm, bm, rs, gs, bs = struct.unpack(">BBBBHHHBBB3x", data)
        if not tc or bpp not in (8, 16, 32):
            raise ValueError(f"unsupported pixel format: {bpp} bits, true colour {tc}")
        return cls(bpp, depth, bool(be), bool(tc), (rm, gm, bm), (rs, gs, bs))

    def convert(self, rgb: bytes) -> bytes:
        """RGB24 bytes -> pixels in this format."""
        if (self.bpp, self.maxes) == (32, (255, 255, 255)) and not self.big_endian:
            # The common case: place each channel at its byte (shifts 0/8/16/24).
            out = bytearray(len(rgb) // 3 * 4)
            for channel, shift in enumerate(self.shifts):
                if shift % 8 == 0 and shift < 32:
                    out[shift // 8::4] = rgb[channel::3]
                else:
                    break
            else:
                return bytes(out)
        size = self.bpp // 8
        order: Literal["big", "little"] = "big" if self.big_endian else "little"
        (rm, gm, bm), (rs, gs, bs) = self.maxes, self.shifts
        cache: dict[bytes, bytes] = {}
        out = bytearray()
        for i in range(0, len(rgb), 3):
            px = rgb[i:i + 3]
            b = cache.get(px)
            if b is None:
                v = (px[0] * rm // 255) << rs | (px[1] * gm // 255) << gs | (px[2] * bm // 255) << bs
                b = cache[px] = v.to_bytes(size, order)
            out += b
        return bytes(out)


class VncServer:
    """Serves ``render()`` frames on ``(host, port)``; keys and pointer go to the callbacks."""

    def __init__(self, render: Callable[[], Frame], *, host: str = "127.0.0.1", port: int = 5900,
                 on_key: Callable[[bytes], None] | None = None,
                 on_pointer: Callable[[int, int, int], None] | None = None,
                 fingerprint: Callable[[], bytes] | None = None,
                 name: str = "qemu-lite") -> None:
        self.render = render
        # Cheap summary of the screen's inputs: equal prints mean an equal frame, so a
        # waiting client costs one print per poll instead of one drawing.
        self.fingerprint = fingerprint
        self.on_key = on_key or (lambda codes: None)
        self.on_pointer = on_pointer or (lambda dx, dy, buttons: None)
        self.name = name
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ValueError(f"cannot listen for VNC on {host}:{port}: {exc.strerror}") from None
        self._sock.listen(4)
        self.address = self._sock.getsockname()
        self._closed = threading.Event()
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, name="vnc-accept", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for c in list(self._clients):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=2)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="vnc-client",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            _VncSession(self, conn).run()
        except (OSError, ConnectionError, ValueError, struct.error) as exc:
            log.debug("VNC client gone: %s", exc)
        finally:
            if conn in self._clients:
                self._clients.remove(conn)
            conn.close()


class _VncSession:
    def __init__(self, server: VncServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.format = PixelFormat()
        self.encodings: set[int] = {ENCODING_RAW}
        self.last: Frame | None = None
        self.last_print: bytes | None = None
        self.size: tuple[int, int] = (0, 0)
        self.buttons = 0
        self.pointer = (0, 0)
        self.shift_down = False

    def recv(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed the connection")
            data += chunk
        return bytes(data)

    def frame(self) -> Frame:
        for _ in range(3):  # the guest may be mid-way through a mode change
            try:
                return self.server.render()
            except (IndexError, ValueError, ZeroDivisionError):
                time.sleep(0.01)
        return self.server.render()

    def handshake(self) -> None:
        self.conn.sendall(PROTOCOL_38)
        version = self.recv(12)
        if not version.startswith(b"RFB 003."):
            raise ValueError(f"not an RFB client: {version!r}")
        minor = int(version[8:11])
        if minor >= 7:
            self.conn.sendall(bytes([1, SECURITY_NONE]))
            if self.recv(1)[0] != SECURITY_NONE:
                raise ValueError("client refused security type None")
            if minor >= 8:
                self.conn.sendall(struct.pack(">I", 0))
        else:
            self.conn.sendall(struct.pack(">I", SECURITY_NONE))
        self.recv(1)  # ClientInit: shared flag (every client shares the screen)
        f = self.frame()
        self.size = (f.width, f.height)
        name = self.server.name.encode()
        self.conn.sendall(struct.pack(">HH", f.width, f.height) + self.format.pack()
                          + struct.pack(">I", len(name)) + name)

    def run(self) -> None:
        self.handshake()
        pending: bool | None = None  # the incremental flag of an unanswered update request
        while True:
            if pending is not None:
                if self.update(pending):
                    pending = None
                    continue
                readable, _, _ = select.select([self.conn], [], [], POLL_INTERVAL)
                if not readable:
                    continue
            request = self.message()
            if request is not None:
                pending = request if pending is None else pending and request

    def message(self) -> bool | None:
        """Read and act on one client message; an update request returns its incremental flag."""
        kind = self.recv(1)[0]
        if kind == MSG_SET_PIXEL_FORMAT:
            self.recv(3)
            self.format = PixelFormat.unpack(self.recv(16))
            self.last = None
        elif kind == MSG_SET_ENCODINGS:
            self.recv(1)
            (n,) = struct.unpack(">H", self.recv(2))
            self.encodings = set(struct.unpack(f">{n}i", self.recv(4 * n)))
        elif kind == MSG_UPDATE_REQUEST:
            incremental, _x, _y, _w, _h = struct.unpack(">BHHHH", self.recv(9))
            return bool(incremental)
        elif kind == MSG_KEY_EVENT:
            down, keysym = struct.unpack(">B2xI", self.recv(7))
            self.key(bool(down), keysym)
        elif kind == MSG_POINTER_EVENT:
            mask, x, y = struct.unpack(">BHH", self.recv(5))
            self.pointer_event(mask, x, y)
        elif kind == MSG_CLIENT_CUT_TEXT:
            self.recv(3)
            (n,) = struct.unpack(">I", self.recv(4))
            self.recv(n)
        else:
            raise ValueError(f"unknown RFB client message {kind}")
        return None

    def update(self, incremental: bool) -> bool:
        """Send a FramebufferUpdate unless the request is incremental and nothing changed."""
        fp = self.server.fingerprint() if self.server.fingerprint is not None else None
        if incremental and fp is not None and fp == self.last_print and self.last is not None:
            return False
        self.last_print = fp
        f = self.frame()
        if incremental and self.last is not None and (f.width, f.height) == (
                self.last.width, self.last.height) and f.rgb == self.last.rgb:
            return False
        rects: list[bytes] = []
        if (f.width, f.height) != self.size:
            self.size = (f.width, f.height)
            if ENCODING_DESKTOP_SIZE in self.encodings:
                rects.append(struct.pack(">HHHHi", 0, 0, f.width, f.height,
                                         ENCODING_DESKTOP_SIZE))
                self.last = None
        top, bottom = 0, f.height
        if incremental and self.last is not None and (self.last.width, self.last.height) == (
                f.width, f.height):
            row = f.width * 3
            while top < bottom and f.rgb[top * row:(top + 1) * row] == \
                    self.last.rgb[top * row:(top + 1) * row]:
                top += 1
            while bottom > top and f.rgb[(bottom - 1) * row:bottom * row] == \
                    self.last.rgb[(bottom - 1) * row:bottom * row]:
                bottom -= 1
        w, h = min(f.width, self.size[0]), bottom - top
        if h > 0:
            row = f.width * 3
            band = b"".join(f.rgb[y * row:y * row + w * 3] for y in range(top, bottom))
            rects.append(struct.pack(">HHHHi", 0, top, w, h, ENCODING_RAW)
                         + self.format.convert(band))
        self.last = f
        self.conn.sendall(struct.pack(">BxH", 0, len(rects)) + b"".join(rects))
        return True

    def key(self, down: bool, keysym: int) -> None:
        mapped = keysym_to_key(keysym)
        if mapped is None:
            return
        key, shifted = mapped
        if key in ("lshift", "rshift"):
            self.shift_down = down
        code = make_code(key) if down else break_code(key)
        if shifted and not self.shift_down:
            code = (make_code("lshift") + code + break_code("lshift"))
        self.server.on_key(code)

    def pointer_event(self, mask: int, x: int, y: int) -> None:
        # RFB buttons: bit 0 left, 1 middle, 2 right; PS/2: bit 0 left, 1 right, 2 middle.
        buttons = (mask & 1) | (mask & 4) >> 1 | (mask & 2) << 1
        dx, dy = x - self.pointer[0], self.pointer[1] - y
        self.pointer = (x, y)
        if dx or dy or buttons != self.buttons:
            self.buttons = buttons
            self.server.on_pointer(dx, dy, buttons)
