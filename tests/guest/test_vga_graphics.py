"""Graphics modes drawn by real guests: modes 12h and 13h through the window, VBE through the LFB.

Each guest draws a known pattern, writes 'D' to debugcon and halts; the
screenshot must match the image the pattern defines pixel for pixel, and the
screendump QEMU (qemu-system-x86_64 -vga std, SeaBIOS) takes of the same guest.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from qemu_lite import Machine
from qemu_lite.devices.vga import dac_to_8bit
from qemu_lite.display.vgaboard import find_vga_bios

pytestmark = [
    pytest.mark.skipif(find_vga_bios() is None,
                       reason="no vgabios-stdvga.bin (Debian: apt-get install seabios)"),
]
Image = pytest.importorskip("PIL.Image", reason="screenshots need Pillow (pip install pillow)")

# Mode 13h: its own DAC ramp, pixel (x, y) = x ^ y left of column 64, else x + 2y.
MODE13_MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    mov ax, 0x0013
    int 0x10
    ; DAC entry i = (i & 63, (i >> 2) & 63, 63 - (i & 63))
    mov dx, 0x3C8
    xor al, al
    out dx, al
    inc dx
    xor cx, cx
.pal:
    mov al, cl
    and al, 63
    out dx, al
    mov al, cl
    shr al, 2
    out dx, al
    mov al, cl
    and al, 63
    neg al
    add al, 63
    out dx, al
    inc cx
    cmp cx, 256
    jb .pal
    ; pixel (x, y) = (x + 2y) & 0xFF, and x ^ y in the left 64 columns
    mov ax, 0xA000
    mov es, ax
    xor di, di
    xor bx, bx              ; y
.row:
    xor cx, cx              ; x
.col:
    mov ax, bx
    shl ax, 1
    add ax, cx
    cmp cx, 64
    jae .put
    mov ax, cx
    xor ax, bx
.put:
    stosb
    inc cx
    cmp cx, 320
    jb .col
    inc bx
    cmp bx, 200
    jb .row
    mov al, 'D'
    out 0xE9, al
    cli
    hlt
    jmp $
times 510 - ($ - $$) db 0
    dw 0xAA55
"""

# Mode 12h: 16 bands of 30 lines in colours 0-15 written through set/reset (write
# mode 0, all planes), then a 32x32 checker at (300, 200) through INT 10h AH=0Ch.
MODE12_MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    mov ax, 0x0012
    int 0x10
    ; 16 bands of 30 lines, colour = band, through set/reset (write mode 0)
    mov dx, 0x3CE
    mov ax, 0x0F01              ; GR01 enable set/reset: all planes
    out dx, ax
    mov ax, 0xFF08              ; GR08 bit mask: every bit
    out dx, ax
    mov dx, 0x3C4
    mov ax, 0x0F02              ; SR02 map mask: all planes
    out dx, ax
    mov ax, 0xA000
    mov es, ax
    xor di, di
    xor bx, bx                  ; band
.band:
    mov dx, 0x3CE
    mov al, 0x00                ; GR00 set/reset = band colour
    mov ah, bl
    out dx, ax
    mov cx, 30 * 80
    rep stosb                   ; the data byte is ignored: set/reset supplies it
    inc bx
    cmp bx, 16
    jb .band
    mov ax, 0x0001              ; GR01 back to 0
    out dx, ax
    ; a 32x32 checker through the BIOS: pixel (300 + x, 200 + y) = (x ^ y) & 15
    xor si, si                  ; y
.y:
    xor di, di                  ; x
.x:
    mov ax, di
    xor ax, si
    and al, 15
    mov ah, 0x0C
    xor bh, bh
    lea cx, [di + 300]
    lea dx, [si + 200]
    int 0x10
    inc di
    cmp di, 32
    jb .x
    inc si
    cmp si, 32
    jb .y
    mov al, 'D'
    out 0xE9, al
    cli
    hlt
    jmp $
times 510 - ($ - $$) db 0
    dw 0xAA55
"""

# The 16 colours of the VGA BIOS's default palette (6-bit DAC values 00h/15h/2Ah/3Fh).
EGA = [(0, 0, 0), (0, 0, 0xA8), (0, 0xA8, 0), (0, 0xA8, 0xA8), (0xA8, 0, 0), (0xA8, 0, 0xA8),
       (0xA8, 0x57, 0), (0xA8, 0xA8, 0xA8), (0x57, 0x57, 0x57), (0x57, 0x57, 0xFF),
       (0x57, 0xFF, 0x57), (0x57, 0xFF, 0xFF), (0xFF, 0x57, 0x57), (0xFF, 0x57, 0xFF),
       (0xFF, 0xFF, 0x57), (0xFF, 0xFF, 0xFF)]

# VBE: finds 640x480x32 with a linear framebuffer in the mode list (4F00h/4F01h),
# sets it (4F02h, bit 14), enters 32-bit protected mode and stores
# R = x, G = y, B = x + y through PhysBasePtr with BytesPerScanLine.
VBE_MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    mov ax, 0x4F00              ; VBE controller information at 0x8000
    mov di, 0x8000
    mov dword [di], 'VBE2'
    int 0x10
    cmp ax, 0x004F
    jne fail
    lfs si, [0x800E]            ; the mode list
.mode:
    mov cx, [fs:si]
    add si, 2
    cmp cx, 0xFFFF
    je fail
    mov ax, 0x4F01              ; mode information at 0x9000
    mov di, 0x9000
    int 0x10
    cmp ax, 0x004F
    jne .mode
    cmp word [0x9012], 640
    jne .mode
    cmp word [0x9014], 480
    jne .mode
    cmp byte [0x9019], 32
    jne .mode
    test byte [0x9000], 0x80    ; linear framebuffer available
    jz .mode
    mov bx, cx
    or bx, 0x4000               ; set it, LFB on
    mov ax, 0x4F02
    int 0x10
    cmp ax, 0x004F
    jne fail
    cli
    lgdt [gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp 0x08:pm
fail:
    mov al, 'F'
    out 0xE9, al
    cli
    hlt
bits 32
pm:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov edi, [0x9028]           ; PhysBasePtr
    movzx ebp, word [0x9010]    ; BytesPerScanLine
    xor ebx, ebx                ; y
.row:
    push edi
    xor ecx, ecx                ; x
.col:
    mov eax, ecx                ; R = x, G = y, B = x + y (low bytes)
    shl eax, 8
    mov al, bl
    shl eax, 8
    mov dl, cl
    add dl, bl
    mov al, dl
    and eax, 0xFFFFFF
    stosd
    inc ecx
    cmp ecx, 640
    jb .col
    pop edi
    add edi, ebp
    inc ebx
    cmp ebx, 480
    jb .row
    mov al, 'D'
    out 0xE9, al
    cli
    hlt
    jmp $
align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF
    dq 0x00CF92000000FFFF
gdtr:
    dw 23
    dd gdt
times 510 - ($ - $$) db 0
    dw 0xAA55
"""


def expected_mode13() -> bytes:
    dac = [bytes(dac_to_8bit(c) for c in (i & 63, (i >> 2) & 63, 63 - (i & 63)))
           for i in range(256)]
    out = bytearray()
    for y in range(200):
        line = b"".join(dac[(x ^ y if x < 64 else x + 2 * y) & 0xFF] * 2 for x in range(320))
        out += line * 2  # 320x200 is shown doubled in both directions, as on a VGA
    return bytes(out)


def expected_mode12() -> bytes:
    out = bytearray()
    for y in range(480):
        row = [EGA[y // 30]] * 640
        if 200 <= y < 232:
            for x in range(32):
                row[300 + x] = EGA[(x ^ (y - 200)) & 15]
        out += b"".join(bytes(c) for c in row)
    return bytes(out)


def expected_vbe() -> bytes:
    return b"".join(bytes((x & 0xFF, y & 0xFF, (x + y) & 0xFF))
                    for y in range(480) for x in range(640))


def run_guest(assemble, tmp_path, source: str):
    disk = tmp_path / "disk.img"
    disk.write_bytes(assemble(source) + bytes(512 * 63))
    debug = bytearray()
    with Machine(disk, memory="16M") as m:
        m.board.debugcon.output = debug.extend
        result = m.run(timeout=60)
        image = m.screenshot()
    assert result.reason == "halted", result
    assert debug.endswith(b"D"), debug[-40:]
    return disk, image


def qemu_screendump(disk, tmp_path):
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed: no reference screendump")
    debug, shot = tmp_path / "qemu-debugcon.txt", tmp_path / "qemu.ppm"
    proc = subprocess.Popen([qemu, "-drive", f"file={disk},format=raw,snapshot=on", "-m", "16",
                             "-display", "none", "-vga", "std", "-debugcon", f"file:{debug}",
                             "-monitor", "stdio", "-no-reboot"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (debug.exists() and debug.read_bytes().endswith(b"D")):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("QEMU did not finish drawing")
            time.sleep(0.1)
        assert proc.stdin is not None
        proc.stdin.write(f"screendump {shot}\nquit\n".encode())
        proc.stdin.flush()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Image.open(shot).convert("RGB")


def test_mode13h_pattern(assemble, tmp_path) -> None:
    disk, image = run_guest(assemble, tmp_path, MODE13_MBR)
    assert image.size == (640, 400)
    assert image.tobytes() == expected_mode13()
    reference = qemu_screendump(disk, tmp_path)
    assert reference.size == image.size and reference.tobytes() == image.tobytes()


def test_mode12h_planar_pattern(assemble, tmp_path) -> None:
    disk, image = run_guest(assemble, tmp_path, MODE12_MBR)
    assert image.size == (640, 480)
    assert image.tobytes() == expected_mode12()
    reference = qemu_screendump(disk, tmp_path)
    assert reference.size == image.size and reference.tobytes() == image.tobytes()


def test_vbe_linear_framebuffer_pattern(assemble, tmp_path) -> None:
    disk, image = run_guest(assemble, tmp_path, VBE_MBR)
    assert image.size == (640, 480)
    assert image.tobytes() == expected_vbe()
    reference = qemu_screendump(disk, tmp_path)
    assert reference.size == image.size and reference.tobytes() == image.tobytes()

