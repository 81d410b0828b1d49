"""Regressions for what device fuzzing found, each as the guest's register accesses."""

from __future__ import annotations

import base64

import pytest

from qemu_lite.devfuzz.harness import Finding, Op, encode, execute
from qemu_lite.devfuzz.targets import E1000Target, I8042Target, IdeTarget, VgaTarget
from qemu_lite.devices.e1000 import TCTL, TCTL_EN, TDBAL, TDLEN, TDT, TXD_CMD_EOP, TXD_CMD_IFCS
from qemu_lite.devices.i8042 import REPLY_QUEUE_LIMIT

I8042_DATA, I8042_COMMAND = 0, 1  # I8042Target's windows


@pytest.mark.parametrize("window, value", [
    (I8042_COMMAND, 0x20),  # controller: read the command byte
    (I8042_DATA, 0xEE),  # keyboard: echo
    (I8042_DATA, 0xF2),  # keyboard: identify (three bytes a command)
])
def test_i8042_replies_stay_bounded_for_a_guest_that_never_reads(window: int,
                                                                value: int) -> None:
    """Found by the footprint check: every command queued its reply without bound."""
    target = I8042Target()
    for _ in range(5000):
        target.windows[window].device.io_write(0, 1, value)
    kbc = target.kbc
    assert len(kbc.replies) <= REPLY_QUEUE_LIMIT
    assert len(kbc.keyboard.replies) <= REPLY_QUEUE_LIMIT
    # what the guest reads back is still a sensible answer, then the queue runs dry
    read = [kbc.data_port.io_read(0, 1) for _ in range(3 * REPLY_QUEUE_LIMIT)]
    assert read[0] in (0x00 | kbc.mode, 0xEE, 0xFA)
    assert not kbc.replies and not kbc.keyboard.has_output()
    execute(I8042Target, encode(target, [Op("write", window, 0, 1, value)] + [Op("burst")] * 8))


def test_ide_pio_out_buffer_holds_nothing_stale_past_a_restore() -> None:
    """Found by the round trip (atheris, 2026-12-03): bytes left in the PIO buffer past
    pio_end are not saved, and a new PIO-out transfer (WRITE SECTORS, an ATAPI packet)
    took them over until the guest wrote each byte, so a restored device differed."""
    reproducer = base64.b64decode("AdfX19cxCgAACQkjI50JCQSQkJCQkJAB19fX1zD2/wAJCSMjTxJmCQkJ"
                                  "kJCQkJCQkJAA")
    execute(IdeTarget, reproducer)
    ide = IdeTarget().ide0
    ide.pio_buffer[:8] = b"stale!!!"
    ide.command_block.io_write(2, 1, 1)          # one sector
    ide.command_block.io_write(6, 1, 0xE0)       # LBA, master
    ide.command_block.io_write(7, 1, 0x30)       # WRITE SECTORS
    ide.command_block.io_write(0, 2, 0x4241)     # the guest's first word
    assert bytes(ide.pio_buffer[:8]) == b"AB" + bytes(6)


def test_vbe_index_port_byte_read_is_one_byte() -> None:
    """Found by the read-width check: a byte read of 0x1CE returned the 16-bit index."""
    target = VgaTarget()
    dispi = target.vga.dispi_ports
    dispi.io_write(0, 2, 0x1234)
    assert dispi.io_read(0, 1) == 0x34
    assert dispi.io_read(0, 2) == 0x1234


def test_e1000_io_window_address_survives_save_and_load() -> None:
    """Found by the round trip: IOADDR was not in the saved state, so IODATA reached
    register 0 (CTRL) after a restore instead of the one the guest had selected."""
    target = E1000Target()
    io = 1  # E1000Target's I/O BAR window
    ops = [Op("write", io, 0, 4, 0x0008), Op("read", io, 4, 4)]  # IOADDR = STATUS
    execute(E1000Target, encode(target, ops))


def _store(target: E1000Target, paddr: int, data: bytes) -> None:
    target.memory.ram[paddr:paddr + len(data)] = data


def _descriptor(addr: int, length: int, cmd: int) -> bytes:
    return (addr.to_bytes(8, "little") + length.to_bytes(2, "little") + bytes(1)
            + bytes([cmd]) + bytes(4))


def test_e1000_restore_in_mid_transmit_sends_the_same_frame() -> None:
    """Found by the round trip: a transmit spread over descriptors (the first without EOP)
    lost its first part in a restore taken between them."""
    a = E1000Target()
    _store(a, 0x2000, bytes(range(60)))
    _store(a, 0x2100, bytes(range(100, 140)))
    _store(a, 0x1000, _descriptor(0x2000, 60, TXD_CMD_IFCS)
           + _descriptor(0x2100, 40, TXD_CMD_EOP | TXD_CMD_IFCS))
    nic = a.nic
    for reg, value in ((TDBAL, 0x1000), (TDLEN, 128), (TCTL, TCTL_EN), (TDT, 1)):
        nic.io_write(reg, 4, value)
    a.clock.advance(1000)
    assert len(nic.tx_packet) == 60 and a.net.sent == 0

    b = E1000Target()
    b.sync_time(a)
    b.memory.ram[:] = a.memory.ram
    b.nic.load_state(nic.save_state())
    for t in (a, b):
        t.nic.io_write(TDT, 4, 2)
        t.clock.advance(1000)
    assert a.net.sent == b.net.sent == 1
    assert b.net.last_sent == a.net.last_sent == bytes(range(60)) + bytes(range(100, 140))


def test_round_trip_check_would_have_caught_the_e1000_bug() -> None:
    """The harness's probe sees a restore that loses IOADDR (the bug, re-created)."""

    class Forgetful(E1000Target):
        def build(self) -> None:
            super().build()
            nic = self.nic
            save = nic.save_state

            def save_without_ioaddr() -> dict:
                state = save()
                state["e1000"]["ioaddr"] = 0
                return state

            nic.save_state = save_without_ioaddr  # type: ignore[method-assign]

    ops = [Op("write", 1, 0, 4, 0x0008), Op("read", 1, 4, 4)]
    with pytest.raises(Finding, match="restored device differs"):
        execute(Forgetful, encode(Forgetful(), ops))


def test_clock_heap_stays_bounded_when_a_guest_rearms_a_timer() -> None:
    """Found by the footprint check on the PIT and the UART: every re-arm left its old
    entry in the clock's heap until that deadline came, so a guest reloading a counter in
    a loop (or the LAPIC's initial count, hours away) grew host memory without bound."""
    from qemu_lite.devfuzz.targets import LapicTarget, PitTarget

    pit = PitTarget()
    pit.pit.ports.io_write(3, 1, 0x34)  # counter 0, lobyte/hibyte, mode 2
    for i in range(20000):
        pit.pit.ports.io_write(0, 1, 0xFF)
        pit.pit.ports.io_write(0, 1, i & 0xFF)
    assert len(pit.clock._heap) <= 4 * pit.clock.SWEEP_MIN

    apic = LapicTarget()
    lapic = apic.lapic
    lapic.io_write(0xF0, 4, 0x1FF)  # software enable
    lapic.io_write(0x3E0, 4, 0xB)  # divide by 1
    lapic.io_write(0x320, 4, 0x20030)  # periodic, vector 0x30
    for i in range(20000):
        lapic.io_write(0x380, 4, 0xFFFFFFFF - i)  # TMICT: a deadline far away each time
    assert len(apic.clock._heap) <= 4 * apic.clock.SWEEP_MIN
    apic.clock.advance(10)
    assert lapic.io_read(0x390, 4) > 0  # TMCCT: the last count armed is still counting


def test_clock_fires_the_same_timers_in_order_across_sweeps() -> None:
    """Sweeps happen inside run_due too (a callback re-arms): no timer is lost, none
    fires twice, and they fire in deadline order."""
    from qemu_lite.devices.base import Clock

    clock = Clock()
    fired: list[tuple[int, int]] = []
    timers: list = []

    def fire(i: int) -> None:
        fired.append((i, clock.now()))
        if i == 0:  # re-arm every other timer from inside a callback: sweeps mid-run_due
            for _ in range(10):
                for t in timers[1:]:
                    if t.armed:
                        t.arm(t.deadline + 1)

    timers.extend(clock.timer(lambda i=i: fire(i)) for i in range(10))
    for round_ in range(100):  # 1000 arms: several sweeps
        for i, t in enumerate(timers):
            t.arm(1000 * (i + 1) + round_)
    timers[3].cancel()
    clock.advance(20_000)
    assert [i for i, _ in fired] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [t for _, t in fired] == sorted(t for _, t in fired)
    assert [t for i, t in fired if i == 5] == [6000 + 99 + 10]
    assert clock.next_deadline() is None and clock._heap == [] and clock._stale == 0


def test_e1000_reset_clears_the_io_window_address() -> None:
    """Found by the reset check (a reset target against a fresh one): a reset kept the
    guest's IOADDR, so IODATA after a machine reset reached the register selected before."""
    target = E1000Target()
    target.nic.io_ports.io_write(0, 4, 0x0008)  # IOADDR = STATUS
    target.nic.reset()
    assert target.nic.io_ports.io_read(0, 4) == 0
