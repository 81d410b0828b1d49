"""QMP (``qemu-lite --qmp``) driven by the real client library, ``qemu.qmp``, and by hand
on a raw socket, against a boot-sector guest that counts in memory and never ends."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import qmpclient
import smpguest
from qmpclient import hang_up, hmp, next_event, wait_for

qmp = pytest.importorskip("qemu.qmp", reason="qemu.qmp (pip install qemu.qmp) drives the QMP "
                          "tests; it is in the test extra")

# Prints on COM1, puts a 'Q' in the text screen's corner, loads EBX, then counts at 0x7E00;
# with RESET_ONCE defined it first resets the machine once, through the i8042.
MBR = r"""
bits 16
org 0x7C00
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
%ifdef RESET_ONCE
    cmp dword [0x7E04], "RSET"      ; RAM survives a reset: the second boot goes on
    je .again
    mov dword [0x7E04], "RSET"
    mov al, 0xFE                    ; the i8042's reset line
    out 0x64, al
    hlt
.again:
    mov dword [0x7E04], 0
%endif
    mov si, msg
.print:
    lodsb
    test al, al
    jz .screen
    mov dx, 0x3F8
    out dx, al
    jmp .print
.screen:
    mov ax, 0xB800
    mov es, ax
    mov word [es:0], 0x1F51
    mov ebx, 0xC0FFEE00
    mov dword [0x7E00], 0
.spin:
    inc dword [0x7E00]
    jmp .spin
msg: db "mbr: up", 10, 0
times 510 - ($ - $$) db 0
dw 0xAA55
"""
COUNTER = 0x7E00


@pytest.fixture
def disk(assemble, tmp_path: Path) -> Path:
    image = tmp_path / "mbr.img"
    image.write_bytes(assemble(MBR).ljust(64 << 10, b"\0"))
    return image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def qemu_lite(*args: str) -> Iterator[subprocess.Popen[str]]:
    with qmpclient.qemu_lite("--timeout", "120", *args) as proc:
        yield proc


async def _counter(client: Any) -> int:
    out = await hmp(client, f"xp /1xw {COUNTER:#x}")
    return int(out.split()[1], 16)


def test_run_control_registers_memory_reset_and_quit(disk: Path, tmp_path: Path) -> None:
    sock, serial, shot = tmp_path / "qmp.sock", tmp_path / "com1.txt", tmp_path / "s.ppm"
    state = tmp_path / "vm.state"
    saved: dict[str, int] = {}
    with qemu_lite(str(disk), "-S", "--qmp", f"unix:{sock},server,wait=off",
                   "--serial", f"file:{serial}") as proc:

        async def session() -> None:
            client = qmp.QMPClient("test")
            await client.connect(str(sock))
            assert await client.execute("query-status") == {"status": "prelaunch",
                                                             "running": False}
            version = await client.execute("query-version")
            assert version["package"].startswith("qemu-lite ")
            names = {c["name"] for c in await client.execute("query-commands")}
            assert {"stop", "cont", "system_reset", "quit", "human-monitor-command",
                    "screendump", "query-cpus-fast", "x-qemu-lite-query-mmu"} <= names
            time.sleep(0.3)
            assert serial.read_text() == ""  # -S: nothing ran before cont

            await client.execute("cont")
            await next_event(client, "RESUME")
            wait_for(lambda: "mbr: up" in serial.read_text())
            assert (await client.execute("query-status"))["status"] == "running"

            await client.execute("stop")
            await next_event(client, "STOP")
            assert (await client.execute("query-status")) == {"status": "paused",
                                                              "running": False}
            first = await _counter(client)
            time.sleep(0.3)
            assert await _counter(client) == first > 0  # paused: the guest does not count
            registers = await hmp(client, "info registers")
            assert "EBX=c0ffee00" in registers, registers
            assert "CS =0000 00000000" in registers and "CR0=" in registers
            code = await hmp(client, "x /4xb 0x7c00")
            assert code.split()[1:] == [f"0x{b:02x}" for b in disk.read_bytes()[:4]]
            assert "VM status: paused" in await hmp(client, "info status")
            assert (await client.execute("x-qemu-lite-query-cpu-mode"))["mode"] == "real"
            mmu = await client.execute("x-qemu-lite-query-mmu")
            assert mmu["mode"] == "cached" and mmu["stats"]["fills"] > 0
            cpus = await client.execute("query-cpus-fast")
            assert os.path.isdir(f"/proc/{proc.pid}/task/{cpus[0]['thread-id']}")

            await client.execute("screendump", {"filename": str(shot)})
            header = b"P6\n720 400\n255\n"
            pixels = shot.read_bytes()
            assert pixels.startswith(header) and len(pixels) == len(header) + 720 * 400 * 3
            corner = pixels[len(header):len(header) + 3]  # the 'Q' cell: blue background
            png = tmp_path / "s.png"
            await client.execute("screendump", {"filename": str(png), "format": "png"})
            assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
            assert await client.execute("x-qemu-lite-mmu-audit") == {"problems": []}
            assert corner == b"\x00\x00\xa8", corner  # DAC 6-bit 0x2A

            with pytest.raises(qmp.ExecuteError) as err:
                await client.execute("migrate", {"uri": "tcp:127.0.0.1:4444"})
            assert "file:PATH" in str(err.value)
            with pytest.raises(qmp.ExecuteError) as err:  # an input is never overwritten
                await client.execute("migrate", {"uri": f"file:{disk}"})
            assert "refusing to overwrite" in str(err.value)
            assert await client.execute("migrate", {"uri": f"file:{state}"}) == {}
            assert (await client.execute("query-migrate"))["status"] == "completed"
            assert await client.execute("query-status") == {"status": "postmigrate",
                                                            "running": False}
            assert "VM status: paused (postmigrate)" in await hmp(client, "info status")
            saved["counter"] = await _counter(client)

            # The power button's event; this guest has no ACPI driver, so it runs on.
            assert await client.execute("system_powerdown") == {}
            await next_event(client, "POWERDOWN")

            await client.execute("cont")
            await next_event(client, "RESUME")
            time.sleep(0.2)
            assert await _counter(client) > first  # running again
            await client.execute("system_reset")
            reset = await next_event(client, "RESET")
            assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
            wait_for(lambda: serial.read_text().count("mbr: up") == 2)  # booted again

            await client.execute("quit")
            shutdown = await next_event(client, "SHUTDOWN")
            assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
            await hang_up(client)

        asyncio.run(session())
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        assert "quit requested over QMP" in proc.stderr.read()

    # -incoming: a new process resumes the migrated guest, paused under -S, the
    # counter and registers where they were, and no second boot.
    serial2 = tmp_path / "com1-incoming.txt"
    with qemu_lite(str(disk), "-S", "-incoming", f"file:{state}",
                   "--qmp", f"unix:{sock},server,wait=off", "--serial", f"file:{serial2}") as proc:

        async def resumed() -> None:
            client = qmp.QMPClient("incoming")
            await client.connect(str(sock))
            assert await client.execute("query-status") == {"status": "paused",
                                                            "running": False}
            assert await _counter(client) == saved["counter"]
            assert "EBX=c0ffee00" in await hmp(client, "info registers")
            await client.execute("cont")
            await next_event(client, "RESUME")
            end = time.monotonic() + 60
            while await _counter(client) <= saved["counter"]:  # counting on from there
                assert time.monotonic() < end, "the resumed guest does not run"
                await asyncio.sleep(0.05)
            await client.execute("quit")
            await next_event(client, "SHUTDOWN")
            await hang_up(client)

        asyncio.run(resumed())
        assert proc.wait(timeout=30) == 0
    assert serial2.read_text() == ""


class RawQmp:
    """QMP by hand: bytes out, one reply or event per line back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes | dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(data).encode() if isinstance(data, dict) else data)

    def recv(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            message = json.loads(line)
            if "event" not in message:
                return dict(message)

    def error(self, data: bytes | dict[str, Any]) -> tuple[str, str]:
        self.send(data)
        reply = self.recv()
        assert "error" in reply, reply
        return reply["error"]["class"], reply["error"]["desc"]


def test_protocol_by_hand_and_wait_on(disk: Path, tmp_path: Path) -> None:
    port, serial = _free_port(), tmp_path / "com1.txt"
    with qemu_lite(str(disk), "-qmp", f"tcp:127.0.0.1:{port},server",
                   "--serial", f"file:{serial}") as proc:
        time.sleep(0.5)
        assert serial.read_text() == ""  # wait=on (QEMU's default): no guest before a client
        raw = RawQmp(port)
        greeting = raw.recv()
        assert greeting["QMP"]["capabilities"] == []
        assert set(greeting["QMP"]["version"]["qemu"]) == {"major", "minor", "micro"}
        wait_for(lambda: "mbr: up" in serial.read_text())

        assert raw.error({"execute": "query-status"}) == (
            "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
        assert raw.error({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}) \
            == ("GenericError", "Capability 'oob' not available")
        raw.send({"execute": "qmp_capabilities", "id": "neg"})
        assert raw.recv() == {"return": {}, "id": "neg"}
        assert raw.error({"execute": "qmp_capabilities"})[0] == "CommandNotFound"

        assert raw.error(b'{"execute": }')[1].startswith("JSON parse error")
        assert raw.error(b"[1, 2]") == ("GenericError", "QMP input must be a JSON object")
        assert raw.error(b"42\n") == ("GenericError", "QMP input must be a JSON object")
        assert raw.error({"arguments": {}}) == ("GenericError",
                                                "QMP input lacks member 'execute'")
        assert raw.error({"execute": "stop", "bogus": 1}) == (
            "GenericError", "QMP input member 'bogus' is unexpected")
        assert raw.error({"execute": 7}) == ("GenericError",
                                             "QMP input member 'execute' must be a string")
        assert raw.error({"execute": "no-such"}) == (
            "CommandNotFound", "The command no-such has not been found")
        assert raw.error({"execute": "human-monitor-command"}) == (
            "GenericError", "Parameter 'command-line' is missing")
        assert raw.error({"execute": "human-monitor-command",
                          "arguments": {"command-line": 1}}) == (
            "GenericError", "Invalid parameter type for 'command-line', expected: string")
        assert raw.error({"execute": "query-status", "arguments": {"x": 1}}) == (
            "GenericError", "Parameter 'x' is unexpected")
        assert raw.error({"execute": "screendump", "arguments": {"filename": str(disk)}}) \
            [1].startswith("screendump output")  # the disk image is never overwritten
        # Two commands in one write, one command across two writes; ids come back as sent.
        raw.send(b'{"execute": "query-status", "id": 1}{"execute": "stop", "id": [2]}')
        assert raw.recv() == {"return": {"status": "running", "running": True}, "id": 1}
        assert raw.recv() == {"return": {}, "id": [2]}
        raw.send(b'{"execute": "query-')
        time.sleep(0.1)
        raw.send(b'status"}\n')
        assert raw.recv()["return"]["status"] == "paused"
        hmp = {"execute": "human-monitor-command", "arguments": {"command-line": "x /2xg 0"}}
        raw.send(hmp)
        assert raw.recv()["return"].startswith("0000000000000000: 0x")
        hmp["arguments"]["command-line"] = "xp /1xb 0x40000000"  # beyond the 64 MiB of RAM
        raw.send(hmp)
        assert "Cannot access memory" in raw.recv()["return"]
        hmp["arguments"]["command-line"] = "info mmu"
        raw.send(hmp)
        assert raw.recv()["return"].startswith("MMU mode cached\n")
        hmp["arguments"]["command-line"] = "x /2xq 0"
        raw.send(hmp)
        assert raw.recv()["return"].startswith("x: invalid format")
        hmp["arguments"]["command-line"] = "frobnicate"
        raw.send(hmp)
        assert raw.recv()["return"] == "unknown command: 'frobnicate'\n"

        # A value nested beyond QEMU's limit ends that connection, not the machine.
        assert raw.error(b"[" * 2000)[1].startswith("JSON parse error")
        assert raw.file.readline() == b""
        second = RawQmp(port)
        second.recv()
        second.send({"execute": "qmp_capabilities"})
        second.recv()
        second.send({"execute": "cont"})
        assert second.recv() == {"return": {}}
        before = int(_raw_hmp(second, f"xp /1xw {COUNTER:#x}").split()[1], 16)
        time.sleep(0.2)
        assert int(_raw_hmp(second, f"xp /1xw {COUNTER:#x}").split()[1], 16) != before
        second.send({"execute": "quit"})
        assert second.recv() == {"return": {}}
        assert proc.wait(timeout=30) == 0


def _raw_hmp(raw: RawQmp, line: str) -> str:
    raw.send({"execute": "human-monitor-command", "arguments": {"command-line": line}})
    return str(raw.recv()["return"])


def test_guest_exit_and_signal_send_shutdown(tmp_path: Path) -> None:
    from qemu_lite import DEFAULT_IMAGE

    sock = tmp_path / "qmp.sock"
    with qemu_lite(DEFAULT_IMAGE, "-S", "--qmp", f"unix:{sock},server,wait=off",
                   "--serial", "none") as proc:

        async def until_guest_exit() -> dict[str, Any]:
            client = qmp.QMPClient("test")
            await client.connect(str(sock))
            await client.execute("cont")
            event = await next_event(client, "SHUTDOWN")
            await hang_up(client)
            return event

        event = asyncio.run(until_guest_exit())
        assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert proc.wait(timeout=30) == 1  # the default guest's isa-debug-exit status

    with qemu_lite(DEFAULT_IMAGE, "-S", "--qmp", f"unix:{sock},server,wait=off",
                   "--serial", "none") as proc:

        async def until_signal() -> dict[str, Any]:
            client = qmp.QMPClient("test")
            await client.connect(str(sock))
            await client.execute("query-status")
            proc.send_signal(signal.SIGTERM)  # while paused in prelaunch
            event = await next_event(client, "SHUTDOWN")
            await hang_up(client)
            return event

        event = asyncio.run(until_signal())
        assert event["data"] == {"guest": False, "reason": "host-signal"}
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM


def test_guest_reset_sends_reset(assemble, tmp_path: Path) -> None:
    disk, sock, serial = tmp_path / "reset.img", tmp_path / "qmp.sock", tmp_path / "com1.txt"
    disk.write_bytes(assemble("%define RESET_ONCE\n" + MBR).ljust(64 << 10, b"\0"))
    with qemu_lite(str(disk), "-S", "--qmp", f"unix:{sock},server,wait=off", "--no-acpi",
                   "--serial", f"file:{serial}") as proc:

        async def session() -> dict[str, Any]:
            client = qmp.QMPClient("test")
            await client.connect(str(sock))
            with pytest.raises(qmp.ExecuteError) as err:  # --no-acpi: no power button
                await client.execute("system_powerdown")
            assert err.value.error_class == "GenericError" and "ACPI" in str(err.value)
            await client.execute("cont")
            event = await next_event(client, "RESET")
            wait_for(lambda: "mbr: up" in serial.read_text())
            await client.execute("quit")
            await hang_up(client)
            return event

        assert asyncio.run(session())["data"] == {"guest": True, "reason": "guest-reset"}
        assert serial.read_text().count("qemu_lite BIOS") == 2  # it booted twice
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("args, message", [
    (["--qmp", "unix:/tmp/x.sock"], "only listens; add ',server'"),
    (["--qmp", "tcp:localhost:99999,server"], "invalid --qmp"),
    (["--qmp", "unix:/tmp/x.sock,server,wait=maybe"], "invalid --qmp"),
    (["--qmp", "unix:/tmp/x.sock,server,colour=red"], "invalid --qmp option"),
    (["-incoming", "tcp:127.0.0.1:4444"], "file:PATH only"),
    (["-incoming", "file:/nonexistent/vm.state"], "cannot open saved state"),
])
def test_bad_qmp_options_are_usage_errors(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", *args], capture_output=True,
                          text=True, timeout=60, cwd=tempfile.gettempdir())
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_address_in_use_is_a_usage_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "qemu_lite", "--qmp",
                               f"tcp:127.0.0.1:{port},server,wait=off"], capture_output=True,
                              text=True, timeout=60, cwd=tempfile.gettempdir())
    assert proc.returncode == 2
    assert "cannot listen" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_signal_while_waiting_for_a_client(disk: Path, tmp_path: Path) -> None:
    with qemu_lite(str(disk), "--qmp", f"unix:{tmp_path / 'qmp.sock'},server,wait=on",
                   "--serial", "none") as proc:
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM


def _esp(registers: str) -> int:
    found = re.search(r"ESP=([0-9a-f]{8})", registers)
    assert found, registers
    return int(found[1], 16)


def test_smp_cpus_listed_selected_migrated_and_resumed(assemble, tmp_path: Path) -> None:
    kernel = tmp_path / "pingpong.bin"
    kernel.write_bytes(assemble(smpguest.source(work=3_000_000)))
    sock, serial, state = tmp_path / "qmp.sock", tmp_path / "com1.txt", tmp_path / "smp.state"
    machine = ("-smp", "2", "-m", "16M", "--vga", "none", "--kernel", str(kernel))
    saved: dict[str, str] = {}
    with qemu_lite(*machine, "--qmp", f"unix:{sock},server,wait=off",
                   "--serial", f"file:{serial}") as proc:

        async def session() -> None:
            client = qmp.QMPClient("smp")
            await client.connect(str(sock))
            cpus = await client.execute("query-cpus-fast")
            assert [(c["cpu-index"], c["qom-path"], c["props"], c["target"]) for c in cpus] == [
                (i, f"/machine/unattached/device[{i}]",
                 {"socket-id": 0, "core-id": i, "thread-id": 0}, "x86_64") for i in (0, 1)]
            thread = cpus[0]["thread-id"]
            assert cpus[1]["thread-id"] == thread  # thread=single: one host thread
            assert os.path.isdir(f"/proc/{proc.pid}/task/{thread}")
            wait_for(lambda: serial.read_text().count("\n") >= 2)
            await client.execute("stop")
            await next_event(client, "STOP")

            assert await hmp(client, "info cpus") == (f"* CPU #0: thread_id={thread}\n"
                                                      f"  CPU #1: thread_id={thread}\n")
            bsp = await hmp(client, "info registers")
            ap = await hmp(client, "info registers", cpu_index=1)
            # smpguest's stacks: the BSP's below 0x90000, the AP's below 0x70000.
            assert 0x80000 < _esp(bsp) <= 0x90000, bsp
            assert 0x60000 < _esp(ap) <= 0x70000, ap
            every = await hmp(client, "info registers -a")
            assert every == f"\nCPU#0\n{bsp}\nCPU#1\n{ap}"
            assert await hmp(client, "cpu 2") == "invalid CPU index\n"
            with pytest.raises(qmp.ExecuteError, match="CPU 2 is not online"):
                await hmp(client, "info registers", cpu_index=2)
            assert await hmp(client, "cpu 1") == ""  # lasts for this client
            assert await hmp(client, "info registers") == ap
            assert await hmp(client, "info cpus") == (f"  CPU #0: thread_id={thread}\n"
                                                      f"* CPU #1: thread_id={thread}\n")
            stack = await hmp(client, "x /2xw $esp")  # through the AP's registers
            assert stack.startswith(f"{_esp(ap):016x}:"), stack
            assert stack == await hmp(client, f"xp /2xw {_esp(ap):#x}")  # no paging here
            assert "CPU #1: protected mode" in await hmp(client, "info mmu")

            assert await client.execute("migrate", {"uri": f"file:{state}"}) == {}
            assert (await client.execute("query-migrate"))["status"] == "completed"
            saved.update(bsp=bsp, ap=ap)
            await client.execute("quit")
            await next_event(client, "SHUTDOWN")
            await hang_up(client)

        asyncio.run(session())
        assert proc.wait(timeout=30) == 0
    head = serial.read_text()
    assert 2 <= head.count("\n") < smpguest.LINES

    # -incoming: both vCPUs where they were, and the guest finishes its lines.
    serial2 = tmp_path / "com1-incoming.txt"
    with qemu_lite(*machine, "-S", "-incoming", f"file:{state}",
                   "--qmp", f"unix:{sock},server,wait=off", "--serial", f"file:{serial2}") as proc:

        async def resumed() -> None:
            client = qmp.QMPClient("incoming")
            await client.connect(str(sock))
            assert await hmp(client, "info registers") == saved["bsp"]
            assert await hmp(client, "info registers", cpu_index=1) == saved["ap"]
            await client.execute("cont")
            shutdown = await next_event(client, "SHUTDOWN")
            assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
            await hang_up(client)

        asyncio.run(resumed())
        assert proc.wait(timeout=120) == 1
    assert head + serial2.read_text() == smpguest.expected(work=3_000_000)
