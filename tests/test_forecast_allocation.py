"""forecast_mv (strategies/allocation/rebalance.py): mean-variance on a model's forecasts, fed through
the book's pred_mid (csrc/backtester.hpp BookRow). The model here is a Python backend behind
engine.model.backend's seam whose predictions the test sets: a planted expected return per
instrument."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backtest import BacktestConfig, run_backtest
from engine.model.weights import load_model
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies.allocation.estimators import forecast_returns
from strategies.allocation.rebalance import Allocation

# Planted predicted returns over the model's horizon, bps, per instrument (slot = instrument).
PLANTED_BPS = np.array([-4.0, 6.0, 1.0, 3.0])
CAP = 0.45


class PlantedForecast:
    """A model backend whose prediction for slot s is PLANTED_BPS[s] whatever the ticks: its raw
    output is the normalized target the engine maps back to bps (out * target_std + target_mean)."""

    backend_name = "planted"
    n_features = 5
    n_outputs = 1
    state_size = 1

    def __init__(self, ret_bps: np.ndarray, target_mean: float, target_std: float, n_slots: int) -> None:
        self.out = ((ret_bps - target_mean) / target_std).astype(np.float32)
        self.n_slots = n_slots

    def step(self, slots, x, reset, out):
        out[:, 0] = np.where(slots >= 0, self.out[np.clip(slots, 0, len(self.out) - 1)], np.nan)
        return out

    def reset_slot(self, slot):
        pass

    def reset_all(self):
        pass

    def grow(self, n):
        self.n_slots = max(self.n_slots, n)

    def resize(self, n):
        self.n_slots = n

    def get_state(self, slot):
        return np.zeros(1, np.float32)

    def set_state(self, slot, state):
        pass


def planted() -> PlantedForecast:
    norm = load_model().normalizer  # the packaged model's: the engine maps outputs back with it
    return PlantedForecast(PLANTED_BPS, norm.target_mean, norm.target_std, len(PLANTED_BPS))


def market() -> SyntheticMarket:
    return SyntheticMarket(SyntheticConfig(n_instruments=4, n_sessions=1, quote_rate_hz=2.0, seed=3))


def run(strategy: Allocation, backend=None):
    cfg = BacktestConfig(interval="1s", fee_bps=1.0)
    return run_backtest(market(), cfg, strategy=strategy, model_backend=backend if backend is not None else planted())


def test_forecast_returns_scale_the_log_forecast_to_the_period():
    mu = forecast_returns([101.0, 99.0, np.nan, 5.0], [100.0, 100.0, 100.0, 0.0], forecast_horizon_s=60.0, period_s=600.0)
    assert mu[0] == pytest.approx(np.log(1.01) * 10) and mu[1] == pytest.approx(np.log(0.99) * 10)
    assert np.isnan(mu[2]) and np.isnan(mu[3])  # no prediction, no price: no forecast
    with pytest.raises(ValueError, match="forecast_horizon_s must be > 0 seconds"):
        forecast_returns([1.0], [1.0], forecast_horizon_s=0.0, period_s=600.0)
    with pytest.raises(ValueError, match="give rebalance_s > 0"):
        Allocation(allocator="forecast_mv", rebalance_s=0)


def test_the_book_carries_each_instruments_last_prediction():
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Spy(Allocation):
        def on_rebalance(self, book):
            seen.append((book.pred_mid.copy(), (book.bid_px + book.ask_px) / 2))
            return None

    run(Spy(allocator="equal_weight", rebalance_s=300))
    late = [(p, m) for p, m in seen if np.isfinite(p).all()]
    assert len(late) > 20
    for pred, last_mid in late:
        # pred_mid = mid of the instrument's last tick x exp(planted bps): the row the model stepped on.
        np.testing.assert_allclose(np.log(pred / last_mid) * 1e4, PLANTED_BPS, rtol=0, atol=1e-4)
    # Without a model the book's predictions are NaN.
    seen.clear()
    run_backtest(market(), BacktestConfig(interval="1s"), strategy=Spy(allocator="equal_weight", rebalance_s=300))
    assert seen and all(np.isnan(p).all() for p, _ in seen)


def test_weights_tilt_toward_the_higher_forecasts_within_the_constraints():
    s = Allocation(allocator="forecast_mv", rebalance_s=300, lookback=8, cap=CAP, risk_aversion=1.0)
    r = run(s)
    full = [w for _, w in s.decisions if not np.isnan(w).any()]
    assert len(full) > 20 and len(r.fills) > 10
    order = np.argsort(-PLANTED_BPS)  # 1, 3, 2, 0
    for w in full:
        assert np.all(w <= CAP + 1e-9) and np.all(w >= -1e-12) and w.sum() == pytest.approx(1.0, abs=1e-6)
        assert w[1] == pytest.approx(CAP, abs=1e-6)  # the best forecast fills its cap
        assert all(w[a] >= w[b] - 1e-9 for a, b in zip(order[:-1], order[1:]))  # ranked as the forecasts
        assert w[0] < 0.05  # the negative forecast gets (almost) nothing
    # The mean forecast fed to the optimizer is the planted one, scaled to the 300 s period.
    _, mu, _ = s.forecasts[-1]
    np.testing.assert_allclose(mu, PLANTED_BPS * 1e-4 * 300 / 60, atol=1e-7)
    # Flip the forecasts: the tilt follows them, whatever the prices did.
    s2 = Allocation(allocator="forecast_mv", rebalance_s=300, lookback=8, cap=CAP)
    norm = load_model().normalizer
    run(s2, PlantedForecast(-PLANTED_BPS, norm.target_mean, norm.target_std, 4))
    w2 = [w for _, w in s2.decisions if not np.isnan(w).any()][-1]
    assert w2[0] == pytest.approx(CAP, abs=1e-6) and w2[1] < 0.05


def test_forecast_allocation_is_deterministic():
    a, b = (Allocation(allocator="forecast_mv", rebalance_s=300, lookback=8, cap=CAP) for _ in range(2))
    ra, rb = run(a), run(b)
    assert ra.fill_hash() == rb.fill_hash()
    assert all(np.array_equal(x[1], y[1], equal_nan=True) for x, y in zip(a.decisions, b.decisions, strict=True))


def test_a_zoo_transformer_on_onnxruntime_drives_the_tilt(tmp_path):
    """Any model kind feeds forecast_mv: a tiny Transformer from the zoo, run by onnxruntime. Whatever
    it predicts, mean-variance's weights earn at least min-variance's under its forecast (the
    min-variance book is feasible, and risks no less): (mu - mean mu) . (w - w_minvar) >= 0."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from engine.model.zoo_config import ZooConfig
    from engine.training.dataset import collect_segments, split_by_time
    from engine.training.train import TrainConfig, export, train
    from strategies.allocation import allocators as al

    cal = "09:30-10:30 America/New_York Mon-Fri"
    tiny = SyntheticConfig(n_instruments=3, n_sessions=3, calendar=cal, seed=3, alpha_strength=3.0, quote_rate_hz=2.0)
    tc = TrainConfig(epochs=1, batch_size=4, seed=0)
    result = train(split_by_time(collect_segments(SyntheticMarket(tiny))),
                   ZooConfig(kind="transformer", d_model=16, n_layers=1, window=8, n_heads=2), tc)
    path = tmp_path / "model.onnx"
    export(result, path, tc, {"source": "test"})

    def go():
        s = Allocation(allocator="forecast_mv", rebalance_s=300, lookback=4, cap=0.6)
        cfg = BacktestConfig(interval="1s", model=str(path), backend="onnxruntime")
        return s, run_backtest(SyntheticMarket(tiny), cfg, strategy=s)

    s, r = go()
    assert len(r.fills) > 5
    by_ts = dict(s.decisions)
    tilted = 0
    full = [x for x in s.forecasts if len(x[1]) == 3]
    assert len(full) > 10
    for ts, mu, cov in full:
        w = by_ts[ts][~np.isnan(by_ts[ts])]
        w_mv = al.min_variance(mu, cov, s._constraints_for(len(mu)))  # the net lowered as forecast_mv's was
        assert (mu - mu.mean()) @ (w - w_mv) >= -1e-9 * np.abs(mu).max()
        tilted += np.abs(w - w_mv).sum() > 1e-3
    assert tilted > len(full) // 2  # the forecasts move the book, not only the covariance
    s2, r2 = go()
    assert r2.fill_hash() == r.fill_hash()
