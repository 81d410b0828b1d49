"""Intel 8259A programmable interrupt controller, and the master/slave pair of the PC.

Vocabulary follows the 8259A data sheet: IRR (interrupt request register), ISR
(in-service register), IMR (interrupt mask register), ICW1-ICW4 (initialization
command words), OCW1-OCW3 (operation command words).  Priorities rotate: the
IR input with the highest priority is ``priority_add``; the data sheet's
"lowest priority" register is therefore ``(priority_add - 1) & 7``.

Triggering.  In edge mode a rising edge on an IR input latches its IRR bit
until the INTA cycle clears it (the latch survives the input falling again, so
an :meth:`IrqLine.pulse` is never lost; QEMU does the same).  In level mode
(LTIM in ICW1, or the PIIX ELCR bit of that input) the IRR bit follows the
input level.
"""

from __future__ import annotations

from typing import Any

from .base import Device, IrqLine

# ICW1 (A0 = 0, D4 = 1)
ICW1_IC4 = 0x01  # ICW4 will be written
ICW1_SNGL = 0x02  # single chip: no ICW3
ICW1_LTIM = 0x08  # level-triggered inputs
ICW1_INIT = 0x10  # this byte is ICW1
# ICW4
ICW4_UPM = 0x01  # 8086/8088 mode (the only mode modelled)
ICW4_AEOI = 0x02  # automatic end of interrupt
ICW4_SFNM = 0x10  # special fully nested mode
# OCW2 (A0 = 0, D4 = D3 = 0): bits 7-5 R SL EOI, bits 2-0 the level
OCW2_ROTATE_AEOI_CLEAR = 0
OCW2_NONSPECIFIC_EOI = 1
OCW2_NOP = 2
OCW2_SPECIFIC_EOI = 3
OCW2_ROTATE_AEOI_SET = 4
OCW2_ROTATE_NONSPECIFIC_EOI = 5
OCW2_SET_PRIORITY = 6
OCW2_ROTATE_SPECIFIC_EOI = 7
# OCW3 (A0 = 0, D4 = 0, D3 = 1)
OCW3_SELECT = 0x08
OCW3_RIS = 0x01  # read ISR (else IRR) ...
OCW3_RR = 0x02  # ... when RR is set
OCW3_POLL = 0x04
OCW3_SMM = 0x20  # set (else reset) special mask mode ...
OCW3_ESMM = 0x40  # ... when ESMM is set

POLL_INTERRUPT = 0x80  # poll word: I bit, W2-W0 the level

# Init state machine: which word the next write to A0 = 1 is.
_OCW1, _ICW2, _ICW3, _ICW4 = 0, 1, 2, 3

CASCADE_IRQ = 2  # the slave's INT drives the master's IR2 on the PC
ELCR_MASK_MASTER = 0xF8  # IRQ 0, 1, 2 are always edge on the PIIX
ELCR_MASK_SLAVE = 0xDE  # IRQ 8 and 13 are always edge on the PIIX

_STATE_FIELDS = (
    "irr", "isr", "imr", "inputs", "priority_add", "irq_base", "read_isr", "poll",
    "special_mask", "init_state", "init4", "single_mode", "ltim", "auto_eoi",
    "rotate_on_auto_eoi", "special_fully_nested", "icw3", "elcr",
)  # fmt: skip


class Pic8259(Device):
    """One 8259A: two ports (offset 0 = A0 low, offset 1 = A0 high) and eight IR inputs.

    ``int_output`` is the INT pin.  ``master`` is the SP/EN pin (only a master
    treats ICW3 as its cascade inputs, for special fully nested mode).
    ``elcr_mask`` says which ELCR bits are writable; ``level_inputs`` are inputs
    that are always level-sensitive (the PC pair uses it for the cascade).  The chip is an IrqSink:
    ``set_irq(ir, level)`` drives input IR0-IR7.
    """

    def __init__(
        self,
        int_output: IrqLine | None = None,
        *,
        master: bool = True,
        elcr_mask: int = 0xFF,
        level_inputs: int = 0,
        name: str = "i8259",
    ) -> None:
        self.int_output = int_output if int_output is not None else IrqLine()
        self.is_master = master
        self.elcr_mask = elcr_mask
        self.level_inputs = level_inputs
        self.name = name
        self.elcr = 0
        self.inputs = 0  # current level of IR0-IR7: survives re-initialisation
        self.ltim = False
        self.reset()

    # -- power-on and initialisation ---------------------------------------------------

    def reset(self) -> None:
        """Power-on: all registers zero (the data sheet leaves them undefined until ICW1)."""
        self.elcr = 0
        self._init_reset()
        self.irq_base = 0
        self.icw3 = 0
        self._update_irq()

    def _init_reset(self) -> None:
        """What ICW1 does: edge sense reset, IMR/ISR cleared, IR7 lowest, SMM off, read IRR."""
        self.irr = self.inputs & self._level_mask()
        self.isr = 0
        self.imr = 0
        self.priority_add = 0
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.init_state = _OCW1
        self.init4 = False
        self.single_mode = False
        self.ltim = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False

    # -- inputs ------------------------------------------------------------------------

    def _level_mask(self) -> int:
        return 0xFF if self.ltim else self.elcr | self.level_inputs

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive input IR``irq`` (0-7) to ``level``."""
        bit = 1 << irq
        was_high = bool(self.inputs & bit)
        if level:
            self.inputs |= bit
        else:
            self.inputs &= ~bit
        if self._level_mask() & bit:
            self.irr = (self.irr & ~bit) | (self.inputs & bit)
        elif level and not was_high:
            self.irr |= bit
        self._update_irq()

    def set_elcr(self, value: int) -> None:
        """Write the edge/level control byte (1 = level); fixed bits stay 0."""
        self.elcr = value & self.elcr_mask
        level = self._level_mask()
        self.irr = (self.irr & ~level) | (self.inputs & level)
        self._update_irq()

    # -- priority resolution -----------------------------------------------------------

    def _priority(self, mask: int) -> int:
        """Rank (0 = highest) of the highest-priority level set in ``mask``; 8 if none."""
        if not mask:
            return 8
        rank = 0
        while not mask & (1 << ((rank + self.priority_add) & 7)):
            rank += 1
        return rank

    def _cascade_inputs(self) -> int:
        return self.icw3 if self.is_master and not self.single_mode else 0

    def pending_irq(self) -> int | None:
        """The IR level the chip would deliver now (INT is high), or None."""
        rank = self._priority(self.irr & ~self.imr)
        if rank == 8:
            return None
        irq = (rank + self.priority_add) & 7
        in_service = self.isr & ~self.imr if self.special_mask else self.isr
        current = self._priority(in_service)
        if rank < current:
            return irq
        if rank == current and self.special_fully_nested and self._cascade_inputs() & (1 << irq):
            return irq  # SFNM: a slave's higher request nests within its own level
        return None

    def intack(self, irq: int) -> None:
        """The INTA cycle for level ``irq``: set ISR (or auto-EOI), clear an edge request."""
        bit = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= bit
        if not self._level_mask() & bit:
            self.irr &= ~bit
        self._update_irq()

    def _update_irq(self) -> None:
        self.int_output.set_level(self.pending_irq() is not None)

    # -- ports -------------------------------------------------------------------------

    def io_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, offset: int) -> int:
        if offset > 1:
            return 0xFF
        if self.poll:
            return self._poll_read()
        if offset == 1:
            return self.imr
        return self.isr if self.read_isr else self.irr

    def _poll_read(self) -> int:
        """OCW3 poll: the read acts as INTA; returns I bit plus the level."""
        self.poll = False
        irq = self.pending_irq()
        if irq is None:
            return 0
        self.intack(irq)
        return POLL_INTERRUPT | irq

    def _write_byte(self, offset: int, value: int) -> None:
        if offset == 0:
            if value & ICW1_INIT:
                self._write_icw1(value)
            elif value & OCW3_SELECT:
                self._write_ocw3(value)
            else:
                self._write_ocw2(value)
        elif offset == 1:
            self._write_a0_high(value)

    def _write_icw1(self, value: int) -> None:
        self._init_reset()
        self.ltim = bool(value & ICW1_LTIM)
        self.irr = self.inputs & self._level_mask()
        self.init4 = bool(value & ICW1_IC4)
        self.single_mode = bool(value & ICW1_SNGL)
        self.init_state = _ICW2
        self._update_irq()

    def _write_a0_high(self, value: int) -> None:
        state = self.init_state
        if state == _OCW1:
            self.imr = value
        elif state == _ICW2:
            self.irq_base = value & 0xF8
            if not self.single_mode:
                self.init_state = _ICW3
            else:
                self.init_state = _ICW4 if self.init4 else _OCW1
        elif state == _ICW3:
            self.icw3 = value
            self.init_state = _ICW4 if self.init4 else _OCW1
        else:
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.init_state = _OCW1
        self._update_irq()

    def _write_ocw2(self, value: int) -> None:
        command = value >> 5
        level = value & 7
        if command == OCW2_ROTATE_AEOI_CLEAR:
            self.rotate_on_auto_eoi = False
        elif command == OCW2_ROTATE_AEOI_SET:
            self.rotate_on_auto_eoi = True
        elif command in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC_EOI):
            rank = self._priority(self.isr)
            if rank != 8:
                irq = (rank + self.priority_add) & 7
                self.isr &= ~(1 << irq)
                if command == OCW2_ROTATE_NONSPECIFIC_EOI:
                    self.priority_add = (irq + 1) & 7
        elif command in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            self.isr &= ~(1 << level)
            if command == OCW2_ROTATE_SPECIFIC_EOI:
                self.priority_add = (level + 1) & 7
        elif command == OCW2_SET_PRIORITY:
            self.priority_add = (level + 1) & 7
        self._update_irq()

    def _write_ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
        self._update_irq()

    # -- saved state -------------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _STATE_FIELDS}

    def load_state(self, state: dict[str, Any]) -> None:
        for name in _STATE_FIELDS:
            value = state[name]
            setattr(self, name, type(getattr(self, name))(value))
        self._update_irq()


class _Elcr(Device):
    """Ports 0x4D0-0x4D1: the PIIX edge/level control registers (bit set = level)."""

    name = "elcr"

    def __init__(self, chips: tuple[Pic8259, Pic8259]) -> None:
        self._chips = chips

    def io_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            byte = self._chips[offset + i].elcr if offset + i < 2 else 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            if offset + i < 2:
                self._chips[offset + i].set_elcr((value >> (8 * i)) & 0xFF)


class PicPair:
    """The PC's two cascaded 8259As: IRQ 0-7 on the master, IRQ 8-15 on the slave.

    ``intr`` is the INTR wire to the CPU.  Map ``master`` at 0x20, ``slave`` at
    0xA0 and ``elcr`` at 0x4D0.  Devices drive IRQs through ``IrqLine(pair, n)``;
    the CPU takes an interrupt with :meth:`pending` and :meth:`acknowledge`.
    The slave's INT output is wired to the master's IR2, whose IRR bit follows
    that level (so a second slave request is never lost behind the first one's
    edge), and an INTA cycle on IR2 is always passed to the slave, as on the PC
    board, whatever ICW3 says.
    """

    def __init__(self, intr: IrqLine | None = None) -> None:
        self.intr = intr if intr is not None else IrqLine()
        self.master = Pic8259(
            self.intr,
            master=True,
            elcr_mask=ELCR_MASK_MASTER,
            level_inputs=1 << CASCADE_IRQ,
            name="pic-master",
        )
        self.slave = Pic8259(
            IrqLine(self.master, CASCADE_IRQ),
            master=False,
            elcr_mask=ELCR_MASK_SLAVE,
            name="pic-slave",
        )
        self.elcr = _Elcr((self.master, self.slave))

    def reset(self) -> None:
        self.slave.reset()
        self.master.reset()

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ ``irq`` (0-15).  IRQ 2 is the cascade: the AT bus routes it to IRQ 9."""
        if not 0 <= irq < 16:
            raise ValueError(f"no such ISA IRQ: {irq}")
        if irq == CASCADE_IRQ:
            irq = 9
        chip = self.master if irq < 8 else self.slave
        chip.set_irq(irq & 7, level)

    def pending(self) -> bool:
        """INTR: does the master request an interrupt?  Also brings ``intr`` up to date."""
        self.master._update_irq()
        return self.intr.level

    def acknowledge(self) -> int:
        """The CPU's INTA cycle: return the vector and update ISR/IRR.

        A request that vanished before INTA yields the spurious vector of the
        answering chip (base + 7) without setting its ISR bit; for a slave
        spurious interrupt the master's IR2 is in service as on real hardware.
        """
        irq = self.master.pending_irq()
        if irq is None:
            return self.master.irq_base + 7
        self.master.intack(irq)
        if irq != CASCADE_IRQ:
            return self.master.irq_base + irq
        slave_irq = self.slave.pending_irq()
        if slave_irq is None:
            return self.slave.irq_base + 7
        self.slave.intack(slave_irq)
        return self.slave.irq_base + slave_irq

    def save_state(self) -> dict[str, Any]:
        return {"version": 1, "master": self.master.save_state(), "slave": self.slave.save_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError("unsupported PIC state version")
        self.slave.load_state(state["slave"])
        self.master.load_state(state["master"])
