"""The MMU benchmark grid as Ray tasks: ``python -m qemu_lite.sweep`` (``pip install '.[scale]'``).

Each cell of ``benchmarks/bench_mmu.py``'s grid (workload x MMU mode x shadow-page bound)
is one Ray task that assembles its guest, runs it ``--rounds`` times on a machine of its
own and returns the round times with the MMU counters.  The driver writes one JSON in
pytest-benchmark's format (``pytest-benchmark compare`` loads it, ``benchmarks/report.py``
reads it) and the Markdown report beside it, and a plot when matplotlib is there.

``ray.init()`` with no address starts a local cluster on this host (the default);
``--address HOST:PORT`` (or ``auto``) joins a running one, whose nodes must have qemu-lite
installed and this checkout's ``benchmarks/`` at the same path.  A cell needs one CPU:
Ray runs as many at once as the cluster has CPUs, so times measured on a shared host are
best compared within one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The checkout's benchmarks/: beside the package in an editable install, else the
# current directory's (run from the checkout), else give --benchmarks.
DEFAULT_BENCHMARKS = next((p for p in (Path(__file__).resolve().parent.parent / "benchmarks",
                                       Path.cwd() / "benchmarks") if p.is_dir()),
                          Path("benchmarks"))
BOUNDS = ("default", "small")


@dataclass(frozen=True)
class Cell:
    workload: str
    mmu: str
    bound: str

    @property
    def name(self) -> str:
        return f"test_workload_mmu[{self.workload}-{self.mmu}-{self.bound}]"


def grid(workloads: list[str], modes: list[str], bounds: list[str]) -> list[Cell]:
    """bench_mmu.py's cases: ``native`` has no shadow pages, so only its default bound."""
    return [Cell(w, m, b) for w in workloads for m in modes for b in bounds
            if not (m == "native" and b != "default")]


def _workloads_module(bench_dir: str) -> Any:
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    import workloads  # benchmarks/workloads.py

    return workloads


def run_cell(bench_dir: str, cell: Cell, rounds: int) -> dict[str, Any]:
    """One grid cell, in whatever process runs it: round times and the last run's counters.

    Every round must print the same checksum and give the same MMU counters (the guests
    program no timer), as bench_mmu.py checks."""
    wl = _workloads_module(bench_dir)
    workload = next(w for w in wl.WORKLOADS if w.name == cell.workload)
    bound = {"default": None, "small": wl.SMALL_BOUND}[cell.bound]
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        kernel = wl.assemble(Path(tmp), workload.source, workload.defines)
        runs = []
        for _ in range(rounds):
            guest = wl.PreparedGuest(kernel, cell.mmu, bound)
            runs.append(guest.run())
    checksums = {r.checksum for r in runs}
    if len(checksums) != 1 or len({json.dumps(wl.counts(r.stats)) for r in runs}) != 1:
        raise RuntimeError(f"{cell.name}: rounds differ (checksums {sorted(checksums)})")
    last = runs[-1]
    info = wl.summarize(last.stats, cell.mmu, last.wall_s)
    info.update(workload=cell.workload, bound=cell.bound,
                max_shadow_pages=last.stats.get("sp_max") if cell.mmu != "native" else None,
                checksum=last.checksum, deterministic=True, host=platform.node())
    return {"times": [r.wall_s for r in runs], "extra_info": info}


def _stats(times: list[float]) -> dict[str, Any]:
    """pytest-benchmark's statistics of one benchmark's rounds (one iteration each)."""
    data = sorted(times)
    n = len(data)
    mean = statistics.fmean(data)
    stddev = statistics.stdev(data) if n > 1 else 0.0
    if n > 1:
        q1, median, q3 = statistics.quantiles(data, n=4, method="inclusive")
    else:
        q1 = median = q3 = data[0]
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    return {
        "min": data[0], "max": data[-1], "mean": mean, "stddev": stddev, "rounds": n,
        "median": median, "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": sum(1 for t in data if t < low or t > high),
        "stddev_outliers": sum(1 for t in data if abs(t - mean) > stddev) if n > 1 else 0,
        "outliers": f"{sum(1 for t in data if abs(t - mean) > stddev) if n > 1 else 0};"
                    f"{sum(1 for t in data if t < low or t > high)}",
        "ld15iqr": min((t for t in data if t >= low), default=data[0]),
        "hd15iqr": max((t for t in data if t <= high), default=data[-1]),
        "ops": 1 / mean if mean else 0.0, "total": sum(data), "data": list(times),
        "iterations": 1,
    }


def benchmark_json(results: list[tuple[Cell, dict[str, Any]]], started: str) -> dict[str, Any]:
    """The document pytest-benchmark writes with ``--benchmark-json``, for these cells."""
    import pytest_benchmark

    benchmarks = []
    for cell, result in results:
        benchmarks.append({
            "group": f"workload {cell.workload}", "name": cell.name,
            "fullname": f"benchmarks/bench_mmu.py::{cell.name}",
            "params": {"workload": cell.workload, "mmu": cell.mmu, "bound": cell.bound},
            "param": f"{cell.workload}-{cell.mmu}-{cell.bound}",
            "extra_info": result["extra_info"],
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 1,
                        "max_time": 0, "min_time": 0, "warmup": False},
            "stats": _stats(result["times"]),
        })
    return {
        "machine_info": {"node": platform.node(), "processor": platform.processor(),
                         "machine": platform.machine(),
                         "python_implementation": platform.python_implementation(),
                         "python_version": platform.python_version(),
                         "release": platform.release(), "system": platform.system(),
                         "cpu": {}},
        "commit_info": {},
        "benchmarks": benchmarks,
        "datetime": started,
        "version": pytest_benchmark.__version__,
    }


def sweep(cells: list[Cell], *, rounds: int, bench_dir: Path, address: str | None,
          log: Any = print) -> list[tuple[Cell, dict[str, Any]]]:
    """Run ``cells`` as Ray tasks; a cell that fails is reported and left out."""
    import ray

    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(run_cell)
        pending = {task.remote(str(bench_dir), cell, rounds): cell for cell in cells}
        results: dict[Cell, dict[str, Any]] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            try:
                results[cell] = ray.get(done[0])
            except Exception as exc:  # a guest that failed its checks, a lost worker
                log(f"{cell.name}: failed: {exc}")
                continue
            log(f"{cell.name}: min {min(results[cell]['times']):.3f} s")
        return [(c, results[c]) for c in cells if c in results]
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qemu_lite.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="join this Ray cluster (default: a local one)")
    parser.add_argument("--workloads", help="comma-separated (default: all of workloads.py)")
    parser.add_argument("--modes", default="cached,naive,native")
    parser.add_argument("--bounds", default=",".join(BOUNDS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--benchmarks", default=str(DEFAULT_BENCHMARKS),
                        help="the checkout's benchmarks/ directory")
    parser.add_argument("-o", "--output", default="sweep.json")
    parser.add_argument("--report", help="Markdown report (default: OUTPUT with .md)")
    parser.add_argument("--plot", help="PNG plot (needs matplotlib)")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"qemu_lite.sweep: {message}", file=sys.stderr)
        return 2

    try:
        import ray  # noqa: F401
    except ImportError:
        return fail("Ray is not installed (pip install 'qemu-lite[scale]')")
    bench_dir = Path(args.benchmarks).resolve()
    if not (bench_dir / "workloads.py").is_file():
        return fail(f"no workloads.py in {bench_dir} (give the checkout's benchmarks/ "
                    "with --benchmarks)")
    if args.rounds < 1:
        return fail("--rounds must be at least 1")
    wl = _workloads_module(str(bench_dir))
    known = [w.name for w in wl.WORKLOADS]
    workloads = args.workloads.split(",") if args.workloads else known
    modes, bounds = args.modes.split(","), args.bounds.split(",")
    for what, values, allowed in (("workload", workloads, known), ("mode", modes, wl.MODES),
                                  ("bound", bounds, list(BOUNDS))):
        bad = [v for v in values if v not in allowed]
        if bad:
            return fail(f"unknown {what} {bad[0]!r} (known: {', '.join(allowed)})")

    cells = grid(workloads, modes, bounds)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat()
    t0 = time.monotonic()
    results = sweep(cells, rounds=args.rounds, bench_dir=bench_dir, address=args.address)
    doc = benchmark_json(results, started)
    output = Path(args.output)
    output.write_text(json.dumps(doc, indent=1) + "\n")
    sys.path.insert(0, str(bench_dir))
    import report  # benchmarks/report.py

    report_path = Path(args.report) if args.report else output.with_suffix(".md")
    report_path.write_text(report.markdown(doc["benchmarks"]) + "\n")
    if args.plot and not report.plot(doc["benchmarks"], args.plot):
        print("qemu_lite.sweep: no plot (matplotlib is not installed)", file=sys.stderr)
    print(f"{len(results)} of {len(cells)} cells in {time.monotonic() - t0:.1f} s: "
          f"{output}, {report_path}")
    return 0 if len(results) == len(cells) else 1


if __name__ == "__main__":
    sys.exit(main())
