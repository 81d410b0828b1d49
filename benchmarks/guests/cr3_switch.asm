; NPROC address spaces, each with its own page directory and page table
; (0-4 MiB: one PSE page for the kernel; 4-5 MiB: 256 private 4 KiB pages).
; Every round loads each CR3 in turn and touches all its pages: a workload of
; context switches, where caching shadow roots across CR3 loads pays.
%include "prologue.inc"
%define NPROC 8
%define NPAGES 256
%ifndef ROUNDS
%define ROUNDS 200
%endif
main:
    mov eax, cr4
    or eax, 1 << 4
    mov cr4, eax
    xor esi, esi                        ; process index
.build:
    mov edi, esi
    shl edi, 13                         ; 8 KiB per process: directory + table
    add edi, tables
    mov dword [edi], 0x83               ; PDE 0: 4 MiB kernel page
    lea eax, [edi + 0x1000 + 3]
    mov [edi + 4], eax                  ; PDE 1 -> the table
    xor ecx, ecx
.pte:
    mov eax, esi
    shl eax, 20                         ; 1 MiB of frames per process from 8 MiB
    add eax, 0x800000
    mov ebx, ecx
    shl ebx, 12
    add eax, ebx
    or eax, 3
    mov [edi + 0x1000 + ecx * 4], eax
    inc ecx
    cmp ecx, NPAGES
    jb .pte
    inc esi
    cmp esi, NPROC
    jb .build
    mov eax, tables
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
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
.touch:
    add dword [ebx], 1
    add ebx, 0x1000
    loop .touch
    inc esi
    cmp esi, NPROC
    jb .proc
    dec edx
    jnz .round
    mov al, 0
    jmp exit
align 4096
tables:
