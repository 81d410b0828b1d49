"""How much does the shadow cache buy, on which workload?  (pytest-benchmark)

Every workload guest of ``workloads.WORKLOADS`` runs under each MMU mode:
``cached`` (shadow pages kept across CR3 loads, roots reused), ``naive``
(the same shadow MMU, everything dropped at each CR3 load) and ``native``
(Unicorn's own MMU), with the default shadow page bound and with a small one
(64 pages, least recently used recycled).  Each test runs the guest twice
(two rounds); both runs must print the same checksum as every other mode and
give identical MMU counters.  The second run's counters go to
``benchmark.extra_info`` beside the time.

    pytest benchmarks/bench_mmu.py --benchmark-only
    pytest benchmarks/ --benchmark-only --benchmark-json=results.json
    python benchmarks/report.py results.json -o report.png
"""

from __future__ import annotations

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
