"""``python -m qemu_lite.fuzz run|replay|minimize``: snapshot fuzzing of guest code.

The mutation engine is libFuzzer, through atheris: the harness feeds the guest's edge
coverage into libFuzzer's counters (nothing on the Python side is instrumented), so
libFuzzer keeps the inputs that reach new guest edges.  atheris rather than AFL++: it is a
pip package that runs in the harness's own process, with no fork server, no shared-memory
map to wire up and no Python-under-AFL shim; restoring a snapshot is already the cheap
"fork", and the device fuzzing uses the same engine.

    python -m qemu_lite.fuzz run --example tlv --corpus corpus/ --crashes crashes/
    python -m qemu_lite.fuzz replay --example tlv crashes/crash-*
    python -m qemu_lite.fuzz minimize --example tlv crashes/crash-... --out min.bin
    python -m qemu_lite.fuzz campaign --example tlv --workers 2 --seconds 600 --out camp/

``campaign`` runs N libFuzzer workers as Ray actors (``pip install '.[scale]'``) that share
their corpus through the driver (qemu_lite.fuzz.campaign); ``--address`` joins a running
Ray cluster instead of starting a local one.

The minimiser is ours (libFuzzer's -minimize_crash re-executes argv[0], which a Python
harness is not): chunks removed while the crash verdict holds, then bytes zeroed.

A guest of your own: ``--kernel K.bin --ready-port P --input-at ADDR [--length-at ADDR]
--code START:END --save START:END ... [--panic-port P] [--oops TEXT]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qemu_lite.fuzz.harness import FuzzConfig, Harness, example_config, minimize
from qemu_lite.fuzz.interface import EDGE_MAP
from qemu_lite.fuzz.libfuzzer import rss_limit_flag

MAX_HITS = 16  # calls per edge: enough for libFuzzer's hit-count buckets up to 16


class GuestCrash(Exception):
    """The input crashed the guest (libFuzzer saves it as crash-<sha1>)."""


def _int(text: str) -> int:
    return int(text, 0)


def _range(text: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected START:END, not {text!r}")
    lo, hi = int(start, 0), int(end, 0)
    if not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"empty range {text!r}")
    return lo, hi


def _config(args: argparse.Namespace) -> FuzzConfig:
    if args.example == "tlv":
        return example_config()
    if args.kernel is None:
        raise SystemExit("qemu_lite.fuzz: give --example tlv or --kernel")
    missing = [name for name in ("ready_port", "input_at", "code") if getattr(args, name) is None]
    if missing or not args.save:
        raise SystemExit(f"qemu_lite.fuzz: --kernel needs --{(missing or ['save'])[0]}"
                         .replace("_", "-"))
    return FuzzConfig(kernel=Path(args.kernel), ready_port=args.ready_port,
                      input_at=args.input_at, max_input=args.max_input, code=args.code,
                      save=args.save, length_at=args.length_at, panic_port=args.panic_port,
                      oops=args.oops.encode() if args.oops else None,
                      insn_budget=args.budget)


def _libfuzzer(harness: Harness, argv: list[str]) -> None:
    import atheris

    base = atheris._reserve_counter()
    for _ in range(EDGE_MAP - 1):
        atheris._reserve_counter()

    def one_input(data: bytes) -> None:
        outcome = harness.run(data)
        trace = atheris._trace_branch  # looked up here: Setup() replaces the function
        for edge, hits in outcome.edges.items():
            for _ in range(min(hits, MAX_HITS)):
                trace(base + edge)
        if outcome.crashed:
            raise GuestCrash(outcome.verdict)

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def _config_argv(args: argparse.Namespace) -> list[str]:
    """The guest options of ``args`` again, for the workers' own ``run`` processes."""
    _config(args)  # the same checks, here, before any worker starts
    if args.example:
        return ["--example", args.example]
    out = ["--kernel", str(Path(args.kernel).resolve()), "--ready-port", hex(args.ready_port),
           "--input-at", hex(args.input_at), "--max-input", hex(args.max_input),
           "--code", f"{args.code[0]:#x}:{args.code[1]:#x}", "--budget", str(args.budget)]
    for lo, hi in args.save:
        out += ["--save", f"{lo:#x}:{hi:#x}"]
    for name in ("panic_port", "length_at"):
        if getattr(args, name) is not None:
            out += ["--" + name.replace("_", "-"), hex(getattr(args, name))]
    if args.oops:
        out += ["--oops", args.oops]
    return out


def _campaign(args: argparse.Namespace) -> int:
    try:
        import atheris  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        print(f"qemu_lite.fuzz: a campaign needs {exc.name} (pip install 'qemu-lite[fuzz,scale]')",
              file=sys.stderr)
        return 2
    from qemu_lite.fuzz.campaign import Campaign

    if args.workers < 1:
        print("qemu_lite.fuzz: --workers must be at least 1", file=sys.stderr)
        return 2
    fuzz_args = _config_argv(args)
    seeds: list[bytes] = []
    if args.seed_corpus:
        try:
            seeds = [p.read_bytes() for p in sorted(Path(args.seed_corpus).iterdir())
                     if p.is_file()]
        except OSError as exc:
            print(f"qemu_lite.fuzz: cannot read {args.seed_corpus}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    campaign = Campaign(fuzz_args, args.workers, Path(args.out), seed=args.seed,
                        address=args.address, seed_inputs=seeds)
    try:
        summary = campaign.run(args.seconds, args.sync)
    finally:
        campaign.close()
    print(f"qemu_lite.fuzz: {summary.executions} executions in {summary.seconds} s "
          f"({summary.exec_per_s}/s) over {args.workers} workers, corpus {summary.corpus}, "
          f"{len(summary.crashes)} crashes; {args.out}/summary.json")
    for name in summary.crashes:
        print(f"  crash: {args.out}/crashes/{name}")
    return 1 if summary.crashes else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qemu_lite.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fuzz from a corpus directory (libFuzzer)")
    run.add_argument("--corpus", default="fuzz-corpus")
    run.add_argument("--crashes", default="fuzz-crashes")
    run.add_argument("--seconds", type=int, default=600)
    run.add_argument("--runs", type=int, default=-1)
    run.add_argument("--seed", type=int, default=0)
    replay = sub.add_parser("replay", help="run inputs once, print each verdict")
    replay.add_argument("files", nargs="+")
    mini = sub.add_parser("minimize", help="shrink a crashing input, same verdict")
    mini.add_argument("file")
    mini.add_argument("--out", required=True)
    mini.add_argument("--runs", type=int, default=20_000)
    camp = sub.add_parser("campaign", help="N workers as Ray actors sharing one corpus")
    camp.add_argument("--workers", type=int, default=2)
    camp.add_argument("--seconds", type=float, default=600)
    camp.add_argument("--sync", type=float, default=5.0, help="seconds between corpus syncs")
    camp.add_argument("--out", default="fuzz-campaign")
    camp.add_argument("--address", help="a Ray cluster to join (default: start a local one)")
    camp.add_argument("--seed", type=int, default=0)
    camp.add_argument("--seed-corpus", help="a directory of inputs to start from")
    for p in (run, replay, mini, camp):
        p.add_argument("--example", choices=("tlv",))
        p.add_argument("--kernel")
        p.add_argument("--ready-port", type=_int)
        p.add_argument("--panic-port", type=_int)
        p.add_argument("--input-at", type=_int)
        p.add_argument("--length-at", type=_int)
        p.add_argument("--max-input", type=_int, default=0x1000)
        p.add_argument("--code", type=_range)
        p.add_argument("--save", type=_range, action="append", default=[])
        p.add_argument("--oops")
        p.add_argument("--budget", type=int, default=1_000_000,
                       help="instructions (of deterministic guest time) per input")
    args = parser.parse_args(argv)
    if args.command == "campaign":
        return _campaign(args)

    inputs: list[tuple[str, bytes]] = []
    if args.command in ("replay", "minimize"):
        for name in args.files if args.command == "replay" else [args.file]:
            try:
                inputs.append((name, Path(name).read_bytes()))
            except OSError as exc:
                print(f"qemu_lite.fuzz: cannot read {name}: {exc.strerror}", file=sys.stderr)
                return 2
    try:
        harness = Harness(_config(args))
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"qemu_lite.fuzz: {exc}", file=sys.stderr)
        return 2

    if args.command == "replay":
        crashed = 0
        for name, data in inputs:
            outcome = harness.run(data)
            crashed += outcome.crashed
            print(f"{name}: {outcome.verdict} ({len(outcome.edges)} edges)")
        return 1 if crashed else 0

    if args.command == "minimize":
        name, data = inputs[0]
        try:
            small = minimize(harness, data, args.runs)
        except ValueError as exc:
            print(f"qemu_lite.fuzz: {name}: {exc}", file=sys.stderr)
            return 2
        Path(args.out).write_bytes(small)
        print(f"{name}: {len(data)} -> {len(small)} bytes, {harness.run(small).verdict}: "
              f"{args.out}")
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("qemu_lite.fuzz: atheris is not installed (pip install 'qemu-lite[fuzz]')",
              file=sys.stderr)
        return 2
    Path(args.corpus).mkdir(parents=True, exist_ok=True)
    Path(args.crashes).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        _libfuzzer(harness, [f"-max_total_time={args.seconds}", f"-runs={args.runs}",
                             f"-seed={args.seed}", f"-max_len={harness.config.max_input}",
                             f"-artifact_prefix={args.crashes}/", "-print_final_stats=1",
                             rss_limit_flag(2048), args.corpus])
    finally:
        print(f"qemu_lite.fuzz: {harness.executions} executions in "
              f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
