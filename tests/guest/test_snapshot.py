"""Saved machine state: state files that continue exactly (same process and a new one),
and in-memory snapshots restored many times with the guest's memory checked each time."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from guestlib import protected_mode_guest

from qemu_lite import DEFAULT_IMAGE, Machine
from qemu_lite.devices.base import StateError
from qemu_lite.loaders import multiboot

REPO = Path(__file__).resolve().parents[2]


def _default_machine(serial_out: bytearray, **kw) -> Machine:
    m = Machine(DEFAULT_IMAGE, deterministic=True, snapshot=True, vga="none", **kw)
    m.board.com1.add_output_listener(serial_out.extend)
    return m


# A new process builds the same machine, loads the state and runs to the end.
RESTORE_SCRIPT = r"""
import sys
from qemu_lite import DEFAULT_IMAGE, Machine
out = bytearray()
m = Machine(DEFAULT_IMAGE, deterministic=True, snapshot=True, vga="none")
m.board.com1.add_output_listener(out.extend)
m.restore_state(sys.argv[1])
r = m.run(timeout=300)
m.close()
sys.stdout.buffer.write(out)
sys.stderr.write(f"{r.reason} {r.exit_status}\n")
"""


def test_default_image_saved_mid_run_continues_exactly(tmp_path):
    whole = bytearray()
    with _default_machine(whole) as m:
        result = m.run(timeout=300)
        end_ns = m.clock.now()
    assert result.reason == "exit" and result.exit_status == 1
    assert b"default guest: all stages passed" in whole

    # Stop half way through (guest time), save, and go on in this process.
    head = bytearray()
    state = tmp_path / "mid.qlstate"
    with _default_machine(head) as m:
        assert m.run(timeout=300, guest_ns=end_ns // 2).reason == "guest-time"
        m.save_state(state)
        at_save = bytes(head)
        assert 0 < len(at_save) < len(whole)
        assert m.run(timeout=300).exit_status == 1
    assert head == whole  # a stop and a save do not perturb the run

    # Restore into a fresh machine of this process...
    tail = bytearray()
    with _default_machine(tail) as m:
        m.restore_state(state)
        assert m.run(timeout=300).exit_status == 1
    assert at_save + tail == whole

    # ... and in a new process.
    proc = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, str(state)],
                          capture_output=True, timeout=600, cwd=tmp_path)
    assert proc.stderr.decode().strip().endswith("exit 1"), proc.stderr.decode()[-2000:]
    assert at_save + proc.stdout == whole

    with zipfile.ZipFile(state) as z:
        saved = json.loads(z.read("state.json"))
        assert 0 < z.getinfo("ram.bin").file_size < 64 << 20  # zero chunks left out
    assert saved["ram"]["size"] == 64 << 20
    assert saved["disk_names"] == [str(DEFAULT_IMAGE)]
    assert state.stat().st_size < 4 << 20  # 64 MiB of RAM, mostly zeros, deflated


def test_state_for_another_machine_is_refused_with_a_clear_message(tmp_path):
    state = tmp_path / "s.qlstate"
    with Machine(memory="16M", vga="none") as m:
        m.save_state(state)
    with Machine(memory="32M", vga="none") as m, pytest.raises(StateError, match="RAM size"):
        m.restore_state(state)
    with Machine(memory="16M", vga="none", deterministic=True) as m, \
            pytest.raises(StateError, match="--deterministic"):
        m.restore_state(state)
    bad = tmp_path / "bad.qlstate"
    bad.write_bytes(b"not a zip")
    with Machine(memory="16M", vga="none") as m, pytest.raises(StateError, match="not a qemu"):
        m.restore_state(bad)
    # A version this build cannot read.
    newer = tmp_path / "newer.qlstate"
    with zipfile.ZipFile(state) as src, zipfile.ZipFile(newer, "w") as dst:
        doc = json.loads(src.read("state.json"))
        doc["version"] = 99
        dst.writestr("state.json", json.dumps(doc))
        dst.writestr("ram.bin", src.read("ram.bin"))
    with Machine(memory="16M", vga="none") as m, pytest.raises(StateError, match="version 99"):
        m.restore_state(newer)


def test_a_changed_disk_image_is_named_on_restore(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(64 * 512))
    state = tmp_path / "s.qlstate"
    with Machine(disk, memory="16M", vga="none") as m:
        m.save_state(state)
    disk.write_bytes(b"\1" * 512 + bytes(63 * 512))
    with Machine(disk, memory="16M", vga="none") as m, \
            pytest.raises(StateError, match="content hash"):
        m.restore_state(state)


# Dirties PAGES pages (one store each) per round, counting rounds, forever.
PAGES = 100
DIRTIER = r"""
main:
    mov ebx, 0
.round:
    inc ebx
    mov [0x200000], ebx
    mov edi, 0x201000
    mov ecx, PAGES
.page:
    mov [edi], ebx
    add edi, 4096
    loop .page
    jmp .round
""".replace("PAGES", str(PAGES))


def _dirtier(assemble, tmp_path, **kw) -> Machine:
    kernel = tmp_path / "dirtier.bin"
    kernel.write_bytes(assemble(protected_mode_guest(DIRTIER)))
    m = Machine(vga="none", deterministic=True, **kw)
    multiboot.load(m, kernel)
    return m


def test_snapshot_restored_a_thousand_times_gives_back_its_memory(assemble, tmp_path):
    with _dirtier(assemble, tmp_path) as m:
        assert m.run(timeout=60, guest_ns=200_000).reason == "guest-time"
        rounds = int.from_bytes(m.read_memory(0x200000, 4), "little")
        assert rounds > 0
        pages = m.read_memory(0x200000, (PAGES + 1) * 4096)
        token = m.snapshot()
        taken_at, eip = m.clock.now(), m.reg("eip")
        for i in range(1000):
            m.run(timeout=60, guest_ns=m.clock.now() + 20_000 + 10 * i)
            now = int.from_bytes(m.read_memory(0x200000, 4), "little")
            assert now > rounds  # the guest ran and wrote its pages
            m.restore(token)
            assert m.read_memory(0x200000, (PAGES + 1) * 4096) == pages, i
            assert (m.clock.now(), m.reg("eip")) == (taken_at, eip)  # guest time goes back too
        # The restored guest still runs on from the snapshot's registers.
        m.run(timeout=60, guest_ns=m.clock.now() + 50_000)
        assert int.from_bytes(m.read_memory(0x200000, 4), "little") > rounds


def test_restore_copies_only_what_the_guest_dirtied(assemble, tmp_path):
    with _dirtier(assemble, tmp_path) as m:
        m.run(timeout=60, guest_ns=100_000)
        m.snapshot()
        m.run(timeout=60, guest_ns=m.clock.now() + 50_000)
        dirty = m.core.dirty_log_take()  # (a peek that empties the log: no restore after)
        assert 0x200 in dirty and 0x201 + PAGES - 1 in dirty
        assert PAGES + 1 <= len(dirty) < PAGES + 40  # its pages, and little else
        m.write_memory(0x300000, b"host")  # host writes are logged too
        assert m.core.dirty_log_take() == [0x300]


# Code at X written and run through data-filled TLB entries only: each round reads X
# as data before it calls it, so on the patched engine (data fills grant EXEC) the
# call never needs a fetch fill and only the engine knows X holds translated code.
X = 0x300000
CODE_SWAP = r"""
main:
    mov dword [X], 0x000001B8           ; mov eax, 1
    mov word [X + 4], 0xC300            ; ... ; ret
.round:
    mov eax, [X]
    call X
    mov [0x200000], eax
    cmp dword [0x200004], 0
    je .round
    mov dword [0x200004], 0
    mov dword [X + 1], 2                ; mov eax, 2: the host asked for new code
    jmp .round
""".replace("X", str(X))


def test_restore_of_rewritten_code_runs_the_snapshots_code(assemble, tmp_path):
    kernel = tmp_path / "swap.bin"
    kernel.write_bytes(assemble(protected_mode_guest(CODE_SWAP)))
    with Machine(vga="none", deterministic=True) as m:
        multiboot.load(m, kernel)
        m.run(timeout=60, guest_ns=100_000)
        assert m.read_memory(0x200000, 4) == (1).to_bytes(4, "little")
        token = m.snapshot()
        m.write_memory(0x200004, (1).to_bytes(4, "little"))
        m.run(timeout=60, guest_ns=m.clock.now() + 50_000)
        assert m.read_memory(0x200000, 4) == (2).to_bytes(4, "little")
        m.restore(token)    # X's old code is back in RAM: its translations must go
        m.write_memory(0x200000, bytes(4))
        m.run(timeout=60, guest_ns=m.clock.now() + 50_000)
        assert m.read_memory(0x200000, 4) == (1).to_bytes(4, "little")


def test_snapshot_and_restore_refuse_what_they_cannot_do(assemble, tmp_path):
    with Machine(memory="16M", vga="none") as m:
        with pytest.raises(TypeError, match="token"):
            m.restore("nope")  # type: ignore[arg-type]
        other = Machine(memory="32M", vga="none")
        try:
            with pytest.raises(ValueError, match="RAM size"):
                m.restore(other.snapshot())
        finally:
            other.close()
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(64 * 512))
    with Machine(disk, memory="16M", vga="none") as m:
        token = m.snapshot()
        m.board.disks[0].write(0, b"\1" * 512)
        with pytest.raises(StateError, match="written since the snapshot"):
            m.restore(token)


def test_snapshot_rolls_back_a_snapshot_disk(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(64 * 512))
    with Machine(disk, memory="16M", vga="none", snapshot=True) as m:
        token = m.snapshot()
        m.board.disks[0].write(3, b"\1" * 512)
        m.restore(token)
        assert m.board.disks[0].read(3, 1) == bytes(512)
