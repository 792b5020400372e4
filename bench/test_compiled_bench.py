"""Compiled Python strategy vs built-in: the EMA cross written in Python (strategies/ema_cross_compiled.py),
compiled with numba and called from the C++ loop through a C function pointer, against the built-in
momentum on the same 1M random-walk quotes, 1 and 100 instruments, raw ticks, one thread.

Rates are of ``Engine.run`` on preloaded quotes (the loop alone); the first quote (instruments,
sessions, binding the strategy) and numba's compilation run outside the timing, and the compile time
is reported apart (``extra_info["compile_s"]``). Targets the project reports (never asserted): >= 20M
quotes/s compiled on 1 instrument, compiled / built-in >= 0.2 at 100 instruments. The fills must be
identical (the one assertion: correctness, not speed).
"""

from __future__ import annotations

import time

import pytest

from bench.conftest import record_rate
from bench.quotes import random_walk_quotes
from engine.backtest import BacktestConfig, Engine

pytest.importorskip("numba")

from strategies import compiled as compiled_mod
from strategies.ema_cross_compiled import ema_cross_compiled, on_tick

N_QUOTES = 1_000_000
SPANS = {"fast_span": 20.0, "slow_span": 100.0}
_FILLS: dict[int, bytes] = {}


@pytest.fixture(scope="module")
def compile_s() -> float:
    t0 = time.perf_counter()
    compiled_mod._compile.__wrapped__(on_tick, None)  # a fresh compilation, not the process's cached one
    return time.perf_counter() - t0


@pytest.mark.parametrize("n_instruments", [1, 100])
@pytest.mark.parametrize("kind", ["builtin", "compiled"])
def test_compiled_ema_cross_loop(benchmark, kind, n_instruments, compile_s):
    quotes, table = random_walk_quotes(N_QUOTES, n_instruments)

    def setup():
        strategy = ema_cross_compiled(**SPANS) if kind == "compiled" else None
        engine = Engine(BacktestConfig(strategy="momentum", strategy_params=SPANS, interval="raw"), table, strategy)
        engine.run(quotes[:1])  # instruments, sessions and the strategy bound (compiled) outside the timing
        return (engine, quotes[1:]), {}

    def loop(engine, rest):
        engine.run(rest)
        return engine

    engine = benchmark.pedantic(loop, setup=setup, rounds=5, iterations=1)
    rate = (N_QUOTES - 1) / benchmark.stats.stats.min
    fills = engine.core.fills()
    benchmark.extra_info.update(quotes_per_s=rate, fills=len(fills))
    if kind == "compiled":
        benchmark.extra_info["compile_s"] = compile_s
    record_rate(f"EMA cross loop, {n_instruments} instruments", kind, rate)
    print(f"\n{kind:8s} EMA cross, {n_instruments:4d} instruments: {rate / 1e6:7.2f} M quotes/s ({len(fills):,} fills)"
          + (f"; numba compile {compile_s:.2f} s, not timed" if kind == "compiled" else ""))
    if n_instruments in _FILLS:
        assert fills.tobytes() == _FILLS[n_instruments], "compiled and built-in fills differ"
    _FILLS[n_instruments] = fills.tobytes()
