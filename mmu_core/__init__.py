"""mmu_core: C-level Unicorn hooks for qemu_lite (TLB fill, port dispatch, shadow MMU)."""

# First: chooses the libunicorn that the ``unicorn`` binding will load.
import qemu_lite.engine  # noqa: F401, I001
from mmu_core._core import Core

__all__ = ["Core"]
