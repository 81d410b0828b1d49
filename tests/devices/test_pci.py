"""PCI configuration mechanism #1 and the three functions of the PIIX-based board."""

from __future__ import annotations

import pytest

from qemu_lite.devices.bmdma import PiixIde
from qemu_lite.devices.ide import IdeChannel
from qemu_lite.devices.pci import (
    I440fxHostBridge,
    PciBus,
    PciConfigPorts,
    Piix3IsaBridge,
    slot_pirq,
)


class Board:
    """Bus 0 with the host bridge, the ISA bridge and the IDE function, behind 0xCF8."""

    def __init__(self) -> None:
        self.resets = 0
        self.bar_changes: list[tuple[int | None, int | None]] = []
        self.ide0 = IdeChannel(None)
        self.ide1 = IdeChannel(None)
        self.bus = PciBus()
        self.host = I440fxHostBridge()
        self.isa = Piix3IsaBridge()
        self.ide = PiixIde(None, self.ide0, self.ide1,
                           on_bar_change=lambda old, new: self.bar_changes.append((old, new)))
        self.bus.add(0, 0, self.host)
        self.bus.add(1, 0, self.isa)
        self.bus.add(1, 1, self.ide)
        self.ports = PciConfigPorts(self.bus, on_reset=self._reset)

    def _reset(self) -> None:
        self.resets += 1

    def address(self, dev: int, fn: int, reg: int, bus: int = 0) -> int:
        return 0x80000000 | bus << 16 | dev << 11 | fn << 8 | (reg & 0xFC)

    def read(self, dev: int, fn: int, reg: int, size: int = 4, bus: int = 0) -> int:
        self.ports.io_write(0, 4, self.address(dev, fn, reg, bus))
        return self.ports.io_read(4 + (reg & 3), size)

    def write(self, dev: int, fn: int, reg: int, value: int, size: int = 4) -> None:
        self.ports.io_write(0, 4, self.address(dev, fn, reg))
        self.ports.io_write(4 + (reg & 3), size, value)


@pytest.fixture
def board() -> Board:
    return Board()


def test_identity_of_the_three_functions(board: Board) -> None:
    assert board.read(0, 0, 0x00) == 0x12378086
    assert board.read(1, 0, 0x00) == 0x70008086
    assert board.read(1, 1, 0x00) == 0x70108086
    assert board.read(0, 0, 0x08) >> 8 == 0x060000  # host bridge
    assert board.read(1, 0, 0x08) >> 8 == 0x060100  # ISA bridge
    assert board.read(1, 1, 0x08) >> 8 == 0x010180  # IDE, legacy, bus master
    assert board.read(1, 0, 0x0E, 1) & 0x80  # device 1 is multi-function
    assert not board.read(0, 0, 0x0E, 1) & 0x80


def test_unimplemented_functions_read_all_ones(board: Board) -> None:
    assert board.read(2, 0, 0x00) == 0xFFFFFFFF
    assert board.read(1, 2, 0x00) == 0xFFFFFFFF
    assert board.read(0, 1, 0x00) == 0xFFFFFFFF
    assert board.read(31, 7, 0x00) == 0xFFFFFFFF
    assert board.read(0, 0, 0x00, bus=1) == 0xFFFFFFFF
    assert board.read(2, 0, 0x02, 2) == 0xFFFF
    board.write(2, 0, 0x04, 0x0007)  # vanishes


def test_enable_bit_and_address_register(board: Board) -> None:
    board.ports.io_write(0, 4, 0x00000000)  # enable clear: no configuration cycle
    assert board.ports.io_read(4, 4) == 0xFFFFFFFF
    board.ports.io_write(0, 4, 0xFFFFFFFF)
    assert board.ports.io_read(0, 4) == 0x80FFFFFC  # reserved bits read zero
    board.ports.io_write(0, 4, 0x80000800)  # 00:01.0, register 0
    assert board.ports.io_read(0, 4) == 0x80000800
    assert board.ports.io_read(0, 2) == 0xFFFF  # not a dword access: not CONFIG_ADDRESS
    assert board.ports.io_read(0, 4) == 0x80000800


def test_byte_and_word_accesses_use_the_data_port_lanes(board: Board) -> None:
    assert board.read(1, 1, 0x00, 1) == 0x86
    assert board.read(1, 1, 0x01, 1) == 0x80
    assert board.read(1, 1, 0x02, 2) == 0x7010
    assert board.read(1, 1, 0x03, 1) == 0x70
    assert board.read(1, 1, 0x0A, 2) == 0x0101
    assert board.read(1, 1, 0x09, 1) == 0x80


def test_read_only_registers_ignore_writes(board: Board) -> None:
    board.write(1, 1, 0x00, 0x12345678)
    board.write(1, 1, 0x08, 0xFFFFFFFF)
    assert board.read(1, 1, 0x00) == 0x70108086
    assert board.read(1, 1, 0x08) == 0x01018000
    board.write(0, 0, 0x04, 0x0000, 2)  # the host bridge's command register is fixed
    assert board.read(0, 0, 0x04, 2) == 0x0006


def test_ide_command_register_io_and_bus_master_bits(board: Board) -> None:
    assert board.read(1, 1, 0x04, 2) == 0
    board.write(1, 1, 0x04, 0xFFFF, 2)
    assert board.read(1, 1, 0x04, 2) == 0x0005  # I/O space and bus master only


def test_status_error_bits_are_write_one_to_clear(board: Board) -> None:
    board.ide.set_config(0x06, 2, 0x2280)  # received master abort
    board.write(1, 1, 0x06, 0x0080, 2)  # writing zero to the error bit keeps it
    assert board.read(1, 1, 0x06, 2) == 0x2280
    board.write(1, 1, 0x06, 0x2000, 2)
    assert board.read(1, 1, 0x06, 2) == 0x0280


def test_bar4_sizing_and_programming(board: Board) -> None:
    assert board.read(1, 1, 0x20) == 0x00000001  # unassigned I/O BAR
    for bar in (0x10, 0x14, 0x18, 0x1C, 0x24):  # legacy mode: no other BARs
        board.write(1, 1, bar, 0xFFFFFFFF)
        assert board.read(1, 1, bar) == 0
    board.write(1, 1, 0x20, 0xFFFFFFFF)
    mask = board.read(1, 1, 0x20)
    assert mask == 0xFFFFFFF1  # upper bits writable, as QEMU's PIIX: SeaBIOS sizes this way
    assert (~(mask & 0xFFFFFFFC) & 0xFFFFFFFF) + 1 == 16  # 16 I/O ports
    assert board.bar_changes == []  # I/O decoding is off while the BAR is sized
    board.write(1, 1, 0x20, 0xC000)
    assert board.read(1, 1, 0x20) == 0xC001
    board.write(1, 1, 0x04, 0x0005, 2)
    assert board.bar_changes == [(None, 0xC000)]
    assert board.ide.bmdma_base == 0xC000
    board.write(1, 1, 0x20, 0xD041, 1)  # a byte write to bits 7:0 (bit 0 read-only)
    assert board.read(1, 1, 0x20) == 0xC041
    board.write(1, 1, 0x21, 0xD0, 1)
    assert board.bar_changes[-2:] == [(0xC000, 0xC040), (0xC040, 0xD040)]
    board.write(1, 1, 0x22, 0x1, 1)  # a base beyond the 64 KiB I/O space decodes nowhere
    assert board.bar_changes[-1] == (0xD040, None)
    board.write(1, 1, 0x22, 0x0, 1)
    assert board.bar_changes[-1] == (None, 0xD040)
    board.write(1, 1, 0x04, 0x0004, 2)
    assert board.bar_changes[-1] == (0xD040, None)
    assert board.ide.bmdma_base is None


def test_firmware_programmed_default_and_reset(board: Board) -> None:
    changes: list[tuple[int | None, int | None]] = []
    ide = PiixIde(None, None, None, bmdma_base=0xC000,
                  on_bar_change=lambda old, new: changes.append((old, new)))
    assert changes == [(None, 0xC000)]
    assert ide.config_read(0x20, 4) == 0xC001 and ide.config_read(0x04, 2) == 0x0005
    ide.config_write(0x20, 4, 0xE000)
    ide.reset()
    assert changes == [(None, 0xC000), (0xC000, 0xE000), (0xE000, 0xC000)]
    with pytest.raises(ValueError):
        PiixIde(None, None, bmdma_base=0x12345)


def test_idetim_decode_enable_and_timing_registers(board: Board) -> None:
    assert board.read(1, 1, 0x40) == 0x80008000  # both channels decoded
    board.write(1, 1, 0x40, 0xA307A307)
    assert board.read(1, 1, 0x40) == 0xA307A307
    board.write(1, 1, 0x44, 0x12, 1)
    assert board.read(1, 1, 0x44, 1) == 0x12


def test_isa_bridge_registers(board: Board) -> None:
    assert board.read(1, 0, 0x60) == 0x0B0B0A0A  # PIRQA-D on 10, 10, 11, 11 (SeaBIOS's)
    board.write(1, 0, 0x60, 0x80808080)
    assert board.read(1, 0, 0x60) == 0x80808080
    board.bus.reset()
    assert board.read(1, 0, 0x60) == 0x0B0B0A0A


class Levels:
    """An IrqSink that keeps the last level of each input and every change."""

    def __init__(self) -> None:
        self.level: dict[int, bool] = {}
        self.changes: list[tuple[int, bool]] = []

    def set_irq(self, irq: int, level: bool) -> None:
        self.level[irq] = level
        self.changes.append((irq, level))

    def high(self) -> set[int]:
        return {irq for irq, level in self.level.items() if level}


def test_slots_rotate_their_pins_onto_the_pirqs() -> None:
    assert [slot_pirq(1, pin) for pin in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert [slot_pirq(3, pin) for pin in (1, 2, 3, 4)] == [2, 3, 0, 1]  # the e1000: PIRQC
    assert slot_pirq(0, 1) == 3 and slot_pirq(31, 1) == 2
    with pytest.raises(ValueError):
        slot_pirq(3, 0)


def test_pirq_routing_follows_the_route_control_registers() -> None:
    isa = Levels()
    bus, bridge = PciBus(), Piix3IsaBridge(isa)
    bus.add(1, 0, bridge)
    ports = PciConfigPorts(bus)
    a, c = bridge.pirq_line(0), bridge.pirq_line(2)

    def write(reg: int, value: int) -> None:
        ports.io_write(0, 4, 0x80000000 | 1 << 11 | reg & 0xFC)
        ports.io_write(4 + (reg & 3), 1, value)

    c.raise_()
    assert isa.high() == {11}
    write(0x62, 0x05)  # re-routed while asserted: IRQ 11 drops, IRQ 5 rises
    assert isa.high() == {5} and isa.changes[-2:] == [(11, False), (5, True)]
    c.lower()
    assert isa.high() == set()
    write(0x62, 0x0A)  # PIRQA and PIRQC share IRQ 10: the OR of both
    a.raise_()
    c.raise_()
    a.lower()
    assert isa.high() == {10}
    c.lower()
    assert isa.high() == set()
    c.raise_()
    write(0x62, 0x8A)  # bit 7: disconnected
    assert isa.high() == set()
    write(0x62, 0x08)  # IRQ 8 is not routable: still nowhere
    assert isa.high() == set() and bridge.route(2) is None
    write(0x62, 0x0B)
    assert isa.high() == {11}
    bus.reset()  # routes back to the reset ones; the wire is still high
    assert isa.high() == {11} and bridge.pirq_levels[2]
    write(0x62, 0x05)
    saved = bus.save_state()
    write(0x62, 0x0A)
    assert isa.high() == {10}
    bus.load_state(saved)  # the loaded route takes the asserted PIRQ back to IRQ 5
    assert isa.high() == {5}
    with pytest.raises(ValueError):
        bridge.pirq_line(4)


def test_host_bridge_pam_registers_are_stored(board: Board) -> None:
    board.write(0, 0, 0x58, 0x33333300)
    assert board.read(0, 0, 0x58) == 0x33333300
    assert board.read(0, 0, 0x70) >> 16 & 0xFF == 0x02  # SMRAM


def test_reset_control_register(board: Board) -> None:
    board.ports.io_write(1, 1, 0x02)
    assert board.resets == 0 and board.ports.io_read(1, 1) == 0x02
    board.ports.io_write(1, 1, 0x06)
    assert board.resets == 1


def test_saved_state(board: Board) -> None:
    board.write(1, 1, 0x20, 0xC000)
    board.write(1, 1, 0x04, 0x0005, 2)
    board.write(1, 0, 0x60, 0x0B)
    state = board.bus.save_state()
    ports = board.ports.save_state()
    other = Board()
    other.bus.load_state(state)
    other.ports.load_state(ports)
    assert other.read(1, 1, 0x20) == 0xC001
    assert other.read(1, 0, 0x60, 1) == 0x0B
    assert other.bar_changes == [(None, 0xC000)]  # the machine maps the block again
    with pytest.raises(ValueError):
        other.bus.load_state({**state, "version": 9})
