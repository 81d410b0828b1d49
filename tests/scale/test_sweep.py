"""qemu_lite.sweep: a small benchmark grid as Ray tasks on a local cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qemu_lite.sweep import Cell, _stats, grid

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_grid_is_bench_mmu_cases() -> None:
    cells = grid(["stores"], ["cached", "native"], ["default", "small"])
    assert cells == [Cell("stores", "cached", "default"), Cell("stores", "cached", "small"),
                     Cell("stores", "native", "default")]


def test_stats_of_rounds() -> None:
    s = _stats([3.0, 1.0, 2.0])
    assert (s["min"], s["max"], s["median"], s["rounds"], s["data"]) == (1.0, 3.0, 2.0, 3,
                                                                         [3.0, 1.0, 2.0])
    assert s["ops"] == pytest.approx(0.5)


def _sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_lite.sweep", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'qemu-lite[scale]')")
    done = _sweep("--workloads", "nope", "--benchmarks", str(BENCHMARKS), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "qemu_lite.sweep: unknown workload 'nope' (known: cr3_switch, pt_churn, big_ws, "
        "paging32, pae, mode_switch, stores, loads, shared_kernel, pti)"]


@pytest.mark.skipif(shutil.which("nasm") is None, reason="the workload guests need nasm")
def test_small_grid_on_a_local_ray_cluster(tmp_path: Path) -> None:
    """Two cells as Ray tasks: the JSON loads in ``pytest-benchmark compare`` and the
    report carries the guests' own deterministic counters (the README's hit rate)."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'qemu-lite[scale]')")
    out = tmp_path / "sweep.json"
    done = _sweep("--workloads", "stores", "--modes", "cached,naive", "--bounds", "default",
                  "--rounds", "1", "--benchmarks", str(BENCHMARKS), "-o", str(out),
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    names = sorted(b["name"] for b in doc["benchmarks"])
    assert names == ["test_workload_mmu[stores-cached-default]",
                     "test_workload_mmu[stores-naive-default]"]
    for b in doc["benchmarks"]:
        assert b["extra_info"]["checksum"] and b["stats"]["min"] > 0
        assert round(100 * b["extra_info"]["hit_rate"], 1) == 94.1
    cli = Path(sys.executable).parent / "pytest-benchmark"  # pytest-benchmark's own script
    compare = subprocess.run([str(cli), "compare", str(out)], capture_output=True, text=True,
                             timeout=120)
    assert compare.returncode == 0, compare.stderr
    assert "test_workload_mmu[stores-naive-default]" in compare.stdout
    report = out.with_suffix(".md").read_text()
    assert "| stores | cached | default |" in report and "94.1%" in report
