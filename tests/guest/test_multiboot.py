"""Multiboot v1 kernels built here, loaded by --kernel, reading what the loader gave them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

# Prints its command line, the mmap's RAM total in MiB and each module's string, then exits.
KERNEL_BODY = r"""
start:
    cmp eax, 0x2BADB002
    jne fail
    mov esp, stack_top
    mov ebp, ebx                 ; multiboot info
    mov esi, [ebp + 16]          ; cmdline
    call puts
    mov al, '|'
    call putc
    ; sum the lengths of type-1 mmap entries
    mov esi, [ebp + 48]          ; mmap_addr
    mov ecx, [ebp + 44]          ; mmap_length
    xor edi, edi
.mm:
    test ecx, ecx
    jz .mmdone
    cmp dword [esi + 20], 1
    jne .skip
    mov eax, [esi + 12]          ; length low dword
    shr eax, 10
    add edi, eax
.skip:
    mov eax, [esi]
    add eax, 4
    add esi, eax
    sub ecx, eax
    jmp .mm
.mmdone:
    mov eax, edi
    shr eax, 10                  ; KiB -> MiB
    call putdec
    mov esi, [ebp + 24]          ; mods_addr
    mov ecx, [ebp + 20]          ; mods_count
.mod:
    test ecx, ecx
    jz .done
    mov al, '|'
    call putc
    push esi
    mov esi, [esi + 8]
    call puts
    pop esi
    ; first byte of the module's contents
    mov al, ':'
    call putc
    mov eax, [esi]
    mov al, [eax]
    call putc
    add esi, 16
    dec ecx
    jmp .mod
.done:
    mov al, 10
    call putc
    mov al, 0x21
    out 0xF4, al
fail:
    mov al, 0x7F
    out 0xF4, al
    hlt

putc:
    push edx
    push eax
    mov dx, 0x3FD
.w: in al, dx
    test al, 0x20
    jz .w
    pop eax
    mov dx, 0x3F8
    out dx, al
    pop edx
    ret
puts:
    lodsb
    test al, al
    jz .e
    call putc
    jmp puts
.e: ret
putdec:                           ; eax -> decimal
    push ecx
    push edx
    mov ecx, 10
    xor edx, edx
    div ecx
    test eax, eax
    jz .d
    push edx
    call putdec
    pop edx
.d: mov al, dl
    add al, '0'
    call putc
    pop edx
    pop ecx
    ret
"""

AOUT_KERNEL = r"""
bits 32
org 0x100000
header:
    dd 0x1BADB002
    dd 0x00010003
    dd -(0x1BADB002 + 0x00010003)
    dd header          ; header_addr
    dd header          ; load_addr
    dd load_end        ; load_end_addr
    dd bss_end         ; bss_end_addr
    dd start           ; entry
""" + KERNEL_BODY + r"""
load_end:
    resb 4096
stack_top:
bss_end:
"""

ELF_KERNEL = r"""
bits 32
section .text
global start
align 4
    dd 0x1BADB002
    dd 0x3
    dd -(0x1BADB002 + 0x3)
""" + KERNEL_BODY + r"""
section .bss
    resb 4096
stack_top:
"""


def _boot(kernel_path, cmdline, modules, memory="32M"):
    out = bytearray()
    m = Machine(memory=memory, serial="none")
    m.board.com1.add_output_listener(out.extend)
    with m:
        multiboot.load(m, kernel_path, cmdline, modules)
        result = m.run(timeout=20)
    return result, out.decode(errors="replace")


def test_aout_kludge_kernel_reads_cmdline_mmap_and_modules(assemble, tmp_path):
    kernel = tmp_path / "k.bin"
    kernel.write_bytes(assemble(AOUT_KERNEL))
    mod1 = tmp_path / "m1"
    mod1.write_bytes(b"Xmodule one")
    mod2 = tmp_path / "m2"
    mod2.write_bytes(b"Ymodule two")
    result, out = _boot(kernel, "console=ttyS0 quiet",
                        [(str(mod1), f"{mod1} first"), (str(mod2), f"{mod2} second")])
    assert result.reason == "exit" and result.exit_status == 0x43
    # 639 KiB + (32 MiB - 1 MiB) usable -> 31 MiB after truncation to whole MiB
    assert out == f"console=ttyS0 quiet|31|{mod1} first:X|{mod2} second:Y\n"


def test_elf_kernel(assemble, tmp_path):
    ld = shutil.which("ld")
    if ld is None:
        pytest.skip("ld (binutils) not installed: needed to link the ELF test kernel")
    obj = tmp_path / "k.o"
    obj.write_bytes(assemble(ELF_KERNEL, fmt="elf32"))
    elf = tmp_path / "k.elf"
    subprocess.run([ld, "-m", "elf_i386", "-Ttext=0x200000", "-e", "start", "-o", str(elf),
                    str(obj)], check=True)
    result, out = _boot(elf, "elf-cmdline", [], memory="64M")
    assert result.exit_status == 0x43
    assert out == "elf-cmdline|63\n"


def test_not_multiboot_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 16384)
    with pytest.raises(multiboot.MultibootError, match="no Multiboot header"):
        multiboot.parse(bad.read_bytes(), str(bad))
