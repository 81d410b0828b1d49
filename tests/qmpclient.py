"""Helpers for tests that drive ``qemu-lite --qmp`` with the real client, ``qemu.qmp``:
start the process, wait for an event, run an HMP command, hang up."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def qemu_lite(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``qemu-lite ARGS``, returned once it says its monitor listens; killed at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "qemu_lite", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "QMP listening" in line, line + proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


async def next_event(client: Any, name: str, timeout: float = 60.0) -> dict[str, Any]:
    """The next event called ``name`` (others are dropped)."""
    while True:
        got = await asyncio.wait_for(client.events.get(), timeout)
        if got["event"] == name:
            return dict(got)


async def hang_up(client: Any) -> None:
    """Disconnect after the run ended: the server may have hung up first, as QEMU does
    when it exits (qemu.qmp then reports the EOF it saw)."""
    try:
        await client.disconnect()
    except EOFError:
        pass


async def hmp(client: Any, line: str, cpu_index: int | None = None) -> str:
    """``human-monitor-command``'s output."""
    args: dict[str, Any] = {"command-line": line}
    if cpu_index is not None:
        args["cpu-index"] = cpu_index
    return str(await client.execute("human-monitor-command", args))


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)
