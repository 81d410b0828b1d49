"""Raw disk image backends: persistence, snapshots, read-only media, locking, errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemu_lite.devices.block import SECTOR_SIZE, BlockImage, BlockImageError


def pattern(sectors: int) -> bytes:
    """Each sector filled with its own number, so misplaced sectors show."""
    return b"".join(bytes([n & 0xFF, n >> 8]) * (SECTOR_SIZE // 2) for n in range(sectors))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(16))
    return path


def test_read_returns_the_file_contents(image: Path) -> None:
    with BlockImage.open(image) as disk:
        assert disk.sector_count == 16
        assert not disk.readonly
        assert disk.read(0, 16) == pattern(16)
        assert disk.read(5, 2) == pattern(16)[5 * 512:7 * 512]


def test_writes_persist_after_close(image: Path) -> None:
    disk = BlockImage.open(image)
    disk.write(3, b"\xaa" * 1024)
    disk.flush()
    disk.close()
    data = image.read_bytes()
    assert data[3 * 512:5 * 512] == b"\xaa" * 1024
    assert data[:3 * 512] == pattern(16)[:3 * 512]
    assert data[5 * 512:] == pattern(16)[5 * 512:]


def test_snapshot_keeps_the_file_byte_identical(image: Path) -> None:
    before = hashlib.sha256(image.read_bytes()).digest()
    mtime = image.stat().st_mtime_ns
    with BlockImage.open(image, snapshot=True) as disk:
        disk.write(1, b"\x11" * 512)
        disk.write(2, b"\x22" * 1024)
        disk.write(1, b"\x33" * 512)
        # the guest sees its writes, interleaved with unwritten sectors
        got = disk.read(0, 5)
        assert got[:512] == pattern(1)
        assert got[512:1024] == b"\x33" * 512
        assert got[1024:2048] == b"\x22" * 1024
        assert got[2048:] == pattern(5)[2048:]
        disk.flush()
    assert hashlib.sha256(image.read_bytes()).digest() == before
    assert image.stat().st_mtime_ns == mtime


def test_snapshot_works_on_a_file_without_write_permission(image: Path) -> None:
    image.chmod(0o444)
    if os.access(image, os.W_OK):
        pytest.skip("running as root: permissions are not enforced")
    with BlockImage.open(image, snapshot=True) as disk:
        disk.write(0, bytes(512))
        assert disk.read(0, 1) == bytes(512)


def test_read_only_media_refuse_writes(image: Path) -> None:
    with BlockImage.open(image, readonly=True) as disk:
        assert disk.readonly
        with pytest.raises(BlockImageError, match="read-only"):
            disk.write(0, bytes(512))
    assert image.read_bytes() == pattern(16)


def test_writable_open_of_unwritable_file_names_it(image: Path) -> None:
    image.chmod(0o444)
    if os.access(image, os.W_OK):
        pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(BlockImageError, match="disk.img.*permission denied"):
        BlockImage.open(image)


def test_second_writable_open_is_refused_naming_the_file(image: Path) -> None:
    with BlockImage.open(image):
        with pytest.raises(BlockImageError, match=r"disk\.img.*locked"):
            BlockImage.open(image)
        with pytest.raises(BlockImageError, match="locked"):
            BlockImage.open(image, readonly=True)
    # closing releases the lock
    BlockImage.open(image).close()


def test_readers_share_but_exclude_a_writer(image: Path) -> None:
    with BlockImage.open(image, readonly=True), BlockImage.open(image, snapshot=True):
        with pytest.raises(BlockImageError, match="locked"):
            BlockImage.open(image)


def test_lock_is_seen_by_another_process(image: Path) -> None:
    code = (
        "import sys\n"
        "from qemu_lite.devices.block import BlockImage, BlockImageError\n"
        "try:\n"
        "    BlockImage.open(sys.argv[1])\n"
        "except BlockImageError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    with BlockImage.open(image):
        # cwd away from the source tree, so the child imports the installed package
        result = subprocess.run([sys.executable, "-c", code, str(image)],
                                capture_output=True, text=True, timeout=60,
                                cwd=image.parent)
    assert result.returncode == 3, result.stderr
    assert "locked by another process" in result.stdout


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BlockImageError, match=r"nothere\.img.*no such file"):
        BlockImage.open(tmp_path / "nothere.img")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.img"
    path.touch()
    with pytest.raises(BlockImageError, match=r"empty\.img.*empty"):
        BlockImage.open(path, readonly=True)


def test_file_shorter_than_a_sector_reports_its_size(tmp_path: Path) -> None:
    path = tmp_path / "short.img"
    path.write_bytes(b"x" * 100)
    with pytest.raises(BlockImageError, match=r"short\.img.*100 bytes"):
        BlockImage.open(path, snapshot=True)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(BlockImageError, match="directory"):
        BlockImage.open(tmp_path)


def test_trailing_partial_sector(tmp_path: Path) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(b"\x01" * 512 + b"\x02" * 100)
    with pytest.raises(BlockImageError, match=r"odd\.img.*612 bytes.*multiple of 512"):
        BlockImage.open(path)
    with BlockImage.open(path, readonly=True) as disk:
        assert disk.sector_count == 2
        assert disk.read(1, 1) == b"\x02" * 100 + bytes(412)


def test_access_beyond_the_end_raises(image: Path) -> None:
    with BlockImage.open(image) as disk:
        with pytest.raises(BlockImageError, match="beyond"):
            disk.read(15, 2)
        with pytest.raises(BlockImageError, match="beyond"):
            disk.write(16, bytes(512))
        with pytest.raises(BlockImageError, match="whole sectors"):
            disk.write(0, bytes(100))


def test_from_bytes_pads_to_whole_sectors() -> None:
    disk = BlockImage.from_bytes(b"abc")
    assert disk.sector_count == 1
    assert disk.read(0, 1) == b"abc" + bytes(509)
    disk.write(0, b"\xff" * 512)
    assert disk.read(0, 1) == b"\xff" * 512
    with pytest.raises(BlockImageError):
        BlockImage.from_bytes(b"")
    ro = BlockImage.from_bytes(bytes(1024), readonly=True)
    with pytest.raises(BlockImageError):
        ro.write(0, bytes(512))


def test_close_is_idempotent_and_final(image: Path) -> None:
    disk = BlockImage.open(image)
    disk.close()
    disk.close()
    with pytest.raises(BlockImageError, match="closed"):
        disk.read(0, 1)
