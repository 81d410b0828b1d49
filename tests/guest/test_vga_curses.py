"""``-display curses`` draws the VGA's text screen in a terminal (a pty here)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from qemu_lite.display.vgaboard import find_vga_bios

pytestmark = pytest.mark.skipif(find_vga_bios() is None,
                                reason="no vgabios-stdvga.bin (Debian: apt-get install seabios)")


def test_curses_display_shows_the_bios_and_guest_text() -> None:
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", LINES="25", COLUMNS="80")
    proc = subprocess.Popen([sys.executable, "-m", "qemu_lite", "-display", "curses",
                             "--timeout", "60"], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True, cwd="/")  # the install, not the checkout
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = seen.decode(errors="replace")
    assert status == 1, text[-2000:]
    assert "qemu_lite BIOS v0" in text
    assert "Booting from hard disk 0x80" in text
    assert "qemu_lite default guest: real mode" in text
    # The serial console, which would otherwise print here, defaults to none under curses.
    assert "long mode: ok" not in text
