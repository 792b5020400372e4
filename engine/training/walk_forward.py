"""Walk-forward retraining: `nextick train --walk-forward --train-days N --refit-days M`.

Days are the trading days of the data, as split_by_time counts them: the UTC dates on which segments
start (a session's segments, split by gaps, share its day on an NYSE-hours calendar; a 24x7 day is the
UTC date). Fold k fits on days [kM, kM + N) and is scored on [kM + N, kM + N + M), then the window moves
by M days:

    days    0 1 2 3 4 5 6 7 8 ...
    fold 0  F F F F E E                 F: fit (its last days validate, for early stopping)
    fold 1      F F F F E E             E: evaluate, out of sample
    fold 2          F F F F E E

Inside a fold's N fit days the last ``round(N * val_frac)`` (at least 1) are its validation period,
the rest train it, and its normalizer comes from those training days only: a fold never reads a tick
past its evaluation window, nor an evaluated tick while fitting. Each fold reports its scores (loss,
IC, rank IC) on its training, validation and evaluation days, and its IC on each evaluation day; the
decay curve is the IC by days since the fit (day 1 is the first day after the fit window), averaged
over the folds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from engine.domain.timestamps import DAY_NS
from engine.training.dataset import Segment, Split
from engine.training.train import ModelConfig, Scores, TrainConfig, TrainResult, evaluate, segment_tensors, train


class Fold(msgspec.Struct, kw_only=True):
    index: int
    fit_days: tuple[int, int]  # [first, last) day index into WalkForward.days
    eval_days: tuple[int, int]
    result: TrainResult
    daily: list[Scores]  # per evaluation day, in order: days since the fit = 1, 2, ...


class WalkForward(msgspec.Struct, kw_only=True):
    days: list[int]  # the trading days, UTC day numbers (ns // DAY_NS)
    folds: list[Fold]

    def decay(self) -> list[dict[str, Any]]:
        """IC by trading days since the fit: the mean over the folds that have that day."""
        out = []
        for d in range(max((len(f.daily) for f in self.folds), default=0)):
            ics = [f.daily[d].ic for f in self.folds if d < len(f.daily) and f.daily[d].n > 0]
            finite = [v for v in ics if np.isfinite(v)]
            out.append({"days_since_fit": d + 1, "ic_mean": float(np.mean(finite)) if finite else float("nan"),
                        "ic_folds": ics, "n_folds": len(finite)})
        return out

    def to_report(self) -> dict[str, Any]:
        def day(i: int) -> str:
            return str(np.datetime64(int(self.days[i]), "D"))

        return {
            "days": [str(np.datetime64(int(d), "D")) for d in self.days],
            "folds": [
                {
                    "fold": f.index,
                    "fit": [day(f.fit_days[0]), day(f.fit_days[1] - 1)],
                    "eval": [day(f.eval_days[0]), day(f.eval_days[1] - 1)],
                    "best_epoch": f.result.best_epoch,
                    "epochs": len(f.result.history),
                    "scores": msgspec.to_builtins(f.result.scores),
                    "daily": [{"days_since_fit": k + 1, **msgspec.to_builtins(s)} for k, s in enumerate(f.daily)],
                }
                for f in self.folds
            ],
            "decay": self.decay(),
        }

    def markdown(self) -> list[str]:
        rep = self.to_report()
        lines = ["", "Walk-forward folds (scores on each fold's evaluation days, out of sample):", "",
                 "| fold | fit days | eval days | best epoch | eval loss | eval IC | eval rank IC | ticks |",
                 "|---|---|---|---|---|---|---|---|"]
        for f in rep["folds"]:
            s = f["scores"]["test"]
            lines.append(f"| {f['fold']} | {f['fit'][0]} .. {f['fit'][1]} | {f['eval'][0]} .. {f['eval'][1]} | "
                         f"{f['best_epoch']} | {s['loss']:.4f} | {s['ic']:.4f} | {s['rank_ic']:.4f} | {s['n']:,} |")
        lines += ["", "Decay: IC by trading days since the fit (mean over folds):", "",
                  "| days since fit | mean IC | folds |", "|---|---|---|"]
        for d in rep["decay"]:
            lines.append(f"| {d['days_since_fit']} | {d['ic_mean']:.4f} | {d['n_folds']} |")
        return lines


def trading_days(segments: list[Segment]) -> np.ndarray:
    return np.unique([s.start_ns // DAY_NS for s in segments])


def fold_windows(n_days: int, train_days: int, refit_days: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """((fit_lo, fit_hi), (eval_lo, eval_hi)) day-index ranges; the last fold may evaluate fewer days."""
    if train_days < 2:
        raise ValueError(f"--train-days must be >= 2 (the last fit day validates for early stopping), got {train_days}")
    if refit_days < 1:
        raise ValueError(f"--refit-days must be >= 1, got {refit_days}")
    if n_days < train_days + 1:
        raise ValueError(f"the data spans {n_days} trading day(s); --train-days {train_days} leaves none to evaluate: "
                         f"lower --train-days or add data (--n-sessions)")
    out = []
    k = 0
    while k + train_days < n_days:
        out.append(((k, k + train_days), (k + train_days, min(k + train_days + refit_days, n_days))))
        k += refit_days
    return out


def walk_forward(
    segments: list[Segment],
    model_config: ModelConfig,
    config: TrainConfig,
    *,
    train_days: int,
    refit_days: int,
    on_fold: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, str], None] | None = None,
) -> WalkForward:
    """Fit and evaluate every fold (module docstring). ``on_fold(k, n_folds)`` before each fit."""
    days = trading_days(segments)
    windows = fold_windows(len(days), train_days, refit_days)
    seg_day = np.searchsorted(days, [s.start_ns // DAY_NS for s in segments])
    n_val = max(1, round(train_days * config.val_frac))
    n_val = min(n_val, train_days - 1)
    folds = []
    for k, ((f0, f1), (e0, e1)) in enumerate(windows):
        if on_fold is not None:
            on_fold(k, len(windows))

        def pick(lo: int, hi: int) -> list[Segment]:
            return [s for s, d in zip(segments, seg_day) if lo <= d < hi]

        v0 = f1 - n_val
        split = Split(pick(f0, v0), pick(v0, f1), pick(e0, e1), int(days[v0]) * DAY_NS, int(days[e0]) * DAY_NS)
        result = train(split, model_config, config, on_step=on_step)
        daily = []
        for d in range(e0, e1):
            data = segment_tensors(pick(d, d + 1), result.normalizer, config.horizon)
            daily.append(evaluate(result.model, data, config.batch_size, config.huber_delta))
        folds.append(Fold(index=k, fit_days=(f0, f1), eval_days=(e0, e1), result=result, daily=daily))
    return WalkForward(days=[int(d) for d in days], folds=folds)
