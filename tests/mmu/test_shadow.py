"""Shadow page cache, reverse map, write tracking, flood detection and recycling."""

from __future__ import annotations

import struct

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

from mmu_core._core import TLB_CACHED, Core

CR0 = (1 << 31) | 1 | (1 << 16)
CR4 = 0x20
EFER = 0x500  # LME | LMA
PML4, PDPT, PD = 0x10000, 0x11000, 0x12000
PT0 = 0x20000  # one page table per 2 MiB slot from here


def make_core(nslots: int = 4) -> Core:
    core = Core(Uc(UC_ARCH_X86, UC_MODE_64), 8 << 20, TLB_CACHED)
    ram = core.ram
    struct.pack_into("<Q", ram, PML4, PDPT | 0x27)
    struct.pack_into("<Q", ram, PDPT, PD | 0x27)
    for s in range(nslots):
        pt = PT0 + s * 0x1000
        struct.pack_into("<Q", ram, PD + s * 8, pt | 0x27)
        for i in range(16):
            struct.pack_into("<Q", ram, pt + i * 8, (0x400000 + i * 0x1000) | 0x67)
    return core


def fill(core: Core, linear: int, access: str = "read"):
    return core.debug_fill(CR0, PML4, CR4, EFER, linear, access, False)


def test_hits_after_first_walk_and_audit_clean():
    core = make_core()
    assert fill(core, 0x1000)[0] is None
    walks = core.mmu_stats()["guest_walks"]
    assert fill(core, 0x1000)[0] is None
    s = core.mmu_stats()
    assert s["guest_walks"] == walks and s["shadow_hits_l1"] == 1
    assert core.is_tracked(PT0 >> 12) and core.is_tracked(PML4 >> 12)
    assert s["rmap_entries"] == 1
    assert core.audit() == []


def test_write_to_tracked_table_goes_through_alias_and_updates_spte():
    core = make_core()
    core.set_unsync(False)   # the trapped path (tests/mmu/test_unsync.py has the other)
    fill(core, 0x1000)
    # a write fill on the page-table frame itself (identity-mapped below) is redirected
    struct.pack_into("<Q", core.ram, PT0 + 32 * 8, PT0 | 0x67)   # map the PT at 0x20000
    err, (paddr, perms) = fill(core, 32 * 0x1000, "write")
    assert err is None and paddr == (1 << 40) + PT0 and perms & 2
    core.debug_alias_write(PT0 + 8, 4, 0x500000 | 0x67)      # low half first
    core.debug_alias_write(PT0 + 12, 4, 0)
    assert fill(core, 0x1000)[1][0] == 0x500000
    assert core.mmu_stats()["pte_updated"] >= 1
    assert core.audit() == []


def test_flood_zaps_an_unused_table():
    core = make_core()
    fill(core, 0x1000)
    for i in range(5):
        core.debug_alias_write(PT0 + 0x100 + i * 8, 8, 0)
    s = core.mmu_stats()
    assert s["flood_zaps"] == 1 and not core.is_tracked(PT0 >> 12)
    assert fill(core, 0x1000)[0] is None
    assert core.audit() == []


def test_notify_phys_write_zaps_stale_entries():
    core = make_core()
    fill(core, 0x1000)
    struct.pack_into("<Q", core.ram, PT0 + 8, 0)   # host write, then notify
    core.notify_phys_write(PT0 + 8, 8)
    assert fill(core, 0x1000)[0] == 0               # not present: #PF, error code 0
    assert core.audit() == []


def test_lru_recycling_respects_the_bound():
    core = make_core(nslots=64)
    core.set_max_shadow_pages(16)
    for s in range(64):
        assert fill(core, s << 21)[0] is None
    stats = core.mmu_stats()
    assert stats["sp_live"] <= 16 and stats["sp_recycled"] > 0
    assert core.audit() == []
    core.flush_mmu()
    assert core.mmu_stats()["sp_live"] == 0


def test_prefetch_shadows_accessed_neighbours_and_their_hits_are_counted():
    core = make_core()
    core.set_pte_prefetch(8)
    assert fill(core, 0x1000)[0] is None          # entries 0-7 of the table: A and D set
    s = core.mmu_stats()
    assert s["pte_prefetched"] == 7
    walks = s["guest_walks"]
    assert fill(core, 0x5000, "write")[1][0] == 0x405000
    s = core.mmu_stats()
    assert s["guest_walks"] == walks and s["pte_prefetch_used"] == 1
    assert fill(core, 0x9000)[0] is None           # entry 9: outside the group, walked
    assert core.mmu_stats()["guest_walks"] > walks
    assert core.audit() == []
