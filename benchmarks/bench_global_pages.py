"""Global pages across CR3 loads (engine patch k), beside Unicorn's own walker.

``shared_kernel`` with 64 processes: more address spaces than the 32 parked TLB
contexts, so under LRU every switch enters a space whose TLB was evicted.  Its
kernel half (128 pages) is global: with global pages carried (``cached``, the
default) the switch keeps them, without (``cached_noglobal``) they are refilled
after every CR3 load.  ``native`` is Unicorn's own MMU, which flushes at every
CR3 load.  All three must print the same checksum.

    pytest benchmarks/bench_global_pages.py --benchmark-only
"""

from __future__ import annotations

import pytest
from workloads import PreparedGuest, Run, summarize

from mmu_core._core import engine_has_global_pages

CASES = [("cached", True), ("cached_noglobal", False), ("native", None)]


@pytest.mark.parametrize(("name", "global_pages"), CASES, ids=[c[0] for c in CASES])
def test_shared_kernel_64(benchmark, guests, name: str, global_pages: bool | None):
    if global_pages is not None and not engine_has_global_pages():
        pytest.skip("the loaded engine has no global-page support (engine patch k)")
    kernel = guests("shared_kernel", {"NPROC": 64})
    mmu = "native" if global_pages is None else "cached"
    runs: list[Run] = []

    def setup():
        def configure(m):
            if global_pages is not None:
                m.core.set_global_pages(global_pages)
        return (PreparedGuest(kernel, mmu, setup=configure),), {}

    def target(guest: PreparedGuest) -> None:
        runs.append(guest.run())

    benchmark.group = "global pages: shared_kernel, 64 processes"
    benchmark.pedantic(target, setup=setup, rounds=2, iterations=1)
    checksums = {r.checksum for r in runs}
    assert len(checksums) == 1, checksums
    info = summarize(runs[-1].stats, mmu, runs[-1].wall_s)
    info.update(checksum=runs[-1].checksum, global_pages=global_pages,
                global_carried=runs[-1].stats.get("global_carried"))
    benchmark.extra_info.update(info)
    if global_pages:
        assert runs[-1].stats["global_carried"] > 0
