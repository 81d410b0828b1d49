"""Unassigned physical memory reads all ones and drops writes, in every MMU mode.

Each guest stores to and loads from physical addresses with nothing behind
them (above RAM, between the IOAPIC and the local APIC, above 4 GiB), with
paging off, through 32-bit page tables and through long-mode page tables,
then reports what it read and exits; the test also checks the machine's
counts of the dropped accesses."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

MMU_MODES = ("cached", "naive", "native")

# Store a pattern at [ebx], load it back: eax must be all ones (and so must a byte load).
PROBE32 = r"""
%macro PROBE 1
    mov ebx, %1
    mov dword [ebx], 0x12345678
    mov byte [ebx + 4], 0x5A
    mov eax, [ebx]
    call puthex
    movzx eax, byte [ebx + 4]
    call puthex
    mov al, 10
    call putc
%endmacro
"""


def _run(assemble, tmp_path, source: str, mmu: str, long_mode: bool = False):
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(source, long_mode=long_mode)))
    out = bytearray()
    with Machine(serial="none", memory="32M", mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=20)
        counts = (m.unassigned.reads, m.unassigned.writes)
    return result, out.decode(errors="replace"), counts


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_unassigned_reads_all_ones_and_ignores_writes_with_paging_off(assemble, tmp_path, mmu):
    body = PROBE32 + r"""
    PROBE 0x10000000          ; above the 32 MiB of RAM
    PROBE 0xFED40000          ; between the HPET and the local APIC
    mov dword [0x200000], 0x600D   ; RAM still works
    mov eax, [0x200000]
    call puthex
    mov al, 0
    call exit
"""
    result, out, counts = _run(assemble, tmp_path, body, mmu)
    assert out == "FFFFFFFF000000FF\nFFFFFFFF000000FF\n0000600D"
    assert result.exit_status == 1
    assert counts == (4, 4)


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_unassigned_through_32bit_page_tables(assemble, tmp_path, mmu):
    """A 4 KiB page and a 4 MiB PSE page whose frames have nothing behind them."""
    body = PROBE32 + r"""
    mov dword [pgdir], 0x000083           ; 0-4 MiB identity, 4 MiB page
    mov dword [pgdir + 4], ptab + 3       ; 4-8 MiB through a page table
    mov dword [ptab], 0x30000003          ; 0x400000 -> 0x30000000 (above RAM)
    mov dword [pgdir + 8], 0xC0000083     ; 8-12 MiB -> 0xC0000000 (4 MiB page)
    mov eax, cr4
    or eax, 1 << 4                        ; PSE
    mov cr4, eax
    mov eax, pgdir
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    PROBE 0x400000
    PROBE 0x900000
    mov al, 0
    call exit
align 4096
pgdir: times 1024 dd 0
ptab: times 1024 dd 0
"""
    result, out, counts = _run(assemble, tmp_path, body, mmu)
    assert out == "FFFFFFFF000000FF\nFFFFFFFF000000FF\n"
    assert result.exit_status == 1
    assert counts == (4, 4)


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_unassigned_above_4g_through_long_mode_page_tables(assemble, tmp_path, mmu):
    body = r"""
    LOAD_GDT
    mov dword [pd + 16], 0x00000087       ; 4-6 MiB -> 4 GiB (2 MiB page)
    mov dword [pd + 20], 1
    ENTER_LONG_MODE long_main
bits 64
long_main:
    mov rbx, 0x400000
    mov qword [rbx], -2
    mov rax, [rbx]
    call puthex64
    mov al, 10
    call putc64
    mov rax, 0x123456789
    mov [rbx + 8], rax
    cmp rax, [rbx + 8]
    je .bad
    mov al, 0
    out 0xF4, al
.bad:
    mov al, 9
    out 0xF4, al
"""
    result, out, counts = _run(assemble, tmp_path, body, mmu, long_mode=True)
    assert out == "FFFFFFFFFFFFFFFF\n"
    assert result.exit_status == 1
    # Each 8-byte access reaches the region as two 4-byte ones (ENGINE_FACTS.md fact 7).
    assert counts == (4, 4)


class _Register:
    """A one-register MMIO device."""

    def __init__(self) -> None:
        self.value = 0xC0FFEE

    def reset(self) -> None:
        pass

    def io_read(self, offset: int, size: int) -> int:
        return self.value

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.value = value


def test_a_device_mapped_later_takes_its_page_from_unassigned_memory(assemble, tmp_path):
    body = r"""
    mov eax, [0xE0000FFC]     ; unassigned, just below the device
    call puthex
    mov dword [0xE0001000], 0x4321
    mov eax, [0xE0001000]     ; the device
    call puthex
    mov eax, [0xE0002000]     ; unassigned, just above
    call puthex
    mov al, 0
    call exit
"""
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(body)))
    out = bytearray()
    dev = _Register()
    with Machine(serial="none", memory="32M") as m:
        m.add_mmio(0xE0001000, 0x1000, dev)
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=20)
    assert out.decode() == "FFFFFFFF00004321FFFFFFFF"
    assert result.exit_status == 1
