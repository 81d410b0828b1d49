"""Run one workload in this process and print its result as JSON (for bench_engine.py).

One process loads one libunicorn, so bench_engine.py compares engines by
running this script under different ``QEMU_LITE_ENGINE`` values::

    QEMU_LITE_ENGINE=stock python benchmarks/engine_run.py workload KERNEL.bin native
    python benchmarks/engine_run.py linux BZIMAGE INITRD
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import qemu_lite.engine  # noqa: E402, I001  (first: picks the library)
from qemu_lite import Machine  # noqa: E402
from qemu_lite.loaders import linux  # noqa: E402
from workloads import PreparedGuest  # noqa: E402

LINUX_APPEND = "console=ttyS0 panic=-1"
LINUX_MEMORY = "512M"


def run_workload(kernel: str, mmu: str) -> dict:
    r = PreparedGuest(Path(kernel), mmu).run(timeout=600)
    return {"wall_s": r.wall_s, "checksum": r.checksum, "stats": r.stats}


def run_linux(kernel: str, initrd: str) -> dict:
    out = bytearray()
    with Machine(memory=LINUX_MEMORY, mmu="cached") as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel, LINUX_APPEND, Path(initrd))
        t0 = time.perf_counter()
        result = m.run(timeout=600)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "reason": result.reason,
            "output": out.decode(errors="replace")}


def main() -> int:
    kind, *args = sys.argv[1:]
    cpu0 = time.process_time()
    res = run_workload(*args) if kind == "workload" else run_linux(*args)
    # CPU seconds of the whole run (set-up included): steadier than wall time
    # on a shared machine.
    res["cpu_s"] = time.process_time() - cpu0
    res["engine"] = qemu_lite.engine.engine_info().describe()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
