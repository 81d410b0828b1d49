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
        call load_firmware_tables       ; ACPI and MP tables from fw_cfg (tables.inc)
        POST_CODE 0x05

        call pic_init
        call pit_init
        call lapic_virtual_wire
        ; INT 08h exists now: unmask IRQ0 (and keep the cascade, IRQ2, open).
        mov al, 0xFA
        out PIC1_DATA, al
        call kbd_init                   ; PS/2 keyboard: translation on, IRQ1 unmasked
        POST_CODE 0x06

        call option_rom_scan            ; the video BIOS (optrom.inc)
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
        mov word [BDA_CURSOR_SHAPE], 0x0607
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
        E820_ADD TABLES_BASE, 0, 0x100000 - TABLES_BASE, 0, E820_RESERVED
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

; "RAM: N MiB" and one line per ATA/ATAPI device.
print_summary:
        push ds
        mov ax, EBDA_SEG
        mov ds, ax
        mov si, msg_ram
        call puts
        mov eax, [EB_RAM_LO]
        mov ebx, [EB_RAM_HI]
        shrd eax, ebx, 20
        call print_dec
        mov si, msg_mib
        call puts
        cmp byte [EB_FWCFG], 0
        jne .fw
        mov si, msg_nofwcfg
        call puts
.fw:
        mov si, msg_crlf
        call puts
        movzx cx, byte [EB_NDRIVES]
        mov bx, EB_DRIVES
        jcxz .nodrive
.drive:                                 ; "ata1-0: CD-ROM, 9635 blocks, drive E0h"
        mov si, msg_ata
        call puts
        mov al, [bx + D_SLOT]
        shr al, 1
        add al, '0'
        call putc
        mov al, '-'
        call putc
        mov al, [bx + D_SLOT]
        and al, 1
        add al, '0'
        call putc
        mov si, msg_hd
        mov di, msg_sectors
        cmp byte [bx + D_TYPE], DT_ATAPI
        jne .kind
        mov si, msg_cd
        mov di, msg_blocks
.kind:
        call puts
        mov eax, [bx + D_SECTORS]
        call print_dec
        mov si, di
        call puts
        mov al, [bx + D_NUM]
        call print_hex8
        mov si, msg_hcrlf
        call puts
        add bx, D_SIZE
        loop .drive
        jmp .out
.nodrive:
        mov si, msg_no_ata
        call puts
.out:
        pop ds
        ret

; ---------------------------------------------------------------------------
; INT 19h: bootstrap loader.  Boot order: fw_cfg FW_CFG_BOOT_DEVICE ('c'
; hard disk first, 'd' CD-ROM first), else the CMOS boot order QEMU's pc
; machine writes (registers 3Dh, 38h: 2 = hard disk, 3 = CD-ROM), else hard
; disk first.  The other device is tried next; then INT 18h.
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
        call linux_boot                 ; returns if the machine loaded no kernel
        call boot_cd_first
        jc .cd_first
        call boot_net_first
        jne .hd_first
        call boot_bev                   ; -boot n: the option ROMs' BEVs, then the disks
        call boot_hd
        call boot_cd
        int 0x18
.hd_first:
        call boot_hd
        call boot_cd
        call boot_bev
        int 0x18                        ; never returns
.cd_first:
        call boot_cd
        call boot_hd
        call boot_bev
        int 0x18

; The option ROMs' boot entry vectors (optrom.inc, note_bev), in scan order:
; each is far-called with interrupts on; a ROM that cannot boot returns (BIOS
; Boot Specification 1.01, 6.4.4) and the next is tried.  Then back to INT 19h.
boot_bev:
        xor cx, cx                      ; CX = the BEV's index
.next:
        mov ax, EBDA_SEG
        mov ds, ax
        cmp cl, [EB_BEV_COUNT]
        jae .out
        mov bx, cx
        shl bx, 2
        mov si, msg_boot_rom
        call puts
        mov ax, [EB_BEVS + bx + 2]
        call print_hex16
        mov si, msg_hcrlf
        call puts
        push cx
        push word [EB_BEVS + bx + 2]    ; segment ...
        push word [EB_BEVS + bx]        ; ... and offset
        mov bp, sp
        sti
        call far [ss:bp]
        cli
        cld
        add sp, 4
        pop cx
        inc cx
        jmp .next
.out:
        xor ax, ax
        mov ds, ax
        ret

; A kernel the machine loaded for the Linux boot protocol's 16-bit entry
; (boot.rst: setup code at segment S, S:0200h its entry) is named by the fw_cfg
; file "etc/qemu-lite/linuxboot": word S, word SP.  Enter it with interrupts
; off, CS = S + 20h, IP = 0, the other segments = S, SS:SP = S:SP.  Returns if
; there is none.  DS = 0.
linux_boot:
        push ds
        mov ax, EBDA_SEG
        mov ds, ax
        cmp byte [EB_FWCFG], 0
        je .none
        mov si, fwcfg_linuxboot_name
        call fwcfg_find                 ; AX = key, ECX = size
        jc .none
        cmp ecx, 4
        jb .none
        mov si, msg_boot_linux
        call puts
        mov dx, FWCFG_SEL
        out dx, ax
        inc dx
        call fwcfg_read32               ; EBX = SP << 16 | S
        cli
        mov ax, bx
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        shr ebx, 16
        mov ss, ax
        mov sp, bx
        add ax, 0x20
        push ax
        push word 0
        retf
.none:
        pop ds
        ret

fwcfg_linuxboot_name:   db "etc/qemu-lite/linuxboot", 0

; ZF = 1 if fw_cfg's boot device is 'n' (network: QEMU's -boot n).  Call after
; boot_cd_first, which reads it.  Preserves DS.
boot_net_first:
        push ds
        push ax
        mov ax, EBDA_SEG
        mov ds, ax
        cmp byte [EB_BOOTDEV], 'n'
        pop ax
        pop ds
        ret

; CF = 1 if the CD-ROM comes first.  Preserves DS.
boot_cd_first:
        push ds
        mov ax, EBDA_SEG
        mov ds, ax
        mov word [EB_BOOTDEV], 0
        cmp byte [EB_FWCFG], 0
        je .cmos
        mov dx, FWCFG_SEL
        mov ax, FWCFG_BOOT_DEVICE
        out dx, ax
        inc dx
        in al, dx
        mov ah, al
        in al, dx
        xchg al, ah
        mov [EB_BOOTDEV], ax
        cmp al, 'd'
        je .cd
        cmp al, 'c'
        je .hd
.cmos:
        mov al, 0x3D                    ; boot devices 1 (bits 0-3) and 2 (4-7)
        call cmos_read
        mov bl, al
        mov al, 0x38                    ; boot device 3 (bits 4-7)
        call cmos_read
        mov bh, al
        shr bh, 4
        mov cx, 3
.nibble:
        mov al, bl
        and al, 0x0F
        cmp al, 2
        je .hd
        cmp al, 3
        je .cd
        shr bl, 4
        mov al, bh
        shl al, 4
        or bl, al
        xor bh, bh
        loop .nibble
.hd:
        pop ds
        clc
        ret
.cd:
        pop ds
        stc
        ret

; Boot the MBR of drive 80h, if there is one: load LBA 0 to 0000:7C00,
; check 55AAh, jump there with DL = 80h and interrupts enabled.  Returns
; if the disk is absent or not bootable.  DS = ES = 0.
boot_hd:
        cmp byte [BDA_NUM_DISKS], 0
        je .out
        mov si, msg_boot_hd
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
        xor ax, ax                      ; 0000:7C00
        mov bx, BOOT_ADDR
        mov dx, 0x80
        jmp boot_jump
.fail:
        mov si, msg_not_bootable
        call puts
.out:
        ret

; El Torito boot of the first CD-ROM (drive E0h), no-emulation images only:
; boot record volume descriptor at LBA 17 -> boot catalog -> validation
; entry and initial/default entry -> load the image (sector count in
; 512-byte units) to its load segment (0 = 07C0h) and jump to seg:0000 with
; DL = E0h.  Returns if there is no CD or it is not bootable.  DS = ES = 0.
boot_cd:
        mov ax, EBDA_SEG
        mov ds, ax
        mov dl, CD_FIRST_DRIVE
        call select_drive
        jc .out
        mov si, msg_boot_cd
        call puts
        call cd_spin_up                 ; media may have changed since POST
        jc .not_ready
        ; boot record volume descriptor
        mov eax, 17
        call .read_scratch
        jc .fail
        push ds
        push word SCRATCH_SEG
        pop ds
        xor si, si
        cmp byte [si], 0                ; boot record
        jne .no_brvd
        cmp dword [si + 1], 'CD00'
        jne .no_brvd
        cmp word [si + 5], 0x0131       ; '1', version 1
        jne .no_brvd
        push es
        push cs
        pop es
        mov di, el_torito_id
        add si, 7
        mov cx, el_torito_id_len
        repe cmpsb
        pop es
        jne .no_brvd
        mov eax, [0x47]                 ; boot catalog LBA
        pop ds
        call .read_scratch
        jc .fail
        ; validation entry: header 01h, key 55AAh, words sum to 0
        push ds
        push word SCRATCH_SEG
        pop ds
        xor si, si
        cmp byte [si], 0x01
        jne .bad_catalog
        cmp word [si + 0x1E], 0xAA55
        jne .bad_catalog
        xor ax, ax
        mov cx, 16
.sum:
        add ax, [si]
        add si, 2
        loop .sum
        test ax, ax
        jnz .bad_catalog
        ; initial/default entry
        cmp byte [0x20], 0x88           ; bootable
        jne .bad_catalog
        test byte [0x21], 0x0F          ; media type: 0 = no emulation
        jnz .emulation
        mov bx, [0x22]                  ; load segment
        mov cx, [0x26]                  ; sector count (512-byte units)
        mov eax, [0x28]                 ; image LBA
        pop ds
        test bx, bx
        jnz .seg
        mov bx, BOOT_ADDR >> 4
.seg:
        test cx, cx
        jnz .count
        inc cx
.count:
        ; the specification packet INT 13h AX=4B01h returns
        mov byte [EB_ET], 0x13
        mov byte [EB_ET + 1], 0x00      ; no emulation
        mov byte [EB_ET + 2], CD_FIRST_DRIVE
        mov dl, [EB_CUR_SLOT]
        shr dl, 1
        mov [EB_ET + 3], dl             ; controller index
        mov [EB_ET + 4], eax            ; image LBA
        mov dl, [EB_CUR_SLOT]
        and dx, 1
        mov [EB_ET + 8], dx             ; device specification: slave bit
        mov word [EB_ET + 0x0A], 0      ; user buffer segment
        mov [EB_ET + 0x0C], bx          ; load segment
        mov [EB_ET + 0x0E], cx          ; sector count
        mov byte [EB_ET + 0x10], 0
        mov word [EB_ET + 0x11], 0
        ; whole 2048-byte blocks straight to the load segment
        mov es, bx
        xor di, di
        push cx
        shr cx, 2
        jz .tail
        push bx
        push eax
        push cx
        call atapi_read
        pop dx
        pop eax
        pop bx
        jc .fail_pop
        movzx edx, dx
        add eax, edx
        shl dx, 7                       ; blocks -> paragraphs
        add bx, dx
.tail:
        pop cx
        and cx, 3                       ; 512-byte sectors left over
        jz .loaded
        push bx
        push cx
        call .read_scratch
        pop cx
        pop es
        jc .fail
        push ds
        push word SCRATCH_SEG
        pop ds
        xor si, si
        xor di, di
        shl cx, 8                       ; words
        rep movsw
        pop ds
.loaded:
        mov byte [EB_ET_ACTIVE], 1
        mov ax, [EB_ET + 0x0C]          ; load segment:0000
        xor bx, bx
        mov dx, CD_FIRST_DRIVE
        jmp boot_jump
.fail_pop:
        pop cx
        jmp .fail
.emulation:
        pop ds
        mov si, msg_cd_emulation
        jmp .message
.bad_catalog:
        pop ds
        mov si, msg_cd_catalog
        jmp .message
.no_brvd:
        pop ds
        mov si, msg_cd_no_eltorito
        jmp .message
.not_ready:
        mov si, msg_cd_not_ready
        jmp .message
.fail:
        mov si, msg_cd_read_error
.message:
        call puts
.out:
        xor ax, ax
        mov ds, ax
        mov es, ax
        ret

; One 2048-byte block at LBA EAX to SCRATCH_SEG:0000.  DS = EBDA.
.read_scratch:
        push bx
        push es
        push word SCRATCH_SEG
        pop es
        xor di, di
        mov cx, 1
        call atapi_read
        pop es
        pop bx
        ret

; Enter a boot image at AX:BX with DL = boot drive, IF = 1, DS = ES = 0
; and the other general registers 0 (the stack stays at 0000:7000).
boot_jump:
        movzx edx, dl
        push ax
        push bx
        POST_CODE 0x11
        xor eax, eax
        xor ebx, ebx
        xor ecx, ecx
        xor esi, esi
        xor edi, edi
        xor ebp, ebp
        mov ds, ax
        mov es, ax
        sti
        retf

el_torito_id:   db "EL TORITO SPECIFICATION"
el_torito_id_len equ $ - el_torito_id

; ---------------------------------------------------------------------------
; INT 18h: no bootable device.
; ---------------------------------------------------------------------------
int18_handler:
        cli
        cld
        POST_CODE 0xEE
        mov si, msg_noboot
        call puts
        mov dx, PORT_FW_EVENT           ; qemu_lite ends the run here; elsewhere we halt
        mov eax, FW_EVENT_NO_BOOT
        out dx, eax
.halt:
        cli
        hlt
        jmp .halt

%include "serial.inc"
%include "irq.inc"
%include "video.inc"
%include "optrom.inc"
%include "ata.inc"
%include "disk.inc"
%include "system.inc"
%include "keyboard.inc"
%include "clock.inc"
%include "pcibios.inc"
%include "tables.inc"

; ---------------------------------------------------------------------------
; Strings
; ---------------------------------------------------------------------------
msg_banner:     db "qemu_lite BIOS v0", 13, 10, 0
msg_ram:        db "RAM: ", 0
msg_mib:        db " MiB", 0
msg_nofwcfg:    db " (no fw_cfg, assumed)", 0
msg_crlf:       db 13, 10, 0
msg_ata:        db "ata", 0
msg_hd:         db ": disk, ", 0
msg_cd:         db ": CD-ROM, ", 0
msg_sectors:    db " sectors, drive ", 0
msg_blocks:     db " blocks, drive ", 0
msg_hcrlf:      db "h", 13, 10, 0
msg_no_ata:     db "No ATA/ATAPI devices", 13, 10, 0
msg_boot_linux: db "Booting Linux (16-bit entry)", 13, 10, 0
msg_boot_hd:    db "Booting from hard disk 0x80", 13, 10, 0
msg_boot_rom:   db "Booting from the option ROM at segment ", 0
msg_not_bootable: db "Hard disk 0x80: not bootable", 13, 10, 0
msg_boot_cd:    db "Booting from CD-ROM 0xE0", 13, 10, 0
msg_cd_not_ready: db "CD-ROM 0xE0: not ready (no medium?)", 13, 10, 0
msg_cd_no_eltorito: db "CD-ROM 0xE0: no El Torito boot record", 13, 10, 0
msg_cd_catalog: db "CD-ROM 0xE0: no bootable entry in the boot catalog", 13, 10, 0
msg_cd_emulation: db "CD-ROM 0xE0: floppy/hard disk emulation is not supported", 13, 10, 0
msg_cd_read_error: db "CD-ROM 0xE0: read error", 13, 10, 0
msg_noboot:     db "No bootable disk", 13, 10, 0

; The PnP BIOS installation check structure (PnP BIOS Specification 1.0A,
; 4.4), found by a paragraph scan of F0000h or given to option ROMs in ES:DI.
; A PnP-aware ROM then boots through its BEV instead of hooking INT 19h.  No
; PnP BIOS function is implemented: both entries answer 82h (not supported).
%define PNP_ENTRY (pnp_entry - $$)
        align 16
pnp_install:
        db "$PnP", 0x10, 0x21           ; signature, version 1.0, length
        dw 0                            ; control: no event notification
        db (-(0x24 + 0x50 + 0x6E + 0x50 + 0x10 + 0x21 + 2 * ((PNP_ENTRY & 0xFF) + (PNP_ENTRY >> 8)) \
              + 0xF0 + 0x0F + 0xF0 + 0x0F)) & 0xFF
        dd 0                            ; event notification flag address
        dw PNP_ENTRY, BIOS_SEG          ; real-mode entry
        dw PNP_ENTRY                    ; 16-bit protected-mode entry: offset ...
        dd BIOS_SEG << 4                ; ... and code segment base
        dd 0                            ; OEM device identifier
        dw BIOS_SEG                     ; real-mode data segment
        dd BIOS_SEG << 4                ; protected-mode data segment base
pnp_entry:
        mov ax, 0x82                    ; FUNCTION_NOT_SUPPORTED, in either mode
        retf

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
