"""One IDE/ATA channel with up to two hard disks, PIO transfers only.

Register and command names follow ATA/ATAPI-6 (T13/1410D).  Where the
specification leaves room, behaviour follows QEMU's ``hw/ide/core.c``:
register writes reach both drives, a missing device 1 reads status 0,
commands sent to it are ignored, and out-of-order data port accesses read 0.

A channel is two port devices: :attr:`IdeChannel.command_block` (8 ports,
0x1F0-0x1F7 primary, 0x170-0x177 secondary) and
:attr:`IdeChannel.control_block` (1 port, 0x3F6 / 0x376: alternate status on
read, device control on write).

Data moves through one per-channel PIO buffer, exposed as ``pio_buffer``,
``pio_pos`` and ``pio_end`` together with :meth:`IdeChannel.pio_read_block`
and :meth:`IdeChannel.pio_write_block` so that a fast path can move whole
blocks with the same DRQ/IRQ behaviour as word-by-word accesses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Device, IrqLine
from .block import SECTOR_SIZE, BlockBackend, BlockImageError

# Command block registers (offsets from 0x1F0 / 0x170).
REG_DATA = 0
REG_ERROR = 1  # read
REG_FEATURES = 1  # write
REG_SECTOR_COUNT = 2
REG_LBA_LOW = 3  # sector number in CHS mode
REG_LBA_MID = 4  # cylinder low
REG_LBA_HIGH = 5  # cylinder high
REG_DEVICE = 6  # device/head
REG_STATUS = 7  # read
REG_COMMAND = 7  # write

# Status register.
ST_ERR = 0x01
ST_DRQ = 0x08
ST_DSC = 0x10  # device seek complete
ST_DF = 0x20  # device fault
ST_DRDY = 0x40
ST_BSY = 0x80

# Error register.
ERR_AMNF = 0x01  # also "device 0 passed" after diagnostics / reset
ERR_ABRT = 0x04
ERR_IDNF = 0x10
ERR_UNC = 0x40

# Device register.
DEV_HEAD = 0x0F  # CHS head, or LBA bits 27:24
DEV_DEV = 0x10  # device 1 selected
DEV_LBA = 0x40
DEV_OBSOLETE = 0xA0  # bits 7 and 5 read as one

# Device control register.
CTL_NIEN = 0x02
CTL_SRST = 0x04
CTL_HOB = 0x80

# Commands (ATA/ATAPI-6 clause 8).
CMD_RECALIBRATE = 0x10
CMD_READ_SECTORS = 0x20
CMD_READ_SECTORS_NORETRY = 0x21
CMD_READ_SECTORS_EXT = 0x24
CMD_READ_MULTIPLE_EXT = 0x29
CMD_WRITE_SECTORS = 0x30
CMD_WRITE_SECTORS_NORETRY = 0x31
CMD_WRITE_SECTORS_EXT = 0x34
CMD_WRITE_MULTIPLE_EXT = 0x39
CMD_READ_VERIFY_SECTORS = 0x40
CMD_READ_VERIFY_SECTORS_NORETRY = 0x41
CMD_READ_VERIFY_SECTORS_EXT = 0x42
CMD_SEEK = 0x70
CMD_EXECUTE_DEVICE_DIAGNOSTIC = 0x90
CMD_INITIALIZE_DEVICE_PARAMETERS = 0x91
CMD_READ_MULTIPLE = 0xC4
CMD_WRITE_MULTIPLE = 0xC5
CMD_SET_MULTIPLE_MODE = 0xC6
CMD_STANDBY_IMMEDIATE = 0xE0
CMD_IDLE_IMMEDIATE = 0xE1
CMD_STANDBY = 0xE2
CMD_IDLE = 0xE3
CMD_CHECK_POWER_MODE = 0xE5
CMD_SLEEP = 0xE6
CMD_FLUSH_CACHE = 0xE7
CMD_FLUSH_CACHE_EXT = 0xEA
CMD_IDENTIFY_DEVICE = 0xEC
CMD_SET_FEATURES = 0xEF
# ATA-1..3 codes of the power management commands.
CMD_OLD_POWER = (0x94, 0x95, 0x96, 0x97, 0x98, 0x99)
CMD_OLD_CHECK_POWER_MODE = 0x98

# SET FEATURES subcommands that change IDENTIFY data.
FEAT_WRITE_CACHE_ENABLE = 0x02
FEAT_WRITE_CACHE_DISABLE = 0x82

MAX_MULT_SECTORS = 16  # IDENTIFY word 47; as QEMU
MODEL = "QEMU_LITE HARDDISK"
FIRMWARE_REVISION = "0.1.0"

# Direction of the PIO transfer under way and what happens at the end of a block.
PIO_NONE, PIO_IN, PIO_OUT = 0, 1, 2  # PIO_IN: device to host (reads)
NEXT_STOP, NEXT_READ, NEXT_WRITE = 0, 1, 2

STATE_VERSION = 1


def default_geometry(sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for IDENTIFY words 1/3/6.

    16 heads and 63 sectors per track, cylinders capped at 16383, as QEMU and
    ATA-6 for disks over 8.4 GB; tiny disks get a geometry that fits in them.
    """
    if sectors >= 16 * 63:
        return min(sectors // (16 * 63), 16383), 16, 63
    spt = max(1, min(sectors, 63))
    heads = max(1, min(sectors // spt, 16))
    return max(1, sectors // (heads * spt)), heads, spt


def ata_string(text: str, length: int) -> bytes:
    """An IDENTIFY string: space padded, two characters a word, first in the high byte."""
    raw = text.encode("ascii")[:length].ljust(length, b" ")
    out = bytearray(length)
    out[0::2] = raw[1::2]
    out[1::2] = raw[0::2]
    return bytes(out)


class _Drive:
    """One device on the channel: its task file registers and settings."""

    def __init__(self, block: BlockBackend | None, unit: int, serial: str) -> None:
        self.block = block
        self.unit = unit
        self.serial = serial
        self.nb_sectors = block.sector_count if block is not None else 0
        self.cylinders, self.heads, self.sectors = default_geometry(self.nb_sectors)
        self.power_on()

    @property
    def present(self) -> bool:
        return self.block is not None

    def power_on(self) -> None:
        """Power-on / hardware reset: default translation and settings, then a reset."""
        self.cur_heads = self.heads
        self.cur_sectors = self.sectors
        self.mult_sectors = MAX_MULT_SECTORS
        self.write_cache = True
        self.reset()
        self.error = ERR_AMNF  # diagnostic code: passed

    def reset(self) -> None:
        """Task file after a reset: zeroed registers, status DRDY|DSC, signature."""
        self.feature = self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_nsector = self.hob_sector = 0
        self.hob_lcyl = self.hob_hcyl = 0
        self.select = DEV_OBSOLETE
        self.status = ST_DRDY | ST_DSC
        self.error = 0
        self.lba48 = False
        self.req_sectors = 1
        self.set_signature()

    def set_signature(self) -> None:
        """ATA device signature: sector count 1, LBA low 1, cylinder 0 (0xFFFF if absent)."""
        self.select &= ~DEV_HEAD
        self.nsector = 1
        self.sector = 1
        self.lcyl = self.hcyl = 0 if self.present else 0xFF

    @property
    def cur_cylinders(self) -> int:
        if (self.cur_heads, self.cur_sectors) == (self.heads, self.sectors):
            return self.cylinders
        return min(self.nb_sectors // (self.cur_heads * self.cur_sectors), 65535)

    def begin(self, lba48: bool) -> None:
        """Latch the sector count of a data command: 0 means 256 (65536 for LBA48)."""
        self.lba48 = lba48
        if lba48:
            self.nsector = (self.hob_nsector << 8) | self.nsector or 65536
        else:
            self.nsector = self.nsector or 256

    def get_sector(self) -> int:
        """The address in the task file as an LBA, or -1 for an invalid CHS address."""
        if self.lba48:
            return (
                (self.hob_hcyl << 40) | (self.hob_lcyl << 32) | (self.hob_sector << 24)
                | (self.hcyl << 16) | (self.lcyl << 8) | self.sector
            )
        if self.select & DEV_LBA:
            return ((self.select & DEV_HEAD) << 24) | (self.hcyl << 16) | (self.lcyl << 8) | self.sector
        cyl = (self.hcyl << 8) | self.lcyl
        head = self.select & DEV_HEAD
        if not 1 <= self.sector <= self.cur_sectors or head >= self.cur_heads:
            return -1
        if cyl >= self.cur_cylinders:
            return -1
        return (cyl * self.cur_heads + head) * self.cur_sectors + self.sector - 1

    def set_sector(self, lba: int) -> None:
        """Store ``lba`` back into the task file in the addressing mode in use."""
        if self.lba48:
            self.sector = lba & 0xFF
            self.lcyl = (lba >> 8) & 0xFF
            self.hcyl = (lba >> 16) & 0xFF
            self.hob_sector = (lba >> 24) & 0xFF
            self.hob_lcyl = (lba >> 32) & 0xFF
            self.hob_hcyl = (lba >> 40) & 0xFF
        elif self.select & DEV_LBA:
            self.select = (self.select & ~DEV_HEAD) | ((lba >> 24) & DEV_HEAD)
            self.hcyl = (lba >> 16) & 0xFF
            self.lcyl = (lba >> 8) & 0xFF
            self.sector = lba & 0xFF
        else:
            track, sector = divmod(lba, self.cur_sectors)
            cyl, head = divmod(track, self.cur_heads)
            self.hcyl = (cyl >> 8) & 0xFF
            self.lcyl = cyl & 0xFF
            self.select = (self.select & ~DEV_HEAD) | (head & DEV_HEAD)
            self.sector = sector + 1

    def range_ok(self, lba: int, count: int) -> bool:
        """Whether ``count`` sectors from ``lba`` exist (and are addressable in CHS mode)."""
        limit = self.nb_sectors
        if not self.lba48 and not self.select & DEV_LBA:
            limit = min(limit, self.cur_cylinders * self.cur_heads * self.cur_sectors)
        return lba >= 0 and lba + count <= limit

    def identify(self) -> bytes:
        """The 512-byte IDENTIFY DEVICE data (ATA/ATAPI-6 table 27)."""
        w = [0] * 256
        n = self.nb_sectors
        w[0] = 0x0040  # fixed disk
        w[1], w[3], w[6] = self.cylinders, self.heads, self.sectors
        w[47] = 0x8000 | MAX_MULT_SECTORS
        w[48] = 0x0001  # 32-bit data port accesses (ATA-1 "doubleword I/O")
        w[49] = 1 << 9  # LBA supported; no DMA
        w[51] = 0x0200  # PIO data transfer cycle timing mode (obsolete)
        w[53] = 0x0003  # words 54-58 and 64-70 valid
        cyls, heads, spt = self.cur_cylinders, self.cur_heads, self.cur_sectors
        w[54], w[55], w[56] = cyls, heads, spt
        current = cyls * heads * spt
        w[57], w[58] = current & 0xFFFF, (current >> 16) & 0xFFFF
        if self.mult_sectors:
            w[59] = 0x0100 | self.mult_sectors
        lba28 = min(n, (1 << 28) - 1)
        w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
        w[64] = 0x0003  # PIO modes 3 and 4
        w[65] = w[66] = w[67] = w[68] = 120  # cycle times, ns
        w[80] = 0x007E  # ATA-1 .. ATA-6
        w[82] = (1 << 14) | (1 << 5)  # NOP, write cache
        w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10)  # FLUSH EXT, FLUSH, 48-bit
        w[84] = 1 << 14
        w[85] = (1 << 14) | (int(self.write_cache) << 5)
        w[86] = (1 << 13) | (1 << 12) | (1 << 10)
        w[87] = 1 << 14
        w[93] = (1 << 14) | (1 << 13) | 1  # hardware reset result, cable detected
        for i in range(4):
            w[100 + i] = (n >> (16 * i)) & 0xFFFF
        data = bytearray(b"".join(v.to_bytes(2, "little") for v in w))
        data[20:40] = ata_string(self.serial, 20)
        data[46:54] = ata_string(FIRMWARE_REVISION, 8)
        data[54:94] = ata_string(MODEL, 40)
        return bytes(data)

    _SAVED = (
        "feature", "nsector", "sector", "lcyl", "hcyl", "hob_feature", "hob_nsector",
        "hob_sector", "hob_lcyl", "hob_hcyl", "select", "status", "error", "lba48",
        "req_sectors", "cur_heads", "cur_sectors", "mult_sectors", "write_cache",
    )

    def save_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._SAVED}

    def load_state(self, state: dict[str, Any]) -> None:
        for name in self._SAVED:
            setattr(self, name, type(getattr(self, name))(state[name]))


class IdeCommandBlock(Device):
    """The eight command block registers of a channel (0x1F0-0x1F7 / 0x170-0x177).

    Offset 0 is the data port (8/16/32-bit); a wide access to another offset
    acts on that one 8-bit register.
    """

    name = "ide-command"

    def __init__(self, channel: IdeChannel) -> None:
        self.channel = channel

    def reset(self) -> None:
        self.channel.reset()

    def io_read(self, offset: int, size: int) -> int:
        return self.channel.read_command_block(offset, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.channel.write_command_block(offset, size, value)


class IdeControlBlock(Device):
    """The control block register of a channel (0x3F6 / 0x376)."""

    name = "ide-control"

    def __init__(self, channel: IdeChannel) -> None:
        self.channel = channel

    def reset(self) -> None:
        """Nothing of its own: :meth:`IdeCommandBlock.reset` resets the channel."""

    def io_read(self, offset: int, size: int) -> int:
        return self.channel.alternate_status()

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.channel.write_device_control(value & 0xFF)


class IdeChannel:
    """An ATA channel: device 0 (``master``) and device 1 (``slave``), one IRQ line.

    Wire ``command_block`` and ``control_block`` to the bus and ``irq`` to
    IRQ 14 (primary) or 15 (secondary).  ``serial_base`` numbers the drives'
    serial numbers (QM00001.. as QEMU; use 3 for a secondary channel).
    """

    def __init__(
        self,
        irq: IrqLine | None,
        master: BlockBackend | None = None,
        slave: BlockBackend | None = None,
        *,
        serial_base: int = 1,
    ) -> None:
        self.irq = irq
        self.drives = (
            _Drive(master, 0, f"QM{serial_base:05d}"),
            _Drive(slave, 1, f"QM{serial_base + 1:05d}"),
        )
        self.pio_buffer = bytearray(MAX_MULT_SECTORS * SECTOR_SIZE)
        self.pio_pos = 0
        self.pio_end = 0
        self.command_block = IdeCommandBlock(self)
        self.control_block = IdeControlBlock(self)
        self.reset()

    # -- reset and interrupt ----------------------------------------------

    def reset(self) -> None:
        """Power-on / hardware reset: device 0 selected, nIEN clear, no interrupt,
        both drives DRDY|DSC with the ATA signature and default settings."""
        self.unit = 0
        self.device_control = 0
        self.intrq = False  # the interrupt pending in the selected device
        self.pio_dir = PIO_NONE
        self.pio_next = NEXT_STOP
        self.pio_pos = self.pio_end = 0
        for drive in self.drives:
            drive.power_on()
        self._update_irq()

    def _update_irq(self) -> None:
        if self.irq is not None:
            self.irq.set_level(self.intrq and not self.device_control & CTL_NIEN)

    def _set_irq(self) -> None:
        self.intrq = True
        self._update_irq()

    @property
    def selected(self) -> _Drive:
        return self.drives[self.unit]

    def _no_drives(self) -> bool:
        return not (self.drives[0].present or self.drives[1].present)

    def _status_of_selected(self) -> int:
        drive = self.selected
        if self._no_drives() or (drive.unit == 1 and not drive.present):
            return 0
        return drive.status

    # -- register access --------------------------------------------------

    def read_command_block(self, offset: int, size: int) -> int:
        """A read of a command block register (``offset`` 0-7)."""
        if offset == REG_DATA:
            return self.data_read(size)
        drive = self.selected
        hob = self.device_control & CTL_HOB
        if offset == REG_STATUS:
            value = self._status_of_selected()
            self.intrq = False
            self._update_irq()
            return value
        if self._no_drives():
            return 0
        if offset == REG_ERROR:
            if drive.unit == 1 and not drive.present:
                return 0
            return drive.hob_feature if hob else drive.error
        if offset == REG_SECTOR_COUNT:
            return drive.hob_nsector if hob else drive.nsector & 0xFF
        if offset == REG_LBA_LOW:
            return drive.hob_sector if hob else drive.sector
        if offset == REG_LBA_MID:
            return drive.hob_lcyl if hob else drive.lcyl
        if offset == REG_LBA_HIGH:
            return drive.hob_hcyl if hob else drive.hcyl
        return drive.select  # REG_DEVICE

    def write_command_block(self, offset: int, size: int, value: int) -> None:
        """A write of a command block register; both drives receive task file writes."""
        if offset == REG_DATA:
            self.data_write(size, value)
            return
        value &= 0xFF
        if offset == REG_COMMAND:
            self.device_control &= ~CTL_HOB
            self.execute(value)
            return
        if self.selected.status & (ST_BSY | ST_DRQ):
            return  # ignored while busy with the previous command
        self.device_control &= ~CTL_HOB
        for drive in self.drives:
            if offset == REG_FEATURES:
                drive.hob_feature, drive.feature = drive.feature, value
            elif offset == REG_SECTOR_COUNT:
                drive.hob_nsector, drive.nsector = drive.nsector & 0xFF, value
            elif offset == REG_LBA_LOW:
                drive.hob_sector, drive.sector = drive.sector, value
            elif offset == REG_LBA_MID:
                drive.hob_lcyl, drive.lcyl = drive.lcyl, value
            elif offset == REG_LBA_HIGH:
                drive.hob_hcyl, drive.hcyl = drive.hcyl, value
            else:  # REG_DEVICE
                drive.select = value | DEV_OBSOLETE
        if offset == REG_DEVICE:
            self.unit = 1 if value & DEV_DEV else 0
        self._update_irq()

    def alternate_status(self) -> int:
        """The alternate status register: the status, without clearing the interrupt."""
        return self._status_of_selected()

    def write_device_control(self, value: int) -> None:
        """Device control: nIEN masks INTRQ, SRST resets both drives, HOB selects readback.

        While SRST is set both drives are busy; clearing it completes the reset
        with the ATA signature loaded, device 0 selected and error 01h.
        """
        old = self.device_control
        self.device_control = value
        if value & CTL_SRST and not old & CTL_SRST:
            self._halt_transfer()
            self.intrq = False
            for drive in self.drives:
                drive.status = ST_BSY
        elif old & CTL_SRST and not value & CTL_SRST:
            self.unit = 0
            for drive in self.drives:
                drive.reset()
                drive.error = ERR_AMNF  # diagnostic code: passed
        self._update_irq()

    # -- data port and PIO buffer -----------------------------------------

    def _start_transfer(self, drive: _Drive, direction: int, size: int, next_step: int) -> None:
        self.pio_dir = direction
        self.pio_next = next_step
        self.pio_pos = 0
        self.pio_end = size
        drive.status |= ST_DRQ

    def _halt_transfer(self) -> None:
        self.pio_dir = PIO_NONE
        self.pio_next = NEXT_STOP
        self.pio_pos = self.pio_end = 0
        for drive in self.drives:
            drive.status &= ~ST_DRQ

    def _end_of_block(self, drive: _Drive) -> None:
        drive.status &= ~ST_DRQ
        if self.pio_next == NEXT_READ:
            self._sector_read(drive)
        elif self.pio_next == NEXT_WRITE:
            self._sector_write(drive)
        else:
            self._halt_transfer()

    def _transfer_ready(self, direction: int) -> bool:
        return bool(self.selected.status & ST_DRQ) and self.pio_dir == direction

    def data_read(self, size: int) -> int:
        """A ``size``-byte read of the data port (8-bit reads take one byte)."""
        if not self._transfer_ready(PIO_IN):
            return 0
        pos = self.pio_pos
        end = pos + size
        if end > self.pio_end:
            return 0
        value = int.from_bytes(self.pio_buffer[pos:end], "little")
        self.pio_pos = end
        if end >= self.pio_end:
            self._end_of_block(self.selected)
        return value

    def data_write(self, size: int, value: int) -> None:
        """A ``size``-byte write of the data port."""
        if not self._transfer_ready(PIO_OUT):
            return
        pos = self.pio_pos
        end = pos + size
        if end > self.pio_end:
            return
        self.pio_buffer[pos:end] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.pio_pos = end
        if end >= self.pio_end:
            self._end_of_block(self.selected)

    def pio_read_block(self, n_bytes: int) -> bytes:
        """As ``n_bytes // 2`` 16-bit data port reads, returned as bytes (``rep insw``)."""
        out = bytearray(n_bytes)
        done = 0
        while done < n_bytes and self._transfer_ready(PIO_IN):
            chunk = min(n_bytes - done, self.pio_end - self.pio_pos)
            if chunk <= 0:
                break
            out[done:done + chunk] = self.pio_buffer[self.pio_pos:self.pio_pos + chunk]
            self.pio_pos += chunk
            done += chunk
            if self.pio_pos >= self.pio_end:
                self._end_of_block(self.selected)
        return bytes(out)

    def pio_write_block(self, data: bytes) -> None:
        """As ``len(data) // 2`` 16-bit data port writes (``rep outsw``)."""
        view = memoryview(data)
        done = 0
        while done < len(view) and self._transfer_ready(PIO_OUT):
            chunk = min(len(view) - done, self.pio_end - self.pio_pos)
            if chunk <= 0:
                break
            self.pio_buffer[self.pio_pos:self.pio_pos + chunk] = view[done:done + chunk]
            self.pio_pos += chunk
            done += chunk
            if self.pio_pos >= self.pio_end:
                self._end_of_block(self.selected)

    # -- command execution ------------------------------------------------

    def execute(self, command: int) -> None:
        """Write of the command register."""
        self.intrq = False
        drive = self.selected
        if drive.status & (ST_BSY | ST_DRQ):
            self._update_irq()
            return  # only DEVICE RESET (ATAPI) is allowed now; we have no ATAPI
        if command == CMD_EXECUTE_DEVICE_DIAGNOSTIC:
            self._cmd_diagnostic(drive, command)
            return
        if drive.unit == 1 and not drive.present:
            self._update_irq()
            return  # commands to a missing device 1 are ignored
        handler = _COMMANDS.get(command)
        if handler is None or not drive.present:
            self._abort(drive)
            return
        drive.status = ST_DRDY | ST_BSY
        drive.error = 0
        handler(self, drive, command)

    def _complete(self, drive: _Drive) -> None:
        drive.status = ST_DRDY | ST_DSC
        self._set_irq()

    def _abort(self, drive: _Drive, error: int = ERR_ABRT) -> None:
        self._halt_transfer()
        drive.status = ST_DRDY | ST_ERR
        drive.error = error
        self._set_irq()

    def _cmd_nop(self, drive: _Drive, command: int) -> None:
        self._complete(drive)

    def _cmd_check_power_mode(self, drive: _Drive, command: int) -> None:
        drive.nsector = 0xFF  # active or idle
        self._complete(drive)

    def _cmd_diagnostic(self, drive: _Drive, command: int) -> None:
        for each in self.drives:
            each.set_signature()
            each.status = ST_DRDY | ST_DSC
            each.error = ERR_AMNF  # device 0 passed, device 1 passed or absent
        self._set_irq()

    def _cmd_identify(self, drive: _Drive, command: int) -> None:
        self.pio_buffer[:SECTOR_SIZE] = drive.identify()
        drive.status = ST_DRDY | ST_DSC
        self._start_transfer(drive, PIO_IN, SECTOR_SIZE, NEXT_STOP)
        self._set_irq()

    def _cmd_initialize_device_parameters(self, drive: _Drive, command: int) -> None:
        spt = drive.nsector & 0xFF
        if spt == 0:
            self._abort(drive)
            return
        drive.cur_heads = (drive.select & DEV_HEAD) + 1
        drive.cur_sectors = spt
        self._complete(drive)

    def _cmd_set_multiple_mode(self, drive: _Drive, command: int) -> None:
        count = drive.nsector & 0xFF
        if count > MAX_MULT_SECTORS or count & (count - 1):
            self._abort(drive)
            return
        drive.mult_sectors = count  # 0 disables READ/WRITE MULTIPLE
        self._complete(drive)

    def _cmd_set_features(self, drive: _Drive, command: int) -> None:
        if drive.feature == FEAT_WRITE_CACHE_ENABLE:
            drive.write_cache = True
        elif drive.feature == FEAT_WRITE_CACHE_DISABLE:
            drive.write_cache = False
            if not self._flush(drive):
                return
        self._complete(drive)

    def _flush(self, drive: _Drive) -> bool:
        assert drive.block is not None
        try:
            drive.block.flush()
        except (BlockImageError, OSError):
            self._abort(drive)
            return False
        return True

    def _cmd_flush_cache(self, drive: _Drive, command: int) -> None:
        if self._flush(drive):
            self._complete(drive)

    def _start_data_command(self, drive: _Drive, command: int) -> int:
        """Latch count and address; return the first LBA, or -1 after reporting IDNF."""
        drive.begin(command in _LBA48_COMMANDS)
        lba = drive.get_sector()
        if lba < 0 or not drive.range_ok(lba, drive.nsector):
            self._abort(drive, ERR_IDNF)
            return -1
        return lba

    def _cmd_read_verify(self, drive: _Drive, command: int) -> None:
        if self._start_data_command(drive, command) >= 0:
            self._complete(drive)

    def _cmd_read(self, drive: _Drive, command: int) -> None:
        multiple = command in (CMD_READ_MULTIPLE, CMD_READ_MULTIPLE_EXT)
        if multiple and not drive.mult_sectors:
            self._abort(drive)
            return
        if self._start_data_command(drive, command) < 0:
            return
        drive.req_sectors = drive.mult_sectors if multiple else 1
        self._sector_read(drive)

    def _sector_read(self, drive: _Drive) -> None:
        """Load the next DRQ block of a read into the PIO buffer, or finish."""
        drive.status = ST_DRDY | ST_DSC
        count = min(drive.nsector, drive.req_sectors)
        if count == 0:
            self._halt_transfer()
            return
        lba = drive.get_sector()
        assert drive.block is not None
        try:
            data = drive.block.read(lba, count)
        except (BlockImageError, OSError):
            self._abort(drive)
            return
        self.pio_buffer[:len(data)] = data
        drive.set_sector(lba + count)
        drive.nsector -= count
        self._start_transfer(drive, PIO_IN, count * SECTOR_SIZE, NEXT_READ)
        self._set_irq()

    def _cmd_write(self, drive: _Drive, command: int) -> None:
        multiple = command in (CMD_WRITE_MULTIPLE, CMD_WRITE_MULTIPLE_EXT)
        assert drive.block is not None
        if (multiple and not drive.mult_sectors) or drive.block.readonly:
            self._abort(drive)
            return
        if self._start_data_command(drive, command) < 0:
            return
        drive.req_sectors = drive.mult_sectors if multiple else 1
        drive.status = ST_DRDY | ST_DSC
        count = min(drive.nsector, drive.req_sectors)
        self._start_transfer(drive, PIO_OUT, count * SECTOR_SIZE, NEXT_WRITE)

    def _sector_write(self, drive: _Drive) -> None:
        """Write the DRQ block just received; ask for the next one or finish."""
        count = min(drive.nsector, drive.req_sectors)
        lba = drive.get_sector()
        assert drive.block is not None
        try:
            drive.block.write(lba, bytes(self.pio_buffer[:count * SECTOR_SIZE]))
        except (BlockImageError, OSError):
            self._abort(drive)
            return
        drive.nsector -= count
        drive.set_sector(lba + count)
        drive.status = ST_DRDY | ST_DSC
        if drive.nsector == 0:
            self._halt_transfer()
        else:
            count = min(drive.nsector, drive.req_sectors)
            self._start_transfer(drive, PIO_OUT, count * SECTOR_SIZE, NEXT_WRITE)
        self._set_irq()

    # -- saved state --------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """Registers, settings and any PIO transfer under way (not the media)."""
        return {
            "version": STATE_VERSION,
            "unit": self.unit,
            "device_control": self.device_control,
            "intrq": self.intrq,
            "pio_dir": self.pio_dir,
            "pio_next": self.pio_next,
            "pio_pos": self.pio_pos,
            "pio_end": self.pio_end,
            "pio_buffer": bytes(self.pio_buffer[:self.pio_end]),
            "drives": [drive.save_state() for drive in self.drives],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`save_state` returned; raise ValueError if it does not fit."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"ide: unsupported state version {state.get('version')!r}")
        end = int(state["pio_end"])
        pos = int(state["pio_pos"])
        if not 0 <= pos <= end <= len(self.pio_buffer) or len(state["pio_buffer"]) != end:
            raise ValueError("ide: inconsistent PIO buffer in saved state")
        self.unit = int(state["unit"]) & 1
        self.device_control = int(state["device_control"]) & 0xFF
        self.intrq = bool(state["intrq"])
        self.pio_dir = int(state["pio_dir"])
        self.pio_next = int(state["pio_next"])
        self.pio_pos, self.pio_end = pos, end
        self.pio_buffer[:end] = state["pio_buffer"]
        for drive, saved in zip(self.drives, state["drives"], strict=True):
            drive.load_state(saved)
        self._update_irq()


_Handler = Callable[[IdeChannel, _Drive, int], None]

_LBA48_COMMANDS = frozenset({
    CMD_READ_SECTORS_EXT, CMD_READ_MULTIPLE_EXT, CMD_WRITE_SECTORS_EXT,
    CMD_WRITE_MULTIPLE_EXT, CMD_READ_VERIFY_SECTORS_EXT,
})

# The commands a hard disk accepts (ATA/ATAPI-6 table B.2); anything else aborts.
_COMMANDS: dict[int, _Handler] = {
    CMD_RECALIBRATE: IdeChannel._cmd_nop,
    CMD_READ_SECTORS: IdeChannel._cmd_read,
    CMD_READ_SECTORS_NORETRY: IdeChannel._cmd_read,
    CMD_READ_SECTORS_EXT: IdeChannel._cmd_read,
    CMD_READ_MULTIPLE_EXT: IdeChannel._cmd_read,
    CMD_WRITE_SECTORS: IdeChannel._cmd_write,
    CMD_WRITE_SECTORS_NORETRY: IdeChannel._cmd_write,
    CMD_WRITE_SECTORS_EXT: IdeChannel._cmd_write,
    CMD_WRITE_MULTIPLE_EXT: IdeChannel._cmd_write,
    CMD_READ_VERIFY_SECTORS: IdeChannel._cmd_read_verify,
    CMD_READ_VERIFY_SECTORS_NORETRY: IdeChannel._cmd_read_verify,
    CMD_READ_VERIFY_SECTORS_EXT: IdeChannel._cmd_read_verify,
    CMD_SEEK: IdeChannel._cmd_nop,
    CMD_INITIALIZE_DEVICE_PARAMETERS: IdeChannel._cmd_initialize_device_parameters,
    CMD_READ_MULTIPLE: IdeChannel._cmd_read,
    CMD_WRITE_MULTIPLE: IdeChannel._cmd_write,
    CMD_SET_MULTIPLE_MODE: IdeChannel._cmd_set_multiple_mode,
    CMD_STANDBY_IMMEDIATE: IdeChannel._cmd_nop,
    CMD_IDLE_IMMEDIATE: IdeChannel._cmd_nop,
    CMD_STANDBY: IdeChannel._cmd_nop,
    CMD_IDLE: IdeChannel._cmd_nop,
    CMD_CHECK_POWER_MODE: IdeChannel._cmd_check_power_mode,
    CMD_SLEEP: IdeChannel._cmd_nop,
    CMD_FLUSH_CACHE: IdeChannel._cmd_flush_cache,
    CMD_FLUSH_CACHE_EXT: IdeChannel._cmd_flush_cache,
    CMD_IDENTIFY_DEVICE: IdeChannel._cmd_identify,
    CMD_SET_FEATURES: IdeChannel._cmd_set_features,
}
for _code in CMD_OLD_POWER:
    _COMMANDS[_code] = IdeChannel._cmd_nop
_COMMANDS[CMD_OLD_CHECK_POWER_MODE] = IdeChannel._cmd_check_power_mode
