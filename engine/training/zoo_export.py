"""ONNX export of a zoo model (engine/training/zoo.py): the model file of an LSTM, GRU, MLP or
Transformer is its step graph (torch; the runtime reads the file with onnxruntime alone).

The graph is onnx_format's contract, the SSM's: inputs ``x`` float32[batch, n_features] and ``reset``
uint8[batch] (non-zero: the row's states are zeroed inside the graph before the step), then the
states of ``onnx_format.state_specs(cfg)``; outputs ``out`` float32[batch, n_out] and each state's
next value; ``batch`` is a dynamic axis. The metadata (``onnx_format.model_metadata``) holds the
config, the normalizer, the signal and the training run, so the .onnx alone runs in the engine:
``nextick backtest --strategy ssm --model runs/lstm/model.onnx --backend onnxruntime``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.model.onnx_export import export_step
from engine.model.onnx_format import OPSET, model_metadata, state_specs
from engine.model.weights import Normalizer, SignalSpec
from engine.model.zoo_config import ZooConfig


class ZooStep(nn.Module):
    """(x [B, F], reset [B], *states) -> (out [B, n_out], *next states): the model's ``step`` after
    the reset rows' states are zeroed."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.specs = state_specs(model.cfg)

    def forward(self, x: torch.Tensor, reset: torch.Tensor, *states: torch.Tensor):
        keep = reset == 0  # [B]
        # where(), not a product: a state that went NaN or infinite is cleared too
        states = [torch.where(keep.reshape((-1,) + (1,) * len(s.shape)), state, torch.zeros((), dtype=state.dtype))
                  for s, state in zip(self.specs, states)]
        out, new_states = self.model.step(x, list(states))
        return (out, *new_states)


def example_inputs(cfg: ZooConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the step graph at ``batch`` rows, half of them reset; counts in 0..window."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.n_features, generator=g)
    reset = (torch.arange(batch) % 2).to(torch.uint8)
    states = []
    for s in state_specs(cfg):
        if s.kind == "count":
            states.append(torch.randint(0, cfg.window + 1, (batch, 1), generator=g).to(torch.float32))
        else:
            states.append(torch.randn(batch, *s.shape, generator=g))
    return (x, reset, *states)


def export_zoo_onnx(model: nn.Module, normalizer: Normalizer, signal: SignalSpec, out_path: str | os.PathLike, *,
                    training: dict[str, Any] | None = None, opset: int = OPSET) -> Path:
    """Write ``model``'s step graph with its metadata to ``out_path`` (checked by onnx.checker) and
    return the path. The file appears whole or not at all."""
    cfg: ZooConfig = model.cfg
    return export_step(ZooStep(model).eval(), example_inputs(cfg, 3), state_specs(cfg), out_path, opset=opset,
                       meta=lambda exporter: model_metadata(cfg, normalizer, signal, opset, exporter, training))
