"""Network back ends alone: libslirp's DHCP, QEMU's socket framing, the pcap dump, parsing."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from qemu_lite.devices import netbackends as nb
from qemu_lite.devices.e1000 import checksum16
from qemu_lite.devices.slirp import SlirpMissing

MAC = bytes.fromhex("525400123456")


def wait_for(backend: nb.NetBackend, seconds: float = 5.0) -> bytes:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = backend.receive()
        if frame is not None:
            return frame
        time.sleep(0.01)
    raise AssertionError("no frame arrived")


def dhcp_discover(xid: int = 0x1234ABCD) -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128sI", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4),
                        bytes(4), bytes(4), bytes(4), MAC + bytes(10), b"", b"", 0x63825363)
    bootp += bytes([53, 1, 1, 255])
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                               bytes(4), b"\xff" * 4))
    ip[10:12] = (~checksum16(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
    return b"\xff" * 6 + MAC + b"\x08\x00" + bytes(ip) + udp


def user_backend() -> nb.NetBackend:
    try:
        return nb.open_netdev(nb.parse_netdev("user,id=n0"))
    except SlirpMissing as exc:
        pytest.skip(str(exc))


def test_user_backend_answers_dhcp_discover_with_10_0_2_15(tmp_path):
    backend = user_backend()
    woken = []
    backend.notify = lambda: woken.append(1)
    backend.dump = nb.PcapWriter(tmp_path / "dhcp.pcap")
    try:
        assert backend.send(dhcp_discover())
        offer = wait_for(backend)
    finally:
        backend.close()
        backend.dump.close()
    assert offer[0:6] in (MAC, b"\xff" * 6) and offer[12:14] == b"\x08\x00"
    ip_header_len = (offer[14] & 0xF) * 4
    bootp = offer[14 + ip_header_len + 8:]
    assert bootp[0] == 2 and bootp[4:8] == (0x1234ABCD).to_bytes(4, "big")
    assert socket.inet_ntoa(bootp[16:20]) == "10.0.2.15"  # yiaddr
    assert woken
    tcpdump = shutil.which("tcpdump")
    if tcpdump:
        out = subprocess.run([tcpdump, "-n", "-r", str(tmp_path / "dhcp.pcap")],
                             capture_output=True, text=True).stdout
        assert "BOOTP/DHCP, Request" in out and "BOOTP/DHCP, Reply" in out


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                               socket.inet_aton(src), socket.inet_aton(dst)))
    ip[10:12] = (~checksum16(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
    return SLIRP_MAC + MAC + b"\x08\x00" + bytes(ip) + udp


SLIRP_MAC = bytes.fromhex("525502020202")  # libslirp's 10.0.2.2


def next_udp(backend: nb.NetBackend) -> bytes:
    """The next UDP payload to the guest, answering libslirp's ARP for 10.0.2.15 on the way."""
    while True:
        frame = wait_for(backend)
        if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x01":  # ARP request
            reply = (frame[6:12] + MAC + b"\x08\x06" + frame[14:20] + b"\x00\x02" + MAC
                     + frame[38:42] + frame[22:28] + frame[28:32])
            backend.send(reply)
            continue
        if frame[12:14] == b"\x08\x00" and frame[23] == 17:
            return frame[14 + (frame[14] & 0xF) * 4 + 8:]


def test_user_backend_serves_tftp_and_offers_the_bootfile(tmp_path):
    (tmp_path / "boot.ipxe").write_bytes(b"#!ipxe\necho hi\n")
    try:
        backend = nb.open_netdev(nb.parse_netdev(
            f"user,id=n0,tftp={tmp_path},bootfile=boot.ipxe"))
    except SlirpMissing as exc:
        pytest.skip(str(exc))
    try:
        assert backend.send(dhcp_discover())
        offer = next_udp(backend)
        assert offer[108:236].rstrip(b"\0") == b"boot.ipxe"  # BOOTP's file field
        rrq = b"\x00\x01boot.ipxe\x00octet\x00"
        backend.send(udp_frame("10.0.2.15", "10.0.2.2", 2000, 69, rrq))
        data = next_udp(backend)
        assert data[:4] == b"\x00\x03\x00\x01" and data[4:] == b"#!ipxe\necho hi\n"
        backend.send(udp_frame("10.0.2.15", "10.0.2.2", 2000, 69, b"\x00\x01nope\x00octet\x00"))
        error = next_udp(backend)
        assert error[:2] == b"\x00\x05"  # TFTP ERROR: no such file
    finally:
        backend.close()


def test_user_network_addresses_and_hostname_are_the_ones_given():
    try:
        backend = nb.open_netdev(nb.parse_netdev(
            "user,id=n0,net=192.168.76.0/24,dhcpstart=192.168.76.9,hostname=qlguest"))
    except SlirpMissing as exc:
        pytest.skip(str(exc))
    try:
        backend.send(dhcp_discover())
        offer = next_udp(backend)
    finally:
        backend.close()
    assert socket.inet_ntoa(offer[16:20]) == "192.168.76.9"  # yiaddr
    options, i = {}, 240
    while i < len(offer) and offer[i] != 255:
        if offer[i] == 0:
            i += 1
            continue
        options[offer[i]] = offer[i + 2:i + 2 + offer[i + 1]]
        i += 2 + offer[i + 1]
    assert socket.inet_ntoa(options[3]) == "192.168.76.2"  # router: the host, net + 2
    assert socket.inet_ntoa(options[6]) == "192.168.76.3"  # DNS, net + 3
    assert options[12] == b"qlguest"  # host name


@pytest.mark.parametrize("restrict", ["off", "on"])
def test_restrict_keeps_the_guest_from_the_host(restrict):
    """A datagram to 10.0.2.2 reaches the host's loopback, unless restrict=on."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(1.0)
    port = listener.getsockname()[1]
    try:
        backend = nb.open_netdev(nb.parse_netdev(f"user,id=n0,restrict={restrict}"))
    except SlirpMissing as exc:
        listener.close()
        pytest.skip(str(exc))
    try:
        backend.send(dhcp_discover())
        next_udp(backend)
        backend.send(udp_frame("10.0.2.15", "10.0.2.2", 3000, port, b"from the guest"))
        try:
            got = listener.recv(64)
        except TimeoutError:
            got = b""
    finally:
        backend.close()
        listener.close()
    assert got == (b"" if restrict == "on" else b"from the guest")


def test_tftp_serves_nothing_outside_its_directory(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (tmp_path / "secret.txt").write_bytes(b"host secret")
    try:
        backend = nb.open_netdev(nb.parse_netdev(f"user,id=n0,tftp={served}"))
    except SlirpMissing as exc:
        pytest.skip(str(exc))
    try:
        backend.send(dhcp_discover())
        next_udp(backend)
        for name in (b"../secret.txt", b"/../secret.txt", b"x/../../secret.txt",
                     str(tmp_path / "secret.txt").encode()):
            backend.send(udp_frame("10.0.2.15", "10.0.2.2", 2002, 69,
                                   b"\x00\x01" + name + b"\x00octet\x00"))
            answer = next_udp(backend)
            assert answer[:2] == b"\x00\x05" and b"host secret" not in answer, (name, answer)
    finally:
        backend.close()


def test_socket_backends_exchange_frames_in_stream_framing():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    a = nb.open_netdev(nb.parse_netdev(f"socket,id=a,listen=127.0.0.1:{port}"))
    b = nb.open_netdev(nb.parse_netdev(f"socket,id=b,connect=127.0.0.1:{port}"))
    try:
        frame = b"\xff" * 6 + MAC + b"\x88\xb5" + bytes(range(200))
        assert b.send(frame)
        assert wait_for(a) == frame
        deadline = time.monotonic() + 5
        while not a.send(frame[::-1]) or a._peer is None:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
        assert wait_for(b) == frame[::-1]
    finally:
        a.close()
        b.close()


def test_socket_framing_is_qemus(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    b = nb.open_netdev(nb.parse_netdev(f"socket,id=b,connect=:{port}"))
    conn, _ = server.accept()
    try:
        b.send(b"frame-one-" + bytes(50))
        header = conn.recv(4)
        assert int.from_bytes(header, "big") == 60
        conn.sendall(struct.pack(">I", 20) + b"x" * 20 + struct.pack(">I", 3))
        conn.sendall(b"abc")
        assert wait_for(b) == b"x" * 20 and wait_for(b) == b"abc"
    finally:
        b.close()
        conn.close()
        server.close()


def test_transmit_queue_is_bounded():
    backend = nb.NetBackend()
    accepted = sum(backend.send(bytes(60)) for _ in range(nb.TX_QUEUE_LIMIT + 10))
    assert accepted == nb.TX_QUEUE_LIMIT


def test_receive_queue_is_bounded():
    backend = nb.NetBackend()
    for _ in range(nb.RX_QUEUE_LIMIT + 5):
        backend._deliver(bytes(60))
    assert backend.stats.dropped_rx == 5


@pytest.mark.parametrize("spec, message", [
    ("vde,id=n0", "unsupported type"),
    ("tap,id=n0,bogus=1", "unknown option"),
    ("tap,id=n0,ifname=" + "x" * 16, "bad interface name"),
    ("tap,id=n0,ifname=a/b", "bad interface name"),
    ("tap,id=n0,script=", "needs a path"),
    ("user", "needs id"),
    ("user,id=n0,hostfwd=tcp::80", "hostfwd"),
    ("user,id=n0,hostfwd=tcp::99999-:80", "hostfwd"),
    ("user,id=n0,bogus=1", "unknown option"),
    ("user,id=n0,tftp=/nonexistent/dir", "not a directory"),
    ("user,id=n0,net=10.0.2.0/30", "too small"),
    ("user,id=n0,net=300.1.1.0/24", "bad net"),
    ("user,id=n0,net=10.0.2.0/24,host=10.0.3.2", "not a host address"),
    ("user,id=n0,dhcpstart=10.0.2.255", "not a host address"),
    ("user,id=n0,dns=10.0.2.2", "must differ"),
    ("user,id=n0,restrict=maybe", "restrict must be on or off"),
    ("user,id=n0,hostname=a\tb", "bad hostname"),
    ("user,id=n0,bootfile=", "bad bootfile"),
    ("user,id=n0,bootfile=" + "x" * 128, "bad bootfile"),
    ("socket,id=n0", "exactly one"),
    ("socket,id=n0,listen=:1,connect=:2", "exactly one"),
    ("socket,id=n0,listen=nope", "HOST"),
])
def test_bad_netdev_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        nb.parse_netdev(spec)


def test_parse_forms():
    netdev = nb.parse_netdev("user,id=n0,hostfwd=tcp::5555-:80,hostfwd=udp:127.0.0.1:53-:53")
    assert netdev.hostfwd == (("tcp", "", 5555, "", 80), ("udp", "127.0.0.1", 53, "", 53))
    nic = nb.parse_nic_device("e1000,netdev=n0,mac=52:54:00:00:00:01", {"n0": netdev})
    assert nic.netdev is netdev and nic.mac == bytes.fromhex("525400000001")
    with pytest.raises(ValueError, match="no -netdev"):
        nb.parse_nic_device("e1000,netdev=n1", {"n0": netdev})
    with pytest.raises(ValueError, match="only e1000"):
        nb.parse_nic_device("rtl8139,netdev=n0", {"n0": netdev})
    custom = nb.parse_netdev("user,id=n0,net=172.20.0.0/16,restrict=on")
    assert (custom.net, custom.host, custom.dns, custom.dhcpstart, custom.restrict) == (
        "172.20.0.0/16", "172.20.0.2", "172.20.0.3", "172.20.0.15", True)  # QEMU's defaults
    served = nb.parse_netdev("user,id=n0,tftp=.,bootfile=pxelinux.0")
    assert served.tftp == os.getcwd() and served.bootfile == "pxelinux.0"
    short = nb.parse_nic("user,hostfwd=tcp::2222-:22,model=e1000")
    assert short.netdev.kind == "user" and short.netdev.hostfwd[0][2] == 2222


def test_connect_refused_is_a_clear_error():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    with pytest.raises(OSError, match="cannot connect"):
        nb.open_netdev(nb.parse_netdev(f"socket,id=n0,connect=127.0.0.1:{port}"))


@pytest.mark.parametrize("args, message", [
    (["--nic", "user,hostfwd=tcp::99999-:80"], "hostfwd"),
    (["--netdev", "user,id=n0"], "not used by any -device"),
    (["--device", "e1000,netdev=n9"], "no -netdev with id=n9"),
    (["--nic", "user", "--device", "e1000,netdev=n0", "--netdev", "user,id=n0"], "only one NIC"),
    (["--nic", "user", "--kernel", "/nonexistent/vmlinuz"], "cannot open kernel"),
])
def test_cli_network_errors_are_one_line_and_open_no_dump(tmp_path, args, message):
    dump = tmp_path / "out.pcap"
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", *args, "--net-dump", str(dump),
                           "--timeout", "1"], capture_output=True, text=True, timeout=60,
                          cwd="/")  # from the checkout, -m would import the source tree
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not dump.exists()  # outputs open only after every input was accepted


def test_a_refused_sender_is_woken_when_the_queue_drains():
    backend = nb.NetBackend()
    woken = []
    backend.notify = lambda: woken.append(1)
    while backend.send(bytes(60)):
        pass
    while backend._take_tx() is not None:
        pass
    assert woken == [1]


def _tap_or_skip() -> nb.NetBackend:
    if shutil.which("ip") is None:
        pytest.skip("the ip command is missing: apt-get install iproute2")
    try:
        return nb.open_netdev(nb.parse_netdev("tap,id=t0"))
    except OSError as exc:
        pytest.skip(f"no tap interfaces on this host: {exc}")


def _arp_request(src_mac: bytes, src_ip: bytes, dst_ip: bytes) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src_mac, src_ip, bytes(6), dst_ip)
    return b"\xff" * 6 + src_mac + b"\x08\x06" + arp


def test_tap_backend_carries_frames_to_the_host_kernel_and_back():
    """An ARP request for the host's address on the tap gets the host kernel's reply."""
    import random

    backend = _tap_or_skip()
    ifname = backend.ifname  # type: ignore[attr-defined]
    third = random.randrange(256)
    host_ip, guest_ip = bytes([10, 214, third, 1]), bytes([10, 214, third, 2])
    try:
        subprocess.run(["ip", "addr", "add", f"{socket.inet_ntoa(host_ip)}/24", "dev", ifname],
                       check=True)
        subprocess.run(["ip", "link", "set", ifname, "up"], check=True)
        deadline = time.monotonic() + 10
        reply = None
        while reply is None and time.monotonic() < deadline:
            backend.send(_arp_request(MAC, guest_ip, host_ip))
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                frame = backend.receive()
                if frame is not None and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\0\2":
                    reply = frame
                    break
                time.sleep(0.01)
    finally:
        backend.close()
    assert reply is not None, "the host kernel never answered ARP on the tap"
    assert reply[0:6] == MAC and reply[28:32] == host_ip and reply[38:42] == guest_ip
    assert not os.path.exists(f"/sys/class/net/{ifname}"), "closing the back end left the tap"


def test_tap_script_failure_is_a_one_line_error(tmp_path):
    _tap_or_skip().close()
    script = tmp_path / "fail"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(OSError, match="failed \\(exit status 3\\)"):
        nb.open_netdev(nb.parse_netdev(f"tap,id=t0,script={script}"))
