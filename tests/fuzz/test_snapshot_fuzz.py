"""qemu_lite.fuzz: the bundled TLV guest under the snapshot harness, and its command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("nasm") is None,
                                reason="the TLV example guest is assembled with nasm")

CRASH = b"TLVN\x11" + b"A" * 17  # a 17-byte name: the planted off-by-one


@pytest.fixture(scope="module")
def harness():  # type: ignore[no-untyped-def]
    from qemu_lite.fuzz.harness import Harness, example_config

    h = Harness(example_config())
    yield h
    h.close()


def test_verdicts_come_from_the_guest(harness) -> None:  # type: ignore[no-untyped-def]
    assert harness.run(b"").verdict == "ok"
    assert harness.run(b"TLVN\x10" + b"A" * 16).verdict == "ok"  # 16 bytes fit
    crash = harness.run(CRASH)
    assert crash.crashed and "panic" in crash.verdict
    # the snapshot is restored for every input: the guard is whole again
    assert harness.run(b"TLVN\x05hello").verdict == "ok"
    assert harness.run(CRASH).crashed


def test_coverage_tells_inputs_apart(harness) -> None:  # type: ignore[no-untyped-def]
    empty = harness.run(b"").edges
    magic = harness.run(b"TLV").edges
    record = harness.run(b"TLVS\x03abc").edges
    assert len(empty) < len(magic) < len(record)
    assert harness.run(b"TLVS\x03abc").edges == record  # the same input, the same edges


def test_instruction_budget_ends_a_run_as_a_hang(harness) -> None:  # type: ignore[no-untyped-def]
    budget = harness.config.insn_budget
    long_record = b"TLVS\xff" + bytes(255)
    m = harness.machine
    harness.snapshots.restore(harness.snapshot)
    start = m.clock.now()  # guest time at the ready point
    harness.config.insn_budget = 100
    try:
        assert harness.run(long_record).verdict == "hang"
        # the engine stopped at the first block start past the budget (100 x 2 ns)
        assert 200 <= m.clock.now() - start < 200 + 2 * 512, m.clock.now() - start
    finally:
        harness.config.insn_budget = budget
    assert harness.run(long_record).verdict == "ok"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_lite.fuzz", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_reproducer_replays_through_the_cli(tmp_path: Path) -> None:
    crash, fine = tmp_path / "crash-1", tmp_path / "fine"
    crash.write_bytes(CRASH)
    fine.write_bytes(b"TLVV\x01\x02")
    done = _cli("replay", "--example", "tlv", str(fine), str(crash), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert f"{fine}: ok" in done.stdout and f"{crash}: crash: panic" in done.stdout
    assert _cli("replay", "--example", "tlv", str(fine), cwd=tmp_path).returncode == 0
    missing = _cli("replay", "--example", "tlv", str(tmp_path / "none"), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_libfuzzer_grows_a_corpus_from_guest_edges(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris not installed (pip install 'qemu-lite[fuzz]')")
    corpus = tmp_path / "corpus"
    done = _cli("run", "--example", "tlv", "--corpus", str(corpus), "--crashes",
                str(tmp_path / "crashes"), "--runs", "20000", "--seconds", "300", "--seed", "1",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done 20000 runs" in done.stderr
    # the magic is compared a byte at a time: its first byte found is a new edge, kept
    assert any(f.read_bytes().startswith(b"T") for f in corpus.iterdir())


def test_minimizer_keeps_the_crash(tmp_path: Path) -> None:
    big = tmp_path / "crash-big"
    big.write_bytes(b"TLVS\x04abcd" + b"S\x02xy" * 10 + CRASH[3:] + b"junk" * 20)
    out = tmp_path / "min"
    done = _cli("minimize", "--example", "tlv", str(big), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    small = out.read_bytes()
    assert len(small) < len(big.read_bytes())
    assert _cli("replay", "--example", "tlv", str(out), cwd=tmp_path).returncode == 1
    fine = tmp_path / "fine"
    fine.write_bytes(b"TLV")
    refused = _cli("minimize", "--example", "tlv", str(fine), "--out", str(out), cwd=tmp_path)
    assert refused.returncode == 2 and "does not crash" in refused.stderr
