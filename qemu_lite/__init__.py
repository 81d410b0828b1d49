"""qemu_lite: a small x86 PC emulator driven from Python.

>>> from qemu_lite import Machine
"""

from qemu_lite.machine import Machine, RunResult, bundled_firmware_path
from qemu_lite.vcpu import GuestError, TripleFault

#: The bundled default disk image (boot it with ``snapshot=True``: it is package data).
DEFAULT_IMAGE = bundled_firmware_path("default.img")

__all__ = ["DEFAULT_IMAGE", "Machine", "RunResult", "GuestError", "TripleFault"]
