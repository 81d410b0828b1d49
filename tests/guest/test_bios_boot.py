"""Our BIOS boots an MBR from a disk image made here and serves it INT 10h/13h/15h."""

from __future__ import annotations

import pytest

from qemu_lite import Machine
from qemu_lite.devices.block import BlockImageError
from qemu_lite.pc import Drive

# The MBR prints with INT 10h, reads sector 1 with INT 13h AH=42h and sector 2 with
# AH=02h (CHS), asks INT 15h E820 for the first map entry, and reports over COM1.
MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    mov [drive], dl
    mov si, hello
    call print
    ; extended read of LBA 1 to 0x8000
    mov ah, 0x42
    mov dl, [drive]
    mov si, dap
    int 0x13
    jc fail
    mov si, 0x8000
    call print
    ; CHS read: cylinder 0, head 0, sector 3 (= LBA 2) to 0x9000
    mov ax, 0x0201
    mov bx, 0x9000
    mov cx, 0x0003
    xor dh, dh
    mov dl, [drive]
    int 0x13
    jc fail
    mov si, 0x9000
    call print
    ; E820 first entry
    xor ebx, ebx
    mov eax, 0xE820
    mov ecx, 20
    mov edx, 0x534D4150
    mov di, 0xA000
    int 0x15
    jc fail
    cmp eax, 0x534D4150
    jne fail
    mov si, e820ok
    call print
    mov al, 0
    out 0xF4, al
fail:
    mov si, failed
    call print
    mov al, 0x55
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
drive: db 0
hello: db "MBR running", 13, 10, 0
e820ok: db "E820 ok", 13, 10, 0
failed: db "FAILED", 13, 10, 0
align 4
dap: db 16, 0
    dw 1
    dw 0x8000, 0
    dq 1
times 510 - ($ - $$) db 0
    dw 0xAA55
"""


def test_bios_boots_mbr_and_serves_disk_services(assemble, tmp_path):
    mbr = assemble(MBR)
    assert len(mbr) == 512
    sector1 = b"sector one via AH=42h\r\n\0".ljust(512, b"\0")
    sector2 = b"sector two via CHS\r\n\0".ljust(512, b"\0")
    disk = tmp_path / "disk.img"
    disk.write_bytes(mbr + sector1 + sector2 + bytes(512 * 61))
    out = bytearray()
    with Machine(disk, memory="16M") as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=30)
        fast = m.core.pio_fast_accesses
    text = out.decode(errors="replace")
    # The data port's words came through the C PIO window, not one Python call each.
    assert fast >= 3 * 255
    assert "MBR running\r\nsector one via AH=42h\r\nsector two via CHS\r\nE820 ok\r\n" in text
    assert result.reason == "exit" and result.exit_status == 1


def test_disk_without_boot_signature_ends_the_run_with_a_message(tmp_path):
    disk = tmp_path / "blank.img"
    disk.write_bytes(bytes(512 * 64))
    out = bytearray()
    with Machine(disk, memory="16M") as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=30)
    assert result.reason == "no-boot"
    assert result.message == "No bootable device"
    assert b"No bootable disk" in out


# Writes "written by the guest" to LBA 5 with AH=43h and LBA 6 with AH=03h (CHS), then exits.
WRITER_MBR = r"""
bits 16
org 0x7C00
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    mov [drive], dl
    mov di, 0x8000            ; fill a sector buffer with the message, zero padded
    mov si, message
    mov cx, 512
.fill:
    lodsb
    test al, al
    jnz .store
    dec si
.store:
    stosb
    loop .fill
    mov ah, 0x43
    xor al, al
    mov dl, [drive]
    mov si, dap
    int 0x13
    jc fail
    mov ax, 0x0301            ; CHS write: cylinder 0, head 0, sector 7 (= LBA 6)
    mov bx, 0x8000
    mov cx, 0x0007
    xor dh, dh
    mov dl, [drive]
    int 0x13
    jc fail
    mov al, 0
    out 0xF4, al
fail:
    mov al, 0x55
    out 0xF4, al
drive: db 0
message: db "written by the guest", 0
align 4
dap: db 16, 0
    dw 1
    dw 0x8000, 0
    dq 5
times 510 - ($ - $$) db 0
    dw 0xAA55
"""


def _writer_disk(assemble, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(assemble(WRITER_MBR) + bytes(512 * 63))
    return disk


def test_guest_disk_writes_reach_the_image_file(assemble, tmp_path):
    disk = _writer_disk(assemble, tmp_path)
    with Machine(disk, memory="16M") as m:
        assert m.run(timeout=30).exit_status == 1
    data = disk.read_bytes()
    for lba in (5, 6):
        assert data[lba * 512:lba * 512 + 20] == b"written by the guest"


def test_snapshot_keeps_the_image_file_byte_identical(assemble, tmp_path):
    disk = _writer_disk(assemble, tmp_path)
    before = disk.read_bytes()
    with Machine(disk, memory="16M", snapshot=True) as m:
        assert m.run(timeout=30).exit_status == 1
        assert m.board.disks[0].read(5, 1)[:20] == b"written by the guest"  # kept in memory
    assert disk.read_bytes() == before


def test_read_only_drive_refuses_guest_writes(assemble, tmp_path):
    disk = _writer_disk(assemble, tmp_path)
    before = disk.read_bytes()
    with Machine(drives=[Drive(disk, readonly=True)], memory="16M") as m:
        result = m.run(timeout=30)
    assert result.exit_status == (0x55 << 1) | 1  # the BIOS reported the write error
    assert disk.read_bytes() == before


def test_image_in_use_by_another_machine_is_a_clear_error(assemble, tmp_path):
    disk = _writer_disk(assemble, tmp_path)
    with Machine(disk, memory="16M"):
        with pytest.raises(BlockImageError, match=str(disk.name)):
            Machine(disk, memory="16M")
