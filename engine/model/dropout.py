"""MC-dropout variants: seeded residual-branch masks that turn one trained model into N thinned ones.

A model trained with ``SSMConfig.dropout = p`` drops each channel of each layer's residual branch
with probability p, one mask per sequence (engine/model/ssm.py ``draw_masks``). At inference,
variant v of a seed is the model with the fixed mask ``dropout_masks(cfg, n, seed)[v]``:

    masks = dropout_masks(cfg, n_variants=8, seed=0)   # float32 [8, n_layers, d_model]
    core.set_dropout_masks(masks)                      # slot s of the C++ kernel runs variant s % 8

Stepping every instrument as N rows (slot = instrument * N + v) gives the predictive mean and the
spread across variants each tick: the epistemic part of the model's uncertainty (Gal & Ghahramani
2016). Variant v's mask depends on (seed, v) alone, so variant 3 of 8 is variant 3 of 100, and a
backtest of one variant (``dropout_masks(cfg, 1, seed, first=3)``) steps the same network as row 3
of an N-variant run.
"""

from __future__ import annotations

import numpy as np

from engine.model.config import SSMConfig


def variant_masks(shape: tuple[int, ...], n_variants: int, seed: int, rate: float, first: int = 0) -> np.ndarray:
    """float32 [n_variants, *shape]: variants first .. first + n_variants - 1 of ``seed``, each entry 0
    with probability ``rate`` and 1 / (1 - rate) otherwise (in float32, as torch scales its masks)."""
    if n_variants < 1:
        raise ValueError(f"dropout masks: n_variants must be >= 1, got {n_variants}")
    if first < 0:
        raise ValueError(f"dropout masks: first must be >= 0, got {first}")
    if not 0.0 < rate < 1.0:
        raise ValueError(
            f"dropout masks: the dropout rate is {rate}; MC dropout needs a model trained with dropout in (0, 1) "
            "(nextick train --dropout 0.1) or an explicit rate"
        )
    scale = np.float32(1.0 / (1.0 - rate))
    out = np.empty((n_variants, *shape), dtype=np.float32)
    for k in range(n_variants):
        rng = np.random.Generator(np.random.PCG64([seed, first + k]))
        out[k] = np.where(rng.random(shape) >= rate, scale, np.float32(0.0))
    return out


def dropout_masks(cfg: SSMConfig, n_variants: int, seed: int = 0, *, first: int = 0, rate: float | None = None) -> np.ndarray:
    """The SSM's: float32 [n_variants, n_layers, d_model], one mask per layer's residual branch, at
    the model's trained ``cfg.dropout`` unless ``rate`` is given."""
    return variant_masks((cfg.n_layers, cfg.d_model), n_variants, seed, cfg.dropout if rate is None else rate, first)


def head_dropout_masks(width: int, n_variants: int, seed: int, rate: float, *, first: int = 0) -> np.ndarray:
    """A zoo model's (engine/training/zoo.py): float32 [n_variants, width], one mask on the input of
    the prediction head, where each zoo kind applies its last dropout. The head has no memory, so a
    mask fixed for the run is, tick by tick, a draw of the dropout the model was trained with."""
    return variant_masks((width,), n_variants, seed, rate, first)
