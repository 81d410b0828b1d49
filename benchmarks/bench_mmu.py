"""Shadow MMU modes compared on the same guests (pytest-benchmark).

``cr3_switch``: eight address spaces, every round loads each CR3 and touches
256 private pages: ``cached`` reuses the shadow roots of earlier loads,
``naive`` rebuilds them, ``native`` is Unicorn's own MMU.  ``stores``: a
store loop over 16 MiB of 4 KiB pages (DESIGN fact 12: data fills without
EXEC keep stores on Unicorn's fast path).  The MMU statistics of each run go
to ``benchmark.extra_info``.

    pytest benchmarks/bench_mmu.py --benchmark-only
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

GUESTS = Path(__file__).parent / "guests"
MODES = ["cached", "naive", "native"]


def build(tmp_path_factory: pytest.TempPathFactory, name: str, **defines: int) -> Path:
    nasm = shutil.which("nasm")
    if nasm is None:
        pytest.skip("nasm is needed to assemble the benchmark guests")
    out = tmp_path_factory.mktemp("guests") / f"{name}.bin"
    args = [nasm, "-f", "bin", "-i", f"{GUESTS}/", "-o", str(out)]
    args += [f"-D{k}={v}" for k, v in defines.items()]
    subprocess.run(args + [str(GUESTS / f"{name}.asm")], check=True)
    return out


def run_guest(kernel: Path, mmu: str) -> dict[str, float]:
    with Machine(memory="64M", mmu=mmu) as m:
        multiboot.load(m, kernel)
        t0 = time.perf_counter()
        result = m.run(timeout=120)
        wall = time.perf_counter() - t0
        assert result.reason == "exit" and result.exit_status == 1, result
        stats: dict[str, float] = dict(m.core.mmu_stats()) if mmu != "native" else {}
    stats["wall_s"] = wall
    return stats


@pytest.mark.parametrize("mmu", MODES)
def test_cr3_switch(benchmark, tmp_path_factory, mmu):
    kernel = build(tmp_path_factory, "cr3_switch", ROUNDS=2000)
    stats = benchmark.pedantic(run_guest, args=(kernel, mmu), rounds=3, iterations=1)
    benchmark.group = "cr3_switch"
    benchmark.extra_info.update(stats)
    if mmu == "cached":
        assert stats["roots_reused"] > stats["roots_created"]
    if mmu == "naive":
        assert stats["roots_reused"] == 0


@pytest.mark.parametrize("mmu", MODES)
def test_stores(benchmark, tmp_path_factory, mmu):
    kernel = build(tmp_path_factory, "stores", PASSES=16)
    stats = benchmark.pedantic(run_guest, args=(kernel, mmu), rounds=3, iterations=1)
    benchmark.group = "stores"
    benchmark.extra_info.update(stats)
