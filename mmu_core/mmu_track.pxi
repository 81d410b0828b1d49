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

cdef enum:
    MAX_SP_PER_GFN = 64


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
