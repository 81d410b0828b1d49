"""mmu_core's C walker and whole fill against the Python reference walker.

Hypothesis builds random guest page tables (every paging form, random
permission, large-page, NX, accessed/dirty and reserved bits, entries
pointing past RAM, tables referencing themselves), random CPU modes and
random accesses, and checks that mmu_core gives the same translation,
permission decision, #PF error code and A/D updates as qemu_lite.paging.
The fill test also rewrites guest entries between accesses (through the
page-table write alias, as guest stores do) so that stale shadow entries
would show, and runs the audit afterwards.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

from mmu_core._core import TLB_CACHED, TLB_NAIVE, Core
from qemu_lite import paging as P

RAM = 4 << 20
POOL = [0x10000 + 0x1000 * i for i in range(8)]  # frames holding tables (and data)
INDICES = [0, 1, 2, 511]                         # entry indices the tables populate
INDICES32 = [0, 1, 2, 1023]
ALIAS_BASE = 1 << 40

FLAG_BITS = [P.PTE_W, P.PTE_U, P.PTE_PWT, P.PTE_PCD, P.PTE_A, P.PTE_D, P.PTE_PS, 1 << 8]


@st.composite
def entry64(draw):
    flags = P.PTE_P if draw(st.integers(0, 9)) else 0
    for bit in FLAG_BITS:
        if draw(st.booleans()):
            flags |= bit
    if draw(st.booleans()):
        flags |= P.PTE_NX
    kind = draw(st.integers(0, 19))
    if kind == 0:
        addr = draw(st.sampled_from([RAM, 0x7FFFF000, 0xFF_FFFF_F000]))  # past RAM
    else:
        addr = draw(st.sampled_from(POOL + [0, 0x200000, 0x400000 - 0x1000]))
    if draw(st.integers(0, 14)) == 0:
        flags |= 1 << draw(st.sampled_from([13, 21, 40, 51, 52, 62]))  # maybe reserved
    return addr | flags


@st.composite
def entry32(draw):
    flags = P.PTE_P if draw(st.integers(0, 9)) else 0
    for bit in FLAG_BITS:
        if draw(st.booleans()):
            flags |= bit
    addr = draw(st.sampled_from(POOL + [0, 0x200000, RAM, 0xFFC00000]))
    if draw(st.integers(0, 9)) == 0:
        flags |= 1 << draw(st.sampled_from([13, 14, 21]))
    return (addr | flags) & 0xFFFFFFFF


@st.composite
def guest_tables(draw, wide):
    """{physical address of entry: value} over the table pool."""
    tables = {}
    for frame in POOL:
        for idx in (INDICES if wide else INDICES32):
            tables[frame + idx * (8 if wide else 4)] = draw(entry64() if wide else entry32())
    return tables


@st.composite
def cpu_mode(draw):
    levels = draw(st.sampled_from([2, 3, 4]))
    cr0 = P.CR0_PG | 1 | (P.CR0_WP if draw(st.booleans()) else 0)
    cr4 = 0
    if draw(st.booleans()):
        cr4 |= P.CR4_PSE
    if draw(st.booleans()):
        cr4 |= P.CR4_SMEP
    if draw(st.booleans()):
        cr4 |= P.CR4_SMAP
    efer = P.EFER_NXE if draw(st.booleans()) else 0
    root = draw(st.sampled_from(POOL))
    if levels == 2:
        cr3 = root
    elif levels == 3:
        cr4 |= P.CR4_PAE
        cr3 = root + draw(st.sampled_from([0, 0x20, 0xFE0]))
    else:
        cr4 |= P.CR4_PAE
        efer |= P.EFER_LMA | (1 << 8)
        cr3 = root
    eflags = P.EFLAGS_AC if draw(st.booleans()) else 0
    return P.PagingState(cr0, cr3, cr4, efer, eflags)


@st.composite
def linear_address(draw, levels):
    off = draw(st.sampled_from([0, 0x7, 0xFF8]))
    if levels == 2:
        return (draw(st.sampled_from(INDICES32)) << 22) | (draw(st.sampled_from(INDICES32)) << 12) | off
    if levels == 3:
        return (draw(st.integers(0, 3)) << 30) | (draw(st.sampled_from(INDICES)) << 21) | \
            (draw(st.sampled_from(INDICES)) << 12) | off
    a = 0
    for shift in (39, 30, 21, 12):
        a |= draw(st.sampled_from(INDICES)) << shift
    if a >> 47:
        a |= 0xFFFF << 48
    return a | off


access_kinds = st.sampled_from([P.READ, P.WRITE, P.FETCH])


def _new_core(mode: int = TLB_CACHED) -> Core:
    return Core(Uc(UC_ARCH_X86, UC_MODE_64), RAM, mode)


def _write_tables(core: Core, tables: dict[int, int], wide: bool) -> None:
    ram = core.ram
    for addr, value in tables.items():
        struct.pack_into("<Q" if wide else "<I", ram, addr, value)


def _oracle(mem: bytearray, state: P.PagingState, linear: int, access: str, user: bool):
    try:
        t = P.translate(P.RamView(memoryview(mem)), state, linear, access, user)
    except P.PageFault as pf:
        return pf.error_code, None
    return None, (t.paddr, t.page_size, t.writable, t.user, t.executable)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_walker_matches_reference(data):
    state = data.draw(cpu_mode())
    wide = state.levels != 2
    tables = data.draw(guest_tables(wide))
    core = _new_core()
    _write_tables(core, tables, wide)
    mem = bytearray(core.ram)
    for _ in range(data.draw(st.integers(1, 6))):
        linear = data.draw(linear_address(state.levels))
        access = data.draw(access_kinds)
        user = data.draw(st.booleans())
        want = _oracle(mem, state, linear, access, user)
        got = core.debug_walk(state.cr0, state.cr3, state.cr4, state.efer, linear, access, user,
                              state.eflags)
        assert got == want, (hex(linear), access, user)
        assert bytes(core.ram) == bytes(mem), "A/D bits differ"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), naive=st.booleans(), prefetch=st.sampled_from([0, 8, 64]))
def test_fill_matches_reference_under_rewrites(data, naive, prefetch):
    """The shadow-cached fill answers like a fresh walk, even as the guest rewrites entries
    (with PTE prefetch too: prefetched entries must answer as a walk would)."""
    state = data.draw(cpu_mode())
    wide = state.levels != 2
    tables = data.draw(guest_tables(wide))
    core = _new_core(TLB_NAIVE if naive else TLB_CACHED)
    core.set_pte_prefetch(prefetch)
    _write_tables(core, tables, wide)
    mem = bytearray(core.ram)
    addrs = sorted(tables)
    for _ in range(data.draw(st.integers(1, 12))):
        if data.draw(st.integers(0, 3)) == 0:
            # The guest rewrites one entry: 8-byte entries arrive as two halves.
            addr = data.draw(st.sampled_from(addrs))
            value = data.draw(entry64() if wide else entry32())
            if wide and data.draw(st.booleans()):
                core.debug_alias_write(addr, 4, value & 0xFFFFFFFF)
                core.debug_alias_write(addr + 4, 4, value >> 32)
            elif wide:
                core.debug_alias_write(addr, 8, value)
            else:
                core.debug_alias_write(addr, 4, value)
            struct.pack_into("<Q" if wide else "<I", mem, addr, value)
            continue
        if data.draw(st.integers(0, 5)) == 0:
            state = data.draw(cpu_mode())  # a CR3 load or a mode change
            wide_now = state.levels != 2
            if wide_now != wide:
                continue
        linear = data.draw(linear_address(state.levels))
        access = data.draw(access_kinds)
        user = data.draw(st.booleans())
        err, tr = _oracle(mem, state, linear, access, user)
        got_err, got = core.debug_fill(state.cr0, state.cr3, state.cr4, state.efer, linear,
                                       access, user, state.eflags)
        assert got_err == err, (hex(linear), access, user)
        if tr is not None:
            assert got is not None
            paddr, perms = got
            if paddr >= ALIAS_BASE:
                assert access == P.WRITE
                paddr -= ALIAS_BASE
            assert paddr == tr[0] & ~0xFFF
            need = {P.READ: 1, P.WRITE: 2, P.FETCH: 4}[access]
            assert perms & need
            if perms & 2:
                assert tr[2] or not user, "write granted on a read-only page"
            if perms & 4:
                assert tr[4], "exec granted on an NX page"
        assert bytes(core.ram) == bytes(mem), "A/D bits differ"
    assert core.audit() == []
