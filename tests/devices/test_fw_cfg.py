"""fw_cfg through its two ports, read as SeaBIOS or Linux's qemu_fw_cfg driver would."""

from __future__ import annotations

import struct

import pytest

from qemu_lite.devices.fw_cfg import (
    FW_CFG_CMDLINE_DATA,
    FW_CFG_E820_TABLE,
    FW_CFG_FILE_DIR,
    FW_CFG_FILE_FIRST,
    FW_CFG_ID,
    FW_CFG_MAX_CPUS,
    FW_CFG_NB_CPUS,
    FW_CFG_RAM_SIZE,
    FW_CFG_SIGNATURE,
    FwCfg,
)

SELECTOR, DATA = 0, 1


def select(dev: FwCfg, key: int) -> None:
    dev.io_write(SELECTOR, 2, key)


def read(dev: FwCfg, n: int) -> bytes:
    return bytes(dev.io_read(DATA, 1) for _ in range(n))


def read_item(dev: FwCfg, key: int, n: int) -> bytes:
    select(dev, key)
    return read(dev, n)


def find_file(dev: FwCfg, name: str) -> tuple[int, int] | None:
    """Walk the directory as firmware does: (select, size) of ``name``."""
    select(dev, FW_CFG_FILE_DIR)
    (count,) = struct.unpack(">I", read(dev, 4))
    for _ in range(count):
        size, key, _reserved, raw = struct.unpack(">IHH56s", read(dev, 64))
        if raw.rstrip(b"\0") == name.encode():
            return key, size
    return None


def test_signature_and_interface_id() -> None:
    dev = FwCfg(ram_size=64 << 20)
    assert read_item(dev, FW_CFG_SIGNATURE, 4) == b"QEMU"
    assert int.from_bytes(read_item(dev, FW_CFG_ID, 4), "little") == 1  # no DMA


def test_signature_is_selected_at_reset() -> None:
    dev = FwCfg(ram_size=1 << 20)
    select(dev, FW_CFG_RAM_SIZE)
    read(dev, 2)
    dev.reset()
    assert read(dev, 4) == b"QEMU"


def test_ram_size_and_cpus() -> None:
    dev = FwCfg(ram_size=0x1_2345_6000, nb_cpus=2)
    assert int.from_bytes(read_item(dev, FW_CFG_RAM_SIZE, 8), "little") == 0x1_2345_6000
    assert int.from_bytes(read_item(dev, FW_CFG_NB_CPUS, 2), "little") == 2
    assert int.from_bytes(read_item(dev, FW_CFG_MAX_CPUS, 2), "little") == 2


def test_reads_past_the_end_and_of_unknown_keys_give_zero() -> None:
    dev = FwCfg(ram_size=1 << 20)
    assert read_item(dev, FW_CFG_SIGNATURE, 6) == b"QEMU\0\0"
    assert read_item(dev, 0x3FF, 4) == bytes(4)
    assert read_item(dev, 0xFFFF, 2) == bytes(2)


def test_selecting_again_rewinds() -> None:
    dev = FwCfg(ram_size=1 << 20)
    assert read_item(dev, FW_CFG_SIGNATURE, 2) == b"QE"
    assert read_item(dev, FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_wide_reads_return_consecutive_bytes_low_first() -> None:
    dev = FwCfg(ram_size=1 << 20)
    select(dev, FW_CFG_SIGNATURE)
    assert dev.io_read(DATA, 2) == int.from_bytes(b"QE", "little")
    assert dev.io_read(DATA, 4) == int.from_bytes(b"MU\0\0", "little")


def test_data_port_writes_are_ignored() -> None:
    dev = FwCfg(ram_size=1 << 20)
    select(dev, FW_CFG_SIGNATURE)
    dev.io_write(DATA, 1, 0x41)
    assert read(dev, 4) == b"QEMU"


def test_file_directory_lookup_and_read() -> None:
    dev = FwCfg(ram_size=1 << 20)
    select(dev, FW_CFG_FILE_DIR)
    assert read(dev, 4) == bytes(4)  # empty directory
    order = dev.add_file("etc/boot-fail-wait", (5).to_bytes(4, "little"))
    e820 = bytes(range(40))
    key = dev.add_file("etc/e820", e820)
    assert order == FW_CFG_FILE_FIRST and key == FW_CFG_FILE_FIRST + 1
    assert find_file(dev, "etc/e820") == (key, 40)
    assert find_file(dev, "etc/boot-fail-wait") == (order, 4)
    assert find_file(dev, "etc/nothing") is None
    assert read_item(dev, key, 40) == e820
    assert dev.file_key("etc/e820") == key


def test_replacing_a_file_updates_its_size_in_the_directory() -> None:
    dev = FwCfg(ram_size=1 << 20)
    key = dev.add_file("opt/blob", b"abc")
    dev.set_item(key, b"abcdef")
    assert find_file(dev, "opt/blob") == (key, 6)


def test_bad_file_names_and_slots() -> None:
    dev = FwCfg(ram_size=1 << 20)
    dev.add_file("a", b"")
    with pytest.raises(ValueError, match="duplicate"):
        dev.add_file("a", b"x")
    with pytest.raises(ValueError):
        dev.add_file("x" * 56, b"")
    with pytest.raises(ValueError):
        dev.set_item(FW_CFG_FILE_FIRST + 5, b"x")  # not a file yet
    with pytest.raises(ValueError):
        dev.set_item(FW_CFG_FILE_DIR, b"x")


def test_set_item_for_boot_items_and_arch_keys() -> None:
    dev = FwCfg(ram_size=1 << 20)
    dev.set_item(FW_CFG_CMDLINE_DATA, b"console=ttyS0\0")
    dev.set_int(FW_CFG_E820_TABLE, 0, 4)
    assert read_item(dev, FW_CFG_CMDLINE_DATA, 14) == b"console=ttyS0\0"
    assert dev.get_item(FW_CFG_E820_TABLE) == bytes(4)


def test_save_and_load_state_keep_the_stream_position() -> None:
    dev = FwCfg(ram_size=1 << 20)
    select(dev, FW_CFG_SIGNATURE)
    read(dev, 1)
    state = dev.save_state()
    other = FwCfg(ram_size=1 << 20)
    other.load_state(state)
    assert read(other, 3) == b"EMU"
