"""libFuzzer options both fuzzers (``qemu_lite.fuzz`` and ``qemu_lite.devfuzz``) share."""

from __future__ import annotations

import resource


def rss_limit_flag(headroom_mb: int) -> str:
    """``-rss_limit_mb`` for ``headroom_mb`` of growth above this process's peak so far.

    libFuzzer compares the limit with ``ru_maxrss``, the peak RSS, and on Linux a child
    started by ``fork`` + ``exec`` inherits its parent's peak: a fuzzer launched from a big
    process (a test runner, a notebook) would report out-of-memory before its first input.
    Counting from the peak at start keeps the check about what the inputs allocate.
    """
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux
    return f"-rss_limit_mb={peak_mb + headroom_mb}"
