"""Machines in threads: does a second ``Machine`` in another thread of the same process slow
the first down?

Each machine boots the bundled default image (our BIOS, the MBR, real -> long mode, ring 3,
three processes on a 1 kHz timer) and exits through isa-debug-exit.  ``alone`` is one machine
on the main thread; ``threads-2`` starts two machines in two threads at once (a barrier) and
times each ``Machine.run``; ``processes-2`` does the same in two processes, the peer that shows
what the host's cores allow (no GIL between them).  The two-machine rows carry ``ratio``: the
median per-machine time over the median time alone, both measured in the same test; on a host
with two idle cores the ideal is 1.0, and ``threads-2`` should come close to ``processes-2``.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time

import pytest

from qemu_lite import DEFAULT_IMAGE, Machine

ROUNDS = 7


def boot_default_image(barrier: threading.Barrier | None = None) -> float:
    """Wall time of one ``Machine.run`` of the default image (building it is not timed)."""
    with Machine(DEFAULT_IMAGE, serial="none", snapshot=True) as m:
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        result = m.run(timeout=120)
        wall = time.perf_counter() - t0
    assert result.reason == "exit" and result.exit_status == 1, result
    return wall


def boot_in_threads(n: int) -> list[float]:
    walls: list[float] = [0.0] * n
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            walls[i] = boot_default_image(barrier)
        except BaseException as exc:  # re-raised on the benchmark's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return walls


def _process_worker(barrier: threading.Barrier, results: multiprocessing.Queue, rounds: int,
                    ) -> None:
    boot_default_image()
    for _ in range(rounds):
        results.put(boot_default_image(barrier))


def boot_in_processes(n: int, rounds: int) -> list[float]:
    """``rounds`` rounds of ``n`` machines in ``n`` processes started together."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(barrier, results, rounds))
             for _ in range(n)]
    for p in procs:
        p.start()
    walls = [results.get(timeout=300) for _ in range(n * rounds)]
    for p in procs:
        p.join()
    return walls


@pytest.mark.parametrize("layout", ["alone", "threads-2", "processes-2"])
def test_machines_in_threads(benchmark, layout):
    benchmark.group = "machines in threads: default image"
    boot_default_image()  # warm caches (imports, the firmware files)
    alone = [boot_default_image() for _ in range(ROUNDS)]
    if layout == "alone":
        benchmark.pedantic(boot_default_image, rounds=ROUNDS, iterations=1)
        benchmark.extra_info.update(machines=1, median_s=round(statistics.median(alone), 4))
        return
    per_machine: list[float] = []
    if layout == "processes-2":
        # One timed call covers all rounds (process start-up is not in per_machine).
        benchmark.pedantic(lambda: per_machine.extend(boot_in_processes(2, ROUNDS)),
                           rounds=1, iterations=1)
    else:
        benchmark.pedantic(lambda: per_machine.extend(boot_in_threads(2)),
                           rounds=ROUNDS, iterations=1)
    alone_s = statistics.median(alone)
    threads_s = statistics.median(per_machine)
    benchmark.extra_info.update(machines=2, alone_median_s=round(alone_s, 4),
                                per_machine_median_s=round(threads_s, 4),
                                ratio=round(threads_s / alone_s, 2))
