; Port I/O round trip: COUNT reads of port PORT (IN AL, DX), summed.
%include "prologue.inc"
%ifndef COUNT
%define COUNT 100000
%endif
%ifndef PORT
%define PORT 0x300
%endif
main:
    xor ebp, ebp
    mov dx, PORT
    mov ecx, COUNT
.loop:
    in al, dx
    movzx eax, al
    add ebp, eax
    loop .loop
    mov eax, ebp
    jmp report
