"""Intel 8254 programmable interval timer, plus the PC's port 0x61 (speaker gate).

Nothing ticks.  The input clock (``PIT_HZ``) is a grid of ticks over guest
time: tick ``T`` starts at the first nanosecond ``ns`` with
``ns * PIT_HZ // 10**9 >= T``.  Each counter remembers at which tick its
counting element (CE) was loaded and how far it had counted; its count and OUT
at any instant are computed from ``clock.now()``.  Channel 0's OUT drives IRQ 0
through a Timer armed for the next transition only.

As in the data sheet a new count is loaded into the CE on the CLK pulse after
it is written (modes 0 and 4), at the end of the current period (mode 2) or
half-cycle (mode 3), or at the next gate trigger (modes 1 and 5).  Power-on
state is undefined on the chip; here every counter is in mode 0, binary,
LSB-then-MSB, with no count loaded (OUT low, nothing counting).
"""

from __future__ import annotations

from typing import Any

from .base import Clock, Device, IrqLine, Timer

PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000
REFRESH_PERIOD_NS = 15_000  # port 0x61 bit 4 toggles this often
# OUT0 transitions replayed at one look: enough for any mode to show a rising edge
# (mode 3: high -> low -> high; a count load in between).
_MAX_REPLAYED = 8

# Control word (port 0x43): SC1 SC0 RW1 RW0 M2 M1 M0 BCD
CW_BCD = 0x01
CW_MODE_SHIFT = 1
CW_RW_SHIFT = 4
CW_SC_SHIFT = 6
SC_READ_BACK = 3
RW_LATCH = 0  # counter latch command
RW_LSB = 1
RW_MSB = 2
RW_LSB_MSB = 3
# Read-back command: 1 1 /COUNT /STATUS CNT2 CNT1 CNT0 0
RB_NOT_COUNT = 0x20
RB_NOT_STATUS = 0x10
# Status byte: OUTPUT NULL_COUNT RW1 RW0 M2 M1 M0 BCD
STATUS_OUTPUT = 0x80
STATUS_NULL_COUNT = 0x40
# Port 0x61 (PC/AT system control port B)
P61_GATE2 = 0x01  # timer 2 gate
P61_SPEAKER = 0x02  # speaker data enable
P61_WRITABLE = 0x0F  # bits 2-3: parity/IOCHK check disables, kept as written
P61_REFRESH = 0x10  # toggles every refresh period
P61_OUT2 = 0x20  # timer 2 output

_CHANNEL_FIELDS = (
    "control", "mode", "rw", "bcd", "gate", "cr", "cr_valid", "write_msb_next", "read_msb_next",
    "latched_count", "latched_msb_next", "latched_status", "null_count", "ce_period",
    "holding", "base", "start", "load_tick", "load_base",
)  # fmt: skip


def ns_to_tick(ns: int) -> int:
    """The PIT tick in progress at guest time ``ns``."""
    return ns * PIT_HZ // NS_PER_S


def tick_to_ns(tick: int) -> int:
    """The first guest nanosecond of PIT tick ``tick``."""
    return -(-tick * NS_PER_S // PIT_HZ)


def _from_bcd(value: int) -> int:
    return sum(((value >> (4 * i)) & 0xF) * 10**i for i in range(4))


def _to_bcd(value: int) -> int:
    return sum(((value // 10**i) % 10) << (4 * i) for i in range(4))


class PitChannel:
    """One counter: control bits, count register (CR), counting element, latches."""

    def __init__(self, pit: Pit8254, index: int, gate: bool) -> None:
        self.pit = pit
        self.index = index
        self.reset(gate)

    def reset(self, gate: bool) -> None:
        self.control = RW_LSB_MSB << CW_RW_SHIFT  # the low six control word bits as written
        self.mode = 0
        self.rw = RW_LSB_MSB
        self.bcd = False
        self.gate = gate
        self.cr = 0  # count register, raw 16 bits as written
        self.cr_valid = False  # a complete count was written since the control word
        self.write_msb_next = False
        self.read_msb_next = False
        self.latched_count: int | None = None
        self.latched_msb_next = False
        self.latched_status: int | None = None
        # No count waits to be loaded until one is written (a control word or a
        # count sets it); Linux's KASLR entropy loop waits for it to clear.
        self.null_count = False
        self.ce_period: int | None = None  # count loaded into the CE (0 decoded), None: none
        self.holding = False  # mode 0: first byte of a two-byte count written
        self.base = 0  # clocks counted before ``start``
        self.start: int | None = None  # tick counting (re)started; None while stopped
        self.load_tick: int | None = None  # tick at which CR moves into the CE
        self.load_base = 0  # clocks already elapsed in the new period at that load

    # -- time --------------------------------------------------------------------------

    def _now_tick(self) -> int:
        return ns_to_tick(self.pit.clock.now())

    def _elapsed(self, tick: int) -> int:
        """Clocks counted since the CE was loaded."""
        if self.start is None:
            return self.base
        return self.base + max(0, tick - self.start)

    def _counting_enabled(self) -> bool:
        return self.gate or self.mode in (1, 5)

    def _sync(self, tick: int) -> None:
        """Perform a pending CR -> CE transfer whose tick has come."""
        if self.load_tick is None or tick < self.load_tick:
            return
        load_tick = self.load_tick
        self.load_tick = None
        self.ce_period = self._decoded_cr()
        self.null_count = False
        self.holding = False
        self.base = self.load_base
        self.start = load_tick if self._counting_enabled() else None

    def _decoded_cr(self) -> int:
        if self.bcd:
            return _from_bcd(self.cr) or 10_000
        return self.cr or 0x10000

    def _schedule_load(self, tick: int, base: int = 0) -> None:
        self.load_tick = tick
        self.load_base = base

    # -- OUT and the count, as functions of time ---------------------------------------

    def output(self, tick: int | None = None) -> bool:
        """Level of OUT at ``tick`` (default: now)."""
        if tick is None:
            tick = self._now_tick()
        self._sync(tick)
        return self._output_at(tick)

    def _output_at(self, tick: int) -> bool:
        mode = self.mode
        n = self.ce_period
        if n is None:
            return mode != 0
        if mode in (2, 3) and not self.gate:
            return True
        d = self._elapsed(tick)
        if mode == 0:
            return not self.holding and d >= n
        if mode == 1:
            return d >= n
        if mode == 2:
            return d % n != n - 1
        if mode == 3:
            return d % n < (n + 1) // 2
        return d != n  # modes 4 and 5: one low clock at terminal count

    def count(self, tick: int | None = None) -> int:
        """The CE value at ``tick`` (default: now), as the guest reads it (BCD if set)."""
        if tick is None:
            tick = self._now_tick()
        self._sync(tick)
        n = self.ce_period
        if n is None:
            return self.cr
        modulus = 10_000 if self.bcd else 0x10000
        d = self._elapsed(tick)
        if self.mode == 2:
            value = n - d % n
        elif self.mode == 3:
            k = d % n
            half = (n + 1) // 2
            value = (n & ~1) - 2 * (k if k < half else k - half)
        else:
            value = n - d
        value %= modulus
        return _to_bcd(value) if self.bcd else value

    def next_transition(self, tick: int) -> int | None:
        """First tick after ``tick`` at which OUT may change (or a load happens)."""
        self._sync(tick)
        candidates = []
        if self.load_tick is not None:
            candidates.append(self.load_tick)
        n = self.ce_period
        if n is not None and self.start is not None and not self.holding:
            d = self._elapsed(tick)
            k = d % n
            target: int | None = None
            if self.mode in (0, 1):
                target = n if d < n else None
            elif self.mode == 2:
                target = d - k + (n - 1 if k < n - 1 else n)
            elif self.mode == 3:
                half = (n + 1) // 2
                target = d - k + (half if k < half else n)
            elif d <= n:
                target = n if d < n else n + 1
            if target is not None and target > d:
                candidates.append(self.start + target - self.base)
        return min(candidates) if candidates else None

    # -- programming -------------------------------------------------------------------

    def write_control(self, value: int) -> None:
        """A control word that selects this counter with RW != 0: new mode, OUT to initial."""
        self.control = value & 0x3F
        self.rw = (value >> CW_RW_SHIFT) & 3
        mode = (value >> CW_MODE_SHIFT) & 7
        self.mode = mode & 3 if mode > 5 else mode
        self.bcd = bool(value & CW_BCD)
        self.write_msb_next = False
        self.read_msb_next = False
        self.latched_count = None
        self.latched_status = None
        self.null_count = True
        self.cr_valid = False
        self.ce_period = None
        self.holding = False
        self.base = 0
        self.start = None
        self.load_tick = None

    def latch_count(self) -> None:
        """Counter latch command; ignored while an earlier latch is unread."""
        if self.latched_count is None:
            self.latched_count = self.count()
            self.latched_msb_next = self.rw == RW_MSB

    def latch_status(self) -> None:
        """Read-back status latch; ignored while an earlier status is unread."""
        if self.latched_status is None:
            status = self.control
            if self.output():
                status |= STATUS_OUTPUT
            if self.null_count:
                status |= STATUS_NULL_COUNT
            self.latched_status = status

    def read(self) -> int:
        """A read of the counter port: status, else latched count, else live count."""
        if self.latched_status is not None:
            value = self.latched_status
            self.latched_status = None
            return value
        if self.latched_count is not None:
            count = self.latched_count
            if self.latched_msb_next:
                self.latched_count = None
                return count >> 8
            if self.rw == RW_LSB_MSB:
                self.latched_msb_next = True
            else:
                self.latched_count = None
            return count & 0xFF
        count = self.count()
        if self.rw == RW_LSB:
            return count & 0xFF
        if self.rw == RW_MSB:
            return count >> 8
        msb = self.read_msb_next
        self.read_msb_next = not msb
        return count >> 8 if msb else count & 0xFF

    def write(self, value: int, tick: int | None = None) -> None:
        """A write of the counter port at ``tick`` (default: now): one byte of the new count."""
        if tick is None:
            tick = self._now_tick()
        self._sync(tick)
        if self.rw == RW_LSB:
            self.cr = value
        elif self.rw == RW_MSB:
            self.cr = value << 8
        elif not self.write_msb_next:
            self.cr = (self.cr & 0xFF00) | value
            self.write_msb_next = True
            if self.mode == 0:  # writing the first byte stops counting, OUT low
                self.base = self._elapsed(tick)
                self.start = None
                self.holding = True
                self.load_tick = None
            return
        else:
            self.cr = (self.cr & 0x00FF) | (value << 8)
            self.write_msb_next = False
        self._count_written(tick)

    def _count_written(self, tick: int) -> None:
        self.null_count = True
        self.cr_valid = True
        mode = self.mode
        if mode in (0, 4):
            self._schedule_load(tick + 1)
        elif mode in (2, 3) and self.gate:
            n = self.ce_period
            if n is None or self.start is None:
                self._schedule_load(tick + 1)
                return
            d = self._elapsed(tick)
            k = d % n
            if mode == 2:
                end, base = d - k + n, 0
            else:
                half = (n + 1) // 2
                if k < half:  # the new count starts with its low half
                    end, base = d - k + half, (self._decoded_cr() + 1) // 2
                else:
                    end, base = d - k + n, 0
            self._schedule_load(self.start + end - self.base, base)
        # modes 1 and 5 (and 2, 3 with the gate low) wait for a gate trigger

    def set_gate(self, level: bool) -> None:
        """Drive GATE: suspends (0, 2, 3, 4) or triggers (1, 2, 3, 5 on a rising edge)."""
        tick = self._now_tick()
        self._sync(tick)
        if level == self.gate:
            return
        self.gate = level
        mode = self.mode
        if not level:
            if mode in (0, 2, 3, 4) and self.start is not None:
                self.base = self._elapsed(tick)
                self.start = None
            if mode in (2, 3):
                self.load_tick = None
            return
        if mode in (0, 4):
            if self.ce_period is not None and not self.holding:
                self.start = tick
        elif self.cr_valid:  # modes 1, 2, 3, 5: the rising edge (re)loads the CE
            self._schedule_load(tick + 1)

    def save_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CHANNEL_FIELDS}

    def load_state(self, state: dict[str, Any]) -> None:
        for name in _CHANNEL_FIELDS:
            setattr(self, name, state[name])


class _PitPorts(Device):
    """Ports 0x40-0x42 (counters 0-2) and 0x43 (control word, write only)."""

    name = "i8254"

    def __init__(self, pit: Pit8254) -> None:
        self._pit = pit

    def reset(self) -> None:
        self._pit.reset()

    def io_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self._pit.read_port(offset + i) << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self._pit.write_port(offset + i, (value >> (8 * i)) & 0xFF)


class _Port61(Device):
    """Port 0x61: gate of counter 2, speaker enable, refresh toggle, OUT2."""

    name = "port61"

    def __init__(self, pit: Pit8254) -> None:
        self._pit = pit

    def reset(self) -> None:
        self._pit.reset()

    def io_read(self, offset: int, size: int) -> int:
        value = self._pit.read_port61() if offset == 0 else 0xFF
        return value | (((1 << (8 * size)) - 1) & ~0xFF)

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self._pit.write_port61(value & 0xFF)


class Pit8254:
    """The 8254 with its PC wiring: gates 0/1 tied high, gate 2 and OUT2 on port 0x61.

    Map ``ports`` at 0x40-0x43 and ``port61`` at 0x61.  ``irq0`` follows OUT0.
    """

    def __init__(self, clock: Clock, irq0: IrqLine | None = None) -> None:
        self.clock = clock
        self.irq0 = irq0 if irq0 is not None else IrqLine()
        self.channels = [PitChannel(self, i, gate=i != 2) for i in range(3)]
        self.port61_bits = 0
        self._timer: Timer = clock.timer(self._update_irq)
        self._last_tick = 0  # when IRQ 0 last followed OUT0
        self.ports = _PitPorts(self)
        self.port61 = _Port61(self)
        self.reset()

    def reset(self) -> None:
        """Power-on: see the module docstring; gate 2 and the speaker are off."""
        for channel in self.channels:
            channel.reset(gate=channel.index != 2)
        self.port61_bits = 0
        self._last_tick = ns_to_tick(self.clock.now())
        self._update_irq()

    # -- ports -------------------------------------------------------------------------

    def read_port(self, offset: int) -> int:
        if offset < 3:
            return self.channels[offset].read()
        return 0xFF  # the control register cannot be read

    def write_port(self, offset: int, value: int) -> None:
        if offset in (1, 2):
            self.channels[offset].write(value)
            return
        if offset not in (0, 3):
            return
        # One instant for the whole access: with the real-time clock, guest time
        # moves on while this runs, and a short count's whole pulse could
        # otherwise fall between the write and the look at OUT0.
        tick = ns_to_tick(self.clock.now())
        self._follow_out0(tick)  # what OUT0 did before this write changes it
        if offset == 0:
            self.channels[0].write(value, tick)
        else:
            self._write_control(value)
        self._update_irq(tick)

    def _write_control(self, value: int) -> None:
        select = value >> CW_SC_SHIFT
        if select == SC_READ_BACK:
            for channel in self.channels:
                if value & (2 << channel.index):
                    if not value & RB_NOT_STATUS:
                        channel.latch_status()
                    if not value & RB_NOT_COUNT:
                        channel.latch_count()
            return
        channel = self.channels[select]
        if (value >> CW_RW_SHIFT) & 3 == RW_LATCH:
            channel.latch_count()
        else:
            channel.write_control(value)

    def read_port61(self) -> int:
        value = self.port61_bits & P61_WRITABLE
        if (self.clock.now() // REFRESH_PERIOD_NS) & 1:
            value |= P61_REFRESH
        if self.channels[2].output():
            value |= P61_OUT2
        return value

    def write_port61(self, value: int) -> None:
        self.port61_bits = value & P61_WRITABLE
        self.channels[2].set_gate(bool(value & P61_GATE2))

    @property
    def speaker_on(self) -> bool:
        """Is the speaker being driven (data enabled and OUT2 toggling through)?"""
        return bool(self.port61_bits & P61_SPEAKER)

    # -- IRQ 0 -------------------------------------------------------------------------

    def _update_irq(self, tick: int | None = None) -> None:
        """IRQ 0 follows OUT0 up to ``tick`` (default: now); the timer is armed for
        OUT0's next transition.  Also the timer's callback."""
        if tick is None:
            tick = ns_to_tick(self.clock.now())
        self._follow_out0(tick)
        self._arm(tick)

    def _follow_out0(self, tick: int) -> None:
        """Drive IRQ 0 through OUT0's transitions since the last look, in order, up to
        ``tick``.

        A whole pulse (mode 4's one low clock at terminal count, mode 2's) can lie
        between two looks: the timer runs late, or the real-time clock moved while
        the guest's count write was being handled.  Each transition is replayed,
        so the 8259 and the IOAPIC see the rising edge (the first one only: later
        ones of a periodic mode would set the same IRR bit again)."""
        channel = self.channels[0]
        t = min(self._last_tick, tick)
        for _ in range(_MAX_REPLAYED):
            next_tick = channel.next_transition(t)
            if next_tick is None or next_tick > tick:
                break
            level = channel.output(next_tick)
            rising = level and not self.irq0.level
            self.irq0.set_level(level)
            t = next_tick
            if rising:
                break
        self.irq0.set_level(channel.output(tick))
        self._last_tick = tick

    def _arm(self, tick: int) -> None:
        next_tick = self.channels[0].next_transition(tick)
        if next_tick is None:
            self._timer.cancel()
        else:
            self._timer.arm(tick_to_ns(next_tick))

    # -- saved state -------------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """All state; ticks are absolute, so restore the clock's time along with it."""
        return {
            "version": 1,
            "channels": [channel.save_state() for channel in self.channels],
            "port61": self.port61_bits,
            "irq0_tick": self._last_tick,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError("unsupported PIT state version")
        for channel, saved in zip(self.channels, state["channels"], strict=True):
            channel.load_state(saved)
        self.port61_bits = state["port61"]
        # IRQ 0 as it was at the last look, which the saved timer deadline follows
        # (the clock's time is restored after the devices).
        tick = int(state.get("irq0_tick", ns_to_tick(self.clock.now())))
        self._last_tick = tick
        self.irq0.set_level(self.channels[0].output(tick))
        self._arm(tick)
