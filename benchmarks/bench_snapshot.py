"""In-memory snapshots: restores per second while the guest dirties 100 pages in between.

``guests/dirtier.asm`` stores to 100 pages per round, forever.  Each round of the
benchmark runs it for 20 us of guest time (``--deterministic``: a few rounds,
the same 100 pages), then times ``Machine.restore(token)``.  Under the shadow MMU
(``cached``) a restore copies back the frames the dirty-page log names; under
``native`` (Unicorn's own MMU, no TLB fill to log from) it copies all of RAM:
the row to compare against.  With ``vga="std"`` the 16 MiB VRAM is part of every
token too (its pages the guest never wrote: a restore should not copy them).
``restores_per_s`` is 1 / the median restore.

    pytest benchmarks/bench_snapshot.py --benchmark-only
"""

from __future__ import annotations

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

PAGES = 100
FIRST_PAGE = 0x200000


@pytest.mark.parametrize(("mmu", "vga"), [("cached", "none"), ("cached", "std"),
                                          ("native", "none")])
@pytest.mark.parametrize("memory", ["64M", "1G"])
def test_restore_after_100_dirty_pages(benchmark, guests, memory: str, mmu: str, vga: str):
    kernel = guests("dirtier", {"PAGES": PAGES})
    with Machine(memory=memory, mmu=mmu, vga=vga, deterministic=True) as m:
        multiboot.load(m, kernel)
        assert m.run(timeout=60, guest_ns=100_000).reason == "guest-time"
        token = m.snapshot()
        saved = m.read_memory(FIRST_PAGE, PAGES * 4096)

        def dirty() -> None:
            m.run(timeout=60, guest_ns=m.clock.now() + 20_000)
            assert m.read_memory(FIRST_PAGE, PAGES * 4096) != saved

        benchmark.group = f"snapshot restore, {memory} guest, {PAGES} pages dirtied"
        rounds = 200 if mmu == "cached" or memory == "64M" else 10
        benchmark.pedantic(m.restore, args=(token,), setup=dirty, rounds=rounds, iterations=1)
        assert m.read_memory(FIRST_PAGE, PAGES * 4096) == saved
        median = benchmark.stats.stats.median
    benchmark.extra_info.update(memory=memory, mmu=mmu, vga=vga, pages_dirtied=PAGES,
                                restore_path="dirty pages" if mmu == "cached" else "all of RAM",
                                restores_per_s=round(1 / median, 1))
