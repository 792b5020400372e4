"""feeds.bars.BarSource: each instrument's last quote per bar, within sessions, streamed in order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from engine.backtest import BacktestConfig, run_backtest
from engine.domain.quote import QUOTE_DTYPE, concat_rows
from feeds.bars import BarSource
from feeds.catalog import Catalog
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies.allocation.rebalance import Allocation

S = 1_000_000_000
DAY = 86_400 * S
T0 = 1_704_153_600 * S  # 2024-01-02 00:00:00 UTC
SYMS = ["AAA", "BBB", "CCC"]


def read_all(source) -> np.ndarray:
    chunks = list(source.chunks())
    return concat_rows(chunks) if chunks else np.zeros(0, QUOTE_DTYPE)


def last_per_bar(q: np.ndarray, bar_ns: int, origin_ns: int = 0) -> np.ndarray:
    """The brute-force answer for a 24x7 calendar (sessions are UTC days, so bars sit on the epoch grid)."""
    keys = {}
    for k, row in enumerate(q):
        keys[(int(row["instrument"]), (int(row["ts_recv"]) - origin_ns) // bar_ns)] = k
    return q[np.sort(np.fromiter(keys.values(), np.int64))]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    """Three symbols over three UTC days, a random walk quoted at random times."""
    tmp = tmp_path_factory.mktemp("bars")
    rng = np.random.default_rng(5)
    n = 6000
    ts = np.sort(T0 + rng.integers(0, 3 * DAY // 1000, n) * 1000)
    inst = rng.integers(0, len(SYMS), n)
    mid = 100.0 + np.cumsum(rng.normal(0, 0.02, n))
    table = pa.table({
        "symbol": np.asarray(SYMS, dtype=object)[inst], "ts_recv": ts, "ts_event": ts - 1000,
        "bid_px": np.round(mid - 0.01, 2), "ask_px": np.round(mid + 0.01, 2),
        "bid_sz": rng.integers(1, 500, n).astype(float), "ask_sz": rng.integers(1, 500, n).astype(float),
        "seq": np.arange(1, n + 1, dtype=np.uint64),
    })
    pacsv.write_csv(table, tmp / "quotes.csv")
    cat = Catalog(tmp / "cat")
    cat.ingest(tmp / "quotes.csv")
    return cat


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bar_s=hst.sampled_from([60.0, 300.0, 3600.0, 86_400.0]), chunk_rows=hst.integers(1, 4000))
def test_last_quote_per_bar_on_a_catalog(catalog, bar_s, chunk_rows):
    quotes = read_all(catalog.source())
    bars = read_all(BarSource(catalog.source(chunk_rows=chunk_rows), bar_s))
    want = last_per_bar(quotes, int(bar_s * S))
    assert np.array_equal(bars["ts_recv"], want["ts_recv"])
    assert np.array_equal(bars["seq"], want["seq"]) and np.array_equal(bars["instrument"], want["instrument"])
    assert np.all(np.diff(bars["ts_recv"].astype(np.int64)) >= 0)


def test_bars_stay_inside_sessions_and_raise_the_gap():
    market = SyntheticMarket(SyntheticConfig(n_instruments=2, n_sessions=3, quote_rate_hz=0.5))
    src = BarSource(market, 1800.0)
    bars = read_all(src)
    opens, closes = market.opens_ns, market.closes_ns
    k = np.searchsorted(opens, bars["ts_recv"], side="right") - 1
    assert np.all(k >= 0) and np.all(bars["ts_recv"] < closes[k])
    # US-RTH is 6.5 h: 13 half-hour bars a session per instrument, anchored at the 09:30 open.
    assert np.bincount(k * 2 + bars["instrument"]).tolist() == [13] * 6
    assert all(inst.gap_ns == 3 * 1800 * S for inst in src.instruments)
    assert src.stats.rows_emitted == len(bars) and src.stats.rows_read > len(bars)


def test_a_daily_rebalancing_study_runs_on_hourly_bars(catalog):
    cfg = BacktestConfig(interval="raw", warmup_ticks=0, fee_bps=10.0)
    strategy = Allocation(allocator="equal_weight", rebalance_s=86_400.0, cap=0.5)
    result = run_backtest(BarSource(catalog.source(), 3600.0), cfg, strategy=strategy)
    assert result.counters["rebalances"] >= 2 and len(result.fills) >= len(SYMS)
    again = run_backtest(BarSource(catalog.source(), 3600.0), cfg,
                         strategy=Allocation(allocator="equal_weight", rebalance_s=86_400.0, cap=0.5))
    assert again.fill_hash() == result.fill_hash()


@pytest.mark.parametrize("bar_s", [0.5, 86_401.0, float("nan")])
def test_bar_length_out_of_range_is_refused(catalog, bar_s):
    with pytest.raises(ValueError, match="resample_s"):
        BarSource(catalog.source(), bar_s)
