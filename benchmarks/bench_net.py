"""Network throughput: Debian's kernel wgets 10 MB over the e1000 and the user network.

The guest gets its address by DHCP, then fetches a file from an HTTP server
this benchmark runs on 127.0.0.1 (10.0.2.2 to the guest).  The server times
the transfer (from the request to the last byte handed to the socket) and the
row reports MB/s; the same kernel and initramfs under
``qemu-system-x86_64 -accel tcg -nic user,model=e1000`` give the reference in
the same run.  Skips with the reason when the kernel, busybox, libslirp or
QEMU is missing.

    pytest benchmarks/bench_net.py --benchmark-only
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from qemu_lite import Machine, imagebuild
from qemu_lite.devices.netbackends import parse_nic
from qemu_lite.devices.slirp import SlirpMissing, library
from qemu_lite.initramfs import S_IFDIR, S_IFLNK, S_IFREG, cpio_newc
from qemu_lite.loaders import linux

pytestmark = pytest.mark.linux

APPEND = "console=ttyS0 panic=-1 quiet"
SIZE = 10 << 20
TIMEOUT = 600
UDHCPC = """#!/bin/busybox sh
[ "$1" = bound ] && busybox ifconfig "$interface" "$ip" netmask "$subnet" \
    && busybox route add default gw "$router"
"""


class TimedServer:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.times: list[float] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                t0 = time.perf_counter()
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.payload)))
                self.end_headers()
                self.wfile.write(outer.payload)
                self.wfile.flush()
                outer.times.append(time.perf_counter() - t0)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _initramfs(path: Path, port: int) -> tuple[Path, str]:
    try:
        kernel = imagebuild.find_kernel()
        busybox = Path(imagebuild.find_busybox()).read_bytes()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    version = os.path.basename(kernel).removeprefix("vmlinuz-")
    module = Path(f"/lib/modules/{version}/kernel/drivers/net/ethernet/intel/e1000/e1000.ko")
    if not module.is_file():
        pytest.skip(f"{module} missing (uncompressed e1000 module of {version})")
    init = f"""#!/bin/busybox sh
busybox mkdir -p /proc /sys /tmp
busybox mount -t proc proc /proc
busybox insmod /e1000.ko
busybox ifconfig eth0 up
busybox udhcpc -i eth0 -s /udhcpc.sh -n -q -t 20 -T 2 -f
busybox wget -q -O /tmp/file http://10.0.2.2:{port}/file
busybox sha256sum /tmp/file
busybox poweroff -f
"""
    path.write_bytes(cpio_newc([
        ("bin", S_IFDIR | 0o755, b""), ("bin/busybox", S_IFREG | 0o755, busybox),
        ("bin/sh", S_IFLNK | 0o777, b"busybox"), ("udhcpc.sh", S_IFREG | 0o755, UDHCPC.encode()),
        ("e1000.ko", S_IFREG | 0o644, module.read_bytes()),
        ("init", S_IFREG | 0o755, init.encode())]))
    return path, kernel


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


def _report(benchmark, engine: str, server: TimedServer, text: str, payload: bytes) -> None:
    assert f"{hashlib.sha256(payload).hexdigest()}  /tmp/file" in text, text[-3000:]
    seconds = server.times[-1]
    benchmark.extra_info.update(workload="wget_10MB", mmu=engine, bytes=SIZE,
                                transfer_s=round(seconds, 3),
                                throughput_MBps=round(SIZE / seconds / 1e6, 2))


def test_wget_throughput_qemu_lite(benchmark, tmp_path, payload):
    try:
        library()
    except SlirpMissing as exc:
        pytest.skip(str(exc))
    server = TimedServer(payload)
    initrd, kernel = _initramfs(tmp_path / "initrd", server.port)
    benchmark.group = "network: wget 10 MB over e1000 + user net"
    texts: list[str] = []

    def run() -> None:
        out = bytearray()
        with Machine(memory="256M", nics=[parse_nic("user")]) as m:
            m.board.com1.add_output_listener(out.extend)
            linux.load(m, kernel, APPEND, initrd)
            m.run(timeout=TIMEOUT)
        texts.append(out.decode(errors="replace"))

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        server.close()
    _report(benchmark, "qemu_lite", server, texts[-1], payload)


def test_wget_throughput_qemu_reference(benchmark, tmp_path, payload):
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    server = TimedServer(payload)
    initrd, kernel = _initramfs(tmp_path / "initrd", server.port)
    benchmark.group = "network: wget 10 MB over e1000 + user net"
    cmd = [qemu, "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-kernel", kernel,
           "-initrd", str(initrd), "-append", APPEND, "-nic", "user,model=e1000"]
    texts: list[str] = []

    def run() -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        texts.append(proc.stdout)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        server.close()
    _report(benchmark, "qemu-tcg", server, texts[-1], payload)
