"""Synthetic market generation throughput: quotes/s streamed by ``SyntheticMarket.chunks()``
(fair value, oracle and book included), default model, one thread."""

from __future__ import annotations

import pytest

from feeds.synthetic import SyntheticConfig, SyntheticMarket


@pytest.mark.parametrize("n_instruments", [3, 30])
def test_synthetic_generation(benchmark, n_instruments):
    # 2 XNYS sessions at 10 quotes/s per instrument: 3 instruments give ~1.4M quotes.
    cfg = SyntheticConfig(n_instruments=n_instruments, n_sessions=2, quote_rate_hz=30.0 / n_instruments)

    def generate() -> int:
        return sum(len(chunk) for chunk in SyntheticMarket(cfg).chunks())

    n = benchmark.pedantic(generate, rounds=5, iterations=1, warmup_rounds=1)
    rate = n / benchmark.stats.stats.min
    benchmark.extra_info["quotes"] = n
    benchmark.extra_info["quotes_per_s"] = rate
    print(f"\nsynthetic market, {n_instruments:3d} instruments: {rate / 1e6:6.2f} M quotes/s ({n:,} quotes)")
