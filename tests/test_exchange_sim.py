"""The local exchange simulator (feeds.exchange_sim): a real server on 127.0.0.1, plain websockets clients."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import json
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode

from feeds.exchange_sim import (
    ExchangeSim,
    RawFileSource,
    SimClock,
    SyntheticSource,
    malformed_variants,
    parse_fault_schedule,
    run_exchange_sim,
)
from feeds.venues import VENUE_NAMES, FrameError, FrameKind, get_venue

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAS_BYBIT = importlib.util.find_spec("feeds.venues.bybit") is not None

USDM = get_venue("binance-usdm")
SPOT = get_venue("binance-spot")


def arun(coro, timeout: float = 10.0):
    async def main():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def sim_for(venue: str = "binance-usdm", symbols=("BTCUSDT", "ETHUSDT"), rate: float | None = 200.0, **kw):
    source = kw.pop("source", None) or SyntheticSource(quote_rate_hz=rate, speed=kw.pop("speed", 1.0))
    return ExchangeSim(venues={venue: list(symbols)}, source=source, **kw)


class Reader:
    """Reads every frame of a client connection in the background (so pongs are always processed)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.q: asyncio.Queue = asyncio.Queue()
        self.closed: ConnectionClosed | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async for m in self.ws:
                self.q.put_nowait((time.monotonic(), m))
        except ConnectionClosed as e:
            self.closed = e
        finally:
            self.q.put_nowait(None)

    async def next(self, timeout: float = 2.0):
        """The next frame's text, or None once the connection closed."""
        item = await asyncio.wait_for(self.q.get(), timeout)
        if item is None:
            self.q.put_nowait(None)
            return None
        return item[1]

    async def timed(self, timeout: float = 2.0):
        item = await asyncio.wait_for(self.q.get(), timeout)
        if item is None:
            self.q.put_nowait(None)
        return item

    async def quotes(self, venue, n: int, timeout: float = 2.0) -> list:
        out = []
        while len(out) < n:
            frame = await self.next(timeout)
            assert frame is not None, "connection closed"
            kind, payload = venue.decode(frame)
            if kind == FrameKind.QUOTES:
                out.extend(payload)
        return out

    async def drain(self, seconds: float) -> list:
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                frame = await self.next(left)
            except asyncio.TimeoutError:
                break
            if frame is None:
                break
            out.append(frame)
        return out


def by_symbol(quotes) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for q in quotes:
        out.setdefault(q.symbol, []).append(q.seq)
    return out


def consecutive(ids: list[int]) -> bool:
    return all(b == a + 1 for a, b in zip(ids, ids[1:]))


# ------------------------------------------------------------------------------------------ data


@pytest.mark.parametrize("venue_name", ["binance-usdm", "binance-spot"])
def test_binance_quotes_for_exactly_the_subscribed_symbols(venue_name):
    venue = get_venue(venue_name)

    async def main():
        async with sim_for(venue_name, ("BTCUSDT", "ETHUSDT", "SOLUSDT")) as sim:
            async with connect(venue.stream_url(sim.url, ["BTCUSDT", "SOLUSDT"])) as ws:
                r = Reader(ws)
                qs = await r.quotes(venue, 60)
            ids = by_symbol(qs)
            assert set(ids) == {"BTCUSDT", "SOLUSDT"}
            for sym, seqs in ids.items():
                assert seqs[0] == 1 and consecutive(seqs), (sym, seqs[:10])
            q = qs[0]
            assert 0 < q.bid_px < q.ask_px and q.bid_sz > 0 and q.ask_sz > 0
            if venue_name == "binance-usdm":  # futures carry E/T (ms): the wall clock at send
                assert abs(q.ts_event_ns - time.time_ns()) < 5e9
            assert sim.stats.connections[venue_name] == 1
            assert sim.stats.quotes_sent[venue_name] >= 60

    arun(main())


def test_quote_text_has_tick_and_lot_decimals():
    async def main():
        async with sim_for() as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as ws:
                frame = json.loads(await ws.recv())
        d = frame["data"]
        assert frame["stream"] == "btcusdt@bookTicker"
        assert len(d["b"].split(".")[1]) == 2 and len(d["B"].split(".")[1]) == 3

    arun(main())


def test_two_clients_both_receive_and_a_reconnect_sees_ids_continue():
    async def main():
        async with sim_for("binance-spot") as sim:
            url = SPOT.stream_url(sim.url, ["BTCUSDT", "ETHUSDT"])
            async with connect(url) as a, connect(url) as b:
                ra, rb = Reader(a), Reader(b)
                qa, qb = await ra.quotes(SPOT, 20), await rb.quotes(SPOT, 20)
            assert qa and qb
            last = max(by_symbol(qa + qb)["BTCUSDT"])
            async with connect(SPOT.stream_url(sim.url, ["BTCUSDT"])) as c:
                qc = await Reader(c).quotes(SPOT, 5)
            ids = by_symbol(qc)["BTCUSDT"]
            assert ids[0] > last and consecutive(ids)  # the market went on; it did not restart
            assert sim.stats.connections["binance-spot"] == 3

    arun(main())


def test_raw_ws_path_subscription_by_frame_and_unlisted_symbols():
    async def main():
        async with sim_for("binance-spot", ("BTCUSDT",)) as sim:
            async with connect(f"{sim.url}/ws/btcusdt@bookTicker") as ws:  # Binance raw stream path
                assert {q.symbol for q in await Reader(ws).quotes(SPOT, 5)} == {"BTCUSDT"}
            async with connect(f"{sim.url}/stream") as ws:  # no streams in the URL: SUBSCRIBE frame
                r = Reader(ws)
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["xrpusdt@bookTicker"], "id": 7}))
                assert json.loads(await r.next()) == {"result": None, "id": 7}
                assert await r.drain(0.2) == []  # XRPUSDT is not listed: nothing
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 8}))
                assert json.loads(await r.next()) == {"result": None, "id": 8}
                assert {q.symbol for q in await r.quotes(SPOT, 5)} == {"BTCUSDT"}

    arun(main())


def test_bad_client_frames_are_answered_and_counted_never_fatal():
    async def main():
        async with sim_for("binance-spot") as sim:
            async with connect(SPOT.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                await ws.send("{not json")
                await ws.send(b"\xff\xfe binary garbage")
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
                frames = await r.drain(0.3)
                errors = [f for f in frames if SPOT.decode(f)[0] == FrameKind.ERROR]
                assert len(errors) == 2  # bad JSON and the unknown method get the venue's error
                assert sim.stats.bad_client_frames == 1  # the undecodable binary frame
                assert await r.quotes(SPOT, 3)  # still serving

    arun(main())


def test_unknown_path_is_refused_with_404():
    async def main():
        async with sim_for() as sim:
            with pytest.raises(InvalidStatus) as e:
                async with connect(f"{sim.url}/nowhere"):
                    pass
            assert e.value.response.status_code == 404
            assert sim.stats.rejected == 1

    arun(main())


def test_speed_zero_pushes_fast_and_max_quotes_stops_the_data():
    async def main():
        src = SyntheticSource(speed=0, max_quotes=20_000)
        async with ExchangeSim(venues={"binance-usdm": ["BTCUSDT", "ETHUSDT"]}, source=src) as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT", "ETHUSDT"]), max_queue=1024) as ws:
                t = time.perf_counter()
                n = 0
                while n < 20_000:
                    await asyncio.wait_for(ws.recv(), 2.0)
                    n += 1
                rate = n / (time.perf_counter() - t)
                with pytest.raises(asyncio.TimeoutError):  # the source ended; the connection stays open
                    await asyncio.wait_for(ws.recv(), 0.2)
                assert ws.state.name == "OPEN"
            assert sim.stats.quotes_sent["binance-usdm"] == 20_000
            assert rate > 5_000, rate  # loose: shared CI machines; the real figure is far higher

    arun(main())


def test_speed_zero_waits_for_a_slow_reader_instead_of_closing_it():
    async def main():
        n = 60_000  # more than loopback socket buffers hold
        src = SyntheticSource(speed=0, max_quotes=n)
        async with ExchangeSim(venues={"binance-usdm": ["BTCUSDT"]}, source=src, queue_frames=50) as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"]), max_queue=4) as ws:
                await asyncio.sleep(0.3)  # not reading: the producer waits on this connection's queue
                assert sim.stats.quotes_sent["binance-usdm"] < n
                ids = by_symbol(await Reader(ws).quotes(USDM, n))["BTCUSDT"]
            assert ids == list(range(1, n + 1))
            assert sim.stats.slow_consumers == 0

    arun(main())


def test_server_keepalive_pings_and_ping_timeout_and_lifetime():
    async def main():
        async with sim_for(ping_interval_s=0.1, ping_timeout_s=0.3) as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                await r.drain(0.5)  # several server pings came and our client answered them
                assert ws.state.name == "OPEN"
                # Stop answering the server's pings: it closes the connection (1011 keepalive timeout).
                orig = ws.protocol.send_frame
                ws.protocol.send_frame = lambda f: None if f.opcode is Opcode.PONG else orig(f)
                await r.drain(1.5)
                assert ws.close_code in (1011, 1006)
        async with sim_for(lifetime_s=0.3) as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as ws:
                await Reader(ws).drain(1.0)
                assert ws.close_code == 1001

    arun(main())


# ------------------------------------------------------------------------------------------ faults


def test_close_abruptly_is_1006_without_a_close_frame():
    async def main():
        async with sim_for() as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                await r.quotes(USDM, 3)
                sim.close_abruptly()
                await r.drain(1.0)
                assert r.closed is not None and r.closed.rcvd is None
                assert ws.close_code == 1006
            assert sim.stats.closed_by_fault == 1 and sim.stats.faults == {"close": 1}

    arun(main())


def test_stall_silences_data_but_not_pings_then_resumes_without_a_gap():
    async def main():
        async with sim_for(ping_interval_s=0.1) as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                before = await r.quotes(USDM, 5)
                sim.stall(0.6)
                for f in await r.drain(0.05):  # frames already in flight
                    before.extend(USDM.decode(f)[1])
                t0 = time.monotonic()
                latency = await asyncio.wait_for(await ws.ping(), 0.3)  # pongs continue
                assert latency < 0.3
                with pytest.raises(asyncio.TimeoutError):
                    await r.next(0.35)
                assert ws.state.name == "OPEN"
                after = await r.quotes(USDM, 5, timeout=1.5)
                assert time.monotonic() - t0 > 0.45
            ids = by_symbol(before + after)["BTCUSDT"]
            assert consecutive(ids)  # the market paused; nothing was skipped

    arun(main())


def test_drop_pongs_websocket_level():
    async def main():
        async with sim_for() as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                await r.quotes(USDM, 2)
                sim.drop_pongs(0.5)
                waiter = await ws.ping()
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), 0.3)
                await asyncio.sleep(0.3)
                await asyncio.wait_for(await ws.ping(), 1.0)  # answered again
                assert sim.stats.pongs_dropped >= 1

    arun(main())


@pytest.mark.parametrize("status", [429, 503])
def test_reject_upgrades_then_connections_succeed(status):
    async def main():
        async with sim_for() as sim:
            sim.reject_upgrades(status, count=2, retry_after_s=5)
            url = USDM.stream_url(sim.url, ["BTCUSDT"])
            for _ in range(2):
                with pytest.raises(InvalidStatus) as e:
                    async with connect(url):
                        pass
                assert e.value.response.status_code == status
                assert e.value.response.headers["Retry-After"] == "5"
            async with connect(url) as ws:
                assert await Reader(ws).quotes(USDM, 1)
            assert sim.stats.rejected == 2

    arun(main())


def test_send_malformed_frames_fail_decoding_that_many_times():
    async def main():
        async with sim_for() as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                await r.quotes(USDM, 2)
                sim.send_malformed(4)
                errors, quotes = 0, []
                while len(quotes) < 12:
                    try:
                        kind, payload = USDM.decode(await r.next())
                    except FrameError:
                        errors += 1
                        continue
                    quotes.extend(payload)
                assert errors == 4
                assert consecutive(by_symbol(quotes)["BTCUSDT"])  # broken frames come in addition to data

    arun(main())


@pytest.mark.parametrize("name", VENUE_NAMES)
def test_malformed_variants_each_fail_the_venue_decoder(name):
    try:
        venue = get_venue(name)
    except ImportError:
        pytest.skip(f"{name}: venue module not written yet")
    symbol = "BTC/USD" if name == "kraken" else "BTC-USDT" if name == "okx" else "BTCUSDT"
    sample = venue.encode_quote(
        symbol, 1.5, 2.0, 1.6, 3.0, ts_event_ns=1_700_000_000_000_000_000, seq=9, px_decimals=2, sz_decimals=3
    )
    assert venue.decode(sample)[0] == FrameKind.QUOTES
    variants = malformed_variants(venue, sample)
    assert len(variants) >= 3
    for v in variants:
        with pytest.raises(FrameError):
            venue.decode(v)


def test_skip_seq_makes_a_gap_of_n_per_symbol():
    async def main():
        async with sim_for() as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT", "ETHUSDT"])) as ws:
                r = Reader(ws)
                before = await r.quotes(USDM, 6)
                sim.skip_seq(3)
                after = await r.quotes(USDM, 40)
            for sym in ("BTCUSDT", "ETHUSDT"):
                ids = [0] + by_symbol(before + after)[sym]  # ids count from 1: a first quote can be the jump
                steps = [b - a for a, b in zip(ids, ids[1:])]
                assert steps.count(4) == 1 and set(steps) == {1, 4}, (sym, ids)

    arun(main())


def test_duplicate_repeats_the_last_data_frame():
    async def main():
        async with sim_for() as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                await r.quotes(USDM, 3)
                await asyncio.sleep(0.05)
                sim.duplicate(2)
                frames = [await r.next() for _ in range(40)]
            runs = [k for k in range(len(frames) - 2) if frames[k] == frames[k + 1] == frames[k + 2]]
            assert len(runs) == 1, frames
            assert sim.stats.faults["dup"] == 1

    arun(main())


def test_shutdown_notice_then_normal_close():
    async def main():
        async with sim_for("binance-spot") as sim:
            async with connect(SPOT.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                await r.quotes(SPOT, 2)
                sim.shutdown_notice(close_after_s=0.3)
                kinds = []
                while (frame := await r.next(1.5)) is not None:
                    kinds.append(SPOT.decode(frame)[0])
                assert FrameKind.SHUTDOWN in kinds
                assert ws.close_code == 1001
            assert sim.stats.closed_by_fault == 1

    arun(main())


def test_slow_consumer_is_closed_and_counted():
    async def main():
        src = SyntheticSource(quote_rate_hz=20_000)
        async with ExchangeSim(venues={"binance-usdm": ["BTCUSDT", "ETHUSDT"]}, source=src, queue_frames=200) as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT", "ETHUSDT"]), max_queue=4) as ws:
                for _ in range(40):  # this client does not read: it stops after max_queue frames
                    if sim.stats.slow_consumers:
                        break
                    await asyncio.sleep(0.1)
                assert sim.stats.slow_consumers == 1
                r = Reader(ws)
                await r.drain(2.5)
                assert ws.close_code in (1008, 1006)

    arun(main(), timeout=15)


def test_faults_on_one_venue_leave_the_other_alone():
    async def main():
        venues = {"binance-usdm": ["BTCUSDT"], "binance-spot": ["BTCUSDT"]}
        async with ExchangeSim(venues=venues, source=SyntheticSource(quote_rate_hz=200)) as sim:
            async with connect(USDM.stream_url(sim.url, ["BTCUSDT"])) as a, connect(
                SPOT.stream_url(sim.url, ["BTCUSDT"])
            ) as b:
                ra, rb = Reader(a), Reader(b)
                await ra.quotes(USDM, 2)
                await rb.quotes(SPOT, 2)
                sim.close_abruptly("binance-spot")
                assert await ra.quotes(USDM, 5)
                await rb.drain(0.5)
                assert b.close_code == 1006 and a.state.name == "OPEN"
            with pytest.raises(ValueError, match="not simulated"):
                sim.stall(1.0, "okx")

    arun(main())


def test_a_venue_that_fails_to_import_is_a_clear_error(monkeypatch):
    import feeds.venues

    monkeypatch.setitem(feeds.venues._REGISTRY, "kraken", "feeds.venues.no_such_module:Kraken")
    with pytest.raises(ValueError, match="venue 'kraken' is not available"):
        ExchangeSim(venues={"binance-usdm": ["BTCUSDT"], "kraken": ["BTC/USD"]})
    with pytest.raises(ValueError, match="unknown venue"):
        ExchangeSim(venues={"nasdaq": ["AAPL"]})


def test_sim_clock_freezes_during_a_stall():
    async def main():
        clock = SimClock()
        t0 = clock.now()
        clock.stall(0.2)
        await asyncio.sleep(0.1)
        assert clock.now() - t0 < 0.02  # frozen
        t1 = time.monotonic()
        await clock.wait_until(None)
        assert time.monotonic() - t1 > 0.05
        await asyncio.sleep(0.1)
        assert 0.08 < clock.now() - t0 < 0.2  # runs again, minus the stall

    arun(main())


# ------------------------------------------------------------------------------------------ raw replay


def _write_capture(path: Path, stamps_us: bool, gz: bool) -> list[bytes]:
    """A small Binance capture: bookTicker for two symbols, depth, trade, a marker; returns its frames."""
    t0 = 1_723_161_254_000_000_000
    frames = []
    for k in range(12):
        sym = "BTCUSDT" if k % 3 else "ETHUSDT"
        if k % 4 == 3:
            f = {"stream": f"{sym.lower()}@depth@100ms", "data": {"e": "depthUpdate", "s": sym, "U": k, "u": k, "b": []}}
        else:
            f = {"stream": f"{sym.lower()}@bookTicker", "data": {"u": 100 + k, "s": sym, "b": "1.00", "B": "2", "a": "1.01", "A": "3"}}
        frames.append(json.dumps(f, separators=(",", ":")).encode())
    lines = []
    for k, f in enumerate(frames):
        ns = t0 + k * 20_000_000  # 20 ms apart
        stamp = str(ns // 1000) if stamps_us else str(ns)
        lines.append(stamp.encode() + b" " + f)
        if k == 5:
            lines.append(stamp.encode() + b' # {"event":"reconnect"}')
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    return frames


@pytest.mark.parametrize("stamps_us,gz", [(True, True), (False, False)])
def test_raw_file_source_sends_frames_verbatim_in_order(tmp_path, stamps_us, gz):
    path = tmp_path / ("cap.gz" if gz else "cap.txt")
    frames = _write_capture(path, stamps_us, gz)
    src = RawFileSource(path, "binance-spot", speed=1.0)
    assert len(list(src.records())) == 12  # the marker line is not a frame

    async def main():
        async with ExchangeSim(venues={"binance-spot": ["BTCUSDT", "ETHUSDT"]}, source=src) as sim:
            async with connect(SPOT.stream_url(sim.url, ["BTCUSDT"])) as ws:
                r = Reader(ws)
                got = []
                for _ in range(9):
                    got.append(await r.timed())
                assert await r.drain(0.2) == []
        # BTCUSDT quotes and every non-quote frame (for the client to count and skip), not ETHUSDT quotes.
        want = [f for f in frames if b"depth" in f or b'"s":"BTCUSDT"' in f]
        assert [m.encode() for _, m in got] == want
        span = got[-1][0] - got[0][0]
        assert 0.12 < span < 0.6  # paced by the stamps: 10 x 20 ms between the first and last

    arun(main())


def test_raw_file_source_fast_replay_to_a_sim_of_any_symbol(tmp_path):
    path = tmp_path / "cap.gz"
    frames = _write_capture(path, True, True)

    async def main():
        src = RawFileSource([path], "binance-spot", speed=0)
        async with ExchangeSim(source=src) as sim:  # venues default to the source's venue, any symbol
            assert sim.venues == {"binance-spot": []}
            async with connect(SPOT.stream_url(sim.url, ["BTCUSDT", "ETHUSDT"])) as ws:
                r = Reader(ws)
                got = [await r.next() for _ in range(12)]
        assert [g.encode() for g in got] == frames

    arun(main())


@pytest.mark.shared_data
def test_raw_replay_of_shared_binance_capture():
    folder = SHARED_DATA / "binance-raw"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent (only present on the developers' machine)")
    path = folder / "spot_btcusdt_20240808.gz"
    lines = []
    with gzip.open(path, "rb") as f:
        for line in f:
            lines.append(line.rstrip(b"\n").split(b" ", 1)[1])
            if len(lines) == 2000:
                break

    async def main():
        src = RawFileSource(path, "binance-spot", speed=0, max_frames=2000)
        async with ExchangeSim(venues={"binance-spot": ["BTCUSDT"]}, source=src) as sim:
            async with connect(SPOT.stream_url(sim.url, ["BTCUSDT"]), max_size=None) as ws:
                r = Reader(ws)
                got = [(await r.next()).encode() for _ in range(2000)]
                assert await r.drain(0.2) == []
        assert got == lines
        kinds = [SPOT.decode(g)[0] for g in got]
        assert kinds.count(FrameKind.QUOTES) > 500 and kinds.count(FrameKind.IGNORED) > 100

    arun(main())


# ------------------------------------------------------------------------------------------ schedule and CLI


def test_parse_fault_schedule_good():
    spec = "close@30,stall:10@60,reject:503x3@90,malformed:5@100,gap:3@110,dup:2@120,shutdown@130,nopong:15@140"
    evs = parse_fault_schedule(spec + ", close@5/Binance-USDM, shutdown:0.5@7/bybit")
    assert [e.name for e in evs] == ["close", "shutdown", "close", "stall", "reject", "malformed", "gap", "dup",
                                     "shutdown", "nopong"]
    assert (evs[0].at_s, evs[0].venue) == (5.0, "binance-usdm")
    assert (evs[1].arg, evs[1].venue) == (0.5, "bybit-linear")
    reject = evs[4]
    assert (reject.arg, reject.count, reject.at_s) == (503.0, 3, 90.0)
    assert parse_fault_schedule("") == []


@pytest.mark.parametrize(
    "spec,bad",
    [
        ("close@30,explode@40", "explode@40"),
        ("stall@10", "stall@10"),
        ("stall:x@10", "stall:x@10"),
        ("reject:200@5", "reject:200@5"),
        ("close:3@5", "close:3@5"),
        ("dupx2@5", "dupx2@5"),
        ("gap:1.5@5", "gap:1.5@5"),
        ("close@5/nasdaq", "close@5/nasdaq"),
        ("close", "close"),
        ("reject:429@5/binance-usdm", "reject:429@5/binance-usdm"),
    ],
)
def test_parse_fault_schedule_bad_items_are_named(spec, bad):
    with pytest.raises(ValueError) as e:
        parse_fault_schedule(spec)
    assert repr(bad) in str(e.value)


def test_run_exchange_sim_prints_status_and_applies_faults():
    printed: list[str] = []

    async def main():
        return await run_exchange_sim(
            {"binance-usdm": ["BTCUSDT"]},
            source=SyntheticSource(quote_rate_hz=50),
            faults="gap:2@0.5,close@1.2",
            duration_s=1.6,
            print_fn=printed.append,
        )

    stats = arun(main())
    assert printed[0].startswith("exchange-sim listening on ws://127.0.0.1:")
    assert any("/public/stream?streams=btcusdt@bookTicker" in p for p in printed)
    assert any("fault gap:2@0.5" in p for p in printed) and any("fault close@1.2" in p for p in printed)
    assert sum("quotes/s" in p for p in printed) == 2
    assert stats.faults == {"gap": 1, "close": 1}
    with pytest.raises(ValueError, match="is not simulated"):
        arun(run_exchange_sim({"binance-usdm": ["BTCUSDT"]}, faults="close@1/okx", duration_s=0.1, print_fn=print))


# ------------------------------------------------------------------------------------------ Bybit


@pytest.mark.skipif(not HAS_BYBIT, reason="feeds/venues/bybit.py not written yet")
def test_bybit_linear_subscribe_ping_quotes_and_gap():
    bybit = get_venue("bybit-linear")

    async def main():
        async with sim_for("bybit-linear") as sim:
            async with connect(bybit.stream_url(sim.url, ["BTCUSDT", "ETHUSDT"])) as ws:
                r = Reader(ws)
                assert await r.drain(0.15) == []  # nothing until subscribed
                for f in bybit.subscribe_frames(["BTCUSDT", "ETHUSDT"]):
                    await ws.send(f)
                ack = await r.next()
                assert json.loads(ack)["success"] is True and json.loads(ack)["op"] == "subscribe"
                frames = [ack]
                frames += await r.drain(0.1)
                await ws.send(bybit.ping_frame())
                answered = await r.drain(0.2)
                sim.drop_pongs(0.3)
                await ws.send(bybit.ping_frame())
                unanswered = await r.drain(0.2)
                await asyncio.sleep(0.15)
                sim.skip_seq(2)
                frames += answered + unanswered + await r.drain(0.3)
            assert sum('"pong"' in f for f in answered) == 1
            assert sum('"pong"' in f for f in unanswered) == 0
            assert sim.stats.pongs_dropped == 1
            quotes = []
            for f in frames:
                kind, payload = bybit.decode(f)
                if kind == FrameKind.QUOTES:
                    quotes.extend(payload)
                else:
                    assert kind == FrameKind.CONTROL  # the ack and the pong
            ids = by_symbol(quotes)
            assert set(ids) == {"BTCUSDT", "ETHUSDT"}
            for sym, seqs in ids.items():
                steps = [b - a for a, b in zip(seqs, seqs[1:])]
                assert seqs[0] == 1 and steps.count(3) == 1 and set(steps) == {1, 3}, (sym, seqs)
            assert quotes[0].snapshot  # u == 1: Bybit's "fresh book" marker on the very first quote

    arun(main())


ALL_VENUES = {
    "binance-spot": ["BTCUSDT"],
    "binance-usdm": ["BTCUSDT", "ETHUSDT"],
    "bybit-linear": ["BTCUSDT"],
    "bybit-spot": ["ETHUSDT"],
    "okx": ["BTC-USDT"],
    "kraken": ["BTC/USD"],
}


@pytest.mark.skipif(
    not all(importlib.util.find_spec(f"feeds.venues.{m}") for m in ("bybit", "okx", "kraken")),
    reason="a venue module is not written yet",
)
def test_every_venue_at_once_on_one_port():
    async def client(sim, name, symbols):
        venue = get_venue(name)
        async with connect(venue.stream_url(sim.url, symbols)) as ws:
            r = Reader(ws)
            for f in venue.subscribe_frames(symbols):
                await ws.send(f)
            if venue.ping_frame():
                await ws.send(venue.ping_frame())
            frames = await r.drain(1.3)  # Kraken heartbeats come once a second
        kinds: dict[FrameKind, int] = {}
        quotes = []
        for f in frames:
            kind, payload = venue.decode(f)  # no FrameError: every frame is the venue's own shape
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind == FrameKind.QUOTES:
                quotes.extend(payload)
        assert set(kinds) <= {FrameKind.QUOTES, FrameKind.CONTROL}, (name, kinds)
        ids = by_symbol(quotes)
        assert set(ids) == set(symbols), (name, set(ids))
        if venue.seq_mode:
            assert all(consecutive(v) for v in ids.values()), name
        if venue.ping_frame() or venue.heartbeat_frame() or venue.subscribe_frames(symbols):
            assert kinds.get(FrameKind.CONTROL, 0) >= 1, name
        if venue.heartbeat_frame():
            assert venue.heartbeat_frame() in frames, name
        return name

    async def main():
        async with ExchangeSim(venues=ALL_VENUES, source=SyntheticSource(quote_rate_hz=50)) as sim:
            done = await asyncio.gather(*(client(sim, n, s) for n, s in ALL_VENUES.items()))
            assert done == list(ALL_VENUES)
            assert all(sim.stats.connections[n] == 1 for n in ALL_VENUES)

    arun(main())
