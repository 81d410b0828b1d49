"""Patch e: the softmmu TLB is resized by flush count, so fill counts repeat exactly.

The guest grows Unicorn's TLB (many pages touched between CR3 reloads), then
reloads CR3 ~200 times touching almost nothing (the TLB's use rate drops and
QEMU's rule shrinks it once its window expires), then touches 1,024 pages twice.
The second pass hits a large TLB and misses a small one.  The test runs it
twice, once with the host stalled for 0.25 s twice in the idle phase (the guest
prints 'S' and the COM1 listener sleeps): stock Unicorn's window is 100 ms of
host time, so there it shrinks in one run and not in the other and the fill
counts differ; with patch e both runs give the same count.
"""

from __future__ import annotations

import time

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

pytestmark = pytest.mark.requires_patched_engine("e")

BODY = r"""
main:
    ; identity map 0-16 MiB with 4 KiB pages: directory at 0x200000, tables after it
    mov edi, 0x200000
    mov ecx, 1024
    xor eax, eax
    rep stosd
    mov edi, 0x200000
    mov eax, 0x201000 | 3
    mov ecx, 4
.pde:
    stosd
    add eax, 0x1000
    loop .pde
    mov edi, 0x201000
    mov eax, 3
    mov ecx, 4096
.pte:
    stosd
    add eax, 0x1000
    loop .pte
    mov eax, 0x200000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    ; phase 1: grow the TLB: 16 rounds of 3,000 pages between CR3 reloads
    mov ebp, 16
.grow:
    mov esi, 0x400000
    mov ecx, 3000
.g1:
    mov eax, [esi]
    add esi, 0x1000
    loop .g1
    mov eax, cr3
    mov cr3, eax
    dec ebp
    jnz .grow

    ; phase 2: 200 reloads touching one page; the host stalls twice on the way
    mov ebp, 200
.idle:
    mov eax, [0x400000]
    mov eax, cr3
    mov cr3, eax
    cmp ebp, 150
    je .stall
    cmp ebp, 80
    jne .next
.stall:
    mov al, 'S'
    call putc
.next:
    dec ebp
    jnz .idle

    ; phase 3: 1,024 pages, twice, no reload in between
    mov ebx, 2
.pass:
    mov esi, 0x400000
    mov ecx, 1024
.p1:
    mov eax, [esi]
    add esi, 0x1000
    loop .p1
    dec ebx
    jnz .pass
    mov al, 0
    call exit
"""


def _fills(kernel, stall: bool) -> int:
    def listener(data: bytes) -> None:
        if stall and b"S" in data:
            time.sleep(0.25)

    with Machine(serial="none", memory="32M", mmu="cached") as m:
        # Every CR3 reload must flush (and so resize): no TLB contexts (patch i),
        # which would keep the exact TLB of the same address space instead.
        m.core.set_tlb_contexts(0)
        m.board.com1.add_output_listener(listener)
        multiboot.load(m, kernel)
        m.core.reset_mmu_stats()
        result = m.run(timeout=60)
        assert result.reason == "exit" and result.exit_status == 1, result
        return int(m.core.mmu_stats()["fills"])


def test_fill_counts_repeat_whatever_the_host_speed(assemble, tmp_path):
    kernel = tmp_path / "tlb.bin"
    kernel.write_bytes(assemble(protected_mode_guest(BODY)))
    plain = _fills(kernel, stall=False)
    stalled = _fills(kernel, stall=True)
    again = _fills(kernel, stall=False)
    assert plain == stalled == again, (plain, stalled, again)
    assert plain > 3000 * 16  # the guest really touched its pages through fills
