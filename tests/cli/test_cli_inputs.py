"""Bad command lines and bad files: exit status 2, one line on stderr, nothing overwritten.

The CLI runs in-process (``cli.main(argv)``) so each case costs milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

import pytest

from qemu_lite import cli
from qemu_lite.machine import bundled_firmware_path
from qemu_lite.pc import Drive, parse_drive


def run(capsys, *args: str) -> tuple[int, str]:
    status = cli.main(list(args))
    return status, capsys.readouterr().err


def one_line_error(capsys, *args: str) -> str:
    status, err = run(capsys, *args)
    assert status == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "d.img"
    shutil.copy(bundled_firmware_path("default.img"), path)
    return path


# -- data loss ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["ON", "On", "1", "enable", ""])
def test_readonly_takes_only_qemus_boolean_values(capsys, disk, value):
    before = digest(disk)
    err = one_line_error(capsys, "--drive", f"file={disk},readonly={value}", "--serial", "none",
                         "--timeout", "5")
    assert "'readonly' expects 'on' or 'off'" in err
    assert digest(disk) == before


@pytest.mark.parametrize("value, readonly", [("on", True), ("yes", True), ("true", True),
                                             ("y", True), ("off", False), ("no", False),
                                             ("false", False), ("n", False)])
def test_readonly_accepts_qemus_synonyms(value, readonly):
    assert parse_drive(f"file=x.img,readonly={value}").readonly is readonly


def test_serial_file_naming_the_disk_is_refused_and_the_disk_kept(capsys, disk):
    before = digest(disk)
    err = one_line_error(capsys, str(disk), "--serial", f"file:{disk}")
    assert "refusing to overwrite" in err
    assert digest(disk) == before


def test_serial_file_naming_the_disk_through_a_link_is_refused(capsys, disk, tmp_path):
    link = tmp_path / "alias.txt"
    os.link(disk, link)  # another name, the same inode
    before = digest(disk)
    one_line_error(capsys, str(disk), "--serial2", f"file:{link}")
    assert digest(disk) == before


def test_serial_file_naming_the_kernel_is_refused(capsys, tmp_path):
    kernel = tmp_path / "k.bin"
    kernel.write_bytes(b"\x7fELF" + bytes(100))
    before = digest(kernel)
    err = one_line_error(capsys, "--kernel", str(kernel), "--serial", f"file:{kernel}")
    assert "kernel" in err
    assert digest(kernel) == before


def test_bad_serial_backend_opens_no_output_and_releases_the_disk(capsys, disk, tmp_path):
    out = tmp_path / "serial.txt"
    one_line_error(capsys, str(disk), "--serial", f"file:{out}", "--serial2",
                   "socket://localhost:99999")
    # COM2's spec is refused before anything is created, and the disk lock is gone:
    from qemu_lite.devices.block import BlockImage
    BlockImage.open(disk).close()


# -- tracebacks --------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["-m", "inf"], ["-m", "1e400"], ["-m", "nan"], ["-m", "-5"], ["-m", "0"],
    ["--mmu-pages", "99999999999999999999"], ["--mmu-pages", "x"],
    ["--timeout", "nan"], ["--timeout", "inf"], ["--timeout", "1e300"], ["--timeout", "-1"],
    ["--timeout", "0"],
])
def test_non_finite_and_out_of_range_numbers_are_usage_errors(capsys, args):
    one_line_error(capsys, *args, "--serial", "none")


@pytest.mark.parametrize("spec, words", [
    ("q35", "only the pc machine"), ("pc,hpet=maybe", "'on' or 'off'"),
    ("pc,vmport=off", "unknown property"), ("pc,hpet=on,hpet=off", "given twice"),
    ("pc,hpet", "key=value"),
])
def test_bad_machine_options_are_one_line(capsys, spec, words):
    assert words in one_line_error(capsys, "-machine", spec, "--serial", "none")


def test_hpet_without_acpi_is_refused(capsys):
    err = one_line_error(capsys, "-M", "pc,hpet=on,acpi=off", "--serial", "none")
    assert "needs ACPI" in err


@pytest.mark.parametrize("args", [["-machine", "pc,hpet=off"], ["-no-hpet"],
                                  ["-machine", "acpi=off"], ["-M", "pc-i440fx"]])
def test_machine_options_boot_the_default_image(capsys, args):
    status, err = run(capsys, *args, "--serial", "none", "--timeout", "60")
    assert status == 1, err


@pytest.mark.parametrize("n", [1, 8, 15])
def test_mmu_pages_below_the_real_minimum_names_the_real_range(capsys, n):
    err = one_line_error(capsys, "--mmu-pages", str(n), "--serial", "none")
    assert "16" in err and "1048576" in err


def test_mmu_pages_at_the_minimum_boots(capsys):
    status, err = run(capsys, "--mmu-pages", "16", "--serial", "none", "--timeout", "60")
    assert status == 1, err


def elf32(entry: int, segments: list[tuple[int, int, int, int]], phentsize: int = 32,
          extra: bytes = b"") -> bytes:
    """An ELF32 executable whose program headers are ``(offset, paddr, filesz, memsz)``."""
    header = bytearray(52)
    header[:7] = b"\x7fELF\x01\x01\x01"
    struct.pack_into("<HHIIII", header, 16, 2, 3, 1, entry, 52, 0)
    struct.pack_into("<HHHHHH", header, 40, 52, phentsize, len(segments), 0, 0, 0)
    phdrs = b"".join(struct.pack("<8I", 1, off, paddr, paddr, filesz, memsz, 7, 0x1000)
                     for off, paddr, filesz, memsz in segments)
    return bytes(header) + phdrs + extra


def multiboot_elf(segments: list[tuple[int, int, int, int]], **kw: object) -> bytes:
    mb = struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF)
    body = elf32(0x100000, segments, **kw)  # type: ignore[arg-type]
    return body + mb + bytes(64)


def test_multiboot_elf_with_memsz_below_filesz_is_refused(capsys, tmp_path):
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(multiboot_elf([(0, 0x100000, 0x80, 0x10)]))
    err = one_line_error(capsys, "--kernel", str(kernel), "--serial", "none")
    assert "p_memsz" in err


@pytest.mark.parametrize("image", [
    b"\x7fELF",                                          # shorter than an ELF header
    multiboot_elf([(0, 0x100000, 0x40, 0x40)], phentsize=8),  # entries overlap
    multiboot_elf([(0x7FFFFFF0, 0x100000, 0x10, 0x10)]),  # segment beyond the file
])
def test_malformed_multiboot_elf_is_one_line(capsys, tmp_path, image):
    kernel = tmp_path / "k.elf"
    mb = struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF)
    kernel.write_bytes(image if mb in image else image + bytes(8) + mb)
    one_line_error(capsys, "--kernel", str(kernel), "--serial", "none")


def bzimage_header(setup_sects: int, syssize_bytes: int, length: int) -> bytes:
    image = bytearray(length)
    image[0x1F1] = setup_sects
    struct.pack_into("<I", image, 0x1F4, syssize_bytes // 16)
    image[0x201] = 0x6A  # jump over the header
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<H", image, 0x236, 1)  # XLF_KERNEL_64
    struct.pack_into("<I", image, 0x238, 255)
    struct.pack_into("<I", image, 0x260, 0x100000)
    return bytes(image)


def test_truncated_bzimage_is_refused_not_run(capsys, tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage_header(27, 8 << 20, 4096))  # promises 8 MiB, has 4 KiB
    err = one_line_error(capsys, "--kernel", str(kernel), "--serial", "none",
                         "--timeout", "30")
    assert "truncated kernel" in err


def test_a_bzimage_one_whole_paragraph_short_is_truncated(capsys, tmp_path):
    # syssize is in 16-byte paragraphs, rounded up: 1-15 bytes short is padding (memtest86+
    # ships so), a whole paragraph short is a cut file
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage_header(4, 4096, 5 * 512 + 4096 - 16))
    err = one_line_error(capsys, "--kernel", str(kernel), "--serial", "none",
                         "--timeout", "30")
    assert "truncated kernel" in err


def test_first_4k_of_the_real_kernel_is_refused(capsys, tmp_path):
    from qemu_lite import imagebuild

    try:
        vmlinuz = imagebuild.find_kernel()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    kernel = tmp_path / "vmlinuz-4k"
    kernel.write_bytes(Path(vmlinuz).read_bytes()[:4096])
    err = one_line_error(capsys, "--kernel", str(kernel), "--serial", "none",
                         "--timeout", "30")
    assert "truncated kernel" in err


def test_bzimage_without_a_protected_mode_part_is_refused(capsys, tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage_header(4, 0, 8192))
    err = one_line_error(capsys, "--kernel", str(kernel), "--serial", "none")
    assert "syssize 0" in err


def test_an_unexpected_exception_is_one_line_and_status_14(capsys, monkeypatch):
    from qemu_lite.machine import Machine

    def broken_run(self, timeout=None):
        raise RuntimeError("simulated bug\nwith a second line")

    monkeypatch.setattr(Machine, "run", broken_run)
    status, err = run(capsys, "--serial", "none")
    assert status == cli.STATUS["internal"] == 14
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "internal error: RuntimeError: simulated bug with a second line" in err
    assert "please report this bug" in err
    path = err.split("(traceback in ", 1)[1].split(")", 1)[0]
    try:
        assert "broken_run" in Path(path).read_text()
    finally:
        os.unlink(path)


def test_internal_error_status_is_documented():
    assert "14 an internal" in (cli.__doc__ or "")
    assert "14 internal error" in (cli.make_parser().epilog or "")


# -- misleading messages -----------------------------------------------------------------

@pytest.fixture
def odd_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Paths that are not usable input files, and what the message must say."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    (tmp_path / "dir").mkdir()
    return {"dir": (str(tmp_path / "dir"), "is a directory"),
            "fifo": (str(fifo), "not a regular file"),
            "null": ("/dev/null", "not a regular file"),
            "empty": (str(empty), "empty")}


@pytest.mark.parametrize("kind", ["dir", "fifo", "null", "empty"])
@pytest.mark.parametrize("option, what", [
    ("DISK", "disk image"), ("-hdb", "disk image"), ("-cdrom", "CD-ROM image"),
    ("--kernel", "kernel"), ("--bios", "BIOS"), ("--initrd", "initrd"),
])
def test_odd_files_get_an_accurate_message(capsys, odd_files, tmp_path, kind, option, what):
    path, message = odd_files[kind]
    if option == "DISK":
        args = [path]
    elif option == "--initrd":
        kernel = tmp_path / "bzImage"
        kernel.write_bytes(bzimage_header(4, 4096, 8192))
        args = ["--kernel", str(kernel), "--initrd", path]
    else:
        args = [option, path]
    err = one_line_error(capsys, *args, "--serial", "none", "--timeout", "5")
    assert f"{what} '{path}'" in err and message in err, err
    assert "No such file" not in err


def test_drive_without_index_takes_the_next_free_one(capsys, disk, tmp_path):
    second = tmp_path / "second.img"
    second.write_bytes(bytes(512 * 8))
    status, err = run(capsys, str(disk), "--drive", f"file={second}", "--serial", "none",
                      "--timeout", "60")
    assert status == 1, err  # the default guest booted from d.img and passed


def test_machine_places_unindexed_drives_like_qemu(tmp_path):
    from qemu_lite import Machine

    images = []
    for name in "abc":
        path = tmp_path / f"{name}.img"
        path.write_bytes(bytes(512 * (1 + len(images))))
        images.append(path)
    with Machine(images[0], drives=[Drive(images[1]), Drive(images[2], index=3)]) as m:
        ide0, ide1 = m.board.ide0.drives, m.board.ide1.drives
        assert [d.nb_sectors for d in (*ide0, *ide1)] == [1, 2, 0, 3]


def test_five_drives_have_no_free_index(capsys, tmp_path):
    args = []
    for i in range(5):
        path = tmp_path / f"{i}.img"
        path.write_bytes(bytes(512))
        args += ["--drive", f"file={path}"]
    err = one_line_error(capsys, *args, "--serial", "none")
    assert "no free IDE index" in err


@pytest.mark.parametrize("spec", ["socket://localhost:99999", "socket://localhost:abc",
                                  "socket://localhost", "rfc2217://host:0"])
def test_bad_socket_port_is_one_clear_line(capsys, spec):
    err = one_line_error(capsys, "--serial", spec)
    assert "debug|info" not in err and "regex" not in err
    assert spec in err


def test_same_image_twice_says_so(capsys, disk):
    err = one_line_error(capsys, str(disk), "--drive", f"file={disk},index=2")
    assert "given twice" in err and "locked" not in err


@pytest.mark.parametrize("args", [["--rtc="], ["--serial2="], [""], ["-hda", ""],
                                  ["--memory=2.0000001M"]])
def test_empty_and_fractional_values_are_not_silently_ignored(capsys, args):
    # Found by the fuzz test: each of these used to boot the default image.
    one_line_error(capsys, *args, "--serial", "none", "--timeout", "5")


def test_non_utf8_command_line_reaches_a_multiboot_kernel(capsys, tmp_path, assemble):
    # argv holds undecodable bytes as surrogates; encoding them strictly was a traceback.
    from guestlib import protected_mode_guest

    kernel = tmp_path / "k.bin"
    kernel.write_bytes(assemble(protected_mode_guest(r"""
    mov esi, [ebx + 16]         ; multiboot_info.cmdline
    call puts
    mov al, 0
    call exit
""")))
    out = tmp_path / "serial.txt"
    status, err = run(capsys, "--kernel", str(kernel), "--append", "caf\udcc3\udca9 \udcff",
                      "-m", "16M", "--serial", f"file:{out}", "--timeout", "20")
    assert status == 1, err
    assert out.read_bytes() == b"caf\xc3\xa9 \xff"


@pytest.mark.parametrize("kernel_bytes", [
    bzimage_header(27, 8 << 20, 4096),                      # truncated bzImage
    multiboot_elf([(0, 0x100000, 0x80, 0x10)]),             # p_memsz < p_filesz
    multiboot_elf([(0, 0x100000, 0x80, 0x40000000)]),       # does not fit in 16 MiB
    b"no header at all" * 64,
])
def test_a_bad_kernel_is_refused_before_any_output_file_is_created(capsys, tmp_path,
                                                                  kernel_bytes):
    kernel = tmp_path / "kernel"
    kernel.write_bytes(kernel_bytes)
    out = tmp_path / "serial.txt"
    one_line_error(capsys, "--kernel", str(kernel), "-m", "16M", "--serial", f"file:{out}")
    assert not out.exists()


def test_an_initrd_too_big_for_ram_is_refused_before_any_output(capsys, tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bzimage_header(4, 4096, 5 * 512 + 4096))
    initrd = tmp_path / "initrd"
    with open(initrd, "wb") as f:
        f.truncate(20 << 20)  # sparse: 20 MiB for a 16 MiB machine
    out = tmp_path / "serial.txt"
    err = one_line_error(capsys, "--kernel", str(kernel), "--initrd", str(initrd), "-m", "16M",
                         "--serial", f"file:{out}")
    assert "does not fit" in err and not out.exists()


def test_serial_and_serial2_cannot_share_a_new_output_file(capsys, tmp_path):
    out = tmp_path / "both.txt"
    err = one_line_error(capsys, "--serial", f"file:{out}", "--serial2",
                         f"file:{tmp_path}/./both.txt")
    assert "serial2 output" in err and not out.exists()
