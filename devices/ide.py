"""One IDE/ATA channel with up to two devices: hard disks and ATAPI CD-ROMs.

Register and command names follow ATA/ATAPI-6 (T13/1410D); the ATAPI packet
commands follow SPC and MMC (T10).  Where the specifications leave room,
behaviour follows QEMU's ``hw/ide/core.c`` and ``hw/ide/atapi.c``: register
writes reach both drives, a missing device 1 reads status 0, commands sent to
it are ignored, and out-of-order data port accesses read 0.

A device is a hard disk when given a :class:`~.block.BlockBackend` and an
ATAPI CD/DVD-ROM when given a :class:`CdRom`.  The CD answers ATA commands
only as a packet device does (IDENTIFY DEVICE aborts with the ATAPI
signature) and executes SCSI/MMC commands sent with PACKET.  Nothing ever
writes to a CD's image.

PIO is always available.  DMA (READ/WRITE DMA and ATAPI packets with the DMA
feature bit) needs a bus master attached with :meth:`IdeChannel.attach_bus_master`
(see ``bmdma.py``); without one, DMA commands abort as on an ISA controller.

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
from typing import TYPE_CHECKING, Any

from .base import Device, IrqLine
from .block import SECTOR_SIZE, BlockBackend, BlockImageError

if TYPE_CHECKING:
    from .bmdma import BusMasterChannel

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

# DMA commands (ATA/ATAPI-6 8.23, 8.24, 8.45, 8.46); they need a bus master.
CMD_READ_DMA = 0xC8
CMD_READ_DMA_NORETRY = 0xC9
CMD_READ_DMA_EXT = 0x25
CMD_WRITE_DMA = 0xCA
CMD_WRITE_DMA_NORETRY = 0xCB
CMD_WRITE_DMA_EXT = 0x35
# PACKET command feature set (ATA/ATAPI-6 8.7, 8.16, 8.17).
CMD_DEVICE_RESET = 0x08
CMD_PACKET = 0xA0
CMD_IDENTIFY_PACKET_DEVICE = 0xA1

# SET FEATURES subcommands that change IDENTIFY data.
FEAT_WRITE_CACHE_ENABLE = 0x02
FEAT_SET_TRANSFER_MODE = 0x03  # mode in the sector count register
FEAT_WRITE_CACHE_DISABLE = 0x82

# SET TRANSFER MODE values (ATA/ATAPI-6 table 44): mode class in bits 7:3.
XFER_PIO_DEFAULT = 0x00
XFER_PIO = 0x08  # | mode 0-4 ("flow control")
XFER_MWDMA = 0x20  # | mode 0-2
XFER_UDMA = 0x40  # | mode 0-5

MAX_MULT_SECTORS = 16  # IDENTIFY word 47; as QEMU
MODEL = "QEMU_LITE HARDDISK"
CD_MODEL = "QEMU_LITE DVD-ROM"
FIRMWARE_REVISION = "0.1.0"

# PACKET command: features register bits, interrupt reason (sector count register).
PKT_FEAT_DMA = 0x01
PKT_FEAT_OVL = 0x02
IR_COD = 0x01  # command (1) or data (0)
IR_IO = 0x02  # to the host (1) or to the device (0)
IR_REL = 0x04  # bus released (overlap; never set here)
ATAPI_PACKET_SIZE = 12
ATAPI_MAX_BYTE_COUNT = 0xFFFE  # largest even byte count of one DRQ block

# ATAPI signature in the cylinder registers (ATA/ATAPI-6 9.12).
ATAPI_SIGNATURE_LCYL = 0x14
ATAPI_SIGNATURE_HCYL = 0xEB

# IDENTIFY PACKET DEVICE word 0: ATAPI, CD-ROM, removable, DRQ within 50 us, 12-byte packets.
ATAPI_GENERAL_CONFIG = 0x85C0

# SCSI/MMC operation codes (SPC-2, MMC-3) understood by the CD.
SCSI_TEST_UNIT_READY = 0x00
SCSI_REQUEST_SENSE = 0x03
SCSI_INQUIRY = 0x12
SCSI_START_STOP_UNIT = 0x1B
SCSI_PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
SCSI_READ_CAPACITY = 0x25
SCSI_READ_10 = 0x28
SCSI_WRITE_10 = 0x2A
SCSI_WRITE_AND_VERIFY_10 = 0x2E
SCSI_READ_TOC = 0x43
SCSI_GET_CONFIGURATION = 0x46
SCSI_READ_DISC_INFORMATION = 0x51
SCSI_MODE_SENSE_10 = 0x5A
SCSI_READ_12 = 0xA8
SCSI_WRITE_12 = 0xAA

# Sense keys and additional sense codes (SPC-2 tables 107, 108).
SENSE_NONE = 0x0
SENSE_NOT_READY = 0x2
SENSE_MEDIUM_ERROR = 0x3
SENSE_ILLEGAL_REQUEST = 0x5
SENSE_UNIT_ATTENTION = 0x6
SENSE_DATA_PROTECT = 0x7
SENSE_ABORTED_COMMAND = 0xB
ASC_UNRECOVERED_READ_ERROR = 0x11
ASC_INVALID_OPCODE = 0x20
ASC_LBA_OUT_OF_RANGE = 0x21
ASC_INVALID_FIELD_IN_CDB = 0x24
ASC_WRITE_PROTECTED = 0x27
ASC_SAVING_PARAMETERS_NOT_SUPPORTED = 0x39
ASC_MEDIUM_NOT_PRESENT = 0x3A
ASC_MEDIUM_REMOVAL_PREVENTED = 0x53  # ASCQ 02h
ASC_DMA_ERROR = 0x44  # internal target failure: the bus master failed

# MMC constants.
CD_SECTOR_SIZE = 2048
CD_MAX_SECTORS = 80 * 60 * 75  # an 80-minute CD; larger media are DVDs
MODE_PAGE_ERROR_RECOVERY = 0x01
MODE_PAGE_CAPABILITIES = 0x2A
MODE_PAGE_ALL = 0x3F
PROFILE_NONE = 0x0000
PROFILE_CD_ROM = 0x0008
PROFILE_DVD_ROM = 0x0010
FEATURE_PROFILE_LIST = 0x0000
FEATURE_CORE = 0x0001
FEATURE_REMOVABLE_MEDIUM = 0x0003
FEATURE_RANDOM_READABLE = 0x0010
TOC_LEAD_OUT = 0xAA
TOC_ADR_CONTROL_DATA = 0x14  # ADR 1 (Q sub-channel position), control 4 (data track)

# Direction of the PIO transfer under way and what happens at the end of a block.
PIO_NONE, PIO_IN, PIO_OUT = 0, 1, 2  # PIO_IN: device to host (reads)
NEXT_STOP, NEXT_READ, NEXT_WRITE, NEXT_PACKET, NEXT_ATAPI_DATA = 0, 1, 2, 3, 4

# The DMA transfer a drive waits to run once the bus master is started.
DMA_NONE, DMA_READ, DMA_WRITE, DMA_ATAPI = 0, 1, 2, 3
DMA_CHUNK_SECTORS = 128  # sectors moved per step of a long DMA transfer

PIO_BUFFER_SIZE = 0x10000  # one ATAPI DRQ block of up to 0xFFFE bytes, padded

STATE_VERSION = 2


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


def be16(value: int) -> bytes:
    return (value & 0xFFFF).to_bytes(2, "big")


def be32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "big")


def lba_to_msf(lba: int) -> bytes:
    """A CD address as the 4-byte MSF field of READ TOC: 0, minute, second, frame."""
    lba += 150  # the 2-second pre-gap of track 1
    return bytes((0, lba // (75 * 60), (lba // 75) % 60, lba % 75))


class CdRom:
    """The medium of an ATAPI CD/DVD-ROM drive, in 2048-byte sectors.

    ``image`` is a read-only :class:`~.block.BlockBackend` of 512-byte sectors
    (four make one CD sector; a trailing partial CD sector is not addressable),
    or None for an empty drive.  A writable image is refused so that no write
    can ever reach it.
    """

    def __init__(self, image: BlockBackend | None = None) -> None:
        if image is not None and not image.readonly:
            raise ValueError("a CD-ROM image must be opened read-only")
        self.image = image

    @property
    def present(self) -> bool:
        """Whether a medium is loaded."""
        return self.image is not None

    @property
    def sector_count(self) -> int:
        """Capacity in 2048-byte sectors (0 when empty)."""
        return self.image.sector_count // 4 if self.image is not None else 0

    def read(self, lba: int, count: int) -> bytes:
        """``count`` 2048-byte sectors from CD sector ``lba``."""
        if self.image is None:
            raise BlockImageError("CD-ROM: no medium")
        return self.image.read(lba * 4, count * 4)


class _Drive:
    """One device on the channel: its task file registers and settings."""

    def __init__(self, medium: BlockBackend | CdRom | None, unit: int, serial: str) -> None:
        self.cd = medium if isinstance(medium, CdRom) else None
        self.block = None if isinstance(medium, CdRom) else medium
        self.unit = unit
        self.serial = serial
        self.nb_sectors = self.block.sector_count if self.block is not None else 0
        self.cylinders, self.heads, self.sectors = default_geometry(self.nb_sectors)
        self.power_on()

    @property
    def present(self) -> bool:
        return self.block is not None or self.cd is not None

    @property
    def is_atapi(self) -> bool:
        return self.cd is not None

    def power_on(self) -> None:
        """Power-on / hardware reset: default translation and settings, then a reset."""
        self.cur_heads = self.heads
        self.cur_sectors = self.sectors
        self.mult_sectors = MAX_MULT_SECTORS
        self.write_cache = True
        self.xfer_mode = XFER_PIO_DEFAULT
        self.locked = False  # PREVENT ALLOW MEDIUM REMOVAL
        self.reset()
        self.error = ERR_AMNF  # diagnostic code: passed

    def reset(self) -> None:
        """Task file after a reset: zeroed registers, the signature, and status
        DRDY|DSC for a disk but 00h for a packet device (ATA/ATAPI-6 9.12)."""
        self.feature = self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_nsector = self.hob_sector = 0
        self.hob_lcyl = self.hob_hcyl = 0
        self.select = DEV_OBSOLETE
        self.status = 0 if self.is_atapi else ST_DRDY | ST_DSC
        self.error = 0
        self.lba48 = False
        self.req_sectors = 1
        self.sense_key = self.asc = self.ascq = 0
        self.set_signature()

    def set_signature(self) -> None:
        """Device signature: sector count 1, LBA low 1, cylinder 0 for ATA,
        EB14h for ATAPI, FFFFh if absent."""
        self.select &= ~DEV_HEAD
        self.nsector = 1
        self.sector = 1
        if self.is_atapi:
            self.lcyl, self.hcyl = ATAPI_SIGNATURE_LCYL, ATAPI_SIGNATURE_HCYL
        else:
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

    def _dma_words(self, w: list[int]) -> None:
        """IDENTIFY words 49, 53, 63 and 88 of a device behind a bus master:
        multiword DMA 0-2 and Ultra DMA 0-5 supported, the mode SET FEATURES chose."""
        w[49] |= 1 << 8  # DMA supported
        w[53] |= 0x0004  # word 88 valid
        w[63] = 0x0007
        w[88] = 0x003F
        if self.xfer_mode & 0xF8 == XFER_MWDMA:
            w[63] |= 0x0100 << (self.xfer_mode & 7)
        elif self.xfer_mode & 0xF8 == XFER_UDMA:
            w[88] |= 0x0100 << (self.xfer_mode & 7)

    def identify(self, dma: bool = False) -> bytes:
        """The 512-byte IDENTIFY DEVICE data (ATA/ATAPI-6 table 27).

        ``dma``: the channel has a bus master, so report the DMA modes."""
        w = [0] * 256
        n = self.nb_sectors
        w[0] = 0x0040  # fixed disk
        w[1], w[3], w[6] = self.cylinders, self.heads, self.sectors
        w[47] = 0x8000 | MAX_MULT_SECTORS
        w[48] = 0x0001  # 32-bit data port accesses (ATA-1 "doubleword I/O")
        w[49] = 1 << 9  # LBA supported
        w[51] = 0x0200  # PIO data transfer cycle timing mode (obsolete)
        w[53] = 0x0003  # words 54-58 and 64-70 valid
        if dma:
            self._dma_words(w)
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

    def identify_packet(self, dma: bool = False) -> bytes:
        """The 512-byte IDENTIFY PACKET DEVICE data (ATA/ATAPI-6 table 29)."""
        w = [0] * 256
        w[0] = ATAPI_GENERAL_CONFIG
        w[49] = 1 << 9  # LBA supported (shall be one)
        w[53] = 0x0002  # words 64-70 valid
        w[64] = 0x0003  # PIO modes 3 and 4
        w[65] = w[66] = w[67] = w[68] = 120  # cycle times, ns
        w[71] = w[72] = 30  # PACKET-to-bus-release and SERVICE-to-bus-release times, us
        w[80] = 0x007E  # ATA/ATAPI-1 .. -6
        w[82] = (1 << 14) | (1 << 4)  # NOP, PACKET command feature set
        w[83] = 1 << 14
        w[84] = 1 << 14
        w[85] = 1 << 4  # PACKET command feature set enabled
        w[87] = 1 << 14
        w[93] = (1 << 14) | (1 << 13) | 1  # hardware reset result, cable detected
        if dma:
            self._dma_words(w)
        data = bytearray(b"".join(v.to_bytes(2, "little") for v in w))
        data[20:40] = ata_string(self.serial, 20)
        data[46:54] = ata_string(FIRMWARE_REVISION, 8)
        data[54:94] = ata_string(CD_MODEL, 40)
        return bytes(data)

    def set_sense(self, key: int, asc: int = 0, ascq: int = 0) -> None:
        self.sense_key, self.asc, self.ascq = key, asc, ascq

    _SAVED = (
        "feature", "nsector", "sector", "lcyl", "hcyl", "hob_feature", "hob_nsector",
        "hob_sector", "hob_lcyl", "hob_hcyl", "select", "status", "error", "lba48",
        "req_sectors", "cur_heads", "cur_sectors", "mult_sectors", "write_cache",
    )
    _SAVED_V2 = ("xfer_mode", "locked", "sense_key", "asc", "ascq")

    def save_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._SAVED + self._SAVED_V2}

    def load_state(self, state: dict[str, Any]) -> None:
        for name in self._SAVED:
            setattr(self, name, type(getattr(self, name))(state[name]))
        for name in self._SAVED_V2:  # absent from version 1 states: keep the defaults
            if name in state:
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


IdeMedium = BlockBackend | CdRom
"""What a device on the channel is: a hard disk's image, or a :class:`CdRom`."""


class IdeChannel:
    """An ATA channel: device 0 (``master``) and device 1 (``slave``), one IRQ line.

    Wire ``command_block`` and ``control_block`` to the bus and ``irq`` to
    IRQ 14 (primary) or 15 (secondary).  ``serial_base`` numbers the drives'
    serial numbers (QM00001.. as QEMU; use 3 for a secondary channel).
    ``master`` / ``slave`` are a disk image, a :class:`CdRom`, or None.
    """

    def __init__(
        self,
        irq: IrqLine | None,
        master: IdeMedium | None = None,
        slave: IdeMedium | None = None,
        *,
        serial_base: int = 1,
    ) -> None:
        self.irq = irq
        self.drives = (
            _Drive(master, 0, f"QM{serial_base:05d}"),
            _Drive(slave, 1, f"QM{serial_base + 1:05d}"),
        )
        self.bus_master: BusMasterChannel | None = None
        self.pio_buffer = bytearray(PIO_BUFFER_SIZE)
        self.pio_pos = 0
        self.pio_end = 0
        self.command_block = IdeCommandBlock(self)
        self.control_block = IdeControlBlock(self)
        self.reset()

    def attach_bus_master(self, bus_master: BusMasterChannel) -> None:
        """Give the channel a DMA engine (PCI bus-master IDE): DMA commands then work."""
        self.bus_master = bus_master
        bus_master.ide = self

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
        self._reset_transfer_state()
        for drive in self.drives:
            drive.power_on()
        self._update_irq()

    def _reset_transfer_state(self) -> None:
        """No DMA pending and no ATAPI data phase."""
        self.dma_op = DMA_NONE
        self.atapi_dma = False  # the PACKET command asked for DMA
        self.atapi_limit = ATAPI_MAX_BYTE_COUNT  # byte count limit of a DRQ block
        self.atapi_lba = -1  # first CD sector of a READ, or -1: the reply is atapi_reply
        self.atapi_reply = b""
        self.atapi_pos = 0  # bytes of the data phase already handed to the host
        self.atapi_total = 0  # bytes of the whole data phase

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
        if direction == PIO_OUT:
            # The guest fills it; nothing of an earlier transfer may stay (it is not saved
            # past pio_end, so a restored channel would differ until each byte is written).
            self.pio_buffer[:size] = bytes(size)
        self.pio_dir = direction
        self.pio_next = next_step
        self.pio_pos = 0
        self.pio_end = size
        drive.status |= ST_DRQ

    def _halt_transfer(self) -> None:
        self.pio_dir = PIO_NONE
        self.pio_next = NEXT_STOP
        self.pio_pos = self.pio_end = 0
        self.dma_op = DMA_NONE
        for drive in self.drives:
            drive.status &= ~ST_DRQ

    def _end_of_block(self, drive: _Drive) -> None:
        drive.status &= ~ST_DRQ
        if self.pio_next == NEXT_READ:
            self._sector_read(drive)
        elif self.pio_next == NEXT_WRITE:
            self._sector_write(drive)
        elif self.pio_next == NEXT_PACKET:
            self._atapi_packet(drive)
        elif self.pio_next == NEXT_ATAPI_DATA:
            self._atapi_next_block(drive)
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
        if command == CMD_DEVICE_RESET and drive.is_atapi:
            self._cmd_device_reset(drive)  # accepted even while busy
            return
        if drive.status & (ST_BSY | ST_DRQ):
            self._update_irq()
            return  # only DEVICE RESET (to a packet device) is allowed now
        if command == CMD_EXECUTE_DEVICE_DIAGNOSTIC:
            self._cmd_diagnostic(drive, command)
            return
        if drive.unit == 1 and not drive.present:
            self._update_irq()
            return  # commands to a missing device 1 are ignored
        handler = (_ATAPI_COMMANDS if drive.is_atapi else _COMMANDS).get(command)
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
            each.status = 0 if each.is_atapi else ST_DRDY | ST_DSC
            each.error = ERR_AMNF  # device 0 passed, device 1 passed or absent
        self._set_irq()

    def _cmd_device_reset(self, drive: _Drive) -> None:
        """DEVICE RESET: stop what the packet device does; signature, status 00h, no interrupt."""
        self._halt_transfer()
        self._reset_transfer_state()
        drive.reset()
        drive.error = ERR_AMNF
        self._update_irq()

    def _cmd_identify(self, drive: _Drive, command: int) -> None:
        self.pio_buffer[:SECTOR_SIZE] = drive.identify(self.bus_master is not None)
        drive.status = ST_DRDY | ST_DSC
        self._start_transfer(drive, PIO_IN, SECTOR_SIZE, NEXT_STOP)
        self._set_irq()

    def _cmd_identify_atapi(self, drive: _Drive, command: int) -> None:
        """IDENTIFY DEVICE to a packet device aborts and leaves the signature to read."""
        drive.set_signature()
        self._abort(drive)

    def _cmd_identify_packet(self, drive: _Drive, command: int) -> None:
        self.pio_buffer[:SECTOR_SIZE] = drive.identify_packet(self.bus_master is not None)
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
        if drive.feature == FEAT_SET_TRANSFER_MODE:
            mode = drive.nsector & 0xFF
            kind, number = mode & 0xF8, mode & 7
            dma = self.bus_master is not None
            if not (
                mode in (XFER_PIO_DEFAULT, XFER_PIO_DEFAULT | 1)
                or (kind == XFER_PIO and number <= 4)
                or (kind == XFER_MWDMA and number <= 2 and dma)
                or (kind == XFER_UDMA and number <= 5 and dma)
            ):
                self._abort(drive)
                return
            drive.xfer_mode = mode
        elif drive.is_atapi:
            pass  # nothing else changes a CD's behaviour
        elif drive.feature == FEAT_WRITE_CACHE_ENABLE:
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

    # -- DMA (bus master) -----------------------------------------------------

    def _cmd_dma(self, drive: _Drive, command: int) -> None:
        """READ DMA / WRITE DMA (EXT): latch the command, then move the data as soon
        as the bus master is started (it may already be)."""
        write = command in (CMD_WRITE_DMA, CMD_WRITE_DMA_NORETRY, CMD_WRITE_DMA_EXT)
        assert drive.block is not None
        if self.bus_master is None or (write and drive.block.readonly):
            self._abort(drive)
            return
        if self._start_data_command(drive, command) < 0:
            return
        drive.status = ST_DRDY | ST_DSC | ST_DRQ
        self.dma_op = DMA_WRITE if write else DMA_READ
        self.dma_ready()

    def dma_ready(self) -> None:
        """Run the pending DMA transfer if the bus master is started.

        Called by the drive when it gets a DMA command and by the bus master
        when its start bit is set.  The whole transfer happens now: the
        completion interrupt is raised before this returns."""
        bm = self.bus_master
        if bm is None or self.dma_op == DMA_NONE or not bm.running:
            return
        op, self.dma_op = self.dma_op, DMA_NONE
        drive = self.selected
        if op == DMA_ATAPI:
            self._atapi_dma(drive, bm)
        else:
            self._disk_dma(drive, bm, op == DMA_WRITE)

    def _disk_dma(self, drive: _Drive, bm: BusMasterChannel, write: bool) -> None:
        block = drive.block
        assert block is not None
        lba = drive.get_sector()
        while drive.nsector:
            count = min(drive.nsector, DMA_CHUNK_SECTORS)
            size = count * SECTOR_SIZE
            try:
                if write:
                    data = bm.gather(size)
                    done = len(data) // SECTOR_SIZE * SECTOR_SIZE
                    if done:
                        block.write(lba, data[:done])
                else:
                    done = bm.scatter(block.read(lba, count))
            except (BlockImageError, OSError):
                self._abort(drive)
                bm.complete()
                return
            lba += done // SECTOR_SIZE
            drive.nsector -= done // SECTOR_SIZE
            drive.set_sector(lba)
            if done < size:
                self._dma_stopped_short(drive, bm)
                return
        drive.status = ST_DRDY | ST_DSC
        self._set_irq()
        bm.complete()

    def _dma_stopped_short(self, drive: _Drive, bm: BusMasterChannel) -> None:
        """The bus master could not move all the data: a memory error (the drive
        aborts and interrupts), or a PRD table shorter than the transfer (as
        QEMU: the drive goes idle, the bus master stops, and nobody interrupts)."""
        if bm.failed:
            if drive.is_atapi:
                self._atapi_error(drive, SENSE_ABORTED_COMMAND, ASC_DMA_ERROR)
            else:
                self._abort(drive)
            bm.complete()
        else:
            self._halt_transfer()
            drive.status = ST_DRDY | ST_DSC
            bm.underrun()

    def _atapi_dma(self, drive: _Drive, bm: BusMasterChannel) -> None:
        while self.atapi_pos < self.atapi_total:
            size = min(self.atapi_total - self.atapi_pos, DMA_CHUNK_SECTORS * SECTOR_SIZE)
            data = self._atapi_fetch(drive, size)
            if data is None:
                bm.complete()
                return
            done = bm.scatter(data)
            self.atapi_pos += done
            if done < size:
                self._dma_stopped_short(drive, bm)
                return
        self._atapi_ok(drive)
        bm.complete()

    # -- ATAPI: the PACKET protocol ---------------------------------------------

    def _cmd_packet(self, drive: _Drive, command: int) -> None:
        """PACKET: latch DMA and the byte count limit, then ask for the 12 command bytes
        (DRQ with CoD=1, IO=0, and no interrupt: IDENTIFY PACKET word 0 bits 6:5 = 10b)."""
        dma = bool(drive.feature & PKT_FEAT_DMA)
        if drive.feature & PKT_FEAT_OVL or (dma and self.bus_master is None):
            self._abort(drive)
            return
        self._reset_transfer_state()
        self.atapi_dma = dma
        limit = drive.lcyl | (drive.hcyl << 8)
        self.atapi_limit = ATAPI_MAX_BYTE_COUNT if limit in (0, 0xFFFF) else limit
        drive.nsector = IR_COD
        drive.status = ST_DRDY | ST_DSC
        self._start_transfer(drive, PIO_OUT, ATAPI_PACKET_SIZE, NEXT_PACKET)

    def _atapi_packet(self, drive: _Drive) -> None:
        """The 12 command bytes are in: execute the SCSI/MMC command."""
        packet = bytes(self.pio_buffer[:ATAPI_PACKET_SIZE])
        self.pio_dir = PIO_NONE
        self.pio_next = NEXT_STOP
        self.pio_pos = self.pio_end = 0
        drive.status = ST_DRDY | ST_BSY
        handler = _PACKET_COMMANDS.get(packet[0])
        if handler is None:
            self._atapi_error(drive, SENSE_ILLEGAL_REQUEST, ASC_INVALID_OPCODE)
            return
        if packet[0] in _NEEDS_MEDIUM and not self._medium_ready(drive):
            return
        handler(self, drive, packet)

    def _medium_ready(self, drive: _Drive) -> bool:
        assert drive.cd is not None
        if not drive.cd.present:
            self._atapi_error(drive, SENSE_NOT_READY, ASC_MEDIUM_NOT_PRESENT)
            return False
        return True

    def _atapi_ok(self, drive: _Drive) -> None:
        """Command completion: status DRDY, interrupt reason CoD|IO, INTRQ."""
        self._halt_transfer()
        drive.status = ST_DRDY | ST_DSC
        drive.error = 0
        drive.nsector = IR_COD | IR_IO
        self._set_irq()

    def _atapi_error(self, drive: _Drive, key: int, asc: int, ascq: int = 0) -> None:
        """CHECK CONDITION: status ERR, sense key in error bits 7:4, sense data kept
        for REQUEST SENSE, interrupt reason CoD|IO, INTRQ."""
        self._halt_transfer()
        drive.set_sense(key, asc, ascq)
        drive.status = ST_DRDY | ST_ERR
        drive.error = (key << 4) | (ERR_ABRT if key == SENSE_ILLEGAL_REQUEST else 0)
        drive.nsector = IR_COD | IR_IO
        self._set_irq()

    def _atapi_reply(self, drive: _Drive, data: bytes, allocation_length: int) -> None:
        """Send ``data`` (cut to the allocation length) in the data-in phase."""
        self.atapi_lba = -1
        self.atapi_reply = bytes(data[:allocation_length])
        self._atapi_data_in(drive, len(self.atapi_reply))

    def _atapi_read(self, drive: _Drive, lba: int, count: int) -> None:
        assert drive.cd is not None
        if lba + count > drive.cd.sector_count:
            self._atapi_error(drive, SENSE_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
            return
        self.atapi_lba = lba
        self.atapi_reply = b""
        self._atapi_data_in(drive, count * CD_SECTOR_SIZE)

    def _atapi_data_in(self, drive: _Drive, total: int) -> None:
        self.atapi_pos = 0
        self.atapi_total = total
        if total == 0:
            self._atapi_ok(drive)
        elif self.atapi_dma:
            drive.status = ST_DRDY | ST_DSC | ST_DRQ
            self.dma_op = DMA_ATAPI
            self.dma_ready()
        else:
            self._atapi_next_block(drive)

    def _atapi_fetch(self, drive: _Drive, size: int) -> bytes | None:
        """The next ``size`` bytes of the data phase, or None after reporting a read error."""
        pos = self.atapi_pos
        if self.atapi_lba < 0:
            return self.atapi_reply[pos:pos + size]
        assert drive.cd is not None
        first = pos // CD_SECTOR_SIZE
        last = (pos + size - 1) // CD_SECTOR_SIZE
        try:
            data = drive.cd.read(self.atapi_lba + first, last - first + 1)
        except (BlockImageError, OSError):
            self._atapi_error(drive, SENSE_MEDIUM_ERROR, ASC_UNRECOVERED_READ_ERROR)
            return None
        start = pos - first * CD_SECTOR_SIZE
        return data[start:start + size]

    def _atapi_next_block(self, drive: _Drive) -> None:
        """Offer the next DRQ block of a PIO data-in phase, or complete the command.

        A block is at most the byte count limit the host wrote before PACKET
        (made even when the block is not the last); its length goes to the
        cylinder registers, the interrupt reason says data to the host, and
        INTRQ is raised for every block.  An odd last block is padded to a word.
        """
        remaining = self.atapi_total - self.atapi_pos
        if remaining <= 0:
            self._atapi_ok(drive)
            return
        size = remaining
        if size > self.atapi_limit:
            size = max(2, self.atapi_limit & ~1)
        data = self._atapi_fetch(drive, size)
        if data is None:
            return
        padded = size + (size & 1)
        self.pio_buffer[:size] = data
        self.pio_buffer[size:padded] = bytes(padded - size)
        self.atapi_pos += size
        drive.lcyl, drive.hcyl = size & 0xFF, size >> 8
        drive.nsector = IR_IO
        drive.status = ST_DRDY | ST_DSC
        self._start_transfer(drive, PIO_IN, padded, NEXT_ATAPI_DATA)
        self._set_irq()

    # -- ATAPI: SCSI/MMC commands -------------------------------------------------

    def _scsi_test_unit_ready(self, drive: _Drive, packet: bytes) -> None:
        self._atapi_ok(drive)

    def _scsi_request_sense(self, drive: _Drive, packet: bytes) -> None:
        """Fixed-format sense data (SPC-2 7.23.2); reporting it clears it."""
        data = bytearray(18)
        data[0] = 0x70  # current error, fixed format
        data[2] = drive.sense_key
        data[7] = 10  # additional sense length
        data[12], data[13] = drive.asc, drive.ascq
        drive.set_sense(SENSE_NONE)
        self._atapi_reply(drive, bytes(data), packet[4])

    def _scsi_inquiry(self, drive: _Drive, packet: bytes) -> None:
        """Standard INQUIRY data (SPC-2 7.3.2); vital product data pages are not kept."""
        if packet[1] & 0x01 or packet[2]:
            self._atapi_error(drive, SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB)
            return
        data = bytearray(36)
        data[0] = 0x05  # peripheral device type: CD/DVD device
        data[1] = 0x80  # removable medium
        data[2] = 0x00  # no claim to an ANSI version, as ATAPI drives
        data[3] = 0x21  # ATAPI version 2, response data format 1
        data[4] = len(data) - 5  # additional length
        data[8:16] = b"QEMU    "
        data[16:32] = b"QEMU_LITE DVD   "
        data[32:36] = FIRMWARE_REVISION.encode("ascii")[:4].ljust(4)
        self._atapi_reply(drive, bytes(data), int.from_bytes(packet[3:5], "big"))

    def _capabilities_page(self, drive: _Drive) -> bytes:
        """Mode page 2Ah, CD/DVD capabilities and mechanical status (SFF-8020 / MMC)."""
        page = bytearray(20)
        page[0] = MODE_PAGE_CAPABILITIES
        page[1] = len(page) - 2
        page[2] = 0x0B  # reads CD-R, CD-RW and DVD-ROM media
        page[3] = 0x00  # writes nothing
        page[4] = 0x70  # mode 2 form 1 and form 2, multi-session
        page[5] = 0x00
        page[6] = 0x29 | (0x02 if drive.locked else 0)  # tray, eject, lock (+ locked now)
        page[8:10] = be16(4234)  # maximum read speed, kB/s (24x)
        page[10:12] = be16(256)  # volume levels
        page[12:14] = be16(512)  # buffer size, KiB
        page[14:16] = be16(4234)  # current read speed
        return bytes(page)

    def _scsi_mode_sense(self, drive: _Drive, packet: bytes) -> None:
        """MODE SENSE(10): the read error recovery page and the capabilities page."""
        control, code = packet[2] >> 6, packet[2] & 0x3F
        if control == 3:
            self._atapi_error(drive, SENSE_ILLEGAL_REQUEST, ASC_SAVING_PARAMETERS_NOT_SUPPORTED)
            return
        pages = {
            MODE_PAGE_ERROR_RECOVERY: bytes((MODE_PAGE_ERROR_RECOVERY, 6, 0, 5, 0, 0, 0, 0)),
            MODE_PAGE_CAPABILITIES: self._capabilities_page(drive),
        }
        if code == MODE_PAGE_ALL:
            chosen = list(pages.values())
        elif code in pages:
            chosen = [pages[code]]
        else:
            self._atapi_error(drive, SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB)
            return
        if control == 1:  # changeable values: none are
            chosen = [page[:2] + bytes(len(page) - 2) for page in chosen]
        body = b"".join(chosen)
        header = bytearray(8)  # no block descriptors
        header[0:2] = be16(len(header) + len(body) - 2)
        header[2] = 0x70 if not (drive.cd and drive.cd.present) else 0x00  # medium type
        self._atapi_reply(drive, bytes(header) + body, int.from_bytes(packet[7:9], "big"))

    def _scsi_read_capacity(self, drive: _Drive, packet: bytes) -> None:
        assert drive.cd is not None
        data = be32(drive.cd.sector_count - 1) + be32(CD_SECTOR_SIZE)
        self._atapi_reply(drive, data, len(data))

    def _scsi_read_10(self, drive: _Drive, packet: bytes) -> None:
        lba = int.from_bytes(packet[2:6], "big")
        self._atapi_read(drive, lba, int.from_bytes(packet[7:9], "big"))

    def _scsi_read_12(self, drive: _Drive, packet: bytes) -> None:
        lba = int.from_bytes(packet[2:6], "big")
        self._atapi_read(drive, lba, int.from_bytes(packet[6:10], "big"))

    def _scsi_write(self, drive: _Drive, packet: bytes) -> None:
        """Any write command: the medium is read-only; no data phase is entered."""
        self._atapi_error(drive, SENSE_DATA_PROTECT, ASC_WRITE_PROTECTED)

    def _scsi_start_stop_unit(self, drive: _Drive, packet: bytes) -> None:
        """Spinning up or down does nothing; an eject fails while removal is prevented.
        The tray is not modelled: an allowed eject leaves the medium in."""
        load_eject, start = packet[4] & 0x02, packet[4] & 0x01
        if load_eject and not start and drive.locked:
            self._atapi_error(drive, SENSE_ILLEGAL_REQUEST, ASC_MEDIUM_REMOVAL_PREVENTED, 0x02)
            return
        self._atapi_ok(drive)

    def _scsi_prevent_allow(self, drive: _Drive, packet: bytes) -> None:
        drive.locked = bool(packet[4] & 0x01)
        self._atapi_ok(drive)

    def _scsi_read_toc(self, drive: _Drive, packet: bytes) -> None:
        """READ TOC/PMA/ATIP formats 0 (TOC) and 1 (session information):
        one data track starting at LBA 0, and the lead-out."""
        assert drive.cd is not None
        msf = bool(packet[1] & 0x02)
        fmt = packet[2] & 0x0F or packet[9] >> 6  # MMC, or SFF-8020's format field
        start_track = packet[6]
        allocation = int.from_bytes(packet[7:9], "big")

        def address(lba: int) -> bytes:
            return lba_to_msf(lba) if msf else be32(lba)

        if fmt == 0:
            if start_track > 1 and start_track != TOC_LEAD_OUT:
                self._atapi_error(drive, SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB)
                return
            body = b""
            if start_track <= 1:
                body += bytes((0, TOC_ADR_CONTROL_DATA, 1, 0)) + address(0)
            body += bytes((0, TOC_ADR_CONTROL_DATA, TOC_LEAD_OUT, 0))
            body += address(drive.cd.sector_count)
        elif fmt == 1:
            body = bytes((0, TOC_ADR_CONTROL_DATA, 1, 0)) + address(0)
        else:
            self._atapi_error(drive, SENSE_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB)
            return
        data = be16(len(body) + 2) + bytes((1, 1)) + body  # first and last track/session 1
        self._atapi_reply(drive, data, allocation)

    def _scsi_get_configuration(self, drive: _Drive, packet: bytes) -> None:
        """GET CONFIGURATION (MMC-3 6.6): profile list, core, removable medium and
        random readable features; the current profile is CD-ROM or DVD-ROM by size."""
        assert drive.cd is not None
        request_type = packet[1] & 0x03
        first = int.from_bytes(packet[2:4], "big")
        allocation = int.from_bytes(packet[7:9], "big")
        sectors = drive.cd.sector_count
        dvd = sectors > CD_MAX_SECTORS
        if not drive.cd.present:
            current = PROFILE_NONE
        else:
            current = PROFILE_DVD_ROM if dvd else PROFILE_CD_ROM
        profiles = b"".join(
            be16(p) + bytes((int(p == current), 0)) for p in (PROFILE_DVD_ROM, PROFILE_CD_ROM)
        )
        features = [
            (FEATURE_PROFILE_LIST, True, profiles),
            (FEATURE_CORE, True, be32(2) + bytes(4)),  # physical interface: ATAPI
            (FEATURE_REMOVABLE_MEDIUM, True, bytes((0x29, 0, 0, 0))),  # tray, eject, lock
            (FEATURE_RANDOM_READABLE, drive.cd.present,
             be32(CD_SECTOR_SIZE) + be16(16 if dvd else 1) + bytes(2)),
        ]
        body = b""
        for code, is_current, data in features:
            if code < first or (request_type == 2 and code != first):
                continue
            if request_type == 1 and not is_current:
                continue
            persistent = 0x02 if code in (FEATURE_PROFILE_LIST, FEATURE_CORE) else 0
            body += be16(code) + bytes((persistent | int(is_current), len(data))) + data
        header = be32(len(body) + 4) + bytes(2) + be16(current)
        self._atapi_reply(drive, header + body, allocation)

    # -- saved state --------------------------------------------------------

    _SAVED_TRANSFER = (
        "dma_op", "atapi_dma", "atapi_limit", "atapi_lba", "atapi_reply", "atapi_pos",
        "atapi_total",
    )

    def save_state(self) -> dict[str, Any]:
        """Registers, settings and any transfer under way (not the media, not the
        bus master: save that with its PCI function)."""
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
            **{name: getattr(self, name) for name in self._SAVED_TRANSFER},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`save_state` returned (version 1 states too);
        raise ValueError if it does not fit."""
        if state.get("version") not in (1, STATE_VERSION):
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
        self._reset_transfer_state()
        for name in self._SAVED_TRANSFER:
            if name in state:
                setattr(self, name, type(getattr(self, name))(state[name]))
        self._update_irq()


_Handler = Callable[[IdeChannel, _Drive, int], None]

_LBA48_COMMANDS = frozenset({
    CMD_READ_SECTORS_EXT, CMD_READ_MULTIPLE_EXT, CMD_WRITE_SECTORS_EXT,
    CMD_WRITE_MULTIPLE_EXT, CMD_READ_VERIFY_SECTORS_EXT, CMD_READ_DMA_EXT, CMD_WRITE_DMA_EXT,
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
    CMD_READ_DMA: IdeChannel._cmd_dma,
    CMD_READ_DMA_NORETRY: IdeChannel._cmd_dma,
    CMD_READ_DMA_EXT: IdeChannel._cmd_dma,
    CMD_WRITE_DMA: IdeChannel._cmd_dma,
    CMD_WRITE_DMA_NORETRY: IdeChannel._cmd_dma,
    CMD_WRITE_DMA_EXT: IdeChannel._cmd_dma,
}
for _code in CMD_OLD_POWER:
    _COMMANDS[_code] = IdeChannel._cmd_nop
_COMMANDS[CMD_OLD_CHECK_POWER_MODE] = IdeChannel._cmd_check_power_mode

# The ATA commands a packet device accepts (ATA/ATAPI-6 table B.2, PACKET feature set);
# anything else aborts.  DEVICE RESET and EXECUTE DEVICE DIAGNOSTIC are handled
# in IdeChannel.execute.
_ATAPI_COMMANDS: dict[int, _Handler] = {
    CMD_PACKET: IdeChannel._cmd_packet,
    CMD_IDENTIFY_PACKET_DEVICE: IdeChannel._cmd_identify_packet,
    CMD_IDENTIFY_DEVICE: IdeChannel._cmd_identify_atapi,
    CMD_SET_FEATURES: IdeChannel._cmd_set_features,
    CMD_CHECK_POWER_MODE: IdeChannel._cmd_check_power_mode,
    CMD_STANDBY_IMMEDIATE: IdeChannel._cmd_nop,
    CMD_IDLE_IMMEDIATE: IdeChannel._cmd_nop,
    CMD_SLEEP: IdeChannel._cmd_nop,
}

_PacketHandler = Callable[[IdeChannel, _Drive, bytes], None]

# The SCSI/MMC commands of the CD; anything else is CHECK CONDITION, ILLEGAL
# REQUEST, invalid operation code (READ DISC INFORMATION among them).
_PACKET_COMMANDS: dict[int, _PacketHandler] = {
    SCSI_TEST_UNIT_READY: IdeChannel._scsi_test_unit_ready,
    SCSI_REQUEST_SENSE: IdeChannel._scsi_request_sense,
    SCSI_INQUIRY: IdeChannel._scsi_inquiry,
    SCSI_START_STOP_UNIT: IdeChannel._scsi_start_stop_unit,
    SCSI_PREVENT_ALLOW_MEDIUM_REMOVAL: IdeChannel._scsi_prevent_allow,
    SCSI_READ_CAPACITY: IdeChannel._scsi_read_capacity,
    SCSI_READ_10: IdeChannel._scsi_read_10,
    SCSI_READ_12: IdeChannel._scsi_read_12,
    SCSI_WRITE_10: IdeChannel._scsi_write,
    SCSI_WRITE_12: IdeChannel._scsi_write,
    SCSI_WRITE_AND_VERIFY_10: IdeChannel._scsi_write,
    SCSI_READ_TOC: IdeChannel._scsi_read_toc,
    SCSI_GET_CONFIGURATION: IdeChannel._scsi_get_configuration,
    SCSI_MODE_SENSE_10: IdeChannel._scsi_mode_sense,
}

# Commands that report NOT READY, MEDIUM NOT PRESENT from an empty drive.
_NEEDS_MEDIUM = frozenset({
    SCSI_TEST_UNIT_READY, SCSI_READ_CAPACITY, SCSI_READ_10, SCSI_READ_12, SCSI_READ_TOC,
})
