"""16550A UART, as on the PC's COM ports (National Semiconductor PC16550D data sheet).

Eight byte-wide registers at COM1 0x3F8 (IRQ 4) or COM2 0x2F8 (IRQ 3).  As on
the PC, the interrupt output reaches the interrupt controller only while
MCR.OUT2 is set; in loopback mode the OUT2 pin is forced inactive, so the line
stays low (data sheet: the modem control output pins go inactive in loopback).

Transmission is immediate: a byte written to THR goes straight to the backend
and the output listeners, so THRE and TEMT read as set again at once and the
transmit FIFO never holds anything.  A caller may serve LSR reads and THR
writes itself while :meth:`Uart16550.fast_path` allows (the machine does, in C):
it hears of every change through ``on_change`` and hands transmitted bytes to
:meth:`Uart16550.transmit` before anything else looks at the device.  Reception goes through a 16-byte FIFO
(one byte holding register when FIFOs are disabled).  Bytes the backend
offers wait outside the chip until the FIFO has room, so pasted input is not
lost to overruns; :meth:`Uart16550.receive` is the raw wire and can overrun.

With a :class:`~.base.Clock`, the character timeout interrupt fires four
character times (from the divisor and LCR) after the last byte received or
read; without one it is reported as soon as the FIFO holds data below the
trigger level.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .backends import SerialBackend, input_wakes
from .base import Clock, Device, IrqLine

COM1_BASE, COM1_IRQ = 0x3F8, 4
COM2_BASE, COM2_IRQ = 0x2F8, 3
PORT_COUNT = 8

# Register offsets.  With LCR.DLAB set, offsets 0 and 1 are the divisor latch.
RBR = 0  # receiver buffer (read)
THR = 0  # transmitter holding (write)
DLL = 0  # divisor latch, low byte (DLAB = 1)
IER = 1  # interrupt enable
DLM = 1  # divisor latch, high byte (DLAB = 1)
IIR = 2  # interrupt identification (read)
FCR = 2  # FIFO control (write)
LCR = 3  # line control
MCR = 4  # modem control
LSR = 5  # line status
MSR = 6  # modem status
SCR = 7  # scratch

IER_ERBFI = 0x01  # received data available / character timeout
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status
IER_EDSSI = 0x08  # modem status
IER_MASK = 0x0F

IIR_NO_INT = 0x01  # bit 0 set: no interrupt pending
IIR_MS = 0x00  # modem status (lowest priority)
IIR_THRE = 0x02  # transmitter holding register empty
IIR_RDA = 0x04  # received data available (trigger level reached)
IIR_RLS = 0x06  # receiver line status (highest priority)
IIR_CTI = 0x0C  # character timeout
IIR_FIFOS_ENABLED = 0xC0

FCR_FIFO_ENABLE = 0x01
FCR_RX_RESET = 0x02
FCR_TX_RESET = 0x04
FCR_DMA_MODE = 0x08
FCR_TRIGGER = 0xC0  # RX trigger level: 1, 4, 8 or 14 bytes
RX_TRIGGER_LEVELS = (1, 4, 8, 14)

LCR_WLS = 0x03  # word length select: 5 + WLS bits
LCR_STB = 0x04  # 2 stop bits (1.5 with 5-bit words)
LCR_PEN = 0x08  # parity enable
LCR_DLAB = 0x80  # divisor latch access bit

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08  # on the PC: gates the interrupt output onto the bus
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01  # data ready
LSR_OE = 0x02  # overrun error
LSR_PE = 0x04  # parity error
LSR_FE = 0x08  # framing error
LSR_BI = 0x10  # break interrupt
LSR_THRE = 0x20  # transmitter holding register empty
LSR_TEMT = 0x40  # transmitter empty
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04  # trailing edge of RI (1 -> 0)
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F
MSR_LINES = 0xF0

FIFO_SIZE = 16
BAUD_BASE = 115200  # 1.8432 MHz crystal / 16
STATE_VERSION = 1


class Uart16550(Device):
    """A 16550A UART on 8 I/O ports.

    ``irq`` is the interrupt output, ``backend`` the host side, ``clock``
    (optional) times the RX character timeout.  The machine calls
    :meth:`pump` at every stop to move backend input into the RX FIFO.
    """

    name = "uart16550"

    def __init__(
        self,
        irq: IrqLine | None = None,
        backend: SerialBackend | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.irq = irq if irq is not None else IrqLine()
        self.backend = backend
        self._clock = clock
        self._timeout_timer = clock.timer(self._char_timeout) if clock is not None else None
        self._listeners: list[Callable[[bytes], None]] = []
        #: Called after every change of registers or FIFO (see :meth:`fast_path`).
        self.on_change: Callable[[], None] | None = None
        #: Input lines CTS/DSR/RI/DCD seen outside loopback (MSR bits 4-7).
        self.modem_inputs = MSR_CTS | MSR_DSR | MSR_DCD
        self._pending = bytearray()  # backend input waiting for FIFO room
        self._rx: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        """Power-on values (data sheet, "Master Reset"): all registers zero
        except IIR = 0x01 (nothing pending), LSR = 0x60 (transmitter empty);
        MSR shows the input lines.  The divisor latch (undefined at power on)
        starts at 12, 9600 baud."""
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.fcr = 0
        self.scr = 0
        self.dll = 0x0C
        self.dlm = 0x00
        self.rbr = 0
        self._rx.clear()
        self._lsr_errors = 0
        self._msr_lines = self.modem_inputs & MSR_LINES
        self._msr_deltas = 0
        self._thr_ipending = False
        self._timeout_ipending = False
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
        self._update_irq()

    # -- embedding API -------------------------------------------------------

    def add_output_listener(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(data)`` with the bytes transmitted (not in loopback), in order;
        ``data`` may hold several bytes (a fast path hands them over in runs)."""
        self._listeners.append(callback)

    def fast_path(self) -> tuple[int, bool]:
        """What a caller may do without :meth:`io_read` / :meth:`io_write` until
        ``on_change`` fires: the value an LSR read returns with no side effect (-1:
        none), and whether a THR write only transmits (then :meth:`transmit` takes
        the bytes).  LSR: no error bits to clear, and with an empty FIFO no input to
        pull (the backend wakes the machine when input arrives).  THR: no divisor
        latch, loopback or THRE interrupt in play."""
        lsr = -1
        if not self._lsr_errors and not self.mcr & MCR_LOOP:
            if self._rx or (not self._pending and input_wakes(self.backend)):
                lsr = self._lsr()
        thr = not (self.lcr & LCR_DLAB or self.mcr & MCR_LOOP or self.ier & IER_ETBEI)
        return lsr, thr

    def transmit(self, data: bytes) -> None:
        """What THR writes of ``data`` do while :meth:`fast_path` allows them."""
        if self.backend is not None:
            self.backend.write(data)
        for listener in self._listeners:
            listener(data)
        self._thr_ipending = True
        self._update_irq()

    def receive(self, data: bytes) -> None:
        """Bytes arriving on the serial input, straight into the RX FIFO.

        A full FIFO overruns (LSR.OE).  Dropped in loopback, where the input
        pin is disconnected.
        """
        if self.mcr & MCR_LOOP:
            return
        for byte in data:
            self._rx_push(byte)
        self._update_irq()

    def pump(self) -> None:
        """Move whatever input the backend has ready into the RX FIFO (non-blocking)."""
        if self.backend is not None:
            data = self.backend.read_available()
            if data:
                self._pending += data
        if self._pending and not self.mcr & MCR_LOOP:
            room = self._rx_capacity() - len(self._rx)
            if room > 0:
                chunk = self._pending[:room]
                del self._pending[:room]
                for byte in chunk:
                    self._rx_push(byte)
                self._update_irq()

    def set_modem_inputs(self, lines: int) -> None:
        """Set the CTS/DSR/RI/DCD input lines (MSR bits 4-7) seen outside loopback."""
        self.modem_inputs = lines & MSR_LINES
        self._sample_modem_lines()
        self._update_irq()

    @property
    def rx_room(self) -> int:
        """Characters the receiver can take before it overruns (0 in loopback)."""
        return 0 if self.mcr & MCR_LOOP else self._rx_capacity() - len(self._rx)

    @property
    def divisor(self) -> int:
        return self.dlm << 8 | self.dll

    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_FIFO_ENABLE)

    # -- port access ---------------------------------------------------------

    def io_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            reg = offset + i
            byte = self._read_register(reg) if 0 <= reg < PORT_COUNT else 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            reg = offset + i
            if 0 <= reg < PORT_COUNT:
                self._write_register(reg, (value >> (8 * i)) & 0xFF)
        if self.on_change is not None:  # LCR, SCR and the divisor change no interrupt
            self.on_change()

    def _read_register(self, reg: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR:
            return self.dll if dlab else self._read_rbr()
        if reg == IER:
            return self.dlm if dlab else self.ier
        if reg == IIR:
            return self._read_iir()
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            return self._read_lsr()
        if reg == MSR:
            value = self._msr_lines | self._msr_deltas
            self._msr_deltas = 0
            self._update_irq()
            return value
        return self.scr

    def _write_register(self, reg: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if reg == THR:
            if dlab:
                self.dll = value
            else:
                self._write_thr(value)
        elif reg == IER:
            if dlab:
                self.dlm = value
            else:
                self._write_ier(value)
        elif reg == FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self.mcr = value & MCR_MASK
            self._sample_modem_lines()
            self._update_irq()
        elif reg == SCR:
            self.scr = value
        # LSR and MSR writes are factory-test only: ignored.

    # -- registers -----------------------------------------------------------

    def _read_rbr(self) -> int:
        if not self._rx:
            self.pump()
        if self._rx:
            self.rbr = self._rx.popleft()
            # Reading the FIFO clears a timeout interrupt and restarts the timer.
            self._timeout_ipending = False
            if self._rx:
                self._restart_char_timeout()
            if self._pending:
                self.pump()  # the freed slot takes the next waiting byte
            self._update_irq()
        return self.rbr

    def _read_iir(self) -> int:
        iid = self._interrupt_id()
        if iid == IIR_THRE:  # reading IIR clears THRE when it is the source
            self._thr_ipending = False
            self._update_irq()
        return iid | (IIR_FIFOS_ENABLED if self.fifo_enabled else 0)

    def _read_lsr(self) -> int:
        if not self._rx:
            self.pump()
        value = self._lsr()
        if self._lsr_errors:  # reading LSR clears OE, PE, FE and BI
            self._lsr_errors = 0
            self._update_irq()
        return value

    def _lsr(self) -> int:
        return (LSR_DR if self._rx else 0) | self._lsr_errors | LSR_THRE | LSR_TEMT

    def _write_thr(self, value: int) -> None:
        # Writing THR clears the THRE interrupt; the byte leaves at once, the
        # holding register is empty again and THRE re-arms.
        self._thr_ipending = False
        self._update_irq()
        if self.mcr & MCR_LOOP:
            self._rx_push(value)
        else:
            data = bytes((value,))
            if self.backend is not None:
                self.backend.write(data)
            for listener in self._listeners:
                listener(data)
        self._thr_ipending = True
        self._update_irq()

    def _write_ier(self, value: int) -> None:
        changed = (value ^ self.ier) & IER_ETBEI
        self.ier = value & IER_MASK
        if changed:
            # Setting ETBEI with THR empty raises THRE at once (16450 behaviour
            # guests rely on); clearing it drops any pending THRE interrupt.
            self._thr_ipending = bool(self.ier & IER_ETBEI)
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_FIFO_ENABLE:
            value |= FCR_RX_RESET | FCR_TX_RESET  # changing mode flushes both FIFOs
        if value & FCR_RX_RESET:
            self._rx.clear()
            self._timeout_ipending = False
            if self._timeout_timer is not None:
                self._timeout_timer.cancel()
        # FCR_TX_RESET: the transmit FIFO is always empty (immediate transmission).
        # The other bits are only programmed while FCR0 is set.
        if value & FCR_FIFO_ENABLE:
            self.fcr = value & (FCR_FIFO_ENABLE | FCR_DMA_MODE | FCR_TRIGGER)
        else:
            self.fcr = 0
        self._update_irq()

    # -- receiver ------------------------------------------------------------

    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self.fifo_enabled else 1

    def _rx_trigger_level(self) -> int:
        return RX_TRIGGER_LEVELS[self.fcr >> 6] if self.fifo_enabled else 1

    def _rx_push(self, byte: int) -> None:
        """A character arrives from the receiver shift register."""
        if self.fifo_enabled:
            if len(self._rx) >= FIFO_SIZE:
                self._lsr_errors |= LSR_OE  # the new character is lost
                return
        elif self._rx:
            self._lsr_errors |= LSR_OE  # the unread character is overwritten
            self._rx.clear()
        self._rx.append(byte)
        self._restart_char_timeout()

    def char_time_ns(self) -> int:
        """Time on the wire for one character at the current divisor and LCR."""
        data_bits = 5 + (self.lcr & LCR_WLS)
        half_bits = 2 * (1 + data_bits) + (2 if self.lcr & LCR_PEN else 0)
        if self.lcr & LCR_STB:
            half_bits += 3 if data_bits == 5 else 4
        else:
            half_bits += 2
        divisor = self.divisor or 1
        return half_bits * divisor * 1_000_000_000 // (2 * BAUD_BASE)

    def _restart_char_timeout(self) -> None:
        if not self.fifo_enabled:
            return
        if self._timeout_timer is None or self._clock is None:
            self._timeout_ipending = bool(self._rx)
        else:
            self._timeout_timer.arm(self._clock.now() + 4 * self.char_time_ns())

    def _char_timeout(self) -> None:
        if self.fifo_enabled and self._rx:
            self._timeout_ipending = True
            self._update_irq()

    # -- modem lines ---------------------------------------------------------

    def _modem_lines(self) -> int:
        """MSR bits 4-7: the input pins, or in loopback the MCR outputs."""
        mcr = self.mcr
        if not mcr & MCR_LOOP:
            return self.modem_inputs & MSR_LINES
        return (
            (MSR_CTS if mcr & MCR_RTS else 0)
            | (MSR_DSR if mcr & MCR_DTR else 0)
            | (MSR_RI if mcr & MCR_OUT1 else 0)
            | (MSR_DCD if mcr & MCR_OUT2 else 0)
        )

    def _sample_modem_lines(self) -> None:
        old, new = self._msr_lines, self._modem_lines()
        changed = old ^ new
        if changed & MSR_CTS:
            self._msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_deltas |= MSR_DDSR
        if old & MSR_RI and not new & MSR_RI:
            self._msr_deltas |= MSR_TERI
        if changed & MSR_DCD:
            self._msr_deltas |= MSR_DDCD
        self._msr_lines = new

    # -- interrupt -----------------------------------------------------------

    def _interrupt_id(self) -> int:
        """The highest-priority pending, enabled interrupt (IIR bits 0-3)."""
        ier = self.ier
        if ier & IER_ELSI and self._lsr_errors:
            return IIR_RLS
        if ier & IER_ERBFI and self._rx:
            if len(self._rx) >= self._rx_trigger_level():
                return IIR_RDA
            if self._timeout_ipending:
                return IIR_CTI
        if ier & IER_ETBEI and self._thr_ipending:
            return IIR_THRE
        if ier & IER_EDSSI and self._msr_deltas:
            return IIR_MS
        return IIR_NO_INT

    def _update_irq(self) -> None:
        gate = self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
        self.irq.set_level(gate and self._interrupt_id() != IIR_NO_INT)
        if self.on_change is not None:
            self.on_change()

    # -- saved state ---------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        deadline = self._timeout_timer.deadline if self._timeout_timer is not None else None
        return {
            "version": STATE_VERSION,
            "ier": self.ier,
            "lcr": self.lcr,
            "mcr": self.mcr,
            "fcr": self.fcr,
            "scr": self.scr,
            "dll": self.dll,
            "dlm": self.dlm,
            "rbr": self.rbr,
            "rx_fifo": list(self._rx),
            "pending_input": list(self._pending),
            "lsr_errors": self._lsr_errors,
            "msr_lines": self._msr_lines,
            "msr_deltas": self._msr_deltas,
            "modem_inputs": self.modem_inputs,
            "thr_ipending": self._thr_ipending,
            "timeout_ipending": self._timeout_ipending,
            "timeout_deadline": deadline,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"uart16550: unsupported state version {state.get('version')!r}")
        rx = [int(b) & 0xFF for b in state["rx_fifo"]]
        if len(rx) > FIFO_SIZE:
            raise ValueError(f"uart16550: RX FIFO holds {len(rx)} bytes, at most {FIFO_SIZE}")
        self.ier = int(state["ier"]) & IER_MASK
        self.lcr = int(state["lcr"]) & 0xFF
        self.mcr = int(state["mcr"]) & MCR_MASK
        self.fcr = int(state["fcr"]) & (FCR_FIFO_ENABLE | FCR_DMA_MODE | FCR_TRIGGER)
        self.scr = int(state["scr"]) & 0xFF
        self.dll = int(state["dll"]) & 0xFF
        self.dlm = int(state["dlm"]) & 0xFF
        self.rbr = int(state["rbr"]) & 0xFF
        self._rx = deque(rx)
        self._pending = bytearray(int(b) & 0xFF for b in state["pending_input"])
        self._lsr_errors = int(state["lsr_errors"]) & LSR_ERRORS
        self._msr_lines = int(state["msr_lines"]) & MSR_LINES
        self._msr_deltas = int(state["msr_deltas"]) & MSR_DELTAS
        self.modem_inputs = int(state["modem_inputs"]) & MSR_LINES
        self._thr_ipending = bool(state["thr_ipending"])
        self._timeout_ipending = bool(state["timeout_ipending"])
        if self._timeout_timer is not None:
            deadline = state.get("timeout_deadline")
            if deadline is None:
                self._timeout_timer.cancel()
            else:
                self._timeout_timer.arm(int(deadline))
        self._update_irq()
