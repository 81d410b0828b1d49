"""qemu_lite: a small x86 PC emulator driven from Python.

>>> from qemu_lite import Machine

The names below load on first use, so ``qemu_lite.devices`` can be imported
(and tested) without Unicorn or the compiled extension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# First: chooses the libunicorn that the ``unicorn`` binding will load.
from qemu_lite import engine as _engine  # noqa: F401

if TYPE_CHECKING:
    from qemu_lite.machine import Machine, RunResult
    from qemu_lite.vcpu import GuestError, TripleFault

__all__ = ["DEFAULT_IMAGE", "Machine", "RunResult", "GuestError", "TripleFault"]


def __getattr__(name: str) -> Any:
    if name in ("Machine", "RunResult"):
        from qemu_lite import machine

        return getattr(machine, name)
    if name in ("GuestError", "TripleFault"):
        from qemu_lite import vcpu

        return getattr(vcpu, name)
    if name == "DEFAULT_IMAGE":
        # The bundled default disk image (boot it with snapshot=True: it is package data).
        from qemu_lite.machine import bundled_firmware_path

        return bundled_firmware_path("default.img")
    raise AttributeError(f"module 'qemu_lite' has no attribute {name!r}")
