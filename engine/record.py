"""``nextick record``: venue streams to disk, nothing else.

Raw frames go to ``OUT/raw/<venue>/`` (gzip, ``<recv_ns> <frame>`` lines, the format of
``../shared/data/binance-raw``, with reconnect/stale marker lines) and, unless turned off, the normalized
quotes to ``OUT/quotes/venue=.../instrument=.../date=.../*.parquet``. The feed is the paper trader's
(``feeds.live.LiveFeed``): the same reconnects, watchdogs and resets.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import msgspec

from feeds.live import FeedConfig, LiveFeed, RecvClock
from feeds.normalize import FeedCounters, FrameNormalizer
from feeds.recorder import QuoteRecorder, RawRecorder
from feeds.venues import get_venue


class RecordStats(msgspec.Struct, kw_only=True):
    out: str
    wall_s: float
    feeds: dict[str, FeedCounters]
    quotes_written: int
    raw_files: list[str]


async def record(
    venues: dict[str, list[str]],
    out: Path,
    *,
    url: str | None = None,
    sim: bool = False,
    quotes: bool = True,
    rotate_bytes: int = 256 << 20,
    duration_s: float | None = None,
    feed: FeedConfig | None = None,
    print_fn=print,
) -> RecordStats:
    out = Path(out)
    clock = RecvClock()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    table: list[tuple[str, str]] = []
    normalizers: list[FrameNormalizer] = []
    feeds: list[LiveFeed] = []
    raws: list[RawRecorder] = []
    quote_rec = QuoteRecorder(out, table) if quotes else None

    def drain() -> None:
        for n in normalizers:
            if len(n):
                rows = n.take()
                if quote_rec is not None:
                    quote_rec.add(rows)

    sim_ctx = contextlib.nullcontext()
    if sim:
        from feeds.exchange_sim import ExchangeSim

        sim_ctx = ExchangeSim(venues=venues)
    async with sim_ctx as server:
        base = server.url if sim else url
        cfg = msgspec.structs.replace(feed or FeedConfig(), url=base)
        for venue, syms in venues.items():
            name = get_venue(venue).name
            ids = {}
            for s in syms:
                ids[s] = len(table)
                table.append((name, s))
            norm = FrameNormalizer(get_venue(venue), ids, FeedCounters())
            raw = RawRecorder(out, name, rotate_bytes=rotate_bytes)
            normalizers.append(norm)
            raws.append(raw)
            feeds.append(LiveFeed(name, syms, norm, config=cfg, clock=clock, recorder=raw))
        print_fn(f"record: {', '.join(venues)} from {base or 'the production endpoints'} into {out}/")
        tasks = [asyncio.create_task(f.run()) for f in feeds]
        t0 = time.monotonic()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                drain()
                n = sum(f.counters.quotes for f in feeds)
                print_fn(f"record: {n:,} quotes, " + ", ".join(
                    f"{f.name} {'/'.join(sorted({c.state for c in f.connections}))}" for f in feeds))
                if duration_s is not None and time.monotonic() - t0 >= duration_s:
                    break
        finally:
            for f in feeds:
                f.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            drain()
            for r in raws:
                r.close()
            if quote_rec is not None:
                quote_rec.close()
    return RecordStats(
        out=str(out),
        wall_s=time.monotonic() - t0,
        feeds={f.name: f.counters for f in feeds},
        quotes_written=quote_rec.rows_written if quote_rec is not None else 0,
        raw_files=sorted(str(p) for p in (out / "raw").rglob("*.gz")),
    )
