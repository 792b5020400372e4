"""A small causal Transformer encoder, the O(L) foil to the SSM's O(1) step in ``nextick bench``
(suite ``ssm_vs_transformer``). torch only; imported by that suite alone.

Same size class as the default SSM: 5 input features, d_model 64, 2 pre-norm layers of 4-head causal
self-attention and a 128-wide feed-forward, a 1-wide head. No positional encoding (NoPE: the causal
mask carries order), so that both per-tick forms below are defined on any window:

- ``forward(window)``: the whole window of the last L ticks recomputed on every tick, output at the
  last position (what a model trained on fixed windows does at inference): O(L^2) attention, O(L)
  projections per tick.
- ``step(x, cache)``: one tick against a rolling key/value cache of the last L positions per layer
  (sliding-window attention, as Mistral's rolling buffer): O(L) per tick. It is the same function as
  ``forward`` while the history fits in the window (``parity_error`` checks that); past L ticks each
  cached key keeps the window it was computed with, as sliding-window attention defines it.

Without positions, attention is invariant to the order of the keys, so the cache is a ring written
in place; nothing is shifted per tick.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.h, self.hd = n_heads, d_model // n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], causal over L."""
        b, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, L, 3, self.h, self.hd).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, hd]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, L, d))
        return x + self.ff(self.ln2(x))

    def step(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot: int, filled: int) -> torch.Tensor:
        """x [B, D], one tick; its key and value go into ring ``slot`` of the [B, H, L, hd] caches,
        and the query attends to the ``filled`` cached positions (itself included)."""
        b, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, 3, self.h, self.hd).unbind(1)  # 3 x [B, H, hd]
        k_cache[:, :, slot] = k
        v_cache[:, :, slot] = v
        keys, values = (k_cache, v_cache) if filled == k_cache.shape[2] else (k_cache[:, :, :filled], v_cache[:, :, :filled])
        a = F.scaled_dot_product_attention(q[:, :, None], keys, values)  # [B, H, 1, hd]
        x = x + self.proj(a.reshape(b, d))
        return x + self.ff(self.ln2(x))


class KVCache:
    """Per layer, keys and values of the last ``window`` ticks, [B, H, window, hd], as a ring."""

    def __init__(self, model: TickTransformer, batch: int, window: int) -> None:
        blk = model.blocks[0]
        shape = (batch, blk.h, window, blk.hd)
        w = model.encoder.weight
        self.k = [w.new_zeros(shape) for _ in model.blocks]
        self.v = [w.new_zeros(shape) for _ in model.blocks]
        self.window = window
        self.t = 0  # ticks seen


class TickTransformer(nn.Module):
    def __init__(self, n_features: int = 5, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, d_ff: int = 128,
                 n_out: int = 1) -> None:
        super().__init__()
        self.encoder = nn.Linear(n_features, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_out)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """window [B, L, F] -> prediction at the last tick [B, n_out]."""
        h = self.encoder(window)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h[:, -1]))

    def empty_cache(self, batch: int, window: int) -> KVCache:
        return KVCache(self, batch, window)

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """x [B, F], the newest tick -> [B, n_out]; updates ``cache`` in place."""
        slot = cache.t % cache.window
        filled = min(cache.t + 1, cache.window)
        h = self.encoder(x)
        for blk, k, v in zip(self.blocks, cache.k, cache.v):
            h = blk.step(h, k, v, slot, filled)
        cache.t += 1
        return self.head(self.norm(h))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def parity_error(model: TickTransformer, n_ticks: int = 48, window: int = 64, batch: int = 2, seed: int = 0) -> float:
    """Largest |step - forward| at the last tick of ``n_ticks`` (<= window) ticks: the cached step
    computes the same function as recomputing the window."""
    assert n_ticks <= window
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n_ticks, model.encoder.in_features, generator=g)
    with torch.no_grad():
        cache = model.empty_cache(batch, window)
        for t in range(n_ticks):
            y_step = model.step(xs[:, t], cache)
        y_full = model(xs)
    return float((y_step - y_full).abs().max())
