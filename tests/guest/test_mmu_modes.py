"""Shadow MMU guests across paging modes: PAE with NX, tables cached in two modes, live tables.

Scenarios not covered by test_mmu_paging32.py (32-bit paging) and test_mmu_long.py
(1 GiB pages, NX in long mode), each run under the cached, naive and native MMUs:

- PAE paging in 32-bit protected mode with EFER.NXE: fetches from NX 2 MiB and 4 KiB pages
  and through an NX PDE naming a table fault with I/D|P while data accesses work; reserved
  bits (address bits 40-51 above MAXPHYADDR = 40 in a 2 MiB PDE, a table PDE and PTEs, and
  bit 13 of a 2 MiB PDE) fault with RSVD on reads, writes and fetches.
- One PD and PT referenced both from a PAE PDPT and from a long-mode PDPT, the guest switching
  between PAE and long mode eight times and remapping a page in each mode; the cached MMU must
  keep the shadow pages of both roles consistent and reuse them across the switches.
- Long mode: entries made present at every level of 4-level tables without INVLPG (after the
  address faulted), accessed/dirty bits as hardware sets them, and a R/W upgrade without
  INVLPG that may fault at most once.
- A triple fault of a paged guest resets the PC; the BIOS runs afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine, RunResult
from qemu_lite.loaders import multiboot

MMU_MODES = ["cached", "naive", "native"]


def run_guest(assemble, tmp_path: Path, source: str, mmu: str,
              timeout: float = 10, unsync: bool = True) -> tuple[RunResult, str, dict, list]:
    """Like guestlib.run_multiboot_guest, also returning mmu_stats() and audit() at exit
    (``unsync=False``: every store to a shadowed table trapped, as before unsync)."""
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(source))
    out = bytearray()
    with Machine(serial="none", memory="32M", mmu=mmu) as m:
        m.board.com1.add_output_listener(out.extend)
        if mmu != "native":
            m.core.set_unsync(unsync)
        multiboot.load(m, kernel)
        result = m.run(timeout=timeout)
        stats = m.core.mmu_stats()
        audit = m.core.audit() if mmu != "native" else []
    return result, out.decode(errors="replace"), stats, audit


# -- 1. PAE paging with NX and reserved bits in 32-bit protected mode ---------------------

# The #PF handler prints CR2 and the error code, then stores [fix_val] at [fix_ptr] (the
# high dword of the offending entry), INVLPGs CR2 and retries the access.
PAE_COMMON = r"""
    LOAD_GDT
    lidt [idtr32]
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 11                     ; EFER.NXE
    wrmsr
    ; data and code in frames the paged guest reaches only through faulting entries
    mov dword [0x600010], 0x6666AAAA
    mov dword [0x203000], 0x3333CCCC
    mov byte [0x207000], 0xC3           ; ret
    mov dword [0x208000], 0x88880008
    mov dword [0xA00020], 0xAAAA2020
    ; pt1: 2-4 MiB identity, 4 KiB pages
    xor ecx, ecx
.fill:
    mov eax, ecx
    shl eax, 12
    add eax, 0x200003
    mov [pt1 + ecx * 8], eax
    inc ecx
    cmp ecx, 512
    jne .fill
    mov dword [pae_pdpt], pd1 + 1
    mov dword [pd1], 0x000083           ; 0-2 MiB: one 2 MiB page (code, stack, tables)
    mov dword [pd1 + 8], pt1 + 3        ; 2-4 MiB: 4 KiB pages
    mov eax, pae_pdpt
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5                      ; PAE
    mov cr4, eax
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16)       ; PG | WP
    mov cr0, eax
    jmp body

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
    cmp dword [faults], 16
    ja fail
    PRINT "PF cr2="
    mov eax, cr2
    call puthex
    PRINT " err="
    mov eax, [esp + 8]
    call puthex
    mov al, 10
    call putc
    mov eax, [fix_ptr]
    mov ebx, [fix_val]
    mov [eax], ebx
    mov eax, cr2
    invlpg [eax]
    pop ebx
    pop eax
    add esp, 4
    iret

%macro FIX 2                            ; the handler stores %2 at %1
    mov dword [fix_ptr], %1
    mov dword [fix_val], %2
%endmacro

faults: dd 0
fix_ptr: dd scratch
fix_val: dd 0
scratch: dd 0
align 8
idt32:
    times 14 dq 0
    GATE32 pf_handler, 0x08, 0x8E
idt32_end:
idtr32:
    dw idt32_end - idt32 - 1
    dd idt32
align 4096
pae_pdpt: times 512 dq 0
pd1: times 512 dq 0
pt1: times 512 dq 0

body:
"""

PAE_NX_BODY = PAE_COMMON + r"""
    ; 4-6 MiB: a 2 MiB page, NX; pt1[5] (0x205000): a 4 KiB page, NX
    mov dword [pd1 + 2 * 8], 0x400083
    mov dword [pd1 + 2 * 8 + 4], 0x80000000
    mov dword [pt1 + 5 * 8 + 4], 0x80000000

    ; -- the 2 MiB NX page: data writes and reads work, the fetch faults
    mov byte [0x400100], 0xB8           ; mov eax, 0x600DF00D; ret
    mov dword [0x400101], 0x600DF00D
    mov byte [0x400105], 0xC3
    mov eax, [0x400101]
    cmp eax, 0x600DF00D
    jne fail
    PRINT "2m data ok", 10
    FIX pd1 + 2 * 8 + 4, 0              ; the handler clears NX
    xor eax, eax
    call 0x400100                       ; #PF I/D|P, then runs
    cmp eax, 0x600DF00D
    jne fail
    cmp dword [faults], 1
    jne fail
    PRINT "2m exec ok", 10

    ; -- the 4 KiB NX page, next to executable 4 KiB pages of the same table
    mov byte [0x204FFF], 0xC3           ; ret, in the executable page before it
    call 0x204FFF
    mov byte [0x205000], 0xB8           ; mov eax, 0x5A5A0001; ret
    mov dword [0x205001], 0x5A5A0001
    mov byte [0x205005], 0xC3
    mov eax, [0x205001]
    cmp eax, 0x5A5A0001
    jne fail
    PRINT "4k data ok", 10
    FIX pt1 + 5 * 8 + 4, 0
    xor eax, eax
    call 0x205000                       ; #PF I/D|P
    cmp eax, 0x5A5A0001
    jne fail
    cmp dword [faults], 2
    jne fail
    PRINT "4k exec ok", 10

    ; -- NX in a PDE naming a table: pd1[6] (12-14 MiB) -> pt1 again, NX
    mov dword [pd1 + 6 * 8], pt1 + 3
    mov dword [pd1 + 6 * 8 + 4], 0x80000000
    mov eax, [0xC04FFC]                 ; data through it: 0x204FFF holds the ret
    shr eax, 24
    cmp eax, 0xC3
    jne fail
    call 0x204FFF                       ; still executable through pd1[1]
    FIX pd1 + 6 * 8 + 4, 0
    call 0xC04FFF                       ; #PF I/D|P, the same PTE under an NX PDE
    cmp dword [faults], 3
    jne fail
    PRINT "pde nx ok", 10
    mov al, 0
    jmp exit
"""

PAE_RSVD_BODY = PAE_COMMON + r"""
    mov dword [pd1 + 3 * 8], 0x600083   ; 6-8 MiB: a 2 MiB page with bit 51 set
    mov dword [pd1 + 3 * 8 + 4], 1 << 19
    mov dword [pd1 + 4 * 8], pt1 + 3    ; 8-10 MiB: a PDE naming pt1, bit 45 set
    mov dword [pd1 + 4 * 8 + 4], 1 << 13
    mov dword [pt1 + 6 * 8 + 4], 1 << 8 ; 0x206000: bit 40, the first above MAXPHYADDR
    mov dword [pt1 + 7 * 8 + 4], 1 << 15    ; 0x207000 (a ret): bit 47
    mov dword [pd1 + 5 * 8], 0xA00083 | (1 << 13)   ; 10-12 MiB: 2 MiB page, bit 13 set

    FIX pd1 + 3 * 8 + 4, 0
    mov eax, [0x600010]                 ; #PF P|RSVD
    cmp eax, 0x6666AAAA
    jne fail
    PRINT "2m pde ok", 10
    FIX pd1 + 4 * 8 + 4, 0
    mov eax, [0x803000]                 ; #PF P|RSVD, then pt1[3] through the other PDE
    cmp eax, 0x3333CCCC
    jne fail
    PRINT "table pde ok", 10
    FIX pt1 + 6 * 8 + 4, 0
    mov dword [0x206000], 0x12340006    ; #PF P|W|RSVD
    mov eax, [0x206000]
    cmp eax, 0x12340006
    jne fail
    PRINT "pte write ok", 10
    FIX pt1 + 7 * 8 + 4, 0
    call 0x207000                       ; #PF P|RSVD|I/D
    PRINT "pte fetch ok", 10
    FIX pd1 + 5 * 8, 0xA00083
    mov eax, [0xA00020]                 ; #PF P|RSVD
    cmp eax, 0xAAAA2020
    jne fail
    PRINT "2m low bit ok", 10
    ; a page in use gets a reserved bit (with INVLPG): the next access faults
    mov eax, [0x208000]
    cmp eax, 0x88880008
    jne fail
    mov dword [pt1 + 8 * 8 + 4], 1 << 18    ; bit 50
    invlpg [0x208000]
    FIX pt1 + 8 * 8 + 4, 0
    mov eax, [0x208000]                 ; #PF P|RSVD
    cmp eax, 0x88880008
    jne fail
    PRINT "live pte ok", 10
    PRINT "faults="
    mov eax, [faults]
    call puthex
    mov al, 10
    call putc
    mov al, 0
    jmp exit
"""

PAE_NX_EXPECTED = ("2m data ok\nPF cr2=00400100 err=00000011\n2m exec ok\n"
                   "4k data ok\nPF cr2=00205000 err=00000011\n4k exec ok\n"
                   "PF cr2=00C04FFF err=00000011\npde nx ok\n")

PAE_RSVD_EXPECTED = ("PF cr2=00600010 err=00000009\n2m pde ok\n"
                     "PF cr2=00803000 err=00000009\ntable pde ok\n"
                     "PF cr2=00206000 err=0000000B\npte write ok\n"
                     "PF cr2=00207000 err=00000019\npte fetch ok\n"
                     "PF cr2=00A00020 err=00000009\n2m low bit ok\n"
                     "PF cr2=00208000 err=00000009\nlive pte ok\nfaults=00000006\n")


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_pae_nx(assemble, tmp_path, mmu):
    result, out, stats, audit = run_guest(assemble, tmp_path,
                                          protected_mode_guest(PAE_NX_BODY), mmu)
    assert out == PAE_NX_EXPECTED
    assert result.exit_status == 1
    assert audit == []
    if mmu == "cached":
        assert stats["faults"] == 3


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_pae_reserved_bits(assemble, tmp_path, mmu):
    result, out, stats, audit = run_guest(assemble, tmp_path,
                                          protected_mode_guest(PAE_RSVD_BODY), mmu)
    assert out == PAE_RSVD_EXPECTED
    assert result.exit_status == 1
    assert audit == []
    if mmu == "cached":
        assert stats["rsvd_faults"] == 6


# -- 2. One PD and PT shared by PAE and long-mode tables, eight mode switches ---------------

# Virtual 2-4 MiB: 4 KiB pages through ``pt``, page i initially on frame 0x800000 + i * 4096;
# 4-6 MiB: a 2 MiB page on 0xA00000; 8-12 MiB: identity (the physical view of those frames).
# Each phase checks every page against the frame its PTE names, folds the values into a
# checksum, adds (phase + 1) << 16 to each page, writes a word into the 2 MiB page, and
# moves one page to a spare frame (one PTE write and INVLPG), so the next phase, in the
# other mode, must see the remap through its own shadow of the same PT.
SHARED_WORK = r"""
%macro WORK 1                           ; %1: failure label (same code in 32 and 64 bits)
    xor ecx, ecx
%%check:
    mov ebx, [pt + ecx * 8]
    and ebx, 0xFFFFF000                 ; the frame, identity-mapped by pd[4]
    mov eax, [ebx]
    mov edx, ecx
    shl edx, 12
    cmp eax, [0x200000 + edx]
    jne %1
    mov ebx, [csum]
    imul ebx, ebx, 31
    add ebx, eax
    mov [csum], ebx
    inc ecx
    cmp ecx, 8
    jne %%check
    mov eax, [phase]
    inc eax
    shl eax, 16
    xor ecx, ecx
%%update:
    mov edx, ecx
    shl edx, 12
    add [0x200000 + edx], eax
    inc ecx
    cmp ecx, 8
    jne %%update
    mov eax, [phase]
    lea edx, [eax + 0xB00]
    mov [0x400000 + eax * 4], edx       ; through the 2 MiB page
    xor ecx, ecx
%%big:
    mov eax, [0xA00000 + ecx * 4]       ; ... and its physical view
    cmp eax, [0x400000 + ecx * 4]
    jne %1
    mov ebx, [csum]
    imul ebx, ebx, 31
    add ebx, eax
    mov [csum], ebx
    inc ecx
    cmp ecx, [phase]
    jbe %%big
    ; remap page (3 * phase) % 8 to the spare frame (one PTE write); its frame is the spare
    mov ecx, [phase]
    lea ecx, [ecx + ecx * 2]
    and ecx, 7
    mov eax, [pt + ecx * 8]
    mov ebx, [spare]
    or ebx, 3
    mov [pt + ecx * 8], ebx
    and eax, 0xFFFFF000
    mov [spare], eax
    shl ecx, 12
    invlpg [0x200000 + ecx]
    and ebx, 0xFFFFF000                 ; the page shows its new frame at once
    mov eax, [ebx]
    cmp eax, [0x200000 + ecx]
    jne %1
%endmacro
"""

TWO_MODES_BODY = SHARED_WORK + r"""
    LOAD_GDT
    xor ecx, ecx
.frames:
    mov eax, ecx
    shl eax, 12
    lea ebx, [ecx + 0x1000]
    mov [0x800000 + eax], ebx           ; frame i holds 0x1000 + i
    add eax, 0x800003
    mov [pt + ecx * 8], eax
    inc ecx
    cmp ecx, 8
    jne .frames
    mov dword [0x808000], 0x1008        ; frame 8: the spare
    mov dword [pd], 0x000083            ; the shared PD
    mov dword [pd + 1 * 8], pt + 3
    mov dword [pd + 2 * 8], 0xA00083
    mov dword [pd + 4 * 8], 0x800083
    mov dword [pd + 5 * 8], 0xA00083
    mov dword [pae_pdpt], pd + 1        ; PAE: PDPT[0] -> pd
    mov dword [pml4], pdpt + 7          ; long mode: PML4[0] -> PDPT, PDPT[0] -> pd
    mov dword [pdpt], pd + 7
    mov eax, cr4
    or eax, 1 << 5                      ; PAE, for both modes
    mov cr4, eax

pae_phase:                              ; 32-bit code, paging off
    mov eax, pae_pdpt
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    WORK fail32
    PRINT "pae "
    call print_phase32
    inc dword [phase]
    mov eax, cr0                        ; to long mode: paging off, LME, CR3, paging on
    and eax, 0x7FFFFFFF
    mov cr0, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, pml4
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    jmp 0x38:long_phase

print_phase32:
    mov al, [phase]
    add al, '0'
    call putc
    PRINT " csum="
    mov eax, [csum]
    call puthex
    mov al, 10
    call putc
    ret

fail32:
    PRINT "FAIL32 eax="
    call puthex
    mov al, 10
    call putc
    mov al, 1
    jmp exit

bits 64
long_phase:
    WORK fail64
    PRINT64 "long "
    mov al, [phase]
    add al, '0'
    call putc64
    PRINT64 " csum="
    mov eax, [csum]
    call puthex64
    mov al, 10
    call putc64
    inc dword [phase]
    cmp dword [phase], 8
    je .done
    push 0x08                           ; leave long mode through compatibility mode
    push back32
    retfq
.done:
    mov al, 0
    out 0xF4, al
    hlt

fail64:
    PRINT64 "FAIL64 eax="
    call puthex64
    mov al, 10
    call putc64
    mov al, 1
    out 0xF4, al
    hlt

bits 32
back32:                                 ; compatibility mode: paging off, then LME off
    mov eax, cr0
    and eax, 0x7FFFFFFF
    mov cr0, eax
    mov ecx, 0xC0000080
    rdmsr
    and eax, ~(1 << 8)
    wrmsr
    jmp pae_phase

phase: dd 0
csum: dd 0
spare: dd 0x808000
align 4096
pae_pdpt: times 512 dq 0
pt: times 512 dq 0
"""


def two_modes_expected() -> str:
    """What the guest prints, computed by modelling its tables in Python."""
    frames = [0x1000 + i for i in range(9)]      # the word at offset 0 of each frame
    pt = list(range(8))                          # page i -> frame pt[i]
    spare = 8
    big: list[int] = []
    csum = 0
    lines = []
    for phase in range(8):
        for i in range(8):
            csum = (csum * 31 + frames[pt[i]]) & 0xFFFFFFFF
        for i in range(8):
            frames[pt[i]] = (frames[pt[i]] + ((phase + 1) << 16)) & 0xFFFFFFFF
        big.append(0xB00 + phase)
        for value in big:
            csum = (csum * 31 + value) & 0xFFFFFFFF
        i = 3 * phase % 8
        pt[i], spare = spare, pt[i]
        if phase % 2 == 0:
            lines.append(f"pae {phase} csum={csum:08X}")
        else:
            lines.append(f"long {phase} csum={csum:016X}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("mmu", "unsync"), [("cached", False), ("cached", True),
                                             ("naive", True), ("native", False)])
def test_same_tables_in_pae_and_long_mode(assemble, tmp_path, mmu, unsync):
    result, out, stats, audit = run_guest(
        assemble, tmp_path, protected_mode_guest(TWO_MODES_BODY, long_mode=True), mmu,
        unsync=unsync)
    assert out == two_modes_expected()
    assert result.exit_status == 1
    assert audit == []
    if mmu == "cached":
        # The PAE root, PD and PT and the long-mode PML4, PDPT, PD and PT, built once in
        # the first two phases and found again on every later CR3 load; never zapped.
        assert (stats["roots_created"], stats["roots_reused"]) == (2, 6)
        assert stats["sp_created"] == 7
        assert stats["sp_zapped"] == 0
    if mmu == "cached" and not unsync:
        # Each remap reached the shadow PT of both roles (only one existed in phase 0).
        assert stats["pte_updated"] + stats["pte_zapped"] == 1 + 7 * 2
    elif mmu == "cached":
        # The PT is left unsync: the remaps are seen at the fills and resyncs after them.
        assert stats["pte_updated"] + stats["pte_zapped"] == 0
        assert stats["unsync_pages"] > 0 and stats["resync_updates"] > 0
    elif mmu == "naive":
        assert stats["roots_reused"] == 0
        assert stats["naive_zap_all"] == 7


# -- 3. Long mode: live 4-level tables changed without INVLPG ----------------------------

# test_mmu_paging32.py makes a not-present 32-bit PTE present without INVLPG.  Here every
# level of 4-level tables does so right after the address faulted (no TLB or paging-structure
# cache entry is created from a not-present entry, and a #PF invalidates the address), with
# the accessed and dirty bits as hardware sets them.  A R/W 0 -> 1 change without INVLPG may
# give one spurious #PF (SDM 4.10.4.3), after which the write must succeed.
LIVE_TABLES_BODY = r"""
    LOAD_GDT
    mov dword [0x500000], 0xA0000000    ; frames, written before paging
    mov dword [0x501000], 0xA0000001
    mov dword [0x502000], 0xA0000002
    mov dword [0x503000], 0xB0000000
    mov dword [0xC00000], 0xB2000000
    mov dword [0x504000], 0xC0000000
    mov dword [0x505000], 0xD0000000
    ENTER_LONG_MODE long_entry
bits 64
long_entry:
    mov ax, 0x10
    mov ds, ax
    mov ss, ax
    mov rsp, 0x80000
    lidt [idtr64]
    mov rax, cr0
    or eax, 1 << 16                     ; WP
    mov cr0, rax

    ; -- PTE: pd[2] (0x400000) -> pt_a; pt_a[0] present, pt_a[1] and pt_a[2] not
    mov qword [pt_a], 0x500003
    mov qword [pd + 2 * 8], pt_a + 3
    mov eax, [0x400000]
    cmp eax, 0xA0000000
    jne fail
    mov qword [resume], .pte_read
    mov eax, [0x401000]                 ; #PF: not present
.pte_read:
    mov qword [pt_a + 1 * 8], 0x501003  ; present, no INVLPG
    mov eax, [0x401000]
    cmp eax, 0xA0000001
    jne fail
    PRINT64 "pte read ok "
    mov rax, [pt_a + 1 * 8]             ; A set, D clear
    call putflags
    mov al, 10
    call putc64
    mov qword [resume], .pte_write
    mov dword [0x402000], 0x22222222    ; #PF: not present, write
.pte_write:
    mov qword [pt_a + 2 * 8], 0x502003
    mov dword [0x402000], 0x22222222
    mov eax, [0x402000]
    cmp eax, 0x22222222
    jne fail
    mov dword [0x401000], 0x11111111    ; the first write sets D on a page read before
    mov eax, [0x401000]
    cmp eax, 0x11111111
    jne fail
    PRINT64 "pte write ok "
    mov rax, [pt_a + 2 * 8]
    call putflags
    mov al, ' '
    call putc64
    mov rax, [pt_a + 1 * 8]
    call putflags
    mov al, 10
    call putc64

    ; -- PDE naming a table: pd[3] (0x600000) -> pt_b
    mov qword [pt_b], 0x503003
    mov qword [resume], .pde
    mov eax, [0x600000]                 ; #PF
.pde:
    mov qword [pd + 3 * 8], pt_b + 3
    mov eax, [0x600000]
    cmp eax, 0xB0000000
    jne fail
    PRINT64 "pde ok "
    mov rax, [pd + 3 * 8]
    call putflags
    mov al, 10
    call putc64

    ; -- PDE mapping a 2 MiB page: pd[4] (0x800000) -> 0xC00000
    mov qword [resume], .pde_2m
    mov eax, [0x800000]                 ; #PF
.pde_2m:
    mov qword [pd + 4 * 8], 0xC00083
    mov eax, [0x800000]
    cmp eax, 0xB2000000
    jne fail
    PRINT64 "pde 2m ok "
    mov rax, [pd + 4 * 8]
    call putflags
    mov al, 10
    call putc64

    ; -- PDPTE: pdpt[1] (0x40000000) -> pd_c -> pt_c
    mov qword [pt_c], 0x504003
    mov qword [pd_c], pt_c + 3
    mov rbx, 0x40000000
    mov qword [resume], .pdpte
    mov eax, [rbx]                      ; #PF
.pdpte:
    mov qword [pdpt + 1 * 8], pd_c + 3
    mov eax, [rbx]
    cmp eax, 0xC0000000
    jne fail
    PRINT64 "pdpte ok", 10

    ; -- PML4E: pml4[1] (0x8000000000) -> pdpt_d -> pd_d -> pt_d, on the live root
    mov qword [pt_d], 0x505003
    mov qword [pd_d], pt_d + 3
    mov qword [pdpt_d], pd_d + 3
    mov rbx, 0x8000000000
    mov qword [resume], .pml4e
    mov eax, [rbx]                      ; #PF
.pml4e:
    mov qword [pml4 + 1 * 8], pdpt_d + 3
    mov eax, [rbx]
    cmp eax, 0xD0000000
    jne fail
    mov dword [rbx + 4], 0xD0000004
    PRINT64 "pml4e ok"
    mov rsi, pml4 + 1 * 8
    call putflags_at
    mov rsi, pdpt_d
    call putflags_at
    mov rsi, pd_d
    call putflags_at
    mov rsi, pt_d
    call putflags_at
    mov al, 10
    call putc64
    mov eax, [rbx + 4]
    cmp eax, 0xD0000004
    jne fail

    PRINT64 "faults="
    mov eax, [faults]
    call puthex64
    mov al, 10
    call putc64

    ; -- R/W 0 -> 1 without INVLPG: at most one (spurious) #PF, then the write lands
    mov qword [pt_a], 0x500001          ; read-only ...
    invlpg [0x400000]
    mov eax, [0x400000]                 ; ... and in the TLB
    mov qword [pt_a], 0x500003          ; writable, no INVLPG
    mov byte [quiet], 1
    mov dword [faults], 0
    mov dword [0x400000], 0x33333333    ; the handler retries
    mov byte [quiet], 0
    cmp dword [faults], 1
    ja fail
    mov eax, [0x400000]
    cmp eax, 0x33333333
    jne fail
    PRINT64 "rw upgrade ok", 10
    mov al, 0
    out 0xF4, al
    hlt

fail:
    PRINT64 "FAIL", 10
    mov al, 1
    out 0xF4, al
    hlt

putflags_at:                            ; ' ' and the flags of the entry at rsi
    mov al, ' '
    call putc64
    mov rax, [rsi]
putflags:                               ; rax -> its low 12 bits, 3 hex digits
    push rcx
    push rax
    shl rax, 52
    mov ecx, 3
.digit:
    rol rax, 4
    push rax
    and al, 0xF
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    call putc64
    pop rax
    loop .digit
    pop rax
    pop rcx
    ret

pf_handler:                             ; print, then resume at [resume] or retry
    push rax
    inc dword [faults]
    cmp dword [faults], 16
    ja fail
    cmp byte [quiet], 0
    jne .silent
    PRINT64 "PF cr2="
    mov rax, cr2
    call puthex64
    PRINT64 " err="
    mov rax, [rsp + 8]
    call puthex64
    mov al, 10
    call putc64
.silent:
    mov rax, [resume]
    test rax, rax
    jz .retry
    mov [rsp + 16], rax
    mov qword [resume], 0
.retry:
    pop rax
    add rsp, 8
    iretq

faults: dd 0
quiet: db 0
align 8
resume: dq 0
align 16
idt64:
    times 14 dq 0, 0
    GATE64 pf_handler, 0x38, 0x8E, 0
idt64_end:
idtr64:
    dw idt64_end - idt64 - 1
    dq idt64
align 4096
pt_a: times 512 dq 0
pt_b: times 512 dq 0
pd_c: times 512 dq 0
pt_c: times 512 dq 0
pdpt_d: times 512 dq 0
pd_d: times 512 dq 0
pt_d: times 512 dq 0
bits 32
"""

LIVE_TABLES_EXPECTED = """\
PF cr2=0000000000401000 err=0000000000000000
pte read ok 023
PF cr2=0000000000402000 err=0000000000000002
pte write ok 063 063
PF cr2=0000000000600000 err=0000000000000000
pde ok 023
PF cr2=0000000000800000 err=0000000000000000
pde 2m ok 0A3
PF cr2=0000000040000000 err=0000000000000000
pdpte ok
PF cr2=0000008000000000 err=0000000000000000
pml4e ok 023 023 023 063
faults=0000000000000006
rw upgrade ok
"""


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_long_mode_live_tables_without_invlpg(assemble, tmp_path, mmu):
    result, out, stats, audit = run_guest(
        assemble, tmp_path, protected_mode_guest(LIVE_TABLES_BODY, long_mode=True), mmu)
    assert out == LIVE_TABLES_EXPECTED
    assert result.exit_status == 1
    assert audit == []
    if mmu in ("cached", "naive"):
        # The six entries were made present in tables already shadowed (write-tracked),
        # and the shadow pages stayed live.
        assert stats["pte_writes"] >= 6
        assert stats["sp_zapped"] == 0


# -- 4. A machine reset drops the shadow state of a paged guest ------------------------------

# The PAE guest of test 1 takes a #PF with an empty IDT: a triple fault, which resets the
# PC; the BIOS must then run in real mode (paging off, nothing stale) and find no disk.
RESET_BODY = PAE_COMMON + r"""
    mov eax, [0x205000]
    PRINT "paged", 10
    lidt [empty_idtr]
    mov eax, [0x40000000]               ; not present: #PF -> #DF -> triple fault
    PRINT "FAIL: no reset", 10
    mov al, 1
    jmp exit
empty_idtr:
    dw 0
    dd 0
"""


@pytest.mark.parametrize("mmu", MMU_MODES)
def test_reset_after_paging(assemble, tmp_path, mmu):
    result, out, stats, audit = run_guest(assemble, tmp_path,
                                          protected_mode_guest(RESET_BODY), mmu)
    assert out.startswith("paged\nqemu_lite BIOS")
    assert "No bootable disk" in out
    assert result.reason == "no-boot-after-reset"
    assert audit == []
    if mmu == "cached":
        assert stats["sp_live"] == 0
