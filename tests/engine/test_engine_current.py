"""The installed patched engine is built from the patches in this tree, byte for byte.

An engine built before a patch changed (or before one was added) runs the tests against
stale C code: the manifest records each patch's sha256 at build time and this compares
them with engine/patches/.  Fix: re-run ``pip install -e . --no-build-isolation``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from qemu_lite import engine

PATCH_DIR = Path(__file__).resolve().parents[2] / "engine" / "patches"


def test_installed_engine_matches_the_patch_files():
    if engine.engine_info().kind != "patched":
        pytest.skip("running on the stock engine: nothing built to compare")
    if os.environ.get("QEMU_LITE_ENGINE", "patched").lower() != "patched":
        pytest.skip("QEMU_LITE_ENGINE selects another build (a patch subset)")
    if not PATCH_DIR.is_dir():
        pytest.skip("no engine/patches/ beside the tests (an installed package)")
    manifest = json.loads((engine.LIB_DIR / "engine.json").read_text())
    built = manifest.get("patch_sha256", {})
    here = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(PATCH_DIR.glob("*.patch"))}
    stale = sorted(name for name in here if built.get(name) != here[name])
    assert not stale, f"the installed engine predates {', '.join(stale)}: rebuild it " \
        "(pip install -e . --no-build-isolation)"
    assert sorted(built) == sorted(here), f"built with {sorted(built)}, tree has {sorted(here)}"
