# Shadow pages: the hash keyed by gfn and role (the seed's cache), their
# parent sptes, the reverse map from guest frames to the leaf sptes mapping
# them, zapping, and least-recently-used recycling.

cdef inline uint32_t _hash_gfn(uint64_t gfn) noexcept nogil:
    return <uint32_t>((gfn * 0x9E3779B97F4A7C15ULL) >> 52) & (HASH_BUCKETS - 1)


cdef inline uint32_t make_role(MmuMode *m, int level, int quadrant) noexcept nogil:
    return m.role_base | (<uint32_t>level << ROLE_LEVEL_SHIFT) | (<uint32_t>quadrant << ROLE_QUADRANT_SHIFT)


cdef inline int role_level(uint32_t role) noexcept nogil:
    return (role >> ROLE_LEVEL_SHIFT) & 7


cdef inline int role_levels(uint32_t role) noexcept nogil:
    return (role >> ROLE_LEVELS_SHIFT) & 7


cdef inline int role_quadrant(uint32_t role) noexcept nogil:
    return (role >> ROLE_QUADRANT_SHIFT) & 0x7F


cdef inline uint32_t _ref(uint32_t spi, uint32_t idx) noexcept nogil:
    return (spi << 9) | idx


cdef bint _refs_add(uint32_t **refs, uint32_t *n, uint32_t *cap, uint32_t ref) noexcept nogil:
    cdef uint32_t *p
    cdef uint32_t newcap
    if n[0] == cap[0]:
        newcap = 4 if cap[0] == 0 else cap[0] * 2
        p = <uint32_t *>realloc(refs[0], newcap * sizeof(uint32_t))
        if p == NULL:
            return False
        refs[0] = p
        cap[0] = newcap
    refs[0][n[0]] = ref
    n[0] += 1
    return True


cdef void _refs_del(uint32_t *refs, uint32_t *n, uint32_t ref) noexcept nogil:
    cdef uint32_t i
    for i in range(n[0]):
        if refs[i] == ref:
            n[0] -= 1
            refs[i] = refs[n[0]]
            return


# -- reverse map ---------------------------------------------------------------------

cdef inline void rmap_add(Mmu *mmu, uint64_t gfn, uint32_t ref) noexcept nogil:
    cdef Rmap *r = &mmu.rmap[gfn]
    _refs_add(&r.refs, &r.len, &r.cap, ref)


cdef inline void rmap_remove(Mmu *mmu, uint64_t gfn, uint32_t ref) noexcept nogil:
    cdef Rmap *r = &mmu.rmap[gfn]
    _refs_del(r.refs, &r.len, ref)


cdef void rmap_write_protect(Mmu *mmu, uint64_t gfn) noexcept nogil:
    """``gfn`` became a shadowed page table: no spte may let the guest write it directly."""
    cdef Rmap *r = &mmu.rmap[gfn]
    cdef uint32_t i, ref
    for i in range(r.len):
        ref = r.refs[i]
        mmu.sps[ref >> 9].spt[ref & 511] &= ~SPTE_HW_W
    mmu.stats.rmap_write_protect += 1


# -- spte lifetime -------------------------------------------------------------------

cdef inline bint _spte_maps_ram_4k(Mmu *mmu, ShadowPage *sp, uint64_t spte) noexcept nogil:
    return (spte & SPTE_LEAF) != 0 and role_level(sp.role) == 1 and \
        ((spte & SPTE_ADDR) >> 12) < mmu.nframes


cdef void drop_spte(Mmu *mmu, uint32_t spi, uint32_t idx) noexcept nogil:
    """Clear one spte and unlink what it referenced (rmap entry or child parent link)."""
    cdef ShadowPage *sp = mmu.sps[spi]
    cdef uint64_t spte = sp.spt[idx]
    cdef ShadowPage *child
    if not spte & SPTE_P:
        return
    ctx_invalidate_sp(mmu, spi)
    if spte & SPTE_LEAF:
        if _spte_maps_ram_4k(mmu, sp, spte):
            rmap_remove(mmu, (spte & SPTE_ADDR) >> 12, _ref(spi, idx))
    else:
        child = mmu.sps[(spte & SPTE_ADDR) >> 12]
        _refs_del(child.parents, &child.nparents, _ref(spi, idx))
    sp.spt[idx] = 0
    sp.npresent -= 1


cdef void set_spte(Mmu *mmu, uint32_t spi, uint32_t idx, uint64_t spte) noexcept nogil:
    cdef ShadowPage *sp = mmu.sps[spi]
    cdef ShadowPage *child
    cdef uint64_t old = sp.spt[idx]
    if old == spte:
        return
    if old & SPTE_P:
        # A leaf that keeps its frame keeps its rmap entry.
        if (old & SPTE_LEAF) and (spte & SPTE_LEAF) and (old & SPTE_ADDR) == (spte & SPTE_ADDR):
            # Rights only added (W, D, NX cleared; U is a restriction under SMAP/SMEP):
            # an entry made from the old spte is merely narrower, and a miss refills it.
            if (old & ~spte) & (SPTE_W | SPTE_D) or (old ^ spte) & SPTE_U or \
                    (spte & ~old) & SPTE_NX:
                ctx_invalidate_sp(mmu, spi)
            sp.spt[idx] = spte
            return
        drop_spte(mmu, spi, idx)
    sp.spt[idx] = spte
    sp.npresent += 1
    if spte & SPTE_LEAF:
        if _spte_maps_ram_4k(mmu, sp, spte):
            rmap_add(mmu, (spte & SPTE_ADDR) >> 12, _ref(spi, idx))
    else:
        child = mmu.sps[(spte & SPTE_ADDR) >> 12]
        _refs_add(&child.parents, &child.nparents, &child.parents_cap, _ref(spi, idx))


# -- LRU ---------------------------------------------------------------------------

cdef inline void _lru_unlink(Mmu *mmu, uint32_t spi) noexcept nogil:
    cdef ShadowPage *sp = mmu.sps[spi]
    if sp.lru_prev:
        mmu.sps[sp.lru_prev].lru_next = sp.lru_next
    else:
        mmu.lru_head = sp.lru_next
    if sp.lru_next:
        mmu.sps[sp.lru_next].lru_prev = sp.lru_prev
    else:
        mmu.lru_tail = sp.lru_prev
    sp.lru_prev = 0
    sp.lru_next = 0


cdef inline void _lru_push_front(Mmu *mmu, uint32_t spi) noexcept nogil:
    cdef ShadowPage *sp = mmu.sps[spi]
    sp.lru_prev = 0
    sp.lru_next = mmu.lru_head
    if mmu.lru_head:
        mmu.sps[mmu.lru_head].lru_prev = spi
    mmu.lru_head = spi
    if mmu.lru_tail == 0:
        mmu.lru_tail = spi


cdef inline void lru_touch(Mmu *mmu, uint32_t spi) noexcept nogil:
    if mmu.lru_head != spi:
        _lru_unlink(mmu, spi)
        _lru_push_front(mmu, spi)


# -- allocation, lookup, zap ----------------------------------------------------------------

cdef uint32_t _alloc_sp(Mmu *mmu) noexcept nogil:
    cdef uint32_t spi
    cdef ShadowPage *sp
    if mmu.n_free:
        mmu.n_free -= 1
        spi = mmu.free_list[mmu.n_free]
        sp = mmu.sps[spi]
    else:
        if mmu.sp_alloc >= mmu.sp_cap:
            return 0
        sp = <ShadowPage *>calloc(1, sizeof(ShadowPage))
        if sp == NULL:
            return 0
        mmu.sp_alloc += 1
        spi = mmu.sp_alloc
        mmu.sps[spi] = sp
    memset(sp.spt, 0, sizeof(sp.spt))
    sp.nparents = 0
    sp.write_count = 0
    sp.npresent = 0
    sp.hash_next = 0
    sp.unsync = False
    return spi


cdef uint32_t lookup_sp(Mmu *mmu, uint64_t gfn, uint32_t role) noexcept nogil:
    cdef uint32_t spi = mmu.hash[_hash_gfn(gfn)]
    cdef ShadowPage *sp
    while spi:
        sp = mmu.sps[spi]
        if sp.gfn == gfn and sp.role == role:
            return spi
        spi = sp.hash_next
    return 0


cdef uint32_t get_sp(CoreState *st, uint64_t gfn, uint32_t role) noexcept nogil:
    """Find or create the shadow page for guest table ``gfn`` used with ``role``.

    A new page write-protects its frame: the leaf sptes mapping it lose direct
    write access (rmap), and Unicorn's TLB is flushed if it may still hold a
    writable RAM mapping of the frame."""
    cdef Mmu *mmu = &st.mmu
    cdef uint32_t spi = lookup_sp(mmu, gfn, role)
    cdef uint32_t b
    cdef ShadowPage *sp
    if spi:
        mmu.stats.sp_found += 1
        lru_touch(mmu, spi)
        return spi
    if gfn >= mmu.nframes:
        return 0
    if mmu.frame_flags[gfn] & FRAME_UNSYNC and role_level(role) != 1:
        resync_gfn(st, gfn)   # a table above the leaves is never unsync
    spi = _alloc_sp(mmu)
    if spi == 0:
        return 0
    sp = mmu.sps[spi]
    sp.gfn = gfn
    sp.role = role
    sp.unsync = (mmu.frame_flags[gfn] & FRAME_UNSYNC) != 0   # another leaf role of it
    b = _hash_gfn(gfn)
    sp.hash_next = mmu.hash[b]
    mmu.hash[b] = spi
    _lru_push_front(mmu, spi)
    mmu.n_sp += 1
    mmu.stats.sp_created += 1
    mmu.sp_count[gfn] += 1
    if mmu.sp_count[gfn] == 1:
        rmap_write_protect(mmu, gfn)
        if mmu.wgen[gfn] == mmu.tlb_gen and not alias_retrack(mmu, gfn):
            flush_unicorn_tlb(st)
            mmu.stats.tlb_flushes_wp += 1
    return spi


cdef void zap_sp(Mmu *mmu, uint32_t spi) noexcept nogil:
    """Drop a shadow page: unlink it from its parents, children, rmap and hash."""
    cdef ShadowPage *sp = mmu.sps[spi]
    cdef uint32_t i, ref, b, cur, prev
    cdef ShadowPage *psp
    cdef bint quiet = mmu.ctx_quiet
    ctx_invalidate_sp(mmu, spi)
    mmu.ctx_quiet = True
    while sp.nparents:
        ref = sp.parents[sp.nparents - 1]
        psp = mmu.sps[ref >> 9]
        # drop_spte removes the parent link from this page's list.
        drop_spte(mmu, ref >> 9, ref & 511)
    if sp.npresent:
        for i in range(SP_ENTRIES):
            if sp.spt[i] & SPTE_P:
                drop_spte(mmu, spi, i)
    b = _hash_gfn(sp.gfn)
    cur = mmu.hash[b]
    prev = 0
    while cur:
        if cur == spi:
            if prev:
                mmu.sps[prev].hash_next = sp.hash_next
            else:
                mmu.hash[b] = sp.hash_next
            break
        prev = cur
        cur = mmu.sps[cur].hash_next
    _lru_unlink(mmu, spi)
    mmu.sp_count[sp.gfn] -= 1
    if mmu.sp_count[sp.gfn] == 0:
        unsync_forget(mmu, sp.gfn)
        alias_untrack(mmu, sp.gfn)
    sp.unsync = False
    for i in range(4):
        if mmu.cur_roots[i] == spi:
            mmu.have_mode = False  # reload the roots at the next fill
            mmu.cur_roots[i] = 0
    sp.role = SP_FREE
    mmu.free_list[mmu.n_free] = spi
    mmu.n_free += 1
    mmu.n_sp -= 1
    mmu.stats.sp_zapped += 1
    mmu.ctx_quiet = quiet


cdef void zap_all(Mmu *mmu) noexcept nogil:
    """Drop every shadow page.  Alias TLB entries are left: the callers flush the whole
    TLB after (flush_mmu, flush_shadow) or QEMU did before (naive's CR3 load); a shrink
    of the pool leaves them to take the alias path until the next flush."""
    ctx_drop_all(mmu)
    mmu.ctx_quiet = True
    mmu.alias_quiet = True
    while mmu.lru_head:
        zap_sp(mmu, mmu.lru_head)
    mmu.ctx_quiet = False
    mmu.alias_quiet = False
    mmu.have_mode = False


cdef inline bint _is_cur_root(Mmu *mmu, uint32_t spi) noexcept nogil:
    return spi == mmu.cur_roots[0] or spi == mmu.cur_roots[1] or \
        spi == mmu.cur_roots[2] or spi == mmu.cur_roots[3]


cdef void make_pages_available(Mmu *mmu, uint32_t want) noexcept nogil:
    """Recycle least-recently-used pages until ``want`` more can be created."""
    cdef uint32_t spi
    while mmu.n_sp + want > mmu.sp_cap and mmu.lru_tail:
        spi = mmu.lru_tail
        while spi and _is_cur_root(mmu, spi):
            spi = mmu.sps[spi].lru_prev
        if spi == 0:
            return
        zap_sp(mmu, spi)
        mmu.stats.sp_recycled += 1


cdef int mmu_init(CoreState *st, uint32_t max_pages) except -1:
    cdef Mmu *mmu = &st.mmu
    mmu.nframes = st.ram_size >> 12
    mmu.uc = st.uc
    mmu.sp_count = <uint16_t *>calloc(mmu.nframes, sizeof(uint16_t))
    mmu.frame_flags = <uint8_t *>calloc(mmu.nframes, 1)
    mmu.wgen = <uint32_t *>calloc(mmu.nframes, sizeof(uint32_t))
    mmu.fgen = <uint32_t *>calloc(mmu.nframes, sizeof(uint32_t))
    mmu.rmap = <Rmap *>calloc(mmu.nframes, sizeof(Rmap))
    mmu.alias = <AliasFrame *>calloc(ALIAS_SLOTS, sizeof(AliasFrame))
    mmu.tlb_gen = 1
    if not (mmu.sp_count and mmu.frame_flags and mmu.wgen and mmu.fgen and mmu.rmap and mmu.alias):
        raise MemoryError()
    mmu_set_capacity(mmu, max_pages)
    return 0


cdef int mmu_set_capacity(Mmu *mmu, uint32_t n) except -1:
    cdef ShadowPage **sps
    cdef uint32_t *fl
    cdef uint32_t i, spi
    if n < 16:
        raise ValueError("at least 16 shadow pages are needed")
    if n < mmu.sp_alloc:
        # Shrink: free every page, then let the pool grow again up to n.
        zap_all(mmu)
        for i in range(1, mmu.sp_alloc + 1):
            free(mmu.sps[i].parents)
            free(mmu.sps[i])
            mmu.sps[i] = NULL
        mmu.sp_alloc = 0
        mmu.n_free = 0
    sps = <ShadowPage **>realloc(mmu.sps, (n + 1) * sizeof(ShadowPage *))
    if sps == NULL:
        raise MemoryError()
    mmu.sps = sps
    fl = <uint32_t *>realloc(mmu.free_list, (n + 1) * sizeof(uint32_t))
    if fl == NULL:
        raise MemoryError()
    mmu.free_list = fl
    mmu.sp_cap = n
    return 0


cdef void mmu_free(Mmu *mmu) noexcept nogil:
    cdef uint64_t g
    cdef uint32_t i
    if mmu.sps != NULL:
        for i in range(1, mmu.sp_alloc + 1):
            if mmu.sps[i] != NULL:
                free(mmu.sps[i].parents)
                free(mmu.sps[i])
    free(mmu.sps)
    free(mmu.free_list)
    if mmu.rmap != NULL:
        for g in range(mmu.nframes):
            free(mmu.rmap[g].refs)
    free(mmu.rmap)
    free(mmu.sp_count)
    free(mmu.frame_flags)
    free(mmu.wgen)
    free(mmu.fgen)
    free(mmu.alias)
