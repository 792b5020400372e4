"""Bybit v5 public ``orderbook.1.<symbol>`` (the level-1 book) for USDT/USDC perpetuals and spot.

    linear  wss://stream.bybit.com/v5/public/linear
    spot    wss://stream.bybit.com/v5/public/spot

Subscribe with ``{"op": "subscribe", "args": ["orderbook.1.BTCUSDT", ...], "req_id": "..."}``; spot takes
at most 10 args a request, and a public connection's args may total at most 21,000 characters. Pushes are
``{"topic": "orderbook.1.BTCUSDT", "type": "snapshot", "ts": ms, "data": {"s", "b": [[px, sz]],
"a": [[px, sz]], "u", "seq"}, "cts": ms}``: level 1 sends snapshots only, an empty ``b`` or ``a`` is a
missing side, and an unchanged book is re-sent after 3 s with the same ``u``. ``u`` steps by one, so a gap
is detectable; ``u == 1`` is a snapshot after a Bybit service restart. ``cts`` is the matching-engine time,
``ts`` when the stream service produced the message. The client pings with ``{"op": "ping"}`` every 20 s;
spot and linear answer with differently shaped pongs (both ``"ret_msg": "pong"``).
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

_PREFIX = "orderbook.1."
_U63 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]  # msgspec bounds stop at int64
_MS = Annotated[int, msgspec.Meta(ge=0, lt=(1 << 63) // MS_NS)]  # ms that still fit int64 ns


class _Book(msgspec.Struct):
    s: str
    b: list[list[str]]
    a: list[list[str]]
    u: _U63
    seq: int = 0  # cross sequence (internal); not used


class _Push(msgspec.Struct):
    topic: str
    data: _Book
    ts: _MS = 0  # ms, stream service time
    cts: _MS = 0  # ms, matching engine time
    type: str = ""


_push = msgspec.json.Decoder(_Push)
_any = msgspec.json.Decoder()
_encode = msgspec.json.encode


class BybitLinear(Venue):
    name = "bybit-linear"
    default_url = "wss://stream.bybit.com"
    path = "/v5/public/linear"
    max_symbols = 200  # no topic-count limit for linear; 200 topics stay far below 21,000 args characters
    args_per_request = 200  # topics per subscribe frame this client sends
    args_limit: int | None = None  # topics per request the venue accepts (None: no documented limit)
    lifetime_s = None  # public connections have no documented maximum age
    seq_mode = SeqMode.CONSECUTIVE
    ping_interval_s = 20.0
    ack_ret_msg = ""  # spot acknowledges with "subscribe"
    pong_req_id = True  # linear pongs carry "req_id"; spot pongs do not

    # -- client side ------------------------------------------------------------------------------
    def stream_url(self, base_url: str, symbols: list[str]) -> str:
        return base_url + self.path

    def subscribe_frames(self, symbols: list[str]) -> list[str]:
        step = self.args_per_request
        return [
            _encode(
                {"op": "subscribe", "args": [_PREFIX + s for s in symbols[k : k + step]], "req_id": f"ob1-{k // step}"}
            ).decode()
            for k in range(0, len(symbols), step)
        ]

    def ping_frame(self) -> str | None:
        return '{"op":"ping"}'

    def decode(self, frame: str | bytes) -> tuple[FrameKind, Any]:
        try:
            m = _push.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            return self._decode_other(frame, e)
        topic = m.topic
        if not topic.startswith(_PREFIX):
            return FrameKind.IGNORED, topic.rpartition(".")[0] or topic
        d = m.data
        n = self.name
        bid_px, bid_sz = top_level(d.b, n, "data.b")
        ask_px, ask_sz = top_level(d.a, n, "data.a")
        u = d.u
        return FrameKind.QUOTES, [VenueQuote(d.s, bid_px, bid_sz, ask_px, ask_sz, (m.cts or m.ts) * MS_NS, u, u == 1)]

    def _decode_other(self, frame: str | bytes, err: Exception) -> tuple[FrameKind, Any]:
        n = self.name
        msg = json_object(frame, n)
        if "topic" in msg:
            topic = msg["topic"]
            if not isinstance(topic, str):
                raise FrameError(n, "topic", "not a string")
            if topic.startswith(_PREFIX):
                raise FrameError(n, field_of(err), str(err))
            return FrameKind.IGNORED, topic.rpartition(".")[0] or topic
        if "op" in msg or "success" in msg:
            if msg.get("success") is False:
                return FrameKind.ERROR, str(msg.get("ret_msg") or "request rejected")
            return FrameKind.CONTROL, None  # subscribe ack, pong (either shape)
        raise FrameError(n, "topic", "a frame with neither a topic nor an op")

    # -- server side ------------------------------------------------------------------------------
    def serve_frame(self, frame: str) -> tuple[list[str], list[str]]:
        try:
            req = _any.decode(frame)
        except msgspec.DecodeError:
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return [self._reply(False, "Invalid request: expected a JSON object with an op", "", "")], []
        op = req["op"]
        rid = req.get("req_id", "")
        rid = rid if isinstance(rid, str) else str(rid)
        if op == "ping":
            return [self._pong(rid)], []
        if op not in ("subscribe", "unsubscribe"):
            return [self._reply(False, f"Invalid op: {op[:40]}", rid, op)], []
        args = req.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            return [self._reply(False, "Invalid args: expected a list of topics", rid, op)], []
        if self.args_limit is not None and len(args) > self.args_limit:
            return [self._reply(False, f"args size >{self.args_limit}", rid, op)], []
        bad = [a for a in args if not a.startswith(_PREFIX) or len(a) == len(_PREFIX)]
        if bad:
            return [self._reply(False, f"Invalid topic :{bad[0][:60]}", rid, op)], []
        symbols = [a[len(_PREFIX) :] for a in args] if op == "subscribe" else []
        return [self._reply(True, self.ack_ret_msg if op == "subscribe" else "", rid, op)], symbols

    def _reply(self, success: bool, ret_msg: str, req_id: str, op: str) -> str:
        return _encode(
            {"success": success, "ret_msg": ret_msg, "conn_id": "sim-conn", "req_id": req_id, "op": op}
        ).decode()

    def _pong(self, req_id: str) -> str:
        if self.pong_req_id:
            return _encode(
                {"success": True, "ret_msg": "pong", "conn_id": "sim-conn", "req_id": req_id, "op": "ping"}
            ).decode()
        return '{"success":true,"ret_msg":"pong","conn_id":"sim-conn","op":"ping"}'

    def encode_quote(self, symbol, bid_px, bid_sz, ask_px, ask_sz, *, ts_event_ns, seq, px_decimals, sz_decimals):
        # A side with no size is an empty level list, as Bybit sends a missing side.
        b = f'[["{fmt_decimal(bid_px, px_decimals)}","{fmt_decimal(bid_sz, sz_decimals)}"]]' if bid_sz > 0 else "[]"
        a = f'[["{fmt_decimal(ask_px, px_decimals)}","{fmt_decimal(ask_sz, sz_decimals)}"]]' if ask_sz > 0 else "[]"
        ms = ts_event_ns // MS_NS
        return (
            f'{{"topic":"{_PREFIX}{symbol}","type":"snapshot","ts":{ms},'
            f'"data":{{"s":"{symbol}","b":{b},"a":{a},"u":{seq},"seq":{seq}}},"cts":{ms}}}'
        )


class BybitSpot(BybitLinear):
    name = "bybit-spot"
    path = "/v5/public/spot"
    max_symbols = 100  # ten subscribe requests of 10 args
    args_per_request = 10
    args_limit = 10  # "Spot can input up to 10 args for each subscription request"
    ack_ret_msg = "subscribe"
    pong_req_id = False

