"""Machine's debugging hooks on real guest code: breakpoints, steps, virtual memory."""

from __future__ import annotations

import threading
import time

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot
from qemu_lite.paging import PageFault

LOOP_TOP = 0x100800   # fixed by padding in the guest
COUNTER = 0x200000    # physical = linear (identity map)
WINDOW = 0x40000000   # linear page the guest maps onto `secret`; the next page is unmapped

# Long mode, a page mapped at WINDOW, a 3-iteration loop, then prints the
# quadword at WINDOW + 16 (the test may patch it) and exits with 0x21.
GUEST = protected_mode_guest(r"""
    LOAD_GDT
    ENTER_LONG_MODE lm
bits 64
lm:
    mov dword [pdpt + 8], pd2 + 3
    mov dword [pd2], pt2 + 3
    mov dword [pt2], secret + 3
    mov rax, cr3
    mov cr3, rax
    mov rbx, 0x40000000
    mov rax, 0x1122334455667788
    mov [rbx + 8], rax
    xor ecx, ecx
    times (0x800 - ($ - $$)) nop
loop_top:
    inc ecx
    mov [0x200000], ecx
    cmp ecx, 3
    jne loop_top
    mov rax, [rbx + 16]
    call puthex64
    mov al, 10
    call putc64
    mov al, 0x21
    out 0xF4, al
    hlt
align 4096
secret: dq 0, 0, 0x0BADC0DE
align 4096
pd2: times 512 dq 0
pt2: times 512 dq 0
""", long_mode=True)


@pytest.fixture
def machine(assemble, tmp_path):
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(GUEST))
    out = bytearray()
    with Machine(memory="32M", serial="none") as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        m.output = out  # type: ignore[attr-defined]
        yield m


def test_breakpoint_stops_before_the_instruction_and_resuming_makes_progress(machine):
    machine.add_breakpoint(LOOP_TOP)
    seen = []
    for _ in range(3):
        result = machine.run(timeout=20)
        assert result.reason == "breakpoint", result
        assert machine.reg("rip") == LOOP_TOP
        seen.append(machine.reg("ecx"))
    assert seen == [0, 1, 2]  # each resume ran the loop once more, not the same stop again
    assert int.from_bytes(machine.read_memory(COUNTER, 4), "little") == 2
    machine.remove_breakpoint(LOOP_TOP)
    assert machine.breakpoints == []
    result = machine.run(timeout=20)
    assert (result.reason, result.exit_status) == ("exit", 0x43)
    assert machine.output == b"000000000BADC0DE\n"


def test_breakpoint_added_inside_already_translated_code_fires(machine):
    machine.add_breakpoint(LOOP_TOP)
    assert machine.run(timeout=20).reason == "breakpoint"
    assert machine.run(timeout=20).reason == "breakpoint"  # the loop's block is translated now
    cmp = LOOP_TOP + 2 + 7  # inc ecx (2 bytes), mov [disp32], ecx (7 bytes)
    machine.add_breakpoint(cmp)
    assert machine.run(timeout=20).reason == "breakpoint"
    assert machine.reg("rip") == cmp and machine.reg("ecx") == 2


def test_callback_decides_whether_to_stop(machine):
    calls = []

    def on_hit(m, address):
        calls.append((address, m.reg("ecx")))
        return m.reg("ecx") == 2

    machine.add_breakpoint(LOOP_TOP, on_hit)
    assert machine.run(timeout=20).reason == "breakpoint"
    assert calls == [(LOOP_TOP, 0), (LOOP_TOP, 1), (LOOP_TOP, 2)]
    machine.add_breakpoint(LOOP_TOP, lambda m, a: calls.append(a) is not None)  # never stops
    result = machine.run(timeout=20)
    assert result.exit_status == 0x43 and calls[3:] == []  # resumed past the stop, loop done


def test_step_runs_one_instruction(machine):
    machine.add_breakpoint(LOOP_TOP)
    machine.run(timeout=20)
    result = machine.step(timeout=20)
    assert result.reason == "step"
    assert machine.reg("rip") == LOOP_TOP + 2 and machine.reg("ecx") == 1
    for _ in range(3):  # mov, cmp, jne (taken)
        assert machine.step(timeout=20).reason == "step"
    assert machine.reg("rip") == LOOP_TOP and machine.reg("ecx") == 1
    assert int.from_bytes(machine.read_memory(COUNTER, 4), "little") == 1


def test_virtual_memory_through_the_guest_page_tables(machine):
    machine.add_breakpoint(LOOP_TOP)
    machine.run(timeout=20)
    paddr = machine.translate(WINDOW + 8)
    assert machine.read_memory(paddr, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert paddr >> 12 != WINDOW >> 12  # really through the guest's tables, not identity
    assert machine.read_virtual(WINDOW + 8, 16) == bytes.fromhex("8877665544332211"
                                                                 "DEC0AD0B00000000")
    with pytest.raises(PageFault) as fault:
        machine.read_virtual(WINDOW + 4090, 16)  # runs into the unmapped next page
    assert fault.value.error_code == 0 and fault.value.address == WINDOW + 4096
    with pytest.raises(PageFault):
        machine.translate(WINDOW + 4096)
    machine.write_virtual(WINDOW + 16, (0xFEEDFACECAFEF00D).to_bytes(8, "little"))
    machine.remove_breakpoint(LOOP_TOP)
    assert machine.run(timeout=20).exit_status == 0x43
    assert machine.output == b"FEEDFACECAFEF00D\n"  # the guest read what the debugger wrote


def test_bad_addresses_are_clear_errors(machine):
    with pytest.raises(ValueError, match="outside the 64-bit"):
        machine.add_breakpoint(-1)
    with pytest.raises(KeyError):
        machine.remove_breakpoint(0x1234)


def test_stop_from_another_thread_ends_a_halted_guest(assemble, tmp_path):
    # The GDB stub's Ctrl-C reaches a halted guest this way (the wake path).
    kernel = tmp_path / "idle.bin"
    kernel.write_bytes(assemble(protected_mode_guest("    sti\n.idle:\n    hlt\n    jmp .idle\n")))
    with Machine(memory="32M", serial="none") as m:
        multiboot.load(m, kernel)
        timer = threading.Timer(0.3, m.stop)
        timer.start()
        started = time.monotonic()
        result = m.run(timeout=30)
        waited = time.monotonic() - started
        timer.join()
    assert result.reason == "stopped", result
    # Ended by the stop, not by sitting out the budget (before the fix the halted
    # loop went back to sleep and only the 30 s deadline ended the run).
    assert waited < 20


def test_write_watchpoint_stops_after_the_store_and_runs_it_once(machine):
    machine.add_watchpoint(COUNTER, 4, "write")
    seen = []
    for _ in range(3):
        result = machine.run(timeout=20)
        assert result.reason == "watchpoint", result
        assert machine.last_watch == (COUNTER, "write")
        seen.append(int.from_bytes(machine.read_memory(COUNTER, 4), "little"))
    assert seen == [1, 2, 3]  # each stop came after its store, and no store ran twice
    machine.remove_watchpoint(COUNTER, 4, "write")
    assert machine.run(timeout=20).exit_status == 0x43


def test_read_watchpoint_sees_the_guest_load(machine):
    machine.add_breakpoint(LOOP_TOP)
    machine.run(timeout=20)  # the guest has mapped WINDOW now
    machine.remove_breakpoint(LOOP_TOP)
    machine.add_watchpoint(WINDOW + 16, 8, "read")  # the quadword the guest prints at the end
    result = machine.run(timeout=20)
    assert result.reason == "watchpoint" and machine.last_watch == (WINDOW + 16, "read")
    assert machine.output == b""  # stopped before the print
    with pytest.raises(ValueError, match="access must be"):
        machine.add_watchpoint(COUNTER, 4, "exec")
