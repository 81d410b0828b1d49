"""Polling guests under each clock: does --deterministic keep up with real time?

``guests/poller.asm`` waits for the RTC's seconds edge (1 s of guest time,
the RTC starting on a whole second in both modes), a 50 ms PIT one-shot and
the i8042 self-test, all by polling ports.  Real time waits for the host
clock; deterministic time advances 1 us per port access (qemu_lite.clock),
so its wall time is what the polling costs the host.  The deterministic row
runs twice and asserts the same output; compare the two rows' ``wall_s``.

    pytest benchmarks/bench_clock.py --benchmark-only
"""

from __future__ import annotations

import time

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot
from qemu_lite.machine import DETERMINISTIC_RTC_BASE


def run_poller(kernel, deterministic: bool) -> tuple[float, str, int]:
    out = bytearray()
    with Machine(memory="32M", deterministic=deterministic, rtc_base=DETERMINISTIC_RTC_BASE) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        t0 = time.perf_counter()
        result = m.run(timeout=120)
        wall = time.perf_counter() - t0
        guest_ns = m.clock.now()
    assert result.reason == "exit" and result.exit_status == 1, (result, bytes(out))
    return wall, out.decode(errors="replace"), guest_ns


@pytest.mark.parametrize("clock", ["real-time", "deterministic"])
def test_polling_guest(benchmark, guests, clock: str):
    kernel = guests("poller")
    deterministic = clock == "deterministic"
    runs: list[tuple[float, str, int]] = []
    benchmark.group = "polling guest (RTC edge, PIT read-back, i8042)"
    benchmark.pedantic(lambda: runs.append(run_poller(kernel, deterministic)),
                       rounds=2 if deterministic else 1, iterations=1)
    wall, text, guest_ns = runs[-1]
    assert "checksum 00000055" in text, text
    if deterministic:
        assert runs[0][1:] == runs[-1][1:], "two deterministic runs differ"
    benchmark.extra_info.update(workload="poller", clock=clock, wall_s=round(wall, 6),
                                guest_s=round(guest_ns / 1e9, 6), checksum="00000055",
                                deterministic=deterministic)
