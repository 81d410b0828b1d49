"""Build qemu_lite's patched Unicorn: the pinned sdist, our patches, cmake, x86 only.

Used by setup.py at install time and runnable by hand to build a variant with a
subset of the patches (benchmarks measure each patch alone that way)::

    python engine/build_engine.py --patches a --out /tmp/engine-a

Everything lives under a work directory (``build/engine`` in the source tree by
default) that is kept between builds: the verified sdist, the patched source
tree and the cmake/ninja build directory.  Only files whose patched content
changed are rewritten, so an unchanged rebuild compiles nothing and a changed
patch recompiles only the objects it touches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

UNICORN_VERSION = "2.1.4"
UNICORN_SDIST = f"unicorn-{UNICORN_VERSION}.tar.gz"
UNICORN_SDIST_SHA256 = "00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff"
LIB_NAME = "libunicorn.so.2"
MANIFEST_NAME = "engine.json"

ENGINE_DIR = Path(__file__).resolve().parent
PATCH_DIR = ENGINE_DIR / "patches"


class EngineBuildError(Exception):
    """The engine could not be fetched, patched or compiled (one line for the user)."""


def log(msg: str) -> None:
    print(f"qemu_lite engine: {msg}", file=sys.stderr, flush=True)


def available_patches() -> dict[str, Path]:
    """Patch files by their one-letter name (the file name's prefix before '-')."""
    return {p.name.split("-", 1)[0]: p for p in sorted(PATCH_DIR.glob("*.patch"))}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path) -> bool:
    return path.is_file() and _sha256(path) == UNICORN_SDIST_SHA256


def fetch_sdist(work: Path) -> Path:
    """The pinned sdist, from the cache, $QEMU_LITE_UNICORN_SDIST or pip's configured index."""
    cached = work / UNICORN_SDIST
    given = os.environ.get("QEMU_LITE_UNICORN_SDIST")
    if given:
        if not _verified(Path(given)):
            raise EngineBuildError(f"{given} is not the pinned {UNICORN_SDIST} (sha256 mismatch)")
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(given, cached)
        return cached
    if _verified(cached):
        return cached
    shared = ENGINE_DIR.parent / "build" / "engine" / UNICORN_SDIST
    if _verified(shared):
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared, cached)
        return cached
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as dl:
        base = [sys.executable, "-m", "pip", "download", f"unicorn=={UNICORN_VERSION}",
                "--no-binary", ":all:", "--no-deps", "-q", "-d", dl]
        # pip prepares the sdist's metadata even for a download; without build
        # isolation that reuses our own build environment and takes a second.
        for extra in (["--no-build-isolation"], []):
            proc = subprocess.run(base + extra, capture_output=True, text=True)
            found = Path(dl) / UNICORN_SDIST
            if proc.returncode == 0 and found.is_file():
                break
        else:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EngineBuildError(f"pip could not download {UNICORN_SDIST}: {last}")
        if not _verified(found):
            raise EngineBuildError(f"downloaded {UNICORN_SDIST} does not match its pinned sha256")
        shutil.move(str(found), cached)
    return cached


def _apply(patch: Path, tree: Path) -> None:
    proc = subprocess.run(["patch", "-p1", "-s", "--no-backup-if-mismatch", "-i", str(patch)],
                          cwd=tree, capture_output=True, text=True)
    if proc.returncode:
        raise EngineBuildError(f"{patch.name} does not apply: {proc.stdout.strip()}")


def _sync_tree(fresh: Path, dest: Path) -> int:
    """Make dest equal to fresh, touching only files whose bytes differ."""
    changed = 0
    for src in fresh.rglob("*"):
        if src.is_dir():
            continue
        rel = src.relative_to(fresh)
        out = dest / rel
        data = src.read_bytes()
        if out.is_file() and out.read_bytes() == data:
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        shutil.copymode(src, out)
        changed += 1
    return changed


def prepare_source(sdist: Path, patches: list[Path], work: Path) -> Path:
    """The sdist's C tree with ``patches`` applied, kept at ``work/src``."""
    if shutil.which("patch") is None:
        raise EngineBuildError("the 'patch' program is not installed")
    dest = work / "src"
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(f"unicorn-{UNICORN_VERSION}/src/")]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # Python before 3.11.4: the archive's hash was checked above
                tar.extractall(tmp, members=members)
        fresh = Path(tmp) / f"unicorn-{UNICORN_VERSION}" / "src"
        for p in patches:
            _apply(p, fresh)
        changed = _sync_tree(fresh, dest)
    log(f"source ready ({changed} files updated)")
    return dest


def _tool(name: str) -> str:
    # cmake and ninja come from PyPI as build requirements; their scripts sit
    # next to the interpreter of the build environment.
    near = Path(sys.executable).parent / name
    found = str(near) if near.exists() else shutil.which(name)
    if found is None:
        raise EngineBuildError(f"{name} not found")
    return found


def _generated_headers(build: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns)
            for pat in ("*.h", "*.mak") for p in build.rglob(pat)}


def _configure(cmake: str, ninja: str, src: Path, build: Path) -> subprocess.CompletedProcess:
    # pip's build environment, and so the cmake and ninja paths recorded in
    # the cache, is new on each install: configure again.  Unicorn's configure
    # step rewrites config-host.h and friends, which would recompile
    # everything; files that came out identical get their old times back.
    before = _generated_headers(build) if build.is_dir() else {}
    proc = subprocess.run([cmake, "-S", str(src), "-B", str(build), "-G", "Ninja",
                           f"-DCMAKE_MAKE_PROGRAM={ninja}", "-DCMAKE_BUILD_TYPE=Release",
                           "-DUNICORN_ARCH=x86", "-DUNICORN_BUILD_TESTS=off"],
                          capture_output=True, text=True)
    for path, (data, mtime) in before.items():
        if path.is_file() and path.read_bytes() == data:
            os.utime(path, ns=(mtime, mtime))
    return proc


def compile_library(src: Path, work: Path) -> Path:
    build = work / "cmake"
    cmake, ninja = _tool("cmake"), _tool("ninja")
    proc = _configure(cmake, ninja, src, build)
    if proc.returncode and build.exists():
        shutil.rmtree(build, ignore_errors=True)  # a cache from elsewhere: start afresh
        proc = _configure(cmake, ninja, src, build)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineBuildError(f"cmake configure failed: {last}")
    jobs = str(os.cpu_count() or 1)
    proc = subprocess.run([ninja, "-C", str(build), "-j", jobs, "unicorn"],
                          capture_output=True, text=True)
    if proc.returncode:
        out = (proc.stdout + proc.stderr).splitlines()
        errors = [ln for ln in out if "error" in ln.lower()] or out[-1:] or ["no output"]
        raise EngineBuildError(f"compiling Unicorn failed: {errors[0].strip()}")
    lib = build / LIB_NAME
    if not lib.is_file():
        raise EngineBuildError(f"the build produced no {LIB_NAME}")
    log(f"ninja: {(proc.stdout.strip().splitlines() or ['nothing to do'])[-1]}")
    return lib


def build(out: Path, work: Path, names: list[str] | None = None) -> Path:
    """Build the engine with the named patches (default: all) into ``out``."""
    known = available_patches()
    names = sorted(known) if names is None else names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EngineBuildError(f"unknown patch(es) {', '.join(unknown)}; have {', '.join(known)}")
    work.mkdir(parents=True, exist_ok=True)
    sdist = fetch_sdist(work)
    src = prepare_source(sdist, [known[n] for n in names], work)
    lib = compile_library(src, work)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lib, out / LIB_NAME)
    manifest = {"unicorn": UNICORN_VERSION, "sdist_sha256": UNICORN_SDIST_SHA256,
                "patches": [known[n].stem for n in names],
                # what tests/engine/test_engine_current.py compares with the tree
                "patch_sha256": {known[n].stem: _sha256(known[n]) for n in names}}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"built {out / LIB_NAME} with patches {', '.join(names) or 'none'}")
    return out / LIB_NAME


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patches", default=None,
                    help="comma-separated patch letters (default: all; '' for none)")
    ap.add_argument("--out", required=True, type=Path, help="directory for libunicorn.so.2")
    ap.add_argument("--work", type=Path, default=None,
                    help="cache directory (default: build/engine-<patches> in the source tree)")
    args = ap.parse_args(argv)
    names = None if args.patches is None else [n for n in args.patches.split(",") if n]
    tag = "all" if names is None else ("".join(names) or "none")
    work = args.work or ENGINE_DIR.parent / "build" / f"engine-{tag}"
    try:
        build(args.out, work, names)
    except EngineBuildError as e:
        log(str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
