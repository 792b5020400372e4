"""Model files: safetensors weights plus the metadata needed to run them, and their loading into the
compiled step kernel. No torch and no pickle: a file is a JSON header and raw float32 tensors.

Metadata keys (all strings, as safetensors requires):

- ``format`` = "nextick-ssm", ``format_version`` = FORMAT_VERSION
- ``config``: JSON of ``SSMConfig``
- ``normalizer``: JSON of ``Normalizer`` (feature names, mean, std; target mean and std)
- ``softplus_threshold``: the threshold the kernel must use (also in the config; they must agree)
- ``signal``: JSON of ``SignalSpec`` (horizon, interval, what the output means)
- ``training``: free-form JSON describing the run that made the file (data, seed, split, scores)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.model.config import FEATURE_NAMES, SSMConfig, tensor_shapes

FORMAT = "nextick-ssm"
FORMAT_VERSION = 1
DEFAULT_MODEL_PATH = Path(__file__).with_name("default.safetensors")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong."""


class Normalizer(msgspec.Struct, frozen=True, kw_only=True):
    """Feature scaling fitted on the training period only: x = (f - mean) / std, then float32."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    target_mean: float  # model output * target_std + target_mean = log-return to the horizon, bps
    target_std: float

    def apply(self, features: np.ndarray) -> np.ndarray:
        """[n, F] float64 -> [n, F] float32, the same IEEE operations as csrc/backtester.cpp."""
        return ((features - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)


class SignalSpec(msgspec.Struct, frozen=True, kw_only=True):
    horizon_ticks: int  # K: the output predicts the mid K ticks ahead
    interval: str  # the conflation interval the model was trained on ("1s", "100ms", "raw")
    target: str = "log_return_bps"


class ModelFile(msgspec.Struct, kw_only=True):
    path: str
    config: SSMConfig
    normalizer: Normalizer
    signal: SignalSpec
    tensors: dict[str, np.ndarray]
    training: dict[str, Any] = msgspec.field(default_factory=dict)

    def core_model(self, n_slots: int = 1):
        """The compiled kernel (engine._core.SsmModel) with these weights and ``n_slots`` zeroed slots."""
        from engine import _core

        return _core.SsmModel(self.config.core_dict(), self.tensors, n_slots)


def save_model(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    config: SSMConfig,
    normalizer: Normalizer,
    signal: SignalSpec,
    training: dict[str, Any] | None = None,
) -> None:
    from safetensors.numpy import save_file

    _check(str(path), config, normalizer, tensors)
    enc = msgspec.json.encode
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": enc(config).decode(),
        "normalizer": enc(normalizer).decode(),
        "softplus_threshold": repr(config.softplus_threshold),
        "signal": enc(signal).decode(),
        "training": enc(training or {}).decode(),
    }
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path), metadata=metadata)


def load_model(path: str | os.PathLike | None = None) -> ModelFile:
    """Read and check a model file (the packaged default when ``path`` is None). A ``.onnx`` path is
    a zoo model's file (LSTM, GRU, MLP, Transformer: engine/model/onnx_model.py), which runs on the
    onnxruntime backend and stands where a ModelFile does."""
    from safetensors import SafetensorError, safe_open

    p = str(path if path is not None else DEFAULT_MODEL_PATH)
    if p.endswith(".onnx"):
        from engine.model.onnx_model import load_onnx_model

        return load_onnx_model(p)  # type: ignore[return-value]
    if not os.path.isfile(p):
        hint = " (the packaged default is missing: reinstall, or run `nextick train`)" if path is None else ""
        raise ModelFileError(f"{p}: no such model file{hint}")
    try:
        with safe_open(p, framework="numpy") as f:
            meta = f.metadata() or {}
            # The metadata and the header's shapes are checked before any tensor is read: a file
            # whose config or tensors are too large is refused without allocating them.
            config, normalizer, signal, training = _read_metadata(p, meta)
            _check_shapes(p, config, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{p}: not a readable safetensors file ({e})") from None
    _check(p, config, normalizer, tensors)
    return ModelFile(path=p, config=config, normalizer=normalizer, signal=signal, tensors=tensors, training=training)


def _read_metadata(p: str, meta: dict[str, str]) -> tuple[SSMConfig, Normalizer, SignalSpec, dict[str, Any]]:
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{p}: metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}; not a nextick model")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ModelFileError(
            f"{p}: format_version {version!r}; this nextick reads version {FORMAT_VERSION}. "
            "Re-export it with this version's `nextick train`."
        )
    config = _decode(p, meta, "config", SSMConfig)  # SSMConfig refuses sizes past the kernel's memory limits
    normalizer = _decode(p, meta, "normalizer", Normalizer)
    signal = _decode(p, meta, "signal", SignalSpec)
    training = _decode(p, meta, "training", dict) if "training" in meta else {}
    try:
        threshold = float(meta.get("softplus_threshold", "nan"))
    except ValueError:
        threshold = math.nan
    if threshold != config.softplus_threshold:
        raise ModelFileError(
            f"{p}: softplus_threshold {meta.get('softplus_threshold')!r} disagrees with the config's "
            f"{config.softplus_threshold}"
        )
    return config, normalizer, signal, training


def _decode(path: str, meta: dict[str, str], key: str, typ: type) -> Any:
    if key not in meta:
        raise ModelFileError(f"{path}: metadata has no {key!r}")
    try:
        return msgspec.json.decode(meta[key], type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
        raise ModelFileError(f"{path}: metadata {key!r} is invalid: {e}") from None


def check_normalizer(path: str, n_features: int, normalizer: Normalizer) -> None:
    """The model's features are the engine's (FEATURE_NAMES, in order), with a usable normalizer."""
    if tuple(normalizer.names) != FEATURE_NAMES:
        raise ModelFileError(
            f"{path}: the model was trained on features {list(normalizer.names)}; this engine computes "
            f"{list(FEATURE_NAMES)}. Retrain with `nextick train`."
        )
    if n_features != len(FEATURE_NAMES):
        raise ModelFileError(f"{path}: config.n_features is {n_features}, the engine computes {len(FEATURE_NAMES)}")
    for name, vals in (("mean", normalizer.mean), ("std", normalizer.std)):
        if len(vals) != len(FEATURE_NAMES):
            raise ModelFileError(f"{path}: normalizer.{name} has {len(vals)} values for {len(FEATURE_NAMES)} features")
        if not all(math.isfinite(v) for v in vals):
            raise ModelFileError(f"{path}: normalizer.{name} holds a non-finite value")
    if not all(v > 0 for v in normalizer.std) or not normalizer.target_std > 0:
        raise ModelFileError(f"{path}: normalizer standard deviations must be positive")


def _check(path: str, config: SSMConfig, normalizer: Normalizer, tensors: dict[str, np.ndarray]) -> None:
    check_normalizer(path, config.n_features, normalizer)
    _check_shapes(path, config, {name: tuple(t.shape) for name, t in tensors.items()})
    for name, t in tensors.items():
        if t.dtype != np.float32:
            raise ModelFileError(f"{path}: tensor {name} is {t.dtype}, expected float32")
        if not np.isfinite(t).all():
            raise ModelFileError(f"{path}: tensor {name} holds NaN or infinite values")


def _check_shapes(path: str, config: SSMConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Exactly the tensors ``config`` implies, each of its shape."""
    expected = tensor_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise ModelFileError(f"{path}: missing tensors for a {config.kind} model: {', '.join(missing)}")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise ModelFileError(f"{path}: tensors not in a {config.kind} model of this config: {', '.join(extra)}")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise ModelFileError(f"{path}: tensor {name} has shape {shapes[name]}, config implies {shape}")
