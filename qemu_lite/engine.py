"""Which libunicorn the ``unicorn`` binding loads: qemu_lite's patched build or the stock wheel's.

Imported before anything imports ``unicorn`` (qemu_lite/__init__.py,
mmu_core/__init__.py): the binding looks in ``$LIBUNICORN_PATH`` first, so
pointing that at ``qemu_lite/_engine_lib/`` selects the patched engine that
setup.py built.  ``QEMU_LITE_ENGINE=stock`` selects the wheel's library on
purpose; a missing patched build falls back to it with one warning.
``QEMU_LITE_ENGINE=DIR`` loads another build of ours (engine/build_engine.py
--out DIR), which is how the benchmarks compare single patches.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("qemu_lite.engine")

LIB_DIR = Path(__file__).resolve().parent / "_engine_lib"
LIB_NAME = "libunicorn.so.2"


@dataclass(frozen=True)
class EngineInfo:
    kind: str                   # "patched" or "stock"
    unicorn_version: str
    patches: tuple[str, ...]    # patch file stems, empty for stock
    library: str                # path the binding loaded

    def describe(self) -> str:
        s = f"engine: {self.kind} Unicorn {self.unicorn_version}"
        return s + (f" (patches: {', '.join(self.patches)})" if self.patches else "")


def _wanted_dir() -> Path | None:
    """The directory of the patched build asked for, None for the stock wheel."""
    want = os.environ.get("QEMU_LITE_ENGINE", "").strip()
    if want.lower() == "stock":
        return None
    if want and want.lower() != "patched":
        return Path(want).resolve()
    return LIB_DIR


def _select() -> str | None:
    """Set LIBUNICORN_PATH for the engine asked for; a warning to print, or None."""
    lib_dir = _wanted_dir()
    if lib_dir is None:
        os.environ.pop("LIBUNICORN_PATH", None)
        return None
    if "unicorn" in sys.modules:
        return None  # too late to choose; engine_info() reports what was loaded
    if (lib_dir / LIB_NAME).is_file():
        os.environ["LIBUNICORN_PATH"] = str(lib_dir)
        return None
    if lib_dir != LIB_DIR:
        return f"QEMU_LITE_ENGINE={lib_dir} holds no {LIB_NAME}; running on the stock unicorn wheel"
    return ("the patched Unicorn engine was not built at install time; running on the stock "
            "unicorn wheel (slower; see README 'Install')")


_warning = _select()
if _warning:
    # With logging unconfigured this is one line on stderr (logging's last-resort handler).
    log.warning("qemu_lite: %s", _warning)


def engine_info() -> EngineInfo:
    """What the ``unicorn`` binding loaded (imports it)."""
    import unicorn
    from unicorn.unicorn_py3 import unicorn as binding

    loaded = str(getattr(binding.uclib, "_name", "") or "")
    major, minor, _ = unicorn.uc_version()
    version = f"{major}.{minor}"
    lib_dir = _wanted_dir() or LIB_DIR
    try:
        same = Path(loaded).resolve().parent == lib_dir
    except OSError:
        same = False
    if same:
        try:
            manifest = json.loads((lib_dir / "engine.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        return EngineInfo("patched", manifest.get("unicorn", version),
                          tuple(manifest.get("patches", ())), loaded)
    return EngineInfo("stock", unicorn.__version__, (), loaded)


def is_patched(patch: str | None = None) -> bool:
    """True when the loaded engine is ours (and carries ``patch``, a letter like 'a', if given)."""
    info = engine_info()
    if info.kind != "patched":
        return False
    return patch is None or any(p.split("-", 1)[0] == patch for p in info.patches)


def version_text() -> str:
    """``qemu-lite --version``: qemu_lite's version and the engine it runs on."""
    from importlib import metadata

    try:
        own = metadata.version("qemu-lite")
    except metadata.PackageNotFoundError:
        own = "unknown (not installed)"
    return f"qemu-lite {own}\n{engine_info().describe()}"


class VersionAction(argparse.Action):
    """argparse action printing :func:`version_text` (computed only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print qemu-lite's version and its engine's, then exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()
