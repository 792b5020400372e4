"""The CEM allocation policy (strategies/allocation/cem_policy.py): training improves its objective on a
planted signal, is deterministic for a seed, never sees validation or test data, and runs in the
engine deterministically within its constraints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine.backtest import BacktestConfig, run_backtest
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies.allocation import cem_policy as cp
from strategies.allocation.constraints import Constraints

DAY_NS = cp.DAY_NS
PER_DAY = 24


def planted(n_days: int = 30, n: int = 5, seed: int = 0, strength: float = 0.004):
    """Marks with a factor the embedding can see: each period's returns load on a factor f_t
    (visible in the cross-section of the trailing return), and the next period's returns carry
    gamma_i * f_t, so tilting toward sign(gamma_i f_t) pays."""
    rng = np.random.default_rng(seed)
    T = n_days * PER_DAY
    f = rng.standard_normal(T)
    beta = np.linspace(1.0, -1.0, n)
    gamma = np.linspace(-1.0, 1.0, n)
    r = 0.003 * np.outer(f, beta) + 0.002 * rng.standard_normal((T, n))
    r[1:] += strength * np.outer(f[:-1], gamma)
    marks = 100.0 * np.exp(np.vstack([np.zeros(n), np.cumsum(r, axis=0)]))
    ts = np.r_[0, np.arange(1, T + 1)] * (DAY_NS // PER_DAY) + 19_000 * DAY_NS
    return marks, ts


CFG = cp.CEMConfig(k=2, lookback=1, population=32, elite_frac=0.25, iterations=8, cost_bps=1.0, seed=3)
FULL = Constraints(long_only=True, cap=1.0, gross=1.0, net=1.0)


def test_cem_improves_the_training_objective_over_its_initial_mean():
    marks, ts = planted()
    t = cp.train(marks, ts, CFG, FULL)
    h = t.history
    assert h[0]["iteration"] == 0  # the initial mean, theta = 0: equal weight
    assert max(x["train"] for x in h[1:]) > h[0]["train"] + 0.5
    assert h[-1]["train"] > h[0]["train"] + 0.5
    # The signal is real, so it carries to the periods training never saw.
    assert t.sharpe["validation"] > h[0]["validation"] and t.sharpe["test"] > 0.5
    # evaluate scores as training did; theta = 0 is the initial mean (equal weight).
    assert cp.evaluate(marks, ts, t) == t.sharpe
    eq = cp.evaluate(marks, ts, t, np.zeros_like(t.theta))
    assert (eq["train"], eq["validation"]) == (h[0]["train"], h[0]["validation"]) and t.sharpe["test"] > eq["test"]


def test_training_is_deterministic_for_a_seed_and_depends_on_it():
    marks, ts = planted()
    a, b = cp.train(marks, ts, CFG, FULL), cp.train(marks, ts, CFG, FULL)
    assert a.theta.tobytes() == b.theta.tobytes() and a.sharpe == b.sharpe and a.history == b.history
    c = cp.train(marks, ts, dataclasses.replace(CFG, seed=4), FULL)
    assert c.theta.tobytes() != a.theta.tobytes()


def test_validation_and_test_data_never_reach_training():
    marks, ts = planted()
    base = cp.train(marks, ts, CFG, FULL)
    day = ts // DAY_NS
    rng = np.random.default_rng(9)
    # Scramble every mark on the test days: the trained parameters and the train/validation scores stay.
    changed = marks.copy()
    on_test = np.isin(day, base.split.test)
    changed[on_test] *= np.exp(0.05 * rng.standard_normal((on_test.sum(), marks.shape[1])))
    t = cp.train(changed, ts, CFG, FULL)
    assert t.theta.tobytes() == base.theta.tobytes() and t.history == base.history
    assert t.sharpe["train"] == base.sharpe["train"] and t.sharpe["validation"] == base.sharpe["validation"]
    assert t.sharpe["test"] != base.sharpe["test"]
    # Scramble the validation days: the search (its train scores, step by step) is the same; only
    # which iteration is kept may change.
    changed = marks.copy()
    on_val = np.isin(day, base.split.validation)
    changed[on_val] *= np.exp(0.05 * rng.standard_normal((on_val.sum(), marks.shape[1])))
    v = cp.train(changed, ts, CFG, FULL)
    assert [x["train"] for x in v.history] == [x["train"] for x in base.history]
    assert [x["validation"] for x in v.history] != [x["validation"] for x in base.history]
    assert np.array_equal(v.embedding.components, base.embedding.components)


def test_the_split_is_by_time_and_refuses_too_few_days():
    s = cp.split_days(np.repeat(np.arange(10), 3))
    assert list(s.train) == list(range(6)) and list(s.validation) == [6, 7] and list(s.test) == [8, 9]
    with pytest.raises(ValueError, match="each needs >= 2"):
        cp.split_days(np.arange(5))
    with pytest.raises(ValueError, match="elite_frac"):
        cp.CEMConfig(population=4, elite_frac=0.1).check()


def test_the_simulator_charges_turnover_against_drifted_weights():
    marks = np.array([[100.0, 100.0], [110.0, 100.0], [110.0, 100.0]])
    w = np.array([[0.5, 0.5], [0.5, 0.5]])
    p = cp.simulate(w, marks, cost_bps=10.0)
    assert p[0] == pytest.approx(0.05 - 1e-3 * 1.0)  # from cash: the whole book traded
    drifted = np.array([0.55, 0.5]) / 1.05
    assert p[1] == pytest.approx(-1e-3 * np.abs(w[1] - drifted).sum())


def test_capped_weights_are_projected_onto_the_constraints():
    c = Constraints(long_only=True, cap=0.3, gross=1.0, net=1.0)
    theta = np.r_[np.zeros(4 * 1), [5.0, 0.0, 0.0, 0.0]]  # k=1: W = 0, b favours instrument 0
    w = cp.policy_weights(theta, np.zeros((3, 1)), 4, c)
    assert np.allclose(w[:, 0], 0.3) and np.allclose(w.sum(axis=1), 1.0) and np.all(w <= 0.3 + 1e-12)


# --- in the engine ----------------------------------------------------------------------------------

CAP = 0.35


def market() -> SyntheticMarket:
    return SyntheticMarket(SyntheticConfig(n_instruments=4, n_sessions=6, quote_rate_hz=1.0, seed=5,
                                           calendar="09:30-11:00 America/New_York Mon-Fri"))


@pytest.fixture(scope="module")
def trained_policy(tmp_path_factory):
    rec = cp.MarkRecorder(300)
    run_backtest(market(), BacktestConfig(interval="1s"), strategy=rec)
    ts, marks = np.array(rec.ts_ns), np.vstack(rec.marks)
    c = Constraints(long_only=True, cap=CAP, gross=1.0, net=1.0)
    t = cp.train(marks, ts, dataclasses.replace(CFG, lookback=3, iterations=4, population=16), c,
                 validation_frac=1 / 3, test_frac=1 / 3)
    path = cp.save(t, tmp_path_factory.mktemp("cem") / "policy.json", symbols=market().instruments.symbols,
                   rebalance_s=300)
    return path, t, ts, marks


def test_the_policy_runs_in_the_engine_deterministically_within_its_constraints(trained_policy):
    policy_file, t, ts, marks = trained_policy
    cfg = BacktestConfig(interval="1s", fee_bps=1.0)
    a, b = cp.CEMPolicy(str(policy_file)), cp.CEMPolicy(str(policy_file))
    ra, rb = run_backtest(market(), cfg, strategy=a), run_backtest(market(), cfg, strategy=b)
    assert ra.fill_hash() == rb.fill_hash() and len(ra.fills) > 20
    assert len(a.weights) > 50
    for (ta, wa), (tb, wb) in zip(a.weights, b.weights, strict=True):
        assert ta == tb and wa.tobytes() == wb.tobytes()
        assert np.all(wa >= 0) and np.all(wa <= CAP + 1e-9) and wa.sum() == pytest.approx(1.0)
    # The engine runs the trained policy, read back from JSON: at each decision its weights are the
    # ones training computed from the same marks, bit for bit.
    z = t.embedding(cp.trailing_states(marks, t.config.lookback)[t.config.lookback:])
    offline = dict(zip(ts[t.config.lookback:].tolist(), cp.policy_weights(t.theta, z, marks.shape[1], t.constraints)))
    assert all(offline[ts_].tobytes() == w.tobytes() for ts_, w in a.weights)


def test_the_policy_file_is_checked(trained_policy, tmp_path):
    policy_file = trained_policy[0]
    doc = json.loads(policy_file.read_text())
    doc["format"] = "other"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not a nextick-cem-policy v1 file"):
        cp.CEMPolicy(str(bad))
    with pytest.raises(ValueError, match="cannot read a CEM policy"):
        cp.CEMPolicy(str(tmp_path / "missing.json"))
    other = SyntheticMarket(SyntheticConfig(n_instruments=3, n_sessions=1, quote_rate_hz=1.0, seed=5))
    with pytest.raises(ValueError, match="trained on SYN000, SYN001, SYN002, SYN003"):
        run_backtest(other, BacktestConfig(interval="1s"), strategy=cp.CEMPolicy(str(policy_file)))
