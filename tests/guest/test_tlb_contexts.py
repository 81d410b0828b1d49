"""Address-space TLB contexts (engine patch i): a CR3 load parks the TLB, and a parked
TLB comes back only while it is still exactly what a fill would answer.

One 32-bit paging guest with three address spaces A, B, C (a shared 4 MiB page
holds the code, the tables and the data frames; each space maps virtual 0x400000
through its own page table) changes the tables of a space while it is parked and
while it runs, then switches back and reads what the architecture says it must see
after a CR3 load:

1. A's PTE rewritten from B (A parked), back to A: the new frame.
2. A's PTE rewritten in A without INVLPG, away and back: the new frame.
3. The same, then a reload of A's own CR3: the new frame.
4. A's PDE pointed at C's table from B: C's frame; and back.
5. A's PTE made read-only from B: a supervisor write in A faults (CR0.WP).
6. A frame that A maps writable becomes B's page table while A is parked: A's
   stores to it must reach B's shadow (the write tracking sees them).
7. Every space in turn, four rounds: with a bound of one parked context, evictions.

It runs under cached with contexts (and with PTE prefetch, and with unsync leaf
tables: A's and B's page tables are written through the 4 MiB page, so their
stores go to RAM untrapped once unsync), cached without them, naive with unsync,
and native; all must print the same line, which is also checked against the
expected values.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guestlib import run_mmu_guest

from mmu_core._core import engine_has_tlb_contexts
from qemu_lite import Machine

BODY = r"""
%define X 0x300000
%define Y 0x301000
%define Z 0x302000
%define W 0x303000
%define F 0x310000
    LOAD_GDT
    lidt [idtr32]
    mov dword [X], 0x1111
    mov dword [Y], 0x2222
    mov dword [Z], 0x3333
    mov dword [W], 0x4444
    xor esi, esi
.build:                             ; A: 0x400000 -> X, B: -> Z, C: -> W
    mov edi, esi
    shl edi, 13
    add edi, PD(0)
    mov dword [edi], 0x83           ; 0-4 MiB: code, tables, frames
    lea eax, [edi + 0x1000 + 3]
    mov [edi + 4], eax
    mov eax, [frames + esi * 4]
    or eax, 3
    mov [edi + 0x1000], eax
    inc esi
    cmp esi, 3
    jb .build
    mov eax, cr4
    or eax, 1 << 4                  ; PSE
    mov cr4, eax
    SWITCH 0
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)   ; PG, WP
    mov cr0, eax
    READ 0x400000                   ; 1111
    SWITCH 1
    READ 0x400000                   ; 3333
    ; 1. A's PTE rewritten while A is parked
    mov dword [PT(0)], Y | 3
    SWITCH 0
    READ 0x400000                   ; 2222
    ; 2. A's own PTE, no INVLPG, away and back
    mov dword [PT(0)], X | 3
    READ 0x400000                   ; (either: the TLB may keep 2222; not printed)
    SWITCH 1
    SWITCH 0
    READ 0x400000                   ; 1111
    ; 3. rewritten again, then a reload of the same CR3
    mov dword [PT(0)], Y | 3
    SWITCH 0
    READ 0x400000                   ; 2222
    ; 4. A's PDE moved to C's table while A is parked, and back
    SWITCH 1
    mov dword [PD(0) + 4], PT(2) | 3
    SWITCH 0
    READ 0x400000                   ; 4444
    SWITCH 1
    mov dword [PD(0) + 4], PT(0) | 3
    SWITCH 0
    READ 0x400000                   ; 2222
    ; 5. read-only while parked: a supervisor write faults (the handler restores R/W)
    SWITCH 1
    mov dword [PT(0)], Y | 1
    SWITCH 0
    mov dword [0x400000], 0x5555
    READ 0x400000                   ; PF 5555
    ; 6. F: written by A through 0x401000, then B's page table for 0x800000
    mov dword [PT(0) + 4], F | 3
    mov dword [0x401000], 0
    mov dword [0x401004], 0
    SWITCH 1
    mov dword [F], Z | 3
    mov dword [PD(1) + 8], F | 3
    READ 0x800000                   ; 3333
    SWITCH 0
    mov dword [0x401000], W | 3     ; B's PTE, through A's mapping
    SWITCH 1
    READ 0x800000                   ; 4444
    ; 7. round robin
    mov ecx, 4
.round:
    SWITCH 0
    READ 0x400000                   ; 5555
    SWITCH 1
    READ 0x400000                   ; 3333
    SWITCH 2
    READ 0x400000                   ; 4444
    dec ecx
    jnz .round
    mov al, 10
    call putc
    mov al, 0
    jmp exit

pf_handler:
    push eax
    PRINT "PF "
    mov dword [PT(0)], Y | 3
    mov eax, cr2
    invlpg [eax]
    pop eax
    add esp, 4
    iret

frames: dd X, Z, W
align 8
idt32:
    times 14 dq 0
    GATE32 pf_handler, 0x08, 0x8E
idt32_end:
idtr32:
    dw idt32_end - idt32 - 1
    dd idt32
"""

# Case 2's first read may see either frame (no INVLPG yet): dropped from the check.
EXPECTED = ["00001111", "00003333", "00002222", None, "00001111", "00002222", "00004444",
            "00002222", "PF", "00005555", "00003333", "00004444"] + \
    ["00005555", "00003333", "00004444"] * 4

CONFIGS = [("cached", 32, 0, False), ("cached", 1, 0, False), ("cached", 0, 0, False),
           ("cached", 32, 8, False), ("cached", 32, 0, True), ("cached", 1, 8, True),
           ("cached", 0, 0, True), ("naive", None, 0, True), ("native", None, 0, False)]


def run(assemble, tmp_path: Path, mmu: str, contexts: int | None,
        prefetch: int = 0, unsync: bool = False) -> tuple[list[str], dict]:
    return run_mmu_guest(assemble, tmp_path, BODY, mmu, contexts=contexts, prefetch=prefetch, unsync=unsync)


@pytest.mark.parametrize(("mmu", "contexts", "prefetch", "unsync"), CONFIGS,
                         ids=[f"{m}-{c}-prefetch{p}{'-unsync' if u else ''}"
                              for m, c, p, u in CONFIGS])
def test_guest_sees_every_table_change_after_a_cr3_load(assemble, tmp_path, mmu, contexts,
                                                        prefetch, unsync):
    words, stats = run(assemble, tmp_path, mmu, contexts, prefetch, unsync)
    assert len(words) == len(EXPECTED), words
    for got, want in zip(words, EXPECTED, strict=True):
        if want is not None:
            assert got == want, f"{words} (expected {EXPECTED})"
    if mmu == "cached" and contexts and engine_has_tlb_contexts():
        assert stats["ctx_restored"] > 0 and stats["ctx_root_drops"] > 0
        if contexts == 1:
            assert stats["ctx_evicted"] > 0
    if unsync:
        # A's table was written untrapped and resynced at CR3 loads
        assert stats["unsync_pages"] > 0 and stats["resyncs"] > 0


@pytest.mark.requires_patched_engine("i")
def test_contexts_are_on_by_default_in_cached_mode_only():
    for mmu, want in (("cached", True), ("naive", False), ("identity", False)):
        with Machine(serial="none", memory="32M", mmu=mmu) as m:
            assert (m.core.tlb_contexts > 0) is want, mmu
            assert m.core.reads_cpu_state_directly
