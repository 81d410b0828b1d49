; Page-table-writing churn, as a kernel's mmap/munmap and fork do it.
; 0-24 MiB are identity-mapped by PSE pages (the "kernel"); PDE 1 (4-8 MiB
; virtual) points at one 4 KiB-page table that the guest rewrites all the time:
;   mmap/munmap: map WINDOW fresh frames, write and read them, unmap (INVLPG);
;   fork + copy-on-write: map COW pages read-only onto shared frames, then
;   write each one: the #PF handler copies the frame into a fresh one, maps it
;   writable and returns, and the write completes.
; Frames come from a ring allocator, so every run takes the same faults.
%include "prologue.inc"
%ifndef ITER
%define ITER 300
%endif
%define WINDOW 16                       ; pages mapped and unmapped per iteration
%define NCOW 16                         ; copy-on-write pages per fork
%define USER 0x400000                   ; the churned 4 MiB of virtual space
%define COW_BASE (USER + 0x100000)
%define SHARED 0x800000                 ; NCOW shared frames (identity-mapped)
%define POOL 0xC00000                   ; ring of POOL_FRAMES frames
%define POOL_FRAMES 1024
main:
    SET_PF_HANDLER pf_handler
    mov eax, cr4
    or eax, 1 << 4                      ; PSE
    mov cr4, eax
    ; directory: PDE 0, 2..5 identity PSE; PDE 1 -> user_pt
    mov dword [pgdir], 0x83
    mov eax, 0x800000 | 0x83
    mov ecx, 2
.pde:
    mov [pgdir + ecx * 4], eax
    add eax, 0x400000
    inc ecx
    cmp ecx, 6
    jb .pde
    mov dword [pgdir + 4], user_pt + 3
    ; the shared frames start with distinct contents
    mov edi, SHARED
    xor eax, eax
    mov ecx, NCOW * 1024
.fill:
    mov [edi], eax
    add eax, 0x01010101
    add edi, 4
    loop .fill
    mov eax, pgdir
    mov cr3, eax
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)       ; PG, WP: supervisor writes honour R/O
    mov cr0, eax
    xor ebp, ebp                        ; checksum
    mov edx, ITER
.iter:
    ; mmap: WINDOW fresh frames at USER
    xor ecx, ecx
.map:
    call alloc_frame
    or eax, 3
    mov [user_pt + ecx * 4], eax
    inc ecx
    cmp ecx, WINDOW
    jb .map
    ; use them
    mov ebx, USER
    xor ecx, ecx
.use:
    mov eax, edx
    xor eax, ecx
    add [ebx + ecx * 8], eax
    add ebp, [ebx + ecx * 8]
    add ebx, 0x1000
    inc ecx
    cmp ecx, WINDOW
    jb .use
    ; munmap
    mov ebx, USER
    xor ecx, ecx
.unmap:
    mov dword [user_pt + ecx * 4], 0
    invlpg [ebx]
    add ebx, 0x1000
    inc ecx
    cmp ecx, WINDOW
    jb .unmap
    ; fork: COW pages read-only onto the shared frames
    mov ebx, COW_BASE
    mov eax, SHARED | 1
    xor ecx, ecx
.fork:
    mov [user_pt + (COW_BASE - USER) / 1024 + ecx * 4], eax
    invlpg [ebx]
    add eax, 0x1000
    add ebx, 0x1000
    inc ecx
    cmp ecx, NCOW
    jb .fork
    ; the child writes: one #PF per page
    mov ebx, COW_BASE
    xor ecx, ecx
.write:
    lea eax, [edx + ecx]
    mov [ebx + ecx * 4], eax            ; faults, the handler copies, retried
    add ebp, [ebx + ecx * 4 + 64]       ; copied data
    add ebx, 0x1000
    inc ecx
    cmp ecx, NCOW
    jb .write
    dec edx
    jnz .iter
    mov eax, ebp
    add eax, [fault_count]
    jmp report

; Next frame of the ring.  Returns its physical address in EAX.
alloc_frame:
    mov eax, [next_frame]
    inc dword [next_frame]
    and eax, POOL_FRAMES - 1
    shl eax, 12
    add eax, POOL
    ret

; #PF: copy-on-write of the page at CR2 (a write to a read-only COW page).
pf_handler:
    pushad
    inc dword [fault_count]
    mov ebx, cr2
    and ebx, ~0xFFF
    mov edi, ebx
    sub edi, USER
    shr edi, 12                         ; PTE index
    mov esi, [user_pt + edi * 4]
    and esi, ~0xFFF                     ; the shared frame (identity-mapped)
    call alloc_frame
    push eax
    push edi
    mov edi, eax
    mov ecx, 1024
    rep movsd
    pop edi
    pop eax
    or eax, 3
    mov [user_pt + edi * 4], eax
    invlpg [ebx]
    popad
    add esp, 4                          ; error code
    iret

fault_count: dd 0
next_frame: dd 0
align 4096
pgdir: times 1024 dd 0
user_pt: times 1024 dd 0
