"""The 82540EM model alone: registers, EEPROM, PHY, descriptor rings in a fake guest RAM."""

from __future__ import annotations

import struct
import zlib
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qemu_lite.devices.base import Clock, IrqLine, RecordingIrqSink
from qemu_lite.devices.e1000 import (
    CTRL,
    CTRL_RST,
    E1000,
    EECD,
    EECD_CS,
    EECD_DI,
    EECD_DO,
    EECD_GNT,
    EECD_REQ,
    EECD_SK,
    EERD,
    ICR,
    ICR_LSC,
    ICR_RXO,
    ICR_RXT0,
    ICR_TXDW,
    ICR_TXQE,
    ICS,
    IMC,
    IMS,
    ITR,
    MDIC,
    MPC,
    MTA,
    RCTL,
    RCTL_BAM,
    RCTL_EN,
    RCTL_SECRC,
    RDBAH,
    RDBAL,
    RDH,
    RDLEN,
    RDT,
    RX_QUEUE_LIMIT,
    STATUS,
    TCTL,
    TCTL_EN,
    TDBAH,
    TDBAL,
    TDH,
    TDLEN,
    TDT,
    TX_DESCRIPTORS_PER_SLICE,
    checksum16,
    parse_mac,
)
from qemu_lite.devices.pci import PCI_BAR0, PCI_COMMAND

MAC = bytes.fromhex("525400123456")
RAM_SIZE = 1 << 20
MMIO = 0xFEBC0000


class FakeRam:
    """Guest RAM that raises ValueError outside itself, as the machine's DMA view does,
    and remembers every attempt to go outside."""

    def __init__(self, size: int = RAM_SIZE) -> None:
        self.data = bytearray(size)
        self.outside: list[tuple[int, int]] = []

    def _check(self, paddr: int, n: int) -> None:
        if paddr < 0 or paddr + n > len(self.data):
            self.outside.append((paddr, n))
            raise ValueError(f"outside RAM at {paddr:#x}")

    def read(self, paddr: int, n: int) -> bytes:
        self._check(paddr, n)
        return bytes(self.data[paddr:paddr + n])

    def write(self, paddr: int, data: bytes) -> None:
        self._check(paddr, len(data))
        self.data[paddr:paddr + len(data)] = data


class FakePort:
    def __init__(self, limit: int = 1000) -> None:
        self.sent: list[bytes] = []
        self.incoming: deque[bytes] = deque()
        self.limit = limit

    def send(self, frame: bytes) -> bool:
        if len(self.sent) >= self.limit:
            return False
        self.sent.append(frame)
        return True

    def receive(self) -> bytes | None:
        return self.incoming.popleft() if self.incoming else None


def make(port=None, ram=None):
    sink = RecordingIrqSink()
    clock = Clock()
    ram = ram or FakeRam()
    nic = E1000(ram, IrqLine(sink, 11), clock, mac=MAC, port=port or FakePort(), mmio_base=MMIO)
    return nic, ram, sink, clock


def irq(sink) -> bool:
    return sink.levels.get(11, False)


# -- identity, EEPROM, PHY ------------------------------------------------------------


def test_pci_identity_and_bars():
    changes = []
    nic = E1000(FakeRam(), IrqLine(), Clock(), on_bar_change=lambda *a: changes.append(a))
    assert nic.config_read(0, 4) == 0x100E8086
    assert nic.config_read(0x08, 4) >> 8 == 0x020000
    assert nic.config_read(0x3D, 1) == 1
    assert nic.mmio_base is None
    nic.config_write(PCI_BAR0, 4, 0xFFFFFFFF)
    assert nic.config_read(PCI_BAR0, 4) == 0xFFFE0000  # 128 KiB memory BAR
    nic.config_write(0x14, 4, 0xFFFFFFFF)
    assert nic.config_read(0x14, 4) == 0x0000FFF9  # 8 I/O ports
    nic.config_write(PCI_BAR0, 4, MMIO)
    nic.config_write(0x14, 4, 0xC040)
    nic.config_write(PCI_COMMAND, 2, 0x7)
    assert ("mmio", None, MMIO) in changes and ("io", None, 0xC040) in changes


def eeprom_bitbang(nic: E1000, address: int) -> int:
    """Read one word as Linux's e1000 does: REQ/GNT, then Microwire by hand."""
    nic.io_write(EECD, 4, EECD_REQ)
    assert nic.io_read(EECD, 4) & EECD_GNT
    base = EECD_REQ | EECD_CS

    def clock_bit(bit: int) -> None:
        di = EECD_DI if bit else 0
        nic.io_write(EECD, 4, base | di)
        nic.io_write(EECD, 4, base | di | EECD_SK)
        nic.io_write(EECD, 4, base | di)

    nic.io_write(EECD, 4, base)
    for i in range(2, -1, -1):
        clock_bit((0b110 >> i) & 1)
    for i in range(5, -1, -1):
        clock_bit((address >> i) & 1)
    word = 0
    for _ in range(16):
        nic.io_write(EECD, 4, base | EECD_SK)
        word = word << 1 | bool(nic.io_read(EECD, 4) & EECD_DO)
        nic.io_write(EECD, 4, base)
    nic.io_write(EECD, 4, 0)
    return word


def test_eeprom_holds_mac_and_checksum_by_microwire_and_eerd():
    nic, *_ = make()
    words = [eeprom_bitbang(nic, a) for a in range(64)]
    assert sum(words) & 0xFFFF == 0xBABA
    assert b"".join(w.to_bytes(2, "little") for w in words[:3]) == MAC
    nic.io_write(EERD, 4, 1 << 8 | 1)
    value = nic.io_read(EERD, 4)
    assert value & 0x10 and value >> 16 == words[1]


def mdic(nic: E1000, reg: int, write: int | None = None, phy: int = 1) -> int:
    op = (1 << 26 | write) if write is not None else 2 << 26
    nic.io_write(MDIC, 4, op | reg << 16 | phy << 21)
    return nic.io_read(MDIC, 4)


def test_phy_identity_link_and_bad_address():
    nic, *_ = make()
    assert mdic(nic, 2) & 0xFFFF == 0x0141 and mdic(nic, 3) & 0xFFF0 == 0x0C20
    status = mdic(nic, 1)
    assert status & (1 << 28) and status & 0x24 == 0x24  # ready; link up, autoneg done
    mdic(nic, 0, write=0x1340)  # restart autonegotiation
    assert mdic(nic, 0) & 0xFFFF == 0x1140  # the restart bit clears itself
    assert mdic(nic, 1, phy=2) & (1 << 30)  # no PHY there: error
    assert nic.io_read(STATUS, 4) & 0x3 == 0x3  # full duplex, link up


# -- interrupts -----------------------------------------------------------------------


def test_icr_ims_semantics_and_read_to_clear():
    nic, _, sink, _ = make()
    nic.io_write(ICS, 4, ICR_LSC)
    assert not irq(sink)  # masked
    nic.io_write(IMS, 4, ICR_LSC | ICR_RXT0)
    assert irq(sink)
    assert nic.io_read(IMS, 4) == ICR_LSC | ICR_RXT0
    assert nic.io_read(ICR, 4) == ICR_LSC
    assert not irq(sink) and nic.io_read(ICR, 4) == 0
    nic.io_write(ICS, 4, ICR_RXT0)
    assert irq(sink)
    nic.io_write(IMC, 4, ICR_RXT0)
    assert not irq(sink)
    assert nic.io_read(ICR, 4) == ICR_RXT0  # the cause stayed latched while masked


def test_narrow_write_to_icr_clears_only_its_lane():
    nic, _, sink, _ = make()
    nic.io_write(ICS, 4, ICR_LSC | (1 << 9))
    nic.io_write(ICR, 1, ICR_LSC)  # write one to clear, byte 0 only
    assert nic.regs[ICR] == 1 << 9
    nic.io_write(IMS + 1, 1, 0x02)  # byte 1: enables bit 9 and nothing else
    assert nic.io_read(IMS, 4) == 1 << 9 and irq(sink)


def test_itr_throttles_assertions():
    nic, _, sink, clock = make()
    nic.io_write(ITR, 4, 1000)  # 256 us between interrupts
    nic.io_write(IMS, 4, ICR_RXT0)
    nic.io_write(ICS, 4, ICR_RXT0)
    assert irq(sink)
    nic.io_read(ICR, 4)
    nic.io_write(ICS, 4, ICR_RXT0)
    assert not irq(sink)  # too soon
    clock.advance(255_000)
    assert not irq(sink)
    clock.advance(1_000)
    assert irq(sink)


def test_ctrl_reset_restores_defaults():
    nic, _, sink, _ = make()
    nic.io_write(IMS, 4, ICR_LSC)
    nic.io_write(ICS, 4, ICR_LSC)
    nic.io_write(RCTL, 4, RCTL_EN)
    nic.io_write(CTRL, 4, CTRL_RST)
    assert nic.io_read(RCTL, 4) == 0 and nic.io_read(IMS, 4) == 0 and not irq(sink)
    assert not nic.io_read(CTRL, 4) & CTRL_RST


# -- receive --------------------------------------------------------------------------

RX_RING, RX_BUFS = 0x10000, 0x20000
TX_RING, TX_BUFS = 0x40000, 0x50000


def setup_rx(nic: E1000, ram: FakeRam, count: int = 8, rctl: int = RCTL_EN | RCTL_BAM,
             tail: int | None = None) -> None:
    for i in range(count):
        ram.write(RX_RING + 16 * i, struct.pack("<QQ", RX_BUFS + 0x800 * i, 0))
    nic.io_write(RDBAL, 4, RX_RING)
    nic.io_write(RDBAH, 4, 0)
    nic.io_write(RDLEN, 4, 16 * count)
    nic.io_write(RDH, 4, 0)
    nic.io_write(RDT, 4, count - 1 if tail is None else tail)
    nic.io_write(IMS, 4, ICR_RXT0 | ICR_RXO)
    nic.io_write(RCTL, 4, rctl)


def rx_desc(ram: FakeRam, i: int) -> tuple[int, int, int]:
    addr, length, _, status, errors, _ = struct.unpack("<QHHBBH", ram.read(RX_RING + 16 * i, 16))
    return length, status, addr


def frame_to(dest: bytes, payload: bytes = b"hello e1000") -> bytes:
    return dest + bytes.fromhex("525400abcdef") + b"\x08\x00" + payload


def test_receive_writes_buffer_descriptor_fcs_and_interrupt():
    nic, ram, sink, _ = make()
    setup_rx(nic, ram)
    frame = frame_to(MAC, bytes(range(100)))
    nic.receive(frame)
    length, status, addr = rx_desc(ram, 0)
    assert status & 0x3 == 0x3  # DD, EOP
    assert length == len(frame) + 4
    stored = ram.read(addr, length)
    assert stored[:-4] == frame and stored[-4:] == struct.pack("<I", zlib.crc32(frame))
    assert nic.io_read(RDH, 4) == 1 and irq(sink)
    assert nic.io_read(ICR, 4) & ICR_RXT0


def test_receive_pads_short_frames_and_strips_fcs_when_asked():
    nic, ram, _, _ = make()
    setup_rx(nic, ram, rctl=RCTL_EN | RCTL_SECRC)
    nic.receive(frame_to(MAC, b"x"))
    assert rx_desc(ram, 0)[0] == 60


def test_receive_filters_other_unicast_and_broadcast_without_bam():
    nic, ram, _, _ = make()
    setup_rx(nic, ram, rctl=RCTL_EN)
    nic.receive(frame_to(bytes.fromhex("525400999999")))
    nic.receive(frame_to(b"\xff" * 6))
    assert nic.io_read(RDH, 4) == 0
    nic.io_write(RCTL, 4, RCTL_EN | RCTL_BAM)
    nic.receive(frame_to(b"\xff" * 6))
    assert nic.io_read(RDH, 4) == 1


def test_multicast_table_hash():
    nic, ram, _, _ = make()
    setup_rx(nic, ram, rctl=RCTL_EN)
    group = bytes.fromhex("01005e000001")  # 224.0.0.1
    nic.receive(frame_to(group))
    assert nic.io_read(RDH, 4) == 0
    bit = ((group[4] >> 4) | (group[5] << 4)) & 0xFFF  # MO = 0: bits 47:36
    nic.io_write(MTA + 4 * (bit >> 5), 4, 1 << (bit & 31))
    nic.receive(frame_to(group))
    assert nic.io_read(RDH, 4) == 1


def test_full_ring_queues_then_drops_with_rxo():
    nic, ram, sink, _ = make()
    setup_rx(nic, ram, tail=3)  # 3 descriptors for the hardware
    for i in range(3 + RX_QUEUE_LIMIT + 2):
        nic.receive(frame_to(MAC, bytes([i]) * 20))
    assert nic.io_read(RDH, 4) == 3
    assert len(nic.rx_pending) == RX_QUEUE_LIMIT
    assert nic.io_read(ICR, 4) & ICR_RXO
    assert nic.io_read(MPC, 4) == 2
    # Software gives two more descriptors: the first queued frames move in, in order.
    nic.io_write(RDT, 4, 5)
    assert nic.io_read(RDH, 4) == 5 and len(nic.rx_pending) == RX_QUEUE_LIMIT - 2
    length, status, addr = rx_desc(ram, 3)
    assert status & 1 and ram.read(addr + 14, 1) == bytes([3])


def test_frame_larger_than_buffer_spans_descriptors():
    nic, ram, _, _ = make()
    setup_rx(nic, ram, rctl=RCTL_EN | (3 << 16))  # 256-byte buffers
    frame = frame_to(MAC, bytes(600))
    nic.receive(frame)
    pieces = [rx_desc(ram, i) for i in range(3)]
    assert [p[0] for p in pieces] == [256, 256, len(frame) + 4 - 512]
    assert [p[1] & 2 for p in pieces] == [0, 0, 2]  # EOP on the last only


def test_receive_buffer_outside_ram_is_dropped_not_written():
    nic, ram, _, _ = make()
    setup_rx(nic, ram)
    ram.write(RX_RING, struct.pack("<Q", RAM_SIZE - 10))
    nic.receive(frame_to(MAC))
    assert ram.outside and nic.io_read(RDH, 4) == 1  # descriptor consumed, frame lost
    assert nic.io_read(0x4074, 4) == 0  # not counted as good


def test_poll_pulls_frames_from_the_back_end():
    port = FakePort()
    nic, ram, _, _ = make(port=port)
    setup_rx(nic, ram)
    port.incoming.extend([frame_to(MAC, b"a" * 10), frame_to(MAC, b"b" * 10)])
    nic.poll()
    assert nic.io_read(RDH, 4) == 2 and not port.incoming


# -- transmit -------------------------------------------------------------------------


def setup_tx(nic: E1000, count: int = 8) -> None:
    nic.io_write(TDBAL, 4, TX_RING)
    nic.io_write(TDBAH, 4, 0)
    nic.io_write(TDLEN, 4, 16 * count)
    nic.io_write(TDH, 4, 0)
    nic.io_write(TDT, 4, 0)
    nic.io_write(IMS, 4, ICR_TXDW)
    nic.io_write(TCTL, 4, TCTL_EN)


def legacy(ram: FakeRam, i: int, data: bytes, cmd: int, at: int | None = None) -> None:
    at = TX_BUFS + 0x800 * i if at is None else at
    ram.write(at, data)
    ram.write(TX_RING + 16 * i, struct.pack("<QHBBBBH", at, len(data), 0, cmd, 0, 0, 0))


EOP, IFCS, RS, DEXT, TSE = 0x01, 0x02, 0x08, 0x20, 0x04


def test_transmit_legacy_gathers_and_writes_back_dd():
    port = FakePort()
    nic, ram, sink, _ = make(port=port)
    setup_tx(nic)
    frame = frame_to(b"\xff" * 6, bytes(range(80)))
    legacy(ram, 0, frame[:30], IFCS)
    legacy(ram, 1, frame[30:], IFCS | EOP | RS)
    nic.io_write(TDT, 4, 2)
    assert port.sent == [frame]
    assert nic.io_read(TDH, 4) == 2
    assert ram.read(TX_RING + 16 + 12, 1)[0] & 1  # DD on the RS descriptor
    assert irq(sink) and nic.io_read(ICR, 4) & (ICR_TXDW | ICR_TXQE) == ICR_TXDW | ICR_TXQE


def ipv4_tcp(payload: bytes, flags: int = 0x18) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(payload), 0x1234, 0, 64, 6, 0,
                     bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2]))
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1000, 0, 5 << 4, flags, 65535, 0, 0)
    return frame_to(b"\x52\x55\x0a\x00\x02\x02", b"")[:12] + b"\x08\x00" + ip + tcp + payload


def pseudo_sum(frame: bytes, length: int | None) -> int:
    ip = frame[14:34]
    total = checksum16(ip[12:20]) + 6 + (0 if length is None else length)
    return checksum16(b"", total)


def tcp_ok(frame: bytes) -> bool:
    segment = frame[34:]
    return checksum16(segment, pseudo_sum(frame, len(segment))) == 0xFFFF


def context(ram: FakeRam, i: int, *, tucmd: int, paylen: int = 0, hdrlen: int = 0,
            mss: int = 0) -> None:
    word2 = paylen | 0 << 20 | (tucmd | DEXT) << 24
    ram.write(TX_RING + 16 * i, struct.pack("<BBHBBHIBBH", 14, 24, 33, 34, 50, 0, word2,
                                            0, hdrlen, mss))


def data_desc(ram: FakeRam, i: int, data: bytes, dcmd: int, popts: int) -> None:
    at = TX_BUFS + 0x800 * i
    ram.write(at, data)
    word2 = len(data) | 1 << 20 | (dcmd | DEXT) << 24
    ram.write(TX_RING + 16 * i, struct.pack("<QIBBH", at, word2, 0, popts, 0))


def test_tcp_checksum_offload():
    port = FakePort()
    nic, ram, _, _ = make(port=port)
    setup_tx(nic)
    frame = bytearray(ipv4_tcp(b"payload!" * 10))
    frame[50:52] = pseudo_sum(bytes(frame), len(frame) - 34).to_bytes(2, "big")  # driver's seed
    context(ram, 0, tucmd=0x03)  # TCP, IPv4
    data_desc(ram, 1, bytes(frame), EOP | IFCS | RS, popts=0x02)  # TXSM
    nic.io_write(TDT, 4, 2)
    assert len(port.sent) == 1 and tcp_ok(port.sent[0])


def test_tso_segments_at_mss_with_fixed_headers():
    port = FakePort()
    nic, ram, _, _ = make(port=port)
    setup_tx(nic)
    payload = bytes(i & 0xFF for i in range(3000))
    frame = bytearray(ipv4_tcp(payload, flags=0x19))  # PSH, FIN, ACK
    frame[50:52] = pseudo_sum(bytes(frame), None).to_bytes(2, "big")  # seed without length
    context(ram, 0, tucmd=0x03 | TSE, paylen=len(payload), hdrlen=54, mss=1000)
    data_desc(ram, 1, bytes(frame[:54]), TSE | IFCS, popts=0x03)
    data_desc(ram, 2, bytes(frame[54:]), TSE | IFCS | EOP | RS, popts=0x03)
    nic.io_write(TDT, 4, 3)
    assert len(port.sent) == 3
    got = b""
    for n, seg in enumerate(port.sent):
        assert checksum16(seg[14:34]) == 0xFFFF  # IP header checksum
        assert int.from_bytes(seg[16:18], "big") == len(seg) - 14
        assert int.from_bytes(seg[18:20], "big") == 0x1234 + n
        assert int.from_bytes(seg[38:42], "big") == 1000 + 1000 * n
        assert seg[47] & 0x09 == (0x09 if n == 2 else 0)
        assert tcp_ok(seg)
        got += seg[54:]
    assert got == payload


def test_transmit_stalls_when_back_end_is_full_then_resumes():
    port = FakePort(limit=1)
    nic, ram, _, _ = make(port=port)
    setup_tx(nic)
    for i in range(3):
        legacy(ram, i, frame_to(b"\xff" * 6, bytes([i]) * 50), EOP | RS)
    nic.io_write(TDT, 4, 3)
    assert len(port.sent) == 1 and nic.io_read(TDH, 4) == 1 and nic.tx_stalled
    port.limit = 10
    nic.poll()
    assert [f[14] for f in port.sent] == [0, 1, 2] and nic.io_read(TDH, 4) == 3


def test_transmit_walk_is_bounded_per_call():
    port = FakePort(limit=10_000)
    nic, ram, _, clock = make(port=port)
    count = TX_DESCRIPTORS_PER_SLICE * 2 + 8
    setup_tx(nic, count=count)
    for i in range(count):
        ram.write(TX_RING + 16 * i, struct.pack("<QHBBBBH", TX_BUFS, 60, 0, EOP, 0, 0, 0))
    nic.io_write(TDT, 4, count - 1)
    assert len(port.sent) == TX_DESCRIPTORS_PER_SLICE
    clock.advance(0)  # the deferred walk runs at the machine's next stop
    clock.advance(0)
    clock.advance(0)
    assert len(port.sent) == count - 1


def test_descriptor_pointing_outside_ram_drops_packet():
    port = FakePort()
    nic, ram, _, _ = make(port=port)
    setup_tx(nic)
    legacy(ram, 0, b"", EOP | RS, at=0)
    ram.write(TX_RING, struct.pack("<Q", RAM_SIZE - 4))  # a 0-length fix-up below
    ram.write(TX_RING + 8, struct.pack("<H", 100))
    legacy(ram, 1, frame_to(b"\xff" * 6), EOP)
    nic.io_write(TDT, 4, 2)
    assert ram.outside
    assert len(port.sent) == 1 and nic.io_read(TDH, 4) == 2


def test_ring_outside_ram_and_head_past_ring():
    port = FakePort()
    nic, ram, _, _ = make(port=port)
    setup_tx(nic)
    nic.io_write(TDBAL, 4, RAM_SIZE - 32)
    nic.io_write(TDT, 4, 5)  # descriptors 2.. lie past the end of RAM
    assert nic.io_read(TDH, 4) == 5 and not port.sent
    nic.io_write(TDH, 4, 100)  # past the ring: stopped, nothing read
    nic.io_write(TDT, 4, 6)
    assert nic.io_read(TDH, 4) == 100


def test_parse_mac():
    assert parse_mac("52:54:00:12:34:56") == MAC
    with pytest.raises(ValueError, match="invalid MAC"):
        parse_mac("52:54:00:12:34")
    with pytest.raises(ValueError, match="multicast"):
        parse_mac("01:00:00:00:00:01")


# -- fuzz -----------------------------------------------------------------------------

REGISTERS = [CTRL, ICR, ICS, IMS, IMC, ITR, RCTL, TCTL, RDBAL, RDBAH, RDLEN, RDH, RDT,
             TDBAL, TDBAH, TDLEN, TDH, TDT, EECD, EERD, MDIC, MTA, 0x5400, 0x5404]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("w"), st.sampled_from(REGISTERS), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("w"), st.integers(0, 0x1FFFF), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("r"), st.integers(0, 0x1FFFC), st.just(0)),
    st.tuples(st.just("rx"), st.integers(14, 3000), st.integers(0, 255)),
    st.tuples(st.just("ram"), st.integers(0, (1 << 16) - 16), st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("tick"), st.integers(0, 10_000_000), st.just(0)),
), max_size=60), small_ring=st.booleans())
def test_fuzz_rings_and_registers_stay_inside_ram(ops, small_ring):
    ram = FakeRam(1 << 16)
    port = FakePort(limit=50)
    nic, ram, sink, clock = make(port=port, ram=ram)
    nic.io_write(RDBAL, 4, 0x100 if small_ring else 0xFF80)
    nic.io_write(TDBAL, 4, 0x800)
    nic.io_write(RDLEN, 4, 0x80 if small_ring else 0x100)
    nic.io_write(TDLEN, 4, 0x80)
    nic.io_write(RCTL, 4, RCTL_EN | RCTL_BAM)
    nic.io_write(TCTL, 4, TCTL_EN)
    for kind, a, b in ops:
        if kind == "w":
            nic.io_write(a & ~3, 4, b)
        elif kind == "r":
            nic.io_read(a, 4)
        elif kind == "rx":
            nic.receive(bytes([b]) * 6 + MAC + bytes(a))  # broadcast-ish or any destination
            nic.receive(MAC + bytes(a))
        elif kind == "ram":
            ram.write(a, b.to_bytes(8, "little") + (b >> 3).to_bytes(8, "little"))
        else:
            clock.advance(a)
        nic.poll()
        assert len(nic.rx_pending) <= RX_QUEUE_LIMIT
        assert len(nic.tx_packet) <= 0x10000 + 256 + 0x100000
        if not nic._throttle.armed:  # the line follows ICR & IMS
            assert irq(sink) == bool(nic.regs.get(ICR, 0) & nic.regs.get(IMS, 0))


# -- saved state ---------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x5FFF).map(lambda r: r * 4),
                          st.integers(0, 0xFFFFFFFF)), max_size=60))
def test_state_round_trips_into_a_fresh_nic(writes):
    nic, _, _, clock = make()
    nic.config_write(PCI_COMMAND, 2, 0x7)
    for offset, value in writes:
        if offset in (0x0000,):  # CTRL: a device reset bit would make this test trivial
            value &= ~(1 << 26)
        nic.io_write(offset, 4, value)
    state = nic.save_state()
    other, _, _, _ = make()
    other.load_state(state)
    assert other.save_state() == state
    offsets = sorted({o for o, _ in writes} | {0x0008, 0x00C0, 0x00D0, 0x0400, 0x2818})
    assert [other.io_read(o, 4) for o in offsets] == [nic.io_read(o, 4) for o in offsets]
