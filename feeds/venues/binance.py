"""Binance spot and USD-M futures ``<symbol>@bookTicker`` over the combined-stream endpoint.

    spot   wss://stream.binance.com:9443/stream?streams=btcusdt@bookTicker/ethusdt@bookTicker
    usdm   wss://fstream.binance.com/public/stream?streams=btcusdt@bookTicker   (bookTicker is /public tier)

Frames are ``{"stream": "<sym>@bookTicker", "data": {...}}``. Spot data is ``{u, s, b, B, a, A}``
(no exchange time); futures add ``e, E, T`` (ms). ``u`` is the order-book update id: it increases
but skips, so a repeat or a step back is detectable and a gap is not. The server pings at the
websocket level (spot every 20 s, futures every 3 min) and the client library pongs; connections
are closed at 24 h, and spot announces restarts with a ``serverShutdown`` event.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from engine.domain.timestamps import MS_NS
from feeds.venues.base import (
    FrameError,
    FrameKind,
    SeqMode,
    Venue,
    VenueQuote,
    decimal,
    field_of,
    fmt_decimal,
    json_object,
)

_SUFFIX = "@bookTicker"


class _Combined(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class _BookTicker(msgspec.Struct):
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str
    T: int = 0  # futures: transaction time, ms
    E: int = 0  # futures: event time, ms


_combined = msgspec.json.Decoder(_Combined)
_ticker = msgspec.json.Decoder(_BookTicker)
_any = msgspec.json.Decoder()
_encode = msgspec.json.encode


class BinanceSpot(Venue):
    name = "binance-spot"
    default_url = "wss://stream.binance.com:9443"
    path = "/stream"
    max_symbols = 200  # the limit is 1024 streams; 200 keeps the URL short
    lifetime_s = 24 * 3600.0
    seq_mode = SeqMode.INCREASING
    futures = False

    # -- client side ------------------------------------------------------------------------------
    def stream_url(self, base_url: str, symbols: list[str]) -> str:
        return f"{base_url}{self.path}?streams=" + "/".join(s.lower() + _SUFFIX for s in symbols)

    def decode(self, frame: str | bytes) -> tuple[FrameKind, Any]:
        try:
            env = _combined.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return self._decode_other(frame)
        if not env.stream.endswith(_SUFFIX):
            return FrameKind.IGNORED, env.stream.partition("@")[2] or env.stream
        try:
            t = _ticker.decode(env.data)
        except msgspec.ValidationError as e:
            raise FrameError(self.name, field_of(e, "data"), str(e)) from None
        except msgspec.DecodeError as e:
            raise FrameError(self.name, "data", f"not JSON: {e}") from None
        n = self.name
        q = VenueQuote(
            t.s,
            decimal(t.b, n, "data.b"),
            decimal(t.B, n, "data.B"),
            decimal(t.a, n, "data.a"),
            decimal(t.A, n, "data.A"),
            (t.T or t.E) * MS_NS,
            t.u,
        )
        return FrameKind.QUOTES, [q]

    def _decode_other(self, frame: str | bytes) -> tuple[FrameKind, Any]:
        msg = json_object(frame, self.name)
        if "stream" in msg or "data" in msg:
            if not isinstance(msg.get("stream"), str):
                raise FrameError(self.name, "stream", "missing or not a string")
            raise FrameError(self.name, "data", "missing or not an object")
        event = msg.get("event", msg)  # the WS API wraps events in {"event": ...}
        if isinstance(event, dict) and event.get("e") == "serverShutdown":
            return FrameKind.SHUTDOWN, "serverShutdown"
        if "code" in msg and "msg" in msg:
            return FrameKind.ERROR, f"{msg['code']}: {msg['msg']}"
        if "id" in msg and "result" in msg:
            return FrameKind.CONTROL, None
        if "lastUpdateId" in msg:  # a REST depth snapshot written into a capture
            return FrameKind.IGNORED, "depthSnapshot"
        if msg.get("e"):
            return FrameKind.IGNORED, str(msg["e"])
        raise FrameError(self.name, "stream", "a frame with neither a stream nor a known event")

    # -- server side ------------------------------------------------------------------------------
    def symbols_from_url(self, path: str) -> list[str]:
        parts = urlsplit(path)
        if parts.path.endswith("/stream"):
            names = "/".join(parse_qs(parts.query).get("streams", [""])).split("/")
        elif "/ws/" in parts.path:
            names = parts.path.rsplit("/ws/", 1)[1].split("/")
        else:
            names = []
        return [n[: -len(_SUFFIX)].upper() for n in names if n.endswith(_SUFFIX)]

    def serve_frame(self, frame: str) -> tuple[list[str], list[str]]:
        try:
            req = _any.decode(frame)
            method, params, rid = req["method"], req.get("params", []), req.get("id")
        except (msgspec.DecodeError, KeyError, TypeError):
            return [_encode({"code": 3, "msg": "Invalid JSON: expected a request object"}).decode()], []
        if method == "SUBSCRIBE" and isinstance(params, list):
            symbols = [p[: -len(_SUFFIX)].upper() for p in params if isinstance(p, str) and p.endswith(_SUFFIX)]
            return [_encode({"result": None, "id": rid}).decode()], symbols
        return [_encode({"code": 2, "msg": f"Invalid request: unknown method {method!r}", "id": rid}).decode()], []

    def encode_quote(self, symbol, bid_px, bid_sz, ask_px, ask_sz, *, ts_event_ns, seq, px_decimals, sz_decimals):
        b, a = fmt_decimal(bid_px, px_decimals), fmt_decimal(ask_px, px_decimals)
        bs, as_ = fmt_decimal(bid_sz, sz_decimals), fmt_decimal(ask_sz, sz_decimals)
        stream = symbol.lower() + _SUFFIX
        if self.futures:
            ms = ts_event_ns // MS_NS
            return (
                f'{{"stream":"{stream}","data":{{"e":"bookTicker","u":{seq},"s":"{symbol}","b":"{b}","B":"{bs}",'
                f'"a":"{a}","A":"{as_}","T":{ms},"E":{ms}}}}}'
            )
        return f'{{"stream":"{stream}","data":{{"u":{seq},"s":"{symbol}","b":"{b}","B":"{bs}","a":"{a}","A":"{as_}"}}}}'

    def shutdown_frame(self) -> str | None:
        return '{"e":"serverShutdown","E":0}'


class BinanceUsdm(BinanceSpot):
    name = "binance-usdm"
    default_url = "wss://fstream.binance.com"
    path = "/public/stream"
    futures = True

    def shutdown_frame(self) -> str | None:
        return None  # USD-M documents no shutdown notice; connections just close at 24 h

