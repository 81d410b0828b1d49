"""Patch d: stores to frames without translated code take the fast path; code is still
invalidated when written.

The engine counts stores that took the TLB_NOTDIRTY slow path
(``qemu_lite_notdirty_writes``).  Stock Unicorn sends every store through an
executable TLB entry there, as Unicorn's own MMU (``--mmu native``) makes them.
"""

from __future__ import annotations

import ctypes

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

pytestmark = pytest.mark.requires_patched_engine("d")

ROUNDS, PAGES = 64, 64

BODY = rf"""
main:
    mov ebp, {ROUNDS}
.round:                         ; ROUNDS x PAGES stores to data pages from 4 MiB
    mov esi, 0x400000
    mov ecx, {PAGES}
.store:
    mov [esi], ebp
    add esi, 0x1000
    loop .store
    dec ebp
    jnz .round
    call patched                ; translated, then rewritten, then run again
    add al, '0'
    call putc
    mov byte [patched + 1], 2   ; mov eax, 1 -> mov eax, 2
    call patched
    add al, '0'
    call putc
    mov al, 0
    call exit
patched:
    mov eax, 1
    ret
"""


def _slow_stores(m: Machine) -> int:
    from unicorn.unicorn_py3 import unicorn as binding

    fn = binding.uclib.qemu_lite_notdirty_writes
    fn.restype, fn.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
    return int(fn(m.uc._uch))


@pytest.mark.parametrize("mmu", ["native", "cached"])
def test_data_stores_fast_code_stores_invalidate(assemble, tmp_path, mmu: str):
    kernel = tmp_path / "stores.bin"
    kernel.write_bytes(assemble(protected_mode_guest(BODY)))
    out = bytearray()
    with Machine(serial="none", memory="32M", mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        before = _slow_stores(m)
        result = m.run(timeout=30)
        slow = _slow_stores(m) - before
    assert result.reason == "exit" and result.exit_status == 1, result
    assert out.decode() == "12"  # the rewritten instruction ran as written
    assert 1 <= slow < ROUNDS * PAGES // 16, slow
