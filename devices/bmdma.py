"""PIIX IDE function (PCI 00:01.1) and its bus-master IDE DMA engine.

Register names follow the Intel 82371AB (PIIX4) / 82371SB (PIIX3) data sheets
(section "Bus master IDE I/O registers") and the SFF-8038i "Bus Master
Programming Interface for IDE ATA Controllers".

The function decodes the legacy ports of both channels (programming interface
0x80: compatibility mode, not switchable) and one 16-byte I/O block at BAR4:

======= ======= ===============================================================
offset  size    register (primary channel at 0-7, secondary at 8-15)
======= ======= ===============================================================
0       byte    BMICOM command: bit 0 start/stop, bit 3 direction (1 = write memory)
2       byte    BMISTA status: bit 0 active (RO), bit 1 error, bit 2 interrupt
                (both write one to clear), bits 5/6 drive 0/1 DMA capable (RW)
4       dword   BMIDTP descriptor table pointer, bits 31:2
======= ======= ===============================================================

A physical region descriptor (PRD) is 8 bytes in guest memory: the region's
physical address (bit 0 zero), its byte count in bits 15:0 of the second dword
(bit 0 zero, 0 meaning 64 KiB) and, in bit 31, end of table (EOT).

Transfers are synchronous: once a drive has a DMA command and the start bit
is set, the whole transfer runs inside the port write that completed the
pair, and the drive's completion interrupt is raised before it returns.  At
completion the status follows the data sheet: interrupt set; active cleared
if the PRD table was used up exactly, left set if the table was longer.  A
table shorter than the transfer clears active without an interrupt; a memory
error (``memory`` raising ValueError) sets error and interrupt.  The direction
bit is stored but the drive's command decides which way data moves.

Wiring (the machine's side)::

    piix = PiixIde(memory, ide0, ide1, bmdma_base=0xC000, on_bar_change=remap)
    bus.add(1, 1, piix)          # 00:01.1, next to Piix3IsaBridge at 00:01.0

    def remap(old, new):         # called from __init__ too when bmdma_base is given
        if old is not None:
            release ports old .. old+15
        if new is not None:
            claim ports new .. new+15 for piix.bmdma_ports (skip or log a clash)

``memory`` (:class:`~.base.PhysicalMemory`) may also be set later through
``piix.memory``.  Legacy ports and IRQs 14/15 stay wired to the channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import Device, PhysicalMemory
from .pci import (
    BAR_IO_SPACE,
    CMD_IO,
    CMD_MASTER,
    PCI_COMMAND,
    STATUS_DEVSEL_MEDIUM,
    STATUS_FAST_BACK,
    VENDOR_INTEL,
    PciFunction,
)

if TYPE_CHECKING:
    from .ide import IdeChannel

# Bus master registers (offsets within a channel's 8 bytes).
BM_COMMAND = 0
BM_STATUS = 2
BM_PRD_TABLE = 4
BM_CHANNEL_SIZE = 8
BM_PORTS = 16  # both channels

BM_CMD_START = 0x01
BM_CMD_WRITE_MEMORY = 0x08  # "read/write control": 1 = the bus master writes memory
BM_CMD_MASK = BM_CMD_START | BM_CMD_WRITE_MEMORY

BM_ST_ACTIVE = 0x01
BM_ST_ERROR = 0x02
BM_ST_INTERRUPT = 0x04
BM_ST_DRIVE0_DMA = 0x20
BM_ST_DRIVE1_DMA = 0x40
BM_ST_SIMPLEX = 0x80  # read-only zero: both channels may run at once

PRD_SIZE = 8
PRD_EOT = 0x80000000
PRD_TABLE_MASK = 0xFFFFFFFC
PRD_ADDRESS_MASK = 0xFFFFFFFE
PRD_COUNT_MASK = 0xFFFE
PRD_MAX_COUNT = 0x10000  # a byte count of 0 means 64 KiB

# PIIX IDE configuration registers.
DEVICE_PIIX3_IDE = 0x7010
CLASS_IDE_LEGACY = 0x010180  # mass storage, IDE, prog-if 80h: bus master, both channels legacy
PCI_BAR4 = 0x20  # BMIBA: bus master interface base address
# A 16-byte I/O block.  The 82371AB hardwires bits 31:16 to zero, but QEMU's PIIX
# keeps them writable and PCI firmware written against it (SeaBIOS) sizes the BAR
# as ~(readback & ~3) + 1, which the hardwired zeros turn into 4 GiB - 64 KiB; so
# they are writable here too, and a base above 0xFFF0 decodes nowhere.
BAR4_WRITABLE = 0xFFFFFFF0
IO_SPACE_TOP = 0xFFFF
IDETIM_PRIMARY = 0x40
IDETIM_SECONDARY = 0x42
IDETIM_DECODE_ENABLE = 0x8000
SIDETIM = 0x44
UDMACTL = 0x48  # PIIX4
UDMATIM = 0x4A  # PIIX4

STATE_VERSION = 1


class BusMasterChannel:
    """The DMA engine of one IDE channel: its three registers and the PRD walker.

    :class:`~.ide.IdeChannel.attach_bus_master` links it to its channel; the
    channel calls :meth:`scatter` / :meth:`gather` to move data and
    :meth:`complete` / :meth:`underrun` at the end.
    """

    def __init__(self, memory: PhysicalMemory | None) -> None:
        self.memory = memory
        self.ide: IdeChannel | None = None
        self.reset()

    def reset(self) -> None:
        """Power-on: stopped, status and table pointer zero."""
        self.command = 0
        self.status = 0
        self.prd_table = 0
        self._rewind()

    def _rewind(self) -> None:
        """Point the walker at the first descriptor of the table."""
        self.prd_next = self.prd_table  # address of the next descriptor to fetch
        self.region_address = 0  # where the current region continues
        self.region_left = 0  # bytes left in the current region
        self.region_last = False  # the current region is the last (EOT)
        self.failed = False  # a memory access failed in this transfer

    @property
    def running(self) -> bool:
        """The start bit: the engine may move data."""
        return bool(self.command & BM_CMD_START)

    @property
    def table_used_up(self) -> bool:
        return self.region_last and self.region_left == 0

    # -- registers ----------------------------------------------------------------

    def read_register(self, offset: int) -> int:
        """One byte of the channel's 8 (reserved bytes read zero)."""
        if offset == BM_COMMAND:
            return self.command
        if offset == BM_STATUS:
            return self.status
        if BM_PRD_TABLE <= offset < BM_CHANNEL_SIZE:
            return (self.prd_table >> (8 * (offset - BM_PRD_TABLE))) & 0xFF
        return 0

    def write_register(self, offset: int, value: int) -> None:
        """One byte of the channel's 8."""
        if offset == BM_COMMAND:
            self._write_command(value)
        elif offset == BM_STATUS:
            kept = self.status & (BM_ST_ACTIVE | ((BM_ST_ERROR | BM_ST_INTERRUPT) & ~value))
            self.status = kept | (value & (BM_ST_DRIVE0_DMA | BM_ST_DRIVE1_DMA))
        elif BM_PRD_TABLE <= offset < BM_CHANNEL_SIZE:
            shift = 8 * (offset - BM_PRD_TABLE)
            table = (self.prd_table & ~(0xFF << shift)) | (value << shift)
            self.prd_table = table & PRD_TABLE_MASK

    def _write_command(self, value: int) -> None:
        old = self.command
        self.command = value & BM_CMD_MASK
        if self.command & BM_CMD_START and not old & BM_CMD_START:
            self.status |= BM_ST_ACTIVE
            self._rewind()
            if self.ide is not None:
                self.ide.dma_ready()
        elif old & BM_CMD_START and not self.command & BM_CMD_START:
            self.status &= ~BM_ST_ACTIVE  # stopping aborts nothing: transfers are done

    # -- the PRD walker -------------------------------------------------------------

    def _next_region(self) -> bool:
        """Fetch the next descriptor; False at the end of the table or on a memory error."""
        if self.region_last or self.memory is None:
            self.failed = self.failed or self.memory is None
            return False
        try:
            entry = self.memory.read(self.prd_next, PRD_SIZE)
        except (ValueError, IndexError):
            self.failed = True
            return False
        self.prd_next = (self.prd_next + PRD_SIZE) & 0xFFFFFFFF
        flags = int.from_bytes(entry[4:8], "little")
        self.region_address = int.from_bytes(entry[0:4], "little") & PRD_ADDRESS_MASK
        self.region_left = (flags & PRD_COUNT_MASK) or PRD_MAX_COUNT
        self.region_last = bool(flags & PRD_EOT)
        return True

    def _regions(self, n: int) -> list[tuple[int, int]]:
        """Claim up to ``n`` bytes of the table as (address, length) pieces."""
        pieces = []
        while n > 0:
            if self.region_left == 0 and not self._next_region():
                break
            length = min(n, self.region_left)
            pieces.append((self.region_address, length))
            self.region_address = (self.region_address + length) & 0xFFFFFFFF
            self.region_left -= length
            n -= length
        return pieces

    def scatter(self, data: bytes) -> int:
        """Device to memory: store ``data`` through the table; return the bytes stored."""
        done = 0
        view = memoryview(data)
        for address, length in self._regions(len(data)):
            assert self.memory is not None
            try:
                self.memory.write(address, bytes(view[done:done + length]))
            except (ValueError, IndexError):
                self.failed = True
                break
            done += length
        return done

    def gather(self, n: int) -> bytes:
        """Memory to device: up to ``n`` bytes from the regions of the table."""
        out = bytearray()
        for address, length in self._regions(n):
            assert self.memory is not None
            try:
                out += self.memory.read(address, length)
            except (ValueError, IndexError):
                self.failed = True
                break
        return bytes(out)

    def complete(self) -> None:
        """The drive finished (and interrupted): set interrupt, and error after a
        memory failure; the engine goes inactive if the table is used up or failed."""
        self.status |= BM_ST_INTERRUPT
        if self.failed:
            self.status |= BM_ST_ERROR
        if self.failed or self.table_used_up:
            self.status &= ~BM_ST_ACTIVE

    def underrun(self) -> None:
        """The table ended before the transfer: inactive, no interrupt."""
        self.status &= ~BM_ST_ACTIVE

    # -- saved state ------------------------------------------------------------------

    _SAVED = ("command", "status", "prd_table", "prd_next", "region_address", "region_left",
              "region_last", "failed")

    def save_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._SAVED}

    def load_state(self, state: dict[str, Any]) -> None:
        for name in self._SAVED:
            setattr(self, name, type(getattr(self, name))(state[name]))


class BusMasterPorts(Device):
    """The 16-byte BAR4 I/O block: primary channel at 0-7, secondary at 8-15.

    Any access size works; a wide access acts on consecutive byte registers.
    """

    name = "piix-bmdma"

    def __init__(self, channels: tuple[BusMasterChannel, BusMasterChannel]) -> None:
        self.channels = channels

    def io_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            at = (offset + i) & (BM_PORTS - 1)
            byte = self.channels[at >> 3].read_register(at & 7)
            value |= byte << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        # Write the table pointer and status before the command byte of a wide
        # write, so that a dword write that also sets start sees them.
        order = sorted(range(size), key=lambda i: ((offset + i) & 7) == BM_COMMAND)
        for i in order:
            at = (offset + i) & (BM_PORTS - 1)
            self.channels[at >> 3].write_register(at & 7, (value >> (8 * i)) & 0xFF)


class PiixIde(PciFunction):
    """PIIX3 IDE function (8086:7010), PCI 00:01.1, legacy ports plus bus-master DMA.

    ``primary`` / ``secondary`` are the :class:`~.ide.IdeChannel` objects at
    0x1F0/0x3F6 (IRQ 14) and 0x170/0x376 (IRQ 15); their legacy ports are
    always decoded.  ``memory`` is the guest's physical memory for DMA.

    BAR4 (offset 0x20) holds the base of :attr:`bmdma_ports` (16 I/O ports).
    It powers on unassigned (01h) with the command register zero, as on real
    hardware; ``bmdma_base`` instead starts it programmed and enabled (I/O
    space and bus master), as firmware would leave it.  Whenever the decoded
    base changes -- BAR4 written, or the I/O space enable bit toggled -- the
    function calls ``on_bar_change(old_base, new_base)``, each an int or None
    for "not decoded".  The machine must then release ``old_base .. +15`` and
    claim ``new_base .. +15`` for :attr:`bmdma_ports`.

    IDETIM (0x40, 0x42) powers on with IDE decode enable set, since the legacy
    ports here always decode (a real PIIX waits for firmware to set it, and
    Linux's ata_piix ignores a channel whose bit is clear).
    """

    name = "piix-ide"
    vendor_id = VENDOR_INTEL
    device_id = DEVICE_PIIX3_IDE
    revision = 0x00
    class_code = CLASS_IDE_LEGACY
    command_mask = CMD_IO | CMD_MASTER
    status_reset = STATUS_FAST_BACK | STATUS_DEVSEL_MEDIUM

    def __init__(
        self,
        memory: PhysicalMemory | None,
        primary: IdeChannel | None,
        secondary: IdeChannel | None = None,
        *,
        bmdma_base: int | None = None,
        on_bar_change: Callable[[int | None, int | None], None] | None = None,
    ) -> None:
        if bmdma_base is not None and (bmdma_base & ~BAR4_WRITABLE or not bmdma_base
                                       or bmdma_base > IO_SPACE_TOP):
            raise ValueError(f"bus master base {bmdma_base:#x} is not a 16-byte I/O block")
        self.default_bmdma_base = bmdma_base
        self.on_bar_change = on_bar_change
        self.bus_masters = (BusMasterChannel(memory), BusMasterChannel(memory))
        self.bmdma_ports = BusMasterPorts(self.bus_masters)
        for channel, bus_master in zip((primary, secondary), self.bus_masters, strict=True):
            if channel is not None:
                channel.attach_bus_master(bus_master)
        self.decoded_base: int | None = None
        super().__init__()
        self.set_writable(PCI_BAR4, 4, BAR4_WRITABLE)
        self.set_writable(IDETIM_PRIMARY, 4, 0xFFFFFFFF)  # IDETIM primary and secondary
        self.set_writable(SIDETIM, 1, 0xFF)
        self.set_writable(UDMACTL, 1, 0x0F)
        self.set_writable(UDMATIM, 2, 0x3333)

    @property
    def memory(self) -> PhysicalMemory | None:
        return self.bus_masters[0].memory

    @memory.setter
    def memory(self, memory: PhysicalMemory | None) -> None:
        for bus_master in self.bus_masters:
            bus_master.memory = memory

    @property
    def bmdma_base(self) -> int | None:
        """The I/O base the bus master block decodes at now, or None."""
        base = self.get_config(PCI_BAR4, 4) & BAR4_WRITABLE
        if not self.command & CMD_IO or base == 0 or base > IO_SPACE_TOP:
            return None
        return base

    def reset(self) -> None:
        """Power-on header; both DMA engines stopped (the IDE channels reset themselves)."""
        super().reset()
        self.set_config(PCI_BAR4, 4, BAR_IO_SPACE)
        self.set_config(IDETIM_PRIMARY, 2, IDETIM_DECODE_ENABLE)
        self.set_config(IDETIM_SECONDARY, 2, IDETIM_DECODE_ENABLE)
        if self.default_bmdma_base is not None:
            self.set_config(PCI_BAR4, 4, self.default_bmdma_base | BAR_IO_SPACE)
            self.set_config(PCI_COMMAND, 2, CMD_IO | CMD_MASTER)
        for bus_master in self.bus_masters:
            bus_master.reset()
        self._update_decode()

    def config_written(self, offset: int, size: int) -> None:
        self._update_decode()

    def _update_decode(self) -> None:
        new = self.bmdma_base
        old, self.decoded_base = self.decoded_base, new
        if new != old and self.on_bar_change is not None:
            self.on_bar_change(old, new)

    def save_state(self) -> dict[str, Any]:
        state = super().save_state()
        state["bus_masters"] = [bm.save_state() for bm in self.bus_masters]
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        for bus_master, saved in zip(self.bus_masters, state["bus_masters"], strict=True):
            bus_master.load_state(saved)

    def state_loaded(self) -> None:
        self._update_decode()
