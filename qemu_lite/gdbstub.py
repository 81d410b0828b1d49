"""A GDB remote stub (``-s``, ``-S``, ``--gdb tcp::PORT|unix:PATH``).

Threads: the stub drives the machine from the thread that owns it (the vCPU
thread): every register and memory access happens between ``Machine.run``
calls, so nothing touches the engine while it runs and no lock is needed.  A
reader thread only parses bytes from the socket into a queue and calls
``Machine.wake()``; a poller on the vCPU thread then ends the run with
``Machine.stop()`` (the wake path of ENGINE_FACTS.md facts 14/20: no cross-thread
``uc_emu_stop``).  That is how Ctrl-C (0x03) and a new connection stop a
running guest.

Registers follow the layout of the target description served to GDB, chosen
when GDB attaches: i386:x86-64 if the CPU is in long mode then, i386
otherwise.  GDB cannot change a layout within a session, so the 'g' reply
keeps its size across the guest's mode switches.  Memory is by guest linear
address through the guest's page tables (``Machine.read_virtual``), or
physical after QEMU's ``maint packet Qqemu.PhyMemMode:1`` (``PhysMemMode``
is accepted too) or ``monitor phys-mem-mode on``;
watchpoints (Z2-Z4) are ``Machine.add_watchpoint``.

Under ``-smp`` every vCPU is a thread (ids 1..N, as QEMU's stub numbers them):
``Hg`` selects whose registers and page tables the ``g``/``p``/``m`` packets
use (``Machine.on_vcpu``), ``Hc`` or a ``vCont`` action's thread the vCPU a
step runs on, and stop replies name the vCPU that was on the engine.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from qemu_lite.paging import PageFault
from qemu_lite.x86 import EFER_LMA, MSR_EFER

if TYPE_CHECKING:
    from qemu_lite.machine import Machine, RunResult

SIGINT, SIGTRAP = 2, 5
_WATCH_KINDS = {"2": "write", "3": "read", "4": "access"}   # Z2/Z3/Z4
_WATCH_STOP = {"2": "watch", "3": "rwatch", "4": "awatch"}


class GdbSpecError(ValueError):
    """A --gdb argument that is not tcp::PORT, tcp:HOST:PORT or unix:PATH, or cannot be bound."""


def parse_spec(spec: str) -> tuple[str, str | tuple[str, int]]:
    """``tcp::1234`` / ``tcp:HOST:PORT`` / ``unix:PATH`` -> (family, address)."""
    kind, _, rest = spec.partition(":")
    if kind == "unix" and rest:
        return "unix", rest.split(",", 1)[0]
    if kind == "tcp":
        host, _, port = rest.split(",", 1)[0].rpartition(":")
        if port.isdigit() and 0 < int(port) < 65536:
            return "tcp", (host or "127.0.0.1", int(port))
    raise GdbSpecError(f"invalid --gdb {spec!r} (use tcp::PORT, tcp:HOST:PORT or unix:PATH)")


# -- registers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    uc: int | None          # Unicorn register id; None: read specially
    feature: str


def _layout(long_mode: bool) -> list[Reg]:
    core, sse, seg, sysf = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                            "org.gnu.gdb.i386.segments", "org.qemu-lite.i386.system")
    w = 64 if long_mode else 32
    names = (["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [f"r{i}" for i in range(8, 16)]
             if long_mode else ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"])
    regs = [Reg(n, w, "data_ptr" if n[1:] in ("sp", "bp") else f"int{w}",
                getattr(X, "UC_X86_REG_" + n.upper()), core) for n in names]
    regs.append(Reg("rip" if long_mode else "eip", w, "code_ptr",
                    X.UC_X86_REG_RIP if long_mode else X.UC_X86_REG_EIP, core))
    regs.append(Reg("eflags", 32, "int32", X.UC_X86_REG_EFLAGS, core))
    regs += [Reg(s, 32, "int32", getattr(X, "UC_X86_REG_" + s.upper()), core)
             for s in ("cs", "ss", "ds", "es", "fs", "gs")]
    regs += [Reg(f"st{i}", 80, "i387_ext", X.UC_X86_REG_FP0 + i, core) for i in range(8)]
    regs += [Reg(n, 32, "int", uc, core) for n, uc in (
        ("fctrl", X.UC_X86_REG_FPCW), ("fstat", X.UC_X86_REG_FPSW), ("ftag", X.UC_X86_REG_FPTAG),
        ("fiseg", X.UC_X86_REG_FCS), ("fioff", X.UC_X86_REG_FIP), ("foseg", X.UC_X86_REG_FDS),
        ("fooff", X.UC_X86_REG_FDP), ("fop", X.UC_X86_REG_FOP))]
    regs += [Reg(f"xmm{i}", 128, "uint128", X.UC_X86_REG_XMM0 + i, sse)
             for i in range(16 if long_mode else 8)]
    regs.append(Reg("mxcsr", 32, "int", X.UC_X86_REG_MXCSR, sse))
    # GDB's i386 (non-Linux) architecture numbers the segments feature past its
    # register count and asserts; there the bases go with the system registers.
    seg = seg if long_mode else sysf
    regs += [Reg("fs_base", w, f"int{w}", X.UC_X86_REG_FS_BASE, seg),
             Reg("gs_base", w, f"int{w}", X.UC_X86_REG_GS_BASE, seg)]
    regs += [Reg(n, 64, "int64", getattr(X, "UC_X86_REG_" + n.upper()), sysf)
             for n in ("cr0", "cr2", "cr3", "cr4", "cr8")]
    regs.append(Reg("efer", 64, "int64", None, sysf))
    return regs


def target_xml(long_mode: bool) -> str:
    """The target description for the i386 or i386:x86-64 layout."""
    parts = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target>\n',
             f"<architecture>{'i386:x86-64' if long_mode else 'i386'}</architecture>\n"]
    feature = None
    for r in _layout(long_mode):
        if r.feature != feature:
            if feature is not None:
                parts.append("</feature>\n")
            feature = r.feature
            parts.append(f'<feature name="{feature}">\n')
        parts.append(f'  <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}"/>\n')
    parts.append("</feature>\n</target>\n")
    return "".join(parts)


def _hex_le(value: int, bits: int) -> str:
    return (value & ((1 << bits) - 1)).to_bytes(bits // 8, "little").hex()


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


class Connection:
    """One GDB connection: framing and acks; a reader thread feeds ``packets``."""

    def __init__(self, sock: socket.socket, on_input: Callable[[], None]) -> None:
        self.sock = sock
        self.packets: queue.Queue[bytes | None] = queue.Queue()  # None: closed; b"\x03": Ctrl-C
        self._send_lock = threading.Lock()
        self._on_input = on_input
        self._thread = threading.Thread(target=self._read, name="gdb-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                buf = self._parse(buf)
        except OSError:
            pass
        self.packets.put(None)
        self._on_input()

    def _parse(self, buf: bytes) -> bytes:
        while buf:
            if buf[0] == 0x03:
                self.packets.put(b"\x03")
                self._on_input()
                buf = buf[1:]
            elif buf[0:1] == b"$":
                end = buf.find(b"#")
                if end < 0 or len(buf) < end + 3:
                    return buf  # incomplete
                body, cs = buf[1:end], buf[end + 1:end + 3]
                buf = buf[end + 3:]
                if _checksum(body) != cs.lower():
                    self._send_raw(b"-")
                    continue
                self._send_raw(b"+")
                self.packets.put(body)
                self._on_input()
            else:
                buf = buf[1:]  # '+', '-' and noise
        return buf

    def _send_raw(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def send(self, body: str | bytes) -> None:
        data = body.encode() if isinstance(body, str) else body
        self._send_raw(b"$" + data + b"#" + _checksum(data))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class GdbStub:
    """Serves GDB's remote protocol for one :class:`Machine` on a listening socket."""

    def __init__(self, machine: Machine, spec: str) -> None:
        if machine.parallel is not None:
            raise GdbSpecError("the gdb stub needs -accel tcg,thread=single (breakpoints and "
                               "steps stop one engine, and thread=multi runs one per vCPU)")
        self.machine = machine
        family, address = parse_spec(spec)
        self.spec = spec
        if family == "unix":
            assert isinstance(address, str)
            if os.path.exists(address):
                os.unlink(address)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(address)
            self._listener.listen(1)
        except OSError as exc:
            self._listener.close()
            raise GdbSpecError(f"gdb stub: cannot listen on {spec}: {exc.strerror}") from None
        self._conns: queue.Queue[Connection] = queue.Queue()
        self.conn: Connection | None = None
        self._long_mode = False
        # QEMU's PhyMemMode: m/M packets address guest physical memory, not linear.
        self.physical = False
        self._watches: dict[tuple[int, int, str], str] = {}  # (addr, len, access) -> Z type
        self._input = threading.Event()
        self._interrupted = False
        self._g_thread = 1              # Hg: the thread registers and memory are read from
        self._c_thread: int | None = None  # Hc / vCont: the thread a step runs; None: any
        threading.Thread(target=self._accept, name="gdb-accept", daemon=True).start()
        machine.add_poller(self._poll)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if isinstance(sock.getsockname(), tuple):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.put(Connection(sock, self._wake))
            self._wake()

    def _wake(self) -> None:
        self._input.set()
        if self.on_input is not None:
            self.on_input()
        self.machine.wake()

    def _poll(self) -> None:
        # On the vCPU thread at every stop of a run: input from GDB ends the run.
        if self._input.is_set():
            self._input.clear()
            if self._pending_input():
                self._interrupted = True
                self.machine.stop("stopped", None, "gdb")
            # else: the EOF of a connection already detached: the guest runs on

    def _pending_input(self) -> bool:
        """A new connection, or a packet from the current one (queued before the
        readers set ``_input``)."""
        return not self._conns.empty() or (self.conn is not None
                                           and not self.conn.packets.empty())

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self._listener.close()

    # -- the session loop (vCPU thread) -------------------------------------------

    def serve(self, start_stopped: bool, timeout: float | None = None) -> RunResult:
        """Run the machine under the debugger until the guest ends or GDB kills it."""
        from qemu_lite.machine import RunResult

        deadline = None if timeout is None else time.monotonic() + timeout
        running = not start_stopped
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._report_end("X0e")
                return RunResult("timeout", None, "time budget spent")
            if running:
                result = self._run(remaining)
                if result.reason == "stopped" and self._interrupted:
                    # Ctrl-C (answered when its 0x03 is read) or a new connection.
                    running = False
                    self._interrupted = False
                    self._continuing = False
                    continue
                if result.reason in ("breakpoint", "step", "watchpoint"):
                    running = False
                    self._continuing = False
                    if self.conn is not None:
                        self.conn.send(self._stop_reply(SIGTRAP, self._watch_stop(result)))
                    continue
                self._report_end(self._end_packet(result))
                return result
            action = self._next_packet(remaining)
            if action == "kill":
                return RunResult("stopped", None, "killed by gdb")
            if action in ("continue", "step", "detach"):
                running = True
                self._stepping = action == "step"
                self._continuing = action != "detach"

    _stepping = False
    _continuing = False

    # -- under a monitor (--qmp with -s): the QMP server's loop runs the machine ------

    # Also called at every input from GDB: the monitor's own wake-up while paused.
    on_input: Callable[[], None] | None = None

    def run(self, timeout: float | None) -> RunResult:
        """One ``Machine.run`` (or step, after GDB's ``s``) for the monitor's loop."""
        return self._run(timeout)

    def took_stop(self, result: RunResult) -> bool:
        """Whether the run that gave ``result`` stopped for the debugger: a breakpoint,
        step or watchpoint (the stop reply is sent) or input from GDB."""
        if result.reason == "stopped" and self._interrupted:
            self._interrupted = False
            self._continuing = False
            return True
        if result.reason in ("breakpoint", "step", "watchpoint"):
            self._continuing = False
            if self.conn is not None:
                self.conn.send(self._stop_reply(SIGTRAP, self._watch_stop(result)))
            return True
        return False

    def notify_stopped(self) -> None:
        """The monitor stopped the guest: a GDB waiting in ``continue`` gets its stop
        reply (SIGINT, as QEMU's stub sends for a pause)."""
        if self._continuing and self.conn is not None:
            self.conn.send(self._stop_reply(SIGINT))
        self._continuing = False

    def pump(self) -> str | None:
        """Handle the input queued so far without waiting (vCPU thread, guest stopped):
        ``"continue"``, ``"step"``, ``"detach"`` (also when GDB went away) or ``"kill"``
        when a packet asks for it, None otherwise."""
        while self._pending_input():
            action = self._next_packet(0)
            if action is not None:
                self._stepping = action == "step"
                self._continuing = action in ("continue", "step")
                return action
        return None

    def report_end(self, result: RunResult) -> None:
        """The run is over: GDB hears the exit (W) or termination (X)."""
        self._report_end(self._end_packet(result))

    def _run(self, timeout: float | None) -> RunResult:
        self._input.clear()
        if self._pending_input():
            self._input.set()  # input that came before this run: stop at once
        if self._stepping:
            self._stepping = False
            m = self.machine
            if self._c_thread is not None and m.vcpus is not None:
                m.vcpus.select(self._c_thread - 1)  # step the thread GDB chose
            return m.step(timeout)
        return self.machine.run(timeout)

    # -- threads: one per vCPU ---------------------------------------------------------

    def _threads(self) -> int:
        return self.machine.cpus

    def _on_engine(self) -> int:
        """The thread id of the vCPU on the engine (the one that stopped)."""
        vcpus = self.machine.vcpus
        return 1 if vcpus is None else vcpus.current + 1

    def _stop_reply(self, signal: int, extra: str = "") -> str:
        # As QEMU: after a stop, the thread that stopped is the one GDB looks at.
        self._g_thread = self._on_engine()
        return f"T{signal:02x}{extra}thread:{self._g_thread:02x};"

    def _thread_id(self, text: str) -> int | None:
        """A thread-id of H/T/vCont: its number, 0 ("any") or -1 ("all"); None: no such."""
        number = -1 if text == "-1" else int(text, 16)
        return number if number in (0, -1) or 1 <= number <= self._threads() else None

    def _set_thread(self, pkt: str) -> str:
        """``Hg``/``Hc`` (``H`` with an op and a thread-id)."""
        op, tid = pkt[1:2], self._thread_id(pkt[2:])
        if op not in ("g", "c") or tid is None:
            return "E22"
        if op == "g":
            self._g_thread = self._on_engine() if tid in (0, -1) else tid
        else:
            self._c_thread = None if tid in (0, -1) else tid
        return "OK"

    def _vcont(self, actions: str) -> str:
        """``vCont;ACTION[:TID]...`` -> "step" or "continue"; a step with a thread id
        steps that vCPU (the other vCPUs do not run while it does)."""
        for action in actions.split(";"):
            kind, _, tid = action.partition(":")
            if kind[:1] in ("s", "S"):
                number = self._thread_id(tid) if tid else None
                if number not in (None, 0, -1):
                    self._c_thread = number
                return "step"
        return "continue"

    def _extra_info(self, tid_hex: str) -> str:
        tid = self._thread_id(tid_hex)
        if tid in (None, 0, -1):
            return "E22"
        assert tid is not None
        state = self.machine.vcpu_states()[tid - 1]
        return f"CPU#{tid - 1} [{state}]".encode().hex()

    def _next_packet(self, timeout: float | None) -> str | None:
        """Wait for and handle one packet; returns "continue", "step", "detach", "kill"
        or None."""
        if self.conn is None:
            try:
                self.conn = self._conns.get(timeout=timeout)
            except queue.Empty:
                return None
            self._long_mode = bool(self.machine.uc.msr_read(MSR_EFER) & EFER_LMA)
        try:
            packet = self.conn.packets.get(timeout=timeout)
        except queue.Empty:
            return None
        if packet is None:  # GDB went away: the guest goes on, as after a detach
            self._detach()
            return "detach"
        if packet == b"\x03":
            self.conn.send(self._stop_reply(SIGINT))
            return None
        reply, action = self._handle(packet.decode("latin-1"))
        if reply is not None:
            self.conn.send(reply)
        if action == "detach" or action == "kill":
            self._detach()
        return action

    def _watch_stop(self, result: RunResult) -> str:
        """The stop reply's ``watch:ADDR;`` part (rwatch/awatch) after a watchpoint."""
        hit = self.machine.last_watch
        if result.reason != "watchpoint" or hit is None:
            return ""
        for (addr, length, _), kind in self._watches.items():
            if addr <= hit[0] < addr + length:
                return f"{_WATCH_STOP[kind]}:{hit[0]:x};"
        return ""

    def _detach(self) -> None:
        for addr in self.machine.breakpoints:
            self.machine.remove_breakpoint(addr)
        for key in self._watches:
            self.machine.remove_watchpoint(*key)
        self._watches.clear()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _report_end(self, packet: str) -> None:
        if self.conn is not None:
            self.conn.send(packet)

    @staticmethod
    def _end_packet(result: RunResult) -> str:
        if result.reason == "exit" and result.exit_status is not None:
            return f"W{result.exit_status & 0xFF:02x}"
        if result.reason in ("halted", "stopped"):
            return "W00"
        return "X0b" if result.reason == "triple-fault" else "X09"

    # -- packets -------------------------------------------------------------------

    def _handle(self, pkt: str) -> tuple[str | None, str | None]:
        head = pkt[:1]
        thread = None
        if head in ("g", "G", "p", "P", "m", "M") or pkt.startswith("qRcmd,696e666f"):
            thread = self._g_thread  # (monitor "info ...": the others change the machine)
        elif head in ("c", "s", "C", "S"):  # with an address: that vCPU's RIP
            thread = self._c_thread or self._on_engine()
        if thread is not None and thread != self._on_engine():
            with self.machine.on_vcpu(thread - 1):
                return self._handle_packet(pkt)
        return self._handle_packet(pkt)

    def _handle_packet(self, pkt: str) -> tuple[str | None, str | None]:
        m = self.machine
        head = pkt[:1]
        try:
            if pkt == "?":
                return self._stop_reply(SIGTRAP), None
            if head == "g":
                return "".join(self._read_reg(r) for r in _layout(self._long_mode)), None
            if head == "G":
                self._write_regs(bytes.fromhex(pkt[1:]))
                return "OK", None
            if head == "p":
                regs = _layout(self._long_mode)
                n = int(pkt[1:], 16)
                return (self._read_reg(regs[n]) if n < len(regs) else "E45"), None
            if head == "P":
                num, _, value = pkt[1:].partition("=")
                regs = _layout(self._long_mode)
                n = int(num, 16)
                if n >= len(regs):
                    return "E45", None
                return self._write_reg(regs[n], int.from_bytes(bytes.fromhex(value), "little")), None
            if head == "m":
                addr, _, length = pkt[1:].partition(",")
                read = m.read_memory if self.physical else m.read_virtual
                return read(int(addr, 16), min(int(length, 16), 0x2000)).hex(), None
            if head == "M":
                where, _, data = pkt[1:].partition(":")
                addr = where.split(",")[0]
                write = m.write_memory if self.physical else m.write_virtual
                write(int(addr, 16), bytes.fromhex(data))
                return "OK", None
            if pkt in ("qqemu.PhyMemMode", "qqemu.PhysMemMode"):
                return ("1" if self.physical else "0"), None
            if pkt.startswith(("Qqemu.PhyMemMode:", "Qqemu.PhysMemMode:")):
                value = pkt.partition(":")[2]
                if value not in ("0", "1"):
                    return "E22", None
                self.physical = value == "1"
                return "OK", None
            if pkt == "qqemu.Supported":
                return "PhyMemMode", None
            if head in "cs" and head:
                if len(pkt) > 1:
                    m.set_reg("rip", int(pkt[1:], 16))
                return None, "continue" if head == "c" else "step"
            if head in "CS" and head:
                _, _, addr = pkt[1:].partition(";")
                if addr:
                    m.set_reg("rip", int(addr, 16))
                return None, "continue" if head == "C" else "step"
            if pkt.startswith("vCont?"):
                return "vCont;c;C;s;S", None
            if pkt.startswith("vCont;"):
                return None, self._vcont(pkt[6:])
            if head in "Zz" and head and pkt[1:2] in "234":
                _, addr, length = pkt.split(",")[:3]
                key = (int(addr, 16), int(length, 16), _WATCH_KINDS[pkt[1]])
                if head == "Z":
                    m.add_watchpoint(*key)
                    self._watches[key] = pkt[1]
                elif key in self._watches:
                    m.remove_watchpoint(*key)
                    del self._watches[key]
                return "OK", None
            if head in "Zz" and head and pkt[1:2] in "01":
                vaddr = int(pkt.split(",")[1], 16)  # Z0,ADDR,KIND: hardware ones alike
                if head == "Z":
                    m.add_breakpoint(vaddr)
                elif vaddr in m.breakpoints:
                    m.remove_breakpoint(vaddr)
                return "OK", None
            if pkt.startswith("qSupported"):
                return "PacketSize=4000;qXfer:features:read+;vContSupported+", None
            if pkt.startswith("qXfer:features:read:"):
                annex, _, span = pkt[len("qXfer:features:read:"):].partition(":")
                if annex != "target.xml":
                    return "E00", None
                off, _, length = span.partition(",")
                xml = target_xml(self._long_mode)
                chunk = xml[int(off, 16):int(off, 16) + int(length, 16)]
                more = int(off, 16) + int(length, 16) < len(xml)
                return ("m" if more else "l") + chunk, None
            if pkt == "qAttached":
                return "1", None
            if pkt == "qC":
                return f"QC{self._g_thread:02x}", None
            if pkt == "qfThreadInfo":
                return "m" + ",".join(f"{t:02x}" for t in range(1, self._threads() + 1)), None
            if pkt == "qsThreadInfo":
                return "l", None
            if pkt.startswith("qThreadExtraInfo,"):
                return self._extra_info(pkt.partition(",")[2]), None
            if head == "H":
                return self._set_thread(pkt), None
            if head == "T":
                return ("OK" if self._thread_id(pkt[1:]) not in (None, 0, -1) else "E22"), None
            if pkt.startswith("qRcmd,"):
                return self._monitor(bytes.fromhex(pkt[6:]).decode(errors="replace")), None
            if head == "D":
                return "OK", "detach"
            if head == "k" or pkt.startswith("vKill"):
                return ("OK" if head == "v" else None), "kill"
        except PageFault:
            return "E0e", None
        except (ValueError, KeyError, IndexError):
            return "E16", None
        return "", None  # not supported: GDB's convention

    def _read_reg(self, r: Reg) -> str:
        uc = self.machine.uc
        if r.uc is None:  # efer
            return _hex_le(uc.msr_read(MSR_EFER), r.bits)
        value = uc.reg_read(r.uc)
        if r.bits == 80:
            mantissa, exponent = value
            return struct.pack("<QH", mantissa, exponent).hex()
        return _hex_le(int(value), r.bits)

    def _write_reg(self, r: Reg, value: int) -> str:
        uc = self.machine.uc
        if r.bits == 80 or r.feature == "org.gnu.gdb.i386.core" and r.bits == 32 and \
                r.name in ("cs", "ss", "ds", "es", "fs", "gs"):
            # A selector write would leave the hidden descriptor stale (ENGINE_FACTS.md fact 5).
            return "E16" if self._read_reg(r) != _hex_le(value, r.bits) else "OK"
        if r.uc is None:
            uc.msr_write(MSR_EFER, value)
        else:
            uc.reg_write(r.uc, value)
        return "OK"

    def _write_regs(self, data: bytes) -> None:
        pos = 0
        for r in _layout(self._long_mode):
            size = r.bits // 8
            if pos + size > len(data):
                break
            value = int.from_bytes(data[pos:pos + size], "little")
            if self._read_reg(r) != _hex_le(value, r.bits):
                self._write_reg(r, value)
            pos += size

    def _monitor(self, command: str) -> str:
        m = self.machine
        words = command.split()
        if words == ["info", "registers"]:
            text = "".join(f"{r.name:<8} {int.from_bytes(bytes.fromhex(self._read_reg(r)), 'little'):#018x}\n"
                           for r in _layout(True) if r.bits <= 64)
        elif words == ["info", "mmu"]:
            stats = m.core.mmu_stats()
            text = f"MMU mode {m.mmu_mode}\n" + "".join(f"{k} {v}\n" for k, v in stats.items())
        elif words == ["system_reset"]:
            m.reset_now()
            text = "system reset\n"
        elif words[:1] == ["phys-mem-mode"] and words[1:] in ([], ["on"], ["off"]):
            if words[1:]:
                self.physical = words[1] == "on"
            text = f"memory packets address {'physical' if self.physical else 'virtual'} memory\n"
        else:
            text = (f"unknown command {command!r} (info registers, info mmu, system_reset, "
                    "phys-mem-mode [on|off])\n")
        assert self.conn is not None
        self.conn.send("O" + text.encode().hex())
        return "OK"
