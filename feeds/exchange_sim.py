"""The local exchange simulator: one websocket server that speaks several venues' BBO protocols at once.

``nextick exchange-sim`` runs it on its own; ``nextick paper`` embeds it as its default market. A client
points every venue's base URL at ``sim.url`` (``ws://127.0.0.1:PORT``) and the request path picks the
venue: each venue's ``stream_url`` path (``/stream`` for Binance spot, ``/public/stream`` for USD-M,
``/v5/public/linear`` for Bybit, ...), and for any other path the first venue whose ``symbols_from_url``
finds streams in it (Binance's raw ``/ws/<stream>``). All protocol knowledge comes from the ``Venue``
objects (``feeds.venues``): subscriptions by URL (``symbols_from_url``) or by frame (``serve_frame``,
which also answers application-level pings), quotes by ``encode_quote``, restart notices by
``shutdown_frame``, heartbeats by ``heartbeat_frame`` (sent every second while subscribed).

Data. A ``SimSource`` opens one ``SimStream`` per venue; one producer task per venue pulls batches of
frames from it and broadcasts them to the connections subscribed to each frame's symbol, through a
bounded per-connection queue drained by a writer task. The producer is shared, so a reconnecting client
sees the market go on (update ids continue), not restart. Sources:

- ``SyntheticSource``: quotes from ``feeds.synthetic.SyntheticMarket`` (24x7, no outages), paced by
  the market's own inter-arrival times over ``speed``; update ids per symbol count from 1.
- ``RawFileSource``: a raw capture (``<recv_stamp> <frame>`` lines) replayed verbatim, paced by its
  receive stamps over ``speed``.

With ``speed=0`` a source runs as fast as the sockets take the frames (the producer waits while a
subscriber's queue is half full); paced, a connection whose backlog passes ``queue_frames`` is closed
with 1008 "slow consumer".

Faults (``close_abruptly``, ``stall``, ``drop_pongs``, ``reject_upgrades``, ``send_malformed``,
``skip_seq``, ``duplicate``, ``shutdown_notice``) act at once on the current connections of one venue
or all; ``parse_fault_schedule`` reads a timed list of them for the CLI (``run_exchange_sim``).

Speed. Data frames are framed once per broadcast (a server frame is unmasked, so every subscriber gets
the same bytes) and a writer hands its whole backlog to the transport in one write, then waits on the
connection's flow control: about 3x the rate of one ``await ws.send(text)`` per frame. Control frames
(acks, pongs, heartbeats, notices) are written the same way, at once. Compression is not offered.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import gzip
import heapq
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from engine.domain.latency import StageLatency
from feeds.venues import ALIASES, VENUE_NAMES, FrameError, FrameKind, Venue, get_venue

log = logging.getLogger("nextick.exchange_sim")

DEFAULT_VENUES: dict[str, list[str]] = {"binance-usdm": ["BTCUSDT", "ETHUSDT"], "bybit-linear": ["BTCUSDT", "ETHUSDT"]}
HEARTBEAT_S = 1.0
_FAST_BATCH = 512  # frames per producer batch at speed 0
_WRITE_BATCH = 4096  # most frames a writer hands to the transport at once
_WRITE_LIMIT = 256 * 1024  # transport high-water mark (bytes) before a writer waits
_CLOSE_TIMEOUT_S = 2.0

# (symbol or None for "every subscribed connection of the venue", frame text, is a quote)
SimFrame = tuple["str | None", "str | bytes", bool]


# --------------------------------------------------------------------------------------------- stats


class SimStats(msgspec.Struct):
    """Counters of one simulator run. Per-venue dicts are keyed by venue name."""

    connections: dict[str, int] = msgspec.field(default_factory=dict)  # handshakes accepted, cumulative
    open_connections: dict[str, int] = msgspec.field(default_factory=dict)  # open now
    rejected: int = 0  # handshakes refused: reject_upgrades, unknown path
    closed_by_fault: int = 0  # connections closed by close_abruptly or shutdown_notice
    frames_sent: dict[str, int] = msgspec.field(default_factory=dict)  # every frame written: data and control
    quotes_sent: dict[str, int] = msgspec.field(default_factory=dict)  # quote frames handed to connections
    slow_consumers: int = 0  # connections closed 1008 for a backlog over queue_frames
    bad_client_frames: int = 0  # client frames the venue could not serve (logged)
    pongs_dropped: int = 0  # websocket and application pongs withheld by drop_pongs
    faults: dict[str, int] = msgspec.field(default_factory=dict)  # fault name -> times applied


# --------------------------------------------------------------------------------------------- clock


class SimClock:
    """A venue's market clock: the event loop's clock, frozen while the venue is stalled.

    Sources pace their frames against ``now()`` and wait with ``wait_until``, so a stall delays what
    follows it instead of bunching it up: the market pauses and resumes where it was.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._offset = 0.0  # stalled seconds already folded in
        self._stall_start: float | None = None
        self._stall_until = 0.0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def stall(self, seconds: float) -> None:
        t = self.loop.time()
        self._fold(t)
        if self._stall_start is None:
            self._stall_start = t
        self._stall_until = max(self._stall_until, t + seconds)

    def _fold(self, t: float) -> None:
        if self._stall_start is not None and t >= self._stall_until:
            self._offset += self._stall_until - self._stall_start
            self._stall_start = None

    def stall_remaining(self) -> float:
        t = self.loop.time()
        self._fold(t)
        return self._stall_until - t if self._stall_start is not None else 0.0

    def now(self) -> float:
        """Market seconds: loop time minus the time spent stalled."""
        t = self.loop.time()
        self._fold(t)
        if self._stall_start is not None:
            t = self._stall_start
        return t - self._offset

    async def wait_until(self, t: float | None) -> None:
        """Until ``now() >= t`` and no stall is on (``t=None``: only the stall)."""
        while True:
            rem = self.stall_remaining()
            if rem > 0:
                await asyncio.sleep(rem)
                continue
            if t is None:
                return
            delay = t - self.now()
            if delay <= 0:
                return
            await asyncio.sleep(delay)


# --------------------------------------------------------------------------------------------- sources


class SimStream(Protocol):
    """One venue's frames, in order, with their pacing."""

    async def next_batch(self, clock: SimClock, limit: int, wanted: Mapping[str, Any]) -> list[SimFrame] | None:
        """Wait (on ``clock``) until at least one frame is due, then return the due frames, at most
        ``limit`` (all of them at once when unpaced). Quotes of symbols not in ``wanted`` (truthy
        values only) may be left out. None when the stream has ended."""
        ...

    def skip(self, n: int) -> None:
        """The next quote of each symbol skips ``n`` update ids (n messages never sent)."""
        ...


class SimSource(Protocol):
    """Opens a stream per venue; None for a venue the source has nothing for."""

    def open(self, venue: Venue, symbols: list[str]) -> SimStream | None: ...


def _decimals(step: float) -> int:
    """Decimals that print multiples of ``step`` exactly (0.01 -> 2, 1 -> 0)."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


class SyntheticSource:
    """Synthetic BBO quotes for each venue's symbols (``feeds.synthetic.SyntheticMarket``, 24x7, no
    outages), paced by the market's own Poisson arrivals at ``quote_rate_hz`` per symbol over ``speed``.

    ``speed=0`` or ``quote_rate_hz=None``: as fast as the sockets take them. ``max_quotes``: stop each
    venue's stream after that many quotes (connections stay open, without data). ``ts_event`` is the
    wall clock when a quote is encoded; update ids count per symbol from 1.
    """

    def __init__(
        self,
        seed: int = 7,
        quote_rate_hz: float | None = 10.0,
        speed: float = 1.0,
        max_quotes: int | None = None,
        *,
        tick_size: float = 0.01,
        size_decimals: int = 3,
    ) -> None:
        if speed < 0:
            raise ValueError(f"SyntheticSource: speed must be >= 0, got {speed}")
        if quote_rate_hz is not None and quote_rate_hz <= 0:
            raise ValueError(f"SyntheticSource: quote_rate_hz must be > 0 or None, got {quote_rate_hz}")
        self.seed = seed
        self.quote_rate_hz = quote_rate_hz
        self.speed = speed
        self.max_quotes = max_quotes
        self.tick_size = tick_size
        self.size_decimals = size_decimals

    def open(self, venue: Venue, symbols: list[str]) -> SimStream | None:
        if not symbols:
            raise ValueError(f"SyntheticSource: venue {venue.name} lists no symbols")
        return _SyntheticStream(self, venue, list(symbols))

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(seed={self.seed}, quote_rate_hz={self.quote_rate_hz}, speed={self.speed}, "
            f"max_quotes={self.max_quotes})"
        )


class _SyntheticStream:
    def __init__(self, src: SyntheticSource, venue: Venue, symbols: list[str]) -> None:
        from feeds.synthetic import SyntheticConfig, SyntheticMarket

        cfg = SyntheticConfig(
            n_instruments=len(symbols),
            n_sessions=3650,
            calendar="24x7",
            seed=src.seed,
            quote_rate_hz=src.quote_rate_hz or 10.0,
            outages_per_session=0.0,
            tick_size=src.tick_size,
        )
        self.market = SyntheticMarket(cfg)
        self._chunks = self.market.chunks()
        self.venue = venue
        self.symbols = symbols
        self.paced = bool(src.speed) and src.quote_rate_hz is not None
        self.speed = src.speed
        self.left = src.max_quotes
        self.px_decimals = _decimals(src.tick_size)
        self.sz_decimals = src.size_decimals
        self.seq = [0] * len(symbols)
        self._skip: dict[int, int] = {}
        self._origin: int | None = None  # first ts_recv of the market, ns
        self._anchor: float | None = None  # clock time of market second 0
        self._ts: list[float] = []  # market seconds of the current chunk
        self._cols: tuple[list, ...] = ()
        self._k = 0

    def skip(self, n: int) -> None:
        for i in range(len(self.symbols)):
            self._skip[i] = self._skip.get(i, 0) + n

    def _load(self) -> bool:
        for chunk in self._chunks:
            if not len(chunk):
                continue
            recv = chunk["ts_recv"]
            if self._origin is None:
                self._origin = int(recv[0])
            self._ts = ((recv - self._origin) * 1e-9).tolist()
            self._cols = (
                chunk["instrument"].tolist(),
                chunk["bid_px"].tolist(),
                chunk["bid_sz"].tolist(),
                chunk["ask_px"].tolist(),
                chunk["ask_sz"].tolist(),
            )
            self._k = 0
            return True
        return False

    async def next_batch(self, clock: SimClock, limit: int, wanted: Mapping[str, Any]) -> list[SimFrame] | None:
        if self.left is not None and self.left <= 0:
            return None
        if self._k >= len(self._ts) and not self._load():
            return None
        k, ts = self._k, self._ts
        if self.left is not None:
            limit = min(limit, self.left)
        hi = min(len(ts), k + limit)
        if self.paced:
            if self._anchor is None:
                self._anchor = clock.now() - ts[k] / self.speed
            await clock.wait_until(self._anchor + ts[k] / self.speed)
            j = max(k + 1, bisect.bisect_right(ts, (clock.now() - self._anchor) * self.speed, k, hi))
        else:
            await clock.wait_until(None)
            j = hi
        self._k = j
        if self.left is not None:
            self.left -= j - k
        inst, bid, bsz, ask, asz = self._cols
        syms, seqs, skip = self.symbols, self.seq, self._skip
        enc, pd, sd, now_ns = self.venue.encode_quote, self.px_decimals, self.sz_decimals, time.time_ns
        out: list[SimFrame] = []
        for r in range(k, j):
            i = inst[r]
            s = seqs[i] + 1
            if skip:
                s += skip.pop(i, 0)
            seqs[i] = s
            sym = syms[i]
            if wanted.get(sym):
                text = enc(sym, bid[r], bsz[r], ask[r], asz[r], ts_event_ns=now_ns(), seq=s, px_decimals=pd, sz_decimals=sd)
                out.append((sym, text, True))
        return out


_STAMP = re.compile(rb"^(\d+) ")


class RawFileSource:
    """Replays a raw capture verbatim: lines ``<recv_stamp> <frame>`` (gzip or plain text), the stamp in
    milliseconds (13 digits), microseconds (16) or nanoseconds (19). Lines ``<stamp> #...`` are nextick
    event markers and blank lines are skipped; other lines without a stamp are logged and skipped.

    ``path`` may be several files: they are merged by stamp. Frames keep their original spacing over
    ``speed`` (0: as fast as the sockets take them). Quote frames go to the connections subscribed to
    their symbol (by ``venue.decode``); every other frame (depth, trades, snapshots, frames the venue
    cannot decode) goes to every subscribed connection, for the client to count and skip.
    ``skip_seq(n)`` drops the next n quote frames of each symbol. ``max_frames``: stop after that many.
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        venue: str,
        speed: float = 1.0,
        *,
        max_frames: int | None = None,
    ) -> None:
        if speed < 0:
            raise ValueError(f"RawFileSource: speed must be >= 0, got {speed}")
        paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
        if not paths:
            raise ValueError("RawFileSource: no files")
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"RawFileSource: {p} is not a file")
        self.paths = paths
        self.venue_name = get_venue(venue).name
        self.speed = speed
        self.max_frames = max_frames
        self.bad_lines = 0

    def open(self, venue: Venue, symbols: list[str]) -> SimStream | None:
        if venue.name != self.venue_name:
            return None
        return _RawStream(self, venue)

    def records(self) -> Iterator[tuple[int, bytes]]:
        """(receive ns, frame bytes) in stamp order, markers and blank lines left out."""
        its = [self._read(p) for p in self.paths]
        return its[0] if len(its) == 1 else heapq.merge(*its, key=lambda r: r[0])

    def _read(self, path: Path) -> Iterator[tuple[int, bytes]]:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                m = _STAMP.match(line)
                if m is None:
                    self.bad_lines += 1
                    if self.bad_lines <= 5:
                        log.warning("%s:%d: no '<stamp> ' prefix, line skipped: %r", path, lineno, line[:80])
                    continue
                frame = line[m.end() :]
                if frame[:1] == b"#":
                    continue
                digits = len(m.group(1))
                stamp = int(m.group(1))
                if digits <= 13:
                    stamp *= 1_000_000
                elif digits <= 16:
                    stamp *= 1_000
                yield stamp, frame

    def __repr__(self) -> str:
        return f"RawFileSource({[str(p) for p in self.paths]}, {self.venue_name!r}, speed={self.speed})"


class _RawStream:
    def __init__(self, src: RawFileSource, venue: Venue) -> None:
        self.venue = venue
        self.paced = bool(src.speed)
        self.speed = src.speed
        self.left = src.max_frames
        self._records = src.records()
        self._head: tuple[int, bytes] | None = None
        self._origin: int | None = None
        self._anchor: float | None = None
        self._skip: dict[str, int] = {}
        self._seen: set[str] = set()

    def skip(self, n: int) -> None:
        for s in self._seen:  # the symbols the replay has reached; a recording's set is fixed early
            self._skip[s] = self._skip.get(s, 0) + n

    def _next(self) -> tuple[int, bytes] | None:
        if self._head is None:
            self._head = next(self._records, None)
        return self._head

    async def next_batch(self, clock: SimClock, limit: int, wanted: Mapping[str, Any]) -> list[SimFrame] | None:
        if self.left is not None and self.left <= 0:
            return None
        head = self._next()
        if head is None:
            return None
        if self.left is not None:
            limit = min(limit, self.left)
        if self._origin is None:
            self._origin = head[0]
        if self.paced:
            if self._anchor is None:
                self._anchor = clock.now()
            await clock.wait_until(self._anchor + (head[0] - self._origin) * 1e-9 / self.speed)
            horizon = self._origin + int((clock.now() - self._anchor) * self.speed * 1e9)
        else:
            await clock.wait_until(None)
            horizon = None
        out: list[SimFrame] = []
        n = 0
        decode, skip = self.venue.decode, self._skip
        while head is not None and n < limit and (horizon is None or head[0] <= horizon or n == 0):
            frame = head[1]
            self._head = None
            n += 1
            sym: str | None = None
            try:
                kind, payload = decode(frame)
                if kind == FrameKind.QUOTES and payload:
                    sym = payload[0].symbol
            except FrameError:
                pass
            except Exception:  # a venue decoder bug must not stop the replay
                log.debug("raw replay: decode failed", exc_info=True)
            if sym is None:
                out.append((None, frame, False))
            else:
                self._seen.add(sym)
                if skip and skip.get(sym):
                    skip[sym] -= 1
                elif wanted.get(sym):
                    out.append((sym, frame, True))
            head = self._next()
        if self.left is not None:
            self.left -= n
        return out


# --------------------------------------------------------------------------------------------- server


def _wire(payload: bytes) -> bytes:
    """One unmasked, unfragmented server text frame."""
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def _payload(wire: bytes) -> bytes:
    n = wire[1] & 0x7F
    return wire[2:] if n < 126 else wire[4:] if n == 126 else wire[10:]


_QUOTED_NUM = re.compile(r'"-?\d+\.\d+"')
_BARE_NUM = re.compile(r"(?<![\w.\"])-?\d+\.\d+(?![\w.\"])")


def malformed_variants(venue: Venue, sample: str) -> list[str]:
    """Broken versions of the data frame ``sample`` that ``venue.decode`` rejects with ``FrameError``:
    truncated JSON, a price that is not a number, an object of the wrong shape, not JSON at all."""
    cands = [sample[: max(1, len(sample) // 2)]]
    m = _QUOTED_NUM.search(sample) or _BARE_NUM.search(sample)
    if m:
        cands.append(sample[: m.start()] + '"oops"' + sample[m.end() :])
    cands += ['{"unexpected":true}', "[1,2,3]", "not json"]
    out = []
    for c in cands:
        try:
            venue.decode(c)
        except FrameError:
            out.append(c)
        except Exception:
            pass
    return out or ["not json"]


class _VenueState:
    def __init__(self, name: str, venue: Venue, symbols: list[str]) -> None:
        self.name = name
        self.venue = venue
        self.symbols = list(symbols)
        self.listed = set(symbols)  # empty: any symbol
        self.clock = SimClock()
        self.stream: SimStream | None = None
        self.conns: list[_Conn] = []
        self.subs: dict[str, list[_Conn]] = {}
        self.has_subs: asyncio.Event | None = None
        self.room: asyncio.Event | None = None
        self.nopong_until = 0.0
        self.exhausted = False
        self.heartbeat = venue.heartbeat_frame()


class _Conn:
    __slots__ = (
        "ws",
        "vs",
        "q",
        "wake",
        "symbols",
        "last",
        "dup",
        "malformed",
        "bad_i",
        "closing",
        "writer",
        "timer",
        "stamps",
        "fresh",
    )

    def __init__(self, ws: ServerConnection, vs: _VenueState) -> None:
        self.ws = ws
        self.vs = vs
        self.q: collections.deque[bytes] = collections.deque()
        self.wake = asyncio.Event()
        self.symbols: set[str] = set()
        self.last: bytes | None = None  # last data frame handed to the transport
        self.dup = 0
        self.malformed = 0
        self.bad_i = 0
        self.closing = False
        self.writer: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        # (monotonic ns when queued, frames) per broadcast, in queue order: the queue stage's latency
        self.stamps: collections.deque[list[int]] = collections.deque()
        self.fresh = 0  # frames queued by the broadcast in progress

    def clear(self) -> None:
        self.q.clear()
        self.stamps.clear()

    def is_open(self) -> bool:
        return not self.closing and self.ws.protocol.state is State.OPEN and not self.ws.transport.is_closing()


class ExchangeSim:
    """The simulator: ``async with ExchangeSim(...) as sim:`` then connect clients to ``sim.url``.

    ``venues``: venue name -> symbols it lists (an empty list: any symbol, for replays); every name must
    import (``feeds.venues.get_venue``), else ``ValueError`` here. ``source``: a ``SimSource``
    (default ``SyntheticSource()``). ``ping_interval_s``/``ping_timeout_s``: websocket-level keepalive
    pings (None: none). ``lifetime_s``: close connections older than this (1001). ``queue_frames``: the
    per-connection backlog past which a connection is closed (1008 "slow consumer").
    """

    def __init__(
        self,
        *,
        venues: dict[str, list[str]] | None = None,
        source: SimSource | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float = 60.0,
        lifetime_s: float | None = None,
        queue_frames: int = 100_000,
    ) -> None:
        if venues is None:
            if isinstance(source, RawFileSource):
                venues = {source.venue_name: []}
            else:
                venues = {k: list(v) for k, v in DEFAULT_VENUES.items()}
        if not venues:
            raise ValueError("ExchangeSim: no venues")
        if queue_frames < 1:
            raise ValueError(f"ExchangeSim: queue_frames must be >= 1, got {queue_frames}")
        self.source: SimSource = source if source is not None else SyntheticSource()
        self.host = host
        self.port = port
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.lifetime_s = lifetime_s
        self.queue_frames = queue_frames
        self.url = ""
        self.stats = SimStats()
        # Per-stage latency of the send path (engine.domain.latency): "queue" = a frame queued for a connection
        # -> written to its socket.
        self.latency = StageLatency(("queue",))
        self._venues: dict[str, _VenueState] = {}
        self._paths: dict[str, _VenueState] = {}
        for raw_name, symbols in venues.items():
            name = ALIASES.get(raw_name, raw_name)
            if name in self._venues:
                raise ValueError(f"ExchangeSim: venue {name!r} listed twice")
            try:
                venue = get_venue(name)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"ExchangeSim: venue {name!r} is not available: {type(e).__name__}: {e}") from e
            vs = _VenueState(name, venue, [s.upper() for s in symbols])
            path = self._path_of(venue, vs.symbols)
            if path in self._paths:
                raise ValueError(f"ExchangeSim: venues {self._paths[path].name!r} and {name!r} share the path {path!r}")
            self._paths[path] = vs
            vs.stream = self.source.open(venue, vs.symbols)
            self._venues[name] = vs
            for d in (self.stats.connections, self.stats.open_connections, self.stats.frames_sent, self.stats.quotes_sent):
                d[name] = 0
        if all(vs.stream is None for vs in self._venues.values()):
            raise ValueError(f"ExchangeSim: {self.source!r} has nothing for venues {list(self._venues)}")
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._reject: list[tuple[int, int | None]] = []  # pending (status, retry_after_s), one per handshake

    @staticmethod
    def _path_of(venue: Venue, symbols: list[str]) -> str:
        return urlsplit(venue.stream_url("", symbols[:1] or ["BTCUSDT"])).path.rstrip("/") or "/"

    @property
    def venues(self) -> dict[str, list[str]]:
        return {name: list(vs.symbols) for name, vs in self._venues.items()}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            ping_interval=self.ping_interval_s,
            ping_timeout=self.ping_timeout_s,
            close_timeout=_CLOSE_TIMEOUT_S,
            compression=None,
            write_limit=_WRITE_LIMIT,
            max_size=1 << 20,
        )
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.port = port
        self.url = f"ws://{host}:{port}" if ":" not in host else f"ws://[{host}]:{port}"
        for vs in self._venues.values():
            vs.has_subs = asyncio.Event()
            vs.room = asyncio.Event()
            if vs.stream is not None:
                self._spawn(self._produce(vs), f"sim-producer-{vs.name}")
            if vs.heartbeat is not None:
                self._spawn(self._heartbeats(vs), f"sim-heartbeat-{vs.name}")

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ExchangeSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any, name: str | None = None) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stream_url(self, venue: str, symbols: list[str] | None = None) -> str:
        """The URL a client of ``venue`` connects to (its listed symbols by default)."""
        vs = self._venue_state(venue)
        return vs.venue.stream_url(self.url, symbols if symbols is not None else vs.symbols)

    # ------------------------------------------------------------------ handshake and connections

    def _route(self, path: str) -> _VenueState | None:
        base = urlsplit(path).path.rstrip("/") or "/"
        vs = self._paths.get(base)
        if vs is not None:
            return vs
        for vs in self._venues.values():
            try:
                if vs.venue.symbols_from_url(path):
                    return vs
            except Exception:
                log.debug("symbols_from_url failed for %s", vs.name, exc_info=True)
        return None

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if self._reject:
            status, retry_after = self._reject.pop(0)
            self.stats.rejected += 1
            resp = conn.respond(status, f"exchange-sim: rejected ({status})\n")
            if retry_after is not None:
                resp.headers["Retry-After"] = str(retry_after)
            return resp
        vs = self._route(request.path)
        if vs is None:
            self.stats.rejected += 1
            known = ", ".join(f"{p} ({v.name})" for p, v in self._paths.items())
            return conn.respond(404, f"exchange-sim: no venue at {request.path[:200]}; paths: {known}\n")
        conn.sim_venue = vs  # type: ignore[attr-defined]
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        vs: _VenueState = ws.sim_venue  # type: ignore[attr-defined]
        c = _Conn(ws, vs)
        stats = self.stats
        stats.connections[vs.name] += 1
        stats.open_connections[vs.name] += 1
        vs.conns.append(c)
        self._install_pong_filter(c)
        c.writer = asyncio.get_running_loop().create_task(self._writer(c))
        if self.lifetime_s is not None:
            c.timer = asyncio.get_running_loop().call_later(
                self.lifetime_s, lambda: self._close(c, 1001, "connection lifetime exceeded")
            )
        try:
            try:
                self._subscribe(c, vs.venue.symbols_from_url(ws.request.path if ws.request else ""))
            except Exception:
                stats.bad_client_frames += 1
                log.warning("%s: bad subscription URL %r", vs.name, ws.request and ws.request.path, exc_info=True)
            async for msg in ws:
                self._serve(c, msg)
        except ConnectionClosed:
            pass
        finally:
            c.closing = True
            c.clear()
            if c.timer is not None:
                c.timer.cancel()
            c.writer.cancel()
            self._unsubscribe(c)
            stats.open_connections[vs.name] -= 1

    def _serve(self, c: _Conn, msg: str | bytes) -> None:
        vs = c.vs
        try:
            text = msg if isinstance(msg, str) else bytes(msg).decode("utf-8")
            replies, symbols = vs.venue.serve_frame(text)
        except Exception as e:
            self.stats.bad_client_frames += 1
            log.warning("%s: client frame not served (%s: %s): %r", vs.name, type(e).__name__, e, msg[:120])
            return
        if replies and not symbols and self._loop is not None and self._loop.time() < vs.nopong_until:
            if any("pong" in r.lower() for r in replies):
                self.stats.pongs_dropped += 1
                return
        for r in replies:
            self._write_control(c, r)
        if symbols:
            self._subscribe(c, symbols)

    def _subscribe(self, c: _Conn, symbols: Iterable[str]) -> None:
        vs = c.vs
        for s in symbols:
            s = s.upper()
            if s in c.symbols or (vs.listed and s not in vs.listed):
                continue
            c.symbols.add(s)
            vs.subs.setdefault(s, []).append(c)
        if c.symbols and vs.has_subs is not None:
            vs.has_subs.set()

    def _unsubscribe(self, c: _Conn) -> None:
        vs = c.vs
        if c in vs.conns:
            vs.conns.remove(c)
        for s in c.symbols:
            lst = vs.subs.get(s)
            if lst and c in lst:
                lst.remove(c)
                if not lst:
                    del vs.subs[s]
        c.symbols.clear()
        if not vs.subs and vs.has_subs is not None:
            vs.has_subs.clear()
        if vs.room is not None:
            vs.room.set()

    def _install_pong_filter(self, c: _Conn) -> None:
        """Withhold websocket-level pongs while ``drop_pongs`` is on. Only control frames pass through the
        protocol's ``send_frame`` here (data frames are written pre-framed), so the check costs nothing."""
        proto = c.ws.protocol
        orig = proto.send_frame
        vs, loop, stats = c.vs, asyncio.get_running_loop(), self.stats

        def send_frame(frame: Frame) -> None:
            if frame.opcode is Opcode.PONG and loop.time() < vs.nopong_until:
                stats.pongs_dropped += 1
                return
            orig(frame)

        proto.send_frame = send_frame  # type: ignore[method-assign]

    def _write_control(self, c: _Conn, text: str) -> None:
        if not c.is_open():
            return
        c.ws.transport.write(_wire(text.encode()))
        self.stats.frames_sent[c.vs.name] += 1

    def _close(self, c: _Conn, code: int, reason: str) -> None:
        if c.closing:
            return
        c.closing = True
        c.clear()
        self._spawn(c.ws.close(code, reason))

    # ------------------------------------------------------------------ data path

    async def _produce(self, vs: _VenueState) -> None:
        stream = vs.stream
        assert stream is not None and vs.has_subs is not None and vs.room is not None
        paced = getattr(stream, "paced", True)
        # Unpaced, the producer refills only queues below ``low`` and by at most ``limit``, so a backlog
        # never passes queue_frames: fast replays slow down to the slowest reader instead of closing it.
        low = max(1, min(self.queue_frames // 2, 4 * _FAST_BATCH))
        limit = max(1, min(_FAST_BATCH, self.queue_frames - low)) if not paced else max(1, self.queue_frames)
        try:
            await vs.has_subs.wait()
            while True:
                if not paced:
                    await vs.has_subs.wait()
                    while any(len(c.q) >= low for c in vs.conns):
                        vs.room.clear()
                        await vs.room.wait()
                batch = await stream.next_batch(vs.clock, limit, vs.subs)
                if batch is None:
                    vs.exhausted = True
                    log.info("%s: source ended", vs.name)
                    return
                if batch:
                    self._broadcast(vs, batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: producer failed; no more data for this venue", vs.name)
            vs.exhausted = True

    def _broadcast(self, vs: _VenueState, batch: list[SimFrame]) -> None:
        subs = vs.subs
        everyone = None
        nq = 0
        for sym, text, is_quote in batch:
            wire = _wire(text.encode() if isinstance(text, str) else text)
            if sym is None:
                if everyone is None:
                    everyone = [c for c in vs.conns if c.symbols]
                targets = everyone
            else:
                targets = subs.get(sym)
                if not targets:
                    continue
            for c in targets:
                c.q.append(wire)
                c.fresh += 1
            if is_quote:
                nq += len(targets)
        self.stats.quotes_sent[vs.name] += nq
        now = time.monotonic_ns()
        for c in vs.conns:
            if c.fresh:
                c.stamps.append([now, c.fresh])
                c.fresh = 0
        cap = self.queue_frames
        for c in vs.conns:
            if c.q:
                if len(c.q) > cap and not c.closing:
                    self.stats.slow_consumers += 1
                    log.warning("%s: slow consumer closed (backlog %d frames)", vs.name, len(c.q))
                    self._close(c, 1008, "slow consumer")
                else:
                    c.wake.set()

    def _special(self, c: _Conn) -> list[bytes]:
        """A batch with pending duplicates and malformed frames woven in."""
        out: list[bytes] = []
        if c.dup and c.last is not None:
            out.extend([c.last] * c.dup)
            c.dup = 0
        q = c.q
        popped = 0
        while q and len(out) < _WRITE_BATCH:
            f = q.popleft()
            popped += 1
            if c.malformed:
                sample = _payload(f).decode("utf-8", "replace")
                variants = malformed_variants(c.vs.venue, sample)
                out.append(_wire(variants[c.bad_i % len(variants)].encode()))
                c.bad_i += 1
                c.malformed -= 1
            out.append(f)
            c.last = f
        self._written(c, popped)
        return out

    async def _writer(self, c: _Conn) -> None:
        ws, q, vs = c.ws, c.q, c.vs
        transport = ws.transport
        clock, sent, room = vs.clock, self.stats.frames_sent, vs.room
        name = vs.name
        try:
            while True:
                if not q and not (c.dup and c.last is not None):
                    c.wake.clear()
                    await c.wake.wait()
                    continue
                rem = clock.stall_remaining()
                if rem > 0:
                    await asyncio.sleep(rem)
                    continue
                if not c.is_open():
                    return
                if c.dup or c.malformed:
                    frames = self._special(c)
                elif len(q) <= _WRITE_BATCH:
                    frames = list(q)
                    q.clear()
                    c.last = frames[-1]
                    self._written(c, len(frames))
                else:
                    frames = [q.popleft() for _ in range(_WRITE_BATCH)]
                    c.last = frames[-1]
                    self._written(c, len(frames))
                transport.write(b"".join(frames))
                sent[name] += len(frames)
                if room is not None:
                    room.set()
                await ws.drain()
        except asyncio.CancelledError:
            raise
        except Exception:
            if c.is_open():
                log.exception("%s: writer failed", name)

    def _written(self, c: _Conn, n: int) -> None:
        """``n`` frames leave c's queue for the socket now: their queue latency goes in the histogram."""
        now = time.monotonic_ns()
        stamps, add = c.stamps, self.latency["queue"].add
        while n > 0 and stamps:
            head = stamps[0]
            take = min(n, head[1])
            wait = now - head[0]
            for _ in range(take):
                add(wait)
            n -= take
            head[1] -= take
            if head[1] == 0:
                stamps.popleft()

    async def _heartbeats(self, vs: _VenueState) -> None:
        assert vs.heartbeat is not None
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for c in list(vs.conns):
                if c.symbols:
                    self._write_control(c, vs.heartbeat)

    # ------------------------------------------------------------------ faults

    def _venue_state(self, venue: str) -> _VenueState:
        name = ALIASES.get(venue, venue)
        vs = self._venues.get(name)
        if vs is None:
            raise ValueError(f"venue {venue!r} is not simulated here; simulated: {', '.join(self._venues)}")
        return vs

    def _targets(self, venue: str | None) -> list[_VenueState]:
        return list(self._venues.values()) if venue is None else [self._venue_state(venue)]

    def _count(self, fault: str) -> None:
        self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1

    def close_abruptly(self, venue: str | None = None) -> None:
        """Drop the TCP connections without a close frame: clients see 1006."""
        for vs in self._targets(venue):
            for c in list(vs.conns):
                if c.is_open():
                    c.closing = True
                    c.clear()
                    c.ws.transport.abort()
                    self.stats.closed_by_fault += 1
        self._count("close")

    def stall(self, seconds: float, venue: str | None = None) -> None:
        """No data frames for ``seconds`` (the venue's market pauses); pings, pongs and heartbeats go on."""
        for vs in self._targets(venue):
            vs.clock.stall(seconds)
        self._count("stall")

    def drop_pongs(self, seconds: float, venue: str | None = None) -> None:
        """Answer no websocket pings and no application pings for ``seconds``."""
        assert self._loop is not None, "start() the simulator first"
        until = self._loop.time() + seconds
        for vs in self._targets(venue):
            vs.nopong_until = max(vs.nopong_until, until)
        self._count("nopong")

    def reject_upgrades(self, status: int, count: int = 1, retry_after_s: int | None = None) -> None:
        """The next ``count`` handshakes are answered with HTTP ``status`` (and ``Retry-After``)."""
        if not 300 <= status <= 599:
            raise ValueError(f"reject_upgrades: status must be an HTTP error (300-599), got {status}")
        self._reject.extend([(status, retry_after_s)] * count)
        self._count("reject")

    def send_malformed(self, count: int = 1, venue: str | None = None) -> None:
        """Each current connection gets ``count`` broken frames, one before each of its next data frames."""
        for vs in self._targets(venue):
            for c in vs.conns:
                c.malformed += count
        self._count("malformed")

    def skip_seq(self, n: int = 1, venue: str | None = None) -> None:
        """The next quote of each symbol jumps its update id by ``n + 1``: ``n`` messages never sent."""
        for vs in self._targets(venue):
            if vs.stream is not None:
                vs.stream.skip(n)
        self._count("gap")

    def duplicate(self, count: int = 1, venue: str | None = None) -> None:
        """Each current connection gets its last data frame again, ``count`` times."""
        for vs in self._targets(venue):
            for c in vs.conns:
                c.dup += count
                c.wake.set()
        self._count("dup")

    def shutdown_notice(self, close_after_s: float = 1.0, venue: str | None = None) -> None:
        """Send the venue's shutdown notice (if it has one), then close normally (1001) after the delay."""
        assert self._loop is not None, "start() the simulator first"
        for vs in self._targets(venue):
            frame = vs.venue.shutdown_frame()
            for c in list(vs.conns):
                if not c.is_open():
                    continue
                if frame:
                    self._write_control(c, frame)
                self._loop.call_later(close_after_s, self._shutdown_close, c)
        self._count("shutdown")

    def _shutdown_close(self, c: _Conn) -> None:
        if c.is_open():
            self.stats.closed_by_fault += 1
            self._close(c, 1001, "server shutdown")


# --------------------------------------------------------------------------------------------- schedule


class FaultEvent(msgspec.Struct, frozen=True):
    """One item of a fault schedule: ``name[:arg][xcount]@seconds[/venue]``."""

    at_s: float
    name: str
    arg: float | None = None
    count: int = 1
    venue: str | None = None
    text: str = ""

    def apply(self, sim: ExchangeSim) -> None:
        n, v = self.name, self.venue
        if n == "close":
            sim.close_abruptly(v)
        elif n == "stall":
            sim.stall(float(self.arg or 0.0), v)
        elif n == "nopong":
            sim.drop_pongs(float(self.arg or 0.0), v)
        elif n == "reject":
            sim.reject_upgrades(int(self.arg or 503), self.count)
        elif n == "malformed":
            sim.send_malformed(int(self.arg or 1), v)
        elif n == "gap":
            sim.skip_seq(int(self.arg or 1), v)
        elif n == "dup":
            sim.duplicate(int(self.arg or 1), v)
        elif n == "shutdown":
            sim.shutdown_notice(1.0 if self.arg is None else float(self.arg), v)
        else:  # pragma: no cover - parse_fault_schedule admits only the names above
            raise ValueError(f"unknown fault {n!r}")


# name -> (what the arg is, required, integer)
FAULTS: dict[str, tuple[str, bool, bool]] = {
    "close": ("", False, False),
    "stall": ("seconds", True, False),
    "nopong": ("seconds", True, False),
    "reject": ("HTTP status", True, True),
    "malformed": ("frames", False, True),
    "gap": ("update ids skipped", False, True),
    "dup": ("repeats", False, True),
    "shutdown": ("seconds before the close", False, False),
}
_ITEM = re.compile(
    r"^(?P<name>[a-z]+)(?::(?P<arg>[0-9.]+))?(?:x(?P<count>[0-9]+))?@(?P<at>[0-9.]+)(?:/(?P<venue>[a-z0-9_.-]+))?$"
)
SCHEDULE_HELP = (
    "items 'name[:arg][xcount]@seconds[/venue]' separated by commas, e.g. "
    "'close@30,stall:10@60,reject:503x3@90,malformed:5@100,gap:3@110,dup:2@120,shutdown@130,nopong:15@140'; "
    "names: close, stall:S, nopong:S, reject:STATUS[xN], malformed[:N], gap[:N], dup[:N], shutdown[:S]"
)


def parse_fault_schedule(text: str) -> list[FaultEvent]:
    """Parse a fault schedule (see ``SCHEDULE_HELP``) into events sorted by time. ``ValueError`` names the
    bad item and what is wrong with it."""
    events: list[FaultEvent] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue

        def bad(why: str, item: str = item) -> ValueError:
            return ValueError(f"fault schedule item {item!r}: {why}; expected {SCHEDULE_HELP}")

        m = _ITEM.match(item.lower())
        if m is None:
            raise bad("not of the form name[:arg][xcount]@seconds[/venue]")
        name = m["name"]
        if name not in FAULTS:
            raise bad(f"unknown fault {name!r}")
        what, required, integer = FAULTS[name]
        arg: float | None = None
        if m["arg"] is not None:
            if not what:
                raise bad(f"{name} takes no argument")
            try:
                arg = float(m["arg"])
            except ValueError:
                raise bad(f"argument {m['arg']!r} is not a number") from None
            if integer and arg != int(arg):
                raise bad(f"{name} wants a whole number of {what}, got {m['arg']}")
            if name == "reject" and not 300 <= arg <= 599:
                raise bad(f"reject wants an HTTP error status (300-599), got {m['arg']}")
            if name in ("stall", "nopong", "malformed", "gap", "dup") and arg <= 0:
                raise bad(f"{name} wants a positive number of {what}")
        elif required:
            raise bad(f"{name} needs :{what.replace(' ', '_').upper()}")
        count = 1
        if m["count"] is not None:
            if name != "reject":
                raise bad("only reject takes xCOUNT (the other faults put their count in :arg)")
            count = int(m["count"])
            if count < 1:
                raise bad("xCOUNT must be >= 1")
        try:
            at = float(m["at"])
        except ValueError:
            raise bad(f"time {m['at']!r} is not a number of seconds") from None
        venue = m["venue"]
        if venue is not None:
            if name == "reject":
                raise bad("reject applies to every handshake; it takes no /venue")
            venue = ALIASES.get(venue, venue)
            if venue not in VENUE_NAMES:
                raise bad(f"unknown venue {m['venue']!r}; known: {', '.join(VENUE_NAMES)}")
        events.append(FaultEvent(at, name, arg, count, venue, item))
    events.sort(key=lambda e: e.at_s)
    return events


# --------------------------------------------------------------------------------------------- CLI


async def run_exchange_sim(
    venues: dict[str, list[str]] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    source: SimSource | None = None,
    ping_interval_s: float | None = 20.0,
    faults: str | None = None,
    duration_s: float | None = None,
    print_fn: Callable[[str], Any] = print,
    **sim_options: Any,
) -> SimStats:
    """``nextick exchange-sim``: serve until ``duration_s`` (None: until cancelled), print the URL, one
    status line a second and each fault as it fires; return the final stats. ``sim_options`` go to
    ``ExchangeSim`` (``ping_timeout_s``, ``lifetime_s``, ``queue_frames``)."""
    schedule = parse_fault_schedule(faults) if faults else []
    sim = ExchangeSim(venues=venues, source=source, host=host, port=port, ping_interval_s=ping_interval_s, **sim_options)
    for ev in schedule:
        if ev.venue is not None and ev.venue not in sim._venues:
            raise ValueError(f"fault schedule item {ev.text!r}: venue {ev.venue!r} is not simulated ({', '.join(sim._venues)})")
    loop = asyncio.get_running_loop()
    async with sim:
        print_fn(f"exchange-sim listening on {sim.url}  source: {sim.source!r}")
        for name, symbols in sim.venues.items():
            shown = symbols or ["<symbol>"]
            print_fn(f"  {name:<13} {sim.stream_url(name, shown)}  symbols: {', '.join(symbols) or 'any'}")
        if schedule:
            print_fn("  faults: " + ", ".join(e.text for e in schedule))
        t0 = loop.time()
        pending = list(schedule)
        last_quotes = 0
        tick = 0
        while duration_s is None or loop.time() - t0 < duration_s:
            tick += 1
            deadline = t0 + tick * 1.0
            if duration_s is not None:
                deadline = min(deadline, t0 + duration_s)
            while pending and t0 + pending[0].at_s <= deadline:
                ev = pending.pop(0)
                await asyncio.sleep(max(0.0, t0 + ev.at_s - loop.time()))
                try:
                    ev.apply(sim)
                    print_fn(f"[{loop.time() - t0:7.1f}s] fault {ev.text}")
                except Exception as e:
                    print_fn(f"[{loop.time() - t0:7.1f}s] fault {ev.text} failed: {e}")
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            quotes = sum(sim.stats.quotes_sent.values())
            print_fn(_status_line(sim, loop.time() - t0, quotes - last_quotes))
            last_quotes = quotes
        for stage, h in sim.latency.summary().items():
            print_fn(f"send latency {stage}: {h['count']:,} frames, p50 {h['p50']:.1f} us, p99 {h['p99']:.1f} us, "
                     f"p99.9 {h['p99.9']:.1f} us, max {h['max']:.1f} us")
    return sim.stats


def _status_line(sim: ExchangeSim, t: float, quotes: int) -> str:
    st = sim.stats
    conns = sum(st.open_connections.values())
    per = " ".join(f"{k}={v}" for k, v in st.open_connections.items() if v)
    faults = " ".join(f"{k}={v}" for k, v in st.faults.items()) or "none"
    extra = []
    if st.slow_consumers:
        extra.append(f"slow={st.slow_consumers}")
    if st.rejected:
        extra.append(f"rejected={st.rejected}")
    if st.bad_client_frames:
        extra.append(f"bad_frames={st.bad_client_frames}")
    q = sim.latency["queue"]
    if q.n:
        extra.append(f"queue p50 {q.percentile(50) / 1e3:.0f}us p99 {q.percentile(99) / 1e3:.0f}us "
                     f"p99.9 {q.percentile(99.9) / 1e3:.0f}us")
    return (
        f"[{t:7.1f}s] conns {conns}" + (f" ({per})" if per else "") + f"  quotes/s {quotes:,}  frames "
        f"{sum(st.frames_sent.values()):,}  faults {faults}" + ("  " + " ".join(extra) if extra else "")
    )


__all__ = [
    "DEFAULT_VENUES",
    "ExchangeSim",
    "FaultEvent",
    "RawFileSource",
    "SCHEDULE_HELP",
    "SimClock",
    "SimSource",
    "SimStats",
    "SimStream",
    "SyntheticSource",
    "malformed_variants",
    "parse_fault_schedule",
    "run_exchange_sim",
]
