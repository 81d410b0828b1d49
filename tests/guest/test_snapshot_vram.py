"""In-memory snapshots and the std-vga's memory: a guest writes text into VRAM on all three
paths (the C window path in chain-4, the device's Python path for a planar store with a bit
mask, the linear framebuffer at BAR0), and every restore gives VRAM back as it was, while
copying only the pages written (the VRAM dirty log)."""

from __future__ import annotations

import pytest
from guestlib import VGA_HELPERS, protected_mode_guest

from qemu_lite import Machine
from qemu_lite.devices.vga import LFB_DEFAULT_BASE
from qemu_lite.loaders import multiboot

READY_PORT = 0x5F0
COUNTER = 0x1FF000   # the host writes the round number here before each run
TEXT = b"VRAM round "  # then the round's low byte, as a letter


# VRAM offsets the three paths reach for round ``n``
def chain4_at(n: int) -> int:
    return (n * 0x340) & 0xFFF0           # window offset a = VRAM offset (map 1: 64 KiB)


def planar_at(n: int) -> int:
    return (0x8000 + (n & 15) * 0x400) * 4  # window offset a -> planes at 4a .. 4a+3


def lfb_at(n: int) -> int:
    return 0x100000 + (n & 255) * 0x1000


GUEST = rf"""
    ; the state the snapshot keeps: chain-4, map 1 (0xA0000, 64 KiB), a 0x5A pattern
    ; over the window (VRAM 0 .. 64 KiB) and 0xC3 over VRAM 1 .. 3 MiB through the
    ; framebuffer
    SEQ 2, 0x0F
    SEQ 4, 0x0E
    GFX 6, 0x05
    mov edi, 0xA0000
    mov ecx, 0x10000 / 4
    mov eax, 0x5A5A5A5A
    rep stosd
    mov edi, {LFB_DEFAULT_BASE + 0x100000:#x}
    mov ecx, 0x200000 / 4
    mov eax, 0xC3C3C3C3
    rep stosd
    mov dx, {READY_PORT:#x}
    out dx, al
    jmp .round              ; the run stops at the end of the OUT's block: end it here
.round:
    ; each round: the text through the C window path (chain-4) ...
    mov ebx, [{COUNTER:#x}]
    mov eax, ebx
    imul eax, 0x340
    and eax, 0xFFF0
    lea edi, [0xA0000 + eax]
    call text
    ; ... through the device's Python path (planar, bit mask 7F: needs the latches) ...
    SEQ 4, 0x06
    GFX 8, 0x7F
    mov eax, ebx
    and eax, 15
    shl eax, 10
    lea edi, [0xA8000 + eax]
    call text
    GFX 8, 0xFF
    SEQ 4, 0x0E
    ; ... and through the framebuffer
    movzx eax, bl
    shl eax, 12
    lea edi, [{LFB_DEFAULT_BASE + 0x100000:#x} + eax]
    call text
    mov al, 0
    jmp exit

text:                       ; TEXT and the round's letter at edi
    mov esi, message
    mov ecx, {len(TEXT)}
    rep movsb
    mov al, bl
    and al, 15
    add al, 'A'
    stosb
    ret
message: db "{TEXT.decode()}"
"""


class _ReadyPort:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def io_read(self, offset: int, size: int) -> int:
        return 0xFF

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.machine.stop("ready")


@pytest.mark.parametrize("mmu", ["cached", "native"])
def test_vram_restored_a_thousand_times_after_all_three_write_paths(assemble, tmp_path, mmu):
    kernel = tmp_path / "vram.bin"
    kernel.write_bytes(assemble(protected_mode_guest(VGA_HELPERS + GUEST)))
    rounds = 1000 if mmu == "cached" else 20  # native copies all of VRAM: the slow path
    with Machine(memory="32M", mmu=mmu, deterministic=True) as m:
        m.add_device(READY_PORT, 1, _ReadyPort(m))
        multiboot.load(m, kernel)
        assert m.run(timeout=60).reason == "ready"
        vram = m.board.vga.vram
        assert vram[:0x10000] == b"Z" * 0x10000 and vram[0x10000] == 0
        assert vram[0x100000:0x300000] == b"\xc3" * 0x200000 and vram[0x300000] == 0
        token = m.snapshot()
        saved = bytes(vram)
        for n in range(rounds):
            m.write_memory(COUNTER, n.to_bytes(4, "little"))
            result = m.run(timeout=60)
            assert (result.reason, result.exit_status) == ("exit", 1), result
            text = TEXT + bytes([ord("A") + (n & 15)])
            assert vram[chain4_at(n):chain4_at(n) + len(text)] == text, n
            assert vram[lfb_at(n):lfb_at(n) + len(text)] == text, n
            planes = vram[planar_at(n):planar_at(n) + 4 * len(text)]
            assert planes == bytes(b for b in text for _ in range(4)), n  # all four planes
            if mmu == "cached" and n < 3:
                written = sorted(m.core.vram_log_take())
                # (a peek that empties the log: put the pages back for the restore)
                for page in written:
                    m.core.vram_log_mark(page * 4096, 1)
                assert written == sorted({chain4_at(n) >> 12, planar_at(n) >> 12,
                                          lfb_at(n) >> 12}), n
            m.restore(token)
            assert vram == saved, n
        assert m.board.vga.save_state()["vram"] == saved
