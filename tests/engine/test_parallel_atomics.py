"""Patch n: engines that share guest RAM and run in parallel threads keep LOCK'd
read-modify-writes atomic once they translate with CF_PARALLEL (thread=multi's base).

Two engines map the same host buffer as guest RAM; on two host threads at once (the
binding releases the GIL in ``emu_start``) each adds 1 to one counter with LOCK XADD a
million times.  Without CF_PARALLEL the engine emits a plain load, add and store, and
two CPUs lose updates; with it, a host atomic.
"""

from __future__ import annotations

import ctypes
import threading

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn.x86_const import UC_X86_REG_EIP

pytestmark = pytest.mark.requires_patched_engine("n")

ADDS = 1_000_000
CODE, COUNTER, RAM = 0x1000, 0x8000, 0x10000
# mov ecx, ADDS / mov edx, 1 / .l: mov eax, edx / lock xadd [COUNTER], eax / dec ecx /
# jnz .l / nop (the end address)
PROGRAM = (b"\xb9" + ADDS.to_bytes(4, "little") + b"\xba\x01\x00\x00\x00"
           + b"\x89\xd0" + b"\xf0\x0f\xc1\x05" + COUNTER.to_bytes(4, "little")
           + b"\x49" + b"\x75\xf3" + b"\x90")


def _set_parallel(uc: Uc) -> None:
    from unicorn.unicorn_py3 import unicorn as binding

    fn = binding.uclib.uc_ql_set_parallel
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_bool]
    assert fn(uc._uch, True) == 0


def test_lock_xadd_from_two_engines_on_two_threads_is_exact() -> None:
    ram = ctypes.create_string_buffer(RAM)
    ram[CODE:CODE + len(PROGRAM)] = PROGRAM
    engines = []
    for _ in range(2):
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map_ptr(0, RAM, UC_PROT_ALL, ctypes.addressof(ram))
        _set_parallel(uc)
        engines.append(uc)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(uc: Uc) -> None:
        try:
            start.wait()
            uc.emu_start(CODE, CODE + len(PROGRAM) - 1)
        except BaseException as exc:  # re-raised on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(uc,)) for uc in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(uc.reg_read(UC_X86_REG_EIP) == CODE + len(PROGRAM) - 1 for uc in engines)
    assert int.from_bytes(ram[COUNTER:COUNTER + 4], "little") == 2 * ADDS
