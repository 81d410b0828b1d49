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


# A guest that waits by polling devices, as firmware and early kernels do:
# the RTC's seconds register until it changes, the PIT's channel 2 output
# through the read-back status until a 50 ms one-shot ends, the i8042's
# status until its self-test answers.  Deterministic time charges each port
# access about 1 us, so the polls see time pass (they spun forever when only
# translation blocks advanced guest time).
POLLER = r"""
    mov al, 0                 ; RTC seconds
    out 0x70, al
    in al, 0x71
    mov bl, al
    xor esi, esi
.rtc:
    inc esi
    mov al, 0
    out 0x70, al
    in al, 0x71
    cmp al, bl
    je .rtc
    PRINT "rtc edge after polls="
    mov eax, esi
    shr eax, 16               ; coarse: 65536 polls a unit
    call puthex
    mov al, 10
    call putc
    mov al, 1                 ; PIT channel 2 gate on, speaker off
    out 0x61, al
    mov al, 0xB0              ; channel 2, lobyte/hibyte, mode 0 (OUT rises at terminal count)
    out 0x43, al
    mov ax, 59659             ; 50 ms
    out 0x42, al
    mov al, ah
    out 0x42, al
    xor esi, esi
.pit:
    inc esi
    mov al, 0xE8              ; read-back: latch status of channel 2
    out 0x43, al
    in al, 0x42
    test al, 0x80             ; OUT
    jz .pit
    PRINT "pit one-shot done", 10
    mov al, 0xAA              ; i8042 controller self-test
    out 0x64, al
.kbc:
    in al, 0x64
    test al, 1                ; output buffer full
    jz .kbc
    in al, 0x60
    movzx eax, al
    PRINT "i8042 self-test="
    call puthex
    mov al, 10
    call putc
    mov al, 0
    call exit
"""


def test_polling_guest_sees_time_pass_under_deterministic(assemble, tmp_path):
    source = protected_mode_guest(POLLER)
    first, out1 = run_multiboot_guest(assemble, tmp_path, source, deterministic=True, timeout=60)
    assert first.reason == "exit", (first, out1)
    lines = out1.splitlines()
    assert lines[0].startswith("rtc edge after polls=")
    # the edge comes within one guest second: at ~2 us a poll, under 2**19 polls
    assert int(lines[0].split("=")[1], 16) < 8
    assert lines[1:] == ["pit one-shot done", "i8042 self-test=00000055"]
    second, out2 = run_multiboot_guest(assemble, tmp_path, source, deterministic=True, timeout=60)
    assert out2 == out1


# Linux's decompressor, with neither RDRAND nor a TSC in CPUID, takes KASLR's
# entropy from the PIT: read-back of channel 0's status and count, repeated
# while the status says NULL COUNT.  A direct kernel boot skips the BIOS, so
# channel 0 has had no count since reset; the loop spun forever when the
# reset state said NULL COUNT (the hang once blamed on hiding RDRAND).
PIT_ENTROPY = r"""
    xor esi, esi
.again:
    inc esi
    cmp esi, 100000
    ja .stuck
    mov al, 0xC2              ; read-back: latch status and count of channel 0
    out 0x43, al
    in al, 0x40
    mov bl, al
    in al, 0x40
    in al, 0x40
    test bl, 0x40             ; NULL COUNT
    jnz .again
    PRINT "pit entropy read", 10
    mov al, 0
    call exit
.stuck:
    PRINT "null count never cleared", 10
    mov al, 1
    call exit
"""


def test_pit_readback_after_reset_reports_no_null_count(assemble, tmp_path):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(PIT_ENTROPY),
                                      deterministic=True)
    assert out == "pit entropy read\n"
    assert result.exit_status == 1


# Reads COM1 by polling LSR with the receive interrupt enabled in IER (the
# CPU never takes it: interrupts stay off), echoes each byte in brackets and
# finally prints the TSC ticks from the first byte to the newline.
SERIAL_READER = r"""
    mov dx, 0x3FB
    mov al, 0x03              ; 8 data bits, no parity, 1 stop bit
    out dx, al
    mov dx, 0x3FA
    mov al, 0x07              ; FIFO on, both cleared
    out dx, al
    mov dx, 0x3F9
    mov al, 0x01              ; IER.ERBFI
    out dx, al
    xor edi, edi
.next:
    mov dx, 0x3FD
.poll:
    in al, dx
    test al, 1
    jz .poll
    test edi, edi
    jnz .read
    rdtsc
    mov edi, eax
.read:
    mov dx, 0x3F8
    in al, dx
    mov bl, al
    mov al, '['
    call putc
    mov al, bl
    call putc
    mov al, ']'
    call putc
    cmp bl, 10
    jne .next
    rdtsc
    sub eax, edi
    call puthex
    mov al, 0
    call exit
"""


def _run_with_serial_input(assemble, tmp_path, data: bytes) -> str:
    from qemu_lite import Machine
    from qemu_lite.loaders import multiboot
    from qemu_lite.replay import replay_file

    kernel = tmp_path / "reader.bin"
    kernel.write_bytes(assemble(protected_mode_guest(SERIAL_READER)))
    feed = tmp_path / "input.txt"
    feed.write_bytes(data)
    out = bytearray()
    with Machine(memory="32M", deterministic=True) as m:
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        replay = replay_file(m, str(feed))
        result = m.run(timeout=60)
    assert result.exit_status == 1, (result, bytes(out))
    assert replay.done
    return out.decode()


def test_serial_input_file_is_replayed_at_the_same_guest_times(assemble, tmp_path):
    first = _run_with_serial_input(assemble, tmp_path, b"ls -l\n")
    second = _run_with_serial_input(assemble, tmp_path, b"ls -l\n")
    assert first.startswith("[l][s][ ][-][l][\n]")
    assert first == second  # the TSC span too: every byte came at the same guest time
    ticks = int(first[-8:], 16)
    # five character times at 9600 baud 8N1 (the reset divisor): about 5.2 ms
    assert 5 * 1_000_000 < ticks / 2 < 6 * 1_000_000, ticks


# 1000 loads from the local APIC's ID register, then 1000 from the IOAPIC's
# index register, each timed with RDTSC (2 GHz): deterministic time charges
# 100 ns per LAPIC access and 500 ns per IOAPIC access, plus the blocks.
MMIO_COST = r"""
%macro TIME_LOADS 1
    rdtsc
    mov ebx, eax
    mov ecx, 1000
%%l:
    mov eax, [%1]
    dec ecx
    jnz %%l
    rdtsc
    sub eax, ebx
    call puthex
    mov al, ' '
    call putc
%endmacro
    TIME_LOADS 0xFEE00020
    TIME_LOADS 0xFEC00000
    mov al, 0
    call exit
"""


def test_mmio_accesses_cost_deterministic_time(assemble, tmp_path):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(MMIO_COST),
                                      deterministic=True)
    assert result.exit_status == 1, out
    lapic_ns, ioapic_ns = (int(x, 16) // 2 for x in out.split())
    assert 100_000 <= lapic_ns < 120_000, lapic_ns   # 1000 x (100 ns + a block or so)
    assert 500_000 <= ioapic_ns < 520_000, ioapic_ns
