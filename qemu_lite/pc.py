"""The board: which device sits at which port and IRQ, as on QEMU's ``pc`` machine.

One explicit table of the platform (DESIGN "The platform").  ISA interrupt
lines reach both the 8259 pair and the IOAPIC; the local APIC is what the
vCPU asks for interrupts (it passes the 8259's INTR through as ExtINT /
virtual wire).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qemu_lite.devices.backends import open_backend
from qemu_lite.devices.base import IrqLine
from qemu_lite.devices.block import BlockImage
from qemu_lite.devices.debugport import DebugCon, IsaDebugExit, PostCode
from qemu_lite.devices.fw_cfg import FwCfg
from qemu_lite.devices.i8042 import I8042
from qemu_lite.devices.i8254 import Pit8254
from qemu_lite.devices.i8259 import PicPair
from qemu_lite.devices.ide import IdeChannel
from qemu_lite.devices.ioapic import IoApic, route_to_lapic
from qemu_lite.devices.lapic import LocalApic
from qemu_lite.devices.mc146818 import Rtc
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
    fw_cfg: FwCfg
    debugcon: DebugCon
    post: PostCode
    disks: list[BlockImage] = field(default_factory=list)


def build(machine: Machine, *, disk: str | os.PathLike[str] | BlockImage | None,
          serial: str | None, serial2: str | None = None, snapshot: bool = False) -> Board:
    add = machine.add_device
    clock = machine.clock

    pic = PicPair()
    lapic = LocalApic(clock, extint=pic)
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

    disks: list[BlockImage] = []
    master = None
    if disk is not None:
        master = disk if isinstance(disk, BlockImage) else BlockImage.open(disk, snapshot=snapshot)
        disks.append(master)
        machine.add_closer(master.close)
    ide0 = IdeChannel(irqs.line(IRQ_IDE0), master)
    add(IDE0_CMD, 8, PioWindowedBlock(machine.core, 0, ide0, ide0.command_block, IDE0_CMD))
    add(IDE0_CTL, 1, PioWindowedBlock(machine.core, 0, ide0, ide0.control_block, IDE0_CMD))

    fw_cfg = FwCfg(machine.memory_size)
    add(FW_CFG, 2, fw_cfg)
    debugcon = DebugCon()
    add(DEBUGCON, 1, debugcon)
    post = PostCode()
    add(POST, 1, post)
    add(ISA_DEBUG_EXIT, 1, IsaDebugExit(machine.exit))
    return Board(pic, pit, rtc, kbc, lapic, ioapic, com1, com2, ide0, fw_cfg, debugcon, post,
                 disks)
