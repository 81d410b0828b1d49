# Device hot paths in C: a 16550's LSR and THR, the VGA window's stores, posted port
# writes (docs/ARCHITECTURE.md, "Where the hot paths live").  Declarations in
# devfast_defs.pxi.


cdef inline bint _uart_read(CoreState *st, uint32_t port, int size,
                            uint32_t *value) noexcept nogil:
    cdef int i
    cdef UartFast *u
    if size != 1:
        return False
    for i in range(UART_FAST_MAX):
        u = &st.uart[i]
        if u.base and port == u.base + 5 and u.lsr >= 0:
            value[0] = <uint32_t>u.lsr
            st.dev_fast_accesses += 1
            return True
    return False


cdef inline bint _uart_write(CoreState *st, uint32_t port, int size,
                             uint32_t value) noexcept nogil:
    cdef int i
    cdef UartFast *u
    if size != 1:
        return False
    for i in range(UART_FAST_MAX):
        u = &st.uart[i]
        if u.base and port == u.base and u.thr:
            u.out[u.out_len] = <uint8_t>value
            u.out_len += 1
            st.uart_pending = True
            st.dev_fast_accesses += 1
            # A complete line reaches the host at once (as a terminal user expects),
            # a full buffer too; the rest when the slice ends or Python next runs.
            if value == 0x0A or u.out_len == UART_OUT_SIZE:
                with gil:
                    _flush_uarts(<Core>st.owner)
            return True
    return False


cdef void _flush_uarts(Core core) noexcept:
    """Hand the queued bytes to each UART's sink (its ``transmit``), in order."""
    cdef CoreState *st = core.st
    cdef UartFast *u
    cdef int i
    st.uart_pending = False
    for i in range(UART_FAST_MAX):
        u = &st.uart[i]
        if u.out_len == 0:
            continue
        data = (<char *>u.out)[:u.out_len]
        u.out_len = 0
        try:
            core._uart_sinks[i](data)
        except BaseException as exc:
            core._record_error(exc)


cdef inline bint _vga_target(VgaFast *v, uint64_t offset, uint64_t *a) noexcept nogil:
    if offset < v.lo or offset >= v.hi:
        return False
    a[0] = offset - v.lo
    return True


cdef bint _vga_write(CoreState *st, uint64_t offset, unsigned size,
                     uint64_t value) noexcept nogil:
    cdef VgaFast *v = &st.vga
    cdef unsigned i, p
    cdef uint64_t a, at
    cdef uint8_t byte
    if v.kind == VGA_FAST_OFF or size > 8:
        return False
    for i in range(size):
        byte = <uint8_t>(value >> (8 * i))
        if v.kind == VGA_FAST_BANK:
            at = v.bank + offset + i
            if offset + i < 0x10000 and at < v.vram_size:
                v.vram[at] = byte
                mark_vram_dirty(st, at >> 12)
        elif not _vga_target(v, offset + i, &a):
            continue  # not decoded by this memory map: the store is lost
        elif v.kind == VGA_FAST_CHAIN4:
            if v.map_mask & (1 << (a & 3)):
                v.vram[a] = byte
                mark_vram_dirty(st, a >> 12)
        elif v.kind == VGA_FAST_ODD_EVEN:
            p = v.plane_hi | (a & 1)
            if v.map_mask & (1 << p):
                at = ((a & ~1ULL) << 2) | p
                v.vram[at] = byte
                mark_vram_dirty(st, at >> 12)
        else:  # VGA_FAST_PLANAR
            at = a << 2
            if at + 4 <= v.vram_size:
                for p in range(4):
                    if v.map_mask & (1 << p):
                        v.vram[at + p] = byte
                mark_vram_dirty(st, at >> 12)  # the four planes share a page
    st.dev_fast_accesses += 1
    return True


cdef bint _vga_read(CoreState *st, uint64_t offset, unsigned size,
                    uint64_t *value) noexcept nogil:
    cdef VgaFast *v = &st.vga
    cdef unsigned i
    cdef uint64_t a, at, byte, out = 0
    if v.kind == VGA_FAST_OFF or v.kind == VGA_FAST_PLANAR or size > 8:
        return False  # planar reads load the latches: the device does them
    for i in range(size):
        byte = 0xFF
        if v.kind == VGA_FAST_BANK:
            at = v.bank + offset + i
            if offset + i < 0x10000 and at < v.vram_size:
                byte = v.vram[at]
        elif _vga_target(v, offset + i, &a):
            if v.kind == VGA_FAST_CHAIN4:
                byte = v.vram[a]
            else:
                byte = v.vram[((a & ~1ULL) << 2) | v.plane_hi | (a & 1)]
        out |= byte << (8 * i)
    value[0] = out
    st.dev_fast_accesses += 1
    return True


cdef void _post_write(CoreState *st, uint16_t slot, uint32_t offset, int size,
                      uint32_t value) noexcept nogil:
    cdef PostedWrite *w = &st.posted[st.posted_len]
    w.slot = slot
    w.offset = offset
    w.size = <uint16_t>size
    w.value = value
    st.posted_len += 1
    st.dev_fast_accesses += 1
    if st.posted_len == POSTED_MAX:
        with gil:
            _flush_queued(<Core>st.owner)


cdef void _flush_queued(Core core) noexcept:
    """Run the posted port writes in order, then hand the UARTs their queued bytes."""
    cdef CoreState *st = core.st
    cdef uint32_t i, n = st.posted_len
    cdef PostedWrite *w
    st.posted_len = 0
    for i in range(n):
        w = &st.posted[i]
        try:
            core._port_handlers[w.slot].io_write(w.offset, w.size, w.value)
        except BaseException as exc:
            core._record_error(exc)
    if st.uart_pending:
        _flush_uarts(core)
