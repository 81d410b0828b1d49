"""The Linux boot protocol's 16-bit entry, the one QEMU's ``-kernel`` takes: the kernel's
own real-mode setup code runs after our BIOS's POST and asks the BIOS for what it needs
(the E820 map, the video mode, the keyboard, the disks) before it enters protected mode.
A reset loads the kernel again, so a guest that reboots boots the same kernel again."""

from __future__ import annotations

from pathlib import Path

import pytest
from images import initramfs, kernel

from qemu_lite import Machine
from qemu_lite.loaders import linux

INIT = """\
busybox echo "linux16: userspace reached"
busybox reboot -f
"""


def test_debian_kernel_boots_through_the_bios_and_again_after_a_reboot(tmp_path: Path) -> None:
    initrd = initramfs(tmp_path / "initrd.cpio", INIT)
    out = bytearray()
    with Machine(memory="256M") as m:
        def listen(data: bytes) -> None:
            out.extend(data)
            if out.count(b"linux16: userspace reached") == 2:
                m.stop_at_next_block("booted twice")

        m.board.com1.add_output_listener(listen)
        linux.load(m, kernel(), "console=ttyS0", initrd, entry="16")
        result = m.run(timeout=300)
    text = out.decode(errors="replace")
    assert result.reason == "booted twice", (result, text[-3000:])
    assert text.count("Booting Linux (16-bit entry)") == 2, text[-3000:]
    assert "Probing EDD" in text  # the setup code's own message, through INT 10h
    # The setup code's own E820 calls (INT 15h) found our BIOS's map, reserved EBDA included.
    assert "BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved" in text, text[:4000]
    assert "reboot: Restarting system" in text


def test_a_kernel_too_old_for_any_entry_is_refused(tmp_path: Path) -> None:
    image = bytearray(Path(kernel()).read_bytes()[:0x4000])
    image[0x206:0x208] = (0x201).to_bytes(2, "little")  # boot protocol 2.01
    old = tmp_path / "old-bzImage"
    old.write_bytes(bytes(image))
    with Machine(memory="64M") as m, pytest.raises(linux.LinuxBootError,
                                                    match=r"boot protocol 2\.01 is too old"):
        linux.load(m, old)


def test_setup_code_too_large_for_the_real_mode_area_is_refused(tmp_path: Path) -> None:
    image = bytearray(Path(kernel()).read_bytes())
    image[0x1F1] = 100  # 101 sectors of setup: 50.5 KiB, past the 32 KiB boot.rst allows
    big = tmp_path / "big-setup"
    big.write_bytes(bytes(image))
    with Machine(memory="256M") as m, pytest.raises(linux.LinuxBootError,
                                                     match="real-mode setup code do not fit"):
        linux.load(m, big, entry="16")
