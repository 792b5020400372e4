"""engine.overfit against hand computations: PBO counted split by split on small matrices, the deflated
Sharpe ratio evaluated step by step from its formula with the standard library's normal distribution."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.overfit import (
    default_blocks,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probability_of_overfitting,
)

S = 0.02  # the day-to-day swing every configuration shares: +S, -S, +S, -S, ...


def matrix(bonus: dict[int, dict[int, float]]) -> np.ndarray:
    """4 configurations x 8 days (4 blocks of 2); ``bonus[config][block]`` is added on both days of the block."""
    base = np.tile([S, -S], 4)
    m = np.tile(base, (4, 1))
    for config, blocks in bonus.items():
        for block, b in blocks.items():
            m[config, 2 * block : 2 * block + 2] += b
    return m


def test_pbo_one_when_the_in_sample_best_always_had_its_luck_in_sample():
    # Config i earns a bonus in block i only, larger for larger i. Whatever two blocks are in sample,
    # the best there is the one of them with the larger bonus; out of sample it earns nothing (Sharpe
    # 0, tied with the other in-sample config at ranks 1 and 2: rank 1.5), while the two configs
    # whose blocks are out of sample earn their bonus. w = 1.5 / 5 = 0.3 on every one of the 6 splits.
    m = matrix({i: {i: 0.01 * (i + 1)} for i in range(4)})
    o = probability_of_overfitting(m, n_blocks=4)
    assert o.n_splits == 6
    assert o.logits == pytest.approx([math.log(0.3 / 0.7)] * 6, abs=1e-12)
    assert o.probability == 1.0


def test_pbo_zero_when_one_config_is_best_everywhere():
    # Config 3 earns in every block, the others never: best in sample, best (rank 4 of 4) out of sample.
    m = matrix({3: {b: 0.01 for b in range(4)}})
    o = probability_of_overfitting(m, n_blocks=4)
    assert o.logits == pytest.approx([math.log(0.8 / 0.2)] * 6, abs=1e-12)
    assert o.probability == 0.0


def test_pbo_half_counted_split_by_split():
    # Config 0: a small edge every day (+0.01). Config 3: one lucky block (+0.05 in block 0). Configs
    # 1 and 2: nothing. Per-block Sharpe ratios over 4 in-sample days, S = 0.02:
    #   config 0: mean 0.01, sd 0.02 * sqrt(4/3)                        -> 0.433
    #   config 3 with block 0 in sample: mean 0.025, var (4 S^2 + 4 * 0.025^2) / 3 -> 0.676; else 0
    # Splits with block 0 in sample, (0,1) (0,2) (0,3): config 3 is chosen; out of sample it ties
    # configs 1 and 2 at 0 (ranks 1, 2, 3 -> 2): w = 2/5, lambda = ln(2/3) <= 0: overfit.
    # Splits (1,2) (1,3) (2,3): config 0 is chosen; out of sample config 3's lucky block beats it:
    # rank 3, w = 3/5, lambda = ln(3/2) > 0. PBO = 3/6.
    m = matrix({0: {b: 0.01 for b in range(4)}, 3: {0: 0.05}})
    assert list(itertools.combinations(range(4), 2)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    o = probability_of_overfitting(m, n_blocks=4)
    assert o.logits == pytest.approx([math.log(2 / 3)] * 3 + [math.log(3 / 2)] * 3, abs=1e-12)
    assert o.probability == 0.5


def test_pbo_refuses_what_it_cannot_split():
    m = matrix({})
    with pytest.raises(ValueError, match="even"):
        probability_of_overfitting(m, n_blocks=3)
    with pytest.raises(ValueError, match="fewer blocks"):
        probability_of_overfitting(m[:, :3], n_blocks=2)
    with pytest.raises(ValueError, match="at least 2"):
        probability_of_overfitting(m[:1], n_blocks=4)
    with pytest.raises(ValueError, match="finite"):
        probability_of_overfitting(np.where(m > 0, np.nan, m), n_blocks=4)


def test_default_blocks():
    assert [default_blocks(t) for t in (0, 3, 4, 5, 9, 16, 40)] == [0, 0, 4, 4, 8, 16, 16]
    assert default_blocks(40, most=6) == 6


def test_deflated_sharpe_ratio_step_by_step():
    returns = [0.02, -0.01, 0.03, 0.005, -0.015, 0.04, 0.01, -0.005]
    others = [0.1, 0.3, 0.2, -0.05]
    t = len(returns)
    mean = sum(returns) / t
    sr = mean / statistics.stdev(returns)
    m2, m3, m4 = (sum((r - mean) ** k for r in returns) / t for k in (2, 3, 4))
    skew, kurt = m3 / m2**1.5, m4 / m2**2
    trials = [*others, sr]
    n = len(trials)
    z = statistics.NormalDist().inv_cdf
    gamma = 0.5772156649015329
    sr0 = statistics.stdev(trials) * ((1 - gamma) * z(1 - 1 / n) + gamma * z(1 - 1 / (n * math.e)))
    dsr = statistics.NormalDist().cdf((sr - sr0) * math.sqrt(t - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))

    d = deflated_sharpe_ratio(returns, trials)
    assert d.sharpe == pytest.approx(sr, rel=1e-12)
    assert d.skewness == pytest.approx(skew, rel=1e-12)
    assert d.kurtosis == pytest.approx(kurt, rel=1e-12)
    assert d.trial_sharpe_variance == pytest.approx(statistics.variance(trials), rel=1e-12)
    assert d.expected_max_sharpe == pytest.approx(sr0, rel=1e-12)
    assert d.probability == pytest.approx(dsr, rel=1e-12)
    assert (d.n_trials, d.n_returns) == (n, t)


def test_one_trial_is_no_search():
    sr0, _ = expected_max_sharpe([0.4])
    assert sr0 == 0.0
    flat = deflated_sharpe_ratio([0.01, 0.01, 0.01], [0.2, 0.3])
    assert math.isnan(flat.sharpe) and math.isnan(flat.probability)


@settings(max_examples=50, deadline=None)
@given(
    returns=st.lists(st.floats(-0.05, 0.05), min_size=5, max_size=40).filter(lambda r: np.std(r) > 1e-4),
    spread=st.floats(0.01, 1.0),
    n=st.integers(2, 200),
)
def test_more_trials_deflate_more(returns, spread, n):
    # The same spread of Sharpe ratios over more trials raises the bar SR0, so the DSR cannot rise.
    few, many = (x / np.std(x, ddof=1) * spread for x in (np.linspace(-1, 1, n), np.linspace(-1, 1, 2 * n + 1)))
    assert expected_max_sharpe(many)[0] >= expected_max_sharpe(few)[0] - 1e-12 * spread
    a, b = deflated_sharpe_ratio(returns, few), deflated_sharpe_ratio(returns, many)
    if not (math.isnan(a.probability) or math.isnan(b.probability)):
        assert 0.0 <= b.probability <= a.probability + 1e-12 <= 1.0 + 1e-12
