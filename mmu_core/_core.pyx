# cython: boundscheck=False, wraparound=False, cdivision=True
"""C-level plumbing between Unicorn and qemu_lite.

``Core`` owns guest RAM and the ROM buffers, maps them into the engine, and
installs the hooks that fire on hot paths: TLB fill, port IN/OUT and
interrupts.  Hooks touch only C data unless a Python device asked for the
access; a hook that needs Python takes the GIL, records the first exception
and stops the engine, and the caller re-raises it after ``emu_start``.
"""

import ctypes

from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_WRITE, PyBUF_READ
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcmp, memcpy, memset
from libc.stdlib cimport calloc, free, realloc
from cpython.ref cimport PyObject
from cpython.bytearray cimport PyByteArray_AS_STRING
from posix.mman cimport (mmap, munmap, madvise, PROT_READ, PROT_WRITE, MAP_PRIVATE,
                         MAP_ANONYMOUS, MAP_FAILED, MADV_DONTNEED)

from mmu_core.includes.unicorn cimport *

import unicorn
from unicorn import x86_const as _x86
from unicorn.unicorn_py3 import unicorn as _ucbinding

include "includes/uclib.pxi"


cdef uc_hook_add_t uc_hook_add = <uc_hook_add_t>_fn("uc_hook_add")
cdef uc_hook_del_t uc_hook_del = <uc_hook_del_t>_fn("uc_hook_del")
cdef uc_emu_stop_t uc_emu_stop = <uc_emu_stop_t>_fn("uc_emu_stop")
cdef uc_mem_map_ptr_t uc_mem_map_ptr = <uc_mem_map_ptr_t>_fn("uc_mem_map_ptr")
cdef uc_mem_unmap_t uc_mem_unmap = <uc_mem_unmap_t>_fn("uc_mem_unmap")
cdef uc_context_size_t uc_context_size = <uc_context_size_t>_fn("uc_context_size")
cdef uc_context_alloc_t uc_context_alloc = <uc_context_alloc_t>_fn("uc_context_alloc")
cdef uc_context_save_t uc_context_save = <uc_context_save_t>_fn("uc_context_save")
cdef uc_context_restore_t uc_context_restore = <uc_context_restore_t>_fn("uc_context_restore")
cdef uc_context_free_t uc_context_free = <uc_context_free_t>_fn("uc_context_free")
cdef uc_reg_read_t uc_reg_read = <uc_reg_read_t>_fn("uc_reg_read")
cdef uc_reg_write_t uc_reg_write = <uc_reg_write_t>_fn("uc_reg_write")
cdef uc_mem_write_t uc_mem_write = <uc_mem_write_t>_fn("uc_mem_write")
cdef uc_reg_read_batch_t uc_reg_read_batch = <uc_reg_read_batch_t>_fn("uc_reg_read_batch")
cdef uc_ctl_t uc_ctl = <uc_ctl_t>_fn("uc_ctl")
cdef uc_mmio_map_t uc_mmio_map = <uc_mmio_map_t>_fn("uc_mmio_map")


cdef uintptr_t _fn_opt(name) noexcept:
    """A patched engine's entry point, or 0 on the stock library."""
    try:
        return _fn(name)
    except Exception:
        return 0


cdef uc_ql_tlb_ctx_config_t uc_ql_tlb_ctx_config = \
    <uc_ql_tlb_ctx_config_t>_fn_opt("uc_ql_tlb_ctx_config")
cdef uc_ql_tlb_ctx_drop_t uc_ql_tlb_ctx_drop = <uc_ql_tlb_ctx_drop_t>_fn_opt("uc_ql_tlb_ctx_drop")
cdef uc_ql_tlb_ctx_stats_t uc_ql_tlb_ctx_stats = \
    <uc_ql_tlb_ctx_stats_t>_fn_opt("uc_ql_tlb_ctx_stats")
cdef uc_ql_cpu_state_t uc_ql_cpu_state = <uc_ql_cpu_state_t>_fn_opt("uc_ql_cpu_state")
cdef uc_ql_tlb_global_stats_t uc_ql_tlb_global_stats = \
    <uc_ql_tlb_global_stats_t>_fn_opt("uc_ql_tlb_global_stats")
cdef uc_ql_tlb_flush_page_t uc_ql_tlb_flush_page = \
    <uc_ql_tlb_flush_page_t>_fn_opt("uc_ql_tlb_flush_page")
cdef uc_ql_host_page_has_code_t uc_ql_host_page_has_code = \
    <uc_ql_host_page_has_code_t>_fn_opt("uc_ql_host_page_has_code")

for _name, _ours in (("UC_X86_INS_IN", UC_X86_INS_IN), ("UC_X86_INS_OUT", UC_X86_INS_OUT),
                     ("UC_X86_INS_SYSCALL", UC_X86_INS_SYSCALL),
                     ("UC_X86_INS_SYSENTER", UC_X86_INS_SYSENTER),
                     ("UC_X86_INS_CPUID", UC_X86_INS_CPUID)):
    if getattr(_x86, _name) != _ours:
        raise ImportError(f"unicorn {unicorn.__version__}: {_name} differs from mmu_core's value")

# Why emu_start returned (bits of Core.take_stop()'s flags).
cdef enum:
    C_STOP_INTERRUPT = 1   # the guest raised an exception or executed INT n
    C_STOP_REQUEST = 2     # a device or the embedding program asked to stop
    C_STOP_ERROR = 4       # a Python callback raised; see Core.take_error()
    C_STOP_KICK = 8        # the vCPU hooks' exits: a deadline, an interrupt window, a poke
    C_STOP_SYSCALL = 16    # SYSCALL or SYSENTER executed (the vCPU does its effect)
    C_STOP_FAULT = 32      # the TLB fill refused an access (guest page fault)
    C_STOP_INVALID = 64    # invalid opcode: deliver #UD at the current RIP
    C_STOP_SYSENTER = 128  # SYSENTER executed

STOP_INTERRUPT = C_STOP_INTERRUPT
STOP_REQUEST = C_STOP_REQUEST
STOP_ERROR = C_STOP_ERROR
STOP_KICK = C_STOP_KICK
STOP_SYSCALL = C_STOP_SYSCALL
STOP_FAULT = C_STOP_FAULT
STOP_INVALID = C_STOP_INVALID
STOP_SYSENTER = C_STOP_SYSENTER

cdef enum:
    TLB_NATIVE_C = 0
    TLB_IDENTITY_C = 1
    TLB_CACHED_C = 2
    TLB_NAIVE_C = 3

TLB_NATIVE = TLB_NATIVE_C       # Unicorn's own MMU (UC_TLB_CPU)
TLB_IDENTITY = TLB_IDENTITY_C   # UC_TLB_VIRTUAL, linear == physical (no guest paging)
TLB_CACHED = TLB_CACHED_C       # shadow pages cached by gfn and role; CR3 loads reuse roots
TLB_NAIVE = TLB_NAIVE_C         # the same shadow MMU, every page dropped at each CR3 load

DEFAULT_MAX_SHADOW_PAGES = 4096
DEFAULT_TLB_CONTEXTS = 32      # parked address-space TLBs (patched engine; 0: off)

include "mmu_defs.pxi"

PAGE_SIZE = 4096
cdef uint64_t ROM_SINK_BASE = 1ULL << 41  # far above RAM, beside the page-table alias
cdef uint64_t ROM_SINK_SLOT = 0x1000000  # 16 MiB: the largest firmware image
cdef uint64_t SHADOW_SINK_BASE = (1ULL << 41) + 4 * 0x1000000  # after the four ROM sinks
cdef uint64_t PAM_BASE = 0xC0000
cdef uint64_t PAM_SEGMENT = 0x4000
cdef enum:
    PAM_RE = 1
    PAM_WE = 2
cdef uint64_t A20_BIT = 1 << 20


cdef struct PioWindow:
    # A device's data buffer the hooks may stream through without Python:
    # accesses to ``port`` move ``pos`` while pos + size < end; the access that
    # would reach ``end`` (and anything else) goes to the device in Python.
    bint open
    bint write
    uint32_t port
    uint8_t *buf
    uint64_t pos
    uint64_t end


cdef struct RomWindow:
    # A read-only region (BIOS ROM).  With UC_TLB_VIRTUAL the fill's permissions
    # are all Unicorn checks, so writes to a ROM frame are sent to a sink: an
    # MMIO region that reads the ROM's bytes and drops stores, as a PC does.
    uint64_t base
    uint64_t size
    uint8_t *data


include "devfast_defs.pxi"


cdef struct MmioSlot:
    # One device's MMIO range: the C callbacks' user data.  Freed with the Core.
    void *st                 # the CoreState (declared below)
    int handler              # index in Core._mmio_handlers
    uint64_t base            # physical address of offset 0 (for Core.mmio_tracer)
    bint vga                 # the VGA window: stores (and some loads) in C (devfast.pxi)
    uint64_t access_ns       # deterministic guest time per access
    void *next               # the Core's list of slots, freed in __dealloc__


cdef struct CoreState:
    # Everything a hook reads without the GIL.  ``owner`` is the Core, used
    # only by hooks that call into Python.
    uc_engine *uc
    PyObject *owner
    uint8_t *ram
    uint64_t ram_size
    uint16_t port_slot[65536]
    uint32_t port_base[65536]
    uint64_t unclaimed_port_reads
    uint64_t unclaimed_port_writes
    bint log_unclaimed
    bint trace_ports        # call Core.port_tracer after every port access
    bint trace_mmio         # call Core.mmio_tracer after every device-MMIO access
    int stop_flags
    # Stop requests from Python (any thread) land here, never in stop_flags:
    # the hooks update stop_flags without the GIL, so a read-modify-write from
    # another thread could lose their bits.
    int requested_flags
    int intno
    uint64_t fills
    bint a20_enabled
    # ROM windows and the write sink behind them
    RomWindow roms[4]
    int rom_count
    uint64_t low_rom_base    # where the BIOS window below 1 MiB starts (0xF0000 or lower)
    # i440FX PAM attribute (bit 0 read from RAM, bit 1 write to RAM) of each 16 KiB
    # segment of 0xC0000-0xFFFFF; it matters only inside the low BIOS window.
    uint8_t pam[16]
    RomWindow shadow_sink    # RAM of the window seen read-only: stores are dropped
    uint64_t rom_writes_ignored
    # PIO data windows: port accesses served from a device's buffer in C
    PioWindow pio[4]
    uint64_t pio_fast_accesses
    # Device registers answered in C (devfast.pxi); ``uart_pending``: a UART holds
    # bytes that must reach its device before any other Python code runs.
    UartFast uart[UART_FAST_MAX]
    bint uart_pending
    VgaFast vga
    uint64_t dev_fast_accesses
    # Posted port writes: ports whose writes may reach their device later (in order,
    # before any other Python code runs), queued here.
    uint8_t port_posted[65536]
    PostedWrite posted[POSTED_MAX]
    uint32_t posted_len
    # Deterministic time: every port access adds port_ns to *io_clock
    uint64_t *io_clock
    uint64_t port_ns
    # The first CPU event of a slice, captured in the hook before anything
    # else in the slice can overwrite QEMU's copy.
    void *ev_ctx
    int ev_off_error_code
    int ev_off_is_int
    int ev_off_next_eip
    int ev_cr2_reg
    uint32_t ev_error_code
    uint32_t ev_is_int
    uint64_t ev_next_eip
    uint64_t ev_cr2
    # Dirty-page log for snapshots (docs/SNAPSHOTS.md): while ``dirty_log`` is on, a
    # frame not yet in the log is mapped without WRITE, and the first store to it
    # (its write fill), an alias store, a walker A/D update or a host write adds it.
    MmioSlot *mmio_slots     # every map_mmio range's callback data
    bint dirty_log
    uint8_t *dirty           # one byte per RAM frame
    uint32_t *dirty_list     # the frames logged, in order
    uint64_t dirty_count
    # The VGA's memory has a log of its own under the same switch, in 4 KiB pages of
    # VRAM: the C window path, the device's Python path (vram_log_mark) and write
    # fills of the framebuffer while it is mapped at lfb_base (lfb_size 0: nowhere).
    uint8_t *vram_dirty      # one byte per VRAM page (NULL until vga_attach)
    uint32_t *vram_dirty_list
    uint64_t vram_dirty_count
    uint64_t lfb_base
    uint64_t lfb_size
    # The CPU state read in place by the fill (patched engine), else NULL:
    # offsets from mmu_core.cpu_layout, checked against uc_reg_read.
    uint8_t *cpu
    int off_cr0
    int off_cr3
    int off_cr4
    int off_efer
    int off_hflags
    int off_eflags
    # INT n / SYSCALL delivered in C (fastevent.pxi): on only with every offset checked
    bint fe_ok               # the offsets below were confirmed on this engine
    bint fe_on               # and the vCPU allows it (no syscall observer; not forced off)
    int ctx_shift            # bytes before the CPU state's copy in a saved context
    int fe_off_eip
    int fe_off_cc_src
    int fe_off_cc_op
    int fe_off_df
    int fe_off_segs
    int fe_off_old_exception
    int fe_off_is_int
    int fe_off_next_eip
    uint64_t fe_ints         # software interrupts delivered in C
    uint64_t fe_syscalls     # SYSCALLs done in C
    Mmu mmu


cdef class Core:
    """Guest memory and C-level hooks for one Unicorn x86 engine.

    ``uc`` is a ``unicorn.Uc`` object; ``ram_size`` bytes of zeroed guest RAM
    are allocated here and mapped at physical address 0 (except the BIOS
    window at 0xF0000-0xFFFFF, which :meth:`map_rom` fills).
    """

    cdef CoreState *st
    cdef object _uc_obj
    cdef list _roms
    cdef uc_hook _hooks[16]
    cdef int _nhooks
    cdef list _port_handlers
    cdef list _mmio_handlers
    cdef public object unclaimed_port_log
    cdef public object port_tracer
    cdef public object mmio_tracer
    cdef object _error
    cdef object _cpuid_handler
    cdef readonly int tlb_mode
    cdef list _pio_buffers
    cdef list _uart_sinks
    cdef object _vga_vram
    cdef object _io_clock_owner
    cdef void *_ctx
    cdef size_t _ctx_size
    cdef uint64_t _ctx_base[8]    # engine context counters at reset_mmu_stats
    cdef uint64_t _global_base[3] # engine global-page counters at reset_mmu_stats
    cdef object __weakref__  # devices' on_change hooks must not keep the machine alive
    cdef object _ram_owner   # the Core whose RAM this one maps (ram_from), kept alive
    cdef bint _ram_borrowed  # C copy of "_ram_owner is not None" for __dealloc__

    def __cinit__(self):
        self.st = <CoreState *>calloc(1, sizeof(CoreState))
        if self.st == NULL:
            raise MemoryError()
        self._nhooks = 0

    def __init__(self, uc, uint64_t ram_size, int tlb_mode=0, Core ram_from=None):
        """``ram_from``: map that Core's guest RAM instead of allocating it (another
        vCPU's engine of the same machine, ``-accel tcg,thread=multi``)."""
        if ram_size < 2 * 1024 * 1024 or ram_size % PAGE_SIZE:
            raise ValueError("RAM size must be a multiple of 4 KiB and at least 2 MiB")
        if ram_size > 0xE0000000:
            raise ValueError("RAM above 3.5 GiB is not supported yet")
        cdef CoreState *st = self.st
        self._uc_obj = uc
        st.uc = <uc_engine *><uintptr_t>uc._uch.value
        st.owner = <PyObject *>self
        st.ram_size = ram_size
        st.intno = -1
        st.a20_enabled = True
        st.low_rom_base = 0xF0000
        self._roms = []
        self._port_handlers = [None]
        self._mmio_handlers = []
        self._pio_buffers = [None, None, None, None]
        self._uart_sinks = [None] * UART_FAST_MAX
        self.unclaimed_port_log = None
        self.port_tracer = None
        self.mmio_tracer = None
        self.tlb_mode = tlb_mode
        cdef void *p
        if ram_from is not None:
            if ram_from.st.ram_size != ram_size:
                raise ValueError("ram_from: a Core with another RAM size")
            p = ram_from.st.ram
            self._ram_owner = ram_from
            self._ram_borrowed = True
        else:
            p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            if p == MAP_FAILED:
                raise MemoryError(f"cannot allocate {ram_size} bytes of guest RAM")
        st.ram = <uint8_t *>p
        st.dirty = <uint8_t *>calloc(ram_size >> 12, 1)
        st.dirty_list = <uint32_t *>calloc(ram_size >> 12, sizeof(uint32_t))
        if st.dirty == NULL or st.dirty_list == NULL:
            raise MemoryError("cannot allocate the dirty-page log")
        # Conventional memory and the adapter area up to the BIOS window.
        _check(uc_mem_map_ptr(st.uc, 0, 0xF0000, 7, st.ram))
        _check(uc_mem_map_ptr(st.uc, 0x100000, ram_size - 0x100000, 7, st.ram + 0x100000))
        if tlb_mode not in (TLB_NATIVE_C, TLB_IDENTITY_C, TLB_CACHED_C, TLB_NAIVE_C):
            raise ValueError(f"unknown TLB mode {tlb_mode}")
        st.mmu.mode = tlb_mode
        mmu_init(st, DEFAULT_MAX_SHADOW_PAGES)
        self._attach_cpu_state()
        if tlb_mode == TLB_IDENTITY_C:
            uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
            self._add_hook(UC_HOOK_TLB_FILL, <void *>_hook_tlb_fill_identity)
        elif tlb_mode in (TLB_CACHED_C, TLB_NAIVE_C):
            # The page-table write alias: all of RAM again, far above MAXPHYADDR.
            _check(uc_mmio_map(st.uc, ALIAS_BASE, ram_size, _alias_read, <void *>st,
                               _alias_write, <void *>st))
            uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
            self._add_hook(UC_HOOK_TLB_FILL, <void *>_hook_tlb_fill_mmu)
            st.mmu.unsync_on = True   # measured: README, "Unsync leaf tables"
            st.mmu.data_exec = uc_ql_host_page_has_code != NULL
            if tlb_mode == TLB_CACHED_C:
                st.mmu.global_want = True
                self.set_tlb_contexts(DEFAULT_TLB_CONTEXTS)
        self._add_hook(UC_HOOK_INSN, <void *>_hook_in, UC_X86_INS_IN)
        self._add_hook(UC_HOOK_INSN, <void *>_hook_out, UC_X86_INS_OUT)
        self._add_hook(UC_HOOK_INTR, <void *>_hook_intr)
        self._add_hook(UC_HOOK_INSN_INVALID, <void *>_hook_invalid)
        self._add_hook(UC_HOOK_INSN, <void *>_hook_syscall, UC_X86_INS_SYSCALL)
        self._add_hook(UC_HOOK_INSN, <void *>_hook_sysenter, UC_X86_INS_SYSENTER)

    def __dealloc__(self):
        if self.st == NULL:
            return
        self.st.mmu.ctx_on = False
        # The engine's hooks point at our state and its RAM is ours, so the
        # engine goes down with us.  Closing it through the binding's own
        # finalizer is idempotent: when garbage collection already closed it
        # (a cycle cleared in any order), nothing is called on a dead handle.
        _close_engine(self._uc_obj)
        if self._ctx != NULL:
            uc_context_free(self._ctx)
            self._ctx = NULL
        if self.st.ev_ctx != NULL:
            uc_context_free(self.st.ev_ctx)
            self.st.ev_ctx = NULL
        mmu_free(&self.st.mmu)
        cdef MmioSlot *slot = self.st.mmio_slots
        cdef MmioSlot *next_slot
        while slot != NULL:  # C data only: __dealloc__ may run after Python fields are gone
            next_slot = <MmioSlot *>slot.next
            free(slot)
            slot = next_slot
        free(self.st.dirty)
        free(self.st.dirty_list)
        free(self.st.vram_dirty)
        free(self.st.vram_dirty_list)
        if self.st.ram != NULL and not self._ram_borrowed:
            munmap(self.st.ram, self.st.ram_size)
        free(self.st)
        self.st = NULL

    def release_ram(self):
        """Give the guest RAM's pages back to the host now; it reads as zeros after.

        The mapping itself stays (the engine and the C paths keep pointers into it) and
        goes with the Core, which garbage collection may free much later: the machine's
        objects hold each other in cycles."""
        if self.st.ram != NULL and not self._ram_borrowed:
            madvise(self.st.ram, self.st.ram_size, MADV_DONTNEED)

    cdef _attach_cpu_state(self):
        """Read the paging registers in place when the engine allows it (patch i)."""
        cdef CoreState *st = self.st
        cdef uint64_t v[4]
        cdef uint64_t d[4]
        cdef ql_uc_x86_msr efer
        if uc_ql_cpu_state == NULL:
            return
        from mmu_core import cpu_layout
        layout = cpu_layout.discover()
        if layout is None:
            return
        cpu = <uint8_t *>uc_ql_cpu_state(st.uc)
        if cpu == NULL:
            return
        # The offsets count from the start of a saved context, whose header
        # precedes the copy of the CPU state: find where the copy starts.
        shift = _context_header_size(st.uc, cpu)
        if shift < 0:
            return
        st.off_cr0, st.off_cr3 = layout["cr0"] - shift, layout["cr3"] - shift
        st.off_cr4, st.off_efer = layout["cr4"] - shift, layout["efer"] - shift
        st.off_hflags, st.off_eflags = layout["hflags"] - shift, layout["eflags"] - shift
        uc_reg_read(st.uc, REG_CR0, &v[0])
        uc_reg_read(st.uc, REG_CR3, &v[1])
        uc_reg_read(st.uc, REG_CR4, &v[2])
        efer.rid = MSR_EFER
        efer.value = 0
        uc_reg_read(st.uc, REG_MSR, &efer)
        v[3] = efer.value
        memcpy(&d[0], cpu + st.off_cr0, 8)
        memcpy(&d[1], cpu + st.off_cr3, 8)
        memcpy(&d[2], cpu + st.off_cr4, 8)
        memcpy(&d[3], cpu + st.off_efer, 8)
        if memcmp(v, d, sizeof(v)) == 0:
            st.cpu = cpu
            st.ctx_shift = shift

    @property
    def reads_cpu_state_directly(self):
        """True when the fill reads CR0/CR3/CR4/EFER/CPL/AC in place (patched engine)."""
        return self.st.cpu != NULL

    def set_tlb_contexts(self, int n):
        """Keep up to ``n`` parked address-space TLBs (patch i; 0 turns them off).

        Only ``cached`` mode on the patched engine has them; elsewhere this is a
        no-op and :attr:`tlb_contexts` stays 0."""
        cdef CoreState *st = self.st
        if n < 0 or n > 4096:
            raise ValueError("TLB contexts: 0 to 4096")
        if uc_ql_tlb_ctx_config == NULL or st.mmu.mode != TLB_CACHED_C or st.cpu == NULL:
            return
        st.mmu.ctx_on = False
        st.mmu.cur_tag = 0
        _check(uc_ql_tlb_ctx_config(st.uc, n, _ctx_tag_cb, <void *>st))
        st.mmu.ctx_max = n
        st.mmu.ctx_on = n > 0
        self._update_global_pages()

    def set_global_pages(self, bint on):
        """Keep global translations (PTE.G under CR4.PGE) across CR3 loads (patch k).

        Needs TLB contexts (:meth:`set_tlb_contexts`): without them every CR3 load
        flushes Unicorn's whole TLB.  On by default where available."""
        self.st.mmu.global_want = on
        self._update_global_pages()

    cdef _update_global_pages(self):
        cdef Mmu *mmu = &self.st.mmu
        cdef bint was = mmu.global_on
        mmu.global_on = mmu.global_want and mmu.ctx_on and uc_ql_tlb_global_stats != NULL
        if was and not mmu.global_on:
            flush_unicorn_tlb(self.st)   # no global entry may outlive the next CR3 load

    @property
    def global_pages(self):
        """True when global translations survive CR3 loads (see :meth:`set_global_pages`)."""
        return bool(self.st.mmu.global_on)

    def set_pte_prefetch(self, int n):
        """Shadow up to ``n`` neighbouring leaf gptes at each shadow miss (KVM's
        PTE_PREFETCH_NUM; a power of two up to 64, 0 or 1 turns it off)."""
        if n < 0 or n > 64 or n & (n - 1):
            raise ValueError("PTE prefetch: 0 or a power of two up to 64")
        self.st.mmu.prefetch = n if n > 1 else 0

    @property
    def pte_prefetch(self):
        return self.st.mmu.prefetch

    def set_unsync(self, bint on):
        """Leave guest leaf page tables writable once written (KVM's unsync shadow pages)
        instead of trapping every PTE store; they are resynced at the next CR3 load, and
        a fill re-reads an unsync entry before it uses it (so INVLPG needs nothing more).
        Turning it off resyncs and write-protects every unsync table now."""
        if not on and self.st.mmu.n_unsync:
            resync_all(self.st)
        self.st.mmu.unsync_on = on and self.st.mmu.mode in (TLB_CACHED_C, TLB_NAIVE_C)

    @property
    def unsync(self):
        """True when written leaf tables are left unsync (see :meth:`set_unsync`)."""
        return bool(self.st.mmu.unsync_on)

    def resync_mmu(self):
        """Resync every unsync leaf table and write-protect it again, as a CR3 load does."""
        resync_all(self.st)

    def is_unsync(self, uint64_t gfn):
        """Is guest frame ``gfn`` an unsync leaf table (its stores go to RAM untrapped)?"""
        return gfn < self.st.mmu.nframes and bool(self.st.mmu.frame_flags[gfn] & FRAME_UNSYNC)

    @property
    def tlb_contexts(self):
        """The bound on parked address-space TLBs (0: every CR3 load flushes)."""
        return self.st.mmu.ctx_max if self.st.mmu.ctx_on else 0

    cdef _add_hook(self, int kind, void *cb, int insn=-1):
        cdef int err
        if self._nhooks >= 16:
            raise RuntimeError("too many hooks")
        if insn >= 0:
            err = uc_hook_add(self.st.uc, &self._hooks[self._nhooks], kind, cb, <void *>self.st,
                              1, 0, insn)
        else:
            err = uc_hook_add(self.st.uc, &self._hooks[self._nhooks], kind, cb, <void *>self.st,
                              1, 0)
        _check(err)
        self._nhooks += 1

    # -- memory ---------------------------------------------------------------

    @property
    def ram_size(self):
        return self.st.ram_size

    @property
    def ram(self):
        """A writable memoryview of guest RAM (physical address = index)."""
        return PyMemoryView_FromMemory(<char *>self.st.ram, self.st.ram_size, PyBUF_WRITE)

    def map_rom(self, uint64_t address, data):
        """Map ``data`` (a multiple of 4 KiB) read-only at ``address``.

        The same bytes may be mapped at several addresses (the BIOS appears
        below 1 MiB and below 4 GiB)."""
        buf = bytearray(data)
        if len(buf) == 0 or len(buf) % PAGE_SIZE or len(buf) > ROM_SINK_SLOT:
            raise ValueError("ROM size must be a non-zero multiple of 4 KiB, at most 16 MiB")
        if address < 0x100000 and address + len(buf) == 0x100000:
            # A BIOS window reaching 1 MiB from below: the caller unmapped that RAM.
            self.st.low_rom_base = min(self.st.low_rom_base, address)
        if self.st.rom_count >= 4:
            raise ValueError("at most 4 ROM windows")
        cdef char *ptr = buf
        _check(uc_mem_map_ptr(self.st.uc, address, len(buf), UC_PROT_READ | UC_PROT_EXEC, ptr))
        cdef RomWindow *rom = &self.st.roms[self.st.rom_count]
        rom.base = address
        rom.size = len(buf)
        rom.data = <uint8_t *>ptr
        _check(uc_mmio_map(self.st.uc, ROM_SINK_BASE + self.st.rom_count * ROM_SINK_SLOT,
                           len(buf), _rom_sink_read, <void *>rom, _rom_sink_write,
                           <void *>self.st))
        self.st.rom_count += 1
        self._roms.append(buf)

    def is_rom(self, uint64_t address, uint64_t length=1):
        """Does ``address .. address+length-1`` overlap a ROM window (or BIOS-window
        RAM that the PAM registers make read-only)?"""
        cdef int i
        cdef RomWindow *rom
        cdef uint64_t a
        for i in range(self.st.rom_count):
            rom = &self.st.roms[i]
            if address < rom.base + rom.size and rom.base < address + length:
                if rom.base != self.st.low_rom_base:
                    return True
                a = max(address, rom.base) & ~(PAM_SEGMENT - 1)
                while a < min(address + length, rom.base + rom.size):
                    if pam_attr(self.st, a) != PAM_RE | PAM_WE:
                        return True
                    a += PAM_SEGMENT
        return False

    def set_pam(self, attrs):
        """Apply the i440FX PAM attributes (16 values, one per 16 KiB segment of
        0xC0000-0xFFFFF: bit 0 reads from RAM, bit 1 writes to RAM).

        Only segments inside the low BIOS window change: there the segment maps
        the ROM (reads not enabled), RAM (read and write) or RAM that drops stores
        (read only).  Elsewhere the memory below 1 MiB stays RAM."""
        cdef CoreState *st = self.st
        cdef int i, attr
        cdef uint64_t seg
        cdef RomWindow *low = NULL
        if len(attrs) != 16:
            raise ValueError("PAM attributes: 16 segments")
        for i in range(st.rom_count):
            if st.roms[i].base == st.low_rom_base and st.low_rom_base < 0x100000:
                low = &st.roms[i]
        if low == NULL:
            raise ValueError("no BIOS window below 1 MiB")
        if st.shadow_sink.data == NULL:
            st.shadow_sink.base = PAM_BASE
            st.shadow_sink.size = 0x100000 - PAM_BASE
            st.shadow_sink.data = st.ram + PAM_BASE
            _check(uc_mmio_map(st.uc, SHADOW_SINK_BASE, st.shadow_sink.size, _rom_sink_read,
                               <void *>&st.shadow_sink, _rom_sink_write, <void *>st))
        changed = False
        for i in range(16):
            attr = int(attrs[i]) & 3
            seg = PAM_BASE + i * PAM_SEGMENT
            if seg < st.low_rom_base:
                st.pam[i] = attr
                continue
            if _pam_view(attr) == _pam_view(st.pam[i]):
                st.pam[i] = attr
                continue
            st.pam[i] = attr
            changed = True
            _check(uc_mem_unmap(st.uc, seg, PAM_SEGMENT))
            if attr == PAM_RE | PAM_WE:
                _check(uc_mem_map_ptr(st.uc, seg, PAM_SEGMENT, 7, st.ram + seg))
            elif attr & PAM_RE:
                _check(uc_mem_map_ptr(st.uc, seg, PAM_SEGMENT, UC_PROT_READ | UC_PROT_EXEC,
                                      st.ram + seg))
            else:
                _check(uc_mem_map_ptr(st.uc, seg, PAM_SEGMENT, UC_PROT_READ | UC_PROT_EXEC,
                                      low.data + (seg - low.base)))
        if changed:
            self.flush_mmu()

    @property
    def rom_writes_ignored(self):
        """Guest stores to ROM that were dropped (shadow and identity MMU modes)."""
        return self.st.rom_writes_ignored

    property a20_enabled:
        """False masks physical address bit 20 (identity TLB mode only)."""
        def __get__(self):
            return self.st.a20_enabled
        def __set__(self, bint value):
            self.st.a20_enabled = value

    @property
    def fills(self):
        """TLB fills answered by mmu_core."""
        return self.st.fills

    def set_cpuid_handler(self, handler):
        """``handler()`` runs for every CPUID; it returns True to skip the native one."""
        self._cpuid_handler = handler
        self._add_hook(UC_HOOK_INSN, <void *>_hook_cpuid, UC_X86_INS_CPUID)

    # -- shadow MMU ------------------------------------------------------------------

    def take_fault(self):
        """``(linear_address, error_code, non_canonical)`` of the refused access that
        stopped the slice: a page fault, or with ``non_canonical`` a 64-bit access
        to a non-canonical address (#GP or #SS, error code 0).

        The fill sees only the page (ENGINE_FACTS.md fact 6); the exact address comes from
        Unicorn's record of the refused access when its offset could be found."""
        cdef Mmu *mmu = &self.st.mmu
        cdef uint64_t exact
        if not mmu.fault_pending:
            raise RuntimeError("no page fault is pending")
        mmu.fault_pending = False
        addr = mmu.fault_addr
        if _invalid_addr_offset >= 0:
            memcpy(&exact, (<char *>self.st.uc) + _invalid_addr_offset, 8)
            if mmu.fault_addr >> 32 == 0:
                exact &= 0xFFFFFFFF
            if (exact & ~0xFFFULL) == mmu.fault_addr:
                addr = exact
        return addr, mmu.fault_error, bool(mmu.fault_noncanonical)

    def notify_phys_write(self, uint64_t paddr, uint64_t length):
        """The host wrote guest RAM directly: update the shadow pages caching it."""
        self.st.mmu.stats.phys_writes_notified += 1
        track_phys_write(self.st, paddr, length, False)

    def flush_mmu(self):
        """Drop every shadow page, every parked TLB context and Unicorn's TLB.

        For a machine reset or a CPU state loaded from outside (a snapshot):
        nothing cached under the old page tables survives."""
        zap_all(&self.st.mmu)
        memset(self.st.mmu.frame_flags, 0, self.st.mmu.nframes)   # no frame is unsync now
        self.st.mmu.fault_pending = False
        flush_unicorn_tlb(self.st)  # UC_CTL_TLB_FLUSH works in every TLB mode

    def flush_shadow(self):
        """Drop every shadow page and flush Unicorn's TLB, keeping what is known of
        code frames (their translations survive in the engine)."""
        zap_all(&self.st.mmu)
        self.st.mmu.fault_pending = False
        flush_unicorn_tlb(self.st)

    # -- dirty-page log (snapshots) -------------------------------------------------

    def dirty_log_start(self):
        """Log the frames written from now on (clears the log; flushes Unicorn's TLB so
        no entry made before keeps WRITE).  ``mmu="native"`` has no fill to log from."""
        if self.tlb_mode == TLB_NATIVE_C:
            raise RuntimeError("the dirty-page log needs a TLB fill (not mmu='native')")
        self.dirty_log_take()
        self.vram_log_take()
        self.st.dirty_log = True
        flush_unicorn_tlb(self.st)

    def dirty_log_stop(self):
        self.dirty_log_take()
        self.vram_log_take()
        self.st.dirty_log = False

    @property
    def dirty_logging(self):
        return bool(self.st.dirty_log)

    def dirty_log_take(self):
        """The frames logged since the last take, as a list of frame numbers; the log is
        emptied and Unicorn's TLB flushed, so those frames are write-logged again."""
        cdef CoreState *st = self.st
        cdef uint64_t i
        out = [st.dirty_list[i] for i in range(st.dirty_count)]
        for i in range(st.dirty_count):
            st.dirty[st.dirty_list[i]] = 0
        if st.dirty_count:
            flush_unicorn_tlb(st)
        st.dirty_count = 0
        return out

    def vram_log_take(self):
        """The VRAM pages (4 KiB, numbered from 0) written since the last take, under
        the dirty log; emptied as :meth:`dirty_log_take` empties its own."""
        cdef CoreState *st = self.st
        cdef uint64_t i
        if st.vram_dirty == NULL:
            return []
        out = [st.vram_dirty_list[i] for i in range(st.vram_dirty_count)]
        for i in range(st.vram_dirty_count):
            st.vram_dirty[st.vram_dirty_list[i]] = 0
        if st.vram_dirty_count and st.lfb_size:
            flush_unicorn_tlb(st)  # framebuffer entries that gained WRITE
        st.vram_dirty_count = 0
        return out

    def vram_log_mark(self, uint64_t offset, uint64_t length):
        """The host or the device's Python code wrote ``vram[offset:offset+length]``."""
        cdef uint64_t page, end
        if not self.st.dirty_log or self.st.vram_dirty == NULL or length == 0:
            return
        end = min(offset + length, self.st.vga.vram_size)
        page = offset >> 12
        while (page << 12) < end:
            mark_vram_dirty(self.st, page)
            page += 1

    def set_max_shadow_pages(self, int n):
        """Bound the shadow page count; least recently used pages are recycled."""
        mmu_set_capacity(&self.st.mmu, n)
        make_pages_available(&self.st.mmu, 0)

    @property
    def max_shadow_pages(self):
        return self.st.mmu.sp_cap

    def mmu_stats(self):
        """Counters of the shadow MMU (a snapshot; reading them costs the guest nothing)."""
        cdef Mmu *mmu = &self.st.mmu
        cdef MmuStats *s = &mmu.stats
        cdef uint64_t g, entries = 0, longest = 0, code = 0, tracked = 0
        for g in range(mmu.nframes):
            entries += mmu.rmap[g].len
            if mmu.rmap[g].len > longest:
                longest = mmu.rmap[g].len
            if mmu.sp_count[g]:
                tracked += 1
        d = {
            "fills": s.fills, "fills_read": s.fills_read, "fills_write": s.fills_write,
            "fills_fetch": s.fills_fetch, "faults": s.faults, "rsvd_faults": s.rsvd_faults,
            "noncanonical_faults": s.noncanonical_faults,
            "guest_walks": s.guest_walks,
            "shadow_hits": sum(s.shadow_hits[i] for i in range(1, 5)),
            "shadow_misses": sum(s.shadow_misses[i] for i in range(1, 5)),
            "shadow_perm_misses": s.shadow_perm_misses,
            "cr3_loads": s.cr3_loads, "roots_reused": s.roots_reused,
            "roots_created": s.roots_created, "mode_changes": s.mode_changes,
            "naive_zap_all": s.naive_zap_all,
            "sp_created": s.sp_created, "sp_zapped": s.sp_zapped, "sp_recycled": s.sp_recycled,
            "sp_found": s.sp_found, "sp_live": mmu.n_sp, "sp_max": mmu.sp_cap,
            "tracked_frames": tracked,
            "wp_traps": s.wp_traps, "alias_reads": s.alias_reads, "alias_writes": s.alias_writes,
            "alias_writes_untracked": s.alias_writes_untracked,
            "alias_page_flushes": s.alias_page_flushes, "alias_grants_lost": s.alias_grants_lost,
            "retrack_page_flushes": s.retrack_page_flushes,
            "pte_writes": s.pte_writes, "pte_updated": s.pte_updated, "pte_zapped": s.pte_zapped,
            "flood_zaps": s.flood_zaps, "rmap_write_protect": s.rmap_write_protect,
            "rmap_entries": entries, "rmap_longest": longest,
            "tlb_flushes_wp": s.tlb_flushes_wp, "tlb_flushes_code": s.tlb_flushes_code,
            "code_frames": s.code_frames, "implicit_supervisor": s.implicit_supervisor,
            "phys_writes_notified": s.phys_writes_notified,
            "pte_prefetch": mmu.prefetch, "pte_prefetched": s.pte_prefetched,
            "pte_prefetch_used": s.pte_prefetch_used,
            "unsync": int(mmu.unsync_on), "unsync_now": mmu.n_unsync,
            "unsync_pages": s.unsync_pages, "wp_traps_avoided": s.wp_traps_avoided,
            "resyncs": s.resyncs, "resync_updates": s.resync_updates,
            "unsync_stale": s.unsync_stale, "unsync_page_flushes": s.unsync_page_flushes,
            "unsync_full_flushes": s.unsync_full_flushes,
        }
        d.update(self._ctx_stats())
        for i in range(1, 5):
            d[f"shadow_hits_l{i}"] = s.shadow_hits[i]
            d[f"shadow_misses_l{i}"] = s.shadow_misses[i]
        return d

    cdef dict _ctx_stats(self):
        cdef uint64_t e[8]
        cdef uint64_t g[3]
        cdef int parked = 0
        memset(e, 0, sizeof(e))
        memset(g, 0, sizeof(g))
        if uc_ql_tlb_ctx_stats != NULL and self.st.mmu.ctx_max:
            parked = uc_ql_tlb_ctx_stats(self.st.uc, e, 8)
        if uc_ql_tlb_global_stats != NULL:
            uc_ql_tlb_global_stats(self.st.uc, g, 3)
        for i in range(8):
            e[i] -= self._ctx_base[i]
        for i in range(3):
            g[i] -= self._global_base[i]
        return {
            "global_pages": int(self.global_pages), "global_noted": g[0],
            "global_carried": g[1], "global_invlpg_drops": g[2],
            "tlb_contexts_max": self.tlb_contexts, "tlb_contexts_parked_now": parked,
            "ctx_switches": e[0], "ctx_same_space": e[1], "ctx_parked": e[2],
            "ctx_restored": e[3], "ctx_fills_avoided": e[4], "ctx_evicted": e[5],
            "ctx_dropped": e[6], "ctx_fresh": e[7],
            "ctx_root_drops": self.st.mmu.stats.ctx_drops,
            "ctx_taints": self.st.mmu.stats.ctx_taints,
        }

    def reset_mmu_stats(self):
        cdef uint64_t e[8]
        memset(&self.st.mmu.stats, 0, sizeof(MmuStats))
        memset(e, 0, sizeof(e))
        if uc_ql_tlb_ctx_stats != NULL and self.st.mmu.ctx_max:
            uc_ql_tlb_ctx_stats(self.st.uc, e, 8)
        for i in range(8):
            self._ctx_base[i] = e[i]
        if uc_ql_tlb_global_stats != NULL:
            uc_ql_tlb_global_stats(self.st.uc, self._global_base, 3)

    def audit(self):
        """Violations of the shadow MMU's invariants (empty when consistent)."""
        return mmu_audit(self.st)

    def debug_walk(self, uint64_t cr0, uint64_t cr3, uint64_t cr4, uint64_t efer,
                   uint64_t linear, access, bint user, uint64_t eflags=0, bint set_bits=True):
        """Run the C guest walker alone (tests compare it with qemu_lite.paging).

        Returns ``(error_code, None)`` on a fault, else ``(None, (paddr, page_size,
        writable, user, executable))`` like paging.Translation."""
        cdef MmuMode m
        cdef Walker w
        cdef int acc = _access_kind(access)
        mode_init(&m, cr0, cr3, cr4, efer, self.st.a20_enabled)
        m.cpl = 3 if user else 0
        m.ac = 1 if eflags & EFLAGS_AC else 0
        if m.levels == 0:
            return None, (linear & 0xFFFFFFFF if not efer & EFER_LMA else linear, 4096,
                          True, True, True)
        if walk_addr(self.st, &m, linear, acc, user, set_bits, &w):
            return w.error_code, None
        return None, (w.gpa | (linear & 0xFFF), w.page_size, bool(w.writable), bool(w.user),
                      not w.nx)

    def walk(self, uint64_t cr0, uint64_t cr3, uint64_t cr4, uint64_t efer, uint64_t eflags,
             uint64_t linear, access, bint user):
        """Translate ``linear`` as the CPU would for an access of event delivery.

        The C walker of TLB fills (A/D bits set, every entry bounds-checked), so
        delivery runs no Python per paging level.  Returns the physical address,
        or ``-1 - error_code`` when the access page-faults.  Not counted in
        ``guest_walks``, which counts the fills' walks."""
        cdef MmuMode m
        cdef Walker w
        cdef int acc = _access_kind(access)
        cdef int failed
        mode_init(&m, cr0, cr3, cr4, efer, self.st.a20_enabled)
        if m.levels == 0:
            return linear & 0xFFFFFFFF if not efer & EFER_LMA else linear
        m.cpl = 3 if user else 0
        m.ac = 1 if eflags & EFLAGS_AC else 0
        failed = walk_addr(self.st, &m, linear, acc, user, True, &w)
        self.st.mmu.stats.guest_walks -= 1
        if failed:
            return -1 - <int64_t>w.error_code
        return <int64_t>(w.gpa | (linear & 0xFFF))

    def debug_fill(self, uint64_t cr0, uint64_t cr3, uint64_t cr4, uint64_t efer,
                   uint64_t linear, access, bint user, uint64_t eflags=0):
        """Run the whole fill (shadow lookup, walk, install) with the given CPU state.

        Returns ``(error_code, None)`` on a fault, else ``(None, (paddr, perms))``
        where ``paddr`` is what Unicorn would map (the alias for tracked writes)."""
        cdef MmuMode m
        cdef ql_uc_tlb_entry res
        cdef uint32_t err = 0
        cdef int acc = _access_kind(access)
        mode_init(&m, cr0, cr3, cr4, efer, self.st.a20_enabled)
        m.cpl = 3 if user else 0
        m.ac = 1 if eflags & EFLAGS_AC else 0
        self.st.mmu.stats.fills += 1
        if mmu_fill(self.st, &m, linear, acc, &res, &err):
            return err, None
        return None, (res.paddr, res.perms)

    def debug_alias_write(self, uint64_t offset, unsigned size, uint64_t value):
        """Store as a guest write through the page-table alias would (tests)."""
        _alias_write(self.st.uc, offset, size, value, <void *>self.st)

    def frame_has_code(self, uint64_t gfn):
        """Does RAM frame ``gfn`` hold translated code?  Asked of the engine when data
        fills grant EXEC (patch m: it holds TBs now), else: was it ever fetched from."""
        if gfn >= self.st.mmu.nframes:
            return False
        if self.st.mmu.data_exec:
            return bool(uc_ql_host_page_has_code(self.st.uc, self.st.ram + (gfn << 12)))
        return bool(self.st.mmu.frame_flags[gfn] & FRAME_CODE)

    def set_data_fill_exec(self, bint on):
        """Let data fills grant EXEC where the guest allows it (the default where the
        engine tracks code pages, patches d and m); off, they leave it out as the stock
        engine needs (ENGINE_FACTS.md fact 12).  For measuring the difference."""
        if on and uc_ql_host_page_has_code == NULL:
            raise ValueError("data fills can grant EXEC only on an engine with patches d and m")
        if self.st.mmu.data_exec != on:
            self.st.mmu.data_exec = on
            flush_unicorn_tlb(self.st)   # entries made under the other rule

    @property
    def data_fill_exec(self):
        """True when data fills grant EXEC (see :meth:`set_data_fill_exec`)."""
        return bool(self.st.mmu.data_exec)

    def is_tracked(self, uint64_t gfn):
        """Does guest frame ``gfn`` have shadow pages (its writes are tracked)?"""
        return gfn < self.st.mmu.nframes and self.st.mmu.sp_count[gfn] != 0

    # -- CPU context surgery ----------------------------------------------------

    def context_save(self):
        """Save the CPU state into a buffer owned by this Core; return it as a writable view.

        The engine's API cannot load segment caches or change CPL in a 64-bit
        engine (ENGINE_FACTS.md fact 5); the vCPU edits this buffer and calls
        :meth:`context_restore`.  Offsets are found at start-up by diffing
        (qemu_lite.cpustate), never hard-coded."""
        if self._ctx == NULL:
            _check(uc_context_alloc(self.st.uc, &self._ctx))
            self._ctx_size = uc_context_size(self.st.uc)
        _check(uc_context_save(self.st.uc, self._ctx))
        return PyMemoryView_FromMemory(<char *>self._ctx, self._ctx_size, PyBUF_WRITE)

    def context_restore(self):
        """Load the buffer last returned by :meth:`context_save` back into the CPU."""
        if self._ctx == NULL:
            raise RuntimeError("context_restore() before context_save()")
        _check(uc_context_restore(self.st.uc, self._ctx))

    def set_event_layout(self, int error_code, int is_int, int next_eip, int cr2_reg):
        """Context offsets of QEMU's error_code / exception_is_int / exception_next_eip
        and the register id of CR2, so the interrupt hook can capture them."""
        if self.st.ev_ctx == NULL:
            _check(uc_context_alloc(self.st.uc, &self.st.ev_ctx))
        if max(error_code, is_int, next_eip + 8) > <int>uc_context_size(self.st.uc):
            raise ValueError("event offsets outside the CPU context")
        self.st.ev_off_error_code = error_code
        self.st.ev_off_is_int = is_int
        self.st.ev_off_next_eip = next_eip
        self.st.ev_cr2_reg = cr2_reg

    def attach_fast_events(self, int old_exception):
        """Let the hooks deliver INT n (real mode, 32-bit gates, 64-bit gates) and 64-bit
        SYSCALL in C (fastevent.pxi).

        ``old_exception`` is the context offset of QEMU's nested-exception memory;
        :meth:`set_event_layout` must have run.  Returns whether the C path is
        available: the patched engine, every offset confirmed through the register
        API.  It starts on; :meth:`set_fast_events` turns it off and on."""
        cdef CoreState *st = self.st
        st.fe_ok = False
        if st.cpu == NULL or st.ev_ctx == NULL:
            return False
        size = <int>uc_context_size(st.uc)
        if old_exception + 4 > size or old_exception < st.ctx_shift:
            return False
        st.fe_off_old_exception = old_exception - st.ctx_shift
        st.fe_off_is_int = st.ev_off_is_int - st.ctx_shift
        st.fe_off_next_eip = st.ev_off_next_eip - st.ctx_shift
        if st.fe_off_is_int < 0 or st.fe_off_next_eip < 0:
            return False
        st.fe_ok = _fe_attach(st)
        st.fe_on = st.fe_ok
        return bool(st.fe_ok)

    def set_fast_events(self, bint on):
        """Deliver INT n / SYSCALL in C when possible (True) or always through Python."""
        self.st.fe_on = on and self.st.fe_ok

    @property
    def fast_events(self):
        """Is the C path of INT n / SYSCALL delivery on?"""
        return bool(self.st.fe_on)

    def fast_event_counts(self):
        """``(software interrupts, SYSCALLs)`` delivered in C so far."""
        return self.st.fe_ints, self.st.fe_syscalls

    def take_event(self):
        """``(is_int, error_code, next_eip, cr2)`` captured when the last event was raised."""
        return (bool(self.st.ev_is_int), self.st.ev_error_code, self.st.ev_next_eip,
                self.st.ev_cr2)

    # -- ports ----------------------------------------------------------------

    def claim_ports(self, int base, int count, handler):
        """Route ports ``base .. base+count-1`` to ``handler``.

        ``handler.io_read(offset, size)`` and ``handler.io_write(offset, size,
        value)`` get the offset from ``base``.  Overlapping claims are refused."""
        cdef int p
        if base < 0 or count <= 0 or base + count > 65536:
            raise ValueError(f"bad port range {base:#x}+{count}")
        for p in range(base, base + count):
            if self.st.port_slot[p]:
                owner = self._port_handlers[self.st.port_slot[p]]
                raise ValueError(f"port {p:#x} is already claimed by {owner!r}")
        if len(self._port_handlers) >= 65535:
            raise ValueError("too many port handlers")
        slot = len(self._port_handlers)
        self._port_handlers.append(handler)
        for p in range(base, base + count):
            self.st.port_slot[p] = slot
            self.st.port_base[p] = base

    def port_handler(self, int port):
        """``(handler, base)`` of the claim that owns ``port``, or None."""
        if not 0 <= port < 65536 or not self.st.port_slot[port]:
            return None
        return self._port_handlers[self.st.port_slot[port]], self.st.port_base[port]

    def map_mmio(self, uint64_t base, uint64_t size, handler, uint64_t access_ns=0):
        """Route guest loads and stores at physical ``base .. base+size-1`` to
        ``handler.io_read(offset, size)`` / ``handler.io_write(offset, size, value)``,
        as ports are: a C callback takes the GIL, and the first exception stops the
        slice and is re-raised by the run loop (:meth:`take_error`).  Each access
        adds ``access_ns`` to the deterministic clock (:meth:`set_io_clock`)."""
        cdef MmioSlot *slot = <MmioSlot *>calloc(1, sizeof(MmioSlot))
        if slot == NULL:
            raise MemoryError()
        slot.st = <void *>self.st
        slot.handler = len(self._mmio_handlers)
        slot.base = base
        slot.access_ns = access_ns
        err = uc_mmio_map(self.st.uc, base, size, _mmio_read, <void *>slot,
                          _mmio_write, <void *>slot)
        if err:
            free(slot)
            _check(err)
        self._mmio_handlers.append(handler)
        slot.next = <void *>self.st.mmio_slots
        self.st.mmio_slots = slot

    def pio_window_open(self, int index, int port, bytearray buffer, uint64_t pos, uint64_t end,
                        bint write):
        """Let the port hooks stream ``buffer[pos:end]`` for ``port`` in C (reads, or
        writes when ``write``).  The access that would complete the window is left
        to the device, which then sees the position from :meth:`pio_window_close`."""
        if not 0 <= index < 4:
            raise ValueError("PIO window index must be 0-3")
        if end > <uint64_t>len(buffer) or pos > end:
            raise ValueError("PIO window outside its buffer")
        cdef PioWindow *w = &self.st.pio[index]
        self._pio_buffers[index] = buffer  # keeps the memory alive while C points at it
        w.buf = <uint8_t *>PyByteArray_AS_STRING(buffer)
        w.port = port & 0xFFFF
        w.pos = pos
        w.end = end
        w.write = write
        w.open = True

    def pio_window_close(self, int index):
        """Close a window; return its position (-1 if it was not open)."""
        cdef PioWindow *w = &self.st.pio[index]
        if not w.open:
            return -1
        w.open = False
        self._pio_buffers[index] = None
        return w.pos

    # -- device registers in C (devfast.pxi; qemu_lite/devfast.py keeps them true) ----

    def uart_attach(self, int index, int port, sink):
        """Let the port hooks serve the 16550 whose THR is ``port`` (``index`` 0-1) as
        :meth:`uart_set` allows.  Queued THR bytes go to ``sink(data)`` on a newline or
        a full buffer, before any other Python callback, and in :meth:`take_stop`."""
        if not 0 <= index < UART_FAST_MAX or not 0 < port <= 0xFFF8:
            raise ValueError("UART fast path: index 0-1, port 1-0xFFF8")
        self.uart_flush()
        self._uart_sinks[index] = sink
        cdef UartFast *u = &self.st.uart[index]
        u.lsr = -1
        u.thr = False
        u.base = port

    def uart_set(self, int index, int lsr, bint thr):
        """What the UART's device allows until its next change: LSR reads answer ``lsr``
        (-1: the device answers), THR writes are queued when ``thr``."""
        if not 0 <= index < UART_FAST_MAX or not -1 <= lsr <= 0xFF:
            raise ValueError("UART fast path: index 0-1, LSR -1..255")
        self.st.uart[index].lsr = lsr
        self.st.uart[index].thr = thr

    def uart_flush(self):
        """Hand queued THR bytes to their sinks and posted port writes to their devices
        now (an exception is re-raised)."""
        if self.st.uart_pending or self.st.posted_len:
            _flush_queued(self)
            err = self.take_error()
            self.st.stop_flags &= ~C_STOP_ERROR
            if err is not None:
                raise err

    def vga_attach(self, handler, bytearray vram):
        """Serve loads and stores of ``handler``'s MMIO range (the VGA window) from
        ``vram`` as :meth:`vga_set` allows; until then, and for what it does not allow,
        ``handler`` answers."""
        cdef MmioSlot *slot = self.st.mmio_slots
        while slot != NULL and self._mmio_handlers[slot.handler] is not handler:
            slot = <MmioSlot *>slot.next
        if slot == NULL:
            raise ValueError(f"{handler!r} has no MMIO range")
        if len(vram) < PAGE_SIZE or len(vram) % PAGE_SIZE or len(vram) >> 12 > 0xFFFFFFFF:
            raise ValueError("VRAM must be a whole number of 4 KiB pages")
        if self.st.vga.vram != NULL:
            raise ValueError("a VGA is attached already")
        self.st.vram_dirty = <uint8_t *>calloc(len(vram) >> 12, 1)
        self.st.vram_dirty_list = <uint32_t *>calloc(len(vram) >> 12, sizeof(uint32_t))
        if self.st.vram_dirty == NULL or self.st.vram_dirty_list == NULL:
            raise MemoryError("cannot allocate the VRAM dirty log")
        self._vga_vram = vram  # kept alive while C points at it (never resized)
        self.st.vga.kind = VGA_FAST_OFF
        self.st.vga.vram = <uint8_t *>PyByteArray_AS_STRING(vram)
        self.st.vga.vram_size = len(vram)
        slot.vga = True

    def map_vram(self, uint64_t base):
        """Map the attached VRAM as RAM at physical ``base`` (the framebuffer BAR): stores
        at RAM speed, logged under the dirty log through their write fills.  UcError
        when it overlaps something; at most one mapping at a time."""
        cdef CoreState *st = self.st
        if st.vga.vram == NULL:
            raise ValueError("map_vram: vga_attach() first")
        if st.lfb_size:
            raise ValueError(f"VRAM is mapped at {st.lfb_base:#x} already")
        if base % PAGE_SIZE or base + st.vga.vram_size > (1ULL << 52):
            raise ValueError(f"bad framebuffer base {base:#x}")
        _check(uc_mem_map_ptr(st.uc, base, st.vga.vram_size, 7, st.vga.vram))
        st.lfb_base = base
        st.lfb_size = st.vga.vram_size

    def unmap_vram(self):
        """Undo :meth:`map_vram` (nothing when VRAM is not mapped)."""
        cdef CoreState *st = self.st
        if not st.lfb_size:
            return
        _check(uc_mem_unmap(st.uc, st.lfb_base, st.vga.vram_size))
        st.lfb_size = 0

    @property
    def vram_base(self):
        """Where :meth:`map_vram` mapped VRAM, or None."""
        return self.st.lfb_base if self.st.lfb_size else None

    def vga_set(self, int kind, uint64_t lo=0, uint64_t hi=0, uint64_t bank=0,
                int map_mask=0, int plane_hi=0):
        """The window's addressing for accesses served in C (``VGA_FAST_*``): window
        offsets ``lo .. hi-1`` decoded, ``a = offset - lo``; ``bank`` for VBE banks."""
        if not VGA_FAST_OFF <= kind <= VGA_FAST_PLANAR or hi > 0x20000 or lo > hi:
            raise ValueError("VGA fast path: bad kind or window")
        if self.st.vga.vram == NULL and kind != VGA_FAST_OFF:
            raise ValueError("VGA fast path: vga_attach() first")
        cdef VgaFast *v = &self.st.vga
        v.kind = kind
        v.lo = lo
        v.hi = hi
        v.bank = bank
        v.map_mask = map_mask & 0xF
        v.plane_hi = plane_hi & 2

    def post_port_writes(self, int base, int count, bint posted=True):
        """Let writes to ports ``base .. base+count-1`` (claimed) reach their device
        later: queued in C and replayed in order before any other Python callback, in
        :meth:`take_stop` and when the queue fills.  For registers whose writes the
        guest cannot observe but through the device's own Python paths (VGA DAC, CRTC)."""
        cdef int p
        if base < 0 or count <= 0 or base + count > 65536:
            raise ValueError(f"bad port range {base:#x}+{count}")
        self.uart_flush()
        for p in range(base, base + count):
            self.st.port_posted[p] = posted

    @property
    def dev_fast_accesses(self):
        """Device register accesses served in C (UART LSR/THR, the VGA window)."""
        return self.st.dev_fast_accesses

    def set_io_clock(self, owner, uintptr_t address, uint64_t port_ns):
        """Charge ``port_ns`` to the uint64 counter at ``address`` (owned by ``owner``,
        kept alive here) for every port access: the deterministic clock's I/O cost."""
        self._io_clock_owner = owner
        self.st.port_ns = port_ns
        self.st.io_clock = <uint64_t *>address

    @property
    def pio_fast_accesses(self):
        """Port accesses served by a PIO window without Python."""
        return self.st.pio_fast_accesses

    def release_ports(self, int base, int count):
        """Unclaim ports ``base .. base+count-1`` (a PCI BAR moved); they read all-ones again."""
        cdef int p
        if base < 0 or count <= 0 or base + count > 65536:
            raise ValueError(f"bad port range {base:#x}+{count}")
        for p in range(base, base + count):
            self.st.port_slot[p] = 0
            self.st.port_base[p] = 0

    def port_owner(self, int port):
        """The handler claiming ``port``, or None."""
        return self._port_handlers[self.st.port_slot[port & 0xFFFF]]

    @property
    def unclaimed_port_reads(self):
        return self.st.unclaimed_port_reads

    @property
    def unclaimed_port_writes(self):
        return self.st.unclaimed_port_writes

    def set_unclaimed_port_log(self, callback):
        """``callback(port, size, value)`` (value -1 for reads) for each unclaimed access."""
        self.unclaimed_port_log = callback
        self.st.log_unclaimed = callback is not None

    def set_port_tracer(self, callback):
        """``callback(port, size, value, is_write)`` after every guest port access, the
        value read or written (None: off).  Off costs one test per access in C; on,
        a Python call per access, with the GIL."""
        self.port_tracer = callback
        self.st.trace_ports = callback is not None

    def set_mmio_tracer(self, callback):
        """``callback(address, size, value, is_write)`` after every device-MMIO access,
        C fast paths (the VGA window) included (None: off).  Off costs one test per
        access in C; on, a Python call per access."""
        self.mmio_tracer = callback
        self.st.trace_mmio = callback is not None

    # -- stops ----------------------------------------------------------------

    def request_stop(self, int flag=C_STOP_REQUEST):
        """Stop ``emu_start`` at the next instruction boundary (safe from any thread)."""
        self.st.requested_flags |= flag  # under the GIL: Python callers do not race
        uc_emu_stop(self.st.uc)

    def stop_word_address(self):
        """Address of the flags the hooks set, for VcpuHooks to report its own exits
        (STOP_KICK) from the vCPU thread: one word says why a slice ended."""
        return <uintptr_t>&self.st.stop_flags

    def take_stop(self):
        """Return and clear ``(stop_flags, intno)``; first hands the UARTs' queued output
        to their devices (a sink that raises adds STOP_ERROR)."""
        if self.st.uart_pending or self.st.posted_len:
            _flush_queued(self)
        cdef int flags = self.st.stop_flags | self.st.requested_flags
        cdef int n = self.st.intno
        self.st.requested_flags = 0
        self.st.stop_flags = 0
        self.st.intno = -1
        return flags, n

    def take_error(self):
        """Return and clear the first exception raised by a Python callback."""
        err, self._error = self._error, None
        return err

    cdef void _record_error(self, exc) noexcept:
        if self._error is None:
            self._error = exc
        self.st.stop_flags |= C_STOP_ERROR
        uc_emu_stop(self.st.uc)


cdef int _context_header_size(uc_engine *uc, uint8_t *cpu) except -2:
    """Bytes before the CPU state's copy in a saved context (-1: not found)."""
    cdef void *ctx = NULL
    cdef size_t size = uc_context_size(uc)
    cdef int shift, found = -1
    _check(uc_context_alloc(uc, &ctx))
    try:
        _check(uc_context_save(uc, ctx))
        for shift in range(0, 129, 8):
            if size > <size_t>shift + 2048 and memcmp(<uint8_t *>ctx + shift, cpu, 2048) == 0:
                if found >= 0:
                    return -1   # ambiguous
                found = shift
    finally:
        uc_context_free(ctx)
    return found


cdef void _close_engine(uc_obj) noexcept:
    try:
        finalizer = uc_obj._Uc__finalizer
    except Exception:
        return
    try:
        finalizer()
    except Exception:
        pass


cdef int _check(int err) except -1:
    if err:
        raise unicorn.UcError(err)
    return 0


cdef uint32_t _size_mask(int size) noexcept nogil:
    if size == 1:
        return 0xFF
    if size == 2:
        return 0xFFFF
    return 0xFFFFFFFF


cdef inline PioWindow *_pio_window(CoreState *st, uint32_t port, int size, bint write) noexcept nogil:
    cdef int i
    cdef PioWindow *w
    for i in range(4):
        w = &st.pio[i]
        if w.open and w.port == port and w.write == write and w.pos + <uint64_t>size < w.end:
            return w
    return NULL


cdef uint32_t _hook_in(uc_engine *uc, uint32_t port, int size, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    cdef uint32_t value = _port_in(st, port, size)
    if st.trace_ports:
        with gil:
            _trace_port(<Core>st.owner, port, size, value, False)
    return value


cdef void _trace_port(Core core, uint32_t port, int size, uint32_t value, bint write) noexcept:
    try:
        core.port_tracer(port & 0xFFFF, size, value, write)
    except BaseException as exc:
        core._record_error(exc)


cdef inline uint32_t _port_in(CoreState *st, uint32_t port, int size) noexcept nogil:
    cdef uint16_t slot = st.port_slot[port & 0xFFFF]
    cdef uint32_t mask = _size_mask(size)
    cdef uint32_t value = 0
    cdef PioWindow *w = _pio_window(st, port & 0xFFFF, size, False)
    if st.io_clock != NULL:
        st.io_clock[0] += st.port_ns
    if w != NULL:
        memcpy(&value, w.buf + w.pos, size)
        w.pos += size
        st.pio_fast_accesses += 1
        return value
    if _uart_read(st, port & 0xFFFF, size, &value):
        return value
    if slot == 0:
        st.unclaimed_port_reads += 1
        if st.log_unclaimed:
            with gil:
                _log_unclaimed(<Core>st.owner, port, size, -1)
        return mask
    with gil:
        return _py_port_read(<Core>st.owner, slot, port - st.port_base[port & 0xFFFF], size) & mask


cdef uint32_t _py_port_read(Core core, int slot, uint32_t offset, int size) noexcept:
    if core.st.uart_pending or core.st.posted_len:  # what the guest did first
        _flush_queued(core)
    try:
        return <uint32_t>(core._port_handlers[slot].io_read(offset, size) & 0xFFFFFFFF)
    except BaseException as exc:
        core._record_error(exc)
        return 0xFFFFFFFF


cdef void _hook_out(uc_engine *uc, uint32_t port, int size, uint32_t value,
                    void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    _port_out(st, port, size, value)
    if st.trace_ports:
        with gil:
            _trace_port(<Core>st.owner, port, size, value & _size_mask(size), True)


cdef inline void _port_out(CoreState *st, uint32_t port, int size, uint32_t value) noexcept nogil:
    cdef uint16_t slot = st.port_slot[port & 0xFFFF]
    value &= _size_mask(size)
    cdef PioWindow *w = _pio_window(st, port & 0xFFFF, size, True)
    if st.io_clock != NULL:
        st.io_clock[0] += st.port_ns
    if w != NULL:
        memcpy(w.buf + w.pos, &value, size)
        w.pos += size
        st.pio_fast_accesses += 1
        return
    if _uart_write(st, port & 0xFFFF, size, value):
        return
    if slot != 0 and st.port_posted[port & 0xFFFF] and st.port_posted[(port + size - 1) & 0xFFFF]:
        _post_write(st, slot, port - st.port_base[port & 0xFFFF], size, value)
        return
    if slot == 0:
        st.unclaimed_port_writes += 1
        if st.log_unclaimed:
            with gil:
                _log_unclaimed(<Core>st.owner, port, size, value)
        return
    with gil:
        _py_port_write(<Core>st.owner, slot, port - st.port_base[port & 0xFFFF], size, value)


cdef void _py_port_write(Core core, int slot, uint32_t offset, int size, uint32_t value) noexcept:
    if core.st.uart_pending or core.st.posted_len:  # what the guest did first
        _flush_queued(core)
    try:
        core._port_handlers[slot].io_write(offset, size, value)
    except BaseException as exc:
        core._record_error(exc)


cdef uint64_t _mmio_read(uc_engine *uc, uint64_t offset, unsigned size,
                         void *user_data) noexcept nogil:
    cdef MmioSlot *slot = <MmioSlot *>user_data
    cdef CoreState *st = <CoreState *>slot.st
    cdef uint64_t value
    if st.io_clock != NULL:
        st.io_clock[0] += slot.access_ns
    if not (slot.vga and _vga_read(st, offset, size, &value)):
        with gil:
            value = _py_mmio_read(<Core>st.owner, slot, offset, size)
    if st.trace_mmio:
        with gil:
            _trace_mmio(<Core>st.owner, slot.base + offset, size, value, False)
    return value


cdef void _trace_mmio(Core core, uint64_t address, unsigned size, uint64_t value,
                      bint write) noexcept:
    try:
        core.mmio_tracer(address, size, value, write)
    except BaseException as exc:
        core._record_error(exc)


cdef uint64_t _py_mmio_read(Core core, MmioSlot *slot, uint64_t offset, unsigned size) noexcept:
    if core.st.uart_pending or core.st.posted_len:  # what the guest did first
        _flush_queued(core)
    cdef uint64_t mask = 0xFFFFFFFFFFFFFFFFULL if size >= 8 else (1ULL << (8 * size)) - 1
    try:
        return <uint64_t>(core._mmio_handlers[slot.handler].io_read(offset, size) & mask)
    except BaseException as exc:
        core._record_error(exc)
        return mask


cdef void _mmio_write(uc_engine *uc, uint64_t offset, unsigned size, uint64_t value,
                      void *user_data) noexcept nogil:
    cdef MmioSlot *slot = <MmioSlot *>user_data
    cdef CoreState *st = <CoreState *>slot.st
    if st.io_clock != NULL:
        st.io_clock[0] += slot.access_ns
    if not (slot.vga and _vga_write(st, offset, size, value)):
        with gil:
            _py_mmio_write(<Core>st.owner, slot, offset, size, value)
    if st.trace_mmio:
        with gil:
            _trace_mmio(<Core>st.owner, slot.base + offset, size, value, True)


cdef void _py_mmio_write(Core core, MmioSlot *slot, uint64_t offset, unsigned size,
                         uint64_t value) noexcept:
    if core.st.uart_pending or core.st.posted_len:  # what the guest did first
        _flush_queued(core)
    try:
        core._mmio_handlers[slot.handler].io_write(offset, size, value)
    except BaseException as exc:
        core._record_error(exc)


cdef void _log_unclaimed(Core core, uint32_t port, int size, long value) noexcept:
    if core.st.uart_pending or core.st.posted_len:  # what the guest did first
        _flush_queued(core)
    try:
        core.unclaimed_port_log(port, size, value)
    except BaseException as exc:
        core._record_error(exc)


cdef void _hook_intr(uc_engine *uc, uint32_t intno, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    cdef char *ctx
    cdef uint32_t is_int
    cdef uint64_t next_eip
    if st.fe_on and st.stop_flags == 0:
        memcpy(&is_int, st.cpu + st.fe_off_is_int, 4)
        if is_int:
            memcpy(&next_eip, st.cpu + st.fe_off_next_eip, 8)
            if fast_int(st, intno, next_eip):
                return  # delivered: the slice goes on at the handler
    uc_emu_stop(uc)
    if st.stop_flags & C_STOP_INTERRUPT:
        return  # only the first event of a slice is the guest's
    st.intno = intno
    st.stop_flags |= C_STOP_INTERRUPT
    if st.ev_ctx != NULL and uc_context_save(uc, st.ev_ctx) == 0:
        ctx = <char *>st.ev_ctx
        memcpy(&st.ev_error_code, ctx + st.ev_off_error_code, 4)
        memcpy(&st.ev_is_int, ctx + st.ev_off_is_int, 4)
        memcpy(&st.ev_next_eip, ctx + st.ev_off_next_eip, 8)
        uc_reg_read(uc, st.ev_cr2_reg, &st.ev_cr2)


cdef void _hook_syscall(uc_engine *uc, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    if st.fe_on and st.stop_flags == 0 and fast_syscall64(st):
        return
    st.stop_flags |= C_STOP_SYSCALL
    uc_emu_stop(uc)


cdef void _hook_sysenter(uc_engine *uc, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    st.stop_flags |= C_STOP_SYSENTER
    uc_emu_stop(uc)


cdef bint _hook_invalid(uc_engine *uc, void *user_data) noexcept nogil:
    # Unicorn reports #UD here instead of through UC_HOOK_INTR.  Claiming it
    # lets emulation "continue", but the stop request ends the slice first
    # with RIP still at the invalid instruction.
    cdef CoreState *st = <CoreState *>user_data
    st.stop_flags |= C_STOP_INVALID
    uc_emu_stop(uc)
    return True


cdef int _hook_cpuid(uc_engine *uc, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    with gil:
        return _py_cpuid(<Core>st.owner)


cdef int _py_cpuid(Core core) noexcept:
    if core.st.uart_pending or core.st.posted_len:  # what the guest did first
        _flush_queued(core)
    try:
        return 1 if core._cpuid_handler() else 0
    except BaseException as exc:
        core._record_error(exc)
        return 1


cdef bint _hook_tlb_fill_identity(uc_engine *uc, uint64_t vaddr, int access,
                                  ql_uc_tlb_entry *result, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    st.fills += 1
    if not st.a20_enabled:
        vaddr &= ~A20_BIT
    result.paddr = vaddr
    result.perms = UC_PROT_READ | UC_PROT_WRITE | UC_PROT_EXEC
    rom_fill(st, vaddr, access == UC_MEM_WRITE, result)
    dirty_filter(st, vaddr, access == UC_MEM_WRITE, result)
    return True


cdef inline int _pam_view(int attr) noexcept nogil:
    # What a segment maps: 0 the ROM (also write-only RAM, approximated), 1 read-only RAM, 3 RAM.
    if attr & PAM_RE:
        return attr
    return 0


cdef inline int pam_attr(CoreState *st, uint64_t gpa) noexcept nogil:
    """The PAM view at ``gpa`` inside the low BIOS window (0 = ROM), 3 (RAM) elsewhere."""
    if gpa < st.low_rom_base or gpa >= 0x100000 or gpa < PAM_BASE:
        return PAM_RE | PAM_WE
    return _pam_view(st.pam[(gpa - PAM_BASE) // PAM_SEGMENT])


cdef bint rom_fill(CoreState *st, uint64_t gpa, bint write, ql_uc_tlb_entry *res) noexcept nogil:
    """Keep ROM read-only under UC_TLB_VIRTUAL: reads and fetches map the ROM without
    WRITE; a write maps the page to the sink.  Returns whether ``gpa`` is ROM."""
    cdef int i
    cdef RomWindow *rom
    cdef int view = pam_attr(st, gpa)
    if view == PAM_RE | PAM_WE and st.low_rom_base <= gpa < 0x100000:
        return False  # the PAM registers put RAM here
    if view == PAM_RE:
        if write:
            res.paddr = SHADOW_SINK_BASE + (gpa - PAM_BASE)
            res.perms = UC_PROT_READ | UC_PROT_WRITE
        else:
            res.perms &= ~UC_PROT_WRITE
        return True
    for i in range(st.rom_count):
        rom = &st.roms[i]
        if rom.base <= gpa < rom.base + rom.size:
            if write:
                res.paddr = ROM_SINK_BASE + i * ROM_SINK_SLOT + (gpa - rom.base)
                res.perms = UC_PROT_READ | UC_PROT_WRITE
            else:
                res.perms &= ~UC_PROT_WRITE
            return True
    return False


cdef uint64_t _rom_sink_read(uc_engine *uc, uint64_t offset, unsigned size,
                             void *user_data) noexcept nogil:
    cdef RomWindow *rom = <RomWindow *>user_data
    cdef uint64_t v = 0
    if size <= 8 and offset < rom.size and size <= rom.size - offset:
        memcpy(&v, rom.data + offset, size)
    return v


cdef void _rom_sink_write(uc_engine *uc, uint64_t offset, unsigned size, uint64_t value,
                          void *user_data) noexcept nogil:
    (<CoreState *>user_data).rom_writes_ignored += 1


cdef int _access_kind(access) except -1:
    if access in ("read", 0, UC_MEM_READ):
        return ACC_READ
    if access in ("write", 1, UC_MEM_WRITE):
        return ACC_WRITE
    if access in ("fetch", 2, UC_MEM_FETCH):
        return ACC_FETCH
    raise ValueError(f"unknown access kind {access!r}")


cdef inline void mark_dirty(CoreState *st, uint64_t gfn) noexcept nogil:
    if st.dirty_log and gfn < (st.ram_size >> 12) and not st.dirty[gfn]:
        st.dirty[gfn] = 1
        st.dirty_list[st.dirty_count] = <uint32_t>gfn
        st.dirty_count += 1


cdef inline void mark_vram_dirty(CoreState *st, uint64_t page) noexcept nogil:
    if st.dirty_log and st.vram_dirty != NULL and page < (st.vga.vram_size >> 12) \
            and not st.vram_dirty[page]:
        st.vram_dirty[page] = 1
        st.vram_dirty_list[st.vram_dirty_count] = <uint32_t>page
        st.vram_dirty_count += 1


cdef inline void dirty_filter(CoreState *st, uint64_t gpa, bint write,
                              ql_uc_tlb_entry *res) noexcept nogil:
    """Under the dirty log, a RAM frame or framebuffer page gets WRITE only from a write
    fill, which logs it."""
    cdef uint64_t gfn
    if not st.dirty_log or (res.paddr >> 12) != (gpa >> 12):
        return  # off, or sent elsewhere (the page-table alias logs its own stores)
    if gpa >= st.ram_size:
        if st.lfb_size and st.lfb_base <= gpa < st.lfb_base + st.lfb_size:
            gfn = (gpa - st.lfb_base) >> 12
            if st.vram_dirty[gfn]:
                return
            if write and res.perms & UC_PROT_WRITE:
                mark_vram_dirty(st, gfn)
            else:
                res.perms &= ~UC_PROT_WRITE
        return
    gfn = gpa >> 12
    if st.dirty[gfn]:
        return
    if write and res.perms & UC_PROT_WRITE:
        mark_dirty(st, gfn)
    else:
        res.perms &= ~UC_PROT_WRITE


include "devfast.pxi"
include "mmu_walker.pxi"
include "mmu_shadow.pxi"
include "mmu_track.pxi"
include "mmu_fill.pxi"
include "mmu_unsync.pxi"
include "mmu_ctx.pxi"
include "mmu_audit.pxi"
include "fastevent.pxi"


# Where Unicorn records the address of a refused access (uc_struct.invalid_addr):
# found once by refusing a known unaligned access in a scratch engine and
# looking for that address, never hard-coded.  -1: unknown (CR2 gets the page).
cdef bint _hook_refuse_high(uc_engine *uc, uint64_t vaddr, int access,
                            ql_uc_tlb_entry *result, void *user_data) noexcept nogil:
    if vaddr >= 0x400000 and vaddr < 0x100000000ULL:
        return False
    result.paddr = vaddr & 0xFFFFFFFFULL
    result.perms = UC_PROT_READ | UC_PROT_WRITE | UC_PROT_EXEC
    return True


cdef long _probe_invalid_addr(uint64_t target, long known) except -2:
    cdef uc_hook hh
    cdef uint8_t *base
    cdef uint64_t v
    cdef long off
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.mem_map(0, 0x200000)
    uc.mem_write(0x1000, b"\xa1" + (<uint32_t>target).to_bytes(4, "little"))
    uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
    cdef uc_engine *eng = <uc_engine *><uintptr_t>uc._uch.value
    _check(uc_hook_add(eng, &hh, UC_HOOK_TLB_FILL, <void *>_hook_refuse_high, NULL, 1, 0))
    try:
        uc.emu_start(0x1000, 0x1005)
    except unicorn.UcError:
        pass
    base = <uint8_t *>eng
    for off in range(0, 4096, 8):
        if known >= 0 and off != known:
            continue
        memcpy(&v, base + off, 8)
        if v == target:
            uc_hook_del(eng, hh)
            return off
    uc_hook_del(eng, hh)
    return -1


cdef long _find_invalid_addr_offset():
    cdef long off
    try:
        off = _probe_invalid_addr(0x00ABCDE7, -1)
        if off >= 0 and _probe_invalid_addr(0x00BCD129, off) == off:
            return off
    except Exception:
        pass
    return -1


cdef long _invalid_addr_offset = _find_invalid_addr_offset()


def fault_address_offset():
    """Offset of Unicorn's refused-access address in its engine struct (-1: unknown)."""
    return _invalid_addr_offset


def engine_has_global_pages():
    """Does the loaded engine carry global pages across CR3 loads (engine patch k)?"""
    return engine_has_tlb_contexts() and uc_ql_tlb_global_stats != NULL


def engine_has_tlb_contexts():
    """Does the loaded engine offer address-space TLB contexts (engine patch i)?"""
    return uc_ql_tlb_ctx_config != NULL and uc_ql_cpu_state != NULL
