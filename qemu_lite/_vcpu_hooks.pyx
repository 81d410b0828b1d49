# cython: boundscheck=False, wraparound=False
"""A C block hook for the vCPU: interrupt windows, timer deadlines, guest progress.

The vCPU thread itself decides when a slice ends: another thread never calls
``uc_emu_stop`` (ENGINE_FACTS.md fact 14 saw corruption under frequent cross-thread
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

Host signals: Python runs its signal handlers only between bytecodes, never
while ``emu_start`` is inside C, so a guest spinning with no timer armed
would keep SIGINT and SIGTERM waiting forever.  :func:`watch_signals` puts a
C handler in front of Python's own for the given signals: it bumps a
process-wide counter, then calls Python's handler.  Every block hook compares
that counter with the value it last saw and ends its slice at the next block
when it moved, so ``emu_start`` returns and Python's handler runs (on the main
thread) with the vCPU stopped at a block boundary, by the vCPU thread itself.
"""

import ctypes

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from libc.stdint cimport uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.types cimport sigset_t

from mmu_core.includes.unicorn cimport uc_engine, uc_hook, uc_hook_add_t, uc_hook_del_t, uc_emu_stop_t, uc_reg_read_t, uc_reg_write_t

from unicorn import x86_const as _x86
from unicorn.unicorn_py3 import unicorn as _ucbinding

cdef enum:
    UC_HOOK_BLOCK = 1 << 3
    EFLAGS_IF = 1 << 9


include "../mmu_core/includes/uclib.pxi"


cdef uc_hook_add_t uc_hook_add = <uc_hook_add_t>_fn("uc_hook_add")
cdef uc_hook_del_t uc_hook_del = <uc_hook_del_t>_fn("uc_hook_del")
cdef uc_emu_stop_t uc_emu_stop = <uc_emu_stop_t>_fn("uc_emu_stop")
cdef uc_reg_read_t uc_reg_read = <uc_reg_read_t>_fn("uc_reg_read")
cdef int REG_EFLAGS = _x86.UC_X86_REG_EFLAGS


cdef extern from "<signal.h>" nogil:
    ctypedef struct siginfo_t:
        pass
    ctypedef void (*sa_handler_t)(int)
    ctypedef void (*sa_sigaction_t)(int, siginfo_t *, void *)
    cdef struct sigaction_s "sigaction":
        sa_handler_t sa_handler
        sa_sigaction_t sa_sigaction
        sigset_t sa_mask
        int sa_flags
    int sigaction(int, const sigaction_s *, sigaction_s *)
    sa_handler_t SIG_DFL
    sa_handler_t SIG_IGN
    enum:
        SA_SIGINFO
        SA_RESETHAND
        NSIG


# Signals delivered through watch_signals(), process-wide; block hooks compare.
cdef unsigned long _signals_seen = 0
cdef sigaction_s _chained[NSIG]


cdef void _on_signal(int signum, siginfo_t *info, void *ctx) noexcept nogil:
    # Async-signal-safe: one store, then the handler we displaced (Python's,
    # which records the signal for the main thread and writes its wakeup fd).
    global _signals_seen
    _signals_seen += 1
    cdef sigaction_s *prev = &_chained[signum]
    if prev.sa_flags & SA_SIGINFO:
        if prev.sa_sigaction != NULL:
            prev.sa_sigaction(signum, info, ctx)
    elif prev.sa_handler != SIG_DFL and prev.sa_handler != SIG_IGN and prev.sa_handler != NULL:
        prev.sa_handler(signum)


def watch_signals(signums):
    """Make each signal in ``signums`` end running slices at the next block.

    Only signals whose current disposition is a handler (Python's, after
    ``signal.signal``) are wrapped: default and ignored ones keep their
    meaning.  Idempotent; a later ``signal.signal`` for the same signal
    replaces the wrapper.  Returns the signals now watched."""
    cdef sigaction_s cur, ours
    cdef int n
    watched = []
    for signum in signums:
        n = signum
        if not 0 < n < NSIG or sigaction(n, NULL, &cur) != 0:
            raise ValueError(f"bad signal number {signum}")
        if cur.sa_flags & SA_SIGINFO and cur.sa_sigaction == _on_signal:
            watched.append(signum)
            continue
        if not cur.sa_flags & SA_SIGINFO and (cur.sa_handler == SIG_DFL
                                               or cur.sa_handler == SIG_IGN):
            continue
        _chained[n] = cur
        ours = cur
        ours.sa_sigaction = _on_signal
        ours.sa_flags = (cur.sa_flags | SA_SIGINFO) & ~SA_RESETHAND
        if sigaction(n, &ours, NULL) != 0:
            raise OSError(f"cannot install a handler for signal {signum}")
        watched.append(signum)
    return watched


def signals_delivered():
    """How many watched signals have arrived in this process."""
    return _signals_seen


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
    unsigned long signals    # _signals_seen when this hook last looked


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
        self.st.signals = _signals_seen
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

    def restore_vclock(self, uint64_t value):
        """Set the virtual clock to ``value``, backwards too: loading a saved state."""
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
    if st.poke or st.signals != _signals_seen:
        st.poke = 0
        st.signals = _signals_seen
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


# -- engine calls that keep the GIL --------------------------------------------------

ctypedef int (*uc_mem_read_fn)(uc_engine *uc, uint64_t address, void *bytes, size_t size) noexcept nogil
ctypedef int (*uc_mem_write_fn)(uc_engine *uc, uint64_t address, const void *bytes, size_t size) noexcept nogil

cdef uc_reg_write_t uc_reg_write = <uc_reg_write_t>_fn("uc_reg_write")
cdef uc_mem_read_fn uc_mem_read = <uc_mem_read_fn>_fn("uc_mem_read")
cdef uc_mem_write_fn uc_mem_write = <uc_mem_write_fn>_fn("uc_mem_write")

cdef extern from *:
    """
    typedef struct { uint16_t selector; uint64_t base; uint32_t limit; uint32_t flags; } ql_mmr_t;
    typedef struct { uint32_t rid; uint64_t value; } ql_msr_t;
    """
    ctypedef struct ql_mmr_t:
        uint16_t selector
        uint64_t base
        uint32_t limit
        uint32_t flags
    ctypedef struct ql_msr_t:
        uint32_t rid
        uint64_t value


cdef enum:
    REG_PLAIN = 0     # read and written as a 64-bit integer
    REG_MMR = 1       # GDTR, IDTR, LDTR, TR: (selector, base, limit, flags)
    REG_OTHER = 2     # MSR, x87, vector registers: the binding's own path
    MAX_MEM_CALL = 1 << 20


def _classify_registers():
    """The binding's register classes, as a table (REG_OTHER where unsure)."""
    import ctypes as _ct
    from unicorn.unicorn_py3.arch.intel import UcIntel, UcRegMMR
    table = bytearray([REG_OTHER]) * (_x86.UC_X86_REG_ENDING + 1)
    for reg in range(1, _x86.UC_X86_REG_ENDING):
        cls = UcIntel._select_reg_class(reg)
        if cls is UcRegMMR:
            table[reg] = REG_MMR
        elif cls is _ct.c_uint64:
            table[reg] = REG_PLAIN
    return bytes(table)


try:
    _REG_KINDS = _classify_registers()
except Exception:  # another binding layout: every call takes the binding's path
    _REG_KINDS = b""


cdef class EngineCalls:
    """``reg_read``/``reg_write``/``msr_read``/``mem_read``/``mem_write`` for one engine,
    calling libunicorn directly with the GIL held.

    The binding's versions are ctypes calls, each of which releases and retakes
    the GIL: with two machines in two threads, every one of the thousands of
    register reads per second of event delivery became a GIL hand-off to the
    other machine's thread and back.  These take well under a microsecond, so
    keeping the GIL is both faster and fair.  Registers of other shapes (MSR
    writes, x87, vector registers) go to the binding's methods."""

    cdef uc_engine *uc
    cdef object _reg_read
    cdef object _reg_write
    cdef object _msr_read
    cdef const unsigned char[:] _kinds

    def __init__(self, uc):
        self.uc = <uc_engine *><uintptr_t>uc._uch.value
        self._reg_read = uc.reg_read
        self._reg_write = uc.reg_write
        self._msr_read = uc.msr_read
        self._kinds = _REG_KINDS

    cdef int _kind(self, int reg):
        if 0 <= reg < self._kinds.shape[0]:
            return self._kinds[reg]
        return REG_OTHER

    def reg_read(self, int reg, aux=None):
        cdef uint64_t v = 0
        cdef ql_mmr_t mmr
        cdef int kind = self._kind(reg)
        cdef int err
        if aux is not None or kind == REG_OTHER:
            return self._reg_read(reg, aux)
        if kind == REG_MMR:
            memset(&mmr, 0, sizeof(mmr))  # GDTR/IDTR leave selector and flags alone
            err = uc_reg_read(self.uc, reg, &mmr)
            if err:
                raise _ucbinding.UcError(err, reg)
            return (mmr.selector, mmr.base, mmr.limit, mmr.flags)
        err = uc_reg_read(self.uc, reg, &v)
        if err:
            raise _ucbinding.UcError(err, reg)
        return v

    def reg_write(self, int reg, value):
        cdef uint64_t v
        cdef int err
        if self._kind(reg) != REG_PLAIN:
            return self._reg_write(reg, value)
        v = <uint64_t>(value & 0xFFFFFFFFFFFFFFFF)
        err = uc_reg_write(self.uc, reg, &v)
        if err:
            raise _ucbinding.UcError(err, reg)

    def msr_read(self, uint32_t msr):
        cdef ql_msr_t m
        m.rid = msr
        m.value = 0
        cdef int err = uc_reg_read(self.uc, _x86.UC_X86_REG_MSR, &m)
        if err:
            raise _ucbinding.UcError(err, _x86.UC_X86_REG_MSR)
        return m.value

    def mem_read(self, uint64_t address, size_t size):
        if size > MAX_MEM_CALL:  # large copies: let other threads run meanwhile
            out = bytearray(size)
            self._mem_read_nogil(address, out)
            return out
        out = PyByteArray_FromStringAndSize(NULL, size)
        cdef int err = uc_mem_read(self.uc, address, PyByteArray_AS_STRING(out), size)
        if err:
            raise _ucbinding.UcError(err, address, size)
        return out

    cdef _mem_read_nogil(self, uint64_t address, bytearray out):
        cdef char *p = PyByteArray_AS_STRING(out)
        cdef size_t n = len(out)
        cdef int err
        with nogil:
            err = uc_mem_read(self.uc, address, p, n)
        if err:
            raise _ucbinding.UcError(err, address, n)

    def mem_write(self, uint64_t address, data):
        cdef const unsigned char[:] view = data
        cdef size_t n = view.shape[0]
        cdef int err
        if n == 0:
            err = uc_mem_write(self.uc, address, NULL, 0)
        elif n > MAX_MEM_CALL:
            with nogil:
                err = uc_mem_write(self.uc, address, &view[0], n)
        else:
            err = uc_mem_write(self.uc, address, &view[0], n)
        if err:
            raise _ucbinding.UcError(err, address, n)


def keep_gil_for_engine_calls(uc):
    """Replace ``uc``'s register and memory accessors by :class:`EngineCalls`' (same
    results, no GIL release).  Returns the EngineCalls (None if the binding's
    register layout was not recognised)."""
    if not _REG_KINDS:
        return None
    calls = EngineCalls(uc)
    uc.reg_read = calls.reg_read
    uc.reg_write = calls.reg_write
    uc.msr_read = calls.msr_read
    uc.mem_read = calls.mem_read
    uc.mem_write = calls.mem_write
    return calls


include "_tsc.pxi"
