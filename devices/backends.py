"""Where a serial port's bytes go: the host side of a UART.

A backend's :meth:`~SerialBackend.write` takes what the guest transmitted and
:meth:`~SerialBackend.read_available` returns, without blocking, what the host
has typed or sent since the last call.  Input is collected by a daemon reader
thread that only appends to a locked buffer and then calls ``notify`` (if
set) so the machine can wake a halted vCPU; it never touches device state.

:func:`open_backend` turns the CLI's ``--serial`` values into backends::

    stdio        the terminal (the default)
    none         no backend at all: returns ``None`` (QEMU creates no port)
    null         output discarded, no input
    file:PATH    output written to PATH (created or truncated), no input
    pty          a new pseudo-terminal; its name is printed on stderr
    anything else is handed to pyserial's ``serial_for_url``:
                 socket://host:port, loop://, rfc2217://host:port, /dev/ttyS0, ...
"""

from __future__ import annotations

import atexit
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, BinaryIO

#: How long a reader thread waits for input before re-checking for close().
_POLL_SECONDS = 0.05


class SerialBackend:
    """Base class: discards output and has no input of its own.

    ``notify`` may be set by the embedder; it is called from the reader thread
    (not the vCPU thread) whenever new input has been buffered.
    """

    def __init__(self) -> None:
        self.notify: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._input = bytearray()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def write(self, data: bytes) -> None:
        """Send bytes transmitted by the guest to the host side."""

    def read_available(self) -> bytes:
        """Return (and consume) the input received so far; never blocks."""
        with self._lock:
            if not self._input:
                return b""
            data = bytes(self._input)
            self._input.clear()
        return data

    def save_state(self) -> dict[str, Any]:
        """Input received from the host that the guest's UART has not taken yet."""
        with self._lock:
            return {"version": 1, "input": bytes(self._input)}

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("serial backend: unsupported saved state version")
        with self._lock:
            self._input[:] = bytes(state["input"])

    def close(self) -> None:
        """Stop the reader thread and release host resources; idempotent."""
        self._stop.set()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=1.0)

    # -- for subclasses -------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Reader-thread side: buffer input and tell the embedder."""
        with self._lock:
            self._input += data
        notify = self.notify
        if notify is not None:
            notify()

    def _start_reader(self, read_chunk: Callable[[], bytes | None], name: str) -> None:
        """Run ``read_chunk`` in a daemon thread until close() or end of input.

        ``read_chunk`` returns the bytes read (``b""`` when it timed out) or
        ``None`` at end of input.
        """

        def run() -> None:
            while not self._stop.is_set():
                try:
                    data = read_chunk()
                except Exception:  # a closed or vanished host endpoint ends input
                    return
                if data is None:
                    return
                if data and not self._stop.is_set():
                    self._feed(data)

        self._reader = threading.Thread(target=run, name=name, daemon=True)
        self._reader.start()


def input_wakes(backend: SerialBackend | None) -> bool:
    """Does all of ``backend``'s input announce itself through ``notify``?  True for none
    and for every backend here (input arrives through ``_feed``); a subclass with its
    own ``read_available`` may have input that only polling finds."""
    if backend is None:
        return True
    return backend.notify is not None and \
        type(backend).read_available is SerialBackend.read_available


class NullBackend(SerialBackend):
    """``null``: output discarded, never any input."""


def _fd_reader(fd: int) -> Callable[[], bytes | None]:
    """A ``read_chunk`` for a file descriptor: wait briefly, then read."""

    def read_chunk() -> bytes | None:
        ready, _, _ = select.select([fd], [], [], _POLL_SECONDS)
        if not ready:
            return b""
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return b""
        return data or None

    return read_chunk


class StdioBackend(SerialBackend):
    """``stdio``: guest output to stdout (flushed), host input from stdin.

    When the input is a terminal it is switched to a raw-ish mode (no echo, no
    line buffering, no CR/LF translation or XON/XOFF) that keeps ISIG, so
    Ctrl-C still interrupts the emulator; :meth:`close` (also registered with
    ``atexit``) restores it.  When stdin cannot be read there is no input.

    ``output`` and ``input_fd`` default to the process's stdout and stdin;
    ``read_input=False`` disables input altogether.
    """

    def __init__(
        self,
        output: BinaryIO | None = None,
        input_fd: int | None = None,
        *,
        read_input: bool = True,
    ) -> None:
        super().__init__()
        self._output: BinaryIO | None = (
            output if output is not None else getattr(sys.stdout, "buffer", None)
        )
        self._saved_tty: list[Any] | None = None
        self._fd: int | None = None
        if not read_input:
            return
        fd = input_fd if input_fd is not None else _stdin_fd()
        if fd is None:
            return
        self._fd = fd
        if os.isatty(fd):
            self._enter_raw_mode(fd)
        self._start_reader(_fd_reader(fd), "serial-stdio")

    def _enter_raw_mode(self, fd: int) -> None:
        import termios

        self._saved_tty = termios.tcgetattr(fd)
        attrs = termios.tcgetattr(fd)
        attrs[0] &= ~(
            termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
            | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
        )
        attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
        attrs[6][termios.VMIN] = 1
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        atexit.register(self.close)

    def write(self, data: bytes) -> None:
        out = self._output
        if out is None:
            return
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError):  # closed or broken stdout: drop output
            self._output = None

    def close(self) -> None:
        super().close()
        saved, self._saved_tty = self._saved_tty, None
        if saved is not None and self._fd is not None:
            import termios

            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)
            except (OSError, termios.error):
                pass


def _stdin_fd() -> int | None:
    """The descriptor of sys.stdin, or None when it cannot be read."""
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    return fd


class FileBackend(SerialBackend):
    """``file:PATH``: output written to PATH, created or truncated; no input."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._file: IO[bytes] | None = open(path, "wb")

    def write(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        super().close()
        file, self._file = self._file, None
        if file is not None:
            file.close()


class PtyBackend(SerialBackend):
    """``pty``: a new pseudo-terminal; connect to :attr:`name` (e.g. with screen).

    The slave side is put in raw mode and kept open by the backend so that
    output written while no client is attached is buffered by the kernel, up
    to its limit, and dropped after that instead of blocking the guest.
    """

    def __init__(self, label: str = "serial0", announce: IO[str] | None = None) -> None:
        super().__init__()
        import tty

        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.name = os.ttyname(self._slave)
        stream = announce if announce is not None else sys.stderr
        print(f"char device redirected to {self.name} (label {label})", file=stream, flush=True)
        self._closed = False
        self._start_reader(_fd_reader(self._master), "serial-pty")

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                written = os.write(self._master, view)
            except (BlockingIOError, OSError):  # buffer full or no reader: drop
                return
            view = view[written:]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        super().close()
        os.close(self._master)
        os.close(self._slave)


class PySerialBackend(SerialBackend):
    """Anything pyserial's ``serial_for_url`` opens: URLs and host serial devices."""

    def __init__(self, spec: str) -> None:
        super().__init__()
        import serial

        try:
            self._port = serial.serial_for_url(spec, timeout=0, do_not_open=False)
        except (serial.SerialException, ValueError, OSError) as exc:
            reason = " ".join(str(exc).split())
            raise ValueError(f"cannot open serial backend {spec!r}: {reason}") from None
        self.spec = spec
        port = self._port
        # Only the reader thread reads, so a short blocking timeout lets it
        # notice close() without spinning.
        port.timeout = _POLL_SECONDS

        def read_chunk() -> bytes:
            return bytes(port.read(port.in_waiting or 1))

        self._start_reader(read_chunk, "serial-pyserial")

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except (OSError, ValueError):  # SerialException is an OSError: peer gone
            pass

    def close(self) -> None:
        super().close()
        try:
            self._port.close()
        except (OSError, ValueError):
            pass


def open_backend(spec: str, *, label: str = "serial0") -> SerialBackend | None:
    """Open the backend named by a ``--serial`` value (see the module docstring).

    Returns ``None`` for ``none``.  ``label`` names the port in the pty message.
    Raises :class:`ValueError` naming ``spec`` when it is unknown or cannot be
    opened.
    """
    if spec == "stdio":
        return StdioBackend()
    if spec == "none":
        return None
    if spec == "null":
        return NullBackend()
    if spec == "pty":
        try:
            return PtyBackend(label)
        except OSError as exc:
            raise ValueError(f"cannot open serial backend {spec!r}: {exc}") from None
    if spec.startswith("file:"):
        path = spec[len("file:"):]
        if not path:
            raise ValueError(f"serial backend {spec!r} needs a path: file:PATH")
        try:
            return FileBackend(path)
        except OSError as exc:
            raise ValueError(f"cannot open serial backend {spec!r}: {exc.strerror or exc}") from None
    if not spec:
        raise ValueError("empty serial backend spec ''")
    _check_network_url(spec)
    return PySerialBackend(spec)


def _check_network_url(spec: str) -> None:
    """Refuse a ``socket://`` or ``rfc2217://`` URL without a valid HOST:PORT in one clear
    line (pyserial's own message for these quotes its internal regular expressions)."""
    scheme, sep, rest = spec.partition("://")
    if not sep or scheme.lower() not in ("socket", "rfc2217"):
        return
    address = rest.split("?", 1)[0].split("/", 1)[0]
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        raise ValueError(f"serial backend {spec!r}: expected {scheme}://HOST:PORT")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"serial backend {spec!r}: port must be a number from 1 to 65535, "
                         f"not {port!r}")
