"""The paper trader's journal: one SQLite database (WAL) per run directory.

Everything the run decided and everything that happened to it: orders (placed and cancelled), fills,
resets, feed events, and one ``segments`` row per process that worked on the run. Each engine step
commits its orders, fills, resets and events in one transaction, so after a ``kill -9`` the journal
holds every step before the last commit and nothing of the step after it: a fill is either in the
journal with its order, or it never happened.

A segment starts from what the journal holds before it (``SegmentStart``): the fills re-booked into a
fresh engine (``Backtester.restore_fills``), order ids above every earlier one, and the orders that
were working when the previous process died. ``restore_segment`` brings an engine there; the paper
trader does it on a restart, ``engine.reconcile`` for each segment it replays, so both start from
the same state by construction.

Every SQL statement of the project is in this module.

Floats are stored as SQLite REAL (IEEE double), so they round-trip bit for bit.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine import _core
from engine.backtest import Engine

FORMAT = "nextick-journal"
FORMAT_VERSION = 2  # 2: fills carry liquidity and order_type (explicit orders)
ORDER_EVENT_KINDS: tuple[str, ...] = tuple(_core.ORDER_EVENT_KINDS)
RESET_REASONS: tuple[str, ...] = tuple(_core.RESET_REASONS)
# The order kind a restart journals for an order that was working when the previous process died:
# the journal's own event, not the engine's.
RESTART = "restart"
_EVERY_SEGMENT = 1 << 62  # "before segment" bound that admits them all

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    segment INTEGER PRIMARY KEY, pid INTEGER, started_ns INTEGER NOT NULL,
    restored_fills INTEGER NOT NULL, restored_cash REAL NOT NULL, restored_positions TEXT NOT NULL,
    last_ts_ns INTEGER, ended_ns INTEGER, end_reason TEXT, final_cash REAL, final_positions TEXT
);
CREATE TABLE IF NOT EXISTS orders (
    order_id INTEGER NOT NULL, kind TEXT NOT NULL, segment INTEGER NOT NULL, instrument INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL, active_ts_ns INTEGER NOT NULL, units REAL NOT NULL, decision_mid REAL NOT NULL,
    PRIMARY KEY (order_id, kind)
);
CREATE TABLE IF NOT EXISTS fills (
    order_id INTEGER NOT NULL, fill_ts_ns INTEGER NOT NULL, segment INTEGER NOT NULL, instrument INTEGER NOT NULL,
    decision_ts_ns INTEGER NOT NULL, px REAL NOT NULL, sz REAL NOT NULL, fee REAL NOT NULL,
    decision_mid REAL NOT NULL, slippage_bps REAL NOT NULL, liquidity INTEGER NOT NULL, order_type INTEGER NOT NULL,
    PRIMARY KEY (order_id, fill_ts_ns)
);
CREATE TABLE IF NOT EXISTS resets (ts_ns INTEGER NOT NULL, instrument INTEGER NOT NULL, reason TEXT NOT NULL, segment INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feed_events (
    ts_ns INTEGER NOT NULL, venue TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL, symbols TEXT NOT NULL,
    segment INTEGER NOT NULL
);
"""


class JournalError(RuntimeError):
    pass


class SegmentStart(msgspec.Struct, frozen=True):
    """What segment ``segment`` starts from: everything the journal holds before it."""

    segment: int
    fills: np.ndarray  # the core's Fill records of earlier segments, in booking order
    next_order_id: int  # above every order id of earlier segments
    working: list[tuple[int, int, float]]  # (order_id, instrument, units left) working when the last one ended


class Journal:
    """``Journal.open(run_dir, meta)`` creates the journal or checks that an existing one belongs to
    the same run (same ``meta``), then starts a new segment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT
        self.db.execute("PRAGMA journal_mode=WAL")
        # A process crash (kill -9) cannot lose a committed WAL transaction with synchronous=NORMAL;
        # only a power loss can, and FULL would fsync every step.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.segment = 0

    @classmethod
    def open(cls, run_dir: Path, meta: dict[str, Any]) -> "Journal":
        run_dir.mkdir(parents=True, exist_ok=True)
        j = cls(run_dir / "journal.sqlite")
        have = dict(j.db.execute("SELECT key, value FROM meta"))
        want = {"format": FORMAT, "format_version": str(FORMAT_VERSION)} | {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
        if not have:
            j.db.execute("BEGIN")
            j.db.executemany("INSERT INTO meta VALUES (?, ?)", sorted(want.items()))
            j.db.execute("COMMIT")
        else:
            if have.get("format") != FORMAT or have.get("format_version") != str(FORMAT_VERSION):
                raise JournalError(f"{j.path} is not a {FORMAT} v{FORMAT_VERSION} journal; use a new run directory")
            diff = sorted(k for k in want if have.get(k) != want[k])
            if diff:
                raise JournalError(
                    f"{j.path} belongs to a run with different {', '.join(diff)}; resume it with the same "
                    "options or start a new run directory"
                )
        return j

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.db.execute("SELECT key, value FROM meta"):
            out[k] = v if k in ("format", "format_version") else json.loads(v)
        return out

    # -- segments -------------------------------------------------------------------------------------

    def next_segment(self) -> int:
        """The number the next ``begin_segment`` gives."""
        return int(self.db.execute("SELECT COALESCE(MAX(segment), 0) FROM segments").fetchone()[0]) + 1

    def segment_start(self, segment: int, fill_dtype: np.dtype) -> SegmentStart:
        """What ``segment`` starts from (``fill_dtype``: the core's, ``Backtester.fills().dtype``)."""
        return SegmentStart(
            segment=segment,
            fills=self.fills(fill_dtype, before_segment=segment),
            next_order_id=self.max_order_id(before_segment=segment) + 1,
            working=self.open_orders(before_segment=segment),
        )

    def begin_segment(self, started_ns: int, restored_fills: int, cash: float, positions: list[float]) -> int:
        """A new process on the run. ``started_ns``: the run's receive clock now; every frame this
        process receives is stamped later, every frame of earlier processes earlier."""
        self.segment = self.next_segment()
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO segments (segment, pid, started_ns, restored_fills, restored_cash, restored_positions) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self.segment, os.getpid(), started_ns, restored_fills, cash, json.dumps(positions)),
        )
        self.db.execute("COMMIT")
        return self.segment

    def end_segment(self, reason: str, cash: float, positions: list[float], last_ts_ns: int | None) -> None:
        self.db.execute(
            "UPDATE segments SET ended_ns = ?, end_reason = ?, final_cash = ?, final_positions = ?, "
            "last_ts_ns = COALESCE(?, last_ts_ns) WHERE segment = ?",
            (time.time_ns(), reason, cash, json.dumps(positions), last_ts_ns, self.segment),
        )

    def segments(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM segments ORDER BY segment")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    # -- one engine step --------------------------------------------------------------------------------

    def commit(
        self,
        *,
        orders: np.ndarray | None = None,
        fills: np.ndarray | None = None,
        resets: np.ndarray | None = None,
        events: list | None = None,
        last_ts_ns: int | None = None,
    ) -> None:
        """One engine step's records in one transaction. ``orders``/``fills``/``resets`` are the core's
        structured arrays; ``events`` are feeds.live.FeedEvent."""
        s = self.segment
        db = self.db
        db.execute("BEGIN")
        try:
            if orders is not None and len(orders):
                db.executemany(
                    "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (int(o["order_id"]), ORDER_EVENT_KINDS[o["kind"]], s, int(o["instrument"]), int(o["ts"]),
                         int(o["active_ts"]), float(o["units"]), float(o["decision_mid"]))
                        for o in orders
                    ],
                )
            if fills is not None and len(fills):
                db.executemany(
                    "INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (int(f["order_id"]), int(f["fill_ts"]), s, int(f["instrument"]), int(f["decision_ts"]),
                         float(f["px"]), float(f["sz"]), float(f["fee"]), float(f["decision_mid"]),
                         float(f["slippage_bps"]), int(f["liquidity"]), int(f["order_type"]))
                        for f in fills
                    ],
                )
            if resets is not None and len(resets):
                db.executemany(
                    "INSERT INTO resets VALUES (?, ?, ?, ?)",
                    [(int(r["ts"]), int(r["instrument"]), RESET_REASONS[r["reason"]], s) for r in resets],
                )
            if events:
                db.executemany(
                    "INSERT INTO feed_events VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.ts_ns, e.venue, e.kind, e.detail, ",".join(e.symbols), s) for e in events],
                )
            if last_ts_ns is not None:
                db.execute("UPDATE segments SET last_ts_ns = ? WHERE segment = ?", (last_ts_ns, s))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def cancel_working(self, working: list[tuple[int, int, float]], ts_ns: int) -> None:
        """Journal, in this segment, the end of orders that were working when the previous process
        died (``SegmentStart.working``): they were decided on state that is gone, so they are
        cancelled, never revived. Each gets a ``RESTART`` row for the units it had left."""
        if not working:
            return
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO orders SELECT order_id, ?, ?, instrument, ?, active_ts_ns, ?, decision_mid "
            "FROM orders WHERE order_id = ? AND kind = 'new'",
            [(RESTART, self.segment, ts_ns, units, oid) for oid, _, units in working],
        )
        self.db.execute("COMMIT")

    # -- reading back -----------------------------------------------------------------------------------

    def fills(self, fill_dtype: np.dtype, *, before_segment: int | None = None, segment: int | None = None) -> np.ndarray:
        """Journaled fills in booking order as the core's Fill records."""
        where, args = _segment_filter(before_segment, segment)
        rows = self.db.execute(
            "SELECT order_id, decision_ts_ns, fill_ts_ns, px, sz, fee, decision_mid, slippage_bps, instrument, liquidity, "
            f"order_type FROM fills {where} ORDER BY rowid",
            args,
        ).fetchall()
        out = np.zeros(len(rows), dtype=fill_dtype)
        names = ("order_id", "decision_ts", "fill_ts", "px", "sz", "fee", "decision_mid", "slippage_bps", "instrument",
                 "liquidity", "order_type")
        for k, name in enumerate(names):
            out[name] = [r[k] for r in rows]
        return out

    def orders(self, *, segment: int | None = None) -> list[tuple]:
        where, args = _segment_filter(None, segment)
        return self.db.execute(
            f"SELECT order_id, kind, instrument, ts_ns, active_ts_ns, units, decision_mid FROM orders {where} ORDER BY rowid",
            args,
        ).fetchall()

    def resets(self, *, segment: int | None = None) -> list[tuple[int, int, str]]:
        """(ts_ns, instrument, reason) in journal order."""
        where, args = _segment_filter(None, segment)
        rows = self.db.execute(f"SELECT ts_ns, instrument, reason FROM resets {where} ORDER BY rowid", args)
        return [(int(t), int(i), str(r)) for t, i, r in rows]

    def open_orders(self, *, before_segment: int | None = None) -> list[tuple[int, int, float]]:
        """(order_id, instrument, units left) of orders placed and never cancelled nor fully filled
        (in segments before ``before_segment`` when given)."""
        rows = self.db.execute(
            "SELECT o.order_id, o.instrument, o.units - COALESCE((SELECT SUM(f.sz) FROM fills f "
            "WHERE f.order_id = o.order_id AND f.segment < :before), 0) "
            "FROM orders o WHERE o.kind = 'new' AND o.segment < :before AND NOT EXISTS "
            "(SELECT 1 FROM orders c WHERE c.order_id = o.order_id AND c.kind != 'new' AND c.segment < :before)",
            {"before": _EVERY_SEGMENT if before_segment is None else before_segment},
        ).fetchall()
        return [(int(a), int(b), float(c)) for a, b, c in rows if abs(c) > 1e-12]

    def max_order_id(self, *, before_segment: int | None = None) -> int:
        """The highest order id journaled (in segments before ``before_segment`` when given); 0 for none."""
        where, args = _segment_filter(before_segment, None)
        return int(self.db.execute(f"SELECT COALESCE(MAX(order_id), 0) FROM orders {where}", args).fetchone()[0])

    def count(self, table: str) -> int:
        if table not in ("orders", "fills", "resets", "feed_events", "segments"):
            raise ValueError(table)
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        self.db.close()


def _segment_filter(before: int | None, segment: int | None) -> tuple[str, tuple]:
    if before is not None:
        return "WHERE segment < ?", (before,)
    if segment is not None:
        return "WHERE segment = ?", (segment,)
    return "", ()


def restore_segment(journal: Journal, engine: Engine, segment: int, started_ns: int) -> SegmentStart:
    """Bring a fresh ``engine`` to where ``segment`` of the run began, as the process that ran it
    did: the fills of earlier segments re-booked (cash, positions and open round trips bit for bit),
    order ids continuing above theirs, order log on, and, after a restart, every instrument's
    session taken as already open at ``started_ns`` (its first tick resets for the outage, not as
    a session open). Returns what it restored from, with the orders working at the crash."""
    start = journal.segment_start(segment, engine.core.fills().dtype)
    engine.prepare()
    core = engine.core
    core.set_order_log(True)
    if len(start.fills):
        core.restore_fills(start.fills)
    core.set_next_order_id(start.next_order_id)
    if segment > 1:
        engine.resume_at(started_ns)
    return start
