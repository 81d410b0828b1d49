# Software interrupts (INT n, INT3, INTO) and SYSCALL delivered in C, inside the engine's
# hooks, for the common case of a 64-bit guest: a 16-byte interrupt or trap gate to a
# 64-bit code segment (privilege change through the TSS's RSP0-2, IST stacks), and SYSCALL
# from 64-bit code through STAR/LSTAR/SFMASK.  The slice goes on; no Python runs.
#
# Each step mirrors the Python path (qemu_lite/events.py _deliver_long, VCpu.do_syscall),
# which stays the reference: whatever would raise a fault there (a bad gate, descriptor or
# stack, a table outside plain RAM, a page fault while reading or writing), and every other
# mode (real, 32-bit protected, virtual-8086, compatibility mode), returns False before
# anything guest-visible changed, and the hook stops the slice for Python as before.  The
# walker's A/D updates on the way are the ones Python's walk repeats, so they are idempotent.
#
# Off unless the CPU state is read in place (patched engine) with every offset checked at
# attach (_fe_attach), and while the vCPU has a syscall observer (Core.set_fast_events).
# Registers: QEMU keeps the arithmetic flags (CC_SRC/CC_OP) and DF outside env->eflags
# while the engine runs, so EFLAGS is written field by field as cpu_load_eflags would.

cdef enum:
    FE_HF_CPL = 3
    FE_HF_INHIBIT = 1 << 3
    FE_HF_CS32 = 1 << 4
    FE_HF_SS32 = 1 << 5
    FE_HF_ADDSEG = 1 << 6
    FE_HF_PE = 1 << 7
    FE_HF_LMA = 1 << 14
    FE_HF_CS64 = 1 << 15
    FE_CC_OP_EFLAGS = 1       # QEMU's CCOp: CC_OP_DYNAMIC, CC_OP_EFLAGS, ...

cdef uint64_t FE_TF = 1ULL << 8
cdef uint64_t FE_IF = 1ULL << 9
cdef uint64_t FE_DF = 1ULL << 10
cdef uint64_t FE_NT = 1ULL << 14
cdef uint64_t FE_RF = 1ULL << 16
cdef uint64_t FE_VM = 1ULL << 17
cdef uint64_t FE_AC = 1ULL << 18
cdef uint32_t FE_DESC_B = 1 << 22
cdef uint32_t FE_DESC_L = 1 << 21
cdef uint64_t FE_CC = 0x8D5ULL   # OF SF ZF AF PF CF
cdef uint64_t FE_EFER_SCE = 1
cdef uint32_t FE_FLAT_CODE64 = 0x00A09B00   # as qemu_lite.vcpu.FLAT_CODE64 / FLAT_DATA
cdef uint32_t FE_FLAT_DATA = 0x00C09300
cdef uint32_t FE_MSR_STAR = 0xC0000081
cdef uint32_t FE_MSR_LSTAR = 0xC0000082
cdef uint32_t FE_MSR_FMASK = 0xC0000084
cdef int FE_REG_RSP = _x86.UC_X86_REG_RSP
cdef int FE_REG_RCX = _x86.UC_X86_REG_RCX
cdef int FE_REG_R11 = _x86.UC_X86_REG_R11
cdef int FE_REG_RFLAGS = _x86.UC_X86_REG_RFLAGS
cdef int FE_SEG_CS = 1
cdef int FE_SEG_SS = 2


cdef struct FeSeg:
    uint32_t selector
    uint64_t base
    uint32_t limit
    uint32_t flags


cdef inline bint _fe_plain_ram(CoreState *st, uint64_t gpa, uint64_t n) noexcept nogil:
    """RAM that Python's mem_read/mem_write reach the same way: no ROM, VGA or PAM window."""
    if gpa + n <= 0xA0000:
        return True
    return gpa >= 0x100000 and gpa + n <= st.ram_size


cdef bint _fe_xlate(CoreState *st, MmuMode *m, uint64_t linear, int acc, bint user,
                    uint64_t *gpa) noexcept nogil:
    """Translate one byte's page as EventDelivery._phys does (supervisor unless ``user``)."""
    cdef Walker w
    cdef int failed
    if m.levels == 0:
        gpa[0] = linear & 0xFFFFFFFFULL   # paging off: Core.walk's answer
        return True
    failed = walk_addr(st, m, linear, acc, user, True, &w)
    st.mmu.stats.guest_walks -= 1    # delivery's walks are not the fills' (as Core.walk)
    if failed:
        return False
    gpa[0] = w.gpa | (linear & 0xFFF)
    return True


cdef bint _fe_read(CoreState *st, MmuMode *m, uint64_t linear, uint8_t *out, uint64_t n,
                   int acc, bint user) noexcept nogil:
    cdef uint64_t gpa, chunk
    if not (is_canonical48(linear) and is_canonical48(linear + n - 1)):
        return False
    while n > 0:
        chunk = 4096 - (linear & 0xFFF)
        if chunk > n:
            chunk = n
        if not _fe_xlate(st, m, linear, acc, user, &gpa) or not _fe_plain_ram(st, gpa, chunk):
            return False
        memcpy(out, st.ram + gpa, chunk)
        out += chunk
        linear += chunk
        n -= chunk
    return True


cdef inline void _fe_store(CoreState *st, uint64_t gpa, void *data, uint64_t n) noexcept nogil:
    """A store of delivery: as EventDelivery.write (uc_mem_write, then the MMU is told)."""
    uc_mem_write(st.uc, gpa, data, n)
    st.mmu.stats.phys_writes_notified += 1
    track_phys_write(st, gpa, n, False)


cdef bint _fe_descriptor(CoreState *st, MmuMode *m, uint32_t selector, uint64_t *desc) noexcept nogil:
    cdef ql_uc_x86_mmr t
    uc_reg_read(st.uc, REG_LDTR if selector & 4 else REG_GDTR, &t)
    if (selector & ~7) + 7 > t.limit:
        return False
    return _fe_read(st, m, t.base + (selector & ~7), <uint8_t *>desc, 8, ACC_READ, False)


cdef inline void _fe_seg_from_desc(FeSeg *s, uint32_t selector, uint64_t desc) noexcept nogil:
    """Segment.from_descriptor(selector, desc | accessed)."""
    cdef uint64_t lo = desc & 0xFFFFFFFFULL
    cdef uint64_t hi = (desc >> 32) | (1 << 8)
    s.selector = selector
    s.base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000ULL)
    s.limit = <uint32_t>((lo & 0xFFFF) | (hi & 0xF0000))
    if hi & (1 << 23):
        s.limit = (s.limit << 12) | 0xFFF
    s.flags = <uint32_t>(hi & 0x00F0FF00)


cdef inline void _fe_put_seg(CoreState *st, int seg, FeSeg *s) noexcept nogil:
    cdef uint8_t *p = st.cpu + st.fe_off_segs + 24 * seg
    memcpy(p, &s.selector, 4)
    memcpy(p + 8, &s.base, 8)
    memcpy(p + 16, &s.limit, 4)
    memcpy(p + 20, &s.flags, 4)


cdef void _fe_commit(CoreState *st, FeSeg *cs, FeSeg *ss, uint64_t rip) noexcept nogil:
    """Load CS (and SS), recompute the hflags that follow them (qemu_lite.cpustate's
    segment_hflags, EFLAGS.VM clear), set RIP; clear the interrupt shadow and QEMU's
    nested-exception memory, as SegmentEditor.commit does."""
    cdef uint32_t hf, cs_flags, ss_flags
    cdef uint64_t base, bases = 0
    cdef int32_t none = -1
    cdef bint protected
    cdef int seg
    _fe_put_seg(st, FE_SEG_CS, cs)
    if ss != NULL:
        _fe_put_seg(st, FE_SEG_SS, ss)
    memcpy(&ss_flags, st.cpu + st.fe_off_segs + 24 * FE_SEG_SS + 20, 4)
    cs_flags = cs.flags
    for seg in range(4):    # ES, SS, DS (not CS)
        if seg == FE_SEG_CS:
            continue
        memcpy(&base, st.cpu + st.fe_off_segs + 24 * seg + 8, 8)
        bases |= base
    memcpy(&hf, st.cpu + st.off_hflags, 4)
    protected = (hf & FE_HF_PE) != 0
    hf &= ~<uint32_t>(FE_HF_INHIBIT | FE_HF_CS32 | FE_HF_SS32 | FE_HF_CS64 | FE_HF_ADDSEG |
                      FE_HF_CPL)
    if hf & FE_HF_LMA and cs_flags & FE_DESC_L:
        hf |= FE_HF_CS32 | FE_HF_SS32 | FE_HF_CS64
    else:
        if cs_flags & FE_DESC_B:
            hf |= FE_HF_CS32
        if ss_flags & FE_DESC_B:
            hf |= FE_HF_SS32
    if protected:
        hf |= cs.selector & 3
    if not hf & FE_HF_CS64:
        if not protected or not hf & FE_HF_CS32 or bases:
            hf |= FE_HF_ADDSEG
    memcpy(st.cpu + st.off_hflags, &hf, 4)
    memcpy(st.cpu + st.fe_off_old_exception, &none, 4)
    memcpy(st.cpu + st.fe_off_eip, &rip, 8)


cdef bint fast_int64(CoreState *st, uint32_t vector, uint64_t next_eip) noexcept nogil:
    """Deliver INT n / INT3 / INTO in 64-bit mode as EventDelivery._deliver_long; False: Python."""
    cdef MmuMode m
    cdef ql_uc_x86_mmr idtr, tr
    cdef uint64_t gate[2]
    cdef uint64_t desc, lo, offset, rsp, rflags, new_rsp, sp, eflags_env
    cdef uint64_t frame[5]
    cdef uint64_t gpa[2]
    cdef uint64_t first
    cdef uint32_t hf, gtype, dpl, selector, ist, cpl, new_cpl, hi, old_cs_sel, old_ss_sel
    cdef FeSeg cs, ss
    memcpy(&hf, st.cpu + st.off_hflags, 4)
    if not hf & FE_HF_LMA:
        return False
    memcpy(&eflags_env, st.cpu + st.off_eflags, 8)
    if eflags_env & FE_VM:
        return False
    cpl = hf & FE_HF_CPL
    read_mode(st, &m)
    m.cpl = 0                       # delivery's accesses are supervisor ones (Core.walk)
    # The gate
    uc_reg_read(st.uc, REG_IDTR, &idtr)
    if vector * 16 + 15 > idtr.limit:
        return False
    if not _fe_read(st, &m, idtr.base + vector * 16, <uint8_t *>gate, 16, ACC_READ, False):
        return False
    lo = gate[0]
    gtype = (lo >> 40) & 0xF
    dpl = (lo >> 45) & 3
    selector = (lo >> 16) & 0xFFFF
    offset = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000ULL) | ((gate[1] & 0xFFFFFFFFULL) << 32)
    ist = (lo >> 32) & 7
    if (gtype != 0xE and gtype != 0xF) or dpl < cpl or not (lo >> 47) & 1:
        return False
    # The code segment
    if selector & ~3 == 0 or not _fe_descriptor(st, &m, selector, &desc):
        return False
    hi = <uint32_t>(desc >> 32)
    if not hi & (1 << 12) or not hi & (1 << 11) or not hi & (1 << 15):
        return False
    dpl = (hi >> 13) & 3
    if dpl > cpl:
        return False
    new_cpl = cpl if hi & (1 << 10) else dpl
    _fe_seg_from_desc(&cs, (selector & ~3) | new_cpl, desc)
    if not (cs.flags >> 21) & 1 or (cs.flags >> 22) & 1:   # L=1, D=0
        return False
    # The stack
    memcpy(&old_cs_sel, st.cpu + st.fe_off_segs + 24 * FE_SEG_CS, 4)
    memcpy(&old_ss_sel, st.cpu + st.fe_off_segs + 24 * FE_SEG_SS, 4)
    uc_reg_read(st.uc, FE_REG_RSP, &rsp)
    uc_reg_read(st.uc, FE_REG_RFLAGS, &rflags)
    if ist or new_cpl < cpl:
        uc_reg_read(st.uc, REG_TR, &tr)
        first = 0x24 + (ist - 1) * 8 if ist else 4 + new_cpl * 8
        if first + 7 > tr.limit:
            return False     # Python reads past the limit; it decides what that means
        if not _fe_read(st, &m, tr.base + first, <uint8_t *>&new_rsp, 8, ACC_READ, False):
            return False
    else:
        new_rsp = rsp
    new_rsp &= ~<uint64_t>0xF
    sp = new_rsp - 40
    if not (is_canonical48(sp) and is_canonical48(new_rsp - 1)) or not is_canonical48(offset):
        return False
    frame[0] = next_eip
    frame[1] = old_cs_sel
    frame[2] = rflags
    frame[3] = rsp
    frame[4] = old_ss_sel
    # Both pages translated before the first store
    first = 4096 - (sp & 0xFFF)
    if first > 40:
        first = 40
    if not _fe_xlate(st, &m, sp, ACC_WRITE, False, &gpa[0]) or \
            not _fe_plain_ram(st, gpa[0], first):
        return False
    if first < 40 and (not _fe_xlate(st, &m, sp + first, ACC_WRITE, False, &gpa[1])
                       or not _fe_plain_ram(st, gpa[1], 40 - first)):
        return False
    # Commit: from here on nothing can fail
    _fe_store(st, gpa[0], frame, first)
    if first < 40:
        _fe_store(st, gpa[1], (<uint8_t *>frame) + first, 40 - first)
    eflags_env &= ~(FE_TF | FE_NT | FE_RF | FE_VM)
    if gtype == 0xE:
        eflags_env &= ~FE_IF
    memcpy(st.cpu + st.off_eflags, &eflags_env, 8)
    uc_reg_write(st.uc, FE_REG_RSP, &sp)
    if new_cpl < cpl:
        ss.selector = new_cpl
        ss.base = 0
        ss.limit = 0
        ss.flags = new_cpl << 13
        _fe_commit(st, &cs, &ss, offset)
    else:
        _fe_commit(st, &cs, NULL, offset)
    st.fe_ints += 1
    return True


cdef inline void _fe_get_seg(CoreState *st, int seg, FeSeg *s) noexcept nogil:
    cdef uint8_t *p = st.cpu + st.fe_off_segs + 24 * seg
    memcpy(&s.selector, p, 4)
    memcpy(&s.base, p + 8, 8)
    memcpy(&s.limit, p + 16, 4)
    memcpy(&s.flags, p + 20, 4)


cdef bint fast_int_real(CoreState *st, uint32_t vector, uint64_t next_eip) noexcept nogil:
    """INT n through the IVT, as EventDelivery._deliver_real; False: Python."""
    cdef ql_uc_x86_mmr idtr
    cdef uint64_t linear, rflags, rsp, eflags_env
    cdef uint64_t gpa[3]
    cdef uint16_t entry[2]
    cdef uint16_t words[3]
    cdef uint32_t sp
    cdef FeSeg cs, ss
    cdef int i
    uc_reg_read(st.uc, REG_IDTR, &idtr)
    if vector * 4 + 3 > idtr.limit:
        return False
    linear = (idtr.base + vector * 4) & 0xFFFFFFFFULL
    if not _fe_plain_ram(st, linear, 4):
        return False
    memcpy(entry, st.ram + linear, 4)
    _fe_get_seg(st, FE_SEG_CS, &cs)
    _fe_get_seg(st, FE_SEG_SS, &ss)
    uc_reg_read(st.uc, FE_REG_RFLAGS, &rflags)
    uc_reg_read(st.uc, FE_REG_RSP, &rsp)
    words[0] = <uint16_t>rflags
    words[1] = <uint16_t>cs.selector
    words[2] = <uint16_t>next_eip
    sp = rsp & 0xFFFF
    for i in range(3):
        sp = (sp - 2) & 0xFFFF
        gpa[i] = (ss.base + sp) & 0xFFFFFFFFULL
        if not _fe_plain_ram(st, gpa[i], 2):
            return False
    for i in range(3):
        _fe_store(st, gpa[i], &words[i], 2)
    memcpy(&eflags_env, st.cpu + st.off_eflags, 8)
    eflags_env &= ~(FE_IF | FE_TF | FE_AC)
    memcpy(st.cpu + st.off_eflags, &eflags_env, 8)
    rsp = (rsp & ~<uint64_t>0xFFFF) | sp
    uc_reg_write(st.uc, FE_REG_RSP, &rsp)
    cs.selector = entry[1]
    cs.base = <uint64_t>entry[1] << 4
    _fe_commit(st, &cs, NULL, entry[0])
    st.fe_ints += 1
    return True


cdef bint fast_int32(CoreState *st, uint32_t vector, uint64_t next_eip) noexcept nogil:
    """INT n through a 32-bit interrupt or trap gate, as EventDelivery._deliver_protected
    (no task gate, no 16-bit gate or TSS, no virtual-8086 mode); False: Python."""
    cdef MmuMode m
    cdef ql_uc_x86_mmr idtr, tr
    cdef uint64_t lo, desc, ss_desc, tr_desc, esp, rflags, eflags_env, linear, full_sp
    cdef uint64_t gpa[2]
    cdef uint32_t frame[5]
    cdef uint32_t hf, gtype, dpl, selector, offset, cpl, new_cpl, hi, new_esp, sp, sp_mask
    cdef uint32_t n, nbytes, first
    cdef uint16_t new_ss_sel
    cdef uint8_t tss_entry[6]
    cdef FeSeg cs, ss_new, old_cs, old_ss
    cdef FeSeg *stack
    cdef bint switch
    memcpy(&hf, st.cpu + st.off_hflags, 4)
    memcpy(&eflags_env, st.cpu + st.off_eflags, 8)
    if hf & FE_HF_LMA or not hf & FE_HF_PE or eflags_env & FE_VM:
        return False
    cpl = hf & FE_HF_CPL
    read_mode(st, &m)
    m.cpl = 0
    uc_reg_read(st.uc, REG_IDTR, &idtr)
    if vector * 8 + 7 > idtr.limit:
        return False
    if not _fe_read(st, &m, idtr.base + vector * 8, <uint8_t *>&lo, 8, ACC_READ, False):
        return False
    gtype = (lo >> 40) & 0xF
    dpl = (lo >> 45) & 3
    selector = (lo >> 16) & 0xFFFF
    offset = <uint32_t>((lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000ULL))
    if (gtype != 0xE and gtype != 0xF) or dpl < cpl or not (lo >> 47) & 1:
        return False
    if selector & ~3 == 0 or not _fe_descriptor(st, &m, selector, &desc):
        return False
    hi = <uint32_t>(desc >> 32)
    if not hi & (1 << 12) or not hi & (1 << 11) or not hi & (1 << 15):
        return False
    dpl = (hi >> 13) & 3
    if dpl > cpl:
        return False
    new_cpl = cpl if hi & (1 << 10) else dpl
    _fe_seg_from_desc(&cs, (selector & ~3) | new_cpl, desc)
    _fe_get_seg(st, FE_SEG_CS, &old_cs)
    _fe_get_seg(st, FE_SEG_SS, &old_ss)
    uc_reg_read(st.uc, FE_REG_RSP, &esp)
    uc_reg_read(st.uc, FE_REG_RFLAGS, &rflags)
    switch = new_cpl < cpl
    n = 0
    if switch:
        uc_reg_read(st.uc, REG_TR, &tr)
        if not tr.selector:
            return False
        if not _fe_descriptor(st, &m, tr.selector, &tr_desc):
            return False
        if ((tr_desc >> 40) & 0xF) != 0x9 and ((tr_desc >> 40) & 0xF) != 0xB:
            return False           # a 16-bit TSS
        if 8 + new_cpl * 8 + 1 > tr.limit:
            return False
        if not _fe_read(st, &m, tr.base + 4 + new_cpl * 8, tss_entry, 6, ACC_READ, False):
            return False
        memcpy(&new_esp, tss_entry, 4)
        memcpy(&new_ss_sel, tss_entry + 4, 2)
        if not new_ss_sel & ~3 or (new_ss_sel & 3) != new_cpl:
            return False
        if not _fe_descriptor(st, &m, new_ss_sel, &ss_desc):
            return False
        hi = <uint32_t>(ss_desc >> 32)
        if ((hi >> 13) & 3) != new_cpl or (hi >> 11) & 1 or not (hi >> 9) & 1 \
                or not hi & (1 << 15):
            return False
        _fe_seg_from_desc(&ss_new, new_ss_sel, ss_desc)
        frame[4] = old_ss.selector
        frame[3] = <uint32_t>esp
        n = 2
        stack = &ss_new
        sp = new_esp
    else:
        stack = &old_ss
        sp = <uint32_t>esp
    frame[2] = <uint32_t>rflags
    frame[1] = old_cs.selector
    frame[0] = <uint32_t>next_eip
    n += 3
    nbytes = 4 * n
    sp_mask = 0xFFFFFFFFU if stack.flags & FE_DESC_B else 0xFFFF
    sp = (sp - nbytes) & sp_mask
    if <uint64_t>sp + nbytes > <uint64_t>sp_mask + 1:
        return False               # the frame wraps around a 16-bit stack
    linear = stack.base + sp
    if linear + nbytes > 0x100000000ULL:
        return False
    # the frame's slots, lowest first: frame[0] is the return EIP
    if n == 3:
        frame[3] = 0
    first = 4096 - (linear & 0xFFF)
    if first > nbytes:
        first = nbytes
    if not _fe_xlate(st, &m, linear, ACC_WRITE, False, &gpa[0]) or \
            not _fe_plain_ram(st, gpa[0], first):
        return False
    if first < nbytes and (not _fe_xlate(st, &m, linear + first, ACC_WRITE, False, &gpa[1])
                           or not _fe_plain_ram(st, gpa[1], nbytes - first)):
        return False
    _fe_store(st, gpa[0], frame, first)
    if first < nbytes:
        _fe_store(st, gpa[1], (<uint8_t *>frame) + first, nbytes - first)
    eflags_env &= ~(FE_TF | FE_NT | FE_RF | FE_VM)
    if gtype == 0xE:
        eflags_env &= ~FE_IF
    memcpy(st.cpu + st.off_eflags, &eflags_env, 8)
    if switch:
        full_sp = sp
    else:
        full_sp = (esp & ~<uint64_t>sp_mask) | sp
    uc_reg_write(st.uc, FE_REG_RSP, &full_sp)
    _fe_commit(st, &cs, &ss_new if switch else NULL, offset)
    st.fe_ints += 1
    return True


cdef inline bint fast_int(CoreState *st, uint32_t vector, uint64_t next_eip) noexcept nogil:
    """A software interrupt in whatever mode the CPU is in; False: Python."""
    cdef uint64_t cr0
    cdef uint32_t hf
    memcpy(&cr0, st.cpu + st.off_cr0, 8)
    if not cr0 & 1:
        return fast_int_real(st, vector, next_eip)
    memcpy(&hf, st.cpu + st.off_hflags, 4)
    if hf & FE_HF_LMA:
        return fast_int64(st, vector, next_eip)
    return fast_int32(st, vector, next_eip)


cdef bint fast_syscall64(CoreState *st) noexcept nogil:
    """SYSCALL from 64-bit code, as VCpu.do_syscall; False: Python.

    Called from helper_syscall, which adds the instruction's length to EIP after
    the hook: only a plain 0F 05 (length 2) is done here."""
    cdef MmuMode m
    cdef uint32_t hf
    cdef uint64_t efer, eip, rflags, new_flags, rcx, r11, cc, target
    cdef int32_t df
    cdef uint32_t cc_op = FE_CC_OP_EFLAGS
    cdef uint8_t insn[2]
    cdef ql_uc_x86_msr star, lstar, fmask
    cdef FeSeg cs, ss
    memcpy(&hf, st.cpu + st.off_hflags, 4)
    if not hf & FE_HF_LMA or not hf & FE_HF_CS64:
        return False
    memcpy(&efer, st.cpu + st.off_efer, 8)
    if not efer & FE_EFER_SCE:
        return False
    memcpy(&eip, st.cpu + st.fe_off_eip, 8)
    read_mode(st, &m)
    if not _fe_read(st, &m, eip, insn, 2, ACC_FETCH, m.cpl == 3):
        return False
    if insn[0] != 0x0F or insn[1] != 0x05:
        return False
    star.rid = FE_MSR_STAR
    lstar.rid = FE_MSR_LSTAR
    fmask.rid = FE_MSR_FMASK
    uc_reg_read(st.uc, REG_MSR, &star)
    uc_reg_read(st.uc, REG_MSR, &lstar)
    uc_reg_read(st.uc, REG_MSR, &fmask)
    uc_reg_read(st.uc, FE_REG_RFLAGS, &rflags)
    rcx = eip + 2
    r11 = rflags & ~FE_RF
    uc_reg_write(st.uc, FE_REG_RCX, &rcx)
    uc_reg_write(st.uc, FE_REG_R11, &r11)
    new_flags = rflags & ~(fmask.value | FE_RF)
    # EFLAGS as cpu_load_eflags leaves it inside the engine's loop
    cc = new_flags & FE_CC
    df = -1 if new_flags & FE_DF else 1
    new_flags &= ~(FE_CC | FE_DF)
    memcpy(st.cpu + st.off_eflags, &new_flags, 8)
    memcpy(st.cpu + st.fe_off_cc_src, &cc, 8)
    memcpy(st.cpu + st.fe_off_cc_op, &cc_op, 4)
    memcpy(st.cpu + st.fe_off_df, &df, 4)
    cs.selector = (star.value >> 32) & 0xFFFC
    cs.base = 0
    cs.limit = 0xFFFFFFFFULL
    cs.flags = FE_FLAT_CODE64
    ss.selector = (cs.selector + 8) & 0xFFFC
    ss.base = 0
    ss.limit = 0xFFFFFFFFULL
    ss.flags = FE_FLAT_DATA
    target = lstar.value - 2        # helper_syscall adds the length after us
    _fe_commit(st, &cs, &ss, target)
    st.fe_syscalls += 1
    return True


cdef bint _fe_attach(CoreState *st) noexcept:
    """Check the offsets the C path writes (beyond the fill's) on this engine, at attach.

    QEMU's CPUX86State: regs[16], eip, eflags, cc_dst, cc_src, cc_src2, cc_op, df,
    hflags, hflags2, segs[6]; each field is confirmed through the register API."""
    cdef uint64_t saved_rip, saved_flags, probe, got, cc_src
    cdef uint32_t cc_op
    cdef int32_t df
    cdef bint ok
    if st.cpu == NULL or st.off_hflags - st.off_eflags != 40:
        return False
    st.fe_off_eip = st.off_eflags - 8
    st.fe_off_cc_src = st.off_eflags + 16
    st.fe_off_cc_op = st.off_eflags + 32
    st.fe_off_df = st.off_eflags + 36
    st.fe_off_segs = st.off_hflags + 8
    uc_reg_read(st.uc, REG_RIP, &saved_rip)
    uc_reg_read(st.uc, REG_EFLAGS, &saved_flags)
    probe = 0x12345678
    uc_reg_write(st.uc, REG_RIP, &probe)
    memcpy(&got, st.cpu + st.fe_off_eip, 8)
    ok = got == probe
    probe = 0x4D7      # DF, OF, SF, ZF, AF, PF, CF and the fixed bit
    uc_reg_write(st.uc, REG_EFLAGS, &probe)
    memcpy(&cc_src, st.cpu + st.fe_off_cc_src, 8)
    memcpy(&cc_op, st.cpu + st.fe_off_cc_op, 4)
    memcpy(&df, st.cpu + st.fe_off_df, 4)
    ok = ok and cc_src == (probe & FE_CC) and cc_op == FE_CC_OP_EFLAGS and df == -1
    uc_reg_write(st.uc, REG_RIP, &saved_rip)
    uc_reg_write(st.uc, REG_EFLAGS, &saved_flags)
    return ok
