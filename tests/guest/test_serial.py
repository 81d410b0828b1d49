"""The 16550 seen from guest code: loopback, FIFO, and host input reaching the guest."""

from __future__ import annotations

import os
import threading

from guestlib import protected_mode_guest, run_multiboot_guest
from test_platform import IDT_256, PIC_INIT

from qemu_lite import Machine
from qemu_lite.loaders import multiboot

LOOPBACK_AND_FIFO = r"""
    mov dx, 0x3FA
    mov al, 0x07              ; FCR: enable and reset both FIFOs
    out dx, al
    mov dx, 0x3FC
    mov al, 0x10              ; MCR: loopback
    out dx, al
    mov esi, pattern          ; 16 bytes through THR come back in RBR, in order
    mov ecx, 16
    mov dx, 0x3F8
.send:
    lodsb
    out dx, al
    loop .send
    mov dx, 0x3FD
    in al, dx
    mov [lsr_full], al
    mov ecx, 16
    mov edi, received
.recv:
    mov dx, 0x3F8
    in al, dx
    stosb
    loop .recv
    mov dx, 0x3FD
    in al, dx
    mov [lsr_empty], al
    mov dx, 0x3FC
    xor al, al                ; loopback off
    out dx, al
    mov esi, received
    mov ecx, 16
    mov edi, pattern
    repe cmpsb
    jne .bad
    PRINT "loopback fifo ok, lsr="
    movzx eax, byte [lsr_full]
    call puthex
    PRINT "/"
    movzx eax, byte [lsr_empty]
    call puthex
    mov al, 10
    call putc
    mov al, 0
    call exit
.bad:
    mov al, 0x45
    call exit
pattern: db "0123456789abcdef"
received: times 16 db 0
lsr_full: db 0
lsr_empty: db 0
"""


def test_loopback_sends_sixteen_bytes_through_the_fifo(assemble, tmp_path):
    result, out = run_multiboot_guest(assemble, tmp_path, protected_mode_guest(LOOPBACK_AND_FIFO))
    # LSR: DR set with data waiting, clear after; THRE and TEMT set throughout.
    assert out == "loopback fifo ok, lsr=00000061/00000060\n"
    assert result.exit_status == 1


ECHO = IDT_256 + r"""
    LOAD_GDT
    SET_GATE 0x24, com1_irq
    lidt [idtr]
""" + PIC_INIT + r"""
    mov al, 0xEA              ; unmask IRQ4 (COM1) and the cascade
    out 0x21, al
    mov dx, 0x3FC
    mov al, 0x08              ; MCR.OUT2: the UART drives IRQ4
    out dx, al
    mov dx, 0x3F9
    mov al, 0x01              ; IER: received data available
    out dx, al
    PRINT "type:"
    sti
.idle:
    hlt                       ; sleep until the host types something
    cmp dword [count], 5
    jb .idle
    cli
    mov al, 0
    call exit

com1_irq:
    push eax
    push edx
.more:
    mov dx, 0x3FD
    in al, dx
    test al, 1
    jz .done
    mov dx, 0x3F8
    in al, dx
    xor al, 0x20              ; echo with the case flipped
    call putc
    inc dword [count]
    jmp .more
.done:
    mov al, 0x20
    out 0x20, al
    pop edx
    pop eax
    iret
count: dd 0
"""


def test_host_input_from_a_pty_wakes_the_guest_and_reaches_it(assemble, tmp_path, capfd):
    kernel = tmp_path / "echo.bin"
    kernel.write_bytes(assemble(protected_mode_guest(ECHO)))
    with Machine(memory="16M", serial="pty") as m:
        out = bytearray()
        m.board.com1.add_output_listener(out.extend)
        pts = capfd.readouterr().err.split("redirected to ")[1].split()[0]
        fd = os.open(pts, os.O_RDWR | os.O_NOCTTY)
        typist = threading.Timer(0.3, os.write, (fd, b"hello"))
        try:
            multiboot.load(m, kernel)
            typist.start()
            result = m.run(timeout=20)
        finally:
            typist.join()
            os.close(fd)
    assert out == b"type:HELLO"
    assert result.exit_status == 1
