"""qemu_lite.fuzz.campaign: libFuzzer workers as Ray actors sharing one corpus.

One campaign on the bundled TLV guest, two workers on the local Ray cluster, seeded with
an input one byte short of the planted bug.  It checks what the workers did: the crash
one of them found reaches the campaign's crash directory and replays as the guest's
panic; inputs found by one worker were written into the other's corpus; a worker whose
actor process is killed comes back (Ray restarts it) and is given the whole corpus.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="libFuzzer comes from atheris (pip install '.[fuzz]')")
pytest.importorskip("ray", reason="campaigns run on Ray (pip install '.[scale]')")
pytestmark = pytest.mark.skipif(shutil.which("nasm") is None,
                                reason="the TLV example guest is assembled with nasm")

NEAR_MISS = b"TLVN\x11" + b"A" * 16  # says 17 bytes, holds 16: one insertion from the bug


def test_campaign_shares_corpus_survives_a_killed_worker_and_finds_the_bug(tmp_path: Path
                                                                           ) -> None:
    import ray

    from qemu_lite.fuzz.campaign import Campaign

    out = tmp_path / "campaign"
    killed: dict[str, int] = {}

    def on_round(c: Campaign) -> bool:
        if c.rounds == 3:
            pid = ray.get(c.actors[1].pid.remote())
            os.kill(pid, signal.SIGKILL)  # the actor process dies as a crashed host would
            killed["round"] = c.rounds
        restarted = c.summaries[1].restarts > 0
        shared = all(s.received > 0 for s in c.summaries)
        return bool(c.crashes) and restarted and shared and c.rounds > killed["round"] + 1

    campaign = Campaign(["--example", "tlv"], 2, out, seed=5, seed_inputs=[NEAR_MISS])
    try:
        summary = campaign.run(240, sync_every=2.0, on_round=on_round)
    finally:
        campaign.close()

    assert summary.crashes, summary
    assert summary.workers[1].restarts >= 1
    assert all(w.received > 0 for w in summary.workers)  # each got the other's finds
    assert summary.executions > 0 and summary.corpus > 1
    # The restarted worker's corpus holds the whole shared corpus again.
    worker1 = {p.name for p in (out / "workers" / "worker-1" / "corpus").iterdir()}
    found_by_0 = summary.workers[0].found
    assert found_by_0 and len(worker1) >= found_by_0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["crashes"] == summary.crashes

    crash = out / "crashes" / summary.crashes[0]
    proc = subprocess.run([sys.executable, "-m", "qemu_lite.fuzz", "replay", "--example", "tlv",
                           str(crash)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "crash: panic" in proc.stdout


def test_campaign_cli_refuses_bad_options(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "qemu_lite.fuzz", "campaign", "--workers", "0",
                           "--example", "tlv"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "--workers must be at least 1" in proc.stderr
