; PIO sector reads: SECTORS sectors from LBA 0 of the primary master, 256 at
; a time (ATA READ SECTORS, 28-bit LBA), each sector polled for DRQ and moved
; by REP INSW into a buffer; the checksum is the sum of all dwords read.
%include "prologue.inc"
%ifndef SECTORS
%define SECTORS 1024
%endif
%define BUFFER 0x200000
main:
    xor ebp, ebp
    xor esi, esi                        ; next LBA
.command:
    mov dx, 0x1F6
    mov eax, esi
    shr eax, 24
    and al, 0x0F
    or al, 0xE0                         ; LBA, master
    out dx, al
    mov dx, 0x1F2
    mov al, 0                           ; 256 sectors
    out dx, al
    mov eax, esi
    mov dx, 0x1F3
    out dx, al
    shr eax, 8
    inc dx
    out dx, al
    shr eax, 8
    inc dx
    out dx, al
    mov dx, 0x1F7
    mov al, 0x20                        ; READ SECTORS
    out dx, al
    mov ebx, 256
.sector:
    mov dx, 0x1F7
.wait:
    in al, dx
    test al, 0x80                       ; BSY
    jnz .wait
    test al, 0x01                       ; ERR
    jnz .error
    test al, 0x08                       ; DRQ
    jz .wait
    mov dx, 0x1F0
    mov edi, BUFFER
    mov ecx, 256
    rep insw
    mov edi, BUFFER
    mov ecx, 128
.sum:
    add ebp, [edi]
    add edi, 4
    loop .sum
    dec ebx
    jnz .sector
    add esi, 256
    cmp esi, SECTORS
    jb .command
    mov eax, ebp
    jmp report
.error:
    mov al, 1
    jmp exit
