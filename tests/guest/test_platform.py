"""PC platform devices driven by real guest code: PIC, PIT, APIC, IOAPIC, RTC, i8042, fw_cfg."""

from __future__ import annotations

from guestlib import INTERRUPT_HELPERS, protected_mode_guest, run_multiboot_guest

# Remap the 8259 pair to 0x20/0x28 and mask everything but the cascade.
PIC_INIT = """
    PIC_INIT 0xFB, 0xFF
"""

# guestlib's 256-gate IDT, SET_GATE and PIC_INIT macros, jumped over where a body starts.
IDT_256 = "    jmp idt_code\n" + INTERRUPT_HELPERS + "idt_code:\n"


def test_pit_interrupts_wake_hlt_at_the_programmed_rate(assemble, tmp_path):
    """IRQ0 at 100 Hz through the PIC: count ticks across one RTC second."""
    body = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 0x20, irq0
    lidt [idtr]
""" + PIC_INIT + r"""
    mov al, 0xFA              ; unmask IRQ0 (and keep the cascade)
    out 0x21, al
    mov al, 0x34              ; channel 0, lobyte/hibyte, mode 2
    out 0x43, al
    mov ax, 11932             ; 1193182 / 11932 = 100 Hz
    out 0x40, al
    mov al, ah
    out 0x40, al
    sti
    call wait_second_edge     ; align to an RTC seconds boundary
    mov dword [ticks], 0
    call wait_second_edge
    mov eax, [ticks]
    cli
    PRINT "ticks in one second: "
    cmp eax, 97
    jb .bad
    cmp eax, 103
    ja .bad
    PRINT "about 100", 10
    mov al, 0
    call exit
.bad:
    call puthex
    mov al, 10
    call putc
    mov al, 0x33
    call exit

wait_second_edge:             ; hlt until the RTC seconds register changes
    mov al, 0
    out 0x70, al
    in al, 0x71
    mov bl, al
.again:
    hlt
    mov al, 0
    out 0x70, al
    in al, 0x71
    cmp al, bl
    je .again
    ret

irq0:
    inc dword [ticks]
    push eax
    mov al, 0x20
    out 0x20, al
    pop eax
    iret
ticks: dd 0
"""
    # Deterministic time: a loaded host cannot make the vCPU miss PIT periods.
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body), timeout=30,
                                      deterministic=True)
    assert out == "ticks in one second: about 100\n"
    assert result.exit_status == 1


def test_sti_shadow_delays_a_pending_interrupt_by_one_instruction(assemble, tmp_path):
    body = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 0x20, irq0
    lidt [idtr]
""" + PIC_INIT + r"""
    mov al, 0xFA
    out 0x21, al
    mov al, 0x30              ; channel 0, mode 0 (one-shot), count 100
    out 0x43, al
    mov al, 100
    out 0x40, al
    mov al, 0
    out 0x40, al
.poll:                        ; wait with IF=0 until the PIC latches IRQ0 (OCW3: read IRR)
    mov al, 0x0A
    out 0x20, al
    in al, 0x20
    test al, 1
    jz .poll
    mov byte [flag], 0
    sti
    mov byte [flag], 1        ; runs in the STI shadow, before the interrupt
    mov byte [flag], 2
    PRINT "flag seen by handler: "
    mov al, [seen]
    add al, '0'
    call putc
    mov al, 10
    call putc
    mov al, 0
    call exit

irq0:
    mov al, [flag]
    mov [seen], al
    mov al, 0x20
    out 0x20, al
    iret
flag: db 0
seen: db 9
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == "flag seen by handler: 1\n"
    assert result.exit_status == 1


def test_serial_irq4_routed_through_the_ioapic_to_the_local_apic(assemble, tmp_path):
    body = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 0x44, serial_irq
    SET_GATE 0xFF, spurious
    lidt [idtr]
""" + PIC_INIT + r"""
    mov al, 0xFF              ; mask the whole 8259 pair: only the IOAPIC path remains
    out 0x21, al
    mov dword [0xFEE000F0], 0x1FF     ; local APIC: software enable, spurious 0xFF
    mov dword [0xFEC00000], 0x18      ; IOAPIC redirection entry 4 (low dword)
    mov dword [0xFEC00010], 0x44      ; vector 0x44, fixed, edge, unmasked
    mov dword [0xFEC00000], 0x19
    mov dword [0xFEC00010], 0         ; destination APIC ID 0
    mov dx, 0x3FC
    mov al, 0x08              ; MCR.OUT2: let the UART drive its IRQ
    out dx, al
    mov dx, 0x3F9
    mov al, 0x02              ; IER: transmitter holding register empty
    out dx, al
    sti
.wait:
    hlt
    cmp byte [got], 0
    je .wait
    cli
    PRINT "serial interrupt via IOAPIC vector 0x44", 10
    mov al, 0
    call exit

serial_irq:
    mov byte [got], 1
    mov dx, 0x3F9
    xor al, al                ; IER off: the line drops
    out dx, al
    mov dx, 0x3FA
    in al, dx                 ; IIR read clears the THRE interrupt
    mov dword [0xFEE000B0], 0 ; local APIC EOI
    iret
spurious:
    iret
got: db 0
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == "serial interrupt via IOAPIC vector 0x44\n"
    assert result.exit_status == 1


def test_apic_timer_one_shot_and_periodic(assemble, tmp_path):
    body = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 0x40, timer
    SET_GATE 0xFF, spurious
    lidt [idtr]
""" + PIC_INIT + r"""
    mov al, 0xFF
    out 0x21, al
    mov dword [0xFEE000F0], 0x1FF
    mov dword [0xFEE003E0], 0x3       ; divide by 16
    mov dword [0xFEE00320], 0x40      ; one-shot, vector 0x40
    mov dword [0xFEE00380], 100000
    sti
.one:
    hlt
    cmp dword [count], 1
    jb .one
    ; a one-shot timer stays quiet: its current count reads 0
    mov eax, [0xFEE00390]
    test eax, eax
    jnz .bad
    mov dword [0xFEE00320], 0x20040   ; periodic
    mov dword [0xFEE00380], 50000
.many:
    hlt
    cmp dword [count], 6
    jb .many
    mov dword [0xFEE00320], 0x10040   ; masked
    cli
    PRINT "apic timer: one-shot then 5 periodic", 10
    mov al, 0
    call exit
.bad:
    mov al, 0x44
    call exit

timer:
    inc dword [count]
    mov dword [0xFEE000B0], 0
    iret
spurious:
    iret
count: dd 0
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == "apic timer: one-shot then 5 periodic\n"
    assert result.exit_status == 1


def test_i8042_reset_pulse_ends_the_run_under_no_reboot(assemble, tmp_path):
    body = r"""
    PRINT "resetting", 10
    mov al, 0xFE
    out 0x64, al
.spin:
    jmp .spin
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body),
                                      no_reboot=True)
    assert out == "resetting\n"
    assert result.reason == "reset"


def test_fw_cfg_signature_and_ram_size_read_by_the_guest(assemble, tmp_path):
    body = r"""
    mov dx, 0x510
    xor ax, ax                ; FW_CFG_SIGNATURE
    out dx, ax
    mov dx, 0x511
    mov ecx, 4
.sig:
    in al, dx
    call putc
    loop .sig
    mov al, ' '
    call putc
    mov dx, 0x510
    mov ax, 3                 ; FW_CFG_RAM_SIZE
    out dx, ax
    mov dx, 0x511
    xor ebx, ebx
    mov ecx, 4
.size:                        ; low dword, little endian
    in al, dx
    shrd ebx, eax, 8
    loop .size
    mov eax, ebx
    shr eax, 20
    call puthex
    PRINT " MiB", 10
    mov al, 0
    call exit
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body),
                                      memory="48M")
    assert out == "QEMU 00000030 MiB\n"
    assert result.exit_status == 1


def test_rtc_periodic_interrupt_and_time_read(assemble, tmp_path):
    """IRQ 8 at 1024 Hz through the slave 8259; the guest reads the date in BCD."""
    body = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 0x28, irq8
    lidt [idtr]
""" + PIC_INIT + r"""
    mov al, 0xFA              ; master: IRQ0 masked too, cascade open
    or al, 1
    out 0x21, al
    mov al, 0xFE              ; slave: IRQ 8 unmasked
    out 0xA1, al
    mov al, 0x0A              ; register A: rate 6 = 1024 Hz
    out 0x70, al
    mov al, 0x26
    out 0x71, al
    mov al, 0x0B              ; register B: periodic interrupt enable, BCD, 24 h
    out 0x70, al
    mov al, 0x42
    out 0x71, al
    mov al, 0x0C
    out 0x70, al
    in al, 0x71               ; clear pending flags
    sti
.wait:
    hlt
    cmp dword [ticks], 64
    jb .wait
    cli
    PRINT "64 periodic interrupts; date 20"
    mov al, 9                 ; year
    call cmos_hex
    mov al, '-'
    call putc
    mov al, 8                 ; month
    call cmos_hex
    mov al, '-'
    call putc
    mov al, 7                 ; day
    call cmos_hex
    mov al, 10
    call putc
    mov al, 0
    call exit

cmos_hex:                     ; print CMOS register AL as two BCD digits
    out 0x70, al
    in al, 0x71
    push eax
    shr al, 4
    add al, '0'
    call putc
    pop eax
    and al, 0xF
    add al, '0'
    call putc
    ret

irq8:
    push eax
    inc dword [ticks]
    mov al, 0x0C              ; reading register C acknowledges the RTC
    out 0x70, al
    in al, 0x71
    mov al, 0x20              ; EOI to the slave, then the master
    out 0xA0, al
    out 0x20, al
    pop eax
    iret
ticks: dd 0
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body),
                                      rtc_base=1_700_000_000.0)  # 2023-11-14T22:13:20Z
    assert out == "64 periodic interrupts; date 2023-11-14\n"
    assert result.exit_status == 1


def test_self_nmi_is_delivered_with_interrupts_disabled(assemble, tmp_path):
    body = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 2, nmi_handler
    lidt [idtr]
    cli
    mov dword [0xFEE000F0], 0x1FF     ; local APIC on
    mov dword [0xFEE00300], 0x40400   ; ICR: NMI, shorthand self
    PRINT "after NMI: count="
    mov eax, [count]
    call puthex
    mov al, 10
    call putc
    mov al, 0
    call exit

nmi_handler:
    inc dword [count]
    iret
count: dd 0
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == "after NMI: count=00000001\n"
    assert result.exit_status == 1
