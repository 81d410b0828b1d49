"""Two CPU-bound guest workers: on one vCPU, and on two vCPUs under ``thread=single``
and ``thread=multi``.

``smp_workers.asm`` runs two workers of ITERS multiply-add steps (registers only) and
reports their sum.  ``smp1`` runs both on the BSP; ``smp2-single`` starts an AP by
INIT/SIPI and runs one worker per vCPU, the vCPUs taking turns on one engine and one
host thread.  Both rows carry ``ratio``: their median over ``smp1``'s, measured in the
same test.  ``thread=single`` can give no speed-up (ideal 1.0: the cost of the turns,
context switches and TLB flushes).  ``smp2-multi`` runs each vCPU on an engine and a
host thread of its own (ideal 0.5 on two idle host cores; issue 18 asks for at least
1.6x faster than ``thread=single``, so a ratio of at most 0.62 of ``smp1`` when the
single row is at 1.0); its row also carries ``single_ratio``, the same run's
``smp2-single`` median over its own.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot
from qemu_lite.multi import multi_supported

ROUNDS = 3
ITERS = 50_000_000
# (CPUs, workers per CPU, -accel thread=)
LAYOUTS = {"smp1": (1, 2, "single"), "smp2-single": (2, 1, "single"),
           "smp2-multi": (2, 1, "multi")}


def run_workers(kernel: Path, cpus: int, thread: str = "single") -> tuple[float, str]:
    out = bytearray()
    with Machine(memory="16M", serial="none", vga="none", smp=cpus,
                 accel=f"tcg,thread={thread}") as m:
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
    cpus, _, thread = LAYOUTS[layout]
    if thread == "multi" and multi_supported() is not None:
        pytest.skip(str(multi_supported()))
    kernels = {name: guests("smp_workers", {"CPUS": n, "WORKERS_PER_CPU": per_cpu,
                                            "ITERS": ITERS})
               for name, (n, per_cpu, _) in LAYOUTS.items()}
    baseline = [run_workers(kernels["smp1"], 1) for _ in range(ROUNDS)]
    single = ([run_workers(kernels["smp2-single"], 2) for _ in range(ROUNDS)]
              if thread == "multi" else [])
    walls: list[float] = []
    outputs: set[str] = {text for _, text in baseline + single}

    def once() -> None:
        wall, text = run_workers(kernels[layout], cpus, thread)
        walls.append(wall)
        outputs.add(text)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    assert len(outputs) == 1, outputs  # the same sum on one vCPU and on two
    base_s = statistics.median(w for w, _ in baseline)
    median = statistics.median(walls)
    benchmark.extra_info.update(cpus=cpus, thread=thread, median_s=round(median, 3),
                                smp1_median_s=round(base_s, 3), ratio=round(median / base_s, 3),
                                output=outputs.pop())
    if single:
        single_s = statistics.median(w for w, _ in single)
        benchmark.extra_info.update(single_median_s=round(single_s, 3),
                                    single_ratio=round(single_s / median, 3))
