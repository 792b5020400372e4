"""nextick: a low-latency streaming trading engine with a compiled hot path.

The fast path first::

    from engine.backtest import BacktestConfig, run_backtest
    from feeds.synthetic import SyntheticMarket

    result = run_backtest(SyntheticMarket(), BacktestConfig(strategy="momentum"))
    print(result.metrics.daily_sharpe)  # five sessions: too few days for an annualized Sharpe
"""

__version__ = "0.1.0"
