; The Linux pattern: NPROC processes whose page directories share one kernel
; half.  The kernel's page table (KPAGES pages at 3 GiB) is the same frame in
; every directory and its entries are global (CR4.PGE); each process has its
; own user page table (NPAGES pages at 4 MiB).  Every round loads each CR3 in
; turn, touches the process's user pages, then "enters the kernel" and
; touches the kernel pages: a switch keeps the global kernel translations on
; hardware, and Unicorn's TLB refills them after every CR3 load.
%include "prologue.inc"
%ifndef NPROC
%define NPROC 16
%endif
%define NPAGES 64
%define KPAGES 128
%ifndef ROUNDS
%define ROUNDS 150
%endif
%define KBASE 0xC0000000
%define KFRAMES 0x2000000               ; kernel frames at 32 MiB
%define UFRAMES 0x800000                ; user frames at 8 MiB, 256 KiB a process
main:
    mov eax, cr4
    or eax, (1 << 4) | (1 << 7)         ; PSE, PGE
    mov cr4, eax
    mov edi, kernel_pt                  ; the shared kernel table: global pages
    mov ebx, KFRAMES | 0x103            ; P | RW | G
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
    shl edi, 13                         ; 8 KiB per process: directory + user table
    add edi, tables
    mov dword [edi], 0x183              ; PDE 0: this code, a global 4 MiB page
    lea eax, [edi + 0x1000 + 7]
    mov [edi + 4], eax                  ; PDE 1 -> the user table
    mov dword [edi + (KBASE >> 22) * 4], kernel_pt + 3
    mov ebx, esi
    shl ebx, 18
    add ebx, UFRAMES | 7
    xor ecx, ecx
.upte:
    mov [edi + 0x1000 + ecx * 4], ebx
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
    mov eax, esi
    shl eax, 13
    add eax, tables
    mov cr3, eax
    mov ebx, 0x400000
    mov ecx, NPAGES
.user:
    mov eax, [ebx]
    add eax, ecx
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x1000
    loop .user
    mov ebx, KBASE
    mov ecx, KPAGES
.kernel:
    mov eax, [ebx]
    add eax, esi
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x1000
    loop .kernel
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
