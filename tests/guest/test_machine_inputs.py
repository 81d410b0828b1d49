"""Machine's arguments and host resources: checked at once, COM2 wired, locks released."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.devices.block import BlockImage
from qemu_lite.loaders import multiboot
from qemu_lite.machine import bundled_firmware_path
from qemu_lite.pc import Drive

COM2_HELLO = protected_mode_guest(r"""
    mov esi, message
.next:
    lodsb
    test al, al
    jz .done
    mov ah, al
    mov dx, 0x2FD
.wait:
    in al, dx
    test al, 0x20             ; THR empty
    jz .wait
    mov al, ah
    mov dx, 0x2F8
    out dx, al
    jmp .next
.done:
    PRINT "com1 only"
    mov al, 0
    call exit
message: db "hello on com2", 10, 0
""")


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "d.img"
    shutil.copy(bundled_firmware_path("default.img"), path)
    return path


def test_guest_writes_to_0x2f8_reach_serial2(assemble, tmp_path):
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(COM2_HELLO))
    com1, com2 = bytearray(), bytearray()
    with Machine(memory="16M", serial="none", serial2="null") as m:
        assert m.board.com2 is not None
        m.board.com1.add_output_listener(com1.extend)
        m.board.com2.add_output_listener(com2.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=20)
    assert (result.reason, result.exit_status) == ("exit", 1)
    assert bytes(com2) == b"hello on com2\n"
    assert bytes(com1) == b"com1 only"


def test_cli_serial2_file_receives_com2(assemble, tmp_path):
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(COM2_HELLO))
    out1, out2 = tmp_path / "com1.txt", tmp_path / "com2.txt"
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "16M", "--kernel",
                           str(kernel), "--serial", f"file:{out1}", "--serial2", f"file:{out2}",
                           "--timeout", "30"], capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 1, proc.stderr
    assert out2.read_bytes() == b"hello on com2\n"
    assert out1.read_bytes() == b"com1 only"


def test_without_serial2_there_is_no_com2():
    with Machine(memory="16M") as m:
        assert m.board.com2 is None


def test_dropped_machine_releases_its_image_lock_with_a_resource_warning(disk):
    m = Machine(disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del m
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "not closed" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    with Machine(disk):  # the lock is free again
        pass


def test_dropped_machine_with_a_serial_reader_thread_is_collected(disk, tmp_path):
    # A backend's reader thread must not keep the Machine (and the image lock) alive.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        m = Machine(disk, serial="loop://")
        del m
        gc.collect()
    BlockImage.open(disk).close()


def test_closed_machine_gives_no_resource_warning(disk):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Machine(disk):
            pass
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)
                and "Machine" in str(w.message)]


def _rss_kib() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])


def test_close_gives_the_guest_ram_back_and_ends_the_machine(disk):
    # The machine's objects hold each other in cycles, so the Core (and its RAM) is freed
    # only when garbage collection gets to it: close() must not wait for that.
    with Machine(disk, memory="128M", snapshot=True) as m:
        m.write_memory(0x200000, b"\x5a" * (96 << 20))
        before = _rss_kib()
    assert before - _rss_kib() >= 90 << 10, "the guest RAM's pages are still resident"
    for use in (lambda: m.run(timeout=1), lambda: m.read_memory(0, 1),
                lambda: m.write_memory(0x1000, b"x"), m.snapshot):
        with pytest.raises(ValueError, match="the machine is closed"):
            use()
    m.close()  # again: nothing to do


def test_failed_construction_releases_the_disks_it_opened(disk):
    with pytest.raises(ValueError, match="port must be"):
        Machine(disk, serial="socket://localhost:0")
    with pytest.raises(ValueError, match="cannot open serial backend"):
        Machine(disk, serial2="nosuchscheme://x")
    BlockImage.open(disk).close()


def test_same_image_twice_in_one_machine_says_given_twice(disk, tmp_path):
    with pytest.raises(ValueError, match="given twice"):
        Machine(disk, hdb=disk)
    link = tmp_path / "other-name.img"
    os.symlink(disk, link)
    with pytest.raises(ValueError, match="given twice"):
        Machine(disk, drives=[Drive(link, index=2)])
    # Two read-only uses share the file, as in QEMU.
    with Machine(drives=[Drive(disk, readonly=True), Drive(link, readonly=True)]):
        pass


def test_serial_file_that_is_the_disk_is_refused_and_the_disk_kept(disk):
    before = disk.read_bytes()
    with pytest.raises(ValueError, match="refusing to overwrite"):
        Machine(disk, serial=f"file:{disk}")
    assert disk.read_bytes() == before


@pytest.mark.parametrize("kwargs, error, name", [
    ({"memory": 1.5}, TypeError, "memory"),
    ({"memory": None}, TypeError, "memory"),
    ({"memory": True}, TypeError, "memory"),
    ({"memory": "inf"}, ValueError, "memory size"),
    ({"memory": "nan"}, ValueError, "memory size"),
    ({"memory": -4096}, ValueError, "memory size"),
    ({"rtc_base": "x"}, TypeError, "rtc_base"),
    ({"rtc_base": float("nan")}, ValueError, "rtc_base"),
    ({"rtc_base": 1e300}, ValueError, "rtc_base"),
    ({"bios": 123}, TypeError, "bios"),
    ({"bios": 1.0}, TypeError, "bios"),
    ({"serial": 3}, TypeError, "serial"),
    ({"serial2": b"stdio"}, TypeError, "serial2"),
    ({"disk": 7}, TypeError, "disk"),
    ({"drives": ["x.img"]}, TypeError, "drives"),
    ({"mmu": 3}, ValueError, "MMU mode"),
])
def test_bad_arguments_fail_at_once_naming_the_argument(kwargs, error, name):
    with pytest.raises(error, match=name):
        Machine(**kwargs)


def test_bios_number_never_opens_that_file_descriptor(tmp_path):
    fd = os.open(tmp_path / "victim", os.O_CREAT | os.O_RDWR)
    try:
        with pytest.raises(TypeError, match="bios"):
            Machine(bios=fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # nobody read from it
        os.fstat(fd)  # and nobody closed it
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["dir", "fifo", "null"])
def test_bios_path_that_is_not_a_regular_file_is_named(tmp_path, kind):
    path = {"dir": tmp_path, "null": Path("/dev/null"), "fifo": tmp_path / "fifo"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(ValueError, match="cannot open BIOS .*(directory|not a regular file)"):
        Machine(bios=path)
