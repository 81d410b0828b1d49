"""-smp machines saved mid-run: snapshots and state files hold every vCPU (parked
engine contexts, halted, waiting for SIPI, APIC_BASE), every local APIC and the
scheduler, so a restored two-CPU guest prints what the uninterrupted run prints;
and the per-vCPU counters account for every slice (issue 12 under -smp)."""

from __future__ import annotations

import pytest
import smpguest

from qemu_lite import Machine
from qemu_lite.devices.base import StateError
from qemu_lite.loaders import multiboot


def _machine(kernel, out: bytearray, cpus: int = 2) -> Machine:
    m = Machine(memory="16M", serial="none", vga="none", smp=cpus)
    m.board.com1.add_output_listener(out.extend)
    multiboot.load(m, kernel)
    return m


@pytest.fixture
def kernel(assemble, tmp_path):
    path = tmp_path / "pingpong.bin"
    path.write_bytes(assemble(smpguest.source()))
    return path


REGS = ("eip", "esp", "eax", "ebx", "ecx", "edi", "eflags", "cr0", "cs")


def _vcpu_view(m: Machine) -> list[tuple[object, ...]]:
    """Each vCPU's run state and registers, read through VcpuSet.viewing."""
    assert m.vcpus is not None
    view = []
    for v in m.vcpus.vcpus:
        with m.vcpus.viewing(v.index):
            view.append((v.state, m.cpu.halted, *(m.reg(r) for r in REGS)))
    return view


def test_smp_guest_saved_mid_run_continues_with_the_same_output(kernel, tmp_path):
    expected = smpguest.expected()
    out = bytearray()
    with _machine(kernel, out) as m:
        # Stopped every 2 ms of guest time: wherever each vCPU then is (running its
        # loop or handler, halted, parked with a pending IPI).
        points = []
        while True:
            result = m.run(timeout=120, guest_ns=m.clock.now() + 2_000_000)
            if result.reason != "guest-time":
                break
            state = tmp_path / f"at{len(points)}.qlstate"
            m.save_state(state)
            points.append((bytes(out), m.snapshot(), state, _vcpu_view(m), m.vcpus.current))
        assert result.reason == "exit", result
        assert out.decode() == expected  # stops and saves do not perturb the run
        assert len(points) >= 3
        assert any(current == 1 for *_, current in points)  # some with the AP on the engine
        assert any(current == 0 for *_, current in points)

        # In this process: each snapshot restored, every vCPU as it was, run to the end.
        for head, token, _, view, current in reversed(points):
            out[:] = head
            m.restore(token)
            assert m.vcpus.current == current
            assert _vcpu_view(m) == view
            result = m.run(timeout=120)
            assert result.reason == "exit" and result.exit_status == 1, result  # (0 << 1) | 1
            assert out.decode() == expected, (head, out)

    # Into a new machine, from the state files.
    for head, _, state, view, _ in points[::2]:
        out2 = bytearray(head)
        with _machine(kernel, out2) as fresh:
            fresh.restore_state(state)
            assert _vcpu_view(fresh) == view
            assert fresh.run(timeout=120).reason == "exit"
        assert out2.decode() == expected


def test_state_of_a_two_cpu_machine_is_refused_by_one_cpu(kernel, tmp_path):
    out = bytearray()
    state = tmp_path / "two.qlstate"
    with _machine(kernel, out) as m:
        assert m.run(timeout=120, guest_ns=50_000_000).reason in ("guest-time", "exit")
        m.save_state(state)
        token = m.snapshot()
    with _machine(kernel, bytearray(), cpus=1) as one:
        with pytest.raises(StateError, match=r"CPUs \(-smp\) 2 there, 1 here"):
            one.restore_state(state)
        with pytest.raises((StateError, ValueError)):
            one.restore(token)


def test_vcpu_stats_account_for_every_slice(kernel):
    out = bytearray()
    with _machine(kernel, out) as m:
        assert m.run(timeout=120).reason == "exit"
        stats = m.vcpu_stats()
    assert out.decode() == smpguest.expected()
    for cpu in stats:
        exits = cpu["exits"]
        assert isinstance(exits, dict)
        # Every slice ends for a reason that is counted (HLT included).
        assert sum(exits.values()) >= cpu["slices"] > 0, cpu
    # Each request IPI to the AP ends the BSP's slice through the run loop's own exit.
    assert stats[0]["exits"].get("kick", 0) >= smpguest.LINES, stats[0]
