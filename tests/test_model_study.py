"""nextick study end to end on a tiny synthetic market: the model trained on the first days only,
every configuration x dropout variant replayed from one recording, the PML of study.json equal to a
fit of the returns results.parquet holds, identical files for 1 and 2 workers, and a given model
file studied without training."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torch")
pytest.importorskip("statsmodels")

from engine.cli import main  # noqa: E402
from engine.model_study import StudyError, StudyOptions, edge_bps, run_study, strategy_params  # noqa: E402
from engine.study.pml import fit_pml  # noqa: E402
from engine.study.risk import decompose  # noqa: E402

SOURCE = {"n_instruments": 2, "n_sessions": 8, "calendar": "09:30-10:30 America/New_York Mon-Fri", "alpha_strength": 3.0}
TINY = dict(kinds=["mamba2"], n_configs=5, n_variants=3, epochs=1, d_model=16, seed=1)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    out = tmp_path_factory.mktemp("study1")
    return out, run_study(StudyOptions(source=SOURCE, **TINY), out, workers=1)


def test_study_trains_on_the_first_days_and_studies_the_rest(one_worker):
    out, outcome = one_worker
    assert outcome.days_train and outcome.days_study
    assert max(outcome.days_train) < min(outcome.days_study)
    t = pq.read_table(out / "results.parquet").to_pandas()
    assert len(t) == 5 * 3 and sorted(t.variant.unique()) == [0, 1, 2]
    assert all(len(r) == len(outcome.days_study) for r in t.daily_returns)
    # Variants differ (the dropout masks reach the trades) but share the configuration.
    per = np.array(t.sort_values(["config_id", "variant"]).daily_returns.tolist()).reshape(5, 3, -1)
    assert np.abs(per[:, 1:] - per[:, :1]).max() > 0
    assert (t.groupby("config_id").threshold_bps.nunique() == 1).all()


def test_study_json_pml_is_the_fit_of_the_returns_written(one_worker):
    out, outcome = one_worker
    t = pq.read_table(out / "results.parquet").to_pandas().sort_values(["config_id", "variant"])
    returns = np.array(t.daily_returns.tolist()).reshape(5, 3, -1)
    risk = decompose(returns, missing="drop_days")
    fit = fit_pml(risk.mean_daily_return, risk.priced_std, 0.05)
    pml = json.loads((out / "study.json").read_text())["models"]["mamba2"]["pml"]
    if np.isfinite(fit.slope):
        assert pml["slope"] == pytest.approx(fit.slope, rel=1e-12)
    assert [p["priced_std"] for p in pml["points"]] == pytest.approx(list(risk.priced_std), abs=1e-15)
    assert outcome.summaries["mamba2"]["variants"] == 3


def test_two_workers_write_the_same_files(one_worker, tmp_path):
    out1, _ = one_worker
    run_study(StudyOptions(source=SOURCE, **TINY), tmp_path, workers=2)
    assert (tmp_path / "study.json").read_bytes() == (out1 / "study.json").read_bytes()
    a = pq.read_table(out1 / "results.parquet")
    b = pq.read_table(tmp_path / "results.parquet")
    assert a.equals(b)


def test_a_given_model_without_dropout_runs_one_variant(tmp_path, capsys):
    code = main(["study", "--n-instruments", "2", "--n-sessions", "6", "--calendar", SOURCE["calendar"],
                 "--kinds", "", "--model", "packaged=engine/model/default.safetensors", "--configs", "3",
                 "--workers", "1", "--no-report", "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "packaged" in text and "PML slope" in text
    t = pq.read_table(tmp_path / "results.parquet").to_pandas()
    assert len(t) == 3 and (t.variant == 0).all()
    points = json.loads((tmp_path / "study.json").read_text())["models"]["packaged"]["pml"]["points"]
    assert all(p["epistemic_std"] == 0 and p["priced_std"] == p["total_std"] for p in points)


def test_thresholds_are_quantiles_of_the_models_edge():
    tap = np.zeros(4, dtype=[("pred_mid", "f8"), ("ask_px", "f8"), ("bid_px", "f8"), ("mid", "f8")])
    tap["bid_px"], tap["ask_px"], tap["mid"] = 99.0, 101.0, 100.0
    tap["pred_mid"] = [100.0, 101.05, 98.9, 103.0]  # edges -1, +0.05, +0.1, +2 percent of the mid in bps
    edge = edge_bps(tap)
    np.testing.assert_allclose(edge, [-100.0, 5.0, 10.0, 200.0])
    p = strategy_params({"threshold_q": 1.0, "hold_ticks": 3}, edge)
    assert p == {"hold_ticks": 3, "threshold_bps": 200.0}
    assert strategy_params({"threshold_q": 0.0}, edge)["threshold_bps"] == 0.0  # never negative


def test_bad_options_are_refused_before_anything_runs():
    with pytest.raises(StudyError, match="at least 2 configurations"):
        StudyOptions(n_configs=1)
    with pytest.raises(StudyError, match="train-frac"):
        StudyOptions(train_frac=1.0)
    with pytest.raises(StudyError, match="nothing to study"):
        StudyOptions(kinds=[])
