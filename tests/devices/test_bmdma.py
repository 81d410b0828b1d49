"""Bus-master IDE DMA through the PIIX IDE function: PRD tables in a fake guest memory."""

from __future__ import annotations

import os

import pytest

from qemu_lite.devices.base import IrqLine, RecordingIrqSink
from qemu_lite.devices.block import SECTOR_SIZE, BlockBackend, BlockImage
from qemu_lite.devices.bmdma import (
    BM_CMD_START,
    BM_CMD_WRITE_MEMORY,
    BM_ST_ACTIVE,
    BM_ST_DRIVE0_DMA,
    BM_ST_ERROR,
    BM_ST_INTERRUPT,
    PRD_EOT,
    PiixIde,
)
from qemu_lite.devices.ide import (
    CMD_IDENTIFY_DEVICE,
    CMD_IDENTIFY_PACKET_DEVICE,
    CMD_PACKET,
    CMD_READ_DMA,
    CMD_READ_DMA_EXT,
    CMD_READ_SECTORS,
    CMD_SET_FEATURES,
    CMD_WRITE_DMA,
    CMD_WRITE_DMA_EXT,
    DEV_LBA,
    ERR_ABRT,
    IR_COD,
    IR_IO,
    REG_DATA,
    REG_DEVICE,
    REG_ERROR,
    REG_FEATURES,
    REG_LBA_HIGH,
    REG_LBA_LOW,
    REG_LBA_MID,
    REG_SECTOR_COUNT,
    REG_STATUS,
    ST_DRDY,
    ST_DRQ,
    ST_DSC,
    ST_ERR,
    CdRom,
    IdeChannel,
    IdeMedium,
)

READY = ST_DRDY | ST_DSC
BASE = 0xC000  # where firmware put BAR4


def sector_pattern(lba: int) -> bytes:
    head = lba.to_bytes(8, "little")
    return head + bytes((lba * 7 + i) & 0xFF for i in range(SECTOR_SIZE - 8))


class FakeMemory:
    """Guest physical memory: a bytearray; addresses beyond it raise ValueError."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.ram = bytearray(size)
        self.writes: list[tuple[int, int]] = []

    def read(self, paddr: int, n: int) -> bytes:
        if paddr + n > len(self.ram):
            raise ValueError(f"no memory at {paddr:#x}")
        return bytes(self.ram[paddr:paddr + n])

    def write(self, paddr: int, data: bytes) -> None:
        if paddr + len(data) > len(self.ram):
            raise ValueError(f"no memory at {paddr:#x}")
        self.ram[paddr:paddr + len(data)] = data
        self.writes.append((paddr, len(data)))

    def prd_table(self, at: int, regions: list[tuple[int, int]]) -> None:
        """Build a PRD table at ``at``: (address, byte count) pairs, the last with EOT."""
        for i, (address, count) in enumerate(regions):
            flags = (count & 0xFFFF) | (PRD_EOT if i == len(regions) - 1 else 0)
            self.ram[at + 8 * i:at + 8 * i + 8] = address.to_bytes(4, "little") + \
                flags.to_bytes(4, "little")


class Machine:
    """One IDE channel behind a PIIX IDE function with its bus master block at BASE."""

    def __init__(self, master: IdeMedium | None, memory: FakeMemory | None = None) -> None:
        self.sink = RecordingIrqSink()
        self.irq = IrqLine(self.sink, 14)
        self.memory = memory if memory is not None else FakeMemory()
        self.channel = IdeChannel(self.irq, master)
        self.piix = PiixIde(self.memory, self.channel, bmdma_base=BASE)
        self.cmd = self.channel.command_block
        self.bm = self.piix.bmdma_ports  # claimed at BASE by the machine; offsets from BASE

    def outb(self, reg: int, value: int) -> None:
        self.cmd.io_write(reg, 1, value)

    def inb(self, reg: int) -> int:
        return self.cmd.io_read(reg, 1)

    def bm_status(self) -> int:
        return self.bm.io_read(2, 1)

    def setup(self, table: int, to_memory: bool) -> None:
        """What a driver does before the command: table pointer, direction, clear status."""
        self.bm.io_write(4, 4, table)
        self.bm.io_write(0, 1, BM_CMD_WRITE_MEMORY if to_memory else 0)
        self.bm.io_write(2, 1, BM_ST_INTERRUPT | BM_ST_ERROR)

    def start(self, to_memory: bool) -> None:
        self.bm.io_write(0, 1, BM_CMD_START | (BM_CMD_WRITE_MEMORY if to_memory else 0))

    def stop(self) -> None:
        self.bm.io_write(0, 1, 0)

    def lba28(self, command: int, lba: int, count: int) -> None:
        self.outb(REG_DEVICE, 0xA0 | DEV_LBA | (lba >> 24) & 0xF)
        self.outb(REG_SECTOR_COUNT, count & 0xFF)
        self.outb(REG_LBA_LOW, lba & 0xFF)
        self.outb(REG_LBA_MID, (lba >> 8) & 0xFF)
        self.outb(REG_LBA_HIGH, (lba >> 16) & 0xFF)
        self.outb(REG_STATUS, command)

    def lba48(self, command: int, lba: int, count: int) -> None:
        self.outb(REG_DEVICE, 0xA0 | DEV_LBA)
        for shift in (8, 0):
            self.outb(REG_SECTOR_COUNT, (count >> shift) & 0xFF)
            self.outb(REG_LBA_LOW, (lba >> (24 if shift else 0)) & 0xFF)
            self.outb(REG_LBA_MID, (lba >> (32 if shift else 8)) & 0xFF)
            self.outb(REG_LBA_HIGH, (lba >> (40 if shift else 16)) & 0xFF)
        self.outb(REG_STATUS, command)


def Disk(sectors: int = 4096) -> BlockImage:  # noqa: N802 - reads as a constructor
    """A writable in-memory disk of sector_pattern() sectors."""
    return BlockImage.from_bytes(b"".join(sector_pattern(n) for n in range(sectors)))


# -- hard disk DMA -------------------------------------------------------------------


def test_read_dma_with_a_two_entry_prd_table() -> None:
    m = Machine(Disk())
    m.memory.prd_table(0x800, [(0x10000, 1024), (0x30000, 512)])
    m.setup(0x800, to_memory=True)
    m.lba28(CMD_READ_DMA, 100, 3)
    assert m.channel.selected.status == READY | ST_DRQ  # waiting for the bus master
    assert not m.irq.level and not m.memory.writes
    m.start(to_memory=True)
    assert m.irq.level  # completion interrupt
    assert m.bm_status() & (BM_ST_INTERRUPT | BM_ST_ACTIVE | BM_ST_ERROR) == BM_ST_INTERRUPT
    m.stop()
    assert m.inb(REG_STATUS) == READY
    assert not m.irq.level
    assert m.memory.ram[0x10000:0x10400] == sector_pattern(100) + sector_pattern(101)
    assert m.memory.ram[0x30000:0x30200] == sector_pattern(102)
    assert m.memory.ram[0x30200:0x30210] == bytes(16)
    assert m.inb(REG_LBA_LOW) == 103 and m.inb(REG_SECTOR_COUNT) == 0
    m.bm.io_write(2, 1, BM_ST_INTERRUPT)  # write one to clear
    assert m.bm_status() & BM_ST_INTERRUPT == 0
    assert m.sink.history.count((14, True)) == 1


def test_start_before_the_command_also_works() -> None:
    m = Machine(Disk())
    m.memory.prd_table(0x800, [(0x2000, 512), (0x5000, 512)])
    m.setup(0x800, to_memory=True)
    m.start(to_memory=True)
    assert m.bm_status() & BM_ST_ACTIVE
    m.lba28(CMD_READ_DMA, 7, 2)
    assert m.irq.level
    assert m.bm_status() & (BM_ST_INTERRUPT | BM_ST_ACTIVE) == BM_ST_INTERRUPT
    assert m.memory.ram[0x2000:0x2200] == sector_pattern(7)
    assert m.memory.ram[0x5000:0x5200] == sector_pattern(8)


def test_write_dma_with_a_two_entry_prd_table() -> None:
    disk = Disk()
    m = Machine(disk)
    payload = os.urandom(1536)
    m.memory.ram[0x40000:0x40200] = payload[:512]
    m.memory.ram[0x60000:0x60400] = payload[512:]
    m.memory.prd_table(0x1000, [(0x40000, 512), (0x60000, 1024)])
    m.setup(0x1000, to_memory=False)
    m.lba28(CMD_WRITE_DMA, 20, 3)
    m.start(to_memory=False)
    assert m.irq.level
    assert m.bm_status() & 7 == BM_ST_INTERRUPT
    assert m.inb(REG_STATUS) == READY
    assert disk.read(20, 3) == payload
    assert disk.read(19, 1) == sector_pattern(19) and disk.read(23, 1) == sector_pattern(23)
    assert not m.memory.writes  # only the PRD table and the data were read


def test_ext_commands_and_a_64k_region() -> None:
    disk = Disk(300)
    m = Machine(disk)
    m.memory.prd_table(0x100, [(0x20000, 0)])  # byte count 0: 64 KiB
    m.setup(0x100, to_memory=True)
    m.lba48(CMD_READ_DMA_EXT, 150, 128)
    m.start(to_memory=True)
    assert m.bm_status() & 7 == BM_ST_INTERRUPT
    assert m.memory.ram[0x20000:0x30000] == disk.read(150, 128)
    m.stop()
    m.inb(REG_STATUS)
    data = os.urandom(0x10000)
    m.memory.ram[0x20000:0x30000] = data
    m.setup(0x100, to_memory=False)
    m.lba48(CMD_WRITE_DMA_EXT, 10, 128)
    m.start(to_memory=False)
    assert m.inb(REG_STATUS) == READY
    assert disk.read(10, 128) == data


def test_prd_table_longer_than_the_transfer_stays_active() -> None:
    m = Machine(Disk())
    m.memory.prd_table(0x800, [(0x10000, 4096)])
    m.setup(0x800, to_memory=True)
    m.lba28(CMD_READ_DMA, 0, 1)
    m.start(to_memory=True)
    assert m.irq.level
    assert m.bm_status() & 7 == BM_ST_INTERRUPT | BM_ST_ACTIVE  # data sheet: table not used up
    m.stop()
    assert m.bm_status() & 7 == BM_ST_INTERRUPT


def test_prd_table_shorter_than_the_transfer() -> None:
    m = Machine(Disk())
    m.memory.prd_table(0x800, [(0x10000, 512)])
    m.setup(0x800, to_memory=True)
    m.lba28(CMD_READ_DMA, 0, 2)
    m.start(to_memory=True)
    assert not m.irq.level  # no interrupt: the driver times out
    assert m.bm_status() & 7 == 0
    assert m.memory.ram[0x10000:0x10200] == sector_pattern(0)
    assert m.inb(REG_STATUS) == READY  # the drive gave up; a new command can be issued


def test_memory_error_sets_the_error_bit() -> None:
    m = Machine(Disk(), FakeMemory(1 << 16))
    m.memory.prd_table(0x800, [(0x100000, 512)])  # beyond the fake RAM
    m.setup(0x800, to_memory=True)
    m.lba28(CMD_READ_DMA, 0, 1)
    m.start(to_memory=True)
    assert m.irq.level
    assert m.bm_status() & 7 == BM_ST_INTERRUPT | BM_ST_ERROR
    assert m.inb(REG_STATUS) == ST_DRDY | ST_ERR
    assert m.inb(REG_ERROR) == ERR_ABRT


def test_status_register_bits() -> None:
    m = Machine(Disk())
    assert m.bm_status() == 0
    m.bm.io_write(2, 1, 0xFF)
    assert m.bm_status() == 0x60  # drive DMA capable bits are plain storage; simplex is 0
    m.bm.io_write(2, 1, 0x00)
    assert m.bm_status() == 0x00
    m.bm.io_write(2, 1, BM_ST_DRIVE0_DMA)
    m.bm.io_write(0, 1, 0xFF)
    assert m.bm.io_read(0, 1) == BM_CMD_START | BM_CMD_WRITE_MEMORY
    assert m.bm_status() == BM_ST_DRIVE0_DMA | BM_ST_ACTIVE
    m.bm.io_write(2, 1, BM_ST_ACTIVE | BM_ST_DRIVE0_DMA)  # active is read-only
    assert m.bm_status() & BM_ST_ACTIVE
    m.bm.io_write(4, 4, 0x12345677)
    assert m.bm.io_read(4, 4) == 0x12345674  # table pointer bits 1:0 are zero
    m.bm.io_write(4 + 8, 4, 0xABCDEF00)  # the secondary channel's pointer is its own
    assert m.bm.io_read(4, 4) == 0x12345674 and m.bm.io_read(12, 4) == 0xABCDEF00


def test_dma_commands_and_identify_data() -> None:
    m = Machine(Disk())
    m.outb(REG_STATUS, CMD_IDENTIFY_DEVICE)
    w = [m.cmd.io_read(REG_DATA, 2) for _ in range(256)]
    assert w[49] & (1 << 8)  # DMA supported
    assert w[63] & 0x07 == 0x07 and w[88] & 0x3F == 0x3F and w[53] & 0x04
    m.outb(REG_FEATURES, 0x03)
    m.outb(REG_SECTOR_COUNT, 0x22)  # multiword DMA mode 2
    m.outb(REG_STATUS, CMD_SET_FEATURES)
    assert m.inb(REG_STATUS) == READY
    m.outb(REG_STATUS, CMD_IDENTIFY_DEVICE)
    data = b"".join(m.cmd.io_read(REG_DATA, 2).to_bytes(2, "little") for _ in range(256))
    assert int.from_bytes(data[126:128], "little") == 0x0407  # word 63: mode 2 selected
    m.outb(REG_SECTOR_COUNT, 0x47)  # no Ultra DMA mode 7
    m.outb(REG_STATUS, CMD_SET_FEATURES)
    assert m.inb(REG_STATUS) == ST_DRDY | ST_ERR


def test_read_only_disk_refuses_write_dma() -> None:
    disk = BlockImage.from_bytes(bytes(64 * SECTOR_SIZE), readonly=True)
    m = Machine(disk)
    m.lba28(CMD_WRITE_DMA, 0, 1)
    assert m.inb(REG_STATUS) == ST_DRDY | ST_ERR


def test_pio_still_works_and_does_not_touch_the_bus_master() -> None:
    m = Machine(Disk())
    m.lba28(CMD_READ_SECTORS, 3, 1)
    assert m.inb(REG_STATUS) == READY | ST_DRQ
    assert m.channel.pio_read_block(512) == sector_pattern(3)
    assert m.bm_status() == 0


# -- ATAPI DMA -------------------------------------------------------------------------


def cd_sector(lba: int) -> bytes:
    return (b"CD%06d" % lba) * 256


class Iso:
    readonly = True

    def __init__(self, cd_sectors: int) -> None:
        self.sector_count = cd_sectors * 4
        self.writes = 0

    def read(self, lba: int, count: int) -> bytes:
        assert lba % 4 == 0 and count % 4 == 0
        return b"".join(cd_sector(n) for n in range(lba // 4, (lba + count) // 4))

    def write(self, lba: int, data: bytes) -> None:
        raise AssertionError("write to a CD")

    def flush(self) -> None:
        pass


def atapi_packet(m: Machine, cdb: bytes, dma: bool) -> None:
    m.outb(REG_DEVICE, 0xA0)
    m.outb(REG_FEATURES, 0x01 if dma else 0)
    m.outb(REG_LBA_MID, 0xFE)
    m.outb(REG_LBA_HIGH, 0xFF)
    m.outb(REG_STATUS, CMD_PACKET)
    cdb = cdb.ljust(12, b"\0")
    for i in range(0, 12, 2):
        m.cmd.io_write(REG_DATA, 2, int.from_bytes(cdb[i:i + 2], "little"))


def test_atapi_read10_by_dma() -> None:
    cd: BlockBackend = Iso(1000)
    m = Machine(CdRom(cd))
    m.memory.prd_table(0x800, [(0x10000, 2048), (0x50000, 4096)])
    m.setup(0x800, to_memory=True)
    atapi_packet(m, bytes((0x28, 0, 0, 0, 0x01, 0x2C, 0, 0, 3)), dma=True)  # LBA 300, 3 sectors
    assert m.channel.selected.status & ST_DRQ and not m.irq.level
    m.start(to_memory=True)
    assert m.irq.level
    assert m.bm_status() & 7 == BM_ST_INTERRUPT
    assert m.inb(REG_STATUS) == READY
    assert m.inb(REG_SECTOR_COUNT) & 3 == IR_COD | IR_IO
    assert m.memory.ram[0x10000:0x10800] == cd_sector(300)
    assert m.memory.ram[0x50000:0x51000] == cd_sector(301) + cd_sector(302)


def test_atapi_reply_by_dma_and_identify_packet_dma_bits() -> None:
    m = Machine(CdRom(Iso(1000)))
    m.outb(REG_STATUS, CMD_IDENTIFY_PACKET_DEVICE)
    data = b"".join(m.cmd.io_read(REG_DATA, 2).to_bytes(2, "little") for _ in range(256))
    assert int.from_bytes(data[98:100], "little") & (1 << 8)  # word 49: DMA
    m.memory.prd_table(0x800, [(0x9000, 8)])
    m.setup(0x800, to_memory=True)
    m.start(to_memory=True)
    atapi_packet(m, bytes((0x25,)), dma=True)  # READ CAPACITY
    assert m.bm_status() & 7 == BM_ST_INTERRUPT
    assert int.from_bytes(m.memory.ram[0x9000:0x9004], "big") == 999
    assert m.inb(REG_STATUS) == READY


def test_atapi_dma_error_and_pio_after_it() -> None:
    m = Machine(CdRom(Iso(10)))
    m.setup(0x800, to_memory=True)
    atapi_packet(m, bytes((0x28, 0, 0, 0, 0, 20, 0, 0, 1)), dma=True)  # beyond the end
    assert m.irq.level
    assert m.inb(REG_STATUS) == ST_DRDY | ST_ERR
    assert m.inb(REG_ERROR) >> 4 == 5
    m.start(to_memory=True)  # nothing to do
    assert m.bm_status() & BM_ST_INTERRUPT == 0
    m.stop()
    atapi_packet(m, bytes((0x28, 0, 0, 0, 0, 2, 0, 0, 1)), dma=False)
    assert m.inb(REG_STATUS) == READY | ST_DRQ
    assert m.channel.pio_read_block(2048) == cd_sector(2)


@pytest.mark.parametrize("to_memory", [True, False])
def test_saved_state_of_the_bus_master(to_memory: bool) -> None:
    m = Machine(Disk())
    m.setup(0x1230, to_memory)
    m.start(to_memory)
    state = m.piix.save_state()
    other = Machine(Disk())
    other.piix.load_state(state)
    assert other.bm.io_read(4, 4) == 0x1230
    assert other.bm.io_read(0, 1) & BM_CMD_START
    assert other.bm_status() & BM_ST_ACTIVE
