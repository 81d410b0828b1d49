"""The local APIC's TSC-deadline timer (SDM vol. 3, 10.5.4.1), seen by guest code.

The guest finds CPUID.1:ECX.TSC_DEADLINE, puts the LVT timer in mode 10b, arms
IA32_TSC_DEADLINE (0x6E0) from RDTSC, re-arms it from inside the handler, re-arms it
before it fires, gives a deadline already passed, cancels it with 0, leaves the mode
(which disarms it) and writes the MSR in one-shot mode (ignored).  After each step it
waits 110 ms (PIT counter 2, polled) for interrupts that should not come and prints the
count of timer interrupts and what the MSR reads."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

GUEST = r"""
    jmp start
align 8
idt: times 256 dq 0
idtr:
    dw 256 * 8 - 1
    dd idt
%macro SET_GATE 2
    mov eax, %2
    mov word [idt + %1 * 8], ax
    mov word [idt + %1 * 8 + 2], 0x08
    mov word [idt + %1 * 8 + 4], 0x8E00
    shr eax, 16
    mov word [idt + %1 * 8 + 6], ax
%endmacro
%define APIC 0xFEE00000
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

wait_110ms:                   ; two full mode 0 runs of PIT counter 2, polled
    push eax
    push ecx
    mov ecx, 2
.again:
    in al, 0x61
    and al, 0xFC
    or al, 1
    out 0x61, al
    mov al, 0xB0
    out 0x43, al
    mov al, 0xFF
    out 0x42, al
    out 0x42, al
.poll:
    in al, 0x61
    test al, 0x20
    jz .poll
    loop .again
    pop ecx
    pop eax
    ret

%macro WAIT_COUNT 1           ; with IF=0: sti; hlt until count reaches %1
%%loop:
    cmp dword [count], %1
    jae %%done
    sti
    hlt
    cli
    jmp %%loop
%%done:
%endmacro

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
    mov al, 0xFF              ; 8259 pair masked
    out 0x21, al
    out 0xA1, al
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
    WAIT_COUNT 1
    REPORT "early "

    ; 2. re-armed from inside the handler, 200 times
    mov dword [goal], 201
    mov eax, 100
    call arm_in
    WAIT_COUNT 201
    REPORT "rearm "
    mov dword [goal], 0

    ; 3. a deadline already passed fires at once
    rdtsc
    sub eax, 1
    sbb edx, 0
    mov ecx, TSC_DEADLINE
    wrmsr
    WAIT_COUNT 202
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
    mov al, 0
    call exit
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
"""


@pytest.mark.requires_patched_engine("f")
@pytest.mark.parametrize("deterministic", [False, True], ids=["real-time", "deterministic"])
def test_tsc_deadline_timer_fires_at_each_deadline_once(assemble, tmp_path, deterministic):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(GUEST),
                                      timeout=60, deterministic=deterministic)
    assert (result.reason, result.exit_status) == ("exit", 1), (result, out)
    assert out == EXPECTED
