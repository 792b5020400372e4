"""Compare a pytest-benchmark JSON run with the saved baseline and report regressions; never fails.

    python -m bench.compare bench/baseline.json .benchmarks/latest.json [--threshold 0.2]

A benchmark that records a rate in ``extra_info`` (a key ending in ``_per_s``: quotes/s, frames/s, ...)
is compared on that rate (higher is better), since some suites run for a fixed time; the others on
their median time (lower is better). A change beyond the threshold (20% by default) is listed as a
regression or an improvement; benchmarks missing on either side are listed too. The baseline was
taken on the machine its ``machine_info`` describes: compare like with like.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def figures(path: Path) -> tuple[dict[str, tuple[str, str, float]], dict]:
    """fullname -> (what, unit, value) and the run's machine_info."""
    data = json.loads(Path(path).read_text())
    out: dict[str, tuple[str, str, float]] = {}
    for b in data.get("benchmarks", []):
        rates = {k: v for k, v in (b.get("extra_info") or {}).items() if k.endswith("_per_s") and isinstance(v, (int, float))}
        if rates:
            key = sorted(rates)[0]
            out[b["fullname"]] = ("rate", key, float(rates[key]))
        else:
            out[b["fullname"]] = ("time", "median s", float(b["stats"]["median"]))
    return out, data.get("machine_info", {})


def compare(baseline: Path, latest: Path, threshold: float = 0.2) -> list[str]:
    base, base_machine = figures(baseline)
    new, new_machine = figures(latest)
    lines: list[str] = []
    if base_machine.get("cpu_model") != new_machine.get("cpu_model"):
        lines.append(f"note: baseline machine {base_machine.get('cpu_model')!r}, this one {new_machine.get('cpu_model')!r}")
    regressions = improvements = 0
    for name in sorted(set(base) | set(new)):
        if name not in base:
            lines.append(f"new         {name}")
            continue
        if name not in new:
            lines.append(f"missing     {name} (in the baseline, not in this run)")
            continue
        kind, unit, b = base[name]
        _, _, n = new[name]
        if b <= 0 or n <= 0:
            continue
        # Speed ratio > 1: faster than the baseline.
        speed = n / b if kind == "rate" else b / n
        if speed < 1 - threshold:
            regressions += 1
            lines.append(f"REGRESSION  {name}: {speed:.2f}x the baseline's speed ({unit}: {b:.4g} -> {n:.4g})")
        elif speed > 1 + threshold:
            improvements += 1
            lines.append(f"faster      {name}: {speed:.2f}x the baseline's speed ({unit}: {b:.4g} -> {n:.4g})")
    lines.append(
        f"{len(set(base) & set(new))} benchmarks compared with {baseline}: {regressions} regression(s) and "
        f"{improvements} improvement(s) beyond {threshold:.0%}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("baseline", type=Path)
    p.add_argument("latest", type=Path)
    p.add_argument("--threshold", type=float, default=0.2)
    args = p.parse_args(argv)
    if not args.baseline.exists():
        print(f"no baseline at {args.baseline}: save one with `make bench-baseline`")
        return 0
    for line in compare(args.baseline, args.latest, args.threshold):
        print(line)
    return 0  # a report, never a failure: timings on shared machines are noisy


if __name__ == "__main__":
    sys.exit(main())
