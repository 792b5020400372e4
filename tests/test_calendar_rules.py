"""Session calendars for the instruments the file formats imply: US equities with NYSE holidays and
early closes, CME Globex, 24x7 crypto, FX with its weekly close; exchange-local times across DST."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain.calendar import CalendarError, SessionCalendar, nyse_year

UTC = dt.timezone.utc


def ns(y, m, d, hh=0, mm=0) -> int:
    return int(dt.datetime(y, m, d, hh, mm, tzinfo=UTC).timestamp()) * 10**9


def utc(t_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t_ns / 1e9, tz=UTC)


def sessions(spec: str, lo: int, hi: int) -> list[tuple[dt.datetime, dt.datetime]]:
    o, c = SessionCalendar(spec).sessions_between(lo, hi)
    return [(utc(a), utc(b)) for a, b in zip(o.tolist(), c.tolist())]


# NYSE's published schedules (nyse.com "Holidays & Trading Hours").
NYSE_2024 = {"2024-01-01", "2024-01-15", "2024-02-19", "2024-03-29", "2024-05-27", "2024-06-19", "2024-07-04",
             "2024-09-02", "2024-11-28", "2024-12-25"}
NYSE_2025 = {"2025-01-01", "2025-01-20", "2025-02-17", "2025-04-18", "2025-05-26", "2025-06-19", "2025-07-04",
             "2025-09-01", "2025-11-27", "2025-12-25"}


def test_nyse_holidays_and_early_closes_match_the_published_schedule():
    h24, e24 = nyse_year(2024)
    assert {d.isoformat() for d in h24} == NYSE_2024
    assert {d.isoformat() for d in e24} == {"2024-07-03", "2024-11-29", "2024-12-24"}
    assert {d.isoformat() for d in nyse_year(2025)[0]} == NYSE_2025
    # Weekend rules: Christmas 2021 (a Saturday) is observed Friday; New Year 2022 (a Saturday) is not
    # moved back into 2021; July 4 2026 (a Saturday) is observed Friday July 3, which has no early close.
    assert dt.date(2021, 12, 24) in nyse_year(2021)[0]
    assert dt.date(2021, 12, 31) not in nyse_year(2021)[0] and not any(d.year == 2022 and d.month == 1 and d.day < 3 for d in nyse_year(2022)[0])
    assert dt.date(2026, 7, 3) in nyse_year(2026)[0] and dt.date(2026, 7, 2) not in nyse_year(2026)[1]


def test_xnys_skips_holidays_closes_early_and_follows_dst():
    s = sessions("XNYS", ns(2024, 1, 12), ns(2024, 1, 17, 23))
    assert [a.date().isoformat() for a, _ in s] == ["2024-01-12", "2024-01-16", "2024-01-17"]  # MLK Monday closed
    assert s[0][0].hour == 14 and s[0][0].minute == 30  # 09:30 EST = 14:30 UTC in winter
    summer = sessions("XNYS", ns(2024, 7, 1), ns(2024, 7, 2))
    assert summer[0][0].hour == 13  # 09:30 EDT = 13:30 UTC
    black_friday = sessions("XNYS", ns(2024, 11, 29, 12), ns(2024, 11, 29, 20))
    assert black_friday[0][1] == dt.datetime(2024, 11, 29, 18, 0, tzinfo=UTC)  # 13:00 EST early close
    # US-RTH is the same hours without holidays (the synthetic market's calendar).
    assert [a.date().isoformat() for a, _ in sessions("US-RTH", ns(2024, 1, 15), ns(2024, 1, 15, 23))] == ["2024-01-15"]


def test_cme_globex_sessions_run_sunday_to_friday_with_a_daily_break():
    s = sessions("CME", ns(2024, 3, 2), ns(2024, 3, 8, 12))
    opens = [(a.strftime("%a"), a.hour) for a, _ in s]
    # 17:00 Chicago = 23:00 UTC before the 2024-03-10 DST change.
    assert opens == [("Sun", 23), ("Mon", 23), ("Tue", 23), ("Wed", 23), ("Thu", 23)]
    for a, b in s:
        assert b - a == dt.timedelta(hours=23)  # 17:00 to 16:00 next day: one hour's break
    assert all(a.strftime("%a") != "Fri" for a, _ in s)  # no Friday evening session


def test_fx_week_closes_friday_17h_new_york_and_reopens_sunday():
    s = sessions("FX", ns(2019, 2, 2), ns(2019, 2, 10, 23))
    assert [a.strftime("%a") for a, _ in s] == ["Sun", "Mon", "Tue", "Wed", "Thu", "Sun"]
    fri_close = s[4][1]
    assert fri_close.strftime("%a %H:%M") == "Fri 22:00"  # 17:00 EST
    assert s[5][0] - fri_close == dt.timedelta(hours=48)  # closed from Friday 17:00 to Sunday 17:00


def test_24x7_has_a_session_every_utc_day():
    s = sessions("24x7", ns(2024, 3, 9), ns(2024, 3, 12))
    assert [(a.hour, (b - a)) for a, b in s] == [(0, dt.timedelta(days=1))] * 4


@given(st.integers(1990, 2100))
def test_every_rule_year_has_ten_or_so_weekday_holidays(year):
    holidays, early = nyse_year(year)
    assert all(d.weekday() < 5 and d.year == year for d in holidays)
    assert 8 <= len(holidays) <= 10
    assert not holidays & set(early)


def test_unknown_holiday_rules_are_refused():
    with pytest.raises(CalendarError, match="unknown holiday rules"):
        SessionCalendar("09:30-16:00 America/New_York Mon-Fri holidays=MARS")
    cal = SessionCalendar("09:30-16:00 America/New_York Mon-Fri holidays=NYSE")
    o, _ = cal.sessions_between(ns(2024, 12, 24), ns(2024, 12, 26, 23))
    assert len(o) == 2 and np.all(np.diff(o) > 0)  # 24th (early close) and 26th; the 25th is closed
