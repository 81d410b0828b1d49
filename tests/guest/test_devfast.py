"""Device registers served in C (qemu_lite/devfast.py, posted VGA port writes): the
guest must not tell.

Each guest runs twice, with the C fast paths and with every access sent to the Python
device (``on_change`` unhooked, the C state cleared), and both runs must agree on what
the guest printed, the order of output across devices, the device's saved state and
the VRAM; the fast run must have served accesses in C.
"""

from __future__ import annotations

import hashlib

from guestlib import VGA_HELPERS, protected_mode_guest
from test_platform import IDT_256, PIC_INIT

from mmu_core._core import VGA_OFF
from qemu_lite import Machine
from qemu_lite.display.vgaboard import POSTED_VGA_PORTS
from qemu_lite.loaders import multiboot

SERIAL_MIX = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 0x24, com1_irq
    lidt [idtr]
""" + PIC_INIT + r"""
    PRINT "line one", 10
    mov dx, 0xE9              ; debugcon between two COM1 bytes: order must hold
    mov al, '|'
    out dx, al
    PRINT "two"
    mov dx, 0xE9
    out dx, al
    mov dx, 0x3FB             ; LCR.DLAB: offset 0 is the divisor latch, not THR
    mov al, 0x83
    out dx, al
    mov dx, 0x3F8
    mov al, 0x01
    out dx, al
    mov dx, 0x3FB
    mov al, 0x03
    out dx, al
    mov dx, 0x3F8
    mov al, '-'
    out dx, al                ; THR again
    ; THRE interrupts: every THR write re-arms THRE, IIR reads in the handler clear it.
    mov al, 0xEA              ; unmask IRQ4 and the cascade
    out 0x21, al
    mov dx, 0x3FC
    mov al, 0x08              ; MCR.OUT2
    out dx, al
    mov dx, 0x3F9
    mov al, 0x02              ; IER.ETBEI: THRE raised at once
    out dx, al
    sti
    mov ebx, 1
    call wait_thre
    mov dx, 0x3F8
    mov al, 'x'
    out dx, al
    inc ebx
    call wait_thre
    out dx, al
    inc ebx
    call wait_thre
    out dx, al
    inc ebx
    call wait_thre
    cli
    mov dx, 0x3F9
    xor al, al
    out dx, al
    PRINT " thre="
    mov eax, [thre]
    call puthex
    mov dx, 0x3FC             ; loopback: THR bytes come back in RBR, none leaves
    mov al, 0x10
    out dx, al
    mov dx, 0x3F8
    mov al, 'L'
    out dx, al
    mov dx, 0x3FD
    in al, dx
    mov [lsr_loop], al
    mov dx, 0x3F8
    in al, dx
    mov [rbr_loop], al
    mov dx, 0x3FC
    xor al, al
    out dx, al
    PRINT " lsr="
    movzx eax, byte [lsr_loop]
    call puthex
    PRINT " rbr="
    movzx eax, byte [rbr_loop]
    call puthex
    PRINT 10, "partial"       ; no newline: must still arrive when the run ends
    cli
    hlt

wait_thre:                    ; until the handler has counted EBX THRE interrupts
    cmp [thre], ebx
    jb wait_thre
    ret

com1_irq:
    push eax
    push edx
    mov dx, 0x3FA
    in al, dx                 ; IIR: clears THRE
    cmp al, 0x02
    jne .done
    inc dword [thre]
.done:
    mov al, 0x20
    out 0x20, al
    pop edx
    pop eax
    iret
thre: dd 0
lsr_loop: db 0
rbr_loop: db 0
"""


def python_only(m: Machine) -> None:
    """Send every UART and VGA window access to the Python devices."""
    m.board.com1.on_change = None
    m.core.uart_set(0, -1, False)
    if m.board.vga is not None:
        m.board.vga.on_change = None
        m.core.vga_set(VGA_OFF)
        for base, count in POSTED_VGA_PORTS:
            m.core.post_port_writes(base, count, False)


def _run_serial(kernel, fast: bool):
    log: list[tuple[str, bytes]] = []
    with Machine(memory="16M", serial="none") as m:
        if not fast:
            python_only(m)
        m.board.com1.add_output_listener(lambda data: log.append(("com1", data)))
        m.board.debugcon.output = lambda data: log.append(("e9", data))
        multiboot.load(m, kernel)
        result = m.run(timeout=20)
        state = m.board.com1.save_state()
        return result, log, state, m.core.dev_fast_accesses


def test_serial_output_and_state_are_the_same_with_the_c_path(assemble, tmp_path):
    kernel = tmp_path / "serial.bin"
    kernel.write_bytes(assemble(protected_mode_guest(SERIAL_MIX)))
    fast = _run_serial(kernel, fast=True)
    slow = _run_serial(kernel, fast=False)
    result, log, state, served = fast
    assert result.reason == "halted", result
    text = b"".join(data if dev == "com1" else b"[" + data + b"]" for dev, data in log)
    assert text == (b"line one\n[|]two[|]-xxx thre=00000004 lsr=00000061 rbr=0000004C\n"
                    b"partial")
    assert b"".join(data for _, data in slow[1]) == b"".join(data for _, data in log)
    assert [dev for dev, _ in slow[1] if dev == "e9"] == [dev for dev, _ in log if dev == "e9"]
    assert state == slow[2]
    assert served > 100 and slow[3] == 0


VGA_MODES = r"""
%macro SUM 2                  ; sum of %2 bytes from %1 -> eax
    mov esi, %1
    mov ecx, %2
    xor eax, eax
    xor ebx, ebx
%%next:
    mov bl, [esi]
    add eax, ebx
    inc esi
    loop %%next
%endmacro
    ; Pattern: 256 bytes 0..255.
    mov edi, pattern
    xor eax, eax
.fill:
    stosb
    inc al
    jnz .fill
    ; 1. Font loading as SeaVGABIOS does it: plane 2 only, sequential, write mode 0.
    SEQ 2, 0x04
    SEQ 4, 0x06
    GFX 4, 0x02
    GFX 5, 0x00
    GFX 6, 0x04               ; A0000, 64 KiB
    GFX 8, 0xFF
    mov esi, pattern
    mov edi, 0xA0000
    mov ecx, 64
    rep movsd                 ; 4-byte stores
    mov esi, pattern
    mov edi, 0xA0100
    mov ecx, 256
    rep movsb
    SUM 0xA0000, 512          ; read mode 0, read map 2: through the latches (Python)
    call puthex
    ; 2. The same with bit mask 0F: the latches take part (Python only).
    GFX 8, 0x0F
    SEQ 2, 0x0F
    mov edi, 0xA0200
    mov al, [edi]             ; load the latches
    mov byte [edi], 0xFF
    GFX 8, 0xFF
    ; 3. Odd/even: plane (read map bit 1) | (address & 1).
    SEQ 4, 0x02
    GFX 5, 0x10
    GFX 4, 0x00
    mov esi, pattern
    mov edi, 0xA1000
    mov ecx, 128
    rep movsb
    mov al, ' '
    call putc
    SUM 0xA1000, 128
    call puthex
    ; 4. Chain-4 with a map mask of planes 0 and 2.
    SEQ 4, 0x0E
    SEQ 2, 0x05
    GFX 5, 0x40
    GFX 6, 0x05
    mov esi, pattern
    mov edi, 0xA2000
    mov ecx, 256
    rep movsb
    mov al, ' '
    call putc
    SUM 0xA2000, 256
    call puthex
    ; 5. Memory map 2 (B0000, 32 KiB): A0000 decodes nothing.
    SEQ 2, 0x0F
    GFX 6, 0x09
    mov dword [0xA3000], 0x11223344
    mov dword [0xB0010], 0x55667788
    mov al, ' '
    call putc
    mov eax, [0xA3000]
    call puthex
    mov al, ' '
    call putc
    mov eax, [0xB0010]
    call puthex
    ; 6. A VBE bank.
    DISPI 1, 640
    DISPI 2, 480
    DISPI 3, 8
    DISPI 4, 0x81             ; enabled, memory kept
    DISPI 5, 3
    mov dword [0xA0040], 0xCAFEF00D
    mov dword [0xAFFFE], 0x12345678   ; the last 2 bytes fall outside the 64 KiB bank
    mov al, ' '
    call putc
    mov eax, [0xA0040]
    call puthex
    mov al, ' '
    call putc
    mov eax, [0xAFFFE]
    call puthex
    ; 7. Posted writes (DAC, CRTC) read back through the device: entry 5 = 01 02 03,
    ; entry 6 = 3F 00 2A; the CRTC cursor location (0E/0F) = 1234h, word writes too.
    mov dx, 0x3C8
    mov al, 5
    out dx, al
    inc dx
    mov al, 1
    out dx, al
    inc al
    out dx, al
    inc al
    out dx, al
    mov al, 0x3F
    out dx, al
    xor al, al
    out dx, al
    mov al, 0x2A
    out dx, al
    mov dx, 0x3C7             ; read index 5: six bytes back
    mov al, 5
    out dx, al
    mov dx, 0x3C9
    mov ecx, 6
.dac:
    in al, dx
    shl ebx, 4
    or bl, al
    loop .dac
    mov dx, 0x3C2
    mov al, 0x01              ; misc: CRTC at 0x3Dx
    out dx, al
    mov dx, 0x3D4
    mov ax, 0x120E            ; index 0E, data 12 in one word write
    out dx, ax
    mov al, 0x0F
    out dx, al
    inc dx
    mov al, 0x34
    out dx, al
    dec dx
    mov al, 0x0E
    out dx, al
    inc dx
    in al, dx
    mov ah, al
    dec dx
    mov al, 0x0F
    out dx, al
    inc dx
    in al, dx
    push eax
    mov al, ' '
    call putc
    mov eax, ebx              ; 01 02 03 3F 00 2A, four bits apart
    call puthex
    mov al, ' '
    call putc
    pop eax
    and eax, 0xFFFF
    call puthex
    mov al, 10
    call putc
    mov al, 0
    call exit
pattern: times 256 db 0
"""


def _run_vga(kernel, fast: bool):
    out = bytearray()
    with Machine(memory="16M", serial="none") as m:
        vga = m.board.vga
        if not fast:
            python_only(m)
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        result = m.run(timeout=20)
        assert result.reason == "exit" and result.exit_status == 1, result
        vram = bytes(vga.vram)
        return out.decode(), vram, vga.save_state()["latch"], m.core.dev_fast_accesses


def test_vga_window_accesses_are_the_same_with_the_c_path(assemble, tmp_path):
    kernel = tmp_path / "vga.bin"
    kernel.write_bytes(assemble(protected_mode_guest(VGA_HELPERS + VGA_MODES)))
    out, vram, latch, served = _run_vga(kernel, fast=True)
    slow_out, slow_vram, slow_latch, slow_served = _run_vga(kernel, fast=False)
    assert (out, latch) == (slow_out, slow_latch)
    assert hashlib.sha256(vram).digest() == hashlib.sha256(slow_vram).digest()
    # Plane 2 holds the font-style copy: byte 4a + 2 is pattern[a % 256] (from a = 8:
    # the chain-4 store at B0010 later wrote VRAM bytes 0x10-0x13).
    assert vram[4 * 8 + 2:4 * 512:4] == (bytes(range(256)) * 2)[8:]
    assert vram[0x200 * 4:0x200 * 4 + 4] == b"\x0f" * 4  # FF under bit mask 0F, latches 00
    assert out.split()[3:] == ["FFFFFFFF", "55667788", "CAFEF00D", "FFFF5678", "00123F2A",
                               "00001234"], out
    assert vram[0x30040:0x30044] == bytes.fromhex("0df0feca")
    assert served > 500 and slow_served == 0


FW_CFG_HALF = r"""
    mov dx, 0x510
    xor ax, ax                ; the signature item, "QEMU"
    out dx, ax
    inc dx
    in al, dx
    call putc
    in al, dx
    call putc
    mov al, 0
    call exit
"""


def test_fw_cfg_reads_streamed_in_c_keep_the_device_offset(assemble, tmp_path):
    kernel = tmp_path / "fwcfg.bin"
    kernel.write_bytes(assemble(protected_mode_guest(FW_CFG_HALF)))
    with Machine(memory="16M", serial="none") as m:
        out = bytearray()
        m.board.com1.add_output_listener(out.extend)
        multiboot.load(m, kernel)
        before = m.core.pio_fast_accesses
        assert m.run(timeout=20).exit_status == 1
        assert out == b"QE" and m.core.pio_fast_accesses - before == 2
        slot = next(s for s in m.board.slots if s.name == "fw_cfg")
        assert slot.device.save_state()["offset"] == 2  # the slot syncs the C position
        assert m.board.fw_cfg.selected_item()[m.board.fw_cfg.offset:] == b"MU"
