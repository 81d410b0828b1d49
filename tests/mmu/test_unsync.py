"""Unsync leaf shadow pages: a written leaf table is left writable, its entries are
re-read by the fills that use them, and a CR3 load resyncs and write-protects it again.

The guest tables map their own leaf tables (and the page directory) into a window
of virtual pages, so guest stores to PTEs go through write fills as on a CPU: to
the page-table alias while a table is tracked, straight to RAM once it is unsync.
The hypothesis test drives random stores, accesses and CR3 switches and checks
every fill against qemu_lite.paging's walk of the same memory.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

from mmu_core._core import TLB_CACHED, TLB_NAIVE, Core
from qemu_lite import paging as P

RAM = 8 << 20
CR0 = P.CR0_PG | 1 | P.CR0_WP
CR4 = P.CR4_PAE
EFER = P.EFER_LMA | (1 << 8) | P.EFER_NXE
PML4, PML4B, PDPT, PD = 0x10000, 0x13000, 0x11000, 0x12000
PTS = [0x20000 + 0x1000 * k for k in range(4)]   # PD entry k -> PTS[k]: virtual k << 21
WINDOW = 100            # PTS[0] entries 100-103 map the PTs, 104 the PD (data pages)
DATA = [0x400000 + 0x1000 * j for j in range(8)]
ALIAS = 1 << 40


def make_core(mode: int = TLB_CACHED) -> Core:
    core = Core(Uc(UC_ARCH_X86, UC_MODE_64), RAM, mode)
    core.set_unsync(True)
    ram = core.ram
    for root in (PML4, PML4B):
        struct.pack_into("<Q", ram, root, PDPT | 0x27)
    struct.pack_into("<Q", ram, PDPT, PD | 0x27)
    for k, pt in enumerate(PTS):
        struct.pack_into("<Q", ram, PD + k * 8, pt | 0x27)
        for i in range(8):
            struct.pack_into("<Q", ram, pt + i * 8, DATA[i] | 0x67)
    for i, frame in enumerate(PTS + [PD]):
        struct.pack_into("<Q", ram, PTS[0] + (WINDOW + i) * 8, frame | 0x63)
    return core


def fill(core: Core, linear: int, access: str = "read", cr3: int = PML4, user: bool = False):
    return core.debug_fill(CR0, cr3, CR4, EFER, linear, access, user)


def window(table: int, entry: int = 0) -> int:
    """The virtual address of entry ``entry`` of table ``table`` (0-3: PTs, 4: the PD)."""
    return ((WINDOW + table) << 12) | entry * 8


def guest_store(core: Core, linear: int, value: int, cr3: int = PML4) -> None:
    """A supervisor 8-byte store as the CPU makes it: a write fill, then the store."""
    err, got = fill(core, linear, "write", cr3)
    assert err is None
    paddr, _ = got
    if paddr >= ALIAS:
        core.debug_alias_write(paddr - ALIAS + (linear & 0xFFF), 8, value)
    else:
        struct.pack_into("<Q", core.ram, paddr + (linear & 0xFFF), value)


def test_a_written_leaf_table_goes_unsync_and_its_entries_are_reread():
    core = make_core()
    assert fill(core, 1 << 12)[1][0] == DATA[1]
    err, (paddr, perms) = fill(core, window(0), "write")
    assert err is None and paddr == PTS[0] and perms & 2      # RAM, not the alias
    assert core.is_unsync(PTS[0] >> 12)
    struct.pack_into("<Q", core.ram, PTS[0] + 8, DATA[5] | 0x67)   # untrapped
    assert fill(core, 1 << 12)[1][0] == DATA[5]
    s = core.mmu_stats()
    assert s["unsync_pages"] == 1 and s["wp_traps_avoided"] == 1 and s["unsync_stale"] == 1
    assert s["wp_traps"] == 0
    assert core.audit() == []
    # A CR3 load resyncs it and write-protects it again; the next store unsyncs it anew.
    assert fill(core, 2 << 12)[0] is None
    struct.pack_into("<Q", core.ram, PTS[0] + 16, 0)               # its spte goes stale
    assert fill(core, 3 << 12, cr3=PML4B)[0] is None
    s = core.mmu_stats()
    assert s["resyncs"] == 1 and s["resync_updates"] == 1 and not core.is_unsync(PTS[0] >> 12)
    assert core.audit() == []
    assert fill(core, 2 << 12, cr3=PML4B)[0] == 0               # the dropped entry: #PF
    assert fill(core, window(0), "write", cr3=PML4B)[1][0] == PTS[0]
    assert core.mmu_stats()["unsync_pages"] == 2


def test_a_table_above_the_leaves_is_never_unsync():
    core = make_core()
    fill(core, 0)
    err, (paddr, _) = fill(core, window(4), "write")
    assert err is None and paddr == ALIAS + PD
    assert not core.is_unsync(PD >> 12) and core.mmu_stats()["wp_traps"] == 1


def test_an_unsync_table_wanted_higher_up_is_resynced_first():
    core = make_core()
    fill(core, 1 << 21)                                         # PTS[1] shadowed at level 1
    guest_store(core, window(1, 1), DATA[6] | 0x67)             # unsync, then written
    assert core.is_unsync(PTS[1] >> 12)
    # PDPT entry 1 -> PTS[1] used as a page directory: its entry 0 -> a table at DATA[0].
    struct.pack_into("<Q", core.ram, DATA[0], 0x600000 | 0x67)
    core.debug_alias_write(PDPT + 8, 8, PTS[1] | 0x27)
    assert fill(core, 1 << 30)[1][0] == 0x600000
    assert not core.is_unsync(PTS[1] >> 12) and core.mmu_stats()["resyncs"] == 1
    assert fill(core, (1 << 21) | (1 << 12))[1][0] == DATA[6]
    assert core.audit() == []


def test_turning_unsync_off_resyncs_everything():
    core = make_core()
    for k in range(4):
        fill(core, k << 21)
        guest_store(core, window(k, 2), DATA[7] | 0x67)
    assert core.mmu_stats()["unsync_now"] == 4
    core.set_unsync(False)
    s = core.mmu_stats()
    assert s["unsync_now"] == 0 and s["resyncs"] == 4 and s["unsync"] == 0
    assert core.audit() == []
    assert fill(core, window(0), "write")[1][0] == ALIAS + PTS[0]   # trapped again


@st.composite
def entry(draw):
    target = draw(st.sampled_from(DATA[:4] + PTS + [PD]))
    flags = P.PTE_P if draw(st.integers(0, 5)) else 0
    for bit in (P.PTE_W, P.PTE_U, P.PTE_A, P.PTE_D):
        if draw(st.integers(0, 3)):
            flags |= bit
    if draw(st.integers(0, 7)) == 0:
        flags |= P.PTE_NX
    if draw(st.integers(0, 19)) == 0:
        flags |= 1 << 51                                        # reserved
    return target | flags


OPS = st.sampled_from(["store", "store", "access", "access", "access", "switch"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), naive=st.booleans(), prefetch=st.sampled_from([0, 8]))
def test_unsync_fills_answer_as_a_fresh_walk(data, naive, prefetch):
    core = make_core(TLB_NAIVE if naive else TLB_CACHED)
    core.set_pte_prefetch(prefetch)
    mem = bytearray(core.ram)
    cr3 = PML4

    def oracle(linear: int, access: str, user: bool):
        state = P.PagingState(CR0, cr3, CR4, EFER, 0)
        try:
            t = P.translate(P.RamView(memoryview(mem)), state, linear, access, user)
        except P.PageFault as pf:
            return pf.error_code, None
        return None, t

    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(OPS)
        if op == "switch":
            cr3 = PML4B if cr3 == PML4 else PML4
            continue
        if op == "store":
            table = data.draw(st.integers(0, 4))
            idx = data.draw(st.sampled_from([0, 1, 2, 3, 100, 101, 104]))
            linear, access, user = window(table, idx), P.WRITE, False
        else:
            k = data.draw(st.integers(0, 3))
            linear = (k << 21) | (data.draw(st.integers(0, 3)) << 12)
            if data.draw(st.integers(0, 4)) == 0:
                linear = window(data.draw(st.integers(0, 4)))
            access = data.draw(st.sampled_from([P.READ, P.WRITE, P.FETCH]))
            user = data.draw(st.booleans())
        err, t = oracle(linear, access, user)
        got_err, got = fill(core, linear, access, cr3, user)
        assert got_err == err, (hex(linear), access, user)
        assert bytes(core.ram) == bytes(mem), "A/D bits differ"
        if t is None:
            continue
        paddr, perms = got
        gfn = (paddr % ALIAS) >> 12
        assert paddr % ALIAS == t.paddr & ~0xFFF
        if paddr < ALIAS and perms & 2 and core.is_tracked(gfn):
            assert core.is_unsync(gfn), "a tracked table left writable but not unsync"
        if op == "store":
            value = data.draw(entry())
            offset = t.paddr
            if paddr >= ALIAS:
                core.debug_alias_write(offset, 8, value)
            else:
                event("untrapped store to a page table")
                struct.pack_into("<Q", core.ram, offset, value)
            struct.pack_into("<Q", mem, offset, value)
    if core.mmu_stats()["unsync_stale"]:
        event("a fill refreshed a stale unsync entry")
    assert core.audit() == []
    core.resync_mmu()
    assert core.audit() == []
