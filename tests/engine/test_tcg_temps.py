"""Patch g: no straight-line guest code can overrun the translator's temp pool.

Unicorn 2.1.4's i386 translator leaks a TCG temp in INTO, AAM, AAD, FXCH ST(i)
and more; a block of ~480 of them overran TCG_MAX_TEMPS and killed the host
with SIGSEGV.  Each guest here runs a page of one such instruction and prints
EAX, which the run leaves at a known value.  The guest runs in a child
process, so an engine without the patch fails the test (killed by a signal)
instead of killing pytest.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from guestlib import protected_mode_guest

pytestmark = pytest.mark.requires_patched_engine("g")

PAGE = 4000  # bytes of the instruction: one page-sized block

RUN_GUEST = r"""
import sys
from qemu_lite import Machine
from qemu_lite.loaders import multiboot
out = bytearray()
with Machine(serial="none", memory="32M", mmu=sys.argv[2]) as m:
    m.board.com1.add_output_listener(out.extend)
    multiboot.load(m, sys.argv[1])
    result = m.run(timeout=20)
print(result.reason, result.exit_status, out.decode(errors="replace"))
"""


def _guest(insn: str, size: int) -> str:
    return protected_mode_guest(rf"""
    fninit
    fld1
    fld1
    mov eax, 0x0102
    jmp block
align 4096
block:
    times {PAGE // size} {insn}
    call puthex
    mov al, 0
    call exit
""")


@pytest.mark.parametrize(("insn", "size", "eax", "mmu"), [
    ("into", 1, 0x0102, "cached"), ("into", 1, 0x0102, "naive"),
    ("into", 1, 0x0102, "native"),
    ("aam 10", 2, 0x0002, "cached"),     # AH = AL / 10, AL = AL % 10
    ("aad 10", 2, 0x000C, "cached"),     # AL = AL + 10 * AH, AH = 0
    ("fxch st1", 2, 0x0102, "cached"),
])
def test_a_page_of_temp_leaking_instructions_runs(assemble, tmp_path, insn, size, eax, mmu):
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(_guest(insn, size)))
    proc = subprocess.run([sys.executable, "-c", RUN_GUEST, str(kernel), mmu],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.split() == ["exit", "1", f"{eax:08X}"], proc.stdout
