"""Vendor readers: rows/s from a generated file in each vendor's format through detection, the
reader and the validator (feeds.vendors). Files are generated in a temp folder, never read from
../shared; figures in extra_info and printed, not asserted."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from bench.conftest import record_rate
from feeds.vendors import detect, open_source

N_ROWS = 1_000_000
T0_MS = 1_704_153_600_000


def _walk(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts_ms = T0_MS + np.cumsum(rng.integers(1, 50, n))
    mid = 40_000 + np.cumsum(rng.normal(0, 0.5, n))
    return ts_ms, np.round(mid - 0.05, 2), np.round(mid + 0.05, 2)


def binance_file(folder: Path) -> Path:
    ts, bid, ask = _walk(N_ROWS)
    path = folder / "BTCUSDT-bookTicker-2024-01-02.csv"
    pacsv.write_csv(pa.table({
        "update_id": np.arange(1, N_ROWS + 1), "best_bid_price": bid, "best_bid_qty": np.full(N_ROWS, 1.5),
        "best_ask_price": ask, "best_ask_qty": np.full(N_ROWS, 2.5), "transaction_time": ts, "event_time": ts + 1,
    }), path)
    return path


def tardis_file(folder: Path) -> Path:
    ts, bid, ask = _walk(N_ROWS)
    path = folder / "binance-futures_quotes_2024-01-02_BTCUSDT.csv"
    pacsv.write_csv(pa.table({
        "exchange": np.full(N_ROWS, "binance-futures"), "symbol": np.full(N_ROWS, "BTCUSDT"),
        "timestamp": ts * 1000, "local_timestamp": ts * 1000 + 5000, "ask_amount": np.full(N_ROWS, 2.5),
        "ask_price": ask, "bid_price": bid, "bid_amount": np.full(N_ROWS, 1.5),
    }), path)
    return path


GENERATORS = {"binance": binance_file, "tardis": tardis_file}


@pytest.mark.parametrize("fmt", list(GENERATORS))
def test_vendor_reader(benchmark, tmp_path, fmt):
    path = GENERATORS[fmt](tmp_path)
    assert detect(path) == fmt

    def read():
        src = open_source(path)
        t = time.perf_counter()
        n = sum(len(c) for c in src.chunks())
        return n, time.perf_counter() - t

    n, dt = benchmark.pedantic(read, rounds=3, iterations=1)
    assert n == N_ROWS
    rate = n / dt
    benchmark.extra_info.update(rows_per_s=rate, mb_per_s=path.stat().st_size / dt / 2**20)
    record_rate("vendor readers", fmt, rate, unit="rows/s")
    print(f"\n{fmt}: {rate / 1e6:.2f}M rows/s ({path.stat().st_size / dt / 2**20:.0f} MiB/s)")
