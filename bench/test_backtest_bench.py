"""Backtest loop throughput: quotes/s through the compiled loop, built-in momentum vs Python
strategies, for 1 and 100 instruments. Raw ticks (no conflation), one thread.

- ``builtin``: momentum inside the C++ loop;
- ``python``: the EmaCross twin (same fills as the built-in), numpy on each tick batch;
- ``python-noop``: a Python strategy that returns nothing: the cost of the interface itself.

Raw random-walk ticks rarely share a timestamp, so those batches hold one row each.
``test_backtest_whole_book`` has every instrument tick at each timestamp instead (batches of 100
rows, as conflated ticks give): the batch path's other shape.

The ratios against the built-in run of the same session are printed at the end (bench/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.conftest import record_rate
from bench.quotes import random_walk_quotes, whole_book_quotes
from engine.backtest import BacktestConfig, Engine
from engine.domain.instrument import InstrumentTable
from strategies.base import Strategy, TickBatch
from strategies.ema_cross import EmaCross

N_QUOTES = {"builtin": 2_000_000, "python": 50_000, "python-noop": 200_000}
N_QUOTES_WHOLE_BOOK = {"builtin": 2_000_000, "python": 500_000, "python-noop": 2_000_000}
SPANS = {"fast_span": 20.0, "slow_span": 100.0}  # fast enough to exercise the fill path


class Noop(Strategy):
    name = "noop"

    def on_batch(self, batch: TickBatch) -> np.ndarray | None:
        return None


@pytest.mark.parametrize("n_instruments", [1, 100])
@pytest.mark.parametrize("kind", ["builtin", "python", "python-noop"])
def test_backtest_loop(benchmark, kind, n_instruments):
    quotes, table = random_walk_quotes(N_QUOTES[kind], n_instruments)
    run_loop(benchmark, kind, quotes, table, f"backtest loop, {n_instruments} instruments")


@pytest.mark.parametrize("kind", ["builtin", "python", "python-noop"])
def test_backtest_whole_book(benchmark, kind):
    quotes, table = whole_book_quotes(N_QUOTES_WHOLE_BOOK[kind], 100)
    run_loop(benchmark, kind, quotes, table, "backtest loop, 100 instruments, 100-row batches")


def run_loop(benchmark, kind: str, quotes: np.ndarray, table: InstrumentTable, group: str) -> None:
    n = len(quotes)

    def setup():
        strategy = {"builtin": None, "python": EmaCross(**SPANS), "python-noop": Noop()}[kind]
        engine = Engine(BacktestConfig(strategy="momentum", strategy_params=SPANS, interval="raw"), table, strategy)
        engine.run(quotes[:1])  # instruments, sessions and strategy configured outside the timing
        return (engine, quotes[1:]), {}

    def loop(engine, rest):
        engine.run(rest)
        return engine

    engine = benchmark.pedantic(loop, setup=setup, rounds=5, iterations=1)
    rate = (n - 1) / benchmark.stats.stats.min
    benchmark.extra_info["quotes_per_s"] = rate
    benchmark.extra_info["fills"] = len(engine.core.fills())
    record_rate(group, kind, rate)
    print(f"\n{kind:11s} strategy, {group}: {rate / 1e6:7.3f} M quotes/s ({len(engine.core.fills()):,} fills)")
