; #PF delivery round trip: a page whose PTE is not present is touched; the
; guest's #PF handler sets the present bit and returns; the main loop clears
; it again (INVLPG).  FAULTS faults, each delivered through the IDT.
%include "prologue.inc"
%ifndef FAULTS
%define FAULTS 5000
%endif
%define VICTIM 0x400000
main:
    SET_PF_HANDLER pf_handler
    mov eax, cr4
    or eax, 1 << 4
    mov cr4, eax
    mov dword [pgdir], 0x83
    mov dword [pgdir + 4], pt + 3
    mov eax, pgdir
    mov cr3, eax
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)
    mov cr0, eax
    xor ebp, ebp
    mov ecx, FAULTS
.loop:
    mov dword [pt], 0x800000 | 2        ; writable, not present
    invlpg [VICTIM]
    add dword [VICTIM], 1               ; #PF, then retried
    add ebp, [VICTIM]
    loop .loop
    mov eax, ebp
    add eax, [fault_count]
    jmp report

pf_handler:
    inc dword [fault_count]
    or dword [pt], 1
    invlpg [VICTIM]
    add esp, 4
    iret

fault_count: dd 0
align 4096
pgdir: times 1024 dd 0
pt: times 1024 dd 0
