"""The local APIC's TSC-deadline timer (SDM vol. 3, 10.5.4.1), seen by guest code.

The guest finds CPUID.1:ECX.TSC_DEADLINE, puts the LVT timer in mode 10b, arms
IA32_TSC_DEADLINE (0x6E0) from RDTSC, re-arms it from inside the handler, re-arms it
before it fires, gives a deadline already passed, cancels it with 0, leaves the mode
(which disarms it), writes the MSR in one-shot mode (ignored), and moves the TSC
under an armed deadline with IA32_TSC and IA32_TSC_ADJUST (the deadline follows the
TSC: back, it waits; forward past it, it fires at once).  After each step it
waits 110 ms (PIT counter 2, polled) for interrupts that should not come and prints the
count of timer interrupts and what the MSR reads."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

GUEST = r"""
    jmp start
%define LVTT (APIC + 0x320)
%define TSC_DEADLINE 0x6E0

count: dd 0
goal: dd 0                    ; the handler re-arms while count < goal
deltas: dd 1, 200, 20, 2000, 5, 20000, 50, 100000   ; TSC ticks (2 GHz)

arm_in:                       ; eax: TSC ticks from now -> IA32_TSC_DEADLINE
    push ecx
    push edx
    push ebx
    mov ebx, eax
    rdtsc
    add eax, ebx
    adc edx, 0
    mov ecx, TSC_DEADLINE
    wrmsr
    pop ebx
    pop edx
    pop ecx
    ret

timer_irq:
    push eax
    inc dword [count]
    mov eax, [count]
    cmp eax, [goal]
    jae .eoi
    and eax, 7
    mov eax, [deltas + eax * 4]
    call arm_in
.eoi:
    mov dword [APIC + 0xB0], 0
    pop eax
    iret
ignore:
    iret

%macro REPORT 1               ; "label count msr-low\n" after the quiet wait
    sti
    call wait_110ms
    cli
    PRINT %1
    mov eax, [count]
    call puthex
    mov al, ' '
    call putc
    mov ecx, TSC_DEADLINE
    rdmsr
    or eax, edx
    call puthex
    mov al, 10
    call putc
%endmacro

start:
    LOAD_GDT
    SET_GATE 0x40, timer_irq
    SET_GATE 0xFF, ignore
    lidt [idtr]
    PIC_MASK_ALL
    mov eax, 1
    cpuid
    shr ecx, 24
    and ecx, 1
    PRINT "cpuid "
    mov eax, ecx
    call puthex
    mov al, 10
    call putc
    mov dword [APIC + 0xF0], 0x1FF
    mov dword [LVTT], 0x40040         ; TSC-deadline mode, vector 0x40
    mov dword [APIC + 0x380], 1000    ; initial count: ignored in this mode
    PRINT "lvt "
    mov eax, [LVTT]
    call puthex
    mov al, ' '
    call putc
    mov eax, [APIC + 0x380]
    call puthex
    mov al, 10
    call putc

    ; 1. armed 1 s ahead: the MSR reads it back; then re-armed early, 10 us ahead
    mov eax, 2000000000
    call arm_in
    mov ecx, TSC_DEADLINE
    rdmsr
    mov ebx, eax
    rdtsc
    sub ebx, eax              ; deadline - now: still most of a second (> 2^30)
    shr ebx, 30
    PRINT "armed "
    mov eax, ebx
    call puthex
    mov al, 10
    call putc
    mov eax, 20000
    call arm_in
    WAIT_UNTIL count, 1
    REPORT "early "

    ; 2. re-armed from inside the handler, 200 times
    mov dword [goal], 201
    mov eax, 100
    call arm_in
    WAIT_UNTIL count, 201
    REPORT "rearm "
    mov dword [goal], 0

    ; 3. a deadline already passed fires at once
    rdtsc
    sub eax, 1
    sbb edx, 0
    mov ecx, TSC_DEADLINE
    wrmsr
    WAIT_UNTIL count, 202
    REPORT "past "

    ; 4. cancelled by writing 0
    mov eax, 100000000        ; 50 ms
    call arm_in
    xor eax, eax
    xor edx, edx
    mov ecx, TSC_DEADLINE
    wrmsr
    REPORT "cancel "

    ; 5. leaving TSC-deadline mode disarms it
    mov eax, 100000000
    call arm_in
    mov dword [LVTT], 0x40            ; one-shot mode
    REPORT "mode-off "

    ; 6. in one-shot mode the MSR write is ignored
    mov eax, 20000
    call arm_in
    REPORT "ignored "

    ; 7. the deadline compares against the TSC: writing IA32_TSC moves it.  The TSC
    ; first jumps to 2^48; a deadline 10 ms ahead is armed; the TSC goes back 2^32
    ; ticks (2.1 s): the deadline is still armed, unchanged, after the quiet wait.
    mov dword [LVTT], 0x40040
    xor eax, eax
    mov edx, 0x10000
    mov ecx, 0x10             ; IA32_TSC
    wrmsr
    mov eax, 20000000
    call arm_in
    mov ecx, TSC_DEADLINE
    rdmsr
    mov [saved], eax
    mov [saved + 4], edx
    rdtsc
    sub edx, 1
    mov ecx, 0x10
    wrmsr
    sti
    call wait_110ms
    cli
    PRINT "tsc-back "
    mov eax, [count]
    call puthex
    mov al, ' '
    call putc
    mov ecx, TSC_DEADLINE
    rdmsr
    xor eax, [saved]
    xor edx, [saved + 4]
    or eax, edx
    setz al
    movzx eax, al             ; 1: the MSR still reads the deadline
    call puthex
    mov al, 10
    call putc

    ; 8. IA32_TSC_ADJUST forward by 2^32: the TSC passes the deadline, which fires.
    mov ecx, 0x3B
    rdmsr
    add edx, 1
    wrmsr
    WAIT_UNTIL count, 0xCB
    REPORT "adjust-forward "

    ; 9. armed 2.1 s ahead, then IA32_TSC written past it: it fires at once.
    mov eax, 0xFFFFFFFF
    call arm_in
    rdtsc
    add edx, 2
    mov ecx, 0x10
    wrmsr
    WAIT_UNTIL count, 0xCC
    REPORT "tsc-forward "
    mov al, 0
    call exit
saved: dq 0
"""

EXPECTED = """\
cpuid 00000001
lvt 00040040 00000000
armed 00000001
early 00000001 00000000
rearm 000000C9 00000000
past 000000CA 00000000
cancel 000000CA 00000000
mode-off 000000CA 00000000
ignored 000000CA 00000000
tsc-back 000000CA 00000001
adjust-forward 000000CB 00000000
tsc-forward 000000CC 00000000
"""


@pytest.mark.requires_patched_engine("f")
@pytest.mark.parametrize("deterministic", [False, True], ids=["real-time", "deterministic"])
def test_tsc_deadline_timer_fires_at_each_deadline_once(assemble, tmp_path, deterministic):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(GUEST, interrupts=True),
                                      timeout=60, deterministic=deterministic)
    assert (result.reason, result.exit_status) == ("exit", 1), (result, out)
    assert out == EXPECTED
