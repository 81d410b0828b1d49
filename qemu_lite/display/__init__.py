"""Displays of a machine's VGA: the screen API helpers, the VNC server, the board wiring."""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING

from qemu_lite.devices.vga import Frame

if TYPE_CHECKING:
    from qemu_lite.devices.vga import Vga
    from qemu_lite.display.vnc import VncServer
    from qemu_lite.machine import Machine

BLINK_HZ = 2  # text blink and cursor phases a second, close to a VGA's ~1.9 Hz


def _blink_on() -> bool:
    return int(time.monotonic() * BLINK_HZ) % 2 == 0


def live_frame(vga: Vga) -> Frame:
    """The screen now, blinking included (for displays; screenshots are taken blink-on)."""
    return vga.render(blink_on=_blink_on())


def live_fingerprint(vga: Vga) -> bytes:
    """What :func:`live_frame` depends on: the VGA's state and the blink phase."""
    return vga.fingerprint() + bytes([_blink_on()])


def open_vnc(machine: Machine, spec: str) -> VncServer:
    """Serve ``machine``'s VGA on QEMU's ``-vnc`` display ``spec`` (":N" or "HOST:N")."""
    from qemu_lite.display.vnc import VncServer, parse_vnc_display

    vga = machine.board.vga
    if vga is None:
        raise ValueError("-vnc needs a VGA (not -vga none)")
    host, port = parse_vnc_display(spec)
    # The server's threads are GC roots: they reach the machine only weakly, so that a
    # machine dropped without close() is still collected (and its finaliser closes them).
    keys, mouse = weakref.WeakMethod(machine.host_input.keys), \
        weakref.WeakMethod(machine.host_input.mouse)

    def on_key(codes: bytes) -> None:
        send = keys()
        if send is not None:
            send(codes)

    def on_pointer(dx: int, dy: int, buttons: int) -> None:
        send = mouse()
        if send is not None:
            send(dx, dy, buttons)

    server = VncServer(lambda: live_frame(vga), host=host, port=port, on_key=on_key,
                       on_pointer=on_pointer, fingerprint=lambda: live_fingerprint(vga))
    machine.add_closer(server.close)
    return server
