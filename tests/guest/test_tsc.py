"""The virtual TSC: RDTSC/RDTSCP follow guest time at the rate CPUID leaf 0x16 advertises."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

from qemu_lite.clock import TSC_KHZ

# The guest times PIT channel 2's one-shot (mode 0, count 65536: OUT rises
# 54.9 ms after the count is written) with RDTSC, polling OUT through port
# 0x61 as Linux's pit_calibrate_tsc does, three times.
TSC_PER_PIT = r"""
    mov ecx, 3
.measure:
    mov al, 1                 ; channel 2 gate on, speaker off
    out 0x61, al
    mov al, 0xB0              ; channel 2, lobyte/hibyte, mode 0
    out 0x43, al
    xor al, al
    out 0x42, al
    out 0x42, al              ; count 0 = 65536
    rdtsc
    mov ebx, eax
    mov edi, edx
.poll:
    in al, 0x61
    test al, 0x20             ; OUT2
    jz .poll
    rdtsc
    sub eax, ebx
    sbb edx, edi
    xchg eax, edx
    call puthex
    xchg eax, edx
    call puthex
    mov al, ' '
    call putc
    loop .measure
    mov al, 0
    call exit
"""
PIT_HZ = 1_193_182


@pytest.mark.parametrize("deterministic", [False, True])
def test_tsc_counts_at_the_advertised_rate_against_the_pit(assemble, tmp_path, deterministic):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(TSC_PER_PIT),
                                      deterministic=deterministic)
    assert result.exit_status == 1, out
    ticks = sorted(int(x, 16) for x in out.split())
    expected = TSC_KHZ * 1000 * 65536 // PIT_HZ
    # Real time: both clocks follow the host's, so only a host stall right at an
    # edge of the measurement moves it (the median of three, within a generous
    # bound); deterministic: exact up to one PIT clock and one poll.
    tolerance = 0.25 if not deterministic else 1e-4
    assert abs(ticks[1] - expected) <= expected * tolerance, (ticks, expected)


CPUID_AND_RDTSCP = r"""
    mov eax, 0
    cpuid
    call puthex               ; max basic leaf
    mov al, ' '
    call putc
    mov eax, 0x16
    cpuid
    call puthex               ; base MHz
    mov al, ' '
    call putc
    mov eax, 1
    cpuid
    mov eax, edx
    shr eax, 4                ; TSC
    and eax, 1
    call puthex
    mov al, ' '
    call putc
    mov eax, ecx
    shr eax, 30               ; RDRAND
    and eax, 1
    call puthex
    mov al, ' '
    call putc
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov eax, ebx
    shr eax, 1                ; TSC_ADJUST
    and eax, 1
    call puthex
    mov al, ' '
    call putc
    mov eax, 0x80000007
    cpuid
    mov eax, edx
    shr eax, 8                ; invariant TSC
    and eax, 1
    call puthex
    mov al, ' '
    call putc
    mov ecx, 0xC0000103       ; IA32_TSC_AUX: RDTSCP returns it in ECX
    mov eax, 0x1234
    xor edx, edx
    wrmsr
    xor ecx, ecx
    rdtscp
    mov eax, ecx
    call puthex
    mov al, ' '
    call putc
    mov edx, 0xFFFFFFFF
    rdtsc                     ; in 32-bit code EDX:EAX; a fresh machine's TSC is small
    mov eax, edx
    call puthex
    mov al, 10
    call putc
    mov al, 0
    call exit
"""


@pytest.mark.parametrize("deterministic", [False, True])
def test_cpuid_advertises_the_tsc_and_rdtscp_returns_tsc_aux(assemble, tmp_path, deterministic):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(CPUID_AND_RDTSCP),
                                      deterministic=deterministic)
    assert result.exit_status == 1, out
    top, mhz, tsc, rdrand, adjust, invariant, aux, high = (int(x, 16) for x in out.split())
    assert top >= 0x16
    assert mhz == TSC_KHZ // 1000
    assert tsc == 1 and invariant == 1 and adjust == 1
    assert rdrand == (0 if deterministic else 1)  # Unicorn's RDRAND is the host's: hidden
    assert aux == 0x1234
    assert high == 0  # under 2**32 ticks: 2 s at 2 GHz, far more than this guest ran


# CR4.TSD: RDTSC stays allowed at CPL 0 and raises #GP(0) at CPL 3.
TSD = r"""
    LOAD_GDT
    lidt [idtr]
    mov dword [tss + 4], kstack_top
    mov dword [tss + 8], 0x10
    SET_TSS tss, 0x89
    mov eax, cr4
    or eax, 1 << 2            ; CR4.TSD
    mov cr4, eax
    rdtsc
    PRINT "cpl0 ok", 10
    push 0x23
    push ustack_top
    pushf
    push 0x1B
    push user_code
    iret
user_code:
    rdtsc
    mov al, 0x7E
    out 0xF4, al              ; not reached (and not allowed at CPL 3 either)

gp_handler:
    PRINT "GP error="
    mov eax, [esp]
    call puthex
    PRINT " at user rdtsc="
    mov eax, [esp + 4]
    cmp eax, user_code
    sete al
    add al, '0'
    call putc
    mov al, 10
    call putc
    mov al, 0
    call exit

    IDT_GP32 gp_handler

align 16
tss: times 0x68 db 0
    times 1024 db 0
kstack_top:
    times 1024 db 0
ustack_top:
"""


def test_cr4_tsd_makes_rdtsc_fault_in_ring3(assemble, tmp_path):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(TSD))
    assert out == "cpl0 ok\nGP error=00000000 at user rdtsc=1\n"
    assert result.exit_status == 1


def test_machine_reset_and_writes_restart_the_counter():
    from qemu_lite import Machine

    with Machine(memory="16M", deterministic=True) as m:
        m.hooks.vclock_ns = 5_000_000  # 5 ms of guest time
        assert m.tsc.read() == TSC_KHZ * 5
        m.tsc.write(1 << 40)
        m.hooks.vclock_ns = 6_000_000
        assert m.tsc.read() == (1 << 40) + TSC_KHZ
        m.tsc.reset()
        assert m.tsc.read() == 0
