"""The GDB stub: Debian's gdb in batch mode, and the protocol spoken by hand, against
``qemu-lite -S --gdb`` on a Multiboot kernel with symbols that enters long mode."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import smpguest

# 32-bit entry, a variable, then long mode; prints one line in each mode and exits with 0x21.
KERNEL = r"""
bits 32
section .text
global start, mark32, switch64, lm64, spin, counter
align 4
    dd 0x1BADB002, 0x3, -(0x1BADB002 + 0x3)
start:
    mov esp, stack_top
    mov esi, msg32
    call puts32
mark32:
    mov eax, [counter]
    add eax, 1
    mov [counter], eax
    lgdt [gdtr]
    jmp 0x08:reload
reload:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov dword [pml4], pdpt + 3
    mov dword [pdpt], pd + 3
    mov dword [pd], 0x83
    mov dword [pd + 8], 0x200083
    mov eax, pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
switch64:
    jmp 0x18:lm64
puts32:
    lodsb
    test al, al
    jz .done
    mov dx, 0x3F8
    out dx, al
    jmp puts32
.done:
    ret
bits 64
lm64:
    mov esi, msg64
.next:
    lodsb
    test al, al
    jz .done
    mov dx, 0x3F8
    out dx, al
    jmp .next
.done:
    add dword [counter], 1
    cmp dword [counter], 0x1236
    jne spin
    mov al, 0x21
    out 0xF4, al
    hlt
spin:                       ; reached only with -Dspin: a guest that never ends
    jmp spin

section .data
counter: dd 0x1234
msg32: db "kernel: 32-bit", 10, 0
msg64: db "kernel: 64-bit", 10, 0
align 8
gdt: dq 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00AF9A000000FFFF
gdtr: dw 31
    dd gdt

section .bss
alignb 4096
pml4: resb 4096
pdpt: resb 4096
pd: resb 4096
    resb 4096
stack_top:
"""

EXPECTED_OUTPUT = "kernel: 32-bit\nkernel: 64-bit\n"


@pytest.fixture
def kernel(nasm_path: str, tmp_path: Path) -> Path:
    ld = shutil.which("ld")
    if ld is None:
        pytest.skip("ld (binutils) not installed: needed to link the ELF test kernel")
    src = tmp_path / "k.asm"
    src.write_text(KERNEL)
    obj = tmp_path / "k.o"
    subprocess.run([nasm_path, "-f", "elf32", "-o", str(obj), str(src)], check=True)
    elf = tmp_path / "k.elf"
    subprocess.run([ld, "-m", "elf_i386", "-Ttext=0x200000", "-e", "start", "-o", str(elf),
                    str(obj)], check=True)
    return elf


def _symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {name: int(addr, 16) for addr, _, name in (line.split() for line in out.splitlines())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(kernel: Path, *gdb_args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "qemu_lite", "--kernel", str(kernel),
                             "--timeout", "60", *gdb_args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the stub listens once this is printed
    assert "gdb stub listening" in line, line
    return proc


def test_gdb_breaks_reads_and_steps_into_long_mode(kernel: Path, tmp_path: Path):
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb not installed (apt-get install gdb)")
    plain = subprocess.run([sys.executable, "-m", "qemu_lite", "--kernel", str(kernel),
                            "--timeout", "60"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    assert (plain.returncode, plain.stdout) == (0x43, EXPECTED_OUTPUT)
    sym = _symbols(kernel)
    port = _free_port()
    proc = _start(kernel, "-S", "--gdb", f"tcp::{port}")
    script = [
        "set pagination off", "set confirm off",
        f"target remote 127.0.0.1:{port}",
        "echo @pc-at-attach\\n", "print/x $pc",
        "break mark32", "continue",
        "echo @at-mark32\\n", "print/x $pc", "print/x $esp",
        "print/x *(unsigned int *)&counter",
        "stepi", "stepi", "stepi",
        "echo @after-3-steps\\n", "print/x $eax",
        "break switch64", "continue",
        "echo @at-switch64\\n", "print/x $cr0", "print/x $efer",
        "stepi",
        "echo @in-long-mode\\n", "print/x $pc", "print/x $cs",
        "monitor info mmu",
        # 0x500000 is RAM but not mapped by the kernel's page tables (4 MiB identity).
        "print/x *(unsigned int *)0x500000",
        "maint packet Qqemu.PhyMemMode:1",
        "set var *(unsigned int *)0x500000 = 0x5a5a1234",
        "echo @physical\\n", "print/x *(unsigned int *)0x500000",
        "monitor phys-mem-mode off",
        "watch *(unsigned int *)&counter", "continue",
        "echo @after-watch\\n", "print/x *(unsigned int *)&counter",
        "delete", "continue",
    ]
    cmd = [gdb, "-batch", "-nx", *sum((["-ex", c] for c in script), []), str(kernel)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)  # where a gdb core file would go
    out, err = proc.communicate(timeout=60)
    text = result.stdout
    assert "Remote 'g' packet reply is too long" not in result.stderr, result.stderr

    def after(tag: str) -> list[str]:
        return re.findall(r"= (0x[0-9a-f]+)", text.split(tag, 1)[1])

    assert int(after("@pc-at-attach")[0], 16) == sym["start"]
    pc, esp, counter = after("@at-mark32")[:3]
    assert int(pc, 16) == sym["mark32"]
    assert int(esp, 16) == sym["stack_top"]
    assert int(counter, 16) == 0x1234
    assert int(after("@after-3-steps")[0], 16) == 0x1235  # mov, add, mov executed
    cr0, efer = after("@at-switch64")[:2]
    assert int(cr0, 16) & 0x80000001 == 0x80000001
    assert int(efer, 16) & 0x500 == 0x500  # LME and LMA: in compatibility mode now
    pc64, cs = after("@in-long-mode")[:2]
    assert int(pc64, 16) == sym["lm64"] and int(cs, 16) == 0x18
    assert "MMU mode cached" in text + result.stderr  # monitor output
    assert "Cannot access memory at address 0x500000" in result.stderr
    assert int(after("@physical")[0], 16) == 0x5A5A1234
    assert "memory packets address virtual memory" in text + result.stderr
    assert re.search(r"Hardware watchpoint \d+: \*\(unsigned int \*\)&counter\s+"
                     r"Old value = 4661\s+New value = 4662", text), text
    assert int(after("@after-watch")[0], 16) == 0x1236
    assert "exited with code 0103" in text, text + result.stderr  # 0x43, in octal
    assert (proc.returncode, out) == (0x43, EXPECTED_OUTPUT)  # unchanged by debugging


class Client:
    """The remote protocol by hand: what the stub must answer, packet by packet."""

    def __init__(self, address: str | tuple[str, int]) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.connect(address)
        self.sock.settimeout(30)
        self.buf = b""

    def send(self, body: str) -> None:
        data = body.encode()
        self.sock.sendall(b"$%s#%02x" % (data, sum(data) & 0xFF))

    def recv(self) -> str:
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                body = self.buf[start + 1:end]
                assert b"%02x" % (sum(body) & 0xFF) == self.buf[end + 1:end + 3]
                self.buf = self.buf[end + 3:]
                return body.decode()
            chunk = self.sock.recv(65536)
            assert chunk, "stub closed the connection"
            self.buf += chunk

    def ask(self, body: str) -> str:
        self.send(body)
        return self.recv()


def test_protocol_by_hand_ctrl_c_and_kill(kernel: Path, tmp_path: Path):
    sym = _symbols(kernel)
    path = str(tmp_path / "gdb.sock")
    proc = _start(kernel, "-S", "--gdb", f"unix:{path}")
    try:
        c = Client(path)
        assert "qXfer:features:read+" in c.ask("qSupported:multiprocess+;swbreak+")
        xml = c.ask("qXfer:features:read:target.xml:0,ffff")
        assert xml.startswith("l") and "<architecture>i386</architecture>" in xml
        assert 'name="fs_base"' in xml and 'name="efer"' in xml and 'name="cr3"' in xml
        assert c.ask("?").startswith("T05")
        assert (c.ask("qAttached"), c.ask("qC"), c.ask("qfThreadInfo")) == ("1", "QC01", "m01")
        regs = c.ask("g")
        assert int.from_bytes(bytes.fromhex(regs[64:72]), "little") == sym["start"]  # eip
        counter = c.ask(f"m{sym['counter']:x},4")
        assert int.from_bytes(bytes.fromhex(counter), "little") == 0x1234
        assert c.ask(f"M{sym['counter']:x},4:00000000") == "OK"  # the guest will spin
        assert c.ask("m80000000,4").startswith("E")   # not RAM or ROM: an error, no crash
        assert c.ask(f"Z0,{sym['lm64']:x},1") == "OK"
        assert c.ask("vCont?").startswith("vCont")
        c.send("vCont;c")
        assert c.recv().startswith("T05")
        assert len(c.ask("g")) == len(regs)  # the layout of the attach, in long mode too
        assert int.from_bytes(bytes.fromhex(c.ask("p8")), "little") == sym["lm64"]  # eip
        assert c.ask(f"z0,{sym['lm64']:x},1") == "OK"
        assert c.ask("m500000,4") == "E0e"  # linear: not mapped in long mode
        assert (c.ask("qqemu.PhyMemMode"), c.ask("Qqemu.PhysMemMode:1")) == ("0", "OK")
        assert c.ask("M500000,4:78563412") == "OK"
        assert (c.ask("qqemu.PhyMemMode"), c.ask("m500000,4")) == ("1", "78563412")
        assert c.ask("Qqemu.PhyMemMode:2").startswith("E")
        mon = c.ask("qRcmd," + b"phys-mem-mode off".hex())
        assert "virtual" in bytes.fromhex(mon[1:]).decode() and c.recv() == "OK"
        assert c.ask("m500000,4") == "E0e"
        c.send("c")
        time.sleep(0.5)            # the guest spins now (counter was zeroed)
        c.sock.sendall(b"\x03")    # Ctrl-C through the wake path
        assert c.recv().startswith("T02")
        pc = int.from_bytes(bytes.fromhex(c.ask("p8")), "little")
        assert sym["lm64"] < pc <= sym["spin"] + 2
        mon = c.ask("qRcmd," + b"info registers".hex())
        assert mon.startswith("O") and "cr3" in bytes.fromhex(mon[1:]).decode()
        assert c.recv() == "OK"
        c.send("k")
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0


def test_bad_gdb_spec_is_a_one_line_error(kernel: Path):
    proc = subprocess.run([sys.executable, "-m", "qemu_lite", "--kernel", str(kernel),
                           "--gdb", "bogus:1"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir(), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "qemu-lite: invalid --gdb 'bogus:1' (use tcp::PORT, tcp:HOST:PORT or unix:PATH)"]


def _kallsyms(bzimage: str) -> dict[str, int]:
    # Debian's /boot/System.map is a placeholder (the real one ships in the -dbg
    # package); kallsyms-finder reads the same table out of the kernel image.
    finder = shutil.which("kallsyms-finder") or str(Path(sys.executable).parent / "kallsyms-finder")
    if not Path(finder).exists():
        pytest.skip("kallsyms-finder (pip install vmlinux-to-elf) not installed")
    out = subprocess.run([finder, bzimage], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and len(parts[0]) == 16:
            syms[parts[2]] = int(parts[0], 16)
    return syms


def test_gdb_on_debian_kernel_breaks_at_entry_and_start_kernel(tmp_path: Path):
    from qemu_lite import imagebuild
    from qemu_lite.loaders.linux import KERNEL_LOAD

    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb not installed (apt-get install gdb)")
    try:
        bzimage = imagebuild.find_kernel()
    except imagebuild.ToolMissing as exc:
        pytest.skip(str(exc))
    sym = _kallsyms(bzimage)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qemu_lite", "-m", "256M", "--kernel", bzimage,
                             "--append", "console=ttyS0 nokaslr", "--timeout", "120",
                             "-S", "--gdb", f"tcp::{port}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert proc.stderr is not None and "gdb stub listening" in proc.stderr.readline()
    script = [
        "set pagination off", "set confirm off",
        f"target remote 127.0.0.1:{port}",
        "echo @entry\\n", "print/x $pc", "print/x $cs", "print/x $efer",
        "print/x *(unsigned int *)($rsi + 0x202)",           # boot_params: "HdrS"
        f"break *{sym['start_kernel']:#x}", "continue",
        "echo @start_kernel\\n", "print/x $pc", "print/x $cr3",
        f"x/s {sym['linux_banner']:#x}",
        "stepi", "echo @stepped\\n", "print/x $pc",
        "kill",
    ]
    cmd = [gdb, "-batch", "-nx", *sum((["-ex", c] for c in script), [])]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        out, _ = proc.communicate()
    text = result.stdout

    def after(tag: str) -> list[int]:
        return [int(v, 16) for v in re.findall(r"= (0x[0-9a-f]+)", text.split(tag, 1)[1])]

    pc, cs, efer, hdrs = after("@entry")[:4]
    assert pc == KERNEL_LOAD + 0x200 and cs == 0x10 and efer & 0x500 == 0x500
    assert hdrs == int.from_bytes(b"HdrS", "little")
    pc, cr3 = after("@start_kernel")[:2]
    assert pc == sym["start_kernel"]  # the full 64-bit RIP, not truncated
    assert cr3 != 0
    assert "Linux version " in text  # linux_banner read through the kernel's page tables
    # start_kernel opens with `call __fentry__` (ftrace patches it out later in boot)
    assert after("@stepped")[0] == sym["__fentry__"]
    assert proc.returncode == 0 and "Linux version" not in out  # killed before any printk


def test_gdb_sees_each_vcpu_as_a_thread(assemble, tmp_path: Path):
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb not installed (apt-get install gdb)")
    map_file = tmp_path / "pingpong.map"
    kernel = tmp_path / "pingpong.bin"
    kernel.write_bytes(assemble(smpguest.source(map_file=str(map_file))))
    sym = smpguest.symbols(str(map_file))
    port = _free_port()
    proc = _start(kernel, "-smp", "2", "-m", "16M", "--vga", "none", "-S",
                  "--gdb", f"tcp::{port}")
    script = [
        "set pagination off", "set confirm off",
        f"target remote 127.0.0.1:{port}",
        "echo @threads-at-attach\\n", "info threads",
        # Only the AP runs the request handler: the stop is on thread 2.
        f"hbreak *{sym['ap_request']:#x}", "continue",
        "echo @at-handler\\n", "info threads",
        "thread 1", "echo @bsp\\n", "info registers eip esp",
        "thread 2", "echo @ap\\n", "info registers eip esp",
        "stepi", "echo @ap-stepped\\n", "info registers eip",
        "thread 1", "echo @bsp-again\\n", "info registers eip",
        "delete", "detach",
    ]
    cmd = [gdb, "-batch", "-nx", *sum((["-ex", c] for c in script), [])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    text = result.stdout

    def section(tag: str) -> str:
        assert f"@{tag}\n" in text, text + "\n-----\n" + result.stderr
        return text.split(f"@{tag}\n", 1)[1].split("@", 1)[0]

    def reg(tag: str, name: str) -> int:
        found = re.search(rf"^{name}\s+(0x[0-9a-f]+)", section(tag), re.M)
        assert found, (tag, text, result.stderr)
        return int(found[1], 16)

    attach = section("threads-at-attach")
    assert "CPU#0 [running]" in attach and "CPU#1 [wait-for-sipi]" in attach, text
    threads = section("at-handler")
    assert re.search(r"^\*\s+2\s+Thread 2 \(CPU#1 \[running\]\)", threads, re.M), threads
    assert re.search(r"^\s+1\s+Thread 1 \(CPU#0", threads, re.M), threads
    assert reg("ap", "eip") == sym["ap_request"]
    assert 0x60000 < reg("ap", "esp") <= 0x70000  # the AP's stack
    assert 0x80000 < reg("bsp", "esp") <= 0x90000  # the BSP's
    assert reg("bsp", "eip") != sym["ap_request"]
    assert reg("ap-stepped", "eip") == sym["ap_request"] + 1  # PUSHA: one byte
    assert reg("bsp-again", "eip") == reg("bsp", "eip")  # the step ran the AP alone
    # Detached: the guest goes on and its output is the undebugged one.
    assert proc.returncode == 1, err
    assert out == smpguest.expected()
