# Shared definitions of the shadow MMU (included by _core.pyx before CoreState).
#
# Vocabulary as in KVM: gva/gpa/gfn (guest virtual / physical address / frame),
# gpte (a guest page-table entry), spte (a shadow entry), sp (a shadow page),
# role (what a shadow page caches: paging form, level, quadrant, ...), rmap
# (reverse map: guest frame -> sptes mapping it), walker (the guest page walk).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef inline bint is_canonical48(uint64_t a) noexcept nogil:
    """Bits 63..47 all equal (4-level paging's canonical form)."""
    return (a >> 47) == 0 or (a >> 47) == 0x1FFFF

cdef extern from *:
    """
    #define QL_PT_PRESENT   0x1ULL
    #define QL_PT_WRITABLE  0x2ULL
    #define QL_PT_USER      0x4ULL
    #define QL_PT_ACCESSED  0x20ULL
    #define QL_PT_DIRTY     0x40ULL
    #define QL_PT_PSE       0x80ULL
    #define QL_PT_GLOBAL    0x100ULL
    #define QL_PT64_NX      0x8000000000000000ULL
    #define QL_PHYS_MASK    0xFFFFFFFFFFULL          /* MAXPHYADDR = 40 */
    #define QL_PT64_ADDR    0xFFFFFFFFFF000ULL       /* bits 51:12 of an entry */
    #define QL_CR0_PE       0x1ULL
    #define QL_CR0_WP       0x10000ULL
    #define QL_CR0_PG       0x80000000ULL
    #define QL_CR4_PSE      0x10ULL
    #define QL_CR4_PAE      0x20ULL
    #define QL_CR4_PGE      0x80ULL
    #define QL_CR4_SMEP     0x100000ULL
    #define QL_CR4_SMAP     0x200000ULL
    #define QL_CR4_LA57     0x1000ULL
    #define QL_EFER_LMA     0x400ULL
    #define QL_EFER_NXE     0x800ULL
    #define QL_EFLAGS_AC    0x40000ULL
    #define QL_EFLAGS_VM    0x20000ULL
    /* spte layout (ours: consumed by the fill, not by hardware) */
    #define QL_SPTE_P       0x1ULL      /* present */
    #define QL_SPTE_W       0x2ULL      /* gpte R/W */
    #define QL_SPTE_U       0x4ULL      /* gpte U/S */
    #define QL_SPTE_D       0x40ULL     /* leaf: gpte dirty */
    #define QL_SPTE_LEAF    0x100ULL    /* maps a page (else points to a child sp) */
    #define QL_SPTE_HW_W    0x200ULL    /* 4 KiB leaf: may be written in RAM directly */
    #define QL_SPTE_PREFETCH 0x400ULL   /* 4 KiB leaf made by prefetch, not used yet */
    #define QL_SPTE_G       0x800ULL    /* leaf: gpte global (meaningful under CR4.PGE) */
    #define QL_UC_PROT_GLOBAL 0x100     /* fill perms bit: a global translation (patch k) */
    #define QL_SPTE_NX      0x8000000000000000ULL
    #define QL_SPTE_ADDR    0xFFFFFFFFFF000ULL
    #define QL_ALIAS_BASE   0x10000000000ULL        /* 1 << 40: the page-table write alias */
    #define QL_SP_FREE      0xFFFFFFFFU             /* role of a free shadow page */
    """
    uint64_t PT_PRESENT "QL_PT_PRESENT"
    uint64_t PT_WRITABLE "QL_PT_WRITABLE"
    uint64_t PT_USER "QL_PT_USER"
    uint64_t PT_ACCESSED "QL_PT_ACCESSED"
    uint64_t PT_DIRTY "QL_PT_DIRTY"
    uint64_t PT_PSE "QL_PT_PSE"
    uint64_t PT_GLOBAL "QL_PT_GLOBAL"
    uint64_t PT64_NX "QL_PT64_NX"
    uint64_t PHYS_MASK "QL_PHYS_MASK"
    uint64_t PT64_ADDR "QL_PT64_ADDR"
    uint64_t CR0_PE "QL_CR0_PE"
    uint64_t CR0_WP "QL_CR0_WP"
    uint64_t CR0_PG "QL_CR0_PG"
    uint64_t CR4_PSE "QL_CR4_PSE"
    uint64_t CR4_PAE "QL_CR4_PAE"
    uint64_t CR4_PGE "QL_CR4_PGE"
    uint64_t CR4_SMEP "QL_CR4_SMEP"
    uint64_t CR4_SMAP "QL_CR4_SMAP"
    uint64_t CR4_LA57 "QL_CR4_LA57"
    uint64_t EFER_LMA "QL_EFER_LMA"
    uint64_t EFER_NXE "QL_EFER_NXE"
    uint64_t EFLAGS_AC "QL_EFLAGS_AC"
    uint64_t EFLAGS_VM "QL_EFLAGS_VM"
    uint64_t SPTE_P "QL_SPTE_P"
    uint64_t SPTE_W "QL_SPTE_W"
    uint64_t SPTE_U "QL_SPTE_U"
    uint64_t SPTE_D "QL_SPTE_D"
    uint64_t SPTE_LEAF "QL_SPTE_LEAF"
    uint64_t SPTE_HW_W "QL_SPTE_HW_W"
    uint64_t SPTE_PREFETCH "QL_SPTE_PREFETCH"
    uint64_t SPTE_G "QL_SPTE_G"
    int UC_PROT_GLOBAL "QL_UC_PROT_GLOBAL"
    uint64_t SPTE_NX "QL_SPTE_NX"
    uint64_t SPTE_ADDR "QL_SPTE_ADDR"
    uint64_t ALIAS_BASE "QL_ALIAS_BASE"
    uint32_t SP_FREE "QL_SP_FREE"

# Page-fault error code bits.
cdef enum:
    PFERR_PRESENT = 1
    PFERR_WRITE = 2
    PFERR_USER = 4
    PFERR_RSVD = 8
    PFERR_FETCH = 16

# Access kinds of a fill.
cdef enum:
    ACC_READ = 0
    ACC_WRITE = 1
    ACC_FETCH = 2

# Role bits of a shadow page (what it caches besides its gfn).
cdef enum:
    ROLE_LEVELS_SHIFT = 0     # guest paging levels: 2, 3 or 4
    ROLE_LEVEL_SHIFT = 3      # the level this page is used at: 1..4
    ROLE_QUADRANT_SHIFT = 6   # 7 bits: PT/PD half or quarter of a 32-bit table, PDPT slot
    ROLE_NXE = 1 << 13        # EFER.NXE (changes which gpte bits are reserved)
    ROLE_PSE = 1 << 14        # CR4.PSE (changes what a 32-bit PDE's PS bit means)
    ROLE_DIRECT = 1 << 15     # metaphysical: no guest table behind it (unused: see README)

cdef enum:
    SP_ENTRIES = 512
    MAX_LEVELS = 5
    HASH_BUCKETS = 4096       # power of two
    SP_RESERVE = 6            # free pages guaranteed before a fill descends
    FLOOD_THRESHOLD = 3       # pte writes to an unused page before it is zapped
    FRAME_CODE = 1            # the frame has been fetched from (holds translated code)
    FRAME_UNSYNC = 2          # a leaf table left writable: its shadow pages may be stale
    UNSYNC_MAX = 256          # frames unsync at once (more are trapped as before)
    UNSYNC_GVAS = 8           # writable virtual pages remembered per unsync frame
    ALIAS_SLOTS = 4096        # frames whose alias TLB grants are remembered (by gfn, direct-mapped)
    ALIAS_GVAS = 4            # virtual pages remembered per frame
    ALIAS_EMPTY = 0
    ALIAS_TRACKED = 1
    ALIAS_UNTRACKED = 2

# The paging state a fill works under (read from the CPU at each fill).
cdef struct MmuMode:
    uint64_t cr0
    uint64_t cr3
    uint64_t cr4
    uint64_t efer
    int levels         # 0 (paging off), 2, 3 (PAE), 4 (long mode)
    bint wp
    bint nxe
    bint smep
    bint smap
    bint pse
    int cpl            # -1: not read yet (read lazily from CS / EFLAGS.VM)
    int ac             # -1: not read yet
    uint32_t role_base
    uint64_t a20_mask

# The result of one guest walk (KVM's guest_walker).
cdef struct Walker:
    int levels
    int leaf_level          # level of the entry that mapped the page
    int top_level
    uint64_t gpte[MAX_LEVELS]      # gpte used at each level (index = level)
    uint64_t pte_gpa[MAX_LEVELS]   # where it lives
    uint64_t table_gfn[MAX_LEVELS] # frame of the table holding it
    bint present[MAX_LEVELS]
    uint64_t pdpte                 # PAE: the PDPTE used
    uint64_t pdpte_gpa
    uint64_t page_base             # physical base of the (possibly large) page
    uint64_t page_size
    uint64_t gpa                   # physical address of the 4 KiB page of the gva
    bint writable
    bint user
    bint nx
    bint dirty
    uint32_t error_code

cdef struct ShadowPage:
    uint64_t gfn
    uint32_t role
    uint32_t hash_next       # next page in the hash bucket (0: none)
    uint32_t lru_prev
    uint32_t lru_next
    uint32_t *parents        # parent sptes: (sp index << 9) | entry index
    uint32_t nparents
    uint32_t parents_cap
    uint32_t write_count     # pte writes since the page was last used (flood detection)
    uint32_t npresent
    bint unsync              # level 1 only: entries may lag the guest's (mmu_unsync.pxi)
    uint64_t spt[SP_ENTRIES]

cdef struct UnsyncFrame:
    # A guest leaf table written directly (not trapped) since it became unsync, and
    # the virtual pages through which it was granted write access: those TLB entries
    # go when it is write-protected again.
    uint64_t gfn
    uint32_t ngva
    bint overflow            # more than UNSYNC_GVAS: a whole flush re-protects it
    uint64_t gva[UNSYNC_GVAS]

cdef struct AliasFrame:
    # The virtual pages through which one frame was mapped (mmu_track.pxi):
    # ALIAS_TRACKED, a tracked frame's alias TLB entries (its stores go to the
    # page-table alias), dropped when it stops being tracked; ALIAS_UNTRACKED,
    # every writable RAM entry of a frame since it stopped being tracked, dropped
    # when it is tracked again instead of flushing the whole TLB.
    uint64_t gfn
    uint32_t gen             # tlb_gen of the pages: after a full flush none is left
    uint32_t kind            # ALIAS_EMPTY / ALIAS_TRACKED / ALIAS_UNTRACKED
    uint32_t ngva
    bint overflow            # ALIAS_TRACKED: more than ALIAS_GVAS, the rest are not dropped
    uint64_t gva[ALIAS_GVAS]


cdef struct Rmap:
    uint32_t *refs
    uint32_t len
    uint32_t cap

cdef struct MmuStats:
    uint64_t fills
    uint64_t fills_read
    uint64_t fills_write
    uint64_t fills_fetch
    uint64_t faults
    uint64_t shadow_hits[MAX_LEVELS]
    uint64_t shadow_misses[MAX_LEVELS]
    uint64_t shadow_perm_misses
    uint64_t guest_walks
    uint64_t cr3_loads
    uint64_t roots_reused
    uint64_t roots_created
    uint64_t mode_changes
    uint64_t sp_created
    uint64_t sp_zapped
    uint64_t sp_recycled
    uint64_t sp_found
    uint64_t wp_traps
    uint64_t alias_reads
    uint64_t alias_writes
    uint64_t alias_writes_untracked  # ... to a frame no shadow page caches any more
    uint64_t alias_page_flushes  # alias TLB pages dropped as their frame stopped being tracked
    uint64_t alias_grants_lost   # alias grants forgotten (slot taken, overflow): left in the TLB
    uint64_t retrack_page_flushes  # writable pages dropped as their frame was tracked again
    uint64_t pte_writes
    uint64_t pte_updated
    uint64_t pte_zapped
    uint64_t flood_zaps
    uint64_t rmap_write_protect
    uint64_t tlb_flushes_wp
    uint64_t tlb_flushes_code
    uint64_t code_frames
    uint64_t implicit_supervisor
    uint64_t naive_zap_all
    uint64_t phys_writes_notified
    uint64_t rsvd_faults
    uint64_t noncanonical_faults
    uint64_t ctx_drops          # parked address spaces invalidated by a table change
    uint64_t pte_prefetched     # leaf sptes made from neighbouring gptes at a shadow miss
    uint64_t pte_prefetch_used  # ... that a later fill hit
    uint64_t ctx_taints         # the current TLB lost its right to be parked
    uint64_t unsync_pages       # frames left writable instead of trapping their stores
    uint64_t wp_traps_avoided   # write fills on such frames answered with RAM, not the alias
    uint64_t resyncs            # unsync frames resynced and write-protected again
    uint64_t resync_updates     # sptes a resync found stale and changed or dropped
    uint64_t unsync_stale       # fills that found an unsync leaf spte stale (refreshed first)
    uint64_t unsync_page_flushes  # writable TLB pages dropped at a resync (patch l)
    uint64_t unsync_full_flushes  # resyncs that had to flush the whole TLB

cdef struct Mmu:
    int mode                  # TLB_* of the Core
    uint64_t nframes          # RAM frames
    uint16_t *sp_count        # shadow pages per gfn (> 0: write-tracked)
    uint8_t *frame_flags      # FRAME_CODE
    uint32_t *wgen            # generation when a RAM writable mapping was last granted
    uint32_t *fgen            # same, for writable mappings without EXEC (fast stores)
    uint32_t tlb_gen          # advanced whenever Unicorn's TLB is known empty
    Rmap *rmap
    ShadowPage **sps          # index 0 unused
    uint32_t sp_cap           # max shadow pages (set_max_shadow_pages)
    uint32_t sp_alloc         # slots allocated in sps[] (<= sp_cap)
    uint32_t n_sp
    uint32_t *free_list
    uint32_t n_free
    uint32_t hash[HASH_BUCKETS]
    uint32_t lru_head         # most recently used
    uint32_t lru_tail
    # The paging state of the last fill, and its roots.
    bint have_mode
    uint64_t cur_cr0
    uint64_t cur_cr3
    uint64_t cur_cr4
    uint64_t cur_efer
    uint32_t cur_roots[4]     # long mode / PAE: [0]; 32-bit: one per quadrant
    # The first refused fill of a slice.
    bint fault_pending
    uint64_t fault_addr
    uint32_t fault_error
    bint fault_noncanonical   # a 64-bit access to a non-canonical address: #GP/#SS, not #PF
    # Address-space TLB contexts (engine patch i; mmu_ctx.pxi).
    uc_engine *uc
    bint ctx_on
    int ctx_max
    uint64_t cur_tag          # tag the current Unicorn TLB may be parked under (0: none)
    bint ctx_quiet            # inside zap_sp/zap_all: invalidated already
    int prefetch              # leaf gptes read around a shadow miss (aligned group; 0: off)
    bint global_want          # carry global pages across CR3 loads when contexts allow
    bint global_on            # ... and they do (engine patch k, contexts on)
    bint unsync_on            # leave written leaf tables unsync (mmu_unsync.pxi)
    bint data_exec            # data fills grant EXEC: the engine tracks code pages (patch d)
    UnsyncFrame unsync[UNSYNC_MAX]
    AliasFrame *alias         # ALIAS_SLOTS records of alias TLB grants (mmu_track.pxi)
    bint alias_quiet          # inside zap_all: its caller flushes the whole TLB
    uint32_t n_unsync
    MmuStats stats
