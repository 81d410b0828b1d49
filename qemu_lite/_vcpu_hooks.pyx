# cython: boundscheck=False, wraparound=False
"""When the vCPU leaves ``emu_start``: timer deadlines, interrupt windows, stops.

On the patched engine (patch b, engine/patches/b-block-start-exits.patch) the
engine decides at block boundaries, and no code of ours runs per block:

- the deterministic clock (``--deterministic``) is the engine's guest clock,
  advanced by ``ns_per_insn`` for every instruction of a block when the block
  starts, as QEMU's icount counts; a block starting at or past
  the deadline leaves first;
- ``waiting`` arms the engine's interrupt window: it leaves at the first block
  boundary where EFLAGS.IF is set outside an STI / MOV SS shadow, checked
  where QEMU checks interrupts (the shadow included, so no ``skip_once_at``);
- real-time deadlines are kept by an alarm thread that asks the engine to exit
  when the host's monotonic clock reaches them, only while a slice runs;
- ``poke()`` from any thread, and the watched signals, ask the engine to exit
  (``qemu_lite_request_exit``: atomic stores, safe from other threads and
  signal handlers, and kept pending until the slice ends, so one that lands
  just before ``emu_start`` is not lost).

The stock engine has none of that, and a C block hook called on every block
does the same work: it counts blocks and advances the virtual clock by
``ns_per_block``, reads the host clock every 64 blocks, reads EFLAGS while an
interrupt waits (QEMU ends a block after STI, POPF and IRET, and translates
the instruction in an STI / MOV SS shadow as a block of its own, which the run
loop lets run with ``skip_once_at``), and polls ``poke`` and the signal counter.

Either way the vCPU leaves at a block boundary, never inside an instruction.
Other threads never call ``uc_emu_stop``: besides the mid-instruction exits of
stock 2.1.4 (ENGINE_FACTS.md fact 14), it sets ``stop_request``, which Unicorn's helpers
read between the hooks of one instruction (its CPUID, RDTSC and SYSCALL hook
loops), so a stop from another thread can skip our CPUID or RDTSC hook.

Host signals: Python runs its signal handlers only between bytecodes, never
while ``emu_start`` is inside C, so a guest spinning with no timer armed
would keep SIGINT and SIGTERM waiting forever.  :func:`watch_signals` puts a
C handler in front of Python's own for the given signals: it bumps a
process-wide counter, asks every engine that runs a slice to exit (patched
engine), then calls Python's handler.  On the stock engine every block hook
compares that counter with the value it last saw instead.  Either way
``emu_start`` returns and Python's handler runs (on the main thread) with the
vCPU stopped at a block boundary.
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


cdef uintptr_t _fn_or_null(name):
    try:
        return <uintptr_t>ctypes.cast(getattr(_ucbinding.uclib, name), ctypes.c_void_p).value
    except AttributeError:  # the stock engine
        return 0


cdef uc_hook_add_t uc_hook_add = <uc_hook_add_t>_fn("uc_hook_add")
cdef uc_hook_del_t uc_hook_del = <uc_hook_del_t>_fn("uc_hook_del")
cdef uc_emu_stop_t uc_emu_stop = <uc_emu_stop_t>_fn("uc_emu_stop")
cdef uc_reg_read_t uc_reg_read = <uc_reg_read_t>_fn("uc_reg_read")
cdef int REG_EFLAGS = _x86.UC_X86_REG_EFLAGS


# -- patch b's entry points (uc.c of the patched engine) --------------------------------

cdef extern from *:
    """
    typedef struct { uint64_t now; uint64_t deadline; } ql_guest_clock;
    """
    ctypedef struct ql_guest_clock:
        uint64_t now
        uint64_t deadline

ctypedef void (*ql_request_exit_t)(uc_engine *uc, int reasons) noexcept nogil
ctypedef int (*ql_take_exit_t)(uc_engine *uc) noexcept nogil
ctypedef bint (*ql_halted_t)(uc_engine *uc) noexcept nogil
ctypedef ql_guest_clock *(*ql_guest_clock_t)(uc_engine *uc, uint32_t insn_ns) noexcept nogil
ctypedef int (*ql_irq_window_t)(uc_engine *uc, int arm) noexcept nogil

cdef ql_request_exit_t ql_request_exit = <ql_request_exit_t>_fn_or_null("qemu_lite_request_exit")
cdef ql_take_exit_t ql_take_exit = <ql_take_exit_t>_fn_or_null("qemu_lite_take_exit")
cdef ql_halted_t ql_halted = <ql_halted_t>_fn_or_null("qemu_lite_halted")
cdef ql_guest_clock_t ql_clock_of = <ql_guest_clock_t>_fn_or_null("qemu_lite_guest_clock")
cdef ql_irq_window_t ql_irq_window = <ql_irq_window_t>_fn_or_null("qemu_lite_irq_window")

cdef bint ENGINE_EXITS = (ql_request_exit != NULL and ql_take_exit != NULL and ql_halted != NULL
                          and ql_clock_of != NULL and ql_irq_window != NULL)

cdef enum:
    # qemu_lite_request_exit reasons (ours, below 0x100) and the engine's own
    EXIT_POKE = 1
    EXIT_SIGNAL = 2
    EXIT_TIME = 4
    EXIT_CLOCK = 0x100
    EXIT_WINDOW = 0x200
    NO_DEADLINE = 0xFFFFFFFFFFFFFFFF


def engine_exits():
    """True when the loaded engine carries patch b: no block hook is needed."""
    return ENGINE_EXITS


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


# Engines running a slice, which a watched signal asks to exit (patched
# engine).  A slice takes a free slot at its start and gives it back at its
# end, after waiting out any handler that may still be using it, so a handler
# never touches an engine that is not running; the counter covers a signal
# that arrives before the slot is taken (the slice start compares it).
cdef extern from *:
    """
    #define QL_SLOTS 64
    static uc_engine *volatile ql_running[QL_SLOTS];
    static volatile int ql_handlers_inside;

    static int ql_slot_take(uc_engine *uc) {
        for (int i = 0; i < QL_SLOTS; i++) {
            uc_engine *expected = NULL;
            if (__atomic_compare_exchange_n(&ql_running[i], &expected, uc, 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
                return i;
            }
        }
        return -1;
    }

    static void ql_slot_give(int slot) {
        if (slot < 0) return;
        __atomic_store_n(&ql_running[slot], NULL, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&ql_handlers_inside, __ATOMIC_SEQ_CST)) {
        }
    }

    static void ql_signal_running(void (*request)(uc_engine *, int), int reason) {
        __atomic_fetch_add(&ql_handlers_inside, 1, __ATOMIC_SEQ_CST);
        for (int i = 0; i < QL_SLOTS; i++) {
            uc_engine *uc = __atomic_load_n(&ql_running[i], __ATOMIC_SEQ_CST);
            if (uc != NULL) request(uc, reason);
        }
        __atomic_fetch_sub(&ql_handlers_inside, 1, __ATOMIC_SEQ_CST);
    }
    """
    int ql_slot_take(uc_engine *uc) nogil
    void ql_slot_give(int slot) nogil
    void ql_signal_running(ql_request_exit_t request, int reason) nogil


# Signals delivered through watch_signals(), process-wide; block hooks compare.
cdef unsigned long _signals_seen = 0
cdef sigaction_s _chained[NSIG]


cdef void _on_signal(int signum, siginfo_t *info, void *ctx) noexcept nogil:
    # Async-signal-safe: atomic stores, then the handler we displaced (Python's,
    # which records the signal for the main thread and writes its wakeup fd).
    global _signals_seen
    _signals_seen += 1
    if ENGINE_EXITS:
        ql_signal_running(ql_request_exit, EXIT_SIGNAL)
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


# The alarm of the patched engine: a thread that asks the engine to exit once
# CLOCK_MONOTONIC reaches the deadline, while a slice runs.  It is woken only
# when a deadline earlier than the one it sleeps towards appears.
cdef extern from *:
    """
    #include <pthread.h>
    #include <time.h>
    typedef struct {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        pthread_t thread;
        int started, quit, running, poked;
        uint64_t deadline_ns;     /* 0: none */
        uint64_t sleeping_until;  /* what the thread waits for (UINT64_MAX: no end) */
        uint64_t fired;
        uc_engine *uc;
        void (*request)(uc_engine *, int);
    } ql_alarm;

    static uint64_t ql_mono_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    }

    static void *ql_alarm_main(void *arg) {
        ql_alarm *a = arg;
        pthread_mutex_lock(&a->mu);
        while (!a->quit) {
            if (!a->running || a->deadline_ns == 0) {
                a->sleeping_until = UINT64_MAX;
                pthread_cond_wait(&a->cv, &a->mu);
                continue;
            }
            uint64_t now = ql_mono_ns();
            if (now >= a->deadline_ns) {
                a->request(a->uc, 4);  /* EXIT_TIME */
                a->deadline_ns = 0;
                a->fired++;
                continue;
            }
            struct timespec until;
            a->sleeping_until = a->deadline_ns;
            until.tv_sec = a->deadline_ns / 1000000000u;
            until.tv_nsec = a->deadline_ns % 1000000000u;
            pthread_cond_timedwait(&a->cv, &a->mu, &until);
        }
        pthread_mutex_unlock(&a->mu);
        return NULL;
    }

    static int ql_alarm_init(ql_alarm *a, uc_engine *uc, void (*request)(uc_engine *, int)) {
        pthread_condattr_t attr;
        a->uc = uc;
        a->request = request;
        a->sleeping_until = UINT64_MAX;
        if (pthread_mutex_init(&a->mu, NULL)) return -1;
        if (pthread_condattr_init(&attr) || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
            || pthread_cond_init(&a->cv, &attr)) return -1;
        pthread_condattr_destroy(&attr);
        return 0;
    }

    /* Set (or with `sooner`, bring forward) the deadline; wake the thread if
       it sleeps past it. */
    static void ql_alarm_set(ql_alarm *a, uint64_t deadline_ns, int sooner) {
        pthread_mutex_lock(&a->mu);
        if (!sooner || a->deadline_ns == 0 || (deadline_ns && deadline_ns < a->deadline_ns)) {
            a->deadline_ns = deadline_ns;
        }
        if (a->running && a->deadline_ns && a->deadline_ns < a->sleeping_until) {
            if (!a->started) {
                a->started = pthread_create(&a->thread, NULL, ql_alarm_main, a) == 0;
            }
            pthread_cond_signal(&a->cv);
        }
        pthread_mutex_unlock(&a->mu);
    }

    /* The slice starts (running=1: the engine may be asked to exit) or ends. */
    static void ql_alarm_running(ql_alarm *a, int running, uint64_t deadline_ns) {
        pthread_mutex_lock(&a->mu);
        a->running = running;
        if (running && a->poked) {
            a->poked = 0;
            a->request(a->uc, 1);  /* EXIT_POKE */
        }
        pthread_mutex_unlock(&a->mu);
        if (running) ql_alarm_set(a, deadline_ns, 0);
    }

    /* From any thread: end the running slice, or the next one. */
    static void ql_alarm_poke(ql_alarm *a) {
        pthread_mutex_lock(&a->mu);
        if (a->running) a->request(a->uc, 1);  /* EXIT_POKE */
        else a->poked = 1;
        pthread_mutex_unlock(&a->mu);
    }

    static void ql_alarm_destroy(ql_alarm *a) {
        pthread_mutex_lock(&a->mu);
        a->quit = 1;
        pthread_cond_signal(&a->cv);
        pthread_mutex_unlock(&a->mu);
        if (a->started) pthread_join(a->thread, NULL);
        pthread_cond_destroy(&a->cv);
        pthread_mutex_destroy(&a->mu);
    }
    """
    ctypedef struct ql_alarm:
        uint64_t fired
    int ql_alarm_init(ql_alarm *a, uc_engine *uc, ql_request_exit_t request) nogil
    void ql_alarm_set(ql_alarm *a, uint64_t deadline_ns, int sooner) nogil
    void ql_alarm_running(ql_alarm *a, int running, uint64_t deadline_ns) nogil
    void ql_alarm_poke(ql_alarm *a) nogil
    void ql_alarm_destroy(ql_alarm *a) nogil


cdef struct HookState:
    uint64_t *vclock         # deterministic guest time (see clock.VirtualClock):
    uint64_t own_vclock      #   own_vclock (block hook) or the engine's guest clock
    uint64_t blocks
    uint64_t ns_per_block
    uint64_t stop_at_block   # deterministic deadline, in vclock ns (0 = none)
    bint waiting             # an interrupt waits for EFLAGS.IF
    uint64_t skip_pc         # let one block starting here run (the STI shadow)
    bint skip_armed
    int fired                # 1: window opened, 2: block deadline, 3: time deadline, 4: poked
    uint64_t deadline_ns     # host CLOCK_MONOTONIC deadline (0 = none)
    int poke                 # set by other threads: stop at the next block
    unsigned long signals    # _signals_seen when this hook last looked


cdef class VcpuHooks:
    """Decides when one engine's slices end (patch b's exits, or a block hook)."""

    cdef HookState *st
    cdef uc_engine *uc
    cdef uc_hook hook
    cdef bint hooked
    cdef bint engine        # patch b: the engine exits by itself
    cdef ql_guest_clock *clock
    cdef ql_alarm *alarm
    cdef bint alarm_ready
    cdef int slot
    cdef uint32_t insn_ns
    cdef object _uc_obj

    def __cinit__(self):
        self.st = <HookState *>calloc(1, sizeof(HookState))
        self.alarm = <ql_alarm *>calloc(1, sizeof(ql_alarm))
        self.slot = -1
        if self.st == NULL or self.alarm == NULL:
            raise MemoryError()

    def __init__(self, uc, block_hook=None):
        """``block_hook``: True forces the stock engine's block hook (None: only
        where the engine lacks patch b)."""
        self._uc_obj = uc
        self.uc = <uc_engine *><uintptr_t>uc._uch.value
        self.st.signals = _signals_seen
        self.st.vclock = &self.st.own_vclock
        self.engine = ENGINE_EXITS and not block_hook
        if self.engine:
            self.clock = ql_clock_of(self.uc, 0)
            if self.clock == NULL or ql_alarm_init(self.alarm, self.uc, ql_request_exit):
                raise RuntimeError("cannot set up the engine's exits")
            self.alarm_ready = True
            self.st.vclock = &self.clock.now
            return
        if uc_hook_add(self.uc, &self.hook, UC_HOOK_BLOCK, <void *>_hook_block,
                       <void *>self.st, 1, 0):
            raise RuntimeError("cannot add the block hook")
        self.hooked = True

    def __dealloc__(self):
        ql_slot_give(self.slot)  # a slice that an exception left open
        if self.alarm != NULL:
            if self.alarm_ready:
                with nogil:
                    ql_alarm_destroy(self.alarm)
            free(self.alarm)
            self.alarm = NULL
        if self.st != NULL:
            if self.hooked and self.uc != NULL and _engine_alive(self._uc_obj):
                uc_hook_del(self.uc, self.hook)
            free(self.st)
            self.st = NULL

    @property
    def engine_exits(self):
        """True when the engine itself ends slices (patch b), False with the block hook."""
        return self.engine

    property waiting:
        """True while an interrupt is pending and masked."""
        def __get__(self):
            if self.engine:
                return ql_irq_window(self.uc, -1) != 0
            return self.st.waiting
        def __set__(self, bint value):
            if self.engine:
                ql_irq_window(self.uc, 1 if value else 0)
            else:
                self.st.waiting = value

    def skip_once_at(self, uint64_t pc):
        """Let the next block starting at ``pc`` run (it is inside an interrupt shadow).
        The patched engine's window knows the shadow itself: nothing to do there."""
        if not self.engine:
            self.st.skip_pc = pc
            self.st.skip_armed = True

    @property
    def blocks(self):
        """Translation blocks executed so far (counted by the block hook only)."""
        return self.st.blocks

    property vclock_ns:
        """The virtual clock: deterministic guest nanoseconds (only ever moves forward)."""
        def __get__(self):
            return self.st.vclock[0]
        def __set__(self, uint64_t value):
            if value > self.st.vclock[0]:
                self.st.vclock[0] = value

    def restore_vclock(self, uint64_t value):
        """Set the virtual clock to ``value``, backwards too: loading a saved state."""
        self.st.vclock[0] = value

    property ns_per_block:
        """Virtual nanoseconds a translation block costs (the block hook's clock)."""
        def __get__(self):
            return self.st.ns_per_block
        def __set__(self, uint64_t value):
            self.st.ns_per_block = value

    property ns_per_insn:
        """Virtual nanoseconds an instruction costs (the patched engine's clock; 0: off)."""
        def __get__(self):
            return self.insn_ns
        def __set__(self, uint32_t value):
            if self.engine:
                ql_clock_of(self.uc, value)
                self.insn_ns = value

    def charge(self, uint64_t ns):
        """Advance the virtual clock by ``ns`` (an MMIO access's cost)."""
        self.st.vclock[0] += ns

    def vclock_address(self):
        """Address of the virtual clock counter, for the port hooks to charge accesses."""
        return <uintptr_t>self.st.vclock

    def set_block_deadline(self, uint64_t vclock_ns):
        """Stop the engine at the first block once the virtual clock reaches ``vclock_ns``
        (0: no deadline)."""
        self.st.stop_at_block = vclock_ns
        if self.engine:
            self.clock.deadline = vclock_ns if vclock_ns else NO_DEADLINE

    def advance_block_deadline(self, uint64_t vclock_ns):
        """Bring the virtual-clock deadline forward to ``vclock_ns`` if that is sooner."""
        if self.st.stop_at_block == 0 or vclock_ns < self.st.stop_at_block:
            self.set_block_deadline(vclock_ns)

    def begin_slice(self, uint64_t host_ns):
        """The vCPU is about to run a slice that must end once ``time.monotonic_ns()``
        reaches ``host_ns`` (0: no deadline)."""
        self.st.deadline_ns = host_ns
        if not self.engine:
            return
        self.slot = ql_slot_take(self.uc)
        if self.st.signals != _signals_seen:  # a signal before the slot was taken
            self.st.signals = _signals_seen
            ql_request_exit(self.uc, EXIT_SIGNAL)
        with nogil:
            ql_alarm_running(self.alarm, 1, host_ns)

    def end_slice(self):
        """The slice ended: why our exits stopped it (FIRED_* below, 0 if none did,
        HLT included); clears it."""
        cdef int f, bits
        if not self.engine:
            f = self.st.fired
            self.st.fired = 0
            return f
        with nogil:
            ql_alarm_running(self.alarm, 0, 0)
            ql_slot_give(self.slot)
        self.slot = -1
        self.st.signals = _signals_seen
        bits = ql_take_exit(self.uc)
        if ql_halted(self.uc):
            return 0  # HLT ended it; the run loop looks at every source again anyway
        if bits & EXIT_WINDOW:
            return FIRED_WINDOW
        if bits & EXIT_CLOCK:
            return FIRED_BLOCKS
        if bits & EXIT_TIME:
            return FIRED_TIME
        if bits:
            return FIRED_POKE
        return 0

    def advance_deadline(self, uint64_t host_ns):
        """Bring the deadline forward to ``host_ns`` if that is sooner (a timer was armed)."""
        if self.st.deadline_ns == 0 or host_ns < self.st.deadline_ns:
            self.st.deadline_ns = host_ns
        if self.engine:
            with nogil:
                ql_alarm_set(self.alarm, host_ns, 1)

    def poke(self):
        """From any thread: end the current slice at the next block (or the next slice
        before its first instruction)."""
        if self.engine:
            with nogil:
                ql_alarm_poke(self.alarm)
        else:
            self.st.poke = 1

    def stopped_on_hlt(self):
        """After a slice none of our exits ended: did HLT end it?  The patched engine
        knows; with the block hook, None (the caller looks at the code)."""
        if self.engine:
            return bool(ql_halted(self.uc))
        return None

    @property
    def alarms_fired(self):
        """Real-time deadlines the alarm thread ended slices for (patched engine)."""
        return self.alarm.fired


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
    st.vclock[0] += st.ns_per_block
    if st.poke or st.signals != _signals_seen:
        st.poke = 0
        st.signals = _signals_seen
        st.fired = 4
        uc_emu_stop(uc)
        return
    if st.stop_at_block and st.vclock[0] >= st.stop_at_block:
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
