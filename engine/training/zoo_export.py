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
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from engine.model.onnx_export import _quiet_exporter
from engine.model.onnx_format import BATCH_AXIS, INPUT_RESET, INPUT_X, OPSET, OUTPUT, model_metadata, state_specs
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
    specs = state_specs(cfg)
    step = ZooStep(model).eval()
    batch = torch.export.Dim(BATCH_AXIS)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            step,
            example_inputs(cfg, 3),
            input_names=[INPUT_X, INPUT_RESET, *(s.name for s in specs)],
            output_names=[OUTPUT, *(s.output for s in specs)],
            opset_version=opset,
            dynamic_shapes=({0: batch}, {0: batch}, tuple({0: batch} for _ in specs)),  # *states is one argument
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's notes: source lines and paths of this checkout
        del node.metadata_props[:]
        node.doc_string = ""
    exporter = f"torch.onnx (dynamo) {torch.__version__}, onnx {onnx.__version__}"
    del proto.metadata_props[:]
    for key, value in model_metadata(cfg, normalizer, signal, opset, exporter, training).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
