"""Build script: the Cython extension ``mmu_core`` and the package layout.

``devices/`` is installed as ``qemu_lite.devices`` so that its generic name
does not collide with other projects.  The extension does not link against
libunicorn: it resolves the C entry points at import time from the library
the ``unicorn`` module has already loaded (see mmu_core/_unicorn.pxd).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("mmu_core._core", ["mmu_core/_core.pyx"], extra_compile_args=["-O2"]),
    Extension("qemu_lite._vcpu_hooks", ["qemu_lite/_vcpu_hooks.pyx"], extra_compile_args=["-O2"]),
]

setup(
    packages=["qemu_lite", "qemu_lite.loaders", "qemu_lite.devices", "mmu_core", "qemu_lite.firmware"],
    package_dir={"qemu_lite.devices": "devices", "qemu_lite.firmware": "firmware"},
    package_data={"qemu_lite.firmware": ["*.bin", "*.img"], "mmu_core": ["*.pxd", "*.pyx"]},
    ext_modules=cythonize(extensions, language_level=3),
    zip_safe=False,
)
