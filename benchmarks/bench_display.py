"""Does a display cost the guest anything when nobody looks?

Debian's kernel boots a busybox initramfs directly (as ``bench_linux.py``) on
three machines: no VGA (``vga="none"``), the std-vga with no display (the
default), and the std-vga served over VNC with no client connected.  The VNC
server's threads sleep in ``accept`` until a client arrives, so the last two
should be within noise of each other.  Wall time on a shared host is noisy;
process CPU time (all threads) is reported beside it.

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


SETUPS = ("vga-none", "display-none", "vnc-no-client")


def _boot(kernel: str, initrd: Path, setup: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one boot under ``setup``."""
    kwargs: dict = {"vga": "none"} if setup == "vga-none" else {}
    if setup == "vnc-no-client":
        kwargs["vnc"] = f":{_free_vnc_display()}"
    out = bytearray()
    with Machine(memory="512M", **kwargs) as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel, APPEND, initrd)
        t0, c0 = time.perf_counter(), time.process_time()
        result = m.run(timeout=240)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert result.reason == "powered-off", result
    assert MARKER in out.decode(errors="replace")
    return wall, cpu


def test_linux_boot_display(benchmark, kernel_and_initrd) -> None:
    """The setups take turns, round after round, so that a shared host's load drifts
    over all of them alike; extra_info holds each setup's walls, CPU times and minima."""
    kernel, initrd = kernel_and_initrd
    benchmark.group = "linux boot: display cost"
    samples: dict[str, list[tuple[float, float]]] = {s: [] for s in SETUPS}

    def run() -> None:
        for _ in range(ROUNDS):
            for setup in SETUPS:
                samples[setup].append(_boot(kernel, initrd, setup))

    benchmark.pedantic(run, rounds=1, iterations=1)
    info: dict = {"workload": "linux_boot", "rounds": ROUNDS}
    for setup, runs in samples.items():
        info[setup] = {"wall_s": [round(w, 3) for w, _ in runs],
                       "cpu_s": [round(c, 3) for _, c in runs],
                       "min_wall_s": round(min(w for w, _ in runs), 3),
                       "min_cpu_s": round(min(c for _, c in runs), 3)}
    base = info["display-none"]
    for setup in SETUPS:
        info[setup]["min_wall_vs_display_none"] = round(
            info[setup]["min_wall_s"] / base["min_wall_s"], 3)
        info[setup]["min_cpu_vs_display_none"] = round(
            info[setup]["min_cpu_s"] / base["min_cpu_s"], 3)
    benchmark.extra_info.update(info)
