"""--save-on-exit writes the state when a signal or the time budget ends the run;
--restore starts from it and the guest carries on where it was."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import smpguest
from guestlib import protected_mode_guest

# Prints "count N" for N = 1..LINES with some work between lines, then exits (status 1).
LINES = 60
COUNTER = r"""
main:
    mov ebx, 0
.line:
    inc ebx
    mov ecx, 3000000
.work:
    imul eax, eax, 3
    loop .work
    PRINT "count "
    mov eax, ebx
    call puthex
    mov al, 10
    call putc
    cmp ebx, LINES
    jb .line
    mov al, 0
    call exit
""".replace("LINES", str(LINES))

EXPECTED = "".join(f"count {n:08X}\n" for n in range(1, LINES + 1))


def _cli(*args: str, **kw) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "qemu_lite", "-m", "16M", "--vga", "none",
                             "--deterministic", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tempfile.gettempdir(), **kw)


def test_signal_saves_the_state_and_restore_finishes_the_run(assemble, tmp_path: Path):
    kernel = tmp_path / "counter.bin"
    kernel.write_bytes(assemble(protected_mode_guest(COUNTER)))
    state, first, second = tmp_path / "run.qlstate", tmp_path / "one.txt", tmp_path / "two.txt"

    proc = _cli("--kernel", str(kernel), "--serial", f"file:{first}",
                "--save-on-exit", str(state))
    deadline = time.monotonic() + 120
    while not (first.exists() and first.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the guest printed nothing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"state saved to {state}".encode() in err
    head = first.read_text()
    assert 3 <= head.count("\n") < LINES

    proc = _cli("--kernel", str(kernel), "--serial", f"file:{second}", "--restore", str(state))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert head + second.read_text() == EXPECTED


def test_time_budget_saves_the_state(assemble, tmp_path: Path):
    kernel = tmp_path / "counter.bin"
    kernel.write_bytes(assemble(protected_mode_guest(COUNTER)))
    state = tmp_path / "run.qlstate"
    proc = _cli("--kernel", str(kernel), "--serial", "none", "--timeout", "0.2",
                "--save-on-exit", str(state))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert state.is_file()


def test_restore_errors_are_one_line_and_status_2(assemble, tmp_path: Path):
    kernel = tmp_path / "counter.bin"
    kernel.write_bytes(assemble(protected_mode_guest(COUNTER)))
    bogus = tmp_path / "bogus.qlstate"
    bogus.write_bytes(b"nothing here")
    proc = _cli("--kernel", str(kernel), "--serial", "none", "--restore", str(bogus))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.decode().count("\n") == 1 and "not a qemu_lite state file" in err.decode()
    # The state of a 16M machine does not go into a 32M one.
    state = tmp_path / "s.qlstate"
    proc = _cli("--kernel", str(kernel), "--serial", "none", "--timeout", "0.2",
                "--save-on-exit", str(state))
    proc.communicate(timeout=120)
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "32M", "--vga", "none",
                           "--deterministic", "--kernel", str(kernel), "--serial", "none",
                           "--restore", str(state)], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), timeout=120)
    assert proc.returncode == 2 and "RAM size" in proc.stderr, proc.stderr
    # --save-on-exit onto an input is refused before anything runs.
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "--kernel", str(kernel),
                           "--save-on-exit", str(kernel)], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), timeout=120)
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr
    assert kernel.stat().st_size > 0


def test_smp_guest_saved_on_a_signal_resumes_in_a_new_process(assemble, tmp_path: Path):
    kernel = tmp_path / "pingpong.bin"
    kernel.write_bytes(assemble(smpguest.source(work=3_000_000)))  # slower: time to signal
    expected = smpguest.expected(work=3_000_000)
    state, first, second = tmp_path / "smp.qlstate", tmp_path / "one.txt", tmp_path / "two.txt"
    base = [sys.executable, "-m", "qemu_lite", "-m", "16M", "--vga", "none", "--kernel",
            str(kernel)]
    proc = subprocess.Popen([*base, "-smp", "2", "--serial", f"file:{first}",
                             "--save-on-exit", str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    deadline = time.monotonic() + 120
    while not (first.exists() and first.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the guest printed nothing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    head = first.read_text()
    assert 2 <= head.count("\n") < smpguest.LINES, head

    one = subprocess.run([*base, "--serial", "none", "--restore", str(state)],
                         capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=120)
    assert one.returncode == 2, one.stderr
    assert "CPUs (-smp) 2 there, 1 here" in one.stderr and one.stderr.count("\n") == 1

    proc2 = subprocess.run([*base, "-smp", "2", "--serial", f"file:{second}", "--restore",
                            str(state)], capture_output=True, cwd=tempfile.gettempdir(),
                           timeout=300)
    assert proc2.returncode == 1, proc2.stderr
    assert head + second.read_text() == expected
