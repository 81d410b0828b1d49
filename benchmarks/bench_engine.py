"""Patched engine vs stock Unicorn 2.1.4, same workload, same run.  (pytest-benchmark)

A process loads one libunicorn, so every row runs its guest in a subprocess
(benchmarks/engine_run.py) under ``QEMU_LITE_ENGINE=stock`` or the installed
patched engine.  More builds join the comparison through
``QEMU_LITE_BENCH_ENGINES="a=/tmp/engine-a,c=/tmp/engine-c"``: directories made
by ``python engine/build_engine.py --patches a --out /tmp/engine-a``, which is
how each patch is measured alone.  Every engine must give the same guest
output (checksum, or the Linux marker line).

    pytest benchmarks/bench_engine.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workloads import summarize

from qemu_lite import engine as qengine
from qemu_lite import imagebuild

RUNNER = Path(__file__).parent / "engine_run.py"
MARKER = "qemu-lite-bench: userspace reached"
INIT = f'busybox echo "{MARKER}"\nbusybox poweroff -f\n'


def _engines() -> dict[str, str]:
    engines = {"stock": "stock"}
    if (qengine.LIB_DIR / qengine.LIB_NAME).is_file():
        engines["patched"] = "patched"
    for item in filter(None, os.environ.get("QEMU_LITE_BENCH_ENGINES", "").split(",")):
        name, _, path = item.partition("=")
        engines[name.strip()] = path.strip()
    return engines


ENGINES = _engines()
CASES = [("cr3_switch", "cached"), ("cr3_switch", "naive"), ("pt_churn", "cached"),
         ("stores", "native"), ("stores", "cached")]


def _run(engine: str, *args: str) -> dict:
    env = dict(os.environ, QEMU_LITE_ENGINE=engine)
    proc = subprocess.run([sys.executable, str(RUNNER), *args], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return imagebuild.write_initramfs(tmp_path_factory.mktemp("linux") / "initrd.cpio", INIT)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    """The first checksum per workload; every engine must print the same."""
    return {}


@pytest.mark.linux
@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_linux_boot(benchmark, initrd, engine: str):
    try:
        kernel = imagebuild.find_kernel()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    benchmark.group = "engine: linux boot to userspace"
    results: list[dict] = []
    benchmark.pedantic(lambda: results.append(_run(ENGINES[engine], "linux", kernel,
                                                   str(initrd))), rounds=1, iterations=1)
    r = results[-1]
    assert r["reason"] == "powered-off" and MARKER in r["output"], r["output"][-3000:]
    benchmark.extra_info.update(workload="linux_boot", engine=r["engine"], mmu="cached",
                                wall_s=round(r["wall_s"], 6), cpu_s=round(r["cpu_s"], 6),
                                deterministic=False)


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize(("workload", "mmu"), CASES, ids=[f"{w}-{m}" for w, m in CASES])
def test_engine_workload(benchmark, guests, outputs, workload: str, mmu: str, engine: str):
    kernel = guests(workload)
    benchmark.group = f"engine: {workload} --mmu {mmu}"
    results: list[dict] = []
    benchmark.pedantic(lambda: results.append(_run(ENGINES[engine], "workload", str(kernel),
                                                   mmu)), rounds=3, iterations=1)
    r = min(results, key=lambda x: x["wall_s"])  # these guests are short: best of three
    expected = outputs.setdefault(workload, r["checksum"])
    assert r["checksum"] == expected, f"{engine} printed {r['checksum']}, another {expected}"
    assert all(x["stats"].get("fills") == r["stats"].get("fills") for x in results)
    info = summarize(r["stats"], mmu, r["wall_s"])
    info.update(workload=workload, engine=r["engine"], checksum=r["checksum"],
                cpu_s=round(min(x["cpu_s"] for x in results), 6), deterministic=True)
    benchmark.extra_info.update(info)


@pytest.mark.linux
def test_engine_linux_boot_qemu_reference(benchmark, initrd):
    """The same boot under QEMU's TCG, the outside reference for the rows above."""
    try:
        kernel = imagebuild.find_kernel()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    benchmark.group = "engine: linux boot to userspace"
    cmd = [qemu, "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-kernel", kernel,
           "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1"]
    results: list[tuple[float, float, str]] = []

    def run() -> None:
        t0, c0 = time.perf_counter(), os.times()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=600, stdin=subprocess.DEVNULL)
        c1 = os.times()
        cpu = c1.children_user + c1.children_system - c0.children_user - c0.children_system
        results.append((time.perf_counter() - t0, cpu, proc.stdout))

    benchmark.pedantic(run, rounds=1, iterations=1)
    wall, cpu, text = results[-1]
    assert MARKER in text, text[-3000:]
    benchmark.extra_info.update(workload="linux_boot", engine="qemu-tcg", wall_s=round(wall, 6),
                                cpu_s=round(cpu, 6), deterministic=False,
                                note="QEMU's start-up and exit included")
