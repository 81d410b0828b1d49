"""The 8259A pair, programmed through its ports as a BIOS and Linux do."""

from __future__ import annotations

import pytest

from qemu_lite.devices.base import IrqLine, RecordingIrqSink
from qemu_lite.devices.i8259 import Pic8259, PicPair


class Board:
    """A PicPair with the port decoding of the PC board."""

    def __init__(self) -> None:
        self.cpu = RecordingIrqSink()
        self.pair = PicPair(IrqLine(self.cpu, 0))

    def out(self, port: int, value: int) -> None:
        for base, dev in ((0x20, self.pair.master), (0xA0, self.pair.slave), (0x4D0, self.pair.elcr)):
            if base <= port < base + 2:
                dev.io_write(port - base, 1, value)
                return
        raise AssertionError(hex(port))

    def inb(self, port: int) -> int:
        for base, dev in ((0x20, self.pair.master), (0xA0, self.pair.slave), (0x4D0, self.pair.elcr)):
            if base <= port < base + 2:
                return dev.io_read(port - base, 1)
        raise AssertionError(hex(port))

    def init(self, master_base: int = 0x20, slave_base: int = 0x28, icw4: int = 0x01) -> None:
        """The Linux/SeaBIOS sequence: ICW1 0x11, ICW2 base, ICW3 4/2, ICW4 8086 mode."""
        for cmd, data, base, icw3 in ((0x20, 0x21, master_base, 0x04), (0xA0, 0xA1, slave_base, 0x02)):
            self.out(cmd, 0x11)
            self.out(data, base)
            self.out(data, icw3)
            self.out(data, icw4)
        self.out(0x21, 0x00)
        self.out(0xA1, 0x00)

    def eoi(self, irq: int) -> None:
        if irq >= 8:
            self.out(0xA0, 0x20)
        self.out(0x20, 0x20)

    @property
    def intr(self) -> bool:
        return self.cpu.levels.get(0, False)


@pytest.fixture
def board() -> Board:
    b = Board()
    b.init()
    return b


def test_init_sequence_sets_vector_bases_and_clears_mask() -> None:
    b = Board()
    b.out(0x21, 0xFF)
    b.init(0x08, 0x70)
    assert b.pair.master.irq_base == 0x08 and b.pair.slave.irq_base == 0x70
    assert b.pair.master.icw3 == 0x04 and b.pair.slave.icw3 == 0x02
    assert b.inb(0x21) == 0 and b.inb(0xA1) == 0
    b.pair.set_irq(8, True)
    assert b.pair.acknowledge() == 0x70


def test_icw1_without_icw4_and_single_mode_skip_words() -> None:
    pic = Pic8259()
    pic.io_write(0, 1, 0x12)  # ICW1: single, no ICW4
    pic.io_write(1, 1, 0x40)  # ICW2
    pic.io_write(1, 1, 0xF0)  # straight to OCW1
    assert pic.irq_base == 0x40 and pic.imr == 0xF0 and pic.icw3 == 0


def test_edge_irq_pending_acknowledge_eoi(board: Board) -> None:
    assert not board.pair.pending()
    line = IrqLine(board.pair, 4)
    line.pulse()
    assert board.pair.pending() and board.intr
    assert board.pair.acknowledge() == 0x24
    assert board.pair.master.isr == 0x10 and board.pair.master.irr == 0
    assert not board.intr
    board.eoi(4)
    assert board.pair.master.isr == 0 and not board.pair.pending()


def test_irq0_has_priority_over_irq1(board: Board) -> None:
    board.pair.set_irq(1, True)
    board.pair.set_irq(0, True)
    assert board.pair.acknowledge() == 0x20
    # IRQ 1 is lower than the in-service IRQ 0: held off until EOI.
    assert not board.pair.pending()
    board.eoi(0)
    assert board.pair.pending()
    assert board.pair.acknowledge() == 0x21


def test_higher_priority_nests_over_lower_in_service(board: Board) -> None:
    board.pair.set_irq(3, True)
    assert board.pair.acknowledge() == 0x23
    board.pair.set_irq(1, True)
    assert board.pair.pending()
    assert board.pair.acknowledge() == 0x21
    assert board.pair.master.isr == 0b1010
    board.eoi(1)  # non-specific EOI clears the highest in service: IRQ 1
    assert board.pair.master.isr == 0b1000


def test_slave_irq_cascades_through_irq2(board: Board) -> None:
    board.pair.set_irq(14, True)
    assert board.intr
    assert board.pair.acknowledge() == 0x28 + 6
    assert board.pair.master.isr == 0x04 and board.pair.slave.isr == 0x40
    # IRQ 3 on the master is below the in-service cascade (IRQ 2): must wait.
    board.pair.set_irq(3, True)
    assert not board.pair.pending()
    # IRQ 8 is above IRQ 14 on the slave, but the master's IR2 is in service
    # and the master is not in special fully nested mode.
    board.pair.set_irq(8, True)
    assert not board.pair.pending()
    # IRQ 1 outranks IR2 on the master: it nests.
    board.pair.set_irq(1, True)
    assert board.pair.acknowledge() == 0x21
    board.eoi(1)
    board.eoi(14)  # slave EOI then master EOI, as Linux does
    assert board.pair.acknowledge() == 0x28  # IRQ 8 before IRQ 3
    board.eoi(8)
    assert board.pair.acknowledge() == 0x23


def test_two_slave_requests_are_both_delivered(board: Board) -> None:
    board.pair.set_irq(12, True)
    board.pair.set_irq(11, True)
    assert board.pair.acknowledge() == 0x2B
    board.eoi(11)
    assert board.pair.acknowledge() == 0x2C


def test_special_fully_nested_mode_lets_slave_nest(board: Board) -> None:
    board.init(icw4=0x11)  # SFNM on both (only the master cares)
    board.pair.set_irq(14, True)
    assert board.pair.acknowledge() == 0x2E
    board.pair.set_irq(8, True)
    assert board.pair.acknowledge() == 0x28
    board.pair.set_irq(3, True)
    assert not board.pair.pending()  # IRQ 3 stays below the in-service IR2


def test_masked_irq_is_not_pending(board: Board) -> None:
    board.out(0x21, 0x10)
    board.pair.set_irq(4, True)
    assert not board.pair.pending() and not board.intr
    assert board.inb(0x20) == 0x10  # IRR still records the request
    board.out(0x21, 0x00)
    assert board.pair.pending() and board.intr
    board.out(0xA1, 0x02)
    board.pair.set_irq(9, True)
    assert board.pair.acknowledge() == 0x24
    board.eoi(4)
    assert not board.pair.pending()


def test_irq2_is_routed_to_irq9(board: Board) -> None:
    board.pair.set_irq(2, True)
    assert board.pair.acknowledge() == 0x29
    with pytest.raises(ValueError):
        board.pair.set_irq(16, True)


def test_level_triggered_irq_reasserts_after_eoi(board: Board) -> None:
    board.out(0x4D1, 0x08)  # IRQ 11 level-triggered
    assert board.inb(0x4D1) == 0x08
    line = IrqLine(board.pair, 11)
    line.raise_()
    assert board.pair.acknowledge() == 0x2B
    assert not board.pair.pending()  # in service
    board.eoi(11)
    assert board.pair.pending()  # line still high: asks again
    assert board.pair.acknowledge() == 0x2B
    line.lower()
    board.eoi(11)
    assert not board.pair.pending()


def test_edge_irq_does_not_reassert_while_line_stays_high(board: Board) -> None:
    line = IrqLine(board.pair, 11)
    line.raise_()
    assert board.pair.acknowledge() == 0x2B
    board.eoi(11)
    assert not board.pair.pending()


def test_elcr_fixed_bits_read_zero(board: Board) -> None:
    board.out(0x4D0, 0xFF)
    board.out(0x4D1, 0xFF)
    assert board.inb(0x4D0) == 0xF8
    assert board.inb(0x4D1) == 0xDE
    assert board.pair.elcr.io_read(0, 2) == 0xDEF8


def test_ltim_makes_all_inputs_level(board: Board) -> None:
    board.out(0x20, 0x19)  # ICW1 with LTIM
    board.out(0x21, 0x20)
    board.out(0x21, 0x04)
    board.out(0x21, 0x01)
    board.pair.set_irq(5, True)
    assert board.inb(0x20) & 0x20
    board.pair.set_irq(5, False)
    assert not board.inb(0x20) & 0x20
    assert not board.pair.pending()


def test_spurious_irq7_when_request_vanishes(board: Board) -> None:
    board.out(0x4D0, 0x20)  # IRQ 5 level-triggered
    board.pair.set_irq(5, True)
    assert board.pair.pending()
    board.pair.set_irq(5, False)  # gone before the INTA cycle
    assert board.pair.acknowledge() == 0x27
    assert board.pair.master.isr == 0  # no ISR bit for a spurious interrupt


def test_spurious_when_masked_between_intr_and_inta(board: Board) -> None:
    board.pair.set_irq(3, True)
    assert board.pair.pending()
    board.out(0x21, 0x08)
    assert board.pair.acknowledge() == 0x27
    assert board.pair.master.isr == 0


def test_spurious_irq15_from_slave_keeps_master_ir2_in_service() -> None:
    pair = PicPair()
    for chip, base, icw3 in ((pair.master, 0x20, 4), (pair.slave, 0x28, 2)):
        for off, value in ((0, 0x11), (1, base), (1, icw3), (1, 0x01), (1, 0)):
            chip.io_write(off, 1, value)
    pair.master.set_irq(2, True)  # the master's IR2 claims an interrupt the slave does not have
    assert pair.acknowledge() == 0x2F
    assert pair.master.isr == 0x04 and pair.slave.isr == 0


def test_auto_eoi_sets_no_isr(board: Board) -> None:
    board.init(icw4=0x03)
    board.pair.set_irq(6, True)
    assert board.pair.acknowledge() == 0x26
    assert board.pair.master.isr == 0
    board.pair.set_irq(7, True)
    assert board.pair.acknowledge() == 0x27  # no EOI needed
    assert board.pair.master.isr == 0


def test_rotate_in_auto_eoi_mode(board: Board) -> None:
    board.init(icw4=0x03)
    board.out(0x20, 0x80)  # OCW2: rotate in AEOI mode (set)
    board.pair.set_irq(1, True)
    assert board.pair.acknowledge() == 0x21
    assert board.pair.master.priority_add == 2  # IRQ 1 became lowest priority
    board.pair.set_irq(1, False)
    board.pair.set_irq(1, True)
    board.pair.set_irq(3, True)
    assert board.pair.acknowledge() == 0x23  # now IRQ 3 outranks IRQ 1
    board.out(0x20, 0x00)  # rotate in AEOI mode (clear)
    assert not board.pair.master.rotate_on_auto_eoi


def test_poll_mode(board: Board) -> None:
    board.out(0x21, 0xFF)  # a polling driver keeps the INT output masked
    board.out(0x21, 0x00)
    board.out(0x20, 0x0C)  # OCW3: poll
    assert board.inb(0x20) == 0x00  # nothing requested
    board.pair.set_irq(5, True)
    board.out(0x20, 0x0C)
    assert board.inb(0x20) == 0x85  # I bit + level 5, and it acted as INTA
    assert board.pair.master.isr == 0x20 and board.pair.master.irr == 0
    assert board.inb(0x20) == 0x00  # poll lasts one read: back to reading IRR


def test_ocw3_reads_irr_or_isr(board: Board) -> None:
    board.pair.set_irq(3, True)
    board.pair.set_irq(5, True)
    assert board.inb(0x20) == 0x28  # IRR is the default after ICW1
    board.pair.acknowledge()
    board.out(0x20, 0x0B)  # read ISR
    assert board.inb(0x20) == 0x08
    assert board.inb(0x21) == 0x00  # A0 = 1 still reads the IMR
    board.out(0x20, 0x0A)  # read IRR
    assert board.inb(0x20) == 0x20
    board.out(0x20, 0x08)  # OCW3 without RR: selection unchanged
    assert board.inb(0x20) == 0x20


def test_specific_eoi(board: Board) -> None:
    board.pair.set_irq(4, True)
    board.pair.acknowledge()
    board.pair.set_irq(1, True)
    board.pair.acknowledge()
    assert board.pair.master.isr == 0x12
    board.out(0x20, 0x60 | 4)  # specific EOI for IRQ 4, although IRQ 1 is highest
    assert board.pair.master.isr == 0x02


def test_rotate_on_nonspecific_eoi(board: Board) -> None:
    for irq in (3, 4):
        board.pair.set_irq(irq, True)
    assert board.pair.acknowledge() == 0x23
    board.out(0x20, 0xA0)  # rotate on non-specific EOI: IRQ 3 becomes lowest
    assert board.pair.master.priority_add == 4
    board.pair.set_irq(3, False)
    board.pair.set_irq(3, True)
    assert board.pair.acknowledge() == 0x24  # IRQ 4 now outranks IRQ 3


def test_set_priority_and_rotate_on_specific_eoi(board: Board) -> None:
    board.out(0x20, 0xC0 | 4)  # set priority: IRQ 4 lowest, IRQ 5 highest
    board.pair.set_irq(0, True)
    board.pair.set_irq(6, True)
    assert board.pair.acknowledge() == 0x26
    board.out(0x20, 0xE0 | 6)  # rotate on specific EOI 6: IRQ 7 highest now
    assert board.pair.master.isr == 0 and board.pair.master.priority_add == 7
    board.pair.set_irq(7, True)
    assert board.pair.acknowledge() == 0x27


def test_special_mask_mode_enables_lower_levels(board: Board) -> None:
    board.pair.set_irq(3, True)
    assert board.pair.acknowledge() == 0x23
    board.pair.set_irq(5, True)
    assert not board.pair.pending()
    board.out(0x21, 0x08)  # mask the level in service ...
    board.out(0x20, 0x68)  # ... and set special mask mode
    assert board.pair.pending()
    assert board.pair.acknowledge() == 0x25
    board.out(0x20, 0x48)  # reset special mask mode
    assert not board.pair.master.special_mask


def test_icw1_resets_edge_sense_and_mask(board: Board) -> None:
    line = IrqLine(board.pair, 6)
    line.raise_()
    board.out(0x21, 0x01)
    board.init()
    assert board.inb(0x20) == 0  # the latched request is gone
    assert not board.pair.pending()
    line.lower()
    line.raise_()
    assert board.pair.acknowledge() == 0x26


def test_save_and_load_state_round_trip(board: Board) -> None:
    board.out(0x4D1, 0x08)
    board.pair.set_irq(11, True)
    board.pair.set_irq(4, True)
    assert board.pair.acknowledge() == 0x2B
    state = board.pair.save_state()
    other = Board()
    other.pair.load_state(state)
    assert other.pair.save_state() == state
    assert other.pair.master.isr == 0x04 and not other.intr
    for b in (board, other):
        b.eoi(11)
        assert b.intr
        assert b.pair.acknowledge() == 0x2B  # level IRQ 11 again, ahead of IRQ 4
    with pytest.raises(ValueError):
        other.pair.load_state({"version": 99})


def test_reset_clears_everything(board: Board) -> None:
    board.pair.set_irq(4, True)
    board.out(0x4D1, 0x08)
    board.pair.reset()
    assert board.pair.master.irr == 0 and board.pair.slave.elcr == 0
    assert not board.intr
