"""Debian's kernel drives the std-vga with bochs-drm (loaded from the initramfs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qemu_lite import Machine, imagebuild
from qemu_lite.initramfs import S_IFDIR, S_IFLNK, S_IFREG, cpio_newc
from qemu_lite.loaders import linux

# bochs.ko and what modules.dep says it needs, in load order.
MODULES = ["drm", "drm_kms_helper", "ttm/ttm", "drm_ttm_helper", "drm_vram_helper", "tiny/bochs"]
MARKER = "qemu_lite init: bochs loaded"


def _kernel_and_modules() -> tuple[str, Path, str]:
    try:
        kernel = imagebuild.find_kernel()
        busybox = imagebuild.find_busybox()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    release = os.path.basename(kernel).removeprefix("vmlinuz-")
    drm = Path("/lib/modules") / release / "kernel/drivers/gpu/drm"
    if not (drm / "tiny/bochs.ko").is_file():
        pytest.skip(f"no bochs.ko for {release} under {drm} (uncompressed modules needed)")
    return kernel, drm, busybox


def test_bochs_drm_gets_a_1024x768_framebuffer_and_draws_the_console(tmp_path) -> None:
    pytest.importorskip("PIL", reason="needs Pillow")
    kernel, drm, busybox = _kernel_and_modules()
    entries = [("bin", S_IFDIR | 0o755, b""), ("bin/busybox", S_IFREG | 0o755,
                                                  Path(busybox).read_bytes()),
               ("bin/sh", S_IFLNK | 0o777, b"busybox"), ("lib", S_IFDIR | 0o755, b"")]
    script = "#!/bin/busybox sh\n"
    for name in MODULES:
        leaf = name.rsplit("/", 1)[-1] + ".ko"
        entries.append((f"lib/{leaf}", S_IFREG | 0o644, (drm / f"{name}.ko").read_bytes()))
        script += f"busybox insmod /lib/{leaf}\n"
    script += f'busybox sleep 1\nbusybox echo "{MARKER}"\nbusybox poweroff -f\n'
    entries.append(("init", S_IFREG | 0o755, script.encode()))
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(cpio_newc(entries))
    out = bytearray()
    with Machine(memory="512M") as m:
        m.board.com1.add_output_listener(out.extend)
        linux.load(m, kernel, "console=tty0 console=ttyS0 panic=-1", initrd)
        result = m.run(timeout=300)
        image = m.screenshot()
    text = out.decode(errors="replace")
    assert MARKER in text, text[-3000:]
    assert result.reason == "powered-off"
    assert "[drm] Initialized bochs-drm" in text, text[-3000:]
    # 128x48 characters of 8x16: the framebuffer is 1024x768.
    assert "Console: switching to colour frame buffer device 128x48" in text
    assert image.size == (1024, 768)
    # fbcon drew the kernel's messages: the top text rows are not one flat colour.
    top = image.crop((0, 0, 1024, 160)).tobytes()
    background = image.crop((1020, 764, 1024, 768)).tobytes()[:3]
    lit = sum(1 for i in range(0, len(top), 3) if top[i:i + 3] != background)
    assert lit > 2000, lit
