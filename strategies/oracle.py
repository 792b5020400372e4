"""The ceiling: the ``ssm_threshold`` entry rule fed the synthetic market's true expected return.

On the synthetic market the expected mid ``horizon_s`` ahead is known exactly
(``fair_px * exp(oracle_ret)``, feeds/synthetic.py). This strategy takes the same decisions the
built-in ``ssm_threshold`` takes on a model's prediction (long above ask + threshold, short below
bid - threshold, otherwise hold; nothing opened during warm-up) but with that truth, so its Sharpe
bounds what any signal can make under the same fills and fees. It has no stop-loss or take-profit:
a perfect signal needs none.
"""

from __future__ import annotations

import numpy as np

from engine.domain.instrument import InstrumentTable
from strategies.base import Strategy, TickBatch


class OracleThreshold(Strategy):
    name = "oracle"

    def __init__(self, market, threshold_bps: float = 1.0, notional: float | None = None, conflated: bool = True) -> None:
        """``market``: a feeds.synthetic.SyntheticMarket (regenerated here, bit-identical to what the
        engine replays). ``conflated``: ticks are interval snapshots stamped at the interval end, so
        the snapshot at T carries the last quote received strictly before T."""
        self.threshold = threshold_bps * 1e-4
        self.notional = notional
        self.side = "left" if conflated else "right"
        ts: dict[int, list[np.ndarray]] = {}
        pred: dict[int, list[np.ndarray]] = {}
        for s in market.sessions():
            q = s.quotes
            for i in np.unique(q["instrument"]):
                m = q["instrument"] == i
                ts.setdefault(int(i), []).append(q["ts_recv"][m])
                pred.setdefault(int(i), []).append(s.fair_px[m] * np.exp(s.oracle_ret[m]))
        self.ts = {i: np.concatenate(v) for i, v in ts.items()}
        self.pred = {i: np.concatenate(v) for i, v in pred.items()}

    def on_start(self, instruments: InstrumentTable, *, initial_capital: float) -> None:
        n = max(len(instruments), 1)
        if self.notional is None:
            self.notional = initial_capital / n
        self.direction = np.zeros(n, np.int8)
        self.target = np.full(n, np.nan)

    def expected_mid(self, instrument: int, ts_ns: int) -> float:
        t = self.ts[instrument]
        k = int(np.searchsorted(t, ts_ns, side=self.side)) - 1
        return float(self.pred[instrument][k]) if k >= 0 else float("nan")

    def on_batch(self, batch: TickBatch) -> np.ndarray:
        i = batch.instrument
        ts = batch.ts_ns
        pred = np.array([self.expected_mid(int(k), ts) for k in i])
        signal = np.where(pred > batch.ask_px * (1 + self.threshold), 1, np.where(pred < batch.bid_px * (1 - self.threshold), -1, 0))
        reset = batch.reset
        self.direction[i[reset]] = 0
        self.target[i[reset]] = np.nan
        take = (signal != 0) & (signal != self.direction[i]) & batch.warm
        self.direction[i[take]] = signal[take]
        self.target[i[take]] = signal[take] * np.floor(self.notional / batch.mid[take])
        return self.target[i]
