; Page-table isolation (Linux's PTI): every process has two roots, a user
; directory (its user pages and this code only) and a kernel directory (the
; same plus the kernel half, not global).  Each process runs ENTRIES "system
; calls" per slice: user work, a CR3 load to the kernel root, kernel work and
; a CR3 load back, so there are two CR3 loads per kernel entry.
%include "prologue.inc"
%ifndef NPROC
%define NPROC 8
%endif
%define NPAGES 16
%define KPAGES 32
%define ENTRIES 8
%ifndef ROUNDS
%define ROUNDS 100
%endif
%define KBASE 0xC0000000
%define KFRAMES 0x2000000
%define UFRAMES 0x800000
main:
    mov eax, cr4
    or eax, 1 << 4                      ; PSE
    mov cr4, eax
    mov edi, kernel_pt
    mov ebx, KFRAMES | 3                ; not global: PTI kernels drop G
    xor ecx, ecx
.kpte:
    mov [edi + ecx * 4], ebx
    add ebx, 0x1000
    inc ecx
    cmp ecx, KPAGES
    jb .kpte
    xor esi, esi
.build:
    mov edi, esi
    imul edi, 0x3000                    ; user directory, kernel directory, user table
    add edi, tables
    mov dword [edi], 0x83               ; PDE 0: this code (4 MiB)
    mov dword [edi + 0x1000], 0x83
    lea eax, [edi + 0x2000 + 7]
    mov [edi + 4], eax                  ; PDE 1 -> the user table, in both roots
    mov [edi + 0x1000 + 4], eax
    mov dword [edi + 0x1000 + (KBASE >> 22) * 4], kernel_pt + 3
    mov ebx, esi
    shl ebx, 18
    add ebx, UFRAMES | 7
    xor ecx, ecx
.upte:
    mov [edi + 0x2000 + ecx * 4], ebx
    add ebx, 0x1000
    inc ecx
    cmp ecx, NPAGES
    jb .upte
    inc esi
    cmp esi, NPROC
    jb .build
    mov eax, tables
    mov cr3, eax
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)       ; PG, WP
    mov cr0, eax
    xor ebp, ebp                        ; checksum
    mov edx, ROUNDS
.round:
    xor esi, esi
.proc:
    mov edi, esi
    imul edi, 0x3000
    add edi, tables                     ; EDI: user root, EDI + 0x1000: kernel root
    mov cr3, edi
    push edx
    mov edx, ENTRIES
.entry:
    mov ebx, 0x400000
    mov ecx, NPAGES
.user:
    mov eax, [ebx]
    add eax, ecx
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x1000
    loop .user
    lea eax, [edi + 0x1000]             ; kernel entry
    mov cr3, eax
    mov ebx, KBASE
    mov ecx, KPAGES
.kernel:
    mov eax, [ebx]
    add eax, edx
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x1000
    loop .kernel
    mov cr3, edi                        ; kernel exit
    dec edx
    jnz .entry
    pop edx
    inc esi
    cmp esi, NPROC
    jb .proc
    dec edx
    jnz .round
    mov eax, ebp
    jmp report

align 4096
kernel_pt: times 1024 dd 0
tables:
