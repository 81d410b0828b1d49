# The few Unicorn 2.1 C declarations mmu_core uses.  Only types are declared;
# the functions are reached through pointers resolved at import time from the
# library the ``unicorn`` Python module has already loaded (see _core.pyx), so
# the extension never links against a particular copy of libunicorn.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t

cdef extern from *:
    """
    typedef struct uc_struct uc_engine;
    typedef size_t uc_hook;
    typedef struct { uint64_t paddr; int perms; } ql_uc_tlb_entry;
    typedef struct { uint16_t selector; uint64_t base; uint32_t limit; uint32_t flags; } ql_uc_x86_mmr;
    typedef struct { uint32_t rid; uint64_t value; } ql_uc_x86_msr;
    """
    ctypedef struct uc_engine:
        pass
    ctypedef size_t uc_hook
    ctypedef struct ql_uc_tlb_entry:
        uint64_t paddr
        int perms
    ctypedef struct ql_uc_x86_mmr:
        uint16_t selector
        uint64_t base
        uint32_t limit
        uint32_t flags
    ctypedef struct ql_uc_x86_msr:
        uint32_t rid
        uint64_t value

ctypedef int (*uc_hook_add_t)(uc_engine *uc, uc_hook *hh, int type, void *callback,
                              void *user_data, uint64_t begin, uint64_t end, ...) noexcept nogil
ctypedef int (*uc_hook_del_t)(uc_engine *uc, uc_hook hh) noexcept nogil
ctypedef int (*uc_emu_stop_t)(uc_engine *uc) noexcept nogil
ctypedef int (*uc_mem_map_ptr_t)(uc_engine *uc, uint64_t address, size_t size,
                                 uint32_t perms, void *ptr) noexcept nogil
ctypedef int (*uc_mem_unmap_t)(uc_engine *uc, uint64_t address, size_t size) noexcept nogil
ctypedef int (*uc_ctl_t)(uc_engine *uc, int control, ...) noexcept nogil
ctypedef size_t (*uc_context_size_t)(uc_engine *uc) noexcept nogil
ctypedef int (*uc_context_alloc_t)(uc_engine *uc, void **context) noexcept nogil
ctypedef int (*uc_context_save_t)(uc_engine *uc, void *context) noexcept nogil
ctypedef int (*uc_context_restore_t)(uc_engine *uc, void *context) noexcept nogil
ctypedef int (*uc_context_free_t)(void *context) noexcept nogil
ctypedef int (*uc_reg_read_t)(uc_engine *uc, int regid, void *value) noexcept nogil
ctypedef int (*uc_reg_write_t)(uc_engine *uc, int regid, const void *value) noexcept nogil
ctypedef int (*uc_mem_write_t)(uc_engine *uc, uint64_t address, const void *bytes,
                              size_t size) noexcept nogil
ctypedef int (*uc_reg_read_batch_t)(uc_engine *uc, int *regs, void **vals, int count) noexcept nogil
# qemu_lite's patched engine (patch i); absent from the stock library.
ctypedef uint64_t (*ql_tlb_ctx_tag_t)(void *opaque, uint64_t *current) noexcept nogil
ctypedef int (*uc_ql_tlb_ctx_config_t)(uc_engine *uc, int max, ql_tlb_ctx_tag_t tag,
                                       void *opaque) noexcept nogil
ctypedef void (*uc_ql_tlb_ctx_drop_t)(uc_engine *uc, uint64_t tag, uint64_t mask) noexcept nogil
ctypedef int (*uc_ql_tlb_ctx_stats_t)(uc_engine *uc, uint64_t *out, int n) noexcept nogil
ctypedef void *(*uc_ql_cpu_state_t)(uc_engine *uc) noexcept nogil
# patch k
ctypedef void (*uc_ql_tlb_global_stats_t)(uc_engine *uc, uint64_t *out, int n) noexcept nogil
ctypedef void (*uc_ql_tlb_flush_page_t)(uc_engine *uc, uint64_t vaddr) noexcept nogil
ctypedef bint (*uc_ql_host_page_has_code_t)(uc_engine *uc, void *host) noexcept nogil
ctypedef uint64_t (*uc_cb_mmio_read_t)(uc_engine *uc, uint64_t offset, unsigned size,
                                       void *user_data) noexcept nogil
ctypedef void (*uc_cb_mmio_write_t)(uc_engine *uc, uint64_t offset, unsigned size,
                                    uint64_t value, void *user_data) noexcept nogil
ctypedef int (*uc_mmio_map_t)(uc_engine *uc, uint64_t address, uint64_t size,
                              uc_cb_mmio_read_t read_cb, void *user_data_read,
                              uc_cb_mmio_write_t write_cb, void *user_data_write) noexcept nogil

# Values from unicorn.h / x86.h of Unicorn 2.1.
cdef enum:
    UC_HOOK_INTR = 1 << 0
    UC_HOOK_INSN = 1 << 1
    UC_HOOK_TLB_FILL = 1 << 17
    UC_HOOK_INSN_INVALID = 1 << 14
    UC_MEM_READ = 16
    UC_MEM_WRITE = 17
    UC_MEM_FETCH = 18
    UC_PROT_READ = 1
    UC_PROT_WRITE = 2
    UC_PROT_EXEC = 4
    UC_X86_INS_IN = 218
    UC_X86_INS_OUT = 500
    UC_X86_INS_SYSCALL = 699
    UC_X86_INS_SYSENTER = 700
    UC_X86_INS_CPUID = 113
    # uc_ctl(UC_CTL_WRITE(UC_CTL_TLB_FLUSH, 0)): type 11, 0 args, write (1 << 30)
    UC_CTL_TLB_FLUSH_WRITE = 11 | (1 << 30)
