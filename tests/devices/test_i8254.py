"""The 8254 against a manual clock: counts and OUT derived from guest time."""

from __future__ import annotations

import pytest

from qemu_lite.devices.base import Clock, IrqLine, RecordingIrqSink
from qemu_lite.devices.i8254 import PIT_HZ, Pit8254, ns_to_tick, tick_to_ns
from qemu_lite.devices.i8259 import PicPair

MS = 1_000_000
US = 1_000


class Board:
    """A PIT with IRQ 0 recorded, programmed through its ports."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.sink = RecordingIrqSink()
        self.pit = Pit8254(self.clock, IrqLine(self.sink, 0))

    def out(self, port: int, value: int) -> None:
        if port == 0x61:
            self.pit.port61.io_write(0, 1, value)
        else:
            self.pit.ports.io_write(port - 0x40, 1, value)

    def inb(self, port: int) -> int:
        if port == 0x61:
            return self.pit.port61.io_read(0, 1)
        return self.pit.ports.io_read(port - 0x40, 1)

    def program(self, channel: int, mode: int, count: int, bcd: bool = False) -> None:
        self.out(0x43, (channel << 6) | 0x30 | (mode << 1) | int(bcd))
        self.out(0x40 + channel, count & 0xFF)
        self.out(0x40 + channel, count >> 8)

    def latch(self, channel: int) -> int:
        self.out(0x43, channel << 6)
        lo = self.inb(0x40 + channel)
        return lo | self.inb(0x40 + channel) << 8

    def rising_edges(self) -> int:
        return sum(1 for irq, level in self.sink.history if irq == 0 and level)

    @property
    def irq0(self) -> bool:
        return self.sink.levels.get(0, False)


@pytest.fixture
def board() -> Board:
    return Board()


def test_tick_grid_round_trips() -> None:
    for tick in (0, 1, 2, 11932, PIT_HZ, 10**9):
        ns = tick_to_ns(tick)
        assert ns_to_tick(ns) == tick and ns_to_tick(ns - 1) == tick - 1


def test_mode2_at_divisor_11932_gives_100_hz(board: Board) -> None:
    board.program(0, 2, 11932)
    assert board.irq0  # mode 2: OUT high after programming
    start = board.rising_edges()
    board.clock.advance(1_000_000_000)
    # 1 s holds 99.998 periods of 11932 / 1193182 s: the 100th edge is 15 us later.
    assert board.rising_edges() - start == 99
    board.clock.advance(20 * US)
    assert board.rising_edges() - start == 100
    falls = sum(1 for _, level in board.sink.history if not level)
    assert falls == 100  # one short low pulse per period


def test_mode2_low_pulse_lasts_one_clock(board: Board) -> None:
    board.program(0, 2, 100)
    # loaded on the tick after the write, low during the 100th clock of each period
    fall = tick_to_ns(ns_to_tick(0) + 1 + 99)
    board.clock.advance(fall - 1)
    assert board.irq0
    board.clock.advance(1)
    assert not board.irq0
    board.clock.advance(tick_to_ns(ns_to_tick(0) + 1 + 100) - fall)
    assert board.irq0


def test_mode2_edges_reach_the_pic() -> None:
    clock = Clock()
    pair = PicPair()
    for chip, base, icw3 in ((pair.master, 0x08, 4), (pair.slave, 0x70, 2)):
        for off, value in ((0, 0x11), (1, base), (1, icw3), (1, 0x01), (1, 0)):
            chip.io_write(off, 1, value)
    pit = Pit8254(clock, IrqLine(pair, 0))
    for port, value in ((3, 0x34), (0, 0x9C), (0, 0x2E)):  # 11932 = 0x2E9C
        pit.ports.io_write(port, 1, value)
    assert pair.acknowledge() == 0x08  # the rising edge at programming
    pair.master.io_write(0, 1, 0x20)
    ticks = 0
    for _ in range(50):
        clock.advance(10 * MS + 1 * US)
        if pair.pending():
            assert pair.acknowledge() == 0x08
            pair.master.io_write(0, 1, 0x20)
            ticks += 1
    assert ticks == 50


def test_late_timer_replays_the_missed_pulse(board: Board) -> None:
    board.program(0, 2, 1000)
    clock = board.clock
    clock.run_due()
    before = board.rising_edges()
    # A machine that only looks at its timers now and then: jump past the
    # whole low pulse before letting the timer run.
    clock._now = tick_to_ns(ns_to_tick(0) + 1 + 1000) + 500 * US
    clock.run_due()
    assert board.rising_edges() == before + 1
    assert board.irq0


class CreepingClock(Clock):
    """Guest time that moves on by ``step`` ns at every read, as the real-time clock
    does while the host handles one port access."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def now(self) -> int:
        self._now += self.step
        return self._now


def test_mode4_short_count_pulse_is_not_lost_while_the_write_is_handled() -> None:
    """Linux's one-shot tick: mode 4 re-armed with its minimum delta (15 clocks, 12.6 us).
    The host took longer than that between taking the count and looking at OUT0, so
    the whole pulse fell in between and IRQ 0 never rose: the kernel waited forever."""
    clock = CreepingClock(step=20 * US)
    sink = RecordingIrqSink()
    pit = Pit8254(clock, IrqLine(sink, 0))
    pit.ports.io_write(3, 1, 0x38)  # counter 0, LSB then MSB, mode 4: OUT high
    assert sink.history == [(0, True)]
    for _ in range(50):
        pit.ports.io_write(0, 1, 15)
        pit.ports.io_write(0, 1, 0)
        clock.advance(1 * MS)
    assert sum(1 for _, level in sink.history[1:] if level) == 50


def test_mode4_pulse_overdue_at_a_count_write_still_raises_irq0(board: Board) -> None:
    """The guest re-arms after its previous pulse was due but before the machine ran
    the PIT's timer: that pulse happened (IRQ 0 rose) and the new count gives its own."""
    board.program(0, 4, 100)
    board.clock._now = tick_to_ns(ns_to_tick(0) + 1 + 100) + 50 * US  # timer not run
    before = board.rising_edges()
    board.out(0x40, 100)
    assert board.rising_edges() == before + 1
    board.out(0x40, 0)
    board.clock.advance(1 * MS)
    assert board.rising_edges() == before + 2


def test_mode0_fires_once(board: Board) -> None:
    board.program(0, 0, 1193)  # ~1 ms
    assert not board.irq0
    board.clock.advance(999 * US)
    assert not board.irq0
    board.clock.advance(2 * US)
    assert board.irq0
    board.clock.advance(1000 * MS)
    assert board.irq0 and board.rising_edges() == 1
    assert board.clock.next_deadline() is None  # nothing left to do


def test_mode0_reprogramming_lowers_out(board: Board) -> None:
    board.program(0, 0, 10)
    board.clock.advance(20 * US)
    assert board.irq0
    board.out(0x40, 100)  # first byte: counting stops, OUT low at once
    assert not board.irq0
    board.clock.advance(1 * MS)
    assert not board.irq0  # still waiting for the MSB
    board.out(0x40, 0)
    board.clock.advance(83 * US)  # 100 clocks after the load clock: 84.6 us
    assert not board.irq0
    board.clock.advance(3 * US)
    assert board.irq0


def test_latched_count_decreases_at_pit_rate(board: Board) -> None:
    board.program(0, 0, 60000)
    board.clock.advance(5 * US)
    first = board.latch(0)
    board.clock.advance(10 * MS)
    second = board.latch(0)
    assert first == 60000 - (ns_to_tick(5 * US) - 1)
    assert first - second == pytest.approx(11932, abs=1)


def test_count_zero_means_65536(board: Board) -> None:
    board.program(0, 0, 0)
    t0 = ns_to_tick(board.clock.now()) + 1
    board.clock.advance(tick_to_ns(t0 + 1) - board.clock.now())
    assert board.latch(0) == 0xFFFF
    board.clock.advance(tick_to_ns(t0 + 65535) - board.clock.now())
    assert board.latch(0) == 1 and not board.irq0
    board.clock.advance(tick_to_ns(t0 + 65536) - board.clock.now())
    assert board.irq0


def test_latch_holds_value_until_read(board: Board) -> None:
    board.program(1, 2, 50000)
    board.clock.advance(1 * MS)
    board.out(0x43, 0x40)  # latch counter 1
    latched_tick = ns_to_tick(board.clock.now())
    board.clock.advance(5 * MS)
    board.out(0x43, 0x40)  # a second latch before reading is ignored
    lo = board.inb(0x41)
    board.clock.advance(1 * MS)
    hi = board.inb(0x41)
    assert lo | hi << 8 == 50000 - (latched_tick - 1)
    live = board.inb(0x41) | board.inb(0x41) << 8
    assert live < 50000 - 6000


def test_lobyte_hibyte_sequencing(board: Board) -> None:
    board.out(0x43, 0x10)  # counter 0, LSB only, mode 0
    board.out(0x40, 0x80)
    assert board.pit.channels[0].cr == 0x0080
    board.out(0x43, 0x20)  # MSB only
    board.out(0x40, 0x12)
    assert board.pit.channels[0].cr == 0x1200
    board.clock.advance(2 * US)
    assert board.inb(0x40) == 0x11  # MSB-only reads return the MSB: 0x1200 - 1 clock
    board.out(0x43, 0x30)
    board.out(0x40, 0x34)
    board.out(0x40, 0x12)
    assert board.pit.channels[0].cr == 0x1234
    board.clock.advance(tick_to_ns(ns_to_tick(board.clock.now()) + 2) - board.clock.now())
    # the read flip-flop: LSB first, then MSB
    assert board.inb(0x40) == 0x33
    assert board.inb(0x40) == 0x12


def test_read_back_status_byte(board: Board) -> None:
    board.out(0x43, 0xB4)  # counter 2, LSB/MSB, mode 2, binary
    board.out(0x43, 0xE8)  # read-back status of counter 2
    assert board.inb(0x42) == 0x80 | 0x40 | 0x34  # OUT high, NULL COUNT, RW 3, mode 2
    board.out(0x42, 0x00)
    board.out(0x42, 0x10)
    board.out(0x61, 0x01)  # gate high: the count is loaded on the next clock
    board.clock.advance(2 * US)
    board.out(0x43, 0xE8)
    assert board.inb(0x42) == 0x80 | 0x34  # NULL COUNT cleared
    board.out(0x43, 0x96)  # counter 2, LSB only, mode 3, binary
    board.out(0x43, 0xE8)
    assert board.inb(0x42) == 0x80 | 0x40 | 0x16
    board.out(0x43, 0x31)  # counter 0, LSB/MSB, mode 0, BCD
    board.out(0x43, 0xE2)  # read-back status of counter 0
    assert board.inb(0x40) == 0x40 | 0x31  # OUT low (mode 0), NULL COUNT


def test_read_back_status_then_count_several_channels(board: Board) -> None:
    board.program(0, 2, 1000)
    board.program(1, 3, 2000)
    board.clock.advance(100 * US)
    board.out(0x43, 0xC6)  # latch count and status of counters 0 and 1
    board.clock.advance(1 * MS)
    status0 = board.inb(0x40)
    count0 = board.inb(0x40) | board.inb(0x40) << 8
    status1 = board.inb(0x41)
    count1 = board.inb(0x41) | board.inb(0x41) << 8
    assert status0 & 0x3F == 0x34 and status1 & 0x3F == 0x36
    elapsed = ns_to_tick(100 * US) - 1
    assert count0 == 1000 - elapsed
    assert count1 == 2000 - 2 * elapsed
    # The latches are consumed: reads return the live count again.
    live = 1000 - (ns_to_tick(board.clock.now()) - 1) % 1000
    assert board.inb(0x40) | board.inb(0x40) << 8 == live


def test_mode3_square_wave(board: Board) -> None:
    board.program(0, 3, 1000)  # even count: 500 clocks high, 500 low
    t0 = ns_to_tick(board.clock.now()) + 1
    for offset, level in ((0, True), (499, True), (500, False), (999, False), (1000, True), (1500, False)):
        board.clock.advance(tick_to_ns(t0 + offset) - board.clock.now())
        assert board.irq0 is level, offset
        assert board.pit.channels[0].output() is level


def test_mode3_count_decrements_by_two(board: Board) -> None:
    board.program(1, 3, 1000)
    t0 = ns_to_tick(board.clock.now()) + 1
    for offset, count in ((0, 1000), (1, 998), (499, 2), (500, 1000), (501, 998), (1000, 1000)):
        board.clock.advance(tick_to_ns(t0 + offset) - board.clock.now())
        assert board.latch(1) == count, offset


def test_mode3_odd_count_is_high_one_clock_longer(board: Board) -> None:
    board.program(0, 3, 5)
    t0 = ns_to_tick(board.clock.now()) + 1
    levels = []
    for offset in range(10):
        board.clock.advance(tick_to_ns(t0 + offset) - board.clock.now())
        levels.append(board.irq0)
    assert levels == [True, True, True, False, False] * 2


def test_mode3_new_count_waits_for_half_cycle(board: Board) -> None:
    board.program(0, 3, 1000)
    t0 = ns_to_tick(board.clock.now()) + 1
    board.clock.advance(tick_to_ns(t0 + 100) - board.clock.now())
    board.out(0x40, 200 & 0xFF)
    board.out(0x40, 0)
    board.clock.advance(tick_to_ns(t0 + 499) - board.clock.now())
    assert board.irq0  # the old half-cycle runs to its end
    board.clock.advance(tick_to_ns(t0 + 500) - board.clock.now())
    assert not board.irq0  # low half of the new count: 100 clocks
    board.clock.advance(tick_to_ns(t0 + 600) - board.clock.now())
    assert board.irq0
    board.clock.advance(tick_to_ns(t0 + 700) - board.clock.now())
    assert not board.irq0


def test_mode4_software_strobe(board: Board) -> None:
    board.program(0, 4, 100)
    t0 = ns_to_tick(board.clock.now()) + 1
    assert board.irq0
    board.clock.advance(tick_to_ns(t0 + 100) - board.clock.now())
    assert not board.irq0
    board.clock.advance(tick_to_ns(t0 + 101) - board.clock.now())
    assert board.irq0
    board.clock.advance(200 * MS)
    assert board.rising_edges() == 2  # programming, then the single strobe


def test_mode1_one_shot_triggered_by_gate(board: Board) -> None:
    board.program(2, 1, 100)
    board.clock.advance(1 * MS)
    assert board.inb(0x61) & 0x20  # OUT high: waiting for a trigger
    board.out(0x61, 0x01)
    board.clock.advance(2 * US)
    assert not board.inb(0x61) & 0x20  # triggered: low until terminal count
    board.clock.advance(90 * US)
    assert board.inb(0x61) & 0x20
    board.out(0x61, 0x00)
    board.out(0x61, 0x01)  # retrigger
    board.clock.advance(2 * US)
    assert not board.inb(0x61) & 0x20


def test_mode5_hardware_strobe(board: Board) -> None:
    board.program(2, 5, 10)
    board.clock.advance(1 * MS)
    assert board.inb(0x61) & 0x20
    board.out(0x61, 0x01)
    t0 = ns_to_tick(board.clock.now()) + 1
    board.clock.advance(tick_to_ns(t0 + 10) - board.clock.now())
    assert not board.inb(0x61) & 0x20
    board.clock.advance(tick_to_ns(t0 + 11) - board.clock.now())
    assert board.inb(0x61) & 0x20


def test_channel2_calibration_loop(board: Board) -> None:
    """The classic TSC calibration: gate on, mode 0, poll port 0x61 bit 5."""
    board.out(0x61, (board.inb(0x61) & ~0x02) | 0x01)
    board.program(2, 0, 11932)  # 10 ms
    assert not board.inb(0x61) & 0x20
    polls = 0
    while not board.inb(0x61) & 0x20:
        board.clock.advance(10 * US)
        polls += 1
    assert polls * 10 * US == pytest.approx(10 * MS, abs=20 * US)


def test_channel2_gate_low_suspends_mode0(board: Board) -> None:
    board.program(2, 0, 1193)
    board.clock.advance(1 * MS)
    assert not board.inb(0x61) & 0x20  # gate low: counting never started
    board.out(0x61, 0x01)
    board.clock.advance(500 * US)
    board.out(0x61, 0x00)
    frozen = board.latch(2)
    board.clock.advance(5 * MS)
    assert board.latch(2) == frozen and not board.inb(0x61) & 0x20
    board.out(0x61, 0x01)
    board.clock.advance(502 * US)
    assert board.inb(0x61) & 0x20


def test_mode2_gate_low_forces_out_high_and_rising_edge_reloads(board: Board) -> None:
    board.out(0x61, 0x01)
    board.program(2, 2, 100)
    t0 = ns_to_tick(board.clock.now()) + 1
    board.clock.advance(tick_to_ns(t0 + 99) - board.clock.now())
    assert not board.inb(0x61) & 0x20  # the low clock of the period
    board.out(0x61, 0x00)
    assert board.inb(0x61) & 0x20  # gate low: OUT high at once
    board.clock.advance(1 * MS)
    assert board.inb(0x61) & 0x20
    board.out(0x61, 0x01)
    t1 = ns_to_tick(board.clock.now()) + 1
    board.clock.advance(tick_to_ns(t1 + 10) - board.clock.now())
    assert board.latch(2) == 90  # counting restarted from the full count


def test_port61_bits(board: Board) -> None:
    board.out(0x61, 0x03 | 0xC0)
    value = board.inb(0x61)
    assert value & 0x0F == 0x03 and not value & 0xC0
    assert board.pit.speaker_on
    toggles = set()
    for _ in range(4):
        toggles.add(board.inb(0x61) & 0x10)
        board.clock.advance(15 * US)
    assert toggles == {0, 0x10}


def test_bcd_counting(board: Board) -> None:
    board.program(0, 0, 0x1000, bcd=True)  # 1000 decimal
    t0 = ns_to_tick(board.clock.now()) + 1
    board.clock.advance(tick_to_ns(t0 + 1) - board.clock.now())
    assert board.latch(0) == 0x0999
    board.clock.advance(tick_to_ns(t0 + 1000) - board.clock.now())
    assert board.irq0
    assert board.latch(0) == 0x0000
    board.clock.advance(tick_to_ns(t0 + 1001) - board.clock.now())
    assert board.latch(0) == 0x9999  # wraps modulo 10000


def test_bcd_zero_means_10000(board: Board) -> None:
    board.program(0, 2, 0, bcd=True)
    t0 = ns_to_tick(board.clock.now()) + 1
    board.clock.advance(tick_to_ns(t0 + 9999) - board.clock.now())
    assert not board.irq0
    assert board.latch(0) == 0x0001


def test_mode2_new_count_takes_effect_next_period(board: Board) -> None:
    board.program(0, 2, 1000)
    t0 = ns_to_tick(board.clock.now()) + 1
    board.clock.advance(tick_to_ns(t0 + 10) - board.clock.now())
    board.out(0x40, 100)
    board.out(0x40, 0)
    board.clock.advance(tick_to_ns(t0 + 999) - board.clock.now())
    assert not board.irq0  # the old period still ends at 1000
    board.clock.advance(tick_to_ns(t0 + 1000 + 99) - board.clock.now())
    assert not board.irq0  # then 100-clock periods
    assert board.rising_edges() == 2


def test_save_and_load_state(board: Board) -> None:
    board.program(0, 2, 5000)
    board.out(0x61, 0x01)
    board.program(2, 3, 300)
    board.clock.advance(3 * MS)
    state = board.pit.save_state()
    other = Board()
    other.clock._now = board.clock.now()
    other.pit.load_state(state)
    assert other.pit.save_state() == state
    assert other.irq0 == board.irq0
    edges = []
    for b in (board, other):
        before = b.rising_edges()
        b.clock.advance(20 * MS)
        edges.append(b.rising_edges() - before)
    assert edges[0] == edges[1] == 5  # 5000 clocks = 4.19 ms
    assert other.latch(0) == board.latch(0)
    assert other.inb(0x61) == board.inb(0x61)
    with pytest.raises(ValueError):
        other.pit.load_state({"version": 0})


def test_reset_stops_everything(board: Board) -> None:
    board.program(0, 2, 100)
    board.pit.reset()
    assert not board.irq0
    assert board.clock.next_deadline() is None


@pytest.mark.parametrize("mode", [0, 2, 3, 4])
@pytest.mark.parametrize("count", [2, 3, 4, 5, 7, 10])
def test_irq0_follows_out0_clock_by_clock(mode: int, count: int) -> None:
    """Timers armed for transitions only must reproduce OUT0 at every single clock."""
    board = Board()
    board.clock.advance(tick_to_ns(7))
    board.program(0, mode, count)
    t0 = ns_to_tick(board.clock.now()) + 1
    reference = []
    for tick in range(t0, t0 + 3 * count + 2):
        board.clock.advance(tick_to_ns(tick) - board.clock.now())
        assert board.irq0 is board.pit.channels[0].output(), tick - t0
        reference.append(board.irq0)
    if mode == 0:
        assert reference == [False] * count + [True] * (2 * count + 2)
    elif mode == 4:
        assert reference == [True] * count + [False] + [True] * (2 * count + 1)
    elif mode == 2:
        assert reference[:count] == [True] * (count - 1) + [False]
    else:
        assert reference[:count] == [True] * ((count + 1) // 2) + [False] * (count // 2)
