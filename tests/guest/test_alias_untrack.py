"""Alias TLB entries end with the tracking of their frame, and come back with it.

A store fill on a shadowed page-table frame maps the page-table alias, whose
callbacks keep the shadow pages exact.  When the frame stops being tracked (a
write flood zaps its only shadow page) its alias entries must go, so its stores
reach RAM directly (mmu_stats: alias_page_flushes; no alias_writes_untracked);
when it is tracked again, the writable RAM entries granted meanwhile must go in
turn, or the guest's next PTE store would bypass the tracking and the shadow
would keep a stale translation (retrack_page_flushes, instead of a whole flush).

One 32-bit paging guest: the code, a page table T and the frames live in a 4 MiB
page at 0, so T is written through its identity address; PDE 1 points at T.
Each round: read 0x400000 through T (T shadowed), flood T with stores to an
unused entry (T zapped, untracked), keep storing (RAM), read 0x401000 (T shadowed
again), rewrite T[0] to the other frame, INVLPG 0x400000 and read it: the new
frame, in every round, in every configuration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guestlib import run_mmu_guest

from qemu_lite import engine as _engine

BODY = r"""
%define PD 0x200000
%define T 0x201000
%define X 0x300000
%define Y 0x301000
%define Z 0x302000
    LOAD_GDT
    mov dword [X], 0x1111
    mov dword [Y], 0x2222
    mov dword [Z], 0x3333
    mov dword [PD], 0x83            ; 0-4 MiB: code, tables, frames
    mov dword [PD + 4], T | 3
    mov dword [T], X | 3
    mov dword [T + 4], Z | 3
    mov eax, cr4
    or eax, 1 << 4                  ; PSE
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31                 ; PG (WP clear: supervisor stores anyway)
    mov cr0, eax
    mov ecx, 6
.round:
    mov eax, [0x400000]             ; T shadowed
    call puthex
    mov al, ' '
    call putc
    mov ebx, 40
.flood:                             ; stores to an unused entry of T: zapped, then RAM
    mov dword [T + 0x800], ebx
    dec ebx
    jnz .flood
    mov eax, [0x401000]             ; T shadowed again
    cmp eax, 0x3333
    jne .bad
    mov eax, [T]                    ; T[0] := the other frame
    xor eax, X ^ Y
    mov [T], eax
    invlpg [0x400000]
    dec ecx
    jnz .round
    mov eax, [0x400000]
    call puthex
    mov al, 10
    call putc
    mov al, 0
    jmp exit
.bad:
    PRINT "bad"
    mov al, 1
    jmp exit
"""

EXPECTED = ["00001111", "00002222"] * 3 + ["00001111"]

CONFIGS = [("cached", 32, False), ("cached", 0, False), ("cached", 32, True),
           ("naive", None, False), ("native", None, False)]


def run(assemble, tmp_path: Path, mmu: str, contexts: int | None,
        unsync: bool) -> tuple[list[str], dict]:
    return run_mmu_guest(assemble, tmp_path, BODY, mmu, contexts=contexts, unsync=unsync,
                         address_spaces=False)


@pytest.mark.parametrize(("mmu", "contexts", "unsync"), CONFIGS,
                         ids=[f"{m}-ctx{c}{'-unsync' if u else ''}" for m, c, u in CONFIGS])
def test_alias_entries_go_with_the_tracking_and_writable_ones_come_back(assemble, tmp_path,
                                                                       mmu, contexts, unsync):
    words, stats = run(assemble, tmp_path, mmu, contexts, unsync)
    assert words == EXPECTED
    if mmu == "cached" and not unsync:
        assert stats["flood_zaps"] >= 6
        if _engine.is_patched("l"):
            # every round's alias entry for T went at the zap, its RAM entry at the re-track
            assert stats["alias_page_flushes"] >= 6 and stats["retrack_page_flushes"] >= 6
            assert stats["alias_writes_untracked"] == 0
        else:
            assert stats["alias_writes_untracked"] > 0
