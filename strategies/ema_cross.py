"""EMA cross in Python: the twin of the built-in ``momentum`` (csrc/strategies.hpp).

Same arithmetic in the same order, vectorized over the tick batch, so on the same quotes it gives
the same fills bit for bit. It exists to measure what a Python strategy costs against the built-in
and to prove the Python strategy interface is exact.

Most batches hold one row (raw ticks rarely share a timestamp), so the cost is the number of numpy
calls per batch, not their width (bench/RESULTS.md, "Issue 16"): each instrument's state is one row
of one array, which a 1-row batch works on through views and a wider batch gathers and scatters once;
the work arrays are made once per batch size (or instrument) and filled with ``out=``; and the rare
steps (a reset, a cross) run only when some row needs them.
"""

from __future__ import annotations

import copy

import numpy as np

from engine.domain.instrument import InstrumentTable
from strategies.base import Strategy, TickBatch
from strategies.builtin import BuiltinSpec

_MOMENTUM = BuiltinSpec(kind="momentum")

# Columns of EmaCross.state, one row per instrument. TARGET is NaN whenever DIRECTION is 0 (as
# the built-in answers NaN then), so the target column is the answer as it stands.
FAST, SLOW, DIRECTION, TARGET = range(4)
_FLAT = np.array([0.0, np.nan])  # (DIRECTION, TARGET) after a reset


class _Work:
    """Work arrays for batches of n rows: the rows' state (a gathered copy, or for a 1-row batch a
    view of the instrument's own row) and the intermediate results.

    Every numpy call here has operands of one shape (a broadcast or a Python scalar takes numpy's
    slower general path) and, on 1-row arrays, an output apart from its inputs (numpy 2.4 takes
    about 3x longer to write a 1-element result over its own input)."""

    __slots__ = (
        "a_fast",
        "a_slow",
        "crossed",
        "d",
        "direction",
        "fast",
        "flip",
        "held",
        "notional",
        "slow",
        "state",
        "target",
        "u",
        "v",
        "zeros",
    )

    def __init__(self, state: np.ndarray, a_fast: float, a_slow: float, notional: float) -> None:
        n = len(state)
        self._view(state)
        self.a_fast = np.full(n, a_fast)
        self.a_slow = np.full(n, a_slow)
        self.notional = np.full(n, notional)
        self.u = np.empty(n)
        self.v = np.empty(n)
        self.d = np.empty(n)
        self.zeros = np.zeros(n)
        self.crossed = np.empty(n, np.bool_)
        self.flip = np.empty(n, np.bool_)

    def _view(self, state: np.ndarray) -> None:
        self.state = state
        self.fast = state[:, FAST]
        self.slow = state[:, SLOW]
        self.held = state[:, DIRECTION:]
        self.direction = state[:, DIRECTION]
        self.target = state[:, TARGET]

    def on(self, state: np.ndarray) -> _Work:
        """The same work arrays over other rows of the same count (a _Work per instrument costs only views)."""
        w = copy.copy(self)
        w._view(state)
        return w


class EmaCross(Strategy):
    name = "ema_cross"

    def __init__(
        self, fast_span: float = _MOMENTUM.fast_span, slow_span: float = _MOMENTUM.slow_span, notional: float | None = None
    ) -> None:
        self.a_fast = 2.0 / (fast_span + 1.0)
        self.a_slow = 2.0 / (slow_span + 1.0)
        self.notional = notional
        self.state = np.empty((0, 4))
        self._gathered: dict[int, _Work] = {}  # by batch size
        self._in_place: dict[int, _Work] = {}  # by instrument, views of self.state
        self._one_row: _Work | None = None  # the work arrays the _in_place share

    def _grow(self, n: int) -> None:
        k = len(self.state)
        if n > k:
            fresh = np.zeros((n - k, 4))
            fresh[:, DIRECTION:] = _FLAT
            self.state = np.concatenate([self.state, fresh])
            self._in_place.clear()  # views of the old array

    def on_start(self, instruments: InstrumentTable, *, initial_capital: float) -> None:
        if self.notional is None:
            self.notional = initial_capital / max(len(instruments), 1)
        self._grow(len(instruments))

    def on_batch(self, batch: TickBatch) -> np.ndarray:
        i = batch.instrument
        n = len(i)
        if n == 1:  # the usual batch: the rule works on the instrument's own state row, nothing to copy
            w = self._in_place.get(int(i[0])) or self._row_work(int(i[0]))
            self._decide(w, batch)
            return w.target
        w = self._gathered.get(n) or self._gathered.setdefault(n, self._work(np.empty((n, 4))))
        try:
            self.state.take(i, axis=0, out=w.state)
        except IndexError:  # an instrument added after on_start (a live run): checked only when it happens
            self._grow(int(i.max()) + 1)
            self.state.take(i, axis=0, out=w.state)
        self._decide(w, batch)
        self.state[i] = w.state
        return w.target

    def _row_work(self, k: int) -> _Work:
        self._grow(k + 1)
        self._one_row = self._one_row or self._work(np.empty((1, 4)))
        w = self._in_place[k] = self._one_row.on(self.state[k : k + 1])
        return w

    def _work(self, state: np.ndarray) -> _Work:
        assert self.notional is not None, "on_start sets the notional before the first batch"
        return _Work(state, self.a_fast, self.a_slow, self.notional)

    def _decide(self, w: _Work, batch: TickBatch) -> None:
        """The built-in's momentum rule on the rows of w, state updated in w.state."""
        self._update_emas(w, batch.mid, batch.reset)
        self._follow_cross(w, batch.mid, batch.warm)

    def _update_emas(self, w: _Work, mid: np.ndarray, reset: np.ndarray) -> None:
        """Both EMAs take a step toward mid; a reset row restarts at mid, flat."""
        self._ema_step(w, w.fast, w.a_fast, mid)
        self._ema_step(w, w.slow, w.a_slow, mid)
        if np.count_nonzero(reset):
            # fast == slow afterwards, so the row cannot cross below: the built-in's early return.
            np.copyto(w.fast, mid, where=reset)
            np.copyto(w.slow, mid, where=reset)
            np.copyto(w.held, _FLAT, where=reset[:, None])

    @staticmethod
    def _ema_step(w: _Work, ema: np.ndarray, alpha: np.ndarray, mid: np.ndarray) -> None:
        """ema += alpha * (mid - ema), the built-in's operations in its order."""
        np.subtract(mid, ema, out=w.u)
        np.multiply(alpha, w.u, out=w.v)
        np.add(ema, w.v, out=w.u)
        ema[...] = w.u

    @staticmethod
    def _follow_cross(w: _Work, mid: np.ndarray, warm: np.ndarray) -> None:
        """A warm row whose EMA order differs from its direction takes the new direction and
        d * floor(notional / mid) units; d is +1 while fast > slow, -1 while fast < slow."""
        d = w.d
        np.subtract(w.fast, w.slow, out=w.u)
        np.sign(w.u, out=d)
        # d and direction are -1, 0 or 1: d * (d - direction) > 0 exactly when d != 0 and d != direction.
        np.subtract(d, w.direction, out=w.u)
        np.multiply(w.u, d, out=w.v)
        np.greater(w.v, w.zeros, out=w.crossed)
        np.logical_and(w.crossed, warm, out=w.flip)  # no direction taken during warm-up
        if np.count_nonzero(w.flip):
            # Worked out for every row, kept for the flipping ones: a masked ufunc costs twice a plain one.
            np.divide(w.notional, mid, out=w.u)
            np.floor(w.u, out=w.v)
            np.multiply(d, w.v, out=w.u)
            np.copyto(w.target, w.u, where=w.flip)
            np.copyto(w.direction, d, where=w.flip)
