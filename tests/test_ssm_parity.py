"""Parity of the three forms of the SSM (DESIGN.md, The SSM): C++ step vs torch step vs torch
parallel form, fp32, relative error <= 1e-5 on outputs and final states, over the lengths the
contract lists; resets inside the kernel; row results independent of the batch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine import _core  # noqa: E402
from engine.model.config import SSMConfig  # noqa: E402
from engine.model.ssm import SSMModel  # noqa: E402

LENGTHS = [1, 3, 4, 5, 255, 256, 257, 4096]
RTOL = 1e-5
CONFIGS = {
    "mamba2": SSMConfig(),
    "s4d-zoh": SSMConfig(kind="s4d", discretization="zoh"),
    "s4d-bilinear": SSMConfig(kind="s4d", discretization="bilinear"),
}


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the error relative to the tensor's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def make_model(cfg: SSMConfig, seed: int = 0) -> SSMModel:
    torch.manual_seed(seed)
    m = SSMModel(cfg)
    # Non-trivial everything: default inits leave norms at 1 and biases at 0.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith(".D") or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return request.param, make_model(CONFIGS[request.param])


def torch_step_all(m: SSMModel, x: torch.Tensor):
    state = m.empty_state(x.shape[0])
    ys = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = m.step(x[:, t], state)
            ys.append(y)
    return torch.stack(ys, 1), state


def core_run(core, x: np.ndarray, slot: int = 0, reset_at: int | None = None) -> np.ndarray:
    """Step one slot through x [L, F], a row at a time; returns outputs [L, n_out]."""
    L = len(x)
    out = np.empty((L, core.config["n_out"]), np.float32)
    slots = np.array([slot], np.int32)
    for t in range(L):
        reset = np.array([t == 0 or t == reset_at], np.uint8)
        core.step(slots, np.ascontiguousarray(x[t : t + 1]), reset, out[t : t + 1])
    return out


def final_states(core, layer_count: int, slot: int, kind: str) -> list[np.ndarray]:
    states = []
    for layer in range(layer_count):
        if kind == "mamba2":
            states.append(np.array(core.conv_state(layer)[slot]))
        states.append(np.array(core.ssm_state(layer)[slot]))
    return states


def torch_states(state, kind: str) -> list[np.ndarray]:
    out = []
    for layer_state in state:
        for s in layer_state:
            out.append(s[0].numpy())
    return out


@pytest.mark.parametrize("L", LENGTHS)
def test_three_forms_agree(model, L):
    name, m = model
    cfg = m.cfg
    x = torch.randn(1, L, cfg.n_features, generator=torch.Generator().manual_seed(L))
    with torch.no_grad():
        y_par, fin_par = m(x)
    y_step, fin_step = torch_step_all(m, x)
    core = _core.SsmModel(cfg.core_dict(), m.export_tensors(), 1)
    y_core = core_run(core, x[0].numpy())

    assert rel_err(y_step, y_par) <= RTOL, "torch step vs parallel outputs"
    assert rel_err(y_core, y_step[0]) <= RTOL, "C++ step vs torch step outputs"
    assert rel_err(y_core, y_par[0]) <= RTOL, "C++ step vs torch parallel outputs"
    for a, b, c in zip(final_states(core, cfg.n_layers, 0, cfg.kind), torch_states(fin_step, cfg.kind), torch_states(fin_par, cfg.kind)):
        assert a.shape == b.shape == c.shape
        assert rel_err(b, c) <= RTOL, "torch step vs parallel final state"
        assert rel_err(a, b) <= RTOL, "C++ vs torch final state"


@pytest.mark.parametrize("k", [1, 100, 257])
def test_reset_at_k_equals_fresh_run(model, k):
    name, m = model
    cfg = m.cfg
    L = 600
    x = torch.randn(1, L, cfg.n_features, generator=torch.Generator().manual_seed(k))
    core = _core.SsmModel(cfg.core_dict(), m.export_tensors(), 1)
    y_reset = core_run(core, x[0].numpy(), reset_at=k)
    with torch.no_grad():
        y_fresh, _ = m(x[:, k:])
    assert rel_err(y_reset[k:], y_fresh[0]) <= RTOL
    # and the kernel itself: the reset rows are bit-identical to a fresh slot's
    fresh = _core.SsmModel(cfg.core_dict(), m.export_tensors(), 1)
    y_fresh_core = core_run(fresh, x[0, k:].numpy())
    assert np.array_equal(y_reset[k:], y_fresh_core)


def test_row_results_do_not_depend_on_the_batch(model):
    name, m = model
    cfg = m.cfg
    rng = np.random.default_rng(3)
    n, steps, probe = 1024, 20, 517
    tensors = m.export_tensors()
    batch_core = _core.SsmModel(cfg.core_dict(), tensors, n)
    single_core = _core.SsmModel(cfg.core_dict(), tensors, 1)
    slots = rng.permutation(n).astype(np.int32)
    out_b = np.empty((n, cfg.n_out), np.float32)
    out_1 = np.empty((1, cfg.n_out), np.float32)
    for t in range(steps):
        x = rng.standard_normal((n, cfg.n_features)).astype(np.float32)
        reset = (rng.random(n) < 0.05).astype(np.uint8) if t else np.ones(n, np.uint8)
        batch_core.step(slots, x, reset, out_b)
        row = int(np.flatnonzero(slots == probe)[0])
        single_core.step(np.array([0], np.int32), x[row : row + 1].copy(), reset[row : row + 1].copy(), out_1)
        assert np.array_equal(out_b[row], out_1[0]), f"step {t}: row differs between batch 1024 and batch 1"


def test_padding_rows_neither_write_state_nor_output(model):
    name, m = model
    cfg = m.cfg
    core = _core.SsmModel(cfg.core_dict(), m.export_tensors(), 4)
    x = np.random.default_rng(0).standard_normal((3, cfg.n_features)).astype(np.float32)
    core.step(np.array([0, 1, 2], np.int32), x, np.ones(3, np.uint8))
    before = [np.array(core.ssm_state(layer)) for layer in range(cfg.n_layers)]
    out = core.step(np.array([-1, 1, -1], np.int32), x, np.zeros(3, np.uint8))
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all() and np.isfinite(out[1]).all()
    for layer in range(cfg.n_layers):
        after = np.array(core.ssm_state(layer))
        assert np.array_equal(after[[0, 2, 3]], before[layer][[0, 2, 3]])
        assert not np.array_equal(after[1], before[layer][1])


def test_reset_all_and_reset_slot_zero_the_pool():
    m = make_model(CONFIGS["mamba2"])
    core = _core.SsmModel(m.cfg.core_dict(), m.export_tensors(), 2)
    x = np.ones((2, m.cfg.n_features), np.float32)
    core.step(np.array([0, 1], np.int32), x, np.zeros(2, np.uint8))
    core.reset_slot(1)
    assert np.abs(np.array(core.ssm_state(0))[0]).max() > 0
    assert not np.array(core.ssm_state(0))[1].any() and not np.array(core.conv_state(0))[1].any()
    core.reset_all()
    assert not np.array(core.ssm_state(1)).any()


def test_step_refuses_bad_arguments():
    m = make_model(CONFIGS["mamba2"])
    core = _core.SsmModel(m.cfg.core_dict(), m.export_tensors(), 2)
    x = np.zeros((1, m.cfg.n_features), np.float32)
    with pytest.raises((ValueError, IndexError)):
        core.step(np.array([2], np.int32), x, np.zeros(1, np.uint8))  # slot out of range
    with pytest.raises((TypeError, ValueError)):
        core.step(np.array([0], np.int32), x.astype(np.float64), np.zeros(1, np.uint8))  # wrong dtype: no silent copy
    with pytest.raises((TypeError, ValueError)):
        core.step(np.array([0], np.int32), np.zeros((1, 3), np.float32), np.zeros(1, np.uint8))  # wrong width
