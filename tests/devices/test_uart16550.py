"""16550A UART register behaviour, one register at a time, with fake lines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemu_lite.devices.backends import SerialBackend
from qemu_lite.devices.base import Clock, IrqLine, RecordingIrqSink
from qemu_lite.devices.uart16550 import (
    COM1_IRQ,
    DLL,
    DLM,
    FCR,
    IER,
    IER_EDSSI,
    IER_ELSI,
    IER_ERBFI,
    IER_ETBEI,
    IIR,
    LCR,
    LSR,
    LSR_DR,
    LSR_OE,
    MCR,
    MCR_DTR,
    MCR_LOOP,
    MCR_OUT1,
    MCR_OUT2,
    MCR_RTS,
    MSR,
    RBR,
    SCR,
    THR,
    Uart16550,
)


class FakeBackend(SerialBackend):
    """Records output; offers whatever the test puts in ``incoming``."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.incoming = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def read_available(self) -> bytes:
        data = bytes(self.incoming)
        self.incoming.clear()
        return data


def make_uart(
    backend: SerialBackend | None = None, clock: Clock | None = None
) -> tuple[Uart16550, RecordingIrqSink]:
    sink = RecordingIrqSink()
    uart = Uart16550(irq=IrqLine(sink, COM1_IRQ), backend=backend, clock=clock)
    return uart, sink


def rd(uart: Uart16550, reg: int) -> int:
    return uart.io_read(reg, 1)


def wr(uart: Uart16550, reg: int, value: int) -> None:
    uart.io_write(reg, 1, value)


def test_power_on_values() -> None:
    uart, _ = make_uart()
    assert rd(uart, IER) == 0
    assert rd(uart, IIR) == 0x01
    assert rd(uart, LCR) == 0
    assert rd(uart, MCR) == 0
    assert rd(uart, LSR) == 0x60
    assert rd(uart, MSR) == 0xB0  # CTS, DSR, DCD asserted by the "cable"


def test_divisor_latch_through_dlab() -> None:
    uart, _ = make_uart()
    wr(uart, LCR, 0x80)
    wr(uart, DLL, 0x01)
    wr(uart, DLM, 0x02)
    assert (rd(uart, DLL), rd(uart, DLM)) == (0x01, 0x02)
    wr(uart, LCR, 0x03)  # 8N1, DLAB off: offsets 0/1 are RBR/THR and IER again
    assert uart.divisor == 0x0201
    wr(uart, IER, 0xFF)
    assert rd(uart, IER) == 0x0F  # upper bits are always zero
    assert uart.divisor == 0x0201
    wr(uart, LCR, 0x83)
    assert rd(uart, DLM) == 0x02


def test_scratch_lcr_mcr_readback() -> None:
    uart, _ = make_uart()
    wr(uart, SCR, 0x5A)
    wr(uart, LCR, 0x1B)
    wr(uart, MCR, 0xFF)
    assert rd(uart, SCR) == 0x5A
    assert rd(uart, LCR) == 0x1B
    assert rd(uart, MCR) == 0x1F


def test_iir_priority_and_clearing() -> None:
    uart, _ = make_uart()
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ERBFI | IER_ETBEI | IER_ELSI | IER_EDSSI)  # THRE pending now
    uart.set_modem_inputs(0x90)  # DSR drops: DDSR delta
    uart.receive(b"ab")  # no FIFO: the second byte overruns the first
    assert rd(uart, IIR) == 0x06  # line status first
    assert rd(uart, LSR) & LSR_OE
    assert rd(uart, IIR) == 0x04  # then received data
    assert rd(uart, RBR) == ord("b")
    assert rd(uart, IIR) == 0x02  # then THRE, cleared by this very read
    assert rd(uart, IIR) == 0x00  # then modem status
    assert rd(uart, MSR) == 0x92  # CTS DCD, DDSR; reading clears the deltas
    assert rd(uart, IIR) == 0x01
    assert rd(uart, MSR) == 0x90


def test_thre_interrupt_rearms_after_thr_write() -> None:
    backend = FakeBackend()
    uart, sink = make_uart(backend=backend)
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)  # enabling with THR empty interrupts at once
    assert sink.levels[COM1_IRQ] is True
    assert rd(uart, IIR) == 0x02
    assert rd(uart, IIR) == 0x01  # the read cleared it
    assert sink.levels[COM1_IRQ] is False
    wr(uart, THR, ord("x"))
    assert backend.written == b"x"
    assert rd(uart, LSR) & 0x60 == 0x60  # THRE and TEMT at once
    assert sink.levels[COM1_IRQ] is True  # re-armed by the write
    sink.history.clear()
    wr(uart, THR, ord("y"))  # pending before: the write clears it, then re-arms
    assert sink.history == [(COM1_IRQ, False), (COM1_IRQ, True)]
    assert rd(uart, IIR) == 0x02
    wr(uart, IER, 0)
    assert rd(uart, IIR) == 0x01
    wr(uart, IER, IER_ETBEI)  # toggling ETBEI resamples THRE
    assert rd(uart, IIR) == 0x02


def test_fifo_trigger_level_for_rx_interrupt() -> None:
    clock = Clock()
    uart, _ = make_uart(clock=clock)
    wr(uart, FCR, 0x41)  # FIFO on, trigger level 4
    wr(uart, IER, IER_ERBFI)
    uart.receive(b"abc")
    assert rd(uart, IIR) == 0xC1  # below the trigger, timeout not yet due
    uart.receive(b"d")
    assert rd(uart, IIR) == 0xC4
    assert rd(uart, RBR) == ord("a")
    assert rd(uart, IIR) == 0xC1  # 3 left: below the trigger again


def test_fifo_trigger_levels_table() -> None:
    for fcr, level in ((0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)):
        uart, _ = make_uart(clock=Clock())
        wr(uart, FCR, fcr)
        wr(uart, IER, IER_ERBFI)
        uart.receive(bytes(level - 1))
        assert rd(uart, IIR) == 0xC1, fcr
        uart.receive(b"\0")
        assert rd(uart, IIR) == 0xC4, fcr


def test_character_timeout() -> None:
    clock = Clock()
    uart, sink = make_uart(clock=clock)
    wr(uart, MCR, MCR_OUT2)
    wr(uart, LCR, 0x03)  # 8N1 at the reset divisor of 12: 9600 baud, 10 bits
    wr(uart, FCR, 0xC1)  # trigger level 14
    wr(uart, IER, IER_ERBFI)
    char_ns = uart.char_time_ns()
    assert char_ns == 10 * 12 * 1_000_000_000 // 115200
    uart.receive(b"k")
    clock.advance(4 * char_ns - 1)
    assert rd(uart, IIR) == 0xC1
    clock.advance(1)
    assert rd(uart, IIR) == 0xCC
    assert sink.levels[COM1_IRQ] is True
    assert rd(uart, RBR) == ord("k")
    assert rd(uart, IIR) == 0xC1
    assert not rd(uart, LSR) & LSR_DR
    clock.advance(10 * char_ns)  # empty FIFO: no timeout
    assert rd(uart, IIR) == 0xC1


def test_character_timeout_without_clock_is_immediate() -> None:
    uart, _ = make_uart()
    wr(uart, FCR, 0xC1)
    wr(uart, IER, IER_ERBFI)
    uart.receive(b"k")
    assert rd(uart, IIR) == 0xCC


def test_fcr_rx_reset_and_mode_change_flush_fifo() -> None:
    uart, _ = make_uart()
    wr(uart, FCR, 0x01)
    wr(uart, IER, IER_ERBFI)
    uart.receive(b"hello")
    assert rd(uart, LSR) & LSR_DR
    wr(uart, FCR, 0x03)  # RX FIFO reset
    assert not rd(uart, LSR) & LSR_DR
    assert rd(uart, IIR) == 0xC1
    uart.receive(b"again")
    wr(uart, FCR, 0x00)  # leaving FIFO mode flushes too
    assert not rd(uart, LSR) & LSR_DR
    assert rd(uart, IIR) == 0x01  # no FIFO bits


def test_fifo_overrun_sets_oe_and_lsr_read_clears_it() -> None:
    uart, _ = make_uart()
    wr(uart, FCR, 0x01)
    wr(uart, IER, IER_ELSI)
    uart.receive(bytes(range(17)))
    assert rd(uart, IIR) == 0xC6
    assert rd(uart, LSR) == 0x60 | LSR_DR | LSR_OE
    assert rd(uart, LSR) == 0x60 | LSR_DR
    assert rd(uart, IIR) == 0xC1
    assert [rd(uart, RBR) for _ in range(16)] == list(range(16))  # byte 16 was lost
    assert not rd(uart, LSR) & LSR_DR


def test_pump_waits_for_fifo_room_instead_of_overrunning() -> None:
    backend = FakeBackend()
    uart, _ = make_uart(backend=backend)
    wr(uart, FCR, 0x01)
    backend.incoming += bytes(range(40))
    uart.pump()
    assert rd(uart, LSR) & LSR_DR
    assert [rd(uart, RBR) for _ in range(40)] == list(range(40))
    assert rd(uart, LSR) == 0x60  # no overrun, nothing left


def test_guest_reads_pump_the_backend() -> None:
    backend = FakeBackend()
    uart, _ = make_uart(backend=backend)
    backend.incoming += b"z"
    assert rd(uart, LSR) & LSR_DR  # a polling guest sees input without a machine stop
    assert rd(uart, RBR) == ord("z")
    backend.incoming += b"q"
    assert rd(uart, RBR) == ord("q")


def test_loopback_routes_tx_to_rx() -> None:
    backend = FakeBackend()
    uart, sink = make_uart(backend=backend)
    sent: list[bytes] = []
    uart.add_output_listener(sent.append)
    wr(uart, MCR, MCR_LOOP)
    wr(uart, THR, 0x42)
    assert backend.written == b"" and sent == []
    assert rd(uart, LSR) & LSR_DR
    assert rd(uart, RBR) == 0x42
    wr(uart, MCR, 0)
    wr(uart, THR, 0x43)
    assert backend.written == b"\x43" and sent == [b"\x43"]


def test_loopback_maps_mcr_outputs_to_msr_with_deltas() -> None:
    uart, _ = make_uart()
    wr(uart, MCR, MCR_LOOP)  # outside: CTS DSR DCD high; inside: all low
    assert rd(uart, MSR) == 0x0B  # DCTS DDSR DDCD
    for mcr_bit, msr_line, delta in (
        (MCR_RTS, 0x10, 0x01),
        (MCR_DTR, 0x20, 0x02),
        (MCR_OUT2, 0x80, 0x08),
    ):
        wr(uart, MCR, MCR_LOOP | mcr_bit)
        assert rd(uart, MSR) == msr_line | delta
        assert rd(uart, MSR) == msr_line
        wr(uart, MCR, MCR_LOOP)
        assert rd(uart, MSR) == delta
    wr(uart, MCR, MCR_LOOP | MCR_OUT1)
    assert rd(uart, MSR) == 0x40  # RI rises: no TERI
    wr(uart, MCR, MCR_LOOP)
    assert rd(uart, MSR) == 0x04  # TERI on the trailing edge of RI
    wr(uart, MCR, MCR_LOOP | 0x0A)  # Linux's probe: RTS|OUT2 -> CTS|DCD
    assert rd(uart, MSR) & 0xF0 == 0x90


def test_modem_status_interrupt_in_loopback() -> None:
    uart, _ = make_uart()
    wr(uart, MCR, MCR_LOOP)
    rd(uart, MSR)
    wr(uart, IER, IER_EDSSI)
    assert rd(uart, IIR) == 0x01
    wr(uart, MCR, MCR_LOOP | MCR_RTS)
    assert rd(uart, IIR) == 0x00
    rd(uart, MSR)
    assert rd(uart, IIR) == 0x01


def test_out2_gates_the_irq_line() -> None:
    uart, sink = make_uart()
    wr(uart, IER, IER_ETBEI)
    assert rd(uart, IER) == IER_ETBEI
    assert sink.levels.get(COM1_IRQ, False) is False  # pending, but OUT2 is off
    wr(uart, MCR, MCR_OUT2)
    assert sink.levels[COM1_IRQ] is True
    wr(uart, MCR, 0)
    assert sink.levels[COM1_IRQ] is False
    wr(uart, MCR, MCR_OUT2 | MCR_LOOP)  # loopback forces the OUT2 pin inactive
    assert sink.levels[COM1_IRQ] is False
    wr(uart, MCR, MCR_OUT2)
    assert sink.levels[COM1_IRQ] is True
    assert rd(uart, IIR) == 0x02
    assert sink.levels[COM1_IRQ] is False


def test_output_listener_gets_each_byte() -> None:
    uart, _ = make_uart()
    seen: list[bytes] = []
    uart.add_output_listener(seen.append)
    for ch in b"ok\n":
        wr(uart, THR, ch)
    assert seen == [b"o", b"k", b"\n"]


def test_wide_access_splits_into_bytes() -> None:
    uart, _ = make_uart()
    uart.io_write(LCR, 2, 0x0903)  # LCR = 0x03, MCR = 0x09
    assert rd(uart, MCR) == 0x09
    assert uart.io_read(LCR, 2) == 0x0903
    assert uart.io_read(7, 2) == 0xFF00 | rd(uart, SCR)


def test_save_and_load_state_round_trip() -> None:
    clock = Clock()
    uart, _ = make_uart(clock=clock)
    wr(uart, LCR, 0x83)
    wr(uart, DLL, 0x01)
    wr(uart, LCR, 0x03)
    wr(uart, FCR, 0xC1)
    wr(uart, IER, IER_ERBFI | IER_ETBEI)
    wr(uart, MCR, MCR_OUT2 | MCR_DTR)
    wr(uart, SCR, 0x77)
    uart.receive(b"xyz")
    state = uart.save_state()

    other, sink = make_uart(clock=clock)
    other.load_state(state)
    assert other.save_state() == state
    assert sink.levels[COM1_IRQ] is True  # THRE pending, recomputed from state
    assert rd(other, IIR) == 0xC2
    clock.advance(4 * other.char_time_ns())  # the restored timeout timer fires
    assert rd(other, IIR) == 0xCC
    assert bytes(rd(other, RBR) for _ in range(3)) == b"xyz"
    assert rd(other, SCR) == 0x77 and other.divisor == 1

    with pytest.raises(ValueError, match="version"):
        other.load_state({**state, "version": 99})


def test_reset_restores_power_on_values() -> None:
    uart, sink = make_uart()
    wr(uart, MCR, MCR_OUT2)
    wr(uart, IER, IER_ETBEI)
    uart.receive(b"a")
    uart.reset()
    assert sink.levels[COM1_IRQ] is False
    assert rd(uart, LSR) == 0x60
    assert rd(uart, IIR) == 0x01
    assert rd(uart, MCR) == 0


class _WakingBackend(SerialBackend):
    """Input only through ``_feed`` (which notifies), as the real back ends have it."""

    def __init__(self) -> None:
        super().__init__()
        self.notify = lambda: None
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data


_OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from([THR, IER, FCR, LCR, MCR, SCR]),
              st.integers(0, 255)),
    st.tuples(st.just("read"), st.sampled_from([RBR, IIR, LSR, MSR])),
    st.tuples(st.just("wire"), st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("host"), st.binary(min_size=1, max_size=4)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS, byte=st.integers(0, 255))
def test_what_fast_path_allows_is_what_the_registers_do(ops, byte) -> None:
    """At every point of a random register sequence: an LSR read that ``fast_path``
    answers returns that value and changes nothing; a THR write it allows does exactly
    what ``transmit`` does (state, output, interrupt line)."""
    backends = _WakingBackend(), _WakingBackend()
    (a, sink_a), (b, sink_b) = make_uart(backends[0]), make_uart(backends[1])
    for op in ops + [("end",)]:
        lsr, thr = a.fast_path()
        assert (lsr, thr) == b.fast_path()
        if lsr >= 0:
            before, history = a.save_state(), list(sink_a.history)
            assert rd(a, LSR) == lsr
            assert a.save_state() == before and sink_a.history == history
        if thr:
            a.transmit(bytes([byte]))
            wr(b, THR, byte)
            assert a.save_state() == b.save_state()
            assert backends[0].written == backends[1].written
            assert sink_a.history == sink_b.history
        for uart, backend in ((a, backends[0]), (b, backends[1])):
            if op[0] == "write":
                wr(uart, op[1], op[2])
            elif op[0] == "read":
                rd(uart, op[1])
            elif op[0] == "wire":
                uart.receive(op[1])
            elif op[0] == "host":
                backend._feed(op[1])
                uart.pump()


def test_on_change_hears_every_register_write_and_input() -> None:
    uart, _ = make_uart(_WakingBackend())
    seen: list[tuple[int, bool]] = []
    uart.on_change = lambda: seen.append(uart.fast_path())
    wr(uart, LCR, 0x80)  # DLAB: THR is the divisor latch now
    assert seen[-1] == (0x60, False)
    wr(uart, LCR, 0x03)
    uart.receive(b"x")
    assert seen[-1] == (0x61, True)
    wr(uart, IER, IER_ETBEI)
    assert seen[-1] == (0x61, False)
    uart.receive(b"y")  # no FIFO: an overrun sets LSR.OE, which a read must clear
    assert seen[-1] == (-1, False)
