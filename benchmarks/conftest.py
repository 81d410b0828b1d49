"""pytest configuration of the benchmark suites (``pytest benchmarks/ --benchmark-only``).

Files are named ``bench_*.py``, one per question; this conftest collects them
(the project's ``python_files`` setting is pytest's default, ``test_*.py``).
The Linux boot group is marked ``linux`` and runs by default; deselect it with
``-m "not linux"``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from workloads import GuestBuilder  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "linux: boots Debian's kernel under each MMU mode and under QEMU "
        "(deselect with -m 'not linux')")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def guests(tmp_path_factory: pytest.TempPathFactory) -> GuestBuilder:
    """Assembles guests from benchmarks/guests/ into a session temp dir, once each."""
    return GuestBuilder(tmp_path_factory.mktemp("guests"))


@pytest.fixture(scope="session")
def reference_output() -> dict[str, str]:
    """The first checksum line seen per workload; every other mode must print the same."""
    return {}
