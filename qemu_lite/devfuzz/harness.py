"""Drive one device model with a byte string read as a sequence of guest and host operations.

A :class:`Target` builds a fresh device with fakes around it (a manual clock, a bounded
guest RAM, recording interrupt lines) and names its *windows*: the port or MMIO ranges a
guest reaches, each with the access sizes a CPU can make there.  :func:`execute` decodes
the input into operations and checks the invariants after each one and at the end:

- a guest access never raises (a DMA fault must become a guest-visible error bit), and a
  read returns an int that fits the access size;
- every DMA request the device makes is sane: int address and length, neither negative,
  the length bounded (the fake RAM refuses what lies outside it, as the board's does);
- the device's memory stays bounded: its footprint (lengths of the containers reachable
  from it) grows by at most the target's allowance over a fresh device, whatever the
  guest repeats (the burst operation repeats the last access hundreds of times);
- where the device has ``save_state``: the state loads into a fresh device, saves back
  to the same value, and the two devices then answer the same accesses the same way;
- where a fuzzing run reuses one device pair through ``reset()`` (see :class:`Pace`): a
  reset device saves the same state as a freshly built one.

:func:`execute` without a pace checks everything on every input with fresh devices (the
tests and ``replay`` do so); a long run passes a :class:`Pace` that keeps the per-operation
checks on every input but does the round trip on every Nth only and reuses devices.

A violation raises :class:`Finding`; the byte string is its reproducer.  No device
module is imported here, so a fuzzer can instrument them before :mod:`.targets` loads.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

BURST = 256  # how often a burst repeats the last access
MAX_BURSTS = 8  # per input: more are skipped (libFuzzer likes 0xFF bytes; bursts are slow)
BURST_SELECTOR = 0xFF  # the selector byte of a burst (other values pick accesses and events)
MAX_DMA = 1 << 24  # a larger single DMA request is a device bug, not a guest's choice
PROBE_OPS = 24  # accesses replayed on the original and the restored device
SMALL_WINDOW = 16  # windows up to this many offsets are read whole after a restore
FOOTPRINT_MIN_OPS = 32  # shorter inputs without a burst are not measured at the end


class Finding(Exception):
    """An invariant broke; ``str()`` says which, on which operation.  ``reproducer`` is
    the input that ran, where a pace ran less than the input given (else None)."""

    reproducer: bytes | None = None


class FuzzMemory:
    """Guest RAM for a device's DMA: ``size`` bytes at physical 0, nothing elsewhere.

    Outside RAM raises ValueError (the board's view does the same, and the device must
    turn it into a bus error); an absurd request (negative, not an int, huge) is a
    :class:`Finding` at once, since no guest value should ever produce one."""

    def __init__(self, size: int) -> None:
        self.ram = bytearray(size)
        self.reads = self.writes = self.faults = 0

    def _check(self, paddr: object, n: object) -> None:
        if type(paddr) is not int or type(n) is not int:
            raise Finding(f"DMA with a non-int address or length: {paddr!r}, {n!r}")
        if paddr < 0 or n < 0 or n > MAX_DMA:
            raise Finding(f"DMA request out of any range: address {paddr:#x}, length {n:#x}")

    def read(self, paddr: int, n: int) -> bytes:
        self._check(paddr, n)
        if paddr + n > len(self.ram):
            self.faults += 1
            raise ValueError(f"no RAM at {paddr:#x}+{n:#x}")
        self.reads += 1
        return bytes(self.ram[paddr:paddr + n])

    def write(self, paddr: int, data: bytes) -> None:
        self._check(paddr, len(data))
        if paddr + len(data) > len(self.ram):
            self.faults += 1
            raise ValueError(f"no RAM at {paddr:#x}+{len(data):#x}")
        self.writes += 1
        self.ram[paddr:paddr + len(data)] = data

    def store(self, paddr: int, data: bytes) -> None:
        """The guest CPU's own store (a descriptor ring it builds): wraps inside RAM."""
        if not self.ram:
            return
        paddr %= len(self.ram)
        data = data[:len(self.ram) - paddr]
        self.ram[paddr:paddr + len(data)] = data


@dataclass(frozen=True)
class Window:
    """A range of ``length`` port or MMIO offsets of ``device`` and the sizes allowed there."""

    name: str
    device: Any
    length: int
    sizes: tuple[int, ...] = (1, 2, 4)


@dataclass(frozen=True)
class HostEvent:
    """Something from outside the guest: time passing, a key, a frame, an IRQ line.

    ``apply(arg, payload)`` gets a 32-bit argument and, if ``payload`` is set, up to
    255 input bytes."""

    name: str
    apply: Callable[[int, bytes], None]
    payload: bool = False


class Target:
    """One device class under test; subclasses fill in :meth:`build`."""

    name = "target"
    allowance = 1 << 10  # footprint growth allowed over a fresh device: half the
    # MAX_BURSTS * BURST accesses of one input, so a leak of one element an access shows
    ram_size = 0  # bytes of guest RAM the device can DMA into (DMA targets set it)

    def __init__(self) -> None:
        self.memory = FuzzMemory(self.ram_size)
        self.windows: list[Window] = []
        self.events: list[HostEvent] = []
        self.stateful: list[Any] = []  # objects with save_state/load_state, in order
        self.roots: list[Any] = []  # what the footprint walk starts from
        self.shared: list[Any] = []  # the board's, not the device's: not walked
        self.build()

    def build(self) -> None:
        raise NotImplementedError

    reusable = False  # reset() brings every part of it back to a fresh target's state

    @classmethod
    def run_input(cls, data: bytes) -> Result:
        """Run one input (see :func:`execute`) at the process's :data:`PACE`."""
        return execute(cls, data, PACE)

    def reset(self) -> None:
        """Back to the state of a freshly built target, for the next input: the fakes
        (RAM, the clock's time and timers) first, then the devices' own ``reset()``.
        Subclasses restore what a device's reset keeps on purpose (battery-backed CMOS,
        a disk's medium) and their own fakes."""
        self.memory.ram[:] = bytes(len(self.memory.ram))
        self.memory.reads = self.memory.writes = self.memory.faults = 0
        for obj in self.stateful or self.roots:
            obj.reset()

    def fingerprint(self) -> list[Any]:
        """What a reset must bring back: the saved states and guest RAM."""
        return [[obj.save_state() for obj in self.stateful], bytes(self.memory.ram)]

    def after_op(self) -> None:
        """Hook run after every operation (the machine's pollers run at each stop)."""

    def sync_time(self, other: Target) -> None:
        """Make this fresh target's clock show ``other``'s time (before a state load)."""

    def ram_event(self) -> HostEvent:
        """The guest CPU storing a word in RAM (descriptor rings, PRD tables)."""

        def store(arg: int, payload: bytes) -> None:
            self.memory.store(arg & ~3, payload)

        return HostEvent("ram-store", store, payload=True)


@dataclass
class Op:
    kind: str  # "read", "write", "event", "burst"
    window: int = 0
    offset: int = 0
    size: int = 1
    value: int = 0
    payload: bytes = b""

    def describe(self, target: Target) -> str:
        if self.kind in ("read", "write"):
            w = target.windows[self.window]
            text = f"{self.kind} {w.name}+{self.offset:#x}/{self.size}"
            return text + (f" = {self.value:#x}" if self.kind == "write" else "")
        if self.kind == "event":
            return f"{target.events[self.window].name}({self.value:#x}, {self.payload.hex()})"
        return f"burst x{BURST}"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def take(self, n: int) -> int:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return int.from_bytes(chunk, "little")

    def take_bytes(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


def decode(target: Target, data: bytes) -> Iterator[Op]:
    """The operations ``data`` stands for: a selector byte, then that operation's fields.

    Selector 0xFF is a burst; any other value, modulo the number of choices, picks a read
    or a write of a window (then 3 bytes of offset, 1 of size, the value) or a host event
    (4 bytes of argument, and for events with a payload a length byte and the bytes)."""
    r = _Reader(data)
    n_windows, n_events = len(target.windows), len(target.events)
    choices = 2 * n_windows + n_events
    while r.more():
        sel = r.take(1)
        if sel == BURST_SELECTOR:
            yield Op("burst")
            continue
        sel %= choices
        if sel < 2 * n_windows:
            w = target.windows[sel >> 1]
            offset = r.take(3) % w.length
            size = w.sizes[r.take(1) % len(w.sizes)]
            if sel & 1:
                yield Op("write", sel >> 1, offset, size, r.take(size))
            else:
                yield Op("read", sel >> 1, offset, size)
        else:
            index = sel - 2 * n_windows
            value = r.take(4)
            payload = r.take_bytes(r.take(1)) if target.events[index].payload else b""
            yield Op("event", index, value=value, payload=payload)


def encode(target: Target, ops: list[Op]) -> bytes:
    """The byte string :func:`decode` reads back as ``ops`` (regression tests write these)."""
    n_windows = len(target.windows)
    out = bytearray()
    for op in ops:
        if op.kind in ("read", "write"):
            w = target.windows[op.window]
            out.append(2 * op.window + (op.kind == "write"))
            out += op.offset.to_bytes(3, "little")
            out.append(w.sizes.index(op.size))
            if op.kind == "write":
                out += op.value.to_bytes(op.size, "little")
        elif op.kind == "event":
            out.append(2 * n_windows + op.window)
            out += op.value.to_bytes(4, "little")
            if target.events[op.window].payload:
                out.append(len(op.payload))
                out += op.payload
        else:
            out.append(BURST_SELECTOR)
    return bytes(out)


def apply_op(target: Target, op: Op) -> int | None:
    """Run one operation; the value a read returned, else None."""
    if op.kind == "event":
        target.events[op.window].apply(op.value, op.payload)
        return None
    w = target.windows[op.window]
    if op.kind == "write":
        w.device.io_write(op.offset, op.size, op.value)
        return None
    value = w.device.io_read(op.offset, op.size)
    if type(value) is not int or not 0 <= value < 1 << (8 * op.size):
        raise Finding(f"{op.describe(target)} returned {value!r}")
    return value


_slots: dict[type, tuple[str, ...]] = {}


def _slot_names(cls: type) -> tuple[str, ...]:
    names = _slots.get(cls)
    if names is None:
        names = _slots[cls] = tuple(n for c in cls.__mro__ for n in getattr(c, "__slots__", ()))
    return names


def footprint(roots: list[Any], exclude: list[Any] | None = None) -> int:
    """Elements and bytes held by containers reachable from ``roots`` through the
    attributes of qemu_lite's device objects (harness fakes, callables and ``exclude``
    not followed)."""
    seen: set[int] = {id(x) for x in exclude or ()}
    total = 0
    stack = list(roots)
    scalars = (int, float, bool, type(None))
    while stack:
        obj = stack.pop()
        if isinstance(obj, scalars) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (bytes, bytearray, str, memoryview)):
            total += len(obj)
        elif isinstance(obj, (list, tuple, deque, set, frozenset)):
            total += len(obj)
            stack.extend(obj)
        elif isinstance(obj, dict):
            total += len(obj)
            stack.extend(obj.values())
        elif type(obj).__module__.startswith("qemu_lite.devices"):
            attrs = getattr(obj, "__dict__", None)
            if attrs is not None:
                stack.extend(attrs.values())
            for slot in _slot_names(type(obj)):
                stack.append(getattr(obj, slot, None))
    return total


def save(target: Target) -> list[Any]:
    """The target's saved states, copied through pickle: a state must be plain data that
    survives serialisation, and holds no live container of the device."""
    states = [obj.save_state() for obj in target.stateful]
    try:
        return list(pickle.loads(pickle.dumps(states, pickle.HIGHEST_PROTOCOL)))
    except Exception as exc:
        raise Finding(f"saved state does not pickle: {type(exc).__name__}: {exc}") from exc


_baselines: dict[type[Target], int] = {}


@dataclass(frozen=True)
class Pace:
    """How much of the checking a long run does per input.

    ``round_trip_every``: the save/load round trip and the probe on every Nth input of a
    target (1: on every one); the per-operation checks and the footprint run on all.
    ``burst_every``: an input's bursts run on every Nth input only (the others skip them,
    as they skip bursts past :data:`MAX_BURSTS`).  A burst is hundreds of accesses, so
    inputs with bursts, which libFuzzer's mutations favour, cost several times the rest.
    ``reset_check_every``: 0 builds two fresh devices for every input; N > 0 keeps one
    pair per target and ``reset()`` s it between inputs, comparing a reset target with a
    fresh one (:meth:`Target.fingerprint`) on its first reuse and every Nth after, so a
    reset that leaves state behind is a finding rather than a leak between inputs."""

    round_trip_every: int = 1
    reset_check_every: int = 0
    burst_every: int = 1

    def __post_init__(self) -> None:
        if self.round_trip_every < 1 or self.reset_check_every < 0 or self.burst_every < 1:
            raise ValueError(f"bad pace {self}")


FULL = Pace()
PACE = FULL  # the CLI's ``run`` sets the pace of its process


@dataclass
class _Pool:
    """One target class's reused pair, its input count and how often each was reset."""

    target: Target | None = None
    twin: Target | None = None
    inputs: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    last: bytes = b""  # the input the reused target ran last


_pools: dict[type[Target], _Pool] = {}
_fresh_prints: dict[type[Target], Any] = {}


def _reused(target_cls: type[Target], pool: _Pool, which: str, pace: Pace) -> Target:
    """The pool's target (or twin), reset; a fresh one the first time."""
    target: Target | None = getattr(pool, which)
    if target is None:
        target = target_cls()
        setattr(pool, which, target)
        return target
    target.reset()
    n = pool.resets[which] = pool.resets.get(which, 0) + 1
    if (n - 1) % pace.reset_check_every == 0:
        _check_reset(target_cls, target, pool.last)
    return target


def _pickled(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


def _check_reset(target_cls: type[Target], target: Target, last: bytes) -> None:
    """A reset target saves what a fresh one saves (a fresh one is built once per class);
    ``last`` is the input it ran before, which the finding names."""
    try:
        fresh = _fresh_prints.get(target_cls)
        if fresh is None:
            fresh = _fresh_prints[target_cls] = _pickled(target_cls().fingerprint())
        again = _pickled(target.fingerprint())
    except Exception as exc:
        raise Finding(f"a reset target's state raised {type(exc).__name__}: {exc}") from exc
    if again != fresh:
        raise Finding(f"reset() leaves state a fresh device lacks: "
                      f"{_first_difference(fresh, again, 'fresh')} (the input before, "
                      f"in hex: {last.hex() or 'empty'})")


@dataclass
class Result:
    ops: int = 0
    reads: int = 0
    footprint: int = 0
    notes: list[str] = field(default_factory=list)


def without_bursts(target_cls: type[Target], data: bytes) -> bytes:
    """``data`` with its bursts taken out: what a pace that skips them runs instead."""
    if BURST_SELECTOR not in data:
        return data
    shape = _shapes.get(target_cls)
    if shape is None:
        shape = _shapes[target_cls] = target_cls()
    return encode(shape, [op for op in decode(shape, data) if op.kind != "burst"])


_shapes: dict[type[Target], Target] = {}  # a target per class, for its windows and events


def execute(target_cls: type[Target], data: bytes, pace: Pace = FULL) -> Result:
    """Run ``data`` against ``target_cls``; raise :class:`Finding` on a violation.

    At the default pace, on a fresh target with every check; at another, the round trip
    and the bursts only on every Nth input and, for a reusable target, on reset devices.
    A finding on an input run without its bursts carries the input that ran as its
    ``reproducer`` (at the full pace that one shows the same finding)."""
    pool = _pools.setdefault(target_cls, _Pool())
    pool.inputs += 1
    round_trip = (pool.inputs - 1) % pace.round_trip_every == 0
    ran = data if (pool.inputs - 1) % pace.burst_every == 0 else without_bursts(target_cls,
                                                                               data)
    try:
        return _execute_paced(target_cls, ran, pace, pool, round_trip)
    except Finding as finding:
        if ran != data and finding.reproducer is None:
            finding.reproducer = ran
        raise


def _execute_paced(target_cls: type[Target], data: bytes, pace: Pace, pool: _Pool,
                   round_trip: bool) -> Result:
    reuse = pace.reset_check_every > 0 and target_cls.reusable
    if not reuse:
        return _execute(target_cls, data, target_cls(), round_trip, target_cls)

    def twin() -> Target:
        return _reused(target_cls, pool, "twin", pace)

    try:
        target = _reused(target_cls, pool, "target", pace)
        pool.last = data
        return _execute(target_cls, data, target, round_trip, twin)
    except BaseException as exc:
        _pools[target_cls] = _Pool(inputs=pool.inputs)  # nothing broken is reused
        if not isinstance(exc, Finding) or "reset() leaves" in str(exc):
            raise
        found = exc
    # A finding on reset devices: the reproducer must show it on fresh ones too.
    execute(target_cls, data)
    raise Finding(f"{found} -- on reset devices only (fresh ones pass this input): reset() "
                  f"leaves state behind that the saved state does not show")


def _execute(target_cls: type[Target], data: bytes, target: Target, round_trip: bool,
             twin_cls: Callable[[], Target]) -> Result:
    baseline = _baselines.get(target_cls)
    if baseline is None:
        baseline = _baselines[target_cls] = footprint(target.roots, target.shared)
    limit = baseline + target.allowance
    result = Result()
    history: list[Op] = []
    last_access: Op | None = None
    bursts = 0
    for op in decode(target, data):
        if op.kind == "burst":
            bursts += 1
            steps = [last_access] * BURST if last_access and bursts <= MAX_BURSTS else []
        else:
            steps = [op]
        for step in steps:
            assert step is not None
            try:
                apply_op(target, step)
                target.after_op()
            except Finding as exc:
                raise Finding(f"op {result.ops} ({step.describe(target)}): {exc}") from exc
            except Exception as exc:
                raise Finding(f"op {result.ops} ({step.describe(target)}) raised "
                              f"{type(exc).__name__}: {exc}") from exc
        if op.kind in ("read", "write"):
            last_access = op
            history.append(op)
        result.ops += 1
        if op.kind == "burst" and steps:
            size = footprint(target.roots, target.shared)
            if size > limit:
                raise Finding(f"footprint {size} after a burst of "
                              f"{last_access.describe(target) if last_access else '-'}: "
                              f"more than {limit} (fresh device {baseline})")
    # Growth past the allowance takes many operations (or a burst, checked above); a
    # single huge allocation is libFuzzer's -rss_limit_mb / -malloc_limit_mb to catch.
    result.footprint = footprint(target.roots, target.shared) if result.ops >= FOOTPRINT_MIN_OPS else 0
    if result.footprint > limit:
        raise Finding(f"footprint {result.footprint} after {result.ops} ops: more than "
                      f"{limit} (fresh device {baseline})")
    if target.stateful and round_trip:
        _check_round_trip(twin_cls, target, _probe(target, history))
    return result


def _probe(target: Target, history: list[Op]) -> list[Op]:
    """What the original and the restored device must answer alike: each small window
    read whole at every size, and the reads the input made, first (a write would hide
    state the restore lost); then the input's last accesses again."""
    reads = [Op("read", i, offset, size) for i, w in enumerate(target.windows)
             if w.length <= SMALL_WINDOW for size in w.sizes
             for offset in range(0, w.length, size)]
    seen = {(op.window, op.offset, op.size) for op in reads}
    for op in history:
        key = (op.window, op.offset, op.size)
        if op.kind == "read" and key not in seen:
            seen.add(key)
            reads.append(op)
    return reads[:2 * PROBE_OPS] + history[-PROBE_OPS:]


def _check_round_trip(twin_cls: Callable[[], Target], target: Target, probe: list[Op]) -> None:
    try:
        state = save(target)
    except Finding:
        raise
    except Exception as exc:
        raise Finding(f"save_state raised {type(exc).__name__}: {exc}") from exc
    twin = twin_cls()
    twin.sync_time(target)
    twin.memory.ram[:] = target.memory.ram
    try:
        for obj, saved in zip(twin.stateful, state, strict=True):
            obj.load_state(saved)
        again = save(twin)
    except Exception as exc:
        raise Finding(f"load_state of a saved state raised {type(exc).__name__}: {exc}") \
            from exc
    if again != state:
        raise Finding(f"state does not round-trip: {_first_difference(state, again)}")
    for i, op in enumerate(probe):
        try:
            a = apply_op(target, op)
            target.after_op()
            b = apply_op(twin, op)
            twin.after_op()
        except Exception as exc:
            raise Finding(f"probe {i} ({op.describe(target)}) raised {exc!r}") from exc
        if a != b:
            raise Finding(f"restored device differs: probe {i} ({op.describe(target)}) "
                          f"read {a:#x} before the round trip, {b:#x} after")
    if save(target) != save(twin):
        raise Finding(f"restored device diverged after {len(probe)} probes: "
                      f"{_first_difference(save(target), save(twin))}")


def _first_difference(a: Any, b: Any, path: str = "state") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}[{key!r}]")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r:.80} != {b!r:.80}"
