"""The ONNX export of the SSM step (engine/model/onnx_export.py) and the onnxruntime backend
(engine/model/onnx_backend.py): the file passes onnx's checker and says what it was made from; ONNX
Runtime reproduces the C++ kernel within DESIGN.md's parity tolerance over the parity suite's lengths
and resets, on the packaged model (its shipped .onnx) and on random weights; batches with padding
rows, repeated slots and resets run as the seam says; the engine's fills do not change; and a file
that is not the export of the model at hand is refused by name."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from engine.backtest import BacktestConfig, run_backtest  # noqa: E402
from engine.cli import main  # noqa: E402
from engine.model.backend import make_backend  # noqa: E402
from engine.model.config import SSMConfig  # noqa: E402
from engine.model.onnx_backend import PROVIDERS_ENV, OnnxRuntimeBackend  # noqa: E402
from engine.model.onnx_export import export_onnx  # noqa: E402
from engine.model.onnx_format import (  # noqa: E402
    CACHE_ENV,
    OPSET,
    OnnxFileError,
    cache_path,
    check_metadata,
    file_sha256,
    sibling_path,
    state_specs,
)
from engine.model.weights import DEFAULT_MODEL_PATH, ModelFile, load_model, save_model  # noqa: E402
from feeds.synthetic import SyntheticConfig, SyntheticMarket  # noqa: E402
from tests.test_ssm_parity import LENGTHS, RTOL, make_model, rel_err  # noqa: E402

PACKAGED = load_model()
CONFIGS = {
    "mamba2": SSMConfig(),
    # every size odd or uneven: 8 heads of 9 in 2 groups, a conv of 3 taps, 5 states, 3 layers
    "mamba2-odd": SSMConfig(d_model=36, headdim=9, ngroups=2, d_conv=3, d_state=5, n_layers=3),
    "mamba2-conv2": SSMConfig(d_model=16, headdim=8, ngroups=2, d_conv=2, d_state=4),  # a window of one tick
    "mamba2-conv1": SSMConfig(d_model=16, headdim=8, d_conv=1, d_state=4),  # no conv state at all
    "s4d-zoh": SSMConfig(kind="s4d", discretization="zoh"),
    "s4d-bilinear": SSMConfig(kind="s4d", discretization="bilinear"),
}
MARKET = SyntheticConfig(n_instruments=3, n_sessions=2, alpha_strength=3.0, seed=11)


def save_random(folder: Path, cfg: SSMConfig, seed: int = 0) -> ModelFile:
    """A model file of random (non-trivial) weights, with the packaged model's normalizer."""
    folder.mkdir(parents=True, exist_ok=True)
    m = make_model(cfg, seed)
    path = folder / "model.safetensors"
    save_model(path, m.export_tensors(), cfg, PACKAGED.normalizer, PACKAGED.signal)
    return load_model(path)


@pytest.fixture(scope="module", params=["packaged", *CONFIGS])
def exported(request, tmp_path_factory) -> tuple[ModelFile, Path]:
    """(model file, its .onnx): the packaged model's shipped export, or a random model exported now."""
    if request.param == "packaged":
        return PACKAGED, sibling_path(DEFAULT_MODEL_PATH)
    model = save_random(tmp_path_factory.mktemp(request.param), CONFIGS[request.param])
    return model, export_onnx(model, sibling_path(model.path))


def run_one_slot(backend, x: np.ndarray, reset_at: int | None = None) -> np.ndarray:
    """Step slot 0 through x [L, F] a row at a time, reset at step 0 (and ``reset_at``); outputs [L, n_out]."""
    out = np.empty((len(x), backend.n_outputs), np.float32)
    slots = np.zeros(1, np.int32)
    for t in range(len(x)):
        backend.step(slots, x[t : t + 1], np.array([t == 0 or t == reset_at], np.uint8), out[t : t + 1])
    return out


def state_errors(a, b, slot: int, specs) -> list[float]:
    """The relative error of each state (layer by layer) of ``slot``: both backends order a slot's
    state vector alike, so it splits at the same places."""
    bounds = np.cumsum([s.size for s in specs])[:-1]
    return [rel_err(p, q) for p, q in zip(np.split(a.get_state(slot), bounds), np.split(b.get_state(slot), bounds))]


@pytest.mark.parametrize("L", LENGTHS)
def test_onnxruntime_reproduces_the_kernel_over_a_sequence(exported, L):
    model, path = exported
    x = np.random.default_rng(L).standard_normal((L, model.config.n_features)).astype(np.float32)
    ort_backend = OnnxRuntimeBackend(model, 1, onnx_path=path)
    kernel = model.core_model(1)
    y_ort, y_kernel = run_one_slot(ort_backend, x), run_one_slot(kernel, x)
    assert rel_err(y_ort, y_kernel) <= RTOL, "outputs"
    errors = state_errors(ort_backend, kernel, 0, ort_backend.specs)
    assert len(errors) == len(state_specs(model.config)) and max(errors) <= RTOL, f"final states {errors}"


@pytest.mark.parametrize("k", [1, 100, 257])
def test_a_reset_at_k_is_a_fresh_run_on_the_rest(exported, k):
    model, path = exported
    x = np.random.default_rng(k).standard_normal((600, model.config.n_features)).astype(np.float32)
    y_reset = run_one_slot(OnnxRuntimeBackend(model, 1, onnx_path=path), x, reset_at=k)
    y_fresh = run_one_slot(OnnxRuntimeBackend(model, 1, onnx_path=path), x[k:])
    assert y_reset[k:].tobytes() == y_fresh.tobytes()  # the reset inside the graph leaves nothing behind
    assert rel_err(y_reset[k:], run_one_slot(model.core_model(1), x[k:])) <= RTOL


def test_the_export_passes_the_checker_and_says_what_it_was_made_from(exported):
    model, path = exported
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    sha = file_sha256(model.path)
    assert meta["source_sha256"] == sha and meta["source_file"] == Path(model.path).name
    assert msgspec.json.decode(meta["config"], type=SSMConfig) == model.config
    assert meta["opset"] == str(OPSET) == str(next(o.version for o in proto.opset_import if o.domain == ""))
    assert check_metadata(str(path), meta, model.config, model.path, sha) == state_specs(model.config)
    # inputs and outputs: the features, the reset mask, the states; every one with the batch axis first
    specs = state_specs(model.config)
    assert [i.name for i in proto.graph.input] == ["x", "reset", *(s.name for s in specs)]
    assert [o.name for o in proto.graph.output] == ["out", *(s.output for s in specs)]
    for v in [*proto.graph.input, *proto.graph.output]:
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", v.name
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim[1:]) for v in proto.graph.input}
    assert all(shapes[s.name] == s.shape for s in specs)


@pytest.fixture(scope="module")
def trio():
    """Backends of the packaged model on 4 slots, for the batch rules: onnxruntime for whole batches,
    onnxruntime for one row at a time, and the C++ kernel."""
    return OnnxRuntimeBackend(PACKAGED, 4), OnnxRuntimeBackend(PACKAGED, 4), PACKAGED.core_model(4)


ROW = st.tuples(st.integers(-1, 3), st.booleans())  # (slot, reset); slot -1 is padding


@settings(max_examples=30, deadline=None)
@given(batches=st.lists(st.lists(ROW, min_size=1, max_size=9), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_batches_with_padding_repeats_and_resets_run_row_by_row(trio, batches, seed):
    """Each batch runs as its rows one by one, in order: a padding row is NaN and touches nothing, a
    repeated slot sees the earlier row's update, a reset zeroes the slot first. Bit for bit against
    ONNX Runtime itself row by row, and within the tolerance against the C++ kernel on the same batches
    (the error relative to the run's scale, as the parity suite measures a sequence: every slot is
    warmed up first, so that no run is a handful of outputs near zero)."""
    ort_backend, by_row, kernel = trio
    rng = np.random.default_rng(seed)
    warm_up = [[(slot, t == 0) for slot in range(4)] for t in range(10)]
    got_all, want_all = [], []
    for rows in warm_up + batches:
        slots = np.array([s for s, _ in rows], np.int32)
        reset = np.array([r for _, r in rows], np.uint8)
        x = rng.standard_normal((len(rows), PACKAGED.config.n_features)).astype(np.float32)
        got = ort_backend.step(slots, x, reset)
        one_by_one = np.concatenate([by_row.step(slots[i : i + 1], x[i : i + 1], reset[i : i + 1]) for i in range(len(rows))])
        assert got.tobytes() == one_by_one.tobytes()
        assert np.array_equal(np.isnan(got), np.broadcast_to(slots[:, None] < 0, got.shape))
        got_all.append(got[slots >= 0])
        want_all.append(kernel.step(slots, x, reset)[slots >= 0])
    assert rel_err(np.concatenate(got_all), np.concatenate(want_all)) <= RTOL
    for slot in range(4):
        assert ort_backend.get_state(slot).tobytes() == by_row.get_state(slot).tobytes()
        assert max(state_errors(ort_backend, kernel, slot, ort_backend.specs)) <= RTOL


def test_a_kernel_state_continues_on_onnxruntime(trio):
    """A slot's state vector means the same on both backends: a kernel state set into ONNX Runtime
    continues as the kernel does."""
    ort_backend, _, kernel = trio
    rng = np.random.default_rng(7)
    kernel.reset_all()
    for _ in range(50):
        kernel.step(np.array([2], np.int32), rng.standard_normal((1, 5)).astype(np.float32), np.zeros(1, np.uint8))
    ort_backend.set_state(3, kernel.get_state(2))
    assert ort_backend.get_state(3).tobytes() == kernel.get_state(2).tobytes()
    x = rng.standard_normal((20, 5)).astype(np.float32)
    y_ort = np.concatenate([ort_backend.step(np.array([3], np.int32), x[t : t + 1], np.zeros(1, np.uint8)) for t in range(20)])
    y_kernel = np.concatenate([kernel.step(np.array([2], np.int32), x[t : t + 1], np.zeros(1, np.uint8)) for t in range(20)])
    assert rel_err(y_ort, y_kernel) <= RTOL


def test_calls_from_two_threads_do_not_interleave():
    """ONNX Runtime lets go of the GIL while it runs; two threads stepping their own slots of one
    backend get what each would get alone."""
    backend = OnnxRuntimeBackend(PACKAGED, 2)
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((2, 300, 1, PACKAGED.config.n_features)).astype(np.float32)

    def run(slot: int, b=backend) -> np.ndarray:
        return np.concatenate([b.step(np.array([slot], np.int32), x, np.zeros(1, np.uint8)) for x in xs[slot]])

    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(run, [0, 1]))
    alone = OnnxRuntimeBackend(PACKAGED, 2)
    for slot in (0, 1):
        assert together[slot].tobytes() == run(slot, alone).tobytes()
        assert backend.get_state(slot).tobytes() == alone.get_state(slot).tobytes()


def test_the_engine_on_onnxruntime_makes_the_cpu_backends_fills():
    cpu = run_backtest(SyntheticMarket(MARKET), BacktestConfig(strategy="ssm", backend="cpu"))
    ort_run = run_backtest(SyntheticMarket(MARKET), BacktestConfig(strategy="ssm", backend="onnxruntime"))
    assert len(cpu.fills) > 50
    # Predictions differ from the kernel's by float32 rounding (~1e-7 relative); a decision would
    # flip only where a prediction sits that close to the threshold, and none does on this market.
    assert ort_run.fill_hash() == cpu.fill_hash()
    assert ort_run.resets.tobytes() == cpu.resets.tobytes()


def test_backtest_and_export_from_the_command_line(capsys, tmp_path):
    model = save_random(tmp_path / "m", SSMConfig(d_model=16, headdim=8, d_state=4, n_layers=1))
    assert main(["export", "--format", "onnx", "--model", model.path]) == 0
    out = capsys.readouterr().out
    onnx_path = sibling_path(model.path)
    assert f"wrote {onnx_path}" in out and "onnx.checker passed" in out
    rel = float(out.split("max relative error ")[1].split()[0])
    assert rel <= RTOL
    args = ["backtest", "--strategy", "ssm", "--n-sessions", "1", "--quote-rate-hz", "2", "--no-progress", "--json"]
    assert main([*args, "--backend", "onnxruntime"]) == 0
    ort_summary = msgspec.json.decode(capsys.readouterr().out)[0]
    assert main(args) == 0
    cpu_summary = msgspec.json.decode(capsys.readouterr().out)[0]
    assert ort_summary["fill_hash"] == cpu_summary["fill_hash"] and ort_summary["metrics"]["fill_count"] > 0


def test_an_export_of_other_weights_is_refused_by_name(tmp_path):
    model = save_random(tmp_path, CONFIGS["mamba2"])  # the packaged model's config, other weights
    with pytest.raises(OnnxFileError, match=rf"{sibling_path(DEFAULT_MODEL_PATH)}: exported from a model file with SHA-256 .*"
                       rf"{model.path} has SHA-256 .* re-export it: nextick export --format onnx"):
        OnnxRuntimeBackend(model, 1, onnx_path=sibling_path(DEFAULT_MODEL_PATH))


def test_a_stale_export_beside_a_retrained_model_is_refused(tmp_path):
    cfg = SSMConfig(d_model=16, headdim=8, d_state=4, n_layers=1)
    model = save_random(tmp_path, cfg, seed=1)
    export_onnx(model, sibling_path(model.path))
    retrained = save_random(tmp_path, cfg, seed=2)  # the same path, new weights; model.onnx stays
    with pytest.raises(OnnxFileError, match=rf"{tmp_path / 'model.onnx'}: exported from .* the weights changed"):
        make_backend("onnxruntime", retrained, 1)


def tampered(src: Path, dst: Path, **changes: str) -> Path:
    """A copy of the .onnx ``src`` with metadata keys changed (None: removed)."""
    proto = onnx.load(src)
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(changes)
    del proto.metadata_props[:]
    for k, v in meta.items():
        if v is not None:
            proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, dst)
    return dst


def test_metadata_that_does_not_match_the_model_is_refused_by_name(tmp_path):
    src = sibling_path(DEFAULT_MODEL_PATH)
    other = msgspec.json.encode(msgspec.structs.replace(PACKAGED.config, norm_eps=1e-6)).decode()
    cases = {
        "config": ({"config": other}, "exported for config"),
        "states": ({"states": "[]"}, "its states"),
        "format": ({"format": None}, "not a nextick step export"),
        "version": ({"format_version": "0"}, "this nextick reads version 1"),
    }
    for name, (changes, message) in cases.items():
        path = tampered(src, tmp_path / f"{name}.onnx", **changes)
        with pytest.raises(OnnxFileError, match=rf"{path}: .*{message}.*nextick export --format onnx"):
            OnnxRuntimeBackend(PACKAGED, 1, onnx_path=path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(OnnxFileError, match=rf"{garbage}: ONNX Runtime cannot load it"):
        OnnxRuntimeBackend(PACKAGED, 1, onnx_path=garbage)
    with pytest.raises(OnnxFileError, match="no such ONNX file"):
        OnnxRuntimeBackend(PACKAGED, 1, onnx_path=tmp_path / "absent.onnx")


def test_without_an_export_the_backend_makes_one_in_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model = save_random(tmp_path / "m", SSMConfig(kind="s4d", d_model=16, d_state=4, n_layers=1))
    first = make_backend("onnxruntime", model, 2)
    cached = cache_path(file_sha256(model.path))
    assert first.onnx_path == cached and cached.parent == tmp_path / "cache" / "onnx"
    stamp = cached.stat().st_mtime_ns
    assert make_backend("onnxruntime", model, 2).onnx_path == cached and cached.stat().st_mtime_ns == stamp
    assert not sibling_path(model.path).exists()


def test_without_torch_a_model_with_no_export_is_refused_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model = save_random(tmp_path / "m", SSMConfig(kind="s4d", d_model=16, d_state=4, n_layers=1))
    monkeypatch.setitem(sys.modules, "engine.model.onnx_export", None)  # as if torch were not installed
    with pytest.raises(OnnxFileError, match=rf"{model.path}: no ONNX export of this model .* nextick export --format "
                       rf"onnx --model {model.path} --out {sibling_path(model.path)}"):
        make_backend("onnxruntime", model, 1)


def test_without_onnxruntime_the_error_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError, match=r"pip install 'nextick\[onnx\]'"):
        make_backend("onnxruntime", PACKAGED, 1)
    code = main(["backtest", "--strategy", "ssm", "--backend", "onnxruntime", "--n-sessions", "1", "--no-progress"])
    assert code == 2 and "pip install 'nextick[onnx]'" in capsys.readouterr().err


def test_a_missing_provider_or_an_oversized_pool_is_refused_up_front(monkeypatch):
    monkeypatch.setenv(PROVIDERS_ENV, "NoSuchExecutionProvider,CPUExecutionProvider")
    with pytest.raises(ValueError, match=rf"has no NoSuchExecutionProvider \(it has .*CPUExecutionProvider.*{PROVIDERS_ENV}"):
        OnnxRuntimeBackend(PACKAGED, 1)
    monkeypatch.delenv(PROVIDERS_ENV)
    backend = OnnxRuntimeBackend(PACKAGED, 1)
    with pytest.raises(ValueError, match=r"default.onnx: 1,000,000,000 slots need .* bytes of state, over the"):
        backend.grow(10**9)
    assert backend.n_slots == 1  # refused before anything was allocated or dropped


def test_the_runtime_runs_the_shipped_export_without_torch():
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "import numpy as np\n"
        "from engine.model.backend import make_backend\n"
        "from engine.model.weights import load_model\n"
        "b = make_backend('onnxruntime', load_model(), 2)\n"
        "out = b.step(np.array([0, 1], np.int32), np.ones((2, 5), np.float32), np.ones(2, np.uint8))\n"
        "assert np.isfinite(out).all(), out\n"
        "print(b.onnx_path)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sibling_path(DEFAULT_MODEL_PATH))


def test_the_shipped_export_is_what_export_writes_now(tmp_path):
    """engine/model/default.onnx is made by `nextick export --format onnx` from default.safetensors.
    Its metadata ties it to those weights; this ties it to the step's math: a change to the export
    (onnx_export.KernelStep) that is not re-exported shows here as different bits."""
    fresh = OnnxRuntimeBackend(PACKAGED, 64, onnx_path=export_onnx(PACKAGED, tmp_path / "default.onnx"))
    shipped = OnnxRuntimeBackend(PACKAGED, 64)
    assert shipped.onnx_path == sibling_path(DEFAULT_MODEL_PATH)
    rng = np.random.default_rng(0)
    slots = np.arange(64, dtype=np.int32)
    for _ in range(20):
        x = rng.standard_normal((64, PACKAGED.config.n_features)).astype(np.float32)
        reset = (rng.random(64) < 0.1).astype(np.uint8)
        a, b = fresh.step(slots, x, reset), shipped.step(slots, x, reset)
        assert a.tobytes() == b.tobytes(), f"{shipped.onnx_path} is out of step: run `nextick export --format onnx`"
