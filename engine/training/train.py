"""Training the signal models on replayed sessions (torch; the runtime never imports this module).

    source -> engine tick loop with the feature tap -> segments (one per reset)
           -> chronological train / validation / test split -> normalizer fitted on train
           -> parallel-form training from zero state, early stopping on validation loss
           -> model.safetensors (SSM) or model.onnx (zoo) + training_report.{json,md}

Every kind trains the same way on the same data: the SSM (mamba2, s4d; engine/model/ssm.py) and the
zoo (lstm, gru, mlp, transformer; engine/training/zoo.py). A zoo model's file is its ONNX step graph
(engine/training/zoo_export.py), which the engine runs on the onnxruntime backend.

The target of tick t is the mid log-return to tick t+K of the same segment, in bps, standardized
with the training statistics. Scores are the mean squared error in those units and the information
coefficient (Pearson and rank correlation of prediction and realized return) per split.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from engine.model.config import SSMConfig
from engine.model.ssm import SSMModel
from engine.model.weights import Normalizer, SignalSpec, save_model
from engine.model.zoo_config import ZooConfig
from engine.training import zoo
from engine.training.dataset import Segment, Split, fit_normalizer, horizon_target

ModelConfig = SSMConfig | ZooConfig


class TrainConfig(msgspec.Struct, kw_only=True):
    horizon: int = 10  # K, ticks
    interval: str = "1s"
    epochs: int = 30
    batch_size: int = 2  # segments per step (larger batches of whole sessions thrash memory on CPU)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4  # epochs without a better validation loss before stopping
    grad_clip: float = 1.0
    huber_delta: float = 3.0  # in target std units: heavy-tailed returns must not dominate
    seed: int = 0
    val_frac: float = 0.2
    test_frac: float = 0.2
    dropout: float = 0.0  # rate, in training only: the zoo's dropout layers, the SSM's residual-branch masks

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError("horizon must be >= 1 tick")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")


def ssm_config(config: TrainConfig, **fields: Any) -> SSMConfig:
    """The SSM's config with the run's dropout (residual-branch masks, one per sequence and channel:
    engine/model/ssm.py; the same masks MC dropout steps at inference, engine/model/dropout.py)."""
    return SSMConfig(**fields, dropout=config.dropout)


def build_model(model_config: ModelConfig, config: TrainConfig) -> torch.nn.Module:
    """The torch model of ``model_config``, initialized from torch's RNG (seeded by ``train``)."""
    if isinstance(model_config, ZooConfig):
        return zoo.build(model_config, dropout=config.dropout)
    return SSMModel(model_config)


class Scores(msgspec.Struct):
    loss: float
    ic: float  # Pearson correlation of prediction and realized K-tick return
    rank_ic: float
    n: int  # ticks scored


class TrainResult(msgspec.Struct, kw_only=True):
    model: Any  # SSMModel, best validation epoch
    normalizer: Normalizer
    history: list[dict[str, float]]  # per epoch: train_loss, val_loss, val_ic, seconds
    best_epoch: int
    scores: dict[str, Scores]  # train / val / test at the best epoch
    split: dict[str, Any]


def segment_tensors(segs: list[Segment], norm: Normalizer, horizon: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per segment: normalized features [n, F], standardized K-tick target [n] and its validity [n]."""
    out = []
    for s in segs:
        y, valid = horizon_target(s.mid, horizon)
        y = (y - norm.target_mean) / norm.target_std
        out.append((torch.from_numpy(norm.apply(s.features)), torch.from_numpy(y.astype(np.float32)), torch.from_numpy(valid)))
    return out


def _pad(batch: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    L = max(len(x) for x, _, _ in batch)
    X = torch.zeros(len(batch), L, batch[0][0].shape[1])
    Y = torch.zeros(len(batch), L)
    M = torch.zeros(len(batch), L, dtype=torch.bool)
    for b, (x, y, m) in enumerate(batch):
        X[b, : len(x)] = x
        Y[b, : len(y)] = y
        M[b, : len(m)] = m
    return X, Y, M


def _batches(data: list, batch_size: int, rng: np.random.Generator | None):
    # Similar lengths together so padding stays small; order of batches shuffled when training.
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(groups)
    return [[data[i] for i in g] for g in groups]


def _rank(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def evaluate(model: torch.nn.Module, data: list, batch_size: int, huber_delta: float) -> Scores:
    preds, targets, losses = [], [], []
    model.eval()
    with torch.no_grad():
        for batch in _batches(data, batch_size, None):
            X, Y, M = _pad(batch)
            out = model(X)[0][..., 0]
            losses.append(torch.nn.functional.huber_loss(out[M], Y[M], delta=huber_delta, reduction="sum").item())
            preds.append(out[M].numpy())
            targets.append(Y[M].numpy())
    if not preds or sum(len(p) for p in preds) == 0:
        return Scores(float("nan"), float("nan"), float("nan"), 0)
    p, t = np.concatenate(preds).astype(np.float64), np.concatenate(targets).astype(np.float64)
    return Scores(float(sum(losses) / len(p)), _corr(p, t), _corr(_rank(p), _rank(t)), len(p))


def train(
    split: Split,
    model_config: ModelConfig,
    config: TrainConfig,
    *,
    on_step: Callable[[int, str], None] | None = None,
) -> TrainResult:
    """Fit ``model_config``'s model on ``split.train``, early-stopping on ``split.val``; ``split.test``
    is only scored. Seeded: the same data, configs and machine give the same weights bit for bit."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(split, model_config, config, on_step)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(split: Split, model_config: ModelConfig, config: TrainConfig,
           on_step: Callable[[int, str], None] | None) -> TrainResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    norm = fit_normalizer(split.train, config.horizon)
    data = {name: segment_tensors(segs, norm, config.horizon) for name, segs in (("train", split.train), ("val", split.val), ("test", split.test))}
    if not data["val"]:
        raise ValueError("the validation period holds no segments; add data or change --val-frac")

    model = build_model(model_config, config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(data["train"]) / config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    best = (math.inf, -1, None)
    history: list[dict[str, float]] = []
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for batch in _batches(data["train"], config.batch_size, rng):
            X, Y, M = _pad(batch)
            out = model(X)[0][..., 0]
            loss = torch.nn.functional.huber_loss(out[M], Y[M], delta=config.huber_delta)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            n = int(M.sum())
            total += loss.item() * n
            count += n
            if on_step is not None:
                on_step(1, f"  epoch {epoch + 1} loss {total / max(count, 1):.4f}")
        val = evaluate(model, data["val"], config.batch_size, config.huber_delta)
        history.append(
            {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_loss": val.loss, "val_ic": val.ic,
             "seconds": time.perf_counter() - t0}
        )
        if val.loss < best[0]:
            best = (val.loss, epoch + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
        elif epoch + 1 - best[1] >= config.patience:
            break
    model.load_state_dict(best[2])
    scores = {name: evaluate(model, d, config.batch_size, config.huber_delta) for name, d in data.items()}
    split_info = {
        "segments": {k: len(getattr(split, k)) for k in ("train", "val", "test")},
        "ticks": {k: int(sum(len(s.mid) for s in getattr(split, k))) for k in ("train", "val", "test")},
        "val_start_ns": split.val_start_ns,
        "test_start_ns": split.test_start_ns,
    }
    return TrainResult(model=model, normalizer=norm, history=history, best_epoch=best[1], scores=scores, split=split_info)


def model_file_name(model_config: ModelConfig) -> str:
    """What ``export`` writes: the SSM's weights, or a zoo model's ONNX step graph."""
    return "model.onnx" if isinstance(model_config, ZooConfig) else "model.safetensors"


def export(result: TrainResult, path: Path, config: TrainConfig, data_desc: dict[str, Any]) -> None:
    training = {
        "data": data_desc,
        "train_config": msgspec.to_builtins(config),
        "best_epoch": result.best_epoch,
        "scores": msgspec.to_builtins(result.scores),
        "split": result.split,
    }
    signal = SignalSpec(horizon_ticks=config.horizon, interval=config.interval)
    if isinstance(result.model.cfg, ZooConfig):
        from engine.training.zoo_export import export_zoo_onnx  # onnx and onnxscript: only zoo runs need them

        export_zoo_onnx(result.model, result.normalizer, signal, path, training=training)
        return
    save_model(
        path,
        result.model.export_tensors(),
        result.model.cfg,
        result.normalizer,
        signal,
        training=training,
    )


def describe(model_config: ModelConfig) -> str:
    c = model_config
    if isinstance(c, ZooConfig):
        shape = {"lstm": "", "gru": "", "mlp": f", window {c.window}",
                 "transformer": f", window {c.window}, {c.n_heads} heads, feed-forward {c.d_ff}"}[c.kind]
        return f"{c.kind}, {c.n_layers} layers, d_model {c.d_model}{shape} ({c.parameter_count():,} parameters)"
    return f"{c.kind}, {c.n_layers} layers, d_model {c.d_model}, d_state {c.d_state}"


def write_report(result: TrainResult, out_dir: Path, config: TrainConfig, model_config: ModelConfig,
                 data_desc: dict[str, Any], extra: dict[str, Any] | None = None,
                 extra_md: list[str] | None = None) -> list[Path]:
    """training_report.json and .md; ``extra`` adds keys to the JSON (walk-forward folds), ``extra_md``
    lines to the Markdown."""
    report = {
        "data": data_desc,
        "model_config": msgspec.to_builtins(model_config),
        "train_config": msgspec.to_builtins(config),
        "split": result.split,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "scores": msgspec.to_builtins(result.scores),
        "normalizer": msgspec.to_builtins(result.normalizer),
        **(extra or {}),
    }
    json_path = out_dir / "training_report.json"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    lines = [
        "# Training report",
        "",
        f"- data: {json.dumps(data_desc)}",
        f"- model: {describe(model_config)}; horizon {config.horizon} ticks of {config.interval}"
        + (f"; dropout {config.dropout:g}" if config.dropout else ""),
        f"- split by time: {result.split['segments']} segments, {result.split['ticks']} ticks",
        f"- best epoch {result.best_epoch} of {len(result.history)} (early stopping on validation loss, patience {config.patience})",
        "",
        "| split | loss (Huber, target sd units) | IC | rank IC | ticks |",
        "|---|---|---|---|---|",
    ]
    for name, s in result.scores.items():
        lines.append(f"| {name} | {s.loss:.4f} | {s.ic:.4f} | {s.rank_ic:.4f} | {s.n:,} |")
    lines += ["", "Loss curves:", "", "| epoch | train loss | val loss | val IC | seconds |", "|---|---|---|---|---|"]
    for h in result.history:
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['val_ic']:.4f} | {h['seconds']:.1f} |")
    lines += extra_md or []
    md_path = out_dir / "training_report.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [json_path, md_path]
