"""Estimates from marks sampled at each rebalance: returns, their sample mean, and a Ledoit-Wolf
shrunk covariance.

An allocator keeps its own window of marks (``MarkWindow``): the book's mids at its last
``lookback + 1`` rebalances, so returns are per rebalance period (a 1-hour clock gives hourly
returns). Returns are simple, p_t / p_{t-1} - 1: a portfolio's return is then the weighted sum of
its assets' returns, which is what mean-variance and Mean-CVaR assume.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class MarkWindow:
    """The last ``lookback + 1`` mark vectors (one per rebalance), oldest first."""

    def __init__(self, lookback: int) -> None:
        if isinstance(lookback, bool) or not isinstance(lookback, (int, np.integer)) or lookback < 2:
            raise ValueError(
                f"lookback must be an int >= 2 rebalances (returns needed for a covariance), not {lookback!r}"
            )
        self.lookback = int(lookback)
        self._marks: deque[np.ndarray] = deque(maxlen=self.lookback + 1)

    def __len__(self) -> int:
        return len(self._marks)

    def push(self, mids) -> None:
        """Add the marks of one rebalance (NaN where an instrument has no price yet); copied."""
        m = np.array(mids, dtype=np.float64)
        if m.ndim != 1:
            raise ValueError(f"mids must be 1-D (one per instrument), got shape {m.shape}")
        if self._marks and len(m) != len(self._marks[-1]):
            # A live run may add instruments: earlier marks get NaN for them.
            n = len(m)
            self._marks = deque((_pad(x, n) for x in self._marks), maxlen=self.lookback + 1)
        m[~(m > 0)] = np.nan  # a mark that is not a positive price gives no return
        self._marks.append(m)

    def returns(self) -> np.ndarray:
        """[T, n] simple returns between consecutive marks (T <= lookback); NaN where either mark is
        missing."""
        if len(self._marks) < 2:
            return np.zeros((0, len(self._marks[0]) if self._marks else 0))
        p = np.vstack(self._marks)
        return p[1:] / p[:-1] - 1.0


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    out[: len(x)] = x[:n]
    return out


def complete_rows(returns: np.ndarray) -> np.ndarray:
    """The rows with a return for every column (estimates need a common sample)."""
    r = np.asarray(returns, dtype=np.float64)
    return r[np.all(np.isfinite(r), axis=1)]


def _check(returns, min_rows: int) -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"returns must be 2-D [periods, assets], got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("returns contain NaN or inf; keep complete rows (complete_rows) or drop those assets")
    if len(r) < min_rows:
        raise ValueError(f"returns have {len(r)} periods; need at least {min_rows}: lengthen the lookback or wait")
    return r


def sample_mean(returns) -> np.ndarray:
    """Mean return per asset per period."""
    return _check(returns, 1).mean(axis=0)


def ledoit_wolf(returns) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of per-period returns (sklearn.covariance.LedoitWolf: shrinkage
    toward a scaled identity, intensity estimated from the data; maximum-likelihood scaling 1/T).
    Well conditioned even with fewer periods than assets, where the sample covariance is singular."""
    from sklearn.covariance import LedoitWolf

    r = _check(returns, 2)
    return LedoitWolf(assume_centered=False).fit(r).covariance_


def forecast_returns(pred_mid, mid, *, forecast_horizon_s: float, period_s: float) -> np.ndarray:
    """Expected return per rebalance period from a model's predicted mids: log(pred_mid / mid), the
    model's expected log return over its horizon, times period_s / forecast_horizon_s. The linear
    scaling assumes the predicted drift holds at the same rate over the whole period; the model
    says nothing past its horizon, so for a period longer than the horizon (the usual case) it is
    an extrapolation, and for a decaying signal an optimistic one. A log return stands in for the
    simple return mean-variance expects (they differ by ~r^2/2, negligible at these sizes). NaN
    where either price is missing or not positive (no model, no tick yet)."""
    if not (math.isfinite(forecast_horizon_s) and forecast_horizon_s > 0):
        raise ValueError(
            f"forecast_horizon_s must be > 0 seconds (the model's horizon: its horizon in ticks x the "
            f"interval, 60 for the packaged model), not {forecast_horizon_s!r}"
        )
    if not (math.isfinite(period_s) and period_s > 0):
        raise ValueError(f"period_s must be > 0 seconds (the rebalance period), not {period_s!r}")
    p = np.asarray(pred_mid, dtype=np.float64)
    m = np.asarray(mid, dtype=np.float64)
    ok = (p > 0) & (m > 0)
    out = np.full(p.shape, np.nan)
    out[ok] = np.log(p[ok] / m[ok]) * (period_s / forecast_horizon_s)
    return out
