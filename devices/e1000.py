"""Intel 82540EM gigabit Ethernet controller (e1000), a PCI function with DMA descriptor rings.

Register names and bits follow Intel's "PCI/PCI-X Family of Gigabit Ethernet
Controllers Software Developer's Manual" (8254x SDM, rev. 4.0): section 13
(register descriptions, table 13-2), 3.2 (receive descriptors), 3.3 and 3.5
(transmit descriptors, checksum offload, TCP segmentation), 5.2 and 5.6
(EEPROM, its checksum and the Microwire interface), 13.3.2 / 8.4 (MDIC and
the PHY; the 82540EM's PHY answers as a Marvell 88E1011).

Register table (offsets in the 128 KiB memory BAR; the 8-byte I/O BAR gives
IOADDR at 0 and IODATA at 4, an indirect window onto the same registers):

======= ========= ==================================================== ======
offset  name      what                                                 SDM
======= ========= ==================================================== ======
0x0000  CTRL      device control; RST (bit 26) self-clears             13.4.1
0x0008  STATUS    FD, LU, 1000 Mb/s (read only)                        13.4.2
0x0010  EECD      EEPROM bit-bang: SK, CS, DI, DO, REQ, GNT, PRES      13.4.3
0x0014  EERD      EEPROM read: START bit 0, DONE bit 4, ADDR 15:8,     13.4.4
                  DATA 31:16
0x0018  CTRL_EXT  extended control (stored)                            13.4.6
0x0020  MDIC      PHY access: DATA 15:0, REG 20:16, PHY 25:21,         13.4.7
                  OP 27:26, READY 28, IE 29, ERROR 30
0x00C0  ICR       interrupt causes; a read returns and clears them     13.4.17
0x00C4  ITR       minimum interrupt interval in 256 ns units           13.4.18
0x00C8  ICS       a write sets causes                                  13.4.19
0x00D0  IMS       a write enables causes; a read gives the mask        13.4.20
0x00D8  IMC       a write disables causes                              13.4.21
0x0100  RCTL      receive control: EN, UPE, MPE, BAM, BSIZE, BSEX,     13.4.22
                  SECRC, MO, RDMTS
0x0400  TCTL      transmit control: EN, PSP                            13.4.33
0x2800  RDBAL/H   receive ring base; RDLEN 0x2808, RDH 0x2810,         13.4.27-31
                  RDT 0x2818, RDTR 0x2820, RADV 0x282C
0x3800  TDBAL/H   transmit ring base; TDLEN 0x3808, TDH 0x3810,        13.4.38-42
                  TDT 0x3818, TIDV 0x3820, TADV 0x382C
0x4000  stats     statistics counters, cleared on read                 13.7
0x5200  MTA       multicast table, 128 dwords                          13.5.1
0x5400  RAL/RAH   16 receive address pairs; RAH bit 31 = valid         13.5.2
======= ========= ==================================================== ======

Other registers inside the BAR are plain storage (reads return what was
written), which is what a driver that only configures them needs.

Data path.  Receive (SDM 3.2): a frame from the back end is filtered by RA,
MTA, BAM, UPE and MPE; padded to 60 bytes; given its 4-byte FCS unless
RCTL.SECRC is set (Linux's e1000 strips 4 bytes itself); and written to the
buffers of descriptors RDH.. (fewer than RDT), one or more, the last with EOP.
Frames wait in a bounded queue while the ring is full; past it they are
dropped, counting MPC and raising RXO.  Transmit (SDM 3.3): a TDT write walks
descriptors TDH..TDT -- legacy, context and data -- gathers each packet,
inserts the IP and TCP/UDP checksums the context asks for, segments TSO
packets at MSS, and hands frames to the back end; it stops (and resumes
later) when the back end's queue is full, and walks at most
``TX_DESCRIPTORS_PER_SLICE`` descriptors per call so a flooding guest keeps
its vCPU.  Descriptors with RS get DD written back.

Malformed rings or descriptors are never trusted: each ring access is checked
against the ring's length, a head or tail past the ring stops the ring, a
packet longer than ``MAX_PACKET`` is dropped, and every DMA goes through
``memory`` (which raises ValueError outside RAM: the descriptor is then
skipped and the packet dropped).

Interrupts: the line is high while ``ICR & IMS`` is nonzero, but a new
assertion comes no sooner than ITR x 256 ns after the previous one (the
throttle timer runs on the device clock).  RDTR/RADV/TIDV/TADV are stored;
their delays are not modelled, interrupts are throttled only by ITR.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .base import Clock, IrqLine, PhysicalMemory
from .pci import (
    BAR_IO_SPACE,
    CMD_IO,
    CMD_MASTER,
    CMD_MEMORY,
    PCI_BAR0,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_SUBSYSTEM_VENDOR_ID,
    STATUS_DEVSEL_MEDIUM,
    VENDOR_INTEL,
    PciFunction,
)

DEVICE_82540EM = 0x100E
CLASS_ETHERNET = 0x020000
PCI_BAR1 = 0x14
MMIO_SIZE = 0x20000  # 128 KiB
IO_SIZE = 8
MMIO_BAR_MASK = 0xFFFE0000
IO_BAR_MASK = 0x0000FFF8  # 8 I/O ports below 64 KiB

# Registers (SDM table 13-2).
CTRL = 0x0000
STATUS = 0x0008
EECD = 0x0010
EERD = 0x0014
CTRL_EXT = 0x0018
MDIC = 0x0020
ICR = 0x00C0
ITR = 0x00C4
ICS = 0x00C8
IMS = 0x00D0
IMC = 0x00D8
RCTL = 0x0100
TCTL = 0x0400
RDBAL = 0x2800
RDBAH = 0x2804
RDLEN = 0x2808
RDH = 0x2810
RDT = 0x2818
TDBAL = 0x3800
TDBAH = 0x3804
TDLEN = 0x3808
TDH = 0x3810
TDT = 0x3818
STATS_START = 0x4000
STATS_END = 0x4100
MPC = 0x4010  # missed packets
GPRC = 0x4074  # good packets received
GPTC = 0x4080  # good packets transmitted
GORCL = 0x4088
GOTCL = 0x4090
TORL = 0x40C0
TOTL = 0x40C8
TPR = 0x40D0  # total packets received
TPT = 0x40D4  # total packets transmitted
MTA = 0x5200
MTA_ENTRIES = 128
RA = 0x5400
RA_ENTRIES = 16

# CTRL bits.
CTRL_FD = 1 << 0
CTRL_SLU = 1 << 6
CTRL_RST = 1 << 26
CTRL_PHY_RST = 1 << 31

# STATUS bits.
STATUS_FD = 1 << 0
STATUS_LU = 1 << 1
STATUS_SPEED_1000 = 2 << 6

# EECD bits.
EECD_SK = 1 << 0
EECD_CS = 1 << 1
EECD_DI = 1 << 2
EECD_DO = 1 << 3
EECD_REQ = 1 << 6
EECD_GNT = 1 << 7
EECD_PRES = 1 << 8
EECD_WRITABLE = EECD_SK | EECD_CS | EECD_DI | EECD_REQ | 0x30  # 0x30: FWE

EERD_START = 1 << 0
EERD_DONE = 1 << 4

# MDIC fields.
MDIC_DATA = 0xFFFF
MDIC_OP_WRITE = 1 << 26
MDIC_OP_READ = 2 << 26
MDIC_READY = 1 << 28
MDIC_IE = 1 << 29
MDIC_ERROR = 1 << 30
PHY_ADDRESS = 1

# Interrupt causes (ICR, ICS, IMS, IMC).
ICR_TXDW = 1 << 0
ICR_TXQE = 1 << 1
ICR_LSC = 1 << 2
ICR_RXDMT0 = 1 << 4
ICR_RXO = 1 << 6
ICR_RXT0 = 1 << 7
ICR_MDAC = 1 << 9
ICR_VALID = 0x0001F6DF  # the causes an 82540EM has

# RCTL bits.
RCTL_EN = 1 << 1
RCTL_UPE = 1 << 3
RCTL_MPE = 1 << 4
RCTL_RDMTS_SHIFT = 8
RCTL_MO_SHIFT = 12
RCTL_BAM = 1 << 15
RCTL_BSIZE_SHIFT = 16
RCTL_BSEX = 1 << 25
RCTL_SECRC = 1 << 26

# TCTL bits.
TCTL_EN = 1 << 1
TCTL_PSP = 1 << 3

RAH_AV = 1 << 31

# Receive descriptor (SDM 3.2.3): address 0-7, length 8-9, checksum 10-11,
# status 12, errors 13, special 14-15.
DESC_SIZE = 16
RXD_STAT_DD = 1 << 0
RXD_STAT_EOP = 1 << 1
RXD_STAT_IXSM = 1 << 2  # ignore checksum indication

# Transmit descriptors (SDM 3.3): legacy and extended share byte 11 (CMD / DCMD,
# TUCMD) and the DD bit in byte 12; bit 5 of byte 11 is DEXT, bits 23:20 of the
# second dword are DTYP (0 context, 1 data).
TXD_CMD_EOP = 1 << 0
TXD_CMD_IFCS = 1 << 1
TXD_CMD_IC = 1 << 2  # legacy: insert checksum at CSO
TXD_CMD_TSE = 1 << 2  # extended: TCP segmentation
TXD_CMD_RS = 1 << 3
TXD_CMD_DEXT = 1 << 5
TXD_CMD_VLE = 1 << 6
TXD_STAT_DD = 1 << 0
DTYP_CONTEXT = 0
DTYP_DATA = 1
TUCMD_TCP = 1 << 0
TUCMD_IP = 1 << 1  # IPv4 (else IPv6)
POPTS_IXSM = 1 << 0
POPTS_TXSM = 1 << 1

MIN_FRAME = 60  # without the FCS
MAX_PACKET = 0x10000 + 256  # the largest TSO packet plus headers; more is malformed
TX_QUEUE_LIMIT = 256
RX_QUEUE_LIMIT = 64
TX_DESCRIPTORS_PER_SLICE = 256
ITR_UNIT_NS = 256
VLAN_ETHERTYPE = 0x8100

# PHY registers (IEEE 802.3 clause 22 plus the 88E1011's, SDM 13.3.2 tables 13-10...).
PHY_CTRL = 0x00
PHY_STATUS = 0x01
PHY_ID1 = 0x02
PHY_ID2 = 0x03
PHY_AUTONEG_ADV = 0x04
PHY_LP_ABILITY = 0x05
PHY_AUTONEG_EXP = 0x06
PHY_1000T_CTRL = 0x09
PHY_1000T_STATUS = 0x0A
PHY_EXT_STATUS = 0x0F
M88_SPEC_CTRL = 0x10
M88_SPEC_STATUS = 0x11
M88_EXT_SPEC_CTRL = 0x14
PHY_CTRL_RESET = 1 << 15
PHY_CTRL_RESTART_AUTONEG = 1 << 9
PHY_STATUS_LINK = 1 << 2
PHY_STATUS_AUTONEG_DONE = 1 << 5

PHY_RESET_VALUES = {
    PHY_CTRL: 0x1140,  # autoneg enabled, full duplex, 1000 Mb/s
    PHY_STATUS: 0x796D,  # capabilities, autoneg complete, link up
    PHY_ID1: 0x0141,  # Marvell OUI: the 88E1011 Linux's e1000 expects on an 82540
    PHY_ID2: 0x0C20,
    PHY_AUTONEG_ADV: 0x0DE1,
    PHY_LP_ABILITY: 0x45E1,
    PHY_AUTONEG_EXP: 0x000F,
    PHY_1000T_CTRL: 0x0E00,
    PHY_1000T_STATUS: 0x3C00,
    PHY_EXT_STATUS: 0x3000,
    M88_SPEC_CTRL: 0x0068,
    M88_SPEC_STATUS: 0xAC00,  # 1000 Mb/s, full duplex, resolved, link
    M88_EXT_SPEC_CTRL: 0x0D60,
}
PHY_READ_ONLY = {PHY_STATUS, PHY_ID1, PHY_ID2, PHY_LP_ABILITY, PHY_AUTONEG_EXP,
                 PHY_1000T_STATUS, PHY_EXT_STATUS, M88_SPEC_STATUS}

# EEPROM (SDM 5.6): 64 words, MAC address in words 0-2, and word 0x3F makes the
# sum of all 64 equal 0xBABA.  The Microwire READ opcode is 110b (start bit
# included), then 6 address bits, then 16 data bits out on DO.
EEPROM_WORDS = 64
EEPROM_CHECKSUM_WORD = 0x3F
EEPROM_SUM = 0xBABA
EEPROM_ADDRESS_BITS = 6
EEPROM_READ_OPCODE = 0b110
EEPROM_INIT_CONTROL1 = 0x0A
EEPROM_INIT_CONTROL2 = 0x0F
EEPROM_PCI_SUBSYSTEM = 0x0B  # subsystem ID, 0x0C subsystem vendor, 0x0D device ID, 0x0E vendor

STATE_VERSION = 1
STROBE_REGISTERS = frozenset({ICR, ICS, IMS, IMC})  # a write's ones act, its zeros do nothing


class NetPort(Protocol):
    """The NIC's side of a network back end (see ``netbackends``)."""

    def send(self, frame: bytes) -> bool:
        """Queue ``frame`` for the outside; False (frame not taken) if the queue is full."""
        ...

    def receive(self) -> bytes | None:
        """The next frame for the guest, or None."""
        ...


def checksum16(data: bytes | memoryview, initial: int = 0) -> int:
    """The Internet checksum's ones'-complement sum (not complemented) of ``data``."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def eeprom_image(mac: bytes) -> list[int]:
    """The 64 EEPROM words of an 82540EM with ``mac``, checksum included."""
    words = [0] * EEPROM_WORDS
    for i in range(3):
        words[i] = mac[2 * i] | mac[2 * i + 1] << 8
    words[EEPROM_INIT_CONTROL1] = 0x64C0  # FD, no LRST, power management (SDM table 5-2)
    words[EEPROM_PCI_SUBSYSTEM] = 0x0000
    words[EEPROM_PCI_SUBSYSTEM + 1] = VENDOR_INTEL
    words[EEPROM_PCI_SUBSYSTEM + 2] = DEVICE_82540EM
    words[EEPROM_PCI_SUBSYSTEM + 3] = VENDOR_INTEL
    words[EEPROM_INIT_CONTROL2] = 0x3000
    words[EEPROM_CHECKSUM_WORD] = (EEPROM_SUM - sum(words[:EEPROM_CHECKSUM_WORD])) & 0xFFFF
    return words


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` -> 6 bytes; a clear error for anything else or a multicast address."""
    parts = text.split(":")
    try:
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise ValueError
        mac = bytes(int(p, 16) for p in parts)
    except (ValueError, IndexError):
        raise ValueError(f"invalid MAC address {text!r} (use 52:54:00:12:34:56)") from None
    if mac[0] & 1:
        raise ValueError(f"MAC address {text} is a multicast address")
    return mac


class _Microwire:
    """The serial EEPROM behind EECD: READ only (the driver never writes it here)."""

    def __init__(self, words: list[int]) -> None:
        self.words = words
        self.reset()

    def reset(self) -> None:
        self.bits = 0  # bits clocked in since CS rose
        self.shift = 0
        self.out_word: int | None = None
        self.out_bit = 0
        self.do = 1

    def clock(self, cs: bool, sk_rising: bool, di: bool) -> None:
        if not cs:
            self.reset()
            return
        if not sk_rising:
            return
        if self.out_word is not None:
            self.out_bit -= 1
            self.do = (self.out_word >> self.out_bit) & 1 if self.out_bit >= 0 else 0
            return
        self.shift = (self.shift << 1) | int(di)
        self.bits += 1
        if self.bits == 3 + EEPROM_ADDRESS_BITS:
            opcode = self.shift >> EEPROM_ADDRESS_BITS
            if opcode == EEPROM_READ_OPCODE:
                self.out_word = self.words[self.shift & (EEPROM_WORDS - 1)]
                self.out_bit = 16
                self.do = 0  # the dummy zero before the data
            else:
                self.reset()


class E1000(PciFunction):
    """82540EM (8086:100E): BAR0 128 KiB of registers, BAR1 8 I/O ports, INTA# on ``irq``.

    ``memory`` is guest RAM for DMA; ``port`` the back end (or None: the
    cable is plugged into nothing, frames sent are dropped); ``clock`` runs
    the ITR throttle and the deferred transmit walk.  ``mmio_base`` /
    ``io_base`` start the BARs programmed and enabled, as firmware would;
    ``on_bar_change(kind, old, new)`` (kind "mmio" or "io") is called when
    a decoded base changes, so the machine can move the mapping.
    ``irq_line_number`` is what the interrupt line register reports.
    """

    name = "e1000"
    vendor_id = VENDOR_INTEL
    device_id = DEVICE_82540EM
    revision = 0x03
    class_code = CLASS_ETHERNET
    command_mask = CMD_IO | CMD_MEMORY | CMD_MASTER
    status_reset = STATUS_DEVSEL_MEDIUM

    def __init__(
        self,
        memory: PhysicalMemory | None,
        irq: IrqLine,
        clock: Clock,
        *,
        mac: bytes = b"\x52\x54\x00\x12\x34\x56",
        port: NetPort | None = None,
        mmio_base: int | None = None,
        io_base: int | None = None,
        irq_line_number: int = 11,
        on_bar_change: Callable[[str, int | None, int | None], None] | None = None,
    ) -> None:
        if len(mac) != 6:
            raise ValueError("a MAC address has 6 bytes")
        if mmio_base is not None and mmio_base & ~MMIO_BAR_MASK:
            raise ValueError(f"e1000 MMIO base {mmio_base:#x} is not 128 KiB aligned")
        if io_base is not None and (io_base & ~IO_BAR_MASK or not io_base):
            raise ValueError(f"e1000 I/O base {io_base:#x} is not an 8-port block below 64 KiB")
        self.memory = memory
        self.irq = irq
        self.clock = clock
        self.mac = bytes(mac)
        self.port = port
        self.default_mmio_base = mmio_base
        self.default_io_base = io_base
        self.irq_line_number = irq_line_number
        self.on_bar_change = on_bar_change
        self.eeprom = eeprom_image(self.mac)
        self._microwire = _Microwire(self.eeprom)
        self._throttle = clock.timer(self._throttle_expired)
        self._tx_kick = clock.timer(self.transmit)
        self.decoded: dict[str, int | None] = {"mmio": None, "io": None}
        self.regs: dict[int, int] = {}
        self.rx_pending: deque[bytes] = deque()
        self.io_ports = _E1000IoPorts(self)  # before the reset the PCI function runs
        super().__init__()
        self.set_writable(PCI_BAR0, 4, MMIO_BAR_MASK)
        self.set_writable(PCI_BAR1, 4, IO_BAR_MASK)

    # -- PCI configuration -----------------------------------------------------------

    def reset(self) -> None:
        """Power-on: PCI header (BARs as given), MAC registers, PHY and queues."""
        super().reset()
        self.set_config(PCI_BAR1, 4, BAR_IO_SPACE)
        self.set_config(PCI_SUBSYSTEM_VENDOR_ID, 2, VENDOR_INTEL)
        self.set_config(PCI_SUBSYSTEM_VENDOR_ID + 2, 2, 0)
        self.set_config(PCI_INTERRUPT_PIN, 1, 1)  # INTA#
        self.set_config(PCI_INTERRUPT_LINE, 1, self.irq_line_number)
        command = 0
        if self.default_mmio_base is not None:
            self.set_config(PCI_BAR0, 4, self.default_mmio_base)
            command |= CMD_MEMORY | CMD_MASTER
        if self.default_io_base is not None:
            self.set_config(PCI_BAR1, 4, self.default_io_base | BAR_IO_SPACE)
            command |= CMD_IO | CMD_MASTER
        self.set_config(0x04, 2, command)
        self.io_ports.reset()  # IOADDR too: a reset left the guest's selection in place
        self.reset_mac()
        self._update_decode()

    def reset_mac(self) -> None:
        """CTRL.RST: registers to their defaults, queues emptied (the PCI header stays)."""
        self.regs = {CTRL: CTRL_FD | CTRL_SLU | (2 << 8),  # speed 1000
                     EECD: EECD_PRES | EECD_DO,
                     0x1000: 0x00000030,  # PBA: 48 KiB receive, 16 KiB transmit
                     RA: int.from_bytes(self.mac[0:4], "little"),
                     RA + 4: int.from_bytes(self.mac[4:6], "little") | RAH_AV}
        self.phy = dict(PHY_RESET_VALUES)
        self._microwire.reset()
        self._eecd_sk = False
        self.rx_pending.clear()
        self.tx_packet = bytearray()
        self.tx_context: dict[str, int] = {"ipcss": 0, "ipcso": 0, "ipcse": 0, "tucss": 0,
                                           "tucso": 0, "tucse": 0, "tucmd": 0, "paylen": 0,
                                           "hdrlen": 0, "mss": 0}
        self.tx_popts = 0
        self.tx_tse = False
        self._legacy_checksum: tuple[int, int] | None = None
        self.tx_vlan: int | None = None
        self.tx_stalled = False
        self.tx_dropping = False
        self._last_assert: int | None = None
        self._throttle.cancel()
        self._tx_kick.cancel()
        self.irq.lower()

    @property
    def mmio_base(self) -> int | None:
        base = self.get_config(PCI_BAR0, 4) & MMIO_BAR_MASK
        return base if self.command & CMD_MEMORY and base else None

    @property
    def io_base(self) -> int | None:
        base = self.get_config(PCI_BAR1, 4) & IO_BAR_MASK
        return base if self.command & CMD_IO and base else None

    def config_written(self, offset: int, size: int) -> None:
        self._update_decode()

    def state_loaded(self) -> None:
        self._update_decode()

    def _update_decode(self) -> None:
        for kind, new in (("mmio", self.mmio_base), ("io", self.io_base)):
            old = self.decoded[kind]
            self.decoded[kind] = new
            if old != new and self.on_bar_change is not None:
                self.on_bar_change(kind, old, new)

    @property
    def bus_master(self) -> bool:
        return bool(self.command & CMD_MASTER)

    # -- register access ------------------------------------------------------------

    def io_read(self, offset: int, size: int) -> int:
        """An MMIO read of the register BAR (dword registers; narrower reads take lanes)."""
        aligned = offset & ~3
        value = self.read_register(aligned)
        shift = 8 * (offset & 3)
        return (value >> shift) & ((1 << (8 * size)) - 1)

    def io_write(self, offset: int, size: int, value: int) -> None:
        aligned = offset & ~3
        if size < 4:
            shift = 8 * (offset & 3)
            mask = ((1 << (8 * size)) - 1) << shift
            # Set/clear strobes take only the written lanes; other registers keep the rest.
            old = 0 if aligned in STROBE_REGISTERS else self.regs.get(aligned, 0)
            value = (old & ~mask) | ((value << shift) & mask)
        self.write_register(aligned, value & 0xFFFFFFFF)

    def read_register(self, reg: int) -> int:
        regs = self.regs
        if reg == ICR:
            value = regs.get(ICR, 0)
            regs[ICR] = 0  # read to clear (SDM 13.4.17)
            self._update_irq()
            return value
        if reg == STATUS:
            return STATUS_FD | STATUS_LU | STATUS_SPEED_1000
        if reg == IMC or reg == ICS:
            return 0  # write-only
        if STATS_START <= reg < STATS_END:
            return regs.pop(reg, 0)  # clear on read (SDM 13.7)
        return regs.get(reg, 0)

    def write_register(self, reg: int, value: int) -> None:
        regs = self.regs
        if reg == CTRL:
            if value & CTRL_RST:
                self.reset_mac()
                return
            regs[CTRL] = value & ~CTRL_PHY_RST
        elif reg == STATUS:
            return
        elif reg == EECD:
            self._write_eecd(value)
        elif reg == EERD:
            if value & EERD_START:
                address = (value >> 8) & 0xFF
                word = self.eeprom[address] if address < EEPROM_WORDS else 0
                regs[EERD] = word << 16 | address << 8 | EERD_DONE
        elif reg == MDIC:
            self._write_mdic(value)
        elif reg == ICR:
            regs[ICR] = regs.get(ICR, 0) & ~value  # write one to clear
            self._update_irq()
        elif reg == ICS:
            self.set_cause(value)
        elif reg == IMS:
            regs[IMS] = regs.get(IMS, 0) | (value & ICR_VALID)
            self._update_irq()
        elif reg == IMC:
            regs[IMS] = regs.get(IMS, 0) & ~value
            self._update_irq()
        elif reg == RCTL:
            regs[RCTL] = value
            self.deliver_pending()
        elif reg in (RDLEN, TDLEN):
            regs[reg] = value & 0x000FFF80
        elif reg in (RDBAL, TDBAL):
            regs[reg] = value & ~0xF
        elif reg in (RDH, RDT, TDH, TDT):
            regs[reg] = value & 0xFFFF
            if reg == RDT:
                self.deliver_pending()
            elif reg == TDT:
                self.transmit()
        elif reg == TCTL:
            regs[TCTL] = value
            self.transmit()
        elif STATS_START <= reg < STATS_END:
            return  # read-only counters
        elif 0 <= reg < MMIO_SIZE:
            regs[reg] = value

    def _write_eecd(self, value: int) -> None:
        old = self.regs.get(EECD, 0)
        new = (old & ~EECD_WRITABLE) | (value & EECD_WRITABLE)
        if new & EECD_REQ:
            new |= EECD_GNT
        else:
            new &= ~EECD_GNT
        sk = bool(new & EECD_SK)
        self._microwire.clock(bool(new & EECD_CS), sk and not self._eecd_sk, bool(new & EECD_DI))
        self._eecd_sk = sk
        new = (new & ~EECD_DO) | (EECD_DO if self._microwire.do else 0)
        self.regs[EECD] = new | EECD_PRES

    def _write_mdic(self, value: int) -> None:
        phy = (value >> 21) & 0x1F
        reg = (value >> 16) & 0x1F
        op = value & (3 << 26)
        result = value & ~(MDIC_READY | MDIC_ERROR)
        if phy != PHY_ADDRESS or op not in (MDIC_OP_READ, MDIC_OP_WRITE):
            result |= MDIC_ERROR
        elif op == MDIC_OP_READ:
            result = (result & ~MDIC_DATA) | self.phy.get(reg, 0)
        elif reg not in PHY_READ_ONLY:
            data = value & MDIC_DATA
            if reg == PHY_CTRL:
                if data & PHY_CTRL_RESET:
                    self.phy = dict(PHY_RESET_VALUES)
                data &= ~(PHY_CTRL_RESET | PHY_CTRL_RESTART_AUTONEG)  # self-clearing
            self.phy[reg] = data
        self.regs[MDIC] = result | MDIC_READY
        if value & MDIC_IE:
            self.set_cause(ICR_MDAC)

    # -- interrupts ---------------------------------------------------------------------

    def set_cause(self, causes: int) -> None:
        """Latch interrupt causes in ICR (ICS, or the device itself)."""
        self.regs[ICR] = self.regs.get(ICR, 0) | (causes & ICR_VALID)
        self._update_irq()

    def _update_irq(self) -> None:
        pending = self.regs.get(ICR, 0) & self.regs.get(IMS, 0)
        if not pending:
            self.irq.lower()
            return
        if self.irq.level or self._throttle.armed:
            return
        interval = (self.regs.get(ITR, 0) & 0xFFFF) * ITR_UNIT_NS
        now = self.clock.now()
        if interval and self._last_assert is not None and now < self._last_assert + interval:
            self._throttle.arm(self._last_assert + interval)
            return
        self._last_assert = now
        self.irq.raise_()

    def _throttle_expired(self) -> None:
        self._update_irq()

    # -- receive ------------------------------------------------------------------------

    def poll(self) -> None:
        """Pull frames from the back end into the ring and resume a stalled transmit
        (the machine calls this at every stop of the vCPU)."""
        port = self.port
        if port is None:
            return
        while len(self.rx_pending) < RX_QUEUE_LIMIT:
            frame = port.receive()
            if frame is None:
                break
            self.receive(frame)
        if self.tx_stalled:
            self.transmit()

    def receive(self, frame: bytes) -> None:
        """A frame from the wire: filter it, then store it or queue it behind a full ring."""
        if not self.regs.get(RCTL, 0) & RCTL_EN or len(frame) < 14:
            return
        if not self._accept(frame):
            return
        if len(self.rx_pending) >= RX_QUEUE_LIMIT:
            self._count(MPC)
            self.set_cause(ICR_RXO)
            return
        self.rx_pending.append(frame)
        self.deliver_pending()

    def _accept(self, frame: bytes) -> bool:
        rctl = self.regs.get(RCTL, 0)
        dest = frame[:6]
        if dest == b"\xff" * 6:
            return bool(rctl & (RCTL_BAM | RCTL_MPE | RCTL_UPE))
        if dest[0] & 1:
            if rctl & (RCTL_MPE | RCTL_UPE):
                return True
            shift = (4, 3, 2, 0)[(rctl >> RCTL_MO_SHIFT) & 3]
            bit = ((dest[4] >> shift) | (dest[5] << (8 - shift))) & 0xFFF
            return bool(self.regs.get(MTA + 4 * (bit >> 5), 0) >> (bit & 31) & 1)
        if rctl & RCTL_UPE:
            return True
        for i in range(RA_ENTRIES):
            high = self.regs.get(RA + 8 * i + 4, 0)
            if high & RAH_AV:
                low = self.regs.get(RA + 8 * i, 0)
                if dest == low.to_bytes(4, "little") + (high & 0xFFFF).to_bytes(2, "little"):
                    return True
        return False

    def _rx_buffer_size(self) -> int:
        rctl = self.regs.get(RCTL, 0)
        code = (rctl >> RCTL_BSIZE_SHIFT) & 3
        if rctl & RCTL_BSEX and code:
            return (0, 16384, 8192, 4096)[code]
        return (2048, 1024, 512, 256)[code]

    def _ring(self, base_lo: int) -> tuple[int, int] | None:
        """(base address, descriptor count) of a ring, or None if it cannot be used."""
        count = self.regs.get(base_lo + 8, 0) // DESC_SIZE
        if count == 0:
            return None
        return self.regs.get(base_lo, 0) | self.regs.get(base_lo + 4, 0) << 32, count

    def deliver_pending(self) -> None:
        """Store queued frames while the ring has room."""
        while self.rx_pending and self.regs.get(RCTL, 0) & RCTL_EN:
            if not self._store(self.rx_pending[0]):
                break
            self.rx_pending.popleft()

    def _store(self, frame: bytes) -> bool:
        """Write one frame into receive descriptors; False if the ring has no room."""
        ring = self._ring(RDBAL)
        if ring is None or self.memory is None or not self.bus_master:
            return False
        base, count = ring
        head, tail = self.regs.get(RDH, 0), self.regs.get(RDT, 0)
        if head >= count or tail >= count:
            return False  # a head or tail past the ring: the ring is stopped
        data = frame if len(frame) >= MIN_FRAME else frame + bytes(MIN_FRAME - len(frame))
        if not self.regs.get(RCTL, 0) & RCTL_SECRC:
            data += struct.pack("<I", zlib.crc32(data))
        bufsize = self._rx_buffer_size()
        needed = -(-len(data) // bufsize)
        free = (tail - head) % count
        if needed > free:
            return False
        offset = 0
        error = False
        while offset < len(data):
            address = base + head * DESC_SIZE
            piece = data[offset:offset + bufsize]
            offset += len(piece)
            last = offset >= len(data)
            try:
                desc = self.memory.read(address, DESC_SIZE)
                buffer = int.from_bytes(desc[0:8], "little")
                if not error:
                    self.memory.write(buffer, piece)
            except (ValueError, IndexError):
                error = True  # a buffer outside RAM: the frame is lost, the ring moves on
            status = RXD_STAT_DD | RXD_STAT_IXSM | (RXD_STAT_EOP if last else 0)
            try:
                self.memory.write(address + 8, struct.pack("<HHBBH", len(piece), 0, status, 0, 0))
            except (ValueError, IndexError):
                pass
            head = (head + 1) % count
        self.regs[RDH] = head
        if not error:
            self._count(GPRC)
            self._count(TPR)
            self._count(GORCL, len(data))
            self._count(TORL, len(data))
        causes = ICR_RXT0
        threshold = count >> (1 + ((self.regs.get(RCTL, 0) >> RCTL_RDMTS_SHIFT) & 3))
        if (tail - head) % count <= threshold:
            causes |= ICR_RXDMT0
        self.set_cause(causes)
        return True

    def _count(self, reg: int, amount: int = 1) -> None:
        self.regs[reg] = min(self.regs.get(reg, 0) + amount, 0xFFFFFFFF)

    # -- transmit -----------------------------------------------------------------------

    def transmit(self) -> None:
        """Walk the transmit ring from TDH towards TDT (a bounded number of descriptors)."""
        self._tx_kick.cancel()
        self.tx_stalled = False
        if not self.regs.get(TCTL, 0) & TCTL_EN or self.memory is None or not self.bus_master:
            return
        ring = self._ring(TDBAL)
        if ring is None:
            return
        base, count = ring
        head, tail = self.regs.get(TDH, 0), self.regs.get(TDT, 0)
        if head >= count or tail >= count:
            return
        causes = 0
        budget = TX_DESCRIPTORS_PER_SLICE
        while head != tail:
            if budget == 0:
                self._tx_kick.arm(self.clock.now())  # the rest after the vCPU has run
                break
            budget -= 1
            address = base + head * DESC_SIZE
            try:
                desc = self.memory.read(address, DESC_SIZE)
            except (ValueError, IndexError):
                desc = None
            if desc is not None:
                done = self._tx_descriptor(desc)
                if done is None:  # the back end is full: retry this descriptor later
                    self.tx_stalled = True
                    break
                if desc[11] & TXD_CMD_RS:
                    try:
                        self.memory.write(address + 12, bytes([desc[12] | TXD_STAT_DD]))
                    except (ValueError, IndexError):
                        pass
                    causes |= ICR_TXDW
            else:
                self._tx_reset_packet()
            head = (head + 1) % count
            self.regs[TDH] = head
        if head == tail:
            causes |= ICR_TXQE
        if causes:
            self.set_cause(causes)

    def _tx_reset_packet(self) -> None:
        self.tx_packet = bytearray()
        self.tx_dropping = False
        self.tx_vlan = None

    def _tx_descriptor(self, desc: bytes) -> bool | None:
        """Process one descriptor; None if a frame could not be queued (nothing consumed)."""
        cmd = desc[11]
        if cmd & TXD_CMD_DEXT and (desc[10] >> 4) == DTYP_CONTEXT:
            self._tx_context(desc)
            return True
        address = int.from_bytes(desc[0:8], "little")
        if cmd & TXD_CMD_DEXT:
            length = int.from_bytes(desc[8:11], "little") & 0xFFFFF
            if not self.tx_packet:
                self.tx_popts = desc[13]
                self.tx_tse = bool(cmd & TXD_CMD_TSE)
        else:
            length = int.from_bytes(desc[8:10], "little")
            if not self.tx_packet:
                self.tx_popts = 0
                self.tx_tse = False
                if cmd & TXD_CMD_IC:
                    self.tx_popts = POPTS_TXSM
                    self._legacy_checksum = (desc[13], desc[10])  # CSS, CSO
                else:
                    self._legacy_checksum = None
        if len(self.tx_packet) + length > MAX_PACKET:
            self.tx_dropping = True
        if not self.tx_dropping and length:
            try:
                self.tx_packet += self.memory.read(address, length)  # type: ignore[union-attr]
            except (ValueError, IndexError):
                self.tx_dropping = True
        if cmd & TXD_CMD_VLE:
            self.tx_vlan = int.from_bytes(desc[14:16], "little")
        if not cmd & TXD_CMD_EOP:
            return True
        if self.tx_dropping or not self.tx_packet:
            self._tx_reset_packet()
            return True
        frames = self._tx_frames(bytes(self.tx_packet), bool(cmd & TXD_CMD_DEXT))
        if not self._send_all(frames):
            # Undo this descriptor's data so that the retry re-reads it.
            del self.tx_packet[len(self.tx_packet) - length:]
            return None
        self._tx_reset_packet()
        return True

    def _tx_context(self, desc: bytes) -> None:
        c = self.tx_context
        c["ipcss"], c["ipcso"] = desc[0], desc[1]
        c["ipcse"] = int.from_bytes(desc[2:4], "little")
        c["tucss"], c["tucso"] = desc[4], desc[5]
        c["tucse"] = int.from_bytes(desc[6:8], "little")
        c["paylen"] = int.from_bytes(desc[8:11], "little") & 0xFFFFF
        c["tucmd"] = desc[11]
        c["hdrlen"] = desc[13]
        c["mss"] = int.from_bytes(desc[14:16], "little")

    def _tx_frames(self, packet: bytes, extended: bool) -> list[bytes]:
        c = self.tx_context
        if extended and self.tx_tse and c["mss"] and c["tucmd"] & TUCMD_TCP \
                and c["hdrlen"] < len(packet):
            frames = self._segment(packet)
        else:
            frame = bytearray(packet)
            if extended:
                if self.tx_popts & POPTS_IXSM:
                    _insert_checksum(frame, c["ipcss"], c["ipcso"], c["ipcse"])
                if self.tx_popts & POPTS_TXSM:
                    _insert_checksum(frame, c["tucss"], c["tucso"], c["tucse"])
            elif self.tx_popts & POPTS_TXSM and self._legacy_checksum is not None:
                css, cso = self._legacy_checksum
                _insert_checksum(frame, css, cso, 0)
            frames = [frame]
        out = []
        for frame in frames:
            if self.tx_vlan is not None:
                frame[12:12] = struct.pack("!HH", VLAN_ETHERTYPE, self.tx_vlan)
            if self.regs.get(TCTL, 0) & TCTL_PSP and len(frame) < MIN_FRAME:
                frame += bytes(MIN_FRAME - len(frame))
            out.append(bytes(frame))
        return out

    def _segment(self, packet: bytes) -> list[bytearray]:
        """TCP segmentation (SDM 3.5): the header repeated before each MSS of payload,
        with IP length and ID, TCP sequence, flags and both checksums fixed up."""
        c = self.tx_context
        hdrlen, mss = c["hdrlen"], c["mss"]
        ipcss, tucss = c["ipcss"], c["tucss"]
        ipv4 = bool(c["tucmd"] & TUCMD_IP)
        header, payload = packet[:hdrlen], packet[hdrlen:]
        if tucss + 20 > hdrlen or ipcss + (20 if ipv4 else 40) > hdrlen:
            return []  # a context that does not fit its header: malformed, dropped
        ip_id = int.from_bytes(header[ipcss + 4:ipcss + 6], "big")
        seq = int.from_bytes(header[tucss + 4:tucss + 8], "big")
        frames: list[bytearray] = []
        for start in range(0, len(payload), mss):
            chunk = payload[start:start + mss]
            last = start + mss >= len(payload)
            frame = bytearray(header) + chunk
            if ipv4:
                frame[ipcss + 2:ipcss + 4] = (len(frame) - ipcss).to_bytes(2, "big")
                frame[ipcss + 4:ipcss + 6] = ((ip_id + len(frames)) & 0xFFFF).to_bytes(2, "big")
                if self.tx_popts & POPTS_IXSM:
                    _insert_checksum(frame, ipcss, c["ipcso"], hdrlen - 1 if not c["ipcse"]
                                     else c["ipcse"])
            else:
                frame[ipcss + 4:ipcss + 6] = (len(frame) - ipcss - 40).to_bytes(2, "big")
            frame[tucss + 4:tucss + 8] = ((seq + start) & 0xFFFFFFFF).to_bytes(4, "big")
            if not last:
                frame[tucss + 13] &= ~0x09  # FIN and PSH only on the last segment
            if self.tx_popts & POPTS_TXSM:
                # The driver seeds the pseudo-header sum without the length; add it.
                seed = int.from_bytes(frame[c["tucso"]:c["tucso"] + 2], "big")
                seed = checksum16(b"", seed + len(frame) - tucss)
                frame[c["tucso"]:c["tucso"] + 2] = seed.to_bytes(2, "big")
                _insert_checksum(frame, tucss, c["tucso"], 0)
            frames.append(frame)
        return frames

    def _send_all(self, frames: list[bytes]) -> bool:
        port = self.port
        if port is None:
            return True
        for i, frame in enumerate(frames):
            if not port.send(frame):
                if i == 0:
                    return False
                break  # a partly sent TSO burst: the rest is lost, as on a congested wire
            self._count(GPTC)
            self._count(TPT)
            self._count(GOTCL, len(frame))
            self._count(TOTL, len(frame))
        return True

    # -- saved state --------------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        state = super().save_state()
        mw = self._microwire
        state["e1000"] = {"regs": dict(self.regs), "phy": dict(self.phy),
                          "rx_pending": list(self.rx_pending),
                          # A transmit in progress (descriptors before EOP), the EEPROM
                          # wire, the I/O window's address and the timers: without them a
                          # restore in mid-transfer sends a different frame.
                          "ioaddr": self.io_ports.address,
                          "tx_packet": bytes(self.tx_packet), "tx_context": dict(self.tx_context),
                          "tx_popts": self.tx_popts, "tx_tse": self.tx_tse,
                          "tx_vlan": self.tx_vlan, "tx_stalled": self.tx_stalled,
                          "tx_dropping": self.tx_dropping,
                          "legacy_checksum": self._legacy_checksum,
                          "eecd_sk": self._eecd_sk,
                          "microwire": [mw.bits, mw.shift, mw.out_word, mw.out_bit, mw.do],
                          "last_assert": self._last_assert,
                          "throttle_deadline": self._throttle.deadline,
                          "tx_kick_deadline": self._tx_kick.deadline}
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        saved = state["e1000"]
        self.regs = {int(k): int(v) & 0xFFFFFFFF for k, v in saved["regs"].items()}
        self.phy = {int(k): int(v) & 0xFFFF for k, v in saved["phy"].items()}
        self.rx_pending = deque(bytes(f) for f in saved["rx_pending"][:RX_QUEUE_LIMIT])
        self.io_ports.address = int(saved["ioaddr"]) & 0x0001FFFC
        self.tx_packet = bytearray(saved["tx_packet"][:MAX_PACKET])
        self.tx_context = {k: int(saved["tx_context"][k]) for k in self.tx_context}
        self.tx_popts = int(saved["tx_popts"]) & 0xFF
        self.tx_tse = bool(saved["tx_tse"])
        self.tx_vlan = None if saved["tx_vlan"] is None else int(saved["tx_vlan"]) & 0xFFFF
        self.tx_stalled = bool(saved["tx_stalled"])
        self.tx_dropping = bool(saved["tx_dropping"])
        checksum = saved["legacy_checksum"]
        self._legacy_checksum = None if checksum is None else (int(checksum[0]), int(checksum[1]))
        self._eecd_sk = bool(saved["eecd_sk"])
        mw = self._microwire
        mw.bits, mw.shift, mw.out_word, mw.out_bit, mw.do = saved["microwire"]
        self._last_assert = saved["last_assert"]
        for timer, deadline in ((self._throttle, saved["throttle_deadline"]),
                                (self._tx_kick, saved["tx_kick_deadline"])):
            timer.cancel()
            if deadline is not None:
                timer.arm(int(deadline))
        self._update_irq()


def _insert_checksum(frame: bytearray, start: int, offset: int, end: int) -> None:
    """Store the complemented sum of ``frame[start:end + 1]`` (``end`` 0: to the end) at
    ``offset``; a context pointing outside the frame is ignored."""
    stop = len(frame) if end == 0 else min(end + 1, len(frame))
    if start >= stop or offset + 2 > len(frame):
        return
    value = ~checksum16(memoryview(frame)[start:stop]) & 0xFFFF
    frame[offset:offset + 2] = value.to_bytes(2, "big")


class _E1000IoPorts:
    """BAR1: IOADDR (offset 0) selects a register, IODATA (offset 4) reads or writes it
    (SDM 13.2.1)."""

    name = "e1000-io"

    def __init__(self, nic: E1000) -> None:
        self.nic = nic
        self.address = 0

    def reset(self) -> None:
        self.address = 0

    def io_read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.address
        if offset == 4 and size == 4:
            return self.nic.read_register(self.address & (MMIO_SIZE - 4))
        return (1 << (8 * size)) - 1

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & 0x0001FFFC
        elif offset == 4 and size == 4:
            self.nic.write_register(self.address & (MMIO_SIZE - 4), value)
