"""--deterministic: guest time derives from guest progress, so runs repeat exactly."""

from __future__ import annotations

from guestlib import protected_mode_guest, run_multiboot_guest
from test_platform import IDT_256, PIC_INIT

# The guest samples the PIT's channel 0 count at fixed points of its own
# progress and prints the samples and the RTC date: all depend on guest time.
SAMPLER = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 0x20, irq0
    lidt [idtr]
""" + PIC_INIT + r"""
    mov al, 0xFA
    out 0x21, al
    mov al, 0x34
    out 0x43, al
    mov ax, 1193              ; 1 kHz
    out 0x40, al
    mov al, ah
    out 0x40, al
    sti
    mov ecx, 8
.sample:
    push ecx
    mov ecx, 20000
.spin:
    imul eax, eax, 7          ; some work between samples
    loop .spin
    mov al, 0                 ; latch channel 0
    out 0x43, al
    in al, 0x40
    mov ah, al
    in al, 0x40
    xchg al, ah
    movzx eax, ax
    call puthex
    mov al, ' '
    call putc
    pop ecx
    loop .sample
.wait:                        ; idle across 50 ticks with HLT
    hlt
    cmp dword [ticks], 50
    jb .wait
    cli
    PRINT 10, "ticks: "
    mov eax, [ticks]
    call puthex
    PRINT " rtc year: "
    mov al, 9
    out 0x70, al
    in al, 0x71
    movzx eax, al
    call puthex
    mov al, 10
    call putc
    mov al, 0
    call exit

irq0:
    inc dword [ticks]
    push eax
    mov al, 0x20
    out 0x20, al
    pop eax
    iret
ticks: dd 0
"""


def test_two_deterministic_runs_print_the_same_bytes(assemble, tmp_path):
    source = protected_mode_guest(SAMPLER)
    first, out1 = run_multiboot_guest(assemble, tmp_path, source, deterministic=True)
    second, out2 = run_multiboot_guest(assemble, tmp_path, source, deterministic=True)
    assert first.exit_status == second.exit_status == 1
    assert out1 == out2
    samples = out1.split("\n")[0].split()
    assert len(set(samples)) > 1  # the counter moved: time really passed
    assert "rtc year: 00000000" in out1  # 2000-01-01 unless --rtc base= says otherwise
