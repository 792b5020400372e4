"""Backtest loop throughput: quotes/s through the compiled loop, built-in momentum vs a Python
strategy (the EmaCross twin), for 1 and 100 instruments. Raw ticks (no conflation), one thread."""

from __future__ import annotations

import pytest

from bench.quotes import random_walk_quotes
from engine.backtest import BacktestConfig, _Engine
from strategies.ema_cross import EmaCross

N_QUOTES = {"builtin": 2_000_000, "python": 50_000}


@pytest.mark.parametrize("n_instruments", [1, 100])
@pytest.mark.parametrize("kind", ["builtin", "python"])
def test_backtest_loop(benchmark, kind, n_instruments):
    n = N_QUOTES[kind]
    quotes, table = random_walk_quotes(n, n_instruments)

    def setup():
        strategy = EmaCross() if kind == "python" else None
        engine = _Engine(BacktestConfig(strategy="momentum", interval="raw"), table, strategy)
        engine.run(quotes[:1])  # instruments, sessions and strategy configured outside the timing
        return (engine, quotes[1:]), {}

    def loop(engine, rest):
        engine.run(rest)
        return engine

    engine = benchmark.pedantic(loop, setup=setup, rounds=5, iterations=1)
    rate = (n - 1) / benchmark.stats.stats.min
    benchmark.extra_info["quotes_per_s"] = rate
    benchmark.extra_info["fills"] = len(engine.core.fills())
    print(f"\n{kind:8s} strategy, {n_instruments:4d} instruments: {rate / 1e6:6.2f} M quotes/s "
          f"({len(engine.core.fills()):,} fills)")
