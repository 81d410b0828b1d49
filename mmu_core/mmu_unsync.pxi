# Unsync leaf shadow pages (KVM 2008's unsync shadow pages).
#
# A write fill on a guest leaf table that only level-1 shadow pages cache may
# leave the frame writable instead of sending its stores to the page-table
# alias: the frame becomes "unsync" and the guest rewrites its PTEs in RAM,
# untrapped.  The sptes caching it may then lag the guest's entries, which the
# architecture allows of a TLB until INVLPG or a CR3 load:
#
# - every fill that reaches a leaf spte of an unsync page re-reads its gpte
#   first and refreshes the spte when they differ (_sync_spte), so the fill
#   answers as a fresh walk would.  INVLPG drops the engine's entry for the page
#   (and patch k drops it from parked TLBs), so the next access fills: that is
#   the resync INVLPG asks for, done lazily, one entry at a time;
# - a CR3 load (the contexts' tag callback, or the first fill after it)
#   resyncs every unsync frame: stale sptes are changed, which drops the parked
#   TLB contexts of every root above them (set_spte), and the frame is write-
#   protected again: the TLB entries that granted it write access go (their
#   virtual pages are remembered; patch l flushes them from every TLB), or the
#   whole TLB when the engine cannot or too many were granted.
#
# On by default in cached and naive (Core.set_unsync, --mmu-unsync).
# Only frames that all shadow pages cache at level 1 become unsync; a frame
# wanted as a higher-level table is resynced first (get_sp).  At most
# UNSYNC_MAX frames are unsync at once.


cdef inline int _unsync_find(Mmu *mmu, uint64_t gfn) noexcept nogil:
    cdef uint32_t i
    for i in range(mmu.n_unsync):
        if mmu.unsync[i].gfn == gfn:
            return <int>i
    return -1


cdef inline void _gpte_mode(ShadowPage *sp, MmuMode *m) noexcept nogil:
    """What leaf_spte and _gpte_rsvd need of the mode, from a shadow page's role."""
    m.levels = role_levels(sp.role)
    m.nxe = (sp.role & ROLE_NXE) != 0


cdef bint _sync_spte(CoreState *st, uint32_t spi, int idx) noexcept nogil:
    """Bring leaf spte ``idx`` of level-1 page ``spi`` in line with its gpte (refresh
    or drop).  True when it had to change."""
    cdef Mmu *mmu = &st.mmu
    cdef ShadowPage *sp = mmu.sps[spi]
    cdef uint64_t spte = sp.spt[idx]
    cdef uint64_t gpte, base, new
    cdef MmuMode m
    if not spte & SPTE_P:
        return False
    _gpte_mode(sp, &m)
    if m.levels == 2:
        gpte = _load_gpte(st, (sp.gfn << 12) + <uint64_t>(role_quadrant(sp.role) * 512 + idx) * 4,
                          False)
    else:
        gpte = _load_gpte(st, (sp.gfn << 12) + <uint64_t>idx * 8, True)
    if (gpte & (PT_PRESENT | PT_ACCESSED)) == (PT_PRESENT | PT_ACCESSED) and \
            not _gpte_rsvd(&m, sp, gpte):
        base = gpte & (0xFFFFF000ULL if m.levels == 2 else PHYS_MASK & ~0xFFFULL)
        new = leaf_spte(mmu, &m, gpte, 1, base)
        if ((new ^ spte) & ~(SPTE_PREFETCH | SPTE_HW_W)) == 0:
            return False
        set_spte(mmu, spi, idx, new)
        return True
    drop_spte(mmu, spi, idx)
    return True


cdef bint unsync_write(CoreState *st, uint64_t gfn, uint64_t gva) noexcept nogil:
    """A write fill through ``gva`` on shadowed frame ``gfn``: may it go to RAM?

    Yes when the frame is unsync or may become so (only level-1 shadow pages cache
    it, and there is room); the virtual page is remembered for the resync."""
    cdef Mmu *mmu = &st.mmu
    cdef int i = _unsync_find(mmu, gfn)
    cdef uint32_t spi, j
    cdef ShadowPage *sp
    cdef UnsyncFrame *u
    if i < 0:
        if mmu.n_unsync >= UNSYNC_MAX:
            return False
        spi = mmu.hash[_hash_gfn(gfn)]
        while spi:
            sp = mmu.sps[spi]
            if sp.gfn == gfn and role_level(sp.role) != 1:
                return False
            spi = sp.hash_next
        spi = mmu.hash[_hash_gfn(gfn)]
        while spi:
            sp = mmu.sps[spi]
            if sp.gfn == gfn:
                sp.unsync = True
            spi = sp.hash_next
        i = <int>mmu.n_unsync
        mmu.n_unsync += 1
        u = &mmu.unsync[i]
        u.gfn = gfn
        u.ngva = 0
        u.overflow = False
        mmu.frame_flags[gfn] |= FRAME_UNSYNC
        mmu.stats.unsync_pages += 1
    u = &mmu.unsync[i]
    gva &= ~0xFFFULL
    for j in range(u.ngva):
        if u.gva[j] == gva:
            return True
    if u.ngva < UNSYNC_GVAS:
        u.gva[u.ngva] = gva
        u.ngva += 1
    else:
        u.overflow = True
    return True


cdef void _unsync_remove(Mmu *mmu, int i) noexcept nogil:
    mmu.frame_flags[mmu.unsync[i].gfn] &= ~FRAME_UNSYNC
    mmu.n_unsync -= 1
    if <uint32_t>i != mmu.n_unsync:
        mmu.unsync[i] = mmu.unsync[mmu.n_unsync]


cdef void unsync_forget(Mmu *mmu, uint64_t gfn) noexcept nogil:
    """The frame's last shadow page went: it is not a tracked table any more."""
    cdef int i
    if mmu.frame_flags[gfn] & FRAME_UNSYNC:
        i = _unsync_find(mmu, gfn)
        if i >= 0:
            _unsync_remove(mmu, i)


cdef bint _resync_frame(CoreState *st, int i) noexcept nogil:
    """Resync unsync frame ``i`` and track its stores again.  True when the whole TLB
    must be flushed to take its write access away (the caller flushes once)."""
    cdef Mmu *mmu = &st.mmu
    cdef UnsyncFrame *u = &mmu.unsync[i]
    cdef uint64_t gfn = u.gfn
    cdef uint32_t spi, j
    cdef int idx
    cdef ShadowPage *sp
    cdef bint full = False
    spi = mmu.hash[_hash_gfn(gfn)]
    while spi:
        sp = mmu.sps[spi]
        if sp.gfn == gfn and sp.role != SP_FREE:
            if sp.npresent:
                for idx in range(SP_ENTRIES):
                    if sp.spt[idx] & SPTE_P and _sync_spte(st, spi, idx):
                        mmu.stats.resync_updates += 1
            sp.unsync = False
        spi = sp.hash_next
    if mmu.wgen[gfn] == mmu.tlb_gen:
        # The TLB may still let the guest write the frame in RAM.
        if u.overflow or uc_ql_tlb_flush_page == NULL:
            full = True
        else:
            for j in range(u.ngva):
                uc_ql_tlb_flush_page(mmu.uc, u.gva[j])
                mmu.stats.unsync_page_flushes += 1
            # Those were all its writable RAM entries (a tracked frame gets them only
            # here): none is left, so losing its tracking later can note the next
            # ones and tracking it again needs no whole flush (alias_retrack).
            mmu.wgen[gfn] = mmu.tlb_gen - 1
    mmu.stats.resyncs += 1
    _unsync_remove(mmu, i)
    return full


cdef void resync_all(CoreState *st) noexcept nogil:
    """Resync every unsync frame and write-protect it again (a CR3 load)."""
    cdef Mmu *mmu = &st.mmu
    cdef bint full = False
    while mmu.n_unsync:
        if _resync_frame(st, <int>mmu.n_unsync - 1):
            full = True
    if full:
        mmu.stats.unsync_full_flushes += 1
        flush_unicorn_tlb(st)


cdef void resync_gfn(CoreState *st, uint64_t gfn) noexcept nogil:
    """Resync one frame (it is wanted as a higher-level table)."""
    cdef int i = _unsync_find(&st.mmu, gfn)
    if i >= 0 and _resync_frame(st, i):
        st.mmu.stats.unsync_full_flushes += 1
        flush_unicorn_tlb(st)
