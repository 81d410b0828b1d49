; Dirties PAGES pages of RAM (one store each) per round, forever: the workload
; of the snapshot benchmark, which stops it after a round and restores.
%include "prologue.inc"
%ifndef PAGES
%define PAGES 100
%endif
main:
    mov ebx, 0
.round:
    inc ebx
    mov edi, 0x200000
    mov ecx, PAGES
.page:
    mov [edi], ebx
    add edi, 4096
    loop .page
    mov [0x200004], ebx         ; rounds done (in the first page: 100 pages in all)
    jmp .round
