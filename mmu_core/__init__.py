"""mmu_core: C-level Unicorn hooks for qemu_lite (TLB fill, port dispatch, shadow MMU)."""

from mmu_core._core import Core

__all__ = ["Core"]
