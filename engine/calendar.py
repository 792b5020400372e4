"""Session calendars: when an instrument's state is valid.

A spec is one line::

    24x7                                      every UTC day, boundary at 00:00 UTC
    XNYS                                      alias: 09:30-16:00 America/New_York Mon-Fri
    09:30-16:00 America/New_York Mon-Fri      open-close, IANA zone, days the session opens on
    FX 17:00-17:00 America/New_York Sun-Thu   a leading name is allowed; close <= open means the
                                              session ends the next day (here: the FX week)

A session is the half-open interval ``[open_ns, close_ns)`` in UTC nanoseconds. Wall-clock times
are exchange-local, so sessions follow daylight saving in the named zone. ``holidays`` are local
dates on which no session opens.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALIASES = {
    "24x7": "24x7 00:00-00:00 UTC Mon-Sun",
    "XNYS": "XNYS 09:30-16:00 America/New_York Mon-Fri",
    "XNAS": "XNAS 09:30-16:00 America/New_York Mon-Fri",
    "CME": "CME 17:00-16:00 America/Chicago Sun-Thu",
    "FX": "FX 17:00-17:00 America/New_York Sun-Thu",
}
_SPEC = re.compile(
    r"^(?:(?P<name>\w[\w.-]*)\s+)?(?P<open>\d{1,2}:\d{2})-(?P<close>\d{1,2}:\d{2})"
    r"\s+(?P<tz>\S+)(?:\s+(?P<days>[A-Za-z,-]+))?$"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class CalendarError(ValueError):
    pass


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().split(","):
        ends = part.split("-")
        try:
            idx = [_DAY_NAMES.index(e[:3]) for e in ends]
        except ValueError:
            raise CalendarError(f"bad day list {text!r}; use e.g. Mon-Fri or Sun-Thu or Mon,Wed") from None
        if len(idx) == 1:
            days.add(idx[0])
        elif len(idx) == 2:
            d = idx[0]
            while True:
                days.add(d)
                if d == idx[1]:
                    break
                d = (d + 1) % 7
        else:
            raise CalendarError(f"bad day range {part!r}")
    return frozenset(days)


def _parse_hhmm(text: str) -> dt.time:
    hh, mm = (int(x) for x in text.split(":"))
    if not (0 <= hh <= 24 and 0 <= mm < 60) or (hh == 24 and mm):
        raise CalendarError(f"bad time of day {text!r}")
    return dt.time(0, mm) if hh == 24 else dt.time(hh, mm)


def _ns(t: dt.datetime) -> int:
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


class SessionCalendar:
    """Sessions of one calendar spec; see the module docstring for the grammar."""

    def __init__(self, spec: str, *, holidays: Iterable[dt.date] = ()) -> None:
        text = ALIASES.get(spec.strip(), spec.strip())
        m = _SPEC.match(text)
        if not m:
            raise CalendarError(
                f"bad session calendar {spec!r}; expected e.g. '24x7', 'XNYS' or "
                "'09:30-16:00 America/New_York Mon-Fri'"
            )
        self.spec = spec.strip()
        self.name = m["name"] or ""
        self.open = _parse_hhmm(m["open"])
        self.close = _parse_hhmm(m["close"])
        try:
            self.tz = ZoneInfo(m["tz"])
        except (ZoneInfoNotFoundError, ValueError):
            raise CalendarError(f"unknown time zone {m['tz']!r} in calendar {spec!r}") from None
        self.days = _parse_days(m["days"] or "Mon-Fri")
        self.overnight = (self.close.hour, self.close.minute) <= (self.open.hour, self.open.minute)
        self.holidays = frozenset(holidays)

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def parse(spec: str) -> "SessionCalendar":
        return SessionCalendar(spec)

    def __repr__(self) -> str:
        return f"SessionCalendar({self.spec!r})"

    def _session_on(self, day: dt.date) -> tuple[int, int] | None:
        if day.weekday() not in self.days or day in self.holidays:
            return None
        open_local = dt.datetime.combine(day, self.open, tzinfo=self.tz)
        close_day = day + dt.timedelta(days=1) if self.overnight else day
        close_local = dt.datetime.combine(close_day, self.close, tzinfo=self.tz)
        return _ns(open_local), _ns(close_local)

    def sessions_between(self, lo_ns: int, hi_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Sessions ``[open, close)`` overlapping ``[lo_ns, hi_ns]``, sorted: (opens_ns, closes_ns)."""
        lo_day = (_EPOCH + dt.timedelta(microseconds=lo_ns // 1000)).astimezone(self.tz).date()
        hi_day = (_EPOCH + dt.timedelta(microseconds=hi_ns // 1000)).astimezone(self.tz).date()
        opens, closes = [], []
        day = lo_day - dt.timedelta(days=1)  # an overnight session opened the day before lo
        while day <= hi_day:
            s = self._session_on(day)
            if s is not None and s[1] > lo_ns and s[0] <= hi_ns:
                opens.append(s[0])
                closes.append(s[1])
            day += dt.timedelta(days=1)
        return np.asarray(opens, dtype=np.int64), np.asarray(closes, dtype=np.int64)

    def session_open_of(self, ts_ns: np.ndarray) -> np.ndarray:
        """For each timestamp, the open time of the session containing it, or -1 outside sessions."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        if ts.size == 0:
            return np.empty(0, dtype=np.int64)
        opens, closes = self.sessions_between(int(ts.min()), int(ts.max()))
        idx = np.searchsorted(opens, ts, side="right") - 1
        safe = np.clip(idx, 0, max(len(opens) - 1, 0))
        inside = (idx >= 0) & (len(opens) > 0)
        if len(opens):
            inside &= ts < closes[safe]
        return np.where(inside, opens[safe] if len(opens) else -1, -1)
