"""Time: every time inside nextick is an int64 count of nanoseconds since the Unix epoch (UTC).

The one home of the time constants (``SECOND_NS``, ``DAY_NS``...), of the conversions between
``datetime``/``date``/ISO-8601 text/durations in seconds and nanoseconds (``datetime_ns``,
``parse_time_ns``, ``format_ns``, ``seconds_ns``, ``parse_duration_ns``), of wall-clock time in a zone to UTC
(``local_ns_to_utc``) and of unit detection: readers meet seconds, milliseconds, microseconds and
nanoseconds; ``detect_unit`` decides which from the magnitude of the values (epoch times from 1973
to 2286 are unambiguous across the four units) and says so, so the run summary can report what it saw.
"""

from __future__ import annotations

import datetime as _dt
import re
import zoneinfo
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np

US_NS = 1_000
MS_NS = 1_000_000
SECOND_NS = 1_000_000_000
MINUTE_NS = 60 * SECOND_NS
HOUR_NS = 60 * MINUTE_NS
DAY_NS = 24 * HOUR_NS

NS_PER = {"s": SECOND_NS, "ms": MS_NS, "us": US_NS, "ns": 1}
UNITS = tuple(NS_PER)

EPOCH_DATE = _dt.date(1970, 1, 1)
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def datetime_ns(t: _dt.datetime) -> int:
    """``t`` as ns since the epoch, exactly (no float on the way); a naive ``t`` is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND_NS + delta.microseconds * US_NS


def local_date(ns: int, tz: _dt.tzinfo) -> _dt.date:
    """The date in zone ``tz`` at the UTC time ``ns``."""
    return (_EPOCH + _dt.timedelta(microseconds=ns // US_NS)).astimezone(tz).date()


def seconds_ns(seconds: float) -> int:
    """A duration given in seconds (an option such as ``gap_s``) as int ns, truncated toward zero."""
    return int(seconds * SECOND_NS)


_DURATION_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ns|us|ms|s)?\s*$")


def parse_duration_ns(text: str) -> int:
    """A duration written with a unit ("5ms", "2.5 us", "1s", "250ns"; a bare number is ns) as int ns,
    exactly (decimal arithmetic, rounded to the nearest ns). Negative durations are refused."""
    m = _DURATION_RE.match(str(text))
    if m is None:
        raise ValueError(f"cannot read {text!r} as a duration; write a number and a unit: 250ns, 40us, 5ms, 1.5s")
    scale = NS_PER[m["unit"] or "ns"]
    return int((Decimal(m["num"]) * scale).to_integral_value(ROUND_HALF_EVEN))


def epoch_day(d: _dt.date | str) -> int:
    """Days from 1970-01-01 to ``d`` (a date or "YYYY-MM-DD")."""
    if isinstance(d, str):
        d = _dt.date.fromisoformat(d)
    return (d - EPOCH_DATE).days


def day_date(day: int) -> _dt.date:
    """The date ``day`` days after 1970-01-01."""
    return EPOCH_DATE + _dt.timedelta(days=int(day))


_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_FRACTION_RE = re.compile(r"^(.*T\d{2}:\d{2}:\d{2}|.* \d{2}:\d{2}:\d{2})\.(\d{1,9})(.*)$")


def parse_time_ns(value: Any, *, end: bool = False) -> int | None:
    """A time bound as int ns UTC. Accepts None, ints (ns), ``datetime``/``date`` objects and ISO-8601
    strings (naive times are UTC; up to 9 fraction digits). A bare date means its midnight, or, for
    ``end=True``, the next midnight, so that ``end="2024-01-03"`` includes that whole day."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"not a time: {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ns]").astype(np.int64))
    if isinstance(value, _dt.datetime):
        return datetime_ns(value)
    if isinstance(value, _dt.date):
        return (epoch_day(value) + (1 if end else 0)) * DAY_NS
    if not isinstance(value, str):
        raise TypeError(f"not a time: {value!r}")
    s = value.strip()
    if _INT_RE.match(s):
        return int(s)
    if _DATE_RE.match(s):
        return parse_time_ns(_dt.date.fromisoformat(s), end=end)
    # Split off a fraction finer than microseconds, which datetime cannot hold.
    m = _FRACTION_RE.match(s)
    frac_ns = 0
    if m:
        s = m.group(1) + m.group(3)
        frac_ns = int(m.group(2).ljust(9, "0"))
    try:
        t = _dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot read {value!r} as a time; use ISO-8601 (2024-01-02, 2024-01-02T09:30:00Z) or ns") from None
    return datetime_ns(t) + frac_ns


def local_ns_to_utc(local_ns: np.ndarray, tz: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Wall-clock times in ``tz`` (int64 ns since 1970-01-01 local) -> (int64 ns UTC, mask of local
    times that do not exist, i.e. fall in a DST gap, or None). An ambiguous time (a DST fold) takes
    the earlier instant. The offset is looked up once per distinct minute: no zone changes its
    offset within a minute."""
    zi = zoneinfo.ZoneInfo(tz)
    minutes, inverse = np.unique(local_ns // MINUTE_NS, return_inverse=True)
    offset_ns = np.empty(len(minutes), np.int64)
    gap = np.zeros(len(minutes), bool)
    epoch = _dt.datetime(1970, 1, 1)
    for i, m in enumerate(minutes.tolist()):
        local = epoch + _dt.timedelta(minutes=m)
        aware = local.replace(tzinfo=zi)  # fold=0: the earlier instant of an ambiguous time
        offset_ns[i] = int(aware.utcoffset().total_seconds()) * SECOND_NS
        gap[i] = aware.astimezone(_dt.timezone.utc).astimezone(zi).replace(tzinfo=None) != local
    utc = local_ns - offset_ns[inverse]
    nonexistent = gap[inverse]
    return utc, (nonexistent if nonexistent.any() else None)


def format_ns(ns: int | None) -> str:
    """ISO-8601 UTC with as many fraction digits as ``ns`` needs ("..." for None)."""
    if ns is None:
        return "..."
    secs, frac = divmod(int(ns), SECOND_NS)
    t = _dt.datetime.fromtimestamp(secs, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return t + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def format_ns_seconds(ns: int) -> str:
    """"YYYY-MM-DD HH:MM:SS" UTC, for summaries."""
    return _dt.datetime.fromtimestamp(int(ns) // SECOND_NS, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

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
