"""EMA cross in Python: the twin of the built-in ``momentum`` (csrc/strategies.hpp).

Same arithmetic in the same order, vectorized over the tick batch, so on the same quotes it gives
the same fills bit for bit. It exists to measure what a Python strategy costs against the built-in
and to prove the Python strategy interface is exact.
"""

from __future__ import annotations

import numpy as np

from engine.domain.instrument import InstrumentTable
from strategies.base import Strategy, TickBatch
from strategies.builtin import BuiltinSpec

_MOMENTUM = BuiltinSpec(kind="momentum")


class EmaCross(Strategy):
    name = "ema_cross"

    def __init__(
        self, fast_span: float = _MOMENTUM.fast_span, slow_span: float = _MOMENTUM.slow_span, notional: float | None = None
    ) -> None:
        self.a_fast = 2.0 / (fast_span + 1.0)
        self.a_slow = 2.0 / (slow_span + 1.0)
        self.notional = notional
        self._grow(0)

    def _grow(self, n: int) -> None:
        old = getattr(self, "fast", np.empty(0))
        k = len(old)
        if n <= k and k:
            return
        self.fast = np.concatenate([old, np.zeros(n - k)])
        self.slow = np.concatenate([getattr(self, "slow", np.empty(0)), np.zeros(n - k)])
        self.direction = np.concatenate([getattr(self, "direction", np.empty(0, np.int8)), np.zeros(n - k, np.int8)])
        self.target = np.concatenate([getattr(self, "target", np.empty(0)), np.full(n - k, np.nan)])

    def on_start(self, instruments: InstrumentTable, *, initial_capital: float) -> None:
        if self.notional is None:
            self.notional = initial_capital / max(len(instruments), 1)
        self._grow(len(instruments))

    def on_batch(self, batch: TickBatch) -> np.ndarray:
        i = batch.instrument
        if i.max() >= len(self.fast):
            self._grow(int(i.max()) + 1)
        mid = batch.mid
        reset = batch.reset
        fast = self.fast[i]
        slow = self.slow[i]
        fast = np.where(reset, mid, fast + self.a_fast * (mid - fast))
        slow = np.where(reset, mid, slow + self.a_slow * (mid - slow))
        self.fast[i] = fast
        self.slow[i] = slow

        d = np.sign(fast - slow).astype(np.int8)
        direction = np.where(reset, 0, self.direction[i]).astype(np.int8)
        flip = (d != 0) & (d != direction) & ~reset & batch.warm  # no direction taken during warm-up
        direction = np.where(flip, d, direction)
        target = np.where(flip, d * np.floor(self.notional / mid), self.target[i])
        self.direction[i] = direction
        self.target[i] = target
        return np.where(direction == 0, np.nan, target)
