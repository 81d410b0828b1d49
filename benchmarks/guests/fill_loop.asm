; TLB fill cost (ENGINE_FACTS.md fact 1): 0-64 MiB identity-mapped with 4 KiB pages;
; FLUSHES times, reload CR3 (which flushes Unicorn's TLB) and read one dword
; of each of NPAGES pages from 16 MiB: NPAGES fills a flush, nothing else.
; It makes no assumption about the MMU underneath: under a raw Unicorn engine
; whose fill hook maps linear = physical it computes the same checksum.
%include "prologue.inc"
%ifndef FLUSHES
%define FLUSHES 100
%endif
%ifndef NPAGES
%define NPAGES 8192
%endif
%define TABLES 0x400000                 ; directory + 16 tables (paging off while built)
main:
    mov edi, TABLES
    xor ecx, ecx
.pde:
    lea eax, [ecx + 1]
    shl eax, 12
    add eax, TABLES | 3
    mov [edi + ecx * 4], eax
    inc ecx
    cmp ecx, 16
    jb .pde
    xor ecx, ecx
.pte:
    mov eax, ecx
    shl eax, 12
    or eax, 3
    mov [edi + 0x1000 + ecx * 4], eax
    inc ecx
    cmp ecx, 16 * 1024
    jb .pte
    mov cr3, edi
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    xor ebp, ebp
    mov edx, FLUSHES
.flush:
    mov cr3, edi
    mov ebx, 0x1000000
    mov ecx, NPAGES
.touch:
    add ebp, [ebx]
    add ebp, ecx
    add ebx, 0x1000
    loop .touch
    dec edx
    jnz .flush
    mov eax, ebp
    jmp report
