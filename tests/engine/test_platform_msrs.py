"""The platform's MSRs through patch f's hooks (qemu_lite/msr.py), as a guest sees them.

IA32_APIC_BASE reads the default page with BSP and enable set; a write moves
the local APIC's page (its version register answers at the new address, the
old page reads as unassigned) and clearing the enable bit silences it;
MISC_ENABLE reads fast strings on; a WRMSR of IA32_TSC is what RDTSC counts on
from, and IA32_TSC_ADJUST moved by the same amount; IA32_BIOS_SIGN_ID reports the
microcode revision after the write-0-then-CPUID protocol.
"""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

pytestmark = pytest.mark.requires_patched_engine("f")

BODY = r"""
main:
    mov ecx, 0x1B                   ; IA32_APIC_BASE
    rdmsr
    call puthex
    mov ecx, 0x1A0                  ; IA32_MISC_ENABLE
    rdmsr
    call puthex
    mov ecx, 0x10                   ; IA32_TSC := 3 << 32
    mov edx, 3
    xor eax, eax
    wrmsr
    rdtsc
    mov eax, edx
    call puthex
    mov ecx, 0x3B                   ; IA32_TSC_ADJUST moved with it
    rdmsr
    or eax, edx
    setnz al
    movzx eax, al
    call puthex
    mov eax, [0xFEE00030]           ; APIC version at the default page
    call puthex
    mov ecx, 0x1B                   ; move the page to 0xFEA00000
    mov eax, 0xFEA00900
    xor edx, edx
    wrmsr
    jmp .moved                      ; the move applies at the next block
.moved:
    mov eax, [0xFEA00030]
    call puthex
    mov eax, [0xFEE00030]           ; the old page: unassigned
    call puthex
    mov ecx, 0x1B                   ; clear the global enable
    mov eax, 0xFEA00100
    wrmsr
    mov eax, [0xFEA00030]
    call puthex
    mov ecx, 0x1B
    rdmsr
    call puthex
    mov ecx, 0x8B                   ; IA32_BIOS_SIGN_ID: write 0, CPUID, read
    xor eax, eax
    xor edx, edx
    wrmsr
    mov eax, 1
    cpuid
    mov ecx, 0x8B
    rdmsr
    mov eax, edx
    call puthex
    mov al, 0
    call exit
"""


def test_guest_sees_the_platform_msrs(assemble, tmp_path):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(BODY))
    assert result.reason == "exit", (result, out)
    words = [out[i:i + 8] for i in range(0, len(out), 8)]
    version = words[4]
    assert words == ["FEE00900", "00001801", "00000003", "00000001", version, version,
                     "FFFFFFFF", "FFFFFFFF", "FEA00100", "00000028"], out
    assert version != "FFFFFFFF"
