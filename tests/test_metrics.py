"""engine.metrics against values worked out by hand, plus properties and degenerate runs.

The reference curve used throughout: equity [100, 110, 99, 108.9, 119.79], one day apart, so the
returns are exactly +10%, -10%, +10%, +10% (each step multiplies by 1.1 or 0.9):

    r        = [0.1, -0.1, 0.1, 0.1]
    mean     = 0.2 / 4 = 0.05
    r - mean = [0.05, -0.15, 0.05, 0.05];  squares sum to 3 * 0.0025 + 0.0225 = 0.03
    var      = 0.03 / (4 - 1) = 0.01  ->  std = 0.1
    elapsed  = 4 days = 4 / 365.25 years  ->  periods_per_year = 4 / (4 / 365.25) = 365.25

Each sample falls on its own UTC date (T0 is 22:13 UTC), so these are also the daily returns: 4
days (the first date holds only the opening mark), daily Sharpe 0.05 / 0.1 = 0.5. Four days are
far too few to annualize.

The long curve: the same pattern at a tenth of the size, [+1%, -1%, +1%, +1%] repeated 15 times,
60 days one day apart (MIN_ANNUALIZE_DAYS, the fewest that are annualized):

    mean  = 0.04 / 4 = 0.01 / 2 = 0.005
    r - mean = [0.005, -0.015, 0.005, 0.005] per block: squares 0.0003, 15 blocks 0.0045
    std   = sqrt(0.0045 / 59)
    days_per_year = 60 / (60 / 365.25) = 365.25
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.backtest import trading_day_starts
from engine.domain.calendar import SessionCalendar
from engine.metrics import (
    MIN_ANNUALIZE_DAYS,
    YEAR_NS,
    JobsonKorkie,
    Metrics,
    MetricsInputError,
    compute_metrics,
    daily_returns,
    jobson_korkie_memmel,
    max_drawdown,
    period_returns,
    periods_per_year,
    sharpe_ratio,
    sortino_ratio,
)

T0 = 1_700_000_000 * 10**9  # 2023-11-14 22:13:20 UTC, any epoch time works
HOUR = 3_600 * 10**9
DAY = 86_400 * 10**9
YEAR = int(YEAR_NS)  # 365.25 days, exact in int64

EQUITY = [100.0, 110.0, 99.0, 108.9, 119.79]
SQRT_PPY = math.sqrt(365.25)

LONG_RETURNS = [0.01, -0.01, 0.01, 0.01] * 15
LONG_STD = math.sqrt(0.0045 / 59)


def days(n: int, step: int = 1) -> np.ndarray:
    return T0 + np.arange(n, dtype=np.int64) * step * DAY


def curve(returns: list[float], step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``step`` days apart: 100 at T0, then compounded ``returns``."""
    return days(len(returns) + 1, step), 100.0 * np.concatenate(([1.0], np.cumprod(1.0 + np.array(returns))))


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-12)


def test_min_annualize_days_is_the_documented_sixty():
    assert MIN_ANNUALIZE_DAYS == 60  # README and the report's text say 60


# --- returns and annualization ------------------------------------------------------------------


def test_period_returns_are_simple_returns():
    assert period_returns(EQUITY) == pytest.approx([0.1, -0.1, 0.1, 0.1], rel=1e-12)
    assert period_returns([100.0]).size == 0


def test_periods_per_year_comes_from_elapsed_time():
    # 4 returns over 4 days -> 365.25 a year; over 8 days -> 182.625; the count of returns is what
    # matters, not how they are spaced: 0, 1, 3, 4 days is still 4 days for 3 returns.
    assert periods_per_year(days(5)) == approx(365.25)
    assert periods_per_year(days(5, step=2)) == approx(182.625)
    assert periods_per_year(T0 + np.array([0, 1, 3, 4]) * DAY) == approx(3 * 365.25 / 4)
    assert math.isnan(periods_per_year([T0]))


def test_sharpe_by_hand():
    # mean / std = 0.05 / 0.1 = 0.5 per day; * sqrt(365.25) = 9.5558
    assert sharpe_ratio(period_returns(EQUITY), 365.25) == approx(0.5 * SQRT_PPY)
    # 60 days: 0.005 / LONG_STD per day, times sqrt(365.25) a year
    m = compute_metrics(*curve(LONG_RETURNS))
    assert m.annualized and m.n_days == 60
    assert m.daily_sharpe == pytest.approx(0.005 / LONG_STD, rel=1e-9)
    assert m.sharpe == pytest.approx(0.005 / LONG_STD * SQRT_PPY, rel=1e-9)


def test_same_returns_over_twice_the_time_give_sqrt2_smaller_annualized_ratios():
    # 2 days apart: 60 days of data over 120 days, days_per_year = 182.625 = 365.25 / 2, so
    # sqrt(days_per_year) shrinks by sqrt(2); the per-day figures do not change
    fast = compute_metrics(*curve(LONG_RETURNS))
    slow = compute_metrics(*curve(LONG_RETURNS, step=2))
    assert slow.days_per_year == approx(182.625)
    assert slow.daily_sharpe == approx(fast.daily_sharpe)
    assert slow.sharpe == pytest.approx(0.005 / LONG_STD * math.sqrt(182.625), rel=1e-9)
    assert fast.sharpe / slow.sharpe == approx(math.sqrt(2))
    assert fast.sortino / slow.sortino == approx(math.sqrt(2))
    assert fast.volatility / slow.volatility == approx(math.sqrt(2))


def test_volatility_by_hand():
    m = compute_metrics(*curve(LONG_RETURNS))
    assert m.daily_volatility == pytest.approx(LONG_STD, rel=1e-9)
    assert m.volatility == pytest.approx(LONG_STD * SQRT_PPY, rel=1e-9)


def test_sortino_downside_deviation_by_hand():
    # shortfall below 0: min(r, 0) = [0, -0.1, 0, 0]; mean of squares over ALL 4 periods
    # = 0.01 / 4 = 0.0025 -> DD = 0.05; sortino = 0.05 / 0.05 * sqrt(365.25) = 19.11
    # (dropping the non-negative periods would give DD = 0.1 and half the value)
    assert sortino_ratio(period_returns(EQUITY), 365.25) == approx(1.0 * SQRT_PPY)
    # 60 days: DD = sqrt(15 * 0.01^2 / 60) = 0.005 = the mean -> 1 a day
    assert compute_metrics(*curve(LONG_RETURNS)).sortino == pytest.approx(SQRT_PPY, rel=1e-9)


def test_risk_free_rate_by_hand():
    # Choose rf so that the per-period rate is exactly 1%: rf = 1.01^365.25 - 1 (about 37.0 a year)
    # Sharpe:  (0.05 - 0.01) / 0.1 = 0.4 per day
    # Sortino: excess = [0.09, -0.11, 0.09, 0.09]; DD = sqrt(0.11^2 / 4) = 0.055;
    #          0.04 / 0.055 = 8/11 per day
    rf = 1.01**365.25 - 1
    r = period_returns(EQUITY)
    assert sharpe_ratio(r, 365.25, rf) == pytest.approx(0.4 * SQRT_PPY, rel=1e-9)
    assert sortino_ratio(r, 365.25, rf) == pytest.approx(8 / 11 * SQRT_PPY, rel=1e-9)
    # 60 days at 0.1% a day risk-free (rf = 1.001^365.25 - 1):
    # Sharpe (0.005 - 0.001) / LONG_STD a day; Sortino: excess [0.009, -0.011, 0.009, 0.009],
    # DD = sqrt(15 * 0.011^2 / 60) = 0.0055, 0.004 / 0.0055 = 8/11 a day
    m = compute_metrics(*curve(LONG_RETURNS), risk_free_rate=1.001**365.25 - 1)
    assert m.daily_sharpe == pytest.approx(0.004 / LONG_STD, rel=1e-9)
    assert m.sharpe == pytest.approx(0.004 / LONG_STD * SQRT_PPY, rel=1e-9)
    assert m.sortino == pytest.approx(8 / 11 * SQRT_PPY, rel=1e-9)
    assert m.volatility == pytest.approx(LONG_STD * SQRT_PPY, rel=1e-9)  # not an excess quantity


def test_total_and_annualized_return():
    # 60 days: total = (1.01^3 * 0.99)^15 - 1; a year holds 365.25 / 60 of these runs
    block = 1.01**3 * 0.99
    m = compute_metrics(*curve(LONG_RETURNS))
    assert m.total_return == pytest.approx(block**15 - 1, rel=1e-12)
    assert m.annualized_return == pytest.approx(block ** (15 * 365.25 / 60) - 1, rel=1e-9)
    # one year exactly, a sample a day: annualized == total
    ts = np.append(days(365), T0 + YEAR)
    one = compute_metrics(ts, 100.0 * 1.3 ** ((ts - T0) / YEAR))
    assert one.n_days == 365 and one.total_return == approx(0.3)
    assert one.annualized_return == pytest.approx(0.3, rel=1e-12)
    # two years, 100 -> 121: sqrt(1.21) - 1 = 10% a year
    ts = np.append(days(730), T0 + 2 * YEAR)
    two = compute_metrics(ts, 100.0 * 1.21 ** ((ts - T0) / (2 * YEAR)))
    assert two.annualized_return == pytest.approx(0.1, rel=1e-12)
    assert two.elapsed_ns == 2 * YEAR


def test_a_short_run_has_per_day_figures_and_no_annualized_ones():
    m = compute_metrics(days(5), EQUITY)
    assert not m.annualized and m.n_days == 4
    for name in ("annualized_return", "volatility", "sharpe", "sortino", "calmar"):
        assert math.isnan(getattr(m, name)), name
    assert m.mean_daily_return == approx(0.05)
    assert m.daily_volatility == approx(0.1)
    assert m.daily_sharpe == approx(0.5)
    assert (m.best_day, m.worst_day) == (approx(0.1), approx(-0.1))
    assert m.days_per_year == approx(365.25)


def test_annualized_from_sixty_days_on():
    short = compute_metrics(*curve(LONG_RETURNS[:-1]))
    assert (short.n_days, short.annualized) == (59, False) and math.isnan(short.sharpe)
    enough = compute_metrics(*curve(LONG_RETURNS))
    assert (enough.n_days, enough.annualized) == (60, True) and math.isfinite(enough.sharpe)


def test_a_short_run_is_not_annualized_however_big_its_move():
    # doubling in one second once extrapolated to 2^31557600 a year (inf); now there is no number
    m = compute_metrics([T0, T0 + 10**9], [100.0, 200.0])
    assert math.isnan(m.annualized_return) and m.total_return == 1.0


# --- days ---------------------------------------------------------------------------------------


def test_daily_returns_are_close_to_close_over_utc_dates():
    # T0 is 22:13 UTC: T0 and T0+1h on date A, T0+2h and T0+5h on date B, T0+1d+2h on date C.
    # Closes: A 101, B 99, C 104; the first day's base is the first sample, 100.
    ts = T0 + np.array([0, HOUR, 2 * HOUR, 5 * HOUR, DAY + 2 * HOUR])
    equity = [100.0, 101.0, 102.0, 99.0, 104.0]
    assert daily_returns(ts, equity) == pytest.approx([0.01, 99 / 101 - 1, 104 / 99 - 1], rel=1e-12)
    # Days that begin at T0 + 90 min, T0 + 3h and T0 + 2d (session opens): T0 and T0+1h come before
    # the first start and belong to the first day, with T0+2h, closing at 102; the second day
    # holds T0+5h and T0+1d+2h, closing at 104.
    starts = np.array([T0 + 90 * 60 * 10**9, T0 + 3 * HOUR, T0 + 2 * DAY])
    assert daily_returns(ts, equity, starts) == pytest.approx([0.02, 104 / 102 - 1], rel=1e-12)


def test_days_chain_to_the_total_return_and_a_lone_opening_mark_is_no_day():
    m = compute_metrics(days(5), EQUITY)  # date 0 holds only the opening mark
    assert m.n_days == 4
    assert np.prod(1 + daily_returns(days(5), EQUITY)) - 1 == pytest.approx(m.total_return, rel=1e-12)


def test_days_follow_the_calendar_of_the_instruments():
    # 2024-01-05 is a Friday. A CME day starts at its 17:00 Chicago open (23:00 UTC in winter) and
    # runs to the next open; a 24x7 day is the UTC date; calendars that differ give UTC dates.
    lo = 1_704_412_800 * 10**9  # 2024-01-05 00:00 UTC
    ts = np.array([lo, lo + 10 * DAY])
    cme = SessionCalendar.parse("CME")
    starts, basis = trading_day_starts([cme, cme], ts)
    assert basis == "CME sessions, open to next open"
    assert int(starts[0]) % DAY == 23 * HOUR  # 17:00 CST
    crypto = SessionCalendar.parse("24x7")
    starts, _ = trading_day_starts([crypto], ts)
    assert (np.asarray(starts) % DAY == 0).all()
    assert trading_day_starts([cme, crypto], ts) == (None, "UTC dates")


# --- drawdown ------------------------------------------------------------------------------------


def test_max_drawdown_recovered():
    # running max [100, 110, 110, 110, 119.79]; worst 1 - 99/110 = 0.1 at day 2;
    # peak at day 1, first back above 110 at day 4 (119.79) -> 3 days
    depth, dur = max_drawdown(days(5), EQUITY)
    assert depth == approx(0.1)
    assert dur == 3 * DAY


def test_max_drawdown_unrecovered_runs_to_the_end():
    # peak 120 at day 1; 90 is 1 - 90/120 = 0.25 down; 96, 108 never regain 120 -> day 1 to day 4
    depth, dur = max_drawdown(days(5), [100.0, 120.0, 90.0, 96.0, 108.0])
    assert depth == approx(0.25)
    assert dur == 3 * DAY


def test_deepest_and_longest_drawdowns_are_taken_separately():
    # hours: 100 -> 90 -> 100 is 10% deep, 2 h long (h0..h2);
    #        120 -> 110 -> 115 -> 125 is 1 - 110/120 = 8.33% deep, 3 h long (h3..h6)
    ts = T0 + np.arange(7) * HOUR
    depth, dur = max_drawdown(ts, [100.0, 90.0, 100.0, 120.0, 110.0, 115.0, 125.0])
    assert depth == approx(0.1)
    assert dur == 3 * HOUR


def test_drawdown_duration_starts_at_the_last_sample_at_the_peak():
    # 110 at h1 and again at h2, under at h3, back to 110 (exactly regained) at h4 -> h2..h4 = 2 h
    ts = T0 + np.arange(5) * HOUR
    depth, dur = max_drawdown(ts, [100.0, 110.0, 110.0, 99.0, 110.0])
    assert depth == approx(0.1)
    assert dur == 2 * HOUR


def test_calmar_by_hand():
    # 60 days: every -1% day comes right after a peak, so the deepest drawdown is 1 - 0.99 = 1%;
    # calmar = annualized return / 0.01
    block = 1.01**3 * 0.99
    m = compute_metrics(*curve(LONG_RETURNS))
    assert m.max_drawdown == pytest.approx(0.01, rel=1e-9)
    assert m.calmar == pytest.approx((block ** (15 * 365.25 / 60) - 1) / 0.01, rel=1e-9)


# --- trading activity ---------------------------------------------------------------------------


def test_turnover_fees_and_counts():
    # notional 50 + 150 + 100 = 300 on 100 initial capital -> 3.0; fees 0.05 + 0.15 + 0.10 = 0.30
    m = compute_metrics(
        days(5), EQUITY, fill_notional=[50.0, 150.0, 100.0], fill_fee=[0.05, 0.15, 0.10]
    )
    assert m.turnover == approx(3.0)
    assert m.fees_paid == approx(0.30)
    assert m.fill_count == 3
    # turnover is on initial capital, not on final equity (119.79)
    assert compute_metrics(days(5), EQUITY, fill_notional=[100.0], fill_fee=[0.0]).turnover == approx(1.0)


def test_negative_fees_are_rebates():
    m = compute_metrics(days(2), [100.0, 101.0], fill_notional=[10.0, 10.0], fill_fee=[0.01, -0.03])
    assert m.fees_paid == approx(-0.02)


def test_hit_rate_counts_strict_winners():
    # pnl [10, -5, 0, 3]: winners 10 and 3 -> 2 of 4 = 0.5 (a scratch 0 is not a hit)
    m = compute_metrics(days(5), EQUITY, trade_pnl=[10.0, -5.0, 0.0, 3.0])
    assert m.hit_rate == approx(0.5)
    assert m.trade_count == 4


def test_exposure_and_time_in_market_are_time_weighted():
    # samples at 0, 1, 3, 4 h; gross [0, 200, 50, 0]; equity [100, 100, 125, 125]
    # leverage at each sample [0, 2, 0.4, 0], held until the next sample:
    #   [0,1) h: 0   [1,3) h: 2   [3,4) h: 0.4   -> (0*1 + 2*2 + 0.4*1) / 4 = 1.1
    #   (the plain mean of the samples would be 0.6)
    # in market: gross > 0 over [1,3) and [3,4) -> 3 of 4 h = 0.75
    ts = T0 + np.array([0, 1, 3, 4]) * HOUR
    m = compute_metrics(ts, [100.0, 100.0, 125.0, 125.0], gross_exposure=[0.0, 200.0, 50.0, 0.0])
    assert m.exposure == approx(1.1)
    assert m.time_in_market == approx(0.75)


def test_reference_curve_all_fields():
    # everything above on one run; 4 days: per-day figures, no annualized ones
    m = compute_metrics(
        days(5),
        EQUITY,
        gross_exposure=[0.0, 110.0, 0.0, 0.0, 0.0],  # levered 1x over day 1..2 only -> 1/4 each
        fill_notional=[110.0, 99.0],
        fill_fee=[0.11, 0.099],
        trade_pnl=[-11.0],
    )
    assert m.total_return == approx(0.1979)
    assert not m.annualized
    for name in ("annualized_return", "volatility", "sharpe", "sortino", "calmar"):
        assert math.isnan(getattr(m, name)), name
    assert (m.n_days, m.days_per_year) == (4, approx(365.25))
    assert (m.mean_daily_return, m.daily_volatility, m.daily_sharpe) == (approx(0.05), approx(0.1), approx(0.5))
    assert (m.best_day, m.worst_day) == (approx(0.1), approx(-0.1))
    assert (m.max_drawdown, m.max_drawdown_duration_ns) == (approx(0.1), 3 * DAY)
    assert (m.hit_rate, m.trade_count, m.fill_count) == (0.0, 1, 2)  # one losing round trip
    assert m.time_in_market == approx(0.25)
    assert (m.n_periods, m.elapsed_ns) == (4, 4 * DAY)
    assert m.turnover == approx(2.09)
    assert m.fees_paid == approx(0.209)
    assert m.exposure == approx(0.25)  # 110/110 = 1x for 1 of 4 days


def test_metrics_struct_is_the_published_contract():
    assert Metrics.__struct_fields__ == (
        "total_return", "annualized", "annualized_return", "volatility", "sharpe", "sortino", "calmar",
        "n_days", "days_per_year", "mean_daily_return", "daily_volatility", "daily_sharpe", "best_day",
        "worst_day", "max_drawdown", "max_drawdown_duration_ns", "turnover", "hit_rate", "trade_count",
        "fill_count", "fees_paid", "exposure", "time_in_market", "n_periods", "elapsed_ns",
    )  # fmt: skip
    m = compute_metrics(days(5), EQUITY)
    decoded = msgspec.json.decode(msgspec.json.encode(m))
    assert decoded["hit_rate"] is None  # nan travels as null in JSON
    assert decoded["annualized"] is False and decoded["sharpe"] is None  # too short: null, and flagged
    assert decoded["n_periods"] == 4 and decoded["n_days"] == 4


# --- Jobson-Korkie / Memmel -----------------------------------------------------------------------

# a = [1, 2, 3, 2] %, b = [1, 0, 2, 1] %:
#   mean_a = 2 %, deviations [-1, 0, 1, 0]; mean_b = 1 %, deviations [0, -1, 1, 0]
#   var_a = var_b = 2/3 (%^2)  ->  SR_a = 2 / sqrt(2/3) = sqrt(6),  SR_b = 1 / sqrt(2/3) = sqrt(1.5)
#   cov = (0 + 0 + 1 + 0) / 3 = 1/3  ->  rho = (1/3) / (2/3) = 0.5
#   theta = (2 - 2*0.5 + 0.5 * (6 + 1.5 - 2 * sqrt(6*1.5) * 0.25)) / 4
#         = (1 + 0.5 * (7.5 - 2*3*0.25)) / 4 = (1 + 3) / 4 = 1
#   z = sqrt(6) - sqrt(1.5) = 2 sqrt(1.5) - sqrt(1.5) = sqrt(1.5) = 1.2247
#   p = erfc(sqrt(1.5) / sqrt(2)) = erfc(sqrt(0.75)) = 0.2207
JK_A = [0.01, 0.02, 0.03, 0.02]
JK_B = [0.01, 0.00, 0.02, 0.01]


def test_jobson_korkie_memmel_by_hand():
    jk = jobson_korkie_memmel(JK_A, JK_B)
    assert isinstance(jk, JobsonKorkie)
    assert jk.sharpe_a == approx(math.sqrt(6))
    assert jk.sharpe_b == approx(math.sqrt(1.5))
    assert jk.correlation == approx(0.5)
    assert jk.z == approx(math.sqrt(1.5))
    assert jk.p_value == approx(math.erfc(math.sqrt(0.75)))
    assert jk.p_value == pytest.approx(0.2207, abs=1e-4)  # the normal-table value
    assert jk.n == 4


def test_jobson_korkie_memmel_is_antisymmetric():
    ab, ba = jobson_korkie_memmel(JK_A, JK_B), jobson_korkie_memmel(JK_B, JK_A)
    assert ba.z == -ab.z
    assert ba.p_value == ab.p_value
    assert (ba.sharpe_a, ba.sharpe_b) == (ab.sharpe_b, ab.sharpe_a)


def test_jobson_korkie_memmel_identical_series():
    # rho = 1 and equal Sharpe: theta = 0 and the difference is 0; z = 0, p = 1, not 0/0
    jk = jobson_korkie_memmel(JK_A, JK_A)
    assert jk.z == 0.0
    assert jk.p_value == 1.0


def test_jobson_korkie_memmel_zero_variance_is_nan():
    jk = jobson_korkie_memmel(JK_A, [0.01, 0.01, 0.01, 0.01])
    assert math.isnan(jk.z) and math.isnan(jk.p_value) and math.isnan(jk.sharpe_b)
    assert jk.sharpe_a == approx(math.sqrt(6))


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (JK_A, JK_B[:3], "same periods"),
        ([0.01, 0.02], [0.02, 0.01], "at least 3"),
        (JK_A, [0.01, math.nan, 0.02, 0.01], r"returns_b\[1\]"),
    ],
)
def test_jobson_korkie_memmel_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        jobson_korkie_memmel(a, b)


# --- degenerate runs ------------------------------------------------------------------------------


def test_flat_equity():
    # no variance: sharpe/sortino nan (not 0, not inf); no drawdown: calmar nan
    m = compute_metrics(*curve([0.0] * 60))
    assert m.annualized
    assert math.isnan(m.sharpe) and math.isnan(m.sortino) and math.isnan(m.calmar) and math.isnan(m.daily_sharpe)
    assert m.volatility == 0.0 and m.daily_volatility == 0.0
    assert (m.max_drawdown, m.max_drawdown_duration_ns) == (0.0, 0)
    assert (m.total_return, m.annualized_return) == (0.0, 0.0)


def test_constant_growth_is_zero_variance_not_a_huge_sharpe():
    # 100 -> 101 -> 102.01 ...: every return is 1% but rounding makes them differ by ~1e-17;
    # a Sharpe of 1e16 would be a lie
    m = compute_metrics(*curve([0.01] * 60))
    assert math.isnan(m.sharpe) and math.isnan(m.sortino) and math.isnan(m.daily_sharpe)
    assert math.isnan(sharpe_ratio([0.1] * 5, 252.0)) and math.isnan(sortino_ratio([0.1] * 5, 252.0))


def test_sortino_without_downside():
    # returns 1%, 2%: never below 0 -> DD = 0 with a positive mean -> inf
    assert compute_metrics(*curve([0.01, 0.02] * 30)).sortino == math.inf
    # but below a 12%-per-period hurdle the 10% is a shortfall again: finite
    assert math.isfinite(sortino_ratio([0.1, 0.2], 1.0, risk_free_rate=0.12))
    assert math.isnan(sortino_ratio([0.0, 0.0, 0.0], 252.0))


def test_two_samples_one_return():
    # one day's return: total and the day exist, anything needing a std (ddof=1) does not, and one
    # day is not annualized, even over a year of elapsed time
    m = compute_metrics([T0, T0 + YEAR], [100.0, 90.0])
    assert m.total_return == approx(-0.1) and m.mean_daily_return == approx(-0.1)
    assert m.best_day == m.worst_day == m.mean_daily_return
    assert math.isnan(m.daily_volatility) and math.isnan(m.daily_sharpe)
    assert not m.annualized and math.isnan(m.annualized_return) and math.isnan(m.calmar)
    assert m.max_drawdown == approx(0.1)
    assert (m.n_periods, m.n_days, m.days_per_year) == (1, 1, approx(1.0))


def test_single_sample():
    m = compute_metrics([T0], [100.0], fill_notional=[50.0], fill_fee=[0.1])
    assert m.total_return == 0.0 and m.max_drawdown == 0.0 and m.turnover == approx(0.5)
    for name in ("annualized_return", "volatility", "sharpe", "sortino", "calmar", "hit_rate", "exposure",
                 "time_in_market", "days_per_year", "mean_daily_return", "daily_volatility", "daily_sharpe",
                 "best_day", "worst_day"):  # fmt: skip
        assert math.isnan(getattr(m, name)), name
    counts = (m.n_periods, m.n_days, m.elapsed_ns, m.max_drawdown_duration_ns, m.trade_count, m.fill_count)
    assert counts == (0, 0, 0, 0, 0, 1)


def test_empty_run():
    m = compute_metrics([], [])
    assert math.isnan(m.total_return) and math.isnan(m.max_drawdown) and math.isnan(m.turnover)
    assert (m.n_periods, m.elapsed_ns, m.trade_count, m.fill_count, m.fees_paid) == (0, 0, 0, 0, 0.0)


def test_float_residue_of_a_closed_position_is_out_of_the_market():
    # (0.1 + 0.2 - 0.3) lots * 100 = 5.6e-15 of exposure on 100 of equity: flat, not "in market"
    residue = (0.1 + 0.2 - 0.3) * 100
    assert residue > 0
    m = compute_metrics(days(3), [100.0, 100.0, 100.0], gross_exposure=[residue, 50.0, 0.0])
    assert m.time_in_market == approx(0.5)


def test_no_trades_and_no_exposure_series():
    m = compute_metrics(days(5), EQUITY)
    assert math.isnan(m.hit_rate) and m.trade_count == 0
    assert math.isnan(m.exposure) and math.isnan(m.time_in_market)  # not given, so not 0


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ts_ns": days(3), "equity": [100.0, 101.0]}, "ts_ns has 3 entries but equity has 2"),
        ({"ts_ns": [T0, T0, T0 + 1], "equity": [1.0, 1.0, 1.0]}, r"strictly increasing: ts_ns\[1\]"),
        ({"ts_ns": [T0 + 1, T0], "equity": [1.0, 1.0]}, "strictly increasing"),
        ({"ts_ns": [1.7e18, 1.8e18], "equity": [1.0, 1.0]}, "integer nanoseconds"),
        ({"ts_ns": days(2), "equity": [100.0, 0.0]}, r"equity must be finite and > 0: equity\[1\]"),
        ({"ts_ns": days(2), "equity": [100.0, math.nan]}, r"equity\[1\]"),
        ({"ts_ns": days(2), "equity": [[100.0, 1.0]]}, "equity must be 1-D"),
        ({"ts_ns": days(2), "equity": [1.0, 1.0], "gross_exposure": [1.0]}, "gross_exposure has 1"),
        ({"ts_ns": days(2), "equity": [1.0, 1.0], "gross_exposure": [1.0, -1.0]}, r"gross_exposure\[1\]"),
        ({"ts_ns": days(2), "equity": [1.0, 1.0], "fill_notional": [1.0]}, "one fee per fill"),
        (
            {"ts_ns": days(2), "equity": [1.0, 1.0], "fill_notional": [-1.0], "fill_fee": [0.0]},
            r"fill_notional\[0\]",
        ),
        ({"ts_ns": days(2), "equity": [1.0, 1.0], "trade_pnl": [math.inf]}, "trade_pnl"),
        ({"ts_ns": [T0], "equity": [1.0], "risk_free_rate": -1.0}, "risk_free_rate"),
        ({"ts_ns": days(2), "equity": [1.0, 1.0], "day_starts_ns": [T0 + DAY, T0]}, r"day_starts_ns\[1\]"),
        ({"ts_ns": days(2), "equity": [1.0, 1.0], "day_starts_ns": [0.5, 1.5]}, "day_starts_ns must be integer"),
    ],
)
def test_compute_metrics_rejects_bad_input(kwargs, match):
    with pytest.raises(MetricsInputError, match=match):
        compute_metrics(kwargs.pop("ts_ns"), kwargs.pop("equity"), **kwargs)


@pytest.mark.parametrize("ppy", [0.0, -1.0, math.nan, math.inf])
def test_ratios_reject_bad_periods_per_year(ppy):
    with pytest.raises(ValueError, match="periods_per_year"):
        sharpe_ratio([0.1, -0.1], ppy)
    with pytest.raises(ValueError, match="periods_per_year"):
        sortino_ratio([0.1, -0.1], ppy)


# --- properties -----------------------------------------------------------------------------------

# Returns in whole basis points and steps of an hour to three days keep curves realistic and away
# from values that tie only by rounding.
bps_returns = st.lists(st.integers(-500, 500), min_size=1, max_size=30)
# Runs on both sides of MIN_ANNUALIZE_DAYS: up to 150 returns, at steps that land on a new day
# about half the time (hypothesis would otherwise shrink every run to a few hours).
long_bps_returns = st.one_of(bps_returns, st.lists(st.integers(-500, 500), min_size=50, max_size=150))
day_steps_ns = st.sampled_from([HOUR, 9 * HOUR, DAY, 3 * DAY])
steps_ns = st.integers(HOUR, 3 * DAY)


@st.composite
def runs(draw, bps=bps_returns, steps_of=steps_ns):
    r = np.array(draw(bps), dtype=np.float64) / 1e4
    steps = draw(st.lists(steps_of, min_size=r.size, max_size=r.size))
    ts = T0 + np.concatenate(([0], np.cumsum(steps))).astype(np.int64)
    equity = 100.0 * np.concatenate(([1.0], np.cumprod(1.0 + r)))
    # flat or a real position: exposures a rounding away from the flat threshold are not the point
    exposure = st.one_of(st.just(0.0), st.floats(0.01, 300))
    gx = np.array(draw(st.lists(exposure, min_size=ts.size, max_size=ts.size)))
    return ts, equity, gx


long_runs = runs(bps=long_bps_returns, steps_of=day_steps_ns)


def same(x: float, y: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == pytest.approx(y, rel=1e-9, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(long_runs, st.floats(1e-3, 1e6), st.floats(-0.5, 0.5))
def test_scaling_equity_leaves_every_ratio_unchanged(run, scale, rf):
    ts, equity, gx = run
    notional = np.array([50.0, 20.0])
    base = compute_metrics(
        ts, equity, gross_exposure=gx, fill_notional=notional, fill_fee=[0.0, 0.0], risk_free_rate=rf
    )
    scaled = compute_metrics(
        ts, equity * scale, gross_exposure=gx * scale, fill_notional=notional * scale,
        fill_fee=[0.0, 0.0], risk_free_rate=rf,
    )  # fmt: skip
    for name in ("total_return", "annualized_return", "volatility", "sharpe", "sortino", "max_drawdown",
                 "calmar", "turnover", "exposure", "time_in_market", "days_per_year", "mean_daily_return",
                 "daily_volatility", "daily_sharpe", "best_day", "worst_day"):  # fmt: skip
        assert same(getattr(base, name), getattr(scaled, name)), name
    assert base.max_drawdown_duration_ns == scaled.max_drawdown_duration_ns
    assert (base.n_days, base.annualized) == (scaled.n_days, scaled.annualized)


@settings(max_examples=200, deadline=None)
@given(long_runs, st.lists(st.integers(0, 400 * DAY), max_size=100, unique=True))
def test_annualized_figures_exist_exactly_from_min_days_and_days_chain_to_the_total(run, offsets):
    ts, equity, _ = run
    starts = None if not offsets else T0 + np.sort(np.array(offsets, dtype=np.int64))
    m = compute_metrics(ts, equity, day_starts_ns=starts)
    r_d = daily_returns(ts, equity, starts)
    # every day is a close-to-close link of the same chain: they compound to the whole run
    assert np.prod(1.0 + r_d) - 1.0 == pytest.approx(m.total_return, rel=1e-9, abs=1e-12)
    assert m.n_days == r_d.size <= ts.size - 1
    assert m.annualized == (m.n_days >= MIN_ANNUALIZE_DAYS)
    if m.annualized:
        assert math.isfinite(m.annualized_return) and math.isfinite(m.volatility)
    else:
        for name in ("annualized_return", "volatility", "sharpe", "sortino", "calmar"):
            assert math.isnan(getattr(m, name)), name


@settings(max_examples=150, deadline=None)
@given(runs())
def test_max_drawdown_is_a_fraction_below_one(run):
    ts, equity, _ = run
    depth, dur = max_drawdown(ts, equity)
    assert 0.0 <= depth < 1.0
    assert 0 <= dur <= ts[-1] - ts[0]
    assert (depth == 0.0) == (dur == 0)


@settings(max_examples=100, deadline=None)
@given(runs(bps=st.lists(st.integers(0, 500), min_size=1, max_size=30)))
def test_non_decreasing_curve_has_no_drawdown(run):
    ts, equity, _ = run
    assert max_drawdown(ts, equity) == (0.0, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-0.1, 0.1), min_size=2, max_size=40),
    st.floats(1.0, 1e5),
    st.floats(-0.5, 1.0),
)
def test_sharpe_sign_is_the_sign_of_mean_excess_return(returns, ppy, rf):
    r = np.array(returns)
    assume(np.std(r, ddof=1) > 1e-12)
    excess = float(np.mean(r)) - ((1 + rf) ** (1 / ppy) - 1)
    assert np.sign(sharpe_ratio(r, ppy, rf)) == np.sign(excess)
