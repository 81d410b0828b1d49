"""Snapshot-fuzzing executions per second on the bundled TLV guest (qemu_lite.fuzz).

One process runs a fixed batch of inputs through one harness; then the same batch split
over N Ray actors (``pip install '.[scale]'``), each holding its own machine and snapshot,
on the local cluster.  ``extra_info`` carries executions per second; the ratio of the two
is the scaling (2 workers on 2 idle cores should approach 2x).

    pytest benchmarks/bench_fuzz.py --benchmark-only
"""

from __future__ import annotations

import random
import shutil
from typing import Any

import pytest

INPUTS = 2000
WORKERS = 2


def _inputs() -> list[bytes]:
    rng = random.Random(19)
    out = []
    for _ in range(INPUTS):
        body = bytearray(b"TLV")
        for _ in range(rng.randrange(0, 6)):
            kind = rng.choice(b"VNS?")
            value = rng.randbytes(rng.randrange(0, 16))
            body += bytes([kind, len(value)]) + value
        out.append(bytes(body))
    return out


pytestmark = pytest.mark.skipif(shutil.which("nasm") is None,
                                reason="the TLV example guest is assembled with nasm")


def test_fuzz_executions_one_process(benchmark: Any) -> None:
    from qemu_lite.fuzz.harness import Harness, example_config

    harness = Harness(example_config())
    batch = _inputs()
    benchmark.group = "snapshot fuzzing (TLV guest)"
    benchmark.pedantic(lambda: [harness.run(d) for d in batch], rounds=3, iterations=1)
    benchmark.extra_info.update(inputs=len(batch), workers=1,
                                exec_per_s=round(len(batch) / benchmark.stats.stats.min))
    harness.close()


def test_fuzz_executions_ray_workers(benchmark: Any) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[scale]')")

    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self) -> None:
            from qemu_lite.fuzz.harness import Harness, example_config

            self.harness = Harness(example_config())

        def run(self, batch: list[bytes]) -> int:
            return sum(self.harness.run(d).crashed for d in batch)

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        workers = [Worker.remote() for _ in range(WORKERS)]  # type: ignore[attr-defined]
        batch = _inputs()
        shares = [batch[i::WORKERS] for i in range(WORKERS)]
        ray.get([w.run.remote(s[:10]) for w, s in zip(workers, shares, strict=True)])  # ready

        def run_all() -> int:
            return sum(ray.get([w.run.remote(s) for w, s in zip(workers, shares, strict=True)]))

        benchmark.group = "snapshot fuzzing (TLV guest)"
        benchmark.pedantic(run_all, rounds=3, iterations=1)
        benchmark.extra_info.update(inputs=len(batch), workers=WORKERS,
                                    exec_per_s=round(len(batch) / benchmark.stats.stats.min))
    finally:
        ray.shutdown()
