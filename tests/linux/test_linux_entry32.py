"""The Linux 32-bit boot protocol entry (code32_start), as GRUB's ``linux`` command uses it:
Debian's x86-64 kernel entered in flat protected mode sets up its own long mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from images import initramfs, kernel

from qemu_lite import Machine
from qemu_lite.loaders import linux


@pytest.fixture(scope="module")
def initrd(tmp_path_factory) -> Path:
    return initramfs(tmp_path_factory.mktemp("linux32") / "initrd.cpio")


def test_debian_kernel_boots_to_busybox_through_the_32bit_entry(initrd):
    out = bytearray()
    with Machine(memory="512M") as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel(), "console=ttyS0 panic=-1", initrd, entry="32")
        assert m.reg("cs") == 0x10 and m.reg("ds") == 0x18
        assert m.reg("eip") == 0x100000 and m.reg("esi") == linux.BOOT_PARAMS
        result = m.run(timeout=300)
    text = out.decode(errors="replace")
    assert "qemu_lite init: userspace reached" in text, text[-3000:]
    assert result.reason == "powered-off"


def test_unknown_entry_is_refused(tmp_path):
    with Machine(memory="16M") as m, pytest.raises(ValueError, match="unknown Linux entry"):
        linux.load(m, tmp_path / "none", entry="8")
