"""The screen as programs use it: frames as Pillow images and PNG files, keys by name."""

from __future__ import annotations

import os
import queue
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qemu_lite.devices.i8042 import I8042, SET2_KEYS, break_code, make_code
from qemu_lite.devices.vga import Frame

if TYPE_CHECKING:
    from PIL.Image import Image

KEY_ALIASES = {"ctrl": "lctrl", "alt": "lalt", "shift": "lshift", "del": "delete",
               "return": "enter", "ret": "enter", "escape": "esc", "pgup": "pageup",
               "pgdn": "pagedown", "ins": "insert", "spc": "space", "minus": "-",
               "equal": "=", "comma": ",", "dot": ".", "slash": "/"}


def combo_to_set2(combo: str) -> bytes:
    """Set 2 scan codes for a QEMU ``sendkey`` style combination ("ctrl-alt-delete", "a").

    Keys are pressed left to right and released in reverse order."""
    names = combo.lower().split("-") if combo != "-" else ["-"]
    keys = []
    for name in names:
        key = KEY_ALIASES.get(name, name)
        if key not in SET2_KEYS:
            raise ValueError(f"unknown key {name!r} in {combo!r}")
        keys.append(key)
    out = b"".join(make_code(k) for k in keys)
    return out + b"".join(break_code(k) for k in reversed(keys))


class HostInput:
    """Keys and mouse motion from other threads (API, VNC), given to the i8042 on the vCPU
    thread (a machine poller), so no other thread touches a device while the guest runs."""

    def __init__(self, kbc: I8042, wake: Callable[[], None]) -> None:
        self._kbc = kbc
        # Weakly: a VNC server (a machine closer) holds this object, and the machine's
        # finaliser must not keep the machine alive through it.
        self._wake_ref = weakref.WeakMethod(wake) if hasattr(wake, "__self__") else None
        self._wake_fn = None if self._wake_ref is not None else wake
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def _wake(self) -> None:
        wake = self._wake_ref() if self._wake_ref is not None else self._wake_fn
        if wake is not None:
            wake()

    def keys(self, set2: bytes) -> None:
        self._queue.put(lambda: self._kbc.key_input(set2))
        self._wake()

    def mouse(self, dx: int, dy: int, buttons: int) -> None:
        self._queue.put(lambda: self._kbc.mouse_input(dx, dy, buttons))
        self._wake()

    def pump(self) -> None:
        while True:
            try:
                action = self._queue.get_nowait()
            except queue.Empty:
                return
            action()


def pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeError("screenshots need Pillow: pip install 'qemu-lite[display]'") from None
    return Image


def frame_to_image(frame: Frame) -> Image:
    return pillow().frombytes("RGB", (frame.width, frame.height), frame.rgb)


def write_png(frame: Frame, path: str | os.PathLike[str]) -> None:
    frame_to_image(frame).save(path, format="PNG")
