"""``-accel tcg,thread=multi``: each vCPU on an engine and a host thread of its own.

What the shared engine of ``thread=single`` gave for free must hold across engines:
code one vCPU rewrites is seen by another that has it translated (engine patch o),
a stop made on an AP ends the machine's run, the APs stop with the run and carry on
in the next one, and what multi cannot do is refused with a clear error.  The LOCK
XADD counter and the page-table rewrites are test_smp's, run under both modes."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot
from qemu_lite.multi import multi_supported

pytestmark = pytest.mark.skipif(multi_supported() is not None, reason=str(multi_supported()))

MULTI = "tcg,thread=multi"
OLD, NEW = 0x11111111, 0x22222222

# The AP runs func (its own page) until the BSP has seen it do so; the BSP then
# rewrites func's immediate and raises go; the AP serialises (CPUID, as the SDM's
# cross-modifying code protocol asks) and calls func once more.
XMC_BODY = rf"""
    jmp setup
align 4
seen: dd 0
go: dd 0
done: dd 0
result: dd 0

    AP_TRAMPOLINE
    mov esp, 0x9F000
.spin:
    call func
    mov [seen], eax
    cmp dword [go], 0
    je .spin
    xor eax, eax
    cpuid
    call func
    mov [result], eax
    mov dword [done], 1
    PARK

setup:
    LOAD_GDT
    mov dword [0xFEE000F0], 0x1FF
    START_APS
.ran:
    pause
    cmp dword [seen], {OLD:#x}
    jne .ran
    mov dword [func + 1], {NEW:#x}     ; mov eax, imm32: the immediate
    mov dword [go], 1
.wait:
    pause
    cmp dword [done], 1
    jne .wait
    PRINT "result="
    mov eax, [result]
    call puthex
    PRINT 10
    mov al, 0
    call exit

align 4096
func:
    mov eax, {OLD:#x}
    ret
"""

# The AP ends the run through isa-debug-exit while the BSP spins.
AP_EXIT_BODY = r"""
    jmp setup
    AP_TRAMPOLINE
    mov al, 0x2A
    out 0xF4, al
.park:
    hlt
    jmp .park
setup:
    LOAD_GDT
    mov dword [0xFEE000F0], 0x1FF
    START_APS
.spin:
    pause
    jmp .spin
"""

# Both CPUs count to COUNT with LOCK XADD, slowly enough to outlast a short run.
COUNT_BODY = r"""
    jmp setup
align 4
counter: dd 0
aps_done: dd 0

    AP_TRAMPOLINE
    mov ecx, COUNT
.add:
    mov eax, 1
    lock xadd [counter], eax
    dec ecx
    jnz .add
    lock inc dword [aps_done]
    PARK

setup:
    LOAD_GDT
    mov dword [0xFEE000F0], 0x1FF
    START_APS
    mov ecx, COUNT
.add:
    mov eax, 1
    lock xadd [counter], eax
    dec ecx
    jnz .add
.wait:
    pause
    cmp dword [aps_done], 1
    jne .wait
    PRINT "counter="
    mov eax, [counter]
    call puthex
    PRINT 10
    mov al, 0
    call exit
"""


def _machine(assemble, tmp_path, body: str, defines: str = "", cpus: int = 2,
             vga: str = "none", **kwargs: object) -> tuple[Machine, bytearray]:
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(defines + protected_mode_guest(body, smp=True)))
    out = bytearray()
    m = Machine(memory="32M", serial="none", vga=vga, smp=cpus, accel=MULTI, **kwargs)
    m.board.com1.add_output_listener(out.extend)
    multiboot.load(m, kernel)
    return m, out


def test_code_rewritten_by_one_vcpu_is_seen_by_another_that_ran_it(assemble, tmp_path):
    m, out = _machine(assemble, tmp_path, XMC_BODY)
    with m:
        result = m.run(timeout=60)
        stats = m.vcpu_stats()
    text = out.decode(errors="replace")
    assert result.reason == "exit", (result, text)
    assert f"result={NEW:08X}" in text, text  # OLD: the AP ran its stale translation
    # The BSP's store reached code only the AP had translated: a remote invalidation.
    assert stats[1]["code_invalidations_received"] >= 1, stats
    assert stats[0]["code_invalidations_sent"] >= 1, stats


def test_a_stop_made_on_an_ap_ends_the_run(assemble, tmp_path):
    m, _ = _machine(assemble, tmp_path, AP_EXIT_BODY)
    with m:
        result = m.run(timeout=60)
    assert (result.reason, result.exit_status) == ("exit", 0x2A << 1 | 1), result


def test_aps_stop_with_the_run_and_carry_on_in_the_next(assemble, tmp_path):
    count = 20_000_000
    m, out = _machine(assemble, tmp_path, COUNT_BODY, f"%define COUNT {count}\n")
    with m:
        first = m.run(timeout=0.3)
        states = m.vcpu_states()
        parked = m.read_memory(0, 4)  # the machine is readable between runs
        second = m.run(timeout=120)
    text = out.decode(errors="replace")
    assert first.reason == "timeout", (first, text)
    assert states == ["running", "running"] and len(parked) == 4
    assert second.reason == "exit", (second, text)
    assert f"counter={2 * count:08X}" in text, text


def test_what_thread_multi_cannot_do_is_refused(assemble, tmp_path):
    with pytest.raises(ValueError, match="thread=multi runs Unicorn's own MMU"):
        Machine(memory="16M", vga="none", smp=2, accel=MULTI, mmu="cached")
    with pytest.raises(ValueError, match="--deterministic needs -accel tcg,thread=single"):
        Machine(memory="16M", vga="none", smp=2, accel=MULTI, deterministic=True)
    with Machine(memory="16M", vga="none", smp=2, accel=MULTI) as m:
        assert m.mmu_mode == "native"
        for call in (m.snapshot, lambda: m.save_state(tmp_path / "s"),
                     lambda: m.add_breakpoint(0x7C00), m.step):
            with pytest.raises(ValueError, match="need -accel tcg,thread=single"):
                call()


# The BSP puts the VGA's framebuffer BAR at LFB and turns memory decoding on, then
# stores until the store sticks (the board maps the BAR between slices); the AP reads
# what the BSP stored and stores a word of its own there.
LFB = 0xE0000000
LFB_BODY = rf"""
    jmp setup
align 4
seen: dd 0
done: dd 0

    AP_TRAMPOLINE
    mov eax, [{LFB:#x}]
    mov [seen], eax
    mov dword [{LFB + 4:#x}], 0xCAFEF00D
    mov dword [done], 1
    PARK

setup:
    LOAD_GDT
    mov dx, 0xCF8
    mov eax, 0x80001010                ; 00:02.0 BAR0
    out dx, eax
    mov dx, 0xCFC
    mov eax, {LFB:#x}
    out dx, eax
    mov dx, 0xCF8
    mov eax, 0x80001004                ; command: memory space on
    out dx, eax
    mov dx, 0xCFC
    mov eax, 2
    out dx, eax
.map:
    mov dword [{LFB:#x}], 0x12345678
    cmp dword [{LFB:#x}], 0x12345678
    jne .map
    mov dword [0xFEE000F0], 0x1FF
    START_APS
.wait:
    pause
    cmp dword [done], 1
    jne .wait
    PRINT "seen="
    mov eax, [seen]
    call puthex
    PRINT " back="
    mov eax, [{LFB + 4:#x}]
    call puthex
    PRINT 10
    mov al, 0
    call exit
"""


def test_an_ap_reaches_the_framebuffer_the_bsp_maps_as_ram(assemble, tmp_path):
    m, out = _machine(assemble, tmp_path, LFB_BODY, vga="std")
    with m:
        result = m.run(timeout=60)
        vram = bytes(m.board.vga.vram[:8])
    text = out.decode(errors="replace")
    assert result.reason == "exit", (result, text)
    assert "seen=12345678 back=CAFEF00D" in text, text  # all ones: the AP missed VRAM
    assert vram == bytes.fromhex("78563412 0df0feca"), vram.hex()
