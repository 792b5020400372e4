"""Allocators: pure functions from estimates and constraints to weights (fractions of equity).

Each takes ``(mu, cov, constraints, ...)`` (per-period expected returns [n], covariance [n, n]; an
allocator that needs neither ignores them) and returns feasible weights [n]: the heuristic ones
(equal weight, inverse volatility, momentum, cap weight, index) scale raw weights to the target sum
(``Constraints.target_sum``) and project them onto the constraints (``constraints.project``); the
optimising ones solve their program over the constraint set directly (SLSQP, ``solve_qp``).
"""

from __future__ import annotations

import math

import numpy as np

from strategies.allocation.constraints import Constraints, project, solve_qp


def _mu(mu, n: int | None = None) -> np.ndarray:
    m = np.asarray(mu, dtype=np.float64)
    if m.ndim != 1 or len(m) == 0 or (n is not None and len(m) != n):
        raise ValueError(f"mu must be 1-D with one expected return per asset, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("mu must be finite; drop the assets without an estimate")
    return m


def _cov(cov, n: int) -> np.ndarray:
    s = np.asarray(cov, dtype=np.float64)
    if s.shape != (n, n):
        raise ValueError(f"cov must be [{n}, {n}] for {n} assets, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("cov must be finite; estimate it from complete rows of returns")
    if np.any(np.diag(s) < 0):
        raise ValueError("cov has a negative variance; give a covariance matrix (e.g. estimators.ledoit_wolf)")
    return 0.5 * (s + s.T)


def _scaled(raw: np.ndarray, c: Constraints) -> np.ndarray:
    """Raw nonnegative scores to weights summing to the target, projected; all-zero scores give the
    projection of zero (cash when the net is free, the most even feasible book when it is set)."""
    total = raw.sum()
    w = raw * (c.target_sum() / total) if total > 0 else np.zeros_like(raw)
    return project(w, c)


def equal_weight(mu, cov, constraints: Constraints) -> np.ndarray:
    """target_sum / n on every asset, projected."""
    n = len(_mu(mu))
    return _scaled(np.ones(n), constraints)


def inverse_volatility(mu, cov, constraints: Constraints) -> np.ndarray:
    """w_i proportional to 1 / sigma_i, projected. An asset with zero variance is refused (its
    weight would be infinite)."""
    n = len(_mu(mu))
    sd = np.sqrt(np.diag(_cov(cov, n)))
    if np.any(sd <= 0):
        raise ValueError("inverse_volatility needs every variance > 0; drop the assets whose price has not moved")
    return _scaled(1.0 / sd, constraints)


def min_variance(mu, cov, constraints: Constraints) -> np.ndarray:
    """argmin w' Sigma w over the constraint set (with net=None and long-only that is cash: set a
    net target, 1.0 for fully invested)."""
    n = len(_mu(mu))
    return solve_qp(2.0 * _cov(cov, n), np.zeros(n), constraints)


def mean_variance(mu, cov, constraints: Constraints, risk_aversion: float = 1.0) -> np.ndarray:
    """argmax mu'w - (risk_aversion / 2) w' Sigma w over the constraint set; without binding
    constraints the answer is Sigma^-1 mu / risk_aversion."""
    if not (isinstance(risk_aversion, (int, float)) and math.isfinite(risk_aversion) and risk_aversion > 0):
        raise ValueError(f"risk_aversion must be a finite number > 0 (e.g. 1.0 to 10.0), not {risk_aversion!r}")
    m = _mu(mu)
    return solve_qp(risk_aversion * _cov(cov, len(m)), m, constraints)


def momentum(trailing_return, cov, constraints: Constraints) -> np.ndarray:
    """w_i proportional to max(trailing_return_i, 0), projected: the losers get nothing."""
    r = _mu(trailing_return)
    return _scaled(np.maximum(r, 0.0), constraints)


def cap_weight(market_cap, cov, constraints: Constraints) -> np.ndarray:
    """The cap-weighted basket: w_i proportional to market_cap_i (>= 0), projected."""
    m = _mu(market_cap)
    if np.any(m < 0):
        raise ValueError("market_cap must be >= 0 per asset (currency or shares x price)")
    if not m.sum() > 0:
        raise ValueError("market_cap sums to 0; give at least one positive capitalisation")
    return _scaled(m, constraints)


def index_proxy(mu, cov, constraints: Constraints, index: int = 0) -> np.ndarray:
    """Everything in one instrument (an index as the market proxy), projected: with a cap below the
    target the rest is spread as evenly as the projection allows."""
    n = len(_mu(mu))
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ValueError(f"index must be an instrument index 0..{n - 1}, not {index!r}")
    raw = np.zeros(n)
    raw[index] = 1.0
    return _scaled(raw, constraints)


ALLOCATORS = {
    "equal_weight": equal_weight,
    "inverse_volatility": inverse_volatility,
    "min_variance": min_variance,
    "mean_variance": mean_variance,
    "momentum": momentum,
    "cap_weight": cap_weight,
    "index_proxy": index_proxy,
}
