"""Device fuzzing: CI's bounded run, the invariants catching broken devices, the board target."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any

import pytest

from qemu_lite.devfuzz.__main__ import run_random
from qemu_lite.devfuzz.harness import BURST, Finding, Op, Target, Window, decode, encode, execute
from qemu_lite.devfuzz.targets import TARGETS

SECONDS_PER_TARGET = 1.5  # with the atheris run in .ci/run, about a minute in all


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_bounded_random_run(name: str, tmp_path: Any) -> None:
    """Seeded random register sequences against every device class; a finding fails
    the test and names the reproducer it saved."""
    done = run_random(TARGETS[name], runs=1_000_000, seconds=SECONDS_PER_TARGET, seed=19,
                      max_len=1024, crashes=tmp_path)
    assert done > 10


def test_encode_is_what_decode_reads() -> None:
    target = TARGETS["e1000"]()
    ops = [Op("write", 0, 0x2818, 4, 0x10), Op("read", 1, 4, 4), Op("burst"),
           Op("event", 2, value=7, payload=b"\x01\x02"), Op("write", 2, 0x10, 2, 0xBEEF)]
    assert list(decode(target, encode(target, ops))) == ops


# -- the invariants fail where they should: deliberately broken devices ----------------


class _Broken:
    """A register file with one bug chosen by ``bug``."""

    def __init__(self, bug: str, memory: Any) -> None:
        self.bug = bug
        self.memory = memory
        self.reg = 0
        self.log: list[int] = []

    def io_read(self, offset: int, size: int) -> int:
        if self.bug == "wide-read":
            return 0x1FF
        return self.reg & ((1 << (8 * size)) - 1)

    def io_write(self, offset: int, size: int, value: int) -> None:
        if self.bug == "raises" and value == 0x66:
            raise IndexError("register 0x66")
        if self.bug == "leak":
            self.log.append(value)
        if self.bug == "dma":
            self.memory.read(value - 0x100, 16)
        self.reg = value

    def reset(self) -> None:
        if self.bug != "leaky-reset":
            self.reg = 0

    def save_state(self) -> dict[str, int]:
        return {"reg": 0 if self.bug == "forgets" else self.reg}

    def load_state(self, state: dict[str, int]) -> None:
        self.reg = state["reg"]


def _broken_target(bug: str) -> type[Target]:
    class BrokenTarget(Target):
        name = bug
        ram_size = 4096

        def build(self) -> None:
            device = _Broken(bug, self.memory)
            device.__class__.__module__ = "qemu_lite.devices.fake"  # walked by footprint
            self.windows = [Window("reg", device, 4)]
            self.stateful = self.roots = [device]

    return BrokenTarget


@pytest.mark.parametrize("bug, ops, message", [
    ("wide-read", [Op("read", 0, 0, 1)], "returned 511"),
    ("raises", [Op("write", 0, 0, 1, 0x66)], "raised IndexError"),
    ("leak", [Op("write", 0, 0, 1, 1)] + [Op("burst")] * 40, "footprint"),
    ("forgets", [Op("write", 0, 0, 1, 5), Op("read", 0, 0, 1)], "restored device differs"),
    ("dma", [Op("write", 0, 0, 1, 0x20)], "out of any range"),
])
def test_invariant_catches(bug: str, ops: list[Op], message: str) -> None:
    target = _broken_target(bug)
    with pytest.raises(Finding, match=message):
        execute(target, encode(target(), ops))


def test_healthy_register_file_passes() -> None:
    target = _broken_target("none")
    result = execute(target, encode(target(), [Op("write", 0, 0, 4, 0x1234), Op("burst"),
                                               Op("read", 0, 1, 2)]))
    assert result.ops == 3


# -- the board through a guest ---------------------------------------------------------


@pytest.mark.skipif(shutil.which("nasm") is None, reason="the board target's guest needs nasm")
def test_board_guest_performs_the_accesses() -> None:
    """The accesses reach the devices through the guest's IN/OUT and MMIO: the POST code
    port and COM1's scratch register hold what the guest wrote, a burst included."""
    from qemu_lite.devfuzz.board import PORT_WINDOWS, BoardTarget

    shape = BoardTarget()
    index = {name: i for i, (name, _b, _n) in enumerate(PORT_WINDOWS)}
    ops = [Op("write", index["post"], 0, 1, 0x5A), Op("write", index["com1"], 7, 1, 0xA5),
           Op("read", index["com1"], 5, 1), Op("burst")]
    result = BoardTarget.run_input(encode(shape, ops))
    assert result.notes == ["exit"]
    assert result.ops == 3 + BURST
    board = BoardTarget._machine.board
    assert board.post.last == 0x5A
    assert board.com1.io_read(7, 1) == 0xA5
    # a reset requested by the guest is a guest verdict, and the next input runs normally
    reset = [Op("write", index["port92"], 0, 1, 0x01)]
    assert BoardTarget.run_input(encode(shape, reset)).notes == ["reset"]
    assert BoardTarget.run_input(b"").notes == ["exit"]


@pytest.mark.skipif(shutil.which("nasm") is None, reason="the board target's guest needs nasm")
def test_board_bounded_random_run(tmp_path: Any) -> None:
    from qemu_lite.devfuzz.board import BoardTarget

    assert run_random(BoardTarget, runs=100_000, seconds=4, seed=19, max_len=1024,
                      crashes=tmp_path) > 10


# -- the command line ------------------------------------------------------------------


def _cli(*args: str, cwd: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_lite.devfuzz", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_replay_reports_findings_and_bad_files(tmp_path: Any) -> None:
    target = _broken_target("wide-read")
    good = tmp_path / "good"
    good.write_bytes(encode(TARGETS["i8042"](), [Op("write", 1, 0, 1, 0x20), Op("read", 0, 0, 1)]))
    ok = _cli("replay", "i8042", str(good), cwd=tmp_path)
    assert ok.returncode == 0 and ": ok (2 ops" in ok.stdout
    missing = _cli("replay", "i8042", str(tmp_path / "nothing"), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert target is not None
    unknown = _cli("replay", "no-such-device", str(good), cwd=tmp_path)
    assert unknown.returncode != 0 and "no target 'no-such-device'" in unknown.stderr


def test_cli_random_run(tmp_path: Any) -> None:
    done = _cli("run", "port92", "--engine", "random", "--runs", "200", "--seconds", "20",
                "--crashes", str(tmp_path / "crashes"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ran 200 inputs" in done.stdout


def test_cli_atheris_run(tmp_path: Any) -> None:
    pytest.importorskip("atheris", reason="atheris not installed (pip install 'qemu-lite[fuzz]')")
    done = _cli("run", "devices", "--runs", "1000", "--seconds", "60", "--corpus",
                str(tmp_path / "corpus"), "--crashes", str(tmp_path / "crashes"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done 1000 runs" in done.stderr
    assert any((tmp_path / "corpus").iterdir())  # coverage grew a corpus from nothing


def test_reused_target_whose_reset_leaks_state_is_a_finding() -> None:
    """At a reusing pace a reset target is compared with a fresh one: a reset that
    forgets a register is reported, naming the input that left it."""
    from qemu_lite.devfuzz.harness import Pace

    class Leaky(_broken_target("leaky-reset")):  # type: ignore[misc, valid-type]
        reusable = True

    pace = Pace(round_trip_every=4, reset_check_every=1)
    data = encode(Leaky(), [Op("write", 0, 0, 1, 7)])
    execute(Leaky, data, pace)  # builds the pair
    with pytest.raises(Finding, match="reset.. leaves state a fresh device lacks"):
        execute(Leaky, data, pace)  # its reset() keeps reg = 7
