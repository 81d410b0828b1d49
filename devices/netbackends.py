"""Where a NIC's frames go: QEMU's ``-netdev`` back ends, and a pcap dump of the traffic.

A :class:`NetBackend` sits between a NIC on the vCPU thread and the outside
world serviced by one poller thread of its own:

* the NIC calls :meth:`NetBackend.send` (the frame is queued for the poller
  thread; False when that bounded queue is full, so a flooding guest is held
  back instead of growing memory) and :meth:`NetBackend.receive` (the next
  frame for the guest, or None);
* the poller thread delivers frames into a bounded receive queue and calls
  ``notify`` (the machine's wake path) -- it never touches device state.

The poller sleeps in ``poll()`` on its sockets and a wake pipe: idle, it costs
nothing.  Back ends (QEMU's names and options)::

    user,id=ID[,hostfwd=tcp::HOSTPORT-:GUESTPORT]...   libslirp: 10.0.2.0/24, DHCP
        [,tftp=DIR][,bootfile=NAME]                    from 10.0.2.15, DNS 10.0.2.3,
        [,net=ADDR/BITS][,host=ADDR][,dns=ADDR]        the host as 10.0.2.2 (or those
        [,dhcpstart=ADDR][,restrict=on|off]            offsets in net=); a read-only
        [,hostname=NAME]                               TFTP server on it for DIR, and
                                                       DHCP's boot file and host name
    socket,id=ID,listen=[HOST]:PORT                    QEMU's stream framing: a 4-byte
    socket,id=ID,connect=[HOST]:PORT                   big-endian length before each frame
    tap,id=ID[,ifname=NAME][,script=PATH|no]           a Linux tap interface (/dev/net/tun):
        [,downscript=PATH|no]                          frames to and from the host's kernel

:class:`PcapWriter` records both directions in libpcap format (link type
Ethernet) for ``--net-dump FILE``.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .slirp import WakePipe

TX_QUEUE_LIMIT = 256  # frames from the guest waiting for the poller thread
RX_QUEUE_LIMIT = 512  # frames for the guest waiting for the NIC
MAX_FRAME = 65535 + 14  # QEMU's stream framing carries at most this much per frame
IFNAMSIZ = 16  # Linux's interface-name buffer, the terminating NUL included
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int), linux/if_tun.h
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000  # frames without the 4-byte packet-information header
PCAP_MAGIC = 0xA1B2C3D4
PCAP_LINKTYPE_ETHERNET = 1
PCAP_SNAPLEN = 65535


@dataclass(frozen=True)
class Netdev:
    """A parsed ``-netdev``: ``kind`` is "user", "socket" or "tap"."""

    kind: str
    id: str
    hostfwd: tuple[tuple[str, str, int, str, int], ...] = ()  # proto, haddr, hport, gaddr, gport
    listen: tuple[str, int] | None = None
    connect: tuple[str, int] | None = None
    ifname: str = ""  # tap: the interface to create or attach to ("" lets the kernel name it)
    script: str = ""  # tap: run with the interface name once it exists ("" for none)
    downscript: str = ""  # tap: run with the interface name when the machine closes
    tftp: str = ""  # user: the directory its TFTP server offers ("" for no server)
    bootfile: str = ""  # user: the boot file name its DHCP replies give
    net: str = "10.0.2.0/24"  # user: the guests' network, then the addresses in it
    host: str = "10.0.2.2"
    dns: str = "10.0.2.3"
    dhcpstart: str = "10.0.2.15"
    restrict: bool = False  # user: the guest reaches nothing outside but forwarded ports
    hostname: str = ""  # user: the host name DHCP gives the guest


@dataclass(frozen=True)
class Nic:
    """One NIC of the machine (only ``e1000``) and the back end it is cabled to."""

    netdev: Netdev
    mac: bytes | None = None
    model: str = "e1000"
    romfile: str = ""  # an option ROM for it (a PXE ROM), run by the BIOS's ROM scan


@dataclass
class NetStats:
    sent: int = 0
    received: int = 0
    dropped_rx: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _options(spec: str, what: str) -> tuple[str, list[tuple[str, str]]]:
    head, *rest = spec.split(",")
    opts = []
    for part in rest:
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"{what}: expected key=value, got {part!r}")
        opts.append((key, value))
    return head, opts


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: expected [HOST]:PORT, got {text!r}")
    return host, int(port)


def _parse_hostfwd(text: str) -> tuple[str, str, int, str, int]:
    """``tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`` (QEMU's form)."""
    proto, colon, rest = text.partition(":")
    host, dash, guest = rest.partition("-")
    if proto not in ("tcp", "udp") or not colon or not dash:
        raise ValueError(f"hostfwd: expected tcp::HOSTPORT-:GUESTPORT, got {text!r}")
    haddr, hport = _host_port(host, "hostfwd")
    gaddr, gport = _host_port(guest, "hostfwd")
    for addr in (haddr, gaddr):
        if addr:
            try:
                socket.inet_aton(addr)
            except OSError:
                raise ValueError(f"hostfwd: bad IPv4 address {addr!r}") from None
    return proto, haddr, hport, gaddr, gport


def parse_netdev(spec: str) -> Netdev:
    """QEMU's ``-netdev user,id=n0,...`` / ``-netdev socket,id=n0,listen=:PORT``."""
    kind, opts = _options(spec, "-netdev")
    if kind not in ("user", "socket", "tap"):
        raise ValueError(f"-netdev: unsupported type {kind!r} (user, socket or tap)")
    return _netdev(kind, opts, "-netdev", need_id=True)


def _netdev(kind: str, opts: list[tuple[str, str]], what: str, *, need_id: bool,
            default_id: str = "") -> Netdev:
    allowed = {"user": {"id", "hostfwd", *USER_OPTIONS}, "socket": {"id", "listen", "connect"},
               "tap": {"id", "ifname", "script", "downscript"}}[kind]
    ident = default_id
    tap: dict[str, Any] = {}
    user: dict[str, str] = {}
    hostfwd: list[tuple[str, str, int, str, int]] = []
    listen = connect = None
    for key, value in opts:
        if key not in allowed:
            raise ValueError(f"{what}: unknown option {key!r} for {kind}")
        if key == "id":
            ident = value
        elif key == "hostfwd":
            hostfwd.append(_parse_hostfwd(value))
        elif key == "listen":
            listen = _host_port(value, f"{what} listen")
        elif key == "connect":
            connect = _host_port(value, f"{what} connect")
        elif key in USER_OPTIONS:
            user[key] = value
        else:
            tap[key] = _tap_option(key, value, what)
    if need_id and not ident:
        raise ValueError(f"{what} {kind} needs id=NAME")
    if kind == "socket" and (listen is None) == (connect is None):
        raise ValueError(f"{what} socket needs exactly one of listen=[HOST]:PORT, connect=[HOST]:PORT")
    return Netdev(kind, ident, tuple(hostfwd), listen, connect, **tap,
                  **(_user_options(user, f"{what} user") if kind == "user" else {}))


USER_OPTIONS = ("tftp", "bootfile", "net", "host", "dns", "dhcpstart", "restrict", "hostname")


def _user_options(given: dict[str, str], what: str) -> dict[str, Any]:
    """QEMU's ``-netdev user`` options, checked; the addresses default from ``net`` as QEMU
    derives them (host .2, DNS .3, DHCP from .15)."""
    out: dict[str, Any] = {}
    if "tftp" in given:
        if not os.path.isdir(given["tftp"]):
            raise ValueError(f"{what}: tftp={given['tftp']!r} is not a directory")
        out["tftp"] = os.path.abspath(given["tftp"])
    for key in ("bootfile", "hostname"):
        if key in given:
            value = given[key]
            if not value or "\0" in value or len(value.encode()) > 127 or not value.isprintable():
                raise ValueError(f"{what}: bad {key} {value!r} (1 to 127 printable bytes)")
            out[key] = value
    if "restrict" in given:
        from qemu_lite.pc import parse_bool  # QEMU's spellings (pc imports this module)

        try:
            out["restrict"] = parse_bool("restrict", given["restrict"], what)
        except ValueError:
            raise ValueError(f"{what}: restrict must be on or off, "
                             f"not {given['restrict']!r}") from None
    try:
        spec = given.get("net", "10.0.2.0/24")
        net = ipaddress.IPv4Network(spec if "/" in spec else spec + "/24")
    except ValueError as exc:
        raise ValueError(f"{what}: bad net={given.get('net')!r} ({exc})") from None
    if net.prefixlen > 29:
        raise ValueError(f"{what}: net={net} is too small (a /29 at the least)")
    out["net"] = str(net)
    base = int(net.network_address)
    for key, offset in (("host", 2), ("dns", 3), ("dhcpstart", 15)):
        try:
            address = ipaddress.IPv4Address(given.get(key, base + offset))
        except ValueError:
            raise ValueError(f"{what}: bad {key}={given[key]!r}") from None
        if address not in net or address in (net.network_address, net.broadcast_address):
            raise ValueError(f"{what}: {key}={address} is not a host address of {net}")
        out[key] = str(address)
    if len({out["host"], out["dns"], out["dhcpstart"]}) < 3:
        raise ValueError(f"{what}: host, dns and dhcpstart must differ")
    return out


def _tap_option(key: str, value: str, what: str) -> str:
    if key == "ifname":
        if not 0 < len(value.encode()) < IFNAMSIZ or "/" in value or value.strip() != value:
            raise ValueError(f"{what} tap: bad interface name {value!r}")
        return value
    if value == "no":  # script=no / downscript=no: QEMU's way of saying "none"
        return ""
    if not value:
        raise ValueError(f"{what} tap: {key}= needs a path or 'no'")
    return value


def parse_nic_device(spec: str, netdevs: dict[str, Netdev]) -> Nic:
    """``-device e1000,netdev=ID[,mac=52:54:00:12:34:56][,romfile=FILE]``."""
    from .e1000 import parse_mac

    model, opts = _options(spec, "-device")
    if model != "e1000":
        raise ValueError(f"-device: unsupported device {model!r} (only e1000)")
    values = dict(opts)
    unknown = set(values) - {"netdev", "mac", "romfile"}
    if unknown:
        raise ValueError(f"-device e1000: unknown option {sorted(unknown)[0]!r}")
    if "netdev" not in values:
        raise ValueError("-device e1000 needs netdev=ID")
    if values["netdev"] not in netdevs:
        raise ValueError(f"-device e1000: no -netdev with id={values['netdev']}")
    mac = parse_mac(values["mac"]) if "mac" in values else None
    return Nic(netdevs[values["netdev"]], mac, romfile=values.get("romfile", ""))


def parse_nic(spec: str) -> Nic:
    """The short ``-nic user[,hostfwd=...][,mac=...][,model=e1000]`` (also socket and tap)."""
    from .e1000 import parse_mac

    kind, opts = _options(spec, "-nic")
    if kind not in ("user", "socket", "tap"):
        raise ValueError(f"-nic: unsupported type {kind!r} (user, socket or tap)")
    mac = None
    rest = []
    for key, value in opts:
        if key == "mac":
            mac = parse_mac(value)
        elif key == "model":
            if value != "e1000":
                raise ValueError(f"-nic: unsupported model {value!r} (only e1000)")
        else:
            rest.append((key, value))
    return Nic(_netdev(kind, rest, "-nic", need_id=False, default_id="nic0"), mac)


# -- pcap ------------------------------------------------------------------------------


class PcapWriter:
    """Frames to a libpcap file (microsecond timestamps, Ethernet), from any thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file: BinaryIO | None = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        self._file.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, PCAP_SNAPLEN,
                                     PCAP_LINKTYPE_ETHERNET))
        self._file.flush()

    def write(self, frame: bytes) -> None:
        now = time.time_ns() // 1000
        data = frame[:PCAP_SNAPLEN]
        with self._lock:
            if self._file is None:
                return
            self._file.write(struct.pack("<IIII", now // 1_000_000, now % 1_000_000,
                                         len(data), len(frame)) + data)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# -- back ends -------------------------------------------------------------------------


class NetBackend:
    """Base: the two bounded queues, the dump hook and the poller thread's life."""

    name = "net"

    def __init__(self) -> None:
        self.notify: Callable[[], None] | None = None
        self.dump: PcapWriter | None = None
        self.stats = NetStats()
        self._tx: deque[bytes] = deque()
        self._tx_full = False  # the NIC was refused: wake it once the queue drains
        self._rx: deque[bytes] = deque()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the NIC's side (vCPU thread) --

    def send(self, frame: bytes) -> bool:
        if len(self._tx) >= TX_QUEUE_LIMIT:
            self._tx_full = True
            return False
        if self.dump is not None:
            self.dump.write(frame)
        self._tx.append(frame)
        self.stats.sent += 1
        self._kick()
        return True

    def receive(self) -> bytes | None:
        try:
            return self._rx.popleft()
        except IndexError:
            return None

    # -- the poller thread's side --

    def _deliver(self, frame: bytes) -> None:
        if len(self._rx) >= RX_QUEUE_LIMIT:
            self.stats.dropped_rx += 1  # the guest is not keeping up: drop, as a switch would
            return
        if self.dump is not None:
            self.dump.write(frame)
        self._rx.append(frame)
        self.stats.received += 1
        notify = self.notify
        if notify is not None:
            notify()

    def _kick(self) -> None:
        """Wake the poller thread: frames are waiting in the transmit queue."""

    def _take_tx(self) -> bytes | None:
        """Poller thread: the next frame from the guest; wakes a NIC the full queue held back."""
        try:
            return self._tx.popleft()
        except IndexError:
            if self._tx_full:
                self._tx_full = False
                if self.notify is not None:
                    self.notify()
            return None

    def _start(self, run: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=run, name=f"qemu-lite-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._kick()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


class UserBackend(NetBackend):
    """``-netdev user``: libslirp, owned by the poller thread."""

    name = "net-user"

    def __init__(self, netdev: Netdev) -> None:
        super().__init__()
        from .slirp import Slirp

        self.slirp = Slirp(self._deliver, net=netdev.net, host=netdev.host, dns=netdev.dns,
                           dhcp_start=netdev.dhcpstart, restrict=netdev.restrict,
                           hostname=netdev.hostname, tftp=netdev.tftp, bootfile=netdev.bootfile)
        try:
            for proto, haddr, hport, gaddr, gport in netdev.hostfwd:
                self.slirp.add_hostfwd(proto == "udp", haddr, hport, gaddr or None, gport)
        except OSError:
            self.slirp.close()
            raise
        self._start(self._run)

    def _kick(self) -> None:
        self.slirp.kick()

    def _run(self) -> None:
        slirp = self.slirp
        try:
            while not self._closed.is_set():
                while (frame := self._take_tx()) is not None:
                    slirp.input(frame)
                slirp.poll_once(1000)
        finally:
            slirp.close()

    def close(self) -> None:
        self._closed.set()
        self.slirp.kick()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


class SocketBackend(NetBackend):
    """``-netdev socket,listen=`` / ``connect=``: one TCP peer, QEMU's stream framing.

    With ``listen`` the machine starts at once and the first peer to connect
    is cabled in (a later one once it hangs up); until then, frames sent are
    dropped.  ``connect`` needs the peer listening already (as QEMU)."""

    name = "net-socket"

    def __init__(self, netdev: Netdev) -> None:
        super().__init__()
        self._wake = WakePipe()
        self._listener: socket.socket | None = None
        self._peer: socket.socket | None = None
        try:
            if netdev.listen is not None:
                host, port = netdev.listen
                self._listener = socket.create_server((host or "0.0.0.0", port))
            else:
                assert netdev.connect is not None
                host, port = netdev.connect
                self._peer = socket.create_connection((host or "127.0.0.1", port), timeout=10)
                self._peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._peer.setblocking(False)
        except OSError as exc:
            self._close_fds()
            where = f"listen on {netdev.listen}" if netdev.listen else f"connect to {netdev.connect}"
            raise OSError(f"-netdev socket: cannot {where}: {exc.strerror or exc}") from None
        self._start(self._run)

    def send(self, frame: bytes) -> bool:
        if self._peer is None:
            return True  # no cable yet: the frame is lost on the wire
        return super().send(frame)

    def _kick(self) -> None:
        self._wake.kick()

    def _run(self) -> None:
        inbuf = bytearray()
        outbuf = bytearray()
        try:
            while not self._closed.is_set():
                peer = self._peer
                while len(outbuf) < (1 << 20) and (frame := self._take_tx()) is not None:
                    outbuf += struct.pack(">I", len(frame)) + frame
                rlist: list[int | socket.socket] = [self._wake.read_fd]
                wlist: list[socket.socket] = []
                if peer is not None:
                    rlist.append(peer)
                    if outbuf:
                        wlist.append(peer)
                elif self._listener is not None:
                    rlist.append(self._listener)
                else:
                    return  # connect= peer gone
                readable, writable, _ = select.select(rlist, wlist, [])
                if self._wake.read_fd in readable:
                    self._wake.drain()
                if self._listener is not None and self._listener in readable:
                    conn, _ = self._listener.accept()
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn.setblocking(False)
                    self._peer = conn
                    inbuf.clear()
                    outbuf.clear()
                    continue
                if peer is None:
                    continue
                if peer in writable:
                    try:
                        del outbuf[:peer.send(outbuf)]
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._hang_up()
                        continue
                if peer in readable:
                    try:
                        data = peer.recv(1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self._hang_up()
                        continue
                    inbuf += data
                    if not self._frames(inbuf):
                        self._hang_up()  # a length the framing cannot carry: a broken peer
        finally:
            self._close_fds()

    def _frames(self, inbuf: bytearray) -> bool:
        while len(inbuf) >= 4:
            length = int.from_bytes(inbuf[:4], "big")
            if length > MAX_FRAME:
                return False
            if len(inbuf) < 4 + length:
                break
            frame = bytes(inbuf[4:4 + length])
            del inbuf[:4 + length]
            self._deliver(frame)
        return True

    def _hang_up(self) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()
        self._tx.clear()

    def _close_fds(self) -> None:
        for sock in (self._peer, self._listener):
            if sock is not None:
                sock.close()
        self._peer = self._listener = None
        self._wake.close()


class TapBackend(NetBackend):
    """``-netdev tap``: a Linux tap interface, one Ethernet frame per read() and write().

    Creating an interface needs CAP_NET_ADMIN; attaching to a persistent one
    (``ip tuntap add NAME mode tap user ME``) does not.  ``script=PATH`` runs
    ``PATH IFNAME`` once the interface exists (to bring it up, address it or
    bridge it) and ``downscript=PATH`` at close, as QEMU does; unlike QEMU the
    default is no script (QEMU's is /etc/qemu-ifup)."""

    name = "net-tap"

    def __init__(self, netdev: Netdev) -> None:
        import fcntl

        super().__init__()
        self._downscript = netdev.downscript
        self._wake = WakePipe()
        try:
            self._fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self._wake.close()
            raise OSError(f"-netdev tap: cannot open /dev/net/tun: {exc.strerror}") from None
        try:
            request = struct.pack("16sH", netdev.ifname.encode(), IFF_TAP | IFF_NO_PI)
            reply = fcntl.ioctl(self._fd, TUNSETIFF, request)
        except OSError as exc:
            self._close_fds()
            hint = " (creating one needs CAP_NET_ADMIN)" if exc.errno == 1 else ""
            raise OSError(f"-netdev tap: cannot attach {netdev.ifname or 'a new tap'}: "
                          f"{exc.strerror}{hint}") from None
        self.ifname = reply[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        if netdev.script:
            try:
                _run_script(netdev.script, self.ifname)
            except OSError:
                self._close_fds()
                raise
        self._start(self._run)

    def _kick(self) -> None:
        self._wake.kick()

    def _run(self) -> None:
        pending: bytes | None = None
        try:
            while not self._closed.is_set():
                if pending is None:
                    pending = self._take_tx()
                wlist = [self._fd] if pending is not None else []
                readable, writable, _ = select.select([self._fd, self._wake.read_fd], wlist, [])
                if self._wake.read_fd in readable:
                    self._wake.drain()
                if pending is not None and self._fd in writable:
                    try:
                        os.write(self._fd, pending)
                        pending = None
                    except BlockingIOError:
                        pass
                    except OSError:
                        pending = None  # the kernel refused this frame (too big, link down)
                if self._fd in readable:
                    self._read_frames()
        finally:
            self._close_fds()

    def _read_frames(self) -> None:
        for _ in range(64):  # then look at the transmit side again
            try:
                frame = os.read(self._fd, MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not frame:
                return
            self._deliver(frame)

    def _close_fds(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        self._wake.close()

    def close(self) -> None:
        super().close()
        if self._downscript and hasattr(self, "ifname"):
            try:
                _run_script(self._downscript, self.ifname)
            except OSError:
                pass  # the machine is going away; the script's failure is its own message
            self._downscript = ""


def _run_script(path: str, ifname: str) -> None:
    import subprocess

    try:
        done = subprocess.run([path, ifname], check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"-netdev tap: network script {path}: {exc}") from None
    if done.returncode != 0:
        raise OSError(f"-netdev tap: network script {path} {ifname} failed "
                      f"(exit status {done.returncode})")


def open_netdev(netdev: Netdev) -> NetBackend:
    """Start the back end of a parsed ``-netdev``; OSError or SlirpMissing on failure."""
    if netdev.kind == "user":
        return UserBackend(netdev)
    if netdev.kind == "tap":
        return TapBackend(netdev)
    return SocketBackend(netdev)
