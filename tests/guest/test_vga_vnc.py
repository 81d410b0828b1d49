"""A VNC client (vncdotool, from PyPI) sees the guest's screen and types into it."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from test_vga_text import KEYS_MBR, boot_sector_disk  # tests/guest is on sys.path (pytest)

from qemu_lite import Machine
from qemu_lite.display.vgaboard import find_vga_bios
from qemu_lite.display.vnc import VNC_BASE_PORT, parse_vnc_display

pytestmark = pytest.mark.skipif(find_vga_bios() is None,
                                reason="no vgabios-stdvga.bin (Debian: apt-get install seabios)")


def free_display() -> int:
    for n in range(60, 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", VNC_BASE_PORT + n))
            except OSError:
                continue
            return n
    pytest.skip("no free VNC port in 5960-5999")


def test_parse_vnc_display() -> None:
    assert parse_vnc_display(":1") == ("127.0.0.1", 5901)
    assert parse_vnc_display("0.0.0.0:7") == ("0.0.0.0", 5907)
    for bad in ("1", ":x", ":99999"):
        with pytest.raises(ValueError, match="invalid VNC display"):
            parse_vnc_display(bad)


def test_vnc_client_captures_the_screen_and_types(assemble, tmp_path) -> None:
    pytest.importorskip("PIL", reason="needs Pillow")
    api = pytest.importorskip("vncdotool.api", reason="needs vncdotool (pip install vncdotool)")
    from PIL import Image

    # The cursor stays off so that the capture does not depend on the blink phase.
    source = KEYS_MBR.replace("    int 0x10\n    cli\n",
                              "    int 0x10\n    mov ah, 1\n    mov cx, 0x2000\n    int 0x10\n"
                              "    cli\n", 1)
    disk = boot_sector_disk(tmp_path, assemble(source))
    display = free_display()
    capture = tmp_path / "capture.png"
    seen: dict[str, object] = {}
    with Machine(disk, memory="16M", vnc=f":{display}") as m:
        def client() -> None:
            deadline = time.monotonic() + 20
            while not m.screen_text()[0].startswith("ready") and time.monotonic() < deadline:
                time.sleep(0.02)
            vnc = api.connect(f"127.0.0.1::{VNC_BASE_PORT + display}")
            try:
                vnc.captureScreen(str(capture))
                seen["expected"] = m.screenshot()
                for ch in "vnc ok":
                    vnc.keyPress(ch)
                vnc.keyPress("enter")
            finally:
                vnc.disconnect()

        t = threading.Thread(target=client)
        t.start()
        result = m.run(timeout=30)
        t.join()
        lines = m.screen_text()
    api.shutdown()
    assert lines[1].rstrip() == "vnc ok"
    assert result.exit_status == (6 << 1) | 1
    got = Image.open(capture).convert("RGB")
    expected = seen["expected"]
    assert got.size == (720, 400)
    assert got.tobytes() == expected.tobytes()  # type: ignore[attr-defined]


def test_a_dropped_machine_closes_its_vnc_server() -> None:
    import gc
    import warnings

    display = free_display()
    m = Machine(memory="16M", vnc=f":{display}")
    del m
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", VNC_BASE_PORT + display))  # free again: the finaliser ran
