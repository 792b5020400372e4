"""A venue's websocket protocol, both ends: what the live feed sends and reads, and what the local
exchange simulator answers. One module per venue implements ``Venue``; nothing outside ``feeds/venues``
knows a venue's message shapes.

Client side (``feeds.live``): ``stream_url`` and ``subscribe_frames`` open the BBO streams, ``ping_frame``
keeps an application-level heartbeat where the venue wants one, and ``decode`` turns one text frame into
a ``FrameKind`` and its payload. Server side (``feeds.exchange_sim``): ``symbols_from_url`` and
``serve_frame`` answer a client, ``encode_quote`` writes a quote the way the venue does.

Prices and sizes arrive as the venue's decimal strings (or JSON numbers, for Kraken) and become floats in
``decimal()``, the one place that conversion happens: ``float(str)`` is correctly rounded, so the same
string always gives the same double.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class FrameKind(enum.IntEnum):
    QUOTES = 0  # payload: list[VenueQuote], usually one
    CONTROL = 1  # subscription ack, pong, heartbeat: the connection is alive, no market data
    IGNORED = 2  # payload: the stream or channel name (depth, trades, ... on the same connection)
    SHUTDOWN = 3  # payload: the venue's text; it will close this connection soon, so reconnect now
    ERROR = 4  # payload: the venue's error text (rejected subscription, rate limit, ...)


class SeqMode(enum.IntEnum):
    NONE = 0  # no update id: duplicates and gaps cannot be told
    INCREASING = 1  # ids increase but skip (Binance ``u``): repeats and regressions are detectable
    CONSECUTIVE = 2  # ids step by one (Bybit ``u``): gaps are detectable too


class VenueQuote(msgspec.Struct, gc=False):
    """One decoded best-bid-offer update, before it gets an instrument id and a receive stamp."""

    symbol: str
    bid_px: float
    bid_sz: float
    ask_px: float
    ask_sz: float
    ts_event_ns: int = 0  # exchange time; 0 when the venue gives none
    seq: int = 0  # the venue's update id; 0 when it gives none
    snapshot: bool = False  # the venue re-sent its book (Bybit u=1 after a restart): sequence restarts


class FrameError(ValueError):
    """A frame that is not what the venue documents. ``field`` names what was wrong."""

    def __init__(self, venue: str, field: str, problem: str) -> None:
        super().__init__(f"{venue} frame: {field}: {problem}")
        self.venue = venue
        self.field = field
        self.problem = problem


def decimal(text: Any, venue: str, field: str) -> float:
    """A venue price or size as a float; ``FrameError`` naming the field when it is not a number."""
    if isinstance(text, str):
        try:
            return float(text)
        except ValueError:
            raise FrameError(venue, field, f"not a decimal number: {text[:40]!r}") from None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    raise FrameError(venue, field, f"expected a decimal string, got {type(text).__name__}")


_any_json = msgspec.json.Decoder()


def json_object(frame: str | bytes, venue: str) -> dict:
    """A frame that is not on a venue's fast path, as a JSON object; ``FrameError`` otherwise."""
    try:
        msg = _any_json.decode(frame)
    except msgspec.DecodeError as e:
        raise FrameError(venue, "json", f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise FrameError(venue, "json", f"expected an object, got {type(msg).__name__}")
    return msg


def top_level(levels: list, venue: str, field: str) -> tuple[float, float]:
    """(price, size) of the first ``[price, size, ...]`` level of a book side; (0, 0) for an empty
    side, which makes the quote one-sided."""
    if not levels:
        return 0.0, 0.0
    lvl = levels[0]
    if len(lvl) < 2:
        raise FrameError(venue, field, "expected [price, size, ...]")
    return decimal(lvl[0], venue, field), decimal(lvl[1], venue, field)


def field_of(e: Exception, prefix: str = "") -> str:
    """The field a msgspec error is about: ``data.b`` from "Expected `str`, got `int` - at `$.data.b[0][1]`"
    (list indices dropped, a missing field's name appended), under ``prefix`` when the decoded text was
    itself a part of the frame."""
    text = str(e)
    path = ""
    at = text.rfind(" - at `$")
    if at >= 0:
        path = text[at + 8 :].rstrip("`")
        while "[" in path:
            i = path.index("[")
            j = path.find("]", i)
            path = path[:i] + (path[j + 1 :] if j >= 0 else "")
        path = path.lstrip(".")
    marker = "missing required field `"
    i = text.find(marker)
    if i >= 0:
        name = text[i + len(marker) : text.find("`", i + len(marker))]
        path = f"{path}.{name}" if path else name
    if prefix:
        return f"{prefix}.{path}" if path else prefix
    return path or "json"


def fmt_decimal(x: float, decimals: int) -> str:
    """How venues print prices and sizes: fixed decimals."""
    return f"{x:.{decimals}f}"


class Venue:
    """One venue's BBO protocol. Subclasses set the class attributes and implement the methods."""

    name: str = ""
    default_url: str = ""  # production websocket base
    max_symbols: int = 100  # BBO streams per connection, within the venue's limits
    lifetime_s: float | None = None  # the venue closes connections older than this
    seq_mode: SeqMode = SeqMode.NONE
    # Application-level ping the client must send every ``ping_interval_s`` (None: the venue pings at
    # the websocket level and the websockets library answers).
    ping_interval_s: float | None = None
    max_frame_bytes: int = 1 << 20

    # -- client side ------------------------------------------------------------------------------
    def stream_url(self, base_url: str, symbols: list[str]) -> str:
        """The URL to connect to for ``symbols`` (``base_url`` without a trailing slash)."""
        return base_url

    def subscribe_frames(self, symbols: list[str]) -> list[str]:
        """Text frames to send after connecting, within the venue's per-request limits."""
        return []

    def ping_frame(self) -> str | None:
        return None

    def decode(self, frame: str | bytes) -> tuple[FrameKind, Any]:
        """One text frame. Raises ``FrameError`` (naming the field) for a frame that breaks the format."""
        raise NotImplementedError

    # -- server side (the local exchange simulator) -----------------------------------------------
    def symbols_from_url(self, path: str) -> list[str]:
        """Symbols a client asked for in the request path (Binance puts streams in the URL)."""
        return []

    def serve_frame(self, frame: str) -> tuple[list[str], list[str]]:
        """A client's text frame: (reply frames, symbols newly subscribed). Unknown requests get the
        venue's error reply."""
        return [], []

    def encode_quote(
        self,
        symbol: str,
        bid_px: float,
        bid_sz: float,
        ask_px: float,
        ask_sz: float,
        *,
        ts_event_ns: int,
        seq: int,
        px_decimals: int,
        sz_decimals: int,
    ) -> str:
        raise NotImplementedError

    def shutdown_frame(self) -> str | None:
        """The venue's notice that it will close the connection (None if it sends none)."""
        return None

    def heartbeat_frame(self) -> str | None:
        """A data-free frame the venue sends on its own while subscribed (Kraken), None if none."""
        return None
