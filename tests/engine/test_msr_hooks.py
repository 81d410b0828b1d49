"""Patch f: a UC_HOOK_INSN hook sees a guest's WRMSR and answers its RDMSR.

The hook is added through the C API (the Python binding's hook_add refuses
instruction hooks it does not know).  Reads of MSRs through the API, which the
shadow MMU makes on every fill (EFER), must not reach it.
"""

from __future__ import annotations

import ctypes

import pytest
from guestlib import protected_mode_guest
from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

pytestmark = pytest.mark.requires_patched_engine("f")

BODY = r"""
main:
    mov ecx, 0x8B               ; IA32_BIOS_SIGN_ID: one the platform leaves alone
    mov eax, 0xFED00900
    mov edx, 0x2
    wrmsr
    mov ecx, 0x8B
    xor eax, eax
    xor edx, edx
    rdmsr
    call puthex                 ; EAX as the hook answered
    mov eax, edx
    call puthex
    mov ecx, 0xC0000080         ; EFER: left to Unicorn (the hook returns 0)
    rdmsr
    mov al, 0
    call exit
"""

INSN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _add_insn_hook(m: Machine, insn: int, fn) -> object:
    from unicorn.unicorn_py3 import unicorn as binding

    cb = INSN_CB(fn)
    handle = ctypes.c_size_t()
    err = binding.uclib.uc_hook_add(m.uc._uch, ctypes.byref(handle), UC_HOOK_INSN,
                                    ctypes.cast(cb, ctypes.c_void_p), None,
                                    ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
    assert err == 0, f"uc_hook_add refused the MSR hook: error {err}"
    return cb  # keep the callback alive


def test_wrmsr_seen_and_rdmsr_answered_by_hooks(assemble, tmp_path):
    kernel = tmp_path / "msr.bin"
    kernel.write_bytes(assemble(protected_mode_guest(BODY)))
    writes: list[tuple[int, int]] = []
    reads: list[int] = []
    msrs: dict[int, int] = {}
    out = bytearray()
    with Machine(serial="none", memory="32M", mmu="cached") as m:
        uc = m.uc

        def on_wrmsr(_uc, _ud) -> int:
            ecx = uc.reg_read(X.UC_X86_REG_ECX)
            value = uc.reg_read(X.UC_X86_REG_EDX) << 32 | uc.reg_read(X.UC_X86_REG_EAX)
            writes.append((ecx, value))
            msrs[ecx] = value
            return 1

        def on_rdmsr(_uc, _ud) -> int:
            ecx = uc.reg_read(X.UC_X86_REG_ECX)
            reads.append(ecx)
            if ecx not in msrs:
                return 0
            uc.reg_write(X.UC_X86_REG_EAX, msrs[ecx] & 0xFFFFFFFF)
            uc.reg_write(X.UC_X86_REG_EDX, msrs[ecx] >> 32)
            return 1

        keep = [_add_insn_hook(m, X.UC_X86_INS_WRMSR, on_wrmsr),
                _add_insn_hook(m, X.UC_X86_INS_RDMSR, on_rdmsr)]
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=30)
        fills = m.core.mmu_stats()["fills"]
        del keep
    assert result.reason == "exit" and result.exit_status == 1, result
    assert writes == [(0x8B, 0x2_FED00900)]
    assert out.decode() == "FED0090000000002"
    assert reads == [0x8B, 0xC0000080]  # the guest's two, none of the fills' EFER reads
    assert fills > 0
