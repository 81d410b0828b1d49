"""A booting Debian kernel driven over QMP with the real client library (``qemu.qmp``):
query-status, stop (the console stays silent while paused), cont, HMP ``info
registers`` in long mode, migrate to a file, system_reset (the CPU back at the reset
vector) and quit; then a second process started with ``-incoming`` from that file,
where the guest continues (its ticks go on, no second boot) until ``system_powerdown``:
POWERDOWN, the guest's own ``poweroff`` through ACPI S5, SHUTDOWN, and (``-no-shutdown``)
the status ``shutdown`` until quit."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from images import kernel, power_button_initramfs
from qmpclient import hang_up, next_event, qemu_lite

qmp = pytest.importorskip("qemu.qmp", reason="qemu.qmp (pip install qemu.qmp) drives the QMP "
                          "tests; it is in the test extra")

# Userspace ticks until the power button is pressed, then powers off.  The button
# driver (a module in Debian's kernel) owns ACPI's fixed power button; sysfs counts
# the kernel's SCIs for it.
INIT = r"""
busybox mkdir -p /sys /proc
busybox mount -t sysfs sysfs /sys
busybox insmod /button.ko || busybox echo "insmod button.ko failed"
count() { busybox awk '{print $1}' /sys/firmware/acpi/interrupts/ff_pwr_btn; }
busybox echo "qemu_lite init: userspace reached"
n=0
while [ "$(count)" = 0 ]; do
    busybox sleep 0.2
    n=$((n + 1))
    busybox echo "tick $n"
done
busybox echo "qemu_lite init: power button events $(count)"
busybox poweroff -f
"""
MARK = "qemu_lite init: userspace reached"


async def _wait_for_text(path: Path, text: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < end, path.read_text(errors="replace")[-3000:]
        await asyncio.sleep(0.1)


def _ticks(path: Path) -> list[int]:
    text = path.read_text(errors="replace")
    return [int(n) for n in re.findall(r"^tick (\d+)\n", text, re.M)]  # whole lines only


def test_linux_guest_over_qmp_migrates_and_powers_down(tmp_path: Path) -> None:
    vmlinuz = kernel()
    initrd = power_button_initramfs(tmp_path / "initrd.cpio", INIT)
    sock, serial, state = tmp_path / "qmp.sock", tmp_path / "console.txt", tmp_path / "vm.state"
    machine = ["-m", "512M", "--kernel", vmlinuz, "--initrd", str(initrd),
               "--append", "console=ttyS0 panic=-1", "--timeout", "300"]
    with qemu_lite(*machine, "--qmp", f"unix:{sock},server,wait=off",
                     "--serial", f"file:{serial}") as proc:

        async def boot_and_migrate() -> None:
            client = qmp.QMPClient("linux")
            await client.connect(str(sock))
            assert (await client.execute("query-status"))["status"] == "running"
            await _wait_for_text(serial, "Linux version", 120)

            # Paused mid-boot: the kernel prints nothing while stopped.
            await client.execute("stop")
            await next_event(client, "STOP", 120)
            assert (await client.execute("query-status"))["status"] == "paused"
            quiet = serial.stat().st_size
            await asyncio.sleep(1.0)
            assert serial.stat().st_size == quiet
            await client.execute("cont")
            await next_event(client, "RESUME", 120)
            await _wait_for_text(serial, "tick 3", 240)

            await client.execute("stop")
            await next_event(client, "STOP", 120)
            regs = str(await client.execute("human-monitor-command",
                                            {"command-line": "info registers"}))
            rip = re.search(r"RIP=([0-9a-f]{16})", regs)
            efer = re.search(r"EFER=([0-9a-f]{16})", regs)
            assert rip and efer, regs
            assert int(efer[1], 16) & 0x400  # EFER.LMA: a 64-bit kernel
            assert re.search(r"CR3=[0-9a-f]{16}", regs)
            mode = await client.execute("x-qemu-lite-query-cpu-mode")
            assert mode["mode"] == "long" and mode["paging"]
            await client.execute("cont")
            await next_event(client, "RESUME", 120)

            # Migrated while running: the guest stops, its state is written, the
            # source stays in postmigrate.
            assert await client.execute("migrate", {"uri": f"file:{state}"}) == {}
            await next_event(client, "STOP", 120)
            assert (await client.execute("query-migrate"))["status"] == "completed"
            assert (await client.execute("query-status")) == {"status": "postmigrate",
                                                              "running": False}

            await client.execute("system_reset")
            reset = await next_event(client, "RESET", 120)
            assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
            regs = str(await client.execute("human-monitor-command",
                                            {"command-line": "info registers"}))
            assert "EIP=0000fff0" in regs and "CS =f000" in regs, regs  # the reset vector

            await client.execute("quit")
            shutdown = await next_event(client, "SHUTDOWN", 120)
            assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
            await hang_up(client)

        asyncio.run(boot_and_migrate())
        assert proc.wait(timeout=60) == 0
    first = serial.read_text(errors="replace")
    assert "Linux version" in first and MARK in first
    saved_ticks = _ticks(serial)[-1]

    serial2 = tmp_path / "console2.txt"
    with qemu_lite(*machine, "-incoming", f"file:{state}", "-no-shutdown",
                     "--qmp", f"unix:{sock},server,wait=off",
                     "--serial", f"file:{serial2}") as proc:

        async def continue_and_power_down() -> None:
            client = qmp.QMPClient("incoming")
            await client.connect(str(sock))
            assert (await client.execute("query-status"))["status"] == "running"
            await _wait_for_text(serial2, f"tick {saved_ticks + 3}\n", 120)
            assert await client.execute("system_powerdown") == {}
            await next_event(client, "POWERDOWN", 120)
            shutdown = await next_event(client, "SHUTDOWN", 120)
            assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
            assert await client.execute("query-status") == {"status": "shutdown",
                                                            "running": False}
            with pytest.raises(qmp.ExecuteError) as err:
                await client.execute("cont")
            assert "Resetting the Virtual Machine is required" in str(err.value)
            await client.execute("quit")
            await next_event(client, "SHUTDOWN", 120)
            await hang_up(client)

        asyncio.run(continue_and_power_down())
        assert proc.wait(timeout=60) == 0
    text = serial2.read_text(errors="replace")
    ticks = _ticks(serial2)
    assert "Linux version" not in text and MARK not in text, text[:2000]  # no second boot
    assert ticks and ticks[0] <= saved_ticks + 2, (saved_ticks, ticks[:3])  # where it was
    assert ticks == list(range(ticks[0], ticks[-1] + 1))  # counting on, none lost
    assert "qemu_lite init: power button events 1" in text, text[-2000:]
    assert "reboot: Power down" in text
