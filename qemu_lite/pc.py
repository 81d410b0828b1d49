"""The board: which device sits at which port and IRQ, as on QEMU's ``pc`` machine.

One explicit table of the platform (DESIGN "The platform").  Interrupt
controllers join in ``interrupts.py``; until a line has a controller it is
an :class:`IrqLine` with no sink.
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
from qemu_lite.devices.ide import IdeChannel
from qemu_lite.devices.uart16550 import Uart16550

if TYPE_CHECKING:
    from qemu_lite.machine import Machine

COM1, COM2 = 0x3F8, 0x2F8
IDE0_CMD, IDE0_CTL = 0x1F0, 0x3F6
IDE1_CMD, IDE1_CTL = 0x170, 0x376
ISA_DEBUG_EXIT = 0xF4
DEBUGCON = 0xE9
POST = 0x80
FW_CFG = 0x510


@dataclass
class Board:
    """The devices of one machine, by role."""

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
    backend = open_backend(serial) if serial else None
    com1 = Uart16550(IrqLine(), backend, machine.clock)
    add(COM1, 8, com1)
    if backend is not None:
        backend.notify = machine.wake
        machine.add_closer(backend.close)
    machine.add_poller(com1.pump)
    com2 = None
    if serial2:
        backend2 = open_backend(serial2, label="serial1")
        com2 = Uart16550(IrqLine(), backend2, machine.clock)
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
    ide0 = IdeChannel(IrqLine(), master)
    add(IDE0_CMD, 8, ide0.command_block)
    add(IDE0_CTL, 1, ide0.control_block)

    fw_cfg = FwCfg(machine.memory_size)
    add(FW_CFG, 2, fw_cfg)
    debugcon = DebugCon()
    add(DEBUGCON, 1, debugcon)
    post = PostCode()
    add(POST, 1, post)
    add(ISA_DEBUG_EXIT, 1, IsaDebugExit(machine.exit))
    return Board(com1, com2, ide0, fw_cfg, debugcon, post, disks)
