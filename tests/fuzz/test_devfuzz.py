"""Device fuzzing: CI's bounded run, the invariants catching broken devices, the board target."""

from __future__ import annotations

import json
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

    built: list[_Broken] = []  # every one made, in order

    def __init__(self, bug: str, memory: Any) -> None:
        _Broken.built.append(self)
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


def test_burst_pace_runs_bursts_on_every_nth_input_only() -> None:
    """``Pace(burst_every=2)``: the 1st, 3rd, ... inputs run their bursts, the others the
    same accesses without them; a finding on an input run without its bursts carries the
    input that ran, which shows the same finding at the full pace."""
    from qemu_lite.devfuzz.harness import Pace, without_bursts

    target = _broken_target("leak")
    pace = Pace(round_trip_every=1000, burst_every=2)  # a round trip on the 1st input only
    data = encode(target(), [Op("write", 0, 0, 1, 1), Op("burst"), Op("write", 0, 0, 1, 2)])
    without_bursts(target, data)  # builds the class's shape before the loop counts devices
    logs = []
    for _ in range(4):
        before = len(_Broken.built)
        result = execute(target, data, pace)
        logs.append(len(_Broken.built[before].log))  # the input's device, not its twin
        assert result.ops == (3 if len(logs) % 2 else 2)
    assert logs == [2 + BURST + 2, 2, 2 + BURST, 2]  # (+2: the round trip's probe)

    raises = _broken_target("raises")
    data = encode(raises(), [Op("burst"), Op("write", 0, 0, 1, 0x66)])
    assert without_bursts(raises, data) == encode(raises(), [Op("write", 0, 0, 1, 0x66)])
    with pytest.raises(Finding) as first:
        execute(raises, data, pace)
    assert first.value.reproducer is None  # it ran as given
    with pytest.raises(Finding) as second:
        execute(raises, data, pace)
    assert second.value.reproducer == without_bursts(raises, data)
    with pytest.raises(Finding, match="raised IndexError"):
        execute(raises, second.value.reproducer)


# -- the pace and the input cap on the command line ------------------------------------


def _recording(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fresh pools, and a record of the pace each input ran at and of the checks made."""
    from qemu_lite.devfuzz import harness

    seen: dict[str, Any] = {"paces": [], "round_trips": 0, "reset_checks": 0}
    execute_, round_trip, check_reset = (harness.execute, harness._check_round_trip,
                                         harness._check_reset)

    def recording_execute(target_cls: Any, data: bytes, pace: Any = harness.FULL) -> Any:
        seen["paces"].append(pace)
        return execute_(target_cls, data, pace)

    def recording_round_trip(*args: Any) -> None:
        seen["round_trips"] += 1
        round_trip(*args)

    def recording_check_reset(*args: Any) -> None:
        seen["reset_checks"] += 1
        check_reset(*args)

    monkeypatch.setattr(harness, "_pools", {})
    monkeypatch.setattr(harness, "execute", recording_execute)
    monkeypatch.setattr(harness, "_check_round_trip", recording_round_trip)
    monkeypatch.setattr(harness, "_check_reset", recording_check_reset)
    return seen


def test_cli_pace_flags_reach_the_harness(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``run --round-trip-every 4 --reset-check-every 8 --burst-every 2``: every input runs
    at that pace, one device pair is reused through reset(), the round trip is made on
    every 4th input;
    the process's pace is the full one again afterwards."""
    from qemu_lite.devfuzz import harness
    from qemu_lite.devfuzz.__main__ import main

    seen = _recording(monkeypatch)
    target = TARGETS["port92"]
    assert main(["run", "port92", "--engine", "random", "--runs", "40", "--seconds", "600",
                 "--round-trip-every", "4", "--reset-check-every", "8", "--burst-every", "2",
                 "--crashes", str(tmp_path)]) == 0
    assert "ran 40 inputs" in capsys.readouterr().out
    assert seen["paces"] == [harness.Pace(4, 8, 2)] * 40
    pool = harness._pools[target]
    assert pool.inputs == 40 and pool.target is not None and pool.twin is not None
    assert pool.resets["target"] == 39  # built once, reset for each later input
    assert seen["round_trips"] == 10
    assert seen["reset_checks"] >= 5  # the target's 1st, 9th, ... reset at least
    assert harness.PACE is harness.FULL

    # The defaults are the full pace: fresh devices and a round trip for every input.
    seen = _recording(monkeypatch)
    assert main(["run", "port92", "--engine", "random", "--runs", "40", "--seconds", "600",
                 "--crashes", str(tmp_path)]) == 0
    assert seen["paces"] == [harness.FULL] * 40
    assert harness._pools[target].target is None
    assert seen["round_trips"] == 40 and seen["reset_checks"] == 0


def test_cli_replay_checks_at_the_full_pace(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Any) -> None:
    from qemu_lite.devfuzz import harness
    from qemu_lite.devfuzz.__main__ import main

    seen = _recording(monkeypatch)
    monkeypatch.setattr(harness, "PACE", harness.Pace(16, 64))  # as a run would leave it
    good = tmp_path / "good"
    good.write_bytes(encode(TARGETS["port92"](), [Op("write", 0, 0, 1, 2), Op("read", 0, 0, 1)]))
    assert main(["replay", "port92", str(good), str(good)]) == 0
    assert seen["paces"] == [harness.FULL] * 2 and seen["round_trips"] == 2


@pytest.mark.parametrize("args, message", [
    (["--round-trip-every", "0"], "--round-trip-every: must be at least 1"),
    (["--round-trip-every", "-3"], "--round-trip-every: must be at least 1"),
    (["--reset-check-every", "-1"], "--reset-check-every: must be at least 0"),
    (["--reset-check-every", "often"], "--reset-check-every: not an integer"),
    (["--burst-every", "0"], "--burst-every: must be at least 1"),
    (["--max-len", "0"], "--max-len: must be at least 1"),
    (["--runs", "-1"], "--runs: must be at least 0"),
    (["--jobs", "0"], "--jobs: must be at least 1"),  # (campaign only: 0 waited for ever)
])
@pytest.mark.parametrize("command", ["run", "campaign"])
def test_cli_refuses_bad_pace_and_runs(command: str, args: list[str], message: str,
                                       tmp_path: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from qemu_lite.devfuzz.__main__ import main

    if command == "run" and args[0] == "--jobs":
        message = "unrecognized arguments: --jobs"
    where = (["port92", "--crashes", str(tmp_path)] if command == "run"
             else ["--targets", "port92", "--out", str(tmp_path)])  # if it ran after all
    with pytest.raises(SystemExit) as exit_:
        main([command, *where, "--engine", "random", "--seconds", "5", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_runs_zero_runs_until_the_deadline(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``--runs 0`` is no cap: the random engine stops at ``--seconds`` only.  The clock
    is a fake that advances one second per reading, so the deadline comes after exactly
    500 inputs (a cap of 200 stops it first)."""
    import types

    from qemu_lite.devfuzz import __main__ as cli

    def fake_clock() -> types.SimpleNamespace:
        ticks = iter(range(10**9))
        return types.SimpleNamespace(monotonic=lambda: float(next(ticks)))

    common = ["run", "port92", "--engine", "random", "--seconds", "500.5",
              "--crashes", str(tmp_path)]
    monkeypatch.setattr(cli, "time", fake_clock())
    assert cli.main([*common, "--runs", "0"]) == 0
    assert "ran 500 inputs" in capsys.readouterr().out
    monkeypatch.setattr(cli, "time", fake_clock())
    assert cli.main([*common, "--runs", "200"]) == 0
    assert "ran 200 inputs" in capsys.readouterr().out


def test_runs_zero_is_libfuzzers_no_cap(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Under atheris ``--runs 0`` becomes ``-runs=-1`` (libFuzzer's -runs=0 would run
    nothing); a cap passes through as it is."""
    import types

    from qemu_lite.devfuzz.__main__ import run_atheris

    calls: list[list[str]] = []
    fake = types.SimpleNamespace(Setup=lambda argv, one_input: calls.append(argv),
                                 Fuzz=lambda: None)
    monkeypatch.setitem(sys.modules, "atheris", fake)
    for runs in (0, 5):
        run_atheris(TARGETS["port92"], runs=runs, seconds=3, seed=1, max_len=64,
                    crashes=tmp_path, corpus=None)
    assert "-runs=-1" in calls[0] and "-max_total_time=3" in calls[0]
    assert "-runs=5" in calls[1]
    assert not any(a.startswith("-runs=0") for a in calls[0] + calls[1])


def test_cli_atheris_run_at_a_pace(tmp_path: Any) -> None:
    pytest.importorskip("atheris", reason="atheris not installed (pip install 'qemu-lite[fuzz]')")
    done = _cli("run", "e1000", "--runs", "300", "--seconds", "120", "--round-trip-every", "16",
                "--reset-check-every", "64", "--crashes", str(tmp_path / "crashes"),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "e1000: round trip every 16 inputs, devices reused, reset checked every 64" \
        in done.stderr
    assert "Done 300 runs" in done.stderr


def test_campaign_passes_the_pace_to_its_runs(tmp_path: Any) -> None:
    out = tmp_path / "campaign"
    done = _cli("campaign", "--engine", "random", "--targets", "port92,debugport", "--runs", "30",
                "--seconds", "120", "--round-trip-every", "3", "--reset-check-every", "5",
                "--burst-every", "4", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("port92", "debugport"):
        log = (out / f"{name}.log").read_text()
        assert (f"{name}: ran 30 inputs" in log and "round trip every 3 inputs, devices "
                "reused, reset checked every 5, bursts on every 4" in log), log
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["target"], r["inputs"], r["finding"]) for r in rows] == [
        ("port92", 30, False), ("debugport", 30, False)]


def test_time_event_fires_a_bounded_number_of_timers_and_lands_in_the_same_state() -> None:
    """A PIT counting 2 clocks in mode 2 transitions every 0.8 us: one 10 ms advance of the
    fuzzing clock fires the first timers in order and jumps the rest of the way, and the
    PIT reads back as it does after the exact, 12,000-timer advance."""
    from qemu_lite.devfuzz.targets import MAX_FIRED_PER_ADVANCE, PitTarget

    def run(max_fired: int | None) -> tuple[int, list[int], bool]:
        target = PitTarget()
        ports = target.pit.ports
        ports.io_write(3, 1, 0x34)  # counter 0, lobyte/hibyte, mode 2
        ports.io_write(0, 1, 2)
        ports.io_write(0, 1, 0)
        fired = target.clock.advance(10_000_000 + 123, max_fired=max_fired)
        ports.io_write(3, 1, 0x00)  # latch counter 0
        latched = [ports.io_read(0, 1), ports.io_read(0, 1)]
        return fired, latched, target.pit.irq0.level

    exact, capped = run(None), run(MAX_FIRED_PER_ADVANCE)
    assert exact[0] > 10_000
    assert MAX_FIRED_PER_ADVANCE <= capped[0] <= MAX_FIRED_PER_ADVANCE + 2
    assert capped[1:] == exact[1:]
