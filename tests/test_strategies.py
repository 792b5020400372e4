"""Built-in strategies and the Python strategy interface."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MS, T0, S, quotes, run, table
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.backtest import BacktestConfig, Engine, load_strategy, run_backtest
from engine.domain.instrument import Instrument
from engine.domain.quote import QUOTE_DTYPE
from feeds.memory import ArraySource
from strategies.base import BATCH_DTYPE, BatchHost, Strategy, StrategyError, TickBatch
from strategies.ema_cross import EmaCross
from strategies.portfolio import BOOK_DTYPE, Book


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


def split_batches(q: np.ndarray, share: float, seed: int) -> np.ndarray:
    """q with the rows of about ``share`` of its timestamps moved 1 ns apart per instrument, so
    those ticks come as 1-row batches and the others as batches of every instrument."""
    q = q.copy()
    ts = q["ts_recv"]
    apart = np.random.default_rng(seed).random(len(ts)) < share
    first = np.r_[True, ts[1:] != ts[:-1]]
    offset = np.where(apart[np.cumsum(first) - 1], q["instrument"], 0)  # one draw per timestamp
    q["ts_recv"] = q["ts_event"] = ts + offset
    return q


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), n_inst=st.integers(1, 5), share=st.sampled_from([0.0, 0.5, 1.0]),
       fast_span=st.integers(2, 12), slow_extra=st.integers(1, 30), warmup_ticks=st.integers(0, 20))
def test_python_ema_cross_matches_builtin_momentum_for_any_batch_shape(seed, n_inst, share, fast_span, slow_extra,
                                                                     warmup_ticks):
    """1-row batches (state updated in place) and wider ones (gathered, scattered) give the built-in's fills."""
    q = split_batches(random_walk(3_000, n_inst, seed=seed), share, seed)
    inst = table(n_inst, gap_ns=120 * S, warmup_ticks=warmup_ticks)
    params = {"fast_span": fast_span, "slow_span": fast_span + slow_extra}
    cfg = {"interval": "raw", "latency_ns": 50 * MS, "strategy_params": params}
    builtin = run_backtest(ArraySource(q, inst), BacktestConfig(strategy="momentum", **cfg))
    python = run_backtest(ArraySource(q, inst), BacktestConfig(**cfg), strategy=EmaCross(**params))
    assert len(builtin.fills) > 0
    assert builtin.fill_hash() == python.fill_hash()
    assert builtin.counters == python.counters


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_python_ema_cross_matches_builtin_when_instruments_arrive_after_the_start(share):
    """A live run adds instruments after on_start: EmaCross grows its state from the batches it sees."""
    q = split_batches(random_walk(6_000, 3, seed=4, gaps=False), share, seed=4)
    early = q[: len(q) // 3]
    early, late = early[early["instrument"] == 0], q[len(q) // 3 :]
    fills = {}
    for kind, strategy in (("builtin", None), ("python", EmaCross(fast_span=5, slow_span=20))):
        inst = table(1)
        engine = Engine(BacktestConfig(strategy="momentum", strategy_params={"fast_span": 5, "slow_span": 20}), inst,
                        strategy)
        engine.run(early)
        for k in (1, 2):
            inst.add(Instrument(symbol=f"I{k}", calendar="24x7", gap_ns=3600 * S))
        engine.run(late)
        fills[kind] = engine.core.fills()
    assert len(fills["builtin"]) > 20 and set(fills["builtin"]["instrument"]) == {0, 1, 2}
    assert np.array_equal(fills["builtin"], fills["python"])


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


class Echo(Strategy):
    """Answers each row's mid and keeps what it saw: the host's batch views and target writes."""

    def __init__(self) -> None:
        self.mids: list[list[float]] = []

    def on_batch(self, batch: TickBatch) -> np.ndarray:
        self.mids.append(batch.mid.tolist())
        return batch.mid


def test_batch_host_reads_the_buffer_it_grew_into():
    """The host reuses one TickBatch per batch size: after grow, the views must be of the new buffer."""
    echo = Echo()
    host = BatchHost(echo, 1)
    host.buffer["mid"][:1] = 5.0
    host(1)
    host.grow(3)
    host.buffer["mid"][:3] = [6.0, 7.0, 8.0]
    host(1)
    host(3)
    assert echo.mids == [[5.0], [6.0], [6.0, 7.0, 8.0]]
    assert host.buffer["target"][:3].tolist() == [6.0, 7.0, 8.0]
    assert host.batches == 3


class Reassigns(Strategy):
    """Replaces a column of the batch (a user's mistake: it meant to keep its own smoothed mid)."""

    def __init__(self) -> None:
        self.mids: list[list[float]] = []

    def on_batch(self, batch: TickBatch) -> None:
        self.mids.append(batch.mid.tolist())
        batch.mid = batch.mid * 0.0


def test_a_batch_column_cannot_be_reassigned():
    """TickBatch reuses its column views across batches of one size: a reassigned column would be
    what every later batch shows. Reassigning raises instead, naming the column; reading and writing
    targets still work, and so do plain attributes."""
    batch = TickBatch(np.zeros(2, BATCH_DTYPE))
    for name in ("mid", "bid_px", "position", "pred_mid", "reset", "warm", "instrument"):
        with pytest.raises(AttributeError, match=f"TickBatch.{name} is a view of the engine's rows"):
            setattr(batch, name, np.ones(2))
    assert batch.mid.tolist() == [0.0, 0.0]
    batch.rows["target"] = 1.0  # the rows themselves stay writable where the API writes them
    book = Book(0, 1.0, 1.0, np.zeros(1, BOOK_DTYPE), batch, ["A"])
    book.cash = 2.0
    with pytest.raises(AttributeError, match="Book.mid is a view"):
        book.mid = np.ones(1)
    host = BatchHost(Reassigns(), 1)
    host.buffer["mid"][:1] = 5.0
    with pytest.raises(AttributeError, match="TickBatch.mid is a view"):
        host(1)
    host.buffer["mid"][:1] = 6.0
    with pytest.raises(AttributeError):
        host(1)
    assert host.strategy.mids == [[5.0], [6.0]]  # the second batch still saw the rows' mid


@pytest.mark.parametrize("targets, error", [
    ([np.nan, 1e200, -1e200], None),  # NaN keeps; squares that overflow are still finite targets
    ([np.nan, np.inf, 1.0], "infinite"),
    ([1.0, 2.0, -np.inf], "infinite"),
    ([1.0, 2.0], "shape"),
])
def test_batch_host_writes_finite_or_nan_targets_and_refuses_others(targets, error):
    class Fixed(Strategy):
        def on_batch(self, batch: TickBatch):
            return targets

    host = BatchHost(Fixed(), 3)
    if error:
        with pytest.raises(StrategyError, match=f"Fixed.on_batch returned .*{error}"):
            host(3)
    else:
        host(3)
        assert np.array_equal(host.buffer["target"], targets, equal_nan=True)


def test_batches_hold_each_instrument_once_and_share_a_timestamp():
    seen: list[tuple[int, tuple[int, ...]]] = []

    class Recorder(Strategy):
        def on_batch(self, batch: TickBatch):
            seen.append((batch.ts_ns, tuple(int(i) for i in batch.instrument)))
            assert (batch.rows["ts"] == batch.ts_ns).all()

    rows = [(T0 + S, 0, 1, 2), (T0 + S, 1, 1, 2), (T0 + S, 0, 1, 2), (T0 + 2 * S, 1, 1, 2)]
    run(quotes(rows), table(2), Recorder())
    assert seen == [(T0 + S, (0, 1)), (T0 + S, (0,)), (T0 + 2 * S, (1,))]
