# Write tracking of shadowed guest page-table frames.
#
# A write fill on a frame that has shadow pages maps the page to an MMIO alias
# of RAM far above the guest's physical address space (ENGINE_FACTS.md fact 7).  The
# alias callbacks store into RAM and then update or zap the sptes caching the
# entries written (the seed's pte_write), so shadow pages never go stale and
# the guest keeps running without a stop.  Unicorn splits 8-byte stores into
# two 4-byte ones, low half first: each half re-reads the whole entry from
# RAM, so the final state is exact; misaligned and partial writes touch every
# entry they overlap.  A page written again and again without being used for
# a translation is zapped (write-flood detection), which ends its tracking.
#
# The alias TLB entries must end with it: left in place they keep sending the
# frame's stores through the callbacks long after no shadow page caches it
# (alias_writes_untracked).  The write fills that map the alias note their
# virtual page (alias_note), and when the frame's last shadow page goes the
# engine drops those pages from the TLB in use and every parked one (patch l),
# so the next store fills a plain RAM mapping.  Those writable RAM entries must
# go in turn when the frame is tracked again (a guest reuses its tables), which
# used to take a whole flush with every parked context: the fills that grant
# them note their pages too (alias_note_writable), and the re-tracking drops
# just those (alias_retrack).  The notes are a bounded hint, as the unsync
# frames' are: an alias note lost to another frame or past ALIAS_GVAS leaves
# that entry on the alias path (slow, never wrong); a writable list that is
# lost or overflows makes the re-tracking flush the whole TLB as before; a
# page dropped that no longer maps the frame costs one fill.

cdef enum:
    MAX_SP_PER_GFN = 64


cdef inline AliasFrame *_alias_slot(Mmu *mmu, uint64_t gfn) noexcept nogil:
    return &mmu.alias[gfn & (ALIAS_SLOTS - 1)]


cdef inline void _alias_claim(Mmu *mmu, AliasFrame *a, uint64_t gfn, uint32_t kind) noexcept nogil:
    if a.kind != ALIAS_EMPTY and a.gfn != gfn and a.gen == mmu.tlb_gen:
        mmu.stats.alias_grants_lost += 1   # that frame's pages stay (or its re-track flushes all)
    a.gfn = gfn
    a.gen = mmu.tlb_gen
    a.kind = kind
    a.ngva = 0
    a.overflow = False


cdef inline bint _alias_add(AliasFrame *a, uint64_t gva) noexcept nogil:
    """Remember page ``gva``; False when there is no room."""
    cdef uint32_t j
    gva &= ~0xFFFULL
    for j in range(a.ngva):
        if a.gva[j] == gva:
            return True
    if a.ngva == ALIAS_GVAS:
        return False
    a.gva[a.ngva] = gva
    a.ngva += 1
    return True


cdef void alias_note(Mmu *mmu, uint64_t gfn, uint64_t gva) noexcept nogil:
    """A write fill maps virtual page ``gva`` of tracked frame ``gfn`` to the alias."""
    cdef AliasFrame *a = _alias_slot(mmu, gfn)
    if uc_ql_tlb_flush_page == NULL:
        return   # stock engine: only a whole flush could drop them
    if a.kind != ALIAS_TRACKED or a.gfn != gfn or a.gen != mmu.tlb_gen:
        _alias_claim(mmu, a, gfn, ALIAS_TRACKED)
    if not _alias_add(a, gva) and not a.overflow:
        a.overflow = True
        mmu.stats.alias_grants_lost += 1


cdef void alias_untrack(Mmu *mmu, uint64_t gfn) noexcept nogil:
    """Frame ``gfn`` lost its last shadow page: drop the TLB entries that send its
    stores to the alias, from the TLB in use and every parked one (patch l).  When
    no writable RAM entry of the frame is left then, start the list of the ones to
    come, so that tracking it again needs no whole flush (alias_retrack)."""
    cdef AliasFrame *a = _alias_slot(mmu, gfn)
    cdef uint32_t j
    if mmu.alias_quiet or uc_ql_tlb_flush_page == NULL:
        return
    if a.kind == ALIAS_TRACKED and a.gfn == gfn:
        if a.gen == mmu.tlb_gen:
            for j in range(a.ngva):
                uc_ql_tlb_flush_page(mmu.uc, a.gva[j])
            mmu.stats.alias_page_flushes += a.ngva
        a.kind = ALIAS_EMPTY
    if mmu.wgen[gfn] != mmu.tlb_gen and (a.kind == ALIAS_EMPTY or a.gen != mmu.tlb_gen):
        _alias_claim(mmu, a, gfn, ALIAS_UNTRACKED)


cdef void alias_note_writable(Mmu *mmu, uint64_t gfn, uint64_t gva) noexcept nogil:
    """A fill maps page ``gva`` of untracked frame ``gfn`` writable in RAM."""
    cdef AliasFrame *a = _alias_slot(mmu, gfn)
    if a.kind != ALIAS_UNTRACKED or a.gfn != gfn:
        return
    if a.gen != mmu.tlb_gen:
        # A whole flush since: no writable entry of the frame is left, start again.
        a.gen = mmu.tlb_gen
        a.ngva = 0
    if not _alias_add(a, gva):
        a.kind = ALIAS_EMPTY   # too many: tracking it again flushes the whole TLB


cdef bint alias_retrack(Mmu *mmu, uint64_t gfn) noexcept nogil:
    """Frame ``gfn`` is tracked again and may have writable RAM entries: drop them
    page by page if they are all known (True), else the caller flushes everything."""
    cdef AliasFrame *a = _alias_slot(mmu, gfn)
    cdef uint32_t j
    if a.kind != ALIAS_UNTRACKED or a.gfn != gfn or a.gen != mmu.tlb_gen:
        return False
    for j in range(a.ngva):
        uc_ql_tlb_flush_page(mmu.uc, a.gva[j])
    mmu.stats.retrack_page_flushes += a.ngva
    a.kind = ALIAS_EMPTY
    mmu.wgen[gfn] = mmu.tlb_gen - 1   # no writable RAM entry of it is left anywhere
    return True


cdef inline bint _gpte_rsvd(MmuMode *m, ShadowPage *sp, uint64_t gpte) noexcept nogil:
    # Only level-1 entries are refreshed in place.
    if role_levels(sp.role) == 2:
        return False
    return (gpte & _rsvd_mask(1, False, (sp.role & ROLE_NXE) != 0, role_levels(sp.role) == 4)) != 0


cdef void _update_spte(CoreState *st, uint32_t spi, int idx, uint64_t gpte) noexcept nogil:
    """The guest rewrote the gpte behind ``spi[idx]``: refresh a 4 KiB leaf, else zap."""
    cdef Mmu *mmu = &st.mmu
    cdef ShadowPage *sp = mmu.sps[spi]
    cdef MmuMode m
    cdef uint64_t base
    if not sp.spt[idx] & SPTE_P:
        return
    if role_level(sp.role) == 1 and (gpte & (PT_PRESENT | PT_ACCESSED)) == (PT_PRESENT | PT_ACCESSED):
        m.levels = role_levels(sp.role)
        m.nxe = (sp.role & ROLE_NXE) != 0
        if not _gpte_rsvd(&m, sp, gpte):
            base = gpte & (0xFFFFF000ULL if m.levels == 2 else PHYS_MASK & ~0xFFFULL)
            set_spte(mmu, spi, idx, leaf_spte(mmu, &m, gpte, 1, base))
            mmu.stats.pte_updated += 1
            return
    drop_spte(mmu, spi, idx)
    mmu.stats.pte_zapped += 1


cdef void _pte_write_sp(CoreState *st, uint32_t spi, uint64_t off, uint64_t n) noexcept nogil:
    cdef Mmu *mmu = &st.mmu
    cdef ShadowPage *sp = mmu.sps[spi]
    cdef int levels = role_levels(sp.role)
    cdef int level = role_level(sp.role)
    cdef int q = role_quadrant(sp.role)
    cdef uint64_t first, last, e, gpa
    cdef uint64_t gpte
    cdef uint64_t frame = sp.gfn << 12
    cdef int lo, hi
    if levels == 2:
        first = off >> 2
        last = (off + n - 1) >> 2
        for e in range(first, last + 1):
            gpa = frame + e * 4
            gpte = _load_gpte(st, gpa, False)
            if level == 1:
                if q * 512 <= <int>e < q * 512 + 512:
                    _update_spte(st, spi, <int>e - q * 512, gpte)
            elif q * 256 <= <int>e < q * 256 + 256:
                _update_spte(st, spi, (<int>e - q * 256) * 2, gpte)
                _update_spte(st, spi, (<int>e - q * 256) * 2 + 1, gpte)
        return
    first = off >> 3
    last = (off + n - 1) >> 3
    if levels == 3 and level == 3:
        lo = q * 4
        hi = lo + 4
    else:
        lo = 0
        hi = 512
    for e in range(first, last + 1):
        if lo <= <int>e < hi:
            gpte = _load_gpte(st, frame + e * 8, True)
            _update_spte(st, spi, <int>e - lo, gpte)


cdef void pte_write(CoreState *st, uint64_t gfn, uint64_t off, uint64_t n, bint from_guest) noexcept nogil:
    """Bytes ``off .. off+n-1`` of shadowed frame ``gfn`` were written (already in RAM)."""
    cdef Mmu *mmu = &st.mmu
    cdef uint32_t found[MAX_SP_PER_GFN]
    cdef int nfound = 0, i
    cdef uint32_t spi = mmu.hash[_hash_gfn(gfn)]
    cdef ShadowPage *sp
    cdef bint continuation
    mmu.stats.pte_writes += 1
    while spi and nfound < MAX_SP_PER_GFN:
        sp = mmu.sps[spi]
        if sp.gfn == gfn:
            found[nfound] = spi
            nfound += 1
        spi = sp.hash_next
    for i in range(nfound):
        spi = found[i]
        sp = mmu.sps[spi]
        if sp.role == SP_FREE or sp.gfn != gfn:
            continue   # zapped by an earlier iteration
        # The high half of an 8-byte entry store finishes the write of its low half.
        continuation = role_levels(sp.role) != 2 and (off & 7) == 4 and n == 4
        if from_guest and not continuation:
            sp.write_count += 1
            if sp.write_count >= FLOOD_THRESHOLD and not _is_cur_root(mmu, spi):
                zap_sp(mmu, spi)
                mmu.stats.flood_zaps += 1
                continue
        _pte_write_sp(st, spi, off, n)


cdef void track_phys_write(CoreState *st, uint64_t gpa, uint64_t n, bint from_guest) noexcept nogil:
    cdef Mmu *mmu = &st.mmu
    cdef uint64_t end, gfn, chunk
    if gpa >= st.ram_size or n == 0:
        return
    if n > st.ram_size - gpa:
        n = st.ram_size - gpa
    end = gpa + n
    while gpa < end:
        gfn = gpa >> 12
        chunk = ((gfn + 1) << 12) - gpa
        if chunk > end - gpa:
            chunk = end - gpa
        mark_dirty(st, gfn)
        if mmu.sp_count[gfn]:
            pte_write(st, gfn, gpa & 0xFFF, chunk, from_guest)
        gpa += chunk


cdef uint64_t _alias_read(uc_engine *uc, uint64_t offset, unsigned size,
                          void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    cdef uint64_t v = 0
    st.mmu.stats.alias_reads += 1
    if size > 8 or offset >= st.ram_size or size > st.ram_size - offset:
        return 0
    memcpy(&v, st.ram + offset, size)
    return v


cdef void _alias_write(uc_engine *uc, uint64_t offset, unsigned size, uint64_t value,
                       void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    st.mmu.stats.alias_writes += 1
    if size > 8 or offset >= st.ram_size or size > st.ram_size - offset:
        return
    if st.mmu.sp_count[offset >> 12] == 0:
        st.mmu.stats.alias_writes_untracked += 1   # an alias entry outlived the tracking
    memcpy(st.ram + offset, &value, size)
    track_phys_write(st, offset, size, True)
