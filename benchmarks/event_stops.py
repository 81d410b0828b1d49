"""Slices and Python event deliveries of one run of the bundled default image.

    python benchmarks/event_stops.py            # INT n / SYSCALL in C where possible
    QEMU_LITE_EVENTS=python python benchmarks/event_stops.py   # every one through Python
    python benchmarks/event_stops.py KERNEL INITRD [APPEND]    # a Linux boot (512 MiB)

Prints the run's slices (each an emu_start), the software interrupts and SYSCALLs
that stopped a slice for Python, and those the C hooks delivered in place.
"""

from __future__ import annotations

import sys
import time

from qemu_lite.loaders import linux
from qemu_lite.machine import Machine, bundled_firmware_path


def main() -> None:
    if len(sys.argv) > 2:
        m = Machine(memory="512M", serial=None)
        append = sys.argv[3] if len(sys.argv) > 3 else "console=ttyS0"
        linux.load(m, sys.argv[1], append, sys.argv[2])
    else:
        m = Machine(disk=bundled_firmware_path("default.img"), serial=None)
    cpu = m.cpu
    counts = {"slices": 0, "int_stops": 0, "syscall_stops": 0}
    run_slice, deliver, syscall = cpu.run_slice, cpu.deliver_cpu_event, cpu.do_syscall

    def counting_slice(count: int = 0) -> object:
        counts["slices"] += 1
        return run_slice(count)

    def counting_deliver(vector: int) -> None:
        counts["int_stops"] += 1
        deliver(vector)

    def counting_syscall() -> None:
        counts["syscall_stops"] += 1
        syscall()

    cpu.run_slice = counting_slice  # type: ignore[method-assign,assignment]
    cpu.deliver_cpu_event = counting_deliver  # type: ignore[method-assign]
    cpu.do_syscall = counting_syscall  # type: ignore[method-assign]
    t0 = time.perf_counter()
    result = m.run(timeout=120)
    wall = time.perf_counter() - t0
    c_ints, c_syscalls = m.core.fast_event_counts()
    print(f"result {result.reason}; C path {'on' if m.cpu.fast_events else 'off'}; "
          f"run {wall:.3f} s")
    print(f"slices {counts['slices']}; stops for Python: INT/exception {counts['int_stops']}, "
          f"SYSCALL {counts['syscall_stops']}; in C: INT n {c_ints}, SYSCALL {c_syscalls}")
    m.close()


if __name__ == "__main__":
    main()
