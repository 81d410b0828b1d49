"""MSRs a guest wrote are part of the machine's state: after a restore (a state file into
a fresh machine, an in-memory snapshot into the same one) the guest reads them back.

The platform's own (qemu_lite/msr.py: IA32_APIC_BASE with a moved APIC page, TSC_ADJUST,
MISC_ENABLE) and the engine's (EFER, STAR, SYSENTER_ESP, kept in Unicorn's CPU context).
"""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

pytestmark = pytest.mark.requires_patched_engine("f")

GO = 0x7000  # the host writes 1 here to let the guest read its MSRs back

BODY = rf"""
    mov ecx, 0x1B                   ; IA32_APIC_BASE: move the page to 0xFEA00000
    mov eax, 0xFEA00900
    xor edx, edx
    wrmsr
    mov ecx, 0x3B                   ; IA32_TSC_ADJUST := 5 << 32 (the TSC moves with it)
    mov edx, 5
    xor eax, eax
    wrmsr
    mov ecx, 0x1A0                  ; IA32_MISC_ENABLE |= ENABLE_MONITOR (bit 18)
    rdmsr
    or eax, 1 << 18
    wrmsr
    mov ecx, 0xC0000080             ; EFER.SCE
    rdmsr
    or eax, 1
    wrmsr
    mov ecx, 0xC0000081             ; STAR
    mov edx, 0x00230010
    mov eax, 0x12345678
    wrmsr
    mov ecx, 0x175                  ; IA32_SYSENTER_ESP
    xor edx, edx
    mov eax, 0x8BADF00D
    wrmsr
    jmp .written                    ; the APIC page moves at the next block
.written:
    PRINT "W"
.wait:
    cmp dword [{GO:#x}], 0
    je .wait
    mov ebx, msrs
.next:
    mov ecx, [ebx]
    test ecx, ecx
    jz .done
    rdmsr
    xchg eax, edx
    call puthex
    mov eax, edx
    call puthex
    mov al, ' '
    call putc
    add ebx, 4
    jmp .next
.done:
    mov eax, [0xFEA00030]           ; the APIC's version register, at the moved page
    call puthex
    mov eax, [0xFEE00030]           ; the default page: unassigned
    call puthex
    rdtsc
    mov eax, edx                    ; the TSC's high half: 5 (ADJUST moved it)
    call puthex
    ; Undo every write, so that restoring a snapshot has something to put back.
    mov ecx, 0x1B
    mov eax, 0xFEE00900
    xor edx, edx
    wrmsr
    mov ecx, 0x3B
    xor eax, eax
    wrmsr
    mov ecx, 0x1A0
    mov eax, 0x1801
    wrmsr
    mov ecx, 0xC0000080
    rdmsr
    and eax, ~1
    wrmsr
    mov ecx, 0xC0000081
    xor eax, eax
    xor edx, edx
    wrmsr
    mov ecx, 0x175
    wrmsr
    mov al, 0
    call exit
msrs: dd 0x1B, 0x3B, 0x1A0, 0xC0000080, 0xC0000081, 0x175, 0
"""

# What the guest prints after the restore: each MSR as EDX:EAX, then the APIC's version
# at the moved page (compared with the default page's before the move), the old page,
# and the TSC's high half.
EXPECTED_MSRS = ("00000000FEA00900 0000000500000000 0000000000041801 0000000000000001 "
                 "0023001012345678 000000008BADF00D ")


def _machine(out: bytearray) -> Machine:
    m = Machine(memory="32M", deterministic=True, vga="none")
    m.board.com1.add_output_listener(out.extend)
    return m


def _run_to_the_wait(m: Machine, out: bytearray) -> None:
    for _ in range(1000):
        if b"W" in out:
            return
        assert m.run(timeout=60, guest_ns=m.clock.now() + 1_000_000).reason == "guest-time"
    raise AssertionError(f"the guest never wrote its MSRs: {out!r}")


def _read_back(m: Machine, out: bytearray) -> str:
    out.clear()
    m.write_memory(GO, (1).to_bytes(4, "little"))
    result = m.run(timeout=60)
    assert result.reason == "exit" and result.exit_status == 1, (result, out)
    return out.decode()


def test_msrs_written_before_a_save_read_back_after_restore(assemble, tmp_path):
    kernel = tmp_path / "msrs.bin"
    kernel.write_bytes(assemble(protected_mode_guest(BODY)))
    state = tmp_path / "msrs.qlstate"
    out = bytearray()
    with _machine(out) as m:
        version = m.board.lapic.io_read(0x30, 4)
        multiboot.load(m, kernel)
        _run_to_the_wait(m, out)
        m.save_state(state)
        token = m.snapshot()
        first = _read_back(m, out)
        # The guest undid its writes before it exited: the snapshot puts them back.
        m.restore(token)
        again = _read_back(m, out)
    expected = EXPECTED_MSRS + f"{version:08X}FFFFFFFF00000005"
    assert first == expected
    assert again == expected

    # A fresh machine starts from power-on MSRs; the state file brings the guest's.
    with _machine(out) as m:
        m.restore_state(state)
        assert m.msrs is not None and m.msrs.tsc_adjust == 5 << 32
        assert _read_back(m, out) == expected
