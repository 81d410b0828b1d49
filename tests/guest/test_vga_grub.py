"""GRUB with no serial configuration shows its menu on the VGA; keys choose the entry."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from qemu_lite import Machine, imagebuild
from qemu_lite.display.vgaboard import find_vga_bios

pytestmark = pytest.mark.skipif(find_vga_bios() is None,
                                reason="no vgabios-stdvga.bin (Debian: apt-get install seabios)")

MARKER = "qemu_lite init: chosen from the VGA menu"
GRUB_CFG = """\
set timeout=-1
menuentry "qemu_lite: halt here" {
    halt
}
menuentry "qemu_lite: Debian kernel" {
    linux /vmlinuz console=ttyS0 panic=-1
    initrd /initrd.img
}
"""


def grub_menu_image(workdir: Path) -> Path:
    mkrescue = shutil.which("grub-mkrescue")
    if mkrescue is None or not os.path.isdir("/usr/lib/grub/i386-pc") or \
            shutil.which("xorriso") is None or shutil.which("mformat") is None:
        pytest.skip("needs grub-mkrescue, grub-pc-bin, xorriso and mtools")
    root = workdir / "iso"
    (root / "boot" / "grub").mkdir(parents=True)
    (root / "boot" / "grub" / "grub.cfg").write_text(GRUB_CFG)
    try:
        shutil.copyfile(imagebuild.find_kernel(), root / "vmlinuz")
        imagebuild.write_initramfs(root / "initrd.img",
                                   f'busybox echo "{MARKER}"\nbusybox poweroff -f\n')
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    image = workdir / "grub.img"
    subprocess.run([mkrescue, "-o", str(image), str(root)], check=True, capture_output=True)
    return image


def test_grub_menu_on_the_screen_and_a_key_boots_the_second_entry(tmp_path) -> None:
    image = grub_menu_image(tmp_path)
    out = bytearray()
    seen: list[list[str]] = []
    with Machine(str(image), memory="512M", snapshot=True) as m:
        m.board.com1.add_output_listener(out.extend)

        def user() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                lines = m.screen_text()
                if any("qemu_lite: Debian kernel" in line for line in lines):
                    seen.append(lines)
                    m.send_key("down")
                    m.send_key("ret")
                    return
                time.sleep(0.1)

        t = threading.Thread(target=user)
        t.start()
        result = m.run(timeout=240)
        t.join()
    assert seen, "the GRUB menu never appeared on the screen"
    menu = "\n".join(seen[0])
    assert "GNU GRUB" in menu
    assert menu.index("qemu_lite: halt here") < menu.index("qemu_lite: Debian kernel")
    text = out.decode(errors="replace")
    assert MARKER in text, text[-2000:]
    assert result.reason == "powered-off"
