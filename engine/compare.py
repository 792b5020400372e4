"""``nextick compare``: N strategies on one data set, their metrics, pairwise Sharpe tests and sub-periods.

Every strategy replays the same ``QuoteDataset`` (read once) with the same execution options. From
each run's equity the daily returns are cut on one list of days (``engine.backtest.trading_days`` over
the span of all runs, so day k is the same day in every run) and aligned on the days every run has.
On those:

- the pairwise Memmel-corrected Jobson-Korkie test (``engine.metrics.jobson_korkie_memmel``) of daily
  Sharpe ratios: ``z[i][j]`` tests strategy i against j (positive: i's Sharpe is higher), computed
  for each ordered pair, so ``z`` is antisymmetric and ``p`` symmetric; significant where p < 0.05;
- the sub-period breakdown: the aligned days cut into ``blocks`` contiguous blocks of (nearly) equal
  length (``numpy.array_split``: every day in exactly one block), with per strategy the compounded
  return, mean and std of daily return and the daily Sharpe in each.

Strategies are named by label. ``--strategy momentum`` is labelled ``momentum``; ``--strategy
mv=strategies.allocation.rebalance:Allocation`` is labelled ``mv`` and takes ``--param mv.key=value``.
``FIVE_WAY`` is the allocation preset (``--five-way``): equal weight, min-variance and mean-variance
(Ledoit-Wolf covariance), momentum, and the index, all ``Allocation`` long-only under one per-asset
cap on one rebalance clock, each at the first whole hour of a ``rebalance_s`` period at which every
priced instrument is warm (``Allocation(poll_s=3600)``). The index is the equal-weight basket bought at the first rebalance and
held: a synthetic universe has no capitalisations, and holding the basket lets the weights drift as a
cap-weighted index does.

Writes (``write_compare``): ``compare.json`` (format ``nextick.compare``, version 1), ``compare.parquet``
(one row per aligned day, a column of daily returns per strategy) and one ``engine.report.write_outputs``
folder per label, so ``nextick report OUT`` draws every run and the comparison.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.backtest import BacktestResult, trading_days
from engine.domain.calendar import SessionCalendar
from engine.domain.instrument import InstrumentTable
from engine.metrics import daily_return_days, jobson_korkie_memmel
from engine.report import finite_json, write_outputs

COMPARE_FORMAT = "nextick.compare"
COMPARE_VERSION = 1
SIGNIFICANCE = 0.05  # two-sided level at which a JK difference is marked
ALLOCATION = "strategies.allocation.rebalance:Allocation"
MONTH_S = 30 * 86_400.0  # the preset's default clock: every 30 days on the UTC clock of the seam
FIVE_WAY_FEE_BPS = 10.0
# The preset decides at the first whole hour of each period at which the market is up and warm
# (Allocation poll_s): the clock's own first batch is a session's first tick, when nothing trades.
POLL_S = 3600.0
FIVE_WAY: dict[str, dict[str, Any]] = {
    "equal_weight": {"allocator": "equal_weight"},
    "min_variance": {"allocator": "min_variance"},
    "momentum": {"allocator": "momentum"},
    "mean_variance": {"allocator": "mean_variance"},
    "index": {"allocator": "equal_weight", "hold": True},
}
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Entry:
    """One strategy of a comparison: its label, its spec (built-in name or package.module:Class), its parameters."""

    label: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)


def parse_entries(
    strategies: Sequence[str],
    params: Mapping[str, Any],
    *,
    five_way: bool = False,
    rebalance_s: float = MONTH_S,
    lookback: int = 20,
    cap: float = 0.2,
) -> list[Entry]:
    """The entries the command line names: ``strategies`` as ``SPEC`` or ``LABEL=SPEC``, then the
    preset's five when ``five_way``; ``params`` maps ``LABEL.key`` to a value. Raises ``ValueError``
    naming the option for a duplicate or malformed label, a parameter of no strategy, or nothing to run."""
    entries: list[Entry] = []
    for text in strategies:
        label, sep, spec = text.partition("=")
        if not sep:
            label, spec = _default_label(text), text
        if not spec or not _LABEL.match(label):
            raise ValueError(f"--strategy {text!r}: give SPEC or LABEL=SPEC, LABEL made of letters, digits, _ and -")
        entries.append(Entry(label, spec))
    if five_way:
        for label, p in FIVE_WAY.items():
            entries.append(Entry(label, ALLOCATION, {**p, "rebalance_s": rebalance_s, "lookback": lookback,
                                                     "long_only": True, "cap": cap, "poll_s": min(POLL_S, rebalance_s)}))
    if not entries:
        raise ValueError("nothing to compare: give --strategy (repeatable) or --five-way")
    labels = [e.label for e in entries]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"--strategy: label {', '.join(dup)} names two strategies; give them LABEL=SPEC with distinct labels")
    by_label = {e.label: dict(e.params) for e in entries}
    for key, value in params.items():
        label, dot, name = key.partition(".")
        if not dot or not name:
            raise ValueError(f"--param {key}={value!r}: name the strategy, LABEL.key=value (labels: {', '.join(labels)})")
        if label not in by_label:
            raise ValueError(f"--param {key}: no strategy labelled {label!r}; labels are {', '.join(labels)}")
        by_label[label][name] = value
    return [Entry(e.label, e.strategy, by_label[e.label]) for e in entries]


def _default_label(spec: str) -> str:
    """A built-in's name, or the class name of package.module:Class."""
    return spec.rpartition(":")[2] if ":" in spec else spec


@dataclass
class Comparison:
    """What ``compare_runs`` finds: labels, aligned daily returns (days x strategies), the JK matrices,
    the sub-period table."""

    labels: list[str]
    day_names: list[str]
    daily: np.ndarray  # (n_days, n_strategies) simple daily returns on the aligned days
    z: np.ndarray  # (n, n): z[i, j] tests strategy i against j; nan where a Sharpe ratio is undefined
    p: np.ndarray  # (n, n): two-sided p-values
    blocks: list[dict[str, Any]]
    day_basis: str = "UTC dates"


def split_days(n_days: int, n_blocks: int) -> list[np.ndarray]:
    """Indices of ``n_days`` days in ``n_blocks`` contiguous blocks of (nearly) equal length: every day
    in exactly one block, in order."""
    if not (isinstance(n_blocks, int) and 1 <= n_blocks):
        raise ValueError(f"--blocks must be a whole number >= 1, not {n_blocks!r}")
    if n_blocks > n_days:
        raise ValueError(f"--blocks {n_blocks} exceeds the {n_days} common days; give at most {n_days}")
    return np.array_split(np.arange(n_days), n_blocks)


def jk_matrix(daily: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z, p), each (n, n), of jobson_korkie_memmel on every ordered pair of the columns of ``daily``."""
    n = daily.shape[1]
    z, p = np.zeros((n, n)), np.ones((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                t = jobson_korkie_memmel(daily[:, i], daily[:, j])
                z[i, j], p[i, j] = t.z, t.p_value
    return z, p


def block_rows(daily: np.ndarray, blocks: list[np.ndarray], labels: list[str], day_names: list[str]) -> list[dict[str, Any]]:
    out = []
    for k, idx in enumerate(blocks):
        by = {}
        for j, label in enumerate(labels):
            r = daily[idx, j]
            sd = float(np.std(r, ddof=1)) if len(r) > 1 else math.nan
            mean = float(np.mean(r))
            by[label] = {
                "total_return": float(np.prod(1.0 + r) - 1.0),
                "mean_daily_return": mean,
                "daily_volatility": sd,
                "daily_sharpe": mean / sd if sd > 0 else math.nan,
            }
        out.append({"block": k + 1, "first_day": day_names[idx[0]], "last_day": day_names[idx[-1]], "n_days": len(idx),
                    "by_strategy": by})
    return out


def compare_runs(results: Sequence[BacktestResult], labels: Sequence[str], instruments: InstrumentTable,
                 n_blocks: int = 2, skip_days: int = 0) -> Comparison:
    """Align the runs' daily returns on the days all of them have and test them (module doc).
    ``skip_days`` drops the first common days: an estimating allocator holds cash until its window is
    full, and those days would test the window, not the allocator."""
    if not (isinstance(skip_days, int) and skip_days >= 0):
        raise ValueError(f"--skip-days must be a whole number >= 0, not {skip_days!r}")
    calendars = [SessionCalendar.parse(inst.calendar) for inst in instruments]
    spans = [(int(r.equity_ts_ns[0]), int(r.equity_ts_ns[-1])) for r in results if len(r.equity_ts_ns)]
    if len(spans) != len(results):
        raise ValueError("a run has no equity samples (no quotes reached it); give more data (--n-sessions, --start/--end)")
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    starts, names, basis = trading_days(calendars, lo, hi)
    per_run = []
    for r in results:
        rets, days = daily_return_days(r.equity_ts_ns, r.equity, starts)
        per_run.append(dict(zip(days.tolist(), rets.tolist())))
    common = sorted(set.intersection(*(set(d) for d in per_run)))[skip_days:]
    if len(common) < 3:
        raise ValueError(f"only {len(common)} days common to every run (after --skip-days {skip_days}); the "
                         "Jobson-Korkie test needs 3 or more: give more sessions or skip fewer days")
    daily = np.array([[d[k] for d in per_run] for k in common])
    if names:
        day_names = [names[k] for k in common]
    else:  # UTC day numbers since the epoch
        day_names = [str(np.datetime64(int(k), "D")) for k in common]
    z, p = jk_matrix(daily)
    blocks = block_rows(daily, split_days(len(common), n_blocks), list(labels), day_names)
    return Comparison(list(labels), day_names, daily, z, p, blocks, basis)


def format_jk(c: Comparison) -> list[str]:
    """The z matrix with p-values, ``*`` where p < SIGNIFICANCE; row i against column j."""
    w = max(12, *(len(x) + 2 for x in c.labels))
    lines = [f"Jobson-Korkie (Memmel) z of daily Sharpe, row against column (p in brackets, * p < {SIGNIFICANCE:g}); "
             f"{len(c.day_names)} days, {c.day_names[0]} .. {c.day_names[-1]}"]
    lines.append(f"{'':<{w}}" + "".join(f"{x:>{w + 8}}" for x in c.labels))
    for i, a in enumerate(c.labels):
        cells = []
        for j in range(len(c.labels)):
            if i == j:
                cells.append(f"{'-':>{w + 8}}")
                continue
            z, p = c.z[i, j], c.p[i, j]
            mark = "*" if p < SIGNIFICANCE else " "
            cells.append(f"{z:+.2f} ({p:.3f}){mark}".rjust(w + 8) if math.isfinite(z) else f"{'n/a':>{w + 8}}")
        lines.append(f"{a:<{w}}" + "".join(cells))
    sig = significant_pairs(c)
    lines.append("significant at 5%: " + ("; ".join(f"{a} vs {b} (z {z:+.2f}, p {p:.3f})" for a, b, z, p in sig)
                                          if sig else "none"))
    return lines


def significant_pairs(c: Comparison) -> list[tuple[str, str, float, float]]:
    """(higher, lower, z, p) of each unordered pair with p < SIGNIFICANCE, the higher Sharpe first."""
    out = []
    n = len(c.labels)
    for i in range(n):
        for j in range(i + 1, n):
            if c.p[i, j] < SIGNIFICANCE:
                a, b = (i, j) if c.z[i, j] > 0 else (j, i)
                out.append((c.labels[a], c.labels[b], float(c.z[a, b]), float(c.p[a, b])))
    return out


def format_blocks(c: Comparison) -> list[str]:
    w = max(14, *(len(x) + 2 for x in c.labels))
    lines = [f"sub-periods: {len(c.blocks)} blocks of the {len(c.day_names)} common days (return / daily Sharpe)"]
    lines.append(f"{'block':<34}" + "".join(f"{x:>{w}}" for x in c.labels))
    for b in c.blocks:
        head = f"{b['block']}: {b['first_day']} .. {b['last_day']} ({b['n_days']}d)"
        cells = []
        for x in c.labels:
            m = b["by_strategy"][x]
            cells.append(f"{m['total_return'] * 100:+.2f}% / {m['daily_sharpe']:+.2f}".rjust(w))
        lines.append(f"{head:<34}" + "".join(cells))
    return lines


def write_compare(out_dir: Path, results: Sequence[BacktestResult], entries: Sequence[Entry], c: Comparison,
                  execution: Mapping[str, Any]) -> list[Path]:
    """Each run's folder (labelled), compare.json and compare.parquet in ``out_dir``."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for r, e in zip(results, entries):
        # The folder and the summary carry the label: five Allocation runs would all be "allocation".
        written += write_outputs(out_dir / e.label, [msgspec.structs.replace(r, strategy=e.label)])
    doc = {
        "format": COMPARE_FORMAT,
        "version": COMPARE_VERSION,
        "strategies": [{"label": e.label, "strategy": e.strategy, "params": e.params, "fills_sha256": r.fill_hash(),
                        "metrics": msgspec.to_builtins(r.metrics)} for r, e in zip(results, entries)],
        "execution": dict(execution),
        "day_basis": c.day_basis,
        "days": c.day_names,
        "jk": {"returns": "daily", "alpha": SIGNIFICANCE, "z": c.z.tolist(), "p": c.p.tolist(),
               "significant": [list(s) for s in significant_pairs(c)]},
        "subperiods": c.blocks,
    }
    path = out_dir / "compare.json"
    path.write_text(json.dumps(finite_json(doc), indent=2))
    written.append(path)
    table = pa.table({"day": c.day_names, **{x: c.daily[:, j] for j, x in enumerate(c.labels)}})
    pq.write_table(table, out_dir / "compare.parquet")
    written.append(out_dir / "compare.parquet")
    return written

