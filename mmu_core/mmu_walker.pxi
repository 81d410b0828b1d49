# The guest page walker (the seed's walk_addr), for every paging form:
# 32-bit two-level with 4 MiB PSE pages, PAE three-level with 2 MiB pages
# and NX, long mode four-level with 2 MiB and 1 GiB pages.  It mirrors
# qemu_lite/paging.py (the oracle of tests/mmu): permissions combined across
# levels, CR0.WP, EFER.NXE, SMEP/SMAP, reserved bits, accessed bits on every
# entry used and the dirty bit on the leaf of a write.  Every physical address
# it touches is checked against RAM: an entry pointing outside RAM is a #PF
# with RSVD, never a host access.

cdef inline bint _ram_ok(CoreState *st, uint64_t gpa, uint64_t n) noexcept nogil:
    return gpa < st.ram_size and n <= st.ram_size - gpa


cdef inline uint64_t _load_gpte(CoreState *st, uint64_t gpa, bint wide) noexcept nogil:
    cdef uint64_t v64 = 0
    cdef uint32_t v32 = 0
    if wide:
        memcpy(&v64, st.ram + gpa, 8)
        return v64
    memcpy(&v32, st.ram + gpa, 4)
    return v32


cdef inline void _store_gpte(CoreState *st, uint64_t gpa, uint64_t value, bint wide) noexcept nogil:
    cdef uint32_t v32 = <uint32_t>value
    mark_dirty(st, gpa >> 12)
    if wide:
        memcpy(st.ram + gpa, &value, 8)
    else:
        memcpy(st.ram + gpa, &v32, 4)


cdef inline uint64_t _rsvd_mask(int level, bint large, bint nxe, bint long_mode) noexcept nogil:
    """Reserved bits of a 64-bit-format gpte at ``level`` (1 = PTE .. 4 = PML4E)."""
    cdef uint64_t mask = 0x000FFFFFFFFFFFFFULL & ~PHYS_MASK
    if not nxe:
        mask |= PT64_NX
    if long_mode:
        if level == 4:
            mask |= PT_PSE
        if large and level == 3:
            mask |= 0x3FFFE000ULL
        if large and level == 2:
            mask |= 0x1FE000ULL
    else:
        if large and level == 2:
            mask |= 0x1FE000ULL
        mask |= 0xFFF0000000000000ULL & ~PT64_NX
    return mask


cdef inline bint _cpl_is_user(CoreState *st, MmuMode *m) noexcept nogil:
    if m.cpl < 0:
        _read_cpl(st, m)
    return m.cpl == 3


cdef inline bint _ac_set(CoreState *st, MmuMode *m) noexcept nogil:
    if m.ac < 0:
        _read_cpl(st, m)
    return m.ac == 1


cdef int walk_addr(CoreState *st, MmuMode *m, uint64_t gva, int access, bint user,
                   bint set_bits, Walker *w) noexcept nogil:
    """Walk the guest tables for ``gva``; 0 on success, 1 on a fault (w.error_code)."""
    cdef bint write = access == ACC_WRITE
    cdef bint fetch = access == ACC_FETCH
    cdef bint long_mode = m.levels == 4
    cdef bint large
    cdef uint32_t base_err = 0
    cdef uint64_t table, pte_gpa, gpte, size = 4096, new
    cdef int level, shift, top
    cdef uint64_t a20 = m.a20_mask
    st.mmu.stats.guest_walks += 1
    if write:
        base_err |= PFERR_WRITE
    if user:
        base_err |= PFERR_USER
    if fetch and (m.nxe or m.smep):
        base_err |= PFERR_FETCH
    w.levels = m.levels
    w.error_code = 0
    for level in range(MAX_LEVELS):
        w.present[level] = False
    w.writable = True
    w.user = True
    w.nx = False
    if m.levels == 2:
        gva &= 0xFFFFFFFFULL
        w.top_level = 2
        table = m.cr3 & 0xFFFFF000ULL
        pte_gpa = (table + ((gva >> 22) & 0x3FF) * 4) & a20
        if not _ram_ok(st, pte_gpa, 4):
            w.error_code = base_err | PFERR_RSVD
            return 1
        gpte = _load_gpte(st, pte_gpa, False)
        if not gpte & PT_PRESENT:
            w.error_code = base_err
            return 1
        w.present[2] = True
        w.gpte[2] = gpte
        w.pte_gpa[2] = pte_gpa
        w.table_gfn[2] = table >> 12
        if gpte & PT_PSE and m.pse:
            if gpte & (1 << 21):
                w.error_code = base_err | PFERR_PRESENT | PFERR_RSVD
                return 1
            size = 1 << 22
            w.page_base = (gpte & 0xFFC00000ULL) | (((gpte >> 13) & 0xFF) << 32)
            w.leaf_level = 2
        else:
            table = gpte & 0xFFFFF000ULL
            pte_gpa = (table + ((gva >> 12) & 0x3FF) * 4) & a20
            if not _ram_ok(st, pte_gpa, 4):
                w.error_code = base_err | PFERR_RSVD
                return 1
            gpte = _load_gpte(st, pte_gpa, False)
            if not gpte & PT_PRESENT:
                w.error_code = base_err
                return 1
            w.present[1] = True
            w.gpte[1] = gpte
            w.pte_gpa[1] = pte_gpa
            w.table_gfn[1] = table >> 12
            w.page_base = gpte & 0xFFFFF000ULL
            w.leaf_level = 1
        for level in range(w.leaf_level, 3):
            if not w.gpte[level] & PT_WRITABLE:
                w.writable = False
            if not w.gpte[level] & PT_USER:
                w.user = False
    else:
        if long_mode:
            if not is_canonical48(gva):
                w.error_code = base_err
                return 1
            table = m.cr3 & PHYS_MASK & ~0xFFFULL
            top = 4
        else:
            gva &= 0xFFFFFFFFULL
            pte_gpa = ((m.cr3 & 0xFFFFFFE0ULL) + ((gva >> 30) & 3) * 8) & a20
            if not _ram_ok(st, pte_gpa, 8):
                w.error_code = base_err | PFERR_RSVD
                return 1
            gpte = _load_gpte(st, pte_gpa, True)
            if not gpte & PT_PRESENT:
                w.error_code = base_err
                return 1
            if gpte & (0x1E6ULL | 0xFFFFFF0000000000ULL):
                w.error_code = base_err | PFERR_PRESENT | PFERR_RSVD
                return 1
            w.pdpte = gpte
            w.pdpte_gpa = pte_gpa
            table = gpte & PHYS_MASK & ~0xFFFULL
            top = 2
        w.top_level = top
        level = top
        while level >= 1:
            shift = 12 + 9 * (level - 1)
            pte_gpa = (table + ((gva >> shift) & 0x1FF) * 8) & a20
            if not _ram_ok(st, pte_gpa, 8):
                w.error_code = base_err | PFERR_RSVD
                return 1
            gpte = _load_gpte(st, pte_gpa, True)
            if not gpte & PT_PRESENT:
                w.error_code = base_err
                return 1
            large = (gpte & PT_PSE) != 0 and (level == 2 or (level == 3 and long_mode))
            if gpte & _rsvd_mask(level, large, m.nxe, long_mode):
                w.error_code = base_err | PFERR_PRESENT | PFERR_RSVD
                return 1
            w.present[level] = True
            w.gpte[level] = gpte
            w.pte_gpa[level] = pte_gpa
            w.table_gfn[level] = table >> 12
            if not gpte & PT_WRITABLE:
                w.writable = False
            if not gpte & PT_USER:
                w.user = False
            if m.nxe and gpte & PT64_NX:
                w.nx = True
            if large or level == 1:
                size = 1ULL << shift
                w.page_base = gpte & PHYS_MASK & ~(size - 1)
                w.leaf_level = level
                break
            table = gpte & PHYS_MASK & ~0xFFFULL
            level -= 1
    w.page_size = size
    w.gpa = ((w.page_base | (gva & (size - 1))) & ~0xFFFULL) & a20
    # Permissions, in the order the oracle checks them.
    if user and not w.user:
        w.error_code = base_err | PFERR_PRESENT
        return 1
    if write and not w.writable and (user or m.wp):
        w.error_code = base_err | PFERR_PRESENT
        return 1
    if fetch and w.nx:
        w.error_code = base_err | PFERR_PRESENT
        return 1
    if not user and w.user:
        if fetch and m.smep:
            w.error_code = base_err | PFERR_PRESENT
            return 1
        if not fetch and m.smap and not _ac_set(st, m):
            w.error_code = base_err | PFERR_PRESENT
            return 1
    # Accessed on every entry used, dirty on the leaf of a write.
    if set_bits:
        for level in range(w.top_level, w.leaf_level - 1, -1):
            gpte = w.gpte[level]
            new = gpte | PT_ACCESSED
            if level == w.leaf_level and write:
                new |= PT_DIRTY
            if new != gpte:
                _store_gpte(st, w.pte_gpa[level], new, m.levels != 2)
                w.gpte[level] = new
    w.dirty = (w.gpte[w.leaf_level] & PT_DIRTY) != 0
    return 0
