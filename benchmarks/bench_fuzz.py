"""Snapshot-fuzzing executions per second on the bundled TLV guest (qemu_lite.fuzz).

One process runs a fixed batch of inputs through one harness; then the same batch split
over N Ray actors (``pip install '.[scale]'``), each holding its own machine and snapshot,
on the local cluster.  ``extra_info`` carries executions per second; the ratio of the two
is the scaling (2 workers on 2 idle cores should approach 2x).

The one-process row runs twice: with the harness as it is (its hang budget is the
engine's guest-time deadline: nothing per block) and with the Python block hook over the
guest's code that counted the budget before (``python-block-hook``, re-added here only to
compare, in the same run).

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


def _python_block_budget(harness: Any, blocks: int = 200_000) -> Any:
    """The previous hang budget: a Python block hook counting the guest's blocks."""
    from unicorn import UC_HOOK_BLOCK

    m, lo, hi = harness.machine, *harness.config.code
    seen = [0]

    def block(_uc: Any, _address: int, _size: int, _user: Any) -> None:
        seen[0] += 1
        if seen[0] == blocks:
            m.stop_at_next_block("budget")

    m.uc.hook_add(UC_HOOK_BLOCK, block, None, lo, hi - 1)

    def run(data: bytes) -> Any:
        seen[0] = 0
        return harness.run(data)

    return run


@pytest.mark.parametrize("budget", ["engine-deadline", "python-block-hook"])
def test_fuzz_executions_one_process(benchmark: Any, budget: str) -> None:
    from qemu_lite.fuzz.harness import Harness, example_config

    harness = Harness(example_config())
    run = harness.run if budget == "engine-deadline" else _python_block_budget(harness)
    batch = _inputs()
    benchmark.group = "snapshot fuzzing (TLV guest)"
    verdicts = benchmark.pedantic(lambda: [run(d).verdict for d in batch], rounds=3,
                                  iterations=1)
    assert "hang" not in verdicts  # every input ran to its end
    benchmark.extra_info.update(inputs=len(batch), workers=1, budget=budget,
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
