"""Live feeds against the local exchange simulator on 127.0.0.1: every fault switch and its recovery.

Each test runs a real ``ExchangeSim`` (websocket server) and a real ``LiveFeed`` (websocket client) in
one event loop, with watchdog timings shrunk to fractions of a second.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from engine.domain.quote import QuoteFlag
from feeds.backoff import Backoff
from feeds.exchange_sim import ExchangeSim, SyntheticSource
from feeds.live import FeedConfig, LiveFeed, RecvClock
from feeds.normalize import FeedCounters, FrameNormalizer
from feeds.venues import get_venue

SYMS = ["BTCUSDT", "ETHUSDT"]
FAST = FeedConfig(
    ping_interval_s=0.1,
    ping_timeout_s=0.3,
    dead_after_s=5.0,
    stale_after_s=5.0,
    stale_reconnect_s=10.0,
    backoff_base_s=0.02,
    backoff_cap_s=0.2,
    backoff_stable_s=60.0,
)


def symbols_for(venue: str) -> list[str]:
    return {"okx": ["BTC-USDT", "ETH-USDT"], "kraken": ["BTC/USD", "ETH/USD"]}.get(venue, SYMS)


class Harness:
    """A simulator and one feed on it; ``rows`` accumulates every quote row the feed produced."""

    def __init__(self, venue: str = "binance-usdm", *, rate_hz: float = 200.0, config: FeedConfig = FAST, **sim_kw):
        self.venue = venue
        self.symbols = symbols_for(venue)
        self.sim = ExchangeSim(venues={venue: self.symbols}, source=SyntheticSource(quote_rate_hz=rate_hz), **sim_kw)
        self.config = config
        self.ids = {s: k for k, s in enumerate(self.symbols)}
        self.norm = FrameNormalizer(get_venue(venue), self.ids, FeedCounters())
        self.chunks: list[np.ndarray] = []
        self.events: list = []

    async def __aenter__(self) -> "Harness":
        await self.sim.start()
        cfg = self.config
        self.feed = LiveFeed(
            self.venue,
            self.symbols,
            self.norm,
            config=replace(cfg, url=self.sim.url),
            clock=RecvClock(),
            on_data=lambda *_: self._drain(),
            on_event=self.events.append,
        )
        self.task = asyncio.create_task(self.feed.run())
        return self

    async def __aexit__(self, *exc) -> None:
        self.feed.stop()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.sim.stop()

    def _drain(self) -> None:
        if len(self.norm):
            self.chunks.append(self.norm.take())

    @property
    def rows(self) -> np.ndarray:
        self._drain()
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0)

    def kinds(self, kind: str) -> list:
        return [e for e in self.events if e.kind == kind]

    @property
    def conn(self):
        return self.feed.connections[0]

    async def until(self, cond, timeout_s: float = 5.0, what: str = "condition") -> None:
        t0 = time.monotonic()
        while not cond():
            if time.monotonic() - t0 > timeout_s:
                raise AssertionError(f"timed out waiting for {what}; events: {[(e.kind, e.detail) for e in self.events]}")
            await asyncio.sleep(0.01)

    async def quotes(self, n: int, timeout_s: float = 5.0) -> None:
        start = len(self.rows)
        await self.until(lambda: len(self.rows) >= start + n, timeout_s, f"{n} quotes")


def run(coro):
    return uvloop.run(coro)


# -- backoff ------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(base=st.floats(0.01, 5), cap=st.floats(5, 120), jitter=st.floats(0, 0.99), n=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_backoff_delays_grow_exponentially_within_jitter_and_cap(base, cap, jitter, n, seed):
    b = Backoff(base, cap, jitter=jitter, rng=random.Random(seed))
    for k in range(n):
        raw = min(cap, base * 2**k)
        d = b.next_delay()
        assert raw * (1 - jitter) - 1e-12 <= d <= raw + 1e-12


def test_backoff_is_forgiven_only_after_a_stable_connection():
    b = Backoff(1.0, 60.0, stable_s=30.0, jitter=0.0)
    assert [b.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    b.connected(100.0)
    b.disconnected(110.0)  # up 10 s: a flapping server, delays keep growing
    assert b.next_delay() == 16.0
    b.connected(200.0)
    b.disconnected(231.0)  # up 31 s: stable, start over
    assert b.next_delay() == 1.0
    assert b.next_delay(retry_after_s=5.0) == 5.0  # a venue's Retry-After is a floor


def test_backoff_never_gives_up():
    b = Backoff(0.1, 2.0, jitter=0.0)
    delays = [b.next_delay() for _ in range(10_000)]
    assert delays[-1] == 2.0 and b.failures == 10_000


# -- streaming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("venue", ["binance-spot", "binance-usdm", "bybit-linear", "okx", "kraken"])
def test_feed_streams_quotes_for_its_symbols(venue):
    async def main():
        async with Harness(venue) as h:
            await h.quotes(60)
            rows = h.rows
            assert set(rows["instrument"].tolist()) == {0, 1}
            assert (np.diff(rows["ts_recv"]) > 0).all()  # one strictly increasing receive clock
            assert (rows["bid_px"] < rows["ask_px"]).all()
            if get_venue(venue).seq_mode:
                for i in (0, 1):
                    seq = rows["seq"][rows["instrument"] == i]
                    assert (np.diff(seq.astype(np.int64)) == 1).all()  # nothing lost, nothing repeated
            assert h.conn.connects == 1 and not h.conn.disconnects
            assert h.feed.counters.quarantined == {}

    run(main())


def test_many_symbols_are_split_across_connections_within_the_venue_limit(monkeypatch):
    venue = get_venue("binance-usdm")
    monkeypatch.setattr(type(venue), "max_symbols", 1)

    async def main():
        async with Harness("binance-usdm") as h:
            assert len(h.feed.connections) == 2
            assert [c.symbols for c in h.feed.connections] == [["BTCUSDT"], ["ETHUSDT"]]
            await h.until(lambda: set(h.rows["instrument"].tolist()) == {0, 1} if len(h.rows) else False)

    run(main())


# -- faults -------------------------------------------------------------------------------------------


def test_abrupt_close_reconnects_and_flags_the_next_quote_of_each_instrument():
    async def main():
        async with Harness() as h:
            await h.quotes(20)
            before = len(h.rows)
            h.sim.close_abruptly()
            await h.until(lambda: h.conn.connects == 2, what="reconnect")
            await h.quotes(40)
            # Frames already in our receive buffer when the server dropped the line still arrive
            # first; the hole starts at the disconnect.
            rows = h.rows[before:]
            rows = rows[rows["ts_recv"] > h.kinds("disconnected")[0].ts_ns]
            assert h.conn.disconnects == {"closed 1006": 1}
            for i in (0, 1):
                mine = rows[rows["instrument"] == i]
                assert mine["flags"][0] & QuoteFlag.AFTER_RECONNECT  # the first quote after the hole resets
                assert not (mine["flags"][1:] & QuoteFlag.AFTER_RECONNECT).any()
            assert [e.detail for e in h.kinds("disconnected")] == ["closed 1006"]

    run(main())


def test_stall_with_pings_marks_stale_and_data_resumes_on_the_same_connection():
    cfg = replace(FAST, stale_after_s=0.25, stale_reconnect_s=10.0)

    async def main():
        async with Harness(config=cfg) as h:
            await h.quotes(20)
            before = len(h.rows)
            h.sim.stall(1.0)
            await h.until(lambda: h.conn.state == "stale", what="stale")
            await h.until(lambda: h.kinds("resumed"), what="resumed")
            await h.quotes(20)
            assert h.conn.connects == 1  # pings kept the connection; only the data stalled
            assert h.conn.stale_periods >= 1 and h.kinds("stale")
            # Quotes already in flight when the stall began may arrive first; what must hold is that
            # the first quote of each instrument after the stale mark carries STALE, and only it.
            rows = h.rows[before:]
            marked = h.kinds("stale")[0].ts_ns
            for i in (0, 1):
                mine = rows[(rows["instrument"] == i) & (rows["ts_recv"] > marked)]
                assert mine["flags"][0] & QuoteFlag.STALE
                assert not (mine["flags"][0] & QuoteFlag.AFTER_RECONNECT)
                if h.conn.stale_periods == 1:
                    assert not (mine["flags"][1:] & QuoteFlag.STALE).any()

    run(main())


def test_long_stall_replaces_the_connection():
    cfg = replace(FAST, stale_after_s=0.2, stale_reconnect_s=0.5)

    async def main():
        async with Harness(config=cfg) as h:
            await h.quotes(10)
            h.sim.stall(3.0)
            await h.until(lambda: h.conn.disconnects.get("stale"), what="stale reconnect")
            assert h.kinds("stale")

    run(main())


def test_missing_pongs_replace_the_connection():
    async def main():
        async with Harness() as h:
            await h.quotes(10)
            h.sim.drop_pongs(2.0)
            await h.until(lambda: h.conn.disconnects.get("pong_timeout"), what="pong timeout")
            await h.until(lambda: h.conn.connects >= 2, what="reconnect")

    run(main())


def test_dead_connection_without_any_frame_is_replaced():
    cfg = replace(FAST, ping_interval_s=30.0, dead_after_s=0.3, stale_after_s=10.0)

    async def main():
        async with Harness(config=cfg) as h:
            await h.quotes(10)
            h.sim.stall(2.0)  # no data, and we send no pings in this window: nothing at all arrives
            await h.until(lambda: h.conn.disconnects.get("dead"), what="dead")

    run(main())


@pytest.mark.parametrize("status", [429, 503])
def test_rejected_upgrades_back_off_then_connect(status):
    async def main():
        async with Harness() as h:
            await h.quotes(5)
            h.sim.reject_upgrades(status, count=3)
            h.sim.close_abruptly()
            await h.until(lambda: h.conn.connects == 2, what="reconnect after rejections")
            assert h.conn.rejected == 3
            assert [e.detail for e in h.kinds("rejected")] == [f"HTTP {status}"] * 3
            await h.quotes(5)

    run(main())


def test_malformed_frames_are_counted_and_the_feed_keeps_going():
    async def main():
        async with Harness() as h:
            await h.quotes(5)
            h.sim.send_malformed(4)
            await h.until(lambda: h.feed.counters.quarantined.get("malformed", 0) >= 4, what="malformed counted")
            await h.quotes(10)
            assert h.conn.connects == 1
            assert "frame" in h.feed.counters.last_error

    run(main())


def test_sequence_gap_resets_the_instrument_on_a_consecutive_venue():
    async def main():
        async with Harness("bybit-linear") as h:
            await h.quotes(10)
            before = len(h.rows)
            h.sim.skip_seq(3)
            await h.until(lambda: h.feed.counters.seq_gaps >= 2, what="gaps on both symbols")
            rows = h.rows[before:]
            flagged = rows[(rows["flags"] & QuoteFlag.AFTER_RECONNECT) != 0]
            assert set(flagged["instrument"].tolist()) == {0, 1}
            assert h.conn.connects == 1  # a BBO is a snapshot: the reset is enough, no resubscribe

    run(main())


def test_duplicates_are_dropped_and_counted():
    async def main():
        async with Harness() as h:
            await h.quotes(5)
            h.sim.duplicate(3)
            await h.until(lambda: h.feed.counters.quarantined.get("duplicate", 0) >= 3, what="duplicates")
            rows = h.rows
            for i in (0, 1):
                seq = rows["seq"][rows["instrument"] == i]
                assert len(np.unique(seq)) == len(seq)

    run(main())


def test_shutdown_notice_reconnects_at_once():
    async def main():
        async with Harness("binance-spot") as h:
            await h.quotes(5)
            h.sim.shutdown_notice(close_after_s=5.0)
            await h.until(lambda: h.conn.connects == 2, timeout_s=2.0, what="reconnect before the venue closes")
            assert h.conn.disconnects == {"shutdown": 1}
            assert h.feed.counters.shutdown_notices == 1

    run(main())


def test_connection_is_replaced_before_the_venue_lifetime():
    cfg = replace(FAST, lifetime_s=0.6, lifetime_margin_s=0.3)

    async def main():
        async with Harness(config=cfg) as h:
            await h.until(lambda: h.conn.connects >= 3, what="two planned replacements")
            assert h.conn.disconnects.get("lifetime", 0) >= 2

    run(main())


def test_oversized_frames_close_and_reconnect():
    cfg = replace(FAST, max_frame_bytes=64)

    async def main():
        async with Harness(config=cfg) as h:
            await h.until(lambda: h.conn.disconnects.get("oversized", 0) >= 1, what="oversized frame")

    run(main())


def test_recv_clock_is_strictly_increasing():
    c = RecvClock()
    t = [c.now() for _ in range(10_000)]
    assert all(b > a for a, b in zip(t, t[1:]))
    assert abs(t[0] - time.time_ns()) < 5 * 10**9


def test_simulator_measures_its_send_queue_per_frame():
    async def main():
        async with Harness() as h:
            await h.quotes(50)
            q = h.sim.latency["queue"]
            assert q.n >= 50  # one sample per frame handed to the socket
            assert 0 <= q.percentile(50) <= q.percentile(99.9) <= q.max_ns

    run(main())
