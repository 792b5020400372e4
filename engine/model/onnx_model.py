"""A zoo model's file: its .onnx (engine/model/onnx_format.py, format ``nextick-model-onnx``), which
holds the step graph with its weights, and in its metadata the config, the feature normalizer, the
signal (horizon, interval) and the training run. ``load_model`` (engine/model/weights.py) opens any
``.onnx`` path through here, so ``--model runs/lstm/model.onnx`` works wherever a model file does; such
a model runs on the ``onnxruntime`` backend. Needs onnxruntime (the ``onnx`` extra), never torch.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from engine.model.onnx_format import OnnxFileError, StateSpec, read_model_metadata
from engine.model.weights import ModelFileError, Normalizer, SignalSpec, check_normalizer
from engine.model.zoo_config import ZooConfig

ONNX_SUFFIX = ".onnx"


class OnnxModelFile(msgspec.Struct, kw_only=True):
    """A model whose file is its ONNX step graph. Stands where a ModelFile does (path, config,
    normalizer, signal, training); ``specs`` are its graph's states."""

    path: str
    config: ZooConfig
    normalizer: Normalizer
    signal: SignalSpec
    specs: list[StateSpec]
    training: dict[str, Any] = msgspec.field(default_factory=dict)

    backends: tuple[str, ...] = ("onnxruntime",)  # the model backends that run it (engine/model/backend.py)

    def core_model(self, n_slots: int = 1):
        raise ValueError(self.wrong_backend("cpu"))

    def wrong_backend(self, name: str) -> str:
        return (f"{self.path} is a {self.config.kind} model in ONNX, which --backend {name} does not run: "
                f"use --backend {' or '.join(self.backends)}")


def load_onnx_model(path: str | os.PathLike) -> OnnxModelFile:
    """Read and check a zoo model's .onnx: its metadata only (ONNX Runtime opens the graph when a
    backend runs it)."""
    from engine.model.onnx_backend import import_onnxruntime

    p = str(path)
    if not os.path.isfile(p):
        raise ModelFileError(f"{p}: no such model file")
    ort = import_onnxruntime()
    try:
        # Only the metadata is wanted: no graph optimization, the CPU provider.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        meta = ort.InferenceSession(p, options, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    except Exception as e:  # ONNX Runtime raises its own exception types for unreadable files
        raise OnnxFileError(f"{p}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None
    info = read_model_metadata(p, meta)
    if info.config.n_features != len(info.normalizer.names):
        raise ModelFileError(f"{p}: config.n_features is {info.config.n_features}, the normalizer has "
                             f"{len(info.normalizer.names)} features")
    check_normalizer(p, info.config.n_features, info.normalizer)
    return OnnxModelFile(path=p, config=info.config, normalizer=info.normalizer, signal=info.signal, specs=info.specs,
                         training=info.training)
