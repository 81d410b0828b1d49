"""Two CPU-bound guest workers: on one vCPU, and on two vCPUs under ``thread=single``.

``smp_workers.asm`` runs two workers of ITERS multiply-add steps (registers only) and
reports their sum.  ``smp1`` runs both on the BSP; ``smp2-single`` starts an AP by
INIT/SIPI and runs one worker per vCPU, the vCPUs taking turns on one engine and one
host thread.  Both rows carry ``ratio``: their median over ``smp1``'s, measured in the
same test.  ``thread=single`` can give no speed-up (ideal 1.0: the cost of the turns,
context switches and TLB flushes); a ``thread=multi`` row belongs here once vCPUs run
on their own host threads (issue 18: at least 1.6x faster than ``thread=single``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

ROUNDS = 3
ITERS = 50_000_000
LAYOUTS = {"smp1": (1, 2), "smp2-single": (2, 1)}  # (CPUs, workers per CPU)


def run_workers(kernel: Path, cpus: int) -> tuple[float, str]:
    out = bytearray()
    with Machine(memory="16M", serial="none", vga="none", smp=cpus,
                 accel="tcg,thread=single") as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        t0 = time.perf_counter()
        result = m.run(timeout=300)
        wall = time.perf_counter() - t0
    text = out.decode(errors="replace")
    assert result.reason == "exit", (result, text)
    return wall, text.strip()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_cpu_bound_workers(benchmark, guests, layout):
    benchmark.group = "smp: two CPU-bound workers"
    kernels = {name: guests("smp_workers", {"CPUS": cpus, "WORKERS_PER_CPU": per_cpu,
                                            "ITERS": ITERS})
               for name, (cpus, per_cpu) in LAYOUTS.items()}
    baseline = [run_workers(kernels["smp1"], 1) for _ in range(ROUNDS)]
    walls: list[float] = []
    outputs: set[str] = {text for _, text in baseline}

    def once() -> None:
        wall, text = run_workers(kernels[layout], LAYOUTS[layout][0])
        walls.append(wall)
        outputs.add(text)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    assert len(outputs) == 1, outputs  # the same sum on one vCPU and on two
    base_s = statistics.median(w for w, _ in baseline)
    benchmark.extra_info.update(cpus=LAYOUTS[layout][0], median_s=round(statistics.median(walls), 3),
                                smp1_median_s=round(base_s, 3),
                                ratio=round(statistics.median(walls) / base_s, 3),
                                output=outputs.pop())
