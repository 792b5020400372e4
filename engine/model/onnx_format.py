"""The ONNX step file: what `nextick export --format onnx` writes and the onnxruntime backend reads.

One step of the model (the C++ kernel's math, csrc/ssm.hpp) as an ONNX graph with the recurrent
state as explicit inputs and outputs, and a dynamic batch axis ``batch``:

- inputs: ``x`` float32[batch, n_features] (normalized features), ``reset`` uint8[batch] (non-zero:
  the row's states are zeroed inside the graph before the step), then every state of ``state_specs``
  by its ``name``, float32[batch, *shape];
- outputs: ``out`` float32[batch, n_out], then every state's next value by its ``output`` name.

States, layer by layer: mamba2 ``conv_state_{i}`` [d_conv-1, conv_dim] (the raw xBC of the last
d_conv-1 ticks, oldest first; absent when d_conv is 1) and ``ssm_state_{i}`` [d_state, nheads,
headdim]; s4d ``ssm_state_{i}`` [d_state, d_inner]. These are the C++ kernel's layouts (csrc/ssm.hpp:
d_state outermost), so a slot's state means the same floats in the same order on every backend.

The file's metadata_props (strings) say what it was made from, and the backend refuses a file whose
metadata does not match the model file it is asked to run: ``format``, ``format_version``,
``config`` (JSON of SSMConfig), ``source_sha256`` (of the .safetensors file's bytes),
``source_file`` (its name, for messages), ``opset``, ``states`` (JSON of the state specs) and
``exporter``.

The model zoo's kinds (engine/model/zoo_config.py: lstm, gru, mlp, transformer) have no .safetensors:
their .onnx is the model file itself (format ``nextick-model-onnx``), a step graph of the same
contract, with the weights inside and in its metadata what the engine needs to run it: ``format``,
``format_version``, ``kind``, ``config`` (JSON of ZooConfig), ``normalizer``, ``signal``, ``states``,
``opset``, ``exporter`` and ``training``. Their states, in ``state_specs``: lstm ``h_state_{i}`` and
``c_state_{i}`` [d_model], gru ``h_state_{i}`` [d_model], mlp and transformer ``window``
[window, n_features] and ``count`` [1]. The backend reads a state only by its spec (name, output,
shape), so it runs every kind with the same code.

No torch and no onnxruntime here: the export (torch) and the backend (onnxruntime) share this contract.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import msgspec

from engine.model.config import SSMConfig
from engine.model.weights import Normalizer, SignalSpec
from engine.model.zoo_config import ZooConfig

FORMAT = "nextick-ssm-onnx"
FORMAT_VERSION = 1
MODEL_FORMAT = "nextick-model-onnx"  # a zoo model: the .onnx is the model file (weights and metadata)
MODEL_FORMAT_VERSION = 1
OPSET = 18
PARITY_RTOL = 1e-5  # DESIGN.md, The SSM: relative error of outputs and states against the C++ kernel
INPUT_X, INPUT_RESET, OUTPUT = "x", "reset", "out"
BATCH_AXIS = "batch"
CACHE_ENV = "NEXTICK_CACHE_DIR"


class OnnxFileError(ValueError):
    """An ONNX step file that cannot be used; the message names the file and what to do."""


class StateSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One recurrent state of the step graph, per slot."""

    name: str  # graph input
    output: str  # graph output: the state after the step
    layer: int  # 0 for a state of the whole model (the window models' window and count)
    kind: str  # what it holds: mamba2/s4d "conv", "ssm"; lstm "h", "c"; gru "h"; mlp/transformer "window", "count"
    shape: tuple[int, ...]  # per slot, row-major (the SSM's: the C++ kernel's own layout)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def state_specs(cfg: SSMConfig | ZooConfig) -> list[StateSpec]:
    """The states of a config's step graph, layer by layer (conv window first). Each is laid out as
    the C++ kernel stores it, so a slot's state vector (get_state) is the same floats in the same
    order on both backends, and the SSM state keeps d_state outermost: the update and the sum over
    n then run over long contiguous rows (all of d_inner) in ONNX Runtime as in the kernel."""
    if isinstance(cfg, ZooConfig):
        return zoo_state_specs(cfg)
    specs = []
    for i in range(cfg.n_layers):
        if cfg.kind == "mamba2":
            if cfg.d_conv > 1:
                specs.append(StateSpec(name=f"conv_state_{i}", output=f"conv_state_{i}_next", layer=i, kind="conv",
                                       shape=(cfg.d_conv - 1, cfg.conv_dim)))
            specs.append(StateSpec(name=f"ssm_state_{i}", output=f"ssm_state_{i}_next", layer=i, kind="ssm",
                                   shape=(cfg.d_state, cfg.nheads, cfg.headdim)))
        else:
            specs.append(StateSpec(name=f"ssm_state_{i}", output=f"ssm_state_{i}_next", layer=i, kind="ssm",
                                   shape=(cfg.d_state, cfg.d_inner)))
    return specs


def zoo_state_specs(cfg: ZooConfig) -> list[StateSpec]:
    """A zoo model's states (engine/model/zoo_config.py says what each holds)."""
    def spec(name: str, layer: int, kind: str, shape: tuple[int, ...]) -> StateSpec:
        return StateSpec(name=name, output=f"{name}_next", layer=layer, kind=kind, shape=shape)

    if cfg.kind == "lstm":
        return [s for i in range(cfg.n_layers)
                for s in (spec(f"h_state_{i}", i, "h", (cfg.d_model,)), spec(f"c_state_{i}", i, "c", (cfg.d_model,)))]
    if cfg.kind == "gru":
        return [spec(f"h_state_{i}", i, "h", (cfg.d_model,)) for i in range(cfg.n_layers)]
    return [spec("window", 0, "window", (cfg.window, cfg.n_features)), spec("count", 0, "count", (1,))]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata(cfg: SSMConfig, source_path: str | os.PathLike, source_sha256: str, opset: int, exporter: str) -> dict[str, str]:
    enc = msgspec.json.encode
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": enc(cfg).decode(),
        "source_sha256": source_sha256,
        "source_file": Path(source_path).name,
        "opset": str(opset),
        "states": enc(state_specs(cfg)).decode(),
        "exporter": exporter,
    }


def check_metadata(path: str, meta: dict[str, str], cfg: SSMConfig, source_path: str, source_sha256: str) -> list[StateSpec]:
    """The state specs of the ONNX file ``path`` (metadata ``meta``), once it is known to be the
    export of the model file ``source_path`` (bytes hashing to ``source_sha256``, config ``cfg``)."""
    redo = f"re-export it: nextick export --format onnx --model {source_path} --out {path}"
    if meta.get("format") != FORMAT:
        raise OnnxFileError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}: "
                            f"not a nextick step export; {redo}")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise OnnxFileError(f"{path}: format_version {meta.get('format_version')!r}; this nextick reads "
                            f"version {FORMAT_VERSION}; {redo}")
    if meta.get("source_sha256") != source_sha256:
        raise OnnxFileError(
            f"{path}: exported from a model file with SHA-256 {str(meta.get('source_sha256'))[:12]}... "
            f"({meta.get('source_file')}), but {source_path} has SHA-256 {source_sha256[:12]}...: the weights "
            f"changed since the export; {redo}"
        )
    try:
        exported = msgspec.json.decode(meta.get("config", ""), type=SSMConfig)
        specs = msgspec.json.decode(meta.get("states", ""), type=list[StateSpec])
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
        raise OnnxFileError(f"{path}: metadata 'config' or 'states' is invalid ({e}); {redo}") from None
    if exported != cfg:
        raise OnnxFileError(f"{path}: exported for config {exported}, but {source_path} has {cfg}; {redo}")
    if specs != state_specs(cfg):
        raise OnnxFileError(f"{path}: its states {[(s.name, s.shape) for s in specs]} are not those of "
                            f"{cfg.kind} config {cfg}; {redo}")
    return specs


def model_metadata(cfg: ZooConfig, normalizer: Normalizer, signal: SignalSpec, opset: int, exporter: str,
                   training: dict[str, Any] | None = None) -> dict[str, str]:
    """The metadata of a self-contained model file (a zoo kind's .onnx)."""
    enc = msgspec.json.encode
    return {
        "format": MODEL_FORMAT,
        "format_version": str(MODEL_FORMAT_VERSION),
        "kind": cfg.kind,
        "config": enc(cfg).decode(),
        "normalizer": enc(normalizer).decode(),
        "signal": enc(signal).decode(),
        "states": enc(state_specs(cfg)).decode(),
        "opset": str(opset),
        "exporter": exporter,
        "training": enc(training or {}).decode(),
    }


class ModelMetadata(msgspec.Struct, frozen=True, kw_only=True):
    config: ZooConfig
    normalizer: Normalizer
    signal: SignalSpec
    specs: list[StateSpec]
    training: dict[str, Any]


def is_model_file(meta: dict[str, str]) -> bool:
    """Whether an .onnx file's metadata is that of a self-contained model (not an SSM's step export)."""
    return meta.get("format") == MODEL_FORMAT


def read_model_metadata(path: str, meta: dict[str, str]) -> ModelMetadata:
    """What the self-contained model file ``path`` (metadata ``meta``) says about itself, checked:
    the format, a config the zoo can build, and the states that config implies."""
    redo = "retrain it with this version's `nextick train --kind KIND`"
    if meta.get("format") != MODEL_FORMAT:
        hint = (" (an SSM step export: run its .safetensors, --model NAME.safetensors)" if meta.get("format") == FORMAT
                else "")
        raise OnnxFileError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {MODEL_FORMAT!r}: "
                            f"not a nextick model file{hint}")
    if meta.get("format_version") != str(MODEL_FORMAT_VERSION):
        raise OnnxFileError(f"{path}: format_version {meta.get('format_version')!r}; this nextick reads "
                            f"version {MODEL_FORMAT_VERSION}; {redo}")
    fields: dict[str, Any] = {}
    for key, typ in (("config", ZooConfig), ("normalizer", Normalizer), ("signal", SignalSpec),
                     ("states", list[StateSpec]), ("training", dict)):
        if key not in meta:
            raise OnnxFileError(f"{path}: metadata has no {key!r}; {redo}")
        try:
            fields[key] = msgspec.json.decode(meta[key], type=typ)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
            raise OnnxFileError(f"{path}: metadata {key!r} is invalid ({e}); {redo}") from None
    cfg = fields["config"]
    if fields["states"] != state_specs(cfg):
        raise OnnxFileError(f"{path}: its states {[(s.name, s.shape) for s in fields['states']]} are not those of "
                            f"{cfg.kind} config {cfg}; {redo}")
    return ModelMetadata(config=cfg, normalizer=fields["normalizer"], signal=fields["signal"], specs=fields["states"],
                         training=fields["training"])


def sibling_path(model_path: str | os.PathLike) -> Path:
    """Where `nextick export --format onnx` writes by default and the backend looks first:
    ``runs/ssm/model.safetensors`` -> ``runs/ssm/model.onnx``."""
    return Path(model_path).with_suffix(".onnx")


def cache_path(source_sha256: str) -> Path:
    """Where the backend exports a model that has no sibling .onnx (when torch is installed), keyed
    by the model file's SHA-256: ``$NEXTICK_CACHE_DIR`` or ``$XDG_CACHE_HOME/nextick`` (default
    ``~/.cache/nextick``), then ``onnx/<sha256>.v<FORMAT_VERSION>.onnx`` (a newer format exports anew)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nextick")
    return Path(root) / "onnx" / f"{source_sha256}.v{FORMAT_VERSION}.onnx"
