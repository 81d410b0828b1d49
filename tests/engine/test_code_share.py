"""Patch o: engines on one guest RAM keep each other's translations coherent.

Each engine has its own translation cache.  Joined in one code-share group, a store by
one engine to a page another holds code in invalidates that code there before the other
runs its next block.  The engines run one after the other here, so each case is exact:
thread=multi's parallel case is tests/guest/test_multi.py's.
"""

from __future__ import annotations

import ctypes
import gc

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ESP

from qemu_lite.multi import code_group_stats, join_code_group

pytestmark = pytest.mark.requires_patched_engine("o")

RAM = 0x200000
FUNC = 0x10000  # a page of its own: mov eax, imm32 / ret
OLD, NEW = 0x11111111, 0x22222222


def _engines(ram: ctypes.Array[ctypes.c_char], group: ctypes.c_int | None) -> list[Uc]:
    engines = []
    for _ in range(2):
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map_ptr(0, RAM, UC_PROT_ALL, ctypes.addressof(ram))
        if group is not None:
            assert join_code_group(uc, ctypes.addressof(group))
        uc.reg_write(UC_X86_REG_ESP, RAM - 16)
        engines.append(uc)
    return engines


def _func_in_a_group() -> tuple[ctypes.Array[ctypes.c_char], Uc, Uc, ctypes.c_int]:
    """Two grouped engines, FUNC holding ``mov eax, OLD / ret``; the group's key last
    (keep it alive while the engines are)."""
    group = ctypes.c_int(0)
    ram = ctypes.create_string_buffer(RAM)
    a, b = _engines(ram, group)
    ram[FUNC:FUNC + 6] = _func(OLD)
    return ram, a, b, group


def _run(uc: Uc, ram: ctypes.Array[ctypes.c_char], at: int, code: bytes) -> None:
    ram[at:at + len(code) + 1] = code + b"\x90"
    uc.emu_start(at, at + len(code))


def _store(addr: int, value: int) -> bytes:
    return b"\xc7\x05" + addr.to_bytes(4, "little") + value.to_bytes(4, "little")


def _call(at: int, target: int) -> bytes:
    return b"\xe8" + (target - (at + 5)).to_bytes(4, "little", signed=True)


def _func(value: int) -> bytes:
    return b"\xb8" + value.to_bytes(4, "little") + b"\xc3"


def _rewrite_then_call(group: ctypes.c_int | None) -> tuple[int, list[Uc]]:
    """A stores data to FUNC's page; B translates FUNC; A rewrites FUNC's immediate
    through the TLB entry it already has; B calls FUNC again.  EAX B saw."""
    ram = ctypes.create_string_buffer(RAM)
    a, b = _engines(ram, group)
    ram[FUNC:FUNC + 6] = _func(OLD)
    _run(a, ram, 0x1000, _store(FUNC + 0x800, 0))  # A: a fast entry (no code there yet)
    _run(b, ram, 0x2000, _call(0x2000, FUNC))       # B: FUNC translated
    assert b.reg_read(UC_X86_REG_EAX) == OLD
    _run(a, ram, 0x1000, _store(FUNC + 1, NEW))      # A: the immediate
    _run(b, ram, 0x2000, _call(0x2000, FUNC))
    return b.reg_read(UC_X86_REG_EAX), [a, b]


def test_without_a_group_the_other_engine_runs_its_stale_translation():
    eax, _ = _rewrite_then_call(None)
    assert eax == OLD  # why the group exists: B never saw A's store


def test_a_store_reaches_code_another_engine_translated_through_an_older_tlb_entry():
    group = ctypes.c_int(0)
    eax, (a, b) = _rewrite_then_call(group)
    assert eax == NEW
    sa, sb = code_group_stats(a), code_group_stats(b)
    # B's first code on the page re-armed A's fast entry, so A's rewrite trapped.
    assert sa["code_rearms_received"] >= 1, sa
    assert sa["code_invalidations_sent"] >= 1, sa
    assert sb["code_invalidations_received"] >= 1, sb
    assert sb["code_inbox_overflows"] == 0, sb


def test_more_pages_than_the_inbox_holds_drop_all_translations():
    pages = 300  # the inbox holds 256
    ram = ctypes.create_string_buffer(RAM)
    group = ctypes.c_int(0)
    a, b = _engines(ram, group)
    funcs = [FUNC + i * 0x1000 for i in range(pages)]
    for f in funcs:
        ram[f:f + 6] = _func(1)
    # B: ebx = sum of every function's immediate.
    caller = b"\x31\xdb" + b"".join(_call(0x2002 + 7 * i, f) + b"\x01\xc3"
                                    for i, f in enumerate(funcs))
    _run(b, ram, 0x2000, caller)
    assert b.reg_read(UC_X86_REG_EBX) == pages
    _run(a, ram, 0x1000, b"".join(_store(f + 1, 2) for f in funcs))
    _run(b, ram, 0x2000, caller)
    assert b.reg_read(UC_X86_REG_EBX) == 2 * pages
    stats = code_group_stats(b)
    assert stats["code_inbox_overflows"] == 1, stats


def test_a_group_member_closes_cleanly_and_the_other_goes_on():
    ram, a, b, _group = _func_in_a_group()
    _run(b, ram, 0x2000, _call(0x2000, FUNC))
    del b
    gc.collect()  # the engine is closed: its inbox and its bits go with it
    _run(a, ram, 0x1000, _store(FUNC + 1, NEW) + _call(0x100A, FUNC))
    assert a.reg_read(UC_X86_REG_EAX) == NEW
    assert code_group_stats(a)["code_invalidations_sent"] == 0
