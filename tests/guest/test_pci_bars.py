"""PCI BARs are rows of the board table that the machine claims wherever the guest
programs them: the PIIX IDE's bus-master ports, the e1000's registers (memory BAR0,
I/O BAR1) and the VGA's framebuffer (BAR0, VRAM mapped as RAM) answer at the base the
guest wrote, the old base goes quiet, clearing the command register's decode bits
silences them; a saved state or a snapshot brings the claims back."""

from __future__ import annotations

import pytest
from guestlib import protected_mode_guest

from qemu_lite import Machine
from qemu_lite.devices.netbackends import Nic, parse_netdev
from qemu_lite.devices.slirp import SlirpMissing
from qemu_lite.loaders import multiboot

GO = 0x7000  # the host writes 1 here once it has saved the state

MACROS = r"""
%macro CONFIG 2                     ; write dword %2 to config address %1
    mov dx, 0xCF8
    mov eax, %1
    out dx, eax
    mov dx, 0xCFC
    mov eax, %2
    out dx, eax
%endmacro
%macro SHOW_PORT 1                  ; print the dword at port %1
    mov dx, %1
    in eax, dx
    call puthex
    mov al, ' '
    call putc
%endmacro
%macro SHOW_MEM 1                   ; print the dword at address %1
    mov eax, [%1]
    call puthex
    mov al, ' '
    call putc
%endmacro
"""

BODY = MACROS + rf"""
    SHOW_PORT 0xC004                ; BAR4 powers on unassigned: nothing there
    CONFIG 0x80000920, 0xC001       ; 00:01.1 BAR4 := 0xC000
    CONFIG 0x80000904, 0x5          ; I/O space, bus master
    mov dx, 0xC004                  ; BMIDTP, the PRD table pointer
    mov eax, 0x12340
    out dx, eax
    SHOW_PORT 0xC004
    CONFIG 0x80000920, 0xD001       ; move it to 0xD000
    SHOW_PORT 0xC004
    SHOW_PORT 0xD004
%ifdef NIC
    CONFIG 0x80001810, 0xFEB00000   ; 00:03.0 BAR0 (registers) := 0xFEB00000
    CONFIG 0x80001814, 0xC0C1       ; BAR1 (IOADDR/IODATA) := 0xC0C0
    jmp .moved                      ; a memory BAR moves at the next block
.moved:
    mov dword [0xFEB00000 + 0x3800], 0xABCD0  ; TDBAL, the transmit ring's base
    SHOW_MEM 0xFEB00000 + 0x3800
    SHOW_MEM 0xFEBC0000 + 0x3800      ; the old base: quiet
    mov dx, 0xC0C0
    mov eax, 0x3800
    out dx, eax
    SHOW_PORT 0xC0C4                ; TDBAL through the moved I/O window
    SHOW_PORT 0xC084                ; the old I/O window: quiet
%endif
    PRINT "| "
.wait:
    cmp dword [{GO:#x}], 0
    je .wait
    SHOW_PORT 0xD004
    SHOW_PORT 0xC004
%ifdef NIC
    SHOW_MEM 0xFEB00000 + 0x3800
    SHOW_PORT 0xC0C4
    CONFIG 0x80001804, 0            ; no memory or I/O decode
    SHOW_MEM 0xFEB00000 + 0x3800
    SHOW_PORT 0xC0C4
%endif
    CONFIG 0x80000904, 0            ; the IDE function: no I/O decode
    SHOW_PORT 0xD004
    mov al, 0
    call exit
"""

QUIET = "FFFFFFFF"
BMDMA = f"{QUIET} 00012340 {QUIET} 00012340 "
NIC = f"000ABCD0 {QUIET} 000ABCD0 {QUIET} "


def _machine(out: bytearray, nic: bool) -> Machine:
    nics = []
    if nic:
        try:
            nics = [Nic(parse_netdev("user,id=n0"))]
            m = Machine(memory="32M", deterministic=True, vga="none", nics=nics)
        except SlirpMissing as exc:
            pytest.skip(str(exc))
    else:
        m = Machine(memory="32M", deterministic=True, vga="none")
    m.board.com1.add_output_listener(out.extend)
    return m


def _run_to(m: Machine, out: bytearray, marker: bytes) -> None:
    for _ in range(1000):
        if marker in out:
            return
        assert m.run(timeout=60, guest_ns=m.clock.now() + 1_000_000).reason == "guest-time"
    raise AssertionError(f"the guest never got to {marker!r}: {out!r}")


def _go(m: Machine, out: bytearray) -> str:
    out.clear()
    m.write_memory(GO, (1).to_bytes(4, "little"))
    result = m.run(timeout=60)
    assert result.reason == "exit" and result.exit_status == 1, (result, out)
    return out.decode()


@pytest.mark.parametrize("nic", [False, True], ids=["ide", "ide+e1000"])
def test_bars_follow_the_guest_and_a_saved_state(assemble, tmp_path, nic):
    source = ("%define NIC\n" if nic else "") + protected_mode_guest(BODY)
    kernel = tmp_path / "bars.bin"
    kernel.write_bytes(assemble(source))
    state = tmp_path / "bars.qlstate"
    out = bytearray()
    with _machine(out, nic) as m:
        multiboot.load(m, kernel)
        _run_to(m, out, b"| ")
        assert out.decode() == BMDMA + (NIC if nic else "") + "| "
        claimed = m.pci_bars.claimed()
        assert ("io", 0xD000, 16) in claimed and ("io", 0xC000, 16) not in claimed
        if nic:
            assert ("mmio", 0xFEB00000, 128 << 10) in claimed
            assert ("io", 0xC0C0, 8) in claimed and ("io", 0xC080, 8) not in claimed
        m.save_state(state)
        here = _go(m, out)

    after = "00012340 " + QUIET + " "
    if nic:
        after += "000ABCD0 000ABCD0 " + QUIET + " " + QUIET + " "
    after += QUIET + " "
    assert here == after

    # A fresh machine claims its BARs at their power-on bases (BAR4 unassigned); the
    # state moves them where the guest had them.
    with _machine(out, nic) as m:
        m.restore_state(state)
        assert _go(m, out) == after
        assert ("io", 0xD000, 16) not in m.pci_bars.claimed()  # decode now off


VGA_BODY = MACROS + r"""
    SHOW_MEM 0xFD001000             ; VRAM through BAR0 at its power-on base
    mov dword [0xFD001000], 0x11223344
    CONFIG 0x80001010, 0xE0000008   ; 00:02.0 BAR0 := 0xE0000000
    jmp .moved                      ; a RAM BAR moves at the next block
.moved:
    SHOW_MEM 0xE0001000             ; the same VRAM at the new base
    SHOW_MEM 0xFD001000             ; the old base: unassigned
    CONFIG 0x80001004, 0            ; no decode
    jmp .off
.off:
    SHOW_MEM 0xE0001000
    mov al, 0
    call exit
"""


def test_the_vga_framebuffer_is_a_ram_bar_of_the_board(assemble, tmp_path):
    kernel = tmp_path / "vga-bar.bin"
    kernel.write_bytes(assemble(protected_mode_guest(VGA_BODY)))
    out = bytearray()
    with Machine(memory="32M", deterministic=True) as m:
        m.board.com1.add_output_listener(out.extend)
        assert [bar.space for bar in m.board.slot("vga").bars] == ["ram"]
        lfb = ("ram", 0xFD000000, 16 << 20)
        assert lfb in m.pci_bars.claimed()
        multiboot.load(m, kernel)
        token = m.snapshot()
        result = m.run(timeout=60)
        assert (result.reason, result.exit_status) == ("exit", 1), (result, out)
        assert out.decode() == f"00000000 11223344 {QUIET} {QUIET} "
        assert m.board.vga.vram[0x1000:0x1004] == bytes.fromhex("44332211")
        assert not [c for c in m.pci_bars.claimed() if c[0] == "ram"]
        m.restore(token)  # the BAR back at its base, the store through it undone
        assert lfb in m.pci_bars.claimed()
        assert m.board.vga.vram[0x1000:0x1004] == bytes(4)
