"""The engine accessors that keep the GIL answer exactly as the binding's ctypes ones do."""

from __future__ import annotations

import threading

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from qemu_lite import Machine
from qemu_lite._vcpu_hooks import EngineCalls

PLAIN = ["RAX", "EAX", "AX", "AL", "AH", "R8", "R8D", "R15W", "RIP", "EIP", "RFLAGS", "EFLAGS",
         "CR0", "CR3", "CR4", "CS", "SS", "FS", "FS_BASE", "GS_BASE", "DR7"]
TABLES = ["GDTR", "IDTR", "LDTR", "TR"]


@pytest.fixture
def engine() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x2000)
    return uc


def test_registers_read_and_write_as_the_binding_does(engine):
    fast = EngineCalls(engine)
    for name in PLAIN:
        reg = getattr(X, f"UC_X86_REG_{name}")
        value = 0x1122334455667788 & ((1 << 64) - 1)
        if name in ("CS", "SS", "FS"):
            continue  # selector writes in a 64-bit engine load descriptors: read only
        fast.reg_write(reg, value)
        assert fast.reg_read(reg) == engine.reg_read(reg), name
        engine.reg_write(reg, 0x0102030405060708)
        assert fast.reg_read(reg) == engine.reg_read(reg), name
    for name in ("CS", "SS", "FS"):
        reg = getattr(X, f"UC_X86_REG_{name}")
        assert fast.reg_read(reg) == engine.reg_read(reg)
    engine.reg_write(X.UC_X86_REG_GDTR, (0, 0x12345000, 0x27, 0))
    for name in TABLES:
        reg = getattr(X, f"UC_X86_REG_{name}")
        assert fast.reg_read(reg) == tuple(engine.reg_read(reg)), name
    assert fast.reg_read(X.UC_X86_REG_GDTR)[1:3] == (0x12345000, 0x27)


def test_msr_and_vector_registers(engine):
    fast = EngineCalls(engine)
    engine.msr_write(0xC0000080, 0x500)
    assert fast.msr_read(0xC0000080) == engine.msr_read(0xC0000080) == 0x500
    engine.reg_write(X.UC_X86_REG_XMM3, 0xAABB << 64 | 0xCCDD)
    assert fast.reg_read(X.UC_X86_REG_XMM3) == 0xAABB << 64 | 0xCCDD  # the binding's path


def test_memory_reads_writes_and_errors(engine):
    fast = EngineCalls(engine)
    fast.mem_write(0x1ffe, b"\x01\x02\x03\x04")  # across a page boundary
    assert engine.mem_read(0x1ffe, 4) == b"\x01\x02\x03\x04"
    got = fast.mem_read(0x1ffe, 4)
    assert isinstance(got, bytearray) and got == b"\x01\x02\x03\x04"
    fast.mem_write(0x1000, bytearray(b"xy"))
    fast.mem_write(0x1002, memoryview(b"z"))
    assert fast.mem_read(0x1000, 3) == b"xyz"
    with pytest.raises(UcError):
        fast.mem_read(0x9000, 4)
    with pytest.raises(UcError):
        fast.mem_write(0x9000, b"x")


def test_machines_get_them_and_still_boot_in_threads():
    from qemu_lite import DEFAULT_IMAGE

    results = []

    def boot() -> None:
        with Machine(DEFAULT_IMAGE, serial="none", snapshot=True) as m:
            assert type(m.uc.reg_read).__qualname__ != "Uc.reg_read"
            results.append(m.run(timeout=60))

    threads = [threading.Thread(target=boot) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(r.reason, r.exit_status) for r in results] == [("exit", 1), ("exit", 1)]
