"""Build small initramfs images (cpio "newc" archives) without root or external tools.

>>> from qemu_lite.initramfs import cpio_newc
>>> archive = cpio_newc([("init", 0o100755, b"#!/bin/sh\\n")])
>>> archive[:6]
b'070701'
"""

from __future__ import annotations

import os

S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """An archive of ``(path, mode, data)`` entries (mode includes the file type bits)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        nlink = 2 if mode & 0o170000 == S_IFDIR else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += _pad4(b"070701" + "".join(f"{v:08X}" for v in fields).encode() + encoded)
        out += _pad4(data)
    return bytes(out)


def busybox_initramfs(busybox: str | os.PathLike[str], init_script: str) -> bytes:
    """An initramfs with a static busybox at /bin/busybox and ``init_script`` as /init.

    The script runs under ``/bin/busybox sh``; call applets as ``busybox NAME``
    or through the shell's builtins."""
    with open(busybox, "rb") as f:
        binary = f.read()
    script = "#!/bin/busybox sh\n" + init_script
    return cpio_newc([
        ("bin", S_IFDIR | 0o755, b""),
        ("bin/busybox", S_IFREG | 0o755, binary),
        ("bin/sh", S_IFLNK | 0o777, b"busybox"),
        ("init", S_IFREG | 0o755, script.encode()),
    ])
