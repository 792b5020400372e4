"""CAPM of a configuration against an equal-weighted market, with Newey-West standard errors.

``capm`` regresses a configuration's daily excess return on the market's::

    strategy_daily_t - rf_daily = alpha_daily + beta * (market_daily_t - rf_daily) + e_t

by ordinary least squares (statsmodels ``OLS``), with heteroskedasticity- and autocorrelation-
consistent (HAC, Newey-West: Bartlett kernel) standard errors, because a threshold strategy's daily
returns are autocorrelated (positions and drawdowns span days) and plain OLS errors would be too
small. The lag count defaults to the Newey-West (1994) rule ``floor(4 * (T / 100) ** (2 / 9))``
(4 lags for a year of 252 days). The small-sample correction ``T / (T - 2)`` is applied to the
covariance (statsmodels' ``use_correction=True``), so that with few days the errors err large.

``market_proxy_daily`` builds the market from the instruments' mids: the equal-weighted mean of the
instruments' daily simple returns (simple, not log: the mean of simple returns is the return of a
portfolio rebalanced to equal weights each day, and the strategies' daily returns are simple too).

statsmodels comes with the ``study`` extra (``pip install nextick[study]``).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from engine.study._inputs import StudyInputError, float_array, rf_daily, same_length


class CAPM(msgspec.Struct, frozen=True):
    """One regression (see the module docstring). ``alpha_daily`` is a daily excess return;
    ``*_se`` are the HAC standard errors and ``*_t`` the estimates over them; ``n`` days, ``lags``
    the Newey-West lags used. nan (all but n and lags) where the market has no variance."""

    alpha_daily: float
    alpha_se: float
    alpha_t: float
    beta: float
    beta_se: float
    beta_t: float
    n: int
    lags: int


def newey_west_lags(n_days: int) -> int:
    """``floor(4 * (n_days / 100) ** (2 / 9))``, the Newey-West (1994) plug-in lag count."""
    return int(math.floor(4.0 * (n_days / 100.0) ** (2.0 / 9.0)))


def _statsmodels_api():
    try:
        import statsmodels.api as sm
    except ImportError as exc:  # an optional extra: say how to get it rather than a bare ImportError
        raise ImportError(
            "engine.study.capm needs statsmodels: pip install 'nextick[study]' (or statsmodels>=0.14)"
        ) from exc
    return sm


def capm(strategy_daily, market_daily, maxlags: int | None = None, *, rf_annual: float = 0.05,
         days_per_year: float = 252) -> CAPM:
    """Alpha and beta of ``strategy_daily`` on ``market_daily`` (aligned daily simple returns),
    in excess of ``rf_annual`` compounded to a day; HAC errors with ``maxlags`` lags
    (``newey_west_lags(T)`` when None). Raises ``StudyInputError`` naming the argument for
    different lengths, fewer than 3 days, non-finite values or a negative ``maxlags``.
    """
    y = float_array(strategy_daily, "strategy_daily", 1, shape_hint="one return per day")
    x = float_array(market_daily, "market_daily", 1, shape_hint="one return per day")
    same_length(y, "strategy_daily", x, "market_daily", "pass both series over the same days (align on dates first)")
    n = int(y.size)
    if n < 3:
        raise StudyInputError(f"strategy_daily has {n} days; the CAPM needs at least 3 (two parameters and an error)")
    if maxlags is None:
        lags = newey_west_lags(n)
    elif isinstance(maxlags, bool) or not isinstance(maxlags, (int, np.integer)) or not 0 <= maxlags < n:
        raise StudyInputError(f"maxlags must be an integer in [0, {n - 1}] or None (the Newey-West rule), got {maxlags!r}")
    else:
        lags = int(maxlags)
    rf_d = rf_daily(rf_annual, days_per_year)
    nan = math.nan
    if float(np.ptp(x)) == 0.0:  # a flat market: beta is undefined and OLS would make one up
        return CAPM(nan, nan, nan, nan, nan, nan, n, lags)
    sm = _statsmodels_api()
    design = np.column_stack([np.ones(n), x - rf_d])
    fit = sm.OLS(y - rf_d, design).fit(cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": True})
    (alpha, beta), (alpha_se, beta_se) = fit.params, fit.bse
    return CAPM(
        alpha_daily=float(alpha),
        alpha_se=float(alpha_se),
        alpha_t=float(alpha / alpha_se) if alpha_se > 0 else nan,
        beta=float(beta),
        beta_se=float(beta_se),
        beta_t=float(beta / beta_se) if beta_se > 0 else nan,
        n=n,
        lags=lags,
    )


def market_proxy_daily(mids_by_instrument_day) -> np.ndarray:
    """The equal-weighted market's daily simple return from ``mids_by_instrument_day``, shaped
    [n_instruments, n_days]: each instrument's mid at each day's close.

    Returns n_days - 1 returns: for day d >= 1, the mean over instruments of ``mid[i, d] /
    mid[i, d - 1] - 1``. NaN marks a day an instrument has no close (a holiday on its calendar):
    its returns into and out of that day are left out of the mean (it is not carried over the
    gap), and a day on which no instrument has a return is an error, since the market would
    have none.
    """
    mids = float_array(mids_by_instrument_day, "mids_by_instrument_day", 2, allow_nan=True, positive=True,
                       shape_hint="[n_instruments, n_days]: each instrument's mid at each day's close, NaN where none")
    if mids.shape[0] == 0 or mids.shape[1] < 2:
        raise StudyInputError(
            f"mids_by_instrument_day has shape {mids.shape}; pass at least one instrument and two days"
        )
    ret = mids[:, 1:] / mids[:, :-1] - 1.0
    has = np.isfinite(ret)
    count = has.sum(axis=0)
    if (count == 0).any():
        d = int(np.flatnonzero(count == 0)[0]) + 1
        raise StudyInputError(
            f"mids_by_instrument_day: no instrument has closes on both day {d - 1} and day {d}, so the "
            f"market has no return for day {d}; drop that day or give the closes"
        )
    return np.where(has, ret, 0.0).sum(axis=0) / count
