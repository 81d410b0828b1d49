; A store-heavy loop over 16 MiB mapped with 4 KiB pages: Unicorn keeps
; stores on its slow path unless the TLB entry has no code mapping (ENGINE_FACTS.md
; fact 12), which the shadow MMU gives to data fills.  Reports a checksum of
; the stored data.
%include "prologue.inc"
%ifndef PASSES
%define PASSES 16
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
.pass:
    mov ebx, 0x1000000
.store:
    mov [ebx], edx
    mov [ebx + 16], edx
    mov [ebx + 32], edx
    mov [ebx + 48], edx
    add ebx, 64
    cmp ebx, 0x2000000
    jb .store
    dec edx
    jnz .pass
    ; checksum: the sum of every 64th dword (what the last pass stored)
    xor eax, eax
    mov ebx, 0x1000000
.sum:
    add eax, [ebx]
    add ebx, 64
    cmp ebx, 0x2000000
    jb .sum
    jmp report
align 4096
pgdir:
