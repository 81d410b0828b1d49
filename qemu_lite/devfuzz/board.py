"""The whole board as a fuzz target: a guest performs the accesses through the real buses.

The input is decoded exactly as a device target's is, against the board's windows (every
port range pc.py claims, the LAPIC, IOAPIC, e1000 and VGA MMIO, and a RAM area for DMA
rings), but nothing is called from Python: the operations become records in guest RAM
and a Multiboot guest (flat 32-bit, interrupts off) replays them with IN, OUT, loads and
stores, so each access goes through Unicorn, the C port dispatch or the MMIO callbacks,
the devices, their DMA through the board's memory view, and the run loop's pollers.

The verdict: ``Machine.run`` must return (a device exception surfaces there and is a
finding), within its time budget or with a guest-caused reason (the guest exits, resets,
triple-faults, or a DMA overwrote its own code); the board's devices keep a bounded
footprint.  One machine serves many inputs: each starts from a machine reset and a fresh
load of the guest.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from qemu_lite.devfuzz import harness
from qemu_lite.devfuzz.harness import (
    BURST,
    Finding,
    HostEvent,
    Op,
    Result,
    Target,
    Window,
    decode,
    footprint,
    without_bursts,
)

OPS_AT = 0x200000  # the record list the guest replays
DMA_AT, DMA_SIZE = 0x300000, 0x100000  # where ring stores land; zeroed for every input
MAX_RECORDS = 0xC000  # (DMA_AT - OPS_AT) / 12 bytes, with room for the end record
RECORD = 12
K_END, K_OUT, K_IN, K_STORE, K_LOAD = 0, 1, 4, 7, 10  # + 0/1/2 for sizes 1/2/4
BMDMA_BASE = 0xC000
MACHINES_KEPT_FOR = 500  # inputs before a fresh machine
TIMEOUT = 20.0
GUEST_REASONS = {"exit", "halted", "reset", "triple-fault", "no-boot", "no-boot-after-reset",
                 "powered-off", "timeout"}

GUEST = r"""
bits 32
org 0x100000
mb_header:
    dd 0x1BADB002, 0x00010000, -(0x1BADB002 + 0x00010000)
    dd mb_header, mb_header, 0, 0, start
start:
    cli
    mov esp, 0x90000
    mov esi, %(ops)d
next:
    movzx eax, byte [esi]
    mov edx, [esi + 4]
    mov ebx, [esi + 8]
    add esi, 12
    cmp eax, 12
    ja done
    jmp [table + eax * 4]
table:
    dd done, out8, out16, out32, in8, in16, in32, st8, st16, st32, ld8, ld16, ld32
out8:  mov eax, ebx
       out dx, al
       jmp next
out16: mov eax, ebx
       out dx, ax
       jmp next
out32: mov eax, ebx
       out dx, eax
       jmp next
in8:   in al, dx
       jmp next
in16:  in ax, dx
       jmp next
in32:  in eax, dx
       jmp next
st8:   mov [edx], bl
       jmp next
st16:  mov [edx], bx
       jmp next
st32:  mov [edx], ebx
       jmp next
ld8:   mov al, [edx]
       jmp next
ld16:  mov ax, [edx]
       jmp next
ld32:  mov eax, [edx]
       jmp next
done:
    mov al, 0
    out 0xF4, al
    hlt
"""

# (name, base, length, port?) -- the board's table (qemu_lite/pc.py), debug-exit left out:
# it is the guest's own way out.
PORT_WINDOWS = [("pic-master", 0x20, 2), ("pic-slave", 0xA0, 2), ("elcr", 0x4D0, 2),
                ("pit", 0x40, 4), ("port61", 0x61, 1), ("i8042-data", 0x60, 1),
                ("i8042-cmd", 0x64, 1), ("rtc", 0x70, 2), ("port92", 0x92, 1),
                ("com1", 0x3F8, 8), ("ide0", 0x1F0, 8), ("ide0-ctl", 0x3F6, 1),
                ("ide1", 0x170, 8), ("ide1-ctl", 0x376, 1), ("pci", 0xCF8, 8),
                ("fw_cfg", 0x510, 2), ("debugcon", 0xE9, 1), ("post", 0x80, 1),
                ("vga", 0x3B0, 0x30), ("dispi", 0x1CE, 2), ("bmdma", BMDMA_BASE, 16),
                ("e1000-io", 0xC080, 8), ("acpi-pm", 0x600, 0x10), ("unclaimed", 0x300, 0x40)]
MMIO_WINDOWS = [("lapic", 0xFEE00000, 0x1000), ("ioapic", 0xFEC00000, 0x1000),
                ("hpet", 0xFED00000, 0x1000),
                ("e1000", 0xFEBC0000, 0x20000), ("vga-window", 0xA0000, 0x18000),
                ("dma-ram", DMA_AT, DMA_SIZE), ("unassigned", 0xE0000000, 0x1000)]

# Program the PIIX's bus-master BAR (no BIOS runs): BAR4 = BMDMA_BASE, I/O + bus master.
PROLOGUE = [(K_OUT + 2, 0xCF8, 0x80000920), (K_OUT + 2, 0xCFC, BMDMA_BASE | 1),
            (K_OUT + 2, 0xCF8, 0x80000904), (K_OUT + 1, 0xCFC, 0x0005)]


class _Slot:
    """Stands for a window while decoding; the guest performs the access."""

    def __init__(self, base: int, port: bool) -> None:
        self.base = base
        self.port = port


class BoardTarget(Target):
    """The pc board through its port and MMIO buses, driven by a Multiboot guest."""

    name = "board"
    allowance = 1 << 20
    _machine: Any = None
    _kernel: Path | None = None
    _uses = 0

    def build(self) -> None:
        self.windows = [Window(n, _Slot(b, True), length) for n, b, length in PORT_WINDOWS]
        self.windows += [Window(n, _Slot(b, False), length) for n, b, length in MMIO_WINDOWS]
        self.events = [HostEvent("frame", lambda arg, payload: None, payload=True)]

    _inputs = 0

    @classmethod
    def run_input(cls, data: bytes) -> Result:
        cls._inputs += 1
        ran = data
        if (cls._inputs - 1) % harness.PACE.burst_every:
            ran = without_bursts(cls, data)
        try:
            return cls._run(ran)
        except Finding as finding:
            if ran != data:
                finding.reproducer = ran
            raise

    @classmethod
    def _run(cls, data: bytes) -> Result:
        shape = cls()
        records, frames = _records(shape, list(decode(shape, data)))
        m = cls._fresh_machine()
        from qemu_lite.loaders import multiboot

        m._do_reset()
        # A reset keeps the A20 latch (port 0x92, as QEMU); a Multiboot loader hands
        # over with A20 on, and an earlier input may have turned it off.
        m.set_a20(True)
        assert cls._kernel is not None
        multiboot.load(m, cls._kernel)
        m.write_memory(DMA_AT, bytes(DMA_SIZE))
        m.write_memory(OPS_AT, b"".join(_pack(*r) for r in PROLOGUE + records)
                       + bytes(RECORD))
        for frame in frames:
            m.board.nic.receive(frame)
        try:
            result = m.run(timeout=TIMEOUT)
        except Exception as exc:
            cls._machine = None  # whatever it left behind is not reused
            raise Finding(f"Machine.run raised {type(exc).__name__}: {exc}") from exc
        if result.reason not in GUEST_REASONS:
            raise Finding(f"run ended with {result.reason!r}: {result.message}")
        size = footprint([m.board])
        if size > cls._baseline + cls.allowance:
            raise Finding(f"board footprint {size}, fresh board {cls._baseline}")
        return Result(ops=len(records), footprint=size, notes=[result.reason])

    _baseline = 0

    @classmethod
    def _fresh_machine(cls) -> Any:
        cls._uses += 1
        if cls._machine is not None and cls._uses % MACHINES_KEPT_FOR:
            return cls._machine
        from qemu_lite import Machine
        from qemu_lite.devices.block import BlockImage
        from qemu_lite.devices.netbackends import Netdev, Nic
        from qemu_lite.pc import Drive

        if cls._machine is not None:
            cls._machine.close()
        if cls._kernel is None:
            cls._kernel = _assemble_guest()
        disk = BlockImage.from_bytes(bytes(range(256)) * 2 * 128)
        cd = BlockImage.from_bytes(bytes(2048 * 16), readonly=True)
        # A socket back end listening on loopback with no peer: frames the guest sends
        # go nowhere (never the user network: a fuzzed frame must not reach any host).
        nic = Nic(Netdev("socket", "net0", listen=("127.0.0.1", 0)))
        cls._machine = Machine(drives=[Drive(disk, "disk", 0), Drive(cd, "cdrom", 2)],
                               memory="16M", serial="none", deterministic=True,
                               no_reboot=True, nics=[nic])
        cls._baseline = footprint([cls._machine.board])
        return cls._machine


def _records(shape: BoardTarget, ops: list[Op]) -> tuple[list[tuple[int, int, int]],
                                                        list[bytes]]:
    records: list[tuple[int, int, int]] = []
    frames: list[bytes] = []
    last: tuple[int, int, int] | None = None
    for op in ops:
        if op.kind == "event":
            if len(frames) < 16 and op.payload:
                frames.append(op.payload * (1 + (op.value & 7)))
            continue
        if op.kind == "burst":
            if last is not None:
                records.extend([last] * min(BURST, MAX_RECORDS - len(records)))
            continue
        slot = shape.windows[op.window].device
        step = {1: 0, 2: 1, 4: 2}[op.size]
        if slot.port:
            kind = (K_OUT if op.kind == "write" else K_IN) + step
        else:
            kind = (K_STORE if op.kind == "write" else K_LOAD) + step
        last = (kind, slot.base + op.offset, op.value)
        records.append(last)
        if len(records) >= MAX_RECORDS:
            break
    return records[:MAX_RECORDS], frames


def _pack(kind: int, where: int, value: int) -> bytes:
    return (kind.to_bytes(4, "little") + (where & 0xFFFFFFFF).to_bytes(4, "little")
            + (value & 0xFFFFFFFF).to_bytes(4, "little"))


def _assemble_guest() -> Path:
    nasm = shutil.which("nasm")
    if nasm is None:
        raise RuntimeError("the board target assembles its guest with nasm "
                           "(apt-get install nasm)")
    work = Path(tempfile.mkdtemp(prefix="devfuzz-board-"))
    (work / "guest.asm").write_text(GUEST % {"ops": OPS_AT})
    subprocess.run([nasm, "-f", "bin", "-o", str(work / "guest.bin"), str(work / "guest.asm")],
                   check=True)
    return work / "guest.bin"


TARGETS: dict[str, type[Target]] = {"board": BoardTarget}
