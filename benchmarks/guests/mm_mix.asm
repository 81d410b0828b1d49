; The same process workload under 32-bit paging (-DPAE=0: two levels, PSE
; 4 MiB pages) or PAE (-DPAE=1: PDPT, directories, 2 MiB pages): NPROC
; address spaces, each with a large kernel page at 0, 512 private 4 KiB pages
; at 1 GiB and a 2 MiB stretch of one large page at 2 GiB shared by all.
; Every round switches to each process and read-modify-writes its pages and
; 64 lines of the shared large page.  Both builds print the same checksum.
%include "prologue.inc"
%ifndef PAE
%define PAE 0
%endif
%ifndef NPROC
%define NPROC 4
%endif
%ifndef ROUNDS
%define ROUNDS 800
%endif
%define NPAGES 512
%define PRIVATE 0x1000000               ; process p: 2 MiB of frames at 16 MiB + p * 2 MiB
%define SHARED 0x2000000                ; the shared large page (4 MiB aligned)
%define TABLES 0x400000                 ; 16 KiB of tables per process
%define UVIRT 0x40000000
%define SVIRT 0x80000000
main:
    mov eax, cr4
%if PAE
    or eax, (1 << 5) | (1 << 4)         ; PAE (PSE is implied)
%else
    or eax, 1 << 4                      ; PSE
%endif
    mov cr4, eax
    xor esi, esi
.build:
    mov edi, esi
    shl edi, 14
    add edi, TABLES
    mov edx, esi
    shl edx, 21
    add edx, PRIVATE | 3                ; first private frame, present + writable
%if PAE
    ; +0 PDPT (4 entries), +0x1000 PD for 0-1 GiB, +0x2000 PD for 1-2 GiB,
    ; +0x3000 page table; the PD for 2-3 GiB is shared (shared_pd)
    lea eax, [edi + 0x1001]
    mov [edi], eax
    lea eax, [edi + 0x2001]
    mov [edi + 8], eax
    mov dword [edi + 16], shared_pd + 1
    mov dword [edi + 0x1000], 0x83      ; 0-2 MiB kernel
    mov dword [edi + 0x1008], 0x200083  ; 2-4 MiB kernel
    lea eax, [edi + 0x3003]
    mov [edi + 0x2000], eax
    xor ecx, ecx
.pte:
    mov [edi + 0x3000 + ecx * 8], edx
    add edx, 0x1000
    inc ecx
    cmp ecx, NPAGES
    jb .pte
%else
    ; +0 directory, +0x1000 page table
    mov dword [edi], 0x83               ; 0-4 MiB kernel
    lea eax, [edi + 0x1003]
    mov [edi + (UVIRT >> 22) * 4], eax
    mov dword [edi + (SVIRT >> 22) * 4], SHARED | 0x83
    xor ecx, ecx
.pte:
    mov [edi + 0x1000 + ecx * 4], edx
    add edx, 0x1000
    inc ecx
    cmp ecx, NPAGES
    jb .pte
%endif
    inc esi
    cmp esi, NPROC
    jb .build
%if PAE
    mov dword [shared_pd], SHARED | 0x83
%endif
    mov eax, TABLES
    mov cr3, eax
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)
    mov cr0, eax
    xor ebp, ebp
    mov edx, ROUNDS
.round:
    xor esi, esi
.proc:
    mov eax, esi
    shl eax, 14
    add eax, TABLES
    mov cr3, eax
    mov ebx, UVIRT
    mov ecx, NPAGES
.touch:
    mov eax, [ebx]
    add eax, ecx
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x1000
    loop .touch
    mov ebx, SVIRT
    mov ecx, 64
.shared:
    mov eax, [ebx]
    add eax, esi
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x8000
    loop .shared
    inc esi
    cmp esi, NPROC
    jb .proc
    dec edx
    jnz .round
    mov eax, ebp
    jmp report

align 4096
shared_pd: times 512 dq 0
