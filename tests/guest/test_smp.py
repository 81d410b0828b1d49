"""-smp N: the BSP starts its APs by INIT/SIPI (real mode at the vector's page), each
CPU adds to a shared counter with LOCK XADD, each AP reports by a fixed IPI to the
BSP, and the guest sees every APIC ID once; every vCPU rewrites a page-table entry
the others use and none ever reads through a stale translation (issue 18 items 2-5)."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot
from qemu_lite.multi import multi_supported

needs_multi = pytest.mark.skipif(multi_supported() is not None,
                                 reason=str(multi_supported()))

ADDS = 1_000_000  # per CPU

# Trampoline copied to 0x8000 (SIPI vector 0x08).  APs take a lock-free ticket
# for a stack-free 32-bit path: counter, their APIC ID bit, one IPI to the BSP.
SMP_BODY = r"""
    jmp setup
counter: dd 0
aps_done: dd 0
ipis: dd 0
id_bits: dd 0

ipi_handler:
    lock inc dword [ipis]
    mov dword [0xFEE000B0], 0          ; EOI
    iret

    AP_TRAMPOLINE
    mov dword [0xFEE000F0], 0x1FF      ; this AP's APIC on
    mov ecx, [0xFEE00020]
    shr ecx, 24
    mov eax, 1
    shl eax, cl
    lock or [id_bits], eax
    mov ecx, ADDS
.add:
    mov eax, 1
    lock xadd [counter], eax
    dec ecx
    jnz .add
    lock inc dword [aps_done]
    mov eax, [0xFEE00020]
    shr eax, 24
    add eax, 0x4040                    ; fixed, vector 0x40 + APIC ID: IRR would merge
    mov dword [0xFEE00310], 0          ; to APIC ID 0 (physical)   one vector sent twice
    mov [0xFEE00300], eax
    PARK

setup:
    LOAD_GDT
    mov ebx, idt + 0x41 * 8
.gate:
    mov eax, ipi_handler
    mov word [ebx], ax
    mov word [ebx + 2], 0x08
    mov word [ebx + 4], 0x8E00
    shr eax, 16
    mov word [ebx + 6], ax
    add ebx, 8
    cmp ebx, idt + 0x48 * 8
    jne .gate
    lidt [idtr]
    PIC_MASK_ALL                       ; only the APIC interrupts
    mov dword [0xFEE000F0], 0x1FF
    COPY_AP_TRAMPOLINE
    mov dword [0xFEE00310], 0
    mov dword [0xFEE00300], 0xC4500    ; INIT, assert, all but self
    mov dword [0xFEE00300], 0xC8500    ; INIT de-assert (level): no effect
    mov dword [0xFEE00300], 0xC4608    ; STARTUP at 0x8000, all but self
    mov dword [0xFEE00300], 0xC4608    ; the second STARTUP: ignored once running
    mov eax, [0xFEE00020]
    shr eax, 24
    mov ecx, eax
    mov eax, 1
    shl eax, cl
    lock or [id_bits], eax
    mov ecx, ADDS
.add:
    mov eax, 1
    lock xadd [counter], eax
    dec ecx
    jnz .add
.wait:                                 ; IF=0 while checking: an IPI handled between
    cmp dword [aps_done], CPUS - 1     ; the check and HLT would leave the BSP asleep
    jne .idle
    cmp dword [ipis], CPUS - 1
    je .report
.idle:
    sti
    hlt                                ; STI's shadow: woken by the next AP's IPI
    cli
    jmp .wait
.report:
    cli
    PRINT "counter="
    mov eax, [counter]
    call puthex
    PRINT " ids="
    mov eax, [id_bits]
    call puthex
    PRINT " ipis="
    mov eax, [ipis]
    call puthex
    PRINT 10
    mov al, 0
    call exit
"""


def _run(assemble, tmp_path, cpus: int, accel: str = "tcg"
         ) -> tuple[str, object, list[dict[str, object]]]:
    source = f"%define CPUS {cpus}\n%define ADDS {ADDS}\n" + protected_mode_guest(SMP_BODY, interrupts=True, smp=True)
    kernel = tmp_path / "smp.bin"
    kernel.write_bytes(assemble(source))
    out = bytearray()
    with Machine(memory="32M", serial="none", vga="none", smp=cpus, accel=accel) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=120)
        stats = m.vcpu_stats()
    return out.decode(errors="replace"), result, stats


@pytest.mark.parametrize("cpus", (2, 4))
@pytest.mark.parametrize("thread", ("single", pytest.param("multi", marks=needs_multi)))
def test_aps_started_by_init_sipi_count_exactly(assemble, tmp_path, cpus, thread):
    text, result, stats = _run(assemble, tmp_path, cpus, f"tcg,thread={thread}")
    assert result.reason == "exit", (result, text)
    assert f"counter={cpus * ADDS:08X}" in text, text
    assert f"ids={(1 << cpus) - 1:08X}" in text, text   # every APIC ID ran once
    assert f"ipis={cpus - 1:08X}" in text, text
    assert len(stats) == cpus
    # The BSP sent INIT, INIT de-assert and two STARTUPs; each AP one fixed IPI.
    assert stats[0]["ipis_sent"] == 3  # the de-assert is not a message
    assert stats[0]["ipis_received"] == cpus - 1
    for ap in stats[1:]:
        assert ap["ipis_sent"] == 1  # its vector 0x40 + APIC ID
        assert ap["ipis_received"] == 3  # INIT and both STARTUPs reached it
        if thread == "single":
            assert ap["switches_in"] >= 1  # its turns on the one engine
            # Parked with HLT.  Under multi the BSP may report before the last AP
            # that sent its IPI has reached its HLT.
            assert ap["exits"].get("hlt", 0) >= 1


# Each CPU counts down from LOOPS (dec, jnz: 2 instructions a turn, no exception or
# stepped atomic that would leave a block early), then the AP parks and the BSP exits.
COUNT_BODY = r"""
    jmp setup
align 4
ap_done: dd 0

    AP_TRAMPOLINE
    mov ecx, LOOPS
.l:
    dec ecx
    jnz .l
    lock inc dword [ap_done]
    PARK

setup:
    LOAD_GDT
    mov dword [0xFEE000F0], 0x1FF
    START_APS
    mov ecx, LOOPS
.l:
    dec ecx
    jnz .l
.wait:
    cmp dword [ap_done], 1
    jne .wait
    mov al, 0
    call exit
"""
LOOPS = 3_000_000


@pytest.mark.requires_patched_engine("b")
@pytest.mark.parametrize("thread", ("single", pytest.param("multi", marks=needs_multi)))
def test_each_vcpu_counts_the_instructions_it_ran(assemble, tmp_path, thread):
    kernel = tmp_path / "count.bin"
    kernel.write_bytes(assemble(f"%define LOOPS {LOOPS}\n"
                                + protected_mode_guest(COUNT_BODY, smp=True)))
    with Machine(memory="32M", serial="none", vga="none", smp=2,
                 accel=f"tcg,thread={thread}", count_instructions=True) as m:
        multiboot.load(m, kernel)
        result = m.run(timeout=120)
        stats = m.vcpu_stats()
    assert result.reason == "exit", result
    ap = stats[1]["instructions"]
    assert 2 * LOOPS <= ap < 2 * LOOPS + 1_000, stats  # its loop, its start-up, its park
    # The BSP also spun on ap_done for as long as the AP ran behind it.
    assert stats[0]["instructions"] >= 2 * LOOPS, stats


def test_instruction_counts_are_off_unless_asked_for(assemble, tmp_path):
    _, _, stats = _run(assemble, tmp_path, 2)
    assert all("instructions" not in vcpu for vcpu in stats)


def test_smp_options_are_checked():
    with pytest.raises(ValueError, match="1 to 8"):
        Machine(smp=9)
    with pytest.raises(ValueError, match="thread=single or thread=multi"):
        Machine(accel="tcg,thread=many")
    with pytest.raises(ValueError, match="only tcg"):
        Machine(accel="kvm")


# Every CPU, holding a spinlock, checks that the shared page V reads as the frame the
# previous holder (any CPU) mapped there, then maps another frame and checks again.
# The page table is shadowed (write-protected) by the MMU, so each rewrite goes
# through the shadow MMU's write tracking; a vCPU that read V before another one's
# rewrite must see the new frame after INVLPG.
PT_BODY = r"""
%define V 0x300000
%define PD 0x180000
%define PT 0x181000
%define FRAMES 0x200000
    jmp setup
align 4
lock_word: dd 0
expected: dd 7
stale: dd 0
checks: dd 0
aps_done: dd 0

    AP_TRAMPOLINE
    mov eax, PD
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10                       ; PSE: the APIC's 4 MiB page
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov esi, ap_after
    jmp worker
ap_after:
    lock inc dword [aps_done]
    PARK

worker:                                ; esi: where to go when done (no stack)
    mov ebx, [0xFEE00020]
    shr ebx, 24
    mov edi, ITER
.loop:
    mov eax, 1
    xchg eax, [lock_word]
    test eax, eax
    jnz .loop
    invlpg [V]
    mov eax, [V]
    cmp eax, [expected]
    je .seen
    lock inc dword [stale]
.seen:
    lock inc dword [checks]
    mov eax, [expected]
    lea eax, [eax + ebx + 1]
    and eax, 7
    mov [expected], eax
    shl eax, 12
    add eax, FRAMES | 3
    mov [PT + (V >> 12) * 4], eax
    invlpg [V]
    mov eax, [V]
    cmp eax, [expected]
    je .mine
    lock inc dword [stale]
.mine:
    lock inc dword [checks]
    mov dword [lock_word], 0
    dec edi
    jnz .loop
    jmp esi

setup:
    LOAD_GDT
    xor ecx, ecx
.frames:                               ; frame k holds k
    mov eax, ecx
    shl eax, 12
    mov [FRAMES + eax], ecx
    inc ecx
    cmp ecx, 8
    jne .frames
    xor ecx, ecx
.identity:
    mov eax, ecx
    shl eax, 12
    or eax, 3
    mov [PT + ecx * 4], eax
    inc ecx
    cmp ecx, 1024
    jne .identity
    mov dword [PT + (V >> 12) * 4], (FRAMES + 7 * 0x1000) | 3
    mov edi, PD
    xor eax, eax
    mov ecx, 1024
    rep stosd
    mov dword [PD], PT | 3
    mov dword [PD + (0xFEC00000 >> 22) * 4], 0xFEC00000 | 0x93
    mov eax, PD
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov dword [0xFEE000F0], 0x1FF
    START_APS
    mov esi, bsp_after
    jmp worker
bsp_after:
    cmp dword [aps_done], CPUS - 1
    pause
    jne bsp_after
    PRINT "stale="
    mov eax, [stale]
    call puthex
    PRINT " checks="
    mov eax, [checks]
    call puthex
    PRINT 10
    mov al, 0
    call exit
"""

ITER = 20_000


@pytest.mark.parametrize("mmu", ("cached", "cached-unsync", "native",
                                 pytest.param("native-multi", marks=needs_multi)))
def test_no_vcpu_reads_through_a_page_table_entry_another_rewrote(assemble, tmp_path, mmu):
    """Under ``cached`` with unsync off every rewrite is a trapped store; with unsync on
    (the default) the table is left writable and resynced, and no read may be stale.
    ``native-multi``: four engines on four threads, each with its own TLB, which the
    guest's INVLPG keeps true."""
    unsync = mmu == "cached-unsync"
    accel = "tcg,thread=multi" if mmu == "native-multi" else "tcg"
    mmu = mmu.removesuffix("-unsync").removesuffix("-multi")
    cpus = 4
    source = f"%define CPUS {cpus}\n%define ITER {ITER}\n" + protected_mode_guest(PT_BODY, smp=True)
    kernel = tmp_path / "pt.bin"
    kernel.write_bytes(assemble(source))
    out = bytearray()
    with Machine(memory="32M", serial="none", vga="none", smp=cpus, mmu=mmu, accel=accel) as m:
        m.board.com1.add_output_listener(out.extend)
        if mmu == "cached":
            m.core.set_unsync(unsync)
        multiboot.load(m, kernel)
        result = m.run(timeout=120)
        tracked = m.core.mmu_stats() if mmu == "cached" and not unsync else None
    text = out.decode(errors="replace")
    assert result.reason == "exit", (result, text)
    assert f"stale=00000000 checks={2 * cpus * ITER:08X}" in text, text
    if tracked is not None:  # every rewrite went through the shadow MMU's write tracking
        assert tracked["pte_writes"] == cpus * ITER, tracked
