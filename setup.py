"""Build script: the Cython extension ``mmu_core``, the patched engine and the package layout.

``devices/`` is installed as ``qemu_lite.devices`` so that its generic name
does not collide with other projects.  The extension does not link against
libunicorn: it resolves the C entry points at import time from the library
the ``unicorn`` module has already loaded (see mmu_core/_unicorn.pxd).

``build_ext`` also builds qemu_lite's patched Unicorn (engine/build_engine.py)
into ``qemu_lite/_engine_lib/``; if that fails the install goes on and
qemu_lite runs on the stock ``unicorn`` wheel (it says so at start-up).
"""

import sys
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "engine"))
import build_engine  # noqa: E402

ENGINE_LIB_DIR = Path("qemu_lite") / "_engine_lib"


class BuildExtWithEngine(build_ext):
    """build_ext, then the patched engine (cached under build/engine between builds)."""

    def run(self):
        super().run()
        in_tree = self.inplace or getattr(self, "editable_mode", False)
        out = ROOT / ENGINE_LIB_DIR if in_tree else Path(self.build_lib) / ENGINE_LIB_DIR
        try:
            build_engine.build(out, ROOT / "build" / "engine")
        except (build_engine.EngineBuildError, OSError) as e:
            build_engine.log(f"not built ({e}); qemu_lite will use the stock unicorn wheel")
            for stale in (build_engine.LIB_NAME, build_engine.MANIFEST_NAME):
                (out / stale).unlink(missing_ok=True)  # never run an old build as the new one


extensions = [
    Extension("mmu_core._core", ["mmu_core/_core.pyx"], extra_compile_args=["-O2"]),
    Extension("qemu_lite._vcpu_hooks", ["qemu_lite/_vcpu_hooks.pyx"], extra_compile_args=["-O2"]),
]

setup(
    packages=["qemu_lite", "qemu_lite.acpi", "qemu_lite.loaders", "qemu_lite.display",
              "qemu_lite.devices", "mmu_core", "qemu_lite.firmware", "qemu_lite.devfuzz",
              "qemu_lite.fuzz"],
    package_dir={"qemu_lite.devices": "devices", "qemu_lite.firmware": "firmware"},
    package_data={"qemu_lite.firmware": ["*.bin", "*.img"], "mmu_core": ["*.pxd", "*.pyx"],
                  "qemu_lite.fuzz": ["*.asm"]},
    ext_modules=cythonize(extensions, language_level=3),
    cmdclass={"build_ext": BuildExtWithEngine},
    zip_safe=False,
)
