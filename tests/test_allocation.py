"""Allocation (strategies/allocation): the constraint set and its projection, the estimators, and
the allocators against hand computations and for constraint satisfaction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from strategies.allocation import allocators as al
from strategies.allocation.constraints import Constraints, project, solve_qp
from strategies.allocation.estimators import (
    MarkWindow,
    complete_rows,
    ledoit_wolf,
    sample_mean,
)

TOL = 1e-9


@st.composite
def constraint_sets(draw, n: int):
    long_only = draw(st.booleans())
    cap = draw(st.floats(0.05, 1.5))
    gross = draw(st.floats(0.1, 3.0))
    reach = min(gross, n * cap)
    if draw(st.booleans()):
        net = None
    else:
        # The ends (net = +-reach) are where the set degenerates: drawn on purpose.
        f = draw(st.one_of(st.sampled_from([1.0] if long_only else [1.0, -1.0]),
                           st.floats(0.0 if long_only else -1.0, 1.0)))
        net = f * reach
    return Constraints(long_only=long_only, cap=cap, gross=gross, net=net)


@st.composite
def cases(draw):
    n = draw(st.integers(1, 8))
    v = np.array(draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)))
    return v, draw(constraint_sets(n))


# --- constraints and the projection ----------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(cases(), st.lists(st.floats(-5, 5), min_size=8, max_size=8))
def test_projection_is_feasible_and_nearest(case, other):
    v, c = case
    w = project(v, c)
    assert c.satisfied(w, TOL)
    # The projection onto a convex set is characterised by (v - w).(y - w) <= 0 for every feasible
    # y: checked at another feasible point, whatever method computed w.
    y = project(np.array(other[: len(v)]), c)
    assert (v - w) @ (y - w) <= 1e-7
    # Idempotent: a feasible point is its own projection.
    assert np.allclose(project(w, c), w, atol=1e-7)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_exact_projection_matches_the_qp(case):
    v, c = case
    assume(c.long_only or c.net is None)  # the cases the threshold algorithm solves exactly
    w = project(v, c)
    w_qp = solve_qp(np.eye(len(v)), v, c)
    assert np.linalg.norm(w - v) <= np.linalg.norm(w_qp - v) + 1e-7
    # The projection is unique (strictly convex objective): the two methods agree.
    assert np.allclose(w, w_qp, atol=1e-6)


def test_projection_by_hand():
    # Capped simplex: cap 0.6 binds on the third; tau = -0.075 spreads the rest.
    c = Constraints(cap=0.6)
    assert np.allclose(project([0.25, 0.0, 0.75], c), [0.325, 0.075, 0.6])
    # Long-short, free net, gross 1: soft threshold of |v| = (0.8, 0.6) by 0.2 keeps the signs.
    c = Constraints(long_only=False, cap=1.0, gross=1.0, net=None)
    assert np.allclose(project([0.8, -0.6], c), [0.6, -0.4])
    # Long-short with net 0: the nearest market-neutral point subtracts the mean.
    c = Constraints(long_only=False, cap=1.0, gross=2.0, net=0.0)
    assert np.allclose(project([0.5, 0.1, -0.3], c), [0.4, 0.0, -0.4], atol=1e-8)
    # Long-short with net = gross: no short can remain, the capped simplex again.
    c = Constraints(long_only=False, cap=1.0, gross=1.0, net=1.0)
    assert np.allclose(project([0.75, 0.25, -0.3], c), [0.75, 0.25, 0.0])
    c = Constraints(long_only=False, cap=1.0, gross=1.0, net=-1.0)
    assert np.allclose(project([0.2, -0.2, -0.6], c), [0.0, -0.3, -0.7])


@pytest.mark.parametrize("kwargs, match", [
    ({"cap": 0.0}, "cap must be a finite fraction of equity > 0"),
    ({"gross": float("nan")}, "gross must be a finite fraction"),
    ({"net": 2.0}, "net 2.0 exceeds gross 1.0 in size: raise gross"),
    ({"net": -0.5, "gross": 1.0}, "net -0.5 < 0 with long_only"),
    ({"long_only": 1}, "long_only must be True or False"),
])
def test_bad_constraints_say_what_to_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Constraints(**kwargs)


def test_infeasible_cap_and_bad_weights_are_refused():
    with pytest.raises(ValueError, match=r"cap 0.2 x 3 assets = 0.6 cannot reach net 1.0: raise cap to at least 0.333"):
        project([1.0, 1.0, 1.0], Constraints(cap=0.2))
    with pytest.raises(ValueError, match="weights must be finite"):
        project([1.0, np.nan], Constraints())
    with pytest.raises(ValueError, match="non-empty 1-D"):
        project([], Constraints())


# --- estimators -------------------------------------------------------------------------------------


def test_mark_window_keeps_lookback_returns():
    win = MarkWindow(lookback=2)
    for m in ([100.0, 50.0], [110.0, 50.0], [99.0, 55.0], [99.0, np.nan]):
        win.push(m)
    r = win.returns()
    assert len(win) == 3  # lookback + 1 marks
    assert np.allclose(r[0], [99 / 110 - 1, 0.1])
    assert r[1][0] == 0.0 and np.isnan(r[1][1])
    assert complete_rows(r).shape == (1, 2)


def test_mark_window_copies_and_grows():
    win = MarkWindow(lookback=3)
    m = np.array([100.0, 0.0])
    win.push(m)
    m[0] = 1.0  # the window kept a copy
    win.push([110.0, 20.0, 5.0])  # a new instrument: earlier marks get NaN
    r = win.returns()
    assert r.shape == (1, 3) and r[0, 0] == pytest.approx(0.1) and np.isnan(r[0, 1:]).all()
    with pytest.raises(ValueError, match="lookback must be an int >= 2"):
        MarkWindow(1)


def test_sample_mean_and_ledoit_wolf():
    rng = np.random.default_rng(5)
    r = rng.normal(0.001, 0.01, (40, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1.0]])
    assert np.allclose(sample_mean(r), r.mean(axis=0))
    lw = ledoit_wolf(r)
    s = np.cov(r, rowvar=False, ddof=0)  # the maximum-likelihood covariance LW shrinks
    target = np.trace(s) / 3
    # LW = (1 - d) S + d * target * I for one shrinkage d in [0, 1].
    d = 1 - lw[0, 1] / s[0, 1]
    assert 0 <= d <= 1
    assert np.allclose(lw, (1 - d) * s + d * target * np.eye(3))
    # Fewer periods than assets: the sample covariance is singular, LW is not.
    few = rng.normal(0, 0.01, (4, 6))
    assert np.linalg.eigvalsh(ledoit_wolf(few)).min() > 0
    with pytest.raises(ValueError, match="need at least 2"):
        ledoit_wolf(r[:1])
    with pytest.raises(ValueError, match="NaN or inf; keep complete rows"):
        sample_mean(np.array([[np.nan, 0.1]]))


# --- allocators against hand computations -----------------------------------------------------------

S1, S2, RHO = 0.2, 0.3, 0.3
COV2 = np.array([[S1**2, RHO * S1 * S2], [RHO * S1 * S2, S2**2]])


def test_min_variance_two_assets_closed_form():
    s12 = COV2[0, 1]
    w1 = (S2**2 - s12) / (S1**2 + S2**2 - 2 * s12)  # 0.7345...: the box does not bind
    w = al.min_variance(np.zeros(2), COV2, Constraints())
    assert np.allclose(w, [w1, 1 - w1], atol=1e-7)
    # A cap of 0.6 binds: the variance is convex in w1 along the budget line, so the cap is optimal.
    w = al.min_variance(np.zeros(2), COV2, Constraints(cap=0.6))
    assert np.allclose(w, [0.6, 0.4], atol=1e-7)


def test_mean_variance_unconstrained_is_sigma_inverse_mu_over_lambda():
    cov = np.array([[0.04, 0.006, 0.0], [0.006, 0.09, 0.012], [0.0, 0.012, 0.16]])
    mu = np.array([0.05, 0.02, 0.08])
    loose = Constraints(long_only=False, cap=100.0, gross=1000.0, net=None)
    w = al.mean_variance(mu, cov, loose, risk_aversion=4.0)
    assert np.allclose(w, np.linalg.solve(cov, mu) / 4.0, atol=1e-6)
    # Fully invested long-short: w = Sigma^-1 (mu - g 1) / lambda with g making sum w = 1.
    a, b = np.linalg.solve(cov, mu), np.linalg.solve(cov, np.ones(3))
    g = (a.sum() - 4.0) / b.sum()
    w = al.mean_variance(mu, cov, Constraints(long_only=False, cap=100.0, gross=1000.0, net=1.0), risk_aversion=4.0)
    assert np.allclose(w, (a - g * b) / 4.0, atol=1e-6)


def test_heuristic_allocators_by_hand():
    c = Constraints()
    cov = np.diag([0.1, 0.2, 0.4]) ** 2
    assert np.allclose(al.equal_weight(np.zeros(3), cov, c), [1 / 3] * 3)
    assert np.allclose(al.inverse_volatility(np.zeros(3), cov, c), [4 / 7, 2 / 7, 1 / 7])
    assert np.allclose(al.momentum([0.1, -0.05, 0.3], None, c), [0.25, 0.0, 0.75])
    assert np.allclose(al.momentum([0.1, -0.05, 0.3], None, Constraints(cap=0.6)), [0.325, 0.075, 0.6])
    # No winner and a free net: cash.
    assert np.allclose(al.momentum([-0.1, -0.2], None, Constraints(net=None)), [0.0, 0.0])
    assert np.allclose(al.cap_weight([3.0, 1.0], None, c), [0.75, 0.25])
    assert np.allclose(al.index_proxy(np.zeros(3), None, c, index=1), [0, 1, 0])
    assert np.allclose(al.index_proxy(np.zeros(3), None, Constraints(cap=0.5), index=1), [0.25, 0.5, 0.25])
    # Half the book: the heuristics scale to net.
    assert np.allclose(al.equal_weight(np.zeros(4), None, Constraints(net=0.5)), [0.125] * 4)


def test_allocators_refuse_bad_input():
    with pytest.raises(ValueError, match="risk_aversion must be a finite number > 0"):
        al.mean_variance(np.zeros(2), COV2, Constraints(), risk_aversion=0.0)
    with pytest.raises(ValueError, match=r"cov must be \[3, 3\] for 3 assets"):
        al.min_variance(np.zeros(3), COV2, Constraints())
    with pytest.raises(ValueError, match="inverse_volatility needs every variance > 0"):
        al.inverse_volatility(np.zeros(2), np.diag([0.01, 0.0]), Constraints())
    with pytest.raises(ValueError, match="index must be an instrument index 0..1"):
        al.index_proxy(np.zeros(2), None, Constraints(), index=2)
    with pytest.raises(ValueError, match="market_cap must be >= 0"):
        al.cap_weight([1.0, -1.0], None, Constraints())


@st.composite
def markets(draw):
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.02, (n, n))
    cov = a @ a.T + np.diag(rng.uniform(1e-5, 4e-4, n))
    mu = rng.normal(0, 0.01, n)
    return mu, cov, draw(constraint_sets(n))


@settings(max_examples=150, deadline=None)
@given(markets(), st.sampled_from(sorted(al.ALLOCATORS)))
def test_every_allocator_satisfies_the_constraints(market, name):
    mu, cov, c = market
    if name == "cap_weight":
        w = al.cap_weight(np.abs(mu) + 1e-3, cov, c)
    else:
        w = al.ALLOCATORS[name](mu, cov, c)
    assert w.shape == mu.shape and c.satisfied(w, TOL)
    if name == "min_variance":  # no feasible point the optimiser missed: beats equal weight
        e = al.equal_weight(mu, cov, c)
        assert w @ cov @ w <= e @ cov @ e + 1e-12
    if name == "mean_variance":
        e = al.equal_weight(mu, cov, c)
        assert mu @ w - 0.5 * w @ cov @ w >= mu @ e - 0.5 * e @ cov @ e - 1e-12


def test_allocators_are_deterministic():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.02, (5, 5))
    cov, mu = a @ a.T + 1e-4 * np.eye(5), rng.normal(0, 0.01, 5)
    c = Constraints(long_only=False, cap=0.4, gross=1.5, net=0.5)
    for f in (al.min_variance, al.mean_variance):
        assert f(mu, cov, c).tobytes() == f(mu, cov, c).tobytes()
    assert math.isclose(al.min_variance(mu, cov, c).sum(), 0.5, abs_tol=TOL)
