"""Does a display cost the guest anything when nobody looks?

Debian's kernel boots a busybox initramfs directly (as ``bench_linux.py``) on
three machines: no VGA (``vga="none"``), the std-vga with no display (the
default), and the std-vga served over VNC with no client connected.  The VNC
server's threads sleep in ``accept`` until a client arrives, so the last two
rows should be within noise of each other.

    pytest benchmarks/bench_display.py --benchmark-only
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from qemu_lite import Machine, imagebuild
from qemu_lite.display.vnc import VNC_BASE_PORT
from qemu_lite.loaders import linux

pytestmark = pytest.mark.linux

APPEND = "console=ttyS0 panic=-1"
MARKER = "qemu-lite-bench: userspace reached"
ROUNDS = 3  # the boot is timer-driven and the host is shared: compare minima

INIT = f"""\
busybox echo "{MARKER}"
busybox poweroff -f
"""


@pytest.fixture(scope="module")
def kernel_and_initrd(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    try:
        kernel = imagebuild.find_kernel()
        initrd = imagebuild.write_initramfs(tmp_path_factory.mktemp("display") / "initrd.cpio",
                                            INIT)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    return kernel, initrd


def _free_vnc_display() -> int:
    for n in range(70, 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", VNC_BASE_PORT + n))
            except OSError:
                continue
            return n
    pytest.skip("no free VNC port")


@pytest.mark.parametrize("setup", ["vga-none", "display-none", "vnc-no-client"])
def test_linux_boot_display(benchmark, kernel_and_initrd, setup: str) -> None:
    kernel, initrd = kernel_and_initrd
    benchmark.group = "linux boot: display cost"
    kwargs: dict = {"vga": "none"} if setup == "vga-none" else {}
    if setup == "vnc-no-client":
        kwargs["vnc"] = f":{_free_vnc_display()}"
    walls: list[float] = []

    def run() -> None:
        out = bytearray()
        with Machine(memory="512M", **kwargs) as m:
            m.board.com1.add_output_listener(out.extend)
            linux.load(m, kernel, APPEND, initrd)
            t0 = time.perf_counter()
            result = m.run(timeout=240)
            walls.append(time.perf_counter() - t0)
        assert result.reason == "halted", result
        assert MARKER in out.decode(errors="replace")

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(workload="linux_boot", setup=setup,
                                wall_s=[round(w, 3) for w in walls], min_wall_s=round(min(walls), 3))
