"""The CUDA backend (engine._core.CudaSsmModel, csrc/cuda) against the CPU kernel.

fp32 must give the CPU kernel's bits: the kernel runs the same IEEE operations in the same order
(csrc/cuda/ssm_cuda_step.hpp), so every output and final state is compared bit for bit, over the
parity lengths, resets, padding rows, repeated slots, batch sizes across the graph buckets, and
the engine's fills; the contract's relative error <= 1e-5 against torch follows and is checked too.

fp16 keeps the four matrices (encoder, in_proj, out_proj, head) in binary16 and everything else in
fp32, so it must give the CPU kernel's bits on those matrices rounded to binary16; its distance from
fp32 is the rounding's effect alone. Tolerance: relative error (max |a - b| / max |b|) <= FP16_RTOL
= 2e-3 on outputs and final states over 4096 steps. Measured on the CPU (the test below re-measures it
on every run, no GPU needed): 1.0e-4 to 5.1e-4 for the three parity configs and the packaged model;
binary16 keeps 11 significant bits (a weight moves by at most 2^-12 of itself, 2.4e-4), the dot
products over 64 to 128 terms average the roundings rather than add them, and the states' decay
keeps old errors from piling up; 2e-3 leaves 4x headroom over the worst case seen.

Tests that need a GPU skip without one, with the reason (the core built without the CUDA backend:
`make core-cuda` builds it; or no device). Run on a GPU machine:
    make core && make core-cuda && .venv/bin/python -m pytest -q tests/test_cuda.py tests/test_backend.py
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import CUDA_DEVICES, needs_cuda_build, needs_cuda_device  # noqa: E402
from engine import _core  # noqa: E402
from engine.backtest import BacktestConfig, run_backtest  # noqa: E402
from engine.model.backend import make_backend  # noqa: E402
from engine.model.weights import load_model  # noqa: E402
from feeds.synthetic import SyntheticConfig, SyntheticMarket  # noqa: E402
from test_ssm_parity import CONFIGS, LENGTHS, RTOL, core_run, make_model, rel_err, torch_step_all  # noqa: E402

FP16_RTOL = 2e-3
MATRICES = ("encoder.weight", "head.weight", ".in_proj.weight", ".out_proj.weight")



def fp16_rounded(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors as the fp16 backend reads them: the matrices through binary16 (round to nearest even)."""
    return {k: v.astype(np.float16).astype(np.float32) if k.endswith(MATRICES) else v for k, v in tensors.items()}


def cuda(cfg: dict, tensors: dict, n_slots: int, **kw):
    return _core.CudaSsmModel(cfg, tensors, n_slots, **kw)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    m = make_model(CONFIGS[request.param])
    return request.param, m.cfg.core_dict(), m.export_tensors(), m


def awkward(rng, n: int, n_slots: int, n_features: int):
    """Padding rows, repeated slots and resets, as tests/test_ssm_isa.py draws them."""
    slots = np.where(rng.random(n) < 0.1, -1, rng.integers(0, n_slots, n)).astype(np.int32)
    x = (3.0 * rng.standard_normal((n, n_features))).astype(np.float32)
    reset = (rng.random(n) > 0.9).astype(np.uint8)
    return slots, x, reset


# --- no GPU needed --------------------------------------------------------------------------------


def test_the_fp16_tolerance_covers_binary16_matrices():
    """FP16_RTOL against what rounding the matrices does, measured with the CPU kernel (which the fp16
    backend must match bit for bit on rounded matrices); the rounding must show (the tolerance is
    not vacuous) and stay within it."""
    packaged = load_model()
    cases = [(c.core_dict(), make_model(c).export_tensors()) for c in CONFIGS.values()]
    cases.append((packaged.config.core_dict(), packaged.tensors))
    x = np.random.default_rng(0).standard_normal((4096, 5)).astype(np.float32)
    for cfg, tensors in cases:
        a, b = _core.SsmModel(cfg, tensors, 1), _core.SsmModel(cfg, fp16_rounded(tensors), 1)
        ya, yb = core_run(a, x), core_run(b, x)
        for got, want in ((yb, ya), (b.get_state(0), a.get_state(0))):
            err = rel_err(got, want)
            assert RTOL < err <= FP16_RTOL, f"{cfg['kind']}: binary16 matrices move the result by {err:.2e}"


@needs_cuda_build
def test_the_constructor_checks_its_arguments_before_it_needs_a_device():
    m = load_model()
    cfg = m.config.core_dict()
    with pytest.raises(ValueError, match='precision must be "fp32" or "fp16", got "fp8"'):
        cuda(cfg, m.tensors, 2, precision="fp8")
    with pytest.raises(ValueError, match=r"rows_per_block must be in \[1, 32\], got 0"):
        cuda(cfg, m.tensors, 2, rows_per_block=0)
    with pytest.raises(ValueError, match="missing tensor 'head.bias'"):
        cuda(cfg, {k: v for k, v in m.tensors.items() if k != "head.bias"}, 2)


@needs_cuda_build
@pytest.mark.skipif(CUDA_DEVICES > 0, reason="this machine has a CUDA device")
def test_without_a_device_the_backend_says_so():
    with pytest.raises(RuntimeError, match="no CUDA device to run on .* use the cpu backend"):
        make_backend("cuda", load_model(), 3)


# --- on a GPU -------------------------------------------------------------------------------------


@needs_cuda_device
@pytest.mark.parametrize("L", LENGTHS)
def test_parity_with_the_cpu_kernel_and_torch(model, L):
    name, cfg, tensors, m = model
    x = torch.randn(1, L, cfg["n_features"], generator=torch.Generator().manual_seed(L))
    cpu, gpu = _core.SsmModel(cfg, tensors, 1), cuda(cfg, tensors, 1)
    y_cpu, y_gpu = core_run(cpu, x[0].numpy()), core_run(gpu, x[0].numpy())
    assert same_bits(y_gpu, y_cpu), f"{name} L={L}: outputs differ from the CPU kernel"
    assert same_bits(gpu.get_state(0), cpu.get_state(0)), f"{name} L={L}: final state differs from the CPU kernel"
    y_step, _ = torch_step_all(m, x)
    assert rel_err(y_gpu, y_step[0]) <= RTOL


@needs_cuda_device
@pytest.mark.parametrize("k", [1, 100, 257])
def test_a_reset_at_k_equals_a_fresh_run(model, k):
    name, cfg, tensors, _ = model
    x = np.random.default_rng(k).standard_normal((600, cfg["n_features"])).astype(np.float32)
    y_reset = core_run(cuda(cfg, tensors, 1), x, reset_at=k)
    y_fresh = core_run(cuda(cfg, tensors, 1), x[k:])
    assert same_bits(y_reset[k:], y_fresh)
    assert same_bits(y_reset, core_run(_core.SsmModel(cfg, tensors, 1), x, reset_at=k))


@needs_cuda_device
def test_a_row_does_not_depend_on_the_batch(model):
    name, cfg, tensors, _ = model
    rng = np.random.default_rng(3)
    n, probe = 1024, 517
    batch, single = cuda(cfg, tensors, n), cuda(cfg, tensors, 1)
    slots = rng.permutation(n).astype(np.int32)
    out_b, out_1 = np.empty((n, cfg["n_out"]), np.float32), np.empty((1, cfg["n_out"]), np.float32)
    for t in range(20):
        x = rng.standard_normal((n, cfg["n_features"])).astype(np.float32)
        reset = (rng.random(n) < 0.05).astype(np.uint8) if t else np.ones(n, np.uint8)
        batch.step(slots, x, reset, out_b)
        row = int(np.flatnonzero(slots == probe)[0])
        single.step(np.array([0], np.int32), x[row : row + 1].copy(), reset[row : row + 1].copy(), out_1)
        assert same_bits(out_b[row], out_1[0]), f"step {t}: row differs between batch 1024 and batch 1"


@needs_cuda_device
def test_awkward_batches_across_every_bucket_match_the_cpu_kernel(model):
    """Padding, repeated slots (waves), resets, batch sizes from 1 to past 1,024 rows."""
    name, cfg, tensors, _ = model
    rng = np.random.default_rng(5)
    n_slots = 1500
    cpu, gpu = _core.SsmModel(cfg, tensors, n_slots), cuda(cfg, tensors, n_slots)
    waves = set()
    for n in [1, 2, 3, 16, 17, 100, 256, 257, 1024, 1025, 1500, 3000, 1, 7]:
        slots, x, reset = awkward(rng, n, n_slots, cfg["n_features"])
        a, b = cpu.step(slots, x, reset), gpu.step(slots, x, reset)
        assert same_bits(b, a), f"{name}: a batch of {n} rows differs from the CPU kernel"
        waves.add(gpu.last_waves)
        assert gpu.last_waves == (np.bincount(slots[slots >= 0]).max() if (slots >= 0).any() else 0)
    assert max(waves) > 1, "no batch repeated a slot: the waves went untested"
    for s in range(n_slots):
        assert same_bits(gpu.get_state(s), cpu.get_state(s)), f"{name}: slot {s}'s final state differs"


@needs_cuda_device
def test_padding_rows_write_nothing():
    m = load_model()
    cfg = m.config.core_dict()
    gpu = cuda(cfg, m.tensors, 4)
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    gpu.step(np.array([0, 1, 2], np.int32), x, np.ones(3, np.uint8))
    before = [gpu.get_state(s) for s in range(4)]
    out = gpu.step(np.array([-1, 1, -1], np.int32), x, np.array([1, 0, 1], np.uint8))
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all() and np.isfinite(out[1]).all()
    for s in (0, 2, 3):
        assert same_bits(gpu.get_state(s), before[s])
    assert not same_bits(gpu.get_state(1), before[1])


@needs_cuda_device
def test_one_graph_per_bucket_replayed_and_recaptured_after_the_pool_moves():
    m = load_model()
    cfg = m.config.core_dict()
    cpu, gpu = _core.SsmModel(cfg, m.tensors, 2000), cuda(cfg, m.tensors, 2000)
    rng = np.random.default_rng(1)

    def both(n):
        slots = rng.permutation(cpu.n_slots)[:n].astype(np.int32)
        x = rng.standard_normal((n, 5)).astype(np.float32)
        reset = np.zeros(n, np.uint8)
        assert same_bits(gpu.step(slots, x, reset), cpu.step(slots, x, reset))

    assert gpu.graphs == 0
    for n in (1, 1, 5, 16, 1, 17, 300, 1024, 1025, 2000):
        both(n)
    assert gpu.graphs == 5  # buckets 1, 16, 256, 1024, 2048
    cpu.grow(2100)
    gpu.grow(2100)
    assert gpu.graphs == 0 and gpu.n_slots == 2100
    both(2100)
    both(1)
    assert gpu.graphs == 2
    for s in (0, 1999, 2099):
        assert same_bits(gpu.get_state(s), cpu.get_state(s))
    gpu.resize(3)
    assert gpu.n_slots == 3 and not any(gpu.get_state(s).any() for s in range(3))


@needs_cuda_device
def test_a_slot_moves_between_the_cpu_and_the_gpu():
    m = load_model()
    cfg = m.config.core_dict()
    cpu, gpu = _core.SsmModel(cfg, m.tensors, 3), cuda(cfg, m.tensors, 5)
    assert gpu.state_size == cpu.state_size
    rng = np.random.default_rng(2)
    one = np.zeros(1, np.uint8)
    for _ in range(20):
        cpu.step(np.array([1], np.int32), rng.standard_normal((1, 5)).astype(np.float32), one)
    gpu.set_state(4, cpu.get_state(1))
    assert same_bits(gpu.get_state(4), cpu.get_state(1))
    for _ in range(10):
        x = rng.standard_normal((1, 5)).astype(np.float32)
        assert same_bits(gpu.step(np.array([4], np.int32), x, one), cpu.step(np.array([1], np.int32), x, one))
    cpu.set_state(0, gpu.get_state(4))
    x = rng.standard_normal((1, 5)).astype(np.float32)
    assert same_bits(cpu.step(np.array([0], np.int32), x, one), gpu.step(np.array([4], np.int32), x, one))
    gpu.reset_slot(4)
    assert not gpu.get_state(4).any()
    gpu.set_state(2, cpu.get_state(1))
    gpu.reset_all()
    assert not any(gpu.get_state(s).any() for s in range(5))


@needs_cuda_device
def test_fp16_is_the_cpu_kernel_on_binary16_matrices_and_within_its_tolerance(model):
    name, cfg, tensors, _ = model
    x = np.random.default_rng(11).standard_normal((4096, cfg["n_features"])).astype(np.float32)
    half = cuda(cfg, tensors, 1, precision="fp16")
    assert half.precision == "fp16"
    rounded_cpu, full_cpu = _core.SsmModel(cfg, fp16_rounded(tensors), 1), _core.SsmModel(cfg, tensors, 1)
    y_half, y_rounded, y_full = core_run(half, x), core_run(rounded_cpu, x), core_run(full_cpu, x)
    assert same_bits(y_half, y_rounded) and same_bits(half.get_state(0), rounded_cpu.get_state(0))
    assert rel_err(y_half, y_full) <= FP16_RTOL
    assert rel_err(half.get_state(0), full_cpu.get_state(0)) <= FP16_RTOL


@needs_cuda_device
def test_the_engine_makes_the_same_fills_on_the_gpu():
    market = SyntheticConfig(n_instruments=3, n_sessions=2, alpha_strength=3.0, seed=11)
    cpu = run_backtest(SyntheticMarket(market), BacktestConfig(strategy="ssm", backend="cpu"))
    gpu = run_backtest(SyntheticMarket(market), BacktestConfig(strategy="ssm", backend="cuda"))
    assert len(cpu.fills) > 0 and gpu.fill_hash() == cpu.fill_hash()


@needs_cuda_device
def test_bad_calls_are_refused_before_anything_is_written():
    m = load_model()
    gpu = cuda(m.config.core_dict(), m.tensors, 2)
    gpu.step(np.array([0, 1], np.int32), np.ones((2, 5), np.float32), np.ones(2, np.uint8))
    before = [gpu.get_state(s) for s in range(2)]
    out = np.full((2, 1), 7.0, np.float32)
    with pytest.raises(IndexError, match="row 1 has slot 2 >= n_slots 2"):
        gpu.step(np.array([0, 2], np.int32), np.ones((2, 5), np.float32), np.ones(2, np.uint8), out)
    assert (out == 7.0).all() and all(same_bits(gpu.get_state(s), before[s]) for s in range(2))
    with pytest.raises(IndexError):
        gpu.get_state(2)
    with pytest.raises(IndexError):
        gpu.set_state(-1, before[0])
    with pytest.raises(ValueError):
        gpu.resize(-1)
    with pytest.raises((TypeError, ValueError)):
        gpu.step(np.array([0], np.int32), np.ones((1, 5), np.float64), np.zeros(1, np.uint8))
