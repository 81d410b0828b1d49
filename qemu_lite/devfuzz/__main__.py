"""Command line: ``python -m qemu_lite.devfuzz list|run|replay|campaign``.

``run`` with ``--engine atheris`` hands the target to libFuzzer (atheris): the device
modules are instrumented as they are imported, so its coverage is the devices' own
branches and comparisons; a finding is written to ``--crashes`` as libFuzzer's
``crash-<sha1>`` file and the process exits non-zero.  ``--engine random`` feeds seeded
random byte strings instead (no atheris needed; the same seed gives the same inputs).
``--runs 0`` lifts the input cap (libFuzzer's ``-runs=-1``): ``--seconds`` alone ends the
run.  ``--round-trip-every N``, ``--reset-check-every N`` and ``--burst-every N`` set the run's
:class:`~qemu_lite.devfuzz.harness.Pace` (the defaults, 1 and 0, are the full checks on
fresh devices for every input); ``replay`` always checks at the full pace.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qemu_lite.devfuzz import harness
from qemu_lite.devfuzz.harness import FULL, Finding, Pace, Result, Target
from qemu_lite.fuzz.libfuzzer import rss_limit_flag

MAX_LEN = 1024


def _load_targets(instrument: bool) -> dict[str, type[Target]]:
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["qemu_lite.devices"]):
            module = importlib.import_module("qemu_lite.devfuzz.targets")
            board = importlib.import_module("qemu_lite.devfuzz.board")
    else:
        module = importlib.import_module("qemu_lite.devfuzz.targets")
        board = importlib.import_module("qemu_lite.devfuzz.board")
    targets: dict[str, type[Target]] = dict(module.TARGETS)
    targets.update(board.TARGETS)
    return targets


class _Every(Target):
    """Every device target in one process: the first byte picks the device class."""

    name = "devices"
    members: list[type[Target]] = []

    def build(self) -> None:
        pass

    @classmethod
    def run_input(cls, data: bytes) -> Result:
        if not data:
            return Result()
        return cls.members[data[0] % len(cls.members)].run_input(data[1:])


def _pick(targets: dict[str, type[Target]], name: str) -> type[Target]:
    if name == "devices":
        _Every.members = [t for n, t in targets.items() if n != "board"]
        return _Every
    if name not in targets:
        raise SystemExit(f"devfuzz: no target {name!r} (targets: {', '.join(targets)})")
    return targets[name]


def _save_crash(crashes: Path, data: bytes, finding: Finding) -> Path:
    crashes.mkdir(parents=True, exist_ok=True)
    path = crashes / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(f"{finding}\n")
    return path


def run_random(target: type[Target], *, runs: int, seconds: float, seed: int,
               max_len: int, crashes: Path) -> int:
    """Seeded random inputs, at most ``runs`` (0: no cap) within ``seconds``; returns how
    many ran.  A finding is saved and raised."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    done = 0
    while (runs == 0 or done < runs) and time.monotonic() < deadline:
        data = rng.randbytes(rng.randrange(1, max_len + 1))
        try:
            target.run_input(data)
        except Finding as finding:
            path = _save_crash(crashes, finding.reproducer or data, finding)
            raise Finding(f"{finding} (reproducer {path})") from None
        done += 1
    return done


def run_atheris(target: type[Target], *, runs: int, seconds: float, seed: int, max_len: int,
                crashes: Path, corpus: Path | None) -> None:
    import atheris

    crashes.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-runs={runs or -1}", f"-max_total_time={max(1, int(seconds))}",
            f"-seed={seed}", f"-max_len={max_len}", f"-artifact_prefix={crashes}/",
            "-print_final_stats=1", "-timeout=30", rss_limit_flag(4096)]
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        argv.append(str(corpus))

    def one_input(data: bytes) -> None:
        try:
            target.run_input(data)
        except Finding as finding:
            if finding.reproducer is not None:  # libFuzzer saves the input it gave
                path = _save_crash(crashes, finding.reproducer, finding)
                print(f"devfuzz: the input ran without its bursts; reproducer {path}",
                      file=sys.stderr, flush=True)
            raise

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def _campaign(args: argparse.Namespace, names: list[str]) -> int:
    """Each target in its own process, ``--jobs`` at a time; a table of inputs and findings."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    pending = list(names)
    running: list[tuple[str, subprocess.Popen[str], float, Any]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed when it ends)
            cmd = [sys.executable, "-m", "qemu_lite.devfuzz", "run", name,
                   "--engine", args.engine, "--runs", str(args.runs),
                   "--seconds", str(args.seconds), "--seed", str(args.seed),
                   "--round-trip-every", str(args.round_trip_every),
                   "--reset-check-every", str(args.reset_check_every),
                   "--burst-every", str(args.burst_every), "--max-len", str(args.max_len),
                   "--crashes", str(out / "crashes" / name)]
            if args.engine == "atheris":
                cmd += ["--corpus", str(out / "corpus" / name)]
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   text=True), time.monotonic(), log))
        time.sleep(0.5)
        for item in list(running):
            name, proc, started, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            text = (out / f"{name}.log").read_text(errors="replace")
            done = re.findall(r"Done (\d+) runs", text) or re.findall(r"ran (\d+) inputs", text)
            rows.append({"target": name, "inputs": int(done[-1]) if done else None,
                         "seconds": round(time.monotonic() - started, 1),
                         "status": proc.returncode,
                         "finding": "crash-" in text or "Finding" in text})
            print(f"{name}: {rows[-1]}", flush=True)
    rows.sort(key=lambda r: names.index(r["target"]))
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    total = sum(r["inputs"] or 0 for r in rows)
    print(f"campaign: {total} inputs over {len(rows)} targets; "
          f"{sum(r['finding'] for r in rows)} with findings; summary in {out}/summary.json")
    return 1 if any(r["status"] for r in rows) else 0


def _count(least: int, what: str) -> Any:
    """An argparse type: an int of at least ``least`` (``what`` says what it counts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least} ({what}), not {value}")
        return value

    return parse


def _pace_text(pace: Pace) -> str:
    if pace == FULL:
        return "full checks on fresh devices for every input"
    reuse = (f"devices reused, reset checked every {pace.reset_check_every}"
             if pace.reset_check_every else "fresh devices for every input")
    bursts = f", bursts on every {pace.burst_every}" if pace.burst_every > 1 else ""
    return f"round trip every {pace.round_trip_every} inputs, {reuse}{bursts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qemu_lite.devfuzz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name the targets")
    run = sub.add_parser("run", help="fuzz one target")
    run.add_argument("target")
    replay = sub.add_parser("replay", help="re-run reproducer files")
    replay.add_argument("target")
    replay.add_argument("files", nargs="+")
    camp = sub.add_parser("campaign", help="every target, one process each")
    camp.add_argument("--targets", help="comma-separated (default: all)")
    camp.add_argument("--jobs", type=_count(1, "processes at a time"), default=1)
    camp.add_argument("--out", default="devfuzz-campaign")
    for p in (run, camp):
        p.add_argument("--engine", choices=("atheris", "random"), default="atheris")
        p.add_argument("--runs", type=_count(0, "0: no cap, --seconds ends the run"),
                       default=100_000, help="inputs at most (0: no cap; default 100000)")
        p.add_argument("--seconds", type=float, default=60.0)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--round-trip-every", type=_count(1, "1: every input"), default=1,
                       metavar="N", help="the save/load round trip on every Nth input "
                       "(default 1: every one)")
        p.add_argument("--reset-check-every", type=_count(0, "0: fresh devices per input"),
                       default=0, metavar="N", help="0 (default): fresh devices for every "
                       "input; N: reuse them through reset(), checking a reset device "
                       "against a fresh one on the first reuse and every Nth after")
        p.add_argument("--burst-every", type=_count(1, "1: every input"), default=1,
                       metavar="N", help="run an input's bursts on every Nth input only, "
                       "the others without them (default 1: every one)")
        p.add_argument("--max-len", type=_count(1, "bytes"), default=MAX_LEN,
                       help=f"the longest input (default {MAX_LEN})")
    run.add_argument("--crashes", default="devfuzz-crashes")
    run.add_argument("--corpus")
    args = parser.parse_args(argv)

    if args.command == "campaign":
        names = list(_load_targets(False))
        if args.targets:
            wanted = args.targets.split(",")
            for name in wanted:
                if name not in names:
                    parser.error(f"no target {name!r}")
            names = wanted
        return _campaign(args, names)
    if args.command == "list":
        for name, target in _load_targets(False).items():
            doc = (target.__doc__ or "").strip()
            print(f"{name:12} {doc.splitlines()[0] if doc else ''}")
        print(f"{'devices':12} {(_Every.__doc__ or '').strip()}")
        return 0
    if args.command == "replay":
        harness.PACE = FULL  # a reproducer is checked on fresh devices, everything on
        target = _pick(_load_targets(False), args.target)
        failed = 0
        for name in args.files:
            try:
                result = target.run_input(Path(name).read_bytes())
            except Finding as finding:
                print(f"{name}: FINDING {finding}")
                failed += 1
            except OSError as exc:
                print(f"devfuzz: cannot read {name}: {exc.strerror}", file=sys.stderr)
                return 2
            else:
                print(f"{name}: ok ({result.ops} ops, footprint {result.footprint})")
        return 1 if failed else 0
    use_atheris = args.engine == "atheris"
    if use_atheris:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("devfuzz: atheris is not installed (pip install 'qemu-lite[fuzz]'), "
                  "or use --engine random", file=sys.stderr)
            return 2
    target = _pick(_load_targets(use_atheris), args.target)
    crashes = Path(args.crashes)
    pace = Pace(args.round_trip_every, args.reset_check_every, args.burst_every)
    if use_atheris:
        harness.PACE = pace  # libFuzzer exits the process at the end
        print(f"devfuzz: {args.target}: {_pace_text(pace)}", file=sys.stderr, flush=True)
        run_atheris(target, runs=args.runs, seconds=args.seconds, seed=args.seed,
                    max_len=args.max_len, crashes=crashes,
                    corpus=Path(args.corpus) if args.corpus else None)
        return 0
    started = time.monotonic()
    before, harness.PACE = harness.PACE, pace
    try:
        done = run_random(target, runs=args.runs, seconds=args.seconds, seed=args.seed,
                          max_len=args.max_len, crashes=crashes)
    except Finding as finding:
        print(f"{args.target}: FINDING {finding}")
        return 1
    finally:
        harness.PACE = before  # main() may run again in this process (the tests)
    print(f"{args.target}: ran {done} inputs in {time.monotonic() - started:.1f} s "
          f"({_pace_text(pace)}), no finding")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
