; BIOS service probe (a test asset; not part of the committed binaries).
; A disk image whose MBR loads the rest with INT 13h AH=02h (CHS), then
; calls each BIOS service and prints the results through INT 10h AH=0Eh,
; one "name: values" line per call (hex).  Ends with "probe: done" and
; writes 0 to port 0xF4.  Sector 8 holds a marker used by the read tests;
; sector 9 is scratch for the write tests.
;
; nasm -f bin -I firmware/guest/ -o probe.img firmware/guest/probe.asm

%define IMAGE_SIZE 65536
BODY equ 0x8000
BODY_SECTORS equ 6
BUF equ 0x9000

section mbr start=0 vstart=0x7C00
        bits 16
        jmp 0x0000:.start
.start:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7C00
        sti
        cld
        mov [drive], dl
        mov ax, 0x0200 + BODY_SECTORS
        mov cx, 0x0002
        xor dh, dh
        mov bx, BODY
        int 0x13
        jc .fail
        jmp 0x0000:BODY
.fail:
        mov al, 0x20
        out 0xF4, al
        cli
        hlt
drive:  db 0
        times 510 - ($ - $$) db 0
        dw 0xAA55

section body follows=mbr vstart=BODY
        jmp start_body
        bits 16
; ---- print helpers (preserve all registers) ----
putc:
        push ax
        push bx
        mov ah, 0x0E
        mov bx, 0x0007
        int 0x10
        pop bx
        pop ax
        ret
puts:                                   ; CS:SI inline string (SI -> text)
        push ax
        push si
.l:     lodsb
        test al, al
        jz .d
        call putc
        jmp .l
.d:     pop si
        pop ax
        ret
%macro STR 1+
        jmp %%skip
%%s:    db %1, 0
%%skip:
        push si
        mov si, %%s
        call puts
        pop si
%endmacro
nl:
        STR 13, 10
        ret
hex4:   ; AL low nibble
        push ax
        and al, 0x0F
        add al, '0'
        cmp al, '9'
        jbe .p
        add al, 7
.p:     call putc
        pop ax
        ret
hex8:   ; AL
        push ax
        ror al, 4
        call hex4
        rol al, 4
        call hex4
        pop ax
        ret
hex16:  ; AX
        xchg al, ah
        call hex8
        xchg al, ah
        call hex8
        ret
hex32:  ; EAX
        ror eax, 16
        call hex16
        ror eax, 16
        call hex16
        ret
cf_out: ; print " CF=x" from the saved flags in [flags]
        push ax
        STR " CF="
        mov al, [flags]
        and al, 1
        call hex4
        pop ax
        ret
ah_bx_out: ; print " ah=XX bx=XXXX CF=x" and a newline
        STR " ah="
        mov al, ah
        call hex8
        STR " bx="
        mov ax, bx
        call hex16
        call cf_out
        jmp nl
%macro SAVEF 0
        pushf
        pop word [flags]
%endmacro

start_body:
; ---- INT 11h / 12h ----
        int 0x11
        STR "int11: ax="
        call hex16
        call nl
        int 0x12
        STR "int12: ax="
        call hex16
        call nl
; ---- INT 10h ----
        mov ah, 0x0F
        int 0x10
        STR "int10/0f: ax="
        call hex16
        STR " bh="
        mov al, bh
        call hex8
        call nl
        mov cx, 0x1234
        mov dx, 0x5678
        mov ah, 0x03
        mov bh, 0
        int 0x10
        STR "int10/03: cx="
        mov ax, cx
        call hex16
        STR " dx="
        mov ax, dx
        call hex16
        call nl
        mov ax, 0x1200
        mov bl, 0x10
        int 0x10
        STR "int10/12: bl="
        mov al, bl
        call hex8
        call nl
        push es
        push bp
        push cs
        pop es
        mov bp, s13
        mov ax, 0x1301
        mov bx, 0x0007
        mov cx, s13_len
        xor dx, dx
        int 0x10
        mov bp, s13a
        mov ax, 0x1302
        mov cx, s13a_len
        int 0x10
        pop bp
        pop es
        jmp after13
s13:    db "int10/13: text"
s13_len equ $ - s13
s13a:   db " ", 7, "o", 7, "k", 7, 13, 7, 10, 7
s13a_len equ ($ - s13a) / 2
after13:
; ---- INT 13h ----
        mov ah, 0x08
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/08: ax="
        call hex16
        STR " cx="
        mov ax, cx
        call hex16
        STR " dx="
        mov ax, dx
        call hex16
        call cf_out
        call nl
        mov ah, 0x15
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/15: ah="
        mov al, ah
        call hex8
        STR " cx:dx="
        mov ax, cx
        call hex16
        mov ax, dx
        call hex16
        call cf_out
        call nl
        mov ah, 0x41
        mov bx, 0x55AA
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/41: ah="
        mov al, ah
        call hex8
        STR " bx="
        mov ax, bx
        call hex16
        STR " cx="
        mov ax, cx
        call hex16
        call cf_out
        call nl
        mov word [edd], 0x1E
        mov si, edd
        mov ah, 0x48
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/48: size="
        mov ax, [edd]
        call hex16
        STR " flags="
        mov ax, [edd + 2]
        call hex16
        STR " c/h/s="
        mov eax, [edd + 4]
        call hex32
        mov al, '/'
        call putc
        mov eax, [edd + 8]
        call hex32
        mov al, '/'
        call putc
        mov eax, [edd + 12]
        call hex32
        STR " sectors="
        mov eax, [edd + 16]
        call hex32
        STR " bps="
        mov ax, [edd + 24]
        call hex16
        call cf_out
        call nl
        ; AH=02h: sector 8 (LBA 7) -> BUF, marker check
        mov dword [BUF], 0
        mov ax, 0x0201
        mov cx, 0x0008
        mov dx, 0x0080
        mov bx, BUF
        int 0x13
        SAVEF
        STR "int13/02: ax="
        call hex16
        STR " data="
        mov eax, [BUF]
        call hex32
        call cf_out
        call nl
        ; AH=42h: LBA 7, 2 sectors at 1000:0000 (across a 64 KiB boundary for fun)
        mov word [dap + 2], 2
        mov word [dap + 4], 0xFF00
        mov word [dap + 6], 0x0F00
        mov dword [dap + 8], 7
        mov si, dap
        mov ah, 0x42
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/42: ah="
        mov al, ah
        call hex8
        STR " count="
        mov ax, [dap + 2]
        call hex16
        STR " data="
        push ds
        push word 0x0F00
        pop ds
        mov eax, [0xFF00]
        pop ds
        call hex32
        call cf_out
        call nl
        ; AH=03h: write a pattern to sector 10 (LBA 9), read back with AH=42h
        mov dword [BUF], 0xC0FFEE42
        mov ax, 0x0301
        mov cx, 0x000A
        mov dx, 0x0080
        mov bx, BUF
        int 0x13
        SAVEF
        STR "int13/03: ax="
        call hex16
        call cf_out
        mov dword [BUF], 0
        mov word [dap + 2], 1
        mov word [dap + 4], BUF
        mov word [dap + 6], 0
        mov dword [dap + 8], 9
        mov si, dap
        mov ah, 0x42
        mov dl, 0x80
        int 0x13
        STR " readback="
        mov eax, [BUF]
        call hex32
        call nl
        ; AH=43h: write through the extensions, read back with AH=02h
        mov dword [BUF], 0x43434343
        mov si, dap
        mov ax, 0x4300
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/43: ah="
        mov al, ah
        call hex8
        call cf_out
        mov dword [BUF], 0
        mov ax, 0x0201
        mov cx, 0x000A
        mov dx, 0x0080
        mov bx, BUF
        int 0x13
        STR " readback="
        mov eax, [BUF]
        call hex32
        call nl
        ; reading past the end of the disk fails
        mov word [dap + 2], 1
        mov dword [dap + 8], 0x10000
        mov si, dap
        mov ah, 0x42
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/42 past end: ah="
        mov al, ah
        call hex8
        call cf_out
        call nl
        mov ah, 0x01
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/01: ah="
        mov al, ah
        call hex8
        call cf_out
        call nl
        ; absent drive
        mov ax, 0x0201
        mov cx, 0x0001
        mov dx, 0x0081
        mov bx, BUF
        int 0x13
        SAVEF
        STR "int13/02 drive 81: ah="
        mov al, ah
        call hex8
        call cf_out
        call nl
        mov ah, 0x00
        mov dl, 0x80
        int 0x13
        SAVEF
        STR "int13/00: ah="
        mov al, ah
        call hex8
        call cf_out
        call nl
; ---- INT 15h ----
        xor ebx, ebx
.e820:
        mov eax, 0xE820
        mov edx, 0x534D4150
        mov ecx, 24
        mov di, e820buf
        int 0x15
        SAVEF
        STR "int15/e820: "
        test byte [flags], 1
        jnz .e820_err
        cmp eax, 0x534D4150
        jne .e820_err
        mov eax, [e820buf + 4]
        call hex32
        mov eax, [e820buf]
        call hex32
        mov al, '+'
        call putc
        mov eax, [e820buf + 12]
        call hex32
        mov eax, [e820buf + 8]
        call hex32
        STR " type="
        mov eax, [e820buf + 16]
        call hex8
        STR " ecx="
        mov ax, cx
        call hex8
        call nl
        test ebx, ebx
        jnz .e820
        jmp .e820_done
.e820_err:
        STR "error"
        call nl
.e820_done:
        mov ax, 0xE801
        int 0x15
        SAVEF
        push ax
        STR "int15/e801: ax="
        pop ax
        call hex16
        STR " bx="
        mov ax, bx
        call hex16
        STR " cx="
        mov ax, cx
        call hex16
        STR " dx="
        mov ax, dx
        call hex16
        call cf_out
        call nl
        mov ah, 0x88
        int 0x15
        SAVEF
        STR "int15/88: ax="
        call hex16
        call cf_out
        call nl
        mov ax, 0x2403
        int 0x15
        SAVEF
        STR "int15/2403:"
        call ah_bx_out
        mov ax, 0x2402
        int 0x15
        SAVEF
        STR "int15/2402: ax="
        call hex16
        call cf_out
        call nl
        push es
        mov ah, 0xC0
        int 0x15
        SAVEF
        STR "int15/c0: ah="
        mov al, ah
        call hex8
        STR " table="
        mov eax, [es:bx]
        call hex32
        mov eax, [es:bx + 4]
        call hex32
        call cf_out
        call nl
        pop es
        mov ax, 0x5300
        int 0x15
        SAVEF
        STR "int15/5300: ah="
        mov al, ah
        call hex8
        call cf_out
        call nl
; ---- INT 16h ----
        mov ah, 0x01
        int 0x16
        pushf
        pop ax
        STR "int16/01: zf="
        shr ax, 6
        and al, 1
        call hex4
        call nl
        mov ah, 0x02
        int 0x16
        STR "int16/02: al="
        call hex8
        call nl
; ---- INT 1Ah ----
        mov ah, 0x02
        int 0x1A
        SAVEF
        STR "int1a/02: "
        call cf_out
        call nl
        mov ah, 0x04
        int 0x1A
        SAVEF
        STR "int1a/04: century="
        mov al, ch
        call hex8
        call cf_out
        call nl
        mov ah, 0x00
        int 0x1A
        mov [ticks], dx
        mov ecx, 0x00800000
.spin:  in al, 0x80                     ; ~ a few tens of ms at least
        dec ecx
        jnz .spin
        mov ah, 0x00
        int 0x1A
        STR "int1a/00: ticks advanced="
        cmp dx, [ticks]
        mov al, 0
        je .same
        mov al, 1
.same:  call hex4
        call nl
; ---- INT 1Ah B1xxh: PCI BIOS (the i440FX and PIIX3 functions QEMU's pc has too) ----
        mov ax, 0xB101
        int 0x1A
        SAVEF
        STR "pci/01: ax="
        call hex16
        STR " bx="
        mov ax, bx
        call hex16
        STR " cl="
        mov al, cl
        call hex8
        STR " edx="
        mov eax, edx
        call hex32
        call cf_out
        call nl
%macro PCI_FIND 4                       ; label, AX, CX or ECX, DX; SI = index 0
        mov ax, %2
        mov ecx, %3
        mov dx, %4
        xor si, si
        mov bx, 0xEEEE
        int 0x1A
        SAVEF
        STR %1, ":"
        call ah_bx_out
%endmacro
        PCI_FIND "pci/02 i440fx", 0xB102, 0x1237, 0x8086
        PCI_FIND "pci/02 ide", 0xB102, 0x7010, 0x8086
        PCI_FIND "pci/02 ffff", 0xB102, 0x1237, 0xFFFF
        PCI_FIND "pci/03 ide", 0xB103, 0x010180, 0
        mov ax, 0xB109                  ; device ID of 00:00.0
        xor bx, bx
        mov di, 2
        int 0x1A
        SAVEF
        STR "pci/09: cx="
        mov ax, cx
        call hex16
        call cf_out
        call nl
        mov ax, 0xB10A                  ; a dword at a register not 4-aligned
        mov di, 2
        int 0x1A
        SAVEF
        STR "pci/0a odd: ah="
        mov al, ah
        call hex8
        call cf_out
        call nl
        mov ax, 0xB10B                  ; PIIX3 PIRQB route (00:01.0, 61h) = IRQ 5, read back
        mov bx, 0x0008
        mov di, 0x61
        mov cl, 0x05
        int 0x1A
        mov ax, 0xB10A
        mov di, 0x60
        int 0x1A
        SAVEF
        STR "pci/0b+0a: ecx="
        mov eax, ecx
        call hex32
        call cf_out
        call nl
        STR "probe: done"
        call nl
        xor al, al
        out 0xF4, al
.halt:  cli
        hlt
        jmp .halt

flags:  dw 0
ticks:  dw 0
        align 4
dap:    db 0x10, 0
        dw 0, 0, 0
        dq 0
edd:    times 0x1E db 0
e820buf: times 24 db 0
body_end:                               ; (times below fails if the body outgrows its sectors)
        times BODY_SECTORS * 512 - ($ - $$) db 0
; sector 8 (LBA 7) and 9 (LBA 8): markers
        db "MRK7"
        times 508 db 0x77
        db "MRK8"
        times 508 db 0x88
        times IMAGE_SIZE - 512 - (BODY_SECTORS + 2) * 512 db 0
