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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Protocol

from unicorn import UcError
from unicorn import unicorn_const as UCC

import mmu_core
from mmu_core._core import (
    STOP_ERROR,
    STOP_FAULT,
    STOP_INTERRUPT,
    STOP_INVALID,
    STOP_REQUEST,
    STOP_SYSCALL,
    STOP_SYSENTER,
    TLB_IDENTITY,
    TLB_NATIVE,
)
from qemu_lite import pc
from qemu_lite._vcpu_hooks import VcpuHooks, VirtualTsc, keep_gil_for_engine_calls, watch_signals
from qemu_lite.clock import TSC_KHZ, HostClock, VirtualClock
from qemu_lite.cpuid import CpuidModel
from qemu_lite.debughooks import DebugHooks
from qemu_lite.devices.base import Device
from qemu_lite.devices.block import BlockImage
from qemu_lite.devices.debugport import FW_EVENT_NO_BOOT
from qemu_lite.devices.i8042 import text_to_set2
from qemu_lite.devices.netbackends import Nic
from qemu_lite.devices.vga import Vga
from qemu_lite.display import open_vnc, screen
from qemu_lite.loaders.files import read_input_file
from qemu_lite.pc import Drive
from qemu_lite.tracehooks import TraceHooks
from qemu_lite.unassigned import UnassignedMemory
from qemu_lite.vcpu import EFLAGS_IF, GuestError, TripleFault, VCpu, new_engine

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

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


class InterruptSource(Protocol):
    """What the vCPU asks at instruction boundaries (the PIC, or the local APIC)."""

    def has_interrupt(self) -> bool: ...

    def acknowledge(self) -> int: ...


class NoInterrupts:
    def has_interrupt(self) -> bool:
        return False

    def acknowledge(self) -> int:
        raise RuntimeError("no interrupt pending")


@dataclass
class RunResult:
    """Why :meth:`Machine.run` returned.

    ``reason`` is one of ``"exit"`` (isa-debug-exit; ``exit_status`` set),
    ``"halted"`` (HLT with interrupts disabled), ``"timeout"``,
    ``"instructions"`` (budget spent), ``"stopped"`` (:meth:`Machine.stop`),
    ``"breakpoint"`` / ``"step"`` (:meth:`Machine.add_breakpoint`, :meth:`Machine.step`),
    ``"reset"`` (the guest reset the machine and ``no_reboot`` was set),
    ``"triple-fault"``, ``"no-boot"`` (the BIOS found nothing to boot) or
    ``"no-boot-after-reset"`` (the same, after the guest had reset the machine:
    a crashed kernel, say).
    """

    reason: str
    exit_status: int | None = None
    message: str = ""


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
        mmu: str = "cached",
        snapshot: bool = False,
        no_reboot: bool = False,
        deterministic: bool = False,
        rtc_base: float | None = None,
        vga: str = "std",
        vga_bios: str | os.PathLike[str] | None = None,
        vnc: str | None = None,
        nics: list[Nic] | None = None,
        net_dump: str | os.PathLike[str] | None = None,
    ) -> None:
        _check_arguments(disk=disk, hdb=hdb, cdrom=cdrom, drives=drives, boot=boot,
                         serial=serial, serial2=serial2, bios=bios, mmu=mmu,
                         rtc_base=rtc_base)
        if vga not in ("std", "none"):
            raise ValueError(f"unknown VGA {vga!r} (choose std or none)")
        self.memory_size = parse_size(memory)
        self.mmu_mode = mmu
        self.no_reboot = no_reboot
        bios_data = _bios_bytes(bios)
        self.uc, reset_ctx = new_engine()
        keep_gil_for_engine_calls(self.uc)  # no GIL hand-off per register read (threads)
        self.core = mmu_core.Core(self.uc, self.memory_size, MMU_MODES[mmu])
        self.cpu = VCpu(self.uc, self.core, reset_ctx)
        self.hooks = VcpuHooks(self.uc)
        self.deterministic = deterministic
        self.clock: HostClock | VirtualClock
        if deterministic:
            self.clock = VirtualClock(self.hooks)
            self.clock.on_schedule = self._timer_armed_virtual
            rtc_base = DETERMINISTIC_RTC_BASE if rtc_base is None else rtc_base
        else:
            self.clock = HostClock()
            self.clock.on_schedule = self._timer_armed_host
        self.rtc_base = rtc_base
        self.tsc = VirtualTsc(self.uc, self.hooks, TSC_KHZ,
                              None if deterministic else self.clock.start_ns)
        if deterministic:
            self.core.set_io_clock(self.hooks, self.hooks.vclock_address(), VirtualClock.PORT_NS)
        self.cpuid = CpuidModel(tsc_mhz=TSC_KHZ // 1000, hide_rdrand=deterministic)
        self.core.set_cpuid_handler(lambda: self.cpuid.hook(self.uc))
        self._vcpu_thread: int | None = None
        # A wake-up token: released by wake(), taken by the halted vCPU's sleep.  A
        # plain Lock, not an Event: release() never blocks, so wake() is safe from a
        # signal handler that interrupted the vCPU thread (an Event's own lock
        # could be held by that very thread).
        self._wake_token = threading.Lock()
        self._wake_token.acquire()
        self._stop_reason: RunResult | None = None
        self._pending_reset = False
        self.guest_resets = 0  # resets since power-on (triple faults, reset requests)
        self._resettable: list[Device] = [self.tsc]
        self._mmio_callbacks: list[tuple[object, object]] = []
        self._callback_error: BaseException | None = None
        self._stop_requested: RunResult | None = None  # survives run()'s reset
        self.irq_source: InterruptSource = NoInterrupts()
        self._closers: list[Callable[[], None]] = []
        # Releases disks and backends of a Machine dropped without close(); it must hold
        # nothing that refers to the Machine, or the Machine would never be collected.
        self._finalizer = weakref.finalize(self, _release_dropped, self._closers)
        self._pollers: list[Callable[[], None]] = []
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
                                  nics=nics, net_dump=net_dump)
        except BaseException:
            self.close()  # a half-built machine must not keep the disks it opened locked
            raise
        self.host_input = screen.HostInput(self.board.kbc, self.wake)
        self.add_poller(self.host_input.pump)
        try:
            self.vnc = open_vnc(self, vnc) if vnc is not None else None
        except ValueError:
            self.close()
            raise
        self.unassigned.fill_gaps()

    def _timer_armed_host(self, guest_ns: int) -> None:
        # A timer armed by a device during a slice must end that slice in time.
        assert isinstance(self.clock, HostClock)
        self.hooks.advance_deadline(self.clock.host_deadline_ns(guest_ns))

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
        self.core.claim_ports(base, count, device)

    def add_mmio(self, base: int, size: int, device: Device,
                 access_ns: int = VirtualClock.MMIO_NS) -> None:
        """Map ``device`` at physical ``base``: guest loads and stores call its
        ``io_read(offset, size)`` / ``io_write(offset, size, value)``; each
        access costs ``access_ns`` of deterministic guest time."""
        charge = self.hooks.charge if self.deterministic else (lambda ns: None)

        # Exceptions (a device bug, KeyboardInterrupt from a signal handler) must
        # not reach the binding's ctypes callback, which would drop them: keep
        # the first, end the slice at the next block and raise it from run().
        def read(uc: object, offset: int, size: int, _user: object) -> int:
            charge(access_ns)
            try:
                value = device.io_read(offset, size)
                if self.mmio_tracer is not None:
                    self.mmio_tracer(base + offset, size, value, False)
                return value
            except BaseException as exc:
                self._callback_failed(exc)
                return (1 << (8 * size)) - 1

        def write(uc: object, offset: int, size: int, value: int, _user: object) -> None:
            charge(access_ns)
            try:
                device.io_write(offset, size, value)
                if self.mmio_tracer is not None:
                    self.mmio_tracer(base + offset, size, value, True)
            except BaseException as exc:
                self._callback_failed(exc)

        self.unassigned.release(base, size)
        self.uc.mmio_map(base, size, read, None, write, None)
        self._mmio_callbacks.append((read, write))

    def _callback_failed(self, exc: BaseException) -> None:
        if self._callback_error is None:
            self._callback_error = exc
        self.hooks.poke()

    def add_resettable(self, *devices: Device) -> None:
        """Devices whose ``reset()`` runs when the machine resets."""
        self._resettable.extend(devices)

    def set_a20(self, enabled: bool) -> None:
        """The A20 gate (i8042 output port, port 0x92)."""
        self.core.a20_enabled = enabled

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
        try:
            self._wake_token.release()
        except RuntimeError:  # a wake-up is already pending
            pass
        self.hooks.poke()

    # -- memory and registers ------------------------------------------------------

    def read_memory(self, address: int, size: int) -> bytes:
        """Read guest physical memory: RAM or the BIOS ROM.

        A range outside them (device MMIO included: a host read must not have a
        device's side effects) raises ValueError naming the valid ranges."""
        address, size = self._check_range(address, size, write=False)
        return bytes(self.uc.mem_read(address, size)) if size else b""

    def write_memory(self, address: int, data: bytes) -> None:
        """Write guest RAM, keeping the shadow MMU coherent.

        The BIOS ROM is read-only here as it is to the guest (give other
        firmware with ``bios=``); a range that is not all RAM raises
        ValueError before anything is written."""
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
        if self._stop_reason is None:
            self._stop_reason = RunResult(reason, exit_status, message)
        if threading.get_ident() == self._vcpu_thread:
            self.core.request_stop(STOP_REQUEST)  # from a device: end this instruction's slice
        else:
            self.wake()

    def stop_at_next_block(self, reason: str = "stopped", message: str = "") -> None:
        """End :meth:`run` at the next translation block, from any thread or from a
        signal handler: unlike :meth:`stop` on the vCPU thread, it never cuts the
        current instruction short.  A request made while no run is in progress
        ends the next run before its first instruction."""
        if self._stop_requested is None:
            self._stop_requested = RunResult(reason, None, message)
        self.wake()

    @property
    def stop_pending(self) -> bool:
        """A :meth:`stop_at_next_block` request (a signal, say) waits for the next run."""
        return self._stop_requested is not None

    def powerdown_request(self) -> None:
        """Press the power button: ask the guest to shut down (QMP ``system_powerdown``).

        The guest learns of it through ACPI, which this machine does not emulate
        yet, so this raises NotImplementedError; an ACPI model implements it (a
        power-button event), and the guest's own shutdown then ends the run."""
        raise NotImplementedError("system_powerdown needs ACPI, which this machine does "
                                  "not emulate yet")

    def _stop_result(self) -> RunResult | None:
        """What ends the run now, if anything (stop(), or stop_at_next_block())."""
        if self._stop_reason is not None:
            return self._stop_reason
        request = self._stop_requested
        if request is not None:  # checked first: a signal handler may set it at any time
            self._stop_requested = None
        return request

    def exit(self, status: int) -> None:
        """isa-debug-exit: the run ends and the process should exit with ``status``."""
        self.stop("exit", status, f"guest exit status {status}")

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
        if self.no_reboot:
            self.stop("reset", None, "guest requested a reset (--no-reboot)")
            return
        self.core.request_stop(STOP_REQUEST)
        self._pending_reset = True

    def run(self, timeout: float | None = None) -> RunResult:
        """Run the guest until it exits, halts for good, or ``timeout`` seconds pass.

        On the main thread, SIGINT (and SIGTERM or SIGHUP when a Python handler
        is set for them) ends the current slice at the next translation block,
        so the handler runs promptly whatever the guest does: KeyboardInterrupt
        then leaves ``run`` and the machine can be closed, or run again."""
        self._stop_reason = None
        self._pending_reset = False
        self.hooks.take_fired()  # a stop left by a run that an exception ended
        if threading.current_thread() is threading.main_thread():
            watch_signals(RUN_SIGNALS)
        wall_deadline = None if timeout is None else time.monotonic_ns() + int(timeout * 1e9)
        self._vcpu_thread = threading.get_ident()
        self._arm_breakpoint_skip()
        try:
            return self._run_loop(wall_deadline)
        finally:
            self._vcpu_thread = None

    def _service(self) -> None:
        self.clock.run_due()
        for poll in self._pollers:
            poll()

    def _run_loop(self, wall_deadline: int | None) -> RunResult:
        cpu, core = self.cpu, self.core
        while True:
            self._service()
            stop = self._stop_result()
            if stop is not None:
                return stop
            if wall_deadline is not None and time.monotonic_ns() >= wall_deadline:
                return RunResult("timeout", None, "time budget spent")
            if self._pending_reset:
                self._pending_reset = False
                self._do_reset()
            if self._take_nmi():
                try:
                    cpu.inject_nmi()
                except TripleFault as exc:
                    if self._triple_fault(exc):
                        return self._stop_reason  # type: ignore[return-value]
                    continue
            if self.irq_source.has_interrupt():
                if cpu.interrupts_enabled():
                    try:
                        cpu.inject_external(self.irq_source.acknowledge())
                    except TripleFault as exc:
                        if self._triple_fault(exc):
                            return self._stop_reason  # type: ignore[return-value]
                        continue
                    self.hooks.waiting = False
                else:
                    # Masked: the block hook stops the slice once EFLAGS.IF is set.
                    self.hooks.waiting = True
                    if cpu.in_interrupt_shadow():
                        self.hooks.skip_once_at(cpu.linear_pc())
            if cpu.halted:
                self._wait_while_halted(wall_deadline)
                continue
            self.hooks.set_deadline(self._next_due(wall_deadline) or 0)
            err = cpu.run_slice()
            flags, intno = core.take_stop()
            stopped_by_block_hook = self.hooks.take_fired() != 0
            if flags & STOP_ERROR:
                callback_error = core.take_error()
                if callback_error is not None:
                    raise callback_error
            if self._callback_error is not None:
                callback_error, self._callback_error = self._callback_error, None
                raise callback_error
            stop = self._stop_result()
            if stop is not None:
                return stop
            try:
                if flags & STOP_FAULT:
                    cpu.deliver_mmu_fault(*core.take_fault())
                elif flags & STOP_INTERRUPT:
                    cpu.deliver_cpu_event(intno)
                elif flags & STOP_INVALID:
                    cpu.deliver_invalid_opcode()
                elif flags & STOP_SYSCALL:
                    cpu.do_syscall()
                elif flags & STOP_SYSENTER:
                    cpu.do_sysenter()
                elif err is not None:
                    raise GuestError(self._describe_error(err))
                elif not flags and not stopped_by_block_hook and cpu.stopped_on_hlt():
                    # Only HLT ends a slice without a stop flag or the block hook.
                    if not cpu.reg("rflags") & EFLAGS_IF and not self._nmi_pending():
                        return RunResult("halted", None, "guest halted with interrupts "
                                         f"disabled at {cpu.linear_pc() - 1:#x}")
                    cpu.halted = True
            except TripleFault as exc:
                if self._triple_fault(exc):
                    return self._stop_reason  # type: ignore[return-value]

    def _nmi_pending(self) -> bool:
        return bool(getattr(self.irq_source, "nmi_pending", False))

    def _take_nmi(self) -> bool:
        take = getattr(self.irq_source, "take_nmi", None)
        return bool(take()) if take is not None else False

    def _triple_fault(self, exc: TripleFault) -> bool:
        """A real PC resets on a triple fault; under no_reboot the run ends."""
        log.info("%s; resetting", exc)  # a reset loop must not flood the console
        if self.no_reboot:
            self.stop("triple-fault", None, str(exc))
            return True
        self._do_reset()
        return False

    def _do_reset(self) -> None:
        self.guest_resets += 1
        self.cpu.reset()
        for dev in self._resettable:
            dev.reset()

    def _next_due(self, wall_deadline: int | None) -> int | None:
        """Host monotonic ns of the next timer or the end of the time budget.

        In deterministic mode timers are block deadlines instead (set here too)."""
        due = wall_deadline
        guest = self.clock.next_deadline()
        if isinstance(self.clock, VirtualClock):
            self.hooks.set_block_deadline(0 if guest is None else self.clock.block_deadline(guest))
        elif guest is not None:
            t = self.clock.host_deadline_ns(guest)
            due = t if due is None else min(due, t)
        return due

    def _wait_while_halted(self, wall_deadline: int | None) -> None:
        """Sleep until a timer is due, input arrives, the run is stopped or the time
        budget ends."""
        while self._stop_reason is None and self._stop_requested is None:
            if self.irq_source.has_interrupt() or self._nmi_pending():
                self.cpu.halted = False
                return
            due = self._next_due(wall_deadline)
            guest = self.clock.next_deadline()
            if isinstance(self.clock, VirtualClock) and guest is not None:
                self.clock.skip_to(guest)  # idle time costs nothing in virtual time
                self._service()
                continue
            now = time.monotonic_ns()
            if due is not None and due <= now:
                return
            self._wake_token.acquire(timeout=-1 if due is None else (due - now) / 1e9)
            self._service()
            if self._stop_reason is not None:
                return  # stop() from another thread (or a poller) while halted

    def _describe_error(self, err: UcError) -> str:
        pc = self.cpu.linear_pc()
        names = {UCC.UC_ERR_READ_UNMAPPED: "read of unmapped memory",
                 UCC.UC_ERR_WRITE_UNMAPPED: "write to unmapped memory",
                 UCC.UC_ERR_FETCH_UNMAPPED: "execution of unmapped memory",
                 UCC.UC_ERR_WRITE_PROT: "write to read-only memory",
                 UCC.UC_ERR_INSN_INVALID: "invalid instruction"}
        what = names.get(err.errno, str(err))
        return f"guest stopped: {what} at pc {pc:#x}"

    # -- teardown ------------------------------------------------------------------

    def close(self) -> None:
        """Flush disks and release host resources (serial backends, image locks)."""
        self._finalizer.detach()
        _run_closers(self._closers)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    if boot not in ("c", "d"):
        raise ValueError(f"boot order must be c (hard disk) or d (CD-ROM), not {boot!r}")
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
