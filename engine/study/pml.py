"""The Pretrained Market Line: a model's configurations' expected daily return against priced risk.

Each configuration c gives a point (priced_std_c, mean_daily_return_c) (``engine.study.risk``).
The PML is the line through the risk-free rate that best fits them::

    mean_daily_return_c - rf_daily = slope * priced_std_c + e_c

fitted by least squares through the origin of the excess returns. The slope is the model's
Foundation Sharpe ratio: the excess daily return its configurations earn per unit of daily priced
risk (a daily figure, not annualized). The intercept is not estimated: it is ``rf_daily``, the
annual rate compounded to a day as in ``engine.metrics`` (``(1 + rf_annual) ** (1 /
days_per_year) - 1``). ``fit_free_line`` estimates the intercept too, for comparison: a free
intercept far from ``rf_daily`` says the line through rf is a poor description.

``rolling_pml`` refits over sliding windows of days, decomposing each window's returns afresh, to
show how the model's edge changes (decays) through time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from engine.study._inputs import (
    StudyInputError,
    float_array,
    positive_int,
    rf_daily,
    same_length,
)
from engine.study.risk import decompose


class PML(msgspec.Struct, frozen=True):
    """A fitted Pretrained Market Line, over ``n`` configurations. With x = priced_std and
    y = mean_daily_return - intercept_daily:

    - ``slope = sum(x y) / sum(x^2)``: the Foundation Sharpe ratio (daily);
    - ``slope_se = sqrt(s2 / sum(x^2))`` with ``s2 = SSE / (n - 1)`` (one parameter estimated),
      SSE the sum of squared ``residuals``; ``t_stat = slope / slope_se``;
    - ``intercept_daily``: the risk-free rate per day, fixed, not estimated;
    - ``r2 = 1 - SSE / SST`` with SST the sum of squares of y about its mean. It can be negative:
      the line is forced through rf, so it can fit worse than a flat line at the mean.

    nan where undefined: ``slope`` (and all but ``n`` and ``residuals``) when every x is 0;
    ``slope_se`` and ``t_stat`` with n < 2 (no degree of freedom left) or SSE = 0 for ``t_stat``;
    ``r2`` when SST = 0 (every y equal).
    """

    slope: float
    slope_se: float
    intercept_daily: float
    r2: float
    n: int
    t_stat: float
    residuals: tuple[float, ...]


class FreeLine(msgspec.Struct, frozen=True):
    """Ordinary least squares of mean_daily_return on priced_std with an intercept, over ``n``
    points: standard errors from ``s2 = SSE / (n - 2)``; ``r2 = 1 - SSE / SST`` (in [0, 1] here).
    nan where undefined: slope and intercept when x has no spread, errors with n < 3, r2 with SST 0.
    """

    slope: float
    slope_se: float
    intercept_daily: float
    intercept_se: float
    r2: float
    n: int


class RollingPML(msgspec.Struct, frozen=True):
    """The PML of one window: days ``start_day`` to ``end_day`` (the caller's labels, inclusive)."""

    start_day: str
    end_day: str
    slope: float
    slope_se: float
    r2: float


def _points(mean_daily, priced_std) -> tuple[np.ndarray, np.ndarray]:
    y = float_array(mean_daily, "mean_daily", 1, shape_hint="one mean daily return per configuration")
    x = float_array(priced_std, "priced_std", 1, nonneg=True, shape_hint="one priced std per configuration")
    same_length(y, "mean_daily", x, "priced_std", "pass one mean and one priced std per configuration")
    if y.size == 0:
        raise StudyInputError("mean_daily is empty: the PML needs at least one configuration")
    return x, y


def _r2(sse: float, y: np.ndarray) -> float:
    sst = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - sse / sst if sst > 0 else math.nan


def fit_pml(mean_daily, priced_std, rf_annual: float = 0.05, days_per_year: float = 252) -> PML:
    """Fit the PML through ``rf_annual`` (compounded to a day over ``days_per_year``); see ``PML``.

    ``mean_daily`` and ``priced_std`` hold one value per configuration (``RiskDecomposition``'s
    ``mean_daily_return`` and ``priced_std``). Raises ``StudyInputError`` naming the argument for
    different lengths, no points, a non-finite value or a negative std.
    """
    x, y_raw = _points(mean_daily, priced_std)
    rf_d = rf_daily(rf_annual, days_per_year)
    y = y_raw - rf_d
    n = int(x.size)
    sxx = float(np.sum(x * x))
    nan = math.nan
    if sxx == 0.0:  # every configuration riskless: no slope to fit
        return PML(nan, nan, rf_d, nan, n, nan, tuple(float(v) for v in y))
    slope = float(np.sum(x * y)) / sxx
    resid = y - slope * x
    sse = float(np.sum(resid**2))
    se = math.sqrt(sse / (n - 1) / sxx) if n >= 2 else nan
    t = slope / se if se > 0 else nan
    return PML(slope, se, rf_d, _r2(sse, y), n, t, tuple(float(v) for v in resid))


def fit_free_line(mean_daily, priced_std) -> FreeLine:
    """Least squares of ``mean_daily`` on ``priced_std`` with an estimated intercept; see ``FreeLine``."""
    x, y = _points(mean_daily, priced_std)
    n = int(x.size)
    xc = x - x.mean()
    sxx = float(np.sum(xc * xc))
    nan = math.nan
    if sxx == 0.0:
        return FreeLine(nan, nan, nan, nan, nan, n)
    slope = float(np.sum(xc * y)) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    sse = float(np.sum((y - intercept - slope * x) ** 2))
    s2 = sse / (n - 2) if n >= 3 else nan
    return FreeLine(
        slope=slope,
        slope_se=math.sqrt(s2 / sxx),
        intercept_daily=intercept,
        intercept_se=math.sqrt(s2 * (1.0 / n + float(x.mean()) ** 2 / sxx)),
        r2=_r2(sse, y),
        n=n,
    )


def rolling_pml(
    returns_by_config_variant_day,
    day_labels: Sequence[Any],
    window_days: int,
    step_days: int,
    *,
    rf_annual: float = 0.05,
    days_per_year: float = 252,
    missing: Literal["error", "drop_days"] = "error",
) -> list[RollingPML]:
    """The PML over windows of ``window_days`` days, starting every ``step_days`` days from day 0,
    as long as a whole window fits (a shorter tail is left out, never fitted on fewer days).

    ``returns_by_config_variant_day`` is shaped [n_configs, n_variants, n_days] as for
    ``risk.decompose`` (``missing`` is passed to it), and each window is decomposed on its own
    days. ``day_labels`` names the days (e.g. ISO dates), one per day; a window's ``start_day``
    and ``end_day`` are ``str`` of its first and last labels.
    """
    r = float_array(returns_by_config_variant_day, "returns_by_config_variant_day", 3, allow_nan=True,
                    shape_hint="[n_configs, n_variants, n_days]")
    labels = list(day_labels)
    n_days = r.shape[2]
    if len(labels) != n_days:
        raise StudyInputError(
            f"day_labels has {len(labels)} labels but returns_by_config_variant_day has {n_days} days; "
            "pass one label per day"
        )
    window = positive_int(window_days, "window_days", "the number of days in each window")
    step = positive_int(step_days, "step_days", "how many days each window starts after the last")
    if window > n_days:
        raise StudyInputError(f"window_days = {window} is longer than the {n_days} days given; pass a shorter window")
    out = []
    for start in range(0, n_days - window + 1, step):
        risk = decompose(r[:, :, start : start + window], missing=missing)
        fit = fit_pml(risk.mean_daily_return, risk.priced_std, rf_annual, days_per_year)
        out.append(RollingPML(str(labels[start]), str(labels[start + window - 1]), fit.slope, fit.slope_se, fit.r2))
    return out
