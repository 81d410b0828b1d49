; A large working set with few context switches: NSPACES address spaces, each
; mapping 128 MiB of virtual space (32 page tables of 4 KiB pages) onto 16 MiB
; of frames (eight virtual pages per frame).  Every pass loads each CR3 once
; and read-modify-writes one dword in every page: 32,768 pages a switch,
; far more than Unicorn's TLB holds, so nearly every touch is a TLB fill.
%include "prologue.inc"
%ifndef PASSES
%define PASSES 16
%endif
%define NSPACES 2
%define NPT 32                          ; page tables per space (128 MiB)
%define VBASE 0x4000000                 ; 64 MiB: PDE 16 onwards
%define FRAMES 0x1000000                ; 16 MiB of frames at 16 MiB
%define TABLES 0x400000                 ; page tables at 4 MiB (paging is off while built)
%define SPACE_BYTES ((NPT + 1) * 0x1000)
main:
    mov eax, cr4
    or eax, 1 << 4                      ; PSE
    mov cr4, eax
    xor esi, esi
.space:
    mov edi, esi
    imul edi, SPACE_BYTES
    add edi, TABLES                     ; the directory; its tables follow
    mov dword [edi], 0x83               ; PDE 0: kernel, 4 MiB PSE
    xor ecx, ecx
.pde:
    lea eax, [ecx + 1]
    shl eax, 12
    add eax, edi
    or eax, 3
    mov [edi + (VBASE >> 22) * 4 + ecx * 4], eax
    inc ecx
    cmp ecx, NPT
    jb .pde
    ; PTEs: virtual page i of space s -> frame (i + 4096 * s / 2 + s) mod 4096
    mov edx, esi
    imul edx, 2049
    xor ecx, ecx
.pte:
    lea eax, [ecx + edx]
    and eax, 4095
    shl eax, 12
    add eax, FRAMES | 3
    mov [edi + 0x1000 + ecx * 4], eax
    inc ecx
    cmp ecx, NPT * 1024
    jb .pte
    inc esi
    cmp esi, NSPACES
    jb .space
    mov eax, TABLES
    mov cr3, eax
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)
    mov cr0, eax
    xor ebp, ebp
    mov edx, PASSES
.pass:
    xor esi, esi
.switch:
    mov eax, esi
    imul eax, SPACE_BYTES
    add eax, TABLES
    mov cr3, eax
    mov ebx, VBASE
    mov ecx, NPT * 1024
.touch:
    mov eax, [ebx]
    add eax, ecx
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x1000
    loop .touch
    inc esi
    cmp esi, NSPACES
    jb .switch
    dec edx
    jnz .pass
    mov eax, ebp
    jmp report
