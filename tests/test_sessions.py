"""Sessions and resets (DESIGN.md, Sessions and resets): when state is valid, when it restarts."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from conftest import MS, T0, S, Scripted, quotes, run, table

from engine.domain.calendar import CalendarError, SessionCalendar
from engine.domain.quote import QuoteFlag


def utc_ns(*args) -> int:
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()) * S


# --- calendars ---------------------------------------------------------------------------------


def test_xnys_sessions_follow_new_york_time_and_skip_weekends():
    cal = SessionCalendar("XNYS")
    opens, closes = cal.sessions_between(utc_ns(2024, 3, 8), utc_ns(2024, 3, 12))
    # Fri 8 Mar (EST, UTC-5), then Mon 11 Mar after the DST switch (EDT, UTC-4)
    assert list(opens) == [utc_ns(2024, 3, 8, 14, 30), utc_ns(2024, 3, 11, 13, 30)]
    assert list(closes) == [utc_ns(2024, 3, 8, 21, 0), utc_ns(2024, 3, 11, 20, 0)]


def test_overnight_sessions_and_fx_week():
    cal = SessionCalendar("FX")  # 17:00-17:00 New York, Sun-Thu opens
    opens, closes = cal.sessions_between(utc_ns(2024, 1, 5), utc_ns(2024, 1, 9))
    assert [dt.datetime.fromtimestamp(o / S, dt.timezone.utc).strftime("%a %H:%M") for o in opens] == [
        "Thu 22:00",  # Thu 17:00 NY -> Fri 17:00 NY
        "Sun 22:00",
        "Mon 22:00",
    ]
    assert all(c - o == 86400 * S for o, c in zip(opens, closes))


def test_session_open_of_marks_outside_ticks():
    cal = SessionCalendar("09:30-16:00 America/New_York Mon-Fri")
    ts = np.array([utc_ns(2024, 1, 2, 14, 29), utc_ns(2024, 1, 2, 14, 30), utc_ns(2024, 1, 2, 21, 0)])
    assert list(cal.session_open_of(ts)) == [-1, utc_ns(2024, 1, 2, 14, 30), -1]


@pytest.mark.parametrize("bad", ["9-16 UTC", "09:30-16:00 Mars/Olympus", "09:30-16:00 UTC Funday", "25:00-26:00 UTC"])
def test_bad_calendar_specs_are_refused(bad):
    with pytest.raises(CalendarError):
        SessionCalendar(bad)


# --- resets in the engine ----------------------------------------------------------------------


def reasons(r) -> list[tuple[int, int, str]]:
    names = ("SESSION_OPEN", "GAP", "RECONNECT", "STALE", "MANUAL")
    return [(int(e["ts"]), int(e["instrument"]), names[e["reason"]]) for e in r.resets]


def test_session_open_reset_on_first_tick_of_each_session_and_outside_ticks_ignored():
    day = 86400 * S
    rows = [
        (utc_ns(2024, 1, 2, 14, 0), 0, 100, 101),  # pre-market: outside
        (utc_ns(2024, 1, 2, 14, 30), 0, 100, 101),  # open
        (utc_ns(2024, 1, 2, 15, 0), 0, 100, 101),
        (utc_ns(2024, 1, 2, 21, 30), 0, 100, 101),  # after the close: outside
        (utc_ns(2024, 1, 2, 14, 31) + day, 0, 100, 101),  # next session
    ]
    strat = Scripted({})
    r = run(quotes(rows), table(1, calendar="XNYS"), strat)
    assert reasons(r) == [(rows[1][0], 0, "SESSION_OPEN"), (rows[4][0], 0, "SESSION_OPEN")]
    assert r.counters["ticks_outside_session"] == 2
    assert list(r.outside_session) == [2]
    # the strategy never saw the outside ticks
    assert [s[1] for s in strat.seen] == [rows[1][0], rows[2][0], rows[4][0]]
    assert [s[2] for s in strat.seen] == [True, False, True]


def test_gap_reset_only_beyond_threshold():
    gap = 10 * S
    ts = [T0 + S, T0 + S + gap, T0 + S + 2 * gap + 1]  # exactly the threshold: no reset; beyond: GAP
    r = run(quotes([(t, 0, 100, 101) for t in ts]), table(1, gap_ns=gap), Scripted({}))
    assert reasons(r) == [(ts[0], 0, "SESSION_OPEN"), (ts[2], 0, "GAP")]


def test_reconnect_and_stale_flags_reset():
    rows = [
        (T0 + S, 0, 100, 101),
        (T0 + 2 * S, 0, 100, 101, 1, 1, int(QuoteFlag.AFTER_RECONNECT)),
        (T0 + 3 * S, 0, 100, 101),
        (T0 + 4 * S, 0, 100, 101, 1, 1, int(QuoteFlag.STALE)),
    ]
    r = run(quotes(rows), table(1), Scripted({}))
    assert [x[2] for x in reasons(r)] == ["SESSION_OPEN", "RECONNECT", "STALE"]


def test_manual_reset_applies_at_first_tick_at_or_after_its_time():
    ts = [T0 + k * S for k in range(1, 6)]
    r = run(quotes([(t, 0, 100, 101) for t in ts]), table(1), Scripted({}), manual_resets=[(T0 + 2 * S + 1, "I0")])
    assert reasons(r) == [(ts[0], 0, "SESSION_OPEN"), (ts[2], 0, "MANUAL")]
    assert r.resets_by_reason()["MANUAL"] == 1


def test_manual_reset_for_unknown_symbol_is_an_error():
    with pytest.raises(ValueError, match="NOPE"):
        run(quotes([(T0 + S, 0, 100, 101)]), table(1), Scripted({}), manual_resets=[(T0, "NOPE")])


def test_warmup_blocks_opening_but_allows_reducing():
    ts = [T0 + k * S for k in range(1, 10)]
    q = quotes([(t, 0, 100, 101) for t in ts])
    # Warm-up of 3 ticks: a target at tick 2 (warming) is clamped to flat; at tick 4 (warm) it opens.
    strat = Scripted({(0, ts[1]): 5.0, (0, ts[3]): 5.0})
    r = run(q, table(1, warmup_ticks=3), strat)
    assert [s[3] for s in strat.seen[:5]] == [False, False, False, True, True]
    assert len(r.fills) == 1 and r.fills[0]["decision_ts"] == ts[3]


def test_after_a_gap_reset_warmup_allows_reducing_but_not_adding():
    before = [T0 + k * S for k in range(1, 7)]
    after = [T0 + 5000 * S + k * S for k in range(4)]  # beyond the 100 s gap threshold
    q = quotes([(t, 0, 100, 101) for t in before + after])
    # open 4 once warm (4th tick), then after the GAP: ask for 8 (clamped: no adding), then 1 (reducing: allowed)
    strat = Scripted({(0, before[3]): 4.0, (0, after[0]): 8.0, (0, after[1]): 1.0})
    r = run(q, table(1, warmup_ticks=3, gap_ns=100 * S), strat)
    assert reasons(r)[-1] == (after[0], 0, "GAP")
    assert list(r.fills["sz"]) == [4, -3]
    assert r.fills[1]["decision_ts"] == after[1]
    assert r.final_positions[0] == 1


def test_working_order_is_cancelled_at_session_close():
    close = utc_ns(2024, 1, 2, 21, 0)
    rows = [(close - 2 * S, 0, 100, 101), (close + 86400 * S - 6 * 3600 * S, 0, 100, 101)]  # next morning
    r = run(quotes(rows), table(1, calendar="XNYS"), Scripted({(0, rows[0][0]): 3.0}))
    assert len(r.fills) == 0
    assert r.counters["cancelled_session_close"] == 1


def test_flatten_at_close_fills_before_the_close():
    close = utc_ns(2024, 1, 2, 21, 0)
    rows = [
        (close - 300 * S, 0, 100, 101),
        (close - 200 * S, 0, 100, 101),
        (close - 30 * S, 0, 102, 103),  # inside the 60 s lead: target forced flat
        (close - 10 * S, 0, 104, 105),  # the flattening order fills here, before the close
    ]
    r = run(quotes(rows), table(1, calendar="XNYS"), Scripted({(0, rows[0][0]): 5.0}), flatten_at_close=True)
    assert list(r.fills["sz"]) == [5, -5]
    assert r.fills[1]["decision_ts"] == rows[2][0] and r.fills[1]["fill_ts"] == rows[3][0]
    assert r.final_positions[0] == 0


def test_flatten_missed_is_counted_when_no_tick_follows():
    close = utc_ns(2024, 1, 2, 21, 0)
    rows = [(close - 300 * S, 0, 100, 101), (close - 200 * S, 0, 100, 101), (close - 30 * S, 0, 102, 103),
            (close + 3600 * S, 0, 102, 103)]
    r = run(quotes(rows), table(1, calendar="XNYS"), Scripted({(0, rows[0][0]): 5.0}), flatten_at_close=True)
    assert r.final_positions[0] == 5
    assert r.counters["flatten_missed"] == 1 and r.counters["cancelled_session_close"] == 1


def test_reset_cancels_the_working_order():
    gap = 10 * S
    rows = [(T0 + S, 0, 100, 101), (T0 + S + 5 * gap, 0, 100, 101), (T0 + S + 5 * gap + MS, 0, 100, 101)]
    r = run(quotes(rows), table(1, gap_ns=gap), Scripted({(0, rows[0][0]): 2.0}))
    assert len(r.fills) == 0 and r.counters["cancelled_reset"] == 1


def test_resets_are_deterministic_across_chunkings():
    from engine.backtest import BacktestConfig, run_backtest
    from feeds.memory import ArraySource

    rng = np.random.default_rng(3)
    ts = T0 + np.cumsum(rng.exponential(5 * S, 4000)).astype(np.int64)
    inst = rng.integers(0, 3, len(ts))
    q = quotes([(int(t), int(i), 100, 101) for t, i in zip(ts, inst)])
    runs = [
        run_backtest(ArraySource(q, table(3, gap_ns=20 * S), chunk_rows=c), BacktestConfig(interval="1s"))
        for c in (7, 1000, 1 << 20)
    ]
    assert all(np.array_equal(runs[0].resets, x.resets) for x in runs[1:])
    assert runs[0].resets_by_reason()["GAP"] > 0
