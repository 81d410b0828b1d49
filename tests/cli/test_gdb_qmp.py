"""QMP and the GDB stub on one run (``--qmp ... --gdb ...``), on a two-CPU guest:
stopped over QMP, read over GDB (what QMP reads too), continued over GDB (RESUME
on QMP), stopped over QMP while GDB waits in continue (GDB sees SIGINT), continued
over GDB to the guest's exit, which both report; the guest's output is the
undebugged one."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import smpguest
from qmpclient import hang_up, hmp, next_event, qemu_lite, wait_for

qmp = pytest.importorskip("qemu.qmp", reason="qemu.qmp (pip install qemu.qmp) drives the QMP "
                          "tests; it is in the test extra")

WORK = 3_000_000  # a few seconds of guest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_stop_over_qmp_read_and_continue_over_gdb(assemble, tmp_path: Path) -> None:
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb not installed (apt-get install gdb)")
    map_file, kernel = tmp_path / "pingpong.map", tmp_path / "pingpong.bin"
    kernel.write_bytes(assemble(smpguest.source(work=WORK, map_file=str(map_file))))
    request = smpguest.symbols(str(map_file))["request"]
    sock, serial, port = tmp_path / "qmp.sock", tmp_path / "com1.txt", _free_port()
    script = [
        "set pagination off", "set confirm off",
        f"target remote 127.0.0.1:{port}",
        "echo @attached\\n", f"x/1wx {request:#x}", "thread 2", "info registers esp",
        "continue",  # ended by QMP's stop below
        "echo @interrupted\\n", "info threads",
        "continue",  # to the guest's exit
    ]
    gdb_cmd = [gdb, "-batch", "-nx", *sum((["-ex", c] for c in script), [])]
    with qemu_lite("--timeout", "120", "-smp", "2", "-m", "16M", "--vga", "none",
                   "--kernel", str(kernel), "--qmp", f"unix:{sock},server,wait=off",
                   "--gdb", f"tcp::{port}", "--serial", f"file:{serial}") as proc:
        assert proc.stderr is not None
        assert "gdb stub listening" in proc.stderr.readline()

        async def session() -> tuple[str, str, str, list[dict[str, Any]]]:
            client = qmp.QMPClient("with-gdb")
            await client.connect(str(sock))
            wait_for(lambda: serial.read_text().count("\n") >= 2)
            await client.execute("stop")
            await next_event(client, "STOP")
            word = (await hmp(client, f"xp /1xw {request:#x}")).split()[1]
            ap = await hmp(client, "info registers", cpu_index=1)

            debugger = await asyncio.create_subprocess_exec(
                *gdb_cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                cwd=tmp_path)
            assert (await next_event(client, "RESUME"))["data"] == {}  # GDB's continue
            assert (await client.execute("query-status"))["status"] == "running"
            await client.execute("stop")  # while GDB waits in continue
            await next_event(client, "STOP")
            await next_event(client, "RESUME")  # GDB's second continue
            shutdown = await next_event(client, "SHUTDOWN")
            out, err = await asyncio.wait_for(debugger.communicate(), 120)
            await hang_up(client)
            return word, ap, out.decode() + "\n-----\n" + err.decode(), [shutdown]

        word, ap, text, (shutdown,) = asyncio.run(session())
        assert proc.wait(timeout=60) == 1, text
    assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
    attached = text.split("@attached\n", 1)[1]
    memory = re.search(rf"{request:#x}:\s+(0x[0-9a-f]+)", attached)
    assert memory and int(memory[1], 16) == int(word, 16), text  # what QMP's xp read
    esp = re.search(r"^esp\s+(0x[0-9a-f]+)", attached, re.M)
    assert esp and f"ESP={int(esp[1], 16):08x}" in ap, (text, ap)  # QMP's CPU 1
    assert "received signal SIGINT" in text, text
    assert re.search(r"CPU#1 \[", text.split("@interrupted\n", 1)[1]), text
    assert "exited with code 01" in text, text
    assert serial.read_text() == smpguest.expected(work=WORK)
