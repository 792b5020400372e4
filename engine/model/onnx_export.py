"""ONNX export of one SSM step: `nextick export --format onnx`. Imports torch: export only, never the runtime.

``KernelStep`` is the C++ kernel's step (the spec in csrc/ssm.hpp's SsmModel comment) written in
torch on a model file's tensors exactly as exported for the kernel (A = -exp(A_log) and s4d's
dA/dB already computed in float64 and rounded once), so the graph runs the same weights as the
kernel, not a re-derivation of them. Sums and products keep the kernel's order where the graph
spells them out (the conv taps, the state update and its sum over n, the gate); the matrix products,
the norms' sums of squares and exp/log are ONNX Runtime's own, so results agree with the kernel to
float32 rounding, not bit for bit.

The graph's inputs, outputs, state layout and metadata are engine/model/onnx_format.py's contract.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxscript  # noqa: F401  torch.onnx's exporter translates with it: missing, fail at import, where the CLI names the extra
import torch
from torch import nn

from engine.model.config import SSMConfig
from engine.model.onnx_format import (
    BATCH_AXIS,
    INPUT_RESET,
    INPUT_X,
    OPSET,
    OUTPUT,
    StateSpec,
    file_sha256,
    metadata,
    state_specs,
)
from engine.model.weights import ModelFile

# Above this exp(v) overflows float32; softplus(v) rounds to v long before (the kernel's vmath.hpp).
_SOFTPLUS_OVERFLOW = 88.0


def silu(v: torch.Tensor) -> torch.Tensor:
    """v / (1 + exp(-v)), the kernel's formula (not Sigmoid: ORT's is an approximation)."""
    return v / (1.0 + torch.exp(-v))


def softplus(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """The kernel's softplus: v above ``threshold`` (and above exp's overflow), else log1p(exp(v)).

    ONNX has no Log1p, and log(1 + w) loses the digits of a small w (dt near 1e-3 comes from
    v near -7: a relative error of 6e-5, past the parity tolerance); ORT's Softplus computes
    log(exp(v) + 1) the same way. log1p(w) = log(u) * w / (u - 1) with u = 1 + w is accurate to a
    few ulps (Goldberg 1991), and exactly w where u rounds to 1."""
    w = torch.exp(v)
    u = 1.0 + w
    log1p = torch.where(u == 1.0, w, torch.log(u) * (w / (u - 1.0)))
    return torch.where(v > threshold, v, torch.where(v > _SOFTPLUS_OVERFLOW, v, log1p))


def sum_in_order(terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """((t0 + t1) + t2) + ...: the kernel's sum over the state index n, spelled out. ReduceSum would
    pick its order by the tensor's shape, so a row's bits would depend on the batch around it."""
    return functools.reduce(operator.add, terms)


class KernelStep(nn.Module):
    """One step of the kernel: (x, reset, *states) -> (out, *next states), states as onnx_format.state_specs."""

    def __init__(self, cfg: SSMConfig, tensors: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.cfg = cfg
        self.specs = state_specs(cfg)
        self._names = {}
        for name, t in tensors.items():
            attr = name.replace(".", "_")
            self._names[name] = attr
            self.register_buffer(attr, torch.from_numpy(np.array(t, dtype=np.float32)))

    def t(self, name: str) -> torch.Tensor:
        return getattr(self, self._names[name])

    def rmsnorm(self, v: torch.Tensor, weight: str) -> torch.Tensor:
        # the kernel's rms_inv: 1 / sqrt(sum(v*v) / n + eps), then (v * scale) * w
        inv = 1.0 / torch.sqrt((v * v).sum(-1, keepdim=True) / v.shape[-1] + self.cfg.norm_eps)
        return (v * inv) * self.t(weight)

    def forward(self, x: torch.Tensor, reset: torch.Tensor, *states: torch.Tensor):
        cfg = self.cfg
        keep = reset == 0
        # A reset row's states are zero before its step: where(), not a product, so a state that
        # went NaN or infinite is cleared too.
        states = [torch.where(keep.reshape((-1,) + (1,) * len(s.shape)), state, torch.zeros((), dtype=state.dtype))
                  for s, state in zip(self.specs, states)]
        h = torch.nn.functional.linear(x, self.t("encoder.weight"), self.t("encoder.bias"))
        new_states: list[torch.Tensor] = []
        for i in range(cfg.n_layers):
            p = f"layers.{i}."
            layer_states = [state for s, state in zip(self.specs, states) if s.layer == i]
            u = self.rmsnorm(h, p + "norm.weight")
            v = torch.nn.functional.linear(u, self.t(p + "in_proj.weight"))
            y, layer_states = (self.mamba2 if cfg.kind == "mamba2" else self.s4d)(p, v, *layer_states)
            new_states += layer_states
            h = h + torch.nn.functional.linear(y, self.t(p + "out_proj.weight"))
        out = torch.nn.functional.linear(self.rmsnorm(h, "norm_f.weight"), self.t("head.weight"), self.t("head.bias"))
        return (out, *new_states)

    def mamba2(self, p: str, v: torch.Tensor, *states: torch.Tensor):
        """states: the conv window (none when d_conv is 1), then S [B, N, H, P] as the kernel stores
        it; the update runs per (n, group) over the group's heads * headdim contiguous elements,
        with per-element factors as the kernel's daf and xdt."""
        conv, S = states if len(states) == 2 else (None, states[0])
        cfg = self.cfg
        E, C, H, P, N, G, K = cfg.d_inner, cfg.conv_dim, cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups, cfg.d_conv
        run = E // G  # the elements of one group's heads
        z, xbc, dt_raw = v[:, :E], v[:, E : E + C], v[:, E + C :]
        w = self.t(p + "conv1d.weight")  # [C, K]: tap k multiplies the input k ticks before the newest
        acc = self.t(p + "conv1d.bias")
        for k in range(K - 1):  # oldest first, then the new input: the kernel's order of the sum
            acc = acc + w[:, k] * conv[:, k]
        acc = acc + w[:, K - 1] * xbc
        a = silu(acc)
        xs = a[:, :E]
        Bn = a[:, E : E + G * N].reshape(-1, G, N).transpose(1, 2)[..., None]  # [B, N, G, 1]
        Cn = a[:, E + G * N :].reshape(-1, G, N).transpose(1, 2)[..., None]
        dt = softplus(dt_raw + self.t(p + "dt_bias"), cfg.softplus_threshold)  # [B, H]
        da = torch.exp(dt * self.t(p + "A"))
        da_e = da[:, :, None].expand(-1, H, P).reshape(-1, 1, G, run)
        xd = (dt[:, :, None] * xs.reshape(-1, H, P)).reshape(-1, 1, G, run)
        # The sum is formed in the state's own shape: a graph output made by a Reshape is a copy.
        S = (S.reshape(-1, N, G, run) * da_e).reshape(-1, N, H, P) + (xd * Bn).reshape(-1, N, H, P)
        y = sum_in_order((S.reshape(-1, N, G, run) * Cn).split(1, dim=1)).reshape(-1, E)
        y = (y + self.t(p + "D")[:, None].expand(H, P).reshape(E) * xs) * silu(z)
        y = self.rmsnorm(y, p + "norm_gated.weight")
        if conv is None:
            return y, [S]
        window = xbc[:, None, :] if K == 2 else torch.cat([conv[:, 1:], xbc[:, None, :]], dim=1)
        return y, [window, S]

    def s4d(self, p: str, v: torch.Tensor, S: torch.Tensor):
        """S [B, N, E] as the kernel stores it (the exported dA, dB and C are [E, N])."""
        E = self.cfg.d_inner
        xx, z = v[:, :E], v[:, E:]
        S = self.t(p + "dA").T * S + self.t(p + "dB").T * xx[:, None, :]
        y = sum_in_order((self.t(p + "C").T * S).split(1, dim=1)).reshape(-1, E) + self.t(p + "D") * xx
        return y * silu(z), [S]


def example_inputs(cfg: SSMConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the step graph at ``batch`` rows, half of them reset."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.n_features, generator=g)
    reset = (torch.arange(batch) % 2).to(torch.uint8)
    states = [torch.randn(batch, *s.shape, generator=g) for s in state_specs(cfg)]
    return (x, reset, *states)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's notes that say nothing about this graph: torchvision's ops not registered, its
    own deprecations, the batch axis named twice (all inputs share it)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
            yield
    finally:
        registration.setLevel(level)


def export_onnx(model: ModelFile, out_path: str | os.PathLike, *, opset: int = OPSET) -> Path:
    """Write ``model``'s step graph to ``out_path`` (checked by onnx.checker, metadata as
    onnx_format.metadata) and return the path. The file appears whole or not at all."""
    cfg = model.config
    step = KernelStep(cfg, model.tensors).eval()
    sha = file_sha256(model.path)
    return export_step(step, example_inputs(cfg, 3), state_specs(cfg), out_path, opset=opset,
                       meta=lambda exporter: metadata(cfg, model.path, sha, opset, exporter))


def export_step(step: nn.Module, example: tuple[torch.Tensor, ...], specs: list[StateSpec], out_path: str | os.PathLike,
                *, opset: int, meta: Callable[[str], dict[str, str]]) -> Path:
    """Export ``step`` ((x, reset, *states) -> (out, *next states), the states ``specs``) as the ONNX
    contract's graph with a dynamic batch axis, set its metadata to ``meta(exporter description)``,
    check it with onnx's checker and write it to ``out_path``, whole or not at all."""
    batch = torch.export.Dim(BATCH_AXIS)
    # The torch.export-based exporter: the TorchScript one (dynamo=False) is deprecated, to be removed.
    with _quiet_exporter():
        program = torch.onnx.export(
            step,
            example,
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
    for key, value in meta(exporter).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed: a reader (another run's backend) never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
