"""Issue 14 item 8 on the shared real recordings, as far as they reach: the packaged SSM (trained on
the synthetic market) run on real Binance and Tardis quotes, its signal decay and its threshold rule
with fees. Run: ``python -m bench.real_data_study`` (skips when ../shared/data is absent).

The recordings are minutes long (Binance: 2024-08-08 23:54 to 2024-08-09 00:05 UTC; Tardis: 227 s),
so the daily method of ``nextick study`` (train on earlier days, the PML over daily returns) cannot
run on them: there is no second day to study. What can be measured is printed, whatever it says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from engine.backtest import BacktestConfig, record_predictions, run_backtest
from engine.model_study import segment_ids
from engine.options import quote_source
from engine.study.decay import lag_profile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {
    "binance raw (spot + usd-m BTCUSDT, ETHUSDT)": {"raw_paths": sorted((SHARED / "binance-raw").glob("*.gz"))},
    "tardis binance-futures BTCUSDT": {"data": SHARED / "tardis" / "binance-futures_quotes_BTCUSDT_2020-02-22.csv"},
}


def future_ic(tap: np.ndarray, horizon: int) -> float:
    """Correlation of the predicted log return with the realized one ``horizon`` ticks later, per
    instrument within segments, pooled."""
    seg = segment_ids(tap)
    xs, ys = [], []
    for i in np.unique(tap["instrument"]):
        rows = np.flatnonzero(tap["instrument"] == i)
        mid, pred, s = tap["mid"][rows], tap["pred_mid"][rows], seg[rows]
        ok = (s[horizon:] == s[:-horizon]) & np.isfinite(pred[:-horizon])
        xs.append(np.log(pred[:-horizon] / mid[:-horizon])[ok])
        ys.append(np.log(mid[horizon:] / mid[:-horizon])[ok])
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else float("nan")


def main() -> int:
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the shared real data is only on the developers' machine)")
        return 0
    for name, options in SETS.items():
        source = quote_source(options)
        config = BacktestConfig(strategy="ssm_threshold", interval="1s", fee_bps=1.0)
        _, tap = record_predictions(source, config, tap=True)
        if len(tap) == 0:
            print(f"{name}: no in-session ticks")
            continue
        span_s = (int(tap["ts"].max()) - int(tap["ts"].min())) / 1e9
        print(f"{name}: {len(tap):,} ticks of 1 s over {span_s:.0f} s, {len(np.unique(tap['instrument']))} instruments")
        horizon = 60  # the packaged model's horizon in ticks
        print(f"  IC of the predicted {horizon}-tick return with the realized one: {future_ic(tap, horizon):+.3f}")
        finite = np.isfinite(tap["pred_mid"])
        seg = segment_ids(tap)
        try:
            p = lag_profile(tap["ts"][finite], tap["instrument"][finite], tap["mid"][finite], tap["pred_mid"][finite],
                            seg[finite], 1_000_000_000)
            print("  decay, 1 s bars, corr(surprise, return) at lags " +
                  ", ".join(f"{k:+d}: {c:+.3f}" for k, c in zip(p.lags, p.corr)) + f" ({p.n_instruments} instruments)")
        except ValueError as e:
            print(f"  decay: {e}")
        for threshold in (0.0, 1.0, 3.0):
            r = run_backtest(quote_source(options), BacktestConfig(strategy="ssm_threshold", interval="1s", fee_bps=1.0,
                                                                   strategy_params={"threshold_bps": threshold}))
            print(f"  ssm_threshold {threshold:g} bps, fee 1 bps: {len(r.fills)} fills, total return "
                  f"{r.metrics.total_return:+.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
