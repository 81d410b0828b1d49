"""Global pages (CR4.PGE) across CR3 loads, with TLB contexts (engine patches i and k).

A CR3 load keeps global translations (SDM vol. 3 4.10.4.1); with TLB contexts the
engine swaps TLBs at a CR3 load instead of flushing, and carries the global entries
of the TLB left into the one entered.  INVLPG of a global page must reach every
parked TLB (the architecture drops a global page whatever the PCID), and a CR4.PGE
toggle drops them all.

One 32-bit paging guest with three address spaces A, B, C (the code, tables and
frames in a 4 MiB page at 0) maps virtual 0x428000 in A to X as a global page, and
in B and C to their own frames (not global); 0x429000 is a plain page in every space.
(Pages chosen so that their entries do not share a slot of a 64-entry TLB with the
code, stack or tables: an entry evicted to the victim TLB is not parked.)

1. A reads 0x428000 (X), then B and a fresh C read it: X where global entries are
   carried, else their own frames.  0x429000 is never carried.
2. INVLPG 0x428000 in B: B's own frame.
3. A makes its PTE a plain one (to Y) and invalidates it with INVLPG while B and C
   are parked holding copies of the old global entry: A sees Y, B and C their own
   frames.  The write tracking drops only A's parked TLB here; the copies in B
   and C go only because INVLPG reaches every parked TLB.
4. Global again (Y): carried into B, then a CR4.PGE toggle in B drops it.
5. With CR4.PGE clear, A's G bit means nothing: B sees its own frame.

Every configuration must print what the architecture allows; a configuration
with global pages carried must print the carried values, one without them the
flushed ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guestlib import run_mmu_guest

from mmu_core._core import engine_has_global_pages
from qemu_lite import Machine

BODY = r"""
%define X 0x300000
%define Y 0x301000
%define Z 0x302000
%define W 0x303000
%define P 0x304000
%define Q 0x305000
%macro PGE 1                        ; CR4.PGE := %1
    mov eax, cr4
%if %1
    or eax, 1 << 7
%else
    and eax, ~(1 << 7)
%endif
    mov cr4, eax
%endmacro
    LOAD_GDT
    mov dword [X], 0x1111
    mov dword [Y], 0x2222
    mov dword [Z], 0x3333
    mov dword [W], 0x4444
    mov dword [P], 0x5555
    mov dword [Q], 0x6666
    xor esi, esi
.build:                             ; 0x428000: A -> X (global), B -> Z, C -> W
    mov edi, esi
    shl edi, 13
    add edi, PD(0)
    mov dword [edi], 0x83           ; 0-4 MiB: code, tables, frames
    lea eax, [edi + 0x1000 + 3]
    mov [edi + 4], eax
    mov eax, [frames + esi * 4]
    or eax, 3
    mov [edi + 0x1000 + 0x28 * 4], eax
    mov eax, [plain + esi * 4]      ; 0x429000: A -> P, B and C -> Q (not global)
    or eax, 3
    mov [edi + 0x1000 + 0x29 * 4], eax
    inc esi
    cmp esi, 3
    jb .build
    or dword [PT(0) + 0x28 * 4], 0x100  ; A's 0x428000 is global
    mov eax, cr4
    or eax, (1 << 4) | (1 << 7)     ; PSE, PGE
    mov cr4, eax
    SWITCH 0
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)   ; PG, WP
    mov cr0, eax
    ; 1. carried into a parked space, and into a fresh one
    SWITCH 1
    SWITCH 0
    READ 0x428000                   ; 1111
    READ 0x429000                   ; 5555
    SWITCH 1
    READ 0x428000                   ; carried 1111, else 3333
    READ 0x429000                   ; 6666
    SWITCH 2
    READ 0x428000                   ; carried 1111, else 4444
    ; 2. INVLPG in B drops the global page
    SWITCH 1
    invlpg [0x428000]
    READ 0x428000                   ; 3333
    ; 3. A's global PTE made a plain one and invalidated while B and C hold copies
    SWITCH 0
    READ 0x428000                   ; 1111
    SWITCH 1
    READ 0x428000                   ; carried 1111, else 3333
    SWITCH 2
    READ 0x428000                   ; carried 1111, else 4444
    SWITCH 0
    mov dword [PT(0) + 0x28 * 4], Y | 3
    invlpg [0x428000]
    READ 0x428000                   ; 2222
    SWITCH 1
    READ 0x428000                   ; 3333
    SWITCH 2
    READ 0x428000                   ; 4444
    ; 4. global again, then a CR4.PGE toggle drops it
    SWITCH 0
    mov dword [PT(0) + 0x28 * 4], Y | 0x103
    invlpg [0x428000]
    READ 0x428000                   ; 2222
    SWITCH 1
    READ 0x428000                   ; carried 2222, else 3333
    PGE 0
    PGE 1
    READ 0x428000                   ; 3333
    ; 5. PGE clear: the G bit means nothing
    PGE 0
    SWITCH 0
    READ 0x428000                   ; 2222
    SWITCH 1
    READ 0x428000                   ; 3333
    mov al, 10
    call putc
    mov al, 0
    jmp exit

frames: dd X, Z, W
plain: dd P, Q, Q
"""

# case:    1                                                    2
CARRIED = ["00001111", "00005555", "00001111", "00006666", "00001111", "00003333",
           # 3
           "00001111", "00001111", "00001111", "00002222", "00003333", "00004444",
           # 4                             5
           "00002222", "00002222", "00003333", "00002222", "00003333"]
FLUSHED = ["00001111", "00005555", "00003333", "00006666", "00004444", "00003333",
           "00001111", "00003333", "00004444", "00002222", "00003333", "00004444",
           "00002222", "00003333", "00003333", "00002222", "00003333"]

CONFIGS = [("cached", 32, True), ("cached", 1, True), ("cached", 32, False),
           ("cached", 0, True), ("native", None, False)]


def run(assemble, tmp_path: Path, mmu: str, contexts: int | None,
        global_pages: bool) -> tuple[list[str], dict]:
    return run_mmu_guest(assemble, tmp_path, BODY, mmu, contexts=contexts, global_pages=global_pages if contexts is not None else None)


@pytest.mark.parametrize(("mmu", "contexts", "global_pages"), CONFIGS,
                         ids=[f"{m}-ctx{c}-global{int(g)}" for m, c, g in CONFIGS])
def test_global_pages_survive_cr3_loads_until_invlpg_or_pge(assemble, tmp_path, mmu,
                                                            contexts, global_pages):
    words, stats = run(assemble, tmp_path, mmu, contexts, global_pages)
    carried = mmu == "cached" and bool(contexts) and global_pages and engine_has_global_pages()
    assert words == (CARRIED if carried else FLUSHED)
    if carried:
        assert stats["global_carried"] > 0 and stats["global_invlpg_drops"] > 0
    elif mmu == "cached":
        assert stats["global_carried"] == 0


@pytest.mark.requires_patched_engine("k")
def test_global_pages_are_on_with_contexts_only():
    with Machine(serial="none", memory="32M", mmu="cached") as m:
        assert m.core.global_pages
        m.core.set_tlb_contexts(0)
        assert not m.core.global_pages
