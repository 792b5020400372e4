"""Mean-CVaR (strategies/allocation/cvar.py) against brute force, and the scenario generators
(strategies/allocation/scenarios.py): shape, determinism, calibration."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.allocation.constraints import Constraints
from strategies.allocation.cvar import empirical_cvar, mean_cvar
from strategies.allocation.scenarios import GBM, GarchJump, block_bootstrap

ALPHA = 0.95
S = 200  # (1 - ALPHA) S = 10 scenarios in the tail: the empirical CVaR is the mean of the worst 10


def two_assets(seed=1):
    rng = np.random.default_rng(seed)
    z = rng.standard_t(4, (S, 2)) * [0.01, 0.02]
    z[:, 1] += 0.5 * z[:, 0]
    return z + [0.0005, 0.0015]


def tail_mean(losses):
    """CVaR_0.95 of 200 equally likely losses, by sorting: the mean of the 10 largest."""
    return float(np.sort(losses)[-10:].mean())


GRID = np.linspace(0.0, 1.0, 2001)  # w1 in steps of 0.0005 on the simplex


def grid_cvar(R, w_grid):
    """[g] CVaR at each grid portfolio, w = (w1, 1 - w1)."""
    return np.array([tail_mean(-(R @ [w, 1 - w])) for w in w_grid])


def lipschitz(R):
    # |d CVaR / d w1| <= max_s |r_s1 - r_s2|: a grid point is within this * step / 2 of any w1.
    return float(np.abs(R[:, 0] - R[:, 1]).max()) * (GRID[1] - GRID[0]) / 2


def test_empirical_cvar_is_the_tail_mean():
    losses = np.random.default_rng(3).normal(size=S)
    assert empirical_cvar(losses, ALPHA) == pytest.approx(tail_mean(losses), abs=1e-12)


def test_min_cvar_matches_a_grid_over_the_simplex():
    R = two_assets()
    res = mean_cvar(R, ALPHA, constraints=Constraints())
    cv = grid_cvar(R, GRID)
    assert res.weights.sum() == pytest.approx(1.0, abs=1e-9) and (res.weights >= -1e-12).all()
    # The LP's objective is the CVaR at its weights...
    assert res.cvar == pytest.approx(tail_mean(-(R @ res.weights)), abs=1e-9)
    # ...no grid point beats it, and it is within the grid's resolution of the best one.
    assert res.cvar <= cv.min() + 1e-9
    assert res.cvar >= cv.min() - lipschitz(R) - 1e-12
    assert abs(res.weights[0] - GRID[cv.argmin()]) < 0.05
    # zeta is a VaR_0.95: between the 190th and 191st smallest of the 200 losses.
    sorted_losses = np.sort(-(R @ res.weights))
    assert sorted_losses[189] - 1e-9 <= res.var <= sorted_losses[190] + 1e-9


def test_target_return_and_risk_aversion_match_the_grid():
    R = two_assets(2)
    mean = R.mean(axis=0)
    target = 0.6 * mean.min() + 0.4 * mean.max()
    res = mean_cvar(R, ALPHA, target_return=target, constraints=Constraints())
    ok = np.array([w * mean[0] + (1 - w) * mean[1] >= target for w in GRID])
    cv = grid_cvar(R, GRID)
    assert res.expected_return >= target - 1e-9
    assert res.cvar <= cv[ok].min() + 1e-9 and res.cvar >= cv[ok].min() - lipschitz(R) - 1e-12
    lam = 2.0
    res = mean_cvar(R, ALPHA, risk_aversion=lam, constraints=Constraints())
    util = np.array([w * mean[0] + (1 - w) * mean[1] for w in GRID]) - lam * cv
    mine = res.expected_return - lam * res.cvar
    assert mine >= util.max() - 1e-9 and mine <= util.max() + lam * lipschitz(R) + 1e-12


def test_long_short_market_neutral_matches_a_grid():
    R = two_assets(4)
    c = Constraints(long_only=False, cap=1.0, gross=2.0, net=0.0)
    target = 0.5 * abs(R.mean(axis=0) @ [1, -1])
    res = mean_cvar(R, ALPHA, target_return=target, constraints=c)
    grid = np.linspace(-1, 1, 4001)
    ok = [w for w in grid if R.mean(axis=0) @ [w, -w] >= target]
    cv = np.array([tail_mean(-(R @ [w, -w])) for w in ok])
    assert c.satisfied(res.weights)
    assert res.cvar <= cv.min() + 1e-9
    step_err = float(np.abs(R[:, 0] - R[:, 1]).max()) * (grid[1] - grid[0])
    assert res.cvar >= cv.min() - step_err - 1e-12


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.booleans(), st.floats(0.1, 1.0), st.floats(0.8, 0.99))
def test_mean_cvar_satisfies_the_constraints(seed, n, long_only, cap_share, alpha):
    R = np.random.default_rng(seed).normal(0.001, 0.02, (50, n))
    cap = max(cap_share, 1.0 / n)
    c = Constraints(long_only=long_only, cap=cap, gross=1.5 if not long_only else 1.0,
                    net=None if (seed % 3 == 0) else (0.0 if not long_only else 1.0))
    res = mean_cvar(R, alpha, constraints=c)
    assert c.satisfied(res.weights, 1e-9)
    assert res.cvar == pytest.approx(empirical_cvar(-(R @ res.weights), alpha), abs=1e-8)


def test_mean_cvar_refuses_bad_input():
    R = two_assets()
    with pytest.raises(ValueError, match="no weights reach target_return 1.0.*lower target_return"):
        mean_cvar(R, ALPHA, target_return=1.0)
    with pytest.raises(ValueError, match="give target_return or risk_aversion, not both"):
        mean_cvar(R, ALPHA, target_return=0.0, risk_aversion=1.0)
    with pytest.raises(ValueError, match=r"alpha must be a confidence level in \(0, 1\)"):
        mean_cvar(R, 95)
    with pytest.raises(ValueError, match="scenarios must be 2-D"):
        mean_cvar(R[:, 0])


# --- scenario generators ----------------------------------------------------------------------------


def history(T=500, n=3, seed=11):
    rng = np.random.default_rng(seed)
    a = np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0.2, 0.3, 0.9]])[:n, :n]
    return np.expm1(rng.normal(0.0004, 0.01, (T, n)) @ a.T)


@pytest.mark.parametrize("make", [
    lambda r, seed: block_bootstrap(r, 1000, horizon=10, block_len=5, seed=seed),
    lambda r, seed: GBM.fit(r).sample(1000, horizon=10, seed=seed),
    lambda r, seed: GarchJump.fit(r).sample(1000, horizon=10, seed=seed),
], ids=["bootstrap", "gbm", "garch_jump"])
def test_generators_are_seeded_and_shaped(make):
    r = history()
    a, b, c = make(r, 7), make(r, 7), make(r, 8)
    assert a.shape == (1000, 3) and np.all(np.isfinite(a)) and np.all(a > -1)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_block_bootstrap_draws_whole_historical_rows():
    r = history(T=50)
    one = block_bootstrap(r, 300, horizon=1, block_len=1, seed=0)
    # Each scenario is one historical row, all assets together (to rounding: log1p then expm1).
    nearest = np.abs(one[:, None, :] - r[None, :, :]).max(axis=2).min(axis=1)
    assert nearest.max() < 1e-15
    # Over a horizon, a block of consecutive periods is compounded: horizon = block_len = T covers
    # the whole history circularly from some start, so every scenario compounds to the same total.
    full = block_bootstrap(r, 20, horizon=50, block_len=50, seed=1)
    assert np.allclose(full, np.expm1(np.log1p(r).sum(axis=0)), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="block_len 60 exceeds the 50 periods"):
        block_bootstrap(r, 10, block_len=60)


def test_calibrated_gbm_reproduces_mean_and_covariance():
    r = history(T=400)
    x = np.log1p(r)
    gbm = GBM.fit(r)
    N = 200_000
    y = np.log1p(gbm.sample(N, seed=3))
    m, C = x.mean(axis=0), np.cov(x, rowvar=False)
    se_mean = np.sqrt(np.diag(C) / N)
    assert np.all(np.abs(y.mean(axis=0) - m) < 5 * se_mean)
    # Var of a sample covariance entry: (C_ii C_jj + C_ij^2) / N for normal data.
    se_cov = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / N)
    assert np.all(np.abs(np.cov(y, rowvar=False) - C) < 5 * se_cov)
    # Over h periods: mean and covariance scale by h.
    y10 = np.log1p(gbm.sample(N, horizon=10, seed=4))
    assert np.all(np.abs(y10.mean(axis=0) - 10 * m) < 5 * np.sqrt(10) * se_mean)


def simulate_garch_jump(T, seed, omega=2e-6, a=0.08, b=0.9, lam=0.05, jm=-0.02, js=0.03):
    rng = np.random.default_rng(seed)
    h, x = omega / (1 - a - b), np.empty(T)
    for t in range(T):
        k = rng.poisson(lam)
        e = np.sqrt(h) * rng.standard_normal() + k * jm + np.sqrt(k) * js * rng.standard_normal() - lam * jm
        x[t] = 0.0003 + e
        h = omega + a * e * e + b * h
    return np.expm1(x)[:, None]


def test_garch_jump_fit_recovers_a_simulated_model():
    r = simulate_garch_jump(3000, seed=5)
    fit = GarchJump.fit(r)
    persistence = float(fit.a[0] + fit.b[0])
    assert 0.8 < persistence < 0.999
    assert 0.01 < fit.jump_rate[0] < 0.15  # true 0.05
    assert fit.jump_mean[0] < 0  # true -0.02: crashes
    # The fitted model's unconditional variance of a period matches the data's: with
    # J2 = rate (mean^2 + sd^2) the jumps' variance, E e^2 = E h + J2 and E h = omega + a E e^2 +
    # b E h, so E e^2 = (omega + a J2) / (1 - a - b) + J2.
    j2 = fit.jump_rate[0] * (fit.jump_mean[0] ** 2 + fit.jump_sd[0] ** 2)
    var_model = (fit.omega[0] + fit.a[0] * j2) / (1 - persistence) + j2
    assert var_model == pytest.approx(np.log1p(r).var(), rel=0.3)
