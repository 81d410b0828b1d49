"""The board: which device sits at which port and IRQ, as on QEMU's ``pc`` machine.

One explicit table of the platform (docs/ARCHITECTURE.md, "The board").  ISA interrupt
lines reach both the 8259 pair and the IOAPIC; the local APIC is what the
vCPU asks for interrupts (it passes the 8259's INTR through as ExtINT /
virtual wire).
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from qemu_lite import devfast
from qemu_lite.acpi import tables as acpi_tables
from qemu_lite.acpi.platform import Platform as AcpiPlatform
from qemu_lite.clock import VirtualClock
from qemu_lite.devices.acpi_pm import PM_BASE, PM_SIZE, AcpiPm
from qemu_lite.devices.backends import SerialBackend, StdioBackend, open_backend
from qemu_lite.devices.base import Device, IrqLine
from qemu_lite.devices.block import BlockImage
from qemu_lite.devices.bmdma import PiixIde
from qemu_lite.devices.debugport import DebugCon, FirmwareEvents, IsaDebugExit, PostCode
from qemu_lite.devices.e1000 import E1000
from qemu_lite.devices.e1000 import MMIO_SIZE as E1000_MMIO_SIZE
from qemu_lite.devices.fw_cfg import FwCfg
from qemu_lite.devices.hpet import HPET_BASE, Hpet
from qemu_lite.devices.i8042 import I8042
from qemu_lite.devices.i8254 import Pit8254
from qemu_lite.devices.i8259 import PicPair
from qemu_lite.devices.ide import CdRom, IdeChannel, IdeMedium
from qemu_lite.devices.ioapic import IoApic, route_to_lapic
from qemu_lite.devices.lapic import LocalApic
from qemu_lite.devices.mc146818 import Rtc
from qemu_lite.devices.netbackends import NetBackend, Nic, PcapWriter, open_netdev
from qemu_lite.devices.pci import (
    PIRQ_RESET_ROUTES,
    I440fxHostBridge,
    PciBus,
    PciConfigPorts,
    Piix3IsaBridge,
    slot_pirq,
)
from qemu_lite.devices.port92 import SystemControlPortA
from qemu_lite.devices.uart16550 import Uart16550
from qemu_lite.devices.vga import Vga
from qemu_lite.display.vgaboard import attach_vga
from qemu_lite.optionroms import OptionRoms, read_option_roms
from qemu_lite.piofast import PioChannel, PioWindowedBlock
from qemu_lite.platform import HostMemory, MmioRange, PciBar, Platform, PortRange, Slot
from qemu_lite.smp import ApicBus, ApicPage

COM1, COM2 = 0x3F8, 0x2F8
IDE0_CMD, IDE0_CTL = 0x1F0, 0x3F6
IDE1_CMD, IDE1_CTL = 0x170, 0x376
ISA_DEBUG_EXIT = 0xF4
DEBUGCON = 0xE9
POST = 0x80
FW_CFG = 0x510
FW_EVENT = 0x5F4  # qemu_lite's own: the BIOS reports "no bootable device" here
FW_CFG_BOOT_DEVICE = 0x0C
FW_CFG_TABLES_FILE = "etc/qemu-lite/tables"  # firmware/bios/tables.inc copies it
PCI_CONFIG = 0xCF8
BMDMA_PORTS = 16
PIC_MASTER, PIC_SLAVE, ELCR = 0x20, 0xA0, 0x4D0
PIT, PORT61 = 0x40, 0x61
I8042_DATA, I8042_CMD = 0x60, 0x64
RTC = 0x70
PORT92 = 0x92
LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000

IRQ_PIT, IRQ_KBD, IRQ_COM2, IRQ_COM1, IRQ_RTC, IRQ_MOUSE, IRQ_IDE0, IRQ_IDE1 = 0, 1, 3, 4, 8, 12, 14, 15
IRQ_SCI = 9  # the ACPI SCI, as on QEMU's pc (FADT SCI_INT)
# RAM below 4 GiB: all of it under 3.5 GiB, else 3 GiB (our BIOS splits it so).
LOWMEM_LIMIT, LOWMEM_SPLIT = 0xE0000000, 0xC0000000
# The NIC, where SeaBIOS leaves QEMU's e1000: PCI 00:03.0, its BARs programmed; its INTA#
# reaches PIRQC, which the PIIX3 routes to IRQ 11 until the guest re-routes it.
NIC_PCI_SLOT = 3
NIC_MMIO, NIC_IO = 0xFEBC0000, 0xC080
NIC_PIRQ = slot_pirq(NIC_PCI_SLOT, 1)
IRQ_NIC = PIRQ_RESET_ROUTES[NIC_PIRQ]
DEFAULT_MAC = bytes.fromhex("525400123456")


class IsaIrqs:
    """The ISA interrupt lines, wired to both the 8259 pair and the IOAPIC as on a PC.

    IRQ 0 reaches IOAPIC pin 2 (the interrupt source override QEMU's tables announce);
    every other ISA IRQ n reaches pin n.  While the HPET's legacy replacement routing is
    on, the HPET drives IRQ 0 and 8 and the PIT's and RTC's outputs are disconnected."""

    def __init__(self, pic: PicPair, ioapic: IoApic) -> None:
        self.pic = pic
        self.ioapic = ioapic
        self.hpet_legacy = False
        self._device_levels = {IRQ_PIT: False, IRQ_RTC: False}
        self._hpet_levels = {IRQ_PIT: False, IRQ_RTC: False}

    def _drive(self, irq: int, level: bool) -> None:
        self.pic.set_irq(irq, level)
        self.ioapic.set_irq(2 if irq == 0 else irq, level)

    def set_irq(self, irq: int, level: bool) -> None:
        if irq in self._device_levels:
            self._device_levels[irq] = level
            if self.hpet_legacy:
                return
        self._drive(irq, level)

    def line(self, irq: int) -> IrqLine:
        return IrqLine(self, irq)

    # The HPET's side (devices/hpet.py's legacy_irqs and on_legacy).

    def set_hpet_irq(self, irq: int, level: bool) -> None:
        self._hpet_levels[irq] = level
        if self.hpet_legacy:
            self._drive(irq, level)

    def set_hpet_legacy(self, enabled: bool) -> None:
        if enabled == self.hpet_legacy:
            return
        self.hpet_legacy = enabled
        levels = self._hpet_levels if enabled else self._device_levels
        for irq, level in levels.items():
            self._drive(irq, level)


class _HpetLegacyLines:
    """IRQ 0 and 8 as the HPET drives them under legacy replacement routing."""

    def __init__(self, irqs: IsaIrqs) -> None:
        self._irqs = irqs

    def set_irq(self, irq: int, level: bool) -> None:
        self._irqs.set_hpet_irq(irq, level)


@dataclass(frozen=True)
class Drive:
    """One IDE drive: ``index`` 0-3 is primary master/slave, secondary master/slave;
    ``None`` takes the lowest index no other drive claims, as QEMU's ``-drive`` does."""

    file: str | os.PathLike[str] | BlockImage
    media: str = "disk"  # or "cdrom"
    index: int | None = None
    readonly: bool = False


def parse_bool(name: str, value: str, option: str = "--drive") -> bool:
    """A boolean option value as QEMU spells it (on/yes/true/y, off/no/false/n)."""
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise ValueError(f"{option}: parameter {name!r} expects 'on' or 'off', not {value!r}")


MACHINE_TYPES = ("pc", "pc-i440fx")


def parse_machine(spec: str) -> dict[str, bool]:
    """QEMU's ``-machine [type=]pc[,hpet=on|off][,acpi=on|off]`` -> the booleans given."""
    out: dict[str, bool] = {}
    for i, part in enumerate(spec.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            if i == 0:
                key, value = "type", part
            else:
                raise ValueError(f"-machine: expected key=value, got {part!r}")
        if key == "type":
            if value not in MACHINE_TYPES:
                raise ValueError(f"-machine: only the pc machine is emulated, not {value!r}")
        elif key in ("hpet", "acpi"):
            if key in out:
                raise ValueError(f"-machine: {key!r} given twice")
            out[key] = parse_bool(key, value, "-machine")
        else:
            raise ValueError(f"-machine: unknown property {key!r} (hpet, acpi)")
    return out


def parse_drive(spec: str) -> Drive:
    """QEMU's ``-drive file=PATH,if=ide,media=disk|cdrom,readonly=on,index=N``."""
    opts: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"--drive: expected key=value, got {part!r}")
        if key in opts:
            raise ValueError(f"--drive: {key!r} given twice")
        opts[key] = value
    unknown = set(opts) - {"file", "if", "media", "readonly", "index", "format"}
    if unknown:
        raise ValueError(f"--drive: unknown option {sorted(unknown)[0]!r}")
    if not opts.get("file"):
        raise ValueError("--drive needs file=PATH")
    if opts.get("if", "ide") != "ide":
        raise ValueError(f"--drive: only if=ide is emulated, not {opts['if']!r}")
    if opts.get("format", "raw") != "raw":
        raise ValueError(f"--drive: only raw images are supported, not {opts['format']!r}")
    media = opts.get("media", "disk")
    if media not in ("disk", "cdrom"):
        raise ValueError(f"--drive: media must be disk or cdrom, not {media!r}")
    readonly = parse_bool("readonly", opts.get("readonly", "off"))
    index = None
    if "index" in opts:
        text = opts["index"]
        if not (text.isascii() and text.isdigit() and int(text) <= 3):
            raise ValueError(f"--drive: index must be 0-3 (primary/secondary, master/slave), "
                             f"not {text!r}")
        index = int(text)
    return Drive(opts["file"], media, index, readonly)


def assign_indexes(drives: list[Drive]) -> list[Drive]:
    """Give every drive without an index the lowest free one, in order; refuse two drives
    at one index or more than four drives."""
    taken: dict[int, Drive] = {}
    for drive in drives:
        if drive.index is None:
            continue
        if not isinstance(drive.index, int) or not 0 <= drive.index <= 3:
            raise ValueError(f"IDE index must be 0-3, not {drive.index!r}")
        if drive.index in taken:
            raise ValueError(f"two drives at IDE index {drive.index}")
        taken[drive.index] = drive
    out = []
    for drive in drives:
        if drive.index is None:
            free = next((i for i in range(4) if i not in taken), None)
            if free is None:
                raise ValueError(f"no free IDE index for drive {_drive_name(drive)!r} "
                                 "(four drives at most)")
            drive = Drive(drive.file, drive.media, free, drive.readonly)
            taken[free] = drive
        out.append(drive)
    return out


def _drive_name(drive: Drive) -> str:
    if isinstance(drive.file, BlockImage):
        return drive.file.name
    return os.fspath(drive.file)


def _file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of an existing file: the same file under any name."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_drive_files(drives: list[Drive]) -> None:
    """Refuse one image file behind two drives when either would write it (two read-only
    uses are fine, as in QEMU)."""
    seen: dict[tuple[int, int], Drive] = {}
    for drive in drives:
        if isinstance(drive.file, BlockImage):
            continue
        identity = _file_identity(drive.file)
        if identity is None:
            continue
        first = seen.get(identity)
        if first is not None and (_writes(first) or _writes(drive)):
            raise ValueError(f"disk image {_drive_name(drive)!r} given twice (IDE indexes "
                             f"{first.index} and {drive.index})")
        seen.setdefault(identity, drive)


def _writes(drive: Drive) -> bool:
    return not drive.readonly and drive.media != "cdrom"


def serial_output_path(spec: str | None) -> str | None:
    """The host file a serial spec writes to (``file:PATH``), or None."""
    if spec is not None and spec.startswith("file:") and len(spec) > 5:
        return spec[5:]
    return None


def check_outputs(outputs: list[tuple[str, str]], inputs: list[tuple[str, str]]) -> None:
    """Refuse an output file (``(what, path)``) that is also an input, or another output:
    opening it for writing would truncate a disk image or a kernel before the machine
    reads it.  Existing files are compared by inode, new ones by their resolved path."""
    identities: dict[tuple[int, int] | str, tuple[str, str]] = {}
    for what, path in inputs:
        identity = _file_identity(path)
        if identity is not None:
            identities.setdefault(identity, (what, path))
    for what, path in outputs:
        key = _file_identity(path) or os.path.realpath(path)
        if key in identities:
            in_what, in_path = identities[key]
            raise ValueError(f"{what} output '{path}' is the {in_what} '{in_path}': refusing "
                             "to overwrite it")
        identities[key] = (f"{what} output", path)


@dataclass
class Board:
    """The devices of one machine: the slot table, and the devices by role."""

    slots: list[Slot]
    pic: PicPair
    pit: Pit8254
    rtc: Rtc
    kbc: I8042
    lapic: LocalApic
    ioapic: IoApic
    com1: Uart16550
    com2: Uart16550 | None
    ide0: IdeChannel
    ide1: IdeChannel
    pci: PciBus
    piix_ide: PiixIde
    fw_cfg: FwCfg
    debugcon: DebugCon
    post: PostCode
    port92: SystemControlPortA
    disks: list[BlockImage] = field(default_factory=list)
    vga: Vga | None = None
    nic: E1000 | None = None
    acpi_pm: AcpiPm | None = None
    hpet: Hpet | None = None
    # ACPI and MP tables as (physical address, bytes), for loaders that skip the BIOS.
    firmware_tables: list[tuple[int, bytes]] = field(default_factory=list)
    # Every CPU's local APIC (lapic is the first's), the bus between them (-smp N > 1)
    # and what the APIC page maps: the one APIC, or the page showing the running CPU's.
    lapics: list[LocalApic] = field(default_factory=list)
    apic_bus: ApicBus | None = None
    apic_page: Device | None = None

    def slot(self, name: str) -> Slot:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(name)


def _ports(*ranges: tuple[int, int, Device]) -> list[PortRange]:
    return [PortRange(base, count, handler) for base, count, handler in ranges]


def build(platform: Platform, *, drives: list[Drive], serial: str | None,
          serial2: str | None = None, snapshot: bool = False, boot: str = "c",
          vga: str = "std", vga_bios: str | os.PathLike[str] | None = None,
          nics: list[Nic] | None = None, net_dump: str | os.PathLike[str] | None = None,
          acpi: bool = True, hpet: bool = False,
          option_roms: list[str | os.PathLike[str]] | None = None, cpus: int = 1) -> Board:
    """The devices of QEMU's ``pc`` machine, as a table the machine walks.

    Ports, ranges and PCI BARs in the table are claimed by the machine (BARs wherever
    the guest programs them)."""
    clock = platform.clock

    # A rising INTR from the 8259 pair, or anything the local APIC accepts, ends the
    # vCPU's current slice so the interrupt is taken at the next instruction boundary.
    pic = PicPair(IrqLine(_InterruptRequest(platform)))
    # The PIC's INTR reaches the first CPU's LINT0 (the BSP's, as on a PC).
    lapics = [LocalApic(clock, apic_id=i, extint=pic if i == 0 else None) for i in range(cpus)]
    lapic = lapics[0]
    apic_bus = ApicBus(lapics) if cpus > 1 else None
    apic_page: Device = lapic if apic_bus is None else ApicPage(apic_bus)
    ioapic = IoApic(route_to_lapic(lapic) if apic_bus is None else apic_bus.ioapic_deliver)
    for cpu_apic in lapics:
        cpu_apic.on_request = platform.interrupt_request
        cpu_apic.on_eoi = ioapic.eoi
    irqs = IsaIrqs(pic, ioapic)
    pit = Pit8254(clock, irqs.line(IRQ_PIT))
    rtc = Rtc(clock, irqs.line(IRQ_RTC), base_time=platform.rtc_base)
    rtc.set_memory_size(platform.memory_size)
    # The order given, then the devices it leaves out (QEMU writes only those given; our
    # BIOS reads the first from fw_cfg and tries the rest itself; SeaBIOS reads these).
    rtc.set_boot_order(boot + "".join(d for d in "cdn" if d not in boot))
    kbc = I8042(irqs.line(IRQ_KBD), irqs.line(IRQ_MOUSE), on_reset=platform.reset,
                set_a20=platform.set_a20)
    port92 = SystemControlPortA(set_a20=platform.set_a20, on_reset=platform.reset)

    # Inputs first: every disk is opened (and locked) before any output file is created,
    # so a bad disk or a serial file naming a disk cannot truncate anything.
    drives = assign_indexes(drives)
    check_drive_files(drives)
    # A NIC's romfile= (QEMU puts it in the NIC's ROM BAR; our BIOS scans the ROM area).
    roms = read_option_roms([*(option_roms or []), *(n.romfile for n in nics or [] if n.romfile)])
    if serial == "stdio" and serial2 == "stdio":
        raise ValueError("stdio can serve one serial port only (--serial and --serial2)")
    outputs = [(label, path) for label, path in (("serial", serial_output_path(serial)),
                                                 ("serial2", serial_output_path(serial2)))
               if path is not None]
    check_outputs(outputs, [("disk image", _drive_name(d)) for d in drives
                            if not isinstance(d.file, BlockImage)]
                  + [("option ROM", path) for path, _ in roms])
    media: list[IdeMedium | None] = [None, None, None, None]
    disks: list[BlockImage] = []
    for drive in drives:
        assert drive.index is not None
        cdrom = drive.media == "cdrom"
        if isinstance(drive.file, BlockImage):
            image = drive.file
        else:
            image = BlockImage.open(drive.file, readonly=drive.readonly or cdrom,
                                    snapshot=snapshot and not (drive.readonly or cdrom))
        disks.append(image)
        platform.add_closer(image.close)
        media[drive.index] = CdRom(image) if cdrom else image

    terminal_keys = None
    if serial != "stdio" and sys.stdin.isatty():
        terminal_keys = _keyboard_from_terminal(platform, kbc)

    fast = devfast.applies(platform.accel_thread)
    com1 = Uart16550(irqs.line(IRQ_COM1), _open_serial(platform, serial, "serial0"), clock)
    if fast:
        devfast.attach_uart(platform.core, 0, com1, COM1)
    com2 = None
    if serial2 is not None:
        com2 = Uart16550(irqs.line(IRQ_COM2), _open_serial(platform, serial2, "serial1"), clock)
        if fast:
            devfast.attach_uart(platform.core, 1, com2, COM2)

    ide0 = IdeChannel(irqs.line(IRQ_IDE0), media[0], media[1])
    ide1 = IdeChannel(irqs.line(IRQ_IDE1), media[2], media[3], serial_base=3)
    ide_ports: list[Any] = []
    ide_state: list[Any] = []
    for index, (channel, cmd, ctl) in enumerate(((ide0, IDE0_CMD, IDE0_CTL),
                                                 (ide1, IDE1_CMD, IDE1_CTL))):
        if not fast:
            ide_state.append(channel)
            ide_ports.append(_ports((cmd, 8, channel.command_block),
                                    (ctl, 1, channel.control_block)))
            continue
        ide_state.append(PioChannel(platform.core, index, channel, cmd))
        ide_ports.append(_ports(
            (cmd, 8, PioWindowedBlock(platform.core, index, channel, channel.command_block, cmd)),
            (ctl, 1, PioWindowedBlock(platform.core, index, channel, channel.control_block, cmd))))

    # PCI: i440FX host bridge, PIIX3 ISA bridge and IDE function (bus-master DMA).
    pci = PciBus()
    host = I440fxHostBridge()
    host.on_pam_change = platform.set_pam  # firmware shadowing itself (SeaBIOS)
    host.reset()
    pci.add(0, 0, host)
    isa_bridge = Piix3IsaBridge(irqs)  # PIRQA-D onto ISA IRQs (its registers 0x60-0x63)
    pci.add(1, 0, isa_bridge)
    piix_ide = PiixIde(GuestPhysicalMemory(platform), ide0, ide1)
    pci.add(1, 1, piix_ide)
    vga_slot = attach_vga(platform, pci, vga_bios) if vga == "std" else None
    display = None if vga_slot is None else cast(Vga, vga_slot.device)

    pci_config = PciConfigPorts(pci, on_reset=platform.reset)
    fw_cfg = FwCfg(platform.memory_size)
    fw_cfg.set_int(FW_CFG_BOOT_DEVICE, ord(boot[0]), 2)
    fw_cfg_ports: Any = devfast.FwCfgStream(platform.core, fw_cfg, FW_CFG + 1) if fast else fw_cfg
    debugcon = DebugCon()
    post = PostCode()
    nic = _add_nic(platform, pci, isa_bridge, nics or [], net_dump)

    lapic_ns, chipset_ns = VirtualClock.LAPIC_MMIO_NS, VirtualClock.MMIO_NS
    slots = [
        # The interrupt controllers reset last (Slot.resets_last).
        Slot("pic", pic, _ports((PIC_MASTER, 2, pic.master), (PIC_SLAVE, 2, pic.slave),
                                (ELCR, 2, pic.elcr)), resets_last=True),
        Slot("lapic", lapic, mmio=[MmioRange(LAPIC_BASE, 0x1000, apic_page, lapic_ns)],
             resets_last=True),
        *(Slot(f"lapic{i}", lapics[i], resets_last=True) for i in range(1, cpus)),
        Slot("ioapic", ioapic, mmio=[MmioRange(IOAPIC_BASE, 0x1000, ioapic, chipset_ns)],
             resets_last=True),
        Slot("pit", pit, _ports((PIT, 4, pit.ports), (PORT61, 1, pit.port61)), (IRQ_PIT,)),
        Slot("rtc", rtc, _ports((RTC, 2, rtc)), (IRQ_RTC,)),
        Slot("kbc", kbc, _ports((I8042_DATA, 1, kbc.data_port), (I8042_CMD, 1, kbc.command_port)),
             (IRQ_KBD, IRQ_MOUSE), poll=terminal_keys),
        Slot("port92", port92, _ports((PORT92, 1, port92))),
        Slot("com1", com1, _ports((COM1, 8, com1)), (IRQ_COM1,), poll=com1.pump),
    ]
    if com2 is not None:
        slots.append(Slot("com2", com2, _ports((COM2, 8, com2)), (IRQ_COM2,), poll=com2.pump))
    slots += [
        Slot("ide0", ide_state[0], ide_ports[0], (IRQ_IDE0,)),
        Slot("ide1", ide_state[1], ide_ports[1], (IRQ_IDE1,)),
        Slot("pci-config", pci_config, _ports((PCI_CONFIG, 8, pci_config))),
        # The bus resets and saves every function on it: host bridge, PIIX3, PIIX IDE
        # (BMDMA), the VGA's and the NIC's PCI functions.
        Slot("pci", pci),
        Slot("bmdma", None, bars=[PciBar("io", BMDMA_PORTS, piix_ide.bmdma_ports, piix_ide,
                                         lambda: piix_ide.bmdma_base)]),
        Slot("fw_cfg", fw_cfg_ports, _ports((FW_CFG, 2, fw_cfg_ports))),
        Slot("debugcon", debugcon, _ports((DEBUGCON, 1, debugcon))),
        Slot("post", post, _ports((POST, 1, post))),
        Slot("isa-debug-exit", None, _ports((ISA_DEBUG_EXIT, 1, IsaDebugExit(platform.exit)))),
        Slot("fw-event", None, _ports((FW_EVENT, 4, FirmwareEvents(platform.firmware_event)))),
    ]
    if vga_slot is not None:
        slots.append(vga_slot)  # BAR0, the framebuffer: a RAM BAR (pcibars)
    if roms:  # after the video BIOS, whose size says where the first one goes
        slots.append(Slot("option-roms", OptionRoms(platform, fw_cfg, roms)))
    if nic is not None:
        # Its state is the PCI function's, saved with the bus.
        # Its INTA# drives PIRQC: the PIIX3 steers it onto an ISA IRQ (pci slot).
        slots.append(Slot("nic", None, poll=nic.poll, bars=[
            PciBar("mmio", E1000_MMIO_SIZE, nic, nic, lambda: nic.mmio_base),
            PciBar("io", 8, nic.io_ports, nic, lambda: nic.io_base)]))
    board = Board(slots, pic, pit, rtc, kbc, lapic, ioapic, com1, com2, ide0, ide1, pci,
                  piix_ide, fw_cfg, debugcon, post, port92, disks, display, nic,
                  lapics=lapics, apic_bus=apic_bus, apic_page=apic_page)
    if hpet and not acpi:
        raise ValueError("the HPET is described to the guest by ACPI: hpet=on needs ACPI")
    if acpi:
        _add_acpi(platform, board, irqs, hpet)
    return board


def _add_acpi(platform: Platform, board: Board, irqs: IsaIrqs, hpet: bool) -> None:
    """The PM block (SCI on IRQ 9), the HPET if asked for, and the ACPI and MP tables,
    handed to the BIOS in fw_cfg."""
    pm = AcpiPm(platform.clock, irqs.line(IRQ_SCI), on_power_off=platform.power_off)
    board.slots.append(Slot("acpi-pm", pm, _ports((PM_BASE, PM_SIZE, pm)), (IRQ_SCI,)))
    if hpet:
        board.hpet = Hpet(platform.clock, _HpetLegacyLines(irqs), board.ioapic,
                          on_legacy=irqs.set_hpet_legacy)
        board.slots.append(Slot("hpet", board.hpet, mmio=[
            # Unicorn maps whole pages; the registers fill the first 1 KiB of this one.
            MmioRange(HPET_BASE, 0x1000, board.hpet, VirtualClock.MMIO_NS)]))
    ram = platform.memory_size
    tables = AcpiPlatform(cpus=len(board.lapics), ram_below_4g=ram if ram < LOWMEM_LIMIT else LOWMEM_SPLIT,
                          com2=board.com2 is not None, hpet=hpet)
    placements = acpi_tables.build(tables)
    board.fw_cfg.add_file(FW_CFG_TABLES_FILE, acpi_tables.fw_cfg_blob(placements))
    board.acpi_pm = pm
    board.firmware_tables = placements


def _add_nic(platform: Platform, pci: PciBus, isa_bridge: Piix3IsaBridge, nics: list[Nic],
             net_dump: str | os.PathLike[str] | None) -> E1000 | None:
    """The e1000 at 00:03.0 and its back end; the pcap file opens last, once all else worked."""
    if len(nics) > 1:
        raise ValueError("only one NIC is emulated")
    if not nics:
        if net_dump is not None:
            raise ValueError("--net-dump needs a NIC (-nic or -netdev with -device e1000)")
        return None
    backend: NetBackend = open_netdev(nics[0].netdev)
    platform.add_closer(backend.close)
    nic = E1000(GuestPhysicalMemory(platform), isa_bridge.pirq_line(NIC_PIRQ), platform.clock,
                mac=nics[0].mac or DEFAULT_MAC, port=backend, mmio_base=NIC_MMIO,
                io_base=NIC_IO, irq_line_number=IRQ_NIC)
    pci.add(NIC_PCI_SLOT, 0, nic)
    backend.notify = _weak_wake(platform)
    if net_dump is not None:
        try:
            dump = PcapWriter(net_dump)
        except OSError as exc:
            backend.close()
            raise OSError(f"--net-dump: cannot open {net_dump}: {exc.strerror}") from None
        backend.dump = dump
        platform.add_closer(dump.close)
    return nic


def _open_serial(machine: Platform, spec: str | None, label: str) -> SerialBackend | None:
    backend = open_backend(spec, label=label) if spec is not None else None
    if backend is not None:
        backend.notify = _weak_wake(machine)
        machine.add_closer(backend.close)
    return backend


def _weak_wake(machine: Platform) -> Callable[[], None]:
    """``machine.wake`` without a strong reference: a backend's reader thread must not
    keep a dropped Machine alive (its finaliser releases the backend)."""
    ref = weakref.ref(machine)

    def wake() -> None:
        m = ref()
        if m is not None:
            m.wake()

    return wake


def _keyboard_from_terminal(machine: Platform, kbc: I8042) -> Callable[[], None]:
    """Keys typed on the host terminal reach the guest's PS/2 keyboard (when the serial
    console is elsewhere, as QEMU's window would take them)."""
    terminal = StdioBackend()
    terminal.notify = _weak_wake(machine)

    def pump() -> None:
        data = terminal.read_available()
        if data:
            kbc.type_text(data.decode("ascii", errors="replace").replace("\r", "\n"))

    machine.add_closer(terminal.close)
    return pump


class _InterruptRequest:
    """The 8259 pair's INTR wire, seen by the machine."""

    def __init__(self, machine: Platform) -> None:
        self._machine = machine

    def set_irq(self, irq: int, level: bool) -> None:
        if level:
            self._machine.interrupt_request()


class GuestPhysicalMemory:
    """Guest memory as bus-master DMA sees it; writes are reported to the shadow MMU.

    Reads reach RAM and the BIOS ROM.  Writes to the ROM are dropped without an
    error, as on a PC: the i440FX's PAM registers send stores to 0xF0000-0xFFFFF
    on to the ROM, which ignores them (QEMU likewise bounces a DMA write to a
    read-only region in address_space_map() and discards it at unmap).  Anything
    else is a master abort: ValueError, which the PIIX reports in BMISTA's error
    bit (82371AB data sheet, BMISTA bit 1; QEMU instead completes such a transfer
    and discards the data)."""

    def __init__(self, machine: HostMemory) -> None:
        self._machine = machine

    def read(self, paddr: int, n: int) -> bytes:
        try:
            return self._machine.read_memory(paddr, n)
        except ValueError:
            raise ValueError(f"DMA read outside RAM and ROM at {paddr:#x}+{n:#x}") from None

    def write(self, paddr: int, data: bytes) -> None:
        m = self._machine
        end = paddr + len(data)
        if paddr >= 0x100000 and end <= m.memory_size:
            m.write_memory(paddr, data)  # the common case: all RAM above the BIOS
            return
        ram = [(max(s, paddr), min(e, end)) for s, e in m.memory_ranges(write=True)]
        ram = [(s, e) for s, e in ram if s < e]
        covered = sum(e - s for s, e in ram)
        for s, e in m.rom_ranges:
            covered += max(0, min(e, end) - max(s, paddr))
        if paddr < 0 or covered != len(data):
            raise ValueError(f"DMA write outside RAM at {paddr:#x}+{len(data):#x}")
        for s, e in ram:
            m.write_memory(s, data[s - paddr:e - paddr])
