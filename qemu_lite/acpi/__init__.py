"""Firmware tables of the ``pc`` machine: ACPI (tables.py, with aml.py) and MP (mptable.py)."""
