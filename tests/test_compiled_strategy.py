"""Compiled Python strategies (strategies/compiled.py): the same functions compiled by numba and run
as plain Python give the same fills, counters and state bit for bit; the EMA-cross twin equals the
built-in momentum; without numba the plain path is the default; errors in the Python functions
surface as Python exceptions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MS, S, table

import strategies.compiled as compiled_mod
from engine.backtest import BacktestConfig, Engine, run_backtest, stream_ticks
from engine.model.weights import DEFAULT_MODEL_PATH
from feeds.memory import ArraySource
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies import orders as O
from strategies.compiled import CompiledStrategy, CompiledStrategyError
from strategies.ema_cross_compiled import EmaCrossCompiled, ema_cross_compiled
from tests.test_strategies import random_walk

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not compiled_mod.numba_available(), reason="numba not installed: pip install -e '.[compiled]'")

# Regular hours with feed outages longer than the gap threshold: session opens, closes and GAP resets.
SESSIONS = SyntheticConfig(n_instruments=3, n_sessions=2, calendar="09:30-10:00 America/New_York Mon-Fri",
                           outages_per_session=1.0, outage_s=(70.0, 90.0), seed=3)


# -- a strategy that sends explicit orders and answers events ------------------------------------

# state columns: fast EMA, ticks seen, the next client id, then one counter per event kind
EMA, TICKS, NEXT_ID = 0, 1, 2
N_STATE = 3 + 7


def bracket_on_tick(tick, params, state, orders):
    """Every params[0] ticks, a limit order on the side of the mid against its EMA, priced at the
    touch (it takes on arrival or rests); with a model, the prediction picks the side instead."""
    s = state[tick.instrument]
    if tick.reset:
        s[EMA] = tick.mid
        return np.nan
    s[EMA] += 0.1 * (tick.mid - s[EMA])
    s[TICKS] += 1.0
    if not tick.warm or s[TICKS] % params[0] != 0.0:
        return np.nan
    signal = tick.pred_mid - tick.mid if tick.pred_mid == tick.pred_mid else s[EMA] - tick.mid
    units = params[1] if signal > 0.0 else -params[1]
    px = tick.ask_px if units > 0.0 else tick.bid_px
    s[NEXT_ID] += 1.0
    O.limit(orders, tick.instrument, units, px, np.uint64(s[NEXT_ID]), O.IOC if s[TICKS] % 3.0 == 0.0 else O.GTC)
    return np.nan


def bracket_on_event(event, params, state, orders):
    """A protective stop after each fill, 20 bps away; every event counted by kind."""
    s = state[event.instrument]
    s[3 + event.kind] += 1.0
    if event.kind == O.FILL and event.client_id < 1_000_000:
        away = params[2] * event.px
        stop_px = event.px - away if event.units > 0.0 else event.px + away
        O.stop(orders, event.instrument, -event.units, stop_px, event.client_id + 1_000_000)
    elif event.kind == O.SESSION_CLOSE:
        O.cancel_all(orders, event.instrument)


def bracket(compile: bool) -> CompiledStrategy:
    return CompiledStrategy(bracket_on_tick, bracket_on_event, params=[7.0, 10.0, 20e-4], state_init=np.zeros(N_STATE),
                            name="bracket", compile=compile)


def run_compiled(source, config: BacktestConfig, strategy: CompiledStrategy):
    """The run's result and the strategy's final state in the core."""
    engine = Engine(config, source.instruments, strategy)
    for _, ticks in stream_ticks(source, config.interval):
        engine.run(ticks)
    engine.core.finish()
    return engine.core.fills(), engine.core.counters(), engine.core.compiled_state()


def assert_same_run(a, b) -> None:
    fills_a, counters_a, state_a = a
    fills_b, counters_b, state_b = b
    assert fills_a.tobytes() == fills_b.tobytes()
    assert counters_a == counters_b
    assert state_a.tobytes() == state_b.tobytes()


def random_walk_source(n_inst: int) -> ArraySource:
    return ArraySource(random_walk(6_000, n_inst, seed=21), table(n_inst, gap_ns=120 * S, warmup_ticks=10))


@needs_numba
@pytest.mark.parametrize("n_inst", [1, 10])
def test_orders_and_events_compiled_and_plain_are_bit_identical(n_inst):
    config = BacktestConfig(interval="raw", latency_ns=50 * MS, fee_bps=1.0)
    runs = [run_compiled(random_walk_source(n_inst), config, bracket(compile)) for compile in (True, False)]
    assert_same_run(*runs)
    fills, counters, state = runs[0]
    assert counters["explicit_orders"] > 20 and len(fills) > 20
    assert (fills["order_type"] == O.STOP).any(), "the stops placed from on_event never filled"
    assert state[:, 3 + O.FILL].sum() == len(fills)  # every fill reached on_event, once
    assert state[:, 3 + O.RESET].sum() > n_inst  # the start, and GAP resets


@needs_numba
def test_sessions_and_outages_compiled_and_plain_are_bit_identical():
    config = BacktestConfig(interval="1s", latency_ns=20 * MS)
    runs = [run_compiled(SyntheticMarket(SESSIONS), config, bracket(compile)) for compile in (True, False)]
    assert_same_run(*runs)
    _, counters, state = runs[0]
    assert counters["resets"]["SESSION_OPEN"] >= 2 * SESSIONS.n_instruments and counters["resets"]["GAP"] > 0
    assert state[:, 3 + O.SESSION_CLOSE].sum() >= 2 * SESSIONS.n_instruments
    assert counters["explicit_orders"] > 20


@needs_numba
def test_with_a_model_compiled_and_plain_are_bit_identical():
    """A model makes the loop go through run_grouped; the strategy sees pred_mid there."""
    config = BacktestConfig(interval="1s", model=str(DEFAULT_MODEL_PATH), warmup_ticks=5)
    runs = [run_compiled(SyntheticMarket(SESSIONS), config, bracket(compile)) for compile in (True, False)]
    assert_same_run(*runs)
    assert runs[0][1]["explicit_orders"] > 20
    without = run_compiled(SyntheticMarket(SESSIONS), BacktestConfig(interval="1s", warmup_ticks=5), bracket(True))
    assert without[0].tobytes() != runs[0][0].tobytes(), "the prediction did not reach the strategy"


# -- the EMA-cross twin ---------------------------------------------------------------------------

TWIN_MARKETS = {
    "1 instrument, raw": (lambda: ArraySource(random_walk(20_000, 1, seed=4), table(1, gap_ns=120 * S, warmup_ticks=10)),
                          {"interval": "raw"}),
    "3 instruments, gaps, latency, size cap": (
        lambda: ArraySource(random_walk(30_000, 3, seed=11), table(3, gap_ns=120 * S, warmup_ticks=10)),
        {"interval": "100ms", "latency_ns": 150 * MS, "fee_bps": 1.5, "size_cap": True}),
    "sessions and outages, 1s": (lambda: SyntheticMarket(SESSIONS), {"interval": "1s"}),
    "sessions, with a model": (lambda: SyntheticMarket(SESSIONS), {"interval": "1s", "model": str(DEFAULT_MODEL_PATH)}),
}
SPANS = {"fast_span": 8.0, "slow_span": 30.0}


@pytest.mark.parametrize("compile", [pytest.param(True, marks=needs_numba), False])
@pytest.mark.parametrize("market", list(TWIN_MARKETS))
def test_ema_cross_twin_equals_builtin_momentum(market, compile):
    make_source, cfg = TWIN_MARKETS[market]
    builtin = run_backtest(make_source(), BacktestConfig(strategy="momentum", strategy_params=SPANS, **cfg))
    twin = run_backtest(make_source(), BacktestConfig(**cfg), strategy=ema_cross_compiled(**SPANS, compile=compile))
    assert len(builtin.fills) > 20
    assert sum(builtin.resets_by_reason().values()) > 1
    assert twin.fill_hash() == builtin.fill_hash()
    assert np.array_equal(twin.equity, builtin.equity)
    assert twin.counters == builtin.counters


def test_ema_cross_twin_loads_by_name_with_the_notional_split_over_the_instruments():
    def src():
        return ArraySource(random_walk(10_000, 4, seed=8), table(4, gap_ns=120 * S, warmup_ticks=5))

    cfg = {"interval": "raw", "initial_capital": 400_000.0}
    builtin = run_backtest(src(), BacktestConfig(strategy="momentum", strategy_params=SPANS, **cfg))
    by_name = run_backtest(src(), BacktestConfig(strategy="strategies.ema_cross_compiled:EmaCrossCompiled",
                                                 strategy_params=SPANS, **cfg))
    assert by_name.strategy == "ema_cross_compiled"
    assert by_name.fill_hash() == builtin.fill_hash()
    # 100k per instrument: a flip (short to long) trades about twice that, never more
    notional = np.abs(by_name.fills["px"] * by_name.fills["sz"])
    assert 1.9 * 100_000.0 < notional.max() < 2.01 * 100_000.0
    fixed = run_backtest(src(), BacktestConfig(**cfg), strategy=EmaCrossCompiled(**SPANS, notional=10_000.0))
    assert np.abs(fixed.fills["sz"]).max() < np.abs(by_name.fills["sz"]).max() / 5


def test_prepare_finalizes_parameters_at_bind_without_changing_the_strategy():
    strategy = ema_cross_compiled(**SPANS, compile=False)
    run_backtest(random_walk_source(4), BacktestConfig(interval="raw", initial_capital=1e6), strategy=strategy)
    assert np.isnan(strategy.params[2])  # the object can be bound again to another run
    assert strategy.prepare(table(4), initial_capital=1e6)[2] == 250_000.0


# -- without numba --------------------------------------------------------------------------------


def test_without_numba_the_default_runs_plain_python_and_compile_true_says_how_to_install(monkeypatch):
    monkeypatch.setattr(compiled_mod, "numba_available", lambda: False)
    assert ema_cross_compiled(**SPANS).compiled is False
    with pytest.raises(ImportError, match=r"pip install -e '\.\[compiled\]'"):
        ema_cross_compiled(**SPANS, compile=True)
    with pytest.raises(ImportError, match="numba"):
        CompiledStrategy(bracket_on_tick, compile=True)


def test_with_numba_unimportable_the_strategy_runs_and_matches_the_builtin():
    """A fresh interpreter where ``import numba`` fails (as on an install without the extra): the
    order writers fall back to plain functions and the twin still equals the built-in."""
    code = """
import sys
sys.modules["numba"] = None  # import numba raises ImportError
from conftest import S, table
from engine.backtest import BacktestConfig, run_backtest
from feeds.memory import ArraySource
from strategies.ema_cross_compiled import ema_cross_compiled
from tests.test_strategies import random_walk
q = random_walk(3_000, 2, seed=4)
src = lambda: ArraySource(q, table(2, gap_ns=120 * S, warmup_ticks=10))
spans = {"fast_span": 8.0, "slow_span": 30.0}
twin = ema_cross_compiled(**spans)
assert not twin.compiled
a = run_backtest(src(), BacktestConfig(interval="raw"), strategy=twin)
b = run_backtest(src(), BacktestConfig(strategy="momentum", strategy_params=spans, interval="raw"))
assert len(b.fills) > 10 and a.fill_hash() == b.fill_hash(), (len(a.fills), len(b.fills))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                         env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- errors ---------------------------------------------------------------------------------------


def test_an_exception_in_plain_on_tick_propagates_and_the_interpreter_goes_on():
    def on_tick(tick, params, state, orders):
        state[tick.instrument, 0] += 1.0
        if state[tick.instrument, 0] == 50.0:
            raise ZeroDivisionError(f"bad tick at {tick.ts}")
        return np.nan

    with pytest.raises(ZeroDivisionError, match="bad tick at"):
        run_backtest(random_walk_source(2), BacktestConfig(interval="raw"),
                     strategy=CompiledStrategy(on_tick, state_init=[0.0], compile=False))
    again = run_backtest(random_walk_source(2), BacktestConfig(interval="raw"), strategy=ema_cross_compiled(compile=False))
    assert again.ticks > 0


def test_an_exception_in_plain_on_event_propagates():
    def on_event(event, params, state, orders):
        if event.kind == O.FILL:
            raise KeyError("no handler for fills")

    with pytest.raises(KeyError, match="no handler for fills"):
        run_backtest(random_walk_source(1), BacktestConfig(interval="raw"),
                     strategy=CompiledStrategy(bracket_on_tick, on_event, params=[7.0, 10.0, 20e-4],
                                               state_init=np.zeros(N_STATE), compile=False))


def test_a_plain_on_tick_returning_a_non_number_is_a_type_error_naming_the_function():
    def wrong_return(tick, params, state, orders):
        return "buy"

    with pytest.raises(TypeError, match=r"wrong_return.*str"):
        run_backtest(random_walk_source(1), BacktestConfig(interval="raw"),
                     strategy=CompiledStrategy(wrong_return, compile=False))


def raise_at_50th_tick(tick, params, state, orders):
    s = state[tick.instrument]
    s[0] += 1.0
    if s[0] == 50.0:
        raise ValueError("bad tick")
    return 1.0


def raise_on_fill(event, params, state, orders):
    if event.kind == O.FILL:
        raise ValueError("no handler for fills")


@needs_numba
def test_an_exception_in_compiled_on_tick_is_raised_after_the_run_with_where_it_happened():
    """numba cannot raise through the core: the cfunc records the first failure, keeps the target
    (NaN), and the engine raises once the core's run returns."""
    strategy = CompiledStrategy(raise_at_50th_tick, state_init=[0.0], compile=True)
    with pytest.raises(CompiledStrategyError, match=r"on_tick raised at the tick ts=\d+ of instrument 0 \(1 failed.*compile=False"):
        run_backtest(random_walk_source(1), BacktestConfig(interval="raw"), strategy=strategy)
    plain = CompiledStrategy(raise_at_50th_tick, state_init=[0.0], compile=False)
    with pytest.raises(ValueError, match="bad tick"):
        run_backtest(random_walk_source(1), BacktestConfig(interval="raw"), strategy=plain)
    again = run_backtest(random_walk_source(1), BacktestConfig(interval="raw"), strategy=ema_cross_compiled())
    assert again.ticks > 0


@needs_numba
def test_an_exception_in_compiled_on_event_is_raised_after_the_run():
    strategy = CompiledStrategy(bracket_on_tick, raise_on_fill, params=[7.0, 10.0, 20e-4], state_init=np.zeros(N_STATE),
                                compile=True)
    with pytest.raises(CompiledStrategyError, match="on_event raised"):
        run_backtest(random_walk_source(1), BacktestConfig(interval="raw"), strategy=strategy)


@needs_numba
def test_a_compiled_on_tick_returning_a_non_number_fails_at_compile_time():
    from numba.core.errors import TypingError

    def wrong_return_compiled(tick, params, state, orders):
        return "buy"

    with pytest.raises(TypingError):
        run_backtest(random_walk_source(1), BacktestConfig(interval="raw"),
                     strategy=CompiledStrategy(wrong_return_compiled, compile=True))


def divide_by_zero_on_tick(tick, params, state, orders):
    s = state[tick.instrument]
    spread0 = tick.mid - tick.mid
    s[0] = params[0] / spread0  # inf, as numpy scalars give, not ZeroDivisionError
    s[1] = spread0 / spread0  # NaN
    return np.nan


@needs_numba
def test_compiled_division_by_zero_gives_numpys_inf_and_nan_like_the_plain_run():
    runs = []
    for compile in (True, False):
        strategy = CompiledStrategy(divide_by_zero_on_tick, params=[-1.0], state_init=[0.0, 0.0], compile=compile)
        with np.errstate(divide="ignore", invalid="ignore"):
            runs.append(run_compiled(random_walk_source(2), BacktestConfig(interval="raw"), strategy))
    assert_same_run(*runs)
    state = runs[0][2]
    assert (state[:, 0] == -np.inf).all() and np.isnan(state[:, 1]).all()
