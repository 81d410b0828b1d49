"""The bundled default image (firmware/default.img) through the command line, in every MMU mode.

The guest goes real -> protected -> paging -> long mode, then ring 3 (IRETQ,
INT 80h, SYSCALL/SYSRET, #PF on an IST stack) and three processes with their
own page tables, switched on every yield and by the 1 kHz timer
(firmware/guest/usermode.asm).  Its output is deterministic, so it must be
the same line for line in every MMU mode (and under QEMU); what differs is
the shadow MMU's work: roots found again on CR3 loads in ``cached`` mode,
never in ``naive`` mode.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"

# Everything the guest prints (the BIOS's own lines before it are not the guest's).
GUEST_LINES = (FIRMWARE / "guest" / "default.expected").read_text().splitlines()

MMU_MODES = ("cached", "naive", "native")


def qemu_lite(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Outside the source tree, so that the installed package is what runs.
    return subprocess.run([sys.executable, "-m", "qemu_lite", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=tempfile.gettempdir())


def guest_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line == GUEST_LINES[0]), None)
    assert start is not None, stdout
    return lines[start:]


def mmu_stats(stderr: str) -> dict[str, int]:
    """The ``--mmu-stats`` block: '  name  value' lines after the heading."""
    stats: dict[str, int] = {}
    for line in stderr.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) == 2 and parts[1].isdigit():
            stats[parts[0]] = int(parts[1])
    return stats


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """One run of the bundled image per MMU mode, with statistics."""
    return {mode: qemu_lite("--mmu-stats", "--mmu", mode, "--timeout", "60")
            for mode in MMU_MODES}


@pytest.mark.parametrize("mode", MMU_MODES)
def test_every_stage_passes_and_the_guest_exits_through_isa_debug_exit(runs, mode):
    proc = runs[mode]
    assert guest_lines(proc.stdout) == GUEST_LINES, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout
    assert proc.returncode == 1, proc.stderr  # the guest wrote 0 to port 0xF4


def test_guest_output_is_identical_in_every_mmu_mode(runs):
    outputs = {mode: proc.stdout for mode, proc in runs.items()}
    assert outputs["naive"] == outputs["cached"]
    assert outputs["native"] == outputs["cached"]


def test_cached_mode_reuses_shadow_roots_across_cr3_switches(runs):
    cached = mmu_stats(runs["cached"].stderr)
    naive = mmu_stats(runs["naive"].stderr)
    assert "MMU statistics (cached)" in runs["cached"].stderr
    assert "MMU statistics (naive)" in runs["naive"].stderr
    # at least one CR3 load per yield; each address space's root is found again, or
    # (TLB contexts, engine patch i) its whole TLB comes back and needs no root at all
    assert cached["cr3_loads"] >= 600, cached
    assert cached["roots_reused"] > 0, cached
    assert cached["roots_reused"] + cached["ctx_restored"] + cached["ctx_same_space"] >= \
        cached["cr3_loads"] - 10, cached
    assert cached["naive_zap_all"] == 0, cached
    # naive mode drops every shadow page at each CR3 load: nothing to reuse
    assert naive["cr3_loads"] >= 600, naive
    assert naive["roots_reused"] == 0, naive
    assert naive["naive_zap_all"] > 0, naive


# Test builds of the image whose ring-3 task faults at once (usermode.asm FAULT_TEST):
# each fatal handler prints its FAILED line and exits with its own code.
FAULTS = [
    (1, "default guest: FAILED: invalid opcode (#UD) vector 6 rip=0000000000400000 "
        "cs=000000000000003B", 0x16),
    (2, "default guest: FAILED: general protection (#GP) vector 13 rip=0000000000400000 "
        "cs=000000000000003B error=0000000000000000", 0x17),
    (3, "default guest: FAILED: page fault (#PF) vector 14 rip=0000000000400000 "
        "cs=000000000000003B error=0000000000000007 cr2=0000000000008000", 0x18),
    (4, "default guest: FAILED: double fault (#DF) vector 8 rip=0000000000400000 "
        "cs=000000000000003B error=0000000000000000", 0x19),
]


@pytest.mark.parametrize("fault, line, code", FAULTS, ids=["UD", "GP", "PF", "DF"])
def test_fault_handlers_print_a_failed_line_and_exit_with_their_code(nasm_path, tmp_path,
                                                                     fault, line, code):
    image = tmp_path / f"fault{fault}.img"
    subprocess.run([nasm_path, "-f", "bin", "-I", str(FIRMWARE / "guest") + "/",
                    f"-DFAULT_TEST={fault}", "-o", str(image),
                    str(FIRMWARE / "guest" / "default.asm")], check=True)
    proc = qemu_lite(str(image), "--snapshot", "--timeout", "60")
    lines = guest_lines(proc.stdout)
    assert lines[-2:-1] == ["entering ring 3"], proc.stdout
    assert lines[-1].startswith(line), proc.stdout
    assert proc.returncode == (code << 1) | 1, proc.stderr


def test_qemu_prints_the_same_guest_lines(tmp_path):
    """The reference: QEMU with our BIOS runs the image to the same transcript."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed: no reference boot")
    disk = tmp_path / "default.img"
    shutil.copy(FIRMWARE / "default.img", disk)
    cmd = [qemu, "-bios", str(FIRMWARE / "bios.bin"), "-serial", "stdio", "-display", "none",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-m", "64", "-no-reboot",
           "-drive", f"file={disk},format=raw,if=ide"]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    out = proc.stdout.decode("latin-1").replace("\r\n", "\n")
    assert guest_lines(out) == GUEST_LINES, out
    assert proc.returncode == 1
