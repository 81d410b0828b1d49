"""Turn a saved pytest-benchmark JSON into a Markdown report and a PNG plot.

    pytest benchmarks/ --benchmark-only --benchmark-json=results.json
    python benchmarks/report.py results.json -o report.png [--markdown report.md]

The Markdown goes to stdout (or ``--markdown FILE``): per workload and MMU
mode the time (the fastest round), its ratio to ``cached`` with the default
bound, the hit rate (shadow hits / fills), guest walks and roots reused; then
the hot-path peers (ns per operation) and the Linux boot.  The PNG needs
matplotlib; without it the report says so and skips the plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

MODE_ORDER = {"cached": 0, "naive": 1, "native": 2, "python_hook": 3, "qemu-tcg": 4}


def load(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return list(json.load(f)["benchmarks"])


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def _fmt_int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _fmt_rate(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _key(b: dict[str, Any]) -> tuple[int, int]:
    info = b["extra_info"]
    return (MODE_ORDER.get(info.get("mmu", ""), 9), 0 if info.get("bound") == "default" else 1)


def workload_rows(benchmarks: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ``test_workload_mmu`` results (and the Linux boots), by workload."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in benchmarks:
        info = b.get("extra_info", {})
        if "workload" in info and "bound" in info:
            rows[info["workload"]].append(b)
    for items in rows.values():
        items.sort(key=_key)
    return rows


def _baseline(items: list[dict[str, Any]]) -> float | None:
    for b in items:
        if b["extra_info"].get("mmu") == "cached" and b["extra_info"].get("bound") == "default":
            return float(b["stats"]["min"])
    return None


def markdown(benchmarks: list[dict[str, Any]]) -> str:
    out: list[str] = []
    rows = workload_rows(benchmarks)
    if rows:
        out.append("## Workloads by MMU mode\n")
        out.append("Time is the fastest round; x cached is that time over `cached` with the "
                   "default bound. Hit rate = shadow hits / TLB fills (`native`, Unicorn's own "
                   "MMU, has no fill counters).\n")
        out.append("| workload | mode | bound | time | x cached | hit rate | guest walks "
                   "| roots reused | zaps | recycles | write traps |")
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for workload, items in rows.items():
            base = _baseline(items)
            for b in items:
                info = b["extra_info"]
                t = float(b["stats"]["min"])
                ratio = f"{t / base:.2f}" if base else "-"
                out.append(
                    f"| {workload} | {info.get('mmu')} | {info.get('bound')} | {_fmt_time(t)} "
                    f"| {ratio} | {_fmt_rate(info.get('hit_rate'))} "
                    f"| {_fmt_int(info.get('guest_walks'))} | {_fmt_int(info.get('roots_reused'))} "
                    f"| {_fmt_int(info.get('zaps'))} | {_fmt_int(info.get('recycles'))} "
                    f"| {_fmt_int(info.get('write_traps'))} |")
        out.append("")
        out.append("### Ratios (default bound)\n")
        out.append("QEMU is `qemu-system-x86_64 -accel tcg -kernel` on the same image, its "
                   "start-up (a guest that exits at once) subtracted. Contexts restored: "
                   "CR3 loads that brought a parked TLB back (engine patch i).\n")
        out.append("| workload | cached time | naive / cached | native / cached "
                   "| QEMU / cached | cached hit rate | naive hit rate "
                   "| cached hit rate, bound 64 | contexts restored |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for workload, items in rows.items():
            by = {(b["extra_info"].get("mmu"), b["extra_info"].get("bound")): b for b in items}
            base = _baseline(items)
            if base is None:
                continue

            def ratio(mode: str, by: dict = by, base: float = base) -> str:
                b = by.get((mode, "default"))
                return f"{float(b['stats']['min']) / base:.2f}" if b else "-"

            def rate(mode: str, bound: str = "default", by: dict = by) -> str:
                b = by.get((mode, bound))
                return _fmt_rate(b["extra_info"].get("hit_rate")) if b else "-"

            def qemu(by: dict = by, base: float = base) -> str:
                b = by.get(("qemu-tcg", "-"))
                return f"{float(b['extra_info']['net_s']) / base:.2f}" if b else "-"

            cached = by.get(("cached", "default"))
            restored = cached["extra_info"].get("ctx_restored") if cached else None
            out.append(f"| {workload} | {_fmt_time(base)} | {ratio('naive')} "
                       f"| {ratio('native')} | {qemu()} | {rate('cached')} | {rate('naive')} "
                       f"| {rate('cached', 'small')} | {_fmt_int(restored)} |")
        out.append("")
    hot = [b for b in benchmarks if b.get("group", "") and b["group"].startswith("hotpath")
           and "ns_per_op" in b.get("extra_info", {})]
    if hot:
        out.append("## Hot paths (peers in the same run)\n")
        out.append("| group | test | time | ns per operation | detail |")
        out.append("|---|---|---:|---:|---|")
        for b in sorted(hot, key=lambda b: (b["group"], b["extra_info"]["ns_per_op"])):
            info = b["extra_info"]
            detail = []
            if info.get("ns_per_fill"):
                detail.append(f"{info['ns_per_fill']} ns/fill")
            if info.get("hit_rate") is not None:
                detail.append(f"hit rate {_fmt_rate(info['hit_rate'])}")
            if info.get("mib_per_s"):
                detail.append(f"{info['mib_per_s']} MiB/s")
            out.append(f"| {b['group'].removeprefix('hotpath: ')} | {b['name']} "
                       f"| {_fmt_time(float(b['stats']['min']))} | {info['ns_per_op']:,} "
                       f"| {', '.join(detail)} |")
        out.append("")
    return "\n".join(out)


def plot(benchmarks: list[dict[str, Any]], path: str | Path) -> bool:
    """Time (relative to cached) and hit rate per workload and mode; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = workload_rows(benchmarks)
    workloads = list(rows)
    series = sorted({(b["extra_info"]["mmu"], b["extra_info"]["bound"])
                     for items in rows.values() for b in items},
                    key=lambda s: (MODE_ORDER.get(s[0], 9), s[1] != "default"))
    fig, (ax_t, ax_h) = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(workloads)), 8))
    width = 0.8 / max(1, len(series))
    for i, (mode, bound) in enumerate(series):
        times, rates = [], []
        for w in workloads:
            base = _baseline(rows[w])
            b = next((b for b in rows[w] if (b["extra_info"]["mmu"], b["extra_info"]["bound"])
                      == (mode, bound)), None)
            t = float(b["extra_info"].get("net_s", b["stats"]["min"])) if b else 0.0
            times.append(t / base if base else 0.0)   # QEMU: net of its start-up
            rate = b["extra_info"].get("hit_rate") if b else None
            rates.append(100 * rate if rate is not None else 0.0)
        xs = [x + i * width for x in range(len(workloads))]
        label = mode if bound in ("default", "-") else f"{mode}, {bound} shadow page bound"
        ax_t.bar(xs, times, width, label=label)
        ax_h.bar(xs, rates, width, label=label)
    for ax in (ax_t, ax_h):
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(workloads))])
        ax.set_xticklabels(workloads)
    ax_t.set_ylabel("time / cached (default bound)")
    ax_t.axhline(1.0, color="grey", linewidth=0.8)
    ax_t.legend(fontsize="small")
    ax_h.set_ylabel("hit rate (shadow hits / fills), %")
    ax_h.set_ylim(0, 100)
    fig.suptitle("qemu_lite shadow MMU: time and hit rate per workload and mode")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="JSON written by pytest --benchmark-json")
    p.add_argument("-o", "--output", help="PNG plot to write (needs matplotlib)")
    p.add_argument("--markdown", help="write the Markdown here instead of stdout")
    args = p.parse_args(argv)
    text = markdown(load(args.results))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    else:
        print(text)
    if args.output:
        if plot(load(args.results), args.output):
            print(f"plot written to {args.output}", file=sys.stderr)
        else:
            print("matplotlib is not installed: no plot written (pip install matplotlib)",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
