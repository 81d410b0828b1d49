"""Micro-benchmarks of the hot paths, each beside its peers in the same run.

- TLB fill (``test_fill_cost_mmu``): one guest loop that reloads CR3 and reads
  one dword of each of 8,192 pages, 100 times: a fill per page touch.  Peers:
  the shadow MMU (``cached``, with TLB contexts off so that every reload still
  flushes: the cost of the fill itself), Unicorn's own MMU (``native``), and a
  raw Unicorn engine whose ``UC_HOOK_TLB_FILL`` hook is a pure-Python identity
  map (``python_hook``): what mmu_core's C fill saves over doing it in Python
  (ENGINE_FACTS.md fact 1).  ``cached_contexts`` is the default ``cached`` MMU, whose TLB
  contexts see that a reload of the same CR3 needs no flush (engine patch i).
- Port I/O round trip (``test_port_io``): ``IN AL, DX`` to a Python device vs
  to an unclaimed port.
- PIO sector read (``test_pio_sector_read``): ATA READ SECTORS with
  ``REP INSW`` from the IDE disk.
- #PF delivery round trip (``test_pf_roundtrip_mmu``): a guest fault whose
  handler fixes the mapping, per fault, under each MMU mode.

``extra_info`` carries ``ns_per_op`` (wall time of ``Machine.run`` over the
number of operations) so peers compare directly.
"""

from __future__ import annotations

import array
import random
import time
from pathlib import Path

import pytest
from workloads import MODES, PreparedGuest, Run, counts, summarize

from qemu_lite.devices.base import Device
from qemu_lite.loaders import multiboot

FILL_FLUSHES = 100
FILL_PAGES = 8192
PORT_COUNT = 1_000_000
PYTHON_PORT, UNCLAIMED_PORT = 0x300, 0x310
SECTORS = 8192
FAULTS = 5000


def run_raw_python_fill_hook(kernel: Path) -> Run:
    """The guest on a bare Unicorn engine: a Python identity fill hook, IN/OUT
    hooks that play COM1 (always ready) and isa-debug-exit."""
    from unicorn import (
        UC_ARCH_X86,
        UC_HOOK_INSN,
        UC_HOOK_TLB_FILL,
        UC_MODE_32,
        UC_PROT_ALL,
        UC_TLB_VIRTUAL,
        Uc,
    )
    from unicorn.x86_const import UC_X86_INS_IN, UC_X86_INS_OUT, UC_X86_REG_ESP

    image = kernel.read_bytes()
    mb = multiboot.parse(image)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 64 << 20)
    for seg in mb.segments:
        uc.mem_write(seg.address, seg.data)
    out = bytearray()
    fills = [0]

    def fill(uc: Uc, vaddr: int, access: int, entry, user_data) -> bool:
        fills[0] += 1
        entry.paddr = vaddr
        entry.perms = UC_PROT_ALL
        return True

    def port_in(uc: Uc, port: int, size: int, user_data) -> int:
        return 0x20 if port == 0x3FD else 0xFF

    def port_out(uc: Uc, port: int, size: int, value: int, user_data) -> None:
        if port == 0x3F8:
            out.append(value & 0xFF)
        elif port == 0xF4:
            uc.emu_stop()

    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    uc.hook_add(UC_HOOK_TLB_FILL, fill)
    uc.hook_add(UC_HOOK_INSN, port_in, None, 1, 0, UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, port_out, None, 1, 0, UC_X86_INS_OUT)
    uc.reg_write(UC_X86_REG_ESP, 0x90000)
    t0 = time.perf_counter()
    uc.emu_start(mb.entry, 0)
    wall = time.perf_counter() - t0
    return Run(out.decode(errors="replace"), wall, {"fills": fills[0]})


def _no_tlb_contexts(machine) -> None:
    machine.core.set_tlb_contexts(0)


@pytest.mark.parametrize("peer", ["cached", "cached_contexts", "native", "python_hook"])
def test_fill_cost_mmu(benchmark, guests, reference_output, peer: str):
    benchmark.group = "hotpath: TLB fill"
    kernel = guests("fill_loop", {"FLUSHES": FILL_FLUSHES, "NPAGES": FILL_PAGES})
    runs: list[Run] = []
    if peer == "python_hook":
        benchmark.pedantic(lambda: runs.append(run_raw_python_fill_hook(kernel)),
                           rounds=1, iterations=1)
    else:
        mmu = "native" if peer == "native" else "cached"
        setup = _no_tlb_contexts if peer == "cached" else None
        benchmark.pedantic(lambda g: runs.append(g.run()), rounds=1, iterations=1,
                           setup=lambda: ((PreparedGuest(kernel, mmu, setup=setup),), {}))
    run = runs[-1]
    expected = reference_output.setdefault("fill_loop", run.checksum)
    assert run.checksum == expected
    touches = FILL_FLUSHES * FILL_PAGES
    if peer == "python_hook":
        info = summarize({}, "native", run.wall_s)
        info.update(mmu="python_hook", fills=run.stats["fills"],
                    fills_per_s=round(run.stats["fills"] / run.wall_s))
    else:
        info = summarize(run.stats, "native" if peer == "native" else "cached", run.wall_s)
        info["mmu"] = peer
    fills = info["fills"]
    info.update(workload="fill_loop", checksum=run.checksum, page_touches=touches,
                ns_per_op=round(run.wall_s / touches * 1e9, 1),
                ns_per_fill=round(run.wall_s / fills * 1e9, 1) if fills else None)
    benchmark.extra_info.update(info)


class ConstantPort(Device):
    """A Python device that answers every read with 0x5A."""

    name = "bench-port"

    def io_read(self, offset: int, size: int) -> int:
        return 0x5A


@pytest.mark.parametrize("target", ["python_device", "unclaimed"])
def test_port_io(benchmark, guests, target: str):
    benchmark.group = "hotpath: port I/O round trip"
    port = PYTHON_PORT if target == "python_device" else UNCLAIMED_PORT
    kernel = guests("port_loop", {"COUNT": PORT_COUNT, "PORT": port})
    runs: list[Run] = []

    def setup():
        def claim(m) -> None:
            if target == "python_device":
                m.add_device(PYTHON_PORT, 1, ConstantPort())
        return (PreparedGuest(kernel, "cached", setup=claim),), {}

    benchmark.pedantic(lambda g: runs.append(g.run()), setup=setup, rounds=1, iterations=1)
    run = runs[-1]
    value = 0x5A if target == "python_device" else 0xFF
    assert run.checksum == f"{value * PORT_COUNT:08X}"
    benchmark.extra_info.update(target=target, checksum=run.checksum, operations=PORT_COUNT,
                                wall_s=round(run.wall_s, 6),
                                ns_per_op=round(run.wall_s / PORT_COUNT * 1e9, 1))


def disk_image(path: Path, sectors: int) -> bytes:
    """Deterministic pseudo-random contents."""
    data = random.Random(7).randbytes(sectors * 512)
    path.write_bytes(data)
    return data


def test_pio_sector_read(benchmark, guests, tmp_path):
    benchmark.group = "hotpath: PIO sector read"
    kernel = guests("ide_read", {"SECTORS": SECTORS})
    data = disk_image(tmp_path / "disk.img", SECTORS)
    expected = sum(array.array("I", data))
    runs: list[Run] = []

    def setup():
        return (PreparedGuest(kernel, "cached", disk=str(tmp_path / "disk.img")),), {}

    benchmark.pedantic(lambda g: runs.append(g.run()), setup=setup, rounds=1, iterations=1)
    run = runs[-1]
    assert run.checksum == f"{expected & 0xFFFFFFFF:08X}"
    benchmark.extra_info.update(checksum=run.checksum, sectors=SECTORS,
                                wall_s=round(run.wall_s, 6),
                                ns_per_op=round(run.wall_s / SECTORS * 1e9, 1),
                                mib_per_s=round(SECTORS * 512 / run.wall_s / 2**20, 2))


@pytest.mark.parametrize("mmu", MODES)
def test_pf_roundtrip_mmu(benchmark, guests, reference_output, mmu: str):
    benchmark.group = "hotpath: #PF round trip"
    kernel = guests("pf_loop", {"FAULTS": FAULTS})
    runs: list[Run] = []
    benchmark.pedantic(lambda g: runs.append(g.run()), rounds=2, iterations=1,
                       setup=lambda: ((PreparedGuest(kernel, mmu),), {}))
    first, run = runs[0], runs[-1]
    expected = reference_output.setdefault("pf_loop", run.checksum)
    assert first.checksum == run.checksum == expected
    assert counts(first.stats) == counts(run.stats)
    if mmu != "native":
        assert run.stats["faults"] == FAULTS
    info = summarize(run.stats, mmu, run.wall_s)
    info.update(workload="pf_loop", checksum=run.checksum, operations=FAULTS,
                ns_per_op=round(run.wall_s / FAULTS * 1e9, 1), deterministic=True)
    benchmark.extra_info.update(info)
