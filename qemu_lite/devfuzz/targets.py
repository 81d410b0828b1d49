"""The device classes of ``qemu_lite.devices`` as fuzz targets, each wired as pc.py wires it.

Every target builds its device around a manual clock, a :class:`~.harness.FuzzMemory`
for DMA and recording interrupt lines, and lists the windows a guest reaches (the port
and MMIO ranges of the board, the PCI configuration space through the function's own
``config_read``/``config_write``) plus the host events that drive it from outside (time,
keys, received bytes and frames, interrupt inputs, the guest CPU building DMA rings).
"""

from __future__ import annotations

from typing import Any

from qemu_lite.devfuzz.harness import HostEvent, Target, Window
from qemu_lite.devices.acpi_pm import PM_SIZE, AcpiPm
from qemu_lite.devices.backends import SerialBackend
from qemu_lite.devices.base import Clock, IrqLine
from qemu_lite.devices.block import SECTOR_SIZE, BlockImage
from qemu_lite.devices.bmdma import PiixIde
from qemu_lite.devices.debugport import DebugCon, FirmwareEvents, IsaDebugExit, PostCode
from qemu_lite.devices.e1000 import E1000
from qemu_lite.devices.e1000 import MMIO_SIZE as E1000_MMIO_SIZE
from qemu_lite.devices.fw_cfg import FwCfg
from qemu_lite.devices.hpet import Hpet
from qemu_lite.devices.i8042 import I8042
from qemu_lite.devices.i8254 import Pit8254
from qemu_lite.devices.i8259 import PicPair
from qemu_lite.devices.ide import CdRom, IdeChannel
from qemu_lite.devices.ioapic import IoApic
from qemu_lite.devices.lapic import LocalApic
from qemu_lite.devices.mc146818 import Rtc
from qemu_lite.devices.pci import I440fxHostBridge, PciBus, PciConfigPorts, Piix3IsaBridge
from qemu_lite.devices.port92 import SystemControlPortA
from qemu_lite.devices.uart16550 import Uart16550
from qemu_lite.devices.vga import Vga

RTC_BASE_TIME = 946684800.0  # 2000-01-01: the same time on every run
MAX_ADVANCE_NS = 10_000_000  # one host event moves time by at most 10 ms
MAX_FIRED_PER_ADVANCE = 64  # timers fired in order on the way; the rest of it is a jump


class _ConfigSpace:
    """A PCI function's configuration space as a window (mechanism #1 reaches it so)."""

    def __init__(self, function: Any) -> None:
        self.function = function

    @staticmethod
    def _register(offset: int, size: int) -> int:
        return (offset & 0xFC) + min(offset & 3, 4 - size)  # an access stays in its dword

    def io_read(self, offset: int, size: int) -> int:
        return int(self.function.config_read(self._register(offset, size), size))

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.function.config_write(self._register(offset, size), size, value)


class _Levels:
    """Interrupt inputs: the last level of each (a bounded record, unlike a history)."""

    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}

    def set_irq(self, irq: int, level: bool) -> None:
        if type(level) is not bool:
            raise TypeError(f"IRQ {irq} driven with {level!r}, not a bool")
        self.levels[irq] = level


class _ClockTarget(Target):
    """A target with a manual clock and an event that moves it."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.irqs = _Levels()
        super().__init__()
        self.power_on = self.clock.save_state()  # time 0, the timers a fresh build arms

    def line(self, n: int) -> IrqLine:
        return IrqLine(self.irqs, n)

    def sync_time(self, other: Target) -> None:
        assert isinstance(other, _ClockTarget)
        self.clock._now = other.clock._now

    def reset(self) -> None:
        # Guest time and timers back to a fresh build's, then the devices' reset.
        self.clock.load_state(self.power_on)
        super().reset()

    def fingerprint(self) -> list[Any]:
        return [*super().fingerprint(), self.clock.save_state()]

    def time_event(self) -> HostEvent:
        def advance(arg: int, _payload: bytes) -> None:
            self.clock.advance(min((arg & 0xFFFF) << ((arg >> 16) % 24), MAX_ADVANCE_NS),
                               max_fired=MAX_FIRED_PER_ADVANCE)

        return HostEvent("advance", advance)


class PicTarget(_ClockTarget):
    """The 8259 pair and ELCR; IRQ inputs and INTA cycles from outside."""

    name = "i8259"
    reusable = True

    def build(self) -> None:
        pic = self.pic = PicPair(self.line(0))
        self.windows = [Window("master", pic.master, 2), Window("slave", pic.slave, 2),
                        Window("elcr", pic.elcr, 2)]

        def irq(arg: int, _payload: bytes) -> None:
            pic.set_irq(arg % 16, bool(arg & 0x100))

        def inta(_arg: int, _payload: bytes) -> None:
            if pic.pending():
                vector = pic.acknowledge()
                if not 0 <= vector <= 0xFF:
                    raise ValueError(f"INTA answered vector {vector}")

        self.events = [HostEvent("irq", irq), HostEvent("inta", inta)]
        self.stateful = self.roots = [pic]

    def reset(self) -> None:
        for irq in range(16):  # the input wires: their drivers' levels, not the chips'
            self.pic.set_irq(irq, False)
        super().reset()


class PitTarget(_ClockTarget):
    """The 8254 PIT and port 0x61, with time passing."""

    name = "i8254"
    reusable = True

    def build(self) -> None:
        pit = self.pit = Pit8254(self.clock, self.line(0))
        self.windows = [Window("pit", pit.ports, 4), Window("port61", pit.port61, 1)]
        self.events = [self.time_event()]
        self.stateful = self.roots = [pit]


class HpetTarget(_ClockTarget):
    """The HPET's register window, with time passing; IRQ 0/8 and routed pins recorded."""

    name = "hpet"
    reusable = True

    def build(self) -> None:
        hpet = self.hpet = Hpet(self.clock, self.irqs, self.irqs)
        self.windows = [Window("hpet", hpet, 0x1000)]
        self.events = [self.time_event()]
        self.stateful = self.roots = [hpet]


class AcpiPmTarget(_ClockTarget):
    """The ACPI PM block (PM1 event/control, PM timer), with time and the power button."""

    name = "acpi_pm"
    reusable = True

    def build(self) -> None:
        pm = self.pm = AcpiPm(self.clock, self.line(9), on_power_off=lambda: None)

        def button(_arg: int, _payload: bytes) -> None:
            pm.press_power_button()

        self.windows = [Window("pm", pm, PM_SIZE)]
        self.events = [self.time_event(), HostEvent("power-button", button)]
        self.stateful = self.roots = [pm]


class RtcTarget(_ClockTarget):
    """The CMOS RTC (index and data ports), with time passing."""

    name = "mc146818"
    reusable = True

    def build(self) -> None:
        rtc = self.rtc = Rtc(self.clock, self.line(8), base_time=RTC_BASE_TIME)
        rtc.set_memory_size(64 << 20)
        self.battery = rtc.save_state()
        self.windows = [Window("rtc", rtc, 2)]
        self.events = [self.time_event()]
        self.stateful = self.roots = [rtc]

    def reset(self) -> None:
        super().reset()
        self.rtc.load_state(self.battery)  # time and RAM: a reset keeps them, a new board not


class _SilentSerial(SerialBackend):
    """A host end that drops output and offers whatever input the fuzzer gives."""

    def offer(self, data: bytes) -> None:
        with self._lock:
            self._input += data


class UartTarget(_ClockTarget):
    """A 16550 UART: bytes arrive from the host end, modem lines change, time passes."""

    name = "uart16550"
    reusable = True

    def build(self) -> None:
        backend = self.backend = _SilentSerial()
        uart = self.uart = Uart16550(self.line(4), backend, self.clock)

        def receive(_arg: int, payload: bytes) -> None:
            backend.offer(payload)
            uart.pump()

        def modem(arg: int, _payload: bytes) -> None:
            uart.set_modem_inputs((arg & 0xF) << 4)  # CTS, DSR, RI, DCD: MSR bits 4-7

        self.windows = [Window("uart", uart, 8)]
        self.events = [self.time_event(), HostEvent("receive", receive, payload=True),
                       HostEvent("modem", modem)]
        self.stateful = self.roots = [uart]
        self.modem_lines = uart.modem_inputs

    def reset(self) -> None:
        # Host input on its way (the back end's, and what the UART took but had no FIFO
        # room for) and the modem lines: the host's, which a reset of the chip keeps.
        self.backend.load_state({"version": 1, "input": b""})
        self.uart._pending.clear()
        self.uart.set_modem_inputs(self.modem_lines)
        super().reset()

    def fingerprint(self) -> list[Any]:
        return [*super().fingerprint(), self.backend.save_state()]


class I8042Target(_ClockTarget):
    """The keyboard controller with its PS/2 keyboard and mouse; host keys and motion."""

    name = "i8042"
    reusable = True

    def build(self) -> None:
        self.resets = self.a20 = 0

        def on_reset() -> None:
            self.resets += 1

        def set_a20(_enabled: bool) -> None:
            self.a20 += 1

        kbc = self.kbc = I8042(self.line(1), self.line(12), on_reset=on_reset, set_a20=set_a20)

        def keys(_arg: int, payload: bytes) -> None:
            kbc.key_input(payload)

        def mouse(arg: int, _payload: bytes) -> None:
            dx, dy = (arg & 0xFFF) - 0x800, ((arg >> 12) & 0xFFF) - 0x800
            kbc.mouse_input(dx, dy, (arg >> 24) & 7)

        self.windows = [Window("data", kbc.data_port, 1), Window("command", kbc.command_port, 1)]
        self.events = [HostEvent("keys", keys, payload=True), HostEvent("mouse", mouse)]
        self.stateful = self.roots = [kbc]

    def reset(self) -> None:
        self.resets = self.a20 = 0
        super().reset()


class LapicTarget(_ClockTarget):
    """The local APIC's page, the 8259 pair on LINT0, interrupts accepted and taken."""

    name = "lapic"
    reusable = True

    def build(self) -> None:
        self.pic = PicPair()
        lapic = self.lapic = LocalApic(self.clock, extint=self.pic)

        def accept(arg: int, _payload: bytes) -> None:
            lapic.accept(arg & 0xFF, bool(arg & 0x100))

        def take(_arg: int, _payload: bytes) -> None:
            if lapic.has_interrupt():
                vector = lapic.acknowledge()
                if not 0 <= vector <= 0xFF:
                    raise ValueError(f"acknowledge answered vector {vector}")
            lapic.take_nmi()

        def lint(arg: int, _payload: bytes) -> None:
            lapic.set_lint(arg & 1, bool(arg & 2))

        def pic_irq(arg: int, _payload: bytes) -> None:
            self.pic.set_irq(arg % 16, bool(arg & 0x100))

        self.windows = [Window("lapic", lapic, 0x1000)]
        self.events = [self.time_event(), HostEvent("accept", accept), HostEvent("take", take),
                       HostEvent("lint", lint), HostEvent("pic-irq", pic_irq)]
        self.stateful = [lapic, self.pic]
        self.roots = [lapic]

    def reset(self) -> None:
        for pin in (0, 1):  # the input wires, as the PIC's below
            self.lapic.set_lint(pin, False)
        for irq in range(16):
            self.pic.set_irq(irq, False)
        super().reset()


class IoApicTarget(_ClockTarget):
    """The IOAPIC's window; pin levels and EOIs from outside."""

    name = "ioapic"
    reusable = True

    def build(self) -> None:
        self.delivered = 0

        def deliver(vector: int, mode: int, level: bool, dest: int, dest_mode: int) -> None:
            if not (0 <= vector <= 0xFF and 0 <= mode <= 7 and 0 <= dest <= 0xFF):
                raise ValueError(f"delivery of vector {vector} mode {mode} dest {dest}")
            self.delivered += 1

        ioapic = self.ioapic = IoApic(deliver)

        def irq(arg: int, _payload: bytes) -> None:
            ioapic.set_irq(arg % 24, bool(arg & 0x100))

        def eoi(arg: int, _payload: bytes) -> None:
            ioapic.eoi(arg & 0xFF)

        self.windows = [Window("ioapic", ioapic, 0x1000)]
        self.events = [HostEvent("irq", irq), HostEvent("eoi", eoi)]
        self.stateful = self.roots = [ioapic]

    def reset(self) -> None:
        for pin in range(24):  # the input wires: their drivers' levels, not the chip's
            self.ioapic.set_irq(pin, False)
        super().reset()
        self.delivered = 0


class FwCfgTarget(Target):
    """fw_cfg's selector and data ports, with a file in the directory."""

    name = "fw_cfg"
    reusable = True

    def build(self) -> None:
        fw = self.fw = FwCfg(64 << 20)
        fw.set_int(0x0C, ord("c"), 2)
        fw.add_file("etc/fuzz", bytes(range(256)) * 4)
        self.windows = [Window("fw_cfg", fw, 2)]
        self.stateful = self.roots = [fw]


class Port92Target(Target):
    """System control port A (fast A20 and reset)."""

    name = "port92"
    reusable = True

    def build(self) -> None:
        port = self.port = SystemControlPortA(set_a20=lambda _on: None, on_reset=lambda: None)
        self.windows = [Window("port92", port, 1)]
        self.stateful = self.roots = [port]
        self.power_on = port.save_state()

    def reset(self) -> None:
        super().reset()
        self.port.load_state(self.power_on)  # a reset keeps the A20 latch, a new board not


class DebugPortsTarget(Target):
    """QEMU's debug ports: debugcon, POST code, isa-debug-exit, our firmware event."""

    name = "debugport"
    reusable = True

    def build(self) -> None:
        self.exits: list[int] = []
        self.windows = [Window("debugcon", DebugCon(lambda _data: None), 1),
                        Window("post", PostCode(), 1),
                        Window("isa-debug-exit", IsaDebugExit(lambda v: None), 1),
                        Window("fw-event", FirmwareEvents(lambda e: None), 4)]
        self.roots = [w.device for w in self.windows]


class PciTarget(Target):
    """Configuration mechanism #1 with the i440FX host bridge and the PIIX3 ISA bridge."""

    name = "pci"
    reusable = True

    def build(self) -> None:
        bus = self.bus = PciBus()
        host = I440fxHostBridge()
        host.on_pam_change = lambda attrs: None
        host.reset()
        bus.add(0, 0, host)
        isa = Piix3IsaBridge()
        isa.reset()
        bus.add(1, 0, isa)
        ports = PciConfigPorts(bus, on_reset=lambda: None)
        self.windows = [Window("cf8", ports, 8)]
        self.stateful = [bus, ports]
        self.roots = [bus, ports]


class IdeTarget(_ClockTarget):
    """Both IDE channels (a disk and a CD-ROM on the primary, a disk on the secondary) behind
    the PIIX function with bus-master DMA into the fuzz RAM; PRD tables are RAM stores."""

    name = "ide"
    reusable = True
    BMDMA = 0xC000
    ram_size = 1 << 16

    def build(self) -> None:
        disk = BlockImage.from_bytes(bytes(range(256)) * (2 * 64))  # 64 sectors
        cd = CdRom(BlockImage.from_bytes(bytes(SECTOR_SIZE * 4 * 8), readonly=True))
        disk2 = BlockImage.from_bytes(bytes(SECTOR_SIZE * 16))
        self.disks = [(disk, disk.read(0, disk.sector_count)),
                      (disk2, disk2.read(0, disk2.sector_count))]
        self.ide0 = IdeChannel(self.line(14), disk, cd)
        self.ide1 = IdeChannel(self.line(15), disk2, None, serial_base=3)
        self.piix = PiixIde(self.memory, self.ide0, self.ide1, bmdma_base=self.BMDMA)
        self.windows = [Window("ide0", self.ide0.command_block, 8),
                        Window("ide0-ctl", self.ide0.control_block, 1),
                        Window("ide1", self.ide1.command_block, 8),
                        Window("ide1-ctl", self.ide1.control_block, 1),
                        Window("bmdma", self.piix.bmdma_ports, 16),
                        Window("piix-config", _ConfigSpace(self.piix), 256)]
        self.events = [self.ram_event()]
        self.stateful = [self.ide0, self.ide1, self.piix]
        self.roots = [self.ide0, self.ide1, self.piix]

    def reset(self) -> None:
        for disk, contents in self.disks:  # the medium: a reset keeps what was written
            disk.write(0, contents)
        super().reset()

    def fingerprint(self) -> list[Any]:
        return [*super().fingerprint(), [d.read(0, d.sector_count) for d, _ in self.disks]]


class _FuzzNet:
    """The NIC's back end: a bounded queue of frames for the guest; sent frames dropped."""

    LIMIT = 64

    def __init__(self) -> None:
        self.incoming: list[bytes] = []
        self.sent = 0
        self.last_sent = b""

    def send(self, frame: bytes) -> bool:
        if not isinstance(frame, (bytes, bytearray)) or len(frame) > 65536 + 64:
            raise ValueError(f"the NIC sent a {len(frame)}-byte frame")
        self.sent += 1
        self.last_sent = bytes(frame)
        return True

    def receive(self) -> bytes | None:
        return self.incoming.pop(0) if self.incoming else None


class E1000Target(_ClockTarget):
    """The 82540EM: its memory BAR, its I/O BAR, its configuration space, descriptor
    rings stored in the fuzz RAM, and frames arriving from the back end."""

    name = "e1000"
    reusable = True
    ram_size = 1 << 16
    allowance = 1 << 22  # the receive queue holds up to RX_QUEUE_LIMIT frames

    def build(self) -> None:
        self.net = _FuzzNet()
        nic = self.nic = E1000(self.memory, self.line(11), self.clock, port=self.net,
                               mmio_base=0xFEBC0000, io_base=0xC080,
                               on_bar_change=lambda kind, old, new: None)
        nic.reset()

        def frame(arg: int, payload: bytes) -> None:
            if len(self.net.incoming) < self.net.LIMIT:
                self.net.incoming.append(payload * (1 + (arg & 7)))
            nic.poll()

        self.windows = [Window("mmio", nic, E1000_MMIO_SIZE), Window("io", nic.io_ports, 8),
                        Window("config", _ConfigSpace(nic), 256)]
        self.events = [self.time_event(), self.ram_event(), HostEvent("frame", frame, True)]
        self.stateful = [nic, nic.io_ports] if hasattr(nic.io_ports, "save_state") else [nic]
        self.roots = [nic]

    def reset(self) -> None:
        self.net.incoming.clear()
        self.net.sent, self.net.last_sent = 0, b""
        super().reset()


class VgaTarget(Target):
    """The std-vga: its ports, the VBE DISPI ports, the 0xA0000 window, and drawing."""

    name = "vga"
    allowance = 1 << 16

    def build(self) -> None:
        vga = self.vga = Vga(vram_size=1 << 20)

        def render(arg: int, _payload: bytes) -> None:
            frame = vga.render(blink_on=bool(arg & 1))
            if len(frame.rgb) != frame.width * frame.height * 3:
                raise ValueError(f"{frame.width}x{frame.height} frame of {len(frame.rgb)}")
            vga.screen_text()

        self.windows = [Window("ports", vga.ports, 0x30), Window("dispi", vga.dispi_ports, 2),
                        Window("window", vga.window, 0x18000)]
        self.events = [HostEvent("render", render)]
        self.roots = [vga]


TARGETS: dict[str, type[Target]] = {t.name: t for t in (
    PicTarget, PitTarget, HpetTarget, AcpiPmTarget, RtcTarget, UartTarget, I8042Target, LapicTarget, IoApicTarget,
    FwCfgTarget, Port92Target, DebugPortsTarget, PciTarget, IdeTarget, E1000Target,
    VgaTarget)}
