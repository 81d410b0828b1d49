# Invariants of the shadow MMU, checked by Core.audit() (tests and debugging):
# every shadow page is in the hash once and counted for its gfn; parent links
# and child pointers agree; every present spte agrees with the guest entry it
# caches (present, accessed, same target, same W/U/NX/D bits); rmap entries
# are exactly the 4 KiB leaves mapping RAM; no spte that allows direct writes
# maps a shadowed frame; the TLB the CPU uses is parked, if at all, under the
# tag of the address space the CPU is in (TLB contexts).  An unsync shadow page
# may lag its guest table (a fill re-reads it first, a CR3 load resyncs it): it
# must be a level-1 page of a frame listed unsync, every page of that frame
# unsync, and its leaves in the rmap; Core.resync_mmu() then makes it exact.

cdef list mmu_audit(CoreState *st):
    cdef Mmu *mmu = &st.mmu
    cdef list errors = []
    cdef uint32_t spi, i, j, ref, child
    cdef ShadowPage *sp
    cdef ShadowPage *csp
    cdef uint64_t spte, gfn, gpte, nrmap = 0, counted = 0, tgt
    cdef int levels, level, q, gi
    cdef bint wide
    cdef uint16_t *count = <uint16_t *>calloc(mmu.nframes, sizeof(uint16_t))
    if count == NULL:
        raise MemoryError()
    try:
        for spi in range(1, mmu.sp_alloc + 1):
            sp = mmu.sps[spi]
            if sp.role == SP_FREE:
                continue
            counted += 1
            if lookup_sp(mmu, sp.gfn, sp.role) != spi:
                errors.append(f"sp {spi} (gfn {sp.gfn:#x}) is not found in the hash")
            if sp.gfn >= mmu.nframes:
                errors.append(f"sp {spi} shadows gfn {sp.gfn:#x} outside RAM")
                continue
            count[sp.gfn] += 1
            levels = role_levels(sp.role)
            level = role_level(sp.role)
            q = role_quadrant(sp.role)
            wide = levels != 2
            if sp.unsync != ((mmu.frame_flags[sp.gfn] & FRAME_UNSYNC) != 0):
                errors.append(f"sp {spi} gfn {sp.gfn:#x}: unsync {sp.unsync}, frame flag differs")
            if sp.unsync and (level != 1 or _unsync_find(mmu, sp.gfn) < 0):
                errors.append(f"sp {spi} gfn {sp.gfn:#x}: unsync at level {level} or unlisted")
            for j in range(sp.nparents):
                ref = sp.parents[j]
                spte = mmu.sps[ref >> 9].spt[ref & 511]
                if not spte & SPTE_P or spte & SPTE_LEAF or ((spte & SPTE_ADDR) >> 12) != spi:
                    errors.append(f"sp {spi}: parent ref {ref >> 9}[{ref & 511}] does not point here")
            nrmap = 0
            for i in range(SP_ENTRIES):
                spte = sp.spt[i]
                if not spte & SPTE_P:
                    continue
                nrmap += 1
                if sp.unsync:
                    _audit_rmap_ref(mmu, spi, i, spte, errors)
                    continue
                # The guest entry this spte caches.
                if levels == 2:
                    gi = <int>(q * 512 + i) if level == 1 else <int>(q * 256 + (i >> 1))
                    gpte = _load_gpte(st, (sp.gfn << 12) + gi * 4, False)
                elif levels == 3 and level == 3:
                    if i >= 4:
                        errors.append(f"sp {spi}: PDPT entry {i} present")
                        continue
                    gpte = _load_gpte(st, (sp.gfn << 12) + q * 32 + i * 8, True)
                else:
                    gpte = _load_gpte(st, (sp.gfn << 12) + i * 8, True)
                if not gpte & PT_PRESENT:
                    errors.append(f"sp {spi} gfn {sp.gfn:#x}[{i}]: spte present, gpte {gpte:#x} not")
                    continue
                if not (levels == 3 and level == 3):
                    if not gpte & PT_ACCESSED:
                        errors.append(f"sp {spi} gfn {sp.gfn:#x}[{i}]: gpte {gpte:#x} not accessed")
                    if (spte & (SPTE_W | SPTE_U)) != (gpte & (PT_WRITABLE | PT_USER)):
                        errors.append(f"sp {spi} gfn {sp.gfn:#x}[{i}]: W/U differ "
                                      f"(spte {spte:#x}, gpte {gpte:#x})")
                    if wide and ((spte & SPTE_NX) != 0) != ((sp.role & ROLE_NXE) != 0 and (gpte & PT64_NX) != 0):
                        errors.append(f"sp {spi} gfn {sp.gfn:#x}[{i}]: NX differs")
                if spte & SPTE_LEAF:
                    if (spte & SPTE_D) and not gpte & PT_DIRTY:
                        errors.append(f"sp {spi} gfn {sp.gfn:#x}[{i}]: spte dirty, gpte clean")
                    tgt = (spte & SPTE_ADDR) >> 12
                    if level == 1:
                        if wide:
                            if tgt != (gpte & PHYS_MASK) >> 12:
                                errors.append(f"sp {spi} gfn {sp.gfn:#x}[{i}]: leaf target differs")
                        elif tgt != (gpte & 0xFFFFF000ULL) >> 12:
                            errors.append(f"sp {spi} gfn {sp.gfn:#x}[{i}]: leaf target differs")
                        _audit_rmap_ref(mmu, spi, i, spte, errors)
                else:
                    child = <uint32_t>((spte & SPTE_ADDR) >> 12)
                    if child == 0 or child > mmu.sp_alloc or mmu.sps[child].role == SP_FREE:
                        errors.append(f"sp {spi}[{i}]: points to a free shadow page {child}")
                        continue
                    csp = mmu.sps[child]
                    if levels == 3 and level == 3:
                        tgt = (gpte & PHYS_MASK) >> 12
                    elif wide:
                        tgt = (gpte & PHYS_MASK) >> 12
                    else:
                        tgt = (gpte & 0xFFFFF000ULL) >> 12
                    if csp.gfn != tgt:
                        errors.append(f"sp {spi}[{i}]: child gfn {csp.gfn:#x}, gpte says {tgt:#x}")
                    if role_level(csp.role) != level - 1:
                        errors.append(f"sp {spi}[{i}]: child level {role_level(csp.role)}")
            if nrmap != sp.npresent:
                errors.append(f"sp {spi}: npresent {sp.npresent}, counted {nrmap}")
        for j in range(mmu.n_unsync):
            gfn = mmu.unsync[j].gfn
            if gfn >= mmu.nframes or not mmu.frame_flags[gfn] & FRAME_UNSYNC or not mmu.sp_count[gfn]:
                errors.append(f"unsync list: frame {gfn:#x} is not an unsync shadowed table")
        if counted != mmu.n_sp:
            errors.append(f"n_sp {mmu.n_sp}, counted {counted}")
        for gfn in range(mmu.nframes):
            if count[gfn] != mmu.sp_count[gfn]:
                errors.append(f"gfn {gfn:#x}: sp_count {mmu.sp_count[gfn]}, counted {count[gfn]}")
            for j in range(mmu.rmap[gfn].len):
                ref = mmu.rmap[gfn].refs[j]
                sp = mmu.sps[ref >> 9]
                spte = sp.spt[ref & 511]
                if not spte & SPTE_LEAF or (spte & SPTE_ADDR) >> 12 != gfn:
                    errors.append(f"rmap of {gfn:#x}: stale entry {ref >> 9}[{ref & 511}]")
        errors.extend(_audit_ctx(st))
    finally:
        free(count)
    return errors


cdef int _audit_rmap_ref(Mmu *mmu, uint32_t spi, uint32_t i, uint64_t spte,
                         list errors) except -1:
    """A 4 KiB leaf mapping RAM is in its target's rmap, and lets no store bypass tracking."""
    cdef uint64_t tgt = (spte & SPTE_ADDR) >> 12
    cdef uint32_t j
    cdef bint found = False
    if tgt >= mmu.nframes:
        return 0
    for j in range(mmu.rmap[tgt].len):
        if mmu.rmap[tgt].refs[j] == _ref(spi, i):
            found = True
    if not found:
        errors.append(f"sp {spi}[{i}]: leaf missing from rmap of {tgt:#x}")
    if spte & SPTE_HW_W and mmu.sp_count[tgt]:
        errors.append(f"sp {spi}[{i}]: writable spte maps shadowed gfn {tgt:#x}")
    return 0


cdef list _audit_ctx(CoreState *st):
    cdef MmuMode m
    cdef uint64_t tag
    if not st.mmu.ctx_on or st.mmu.cur_tag == 0:
        return []
    read_mode(st, &m)
    if not st.mmu.have_mode or (st.mmu.cur_cr0 ^ m.cr0) & CR0_MODE_BITS or \
            (st.mmu.cur_cr4 ^ m.cr4) & CR4_MODE_BITS or (st.mmu.cur_efer ^ m.efer) & EFER_MODE_BITS:
        return []   # a mode change the next fill has yet to see
    tag = ctx_tag(st, &m)
    if tag != st.mmu.cur_tag and m.levels != 0:
        return [f"TLB context tag {st.mmu.cur_tag:#x}, the CPU's address space is {tag:#x}"]
    return []
