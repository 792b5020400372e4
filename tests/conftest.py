from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from engine import _core
from engine.backtest import BacktestConfig, run_backtest
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE
from feeds.memory import ArraySource
from strategies.base import Strategy, TickBatch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The CUDA backend (engine._core.CudaSsmModel) exists only in a core built with it, and runs only
# where there is a device: tests that need it skip, saying which is missing.
CUDA_BUILD = hasattr(_core, "CudaSsmModel")
CUDA_DEVICES = _core.CudaSsmModel.device_count() if CUDA_BUILD else 0
needs_cuda_build = pytest.mark.skipif(not CUDA_BUILD, reason="engine._core was built without the CUDA backend (make core-cuda)")
needs_cuda_device = pytest.mark.skipif(
    CUDA_DEVICES == 0,
    reason="no CUDA device here (CudaSsmModel.device_count() == 0)" if CUDA_BUILD
    else "needs a GPU and a core built with the CUDA backend (make core-cuda)")
S = 1_000_000_000
MS = 1_000_000
T0 = 1_704_153_600 * S  # 2024-01-02 00:00:00 UTC


def quotes(rows) -> np.ndarray:
    """rows: (ts_ns, instrument, bid_px, ask_px[, bid_sz, ask_sz[, flags]])"""
    q = np.zeros(len(rows), dtype=QUOTE_DTYPE)
    for k, r in enumerate(rows):
        ts, inst, bid, ask = r[:4]
        bid_sz, ask_sz = (r[4], r[5]) if len(r) >= 6 else (100.0, 100.0)
        q[k] = (ts, ts, bid, ask, bid_sz, ask_sz, k + 1, inst, r[6] if len(r) >= 7 else 0)
    return q


def table(n: int = 1, *, calendar: str = "24x7", gap_ns: int = 3600 * S, warmup_ticks: int = 0, lot_size=1.0):
    return InstrumentTable(
        Instrument(symbol=f"I{k}", calendar=calendar, gap_ns=gap_ns, warmup_ticks=warmup_ticks, lot_size=lot_size)
        for k in range(n)
    )


class Scripted(Strategy):
    """Targets looked up by (instrument, ts); rows not in the script answer NaN (keep)."""

    name = "scripted"

    def __init__(self, script: dict[tuple[int, int], float]) -> None:
        self.script = script
        self.seen: list[tuple[int, int, bool, bool]] = []  # (instrument, ts, reset, warm)

    def on_batch(self, batch: TickBatch) -> np.ndarray:
        out = np.full(len(batch), np.nan)
        for k, i in enumerate(batch.instrument):
            key = (int(i), batch.ts_ns)
            self.seen.append((int(i), batch.ts_ns, bool(batch.reset[k]), bool(batch.warm[k])))
            if key in self.script:
                out[k] = self.script[key]
        return out


def reference_fill(order: list, bid: float, ask: float, bid_sz: float, ask_sz: float, *, fee_bps: float,
                   fee_fixed: float, size_cap: bool, cancel_rem: bool) -> tuple[int, float, float] | None:
    """DESIGN.md's fill of a working order ([id, decision_ts, active_ts, remaining lots, ...]) at a tick
    past its active time, written as plainly as possible: (lots, px, fee), or None when nothing
    fills. The order's remaining lots are updated (and zeroed when the remainder is cancelled)."""
    buy = order[3] > 0
    px = ask if buy else bid
    lots = order[3]
    if size_cap:
        avail = math.floor((ask_sz if buy else bid_sz) + 1e-9)
        lots = min(lots, avail) if buy else max(lots, -avail)
    out = None
    if lots:
        out = (lots, px, abs(lots) * px * fee_bps * 1e-4 + fee_fixed)
        order[3] -= lots
    if order[3] and cancel_rem:
        order[3] = 0
    return out


def reference_order(order: dict, pos: dict, i: int, target: float, ts: int, latency_ns: int, next_id: int,
                    *extra) -> int:
    """DESIGN.md's order rule as plainly as possible: a target equal to the position plus the working
    order keeps that order; another cancels it and, unless it is the position, sends a new one
    ([id, decision_ts, active_ts, remaining lots, *extra]). Returns the next order id."""
    o = order.get(i)
    working = o[3] if o else 0
    p = pos.get(i, 0)
    if target == p + working:
        return next_id
    if o:
        o[3] = 0
    if target != p:
        order[i] = [next_id, ts, ts + latency_ns, target - p, *extra]
        return next_id + 1
    return next_id


def draw_quote(draw, ts: int, i: int) -> tuple:
    """A hypothesis-drawn quote row for ``quotes()``: half-point prices, small sizes (0 included)."""
    bid = 100 + draw(st.integers(0, 10)) * 0.5
    ask = bid + draw(st.integers(1, 3)) * 0.5
    return (ts, i, bid, ask, float(draw(st.integers(0, 8))), float(draw(st.integers(0, 8))))


def run(q, instruments, python_strategy=None, **config):
    config.setdefault("interval", "raw")
    config.setdefault("fee_bps", 0.0)
    cfg = BacktestConfig(**config)
    return run_backtest(ArraySource(q, instruments), cfg, strategy=python_strategy)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (only present on the developers' machine)")
    return SHARED_DATA
