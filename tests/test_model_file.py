"""Model files: safetensors with config, normalizer, softplus threshold and format version in the
metadata; no pickle; malformed or mismatched files refused with a message saying what is wrong."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from engine import _core
from engine.model.config import FEATURE_NAMES, SSMConfig, tensor_shapes
from engine.model.weights import (
    DEFAULT_MODEL_PATH,
    ModelFileError,
    Normalizer,
    SignalSpec,
    load_model,
    save_model,
)

CFG = SSMConfig(d_model=16, n_layers=1, headdim=8, d_state=4)
NORM = Normalizer(names=FEATURE_NAMES, mean=(0.0,) * 5, std=(1.0,) * 5, target_mean=0.0, target_std=2.0)
SIGNAL = SignalSpec(horizon_ticks=10, interval="1s")


def tensors(cfg: SSMConfig = CFG) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in tensor_shapes(cfg).items()}


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(path, tensors(), CFG, NORM, SIGNAL, training={"seed": 1})
    return path


def raw_metadata(path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def test_round_trip(good):
    m = load_model(good)
    assert m.config == CFG and m.normalizer == NORM and m.signal == SIGNAL and m.training == {"seed": 1}
    for k, v in tensors().items():
        assert np.array_equal(m.tensors[k], v)
    meta, _ = raw_metadata(good)
    assert meta["format"] == "nextick-ssm" and meta["format_version"] == "1"
    assert float(meta["softplus_threshold"]) == CFG.softplus_threshold
    assert json.loads(meta["config"])["d_model"] == 16


def test_file_is_a_json_header_and_raw_floats_not_pickle(good):
    data = good.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert "__metadata__" in header
    assert b"\x80\x04" not in data[:2] and not data.startswith(b"PK")  # neither pickle nor a zip (torch.save)


def rewrite(path, meta: dict, arrays: dict) -> None:
    save_file(arrays, str(path), metadata=meta)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m, a: m.update(format="other"), "format"),
        (lambda m, a: m.update(format_version="99"), "format_version '99'"),
        (lambda m, a: m.pop("config"), "no 'config'"),
        (lambda m, a: m.update(config='{"d_model": "wide"}'), "'config' is invalid"),
        (lambda m, a: m.update(softplus_threshold="15.0"), "softplus_threshold"),
        (lambda m, a: a.pop("layers.0.A"), "missing tensors for a mamba2 model: layers.0.A"),
        (lambda m, a: a.update(extra=np.zeros(3, np.float32)), "not in a mamba2 model"),
        (lambda m, a: a.update({"encoder.weight": np.zeros((16, 4), np.float32)}), "encoder.weight has shape (16, 4)"),
        (lambda m, a: a.update({"encoder.bias": np.zeros(16, np.float64)}), "encoder.bias is float64"),
        (lambda m, a: a["head.bias"].__setitem__(0, np.nan), "head.bias holds NaN"),
        (lambda m, a: m.update(normalizer=m["normalizer"].replace("ret_bps", "ret")), "trained on features"),
        (lambda m, a: m.update(normalizer=m["normalizer"].replace('"target_std":2.0', '"target_std":0.0')), "positive"),
    ],
)
def test_mismatched_files_are_refused_with_the_reason(good, tmp_path, mutate, message):
    meta, arrays = raw_metadata(good)
    mutate(meta, arrays)
    bad = tmp_path / "bad.safetensors"
    rewrite(bad, meta, arrays)
    with pytest.raises(ModelFileError) as e:
        load_model(bad)
    assert str(bad) in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_malformed_files_are_refused(good, tmp_path, damage):
    bad = tmp_path / "bad.safetensors"
    data = good.read_bytes()
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a model at all" * 10, "empty": b""}[damage])
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(bad)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nope.safetensors")


def test_the_core_refuses_tensors_that_do_not_fit_the_config():
    from engine import _core

    t = tensors()
    t["layers.0.in_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="in_proj"):
        _core.SsmModel(CFG.core_dict(), t, 1)


def test_packaged_default_model_loads_and_runs():
    m = load_model()
    assert m.path == str(DEFAULT_MODEL_PATH)
    assert m.config == SSMConfig()  # DESIGN.md's default shape
    assert m.training["data"]["source"] == "synthetic" and m.training["data"]["seed"] != 7  # not the demo's market
    core = m.core_model(2)
    out = core.step(np.array([0, 1], np.int32), np.zeros((2, 5), np.float32), np.ones(2, np.uint8))
    assert np.isfinite(out).all()


# --- models too large to run ----------------------------------------------------------------------

# The default config (d_model 64, d_inner 128, 4 heads of 32, d_state 16, d_conv 4, one group, one
# output) asking for 100,000,000 layers. The kernel's weight arena in floats, every row padded to 16:
#   fixed:     encoder 5 x 64 + encoder.bias 64 + norm_f 64 + head 64 x pad16(1) + head.bias 16 = 1,488
#   per layer: norm 64 + in_proj 64 x pad16(2*128 + 2*16 + 4 = 292) = 64 x 304 = 19,456
#              + conv 4 x 160 + conv bias 160 + dt_bias, A, D 3 x 16 + D per element and
#              norm_gated 2 x 128 + out_proj 128 x 64 = 8,192                           = 28,816
#   default (2 layers): (1,488 + 2 x 28,816) x 4 = 236,480 bytes
#   1e8 layers:         (1,488 + 1e8 x 28,816) x 4 = 11,526,400,005,952 bytes
# State per instrument, per layer: conv window 3 x 160 = 480 + SSM state 4 x 32 x 16 = 2,048 = 2,528
# floats; default 2 x 2,528 x 4 = 20,224 bytes; 1e8 layers 1,011,200,000,000 bytes.
HUGE_LAYERS = 100_000_000
HUGE_WEIGHTS = "11,526,400,005,952 bytes"
HUGE_STATE = "1,011,200,000,000 bytes"


def test_footprint_of_the_default_model_by_hand():
    footprint = _core.SsmModel.footprint(SSMConfig().core_dict())
    assert footprint == {"weight_bytes": 236_480, "state_bytes_per_slot": 20_224}


def _limited_address_space() -> None:
    # The child may not take the shared machine's memory with it if the refusal ever regresses.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def test_a_file_asking_for_huge_layers_is_refused_before_any_allocation(tmp_path):
    # Before the limit, loading this 230 KB file built the names of 900M expected tensors and died of
    # MemoryError after ~50 s. In a child with 3 GiB of address space and a timeout, so that a
    # regression fails this test instead of the machine.
    meta, arrays = raw_metadata(DEFAULT_MODEL_PATH)
    meta["config"] = json.dumps(json.loads(meta["config"]) | {"n_layers": HUGE_LAYERS})
    huge = tmp_path / "huge.safetensors"
    rewrite(huge, meta, arrays)
    child = (
        "import sys\n"
        "from engine.model.weights import ModelFileError, load_model\n"
        "try:\n    load_model(sys.argv[1])\n"
        "except ModelFileError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(huge)], capture_output=True, text=True, timeout=120,
                          preexec_fn=_limited_address_space)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout
    assert message.startswith(str(huge)), message
    for part in (f"n_layers={HUGE_LAYERS}", "d_model=64", HUGE_WEIGHTS, "of weights, over the 1.0 GiB limit",
                 HUGE_STATE, "of state per instrument, over the 4.0 GiB limit"):  # fmt: skip
        assert part in message, part


def test_every_way_to_build_a_huge_model_is_refused_with_its_sizes():
    config = SSMConfig().core_dict() | {"n_layers": HUGE_LAYERS}
    # the compiled kernel's own constructor, before it looks at a single tensor
    with pytest.raises(ValueError) as e:
        _core.SsmModel(config, {}, 1)
    assert f"n_layers={HUGE_LAYERS}" in str(e.value) and HUGE_WEIGHTS in str(e.value) and HUGE_STATE in str(e.value)
    # the Python config that training and the benchmarks build
    with pytest.raises(ValueError, match=HUGE_WEIGHTS):
        SSMConfig(n_layers=HUGE_LAYERS)
    # sizes past the kernel's 32-bit ints
    with pytest.raises(ValueError, match=r"config\['d_model'\] = 1099511627776 is out of range"):
        SSMConfig(d_model=2**40)


def test_too_many_instruments_for_the_state_pool_are_refused():
    # 212,400 x 20,224 bytes = 4,295,577,600 bytes, just past 4 GiB (4,294,967,296)
    model = load_model()
    with pytest.raises(ValueError) as e:
        model.core_model(212_400)
    assert "212400 instruments" in str(e.value) and "4,295,577,600 bytes" in str(e.value)
    core = model.core_model(2)
    with pytest.raises(ValueError, match="over the state pool's limit"):
        core.grow(212_400)
    assert core.n_slots == 2  # the pool it had is kept and still steps
    out = core.step(np.array([0, 1], np.int32), np.zeros((2, 5), np.float32), np.ones(2, np.uint8))
    assert np.isfinite(out).all()


@st.composite
def small_configs(draw) -> SSMConfig:
    nheads, headdim = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    ngroups = draw(st.sampled_from([g for g in range(1, nheads + 1) if nheads % g == 0]))
    return SSMConfig(
        kind=draw(st.sampled_from(["mamba2", "s4d"])), d_model=nheads * headdim, expand=1, headdim=headdim,
        n_layers=draw(st.integers(1, 3)), d_state=draw(st.integers(1, 9)), d_conv=draw(st.integers(1, 5)),
        ngroups=ngroups, n_out=draw(st.integers(1, 3)),
    )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(small_configs(), st.integers(0, 5))
def test_footprint_is_what_the_kernel_allocates(cfg, n_slots):
    # The constructor checks that its weight arena is the footprint's to the float (it raises
    # otherwise); the state pool is read back through the state views.
    footprint = _core.SsmModel.footprint(cfg.core_dict())
    model = _core.SsmModel(cfg.core_dict(), tensors(cfg), n_slots)
    state = sum(model.ssm_state(layer).nbytes for layer in range(cfg.n_layers))
    if cfg.kind == "mamba2":
        state += sum(model.conv_state(layer).nbytes for layer in range(cfg.n_layers))
    assert state == n_slots * footprint["state_bytes_per_slot"]
    assert footprint["weight_bytes"] >= sum(t.nbytes for t in tensors(cfg).values())  # plus row padding
