"""Quote streams for benchmarks: a multi-instrument random walk, generated, not read."""

from __future__ import annotations

import numpy as np

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE

S = 1_000_000_000
T0 = 1_704_153_600 * S + 3600 * S  # 2024-01-02 01:00 UTC, inside a 24x7 session


def random_walk_quotes(n: int, n_instruments: int, seed: int = 1) -> tuple[np.ndarray, InstrumentTable]:
    rng = np.random.default_rng(seed)
    q = np.zeros(n, QUOTE_DTYPE)
    # 100 quotes/s across the book, instruments interleaved at random
    ts = T0 + np.cumsum(rng.exponential(10_000_000, n)).astype(np.int64)
    inst = rng.integers(0, n_instruments, n)
    steps = rng.normal(0, 2e-4, n)
    mid = np.empty(n)
    for i in range(n_instruments):  # per-instrument walks, vectorized per instrument
        m = inst == i
        mid[m] = 100.0 * np.exp(np.cumsum(steps[m]))
    q["ts_event"] = q["ts_recv"] = ts
    q["bid_px"] = np.round(mid - 0.01, 2)
    q["ask_px"] = np.round(mid + 0.01, 2)
    q["bid_sz"] = rng.integers(1, 100, n)
    q["ask_sz"] = rng.integers(1, 100, n)
    q["instrument"] = inst
    table = InstrumentTable(
        Instrument(symbol=f"B{i:04d}", calendar="24x7", gap_ns=3600 * S, warmup_ticks=50) for i in range(n_instruments)
    )
    return q, table


def whole_book_quotes(n: int, n_instruments: int, seed: int = 1) -> tuple[np.ndarray, InstrumentTable]:
    """random_walk_quotes with every instrument ticking at each timestamp, in instrument order: the
    batches hold every instrument, as conflated ticks give, where raw random-walk ticks give 1-row
    batches."""
    q, table = random_walk_quotes(n, n_instruments, seed)
    q["ts_recv"] = q["ts_event"] = np.repeat(q["ts_recv"][::n_instruments], n_instruments)[:n]
    q["instrument"] = np.resize(np.arange(n_instruments), n)
    return q, table
