"""How much of a sweep's best result is luck: the deflated Sharpe ratio and the probability of backtest
overfitting.

Both take per-period (daily) returns and Sharpe ratios, not annualized: a sweep's periods are days.

- ``deflated_sharpe_ratio`` (Bailey & Lopez de Prado, 2014): the probability that the chosen
  configuration's true Sharpe ratio beats the best one N worthless trials would show by chance.
  That expected maximum comes from the spread of the trials' Sharpe ratios; the standard error of
  the chosen one's Sharpe ratio from its returns' length, skewness and kurtosis.
- ``probability_of_overfitting`` (Bailey, Borwein, Lopez de Prado & Zhu, 2017, combinatorially
  symmetric cross-validation): the share of in-sample / out-of-sample splits of the periods on which
  the configuration that was best in sample did no better than the median out of sample.
"""

from __future__ import annotations

import itertools
import math

import msgspec
import numpy as np


class DeflatedSharpe(msgspec.Struct, kw_only=True):
    """``probability`` is the deflated Sharpe ratio; the other fields are the steps that led to it."""

    probability: float
    sharpe: float  # the chosen configuration's per-period Sharpe ratio
    expected_max_sharpe: float  # SR0: the best of n_trials worthless trials, in expectation
    n_trials: int
    trial_sharpe_variance: float
    skewness: float  # of the chosen configuration's returns
    kurtosis: float  # Pearson (a normal distribution has 3)
    n_returns: int


class Overfitting(msgspec.Struct, kw_only=True):
    """``probability`` is the PBO; ``logits[c]`` is lambda of split c (<= 0: overfit on that split)."""

    probability: float
    logits: list[float]
    n_blocks: int
    n_splits: int
    n_configs: int
    n_periods: int


def _sharpe(returns: np.ndarray) -> float:
    """Per-period Sharpe ratio ``mean / std(ddof=1)``; nan with fewer than 2 returns or no spread."""
    if returns.size < 2:
        return math.nan
    sd = float(np.std(returns, ddof=1))
    # Identical returns differ from their mean by rounding only; a ratio over that noise is no Sharpe ratio.
    if sd <= 16 * np.finfo(np.float64).eps * (1.0 + float(np.max(np.abs(returns)))):
        return math.nan
    return float(np.mean(returns)) / sd


def expected_max_sharpe(trial_sharpes: np.ndarray | list[float]) -> tuple[float, float]:
    """(SR0, the trials' Sharpe variance): the expected largest Sharpe ratio of ``len(trial_sharpes)``
    independent trials whose true Sharpe ratio is 0 and whose estimates vary as these do::

        SR0 = sqrt(V) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))

    with Z the standard normal quantile and g the Euler-Mascheroni constant. N counts every trial,
    nan ones included (a configuration that never traded was still tried); V is the sample variance
    (ddof=1) of the finite ones. One trial is not a search: SR0 = 0."""
    sr = np.asarray(trial_sharpes, dtype=np.float64)
    n = int(sr.size)
    finite = sr[np.isfinite(sr)]
    variance = float(np.var(finite, ddof=1)) if finite.size >= 2 else 0.0
    if n < 2:
        return 0.0, variance
    # scipy.stats is imported here, not at the top: ~0.8 s, and every `nextick` command imports this module.
    from scipy import stats

    g = np.euler_gamma
    z = (1 - g) * stats.norm.ppf(1 - 1 / n) + g * stats.norm.ppf(1 - 1 / (n * math.e))
    return math.sqrt(variance) * float(z), variance


def deflated_sharpe_ratio(returns: np.ndarray | list[float], trial_sharpes: np.ndarray | list[float]) -> DeflatedSharpe:
    """The deflated Sharpe ratio of a configuration chosen among ``trial_sharpes`` (all trials' per-period
    Sharpe ratios, the chosen one's included), from its per-period ``returns``::

        DSR = Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR^2))

    T = len(returns), SR their Sharpe ratio (mean / std, ddof=1), skew and kurt their (biased, Pearson)
    skewness and kurtosis, SR0 from ``expected_max_sharpe``. nan where SR is undefined (fewer than 2
    returns, no spread) or the variance term is not positive (possible for extreme skewness)."""
    from scipy import stats

    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1 or not np.isfinite(r).all():
        raise ValueError("returns must be a 1-D array of finite numbers (the chosen configuration's daily returns)")
    sr0, variance = expected_max_sharpe(trial_sharpes)
    sr = _sharpe(r)
    t = int(r.size)
    skew = kurt = prob = math.nan
    if not math.isnan(sr):
        skew = float(stats.skew(r))
        kurt = float(stats.kurtosis(r, fisher=False))
        spread = 1 - skew * sr + (kurt - 1) / 4 * sr**2
        if spread > 0:
            prob = float(stats.norm.cdf((sr - sr0) * math.sqrt(t - 1) / math.sqrt(spread)))
    return DeflatedSharpe(
        probability=prob,
        sharpe=sr,
        expected_max_sharpe=sr0,
        n_trials=len(np.atleast_1d(trial_sharpes)),
        trial_sharpe_variance=variance,
        skewness=skew,
        kurtosis=kurt,
        n_returns=t,
    )


def default_blocks(n_periods: int, most: int = 16) -> int:
    """The number of CSCV blocks for ``n_periods``: the largest even number up to ``most`` (the paper's
    16) and ``n_periods``; 0 when there are too few periods (under 4) for two halves of 2."""
    s = min(most, n_periods) // 2 * 2
    return s if n_periods >= 4 and s >= 2 else 0


def probability_of_overfitting(returns: np.ndarray, n_blocks: int = 16) -> Overfitting:
    """PBO by combinatorially symmetric cross-validation over ``returns`` (configurations x periods).

    The periods are cut, in order, into ``n_blocks`` (even) contiguous blocks of equal size (the first
    ones one longer where the periods do not divide evenly). For each of the C(S, S/2) ways to take
    half of the blocks as the in-sample set: the configuration with the best in-sample Sharpe ratio
    (the first on a tie), its rank r among all N configurations on the other half (1 = worst; ties
    averaged), w = r / (N + 1), lambda = ln(w / (1 - w)). PBO is the share of splits with lambda <= 0.
    A configuration with no Sharpe ratio on a half (no spread) ranks below every other there.
    """
    from scipy import stats

    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"returns must be configurations x periods (2-D), got shape {m.shape}")
    n_configs, n_periods = m.shape
    if not np.isfinite(m).all():
        raise ValueError("returns must be finite; drop periods that some configuration lacks")
    if n_configs < 2:
        raise ValueError(f"PBO compares configurations: got {n_configs}, need at least 2")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be an even number >= 2, got {n_blocks}")
    if n_periods < n_blocks or n_periods // n_blocks * (n_blocks // 2) < 2:
        raise ValueError(
            f"{n_periods} periods cannot make {n_blocks} blocks whose halves hold 2 periods or more; "
            f"use fewer blocks (default_blocks({n_periods}) = {default_blocks(n_periods)})"
        )
    blocks = np.array_split(np.arange(n_periods), n_blocks)
    logits = []
    for chosen in itertools.combinations(range(n_blocks), n_blocks // 2):
        inside = np.zeros(n_periods, dtype=bool)
        inside[np.concatenate([blocks[b] for b in chosen])] = True
        best = int(np.argmax(_performance(m[:, inside])))
        rank = stats.rankdata(_performance(m[:, ~inside]))[best]
        w = rank / (n_configs + 1)
        logits.append(math.log(w / (1 - w)))
    lam = np.asarray(logits)
    return Overfitting(
        probability=float(np.mean(lam <= 0)),
        logits=logits,
        n_blocks=n_blocks,
        n_splits=len(logits),
        n_configs=n_configs,
        n_periods=n_periods,
    )


def _performance(m: np.ndarray) -> np.ndarray:
    """Each row's Sharpe ratio, -inf where it has none: the worst, for argmax and rank alike."""
    sr = np.array([_sharpe(row) for row in m])
    return np.where(np.isnan(sr), -np.inf, sr)
