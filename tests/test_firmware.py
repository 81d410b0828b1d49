"""The firmware (firmware/bios.bin, firmware/default.img) is reproducible from source.

Rebuilds with firmware/build.py into a temporary directory and compares with the
committed binaries; checks the ROM layout and the MBR signature.  Needs nasm;
the QEMU reference boots additionally need qemu-system-x86_64.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
BUILD = FIRMWARE / "build.py"


def _need_nasm() -> None:
    if shutil.which("nasm") is None:
        pytest.skip("nasm not installed: cannot rebuild firmware/ (Debian: apt-get install nasm)")


def _need_qemu() -> str:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 not installed: no reference boot")
    return qemu


def _nasm(source: Path, output: Path, *defines: str) -> Path:
    subprocess.run(
        ["nasm", "-f", "bin", "-I", str(source.parent) + "/", *defines, "-o", str(output), str(source)],
        check=True,
    )
    return output


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    _need_nasm()
    out = tmp_path_factory.mktemp("firmware")
    subprocess.run([sys.executable, str(BUILD), "--out", str(out)], check=True)
    return out


@pytest.mark.parametrize("name", ["bios.bin", "default.img"])
def test_rebuild_matches_committed(rebuilt: Path, name: str) -> None:
    committed = FIRMWARE / name
    assert committed.exists(), f"{committed} missing: run python firmware/build.py"
    assert (rebuilt / name).read_bytes() == committed.read_bytes(), (
        f"{name} is stale: run python firmware/build.py and commit the result"
    )


def test_build_is_deterministic(rebuilt: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(BUILD), "--out", str(tmp_path)], check=True)
    for name in ("bios.bin", "default.img"):
        assert (tmp_path / name).read_bytes() == (rebuilt / name).read_bytes()


def test_build_check_mode() -> None:
    _need_nasm()
    proc = subprocess.run([sys.executable, str(BUILD), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rom_layout() -> None:
    rom = (FIRMWARE / "bios.bin").read_bytes()
    assert len(rom) == 65536
    # reset vector F000:FFF0: far jump (EA ip16 cs16) into segment F000
    assert rom[0xFFF0] == 0xEA
    target = int.from_bytes(rom[0xFFF1:0xFFF3], "little")
    assert rom[0xFFF3:0xFFF5] == b"\x00\xf0"
    assert target < 0xFFF0
    assert rom[0xFFF5:0xFFFD] == b"01/01/25"  # BIOS date
    assert rom[0xFFFE] == 0xFC  # model byte: AT
    assert b"qemu_lite BIOS" in rom


def test_pnp_installation_check_structure() -> None:
    """PnP BIOS 1.0A, 4.4: "$PnP" on a 16-byte boundary in F0000h, 21h bytes summing to 0
    (its checksum is an nasm expression over the fields: this catches a field changed without
    it), both entries in the ROM and answering 82h (MOV AX, 82h; RETF)."""
    rom = (FIRMWARE / "bios.bin").read_bytes()
    found = [i for i in range(0, len(rom), 16) if rom[i:i + 4] == b"$PnP"]
    assert len(found) == 1, found
    s = rom[found[0]:found[0] + 0x21]
    assert s[4] == 0x10 and s[5] == 0x21 and sum(s) & 0xFF == 0
    rm_off, rm_seg, pm_off, pm_base = struct.unpack_from("<HHHI", s, 0x0D)
    assert rm_seg == 0xF000 and pm_base == 0xF0000 and rm_off == pm_off
    assert rom[rm_off:rm_off + 4] == b"\xb8\x82\x00\xcb"


def test_default_image_layout() -> None:
    image = (FIRMWARE / "default.img").read_bytes()
    assert len(image) >= 65536 and len(image) % 512 == 0
    assert image[510:512] == b"\x55\xaa"
    assert b"qemu_lite default guest: real mode" in image[:512]
    assert b"long mode: ok" in image


# ---------------------------------------------------------------------------
# Reference boots under QEMU (skipped without qemu-system-x86_64).
# ---------------------------------------------------------------------------

GUEST_LINES = (FIRMWARE / "guest" / "default.expected").read_text().splitlines()


def _qemu_boot(bios: Path, disk: Path | None, tmp_path: Path, timeout: float = 30,
               extra: tuple[str, ...] = ()) -> tuple[int | None, list[str], str]:
    qemu = _need_qemu()
    debugcon = tmp_path / "debugcon.txt"
    cmd = [
        qemu,
        "-bios", str(bios),
        "-serial", "stdio",
        "-display", "none",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-debugcon", f"file:{debugcon}",
        "-m", "64",
        "-no-reboot",
    ]  # fmt: skip
    if disk is not None:
        cmd += ["-drive", f"file={disk},format=raw,if=ide"]
    cmd += list(extra)
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        status, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        status, out = None, exc.stdout or b""
    lines = out.decode("latin-1").replace("\r\n", "\n").splitlines()
    return status, lines, debugcon.read_text("latin-1") if debugcon.exists() else ""


def test_qemu_boots_default_image(tmp_path: Path) -> None:
    disk = tmp_path / "default.img"
    shutil.copy(FIRMWARE / "default.img", disk)
    status, lines, debugcon = _qemu_boot(FIRMWARE / "bios.bin", disk, tmp_path)
    assert status == 1, lines  # isa-debug-exit: (0 << 1) | 1
    assert lines[0] == "qemu_lite BIOS v0"
    assert lines[-len(GUEST_LINES) :] == GUEST_LINES
    assert debugcon.startswith("qemu_lite BIOS v0\n")


def test_qemu_boots_chs_mbr(tmp_path: Path) -> None:
    """The same guest with an MBR that loads stage 2 through INT 13h AH=02h."""
    _need_nasm()
    disk = _nasm(FIRMWARE / "guest" / "default.asm", tmp_path / "chs.img", "-DFORCE_CHS")
    status, lines, _ = _qemu_boot(FIRMWARE / "bios.bin", disk, tmp_path)
    assert status == 1, lines
    assert lines[-len(GUEST_LINES) :] == GUEST_LINES


def test_qemu_no_disk(tmp_path: Path) -> None:
    status, lines, _ = _qemu_boot(FIRMWARE / "bios.bin", None, tmp_path, timeout=5)
    assert status is None  # halted, still running when the timeout hits
    assert "No bootable disk" in lines


EXPECTED_PROBE = [
    "int11: ax=0222",
    "int12: ax=027F",
    "int10/0f: ax=5003 bh=00",
    "int10/03: cx=0607 dx=0300",  # cursor tracked: three lines printed so far
    "int10/12: bl=10",
    "int10/13: text ok",
    "int13/08: ax=0000 cx=003F dx=0F01 CF=0",
    "int13/15: ah=03 cx:dx=00000080 CF=0",
    "int13/41: ah=21 bx=AA55 cx=0005 CF=0",
    "int13/48: size=001E flags=0002 c/h/s=00000001/00000010/0000003F sectors=00000080 bps=0200 CF=0",
    "int13/02: ax=0001 data=374B524D CF=0",
    "int13/42: ah=00 count=0002 data=374B524D CF=0",
    "int13/03: ax=0001 CF=0 readback=C0FFEE42",
    "int13/43: ah=00 CF=0 readback=43434343",
    "int13/42 past end: ah=04 CF=1",
    "int13/01: ah=04 CF=1",
    "int13/02 drive 81: ah=01 CF=1",
    "int13/00: ah=00 CF=0",
    "int15/e820: 0000000000000000+000000000009FC00 type=01 ecx=14",
    "int15/e820: 000000000009FC00+0000000000000400 type=02 ecx=14",
    "int15/e820: 00000000000E0000+0000000000020000 type=02 ecx=14",
    "int15/e820: 0000000000100000+0000000003F00000 type=01 ecx=14",
    "int15/e820: 00000000FFFF0000+0000000000010000 type=02 ecx=14",
    "int15/e801: ax=3C00 bx=0300 cx=3C00 dx=0300 CF=0",
    "int15/88: ax=FC00 CF=0",
    "int15/2403: ah=00 bx=0002 CF=0",
    "int15/2402: ax=0001 CF=0",
    "int15/c0: ah=00 table=00FC000800006400 CF=0",
    "int15/5300: ah=86 CF=1",
    "int16/01: zf=1",
    "int16/02: al=00",
    "int1a/02:  CF=0",
    "int1a/04: century=20 CF=0",
    # "int1a/00: ticks advanced=1" needs timer interrupts: checked separately
    *(PCI_PROBE := [
        "pci/01: ax=0001 bx=0210 cl=00 edx=20494350 CF=0",  # "PCI ", mechanism 1, 2.10, bus 0
        "pci/02 i440fx: ah=00 bx=0000 CF=0",
        "pci/02 ide: ah=00 bx=0009 CF=0",
        "pci/02 ffff: ah=83 bx=EEEE CF=1",                  # BAD_VENDOR_ID
        "pci/03 ide: ah=00 bx=0009 CF=0",                   # class 01 01 80 is the IDE too
        "pci/09: cx=1237 CF=0",
        "pci/0a odd: ah=87 CF=1",                           # BAD_REGISTER_NUMBER
        # PIRQB set to 5 and read back; the other routes are the chipset's reset values
        # (80h: disabled, on QEMU; 10, 10, 11, 11 where SeaBIOS leaves them, on qemu_lite).
        "pci/0b+0a: ecx=80800580 CF=0",
    ]),
    "probe: done",
]


def test_qemu_bios_services_probe(tmp_path: Path) -> None:
    """firmware/guest/probe.asm calls each BIOS service and prints what it got."""
    _need_nasm()
    disk = _nasm(FIRMWARE / "guest" / "probe.asm", tmp_path / "probe.img")
    status, lines, _ = _qemu_boot(FIRMWARE / "bios.bin", disk, tmp_path)
    assert status == 1, lines
    probe = lines[lines.index("Booting from hard disk 0x80") + 1 :]
    assert [line for line in probe if not line.startswith("int1a/00")] == EXPECTED_PROBE
    assert "int1a/00: ticks advanced=1" in lines  # IRQ0 -> INT 08h under QEMU


def test_pci_bios_answers_on_qemu_lite_as_on_qemu(tmp_path: Path) -> None:
    """The probe's PCI BIOS calls on qemu_lite's board: the same answers as on QEMU's pc."""
    from qemu_lite import Machine

    _need_nasm()
    disk = _nasm(FIRMWARE / "guest" / "probe.asm", tmp_path / "probe.img")
    out = bytearray()
    with Machine(memory="64M", disk=str(disk), snapshot=True) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=60)
    assert result.exit_status == 1, result
    lines = out.decode("latin-1").replace("\r\n", "\n").splitlines()
    expected = PCI_PROBE[:-1] + ["pci/0b+0a: ecx=0B0B050A CF=0"]
    assert [line for line in lines if line.startswith("pci/")] == expected


# ---------------------------------------------------------------------------
# El Torito (no emulation) from an ATAPI CD-ROM, and the boot order.
# ---------------------------------------------------------------------------

# A 5-sector (2560-byte) no-emulation boot image: one whole 2048-byte block
# plus a 512-byte tail that the BIOS loads through its scratch buffer.  It
# prints what the CD-ROM's INT 13h services return, then exits through
# isa-debug-exit.
CDPROBE_ASM = r"""
; El Torito no-emulation probe: loaded at 07C0:0000 (5 x 512 bytes), DL = CD drive.
        bits 16
        org 0x7C00
start:
        jmp 0:main
main:
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7000
        mov [drive], dl
        mov si, s_dl
        call puts
        mov al, dl
        call hex8
        call crlf
        ; the tail sector was loaded: marker at the end of sector 5
        mov si, s_tail
        call puts
        mov ax, [tail_marker]
        call hex16
        call crlf
        ; 41h
        mov ah, 0x41
        mov bx, 0x55AA
        mov dl, [drive]
        int 0x13
        setc [cfv]
        push bx
        push cx
        mov si, s_41
        call puts
        mov al, ah
        call hex8
        mov si, s_bx
        call puts
        pop cx
        pop ax
        call hex16
        mov si, s_cx
        call puts
        mov ax, cx
        call hex16
        call cf_crlf
        ; 48h
        mov word [buf], 0x1E
        mov si, buf
        mov ah, 0x48
        mov dl, [drive]
        int 0x13
        setc [cfv]
        pushf
        mov si, s_48
        call puts
        mov ax, [buf + 2]
        call hex16
        mov si, s_sectors
        call puts
        mov eax, [buf + 16]
        call hex32
        mov si, s_bps
        call puts
        mov ax, [buf + 24]
        call hex16
        popf
        call cf_crlf
        ; 4B01h
        mov si, buf
        mov byte [si], 0
        mov ax, 0x4B01
        mov dl, [drive]
        int 0x13
        setc [cfv]
        pushf
        mov si, s_4b
        call puts
        mov si, buf
        mov cx, 0x13
.pk:    lodsb
        call hex8
        loop .pk
        popf
        call cf_crlf
        ; 4B01h on 80h: not a CD
        mov si, buf
        mov ax, 0x4B01
        mov dl, 0x80
        int 0x13
        setc [cfv]
        mov si, s_4b80
        call puts
        mov al, ah
        call hex8
        call cf_crlf
        ; 42h: PVD (LBA 16) to 1000:0000
        mov si, dap
        mov dl, [drive]
        mov ah, 0x42
        int 0x13
        setc [cfv]
        pushf
        push ax
        mov si, s_42
        call puts
        pop ax
        mov al, ah
        call hex8
        mov si, s_count
        call puts
        mov ax, [dap + 2]
        call hex16
        mov si, s_pvd
        call puts
        push ds
        mov ax, 0x1000
        mov ds, ax
        mov si, 1
        mov cx, 5
.id:    lodsb
        call putc
        loop .id
        pop ds
        popf
        call cf_crlf
        ; 42h past the end
        mov word [dap + 2], 1
        mov dword [dap + 8], 0x00FFFFFF
        mov si, dap
        mov dl, [drive]
        mov ah, 0x42
        int 0x13
        setc [cfv]
        mov si, s_42end
        call puts
        mov al, ah
        call hex8
        call cf_crlf
        ; 43h: write-protected
        mov word [dap + 2], 1
        mov dword [dap + 8], 16
        mov si, dap
        mov dl, [drive]
        mov ax, 0x4300
        int 0x13
        setc [cfv]
        mov si, s_43
        call puts
        mov al, ah
        call hex8
        call cf_crlf
        ; 08h: no CHS
        mov dl, [drive]
        mov ah, 0x08
        int 0x13
        setc [cfv]
        mov si, s_08
        call puts
        mov al, ah
        call hex8
        call cf_crlf
        mov si, s_done
        call puts
        xor al, al
        out 0xF4, al
        cli
        hlt

cf_crlf:                                ; " CF=n" of the last INT 13h, newline
        mov si, s_cf
        call puts
        mov al, '0'
        add al, [cfv]
        call putc
crlf:
        mov al, 13
        call putc
        mov al, 10
putc:
        push ax
        push bx
        mov ah, 0x0E
        xor bx, bx
        int 0x10
        pop bx
        pop ax
        ret
puts:
        lodsb
        test al, al
        jz .out
        call putc
        jmp puts
.out:   ret
hex32:  push eax
        shr eax, 16
        call hex16
        pop eax
hex16:  push ax
        mov al, ah
        call hex8
        pop ax
hex8:   push ax
        shr al, 4
        call .d
        pop ax
        and al, 0x0F
.d:     add al, '0'
        cmp al, '9'
        jbe putc
        add al, 7
        jmp putc

s_dl:      db "cd: dl=", 0
s_tail:    db "cd: tail=", 0
s_41:      db "cd/41: ah=", 0
s_bx:      db " bx=", 0
s_cx:      db " cx=", 0
s_48:      db "cd/48: flags=", 0
s_sectors: db " sectors=", 0
s_bps:     db " bps=", 0
s_4b:      db "cd/4b01: ", 0
s_4b80:    db "hd/4b01: ah=", 0
s_42:      db "cd/42: ah=", 0
s_count:   db " count=", 0
s_pvd:     db " pvd=", 0
s_42end:   db "cd/42 past end: ah=", 0
s_43:      db "cd/43: ah=", 0
s_08:      db "cd/08: ah=", 0
s_cf:      db " CF=", 0
s_done:    db "cdprobe: done", 13, 10, 0
drive:     db 0
cfv:       db 0
        align 4
dap:    db 0x10, 0
        dw 1
        dw 0, 0x1000
        dq 16
buf:    times 0x20 db 0
        times 5 * 512 - 2 - ($ - $$) db 0
tail_marker: dw 0x7A11
"""

EXPECTED_CDPROBE = [
    "cd: dl=E0",
    "cd: tail=7A11",
    "cd/41: ah=21 bx=AA55 cx=0005 CF=0",
    "cd/48: flags=0004 sectors=000000BA bps=0800 CF=0",
    # size 13h, no emulation, drive E0h, controller 1 (secondary), image LBA 22h,
    # device 0 (master), buffer segment 0, load segment 07C0h, 5 sectors
    "cd/4b01: 1300E0012200000000000000C0070500000000 CF=0",
    "hd/4b01: ah=01 CF=1",
    "cd/42: ah=00 count=0001 pvd=CD001 CF=0",
    "cd/42 past end: ah=04 CF=1",
    "cd/43: ah=03 CF=1",
    "cd/08: ah=01 CF=1",
    "cdprobe: done",
]


@pytest.fixture(scope="module")
def cdprobe_iso(tmp_path_factory) -> Path:
    _need_nasm()
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        pytest.skip("xorriso not installed: cannot build the El Torito test image")
    out = tmp_path_factory.mktemp("cdprobe")
    (out / "cdprobe.asm").write_text(CDPROBE_ASM)
    root = out / "iso"
    root.mkdir()
    _nasm(out / "cdprobe.asm", root / "boot.img")
    assert (root / "boot.img").stat().st_size == 5 * 512
    iso = out / "cdprobe.iso"
    subprocess.run(
        [xorriso, "-as", "mkisofs", "-quiet", "-o", str(iso), "-b", "boot.img",
         "-no-emul-boot", "-boot-load-size", "5", str(root)],
        check=True, capture_output=True,
    )  # fmt: skip
    return iso


def test_qemu_el_torito_cd_services(cdprobe_iso: Path, tmp_path: Path) -> None:
    status, lines, _ = _qemu_boot(FIRMWARE / "bios.bin", None, tmp_path, extra=("-cdrom", str(cdprobe_iso)))
    assert status == 1, lines
    assert "ata1-0: CD-ROM, 186 blocks, drive E0h" in lines
    assert lines[lines.index("Booting from CD-ROM 0xE0") + 1 :] == EXPECTED_CDPROBE


@pytest.mark.parametrize(
    "boot, first",
    [((), "hard disk"), (("-boot", "c"), "hard disk"), (("-boot", "d"), "CD-ROM")],
)
def test_qemu_boot_order(cdprobe_iso: Path, tmp_path: Path, boot: tuple[str, ...], first: str) -> None:
    """QEMU's -boot reaches the BIOS through the CMOS boot-order registers."""
    disk = tmp_path / "default.img"
    shutil.copy(FIRMWARE / "default.img", disk)
    status, lines, _ = _qemu_boot(FIRMWARE / "bios.bin", disk, tmp_path, extra=("-cdrom", str(cdprobe_iso), *boot))
    assert status == 1, lines
    assert lines[2:4] == ["ata0-0: disk, 128 sectors, drive 80h", "ata1-0: CD-ROM, 186 blocks, drive E0h"]
    if first == "CD-ROM":
        assert lines[4] == "Booting from CD-ROM 0xE0" and lines[-1] == "cdprobe: done"
    else:
        assert lines[4] == "Booting from hard disk 0x80" and lines[-len(GUEST_LINES) :] == GUEST_LINES


def test_qemu_empty_cd_falls_back_to_disk(tmp_path: Path) -> None:
    disk = tmp_path / "default.img"
    shutil.copy(FIRMWARE / "default.img", disk)
    status, lines, _ = _qemu_boot(
        FIRMWARE / "bios.bin", disk, tmp_path, extra=("-drive", "if=ide,index=2,media=cdrom", "-boot", "d")
    )
    assert status == 1, lines
    assert lines[4:7] == ["Booting from CD-ROM 0xE0", "CD-ROM 0xE0: not ready (no medium?)", "Booting from hard disk 0x80"]
    assert lines[-len(GUEST_LINES) :] == GUEST_LINES


def test_qemu_cd_on_primary_slave(cdprobe_iso: Path, tmp_path: Path) -> None:
    disk = tmp_path / "default.img"
    shutil.copy(FIRMWARE / "default.img", disk)
    status, lines, _ = _qemu_boot(
        FIRMWARE / "bios.bin", disk, tmp_path,
        extra=("-drive", f"file={cdprobe_iso},if=ide,index=1,media=cdrom", "-boot", "d"),
    )  # fmt: skip
    assert status == 1, lines
    assert "ata0-1: CD-ROM, 186 blocks, drive E0h" in lines
    out = lines[lines.index("Booting from CD-ROM 0xE0") + 1 :]
    # controller 0 (primary), device 1 (slave) in the specification packet
    assert out[4] == "cd/4b01: 1300E0002200000001000000C0070500000000 CF=0"
    assert out[-1] == "cdprobe: done"
