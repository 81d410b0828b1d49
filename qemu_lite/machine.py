"""``Machine``: a PC that a Python program builds, runs and inspects."""

from __future__ import annotations

import logging
import math
import operator
import os
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

from unicorn import UcError

import mmu_core
from mmu_core._core import STOP_REQUEST, TLB_IDENTITY, TLB_NATIVE
from qemu_lite import pc
from qemu_lite import smp as smp_mod
from qemu_lite import snapshot as machine_state
from qemu_lite._vcpu_hooks import VcpuHooks, VirtualTsc, keep_gil_for_engine_calls, watch_signals
from qemu_lite.clock import TSC_KHZ, HostClock, VirtualClock
from qemu_lite.cpuid import CpuidModel
from qemu_lite.debughooks import DebugHooks
from qemu_lite.devices.base import Device, Timer
from qemu_lite.devices.block import BlockImage
from qemu_lite.devices.debugport import FW_EVENT_NO_BOOT
from qemu_lite.devices.i8042 import text_to_set2
from qemu_lite.devices.netbackends import Nic
from qemu_lite.devices.vga import Vga
from qemu_lite.display import open_vnc, screen
from qemu_lite.loaders.files import read_input_file
from qemu_lite.multi import Locked, ParallelVcpus, multi_supported
from qemu_lite.pc import Drive
from qemu_lite.pcibars import BarClaims
from qemu_lite.platform import Slot, Stateful, reset_order
from qemu_lite.runloop import InterruptSource, RunLoop, RunResult
from qemu_lite.snapshot import Snapshot
from qemu_lite.tracehooks import TraceHooks
from qemu_lite.unassigned import UnassignedMemory
from qemu_lite.vcpu import VCpu, new_engine

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from qemu_lite.msr import MsrModel

log = logging.getLogger(__name__)

# 2000-01-01T00:00:00Z: the RTC's time in deterministic runs unless rtc_base is given.
DETERMINISTIC_RTC_BASE = 946684800.0

# The BIOS ROM's two windows (below 1 MiB, and below 4 GiB where the reset vector is).
BIOS_LOW = 0xF0000
BIOS_SIZE = 0x10000  # our BIOS; other images are multiples of it
BIOS_MAX_SIZE = 16 << 20
BIOS_ISA_MAX = 128 << 10
ONE_MIB = 0x100000
FOUR_GIB = 1 << 32

# parse_size's ceiling, far above any RAM size Machine accepts (it checks those itself).
MAX_SIZE = 1 << 50

# Signals whose Python handlers must run while the guest runs (see run()).
RUN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

MMU_MODES = {"native": TLB_NATIVE, "identity": TLB_IDENTITY, "cached": 2, "naive": 3}


def parse_size(text: str | int) -> int:
    """Parse a QEMU-style size ("64M", "1G", "512K", plain MiB) into bytes; an int is bytes."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise TypeError(f"memory must be a size such as '64M' or a number of bytes, "
                        f"not {type(text).__name__}")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"invalid memory size {text} (it must be positive)")
        return text
    s = text.strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = 1 << 20  # QEMU's -m takes MiB by default
    if s and s[-1] in units:
        mult = units[s[-1]]
        s = s[:-1]
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"invalid memory size {text!r} (try 64M or 1G)") from None
    if not math.isfinite(value) or value <= 0 or value * mult > MAX_SIZE:
        raise ValueError(f"invalid memory size {text!r} (try 64M or 1G)")
    if not (value * mult).is_integer():
        raise ValueError(f"invalid memory size {text!r}: not a whole number of bytes")
    return int(value * mult)


def bundled_firmware(name: str) -> bytes:
    """Bytes of a file shipped in qemu_lite.firmware (bios.bin, default.img)."""
    return resources.files("qemu_lite.firmware").joinpath(name).read_bytes()


def bundled_firmware_path(name: str) -> str:
    return str(resources.files("qemu_lite.firmware").joinpath(name))


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-empty ranges with touching neighbours joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


class Machine(DebugHooks, TraceHooks):
    """An x86 PC: CPU, RAM, BIOS, and the standard devices of QEMU's ``pc`` machine.

    >>> from qemu_lite import Machine
    >>> m = Machine(memory="16M")          # BIOS and devices, no disk
    >>> m.memory_size
    16777216
    """

    def __init__(
        self,
        disk: str | os.PathLike[str] | BlockImage | None = None,
        *,
        hdb: str | os.PathLike[str] | BlockImage | None = None,
        cdrom: str | os.PathLike[str] | BlockImage | None = None,
        drives: list[Drive] | None = None,
        boot: str = "c",
        memory: str | int = "64M",
        serial: str | None = "none",
        serial2: str | None = None,
        bios: bytes | str | os.PathLike[str] | None = None,
        mmu: str | None = None,
        snapshot: bool = False,
        no_reboot: bool = False,
        deterministic: bool = False,
        rtc_base: float | None = None,
        vga: str = "std",
        vga_bios: str | os.PathLike[str] | None = None,
        vnc: str | None = None,
        nics: list[Nic] | None = None,
        net_dump: str | os.PathLike[str] | None = None,
        acpi: bool = True,
        hpet: bool | None = None,
        option_roms: list[str | os.PathLike[str]] | None = None,
        smp: int | str = 1,
        accel: str = "tcg",
        count_instructions: bool = False,
    ) -> None:
        _check_arguments(disk=disk, hdb=hdb, cdrom=cdrom, drives=drives, boot=boot,
                         serial=serial, serial2=serial2, bios=bios,
                         mmu="cached" if mmu is None else mmu, rtc_base=rtc_base)
        if vga not in ("std", "none"):
            raise ValueError(f"unknown VGA {vga!r} (choose std or none)")
        self.memory_size = parse_size(memory)
        self.cpus = smp_mod.parse_smp(smp)
        self.accel_thread = smp_mod.parse_accel(accel)
        multi = self.accel_thread == "multi" and self.cpus > 1
        if multi:
            mmu = _check_multi(mmu, deterministic)
        mmu = "cached" if mmu is None else mmu
        self.mmu_mode = mmu
        # thread=multi: held by every vCPU thread's Python work (qemu_lite/multi.py).
        self.big_lock = threading.RLock()
        self._multi = multi
        self.parallel: ParallelVcpus | None = None  # thread=multi's APs, once the board is built
        self._mmio_map: list[tuple[int, int, Device]] = []  # what add_mmio mapped, in order
        bios_data = _bios_bytes(bios)
        self.uc, reset_ctx = new_engine()
        keep_gil_for_engine_calls(self.uc)  # no GIL hand-off per register read (threads)
        self.core = mmu_core.Core(self.uc, self.memory_size, MMU_MODES[mmu])
        self.cpu = VCpu(self.uc, self.core, reset_ctx)
        self.hooks = VcpuHooks(self.uc)
        self.deterministic = deterministic
        # Per-vCPU instruction counts in vcpu_stats() (RunLoop.count_instructions). Off
        # by default: it costs about 7 % of a Linux boot.
        if count_instructions and (deterministic or not self.hooks.engine_exits):
            raise ValueError("count_instructions needs the patched engine and wall-clock time "
                             "(under --deterministic the same counter is guest time)")
        self.count_instructions = count_instructions
        self.clock: HostClock | VirtualClock
        if deterministic:
            self.clock = VirtualClock(self.hooks)
            self.clock.on_schedule = self._timer_armed_virtual
            rtc_base = DETERMINISTIC_RTC_BASE if rtc_base is None else rtc_base
        else:
            self.clock = HostClock()
            self.clock.on_schedule = self._timer_armed_host
        self.rtc_base = rtc_base
        self.msrs: MsrModel | None = None  # the platform's MSRs (pc.py, on patch f)
        self.tsc = VirtualTsc(self.uc, self.hooks, TSC_KHZ,
                              None if deterministic else self.clock.start_ns)
        if deterministic:
            self.core.set_io_clock(self.hooks, self.hooks.vclock_address(), VirtualClock.PORT_NS)
        self.cpuid = CpuidModel(tsc_mhz=TSC_KHZ // 1000, hide_rdrand=deterministic)
        self.core.set_cpuid_handler(lambda: self.cpuid.hook(self.uc))
        # Reset with the machine besides the board's slots (which Machine walks itself).
        self._resettable: list[Any] = [self.tsc]
        self._pollers: list[Callable[[], None]] = []
        self.runloop = RunLoop(self.cpu, self.core, self.hooks, self.clock,
                               pollers=self._pollers, reset_devices=self._reset_devices)
        self.runloop.no_reboot = no_reboot
        if count_instructions:
            self.runloop.count_instructions()
        # powerdown() counts requests (any thread); the vCPU thread presses the button
        # once per request it has not served yet.  Two counters: no lock, nothing lost.
        self._power_button_requests = 0
        self._power_button_served = 0
        self._closed = False
        self._closers: list[Callable[[], None]] = []
        # Releases disks and backends of a Machine dropped without close(); it must hold
        # nothing that refers to the Machine, or the Machine would never be collected.
        self._finalizer = weakref.finalize(self, _release_dropped, self._closers)
        self.unassigned = UnassignedMemory(self.uc, 1 << self.cpuid.physical_address_bits())
        self._load_bios(bios_data)
        if log.isEnabledFor(logging.DEBUG):
            self.core.set_unclaimed_port_log(self._log_unclaimed_port)
        all_drives = [pc.Drive(path, media, index)
                      for index, path, media in ((0, disk, "disk"), (1, hdb, "disk"),
                                                 (2, cdrom, "cdrom"))
                      if path is not None]
        all_drives += drives or []
        try:
            self.board = pc.build(self, drives=all_drives, serial=serial, serial2=serial2,
                                  snapshot=snapshot, boot=boot, vga=vga, vga_bios=vga_bios,
                                  nics=nics, net_dump=net_dump, acpi=acpi,
                                  hpet=acpi if hpet is None else hpet, option_roms=option_roms, cpus=self.cpus)
        except BaseException:
            self.close()  # a half-built machine must not keep the disks it opened locked
            raise
        self.pci_bars = BarClaims(self, lambda: self.core.request_stop(STOP_REQUEST))
        self.add_poller(self.pci_bars.apply_pending)
        self._claim(self.board.slots)
        self._install_platform_msrs()
        self._snapshot_base: Snapshot | None = None  # what the dirty log is against
        self.irq_source = self.board.lapic
        self.vcpus: smp_mod.VcpuSet | None = None
        if multi:
            self.runloop.lock = self.big_lock
            self.parallel = ParallelVcpus(self, self.board.lapics)
            self._resettable.append(self.parallel)
            self.add_closer(self.parallel.close)
        elif self.board.apic_bus is not None:
            self.vcpus = smp_mod.VcpuSet(self, self.board.apic_bus)
            self.runloop.vcpus = self.vcpus
            self._resettable.append(self.vcpus)
        self.host_input = screen.HostInput(self.board.kbc, self.wake)
        self.add_poller(self.host_input.pump)
        if self.board.acpi_pm is not None:
            self.add_poller(self._press_power_button)
        try:
            self.vnc = open_vnc(self, vnc) if vnc is not None else None
        except ValueError:
            self.close()
            raise
        self.unassigned.fill_gaps()

    def _install_platform_msrs(self) -> None:
        """IA32_APIC_BASE, the TSC MSRs and MISC_ENABLE (qemu_lite/msr.py), on patch f."""
        from qemu_lite.msr import ApicWindow, LockedMsrs, MsrModel, TscDeadline

        lapic = self.board.apic_page
        assert lapic is not None

        def move(old: int, new: int) -> bool:
            self.uc.mem_unmap(old, 0x1000)
            self._mmio_map = [e for e in self._mmio_map if e[0] != old]
            self.unassigned.fill_gaps()  # the old page: unassigned again
            try:
                self.add_mmio(new, 0x1000, lapic, access_ns=VirtualClock.LAPIC_MMIO_NS)
            except UcError as exc:  # over RAM or ROM: the page stays where it was
                log.warning("guest moved the local APIC to %#x, which is not free (%s); "
                            "it stays at %#x", new, exc, old)
                self.add_mmio(old, 0x1000, lapic, access_ns=VirtualClock.LAPIC_MMIO_NS)
                return False
            return True

        msrs = (LockedMsrs if self._multi else MsrModel)(
            self.tsc, ApicWindow(move, lapic.set_hardware_enabled), self.runloop.callback_failed,
            self.wake, TscDeadline(lapic, self.tsc, self.clock.now))
        if isinstance(msrs, LockedMsrs):
            msrs.lock = self.big_lock
        if msrs.install(self.uc):
            self.msrs = msrs
            lapic.enable_tsc_deadline()
            self.cpuid.offer_tsc_deadline()
            self.add_poller(msrs.apply_pending)
            self.add_state("msrs", msrs)

    def msrs_for_ap(self, uc: Any, tsc: VirtualTsc, lapic: Any, loop: RunLoop) -> MsrModel:
        """thread=multi: an AP's own platform MSRs (its APIC base, TSC deadline)."""
        from qemu_lite.msr import ApicWindow, LockedMsrs, TscDeadline

        def move(old: int, new: int) -> bool:
            log.warning("an AP moved its local APIC to %#x: not supported under thread=multi; "
                        "it stays at %#x", new, old)
            return False

        msrs = LockedMsrs(tsc, ApicWindow(move, lapic.set_hardware_enabled),
                          loop.callback_failed, loop.wake, TscDeadline(lapic, tsc, self.clock.now))
        msrs.lock = self.big_lock
        msrs.install(uc)
        return msrs

    def _claim(self, slots: list[Slot]) -> None:
        """Give every slot of the board its ports, MMIO ranges, PCI BARs and poller."""
        for slot in slots:
            for ports in slot.ports:
                self.add_device(ports.base, ports.count, ports.handler)
            for mmio in slot.mmio:
                self.add_mmio(mmio.base, mmio.size, mmio.handler, mmio.access_ns)
            for bar in slot.bars:
                self.pci_bars.add(bar)
            if slot.poll is not None:
                self.add_poller(slot.poll)

    def _timer_armed_host(self, guest_ns: int) -> None:
        # A timer armed by a device during a slice must end that slice in time.
        assert isinstance(self.clock, HostClock)
        self.hooks.advance_deadline(self.clock.host_deadline_ns(guest_ns))
        if self._multi and threading.get_ident() != self.runloop.vcpu_thread:
            self.runloop.wake()  # an AP armed it: the BSP runs the timers

    def _timer_armed_virtual(self, guest_ns: int) -> None:
        assert isinstance(self.clock, VirtualClock)
        blocks = self.clock.block_deadline(guest_ns)
        self.hooks.advance_block_deadline(blocks)

    # -- building ---------------------------------------------------------------

    def _load_bios(self, data: bytes) -> None:
        # As QEMU's pc machine: the whole image ends at 4 GiB, and its last
        # 128 KiB (all of it when smaller) also ends at 1 MiB, over the RAM there.
        size = len(data)
        isa = min(size, BIOS_ISA_MAX)
        low, high = ONE_MIB - isa, FOUR_GIB - size
        if low < BIOS_LOW:
            self.uc.mem_unmap(low, BIOS_LOW - low)
        self.core.map_rom(low, data[size - isa:])
        self.core.map_rom(high, data)
        self._rom_windows = ((low, ONE_MIB), (high, FOUR_GIB))
        self._writable: tuple[tuple[int, int], ...] = ((0, low), (ONE_MIB, self.memory_size))
        self._readable: tuple[tuple[int, int], ...] = tuple(
            _merge([*self._writable, *self.rom_ranges]))

    def remove_from_memory_ranges(self, start: int, end: int) -> None:
        """``start .. end-1`` is a device window now (the VGA's 0xA0000): the memory API
        refuses it, as it refuses other MMIO."""

        def cut(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
            out = []
            for s, e in ranges:
                out += [(s, min(e, start)), (max(s, end), e)]
            return tuple((s, e) for s, e in out if s < e)

        self._writable, self._readable = cut(self._writable), cut(self._readable)

    @property
    def rom_writes_ignored(self) -> int:
        """Guest stores to the BIOS ROM that were dropped, as on a PC (shadow MMU modes).

        Under ``mmu="native"`` Unicorn performs a store its write-protect hook
        accepts, so there a ROM write ends the run with a GuestError instead."""
        return int(self.core.rom_writes_ignored)

    def add_device(self, base: int, count: int, device: Device) -> None:
        """Give ``device`` the I/O ports ``base .. base+count-1``.

        ``device.io_read(offset, size)`` / ``device.io_write(offset, size, value)``
        run on the vCPU thread with ``offset`` relative to ``base``."""
        self.core.claim_ports(base, count, self._serialised(device))

    def add_mmio(self, base: int, size: int, device: Device,
                 access_ns: int = VirtualClock.MMIO_NS) -> Device:
        """Map ``device`` at physical ``base``: guest loads and stores call its
        ``io_read(offset, size)`` / ``io_write(offset, size, value)``; each
        access costs ``access_ns`` of deterministic guest time.  Returns the handler
        the engine calls (under thread=multi, ``device`` behind the machine's lock)."""
        # Through Core, as ports are: C callbacks, the deterministic charge in C, and the
        # first exception (a device bug, KeyboardInterrupt) re-raised from run().
        self.unassigned.release(base, size)
        device = self._serialised(device)
        self.core.map_mmio(base, size, device, access_ns if self.deterministic else 0)
        self._mmio_map.append((base, size, device))
        return device

    def _serialised(self, device: Device) -> Device:
        """thread=multi: the device's accesses hold the machine's lock."""
        return Locked(device, self.big_lock) if self._multi else device

    def forward_mmio_read(self, address: int, size: int) -> int:
        """thread=multi: an AP's load outside RAM, served by the machine's MMIO map."""
        for base, length, device in reversed(self._mmio_map):
            if base <= address < base + length:
                return device.io_read(address - base, size)
        vram = self._lfb_offset(address, size)
        if vram is not None:
            return int.from_bytes(vram[0][vram[1]:vram[1] + size], "little")
        return (1 << (8 * size)) - 1  # unassigned: all ones, as the gap filler answers

    def forward_mmio_write(self, address: int, size: int, value: int) -> None:
        """thread=multi: an AP's store outside RAM (dropped where nothing decodes)."""
        for base, length, device in reversed(self._mmio_map):
            if base <= address < base + length:
                device.io_write(address - base, size, value)
                return
        vram = self._lfb_offset(address, size)
        if vram is not None:
            buf, offset = vram
            buf[offset:offset + size] = value.to_bytes(size, "little")
            self.core.vram_log_mark(offset, size)

    def _lfb_offset(self, address: int, size: int) -> tuple[bytearray, int] | None:
        """The VGA's VRAM and the offset in it, where the BSP's engine maps the
        framebuffer BAR as RAM (``Core.map_vram``) and an AP's engine does not."""
        base = self.core.vram_base
        vga = self.board.vga
        if base is None or vga is None:
            return None
        offset = address - base
        return (vga.vram, offset) if 0 <= offset <= len(vga.vram) - size else None

    def set_pam(self, attrs: list[int]) -> None:
        """The i440FX PAM registers: which of 0xC0000-0xFFFFF reads and writes RAM."""
        self.core.set_pam(attrs)
        if self.parallel is not None:
            self.parallel.set_pam(attrs)

    def add_state(self, name: str, owner: Stateful) -> None:
        """Reset, save and restore ``owner`` with the board's devices (a slot of its own,
        without ports): for state the embedder adds, such as ``--serial-input``'s."""
        if any(slot.name == name for slot in self.board.slots):
            raise ValueError(f"a slot named {name!r} exists")
        self.board.slots.append(Slot(name, owner))

    def add_resettable(self, *devices: Device) -> None:
        """Objects outside the board's slots whose ``reset()`` runs when the machine
        resets (before the slots')."""
        self._resettable.extend(devices)

    def add_ram_image(self, address: int, data: bytes) -> None:
        """Write ``data`` into RAM at ``address`` now and again at every reset, before the
        devices reset: what the machine loads itself (the video BIOS, a kernel for the
        BIOS to enter), as QEMU reloads its ROM blobs."""
        image = _RamImage(self, address, bytes(data))
        image.reset()
        self.add_resettable(image)

    def set_a20(self, enabled: bool) -> None:
        """The A20 gate (i8042 output port, port 0x92)."""
        self.core.a20_enabled = enabled  # (native MMU, as thread=multi runs: no effect)

    @staticmethod
    def _log_unclaimed_port(port: int, size: int, value: int) -> None:
        if value < 0:
            log.debug("read of unclaimed port %#x (%d bytes): all ones", port, size)
        else:
            log.debug("write of %#x to unclaimed port %#x (%d bytes) ignored", value, port, size)

    def add_poller(self, poll: Callable[[], None]) -> None:
        """Call ``poll()`` at every stop of the vCPU (devices pulling host input)."""
        self._pollers.append(poll)

    def add_closer(self, close: Callable[[], None]) -> None:
        """Call ``close()`` at :meth:`close`, or when the Machine is collected unclosed
        (so ``close`` must not refer to the Machine)."""
        self._closers.append(close)

    def interrupt_request(self) -> None:
        """An interrupt controller raised its output: end the current slice at the
        next translation block, so the run loop can deliver it (any thread).

        Not ``uc_emu_stop``: stopped from inside an MMIO callback, Unicorn leaves
        RIP on the store, which then runs twice (an EOI or IPI would repeat)."""
        self.wake()

    def wake(self) -> None:
        """Wake a halted vCPU and end a running slice (safe from any thread)."""
        self.runloop.wake()

    # -- memory and registers ------------------------------------------------------

    def read_memory(self, address: int, size: int) -> bytes:
        """Read guest physical memory: RAM or the BIOS ROM.

        A range outside them (device MMIO included: a host read must not have a
        device's side effects) raises ValueError naming the valid ranges."""
        self._check_open()
        address, size = self._check_range(address, size, write=False)
        return bytes(self.uc.mem_read(address, size)) if size else b""

    def write_memory(self, address: int, data: bytes) -> None:
        """Write guest RAM, keeping the shadow MMU coherent.

        The BIOS ROM is read-only here as it is to the guest (give other
        firmware with ``bios=``); a range that is not all RAM raises
        ValueError before anything is written."""
        self._check_open()
        data = bytes(data)
        address, _ = self._check_range(address, len(data), write=True)
        if data:
            self.uc.mem_write(address, data)
            self.cpu.notify_phys_write(address, len(data))

    def memory_ranges(self, write: bool = False) -> list[tuple[int, int]]:
        """``(start, end)`` physical ranges (end exclusive) that :meth:`write_memory`
        (``write``) or :meth:`read_memory` accept."""
        return list(self._writable if write else self._readable)

    @property
    def rom_ranges(self) -> list[tuple[int, int]]:
        """``(start, end)`` of the BIOS ROM's windows: readable, never written."""
        return list(self._rom_windows)

    def _check_range(self, address: int, size: int, *, write: bool) -> tuple[int, int]:
        address, size = operator.index(address), operator.index(size)
        if size < 0:
            raise ValueError(f"negative memory size {size}")
        ranges = self._writable if write else self._readable
        for start, end in ranges:
            if start <= address and address + size <= end:
                return address, size
        what = "RAM" if write else "RAM or ROM"
        if write and any(address < end and start < address + max(size, 1)
                         for start, end in self.rom_ranges):
            what += " (the BIOS ROM is read-only; pass bios= to change it)"
        valid = ", ".join(f"{start:#x}-{end - 1:#x}" for start, end in ranges)
        raise ValueError(f"{address:#x}+{size:#x} is not guest {what}; valid: {valid}")

    def reg(self, name: str) -> int:
        """Read a register by name ("rax", "eip", "cr0", "cs", ...)."""
        return self.cpu.reg(name)

    def set_reg(self, name: str, value: int) -> None:
        self.cpu.set_reg(name, value)

    # -- screen and keyboard (qemu_lite/display) -------------------------------------

    def _vga(self) -> Vga:
        if self.board.vga is None:
            raise RuntimeError("this machine has no display (vga='none')")
        return self.board.vga

    def screen_text(self) -> list[str]:
        """The VGA text screen as lines (code page 437); an error in a graphics mode."""
        lines = self._vga().screen_text()
        if lines is None:
            raise RuntimeError("the VGA is in a graphics mode: no text to read")
        return lines

    def screenshot(self) -> PILImage:
        """What the monitor shows, as a Pillow RGB image (QEMU's screendump geometry)."""
        return screen.frame_to_image(self._vga().render())

    def screendump(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`screenshot` to ``path`` as PNG."""
        screen.write_png(self._vga().render(), path)

    def send_keys(self, text: str) -> None:
        """Type ASCII ``text`` on the PS/2 keyboard (from any thread)."""
        self.host_input.keys(text_to_set2(text))

    def send_key(self, combo: str) -> None:
        """Press and release a combination, QEMU ``sendkey`` style: "ctrl-alt-delete"."""
        self.host_input.keys(screen.combo_to_set2(combo))

    # -- running -------------------------------------------------------------------

    def stop(self, reason: str = "stopped", exit_status: int | None = None,
             message: str = "") -> None:
        """End :meth:`run` at the next instruction boundary (from a device or callback)."""
        self.runloop.stop(reason, exit_status, message)

    def stop_at_next_block(self, reason: str = "stopped", message: str = "") -> None:
        """End :meth:`run` at the next translation block, from any thread or from a
        signal handler: unlike :meth:`stop` on the vCPU thread, it never cuts the
        current instruction short.  A request made while no run is in progress
        ends the next run before its first instruction."""
        self.runloop.stop_at_next_block(reason, message)

    @property
    def _stop_reason(self) -> RunResult | None:
        return self.runloop.stop_reason

    @_stop_reason.setter
    def _stop_reason(self, value: RunResult | None) -> None:
        self.runloop.stop_reason = value

    @property
    def guest_resets(self) -> int:
        """Resets since power-on (triple faults, reset requests)."""
        return self.runloop.guest_resets

    @property
    def irq_source(self) -> InterruptSource:
        return self.runloop.irq_source

    @irq_source.setter
    def irq_source(self, source: InterruptSource) -> None:
        self.runloop.irq_source = source

    @property
    def stop_pending(self) -> bool:
        """A :meth:`stop_at_next_block` request (a signal, say) waits for the next run."""
        return self.runloop.stop_requested is not None

    def exit(self, status: int) -> None:
        """isa-debug-exit: the run ends and the process should exit with ``status``."""
        self.stop("exit", status, f"guest exit status {status}")

    def power_off(self) -> None:
        """The guest entered ACPI S5 (soft off): the run ends, reason ``"powered-off"``."""
        self.stop("powered-off", None, "guest powered the machine off (ACPI S5)")

    def powerdown(self) -> None:
        """Press the ACPI power button (QMP's ``system_powerdown``), from any thread.

        The guest sees PWRBTN_STS and an SCI at the vCPU's next stop; what it does
        then is its own affair (Linux reports a power-button key press).  A machine
        built with ``acpi=False`` has no power button: RuntimeError."""
        if self.board.acpi_pm is None:
            raise RuntimeError("this machine has no ACPI power button (acpi=False)")
        self._power_button_requests += 1
        self.wake()

    def _press_power_button(self) -> None:
        requests = self._power_button_requests
        if requests != self._power_button_served:
            self._power_button_served = requests
            assert self.board.acpi_pm is not None
            self.board.acpi_pm.press_power_button()

    def firmware_event(self, event: int) -> None:
        """Our BIOS reported ``event`` on its port (FW_EVENT_* in devices/debugport.py)."""
        if event != FW_EVENT_NO_BOOT:
            log.debug("unknown firmware event %#x", event)
        elif self.guest_resets:
            self.stop("no-boot-after-reset", None,
                      "No bootable device after the guest reset the machine")
        else:
            self.stop("no-boot", None, "No bootable device")

    def reset(self) -> None:
        """A machine reset requested by the guest (i8042 0xFE, port 0x92, triple fault)."""
        self.runloop.request_reset()

    def run(self, timeout: float | None = None, *, guest_ns: int | None = None) -> RunResult:
        """Run the guest until it exits, halts for good, or ``timeout`` seconds pass.

        ``guest_ns`` also ends the run (reason ``"guest-time"``) once the guest's clock
        (:attr:`clock`) reaches it: under ``deterministic`` that is the same instruction
        on every run, a place to save state or take a snapshot.

        On the main thread, SIGINT (and SIGTERM or SIGHUP when a Python handler
        is set for them) ends the current slice at the next translation block,
        so the handler runs promptly whatever the guest does: KeyboardInterrupt
        then leaves ``run`` and the machine can be closed, or run again."""
        self._check_open()
        loop = self.runloop
        loop.begin()
        if threading.current_thread() is threading.main_thread():
            watch_signals(RUN_SIGNALS)
        wall_deadline = None if timeout is None else time.monotonic_ns() + int(timeout * 1e9)
        self._arm_breakpoint_skip()
        # Not made through clock.timer(): a run's own deadline is no part of saved state.
        until = Timer(self.clock, lambda: self.stop("guest-time", None, "guest time reached"))
        if guest_ns is not None:
            until.arm(guest_ns)
        try:
            if self.parallel is None:
                return loop.run(wall_deadline)
            with self.big_lock:
                self.parallel.start()
                try:
                    return loop.run(wall_deadline)
                finally:
                    self.parallel.stop()
        finally:
            until.cancel()
            loop.end()

    def _do_reset(self) -> None:
        self.runloop.do_reset()

    def _reset_devices(self) -> None:
        """Every device to its power-on state, and the A20 gate open (as at power-on):
        the slots in the board's reset order (``Slot.resets_last``: the interrupt
        controllers), then the PCI BARs claimed where the reset left them."""
        self.core.a20_enabled = True
        for dev in self._resettable:
            dev.reset()
        for owner in reset_order(self.board.slots):
            owner.reset()
        self.pci_bars.sync()

    @property
    def no_reboot(self) -> bool:
        """End the run when the guest resets or triple-faults, instead of resetting."""
        return self.runloop.no_reboot

    @no_reboot.setter
    def no_reboot(self, value: bool) -> None:
        self.runloop.no_reboot = value

    @contextmanager
    def on_vcpu(self, index: int) -> Iterator[None]:
        """Between runs, for the block: registers, control registers and virtual memory
        (:meth:`reg`, :meth:`read_virtual`, the engine) are vCPU ``index``'s (``smp``;
        CPU 0 alone otherwise).  Who runs next does not change.

        >>> with Machine(memory="16M", vga="none", smp=2) as m, m.on_vcpu(1):
        ...     hex(m.reg("eip")), m.vcpu_states()
        ('0xfff0', ['running', 'wait-for-sipi'])
        """
        if self.vcpus is not None:
            with self.vcpus.viewing(index):
                yield
            return
        if self.parallel is not None and index != 0 and 0 < index < self.cpus:
            self._refuse_multi("another vCPU's view")
        if index != 0:
            raise ValueError(f"CPU {index!r} does not exist (this machine has CPU 0)")
        yield

    def vcpu_states(self) -> list[str]:
        """Each vCPU's ``"running"``, ``"halted"`` or ``"wait-for-sipi"`` (an AP not started)."""
        if self.parallel is not None:
            return [self.parallel.run_state(i) for i in range(self.cpus)]
        if self.vcpus is None:
            return ["halted" if self.cpu.halted else "running"]
        return [self.vcpus.run_state(i) for i in range(len(self.vcpus))]

    def vcpu_stats(self) -> list[dict[str, object]]:
        """Per-vCPU counters (qemu_lite.smp.VcpuStats) of an ``smp`` machine; one CPU: []."""
        if self.board.apic_bus is None:
            return []
        stats = [s.as_dict() for s in self.board.apic_bus.stats]
        if self.parallel is not None:
            for item, code in zip(stats, self.parallel.code_stats(), strict=False):
                item.update(code)
        return stats

    # -- saved state -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """An in-memory snapshot of the whole machine, between runs (not from a callback).

        >>> m = Machine(memory="16M", vga="none")
        >>> token = m.snapshot()
        >>> m.write_memory(0x1000, b"changed")
        >>> m.restore(token)
        >>> m.read_memory(0x1000, 7)
        b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
        >>> m.close()

        Costs one copy of RAM; from then on the shadow MMU logs the frames written
        (``mmu="native"`` cannot: its restores copy all of RAM)."""
        self._check_open()
        self._refuse_multi("snapshots")
        return machine_state.take(self)

    def restore(self, token: Snapshot) -> None:
        """Put the machine back to ``token`` (from :meth:`snapshot`): RAM, CPU, devices,
        clocks, disk overlays.  Restoring the latest token copies only the pages written
        since it was taken or last restored."""
        self._check_open()
        self._refuse_multi("snapshots")
        machine_state.restore(self, token)

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """Write the machine's state to a file (RAM deflated) that :meth:`restore_state`
        of a machine built with the same options loads, in this process or another."""
        self._check_open()
        self._refuse_multi("saved state")
        machine_state.save_file(self, path)

    def restore_state(self, path: str | os.PathLike[str]) -> None:
        """Load a file from :meth:`save_state`; the disks must be the same images (their
        sizes and content hashes are checked)."""
        self._check_open()
        self._refuse_multi("saved state")
        machine_state.load_file(self, path)

    # -- teardown ------------------------------------------------------------------

    def close(self) -> None:
        """Flush disks and release host resources (serial backends, image locks, the
        guest RAM's pages); a closed machine can no longer run or be read."""
        self._finalizer.detach()
        try:
            _run_closers(self._closers)
        finally:
            if not self._closed:
                self._closed = True
                self.core.release_ram()

    def _refuse_multi(self, what: str) -> None:
        if self.parallel is not None:
            raise ValueError(f"{what} need -accel tcg,thread=single (the vCPUs of "
                             "thread=multi run on their own threads)")

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the machine is closed")

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RamImage:
    """One of :meth:`Machine.add_ram_image`'s images."""

    def __init__(self, machine: Machine, address: int, data: bytes) -> None:
        self._machine, self._address, self._data = machine, address, data

    def reset(self) -> None:
        self._machine.write_memory(self._address, self._data)


def _run_closers(closers: list[Callable[[], None]]) -> None:
    """Run and forget ``closers``, last added first; every one runs even if one fails."""
    error: BaseException | None = None
    while closers:
        try:
            closers.pop()()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others
            error = error or exc
    if error is not None:
        raise error


def _release_dropped(closers: list[Callable[[], None]]) -> None:
    if closers:
        warnings.warn("Machine was not closed: its disks and serial backends were released "
                      "when it was garbage-collected (use close() or a with block)",
                      ResourceWarning, stacklevel=2)
    _run_closers(closers)


def check_boot_order(order: str) -> str:
    """``order`` if it is a boot order: one to three of c (hard disk), d (CD-ROM) and
    n (network: option ROMs' boot entry vectors), each once, first tried first."""
    if not order or len(set(order)) != len(order) or not set(order) <= set("cdn"):
        raise ValueError(f"boot order must be one to three of c (hard disk), d (CD-ROM) "
                         f"and n (network), each once, not {order!r}")
    return order


def _check_multi(mmu: str | None, deterministic: bool) -> str:
    """thread=multi's limits, checked before anything is built; the MMU it runs."""
    why = multi_supported()
    if why is not None:
        raise ValueError(why)
    if deterministic:
        raise ValueError("--deterministic needs -accel tcg,thread=single (host threads "
                         "interleave differently in every run)")
    if mmu not in (None, "native"):
        raise ValueError(f"thread=multi runs Unicorn's own MMU on every vCPU (--mmu native), "
                         f"not {mmu!r}: the shadow MMU is one engine's")
    return "native"


def _check_arguments(*, disk: object, hdb: object, cdrom: object, drives: object, boot: object,
                     serial: object, serial2: object, bios: object, mmu: object,
                     rtc_base: object) -> None:
    """Refuse a wrong type or value at once, naming the argument (not deep inside)."""
    for name, value in (("disk", disk), ("hdb", hdb), ("cdrom", cdrom)):
        if value is not None and not isinstance(value, (str, os.PathLike, BlockImage)):
            raise TypeError(f"{name} must be a path or a BlockImage, "
                            f"not {type(value).__name__}")
    if drives is not None and (not isinstance(drives, (list, tuple))
                               or not all(isinstance(d, Drive) for d in drives)):
        raise TypeError("drives must be a list of qemu_lite.pc.Drive")
    for name, value in (("serial", serial), ("serial2", serial2)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a backend spec such as 'stdio' or None, "
                            f"not {type(value).__name__}")
    if bios is not None and not isinstance(bios, (bytes, bytearray, memoryview, str,
                                                  os.PathLike)):
        raise TypeError(f"bios must be the image's bytes or a path, not {type(bios).__name__}")
    if not isinstance(mmu, str) or mmu not in MMU_MODES:
        raise ValueError(f"unknown MMU mode {mmu!r} (choose from {', '.join(MMU_MODES)})")
    if not isinstance(boot, str):
        raise TypeError(f"boot must be a string such as 'c' or 'ncd', not {type(boot).__name__}")
    check_boot_order(boot)
    if rtc_base is not None:
        if isinstance(rtc_base, bool) or not isinstance(rtc_base, (int, float)):
            raise TypeError(f"rtc_base must be a Unix time in seconds or None, "
                            f"not {type(rtc_base).__name__}")
        if not RTC_BASE_MIN <= rtc_base <= RTC_BASE_MAX:  # also refuses nan
            raise ValueError(f"rtc_base {rtc_base!r} is outside years 1-9999")


# The RTC's base time range: what datetime (and a century register) can represent.
RTC_BASE_MIN, RTC_BASE_MAX = -62135596800.0, 253402300799.0


def _bios_bytes(bios: bytes | bytearray | memoryview | str | os.PathLike[str] | None) -> bytes:
    if bios is None:
        data = bundled_firmware("bios.bin")
    elif isinstance(bios, (bytes, bytearray, memoryview)):
        data = bytes(bios)
    else:
        data = read_input_file(bios, "BIOS")
    size = len(data)
    if size == 0 or size % BIOS_SIZE or size > BIOS_MAX_SIZE:
        raise ValueError(f"BIOS image must be a multiple of 64 KiB up to 16 MiB, "
                         f"got {size} bytes")
    return data
