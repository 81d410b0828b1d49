"""Whatever a guest does, the host process survives and the run ends cleanly."""

from __future__ import annotations

import random

import pytest

from qemu_lite import GuestError, Machine
from qemu_lite.devices.block import BlockImage


@pytest.mark.parametrize("seed", range(12))
def test_random_boot_sectors_never_crash_the_host(seed):
    rng = random.Random(seed)
    image = BlockImage.from_bytes(rng.randbytes(510) + b"\x55\xaa" + rng.randbytes(512 * 15))
    mmu = ("cached", "naive", "native")[seed % 3]
    try:
        with Machine(image, memory="8M", mmu=mmu) as m:
            result = m.run(timeout=0.25)
        assert result.reason in ("timeout", "halted", "exit", "reset", "triple-fault",
                                 "no-boot", "no-boot-after-reset")
    except GuestError as exc:  # e.g. a write to the BIOS ROM: a clear, catchable error
        assert "guest" in str(exc) or "fault" in str(exc)
