"""Machine's tracing hooks on real guest code: edge coverage (C), memory watches, port
and MMIO tracing, system-call entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from guestlib import protected_mode_guest

from qemu_lite import DEFAULT_IMAGE, Machine
from qemu_lite.loaders import multiboot

LOOP_TOP = 0x100800   # fixed by padding in the guest
NEVER = 0x100900      # a block the guest never runs
WATCHED = 0x300000    # RAM the guest stores to and loads from
LAPIC_VERSION = 0xFEE00030

# A loop, a store and load at WATCHED, port and local-APIC accesses, INT 0x80 with
# EAX=4 (the handler returns at once), then exit 0.
GUEST = protected_mode_guest(r"""
    LOAD_GDT
    lidt [idtr]
    mov al, 0x5A
    out 0x80, al                ; the POST port
    in al, 0x61                 ; the speaker/PIT gate port
    mov dword [0x300000], 0xCAFEF00D
    mov ebx, [0x300000]
    mov eax, [0xFEE00030]       ; local APIC version register (MMIO)
    mov eax, 4
    int 0x80
    xor ecx, ecx
    times (0x800 - ($ - $$)) nop
loop_top:
    inc ecx
    cmp ecx, 10
    jne loop_top
    test ecx, 0x100             ; never set: the branch to `never` is not taken
    jnz never
    mov al, 0
    call exit
    times (0x900 - ($ - $$)) nop
never:
    mov al, 0x7F
    call exit

syscall_handler:
    iret

align 8
idt:
    times 0x80 dq 0
    GATE32 syscall_handler, 0x08, 0xEE
idt_end:
idtr:
    dw idt_end - idt - 1
    dd idt
""")


@pytest.fixture
def kernel(assemble, tmp_path: Path) -> Path:
    path = tmp_path / "guest.bin"
    path.write_bytes(assemble(GUEST))
    return path


def _run(kernel: Path, setup, **machine_args) -> tuple[Machine, object]:
    with Machine(memory="32M", serial="none", **machine_args) as m:
        multiboot.load(m, kernel)
        extra = setup(m)
        result = m.run(timeout=30)
        assert (result.reason, result.exit_status) == ("exit", 1), result
    return m, extra


def test_coverage_records_blocks_and_edges(kernel: Path) -> None:
    maps = []
    for _ in range(2):
        m, cov = _run(kernel, lambda m: m.coverage())
        assert m.coverage() is cov  # one recorder while it runs
        blocks = cov.blocks()
        assert LOOP_TOP in blocks and 0x100000 < min(b for b in blocks if b >= 0x100000)
        assert NEVER not in blocks
        assert cov.executed >= 10  # the loop alone runs its block ten times
        maps.append(bytes(cov.bitmap))
        assert cov.edge_count() == sum(1 for b in maps[-1] if b)
        assert cov.hits() == {i: b for i, b in enumerate(maps[-1]) if b}
    assert maps[0] == maps[1]  # the same guest covers the same edges
    # The first pass falls into loop_top from the block before it, then the jne
    # makes loop_top a block: 9 runs of it, the edge loop_top -> loop_top 8 times.
    assert max(maps[0]) == 8

    virgin = bytearray(b"\xff" * cov.map_size)
    assert cov.novel(virgin) == cov.edge_count() > 0
    assert cov.novel(virgin) == 0  # nothing new the second time
    cov.clear(blocks=True)
    assert cov.edge_count() == 0 and cov.blocks() == set() and cov.executed == 0
    assert cov.hits() == {}
    cov.close()
    assert not cov.active
    with pytest.raises(ValueError):
        virgin_too_small = bytearray(16)
        cov.novel(virgin_too_small)


def test_watch_ports_mmio_and_syscall_hooks(kernel: Path) -> None:
    events: dict[str, list] = {"watch": [], "linear": [], "ports": [], "mmio": [], "sys": []}

    def setup(m: Machine) -> None:
        m.watch_memory(WATCHED, 4, lambda _m, *a: events["watch"].append(a), "access")
        m.watch_memory(WATCHED + 2, 1, lambda _m, *a: events["linear"].append(a), "write",
                       linear=True)  # no paging here: linear = physical
        m.trace_ports(lambda *a: events["ports"].append(a))
        m.trace_mmio(lambda *a: events["mmio"].append(a))
        m.add_syscall_hook(lambda mm, kind: events["sys"].append(
            (kind, mm.reg("eax"), mm.read_memory(mm.reg("eip") - 2, 2))))

    _run(kernel, setup)
    assert events["watch"] == [("write", WATCHED, 4, 0xCAFEF00D),
                               ("read", WATCHED, 4, 0xCAFEF00D)]
    assert events["linear"] == [("write", WATCHED, 4, 0xCAFEF00D)]  # the store covering it
    assert (0x80, 1, 0x5A, True) in events["ports"]
    assert any(p[0] == 0x61 and not p[3] for p in events["ports"])
    assert events["ports"][-1] == (0xF4, 1, 0, True)  # exit
    reads = [e for e in events["mmio"] if e[0] == LAPIC_VERSION]
    assert len(reads) == 1 and reads[0][1:2] == (4,) and not reads[0][3]
    assert reads[0][2] & 0xFF == 0x14  # the version the local APIC model reports
    assert events["sys"] == [("int80", 4, b"\xcd\x80")]


def test_syscall_hook_sees_int80_and_syscall_of_the_default_guest() -> None:
    seen: dict[str, bytes] = {}

    with Machine(DEFAULT_IMAGE, snapshot=True) as m:
        m.add_syscall_hook(lambda mm, kind: seen.setdefault(
            kind, mm.read_virtual(mm.cpu.linear_pc() - 2, 2)))
        assert m.run(timeout=60).exit_status == 1
        m.add_syscall_hook(None)
        assert m.cpu.syscall_observer is None
    assert seen.get("int80") == b"\xcd\x80" and seen.get("syscall") == b"\x0f\x05"


def test_hook_errors(kernel: Path) -> None:
    with Machine(memory="32M", serial="none", mmu="native") as m:
        with pytest.raises(ValueError, match="linear=True"):
            m.watch_memory(WATCHED, 4, lambda *a: None)
        with pytest.raises(ValueError, match="access"):
            m.watch_memory(WATCHED, 4, lambda *a: None, "exec", linear=True)
        with pytest.raises(ValueError, match="size"):
            m.watch_memory(WATCHED, 0, lambda *a: None, linear=True)

    def boom(*_args: object) -> None:
        raise RuntimeError("tracer failed")

    with Machine(memory="32M", serial="none") as m:
        multiboot.load(m, kernel)
        m.trace_ports(boom)
        with pytest.raises(RuntimeError, match="tracer failed"):
            m.run(timeout=30)


def test_mmio_trace_sees_vga_window_stores_handled_in_c() -> None:
    """The video BIOS loads its font into plane 2 through the 0xA0000 window, stores that
    Core's C VGA path makes without Python: the tracer is called from the C callback, so
    it sees every one of them."""
    stores: list[tuple[int, int, int, bool]] = []
    with Machine(DEFAULT_IMAGE, snapshot=True) as m:
        m.trace_mmio(lambda *a: stores.append(a) if a[3] and 0xA0000 <= a[0] < 0xC0000
                     else None)
        assert m.run(timeout=60).exit_status == 1
        m.trace_mmio(None)
    assert len(stores) >= 4096, len(stores)
    assert min(a for a, *_ in stores) == 0xA0000
