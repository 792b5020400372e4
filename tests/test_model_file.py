"""Model files: safetensors with config, normalizer, softplus threshold and format version in the
metadata; no pickle; malformed or mismatched files refused with a message saying what is wrong."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

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
