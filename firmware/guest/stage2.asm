; Stage 2 of the default image, loaded at 0000:8000 by the MBR.
;
; Real mode -> 32-bit protected mode -> 32-bit paging -> long mode, each
; step reported on COM1 by code running in that mode (the THR is written
; directly, polling LSR.THRE); then the user-mode stage of usermode.asm
; (ring 3, system calls, processes with their own page tables).  Success
; writes 0 to the isa-debug-exit port 0xF4; a failure writes a distinct
; nonzero code:
;   0x10 stage 2 load (MBR)   0x11 A20 did not turn on
;   0x12 paging translation   0x13 CPU lacks long mode
;   0x14 EFER.LMA not set or 64-bit arithmetic wrong
;   0x15-0x1C the user-mode stage (see usermode.asm)

CODE32  equ 0x08
DATA32  equ 0x10
CODE64  equ 0x18
DATA64  equ 0x20

PD32    equ 0x10000                     ; 32-bit page directory
PT32    equ 0x11000                     ; page table: identity 0-4 MiB
ALIAS_PHYS equ 0x12000                  ; page seen through the alias
PT32B   equ 0x13000                     ; page table for 4 MiB-8 MiB
ALIAS_VIRT equ 0x400000                 ; -> ALIAS_PHYS
PML4    equ 0x20000
PDPT    equ 0x21000
PD64    equ 0x22000
PT64    equ 0x23000                     ; identity 0-2 MiB, 4 KiB pages

EXIT_PORT equ 0xF4
COM1_THR  equ 0x3F8
COM1_LSR  equ 0x3FD

; Serial output, one copy per CPU mode.  SI/ESI/RSI -> zero-terminated string.
;
; Code here avoids a byte F4h (HLT) right before a branch target: a VMM that
; recognises HLT by the byte before RIP would take a stop there for one.
%macro SERIAL_ROUTINES 2                ; name suffix, register prefix ('', e, r)
ser_puts%1:
        jmp .first
.next:
        call ser_putc%1
.first:
        lodsb
        test al, al
        jnz .next
        ret
ser_putc%1:
        push %2dx
        push %2cx
        push %2ax
        mov dx, COM1_LSR
        mov ecx, 0x100000
.wait:
        in al, dx
        test al, 0x20
        jnz .ready
        dec ecx
        jnz .wait
.ready:
        pop %2ax
        mov dx, COM1_THR
        out dx, al
        pop %2cx
        pop %2dx
        ret
%endmacro

; ------------------------------------------------------------------ real mode
        bits 16
stage2:
        xor ax, ax
        mov ds, ax
        mov es, ax
        cld
        mov si, msg_enter_pm
        call ser_puts16

        ; fast A20 on (port 92h bit 1, never bit 0)
        in al, 0x92
        test al, 0x02
        jnz .a20_set
        or al, 0x02
        and al, 0xFE
        out 0x92, al
.a20_set:
        ; check: 0000:0600 and FFFF:0610 must be different bytes
        push es
        mov ax, 0xFFFF
        mov es, ax
        mov byte [0x0600], 0x11
        mov byte [es:0x0610], 0x22
        cmp byte [0x0600], 0x11
        pop es
        jne fail_a20

        cli
        lgdt [gdt_desc]
        mov eax, cr0
        or eax, 1                       ; PE
        mov cr0, eax
        jmp CODE32:pm32

fail_a20:
        mov si, msg_fail
        call ser_puts16
        mov al, 0x11
        out EXIT_PORT, al
.halt:
        cli
        hlt
        jmp .halt

        SERIAL_ROUTINES 16, {}

; ------------------------------------------------------ 32-bit protected mode
        bits 32
pm32:
        mov ax, DATA32
        mov ds, ax
        mov es, ax
        mov fs, ax
        mov gs, ax
        mov ss, ax
        mov esp, 0x7C00
        mov eax, cr0
        test eax, 1
        jz fail32_pe
        mov esi, msg_pm_ok
        call ser_puts32

        ; ---- 32-bit paging (4 KiB pages) ----
        mov esi, msg_enable_paging
        call ser_puts32
        mov edi, PD32                   ; clear 0x10000-0x13FFF
        xor eax, eax
        mov ecx, 4 * 4096 / 4
        rep stosd
        mov dword [PD32 + 0], PT32 | 3  ; 0-4 MiB
        mov dword [PD32 + 4], PT32B | 3 ; 4-8 MiB
        mov edi, PT32
        mov eax, 3                      ; present, writable
        mov ecx, 1024
.pt32:
        stosd
        add eax, 0x1000
        loop .pt32
        mov dword [PT32B], ALIAS_PHYS | 3 ; 0x400000 -> 0x12000
        mov eax, PD32
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000              ; PG
        mov cr0, eax
        jmp .paged
.paged:
        ; the alias must reach the same physical page, in both directions
        mov dword [ALIAS_PHYS], 0x5AA5C33C
        cmp dword [ALIAS_VIRT], 0x5AA5C33C
        jne fail32_paging
        mov dword [ALIAS_VIRT + 4], 0x0BADF00D
        cmp dword [ALIAS_PHYS + 4], 0x0BADF00D
        jne fail32_paging
        mov esi, msg_paging_ok
        call ser_puts32

        ; ---- long mode ----
        mov esi, msg_enter_lm
        call ser_puts32
        mov eax, 0x80000000
        cpuid
        cmp eax, 0x80000001
        jb fail32_nolm
        mov eax, 0x80000001
        cpuid
        bt edx, 29                      ; LM
        jnc fail32_nolm

        mov eax, cr0                    ; paging off before touching EFER.LME
        and eax, 0x7FFFFFFF
        mov cr0, eax
        mov edi, PML4                   ; clear 0x20000-0x23FFF
        xor eax, eax
        mov ecx, 4 * 4096 / 4
        rep stosd
        mov dword [PML4], PDPT | 3
        mov dword [PDPT], PD64 | 3
        mov dword [PD64], PT64 | 3
        mov edi, PT64
        mov eax, 3
        mov ecx, 512
.pt64:
        mov [edi], eax                  ; high dword already 0
        add edi, 8
        add eax, 0x1000
        dec ecx
        jnz .pt64
        mov eax, cr4
        or eax, 0x20                    ; PAE
        mov cr4, eax
        mov eax, PML4
        mov cr3, eax
        mov ecx, 0xC0000080             ; EFER
        rdmsr
        or eax, 0x100                   ; LME
        wrmsr
        mov eax, cr0
        or eax, 0x80000001              ; PG | PE
        mov cr0, eax
        jmp CODE64:lm64

fail32_pe:
        mov al, 0x11
        jmp fail32
fail32_paging:
        mov al, 0x12
        jmp fail32
fail32_nolm:
        mov al, 0x13
fail32:
        push eax                        ; AL holds the failure code; printing clobbers it
        mov esi, msg_fail
        call ser_puts32
        pop eax
        out EXIT_PORT, al
.halt:
        cli
        hlt
        jmp .halt

        SERIAL_ROUTINES 32, e

; ------------------------------------------------------------------ long mode
        bits 64
lm64:
        mov ax, DATA64
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov rsp, 0x7C00
        mov ecx, 0xC0000080
        rdmsr
        bt eax, 10                      ; LMA
        jnc fail64
        mov rax, 0x0123456789ABCDEF     ; a 64-bit register really is 64 bits
        mov rbx, rax
        shr rbx, 32
        cmp ebx, 0x01234567
        jne fail64
        mov esi, msg_lm_ok
        call ser_puts64
        call user_stage                 ; usermode.asm: ring 3, processes
        mov esi, msg_done
        call ser_puts64
        xor eax, eax
        out EXIT_PORT, al               ; QEMU exits with status 1
.halt:
        cli
        hlt
        jmp .halt

fail64:
        mov esi, msg_fail
        call ser_puts64
        mov al, 0x14
        out EXIT_PORT, al
        jmp lm64.halt

        SERIAL_ROUTINES 64, r

%include "usermode.asm"

; ---------------------------------------------------------------------- data
        align 8
gdt:
        dq 0
        dq 0x00CF9A000000FFFF           ; 08h: 32-bit code, base 0, 4 GiB
        dq 0x00CF92000000FFFF           ; 10h: data, base 0, 4 GiB
        dq 0x00AF9A000000FFFF           ; 18h: 64-bit code (L = 1)
        dq 0x00CF92000000FFFF           ; 20h: data
        dq 0x00CFFA000000FFFF           ; 28h: 32-bit user code (DPL 3; SYSRET's base)
        dq 0x00CFF2000000FFFF           ; 30h: user data (DPL 3)
        dq 0x00AFFA000000FFFF           ; 38h: 64-bit user code (DPL 3)
        dq 0x0000890310000067           ; 40h: 64-bit TSS at 31000h, limit 67h
        dq 0
gdt_end:
gdt_desc:
        dw gdt_end - gdt - 1
        dd gdt

msg_enter_pm:       db "entering 32-bit protected mode", 13, 10, 0
msg_pm_ok:          db "protected mode: ok", 13, 10, 0
msg_enable_paging:  db "enabling paging", 13, 10, 0
msg_paging_ok:      db "paging: ok", 13, 10, 0
msg_enter_lm:       db "entering long mode", 13, 10, 0
msg_lm_ok:          db "long mode: ok", 13, 10, 0
msg_done:           db "default guest: all stages passed, exiting via isa-debug-exit", 13, 10, 0
msg_fail:           db "default guest: FAILED", 13, 10, 0
