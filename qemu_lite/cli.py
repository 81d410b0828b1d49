"""``qemu-lite``: boot a disk image or a kernel, QEMU-style.

Exit status: odd values come from the guest through isa-debug-exit
((value << 1) | 1, as QEMU); even values are qemu-lite's own:
0 the guest halted with interrupts off, 2 usage or input error,
4 time budget spent, 6 the guest crashed (triple fault, unrecoverable
error), 8 the guest asked for a reset under --no-reboot, 10 the BIOS found
no bootable device, 12 the BIOS found no bootable device after the guest had
reset the machine (a kernel that crashed, say), 14 an internal error of
qemu-lite (a bug: one line on stderr names a file holding the traceback, to
attach to a report on the project's issue tracker); 128 + N signal N ended
the run (130 SIGINT, 143 SIGTERM, 129 SIGHUP), after the disks were flushed;
16 the guest powered the machine off through ACPI (S5: Linux's poweroff).

Every input (options, disks, kernel, initrd, BIOS) is checked before any
output file is created, and an output that is also an input is refused.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import tempfile
import traceback
from typing import TYPE_CHECKING, NoReturn

from qemu_lite.devices.block import BlockImageError
from qemu_lite.devices.slirp import SlirpMissing
from qemu_lite.engine import VersionAction
from qemu_lite.loaders.files import file_problem

if TYPE_CHECKING:
    from qemu_lite.devices.netbackends import Nic
    from qemu_lite.machine import Machine, RunResult
    from qemu_lite.pc import Drive

STATUS = {"halted": 0, "usage": 2, "timeout": 4, "crash": 6, "reset": 8, "stopped": 0,
          "no-boot": 10, "no-boot-after-reset": 12, "internal": 14, "powered-off": 16}

MIN_MMU_PAGES = 16  # what the shadow MMU needs for one 4-level walk and its roots
MAX_MMU_PAGES = 1 << 20  # 4 GiB of shadow page tables
MAX_MMU_CONTEXTS = 4096  # parked address-space TLBs (engine patch i)
MAX_TIMEOUT = 1e8  # seconds (about three years): keeps the deadline in 64-bit nanoseconds


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the usage text is for --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(STATUS["usage"], f"{self.prog}: {message} (see --help)\n")


def _mmu_contexts(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_MMU_CONTEXTS:
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 to {MAX_MMU_CONTEXTS}, not {text!r}")
    return n


def _mmu_pages(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not MIN_MMU_PAGES <= n <= MAX_MMU_PAGES:
        raise argparse.ArgumentTypeError(
            f"must be a number from {MIN_MMU_PAGES} to {MAX_MMU_PAGES}, not {text!r}")
    return n


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, not {text!r}")
    return seconds


def _boot_order(text: str) -> str:
    """QEMU's ``-boot``: ``d``, ``ncd`` or ``order=ncd`` (c hard disk, d CD-ROM, n network)."""
    order = text
    if "=" in text:
        key, _, order = text.partition("=")
        if key != "order" or "," in order:
            raise argparse.ArgumentTypeError(f"only order=DEVICES is supported, not {text!r}")
    from qemu_lite.machine import check_boot_order

    try:
        return check_boot_order(order)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _memory(text: str) -> int:
    from qemu_lite.machine import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qemu-lite",
        description="Boot an x86 PC: a disk image through our BIOS, or a kernel directly. "
                    "With no DISK and no --kernel, boots the bundled default image.",
        epilog="Exit status: odd = the guest's isa-debug-exit value (v << 1) | 1; "
               "0 guest halted, 2 usage error, 4 timeout, 6 guest crashed, "
               "8 reset under --no-reboot, 10 no bootable device, 12 no bootable device "
               "after the guest reset (a crashed kernel), 14 internal error (a bug in "
               "qemu-lite: please report it), 16 guest powered off (ACPI); "
               "128 + N ended by signal N.",
    )
    p.add_argument("--version", action=VersionAction)
    p.add_argument("disk", nargs="?", metavar="DISK", help="raw disk image for the primary IDE master")
    p.add_argument("-hda", "--hda", dest="hda", metavar="FILE", help="same as DISK")
    p.add_argument("-hdb", "--hdb", dest="hdb", metavar="FILE", help="primary IDE slave disk")
    p.add_argument("-cdrom", "--cdrom", dest="cdrom", metavar="FILE",
                   help="CD-ROM image (ISO) on the secondary IDE master, read-only")
    p.add_argument("--drive", "-drive", action="append", default=[], metavar="SPEC",
                   help="file=PATH[,media=disk|cdrom][,readonly=on|off][,index=0-3][,if=ide]; "
                        "without index=, the next free IDE index")
    p.add_argument("--boot", "-boot", default="c", type=_boot_order, metavar="[order=]DEVICES",
                   help="boot order, as QEMU's: c hard disk (default), d CD-ROM, n network "
                        "(option ROMs with a boot entry vector, e.g. a PXE ROM), e.g. d or "
                        "order=ncd; the devices not named come after")
    p.add_argument("-m", "--memory", default="64M", type=_memory, metavar="SIZE",
                   help="guest RAM, e.g. 64M or 1G (plain numbers are MiB; default 64M)")
    p.add_argument("-smp", "--smp", default="1", metavar="N",
                   help="number of CPUs, 1 to 8 (QEMU's -smp N or -smp cpus=N)")
    p.add_argument("-accel", "--accel", default="tcg", metavar="tcg[,thread=single|multi]",
                   help="the accelerator: tcg; thread=single (default) runs the vCPUs in turns "
                        "on one host thread, thread=multi each on its own engine and host "
                        "thread (Unicorn's MMU; no snapshots, --deterministic or debugger)")
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
    p.add_argument("--bios", "-bios", metavar="FILE", help="BIOS image, a multiple of 64 KiB up to 16 MiB (default: ours)")
    p.add_argument("--option-rom", "-option-rom", dest="option_rom", action="append",
                   default=[], metavar="FILE",
                   help="option ROM run by the BIOS from 0xC0000-0xDFFFF (repeatable)")
    p.add_argument("--snapshot", "-snapshot", action="store_true",
                   help="keep disk writes in memory; the image file is not modified")
    p.add_argument("--no-reboot", "-no-reboot", action="store_true",
                   help="exit instead of rebooting when the guest resets or triple-faults")
    p.add_argument("--no-shutdown", "-no-shutdown", action="store_true",
                   help="with --qmp: when the guest powers off, stop it (status 'shutdown') "
                        "instead of exiting, until system_reset or quit")
    p.add_argument("--no-acpi", "-no-acpi", action="store_true",
                   help="no ACPI tables, PM block or MP table (the machine before ACPI)")
    p.add_argument("-M", "-machine", "--machine", dest="machine", metavar="pc[,hpet=on|off]",
                   help="the machine: pc, with or without the HPET (hpet=off; on by default, "
                        "with ACPI, which describes it) and ACPI (acpi=off is --no-acpi)")
    p.add_argument("--no-hpet", "-no-hpet", action="store_true",
                   help="no HPET (-machine pc,hpet=off)")
    p.add_argument("--mmu", default=None, choices=["cached", "naive", "native", "identity"],
                   help="guest MMU: cached shadow page tables (default; native under "
                        "-accel tcg,thread=multi), naive (shadow pages "
                        "dropped at every CR3 load), native (Unicorn's own MMU), identity "
                        "(no guest paging)")
    p.add_argument("--mmu-pages", type=_mmu_pages, metavar="N",
                   help=f"bound the number of shadow pages ({MIN_MMU_PAGES}-{MAX_MMU_PAGES}; "
                        "least recently used are recycled)")
    p.add_argument("--mmu-contexts", type=_mmu_contexts, metavar="N",
                   help=f"cached MMU on the patched engine: keep the TLBs of up to N address "
                        f"spaces across CR3 loads (0-{MAX_MMU_CONTEXTS}, default 32; 0: flush "
                        "at every CR3 load; least recently used are evicted)")
    p.add_argument("--mmu-prefetch", type=int, choices=[0, 2, 4, 8, 16, 32, 64], metavar="N",
                   help="at a shadow miss also shadow the N-entry aligned group of leaf page "
                        "table entries around it (KVM's pte prefetch; 0, the default, is off)")
    p.add_argument("--mmu-unsync", choices=["on", "off"],
                   help="shadow MMU: leave a written guest leaf page table writable until "
                        "the next CR3 load instead of trapping each PTE store (KVM's unsync "
                        "shadow pages; default on)")
    p.add_argument("--mmu-stats", action="store_true",
                   help="print the shadow MMU's statistics to stderr at exit")
    p.add_argument("--deterministic", action="store_true",
                   help="guest time follows guest progress, not the host clock: the same "
                        "image and input give the same output (the RTC starts at "
                        "2000-01-01 unless --rtc base= is given; CPUID hides RDRAND)")
    p.add_argument("--serial-input", metavar="FILE",
                   help="COM1 input from FILE, a character at a time at the UART's rate "
                        "while the guest has its receive interrupt enabled (repeatable "
                        "under --deterministic)")
    p.add_argument("--rtc", "-rtc", metavar="base=WHEN",
                   help="RTC start: base=utc (the host's time, default), or "
                        "base=YYYY-MM-DDTHH:MM:SS (UTC), as QEMU's -rtc base=")
    p.add_argument("--netdev", "-netdev", action="append", default=[], metavar="SPEC",
                   help="network back end: user,id=ID[,hostfwd=tcp::HOSTPORT-:GUESTPORT]"
                        "[,tftp=DIR][,bootfile=NAME][,net=ADDR/BITS][,host=ADDR][,dns=ADDR]"
                        "[,dhcpstart=ADDR][,restrict=on|off][,hostname=NAME] "
                        "(libslirp, 10.0.2.0/24) or socket,id=ID,listen=[HOST]:PORT|"
                        "connect=[HOST]:PORT (QEMU's stream framing)")
    p.add_argument("--device", "-device", action="append", default=[], metavar="SPEC",
                   help="e1000,netdev=ID[,mac=52:54:00:12:34:56]: the NIC, cabled to a -netdev")
    p.add_argument("--nic", "-nic", metavar="SPEC",
                   help="short form: user[,hostfwd=...][,mac=...][,model=e1000] or socket,...")
    p.add_argument("--net-dump", metavar="FILE",
                   help="write the NIC's traffic, both directions, to FILE (pcap)")
    p.add_argument("--restore", "-loadvm", metavar="FILE",
                   help="start from a state saved by --save-on-exit (or Machine.save_state); "
                        "give the options the machine was built with")
    p.add_argument("--incoming", "-incoming", metavar="URI",
                   help="file:PATH: start from the state QMP's 'migrate' wrote there "
                        "(as --restore PATH; with -S, paused until 'cont')")
    p.add_argument("--save-on-exit", metavar="FILE",
                   help="save the machine's state to FILE when the run ends by SIGINT, SIGTERM, "
                        "SIGHUP or --timeout (resume it with --restore)")
    p.add_argument("--timeout", type=_timeout, metavar="SECONDS",
                   help="stop the guest after this many seconds of wall time")
    p.add_argument("-d", "--debug", action="store_true", help="log device and run-loop details")
    # GDB remote stub (qemu_lite/gdbstub.py), QEMU's options.
    p.add_argument("--gdb", "-gdb", metavar="DEV",
                   help="wait for a GDB connection on DEV: tcp::PORT, tcp:HOST:PORT or unix:PATH")
    p.add_argument("-s", dest="gdb_default", action="store_true", help="shorthand for --gdb tcp::1234")
    p.add_argument("-S", dest="gdb_stopped", action="store_true",
                   help="do not start the CPU: wait for the debugger's continue "
                        "(with --qmp and no -s or --gdb: for QMP's cont)")
    p.add_argument("--qmp", "-qmp", metavar="DEV",
                   help="QMP monitor on DEV: unix:PATH,server[,wait=off] or "
                        "tcp:HOST:PORT,server[,wait=off] (wait=on, the default, starts the "
                        "guest once a client connects; with -S it waits for 'cont')")
    _add_display_options(p)
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


def _add_display_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("display")
    g.add_argument("--vga", "-vga", default="std", choices=["std", "none"],
                   help="std: QEMU's std-vga with SeaVGABIOS (default); none: no display, "
                        "INT 10h output on COM1 only")
    g.add_argument("--display", "-display", default=None, metavar="TYPE",
                   help="none (default), curses (text modes in the terminal; the serial "
                        "console then defaults to none) or vnc=[HOST]:N")
    g.add_argument("--vnc", "-vnc", metavar="[HOST]:N",
                   help="serve the screen over VNC on HOST (default 127.0.0.1), port 5900+N")
    g.add_argument("--nographic", "-nographic", action="store_true",
                   help="no display (the serial console stays on stdio)")
    g.add_argument("--screendump-on-exit", metavar="FILE.png",
                   help="write the screen as PNG when the run ends")


def _display_settings(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(VNC display or None, an error message or None) from the display options."""
    vnc = args.vnc
    display = args.display
    if args.nographic and (display not in (None, "none") or vnc):
        return None, "-nographic cannot be combined with a display"
    if display == "curses":
        if args.vga == "none":
            return None, "-display curses needs a VGA (not -vga none)"
        if not sys.stdout.isatty():
            return None, "-display curses needs a terminal on stdout"
        if args.serial == "stdio" and not args.serial_given:
            args.serial = "none"  # as QEMU: the terminal belongs to the display
        elif args.serial == "stdio":
            return None, "-display curses and --serial stdio both want the terminal"
        display = None
    if display is not None and display != "none":
        kind, _, rest = display.partition("=")
        if kind != "vnc" or not rest:
            return None, f"unknown display {display!r} (choose none or vnc=:N)"
        if vnc and vnc != rest:
            return None, "give the VNC display once (-vnc or -display vnc=)"
        vnc = rest
    if args.vga == "none" and (vnc or args.screendump_on_exit):
        return None, "-vga none has no screen to show or dump"
    if vnc:
        from qemu_lite.display.vnc import parse_vnc_display

        try:
            parse_vnc_display(vnc)
        except ValueError as exc:
            return None, str(exc)
    dump = args.screendump_on_exit
    if dump:
        folder = os.path.dirname(os.path.abspath(dump))
        if not os.path.isdir(folder):
            return None, f"--screendump-on-exit: no directory {folder!r}"
        try:
            import PIL  # noqa: F401
        except ImportError:
            return None, "--screendump-on-exit needs Pillow (pip install pillow)"
    return vnc, None


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else STATUS["usage"]
    args.serial_given = any(a in ("--serial", "-serial") or a.startswith(("--serial=", "-serial="))
                            for a in (sys.argv[1:] if argv is None else argv))
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
    except Exception as exc:  # noqa: BLE001 - a bug: one line, never a traceback
        return _internal_error(exc, argv)
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


def _internal_error(exc: Exception, argv: list[str] | None) -> int:
    """Report a bug in one line; the traceback goes to a file the user can attach."""
    what = " ".join(f"{type(exc).__name__}: {exc}".split())
    where = ""
    try:
        fd, path = tempfile.mkstemp(prefix="qemu-lite-internal-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"command line: {sys.argv[:1] + (sys.argv[1:] if argv is None else argv)}\n")
            traceback.print_exception(exc, file=f)
        where = f" (traceback in {path})"
    except OSError:
        pass
    print(f"qemu-lite: internal error: {what}{where}; please report this bug with the "
          "command line on the qemu_lite issue tracker", file=sys.stderr)
    return STATUS["internal"]


def _fail(message: str) -> int:
    message = " ".join(message.split())  # one line, whatever a library put in it
    print(f"qemu-lite: {message}", file=sys.stderr)
    return STATUS["usage"]


class _InputError(Exception):
    """An input that fails its checks; the message is the one line to print."""


def _check_input(path: str | None, what: str, *, block_device: bool = False,
                 allow_empty: bool = False) -> None:
    if path is None:
        return
    problem = file_problem(path, allow_block_device=block_device, allow_empty=allow_empty)
    if problem is not None:
        raise _InputError(f"cannot open {what} '{path}': {problem}")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, signals: _Signals) -> int:
    try:
        return _boot(args, signals)
    except _InputError as exc:
        return _fail(str(exc))


def _boot(args: argparse.Namespace, signals: _Signals) -> int:
    from qemu_lite.gdbstub import GdbSpecError
    from qemu_lite.loaders import linux, multiboot
    from qemu_lite.machine import Machine, bundled_firmware_path
    from qemu_lite.pc import parse_drive, parse_machine
    from qemu_lite.qmp import QmpSpecError
    from qemu_lite.vcpu import GuestError, TripleFault

    if args.disk is not None and args.hda is not None:
        raise _InputError("give the disk image either as DISK or as -hda, not both")
    if args.kernel is None and args.initrd is not None:
        raise _InputError("--initrd is only allowed with --kernel")
    if args.kernel is None and args.append:
        raise _InputError("--append is only allowed with --kernel")
    disk = args.disk if args.disk is not None else args.hda
    snapshot = args.snapshot
    try:
        machine_opts = parse_machine(args.machine) if args.machine is not None else {}
    except ValueError as exc:
        raise _InputError(str(exc)) from None
    acpi = machine_opts.get("acpi", True) and not args.no_acpi
    hpet = machine_opts.get("hpet", acpi) and not args.no_hpet  # pc.build refuses it without ACPI
    drives: list[Drive] = []
    for spec in args.drive:
        try:
            drives.append(parse_drive(spec))
        except ValueError as exc:
            raise _InputError(str(exc)) from None
    if (disk is None and args.kernel is None and not drives and args.cdrom is None
            and args.hdb is None):
        disk = bundled_firmware_path("default.img")
        snapshot = True  # the bundled image is package data: never write it
    vnc, display_error = _display_settings(args)
    if display_error:
        raise _InputError(display_error)
    try:
        nics = _parse_network(args)
    except ValueError as exc:
        raise _InputError(str(exc)) from None
    rtc_base = None
    if args.rtc is not None:
        try:
            rtc_base = _parse_rtc(args.rtc)
        except ValueError as exc:
            raise _InputError(str(exc)) from None

    if args.qmp is not None:
        from qemu_lite.qmp import QmpSpecError, parse_spec

        try:
            parse_spec(args.qmp)
        except QmpSpecError as exc:
            raise _InputError(str(exc)) from None

    if args.incoming is not None:
        from qemu_lite.qmp import QmpError, parse_incoming

        if args.restore is not None:
            raise _InputError("give the saved state either as --restore or as -incoming")
        try:
            args.restore = parse_incoming(args.incoming)
        except QmpError as exc:
            raise _InputError(exc.desc) from None

    bzimage, modules, inputs = _check_files(args, disk, drives)

    try:
        machine = Machine(disk, hdb=args.hdb, cdrom=args.cdrom, drives=drives, boot=args.boot,
                          memory=args.memory, serial=args.serial, serial2=args.serial2,
                          bios=args.bios, mmu=args.mmu, snapshot=snapshot,
                          no_reboot=args.no_reboot, acpi=acpi, hpet=hpet,
                          deterministic=args.deterministic,
                          rtc_base=rtc_base, vga=args.vga, vnc=vnc, nics=nics,
                          net_dump=args.net_dump, option_roms=args.option_rom,
                          smp=args.smp, accel=args.accel)
    except (BlockImageError, ValueError, OSError, SlirpMissing) as exc:
        return _fail(str(exc))
    if args.serial_input is not None:
        from qemu_lite.replay import replay_file

        try:
            replay_file(machine, args.serial_input)
        except OSError as exc:
            machine.close()
            return _fail(f"cannot read serial input '{args.serial_input}': {exc.strerror}")
    with machine:
        if args.display == "curses" and machine.board.vga is not None:
            from qemu_lite.display.curses import CursesDisplay

            screen = CursesDisplay(machine.board.vga)
            screen.start()
            machine.add_closer(screen.close)
        if args.mmu_pages is not None:
            machine.core.set_max_shadow_pages(args.mmu_pages)
        if args.mmu_contexts is not None:
            machine.core.set_tlb_contexts(args.mmu_contexts)
        if args.mmu_prefetch:
            machine.core.set_pte_prefetch(args.mmu_prefetch)
        if args.mmu_unsync is not None:
            machine.core.set_unsync(args.mmu_unsync == "on")
        try:
            if args.restore is not None:
                machine.restore_state(args.restore)  # RAM and CPU: no kernel to load
            elif bzimage:
                linux.load(machine, args.kernel, args.append, args.initrd)
            elif args.kernel:
                multiboot.load(machine, args.kernel, args.append, modules)
        except (ValueError, OSError) as exc:  # LinuxBootError, MultibootError, StateError...
            what = f"-incoming {args.incoming}: " if args.incoming is not None else \
                f"--restore {args.restore}: " if args.restore is not None else ""
            return _fail(f"{what}{exc}")
        try:
            signals.machine = machine
            result = _run_machine(machine, args, inputs)
            if args.save_on_exit and result.reason in ("signal", "timeout"):
                _save_on_exit(machine, args.save_on_exit)
        except TripleFault as exc:
            print(f"qemu-lite: {exc}", file=sys.stderr)
            return STATUS["crash"]
        except GuestError as exc:
            print(f"qemu-lite: {exc}", file=sys.stderr)
            return STATUS["crash"]
        except (GdbSpecError, QmpSpecError) as exc:  # --gdb/--qmp: the address is in use
            return _fail(str(exc))
        finally:
            if args.mmu_stats:
                _print_mmu_stats(machine)
            if args.screendump_on_exit:
                try:
                    machine.screendump(args.screendump_on_exit)
                except OSError as exc:
                    print(f"qemu-lite: --screendump-on-exit: {exc}", file=sys.stderr)
    if result.reason == "exit":
        assert result.exit_status is not None
        return result.exit_status
    if result.message:
        print(f"qemu-lite: {result.message}", file=sys.stderr)
    return STATUS.get(result.reason, STATUS["crash"])


def _check_files(args: argparse.Namespace, disk: str | None, drives: list[Drive]
                 ) -> tuple[bool, list[tuple[str, str]], list[tuple[str, str]]]:
    """Check every input file, then the outputs against them, before anything is opened
    for writing.  Returns whether the kernel is a bzImage, the Multiboot modules, and
    the inputs as ``(what, path)`` (outputs named later, over QMP, are checked too)."""
    from qemu_lite.loaders import linux, multiboot
    from qemu_lite.pc import check_outputs, serial_output_path

    inputs: list[tuple[str, str]] = []
    for path, what, block in ((disk, "disk image", True), (args.hdb, "disk image", True),
                              (args.cdrom, "CD-ROM image", True),
                              *((os.fspath(d.file), "drive image", True) for d in drives
                                if isinstance(d.file, (str, os.PathLike))),
                              (args.kernel, "kernel", False), (args.bios, "BIOS", False)):
        _check_input(path, what, block_device=block)
        if path is not None:
            inputs.append((what, path))
    _check_input(args.restore, "saved state")
    if args.restore is not None:
        inputs.append(("saved state", args.restore))
    _check_input(args.serial_input, "serial input", allow_empty=True)
    if args.serial_input is not None:
        inputs.append(("serial input", args.serial_input))
    bzimage = args.kernel is not None and _is_bzimage(args.kernel)
    modules: list[tuple[str, str]] = []
    if bzimage:
        _check_input(args.initrd, "initrd")
        if args.initrd is not None:
            inputs.append(("initrd", args.initrd))
    elif args.kernel:
        for item in filter(None, (args.initrd or "").split(",")):
            path = item.split(" ", 1)[0]
            _check_input(path, "module", allow_empty=True)
            modules.append((path, item))
            inputs.append(("module", path))
    outputs = [(label, path) for label, path in (("serial", serial_output_path(args.serial)),
                                                 ("serial2", serial_output_path(args.serial2)),
                                                 ("screendump", args.screendump_on_exit),
                                                 ("net-dump", args.net_dump),
                                                 ("save-on-exit", args.save_on_exit))
               if path is not None]
    try:
        check_outputs(outputs, inputs)
        if bzimage:
            linux.check(args.kernel, args.append, args.initrd, memory_size=args.memory)
        elif args.kernel:
            multiboot.check(args.kernel, args.append, modules, memory_size=args.memory)
    except ValueError as exc:  # also LinuxBootError, MultibootError, InputFileError
        raise _InputError(str(exc)) from None
    return bzimage, modules, inputs


def _save_on_exit(machine: Machine, path: str) -> None:
    try:
        machine.save_state(path)
    except OSError as exc:
        _say(f"qemu-lite: --save-on-exit: cannot write {path}: {exc.strerror}")
        return
    _say(f"qemu-lite: state saved to {path} (resume with --restore {path})")


def _run_machine(machine: Machine, args: argparse.Namespace,
                 inputs: list[tuple[str, str]]) -> RunResult:
    """Run the guest, under the QMP monitor (--qmp) or the GDB stub (-s, -S, --gdb)."""
    from qemu_lite.gdbstub import GdbStub

    if args.qmp is not None:
        from qemu_lite.qmp import QmpServer

        server = QmpServer(machine, args.qmp, inputs,  # QmpSpecError: reported by the caller
                           no_shutdown=args.no_shutdown)
        gdb_spec = args.gdb or ("tcp::1234" if args.gdb_default else None)
        stub = None
        try:
            print(f"qemu-lite: QMP listening on {args.qmp}", file=sys.stderr, flush=True)
            if gdb_spec is not None:  # one loop serves both (QmpServer.attach_gdb)
                stub = GdbStub(machine, gdb_spec)
                server.attach_gdb(stub)
                print(f"qemu-lite: gdb stub listening on {gdb_spec}", file=sys.stderr,
                      flush=True)
            return server.serve(start_stopped=args.gdb_stopped, timeout=args.timeout,
                                incoming=args.incoming is not None)
        finally:
            if stub is not None:
                stub.close()
            server.close()
    spec = args.gdb or ("tcp::1234" if args.gdb_default or args.gdb_stopped else None)
    if spec is None:
        return machine.run(timeout=args.timeout)
    stub = GdbStub(machine, spec)  # GdbSpecError: reported by the caller
    print(f"qemu-lite: gdb stub listening on {spec}", file=sys.stderr, flush=True)
    try:
        return stub.serve(start_stopped=args.gdb_stopped, timeout=args.timeout)
    finally:
        stub.close()


def _parse_network(args: argparse.Namespace) -> list[Nic]:
    """-netdev/-device/-nic -> the machine's NICs (ValueError with a one-line message)."""
    from qemu_lite.devices.netbackends import parse_netdev, parse_nic, parse_nic_device

    netdevs = {}
    for spec in args.netdev:
        netdev = parse_netdev(spec)
        if netdev.id in netdevs:
            raise ValueError(f"-netdev: id {netdev.id!r} is used twice")
        netdevs[netdev.id] = netdev
    nics = [parse_nic_device(spec, netdevs) for spec in args.device]
    if args.nic:
        nics.append(parse_nic(args.nic))
    if len(nics) > 1:
        raise ValueError("only one NIC is emulated (one -device e1000 or one -nic)")
    cabled = {nic.netdev.id for nic in nics}
    for ident in netdevs:
        if ident not in cabled:
            raise ValueError(f"-netdev {ident} is not used by any -device")
    if args.net_dump and not nics:
        raise ValueError("--net-dump needs a NIC (-nic, or -netdev with -device e1000)")
    return nics


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
