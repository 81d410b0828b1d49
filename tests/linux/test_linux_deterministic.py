"""Debian's kernel under --deterministic repeats byte for byte; under real time its TSC is ours.

Every input the kernel reads is guest-time driven or fixed: the virtual TSC
(also KASLR's seed), the PIT, the RTC (2000-01-01), CPUID without RDRAND.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from images import INIT, grub_image, initramfs, kernel

from qemu_lite import Machine
from qemu_lite.clock import TSC_KHZ
from qemu_lite.loaders import linux

APPEND = "console=ttyS0 panic=-1"

# mmu_stats counters that depend on how often Unicorn refills its TLB, which it
# resizes by wall-clock windows (ENGINE_FACTS.md fact 18): they may differ between two
# identical guest executions on the stock engine.  Everything else must match.
TLB_SIZE_DEPENDENT = {
    "fills", "fills_read", "fills_write", "fills_fetch", "guest_walks", "shadow_hits",
    "shadow_misses", "sp_found", "wp_traps", "alias_reads", "alias_writes", "alias_writes_untracked",
    "shadow_hits_l1", "shadow_misses_l1", "shadow_hits_l2", "shadow_misses_l2",
    # a flush when a frame gains a shadow page or code, if a writable/fast-store
    # entry was filled since the last flush: which depends on refills too
    "tlb_flushes_wp", "tlb_flushes_code",
}


@pytest.fixture(scope="module")
def initrd(tmp_path_factory) -> Path:
    return initramfs(tmp_path_factory.mktemp("linux") / "initrd.cpio")


# /init reads a line from the console (fed by --serial-input) before powering off.
READER_INIT = INIT.replace("busybox uname -s -r\n",
                           'busybox uname -s -r\nread line\nbusybox echo "got: $line"\n')


@pytest.fixture(scope="module")
def reader_initrd(tmp_path_factory) -> Path:
    return initramfs(tmp_path_factory.mktemp("linux") / "reader.cpio", READER_INIT)


def _boot_cli(tmp: Path, name: str, *args: str) -> tuple[bytes, dict[str, int], str]:
    serial = tmp / f"{name}.txt"
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "512M", "--timeout", "300",
                           "--deterministic", "--mmu-stats", "--serial", f"file:{serial}", *args],
                          capture_output=True, text=True, timeout=400, cwd=tempfile.gettempdir())
    assert proc.returncode == 16, proc.stderr[-3000:]  # powered off through ACPI
    stats = {}
    for line in proc.stderr.splitlines():
        if line.startswith("  "):
            key, value = line.split()
            stats[key] = int(value)
    rest = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("  "))
    return serial.read_bytes(), stats, rest


def _check_repeats(tmp: Path, *args: str) -> str:
    out1, stats1, err1 = _boot_cli(tmp, "first", *args)
    out2, stats2, err2 = _boot_cli(tmp, "second", *args)
    text = out1.decode(errors="replace")
    assert "qemu_lite init: userspace reached" in text, text[-3000:]
    assert "reboot: System halted" in text or "reboot: Power down" in text
    assert "tsc: Detected 2000.000 MHz processor" in text
    assert out1 == out2  # including every "[    1.234567]" timestamp
    assert err1 == err2  # the final RIP too: the same KASLR offset
    assert stats1.keys() == stats2.keys() and stats1["fills"] > 0
    same = {k: v for k, v in stats1.items() if k not in TLB_SIZE_DEPENDENT}
    assert same == {k: stats2[k] for k in same}
    return text


def test_deterministic_linux_boot_repeats_byte_for_byte_through_the_cli(reader_initrd, tmp_path):
    feed = tmp_path / "input.txt"
    feed.write_bytes(b"hello replay\n")
    text = _check_repeats(tmp_path, "--kernel", kernel(), "--initrd", str(reader_initrd),
                          "--append", APPEND, "--serial-input", str(feed))
    assert "got: hello replay" in text


def test_deterministic_grub_disk_boot_repeats_byte_for_byte(tmp_path):
    image = grub_image(tmp_path / "grub")
    text = _check_repeats(tmp_path, "--snapshot", str(image))
    assert "Welcome to GRUB!" in text


# /init waits (up to 10 s) for the refined TSC to become the clocksource before powering
# off: Linux refines the calibration a second after it registers tsc-early, and a boot
# that reaches userspace sooner (a quiet host, INT n / SYSCALL in C) used to power off
# before that, so whether the switch was seen depended on the host's speed.
TSC_WAIT_INIT = INIT.replace("busybox uname -s -r\n", """busybox uname -s -r
for i in 1 2 3 4 5 6 7 8 9 10; do
  cs=$(busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
  busybox test "$cs" = tsc && break
  busybox sleep 1
done
busybox echo "current clocksource: $cs"
""")


def test_real_time_linux_takes_the_advertised_tsc_rate(tmp_path):
    initrd = initramfs(tmp_path / "initrd.cpio", TSC_WAIT_INIT)
    out = bytearray()
    with Machine(memory="512M") as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel(), APPEND, initrd)
        result = m.run(timeout=300)
        tsc_reads = m.tsc.reads
    text = out.decode(errors="replace")
    assert result.reason == "powered-off", text[-3000:]
    assert f"tsc: Detected {TSC_KHZ // 1000}.000 MHz processor" in text
    assert tsc_reads > 1000  # the kernel's clock really runs on our RDTSC
    # Invariant TSC + TSC_ADJUST in CPUID: Linux does not check the TSC against
    # jiffies, which lag on a loaded host ('skew is too large' in 2 of 3 boots
    # here before TSC_ADJUST was advertised).
    assert "Switched to clocksource tsc\r" in text
    assert "current clocksource: tsc\r" in text
    assert "unstable" not in text and "watchdog check" not in text, text
