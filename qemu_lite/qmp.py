"""A QMP server, the QEMU Machine Protocol (``--qmp unix:PATH,server,wait=off``).

Threads: an accept thread greets each client and starts its reader and
writer threads.  A reader only splits the byte stream into JSON values and
queues them, then calls ``Machine.wake()``; every command runs on the vCPU
thread, between slices while the guest runs (a machine poller) or in
:meth:`QmpServer.serve`'s wait while it is paused, so nothing touches the
engine while it runs (the GDB stub's rule, docs/ARCHITECTURE.md, Debugging).
Replies and events are queued to a writer thread per client: a client that
stops reading is dropped once its queue is full, never blocks the guest.

Protocol: the greeting, capabilities negotiation (``qmp_capabilities``; no
capability is offered), ``{"execute", "arguments", "id"}`` commands answered
with ``{"return"}`` or ``{"error": {"class", "desc"}}``, and the events STOP,
RESUME, RESET, SHUTDOWN and POWERDOWN with QEMU's ``data`` members.

Migration is QEMU's stop-and-copy to a file (``migrate`` with ``file:PATH``,
``Machine.save_state``), read back by ``qemu-lite -incoming file:PATH``:
the state is saved between runs, so a running guest is stopped first; the
source then stays in ``postmigrate`` (paused) until ``cont`` or ``quit``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qemu_lite import hmp
from qemu_lite.devices.base import Device

if TYPE_CHECKING:
    from qemu_lite.gdbstub import GdbStub
    from qemu_lite.machine import Machine, RunResult

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20       # bytes of one JSON value from a client
MAX_DEPTH = 1024            # nesting of one JSON value (QEMU's parser has the same bound)
OUT_QUEUE = 4096            # replies and events waiting for a slow client before it is dropped
PAUSE_POLL_S = 0.05         # how often a paused machine looks for a signal's stop request
_PAUSE = "paused over QMP"


class QmpSpecError(ValueError):
    """A --qmp argument that is not unix:PATH,server[,wait=off] or tcp:HOST:PORT,server[,...],
    or an address that cannot be bound."""


@dataclass(frozen=True)
class QmpSpec:
    family: str                      # "unix" or "tcp"
    address: str | tuple[str, int]
    wait: bool                       # wait=on: start the guest once a client is connected


def parse_spec(spec: str) -> QmpSpec:
    """``unix:PATH,server[=on][,wait=on|off]`` or ``tcp:[HOST]:PORT,server,...`` (also
    ``nowait``), QEMU's character-device syntax for a listening monitor."""
    usage = (f"invalid --qmp {spec!r} (use unix:PATH,server,wait=off or "
             "tcp:HOST:PORT,server,wait=off)")
    kind, _, rest = spec.partition(":")
    target, *options = rest.split(",")
    server, wait = False, True  # QEMU's default for a server is to wait for the client
    for opt in options:
        key, _, value = opt.partition("=")
        if key not in ("server", "wait", "nowait"):
            raise QmpSpecError(f"invalid --qmp option {opt!r} in {spec!r} (server, wait=on|off)")
        flag = {"on": True, "yes": True, "": True, "off": False, "no": False}.get(value)
        if flag is None or key == "nowait" and value:
            raise QmpSpecError(usage)
        if key == "server":
            server = flag
        elif key == "wait":
            wait = flag
        else:
            wait = False  # nowait
    if not server:
        raise QmpSpecError(f"--qmp {spec!r}: qemu-lite's monitor only listens; add ',server'")
    if kind == "unix" and target:
        return QmpSpec("unix", target, wait)
    if kind == "tcp":
        host, _, port = target.rpartition(":")
        if port.isdigit() and 0 < int(port) < 65536:
            return QmpSpec("tcp", (host or "127.0.0.1", int(port)), wait)
    raise QmpSpecError(usage)


class QmpError(Exception):
    """A command failed: becomes ``{"error": {"class": cls, "desc": desc}}``."""

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.cls = cls
        self.desc = desc


# -- the byte stream -----------------------------------------------------------------


class JsonSplitter:
    """Cuts a client's byte stream into top-level JSON values, as QEMU's streaming
    parser does: by bracket depth outside strings, so values may span lines or share one.

    :meth:`feed` returns the complete values' texts; a value that is not an object
    or an array still comes back whole (the dispatcher refuses it).  Raises
    :class:`QmpError` for input that can never become a value (too deep, too long,
    a stray closing bracket): the connection should then be closed.

    >>> s = JsonSplitter()
    >>> s.feed(b'{"execute": "stop"}{"exec')
    [b'{"execute": "stop"}']
    >>> s.feed(b'ute": "cont"}\\n')
    [b'{"execute": "cont"}']
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0          # how far _buf has been scanned
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        i = self._scan
        start = 0
        while i < len(buf):
            c = buf[i]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == 0x5C:  # backslash
                    self._escape = True
                elif c == 0x22:
                    self._in_string = False
            elif c == 0x22:
                self._in_string = True
            elif c in (0x7B, 0x5B):  # { [
                self._depth += 1
                if self._depth > MAX_DEPTH:
                    raise QmpError("JSON parse error, nesting too deep")
            elif c in (0x7D, 0x5D):  # } ]
                if self._depth == 0:
                    raise QmpError("JSON parse error, unbalanced closing bracket")
                self._depth -= 1
                if self._depth == 0:
                    out.append(bytes(buf[start:i + 1]).strip())
                    start = i + 1
            elif self._depth == 0 and c in b" \t\r\n":
                token = bytes(buf[start:i]).strip()
                if token:
                    out.append(token)  # a bare number or word: refused by the dispatcher
                start = i + 1
            i += 1
        del buf[:start]
        self._scan = len(buf)
        if len(buf) > MAX_MESSAGE:
            raise QmpError(f"JSON parse error, a message is longer than {MAX_MESSAGE} bytes")
        return out


# -- clients ---------------------------------------------------------------------------


class _Client:
    """One connection: a reader thread feeding the server's queue, a writer thread
    draining ``_out``."""

    def __init__(self, server: QmpServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number
        self.negotiated = False
        self.closed = False
        self.hmp = hmp.Session()  # HMP's ``cpu N`` lasts for the connection
        self._out: queue.Queue[bytes | None] = queue.Queue(OUT_QUEUE)
        self._writer = threading.Thread(target=self._write_loop, name=f"qmp-writer-{number}",
                                        daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name=f"qmp-reader-{number}",
                                        daemon=True)

    def start(self, greeting: dict[str, Any]) -> None:
        self.send(greeting)
        self._writer.start()
        self._reader.start()

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self._out.put_nowait(json.dumps(message).encode() + b"\r\n")
        except queue.Full:
            log.warning("QMP client %d does not read its replies: dropped", self.number)
            self.close()

    def _write_loop(self) -> None:
        while True:
            data = self._out.get()
            if data is None:
                break
            try:
                self.sock.sendall(data)
            except OSError:
                break
        self._shutdown()

    def _read_loop(self) -> None:
        splitter = JsonSplitter()
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                try:
                    values = splitter.feed(data)
                except QmpError as exc:
                    self.server.submit(self, exc)
                    break
                for value in values:
                    self.server.submit(self, value)
        except OSError:
            pass
        self.server.submit(self, None)  # the dispatcher forgets the client in order

    def close(self) -> None:
        """Send what is queued, then close (from any thread)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._out.put_nowait(None)
        except queue.Full:
            self._shutdown()  # the writer cannot be told: cut the connection

    def _shutdown(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def flush(self, timeout: float) -> None:
        self.close()
        if self._writer.is_alive():
            self._writer.join(timeout)


# -- commands ------------------------------------------------------------------------------

# A parameter: (accepted JSON types, required).
_Params = dict[str, tuple[tuple[type, ...], bool]]
_TYPE_NAMES = {str: "string", int: "int", bool: "bool", list: "array", dict: "object"}


@dataclass
class _Command:
    run: Callable[[dict[str, Any]], Any]
    params: _Params = field(default_factory=dict)


class _ResetWatcher(Device):
    """Machine reset hook: every reset (the guest's or ours) sends a RESET event."""

    def __init__(self, server: QmpServer) -> None:
        self._server = server

    def reset(self) -> None:
        self._server._on_reset()


def _shutdown_reason(result: RunResult) -> tuple[bool, str]:
    """(guest, reason) of QEMU's SHUTDOWN event for how a run ended."""
    if result.reason in ("exit", "halted", "powered-off"):
        return True, "guest-shutdown"
    if result.reason in ("reset", "triple-fault"):
        return True, "guest-reset"
    if result.reason == "signal":
        return False, "host-signal"
    return False, "none"


class QmpServer(hmp.RunControl):
    """Serves QMP for one :class:`Machine` on a listening socket.

    :meth:`serve` runs the machine (as ``Machine.run`` does) and keeps the run
    state QMP shows: ``running``, ``paused`` or ``prelaunch``.  ``inputs``, as
    ``(what, path)`` pairs, are files that ``screendump`` refuses to overwrite.
    """

    def __init__(self, machine: Machine, spec: str,
                 inputs: list[tuple[str, str]] | None = None, *,
                 no_shutdown: bool = False) -> None:
        self.machine = machine
        self.no_shutdown = no_shutdown  # -no-shutdown: a guest power-off only stops it
        self.spec = parse_spec(spec)
        self.inputs = list(inputs or [])
        self.run_state = "prelaunch"
        self._queue: queue.Queue[tuple[_Client, bytes | QmpError | None]] = queue.Queue()
        self._clients: list[_Client] = []
        self._clients_lock = threading.Lock()
        self._connected = threading.Event()
        self._pending = False   # submit() queued something since the last poll
        self._pausing = False
        self._host_reset = False
        self._end: RunResult | None = None
        self._migrate_to: str | None = None   # saved once the running guest stops
        self._migration: dict[str, Any] = {}  # query-migrate's answer
        self._vcpu_native_id = threading.get_native_id()
        self._client: _Client | None = None  # whose command runs
        self._gdb: GdbStub | None = None  # -s with --qmp: the stub shares this loop
        self._wakeup = threading.Event()  # input from a client or GDB while paused
        self._commands = self._command_table()
        self._listener = self._listen(spec)
        self._accepting = threading.Thread(target=self._accept, name="qmp-accept", daemon=True)
        self._accepting.start()
        machine.add_poller(self._poll)
        machine.add_resettable(_ResetWatcher(self))

    def _listen(self, spec: str) -> socket.socket:
        if self.spec.family == "unix":
            path = self.spec.address
            assert isinstance(path, str)
            if os.path.exists(path) and not _is_socket(path):
                raise QmpSpecError(f"--qmp {spec}: {path!r} exists and is not a socket")
            if os.path.exists(path):
                os.unlink(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(self.spec.address)
            sock.listen(4)
        except OSError as exc:
            sock.close()
            raise QmpSpecError(f"qmp: cannot listen on {spec}: {exc.strerror}") from None
        return sock

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            number += 1
            client = _Client(self, sock, number)
            with self._clients_lock:
                self._clients.append(client)
            client.start(self._greeting())
            self._connected.set()

    def _greeting(self) -> dict[str, Any]:
        return {"QMP": {"version": self._version(), "capabilities": []}}

    def close(self) -> None:
        """Send what is queued to every client (briefly), then close the sockets."""
        self._listener.close()
        if self.spec.family == "unix":
            try:
                os.unlink(self.spec.address)  # type: ignore[arg-type]
            except OSError:
                pass
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.flush(timeout=2.0)

    # -- queueing (reader threads) and dispatch (vCPU thread) ---------------------------

    def submit(self, client: _Client, item: bytes | QmpError | None) -> None:
        """From a reader thread: a JSON text, a stream error, or None (closed)."""
        self._queue.put((client, item))
        self._pending = True  # after the put: the poller may clear it, then drain
        self._wakeup.set()
        self.machine.wake()

    def _poll(self) -> None:
        # A machine poller: runs at every stop of the vCPU while the guest runs, so
        # it tests a plain attribute (Queue.empty() takes a lock: ~2 us a stop).
        if self._pending:
            self._pending = False
            self._drain()

    def _drain(self) -> None:
        while True:
            try:
                client, item = self._queue.get_nowait()
            except queue.Empty:
                return
            self._dispatch(client, item)

    def _dispatch(self, client: _Client, item: bytes | QmpError | None) -> None:
        if item is None or isinstance(item, QmpError):
            if isinstance(item, QmpError):
                client.send(_error(item))
            client.close()
            with self._clients_lock:
                if client in self._clients:
                    self._clients.remove(client)
            return
        try:
            message = json.loads(item)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            client.send(_error(QmpError(f"JSON parse error, {exc}")))
            return
        client.send(self._execute(client, message))

    def _execute(self, client: _Client, message: object) -> dict[str, Any]:
        if not isinstance(message, dict):
            return _error(QmpError("QMP input must be a JSON object"))
        ident = message.get("id")
        reply: dict[str, Any]
        try:
            name, arguments = _check_message(message)
            if not client.negotiated and name != "qmp_capabilities":
                raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'",
                               "CommandNotFound")
            if client.negotiated and name == "qmp_capabilities":
                raise QmpError("Capabilities negotiation is already complete, command ignored",
                               "CommandNotFound")
            command = self._commands.get(name)
            if command is None:
                raise QmpError(f"The command {name} has not been found", "CommandNotFound")
            _check_arguments(command.params, arguments)
            if name == "qmp_capabilities":
                _check_capabilities(arguments)
                client.negotiated = True
                result: Any = {}
            else:
                self._client = client
                result = command.run(arguments)
            reply = {"return": {} if result is None else result}
        except QmpError as exc:
            reply = _error(exc)
        except Exception as exc:  # noqa: BLE001 - a bug of ours must not end the guest
            log.exception("QMP command failed")
            reply = _error(QmpError(f"internal error in qemu-lite: {type(exc).__name__}: {exc}"))
        if "id" in message:
            reply["id"] = ident
        return reply

    # -- events ------------------------------------------------------------------------

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        """Send an event to every client that finished negotiation."""
        now = time.time()
        message = {"event": event, "data": data or {},
                   "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}
        with self._clients_lock:
            clients = [c for c in self._clients if c.negotiated]
        for client in clients:
            client.send(message)

    def _on_reset(self) -> None:
        if self._host_reset:
            self.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        else:
            self.emit("RESET", {"guest": True, "reason": "guest-reset"})

    # -- running -----------------------------------------------------------------------

    def serve(self, start_stopped: bool = False, timeout: float | None = None, *,
              incoming: bool = False) -> RunResult:
        """Run the machine until the guest ends it, a client sends ``quit``, a signal
        arrives or ``timeout`` seconds pass; paused while a client says so.

        ``start_stopped`` (``-S``): stay in ``prelaunch`` (``paused`` for a machine
        restored from ``-incoming``, as QEMU) until ``cont``.  With ``wait=on`` the
        guest starts only once a client has connected."""
        from qemu_lite.machine import RunResult

        self._vcpu_native_id = threading.get_native_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        if start_stopped:
            self.run_state = "paused" if incoming else "prelaunch"
        else:
            self.run_state = "running"
        result: RunResult | None = None
        try:
            while result is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if self.spec.wait and not self._connected.is_set() and \
                        not self.machine.stop_pending and (remaining is None or remaining > 0):
                    self._connected.wait(PAUSE_POLL_S)  # wait=on: no guest before a client
                elif remaining is not None and remaining <= 0:
                    result = RunResult("timeout", None, "time budget spent")
                elif self._end is not None:
                    result = self._end
                elif self.run_state != "running" and not self.machine.stop_pending:
                    self._wait_paused(remaining)
                else:
                    gdb = self._gdb
                    run = self.machine.run(remaining) if gdb is None else gdb.run(remaining)
                    if run.reason == "stopped" and self._pausing:
                        self._pausing = False  # stop: wait for cont (or quit) above
                        if gdb is not None:
                            gdb.took_stop(run)  # its input, if any, is read while paused
                            gdb.notify_stopped()
                        if self._migrate_to is not None:
                            self._save_migration()
                    elif gdb is not None and self._end is None and gdb.took_stop(run):
                        self.run_state = "debug"  # stopped for the debugger, as QEMU's
                        self.emit("STOP")
                    elif run.reason == "powered-off" and self.no_shutdown and self._end is None:
                        self.run_state = "shutdown"  # stopped until system_reset or quit
                        self.emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
                    elif self._end is None:
                        result = run
        except BaseException as exc:
            from qemu_lite.vcpu import GuestError

            self.run_state = "internal-error"
            if isinstance(exc, GuestError):  # a triple fault, or code the CPU cannot run
                self.emit("SHUTDOWN", {"guest": True, "reason": "guest-panic"})
            else:
                self.emit("SHUTDOWN", {"guest": False, "reason": "host-signal" if isinstance(
                    exc, KeyboardInterrupt) else "host-error"})
            raise
        self.run_state = "shutdown"
        if self._gdb is not None:
            self._gdb.report_end(result)
        if self._end is not None and result is self._end:
            guest, reason = False, self._end_reason
        else:
            guest, reason = _shutdown_reason(result)
        self.emit("SHUTDOWN", {"guest": guest, "reason": reason})
        return result

    _end_reason = "host-qmp-quit"

    def _wait_paused(self, remaining: float | None) -> None:
        """Answer commands (and GDB's packets) on this (the vCPU) thread until cont,
        quit, a signal's stop request or the end of the time budget."""
        wait = PAUSE_POLL_S if remaining is None else max(0.0, min(PAUSE_POLL_S, remaining))
        if self._gdb is None:
            try:
                client, item = self._queue.get(timeout=wait)
            except queue.Empty:
                return
            self._dispatch(client, item)
            return
        self._wakeup.wait(wait)
        self._wakeup.clear()  # before draining: what comes later sets it again
        while True:
            try:
                client, item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._dispatch(client, item)
        self._gdb_action(self._gdb.pump())

    def attach_gdb(self, stub: GdbStub) -> None:
        """Serve ``stub`` from this loop too (``-s`` with ``--qmp``): GDB's continue and
        step resume the guest (RESUME), its breakpoints, steps and Ctrl-C stop it in
        state ``debug`` (STOP), and a QMP ``stop`` ends GDB's continue with SIGINT."""
        self._gdb = stub
        stub.on_input = self._wakeup.set

    def _gdb_action(self, action: str | None) -> None:
        from qemu_lite.machine import RunResult

        if action == "kill":
            self._finish(RunResult("stopped", None, "killed by gdb"), "host-ui")
        elif action in ("continue", "step"):
            if self.run_state == "shutdown":
                assert self._gdb is not None
                self._gdb.notify_stopped()  # nothing to run until system_reset
            else:
                self.cont()
        elif action == "detach" and self.run_state == "debug":
            self.cont()  # the debugger's stop ends with it; a QMP stop stays

    # -- run control (hmp.RunControl too) ----------------------------------------------

    def _finish(self, result: RunResult, reason: str) -> None:
        """End serve() with ``result``; SHUTDOWN gives ``reason``."""
        self._end = result
        self._end_reason = reason
        if self.run_state == "running":
            self.machine.stop(result.reason, result.exit_status, result.message)

    def status(self) -> str:
        return self.run_state

    def vcpu_thread_id(self) -> int:
        return self._vcpu_native_id

    def stop(self) -> None:
        if self.run_state == "running":
            self.run_state = "paused"
            self._pausing = True
            self.machine.stop("stopped", None, _PAUSE)
            self.emit("STOP")

    def cont(self) -> None:
        if self.run_state == "shutdown":
            raise QmpError("Resetting the Virtual Machine is required")
        if self.run_state in ("paused", "prelaunch", "postmigrate", "debug"):
            self.run_state = "running"
            self.emit("RESUME")

    def system_reset(self) -> None:
        from qemu_lite.machine import RunResult

        if self.machine.no_reboot:  # as QEMU: -no-reboot turns every reset into a shutdown
            self._finish(RunResult("reset", None, "reset requested over QMP (--no-reboot)"),
                         "host-qmp-system-reset")
            return
        self._host_reset = True
        try:
            self.machine.reset_now()
        finally:
            self._host_reset = False
        if self.run_state == "shutdown":
            self.run_state = "prelaunch"  # as QEMU after -no-shutdown: cont starts it

    # -- the command table ---------------------------------------------------------------

    def _command_table(self) -> dict[str, _Command]:
        text, number = (str,), (int,)
        return {
            "qmp_capabilities": _Command(lambda a: {}, {"enable": ((list,), False)}),
            "query-version": _Command(lambda a: self._version()),
            "query-commands": _Command(lambda a: [{"name": n} for n in sorted(self._commands)]),
            "query-status": _Command(lambda a: {"status": self.run_state,
                                                "running": self.run_state == "running"}),
            "query-name": _Command(lambda a: {}),
            "query-target": _Command(lambda a: {"arch": "x86_64"}),
            "query-cpus-fast": _Command(self._query_cpus_fast),
            "stop": _Command(lambda a: self.stop()),
            "cont": _Command(lambda a: self.cont()),
            "system_reset": _Command(lambda a: self.system_reset()),
            "system_powerdown": _Command(self._system_powerdown),
            "migrate": _Command(self._migrate, {"uri": (text, True)}),
            "query-migrate": _Command(lambda a: dict(self._migration)),
            "quit": _Command(self._quit),
            "human-monitor-command": _Command(self._human_monitor_command,
                                              {"command-line": (text, True),
                                               "cpu-index": (number, False)}),
            "screendump": _Command(self._screendump,
                                   {"filename": (text, True), "device": (text, False),
                                    "head": (number, False), "format": (text, False)}),
            "x-qemu-lite-query-mmu": _Command(self._query_mmu),
            "x-qemu-lite-query-cpu-mode": _Command(self._query_cpu_mode),
            "x-qemu-lite-mmu-audit": _Command(self._mmu_audit),
        }

    @staticmethod
    def _version() -> dict[str, Any]:
        from importlib import metadata

        from qemu_lite.engine import engine_info

        try:
            text = metadata.version("qemu-lite")
        except metadata.PackageNotFoundError:
            text = "0.0.0"
        parts = [int(p) if p.isdigit() else 0 for p in text.split(".")[:3]]
        parts += [0] * (3 - len(parts))
        return {"qemu": {"major": parts[0], "minor": parts[1], "micro": parts[2]},
                "package": f"qemu-lite {text} ({engine_info().describe()})"}

    def _query_cpus_fast(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        # As QEMU's pc machine: -smp N is one socket of N cores, the CPUs its first
        # devices; thread=single runs them all on one host thread.
        return [{"cpu-index": i, "qom-path": f"/machine/unattached/device[{i}]",
                 "thread-id": self._vcpu_native_id, "target": "x86_64",
                 "props": {"socket-id": 0, "core-id": i, "thread-id": 0}}
                for i in range(self.machine.cpus)]

    def _quit(self, _args: dict[str, Any]) -> None:
        from qemu_lite.machine import RunResult

        self._finish(RunResult("stopped", None, "quit requested over QMP"), "host-qmp-quit")

    def _system_powerdown(self, _args: dict[str, Any]) -> None:
        try:
            self.machine.powerdown()
        except RuntimeError as exc:  # built without ACPI (--no-acpi)
            raise QmpError(str(exc)) from None
        self.emit("POWERDOWN")

    def _migrate(self, args: dict[str, Any]) -> None:
        from qemu_lite.pc import check_outputs

        uri = args["uri"]
        path = parse_incoming(uri, "migrate")
        if self._migration.get("status") == "active":
            raise QmpError("There's a migration process in progress")
        try:
            check_outputs([("migrate", path)], self.inputs)
        except ValueError as exc:
            raise QmpError(str(exc)) from None
        self._migrate_to = path
        self._migration = {"status": "active"}
        if self._pausing:  # a stop is under way: saved once the run has returned
            pass
        elif self.run_state == "running":  # saved between runs: stop the guest first
            self._pausing = True
            self.machine.stop("stopped", None, "migrating over QMP")
        else:
            self._save_migration()

    def _save_migration(self) -> None:
        """Write the state file of ``migrate`` (between runs); ``postmigrate`` after."""
        path, self._migrate_to = self._migrate_to, None
        assert path is not None
        started = time.monotonic()
        try:
            self.machine.save_state(path)
        except (OSError, ValueError, RuntimeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.warning("migrate to %s failed: %s", path, detail)
            self._migration = {"status": "failed",
                               "error-desc": f"cannot write '{path}': {detail}"}
            return  # a running guest runs on, as QEMU's does after a failed migration
        self._migration = {"status": "completed",
                           "total-time": int((time.monotonic() - started) * 1000)}
        if self.run_state == "running":
            self.emit("STOP")
        self.run_state = "postmigrate"

    def _human_monitor_command(self, args: dict[str, Any]) -> str:
        # QEMU makes a fresh monitor per command (CPU 0, or cpu-index); here a
        # client's ``cpu N`` also lasts, as in one HMP session.
        session = self._client.hmp if self._client is not None else hmp.Session()
        if "cpu-index" in args:
            index = args["cpu-index"]
            if not 0 <= index < self.machine.cpus:
                raise QmpError(f"CPU {index} is not online (this machine has CPUs 0 to "
                               f"{self.machine.cpus - 1})" if self.machine.cpus > 1 else
                               f"CPU {index} is not online (this machine has CPU 0)")
            session = hmp.Session(index)
        version = self._version()["package"]
        return hmp.execute(self.machine, self, args["command-line"], version, session)

    def _screendump(self, args: dict[str, Any]) -> None:
        from qemu_lite.pc import check_outputs

        if args.get("device") not in (None, "vga", "video0"):
            raise QmpError(f"Device '{args['device']}' not found", "DeviceNotFound")
        if args.get("head", 0) != 0:
            raise QmpError(f"Head {args['head']} not found (the VGA has head 0)")
        fmt = args.get("format", "ppm")
        if fmt not in ("ppm", "png"):
            raise QmpError(f"Parameter 'format' does not accept value '{fmt}' (ppm or png)")
        path = args["filename"]
        vga = self.machine.board.vga
        if vga is None:
            raise QmpError("this machine has no display (-vga none)")
        try:
            check_outputs([("screendump", path)], self.inputs)
        except ValueError as exc:
            raise QmpError(str(exc)) from None
        frame = vga.render()
        try:
            if fmt == "png":
                from qemu_lite.display import screen

                try:
                    screen.write_png(frame, path)
                except ImportError:
                    raise QmpError("format png needs Pillow (pip install pillow)") from None
            else:
                with open(path, "wb") as f:
                    f.write(b"P6\n%d %d\n255\n" % (frame.width, frame.height))
                    f.write(frame.rgb)
        except OSError as exc:
            raise QmpError(f"could not write '{path}': {exc.strerror}") from None

    def _query_mmu(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"mode": self.machine.mmu_mode, "stats": dict(self.machine.core.mmu_stats())}

    def _query_cpu_mode(self, _args: dict[str, Any]) -> dict[str, Any]:
        from unicorn import x86_const as X

        from qemu_lite.x86 import CR0_PG, CR4_PAE

        uc = self.machine.uc
        _, hflags = self.machine.cpu.segments.snapshot()
        cr0, cr4 = uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR4)
        return {"mode": hmp.cpu_mode(self.machine), "paging": bool(cr0 & CR0_PG),
                "pae": bool(cr4 & CR4_PAE), "cpl": hflags & 3, "halted": self.machine.cpu.halted}

    def _mmu_audit(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"problems": [str(p) for p in self.machine.core.audit()]}


def parse_incoming(uri: str, what: str = "-incoming") -> str:
    """The path of a migration URI, ``file:PATH`` (the one transport qemu-lite has).

    >>> parse_incoming("file:/tmp/vm.state")
    '/tmp/vm.state'
    """
    kind, _, path = uri.partition(":")
    if kind != "file" or not path:
        raise QmpError(f"{what}: invalid migration URI {uri!r} (qemu-lite migrates to "
                       "file:PATH only)")
    return path


def _error(exc: QmpError) -> dict[str, Any]:
    return {"error": {"class": exc.cls, "desc": exc.desc}}


def _check_message(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for key in message:
        if key not in ("execute", "arguments", "id"):
            raise QmpError(f"QMP input member '{key}' is unexpected")
    if "execute" not in message:
        raise QmpError("QMP input lacks member 'execute'")
    name = message["execute"]
    if not isinstance(name, str):
        raise QmpError("QMP input member 'execute' must be a string")
    arguments = message.get("arguments", {})
    if not isinstance(arguments, dict):
        raise QmpError("QMP input member 'arguments' must be an object")
    return name, arguments


def _check_arguments(params: _Params, arguments: dict[str, Any]) -> None:
    for key, value in arguments.items():
        if key not in params:
            raise QmpError(f"Parameter '{key}' is unexpected")
        types, _ = params[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise QmpError(f"Invalid parameter type for '{key}', expected: "
                           f"{_TYPE_NAMES[types[0]]}")
    for key, (_, required) in params.items():
        if required and key not in arguments:
            raise QmpError(f"Parameter '{key}' is missing")


def _check_capabilities(arguments: dict[str, Any]) -> None:
    for cap in arguments.get("enable", []):
        if not isinstance(cap, str):
            raise QmpError("Invalid parameter type for 'enable', expected: string")
        raise QmpError(f"Capability '{cap}' not available")  # none is offered


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
