"""Scenario generators for Mean-CVaR (cvar.mean_cvar): [n_scenarios, n_assets] simple returns over
a horizon of ``horizon`` periods (a period: the spacing of the input returns, e.g. one rebalance).

Each is seeded (numpy's PCG64 via ``default_rng(seed)``) and draws in a fixed order, so the same
inputs and seed give the same scenarios bit for bit.

- ``block_bootstrap``: circular blocks of historical returns (keeps cross-asset dependence and
  short-range autocorrelation, assumes nothing about the distribution);
- ``GBM``: geometric Brownian motion calibrated to the data: drift and covariance of log returns,
  correlated through the Cholesky factor;
- ``GarchJump``: per asset a GARCH(1,1) variance with Merton (compound Poisson normal) jumps, fitted
  by maximum likelihood; diffusive shocks correlated across assets, jumps independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _returns(returns, min_rows: int = 2) -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"returns must be 2-D [periods, assets], got shape {r.shape}")
    if len(r) < min_rows:
        raise ValueError(f"returns have {len(r)} periods; need at least {min_rows}: give a longer history")
    if not np.all(np.isfinite(r)) or np.any(r <= -1):
        raise ValueError("returns must be finite simple returns > -1; drop incomplete rows first")
    return r


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, not {value!r}")
    return int(value)


def block_bootstrap(returns, n_scenarios: int, *, horizon: int = 1, block_len: int = 5, seed: int = 0) -> np.ndarray:
    """Each scenario compounds ``horizon`` historical returns taken in circular blocks of
    ``block_len`` consecutive periods (whole rows: all assets at once) from random starts."""
    r = _returns(returns, 1)
    S, h, b = _count(n_scenarios, "n_scenarios"), _count(horizon, "horizon"), _count(block_len, "block_len")
    T = len(r)
    if b > T:
        raise ValueError(f"block_len {b} exceeds the {T} periods of history; give block_len <= {T}")
    n_blocks = -(-h // b)
    starts = np.random.default_rng(seed).integers(0, T, size=(S, n_blocks))
    idx = ((starts[:, :, None] + np.arange(b)) % T).reshape(S, n_blocks * b)[:, :h]
    return np.expm1(np.log1p(r)[idx].sum(axis=1))


@dataclass(frozen=True)
class GBM:
    drift: np.ndarray  # [n] mean log return per period
    cov: np.ndarray  # [n, n] covariance of log returns per period

    @classmethod
    def fit(cls, returns) -> GBM:
        """Sample mean and covariance (ddof=1) of log(1 + returns)."""
        x = np.log1p(_returns(returns, 2))
        return cls(drift=x.mean(axis=0), cov=np.atleast_2d(np.cov(x, rowvar=False, ddof=1)))

    def sample(self, n_scenarios: int, *, horizon: int = 1, seed: int = 0) -> np.ndarray:
        """Log returns over ``horizon`` periods are N(h drift, h cov) exactly (independent
        increments), drawn as h drift + sqrt(h) L z with cov = L L'."""
        S, h = _count(n_scenarios, "n_scenarios"), _count(horizon, "horizon")
        L = _cholesky(self.cov)
        z = np.random.default_rng(seed).standard_normal((S, len(self.drift)))
        return np.expm1(h * self.drift + math.sqrt(h) * z @ L.T)


def _cholesky(cov: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(
            "the covariance is not positive definite (fewer periods than assets, or a constant or duplicated "
            "asset): give a longer history or drop the redundant assets"
        ) from None


# Jumps per period in the likelihood's Poisson mixture: with jump_rate <= MAX_JUMP_RATE the mass
# beyond MAX_JUMPS is below 1e-10.
MAX_JUMPS = 8
MAX_JUMP_RATE = 0.5


@dataclass(frozen=True)
class GarchJump:
    """Per asset i (arrays of n), for the log return x_t of one period:

        x_t = mu + e_t,   e_t = sqrt(h_t) z_t + J_t - jump_rate * jump_mean
        J_t = sum of N_t ~ Poisson(jump_rate) draws of N(jump_mean, jump_sd^2)
        h_t = omega + a e_{t-1}^2 + b h_{t-1}

    z_t is N(0, corr) across assets; jumps are independent. ``h_next`` is the variance the data
    leaves for the first simulated period.
    """

    mu: np.ndarray
    omega: np.ndarray
    a: np.ndarray
    b: np.ndarray
    jump_rate: np.ndarray  # expected jumps per period
    jump_mean: np.ndarray
    jump_sd: np.ndarray
    corr: np.ndarray  # [n, n] correlation of the standardised diffusive shocks
    h_next: np.ndarray

    @classmethod
    def fit(cls, returns) -> GarchJump:
        """Maximum likelihood per asset (scipy.optimize.minimize, L-BFGS-B, numerical gradient).

        The likelihood of x_t given h_t is the Poisson mixture sum_k P(N = k) N(x_t; mu -
        jump_rate jump_mean + k jump_mean, h_t + k jump_sd^2), truncated at MAX_JUMPS; h_1 is the
        long-run variance. Parameterised for bounds only: long-run variance v = omega / (1 - a - b)
        (log), persistence a + b in [0, 0.999] (stationary), ARCH share a / (a + b), log jump rate
        <= log MAX_JUMP_RATE, log jump sd. Start: the sample moments, persistence 0.9, jump rate
        0.05, jump sd 3 sample sds. On short histories the jump parameters are weakly identified;
        the bounds keep them finite. corr is the correlation of e_t / sqrt(h_t).
        """
        from scipy.optimize import minimize

        x = np.log1p(_returns(returns, 20))
        fits = []
        for i in range(x.shape[1]):
            xi = x[:, i]
            m, sd = float(xi.mean()), float(xi.std()) or 1e-12
            start = np.array([m, math.log(sd**2), 0.9, 0.1, math.log(0.05), 0.0, math.log(3 * sd)])
            bounds = [(m - 10 * sd, m + 10 * sd), (math.log(sd**2) - 5, math.log(sd**2) + 5), (0.0, 0.999),
                      (0.0, 1.0), (math.log(1e-4), math.log(MAX_JUMP_RATE)), (-10 * sd, 10 * sd),
                      (math.log(sd) - 5, math.log(sd) + 5)]
            res = minimize(_neg_loglik, start, args=(xi,), method="L-BFGS-B", bounds=bounds)
            fits.append(_unpack(res.x))
        mu, omega, a, b, lam, jm, js = (np.array(v) for v in zip(*fits))
        z = np.empty_like(x)
        h_next = np.empty(x.shape[1])
        for i in range(x.shape[1]):
            e, h = _filter(x[:, i], mu[i], omega[i], a[i], b[i], lam[i], jm[i])
            z[:, i] = e / np.sqrt(h)
            h_next[i] = omega[i] + a[i] * e[-1] ** 2 + b[i] * h[-1]
        corr = np.atleast_2d(np.corrcoef(z, rowvar=False))
        return cls(mu=mu, omega=omega, a=a, b=b, jump_rate=lam, jump_mean=jm, jump_sd=js, corr=corr, h_next=h_next)

    def sample(self, n_scenarios: int, *, horizon: int = 1, seed: int = 0) -> np.ndarray:
        """Simple returns over ``horizon`` periods, stepping the variance recursion per path."""
        S, h_steps = _count(n_scenarios, "n_scenarios"), _count(horizon, "horizon")
        n = len(self.mu)
        L = _cholesky(self.corr)
        rng = np.random.default_rng(seed)
        h = np.broadcast_to(self.h_next, (S, n)).copy()
        x = np.zeros((S, n))
        for _ in range(h_steps):
            z = rng.standard_normal((S, n)) @ L.T
            k = rng.poisson(self.jump_rate, (S, n))
            jump = k * self.jump_mean + np.sqrt(k) * self.jump_sd * rng.standard_normal((S, n))
            e = np.sqrt(h) * z + jump - self.jump_rate * self.jump_mean
            x += self.mu + e
            h = self.omega + self.a * e**2 + self.b * h
        return np.expm1(x)


def _unpack(theta: np.ndarray) -> tuple[float, ...]:
    mu, log_v, persistence, share, log_lam, jm, log_js = (float(t) for t in theta)
    a, b = persistence * share, persistence * (1 - share)
    omega = math.exp(log_v) * (1 - persistence)
    return mu, omega, a, b, math.exp(log_lam), jm, math.exp(log_js)


def _filter(x, mu, omega, a, b, lam, jm):
    """Residuals e_t and variances h_t: h_t = omega + a e_{t-1}^2 + b h_{t-1} is a linear filter of
    e^2 (e does not depend on h), so scipy.signal.lfilter runs it; h_1 = omega / (1 - a - b)."""
    from scipy.signal import lfilter

    e = x - mu + lam * jm
    u = np.empty_like(x)
    u[0] = omega / max(1.0 - a - b, 1e-3)
    u[1:] = omega + a * e[:-1] ** 2
    return e, np.maximum(lfilter([1.0], [1.0, -b], u), 1e-300)


def _neg_loglik(theta: np.ndarray, x: np.ndarray) -> float:
    mu, omega, a, b, lam, jm, js = _unpack(theta)
    e, h = _filter(x, mu, omega, a, b, lam, jm)
    k = np.arange(MAX_JUMPS + 1)
    log_pk = k * math.log(lam) - lam - np.array([math.lgamma(j + 1) for j in k])
    var = h[:, None] + k * js**2  # [T, K]
    dev = e[:, None] - k * jm
    log_dens = log_pk - 0.5 * (np.log(2 * np.pi * var) + dev**2 / var)
    top = log_dens.max(axis=1, keepdims=True)
    return -float((top[:, 0] + np.log(np.exp(log_dens - top).sum(axis=1))).sum())
