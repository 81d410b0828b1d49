"""Host signals end a run whatever the guest does: the disks are flushed, the terminal is
restored, one line is printed and the exit status is 128 + the signal number."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

SECTOR_TAG = b"written before the signal"

# Write sector 1 of the primary master by ATA PIO, print "ready", then spin.  No interrupt
# may arrive (the guest has no IDT): the PICs are masked and the drive's IRQ is off (nIEN).
SPIN_AFTER_WRITE = r"""
    mov al, 0xFF
    out 0x21, al
    out 0xA1, al
    mov dx, 0x3F6
    mov al, 0x02              ; nIEN
    out dx, al
    mov dx, 0x1F6
    mov al, 0xE0              ; master, LBA
    out dx, al
    mov dx, 0x1F2
    mov al, 1                 ; one sector
    out dx, al
    mov dx, 0x1F3
    mov al, 1                 ; LBA 1
    out dx, al
    mov dx, 0x1F4
    xor al, al
    out dx, al
    mov dx, 0x1F5
    out dx, al
    mov dx, 0x1F7
    mov al, 0x30              ; WRITE SECTORS
    out dx, al
.drq:
    in al, dx
    test al, 0x08
    jz .drq
    mov esi, sector
    mov ecx, 256
    mov dx, 0x1F0
    rep outsw
    mov dx, 0x1F7
.busy:
    in al, dx
    test al, 0x80
    jnz .busy
    PRINT `ready\n`
    {spin}
sector:
    db "{tag}"
    times 512 - ($ - sector) db 0
"""

SPINS = {"sti-jmp": "sti\n    jmp $", "cli-jmp": "cli\n    jmp $",
         "sti-hlt": "sti\n.idle:\n    hlt\n    jmp .idle"}  # halted, no timer armed


def spin_kernel(assemble, tmp_path: Path, spin: str) -> Path:
    source = protected_mode_guest(SPIN_AFTER_WRITE.format(spin=SPINS[spin],
                                                          tag=SECTOR_TAG.decode()))
    kernel = tmp_path / "spin.bin"
    kernel.write_bytes(assemble(source))
    return kernel


def start_cli(kernel: Path, disk: Path, stdin: int | None = subprocess.DEVNULL,
              ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "qemu_lite", "--kernel", str(kernel), "-m", "32M",
         str(disk), "--serial", "stdio"],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=tempfile.gettempdir(), preexec_fn=_default_signals)


def _default_signals() -> None:
    """A signal ignored by whoever started pytest (``nohup``: SIGHUP) stays ignored in
    qemu-lite, as it should; these tests want the signals delivered."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def wait_for_ready(proc: subprocess.Popen[bytes], deadline: float = 60) -> None:
    assert proc.stdout is not None
    seen = b""
    end = time.monotonic() + deadline
    while b"ready" not in seen:
        remaining = end - time.monotonic()
        assert remaining > 0, f"the guest never printed ready: {seen!r}"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"qemu-lite exited early: {seen!r} {proc.stderr.read()!r}"  # type: ignore[union-attr]
            seen += chunk


@pytest.mark.parametrize("spin", sorted(SPINS))
@pytest.mark.parametrize("signum, line", [
    (signal.SIGINT, "qemu-lite: interrupted"),
    (signal.SIGTERM, "qemu-lite: terminated by SIGTERM"),
    (signal.SIGHUP, "qemu-lite: terminated by SIGHUP"),
])
def test_signal_ends_a_spinning_guest_and_flushes_the_disk(assemble, tmp_path, spin, signum,
                                                            line):
    kernel = spin_kernel(assemble, tmp_path, spin)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    proc = start_cli(kernel, disk)
    try:
        wait_for_ready(proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signum, err
    assert err.decode().strip().splitlines() == [line], err.decode()
    assert disk.read_bytes()[512:512 + len(SECTOR_TAG)] == SECTOR_TAG


def test_sigterm_restores_a_raw_terminal(assemble, tmp_path):
    kernel = spin_kernel(assemble, tmp_path, "cli-jmp")
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        proc = start_cli(kernel, disk, stdin=slave)
        try:
            wait_for_ready(proc)
            # With the console on stdio the backend put the terminal in raw mode.
            assert not termios.tcgetattr(slave)[3] & termios.ECHO
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 128 + signal.SIGTERM
        after = termios.tcgetattr(slave)
        assert after[3] & (termios.ECHO | termios.ICANON) == before[3] & (termios.ECHO
                                                                          | termios.ICANON)
    finally:
        os.close(master)
        os.close(slave)


def test_keyboard_interrupt_leaves_run_on_the_main_thread(assemble, tmp_path):
    """Machine.run of a guest that spins with interrupts off lets SIGINT through, and
    the machine can run again afterwards."""
    kernel = spin_kernel(assemble, tmp_path, "cli-jmp")
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    # Python's own SIGINT handler, whoever started pytest: a shell without job control
    # starts background commands with SIGINT ignored, and Python then installs none.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_a_spinning_run(kernel, disk)
    finally:
        signal.signal(signal.SIGINT, old)
    assert disk.read_bytes()[512:512 + len(SECTOR_TAG)] == SECTOR_TAG


def _interrupt_a_spinning_run(kernel: Path, disk: Path) -> None:
    with Machine(disk, memory="32M", serial="none") as m:
        multiboot.load(m, kernel)
        watchdog_fired = threading.Event()

        def watchdog() -> None:  # without the fix only this would end the run
            if not stopped.wait(30):
                watchdog_fired.set()
                m.stop()

        stopped = threading.Event()
        threading.Thread(target=watchdog, daemon=True).start()
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            m.run()
        stopped.set()
        assert not watchdog_fired.is_set()
        assert m.run(timeout=0.3).reason == "timeout"


def test_watch_signals_wraps_python_handlers_only():
    from qemu_lite._vcpu_hooks import signals_delivered, watch_signals

    seen = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        assert watch_signals([signal.SIGUSR1]) == [signal.SIGUSR1]
        assert watch_signals([signal.SIGUSR1]) == [signal.SIGUSR1]  # idempotent
        before = signals_delivered()
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):  # Python's handler runs between bytecodes
            if seen:
                break
            time.sleep(0.001)
        assert seen == [signal.SIGUSR1]  # Python's handler still runs, once
        assert signals_delivered() == before + 1
        for disposition in (signal.SIG_DFL, signal.SIG_IGN):
            signal.signal(signal.SIGUSR1, disposition)
            assert watch_signals([signal.SIGUSR1]) == []  # default and ignored stay so
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_stop_from_another_thread_ends_a_halted_guest(assemble, tmp_path):
    """Halted with interrupts on and no timer armed, the vCPU sleeps; stop() must still
    end the run (it used to wake the sleep, which then went back to sleeping)."""
    kernel = spin_kernel(assemble, tmp_path, "sti-hlt")
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 512))
    m = Machine(disk, memory="32M", serial="none")
    multiboot.load(m, kernel)
    results = []
    for stop in (m.stop, lambda: m.stop_at_next_block("signal", "by a test")):
        runner = threading.Thread(target=lambda: results.append(m.run()), daemon=True)
        runner.start()
        time.sleep(0.3)
        stop()
        runner.join(30)
        assert not runner.is_alive(), "the halted guest's run did not end"
    m.close()
    assert [(r.reason, r.message) for r in results] == [("stopped", ""),
                                                        ("signal", "by a test")]


def test_exceptions_in_mmio_callbacks_reach_run(assemble, tmp_path, monkeypatch):
    """An MMIO device that raises (a bug, or KeyboardInterrupt from a signal handler)
    ends the run with that exception; the binding's ctypes callback never sees it."""

    class Broken:
        def io_read(self, offset: int, size: int) -> int:
            raise KeyboardInterrupt

        def io_write(self, offset: int, size: int, value: int) -> None:
            raise ValueError("device bug")

    body = r"""
    mov eax, [0xE0000000]
    PRINT `FAIL: kept running\n`
    cli
    hlt
"""
    dropped: list[object] = []  # what ctypes would report as "Exception ignored"
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    for store, expected in ((False, KeyboardInterrupt), (True, ValueError)):
        source = protected_mode_guest(body.replace("mov eax, [0xE0000000]",
                                                   "mov [0xE0000000], eax" if store
                                                   else "mov eax, [0xE0000000]"))
        kernel = tmp_path / "mmio.bin"
        kernel.write_bytes(assemble(source))
        out = bytearray()
        with Machine(memory="32M", serial="none") as m:
            m.add_mmio(0xE0000000, 0x1000, Broken())
            m.board.com1.add_output_listener(out.extend)
            multiboot.load(m, kernel)
            with pytest.raises(expected):
                m.run(timeout=30)
        assert b"FAIL" not in out
    assert dropped == []
