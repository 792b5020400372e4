"""The CEM allocation policy (strategies/allocation/cem_policy.py) end to end on the synthetic market:
record the marks at each rebalance, train on the first days (CEM), select on the next (validation),
report on the last (test), save the policy, then run it in the engine with next-tick fills.

    python -m bench.cem_policy_example --n-instruments 6 --n-sessions 40 --out runs/cem/policy.json

It lives in bench/ because it builds a market (feeds/) and runs the engine (engine.backtest), which
strategies/ may not import (tests/test_layers.py); the policy itself is strategies' alone.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from engine.backtest import BacktestConfig, run_backtest
from engine.metrics import daily_return_days
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies.allocation import cem_policy as cp
from strategies.allocation.constraints import Constraints


def main(argv: list[str] | None = None) -> dict:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--n-instruments", type=int, default=6)
    a.add_argument("--n-sessions", type=int, default=40)
    a.add_argument("--calendar", default="09:30-11:00 America/New_York Mon-Fri")
    a.add_argument("--market-seed", type=int, default=11)
    a.add_argument("--quote-rate-hz", type=float, default=1.0)
    a.add_argument("--rebalance-s", type=float, default=300.0)
    a.add_argument("--k", type=int, default=3, help="PCA components of the state")
    a.add_argument("--lookback", type=int, default=3, help="rebalance periods in the trailing return")
    a.add_argument("--population", type=int, default=64)
    a.add_argument("--elite-frac", type=float, default=0.2)
    a.add_argument("--iterations", type=int, default=20)
    a.add_argument("--cost-bps", type=float, default=1.0, help="fee in bps of notional, in training and in the engine")
    a.add_argument("--cap", type=float, default=0.4)
    a.add_argument("--seed", type=int, default=0, help="the CEM's seed")
    a.add_argument("--out", default="runs/cem/policy.json")
    args = a.parse_args(argv)

    market = SyntheticMarket(SyntheticConfig(
        n_instruments=args.n_instruments, n_sessions=args.n_sessions, calendar=args.calendar,
        quote_rate_hz=args.quote_rate_hz, seed=args.market_seed))
    cfg = BacktestConfig(interval="1s", fee_bps=args.cost_bps)
    rec = cp.MarkRecorder(args.rebalance_s)
    run_backtest(market, cfg, strategy=rec)
    ts, marks = np.array(rec.ts_ns), np.vstack(rec.marks)

    config = cp.CEMConfig(k=args.k, lookback=args.lookback, population=args.population, elite_frac=args.elite_frac,
                          iterations=args.iterations, cost_bps=args.cost_bps, seed=args.seed)
    constraints = Constraints(long_only=True, cap=args.cap, gross=1.0, net=1.0)
    t = cp.train(marks, ts, config, constraints)
    path = cp.save(t, args.out, symbols=list(market.instruments.symbols), rebalance_s=args.rebalance_s)

    # The engine: the saved policy over the whole market, its daily returns split on the same days.
    policy = cp.CEMPolicy(str(path))
    r = run_backtest(market, cfg, strategy=policy)
    daily, day = daily_return_days(r.equity_ts_ns, r.equity)
    engine = {}
    for name in ("train", "validation", "test"):
        d = daily[np.isin(day, getattr(t.split, name))]
        engine[name] = float(d.mean() / d.std(ddof=1))
    equal_weight = cp.evaluate(marks, ts, t, np.zeros_like(t.theta))  # the CEM's start, as a baseline
    last_mean = {k: t.history[-1][k] for k in ("train", "validation")}  # where the search ended
    out = dict(simulator=t.sharpe, engine=engine, equal_weight=equal_weight, last_mean=last_mean,
               best_iteration=t.best_iteration,
               days={k: len(v) for k, v in vars(t.split).items()}, periods=len(marks), fills=len(r.fills),
               fill_hash=r.fill_hash(), policy=str(path))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
