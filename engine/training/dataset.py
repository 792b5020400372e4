"""Training sets from replayed ticks, built by the engine's own tick loop.

The backtester's feature tap records every in-session tick exactly as the signal path sees it
(features from csrc/features.hpp, after conflation, sessions and resets). A *segment* is one
instrument's ticks from one reset to the next: the model trains on each from zero state, which is
precisely what the step kernel sees after a reset. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from engine.domain.source import QuoteSource
from engine.domain.timestamps import DAY_NS
from engine.model.config import FEATURE_NAMES
from engine.model.weights import Normalizer


class Segment(NamedTuple):
    instrument: int
    ts_ns: np.ndarray  # [n] int64, tick receive times
    features: np.ndarray  # [n, F] float64, raw (unnormalized)
    mid: np.ndarray  # [n] float64

    @property
    def start_ns(self) -> int:
        return int(self.ts_ns[0])


def collect_segments(
    source: QuoteSource,
    *,
    interval: str = "1s",
    warmup_ticks: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[Segment]:
    """Replay ``source`` through the engine (no strategy) and cut the tapped ticks into segments,
    ordered by start time."""
    from engine.backtest import BacktestConfig, Engine, stream_ticks

    config = BacktestConfig(strategy="none", interval=interval, warmup_ticks=warmup_ticks)
    engine = Engine(config, source.instruments, None)
    engine.core.set_tap(True)
    parts: list[np.ndarray] = []
    for n_quotes, ticks in stream_ticks(source, interval):
        engine.run(ticks)
        parts.append(_compact(engine.core.take_tap()))
        if on_progress is not None and n_quotes:
            on_progress(n_quotes)
    return split_segments(np.concatenate(parts) if parts else np.empty(0, _COMPACT))


_COMPACT = np.dtype([("ts", "<i8"), ("instrument", "<u4"), ("reset", "u1"), ("mid", "<f8"), ("f", "<f8", (len(FEATURE_NAMES),))])


def _compact(tap: np.ndarray) -> np.ndarray:
    out = np.empty(len(tap), _COMPACT)
    out["ts"] = tap["ts"]
    out["instrument"] = tap["instrument"]
    out["reset"] = tap["reset"]
    out["mid"] = tap["mid"]
    for j, name in enumerate(FEATURE_NAMES):
        out["f"][:, j] = tap[name]
    return out


def split_segments(rows: np.ndarray) -> list[Segment]:
    """Tapped rows (time order, all instruments) -> per-instrument segments split at resets."""
    segments: list[Segment] = []
    for inst in np.unique(rows["instrument"]):
        r = rows[rows["instrument"] == inst]
        starts = np.flatnonzero(r["reset"])
        if len(starts) == 0 or starts[0] != 0:  # every in-session tick follows a reset; be safe
            starts = np.concatenate([[0], starts])
        bounds = np.append(starts, len(r))
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                s = r[a:b]
                segments.append(Segment(int(inst), s["ts"].copy(), s["f"].copy(), s["mid"].copy()))
    segments.sort(key=lambda s: (s.start_ns, s.instrument))
    return segments


def horizon_target(mid: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """log(mid[t+K] / mid[t]) in bps and its validity mask (False for the last K ticks, which have
    no tick K ahead inside the segment)."""
    y = np.zeros(len(mid))
    valid = np.zeros(len(mid), dtype=bool)
    if len(mid) > horizon:
        y[:-horizon] = np.log(mid[horizon:] / mid[:-horizon]) * 1e4
        valid[:-horizon] = np.isfinite(y[:-horizon])
        y[~valid] = 0.0
    return y, valid


class Split(NamedTuple):
    train: list[Segment]
    val: list[Segment]
    test: list[Segment]
    val_start_ns: int
    test_start_ns: int


def split_by_time(segments: list[Segment], val_frac: float = 0.2, test_frac: float = 0.2) -> Split:
    """Chronological split on UTC days of segment starts: the earliest days train, then validation,
    then test. Days are whole, so no session straddles two parts."""
    if not segments:
        raise ValueError("no in-session ticks in the data: nothing to train on")
    days = np.unique([s.start_ns // DAY_NS for s in segments])
    if len(days) < 3:
        raise ValueError(f"the data spans {len(days)} day(s); a train/validation/test split by time needs at least 3")
    n_test = max(1, round(len(days) * test_frac))
    n_val = max(1, round(len(days) * val_frac))
    if len(days) - n_test - n_val < 1:
        n_test = n_val = 1
    val_start = int(days[len(days) - n_test - n_val]) * DAY_NS
    test_start = int(days[len(days) - n_test]) * DAY_NS
    train = [s for s in segments if s.start_ns < val_start]
    val = [s for s in segments if val_start <= s.start_ns < test_start]
    test = [s for s in segments if s.start_ns >= test_start]
    return Split(train, val, test, val_start, test_start)


def fit_normalizer(train: list[Segment], horizon: int) -> Normalizer:
    """Feature and target statistics from the training segments only."""
    f = np.concatenate([s.features for s in train])
    ys = [horizon_target(s.mid, horizon) for s in train]
    y = np.concatenate([t[v] for t, v in ys])
    if len(y) < 2:
        raise ValueError(f"training segments are shorter than the horizon ({horizon} ticks): lower --horizon or add data")
    std = f.std(axis=0)
    std[~(std > 1e-12)] = 1.0  # a constant feature: centre it, do not blow it up
    return Normalizer(
        names=FEATURE_NAMES,
        mean=tuple(float(v) for v in f.mean(axis=0)),
        std=tuple(float(v) for v in std),
        target_mean=float(y.mean()),
        target_std=float(y.std()) if y.std() > 0 else 1.0,
    )
