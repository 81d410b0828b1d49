"""A fuzz campaign over N Ray actors (``python -m qemu_lite.fuzz campaign``).

Each worker is a Ray actor that owns one libFuzzer process (``python -m qemu_lite.fuzz
run``: its harness holds the worker's machine and snapshot) with its own corpus directory,
crash directory and seed.  libFuzzer runs in a process of its own because it cannot be
re-entered or stopped from Python (it exits when it finds a crash); the actor restarts it
with the next seed when it ends.

Every ``sync_every`` seconds the driver asks each worker for the inputs its libFuzzer
added since the last round and the crashes it found, and hands every worker the inputs
the others found: one list put in Ray's object store per round.  A worker writes them
into its corpus directory, which libFuzzer re-reads by itself (its ``-reload``), so what
one worker finds steers the others.  Inputs are named by their SHA-1, as libFuzzer names
them, so nobody holds one twice.

An actor that dies is restarted by Ray (``max_restarts``); the round it was in is retried
on the new actor (``max_task_retries``), so its input batch is re-queued; the driver sees
the new incarnation and sends it the whole corpus again.  Run times vary from host to
host and libFuzzer's reload is timed, so a campaign is not deterministic; each input's
verdict is (the harness runs guests under ``--deterministic``): replay any of them.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_STATUS = re.compile(rb"#(\d+)\s+[A-Z]+\s.*?cov: (\d+)")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the libFuzzer child: be killed when the actor process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _name(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class CampaignWorker:
    """One worker: a libFuzzer process over the harness, its corpus and its crashes.

    Wrapped by ``ray.remote`` in :func:`run_campaign`; usable on its own (tests do).
    """

    def __init__(self, index: int, fuzz_args: Sequence[str], root: str, seed: int) -> None:
        self.index = index
        self.fuzz_args = list(fuzz_args)
        self.seed = seed
        self.incarnation = uuid.uuid4().hex
        self.dir = Path(root) / f"worker-{index}"
        self.corpus = self.dir / "corpus"
        self.crashes = self.dir / "crashes"
        self.staging = self.dir / "staging"
        for d in (self.corpus, self.crashes, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        self.seen = {p.name for p in self.corpus.iterdir()}
        self.reported_crashes: set[str] = set()
        self.processes = 0
        self.executions_before = 0  # by the libFuzzer processes that have ended
        self.proc: subprocess.Popen[bytes] | None = None
        self._start()

    def _log(self, n: int) -> Path:
        return self.dir / f"libfuzzer-{n}.log"

    def _start(self) -> None:
        seed = self.seed + 7919 * self.processes
        log = self._log(self.processes).open("wb")
        cmd = [sys.executable, "-m", "qemu_lite.fuzz", "run", *self.fuzz_args,
               "--corpus", str(self.corpus), "--crashes", str(self.crashes),
               "--seconds", "100000000", "--seed", str(seed)]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        log.close()
        self.processes += 1

    def _status(self, n: int) -> tuple[int, int]:
        """(executions, libFuzzer's coverage) from process ``n``'s last status line."""
        try:
            text = self._log(n).read_bytes()
        except OSError:
            return 0, 0
        found = _STATUS.findall(text)
        return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)

    def _add_incoming(self, incoming: Sequence[bytes]) -> int:
        added = 0
        for data in incoming:
            name = _name(data)
            if name in self.seen:
                continue
            tmp = self.staging / name
            tmp.write_bytes(data)
            os.replace(tmp, self.corpus / name)  # whole files only, for libFuzzer's reload
            self.seen.add(name)
            added += 1
        return added

    def _new_inputs(self) -> list[bytes]:
        new = []
        for path in self.corpus.iterdir():
            if path.name in self.seen:
                continue
            data = path.read_bytes()
            if _name(data) == path.name:  # else libFuzzer is still writing it: next round
                self.seen.add(path.name)
                new.append(data)
        return new

    def _new_crashes(self) -> list[tuple[str, bytes]]:
        out = []
        for path in sorted(self.crashes.glob("crash-*")):
            if path.name not in self.reported_crashes:
                self.reported_crashes.add(path.name)
                out.append((path.name, path.read_bytes()))
        return out

    def sync(self, incoming: Sequence[bytes], restart: bool = True) -> dict[str, Any]:
        """Take the others' inputs; give back this worker's new inputs, crashes and counts."""
        received = self._add_incoming(incoming)
        assert self.proc is not None
        ended = self.proc.poll() is not None
        crashes = self._new_crashes()
        for _file, data in crashes:  # never load a crashing input again (a seed may be one)
            (self.corpus / _name(data)).unlink(missing_ok=True)
        executions, cov = self._status(self.processes - 1)
        if ended and restart:  # libFuzzer stops at a crash (or died): a new one, next seed
            self.executions_before += executions
            executions = 0
            self._start()
        return {"index": self.index, "incarnation": self.incarnation, "received": received,
                "new": self._new_inputs(), "crashes": crashes,
                "executions": self.executions_before + executions, "cov": cov,
                "processes": self.processes, "corpus": len(self.seen)}

    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> dict[str, Any]:
        """End the libFuzzer process; the last report."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.sync([], restart=False)


@dataclass
class WorkerSummary:
    index: int
    executions: int = 0
    cov: int = 0
    processes: int = 0
    restarts: int = 0  # actor restarts seen by the driver
    found: int = 0  # inputs this worker added to the shared corpus
    received: int = 0  # inputs the others found, written into its corpus


@dataclass
class CampaignSummary:
    workers: list[WorkerSummary]
    seconds: float
    executions: int
    exec_per_s: float
    corpus: int
    crashes: list[str] = field(default_factory=list)
    rounds: int = 0


class Campaign:
    """The driver: N :class:`CampaignWorker` actors, a shared corpus, rounds of sync."""

    def __init__(self, fuzz_args: Sequence[str], workers: int, out: Path, *, seed: int = 0,
                 address: str | None = None, seed_inputs: Sequence[bytes] = ()) -> None:
        import ray

        self.ray = ray
        self.out = Path(out)
        (self.out / "crashes").mkdir(parents=True, exist_ok=True)
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(CampaignWorker)
        self.actors: list[Any] = [remote.remote(i, list(fuzz_args), str(self.out / "workers"), seed + i)
                       for i in range(workers)]
        self.corpus: dict[str, bytes] = {_name(d): d for d in seed_inputs}
        self.summaries = [WorkerSummary(i) for i in range(workers)]
        self.incarnations: list[str | None] = [None] * workers
        self.crashes: list[str] = []
        self.rounds = 0
        self._fresh: dict[str, bytes] = {}  # what the last round added to the corpus

    def _record(self, report: dict[str, Any]) -> None:
        i = report["index"]
        s = self.summaries[i]
        s.executions, s.cov, s.processes = report["executions"], report["cov"], \
            report["processes"]
        s.received += report["received"]
        for data in report["new"]:
            name = _name(data)
            if name not in self.corpus:
                self.corpus[name] = data
                s.found += 1
        for _file, data in report["crashes"]:
            path = self.out / "crashes" / f"crash-{_name(data)}"
            if not path.exists():
                path.write_bytes(data)
                self.crashes.append(path.name)

    def sync_round(self) -> None:
        """One round: every worker gets what the corpus holds that it may lack."""
        ray = self.ray
        everything = ray.put(list(self.corpus.values()))
        fresh = ray.put(list(self._fresh.values()))
        refs = [actor.sync.remote(everything if self.incarnations[i] is None else fresh)
                for i, actor in enumerate(self.actors)]
        before = set(self.corpus)
        reports = ray.get(refs)
        for i, report in enumerate(reports):
            if self.incarnations[i] not in (None, report["incarnation"]):
                self.summaries[i].restarts += 1
                self.incarnations[i] = None  # a new actor: the whole corpus next round
            else:
                self.incarnations[i] = report["incarnation"]
            self._record(report)
        self._fresh = {k: v for k, v in self.corpus.items() if k not in before}
        self.rounds += 1

    def run(self, seconds: float, sync_every: float = 5.0,
            on_round: Callable[[Campaign], bool] | None = None) -> CampaignSummary:
        """Fuzz for ``seconds`` (or until ``on_round`` returns True after a round); write
        the corpus, crashes and summary.json under ``out``."""
        started = time.monotonic()
        while True:
            self.sync_round()
            done = on_round is not None and on_round(self)
            left = seconds - (time.monotonic() - started)
            if done or left <= 0:
                break
            time.sleep(min(sync_every, left))
        reports = self.ray.get([a.stop.remote() for a in self.actors])
        elapsed = time.monotonic() - started
        for report in reports:
            self._record(report)
        corpus_dir = self.out / "corpus"
        corpus_dir.mkdir(exist_ok=True)
        for name, data in self.corpus.items():
            (corpus_dir / name).write_bytes(data)
        executions = sum(s.executions for s in self.summaries)
        summary = CampaignSummary(workers=self.summaries, seconds=round(elapsed, 1),
                                  executions=executions,
                                  exec_per_s=round(executions / elapsed, 1) if elapsed else 0.0,
                                  corpus=len(self.corpus), crashes=self.crashes,
                                  rounds=self.rounds)
        (self.out / "summary.json").write_text(json.dumps(asdict(summary), indent=1) + "\n")
        return summary

    def kill_worker(self, index: int) -> None:
        """Kill worker ``index``'s actor process (Ray restarts it): for tests and drills."""
        self.ray.kill(self.actors[index], no_restart=False)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        if self._started_ray:
            self.ray.shutdown()


__all__ = ["Campaign", "CampaignSummary", "CampaignWorker", "WorkerSummary"]
