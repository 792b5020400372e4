"""Shapes of the model zoo's non-SSM signal models: LSTM, GRU, MLP and Transformer.

The torch modules are engine/training/zoo.py; they train on the SSM's features and target and run in
the engine from their ONNX export (engine/model/onnx_model.py) through the ``onnxruntime`` backend.
No torch here: the runtime reads this from the .onnx file's metadata.

Every kind keeps the SSM's step semantics, a per-slot state that a reset zeroes:

- ``lstm``: per layer ``h`` and ``c`` [d_model]; ``gru``: per layer ``h`` [d_model];
- ``mlp`` and ``transformer``: the ``window`` of the last ``window`` input rows [window, n_features]
  (oldest first) and a ``count`` [1] of the rows seen since the reset (capped at ``window``): after a
  reset the model sees only ticks since the reset, as the SSM after a session boundary or a gap.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from engine.model.config import FEATURE_NAMES

ZOO_KINDS: tuple[str, ...] = ("lstm", "gru", "mlp", "transformer")
WINDOW_KINDS: tuple[str, ...] = ("mlp", "transformer")

# The largest model the zoo builds: the ONNX file holds the weights, and a slot's state is copied in
# and out at every step. Beyond these something was mistyped.
MAX_PARAMETERS = 50_000_000
MAX_STATE_FLOATS = 1_000_000
ZOO_WINDOW = 32  # default window of the mlp and transformer, ticks
ZOO_HEADS = 4  # default attention heads of the transformer


class ZooConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Shape of a zoo model. ``window``, ``n_heads`` and ``ff_mult`` mean something only to the kinds
    that use them (mlp/transformer; transformer; transformer)."""

    kind: Literal["lstm", "gru", "mlp", "transformer"]
    n_features: int = len(FEATURE_NAMES)
    d_model: int = 64  # hidden width: LSTM/GRU hidden size, MLP layer width, Transformer residual stream
    n_layers: int = 2
    window: int = ZOO_WINDOW  # mlp, transformer: the last W ticks the model sees
    n_heads: int = ZOO_HEADS  # transformer
    ff_mult: int = 2  # transformer: feed-forward width = ff_mult * d_model
    n_out: int = 1
    norm_eps: float = 1e-5  # transformer's LayerNorm

    def __post_init__(self) -> None:
        flags = {"d_model": "--d-model", "n_layers": "--n-layers", "window": "--window", "n_heads": "--n-heads",
                 "ff_mult": "ff_mult", "n_features": "n_features", "n_out": "n_out"}
        for name, flag in flags.items():
            if getattr(self, name) < 1:
                raise ValueError(f"{self.kind} model: {flag} must be >= 1, got {getattr(self, name)}")
        if self.kind == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"transformer model: --d-model {self.d_model} is not a multiple of --n-heads "
                             f"{self.n_heads}; pick a d_model divisible by the head count")
        if self.parameter_count() > MAX_PARAMETERS:
            raise ValueError(f"{self.kind} model: {self.parameter_count():,} parameters, over the zoo's "
                             f"{MAX_PARAMETERS:,}; lower --d-model, --n-layers or --window")
        if self.state_floats() > MAX_STATE_FLOATS:
            raise ValueError(f"{self.kind} model: {self.state_floats():,} floats of state per instrument, over "
                             f"{MAX_STATE_FLOATS:,}; lower --window or --d-model")

    @property
    def d_ff(self) -> int:
        return self.ff_mult * self.d_model

    def state_floats(self) -> int:
        if self.kind == "lstm":
            return 2 * self.n_layers * self.d_model
        if self.kind == "gru":
            return self.n_layers * self.d_model
        return self.window * self.n_features + 1

    def parameter_count(self) -> int:
        """Weights of the model this config describes (engine/training/zoo.py), head included."""
        D, F, W = self.d_model, self.n_features, self.window
        head = D * self.n_out + self.n_out
        if self.kind in ("lstm", "gru"):
            gates = 4 if self.kind == "lstm" else 3
            first = gates * D * (F + D) + 2 * gates * D
            return first + (self.n_layers - 1) * (gates * D * 2 * D + 2 * gates * D) + head
        if self.kind == "mlp":
            return (W * F + W) * D + D + (self.n_layers - 1) * (D * D + D) + head
        layer = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (D * self.d_ff + self.d_ff) + (self.d_ff * D + D)
        return F * D + D + W * D + self.n_layers * layer + 2 * D + head
