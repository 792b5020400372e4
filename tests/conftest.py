from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.backtest import BacktestConfig, run_backtest
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE
from feeds.memory import ArraySource
from strategies.base import Strategy, TickBatch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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
