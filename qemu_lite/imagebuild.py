"""Build real boot images from the host's Debian packages (for tests, benchmarks and users).

Each helper raises :class:`ToolMissing` naming the Debian package to install
when something it needs is not on the host.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from qemu_lite.initramfs import S_IFREG, busybox_initramfs, cpio_newc


class ToolMissing(RuntimeError):
    """A host tool or file is missing; the message says which package provides it."""


def find_kernel() -> str:
    """The newest Debian kernel in /boot."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        raise ToolMissing("no Debian kernel in /boot: apt-get install linux-image-amd64")
    if not os.access(kernels[-1], os.R_OK):
        raise ToolMissing(f"{kernels[-1]} is not readable by this user (chmod a+r)")
    return kernels[-1]


I386_KERNEL = ("/usr/lib/debian-installer/images/12/i386/text/debian-installer/i386/linux")


def find_i386_kernel() -> str:
    """Debian's 32-bit (686) kernel, from its i386 netboot installer package."""
    if not os.path.isfile(I386_KERNEL):
        raise ToolMissing("no Debian i386 kernel: apt-get install "
                          "debian-installer-12-netboot-i386")
    return I386_KERNEL


def find_busybox() -> str:
    path = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path):
        raise ToolMissing("busybox not installed: apt-get install busybox-static")
    return path


def write_initramfs(path: Path, init_script: str) -> Path:
    """A busybox initramfs whose /init runs ``init_script``."""
    path.write_bytes(busybox_initramfs(find_busybox(), init_script))
    return path


# /init for a 32-bit kernel (Debian's busybox is amd64): writes the line below and
# the kernel's release and machine (uname) on /dev/console, then powers off.
I386_INIT_ASM = r"""
bits 32
global _start
section .text
_start:
    mov eax, 5                      ; open("/dev/console", O_WRONLY)
    mov ebx, console
    mov ecx, 1
    int 0x80
    test eax, eax
    jns .have_fd
    mov eax, 1                      ; no console node: stdout as the kernel left it
.have_fd:
    mov [fd], eax
    mov esi, reached
    call write_str
    mov eax, 122                    ; uname(&uts)
    mov ebx, uts
    int 0x80
    mov esi, uname_is
    call write_str
    mov esi, uts + 2 * 65           ; release
    call write_str
    mov esi, space
    call write_str
    mov esi, uts + 4 * 65           ; machine
    call write_str
    mov esi, newline
    call write_str
    mov eax, 88                     ; reboot(magic, magic2, POWER_OFF)
    mov ebx, 0xFEE1DEAD
    mov ecx, 672274793
    mov edx, 0x4321FEDC
    int 0x80
.hang:
    jmp .hang
write_str:                          ; ESI: zero-terminated
    mov edx, esi
.len:
    cmp byte [edx], 0
    je .go
    inc edx
    jmp .len
.go:
    sub edx, esi
    mov eax, 4
    mov ebx, [fd]
    mov ecx, esi
    int 0x80
    ret
section .note.GNU-stack noalloc noexec nowrite progbits
section .data
console: db "/dev/console", 0
reached: db "qemu_lite init: userspace reached", 10, 0
uname_is: db "i386 init: uname ", 0
space: db " ", 0
newline: db 10, 0
section .bss
fd: resd 1
uts: resb 6 * 65
"""


def i386_init(workdir: Path) -> bytes:
    """A static i386 ELF /init, assembled with nasm and linked with ``ld -m elf_i386``."""
    for tool, package in (("nasm", "nasm"), ("ld", "binutils")):
        if shutil.which(tool) is None:
            raise ToolMissing(f"{tool} not installed: apt-get install {package}")
    src, obj, exe = workdir / "init.asm", workdir / "init.o", workdir / "init"
    src.write_text(I386_INIT_ASM)
    for cmd in (["nasm", "-f", "elf32", "-o", str(obj), str(src)],
                ["ld", "-m", "elf_i386", "-static", "-o", str(exe), str(obj)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{cmd[0]} failed:\n{proc.stderr}")
    return exe.read_bytes()


def write_i386_initramfs(path: Path) -> Path:
    """An initramfs whose /init is :func:`i386_init` (no shell, no busybox)."""
    path.write_bytes(cpio_newc([("init", S_IFREG | 0o755, i386_init(path.parent))]))
    return path


def grub_cfg(append: str, linux16: bool = False) -> str:
    """GRUB's menu: ``linux16``/``initrd16`` boot through the kernel's 16-bit setup entry."""
    suffix = "16" if linux16 else ""
    return ("serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n"
            "set timeout=0\nmenuentry \"Debian kernel, busybox initramfs\" {\n"
            f"    linux{suffix} /vmlinuz {append}\n    initrd{suffix} /initrd.img\n}}\n")


def grub_rescue_image(workdir: Path, init_script: str,
                      append: str = "console=ttyS0 panic=-1", linux16: bool = False,
                      kernel: str | None = None, initrd: Path | None = None) -> Path:
    """A ``grub-mkrescue`` hybrid ISO (boots as a disk or a CD) with the kernel and initramfs.

    ``kernel`` defaults to :func:`find_kernel`; ``initrd`` (a file) to a busybox
    initramfs running ``init_script``."""
    mkrescue = shutil.which("grub-mkrescue")
    if mkrescue is None:
        raise ToolMissing("grub-mkrescue not installed: apt-get install grub-common grub-pc-bin")
    for tool, package in (("xorriso", "xorriso"), ("mformat", "mtools")):
        if shutil.which(tool) is None:
            raise ToolMissing(f"{tool} not installed: apt-get install {package}")
    if not os.path.isdir("/usr/lib/grub/i386-pc"):
        raise ToolMissing("GRUB's BIOS platform files missing: apt-get install grub-pc-bin")
    root = workdir / "iso"
    (root / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    (root / "boot" / "grub" / "grub.cfg").write_text(grub_cfg(append, linux16))
    shutil.copyfile(kernel or find_kernel(), root / "vmlinuz")
    if initrd is not None:
        shutil.copyfile(initrd, root / "initrd.img")
    else:
        write_initramfs(root / "initrd.img", init_script)
    image = workdir / "grub.img"
    proc = subprocess.run([mkrescue, "-o", str(image), str(root)], capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"grub-mkrescue failed:\n{proc.stderr}")
    return image


def debian_initrd(workdir: Path, kernel: str | None = None) -> str:
    """initramfs-tools' initrd for the installed kernel: ``/boot/initrd.img-VERSION`` as
    the package built it, else one built now with ``mkinitramfs`` into ``workdir``."""
    kernel = kernel or find_kernel()
    version = os.path.basename(kernel).removeprefix("vmlinuz-")
    installed = f"/boot/initrd.img-{version}"
    if os.access(installed, os.R_OK):
        return installed
    mkinitramfs = shutil.which("mkinitramfs") or "/usr/sbin/mkinitramfs"
    if not os.path.exists(mkinitramfs):
        raise ToolMissing("mkinitramfs not installed: apt-get install initramfs-tools")
    if not os.path.isdir(f"/lib/modules/{version}"):
        raise ToolMissing(f"no modules for {version} in /lib/modules: apt-get install "
                          f"linux-image-{version}")
    out = workdir / f"initrd.img-{version}"
    proc = subprocess.run([mkinitramfs, "-o", str(out), version], capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"mkinitramfs failed:\n{proc.stderr}")
    return str(out)


ROOT_INITTAB = """\
::sysinit:/bin/busybox mount -t proc proc /proc
ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100
"""


def busybox_root_image(path: Path, password: str, size_mib: int = 16) -> Path:
    """A raw ext4 filesystem (no partition table) holding busybox as /sbin/init, an
    inittab running getty on ttyS0, and root's account with ``password``: built with
    ``mke2fs -d``, no root privileges needed."""
    mke2fs = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
    if not os.path.exists(mke2fs):
        raise ToolMissing("mke2fs not installed: apt-get install e2fsprogs")
    busybox = find_busybox()
    proc = subprocess.run([busybox, "mkpasswd", "-m", "sha512", password, "qemulite"],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"busybox mkpasswd failed:\n{proc.stderr}")
    digest = proc.stdout.strip()
    tree = path.parent / (path.name + ".d")
    for d in ("bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp", "root"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    os.chmod(tree / "bin" / "busybox", 0o755)
    for name in ("sh", "mount", "uname", "echo", "cat"):
        os.symlink("busybox", tree / "bin" / name)
    for name in ("init", "getty", "poweroff"):
        os.symlink("../bin/busybox", tree / "sbin" / name)
    os.symlink("../bin/busybox", tree / "bin" / "login")
    (tree / "etc" / "inittab").write_text(ROOT_INITTAB)
    (tree / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc" / "shadow").write_text(f"root:{digest}:19000:0:99999:7:::\n")
    (tree / "etc" / "group").write_text("root:x:0:\n")
    (tree / "etc" / "hostname").write_text("qemulite\n")
    proc = subprocess.run([mke2fs, "-q", "-F", "-t", "ext4", "-L", "qlroot",
                           "-E", "root_owner=0:0", "-d", str(tree), str(path),
                           f"{size_mib}M"], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"mke2fs failed:\n{proc.stderr}")
    return path
