"""Fuzzing the command line: option values and file contents.

Every invalid input must give exit status 2 and exactly one line on stderr; no input
may give a traceback or the internal-error status; and no file other than the declared
outputs may change (every file in the run's directory is hashed before and after).

The CLI runs in-process (``cli.main(argv)``), in a forked child for inputs that run guest
code (a host crash fails one example, not the session); the whole module takes well under a
minute (``max_examples`` below, ``--timeout`` short for inputs that do boot).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qemu_lite import cli
from qemu_lite.engine import is_patched
from qemu_lite.machine import bundled_firmware_path


def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
MB_MAGIC = 0x1BADB002
DEFAULT_IMAGE = Path(bundled_firmware_path("default.img")).read_bytes()


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.stat().st_size > 1 << 24:  # a sparse hole: size and mtime
            st = path.stat()
            out[str(path.relative_to(root))] = f"{st.st_size}:{st.st_mtime_ns}"
        elif path.is_file() and not path.is_fifo():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path.relative_to(root))] = "dir" if path.is_dir() else "special"
    return out


def run_cli(root: Path, argv: list[str], outputs: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run the CLI in-process; check that only the declared ``outputs`` in ``root`` changed."""
    before = _snapshot(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(argv)
    after = _snapshot(root)
    for name in outputs:
        before.pop(name, None)
        after.pop(name, None)
    assert after == before, f"files changed by {argv}"
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert status != cli.STATUS["internal"], text
    return status, text


def run_cli_isolated(root: Path, argv: list[str], outputs: tuple[str, ...] = (),
                     ) -> tuple[int, str]:
    """:func:`run_cli` in a forked child, for inputs that run guest code: a host crash
    (a signal) then fails this one example, with the input named, instead of ending the
    whole test session."""
    before = _snapshot(root)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report status and stderr as JSON, never return
        code = 99
        try:
            os.close(read_fd)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = cli.main(argv)
            with os.fdopen(write_fd, "w") as report:
                json.dump({"status": status, "err": err.getvalue()}, report)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as report:
        raw = report.read()
    _, wait_status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(wait_status), (
        f"qemu-lite was killed by signal {os.WTERMSIG(wait_status)} running {argv}")
    assert raw, f"qemu-lite's child ended without a report running {argv}"
    result = json.loads(raw)
    after = _snapshot(root)
    for name in outputs:
        before.pop(name, None)
        after.pop(name, None)
    assert after == before, f"files changed by {argv}"
    assert "Traceback" not in result["err"], result["err"]
    assert result["status"] != cli.STATUS["internal"], result["err"]
    return result["status"], result["err"]


def assert_usage_error(status: int, err: str, argv: list[str]) -> None:
    assert status == 2, (argv, status, err)
    assert len(err.strip().splitlines()) == 1, (argv, err)


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory(prefix="qemu-lite-fuzz-") as name:
        root = Path(name)
        (root / "d.img").write_bytes(DEFAULT_IMAGE)
        yield root


# -- option values -----------------------------------------------------------------------

no_digits = st.text(min_size=0, max_size=10).filter(lambda t: not any(c.isdigit() for c in t))
odd_floats = st.floats(allow_nan=True, allow_infinity=True)


def _not_between(lo: float, hi: float) -> Callable[[float], bool]:
    return lambda v: not lo <= v <= hi


bad_memory = st.one_of(
    no_digits,
    st.sampled_from(["inf", "-inf", "nan", "1e400", "0", "-1", "-64M", "1K", "0.5", "4G",
                     "3.6G", "1T", "64X", "0x40", "1e-300M", "2.0000001M"]),
    odd_floats.filter(_not_between(2, 3584)).map(repr),
    st.integers().filter(_not_between(2, 3584)).map(str),
)
bad_mmu_pages = st.one_of(no_digits, st.integers().filter(_not_between(16, 1 << 20)).map(str),
                          odd_floats.map(repr))
bad_timeout = st.one_of(no_digits, odd_floats.filter(lambda v: not 0 < v <= 1e8).map(repr),
                        st.sampled_from(["nan", "inf", "-inf", "1e300", "-1", "0", "-0"]))
bad_port = st.one_of(st.integers().filter(_not_between(1, 65535)).map(str),
                     no_digits.filter(bool))
bad_serial = st.one_of(
    st.sampled_from(["", "file:", "nosuchscheme://x", "socket://localhost", "socket://:80"]),
    bad_port.map(lambda p: f"socket://localhost:{p}"),
    bad_port.map(lambda p: f"rfc2217://localhost:{p}"),
)
qemu_bools = {"on", "yes", "true", "y", "off", "no", "false", "n"}
bad_drive_option = st.one_of(
    st.text(max_size=8).filter(lambda v: v not in qemu_bools and "," not in v)
      .map(lambda v: f"readonly={v}"),
    st.text(max_size=4).filter(lambda v: v not in {"0", "1", "2", "3"} and "," not in v)
      .map(lambda v: f"index={v}"),
    st.text(max_size=6).filter(lambda v: v not in {"disk", "cdrom"} and "," not in v)
      .map(lambda v: f"media={v}"),
    st.sampled_from(["if=virtio", "if=scsi", "format=qcow2", "cache=none", "bogus", "file="]),
)
def _boot_order_ok(value: str) -> bool:
    """What QEMU's -boot takes and we support: c, d and n, each at most once, bare or in
    order=."""
    order = value[len("order="):] if value.startswith("order=") else value
    return 0 < len(order) == len(set(order)) and set(order) <= set("cdn")


bad_option = st.one_of(
    bad_memory.map(lambda v: [f"--memory={v}"]),
    bad_mmu_pages.map(lambda v: [f"--mmu-pages={v}"]),
    bad_timeout.map(lambda v: [f"--timeout={v}"]),
    bad_serial.map(lambda v: ["d.img", f"--serial={v}"]),
    bad_serial.map(lambda v: ["d.img", f"--serial2={v}"]),
    bad_drive_option.map(lambda v: [f"--drive=file=d.img,{v}"]),
    no_digits.filter(lambda v: not _boot_order_ok(v)).map(lambda v: [f"--boot={v}"]),
    st.text(max_size=8).filter(lambda v: v not in ("cached", "naive", "native", "identity"))
      .map(lambda v: [f"--mmu={v}"]),
    st.text(max_size=12).filter(lambda v: v != "base=utc").map(lambda v: [f"--rtc={v}"]),
)


@fuzz(400)
@given(args=bad_option)
def test_invalid_option_values_are_one_line_usage_errors(args):
    with workdir() as root:
        argv = [str(root / a) if a == "d.img" else a.replace("file=d.img", f"file={root}/d.img")
                for a in args]
        # Only add what the case does not set: argparse's last value would win.
        if not any(a.startswith("--serial=") for a in argv):
            argv.append("--serial=none")
        if not any(a.startswith("--timeout=") for a in argv):
            argv.append("--timeout=2")
        status, err = run_cli(root, argv)
        assert_usage_error(status, err, argv)


# -- input files that cannot work --------------------------------------------------------

def _bzimage(setup_sects: int, syssize: int, length: int) -> bytes:
    image = bytearray(max(length, 0x300))
    image[0x1F1] = setup_sects
    struct.pack_into("<I", image, 0x1F4, syssize // 16)
    image[0x201] = 0x6A
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<HH", image, 0x206, 0x20F, 0)
    struct.pack_into("<H", image, 0x236, 1)
    return bytes(image[:length])


def _multiboot_elf(filesz: int, memsz: int) -> bytes:
    header = bytearray(52)
    header[:7] = b"\x7fELF\x01\x01\x01"
    struct.pack_into("<HHIIII", header, 16, 2, 3, 1, 0x100000, 52, 0)
    struct.pack_into("<HHHHHH", header, 40, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<8I", 1, 0, 0x100000, 0x100000, filesz, memsz, 7, 0x1000)
    mb = struct.pack("<III", MB_MAGIC, 0, (-MB_MAGIC) & 0xFFFFFFFF)
    body = bytes(header) + phdr + mb
    return body + bytes(max(0, filesz - len(body)))


def _no_magic(data: bytes) -> bool:
    return struct.pack("<I", MB_MAGIC) not in data[:8192] and data[0x202:0x206] != b"HdrS"


bad_kernel = st.one_of(
    st.binary(min_size=1, max_size=9000).filter(_no_magic),
    st.builds(lambda sects, missing: _bzimage(sects, 1 << 20, ((sects or 4) + 1) * 512
                                              + (1 << 20) - missing),
              # syssize counts 16-byte paragraphs rounded up: 1-15 bytes short is no truncation
              st.integers(0, 60), st.integers(16, 1 << 20)),
    st.integers(0x300, 0x4000).map(lambda n: _bzimage(4, 0, n)),
    st.builds(lambda memsz, extra: _multiboot_elf(memsz + extra, memsz),
              st.integers(1, 4096), st.integers(1, 4096)),
    st.integers(1, 51).map(lambda n: b"\x7fELF" + bytes(n - 1) + struct.pack(
        "<III", MB_MAGIC, 0, (-MB_MAGIC) & 0xFFFFFFFF)),
)
def _aout_kludge(load_end_extra: int, bss_end: int) -> bytes:
    """A Multiboot a.out-kludge header at 1 MiB whose bss ends at ``bss_end``."""
    flags = 0x10000
    header = struct.pack("<III", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF)
    fields = struct.pack("<5I", 0x100000, 0x100000, 0x100000 + 64 + load_end_extra, bss_end,
                         0x100020)
    return header + fields + bytes(64)


oversized_kernel = st.one_of(
    st.integers(65 << 20, 0xFFFFFFFF - 0x100000).map(lambda m: _multiboot_elf(0x100, m)),
    st.integers(0x4100000, 0xFFFFFFFF).map(lambda end: _aout_kludge(0, end)),
    st.integers(33, 1 << 20).map(lambda extra: _aout_kludge(extra, 0)),  # past the file's end
    st.integers(64, 255).map(lambda n: _bzimage(4, 4096, 5 * 512 + 4096)[:0x260]
                             + struct.pack("<I", n << 20)
                             + _bzimage(4, 4096, 5 * 512 + 4096)[0x264:]),  # init_size > RAM
)
bad_disk = st.one_of(st.integers(1, 511), st.integers(513, 8191).filter(lambda n: n % 512))
bad_bios_size = st.integers(1, 70000).filter(lambda n: n != 0x10000)

# (role, kind, payload): kind is "dir", "fifo", "null", "empty" or "bytes".
special = st.sampled_from(["dir", "fifo", "null", "empty"])
bad_file = st.one_of(
    st.tuples(st.sampled_from(["disk", "hdb", "cdrom", "drive", "kernel", "bios", "initrd"]),
              special, st.just(b"")),
    st.tuples(st.just("disk"), st.just("bytes"), bad_disk.map(lambda n: DEFAULT_IMAGE[:n])),
    st.tuples(st.just("kernel"), st.just("bytes"), bad_kernel),
    st.tuples(st.just("kernel"), st.just("bytes"), oversized_kernel),
    st.tuples(st.just("initrd"), st.just("sparse"),
              st.integers(64 << 20, 1 << 40).map(lambda n: n.to_bytes(8, "little"))),
    st.tuples(st.just("bios"), st.just("bytes"), st.builds(lambda n, b: (b * n)[:n],
                                                           bad_bios_size, st.binary(min_size=1,
                                                                                    max_size=8))),
)


def _make(root: Path, kind: str, payload: bytes) -> str:
    if kind == "null":
        return "/dev/null"
    path = root / "input"
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "sparse":  # payload: the size, a hole larger than RAM
        with open(path, "wb") as f:
            f.truncate(int.from_bytes(payload, "little"))
    else:
        path.write_bytes(payload)
    return str(path)


ROLE_ARGS = {
    "disk": lambda p: [p], "hdb": lambda p: ["-hdb", p], "cdrom": lambda p: ["-cdrom", p],
    "drive": lambda p: [f"--drive=file={p}"], "kernel": lambda p: ["--kernel", p],
    "bios": lambda p: ["--bios", p],
}


@fuzz(300)
@given(case=bad_file)
def test_unusable_input_files_are_one_line_usage_errors(case):
    role, kind, payload = case
    with workdir() as root:
        path = _make(root, kind, payload)
        if role == "initrd":
            kernel = root / "bzImage"
            kernel.write_bytes(_bzimage(4, 4096, 5 * 512 + 4096))
            args = ["--kernel", str(kernel), "--initrd", path]
        else:
            args = ROLE_ARGS[role](path)
        out = root / "serial.txt"
        argv = [*args, f"--serial=file:{out}", "--timeout=2", "--no-reboot"]
        status, err = run_cli(root, argv, outputs=("serial.txt",))
        assert_usage_error(status, err, argv)
        assert not out.exists(), "an output was created before the inputs were checked"


# -- random headers that may or may not boot ---------------------------------------------

def _with_multiboot_header(flags: int, fields: list[int], tail: bytes) -> bytes:
    header = struct.pack("<III", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF)
    return header + struct.pack("<5I", *fields) + tail


maybe_kernel = st.one_of(
    st.builds(_with_multiboot_header, st.sampled_from([0, 1, 2, 3, 0x10000, 0x10003, 4, 8]),
              st.lists(st.one_of(st.integers(0, 2**32 - 1),
                                 st.integers(0x100000, 0x100100)), min_size=5, max_size=5),
              st.binary(max_size=256)),
    st.builds(lambda head, sects, sys_bytes: _bzimage(sects, sys_bytes, len(head))[:0x1F1]
              + head[0x1F1:0x202] + b"HdrS" + head[0x206:],
              st.binary(min_size=0x300, max_size=0x1400), st.integers(0, 8),
              st.integers(0, 0x2000)),
)
maybe_disk = st.builds(lambda code, sectors: (code * 510)[:510] + b"\x55\xAA"
                       + bytes(512 * (sectors - 1)),
                       st.binary(min_size=1, max_size=64), st.integers(1, 4))


@fuzz(40)
@given(kernel=maybe_kernel)
def test_random_kernel_headers_never_crash_the_cli(kernel):
    with workdir() as root:
        path = root / "kernel"
        path.write_bytes(kernel)
        argv = ["--kernel", str(path), "-m", "16M", f"--serial=file:{root}/serial.txt",
                "--timeout=0.3", "--no-reboot"]
        status, err = run_cli_isolated(root, argv, outputs=("serial.txt",))
        if status == 2:
            assert_usage_error(status, err, argv)


@fuzz(20)
@given(disk=maybe_disk, as_cdrom=st.booleans())
def test_random_boot_sectors_never_crash_the_cli(disk, as_cdrom):
    with workdir() as root:
        path = root / "disk.img"
        path.write_bytes(disk)
        where = ["-cdrom", str(path), "--boot", "d"] if as_cdrom else [str(path), "--snapshot"]
        argv = [*where, "-m", "16M", f"--serial=file:{root}/serial.txt", "--timeout=0.3",
                "--no-reboot"]
        status, err = run_cli_isolated(root, argv, outputs=("serial.txt",))
        if status == 2:
            assert_usage_error(status, err, argv)


@pytest.mark.xfail(not is_patched("g"), strict=True,
                   reason="stock Unicorn 2.1.4 segfaults translating this block: its QEMU 5 "
                   "translator leaks a tcg_const_i32 temp per INTO, and ~500 in one TB overrun "
                   "TCG_MAX_TEMPS (crash in tcg_emit_op from disas_insn); engine patch g bounds "
                   "a block by its temps")
def test_a_boot_sector_of_into_instructions_does_not_crash_the_host(tmp_path):
    disk = tmp_path / "into.img"
    disk.write_bytes(b"\xCE" * 510 + b"\x55\xAA")  # 510 x INTO, then the boot signature
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", str(disk), "--snapshot",
                           "-m", "16M", "--serial", "none", "--timeout", "0.5", "--no-reboot"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}"


@fuzz(15)
@given(bios=st.binary(min_size=16, max_size=256), reset_jump=st.booleans())
def test_random_bios_images_never_crash_the_cli(bios, reset_jump):
    image = (bios * (0x10000 // len(bios) + 1))[:0x10000]
    if reset_jump:  # make the reset vector jump into the random bytes
        image = image[:0xFFF0] + b"\xEA\x00\x00\x00\xF0" + image[0xFFF5:]
    with workdir() as root:
        path = root / "bios.bin"
        path.write_bytes(image)
        argv = ["--bios", str(path), "-m", "16M", f"--serial=file:{root}/serial.txt",
                "--timeout=0.3", "--no-reboot"]
        status, err = run_cli_isolated(root, argv, outputs=("serial.txt",))
        if status == 2:
            assert_usage_error(status, err, argv)


def test_the_harness_notices_an_undeclared_output():
    # The "no other file changed" check can fail: the serial file, not declared here.
    with workdir() as root:
        argv = [str(root / "d.img"), "--snapshot", f"--serial=file:{root}/serial.txt",
                "--timeout=30"]
        try:
            run_cli(root, argv)
        except AssertionError as exc:
            assert "files changed" in str(exc)
        else:
            raise AssertionError("an undeclared output went unnoticed")
