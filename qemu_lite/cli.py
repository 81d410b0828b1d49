"""``qemu-lite``: boot a disk image or a kernel, QEMU-style.

Exit status: odd values come from the guest through isa-debug-exit
((value << 1) | 1, as QEMU); even values are qemu-lite's own:
0 the guest halted with interrupts off, 2 usage or input error,
4 time budget spent, 6 the guest crashed (triple fault, unrecoverable
error), 8 the guest asked for a reset under --no-reboot, 10 the BIOS found
no bootable device, 12 the BIOS found no bootable device after the guest had
reset the machine (a kernel that crashed, say); 128 + N signal N ended the
run (130 SIGINT, 143 SIGTERM, 129 SIGHUP), after the disks were flushed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from qemu_lite.devices.block import BlockImageError

if TYPE_CHECKING:
    from qemu_lite.machine import Machine

STATUS = {"halted": 0, "usage": 2, "timeout": 4, "crash": 6, "reset": 8, "stopped": 0,
          "no-boot": 10, "no-boot-after-reset": 12}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qemu-lite",
        description="Boot an x86 PC: a disk image through our BIOS, or a kernel directly. "
                    "With no DISK and no --kernel, boots the bundled default image.",
        epilog="Exit status: odd = the guest's isa-debug-exit value (v << 1) | 1; "
               "0 guest halted, 2 usage error, 4 timeout, 6 guest crashed, "
               "8 reset under --no-reboot, 10 no bootable device, 12 no bootable device "
               "after the guest reset (a crashed kernel); 128 + N ended by signal N.",
    )
    p.add_argument("disk", nargs="?", metavar="DISK", help="raw disk image for the primary IDE master")
    p.add_argument("-hda", "--hda", dest="hda", metavar="FILE", help="same as DISK")
    p.add_argument("-hdb", "--hdb", dest="hdb", metavar="FILE", help="primary IDE slave disk")
    p.add_argument("-cdrom", "--cdrom", dest="cdrom", metavar="FILE",
                   help="CD-ROM image (ISO) on the secondary IDE master, read-only")
    p.add_argument("--drive", "-drive", action="append", default=[], metavar="SPEC",
                   help="file=PATH[,media=disk|cdrom][,readonly=on][,index=0-3][,if=ide]")
    p.add_argument("--boot", "-boot", default="c", choices=["c", "d"],
                   help="boot from the hard disk (c, default) or the CD-ROM (d)")
    p.add_argument("-m", "--memory", default="64M", metavar="SIZE",
                   help="guest RAM, e.g. 64M or 1G (plain numbers are MiB; default 64M)")
    p.add_argument("--serial", "-serial", default="stdio", metavar="SPEC",
                   help="COM1 backend: stdio (default), none, file:PATH, pty, or a pyserial URL "
                        "(socket://host:port, loop://, rfc2217://host:port, /dev/ttyS0)")
    p.add_argument("--serial2", metavar="SPEC", help="COM2 backend (same forms as --serial)")
    p.add_argument("--kernel", "-kernel", metavar="FILE",
                   help="boot a kernel directly: a Linux bzImage or a Multiboot v1 kernel")
    p.add_argument("--append", "-append", default="", metavar="CMDLINE",
                   help="kernel command line")
    p.add_argument("--initrd", "-initrd", metavar="FILES",
                   help="Linux: the initrd; Multiboot: comma-separated modules ('file arg,file2')")
    p.add_argument("--bios", "-bios", metavar="FILE", help="64 KiB BIOS image (default: ours)")
    p.add_argument("--snapshot", "-snapshot", action="store_true",
                   help="keep disk writes in memory; the image file is not modified")
    p.add_argument("--no-reboot", "-no-reboot", action="store_true",
                   help="exit instead of rebooting when the guest resets or triple-faults")
    p.add_argument("--mmu", default="cached", choices=["cached", "naive", "native", "identity"],
                   help="guest MMU: cached shadow page tables (default), naive (shadow pages "
                        "dropped at every CR3 load), native (Unicorn's own MMU), identity "
                        "(no guest paging)")
    p.add_argument("--mmu-pages", type=int, metavar="N",
                   help="bound the number of shadow pages (least recently used are recycled)")
    p.add_argument("--mmu-stats", action="store_true",
                   help="print the shadow MMU's statistics to stderr at exit")
    p.add_argument("--deterministic", action="store_true",
                   help="guest time follows guest progress, not the host clock: the same "
                        "image and input give the same output (the RTC starts at "
                        "2000-01-01 unless --rtc base= is given; CPUID hides the TSC)")
    p.add_argument("--rtc", "-rtc", metavar="base=WHEN",
                   help="RTC start: base=utc (the host's time, default), or "
                        "base=YYYY-MM-DDTHH:MM:SS (UTC), as QEMU's -rtc base=")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop the guest after this many seconds of wall time")
    p.add_argument("-d", "--debug", action="store_true", help="log device and run-loop details")
    return p


class Terminated(BaseException):
    """A signal arrived before the machine ran: unwind, closing what was opened."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT, SIGTERM and SIGHUP for one run of the CLI.

    Once the machine runs, a signal ends the run at the next translation block
    (``Machine.stop_at_next_block``): it never lands inside a device callback,
    and the disks are flushed and the terminal restored by the normal close.
    Before that it raises :class:`Terminated`.  The first signal decides the
    exit status; later ones are ignored.  A signal ignored when we start
    (``nohup``, a background job's SIGINT) stays ignored."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.machine: Machine | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        try:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread: leave the process's handlers alone
            pass

    def restore(self) -> None:
        for signum, old in self._previous.items():
            signal.signal(signum, old)  # type: ignore[arg-type]

    def _handler(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if self.machine is None:
            raise Terminated(signum)
        self.machine.stop_at_next_block("signal", "")


def _signal_status(signum: int) -> int:
    name = signal.Signals(signum).name
    _say("qemu-lite: interrupted" if signum == signal.SIGINT else f"qemu-lite: terminated by {name}")
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="qemu-lite: %(name)s: %(message)s")
    signals = _Signals()
    signals.install()
    try:
        status = _run(parser, args, signals)
    except KeyboardInterrupt:  # SIGINT where our handler could not be installed
        return _signal_status(signal.SIGINT)
    except Terminated as exc:
        return _signal_status(exc.signum)
    finally:
        signals.restore()
    if signals.signum is not None:  # the run ended at the signal; the machine is closed
        return _signal_status(signals.signum)
    return status


def _say(line: str) -> None:
    """One line on stderr, which a hung-up terminal (SIGHUP) may no longer take."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _fail(message: str) -> int:
    print(f"qemu-lite: {message}", file=sys.stderr)
    return STATUS["usage"]


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, signals: _Signals) -> int:
    from qemu_lite.loaders import linux, multiboot
    from qemu_lite.machine import Machine, bundled_firmware_path, parse_size
    from qemu_lite.pc import Drive, parse_drive
    from qemu_lite.vcpu import GuestError, TripleFault

    if args.disk and args.hda:
        parser.error("give the disk image either as DISK or as -hda, not both")
    try:
        parse_size(args.memory)
    except ValueError as exc:
        parser.error(str(exc))
    disk = args.disk or args.hda
    snapshot = args.snapshot
    drives: list[Drive] = []
    for spec in args.drive:
        try:
            drives.append(parse_drive(spec, next_index=len(drives)))
        except ValueError as exc:
            parser.error(str(exc))
    if disk is None and args.kernel is None and not drives and not args.cdrom and not args.hdb:
        disk = bundled_firmware_path("default.img")
        snapshot = True  # the bundled image is package data: never write it
    if args.kernel and args.initrd and _is_bzimage(args.kernel) and not os.path.isfile(args.initrd):
        return _fail(f"cannot open initrd '{args.initrd}': No such file")
    extra = [(d.file, "drive image") for d in drives] + [(args.hdb, "disk image"),
                                                        (args.cdrom, "CD-ROM image")]
    for path, what in ((disk, "disk image"), (args.kernel, "kernel"), (args.bios, "BIOS"),
                       *extra):
        if path is not None and not os.path.isfile(path):
            return _fail(f"cannot open {what} '{path}': No such file")
    rtc_base = None
    if args.rtc:
        try:
            rtc_base = _parse_rtc(args.rtc)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        machine = Machine(disk, hdb=args.hdb, cdrom=args.cdrom, drives=drives, boot=args.boot,
                          memory=args.memory, serial=args.serial, bios=args.bios,
                          mmu=args.mmu, snapshot=snapshot, no_reboot=args.no_reboot,
                          deterministic=args.deterministic, rtc_base=rtc_base)
    except (BlockImageError, ValueError, OSError) as exc:
        return _fail(str(exc))
    if args.mmu_pages is not None:
        if args.mmu_pages < 1:
            parser.error("--mmu-pages must be at least 1")
        machine.core.set_max_shadow_pages(args.mmu_pages)
    with machine:
        if args.kernel and _is_bzimage(args.kernel):
            try:
                linux.load(machine, args.kernel, args.append, args.initrd)
            except (linux.LinuxBootError, OSError) as exc:
                return _fail(str(exc))
        elif args.kernel:
            modules = []
            for item in filter(None, (args.initrd or "").split(",")):
                path = item.split(" ", 1)[0]
                if not os.path.isfile(path):
                    return _fail(f"cannot open module '{path}': No such file")
                modules.append((path, item))
            try:
                multiboot.load(machine, args.kernel, args.append, modules)
            except (multiboot.MultibootError, OSError) as exc:
                return _fail(str(exc))
        try:
            signals.machine = machine
            result = machine.run(timeout=args.timeout)
        except TripleFault as exc:
            print(f"qemu-lite: {exc}", file=sys.stderr)
            return STATUS["crash"]
        except GuestError as exc:
            print(f"qemu-lite: {exc}", file=sys.stderr)
            return STATUS["crash"]
        finally:
            if args.mmu_stats:
                _print_mmu_stats(machine)
    if result.reason == "exit":
        assert result.exit_status is not None
        return result.exit_status
    if result.message:
        print(f"qemu-lite: {result.message}", file=sys.stderr)
    return STATUS.get(result.reason, STATUS["crash"])


def _is_bzimage(path: str) -> bool:
    from qemu_lite.loaders import linux

    try:
        with open(path, "rb") as f:
            return linux.is_bzimage(f.read(0x300))
    except OSError:
        return False


def _print_mmu_stats(machine: Machine) -> None:
    stats = machine.core.mmu_stats()
    width = max(map(len, stats), default=0)
    print(f"qemu-lite: MMU statistics ({machine.mmu_mode}):", file=sys.stderr)
    for name, value in stats.items():
        print(f"  {name:<{width}}  {value}", file=sys.stderr)


def _parse_rtc(spec: str) -> float | None:
    """QEMU's ``-rtc base=utc|YYYY-MM-DDTHH:MM:SS`` -> Unix time (None: host time)."""
    import datetime

    key, _, value = spec.partition("=")
    if key != "base" or not value:
        raise ValueError(f"invalid --rtc {spec!r} (use base=utc or base=2020-01-01T00:00:00)")
    if value == "utc":
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid --rtc date {value!r} (use YYYY-MM-DDTHH:MM:SS)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()
