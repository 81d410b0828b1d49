"""qemu_lite: a small x86 PC emulator driven from Python."""
