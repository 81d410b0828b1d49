; A guest that keeps changing paging modes: every round it runs under 32-bit
; paging, then PAE, then (LONG=1) long mode, and back, with paging turned off
; between modes as an OS or a boot loader does.  All modes map the same 256
; pages at 1 GiB onto the same frames; the PAE and long-mode directories are
; the same guest frames read with different roles.  A shadow cache keyed by
; role keeps every mode's tables; each mode change costs the others nothing.
%include "prologue.inc"
%ifndef ROUNDS
%define ROUNDS 2000
%endif
%ifndef LONG
%define LONG 1
%endif
%define NPAGES 256
%define FRAMES 0x1000000
%define UVIRT 0x40000000
main:
    ; page tables of both formats for the same mapping
    mov dword [pd32], 0x83                        ; 0-4 MiB kernel (PSE)
    mov dword [pd32 + (UVIRT >> 22) * 4], pt32 + 3
    mov dword [pdpt_pae], pd_lo + 1
    mov dword [pdpt_pae + 8], pd_u + 1
    mov dword [pml4], pdpt_long + 3
    mov dword [pdpt_long], pd_lo + 3
    mov dword [pdpt_long + 8], pd_u + 3
    mov dword [pd_lo], 0x83                       ; 0-2 MiB kernel
    mov dword [pd_lo + 8], 0x200083               ; 2-4 MiB kernel
    mov dword [pd_u], pt64 + 3
    mov eax, FRAMES | 3
    xor ecx, ecx
.pte:
    mov [pt32 + ecx * 4], eax
    mov [pt64 + ecx * 8], eax
    add eax, 0x1000
    inc ecx
    cmp ecx, NPAGES
    jb .pte
    xor ebp, ebp
    mov edx, ROUNDS
.round:
    ; 32-bit paging
    call paging_off
    mov eax, cr4
    and eax, ~(1 << 5)
    or eax, 1 << 4                                ; PSE, no PAE
    mov cr4, eax
    mov eax, pd32
    mov cr3, eax
    call paging_on
    mov edi, 1
    call touch
    ; PAE
    call paging_off
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, pdpt_pae
    mov cr3, eax
    call paging_on
    mov edi, 2
    call touch
%if LONG
    ; long mode: PAE stays on, EFER.LME, then paging on activates it
    call paging_off
    mov eax, pml4
    mov cr3, eax
    push edx                                      ; RDMSR/WRMSR use EDX
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    pop edx
    call paging_on
    jmp 0x18:long_mode
.back_from_long:                                   ; compatibility mode, CS = 0x08
    call paging_off                               ; leaves long mode (LMA = 0)
    push edx
    mov ecx, 0xC0000080
    rdmsr
    and eax, ~(1 << 8)
    wrmsr
    pop edx
%endif
    dec edx
    jnz .round
    call paging_off
    mov eax, ebp
    jmp report

paging_on:
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)
    mov cr0, eax
    ret

paging_off:
    mov eax, cr0
    and eax, ~(1 << 31)
    mov cr0, eax
    ret

; read-modify-write a dword of every page at UVIRT, adding EDI; sum into EBP
touch:
    mov ebx, UVIRT
    mov ecx, NPAGES
.next:
    mov eax, [ebx]
    add eax, edi
    add eax, ecx
    mov [ebx], eax
    add ebp, eax
    add ebx, 0x1000
    loop .next
    ret

%if LONG
bits 64
long_mode:
    mov ebx, UVIRT
    mov ecx, NPAGES
.next:
    mov eax, [rbx]
    add eax, 3
    add eax, ecx
    mov [rbx], eax
    add ebp, eax
    add rbx, 0x1000
    loop .next
    lea rax, [rel main.back_from_long]
    push 0x08
    push rax
    retfq
bits 32
%endif

align 4096
pd32: times 1024 dd 0
pt32: times 1024 dd 0
pml4: times 512 dq 0
pdpt_long: times 512 dq 0
pd_lo: times 512 dq 0
pd_u: times 512 dq 0
pt64: times 512 dq 0
pdpt_pae: times 4 dq 0
