"""Patch b: the engine ends slices itself, at block boundaries, with no block hook.

- The deterministic clock is counted per instruction at block starts: a loop's
  TSC delta grows by exactly its instructions times the clock's rate.
- A request from another thread (``Machine.wake``/``stop``, the engine's exit
  request) ends a guest spinning with interrupts off and no timer.
- An interrupt raised while IF is clear is taken right after the instruction
  in STI's shadow, where the engine's window opens.
"""

from __future__ import annotations

import threading

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.clock import TSC_KHZ, VirtualClock
from qemu_lite.loaders import multiboot

pytestmark = pytest.mark.requires_patched_engine("b")

LOOP = r"""
main:
    rdtsc
    mov ebx, eax
    mov ecx, {n}
.spin:
    dec ecx
    jnz .spin
    rdtsc
    sub eax, ebx
    call puthex
    mov al, 0
    call exit
"""


def _run(assemble, tmp_path, body: str, **machine_args) -> tuple[object, str, Machine]:
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(protected_mode_guest(body)))
    out = bytearray()
    m = Machine(serial="none", memory="32M", **machine_args)
    m.board.com1.add_output_listener(out.extend)
    multiboot.load(m, kernel)
    result = m.run(timeout=60)
    m.close()
    return result, out.decode(), m


def test_deterministic_clock_counts_each_instruction(assemble, tmp_path):
    deltas = []
    for n in (1000, 3000):
        result, out, m = _run(assemble, tmp_path, LOOP.format(n=n), deterministic=True)
        assert m.hooks.engine_exits and m.hooks.blocks == 0, "the block hook ran"
        assert result.reason == "exit", (result, out)
        deltas.append(int(out, 16))
    ticks_per_insn = VirtualClock.NS_PER_INSN * TSC_KHZ // 1_000_000
    # 2000 more iterations of two instructions (DEC, JNZ)
    assert deltas[1] - deltas[0] == 2000 * 2 * ticks_per_insn, deltas


def test_wake_from_another_thread_ends_a_spinning_guest(assemble, tmp_path):
    kernel = tmp_path / "spin.bin"
    kernel.write_bytes(assemble(protected_mode_guest("main:\n    cli\n    jmp $\n")))
    with Machine(serial="none", memory="32M") as m:
        multiboot.load(m, kernel)
        timer = threading.Timer(0.5, m.stop, kwargs={"reason": "stopped-from-thread"})
        timer.start()
        result = m.run(timeout=30)
        timer.join()
    assert result.reason == "stopped-from-thread", result


# A self-IPI raised while IF is clear waits; the guest then runs STI; INC; INC.
# The interrupt must arrive after the first INC (STI's shadow) and before the
# second: the handler prints the counter it interrupted.
WINDOW = r"""
main:
    cli
    mov eax, handler
    mov word [idt + 0x40 * 8], ax
    mov word [idt + 0x40 * 8 + 2], 0x08
    mov word [idt + 0x40 * 8 + 4], 0x8E00
    shr eax, 16
    mov word [idt + 0x40 * 8 + 6], ax
    lidt [idtr]
    mov dword [0xFEE000F0], 0x1FF      ; spurious vector register: APIC on
    xor edi, edi
    mov dword [0xFEE00300], 0x40040    ; ICR: fixed, self, vector 0x40
    mov ecx, 100000
.wait:                                 ; the interrupt stays pending: IF is clear
    dec ecx
    jnz .wait
    sti
    inc edi                            ; in the shadow: runs before the interrupt
    inc edi
    jmp $
handler:
    mov eax, edi
    call puthex
    mov al, 0
    call exit
idt: times 256 dq 0
idtr:
    dw 256 * 8 - 1
    dd idt
"""


def test_masked_interrupt_arrives_after_the_sti_shadow(assemble, tmp_path):
    result, out, _ = _run(assemble, tmp_path, WINDOW)
    assert result.reason == "exit", (result, out)
    assert out == "00000001", out
