"""The ATAPI CD-ROM on an IDE channel, driven through its ports as a guest driver would."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_lite.devices.base import IrqLine, RecordingIrqSink
from qemu_lite.devices.block import SECTOR_SIZE, BlockImage
from qemu_lite.devices.ide import (
    CMD_DEVICE_RESET,
    CMD_EXECUTE_DEVICE_DIAGNOSTIC,
    CMD_IDENTIFY_DEVICE,
    CMD_IDENTIFY_PACKET_DEVICE,
    CMD_PACKET,
    CMD_READ_SECTORS,
    CMD_WRITE_SECTORS,
    CTL_SRST,
    DEV_DEV,
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
    SENSE_DATA_PROTECT,
    SENSE_ILLEGAL_REQUEST,
    SENSE_NOT_READY,
    ST_DRDY,
    ST_DRQ,
    ST_DSC,
    ST_ERR,
    CdRom,
    IdeChannel,
    IdeMedium,
)

CD = 2048
READY = ST_DRDY | ST_DSC
CHECK = ST_DRDY | ST_ERR
DONE = IR_COD | IR_IO  # interrupt reason at command completion


def cd_sector(lba: int) -> bytes:
    """2048 bytes that identify their CD sector."""
    head = b"CD" + lba.to_bytes(6, "little")
    return head + bytes((lba * 13 + i) & 0xFF for i in range(CD - 8))


class SparseCd:
    """A read-only image of any size in 512-byte sectors; every CD sector holds cd_sector()."""

    readonly = True

    def __init__(self, cd_sectors: int) -> None:
        self.sector_count = cd_sectors * 4
        self.reads: list[tuple[int, int]] = []
        self.writes = 0
        self.flushes = 0

    def read(self, lba: int, count: int) -> bytes:
        assert 0 <= lba and lba + count <= self.sector_count
        self.reads.append((lba, count))
        first, last = lba // 4, (lba + count - 1) // 4
        data = b"".join(cd_sector(n) for n in range(first, last + 1))
        start = (lba - first * 4) * SECTOR_SIZE
        return data[start:start + count * SECTOR_SIZE]

    def write(self, lba: int, data: bytes) -> None:
        self.writes += 1
        raise AssertionError("a write reached the CD image")

    def flush(self) -> None:
        self.flushes += 1


class Host:
    """A guest driver's view of one channel with a CD: ports, the IRQ line, PACKET."""

    def __init__(self, master: IdeMedium | None = None, slave: IdeMedium | None = None) -> None:
        self.sink = RecordingIrqSink()
        self.irq = IrqLine(self.sink, 15)
        self.channel = IdeChannel(self.irq, master, slave, serial_base=3)
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

    def irq_raises(self) -> int:
        return sum(1 for _, level in self.sink.history if level)

    def read_words(self, count: int) -> bytes:
        return b"".join(self.cmd.io_read(REG_DATA, 2).to_bytes(2, "little") for _ in range(count))

    def signature(self) -> tuple[int, int, int, int]:
        return (self.inb(REG_SECTOR_COUNT), self.inb(REG_LBA_LOW), self.inb(REG_LBA_MID),
                self.inb(REG_LBA_HIGH))

    def byte_count(self) -> int:
        return self.inb(REG_LBA_MID) | self.inb(REG_LBA_HIGH) << 8

    def send_packet(self, cdb: bytes, limit: int = 0xFFFE, dev: int = 0) -> None:
        """PACKET with PIO, the byte count limit in the cylinder registers, then the CDB."""
        self.outb(REG_DEVICE, 0xA0 | (dev and DEV_DEV))
        self.outb(REG_FEATURES, 0)
        self.outb(REG_LBA_MID, limit & 0xFF)
        self.outb(REG_LBA_HIGH, limit >> 8)
        self.outb(REG_STATUS, CMD_PACKET)
        assert self.alt_status() == READY | ST_DRQ
        assert self.inb(REG_SECTOR_COUNT) & 3 == IR_COD  # command bytes wanted
        assert not self.irq.level  # DRQ for the packet comes without an interrupt
        cdb = cdb.ljust(12, b"\0")
        for i in range(0, 12, 2):
            self.cmd.io_write(REG_DATA, 2, int.from_bytes(cdb[i:i + 2], "little"))

    def data_in(self) -> tuple[bytes, list[int]]:
        """Read the whole data-in phase: the data and the byte count of each DRQ block."""
        data = b""
        blocks: list[int] = []
        while True:
            assert self.irq.level  # an interrupt for every block and at completion
            status = self.status()
            if not status & ST_DRQ:
                return data, blocks
            assert self.inb(REG_SECTOR_COUNT) & 3 == IR_IO  # data to the host
            count = self.byte_count()
            blocks.append(count)
            data += self.read_words((count + 1) // 2)[:count]

    def command(self, cdb: bytes, limit: int = 0xFFFE) -> bytes:
        """A command that must succeed; its data."""
        self.send_packet(cdb, limit)
        data, _ = self.data_in()
        assert self.alt_status() == READY
        assert self.inb(REG_SECTOR_COUNT) & 3 == DONE
        return data

    def check_condition(self, cdb: bytes) -> int:
        """A command that must fail; its sense key from the error register."""
        self.send_packet(cdb)
        assert self.irq.level
        assert self.status() == CHECK
        assert self.inb(REG_SECTOR_COUNT) & 3 == DONE
        return self.inb(REG_ERROR) >> 4

    def request_sense(self) -> tuple[int, int, int]:
        data = self.command(bytes((0x03, 0, 0, 0, 18, 0)))
        assert data[0] == 0x70 and len(data) == 18
        return data[2] & 0x0F, data[12], data[13]


def words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + 2], "little") for i in range(0, 512, 2)]


def ata_text(w: list[int]) -> str:
    return b"".join(v.to_bytes(2, "big") for v in w).decode("ascii").rstrip()


def read10(lba: int, count: int) -> bytes:
    return bytes((0x28, 0)) + lba.to_bytes(4, "big") + bytes((0,)) + count.to_bytes(2, "big")


ISO_SECTORS = 333_000  # about 650 MiB: a CD, as a grub-mkrescue image of that size would be


@pytest.fixture
def host() -> Host:
    return Host(CdRom(SparseCd(ISO_SECTORS)))


# -- signature and identification ----------------------------------------------


def test_signature_after_power_on_srst_and_diagnostic() -> None:
    host = Host(CdRom(SparseCd(100)))
    assert host.status() == 0  # a packet device does not set DRDY after reset
    assert host.signature() == (1, 1, 0x14, 0xEB)
    host.outb(REG_SECTOR_COUNT, 0x55)
    host.ctl.io_write(0, 1, CTL_SRST)
    host.ctl.io_write(0, 1, 0)
    assert host.signature() == (1, 1, 0x14, 0xEB)
    assert host.inb(REG_ERROR) == 0x01
    assert host.status() == 0
    host.outb(REG_LBA_MID, 0)
    host.outb(REG_STATUS, CMD_EXECUTE_DEVICE_DIAGNOSTIC)
    assert host.irq.level
    assert host.status() == 0
    assert host.signature() == (1, 1, 0x14, 0xEB)


def test_disk_master_and_cd_slave_have_their_own_signatures() -> None:
    disk = BlockImage.from_bytes(bytes(64 * SECTOR_SIZE))
    host = Host(disk, CdRom(SparseCd(100)))
    host.outb(REG_STATUS, CMD_EXECUTE_DEVICE_DIAGNOSTIC)
    assert host.status() == READY
    assert host.signature() == (1, 1, 0, 0)
    host.outb(REG_DEVICE, 0xA0 | DEV_DEV)
    assert host.signature() == (1, 1, 0x14, 0xEB)
    assert host.status() == 0


def test_identify_device_aborts_with_the_signature(host: Host) -> None:
    host.outb(REG_LBA_MID, 0x12)
    host.outb(REG_STATUS, CMD_IDENTIFY_DEVICE)
    assert host.irq.level
    assert host.status() == ST_DRDY | ST_ERR
    assert host.inb(REG_ERROR) == ERR_ABRT
    assert host.signature() == (1, 1, 0x14, 0xEB)
    assert host.read_words(1) == b"\0\0"


def test_identify_packet_device(host: Host) -> None:
    host.outb(REG_STATUS, CMD_IDENTIFY_PACKET_DEVICE)
    assert host.irq.level
    assert host.status() == READY | ST_DRQ
    w = words(host.read_words(256))
    assert host.alt_status() == READY
    assert w[0] == 0x85C0  # ATAPI, CD-ROM, removable, 12-byte packets
    assert ata_text(w[27:47]) == "QEMU_LITE DVD-ROM"
    assert ata_text(w[10:20]) == "QM00003"
    assert w[49] & (1 << 9)  # LBA
    assert not w[49] & (1 << 8)  # no DMA without a bus master
    assert w[82] & (1 << 4) and w[85] & (1 << 4)  # PACKET feature set


def test_unknown_ata_commands_to_the_cd_abort(host: Host) -> None:
    for command in (0x00, CMD_READ_SECTORS, 0x91, 0xC6, 0xE7, 0xC8):
        host.outb(REG_STATUS, command)
        assert host.irq.level
        assert host.status() == ST_DRDY | ST_ERR, hex(command)
        assert host.inb(REG_ERROR) == ERR_ABRT


# -- the SCSI/MMC commands ------------------------------------------------------


def test_test_unit_ready_and_an_empty_drive() -> None:
    host = Host(CdRom(SparseCd(10)))
    assert host.command(bytes(12)) == b""
    empty = Host(CdRom())
    assert empty.check_condition(bytes(12)) == SENSE_NOT_READY
    assert empty.request_sense() == (SENSE_NOT_READY, 0x3A, 0)
    assert empty.check_condition(bytes((0x25,))) == SENSE_NOT_READY
    assert empty.command(bytes((0x12, 0, 0, 0, 36)))[0] == 0x05  # INQUIRY still answers


def test_inquiry(host: Host) -> None:
    data = host.command(bytes((0x12, 0, 0, 0, 96, 0)))
    assert len(data) == 36
    assert data[0] == 0x05  # CD/DVD device
    assert data[1] & 0x80  # removable
    assert data[4] == 31
    assert data[8:16] == b"QEMU    "
    assert data[16:32].rstrip() == b"QEMU_LITE DVD"


def test_odd_allocation_length_is_padded_to_a_word(host: Host) -> None:
    host.send_packet(bytes((0x12, 0, 0, 0, 5, 0)))
    assert host.irq.level
    assert host.status() == READY | ST_DRQ
    assert host.byte_count() == 5
    data = host.read_words(3)
    assert data[:5] == bytes((5, 0x80, 0, 0x21, 31))
    assert data[5] == 0
    assert host.status() == READY


def test_read_capacity_of_an_iso_sized_image(host: Host) -> None:
    data = host.command(bytes((0x25,)))
    assert int.from_bytes(data[0:4], "big") == ISO_SECTORS - 1
    assert int.from_bytes(data[4:8], "big") == 2048


def test_read_capacity_of_a_real_iso_file(tmp_path: Path) -> None:
    path = tmp_path / "cd.iso"
    path.write_bytes(b"".join(cd_sector(n) for n in range(20)))
    with BlockImage.open(path, readonly=True) as image:
        host = Host(CdRom(image))
        data = host.command(bytes((0x25,)))
        assert int.from_bytes(data[0:4], "big") == 19
        assert host.command(read10(17, 2)) == cd_sector(17) + cd_sector(18)


@pytest.mark.parametrize(("limit", "blocks"), [
    (0xFFFE, [6144]),
    (0x1000, [4096, 2048]),
    (0x0800, [2048, 2048, 2048]),
    (0x0FFF, [4094, 2050]),  # an odd limit is made even
    (0xFFFF, [6144]),
    (0, [6144]),
])
def test_read10_through_pio_with_byte_count_limits(host: Host, limit: int,
                                                   blocks: list[int]) -> None:
    host.send_packet(read10(1000, 3), limit)
    data, sizes = host.data_in()
    assert sizes == blocks
    assert data == cd_sector(1000) + cd_sector(1001) + cd_sector(1002)
    assert host.alt_status() == READY
    assert host.inb(REG_SECTOR_COUNT) & 3 == DONE
    assert host.irq_raises() == len(blocks) + 1
    image = host.channel.drives[0].cd
    assert image is not None and isinstance(image.image, SparseCd)
    assert all(4000 <= lba < 4012 for lba, _ in image.image.reads)


def test_read12_and_pio_block_reads(host: Host) -> None:
    cdb = bytes((0xA8, 0)) + (ISO_SECTORS - 2).to_bytes(4, "big") + (2).to_bytes(4, "big")
    host.send_packet(cdb, 0x8000)
    host.status()
    assert host.byte_count() == 4096
    assert host.channel.pio_read_block(4096) == cd_sector(ISO_SECTORS - 2) + \
        cd_sector(ISO_SECTORS - 1)
    assert host.status() == READY


def test_read_of_zero_sectors_completes_without_data(host: Host) -> None:
    assert host.command(read10(5, 0)) == b""
    assert host.irq_raises() == 1


def test_read_beyond_the_end_is_an_illegal_request(host: Host) -> None:
    assert host.check_condition(read10(ISO_SECTORS - 1, 2)) == SENSE_ILLEGAL_REQUEST
    assert host.request_sense() == (SENSE_ILLEGAL_REQUEST, 0x21, 0)


def test_request_sense_after_an_illegal_request(host: Host) -> None:
    assert host.check_condition(bytes((0x51,))) == SENSE_ILLEGAL_REQUEST  # READ DISC INFO
    assert host.inb(REG_ERROR) & ERR_ABRT
    assert host.request_sense() == (SENSE_ILLEGAL_REQUEST, 0x20, 0)  # invalid opcode
    assert host.request_sense() == (0, 0, 0)  # reported once


def test_request_sense_allocation_length(host: Host) -> None:
    host.check_condition(bytes((0xFF,)))
    assert host.command(bytes((0x03, 0, 0, 0, 8, 0))) == bytes((0x70, 0, 5, 0, 0, 0, 0, 10))


def test_write_attempts_are_refused(host: Host) -> None:
    image = host.channel.drives[0].cd
    assert image is not None and isinstance(image.image, SparseCd)
    for cdb in (bytes((0x2A, 0, 0, 0, 0, 1, 0, 0, 1)), bytes((0xAA, 0, 0, 0, 0, 1, 0, 0, 0, 1)),
                bytes((0x2E, 0, 0, 0, 0, 1, 0, 0, 1))):
        assert host.check_condition(cdb) == SENSE_DATA_PROTECT
        assert host.request_sense() == (SENSE_DATA_PROTECT, 0x27, 0)
    host.outb(REG_SECTOR_COUNT, 1)
    host.outb(REG_STATUS, CMD_WRITE_SECTORS)
    assert host.status() == ST_DRDY | ST_ERR
    host.outb(REG_FEATURES, 0x82)  # SET FEATURES: disable write cache (flushes a disk)
    host.outb(REG_STATUS, 0xEF)
    assert host.status() == READY
    for i in range(256):
        host.cmd.io_write(REG_DATA, 2, i)
    assert image.image.writes == 0 and image.image.flushes == 0


def test_writable_images_are_refused() -> None:
    with pytest.raises(ValueError):
        CdRom(BlockImage.from_bytes(bytes(CD)))
    assert CdRom(BlockImage.from_bytes(bytes(CD), readonly=True)).sector_count == 1


def test_mode_sense_capabilities_page(host: Host) -> None:
    data = host.command(bytes((0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 255, 0)))
    assert int.from_bytes(data[0:2], "big") == len(data) - 2
    assert data[6:8] == b"\0\0"  # no block descriptors
    page = data[8:]
    assert page[0] == 0x2A and page[1] == len(page) - 2
    assert page[2] & 0x08  # reads DVD-ROM
    assert page[3] == 0  # writes nothing
    assert page[6] & 0x01 and not page[6] & 0x02  # lock supported, not locked
    all_pages = host.command(bytes((0x5A, 0, 0x3F, 0, 0, 0, 0, 0x10, 0, 0)))
    assert all_pages[8] == 0x01 and page in all_pages
    truncated = host.command(bytes((0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 10, 0)))
    assert truncated == data[:10]
    assert host.check_condition(bytes((0x5A, 0, 0x05, 0, 0, 0, 0, 0, 255, 0))) == \
        SENSE_ILLEGAL_REQUEST


def test_read_toc_format_0_in_lba_and_msf(host: Host) -> None:
    data = host.command(bytes((0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0)))
    assert int.from_bytes(data[0:2], "big") == len(data) - 2 == 18
    assert data[2:4] == b"\x01\x01"
    assert data[4:12] == bytes((0, 0x14, 1, 0, 0, 0, 0, 0))
    assert data[12:16] == bytes((0, 0x14, 0xAA, 0))
    assert int.from_bytes(data[16:20], "big") == ISO_SECTORS
    msf = host.command(bytes((0x43, 0x02, 0, 0, 0, 0, 0, 0, 100, 0)))
    assert msf[8:12] == bytes((0, 0, 2, 0))  # track 1 at 00:02:00
    lead_out = ISO_SECTORS + 150
    assert msf[16:20] == bytes((0, lead_out // 4500, lead_out // 75 % 60, lead_out % 75))
    session = host.command(bytes((0x43, 0, 1, 0, 0, 0, 0, 0, 12, 0)))
    assert session[:4] == bytes((0, 10, 1, 1)) and session[6] == 1


def test_get_configuration_reports_the_profile() -> None:
    host = Host(CdRom(SparseCd(1000)))
    data = host.command(bytes((0x46, 0, 0, 0, 0, 0, 0, 1, 0, 0)))
    assert int.from_bytes(data[0:4], "big") == len(data) - 4
    assert int.from_bytes(data[6:8], "big") == 0x0008  # CD-ROM
    assert data[8:10] == b"\0\0"  # the profile list comes first
    dvd = Host(CdRom(SparseCd(2_000_000)))
    only_core = dvd.command(bytes((0x46, 2, 0, 1, 0, 0, 0, 1, 0, 0)))
    assert int.from_bytes(only_core[6:8], "big") == 0x0010  # DVD-ROM
    assert only_core[8:10] == b"\0\x01" and len(only_core) == 8 + 4 + 8


def test_prevent_removal_blocks_eject(host: Host) -> None:
    host.command(bytes((0x1E, 0, 0, 0, 1, 0)))
    assert host.check_condition(bytes((0x1B, 0, 0, 0, 0x02, 0))) == SENSE_ILLEGAL_REQUEST
    assert host.request_sense() == (SENSE_ILLEGAL_REQUEST, 0x53, 0x02)
    assert host.command(bytes((0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 255, 0)))[8 + 6] & 0x02
    host.command(bytes((0x1E, 0, 0, 0, 0, 0)))
    host.command(bytes((0x1B, 0, 0, 0, 0x02, 0)))
    host.command(bytes((0x1B, 0, 0, 0, 0x01, 0)))  # start


# -- protocol corners ------------------------------------------------------------------


def test_packet_with_dma_or_overlap_aborts_without_a_bus_master(host: Host) -> None:
    for feature in (0x01, 0x02):
        host.outb(REG_FEATURES, feature)
        host.outb(REG_STATUS, CMD_PACKET)
        assert host.status() == ST_DRDY | ST_ERR
        assert host.inb(REG_ERROR) == ERR_ABRT


def test_device_reset_stops_a_data_phase(host: Host) -> None:
    host.send_packet(read10(0, 4), 0x800)
    host.status()
    host.read_words(100)
    host.outb(REG_STATUS, CMD_DEVICE_RESET)  # accepted while DRQ is set
    assert not host.irq.level
    assert host.alt_status() == 0
    assert host.signature() == (1, 1, 0x14, 0xEB)
    assert host.read_words(1) == b"\0\0"
    assert host.command(read10(7, 1)) == cd_sector(7)


def test_save_and_load_in_the_middle_of_a_data_phase(host: Host) -> None:
    host.send_packet(read10(50, 3), 0x1000)
    host.status()
    first = host.read_words(1000)
    state = host.channel.save_state()
    other = Host(CdRom(SparseCd(ISO_SECTORS)))
    other.channel.load_state(state)
    assert other.alt_status() == READY | ST_DRQ
    rest = other.read_words(2048 - 1000)  # the end of the first 4096-byte block
    assert other.irq.level and other.byte_count() == 2048
    other.status()
    rest += other.read_words(1024)
    assert first + rest == cd_sector(50) + cd_sector(51) + cd_sector(52)
    assert other.status() == READY


def test_data_port_sizes_during_the_packet_phase(host: Host) -> None:
    host.outb(REG_LBA_MID, 0xFE)
    host.outb(REG_LBA_HIGH, 0xFF)
    host.outb(REG_STATUS, CMD_PACKET)
    cdb = bytes((0x25,)).ljust(12, b"\0")
    for i in range(0, 12, 4):
        host.cmd.io_write(REG_DATA, 4, int.from_bytes(cdb[i:i + 4], "little"))
    assert host.irq.level
    assert host.status() == READY | ST_DRQ
    assert host.byte_count() == 8
    data = b"".join(host.cmd.io_read(REG_DATA, 4).to_bytes(4, "little") for _ in range(2))
    assert int.from_bytes(data[:4], "big") == ISO_SECTORS - 1
