"""A real root disk: Debian's kernel with Debian's own initramfs (initramfs-tools: udev,
module loading) finds an ext4 filesystem on our IDE disk by its label, mounts it and runs
its init (busybox) to a ``login:`` prompt on the serial console; the test logs in as root
through the pty, with a password, and runs a command.

The kernel ticks on the PIT as a one-shot timer through the 8259 and the local APIC's
virtual wire (ExtINT on LINT0): ``nolapic_timer`` keeps the APIC's timer out of it,
``noapic`` the IOAPIC, and ``lapic=notscdeadline`` is what makes Linux use the PIT at all.
Linux 6.1's ``apic_needs_pit()`` skips the PIT on a CPU with ARAT and the TSC-deadline
timer, whatever ``nolapic_timer`` says ("the deadline timer is based on TSC"); with our
CPUID offering both and no HPET (``hpet=False`` here: the board has one by default, and
Linux would tick on it), plain ``nolapic_timer`` left the kernel
without any clock event device: it stopped the PIT (``clockevent_i8253_disable``) and
idled for good in the libata probe's first sleep, every time, whatever the host's load.
The test checks in the guest that the tick is the PIT's and that IRQ 0 arrived through
the 8259."""

from __future__ import annotations

import os
import re
import select
import threading
import time
from pathlib import Path

import pytest
from images import kernel

from qemu_lite import Machine, imagebuild
from qemu_lite.loaders import linux

PASSWORD = "qemu-lite-secret"


class Typist:
    """Reads the pty's output and answers each expected prompt in turn (its own thread)."""

    def __init__(self, fd: int, script: list[tuple[str, str]], deadline: float) -> None:
        self.fd, self.script, self.deadline = fd, script, deadline
        self.seen = bytearray()
        self.done: list[str] = []
        self.thread = threading.Thread(target=self._run, name="typist", daemon=True)

    def _run(self) -> None:
        start = 0
        for expect, answer in self.script:
            while True:
                found = self.seen.find(expect.encode(), start)
                if found >= 0:
                    start = found + len(expect)
                    break
                if time.monotonic() > self.deadline:
                    return
                ready, _, _ = select.select([self.fd], [], [], 0.5)
                if ready:
                    try:
                        self.seen += os.read(self.fd, 4096)
                    except OSError:
                        return
            self.done.append(expect)
            time.sleep(0.3)  # getty/login flush their input when they start reading
            os.write(self.fd, answer.encode())


@pytest.fixture(scope="module")
def root_disk(tmp_path_factory) -> Path:
    try:
        return imagebuild.busybox_root_image(tmp_path_factory.mktemp("root") / "root.ext4",
                                             PASSWORD)
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def debian_initrd(tmp_path_factory) -> str:
    try:
        return imagebuild.debian_initrd(tmp_path_factory.mktemp("initrd"), kernel())
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))


def test_debian_initramfs_mounts_ext4_root_on_ide_and_root_logs_in(root_disk, debian_initrd,
                                                                     capfd):
    script = [
        ("login: ", "root\r"),
        ("Password: ", PASSWORD + "\r"),
        ("# ", "echo logged-in-as-$(busybox id -u) on $(busybox grep ' / ext4' /proc/mounts)\r"),
        ("logged-in-as-0 on /dev/sda / ext4", "echo tick-$(busybox cat "
         "/sys/devices/system/clockevents/clockevent0/current_device) "
         "$(busybox grep ' timer' /proc/interrupts) end-$((6 * 7))\r"),
        ("end-42", "poweroff -f\r"),  # the output, not the echo of the command
    ]
    with Machine(disk=root_disk, memory="512M", serial="pty", snapshot=True,
                 hpet=False) as m:
        pts = capfd.readouterr().err.split("redirected to ")[1].split()[0]
        fd = os.open(pts, os.O_RDWR | os.O_NOCTTY)
        typist = Typist(fd, script, time.monotonic() + 600)
        try:
            linux.load(m, kernel(), "root=LABEL=qlroot rw console=ttyS0 panic=-1 "
                       "nolapic_timer noapic lapic=notscdeadline", debian_initrd)
            typist.thread.start()
            result = m.run(timeout=600)
        finally:
            typist.deadline = 0
            typist.thread.join()
            os.close(fd)
    text = typist.seen.decode(errors="replace")
    assert typist.done == [expect for expect, _ in script], text[-4000:]
    assert "Begin: Loading essential drivers" in text or "Loading, please wait" in text
    assert result.reason == "powered-off", result  # ACPI S5
    tick = re.search(r"tick-(\S+) +0: +(\d+) +XT-PIC +timer", text)
    assert tick is not None, text[-2000:]
    assert tick.group(1) == "pit" and int(tick.group(2)) > 0, tick.group(0)
