"""The model zoo (engine/training/zoo.py): LSTM, GRU, MLP and Transformer train on the SSM's features,
splits and target; each exports to a self-contained ONNX step graph that the onnxruntime backend runs
with no per-kind code; the step through the backend equals the torch sequence form with state zeroed
at resets; the engine's predictions on a backtest equal the torch model on the training tap's
segments; training is seeded; walk-forward folds never look ahead."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from engine.backtest import BacktestConfig, run_backtest  # noqa: E402
from engine.cli import main  # noqa: E402
from engine.model.backend import make_backend  # noqa: E402
from engine.model.config import SSMConfig  # noqa: E402
from engine.model.onnx_format import OnnxFileError, sibling_path, state_specs  # noqa: E402
from engine.model.weights import DEFAULT_MODEL_PATH, load_model  # noqa: E402
from engine.model.zoo_config import ZOO_KINDS, ZooConfig  # noqa: E402
from engine.training.dataset import Segment, collect_segments, split_by_time  # noqa: E402
from engine.training.train import TrainConfig, export, ssm_config, train  # noqa: E402
from engine.training.walk_forward import walk_forward  # noqa: E402
from feeds.synthetic import SyntheticConfig, SyntheticMarket  # noqa: E402
from strategies.base import Strategy, TickBatch  # noqa: E402

RTOL = 1e-5  # DESIGN.md's parity tolerance, relative to the sequence's scale
CAL = "09:30-09:50 America/New_York Mon-Fri"
MARKET = SyntheticConfig(n_instruments=2, n_sessions=5, calendar=CAL, seed=3, alpha_strength=3.0)
CONFIGS = {
    "lstm": ZooConfig(kind="lstm", d_model=16, n_layers=2),
    "gru": ZooConfig(kind="gru", d_model=16, n_layers=2),
    "mlp": ZooConfig(kind="mlp", d_model=16, n_layers=2, window=8),
    "transformer": ZooConfig(kind="transformer", d_model=16, n_layers=2, window=8, n_heads=2),
}
# The transformer trains with dropout: the export (eval mode) must still be the sequence form's function.
TRAIN = {kind: TrainConfig(epochs=2, batch_size=4, seed=0, dropout=0.1 if kind == "transformer" else 0.0)
         for kind in CONFIGS}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def weights(model: torch.nn.Module) -> dict[str, bytes]:
    return {k: v.detach().numpy().tobytes() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread (and far faster than on two of a busy machine's cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def segments() -> list[Segment]:
    return collect_segments(SyntheticMarket(MARKET))


@pytest.fixture(scope="module", params=ZOO_KINDS)
def trained(request, segments, tmp_path_factory):
    """(kind, TrainResult, path of its model.onnx), trained on the tiny market's time split."""
    kind = request.param
    result = train(split_by_time(segments), CONFIGS[kind], TRAIN[kind])
    path = tmp_path_factory.mktemp(kind) / "model.onnx"
    export(result, path, TRAIN[kind], {"source": "test"})
    return kind, result, path


def test_every_kind_trains_and_scores_each_split(trained):
    kind, result, path = trained
    assert 1 <= len(result.history) <= 2 and result.best_epoch >= 1
    for split in ("train", "val", "test"):
        s = result.scores[split]
        assert s.n > 0 and np.isfinite(s.loss) and -1 <= s.ic <= 1, (kind, split, s)
    assert sum(p.numel() for p in result.model.parameters()) == CONFIGS[kind].parameter_count()  # the size limit's count
    m = load_model(path)  # the .onnx is the model file: config, normalizer and signal in its metadata
    assert m.config == CONFIGS[kind] and m.normalizer == result.normalizer
    assert m.signal.horizon_ticks == TRAIN[kind].horizon and m.specs == state_specs(CONFIGS[kind])
    assert m.training["scores"]["test"]["n"] == result.scores["test"].n


def sequence_with_resets(L: int, n_slots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x [L, n_slots, F] and reset [L, n_slots]: every slot resets at step 0 and at its own steps."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((L, n_slots, 5)).astype(np.float32)
    reset = np.zeros((L, n_slots), np.uint8)
    reset[0] = 1
    for slot, steps in enumerate([[], [97], [5, 6, 200]][:n_slots]):
        reset[steps, slot] = 1
    return x, reset


def torch_sequence(model: torch.nn.Module, x: np.ndarray, reset: np.ndarray) -> np.ndarray:
    """The sequence form of one slot's ticks x [L, F], from zero state at each reset: [L, n_out]."""
    starts = [*np.flatnonzero(reset), len(x)]
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[None, a:b]))[0][0].numpy() for a, b in zip(starts[:-1], starts[1:])])


def test_the_onnx_step_through_the_backend_is_the_torch_sequence_form(trained):
    """Three slots stepped together, each with its own resets (the mlp's and transformer's windows
    fill, saturate and restart): each slot's outputs equal the torch sequence form run from zero
    state on each piece between its resets."""
    kind, result, path = trained
    L, n = 300, 3
    x, reset = sequence_with_resets(L, n, seed=1)
    backend = make_backend("onnxruntime", load_model(path), n)
    slots = np.arange(n, dtype=np.int32)
    got = np.stack([backend.step(slots, x[t], reset[t]) for t in range(L)])  # [L, n, n_out]
    for slot in range(n):
        want = torch_sequence(result.model, x[:, slot], reset[:, slot])
        assert rel_err(got[:, slot], want) <= RTOL, (kind, slot)
    # a reset leaves nothing behind: slot 1 from its reset on is a fresh run of its ticks since
    fresh = make_backend("onnxruntime", load_model(path), 1)
    tail = np.stack([fresh.step(slots[:1], x[t, 1:2], np.array([t == 97], np.uint8)) for t in range(97, L)])
    assert tail.tobytes() == got[97:, 1:2].tobytes()


def test_padding_repeats_and_state_moves_keep_the_seams_rules(trained):
    """The backend's batch rules hold for a zoo graph as for the SSM's: a padding row is NaN and
    touches nothing, a repeated slot sees the earlier row's update, and a slot's state set into
    another slot continues as the original."""
    kind, _, path = trained
    model = load_model(path)
    batched, by_row = make_backend("onnxruntime", model, 3), make_backend("onnxruntime", model, 3)
    rng = np.random.default_rng(2)
    for t in range(40):
        slots = rng.integers(-1, 3, size=5).astype(np.int32)
        x = rng.standard_normal((5, 5)).astype(np.float32)
        reset = (rng.random(5) < 0.1).astype(np.uint8) | (t == 0)
        got = batched.step(slots, x, reset)
        one_by_one = np.concatenate([by_row.step(slots[i : i + 1], x[i : i + 1], reset[i : i + 1]) for i in range(5)])
        assert got.tobytes() == one_by_one.tobytes()
        assert np.array_equal(np.isnan(got[:, 0]), slots < 0)
    state = batched.get_state(1)
    assert state.shape == (batched.state_size,) == (sum(s.size for s in state_specs(CONFIGS[kind])),)
    batched.set_state(2, state)
    x = rng.standard_normal((10, 1, 5)).astype(np.float32)
    no = np.zeros(1, np.uint8)
    a = [batched.step(np.array([1], np.int32), xt, no) for xt in x]
    b = [batched.step(np.array([2], np.int32), xt, no) for xt in x]
    assert np.concatenate(a).tobytes() == np.concatenate(b).tobytes()


class Predictions(Strategy):
    """Records the model's expected return (bps) of every tick it sees; never trades."""

    name = "predictions"

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], float] = {}

    def on_batch(self, batch: TickBatch) -> np.ndarray:
        ret = np.log(batch.pred_mid / batch.mid) * 1e4
        for i, r in zip(batch.instrument.tolist(), ret.tolist()):
            self.seen[(i, batch.ts_ns)] = r
        return np.full(len(batch), np.nan)


def test_the_engine_runs_the_onnx_model_as_training_saw_it(trained, segments):
    """A backtest on the onnxruntime backend predicts, tick for tick, what the torch model predicts
    on the training tap's segments (split at the engine's resets): the same features, normalizer,
    resets and function."""
    kind, result, path = trained
    recorder = Predictions()
    run_backtest(SyntheticMarket(MARKET), BacktestConfig(model=str(path), backend="onnxruntime"), strategy=recorder)
    norm = result.normalizer
    got, want = [], []
    result.model.eval()
    for seg in segments:
        with torch.no_grad():
            out = result.model(torch.from_numpy(norm.apply(seg.features))[None])[0][0, :, 0].numpy()
        got += [(recorder.seen[(seg.instrument, int(ts))] - norm.target_mean) / norm.target_std for ts in seg.ts_ns]
        want.append(out)
    assert len(got) == sum(len(s.ts_ns) for s in segments) > 1000
    assert rel_err(got, np.concatenate(want)) <= RTOL, kind


def test_the_threshold_strategy_backtests_a_zoo_model_from_the_command_line(trained, capsys):
    kind, _, path = trained
    args = ["backtest", "--strategy", "ssm", "--model", str(path), "--calendar", CAL, "--n-sessions", "2",
            "--n-instruments", "2", "--seed", "3", "--alpha-strength", "3", "--no-progress", "--json"]
    assert main([*args, "--backend", "onnxruntime"]) == 0
    summary = msgspec.json.decode(capsys.readouterr().out)[0]
    assert summary["model"] == str(path) and summary["strategy"] == "ssm"
    # the compiled kernel runs SSM weights only: the .onnx is refused with the backend to use
    assert main(args) == 2
    assert f"{path} is a {kind} model in ONNX, which --backend cpu does not run: use --backend onnxruntime" in capsys.readouterr().err


def test_training_is_deterministic_for_a_seed(trained, segments):
    """Bit for bit on this machine; another seed gives other weights (so the comparison can fail)."""
    kind, result, _ = trained
    split = split_by_time(segments)
    again = train(split, CONFIGS[kind], TRAIN[kind])
    assert weights(again.model) == weights(result.model), kind
    assert again.scores == result.scores and again.history[0]["train_loss"] == result.history[0]["train_loss"]
    other = train(split, CONFIGS[kind], msgspec.structs.replace(TRAIN[kind], seed=1, epochs=1))
    assert weights(other.model) != weights(result.model)


def test_dropout_is_applied_in_training(segments):
    split = split_by_time(segments)
    cfg = ZooConfig(kind="mlp", d_model=16, n_layers=2, window=4)
    plain = train(split, cfg, TrainConfig(epochs=1, batch_size=4, seed=0))
    dropped = train(split, cfg, TrainConfig(epochs=1, batch_size=4, seed=0, dropout=0.5))
    assert weights(plain.model) != weights(dropped.model)
    with pytest.raises(ValueError, match=r"--dropout must be in \[0, 1\)"):
        TrainConfig(dropout=1.0)


def test_the_ssm_gets_dropout_once_its_config_has_the_field():
    if "dropout" in SSMConfig.__struct_fields__:
        assert ssm_config(TrainConfig(dropout=0.1), d_model=16, headdim=8).dropout == 0.1
    else:
        assert ssm_config(TrainConfig(), d_model=16, headdim=8) == SSMConfig(d_model=16, headdim=8)
        with pytest.raises(ValueError, match="--dropout: this SSM"):
            ssm_config(TrainConfig(dropout=0.1), d_model=16, headdim=8)


def test_the_runtime_runs_a_zoo_model_without_torch(trained):
    kind, _, path = trained
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from engine.model.backend import make_backend\n"
        "from engine.model.weights import load_model\n"
        f"b = make_backend('onnxruntime', load_model({str(path)!r}), 2)\n"
        "out = b.step(np.array([0, 1], np.int32), np.ones((2, 5), np.float32), np.ones(2, np.uint8))\n"
        "assert np.isfinite(out).all(), out\n"
        "print(b.state_size)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == sum(spec.size for spec in state_specs(CONFIGS[kind]))


def test_an_onnx_file_that_is_not_a_model_file_is_refused_by_name():
    ssm_export = sibling_path(DEFAULT_MODEL_PATH)  # an SSM step export: its weights' file is the .safetensors
    with pytest.raises(OnnxFileError, match=rf"{ssm_export}: .*not a nextick model file \(an SSM step export: run its "
                       r"\.safetensors"):
        load_model(ssm_export)


def test_bad_options_are_refused_naming_the_option(capsys):
    base = ["train", "--calendar", CAL, "--n-sessions", "3", "--no-progress"]
    cases = [
        (["--kind", "lstm", "--window", "8"], "--window means nothing to --kind lstm"),
        (["--kind", "mamba2", "--n-heads", "2"], "--n-heads is for the zoo's window models"),
        (["--kind", "gru", "--train-days", "3"], "--train-days and --refit-days are walk-forward options: add --walk-forward"),
        (["--kind", "gru", "--walk-forward", "--train-days", "3"], "--walk-forward needs --train-days N"),
        (["--kind", "transformer", "--d-model", "10", "--n-heads", "4"], "--d-model 10 is not a multiple of --n-heads 4"),
        (["--kind", "mlp", "--window", "0"], "--window must be >= 1"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra


# ------------------------------------------------------------------------------------ walk-forward

WF_MARKET = SyntheticConfig(n_instruments=2, n_sessions=7, calendar=CAL, seed=5, alpha_strength=3.0)
WF_MODEL = ZooConfig(kind="mlp", d_model=8, n_layers=1, window=4)
WF_TRAIN = TrainConfig(epochs=2, batch_size=4, seed=0)


def test_walk_forward_folds_never_look_ahead():
    """7 days, fit on 3, score on 2, step 2: fold 0 fits days 0-2 and scores 3-4, fold 1 fits 2-4 and
    scores 5-6. Scrambling days 5-6 leaves fold 0's weights and scores bit for bit as they were, and
    changes fold 1's scores (the change is seen where it may be)."""
    segs = collect_segments(SyntheticMarket(WF_MARKET))
    before = walk_forward(segs, WF_MODEL, WF_TRAIN, train_days=3, refit_days=2)
    assert [(f.fit_days, f.eval_days) for f in before.folds] == [((0, 3), (3, 5)), ((2, 5), (5, 7))]
    late = np.datetime64(before.days[5], "D").astype("datetime64[ns]").astype(np.int64)
    rng = np.random.default_rng(0)
    changed = [s if s.start_ns < late else
               s._replace(features=rng.permutation(s.features), mid=s.mid * np.exp(rng.normal(0, 1e-3, len(s.mid))))
               for s in segs]
    assert sum(s.start_ns >= late for s in segs) > 0
    after = walk_forward(changed, WF_MODEL, WF_TRAIN, train_days=3, refit_days=2)
    assert weights(after.folds[0].result.model) == weights(before.folds[0].result.model)
    assert after.folds[0].result.scores == before.folds[0].result.scores
    assert after.folds[0].daily == before.folds[0].daily
    assert after.folds[1].result.scores["test"] != before.folds[1].result.scores["test"]


def test_walk_forward_from_the_command_line_reports_folds_and_decay(tmp_path, capsys):
    c = WF_MARKET
    args = ["train", "--kind", "mlp", "--d-model", "8", "--n-layers", "1", "--window", "4", "--epochs", "2",
            "--batch-size", "4", "--calendar", CAL, "--n-sessions", str(c.n_sessions), "--n-instruments",
            str(c.n_instruments), "--seed", str(c.seed), "--alpha-strength", "3", "--walk-forward", "--train-days", "3",
            "--refit-days", "2", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "walk-forward: 2 folds; mean eval IC by days since the fit: 1: " in capsys.readouterr().out
    report = json.loads((tmp_path / "training_report.json").read_text())
    wf = report["walk_forward"]
    assert (wf["train_days"], wf["refit_days"], len(wf["days"])) == (3, 2, 7)
    assert [f["fit"][0] for f in wf["folds"]] == [wf["days"][0], wf["days"][2]]
    assert [f["eval"] for f in wf["folds"]] == [[wf["days"][3], wf["days"][4]], [wf["days"][5], wf["days"][6]]]
    for f in wf["folds"]:
        assert f["scores"]["test"]["n"] > 0 and [d["days_since_fit"] for d in f["daily"]] == [1, 2]
        assert sum(d["n"] for d in f["daily"]) == f["scores"]["test"]["n"]
    decay = wf["decay"]
    assert [d["days_since_fit"] for d in decay] == [1, 2] and all(d["n_folds"] == 2 for d in decay)
    assert decay[0]["ic_mean"] == pytest.approx(np.mean([f["daily"][0]["ic"] for f in wf["folds"]]))
    assert report["scores"] == wf["folds"][-1]["scores"]  # the model file is the last fold's
    assert load_model(tmp_path / "model.onnx").training["scores"] == report["scores"]
    md = (tmp_path / "training_report.md").read_text()
    assert "Walk-forward folds" in md and "| days since fit | mean IC | folds |" in md


def test_mc_dropout_masks_the_heads_input_of_every_kind(trained):
    """set_dropout_masks scales the head's input per row (variant = slot % variants): an all-ones
    mask is the plain model bit for bit, a zero mask leaves the head's bias, and the output is
    linear in the mask (out(m1) + out(m2) = out(m1 + m2) + bias), whatever the kind."""
    from engine.model.dropout import head_dropout_masks
    from engine.model.onnx_backend import OnnxRuntimeBackend

    kind, _, path = trained
    model = load_model(path)
    d = model.config.d_model
    m1, m2 = head_dropout_masks(d, 2, seed=4, rate=0.5)
    x, reset = sequence_with_resets(240, 3, seed=2)

    def run(masks: np.ndarray | None) -> np.ndarray:
        b = OnnxRuntimeBackend(model, 3)
        if masks is not None:
            b.set_dropout_masks(masks)
        slots = np.arange(3, dtype=np.int32)
        return np.stack([b.step(slots, x[t], reset[t]) for t in range(len(x))])

    plain = run(None)
    np.testing.assert_array_equal(run(np.ones((1, d), np.float32)), plain)
    bias = run(np.zeros((1, d), np.float32))
    assert np.ptp(bias) == 0  # the head's bias alone, on every row and tick
    # Slot s runs variant s % 2: slots 0, 2 with m1 and slot 1 with m2.
    both = run(np.stack([m1, m2]))
    only1, only2 = run(m1[None]), run(m2[None])
    np.testing.assert_array_equal(both[:, ::2], only1[:, ::2])
    np.testing.assert_array_equal(both[:, 1::2], only2[:, 1::2])
    summed = run((m1 + m2)[None])
    assert rel_err(only1 + only2, summed + bias) <= RTOL
    assert not np.allclose(only1, plain)
    with pytest.raises(ValueError, match="head takes"):
        OnnxRuntimeBackend(model, 1).set_dropout_masks(np.ones((2, d + 1), np.float32))


def test_mc_samples_of_a_zoo_model_are_the_mean_and_spread_of_its_variants(trained):
    kind, _, path = trained
    if kind != "transformer":
        pytest.skip("trained with dropout here: the transformer")
    base = BacktestConfig(strategy="none", model=str(path), backend="onnxruntime", mc_seed=1)
    engine_market = SyntheticConfig(n_instruments=2, n_sessions=1, calendar=CAL, seed=3, alpha_strength=3.0)

    def tap_of(config: BacktestConfig) -> np.ndarray:
        from engine.backtest import record_predictions

        return record_predictions(SyntheticMarket(engine_market), config, tap=True)[1]

    import msgspec

    together = tap_of(msgspec.structs.replace(base, mc_samples=3))
    alone = np.array([tap_of(msgspec.structs.replace(base, mc_variant=v))["pred_mid"] for v in range(3)])
    np.testing.assert_allclose(together["pred_mid"], alone.mean(0), rtol=1e-13)
    np.testing.assert_allclose(together["pred_std"], alone.std(0, ddof=1), rtol=1e-9, atol=1e-12)
    assert (together["pred_std"] > 0).mean() > 0.9
