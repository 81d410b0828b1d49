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

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from workloads import SMALL_BOUND, summarize

from qemu_lite import Machine, imagebuild
from qemu_lite.loaders import linux

pytestmark = pytest.mark.linux

APPEND = "console=ttyS0 panic=-1"
MEMORY = "512M"
MARKER = "qemu-lite-bench: userspace reached"
INIT = f"""\
busybox echo "{MARKER}"
busybox poweroff -f
"""
TIMEOUT = 240


def _kernel() -> str:
    try:
        return imagebuild.find_kernel()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return imagebuild.write_initramfs(tmp_path_factory.mktemp("linux") / "initrd.cpio", INIT)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def grub_img(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return imagebuild.grub_rescue_image(tmp_path_factory.mktemp("grub"), INIT, APPEND)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


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


def test_linux_boot_grub_disk_mmu(benchmark, grub_img):
    """(b) the same kernel and initramfs in a grub-mkrescue image, booted as the IDE disk
    through our BIOS and GRUB."""
    benchmark.group = "linux boot from a GRUB disk"
    results: list[tuple[float, str, dict]] = []

    def run() -> None:
        out = bytearray()
        with Machine(str(grub_img), memory=MEMORY, snapshot=True) as m:
            m.board.com1.add_output_listener(out.extend)
            t0 = time.perf_counter()
            result = m.run(timeout=TIMEOUT)
            wall = time.perf_counter() - t0
            assert result.reason == "halted", result
            results.append((wall, out.decode(errors="replace"), dict(m.core.mmu_stats())))

    benchmark.pedantic(run, rounds=1, iterations=1)
    wall, text, stats = results[-1]
    assert MARKER in text and "Welcome to GRUB!" in text, text[-3000:]
    info = summarize(stats, "cached", wall)
    info.update(workload="grub_disk_boot", bound="default", checksum=MARKER, deterministic=False)
    benchmark.extra_info.update(info)


def test_linux_boot_grub_disk_qemu_reference(benchmark, grub_img):
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    benchmark.group = "linux boot from a GRUB disk"
    cmd = [qemu, "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-snapshot",
           "-drive", f"file={grub_img},format=raw,if=ide"]
    results: list[tuple[float, str]] = []

    def run() -> None:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        results.append((time.perf_counter() - t0, proc.stdout))

    benchmark.pedantic(run, rounds=1, iterations=1)
    wall, text = results[-1]
    assert MARKER in text, text[-3000:]
    benchmark.extra_info.update(workload="grub_disk_boot", mmu="qemu-tcg", bound="-",
                                wall_s=round(wall, 6), hit_rate=None, checksum=MARKER,
                                deterministic=False,
                                note="QEMU boots through SeaBIOS; includes start-up and exit")
