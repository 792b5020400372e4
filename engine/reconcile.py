"""Reconciliation: replay a paper run's own recording through the backtester and compare, bit for bit.

For each segment of the run (one per process that worked on it; a crash and restart starts a new one),
a fresh engine re-books the fills journaled before the segment, exactly as the restart did, and replays
the segment's recorded frames through the same decoders, validator, conflator, engine and strategy.
Its orders, fills and resets must equal the journal's, field for field and bit for bit, up to the last
tick the segment committed (a crash loses the uncommitted tail of both). ``nextick reconcile RUN_DIR``
prints the outcome and exits 1 on any divergence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.backtest import BacktestConfig, Engine, load_strategy, stream_ticks
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.timestamps import DAY_NS
from engine.domain.validate import ValidationPolicy
from engine.journal import (
    ORDER_EVENT_KINDS,
    RESET_REASONS,
    RESTART,
    Journal,
    restore_segment,
)
from strategies.builtin import is_builtin

_NO_FUTURE = 10**18


class Divergence(msgspec.Struct, kw_only=True):
    segment: int
    table: str  # orders | fills | resets
    index: int  # position in the segment's rows of that table
    journal: Any
    replay: Any


class SegmentCheck(msgspec.Struct, kw_only=True):
    segment: int
    end_reason: str | None
    last_ts_ns: int | None
    orders: tuple[int, int]  # (journal, replay)
    fills: tuple[int, int]
    resets: tuple[int, int]
    quotes: int


class ReconcileReport(msgspec.Struct, kw_only=True):
    run_dir: str
    segments: list[SegmentCheck]
    divergences: list[Divergence]

    @property
    def ok(self) -> bool:
        return not self.divergences

    def format(self) -> str:
        lines = [f"reconcile {self.run_dir}"]
        for s in self.segments:
            lines.append(
                f"  segment {s.segment} ({s.end_reason or 'crashed'}): {s.quotes:,} quotes replayed; "
                f"orders {s.orders[0]}/{s.orders[1]}, fills {s.fills[0]}/{s.fills[1]}, resets {s.resets[0]}/{s.resets[1]} "
                "(journal/replay)"
            )
        if self.ok:
            lines.append("  identical: every order, fill and reset of the journal is reproduced bit for bit")
        else:
            lines.append(f"  {len(self.divergences)} divergence(s); first ones:")
            for d in self.divergences[:10]:
                lines.append(f"    segment {d.segment} {d.table}[{d.index}]: journal {d.journal} != replay {d.replay}")
        return "\n".join(lines)


def _order_rows(log: np.ndarray, segment_last_ts: int | None) -> list[tuple]:
    rows = []
    for o in log:
        if segment_last_ts is not None and int(o["ts"]) > segment_last_ts:
            continue
        rows.append((int(o["order_id"]), ORDER_EVENT_KINDS[o["kind"]], int(o["instrument"]), int(o["ts"]),
                     int(o["active_ts"]), float(o["units"]), float(o["decision_mid"])))
    return rows


def _fill_rows(fills: np.ndarray, last_ts: int | None) -> list[tuple]:
    return [
        (int(f["order_id"]), int(f["fill_ts"]), int(f["instrument"]), int(f["decision_ts"]), float(f["px"]),
         float(f["sz"]), float(f["fee"]), float(f["decision_mid"]), float(f["slippage_bps"]))
        for f in fills
        if last_ts is None or int(f["fill_ts"]) <= last_ts
    ]


def _compare(segment: int, table: str, a: list[tuple], b: list[tuple], out: list[Divergence]) -> None:
    for k in range(max(len(a), len(b))):
        ja = a[k] if k < len(a) else None
        rb = b[k] if k < len(b) else None
        # repr() compares floats bit for bit (and -0.0 with 0.0 apart), unlike ==.
        if repr(ja) != repr(rb):
            out.append(Divergence(segment=segment, table=table, index=k, journal=ja, replay=rb))
            if len(out) >= 100:
                return


def segment_engine(
    journal: Journal, config: BacktestConfig, instruments: InstrumentTable, segment: int, started_ns: int
) -> Engine:
    """A fresh engine where ``segment`` of the run began (``engine.journal.restore_segment``), as
    the paper trader's process for that segment had it before its first quote."""
    strategy = None if is_builtin(config.strategy) else load_strategy(config.strategy, config.strategy_params)
    engine = Engine(config, instruments, strategy)
    engine.session_lookahead_ns = DAY_NS
    restore_segment(journal, engine, segment, started_ns)
    return engine


def reconcile(run_dir: Path | str) -> ReconcileReport:
    from feeds.raw_replay import RawReplay

    run_dir = Path(run_dir)
    path = run_dir / "journal.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no journal; is {run_dir} a `nextick paper` run directory?")
    j = Journal(path)
    try:
        meta = j.meta()
        config = msgspec.convert(meta["backtest"], BacktestConfig)
        instruments = InstrumentTable(msgspec.convert(meta["instruments"], list[Instrument]))
        segments = j.segments()
        divergences: list[Divergence] = []
        checks: list[SegmentCheck] = []
        raw = run_dir / "raw"
        for k, seg in enumerate(segments):
            lo = seg["started_ns"]
            hi = segments[k + 1]["started_ns"] if k + 1 < len(segments) else None
            last_ts = seg["last_ts_ns"]
            engine = segment_engine(j, config, instruments, seg["segment"], lo)
            core = engine.core
            n_prior = core.n_fills
            quotes = 0
            if raw.exists() and last_ts is not None:
                source = RawReplay(raw, instruments=instruments, policy=ValidationPolicy(future_tolerance_ns=_NO_FUTURE))
                for _, ticks in stream_ticks(_Window(source, lo, hi), config.interval):
                    ticks = ticks[ticks["ts_recv"] <= last_ts]
                    quotes += len(ticks)
                    engine.run(ticks)
            if seg["end_reason"] is not None:
                core.finish()  # the live run cancelled what was working when it stopped
            # RESTART cancels are the journal's own, not the engine's.
            j_orders = [r for r in j.orders(segment=seg["segment"]) if r[1] != RESTART]
            r_orders = _order_rows(core.take_order_log(), None)
            j_fills = _fill_rows(j.fills(core.fills().dtype, segment=seg["segment"]), None)
            r_fills = _fill_rows(core.fills_since(n_prior), last_ts)
            j_resets = j.resets(segment=seg["segment"])
            r_resets = [(int(r["ts"]), int(r["instrument"]), RESET_REASONS[r["reason"]]) for r in core.resets()]
            if last_ts is not None:
                r_resets = [r for r in r_resets if r[0] <= last_ts]
            _compare(seg["segment"], "orders", [tuple(r) for r in j_orders], r_orders, divergences)
            _compare(seg["segment"], "fills", j_fills, r_fills, divergences)
            _compare(seg["segment"], "resets", j_resets, r_resets, divergences)
            checks.append(
                SegmentCheck(
                    segment=seg["segment"], end_reason=seg["end_reason"], last_ts_ns=last_ts,
                    orders=(len(j_orders), len(r_orders)), fills=(len(j_fills), len(r_fills)),
                    resets=(len(j_resets), len(r_resets)), quotes=quotes,
                )
            )
        return ReconcileReport(run_dir=str(run_dir), segments=checks, divergences=divergences)
    finally:
        j.close()


class _Window:
    """The quotes of ``source`` with lo <= ts_recv < hi (one segment of a run)."""

    def __init__(self, source, lo: int, hi: int | None) -> None:
        self.source = source
        self.instruments = source.instruments
        self.stats = source.stats
        self.lo, self.hi = lo, hi

    def chunks(self):
        for chunk in self.source.chunks():
            ts = chunk["ts_recv"]
            keep = ts >= self.lo
            if self.hi is not None:
                keep &= ts < self.hi
            if keep.all():
                yield chunk
            elif keep.any():
                yield chunk[keep]
