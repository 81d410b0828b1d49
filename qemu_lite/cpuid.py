"""What CPUID tells the guest: Unicorn's CPU model, shaped to what the machine implements.

The table is read once per process from a scratch engine running the CPUID
instruction natively; the hook then answers every guest CPUID from it with
these changes: no x2APIC, the TSC-deadline timer only once the platform answers
IA32_TSC_DEADLINE (:meth:`CpuidModel.offer_tsc_deadline`, on engine patch f's MSR
hooks; ENGINE_FACTS.md fact 11), no MONITOR/MWAIT, leaf 0xD listing only the XSAVE
components whose features are offered (x87 and SSE: the model has no AVX),
OSXSAVE mirroring CR4.OSXSAVE at each CPUID, an invariant TSC whose rate
leaf 0x16 advertises (``tsc_mhz``: ours runs at a fixed rate from guest time,
qemu_lite/_tsc.pxi; Linux takes it from there rather than calibrating
against the PIT, which host jitter can spoil), TSC_ADJUST, and, when asked,
no RDRAND (``hide_rdrand``): Unicorn answers RDRAND from the host's random source and
cannot hook it, so deterministic runs tell the guest it is absent.

Not offered, because the engine cannot do them: SMAP (the Haswell model drops
CR4.SMAP on write and makes STAC/CLAC #UD, although the shadow MMU's walker
implements SMAP checks) and LA57 (no 5-level paging anywhere).
"""

from __future__ import annotations

import functools

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

# leaf 1
ECX_MONITOR = 1 << 3
ECX_X2APIC = 1 << 21
TOPOLOGY_LEAF = 0xB
ECX_TSC_DEADLINE = 1 << 24
ECX_XSAVE = 1 << 26
ECX_OSXSAVE = 1 << 27
ECX_AVX = 1 << 28
CR4_OSXSAVE = 1 << 18
# XSAVE state components: x87 and SSE live in the 512-byte legacy area, which
# with the 64-byte XSAVE header is the whole image when nothing else is on.
XSTATE_X87_SSE = 0x3
XSAVE_LEGACY_AND_HEADER = 512 + 64
ECX_RDRAND = 1 << 30
EDX_TSC = 1 << 4
# leaf 7 sub-leaf 0
EBX_TSC_ADJUST = 1 << 1
EBX_RDSEED = 1 << 18
# leaf 0x80000007
EDX_INVARIANT_TSC = 1 << 8

FREQ_LEAF = 0x16

SUBLEAF_LEAVES = {4: 8, 7: 2, 0xB: 3, 0xD: 4}  # leaves with sub-leaves, and how many we read

Regs = tuple[int, int, int, int]


def _native(uc: Uc, leaf: int, subleaf: int) -> Regs:
    uc.reg_write(X.UC_X86_REG_RAX, leaf)
    uc.reg_write(X.UC_X86_REG_RCX, subleaf)
    uc.emu_start(0x1000, 0x1002)
    return tuple(int(uc.reg_read(r)) for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX,
                                               X.UC_X86_REG_ECX, X.UC_X86_REG_EDX))  # type: ignore[return-value]


@functools.cache
def native_table() -> dict[tuple[int, int], Regs]:
    """CPUID of Unicorn's default x86-64 CPU model, leaf by leaf."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\xa2")
    table: dict[tuple[int, int], Regs] = {}
    for base in (0, 0x80000000):
        top = _native(uc, base, 0)[0]
        for leaf in range(base, min(top, base + 0x40) + 1):
            for sub in range(SUBLEAF_LEAVES.get(leaf, 1)):
                table[(leaf, sub)] = _native(uc, leaf, sub)
    return table


class CpuidModel:
    """Answers CPUID from the shaped table; unknown leaves read as zeros."""

    def __init__(self, tsc_mhz: int | None = None, hide_rdrand: bool = False) -> None:
        table = dict(native_table())
        if tsc_mhz is not None:
            # leaf 0x16: base and maximum frequency (MHz), bus frequency 100 MHz;
            # the leaves between the model's last one and 0x16 read as zeros
            table[(FREQ_LEAF, 0)] = (tsc_mhz, tsc_mhz, 100, 0)
            ea, eb, ec, ed = table[(0, 0)]
            table[(0, 0)] = (max(ea, FREQ_LEAF), eb, ec, ed)
        a, b, c, d = table[(1, 0)]
        c &= ~(ECX_MONITOR | ECX_X2APIC | ECX_TSC_DEADLINE)
        ea, eb, ec, ed = table[(7, 0)]
        # IA32_TSC_ADJUST reads 0 (on patch f, writes to it and IA32_TSC move the
        # TSC: qemu_lite/msr.py; on the stock engine they are dropped); with the
        # invariant-TSC bit Linux then
        # trusts it rather than checking it against jiffies, which lag when
        # a loaded host delivers timer interrupts late (real time).
        eb |= EBX_TSC_ADJUST
        if hide_rdrand:
            c &= ~ECX_RDRAND
            eb &= ~EBX_RDSEED
        table[(7, 0)] = (ea, eb, ec, ed)
        table[(1, 0)] = (a, b, c, d)
        _xsave_components_advertised(table)
        if (0x80000007, 0) in table:
            ea, eb, ec, ed = table[(0x80000007, 0)]
            table[(0x80000007, 0)] = (ea, eb, ec, ed | EDX_INVARIANT_TSC)
        self.table = table
        self.apic_id = 0  # the running CPU's initial APIC ID (qemu_lite/smp.py switches it)
        self.max_basic = table[(0, 0)][0]
        self.max_extended = table[(0x80000000, 0)][0]

    def offer_tsc_deadline(self) -> None:
        """CPUID.1:ECX.TSC_DEADLINE: the machine implements IA32_TSC_DEADLINE."""
        a, b, c, d = self.table[(1, 0)]
        self.table[(1, 0)] = (a, b, c | ECX_TSC_DEADLINE, d)

    def physical_address_bits(self) -> int:
        """MAXPHYADDR as CPUID.80000008H:EAX[7:0] reports it (36 without the leaf)."""
        if self.max_extended < 0x80000008:
            return 36
        return self.table[(0x80000008, 0)][0] & 0xFF

    def lookup(self, leaf: int, subleaf: int) -> Regs:
        leaf &= 0xFFFFFFFF
        if (leaf < 0x80000000 and leaf > self.max_basic) or leaf > self.max_extended:
            return (0, 0, 0, 0)
        sub = subleaf & 0xFFFFFFFF if leaf in SUBLEAF_LEAVES else 0
        return self.table.get((leaf, sub), (0, 0, 0, 0))

    def hook(self, uc: Uc) -> bool:
        """The CPUID instruction hook: write EAX-EDX, skip the native instruction."""
        leaf = uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFFFFFF
        regs = self.lookup(leaf, uc.reg_read(X.UC_X86_REG_ECX))
        if leaf == 1:
            # OSXSAVE reports CR4.OSXSAVE, not a fixed capability (SDM vol. 2, CPUID).
            a, b, c, d = regs
            c &= ~ECX_OSXSAVE
            if uc.reg_read(X.UC_X86_REG_CR4) & CR4_OSXSAVE:
                c |= ECX_OSXSAVE
            regs = (a, (b & 0x00FFFFFF) | self.apic_id << 24, c, d)
        elif leaf == TOPOLOGY_LEAF and regs[1]:  # a model that has the leaf (EBX != 0)
            a, b, c, _d = regs
            regs = (a, b, c, self.apic_id)  # EDX: the x2APIC ID
        for reg, value in zip((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX,
                               X.UC_X86_REG_RDX), regs, strict=True):
            uc.reg_write(reg, value)
        return True


def _xsave_components_advertised(table: dict[tuple[int, int], Regs]) -> None:
    """Leaf 0xD offers only the state components whose features leaf 1 offers.

    The engine's model lists the AVX (YMM) component while leaf 1 has no AVX
    and AVX instructions are #UD; a guest sizing its XSAVE area from leaf 0xD
    must see the same machine as one reading the feature bits."""
    c = table[(1, 0)][2]
    if not c & ECX_XSAVE or (0xD, 0) not in table:
        return
    if c & ECX_AVX:
        return  # a model with AVX: its leaf 0xD already agrees
    a, _b, _c, _d = table[(0xD, 0)]
    table[(0xD, 0)] = (a & XSTATE_X87_SSE, XSAVE_LEGACY_AND_HEADER, XSAVE_LEGACY_AND_HEADER, 0)
    for sub in range(2, SUBLEAF_LEAVES[0xD]):
        table[(0xD, sub)] = (0, 0, 0, 0)
