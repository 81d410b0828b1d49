"""Permission mode toggles (CR0.WP, CR4.SMEP) against TLB contexts and global pages.

A translation filled under one mode must not answer for another that grants less:
after CR0.WP goes 0 -> 1 a supervisor write to a read-only page faults, and after
CR4.SMEP goes 0 -> 1 a supervisor fetch from a user page faults (SDM vol. 3 4.6.1),
whether the entry was filled as a global one (kept across CR3 loads with engine
patch k), lives in a parked address space (patch i), or was carried from one space
into another.  The reverse toggles grant again.

One 32-bit paging guest with two address spaces A and B (the code, tables and frames
in a 4 MiB page at 0):

- 0x428000: A -> X read-only supervisor and global; B -> X read-only, not global.
- 0x429000: in both, Y read-only supervisor, not global.
- 0x42A000: in both, a user page holding RET (global in A).

1. WP=0: supervisor writes to the read-only pages succeed (filling writable global
   entries in A, a writable entry in B that is then parked).  WP=1 in A: every write
   faults, in A, in B after the switch (its parked TLB), through A's global page.
2. WP=0 again: the writes succeed; A's global writable entry is carried into B,
   then WP=1 in B: the writes fault.
3. SMEP: supervisor calls into the user page succeed in both spaces, then fault
   after CR4.SMEP is set, and succeed after it is cleared.

``TRY`` runs one instruction and prints OK, or PF from the #PF handler (which resumes
after it).  Every configuration must print the same line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guestlib import run_mmu_guest

from mmu_core._core import engine_has_global_pages

BODY = r"""
%define X 0x300000
%define Y 0x301000
%define C 0x302000
%macro TRY 1+                       ; print OK, or PF when %1 faults
    mov dword [pf_resume], %%after
    mov ebp, esp
    %1
    PRINT "OK "
%%after:
    mov esp, ebp
%endmacro
%macro CR0WP 1                      ; CR0.WP := %1
    mov eax, cr0
%if %1
    or eax, 1 << 16
%else
    and eax, ~(1 << 16)
%endif
    mov cr0, eax
%endmacro
%macro SMEP 1                       ; CR4.SMEP := %1
    mov eax, cr4
%if %1
    or eax, 1 << 20
%else
    and eax, ~(1 << 20)
%endif
    mov cr4, eax
%endmacro
    LOAD_GDT
    lidt [idtr32]
    mov dword [X], 0
    mov dword [Y], 0
    mov byte [C], 0xC3              ; ret
    xor esi, esi
.build:
    mov edi, esi
    shl edi, 13
    add edi, PD(0)
    mov dword [edi], 0x83           ; 0-4 MiB: code, tables, frames
    lea eax, [edi + 0x1000 + 7]
    mov [edi + 4], eax
    mov dword [edi + 0x1000 + 0x28 * 4], X | 1
    mov dword [edi + 0x1000 + 0x29 * 4], Y | 1
    mov dword [edi + 0x1000 + 0x2A * 4], C | 5
    inc esi
    cmp esi, 2
    jb .build
    or dword [PT(0) + 0x28 * 4], 0x100  ; A's read-only page and user page are global
    or dword [PT(0) + 0x2A * 4], 0x100
    mov eax, cr4
    or eax, (1 << 4) | (1 << 7)     ; PSE, PGE
    mov cr4, eax
    SWITCH 0
    mov eax, cr0
    or eax, 1 << 31                 ; PG, WP clear
    and eax, ~(1 << 16)
    mov cr0, eax
    ; 1. writable entries filled under WP=0, then WP=1
    TRY mov dword [0x428000], 0xA1  ; OK
    READ 0x428000                   ; A1
    SWITCH 1
    TRY mov dword [0x429000], 0xB1  ; OK (B parks it)
    SWITCH 0
    TRY mov dword [0x428000], 0xA2  ; OK
    READ 0x428000                   ; A2
    CR0WP 1
    TRY mov dword [0x428000], 0xA3  ; PF
    READ 0x428000                   ; A2
    SWITCH 1
    TRY mov dword [0x429000], 0xB2  ; PF
    TRY mov dword [0x428000], 0xA4  ; PF
    READ 0x429000                   ; B1
    SWITCH 0
    TRY mov dword [0x428000], 0xA4  ; PF
    ; 2. WP=0 again; A's global entry carried into B, then WP=1 in B
    CR0WP 0
    TRY mov dword [0x428000], 0xA5  ; OK
    READ 0x428000                   ; A5
    SWITCH 1
    TRY mov dword [0x429000], 0xB3  ; OK
    READ 0x429000                   ; B3
    SWITCH 0
    TRY mov dword [0x428000], 0xA6  ; OK
    SWITCH 1
    CR0WP 1
    TRY mov dword [0x428000], 0xA7  ; PF
    TRY mov dword [0x429000], 0xB4  ; PF
    SWITCH 0
    TRY mov dword [0x428000], 0xA7  ; PF
    READ 0x428000                   ; A6
    ; 3. SMEP: a supervisor call into the user page
    TRY call 0x42A000               ; OK
    SWITCH 1
    TRY call 0x42A000               ; OK
    SWITCH 0
    SMEP 1
    TRY call 0x42A000               ; PF
    SWITCH 1
    TRY call 0x42A000               ; PF
    SWITCH 0
    TRY call 0x42A000               ; PF
    SMEP 0
    TRY call 0x42A000               ; OK
    SWITCH 1
    TRY call 0x42A000               ; OK
    mov al, 10
    call putc
    mov al, 0
    jmp exit

pf_handler:                         ; print PF, resume at [pf_resume]
    PRINT "PF "
    add esp, 4                      ; the error code
    push eax
    mov eax, [pf_resume]
    mov [esp + 4], eax
    pop eax
    iret

pf_resume: dd 0
align 8
idt32:
    times 14 dq 0
    GATE32 pf_handler, 0x08, 0x8E
idt32_end:
idtr32:
    dw idt32_end - idt32 - 1
    dd idt32
"""

EXPECTED = ("OK 000000A1 OK OK 000000A2 PF 000000A2 PF PF 000000B1 PF "
            "OK 000000A5 OK 000000B3 OK PF PF PF 000000A6 "
            "OK OK PF PF PF OK OK").split()

CONFIGS = [("cached", 32, True, False), ("cached", 1, True, False),
           ("cached", 32, False, False), ("cached", 0, True, False),
           ("cached", 32, True, True), ("naive", None, False, False),
           ("native", None, False, False)]


def run(assemble, tmp_path: Path, mmu: str, contexts: int | None, global_pages: bool,
        unsync: bool) -> tuple[list[str], dict]:
    return run_mmu_guest(assemble, tmp_path, BODY, mmu, contexts=contexts, global_pages=global_pages if contexts is not None else None, unsync=unsync)


@pytest.mark.parametrize(("mmu", "contexts", "global_pages", "unsync"), CONFIGS,
                         ids=[f"{m}-ctx{c}-global{int(g)}{'-unsync' if u else ''}"
                              for m, c, g, u in CONFIGS])
def test_wp_and_smep_toggles_reach_global_and_parked_entries(assemble, tmp_path, mmu,
                                                             contexts, global_pages, unsync):
    words, stats = run(assemble, tmp_path, mmu, contexts, global_pages, unsync)
    assert words == EXPECTED
    if mmu == "cached" and contexts and global_pages and engine_has_global_pages():
        # the global entries were really carried, so the faults above saw them go
        assert stats["global_carried"] > 0
