"""The SSM inside the engine: slots per instrument, zeroed by every reset, predictions handed to
strategies with each tick, and the built-in ssm_threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.backtest import BacktestConfig, Engine, run_backtest, stream_ticks  # noqa: E402
from engine.domain.quote import concat_rows  # noqa: E402
from engine.model.config import FEATURE_NAMES, SSMConfig  # noqa: E402
from engine.model.weights import Normalizer, SignalSpec, save_model  # noqa: E402
from engine.training.dataset import (
    _compact,  # noqa: E402
    split_segments,  # noqa: E402
)
from feeds.synthetic import SyntheticConfig, SyntheticMarket  # noqa: E402
from strategies.base import Strategy, TickBatch  # noqa: E402
from tests.test_ssm_parity import make_model, rel_err  # noqa: E402

CAL = "09:30-10:00 America/New_York Mon-Fri"
MARKET = SyntheticConfig(n_instruments=3, n_sessions=2, calendar=CAL, outages_per_session=1.0, outage_s=(70.0, 90.0))
NORM = Normalizer(names=FEATURE_NAMES, mean=(0.0, -8.0, 0.0, 6.9, 0.5), std=(2.0, 0.5, 0.5, 0.1, 0.3), target_mean=0.1,
                  target_std=4.0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    m = make_model(SSMConfig(d_model=32, headdim=16, d_state=8), seed=5)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, m.export_tensors(), m.cfg, NORM, SignalSpec(horizon_ticks=10, interval="1s"))
    return path, m


def tapped_run(model_file, config: BacktestConfig, strategy=None, market=MARKET):
    source = SyntheticMarket(market)
    engine = Engine(config, source.instruments, strategy)
    engine.core.set_tap(True)
    taps = []
    for _, ticks in stream_ticks(source, config.interval):
        engine.run(ticks)
        taps.append(engine.core.take_tap())
    engine.core.finish()
    return engine, np.concatenate(taps)


def test_engine_predictions_are_the_torch_step_from_zero_state_per_segment(model_path):
    path, m = model_path
    config = BacktestConfig(strategy="none", model=str(path), manual_resets=[(1_704_206_400 * 1_000_000_000, "SYN001")])
    _, tap = tapped_run(path, config)
    assert np.isfinite(tap["out"]).all()
    segments = split_segments(_compact(tap))
    assert len(segments) > 2 * MARKET.n_instruments  # session opens plus GAP resets from the outages
    outs = {(int(r["instrument"]), int(r["ts"])): r["out"] for r in tap}
    for seg in segments:
        x = torch.from_numpy(NORM.apply(seg.features))[None]
        with torch.no_grad():
            y, _ = m(x)  # parallel form from zero state: what a reset must give
        engine_out = np.array([outs[(seg.instrument, int(t))] for t in seg.ts_ns])
        assert rel_err(engine_out, y[0, :, 0].numpy()) <= 1e-5
    expected_pred = tap["mid"] * np.exp((tap["out"].astype(np.float64) * NORM.target_std + NORM.target_mean) * 1e-4)
    np.testing.assert_allclose(tap["pred_mid"], expected_pred, rtol=1e-14)  # exp: libm vs numpy differ by an ulp


class Recorder(Strategy):
    name = "recorder"

    def __init__(self) -> None:
        self.pred: dict[tuple[int, int], float] = {}
        self.batch_sizes: list[int] = []

    def on_batch(self, batch: TickBatch) -> np.ndarray:
        self.batch_sizes.append(len(batch))
        for i, p in zip(batch.instrument, batch.pred_mid):
            self.pred[(int(i), batch.ts_ns)] = float(p)
        return np.full(len(batch), np.nan)


def test_python_strategies_receive_the_prediction_with_each_tick_batched_or_not(model_path):
    path, _ = model_path
    rec = Recorder()
    _, tap_batched = tapped_run(path, BacktestConfig(model=str(path)), strategy=rec)
    _, tap_rows = tapped_run(path, BacktestConfig(strategy="none", model=str(path)))
    assert max(rec.batch_sizes) == MARKET.n_instruments  # instruments stepped together
    # batched steps and one-row steps give bit-identical predictions
    np.testing.assert_array_equal(tap_batched["pred_mid"], tap_rows["pred_mid"])
    assert all(rec.pred[(int(r["instrument"]), int(r["ts"]))] == r["pred_mid"] for r in tap_rows)


def test_without_a_model_predictions_are_nan():
    rec = Recorder()
    run_backtest(SyntheticMarket(MARKET), BacktestConfig(), strategy=rec)
    assert np.isnan(list(rec.pred.values())).all()


def reference_threshold(tap: np.ndarray, thr_bps: float, hold: int, notional: float):
    """The ssm_threshold rule restated row by row (warm-up 0, no stop-loss or take-profit: those are
    orders, tested below): the targets it sets, by (instrument, ts)."""
    state: dict[int, dict] = {}
    targets = {}
    for r in tap:
        i = int(r["instrument"])
        s = state.setdefault(i, {"dir": 0, "blocked": 0, "held": 0, "target": np.nan})
        bid, ask, mid, pred = r["bid_px"], r["ask_px"], r["mid"], r["pred_mid"]
        if r["reset"]:
            s.update(dir=0, blocked=0, target=np.nan)
        sig = 1 if pred > ask * (1 + thr_bps * 1e-4) else (-1 if pred < bid * (1 - thr_bps * 1e-4) else 0)
        if sig != s["blocked"]:
            s["blocked"] = 0
        exited = False
        if s["dir"] != 0:
            s["held"] += 1
            if hold > 0 and s["held"] >= hold and sig != s["dir"]:
                s.update(blocked=s["dir"], dir=0, target=0.0)
                exited = True
            elif sig == s["dir"]:
                s["held"] = 0
        if not exited and sig != 0 and sig != s["dir"] and sig != s["blocked"]:
            s.update(dir=sig, held=0, target=sig * np.floor(notional / mid))
        targets[(i, int(r["ts"]))] = s["target"]
    return targets


def test_ssm_threshold_follows_its_rule(model_path):
    path, _ = model_path
    params = {"threshold_bps": 0.5, "hold_ticks": 30}
    config = BacktestConfig(strategy="ssm_threshold", strategy_params=params, model=str(path), warmup_ticks=0, fee_bps=0.0)
    engine, tap = tapped_run(path, config)
    fills = engine.core.fills()
    assert len(fills) > 20, "the test model should trade"
    notional = config.initial_capital / MARKET.n_instruments
    targets = reference_threshold(tap, 0.5, 30, notional)
    # replay the targets into positions: every fill's decision is a tick where the target changed
    position = {i: 0.0 for i in range(MARKET.n_instruments)}
    expected_orders = []
    for r in tap:
        i, ts = int(r["instrument"]), int(r["ts"])
        t = targets[(i, ts)]
        if not np.isnan(t) and t != position[i]:
            expected_orders.append((i, ts, t - position[i]))
            position[i] = t
    got = {(int(f["instrument"]), int(f["decision_ts"])) for f in fills}
    want = {(i, ts) for i, ts, _ in expected_orders}
    assert got <= want and len(got) >= 0.9 * len(want)  # orders still working at a reset or the end never fill
    sizes = {(i, ts): d for i, ts, d in expected_orders}
    same = [f["sz"] == sizes[(int(f["instrument"]), int(f["decision_ts"]))] for f in fills]
    assert all(np.sign(f["sz"]) == np.sign(sizes[(int(f["instrument"]), int(f["decision_ts"]))]) for f in fills)
    assert np.mean(same) >= 0.9  # sizes differ only after an order a reset cancelled


def test_ssm_threshold_stop_loss_and_take_profit_are_orders_priced_from_the_entry_fill(model_path):
    path, _ = model_path
    sl_bps, tp_bps = 3.0, 4.0
    params = {"threshold_bps": 0.5, "stop_loss_bps": sl_bps, "take_profit_bps": tp_bps}
    config = BacktestConfig(strategy="ssm_threshold", strategy_params=params, model=str(path), warmup_ticks=0, fee_bps=0.0)
    engine, _ = tapped_run(path, config)
    fills = engine.core.fills()
    stops = takes = 0
    for i in range(MARKET.n_instruments):
        pos, entry = 0.0, np.nan
        for f in fills[fills["instrument"] == i]:
            before, pos = pos, pos + f["sz"]
            if f["order_type"] == 0:  # the strategy's own (target) order
                if pos != 0 and (before == 0 or np.sign(before) != np.sign(pos)):
                    entry = f["px"]
                continue
            side = -np.sign(f["sz"])  # the position it closes: +1 long
            assert side == np.sign(before) and pos == 0, "a bracket order closes the whole position"
            if f["order_type"] == 2:  # the stop: triggered at or beyond its price, filled at the touch, taking
                stops += 1
                assert f["liquidity"] == 0
                assert side * (f["px"] - entry * (1 - side * sl_bps * 1e-4)) <= 0
            else:  # the take-profit limit: resting, filled at its price
                takes += 1
                assert f["order_type"] == 1 and f["liquidity"] == 1
                assert f["px"] == entry * (1 + side * tp_bps * 1e-4)
    assert stops > 0 and takes > 0, (stops, takes)
    assert engine.core.counters()["explicit_orders"] >= stops + takes


def test_ssm_strategy_needs_a_model_file(tmp_path):
    with pytest.raises(ValueError, match="no such model file"):
        run_backtest(SyntheticMarket(MARKET), BacktestConfig(strategy="ssm", model=str(tmp_path / "missing.safetensors")))


def test_model_interval_must_match_the_run(model_path):
    path, _ = model_path
    with pytest.raises(ValueError, match="trained on 1s ticks"):
        run_backtest(SyntheticMarket(MARKET), BacktestConfig(strategy="ssm", model=str(path), interval="100ms"))


def test_ssm_fills_do_not_depend_on_batching_or_chunking(model_path):
    """One batched step per timestamp, or one row per call: the same fills bit for bit."""
    path, _ = model_path
    config = BacktestConfig(strategy="ssm_threshold", strategy_params={"threshold_bps": 0.5}, model=str(path), warmup_ticks=5)
    source = SyntheticMarket(MARKET)
    ticks = concat_rows([t for _, t in stream_ticks(source, config.interval)])
    whole = Engine(config, source.instruments, None)
    whole.run(ticks)
    rows = Engine(config, source.instruments, None)
    for k in range(len(ticks)):
        rows.run(ticks[k : k + 1])
    for e in (whole, rows):
        e.core.finish()
    assert len(whole.core.fills()) > 20
    assert whole.core.fills().tobytes() == rows.core.fills().tobytes()
