"""Torch reference of the SSM: Mamba-2-style selective layers and the S4D-Real LTI baseline.

Reads top to bottom. Every layer has two forms of the same function:

- ``forward(u)``: the parallel form over a whole sequence from zero state (training). Mamba-2 uses
  the chunked state-space-duality (SSD) scan; S4D uses its convolution kernel through an FFT.
- ``step(u, state)``: one tick, the recurrence the C++ kernel (csrc/ssm_kernel.cpp) runs in production.

Shapes: B batch, L length, D d_model, E d_inner, H heads, P headdim, N d_state, G groups,
C conv_dim = E + 2*G*N, K d_conv, F features.

``SSMModel.export_tensors`` writes exactly the tensors of ``engine.model.config.tensor_shapes``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import SSMConfig, tensor_shapes

LayerState = tuple[torch.Tensor, ...]


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def residual(u: torch.Tensor, branch: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """u + branch, the branch scaled by a dropout mask when one is given.

    mask [B, D] (step: branch [B, D]; parallel form: branch [B, L, D], one mask for the whole
    sequence). The kernel computes h + m * t in float32 as written here (csrc/ssm_kernel.cpp).
    """
    if mask is None:
        return u + branch
    return u + (mask[:, None, :] if branch.dim() == 3 else mask) * branch


def segsum(x: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T]: out[i, j] = sum(x[j+1 .. i]) for j <= i, -inf above the diagonal.

    Each entry is summed from scratch (not as a difference of cumulative sums), so a short segment
    late in a long chunk keeps full float32 precision."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)  # [..., T(i), T(j)] holding x[i]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~below, 0.0)
    out = torch.cumsum(x, dim=-2)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return out.masked_fill(~keep, -torch.inf)


def ssd_scan(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int):
    """Chunked selective scan from zero state (Mamba-2's SSD, after the "minimal" reference).

    X [B, L, H, P] (= x * dt), A [B, L, H] (= A * dt, log decay per step), B, C [B, L, G, N] with
    head h reading group h // (H / G). Returns Y [B, L, H, P] and the final state [B, H, P, N] of
    h_t = exp(A_t) h_{t-1} + X_t B_t^T, y_t = h_t C_t. Contractions run one pair at a time so no
    intermediate is larger than [B, H, chunks, chunk, chunk].
    """
    b, L, H, P = X.shape
    G = B.shape[2]
    r = H // G
    pad = (-L) % chunk
    if pad:  # decay 1 and zero input: padded steps leave the state unchanged
        X, A, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (X, A, B, C))
    nc = (L + pad) // chunk
    X = X.reshape(b, nc, chunk, G, r, P)  # [b, c, l, g, r, p]
    B, C = (t.reshape(b, nc, chunk, G, -1) for t in (B, C))  # [b, c, l, g, n]
    A = A.reshape(b, nc, chunk, G, r).permute(0, 3, 4, 1, 2)  # [b, g, r, c, l]
    A_cumsum = torch.cumsum(A, dim=-1)

    # 1. within each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(A[s+1..l]) X_s
    Lmat = torch.exp(segsum(A))  # [b, g, r, c, l, s]
    CB = torch.einsum("bclgn,bcsgn->bgcls", C, B)
    Y_diag = torch.einsum("bgrcls,bcsgrp->bclgrp", CB[:, :, None] * Lmat, X)
    # 2. each chunk's own contribution to the state at its end (decay from s+1 to the end)
    decay_states = Lmat[..., -1, :].permute(0, 3, 4, 1, 2)[..., None]  # [b, c, l, g, r, 1]
    states = torch.einsum("bclgn,bclgrp->bcgrpn", B, X * decay_states)
    # 3. carry states across chunks: a scan over chunks, linear in their number (the minimal
    # reference's all-pairs form is quadratic, and a 6.5 h session at 1 s has ~370 chunks)
    # (unbind, not indexing: the backward of nc index ops would write nc full-size gradients)
    chunk_decay = torch.exp(A_cumsum[..., -1])[..., None, None].unbind(3)  # c x [b, g, r, 1, 1]
    carried = []
    state = torch.zeros_like(states[:, 0])  # [b, g, r, p, n]
    for decay, new in zip(chunk_decay, states.unbind(1)):
        carried.append(state)
        state = decay * state + new
    states, final = torch.stack(carried, dim=1), state  # state entering each chunk [b, c, g, r, p, n]
    # 4. the carried-in state's contribution inside each chunk
    Y_off = torch.einsum("bclgn,bcgrpn->bclgrp", C, states) * torch.exp(A_cumsum).permute(0, 3, 4, 1, 2)[..., None]
    Y = (Y_diag + Y_off).reshape(b, nc * chunk, H, P)[:, :L]
    return Y, final.reshape(b, H, P, -1)


class Mamba2Layer(nn.Module):
    """Pre-norm residual Mamba-2 block: in_proj -> causal conv -> SiLU -> selective SSM -> gated RMSNorm -> out_proj."""

    def __init__(self, cfg: SSMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, H, C = cfg.d_inner, cfg.nheads, cfg.conv_dim
        self.norm_weight = nn.Parameter(torch.ones(cfg.d_model))
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(C, cfg.d_conv).uniform_(-1, 1) / math.sqrt(cfg.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(C))
        # dt initialised log-uniform in [1e-3, 1e-1] as in Mamba: dt_bias = softplus^-1(dt)
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm_gated_weight = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)

    def _split(self, zxbcdt: torch.Tensor):
        E, C = self.cfg.d_inner, self.cfg.conv_dim
        return zxbcdt[..., :E], zxbcdt[..., E : E + C], zxbcdt[..., E + C :]

    def _ssm_inputs(self, a: torch.Tensor, dt_raw: torch.Tensor):
        """a [..., C] activated conv output -> xs [..., H, P], B and C [..., G, N], dt [..., H]."""
        cfg = self.cfg
        E, G, N, H = cfg.d_inner, cfg.ngroups, cfg.d_state, cfg.nheads
        xs = a[..., :E].unflatten(-1, (H, cfg.headdim))
        Bg = a[..., E : E + G * N].unflatten(-1, (G, N))
        Cg = a[..., E + G * N :].unflatten(-1, (G, N))
        dt = F.softplus(dt_raw + self.dt_bias, threshold=cfg.softplus_threshold)
        return xs, Bg, Cg, dt

    def _out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = rmsnorm(y * F.silu(z), self.norm_gated_weight, self.cfg.norm_eps)
        return self.out_proj(y)

    def empty_state(self, b: int) -> LayerState:
        cfg = self.cfg
        w = self.conv_weight
        return (
            w.new_zeros(b, cfg.d_conv - 1, cfg.conv_dim),  # raw xBC of the last K-1 ticks, oldest first
            w.new_zeros(b, cfg.nheads, cfg.headdim, cfg.d_state),
        )

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerState]:
        cfg = self.cfg
        Bsz, L, _ = u.shape
        z, xbc, dt_raw = self._split(self.in_proj(rmsnorm(u, self.norm_weight, cfg.norm_eps)))
        K = cfg.d_conv
        padded = F.pad(xbc, (0, 0, K - 1, 0))  # [B, K-1+L, C], zero history
        # Causal depthwise conv as K shifted multiply-adds: same sum as the step's window, and
        # far cheaper to differentiate on CPU than a grouped conv1d.
        conv = self.conv_bias + sum(padded[:, k : k + L] * self.conv_weight[:, k] for k in range(K))
        xs, Bg, Cg, dt = self._ssm_inputs(F.silu(conv), dt_raw)
        A = -torch.exp(self.A_log)
        Y, ssm_state = ssd_scan(xs * dt[..., None], A * dt, Bg, Cg, cfg.chunk_size)
        y = (Y + self.D[:, None] * xs).flatten(-2)  # [B, L, E]
        conv_state = padded[:, L:]  # the last K-1 raw inputs, oldest first
        return residual(u, self._out(y, z), mask), (conv_state, ssm_state)

    def step(self, u: torch.Tensor, state: LayerState, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerState]:
        cfg = self.cfg
        conv_state, ssm_state = state
        z, xbc, dt_raw = self._split(self.in_proj(rmsnorm(u, self.norm_weight, cfg.norm_eps)))
        window = torch.cat([conv_state, xbc[:, None, :]], dim=1)  # [B, K, C]
        conv = (window * self.conv_weight.T[None]).sum(1) + self.conv_bias
        xs, Bg, Cg, dt = self._ssm_inputs(F.silu(conv), dt_raw)
        r = cfg.nheads // cfg.ngroups
        Bh, Ch = Bg.repeat_interleave(r, dim=-2), Cg.repeat_interleave(r, dim=-2)  # head h reads group h // r
        dA = torch.exp(dt * -torch.exp(self.A_log))  # [B, H]
        ssm_state = dA[..., None, None] * ssm_state + (dt[..., None] * xs)[..., None] * Bh[:, :, None, :]
        y = (ssm_state * Ch[:, :, None, :]).sum(-1) + self.D[:, None] * xs  # [B, H, P]
        return residual(u, self._out(y.flatten(-2), z), mask), (window[:, 1:], ssm_state)

    def export_tensors(self, prefix: str) -> dict[str, np.ndarray]:
        out = {
            "norm.weight": self.norm_weight,
            "in_proj.weight": self.in_proj.weight,
            "conv1d.weight": self.conv_weight,
            "conv1d.bias": self.conv_bias,
            "dt_bias": self.dt_bias,
            "D": self.D,
            "norm_gated.weight": self.norm_gated_weight,
            "out_proj.weight": self.out_proj.weight,
        }
        arrays = {prefix + k: _np32(v) for k, v in out.items()}
        # DESIGN.md: A = -exp(A_log) in float64, then rounded once to float32
        arrays[prefix + "A"] = (-np.exp(self.A_log.detach().double().cpu().numpy())).astype(np.float32)
        return arrays


class S4DLayer(nn.Module):
    """Pre-norm residual S4D-Real block: in_proj -> diagonal LTI SSM per channel -> gate -> out_proj.

    h_t = dA h_{t-1} + dB x_t, y_t = C . h_t + D x_t, with A = -exp(A_log) < 0 per (channel, state)
    and dA, dB from zero-order hold or the bilinear transform of (A, B) with step exp(log_dt).
    """

    def __init__(self, cfg: SSMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, N = cfg.d_inner, cfg.d_state
        self.norm_weight = nn.Parameter(torch.ones(cfg.d_model))
        self.in_proj = nn.Linear(cfg.d_model, 2 * E, bias=False)
        self.log_dt = nn.Parameter(torch.rand(E) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))  # S4D-Real
        self.B = nn.Parameter(torch.ones(E, N))
        self.C = nn.Parameter(torch.randn(E, N) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)

    def discretize(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(dA, dB), each [E, N], computed in float64 and rounded once to ``dtype``: the export does
        the same, so every form runs on bit-identical coefficients (float32 discretization would
        drift dA^k by k ulps over long sessions)."""
        dA, dB = self._discretize64()
        return dA.to(dtype), dB.to(dtype)

    def _discretize64(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float64
        A = -torch.exp(self.A_log.to(dtype))
        dt = torch.exp(self.log_dt.to(dtype))[:, None]
        B = self.B.to(dtype)
        if self.cfg.discretization == "zoh":
            dA = torch.exp(dt * A)
            return dA, (dA - 1.0) / A * B
        denom = 1.0 - dt * A / 2.0
        return (1.0 + dt * A / 2.0) / denom, dt * B / denom

    def empty_state(self, b: int) -> LayerState:
        return (self.C.new_zeros(b, self.cfg.d_inner, self.cfg.d_state),)

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerState]:
        cfg = self.cfg
        L = u.shape[1]
        v = self.in_proj(rmsnorm(u, self.norm_weight, cfg.norm_eps))
        x, z = v[..., : cfg.d_inner], v[..., cfg.d_inner :]
        dA, dB = self.discretize()
        powers = torch.pow(dA[..., None], torch.arange(L, device=u.device, dtype=u.dtype))  # [E, N, L]
        kernel = torch.einsum("en,enl->el", self.C * dB, powers)  # y = kernel (*) x, causal
        n_fft = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(x.transpose(1, 2), n=n_fft) * torch.fft.rfft(kernel, n=n_fft), n=n_fft)
        y = y[..., :L].transpose(1, 2) + self.D * x  # [B, L, E]
        # h_L = sum_s dA^(L-1-s) dB x_s
        state = torch.einsum("en,enl,ble->ben", dB, powers.flip(-1), x)
        return residual(u, self.out_proj(y * F.silu(z)), mask), (state,)

    def step(self, u: torch.Tensor, state: LayerState, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerState]:
        cfg = self.cfg
        v = self.in_proj(rmsnorm(u, self.norm_weight, cfg.norm_eps))
        x, z = v[..., : cfg.d_inner], v[..., cfg.d_inner :]
        dA, dB = self.discretize()
        h = dA * state[0] + dB * x[..., None]  # [B, E, N]
        y = (self.C * h).sum(-1) + self.D * x
        return residual(u, self.out_proj(y * F.silu(z)), mask), (h,)

    def export_tensors(self, prefix: str) -> dict[str, np.ndarray]:
        dA, dB = self.discretize(torch.float64)  # discretize in float64, round once
        out = {
            "norm.weight": _np32(self.norm_weight),
            "in_proj.weight": _np32(self.in_proj.weight),
            "dA": _np32(dA),
            "dB": _np32(dB),
            "C": _np32(self.C),
            "D": _np32(self.D),
            "out_proj.weight": _np32(self.out_proj.weight),
        }
        return {prefix + k: v for k, v in out.items()}


def _np32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


class SSMModel(nn.Module):
    """features [.., F] -> encoder -> n_layers residual SSM blocks -> RMSNorm -> head [.., n_out]."""

    def __init__(self, cfg: SSMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Linear(cfg.n_features, cfg.d_model)
        layer = Mamba2Layer if cfg.kind == "mamba2" else S4DLayer
        self.layers = nn.ModuleList(layer(cfg) for _ in range(cfg.n_layers))
        self.norm_f_weight = nn.Parameter(torch.ones(cfg.d_model))
        self.head = nn.Linear(cfg.d_model, cfg.n_out)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, list[LayerState]]:
        """Parallel form. x [B, L, F] from zero state -> y [B, L, n_out], final state per layer.

        masks [B, n_layers, d_model]: dropout masks of the residual branches (engine/model/dropout.py),
        one per sequence; in training with cfg.dropout > 0 and none given, fresh ones are drawn.
        """
        if masks is None and self.training and self.cfg.dropout > 0:
            masks = self.draw_masks(x.shape[0], x.device)
        h = self.encoder(x)
        finals = []
        for i, layer in enumerate(self.layers):
            h, s = layer(h, None if masks is None else masks[:, i])
            finals.append(s)
        return self.head(rmsnorm(h, self.norm_f_weight, self.cfg.norm_eps)), finals

    def draw_masks(self, b: int, device: torch.device | None = None) -> torch.Tensor:
        """[b, n_layers, d_model] inverted-dropout masks: 0 with probability p, else 1 / (1 - p).

        One mask per sequence shared across its ticks (variational dropout, Gal & Ghahramani 2016):
        the recurrence sees the same thinned network at every step, as an MC-dropout variant does.
        """
        keep = 1.0 - self.cfg.dropout
        m = torch.bernoulli(torch.full((b, self.cfg.n_layers, self.cfg.d_model), keep, device=device))
        return m * torch.tensor(1.0 / keep, dtype=torch.float32)

    def empty_state(self, b: int) -> list[LayerState]:
        return [layer.empty_state(b) for layer in self.layers]

    def step(
        self, x: torch.Tensor, state: list[LayerState], masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[LayerState]]:
        """Recurrent form. x [B, F] -> y [B, n_out], next state. masks [B, n_layers, d_model] or None."""
        h = self.encoder(x)
        new_state = []
        for i, (layer, s) in enumerate(zip(self.layers, state)):
            h, s = layer.step(h, s, None if masks is None else masks[:, i])
            new_state.append(s)
        return self.head(rmsnorm(h, self.norm_f_weight, self.cfg.norm_eps)), new_state

    def export_tensors(self) -> dict[str, np.ndarray]:
        arrays = {
            "encoder.weight": _np32(self.encoder.weight),
            "encoder.bias": _np32(self.encoder.bias),
            "norm_f.weight": _np32(self.norm_f_weight),
            "head.weight": _np32(self.head.weight),
            "head.bias": _np32(self.head.bias),
        }
        for i, layer in enumerate(self.layers):
            arrays.update(layer.export_tensors(f"layers.{i}."))
        expected = tensor_shapes(self.cfg)
        assert {k: v.shape for k, v in arrays.items()} == expected, "export out of step with tensor_shapes"
        return arrays
