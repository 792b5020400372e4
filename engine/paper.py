"""Paper trading: live quotes through the backtest's engine, with simulated next-tick fills, journaled.

    LiveFeed(s) -> FrameNormalizer rows -> QuoteValidator -> Conflator -> Engine (C++ core) -> Journal
                \\-> RawRecorder (frames + feed events)                       \\-> status line, latency

The engine, strategies and fill rules are the backtester's own (``engine.backtest.Engine``): an order
decided on a tick fills at the first later tick of its instrument after the configured latency, at
that tick's ask or bid. Quotes are handled in small batches: every frame is decoded as it arrives,
and the batch goes through the engine as soon as the event loop has no frame waiting, so a quiet feed
sees each quote alone and a busy one is handled in bulk. With a conflation interval, a timer releases
each interval's snapshots when the interval ends, even if no later quote arrives.

Crash safety: each batch's orders, fills, resets and feed events are committed in one SQLite
transaction after the raw recording is flushed. A restart (same run directory) re-books the
journaled fills, cancels orders that were working at the crash, and carries on; every instrument
resets on its first tick (fresh state), so the model never runs across the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.backtest import INTERVALS_NS, BacktestConfig, Engine, load_strategy
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.latency import StageLatency
from engine.domain.quote import QUOTE_DTYPE
from engine.domain.source import SourceStats
from engine.domain.timestamps import DAY_NS, SECOND_NS
from engine.domain.validate import QuoteValidator, ValidationPolicy
from engine.journal import Journal, restore_segment
from feeds.live import FeedConfig, FeedEvent, LiveFeed, RecvClock
from feeds.normalize import FeedCounters, FrameNormalizer
from feeds.venues import get_venue
from strategies.builtin import is_builtin

_I64_MAX_TOLERANCE = 10**18  # our own receive clock cannot be "in the future"
_SPIN_S = 0.002  # the interval-end timer wakes this early and spins the rest


class PaperConfig(msgspec.Struct, kw_only=True):
    venues: dict[str, list[str]]  # venue name -> symbols in the venue's spelling
    backtest: BacktestConfig = msgspec.field(default_factory=BacktestConfig)
    feed: FeedConfig = msgspec.field(default_factory=FeedConfig)
    url: str | None = None  # one websocket base for every venue (the local simulator); None: production
    tick_size: float = 0.01
    lot_size: float = 0.001
    gap_s: float = 60.0
    warmup_ticks: int = 50
    max_batch_rows: int = 4096  # a batch goes through the engine at the latest at this many quotes
    record_raw: bool = True


def build_instruments(cfg: PaperConfig) -> tuple[InstrumentTable, dict[str, dict[str, int]]]:
    """The run's instruments and, per venue, venue symbol -> instrument id. An instrument is named by
    its symbol, or ``venue:symbol`` when two venues list the same symbol."""
    seen: dict[str, int] = {}
    for syms in cfg.venues.values():
        for s in syms:
            seen[s] = seen.get(s, 0) + 1
    table = InstrumentTable()
    ids: dict[str, dict[str, int]] = {}
    for venue, syms in cfg.venues.items():
        name = get_venue(venue).name
        ids[name] = {}
        for s in syms:
            label = s if seen[s] == 1 else f"{name}:{s}"
            ids[name][s] = table.add(
                Instrument(
                    symbol=label,
                    venue=name,
                    tick_size=cfg.tick_size,
                    lot_size=cfg.lot_size,
                    calendar="24x7",
                    gap_ns=int(cfg.gap_s * SECOND_NS),
                    warmup_ticks=cfg.warmup_ticks,
                )
            )
    return table, ids


def run_meta(cfg: PaperConfig, instruments: InstrumentTable, ids: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What makes a run directory's journal belong to this run: resuming with other settings is refused."""
    return {
        "backtest": msgspec.to_builtins(cfg.backtest),
        "instruments": msgspec.to_builtins(list(instruments)),
        "ids": ids,
    }


class PaperTrader:
    def __init__(
        self,
        config: PaperConfig,
        run_dir: Path,
        *,
        print_fn: Callable[[str], None] = print,
        status_every_s: float = 1.0,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.print = print_fn
        self.status_every_s = status_every_s
        self.instruments, self.ids = build_instruments(config)
        bt = config.backtest
        strategy = None if is_builtin(bt.strategy) else load_strategy(bt.strategy, bt.strategy_params)
        self.engine = Engine(bt, self.instruments, strategy)
        self.engine.session_lookahead_ns = DAY_NS
        self.core = self.engine.core
        self.clock = RecvClock()
        self.interval_ns = INTERVALS_NS[bt.interval]
        from engine import _core

        self.conflator = _core.Conflator(self.interval_ns) if self.interval_ns else None
        self.source_stats = SourceStats(source="live")
        self.validator = QuoteValidator(
            ValidationPolicy(future_tolerance_ns=_I64_MAX_TOLERANCE), self.source_stats, "live"
        )
        self.latency = StageLatency()
        self.counters: dict[str, FeedCounters] = {}
        self.normalizers: dict[str, FrameNormalizer] = {}
        self.feeds: list[LiveFeed] = []
        self.recorders: list[Any] = []
        self.journal: Journal | None = None
        self.quotes_in = 0
        self.ticks = 0
        self.engine_errors = 0
        self.last_error = ""
        self._pending_stamps: list[tuple[int, int]] = []
        self._pending_events: list[FeedEvent] = []
        self._flush_scheduled = False
        self._n_fills = 0
        self._n_resets = 0
        self._last_ts = 0
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.restored_fills = 0

    # -- setup --------------------------------------------------------------------------------------

    def _open_journal(self) -> None:
        j = Journal.open(self.run_dir, run_meta(self.config, self.instruments, self.ids))
        started_ns = self.clock.now()
        start = restore_segment(j, self.engine, j.next_segment(), started_ns)
        self.core.set_stamping(True)
        self.restored_fills = len(start.fills)
        self._n_fills = self.core.n_fills
        j.begin_segment(started_ns, len(start.fills), float(self.core.cash), [float(p) for p in self.core.positions()])
        j.cancel_working(start.working, self.clock.now())
        self.journal = j

    def _build_feeds(self) -> None:
        recorder_cls = None
        if self.config.record_raw:
            from feeds.recorder import RawRecorder

            recorder_cls = RawRecorder
        feed_cfg = self.config.feed
        if self.config.url is not None:
            feed_cfg = msgspec.structs.replace(feed_cfg, url=self.config.url)
        for venue, syms in self.config.venues.items():
            name = get_venue(venue).name
            counters = FeedCounters()
            norm = FrameNormalizer(get_venue(venue), self.ids[name], counters)
            rec = recorder_cls(self.run_dir, name) if recorder_cls is not None else None
            if self.journal is not None and self.journal.segment > 1:
                # A restart lost whatever arrived while the process was down: RECONNECT resets.
                norm.mark_reconnect()
                if rec is not None:
                    rec.event(self.clock.now(), "restart", segment=self.journal.segment)
            if rec is not None:
                self.recorders.append(rec)
            self.counters[name] = counters
            self.normalizers[name] = norm
            self.feeds.append(
                LiveFeed(name, syms, norm, config=feed_cfg, clock=self.clock, on_data=self._on_data,
                         on_event=self._on_event, recorder=rec)
            )

    # -- the live path ------------------------------------------------------------------------------

    def _on_data(self, recv_mono: int, decoded_mono: int) -> None:
        self._pending_stamps.append((recv_mono, decoded_mono))
        if len(self._pending_stamps) >= self.config.max_batch_rows:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _on_event(self, ev: FeedEvent) -> None:
        self._pending_events.append(ev)

    def _take_rows(self) -> np.ndarray:
        parts = [n.take() for n in self.normalizers.values() if len(n)]
        if not parts:
            return np.zeros(0, dtype=QUOTE_DTYPE)
        if len(parts) == 1:
            return parts[0]
        rows = np.concatenate(parts)
        return rows[np.argsort(rows["ts_recv"], kind="stable")]

    def _flush(self, release_until_ns: int | None = None) -> None:
        """Pending quotes through the engine, then the step's records into the journal. Never raises:
        a failure is counted and shown, and the feed keeps running."""
        self._flush_scheduled = False
        dispatch = time.monotonic_ns()
        stamps, self._pending_stamps = self._pending_stamps, []
        try:
            rows = self._take_rows()
            self.quotes_in += len(rows)
            if len(rows):
                rows = self.validator.check(rows, np.arange(len(rows)))
            if self.conflator is None:
                ticks = rows
            else:
                ticks = self.conflator.push(rows) if len(rows) else np.zeros(0, dtype=QUOTE_DTYPE)
                if release_until_ns is not None:
                    released = self.conflator.flush_until(release_until_ns)
                    if len(released):
                        ticks = np.concatenate([ticks, released]) if len(ticks) else released
            before = self.core.stamps()[4]
            if len(ticks):
                self.engine.run(ticks)
                self.ticks += len(ticks)
                self._last_ts = int(ticks["ts_recv"][-1])
            self._record_latency(stamps, dispatch, before, ticks, release_until_ns)
            self._commit()
        except Exception as e:  # the live loop must survive anything one batch does
            self.engine_errors += 1
            self.last_error = f"{type(e).__name__}: {e}"

    def _record_latency(self, stamps, dispatch: int, batches_before: int, ticks: np.ndarray, released: int | None) -> None:
        state, sig, decision, order, batches = self.core.stamps()
        lat = self.latency.stages
        decode, queue = lat["decode"].add, lat["queue"].add
        for recv, decoded in stamps:
            decode(decoded - recv)
            queue(dispatch - decoded)
        if batches == batches_before:
            return  # nothing reached a decision in this step
        lat["state"].add(state - dispatch)
        lat["signal"].add(sig - state)
        lat["decision"].add(decision - sig)
        lat["order"].add(order - decision)
        to_decision, to_order = lat["recv_to_decision"].add, lat["recv_to_order"].add
        if self.conflator is None:
            for recv, _ in stamps:
                to_decision(decision - recv)
                to_order(order - recv)
        elif released is not None and len(ticks):
            # Conflated: a snapshot is due at its interval end; measure from then.
            due = self.clock.mono_of(int(ticks["ts_recv"][-1]))
            to_decision(decision - due)
            to_order(order - due)

    def _commit(self) -> None:
        core = self.core
        orders = core.take_order_log()
        fills = core.fills_since(self._n_fills)
        resets = core.resets_since(self._n_resets)
        events, self._pending_events = self._pending_events, []
        if not (len(orders) or len(fills) or len(resets) or events):
            return
        # Frames first: the journal never holds a decision whose input the recording lacks.
        for rec in self.recorders:
            rec.flush()
        assert self.journal is not None
        self.journal.commit(orders=orders, fills=fills, resets=resets, events=events, last_ts_ns=self._last_ts)
        self._n_fills += len(fills)
        self._n_resets += len(resets)

    async def _release_timer(self) -> None:
        """Conflated runs: at each interval end, release the interval's snapshots. The event loop's
        timers have millisecond resolution, so the wait ends a little early and the last stretch is
        spun on the clock: snapshots go out within microseconds of their interval end."""
        step = self.interval_ns
        assert step
        while True:
            now = self.clock.now()
            due = (now // step + 1) * step
            early_s = (due - now) / 1e9 - _SPIN_S
            if early_s > 0:
                await asyncio.sleep(early_s)
            mono_due = self.clock.mono_of(due)
            while time.monotonic_ns() < mono_due:
                pass
            self._flush(release_until_ns=self.clock.now())
            await asyncio.sleep(0)  # let frames that arrived meanwhile in

    # -- status ---------------------------------------------------------------------------------------

    def status_line(self, quotes_per_s: float) -> str:
        core = self.core
        eq = core.equity
        pnl = eq - self.config.backtest.initial_capital
        pos = core.positions()
        held = [f"{self.instruments[i].symbol} {p:+g}" for i, p in enumerate(pos) if p != 0]
        e2e = self.latency["recv_to_decision"]
        lat = f"e2e p50 {e2e.percentile(50) / 1e3:.0f}us p99 {e2e.percentile(99) / 1e3:.0f}us" if e2e.n else "e2e -"
        feeds = []
        for f in self.feeds:
            states = [c.state for c in f.connections]
            state = "up" if all(s == "up" for s in states) else "/".join(sorted(set(states)))
            reconn = sum(sum(c.disconnects.values()) for c in f.connections)
            c = f.counters
            bad = sum(c.quarantined.values())
            feeds.append(f"{f.name} {state} rc{reconn} gap{c.seq_gaps} bad{bad}")
        err = f" | ERR {self.engine_errors}: {self.last_error[:60]}" if self.engine_errors else ""
        return (
            f"eq {eq:,.2f} pnl {pnl:+,.2f} | {' '.join(held) or 'flat'} | {quotes_per_s:,.0f} q/s | {lat} | "
            f"{' | '.join(feeds)}{err}"
        )

    async def _status(self) -> None:
        last_q, last_t = self.quotes_in, time.monotonic()
        tty = sys.stdout.isatty()
        while True:
            await asyncio.sleep(self.status_every_s)
            now = time.monotonic()
            rate = (self.quotes_in - last_q) / max(now - last_t, 1e-9)
            last_q, last_t = self.quotes_in, now
            self._flush()  # also commits feed events of a quiet period
            line = self.status_line(rate)
            self.print(("\r" + line[:200]) if tty else line)

    # -- run ------------------------------------------------------------------------------------------

    async def run(self, duration_s: float | None = None) -> "PaperSummary":
        self._loop = asyncio.get_running_loop()
        self._open_journal()
        self._build_feeds()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.add_signal_handler(sig, self._stop.set)
        tasks = [asyncio.create_task(f.run()) for f in self.feeds]
        tasks.append(asyncio.create_task(self._status()))
        if self.conflator is not None:
            tasks.append(asyncio.create_task(self._release_timer()))
        t0 = time.monotonic()
        reason = "stopped"
        try:
            if duration_s is None:
                await self._stop.wait()
            else:
                try:
                    await asyncio.wait_for(self._stop.wait(), duration_s)
                except TimeoutError:
                    reason = "duration"
        finally:
            t_stop = time.monotonic()  # the run's length: shutdown (closing sockets, files) not included
            for f in self.feeds:
                f.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._flush()
            self.core.finish()
            self._commit()
            for rec in self.recorders:
                rec.close()
            assert self.journal is not None
            self.journal.end_segment(
                reason, float(self.core.cash), [float(p) for p in self.core.positions()], self._last_ts or None
            )
            summary = self.summary(t_stop - t0)
            self.journal.close()
        return summary

    def stop(self) -> None:
        self._stop.set()

    def summary(self, wall_s: float) -> "PaperSummary":
        return PaperSummary(
            run_dir=str(self.run_dir),
            segment=self.journal.segment if self.journal else 0,
            quotes_in=self.quotes_in,
            ticks=self.ticks,
            wall_s=wall_s,
            fills=self.core.n_fills,
            restored_fills=self.restored_fills,
            cash=float(self.core.cash),
            equity=float(self.core.equity),
            positions={self.instruments[i].symbol: float(p) for i, p in enumerate(self.core.positions())},
            resets=self.core.counters()["resets"],
            quarantined=dict(self.source_stats.quarantined),
            feeds={k: msgspec.to_builtins(v) for k, v in self.counters.items()},
            latency_us=self.latency.summary(),
            engine_errors=self.engine_errors,
            last_error=self.last_error,
        )


class PaperSummary(msgspec.Struct, kw_only=True):
    run_dir: str
    segment: int
    quotes_in: int
    ticks: int
    wall_s: float
    fills: int
    restored_fills: int
    cash: float
    equity: float
    positions: dict[str, float]
    resets: dict[str, int]
    quarantined: dict[str, int]
    feeds: dict[str, Any]
    latency_us: dict[str, dict[str, float]]
    engine_errors: int
    last_error: str
