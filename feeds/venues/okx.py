"""OKX v5 public ``bbo-tbt`` (tick-by-tick best bid and offer, pushed on change at most every 10 ms).

    wss://ws.okx.com:8443/ws/v5/public

Subscribe with ``{"op": "subscribe", "args": [{"channel": "bbo-tbt", "instId": "BTC-USDT"}, ...]}``; a
request may be at most 64 KB, and a connection may send 480 subscribe/unsubscribe/login requests an hour.
Each channel is acknowledged with ``{"event": "subscribe", "arg": {...}, "connId": "..."}``; a rejected
request gets ``{"event": "error", "code": "...", "msg": "..."}``. Pushes are ``{"arg": {"channel":
"bbo-tbt", "instId": ...}, "data": [{"asks": [[px, sz, "0", orders]], "bids": [...], "ts": "ms",
"seqId": n}]}``. ``seqId`` is shared by every connection for the instrument and increases with gaps (it
may restart lower after maintenance), so repeats and regressions are detectable, gaps are not.

OKX closes a connection that has not seen data for 30 s: the client sends the text ``ping`` when idle and
gets the text ``pong``. Sixty seconds before a service upgrade it sends ``{"event": "notice", "code":
"64008", ...}``, the cue to reconnect.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from engine.domain.timestamps import MS_NS
from feeds.venues.base import (
    FrameError,
    FrameKind,
    SeqMode,
    Venue,
    VenueQuote,
    field_of,
    fmt_decimal,
    json_object,
    top_level,
)

_CHANNEL = "bbo-tbt"
_U63 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]  # msgspec bounds stop at int64
_MS_MAX = (1 << 63) // MS_NS
_MAX_REQUEST = 64 * 1024  # bytes in one subscribe request
_CONN = "sim0conn"


class _Arg(msgspec.Struct):
    channel: str
    instId: str


class _Bbo(msgspec.Struct):
    asks: list[list[str]]
    bids: list[list[str]]
    ts: str  # ms, as a string
    seqId: _U63 = 0


class _Push(msgspec.Struct):
    arg: _Arg
    data: list[_Bbo]


_push = msgspec.json.Decoder(_Push)
_any = msgspec.json.Decoder()
_encode = msgspec.json.encode


class Okx(Venue):
    name = "okx"
    default_url = "wss://ws.okx.com:8443"
    path = "/ws/v5/public"
    max_symbols = 100  # no documented channel limit for bbo-tbt; one 100-arg request is ~5 KB
    args_per_request = 100
    lifetime_s = None  # no documented maximum age
    seq_mode = SeqMode.INCREASING
    ping_interval_s = 20.0  # OKX closes after 30 s without traffic

    # -- client side ------------------------------------------------------------------------------
    def stream_url(self, base_url: str, symbols: list[str]) -> str:
        return base_url + self.path

    def subscribe_frames(self, symbols: list[str]) -> list[str]:
        step = self.args_per_request
        return [
            _encode(
                {"op": "subscribe", "args": [{"channel": _CHANNEL, "instId": s} for s in symbols[k : k + step]]}
            ).decode()
            for k in range(0, len(symbols), step)
        ]

    def ping_frame(self) -> str | None:
        return "ping"

    def decode(self, frame: str | bytes) -> tuple[FrameKind, Any]:
        try:
            m = _push.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            return self._decode_other(frame, e)
        channel = m.arg.channel
        if channel != _CHANNEL:
            return FrameKind.IGNORED, channel
        n = self.name
        symbol = m.arg.instId
        if not m.data:
            raise FrameError(n, "data", "empty")
        quotes = []
        for d in m.data:
            bid_px, bid_sz = top_level(d.bids, n, "data.bids")
            ask_px, ask_sz = top_level(d.asks, n, "data.asks")
            try:
                ms = int(d.ts)
            except ValueError:
                raise FrameError(n, "data.ts", f"not an integer: {d.ts[:40]!r}") from None
            if not 0 <= ms < _MS_MAX:
                raise FrameError(n, "data.ts", f"out of range: {ms}")
            quotes.append(VenueQuote(symbol, bid_px, bid_sz, ask_px, ask_sz, ms * MS_NS, d.seqId))
        return FrameKind.QUOTES, quotes

    def _decode_other(self, frame: str | bytes, err: Exception) -> tuple[FrameKind, Any]:
        if frame == "pong" or frame == b"pong":
            return FrameKind.CONTROL, None
        n = self.name
        msg = json_object(frame, n)
        event = msg.get("event")
        if event is not None:
            if event == "error" or event == "channel-conn-count-error":
                return FrameKind.ERROR, f"{msg.get('code', '')}: {msg.get('msg', event)}"
            if event == "notice":  # 64008: the connection closes for a service upgrade in 60 s
                return FrameKind.SHUTDOWN, f"{msg.get('code', '')}: {msg.get('msg', '')}"
            return FrameKind.CONTROL, None  # subscribe/unsubscribe acks, channel-conn-count
        if "arg" in msg:
            arg = msg["arg"]
            channel = arg.get("channel") if isinstance(arg, dict) else None
            if not isinstance(channel, str):
                raise FrameError(n, "arg.channel", "missing or not a string")
            if channel == _CHANNEL:
                raise FrameError(n, field_of(err), str(err))
            return FrameKind.IGNORED, channel
        raise FrameError(n, "arg", "a frame with neither an arg nor an event")

    # -- server side ------------------------------------------------------------------------------
    def serve_frame(self, frame: str) -> tuple[list[str], list[str]]:
        if frame == "ping":
            return ["pong"], []
        if len(frame) > _MAX_REQUEST:
            return [_error("60012", "Invalid request: the request exceeds 64 KB")], []
        try:
            req = _any.decode(frame)
        except msgspec.DecodeError:
            req = None
        if not isinstance(req, dict) or req.get("op") not in ("subscribe", "unsubscribe"):
            return [_error("60012", f"Invalid request: {frame[:200]}", _id(req))], []
        op, args, rid = req["op"], req.get("args"), _id(req)
        if not isinstance(args, list) or not args:
            return [_error("60012", f"Invalid request: {frame[:200]}", rid)], []
        symbols = []
        for a in args:
            channel = a.get("channel") if isinstance(a, dict) else None
            inst = a.get("instId") if isinstance(a, dict) else None
            if channel != _CHANNEL or not isinstance(inst, str) or not inst:
                return [
                    _error(
                        "60018",
                        f"Wrong URL or channel:{channel},instId:{inst} doesn't exist. Please use the correct URL, "
                        "channel and parameters referring to API document.",
                        rid,
                    )
                ], []
            symbols.append(inst)
        head = {"id": rid} if rid is not None else {}
        replies = [
            _encode({**head, "event": op, "arg": {"channel": _CHANNEL, "instId": s}, "connId": _CONN}).decode()
            for s in symbols
        ]
        return replies, symbols if op == "subscribe" else []

    def encode_quote(self, symbol, bid_px, bid_sz, ask_px, ask_sz, *, ts_event_ns, seq, px_decimals, sz_decimals):
        # A side with no size is an empty level list.
        b = f'[["{fmt_decimal(bid_px, px_decimals)}","{fmt_decimal(bid_sz, sz_decimals)}","0","1"]]' if bid_sz > 0 else "[]"
        a = f'[["{fmt_decimal(ask_px, px_decimals)}","{fmt_decimal(ask_sz, sz_decimals)}","0","1"]]' if ask_sz > 0 else "[]"
        return (
            f'{{"arg":{{"channel":"{_CHANNEL}","instId":"{symbol}"}},'
            f'"data":[{{"asks":{a},"bids":{b},"ts":"{ts_event_ns // MS_NS}","seqId":{seq}}}]}}'
        )

    def shutdown_frame(self) -> str | None:
        return (
            '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade. '
            f'Please reconnect.","connId":"{_CONN}"}}'
        )


def _id(req: Any) -> Any:
    """The client's request ``id``, echoed in the reply (None when absent)."""
    return req.get("id") if isinstance(req, dict) and isinstance(req.get("id"), str) else None


def _error(code: str, msg: str, rid: Any = None) -> str:
    head = {"id": rid} if rid is not None else {}
    return _encode({**head, "event": "error", "code": code, "msg": msg, "connId": _CONN}).decode()

