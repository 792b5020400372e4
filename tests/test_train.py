"""`nextick train`: replayed sessions -> a model file the engine runs, a report, reproducible runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.cli import main  # noqa: E402
from engine.model.config import SSMConfig  # noqa: E402
from engine.model.weights import load_model  # noqa: E402
from engine.training.dataset import collect_segments, split_by_time  # noqa: E402
from engine.training.train import TrainConfig, train  # noqa: E402
from feeds.synthetic import SyntheticConfig, SyntheticMarket  # noqa: E402

CAL = "09:30-09:50 America/New_York Mon-Fri"
TINY = ["--d-model", "16", "--n-layers", "1", "--d-state", "4", "--headdim", "8"]
DATA = ["--calendar", CAL, "--n-sessions", "5", "--n-instruments", "2", "--seed", "3"]


def train_cli(out, *extra: str) -> int:
    return main(["train", *DATA, *TINY, "--epochs", "2", "--batch-size", "4", "--no-progress", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    assert train_cli(out) == 0
    return out


def test_train_writes_a_loadable_model_and_a_report(trained):
    m = load_model(trained / "model.safetensors")
    assert m.config.d_model == 16 and m.signal.horizon_ticks == 10 and m.signal.interval == "1s"
    report = json.loads((trained / "training_report.json").read_text())
    assert 1 <= len(report["history"]) <= 2
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in report["history"])
    for split in ("train", "val", "test"):
        assert report["scores"][split]["n"] > 0
        assert -1 <= report["scores"][split]["ic"] <= 1
    assert report["split"]["val_start_ns"] < report["split"]["test_start_ns"]
    assert m.training["split"] == report["split"]
    md = (trained / "training_report.md").read_text()
    assert "IC" in md and "| val |" in md and "| test |" in md


def test_training_is_seeded(trained, tmp_path):
    assert train_cli(tmp_path) == 0
    a, b = load_model(trained / "model.safetensors"), load_model(tmp_path / "model.safetensors")
    for k in a.tensors:
        assert np.array_equal(a.tensors[k], b.tensors[k]), k
    assert a.normalizer == b.normalizer


def test_trained_model_backtests_through_the_cli(trained, capsys):
    args = ["backtest", *DATA, "--strategy", "ssm", "--model", str(trained / "model.safetensors"), "--compare", "momentum",
            "--oracle", "--no-progress", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in rows] == ["ssm", "momentum", "oracle"]


def test_normalizer_comes_from_the_training_period_only():
    segs = collect_segments(SyntheticMarket(SyntheticConfig(n_instruments=1, n_sessions=5, calendar=CAL, seed=1)))
    split = split_by_time(segs)
    cfg = TrainConfig(epochs=1, patience=1, lr=0.0)
    result = train(split, SSMConfig(d_model=16, n_layers=1, d_state=4, headdim=8), cfg)
    f = np.concatenate([s.features for s in split.train])
    np.testing.assert_allclose(result.normalizer.mean, f.mean(axis=0))
    everything = np.concatenate([s.features for s in segs])
    assert not np.allclose(result.normalizer.mean, everything.mean(axis=0))


def test_early_stopping_stops_when_validation_stops_improving():
    segs = collect_segments(SyntheticMarket(SyntheticConfig(n_instruments=1, n_sessions=5, calendar=CAL, seed=1)))
    cfg = TrainConfig(epochs=10, patience=2, lr=0.0)  # nothing changes, so nothing improves after epoch 1
    result = train(split_by_time(segs), SSMConfig(d_model=16, n_layers=1, d_state=4, headdim=8), cfg)
    assert result.best_epoch == 1 and len(result.history) == 3


def test_train_refuses_data_too_short_to_split(tmp_path, capsys):
    code = main(["train", "--calendar", CAL, "--n-sessions", "2", *TINY, "--no-progress", "--out", str(tmp_path)])
    assert code == 2
    assert "at least 3" in capsys.readouterr().err


def test_ssm_trained_with_dropout_runs_mc_dropout_in_the_engine(tmp_path, capsys):
    """--dropout reaches the SSM (its config records the rate) and the model it writes backtests with
    --mc-samples: the prediction's spread across the dropout variants is reported to strategies."""
    out = tmp_path / "drop"
    assert main(["train", *DATA, *TINY, "--epochs", "2", "--batch-size", "4", "--dropout", "0.2", "--no-progress",
                 "--out", str(out)]) == 0
    model = load_model(out / "model.safetensors")
    assert model.config.dropout == 0.2
    args = ["backtest", *DATA, "--strategy", "ssm", "--model", str(out / "model.safetensors"), "--mc-samples", "4",
            "--param", "uncertainty_k=1", "--no-progress", "--json"]
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)[0]["strategy"] == "ssm"
