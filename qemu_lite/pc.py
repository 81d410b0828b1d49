"""The board: which device sits at which port and IRQ, as on QEMU's ``pc`` machine.

One explicit table of the platform (DESIGN "The platform").  ISA interrupt
lines reach both the 8259 pair and the IOAPIC; the local APIC is what the
vCPU asks for interrupts (it passes the 8259's INTR through as ExtINT /
virtual wire).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qemu_lite.devices.backends import StdioBackend, open_backend
from qemu_lite.devices.base import IrqLine
from qemu_lite.devices.block import BlockImage
from qemu_lite.devices.bmdma import PiixIde
from qemu_lite.devices.debugport import DebugCon, FirmwareEvents, IsaDebugExit, PostCode
from qemu_lite.devices.fw_cfg import FwCfg
from qemu_lite.devices.i8042 import I8042
from qemu_lite.devices.i8254 import Pit8254
from qemu_lite.devices.i8259 import PicPair
from qemu_lite.devices.ide import CdRom, IdeChannel, IdeMedium
from qemu_lite.devices.ioapic import IoApic, route_to_lapic
from qemu_lite.devices.lapic import LocalApic
from qemu_lite.devices.mc146818 import Rtc
from qemu_lite.devices.pci import I440fxHostBridge, PciBus, PciConfigPorts, Piix3IsaBridge
from qemu_lite.devices.port92 import SystemControlPortA
from qemu_lite.devices.uart16550 import Uart16550
from qemu_lite.piofast import PioWindowedBlock

if TYPE_CHECKING:
    from qemu_lite.machine import Machine

COM1, COM2 = 0x3F8, 0x2F8
IDE0_CMD, IDE0_CTL = 0x1F0, 0x3F6
IDE1_CMD, IDE1_CTL = 0x170, 0x376
ISA_DEBUG_EXIT = 0xF4
DEBUGCON = 0xE9
POST = 0x80
FW_CFG = 0x510
FW_EVENT = 0x5F4  # qemu_lite's own: the BIOS reports "no bootable device" here
FW_CFG_BOOT_DEVICE = 0x0C
PCI_CONFIG = 0xCF8
BMDMA_PORTS = 16
PIC_MASTER, PIC_SLAVE, ELCR = 0x20, 0xA0, 0x4D0
PIT, PORT61 = 0x40, 0x61
I8042_DATA, I8042_CMD = 0x60, 0x64
RTC = 0x70
PORT92 = 0x92
LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000

IRQ_PIT, IRQ_KBD, IRQ_COM2, IRQ_COM1, IRQ_RTC, IRQ_MOUSE, IRQ_IDE0, IRQ_IDE1 = 0, 1, 3, 4, 8, 12, 14, 15


class IsaIrqs:
    """The ISA interrupt lines, wired to both the 8259 pair and the IOAPIC as on a PC.

    IRQ 0 reaches IOAPIC pin 2 (the interrupt source override QEMU's tables announce);
    every other ISA IRQ n reaches pin n."""

    def __init__(self, pic: PicPair, ioapic: IoApic) -> None:
        self.pic = pic
        self.ioapic = ioapic

    def set_irq(self, irq: int, level: bool) -> None:
        self.pic.set_irq(irq, level)
        self.ioapic.set_irq(2 if irq == 0 else irq, level)

    def line(self, irq: int) -> IrqLine:
        return IrqLine(self, irq)


@dataclass(frozen=True)
class Drive:
    """One IDE drive: ``index`` 0-3 is primary master/slave, secondary master/slave."""

    file: str | os.PathLike[str] | BlockImage
    media: str = "disk"  # or "cdrom"
    index: int = 0
    readonly: bool = False


def parse_drive(spec: str, next_index: int = 0) -> Drive:
    """QEMU's ``-drive file=PATH,if=ide,media=disk|cdrom,readonly=on,index=N``."""
    opts: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"--drive: expected key=value, got {part!r}")
        opts[key] = value
    unknown = set(opts) - {"file", "if", "media", "readonly", "index", "format"}
    if unknown:
        raise ValueError(f"--drive: unknown option {sorted(unknown)[0]!r}")
    if "file" not in opts:
        raise ValueError("--drive needs file=PATH")
    if opts.get("if", "ide") != "ide":
        raise ValueError(f"--drive: only if=ide is emulated, not {opts['if']!r}")
    if opts.get("format", "raw") != "raw":
        raise ValueError(f"--drive: only raw images are supported, not {opts['format']!r}")
    media = opts.get("media", "disk")
    if media not in ("disk", "cdrom"):
        raise ValueError(f"--drive: media must be disk or cdrom, not {media!r}")
    readonly = opts.get("readonly", "off") in ("on", "true", "yes", "1")
    try:
        index = int(opts.get("index", next_index))
    except ValueError:
        raise ValueError(f"--drive: bad index {opts['index']!r}") from None
    if not 0 <= index <= 3:
        raise ValueError("--drive: index must be 0-3 (primary/secondary, master/slave)")
    return Drive(opts["file"], media, index, readonly)


@dataclass
class Board:
    """The devices of one machine, by role."""

    pic: PicPair
    pit: Pit8254
    rtc: Rtc
    kbc: I8042
    lapic: LocalApic
    ioapic: IoApic
    com1: Uart16550
    com2: Uart16550 | None
    ide0: IdeChannel
    ide1: IdeChannel
    pci: PciBus
    piix_ide: PiixIde
    fw_cfg: FwCfg
    debugcon: DebugCon
    post: PostCode
    disks: list[BlockImage] = field(default_factory=list)


def build(machine: Machine, *, drives: list[Drive], serial: str | None,
          serial2: str | None = None, snapshot: bool = False, boot: str = "c") -> Board:
    add = machine.add_device
    clock = machine.clock

    # A rising INTR from the 8259 pair, or anything the local APIC accepts, ends the
    # vCPU's current slice so the interrupt is taken at the next instruction boundary.
    pic = PicPair(IrqLine(_InterruptRequest(machine)))
    lapic = LocalApic(clock, extint=pic)
    lapic.on_request = machine.interrupt_request
    ioapic = IoApic(route_to_lapic(lapic))
    lapic.on_eoi = ioapic.eoi
    irqs = IsaIrqs(pic, ioapic)
    add(PIC_MASTER, 2, pic.master)
    add(PIC_SLAVE, 2, pic.slave)
    add(ELCR, 2, pic.elcr)
    machine.add_mmio(LAPIC_BASE, 0x1000, lapic)
    machine.add_mmio(IOAPIC_BASE, 0x1000, ioapic)
    machine.irq_source = lapic
    machine.add_resettable(pic, lapic, ioapic)

    pit = Pit8254(clock, irqs.line(IRQ_PIT))
    add(PIT, 4, pit.ports)
    add(PORT61, 1, pit.port61)
    rtc = Rtc(clock, irqs.line(IRQ_RTC), base_time=machine.rtc_base)
    rtc.set_memory_size(machine.memory_size)
    add(RTC, 2, rtc)
    kbc = I8042(irqs.line(IRQ_KBD), irqs.line(IRQ_MOUSE), on_reset=machine.reset,
                set_a20=machine.set_a20)
    add(I8042_DATA, 1, kbc.data_port)
    add(I8042_CMD, 1, kbc.command_port)
    add(PORT92, 1, SystemControlPortA(set_a20=machine.set_a20, on_reset=machine.reset))
    machine.add_resettable(pit, rtc, kbc)

    if serial != "stdio" and sys.stdin.isatty():
        _keyboard_from_terminal(machine, kbc)

    backend = open_backend(serial) if serial else None
    com1 = Uart16550(irqs.line(IRQ_COM1), backend, clock)
    add(COM1, 8, com1)
    if backend is not None:
        backend.notify = machine.wake
        machine.add_closer(backend.close)
    machine.add_poller(com1.pump)
    com2 = None
    if serial2:
        backend2 = open_backend(serial2, label="serial1")
        com2 = Uart16550(irqs.line(IRQ_COM2), backend2, clock)
        add(COM2, 8, com2)
        if backend2 is not None:
            backend2.notify = machine.wake
            machine.add_closer(backend2.close)
        machine.add_poller(com2.pump)

    media: list[IdeMedium | None] = [None, None, None, None]
    disks: list[BlockImage] = []
    for drive in drives:
        if media[drive.index] is not None:
            raise ValueError(f"two drives at IDE index {drive.index}")
        cdrom = drive.media == "cdrom"
        if isinstance(drive.file, BlockImage):
            image = drive.file
        else:
            image = BlockImage.open(drive.file, readonly=drive.readonly or cdrom,
                                    snapshot=snapshot and not (drive.readonly or cdrom))
        disks.append(image)
        machine.add_closer(image.close)
        media[drive.index] = CdRom(image) if cdrom else image
    ide0 = IdeChannel(irqs.line(IRQ_IDE0), media[0], media[1])
    ide1 = IdeChannel(irqs.line(IRQ_IDE1), media[2], media[3], serial_base=3)
    for index, (channel, cmd, ctl) in enumerate(((ide0, IDE0_CMD, IDE0_CTL),
                                                 (ide1, IDE1_CMD, IDE1_CTL))):
        add(cmd, 8, PioWindowedBlock(machine.core, index, channel, channel.command_block, cmd))
        add(ctl, 1, PioWindowedBlock(machine.core, index, channel, channel.control_block, cmd))

    # PCI: i440FX host bridge, PIIX3 ISA bridge and IDE function (bus-master DMA).
    pci = PciBus()
    pci.add(0, 0, I440fxHostBridge())
    pci.add(1, 0, Piix3IsaBridge())
    piix_ide = PiixIde(GuestPhysicalMemory(machine), ide0, ide1)

    def move_bmdma(old: int | None, new: int | None) -> None:
        if old is not None:
            machine.core.release_ports(old, BMDMA_PORTS)
        if new is not None:
            machine.add_device(new, BMDMA_PORTS, piix_ide.bmdma_ports)

    piix_ide.on_bar_change = move_bmdma
    pci.add(1, 1, piix_ide)
    add(PCI_CONFIG, 8, PciConfigPorts(pci, on_reset=machine.reset))
    machine.add_resettable(pci)

    fw_cfg = FwCfg(machine.memory_size)
    fw_cfg.set_int(FW_CFG_BOOT_DEVICE, ord(boot), 2)
    add(FW_CFG, 2, fw_cfg)
    debugcon = DebugCon()
    add(DEBUGCON, 1, debugcon)
    post = PostCode()
    add(POST, 1, post)
    add(ISA_DEBUG_EXIT, 1, IsaDebugExit(machine.exit))
    add(FW_EVENT, 4, FirmwareEvents(machine.firmware_event))
    return Board(pic, pit, rtc, kbc, lapic, ioapic, com1, com2, ide0, ide1, pci, piix_ide,
                 fw_cfg, debugcon, post, disks)


def _keyboard_from_terminal(machine: Machine, kbc: I8042) -> None:
    """Keys typed on the host terminal reach the guest's PS/2 keyboard (when the serial
    console is elsewhere, as QEMU's window would take them)."""
    terminal = StdioBackend()
    terminal.notify = machine.wake

    def pump() -> None:
        data = terminal.read_available()
        if data:
            kbc.type_text(data.decode("ascii", errors="replace").replace("\r", "\n"))

    machine.add_poller(pump)
    machine.add_closer(terminal.close)


class _InterruptRequest:
    """The 8259 pair's INTR wire, seen by the machine."""

    def __init__(self, machine: Machine) -> None:
        self._machine = machine

    def set_irq(self, irq: int, level: bool) -> None:
        if level:
            self._machine.interrupt_request()


class GuestPhysicalMemory:
    """Guest memory as bus-master DMA sees it; writes are reported to the shadow MMU.

    Reads reach RAM and the BIOS ROM.  Writes to the ROM are dropped without an
    error, as on a PC: the i440FX's PAM registers send stores to 0xF0000-0xFFFFF
    on to the ROM, which ignores them (QEMU likewise bounces a DMA write to a
    read-only region in address_space_map() and discards it at unmap).  Anything
    else is a master abort: ValueError, which the PIIX reports in BMISTA's error
    bit (82371AB data sheet, BMISTA bit 1; QEMU instead completes such a transfer
    and discards the data)."""

    def __init__(self, machine: Machine) -> None:
        self._machine = machine

    def read(self, paddr: int, n: int) -> bytes:
        try:
            return self._machine.read_memory(paddr, n)
        except ValueError:
            raise ValueError(f"DMA read outside RAM and ROM at {paddr:#x}+{n:#x}") from None

    def write(self, paddr: int, data: bytes) -> None:
        m = self._machine
        end = paddr + len(data)
        if paddr >= 0x100000 and end <= m.memory_size:
            m.write_memory(paddr, data)  # the common case: all RAM above the BIOS
            return
        ram = [(max(s, paddr), min(e, end)) for s, e in m.memory_ranges(write=True)]
        ram = [(s, e) for s, e in ram if s < e]
        covered = sum(e - s for s, e in ram)
        for s, e in m.rom_ranges:
            covered += max(0, min(e, end) - max(s, paddr))
        if paddr < 0 or covered != len(data):
            raise ValueError(f"DMA write outside RAM at {paddr:#x}+{len(data):#x}")
        for s, e in ram:
            m.write_memory(s, data[s - paddr:e - paddr])
