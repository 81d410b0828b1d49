# Device registers answered in C (included by _core.pyx before CoreState).
#
# A Python device model stays the owner of its state: after every change it tells
# Core what a hot access may do without it (qemu_lite/devfast.py), and Core hands
# back what it did (transmitted bytes) before any other Python code can look.

cdef enum:
    UART_FAST_MAX = 2
    UART_OUT_SIZE = 256
    POSTED_MAX = 512

cdef struct PostedWrite:
    # A port write whose device runs later, in order (Core.post_port_writes).
    uint16_t slot
    uint16_t size
    uint32_t offset
    uint32_t value

cdef struct UartFast:
    # A 16550: LSR reads answer ``lsr`` (-1: ask the device), THR writes are queued
    # in ``out`` while ``thr`` says a byte leaving changes nothing but the line.
    uint32_t base            # port of THR/RBR; 0 while not attached
    int lsr
    bint thr
    uint32_t out_len
    uint8_t out[UART_OUT_SIZE]

cdef enum:
    VGA_FAST_OFF = 0         # every access goes to the device
    VGA_FAST_BANK = 1        # VBE banked window: vram[bank + offset], offsets below 64 KiB
    VGA_FAST_CHAIN4 = 2      # chain-4: vram[a], stores where the map mask enables a & 3
    VGA_FAST_ODD_EVEN = 3    # odd/even: plane (read map bit 1) | (a & 1)
    VGA_FAST_PLANAR = 4      # write mode 0, no rotate/ALU/set-reset, bit mask FF: stores only

cdef struct VgaFast:
    # The legacy window 0xA0000-0xB7FFF, for the addressing modes that need no latches.
    int kind
    uint8_t *vram
    uint64_t vram_size
    uint64_t lo, hi          # window offsets the memory map decodes; a = offset - lo
    uint64_t bank            # VGA_FAST_BANK: the bank's VRAM offset
    uint32_t map_mask        # sequencer map mask (planes written)
    uint32_t plane_hi        # odd/even: read map select bit 1

# For Core.vga_set().
VGA_OFF = VGA_FAST_OFF
VGA_BANK = VGA_FAST_BANK
VGA_CHAIN4 = VGA_FAST_CHAIN4
VGA_ODD_EVEN = VGA_FAST_ODD_EVEN
VGA_PLANAR = VGA_FAST_PLANAR
