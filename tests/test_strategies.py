"""Built-in strategies and the Python strategy interface."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MS, T0, S, quotes, run, table

from engine.backtest import BacktestConfig, load_strategy, run_backtest
from engine.domain.quote import QUOTE_DTYPE
from feeds.memory import ArraySource
from strategies.base import Strategy, StrategyError, TickBatch
from strategies.ema_cross import EmaCross


def random_walk(n: int, n_inst: int, seed: int, *, gaps: bool = True) -> np.ndarray:
    """Multi-instrument quotes with shared timestamps, occasional long gaps (GAP resets)."""
    rng = np.random.default_rng(seed)
    step = rng.exponential(200 * MS, n).astype(np.int64)
    if gaps:
        step[rng.random(n) < 0.002] += 600 * S
    ts = T0 + 3600 * S + np.cumsum(step)
    ts = np.repeat(ts[: n // n_inst + 1], n_inst)[:n]  # instruments tick together: real batches
    inst = np.tile(np.arange(n_inst), n // n_inst + 1)[:n]
    q = np.zeros(n, QUOTE_DTYPE)
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 2e-4, (n // n_inst + 1, n_inst)), axis=0)).ravel()[:n]
    half = 0.01 * rng.integers(1, 4, n)
    q["ts_event"] = q["ts_recv"] = ts
    q["bid_px"], q["ask_px"] = np.round(mid - half, 2), np.round(mid + half, 2)
    q["bid_sz"], q["ask_sz"] = rng.integers(1, 50, n), rng.integers(1, 50, n)
    q["instrument"] = inst
    return q


@pytest.mark.parametrize("interval", ["raw", "100ms", "1s"])
@pytest.mark.parametrize("latency_ns", [0, 150 * MS])
def test_python_ema_cross_matches_builtin_momentum_bit_for_bit(interval, latency_ns):
    q = random_walk(30_000, 3, seed=11)
    inst = table(3, gap_ns=120 * S, warmup_ticks=10)
    cfg = dict(interval=interval, latency_ns=latency_ns, fee_bps=1.5, size_cap=True,
               strategy_params={"fast_span": 8, "slow_span": 30})
    builtin = run_backtest(ArraySource(q, inst), BacktestConfig(strategy="momentum", **cfg))
    python = run_backtest(ArraySource(q, inst), BacktestConfig(**cfg), strategy=EmaCross(fast_span=8, slow_span=30))
    assert len(builtin.fills) > 50
    assert builtin.resets_by_reason()["GAP"] > 0
    assert builtin.fill_hash() == python.fill_hash()
    assert np.array_equal(builtin.equity, python.equity)
    assert builtin.counters == python.counters


def test_fills_do_not_depend_on_chunking():
    q = random_walk(20_000, 4, seed=5)
    inst = table(4, gap_ns=120 * S, warmup_ticks=5)
    hashes = {
        run_backtest(ArraySource(q, inst, chunk_rows=c), BacktestConfig(strategy=s, interval="100ms")).fill_hash()
        for c in (1, 997, 1 << 20)
        for s in ["momentum"]
    }
    assert len(hashes) == 1


def test_momentum_goes_long_in_an_uptrend_and_short_in_a_downtrend():
    up = [100 + 0.05 * k for k in range(200)]
    px = up + [up[-1] - 0.05 * k for k in range(1, 200)]
    q = quotes([(T0 + 3600 * S + k * S, 0, round(p, 2), round(p + 0.02, 2)) for k, p in enumerate(px)])
    r = run(q, table(1), strategy="momentum", strategy_params={"fast_span": 5, "slow_span": 20})
    sides = np.sign(r.fills["sz"])
    assert sides[0] == 1 and sides[-1] == -1
    assert r.fills[-1]["decision_ts"] > T0 + 3600 * S + 200 * S  # the flip came after the top


def test_mean_reversion_fades_a_spike_then_goes_flat():
    px = 100.0 + np.random.default_rng(0).normal(0, 0.01, 160)
    px[100] = 100.5  # a 50-sigma spike: z far above +entry -> short
    q = quotes([(T0 + 3600 * S + k * S, 0, p - 0.01, p + 0.01) for k, p in enumerate(px)])
    r = run(q, table(1, warmup_ticks=50), strategy="mean_reversion", strategy_params={"span": 100, "entry_z": 4.0, "exit_z": 0.5})
    assert r.fills[0]["decision_ts"] == T0 + 3600 * S + 100 * S and r.fills[0]["sz"] < 0
    assert r.final_positions[0] == 0  # back to flat once |z| fell under exit_z


def test_buy_hold_buys_notional_over_mid_once():
    q = quotes([(T0 + 3600 * S + k * S, 0, 99.99, 100.01) for k in range(10)])
    r = run(q, table(1), strategy="buy_hold", strategy_params={"notional": 10_000})
    assert len(r.fills) == 1 and r.fills[0]["sz"] == 100 and r.final_positions[0] == 100


def test_unknown_strategy_and_bad_params_are_refused():
    with pytest.raises(ValueError, match="neither a built-in"):
        load_strategy("nope", {})
    with pytest.raises(ValueError, match="cannot load"):
        load_strategy("strategies.missing:Nope", {})
    with pytest.raises(ValueError, match="bad parameters"):
        run(quotes([(T0 + S, 0, 1, 2)]), table(1), strategy="momentum", strategy_params={"fast_span": "x"})


def test_strategy_by_import_path_with_params():
    q = random_walk(3000, 1, seed=2, gaps=False)
    r = run(q, table(1), strategy="strategies.ema_cross:EmaCross",
            strategy_params={"fast_span": 5, "slow_span": 15})
    assert r.strategy == "ema_cross" and len(r.fills) > 0


class WrongShape(Strategy):
    def on_batch(self, batch: TickBatch):
        return np.zeros(len(batch) + 1)


class Infinite(Strategy):
    def on_batch(self, batch: TickBatch):
        return np.full(len(batch), np.inf)


@pytest.mark.parametrize("strategy, match", [(WrongShape(), "shape"), (Infinite(), "infinite")])
def test_bad_strategy_output_is_an_error_naming_the_strategy(strategy, match):
    with pytest.raises(StrategyError, match=match):
        run(quotes([(T0 + S, 0, 1, 2), (T0 + 2 * S, 0, 1, 2)]), table(1), strategy)


def test_batches_hold_each_instrument_once_and_share_a_timestamp():
    seen: list[tuple[int, tuple[int, ...]]] = []

    class Recorder(Strategy):
        def on_batch(self, batch: TickBatch):
            seen.append((batch.ts_ns, tuple(int(i) for i in batch.instrument)))
            assert (batch.rows["ts"] == batch.ts_ns).all()

    rows = [(T0 + S, 0, 1, 2), (T0 + S, 1, 1, 2), (T0 + S, 0, 1, 2), (T0 + 2 * S, 1, 1, 2)]
    run(quotes(rows), table(2), Recorder())
    assert seen == [(T0 + S, (0, 1)), (T0 + S, (0,)), (T0 + 2 * S, (1,))]
