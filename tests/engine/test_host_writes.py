"""Patch q: a write to guest RAM that is no guest store (``uc_mem_write``: qemu_lite's
DMA, loaders and ``Machine.write_memory``) drops the translations of the code it
overwrote, on the engine written through and, in a code-share group, on every other."""

from __future__ import annotations

import ctypes

import pytest
from test_code_share import FUNC, NEW, OLD, RAM, _call, _engines, _func, _func_in_a_group, _run
from unicorn.x86_const import UC_X86_REG_EAX

pytestmark = pytest.mark.requires_patched_engine("q")


def test_a_host_write_reaches_code_the_engine_translated():
    ram = ctypes.create_string_buffer(RAM)
    uc = _engines(ram, None)[0]
    ram[FUNC:FUNC + 6] = _func(OLD)
    _run(uc, ram, 0x2000, _call(0x2000, FUNC))
    assert uc.reg_read(UC_X86_REG_EAX) == OLD
    uc.mem_write(FUNC + 1, NEW.to_bytes(4, "little"))  # as a DMA transfer would
    _run(uc, ram, 0x2000, _call(0x2000, FUNC))
    assert uc.reg_read(UC_X86_REG_EAX) == NEW


def test_a_host_write_through_one_engine_reaches_code_another_translated():
    ram, a, b, _group = _func_in_a_group()
    _run(b, ram, 0x2000, _call(0x2000, FUNC))
    _run(a, ram, 0x1000, _call(0x1000, FUNC))  # both hold the code
    a.mem_write(FUNC + 1, NEW.to_bytes(4, "little"))
    _run(b, ram, 0x2000, _call(0x2000, FUNC))
    _run(a, ram, 0x1000, _call(0x1000, FUNC))
    assert (a.reg_read(UC_X86_REG_EAX), b.reg_read(UC_X86_REG_EAX)) == (NEW, NEW)
