"""The IDE channel, driven through its ports as a guest driver would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qemu_lite.devices.base import IrqLine, RecordingIrqSink
from qemu_lite.devices.block import SECTOR_SIZE, BlockBackend, BlockImage
from qemu_lite.devices.ide import (
    CMD_EXECUTE_DEVICE_DIAGNOSTIC,
    CMD_FLUSH_CACHE,
    CMD_IDENTIFY_DEVICE,
    CMD_INITIALIZE_DEVICE_PARAMETERS,
    CMD_READ_MULTIPLE,
    CMD_READ_SECTORS,
    CMD_READ_SECTORS_EXT,
    CMD_READ_VERIFY_SECTORS,
    CMD_READ_VERIFY_SECTORS_EXT,
    CMD_SET_MULTIPLE_MODE,
    CMD_WRITE_MULTIPLE,
    CMD_WRITE_SECTORS,
    CMD_WRITE_SECTORS_EXT,
    CTL_HOB,
    CTL_NIEN,
    CTL_SRST,
    DEV_DEV,
    DEV_LBA,
    ERR_ABRT,
    ERR_IDNF,
    REG_DATA,
    REG_DEVICE,
    REG_ERROR,
    REG_FEATURES,
    REG_LBA_HIGH,
    REG_LBA_LOW,
    REG_LBA_MID,
    REG_SECTOR_COUNT,
    REG_STATUS,
    ST_BSY,
    ST_DRDY,
    ST_DRQ,
    ST_DSC,
    ST_ERR,
    IdeChannel,
)

READY = ST_DRDY | ST_DSC  # 0x50
ABORTED = ST_DRDY | ST_ERR  # 0x41


def sector_pattern(lba: int) -> bytes:
    """512 bytes that identify their sector: its LBA, then a counter."""
    head = lba.to_bytes(8, "little")
    return head + bytes((lba * 7 + i) & 0xFF for i in range(SECTOR_SIZE - 8))


class SparseDisk:
    """A fake medium of any size; unwritten sectors hold :func:`sector_pattern`."""

    def __init__(self, sector_count: int, readonly: bool = False) -> None:
        self.sector_count = sector_count
        self.readonly = readonly
        self.sectors: dict[int, bytes] = {}
        self.flushes = 0
        self.writes = 0

    def read(self, lba: int, count: int) -> bytes:
        assert 0 <= lba and lba + count <= self.sector_count
        return b"".join(self.sectors.get(n, sector_pattern(n)) for n in range(lba, lba + count))

    def write(self, lba: int, data: bytes) -> None:
        assert not self.readonly and 0 <= lba
        self.writes += 1
        for i in range(len(data) // SECTOR_SIZE):
            assert lba + i < self.sector_count
            self.sectors[lba + i] = data[i * SECTOR_SIZE:(i + 1) * SECTOR_SIZE]

    def flush(self) -> None:
        self.flushes += 1


class Host:
    """A guest driver's view of one channel: port accesses and the IRQ line."""

    def __init__(self, master: BlockBackend | None = None,
                 slave: BlockBackend | None = None) -> None:
        self.sink = RecordingIrqSink()
        self.irq = IrqLine(self.sink, 14)
        self.channel = IdeChannel(self.irq, master, slave)
        self.cmd = self.channel.command_block
        self.ctl = self.channel.control_block

    def outb(self, reg: int, value: int) -> None:
        self.cmd.io_write(reg, 1, value)

    def inb(self, reg: int) -> int:
        return self.cmd.io_read(reg, 1)

    def status(self) -> int:
        return self.inb(REG_STATUS)

    def alt_status(self) -> int:
        return self.ctl.io_read(0, 1)

    def control(self, value: int) -> None:
        self.ctl.io_write(0, 1, value)

    @property
    def irq_level(self) -> bool:
        return self.irq.level

    def irq_raises(self) -> int:
        return sum(1 for _, level in self.sink.history if level)

    def read_words(self, count: int) -> bytes:
        return b"".join(self.cmd.io_read(REG_DATA, 2).to_bytes(2, "little") for _ in range(count))

    def write_words(self, data: bytes) -> None:
        for i in range(0, len(data), 2):
            self.cmd.io_write(REG_DATA, 2, int.from_bytes(data[i:i + 2], "little"))

    def lba28(self, command: int, lba: int, count: int, dev: int = 0) -> None:
        self.outb(REG_DEVICE, 0xA0 | DEV_LBA | (dev and DEV_DEV) | (lba >> 24) & 0xF)
        self.outb(REG_SECTOR_COUNT, count & 0xFF)
        self.outb(REG_LBA_LOW, lba & 0xFF)
        self.outb(REG_LBA_MID, (lba >> 8) & 0xFF)
        self.outb(REG_LBA_HIGH, (lba >> 16) & 0xFF)
        self.outb(REG_STATUS, command)

    def lba48(self, command: int, lba: int, count: int) -> None:
        self.outb(REG_DEVICE, 0xA0 | DEV_LBA)
        for reg, shift in ((REG_SECTOR_COUNT, 8), (REG_LBA_LOW, 24), (REG_LBA_MID, 32),
                           (REG_LBA_HIGH, 40)):
            self.outb(reg, ((count if reg == REG_SECTOR_COUNT else lba) >> shift) & 0xFF)
        for reg, shift in ((REG_SECTOR_COUNT, 0), (REG_LBA_LOW, 0), (REG_LBA_MID, 8),
                           (REG_LBA_HIGH, 16)):
            self.outb(reg, ((count if reg == REG_SECTOR_COUNT else lba) >> shift) & 0xFF)
        self.outb(REG_STATUS, command)

    def chs(self, command: int, cyl: int, head: int, sector: int, count: int) -> None:
        self.outb(REG_DEVICE, 0xA0 | head)
        self.outb(REG_SECTOR_COUNT, count)
        self.outb(REG_LBA_LOW, sector)
        self.outb(REG_LBA_MID, cyl & 0xFF)
        self.outb(REG_LBA_HIGH, cyl >> 8)
        self.outb(REG_STATUS, command)

    def identify(self) -> list[int]:
        self.outb(REG_STATUS, CMD_IDENTIFY_DEVICE)
        assert self.status() == READY | ST_DRQ
        data = self.read_words(256)
        assert self.alt_status() == READY
        return [int.from_bytes(data[i:i + 2], "little") for i in range(0, 512, 2)]


def ata_text(words: list[int]) -> str:
    return b"".join(w.to_bytes(2, "big") for w in words).decode("ascii").rstrip()


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(sector_pattern(n) for n in range(16 * 63 * 4)))
    return path


# -- IDENTIFY -------------------------------------------------------------------


def test_identify_reports_geometry_capacity_and_strings() -> None:
    sectors = 16 * 63 * 20 + 5
    host = Host(SparseDisk(sectors))
    w = host.identify()
    assert w[0] == 0x0040
    assert (w[1], w[3], w[6]) == (20, 16, 63)
    assert (w[54], w[55], w[56]) == (20, 16, 63)
    assert w[57] | w[58] << 16 == 20 * 16 * 63
    assert w[53] & 1
    assert w[49] & (1 << 9)  # LBA
    assert w[47] == 0x8010 and w[59] == 0x0110  # multiple: max 16, current 16
    assert w[60] | w[61] << 16 == sectors
    assert w[100] | w[101] << 16 | w[102] << 32 | w[103] << 48 == sectors
    assert w[83] & (1 << 10) and w[86] & (1 << 10)  # 48-bit address feature set
    assert w[83] & (1 << 12) and w[83] & (1 << 13)  # FLUSH CACHE (EXT)
    assert w[83] >> 14 == 1
    assert ata_text(w[27:47]) == "QEMU_LITE HARDDISK"
    assert ata_text(w[10:20]) == "QM00001"
    assert ata_text(w[23:27]) != ""
    assert host.irq_raises() == 1


def test_identify_of_a_disk_beyond_lba28() -> None:
    sectors = (1 << 28) + 12345
    w = Host(SparseDisk(sectors)).identify()
    assert w[60] | w[61] << 16 == (1 << 28) - 1
    assert w[100] | w[101] << 16 | w[102] << 32 | w[103] << 48 == sectors
    assert (w[1], w[3], w[6]) == (16383, 16, 63)


def test_identify_of_slave_uses_its_own_serial() -> None:
    host = Host(SparseDisk(2048), SparseDisk(4096))
    host.outb(REG_DEVICE, 0xA0 | DEV_DEV)
    w = host.identify()
    assert ata_text(w[10:20]) == "QM00002"
    assert w[60] == 4096


# -- reads and writes -----------------------------------------------------------


def test_lba28_read_through_16bit_data_port(image_file: Path) -> None:
    with BlockImage.open(image_file, readonly=True) as disk:
        host = Host(disk)
        host.lba28(CMD_READ_SECTORS, 1000, 3)
        got = b""
        for _ in range(3):
            assert host.irq_level  # one interrupt per DRQ block
            assert host.status() == READY | ST_DRQ
            assert not host.irq_level  # cleared by the status read
            got += host.read_words(256)
        assert got == b"".join(sector_pattern(n) for n in (1000, 1001, 1002))
        assert host.status() == READY
        assert host.irq_raises() == 3
        # the task file points after the last sector read
        assert host.inb(REG_LBA_LOW) | host.inb(REG_LBA_MID) << 8 == 1003
        assert host.inb(REG_SECTOR_COUNT) == 0
        assert host.read_words(1) == b"\0\0"  # no DRQ: data port reads 0


def test_lba28_uses_device_register_bits_27_24() -> None:
    disk = SparseDisk(1 << 28)
    host = Host(disk)
    lba = 0x0ABCDEF1
    host.lba28(CMD_READ_SECTORS, lba, 1)
    assert host.read_words(256) == sector_pattern(lba)


def test_32bit_and_8bit_data_port_reads() -> None:
    host = Host(SparseDisk(100))
    host.lba28(CMD_READ_SECTORS, 7, 1)
    first = host.cmd.io_read(REG_DATA, 4).to_bytes(4, "little")
    byte = host.cmd.io_read(REG_DATA, 1).to_bytes(1, "little")
    rest = b"".join(host.cmd.io_read(REG_DATA, 1).to_bytes(1, "little") for _ in range(3))
    rest += b"".join(host.cmd.io_read(REG_DATA, 4).to_bytes(4, "little") for _ in range(126))
    assert first + byte + rest == sector_pattern(7)
    assert host.status() == READY


def test_write_reaches_the_image(image_file: Path) -> None:
    payload = bytes(range(256)) * 4
    disk = BlockImage.open(image_file)
    host = Host(disk)
    host.lba28(CMD_WRITE_SECTORS, 9, 2)
    assert host.status() == READY | ST_DRQ
    assert not host.irq_level  # the first block is requested without an interrupt
    host.write_words(payload[:512])
    assert host.irq_level  # first sector written, second requested
    assert host.status() == READY | ST_DRQ
    # 32-bit writes for the second sector
    for i in range(512, 1024, 4):
        host.cmd.io_write(REG_DATA, 4, int.from_bytes(payload[i:i + 4], "little"))
    assert host.irq_level
    assert host.status() == READY
    assert host.irq_raises() == 2
    disk.close()
    data = image_file.read_bytes()
    assert data[9 * 512:11 * 512] == payload
    assert data[8 * 512:9 * 512] == sector_pattern(8)
    assert data[11 * 512:12 * 512] == sector_pattern(11)


def test_pio_block_methods_match_word_accesses() -> None:
    words, blocks = Host(SparseDisk(4096)), Host(SparseDisk(4096))
    for host in (words, blocks):
        host.outb(REG_SECTOR_COUNT, 4)
        host.outb(REG_STATUS, CMD_SET_MULTIPLE_MODE)
        host.status()
        host.lba28(CMD_READ_MULTIPLE, 100, 6)
    by_words = words.read_words(6 * 256)
    by_block = blocks.channel.pio_read_block(6 * 512)
    assert by_words == by_block == b"".join(sector_pattern(n) for n in range(100, 106))
    assert words.sink.history == blocks.sink.history
    assert words.alt_status() == blocks.alt_status() == READY
    # writes: a block spanning two DRQ blocks, then the rest
    data = os.urandom(6 * 512)
    for host in (words, blocks):
        host.lba28(CMD_WRITE_MULTIPLE, 200, 6)
    words.write_words(data)
    blocks.channel.pio_write_block(data[:3000])
    blocks.channel.pio_write_block(data[3000:])
    assert words.sink.history == blocks.sink.history
    assert words.alt_status() == blocks.alt_status() == READY
    for host in (words, blocks):
        disk = host.channel.drives[0].block
        assert disk is not None
        assert disk.read(200, 6) == data


# -- CHS ------------------------------------------------------------------------


def test_chs_addressing_uses_default_translation(image_file: Path) -> None:
    with BlockImage.open(image_file, readonly=True) as disk:
        host = Host(disk)
        host.chs(CMD_READ_SECTORS, cyl=2, head=3, sector=5, count=2)
        lba = (2 * 16 + 3) * 63 + 4
        assert host.read_words(512) == sector_pattern(lba) + sector_pattern(lba + 1)
        # registers advance in CHS: next sector is 7 on the same head
        assert host.inb(REG_LBA_LOW) == 7
        assert host.inb(REG_DEVICE) & 0xF == 3


def test_chs_wraps_to_next_head_and_cylinder(image_file: Path) -> None:
    with BlockImage.open(image_file, readonly=True) as disk:
        host = Host(disk)
        host.chs(CMD_READ_SECTORS, cyl=0, head=15, sector=63, count=2)
        assert host.read_words(512) == sector_pattern(16 * 63 - 1) + sector_pattern(16 * 63)
        assert (host.inb(REG_LBA_MID), host.inb(REG_DEVICE) & 0xF, host.inb(REG_LBA_LOW)) == \
            (1, 0, 2)


def test_initialize_device_parameters_changes_translation(image_file: Path) -> None:
    with BlockImage.open(image_file, readonly=True) as disk:
        host = Host(disk)
        host.outb(REG_DEVICE, 0xA0 | 3)  # 4 heads
        host.outb(REG_SECTOR_COUNT, 32)  # 32 sectors per track
        host.outb(REG_STATUS, CMD_INITIALIZE_DEVICE_PARAMETERS)
        assert host.status() == READY
        w = host.identify()
        assert (w[55], w[56]) == (4, 32)
        assert w[54] == disk.sector_count // (4 * 32)
        assert (w[3], w[6]) == (16, 63)  # the default translation is unchanged
        host.chs(CMD_READ_SECTORS, cyl=1, head=2, sector=3, count=1)
        assert host.read_words(256) == sector_pattern((1 * 4 + 2) * 32 + 2)


def test_invalid_chs_address_is_idnf(image_file: Path) -> None:
    with BlockImage.open(image_file, readonly=True) as disk:
        host = Host(disk)
        host.chs(CMD_READ_SECTORS, cyl=0, head=0, sector=0, count=1)
        assert host.status() == ABORTED
        assert host.inb(REG_ERROR) == ERR_IDNF
        host.chs(CMD_READ_SECTORS, cyl=4, head=0, sector=1, count=1)  # 4 cylinders only
        assert host.inb(REG_ERROR) == ERR_IDNF


# -- LBA48 --------------------------------------------------------------------------


def test_lba48_beyond_2_28_on_a_sparse_file(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    base = 1 << 28
    with open(path, "wb") as f:
        f.truncate((base + 64) * SECTOR_SIZE)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, sector_pattern(base + 5), (base + 5) * SECTOR_SIZE)
    finally:
        os.close(fd)
    disk = BlockImage.open(path)
    host = Host(disk)
    host.lba48(CMD_READ_SECTORS_EXT, base + 5, 1)
    assert host.status() == READY | ST_DRQ
    assert host.read_words(256) == sector_pattern(base + 5)
    payload = os.urandom(1024)
    host.lba48(CMD_WRITE_SECTORS_EXT, base + 10, 2)
    host.write_words(payload)
    assert host.status() == READY
    disk.close()
    with open(path, "rb") as f:
        f.seek((base + 10) * SECTOR_SIZE)
        assert f.read(1024) == payload


def test_lba48_registers_and_hob_readback() -> None:
    lba = 0x123456789A
    host = Host(SparseDisk(1 << 41))
    host.lba48(CMD_READ_SECTORS_EXT, lba, 2)
    assert host.read_words(512) == sector_pattern(lba) + sector_pattern(lba + 1)
    nxt = lba + 2
    low = (host.inb(REG_LBA_LOW), host.inb(REG_LBA_MID), host.inb(REG_LBA_HIGH))
    assert low == (nxt & 0xFF, (nxt >> 8) & 0xFF, (nxt >> 16) & 0xFF)
    host.control(CTL_HOB)
    high = (host.inb(REG_LBA_LOW), host.inb(REG_LBA_MID), host.inb(REG_LBA_HIGH))
    assert high == ((nxt >> 24) & 0xFF, (nxt >> 32) & 0xFF, (nxt >> 40) & 0xFF)
    host.outb(REG_FEATURES, 0)  # any register write clears HOB
    assert host.inb(REG_LBA_LOW) == nxt & 0xFF


def test_hob_readback_of_written_registers() -> None:
    host = Host(SparseDisk(100))
    host.outb(REG_SECTOR_COUNT, 0x12)
    host.outb(REG_SECTOR_COUNT, 0x34)
    host.control(CTL_HOB)
    assert host.inb(REG_SECTOR_COUNT) == 0x12
    host.control(0)
    assert host.inb(REG_SECTOR_COUNT) == 0x34


def test_sector_count_zero_means_256_or_65536() -> None:
    for sectors, command, lba48, ok in (
        (255, CMD_READ_VERIFY_SECTORS, False, False),
        (256, CMD_READ_VERIFY_SECTORS, False, True),
        (65535, CMD_READ_VERIFY_SECTORS_EXT, True, False),
        (65536, CMD_READ_VERIFY_SECTORS_EXT, True, True),
    ):
        host = Host(SparseDisk(sectors))
        (host.lba48 if lba48 else host.lba28)(command, 0, 0)
        assert host.status() == (READY if ok else ABORTED), (sectors, command)
        assert host.irq_raises() == 1


def test_read_of_256_sectors_with_count_zero() -> None:
    host = Host(SparseDisk(300))
    host.lba28(CMD_READ_SECTORS, 10, 0)
    data = host.channel.pio_read_block(256 * 512)
    assert data[:512] == sector_pattern(10)
    assert data[-512:] == sector_pattern(265)
    assert host.alt_status() == READY
    assert host.inb(REG_LBA_MID) << 8 | host.inb(REG_LBA_LOW) == 266


# -- multiple mode ---------------------------------------------------------------


def test_read_multiple_transfers_in_blocks() -> None:
    host = Host(SparseDisk(1000))
    host.outb(REG_SECTOR_COUNT, 4)
    host.outb(REG_STATUS, CMD_SET_MULTIPLE_MODE)
    assert host.status() == READY
    host.lba28(CMD_READ_MULTIPLE, 50, 10)
    block_sizes = []
    data = b""
    while host.alt_status() & ST_DRQ:
        assert host.irq_level
        host.status()
        words = 0
        while host.alt_status() & ST_DRQ and (words == 0 or not host.irq_level):
            data += host.read_words(1)
            words += 1
        block_sizes.append(words // 256)
    assert block_sizes == [4, 4, 2]
    assert data == b"".join(sector_pattern(n) for n in range(50, 60))
    assert host.irq_raises() == 4  # SET MULTIPLE MODE + three blocks
    assert host.identify()[59] == 0x0104


def test_write_multiple_interrupts_per_block() -> None:
    disk = SparseDisk(1000)
    host = Host(disk)
    host.outb(REG_SECTOR_COUNT, 8)
    host.outb(REG_STATUS, CMD_SET_MULTIPLE_MODE)
    host.status()
    host.lba28(CMD_WRITE_MULTIPLE, 0, 12)
    data = os.urandom(12 * 512)
    host.write_words(data[:8 * 512 - 2])
    assert not host.irq_level and disk.writes == 0
    host.write_words(data[8 * 512 - 2:8 * 512])
    assert host.irq_level and disk.writes == 1
    assert host.status() == READY | ST_DRQ
    host.write_words(data[8 * 512:])
    assert host.status() == READY
    assert disk.writes == 2
    assert disk.read(0, 12) == data


def test_multiple_mode_errors() -> None:
    host = Host(SparseDisk(1000))
    host.outb(REG_SECTOR_COUNT, 3)  # not a power of two
    host.outb(REG_STATUS, CMD_SET_MULTIPLE_MODE)
    assert host.status() == ABORTED and host.inb(REG_ERROR) == ERR_ABRT
    host.outb(REG_SECTOR_COUNT, 0)  # disables multiple mode
    host.outb(REG_STATUS, CMD_SET_MULTIPLE_MODE)
    assert host.status() == READY
    host.lba28(CMD_READ_MULTIPLE, 0, 1)
    assert host.status() == ABORTED and host.inb(REG_ERROR) == ERR_ABRT


# -- interrupts -----------------------------------------------------------------------


def test_nien_suppresses_the_interrupt() -> None:
    host = Host(SparseDisk(100))
    host.control(CTL_NIEN)
    host.lba28(CMD_READ_SECTORS, 0, 1)
    assert host.alt_status() == READY | ST_DRQ
    assert not host.irq_level
    assert host.sink.history == []
    host.control(0)  # the pending interrupt shows once enabled
    assert host.irq_level


def test_status_read_clears_irq_but_alternate_status_does_not() -> None:
    host = Host(SparseDisk(100))
    host.outb(REG_STATUS, CMD_FLUSH_CACHE)
    assert host.irq_level
    assert host.alt_status() == READY
    assert host.irq_level
    assert host.status() == READY
    assert not host.irq_level


def test_flush_cache_flushes_the_medium() -> None:
    disk = SparseDisk(100)
    host = Host(disk)
    host.outb(REG_STATUS, CMD_FLUSH_CACHE)
    assert disk.flushes == 1
    assert host.status() == READY


# -- reset, diagnostics, device selection -------------------------------------------


def test_srst_resets_both_drives_and_loads_the_signature() -> None:
    host = Host(SparseDisk(100), SparseDisk(100))
    host.outb(REG_FEATURES, 0x33)
    host.lba28(CMD_READ_SECTORS, 0x55, 7, dev=1)  # leaves DRQ set
    assert host.alt_status() & ST_DRQ
    host.status()
    host.control(CTL_SRST)
    assert host.alt_status() == ST_BSY
    host.control(0)
    assert not host.irq_level
    for dev in (0, 1):
        if dev:
            host.outb(REG_DEVICE, 0xA0 | DEV_DEV)
        else:
            assert host.inb(REG_DEVICE) == 0xA0  # device 0 selected after reset
        assert host.status() == READY
        assert host.inb(REG_ERROR) == 0x01
        assert host.inb(REG_SECTOR_COUNT) == 1
        assert host.inb(REG_LBA_LOW) == 1
        assert (host.inb(REG_LBA_MID), host.inb(REG_LBA_HIGH)) == (0, 0)
    assert host.read_words(1) == b"\0\0"  # the transfer was halted


def test_execute_device_diagnostic() -> None:
    host = Host(SparseDisk(100))
    host.outb(REG_SECTOR_COUNT, 9)
    host.outb(REG_STATUS, CMD_EXECUTE_DEVICE_DIAGNOSTIC)
    assert host.irq_level
    assert host.status() == READY
    assert host.inb(REG_ERROR) == 0x01
    assert host.inb(REG_SECTOR_COUNT) == 1


def test_absent_slave_reads_zero_and_ignores_commands() -> None:
    host = Host(SparseDisk(100))
    host.outb(REG_DEVICE, 0xA0 | DEV_DEV)
    assert host.status() == 0
    assert host.alt_status() == 0
    assert host.inb(REG_ERROR) == 0
    host.outb(REG_SECTOR_COUNT, 0x42)  # task file writes reach both devices
    assert host.inb(REG_SECTOR_COUNT) == 0x42
    host.outb(REG_STATUS, CMD_IDENTIFY_DEVICE)
    assert not host.irq_level
    assert host.status() == 0
    assert host.read_words(1) == b"\0\0"
    host.outb(REG_DEVICE, 0xA0)
    assert host.status() == READY  # the master did not see the command


def test_no_drives_at_all() -> None:
    host = Host()
    assert [host.inb(reg) for reg in range(1, 8)] == [0] * 7
    host.outb(REG_STATUS, CMD_IDENTIFY_DEVICE)
    assert host.status() == 0


def test_register_writes_ignored_while_drq() -> None:
    host = Host(SparseDisk(100))
    host.lba28(CMD_READ_SECTORS, 3, 1)
    host.outb(REG_LBA_LOW, 0x55)
    host.outb(REG_DEVICE, 0xA0 | DEV_DEV)
    assert host.status() == READY | ST_DRQ  # still device 0
    assert host.read_words(256) == sector_pattern(3)


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [0x00, 0xC8, 0xCA, 0xA0, 0xFF])
def test_unknown_commands_abort(command: int) -> None:
    host = Host(SparseDisk(100))
    host.outb(REG_STATUS, command)
    assert host.irq_level
    assert host.status() == ABORTED
    assert host.inb(REG_ERROR) == ERR_ABRT


def test_out_of_range_is_idnf() -> None:
    disk = SparseDisk(100)
    host = Host(disk)
    host.lba28(CMD_READ_SECTORS, 100, 1)
    assert host.irq_level
    assert host.status() == ABORTED
    assert host.inb(REG_ERROR) == ERR_IDNF
    host.lba28(CMD_WRITE_SECTORS, 98, 3)  # crosses the end
    assert host.status() == ABORTED
    assert host.inb(REG_ERROR) == ERR_IDNF
    assert disk.writes == 0
    host.lba28(CMD_READ_SECTORS, 99, 1)  # the last sector is fine
    assert host.status() == READY | ST_DRQ


def test_read_only_media_abort_writes(tmp_path: Path) -> None:
    path = tmp_path / "ro.img"
    content = b"".join(sector_pattern(n) for n in range(8))
    path.write_bytes(content)
    with BlockImage.open(path, readonly=True) as disk:
        host = Host(disk)
        host.lba28(CMD_WRITE_SECTORS, 1, 1)
        assert host.irq_level
        assert host.status() == ABORTED
        assert host.inb(REG_ERROR) == ERR_ABRT
        host.write_words(bytes(512))
        host.lba28(CMD_READ_SECTORS, 1, 1)  # reads still work
        assert host.read_words(256) == sector_pattern(1)
    assert path.read_bytes() == content


# -- saved state ------------------------------------------------------------------------


def test_save_and_load_in_the_middle_of_a_transfer() -> None:
    disk = SparseDisk(100)
    host = Host(disk)
    host.control(CTL_NIEN)
    host.lba28(CMD_READ_SECTORS, 20, 3)
    first = host.read_words(300)
    state = host.channel.save_state()
    other = Host(disk)
    other.channel.load_state(state)
    assert other.alt_status() == READY | ST_DRQ
    rest = other.read_words(3 * 256 - 300)
    assert first + rest == b"".join(sector_pattern(n) for n in (20, 21, 22))
    assert other.alt_status() == READY
    assert other.channel.device_control == CTL_NIEN
    with pytest.raises(ValueError):
        other.channel.load_state({**state, "version": 99})


def test_reset_returns_to_power_on_state() -> None:
    host = Host(SparseDisk(100))
    host.outb(REG_SECTOR_COUNT, 2)
    host.outb(REG_STATUS, CMD_SET_MULTIPLE_MODE)
    host.control(CTL_NIEN)
    host.lba28(CMD_READ_SECTORS, 0, 1)
    host.cmd.reset()
    assert not host.irq_level
    assert host.alt_status() == READY
    assert host.channel.device_control == 0
    assert host.identify()[59] == 0x0110
