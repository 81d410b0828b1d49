"""A small AML encoder: the ACPI Machine Language objects our DSDT needs.

Each function returns the encoded bytes of one term (ACPI 6.4, chapter 20,
"ACPI Machine Language Specification"); nesting is plain concatenation, so
a device reads as it would in ASL::

    device("COM1", name("_HID", eisa_id("PNP0501")),
           name("_CRS", resource_template(io(0x3F8, 8), irq_no_flags(4))))

Only what qemu_lite's tables use is here: names and paths, integers,
strings, packages, buffers, Scope, Device, Method, Return, Notify, an
OperationRegion with a Field, the few statements and operators of the PCI
interrupt links' methods (If/Else, Store, And, Or, LEqual, LOr,
CreateDWordField, Arg0-6 and Local0-7), and the small and large resource
descriptors of a _CRS.
"""

from __future__ import annotations

import struct

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP, METHOD_OP = 0x08, 0x10, 0x11, 0x12, 0x14
RETURN_OP, NOTIFY_OP = 0xA4, 0x86
EXT_OP_PREFIX, DEVICE_OP, OP_REGION_OP, FIELD_OP = 0x5B, 0x82, 0x80, 0x81
IF_OP, ELSE_OP, STORE_OP, AND_OP, OR_OP = 0xA0, 0xA1, 0x70, 0x7B, 0x7D
LOR_OP, LEQUAL_OP, CREATE_DWORD_FIELD_OP = 0x91, 0x93, 0x8A
LOCAL0_OP, ARG0_OP = 0x60, 0x68
NULL_NAME = 0x00
ROOT_CHAR, PARENT_PREFIX, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x5E, 0x2E, 0x2F

_LEAD = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME = _LEAD | set(b"0123456789")


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of ``body_len`` bytes (the encoding counts itself)."""
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0x0F)]
            out += [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes(out)
    raise ValueError(f"AML package too long ({body_len} bytes)")


def name_seg(seg: str) -> bytes:
    """A 4-character NameSeg; shorter names are padded with '_'."""
    raw = seg.encode("ascii")
    if not 1 <= len(raw) <= 4 or raw[0] not in _LEAD or any(c not in _NAME for c in raw):
        raise ValueError(f"bad AML name segment {seg!r}")
    return raw.ljust(4, b"_")


def name_string(path: str) -> bytes:
    r"""A NameString: ``"_HID"``, ``"\_SB.PCI0"``, ``"^COM1"``."""
    prefix = b""
    while path.startswith("\\") or path.startswith("^"):
        prefix += bytes([ROOT_CHAR if path[0] == "\\" else PARENT_PREFIX])
        path = path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + b"\0"
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def integer(value: int) -> bytes:
    """The shortest integer encoding (Zero, One, Ones, Byte/Word/DWord/QWord)."""
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32), (QWORD_PREFIX, "<Q", 1 << 64)):
        if 0 <= value < limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    raise ValueError(f"AML integer out of range: {value}")


def string(text: str) -> bytes:
    raw = text.encode("ascii")
    if b"\0" in raw:
        raise ValueError("AML strings cannot hold NUL")
    return bytes([STRING_PREFIX]) + raw + b"\0"


def eisa_id(text: str) -> bytes:
    """EisaId("PNP0A03"): three letters and four hex digits packed into a DWord."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA id {text!r}")
    letters = 0
    for ch in text[:3]:
        letters = (letters << 5) | (ord(ch) - 0x40)
    product = int(text[3:], 16)
    return integer(int.from_bytes(struct.pack(">HH", letters, product), "little"))


def name(path: str, value: bytes) -> bytes:
    """Name(path, value)."""
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def method(path: str, arg_count: int, *terms: bytes, serialized: bool = False) -> bytes:
    if not 0 <= arg_count <= 7:
        raise ValueError("an AML method takes 0-7 arguments")
    body = name_string(path) + bytes([arg_count | (0x08 if serialized else 0)]) + b"".join(terms)
    return bytes([METHOD_OP]) + pkg_length(len(body)) + body


def return_(value: bytes) -> bytes:
    return bytes([RETURN_OP]) + value


def notify(path: str, value: int) -> bytes:
    return bytes([NOTIFY_OP]) + name_string(path) + integer(value)


def package(*elements: bytes) -> bytes:
    if len(elements) > 255:
        raise ValueError("an AML Package holds at most 255 elements")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


# -- operation regions, statements and operators (ACPI 6.4, 20.2.5) ----------------

REGION_PCI_CONFIG = 0x02
FIELD_BYTE_ACC = 0x01  # AccessType ByteAcc, NoLock, Preserve


def operation_region(path: str, space: int, offset: int, length: int) -> bytes:
    """OperationRegion(path, space, offset, length)."""
    return (bytes([EXT_OP_PREFIX, OP_REGION_OP]) + name_string(path) + bytes([space])
            + integer(offset) + integer(length))


def field(region: str, *units: tuple[str, int], flags: int = FIELD_BYTE_ACC) -> bytes:
    """Field(region, ByteAcc, NoLock, Preserve){name, bits, ...}: consecutive named fields."""
    body = name_string(region) + bytes([flags])
    for seg, bits in units:
        if not 0 < bits < 0x40:
            raise ValueError("only fields narrower than 64 bits are encoded here")
        body += name_seg(seg) + bytes([bits])  # a PkgLength holding the width itself
    return bytes([EXT_OP_PREFIX, FIELD_OP]) + pkg_length(len(body)) + body


def arg(n: int) -> bytes:
    if not 0 <= n <= 6:
        raise ValueError("Arg0-Arg6")
    return bytes([ARG0_OP + n])


def local(n: int) -> bytes:
    if not 0 <= n <= 7:
        raise ValueError("Local0-Local7")
    return bytes([LOCAL0_OP + n])


def ref(path: str) -> bytes:
    """A named object used as an operand or target."""
    return name_string(path)


def if_(predicate: bytes, *terms: bytes) -> bytes:
    body = predicate + b"".join(terms)
    return bytes([IF_OP]) + pkg_length(len(body)) + body


def else_(*terms: bytes) -> bytes:
    body = b"".join(terms)
    return bytes([ELSE_OP]) + pkg_length(len(body)) + body


def store(value: bytes, target: bytes) -> bytes:
    return bytes([STORE_OP]) + value + target


def and_(a: bytes, b: bytes, target: bytes = bytes([NULL_NAME])) -> bytes:
    return bytes([AND_OP]) + a + b + target


def or_(a: bytes, b: bytes, target: bytes = bytes([NULL_NAME])) -> bytes:
    return bytes([OR_OP]) + a + b + target


def lequal(a: bytes, b: bytes) -> bytes:
    return bytes([LEQUAL_OP]) + a + b


def lor(a: bytes, b: bytes) -> bytes:
    return bytes([LOR_OP]) + a + b


def create_dword_field(source: bytes, byte_index: int, seg: str) -> bytes:
    """CreateDWordField(source, byte_index, seg)."""
    return bytes([CREATE_DWORD_FIELD_OP]) + source + integer(byte_index) + name_string(seg)


# -- resource descriptors (ACPI 6.4, 6.4 "Resource Data Types") -------------------

END_TAG = bytes([0x79, 0x00])  # checksum 0: "the checksum is to be ignored"


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate(){...}: a Buffer of descriptors closed by an End Tag."""
    return buffer(b"".join(descriptors) + END_TAG)


def io(base: int, length: int, alignment: int = 1) -> bytes:
    """IO(Decode16, base, base, alignment, length): a fixed range of ports."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, alignment, length)


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags(){...}: ISA IRQs, edge-triggered, active high."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq <= 15:
            raise ValueError(f"ISA IRQ out of range: {irq}")
        mask |= 1 << irq
    return struct.pack("<BH", 0x22, mask)


# Extended Interrupt Descriptor flags (ACPI 6.4, 6.4.3.6).
INT_CONSUMER, INT_EDGE, INT_ACTIVE_LOW, INT_SHARED = 0x01, 0x02, 0x04, 0x08
INT_LEVEL_HIGH_SHARED = INT_CONSUMER | INT_SHARED


def interrupt(*irqs: int, flags: int = INT_LEVEL_HIGH_SHARED) -> bytes:
    """Interrupt(ResourceConsumer, Level, ActiveHigh, Shared){...} by default: the
    Extended Interrupt Descriptor; each interrupt is a DWord, the first at byte 5."""
    if not 1 <= len(irqs) <= 255:
        raise ValueError("an Interrupt descriptor lists 1-255 interrupts")
    return (struct.pack("<BHBB", 0x89, 2 + 4 * len(irqs), flags, len(irqs))
            + struct.pack(f"<{len(irqs)}I", *irqs))


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """Memory32Fixed(ReadWrite|ReadOnly, base, length): a fixed memory range."""
    return struct.pack("<BHBII", 0x86, 9, 1 if writable else 0, base, length)


# Address space descriptor fields: a producer range whose ends are fixed.
_GENERAL_FLAGS = 0x0C  # MinFixed | MaxFixed, producer, positive decode
_SPACE_MEMORY, _SPACE_IO, _SPACE_BUS = 0, 1, 2


def word_bus_number(first: int, last: int) -> bytes:
    return struct.pack("<BHBBBHHHHH", 0x88, 13, _SPACE_BUS, _GENERAL_FLAGS, 0,
                       0, first, last, 0, last - first + 1)


def word_io(first: int, last: int) -> bytes:
    """WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)."""
    return struct.pack("<BHBBBHHHHH", 0x88, 13, _SPACE_IO, _GENERAL_FLAGS, 0x03,
                       0, first, last, 0, last - first + 1)


def dword_memory(first: int, last: int) -> bytes:
    """DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite)."""
    return struct.pack("<BHBBBIIIII", 0x87, 23, _SPACE_MEMORY, _GENERAL_FLAGS, 0x01,
                       0, first, last, 0, last - first + 1)
