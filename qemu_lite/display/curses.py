"""``-display curses``: the VGA's text screen in the terminal, redrawn when it changes.

Only text modes are shown (a graphics mode shows a one-line notice).  Keys typed
in the terminal reach the guest's PS/2 keyboard through the machine's terminal
keyboard (``pc._keyboard_from_terminal``), as without a display; this module
only draws, from its own thread, and only when the VGA's fingerprint changes.
"""

from __future__ import annotations

import curses
import locale
import threading

from qemu_lite.devices.vga import Vga

REFRESH_S = 0.05


class CursesDisplay:
    def __init__(self, vga: Vga) -> None:
        self.vga = vga
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="curses-display", daemon=True)

    def start(self) -> None:
        locale.setlocale(locale.LC_ALL, "")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        curses.wrapper(self._loop)

    def _loop(self, screen: curses.window) -> None:
        last: bytes | None = None
        while True:
            # Asked to stop: one last look first, so the screen the guest left is drawn
            # even when the run ended between two refreshes.
            stopping = self._stop.is_set()
            try:
                fp = self.vga.fingerprint()
                if fp != last:
                    last = fp
                    self._draw(screen)
            except (IndexError, ValueError):
                pass  # the guest is half-way through a mode change: next time
            if stopping:
                return
            self._stop.wait(REFRESH_S)

    def _draw(self, screen: curses.window) -> None:
        rows, cols = screen.getmaxyx()
        lines = self.vga.screen_text()
        if lines is None:
            lines = ["(the guest is in a graphics mode: use -vnc or --screendump-on-exit)"]
        screen.erase()
        for r, line in enumerate(lines[:rows]):
            text = "".join(c if c.isprintable() else " " for c in line)
            try:
                screen.addstr(r, 0, text[:cols - 1] if r == rows - 1 else text[:cols])
            except curses.error:
                pass  # the bottom-right cell cannot be written without scrolling
        cursor = self.vga.cursor_position()
        try:
            if cursor is not None and cursor[0] < rows and cursor[1] < cols:
                curses.curs_set(1)
                screen.move(*cursor)
            else:
                curses.curs_set(0)
        except curses.error:
            pass
        screen.refresh()
