# Address-space TLB contexts: Unicorn's TLB kept per guest root across CR3
# loads (engine patch i), as PCID-tagged hardware keeps several.
#
# At a CR3 load the engine asks _ctx_tag_cb for the tag of the address space
# entered and of the one the current TLB belongs to, parks the current TLB
# under the latter and brings back the parked TLB of the former.  A tag names
# a root (its gfn and role: paging form, quadrant, NXE, PSE) and the mode bits
# that change what a fill answers without changing the role (CR0.WP,
# CR4.SMEP/SMAP, A20).
#
# Parked entries must stay exactly what a fill would answer now, so every
# change under a root drops its contexts: an spte changed or dropped (guest
# writes to shadowed tables, flood zaps, recycling) walks up the parent links
# to the roots above it.  A changed root that is the current one taints the
# current TLB (cur_tag = 0): it is discarded, not parked, at the next switch.
# Everything else that could make a parked entry stale flushes Unicorn's TLB,
# which drops every parked context in the engine (frames that become page
# tables or code, mode changes of CR0/CR4, memory map changes).

cdef uint64_t CTX_VALID = 1ULL << 19
cdef uint64_t CTX_WP = 1ULL << 15
cdef uint64_t CTX_SMEP = 1ULL << 16
cdef uint64_t CTX_SMAP = 1ULL << 17
cdef uint64_t CTX_A20 = 1ULL << 18
cdef uint64_t CTX_ROOT_MASK = ~(0xFULL << 15)   # the root only, any WP/SMEP/SMAP/A20


cdef inline uint64_t _ctx_key(uint64_t gfn, uint32_t role) noexcept nogil:
    """The root part of a tag; the four roots of a 32-bit table share one."""
    if role_levels(role) == 2:
        role &= ~(<uint32_t>0x7F << ROLE_QUADRANT_SHIFT)
    return (gfn << 20) | (role & 0x7FFF) | CTX_VALID


cdef uint64_t ctx_tag(CoreState *st, MmuMode *m) noexcept nogil:
    """The tag of the address space ``m`` describes (0: paging off, no contexts)."""
    cdef int q = 0
    cdef uint64_t tag
    if m.levels == 0 or st.mmu.mode != TLB_CACHED_C:
        return 0
    if m.levels == 3:
        q = <int>((m.cr3 >> 5) & 0x7F)
    tag = _ctx_key(_root_gfn(m), make_role(m, _top_level(m.levels), q))
    if m.wp:
        tag |= CTX_WP
    if m.smep:
        tag |= CTX_SMEP
    if m.smap:
        tag |= CTX_SMAP
    if m.a20_mask == 0xFFFFFFFFFFFFFFFFULL:
        tag |= CTX_A20
    return tag


cdef uint64_t _ctx_tag_cb(void *opaque, uint64_t *current) noexcept nogil:
    """Engine callback at a CR3 load (the new CR3 is in place)."""
    cdef CoreState *st = <CoreState *>opaque
    cdef MmuMode m
    cdef uint64_t tag
    if not st.mmu.ctx_on:
        current[0] = 0
        return 0
    st.mmu.stats.cr3_loads += 1
    if st.mmu.n_unsync:
        resync_all(st)   # before the tags: a stale spte drops the contexts above it
    read_mode(st, &m)
    tag = ctx_tag(st, &m)
    current[0] = st.mmu.cur_tag
    st.mmu.cur_tag = tag
    return tag


cdef inline void ctx_taint(Mmu *mmu) noexcept nogil:
    """The current TLB may hold an entry no fill would give now: never park it."""
    if mmu.cur_tag:
        mmu.cur_tag = 0
        mmu.stats.ctx_taints += 1


cdef void _ctx_drop_up(Mmu *mmu, uint32_t spi, int depth) noexcept nogil:
    cdef ShadowPage *sp = mmu.sps[spi]
    cdef int levels = role_levels(sp.role)
    cdef uint64_t key
    cdef uint32_t i
    if role_level(sp.role) == _top_level(levels):
        key = _ctx_key(sp.gfn, sp.role)
        uc_ql_tlb_ctx_drop(mmu.uc, key, CTX_ROOT_MASK)
        mmu.stats.ctx_drops += 1
        if (mmu.cur_tag & CTX_ROOT_MASK) == key:
            ctx_taint(mmu)
        return
    if depth >= MAX_LEVELS:
        return
    for i in range(sp.nparents):
        _ctx_drop_up(mmu, sp.parents[i] >> 9, depth + 1)


cdef inline void ctx_invalidate_sp(Mmu *mmu, uint32_t spi) noexcept nogil:
    """An spte of shadow page ``spi`` changed: drop the contexts of every root above it."""
    if mmu.ctx_on and not mmu.ctx_quiet:
        _ctx_drop_up(mmu, spi, 0)


cdef void ctx_drop_all(Mmu *mmu) noexcept nogil:
    if mmu.ctx_on:
        uc_ql_tlb_ctx_drop(mmu.uc, 0, 0)
        ctx_taint(mmu)
