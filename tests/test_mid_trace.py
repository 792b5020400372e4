"""The decimated mid trace (engine/mid_trace.py) a backtest records for the report when asked
(run_backtest(record_mids=True), as `nextick backtest --out` does), and write_outputs' mids.parquet."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.backtest import BacktestConfig, run_backtest, stream_ticks
from engine.cli import main
from engine.domain.quote import QUOTE_DTYPE
from engine.mid_trace import MidTrace
from engine.options import quote_source
from engine.report import MIDS_METADATA_KEY, write_outputs

STRATEGIES = ("momentum", "mean_reversion")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """What `nextick backtest --out` writes for two strategies on two instruments."""
    d = tmp_path_factory.mktemp("mids") / "run"
    assert main(["backtest", "--strategy", STRATEGIES[0], "--compare", STRATEGIES[1], "--n-sessions", "1",
                 "--n-instruments", "2", "--no-progress", "--out", str(d)]) == 0
    return d


def test_mids_parquet_is_bounded_and_keeps_fill_ticks(run_dir):
    for s in STRATEGIES:
        d = run_dir / s
        # Every earlier output is still written, beside the new one.
        for name in ("fills", "trades", "resets", "equity", "mids"):
            assert (d / f"{name}.parquet").is_file()
        mids = pq.read_table(d / "mids.parquet")
        assert mids.column_names[:3] == ["ts_ns", "instrument", "mid"]
        meta = json.loads(mids.schema.metadata[MIDS_METADATA_KEY.encode()])
        fills = pq.read_table(d / "fills.parquet").to_pydict()
        inst = np.asarray(mids.column("instrument"))
        ts = np.asarray(mids.column("ts_ns"))
        for i, sym in enumerate(meta["ticks"]):
            mine = inst == i
            n_fill_ticks = len({t for t, k in zip(fills["fill_ts"], fills["instrument"]) if k == i})
            assert mine.sum() <= -(-meta["ticks"][sym] // meta["stride"][sym]) + n_fill_ticks + 1
            assert set(t for t, k in zip(fills["fill_ts"], fills["instrument"]) if k == i) <= set(ts[mine].tolist())
        assert np.all(np.diff(ts) >= 0)


def test_pnl_by_instrument_adds_up_to_the_equity(run_dir):
    for s in STRATEGIES:
        summary = json.loads((run_dir / s / "summary.json").read_text())
        eq = pq.read_table(run_dir / s / "equity.parquet").column("equity").to_pylist()
        total = sum(v["pnl"] for v in summary["pnl_by_instrument"].values())
        assert total == pytest.approx(eq[-1] - summary["config"]["initial_capital"], abs=1e-6 * eq[-1])
        assert sum(v["fills"] for v in summary["pnl_by_instrument"].values()) == summary["metrics"]["fill_count"]


def _ticks(n_inst: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.zeros(n, QUOTE_DTYPE)
    t["instrument"] = rng.integers(0, n_inst, n)
    t["ts_recv"] = np.arange(n) // 2  # two ticks share each timestamp
    t["bid_px"] = 100 + np.cumsum(rng.normal(0, 0.01, n))
    t["ask_px"] = t["bid_px"] + 0.02
    t["ask_px"][::97] = 0.0  # one-sided: no mid
    return t


def _fills_at(ticks: np.ndarray, rows: np.ndarray) -> np.ndarray:
    f = np.zeros(len(rows), [("fill_ts", "<i8"), ("instrument", "<u4")])
    f["fill_ts"], f["instrument"] = ticks["ts_recv"][rows], ticks["instrument"][rows]
    return f


def test_mid_trace_does_not_depend_on_chunking():
    ticks = _ticks(3, 50_000, seed=1)
    fill_rows = np.sort(np.random.default_rng(2).choice(len(ticks), 40, replace=False))
    traces = []
    for cuts in ([len(ticks)], [1, 999, 1000, 20_000, 49_999], list(range(0, len(ticks), 777))):
        tr = MidTrace(max_points=1000)
        edges = [0, *sorted(set(cuts) | {len(ticks)})]
        for lo, hi in itertools.pairwise(edges):
            rows = fill_rows[(fill_rows >= lo) & (fill_rows < hi)]
            tr.push(ticks[lo:hi], _fills_at(ticks, rows))
        traces.append(tr.mids())
    # Bytes, NaN mids included: the same rows, in the same order, bit for bit.
    assert all(t.tobytes() == traces[0].tobytes() for t in traces[1:])
    assert all(len(t) == len(traces[0]) for t in traces[1:])
    m = traces[0]
    for i in range(3):
        mine = ticks["instrument"] == i
        n = int(mine.sum())
        kept = m[m["instrument"] == i]
        # Between half the bound and all of it, plus the fills' ticks (two ticks share each time
        # stamp, so a fill may keep both) and the last tick.
        assert 500 <= len(kept) <= 1000 + 2 * 40 + 1
        assert kept["ts_ns"][-1] == ticks["ts_recv"][mine][-1]  # the last tick, for the final mark
        assert n > 1000
    fill_ts = set(zip(ticks["instrument"][fill_rows].tolist(), ticks["ts_recv"][fill_rows].tolist()))
    assert fill_ts <= set(zip(m["instrument"].tolist(), m["ts_ns"].tolist()))


def test_mid_trace_every_tick_under_the_bound():
    ticks = _ticks(2, 300, seed=5)
    tr = MidTrace(max_points=1000)
    tr.push(ticks)
    m = tr.mids()
    assert len(m) == len(ticks) and list(tr.stride) == [1, 1]
    two = ticks["ask_px"] > 0
    got = m["mid"]
    assert np.allclose(got[two], 0.5 * (ticks["bid_px"][two] + ticks["ask_px"][two]))
    assert np.isnan(got[~two]).all()


def test_backtest_result_mids_are_the_engine_ticks():
    """The trace in a real run is taken from the ticks the engine ran (after conflation): every kept
    row is one of them with its mid, each instrument's last tick is there, every fill's tick too."""
    options = {"n_instruments": 2, "n_sessions": 1}
    r = run_backtest(quote_source(options), BacktestConfig(strategy="momentum"), record_mids=True)
    assert run_backtest(quote_source(options), BacktestConfig(strategy="momentum")).mids is None  # off by default
    ticks = np.concatenate([t for _, t in stream_ticks(quote_source(options), "1s")])
    mid = {(int(i), int(t)): 0.5 * (b + a) for i, t, b, a in zip(ticks["instrument"], ticks["ts_recv"], ticks["bid_px"], ticks["ask_px"])}
    assert len(r.mids) < len(ticks)
    assert all(mid[(int(i), int(t))] == m for i, t, m in zip(r.mids["instrument"], r.mids["ts_ns"], r.mids["mid"]))
    for i in range(2):
        assert r.mids[r.mids["instrument"] == i]["ts_ns"][-1] == ticks[ticks["instrument"] == i]["ts_recv"][-1]
    kept = set(zip(r.mids["instrument"].tolist(), r.mids["ts_ns"].tolist()))
    assert len(r.fills) and set(zip(r.fills["instrument"].tolist(), r.fills["fill_ts"].tolist())) <= kept
    assert list(r.mid_ticks) == [int((ticks["instrument"] == i).sum()) for i in range(2)]


def test_write_outputs_adds_mids_only_when_recorded(tmp_path):
    source = {"n_instruments": 2, "n_sessions": 1}
    plain = run_backtest(quote_source(source), BacktestConfig(strategy="momentum"))
    traced = run_backtest(quote_source(source), BacktestConfig(strategy="momentum"), record_mids=True)
    before = {"fills.parquet", "trades.parquet", "resets.parquet", "equity.parquet", "summary.json"}
    assert {p.name for p in write_outputs(tmp_path / "plain", [plain])} == before
    assert {p.name for p in write_outputs(tmp_path / "traced", [traced])} == before | {"mids.parquet"}
    # The earlier files are the same bytes whether or not the mids were recorded.
    for name in ("fills", "trades", "resets", "equity"):
        assert (tmp_path / "plain" / f"{name}.parquet").read_bytes() == (tmp_path / "traced" / f"{name}.parquet").read_bytes()



