"""Ingest and catalog replay rates (issue targets: ingest >= 2M quotes/s from CSV; >= 10M quotes/s
reading the catalog back into the engine). One run each on generated data; figures printed and kept
in extra_info, never asserted.

- ingest: a 3M-row Binance bookTicker CSV (10 symbols... one file per symbol would be the vendor's
  layout; here a generic CSV with a symbol column, 10 symbols) through detection, the reader, the
  validator and the Parquet writer, SHA-256 included.
- replay: 10M quotes in the catalog, 1 / 10 / 100 instruments, through run_backtest (built-in
  momentum, 1 s conflation) at the default 256 MiB budget.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from bench.conftest import record_rate
from engine.backtest import BacktestConfig, run_backtest
from feeds.catalog import Catalog

T0_NS = 1_704_153_600 * 10**9


def write_csv(path: Path, n: int, n_symbols: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    ts = T0_NS + np.cumsum(rng.integers(1, 20_000_000, n))  # ~100 quotes/s overall
    mid = 100 + np.cumsum(rng.normal(0, 0.01, n))
    sym = np.array([f"S{k:03d}" for k in range(n_symbols)])[rng.integers(0, n_symbols, n)]
    table = pa.table({
        "ts_recv": ts // 1000,  # microseconds, detected
        "symbol": sym,
        "bid_px": np.round(mid - 0.01, 2),
        "ask_px": np.round(mid + 0.01, 2),
        "bid_sz": rng.integers(1, 100, n).astype(float),
        "ask_sz": rng.integers(1, 100, n).astype(float),
    })
    pacsv.write_csv(table, path)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def test_ingest_csv(benchmark, workdir):
    n = 3_000_000
    csv = workdir / "quotes.csv"
    write_csv(csv, n, 10)

    def ingest():
        cat = Catalog(workdir / f"cat-{time.perf_counter_ns()}")
        t = time.perf_counter()
        report = cat.ingest(csv)
        return report, time.perf_counter() - t

    report, dt = benchmark.pedantic(ingest, rounds=1, iterations=1)
    rate = report.rows_written / dt
    benchmark.extra_info.update(rows=report.rows_written, quotes_per_s=rate)
    print(f"\ningest: {report.rows_written:,} quotes from a {csv.stat().st_size / 2**20:.0f} MiB CSV in {dt:.2f} s = {rate / 1e6:.2f}M quotes/s")


@pytest.mark.parametrize("n_instruments", [1, 10, 100])
def test_catalog_replay_into_the_engine(benchmark, workdir, n_instruments):
    n = 10_000_000
    cat = Catalog(workdir / f"replay-{n_instruments}")
    pq_in = workdir / f"in-{n_instruments}.parquet"
    rng = np.random.default_rng(n_instruments)
    ts = T0_NS + np.cumsum(rng.integers(1, 2_000_000, n))
    mid = 100 + np.cumsum(rng.normal(0, 0.01, n))
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "ts_recv": ts,
        "symbol": np.array([f"S{k:03d}" for k in range(n_instruments)])[rng.integers(0, n_instruments, n)],
        "bid_px": mid - 0.01, "ask_px": mid + 0.01,
        "bid_sz": np.full(n, 5.0), "ask_sz": np.full(n, 5.0),
    }), pq_in)
    cat.ingest(pq_in)

    def replay():
        return run_backtest(cat.source(), BacktestConfig(strategy="momentum", interval="1s"))

    r = benchmark.pedantic(replay, rounds=1, iterations=1)
    rate = r.quotes_in / r.wall_s
    benchmark.extra_info.update(quotes=r.quotes_in, quotes_per_s=rate)
    record_rate("catalog replay into the engine", f"{n_instruments} instruments", rate)
    print(f"\ncatalog -> engine, {n_instruments} instruments: {r.quotes_in:,} quotes in {r.wall_s:.2f} s = {rate / 1e6:.1f}M quotes/s")
