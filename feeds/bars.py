"""Bars: any quote source thinned to each instrument's last quote per bar, within its sessions.

Daily rebalancing studies need prices once a bar, not every quote of a recording: ``BarSource(source,
bar_s)`` streams ``source`` and keeps, per instrument and bar, the last quote of that bar (so the
bar's mid is its last mid), with its own timestamps, sizes and ``seq``. It is a ``QuoteSource``, so
the engine, ``QuoteDataset`` and ``nextick compare`` take it as they take the source itself.

Bars are anchored at each session's open (the instrument's calendar): bar k of a session is
``[open + k bar_s, open + (k + 1) bar_s)``, cut at the close, so a bar never spans two sessions and a
1-day bar is one session. Quotes outside every session are dropped and counted as
``stats.skipped["outside_session"]``.

Streaming: a bar is complete once a quote at or after its end has been read; complete bars go out in
``ts_recv`` order (a complete bar waits while an open one of another calendar holds an earlier
quote), so memory stays at a few rows per instrument whatever the length of the source.

For the engine's execution rules (DESIGN.md "Execution"), choose bars so a session holds several:
an order fills at the instrument's next tick and dies at the close, so with one bar per session
(``bar_s = 86400`` on a 6.5 h market) nothing decided at the session's only tick ever fills. The
instruments' ``gap_ns`` is raised to three bars (a silence of one bar is no outage here); the
warm-up is the run's ``warmup_ticks`` (``--warmup-ticks 0`` for bars).
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import numpy as np

from engine.domain.calendar import SessionCalendar
from engine.domain.instrument import InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, concat_rows, take_rows
from engine.domain.source import QuoteSource, SourceStats
from engine.domain.timestamps import SECOND_NS

MIN_BAR_S = 1.0
MAX_BAR_S = 86_400.0


class BarSource:
    """``source`` resampled to the last quote of each instrument per ``bar_s``-second bar (module doc)."""

    def __init__(self, source: QuoteSource, bar_s: float) -> None:
        if not (isinstance(bar_s, (int, float)) and MIN_BAR_S <= bar_s <= MAX_BAR_S):
            raise ValueError(f"resample_s must be {MIN_BAR_S:g} to {MAX_BAR_S:g} seconds (1 s .. 1 day), not {bar_s!r}")
        self.inner = source
        self.bar_ns = int(round(bar_s * SECOND_NS))
        self.instruments = InstrumentTable()
        self.stats = SourceStats(source=f"{source.stats.source}, {bar_s:g} s bars")
        self._calendars: dict[str, SessionCalendar] = {}
        self._sync_instruments()

    def __repr__(self) -> str:
        return f"BarSource({self.inner!r}, bar_s={self.bar_ns / SECOND_NS:g})"

    def _sync_instruments(self) -> None:
        """Mirror the inner table (it may grow while streaming) with the gap raised to three bars."""
        for k in range(len(self.instruments), len(self.inner.instruments)):
            inst = self.inner.instruments[k]
            self.instruments.add(msgspec.structs.replace(inst, gap_ns=max(inst.gap_ns, 3 * self.bar_ns)))

    def _bars(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the start and the end of its bar (ns), start -1 outside every session."""
        start = np.full(len(q), -1, np.int64)
        end = np.full(len(q), -1, np.int64)
        ts = q["ts_recv"].astype(np.int64)
        for i in np.unique(q["instrument"]):
            spec = self.instruments[int(i)].calendar
            cal = self._calendars.setdefault(spec, SessionCalendar.parse(spec))
            sel = np.flatnonzero(q["instrument"] == i)
            t = ts[sel]
            opens = cal.session_open_of(t)
            inside = opens >= 0
            s = np.where(inside, opens + (t - opens) // self.bar_ns * self.bar_ns, -1)
            start[sel], end[sel] = s, np.where(inside, s + self.bar_ns, -1)
        return start, end

    def chunks(self) -> Iterator[np.ndarray]:
        self.stats.rows_read = 0
        self.stats.rows_emitted = 0
        outside = 0
        held = np.zeros(0, QUOTE_DTYPE)  # last rows of bars not yet emitted (few per instrument)
        held_start = np.zeros(0, np.int64)
        held_end = np.zeros(0, np.int64)
        for chunk in self.inner.chunks():
            self._sync_instruments()
            self.stats.rows_read += len(chunk)
            if not len(chunk):
                continue
            start, end = self._bars(chunk)
            inside = start >= 0
            outside += int((~inside).sum())
            rows = concat_rows([held, chunk[inside]])
            b_start = np.concatenate([held_start, start[inside]])
            b_end = np.concatenate([held_end, end[inside]])
            # The last row of each (instrument, bar): rows are in ts_recv order, so the last by position.
            order = np.lexsort((np.arange(len(rows)), b_start, rows["instrument"]))
            inst_o, start_o = rows["instrument"][order], b_start[order]
            is_last = np.ones(len(order), bool)
            is_last[:-1] = (inst_o[1:] != inst_o[:-1]) | (start_o[1:] != start_o[:-1])
            keep = np.sort(order[is_last])  # back in ts_recv order
            rows, b_start, b_end = take_rows(rows, keep), b_start[keep], b_end[keep]
            now = int(chunk["ts_recv"][-1])
            complete = b_end <= now
            # Emit complete bars older than every open one, so the output's ts_recv never decreases.
            first_open = int(rows["ts_recv"][~complete].min()) if (~complete).any() else np.iinfo(np.int64).max
            emit = complete & (rows["ts_recv"] < first_open)
            held, held_start, held_end = take_rows(rows, np.flatnonzero(~emit)), b_start[~emit], b_end[~emit]
            self._sync_stats(outside)
            if emit.any():
                out = take_rows(rows, np.flatnonzero(emit))
                self.stats.rows_emitted += len(out)
                yield out
        self._sync_stats(outside)
        if len(held):
            self.stats.rows_emitted += len(held)
            yield held

    def _sync_stats(self, outside: int) -> None:
        inner = self.inner.stats
        self.stats.quarantined = dict(inner.quarantined)
        self.stats.skipped = {**inner.skipped, **({"outside_session": outside} if outside else {})}
        self.stats.ts_unit, self.stats.ts_unit_detected = inner.ts_unit, inner.ts_unit_detected

