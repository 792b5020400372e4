"""A model's predictions recorded once (record_predictions) and replayed (ReplayBackend) into other
strategy configurations give exactly the fills of running the model each time; one MC-dropout
recording of N variants replays as any single variant or as the whole ensemble; a tape replayed
on other data fails on the first call that differs."""

from __future__ import annotations

import dataclasses
import pickle

import msgspec
import numpy as np
import pytest

from engine import _core
from engine.backtest import BacktestConfig, record_predictions, run_backtest
from feeds.synthetic import SyntheticConfig, SyntheticMarket

pytest.importorskip("torch")
from tests.test_mc_dropout import ENGINE_MARKET, dropout_model_path  # noqa: E402, F401

PARAMS = [
    {"threshold_bps": 0.0},
    {"threshold_bps": 0.5, "stop_loss_bps": 2.0, "take_profit_bps": 3.0},
    {"threshold_bps": 1.0, "hold_ticks": 20},
]


def market(seed: int = 7) -> SyntheticMarket:
    return SyntheticMarket(dataclasses.replace(ENGINE_MARKET, seed=seed))


def test_replay_gives_the_fills_of_running_the_model(dropout_model_path):  # noqa: F811
    base = BacktestConfig(strategy="ssm_threshold", model=str(dropout_model_path))
    tape = record_predictions(market(), base)
    assert tape.n_calls > 100 and tape.out.shape == (len(tape.slots), 1)
    for params in PARAMS:
        config = msgspec.structs.replace(base, strategy_params=params)
        replay = _core.ReplayBackend(tape)
        got = run_backtest(market(), config, model_backend=replay)
        assert replay.calls_replayed == tape.n_calls
        want = run_backtest(market(), config)
        assert len(want.fills) > 0 and got.fill_hash() == want.fill_hash(), params


def test_one_mc_recording_replays_every_variant_and_the_ensemble(dropout_model_path):  # noqa: F811
    n = 4
    base = BacktestConfig(strategy="ssm_threshold", strategy_params=PARAMS[1], model=str(dropout_model_path), mc_seed=2)
    tape = record_predictions(market(), msgspec.structs.replace(base, mc_samples=n))
    for v in (0, 3):
        got = run_backtest(market(), base, model_backend=_core.ReplayBackend(tape, variants=n, variant=v))
        want = run_backtest(market(), msgspec.structs.replace(base, mc_variant=v))
        assert got.fill_hash() == want.fill_hash(), v
    gated = msgspec.structs.replace(base, mc_samples=n, strategy_params={**PARAMS[1], "uncertainty_k": 1.0})
    got = run_backtest(market(), gated, model_backend=_core.ReplayBackend(tape, variants=n, variant=-1))
    assert got.fill_hash() == run_backtest(market(), gated).fill_hash()


def test_a_tape_replayed_on_other_data_fails_loudly(dropout_model_path):  # noqa: F811
    base = BacktestConfig(strategy="ssm_threshold", model=str(dropout_model_path))
    tape = record_predictions(market(), base)
    with pytest.raises(RuntimeError, match="differs from the recording|more often than the recorded run"):
        run_backtest(market(seed=8), base, model_backend=_core.ReplayBackend(tape))
    two = SyntheticMarket(SyntheticConfig(n_instruments=3, n_sessions=1, calendar=ENGINE_MARKET.calendar))
    with pytest.raises(RuntimeError, match="differs from the recording"):
        run_backtest(two, base, model_backend=_core.ReplayBackend(tape))
    with pytest.raises(ValueError, match="variant 4 not in"):
        _core.ReplayBackend(tape, variants=4, variant=4)


def test_tape_pickles_as_its_arrays(dropout_model_path):  # noqa: F811
    tape = record_predictions(market(), BacktestConfig(strategy="none", model=str(dropout_model_path)))
    back = pickle.loads(pickle.dumps(tape))
    for name in ("counts", "slots", "out"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tape, name))
    assert (back.n_features, back.n_outputs, back.n_calls) == (tape.n_features, tape.n_outputs, tape.n_calls)
    with pytest.raises(ValueError, match="counts add up to"):
        _core.PredictionTape(5, tape.counts[:-1], tape.slots, tape.out)


def test_tape_files_are_npz_arrays_without_pickle(dropout_model_path, tmp_path):  # noqa: F811
    from engine.backtest import load_tape, save_tape

    tape = record_predictions(market(), BacktestConfig(strategy="none", model=str(dropout_model_path)))
    path = save_tape(tmp_path / "t.npz", tape)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"n_features", "counts", "slots", "out"}
    back = load_tape(path)
    for name in ("counts", "slots", "out"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tape, name))
    (tmp_path / "bad.npz").write_bytes(b"not a tape")
    with pytest.raises(ValueError, match="bad.npz: not a prediction tape"):
        load_tape(tmp_path / "bad.npz")
