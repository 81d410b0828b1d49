"""CPUID tells the guest what this machine does (SDM vol. 2, CPUID), checked by guest code."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

from qemu_lite import engine

MMU_MODES = ("cached", "native")


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_osxsave_mirrors_cr4_and_xsave_leaf_matches_the_features(assemble, tmp_path, mmu):
    body = r"""
%macro OSXSAVE_BIT 0
    mov eax, 1
    cpuid
    mov eax, ecx
    shr eax, 27
    and eax, 1
    call puthex
    mov al, ' '
    call putc
%endmacro
    OSXSAVE_BIT               ; CR4.OSXSAVE clear at boot
    mov eax, cr4
    or eax, 1 << 18
    mov cr4, eax
    OSXSAVE_BIT
    mov eax, cr4
    and eax, ~(1 << 18)
    mov cr4, eax
    OSXSAVE_BIT
    mov eax, 1
    cpuid
    mov esi, ecx              ; leaf 1 ECX: XSAVE, AVX
    mov eax, 0xD
    xor ecx, ecx
    cpuid                     ; XCR0-supported components and XSAVE area sizes
    call puthex
    mov al, ' '
    call putc
    mov eax, ebx
    call puthex
    mov al, ' '
    call putc
    mov eax, ecx
    call puthex
    mov al, ' '
    call putc
    mov eax, 0xD
    mov ecx, 2                ; the AVX component: absent
    cpuid
    or eax, ebx
    call puthex
    mov al, ' '
    call putc
    mov eax, esi
    shr eax, 26
    and eax, 5                ; XSAVE (bit 26) and AVX (bit 28)
    call puthex
    mov al, ' '
    call putc
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov eax, ebx
    shr eax, 20
    and eax, 1                ; SMAP: the engine cannot enable it
    call puthex
    mov al, ' '
    call putc
    mov eax, ecx
    shr eax, 16
    and eax, 1                ; LA57: no 5-level paging
    call puthex
    mov al, 0
    call exit
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body), mmu=mmu)
    assert out == ("00000000 00000001 00000000 00000003 00000240 00000240 00000000 "
                   "00000001 00000000 00000000")
    assert result.exit_status == 1


def test_smap_is_not_offered_because_the_engine_drops_cr4_smap(assemble, tmp_path):
    """Why SMAP stays hidden: CR4.SMAP does not stick on this engine's CPU model
    (stock 2.1.4 drops the bit; engine patch h answers #GP, as for any CR4 bit
    whose feature CPUID does not offer)."""
    body = r"""
    LOAD_GDT
    lidt [idtr]
    mov esp, 0x90000
    mov eax, cr4
    or eax, 1 << 21
    mov cr4, eax
    mov eax, cr4
    shr eax, 21
    and eax, 1
    call puthex
after:
    mov al, 0
    call exit
gp_handler:
    PRINT "gp"
    add esp, 4
    mov dword [esp], after
    iretd
    IDT_GP32 gp_handler
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == ("gp" if engine.is_patched("h") else "00000000")
    assert result.exit_status == 1
