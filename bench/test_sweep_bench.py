"""A sweep's data path: N configurations on one file, read once into a QuoteDataset (in memory, or
written to disk and memory-mapped) against re-reading the file for every configuration.

Each round runs every configuration from the file, the reading included. The ratio of
configurations per second against the in-memory data set is printed at the end (bench/conftest.py);
figures are reported in extra_info and printed, not asserted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from bench.conftest import record_rate
from bench.quotes import random_walk_quotes
from engine.backtest import run_backtest
from engine.options import backtest_config
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
