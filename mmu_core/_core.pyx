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
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport calloc, free
from cpython.ref cimport PyObject
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED

from mmu_core.includes.unicorn cimport *

import unicorn
from unicorn import x86_const as _x86
from unicorn.unicorn_py3 import unicorn as _ucbinding

# Resolve the C entry points from the libunicorn the Python binding loaded.
_lib = _ucbinding.uclib


cdef uintptr_t _fn(name) except 0:
    return <uintptr_t>ctypes.cast(getattr(_lib, name), ctypes.c_void_p).value


cdef uc_hook_add_t uc_hook_add = <uc_hook_add_t>_fn("uc_hook_add")
cdef uc_hook_del_t uc_hook_del = <uc_hook_del_t>_fn("uc_hook_del")
cdef uc_emu_stop_t uc_emu_stop = <uc_emu_stop_t>_fn("uc_emu_stop")
cdef uc_mem_map_ptr_t uc_mem_map_ptr = <uc_mem_map_ptr_t>_fn("uc_mem_map_ptr")
cdef uc_context_size_t uc_context_size = <uc_context_size_t>_fn("uc_context_size")
cdef uc_context_alloc_t uc_context_alloc = <uc_context_alloc_t>_fn("uc_context_alloc")
cdef uc_context_save_t uc_context_save = <uc_context_save_t>_fn("uc_context_save")
cdef uc_context_restore_t uc_context_restore = <uc_context_restore_t>_fn("uc_context_restore")
cdef uc_context_free_t uc_context_free = <uc_context_free_t>_fn("uc_context_free")
cdef uc_reg_read_t uc_reg_read = <uc_reg_read_t>_fn("uc_reg_read")

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
    C_STOP_KICK = 8        # the clock wants the run loop (timer due, input ready)
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

TLB_NATIVE = 0       # Unicorn's own MMU (UC_TLB_CPU)
TLB_IDENTITY = 1     # UC_TLB_VIRTUAL, linear == physical (no guest paging)

PAGE_SIZE = 4096
cdef uint64_t A20_BIT = 1 << 20


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
    int stop_flags
    int intno
    uint64_t fills
    bint a20_enabled
    # The first CPU event of a slice, captured in the hook: a later phantom
    # fault (Unicorn fetching the emu_start "until" page) overwrites env.
    void *ev_ctx
    int ev_off_error_code
    int ev_off_is_int
    int ev_off_next_eip
    int ev_cr2_reg
    uint32_t ev_error_code
    uint32_t ev_is_int
    uint64_t ev_next_eip
    uint64_t ev_cr2


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
    cdef public object unclaimed_port_log
    cdef object _error
    cdef object _cpuid_handler
    cdef readonly int tlb_mode
    cdef void *_ctx
    cdef size_t _ctx_size

    def __cinit__(self):
        self.st = <CoreState *>calloc(1, sizeof(CoreState))
        if self.st == NULL:
            raise MemoryError()
        self._nhooks = 0

    def __init__(self, uc, uint64_t ram_size, int tlb_mode=0):
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
        self._roms = []
        self._port_handlers = [None]
        self.unclaimed_port_log = None
        self.tlb_mode = tlb_mode
        cdef void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED:
            raise MemoryError(f"cannot allocate {ram_size} bytes of guest RAM")
        st.ram = <uint8_t *>p
        # Conventional memory and the adapter area up to the BIOS window.
        _check(uc_mem_map_ptr(st.uc, 0, 0xF0000, 7, st.ram))
        _check(uc_mem_map_ptr(st.uc, 0x100000, ram_size - 0x100000, 7, st.ram + 0x100000))
        if tlb_mode == 1:
            uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
            self._add_hook(UC_HOOK_TLB_FILL, <void *>_hook_tlb_fill_identity)
        self._add_hook(UC_HOOK_INSN, <void *>_hook_in, UC_X86_INS_IN)
        self._add_hook(UC_HOOK_INSN, <void *>_hook_out, UC_X86_INS_OUT)
        self._add_hook(UC_HOOK_INTR, <void *>_hook_intr)
        self._add_hook(UC_HOOK_INSN_INVALID, <void *>_hook_invalid)
        self._add_hook(UC_HOOK_INSN, <void *>_hook_syscall, UC_X86_INS_SYSCALL)
        self._add_hook(UC_HOOK_INSN, <void *>_hook_sysenter, UC_X86_INS_SYSENTER)

    def __dealloc__(self):
        cdef int i
        if self.st == NULL:
            return
        if self.st.uc != NULL:
            for i in range(self._nhooks):
                uc_hook_del(self.st.uc, self._hooks[i])
        # The engine must not run after this: the Machine drops both together.
        if self._ctx != NULL:
            uc_context_free(self._ctx)
            self._ctx = NULL
        if self.st.ev_ctx != NULL:
            uc_context_free(self.st.ev_ctx)
            self.st.ev_ctx = NULL
        if self.st.ram != NULL:
            munmap(self.st.ram, self.st.ram_size)
        free(self.st)
        self.st = NULL

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
        if len(buf) == 0 or len(buf) % PAGE_SIZE:
            raise ValueError("ROM size must be a non-zero multiple of 4 KiB")
        cdef char *ptr = buf
        _check(uc_mem_map_ptr(self.st.uc, address, len(buf), UC_PROT_READ | UC_PROT_EXEC, ptr))
        self._roms.append(buf)

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

    # -- CPU context surgery ----------------------------------------------------

    def context_save(self):
        """Save the CPU state into a buffer owned by this Core; return it as a writable view.

        The engine's API cannot load segment caches or change CPL in a 64-bit
        engine (DESIGN fact 5); the vCPU edits this buffer and calls
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

    # -- stops ----------------------------------------------------------------

    def request_stop(self, int flag=C_STOP_REQUEST):
        """Stop ``emu_start`` at the next instruction boundary (safe from any thread)."""
        self.st.stop_flags |= flag
        uc_emu_stop(self.st.uc)

    def take_stop(self):
        """Return and clear ``(stop_flags, intno)``."""
        cdef int flags = self.st.stop_flags
        cdef int n = self.st.intno
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


cdef uint32_t _hook_in(uc_engine *uc, uint32_t port, int size, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    cdef uint16_t slot = st.port_slot[port & 0xFFFF]
    cdef uint32_t mask = _size_mask(size)
    if slot == 0:
        st.unclaimed_port_reads += 1
        if st.log_unclaimed:
            with gil:
                _log_unclaimed(<Core>st.owner, port, size, -1)
        return mask
    with gil:
        return _py_port_read(<Core>st.owner, slot, port - st.port_base[port & 0xFFFF], size) & mask


cdef uint32_t _py_port_read(Core core, int slot, uint32_t offset, int size) noexcept:
    try:
        return <uint32_t>(core._port_handlers[slot].io_read(offset, size) & 0xFFFFFFFF)
    except BaseException as exc:
        core._record_error(exc)
        return 0xFFFFFFFF


cdef void _hook_out(uc_engine *uc, uint32_t port, int size, uint32_t value,
                    void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    cdef uint16_t slot = st.port_slot[port & 0xFFFF]
    value &= _size_mask(size)
    if slot == 0:
        st.unclaimed_port_writes += 1
        if st.log_unclaimed:
            with gil:
                _log_unclaimed(<Core>st.owner, port, size, value)
        return
    with gil:
        _py_port_write(<Core>st.owner, slot, port - st.port_base[port & 0xFFFF], size, value)


cdef void _py_port_write(Core core, int slot, uint32_t offset, int size, uint32_t value) noexcept:
    try:
        core._port_handlers[slot].io_write(offset, size, value)
    except BaseException as exc:
        core._record_error(exc)


cdef void _log_unclaimed(Core core, uint32_t port, int size, long value) noexcept:
    try:
        core.unclaimed_port_log(port, size, value)
    except BaseException as exc:
        core._record_error(exc)


cdef void _hook_intr(uc_engine *uc, uint32_t intno, void *user_data) noexcept nogil:
    cdef CoreState *st = <CoreState *>user_data
    cdef char *ctx
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
    return True
