"""EMA cross as a compiled strategy: the twin of the built-in ``momentum`` (csrc/strategies.hpp),
written as a plain Python function over one tick and its own state row.

Same arithmetic in the same order as the built-in (the EMA recursion, ``floor(notional / mid)``
units, a flip only on a cross, nothing decided during warm-up), so on the same quotes it gives the
same fills bit for bit: compiled by numba, or run as plain Python when numba is absent
(``strategies.compiled``). It measures what a compiled Python strategy costs against the built-in
(bench/test_compiled_bench.py, ``nextick bench --suite compiled``).

    run_backtest(source, config, strategy=ema_cross_compiled(20, 100))
    nextick backtest --strategy strategies.ema_cross_compiled:EmaCrossCompiled
"""

from __future__ import annotations

import math

import numpy as np

from engine.domain.instrument import InstrumentTable
from strategies.builtin import BuiltinSpec
from strategies.compiled import CompiledStrategy

_MOMENTUM = BuiltinSpec(kind="momentum")

# params
A_FAST, A_SLOW, NOTIONAL = 0, 1, 2
# one instrument's state row: the two EMAs, the direction taken (-1, 0, +1), its target units
FAST, SLOW, DIRECTION, TARGET = 0, 1, 2, 3
STATE_INIT = (0.0, 0.0, 0.0, math.nan)


def on_tick(tick, params, state, orders):
    s = state[tick.instrument]
    mid = tick.mid
    if tick.reset:
        s[FAST] = mid
        s[SLOW] = mid
        s[DIRECTION] = 0.0
        return np.nan
    s[FAST] += params[A_FAST] * (mid - s[FAST])
    s[SLOW] += params[A_SLOW] * (mid - s[SLOW])
    if not tick.warm:
        return np.nan
    d = 1.0 if s[FAST] > s[SLOW] else (-1.0 if s[FAST] < s[SLOW] else 0.0)
    if d != 0.0 and d != s[DIRECTION]:
        s[DIRECTION] = d
        s[TARGET] = d * np.floor(params[NOTIONAL] / mid)
    return np.nan if s[DIRECTION] == 0.0 else s[TARGET]


class EmaCrossCompiled(CompiledStrategy):
    """``notional`` None: the initial capital split evenly over the instruments, as the built-in."""

    def __init__(self, fast_span: float = _MOMENTUM.fast_span, slow_span: float = _MOMENTUM.slow_span,
                 notional: float | None = None, compile: bool | None = None) -> None:
        params = (2.0 / (fast_span + 1.0), 2.0 / (slow_span + 1.0), math.nan if notional is None else notional)
        super().__init__(on_tick, params=params, state_init=STATE_INIT, name="ema_cross_compiled", compile=compile)
        self.notional = notional

    def prepare(self, instruments: InstrumentTable, *, initial_capital: float) -> np.ndarray:
        params = self.params.copy()
        if self.notional is None:
            params[NOTIONAL] = initial_capital / max(len(instruments), 1)
        return params


def ema_cross_compiled(fast_span: float = _MOMENTUM.fast_span, slow_span: float = _MOMENTUM.slow_span,
                       notional: float | None = None, compile: bool | None = None) -> EmaCrossCompiled:
    """The EMA cross twin of ``momentum`` as a compiled strategy (see the module docstring)."""
    return EmaCrossCompiled(fast_span, slow_span, notional, compile)
