# The virtual TSC: RDTSC and RDTSCP answered in C from guest time.
#
# Unicorn 2.1.4 lets a C caller hook both instructions (UC_HOOK_INSN with
# UC_X86_INS_RDTSC / UC_X86_INS_RDTSCP; the Python binding refuses them, ENGINE_FACTS.md
# fact 11).  helper_rdtsc / helper_rdtscp in qemu/target/i386/misc_helper.c
# first raise #GP when CR4.TSD is set at CPL > 0, then call the hooks with the
# CPUID hook's signature; a hook returning true skips the native read, so the
# hook sets EDX:EAX itself, and ECX (IA32_TSC_AUX) for RDTSCP.
#
# The counter is guest nanoseconds times a fixed frequency: the host's
# CLOCK_MONOTONIC since the clock's start in real time (the clock the PIT and
# RTC follow, so Linux calibrates the TSC against the PIT exactly), the block
# hook's virtual clock under --deterministic.  Every call is C only.

from mmu_core.includes.unicorn cimport ql_uc_x86_msr

# uc_reg_write: resolved once in _vcpu_hooks.pyx, which includes this file.
cdef int REG_RAX = _x86.UC_X86_REG_RAX
cdef int REG_RCX = _x86.UC_X86_REG_RCX
cdef int REG_RDX = _x86.UC_X86_REG_RDX
cdef int REG_MSR = _x86.UC_X86_REG_MSR
cdef int INS_RDTSC = _x86.UC_X86_INS_RDTSC
cdef int INS_RDTSCP = _x86.UC_X86_INS_RDTSCP
cdef enum:
    UC_HOOK_INSN = 1 << 1
    MSR_TSC_AUX = 0xC0000103


cdef struct TscState:
    HookState *clock        # the block hook's state: vclock_ns
    bint virtual            # True: vclock_ns; False: CLOCK_MONOTONIC - host_t0_ns
    uint64_t host_t0_ns
    uint64_t khz
    uint64_t offset         # added to the count (mod 2**64): a reset restarts at 0
    uint64_t reads


cdef inline uint64_t _tsc_guest_ns(TscState *t) noexcept nogil:
    cdef timespec ts
    if t.virtual:
        return t.clock.vclock[0]
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec - t.host_t0_ns


cdef inline uint64_t _tsc_count(TscState *t) noexcept nogil:
    # ns * kHz / 10**6 without overflowing 64 bits for centuries of guest time
    cdef uint64_t ns = _tsc_guest_ns(t)
    return (ns // 1000000) * t.khz + (ns % 1000000) * t.khz // 1000000 + t.offset


cdef int _tsc_answer(uc_engine *uc, TscState *t) noexcept nogil:
    # 64-bit engine: writing RAX/RDX clears their upper halves, as RDTSC does
    cdef uint64_t v = _tsc_count(t)
    cdef uint64_t lo = <uint32_t>v
    cdef uint64_t hi = v >> 32
    t.reads += 1
    uc_reg_write(uc, REG_RAX, &lo)
    uc_reg_write(uc, REG_RDX, &hi)
    return 1


cdef int _hook_rdtsc(uc_engine *uc, void *user_data) noexcept nogil:
    return _tsc_answer(uc, <TscState *>user_data)


cdef int _hook_rdtscp(uc_engine *uc, void *user_data) noexcept nogil:
    cdef ql_uc_x86_msr msr
    cdef uint64_t aux = 0
    msr.rid = MSR_TSC_AUX  # WRMSR of TSC_AUX works natively; only the read is ours
    msr.value = 0
    if uc_reg_read(uc, REG_MSR, &msr) == 0:
        aux = <uint32_t>msr.value
    uc_reg_write(uc, REG_RCX, &aux)
    return _tsc_answer(uc, <TscState *>user_data)


cdef class VirtualTsc:
    """RDTSC/RDTSCP of one engine: ``khz`` ticks per guest millisecond.

    ``host_t0_ns`` (the real-time clock's start, in ``time.monotonic_ns()``)
    selects real time; None follows the virtual clock of ``hooks``."""

    cdef TscState *st
    cdef uc_engine *uc
    cdef uc_hook hooks[2]
    cdef int nhooks
    cdef object _uc_obj
    cdef VcpuHooks _clock

    def __cinit__(self):
        self.st = <TscState *>calloc(1, sizeof(TscState))
        if self.st == NULL:
            raise MemoryError()

    def __init__(self, uc, VcpuHooks hooks, uint64_t khz, host_t0_ns=None):
        if khz == 0:
            raise ValueError("TSC frequency must be positive")
        self._uc_obj = uc
        self._clock = hooks  # owns the HookState we read
        self.uc = <uc_engine *><uintptr_t>uc._uch.value
        self.st.clock = hooks.st
        self.st.khz = khz
        self.st.virtual = host_t0_ns is None
        self.st.host_t0_ns = 0 if host_t0_ns is None else host_t0_ns
        for cb, insn in ((<uintptr_t>_hook_rdtsc, INS_RDTSC), (<uintptr_t>_hook_rdtscp, INS_RDTSCP)):
            if uc_hook_add(self.uc, &self.hooks[self.nhooks], UC_HOOK_INSN, <void *>cb,
                           <void *>self.st, 1, 0, <int>insn):
                raise RuntimeError("cannot hook RDTSC/RDTSCP")
            self.nhooks += 1

    def __dealloc__(self):
        cdef int i
        if self.st != NULL:
            if self.uc != NULL and _engine_alive(self._uc_obj):
                for i in range(self.nhooks):
                    uc_hook_del(self.uc, self.hooks[i])
            free(self.st)
            self.st = NULL

    @property
    def khz(self):
        return self.st.khz

    @property
    def reads(self):
        """RDTSC and RDTSCP instructions answered."""
        return self.st.reads

    def read(self):
        """The counter's value now (what RDTSC would return)."""
        return _tsc_count(self.st)

    def write(self, uint64_t value):
        """Set the counter to ``value`` and let it run on from there: what a WRMSR of
        IA32_TSC does.  Unicorn 2.1.4 cannot hook WRMSR, so no guest reaches this yet."""
        self.st.offset = 0
        self.st.offset = value - _tsc_count(self.st)

    def reset(self):
        """Power-on: the counter restarts at 0."""
        self.write(0)
