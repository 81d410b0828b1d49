; Fork/exec-like: NPROC address spaces, each with its own page directory and
; page table (0-4 MiB: one PSE page for the kernel; 4-5 MiB: NPAGES private
; 4 KiB pages).  Every round loads each CR3 in turn and touches all its pages
; (a context switch per process), and one process "execs": its page table is
; rewritten to point at its other set of frames.  Caching shadow roots
; across CR3 loads pays here; the execs write to shadowed page tables.
%include "prologue.inc"
%ifndef NPROC
%define NPROC 16
%endif
%define NPAGES 256
%ifndef ROUNDS
%define ROUNDS 200
%endif
%ifndef EXEC
%define EXEC 1
%endif
main:
    mov eax, cr4
    or eax, 1 << 4                      ; PSE
    mov cr4, eax
    xor esi, esi                        ; process index
.build:
    mov edi, esi
    shl edi, 13                         ; 8 KiB per process: directory + table
    add edi, tables
    mov dword [edi], 0x83               ; PDE 0: 4 MiB kernel page
    lea eax, [edi + 0x1000 + 3]
    mov [edi + 4], eax                  ; PDE 1 -> the table
    call map_process
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
%if EXEC
    mov eax, edx                        ; exec: process (round mod NPROC) gets new frames
    and eax, NPROC - 1
    xor byte [generation + eax], 1
    push esi
    mov esi, eax
    call map_process
    pop esi
%endif
    xor esi, esi
.proc:
    mov eax, esi
    shl eax, 13
    add eax, tables
    mov cr3, eax
    mov ebx, 0x400000
    mov ecx, NPAGES
.touch:
    mov eax, [ebx]
    add eax, ecx
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x1000
    loop .touch
    inc esi
    cmp esi, NPROC
    jb .proc
    dec edx
    jnz .round
    mov eax, ebp
    jmp report

; Fill the page table of process ESI: 1 MiB of frames at 8 MiB + ESI * 2 MiB
; (+ 1 MiB for generation 1).  Clobbers EAX, EBX, ECX, EDI.
map_process:
    mov edi, esi
    shl edi, 13
    add edi, tables + 0x1000
    mov ebx, esi
    shl ebx, 21
    add ebx, 0x800000
    movzx eax, byte [generation + esi]
    shl eax, 20
    add ebx, eax
    or ebx, 3
    xor ecx, ecx
.pte:
    mov [edi + ecx * 4], ebx
    add ebx, 0x1000
    inc ecx
    cmp ecx, NPAGES
    jb .pte
    ret

generation: times NPROC db 0
align 4096
tables:
