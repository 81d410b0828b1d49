"""-smp N: the BSP starts its APs by INIT/SIPI (real mode at the vector's page), each
CPU adds to a shared counter with LOCK XADD, each AP reports by a fixed IPI to the
BSP, and the guest sees every APIC ID once (issue 18 items 2-5)."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

ADDS = 1_000_000  # per CPU

# Trampoline copied to 0x8000 (SIPI vector 0x08).  APs take a lock-free ticket
# for a stack-free 32-bit path: counter, their APIC ID bit, one IPI to the BSP.
SMP_BODY = r"""
    jmp setup
align 8
idt: times 256 dq 0
idtr:
    dw 256 * 8 - 1
    dd idt
counter: dd 0
aps_done: dd 0
ipis: dd 0
id_bits: dd 0

ipi_handler:
    lock inc dword [ipis]
    mov dword [0xFEE000B0], 0          ; EOI
    iret

ap_tramp:
bits 16
    cli
    xor ax, ax
    mov ds, ax
    o32 lgdt [0x8000 + ap_gdtr - ap_tramp]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:ap32
ap_gdtr:
    dw gdt_end - gdt - 1
    dd gdt
ap_tramp_end:
bits 32
ap32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov dword [0xFEE000F0], 0x1FF      ; this AP's APIC on
    mov ecx, [0xFEE00020]
    shr ecx, 24
    mov eax, 1
    shl eax, cl
    lock or [id_bits], eax
    mov ecx, ADDS
.add:
    mov eax, 1
    lock xadd [counter], eax
    dec ecx
    jnz .add
    lock inc dword [aps_done]
    mov eax, [0xFEE00020]
    shr eax, 24
    add eax, 0x4040                    ; fixed, vector 0x40 + APIC ID: IRR would merge
    mov dword [0xFEE00310], 0          ; to APIC ID 0 (physical)   one vector sent twice
    mov [0xFEE00300], eax
    cli
.park:
    hlt
    jmp .park

setup:
    LOAD_GDT
    mov ebx, idt + 0x41 * 8
.gate:
    mov eax, ipi_handler
    mov word [ebx], ax
    mov word [ebx + 2], 0x08
    mov word [ebx + 4], 0x8E00
    shr eax, 16
    mov word [ebx + 6], ax
    add ebx, 8
    cmp ebx, idt + 0x48 * 8
    jne .gate
    lidt [idtr]
    mov al, 0xFF                       ; PIC masked: only the APIC interrupts
    out 0x21, al
    out 0xA1, al
    mov dword [0xFEE000F0], 0x1FF
    mov esi, ap_tramp
    mov edi, 0x8000
    mov ecx, ap_tramp_end - ap_tramp
    rep movsb
    mov dword [0xFEE00310], 0
    mov dword [0xFEE00300], 0xC4500    ; INIT, assert, all but self
    mov dword [0xFEE00300], 0xC8500    ; INIT de-assert (level): no effect
    mov dword [0xFEE00300], 0xC4608    ; STARTUP at 0x8000, all but self
    mov dword [0xFEE00300], 0xC4608    ; the second STARTUP: ignored once running
    mov eax, [0xFEE00020]
    shr eax, 24
    mov ecx, eax
    mov eax, 1
    shl eax, cl
    lock or [id_bits], eax
    mov ecx, ADDS
.add:
    mov eax, 1
    lock xadd [counter], eax
    dec ecx
    jnz .add
    sti
.wait:
    cmp dword [aps_done], CPUS - 1
    jne .idle
    cmp dword [ipis], CPUS - 1
    je .report
.idle:
    hlt                                ; woken by the APs' IPIs
    jmp .wait
.report:
    cli
    PRINT "counter="
    mov eax, [counter]
    call puthex
    PRINT " ids="
    mov eax, [id_bits]
    call puthex
    PRINT " ipis="
    mov eax, [ipis]
    call puthex
    PRINT 10
    mov al, 0
    call exit
"""


def _run(assemble, tmp_path, cpus: int) -> tuple[str, object, list[dict[str, object]]]:
    source = f"%define CPUS {cpus}\n%define ADDS {ADDS}\n" + protected_mode_guest(SMP_BODY)
    kernel = tmp_path / "smp.bin"
    kernel.write_bytes(assemble(source))
    out = bytearray()
    with Machine(memory="32M", serial="none", vga="none", smp=cpus) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=120)
        stats = m.vcpu_stats()
    return out.decode(errors="replace"), result, stats


@pytest.mark.parametrize("cpus", (2, 4))
def test_aps_started_by_init_sipi_count_exactly(assemble, tmp_path, cpus):
    text, result, stats = _run(assemble, tmp_path, cpus)
    assert result.reason == "exit", (result, text)
    assert f"counter={cpus * ADDS:08X}" in text, text
    assert f"ids={(1 << cpus) - 1:08X}" in text, text   # every APIC ID ran once
    assert f"ipis={cpus - 1:08X}" in text, text
    assert len(stats) == cpus
    # The BSP sent INIT, INIT de-assert and two STARTUPs; each AP one fixed IPI.
    assert stats[0]["ipis_sent"] == 3  # the de-assert is not a message
    assert stats[0]["ipis_received"] == cpus - 1
    for ap in stats[1:]:
        assert ap["ipis_sent"] == 1  # its vector 0x40 + APIC ID
        assert ap["ipis_received"] == 3  # INIT and both STARTUPs reached it
        assert ap["switches_in"] >= 1


def test_smp_options_are_checked():
    with pytest.raises(ValueError, match="1 to 8"):
        Machine(smp=9)
    with pytest.raises(ValueError, match="thread=single or thread=multi"):
        Machine(accel="tcg,thread=many")
    with pytest.raises(ValueError, match="only tcg"):
        Machine(accel="kvm")
