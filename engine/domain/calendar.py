"""Session calendars: when an instrument's state is valid.

A spec is one line::

    24x7                                      every UTC day, boundary at 00:00 UTC
    XNYS                                      alias: 09:30-16:00 America/New_York Mon-Fri holidays=NYSE
    09:30-16:00 America/New_York Mon-Fri      open-close, IANA zone, days the session opens on
    FX 17:00-17:00 America/New_York Sun-Thu   a leading name is allowed; close <= open means the
                                              session ends the next day (here: the FX week)
    ... holidays=NYSE                         a holiday rule set (see HOLIDAY_RULES)

Aliases: ``24x7`` (crypto), ``XNYS``/``XNAS`` (US equities, NYSE holidays and 13:00 early closes),
``CME`` (Globex: Sunday-Thursday 17:00 to 16:00 Chicago, the daily hour's break between sessions), ``FX``
(the week from Sunday 17:00 New York to Friday 17:00, one session per day), ``US-RTH`` (09:30-16:00
New York every weekday, no holidays: the synthetic market's default).

A session is the half-open interval ``[open_ns, close_ns)`` in UTC nanoseconds. Wall-clock times
are exchange-local, so sessions follow daylight saving in the named zone; UTC never appears in a
spec except as the zone of ``24x7``. ``holidays`` are local dates on which no session opens;
``early_closes`` map a local date to an earlier closing time.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from engine.domain.timestamps import datetime_ns, local_date

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALIASES = {
    "24x7": "24x7 00:00-00:00 UTC Mon-Sun",
    "XNYS": "XNYS 09:30-16:00 America/New_York Mon-Fri holidays=NYSE",
    "XNAS": "XNAS 09:30-16:00 America/New_York Mon-Fri holidays=NYSE",
    "US-RTH": "US-RTH 09:30-16:00 America/New_York Mon-Fri",
    "CME": "CME 17:00-16:00 America/Chicago Sun-Thu",
    "FX": "FX 17:00-17:00 America/New_York Sun-Thu",
}
_SPEC = re.compile(
    r"^(?:(?P<name>\w[\w.-]*)\s+)?(?P<open>\d{1,2}:\d{2})-(?P<close>\d{1,2}:\d{2})"
    r"\s+(?P<tz>\S+)(?:\s+(?P<days>[A-Za-z,-]+))?(?:\s+holidays=(?P<hol>\w+))?$"
)


class CalendarError(ValueError):
    pass


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    """The n-th (1-based; -1 = last) ``weekday`` (Mon=0) of a month."""
    if n > 0:
        first = dt.date(year, month, 1)
        return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = dt.date(year + (month == 12), month % 12 + 1, 1) - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def _easter(year: int) -> dt.date:
    """Gregorian Easter Sunday (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    return dt.date(year, month, (h + l_ - 7 * m + 114) % 31 + 1)


def _observed(day: dt.date) -> dt.date:
    """A fixed-date holiday on a weekend is observed on the nearest weekday."""
    if day.weekday() == 5:
        return day - dt.timedelta(days=1)
    if day.weekday() == 6:
        return day + dt.timedelta(days=1)
    return day


@functools.lru_cache(maxsize=512)
def nyse_year(year: int) -> tuple[frozenset[dt.date], dict[dt.date, dt.time]]:
    """NYSE full holidays and 13:00 early closes of one year, by the exchange's published rules
    (New Year's Day is not moved back to a Friday in December; Juneteenth from 2022)."""
    days = set()
    ny = dt.date(year, 1, 1)
    if ny.weekday() != 5:
        days.add(_observed(ny))
    days.add(_nth_weekday(year, 1, 0, 3))  # Martin Luther King Jr. Day
    days.add(_nth_weekday(year, 2, 0, 3))  # Washington's Birthday
    days.add(_easter(year) - dt.timedelta(days=2))  # Good Friday
    days.add(_nth_weekday(year, 5, 0, -1))  # Memorial Day
    if year >= 2022:
        days.add(_observed(dt.date(year, 6, 19)))  # Juneteenth
    days.add(_observed(dt.date(year, 7, 4)))  # Independence Day
    days.add(_nth_weekday(year, 9, 0, 1))  # Labor Day
    thanksgiving = _nth_weekday(year, 11, 3, 4)
    days.add(thanksgiving)
    days.add(_observed(dt.date(year, 12, 25)))  # Christmas
    early = {}
    one_pm = dt.time(13, 0)
    for d in (dt.date(year, 7, 3), thanksgiving + dt.timedelta(days=1), dt.date(year, 12, 24)):
        if d.weekday() < 5 and d not in days:
            early[d] = one_pm
    return frozenset(days), early


# Holiday rule sets a spec can name: year -> (holidays, early closes), local dates.
HOLIDAY_RULES = {"NYSE": nyse_year}


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


class SessionCalendar:
    """Sessions of one calendar spec; see the module docstring for the grammar."""

    def __init__(
        self, spec: str, *, holidays: Iterable[dt.date] = (), early_closes: dict[dt.date, dt.time] | None = None
    ) -> None:
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
        self.early_closes = dict(early_closes or {})
        self.holiday_rule = m["hol"]
        if self.holiday_rule is not None and self.holiday_rule not in HOLIDAY_RULES:
            raise CalendarError(
                f"unknown holiday rules {self.holiday_rule!r} in calendar {spec!r}; known: {', '.join(HOLIDAY_RULES)}"
            )

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def parse(spec: str) -> "SessionCalendar":
        return SessionCalendar(spec)

    def __repr__(self) -> str:
        return f"SessionCalendar({self.spec!r})"

    def _session_on(self, day: dt.date) -> tuple[int, int] | None:
        if day.weekday() not in self.days or day in self.holidays:
            return None
        close = self.early_closes.get(day, self.close)
        if self.holiday_rule is not None:
            rule_holidays, rule_early = HOLIDAY_RULES[self.holiday_rule](day.year)
            if day in rule_holidays:
                return None
            close = rule_early.get(day, close)
        open_local = dt.datetime.combine(day, self.open, tzinfo=self.tz)
        close_day = day + dt.timedelta(days=1) if self.overnight else day
        close_local = dt.datetime.combine(close_day, close, tzinfo=self.tz)
        return datetime_ns(open_local), datetime_ns(close_local)

    def sessions_between(self, lo_ns: int, hi_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Sessions ``[open, close)`` overlapping ``[lo_ns, hi_ns]``, sorted: (opens_ns, closes_ns)."""
        lo_day, hi_day = local_date(lo_ns, self.tz), local_date(hi_ns, self.tz)
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
