"""The model-backend seam (engine.model.backend, csrc/model_backend.hpp): every registered backend
keeps the slot semantics, state goes in and out, and a backend written in Python runs inside the
engine's loop and gives the same fills as the compiled one it wraps."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import needs_cuda_device
from engine import _core
from engine.backtest import BacktestConfig, run_backtest
from engine.model import backend as backend_mod
from engine.model.backend import ModelBackend, backend_names, make_backend, register_backend
from engine.model.weights import load_model
from feeds.synthetic import SyntheticConfig, SyntheticMarket

F = 5


@pytest.fixture(scope="module")
def model_file():
    return load_model()


def _x(rng, n):
    return rng.standard_normal((n, F)).astype(np.float32)


class Recording:
    """A Python backend: delegates to a compiled one and records what the engine asked of it."""

    backend_name = "recording"

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.inputs_writeable: set[bool] = set()

    n_features = property(lambda self: self.inner.n_features)
    n_outputs = property(lambda self: self.inner.n_outputs)
    n_slots = property(lambda self: self.inner.n_slots)
    state_size = property(lambda self: self.inner.state_size)

    def step(self, slots, x, reset, out):
        self.inputs_writeable.add(slots.flags.writeable or x.flags.writeable or reset.flags.writeable)
        self.calls.append((slots.copy(), reset.copy()))
        self.inner.step(np.ascontiguousarray(slots), np.ascontiguousarray(x), np.ascontiguousarray(reset), out)
        return out

    def reset_slot(self, slot):
        self.inner.reset_slot(slot)

    def reset_all(self):
        self.inner.reset_all()

    def grow(self, n):
        self.inner.grow(n)

    def resize(self, n):
        self.inner.resize(n)

    def get_state(self, slot):
        return self.inner.get_state(slot)

    def set_state(self, slot, state):
        self.inner.set_state(slot, state)


@pytest.fixture
def recording_backend():
    made: list[Recording] = []

    def factory(model, n_slots):
        made.append(Recording(model.core_model(n_slots)))
        return made[-1]

    register_backend("recording", factory)
    yield made
    backend_mod._FACTORIES.pop("recording", None)


def test_cpu_backend_is_the_compiled_kernel_behind_the_protocol(model_file):
    b = make_backend("cpu", model_file, 4)
    assert isinstance(b, _core.SsmModel) and isinstance(b, _core.ModelBackend)
    assert isinstance(b, ModelBackend)
    assert (b.backend_name, b.n_features, b.n_outputs, b.n_slots) == ("cpu", F, 1, 4)
    cfg = model_file.config
    per_layer = (cfg.d_conv - 1) * (cfg.d_inner + 2 * cfg.ngroups * cfg.d_state) + cfg.d_inner * cfg.d_state
    assert b.state_size == cfg.n_layers * per_layer


def test_unknown_backend_names_the_available_ones(model_file):
    with pytest.raises(ValueError, match="available here: " + ", ".join(backend_names())):
        make_backend("quantum", model_file, 1)
    with pytest.raises(ValueError, match="unknown model backend 'quantum'"):
        run_backtest(SyntheticMarket(SyntheticConfig(n_sessions=1, n_instruments=1)),
                     BacktestConfig(strategy="ssm", backend="quantum"))


# Every registered backend whose dependencies are installed here (onnxruntime: the `onnx` extra,
# part of `[test]`; cuda: a CUDA build on a machine with a GPU), and a Python one.
BACKENDS = ["cpu", pytest.param("onnxruntime", marks=pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed: pip install -e '.[onnx]'")),
    "recording", pytest.param("cuda", marks=needs_cuda_device)]


@pytest.mark.parametrize("name", BACKENDS)
def test_slot_semantics(name, model_file, recording_backend):
    rng = np.random.default_rng(0)
    b = make_backend(name, model_file, 6)
    ref = make_backend(name, model_file, 6)  # a second, untouched instance to compare against
    x = _x(rng, 6)
    slots = np.arange(6, dtype=np.int32)
    none = np.zeros(6, np.uint8)
    for _ in range(3):
        b.step(slots, x, none, np.empty((6, 1), np.float32))
    # Padding rows: NaN out and no state touched.
    before = b.get_state(2)
    out = b.step(np.array([-1, 2], np.int32), _x(rng, 2), np.array([1, 0], np.uint8), np.empty((2, 1), np.float32))
    assert np.isnan(out[0, 0]) and np.isfinite(out[1, 0])
    assert not np.array_equal(b.get_state(2), before)  # row 2 stepped
    mid = b.get_state(3)
    b.step(np.array([-1], np.int32), _x(rng, 1), np.array([1], np.uint8), np.empty((1, 1), np.float32))
    assert np.array_equal(b.get_state(3), mid)
    # A reset row equals a fresh slot.
    xr = _x(rng, 1)
    got = b.step(np.array([4], np.int32), xr, np.array([1], np.uint8), np.empty((1, 1), np.float32))
    fresh = ref.step(np.array([5], np.int32), xr, np.array([0], np.uint8), np.empty((1, 1), np.float32))
    assert got.tobytes() == fresh.tobytes()
    # A row does not depend on the batch around it.
    b.set_state(0, b.get_state(1))
    x1 = _x(rng, 1)
    alone = b.step(np.array([0], np.int32), x1, np.zeros(1, np.uint8), np.empty((1, 1), np.float32))
    batch_x = np.concatenate([_x(rng, 2), x1])
    in_batch = b.step(np.array([3, 2, 1], np.int32), batch_x, np.zeros(3, np.uint8), np.empty((3, 1), np.float32))
    assert in_batch[2].tobytes() == alone[0].tobytes()
    # grow keeps states, resize zeroes them.
    kept = b.get_state(1)
    b.grow(9)
    assert b.n_slots == 9 and np.array_equal(b.get_state(1), kept) and not b.get_state(8).any()
    b.resize(2)
    assert b.n_slots == 2 and not b.get_state(1).any()
    with pytest.raises(IndexError):
        b.reset_slot(2)


@pytest.mark.parametrize("name", BACKENDS)
def test_state_out_and_in_continues_bit_for_bit(name, model_file, recording_backend):
    rng = np.random.default_rng(1)
    a = make_backend(name, model_file, 3)
    c = make_backend(name, model_file, 5)
    for _ in range(20):
        a.step(np.array([1], np.int32), _x(rng, 1), np.zeros(1, np.uint8), np.empty((1, 1), np.float32))
    state = a.get_state(1)
    assert state.dtype == np.float32 and state.shape == (a.state_size,) and state.any()
    c.set_state(4, state)
    assert np.array_equal(c.get_state(4), state)
    for _ in range(5):
        x = _x(rng, 1)
        oa = a.step(np.array([1], np.int32), x, np.zeros(1, np.uint8), np.empty((1, 1), np.float32))
        oc = c.step(np.array([4], np.int32), x, np.zeros(1, np.uint8), np.empty((1, 1), np.float32))
        assert oa.tobytes() == oc.tobytes()
    with pytest.raises(ValueError, match=f"must have shape \\({a.state_size},\\)"):
        c.set_state(0, state[:-1])
    with pytest.raises(IndexError):
        c.get_state(5)


def test_a_python_backend_runs_in_the_engine_with_the_same_fills(recording_backend):
    market = SyntheticConfig(n_instruments=3, n_sessions=2, alpha_strength=3.0, seed=11)
    cpu = run_backtest(SyntheticMarket(market), BacktestConfig(strategy="ssm", backend="cpu"))
    py = run_backtest(SyntheticMarket(market), BacktestConfig(strategy="ssm", backend="recording"))
    assert len(cpu.fills) > 0
    assert py.fill_hash() == cpu.fill_hash()
    assert py.resets.tobytes() == cpu.resets.tobytes()
    (rec,) = recording_backend
    rows = np.concatenate([s for s, _ in rec.calls])
    resets = np.concatenate([r for _, r in rec.calls])
    # One row per in-session two-sided tick, slot = instrument, every reset the engine made.
    assert len(rows) == cpu.counters["ticks_in_session"]
    assert set(np.unique(rows)) == {0, 1, 2}
    assert int(resets.sum()) == len(cpu.resets)
    assert max(len(s) for s, _ in rec.calls) > 1  # instruments ticking together share one call
    assert rec.inputs_writeable == {False}  # the engine's buffers are lent read-only


def test_the_core_refuses_an_object_that_is_not_a_backend(model_file):
    class Half:
        backend_name = "half"
        n_features = F

        def step(self, slots, x, reset, out):
            return out

    with pytest.raises(TypeError, match="Half is not a model backend: it has no 'n_outputs'"):
        _core.as_backend(Half())
    wrapped = _core.as_backend(Recording(model_file.core_model(2)))
    assert isinstance(wrapped, _core.ModelBackend) and wrapped.backend_name == "recording"
    out = wrapped.step(np.array([0, 1], np.int32), np.ones((2, F), np.float32), np.zeros(2, np.uint8))
    direct = model_file.core_model(2).step(np.array([0, 1], np.int32), np.ones((2, F), np.float32), np.zeros(2, np.uint8))
    assert out.tobytes() == direct.tobytes()


def test_a_python_backend_error_reaches_the_caller(model_file, recording_backend):
    class Broken(Recording):
        def step(self, slots, x, reset, out):
            raise RuntimeError("device lost")

    register_backend("recording", lambda m, n: Broken(m.core_model(n)))
    with pytest.raises(RuntimeError, match="device lost"):
        run_backtest(SyntheticMarket(SyntheticConfig(n_instruments=1, n_sessions=1)), BacktestConfig(strategy="ssm", backend="recording"))
