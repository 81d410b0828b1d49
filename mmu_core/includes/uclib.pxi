# The C entry points of the libunicorn that the Python binding loaded (never a path
# baked in at build time: docs/ENGINE_FACTS.md fact 1).  The one resolver of both
# extensions: mmu_core/_core.pyx and qemu_lite/_vcpu_hooks.pyx include this file.
import ctypes as _uclib_ctypes
from unicorn.unicorn_py3 import unicorn as _uclib_binding


cdef uintptr_t _fn(name) except 0:
    return <uintptr_t>_uclib_ctypes.cast(getattr(_uclib_binding.uclib, name),
                                         _uclib_ctypes.c_void_p).value
