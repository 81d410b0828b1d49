"""The real workload: Debian's kernel booting a busybox initramfs to userspace.

``/init`` prints a line and runs ``poweroff -f``; the run ends when the guest
powers off through ACPI (``RunResult.reason == "powered-off"``).  Each MMU mode is timed, the shadow
MMU also with a small shadow page bound, and the same kernel and initrd under
``qemu-system-x86_64 -accel tcg`` are timed in the same run as the outside
reference.  Skips with the reason when the kernel, busybox or QEMU is missing.

Under real time the boot is driven by host-timed interrupts, so its counters
are not reproducible to the unit: those rows run once and say
``deterministic: False``.  The ``--deterministic`` rows beside them run twice
and assert the same serial output (timestamps included) and the same MMU
counters, except those that follow Unicorn's TLB refills, which it resizes by
wall-clock windows (ENGINE_FACTS.md fact 18): the row lists which of those differed.

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
from workloads import DETERMINISTIC_KEYS, SMALL_BOUND, summarize

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
# Counters that follow Unicorn's TLB refills (its size changes by wall clock).
TLB_SIZE_DEPENDENT = {"fills", "fills_read", "fills_write", "fills_fetch", "guest_walks",
                      "shadow_hits", "shadow_misses", "wp_traps", "alias_writes", "alias_writes_untracked",
                      "tlb_flushes_wp", "tlb_flushes_code"}


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


def boot(kernel: str, initrd: Path, mmu: str, max_shadow_pages: int | None,
         deterministic: bool = False) -> dict:
    out = bytearray()
    with Machine(memory=MEMORY, mmu=mmu, deterministic=deterministic) as m:
        if max_shadow_pages is not None:
            m.core.set_max_shadow_pages(max_shadow_pages)
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel, APPEND, initrd)
        t0 = time.perf_counter()
        result = m.run(timeout=TIMEOUT)
        wall = time.perf_counter() - t0
        stats = dict(m.core.mmu_stats())
    text = out.decode(errors="replace")
    assert result.reason == "powered-off", f"{result}\n{text[-3000:]}"
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


def check_repeated(runs: list[dict]) -> list[str]:
    """Two deterministic boots: same output and guest-driven counters; returns the
    TLB-size-dependent counters that differed."""
    first, last = runs[0], runs[-1]
    assert first["output"] == last["output"], "serial output differs between deterministic runs"
    keys = [k for k in DETERMINISTIC_KEYS if k not in TLB_SIZE_DEPENDENT]
    assert {k: first["stats"].get(k) for k in keys} == {k: last["stats"].get(k) for k in keys}, \
        "guest-driven MMU counters differ between two deterministic runs"
    return [k for k in sorted(TLB_SIZE_DEPENDENT) if first["stats"].get(k) != last["stats"].get(k)]


@pytest.mark.parametrize("mmu", ["cached", "native"])
def test_linux_boot_deterministic(benchmark, initrd, mmu: str):
    kernel = _kernel()
    benchmark.group = "linux boot to userspace"
    results: list[dict] = []
    benchmark.pedantic(lambda: results.append(boot(kernel, initrd, mmu, None, deterministic=True)),
                       rounds=2, iterations=1)
    differed = check_repeated(results)
    r = results[-1]
    info = summarize(r["stats"], mmu, r["wall_s"])
    info.update(workload="linux_boot", bound="default", checksum=MARKER, deterministic=True,
                clock="deterministic", tlb_counters_differed=differed,
                kernel=os.path.basename(kernel))
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


def boot_grub(grub_img: Path, deterministic: bool) -> dict:
    out = bytearray()
    with Machine(str(grub_img), memory=MEMORY, snapshot=True, deterministic=deterministic) as m:
        m.board.com1.add_output_listener(out.extend)
        t0 = time.perf_counter()
        result = m.run(timeout=TIMEOUT)
        wall = time.perf_counter() - t0
        assert result.reason == "powered-off", result
        stats = dict(m.core.mmu_stats())
    text = out.decode(errors="replace")
    assert MARKER in text and "Welcome to GRUB!" in text, text[-3000:]
    return {"wall_s": wall, "stats": stats, "output": text}


@pytest.mark.parametrize("clock", ["real-time", "deterministic"])
def test_linux_boot_grub_disk_mmu(benchmark, grub_img, clock: str):
    """(b) the same kernel and initramfs in a grub-mkrescue image, booted as the IDE disk
    through our BIOS and GRUB (deterministic: twice, compared)."""
    benchmark.group = "linux boot from a GRUB disk"
    deterministic = clock == "deterministic"
    results: list[dict] = []
    benchmark.pedantic(lambda: results.append(boot_grub(grub_img, deterministic)),
                       rounds=2 if deterministic else 1, iterations=1)
    r = results[-1]
    info = summarize(r["stats"], "cached", r["wall_s"])
    info.update(workload="grub_disk_boot", bound="default", checksum=MARKER,
                deterministic=deterministic, clock=clock)
    if deterministic:
        info["tlb_counters_differed"] = check_repeated(results)
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
