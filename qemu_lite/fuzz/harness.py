"""Boot a guest to its ready point, snapshot, and run one input at a time from there.

:class:`Harness` builds a machine for a Multiboot kernel, runs it until the guest writes
its ready port, takes a snapshot, and for every input restores it, writes the input into
guest memory (its length as a dword at ``length_at`` when given), runs to the guest's end
(isa-debug-exit), a crash or the instruction budget, and returns the :class:`Outcome`: the
verdict and the guest's edge coverage.

The budget is deterministic guest time (``Machine.run(guest_ns=)``), which the engine counts
at every block start and stops on by itself (engine patch b; a C block hook on the stock
engine): ``insn_budget`` instructions of ``VirtualClock.NS_PER_INSN`` each, a port or MMIO
access costing its bus time of it.  No Python runs per block.

Crashes: the guest's panic port (a guest-defined panic hook), a triple fault, any other
way the run ends that the guest did not choose (a reset, a halt with interrupts off
before the end), or ``oops`` bytes on COM1 (a kernel oops pattern).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from qemu_lite.clock import VirtualClock
from qemu_lite.fuzz.interface import coverage_for, snapshots_for

OK, HANG = "ok", "hang"


@dataclass
class FuzzConfig:
    """Where a guest is ready, where its input goes, what counts as its end or a crash."""

    kernel: Path
    ready_port: int
    input_at: int
    max_input: int
    code: tuple[int, int]  # linear range whose blocks give coverage
    save: list[tuple[int, int]]  # RAM ranges the stand-in snapshot keeps
    length_at: int | None = None
    panic_port: int | None = None
    oops: bytes | None = None
    insn_budget: int = 1_000_000  # instructions of guest time per input (a hang past it)
    memory: str = "16M"
    timeout: float = 30.0


@dataclass
class Outcome:
    verdict: str  # "ok", "hang", or "crash: ..."
    edges: dict[int, int] = field(default_factory=dict)

    @property
    def crashed(self) -> bool:
        return self.verdict.startswith("crash")


class _Port:
    def __init__(self, on_write: Any) -> None:
        self.on_write = on_write

    def io_read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.on_write(value)


class Harness:
    """One machine, snapshotted at the guest's ready point; :meth:`run` takes inputs."""

    def __init__(self, config: FuzzConfig) -> None:
        from qemu_lite import Machine
        from qemu_lite.loaders import multiboot

        self.config = config
        m = self.machine = Machine(memory=config.memory, serial="none", vga="none",
                                   deterministic=True, no_reboot=True)
        self._console = bytearray()
        m.board.com1.add_output_listener(self._console_output)
        m.add_device(config.ready_port, 1, _Port(lambda v: m.stop("ready")))
        if config.panic_port is not None:
            m.add_device(config.panic_port, 1,
                         _Port(lambda v: m.stop("panic", None, f"panic code {v:#x}")))
        multiboot.load(m, config.kernel)
        result = m.run(timeout=config.timeout)
        if result.reason != "ready":
            raise RuntimeError(f"the guest never reached its ready port {config.ready_port:#x}"
                               f" ({result.reason}: {result.message})")
        self.coverage = coverage_for(m, config.code)
        self.snapshots = snapshots_for(m, config.save)
        self.snapshot = self.snapshots.take()
        self.executions = 0

    def _console_output(self, data: bytes) -> None:
        self._console += data
        del self._console[:-4096]

    def run(self, data: bytes) -> Outcome:
        """One input from the snapshot: its verdict and coverage."""
        c, m = self.config, self.machine
        data = data[:c.max_input]
        self.snapshots.restore(self.snapshot)
        if c.length_at is not None:
            m.write_memory(c.length_at, len(data).to_bytes(4, "little"))
        m.write_memory(c.input_at, data)
        self.coverage.reset()
        self._console.clear()
        result = m.run(timeout=c.timeout,
                       guest_ns=m.clock.now() + c.insn_budget * VirtualClock.NS_PER_INSN)
        self.executions += 1
        edges = self.coverage.edges()
        if c.oops is not None and c.oops in self._console:
            return Outcome(f"crash: {c.oops.decode(errors='replace')} on the console", edges)
        if result.reason == "exit":
            return Outcome(OK, edges)
        if result.reason in ("guest-time", "timeout"):
            return Outcome(HANG, edges)
        return Outcome(f"crash: {result.reason} ({result.message})", edges)

    def close(self) -> None:
        self.machine.close()


def minimize(harness: Harness, data: bytes, max_runs: int = 20_000) -> bytes:
    """The shortest input found that still gives ``data``'s crash verdict: chunks removed
    while the verdict holds (halving the chunk size, ddmin-style), then bytes zeroed."""
    verdict = harness.run(data).verdict
    if not verdict.startswith("crash"):
        raise ValueError(f"the input does not crash the guest ({verdict})")
    runs = 0

    def same(candidate: bytes) -> bool:
        nonlocal runs
        runs += 1
        return harness.run(candidate).verdict == verdict

    before = len(data) + 1
    while len(data) < before and runs < max_runs:  # again while a pass removed something
        before = len(data)
        chunk = max(1, len(data) // 2)
        while chunk >= 1 and runs < max_runs:
            at = 0
            while at < len(data) and runs < max_runs:
                candidate = data[:at] + data[at + chunk:]
                if same(candidate):
                    data = candidate
                else:
                    at += chunk
            chunk //= 2
    for i in range(len(data)):
        if runs >= max_runs:
            break
        if data[i] and same(data[:i] + b"\0" + data[i + 1:]):
            data = data[:i] + b"\0" + data[i + 1:]
    return data


def example_config(workdir: Path | None = None) -> FuzzConfig:
    """The bundled TLV parser (``tlv.asm``), assembled with nasm into ``workdir``."""
    nasm = shutil.which("nasm")
    if nasm is None:
        raise RuntimeError("the TLV example is assembled with nasm (apt-get install nasm)")
    out = Path(workdir or tempfile.mkdtemp(prefix="qemu-lite-fuzz-"))
    source = resources.files("qemu_lite.fuzz").joinpath("tlv.asm").read_text()
    (out / "tlv.asm").write_text(source)
    kernel = out / "tlv.bin"
    subprocess.run([nasm, "-f", "bin", "-o", str(kernel), str(out / "tlv.asm")], check=True)
    size = kernel.stat().st_size
    return FuzzConfig(kernel=kernel, ready_port=0x5F0, panic_port=0x5F1, input_at=0x200000,
                      length_at=0x1FFFFC, max_input=0x1000, code=(0x100000, 0x100000 + size),
                      save=[(0x100000, 0x101000), (0x80000, 0x90000)])
