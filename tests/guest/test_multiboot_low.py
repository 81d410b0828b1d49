"""Multiboot ELF kernels whose segments load below 1 MiB (at 0x8000), as QEMU loads them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

# Prints the command line and mem_upper (KiB above 1 MiB) from the information
# structure EBX points to, and where that structure is, then exits.
LOW_KERNEL = r"""
bits 32
section .text
global start
align 4
    dd 0x1BADB002, 0x3, -(0x1BADB002 + 0x3)
start:
    mov esp, stack_top
    cmp eax, 0x2BADB002
    jne .bad
    mov esi, [ebx + 16]       ; cmdline
    call puts
    mov al, '|'
    call putc
    mov eax, [ebx + 8]        ; mem_upper
    call puthex
    mov al, '|'
    call putc
    mov eax, ebx
    cmp eax, kernel_end       ; the structure is not inside the kernel
    setae al
    movzx eax, al
    call puthex
    mov al, 10
    call putc
    mov al, 0x21
    out 0xF4, al
.bad:
    mov al, 0x7
    out 0xF4, al
putc:
    push eax
    mov dx, 0x3FD
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop eax
    mov dx, 0x3F8
    out dx, al
    ret
puts:
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret
puthex:
    mov ecx, 8
.digit:
    rol eax, 4
    push eax
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    call putc
    pop eax
    loop .digit
    ret
section .bss
    resb 4096
stack_top:
kernel_end:
"""


def _link(assemble, tmp_path, address: int):
    ld = shutil.which("ld")
    if ld is None:
        pytest.skip("ld (binutils) not installed: needed to link the ELF test kernel")
    obj = tmp_path / "k.o"
    obj.write_bytes(assemble(LOW_KERNEL, fmt="elf32"))
    elf = tmp_path / "k.elf"
    subprocess.run([ld, "-m", "elf_i386", f"-Ttext={address:#x}", "-e", "start", "-o",
                    str(elf), str(obj)], check=True)
    return elf


@pytest.mark.parametrize("mmu", ("cached", "native"))
def test_elf_kernel_at_0x8000_runs_with_its_information_after_it(assemble, tmp_path, mmu):
    elf = _link(assemble, tmp_path, 0x8000)
    out = bytearray()
    with Machine(memory="32M", serial="none", mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, elf, "low-kernel")
        result = m.run(timeout=20)
    assert out.decode() == "low-kernel|00007C00|00000001\n"  # 31 MiB above 1 MiB
    assert result.exit_status == 0x43


@pytest.mark.parametrize("address", [0x100, 0x9F000, 0xC0000])
def test_segments_over_the_bda_ebda_or_bios_are_refused(assemble, tmp_path, address):
    elf = _link(assemble, tmp_path, address)
    with Machine(memory="32M") as m, pytest.raises(multiboot.MultibootError,
                                                   match="is outside RAM"):
        multiboot.load(m, elf)
