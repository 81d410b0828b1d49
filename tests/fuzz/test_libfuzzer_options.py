"""The libFuzzer RSS limit counts from the fuzzer's own peak at start, inherited or not."""

from __future__ import annotations

import subprocess
import sys

CHILD = ("from qemu_lite.fuzz.libfuzzer import rss_limit_flag; "
         "print(rss_limit_flag(100).split('=')[1])")


def test_rss_limit_is_above_a_peak_inherited_from_the_parent() -> None:
    # On Linux a child's ru_maxrss starts at its parent's RSS at fork: with a fixed
    # -rss_limit_mb a fuzzer started from a big test runner failed before its first input.
    held = b"\x01" * (600 << 20)
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          check=True)
    assert len(held) == 600 << 20
    assert int(done.stdout) >= 600 + 100, done.stdout
