"""engine.study: the risk split, the Pretrained Market Line, CAPM with Newey-West errors, signal
decay and the study file. Hand computations are worked in the tests with plain arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.timestamps import SECOND_NS
from engine.study._inputs import StudyInputError
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
