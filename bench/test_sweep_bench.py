"""A sweep's data path: N configurations on one file, read once into a QuoteDataset (in memory, or
written to disk and memory-mapped) against re-reading the file for every configuration.

Each round runs every configuration from the file, the reading included. The ratio of
configurations per second against the in-memory data set is printed at the end (bench/conftest.py);
figures are reported in extra_info and printed, not asserted.

The second suite times `nextick sweep`'s path (run_sweep: the market generated once, every worker
process replaying it) against running the same configurations one at a time as `nextick backtest`
processes, on ~1M quotes; the ratio is printed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from bench.conftest import record_rate
from bench.quotes import random_walk_quotes
from engine.backtest import run_backtest
from engine.options import backtest_config
from engine.sweep import SweepSpec, expand, run_sweep
from feeds.dataset import QuoteDataset
from feeds.replay import FileReplay

N_QUOTES = 500_000
N_INSTRUMENTS = 10
# A small grid, as `nextick sweep` will run: fee x latency x signal speed.
GRID = [
    {"strategy": "momentum", "interval": "100ms", "fee_bps": fee, "latency_ns": latency_ns,
     "params": {"fast_span": fast, "slow_span": 4 * fast}}
    for fee in (0.5, 2.0)
    for latency_ns in (0, 250_000_000)  # 0 or 2.5 ticks of 100 ms
    for fast in (10, 40)
]


@pytest.fixture(scope="module")
def quotes_csv(tmp_path_factory) -> Path:
    quotes, table = random_walk_quotes(N_QUOTES, N_INSTRUMENTS)
    data = pa.table(
        {
            "symbol": np.array(table.symbols)[quotes["instrument"]],
            "ts_ms": quotes["ts_recv"] // 1_000_000,
            "bid": quotes["bid_px"],
            "ask": quotes["ask_px"],
            "bid_size": quotes["bid_sz"],
            "ask_size": quotes["ask_sz"],
        }
    )
    path = tmp_path_factory.mktemp("sweep_bench") / "quotes.csv"
    pacsv.write_csv(data, path)
    return path


def sweep(path: Path, mode: str, folder: Path) -> list[str]:
    """Every configuration of GRID on the file; the fill hashes."""
    configs = [backtest_config(values) for values in GRID]
    if mode == "reread":
        return [run_backtest(FileReplay(path), c).fill_hash() for c in configs]
    dataset = QuoteDataset.read(FileReplay(path), folder if mode == "dataset-mmap" else None)
    return [run_backtest(dataset.source(), c).fill_hash() for c in configs]


@pytest.mark.parametrize("mode", ["dataset", "dataset-mmap", "reread"])
def test_sweep_of_configurations_on_one_file(benchmark, quotes_csv, tmp_path, mode):
    hashes = benchmark.pedantic(sweep, args=(quotes_csv, mode, tmp_path / "ds"), rounds=3, iterations=1)
    rate = len(GRID) / benchmark.stats.stats.min
    benchmark.extra_info.update(configs=len(GRID), quotes=N_QUOTES, configs_per_s=rate, fill_hashes=hashes)
    record_rate(f"sweep of {len(GRID)} configurations, {N_QUOTES:,} quotes from CSV", mode, rate, unit="configs/s")
    print(f"\n{mode:12s}: {rate:6.2f} configurations/s ({len(set(hashes))} distinct fill sets)")


# `nextick sweep` against the same configurations run one by one as `nextick backtest` processes, on
# ~1M synthetic quotes (2 instruments, 5 sessions): the sweep generates the market once and replays it
# to its workers; each backtest process starts Python, imports the engine and generates it again.
SWEEP_SOURCE = {"n_instruments": 2, "n_sessions": 5, "quote_rate_hz": 4.3}
SWEEP_SPEC = SweepSpec(
    source=SWEEP_SOURCE,
    base={"strategy": "momentum", "interval": "1s", "params": {"slow_span": 160}},
    grid={"fee_bps": [0.5, 2.0], "latency_ns": [0, 2_000_000_000], "params.fast_span": [10, 40]},
    split=1.0,  # every configuration on the whole period, as a backtest runs it
)
_SWEEP_HASHES: dict[str, list[str]] = {}


def _flags(options: dict) -> list[str]:
    """``nextick backtest`` flags for engine.options names."""
    flags = []
    for name, value in options.items():
        if name == "params":
            flags += [arg for key, v in value.items() for arg in ("--param", f"{key}={json.dumps(v)}")]
        else:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def _nextick() -> list[str]:
    script = Path(sys.executable).with_name("nextick")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine.cli"]


def sweep_by(mode: str, out: Path) -> list[str]:
    """Every configuration of SWEEP_SPEC, read included; their fill hashes in configuration order."""
    if mode == "nextick sweep":
        outcome = run_sweep(SWEEP_SPEC, out, workers=os.cpu_count())
        return [r.fill_hash for r in outcome.results]
    _, configs = expand(SWEEP_SPEC)
    hashes = []
    for options in configs:
        cmd = [*_nextick(), "backtest", *_flags(SWEEP_SOURCE), *_flags(options), "--json", "--no-progress"]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        hashes.append(json.loads(done.stdout)[0]["fill_hash"])
    return hashes


@pytest.mark.parametrize("mode", ["nextick sweep", "nextick backtest processes"])
def test_sweep_command_against_backtest_processes(benchmark, tmp_path, mode):
    n = len(expand(SWEEP_SPEC)[1])
    hashes = benchmark.pedantic(sweep_by, args=(mode, tmp_path / "out"), rounds=2, iterations=1)
    rate = n / benchmark.stats.stats.min
    benchmark.extra_info.update(configs=n, workers=os.cpu_count(), configs_per_s=rate, fill_hashes=hashes)
    record_rate(f"{n} configurations on ~1M synthetic quotes, {os.cpu_count()} CPUs", mode, rate, unit="configs/s")
    print(f"\n{mode}: {rate:6.2f} configurations/s")
    _SWEEP_HASHES[mode] = hashes
    if len(_SWEEP_HASHES) == 2:  # not a timing: both paths must have made the same fills
        assert _SWEEP_HASHES["nextick sweep"] == _SWEEP_HASHES["nextick backtest processes"]
