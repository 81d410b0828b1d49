"""PC device models (installed as ``qemu_lite.devices``).

Devices know nothing of Unicorn: they see register offsets, an interrupt line
and a clock, so each one can be tested alone with fakes from :mod:`.base`.
"""
