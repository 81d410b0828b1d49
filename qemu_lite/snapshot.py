"""Machine state as one value: in-memory snapshots and state files.

A machine's state is its RAM plus :func:`capture`'s dict: the CPU (the engine's
context, which holds the registers, segment caches, hflags with the interrupt
shadow, and QEMU's pending-exception memory), whether the vCPU is halted, under
``-smp`` the other vCPUs (``smp.VcpuSet.save_state``: their parked contexts, run
states, IA32_APIC_BASE, and which vCPU is on the engine), the A20 gate, every board slot's device (``save_state``), the clock (guest time
and every armed timer), the TSC, the serial back ends' unread input and the
disks (their ``--snapshot`` overlays, and a hash of what they read).  The
shadow MMU is a cache: it is dropped on restore, never saved.

In-memory snapshots (:class:`Snapshot`) keep a copy of RAM and of the VGA's
memory and, through mmu_core's dirty-page logs, restore only the RAM frames and
VRAM pages written since the last snapshot or restore: a restore costs time in
proportion to what the guest changed (docs/SNAPSHOTS.md).  State files (:func:`save_file`,
:func:`load_file`) are zip archives: ``state.json`` and the deflated RAM.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import pickle
import zipfile
from typing import TYPE_CHECKING, Any

from qemu_lite.devices.base import StateError, check_state
from qemu_lite.devices.vga import Vga
from qemu_lite.platform import reset_order

if TYPE_CHECKING:
    from qemu_lite.machine import Machine

FORMAT = "qemu_lite machine state"
VERSION = 1
PAGE = 4096
_CHUNK = 64 << 10  # RAM is saved in chunks of this size; all-zero chunks are left out
_tokens = itertools.count(1)


def config(m: Machine) -> dict[str, Any]:
    """What a state needs of the machine it is loaded into (checked on load)."""
    return {"memory": m.memory_size, "cpus": m.cpus, "mmu": m.mmu_mode,
            "deterministic": m.deterministic,
            "slots": [slot.name for slot in m.board.slots if slot.device is not None],
            "disks": [d.size for d in m.board.disks],
            "context_size": len(m.core.context_save())}


def _device_states(m: Machine, *, vram: bool) -> dict[str, Any]:
    out = {}
    for slot in m.board.slots:
        if slot.device is None:
            continue
        if not vram and isinstance(slot.device, Vga):
            out[slot.name] = slot.device.save_state(vram=False)
        else:
            out[slot.name] = slot.device.save_state()
    return out


def capture(m: Machine, *, hash_disks: bool, vram: bool = True) -> dict[str, Any]:
    """Everything but RAM, as plain values, at a slice boundary (``vram=False``: the
    VGA's memory left out, for a snapshot that keeps it as it keeps RAM)."""
    _check_stopped(m)
    board = m.board
    backends = {}
    for name, uart in (("com1", board.com1), ("com2", board.com2)):
        if uart is not None and uart.backend is not None:
            backends[name] = uart.backend.save_state()
    return {
        "format": FORMAT, "version": VERSION, "config": config(m),
        "cpu": {"version": 1, "context": bytes(m.core.context_save()),
                "halted": m.cpu.halted, "a20": bool(m.core.a20_enabled),
                "guest_resets": m.runloop.guest_resets},
        "devices": _device_states(m, vram=vram),
        "backends": backends,
        "clock": m.clock.save_state(),
        "tsc": m.tsc.read(),
        "disks": [d.save_state(with_hash=hash_disks) for d in board.disks],
        "vcpus": m.vcpus.save_state() if m.vcpus is not None else None,
    }


def apply(m: Machine, state: dict[str, Any], *, check_disk_hashes: bool,
          vram: bool = True) -> None:
    """Load :func:`capture`'s dict (RAM already in place, and VRAM too with
    ``vram=False``); drop the MMU's caches."""
    _check_stopped(m)
    check_state(state, "machine state", (VERSION,))
    if state.get("format") != FORMAT:
        raise StateError("not a qemu_lite machine state")
    _check_config(state["config"], config(m))
    board = m.board
    for disk, saved in zip(board.disks, state["disks"], strict=True):
        disk.load_state(saved, check_hash=check_disk_hashes)
    cpu = check_state(state["cpu"], "cpu", (1,))
    ctx = m.core.context_save()
    if len(cpu["context"]) != len(ctx):
        raise StateError("cpu: saved engine context has the wrong size")
    ctx[:] = cpu["context"]
    m.core.context_restore()
    m.cpu.halted = bool(cpu["halted"])
    m.core.a20_enabled = bool(cpu["a20"])
    m.runloop.guest_resets = int(cpu["guest_resets"])
    m.runloop.pending_reset = False
    if m.vcpus is not None:  # the other vCPUs' contexts; the APIC page shows the current's
        m.vcpus.load_state(state.get("vcpus"))
    # Power-on first, so that what a device does not save (its wires' levels, caches)
    # is what a freshly built machine has: loading into a used machine and into a new
    # one must give the same machine.
    for owner in reset_order(board.slots):
        owner.reset()
    for slot in board.slots:
        if slot.device is None:
            continue
        if not vram and isinstance(slot.device, Vga):
            slot.device.load_state(state["devices"][slot.name], vram=False)
        else:
            slot.device.load_state(state["devices"][slot.name])
    m.pci_bars.sync()  # where the loaded functions decode their BARs
    if m.vcpus is not None:
        m.vcpus.finish_load()
    for name, saved in state["backends"].items():
        uart = board.com1 if name == "com1" else board.com2
        if uart is not None and uart.backend is not None:
            uart.backend.load_state(saved)
    m.clock.load_state(state["clock"])  # after the devices: it re-arms their timers
    m.tsc.write(int(state["tsc"]))
    m.core.flush_shadow()  # the shadow MMU and Unicorn's TLB are caches of the old state


def _check_config(saved: dict[str, Any], here: dict[str, Any]) -> None:
    saved = {"cpus": 1, **saved}  # states written before -smp had one CPU
    names = {"memory": "RAM size", "cpus": "CPUs (-smp)", "mmu": "MMU mode",
             "deterministic": "--deterministic", "slots": "devices", "disks": "disk sizes", "context_size": "engine build"}
    for key, what in names.items():
        if saved.get(key) != here[key]:
            raise StateError(f"the saved state is for another machine: {what} "
                             f"{saved.get(key)!r} there, {here[key]!r} here")


def _check_stopped(m: Machine) -> None:
    if m.runloop.vcpu_thread is not None:
        raise RuntimeError("machine state is taken and loaded between runs, "
                           "not while the guest runs")


# -- in-memory snapshots ----------------------------------------------------------------

class Snapshot:
    """A token from :meth:`Machine.snapshot`: RAM, VRAM, CPU and devices at that moment.

    Restore it any number of times with :meth:`Machine.restore`.  Restoring the
    snapshot taken (or restored) last copies back only the RAM frames and VRAM
    pages the guest or the host wrote since; another token costs a full copy of
    both once."""

    def __init__(self, ram: bytearray, vram: bytearray | None, state: bytes,
                 disk_writes: list[int]):
        self.id = next(_tokens)
        self.ram = ram
        self.vram = vram  # the VGA's memory (None: no VGA), kept out of ``state``
        self.state = state  # pickle of capture(): loaded fresh at each restore
        self.disk_writes = disk_writes  # each disk's writes to its backing, then

    @property
    def size(self) -> int:
        return len(self.ram) + len(self.vram or b"") + len(self.state)


def take(m: Machine) -> Snapshot:
    state = capture(m, hash_disks=False, vram=False)
    disk_writes = [d.writes_to_backing for d in m.board.disks]
    vga = m.board.vga
    token = Snapshot(bytearray(m.core.ram), None if vga is None else bytearray(vga.vram),
                     pickle.dumps(state, pickle.HIGHEST_PROTOCOL), disk_writes)
    if m.mmu_mode != "native":
        m.core.dirty_log_start()
    m._snapshot_base = token
    return token


def restore(m: Machine, token: Snapshot) -> None:
    if not isinstance(token, Snapshot):
        raise TypeError(f"restore() takes a token from snapshot(), not {type(token).__name__}")
    if len(token.ram) != m.memory_size:
        raise ValueError("this snapshot belongs to a machine with another RAM size")
    for disk, writes in zip(m.board.disks, token.disk_writes, strict=True):
        if disk.writes_to_backing != writes:
            raise StateError(f"disk {disk.name!r} was written since the snapshot (not through "
                             "a --snapshot overlay): its file cannot be rolled back")
    _check_stopped(m)
    ram, core = m.core.ram, m.core
    vram = None if m.board.vga is None else m.board.vga.vram
    if (vram is None) != (token.vram is None):
        raise ValueError("this snapshot belongs to a machine with another display")
    if m._snapshot_base is token and core.dirty_logging:
        frames = core.dirty_log_take()
        code = False
        for gfn in frames:
            start = gfn * PAGE
            ram[start:start + PAGE] = token.ram[start:start + PAGE]
            code = code or core.frame_has_code(gfn)
        if frames and (code or m.mmu_mode == "identity"):
            _flush_translations(m)  # translations of code the guest rewrote since
        if vram is not None and token.vram is not None:
            for page in core.vram_log_take():  # VRAM holds no code: no flush
                start = page * PAGE
                vram[start:start + PAGE] = token.vram[start:start + PAGE]
    else:
        ram[:] = token.ram
        if vram is not None and token.vram is not None:
            vram[:] = token.vram
        _flush_translations(m)
        if m.mmu_mode != "native":
            core.dirty_log_start()
        m._snapshot_base = token
    apply(m, pickle.loads(token.state), check_disk_hashes=False, vram=False)


# -- state files -----------------------------------------------------------------------

def save_file(m: Machine, path: str | os.PathLike[str]) -> None:
    """Write the machine's state to ``path``: a zip of ``state.json`` and ``ram.bin``,
    the RAM's non-zero 64 KiB chunks deflated (``state.json`` lists which)."""
    state = capture(m, hash_disks=True)
    state["disk_names"] = [d.name for d in m.board.disks]
    ram = m.core.ram
    present = bytearray((len(ram) + _CHUNK - 1) // _CHUNK)
    zero = bytes(_CHUNK)
    for i in range(len(present)):
        chunk = bytes(ram[i * _CHUNK:(i + 1) * _CHUNK])  # bytes: a memcmp, not a byte loop
        present[i] = chunk != zero[:len(chunk)]
    state["ram"] = {"size": len(ram), "chunk": _CHUNK, "present": bytes(present)}
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr("state.json", json.dumps(state, default=_encode, separators=(",", ":")))
            with z.open("ram.bin", "w", force_zip64=True) as out:
                for i, here in enumerate(present):
                    if here:
                        out.write(ram[i * _CHUNK:(i + 1) * _CHUNK])
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_file(m: Machine, path: str | os.PathLike[str]) -> None:
    """Load a state written by :func:`save_file` into ``m`` (a machine built alike)."""
    try:
        with zipfile.ZipFile(path) as z:
            state = json.loads(z.read("state.json"), object_hook=_decode)
            if not isinstance(state, dict):
                raise StateError("state.json is not a machine state")
            check_state(state, "machine state", (VERSION,))
            _check_config(state["config"], config(m))
            layout = state["ram"]
            present = layout["present"]
            if (layout["size"] != m.memory_size or layout["chunk"] != _CHUNK
                    or len(present) != (m.memory_size + _CHUNK - 1) // _CHUNK):
                raise StateError("saved RAM does not fit this machine")
            _check_stopped(m)
            ram = m.core.ram
            zero = bytes(_CHUNK)
            with z.open("ram.bin") as src:
                for i, here in enumerate(present):
                    start, end = i * _CHUNK, min((i + 1) * _CHUNK, len(ram))
                    if not here:
                        ram[start:end] = zero[:end - start]
                        continue
                    chunk = src.read(end - start)
                    if len(chunk) != end - start:
                        raise StateError("saved RAM is truncated")
                    ram[start:end] = chunk
    except (zipfile.BadZipFile, KeyError, TypeError, json.JSONDecodeError,
            UnicodeDecodeError) as exc:
        raise StateError(f"{os.fspath(path)}: not a qemu_lite state file ({exc!r})") from None
    _flush_translations(m)
    m._snapshot_base = None
    if m.core.dirty_logging:
        m.core.dirty_log_stop()
    apply(m, state, check_disk_hashes=True)


def _flush_translations(m: Machine) -> None:
    """Drop every translated block: RAM changed under the engine's feet."""
    m.uc.ctl_flush_tb()  # type: ignore[attr-defined]


def _encode(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "__iter__"):
        return list(value)
    raise TypeError(f"cannot save a {type(value).__name__} in a machine state")


def _decode(obj: dict[str, Any]) -> object:
    if len(obj) == 1 and "$b" in obj:
        return base64.b64decode(obj["$b"])
    return obj
