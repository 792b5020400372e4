"""Venue protocols (``feeds.venues``), both ends, for every registered venue: frames written by hand in each
venue's documented shape decode to the right quotes and kinds; malformed frames raise ``FrameError`` naming
the field and nothing else; ``encode_quote`` -> ``decode`` round-trips; the simulator side answers the client
side's own subscribe and ping frames; and, when ``../shared/data`` is there, real captures and fixtures
decode to their values."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.domain.quote import QuoteFlag
from engine.domain.timestamps import MS_NS
from feeds.normalize import FrameNormalizer
from feeds.venues import (
    VENUE_NAMES,
    FrameError,
    FrameKind,
    SeqMode,
    VenueQuote,
    get_venue,
)
from feeds.venues.base import fmt_decimal

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
S = 1_000_000_000
UTC = dt.timezone.utc


def utc_ns(y, mo, d, h=0, mi=0, s=0, frac_ns=0) -> int:
    return int(dt.datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()) * S + frac_ns


def shared(*parts: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (only on the developers' machines)")
    return SHARED.joinpath(*parts)


def q(symbol, bid_px, bid_sz, ask_px, ask_sz, ts=0, seq=0, snapshot=False) -> VenueQuote:
    return VenueQuote(symbol, bid_px, bid_sz, ask_px, ask_sz, ts, seq, snapshot)


def symbols_for(name: str, n: int) -> list[str]:
    if name == "kraken":
        return [f"C{k}/USD" for k in range(n)]
    if name == "okx":
        return [f"C{k}-USDT" for k in range(n)]
    return [f"C{k}USDT" for k in range(n)]


def test_registry_covers_every_venue_module():
    assert set(VENUE_NAMES) == {"binance-spot", "binance-usdm", "bybit-linear", "bybit-spot", "okx", "kraken"}
    for name in VENUE_NAMES:
        v = get_venue(name)
        assert v.name == name
        assert v.default_url.startswith("wss://")


# -- hand-written frames in each venue's documented format ---------------------------------------------

QUOTE_FRAMES: dict[str, list[tuple[str, list[VenueQuote]]]] = {
    "binance-spot": [
        (
            '{"stream":"bnbusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT","b":"25.35190000",'
            '"B":"31.21000000","a":"25.36520000","A":"40.66000000"}}',
            [q("BNBUSDT", 25.3519, 31.21, 25.3652, 40.66, 0, 400900217)],
        ),
    ],
    "binance-usdm": [
        (
            '{"stream":"bnbusdt@bookTicker","data":{"e":"bookTicker","u":400900217,"E":1568014460893,'
            '"T":1568014460891,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000",'
            '"A":"40.66000000"}}',
            [q("BNBUSDT", 25.3519, 31.21, 25.3652, 40.66, 1568014460891 * MS_NS, 400900217)],
        ),
    ],
    "bybit-linear": [
        (  # the matching-engine time cts wins over the service time ts
            '{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1672304484978,"data":{"s":"BTCUSDT",'
            '"b":[["16493.50","0.006"]],"a":[["16611.00","0.029"]],"u":18521288,"seq":7961638724},'
            '"cts":1672304484976}',
            [q("BTCUSDT", 16493.5, 0.006, 16611.0, 0.029, 1672304484976 * MS_NS, 18521288)],
        ),
        (  # no cts: ts
            '{"topic":"orderbook.1.ETHUSDT","type":"snapshot","ts":1687940967466,"data":{"s":"ETHUSDT",'
            '"b":[["1850.10","12.5"]],"a":[["1850.11","3"]],"u":177400507,"seq":66544703342}}',
            [q("ETHUSDT", 1850.1, 12.5, 1850.11, 3.0, 1687940967466 * MS_NS, 177400507)],
        ),
        (  # u == 1: Bybit restarted its service and re-sent the book
            '{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1700000000001,"data":{"s":"BTCUSDT",'
            '"b":[["37000.00","1.000"]],"a":[["37000.10","2.000"]],"u":1,"seq":1},"cts":1700000000000}',
            [q("BTCUSDT", 37000.0, 1.0, 37000.1, 2.0, 1700000000000 * MS_NS, 1, True)],
        ),
        (  # an empty side is a missing side
            '{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1700000000001,"data":{"s":"BTCUSDT",'
            '"b":[],"a":[["37000.10","2.000"]],"u":7,"seq":9},"cts":1700000000000}',
            [q("BTCUSDT", 0.0, 0.0, 37000.1, 2.0, 1700000000000 * MS_NS, 7)],
        ),
    ],
    "bybit-spot": [
        (
            '{"topic":"orderbook.1.BTCUSDT","ts":1700000000123,"type":"snapshot","data":{"s":"BTCUSDT",'
            '"b":[["36999.99","0.512340"]],"a":[],"u":2046741,"seq":31234567890},"cts":1700000000120}',
            [q("BTCUSDT", 36999.99, 0.51234, 0.0, 0.0, 1700000000120 * MS_NS, 2046741)],
        ),
    ],
    "okx": [
        (
            '{"arg":{"channel":"bbo-tbt","instId":"BCH-USDT-SWAP"},"data":[{"asks":[["111.06","55154","0","2"]],'
            '"bids":[["111.05","57745","0","2"]],"ts":"1670324386802","seqId":363996337}]}',
            [q("BCH-USDT-SWAP", 111.05, 57745.0, 111.06, 55154.0, 1670324386802 * MS_NS, 363996337)],
        ),
        (
            '{"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{"asks":[],'
            '"bids":[["8476.97","256","0","12"]],"ts":"1597026383085","seqId":10}]}',
            [q("BTC-USDT", 8476.97, 256.0, 0.0, 0.0, 1597026383085 * MS_NS, 10)],
        ),
    ],
    "kraken": [
        (
            '{"channel":"ticker","type":"snapshot","data":[{"symbol":"ALGO/USD","bid":0.10025,"bid_qty":740.0,'
            '"ask":0.10036,"ask_qty":1361.44813783,"last":0.10035,"volume":997038.98383185,"vwap":0.10148,'
            '"low":0.09979,"high":0.10285,"change":-0.00017,"change_pct":-0.17,'
            '"timestamp":"2023-09-25T09:04:31.742648Z"}]}',
            [q("ALGO/USD", 0.10025, 740.0, 0.10036, 1361.44813783, utc_ns(2023, 9, 25, 9, 4, 31, 742648000))],
        ),
        (  # no timestamp: no exchange time
            '{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":105944,"bid_qty":2.5,'
            '"ask":105944.3,"ask_qty":3.2,"last":105899.4,"volume":163.28908096,"vwap":105904.39279,'
            '"low":104711.0,"high":106613.1,"change":250.0,"change_pct":0.24}]}',
            [q("BTC/USD", 105944.0, 2.5, 105944.3, 3.2, 0)],
        ),
    ],
}

KIND_FRAMES: dict[str, list[tuple[str, FrameKind, object]]] = {
    "binance-spot": [
        ('{"result":null,"id":1}', FrameKind.CONTROL, None),
        ('{"code":2,"msg":"Invalid request: unknown variant","id":3}', FrameKind.ERROR, "2: Invalid request: unknown variant"),
        (
            '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,'
            '"b":[["1.0","0.0"]],"a":[]}}',
            FrameKind.IGNORED,
            "depth@100ms",
        ),
        (
            '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1.0","q":"1.0",'
            '"T":1,"m":true,"M":true}}',
            FrameKind.IGNORED,
            "trade",
        ),
        ('{"e":"serverShutdown","E":1723161600000}', FrameKind.SHUTDOWN, "serverShutdown"),
    ],
    "binance-usdm": [
        ('{"result":null,"id":1}', FrameKind.CONTROL, None),
        (
            '{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1,"u":2,'
            '"pu":0,"b":[],"a":[]}}',
            FrameKind.IGNORED,
            "depth@0ms",
        ),
    ],
    "bybit-linear": [
        (
            '{"success":true,"ret_msg":"","conn_id":"cejreaspqfm9se7usbrg-2xh","req_id":"sub-1","op":"subscribe"}',
            FrameKind.CONTROL,
            None,
        ),
        (  # linear/inverse pong
            '{"success":true,"ret_msg":"pong","conn_id":"465772b1-7630-4fdc-a492-e003e6f0f260","req_id":"",'
            '"op":"ping"}',
            FrameKind.CONTROL,
            None,
        ),
        ('{"args":["1672916271846"],"op":"pong"}', FrameKind.CONTROL, None),  # option/spread-style pong
        (
            '{"success":false,"ret_msg":"Invalid topic: invalid.topic.BTCUSDT","conn_id":"x","op":"subscribe"}',
            FrameKind.ERROR,
            "Invalid topic: invalid.topic.BTCUSDT",
        ),
        (
            '{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","bid1Price":"17215.50",'
            '"bid1Size":"84.489","ask1Price":"17216.00","ask1Size":"83.020"},"cs":24987956059,"ts":1673272861686}',
            FrameKind.IGNORED,
            "tickers",
        ),
        (
            '{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{"T":1672304486865,'
            '"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick","i":"20f43950","BT":false}]}',
            FrameKind.IGNORED,
            "publicTrade",
        ),
        (  # a deeper book of the same shape is not the level-1 stream
            '{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[],"a":[],'
            '"u":5,"seq":6},"cts":1}',
            FrameKind.IGNORED,
            "orderbook.50",
        ),
    ],
    "bybit-spot": [
        (
            '{"success":true,"ret_msg":"subscribe","conn_id":"2324d924-aa4d-45b0-a858-7b8be29ab52b",'
            '"req_id":"10001","op":"subscribe"}',
            FrameKind.CONTROL,
            None,
        ),
        (  # spot pong
            '{"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-ff7f55e0b16a","op":"ping"}',
            FrameKind.CONTROL,
            None,
        ),
        ('{"req_id":"t","op":"pong","args":["1675418560633"],"conn_id":"cfcb4ocsvfriu23r3er0-1b"}', FrameKind.CONTROL, None),
        ('{"success":false,"ret_msg":"args size >10","conn_id":"x","req_id":"1","op":"subscribe"}', FrameKind.ERROR, "args size >10"),
    ],
    "okx": [
        ('{"id":"1512","event":"subscribe","arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"connId":"a4d3ae55"}', FrameKind.CONTROL, None),
        ('{"event":"unsubscribe","arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"connId":"a4d3ae55"}', FrameKind.CONTROL, None),
        ('{"event":"channel-conn-count","channel":"orders","connCount":"2","connId":"abcd1234"}', FrameKind.CONTROL, None),
        ("pong", FrameKind.CONTROL, None),
        (
            '{"id":"1512","event":"error","code":"60012","msg":"Invalid request: {\\"op\\": \\"subscribe\\"}",'
            '"connId":"a4d3ae55"}',
            FrameKind.ERROR,
            '60012: Invalid request: {"op": "subscribe"}',
        ),
        (
            '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade. '
            'Please reconnect.","connId":"a4d3ae55"}',
            FrameKind.SHUTDOWN,
            "64008: The connection will soon be closed for a service upgrade. Please reconnect.",
        ),
        (
            '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT","instId":"BTC-USDT",'
            '"last":"9999.99","askPx":"9999.99","askSz":"11","bidPx":"8888.88","bidSz":"5","ts":"1597026383085"}]}',
            FrameKind.IGNORED,
            "tickers",
        ),
        (  # same shape as bbo-tbt, another channel
            '{"arg":{"channel":"books5","instId":"BCH-USDT-SWAP"},"data":[{"asks":[["111.06","55154","0","2"]],'
            '"bids":[["111.05","57745","0","2"]],"instId":"BCH-USDT-SWAP","ts":"1670324386802","seqId":1}]}',
            FrameKind.IGNORED,
            "books5",
        ),
    ],
    "kraken": [
        ('{"channel":"heartbeat"}', FrameKind.CONTROL, None),
        (
            '{"channel":"status","data":[{"api_version":"v2","connection_id":13834774380200032777,'
            '"system":"online","version":"2.0.0"}],"type":"update"}',
            FrameKind.CONTROL,
            None,
        ),
        (
            '{"channel":"status","data":[{"api_version":"v2","connection_id":1,"system":"maintenance",'
            '"version":"2.0.0"}],"type":"update"}',
            FrameKind.SHUTDOWN,
            "system maintenance",
        ),
        ('{"channel":"status","data":[{"system":"cancel_only"}],"type":"update"}', FrameKind.SHUTDOWN, "system cancel_only"),
        ('{"channel":"status","data":[{"system":"post_only"}],"type":"update"}', FrameKind.SHUTDOWN, "system post_only"),
        (
            '{"method":"subscribe","result":{"channel":"ticker","snapshot":true,"symbol":"ALGO/USD"},'
            '"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z",'
            '"req_id":1}',
            FrameKind.CONTROL,
            None,
        ),
        (
            '{"error":"Currency pair not supported FAKECOIN/USD","method":"subscribe","success":false,'
            '"symbol":"FAKECOIN/USD","req_id":3}',
            FrameKind.ERROR,
            "Currency pair not supported FAKECOIN/USD",
        ),
        (
            '{"method":"pong","req_id":42,"time_in":"2023-09-25T09:05:00.123456Z",'
            '"time_out":"2023-09-25T09:05:00.123500Z"}',
            FrameKind.CONTROL,
            None,
        ),
        (
            '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[{"price":1.0,'
            '"qty":1.0}],"checksum":1,"timestamp":"2023-10-06T17:35:55.440295Z"}]}',
            FrameKind.IGNORED,
            "book",
        ),
        (
            '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":1.0,"qty":1.0,'
            '"ord_type":"market","trade_id":1,"timestamp":"2023-09-25T07:49:37.708706Z"}]}',
            FrameKind.IGNORED,
            "trade",
        ),
    ],
}


def _cases(table):
    return [pytest.param(name, *case, id=f"{name}-{k}") for name in VENUE_NAMES for k, case in enumerate(table[name])]


@pytest.mark.parametrize(("name", "frame", "expected"), _cases(QUOTE_FRAMES))
def test_documented_data_frames_decode_to_quotes(name, frame, expected):
    v = get_venue(name)
    for f in (frame, frame.encode()):  # live frames are str, recorded ones bytes
        kind, quotes = v.decode(f)
        assert kind is FrameKind.QUOTES
        assert quotes == expected


@pytest.mark.parametrize(("name", "frame", "kind", "payload"), _cases(KIND_FRAMES))
def test_documented_other_frames_are_classified(name, frame, kind, payload):
    v = get_venue(name)
    for f in (frame, frame.encode()):
        assert v.decode(f) == (kind, payload)


def test_every_venue_has_hand_written_frames():
    for name in VENUE_NAMES:
        assert QUOTE_FRAMES[name] and KIND_FRAMES[name], name
        kinds = {k for _, k, _ in KIND_FRAMES[name]}
        assert FrameKind.CONTROL in kinds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2022-12-25T09:30:59.123456Z", utc_ns(2022, 12, 25, 9, 30, 59, 123456000)),
        ("2022-12-25T09:30:59.123456789Z", utc_ns(2022, 12, 25, 9, 30, 59, 123456789)),
        ("2022-12-25T09:30:59.1Z", utc_ns(2022, 12, 25, 9, 30, 59, 100000000)),
        ("2022-12-25T09:30:59Z", utc_ns(2022, 12, 25, 9, 30, 59)),
        ("2022-12-25t09:30:59.5z", utc_ns(2022, 12, 25, 9, 30, 59, 500000000)),
        ("2022-12-25T09:30:59.000000001+01:30", utc_ns(2022, 12, 25, 8, 0, 59, 1)),
        ("2022-12-25T00:10:00-00:30", utc_ns(2022, 12, 25, 0, 40, 0)),
        ("2024-02-29T23:59:59.999999999Z", utc_ns(2024, 2, 29, 23, 59, 59, 999999999)),
    ],
)
def test_kraken_timestamps_are_exact_ns(text, expected):
    frame = (
        '{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":1.0,"bid_qty":1.0,"ask":2.0,'
        f'"ask_qty":1.0,"timestamp":"{text}"}}]}}'
    )
    v = get_venue("kraken")
    for _ in range(2):  # the second parse of a minute takes the cached path
        _, quotes = v.decode(frame)
        assert quotes[0].ts_event_ns == expected


@given(ts=st.integers(0, 4_000_000_000 * S), digits=st.integers(0, 9))
@settings(max_examples=300, deadline=None)
def test_kraken_timestamps_with_any_number_of_fraction_digits(ts, digits):
    sec, ns = divmod(ts, S)
    text = dt.datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{ns:09d}"[:digits]
    frame = (
        '{"channel":"ticker","type":"update","data":[{"symbol":"A/B","bid":1.0,"bid_qty":1.0,"ask":2.0,'
        f'"ask_qty":1.0,"timestamp":"{text}Z"}}]}}'
    )
    unit = 10 ** (9 - digits)
    assert get_venue("kraken").decode(frame)[1][0].ts_event_ns == ts // unit * unit


# -- encode_quote -> decode --------------------------------------------------------------------------

# Exchange-time resolution each venue writes: ms, Kraken's microseconds, Binance spot none.
TS_UNIT = {
    "binance-spot": None,
    "binance-usdm": MS_NS,
    "bybit-linear": MS_NS,
    "bybit-spot": MS_NS,
    "okx": MS_NS,
    "kraken": 1_000,
}


def _round_trip_args():
    return st.fixed_dictionaries(
        {
            "sym": st.integers(0, 999),
            "px_decimals": st.integers(0, 8),
            "sz_decimals": st.integers(0, 8),
            "bid": st.integers(1, 10**12),
            "spread": st.integers(0, 10**6),
            "bid_sz": st.integers(1, 10**12),
            "ask_sz": st.integers(1, 10**12),
            "ts": st.one_of(st.just(0), st.integers(1, 4_000_000_000 * S)),
            "seq": st.integers(1, 2**62),
        }
    )


@pytest.mark.parametrize("name", VENUE_NAMES)
@given(a=_round_trip_args())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_encode_quote_round_trips(name, a):
    v = get_venue(name)
    symbol = symbols_for(name, 1000)[a["sym"]]
    pd, sd = a["px_decimals"], a["sz_decimals"]
    bid_px, ask_px = a["bid"] / 10**pd, (a["bid"] + a["spread"]) / 10**pd
    bid_sz, ask_sz = a["bid_sz"] / 10**sd, a["ask_sz"] / 10**sd
    frame = v.encode_quote(
        symbol, bid_px, bid_sz, ask_px, ask_sz, ts_event_ns=a["ts"], seq=a["seq"], px_decimals=pd, sz_decimals=sd
    )
    json.loads(frame)  # valid JSON
    kind, quotes = v.decode(frame)
    assert kind is FrameKind.QUOTES and len(quotes) == 1
    got = quotes[0]
    assert got.symbol == symbol
    assert got.bid_px == float(fmt_decimal(bid_px, pd))
    assert got.ask_px == float(fmt_decimal(ask_px, pd))
    assert got.bid_sz == float(fmt_decimal(bid_sz, sd))
    assert got.ask_sz == float(fmt_decimal(ask_sz, sd))
    unit = TS_UNIT[name]
    assert got.ts_event_ns == (a["ts"] // unit * unit if unit else 0)
    assert got.seq == (a["seq"] if v.seq_mode is not SeqMode.NONE else 0)


@pytest.mark.parametrize("name", ["bybit-linear", "bybit-spot", "okx"])
def test_encoded_missing_side_decodes_one_sided(name):
    v = get_venue(name)
    frame = v.encode_quote("X", 10.0, 0.0, 11.0, 2.0, ts_event_ns=5 * S, seq=3, px_decimals=1, sz_decimals=1)
    (got,) = v.decode(frame)[1]
    assert (got.bid_px, got.bid_sz, got.ask_px, got.ask_sz) == (0.0, 0.0, 11.0, 2.0)


# -- malformed frames ---------------------------------------------------------------------------------

COMMON_BAD = [("not json", "json"), ("", "json"), ("[1, 2]", "json"), ("null", "json"), ("42", "json"), ('{"a":', "json")]

BAD_FRAMES: dict[str, list[tuple[str, str]]] = {
    "binance-spot": [
        ('{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"X","b":"abc","B":"1","a":"2","A":"1"}}', "data.b"),
        ('{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"X","b":"1","B":"1","a":"2"}}', "data.A"),  # the missing field
        ('{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"X","b":1.5,"B":"1","a":"2","A":"1"}}', "data.b"),
        ('{"stream":"btcusdt@bookTicker"}', "data"),
    ],
    "binance-usdm": [
        ('{"stream":"btcusdt@bookTicker","data":{"u":"1","s":"X","b":"1","B":"1","a":"2","A":"1"}}', "data.u"),
    ],
    "bybit-linear": [
        ('{"topic":"orderbook.1.X","ts":1,"data":{"s":"X","b":[["abc","1"]],"a":[],"u":2}}', "data.b"),
        ('{"topic":"orderbook.1.X","ts":1,"data":{"s":"X","b":[["1","1"]],"a":[["2","x1"]],"u":2}}', "data.a"),
        ('{"topic":"orderbook.1.X","ts":1,"data":{"s":"X","b":[[1,"1"]],"a":[],"u":2}}', "data.b"),
        ('{"topic":"orderbook.1.X","ts":1,"data":{"s":"X","b":[["1"]],"a":[],"u":2}}', "data.b"),
        ('{"topic":"orderbook.1.X","ts":1,"data":{"s":"X","b":"1","a":[],"u":2}}', "data.b"),
        ('{"topic":"orderbook.1.X","ts":1,"data":{"s":"X","b":[],"a":[]}}', "data.u"),
        ('{"topic":"orderbook.1.X","ts":1,"data":{"s":"X","b":[],"a":[],"u":"2"}}', "data.u"),
        ('{"topic":"orderbook.1.X","ts":1,"data":{"s":"X","b":[],"a":[],"u":-2}}', "data.u"),
        ('{"topic":"orderbook.1.X","ts":1,"data":{"b":[],"a":[],"u":2}}', "data.s"),
        ('{"topic":"orderbook.1.X","ts":1}', "data"),
        ('{"topic":"orderbook.1.X","ts":"1","data":{"s":"X","b":[],"a":[],"u":2}}', "ts"),
        ('{"topic":"orderbook.1.X","cts":1e3,"data":{"s":"X","b":[],"a":[],"u":2}}', "cts"),
        ('{"topic":5,"data":{}}', "topic"),
        ('{"conn_id":"x"}', "topic"),
    ],
    "okx": [
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"asks":[["x","1","0","1"]],"bids":[],"ts":"1","seqId":1}]}', "data.asks"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"asks":[],"bids":[[1,"1","0","1"]],"ts":"1","seqId":1}]}', "data.bids"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"asks":[],"bids":[["1"]],"ts":"1","seqId":1}]}', "data.bids"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"asks":[],"bids":[],"ts":"abc","seqId":1}]}', "data.ts"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"asks":[],"bids":[],"ts":"-5","seqId":1}]}', "data.ts"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"asks":[],"bids":[],"seqId":1}]}', "data.ts"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"asks":[],"bids":[],"ts":1,"seqId":1}]}', "data.ts"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"asks":[],"bids":[],"ts":"1","seqId":"1"}]}', "data.seqId"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[{"bids":[],"ts":"1","seqId":1}]}', "data.asks"),
        ('{"arg":{"channel":"bbo-tbt"},"data":[{"asks":[],"bids":[],"ts":"1","seqId":1}]}', "arg.instId"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"}}', "data"),
        ('{"arg":{"channel":"bbo-tbt","instId":"A"},"data":[]}', "data"),
        ('{"arg":{"channel":7},"data":[]}', "arg.channel"),
        ('{"arg":"bbo-tbt","data":[]}', "arg.channel"),
        ('{"connId":"x"}', "arg"),
    ],
    "kraken": [
        ('{"channel":"ticker","type":"update","data":[{"symbol":"A/B","bid":"abc","bid_qty":1,"ask":2,"ask_qty":1}]}', "data.bid"),
        ('{"channel":"ticker","type":"update","data":[{"symbol":"A/B","bid":"1.5","bid_qty":1,"ask":2,"ask_qty":1}]}', "data.bid"),
        ('{"channel":"ticker","type":"update","data":[{"symbol":"A/B","bid":1,"ask":2,"ask_qty":1}]}', "data.bid_qty"),
        ('{"channel":"ticker","type":"update","data":[{"bid":1,"bid_qty":1,"ask":2,"ask_qty":1}]}', "data.symbol"),
        ('{"channel":"ticker","type":"update","data":[{"symbol":"A/B","bid":1,"bid_qty":1,"ask":null,"ask_qty":1}]}', "data.ask"),
        ('{"channel":"ticker","type":"update","data":{"symbol":"A/B"}}', "data"),
        ('{"channel":"ticker","type":"update","data":[]}', "data"),
        ('{"channel":"ticker","type":"update"}', "data"),
        ('{"channel":"status","data":[{"version":"2.0.0"}],"type":"update"}', "data.system"),
        ('{"channel":"status","type":"update"}', "data.system"),
        ('{"channel":5}', "channel"),
        ('{"time_in":"x"}', "channel"),
    ]
    + [
        (
            '{"channel":"ticker","type":"update","data":[{"symbol":"A/B","bid":1,"bid_qty":1,"ask":2,"ask_qty":1,'
            f'"timestamp":{ts}}}]}}',
            "data.timestamp",
        )
        for ts in [
            '"yesterday"',
            "1695632671",
            '"2023-13-01T00:00:00Z"',
            '"2023-02-30T00:00:00Z"',
            '"2023-09-25T24:00:00Z"',
            '"2023-09-25T09:04:31"',
            '"2023-09-25T09:04:31.Z"',
            '"2023-09-25T09:04:31.1234567890Z"',
            '"2023-09-25T09:04:31.12a4Z"',
            '"2023-09-25T09:04:31+0100"',
            '"2023-09-25 09:04:31.5ZZ"',
            '"2023-09-25T09:04:3\\u0661Z"',
            '"1969-12-31T23:59:59Z"',
            '"9999-12-31T23:59:59Z"',
        ]
    ],
}

BAD_FRAMES["bybit-spot"] = BAD_FRAMES["bybit-linear"]  # the same stream shape


@pytest.mark.parametrize(
    ("name", "frame", "field"),
    [pytest.param(n, f, fld, id=f"{n}-{k}") for n in VENUE_NAMES for k, (f, fld) in enumerate(COMMON_BAD + BAD_FRAMES[n])],
)
def test_malformed_frames_raise_frame_error_naming_the_field(name, frame, field):
    v = get_venue(name)
    for f in (frame, frame.encode()):
        with pytest.raises(FrameError) as e:
            v.decode(f)
        assert e.value.field == field, str(e.value)
        assert e.value.venue == name


def _mutations():
    return st.lists(
        st.tuples(st.sampled_from(["cut", "drop", "put", "insert"]), st.integers(0, 10_000), st.characters(codec="utf-8")),
        min_size=1,
        max_size=3,
    )


@pytest.mark.parametrize("name", VENUE_NAMES)
@given(edits=_mutations(), which=st.integers(0, 50))
@settings(max_examples=250, deadline=None)
def test_damaged_frames_raise_only_frame_error(name, edits, which):
    """Any damage to a valid frame decodes to something or raises FrameError, never another exception."""
    v = get_venue(name)
    pool = [f for f, _ in QUOTE_FRAMES[name]] + [f for f, _, _ in KIND_FRAMES[name]]
    frame = pool[which % len(pool)]
    for op, pos, ch in edits:
        pos %= len(frame) + 1
        if op == "cut":
            frame = frame[:pos]
        elif op == "drop":
            frame = frame[:pos] + frame[pos + 1 :]
        elif op == "put":
            frame = frame[:pos] + ch + frame[pos + 1 :]
        else:
            frame = frame[:pos] + ch + frame[pos:]
    for f in (frame, frame.encode()):
        try:
            kind, payload = v.decode(f)
        except FrameError as e:
            assert e.venue == name and e.field
        else:
            assert isinstance(kind, FrameKind)
            if kind is FrameKind.QUOTES:
                assert all(isinstance(x, VenueQuote) for x in payload)


# -- client and simulator agree -----------------------------------------------------------------------


@pytest.mark.parametrize("name", VENUE_NAMES)
@pytest.mark.parametrize("n", [1, 25])
def test_subscribe_frames_are_answered_and_acknowledged(name, n):
    v = get_venue(name)
    symbols = symbols_for(name, n)
    url = v.stream_url(v.default_url, symbols)
    assert url.startswith(v.default_url)
    subscribed = list(v.symbols_from_url(url[len(v.default_url) :]))
    for frame in v.subscribe_frames(symbols):
        replies, new = v.serve_frame(frame)
        subscribed += new
        assert replies
        for r in replies:
            assert v.decode(r) == (FrameKind.CONTROL, None), r
    assert subscribed == symbols


@pytest.mark.parametrize("name", VENUE_NAMES)
def test_ping_is_answered_with_a_control_frame(name):
    v = get_venue(name)
    ping = v.ping_frame()
    if v.ping_interval_s is None:
        assert ping is None  # the venue pings at the websocket level
        return
    assert 0 < v.ping_interval_s <= 20
    replies, new = v.serve_frame(ping)
    assert new == [] and replies
    for r in replies:
        assert v.decode(r) == (FrameKind.CONTROL, None)


@pytest.mark.parametrize("name", VENUE_NAMES)
@pytest.mark.parametrize(
    "frame", ["", "garbage", "[]", "{}", "null", '{"op":5}', '{"method":1}', '{"op":"subscribe","args":"x"}', "\x00"]
)
def test_unknown_or_malformed_requests_get_the_venue_error_reply(name, frame):
    v = get_venue(name)
    replies, new = v.serve_frame(frame)
    assert new == [] and replies
    for r in replies:
        assert v.decode(r)[0] is FrameKind.ERROR, r


@pytest.mark.parametrize("name", VENUE_NAMES)
def test_shutdown_and_heartbeat_frames_decode_as_such(name):
    v = get_venue(name)
    if (f := v.shutdown_frame()) is not None:
        assert v.decode(f)[0] is FrameKind.SHUTDOWN
    if (f := v.heartbeat_frame()) is not None:
        assert v.decode(f) == (FrameKind.CONTROL, None)


def test_connection_endpoints_and_limits():
    expect = {
        "bybit-linear": "wss://stream.bybit.com/v5/public/linear",
        "bybit-spot": "wss://stream.bybit.com/v5/public/spot",
        "okx": "wss://ws.okx.com:8443/ws/v5/public",
        "kraken": "wss://ws.kraken.com/v2",
    }
    for name, url in expect.items():
        v = get_venue(name)
        assert v.stream_url(v.default_url, ["X"]) == url
    assert get_venue("bybit-linear").seq_mode is SeqMode.CONSECUTIVE
    assert get_venue("bybit-spot").seq_mode is SeqMode.CONSECUTIVE
    assert get_venue("okx").seq_mode is SeqMode.INCREASING
    assert get_venue("kraken").seq_mode is SeqMode.NONE
    assert get_venue("okx").ping_frame() == "ping"  # plain text, not JSON
    assert json.loads(get_venue("bybit-linear").ping_frame()) == {"op": "ping"}
    assert json.loads(get_venue("kraken").ping_frame())["method"] == "ping"


def test_bybit_spot_subscribes_ten_topics_a_request():
    v = get_venue("bybit-spot")
    frames = v.subscribe_frames(symbols_for("bybit-spot", v.max_symbols))
    assert len(frames) == v.max_symbols // 10
    for f in frames:
        req = json.loads(f)
        assert req["op"] == "subscribe" and len(req["args"]) <= 10
        assert all(a.startswith("orderbook.1.") for a in req["args"])
    eleven = json.dumps({"op": "subscribe", "args": [f"orderbook.1.C{k}USDT" for k in range(11)]})
    replies, new = v.serve_frame(eleven)
    assert new == [] and v.decode(replies[0])[0] is FrameKind.ERROR
    # linear has no per-request limit: one frame for all
    lin = get_venue("bybit-linear")
    assert len(lin.subscribe_frames(symbols_for("bybit-linear", lin.max_symbols))) == 1
    assert lin.serve_frame(eleven)[1] == [f"C{k}USDT" for k in range(11)]


def test_bybit_simulator_rejects_other_topics():
    v = get_venue("bybit-linear")
    replies, new = v.serve_frame('{"op":"subscribe","args":["tickers.BTCUSDT"],"req_id":"7"}')
    assert new == []
    kind, text = v.decode(replies[0])
    assert kind is FrameKind.ERROR and "tickers.BTCUSDT" in text
    assert json.loads(replies[0])["req_id"] == "7"


def test_okx_subscriptions_stay_within_request_limits():
    v = get_venue("okx")
    frames = v.subscribe_frames(symbols_for("okx", 250))
    assert len(frames) == 3
    for f in frames:
        assert len(f.encode()) <= 64 * 1024
        req = json.loads(f)
        assert req["op"] == "subscribe" and all(a["channel"] == "bbo-tbt" for a in req["args"])
    replies, new = v.serve_frame('{"id":"9","op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}')
    assert new == [] and v.decode(replies[0])[0] is FrameKind.ERROR and json.loads(replies[0])["id"] == "9"
    replies, new = v.serve_frame('{"op":"unsubscribe","args":[{"channel":"bbo-tbt","instId":"BTC-USDT"}]}')
    assert new == [] and v.decode(replies[0]) == (FrameKind.CONTROL, None)


def test_kraken_acknowledges_each_symbol_and_rejects_bad_ones():
    v = get_venue("kraken")
    req = {"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD", "NOPAIR", "ETH/USD"], "event_trigger": "bbo"}, "req_id": 5}
    replies, new = v.serve_frame(json.dumps(req))
    assert new == ["BTC/USD", "ETH/USD"]
    assert [v.decode(r)[0] for r in replies] == [FrameKind.CONTROL, FrameKind.ERROR, FrameKind.CONTROL]
    assert all(json.loads(r)["req_id"] == 5 for r in replies)
    acks = [json.loads(r) for r in replies]
    assert acks[0]["result"] == {"channel": "ticker", "event_trigger": "bbo", "symbol": "BTC/USD", "snapshot": True}
    assert "NOPAIR" in acks[1]["error"]
    sub = json.loads(v.subscribe_frames(["BTC/USD"])[0])
    assert sub["params"] == {"channel": "ticker", "symbol": ["BTC/USD"], "event_trigger": "bbo"}
    pong = json.loads(v.serve_frame('{"method":"ping","req_id":77}')[0][0])
    assert pong["method"] == "pong" and pong["req_id"] == 77


# -- what the normalizer makes of each venue's ids ----------------------------------------------------


def test_bybit_update_ids_through_the_normalizer():
    v = get_venue("bybit-linear")
    norm = FrameNormalizer(v, {"BTCUSDT": 0})

    def push(u: int) -> None:
        norm.on_frame(v.encode_quote("BTCUSDT", 1.0, 1.0, 2.0, 1.0, ts_event_ns=S, seq=u, px_decimals=1, sz_decimals=1), 2 * S)

    for u in (10, 11, 11, 13, 1):  # next, 3 s re-send of an unchanged book, gap, service restart
        push(u)
    rows = norm.take()
    c = norm.counters
    assert list(rows["seq"]) == [10, 11, 13, 1]
    assert c.quarantined == {"duplicate": 1} and c.seq_gaps == 1
    reset = int(QuoteFlag.AFTER_RECONNECT)
    assert [bool(f & reset) for f in rows["flags"]] == [False, False, True, True]


# -- real material (../shared/data) ------------------------------------------------------------------


def _fixture(name: str) -> dict:
    return json.loads(shared("ws-fixtures", name).read_text())


@pytest.mark.shared_data
def test_real_binance_book_ticker_fixtures():
    d = _fixture("binance__resources__ws_messages__ws_spot_ticker_book.json")
    kind, (got,) = get_venue("binance-spot").decode(json.dumps(d))
    t = d["data"]
    assert kind is FrameKind.QUOTES
    assert got == q(t["s"], float(t["b"]), float(t["B"]), float(t["a"]), float(t["A"]), t["T"] * MS_NS, t["u"])
    for name in (
        "binance__resources__ws_messages__ws_futures_book_ticker.json",
        "binance__test_data__futures__market_data_json__book_ticker_stream.json",
    ):
        t = _fixture(name)  # a raw-stream event: wrap it the way the combined stream sends it
        frame = json.dumps({"stream": t["s"].lower() + "@bookTicker", "data": t})
        kind, (got,) = get_venue("binance-usdm").decode(frame)
        assert got == q(t["s"], float(t["b"]), float(t["B"]), float(t["a"]), float(t["A"]), t["T"] * MS_NS, t["u"])


@pytest.mark.shared_data
def test_real_okx_bbo_tbt_fixture():
    d = _fixture("okx__test_data__ws_bbo_tbt.json")
    kind, (got,) = get_venue("okx").decode(json.dumps(d))
    row = d["data"][0]
    assert kind is FrameKind.QUOTES
    assert got == q(
        d["arg"]["instId"],
        float(row["bids"][0][0]),
        float(row["bids"][0][1]),
        float(row["asks"][0][0]),
        float(row["asks"][0][1]),
        int(row["ts"]) * MS_NS,
        row["seqId"],
    )
    assert get_venue("okx").decode(shared("ws-fixtures", "okx__test_data__ws_tickers.json").read_bytes()) == (
        FrameKind.IGNORED,
        "tickers",
    )


@pytest.mark.shared_data
def test_real_kraken_ticker_fixture():
    path = shared("ws-fixtures", "kraken__test_data__ws_ticker_snapshot.json")
    d = json.loads(path.read_text())
    kind, (got,) = get_venue("kraken").decode(path.read_bytes())
    t = d["data"][0]
    assert kind is FrameKind.QUOTES
    stamp = dt.datetime.strptime(t["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    expected_ts = int(stamp.replace(microsecond=0).timestamp()) * S + stamp.microsecond * 1000
    assert got == q(t["symbol"], t["bid"], t["bid_qty"], t["ask"], t["ask_qty"], expected_ts)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["bybit-linear", "bybit-spot"])
def test_real_bybit_ticker_fixtures_are_ignored(name):
    for fixture in ("bybit__test_data__ws_ticker_linear.json", "bybit__test_data__ws_ticker_option.json"):
        assert get_venue(name).decode(shared("ws-fixtures", fixture).read_bytes()) == (FrameKind.IGNORED, "tickers")


@pytest.mark.shared_data
def test_real_binance_captures_decode_without_errors():
    files = sorted(shared("binance-raw").glob("*.gz"))
    assert files
    for path in files:
        v = get_venue("binance-spot" if path.name.startswith("spot_") else "binance-usdm")
        quotes = ignored = book_tickers = lines = 0
        with gzip.open(path, "rb") as fh:
            for line in fh:
                recv, _, frame = line.rstrip(b"\n").partition(b" ")
                int(recv)
                lines += 1
                book_tickers += b"@bookTicker" in frame
                kind, payload = v.decode(frame)
                if kind is FrameKind.QUOTES:
                    quotes += 1
                    (one,) = payload
                    assert one.bid_px > 0 and one.ask_px > one.bid_px * 0.99 and one.seq > 0
                    assert (one.ts_event_ns > 0) == v.name.endswith("usdm")
                else:
                    assert kind is FrameKind.IGNORED, (path.name, frame[:80])
                    ignored += 1
        assert quotes == book_tickers > 0, path.name
        assert quotes + ignored == lines
