"""engine.study: the risk split, the Pretrained Market Line, CAPM with Newey-West errors, signal
decay and the study file. Hand computations are worked in the tests with plain arithmetic."""

from __future__ import annotations

import json
import math

import msgspec
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.domain.timestamps import MINUTE_NS, MS_NS, SECOND_NS
from engine.study import io
from engine.study._inputs import StudyInputError, rf_daily
from engine.study.capm import capm, market_proxy_daily, newey_west_lags
from engine.study.decay import (
    RESOLUTIONS_NS,
    lag_profile,
    resample_bars,
    resolution_label,
)
from engine.study.pml import fit_free_line, fit_pml, rolling_pml
from engine.study.risk import decompose


@pytest.fixture
def sm():
    """statsmodels (the study extra, in the test extra too): engine.study.capm fits with it, and
    the PML tests compare against it. Without it only the tests that need it skip."""
    return pytest.importorskip("statsmodels.api")


T0 = 1_704_153_600 * SECOND_NS  # 2024-01-02 00:00:00 UTC
RF_DAILY = (1.05) ** (1 / 252) - 1  # 5% a year, compounded over 252 days


# --- risk ---------------------------------------------------------------------------------------


def test_decompose_matches_a_hand_computation():
    # One configuration, variants (1, 3) and (3, 5) on days 0 and 1; written [variant, day]:
    # M = 3; total = (4 + 0 + 0 + 4) / (4 - 1) = 8/3; day 0 spread var(1, 3) = 2, day 1 var(3, 5) = 2,
    # epistemic = 2; priced = 8/3 - 2 = 2/3.
    d = decompose([[[1.0, 3.0], [3.0, 5.0]]])
    assert d.mean_daily_return[0] == pytest.approx(3.0)
    assert d.total_std[0] == pytest.approx(math.sqrt(8 / 3))
    assert d.epistemic_std[0] == pytest.approx(math.sqrt(2.0))
    assert d.priced_std[0] == pytest.approx(math.sqrt(2 / 3))
    assert d.n_variants == 2 and d.n_days.tolist() == [2]


def test_priced_is_zero_when_the_model_noise_exceeds_the_total():
    # The variants disagree (-1, +1) every day but their mean path is flat: all of it is model
    # noise. total = 4 / 3, epistemic = 2, so priced is clamped to 0, not the sqrt of a negative.
    d = decompose([[[-1.0, -1.0], [1.0, 1.0]]])
    assert d.epistemic_std[0] > d.total_std[0]
    assert d.priced_std[0] == 0.0


returns_3d = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(2, 12)).flatmap(
    lambda shape: st.lists(st.floats(-0.2, 0.2), min_size=math.prod(shape), max_size=math.prod(shape)).map(
        lambda xs: np.array(xs).reshape(shape)
    )
)


@settings(max_examples=150, deadline=None)
@given(returns_3d)
def test_decompose_formulas_on_any_returns(r):
    d = decompose(r)
    c, v, days = r.shape
    for k in range(c):
        x = r[k]
        assert d.mean_daily_return[k] == pytest.approx(x.mean(), abs=1e-12)
        assert d.total_std[k] == pytest.approx(np.std(x, ddof=1), abs=1e-12)
        epi = np.mean(np.var(x, axis=0, ddof=1)) if v > 1 else 0.0
        assert d.epistemic_std[k] == pytest.approx(math.sqrt(epi), abs=1e-12)
        assert d.priced_std[k] == pytest.approx(math.sqrt(max(np.var(x, ddof=1) - epi, 0.0)), abs=1e-9)
    if v == 1:
        assert (d.epistemic_std == 0).all()
        np.testing.assert_array_equal(d.priced_std, d.total_std)


def test_priced_std_recovers_the_market_part_of_the_risk():
    # r = a_d (shared, sd 1%) + e_vd (per variant, sd 2%): priced ~ 1%, epistemic ~ 2%.
    rng = np.random.default_rng(1)
    r = rng.normal(0, 0.01, (1, 1, 20_000)) + rng.normal(0, 0.02, (1, 4, 20_000))
    d = decompose(r)
    assert d.priced_std[0] == pytest.approx(0.01, rel=0.05)
    assert d.epistemic_std[0] == pytest.approx(0.02, rel=0.02)


def test_a_missing_day_is_an_error_naming_where_it_is():
    r = np.zeros((2, 3, 4))
    r[1, 2, 3] = np.nan
    with pytest.raises(StudyInputError, match=r"returns\[1, 2, 3\] is NaN.*missing='drop_days'"):
        decompose(r)


def test_drop_days_leaves_the_day_out_for_every_variant_of_that_configuration():
    rng = np.random.default_rng(2)
    r = rng.normal(0, 0.01, (2, 3, 6))
    holey = r.copy()
    holey[0, 1, 2] = np.nan  # configuration 0 loses day 2; configuration 1 keeps all six
    d = decompose(holey, missing="drop_days")
    kept = decompose(np.delete(r[:1], 2, axis=2))
    whole = decompose(r[1:])
    assert d.n_days.tolist() == [5, 6]
    for field in ("mean_daily_return", "total_std", "epistemic_std", "priced_std"):
        assert getattr(d, field)[0] == pytest.approx(getattr(kept, field)[0], abs=1e-15)
        assert getattr(d, field)[1] == pytest.approx(getattr(whole, field)[0], abs=1e-15)


@pytest.mark.parametrize(
    "returns, kwargs, match",
    [
        (np.zeros((3, 4)), {}, r"returns must be 3-D \(\[n_configs, n_variants, n_days\]"),
        (np.zeros((2, 0, 3)), {}, r"returns has shape \(2, 0, 3\)"),
        (np.full((1, 1, 2), np.inf), {}, r"returns must be finite"),
        (np.full((1, 2, 2), np.nan), {"missing": "drop_days"}, r"configuration 0 has no day"),
        (np.zeros((1, 1, 2)), {"missing": "skip"}, r"missing must be one of"),
    ],
)
def test_decompose_rejects_bad_input_naming_the_argument(returns, kwargs, match):
    with pytest.raises(ValueError, match=match):
        decompose(returns, **kwargs)


# --- PML ----------------------------------------------------------------------------------------


def test_fit_pml_matches_a_hand_computation():
    # x = priced std, y = excess mean: x = 1, 2, 3, 4 and y = 1, 3, 2, 5 (rf added back below).
    # slope = sum(xy) / sum(x^2) = (1 + 6 + 6 + 20) / 30 = 1.1
    # residuals = y - 1.1 x = -0.1, 0.8, -1.3, 0.6; SSE = 0.01 + 0.64 + 1.69 + 0.36 = 2.70
    # s2 = 2.70 / (4 - 1) = 0.9; se = sqrt(0.9 / 30) = sqrt(0.03)
    # mean y = 2.75; SST = 1.75^2 + 0.25^2 + 0.75^2 + 2.25^2 = 8.75; R^2 = 1 - 2.70 / 8.75
    y = np.array([1.0, 3.0, 2.0, 5.0])
    fit = fit_pml(y + RF_DAILY, [1.0, 2.0, 3.0, 4.0], rf_annual=0.05, days_per_year=252)
    assert fit.slope == pytest.approx(1.1, rel=1e-12)
    assert fit.slope_se == pytest.approx(math.sqrt(0.03), rel=1e-12)
    assert fit.t_stat == pytest.approx(1.1 / math.sqrt(0.03), rel=1e-12)
    assert fit.r2 == pytest.approx(1 - 2.70 / 8.75, rel=1e-12)
    assert fit.intercept_daily == pytest.approx(RF_DAILY, rel=1e-15)
    assert fit.n == 4
    assert fit.residuals == pytest.approx((-0.1, 0.8, -1.3, 0.6), abs=1e-12)


def test_fit_pml_agrees_with_statsmodels_through_the_origin(sm):
    rng = np.random.default_rng(3)
    x = rng.uniform(0.002, 0.03, 25)
    y = RF_DAILY + 0.1 * x + rng.normal(0, 0.001, 25)
    fit = fit_pml(y, x)
    ref = sm.OLS(y - RF_DAILY, x[:, None]).fit()
    assert fit.slope == pytest.approx(ref.params[0], rel=1e-10)
    assert fit.slope_se == pytest.approx(ref.bse[0], rel=1e-10)


def test_r2_of_the_line_through_rf_can_be_negative():
    # Excess means 5, 5, 6 at x = 1, 2, 3: a line through the origin misses them badly, a flat line
    # at their mean does not.
    fit = fit_pml(np.array([5.0, 5.0, 6.0]) + RF_DAILY, [1.0, 2.0, 3.0])
    assert fit.r2 < 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-4, 0.1), min_size=2, max_size=30),
    st.floats(0.01, 5.0) | st.floats(-5.0, -0.01),
    st.floats(0.0, 0.2),
)
def test_points_on_a_line_through_rf_give_its_slope_and_r2_one(x, slope, rf_annual):
    x = np.array(x)
    assume(np.ptp(x) > 1e-3)
    y = rf_daily(rf_annual, 252) + slope * x
    fit = fit_pml(y, x, rf_annual=rf_annual)
    assert fit.slope == pytest.approx(slope, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.slope_se == pytest.approx(0.0, abs=1e-9 * abs(slope))


def test_fit_free_line_agrees_with_statsmodels(sm):
    rng = np.random.default_rng(4)
    x = rng.uniform(0.002, 0.03, 20)
    y = 0.0005 + 0.1 * x + rng.normal(0, 0.001, 20)
    line = fit_free_line(y, x)
    ref = sm.OLS(y, sm.add_constant(x)).fit()
    assert (line.intercept_daily, line.slope) == pytest.approx(tuple(ref.params), rel=1e-10)
    assert (line.intercept_se, line.slope_se) == pytest.approx(tuple(ref.bse), rel=1e-10)
    assert line.r2 == pytest.approx(ref.rsquared, rel=1e-10)
    assert line.n == 20


def test_degenerate_fits_are_nan_not_errors():
    riskless = fit_pml([0.001, 0.002], [0.0, 0.0])
    assert math.isnan(riskless.slope) and math.isnan(riskless.r2)
    one = fit_pml([0.01], [0.02])
    assert one.slope == pytest.approx((0.01 - RF_DAILY) / 0.02)
    assert math.isnan(one.slope_se) and math.isnan(one.t_stat)
    flat = fit_free_line([0.001, 0.002, 0.003], [0.01, 0.01, 0.01])
    assert math.isnan(flat.slope)


@pytest.mark.parametrize(
    "mean, std, kwargs, match",
    [
        ([0.1, 0.2], [0.1], {}, r"mean_daily has shape \(2,\) but priced_std has \(1,\)"),
        ([], [], {}, r"mean_daily is empty"),
        ([0.1], [-0.1], {}, r"priced_std must be finite and >= 0: priced_std\[0\]"),
        ([np.nan], [0.1], {}, r"mean_daily must be finite"),
        ([[0.1]], [0.1], {}, r"mean_daily must be 1-D"),
        ([0.1], [0.1], {"rf_annual": -2.0}, r"rf_annual must be"),
        ([0.1], [0.1], {"days_per_year": 0}, r"days_per_year must be"),
    ],
)
def test_fit_pml_rejects_bad_input_naming_the_argument(mean, std, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_pml(mean, std, **kwargs)


def test_rolling_pml_refits_each_whole_window():
    rng = np.random.default_rng(5)
    p = rng.uniform(0.005, 0.02, 6)
    r = 0.1 * p[:, None, None] + p[:, None, None] * rng.standard_normal((6, 3, 11))
    labels = [f"2024-01-{d:02d}" for d in range(1, 12)]
    windows = rolling_pml(r, labels, window_days=4, step_days=3)
    # starts 0, 3, 6; a window starting at 9 would need days 9..12 and is left out
    assert [(w.start_day, w.end_day) for w in windows] == [
        ("2024-01-01", "2024-01-04"), ("2024-01-04", "2024-01-07"), ("2024-01-07", "2024-01-10")]
    for w, start in zip(windows, (0, 3, 6)):
        d = decompose(r[:, :, start : start + 4])
        fit = fit_pml(d.mean_daily_return, d.priced_std)
        assert (w.slope, w.slope_se, w.r2) == (fit.slope, fit.slope_se, fit.r2)


@pytest.mark.parametrize(
    "labels, window, step, match",
    [
        (range(4), 2, 1, r"day_labels has 4 labels but returns_by_config_variant_day has 5 days"),
        (range(5), 6, 1, r"window_days = 6 is longer than the 5 days"),
        (range(5), 0, 1, r"window_days must be a positive integer"),
        (range(5), 2, 1.5, r"step_days must be a positive integer"),
    ],
)
def test_rolling_pml_rejects_bad_windows(labels, window, step, match):
    with pytest.raises(ValueError, match=match):
        rolling_pml(np.zeros((2, 2, 5)), labels, window, step)


# --- CAPM ---------------------------------------------------------------------------------------


def _series(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0004, 0.01, n)
    noise = np.convolve(rng.normal(0, 0.004, n + 2), [1.0, 0.6, 0.3])[2 : n + 2]  # autocorrelated errors
    return 0.0003 + 0.7 * market + noise, market


def test_capm_alpha_and_beta_equal_least_squares_on_excess_returns(sm):
    strategy, market = _series(120, 6)
    out = capm(strategy, market)
    design = np.column_stack([np.ones(120), market - RF_DAILY])
    (alpha, beta), *_ = np.linalg.lstsq(design, strategy - RF_DAILY, rcond=None)
    assert out.alpha_daily == pytest.approx(alpha, rel=1e-9)
    assert out.beta == pytest.approx(beta, rel=1e-9)
    assert out.n == 120 and out.lags == newey_west_lags(120) == 4


def test_capm_standard_errors_equal_a_hand_written_newey_west(sm):
    strategy, market = _series(30, 7)
    lags = 3
    out = capm(strategy, market, maxlags=lags, rf_annual=0.0)
    # Newey-West by hand: S = sum_t u_t^2 x_t x_t' + sum_l w_l sum_t u_t u_{t-l} (x_t x_{t-l}' + x_{t-l} x_t'),
    # w_l = 1 - l / (L + 1) (Bartlett); V = (X'X)^-1 S (X'X)^-1 * T / (T - 2) (small-sample factor).
    t_n = 30
    xs = [np.array([1.0, m]) for m in market]
    xtx = sum(np.outer(x, x) for x in xs)
    coef = np.linalg.solve(xtx, sum(x * y for x, y in zip(xs, strategy)))
    u = [y - float(x @ coef) for x, y in zip(xs, strategy)]
    s = sum(u[t] ** 2 * np.outer(xs[t], xs[t]) for t in range(t_n))
    for lag in range(1, lags + 1):
        w = 1.0 - lag / (lags + 1)
        for t in range(lag, t_n):
            g = u[t] * u[t - lag] * np.outer(xs[t], xs[t - lag])
            s = s + w * (g + g.T)
    inv = np.linalg.inv(xtx)
    cov = inv @ s @ inv * t_n / (t_n - 2)
    alpha_se, beta_se = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
    assert out.alpha_se == pytest.approx(alpha_se, rel=1e-9)
    assert out.beta_se == pytest.approx(beta_se, rel=1e-9)
    assert out.alpha_t == pytest.approx(coef[0] / alpha_se, rel=1e-9)
    assert out.beta_t == pytest.approx(coef[1] / beta_se, rel=1e-9)
    assert out.lags == 3


def test_newey_west_lag_rule():
    # floor(4 (T / 100)^(2/9)): 4 (0.3)^0.222 = 3.07 -> 3; 4 (2.52)^0.222 = 4.91 -> 4; T = 100 -> 4
    assert [newey_west_lags(n) for n in (30, 252, 100)] == [3, 4, 4]


def test_capm_on_a_flat_market_is_nan(sm):
    out = capm([0.01, 0.02, 0.0, 0.01], [0.001] * 4)
    assert math.isnan(out.beta) and math.isnan(out.alpha_t) and out.n == 4


@pytest.mark.parametrize(
    "strategy, market, kwargs, match",
    [
        ([0.1] * 4, [0.1] * 3, {}, r"strategy_daily has shape \(4,\) but market_daily has \(3,\)"),
        ([0.1, 0.2], [0.1, 0.3], {}, r"strategy_daily has 2 days; the CAPM needs at least 3"),
        ([0.1, 0.2, 0.3], [0.1, np.nan, 0.2], {}, r"market_daily must be finite: market_daily\[1\]"),
        ([0.1, 0.2, 0.3], [0.1, 0.0, 0.2], {"maxlags": 3}, r"maxlags must be an integer in \[0, 2\]"),
        ([0.1, 0.2, 0.3], [0.1, 0.0, 0.2], {"maxlags": 1.0}, r"maxlags must be an integer"),
    ],
)
def test_capm_rejects_bad_input_naming_the_argument(strategy, market, kwargs, match, sm):
    with pytest.raises(ValueError, match=match):
        capm(strategy, market, **kwargs)


def test_market_proxy_is_the_equal_weighted_simple_return():
    # Instrument A: 100 -> 110 -> 99 (+10%, -10%); B: 50 -> 50 -> 55 (0%, +10%).
    mids = [[100.0, 110.0, 99.0], [50.0, 50.0, 55.0]]
    assert market_proxy_daily(mids) == pytest.approx([0.05, 0.0], abs=1e-15)
    # B has no close on day 1: both of its returns drop out, A's stand alone.
    mids = [[100.0, 110.0, 99.0], [50.0, np.nan, 55.0]]
    assert market_proxy_daily(mids) == pytest.approx([0.1, -0.1], abs=1e-15)


@pytest.mark.parametrize(
    "mids, match",
    [
        ([100.0, 101.0], r"mids_by_instrument_day must be 2-D"),
        ([[100.0]], r"pass at least one instrument and two days"),
        ([[100.0, 101.0], [100.0, -1.0]], r"must be finite and > 0: mids_by_instrument_day\[1, 1\] = -1.0"),
        ([[100.0, np.nan, 101.0]], r"no instrument has closes on both day 0 and day 1"),
    ],
)
def test_market_proxy_rejects_bad_mids(mids, match):
    with pytest.raises(ValueError, match=match):
        market_proxy_daily(mids)


# --- decay --------------------------------------------------------------------------------------


def _planted_signal(n_instruments: int = 3, n_bars: int = 1500, res: int = SECOND_NS, seed: int = 8):
    """One tick per bar, two segments per instrument; pred_mid is the mid moved by the next bar's
    return, so the surprise at t is r_{t+1} exactly (independent noise on each segment's last bar)."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("ts", "inst", "mid", "pred", "seg")}
    for i in range(n_instruments):
        for s in range(2):
            start = T0 + (i * 7 + s * (n_bars + 50)) * res  # a gap between the segments
            ret = rng.normal(0, 1e-4, n_bars)
            mid = 100.0 * (1 + s) * np.exp(np.cumsum(ret))
            nxt = np.append(ret[1:], rng.normal(0, 1e-4))
            cols["ts"].append(start + np.arange(n_bars) * res + res // 3)
            cols["inst"].append(np.full(n_bars, i))
            cols["mid"].append(mid)
            cols["pred"].append(mid * np.exp(nxt))
            cols["seg"].append(np.full(n_bars, 10 * i + s))
    arrs = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(arrs["ts"], kind="stable")  # instruments interleave in time, as a stream does
    return tuple(arrs[k][order] for k in ("ts", "inst", "mid", "pred", "seg"))


def test_a_signal_built_from_the_next_return_peaks_at_lag_plus_one():
    ts, inst, mid, pred, seg = _planted_signal()
    prof = lag_profile(ts, inst, mid, pred, seg, RESOLUTIONS_NS["1s"])
    corr = dict(zip(prof.lags, prof.corr))
    assert prof.lags == tuple(range(-5, 6))
    assert corr[1] == pytest.approx(1.0, abs=1e-3)
    assert max(corr, key=corr.get) == 1
    assert all(abs(corr[k]) < 0.06 for k in range(-5, 1))  # ~ 1 / sqrt(9000) noise
    assert prof.n_instruments == 3 and prof.n_skipped == 0
    # pairs per lag: 2 segments x (1500 - 1) returns, less |k| at segment edges (k >= 1: k - 1)
    n = dict(zip(prof.lags, prof.n_bars))
    assert n[1] == 3 * 2 * 1499 and n[-2] == 3 * 2 * (1499 - 2) and n[3] == 3 * 2 * (1499 - 2)


def test_the_signal_peak_shows_at_a_coarser_resolution_as_lag_one_only_in_part():
    # At 5 s bars the next 1 s return is one fifth of the next bar: still the peak at +1, weaker.
    ts, inst, mid, pred, seg = _planted_signal()
    prof = lag_profile(ts, inst, mid, pred, seg, 5 * SECOND_NS)
    corr = dict(zip(prof.lags, prof.corr))
    assert max(corr, key=corr.get) == 1 and 0.2 < corr[1] < 0.8


def test_an_instrument_with_too_few_bars_is_skipped_and_counted():
    ts, inst, mid, pred, seg = _planted_signal(n_instruments=2)
    keep = ~((inst == 1) & (seg == 11))
    short = (inst == 1) & (seg == 10)
    keep &= ~short | (np.cumsum(short) <= 20)  # instrument 1 keeps 20 bars
    prof = lag_profile(ts[keep], inst[keep], mid[keep], pred[keep], seg[keep], SECOND_NS)
    assert (prof.n_instruments, prof.n_skipped) == (1, 1)
    only0 = inst == 0
    alone = lag_profile(ts[only0], inst[only0], mid[only0], pred[only0], seg[only0], SECOND_NS)
    assert prof.corr == alone.corr and prof.n_bars == alone.n_bars


def test_bars_take_the_last_tick_carry_empty_bars_and_split_at_a_segment_change():
    s = SECOND_NS
    ts = np.array([T0 + 100 * MS_NS, T0 + 900 * MS_NS, T0 + 3 * s + 1, T0 + 3 * s + 5, T0 + 3 * s + 9])
    mid = np.array([100.0, 101.0, 102.0, 50.0, 51.0])
    pred = mid * 1.001
    seg = np.array([1, 1, 1, 2, 2])
    bars = resample_bars(ts, mid, pred, seg, s)
    # segment 1: bars 0, 1, 2, 3 (1 and 2 carried); segment 2: bar 3 alone
    assert bars.bar_start_ns.tolist() == [T0, T0 + s, T0 + 2 * s, T0 + 3 * s, T0 + 3 * s]
    assert bars.segment_id.tolist() == [1, 1, 1, 1, 2]
    assert bars.mid.tolist() == [101.0, 101.0, 101.0, 102.0, 51.0]
    assert bars.carried.tolist() == [False, True, True, False, False]
    np.testing.assert_allclose(bars.log_return, [np.nan, 0.0, 0.0, math.log(102 / 101), np.nan])
    np.testing.assert_allclose(bars.surprise, math.log(1.001))


tick_streams = st.lists(
    st.tuples(st.integers(0, 3 * SECOND_NS), st.booleans(), st.floats(-0.005, 0.005)), min_size=1, max_size=60
)


@settings(max_examples=200, deadline=None)
@given(tick_streams, st.sampled_from([100 * MS_NS, SECOND_NS]))
def test_bars_never_span_a_segment_boundary(steps, res):
    # Each segment trades at its own price level, e^(10 k): a return across a boundary would be
    # ~10 in log terms, one inside a segment is below 0.005 a tick.
    ts, seg, mid = [], [], []
    t, k, level = T0, 0, 0.0
    for gap, reset, move in steps:
        t += gap
        if reset and ts:
            k += 1
            level = 10.0 * k
        level += move
        ts.append(t)
        seg.append(k)
        mid.append(math.exp(level))
    ts, seg, mid = np.array(ts), np.array(seg), np.array(mid)
    bars = resample_bars(ts, mid, mid, seg, res)
    finite = np.isfinite(bars.log_return)
    assert (np.abs(bars.log_return[finite]) < 0.005 * len(steps) + 1e-9).all()
    # a return exists exactly where the previous bar is of the same segment, one width earlier
    same = np.concatenate(([False], bars.segment_id[1:] == bars.segment_id[:-1]))
    np.testing.assert_array_equal(finite, same)
    assert (np.diff(bars.bar_start_ns)[same[1:]] == res).all()
    # every bar shows the last tick of its segment at or before the bar's end
    for b0, g, m in zip(bars.bar_start_ns, bars.segment_id, bars.mid):
        mine = (seg == g) & (ts < b0 + res)
        assert m == mid[np.flatnonzero(mine)[-1]]
    # each segment's bars run from its first tick's bar to its last's
    for g in np.unique(seg):
        assert bars.bar_start_ns[bars.segment_id == g][0] == ts[seg == g][0] // res * res
        assert bars.bar_start_ns[bars.segment_id == g][-1] == ts[seg == g][-1] // res * res


@pytest.mark.parametrize(
    "change, match",
    [
        ({"mid": np.ones((4, 1))}, r"mid must be 1-D"),
        ({"pred_mid": np.ones(3)}, r"pred_mid has 3 entries but ts_ns has 4"),
        ({"ts_ns": np.arange(4.0)}, r"ts_ns must be integers"),
        ({"ts_ns": np.array([0, 2, 1, 3])}, r"ts_ns goes back in time of instrument 0: ts_ns\[2\] = 1 < ts_ns\[1\] = 2"),
        ({"segment_id": np.array([0, 1, 0, 1])}, r"segment_id 0 of instrument 0 comes back"),
        ({"mid": np.array([1.0, 0.0, 1.0, 1.0])}, r"mid must be finite and > 0: mid\[1\] = 0.0"),
        ({"resolution_ns": 0}, r"resolution_ns must be a positive integer"),
        ({"lags": [1, 1]}, r"lags must be distinct"),
    ],
)
def test_lag_profile_rejects_bad_input_naming_the_argument(change, match):
    args = {"ts_ns": np.arange(4), "instrument": np.zeros(4, np.int64), "mid": np.ones(4), "pred_mid": np.ones(4),
            "segment_id": np.zeros(4, np.int64), "resolution_ns": 1}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        lag_profile(**args)


def test_resolution_labels():
    assert [resolution_label(RESOLUTIONS_NS[k]) for k in ("100ms", "1s", "1min", "5min")] == ["100ms", "1s", "1min", "5min"]
    assert RESOLUTIONS_NS["5min"] == 5 * MINUTE_NS
    assert resolution_label(250 * MS_NS) == "250000000ns"


# --- the study file -----------------------------------------------------------------------------


def _model_study(seed: int) -> io.ModelStudy:
    rng = np.random.default_rng(seed)
    r = rng.normal(0.001, 0.01, (3, 2, 30))
    d = decompose(r)
    fit = fit_pml(d.mean_daily_return, d.priced_std)
    strategy, market = _series(30, seed)
    prof = lag_profile(*_planted_signal(n_instruments=1, n_bars=100), SECOND_NS)
    return io.ModelStudy(
        pml=io.pml_section(fit, d, ["a", "b", "c"]),
        rolling_pml=rolling_pml(r, [f"d{k}" for k in range(30)], 10, 10),
        capm=[io.capm_row("a", capm(strategy, market)), io.capm_row("b", capm(strategy, [0.0] * 30))],
        decay=[io.decay_row(prof)],
    )


def test_the_study_file_round_trips_with_nan_as_null(tmp_path, sm):
    models = {"ssm": _model_study(9), "ssm-small": _model_study(10)}
    path = io.write_study_json(tmp_path / "study.json", models)
    back = io.read_study_json(path)
    assert (back.format, back.version, back.rf_annual) == ("nextick.study", 1, 0.05)
    assert list(back.models) == ["ssm", "ssm-small"]
    assert math.isnan(back.models["ssm"].capm[1].beta)  # a flat market: written null, read nan
    enc = msgspec.json.encode  # nan -> null on both sides, so equal documents encode equal
    assert enc(back.models) == enc(models)


def test_the_study_file_has_the_published_schema(tmp_path, sm):
    path = io.write_study_json(tmp_path / "study.json", {"ssm": _model_study(11)})
    doc = json.loads(path.read_text())
    assert list(doc) == ["format", "version", "rf_annual", "models"]
    model = doc["models"]["ssm"]
    assert list(model) == ["pml", "rolling_pml", "capm", "decay"]
    assert list(model["pml"]) == ["slope", "slope_se", "t_stat", "intercept_daily", "r2", "n", "points"]
    assert list(model["pml"]["points"][0]) == ["config_id", "mean_daily_return", "total_std", "priced_std", "epistemic_std"]
    assert list(model["rolling_pml"][0]) == ["start_day", "end_day", "slope", "slope_se", "r2"]
    assert [w["start_day"] for w in model["rolling_pml"]] == ["d0", "d10", "d20"]
    assert list(model["capm"][0]) == ["config_id", "alpha_daily", "alpha_t", "beta", "beta_t", "n", "lags"]
    assert model["capm"][1]["beta"] is None  # NaN is written as null
    assert list(model["decay"][0]) == ["resolution", "lags", "corr"]
    assert model["decay"][0]["resolution"] == "1s" and model["decay"][0]["lags"] == list(range(-5, 6))


def test_reading_another_format_or_version_says_what_it_is(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "nextick.summary", "version": 1}))
    with pytest.raises(StudyInputError, match=r"not a study file: format is 'nextick.summary'"):
        io.read_study_json(path)
    path.write_text(json.dumps({"format": "nextick.study", "version": 2, "rf_annual": 0.05, "models": {}}))
    with pytest.raises(StudyInputError, match=r"version 2; this nextick reads version 1"):
        io.read_study_json(path)
    path.write_text(json.dumps({"format": "nextick.study", "version": 1, "rf_annual": 0.05, "models": {"m": {}}}))
    with pytest.raises(StudyInputError, match=r"pml"):
        io.read_study_json(path)


def test_pml_section_needs_one_id_per_configuration():
    d = decompose(np.zeros((2, 1, 3)) + [[[0.0, 0.01, 0.02]]])
    with pytest.raises(StudyInputError, match=r"config_ids has 1 ids but the decomposition has 2"):
        io.pml_section(fit_pml(d.mean_daily_return, d.priced_std), d, ["only"])


# --- end to end ---------------------------------------------------------------------------------


def test_the_pml_of_a_planted_market_recovers_its_sharpe_ratio(tmp_path):
    # Configuration c earns rf + S * p_c on average, with a market shock of sd p_c shared by its
    # variants and model noise of sd q_c that differs between variants (q independent of p).
    rng = np.random.default_rng(0)
    n_configs, n_variants, n_days, sharpe = 40, 8, 500, 0.15
    p = rng.uniform(0.005, 0.02, n_configs)
    q = rng.uniform(0.0, 0.03, n_configs)
    r = (RF_DAILY + sharpe * p[:, None, None] + p[:, None, None] * rng.standard_normal((n_configs, 1, n_days))
         + q[:, None, None] * rng.standard_normal((n_configs, n_variants, n_days)))
    d = decompose(r)
    fit = fit_pml(d.mean_daily_return, d.priced_std)
    assert abs(fit.slope - sharpe) < 2 * fit.slope_se
    assert fit.t_stat > 10
    # Regressing on the total risk instead prices the model's noise as if the market paid for it:
    # the slope is biased far below S.
    naive = fit_pml(d.mean_daily_return, d.total_std)
    assert sharpe - naive.slope > 5 * naive.slope_se
    # The free line's intercept agrees with rf within its error: the line through rf describes it.
    free = fit_free_line(d.mean_daily_return, d.priced_std)
    assert abs(free.intercept_daily - RF_DAILY) < 3 * free.intercept_se
    # The edge is steady through time: every half-year window finds S within a few errors.
    windows = rolling_pml(r, range(n_days), window_days=125, step_days=125)
    assert len(windows) == 4
    assert all(abs(w.slope - sharpe) < 4 * w.slope_se for w in windows)
    path = io.write_study_json(tmp_path / "study.json", {"planted": io.ModelStudy(io.pml_section(fit, d, [f"c{k}" for k in range(n_configs)]), windows)})
    back = io.read_study_json(path).models["planted"]
    assert back.pml.slope == fit.slope and back.pml.points[3].priced_std == d.priced_std[3]
