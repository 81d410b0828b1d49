"""The VGA seen by real guests: our BIOS, SeaVGABIOS at 0xC0000, text and the screen API."""

from __future__ import annotations

import threading
import time

import pytest

from qemu_lite import DEFAULT_IMAGE, Machine
from qemu_lite.display.vgaboard import find_vga_bios

pytestmark = pytest.mark.skipif(find_vga_bios() is None,
                                reason="no vgabios-stdvga.bin (Debian: apt-get install seabios)")

# Prints a line through INT 10h, turns the cursor off, asks for the 8x16 font
# (AX=1130h BH=06h: ES:BP) and leaves the pointer at 0000:0600, then exits.
TEXT_MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    mov si, hello
    call print
    mov ah, 0x01
    mov cx, 0x2000
    int 0x10
    push ds
    mov ax, 0x1130
    mov bh, 0x06
    int 0x10
    pop ds
    mov [0x600], bp
    mov [0x602], es
    mov al, 0
    out 0xF4, al
print:
    lodsb
    test al, al
    jz .done
    mov ah, 0x0E
    int 0x10
    jmp print
.done:
    ret
hello: db "Hello from the VGA text screen", 13, 10, 0
times 510 - ($ - $$) db 0
    dw 0xAA55
"""


def boot_sector_disk(tmp_path, mbr: bytes):
    disk = tmp_path / "disk.img"
    disk.write_bytes(mbr + bytes(512 * 63))
    return disk


def render_text(lines: list[str], attrs: bytes, font: bytes) -> bytes:
    """An independent drawing of 80x25 text: 9x16 cells, VGA's default 16 colours."""
    ega = [(0, 0, 0), (0, 0, 0xA8), (0, 0xA8, 0), (0, 0xA8, 0xA8), (0xA8, 0, 0), (0xA8, 0, 0xA8),
           (0xA8, 0x57, 0), (0xA8, 0xA8, 0xA8), (0x57, 0x57, 0x57), (0x57, 0x57, 0xFF),
           (0x57, 0xFF, 0x57), (0x57, 0xFF, 0xFF), (0xFF, 0x57, 0x57), (0xFF, 0x57, 0xFF),
           (0xFF, 0xFF, 0x57), (0xFF, 0xFF, 0xFF)]
    out = bytearray()
    for r, line in enumerate(lines):
        codes = line.encode("cp437")
        for y in range(16):
            for c, code in enumerate(codes):
                a = attrs[r * 80 + c]
                fg, bg = bytes(ega[a & 15]), bytes(ega[(a >> 4) & 7])
                bits = font[code * 16 + y]
                for x in range(8):
                    out += fg if bits & (0x80 >> x) else bg
                out += fg if 0xC0 <= code <= 0xDF and bits & 1 else bg
    return bytes(out)


def test_bios_banner_and_guest_text_on_screen_and_pixel_exact(assemble, tmp_path) -> None:
    pytest.importorskip("PIL", reason="screenshots need Pillow (pip install pillow)")
    disk = boot_sector_disk(tmp_path, assemble(TEXT_MBR))
    serial = bytearray()
    with Machine(disk, memory="16M") as m:
        m.board.com1.add_output_listener(serial.extend)
        result = m.run(timeout=30)
        lines = m.screen_text()
        cells = m.read_memory(0xB8000, 4000)
        off, seg = int.from_bytes(m.read_memory(0x600, 2), "little"), \
            int.from_bytes(m.read_memory(0x602, 2), "little")
        font = m.read_memory(seg * 16 + off, 256 * 16)
        image = m.screenshot()
    assert result.reason == "exit" and result.exit_status == 1
    text = [line.rstrip() for line in lines]
    assert text[:5] == ["qemu_lite BIOS v0", "RAM: 16 MiB", "ata0-0: disk, 64 sectors, drive 80h",
                        "Booting from hard disk 0x80", "Hello from the VGA text screen"]
    assert all(line == "" for line in text[5:])
    # The serial mirror still carries the same console.
    assert b"Booting from hard disk 0x80\r\nHello from the VGA text screen\r\n" in serial
    assert image.size == (720, 400) and image.mode == "RGB"
    assert font[ord("A") * 16:ord("A") * 16 + 16] != bytes(16)
    assert image.tobytes() == render_text(lines, cells[1::2], font)


def test_default_guest_messages_on_screen() -> None:
    with Machine(DEFAULT_IMAGE, snapshot=True) as m:
        result = m.run(timeout=60)
        text = [line.rstrip() for line in m.screen_text()]
    assert result.exit_status == 1
    assert text[0] == "qemu_lite BIOS v0"
    assert "Booting from hard disk 0x80" in text
    # Before it leaves real mode the default guest prints through INT 10h.
    assert "qemu_lite default guest: real mode" in text


def test_vga_none_keeps_the_serial_only_machine() -> None:
    serial = bytearray()
    with Machine(DEFAULT_IMAGE, snapshot=True, vga="none") as m:
        m.board.com1.add_output_listener(serial.extend)
        result = m.run(timeout=60)
        assert m.board.vga is None
        with pytest.raises(RuntimeError, match="no display"):
            m.screen_text()
        assert m.read_memory(0xC0000, 2) == b"\0\0"
    assert result.exit_status == 1
    assert serial.startswith(b"qemu_lite BIOS v0\r\n")


# Polls the i8042 (no BIOS keyboard services involved) and writes each set 1 make
# code's character to the screen row 0 until Enter; then exits with the count.
KEYS_MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    mov ax, 0x0003           ; mode 3 again: a clear screen
    int 0x10
    cli
    mov al, 0x60             ; i8042 command byte: translate to set 1, no IRQ
    out 0x64, al
    mov al, 0x44
    out 0x60, al
    mov ax, 0xB800
    mov es, ax
    mov si, ready
    xor di, di
.msg:
    lodsb
    test al, al
    jz .wait
    mov ah, 0x07
    stosw
    jmp .msg
.wait:
    mov di, 160
    xor cx, cx
.poll:
    in al, 0x64
    test al, 1
    jz .poll
    in al, 0x60
    test al, 0x80
    jnz .poll                ; a break code
    cmp al, 0x1C             ; Enter
    je .done
    movzx bx, al
    mov al, [table + bx]
    mov ah, 0x07
    stosw
    inc cx
    jmp .poll
.done:
    mov al, cl
    out 0xF4, al
ready: db "ready", 0
table:
    db 0, 0, "1234567890-=", 0, 0
    db "qwertyuiop[]", 0, 0
    db "asdfghjkl;'`", 0, 0x5C
    db "zxcvbnm,./", 0, "*", 0, " "
    times 128 db 0
times 510 - ($ - $$) db 0
    dw 0xAA55
"""


def test_send_keys_reach_the_guest_through_the_i8042(assemble, tmp_path) -> None:
    disk = boot_sector_disk(tmp_path, assemble(KEYS_MBR))
    with Machine(disk, memory="16M") as m:
        def typist() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if m.screen_text()[0].startswith("ready"):
                    m.send_keys("hello vga")
                    m.send_key("ret")
                    return
                time.sleep(0.02)

        t = threading.Thread(target=typist)
        t.start()
        result = m.run(timeout=30)
        t.join()
        lines = m.screen_text()
    assert lines[1].rstrip() == "hello vga"
    assert result.exit_status == (9 << 1) | 1


def test_memory_api_refuses_the_vga_window_but_reads_text_ram() -> None:
    with Machine(memory="16M") as m:
        with pytest.raises(ValueError, match="not guest RAM or ROM"):
            m.read_memory(0xA0000, 2)
        with pytest.raises(ValueError, match="not guest RAM"):
            m.write_memory(0xB7FFF, b"xy")
        m.write_memory(0xB8000, b"A\x07")
        assert m.screen_text()[0].startswith("A")
        assert (0xB8000, 0xF0000) in m.memory_ranges(write=True)


def test_send_key_rejects_unknown_names() -> None:
    with Machine(memory="16M") as m:
        with pytest.raises(ValueError, match="unknown key 'hyper'"):
            m.send_key("ctrl-hyper")


# Reads keys with INT 16h AH=00h (our BIOS: PS/2 keyboard through IRQ1) and echoes
# them with INT 10h until Enter; exits with the last key's scan code.
BIOS_KEYS_MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    sti
    mov si, prompt
.msg:
    lodsb
    test al, al
    jz .key
    mov ah, 0x0E
    int 0x10
    jmp .msg
.key:
    xor ah, ah
    int 0x16
    cmp al, 0x0D
    je .done
    mov bl, ah
    mov ah, 0x0E
    int 0x10
    jmp .key
.done:
    mov al, bl
    out 0xF4, al
prompt: db "type> ", 0
times 510 - ($ - $$) db 0
    dw 0xAA55
"""


def test_bios_int16_reads_the_ps2_keyboard(assemble, tmp_path) -> None:
    disk = boot_sector_disk(tmp_path, assemble(BIOS_KEYS_MBR))
    with Machine(disk, memory="16M") as m:
        def typist() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if any("type>" in line for line in m.screen_text()):
                    m.send_keys("Hi, VGA!")
                    m.send_key("ctrl-c")
                    m.send_key("down")
                    m.send_keys("\n")
                    return
                time.sleep(0.02)

        t = threading.Thread(target=typist)
        t.start()
        result = m.run(timeout=30)
        t.join()
        lines = [line.rstrip() for line in m.screen_text()]
    assert any(line.startswith("type> Hi, VGA!") for line in lines), lines
    assert result.exit_status == (0x50 << 1) | 1  # the down arrow's scan code, ASCII 0
