"""``-option-rom FILE``: our BIOS's option-ROM scan finds the ROM after the video BIOS and
calls its entry at offset 3, which prints on COM1 and returns; a ROM whose bytes do not sum
to 0 is skipped with a console line (as a PC BIOS skips it); a file that is no ROM, or does
not fit 0xC0000-0xDFFFF, is a one-line error with exit status 2."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qemu_lite import Machine
from qemu_lite.optionroms import first_free

SEABIOS = Path("/usr/share/seabios/bios-256k.bin")

# A ROM of BLOCKS x 512 bytes (2 KiB unless asked): its entry prints "option ROM <tag> at SSSS" (its own CS) and a
# count of how many times it was called (kept at 0000:04F0, in the BDA's
# intra-application area), then returns far with every register kept.
ROM = r"""
bits 16
org 0
    db 0x55, 0xAA, BLOCKS           ; BLOCKS x 512 bytes
    jmp init
init:
    pushad
    push ds
    push cs
    pop ds
    mov si, msg
    call puts
    mov ax, cs
    mov cx, 4
.hex:
    rol ax, 4
    push ax
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe .digit
    add al, 7
.digit:
    call putc
    pop ax
    loop .hex
    mov al, 13
    call putc
    mov al, 10
    call putc
    xor ax, ax
    mov ds, ax
    inc byte [0x4F0]
%ifdef RESET_ONCE
    inc byte [0x8000]               ; RAM that POST leaves alone: survives the reset
    cmp byte [0x8000], 1
    jne .stay
    mov byte [cs:0], 0              ; break our own signature in RAM ...
    mov al, 1
    out 0x92, al                    ; ... and reset the machine (fast reset)
    cli
    hlt
.stay:
%endif
    pop ds
    popad
    retf
putc:
    push dx
    push ax
    mov dx, 0x3FD
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop ax
    mov dx, 0x3F8
    out dx, al
    pop dx
    ret
puts:
    lodsb
    test al, al
    jz .done
    call putc
    jmp puts
.done:
    ret
msg: db "option ROM TAG at ", 0
    times BLOCKS * 512 - 1 - ($ - $$) db 0
    db 0                            ; checksum, set by the test
"""


def build_rom(assemble, tag: str, *, good_sum: bool = True, reset_once: bool = False,
              blocks: int = 4) -> bytes:
    source = (f"%define BLOCKS {blocks}\n" + ("%define RESET_ONCE\n" if reset_once else "")
              + ROM.replace("TAG", tag))
    rom = bytearray(assemble(source, name=f"rom_{tag}_{blocks}"))
    assert len(rom) == blocks * 512
    rom[-1] = (-sum(rom[:-1])) & 0xFF
    if not good_sum:
        rom[-1] ^= 0x01
    return bytes(rom)


def boot_with(roms: list[Path], **kw) -> tuple[str, int, int]:
    """Boot the BIOS with no disk; the run ends at 'No bootable disk'.  Returns the serial
    output, the first free address of the option ROM area and the ROMs' call count."""
    out = bytearray()
    with Machine(memory="16M", option_roms=list(roms), **kw) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=60)
        assert result.reason == "no-boot", (result, out.decode(errors="replace"))
        calls = m.read_memory(0x4F0, 1)[0]
        return out.decode(errors="replace"), first_free(m), calls


@pytest.mark.parametrize("mmu", ("cached", "naive", "native"))
def test_rom_runs_after_the_video_bios_before_booting(assemble, tmp_path, mmu):
    path = tmp_path / "hello.rom"
    path.write_bytes(build_rom(assemble, "hello"))
    text, free, calls = boot_with([path], mmu=mmu)
    segment = free >> 4
    assert segment > 0xC000  # the video BIOS (SeaVGABIOS) holds 0xC0000 onwards
    assert f"option ROM hello at {segment:04X}\r\n" in text, text
    assert text.index("option ROM hello") < text.index("No bootable disk")
    assert calls == 1


def test_without_video_bios_the_rom_is_at_c0000_and_several_run_in_order(assemble, tmp_path):
    paths = []
    for tag in ("one", "two"):
        paths.append(tmp_path / f"{tag}.rom")
        paths[-1].write_bytes(build_rom(assemble, tag))
    text, _, calls = boot_with(paths, vga="none")
    assert "option ROM one at C000\r\noption ROM two at C080\r\n" in text, text
    assert calls == 2


def test_a_rom_larger_than_64k_is_summed_whole_and_runs(assemble, tmp_path):
    # iPXE's ROMs are 73.5 KiB: a sum over a 16-bit offset wraps at 64 KiB and fails them
    path = tmp_path / "big.rom"
    path.write_bytes(build_rom(assemble, "big", blocks=147))
    text, _, calls = boot_with([path], vga="none")
    assert "option ROM big at C000\r\n" in text, text
    assert calls == 1


# A 2 KiB ROM with a PnP expansion header whose boot entry vector (BIOS Boot Specification)
# prints "BEV of TAG: ES:DI=$PnP" when its initialisation saw the PnP installation check
# structure at ES:DI, then leaves through isa-debug-exit with status 2 * 21h + 1.
BEV_ROM = r"""
bits 16
org 0
    db 0x55, 0xAA, 4
    jmp short init
    times 0x18 - ($ - $$) db 0
    dw 0                            ; no PCI data structure
    dw pnp                          ; the PnP expansion header
    align 16
pnp:
    db "$PnP", 1, 2                 ; revision 1, 2 x 16 bytes
    dw 0                            ; no next header
    db 0, 0                         ; reserved, checksum (set by the test)
    dd 0                            ; device identifier
    dw 0, 0                         ; manufacturer, product strings
    db 2, 0, 0                      ; device type: network controller
    db 0x04                         ; indicators: IPL device
    dw 0, 0, bev                    ; BCV, disconnect vector, BEV
    dw 0, 0                         ; reserved, static resource information
init:                               ; the ROM stays as built (a BIOS may check it again):
    push ds                         ; what it saw goes to the BDA's 0000:04F1
    push word 0
    pop ds
    cmp dword [es:di], "$PnP"
    sete byte [0x4F1]
    pop ds
    retf
bev:
    push word 0
    pop ds
    mov si, msg
    cmp byte [0x4F1], 1
    je .say
    mov si, msg_no
.say:
    mov dx, 0x3F8
.next:
    mov al, [cs:si]
    test al, al
    jz .exit
    out dx, al
    inc si
    jmp .next
.exit:
    mov al, 0x21
    out 0xF4, al
    cli
    hlt
msg: db "BEV of TAG: ES:DI=$PnP", 13, 10, 0
msg_no: db "BEV of TAG: no $PnP", 13, 10, 0
    times 2047 - ($ - $$) db 0
    db 0
"""


def build_bev_rom(assemble, tag: str) -> bytes:
    rom = bytearray(assemble(BEV_ROM.replace("TAG", tag), name=f"bev_{tag}"))
    pnp = int.from_bytes(rom[0x1A:0x1C], "little")
    rom[pnp + 9] = (-sum(rom[pnp:pnp + 32])) & 0xFF
    rom[-1] = (-sum(rom[:-1])) & 0xFF
    return bytes(rom)


@pytest.mark.parametrize("bios", ["ours", "seabios"])
@pytest.mark.parametrize("boot, disk_first", [("c", True), ("n", False)])
def test_a_rom_with_a_boot_entry_vector_boots_after_the_disks_or_first(assemble, tmp_path,
                                                                          boot, disk_first, bios):
    """With a bootable disk (the default image) the BEV runs only once the disk's guest is
    done (never: it exits), unless the boot order is n (QEMU's -boot n): then first.  Our
    BIOS reads the order from fw_cfg; SeaBIOS from the CMOS bytes QEMU's pc writes."""
    from qemu_lite import DEFAULT_IMAGE

    if bios == "seabios" and not SEABIOS.exists():
        pytest.skip(f"{SEABIOS} missing: apt-get install seabios")
    path = tmp_path / "bev.rom"
    path.write_bytes(build_bev_rom(assemble, "net"))
    out = bytearray()
    firmware = {"bios": str(SEABIOS)} if bios == "seabios" else {"vga": "none"}
    with Machine(DEFAULT_IMAGE, memory="64M", option_roms=[path], boot=boot, snapshot=True,
                 **firmware) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=60)
    text = out.decode(errors="replace")
    if disk_first:
        assert "default guest: all stages passed" in text and "BEV of" not in text, text
        assert result.exit_status == 1
    else:
        assert "BEV of net: ES:DI=$PnP" in text, text
        assert "default guest" not in text, text
        assert result.exit_status == 2 * 0x21 + 1, result
        if bios == "ours":
            assert "Booting from the option ROM at segment C000h\r\nBEV of net" in text


def test_a_boot_entry_vector_boots_when_no_disk_is_bootable(assemble, tmp_path):
    path = tmp_path / "bev.rom"
    path.write_bytes(build_bev_rom(assemble, "only"))
    out = bytearray()
    with Machine(memory="16M", vga="none", option_roms=[path]) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=60)
    text = out.decode(errors="replace")
    assert result.exit_status == 2 * 0x21 + 1, (result, text)
    assert "No ATA/ATAPI devices" in text and "BEV of only: ES:DI=$PnP" in text, text


def test_bad_checksum_is_skipped_and_said(assemble, tmp_path):
    bad, good = tmp_path / "bad.rom", tmp_path / "good.rom"
    bad.write_bytes(build_rom(assemble, "bad", good_sum=False))
    good.write_bytes(build_rom(assemble, "good"))
    text, _, calls = boot_with([bad, good], vga="none")
    assert "option ROM at C000:0000: bad checksum, skipped\r\n" in text, text
    assert "option ROM bad" not in text
    assert "option ROM good at C080" in text
    assert calls == 1


def test_rom_is_copied_again_at_reset(assemble, tmp_path):
    """The area is RAM: a ROM that breaks its own copy and resets the machine runs again."""
    path = tmp_path / "r.rom"
    path.write_bytes(build_rom(assemble, "again", reset_once=True))
    out = bytearray()
    with Machine(memory="16M", vga="none", option_roms=[path]) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=60)
        assert m.guest_resets == 1
    assert result.reason == "no-boot-after-reset", result
    assert out.decode(errors="replace").count("option ROM again at C000") == 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_lite", "-m", "16M", "--timeout", "60",
                           *args], capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


def test_cli_nic_romfile_is_its_boot_rom(assemble, tmp_path):
    """QEMU's -device e1000,romfile=FILE: the ROM comes with the NIC; -boot n boots it
    before the bundled default image."""
    path = tmp_path / "pxe.rom"
    path.write_bytes(build_bev_rom(assemble, "nic"))
    with socket.socket() as s:  # a port for the NIC's cable nobody plugs in
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    netdev = f"socket,id=n0,listen=127.0.0.1:{port}"
    proc = _cli("-vga", "none", "-boot", "n", "-netdev", netdev,
                "-device", f"e1000,netdev=n0,romfile={path}")
    assert "BEV of nic: ES:DI=$PnP" in proc.stdout, (proc.stdout, proc.stderr)
    assert "default guest" not in proc.stdout
    assert proc.returncode == 2 * 0x21 + 1, proc.stderr
    missing = _cli("-netdev", netdev,
                   "-device", f"e1000,netdev=n0,romfile={tmp_path / 'none.rom'}")
    assert missing.returncode == 2 and "none.rom" in missing.stderr, missing.stderr


def test_cli_option_rom(assemble, tmp_path):
    path = tmp_path / "cli.rom"
    path.write_bytes(build_rom(assemble, "cli"))
    # No disk but the ROM: the bundled default image boots after the ROM ran.
    proc = _cli("-option-rom", str(path))
    assert "option ROM cli at C" in proc.stdout, proc.stdout
    assert "default guest: all stages passed" in proc.stdout
    assert proc.returncode == 1, proc.stderr  # the default guest's success status


@pytest.mark.parametrize("content, message", [
    (b"\x00" * 2048, "does not start with 55 AA"),
    (b"\x55\xaa\xff" + bytes(0x20200 - 3), "bytes; the option-ROM area holds"),
    (b"", "file is empty"),
])
def test_cli_refuses_a_file_that_is_no_rom(tmp_path, content, message):
    path = tmp_path / "x.rom"
    path.write_bytes(content)
    out = tmp_path / "serial.txt"
    proc = _cli("-option-rom", str(path), "--serial", f"file:{out}")
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()  # checked before any output file was created


def test_cli_refuses_roms_that_do_not_fit(assemble, tmp_path):
    big = tmp_path / "big.rom"
    big.write_bytes(b"\x55\xaa\xff" + bytes(0x1F000 - 3))  # 124 KiB: fits only without VGA
    proc = _cli("-option-rom", str(big))
    assert proc.returncode == 2
    assert "does not fit" in proc.stderr, proc.stderr


def test_seabios_runs_it_from_fw_cfg_genroms(assemble, tmp_path):
    """The same ROM reaches a foreign BIOS the way QEMU hands it over (fw_cfg genroms/)."""
    if not SEABIOS.is_file():
        pytest.skip(f"{SEABIOS} missing: apt-get install seabios")
    path = tmp_path / "sea.rom"
    path.write_bytes(build_rom(assemble, "sea"))
    proc = _cli("--bios", str(SEABIOS), "-option-rom", str(path), "--timeout", "30")
    assert "option ROM sea at C" in proc.stdout, proc.stdout[-2000:]
