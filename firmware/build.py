#!/usr/bin/env python3
"""Build the qemu_lite firmware: firmware/bios.bin and firmware/default.img.

    python firmware/build.py              # rebuild the committed binaries
    python firmware/build.py --check      # rebuild into a temp dir, compare (exit 1 if different)
    python firmware/build.py --out DIR    # write the binaries into DIR instead

Only nasm is needed (flat binaries, no timestamps), so every run produces the
same bytes.  Standard library only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parent

BIOS_SIZE = 65536
IMAGE_SIZE = 65536

# output name -> (source, include directory, extra nasm arguments, expected size)
TARGETS: dict[str, tuple[Path, Path, tuple[str, ...], int]] = {
    "bios.bin": (FIRMWARE_DIR / "bios.asm", FIRMWARE_DIR / "bios", (), BIOS_SIZE),
    "default.img": (
        FIRMWARE_DIR / "guest" / "default.asm",
        FIRMWARE_DIR / "guest",
        (),
        IMAGE_SIZE,
    ),
}


class BuildError(RuntimeError):
    pass


def find_nasm() -> str:
    nasm = shutil.which("nasm")
    if nasm is None:
        raise BuildError("nasm not found on PATH (Debian: apt-get install nasm)")
    return nasm


def assemble(source: Path, include_dir: Path, output: Path, extra: tuple[str, ...] = ()) -> None:
    """Run nasm -f bin on one source file."""
    cmd = [
        find_nasm(),
        "-f",
        "bin",
        "-w+error",
        "-I",
        str(include_dir) + "/",
        *extra,
        "-o",
        str(output),
        str(source),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=FIRMWARE_DIR)
    if proc.returncode != 0:
        output.unlink(missing_ok=True)
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


def build(out_dir: Path, targets: dict = TARGETS) -> list[Path]:
    """Assemble every target into out_dir and sanity-check the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for name, (source, include_dir, extra, size) in targets.items():
        output = out_dir / name
        assemble(source, include_dir, output, extra)
        data = output.read_bytes()
        if len(data) != size:
            raise BuildError(f"{name}: {len(data)} bytes, expected {size}")
        built.append(output)
    verify_bios((out_dir / "bios.bin").read_bytes())
    verify_image((out_dir / "default.img").read_bytes())
    return built


def verify_bios(rom: bytes) -> None:
    if len(rom) != BIOS_SIZE:
        raise BuildError(f"bios.bin is {len(rom)} bytes, expected {BIOS_SIZE}")
    # far jump (EA ptr16:16) at F000:FFF0 into the same segment
    if rom[0xFFF0] != 0xEA or rom[0xFFF3:0xFFF5] != b"\x00\xf0":
        raise BuildError("bios.bin: no far jump to F000:xxxx at offset 0xFFF0")


def verify_image(image: bytes) -> None:
    if len(image) % 512 or len(image) < 65536:
        raise BuildError("default.img must be a multiple of 512 bytes and at least 64 KiB")
    if image[510:512] != b"\x55\xaa":
        raise BuildError("default.img: MBR does not end in 55 AA")


def check() -> int:
    """Rebuild into a temporary directory and compare with the committed files."""
    with tempfile.TemporaryDirectory(prefix="qemu_lite_fw_") as tmp:
        build(Path(tmp))
        status = 0
        for name in TARGETS:
            committed = FIRMWARE_DIR / name
            fresh = (Path(tmp) / name).read_bytes()
            if not committed.exists():
                print(f"{name}: missing (run python firmware/build.py)")
                status = 1
            elif committed.read_bytes() != fresh:
                print(f"{name}: differs from a fresh build (run python firmware/build.py)")
                status = 1
            else:
                print(f"{name}: up to date")
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--check", action="store_true", help="compare a fresh build with the committed binaries"
    )
    group.add_argument("--out", type=Path, help="directory for the binaries (default: firmware/)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            return check()
        for path in build(args.out if args.out else FIRMWARE_DIR):
            print(f"wrote {path}")
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
