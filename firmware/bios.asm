; qemu_lite BIOS v0: a 64 KiB real-mode PC BIOS ROM.
;
; The image is mapped at F000:0000 (physical 0xF0000-0xFFFFF, aliased at
; 0xFFFF0000).  The CPU resets to F000:FFF0, which far-jumps to POST.
; Everything works by polling (no hardware interrupt is needed); the PIC and
; PIT are nevertheless programmed and an INT 08h handler keeps the BDA tick
; count once interrupts are delivered.
;
; Assemble:  nasm -f bin -I firmware/bios/ -o bios.bin firmware/bios.asm
; (firmware/build.py does this).  See firmware/README.md for the memory map.

        bits 16
        org 0

%include "defs.inc"

; ---------------------------------------------------------------------------
; The ROM starts with a signature string (handy when looking at dumps).
; ---------------------------------------------------------------------------
rom_start:
        db "qemu_lite BIOS v0", 0

; ---------------------------------------------------------------------------
; POST
; ---------------------------------------------------------------------------
post_entry:
        cli
        cld
        xor ax, ax
        mov ss, ax
        mov sp, POST_STACK
        mov ds, ax
        mov es, ax
        POST_CODE 0x01

        call serial_init
        mov si, msg_banner
        call puts
        POST_CODE 0x02

        call a20_enable

        ; Clear the BDA (0x400-0x5FF) and the EBDA (1 KiB at 0x9FC00).
        xor ax, ax
        mov di, 0x400
        mov cx, 0x100
        rep stosw
        mov ax, EBDA_SEG
        mov es, ax
        xor di, di
        xor ax, ax
        mov cx, 512
        rep stosw
        mov byte [es:EB_SIZE_KB], 1
        xor ax, ax
        mov es, ax
        POST_CODE 0x03

        call setup_ivt
        call setup_bda
        POST_CODE 0x04

        call detect_ram
        call build_e820
        POST_CODE 0x05

        call pic_init
        call pit_init
        call lapic_virtual_wire
        ; INT 08h exists now: unmask IRQ0 (and keep the cascade, IRQ2, open).
        mov al, 0xFA
        out PIC1_DATA, al
        POST_CODE 0x06

        call ata_detect
        POST_CODE 0x07

        call print_summary
        int 0x19                        ; never returns

; ---------------------------------------------------------------------------
; POST helpers
; ---------------------------------------------------------------------------

; Fill all 256 IVT vectors with the default IRET handler, then install the
; interrupt handlers and the hardware IRQ handlers.  ES = 0.
setup_ivt:
        xor di, di
        mov cx, 256
.fill:
        mov ax, default_iret
        stosw
        mov ax, BIOS_SEG
        stosw
        loop .fill
        mov si, ivt_table
.next:
        mov bl, [cs:si]
        mov ax, [cs:si + 1]
        add si, 3
        test ax, ax
        jz .done
        xor bh, bh
        shl bx, 2
        mov [es:bx], ax
        jmp .next
.done:
        ; Vectors that are data pointers on a PC (video parameters, diskette
        ; parameters, graphics font, fixed-disk parameters): null them.
        xor eax, eax
        mov [es:0x1D * 4], eax
        mov [es:0x1E * 4], eax
        mov [es:0x1F * 4], eax
        mov [es:0x41 * 4], eax
        mov [es:0x43 * 4], eax
        mov [es:0x46 * 4], eax
        ret

; (vector, handler offset) pairs; the segment is always BIOS_SEG.
ivt_table:
        db 0x08
        dw int08_handler
        db 0x09
        dw irq1_handler
        db 0x0A
        dw irq_master
        db 0x0B
        dw irq_master
        db 0x0C
        dw irq_master
        db 0x0D
        dw irq_master
        db 0x0E
        dw irq_master
        db 0x0F
        dw irq7_handler
        db 0x10
        dw int10_handler
        db 0x11
        dw int11_handler
        db 0x12
        dw int12_handler
        db 0x13
        dw int13_handler
        db 0x15
        dw int15_handler
        db 0x16
        dw int16_handler
        db 0x18
        dw int18_handler
        db 0x19
        dw int19_handler
        db 0x1A
        dw int1a_handler
        db 0x70
        dw irq8_handler
        db 0x71
        dw irq_slave
        db 0x72
        dw irq_slave
        db 0x73
        dw irq_slave
        db 0x74
        dw irq_slave
        db 0x75
        dw irq_slave
        db 0x76
        dw irq_slave
        db 0x77
        dw irq15_handler
        db 0
        dw 0

; BIOS data area (DS = 0).
setup_bda:
        mov word [BDA_COM1], COM1
        mov word [BDA_EBDA_SEG], EBDA_SEG
        mov word [BDA_EQUIPMENT], EQUIPMENT_WORD
        mov word [BDA_MEM_KB], BASE_MEM_KB
        mov word [BDA_KB_HEAD], 0x1E
        mov word [BDA_KB_TAIL], 0x1E
        mov word [BDA_KB_START], 0x1E
        mov word [BDA_KB_END], 0x3E
        mov byte [BDA_VIDEO_MODE], 3
        mov word [BDA_VIDEO_COLS], 80
        mov word [BDA_VIDEO_PAGESZ], 4000
        mov word [BDA_CRTC_BASE], 0x3D4
        mov byte [BDA_VIDEO_ROWS], 24
        mov word [BDA_CHAR_HEIGHT], 16
        ret

; RAM size from fw_cfg key 0x0003 (after checking the "QEMU" signature of
; key 0x0000); 16 MiB if there is no fw_cfg.  Stores the size, the top of
; RAM below 4 GiB and the amount above 4 GiB in the EBDA.
detect_ram:
        push es
        mov ax, EBDA_SEG
        mov es, ax
        mov dx, FWCFG_SEL
        mov ax, FWCFG_SIGNATURE
        out dx, ax
        inc dx
        call fwcfg_read32
        cmp ebx, 'QEMU'
        jne .fallback
        dec dx
        mov ax, FWCFG_RAM_SIZE
        out dx, ax
        inc dx
        call fwcfg_read32
        mov eax, ebx
        call fwcfg_read32               ; high dword in EBX
        mov byte [es:EB_FWCFG], 1
        jmp .have
.fallback:
        mov eax, DEFAULT_RAM
        xor ebx, ebx
.have:
        ; at least 1 MiB
        test ebx, ebx
        jnz .ok
        cmp eax, 0x100000
        jae .ok
        mov eax, 0x100000
.ok:
        mov [es:EB_RAM_LO], eax
        mov [es:EB_RAM_HI], ebx
        ; Below/above 4 GiB split as QEMU's pc machine does it: all RAM below
        ; 4 GiB if it is under 3.5 GiB, else 3 GiB below and the rest at 4 GiB.
        test ebx, ebx
        jnz .split
        cmp eax, LOWMEM_LIMIT
        jae .split
        mov [es:EB_LOWTOP], eax
        xor eax, eax
        mov [es:EB_HIGH_LO], eax
        mov [es:EB_HIGH_HI], eax
        jmp .done
.split:
        mov dword [es:EB_LOWTOP], LOWMEM_SPLIT
        sub eax, LOWMEM_SPLIT
        sbb ebx, 0
        mov [es:EB_HIGH_LO], eax
        mov [es:EB_HIGH_HI], ebx
.done:
        pop es
        ret

; Read 4 bytes from the fw_cfg data port DX into EBX (little endian).
fwcfg_read32:
        push ax
        push cx
        mov cx, 4
.byte:
        in al, dx
        mov bl, al
        ror ebx, 8
        loop .byte
        pop cx
        pop ax
        ret

; Build the E820 map in the EBDA.
%macro E820_ADD 5                        ; base_lo, base_hi, len_lo, len_hi, type
        mov dword [es:di], %1
        mov dword [es:di + 4], %2
        mov dword [es:di + 8], %3
        mov dword [es:di + 12], %4
        mov dword [es:di + 16], %5
        add di, 20
        inc byte [es:EB_E820_COUNT]
%endmacro

build_e820:
        push es
        mov ax, EBDA_SEG
        mov es, ax
        mov di, EB_E820
        mov byte [es:EB_E820_COUNT], 0
        E820_ADD 0, 0, EBDA_BASE, 0, E820_RAM
        E820_ADD EBDA_BASE, 0, 0x400, 0, E820_RESERVED
        E820_ADD 0xF0000, 0, 0x10000, 0, E820_RESERVED
        mov eax, [es:EB_LOWTOP]
        sub eax, 0x100000
        jbe .no_ext
        E820_ADD 0x100000, 0, eax, 0, E820_RAM
.no_ext:
        E820_ADD 0xFFFF0000, 0, 0x10000, 0, E820_RESERVED
        mov eax, [es:EB_HIGH_LO]
        mov ebx, [es:EB_HIGH_HI]
        mov ecx, eax
        or ecx, ebx
        jz .no_high
        E820_ADD 0, 1, eax, ebx, E820_RAM
.no_high:
        pop es
        ret

; 8259A pair: master vectors 08h-0Fh, slave 70h-77h, cascade on IRQ2,
; 8086 mode, everything masked except the cascade.
pic_init:
        mov al, 0x11                    ; ICW1: edge, cascade, ICW4 needed
        out PIC1_CMD, al
        out PIC2_CMD, al
        mov al, 0x08                    ; ICW2: vector bases
        out PIC1_DATA, al
        mov al, 0x70
        out PIC2_DATA, al
        mov al, 0x04                    ; ICW3: slave on IRQ2 / slave id 2
        out PIC1_DATA, al
        mov al, 0x02
        out PIC2_DATA, al
        mov al, 0x01                    ; ICW4: 8086 mode
        out PIC1_DATA, al
        out PIC2_DATA, al
        mov al, 0xFB                    ; OCW1: mask all but IRQ2
        out PIC1_DATA, al
        mov al, 0xFF
        out PIC2_DATA, al
        ret

; Local APIC in virtual-wire mode so that the 8259's INTR reaches the CPU:
; APIC software-enabled (SVR bit 8, spurious vector FFh), LINT0 = ExtINT,
; LINT1 = NMI, as PC BIOSes leave it (at reset LINT0 is masked, and with the
; APIC enabled in IA32_APIC_BASE that blocks every PIC interrupt).  Skipped
; when CPUID says there is no APIC or IA32_APIC_BASE has it disabled; an
; IA32_APIC_BASE that reads 0 (not implemented) means base 0xFEE00000.  The
; MMIO page is reached from real mode through a 4 GiB FS limit (unreal mode).
lapic_virtual_wire:
        pushfd
        pop eax
        mov ecx, eax
        xor eax, 0x200000               ; EFLAGS.ID toggles: CPUID exists
        push eax
        popfd
        pushfd
        pop eax
        push ecx
        popfd
        cmp eax, ecx
        je .done
        mov eax, 1
        cpuid
        test edx, 1 << 9                ; APIC
        jz .done
        mov ecx, 0x1B                   ; IA32_APIC_BASE
        rdmsr
        mov ebx, eax
        or ebx, edx
        jnz .msr
        mov eax, 0xFEE00800             ; MSR not implemented (reads 0, as in
.msr:                                   ; Unicorn): the architectural default
        test eax, 1 << 11               ; globally enabled
        jz .done
        and eax, 0xFFFFF000
        mov esi, eax
        call unreal_fs
        mov eax, [fs:esi + 0xF0]        ; spurious interrupt vector register
        or eax, 0x1FF                   ; enable, vector FFh
        mov [fs:esi + 0xF0], eax
        mov dword [fs:esi + 0x350], 0x00000700 ; LVT LINT0: ExtINT
        mov dword [fs:esi + 0x360], 0x00000400 ; LVT LINT1: NMI
.done:
        ret

; FS = base 0, limit 4 GiB, in real mode ("unreal" mode).  IF must be 0.
unreal_fs:
        lgdt [cs:rom_gdtr]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp short .pm
.pm:
        mov bx, 0x08
        mov fs, bx
        and al, 0xFE
        mov cr0, eax
        jmp short .rm
.rm:
        xor bx, bx
        mov fs, bx
        ret

        align 8
rom_gdt:
        dq 0
        dq 0x00CF93000000FFFF           ; 08h: data, base 0, 4 GiB, accessed
rom_gdtr:
        dw 15
        dd BIOS_SEG * 16 + rom_gdt

; PIT channel 0: mode 3, divisor 65536 (18.2065 Hz).
pit_init:
        mov al, 0x36
        out PIT_CMD, al
        xor al, al
        out PIT_CH0, al
        out PIT_CH0, al
        ret

; Fast A20 on via port 0x92 (never writing bit 0, the reset bit).
a20_enable:
        in al, PORT_A20
        test al, 0x02
        jnz .done
        or al, 0x02
        and al, 0xFE
        out PORT_A20, al
.done:
        ret

; "RAM: N MiB" and the disk line.
print_summary:
        push es
        mov ax, EBDA_SEG
        mov es, ax
        mov si, msg_ram
        call puts
        mov eax, [es:EB_RAM_LO]
        mov ebx, [es:EB_RAM_HI]
        shrd eax, ebx, 20
        call print_dec
        mov si, msg_mib
        call puts
        cmp byte [es:EB_FWCFG], 0
        jne .fw
        mov si, msg_nofwcfg
        call puts
.fw:
        mov si, msg_crlf
        call puts
        cmp byte [es:EB_DISK_OK], 0
        je .nodisk
        mov si, msg_disk
        call puts
        mov eax, [es:EB_DISK_SECTORS]
        call print_dec
        mov si, msg_sectors
        call puts
        jmp .out
.nodisk:
        mov si, msg_no_ata
        call puts
.out:
        pop es
        ret

; ---------------------------------------------------------------------------
; INT 19h: bootstrap loader.  Load LBA 0 of disk 0x80 to 0000:7C00, check
; 55AA and jump there with DL = 80h and interrupts enabled.
; ---------------------------------------------------------------------------
int19_handler:
        cli
        cld
        xor ax, ax
        mov ss, ax
        mov sp, POST_STACK
        mov ds, ax
        mov es, ax
        POST_CODE 0x10
        mov si, msg_boot
        call puts
        mov word [0x7DFE], 0
        mov ax, 0x0201                  ; read 1 sector
        mov cx, 0x0001                  ; cylinder 0, sector 1
        mov dx, 0x0080                  ; head 0, drive 80h
        mov bx, BOOT_ADDR
        int 0x13
        jc .fail
        cmp word [0x7DFE], 0xAA55
        jne .fail
        POST_CODE 0x11
        xor eax, eax
        xor ebx, ebx
        xor ecx, ecx
        xor esi, esi
        xor edi, edi
        xor ebp, ebp
        mov edx, 0x80
        mov ds, ax
        mov es, ax
        sti
        jmp 0x0000:BOOT_ADDR
.fail:
        int 0x18                        ; never returns

; ---------------------------------------------------------------------------
; INT 18h: no bootable device.
; ---------------------------------------------------------------------------
int18_handler:
        cli
        cld
        POST_CODE 0xEE
        mov si, msg_noboot
        call puts
.halt:
        cli
        hlt
        jmp .halt

%include "serial.inc"
%include "irq.inc"
%include "video.inc"
%include "ata.inc"
%include "disk.inc"
%include "system.inc"
%include "keyboard.inc"
%include "clock.inc"

; ---------------------------------------------------------------------------
; Strings
; ---------------------------------------------------------------------------
msg_banner:     db "qemu_lite BIOS v0", 13, 10, 0
msg_ram:        db "RAM: ", 0
msg_mib:        db " MiB", 0
msg_nofwcfg:    db " (no fw_cfg, assumed)", 0
msg_crlf:       db 13, 10, 0
msg_disk:       db "ATA0 master: ", 0
msg_sectors:    db " sectors", 13, 10, 0
msg_no_ata:     db "ATA0 master: none", 13, 10, 0
msg_boot:       db "Booting from hard disk 0x80", 13, 10, 0
msg_noboot:     db "No bootable disk", 13, 10, 0

rom_code_end:

; ---------------------------------------------------------------------------
; Reset vector at F000:FFF0, BIOS date at F000:FFF5, model byte at FFFE.
; ---------------------------------------------------------------------------
        times 0xFFF0 - ($ - $$) db 0xFF
reset_vector:
        jmp BIOS_SEG:post_entry
        db "01/01/25"
        db 0
        db MODEL_BYTE
        db 0
