"""SSM configuration and the per-tick feature set, shared by training (torch), export and the C++ step.

No torch here: the runtime reads these to load exported weights.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from engine import _core

# Causal per-tick features, computed once in C++ (csrc/features.hpp) for both training and inference.
# The order is the column order of the model input.
FEATURE_NAMES: tuple[str, ...] = (
    "ret_bps",  # mid log-return since the previous in-session tick, bps (0 on the first tick after a reset)
    "log_spread",  # log((ask - bid) / mid)
    "imbalance",  # (bid_sz - ask_sz) / (bid_sz + ask_sz), in [-1, 1]
    "log_dt_ms",  # log1p(ms since the previous in-session tick) (0 on the first tick after a reset)
    "session_frac",  # (ts - session open) / session length, in [0, 1)
)


class SSMConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Shape of the model. Defaults are DESIGN.md's Mamba-2-style default.

    ``kind="s4d"`` is the diagonal linear time-invariant baseline (S4D-Real) behind the same
    interface; it ignores headdim, d_conv and ngroups.
    """

    kind: Literal["mamba2", "s4d"] = "mamba2"
    n_features: int = len(FEATURE_NAMES)
    d_model: int = 64
    n_layers: int = 2
    expand: int = 2
    headdim: int = 32
    d_state: int = 16
    d_conv: int = 4
    ngroups: int = 1
    n_out: int = 1
    norm_eps: float = 1e-5
    softplus_threshold: float = 20.0  # softplus(v) = v above this, as torch.nn.functional.softplus
    discretization: Literal["zoh", "bilinear"] = "zoh"  # s4d only
    chunk_size: int = 64  # parallel (SSD) form only; does not change the function computed
    # Dropout on each layer's residual branch, one mask per sequence and channel shared across time
    # (variational dropout, as MC-dropout inference steps it: engine/model/dropout.py). Training only;
    # a plain step is deterministic.
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_features", "d_model", "n_layers", "expand", "headdim", "d_state", "d_conv", "ngroups", "n_out"):
            if getattr(self, name) < 1:
                raise ValueError(f"SSMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.kind == "mamba2":
            if self.d_inner % self.headdim:
                raise ValueError(f"SSMConfig: d_inner={self.d_inner} is not a multiple of headdim={self.headdim}")
            if self.nheads % self.ngroups:
                raise ValueError(f"SSMConfig: nheads={self.nheads} is not a multiple of ngroups={self.ngroups}")
        if self.chunk_size < 1:
            raise ValueError("SSMConfig.chunk_size must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SSMConfig.dropout must be in [0, 1), got {self.dropout}")
        # The kernel's memory limits, from the kernel itself (csrc/ssm.hpp): one statement of them
        # for every path (model files, training, benchmarks), checked here before tensor_shapes or
        # torch would build a model this config describes.
        _core.SsmModel.footprint(self.core_dict())

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    def core_dict(self) -> dict[str, object]:
        """The fields the C++ SsmModel takes."""
        return {
            "kind": self.kind,
            "n_features": self.n_features,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "d_inner": self.d_inner,
            "headdim": self.headdim,
            "nheads": self.nheads,
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "ngroups": self.ngroups,
            "n_out": self.n_out,
            "norm_eps": self.norm_eps,
            "softplus_threshold": self.softplus_threshold,
        }


def tensor_shapes(cfg: SSMConfig) -> dict[str, tuple[int, ...]]:
    """Every exported tensor and its shape: the contract between export, the loader and the kernel."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.weight": (cfg.d_model, cfg.n_features),
        "encoder.bias": (cfg.d_model,),
        "norm_f.weight": (cfg.d_model,),
        "head.weight": (cfg.n_out, cfg.d_model),
        "head.bias": (cfg.n_out,),
    }
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes[p + "norm.weight"] = (cfg.d_model,)
        shapes[p + "out_proj.weight"] = (cfg.d_model, cfg.d_inner)
        if cfg.kind == "mamba2":
            shapes[p + "in_proj.weight"] = (cfg.d_in_proj, cfg.d_model)
            shapes[p + "conv1d.weight"] = (cfg.conv_dim, cfg.d_conv)
            shapes[p + "conv1d.bias"] = (cfg.conv_dim,)
            shapes[p + "dt_bias"] = (cfg.nheads,)
            shapes[p + "A"] = (cfg.nheads,)
            shapes[p + "D"] = (cfg.nheads,)
            shapes[p + "norm_gated.weight"] = (cfg.d_inner,)
        else:
            shapes[p + "in_proj.weight"] = (2 * cfg.d_inner, cfg.d_model)
            for name in ("dA", "dB", "C"):
                shapes[p + name] = (cfg.d_inner, cfg.d_state)
            shapes[p + "D"] = (cfg.d_inner,)
    return shapes
