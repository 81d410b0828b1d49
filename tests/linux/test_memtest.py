"""Memtest86+ (Debian's package), a third-party program that probes the PC as hardware:
it boots through the Linux boot protocol, reads the E820 map and CPUID, starts the APs
from the MADT by INIT/SIPI, and then tests RAM from all cores in parallel, drawing its
screen on COM1 as VT100.  The run is stopped once the screen shows test #7 or a later
one (the screen is redrawn every second or so of guest time, so which tests it shows
on the way depends on how fast the host runs them).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import linux

MEMTEST = Path("/boot/memtest86+x64.bin")
ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
LATE_TEST = re.compile(rb"#(?:[7-9]|1[0-9]) +\[")


@pytest.mark.skipif(not MEMTEST.exists(), reason=f"{MEMTEST} missing: apt-get install memtest86+")
def test_memtest86_finds_the_ram_and_both_cpus_and_no_errors():
    out = bytearray()
    reached = threading.Event()

    with Machine(memory="32M", smp=2) as m:
        def listen(data: bytes) -> None:
            out.extend(data)
            if LATE_TEST.search(out, max(0, len(out) - 4096)) and not reached.is_set():
                reached.set()
                m.stop_at_next_block("memtest reached test 7")

        m.board.com1.add_output_listener(listen)
        linux.load(m, str(MEMTEST), "console=ttyS0,115200 smp")
        result = m.run(timeout=300)
    screen = ESCAPE.sub(b"\n", bytes(out)).decode(errors="replace")
    assert reached.is_set(), (result, screen[-3000:])
    assert "Memtest86+ v6" in screen
    assert re.search(r"Memory  :\s+32MB", screen), screen[:3000]  # from our E820 map
    assert "Intel Core Processor (Haswell)" in screen             # our CPUID brand string
    # Both CPUs found in the MADT, started, and testing in parallel.
    assert "CPU: 2S / 2C / 2T" in screen and "SMP: 2T (PAR)" in screen, screen[:3000]
    assert "Using: All Cores" in screen
    # Every pattern each test wrote was read back: no status line ever counts an error.
    errors = set(re.findall(r"Errors: (\d+)", screen))
    assert errors == {"0"}, errors
    assert "#0  [Address test, walking ones" in screen
