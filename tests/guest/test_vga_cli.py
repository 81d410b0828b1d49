"""The display options of the command line: -vga, -display, -vnc, -nographic, screendumps."""

from __future__ import annotations

import pytest

from qemu_lite.cli import main
from qemu_lite.display.vgaboard import find_vga_bios


@pytest.mark.skipif(find_vga_bios() is None, reason="no vgabios-stdvga.bin (apt-get install seabios)")
def test_screendump_on_exit_writes_the_final_screen(tmp_path, capsys) -> None:
    Image = pytest.importorskip("PIL.Image", reason="needs Pillow")
    shot = tmp_path / "screen.png"
    status = main(["--serial", "none", "-nographic", "--screendump-on-exit", str(shot)])
    assert status == 1  # the default guest's isa-debug-exit 0
    image = Image.open(shot)
    assert image.size == (720, 400)
    # The top-left cell holds the banner's 'q': some foreground pixels in its 9x16 box.
    box = image.convert("RGB").crop((0, 0, 9, 16)).tobytes()
    assert any(box) and not all(box)


@pytest.mark.parametrize("argv, message", [
    (["-vga", "none", "-vnc", ":1"], "-vga none has no screen"),
    (["-display", "sdl"], "unknown display 'sdl'"),
    (["-vnc", "7"], "invalid VNC display '7'"),
    (["-nographic", "-display", "vnc=:1"], "-nographic cannot be combined"),
    (["-vnc", ":1", "-display", "vnc=:2"], "give the VNC display once"),
    (["--screendump-on-exit", "/no/such/dir/x.png"], "no directory"),
    (["-display", "curses"], "-display curses needs a terminal on stdout"),
])
def test_bad_display_options_are_one_line_usage_errors(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err


def test_vnc_port_in_use_is_a_clean_error(capsys) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        if port < 5900:
            pytest.skip("ephemeral port below the VNC range")
        status = main(["--serial", "none", "-vnc", f":{port - 5900}", "--timeout", "1"])
    assert status == 2
    assert "cannot listen for VNC" in capsys.readouterr().err


def test_screendump_onto_an_input_is_refused(tmp_path, capsys) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\x55" * 512 * 4)
    assert main([str(disk), "--screendump-on-exit", str(disk)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert disk.read_bytes() == b"\x55" * 512 * 4
