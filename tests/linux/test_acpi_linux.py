"""Debian's kernel on qemu_lite's ACPI: the tables it parses, the IOAPIC and PM timer it
uses, the HPET, the power button's SCI, and ``poweroff -f`` through S5 (reason "powered-off").

The GRUB disk's ACPI boot and the MP table (``acpi=off``) are checked in
test_linux_boot.py, on the boots that file already makes.
"""

from __future__ import annotations

import re
import threading

from images import kernel, power_button_initramfs

from qemu_lite import Machine
from qemu_lite.loaders import linux

# The button driver (a module in Debian's kernel) owns the fixed-feature power button;
# the sysfs counter of that fixed event counts the SCIs the kernel dispatched for it.
INIT = r"""
busybox mkdir -p /sys /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t proc proc /proc
busybox insmod /button.ko || busybox echo "insmod button.ko failed"
busybox echo "qemu_lite init: userspace reached"
busybox echo "clocksources: $(busybox cat /sys/devices/system/clocksource/clocksource0/available_clocksource)"
busybox grep -E " (timer|acpi)$" /proc/interrupts
busybox echo "gpes: $(busybox ls /sys/firmware/acpi/interrupts | busybox grep -c '^gpe[0-9A-F][0-9A-F]$')"
busybox grep "Clock Event Device: hpet" /proc/timer_list
busybox echo "clockevent: $(busybox cat /sys/devices/system/clockevents/clockevent0/current_device)"
count() { busybox awk '{print $1}' /sys/firmware/acpi/interrupts/ff_pwr_btn; }
busybox echo "qemu_lite init: waiting for the power button"
n=0
while [ "$(count)" = 0 ] && [ $n -lt 600 ]; do busybox sleep 0.1; n=$((n + 1)); done
busybox echo "qemu_lite init: power button events $(count)"
busybox poweroff -f
"""


def test_linux_uses_acpi_and_the_power_button_and_powers_off(tmp_path):
    initrd = power_button_initramfs(tmp_path / "initrd.cpio", INIT)
    out = bytearray()
    waiting = threading.Event()

    def listen(data: bytes) -> None:
        out.extend(data)
        if b"waiting for the power button" in out:
            waiting.set()

    with Machine(memory="512M") as m:
        m.board.com1.add_output_listener(listen)
        # No LAPIC timer: the HPET's timer 0 is the tick the sleeps below wait on.
        linux.load(m, kernel(), "console=ttyS0 panic=-1 nolapic_timer", initrd)

        def press() -> None:  # from another thread, as QMP's system_powerdown does
            if waiting.wait(timeout=400):
                m.powerdown()

        threading.Thread(target=press, daemon=True).start()
        result = m.run(timeout=400)
        waiting.set()
    text = out.decode(errors="replace")
    assert "ACPI: RSDP 0x00000000000E0000 000024 (v02 QLITE )" in text, text[-3000:]
    for table in ("XSDT", "FACP", "DSDT", "FACS", "APIC", "HPET"):
        assert f"ACPI: {table} 0x00000000000E" in text, table
    assert "ACPI: Using ACPI (MADT) for SMP configuration information" in text
    assert "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23" in text
    assert "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 dfl dfl)" in text
    assert "ACPI: PM-Timer IO Port: 0x608" in text
    assert "clocksource: acpi_pm: mask: 0xffffff" in text
    # Our two clocksources are listed.  Which TSC entry is (tsc-early, the refined tsc
    # a second of real time later, none once the watchdog drops it) depends on the
    # host's speed: CI once saw a list without "tsc hpet acpi_pm" in it.
    listed = re.search(r"clocksources: ([^\r\n]*)", text)
    assert listed is not None, text[-3000:]
    assert {"hpet", "acpi_pm"} <= set(listed.group(1).split()), listed.group(0)
    # The HPET: found through its table, set up as the broadcast clock event device
    # (its timer 0 on IRQ 0 in legacy replacement mode), a clocksource candidate.
    assert "ACPI: HPET id: 0x8086a201 base: 0xfed00000" in text
    assert "hpet0: at MMIO 0xfed00000, IRQs 2, 8, 0" in text
    assert "hpet0: 3 comparators, 64-bit 100.000000 MHz counter" in text
    assert "clocksource: hpet: mask: 0xffffffff" in text
    assert "Clock Event Device: hpet" in text
    assert "clockevent: hpet" in text
    assert "ACPI: PM: (supports S0 S5)" in text
    assert "gpes: 16" in text  # the FADT's 4-byte GPE0 block: 16 general-purpose events
    assert "Could not enable" not in text, text  # every fixed event's enable bit sticks
    assert "IO-APIC   9-fasteoi   acpi" in text
    assert "IO-APIC   2-edge      timer" in text
    assert "input: Power Button as /devices/LNXSYSTM:00/LNXPWRBN:00" in text
    assert "qemu_lite init: power button events 1" in text, text[-2000:]
    assert "reboot: Power down" in text
    assert result.reason == "powered-off", result
