"""Keys typed on the host terminal reach the guest's PS/2 keyboard when the serial console
is elsewhere."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import tempfile
import time

from guestlib import protected_mode_guest

READ_KEY = r"""
.wait:                        ; poll the i8042 output buffer
    in al, 0x64
    test al, 1
    jz .wait
    in al, 0x60
    movzx eax, al
    call puthex               ; the scan code (set 2: 'a' makes 1C)
    mov al, 10
    call putc
    mov al, 0
    call exit
"""


def test_terminal_keys_reach_the_ps2_keyboard(assemble, tmp_path):
    kernel = tmp_path / "kbd.bin"
    kernel.write_bytes(assemble(protected_mode_guest(READ_KEY)))
    serial = tmp_path / "serial.txt"
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qemu_lite", "--kernel", str(kernel), "--serial",
             f"file:{serial}", "--timeout", "30"],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=tempfile.gettempdir())
        time.sleep(1.0)
        os.write(master, b"a")
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 1, err
    assert serial.read_text() == "0000001C\n"
