"""Debian's kernel saved in the middle of its boot continues exactly after a restore,
in this process and in a new one (``--deterministic``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from images import initramfs, kernel

from qemu_lite import Machine
from qemu_lite.loaders import linux

APPEND = "console=ttyS0 panic=-1"
MID_BOOT_NS = 7_000_000_000  # guest time: kernel init (the boot ends near 8.3 s)

RESTORE_SCRIPT = r"""
import sys
from qemu_lite import Machine
out = bytearray()
with Machine(memory="512M", deterministic=True, vga="none") as m:
    m.board.com1.add_output_listener(out.extend)
    m.restore_state(sys.argv[1])
    r = m.run(timeout=900)
sys.stdout.buffer.write(out)
sys.stderr.write(f"\nresult {r.reason}\n")
"""


@pytest.fixture(scope="module")
def initrd(tmp_path_factory) -> Path:
    return initramfs(tmp_path_factory.mktemp("linux-state") / "initrd.cpio")


def test_debian_kernel_saved_mid_boot_continues_exactly(initrd, tmp_path):
    state = tmp_path / "linux.qlstate"
    out = bytearray()
    with Machine(memory="512M", deterministic=True, vga="none") as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel(), APPEND, initrd)
        # Save once the kernel has started printing: step guest time until it has (how
        # much guest time that takes depends on the engine's clock, not on this test).
        until = MID_BOOT_NS
        while b"Linux version " not in out:
            assert m.run(timeout=900, guest_ns=until).reason == "guest-time"
            until += MID_BOOT_NS // 4
        head = bytes(out)
        t0 = time.monotonic()
        m.save_state(state)
        save_s = time.monotonic() - t0
        result = m.run(timeout=900)
    whole = bytes(out)
    assert result.reason == "powered-off"
    assert b"Linux version " in head and b"userspace reached" not in head
    assert b"qemu_lite init: userspace reached" in whole
    print(f"\nLinux state: {state.stat().st_size} bytes, saved in {save_s:.2f} s")

    proc = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, str(state)],
                          capture_output=True, timeout=1200, cwd=tmp_path)
    assert proc.stderr.decode().strip().endswith("result powered-off"), proc.stderr.decode()[-2000:]
    assert head + proc.stdout == whole

    tail = bytearray()
    with Machine(memory="512M", deterministic=True, vga="none") as m:
        m.board.com1.add_output_listener(tail.extend)
        t0 = time.monotonic()
        m.restore_state(state)
        print(f"Linux state restored in {time.monotonic() - t0:.2f} s")
        snap = m.snapshot()
        assert m.run(timeout=900).reason == "powered-off"
        assert head + tail == whole
        # An in-memory snapshot of the same moment replays the rest once more.
        tail.clear()
        m.restore(snap)
        assert m.run(timeout=900).reason == "powered-off"
    assert head + tail == whole


def test_debian_kernel_on_two_cpus_saved_mid_boot_continues_exactly(initrd, tmp_path):
    """-smp 2 under --deterministic: the vCPUs' turns are guest time, so a state saved
    once both CPUs run (the AP's context parked or on the engine) replays the rest of
    the boot byte for byte in a new machine."""
    state = tmp_path / "linux-smp.qlstate"
    out = bytearray()
    with Machine(memory="512M", deterministic=True, vga="none", smp=2) as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel(), APPEND, initrd)
        until = MID_BOOT_NS
        while b"Brought up 1 node, 2 CPUs" not in out:
            assert m.run(timeout=900, guest_ns=until).reason == "guest-time"
            until += MID_BOOT_NS // 8
        head = bytes(out)
        m.save_state(state)
        assert m.run(timeout=900).reason == "powered-off"
    whole = bytes(out)
    assert b"qemu_lite init: userspace reached" in whole and b"userspace reached" not in head

    tail = bytearray()
    with Machine(memory="512M", deterministic=True, vga="none", smp=2) as m:
        m.board.com1.add_output_listener(tail.extend)
        m.restore_state(state)
        assert "wait-for-sipi" not in m.vcpu_states()  # saved with both CPUs up
        assert m.run(timeout=900).reason == "powered-off"
    assert head + tail == whole
