"""Embedding hooks for debuggers: breakpoints, single steps, guest-virtual memory.

:class:`DebugHooks` is a mixin of :class:`~qemu_lite.machine.Machine`.  Nothing
here costs anything until it is used: a breakpoint is a Unicorn code hook
limited to its own address (``begin == end``), so only the instruction at that
address calls into Python; a step adds a hook over all code for the duration of
one :meth:`step` call only.  Unicorn decides at translation time whether an
instruction calls the code hooks, so adding a hook flushes the translation
cache (a breakpoint added once costs one retranslation of the hot code).

Hooks stop the slice from the vCPU thread (``Machine.stop``, ENGINE_FACTS.md facts 14
and 20), before the instruction at the breakpoint runs.  A :meth:`run` or
:meth:`step` that starts at a breakpoint's address executes that instruction
without hitting it again, so resuming from a breakpoint makes progress.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE
from unicorn import x86_const as X

from qemu_lite.canonical import is_canonical
from qemu_lite.paging import READ, PageFault, PagingState, translate
from qemu_lite.x86 import EFER_LMA, MSR_EFER

if TYPE_CHECKING:
    from unicorn import Uc

    from qemu_lite._vcpu_hooks import VcpuHooks
    from qemu_lite.machine import Machine, RunResult
    from qemu_lite.vcpu import VCpu

__all__ = ["BreakpointCallback", "DebugHooks", "PageFault"]

# Called on the vCPU thread when the guest is about to execute the address;
# return True to end run() with reason "breakpoint", False to go on.
BreakpointCallback = Callable[["Machine", int], bool]


class DebugHooks:
    """Breakpoints, stepping and virtual-address access for :class:`Machine`."""

    _breakpoints: dict[int, tuple[Any, BreakpointCallback | None]]
    _watchpoints: dict[tuple[int, int, str], list[Any]]
    last_watch: tuple[int, str] | None = None
    if TYPE_CHECKING:  # provided by Machine
        uc: Uc
        cpu: VCpu
        hooks: VcpuHooks
        _stop_reason: RunResult | None
        mmu_mode: str

        def stop(self, reason: str = "stopped", exit_status: int | None = None,
                 message: str = "") -> None: ...
        def run(self, timeout: float | None = None) -> RunResult: ...
        def read_memory(self, address: int, size: int) -> bytes: ...
        def write_memory(self, address: int, data: bytes) -> None: ...
        def _check_range(self, address: int, size: int, *, write: bool) -> tuple[int, int]: ...
        def _do_reset(self) -> None: ...
        def _refuse_multi(self, what: str) -> None: ...
    _bp_skip: int | None = None
    _step_count = 0
    _stepping = False

    # -- breakpoints ---------------------------------------------------------------

    def add_breakpoint(self, vaddr: int, callback: BreakpointCallback | None = None
                       ) -> None:
        """Stop before the guest executes linear address ``vaddr``.

        With ``callback``, ``callback(machine, vaddr)`` decides: True ends
        :meth:`run` with reason ``"breakpoint"``, False lets the guest go on.
        Cost: none for other code; one Python call each time ``vaddr`` runs,
        plus one translation-cache flush when the breakpoint is added.
        """
        self._refuse_multi("breakpoints")
        vaddr = _linear(vaddr)
        if not hasattr(self, "_breakpoints"):
            self._breakpoints = {}
        old = self._breakpoints.pop(vaddr, None)
        if old is not None:
            self.uc.hook_del(old[0])
        handle = self.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint, None, vaddr, vaddr)
        self._breakpoints[vaddr] = (handle, callback)
        _flush_translations(self.uc)

    def remove_breakpoint(self, vaddr: int) -> None:
        """Remove the breakpoint at ``vaddr`` (KeyError if there is none)."""
        vaddr = _linear(vaddr)
        handle, _ = getattr(self, "_breakpoints", {}).pop(vaddr)
        self.uc.hook_del(handle)

    @property
    def breakpoints(self) -> list[int]:
        """Addresses of the breakpoints set."""
        return sorted(getattr(self, "_breakpoints", {}))

    def _on_breakpoint(self, uc: object, address: int, size: int, user: object) -> None:
        if address == self._bp_skip:
            self._bp_skip = None  # the instruction a run or step resumes at
            return
        if self._stepping:
            return  # a step stops at the next instruction anyway, as "step"
        entry = self._breakpoints.get(address)
        if entry is None:
            return
        callback = entry[1]
        if callback is None or callback(cast("Machine", self), address):
            self.stop("breakpoint", None, f"breakpoint at {address:#x}")

    def _arm_breakpoint_skip(self) -> None:
        """Called as a run starts: a breakpoint at the current PC does not fire first."""
        bps = getattr(self, "_breakpoints", None)
        self._bp_skip = None
        if bps:
            pc = self.cpu.linear_pc()
            if pc in bps:
                self._bp_skip = pc

    def reset_now(self) -> None:
        """Reset the machine at once, as the power-on reset does (for a stopped guest)."""
        self._do_reset()

    # -- watchpoints -------------------------------------------------------------------

    def add_watchpoint(self, vaddr: int, size: int, access: str = "write") -> None:
        """End :meth:`run` (reason ``"watchpoint"``) after the guest reads or writes
        (``access``: ``"write"``, ``"read"`` or ``"access"``) linear ``vaddr .. vaddr+size-1``.

        The range must be mapped when the watchpoint is set (PageFault
        otherwise) and is watched where it maps then.  The run stops at the next translation-block boundary after the access,
        never inside the instruction (a stop there would re-run it, ENGINE_FACTS.md fact
        14), so the PC may be a few instructions past it; ``last_watch`` tells
        ``(address, "read"|"write")``.  Cost while set: Unicorn calls memory
        hooks on every load or store of the kind watched (the range is checked
        in the hook), so guest memory accesses slow down; nothing once removed."""
        self._refuse_multi("watchpoints")
        types = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ,
                 "access": UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}
        if access not in types:
            raise ValueError(f"watchpoint access must be one of {', '.join(types)}, not {access!r}")
        vaddr = _linear(vaddr)
        if size < 1:
            raise ValueError(f"watchpoint size must be at least 1, not {size}")
        if not hasattr(self, "_watchpoints"):
            self._watchpoints = {}
        key = (vaddr, size, access)
        if key in self._watchpoints:
            return
        # Under the shadow MMU (UC_TLB_VIRTUAL) Unicorn hands memory hooks the
        # physical address, so the range is watched where it maps now.
        if self.mmu_mode == "native":
            pieces = [(vaddr, size)]
        else:
            pieces = self._virtual_pieces(vaddr, size)
        handles, linear = [], vaddr
        for start, n in pieces:
            handles.append(self.uc.hook_add(types[access], self._on_watch, linear - start,
                                            start, start + n - 1))
            linear += n
        self._watchpoints[key] = handles
        _flush_translations(self.uc)

    def remove_watchpoint(self, vaddr: int, size: int, access: str = "write") -> None:
        """Remove a watchpoint set with the same arguments (KeyError if none)."""
        for handle in getattr(self, "_watchpoints", {}).pop((_linear(vaddr), size, access)):
            self.uc.hook_del(handle)
        _flush_translations(self.uc)  # let translations drop the memory-hook calls

    def _on_watch(self, uc: object, kind: int, address: int, size: int, value: int,
                  to_linear: int) -> None:
        address += to_linear
        if self._stop_reason is None:
            what = "write" if kind == UC_MEM_WRITE else "read"
            self.last_watch = (address, what)
            self._stop_reason = _run_result("watchpoint", f"{what} of {address:#x}")
        self.hooks.poke()  # the block hook ends the slice at the next block

    # -- stepping --------------------------------------------------------------------

    def step(self, timeout: float | None = None) -> RunResult:
        """Execute one instruction and stop (reason ``"step"``).

        An instruction that raises an exception or interrupt stops at the first
        instruction of its handler, as the trap flag does; HLT with interrupts
        enabled waits for the interrupt that ends it.  Cost: a code hook over
        all code that exists only during this call (and a translation-cache
        flush)."""
        self._refuse_multi("single steps")
        self._step_count = 0
        self._stepping = True
        handle = self.uc.hook_add(UC_HOOK_CODE, self._on_step, None, 1, 0)
        _flush_translations(self.uc)
        try:
            return self.run(timeout)
        finally:
            self._stepping = False
            self.uc.hook_del(handle)

    def _on_step(self, uc: object, address: int, size: int, user: object) -> None:
        self._step_count += 1
        if self._step_count > 1:
            self.stop("step", None, f"stepped to {address:#x}")

    # -- guest-virtual memory -------------------------------------------------------

    def paging_state(self) -> PagingState:
        """The CPU's paging registers, as the reference walker takes them."""
        uc = self.uc
        return PagingState(uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR3),
                           uc.reg_read(X.UC_X86_REG_CR4), uc.msr_read(MSR_EFER),
                           uc.reg_read(X.UC_X86_REG_RFLAGS))

    def translate(self, vaddr: int) -> int:
        """Physical address of linear ``vaddr`` under the guest's current page tables.

        Walks them with the reference walker (qemu_lite/paging.py) as a
        supervisor read, without setting accessed bits; raises
        :class:`~qemu_lite.paging.PageFault` (``.error_code``: the #PF error
        code) where the guest would fault, ValueError for a non-canonical address
        in long mode."""
        vaddr = _linear(vaddr)
        st = self.paging_state()
        if st.efer & EFER_LMA and not is_canonical(vaddr):
            raise ValueError(f"{vaddr:#x} is not a canonical address")
        return translate(self.cpu.walk_memory, st, vaddr, READ, False, set_bits=False).paddr

    def _virtual_pieces(self, vaddr: int, size: int) -> list[tuple[int, int]]:
        vaddr, pieces = _linear(vaddr), []
        if size < 0:
            raise ValueError(f"negative memory size {size}")
        while size > 0:
            chunk = min(size, 4096 - (vaddr & 0xFFF))
            pieces.append((self.translate(vaddr), chunk))
            vaddr = (vaddr + chunk) & 0xFFFF_FFFF_FFFF_FFFF
            size -= chunk
        return pieces

    def read_virtual(self, vaddr: int, size: int) -> bytes:
        """Read ``size`` bytes at linear ``vaddr`` through the guest's page tables.

        Raises PageFault (with the #PF error code) before reading anything if a
        page is not mapped, ValueError if one maps to something other than RAM
        or ROM."""
        return b"".join(self.read_memory(paddr, n) for paddr, n in
                        self._virtual_pieces(vaddr, size))

    def write_virtual(self, vaddr: int, data: bytes) -> None:
        """Write ``data`` at linear ``vaddr``, as a debugger does: page
        protections are not enforced (a read-only code page can take a patch),
        but every page must be mapped (PageFault) and be RAM (ValueError)."""
        data = bytes(data)
        pieces = self._virtual_pieces(vaddr, len(data))
        for paddr, n in pieces:
            self._check_range(paddr, n, write=True)
        pos = 0
        for paddr, n in pieces:
            self.write_memory(paddr, data[pos:pos + n])
            pos += n


def _linear(vaddr: int) -> int:
    vaddr = int(vaddr)
    if not 0 <= vaddr < 1 << 64:
        raise ValueError(f"address {vaddr:#x} is outside the 64-bit linear address space")
    return vaddr


def _flush_translations(uc: Uc) -> None:
    """Drop every translation block, so code hooks added since reach translated code."""
    uc.ctl_flush_tb()  # type: ignore[attr-defined]  # in the 2.1.4 binding, not its stubs


def _run_result(reason: str, message: str) -> RunResult:
    from qemu_lite.machine import RunResult

    return RunResult(reason, None, message)
