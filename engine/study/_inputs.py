"""Input checks shared by the study modules: each failure names the argument and what to pass."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine import metrics


class StudyInputError(ValueError):
    """An input is malformed; the message names the argument and what to pass instead."""


def float_array(x: Any, name: str, ndim: int, *, allow_nan: bool = False, nonneg: bool = False,
                positive: bool = False, shape_hint: str = "") -> np.ndarray:
    """``x`` as a float64 array of ``ndim`` dimensions whose values are finite (or NaN where
    ``allow_nan``), and >= 0 or > 0 where asked. ``shape_hint`` says what the axes are."""
    return metrics.float_array(x, name, ndim=ndim, allow_nan=allow_nan, positive=positive, nonneg=nonneg,
                               axes=shape_hint, error=StudyInputError)


def same_length(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str, hint: str) -> None:
    if a.shape != b.shape:
        raise StudyInputError(f"{a_name} has shape {a.shape} but {b_name} has {b.shape}; {hint}")


def positive_int(x: Any, name: str, hint: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x <= 0:
        raise StudyInputError(f"{name} must be a positive integer, got {x!r}; {hint}")
    return int(x)


def rf_daily(rf_annual: float, days_per_year: float) -> float:
    """The daily risk-free rate, compounded as in ``engine.metrics``: ``days_per_year`` days of it
    grow exactly to ``1 + rf_annual`` (5% a year over 252 days is 0.01936% a day)."""
    rf = float(rf_annual)
    if not (math.isfinite(rf) and rf > -1):
        raise StudyInputError(f"rf_annual must be a finite annual rate > -1 (0.05 = 5%), got {rf!r}")
    dpy = float(days_per_year)
    if not (math.isfinite(dpy) and dpy > 0):
        raise StudyInputError(f"days_per_year must be finite and > 0 (252 for trading days), got {dpy!r}")
    return (1.0 + rf) ** (1.0 / dpy) - 1.0
