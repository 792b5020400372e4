"""Each configuration's risk, split into the model's uncertainty (epistemic) and the priced rest.

Input: ``returns[c, v, d]``, the daily return of configuration ``c`` (a threshold, stop-loss,
take-profit and hold time) backtested with MC-dropout model variant ``v`` on day ``d``. Variants
differ only in which dropout mask the model ran with, so what varies across them on one day is the
model's own uncertainty, not the market's; what their average does from day to day is the risk the
market pays for.

For one configuration, with V variants and D days, r_vd its returns, m_d = mean_v r_vd the
variants' mean path on day d and M = mean_vd r_vd::

    mean_daily_return = M
    total var         = sum_vd (r_vd - M)^2 / (V D - 1)                 pooled over variants and days
    epistemic var     = mean_d [ sum_v (r_vd - m_d)^2 / (V - 1) ]       across variants, averaged
                                                                        over days (0 when V = 1)
    priced var        = max(total var - epistemic var, 0)

and each ``*_std`` is the square root of its variance. What it estimates: with
r_vd = mu + a_d + e_vd, where a_d is the market's part (shared by every variant, variance p^2) and
e_vd the variant's own (variance q^2, independent across variants), total var estimates p^2 + q^2,
epistemic var q^2 and priced var p^2. The variants are a sample of the dropout distribution, so the
spread across them is a sample variance (ddof = 1): with ddof = 0 a small ensemble would understate
q^2 by a factor (V - 1) / V and leave the rest in the priced part. ``max`` keeps the priced
variance at 0 where sampling noise makes the epistemic estimate exceed the total (a configuration
whose risk is all model uncertainty). With one variant the epistemic part is 0 and priced ==
total; a configuration with one variant and one day has total 0 (no spread seen).

Missing days. A NaN return is an error unless ``missing="drop_days"``: then, for each
configuration, a day on which any of its variants is NaN is left out for all of its variants (the
variants stay aligned day by day, which the epistemic part needs), and ``n_days`` says how many
days each configuration kept. A configuration left with no day is an error.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np

from engine.study._inputs import StudyInputError, float_array

MISSING = ("error", "drop_days")


class RiskDecomposition(msgspec.Struct, frozen=True):
    """Per configuration (arrays of length n_configs): see the module docstring for the formulas.

    ``n_days[c]`` is the days configuration c kept (all of them unless ``missing="drop_days"``).
    """

    mean_daily_return: np.ndarray
    total_std: np.ndarray
    epistemic_std: np.ndarray
    priced_std: np.ndarray
    n_variants: int
    n_days: np.ndarray


def decompose(returns, *, missing: Literal["error", "drop_days"] = "error") -> RiskDecomposition:
    """Split each configuration's daily risk; ``returns`` is shaped [n_configs, n_variants, n_days].

    Raises ``StudyInputError`` (a ``ValueError``) for another shape, an empty axis, an infinite
    value, or a NaN with ``missing="error"`` (naming its [config, variant, day]).
    """
    if missing not in MISSING:
        raise StudyInputError(f"missing must be one of {MISSING}, got {missing!r}")
    r = float_array(returns, "returns", 3, allow_nan=True,
                    shape_hint="[n_configs, n_variants, n_days]: daily returns of each configuration under each dropout variant")
    if 0 in r.shape:
        raise StudyInputError(
            f"returns has shape {r.shape}: it needs at least one configuration, variant and day "
            "([n_configs, n_variants, n_days])"
        )
    if np.isnan(r).any() and missing == "error":
        c, v, d = (int(k) for k in np.argwhere(np.isnan(r))[0])
        raise StudyInputError(
            f"returns[{c}, {v}, {d}] is NaN (configuration {c}, variant {v}, day {d}); fill the missing "
            "days or pass missing='drop_days' to leave them out of that configuration"
        )
    keep = ~np.isnan(r).any(axis=1)  # [c, d]: days on which every variant of c has a return
    n_days = keep.sum(axis=1)
    if (n_days == 0).any():
        c = int(np.flatnonzero(n_days == 0)[0])
        raise StudyInputError(
            f"returns: configuration {c} has no day on which all of its variants have a return; "
            "drop that configuration or fill its missing days"
        )
    weight = keep[:, None, :].astype(np.float64)  # masks dropped days out of every sum
    x = np.where(keep[:, None, :], r, 0.0)
    n_variants = r.shape[1]
    days = n_days.astype(np.float64)
    count = n_variants * days
    mean = x.sum(axis=(1, 2)) / count
    dev = (x - mean[:, None, None]) * weight
    with np.errstate(invalid="ignore", divide="ignore"):  # one variant and one day: 0 / 0, set below
        total_var = (dev**2).sum(axis=(1, 2)) / (count - 1)
    total_var[count == 1] = 0.0  # a single return has no spread to measure: no risk seen
    if n_variants > 1:
        day_mean = x.mean(axis=1, keepdims=True)  # m_d, the variants' mean path
        spread = (((x - day_mean) * weight) ** 2).sum(axis=1) / (n_variants - 1)  # [c, d], 0 on dropped days
        epistemic_var = spread.sum(axis=1) / days
    else:
        epistemic_var = np.zeros(r.shape[0])
    priced_var = np.maximum(total_var - epistemic_var, 0.0)
    return RiskDecomposition(
        mean_daily_return=mean,
        total_std=np.sqrt(total_var),
        epistemic_std=np.sqrt(epistemic_var),
        priced_std=np.sqrt(priced_var),
        n_variants=int(n_variants),
        n_days=n_days.astype(np.int64),
    )
