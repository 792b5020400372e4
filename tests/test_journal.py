"""engine.journal owns the SQL, and a segment's start is restored once for paper and reconcile.

A real journal (SQLite on disk) is written the way the paper trader writes it, by a real engine,
and left as a kill -9 leaves it: fills booked, orders still working. The paper trader's restart and
reconcile's replay of the next segment must then start from the same state, and stay in step on the
same quotes afterwards.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import numpy as np
from test_strategies import random_walk

from engine.backtest import BacktestConfig, Engine
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.timestamps import DAY_NS, MS_NS
from engine.journal import RESET_REASONS, RESTART, Journal
from engine.paper import PaperConfig, PaperTrader, build_instruments, run_meta
from engine.reconcile import segment_engine

ROOT = Path(__file__).resolve().parents[1]
SYMS = ["BTCUSDT", "ETHUSDT"]
CONFIG = PaperConfig(
    venues={"binance-usdm": SYMS},
    backtest=BacktestConfig(strategy="momentum", strategy_params={"fast_span": 3, "slow_span": 8}, interval="raw"),
    warmup_ticks=5,
)


def crashed_run(run_dir: Path) -> None:
    """Segment 1 of a run, journaled step by step as PaperTrader._commit does, cut off after a step
    that left orders working (the process died there)."""
    instruments, ids = build_instruments(CONFIG)
    journal = Journal.open(run_dir, run_meta(CONFIG, instruments, ids))
    ticks = random_walk(4_000, 2, seed=5, gaps=False)
    journal.begin_segment(int(ticks["ts_recv"][0]) - 1, 0, CONFIG.backtest.initial_capital, [0.0, 0.0])
    engine = Engine(CONFIG.backtest, instruments, None)
    engine.session_lookahead_ns = DAY_NS
    engine.prepare()
    core = engine.core
    core.set_order_log(True)
    n_fills = n_resets = 0
    for k in range(0, len(ticks), 50):
        step = ticks[k : k + 50]
        engine.run(step)
        fills, resets = core.fills_since(n_fills), core.resets_since(n_resets)
        journal.commit(orders=core.take_order_log(), fills=fills, resets=resets, last_ts_ns=int(step["ts_recv"][-1]))
        n_fills, n_resets = n_fills + len(fills), n_resets + len(resets)
        if n_fills >= 10 and journal.open_orders():
            break
    journal.close()


def after_restart(started_ns: int) -> np.ndarray:
    q = random_walk(2_000, 2, seed=6, gaps=False)
    shift = started_ns + MS_NS - int(q["ts_recv"][0])
    q["ts_recv"] += shift
    q["ts_event"] += shift
    return q


def test_paper_restart_and_reconcile_start_a_segment_from_the_same_state(tmp_path):
    crashed_run(tmp_path)

    trader = PaperTrader(CONFIG, tmp_path, print_fn=lambda _: None)
    trader._open_journal()  # what PaperTrader.run does first on a restart
    assert trader.journal.segment == 2
    started_ns = trader.journal.segments()[1]["started_ns"]
    trader.journal.close()

    journal = Journal(tmp_path / "journal.sqlite")
    meta = journal.meta()
    config = msgspec.convert(meta["backtest"], BacktestConfig)
    instruments = InstrumentTable(msgspec.convert(meta["instruments"], list[Instrument]))
    replay = segment_engine(journal, config, instruments, 2, started_ns)
    start = journal.segment_start(2, replay.core.fills().dtype)

    # Something to restore: fills of segment 1 and orders working when it died.
    assert len(start.fills) >= 10 and start.working
    assert start.next_order_id == max(r[0] for r in journal.orders(segment=1)) + 1
    assert trader.restored_fills == len(start.fills)

    paper = trader.engine
    a, b = paper.core, replay.core
    assert a.fills().tobytes() == b.fills().tobytes() == start.fills.tobytes()
    assert np.array_equal(a.positions(), b.positions()) and np.any(a.positions() != 0)
    assert (a.cash, a.equity, a.next_order_id) == (b.cash, b.equity, b.next_order_id)

    # The restart journaled the end of exactly the orders that were working, with the units left.
    ends = [(r[0], r[2], r[5]) for r in journal.orders(segment=2) if r[1] == RESTART]
    assert ends == start.working
    assert journal.open_orders(before_segment=2) == start.working and journal.open_orders() == []
    journal.close()

    # Same state, same future: every order, fill, trade and reset on the same quotes, bit for bit.
    q = after_restart(started_ns)
    for engine in (paper, replay):
        engine.core.take_order_log()
        engine.run(q)
        engine.core.finish()
    a, b = paper.core, replay.core
    assert len(a.fills()) > len(start.fills) + 10
    for name in ("fills", "trades", "resets", "take_order_log"):
        assert getattr(a, name)().tobytes() == getattr(b, name)().tobytes(), name
    # Both resumed the session the restart fell in: no SESSION_OPEN reset on that UTC day.
    same_day = [r for r in a.resets() if int(r["ts"]) // DAY_NS == started_ns // DAY_NS]
    assert same_day and all(RESET_REASONS[r["reason"]] != "SESSION_OPEN" for r in same_day)


def test_fills_of_explicit_orders_come_back_from_the_journal_as_booked(tmp_path):
    """A limit's maker fill and a stop's taker fill keep their liquidity and order type through the
    journal, so a restart re-books them as they were."""
    from strategies.dip_buyer import DipBuyer

    instruments, ids = build_instruments(CONFIG)
    ticks = random_walk(4_000, 2, seed=5, gaps=False)
    engine = Engine(BacktestConfig(interval="raw", warmup_ticks=0), instruments, DipBuyer(dip_bps=1.0, stop_bps=3.0))
    engine.session_lookahead_ns = DAY_NS
    engine.run(ticks)
    fills = engine.core.fills()
    assert set(fills["order_type"].tolist()) == {1, 2} and set(fills["liquidity"].tolist()) == {0, 1}
    journal = Journal.open(tmp_path, run_meta(CONFIG, instruments, ids))
    journal.begin_segment(int(ticks["ts_recv"][0]) - 1, 0, CONFIG.backtest.initial_capital, [0.0, 0.0])
    journal.commit(fills=fills, last_ts_ns=int(ticks["ts_recv"][-1]))
    assert journal.fills(fills.dtype).tobytes() == fills.tobytes()
    journal.close()


# -- no SQL outside engine/journal.py ---------------------------------------------------------------

SQL = re.compile(
    r"\bSELECT\b[^\n]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bCREATE\s+TABLE\b"
    r"|\.execute(?:many|script)?\(|\bimport\s+sqlite3\b|\bfrom\s+sqlite3\b"
)


def sql_lines(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for n, line in enumerate(path.read_text().splitlines(), 1) if SQL.search(line)]


def test_no_module_but_the_journal_holds_sql():
    journal = ROOT / "engine" / "journal.py"
    assert len(sql_lines(journal)) >= 10  # the pattern finds SQL where it is
    found = []
    for pkg in ("engine", "feeds", "strategies", "bench"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path != journal:
                found += sql_lines(path)
    assert not found, "SQL outside engine/journal.py (add a named method there):\n" + "\n".join(found)
