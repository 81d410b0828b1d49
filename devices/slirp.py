"""A ctypes binding of libslirp (the user-mode TCP/IP stack QEMU uses), as much as we call.

The declarations follow ``<slirp/libslirp.h>`` of libslirp 4.x (SlirpConfig
version 4).  Only the thread that owns a :class:`Slirp` may call it: libslirp
is not thread-safe, and every callback runs inside one of its calls.

:class:`Slirp` wraps one stack: ``send_packet`` receives each Ethernet frame
the stack sends towards the guest; :meth:`Slirp.input` feeds it a frame from
the guest; :meth:`Slirp.poll_once` waits (up to a timeout, or until
:meth:`Slirp.kick`) for its sockets and timers and services them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Callable

SLIRP_CONFIG_VERSION = 4
SLIRP_POLL_IN, SLIRP_POLL_OUT, SLIRP_POLL_PRI, SLIRP_POLL_ERR, SLIRP_POLL_HUP = 1, 2, 4, 8, 16

_POLL_TO_SLIRP = ((select.POLLIN, SLIRP_POLL_IN), (select.POLLOUT, SLIRP_POLL_OUT),
                  (select.POLLPRI, SLIRP_POLL_PRI), (select.POLLERR, SLIRP_POLL_ERR),
                  (select.POLLHUP, SLIRP_POLL_HUP))


class WakePipe:
    """A self-pipe that wakes a thread sleeping in poll(); safe to kick after close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._open = True

    def kick(self) -> None:
        with self._lock:
            if self._open:
                try:
                    os.write(self._write_fd, b"\0")
                except BlockingIOError:
                    pass  # a wake-up is pending already

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                os.close(self.read_fd)
                os.close(self._write_fd)


class SlirpMissing(RuntimeError):
    """libslirp is not installed (Debian: libslirp0)."""


class InAddr(ctypes.Structure):
    _fields_ = [("s_addr", ctypes.c_uint32)]  # network byte order


class In6Addr(ctypes.Structure):
    _fields_ = [("s6_addr32", ctypes.c_uint32 * 4)]


def in_addr(text: str) -> InAddr:
    return InAddr(int.from_bytes(socket.inet_aton(text), "little"))


class SlirpConfig(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("restricted", ctypes.c_int),
        ("in_enabled", ctypes.c_bool),
        ("vnetwork", InAddr),
        ("vnetmask", InAddr),
        ("vhost", InAddr),
        ("in6_enabled", ctypes.c_bool),
        ("vprefix_addr6", In6Addr),
        ("vprefix_len", ctypes.c_uint8),
        ("vhost6", In6Addr),
        ("vhostname", ctypes.c_char_p),
        ("tftp_server_name", ctypes.c_char_p),
        ("tftp_path", ctypes.c_char_p),
        ("bootfile", ctypes.c_char_p),
        ("vdhcp_start", InAddr),
        ("vnameserver", InAddr),
        ("vnameserver6", In6Addr),
        ("vdnssearch", ctypes.POINTER(ctypes.c_char_p)),
        ("vdomainname", ctypes.c_char_p),
        ("if_mtu", ctypes.c_size_t),
        ("if_mru", ctypes.c_size_t),
        ("disable_host_loopback", ctypes.c_bool),
        ("enable_emu", ctypes.c_bool),
        ("outbound_addr", ctypes.c_void_p),
        ("outbound_addr6", ctypes.c_void_p),
        ("disable_dns", ctypes.c_bool),
        ("disable_dhcp", ctypes.c_bool),
    ]


_SEND_PACKET = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_size_t,
                                ctypes.c_void_p)
_GUEST_ERROR = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)
_CLOCK_GET_NS = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)
_TIMER_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_TIMER_NEW = ctypes.CFUNCTYPE(ctypes.c_void_p, _TIMER_CB, ctypes.c_void_p, ctypes.c_void_p)
_TIMER_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_TIMER_MOD = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
_FD_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)
_NOTIFY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_INIT_COMPLETED = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_TIMER_NEW_OPAQUE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                     ctypes.c_void_p)
_ADD_POLL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_GET_REVENTS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


class SlirpCb(ctypes.Structure):
    _fields_ = [
        ("send_packet", _SEND_PACKET),
        ("guest_error", _GUEST_ERROR),
        ("clock_get_ns", _CLOCK_GET_NS),
        ("timer_new", _TIMER_NEW),
        ("timer_free", _TIMER_FREE),
        ("timer_mod", _TIMER_MOD),
        ("register_poll_fd", _FD_CB),
        ("unregister_poll_fd", _FD_CB),
        ("notify", _NOTIFY),
        ("init_completed", _INIT_COMPLETED),
        ("timer_new_opaque", _TIMER_NEW_OPAQUE),
    ]


_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """libslirp.so.0, with the prototypes we use declared."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("slirp") or "libslirp.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise SlirpMissing("libslirp is not installed (apt-get install libslirp0)") from None
    lib.slirp_new.restype = ctypes.c_void_p
    lib.slirp_new.argtypes = [ctypes.POINTER(SlirpConfig), ctypes.POINTER(SlirpCb),
                              ctypes.c_void_p]
    lib.slirp_cleanup.argtypes = [ctypes.c_void_p]
    lib.slirp_input.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.slirp_pollfds_fill.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                       _ADD_POLL, ctypes.c_void_p]
    lib.slirp_pollfds_poll.argtypes = [ctypes.c_void_p, ctypes.c_int, _GET_REVENTS,
                                       ctypes.c_void_p]
    lib.slirp_handle_timer.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.slirp_add_hostfwd.argtypes = [ctypes.c_void_p, ctypes.c_int, InAddr, ctypes.c_int,
                                      InAddr, ctypes.c_int]
    lib.slirp_version_string.restype = ctypes.c_char_p
    _lib = lib
    return lib


class Slirp:
    """One user-mode network: 10.0.2.0/24, host 10.0.2.2, DNS 10.0.2.3, DHCP from 10.0.2.15
    unless told otherwise; with ``tftp``, the host also serves that directory over TFTP
    (read only, as libslirp's server is), and DHCP names ``bootfile`` and ``hostname``;
    ``restrict`` keeps the guest from reaching anything but the forwarded ports."""

    def __init__(self, send_packet: Callable[[bytes], None], *, net: str = "10.0.2.0/24",
                 host: str = "10.0.2.2", dns: str = "10.0.2.3",
                 dhcp_start: str = "10.0.2.15", tftp: str = "", bootfile: str = "",
                 restrict: bool = False, hostname: str = "",
                 guest_error: Callable[[str], None] | None = None) -> None:
        lib = library()
        network = ipaddress.IPv4Network(net)
        self._lib = lib
        self._send_packet = send_packet
        self._guest_error = guest_error
        self.dhcp_start = dhcp_start
        self._timers: dict[int, tuple[int, int | None, int]] = {}  # handle: (id, deadline_ms, opaque)
        self._timer_ids = iter(range(1, 1 << 62))
        self._fds: list[tuple[int, int]] = []
        self._revents: list[int] = []
        self._wake = WakePipe()
        # The callbacks must outlive the stack: keep them on the instance.
        self._cb = SlirpCb(
            send_packet=_SEND_PACKET(self._on_send_packet),
            guest_error=_GUEST_ERROR(self._on_guest_error),
            clock_get_ns=_CLOCK_GET_NS(lambda _opaque: time.monotonic_ns()),
            timer_new=_TIMER_NEW(self._on_timer_new),
            timer_free=_TIMER_FREE(self._on_timer_free),
            timer_mod=_TIMER_MOD(self._on_timer_mod),
            register_poll_fd=_FD_CB(lambda _fd, _opaque: None),
            unregister_poll_fd=_FD_CB(lambda _fd, _opaque: None),
            notify=_NOTIFY(lambda _opaque: self.kick()),
            init_completed=_INIT_COMPLETED(lambda _slirp, _opaque: None),
            timer_new_opaque=_TIMER_NEW_OPAQUE(self._on_timer_new_opaque),
        )
        self._add_poll = _ADD_POLL(self._on_add_poll)
        self._get_revents = _GET_REVENTS(self._on_get_revents)
        # libslirp keeps the strings' pointers: the bytes live as long as the instance.
        self._tftp = os.fsencode(tftp) if tftp else None
        self._bootfile = bootfile.encode() if bootfile else None
        self._hostname = hostname.encode() if hostname else None
        self._cfg = SlirpConfig(
            version=SLIRP_CONFIG_VERSION, restricted=int(restrict), in_enabled=True,
            vnetwork=in_addr(str(network.network_address)),
            vnetmask=in_addr(str(network.netmask)), vhost=in_addr(host), in6_enabled=False,
            vdhcp_start=in_addr(dhcp_start), vnameserver=in_addr(dns),
            tftp_path=self._tftp, bootfile=self._bootfile, vhostname=self._hostname)
        self._callback_timers: dict[int, tuple[object, int]] = {}
        handle = lib.slirp_new(ctypes.byref(self._cfg), ctypes.byref(self._cb), None)
        if not handle:
            raise RuntimeError("libslirp refused the network configuration")
        self._slirp: int | None = handle

    @staticmethod
    def version() -> str:
        return library().slirp_version_string().decode()

    # -- callbacks (inside libslirp calls, on the owning thread) -------------------------

    def _on_send_packet(self, buf: int, length: int, _opaque: int) -> int:
        self._send_packet(ctypes.string_at(buf, length))
        return length

    def _on_guest_error(self, msg: bytes, _opaque: int) -> None:
        if self._guest_error is not None:
            self._guest_error(msg.decode(errors="replace"))

    def _on_timer_new_opaque(self, timer_id: int, cb_opaque: int, _opaque: int) -> int:
        handle = next(self._timer_ids)
        self._timers[handle] = (timer_id, None, cb_opaque or 0)
        return handle

    def _on_timer_new(self, cb: object, cb_opaque: int, _opaque: int) -> int:
        handle = next(self._timer_ids)
        self._timers[handle] = (-1, None, cb_opaque or 0)
        self._callback_timers[handle] = (cb, cb_opaque or 0)
        return handle

    def _on_timer_free(self, handle: int, _opaque: int) -> None:
        self._timers.pop(handle, None)
        self._callback_timers.pop(handle, None)

    def _on_timer_mod(self, handle: int, expire_ms: int, _opaque: int) -> None:
        if handle in self._timers:
            timer_id, _, cb_opaque = self._timers[handle]
            self._timers[handle] = (timer_id, expire_ms, cb_opaque)

    def _on_add_poll(self, fd: int, events: int, _opaque: int) -> int:
        self._fds.append((fd, events))
        return len(self._fds) - 1

    def _on_get_revents(self, index: int, _opaque: int) -> int:
        return self._revents[index] if 0 <= index < len(self._revents) else 0

    # -- the owning thread's calls -------------------------------------------------------

    def input(self, frame: bytes) -> None:
        """A frame from the guest."""
        if self._slirp is not None:
            self._lib.slirp_input(self._slirp, frame, len(frame))

    def add_hostfwd(self, udp: bool, host_addr: str, host_port: int, guest_addr: str | None,
                    guest_port: int) -> None:
        """Forward host_addr:host_port on the host to the guest (its DHCP address by default)."""
        assert self._slirp is not None
        status = self._lib.slirp_add_hostfwd(self._slirp, int(udp), in_addr(host_addr or "0.0.0.0"),
                                             host_port, in_addr(guest_addr or self.dhcp_start),
                                             guest_port)
        if status < 0:
            proto = "udp" if udp else "tcp"
            raise OSError(f"hostfwd {proto}:{host_addr}:{host_port}: cannot listen there "
                          "(port in use?)")

    def kick(self) -> None:
        """Wake :meth:`poll_once` (any thread)."""
        self._wake.kick()

    def poll_once(self, max_timeout_ms: int) -> None:
        """Sleep until a socket is ready, a timer is due, :meth:`kick` or the timeout;
        then let libslirp service what happened."""
        if self._slirp is None:
            return
        self._fds = []
        timeout = ctypes.c_uint32(max_timeout_ms)
        self._lib.slirp_pollfds_fill(self._slirp, ctypes.byref(timeout), self._add_poll, None)
        wait_ms = int(timeout.value)
        now_ms = time.monotonic_ns() // 1_000_000
        for _, deadline, _ in self._timers.values():
            if deadline is not None:
                wait_ms = max(0, min(wait_ms, deadline - now_ms))
        poller = select.poll()
        for fd, events in self._fds:
            mask = 0
            for poll_bit, slirp_bit in _POLL_TO_SLIRP:
                if events & slirp_bit:
                    mask |= poll_bit
            poller.register(fd, mask)
        poller.register(self._wake.read_fd, select.POLLIN)
        ready = dict(poller.poll(wait_ms))
        if self._wake.read_fd in ready:
            self._wake.drain()
        self._revents = []
        for fd, _ in self._fds:
            got = ready.get(fd, 0)
            self._revents.append(sum(slirp_bit for poll_bit, slirp_bit in _POLL_TO_SLIRP
                                     if got & poll_bit))
        self._lib.slirp_pollfds_poll(self._slirp, 0, self._get_revents, None)
        self._run_timers()

    def _run_timers(self) -> None:
        now_ms = time.monotonic_ns() // 1_000_000
        for handle, (timer_id, deadline, cb_opaque) in list(self._timers.items()):
            if deadline is None or deadline > now_ms or handle not in self._timers:
                continue
            self._timers[handle] = (timer_id, None, cb_opaque)
            if handle in self._callback_timers:
                cb, opaque = self._callback_timers[handle]
                cb(opaque)  # type: ignore[operator]
            else:
                self._lib.slirp_handle_timer(self._slirp, timer_id, cb_opaque or None)

    def close(self) -> None:
        if self._slirp is not None:
            self._lib.slirp_cleanup(self._slirp)
            self._slirp = None
        self._wake.close()
