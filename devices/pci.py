"""PCI configuration space: mechanism #1, bus 0, the i440FX host bridge and the PIIX3 ISA bridge.

Register names follow the PCI Local Bus Specification 3.0 (6.1 configuration
header, 3.2.2.3.2 configuration mechanism #1) and the Intel 82441FX (PMC) and
82371SB (PIIX3) data sheets.  The PIIX's IDE function lives in ``bmdma.py``.

:class:`PciConfigPorts` is the port device of 0xCF8-0xCFF:

====== ===== =============================================================
port   size  register
====== ===== =============================================================
0xCF8  dword CONFIG_ADDRESS: bit 31 enable, bus 23:16, device 15:11,
             function 10:8, register 7:2
0xCF9  byte  PIIX3 reset control register (bit 2 0->1 resets the machine)
0xCFC  any   CONFIG_DATA: the addressed dword, byte lanes 0xCFC-0xCFF
====== ===== =============================================================

Other accesses to 0xCF8-0xCFB read all ones and are ignored, as an
unclaimed ISA port.  Only bus 0 exists; functions nobody implements read
0xFFFFFFFF (a master abort), and writes to them vanish.

A :class:`PciFunction` holds its 256 configuration bytes with two masks:
``wmask`` (bits software may change) and ``w1cmask`` (bits a one clears, as
the error bits of the status register).  Subclasses describe their header in
``reset()`` and react to writes in ``config_written()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Device, IrqLine, IrqSink

CONFIG_ADDRESS = 0xCF8
CONFIG_PORTS = 8  # 0xCF8-0xCFF
CONFIG_SPACE_SIZE = 256

# CONFIG_ADDRESS fields.
ADDR_ENABLE = 0x80000000
ADDR_MASK = 0x80FFFFFC  # reserved bits 30:24 and 1:0 read as zero

# Offsets of the PIIX3 reset control register (0xCF9) and the data port within the ports.
OFF_RESET_CONTROL = 1
OFF_DATA = 4
RCR_SYS_RST = 0x02  # hard (1) or soft (0) reset
RCR_RESET_CPU = 0x04  # a 0 -> 1 transition resets

# Configuration header (type 0).
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09  # programming interface; 0x0A subclass, 0x0B base class
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BAR0 = 0x10  # BARs 0-5 at 0x10, 0x14, ... 0x24
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

# Command register.
CMD_IO = 0x0001
CMD_MEMORY = 0x0002
CMD_MASTER = 0x0004

# Status register.
STATUS_FAST_BACK = 0x0080
STATUS_DEVSEL_MEDIUM = 0x0200
STATUS_ERRORS = 0xF900  # parity, signalled/received target and master aborts, SERR: R/WC

HEADER_MULTI_FUNCTION = 0x80
BAR_IO_SPACE = 0x01

VENDOR_INTEL = 0x8086
DEVICE_I440FX = 0x1237
DEVICE_PIIX3_ISA = 0x7000

CLASS_HOST_BRIDGE = 0x060000
CLASS_ISA_BRIDGE = 0x060100

# PIIX3 PIRQ route control (82371SB PIRQRC[A:D]): bit 7 disconnects, bits 3:0 the ISA IRQ.
PIRQ_DISABLED = 0x80
PIRQ_IRQ_MASK = 0x0F
PIRQ_ROUTABLE = frozenset({3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15})
PIRQ_RESET_ROUTES = (10, 10, 11, 11)  # PIRQA-D where SeaBIOS leaves them on QEMU's pc

ALL_ONES = 0xFFFFFFFF
STATE_VERSION = 1


def slot_pirq(slot: int, pin: int) -> int:
    """The PIRQ (0-3: A-D) that interrupt pin ``pin`` (1-4: INTA#-INTD#, as
    PCI_INTERRUPT_PIN) of a device in ``slot`` reaches: the board rotates the pins by
    slot, INTA# of slot 1 on PIRQA (QEMU's ``pc`` wiring, which its DSDT describes)."""
    if not (0 <= slot < 32 and 1 <= pin <= 4):
        raise ValueError(f"bad PCI slot {slot} or interrupt pin {pin}")
    return (slot + pin - 2) & 3


def devfn(device: int, function: int) -> int:
    """The 8-bit device/function number: device 0-31 in bits 7:3, function 0-7."""
    if not (0 <= device < 32 and 0 <= function < 8):
        raise ValueError(f"bad PCI device {device}, function {function}")
    return device << 3 | function


class PciFunction:
    """One function's configuration space: 256 bytes, a write mask and a write-1-to-clear mask.

    Class attributes give the identity; :meth:`reset` rebuilds the header from
    them.  Only the command register bits in ``command_mask`` are writable.
    """

    name = "pci-function"
    vendor_id = 0xFFFF
    device_id = 0xFFFF
    revision = 0
    class_code = 0  # base class << 16 | subclass << 8 | programming interface
    header_type = 0
    command_reset = 0
    command_mask = 0
    status_reset = 0

    def __init__(self) -> None:
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self.w1cmask = bytearray(CONFIG_SPACE_SIZE)
        self._set(self.wmask, PCI_COMMAND, 2, self.command_mask)
        self._set(self.w1cmask, PCI_STATUS, 2, STATUS_ERRORS)
        self.wmask[PCI_CACHE_LINE_SIZE] = 0xFF
        self.wmask[PCI_LATENCY_TIMER] = 0xFF
        self.wmask[PCI_INTERRUPT_LINE] = 0xFF
        self.reset()

    # -- helpers ----------------------------------------------------------------

    @staticmethod
    def _set(space: bytearray, offset: int, size: int, value: int) -> None:
        space[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_config(self, offset: int, size: int, value: int) -> None:
        """Store ``value`` in the configuration space, masks ignored (the device's own view)."""
        self._set(self.config, offset, size, value)

    def get_config(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def set_writable(self, offset: int, size: int, mask: int) -> None:
        """Make the bits of ``mask`` in bytes ``offset .. offset+size-1`` software-writable."""
        self._set(self.wmask, offset, size, mask)

    @property
    def command(self) -> int:
        return self.get_config(PCI_COMMAND, 2)

    # -- reset and access -------------------------------------------------------

    def reset(self) -> None:
        """Power-on header: identity, command and status defaults, the rest zero."""
        self.config[:] = bytes(CONFIG_SPACE_SIZE)
        self.set_config(PCI_VENDOR_ID, 2, self.vendor_id)
        self.set_config(PCI_DEVICE_ID, 2, self.device_id)
        self.set_config(PCI_COMMAND, 2, self.command_reset)
        self.set_config(PCI_STATUS, 2, self.status_reset)
        self.set_config(PCI_REVISION_ID, 1, self.revision)
        self.set_config(PCI_CLASS_PROG, 3, self.class_code)
        self.set_config(PCI_HEADER_TYPE, 1, self.header_type)

    def config_read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes (1, 2 or 4) at ``offset``; the access stays within a dword."""
        return self.get_config(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes at ``offset`` through the write masks, then tell the device."""
        for i in range(size):
            at = offset + i
            byte = (value >> (8 * i)) & 0xFF
            old = self.config[at]
            new = (old & ~self.wmask[at]) | (byte & self.wmask[at])
            new &= ~(byte & self.w1cmask[at])
            self.config[at] = new & 0xFF
        self.config_written(offset, size)

    def config_written(self, offset: int, size: int) -> None:
        """Hook: bytes ``offset .. offset+size-1`` were written by software."""

    # -- saved state --------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "config": bytes(self.config)}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.name}: unsupported state version {state.get('version')!r}")
        config = bytes(state["config"])
        if len(config) != CONFIG_SPACE_SIZE:
            raise ValueError(f"{self.name}: configuration space of {len(config)} bytes")
        self.config[:] = config
        self.state_loaded()

    def state_loaded(self) -> None:
        """Hook: the configuration space was replaced by :meth:`load_state`."""


class I440fxHostBridge(PciFunction):
    """82441FX PCI and memory controller, function 0 of device 0.

    The DRAM and SMRAM (0x72) registers are stored but change nothing.  The PAM
    registers (shadow RAM: 0x59-0x5F) are passed on to ``on_pam_change`` as 16
    attributes, one per 16 KiB segment of 0xC0000-0xFFFFF (bit 0: reads from
    RAM, bit 1: writes to RAM), whenever they change and at reset; the machine
    maps the BIOS window to follow them, as firmware that shadows itself needs.
    """

    name = "i440fx"
    vendor_id = VENDOR_INTEL
    device_id = DEVICE_I440FX
    revision = 0x02
    class_code = CLASS_HOST_BRIDGE
    command_reset = CMD_MEMORY | CMD_MASTER
    status_reset = STATUS_FAST_BACK | STATUS_DEVSEL_MEDIUM

    PMCCFG = 0x50
    DRAMC = 0x57
    PAM0 = 0x59
    SMRAM = 0x72

    def __init__(self) -> None:
        self.on_pam_change: Callable[[list[int]], None] | None = None
        super().__init__()
        self.set_writable(0x50, 0x30, (1 << (8 * 0x30)) - 1)  # 0x50-0x7F

    def reset(self) -> None:
        super().reset()
        self.config[self.DRAMC] = 0x01
        self.config[self.SMRAM] = 0x02
        self._pam_changed()

    def pam_attributes(self) -> list[int]:
        """The 16 segment attributes of 0xC0000-0xFFFFF (82441FX PAM0-PAM6)."""
        attrs = []
        for reg in range(self.PAM0 + 1, self.PAM0 + 7):  # PAM1-6: 0xC0000-0xEFFFF
            attrs += [self.config[reg] & 3, (self.config[reg] >> 4) & 3]
        return attrs + [(self.config[self.PAM0] >> 4) & 3] * 4  # PAM0: 0xF0000-0xFFFFF

    def config_written(self, offset: int, size: int) -> None:
        if offset < self.PAM0 + 7 and self.PAM0 < offset + size:
            self._pam_changed()

    def _pam_changed(self) -> None:
        if self.on_pam_change is not None:
            self.on_pam_change(self.pam_attributes())


class Piix3IsaBridge(PciFunction):
    """82371SB PIIX3 PCI-to-ISA bridge, function 0 of a multi-function device.

    The PIRQ route control registers (PIRQRC[A:D], 0x60-0x63, of the 82371SB
    data sheet) steer the four PCI interrupt lines PIRQA-D onto ISA IRQs: bits 3:0
    name the IRQ, bit 7 set disconnects the line.  Devices drive PIRQ n through
    :meth:`pirq_line`; the bridge drives ``isa_irqs`` (an ``IrqSink``: the board's
    8259 pair and IOAPIC) with the OR of the PIRQs routed to each IRQ.  A value
    naming an IRQ the PIIX3 cannot route (0-2, 8, 13) routes nowhere.  As in
    QEMU, a PIRQ steered onto an IRQ an ISA device also drives is not ORed with
    that device's level: the last change wins.

    At reset the routes are where SeaBIOS leaves them on QEMU's ``pc`` (PIRQA-D on
    IRQ 10, 10, 11, 11; the data sheet's power-on value is 0x80, disconnected),
    as the e1000's BARs are: our BIOS and the ``--kernel`` loader program no PCI
    device, and an OS without ACPI reads the IRQ from the interrupt line register.

    The other registers from 0x4C on (ISA clock, X-bus chip select, top of
    memory, motherboard IRQ and DMA routing, APIC base, SMI control) are stored
    with their power-on values and change nothing.
    """

    name = "piix3-isa"
    vendor_id = VENDOR_INTEL
    device_id = DEVICE_PIIX3_ISA
    revision = 0x00
    class_code = CLASS_ISA_BRIDGE
    header_type = HEADER_MULTI_FUNCTION
    command_reset = CMD_IO | CMD_MEMORY | CMD_MASTER
    status_reset = STATUS_DEVSEL_MEDIUM

    PIRQRC = 0x60  # PIRQA-D route control, 0x60-0x63
    PIRQ_COUNT = 4

    def __init__(self, isa_irqs: IrqSink | None = None) -> None:
        self.isa_irqs = isa_irqs
        # The PIRQ inputs are wires driven by the devices: a reset of the bridge
        # leaves them (the devices lower their own lines as they reset).
        self.pirq_levels = [False] * self.PIRQ_COUNT
        self._driven: set[int] = set()  # the ISA IRQs held high
        super().__init__()
        self.set_writable(0x4C, 0xB4, (1 << (8 * 0xB4)) - 1)  # 0x4C-0xFF

    def reset(self) -> None:
        super().reset()
        self.config[0x4C] = 0x4D  # IORT: ISA I/O recovery timer
        self.config[0x4E] = 0x03  # XBCS: RTC and keyboard controller decoded
        self.config[self.PIRQRC:self.PIRQRC + 4] = bytes(PIRQ_RESET_ROUTES)
        self.config[0x69] = 0x02  # TOM
        self.config[0x70] = 0x80  # MBIRQ0 disabled
        self.config[0x71] = 0x80  # MBIRQ1 disabled
        self.config[0x76] = 0x0C  # MBDMA0: channel disabled
        self.config[0x77] = 0x0C
        self.config[0x78] = 0x02  # PCSC
        self.config[0xA0] = 0x08  # SMICNTL
        self._update_irqs()

    # -- PCI interrupt routing ----------------------------------------------------

    def pirq_line(self, pirq: int) -> IrqLine:
        """The wire a device's INTx# drives into PIRQ ``pirq`` (0-3: A-D)."""
        if not 0 <= pirq < self.PIRQ_COUNT:
            raise ValueError(f"no PIRQ {pirq}")
        return IrqLine(self, pirq)

    def set_irq(self, irq: int, level: bool) -> None:
        """IrqSink: PIRQ ``irq`` went to ``level``."""
        self.pirq_levels[irq] = level
        self._update_irqs()

    def route(self, pirq: int) -> int | None:
        """The ISA IRQ that PIRQ ``pirq`` reaches now, or None."""
        value = self.config[self.PIRQRC + pirq]
        if value & PIRQ_DISABLED or value & PIRQ_IRQ_MASK not in PIRQ_ROUTABLE:
            return None
        return value & PIRQ_IRQ_MASK

    def _update_irqs(self) -> None:
        levels: dict[int, bool] = {}
        for pirq in range(self.PIRQ_COUNT):
            irq = self.route(pirq)
            if irq is not None:
                levels[irq] = levels.get(irq, False) or self.pirq_levels[pirq]
        old, self._driven = self._driven, {irq for irq, high in levels.items() if high}
        if self.isa_irqs is None:
            return
        for irq in sorted(old - self._driven):
            self.isa_irqs.set_irq(irq, False)
        for irq in sorted(self._driven - old):
            self.isa_irqs.set_irq(irq, True)

    def config_written(self, offset: int, size: int) -> None:
        if offset < self.PIRQRC + self.PIRQ_COUNT and self.PIRQRC < offset + size:
            self._update_irqs()

    def state_loaded(self) -> None:
        self._update_irqs()


class PciBus:
    """Bus 0: functions by device/function number."""

    def __init__(self) -> None:
        self.functions: dict[int, PciFunction] = {}

    def add(self, device: int, function: int, fn: PciFunction) -> None:
        key = devfn(device, function)
        if key in self.functions:
            raise ValueError(f"PCI 00:{device:02x}.{function} is already taken")
        self.functions[key] = fn

    def get(self, device: int, function: int) -> PciFunction | None:
        return self.functions.get(devfn(device, function))

    def config_read(self, bus: int, dev_fn: int, offset: int, size: int) -> int:
        fn = self.functions.get(dev_fn) if bus == 0 else None
        if fn is None:
            return (1 << (8 * size)) - 1  # master abort
        return fn.config_read(offset, size)

    def config_write(self, bus: int, dev_fn: int, offset: int, size: int, value: int) -> None:
        fn = self.functions.get(dev_fn) if bus == 0 else None
        if fn is not None:
            fn.config_write(offset, size, value)

    def reset(self) -> None:
        for fn in self.functions.values():
            fn.reset()

    def save_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION,
                "functions": {key: fn.save_state() for key, fn in self.functions.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"pci: unsupported state version {state.get('version')!r}")
        saved = {int(key): value for key, value in state["functions"].items()}
        if set(saved) != set(self.functions):
            raise ValueError("pci: saved functions do not match this bus")
        for key, fn in self.functions.items():
            fn.load_state(saved[key])


class PciConfigPorts(Device):
    """Configuration mechanism #1 at 0xCF8-0xCFF (and the PIIX3 reset control at 0xCF9).

    ``on_reset`` is called when software sets the reset-CPU bit of 0xCF9.
    """

    name = "pci-config"

    def __init__(self, bus: PciBus, on_reset: Callable[[], None] | None = None) -> None:
        self.bus = bus
        self.on_reset = on_reset
        self.reset()

    def reset(self) -> None:
        self.address = 0
        self.reset_control = 0

    def _target(self, offset: int, size: int) -> tuple[int, int, int] | None:
        """(bus, devfn, register) of a data port access, or None if nothing answers."""
        lane = offset - OFF_DATA
        if not self.address & ADDR_ENABLE or lane + size > 4:
            return None
        bus = (self.address >> 16) & 0xFF
        dev_fn = (self.address >> 8) & 0xFF
        return bus, dev_fn, (self.address & 0xFC) + lane

    def io_read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.address
        if offset == OFF_RESET_CONTROL and size == 1:
            return self.reset_control
        if offset >= OFF_DATA:
            target = self._target(offset, size)
            if target is not None:
                return self.bus.config_read(target[0], target[1], target[2], size)
        return (1 << (8 * size)) - 1

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & ADDR_MASK
        elif offset == OFF_RESET_CONTROL and size == 1:
            old, self.reset_control = self.reset_control, value & RCR_SYS_RST
            if value & RCR_RESET_CPU and not old & RCR_RESET_CPU and self.on_reset is not None:
                self.on_reset()
        elif offset >= OFF_DATA:
            target = self._target(offset, size)
            if target is not None:
                self.bus.config_write(target[0], target[1], target[2], size, value)

    def save_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "address": self.address,
                "reset_control": self.reset_control}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"pci-config: unsupported state version {state.get('version')!r}")
        self.address = int(state["address"]) & ADDR_MASK
        self.reset_control = int(state["reset_control"]) & RCR_SYS_RST
