"""One-shot timers re-armed the way Linux's tick code re-arms them, seen by guest code.

The guest counts the interrupts of the PIT in mode 4 (through the 8259 and the local
APIC's ExtINT LINT0, and through the IOAPIC) and of the local APIC's one-shot timer,
while it re-arms them from inside their handlers with counts down to one clock, re-arms
them before they expire and cancels them; after each pattern it waits 110 ms (PIT
counter 2, polled) for interrupts that should not come, then prints the count.  A lost
interrupt leaves the guest halted for good (the run times out); an extra one shows in
the counts.

The PIT's counts of 1-16 clocks (under 14 us) are shorter than the host takes to handle
a port write, so with the real-time clock a whole mode 4 pulse used to fall between the
count write and the look at OUT0: that lost IRQ 0 stalled Linux's one-shot PIT tick."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

GUEST = r"""
    jmp start
%define TMICT (APIC + 0x380)

pit_count: dd 0
pit_goal: dd 0                ; the handler re-arms while pit_count < pit_goal
pit_via_ioapic: dd 0
apic_count: dd 0
apic_goal: dd 0
pit_counts: dw 1, 15, 2, 16, 3, 100, 4, 1000        ; PIT clocks (0.84 us each)
apic_counts: dd 1, 50, 2, 500, 3, 5000, 10, 20000   ; APIC timer ticks (1 ns, divide by 1)

pit_irq:                      ; IRQ 0 (8259 vector 0x20, or IOAPIC vector 0x50)
    push eax
    inc dword [pit_count]
    mov eax, [pit_count]
    cmp eax, [pit_goal]
    jae .eoi
    and eax, 7                ; re-arm from inside the handler
    mov ax, [pit_counts + eax * 2]
    out 0x40, al
    mov al, ah
    out 0x40, al
.eoi:
    cmp dword [pit_via_ioapic], 0
    jne .apic_eoi
    mov al, 0x20
    out 0x20, al
    pop eax
    iret
.apic_eoi:
    mov dword [APIC + 0xB0], 0
    pop eax
    iret

apic_irq:                     ; local APIC timer, vector 0x40
    push eax
    inc dword [apic_count]
    mov eax, [apic_count]
    cmp eax, [apic_goal]
    jae .eoi
    and eax, 7
    mov eax, [apic_counts + eax * 4]
    mov [TMICT], eax
.eoi:
    mov dword [APIC + 0xB0], 0
    pop eax
    iret

ignore_pic:                   ; 8259 spurious IRQ 7: no EOI
    iret
ignore_apic:                  ; APIC spurious vector: no EOI
    iret

%macro REPORT 2               ; label, dword: "label XXXXXXXX\n" after the quiet wait
    sti
    call wait_110ms
    cli
    PRINT %1
    mov eax, [%2]
    call puthex
    mov al, 10
    call putc
%endmacro

start:
    LOAD_GDT
    SET_GATE 0x20, pit_irq
    SET_GATE 0x27, ignore_pic
    SET_GATE 0x40, apic_irq
    SET_GATE 0x50, pit_irq
    SET_GATE 0xFF, ignore_apic
    lidt [idtr]
    mov al, 0x30              ; PIT counter 0 mode 0 without a count: OUT0 low
    out 0x43, al
    PIC_INIT 0xFE, 0xFF       ; IRQ 0 only
    mov dword [APIC + 0xF0], 0x1FF    ; APIC on, spurious vector 0xFF
    mov dword [APIC + 0x350], 0x700   ; LINT0: ExtINT, the 8259 passes through
    mov dword [APIC + 0x3E0], 0xB     ; timer divide by 1
    mov dword [APIC + 0x320], 0x40    ; timer one-shot, vector 0x40

    ; 1. PIT mode 4 re-armed from its handler.  The mode 4 control word raises OUT0
    ; (a rising edge, as on the chip): that first interrupt starts the chain.
    mov dword [pit_goal], 200
    mov al, 0x38
    out 0x43, al
    WAIT_UNTIL pit_count, 200
    REPORT "pit-rearm-in-handler ", pit_count

    ; 2. Re-armed before it expires: 55 ms, then 25 us at once; only the second fires.
    mov dword [pit_goal], 0
    mov ebx, 200
.early:
    inc ebx
    mov al, 0xFF
    out 0x40, al
    out 0x40, al
    mov al, 30
    out 0x40, al
    mov al, 0
    out 0x40, al
.early_wait:
    sti
    hlt
    cli
    cmp [pit_count], ebx
    jb .early_wait
    cmp ebx, 220
    jb .early
    REPORT "pit-rearm-early ", pit_count

    ; 3. Cancelled: 55 ms armed, then the control word again (no count: it stops).
    mov al, 0xFF
    out 0x40, al
    out 0x40, al
    mov al, 0x38
    out 0x43, al
    REPORT "pit-cancelled ", pit_count
    mov al, 50                ; and armed again afterwards
    out 0x40, al
    mov al, 0
    out 0x40, al
    WAIT_UNTIL pit_count, 221
    REPORT "pit-after-cancel ", pit_count

    ; 4. Local APIC one-shot re-armed from its handler.
    mov dword [apic_goal], 200
    mov dword [TMICT], 1000
    WAIT_UNTIL apic_count, 200
    REPORT "apic-rearm-in-handler ", apic_count

    ; 5. Re-armed before it expires: 50 ms, then 2 us at once.
    mov dword [apic_goal], 0
    mov ebx, 200
.apic_early:
    inc ebx
    mov dword [TMICT], 50000000
    mov dword [TMICT], 2000
.apic_early_wait:
    sti
    hlt
    cli
    cmp [apic_count], ebx
    jb .apic_early_wait
    cmp ebx, 220
    jb .apic_early
    REPORT "apic-rearm-early ", apic_count

    ; 6. Cancelled as Linux shuts it down: LVT masked, initial count 0.
    mov dword [TMICT], 50000000
    mov dword [APIC + 0x320], 0x10040
    mov dword [TMICT], 0
    REPORT "apic-cancelled ", apic_count
    mov dword [APIC + 0x320], 0x40

    ; 7. Both at once, each re-armed from its own handler.
    mov dword [pit_goal], 421
    mov dword [apic_goal], 420
    mov al, 10
    out 0x40, al
    mov al, 0
    out 0x40, al
    mov dword [TMICT], 1000
    WAIT_UNTIL pit_count, 421
    WAIT_UNTIL apic_count, 420
    REPORT "both-pit ", pit_count
    PRINT "both-apic "
    mov eax, [apic_count]
    call puthex
    mov al, 10
    call putc

    ; 8. The PIT through the IOAPIC (pin 2, vector 0x50, edge), the 8259 masked.
    mov al, 0xFF
    out 0x21, al
    IOAPIC_ROUTE 2, 0x50, 0
    mov dword [pit_via_ioapic], 1
    mov dword [pit_goal], 521
    mov al, 10
    out 0x40, al
    mov al, 0
    out 0x40, al
    WAIT_UNTIL pit_count, 521
    REPORT "pit-ioapic ", pit_count
    mov al, 0
    call exit
"""

EXPECTED = """\
pit-rearm-in-handler 000000C8
pit-rearm-early 000000DC
pit-cancelled 000000DC
pit-after-cancel 000000DD
apic-rearm-in-handler 000000C8
apic-rearm-early 000000DC
apic-cancelled 000000DC
both-pit 000001A5
both-apic 000001A4
pit-ioapic 00000209
"""


@pytest.mark.parametrize("deterministic", [False, True], ids=["real-time", "deterministic"])
def test_every_rearmed_one_shot_interrupt_arrives_once(assemble, tmp_path, deterministic):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(GUEST, interrupts=True),
                                      timeout=60, deterministic=deterministic)
    assert (result.reason, result.exit_status) == ("exit", 1), (result, out)
    assert out == EXPECTED


# The slice's deadline hand-off: the local APIC's timer (masked) is armed 3 s ahead, so
# the running slice's alarm sleeps towards it; then the PIT is armed 1 ms ahead from
# inside the same slice, and the guest spins with no HLT, so only that earlier deadline
# can end the slice for IRQ 0.  A deadline brought forward while the alarm sleeps on a
# later one must wake it: the handler sees under a second of TSC (2 GHz) since the arming.
HANDOFF = r"""
    jmp start
armed_at: dq 0
pit_irq:
    rdtsc
    sub eax, [armed_at]
    sbb edx, [armed_at + 4]
    cmp edx, 0
    jne .slow
    cmp eax, 2000000000
    jae .slow
    PRINT "irq0 within 1 s"
    jmp .done
.slow:
    PRINT "irq0 late"
.done:
    mov al, 0
    call exit
ignore:
    iret
start:
    LOAD_GDT
    SET_GATE 0x20, pit_irq
    SET_GATE 0x27, ignore
    SET_GATE 0xFF, ignore
    lidt [idtr]
    PIC_INIT 0xFE, 0xFF
    mov dword [APIC + 0xF0], 0x1FF
    mov dword [APIC + 0x350], 0x700      ; LINT0: ExtINT
    mov dword [APIC + 0x3E0], 0xB        ; divide by 1: 1 ns ticks
    mov dword [APIC + 0x320], 0x10040    ; one-shot, masked
    mov dword [APIC + 0x380], 3000000000 ; 3 s
    mov ecx, 1000000
.spin:
    dec ecx
    jnz .spin
    rdtsc
    mov [armed_at], eax
    mov [armed_at + 4], edx
    mov al, 0x30                         ; PIT counter 0, mode 0: 1193 clocks (1 ms)
    out 0x43, al
    mov al, 1193 & 0xFF
    out 0x40, al
    mov al, 1193 >> 8
    out 0x40, al
    sti
.wait:
    jmp .wait
"""


def test_a_deadline_brought_forward_ends_the_running_slice(assemble, tmp_path):
    result, out = run_multiboot_guest(assemble, tmp_path,
                                      protected_mode_guest(HANDOFF, interrupts=True),
                                      timeout=60)
    assert (result.reason, result.exit_status) == ("exit", 1), (result, out)
    assert out == "irq0 within 1 s"
