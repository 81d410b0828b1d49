"""The embedding API: callbacks, Python devices, budgets, registers and memory."""

from __future__ import annotations

import logging

import pytest

from qemu_lite import Machine
from qemu_lite.devices.base import Device

REAL_MODE_ROM = r"""
bits 16
org 0
start:
    mov dx, 0x3F8
    mov al, 'A'
    out dx, al
    in al, 0x99               ; a Python device answers
    mov dx, 0x3F8
    out dx, al
    xor ax, ax
    mov ds, ax
    mov byte [0x500], 0x42
    mov al, 0x11
    out 0x98, al              ; the Python device stops the machine
    jmp $
times 0xFFF0 - ($ - $$) db 0
    jmp 0xF000:start
times 0x10000 - ($ - $$) db 0
"""


class Answer(Device):
    def __init__(self, machine):
        self.machine = machine
        self.writes = []

    def io_read(self, offset, size):
        return ord("Z") if offset == 1 else 0

    def io_write(self, offset, size, value):
        self.writes.append((offset, value))
        self.machine.stop()


def test_python_device_callbacks_registers_and_memory(assemble):
    rom = assemble(REAL_MODE_ROM)
    m = Machine(memory="4M", bios=rom)
    out = bytearray()
    m.board.com1.add_output_listener(out.extend)
    dev = Answer(m)
    m.add_device(0x98, 2, dev)
    result = m.run(timeout=10)
    assert result.reason == "stopped"
    assert out == b"AZ"
    assert dev.writes == [(0, 0x11)]
    assert m.read_memory(0x500, 1) == b"\x42"
    assert m.reg("cs") == 0xF000
    m.close()


def test_two_machines_do_not_share_state(assemble):
    rom = assemble(REAL_MODE_ROM)
    a, b = Machine(memory="4M", bios=rom), Machine(memory="8M", bios=rom)
    a.write_memory(0x600, b"machine a")
    b.write_memory(0x600, b"machine b")
    outs = {}
    for name, m in (("a", a), ("b", b)):
        buf = bytearray()
        m.board.com1.add_output_listener(buf.extend)
        m.add_device(0x98, 2, Answer(m))
        assert m.run(timeout=10).reason == "stopped"
        outs[name] = bytes(buf)
    assert outs == {"a": b"AZ", "b": b"AZ"}
    assert a.read_memory(0x600, 9) == b"machine a"
    assert b.read_memory(0x600, 9) == b"machine b"
    assert (a.memory_size, b.memory_size) == (4 << 20, 8 << 20)
    a.close()
    b.close()


def test_timeout_budget_ends_a_spinning_guest(assemble):
    rom = assemble("bits 16\norg 0\nstart: jmp start\ntimes 0xFFF0-($-$$) db 0\n"
                   "jmp 0xF000:start\ntimes 0x10000-($-$$) db 0\n")
    with Machine(memory="4M", bios=rom) as m:
        result = m.run(timeout=0.5)
    assert result.reason == "timeout"


def test_unclaimed_ports_read_all_ones_and_are_counted_and_logged(assemble, caplog):
    rom = assemble("bits 16\norg 0\nstart:\n mov dx, 0x300\n in ax, dx\n mov bx, ax\n"
                   " mov al, 0x5A\n out dx, al\n cli\n hlt\n"
                   "times 0xFFF0-($-$$) db 0\njmp 0xF000:start\ntimes 0x10000-($-$$) db 0\n")
    with caplog.at_level(logging.DEBUG, logger="qemu_lite.machine"):
        with Machine(memory="4M", bios=rom) as m:
            result = m.run(timeout=10)
            assert result.reason == "halted"
            assert m.reg("bx") == 0xFFFF
            assert (m.core.unclaimed_port_reads, m.core.unclaimed_port_writes) == (1, 1)
    assert "read of unclaimed port 0x300 (2 bytes)" in caplog.text
    assert "write of 0x5a to unclaimed port 0x300" in caplog.text


@pytest.mark.parametrize("mmu", ["cached", "naive", "identity"])
def test_guest_stores_to_the_bios_rom_are_ignored(assemble, mmu):
    rom = assemble("bits 16\norg 0\nstart:\n mov ax, 0xF000\n mov ds, ax\n"
                   " mov word [0x100], 0xBEEF\n mov bx, [0x100]\n cli\n hlt\n"
                   "times 0x100-($-$$) db 0\n dw 0x1234\n"
                   "times 0xFFF0-($-$$) db 0\njmp 0xF000:start\ntimes 0x10000-($-$$) db 0\n")
    with Machine(memory="4M", bios=rom, mmu=mmu) as m:
        assert m.run(timeout=10).reason == "halted"
        assert m.reg("bx") == 0x1234
        assert m.rom_writes_ignored == 1


@pytest.mark.parametrize("mmu", ["cached", "native"])
@pytest.mark.parametrize("address, size", [
    (2**64 + 0x200, 1),              # wrapped to 0x200 by the engine's uint64_t
    ((1 << 40) + 0x200, 1),          # the shadow MMU's page-table alias of RAM
    ((1 << 41) + 0x200, 1),          # the ROM write sink
    (-1, 1),
    (16 << 20, 1),                   # just past RAM
    ((16 << 20) - 4, 8),             # straddles the end of RAM
    (0xFEE00000, 4),                 # local APIC MMIO
    (0xFEC00000, 4),                 # IOAPIC MMIO
])
def test_memory_access_outside_ram_is_refused(mmu, address, size):
    # No VGA: its 0xA0000 window would be one more hole (tests/guest/test_vga_text.py).
    m = Machine(memory="16M", mmu=mmu, vga="none")
    before = bytes(m.core.ram)
    with pytest.raises(ValueError, match="valid: 0x0-0xeffff, 0x100000-0xffffff"):
        m.write_memory(address, b"\x77" * size)
    with pytest.raises(ValueError, match="valid: 0x0-0xffffff, 0xffff0000-0xffffffff"):
        m.read_memory(address, size)
    assert bytes(m.core.ram) == before
    m.close()


def test_negative_size_and_rom_writes_are_refused():
    m = Machine(memory="16M")
    bios = m.read_memory(0xF0000, 0x10000)
    assert m.read_memory(0xFFFF0000, 0x10000) == bios   # the high window reads the same
    with pytest.raises(ValueError, match="negative"):
        m.read_memory(0x1000, -1)
    for address in (0xF0000, 0xEFFFF, 0xFFFFFFF0):
        with pytest.raises(ValueError, match="BIOS ROM is read-only"):
            m.write_memory(address, b"\x90\x90")
    assert m.read_memory(0xF0000, 0x10000) == bios
    assert m.read_memory(0xEFFFF, 1) == b"\x00"
    m.write_memory(0xEFFFF, b"\x01")
    m.write_memory((16 << 20) - 1, b"\x02")
    assert m.read_memory(0xEFFFF, 1) + m.read_memory((16 << 20) - 1, 1) == b"\x01\x02"
    assert m.read_memory(0x1000, 0) == b""
    m.close()


@pytest.mark.parametrize("mmu", ["cached", "naive"])
def test_write_memory_over_page_tables_keeps_shadow_mmu_coherent(mmu):
    """A host write over a shadowed page table reaches the shadow entries."""
    m = Machine(memory="16M", mmu=mmu)
    pd, pt = 0x10000, 0x11000
    m.write_memory(pd, (pt | 7).to_bytes(4, "little"))
    m.write_memory(pt + 4 * 0x40, (0x40000 | 7).to_bytes(4, "little"))
    cr0, cr4 = 0x80000011, 0
    err, hit = m.core.debug_fill(cr0, pd, cr4, 0, 0x40000, "read", False)
    assert err is None and hit[0] == 0x40000
    assert m.core.is_tracked(pt >> 12)
    m.write_memory(pt + 4 * 0x40, (0x50000 | 7).to_bytes(4, "little"))
    err, hit = m.core.debug_fill(cr0, pd, cr4, 0, 0x40000, "read", False)
    assert err is None and hit[0] == 0x50000
    assert m.core.audit() == []
    m.close()
