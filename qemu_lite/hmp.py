"""Human monitor commands (QEMU's HMP) for QMP's ``human-monitor-command``.

``info registers`` (``-a``: every CPU), ``info cpus``, ``info mmu``, ``info
status``, ``info version``, ``x`` and ``xp`` memory dumps, ``cpu N`` (the CPU that
``info registers``, ``x`` and ``info mmu`` use, kept in a :class:`Session`), and
the run-control words ``stop``, ``cont`` and ``system_reset``.  Output follows QEMU's layout closely enough for a human or
a script that greps it (``RIP=...``, ``CR3=...``); errors come back as text,
as QEMU's monitor prints them, never as an exception.

Everything here reads the machine, so it must run on the vCPU thread between
slices (the QMP server's dispatcher guarantees that).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from unicorn import x86_const as X

from qemu_lite.cpustate import HF_CPL_MASK, HF_INHIBIT_IRQ
from qemu_lite.paging import PageFault
from qemu_lite.x86 import CR0_PE, EFER_LMA, EFLAGS_VM, MSR_EFER

if TYPE_CHECKING:
    from qemu_lite.machine import Machine

# EFLAGS bits shown in brackets after RFL=, as QEMU's monitor does: D O S Z A P C.
_FLAG_LETTERS = ((10, "D"), (11, "O"), (7, "S"), (6, "Z"), (4, "A"), (2, "P"), (0, "C"))
_SEGMENT_NAMES = ("ES", "CS", "SS", "DS", "FS", "GS")
_UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}
_MAX_DUMP = 64 << 10  # bytes one x/xp may show


class RunControl(Protocol):
    """What HMP's ``stop``, ``cont``, ``system_reset``, ``info status`` and ``info cpus``
    ask of the monitor that owns the run state (the QMP server)."""

    def status(self) -> str: ...

    def stop(self) -> None: ...

    def cont(self) -> None: ...

    def system_reset(self) -> None: ...

    def vcpu_thread_id(self) -> int:
        """The host thread the vCPUs run on (one for all: ``thread=single``)."""
        ...


@dataclass
class Session:
    """One monitor's selection: the CPU its commands use (HMP's ``cpu N``)."""

    cpu: int = 0


def cpu_mode(machine: Machine) -> str:
    """``"real"``, ``"virtual-8086"``, ``"protected"``, ``"compatibility"`` or ``"long"``."""
    uc = machine.uc
    if not uc.reg_read(X.UC_X86_REG_CR0) & CR0_PE:
        return "real"
    if uc.msr_read(MSR_EFER) & EFER_LMA:
        segs, _ = machine.cpu.segments.snapshot()
        return "long" if segs[1].flags & (1 << 21) else "compatibility"
    if uc.reg_read(X.UC_X86_REG_EFLAGS) & EFLAGS_VM:
        return "virtual-8086"
    return "protected"


def info_registers(machine: Machine) -> str:
    """The CPU state in QEMU's ``info registers`` layout (64-bit names in long mode)."""
    uc = machine.uc
    long_mode = bool(uc.msr_read(MSR_EFER) & EFER_LMA)
    segs, hflags = machine.cpu.segments.snapshot()
    lines = []
    if long_mode:
        names = ["RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP",
                 "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15"]
        cells = [f"{n:<3}={uc.reg_read(getattr(X, 'UC_X86_REG_' + n)):016x}" for n in names]
        lines += [" ".join(cells[i:i + 4]) for i in range(0, len(cells), 4)]
        pc = f"RIP={uc.reg_read(X.UC_X86_REG_RIP):016x}"
    else:
        names = ["EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP"]
        cells = [f"{n}={uc.reg_read(getattr(X, 'UC_X86_REG_' + n)):08x}" for n in names]
        lines += [" ".join(cells[0:4]), " ".join(cells[4:8])]
        pc = f"EIP={uc.reg_read(X.UC_X86_REG_EIP):08x}"
    rflags = uc.reg_read(X.UC_X86_REG_RFLAGS)
    letters = "".join(c if rflags >> bit & 1 else "-" for bit, c in _FLAG_LETTERS)
    lines.append(f"{pc} RFL={rflags:08x} [{letters}] CPL={hflags & HF_CPL_MASK} "
                 f"II={int(bool(hflags & HF_INHIBIT_IRQ))} A20={int(machine.core.a20_enabled)} "
                 f"HLT={int(machine.cpu.halted)}")
    width = 16 if long_mode else 8
    for name, seg in zip(_SEGMENT_NAMES, segs, strict=True):
        lines.append(f"{name} ={seg.selector:04x} {seg.base:0{width}x} {seg.limit:08x} "
                     f"{seg.flags:08x}")
    for name, reg in (("LDT", X.UC_X86_REG_LDTR), ("TR", X.UC_X86_REG_TR)):
        sel, base, limit, flags = uc.reg_read(reg)
        lines.append(f"{name:<3}={sel:04x} {base:0{width}x} {limit:08x} {flags:08x}")
    for name, reg in (("GDT", X.UC_X86_REG_GDTR), ("IDT", X.UC_X86_REG_IDTR)):
        _, base, limit, _ = uc.reg_read(reg)
        lines.append(f"{name}=     {base:0{width}x} {limit:08x}")
    cr = {n: uc.reg_read(getattr(X, "UC_X86_REG_" + n)) for n in ("CR0", "CR2", "CR3", "CR4")}
    lines.append(f"CR0={cr['CR0']:08x} CR2={cr['CR2']:0{width}x} CR3={cr['CR3']:0{width}x} "
                 f"CR4={cr['CR4']:08x}")
    lines.append(f"EFER={uc.msr_read(MSR_EFER):016x}")
    return "\n".join(lines) + "\n"


def info_mmu(machine: Machine, cpu: int = 0) -> str:
    """The shadow MMU's mode and counters, one per line (every vCPU shares the one
    shadow MMU), then the paging registers of CPU ``cpu``."""
    stats = machine.core.mmu_stats()
    width = max(map(len, stats), default=0)
    with machine.on_vcpu(cpu):
        regs = {n: machine.reg(n) for n in ("cr0", "cr3", "cr4")}
        mode = cpu_mode(machine)
    return f"MMU mode {machine.mmu_mode}\n" + "".join(
        f"{name:<{width}} {value}\n" for name, value in stats.items()) + (
        f"CPU #{cpu}: {mode} mode, CR0={regs['cr0']:08x} CR3={regs['cr3']:016x} "
        f"CR4={regs['cr4']:08x}\n")


def info_cpus(machine: Machine, selected: int, thread_id: int) -> str:
    """QEMU's ``info cpus``: ``*`` marks the monitor's CPU."""
    return "".join(f"{'*' if i == selected else ' '} CPU #{i}: thread_id={thread_id}\n"
                   for i in range(len(machine.vcpu_states())))


def _parse_address(machine: Machine, text: str) -> int:
    """A number (``0x1000``, ``4096``), a register (``$rsp``), or a sum of them."""
    total = 0
    for sign, term in re.findall(r"([+-]?)\s*([^+\-\s]+)", text.replace(" ", "")):
        if term.startswith("$"):
            value = machine.reg(term[1:].lower())
        else:
            value = int(term, 0)
        total += -value if sign == "-" else value
    if not text.strip():
        raise ValueError("missing address")
    return total & 0xFFFF_FFFF_FFFF_FFFF


def memory_dump(machine: Machine, fmt: str, address: int, physical: bool) -> str:
    """``x /fmt addr`` (``physical=False``: linear address through the guest's page
    tables) or ``xp /fmt addr``: COUNT, FORMAT (x d u o c) and UNIT (b h w g)."""
    m = re.fullmatch(r"(\d*)([xduoc]?)([bhwg]?)", fmt)
    if m is None:
        raise ValueError(f"invalid format '/{fmt}' (use /NFU: count, x d u o c, b h w g)")
    count = int(m[1]) if m[1] else 1
    form = m[2] or "x"
    size = _UNITS[m[3]] if m[3] else (1 if form == "c" else 4)
    if count * size > _MAX_DUMP:
        raise ValueError(f"at most {_MAX_DUMP} bytes per dump")
    line_size = 8 if size == 1 else 16
    width = 16  # as QEMU's x86_64 monitor, in every mode
    read: Callable[[int, int], bytes] = machine.read_memory if physical else machine.read_virtual
    out: list[str] = []
    total = count * size
    pos = 0
    while pos < total:
        line_addr = address + pos
        n = min(line_size, total - pos)
        try:
            data = read(line_addr, n)
        except (PageFault, ValueError):
            out.append(f"{line_addr:0{width}x}: Cannot access memory")
            break
        cells = []
        for i in range(0, n, size):
            value = int.from_bytes(data[i:i + size], "little")
            cells.append(_format_unit(value, size, form))
        out.append(f"{line_addr:0{width}x}:" + "".join(" " + c for c in cells))
        pos += n
    return "\n".join(out) + "\n"


def _format_unit(value: int, size: int, form: str) -> str:
    bits = 8 * size
    if form == "x":
        return f"0x{value:0{2 * size}x}"
    if form == "o":
        return f"{value:#o}"
    if form == "u":
        return f"{value}"
    if form == "d":
        return f"{value - (1 << bits) if value >> (bits - 1) else value}"
    chars = []  # "c": each byte as a character, escapes for the unprintable
    for b in value.to_bytes(size, "little"):
        chars.append(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}")
    return "'" + "".join(chars) + "'"


HELP = """\
cont -- resume emulation
help -- this list
cpu index -- set the default CPU (for info registers, x, info mmu)
info cpus -- show infos for each CPU
info mmu -- the shadow MMU's mode and counters
info registers [-a] -- the CPU state (-a: of every CPU)
info status -- running or paused
info version -- the qemu-lite version
stop -- stop emulation
system_reset -- reset the machine
x /fmt addr -- virtual memory dump starting at addr
xp /fmt addr -- physical memory dump starting at addr
"""


def execute(machine: Machine, control: RunControl, command_line: str, version: str,
            session: Session | None = None) -> str:
    """Run one HMP command line and return what QEMU's monitor would print; the
    commands that need a CPU use ``session``'s (``cpu N`` changes it)."""
    session = session if session is not None else Session()
    words = command_line.split()
    if not words:
        return ""
    head = words[0]
    cpu = session.cpu
    try:
        if head in ("x", "xp") or re.fullmatch(r"xp?/\S*", head):
            name, _, fmt = head.partition("/")
            rest = words[1:]
            if not fmt and rest and rest[0].startswith("/"):
                fmt, rest = rest[0][1:], rest[1:]
            with machine.on_vcpu(cpu):
                address = _parse_address(machine, " ".join(rest))
                return memory_dump(machine, fmt, address, physical=name == "xp")
        if head == "cpu":
            if len(words) != 2 or not words[1].isdigit() or \
                    int(words[1]) >= len(machine.vcpu_states()):
                return "invalid CPU index\n"
            session.cpu = int(words[1])
            return ""
        if head == "info":
            what = words[1] if len(words) > 1 else ""
            if what == "registers" and words[2:] == ["-a"]:
                out = []
                for i in range(len(machine.vcpu_states())):
                    with machine.on_vcpu(i):
                        out.append(f"\nCPU#{i}\n{info_registers(machine)}")
                return "".join(out)
            if what == "registers":
                with machine.on_vcpu(cpu):
                    return info_registers(machine)
            if what == "cpus":
                return info_cpus(machine, cpu, control.vcpu_thread_id())
            if what == "mmu":
                return info_mmu(machine, cpu)
            if what == "status":
                status = control.status()
                shown = f"paused ({status})" if status in ("prelaunch", "postmigrate",
                                                            "debug") else status
                return f"VM status: {shown}\n"
            if what == "version":
                return f"{version}\n"
            return f"info: unknown item {what!r} (registers, cpus, mmu, status, version)\n"
        if len(words) == 1 and head in ("stop", "cont", "c", "system_reset"):
            {"stop": control.stop, "cont": control.cont, "c": control.cont,
             "system_reset": control.system_reset}[head]()
            return ""
        if head == "help":
            return HELP
    except (ValueError, KeyError, OverflowError) as exc:
        return f"{head}: {exc}\n"
    return f"unknown command: '{head}'\n"

