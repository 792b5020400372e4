"""The paper trader end to end against the local exchange simulator: resets from feed faults reach the
engine and the journal, a kill -9 at any moment loses or doubles no fill, and the run's own recording
replays to the same orders and fills bit for bit."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvloop

from engine.backtest import BacktestConfig
from engine.paper import PaperConfig, PaperTrader
from engine.reconcile import reconcile
from feeds.exchange_sim import ExchangeSim, SyntheticSource
from feeds.live import FeedConfig

SYMS = ["BTCUSDT", "ETHUSDT"]
# Fast decisions so a few seconds give many orders and fills: short EMAs, no warm-up to speak of.
FAST_MOMENTUM = BacktestConfig(strategy="momentum", strategy_params={"fast_span": 3, "slow_span": 8}, interval="raw")


def paper_config(url: str, *, backtest: BacktestConfig = FAST_MOMENTUM, **feed) -> PaperConfig:
    cfg = {"ping_interval_s": 0.2, "ping_timeout_s": 1.0, "backoff_base_s": 0.02, "backoff_cap_s": 0.2} | feed
    return PaperConfig(venues={"binance-usdm": SYMS}, url=url, backtest=backtest, feed=FeedConfig(**cfg), warmup_ticks=5)


async def paper_run(run_dir: Path, *, duration_s: float, faults=(), rate_hz: float = 100.0, **kw):
    """A paper run of ``duration_s`` against a fresh simulator; ``faults`` are (at_s, callable(sim))."""
    async with ExchangeSim(venues={"binance-usdm": SYMS}, source=SyntheticSource(quote_rate_hz=rate_hz)) as sim:
        trader = PaperTrader(paper_config(sim.url, **kw), run_dir, print_fn=lambda s: None, status_every_s=0.2)

        async def inject():
            t0 = time.monotonic()
            for at_s, fault in faults:
                await asyncio.sleep(max(0.0, at_s - (time.monotonic() - t0)))
                fault(sim)

        task = asyncio.create_task(inject())
        summary = await trader.run(duration_s)
        task.cancel()
        return summary


def journal_rows(run_dir: Path, sql: str, args=()) -> list:
    db = sqlite3.connect(run_dir / "journal.sqlite")
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_paper_run_journals_and_reconciles_bit_for_bit(tmp_path):
    summary = uvloop.run(paper_run(tmp_path, duration_s=2.5))
    assert summary.engine_errors == 0, summary.last_error
    n_fills = journal_rows(tmp_path, "SELECT COUNT(*) FROM fills")[0][0]
    assert n_fills == summary.fills and n_fills >= 4  # the fast EMAs trade within seconds
    assert summary.quotes_in > 300
    # Every fill's order is in the journal, placed before it filled.
    orphans = journal_rows(tmp_path, "SELECT COUNT(*) FROM fills f WHERE NOT EXISTS "
                                     "(SELECT 1 FROM orders o WHERE o.order_id = f.order_id AND o.kind = 'new' "
                                     "AND o.ts_ns < f.fill_ts_ns)")[0][0]
    assert orphans == 0
    report = reconcile(tmp_path)
    assert report.ok, report.format()
    seg = report.segments[0]
    assert seg.fills == (n_fills, n_fills) and seg.orders[0] == seg.orders[1] > 0
    # Positions and cash at the end are what the journaled fills add up to.
    final = journal_rows(tmp_path, "SELECT final_cash, final_positions FROM segments")[0]
    sums = journal_rows(tmp_path, "SELECT instrument, SUM(sz) FROM fills GROUP BY instrument")
    pos = json.loads(final[1])
    for inst, total in sums:
        assert pos[inst] == pytest.approx(total, abs=1e-9)


def test_reconcile_reports_a_tampered_fill(tmp_path):
    uvloop.run(paper_run(tmp_path, duration_s=2.0))
    assert reconcile(tmp_path).ok
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    db.execute("UPDATE fills SET px = px + 1e-9 WHERE rowid = (SELECT MIN(rowid) FROM fills)")
    db.commit()
    db.close()
    report = reconcile(tmp_path)
    assert not report.ok
    assert report.divergences[0].table == "fills"
    assert "divergence" in report.format()


def test_feed_faults_become_journaled_resets_and_the_run_still_reconciles(tmp_path):
    faults = [(0.8, lambda sim: sim.close_abruptly()), (1.6, lambda sim: sim.stall(1.0))]
    summary = uvloop.run(paper_run(tmp_path, duration_s=4.0, faults=faults, stale_after_s=0.4, stale_reconnect_s=10.0))
    assert summary.engine_errors == 0, summary.last_error
    reasons = dict(journal_rows(tmp_path, "SELECT reason, COUNT(*) FROM resets GROUP BY reason"))
    assert reasons.get("RECONNECT") == 2  # both instruments, once, after the abrupt close
    assert reasons.get("STALE") == 2  # both instruments after the stall
    assert reasons.get("SESSION_OPEN") == 2
    kinds = dict(journal_rows(tmp_path, "SELECT kind, COUNT(*) FROM feed_events GROUP BY kind"))
    assert kinds.get("disconnected") == 1 and kinds.get("stale") == 1
    report = reconcile(tmp_path)
    assert report.ok, report.format()


# -- kill -9 ------------------------------------------------------------------------------------------


class SimThread:
    """The simulator in a thread of the test process, so paper subprocesses can be killed around it."""

    def __init__(self, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self.ready = threading.Event()
        self.url = ""
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "simulator did not start"

    def _main(self) -> None:
        async def serve():
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            async with ExchangeSim(venues={"binance-usdm": SYMS}, source=SyntheticSource(quote_rate_hz=self.rate_hz)) as sim:
                self.url = sim.url
                self.ready.set()
                await self.stop.wait()

        uvloop.run(serve())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def paper_cmd(url: str, run_dir: Path, duration_s: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "engine.cli", "paper", "--url", url, "--run-dir", str(run_dir), "--strategy", "momentum",
           "--param", "fast_span=3", "--param", "slow_span=8", "--interval", "raw", "--warmup-ticks", "5"]
    return cmd + (["--duration", str(duration_s)] if duration_s else [])


def test_kill_9_at_any_moment_loses_and_doubles_nothing(tmp_path):
    rng = random.Random(11)
    sim = SimThread(rate_hz=200.0)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    try:
        kills = 0
        for _ in range(4):
            p = subprocess.Popen(paper_cmd(sim.url, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            time.sleep(rng.uniform(1.5, 3.0))
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            kills += 1
        done = subprocess.run(paper_cmd(sim.url, tmp_path, duration_s=2.0), capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        sim.close()
    segs = journal_rows(tmp_path, "SELECT segment, restored_fills, restored_cash, restored_positions, end_reason, "
                                  "final_cash, final_positions FROM segments ORDER BY segment")
    assert len(segs) == kills + 1
    assert [s[4] for s in segs] == [None] * kills + ["duration"]  # killed ones never wrote an end
    fills = journal_rows(tmp_path, "SELECT segment, order_id, instrument, px, sz, fee FROM fills ORDER BY rowid")
    assert sum(1 for s in segs[:-1] if any(f[0] == s[0] for f in fills)) >= 2, "too few fills before the kills to test"
    # No fill doubled: (order, fill time) is the key; order ids never reused across restarts.
    ids_by_seg: dict[int, set] = {}
    for seg, oid, *_ in fills:
        ids_by_seg.setdefault(seg, set()).add(oid)
    segs_seen = sorted(ids_by_seg)
    for a, b in zip(segs_seen, segs_seen[1:]):
        assert max(ids_by_seg[a]) < min(ids_by_seg[b])
    # Each restart resumed from exactly the journaled fills before it: count, cash and positions.
    lot = 0.001
    for seg, restored, cash, positions, *_ in segs:
        before = [f for f in fills if f[0] < seg]
        assert restored == len(before)
        expect_cash = 1_000_000.0
        expect_pos = np.zeros(2)
        for _, _, inst, px, sz, fee in before:
            lots = round(sz / lot)
            expect_cash -= lots * lot * px + fee  # the core's own arithmetic, in booking order
            expect_pos[inst] += sz
        assert cash == expect_cash
        assert json.loads(positions) == pytest.approx(list(expect_pos), abs=1e-9)
    # And the final state is all fills, through every restart.
    final_cash, final_pos = segs[-1][5], json.loads(segs[-1][6])
    total = np.zeros(2)
    for _, _, inst, _, sz, _ in fills:
        total[inst] += sz
    assert final_pos == pytest.approx(list(total), abs=1e-9)
    assert np.isfinite(final_cash)
    # Each restart resets every instrument for the data lost while down (RECONNECT), not as a new
    # session: the UTC day did not change.
    first = journal_rows(tmp_path, "SELECT segment, instrument, reason FROM resets WHERE rowid IN "
                                   "(SELECT MIN(rowid) FROM resets GROUP BY segment, instrument) ORDER BY segment")
    for seg, _, reason in first:
        assert reason == ("SESSION_OPEN" if seg == 1 else "RECONNECT"), first
    assert {seg for seg, _, _ in first} == set(range(1, kills + 2))
    # Orders still working at a kill are cancelled at the restart, never revived: each has one end.
    ends = journal_rows(tmp_path, "SELECT o.order_id, COUNT(c.order_id) FROM orders o LEFT JOIN orders c "
                                  "ON c.order_id = o.order_id AND c.kind != 'new' WHERE o.kind = 'new' GROUP BY o.order_id")
    assert all(n <= 1 for _, n in ends)
    report = reconcile(tmp_path)
    assert report.ok, report.format()


# -- soak -----------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_soak_one_million_quotes_over_loopback_in_flat_memory(tmp_path):
    """1M quotes through the whole live path (decode, validate, engine, journal, recording), the
    simulator in its own process: resident memory after the first 200k quotes grows < 5% by 1M."""
    cmd = [sys.executable, "-m", "engine.cli", "exchange-sim", "--port", "0", "--venue", "binance-usdm", "--symbols",
           ",".join(SYMS), "--speed", "0", "--ping-interval-s", "60"]
    sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = sim.stdout.readline()
        url = "ws://" + line.split("ws://", 1)[1].split()[0]
        cfg = paper_config(url, backtest=BacktestConfig(strategy="momentum", interval="raw"), ping_interval_s=60.0,
                           stale_after_s=30.0, stale_reconnect_s=60.0)
        trader = PaperTrader(cfg, tmp_path, print_fn=lambda s: None)
        marks: dict[str, int] = {}

        async def watch():
            while trader.quotes_in < 1_000_000:
                if "start" not in marks and trader.quotes_in >= 200_000:
                    marks["start"] = rss_bytes()
                await asyncio.sleep(0.05)
            marks["end"] = rss_bytes()
            trader.stop()

        async def main():
            task = asyncio.create_task(watch())
            s = await trader.run(120.0)
            task.cancel()
            return s

        summary = uvloop.run(main())
    finally:
        sim.terminate()
        sim.wait(10)
    assert summary.quotes_in >= 1_000_000, f"only {summary.quotes_in} quotes in 120 s"
    assert summary.engine_errors == 0, summary.last_error
    growth = marks["end"] / marks["start"] - 1.0
    print(f"soak: {summary.quotes_in:,} quotes in {summary.wall_s:.1f} s; RSS {marks['start'] / 2**20:.1f} MiB at 200k, "
          f"{marks['end'] / 2**20:.1f} MiB at 1M ({growth:+.2%})")
    assert growth < 0.05, f"resident memory grew {growth:.1%} from 200k to 1M quotes ({marks})"


def test_two_venues_with_the_same_symbols_trade_and_reconcile(tmp_path):
    async def main():
        venues = {"binance-usdm": SYMS, "bybit-linear": SYMS}
        async with ExchangeSim(venues=venues, source=SyntheticSource(quote_rate_hz=100.0)) as sim:
            cfg = paper_config(sim.url)
            cfg.venues = venues
            trader = PaperTrader(cfg, tmp_path, print_fn=lambda s: None)
            return await trader.run(2.5), trader

    summary, trader = uvloop.run(main())
    assert trader.instruments.symbols == ["binance-usdm:BTCUSDT", "binance-usdm:ETHUSDT", "bybit-linear:BTCUSDT",
                                          "bybit-linear:ETHUSDT"]
    assert set(summary.feeds) == {"binance-usdm", "bybit-linear"}
    assert all(f["quotes"] > 50 for f in summary.feeds.values())
    traded = {i for (i,) in journal_rows(tmp_path, "SELECT DISTINCT instrument FROM fills")}
    assert traded & {0, 1} and traded & {2, 3}  # both venues' instruments trade
    report = reconcile(tmp_path)
    assert report.ok, report.format()


def test_resuming_with_other_settings_is_refused(tmp_path):
    uvloop.run(paper_run(tmp_path, duration_s=0.5))
    other = BacktestConfig(strategy="mean_reversion", interval="raw")
    with pytest.raises(Exception, match="different backtest"):
        uvloop.run(paper_run(tmp_path, duration_s=0.5, backtest=other))
