"""MC dropout (engine/model/dropout.py): the C++ kernel with N seeded masks, stepped as N rows per
instrument, equals the torch reference with the same masks; the masks are a function of (seed,
variant); every kernel variant computes the same bits with masks; no masks is the plain step."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine import _core  # noqa: E402
from engine.model.config import SSMConfig  # noqa: E402
from engine.model.dropout import dropout_masks  # noqa: E402
from engine.model.ssm import SSMModel  # noqa: E402
from tests.test_ssm_parity import RTOL, make_model, rel_err  # noqa: E402

CONFIGS = {
    "mamba2": SSMConfig(d_model=32, headdim=16, d_state=8, dropout=0.2),
    "s4d": SSMConfig(kind="s4d", d_model=24, d_state=8, dropout=0.3),
}
N_VARIANTS = 5
N_INSTRUMENTS = 3
STEPS = 64


def torch_steps(m: SSMModel, x: torch.Tensor, masks: torch.Tensor | None, reset_at: int | None = None) -> np.ndarray:
    """x [B, L, F] stepped from zero state (zeroed again at reset_at); outputs [B, L, n_out]."""
    state = m.empty_state(x.shape[0])
    ys = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            if t == reset_at:
                state = m.empty_state(x.shape[0])
            y, state = m.step(x[:, t], state, masks)
            ys.append(y)
    return torch.stack(ys, 1).numpy()


def core_steps(core, x: np.ndarray, n_variants: int, reset_at: int | None = None) -> np.ndarray:
    """x [I, L, F]: every instrument as n_variants rows (slot = i * n_variants + v), one step call
    per tick for all of them; outputs [I * n_variants, L, n_out]."""
    n_inst, L, F = x.shape
    rows = n_inst * n_variants
    slots = np.arange(rows, dtype=np.int32)
    out = np.empty((rows, L, core.config["n_out"]), np.float32)
    for t in range(L):
        xt = np.ascontiguousarray(np.repeat(x[:, t], n_variants, axis=0))
        reset = np.full(rows, t == 0 or t == reset_at, np.uint8)
        o = np.empty((rows, core.config["n_out"]), np.float32)
        core.step(slots, xt, reset, o)
        out[:, t] = o
    return out


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return make_model(CONFIGS[request.param], seed=3)


def test_masks_are_seeded_per_variant_and_scaled():
    cfg = CONFIGS["mamba2"]
    a = dropout_masks(cfg, 8, seed=1)
    assert a.shape == (8, cfg.n_layers, cfg.d_model) and a.dtype == np.float32
    assert set(np.unique(a)) == {np.float32(0.0), np.float32(1.0 / 0.8)}
    # Variant v depends on (seed, v) only: a window of variants is a slice of the whole.
    np.testing.assert_array_equal(dropout_masks(cfg, 3, seed=1, first=4), a[4:7])
    assert not np.array_equal(dropout_masks(cfg, 8, seed=2), a)
    # Variants differ from each other; the kept fraction is near 1 - p over many masks.
    assert len({m.tobytes() for m in a}) == 8
    many = dropout_masks(cfg, 400, seed=0)
    assert abs((many > 0).mean() - 0.8) < 0.01


def test_masks_refuse_a_model_without_dropout():
    with pytest.raises(ValueError, match="trained with dropout"):
        dropout_masks(SSMConfig(d_model=16, headdim=8), 4)
    m = dropout_masks(SSMConfig(d_model=16, headdim=8), 2, rate=0.5)  # an explicit rate is allowed
    assert set(np.unique(m)) <= {0.0, 2.0}


@pytest.mark.parametrize("reset_at", [None, 40])
def test_kernel_with_masks_matches_torch(model, reset_at):
    cfg = model.cfg
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N_INSTRUMENTS, STEPS, cfg.n_features)).astype(np.float32)
    masks = dropout_masks(cfg, N_VARIANTS, seed=7)
    core = _core.SsmModel(cfg.core_dict(), model.export_tensors(), N_INSTRUMENTS * N_VARIANTS)
    core.set_dropout_masks(masks)
    assert core.dropout_variants == N_VARIANTS
    got = core_steps(core, x, N_VARIANTS, reset_at)
    # torch: the same rows, each with its variant's mask.
    xr = torch.from_numpy(np.repeat(x, N_VARIANTS, axis=0))
    mr = torch.from_numpy(np.tile(masks, (N_INSTRUMENTS, 1, 1)))
    want = torch_steps(model, xr, mr, reset_at)
    assert rel_err(got, want) <= RTOL
    # The variants really differ (the masks reach the output), and an instrument's variants are
    # the same N networks for every instrument: rows with the same input and variant agree.
    per = got.reshape(N_INSTRUMENTS, N_VARIANTS, STEPS, -1)
    assert np.abs(per[:, 1:] - per[:, :1]).max() > 1e-3
    # The parallel (training) form with the same masks agrees too, away from the reset.
    if reset_at is None:
        with torch.no_grad():
            y_par, _ = model(xr, mr)
        assert rel_err(got, y_par.numpy()) <= RTOL


def test_one_variant_run_equals_its_row_in_an_n_variant_run(model):
    """A backtest of variant v alone (dropout_masks(first=v, n=1)) steps the network row v steps."""
    cfg = model.cfg
    x = np.random.default_rng(2).normal(size=(1, 32, cfg.n_features)).astype(np.float32)
    all_core = _core.SsmModel(cfg.core_dict(), model.export_tensors(), N_VARIANTS)
    all_core.set_dropout_masks(dropout_masks(cfg, N_VARIANTS, seed=5))
    every = core_steps(all_core, x, N_VARIANTS)
    one = _core.SsmModel(cfg.core_dict(), model.export_tensors(), 1)
    one.set_dropout_masks(dropout_masks(cfg, 1, seed=5, first=3))
    np.testing.assert_array_equal(core_steps(one, x, 1)[0], every[3])


def test_clearing_masks_restores_the_plain_step_bit_for_bit(model):
    cfg = model.cfg
    x = np.random.default_rng(4).normal(size=(2, 16, cfg.n_features)).astype(np.float32)
    plain = core_steps(_core.SsmModel(cfg.core_dict(), model.export_tensors(), 2), x, 1)
    core = _core.SsmModel(cfg.core_dict(), model.export_tensors(), 2)
    core.set_dropout_masks(dropout_masks(cfg, 2, seed=0))
    assert not np.array_equal(core_steps(core, x, 1), plain)
    core.set_dropout_masks(np.zeros((0, cfg.n_layers, cfg.d_model), np.float32))
    assert core.dropout_variants == 0
    np.testing.assert_array_equal(core_steps(core, x, 1), plain)
    # All-ones masks are the plain step too (h + 1 * t == h + t exactly).
    core.set_dropout_masks(np.ones((1, cfg.n_layers, cfg.d_model), np.float32))
    np.testing.assert_array_equal(core_steps(core, x, 1), plain)


def test_every_kernel_variant_computes_the_same_bits_with_masks():
    cfg = CONFIGS["mamba2"]
    m = make_model(cfg, seed=9)
    x = np.random.default_rng(6).normal(size=(4, 24, cfg.n_features)).astype(np.float32)
    outs = {}
    for name in _core.SsmModel.kernels():
        core = _core.SsmModel(cfg.core_dict(), m.export_tensors(), 4 * 3)
        core.set_kernel(name)
        core.set_dropout_masks(dropout_masks(cfg, 3, seed=1))
        outs[name] = core_steps(core, x, 3)
    first = next(iter(outs.values()))
    for name, o in outs.items():
        np.testing.assert_array_equal(o, first, err_msg=name)


def test_bad_masks_are_refused_naming_the_shape_or_entry():
    cfg = CONFIGS["mamba2"]
    m = make_model(cfg)
    core = _core.SsmModel(cfg.core_dict(), m.export_tensors(), 2)
    with pytest.raises(ValueError, match="n_layers=2, d_model=32"):
        core.set_dropout_masks(np.ones((2, 3, 32), np.float32))
    bad = np.ones((2, cfg.n_layers, cfg.d_model), np.float32)
    bad[1, 0, 5] = np.nan
    with pytest.raises(ValueError, match="mask 1, layer 0, channel 5"):
        core.set_dropout_masks(bad)
    assert core.dropout_variants == 0  # a refused call changes nothing


def test_training_draws_one_mask_per_sequence():
    """Variational dropout: in training the mask is the same at every tick of a sequence, so the
    parallel form with dropout equals the masked parallel form with the masks it drew."""
    cfg = CONFIGS["mamba2"]
    m = make_model(cfg, seed=1).train()
    x = torch.randn(3, 20, cfg.n_features)
    torch.manual_seed(123)
    y_train, _ = m(x)
    torch.manual_seed(123)
    masks = m.draw_masks(3)
    with torch.no_grad():
        y_masked, _ = m(x, masks)
    torch.testing.assert_close(y_train.detach(), y_masked, rtol=0, atol=0)
    m.eval()
    with torch.no_grad():
        assert not torch.equal(m(x)[0], y_masked)  # eval: no dropout unless masks are given


# -- in the engine ---------------------------------------------------------------------------------

from engine.backtest import BacktestConfig, run_backtest  # noqa: E402
from engine.model.weights import SignalSpec, save_model  # noqa: E402
from feeds.synthetic import SyntheticConfig, SyntheticMarket  # noqa: E402
from tests.test_ssm_engine import NORM, tapped_run  # noqa: E402

ENGINE_MARKET = SyntheticConfig(n_instruments=2, n_sessions=1, calendar="09:30-10:00 America/New_York Mon-Fri",
                                outages_per_session=1.0, outage_s=(70.0, 90.0))


@pytest.fixture(scope="module")
def dropout_model_path(tmp_path_factory):
    m = make_model(SSMConfig(d_model=32, headdim=16, d_state=8, dropout=0.25), seed=5)
    path = tmp_path_factory.mktemp("mc") / "model.safetensors"
    save_model(path, m.export_tensors(), m.cfg, NORM, SignalSpec(horizon_ticks=10, interval="1s"))
    return path


def test_engine_mean_and_std_are_those_of_the_single_variant_runs(dropout_model_path):
    """mc_samples=N in one batched call per tick gives, per tick, the mean and sample std of the N
    runs of one variant each (resets and gaps included)."""
    n = 4
    cfg = BacktestConfig(strategy="none", model=str(dropout_model_path), mc_samples=n, mc_seed=3)
    _, tap = tapped_run(None, cfg, market=ENGINE_MARKET)
    assert np.isfinite(tap["pred_mid"]).all() and (tap["pred_std"] > 0).mean() > 0.99
    singles = []
    for v in range(n):
        _, t = tapped_run(None, BacktestConfig(strategy="none", model=str(dropout_model_path), mc_variant=v, mc_seed=3),
                          market=ENGINE_MARKET)
        np.testing.assert_array_equal(t["ts"], tap["ts"])
        assert (t["pred_std"] == 0).all()
        singles.append(t["pred_mid"])
    singles = np.array(singles)  # [n, ticks]
    np.testing.assert_allclose(tap["pred_mid"], singles.mean(0), rtol=1e-13)
    np.testing.assert_allclose(tap["pred_std"], singles.std(0, ddof=1), rtol=1e-9, atol=1e-12)
    # The model's raw output of the N-variant run is variant 0's.
    _, t0 = tapped_run(None, BacktestConfig(strategy="none", model=str(dropout_model_path), mc_variant=0, mc_seed=3),
                       market=ENGINE_MARKET)
    np.testing.assert_array_equal(tap["out"], t0["out"])


def test_uncertainty_gate_trades_less_and_zero_k_is_the_plain_rule(dropout_model_path):
    def run(**kw):
        params = {"threshold_bps": 0.0, **kw.pop("params", {})}
        cfg = BacktestConfig(strategy="ssm_threshold", strategy_params=params, model=str(dropout_model_path), **kw)
        return run_backtest(SyntheticMarket(ENGINE_MARKET), cfg)

    plain = run(mc_samples=6)
    gated = run(mc_samples=6, params={"uncertainty_k": 2.0})
    assert 0 < len(gated.fills) < len(plain.fills)
    # Deterministic: the same run twice gives the same fills, bit for bit.
    assert run(mc_samples=6).fill_hash() == plain.fill_hash()
    # A different mask seed is a different ensemble.
    assert run(mc_samples=6, mc_seed=1).fill_hash() != plain.fill_hash()


def test_mc_options_are_checked_before_anything_runs(dropout_model_path):
    with pytest.raises(ValueError, match="mc_samples must be 0"):
        BacktestConfig(mc_samples=1)
    with pytest.raises(ValueError, match="excludes mc_samples"):
        BacktestConfig(mc_samples=4, mc_variant=1)
    no_dropout = BacktestConfig(strategy="ssm_threshold", mc_samples=4)  # the packaged model: no dropout
    with pytest.raises(ValueError, match="trained with dropout"):
        run_backtest(SyntheticMarket(ENGINE_MARKET), no_dropout)
    ort = BacktestConfig(strategy="none", model=str(dropout_model_path), mc_samples=4, backend="onnxruntime")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match="runs on the cpu backend"):
        run_backtest(SyntheticMarket(ENGINE_MARKET), ort)
