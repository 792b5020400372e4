"""The model zoo (torch): LSTM, GRU, MLP and Transformer signal models beside the SSM.

Each reads the SSM's features (engine.model.config.FEATURE_NAMES, normalized) and predicts the same
target (the standardized K-tick log-return) with the same kind of head, and each has the SSM's two
forms of one function:

- ``forward(x)``: the whole sequence from zero state (training), x [B, L, F] -> y [B, L, n_out];
- ``step(x, states)``: one tick, x [B, F] and the per-slot states -> y [B, n_out], next states: what
  the ONNX export (engine/training/zoo_export.py) writes and the engine runs, one slot per instrument,
  with a reset zeroing the slot's states first (engine/model/zoo_config.py lists them).

A run of ``step`` from zero states over x equals ``forward(x)`` (tests/test_zoo.py, through the ONNX
graph), so the engine after a reset sees exactly what training saw at a segment's start.

Shapes: B batch, L length, F features, D d_model, W window, H heads, Dh = D / H head width,
N = B * L windows, n_out outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.model.zoo_config import ZooConfig

States = list[torch.Tensor]


class LSTMModel(nn.Module):
    """features [B, L, F] -> nn.LSTM (n_layers, hidden D) -> dropout -> head [B, L, n_out]."""

    def __init__(self, cfg: ZooConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.rnn = nn.LSTM(cfg.n_features, cfg.d_model, cfg.n_layers, batch_first=True,
                           dropout=dropout if cfg.n_layers > 1 else 0.0)  # between layers, training only
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        h, _ = self.rnn(x)  # [B, L, D], from zero (h, c)
        return self.head(self.drop(h)), None

    def step(self, x: torch.Tensor, states: States) -> tuple[torch.Tensor, States]:
        """x [B, F]; states h_0, c_0, h_1, c_1, ... each [B, D]. nn.LSTM's cell, gates (i, f, g, o)."""
        u, new = x, []
        for i in range(self.cfg.n_layers):
            h, c = states[2 * i], states[2 * i + 1]
            gates = (F.linear(u, getattr(self.rnn, f"weight_ih_l{i}"), getattr(self.rnn, f"bias_ih_l{i}"))
                     + F.linear(h, getattr(self.rnn, f"weight_hh_l{i}"), getattr(self.rnn, f"bias_hh_l{i}")))  # [B, 4D]
            gi, gf, gg, go = gates.chunk(4, dim=-1)
            c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)  # [B, D]
            h = torch.sigmoid(go) * torch.tanh(c)
            new += [h, c]
            u = h
        return self.head(u), new


class GRUModel(nn.Module):
    """features [B, L, F] -> nn.GRU (n_layers, hidden D) -> dropout -> head [B, L, n_out]."""

    def __init__(self, cfg: ZooConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.rnn = nn.GRU(cfg.n_features, cfg.d_model, cfg.n_layers, batch_first=True,
                          dropout=dropout if cfg.n_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        h, _ = self.rnn(x)  # [B, L, D], from zero h
        return self.head(self.drop(h)), None

    def step(self, x: torch.Tensor, states: States) -> tuple[torch.Tensor, States]:
        """x [B, F]; states h_0, h_1, ... each [B, D]. nn.GRU's cell, gates (r, z, n)."""
        u, new = x, []
        for i in range(self.cfg.n_layers):
            h = states[i]
            gi = F.linear(u, getattr(self.rnn, f"weight_ih_l{i}"), getattr(self.rnn, f"bias_ih_l{i}"))  # [B, 3D]
            gh = F.linear(h, getattr(self.rnn, f"weight_hh_l{i}"), getattr(self.rnn, f"bias_hh_l{i}"))
            ir, iz, in_ = gi.chunk(3, dim=-1)
            hr, hz, hn = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            h = (1.0 - z) * n + z * h  # [B, D]
            new.append(h)
            u = h
        return self.head(u), new


def window_valid(count: torch.Tensor, window: int) -> torch.Tensor:
    """count [...] ticks since the reset (1..W) -> valid [..., W]: the window's last ``count`` rows."""
    return torch.arange(window, device=count.device) >= (window - count)[..., None]


class WindowModel(nn.Module):
    """A model of the last W feature rows: ``window_forward(win [N, W, F], valid [N, W]) -> [N, n_out]``.

    Its state is the window itself (oldest row first, zero before the reset) and the count of rows
    since the reset, capped at W. The sequence form cuts x into every tick's window and runs them in
    checkpointed chunks of ``chunk`` ticks: memory for one chunk's activations, not a session's.
    """

    cfg: ZooConfig
    chunk = 256  # ticks per checkpointed piece of the sequence form

    def window_forward(self, win: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        B, L, nf = x.shape
        W = self.cfg.window
        padded = F.pad(x, (0, 0, W - 1, 0))  # [B, W-1+L, F]: zero history before the segment
        windows = padded.unfold(1, W, 1).transpose(-1, -2)  # [B, L, W, F]: row t holds ticks t-W+1 .. t
        count = torch.clamp(torch.arange(1, L + 1, device=x.device), max=W)  # [L] ticks since the reset
        valid = window_valid(count, W)  # [L, W]
        outs = []
        for a in range(0, L, self.chunk):
            win = windows[:, a : a + self.chunk].reshape(-1, W, nf)  # [N, W, F]
            v = valid[a : a + self.chunk].expand(B, -1, -1).reshape(-1, W)  # [N, W]
            if self.training and torch.is_grad_enabled():  # dropout masks are replayed on recompute
                y = checkpoint(self.window_forward, win, v, use_reentrant=False)
            else:
                y = self.window_forward(win, v)
            outs.append(y.reshape(B, -1, self.cfg.n_out))
        return torch.cat(outs, dim=1), None  # [B, L, n_out]

    def step(self, x: torch.Tensor, states: States) -> tuple[torch.Tensor, States]:
        """x [B, F]; states window [B, W, F], count [B, 1]."""
        window, count = states
        W = self.cfg.window
        window = torch.cat([window[:, 1:], x[:, None, :]], dim=1)  # [B, W, F], the newest row last
        count = torch.clamp(count + 1.0, max=float(W))  # [B, 1]
        return self.window_forward(window, window_valid(count[:, 0], W)), [window, count]


class MLPModel(WindowModel):
    """window [N, W, F] (+ its validity [N, W]) -> n_layers x (Linear -> SiLU -> dropout), width D -> head."""

    def __init__(self, cfg: ZooConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.window * cfg.n_features + cfg.window] + [cfg.d_model] * cfg.n_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_out)

    def window_forward(self, win: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # rows before the reset are zero and flagged invalid: the model tells "no tick" from "a zero tick"
        h = torch.cat([(win * valid[..., None]).flatten(1), valid.to(win.dtype)], dim=-1)  # [N, W*F + W]
        for layer in self.layers:
            h = self.drop(F.silu(layer(h)))  # [N, D]
        return self.head(h)  # [N, n_out]


class TransformerBlock(nn.Module):
    """Pre-norm: h + attn(LN(h)) -> h + FF(LN(h)), FF = Linear(D, ff) -> SiLU -> Linear(ff, D)."""

    def __init__(self, cfg: ZooConfig, dropout: float) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.ff1 = nn.Linear(D, cfg.d_ff)
        self.ff2 = nn.Linear(cfg.d_ff, D)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, visible: torch.Tensor, last_only: bool) -> torch.Tensor:
        """h [N, W, D], visible [N, W, W] (query, key) -> [N, Wq, D]; Wq = 1 (the newest row) when
        ``last_only``: the last block computes only what the head reads."""
        N, W, D = h.shape
        H = self.cfg.n_heads
        q, k, v = self.qkv(self.norm1(h)).split(D, dim=-1)  # each [N, W, D]
        if last_only:
            q, h, visible = q[:, -1:], h[:, -1:], visible[:, -1:]  # [N, 1, D], [N, 1, D], [N, 1, W]
        Wq = q.shape[1]
        q = q.reshape(N, Wq, H, D // H).transpose(1, 2)  # [N, H, Wq, Dh]
        k = k.reshape(N, W, H, D // H).transpose(1, 2)  # [N, H, W, Dh]
        v = v.reshape(N, W, H, D // H).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)  # [N, H, Wq, W]
        scores = scores.masked_fill(~visible[:, None], -math.inf)
        o = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(N, Wq, D)  # [N, Wq, D]
        h = h + self.drop(self.proj(o))
        return h + self.drop(self.ff2(self.drop(F.silu(self.ff1(self.norm2(h))))))


class TransformerModel(WindowModel):
    """window [N, W, F] -> Linear(F, D) + learned positions [W, D] -> n_layers causal blocks ->
    LayerNorm -> head on the newest row [N, n_out]. A query sees the keys at or before it that are
    since the reset (and itself, so that a row before the reset, which nothing reads, has one key)."""

    def __init__(self, cfg: ZooConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.n_features, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(cfg.window, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, dropout) for _ in range(cfg.n_layers))
        self.norm_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_out)
        W = cfg.window
        self.register_buffer("causal", torch.tril(torch.ones(W, W, dtype=torch.bool)), persistent=False)  # [Wq, Wk]
        self.register_buffer("diag", torch.eye(W, dtype=torch.bool), persistent=False)

    def window_forward(self, win: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.embed(win) + self.pos)  # [N, W, D]
        visible = self.causal & (valid[:, None, :] | self.diag)  # [N, W, W]
        for i, block in enumerate(self.blocks):
            h = block(h, visible, last_only=i == len(self.blocks) - 1)
        return self.head(self.norm_f(h[:, -1]))  # [N, n_out]


KINDS: dict[str, type[nn.Module]] = {
    "lstm": LSTMModel,
    "gru": GRUModel,
    "mlp": MLPModel,
    "transformer": TransformerModel,
}


def build(cfg: ZooConfig, dropout: float = 0.0) -> nn.Module:
    """The torch model of ``cfg`` (initialized from torch's current RNG: seed it first)."""
    return KINDS[cfg.kind](cfg, dropout)
