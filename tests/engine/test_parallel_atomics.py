"""Patches n and p: engines that share guest RAM and run in parallel threads keep
LOCK'd read-modify-writes atomic once they translate with CF_PARALLEL (thread=multi's
base).

Two engines map the same host buffer as guest RAM and run at once on two host threads
(the binding releases the GIL in ``emu_start``).  Without CF_PARALLEL the engine emits a
plain load, operation and store, and two CPUs lose updates; with it, host atomics.
Patch p makes XCHG with memory one (Unicorn's helper read and wrote), and steps a LOCK'd
access the host cannot make atomic (an unaligned one) instead of re-raising it for ever.
"""

from __future__ import annotations

import ctypes
import threading

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_32, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn.x86_const import UC_X86_REG_EIP, UC_X86_REG_RIP

pytestmark = pytest.mark.requires_patched_engine("n")

ADDS = 1_000_000
CODE, COUNTER, LOCK_WORD, RAM = 0x1000, 0x8000, 0x8010, 0x10000


def _lock_xadd(counter: int) -> bytes:
    # mov ecx, ADDS / mov edx, 1 / .l: mov eax, edx / lock xadd [counter], eax / dec ecx /
    # jnz .l / nop (the end address)
    return (b"\xb9" + ADDS.to_bytes(4, "little") + b"\xba\x01\x00\x00\x00"
            + b"\x89\xd0" + b"\xf0\x0f\xc1\x05" + counter.to_bytes(4, "little")
            + b"\x49" + b"\x75\xf3" + b"\x90")


# A spinlock around a plain increment: mov ecx, ADDS / .l: mov eax, 1 /
# xchg eax, [LOCK_WORD] / test eax, eax / jnz .l / inc dword [COUNTER] /
# mov dword [LOCK_WORD], 0 / dec ecx / jnz .l / nop
SPINLOCK = (b"\xb9" + ADDS.to_bytes(4, "little")
            + b"\xb8\x01\x00\x00\x00" + b"\x87\x05" + LOCK_WORD.to_bytes(4, "little")
            + b"\x85\xc0" + b"\x75\xf1"
            + b"\xff\x05" + COUNTER.to_bytes(4, "little")
            + b"\xc7\x05" + LOCK_WORD.to_bytes(4, "little") + b"\x00\x00\x00\x00"
            + b"\x49" + b"\x75\xde" + b"\x90")


def _call(uc: Uc, name: str) -> int:
    from unicorn.unicorn_py3 import unicorn as binding

    fn = getattr(binding.uclib, name)
    fn.restype, fn.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
    return int(fn(uc._uch))


def _set_parallel(uc: Uc) -> None:
    from unicorn.unicorn_py3 import unicorn as binding

    fn = binding.uclib.uc_ql_set_parallel
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_bool]
    assert fn(uc._uch, True) == 0


def _run_on_two_engines(program: bytes, mode: int = UC_MODE_32,
                        ram: ctypes.Array[ctypes.c_char] | None = None) -> tuple[int, list[Uc]]:
    """Both engines run ``program`` at once; the counter's final value."""
    ram = ctypes.create_string_buffer(RAM) if ram is None else ram
    ram[CODE:CODE + len(program)] = program
    engines = []
    for _ in range(2):
        uc = Uc(UC_ARCH_X86, mode)
        uc.mem_map_ptr(0, RAM, UC_PROT_ALL, ctypes.addressof(ram))
        _set_parallel(uc)
        engines.append(uc)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(uc: Uc) -> None:
        try:
            start.wait()
            uc.emu_start(CODE, CODE + len(program) - 1, timeout=60_000_000)
        except BaseException as exc:  # re-raised on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(uc,)) for uc in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # Each reached the end (emu_start's timeout would leave EIP inside the loop).
    pc = UC_X86_REG_RIP if mode == UC_MODE_64 else UC_X86_REG_EIP
    assert all(uc.reg_read(pc) == CODE + len(program) - 1 for uc in engines)
    counter = COUNTER if program is not UNALIGNED else COUNTER + 2
    return int.from_bytes(ram[counter:counter + 4], "little"), engines


UNALIGNED = _lock_xadd(COUNTER + 2)


def test_lock_xadd_from_two_engines_on_two_threads_is_exact() -> None:
    total, engines = _run_on_two_engines(_lock_xadd(COUNTER))
    assert total == 2 * ADDS


@pytest.mark.requires_patched_engine("p")
def test_a_spinlock_taken_with_xchg_excludes_the_other_engine() -> None:
    total, _ = _run_on_two_engines(SPINLOCK)
    assert total == 2 * ADDS  # every plain increment ran alone


@pytest.mark.requires_patched_engine("p")
def test_an_unaligned_lock_xadd_is_stepped_and_exact() -> None:
    total, engines = _run_on_two_engines(UNALIGNED)
    assert total == 2 * ADDS
    assert all(_call(uc, "uc_ql_atomic_steps") == ADDS for uc in engines)


# 64-bit: a 16-byte pair at COUNTER, each CMPXCHG16B that succeeds adds 1 to the low
# quadword and 2 to the high one.  mov r8d, ADDS / .next: mov rax, [COUNTER] /
# mov rdx, [COUNTER + 8] / .retry: lea rbx, [rax + 1] / lea rcx, [rdx + 2] /
# lock cmpxchg16b [COUNTER] / jnz .retry / dec r8d / jnz .next / nop
CMPXCHG16B = (b"\x41\xb8" + ADDS.to_bytes(4, "little")
              + b"\x48\x8b\x04\x25" + COUNTER.to_bytes(4, "little")
              + b"\x48\x8b\x14\x25" + (COUNTER + 8).to_bytes(4, "little")
              + b"\x48\x8d\x58\x01" + b"\x48\x8d\x4a\x02"
              + b"\xf0\x48\x0f\xc7\x0c\x25" + COUNTER.to_bytes(4, "little")
              + b"\x75\xec" + b"\x41\xff\xc8" + b"\x75\xd7" + b"\x90")


def test_lock_cmpxchg16b_from_two_engines_is_exact() -> None:
    # The engine's CF_PARALLEL helper is the host's LOCK CMPXCHG16B, so thread=multi
    # can offer CX16.
    ram = ctypes.create_string_buffer(RAM)
    _run_on_two_engines(CMPXCHG16B, UC_MODE_64, ram)
    low = int.from_bytes(ram[COUNTER:COUNTER + 8], "little")
    high = int.from_bytes(ram[COUNTER + 8:COUNTER + 16], "little")
    assert (low, high) == (2 * ADDS, 4 * ADDS)
