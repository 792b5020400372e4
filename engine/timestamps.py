"""Timestamp units: every time inside nextick is an int64 count of nanoseconds since the Unix epoch.

Readers meet seconds, milliseconds, microseconds and nanoseconds; ``detect_unit`` decides which from
the magnitude of the values (epoch times from 1973 to 2286 are unambiguous across the four units)
and says so, so the run summary can report what it saw.
"""

from __future__ import annotations

import numpy as np

NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
UNITS = tuple(NS_PER)

# Smallest magnitude a timestamp of each unit has for dates after 1973-03-03 (1e8 s).
_LOWER = {"s": 1e8, "ms": 1e11, "us": 1e14, "ns": 1e17}
_UPPER = {"s": 1e10, "ms": 1e13, "us": 1e16, "ns": 1e19}


class TimestampUnitError(ValueError):
    pass


def detect_unit(values: np.ndarray, *, source: str = "input") -> str:
    """The unit of epoch timestamps ``values`` from their magnitude.

    Raises with the offending value when the values fit no unit or mix units.
    """
    v = np.asarray(values)
    if v.size == 0:
        raise TimestampUnitError(f"{source}: no timestamps to detect the unit from")
    finite = v[np.isfinite(v)] if v.dtype.kind == "f" else v
    if finite.size == 0:
        raise TimestampUnitError(f"{source}: every timestamp is NaN")
    lo, hi = float(np.min(finite)), float(np.max(finite))
    for unit in UNITS:
        if _LOWER[unit] <= lo and hi < _UPPER[unit]:
            return unit
    raise TimestampUnitError(
        f"{source}: timestamps span {lo:.6g}..{hi:.6g}, which is not one epoch unit (s, ms, us, ns); "
        "pass the unit explicitly (--ts-unit) or check the column mapping"
    )


def to_ns(values: np.ndarray, unit: str) -> np.ndarray:
    """Convert epoch timestamps in ``unit`` to int64 nanoseconds.

    Integers are scaled exactly (an overflowing value raises). Floats are split into whole units
    and fraction before scaling: 1.7e9 s times 1e9 in one float64 product would round to 256 ns,
    while the split keeps whatever precision the float itself holds.
    """
    if unit not in NS_PER:
        raise TimestampUnitError(f"unknown timestamp unit {unit!r}; use one of {', '.join(UNITS)}")
    v = np.asarray(values)
    scale = NS_PER[unit]
    limit = np.iinfo(np.int64).max // scale
    if v.size and np.nanmax(np.abs(v.astype(np.float64))) >= limit:
        raise TimestampUnitError(f"timestamps beyond {limit} {unit} overflow int64 nanoseconds; check the unit")
    if v.dtype.kind in "iu":
        return v.astype(np.int64) * np.int64(scale)
    f = v.astype(np.float64)
    whole = np.trunc(f)
    return whole.astype(np.int64) * np.int64(scale) + np.rint((f - whole) * scale).astype(np.int64)
