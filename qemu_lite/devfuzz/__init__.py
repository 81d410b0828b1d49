"""Device fuzzing: every device model driven by random register sequences under invariants.

``python -m qemu_lite.devfuzz list`` names the targets; ``run TARGET`` fuzzes one with
atheris (libFuzzer, coverage of the device modules) or a seeded random source;
``replay TARGET FILE...`` re-runs reproducers; ``campaign`` runs every target in its own
process and tabulates the inputs each ran.  :mod:`.harness` holds the invariants,
:mod:`.targets` the devices as pc.py wires them, :mod:`.board` the whole machine driven
by a guest.
"""
