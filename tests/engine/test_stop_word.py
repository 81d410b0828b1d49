"""Why a slice ended is one word, ``Core.take_stop()``'s flags: the vCPU hooks' own exits
(a host-time deadline, a poke from another thread) arrive there as STOP_KICK, on the
patched engine (its exits) and on the stock one (the block hook) alike, and a slice
that HLT ended carries no flag."""

from __future__ import annotations

import threading
import time

import pytest
from guestlib import protected_mode_guest

from mmu_core._core import STOP_KICK
from qemu_lite import Machine
from qemu_lite._vcpu_hooks import VcpuHooks
from qemu_lite.loaders import multiboot

SPIN = r"""
    cli
.spin:
    jmp .spin
"""

HALT = r"""
    cli
    hlt
"""


def _machine(assemble, tmp_path, body: str) -> Machine:
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(body)))
    m = Machine(memory="16M", vga="none")
    multiboot.load(m, kernel)
    m.core.take_stop()
    return m


def _slice(m: Machine, host_deadline_ns: int = 0) -> int:
    m.hooks.begin_slice(host_deadline_ns)
    try:
        assert m.cpu.run_slice() is None
    finally:
        m.hooks.end_slice()
    flags, _ = m.core.take_stop()
    return flags


@pytest.mark.parametrize("block_hook", [False, True], ids=["engine", "block-hook"])
def test_the_hooks_exits_arrive_in_the_cores_stop_word(assemble, tmp_path, block_hook):
    m = _machine(assemble, tmp_path, SPIN)
    try:
        if block_hook:  # the stock engine's path, forced on whichever engine this is
            m.hooks = VcpuHooks(m.uc, block_hook=True)
            m.hooks.report_stops_to(m.core, STOP_KICK)
        elif not m.hooks.engine_exits:
            pytest.skip("the engine has no exits of its own (patch b): the block-hook case "
                        "covers it")
        # A host-time deadline ends a guest spinning with interrupts off.
        assert _slice(m, time.monotonic_ns() + 20_000_000) == STOP_KICK
        # A poke from another thread ends it too.
        timer = threading.Timer(0.05, m.hooks.poke)
        timer.start()
        assert _slice(m) == STOP_KICK
        timer.join()
        # A stop reported but not taken is dropped by end_slice(report=False).
        m.hooks.poke()
        m.hooks.begin_slice(0)
        m.cpu.run_slice()
        m.hooks.end_slice()
        m.hooks.end_slice(report=False)
        assert m.core.take_stop()[0] == 0
    finally:
        m.close()


def test_a_slice_hlt_ended_has_no_flag(assemble, tmp_path):
    m = _machine(assemble, tmp_path, HALT)
    try:
        assert _slice(m, time.monotonic_ns() + 5_000_000_000) == 0
        assert m.runloop._stopped_on_hlt()
    finally:
        m.close()
