"""Live venue feeds: websocket connections that survive faults and tell the engine what they lost.

    LiveFeed(venue, symbols) -> connections (<= venue.max_symbols each) -> FrameNormalizer -> rows
                                                      \\-> RawRecorder (frames and feed events)

Each connection runs its own loop: connect, subscribe, read frames until the connection ends, then wait
a ``Backoff`` delay and connect again, forever (until ``stop()``). What ends a connection:

- the venue closed it or the TCP connection broke (1006);
- ``pong_timeout``: a websocket ping was not answered within ``ping_timeout_s``;
- ``dead``: no frame at all (data, control or pong) for ``dead_after_s``;
- ``stale``: no data frame for ``stale_reconnect_s`` although the connection is alive (the instruments
  were already marked STALE after ``stale_after_s``);
- ``lifetime``: the connection is older than the venue's limit minus ``lifetime_margin_s`` (Binance: 24 h),
  so it is replaced before the venue cuts it;
- ``shutdown``: the venue announced a restart (Binance ``serverShutdown``, OKX 64008, Kraken status);
- a frame larger than the venue's maximum (1009).

When a connection ends, its instruments are marked so their next quote resets them (RECONNECT), and a
data-free spell marks them STALE: the model never runs across a hole in the data. Each event is a
``FeedEvent``, passed to ``on_event`` and written into the raw recording as a marker line, so a replay of
the recording resets exactly where the live run did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from feeds.backoff import Backoff
from feeds.normalize import FeedCounters, FrameNormalizer
from feeds.venues import get_venue
from feeds.venues.base import FrameKind


class RecvClock:
    """UTC nanoseconds that never go back and never repeat: the wall clock read once, then advanced by
    the monotonic clock. Every receive stamp of a run comes from one RecvClock, so quotes from all
    connections are in one strictly increasing order, in the run and in its recording."""

    def __init__(self) -> None:
        self._wall0 = time.time_ns()
        self._mono0 = time.monotonic_ns()
        self._last = 0

    def now(self) -> int:
        t = self._wall0 + (time.monotonic_ns() - self._mono0)
        if t <= self._last:
            t = self._last + 1
        self._last = t
        return t

    def wall_of(self, mono_ns: int) -> int:
        return self._wall0 + (mono_ns - self._mono0)

    def mono_of(self, wall_ns: int) -> int:
        return self._mono0 + (wall_ns - self._wall0)


class FeedConfig(msgspec.Struct, kw_only=True):
    """Connection health settings. Times in seconds."""

    url: str | None = None  # websocket base; None: the venue's production endpoint
    open_timeout_s: float = 10.0
    ping_interval_s: float = 20.0  # our websocket-level pings
    ping_timeout_s: float = 20.0  # unanswered this long: reconnect
    dead_after_s: float = 30.0  # no frame and no pong this long: reconnect
    stale_after_s: float = 10.0  # no data frame this long: STALE reset for the connection's instruments
    stale_reconnect_s: float = 30.0  # no data frame this long: reconnect as well
    lifetime_s: float | None = None  # None: the venue's documented limit
    lifetime_margin_s: float = 600.0  # replace the connection this long before the venue's limit
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 30.0
    backoff_stable_s: float = 60.0
    max_frame_bytes: int | None = None  # None: the venue's limit


class FeedEvent(msgspec.Struct, kw_only=True):
    ts_ns: int  # RecvClock time
    venue: str
    kind: str  # connected, disconnected, rejected, connect_failed, stale, resumed, shutdown_notice, venue_error, malformed
    detail: str = ""
    symbols: list[str] = msgspec.field(default_factory=list)


class ConnectionHealth(msgspec.Struct, kw_only=True):
    symbols: list[str]
    state: str = "connecting"  # connecting | up | stale | waiting
    connects: int = 0
    disconnects: dict[str, int] = msgspec.field(default_factory=dict)  # by reason
    rejected: int = 0
    stale_periods: int = 0
    connected_at_mono: int = 0
    last_msg_mono: int = 0
    last_data_mono: int = 0
    last_pong_mono: int = 0
    next_attempt_s: float = 0.0


class LiveFeed:
    """One venue's BBO streams for ``symbols`` (venue spelling), into ``normalizer``."""

    def __init__(
        self,
        venue: str,
        symbols: list[str],
        normalizer: FrameNormalizer,
        *,
        config: FeedConfig | None = None,
        clock: RecvClock | None = None,
        on_data: Callable[[int, int], None] | None = None,
        on_event: Callable[[FeedEvent], None] | None = None,
        recorder=None,  # feeds.recorder.RawRecorder: write(recv_ns, frame), event(recv_ns, kind, **fields)
    ) -> None:
        self.venue = get_venue(venue)
        self.name = self.venue.name
        if not symbols:
            raise ValueError(f"{self.name}: no symbols to subscribe to")
        self.config = config or FeedConfig()
        self.normalizer = normalizer
        self.clock = clock or RecvClock()
        self.on_data = on_data
        self.on_event = on_event
        self.recorder = recorder
        n = self.venue.max_symbols
        self.connections = [ConnectionHealth(symbols=symbols[k : k + n]) for k in range(0, len(symbols), n)]
        self.events: list[FeedEvent] = []  # the most recent ones, for the status line
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    @property
    def counters(self) -> FeedCounters:
        return self.normalizer.counters

    async def run(self) -> None:
        """Runs every connection until ``stop()``."""
        self._tasks = [asyncio.create_task(self._run_connection(c)) for c in self.connections]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:
                t.cancel()

    def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()

    # -- one connection -----------------------------------------------------------------------------

    async def _run_connection(self, conn: ConnectionHealth) -> None:
        cfg = self.config
        backoff = Backoff(cfg.backoff_base_s, cfg.backoff_cap_s, cfg.backoff_stable_s)
        base = (cfg.url or self.venue.default_url).rstrip("/")
        url = self.venue.stream_url(base, conn.symbols)
        ids = [self.normalizer.ids[s] for s in conn.symbols if s in self.normalizer.ids]
        while not self._stopping:
            retry_after: float | None = None
            conn.state = "connecting"
            try:
                ws = await connect(
                    url,
                    open_timeout=cfg.open_timeout_s,
                    ping_interval=None,  # our own pinger reports pong timeouts as events
                    max_size=cfg.max_frame_bytes or self.venue.max_frame_bytes,
                    compression=None,
                    close_timeout=1.0,
                    # Backpressure: past this many parsed frames waiting, stop reading the socket, so
                    # the parser cannot outrun the engine and the backlog (memory, latency) stays bounded.
                    max_queue=_MAX_QUEUE,
                )
            except InvalidStatus as e:
                conn.rejected += 1
                retry_after = _retry_after(e)
                self._event("rejected", f"HTTP {e.response.status_code}", conn.symbols)
            except (OSError, TimeoutError, InvalidHandshake) as e:
                self._event("connect_failed", f"{type(e).__name__}: {e}", conn.symbols)
            else:
                reason = await self._session(conn, ws)
                now = time.monotonic()
                backoff.disconnected(now)
                conn.disconnects[reason] = conn.disconnects.get(reason, 0) + 1
                # Whatever happened, quotes may have been missed: each instrument's next quote resets it.
                self.normalizer.mark_reconnect(ids)
                self._event("disconnected", reason, conn.symbols)
                if self._stopping:
                    break
                if reason in ("shutdown", "lifetime"):
                    continue  # planned: reconnect at once
            if self._stopping:
                break
            delay = backoff.next_delay(retry_after)
            conn.state = "waiting"
            conn.next_attempt_s = delay
            await asyncio.sleep(delay)

    async def _session(self, conn: ConnectionHealth, ws: ClientConnection) -> str:
        """Reads one connection until it ends; returns why it ended."""
        now = time.monotonic_ns()
        conn.connects += 1
        conn.state = "up"
        conn.connected_at_mono = conn.last_msg_mono = conn.last_data_mono = conn.last_pong_mono = now
        self._event("connected", f"connection {conn.connects}", conn.symbols)
        end: list[str] = []

        def finish(reason: str) -> None:
            if not end:
                end.append(reason)
                if ws.transport is not None:
                    ws.transport.abort()

        helpers = [asyncio.create_task(self._watchdog(conn, ws, finish)), asyncio.create_task(self._pinger(conn, ws, finish))]
        if self.venue.ping_interval_s:
            helpers.append(asyncio.create_task(self._app_pinger(ws)))
        try:
            for frame in self.venue.subscribe_frames(conn.symbols):
                await ws.send(frame)
            await self._read(conn, ws, finish)
        except ConnectionClosed as e:
            if not end:
                # rcvd: the venue's close frame; sent: ours (1009 when a frame is over max_size).
                frame = e.rcvd if e.rcvd is not None else e.sent
                code = frame.code if frame is not None else 1006
                end.append("oversized" if code == 1009 else f"closed {code}")
        except (OSError, asyncio.IncompleteReadError) as e:
            if not end:
                end.append(f"error {type(e).__name__}")
        finally:
            for t in helpers:
                t.cancel()
            if ws.transport is not None and not end:
                ws.transport.abort()
        return end[0] if end else "stopped"

    async def _read(self, conn: ConnectionHealth, ws: ClientConnection, finish: Callable[[str], None]) -> None:
        norm = self.normalizer
        clock = self.clock
        rec = self.recorder
        on_data = self.on_data
        mono = time.monotonic_ns
        QUOTES, SHUTDOWN, ERROR = FrameKind.QUOTES, FrameKind.SHUTDOWN, FrameKind.ERROR
        n = 0
        recv = ws.recv
        while True:
            # decode=False: text frames as the bytes that arrived; msgspec reads UTF-8 bytes directly,
            # and the recorder writes them as they are, so nothing is decoded and re-encoded.
            frame = await recv(decode=False)
            # A busy connection never makes ``recv`` wait, so without this the loop would run nothing
            # else (timers, watchdogs, other connections, the engine's batch) until the burst ends.
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            recv_mono = mono()
            recv_ns = clock.now()
            if rec is not None:
                rec.write(recv_ns, frame)
            kind = norm.on_frame(frame, recv_ns)
            conn.last_msg_mono = recv_mono
            if kind is QUOTES:
                conn.last_data_mono = recv_mono
                if conn.state == "stale":
                    conn.state = "up"
                    self._event("resumed", "", conn.symbols)
                if on_data is not None:
                    on_data(recv_mono, mono())
            elif kind is None:
                self._event("malformed", norm.counters.last_error, conn.symbols, quiet=True)
            elif kind is SHUTDOWN:
                self._event("shutdown_notice", bytes(frame[:200]).decode("utf-8", "replace"), conn.symbols)
                finish("shutdown")
                return
            elif kind is ERROR:
                self._event("venue_error", norm.counters.last_error, conn.symbols)

    async def _watchdog(self, conn: ConnectionHealth, ws: ClientConnection, finish: Callable[[str], None]) -> None:
        cfg = self.config
        lifetime = cfg.lifetime_s if cfg.lifetime_s is not None else self.venue.lifetime_s
        max_age_ns = None if lifetime is None else int(max(lifetime - cfg.lifetime_margin_s, lifetime / 2) * 1e9)
        stale_ns, stale_drop_ns = int(cfg.stale_after_s * 1e9), int(cfg.stale_reconnect_s * 1e9)
        dead_ns = int(cfg.dead_after_s * 1e9)
        tick_s = max(0.005, min(cfg.stale_after_s, cfg.dead_after_s) / 8)
        ids = [self.normalizer.ids[s] for s in conn.symbols if s in self.normalizer.ids]
        while True:
            await asyncio.sleep(tick_s)
            now = time.monotonic_ns()
            if now - max(conn.last_msg_mono, conn.last_pong_mono) > dead_ns:
                finish("dead")
                return
            quiet = now - conn.last_data_mono
            if quiet > stale_ns and conn.state == "up":
                conn.state = "stale"
                conn.stale_periods += 1
                self.normalizer.mark_stale(ids)
                self._event("stale", f"no data for {quiet / 1e9:.1f} s", conn.symbols)
            if quiet > stale_drop_ns:
                finish("stale")
                return
            if max_age_ns is not None and now - conn.connected_at_mono > max_age_ns:
                finish("lifetime")
                return

    async def _pinger(self, conn: ConnectionHealth, ws: ClientConnection, finish: Callable[[str], None]) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.ping_interval_s)
            try:
                waiter = await ws.ping()
                await asyncio.wait_for(waiter, cfg.ping_timeout_s)
            except TimeoutError:
                finish("pong_timeout")
                return
            except ConnectionClosed:
                return
            conn.last_pong_mono = time.monotonic_ns()

    async def _app_pinger(self, ws: ClientConnection) -> None:
        frame = self.venue.ping_frame()
        if frame is None:
            return
        while True:
            await asyncio.sleep(self.venue.ping_interval_s)
            try:
                await ws.send(frame)
            except ConnectionClosed:
                return

    def _event(self, kind: str, detail: str, symbols: list[str], *, quiet: bool = False) -> None:
        ev = FeedEvent(ts_ns=self.clock.now(), venue=self.name, kind=kind, detail=detail, symbols=symbols)
        # Marker lines in the recording: replay applies "reconnect" and "stale" exactly where they were.
        marker = _MARKERS.get(kind)
        if self.recorder is not None and marker is not None:
            self.recorder.event(ev.ts_ns, marker, symbols=symbols, detail=detail)
        if not quiet:
            self.events.append(ev)
            del self.events[:-50]
        if self.on_event is not None:
            self.on_event(ev)


_YIELD_EVERY = 256  # frames read between two chances for the rest of the event loop
_MAX_QUEUE = 4096  # parsed frames waiting for the reader before the socket is paused

_MARKERS = {"disconnected": "reconnect", "stale": "stale", "connected": "connected"}


def _retry_after(e: InvalidStatus) -> float | None:
    value = e.response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
