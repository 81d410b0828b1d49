"""How much does the shadow cache buy, on which workload?  (pytest-benchmark)

Every workload guest of ``workloads.WORKLOADS`` runs under each MMU mode:
``cached`` (shadow pages kept across CR3 loads, roots reused, and on the
patched engine address-space TLB contexts), ``naive`` (the same shadow MMU,
everything dropped at each CR3 load) and ``native`` (Unicorn's own MMU), with
the default shadow page bound and with a small one (64 pages, least recently
used recycled), and under QEMU TCG (``qemu-system-x86_64 -kernel``, the same
Multiboot image).  Each test runs the guest twice (two rounds); both runs
must print the same checksum as every other mode and give identical MMU
counters.  The second run's counters go to ``benchmark.extra_info`` beside
the time.  QEMU's rows time the whole process; ``extra_info["net_s"]`` is
that minus the same run of a guest that exits at once (QEMU's start-up), the
figure to set beside ``Machine.run``'s.

    pytest benchmarks/bench_mmu.py --benchmark-only
    pytest benchmarks/ --benchmark-only --benchmark-json=results.json
    python benchmarks/report.py results.json -o report.png
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from workloads import (
    MODES,
    SMALL_BOUND,
    WORKLOADS,
    PreparedGuest,
    Run,
    Workload,
    counts,
    summarize,
)

BOUNDS = {"default": None, "small": SMALL_BOUND}

CASES = [
    pytest.param(w, mmu, bound, id=f"{w.name}-{mmu}-{bound}")
    for w in WORKLOADS
    for mmu in MODES
    for bound in BOUNDS
    if not (mmu == "native" and bound != "default")  # no shadow pages to bound
]


@pytest.mark.parametrize(("workload", "mmu", "bound"), CASES)
def test_workload_mmu(benchmark, guests, reference_output, workload: Workload, mmu: str,
                      bound: str):
    kernel = guests(workload.source, workload.defines)
    runs: list[Run] = []

    def setup():
        return (PreparedGuest(kernel, mmu, BOUNDS[bound]),), {}

    def target(guest: PreparedGuest) -> None:
        runs.append(guest.run())

    benchmark.group = f"workload {workload.name}"
    benchmark.pedantic(target, setup=setup, rounds=2, iterations=1)

    first, last = runs[0], runs[-1]
    expected = reference_output.setdefault(workload.name, first.checksum)
    assert first.checksum == expected, f"{mmu}/{bound} printed {first.checksum}, " \
        f"another mode printed {expected}"
    assert last.checksum == expected
    assert counts(first.stats) == counts(last.stats), \
        "MMU counters differ between two runs of a timer-free guest"

    info = summarize(last.stats, mmu, last.wall_s)
    info.update(workload=workload.name, bound=bound,
                max_shadow_pages=last.stats.get("sp_max") if mmu != "native" else None,
                checksum=last.checksum, deterministic=True)
    benchmark.extra_info.update(info)

    if mmu == "cached" and bound == "default" and workload.name in ("cr3_switch", "paging32"):
        assert info["roots_reused"] > info["roots_created"]
    if mmu == "naive":
        assert info["roots_reused"] == 0


def _qemu_run(qemu: str, kernel: Path) -> tuple[float, str]:
    cmd = [qemu, "-accel", "tcg", "-m", "128", "-display", "none", "-serial", "stdio",
           "-monitor", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
           "-kernel", str(kernel)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    assert proc.returncode == 1, f"QEMU exited {proc.returncode}: {proc.stdout[-2000:]}"
    return wall, proc.stdout


@pytest.fixture(scope="session")
def qemu_startup(guests) -> tuple[str, float]:
    """qemu-system-x86_64 and its start-up-and-exit time (best of 3 null-guest runs)."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    kernel = guests("null")
    return qemu, min(_qemu_run(qemu, kernel)[0] for _ in range(3))


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_workload_qemu_tcg(benchmark, guests, reference_output, qemu_startup,
                           workload: Workload):
    qemu, startup = qemu_startup
    kernel = guests(workload.source, workload.defines)
    runs: list[tuple[float, str]] = []
    benchmark.group = f"workload {workload.name}"
    benchmark.pedantic(lambda: runs.append(_qemu_run(qemu, kernel)), rounds=2, iterations=1)
    wall = min(r[0] for r in runs)
    checksum = Run(runs[-1][1], wall, {}).checksum
    expected = reference_output.setdefault(workload.name, checksum)
    assert checksum == expected, f"QEMU printed {checksum}, qemu_lite printed {expected}"
    benchmark.extra_info.update(workload=workload.name, mmu="qemu-tcg", bound="-",
                                wall_s=round(wall, 6), net_s=round(max(wall - startup, 0), 6),
                                qemu_startup_s=round(startup, 6), hit_rate=None,
                                checksum=checksum, deterministic=True)
