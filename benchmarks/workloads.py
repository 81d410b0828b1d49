"""What the benchmark suites share: the workload guests, building and running them,
and turning ``Core.mmu_stats()`` into the numbers each result carries.

Guests are nasm sources in ``benchmarks/guests/``, assembled at benchmark time
into a temporary directory and booted as Multiboot kernels.  Each prints one
``checksum XXXXXXXX`` line on COM1 and leaves through isa-debug-exit.  None of
them programs a timer, so the instructions they execute, and therefore the
TLB misses and every MMU counter, are the same in every run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

GUESTS = Path(__file__).parent / "guests"
MODES = ["cached", "naive", "native"]
SMALL_BOUND = 64
MEMORY = "128M"


@dataclass(frozen=True)
class Workload:
    name: str
    source: str
    defines: dict[str, int] = field(default_factory=dict)
    what: str = ""


WORKLOADS = [
    Workload("cr3_switch", "cr3_switch", {}, "16 address spaces, a CR3 load per process "
             "switch, one exec (page-table rewrite) a round"),
    Workload("pt_churn", "pt_churn", {}, "mmap/munmap churn and copy-on-write faults "
             "handled by the guest's #PF handler"),
    Workload("big_ws", "big_ws", {}, "128 MiB of 4 KiB pages per address space, "
             "two spaces, a switch every 32,768 page touches"),
    Workload("paging32", "mm_mix", {"PAE": 0}, "32-bit paging (2 levels, PSE large pages), "
             "4 processes"),
    Workload("pae", "mm_mix", {"PAE": 1}, "the same processes under PAE paging "
             "(3 levels, 2 MiB pages)"),
    Workload("mode_switch", "mode_switch", {}, "32-bit -> PAE -> long mode -> back, "
             "2,000 times, one mapping in every format"),
    Workload("stores", "stores", {}, "store loop over 16 MiB of 4 KiB pages (ENGINE_FACTS.md fact 12)"),
    Workload("loads", "stores", {"LOADS": 1}, "the same loop loading instead of storing"),
    Workload("shared_kernel", "shared_kernel", {}, "16 processes sharing a global kernel "
             "half (CR4.PGE), user halves switched"),
    Workload("pti", "pti", {}, "8 processes with two roots each (page-table isolation): "
             "two CR3 loads per kernel entry"),
]

# The context-switch workloads: the ones where ``cached`` must beat ``native``.
CONTEXT_SWITCH = ("cr3_switch", "big_ws", "paging32", "pae", "mode_switch", "shared_kernel",
                  "pti")

# Counters that must not change between two runs of a timer-free guest.
DETERMINISTIC_KEYS = (
    "fills", "fills_read", "fills_write", "fills_fetch", "faults", "guest_walks",
    "shadow_hits", "shadow_misses", "shadow_perm_misses", "cr3_loads", "roots_reused",
    "roots_created", "mode_changes", "naive_zap_all", "sp_created", "sp_zapped",
    "sp_recycled", "wp_traps", "alias_writes", "pte_writes", "pte_updated", "pte_zapped",
    "flood_zaps", "tlb_flushes_wp", "tlb_flushes_code",
)


def nasm() -> str:
    path = shutil.which("nasm")
    if path is None:
        pytest.skip("nasm is needed to assemble the benchmark guests (apt-get install nasm)")
    return path


def assemble(out_dir: Path, source: str, defines: dict[str, int] | None = None,
             name: str | None = None) -> Path:
    """Assemble ``guests/<source>.asm`` with ``-Dk=v`` defines into ``out_dir``."""
    defines = defines or {}
    stem = name or "_".join([source, *(f"{k}{v}" for k, v in sorted(defines.items()))])
    out = out_dir / f"{stem}.bin"
    if not out.exists():
        args = [nasm(), "-f", "bin", "-i", f"{GUESTS}/", "-o", str(out)]
        args += [f"-D{k}={v}" for k, v in sorted(defines.items())]
        subprocess.run([*args, str(GUESTS / f"{source}.asm")], check=True)
    return out


class GuestBuilder:
    """Assembles each guest once per session (a pytest fixture hands it out)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def __call__(self, source: str, defines: dict[str, int] | None = None,
                 name: str | None = None) -> Path:
        return assemble(self.out_dir, source, defines, name)


@dataclass
class Run:
    """One guest run: what it printed, how long ``Machine.run`` took, the MMU counters."""

    output: str
    wall_s: float
    stats: dict[str, Any]

    @property
    def checksum(self) -> str:
        for line in self.output.splitlines():
            if line.startswith("checksum "):
                return line.split()[1]
        raise AssertionError(f"guest printed no checksum line: {self.output!r}")


class PreparedGuest:
    """A Machine with a guest loaded, made outside the timed region."""

    def __init__(self, kernel: Path, mmu: str, max_shadow_pages: int | None = None,
                 memory: str = MEMORY, disk: str | None = None,
                 setup: Any = None) -> None:
        self.output = bytearray()
        self.machine = Machine(disk, memory=memory, mmu=mmu)
        if max_shadow_pages is not None:
            self.machine.core.set_max_shadow_pages(max_shadow_pages)
        self.machine.board.com1.add_output_listener(self.output.extend)
        if setup is not None:
            setup(self.machine)
        multiboot.load(self.machine, kernel)
        self.machine.core.reset_mmu_stats()

    def run(self, timeout: float = 120) -> Run:
        m = self.machine
        t0 = time.perf_counter()
        result = m.run(timeout=timeout)
        wall = time.perf_counter() - t0
        try:
            assert result.reason == "exit" and result.exit_status == 1, \
                f"{result} output={bytes(self.output)!r}"
            stats = dict(m.core.mmu_stats())
        finally:
            m.close()
        return Run(self.output.decode(errors="replace"), wall, stats)


def summarize(stats: dict[str, Any], mmu: str, wall_s: float) -> dict[str, Any]:
    """The numbers a result row carries (``benchmark.extra_info``).

    ``hit_rate`` is shadow hits / fills: the share of Unicorn's TLB misses that
    the shadow tree answered without walking the guest's tables.  Unicorn's
    own MMU (``native``) has no fill hook, so it has no counters: None."""
    fills = int(stats.get("fills", 0))
    shadowed = mmu in ("cached", "naive")
    info: dict[str, Any] = {
        "mmu": mmu,
        "wall_s": round(wall_s, 6),
        "hit_rate": (stats["shadow_hits"] / fills if fills else 0.0) if shadowed else None,
        "fills": fills if shadowed else None,
        "fills_per_s": round(fills / wall_s) if shadowed and wall_s > 0 else None,
        "guest_walks": stats.get("guest_walks") if shadowed else None,
        "roots_reused": stats.get("roots_reused") if shadowed else None,
        "roots_created": stats.get("roots_created") if shadowed else None,
        "zaps": stats.get("sp_zapped") if shadowed else None,
        "recycles": stats.get("sp_recycled") if shadowed else None,
        "write_traps": stats.get("wp_traps") if shadowed else None,
        "alias_writes": stats.get("alias_writes") if shadowed else None,
        "alias_writes_untracked": stats.get("alias_writes_untracked") if shadowed else None,
        "pte_writes": stats.get("pte_writes") if shadowed else None,
        "flood_zaps": stats.get("flood_zaps") if shadowed else None,
        "guest_faults": stats.get("faults") if shadowed else None,
        "cr3_loads": stats.get("cr3_loads") if shadowed else None,
        "mode_changes": stats.get("mode_changes") if shadowed else None,
        "sp_created": stats.get("sp_created") if shadowed else None,
        "ctx_restored": stats.get("ctx_restored") if shadowed else None,
        "ctx_fills_avoided": stats.get("ctx_fills_avoided") if shadowed else None,
        "ctx_evicted": stats.get("ctx_evicted") if shadowed else None,
        "ctx_dropped": stats.get("ctx_dropped") if shadowed else None,
    }
    return info


def counts(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: stats.get(k) for k in DETERMINISTIC_KEYS}
