; A store-heavy loop over 16 MiB mapped with 4 KiB pages: Unicorn keeps
; stores on its slow path unless the TLB entry has no code mapping (ENGINE_FACTS.md
; fact 12), which the shadow MMU gives to data fills.  Reports a checksum of
; the stored data.  With -DLOADS=1, the same loop loads instead (a sum of every
; 16th dword; one store a pass changes what the next pass sums).
%include "prologue.inc"
%ifndef PASSES
%define PASSES 16
%endif
%ifndef LOADS
%define LOADS 0
%endif
main:
    ; identity-map 0-32 MiB with 4 KiB pages: 8 page tables after the directory
    mov edi, pgdir
    xor ecx, ecx
.pde:
    mov eax, ecx
    shl eax, 12
    add eax, pgdir + 0x1000 + 3
    mov [edi + ecx * 4], eax
    inc ecx
    cmp ecx, 8
    jb .pde
    xor ecx, ecx
.pte:
    mov eax, ecx
    shl eax, 12
    or eax, 3
    mov [pgdir + 0x1000 + ecx * 4], eax
    inc ecx
    cmp ecx, 8 * 1024
    jb .pte
    mov eax, pgdir
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    mov edx, PASSES
%if LOADS
    xor esi, esi
%endif
.pass:
    mov ebx, 0x1000000
.store:
%if LOADS
    add esi, [ebx]
    add esi, [ebx + 16]
    add esi, [ebx + 32]
    add esi, [ebx + 48]
%else
    mov [ebx], edx
    mov [ebx + 16], edx
    mov [ebx + 32], edx
    mov [ebx + 48], edx
%endif
    add ebx, 64
    cmp ebx, 0x2000000
    jb .store
%if LOADS
    mov [0x1000000], edx                ; one store a pass: the sum depends on the passes
%endif
    dec edx
    jnz .pass
    ; checksum: the sum of every 64th dword (what the last pass stored)
    xor eax, eax
%if LOADS
    mov eax, esi                        ; and what the loads summed
%endif
    mov ebx, 0x1000000
.sum:
    add eax, [ebx]
    add ebx, 64
    cmp ebx, 0x2000000
    jb .sum
    jmp report
align 4096
pgdir:
