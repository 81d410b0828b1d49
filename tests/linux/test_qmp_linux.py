"""A booting Debian kernel driven over QMP with the real client library (``qemu.qmp``):
query-status, stop (the console stays silent while paused), cont, HMP ``info
registers`` in long mode, system_reset (the CPU back at the reset vector) and quit."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from images import kernel

from qemu_lite import imagebuild

qmp = pytest.importorskip("qemu.qmp", reason="qemu.qmp (pip install qemu.qmp) drives the QMP "
                          "tests; it is in the test extra")

# Userspace stays up until the test quits (idle in HLT between the sleeps).
INIT = """\
busybox echo "qemu_lite init: userspace reached"
while true; do busybox sleep 1; done
"""
MARK = "qemu_lite init: userspace reached"


async def _event(client: Any, name: str, timeout: float = 120.0) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(client.events.get(), timeout)
        if event["event"] == name:
            return dict(event)


async def _wait_for_text(path: Path, text: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < end, path.read_text(errors="replace")[-3000:]
        await asyncio.sleep(0.1)


def test_linux_guest_over_qmp(tmp_path: Path) -> None:
    vmlinuz = kernel()
    try:
        initrd = imagebuild.write_initramfs(tmp_path / "initrd.cpio", INIT)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    sock, serial = tmp_path / "qmp.sock", tmp_path / "console.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qemu_lite", "-m", "512M", "--kernel", vmlinuz, "--initrd",
         str(initrd), "--append", "console=ttyS0 panic=-1", "--timeout", "300",
         "--qmp", f"unix:{sock},server,wait=off", "--serial", f"file:{serial}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tempfile.gettempdir())
    try:
        assert proc.stderr is not None
        assert "QMP listening" in proc.stderr.readline()

        async def session() -> None:
            client = qmp.QMPClient("linux")
            await client.connect(str(sock))
            assert (await client.execute("query-status"))["status"] == "running"
            await _wait_for_text(serial, "Linux version", 120)

            # Paused mid-boot: the kernel prints nothing while stopped.
            await client.execute("stop")
            await _event(client, "STOP")
            assert (await client.execute("query-status"))["status"] == "paused"
            quiet = serial.stat().st_size
            await asyncio.sleep(1.0)
            assert serial.stat().st_size == quiet
            await client.execute("cont")
            await _event(client, "RESUME")
            await _wait_for_text(serial, MARK, 240)

            await client.execute("stop")
            await _event(client, "STOP")
            regs = str(await client.execute("human-monitor-command",
                                            {"command-line": "info registers"}))
            rip = re.search(r"RIP=([0-9a-f]{16})", regs)
            efer = re.search(r"EFER=([0-9a-f]{16})", regs)
            assert rip and efer, regs
            assert int(efer[1], 16) & 0x400  # EFER.LMA: a 64-bit kernel
            assert re.search(r"CR3=[0-9a-f]{16}", regs)
            mode = await client.execute("x-qemu-lite-query-cpu-mode")
            assert mode["mode"] == "long" and mode["paging"]

            await client.execute("system_reset")
            reset = await _event(client, "RESET")
            assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
            assert (await client.execute("query-status"))["status"] == "paused"
            regs = str(await client.execute("human-monitor-command",
                                            {"command-line": "info registers"}))
            assert "EIP=0000fff0" in regs and "CS =f000" in regs, regs  # the reset vector

            await client.execute("quit")
            shutdown = await _event(client, "SHUTDOWN")
            assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
            try:
                await client.disconnect()
            except EOFError:  # the server hung up first, as QEMU does when it exits
                pass

        asyncio.run(session())
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    text = serial.read_text(errors="replace")
    assert "Linux version" in text and MARK in text
