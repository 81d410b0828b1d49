"""Non-canonical addresses in 64-bit mode: is the faulting reference through SS?

A 64-bit linear address is canonical when bits 63:47 are all equal (48-bit
linear addresses).  A reference to a non-canonical address raises #GP(0), or
#SS(0) when it is made through SS (SDM vol. 1 3.3.7.1, vol. 3 6.15): implicit
stack operations (PUSH, POP, CALL, RET, ENTER, LEAVE, ...) and explicit
operands whose base register is RSP or RBP without an FS/GS override.

Neither the TLB fill nor Unicorn's own MMU says which segment an access used,
so the vCPU decodes the faulting instruction far enough to find its
references.  Only what that needs is decoded; an instruction not understood
(EVEX, unknown maps) is taken as a non-stack reference, giving #GP(0).
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1

# One-byte opcodes followed by a ModRM byte (64-bit mode).
_MODRM_1 = frozenset(
    [b + i for b in range(0x00, 0x40, 8) for i in range(4)]
    + [0x63, 0x69, 0x6B] + list(range(0x80, 0x90))
    + [0xC0, 0xC1, 0xC6, 0xC7, 0xD0, 0xD1, 0xD2, 0xD3] + list(range(0xD8, 0xE0))
    + [0xF6, 0xF7, 0xFE, 0xFF])
# 0F xx opcodes without one (system instructions, Jcc rel32, BSWAP, ...).
_NO_MODRM_0F = frozenset(
    [0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA]
    + list(range(0x30, 0x38)) + list(range(0x80, 0x90)) + list(range(0xC8, 0xD0)))
# ModRM forms that compute an address without accessing it: LEA, NOP r/m, prefetches.
_NO_ACCESS_1 = frozenset([0x8D])
_NO_ACCESS_0F = frozenset([0x0D, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F])
_PREFIXES = frozenset([0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65])

RSP, RBP = 4, 5


def is_canonical(address: int) -> bool:
    top = (address & MASK64) >> 47
    return top == 0 or top == 0x1FFFF


def _range_canonical(start: int, length: int) -> bool:
    return is_canonical(start) and is_canonical(start + length - 1)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def stack_references(code: bytes, gpr: list[int]) -> list[tuple[int, int]]:
    """``(address, length)`` of the SS references of the 64-bit instruction ``code``.

    ``gpr`` holds RAX..R15 in encoding order.  Explicit operands count one byte
    (their size does not matter unless they straddle the canonical boundary)."""
    i = 0
    opsize16 = addr32 = fs_gs = False
    while code[i] in _PREFIXES:
        opsize16 |= code[i] == 0x66
        addr32 |= code[i] == 0x67
        fs_gs |= code[i] in (0x64, 0x65)
        i += 1
    rex = 0
    if 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    rsp, rbp = gpr[RSP], gpr[RBP]
    size = 2 if opsize16 else 8
    refs: list[tuple[int, int]] = []
    op = code[i]
    i += 1
    if op in (0xC4, 0xC5):            # VEX: its payload carries inverted REX.X/B
        if op == 0xC4:
            rex = (~code[i] >> 5) & 3
            i += 2
        else:
            i += 1
        op2 = code[i]
        i += 1
        has_modrm, accesses = op2 != 0x77, True
        op = 0x0F  # not a one-byte stack opcode
    elif op == 0x0F:
        op2 = code[i]
        i += 1
        if op2 in (0xA0, 0xA8):
            refs.append((rsp - size, size))
        elif op2 in (0xA1, 0xA9):
            refs.append((rsp, size))
        if op2 in (0x38, 0x3A):
            i += 1
            has_modrm, accesses = True, True
        else:
            has_modrm, accesses = op2 not in _NO_MODRM_0F, op2 not in _NO_ACCESS_0F
    else:
        if 0x50 <= op <= 0x57 or op in (0x68, 0x6A, 0x9C, 0xC8):
            refs.append((rsp - size, size))       # PUSH, PUSHF, ENTER
        elif op == 0xE8:
            refs.append((rsp - 8, 8))             # CALL rel32
        elif 0x58 <= op <= 0x5F or op in (0x8F, 0x9D, 0xC2, 0xC3):
            refs.append((rsp, size))              # POP, POPF, RET
        elif op in (0xCA, 0xCB):
            refs.append((rsp, 2 * size))          # RETF
        elif op == 0xCF:
            refs.append((rsp, 5 * size))          # IRET
        elif op == 0xC9:
            refs.append((rbp, size))              # LEAVE reads through RBP
        has_modrm, accesses = op in _MODRM_1, op not in _NO_ACCESS_1
    if not has_modrm:
        return refs
    modrm = code[i]
    i += 1
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if op == 0xFF and reg in (2, 3):
        refs.append((rsp - 8, 16 if reg == 3 else 8))  # CALL r/m, CALLF m
    elif op == 0xFF and reg == 6:
        refs.append((rsp - size, size))               # PUSH r/m
    if mod == 3 or addr32 or not accesses:
        return refs                    # 32-bit addresses are always canonical
    base: int | None
    index = 0
    disp_bits = {0: 0, 1: 8, 2: 32}[mod]
    if rm == 4:
        sib = code[i]
        i += 1
        idx = ((sib >> 3) & 7) | ((rex & 2) << 2)
        if idx != RSP:
            index = gpr[idx] << (sib >> 6)
        base = (sib & 7) | ((rex & 1) << 3)
        if sib & 7 == 5 and mod == 0:
            base, disp_bits = None, 32
    elif rm == 5 and mod == 0:
        return refs                    # RIP-relative: DS
    else:
        base = rm | ((rex & 1) << 3)
    disp = _signed(int.from_bytes(code[i:i + disp_bits // 8], "little"), disp_bits) \
        if disp_bits else 0
    if base in (RSP, RBP) and not fs_gs:
        refs.append(((gpr[base] + index + disp) & MASK64, 1))
    return refs


def is_stack_fault(code: bytes, gpr: list[int]) -> bool:
    """Does the instruction make a non-canonical reference through SS (#SS, not #GP)?"""
    try:
        refs = stack_references(code, gpr)
    except IndexError:
        return False
    return any(not _range_canonical(start & MASK64, n) for start, n in refs)
