"""Guests that exercise the shadow MMU through their own page tables (32-bit paging).

Each guest runs under ``mmu="cached"`` and ``mmu="naive"`` and must print the
same story as under Unicorn's own MMU.  Scenarios: demand paging from the
guest's #PF handler, copy-on-write through write-protected pages (CR0.WP),
remapping a live page with and without INVLPG where the architecture defines
the result, a page directory that is also a page table (recursive mapping),
4 MiB PSE pages, and self-modifying code written through one virtual alias and
run through another, and (smc2) code whose runner's view is first read as data, so
that on the patched engine the TLB entry that runs it came from a data fill (EXEC
granted there, engine patch d tracking the code), patched through both views.
"""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

BODY = r"""
    LOAD_GDT
    lidt [idtr32]
    ; page directory: 0-4 MiB one PSE page (kernel, identity), 4-8 MiB -> pt1,
    ; 8-12 MiB -> the directory itself (recursive: a table and a directory at once)
    mov dword [pgdir], 0x000083
    mov dword [pgdir + 4], pt1 + 3
    mov dword [pgdir + 8], pgdir + 3
    mov eax, pgdir
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 4                      ; PSE
    mov cr4, eax
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)       ; PG | WP
    mov cr0, eax

    ; -- demand paging: 3 pages at 0x400000.. are absent until the handler maps them
    mov dword [faults], 0
    mov ebx, 0x400000
    mov ecx, 3
.touch:
    mov [ebx], ebx
    add ebx, 0x1000
    loop .touch
    mov eax, [0x401000]
    cmp eax, 0x401000
    jne fail
    PRINT "demand faults="
    mov eax, [faults]
    call puthex
    mov al, 10
    call putc

    ; -- copy-on-write: page 0x404000 read-only, the handler copies it to a new frame
    mov dword [pt1 + 4 * 4], 0x300000 + 1          ; P, read-only, frame 0x300000
    mov dword [0x300000], 0x11111111
    mov dword [faults], 0
    mov dword [0x404000], 0x22222222    ; #PF P|W: the handler copies and remaps writable
    mov eax, [0x404000]
    cmp eax, 0x22222222
    jne fail
    mov eax, [0x300000]                 ; the original frame is untouched
    cmp eax, 0x11111111
    jne fail
    PRINT "cow faults="
    mov eax, [faults]
    call puthex
    mov al, 10
    call putc

    ; -- live remap with INVLPG: 0x405000 -> 0x310000, then -> 0x311000
    mov dword [0x310000], 0xAAAA0001
    mov dword [0x311000], 0xBBBB0002
    mov dword [pt1 + 5 * 4], 0x310000 + 3
    mov eax, [0x405000]
    cmp eax, 0xAAAA0001
    jne fail
    mov dword [pt1 + 5 * 4], 0x311000 + 3
    invlpg [0x405000]
    mov eax, [0x405000]
    cmp eax, 0xBBBB0002
    jne fail
    ; ... and through a CR3 reload
    mov dword [pt1 + 5 * 4], 0x310000 + 3
    mov eax, cr3
    mov cr3, eax
    mov eax, [0x405000]
    cmp eax, 0xAAAA0001
    jne fail
    PRINT "remap ok", 10

    ; -- without INVLPG: a not-present entry made present is seen at once
    mov dword [0x312000], 0xCCCC0003
    mov dword [pt1 + 6 * 4], 0x312000 + 3
    mov eax, [0x406000]
    cmp eax, 0xCCCC0003
    jne fail
    ; -- making an entry not present, then INVLPG: the access faults
    mov dword [faults], 0
    mov dword [pt1 + 6 * 4], 0
    invlpg [0x406000]
    mov eax, [0x406000]                 ; the handler maps the page at 0x406000 again
    cmp dword [faults], 1
    jne fail
    PRINT "unmap ok", 10

    ; -- recursive mapping: 0x800000 + 1 * 4096 shows pt1 as data
    mov eax, [0x801000 + 5 * 4]         ; pt1[5] read through the directory-as-table
    and eax, 0xFFFFF000
    cmp eax, 0x310000
    jne fail
    mov dword [0x801000 + 7 * 4], 0x311000 + 3   ; write pt1[7] through the window
    invlpg [0x407000]
    mov eax, [0x407000]
    cmp eax, 0xBBBB0002
    jne fail
    PRINT "recursive ok", 10

    ; -- self-modifying code through two aliases of frame 0x320000
    mov dword [pt1 + 8 * 4], 0x320000 + 3        ; 0x408000: the writer's view
    mov dword [pt1 + 9 * 4], 0x320000 + 3        ; 0x409000: the runner's view
    mov dword [0x408000], 0x000001B8    ; mov eax, 1
    mov word [0x408004], 0xC300         ; ... ; ret
    call 0x409000
    cmp eax, 1
    jne fail
    mov ecx, 100
.smc:
    mov [0x408001], ecx                 ; mov eax, ecx (patched through the other alias)
    call 0x409000
    cmp eax, ecx
    jne fail
    loop .smc
    PRINT "smc ok", 10

    ; -- smc2: frame 0x321000, the runner's view read as data before it runs
    mov dword [pt1 + 10 * 4], 0x321000 + 3       ; 0x40A000: the writer's view
    mov dword [pt1 + 11 * 4], 0x321000 + 3       ; 0x40B000: the runner's view
    mov dword [0x40A000], 0x000002B8    ; mov eax, 2
    mov word [0x40A004], 0xC300         ; ... ; ret
    mov eax, [0x40B000]                 ; a data fill of the runner's page first
    cmp eax, 0x000002B8
    jne fail
    call 0x40B000
    cmp eax, 2
    jne fail
    mov ecx, 100
.smc2:
    mov [0x40B001], ecx                 ; patched through the runner's own view
    call 0x40B000
    cmp eax, ecx
    jne fail
    lea edx, [ecx + 1000]
    mov [0x40A001], edx                 ; and through the writer's
    call 0x40B000
    cmp eax, edx
    jne fail
    loop .smc2
    PRINT "smc2 ok", 10
    mov al, 0
    jmp exit

fail:
    PRINT "FAIL at eax="
    call puthex
    mov al, 10
    call putc
    mov al, 1
    jmp exit

pf_handler:
    push eax
    push ebx
    inc dword [faults]
    mov eax, cr2
    mov ebx, [esp + 8]                  ; error code
    test ebx, 1
    jnz .protection
    ; not present: map a fresh frame for the page (0x400000 + n -> 0x200000 + n)
    shr eax, 12
    and eax, 0x3FF
    mov ebx, eax
    shl ebx, 12
    add ebx, 0x200000 + 3
    mov [pt1 + eax * 4], ebx
    jmp .done
.protection:
    ; write to a read-only page: copy it to 0x3F0000 and map that writable
    push ecx
    push esi
    push edi
    and eax, 0xFFFFF000
    mov esi, eax
    mov edi, 0x3F0000
    mov ecx, 1024
    rep movsd
    shr eax, 12
    and eax, 0x3FF
    mov dword [pt1 + eax * 4], 0x3F0000 + 3
    shl eax, 12
    add eax, 0x400000
    invlpg [eax]
    pop edi
    pop esi
    pop ecx
.done:
    pop ebx
    pop eax
    add esp, 4
    iret

faults: dd 0
align 8
idt32:
    times 14 dq 0
    GATE32 pf_handler, 0x08, 0x8E
idt32_end:
idtr32:
    dw idt32_end - idt32 - 1
    dd idt32
align 4096
pgdir: times 1024 dd 0
pt1: times 1024 dd 0
"""

EXPECTED = ("demand faults=00000003\ncow faults=00000001\nremap ok\nunmap ok\n"
            "recursive ok\nsmc ok\nsmc2 ok\n")


@pytest.mark.parametrize("mmu", ["cached", "naive", "native"])
def test_paging32_story(assemble, tmp_path, mmu):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(BODY), mmu=mmu)
    assert out == EXPECTED
    assert result.exit_status == 1  # (0 << 1) | 1
