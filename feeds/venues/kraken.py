"""Kraken spot websocket v2 ``ticker`` with ``event_trigger: "bbo"`` (an update on every best-bid-offer change).

    wss://ws.kraken.com/v2

Subscribe with ``{"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD", ...],
"event_trigger": "bbo"}, "req_id": n}``; each symbol is acknowledged on its own (``{"method": "subscribe",
"result": {...}, "success": true, ...}``, or ``"success": false`` with an ``error``). Data is ``{"channel":
"ticker", "type": "snapshot" | "update", "data": [{"symbol", "bid", "bid_qty", "ask", "ask_qty", ...,
"timestamp"}]}`` with prices and quantities as JSON numbers and ``timestamp`` RFC 3339 (microseconds in
Kraken's examples). There is no update id. Kraken sends ``{"channel": "heartbeat"}`` about once a second
when a subscribed connection is otherwise quiet, and ``{"channel": "status", ...}`` on connecting and when
the trading engine changes state (``online``, ``maintenance``, ``cancel_only``, ``post_only``); anything
but ``online`` means no matching, so the feed treats it as a shutdown. The client may ping with
``{"method": "ping", "req_id": n}`` and gets ``{"method": "pong", ...}``.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import time
from typing import Any

import msgspec

from engine.domain.timestamps import SECOND_NS as _NS
from feeds.venues.base import (
    FrameError,
    FrameKind,
    SeqMode,
    Venue,
    VenueQuote,
    field_of,
    fmt_decimal,
    json_object,
)

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_UTC = _dt.timezone.utc


class _Tick(msgspec.Struct):
    symbol: str
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    timestamp: str = ""


class _Ticker(msgspec.Struct):
    channel: str
    type: str
    data: list[_Tick]


_ticker = msgspec.json.Decoder(_Ticker)
_any = msgspec.json.Decoder()
_encode = msgspec.json.encode


class Kraken(Venue):
    name = "kraken"
    default_url = "wss://ws.kraken.com"
    path = "/v2"
    max_symbols = 100  # Kraken documents no per-connection symbol limit; one request carries them all
    lifetime_s = None
    seq_mode = SeqMode.NONE
    ping_interval_s = 20.0  # heartbeats keep the server side busy; a ping proves the client side alive

    def __init__(self) -> None:
        self._req_ids = itertools.count(1)

    # -- client side ------------------------------------------------------------------------------
    def stream_url(self, base_url: str, symbols: list[str]) -> str:
        return base_url + self.path

    def subscribe_frames(self, symbols: list[str]) -> list[str]:
        step = self.max_symbols
        return [
            _encode(
                {
                    "method": "subscribe",
                    "params": {"channel": "ticker", "symbol": symbols[k : k + step], "event_trigger": "bbo"},
                    "req_id": next(self._req_ids),
                }
            ).decode()
            for k in range(0, len(symbols), step)
        ]

    def ping_frame(self) -> str | None:
        return f'{{"method":"ping","req_id":{next(self._req_ids)}}}'

    def decode(self, frame: str | bytes) -> tuple[FrameKind, Any]:
        try:
            m = _ticker.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            return self._decode_other(frame, e)
        if m.channel != "ticker":
            return FrameKind.IGNORED, m.channel
        if not m.data:
            raise FrameError(self.name, "data", "empty")
        quotes = []
        for t in m.data:
            ts = t.timestamp
            quotes.append(
                VenueQuote(
                    t.symbol,
                    t.bid,
                    t.bid_qty,
                    t.ask,
                    t.ask_qty,
                    rfc3339_ns(ts, self.name, "data.timestamp") if ts else 0,
                )
            )
        return FrameKind.QUOTES, quotes

    def _decode_other(self, frame: str | bytes, err: Exception) -> tuple[FrameKind, Any]:
        n = self.name
        msg = json_object(frame, n)
        if "channel" in msg:
            channel = msg["channel"]
            if channel == "heartbeat":
                return FrameKind.CONTROL, None
            if channel == "status":
                data = msg.get("data")
                system = data[0].get("system") if isinstance(data, list) and data and isinstance(data[0], dict) else None
                if not isinstance(system, str):
                    raise FrameError(n, "data.system", "missing or not a string")
                return (FrameKind.CONTROL, None) if system == "online" else (FrameKind.SHUTDOWN, f"system {system}")
            if channel == "ticker":
                raise FrameError(n, field_of(err), str(err))
            if not isinstance(channel, str):
                raise FrameError(n, "channel", "not a string")
            return FrameKind.IGNORED, channel
        if "method" in msg or "success" in msg:
            if msg.get("success") is False:
                return FrameKind.ERROR, str(msg.get("error") or "request rejected")
            return FrameKind.CONTROL, None  # subscribe acks, pong
        raise FrameError(n, "channel", "a frame with neither a channel nor a method")

    # -- server side ------------------------------------------------------------------------------
    def serve_frame(self, frame: str) -> tuple[list[str], list[str]]:
        time_in = _now()
        try:
            req = _any.decode(frame)
        except msgspec.DecodeError:
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return [_reply({"error": "Malformed request", "success": False}, time_in)], []
        method = req["method"]
        rid = req.get("req_id")
        head = {"method": method}
        tail = {"req_id": rid} if isinstance(rid, int) and not isinstance(rid, bool) else {}
        if method == "ping":
            return [_reply({"method": "pong", **tail}, time_in)], []
        if method not in ("subscribe", "unsubscribe"):
            return [_reply({"error": f"Method not found: {method[:40]}", **head, "success": False, **tail}, time_in)], []
        params = req.get("params")
        channel = params.get("channel") if isinstance(params, dict) else None
        symbols = params.get("symbol") if isinstance(params, dict) else None
        if channel != "ticker":
            return [_reply({"error": "Channel not supported", **head, "success": False, **tail}, time_in)], []
        if not isinstance(symbols, list) or not symbols:
            return [_reply({"error": "Missing symbol", **head, "success": False, **tail}, time_in)], []
        trigger = params.get("event_trigger", "trades")
        replies, ok = [], []
        for s in symbols:
            if not isinstance(s, str) or s.count("/") != 1 or not all(s.split("/")):
                text = s if isinstance(s, str) else msgspec.json.encode(s).decode()
                replies.append(
                    _reply(
                        {"error": f"Currency pair not supported {text[:40]}", **head, "success": False, "symbol": text, **tail},
                        time_in,
                    )
                )
                continue
            result = {"channel": "ticker", "event_trigger": trigger, "symbol": s}
            if method == "subscribe":
                result["snapshot"] = bool(params.get("snapshot", True))
            replies.append(_reply({**head, "result": result, "success": True, **tail}, time_in))
            ok.append(s)
        return replies, ok if method == "subscribe" else []

    def encode_quote(self, symbol, bid_px, bid_sz, ask_px, ask_sz, *, ts_event_ns, seq, px_decimals, sz_decimals):
        b, a = fmt_decimal(bid_px, px_decimals), fmt_decimal(ask_px, px_decimals)
        bs, as_ = fmt_decimal(bid_sz, sz_decimals), fmt_decimal(ask_sz, sz_decimals)
        ts = f',"timestamp":"{format_rfc3339(ts_event_ns)}"' if ts_event_ns else ""
        # The 24 h statistics Kraken also sends; the simulator has none, so they repeat the book.
        return (
            f'{{"channel":"ticker","type":"update","data":[{{"symbol":"{symbol}","bid":{b},"bid_qty":{bs},'
            f'"ask":{a},"ask_qty":{as_},"last":{b},"volume":0.0,"vwap":{b},"low":{b},"high":{a},'
            f'"change":0.0,"change_pct":0.0{ts}}}]}}'
        )

    def shutdown_frame(self) -> str | None:
        return (
            '{"channel":"status","data":[{"api_version":"v2","connection_id":1,"system":"maintenance",'
            '"version":"2.0.0"}],"type":"update"}'
        )

    def heartbeat_frame(self) -> str | None:
        return '{"channel":"heartbeat"}'


# -- RFC 3339 timestamps ----------------------------------------------------------------------------
_MINUTES: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM" -> ns since the epoch, for the fast path
_MINUTE_MAX = (1 << 63) - 120 * _NS  # a minute start whose seconds and fraction still fit int64 ns


def rfc3339_ns(text: Any, venue: str = "kraken", field: str = "timestamp") -> int:
    """``2022-12-25T09:30:59.123456Z`` as integer ns since the epoch, exactly (up to 9 fractional digits,
    ``Z`` or a ``+HH:MM``/``-HH:MM`` offset). ``FrameError`` naming ``field`` when it is not one."""
    if not isinstance(text, str):
        raise FrameError(venue, field, f"expected an RFC 3339 string, got {type(text).__name__}")
    n = len(text)
    if n >= 20 and text[-1] in "Zz" and text[16] == ":":
        base = _MINUTES.get(text[:16])
        if base is not None:
            sec = text[17:19]
            frac = text[20:-1]
            if (
                sec.isdigit()
                and sec.isascii()
                and (n == 20 or (text[19] == "." and 0 < len(frac) <= 9 and frac.isdigit() and frac.isascii()))
            ):
                s = int(sec)
                if s <= 60:
                    return base + s * _NS + (int(frac) * 10 ** (9 - len(frac)) if frac else 0)
    return _parse_slow(text, venue, field)


def _parse_slow(text: str, venue: str, field: str) -> int:
    def bad() -> FrameError:
        return FrameError(venue, field, f"not an RFC 3339 timestamp: {text[:40]!r}")

    if not text.isascii() or len(text) < 20 or text[10] not in "Tt ":
        raise bad()
    head = text[:16]  # YYYY-MM-DDTHH:MM
    if head[4] != "-" or head[7] != "-" or head[13] != ":" or text[16] != ":":
        raise bad()
    digits = head[0:4] + head[5:7] + head[8:10] + head[11:13] + head[14:16] + text[17:19]
    if not digits.isdigit():
        raise bad()
    try:
        day = _dt.date(int(head[0:4]), int(head[5:7]), int(head[8:10])).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise bad() from None
    hh, mm, ss = int(head[11:13]), int(head[14:16]), int(text[17:19])
    if hh > 23 or mm > 59 or ss > 60:
        raise bad()
    rest = text[19:]
    frac_ns = 0
    if rest[:1] == ".":
        k = 1
        while k < len(rest) and rest[k].isdigit():
            k += 1
        frac = rest[1:k]
        if not 0 < len(frac) <= 9:
            raise bad()
        frac_ns = int(frac) * 10 ** (9 - len(frac))
        rest = rest[k:]
    if rest in ("Z", "z"):
        offset = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":" and (rest[1:3] + rest[4:6]).isdigit():
        offset = (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60) * (1 if rest[0] == "+" else -1)
        if int(rest[1:3]) > 23 or int(rest[4:6]) > 59:
            raise bad()
    else:
        raise bad()
    minute = (day * 86400 + hh * 3600 + mm * 60) * _NS
    if not 0 <= minute - offset * _NS < _MINUTE_MAX:  # before 1970, or past what int64 ns holds
        raise bad()
    if offset == 0 and head[10] == "T":
        if len(_MINUTES) >= 4096:
            _MINUTES.clear()
        _MINUTES[head] = minute
    return minute + (ss - offset) * _NS + frac_ns


def format_rfc3339(ts_ns: int) -> str:
    """ns since the epoch as Kraken writes it: ``2022-12-25T09:30:59.123456Z`` (microseconds, truncated)."""
    sec, ns = divmod(ts_ns, _NS)
    return _dt.datetime.fromtimestamp(sec, _UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"


def _now() -> str:
    return format_rfc3339(time.time_ns())


def _reply(body: dict, time_in: str) -> str:
    return _encode({**body, "time_in": time_in, "time_out": _now()}).decode()

