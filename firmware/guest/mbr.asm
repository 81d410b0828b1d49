; Boot sector of the default image (no partition table).  Prints the
; real-mode line through INT 10h, loads stage 2 with INT 13h AH=42h (or
; AH=02h when INT 13h AH=41h reports no extensions) and jumps to it.

        bits 16
mbr:
        jmp 0x0000:.start               ; normalise CS:IP to 0000:7Cxx
.start:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7C00
        sti
        cld
        mov [boot_drive], dl

        mov si, mbr_msg_real
        call bios_puts

%ifndef FORCE_CHS
        mov ah, 0x41                    ; extensions present?
        mov bx, 0x55AA
        mov dl, [boot_drive]
        int 0x13
        jc .chs
        cmp bx, 0xAA55
        jne .chs
        test cl, 0x01
        jz .chs
        mov si, dap                     ; AH=42h extended read
        mov ah, 0x42
        mov dl, [boot_drive]
        int 0x13
        jc .fail
        jmp .loaded
%endif
.chs:
        mov ax, 0x0200 + STAGE2_SECTORS ; AH=02h: read AL sectors
        mov cx, 0x0002                  ; cylinder 0, sector 2
        xor dh, dh                      ; head 0
        mov dl, [boot_drive]
        xor bx, bx
        mov es, bx
        mov bx, STAGE2_ADDR
        int 0x13
        jc .fail
        cmp al, STAGE2_SECTORS
        jne .fail
.loaded:
        mov dl, [boot_drive]
        jmp 0x0000:STAGE2_ADDR

.fail:
        mov si, mbr_msg_fail
        call bios_puts
        mov al, 0x10                    ; exit status 0x21
        out 0xF4, al
.halt:
        cli
        hlt
        jmp .halt

; Zero-terminated string at DS:SI via INT 10h AH=0Eh.
bios_puts:
        lodsb
        test al, al
        jz .done
        mov ah, 0x0E
        mov bx, 0x0007
        int 0x10
        jmp bios_puts
.done:
        ret

boot_drive: db 0x80
dap:
        db 0x10, 0                      ; packet size, reserved
        dw STAGE2_SECTORS               ; sectors
        dw STAGE2_ADDR, 0x0000          ; buffer offset, segment
        dq 1                            ; LBA

mbr_msg_real:   db "qemu_lite default guest: real mode", 13, 10, 0
mbr_msg_fail:   db "default guest: FAILED to load stage 2", 13, 10, 0

        times 510 - ($ - $$) db 0
        dw 0xAA55
