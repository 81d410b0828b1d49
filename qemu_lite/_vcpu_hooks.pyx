# cython: boundscheck=False, wraparound=False
"""A C block hook for the vCPU: interrupt windows, timer deadlines, guest progress.

The vCPU thread itself decides when a slice ends: another thread never calls
``uc_emu_stop`` (DESIGN fact 14 saw corruption under frequent cross-thread
stops).  Every 64 blocks the hook reads the host's monotonic clock and stops
the slice once the next timer deadline has passed; other threads only set
``poke`` (a plain store), which the hook sees at the next block.

Unicorn reports neither STI, POPF nor IRET, so the vCPU cannot know when a
masked interrupt becomes deliverable.  QEMU ends a translation block after
each of them (and after the one-instruction STI / MOV SS shadow), so a block
hook sees every point where EFLAGS.IF may have changed.  While an interrupt
waits (``waiting`` set by the run loop) the hook stops the engine at the
first block that starts with IF set, before that block runs.  QEMU
translates the instruction in an STI / MOV SS shadow as a block of its own;
when the run loop finds itself stopped inside a shadow it asks the hook to
let that one block run (``skip_once_at``).
Otherwise the hook counts blocks and advances the virtual clock
(``vclock_ns``, the deterministic guest time: ``ns_per_block`` a block, plus
what the port and MMIO hooks charge per access and the idle time skipped).
The virtual TSC (_tsc.pxi) reads the same counter.
"""

import ctypes

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from mmu_core.includes.unicorn cimport uc_engine, uc_hook, uc_hook_add_t, uc_hook_del_t, uc_emu_stop_t, uc_reg_read_t

from unicorn import x86_const as _x86
from unicorn.unicorn_py3 import unicorn as _ucbinding

cdef enum:
    UC_HOOK_BLOCK = 1 << 3
    EFLAGS_IF = 1 << 9


cdef uintptr_t _fn(name) except 0:
    return <uintptr_t>ctypes.cast(getattr(_ucbinding.uclib, name), ctypes.c_void_p).value


cdef uc_hook_add_t uc_hook_add = <uc_hook_add_t>_fn("uc_hook_add")
cdef uc_hook_del_t uc_hook_del = <uc_hook_del_t>_fn("uc_hook_del")
cdef uc_emu_stop_t uc_emu_stop = <uc_emu_stop_t>_fn("uc_emu_stop")
cdef uc_reg_read_t uc_reg_read = <uc_reg_read_t>_fn("uc_reg_read")
cdef int REG_EFLAGS = _x86.UC_X86_REG_EFLAGS


cdef struct HookState:
    uint64_t blocks
    uint64_t vclock_ns       # deterministic guest time (see clock.VirtualClock)
    uint64_t ns_per_block
    uint64_t stop_at_block   # deterministic deadline, in vclock_ns (0 = none)
    bint waiting             # an interrupt waits for EFLAGS.IF
    uint64_t skip_pc         # let one block starting here run (the STI shadow)
    bint skip_armed
    int fired                # 1: window opened, 2: block deadline, 3: time deadline, 4: poked
    uint64_t deadline_ns     # host CLOCK_MONOTONIC deadline (0 = none)
    int poke                 # set by other threads: stop at the next block


cdef class VcpuHooks:
    """Owns the block hook of one engine."""

    cdef HookState *st
    cdef uc_engine *uc
    cdef uc_hook hook
    cdef object _uc_obj

    def __cinit__(self):
        self.st = <HookState *>calloc(1, sizeof(HookState))
        if self.st == NULL:
            raise MemoryError()

    def __init__(self, uc):
        self._uc_obj = uc
        self.uc = <uc_engine *><uintptr_t>uc._uch.value
        if uc_hook_add(self.uc, &self.hook, UC_HOOK_BLOCK, <void *>_hook_block,
                       <void *>self.st, 1, 0):
            raise RuntimeError("cannot add the block hook")

    def __dealloc__(self):
        if self.st != NULL:
            if self.uc != NULL and _engine_alive(self._uc_obj):
                uc_hook_del(self.uc, self.hook)
            free(self.st)
            self.st = NULL

    property waiting:
        """True while an interrupt is pending and masked."""
        def __get__(self):
            return self.st.waiting
        def __set__(self, bint value):
            self.st.waiting = value

    def skip_once_at(self, uint64_t pc):
        """Let the next block starting at ``pc`` run (it is inside an interrupt shadow)."""
        self.st.skip_pc = pc
        self.st.skip_armed = True

    @property
    def blocks(self):
        """Translation blocks executed so far."""
        return self.st.blocks

    property vclock_ns:
        """The virtual clock: deterministic guest nanoseconds (only ever moves forward)."""
        def __get__(self):
            return self.st.vclock_ns
        def __set__(self, uint64_t value):
            if value > self.st.vclock_ns:
                self.st.vclock_ns = value

    property ns_per_block:
        """Virtual nanoseconds a translation block costs."""
        def __get__(self):
            return self.st.ns_per_block
        def __set__(self, uint64_t value):
            self.st.ns_per_block = value

    def charge(self, uint64_t ns):
        """Advance the virtual clock by ``ns`` (an MMIO access's cost)."""
        self.st.vclock_ns += ns

    def vclock_address(self):
        """Address of the virtual clock counter, for the port hooks to charge accesses."""
        return <uintptr_t>&self.st.vclock_ns

    def set_block_deadline(self, uint64_t vclock_ns):
        """Stop the engine at the first block once the virtual clock reaches ``vclock_ns``
        (0: no deadline)."""
        self.st.stop_at_block = vclock_ns

    def advance_block_deadline(self, uint64_t vclock_ns):
        """Bring the virtual-clock deadline forward to ``vclock_ns`` if that is sooner."""
        if self.st.stop_at_block == 0 or vclock_ns < self.st.stop_at_block:
            self.st.stop_at_block = vclock_ns

    def set_deadline(self, uint64_t host_ns):
        """Stop once ``time.monotonic_ns()`` reaches ``host_ns`` (0: no deadline)."""
        self.st.deadline_ns = host_ns

    def advance_deadline(self, uint64_t host_ns):
        """Bring the deadline forward to ``host_ns`` if that is sooner (a timer was armed)."""
        if self.st.deadline_ns == 0 or host_ns < self.st.deadline_ns:
            self.st.deadline_ns = host_ns

    def poke(self):
        """From any thread: end the current slice at the next block."""
        self.st.poke = 1

    def take_fired(self):
        """Why the hook stopped the slice (FIRED_* below, 0 if it did not); clears it."""
        cdef int f = self.st.fired
        self.st.fired = 0
        return f


cdef bint _engine_alive(uc_obj) noexcept:
    # The binding closes the engine through a weakref finalizer; once it has
    # run (the Core closes the engine it owns, or garbage collection did),
    # the handle must not be used.
    try:
        return bool(uc_obj._Uc__finalizer.alive)
    except Exception:
        return False


FIRED_WINDOW = 1
FIRED_BLOCKS = 2
FIRED_TIME = 3
FIRED_POKE = 4


cdef void _hook_block(uc_engine *uc, uint64_t address, uint32_t size, void *user_data) noexcept nogil:
    cdef HookState *st = <HookState *>user_data
    cdef uint64_t eflags = 0
    cdef timespec ts
    st.blocks += 1
    st.vclock_ns += st.ns_per_block
    if st.poke:
        st.poke = 0
        st.fired = 4
        uc_emu_stop(uc)
        return
    if st.stop_at_block and st.vclock_ns >= st.stop_at_block:
        st.fired = 2
        uc_emu_stop(uc)
        return
    if st.deadline_ns and (st.blocks & 63) == 0:
        clock_gettime(CLOCK_MONOTONIC, &ts)
        if <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec >= st.deadline_ns:
            st.fired = 3
            uc_emu_stop(uc)
            return
    if st.waiting:
        if st.skip_armed:
            st.skip_armed = False
            if address == st.skip_pc:
                return
        uc_reg_read(uc, REG_EFLAGS, &eflags)
        if eflags & EFLAGS_IF:
            st.fired = 1
            st.waiting = False
            uc_emu_stop(uc)


include "_tsc.pxi"
