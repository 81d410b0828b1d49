# cython: boundscheck=False, wraparound=False
"""Block and edge coverage recorded in C, AFL's scheme, for fuzzers and tests.

A Unicorn block hook (added only while a recorder exists) runs for every
translation block the guest executes.  It hashes the block's linear address
into ``cur`` (``map_size`` must be a power of two), bumps the edge counter
``bitmap[cur ^ prev]`` (saturating at 255), then sets ``prev = cur >> 1``, so
A->B and B->A count apart and a tight loop does not erase its own edge: the
classic AFL edge map.  Optionally it also adds the block's address to a set
(an open-addressing hash table in C, grown by doubling up to ``max_blocks``).

Cost: one C call per executed block (no Python, no GIL), about what the vCPU's
own block hook costs; the block set adds a probe per block.  Nothing at all
once :meth:`EdgeCoverage.close` removed the hook.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from mmu_core.includes.unicorn cimport uc_engine, uc_hook, uc_hook_add_t, uc_hook_del_t

import ctypes

from unicorn.unicorn_py3 import unicorn as _ucbinding

cdef enum:
    UC_HOOK_BLOCK = 1 << 3


cdef uintptr_t _fn(name) except 0:
    return <uintptr_t>ctypes.cast(getattr(_ucbinding.uclib, name), ctypes.c_void_p).value


cdef uc_hook_add_t uc_hook_add = <uc_hook_add_t>_fn("uc_hook_add")
cdef uc_hook_del_t uc_hook_del = <uc_hook_del_t>_fn("uc_hook_del")

# AFL's hit-count classes: a count moving into a new class is new behaviour.
cdef uint8_t BUCKET[256]
BUCKET[0] = 0
BUCKET[1] = 1
BUCKET[2] = 2
BUCKET[3] = 4
for _i in range(4, 8):
    BUCKET[_i] = 8
for _i in range(8, 16):
    BUCKET[_i] = 16
for _i in range(16, 32):
    BUCKET[_i] = 32
for _i in range(32, 128):
    BUCKET[_i] = 64
for _i in range(128, 256):
    BUCKET[_i] = 128


cdef struct CovState:
    uint8_t *map
    uint64_t mask
    uint64_t prev
    uint64_t executed
    bint record_blocks
    uint64_t *set           # block addresses + 1 (0 marks a free slot)
    uint64_t set_cap        # a power of two
    uint64_t set_used
    uint64_t max_blocks
    uint64_t dropped        # distinct blocks not recorded: the set was full


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    # MurmurHash3's 64-bit finaliser: neighbouring addresses land far apart.
    x ^= x >> 33
    x *= 0xFF51AFD7ED558CCDULL
    x ^= x >> 33
    x *= 0xC4CEB9FE1A85EC53ULL
    x ^= x >> 33
    return x


cdef bint _set_insert(uint64_t *table, uint64_t cap, uint64_t key) noexcept nogil:
    """Insert ``key`` (non-zero); True if it was not there."""
    cdef uint64_t i = _mix(key) & (cap - 1)
    while table[i] != 0:
        if table[i] == key:
            return False
        i = (i + 1) & (cap - 1)
    table[i] = key
    return True


cdef bint _set_contains(CovState *st, uint64_t key) noexcept nogil:
    cdef uint64_t i = _mix(key) & (st.set_cap - 1)
    while st.set[i] != 0:
        if st.set[i] == key:
            return True
        i = (i + 1) & (st.set_cap - 1)
    return False


cdef void _set_grow(CovState *st) noexcept nogil:
    cdef uint64_t cap = st.set_cap * 2
    cdef uint64_t *table = <uint64_t *>calloc(cap, sizeof(uint64_t))
    cdef uint64_t i
    if table == NULL:
        return  # keep the old table; later blocks may be dropped
    for i in range(st.set_cap):
        if st.set[i] != 0:
            _set_insert(table, cap, st.set[i])
    free(st.set)
    st.set = table
    st.set_cap = cap


cdef void _hook_block(uc_engine *uc, uint64_t address, uint32_t size,
                      void *user_data) noexcept nogil:
    cdef CovState *st = <CovState *>user_data
    cdef uint64_t cur = _mix(address) & st.mask
    cdef uint8_t *slot = &st.map[cur ^ st.prev]
    if slot[0] != 255:
        slot[0] += 1
    st.prev = cur >> 1
    st.executed += 1
    if st.record_blocks:
        if st.set_used * 2 >= st.set_cap and st.set_cap < st.max_blocks * 2:
            _set_grow(st)
        if st.set_used * 4 >= st.set_cap * 3:  # full enough that probes would crawl
            if not _set_contains(st, address + 1):
                st.dropped += 1
        elif _set_insert(st.set, st.set_cap, address + 1):
            st.set_used += 1


cdef bint _engine_alive(uc_obj) noexcept:
    try:
        return bool(uc_obj._Uc__finalizer.alive)
    except Exception:
        return False


cdef class EdgeCoverage:
    """An AFL-style edge bitmap and a set of executed blocks for one engine.

    Made by ``Machine.coverage()``; the API a fuzzer builds on:

    - :attr:`bitmap`: the edge counters as a writable memoryview of ``map_size``
      bytes (hash of ``prev`` and current block; a count saturates at 255);
    - :meth:`clear`: zero the counters and the previous-block register (start of
      a test case); ``blocks=True`` also empties the block set;
    - :meth:`novel`: AFL's "new bits" check against a virgin map that the caller
      keeps (a ``bytearray`` of ``map_size`` bytes, initially all 0xFF);
    - :meth:`blocks`: the linear addresses of the blocks executed (when
      ``record_blocks``); :attr:`executed`: block executions counted;
    - :meth:`close`: remove the hook (cost back to nothing).
    """

    cdef CovState *st
    cdef uc_engine *uc
    cdef uc_hook hook
    cdef bint hooked
    cdef object _uc_obj
    cdef readonly uint64_t map_size

    def __cinit__(self):
        self.st = <CovState *>calloc(1, sizeof(CovState))
        if self.st == NULL:
            raise MemoryError()

    def __init__(self, uc, uint64_t map_size=65536, bint record_blocks=True,
                 uint64_t max_blocks=1 << 22):
        if map_size < 256 or map_size > (1 << 24) or map_size & (map_size - 1):
            raise ValueError(f"map_size must be a power of two from 256 to 16 MiB, "
                             f"not {map_size}")
        if max_blocks < 16:
            raise ValueError(f"max_blocks must be at least 16, not {max_blocks}")
        self.map_size = map_size
        self.st.map = <uint8_t *>calloc(map_size, 1)
        self.st.set_cap = 1024
        self.st.set = <uint64_t *>calloc(self.st.set_cap, sizeof(uint64_t))
        if self.st.map == NULL or self.st.set == NULL:
            raise MemoryError()
        self.st.mask = map_size - 1
        self.st.record_blocks = record_blocks
        self.st.max_blocks = max_blocks
        self._uc_obj = uc
        self.uc = <uc_engine *><uintptr_t>uc._uch.value
        if uc_hook_add(self.uc, &self.hook, UC_HOOK_BLOCK, <void *>_hook_block,
                       <void *>self.st, 1, 0):
            raise RuntimeError("cannot add the coverage block hook")
        self.hooked = True

    def __dealloc__(self):
        if self.st != NULL:
            if self.hooked and self.uc != NULL and _engine_alive(self._uc_obj):
                uc_hook_del(self.uc, self.hook)
            free(self.st.map)
            free(self.st.set)
            free(self.st)
            self.st = NULL

    def close(self):
        """Stop recording: the hook is removed (what was recorded stays readable)."""
        if self.hooked:
            if _engine_alive(self._uc_obj):
                uc_hook_del(self.uc, self.hook)
            self.hooked = False

    @property
    def active(self):
        """True until :meth:`close`."""
        return bool(self.hooked)

    @property
    def bitmap(self):
        """The edge counters: a writable memoryview of ``map_size`` bytes."""
        return memoryview(<uint8_t[:self.map_size]>self.st.map)

    @property
    def executed(self):
        """Translation blocks executed while recording."""
        return self.st.executed

    @property
    def dropped(self):
        """Distinct blocks left out of :meth:`blocks` because the set was full."""
        return self.st.dropped

    def clear(self, bint blocks=False):
        """Zero the edge counters and the previous block (and the block set, with
        ``blocks``); :attr:`executed` restarts from 0."""
        memset(self.st.map, 0, self.map_size)
        self.st.prev = 0
        self.st.executed = 0
        if blocks:
            memset(self.st.set, 0, self.st.set_cap * sizeof(uint64_t))
            self.st.set_used = 0
            self.st.dropped = 0

    def edge_count(self):
        """How many edge counters are non-zero."""
        cdef uint64_t i, n = 0
        for i in range(self.map_size):
            if self.st.map[i]:
                n += 1
        return n

    def hits(self):
        """The non-zero edge counters as ``{edge index: count}`` (a C scan of the map:
        a fuzzer reads this after every input)."""
        cdef uint64_t w, i, word
        out = {}
        for w in range(self.map_size // 8):  # a power of two of at least 256: whole words
            memcpy(&word, self.st.map + 8 * w, 8)
            if word:  # most are zero
                for i in range(8 * w, 8 * w + 8):
                    if self.st.map[i]:
                        out[i] = self.st.map[i]
        return out

    def novel(self, bytearray virgin not None):
        """AFL's new-coverage test: for every counter whose hit-count class
        (1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+) is still set in ``virgin``,
        clear that bit in ``virgin`` and count it.  Returns the number of new
        (edge, class) pairs; 0 means this run showed nothing new.  ``virgin``
        starts as ``bytearray(b"\\xff" * map_size)`` and is the fuzzer's to keep."""
        cdef uint64_t i, n = 0
        cdef uint8_t bucket
        cdef unsigned char[:] v = virgin
        if <uint64_t>len(virgin) != self.map_size:
            raise ValueError(f"virgin map must have {self.map_size} bytes, not {len(virgin)}")
        for i in range(self.map_size):
            if self.st.map[i]:
                bucket = BUCKET[self.st.map[i]]
                if v[i] & bucket:
                    v[i] &= ~bucket
                    n += 1
        return n

    def blocks(self):
        """The linear addresses of the blocks executed while recording, as a set."""
        cdef uint64_t i
        out = set()
        for i in range(self.st.set_cap):
            if self.st.set[i]:
                out.add(self.st.set[i] - 1)
        return out
