"""``--mmu-contexts``, ``--mmu-prefetch`` and ``--mmu-stats``: the bundled guest's three
processes switch address spaces 600 times, which the statistics printed at exit must
show."""

from __future__ import annotations

import pytest

from qemu_lite import cli


def run(capsys, *args: str) -> tuple[int, str]:
    status = cli.main(list(args))
    return status, capsys.readouterr().err


def stats(err: str) -> dict[str, str]:
    rows = [line.split() for line in err.splitlines() if line.startswith("  ")]
    return {row[0]: row[1] for row in rows if len(row) == 2}


@pytest.mark.parametrize("value", ["x", "-1", "4097", "1e3"])
def test_bad_context_counts_are_one_line_usage_errors(capsys, value):
    status, err = run(capsys, "--mmu-contexts", value, "--serial", "none")
    assert status == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "0 to 4096" in err, err


@pytest.mark.requires_patched_engine("i")
@pytest.mark.parametrize("contexts", [0, 4])
def test_mmu_stats_show_parked_and_restored_contexts(capsys, contexts):
    status, err = run(capsys, "--mmu-contexts", str(contexts), "--mmu-stats",
                      "--serial", "none", "--timeout", "60")
    assert status == 1, err
    s = stats(err)
    assert int(s["tlb_contexts_max"]) == contexts
    assert int(s["cr3_loads"]) >= 600
    if contexts:
        assert int(s["ctx_restored"]) > 500 and int(s["ctx_fills_avoided"]) > 0
    else:
        assert int(s["ctx_switches"]) == 0
    assert int(s["shadow_hits_l1"]) > 0


def test_pte_prefetch_keeps_the_default_guest_correct(capsys):
    status, err = run(capsys, "--mmu-prefetch", "8", "--mmu-stats", "--serial", "none",
                      "--timeout", "60")
    assert status == 1, err   # the guest checked its checksums and faults itself
    assert int(stats(err)["pte_prefetch"]) == 8


def test_bad_prefetch_count_is_a_usage_error(capsys):
    status, err = run(capsys, "--mmu-prefetch", "3", "--serial", "none")
    assert status == 2 and len(err.strip().splitlines()) == 1, err
