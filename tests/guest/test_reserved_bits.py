"""Reserved CR0/CR3/CR4/CR8 and EFER bits, unknown MSRs, and CR0.PG with EFER.LME but no PAE.

The SDM (vol. 3 2.5, 2.2.1 and the MOV CR / WRMSR pages) answers every case
below with #GP(0), leaving the register unchanged.  Stock Unicorn 2.1.4 does
not: MOV to CR is not hookable and its helper_write_crN has no reserved-bit
check (it stores the value, dropping only SMAP, PKE and OSFXSR when CPUID does
not offer them); helper_wrmsr ignores EFER bits it does not know and MSRs it
does not know; cpu_x86_update_cr0 ignores a write that would enable paging
with LME=1 and PAE=0 ("XXX: generate an exception").  Engine patch h
(engine/patches/h-reserved-bits-gp.patch) adds the checks; on the stock engine
each case must at least not take effect where 2.1.4 refuses it, and the SDM
tests skip with the reason.

The SDM, not QEMU's TCG, is the reference here: 2.1.4's helpers are QEMU
5.0's TCG helpers, gaps included (a comparison run under the installed
qemu-system-x86_64 was tried and did not get past the first case).
"""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest, run_multiboot_guest

# Each case sets one value and reports "gp=<error code>" if the #GP handler
# ran, else "refused" or "accepted" from reading the register back.
# Shared by both bodies: #GP prints its error code and resumes at [resume].
GP_RESUME32 = r"""
gp_handler:
    PRINT "gp="
    mov eax, [esp]
    call puthex
    mov al, 10
    call putc
    add esp, 4
    mov eax, [resume]
    mov [esp], eax
    iretd

align 4
resume: dd 0
    IDT_GP32 gp_handler
"""

BODY = r"""
    LOAD_GDT
    lidt [idtr]
    mov esp, 0x90000

%macro CR4_CASE 2                       ; name, bit
    PRINT %1, ": "
    mov dword [resume], %%after
    mov eax, cr4
    mov ebx, eax
    or eax, %2
    mov cr4, eax
    mov eax, cr4
    test eax, %2
    jz %%refused
    PRINT "accepted", 10
    mov cr4, ebx
    jmp %%after
%%refused:
    PRINT "refused", 10
%%after:
%endmacro

%macro EFER_CASE 3                      ; name, low bits, high bits
    PRINT %1, ": "
    mov dword [resume], %%after
    mov ecx, 0xC0000080
    rdmsr
    mov esi, eax
    mov edi, edx
    or eax, %2
    or edx, %3
    wrmsr
    rdmsr
    test eax, %2
    jnz %%accepted
    test edx, %3
    jnz %%accepted
    PRINT "refused", 10
    jmp %%after
%%accepted:
    PRINT "accepted", 10
    mov eax, esi
    mov edx, edi
    wrmsr
%%after:
%endmacro

    PRINT "cpuid: "                     ; the features whose CR4 bits are stored unchecked
    mov eax, 1
    cpuid
    mov edi, ecx
    and edi, (1 << 5) | (1 << 6) | (1 << 17)    ; VMX, SMX, PCID
    mov eax, 7
    xor ecx, ecx
    cpuid
    and ecx, (1 << 2) | (1 << 3) | (1 << 16)    ; UMIP, PKU, LA57
    or edi, ecx
    mov eax, edi
    call puthex
    mov al, 10
    call putc

    CR4_CASE "cr4.31", 1 << 31
    CR4_CASE "cr4.vmxe", 1 << 13        ; VMX not in CPUID
    CR4_CASE "cr4.smxe", 1 << 14        ; SMX not in CPUID
    CR4_CASE "cr4.pke", 1 << 22         ; PKU not in CPUID
    CR4_CASE "cr4.la57", 1 << 12        ; LA57 not in CPUID
    CR4_CASE "cr4.umip", 1 << 11        ; UMIP not in CPUID
    CR4_CASE "cr4.pcide", 1 << 17       ; PCID not in CPUID, and not in IA-32e mode
    CR4_CASE "cr4.15", 1 << 15
    EFER_CASE "efer.2", 1 << 2, 0
    EFER_CASE "efer.9", 1 << 9, 0
    EFER_CASE "efer.32", 0, 1

    PRINT "msr: "                       ; an MSR that does not exist
    mov dword [resume], .msr_done
    mov ecx, 0x4000ABCD
    mov eax, 0x1234
    xor edx, edx
    wrmsr
    rdmsr
    test eax, eax
    jz .msr_refused
    PRINT "accepted", 10
    jmp .msr_done
.msr_refused:
    PRINT "refused", 10
.msr_done:

    PRINT "pg-no-pae: "                 ; CR0.PG with EFER.LME=1 and CR4.PAE=0
    mov dword [resume], .pg_done
    mov eax, cr4
    and eax, ~(1 << 5)
    mov cr4, eax
    mov eax, page_dir
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    mov eax, cr0
    test eax, eax
    js .pg_accepted
    PRINT "refused", 10
    jmp .pg_done
.pg_accepted:
    PRINT "accepted", 10
.pg_done:
    mov eax, cr0                        ; paging and LME off again
    and eax, 0x7FFFFFFF
    mov cr0, eax
    mov ecx, 0xC0000080
    rdmsr
    and eax, ~(1 << 8)
    wrmsr
    PRINT "done", 10
    mov al, 0
    call exit

""" + GP_RESUME32 + r"""
align 4096
page_dir:                               ; 4 MiB identity page, in case PG took effect
    dd 0x00000083
    times 1023 dd 0
"""

CASES = ["cr4.31", "cr4.vmxe", "cr4.smxe", "cr4.pke", "cr4.la57", "cr4.umip", "cr4.pcide",
         "cr4.15", "efer.2", "efer.9", "efer.32", "msr", "pg-no-pae"]
SDM = "gp=00000000"
# What stock Unicorn 2.1.4 does where it does not raise #GP (see the docstring).
STOCK_REFUSES = {"cr4.pke", "efer.2", "efer.9", "efer.32", "msr", "pg-no-pae"}
STOCK_ACCEPTS = set(CASES) - STOCK_REFUSES


def _outcomes(assemble, tmp_path, mmu: str) -> dict[str, str]:
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(BODY), mmu=mmu)
    lines = out.splitlines()
    assert lines[-1:] == ["done"] and result.exit_status == 1, (result, out)
    outcomes = dict(line.split(": ", 1) for line in lines[:-1])
    # CPUID offers none of the features whose enable bits the engine cannot refuse.
    assert outcomes.pop("cpuid") == "00000000", out
    assert list(outcomes) == CASES, out
    return outcomes


@pytest.mark.parametrize("mmu", ["cached", "native"])
def test_reserved_writes_fault_or_are_refused(assemble, tmp_path, mmu):
    outcomes = _outcomes(assemble, tmp_path, mmu)
    for case in sorted(STOCK_REFUSES):
        assert outcomes[case] in (SDM, "refused"), (case, outcomes)


@pytest.mark.requires_patched_engine("h")
@pytest.mark.parametrize("mmu", ["cached", "native"])
def test_reserved_writes_fault_as_the_sdm_says(assemble, tmp_path, mmu):
    outcomes = _outcomes(assemble, tmp_path, mmu)
    assert outcomes == dict.fromkeys(CASES, SDM)


# Cases that only the patched engine may be asked: on the stock engine some of
# them would take effect (real mode with paging on, long mode without PAE).
PATCHED_BODY = r"""
    LOAD_GDT
    lidt [idtr]
    mov esp, 0x90000

%macro CR0_CASE 2                       ; name, value to OR into CR0 after ANDing ~(PE|CD)
    PRINT %1, ": "
    mov dword [resume], %%after
    mov eax, cr0
    and eax, ~((1 << 0) | (1 << 30))
    or eax, %2
    mov cr0, eax
    PRINT "accepted", 10
%%after:
%endmacro

    CR0_CASE "cr0.pg-no-pe", 1 << 31
    mov eax, cr0                        ; caching on again: CD=0 NW=0
    and eax, ~((1 << 29) | (1 << 30))
    mov cr0, eax
    or eax, 1 << 29
    PRINT "cr0.nw-no-cd: "
    mov dword [resume], .nw_done
    mov cr0, eax
    PRINT "accepted", 10
.nw_done:
    mov dword [resume], 0
    ENTER_LONG_MODE long_main

bits 64
%macro LM_CASE 2                        ; name, label after the instructions that must fault
    PRINT64 %1, ": "
    mov dword [resume], %2
%endmacro
%macro LM_END 1
    PRINT64 "accepted", 10
%1:
%endmacro

long_main:
    mov rsp, 0x90000
    lidt [idtr64]
    LM_CASE "cr0.63", .cr0
    mov rax, cr0
    bts rax, 32
    mov cr0, rax
    LM_END .cr0
    LM_CASE "cr3.63", .cr3
    mov rax, cr3
    bts rax, 63
    mov cr3, rax
    LM_END .cr3
    LM_CASE "cr4.pae-off", .cr4
    mov rax, cr4
    btr rax, 5
    mov cr4, rax
    LM_END .cr4
    LM_CASE "cr8.4", .cr8
    mov eax, 0x10
    mov cr8, rax
    LM_END .cr8
    LM_CASE "efer.lme-off", .efer
    mov ecx, 0xC0000080
    rdmsr
    btr eax, 8
    wrmsr
    LM_END .efer
    LM_CASE "rdmsr", .msr
    mov ecx, 0x4000ABCD
    rdmsr
    LM_END .msr
    PRINT64 "cr8: "
    mov rax, cr8
    call puthex64
    mov al, 10
    call putc64
    PRINT64 "done", 10
    mov al, 0
    mov dx, 0xF4
    out dx, al
    hlt

gp_handler64:
    PRINT64 "gp="
    mov rax, [rsp]
    call puthex64
    mov al, 10
    call putc64
    add rsp, 8
    mov eax, [resume]
    mov [rsp], rax
    iretq

bits 32
""" + GP_RESUME32 + r"""
align 16
idt64:
    times 13 dq 0, 0
    GATE64 gp_handler64, 0x38, 0x8E, 0
idt64_end:
idtr64:
    dw idt64_end - idt64 - 1
    dq idt64
"""


@pytest.mark.requires_patched_engine("h")
@pytest.mark.parametrize("mmu", ["cached", "native"])
def test_invalid_control_register_combinations_fault(assemble, tmp_path, mmu):
    source = protected_mode_guest(PATCHED_BODY, long_mode=True)
    result, out = run_multiboot_guest(assemble, tmp_path, source, mmu=mmu)
    gp64 = "gp=0000000000000000"
    assert out.splitlines() == [
        "cr0.pg-no-pe: gp=00000000", "cr0.nw-no-cd: gp=00000000",
        f"cr0.63: {gp64}", f"cr3.63: {gp64}", f"cr4.pae-off: {gp64}", f"cr8.4: {gp64}",
        f"efer.lme-off: {gp64}", f"rdmsr: {gp64}", "cr8: 0000000000000000", "done",
    ], out
    assert result.exit_status == 1, result
