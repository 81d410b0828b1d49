"""qemu_lite: a small x86 PC emulator driven from Python.

>>> from qemu_lite import Machine
"""

from qemu_lite.machine import Machine, RunResult
from qemu_lite.vcpu import GuestError, TripleFault

__all__ = ["Machine", "RunResult", "GuestError", "TripleFault"]
