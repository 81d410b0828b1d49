cdef class Core:
    pass
