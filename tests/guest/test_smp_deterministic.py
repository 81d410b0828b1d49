"""-smp N with --deterministic: turns on the engine are measured in guest time, so
the same guest interleaves its vCPUs at the same instructions in every run, and a
snapshot taken mid-turn resumes the same interleaving (issue 18, -smp with the
virtual clock).

Every CPU takes TICKETS tickets from a shared counter with LOCK XADD and writes its
APIC ID into the log slot of each ticket it draws (one slot per STRIDE tickets);
the BSP prints the log once all CPUs are done, so the output is the schedule."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

TICKETS = 1_000_000  # per CPU: several 2 ms turns each (about 12 ns a ticket)
STRIDE_BITS = 12
STRIDE = 1 << STRIDE_BITS
READY_PORT = 0x5F0

BODY = r"""
    jmp setup
align 4
counter: dd 0
cpus_done: dd 0
log: times CPUS * TICKETS / STRIDE + 1 db 0

take_tickets:                          ; esi: where to go after the last one
    mov ebx, [0xFEE00020]
    shr ebx, 24
    add bl, '0'
    mov ecx, TICKETS
.next:
    mov eax, 1
    lock xadd [counter], eax
    test eax, STRIDE - 1
    jnz .skip
    shr eax, STRIDE_BITS
    mov [log + eax], bl
.skip:
    dec ecx
    jnz .next
    lock inc dword [cpus_done]
    jmp esi

    AP_TRAMPOLINE
    mov dword [0xFEE000F0], 0x1FF
    mov esi, ap_park
    jmp take_tickets
ap_park:
    cli
    hlt

setup:
    LOAD_GDT
    PIC_MASK_ALL
    mov dword [0xFEE000F0], 0x1FF
    mov dx, READY_PORT                 ; the host may snapshot here
    out dx, al
    START_APS
    mov esi, bsp_wait
    jmp take_tickets
bsp_wait:
    pause
    cmp dword [cpus_done], CPUS
    jne bsp_wait
    mov esi, log
    mov ecx, CPUS * TICKETS / STRIDE
.print:
    lodsb
    call putc
    loop .print
    mov al, 10
    call putc
    mov al, 0
    call exit
"""


def _kernel(assemble, tmp_path, cpus: int):
    source = (f"%define CPUS {cpus}\n%define TICKETS {TICKETS}\n%define STRIDE {STRIDE}\n"
              f"%define STRIDE_BITS {STRIDE_BITS}\n"
              f"%define READY_PORT {READY_PORT:#x}\n"
              + protected_mode_guest(BODY, interrupts=True, smp=True))
    path = tmp_path / "tickets.bin"
    path.write_bytes(assemble(source))
    return path


def _machine(kernel, out: bytearray, cpus: int) -> Machine:
    m = Machine(memory="16M", serial="none", vga="none", smp=cpus, deterministic=True)
    m.board.com1.add_output_listener(out.extend)
    multiboot.load(m, kernel)
    return m


def _schedule(stats: list[dict[str, object]]) -> list[tuple[object, ...]]:
    # What the guest's instructions decide; run_ns is host time.
    return [(s["slices"], s["exits"], s["ipis_sent"], s["switches_in"]) for s in stats]


def _check_log(text: str, cpus: int) -> str:
    line = text.strip()
    assert len(line) == cpus * TICKETS // STRIDE, text
    assert set(line) == {str(i) for i in range(cpus)}, line  # every CPU drew tickets
    # Turns interleave: far more runs of one CPU's tickets than CPUs.
    runs = 1 + sum(a != b for a, b in zip(line, line[1:], strict=False))
    assert runs > 4 * cpus, line
    return line


@pytest.mark.parametrize("cpus", (2, 3))
def test_the_same_guest_interleaves_the_same_way_in_every_run(assemble, tmp_path, cpus):
    kernel = _kernel(assemble, tmp_path, cpus)
    logs, schedules, clocks = [], [], []
    for _ in range(2):
        out = bytearray()
        with _machine(kernel, out, cpus) as m:
            result = m.run(timeout=120)
            assert result.reason == "exit", (result, out)
            logs.append(_check_log(out.decode(), cpus))
            schedules.append(_schedule(m.vcpu_stats()))
            clocks.append(m.clock.now())
    assert logs[0] == logs[1]
    assert schedules[0] == schedules[1]
    assert clocks[0] == clocks[1]


def test_a_snapshot_taken_mid_turn_resumes_the_same_interleaving(assemble, tmp_path):
    kernel = _kernel(assemble, tmp_path, 2)
    out = bytearray()
    with _machine(kernel, out, 2) as m:
        assert m.run(timeout=120).reason == "exit"
        whole = _check_log(out.decode(), 2)

    out = bytearray()
    with _machine(kernel, out, 2) as m:
        # Past the start-up: a point inside some turn, both CPUs drawing tickets.
        start = m.clock.now()
        result = m.run(timeout=120, guest_ns=start + 3_300_000)
        assert result.reason != "exit", result
        snap = m.snapshot()
        assert m.run(timeout=120).reason == "exit"
        first = out.decode()
        out.clear()
        m.restore(snap)
        assert m.run(timeout=120).reason == "exit"
        again = out.decode()
    assert _check_log(first, 2) == whole
    assert _check_log(again, 2) == whole
