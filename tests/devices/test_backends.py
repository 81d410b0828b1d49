"""Serial backends: real host endpoints (pyserial loop://, files, ptys, pipes)."""

from __future__ import annotations

import io
import os
import select
import termios
import threading
import time
from pathlib import Path

import pytest

from qemu_lite.devices.backends import (
    FileBackend,
    NullBackend,
    PtyBackend,
    PySerialBackend,
    SerialBackend,
    StdioBackend,
    open_backend,
)
from qemu_lite.devices.uart16550 import LSR, LSR_DR, RBR, THR, Uart16550


def read_until(backend: SerialBackend, expected: bytes, timeout: float = 5.0) -> bytes:
    """Collect input from ``backend`` until ``expected`` bytes arrived or time runs out."""
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < len(expected) and time.monotonic() < deadline:
        got += backend.read_available()
        time.sleep(0.005)
    return got


def read_fd(fd: int, count: int, timeout: float = 5.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            got += os.read(fd, count - len(got))
    return got


def test_loop_url_round_trip_and_notify() -> None:
    backend = open_backend("loop://")
    assert isinstance(backend, PySerialBackend)
    woke = threading.Event()
    backend.notify = woke.set
    try:
        assert backend.read_available() == b""
        backend.write(b"hello")
        assert read_until(backend, b"hello") == b"hello"
        assert woke.is_set()
        assert backend.read_available() == b""  # consumed
    finally:
        backend.close()


def test_file_backend_truncates_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    path.write_bytes(b"stale contents")
    backend = open_backend(f"file:{path}")
    assert isinstance(backend, FileBackend)
    backend.write(b"line 1\r\n")
    assert path.read_bytes() == b"line 1\r\n"  # flushed at once
    backend.write(b"line 2")
    assert backend.read_available() == b""
    backend.close()
    assert path.read_bytes() == b"line 1\r\nline 2"


def test_pty_round_trip(capfd: pytest.CaptureFixture[str]) -> None:
    backend = open_backend("pty", label="serial1")
    assert isinstance(backend, PtyBackend)
    try:
        err = capfd.readouterr().err
        assert err == f"char device redirected to {backend.name} (label serial1)\n"
        assert backend.name.startswith("/dev/")
        client = os.open(backend.name, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(client, b"typed\r")
            assert read_until(backend, b"typed\r") == b"typed\r"
            backend.write(b"guest says hi\n")
            assert read_fd(client, 14) == b"guest says hi\n"  # raw: no CR added
            assert backend.read_available() == b""  # our own output is not echoed
        finally:
            os.close(client)
    finally:
        backend.close()


@pytest.mark.parametrize(
    "spec",
    ["/nonexistent/ttyXYZ", "bogus://host", "file:", "file:/nonexistent/dir/log", ""],
)
def test_bad_spec_raises_value_error_naming_it(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        open_backend(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert "\n" not in message


def test_none_and_null() -> None:
    assert open_backend("none") is None
    null = open_backend("null")
    assert isinstance(null, NullBackend)
    null.write(b"dropped")
    assert null.read_available() == b""
    null.close()


def test_stdio_writes_output_and_reads_a_pipe() -> None:
    out = io.BytesIO()
    read_end, write_end = os.pipe()
    backend = StdioBackend(output=out, input_fd=read_end)
    try:
        backend.write(b"boot\n")
        assert out.getvalue() == b"boot\n"
        os.write(write_end, b"key")
        assert read_until(backend, b"key") == b"key"
    finally:
        backend.close()
        os.close(write_end)
        os.close(read_end)


def test_stdio_without_readable_stdin_has_no_input() -> None:
    # Under pytest sys.stdin cannot be read (fileno() raises).
    out = io.BytesIO()
    backend = StdioBackend(output=out)
    try:
        assert backend._reader is None
        assert backend.read_available() == b""
    finally:
        backend.close()


def test_stdio_terminal_mode_keeps_isig_and_is_restored() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ECHO and before[3] & termios.ICANON
        backend = StdioBackend(output=io.BytesIO(), input_fd=slave)
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & (termios.ECHO | termios.ICANON)
        assert lflag & termios.ISIG  # Ctrl-C still interrupts
        os.write(master, b"x")  # delivered at once, without a newline
        assert read_until(backend, b"x") == b"x"
        backend.close()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_uart_echo_through_loop_backend() -> None:
    backend = open_backend("loop://")
    assert backend is not None
    uart = Uart16550(backend=backend)
    try:
        uart.io_write(2, 1, 0x01)  # FIFOs on
        for ch in b"echo":
            uart.io_write(THR, 1, ch)
        received = b""
        deadline = time.monotonic() + 5.0
        while len(received) < 4 and time.monotonic() < deadline:
            uart.pump()
            while uart.io_read(LSR, 1) & LSR_DR:
                received += bytes((uart.io_read(RBR, 1),))
            time.sleep(0.005)
        assert received == b"echo"
    finally:
        backend.close()
