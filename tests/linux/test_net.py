"""Debian's kernel drives the e1000 with its own module: DHCP, HTTP both ways, pcap, socket wiring.

The initramfs holds busybox and the kernel's e1000 module (and whatever
modules.dep says it needs), copied from /lib/modules at test time.  The first
two boots also check the DSDT's PCI interrupt routing (_PRT, links LNKA-D over
the PIIX3's PIRQ registers): the e1000's INTA# through LNKC, on the IRQ the
board routes it to and then on one Linux chose and set with _SRS.
"""

from __future__ import annotations

import hashlib
import http.server
import lzma
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from images import kernel

from qemu_lite import Machine, imagebuild
from qemu_lite.devices.ioapic import REDIR_LEVEL_TRIGGER, REDIR_MASKED, REDIR_POLARITY_LOW
from qemu_lite.devices.netbackends import Nic, parse_nic
from qemu_lite.devices.netbackends import open_netdev as nb_open_netdev
from qemu_lite.devices.netbackends import parse_netdev as nb_parse_netdev
from qemu_lite.devices.slirp import SlirpMissing, library
from qemu_lite.initramfs import S_IFDIR, S_IFLNK, S_IFREG, cpio_newc
from qemu_lite.loaders import linux

APPEND = "console=ttyS0 panic=-1 quiet"

UDHCPC_SCRIPT = """#!/bin/busybox sh
case "$1" in
bound|renew)
    busybox ifconfig "$interface" "$ip" netmask "$subnet"
    busybox route add default gw "$router"
    echo "dhcp: bound $ip router $router"
    ;;
esac
"""

NET_UP = """\
busybox mkdir -p /proc /sys /tmp /www /dev
busybox mount -t proc proc /proc
busybox mount -t sysfs sys /sys
for m in $(busybox cat /modules.order); do busybox insmod /$m || echo "insmod $m failed"; done
busybox ifconfig lo 127.0.0.1 up
busybox ifconfig eth0 up
"""


# What the kernel said about PCI interrupt routing ("quiet" keeps it off the console),
# and the e1000's line in /proc/interrupts.
SHOW_IRQ_ROUTING = """\
busybox dmesg | busybox grep -E "Interrupt link|LNK|routing|PCI INT" | busybox sed 's/^/dmesg: /'
busybox grep eth0 /proc/interrupts | busybox sed 's/^/interrupts: /'
"""


def check_irq_routing(text: str, redir: dict[int, int], irq: int, *, chosen: bool) -> None:
    """The e1000 took its interrupts through LNKC on ``irq``: Linux used the DSDT's links,
    programmed IOAPIC pin ``irq`` level-triggered active high as _CRS says (a wrong
    polarity is a dead NIC), and counted the e1000's interrupts there.  ``chosen``: Linux
    moved LNKC off its reset route (IRQ 11) with _SRS."""
    assert "can't derive routing" not in text and "no GSI" not in text, text[-3000:]
    assert "nobody cared" not in text, text[-3000:]  # a storm: the line's polarity is wrong
    for link, reset_irq in (("LNKA", 10), ("LNKB", 10), ("LNKC", 11), ("LNKD", 11)):
        assert f"ACPI: PCI: Interrupt link {link} configured for IRQ {reset_irq}" in text, link
    assert "PCI: Using ACPI for IRQ routing" in text
    assert f"ACPI: \\_SB_.LNKC: Enabled at IRQ {irq}" in text, text[-3000:]
    assert (irq != 11) == chosen
    line = next(ln for ln in text.splitlines() if ln.startswith("interrupts: "))
    fields = line.split()
    assert fields[1] == f"{irq}:" and fields[-2:] == [f"{irq}-fasteoi", "eth0"], line
    assert int(fields[2]) > 0, line  # one vCPU: one count column
    entry = redir[irq]
    assert entry & REDIR_LEVEL_TRIGGER and not entry & REDIR_POLARITY_LOW, hex(entry)
    assert not entry & REDIR_MASKED, hex(entry)


def _module_files(version: str) -> list[tuple[str, bytes]]:
    """The e1000 module and its dependencies, in load order, uncompressed."""
    root = Path("/lib/modules") / version
    dep_file = root / "modules.dep"
    if not dep_file.is_file():
        pytest.skip(f"{dep_file} missing: apt-get install linux-image-{version}")
    deps: dict[str, list[str]] = {}
    for line in dep_file.read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
    target = next((n for n in deps if "/e1000/e1000.ko" in n), None)
    if target is None:
        pytest.skip(f"no e1000 module for {version}")
    out = []
    for name in [*reversed(deps[target]), target]:
        data = (root / name).read_bytes()
        if name.endswith(".xz"):
            data, name = lzma.decompress(data), name[:-3]
        elif not name.endswith(".ko"):
            pytest.skip(f"{name}: compressed in a form this test cannot unpack")
        out.append((name, data))
    return out


def net_initramfs(path: Path, script: str,
                  extra: list[tuple[str, int, bytes]] | None = None) -> Path:
    vmlinuz = kernel()
    version = os.path.basename(vmlinuz).removeprefix("vmlinuz-")
    try:
        busybox = Path(imagebuild.find_busybox()).read_bytes()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    modules = _module_files(version)
    entries = [("bin", S_IFDIR | 0o755, b""), ("bin/busybox", S_IFREG | 0o755, busybox),
               ("bin/sh", S_IFLNK | 0o777, b"busybox"),
               ("udhcpc.sh", S_IFREG | 0o755, UDHCPC_SCRIPT.encode()),
               ("modules.order", S_IFREG | 0o644,
                "\n".join(os.path.basename(n) for n, _ in modules).encode()),
               ("init", S_IFREG | 0o755, ("#!/bin/busybox sh\n" + NET_UP + script).encode())]
    entries += [(os.path.basename(n), S_IFREG | 0o644, data) for n, data in modules]
    entries += extra or []
    path.write_bytes(cpio_newc(entries))
    return path


def need_slirp() -> None:
    try:
        library()
    except SlirpMissing as exc:
        pytest.skip(str(exc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FileServer:
    """An HTTP server on 127.0.0.1 (the guest's 10.0.2.2): /file, and /done once released."""

    def __init__(self, payload: bytes, host: str = "127.0.0.1") -> None:
        self.payload = payload
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path == "/file":
                    body = outer.payload
                elif self.path == "/done" and outer.release.is_set():
                    body = b"done\n"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def run_guest(initrd: Path, nic: Nic, *, net_dump: Path | None = None, timeout: float = 600,
              on_output=None, append: str = "",
              redir: dict[int, int] | None = None) -> tuple[str, object]:
    """Boot; ``redir``, if given, gets the IOAPIC's redirection entries as they were when
    the guest printed its e1000 line of /proc/interrupts (SHOW_IRQ_ROUTING): power-off
    clears them."""
    out = bytearray()
    with Machine(memory="256M", nics=[nic], net_dump=net_dump) as m:
        m.board.com1.add_output_listener(out.extend)
        if on_output is not None:
            m.board.com1.add_output_listener(lambda data: on_output(out))
        if redir is not None:
            def grab(data: bytes) -> None:
                if not redir and b"interrupts: " in out:
                    redir.update(enumerate(m.board.ioapic.save_state()["redir"]))
            m.board.com1.add_output_listener(grab)
        linux.load(m, kernel(), f"{APPEND} {append}".strip(), initrd)
        result = m.run(timeout=timeout)
    return out.decode(errors="replace"), result


def test_dhcp_then_wget_from_host_and_serve_back_through_hostfwd(tmp_path):
    need_slirp()
    payload = os.urandom(10 << 20)
    digest = hashlib.sha256(payload).hexdigest()
    server = FileServer(payload)
    hostfwd = free_port()
    script = f"""\
busybox udhcpc -i eth0 -s /udhcpc.sh -n -q -t 20 -T 2 -f
busybox wget -q -O /www/file http://10.0.2.2:{server.port}/file && echo "wget: ok"
busybox sha256sum /www/file
{SHOW_IRQ_ROUTING}busybox httpd -p 8080 -h /www
echo "guest: serving"
i=0
while ! busybox wget -q -O /dev/null http://10.0.2.2:{server.port}/done; do
    i=$((i+1)); [ $i -gt 120 ] && break; busybox sleep 1
done
busybox poweroff -f
"""
    initrd = net_initramfs(tmp_path / "initrd", script)
    fetched: list[bytes] = []
    started = threading.Event()

    def fetch_back() -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{hostfwd}/file", timeout=120) as r:
                fetched.append(r.read())
        finally:
            server.release.set()

    def watch(out: bytearray) -> None:
        if not started.is_set() and b"guest: serving" in out:
            started.set()
            threading.Thread(target=fetch_back, daemon=True).start()

    nic = parse_nic(f"user,hostfwd=tcp:127.0.0.1:{hostfwd}-:8080")
    redir: dict[int, int] = {}
    try:
        text, result = run_guest(initrd, nic, on_output=watch, redir=redir)
    finally:
        server.close()
    assert "dhcp: bound 10.0.2.15 router 10.0.2.2" in text, text[-3000:]
    assert "wget: ok" in text and f"{digest}  /www/file" in text, text[-3000:]
    assert fetched and hashlib.sha256(fetched[0]).hexdigest() == digest
    check_irq_routing(text, redir, 11, chosen=False)  # Linux kept the board's route
    assert result.reason == "powered-off", (result, text[-2000:])


def test_pcap_of_dhcp_exchange_reads_in_tcpdump(tmp_path):
    need_slirp()
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump not installed: apt-get install tcpdump")
    initrd = net_initramfs(tmp_path / "initrd", f"""\
busybox udhcpc -i eth0 -s /udhcpc.sh -n -q -t 20 -T 2 -f
{SHOW_IRQ_ROUTING}busybox poweroff -f
""")
    dump = tmp_path / "dhcp.pcap"
    # acpi_irq_isa=11 tells Linux IRQ 11 is an ISA device's: it moves LNKC (the e1000's
    # PIRQC) to another IRQ of _PRS through _SRS, and the PIIX3 follows.
    redir: dict[int, int] = {}
    text, result = run_guest(initrd, parse_nic("user"), net_dump=dump, append="acpi_irq_isa=11",
                             redir=redir)
    assert "dhcp: bound 10.0.2.15" in text, text[-3000:]
    irq = int(text.split("ACPI: \\_SB_.LNKC: Enabled at IRQ ")[1].split()[0])
    assert irq in (5, 10), irq
    check_irq_routing(text, redir, irq, chosen=True)
    proc = subprocess.run([tcpdump, "-n", "-v", "-r", str(dump)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for kind in ("Discover", "Offer", "Request", "ACK"):
        assert f"DHCP-Message (53), length 1: {kind}" in proc.stdout, proc.stdout[-3000:]


def need_tap() -> None:
    """Skip unless this host lets the test create a tap interface and address it."""
    if shutil.which("ip") is None:
        pytest.skip("the ip command is missing: apt-get install iproute2")
    try:
        backend = nb_open_netdev(nb_parse_netdev("tap,id=probe"))
    except OSError as exc:
        pytest.skip(f"no tap interfaces on this host: {exc}")
    backend.close()


def test_tap_backend_guest_pings_the_host_and_fetches_a_file_over_its_tcp(tmp_path):
    """The host's own kernel answers ARP, ICMP and TCP on the tap's far side."""
    need_tap()
    prefix = f"10.213.{random.randrange(256)}"  # random: two suites on one host must not clash
    up = tmp_path / "ifup"
    up.write_text(f"#!/bin/sh\nip addr add {prefix}.1/24 dev \"$1\" && ip link set \"$1\" up\n")
    up.chmod(0o755)
    payload = os.urandom(1 << 20)
    server = FileServer(payload, host="0.0.0.0")
    initrd = net_initramfs(tmp_path / "initrd", f"""\
busybox ifconfig eth0 {prefix}.2 netmask 255.255.255.0 up
busybox ping -c 3 -W 5 {prefix}.1
busybox wget -q -O /tmp/file http://{prefix}.1:{server.port}/file && echo "wget: ok"
busybox sha256sum /tmp/file
busybox poweroff -f
""")
    try:
        text, result = run_guest(initrd, parse_nic(f"tap,script={up},downscript=no"), timeout=1200)
    finally:
        server.close()
    assert "3 packets transmitted, 3 packets received" in text, text[-3000:]
    assert "wget: ok" in text, text[-3000:]
    assert f"{hashlib.sha256(payload).hexdigest()}  /tmp/file" in text, text[-3000:]
    assert result.reason == "powered-off", (result, text[-2000:])


def _boot_cli(initrd: Path, *net: str, stdout=subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "qemu_lite", "-m", "256M", "--timeout", "600",
                             "--kernel", kernel(), "--initrd", str(initrd), "--append", APPEND,
                             *net], stdout=stdout, stderr=subprocess.STDOUT
                            if stdout is not subprocess.PIPE else subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir())


def _wait_listening(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


# Each machine waits for the other to boot; under load one boot can take minutes longer than
# the other, so the bound is generous (the loop ends as soon as the peer answers).
WAIT_FOR_PEER = """\
i=0
until busybox ping -c 1 -W 1 {peer} >/dev/null; do i=$((i+1)); [ $i -gt 600 ] && break; done
"""

# A serves a file and pings B; B pings A and fetches the file, once A has pinged.
MACHINE_A = """\
busybox ifconfig eth0 10.9.0.1 netmask 255.255.255.0 up
busybox httpd -p 80 -h /www
""" + WAIT_FOR_PEER.format(peer="10.9.0.2") + """\
busybox ping -c 3 -W 5 10.9.0.2
echo pinged > /www/pinged
i=0; while [ $i -lt 300 ]; do busybox sleep 1; i=$((i+1)); done
busybox poweroff -f
"""
MACHINE_B = """\
busybox ifconfig eth0 10.9.0.2 netmask 255.255.255.0 up
""" + WAIT_FOR_PEER.format(peer="10.9.0.1") + """\
busybox ping -c 3 -W 5 10.9.0.1
busybox wget -q -O /tmp/file http://10.9.0.1/file && echo "wget: ok"
busybox sha256sum /tmp/file
i=0
until busybox wget -q -O /dev/null http://10.9.0.1/pinged; do
    i=$((i+1)); [ $i -gt 120 ] && break; busybox sleep 1
done
busybox poweroff -f
"""


def _boot_qemu(initrd: Path, *net: str) -> subprocess.Popen[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed: apt-get install qemu-system-x86")
    return subprocess.Popen([qemu, "-machine", "pc", "-accel", "tcg", "-m", "256M", "-nographic",
                             "-no-reboot", "-kernel", kernel(), "-initrd", str(initrd),
                             "-append", APPEND, *net], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            cwd=tempfile.gettempdir())


@pytest.mark.parametrize("peer", ["qemu_lite", "qemu"])
def test_two_machines_on_a_socket_netdev_ping_each_other_and_move_a_file(tmp_path, peer):
    """qemu_lite A listens; B, another qemu_lite or a real QEMU, connects."""
    boot_b = _boot_cli if peer == "qemu_lite" else _boot_qemu
    port = free_port()
    payload = os.urandom(256 << 10)
    www = [("www", S_IFDIR | 0o755, b""), ("www/file", S_IFREG | 0o644, payload)]
    a_log = tmp_path / "a.log"
    with open(a_log, "w") as a_out:
        a = _boot_cli(net_initramfs(tmp_path / "a", MACHINE_A, www),
                      "-netdev", f"socket,id=n0,listen=127.0.0.1:{port}",
                      "-device", "e1000,netdev=n0,mac=52:54:00:00:00:01", stdout=a_out)
    try:
        _wait_listening(port)
        b = boot_b(net_initramfs(tmp_path / "b", MACHINE_B),
                      "-netdev", f"socket,id=n0,connect=127.0.0.1:{port}",
                      "-device", "e1000,netdev=n0,mac=52:54:00:00:00:02")
        out_b, err_b = b.communicate(timeout=900)
    finally:
        a.kill()  # A waits in a sleep loop once it has pinged; B only ends after that
        a.wait()
    out_a = a_log.read_text(errors="replace")
    assert "3 packets transmitted, 3 packets received" in out_a, out_a[-3000:]
    assert "3 packets transmitted, 3 packets received" in out_b, out_b[-3000:] + err_b[-2000:]
    assert "wget: ok" in out_b, out_b[-3000:]
    assert f"{hashlib.sha256(payload).hexdigest()}  /tmp/file" in out_b, out_b[-3000:]
