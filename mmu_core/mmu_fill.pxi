# The TLB fill: Unicorn asks for a linear page (ENGINE_FACTS.md fact 6); mmu_core
# answers from the shadow tree of the current root, or walks the guest tables
# and extends the tree.  Faults are always decided by a fresh guest walk, as
# hardware re-walks before raising #PF.

cdef int REG_CR0 = _x86.UC_X86_REG_CR0
cdef int REG_CR3 = _x86.UC_X86_REG_CR3
cdef int REG_CR4 = _x86.UC_X86_REG_CR4
cdef int REG_CS = _x86.UC_X86_REG_CS
cdef int REG_EFLAGS = _x86.UC_X86_REG_EFLAGS
cdef int REG_RIP = _x86.UC_X86_REG_RIP
cdef int REG_GDTR = _x86.UC_X86_REG_GDTR
cdef int REG_LDTR = _x86.UC_X86_REG_LDTR
cdef int REG_IDTR = _x86.UC_X86_REG_IDTR
cdef int REG_TR = _x86.UC_X86_REG_TR
cdef int REG_MSR = _x86.UC_X86_REG_MSR
cdef uint32_t MSR_EFER = 0xC0000080

# Bits whose change makes QEMU flush its TLB (cpu_x86_update_cr0/cr4), and
# the bits a shadow root depends on.
cdef uint64_t CR0_MODE_BITS = 0x80010001ULL        # PG | WP | PE
cdef uint64_t CR4_MODE_BITS = 0x3010B0ULL          # SMAP | SMEP | LA57 | PGE | PAE | PSE
cdef uint64_t EFER_MODE_BITS = 0xC00ULL            # NXE | LMA


cdef void flush_unicorn_tlb(CoreState *st) noexcept nogil:
    """Flush Unicorn's whole TLB (safe inside a fill: QEMU re-reads its entry after tlb_fill)."""
    uc_ctl(st.uc, UC_CTL_TLB_FLUSH_WRITE)
    st.mmu.tlb_gen += 1


cdef void _read_cpl(CoreState *st, MmuMode *m) noexcept nogil:
    cdef uint64_t cs = 0, eflags = 0
    uc_reg_read(st.uc, REG_CS, &cs)
    uc_reg_read(st.uc, REG_EFLAGS, &eflags)
    if not m.cr0 & CR0_PE:
        m.cpl = 0
    elif eflags & EFLAGS_VM:
        m.cpl = 3
    else:
        m.cpl = <int>(cs & 3)
    m.ac = 1 if eflags & EFLAGS_AC else 0


cdef void mode_init(MmuMode *m, uint64_t cr0, uint64_t cr3, uint64_t cr4, uint64_t efer,
                    bint a20_enabled) noexcept nogil:
    m.cr0 = cr0
    m.cr3 = cr3
    m.cr4 = cr4
    m.efer = efer
    if not cr0 & CR0_PG:
        m.levels = 0
    elif efer & EFER_LMA:
        m.levels = 4
    elif cr4 & CR4_PAE:
        m.levels = 3
    else:
        m.levels = 2
    m.wp = (cr0 & CR0_WP) != 0
    m.nxe = (efer & EFER_NXE) != 0
    m.smep = (cr4 & CR4_SMEP) != 0
    m.smap = (cr4 & CR4_SMAP) != 0
    m.pse = (cr4 & CR4_PSE) != 0
    m.cpl = -1
    m.ac = -1
    m.role_base = <uint32_t>m.levels
    if m.nxe and m.levels >= 3:
        m.role_base |= ROLE_NXE
    if m.pse and m.levels == 2:
        m.role_base |= ROLE_PSE
    m.a20_mask = 0xFFFFFFFFFFFFFFFFULL if a20_enabled else ~(1ULL << 20)


cdef void read_mode(CoreState *st, MmuMode *m) noexcept nogil:
    """The paging state of the CPU now: read in place on the patched engine (CPL and
    EFLAGS.AC too), else through uc_reg_read (CPL and AC then lazily, _read_cpl)."""
    cdef uint64_t cr0 = 0, cr3 = 0, cr4 = 0, eflags = 0
    cdef uint32_t hflags = 0
    cdef ql_uc_x86_msr efer
    cdef int regs[4]
    cdef void *vals[4]
    if st.cpu != NULL:
        memcpy(&cr0, st.cpu + st.off_cr0, 8)
        memcpy(&cr3, st.cpu + st.off_cr3, 8)
        memcpy(&cr4, st.cpu + st.off_cr4, 8)
        memcpy(&efer.value, st.cpu + st.off_efer, 8)
        memcpy(&hflags, st.cpu + st.off_hflags, 4)
        memcpy(&eflags, st.cpu + st.off_eflags, 8)
        mode_init(m, cr0, cr3, cr4, efer.value, st.a20_enabled)
        m.cpl = <int>(hflags & 3)    # QEMU's HF_CPL: 0 in real mode, 3 in virtual-8086
        m.ac = 1 if eflags & EFLAGS_AC else 0
        return
    efer.rid = MSR_EFER
    efer.value = 0
    regs[0] = REG_CR0
    regs[1] = REG_CR3
    regs[2] = REG_CR4
    regs[3] = REG_MSR
    vals[0] = &cr0
    vals[1] = &cr3
    vals[2] = &cr4
    vals[3] = &efer
    uc_reg_read_batch(st.uc, regs, vals, 4)
    mode_init(m, cr0, cr3, cr4, efer.value, st.a20_enabled)


# -- roots ----------------------------------------------------------------------------

cdef inline uint64_t _root_gfn(MmuMode *m) noexcept nogil:
    if m.levels == 4:
        return ((m.cr3 & PHYS_MASK) & m.a20_mask) >> 12
    if m.levels == 3:
        return ((m.cr3 & 0xFFFFFFE0ULL) & m.a20_mask) >> 12
    return ((m.cr3 & 0xFFFFF000ULL) & m.a20_mask) >> 12


cdef void load_roots(CoreState *st, MmuMode *m) noexcept nogil:
    """Find (or build) the root shadow pages of the current CR3 in the hash."""
    cdef Mmu *mmu = &st.mmu
    cdef uint64_t gfn = _root_gfn(m)
    cdef int q, n = 1
    cdef uint32_t role
    cdef bint reused = True
    mmu.cur_roots[0] = mmu.cur_roots[1] = mmu.cur_roots[2] = mmu.cur_roots[3] = 0
    if m.levels == 0 or mmu.mode == TLB_IDENTITY_C:
        return
    make_pages_available(mmu, SP_RESERVE)
    if m.levels == 2:
        n = 4
    for q in range(n):
        if m.levels == 2:
            role = make_role(m, 2, q)
        elif m.levels == 3:
            role = make_role(m, 3, <int>((m.cr3 >> 5) & 0x7F))
        else:
            role = make_role(m, 4, 0)
        if lookup_sp(mmu, gfn, role) == 0:
            reused = False
        mmu.cur_roots[q] = get_sp(st, gfn, role)
    if reused:
        mmu.stats.roots_reused += 1
    else:
        mmu.stats.roots_created += 1


cdef void switch_mode(CoreState *st, MmuMode *m) noexcept nogil:
    """The fill saw a CR3 load or a paging-mode change since the previous fill."""
    cdef Mmu *mmu = &st.mmu
    cdef bint cr3_load = mmu.have_mode and mmu.cur_cr3 != m.cr3
    cdef bint flushed = (m.cr0 ^ mmu.cur_cr0) & CR0_MODE_BITS or \
        (m.cr4 ^ mmu.cur_cr4) & CR4_MODE_BITS
    if mmu.have_mode:
        # QEMU flushed its TLB on this change: nothing it holds predates now.
        # With TLB contexts a CR3 load parks the TLB instead (no flush).
        if (cr3_load and m.cr0 & CR0_PG and not mmu.ctx_on) or flushed:
            mmu.tlb_gen += 1
        if mmu.ctx_on:
            if flushed:
                mmu.cur_tag = ctx_tag(st, m)   # empty since the change: its own space
            elif not cr3_load:
                ctx_taint(mmu)   # EFER.NXE/LMA alone: QEMU kept the old entries
            elif mmu.cur_tag != ctx_tag(st, m):
                # CR3 changed behind the engine's callback (another vCPU's context
                # restored, -smp): the TLB in use is not the tagged space's.
                ctx_taint(mmu)
        if cr3_load:
            if mmu.n_unsync:
                resync_all(st)   # with contexts, _ctx_tag_cb did it (CR3 set behind it: -smp)
            if not mmu.ctx_on:
                mmu.stats.cr3_loads += 1   # with contexts, _ctx_tag_cb sees every one
            if mmu.mode == TLB_NAIVE_C and mmu.n_sp:
                zap_all(mmu)
                mmu.stats.naive_zap_all += 1
        else:
            mmu.stats.mode_changes += 1
    mmu.cur_cr0 = m.cr0
    mmu.cur_cr3 = m.cr3
    mmu.cur_cr4 = m.cr4
    mmu.cur_efer = m.efer
    mmu.have_mode = True
    load_roots(st, m)


cdef inline bint _mode_changed(Mmu *mmu, MmuMode *m) noexcept nogil:
    return not mmu.have_mode or mmu.cur_cr3 != m.cr3 or \
        (mmu.cur_cr0 ^ m.cr0) & CR0_MODE_BITS or (mmu.cur_cr4 ^ m.cr4) & CR4_MODE_BITS or \
        (mmu.cur_efer ^ m.efer) & EFER_MODE_BITS


# -- the answer to Unicorn ---------------------------------------------------------------

cdef inline bint _is_ram(CoreState *st, uint64_t gpa) noexcept nogil:
    return gpa < st.ram_size and pam_attr(st, gpa) == 3  # 3: RAM, by PAM or outside the window


cdef void emit(CoreState *st, uint64_t gva, uint64_t gpa, int access, bint r, bint w, bint x,
               ql_uc_tlb_entry *res) noexcept nogil:
    """Turn guest-granted rights on the 4 KiB frame at ``gpa`` (mapped at ``gva``) into
    Unicorn's entry.

    On the stock engine data fills leave EXEC out (fast stores, ENGINE_FACTS.md fact 12)
    unless the frame has held code; where the engine tracks code pages itself (patches d
    and m, ``mmu.data_exec``) they grant what the guest allows, which saves the fetch
    fill of a page first read.  Writes to a shadowed page-table frame go through the
    alias, unless the frame is (or now becomes) an unsync leaf table (mmu_unsync.pxi)."""
    cdef Mmu *mmu = &st.mmu
    cdef uint64_t gfn = gpa >> 12
    cdef int perms = 0
    cdef bint tracked
    res.paddr = gpa
    if not _is_ram(st, gpa):
        if r:
            perms |= UC_PROT_READ
        if w:
            perms |= UC_PROT_WRITE
        if x:
            perms |= UC_PROT_EXEC
        res.perms = perms
        rom_fill(st, gpa, access == ACC_WRITE and w, res)
        dirty_filter(st, gpa, access == ACC_WRITE and w, res)  # RAM the PAM opened
        return
    tracked = mmu.sp_count[gfn] != 0
    if tracked and access == ACC_WRITE and w and mmu.unsync_on and unsync_write(st, gfn, gva):
        tracked = False   # stores go to RAM; the next CR3 load resyncs the frame
        mmu.stats.wp_traps_avoided += 1
    if access == ACC_FETCH:
        if not mmu.frame_flags[gfn] & FRAME_CODE:
            mmu.frame_flags[gfn] |= FRAME_CODE
            mmu.stats.code_frames += 1
            if mmu.fgen[gfn] == mmu.tlb_gen and not mmu.data_exec:
                # Unicorn may hold fast-store entries for this frame: drop them.
                flush_unicorn_tlb(st)
                mmu.stats.tlb_flushes_code += 1
        perms = UC_PROT_EXEC
        if r:
            perms |= UC_PROT_READ
        if w and not tracked:
            perms |= UC_PROT_WRITE
            mmu.wgen[gfn] = mmu.tlb_gen
            alias_note_writable(mmu, gfn, gva)
    elif access == ACC_WRITE and tracked:
        mmu.stats.wp_traps += 1
        res.paddr = ALIAS_BASE + gpa
        alias_note(mmu, gfn, gva)
        perms = UC_PROT_WRITE
        if r:
            perms |= UC_PROT_READ
    else:
        if r:
            perms = UC_PROT_READ
        if w and not tracked:
            perms |= UC_PROT_WRITE
            mmu.wgen[gfn] = mmu.tlb_gen
            alias_note_writable(mmu, gfn, gva)
        if mmu.data_exec:
            if x:
                perms |= UC_PROT_EXEC   # the engine traps stores once the page has code
        elif mmu.frame_flags[gfn] & FRAME_CODE:
            if x:
                perms |= UC_PROT_EXEC   # keeps stores on the code-invalidating path
            elif perms & UC_PROT_WRITE:
                mmu.fgen[gfn] = mmu.tlb_gen
        elif perms & UC_PROT_WRITE:
            mmu.fgen[gfn] = mmu.tlb_gen
    res.perms = perms
    dirty_filter(st, gpa, access == ACC_WRITE, res)


cdef inline void _rights(CoreState *st, MmuMode *m, bint user, bint u_ok, bint w_ok, bint nx,
                         bint *r, bint *w, bint *x) noexcept nogil:
    cdef bint smap_block
    if user:
        r[0] = u_ok
        w[0] = u_ok and w_ok
        x[0] = u_ok and not nx
    else:
        smap_block = u_ok and m.smap and not _ac_set(st, m)
        r[0] = not smap_block
        w[0] = not smap_block and (w_ok or not m.wp)
        x[0] = not nx and not (u_ok and m.smep)


# -- install: extend the shadow tree with a successful walk -----------------------------

cdef inline int _top_level(int levels) noexcept nogil:
    return 2 if levels == 2 else levels


cdef inline uint32_t _root_for(Mmu *mmu, MmuMode *m, uint64_t gva) noexcept nogil:
    if m.levels == 2:
        return mmu.cur_roots[(gva >> 30) & 3]
    return mmu.cur_roots[0]


cdef inline uint64_t _gpte_spte_bits(uint64_t gpte, bint wide, bint nxe) noexcept nogil:
    cdef uint64_t s = SPTE_P | (gpte & (SPTE_W | SPTE_U))
    if wide and nxe and gpte & PT64_NX:
        s |= SPTE_NX
    return s


cdef inline uint64_t leaf_spte(Mmu *mmu, MmuMode *m, uint64_t gpte, int level, uint64_t base) noexcept nogil:
    cdef uint64_t s = _gpte_spte_bits(gpte, m.levels != 2, m.nxe) | SPTE_LEAF | (base & SPTE_ADDR)
    cdef uint64_t gfn = base >> 12
    if gpte & PT_DIRTY:
        s |= SPTE_D
    if gpte & PT_GLOBAL:
        s |= SPTE_G
    if level == 1 and gfn < mmu.nframes and (gpte & (PT_WRITABLE | PT_DIRTY)) == (PT_WRITABLE | PT_DIRTY) \
            and mmu.sp_count[gfn] == 0:
        s |= SPTE_HW_W
    return s


cdef bint install(CoreState *st, MmuMode *m, uint64_t gva, Walker *w) noexcept nogil:
    """Extend the shadow tree with a walk; False when it could not (no page, no root)."""
    cdef Mmu *mmu = &st.mmu
    cdef int level = _top_level(m.levels)
    cdef uint32_t spi, child
    cdef uint64_t gpte, spte, size, base
    cdef int idx, quadrant
    make_pages_available(mmu, SP_RESERVE)
    spi = _root_for(mmu, m, gva)
    if spi == 0:
        return False
    if m.levels != 4:
        gva &= 0xFFFFFFFFULL
    while level > w.leaf_level:
        idx = <int>((gva >> (12 + 9 * (level - 1))) & 511)
        if m.levels == 3 and level == 3:
            spte = SPTE_P | SPTE_W | SPTE_U   # a PDPTE carries no permissions
        else:
            spte = _gpte_spte_bits(w.gpte[level], m.levels != 2, m.nxe)
        quadrant = <int>((gva >> 21) & 1) if (m.levels == 2 and level == 2) else 0
        child = get_sp(st, w.pte_gpa[level - 1] >> 12, make_role(m, level - 1, quadrant))
        if child == 0:
            return False
        set_spte(mmu, spi, idx, spte | (<uint64_t>child << 12))
        spi = child
        level -= 1
    idx = <int>((gva >> (12 + 9 * (level - 1))) & 511)
    size = 1ULL << (12 + 9 * (level - 1))
    base = (w.page_base + (gva & (w.page_size - 1))) & ~(size - 1)
    set_spte(mmu, spi, idx, leaf_spte(mmu, m, w.gpte[level], level, base))
    if level == 1 and mmu.prefetch > 1:
        prefetch_leaves(st, m, spi, idx)
    return True


cdef void prefetch_leaves(CoreState *st, MmuMode *m, uint32_t spi, int idx) noexcept nogil:
    """KVM's pte prefetch: shadow the present, accessed gptes of the aligned group of
    ``mmu.prefetch`` entries around ``idx`` of leaf table ``spi``, so that touching
    them later is a shadow hit instead of a guest walk.  Guest memory is not written
    (no A/D bits are set); entries a walk would refuse (not present, not accessed,
    reserved bits) are left for the walk."""
    cdef Mmu *mmu = &st.mmu
    cdef ShadowPage *sp = mmu.sps[spi]
    cdef bint wide = m.levels != 2
    cdef uint64_t frame = sp.gfn << 12
    cdef uint64_t gpte, base
    cdef int i, lo = idx & ~(mmu.prefetch - 1)
    for i in range(lo, lo + mmu.prefetch):
        if i == idx or sp.spt[i] & SPTE_P:
            continue
        if wide:
            gpte = _load_gpte(st, frame + <uint64_t>i * 8, True)
        else:
            gpte = _load_gpte(st, frame + <uint64_t>(role_quadrant(sp.role) * 512 + i) * 4, False)
        if (gpte & (PT_PRESENT | PT_ACCESSED)) != (PT_PRESENT | PT_ACCESSED):
            continue
        if wide and gpte & _rsvd_mask(1, False, m.nxe, m.levels == 4):
            continue
        base = gpte & (PHYS_MASK & ~0xFFFULL if wide else 0xFFFFF000ULL)
        set_spte(mmu, spi, i, leaf_spte(mmu, m, gpte, 1, base) | SPTE_PREFETCH)
        mmu.stats.pte_prefetched += 1


# -- implicit supervisor accesses at CPL 3 -----------------------------------------------

cdef bint _read_virt(CoreState *st, MmuMode *m, uint64_t gva, uint8_t *buf, int n) noexcept nogil:
    """Read ``n`` bytes at ``gva`` as a supervisor, without setting A/D bits."""
    cdef Walker w
    cdef int i
    cdef uint64_t pa
    for i in range(n):
        if m.levels == 0:
            pa = ((gva + i) & 0xFFFFFFFFULL) & m.a20_mask
        else:
            if walk_addr(st, m, gva + i, ACC_READ, False, False, &w):
                return False
            pa = w.gpa | ((gva + i) & 0xFFF)
        if pa >= st.ram_size:
            return False
        buf[i] = st.ram[pa]
    return True


cdef bint _in_table(ql_uc_x86_mmr *t, uint64_t page) noexcept nogil:
    return t.base <= page + 4095 and page <= t.base + t.limit


cdef bint implicit_supervisor(CoreState *st, MmuMode *m, uint64_t gva) noexcept nogil:
    """Is the CPL-3 access that faulted on page ``gva`` one the CPU makes as a supervisor?

    The fill does not see QEMU's MMU index (ENGINE_FACTS.md fact 6).  Descriptor-table and
    TSS reads are supervisor accesses even at CPL 3: accept the access when the page
    holds the GDT, LDT, IDT or TSS and the instruction at CS:RIP is one that reads
    them (segment loads, far transfers, IRET, LAR/LSL/VERR/VERW, I/O permission checks)."""
    cdef ql_uc_x86_mmr t
    cdef bint hit = False
    cdef int reg, i = 0
    cdef uint64_t rip = 0, cs = 0, cs_base = 0, desc = 0
    cdef uint8_t buf[16]
    cdef uint8_t op, op2
    cdef ql_uc_x86_mmr gdt
    cdef int tables[4]
    tables[0] = REG_GDTR
    tables[1] = REG_LDTR
    tables[2] = REG_IDTR
    tables[3] = REG_TR
    memset(&gdt, 0, sizeof(gdt))
    for i in range(4):
        reg = tables[i]
        memset(&t, 0, sizeof(t))
        uc_reg_read(st.uc, reg, &t)
        if reg == REG_GDTR:
            gdt = t
        if (t.limit or t.base) and _in_table(&t, gva & ~0xFFFULL):
            hit = True
    if not hit:
        return False
    uc_reg_read(st.uc, REG_RIP, &rip)
    uc_reg_read(st.uc, REG_CS, &cs)
    if m.levels != 4 and not (cs & 4):
        if _read_virt(st, m, gdt.base + (cs & 0xFFF8), <uint8_t *>&desc, 8):
            cs_base = ((desc >> 16) & 0xFFFFFF) | (((desc >> 56) & 0xFF) << 24)
    if not _read_virt(st, m, cs_base + rip, buf, 15):
        return False
    i = 0
    while i < 14:
        op = buf[i]
        if op in (0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65) or \
                (m.levels == 4 and 0x40 <= op <= 0x4F):
            i += 1
            continue
        break
    op = buf[i]
    op2 = buf[i + 1]
    if op in (0x8E, 0x07, 0x17, 0x1F, 0xEA, 0x9A, 0xCA, 0xCB, 0xCF, 0xC4, 0xC5, 0xCC, 0xCD, 0xCE,
              0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF, 0x6C, 0x6D, 0x6E, 0x6F):
        return True
    if op == 0xFF and ((op2 >> 3) & 7) in (3, 5):
        return True
    if op == 0x0F and op2 in (0x00, 0x02, 0x03, 0xA1, 0xA9, 0xB2, 0xB4, 0xB5):
        return True
    return False


# -- the fill -------------------------------------------------------------------------------

cdef int mmu_fill(CoreState *st, MmuMode *m, uint64_t gva, int access,
                  ql_uc_tlb_entry *res, uint32_t *error_code) noexcept nogil:
    """Answer one TLB miss; 0 with ``res`` filled, or 1 with the #PF error code."""
    cdef Mmu *mmu = &st.mmu
    cdef Walker w
    cdef uint32_t spi
    cdef ShadowPage *sp
    cdef uint64_t spte = 0, size, gpa
    cdef int level
    cdef bint u_ok = True, w_ok = True, nx = False, user, r, wr, x, ok
    cdef bint implicit = False
    if _mode_changed(mmu, m):
        switch_mode(st, m)
    if m.levels == 0:
        gpa = (gva & 0xFFFFFFFFULL & ~0xFFFULL) & m.a20_mask
        emit(st, gva, gpa, access, True, True, True, res)
        return 0
    if mmu.mode != TLB_IDENTITY_C:
        # Fast path: descend the shadow tree of the current root.
        if m.levels != 4:
            gva &= 0xFFFFFFFFULL
        level = _top_level(m.levels)
        spi = _root_for(mmu, m, gva)
        while True:
            if spi == 0:
                mmu.stats.shadow_misses[level] += 1
                break
            sp = mmu.sps[spi]
            sp.write_count = 0
            spte = sp.spt[(gva >> (12 + 9 * (level - 1))) & 511]
            if not spte & SPTE_P:
                mmu.stats.shadow_misses[level] += 1
                break
            if not spte & SPTE_W:
                w_ok = False
            if not spte & SPTE_U:
                u_ok = False
            if spte & SPTE_NX:
                nx = True
            if spte & SPTE_LEAF:
                break
            spi = <uint32_t>((spte & SPTE_ADDR) >> 12)
            level -= 1
        if spi and spte & SPTE_LEAF and level == 1 and sp.unsync and \
                _sync_spte(st, spi, <int>((gva >> 12) & 511)):
            mmu.stats.unsync_stale += 1   # the guest rewrote it untrapped: walk
            spi = 0
        if spi and spte & SPTE_LEAF:
            if not u_ok or m.smep or m.smap or not (w_ok or m.wp):
                user = _cpl_is_user(st, m)
            else:
                user = False   # user and supervisor rights are the same here
            _rights(st, m, user, u_ok, w_ok, nx, &r, &wr, &x)
            wr = wr and (spte & SPTE_D) != 0
            if access == ACC_READ:
                ok = r
            elif access == ACC_WRITE:
                ok = wr
            else:
                ok = x
            if ok:
                mmu.stats.shadow_hits[level] += 1
                if spte & SPTE_PREFETCH:
                    mmu.stats.pte_prefetch_used += 1
                    sp.spt[(gva >> (12 + 9 * (level - 1))) & 511] = spte & ~SPTE_PREFETCH
                size = 1ULL << (12 + 9 * (level - 1))
                gpa = ((spte & SPTE_ADDR) + (gva & (size - 1))) & ~0xFFFULL
                emit(st, gva, gpa, access, r, wr, x, res)
                if mmu.global_on and spte & SPTE_G and m.cr4 & CR4_PGE:
                    res.perms |= UC_PROT_GLOBAL
                return 0
            mmu.stats.shadow_perm_misses += 1
    # Slow path: a fresh guest walk decides.
    user = _cpl_is_user(st, m)
    if walk_addr(st, m, gva, access, user, True, &w):
        if user and access != ACC_FETCH and (w.error_code & (PFERR_PRESENT | PFERR_RSVD)) == \
                PFERR_PRESENT and implicit_supervisor(st, m, gva) and \
                walk_addr(st, m, gva, access, False, True, &w) == 0:
            mmu.stats.implicit_supervisor += 1
            ctx_taint(mmu)   # a supervisor answer in the user TLB: not to be kept
            user = False
            implicit = True
        else:
            error_code[0] = w.error_code
            if w.error_code & PFERR_RSVD:
                mmu.stats.rsvd_faults += 1
            mmu.stats.faults += 1
            return 1
    if mmu.mode != TLB_IDENTITY_C and not install(st, m, gva, &w):
        ctx_taint(mmu)   # an entry no shadow page backs: its table changes go unseen
    _rights(st, m, user, w.user, w.writable, w.nx, &r, &wr, &x)
    emit(st, gva, w.gpa, access, r, wr and w.dirty, x, res)
    if mmu.global_on and not implicit and w.gpte[w.leaf_level] & PT_GLOBAL and m.cr4 & CR4_PGE:
        res.perms |= UC_PROT_GLOBAL
    return 0


cdef bint _hook_tlb_fill_mmu(uc_engine *uc, uint64_t vaddr, int type,
                             ql_uc_tlb_entry *result, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    cdef Mmu *mmu = &st.mmu
    cdef MmuMode m
    cdef int access
    cdef uint32_t error_code = 0
    cdef bint noncanonical = False
    mmu.stats.fills += 1
    if type == UC_MEM_WRITE:
        access = ACC_WRITE
        mmu.stats.fills_write += 1
    elif type == UC_MEM_FETCH:
        access = ACC_FETCH
        mmu.stats.fills_fetch += 1
    else:
        access = ACC_READ
        mmu.stats.fills_read += 1
    read_mode(st, &m)
    if m.efer & EFER_LMA:
        # 48-bit linear addresses (CPUID does not offer LA57): bits 63:47 must
        # be equal, or the access is #GP(0) / #SS(0), not a page fault (SDM
        # vol. 3 6.15).  QEMU's own MMU checks this in its tlb_fill, which the
        # UC_TLB_VIRTUAL fill replaces, so the check is ours.
        noncanonical = not is_canonical48(vaddr)
    elif access == ACC_FETCH and vaddr >> 32:
        # Not a guest fetch: Unicorn invalidating the emu_start "until" page
        # after the slice.  Answer with an MMIO page: nothing is translated.
        result.paddr = ALIAS_BASE
        result.perms = UC_PROT_READ | UC_PROT_EXEC
        return True
    if not noncanonical and mmu_fill(st, &m, vaddr, access, result, &error_code) == 0:
        return True
    if noncanonical:
        mmu.stats.noncanonical_faults += 1
    if not st.stop_flags & C_STOP_FAULT:
        # Only the first fault of a slice is the guest's (ENGINE_FACTS.md fact 6).
        st.stop_flags |= C_STOP_FAULT
        mmu.fault_pending = True
        mmu.fault_addr = vaddr if m.levels == 4 else vaddr & 0xFFFFFFFFULL
        mmu.fault_error = error_code
        mmu.fault_noncanonical = noncanonical
    return False
