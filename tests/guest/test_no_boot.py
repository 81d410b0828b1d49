"""'No bootable device' is never success: the BIOS reports it on qemu_lite's firmware event
port, and the CLI exits 10, or 12 when the guest had reset the machine first (a crashed kernel
whose reboot finds nothing to boot)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from guestlib import protected_mode_guest, run_multiboot_guest

from qemu_lite import Machine

NO_BOOT, NO_BOOT_AFTER_RESET, CRASH = 10, 12, 6


def qemu_lite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_lite", "--timeout", "30", *args],
                          capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


# Empty IDT, then a fault: #GP -> #DF -> triple fault.
TRIPLE_FAULT_KERNEL = protected_mode_guest(r"""
    PRINT `crashing\n`
    lidt [empty_idtr]
    int3
    PRINT `FAIL: no crash\n`
    jmp $
empty_idtr:
    dw 0
    dd 0
""")

# A boot sector that zeroes itself on the disk (ATA PIO, LBA 0), then triple-faults: after
# the reset the BIOS reads the same disk and finds no boot signature.
SELF_WIPING_MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov di, 0x1000          ; a zeroed sector to write
    mov cx, 256
    rep stosw
    mov dx, 0x1F6
    mov al, 0xE0            ; master, LBA
    out dx, al
    mov dx, 0x1F2
    mov al, 1
    out dx, al
    xor al, al
    mov dx, 0x1F3
    out dx, al
    mov dx, 0x1F4
    out dx, al
    mov dx, 0x1F5
    out dx, al
    mov dx, 0x1F7
    mov al, 0x30            ; WRITE SECTORS
    out dx, al
.drq:
    in al, dx
    test al, 0x08
    jz .drq
    mov si, 0x1000
    mov cx, 256
    mov dx, 0x1F0
    rep outsw
    mov dx, 0x1F7
.busy:
    in al, dx
    test al, 0x80
    jnz .busy
    lidt [empty_idtr]
    int3
    jmp $
empty_idtr:
    dw 0
    dd 0
    times 510 - ($ - $$) db 0
    db 0x55, 0xAA
"""


def test_blank_disk_exits_10(tmp_path):
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(64 * 512))
    proc = qemu_lite(str(disk), "--serial", "stdio")
    assert "No bootable disk" in proc.stdout
    assert proc.returncode == NO_BOOT, proc.stderr
    assert proc.stderr.strip() == "qemu-lite: No bootable device"


def test_blank_disk_through_the_api(tmp_path):
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(64 * 512))
    with Machine(disk, memory="16M") as m:
        result = m.run(timeout=30)
    assert result.reason == "no-boot" and m.guest_resets == 0


def test_crashing_kernel_then_nothing_to_boot_exits_12(assemble, tmp_path):
    kernel = tmp_path / "crash.bin"
    kernel.write_bytes(assemble(TRIPLE_FAULT_KERNEL))
    proc = qemu_lite("--kernel", str(kernel), "--serial", "stdio")
    assert "crashing" in proc.stdout and "FAIL" not in proc.stdout
    assert "No bootable disk" in proc.stdout  # the BIOS ran after the reset
    assert proc.returncode == NO_BOOT_AFTER_RESET, proc.stderr
    assert "after the guest reset" in proc.stderr
    # Under --no-reboot the same crash ends the run at the triple fault.
    proc = qemu_lite("--kernel", str(kernel), "--serial", "none", "--no-reboot")
    assert proc.returncode == CRASH, proc.stderr


def test_boot_sector_that_wipes_itself_and_crashes_exits_12(assemble, tmp_path: Path):
    disk = tmp_path / "wipe.img"
    disk.write_bytes(assemble(SELF_WIPING_MBR) + bytes(63 * 512))
    proc = qemu_lite(str(disk), "--serial", "stdio")
    assert "Booting from hard disk" in proc.stdout
    assert "not bootable" in proc.stdout  # the second boot saw the wiped sector
    assert proc.returncode == NO_BOOT_AFTER_RESET, proc.stderr
    assert disk.read_bytes()[:512] == bytes(512)


def test_guest_writes_to_the_event_port_without_the_magic_are_ignored(assemble, tmp_path):
    body = r"""
    mov dx, 0x5F4
    mov ax, 1
    out dx, ax              ; 16 bits
    mov eax, 1
    out dx, eax             ; no magic
    mov dx, 0x5F5
    mov eax, 0x514C0001
    out dx, eax             ; magic, wrong port
    PRINT `still running\n`
    cli
    hlt
"""
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(body))
    assert out == "still running\n"
    assert result.reason == "halted"
