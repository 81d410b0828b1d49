"""Network boot with iPXE (Debian's package), a third-party BIOS program that drives the
e1000 itself: its CD-ROM image boots (ISOLINUX, which loads iPXE) through our El Torito
path, iPXE finds the NIC
through the PCI BIOS (INT 1Ah B1h), gets an address and a boot file name from libslirp's
DHCP, fetches its script, a Debian kernel and an initramfs over TFTP, and starts the kernel
through the Linux boot protocol from real mode.  Linux's /init prints a word of the command line
the script gave it, and powers off.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from images import initramfs, kernel

from qemu_lite import Machine
from qemu_lite.devices.netbackends import parse_nic
from qemu_lite.devices.slirp import SlirpMissing, library
from qemu_lite.loaders import linux

IPXE_ISO = Path("/usr/lib/ipxe/ipxe.iso")
IPXE_LKRN = Path("/usr/lib/ipxe/ipxe.lkrn")  # iPXE as a Linux kernel (boot protocol 2.07)
IPXE_ROM = Path("/usr/lib/ipxe/82540em.rom")  # iPXE as the e1000's PXE option ROM (73.5 KiB)
MEDIA = {"cdrom": IPXE_ISO, "kernel": IPXE_LKRN, "option-rom": IPXE_ROM}

SCRIPT = """#!ipxe
kernel vmlinuz console=ttyS0 panic=-1 netboot=ipxe
initrd initrd.cpio
boot
"""
# The kernel hands init unknown name=value words of its command line as its environment.
NETBOOT_INIT = "busybox echo \"netboot: $netboot\"\nbusybox poweroff -f\n"


def _tftp_tree(tmp_path: Path) -> Path:
    """The TFTP directory: Debian's kernel and an initramfs that prints $netboot and powers
    off (skips where libslirp, the kernel or busybox is missing)."""
    try:
        library()
    except SlirpMissing as exc:
        pytest.skip(str(exc))
    served = tmp_path / "tftp"
    served.mkdir()
    initramfs(served / "initrd.cpio", NETBOOT_INIT)
    shutil.copyfile(kernel(), served / "vmlinuz")
    return served


@pytest.mark.parametrize("medium", list(MEDIA))
def test_ipxe_netboots_linux_over_tftp(tmp_path: Path, medium: str) -> None:
    """From its CD image; as a kernel through the 16-bit Linux entry (its protocol is too
    old for the others), as ``qemu -kernel ipxe.lkrn`` boots it; or as the NIC's option ROM,
    which finds our PnP BIOS structure at its initialisation and boots through its boot
    entry vector once no disk is bootable (the BIOS Boot Specification's way)."""
    image = MEDIA[medium]
    if not image.exists():
        pytest.skip(f"{image} missing: apt-get install ipxe")
    served = _tftp_tree(tmp_path)
    (served / "boot.ipxe").write_text(SCRIPT)
    nic = parse_nic(f"user,tftp={served},bootfile=boot.ipxe")
    out = bytearray()
    media = {"cdrom": {"cdrom": str(image), "boot": "d"}, "kernel": {},
             "option-rom": {"option_roms": [str(image)]}}[medium]
    with Machine(memory="512M", nics=[nic], **media) as m:
        m.board.com1.add_output_listener(out.extend)
        if medium == "kernel":
            linux.load(m, image)
        result = m.run(timeout=600)
    text = out.decode(errors="replace")
    assert "iPXE" in text, text[-3000:]
    if medium == "option-rom":  # its banner names what it found at initialisation
        assert "iPXE (http://ipxe.org) 00:03.0 CA00 PCI2.10 PnP" in text, text[:2000]
        assert "Booting from the option ROM at segment CA00h" in text, text[:2000]
    # iPXE's own driver on our NIC, found through the PCI BIOS
    assert "using 82540em on 0000:00:03.0" in text, text[-3000:]
    assert "10.0.2.15" in text and "boot.ipxe" in text, text[-3000:]
    assert "netboot: ipxe" in text, text[-3000:]  # the script's command line reached init
    assert result.reason == "powered-off", (result, text[-3000:])


GRUB_CFG = """serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "netboot" {
  echo "grub: loading over tftp from $net_default_server"
  linux (tftp)/vmlinuz console=ttyS0 panic=-1 netboot=grub
  initrd (tftp)/initrd.cpio
}
"""


def test_grub_pxe_image_loads_linux_through_ipxe_pxe_stack(tmp_path: Path) -> None:
    """GRUB's network image (grub-mknetdir's core.0) as the DHCP boot file of iPXE's PXE
    ROM: a PXE network bootstrap program, which reads its config, a kernel and an initramfs
    through the PXE API (iPXE's UNDI on our e1000) rather than through a driver of its own."""
    mknetdir = shutil.which("grub-mknetdir")
    if mknetdir is None or not Path("/usr/lib/grub/i386-pc/pxe.mod").exists() \
            or not IPXE_ROM.exists():
        pytest.skip("needs grub-mknetdir, grub-pc-bin and ipxe (apt-get install grub-common "
                    "grub-pc-bin ipxe)")
    served = _tftp_tree(tmp_path)
    subprocess.run([mknetdir, f"--net-directory={served}", "--subdir=boot/grub",
                    "-d", "/usr/lib/grub/i386-pc"], check=True, capture_output=True)
    (served / "boot/grub/grub.cfg").write_text(GRUB_CFG)
    nic = parse_nic(f"user,tftp={served},bootfile=boot/grub/i386-pc/core.0")
    out = bytearray()
    with Machine(memory="512M", option_roms=[str(IPXE_ROM)], nics=[nic]) as m:
        m.board.com1.add_output_listener(out.extend)
        result = m.run(timeout=600)
    text = out.decode(errors="replace")
    assert "grub: loading over tftp from 10.0.2.2" in text, text[-3000:]
    assert "netboot: grub" in text, text[-3000:]
    assert result.reason == "powered-off", (result, text[-3000:])
