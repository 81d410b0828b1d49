"""The real workload: Debian's kernel booting a busybox initramfs to userspace.

``/init`` prints a line and runs ``poweroff -f``; the run ends when the guest
halts (``RunResult.reason == "halted"``).  Each MMU mode is timed, the shadow
MMU also with a small shadow page bound, and the same kernel and initrd under
``qemu-system-x86_64 -accel tcg`` are timed in the same run as the outside
reference.  Skips with the reason when the kernel, busybox or QEMU is missing.

The boot is driven by timers (PIT, TSC calibration, RCU), so its counters are
not reproducible to the unit the way the timer-free workload guests' are:
each boot runs once and its row says ``deterministic: False``.

    pytest benchmarks/bench_linux.py --benchmark-only      # only this group
    pytest benchmarks/ --benchmark-only -m "not linux"     # everything else
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from workloads import SMALL_BOUND, summarize

from qemu_lite import Machine
from qemu_lite.initramfs import busybox_initramfs
from qemu_lite.loaders import linux

pytestmark = pytest.mark.linux

KERNEL = "/boot/vmlinuz-6.1.0-56-amd64"
APPEND = "console=ttyS0 panic=-1"
MEMORY = "512M"
MARKER = "qemu-lite-bench: userspace reached"
INIT = f"""\
busybox echo "{MARKER}"
busybox poweroff -f
"""
TIMEOUT = 240


def _kernel() -> str:
    if os.path.exists(KERNEL):
        return KERNEL
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        pytest.skip("no Debian kernel in /boot (apt-get install linux-image-amd64)")
    return kernels[-1]


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        pytest.skip("busybox not installed (apt-get install busybox-static)")
    path = tmp_path_factory.mktemp("linux") / "initrd.cpio"
    path.write_bytes(busybox_initramfs(busybox, INIT))
    return path


def boot(kernel: str, initrd: Path, mmu: str, max_shadow_pages: int | None) -> dict:
    out = bytearray()
    with Machine(memory=MEMORY, mmu=mmu) as m:
        if max_shadow_pages is not None:
            m.core.set_max_shadow_pages(max_shadow_pages)
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel, APPEND, initrd)
        t0 = time.perf_counter()
        result = m.run(timeout=TIMEOUT)
        wall = time.perf_counter() - t0
        stats = dict(m.core.mmu_stats())
    text = out.decode(errors="replace")
    assert result.reason == "halted", f"{result}\n{text[-3000:]}"
    assert MARKER in text, text[-3000:]
    return {"wall_s": wall, "stats": stats, "output": text}


@pytest.mark.parametrize(("mmu", "bound"), [("cached", "default"), ("cached", "small"),
                                            ("naive", "default"), ("native", "default")])
def test_linux_boot_mmu(benchmark, initrd, mmu: str, bound: str):
    kernel = _kernel()
    benchmark.group = "linux boot to userspace"
    results: list[dict] = []
    max_pages = SMALL_BOUND if bound == "small" else None
    benchmark.pedantic(lambda: results.append(boot(kernel, initrd, mmu, max_pages)),
                       rounds=1, iterations=1)
    r = results[-1]
    info = summarize(r["stats"], mmu, r["wall_s"])
    info.update(workload="linux_boot", bound=bound, checksum=MARKER, deterministic=False,
                kernel=os.path.basename(kernel),
                max_shadow_pages=r["stats"].get("sp_max") if mmu != "native" else None)
    benchmark.extra_info.update(info)


def test_linux_boot_qemu_reference(benchmark, initrd):
    kernel = _kernel()
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    benchmark.group = "linux boot to userspace"
    cmd = [qemu, "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-kernel", kernel,
           "-initrd", str(initrd), "-append", APPEND]
    results: list[tuple[float, str]] = []

    def run() -> None:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        results.append((time.perf_counter() - t0, proc.stdout))

    benchmark.pedantic(run, rounds=1, iterations=1)
    wall, text = results[-1]
    assert MARKER in text, text[-3000:]
    benchmark.extra_info.update(workload="linux_boot", mmu="qemu-tcg", bound="-",
                                wall_s=round(wall, 6), hit_rate=None, checksum=MARKER,
                                deterministic=False, kernel=os.path.basename(kernel),
                                note="wall time includes QEMU's start-up and exit")
