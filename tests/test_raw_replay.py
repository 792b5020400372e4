"""feeds.raw_replay: raw venue recordings through the live feed's FrameNormalizer into quotes."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.backtest import BacktestConfig, run_backtest
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag, concat_rows
from engine.domain.source import QuoteSource
from engine.domain.validate import BadInputError, ValidationPolicy
from feeds.normalize import FrameNormalizer
from feeds.raw_replay import RawReplay, venue_from_name
from feeds.recorder import RawRecorder
from feeds.venues import get_venue

S = 1_000_000_000
MS = 1_000_000
T0 = 1_723_161_000 * S  # 2024-08-08 23:50:00 UTC
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
AFTER = int(QuoteFlag.AFTER_RECONNECT)
STALE = int(QuoteFlag.STALE)


def spot(sym: str, u: int, b: str = "100.00", a: str = "100.01", bq: str = "1.5", aq: str = "2.5") -> str:
    return f'{{"stream":"{sym.lower()}@bookTicker","data":{{"u":{u},"s":"{sym}","b":"{b}","B":"{bq}","a":"{a}","A":"{aq}"}}}}'


def usdm(sym: str, u: int, t_ms: int, b: str = "100.0", a: str = "100.1") -> str:
    return (
        f'{{"stream":"{sym.lower()}@bookTicker","data":{{"e":"bookTicker","u":{u},"s":"{sym}","b":"{b}","B":"3",'
        f'"a":"{a}","A":"4","T":{t_ms},"E":{t_ms + 2}}}}}'
    )


DEPTH = '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}'
TRADE = '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true}}'
SNAPSHOT = '{"lastUpdateId":5,"bids":[["1.0","2.0"]],"asks":[["1.1","2.0"]]}'


def write(path: Path, lines: list[tuple[int, str] | str]) -> Path:
    text = "".join((f"{x[0]} {x[1]}" if isinstance(x, tuple) else x) + "\n" for x in lines)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def replay_all(r: RawReplay) -> np.ndarray:
    parts = list(r.chunks())
    return concat_rows(parts) if parts else np.zeros(0, QUOTE_DTYPE)  # padding bytes copied too


def test_spot_and_usdm_frames_become_quotes(tmp_path):
    f = write(
        tmp_path / "spot_btcusdt_20240808.gz", [(T0, spot("BTCUSDT", 11, "61837.63", "61837.64", "3.78", "1.54"))]
    )
    r = RawReplay(f)
    assert isinstance(r, QuoteSource)
    (q,) = replay_all(r)
    assert r.instruments.symbols == ["BTCUSDT"] and r.instruments[0].venue == "binance-spot"
    assert (q["ts_recv"], q["ts_event"], q["seq"], q["instrument"]) == (T0, T0, 11, 0)
    assert (q["bid_px"], q["ask_px"], q["bid_sz"], q["ask_sz"]) == (61837.63, 61837.64, 3.78, 1.54)
    assert q["flags"] == int(QuoteFlag.SYNTHETIC_TS)  # spot carries no exchange time

    f = write(tmp_path / "usdm_btcusdt_20240808.txt", [(T0, usdm("BTCUSDT", 5, T0 // MS - 1300))])
    (q,) = replay_all(RawReplay(f, instrument_defaults={"tick_size": 0.1, "warmup_ticks": 3}))
    assert (q["ts_event"], q["flags"], q["bid_px"]) == (T0 - 1300 * MS, 0, 100.0)  # T, in ms


def test_instrument_defaults_apply_to_learned_instruments(tmp_path):
    f = write(tmp_path / "usdm_x.gz", [(T0, usdm("BTCUSDT", 5, 1)), (T0 + 1, usdm("ETHUSDT", 6, 1))])
    r = RawReplay(f, instrument_defaults={"tick_size": 0.1, "lot_size": 0.001, "gap_ns": 5 * S, "warmup_ticks": 3})
    replay_all(r)
    assert [
        (i.symbol, i.venue, i.calendar, i.tick_size, i.lot_size, i.gap_ns, i.warmup_ticks) for i in r.instruments
    ] == [
        ("BTCUSDT", "binance-usdm", "24x7", 0.1, 0.001, 5 * S, 3),
        ("ETHUSDT", "binance-usdm", "24x7", 0.1, 0.001, 5 * S, 3),
    ]


@pytest.mark.parametrize("unit,scale", [("ns", 1), ("us", 1000), ("ms", MS)])
def test_stamp_unit_is_detected_per_file(tmp_path, unit, scale):
    f = write(tmp_path / "spot_a.gz", [(T0 // scale + k, spot("BTCUSDT", k + 1)) for k in range(3)])
    r = RawReplay(f)
    q = replay_all(r)
    assert list(q["ts_recv"]) == [T0 + k * scale for k in range(3)]
    assert (r.stats.ts_unit, r.stats.ts_unit_detected) == (unit, True)


def test_two_files_merge_in_receive_order_ties_by_file(tmp_path):
    a = write(tmp_path / "spot_a.gz", [((T0 + k * 1000) // 1000, spot("BTCUSDT", k + 1)) for k in (0, 2, 4, 6)])  # us
    b = write(tmp_path / "spot_b.txt", [(T0 + k * 1000, spot("ETHUSDT", k + 1)) for k in (1, 2, 3, 7)])  # ns
    r = RawReplay([b, a])  # file order b, a: b wins the tie at k=2
    q = replay_all(r)
    assert list(q["ts_recv"]) == [T0 + k * 1000 for k in (0, 1, 2, 2, 3, 4, 6, 7)]
    sym = [r.instruments[i].symbol for i in q["instrument"]]
    assert sym == ["BTCUSDT", "ETHUSDT", "ETHUSDT", "BTCUSDT", "ETHUSDT", "BTCUSDT", "BTCUSDT", "ETHUSDT"]
    assert r.stats.ts_unit == "mixed" and r.stats.rows_read == 8 == r.stats.rows_emitted
    # A directory stands for its files; the merge is the same.
    q2 = replay_all(RawReplay(tmp_path))
    assert list(q2["ts_recv"]) == list(q["ts_recv"])


def test_rotated_files_with_equal_stamps_replay_in_write_order(tmp_path):
    with RawRecorder(tmp_path, "binance-spot", rotate_bytes=300, background_flush=False) as rec:
        for k in range(30):  # one receive stamp for all: only the file order can keep them in order
            rec.write(T0, spot("BTCUSDT", k + 1, f"{100 + k}.00", f"{101 + k}.00"))
    assert len(rec.paths) >= 12  # counters 10, 11, ... sort after 2 only when compared as numbers
    r = RawReplay(tmp_path)
    assert list(replay_all(r)["seq"]) == list(range(1, 31)) and r.stats.quarantined == {}


def test_spot_and_usdm_files_merge_with_venue_qualified_symbols(tmp_path):
    a = write(tmp_path / "spot_btc.gz", [(T0 + k * 10, spot("BTCUSDT", k + 1)) for k in range(5)])
    b = write(tmp_path / "usdm_btc.gz", [(T0 + k * 10 + 5, usdm("BTCUSDT", k + 1, 1)) for k in range(5)])
    r = RawReplay([a, b], chunk_rows=3)
    q = replay_all(r)
    assert r.instruments.symbols == ["binance-spot:BTCUSDT", "binance-usdm:BTCUSDT"]
    assert list(q["ts_recv"]) == sorted(T0 + k * 10 + d for k in range(5) for d in (0, 5))
    assert list(q["instrument"]) == [0, 1] * 5


def test_markers_flag_the_next_quote_of_their_instruments(tmp_path):
    f = write(
        tmp_path / "binance-spot_20240808T235000_0.gz",
        [
            (T0, '#{"event":"connected"}'),
            (T0 + 1, spot("BTCUSDT", 100)),
            (T0 + 2, spot("ETHUSDT", 200)),
            (T0 + 3, '#{"event":"reconnect","symbols":["BTCUSDT"]}'),
            (T0 + 4, spot("ETHUSDT", 201)),
            (T0 + 5, spot("BTCUSDT", 90)),  # a lower id after a reconnect starts the sequence over
            (T0 + 6, spot("BTCUSDT", 91)),
            (T0 + 7, '#{"event":"stale","symbols":["ETHUSDT"]}'),
            (T0 + 8, spot("BTCUSDT", 92)),
            (T0 + 9, spot("ETHUSDT", 202)),
            (T0 + 10, '#{"event":"restart"}'),
            (T0 + 11, spot("ETHUSDT", 1)),
            (T0 + 12, spot("BTCUSDT", 1)),
            (T0 + 13, '#{"event":"reconnect"}'),
            (T0 + 14, '#{"event":"heartbeat-ish"}'),
            (T0 + 15, spot("BTCUSDT", 2)),
        ],
    )
    r = RawReplay(f)
    q = replay_all(r)
    synth = int(QuoteFlag.SYNTHETIC_TS)
    assert [(int(x["seq"]), int(x["flags"]) & ~synth) for x in q] == [
        (100, 0),
        (200, 0),
        (201, 0),
        (90, AFTER),
        (91, 0),
        (92, 0),
        (202, STALE),
        (1, AFTER),
        (1, AFTER),
        (2, AFTER),
    ]
    assert r.markers == {"connected": 1, "reconnect": 2, "stale": 1, "restart": 1, "heartbeat-ish": 1}
    assert r.stats.quarantined == {} and r.stats.rows_read == 10


def test_duplicate_and_regressing_update_ids_are_quarantined(tmp_path):
    f = write(
        tmp_path / "spot_x.gz",
        [
            (T0, spot("BTCUSDT", 10)),
            (T0 + 1, spot("BTCUSDT", 10, "99.00")),
            (T0 + 2, spot("BTCUSDT", 9)),
            (T0 + 3, spot("BTCUSDT", 11)),
        ],
    )
    r = RawReplay(f)
    q = replay_all(r)
    assert list(q["seq"]) == [10, 11]
    assert r.stats.quarantined == {"duplicate": 1, "out_of_order": 1}
    with pytest.raises(BadInputError, match=r"spot_x\.gz:2.*'duplicate'"):
        replay_all(RawReplay(f, policy=ValidationPolicy.parse("duplicate=reject")))


def test_validator_rules_apply_after_the_normalizer(tmp_path):
    f = write(
        tmp_path / "spot_x.gz",
        [
            (T0 + 5, spot("BTCUSDT", 1)),
            (T0 + 6, spot("BTCUSDT", 2, "101", "100")),  # crossed
            (T0 + 4, spot("BTCUSDT", 3)),  # receive time went back
            (T0 + 7, spot("BTCUSDT", 4, "nan", "100")),
            (T0 + 8, spot("BTCUSDT", 5)),
        ],
    )
    r = RawReplay(f)
    assert list(replay_all(r)["seq"]) == [1, 5]
    assert r.stats.quarantined == {"crossed": 1, "out_of_order": 1, "nan": 1}
    with pytest.raises(BadInputError, match=r"spot_x\.gz:2: field 'bid_px'.*'crossed'"):
        replay_all(RawReplay(f, policy=ValidationPolicy.parse("reject")))


def test_malformed_lines_are_counted_with_file_and_line(tmp_path):
    f = write(
        tmp_path / "spot_x.gz",
        [
            (T0, spot("BTCUSDT", 1)),
            "no-space-here",
            f"12x4 {spot('BTCUSDT', 2)}",
            (T0 + 3, "{not json"),
            (T0 + 4, '{"stream":"btcusdt@bookTicker","data":{"u":3,"s":"BTCUSDT","b":"abc","B":"1","a":"1","A":"1"}}'),
            (T0 + 5, '#{"symbols": 3}'),
            "",
            (T0 + 7, spot("BTCUSDT", 4)),
        ],
    )
    r = RawReplay(f)
    q = replay_all(r)
    assert list(q["seq"]) == [1, 4]
    assert r.stats.quarantined == {"malformed": 6}
    assert r.stats.rows_read == 8
    assert [n.split(": ")[0] for n in r.notes] == [f"{f}:{k}" for k in (2, 3, 4, 5, 6, 7)]
    assert "data.b" in r.notes[3]
    with pytest.raises(BadInputError, match=r"spot_x\.gz:2: field 'recv_ns'"):
        replay_all(RawReplay(f, policy=ValidationPolicy.parse("malformed=reject")))
    g = write(tmp_path / "spot_y.gz", [(T0, spot("BTCUSDT", 1)), (T0 + 1, "[1, 2]")])
    with pytest.raises(BadInputError, match=r"spot_y\.gz:2: field 'frame'.*'malformed'"):
        replay_all(RawReplay(g, policy=ValidationPolicy.parse("malformed=reject")))


def test_depth_trade_and_snapshot_frames_are_counted_not_errors(tmp_path):
    f = write(
        tmp_path / "spot_x.gz",
        [
            (T0, DEPTH),
            (T0 + 1, TRADE),
            (T0 + 2, spot("BTCUSDT", 1)),
            (T0 + 3, DEPTH),
            (T0 + 4, SNAPSHOT),
            (T0 + 5, '{"result":null,"id":1}'),
        ],
    )
    r = RawReplay(f)
    assert len(replay_all(r)) == 1
    assert r.ignored == {"depth@100ms": 2, "trade": 1, "depthSnapshot": 1}
    assert r.stats.quarantined == {} and r.notes == [] and r.counters["binance-spot"].control == 1


def test_truncated_gzip_reads_up_to_the_last_complete_line(tmp_path):
    lines = [(T0 + k, spot("BTCUSDT", k + 1)) for k in range(2000)]
    full = write(tmp_path / "full.gz", lines).read_bytes()
    for cut in (len(full) - 4, len(full) // 2, 30):
        f = tmp_path / f"spot_cut{cut}.gz"
        f.write_bytes(full[:cut])
        r = RawReplay(f)
        q = replay_all(r)
        assert list(q["seq"]) == list(range(1, len(q) + 1))  # a prefix, nothing malformed
        assert r.stats.quarantined == {} and r.truncated == [f]
        assert len(r.notes) == 1 and "truncated gzip" in r.notes[0]
        if cut == len(full) - 4:
            assert len(q) == 2000  # only the trailer is missing
    # Corrupt data is a note too, never a crash.
    f = tmp_path / "spot_bad.gz"
    f.write_bytes(full[:200] + b"\xff" * 50)
    r = RawReplay(f)
    replay_all(r)
    assert r.truncated == [f] and "gzip" in r.notes[0]
    # Concatenated gzip members read as one file.
    f = tmp_path / "spot_two.gz"
    f.write_bytes(
        gzip.compress(f"{T0} {spot('BTCUSDT', 1)}\n".encode())
        + gzip.compress(f"{T0 + 1} {spot('BTCUSDT', 2)}\n".encode())
    )
    r = RawReplay(f)
    assert list(replay_all(r)["seq"]) == [1, 2] and r.truncated == []


def test_fixed_instrument_table_quarantines_unknown_symbols(tmp_path):
    f = write(
        tmp_path / "spot_x.gz", [(T0, spot("BTCUSDT", 1)), (T0 + 1, spot("DOGEUSDT", 1)), (T0 + 2, spot("ETHUSDT", 1))]
    )
    table = InstrumentTable(
        [Instrument(symbol="ETHUSDT", venue="binance-spot"), Instrument(symbol="BTCUSDT", venue="binance-spot")]
    )
    r = RawReplay(f, instruments=table)
    q = replay_all(r)
    assert list(q["instrument"]) == [1, 0] and r.instruments is table and len(table) == 2
    assert r.stats.quarantined == {"unknown_symbol": 1}


def test_venue_from_file_name(tmp_path):
    assert venue_from_name(Path("spot_btcusdt_20240808.gz")) == "binance-spot"
    assert venue_from_name(Path("usdm_ethusdt_20240808.gz")) == "binance-usdm"
    assert venue_from_name(Path("bybit-linear_20240808T000000_0.gz")) == "bybit-linear"
    assert venue_from_name(Path("capture.gz")) is None
    f = write(tmp_path / "capture.gz", [(T0, spot("BTCUSDT", 1))])
    with pytest.raises(ValueError, match="--venue"):
        RawReplay(f)
    assert len(replay_all(RawReplay(f, venue="binance"))) == 1
    with pytest.raises(ValueError, match="unknown venue"):
        RawReplay(f, venue="nasdaq")


# -- property: recording then replaying equals normalizing directly ---------------------------------

_frame = st.tuples(
    st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
    st.integers(1, 10_000),  # bid in cents
    st.integers(1, 500),  # spread in cents
    st.integers(0, 99),  # size
    st.integers(1, 3),  # u step (0 would be a duplicate)
    st.integers(1, 5 * S),  # receive gap
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(_frame, min_size=1, max_size=60),
    futures=st.booleans(),
    chunk_rows=st.integers(1, 16),
    rotate=st.integers(150, 2000),
)
def test_recorded_frames_replay_to_the_quotes_the_normalizer_builds(frames, futures, chunk_rows, rotate):
    venue_name = "binance-usdm" if futures else "binance-spot"
    u: dict[str, int] = {}
    t = T0
    wire = []
    for sym, bid, spread, size, du, gap in frames:
        u[sym] = u.get(sym, 0) + du
        t += gap
        b, a = f"{bid / 100:.2f}", f"{(bid + spread) / 100:.2f}"
        text = usdm(sym, u[sym], t // MS, b, a) if futures else spot(sym, u[sym], b, a, str(size), "1.25")
        wire.append((t, text))
        if len(wire) % 7 == 0:
            wire.append((t, DEPTH))
    direct_table = InstrumentTable()
    nz = FrameNormalizer(
        get_venue(venue_name), {}, add_symbol=lambda s: direct_table.add(Instrument(symbol=s, venue=venue_name))
    )
    for ts, text in wire:
        nz.on_frame(text, ts)
    expected = nz.take()
    with tempfile.TemporaryDirectory() as d:
        with RawRecorder(d, venue_name, rotate_bytes=rotate, background_flush=False) as rec:
            for ts, text in wire:
                rec.write(ts, text)
        r = RawReplay(Path(d), chunk_rows=chunk_rows)
        got = replay_all(r)
    assert len(rec.paths) >= 1
    assert r.instruments.symbols == direct_table.symbols
    assert got.tolist() == expected.tolist()  # every field of every row (padding bytes aside)
    assert r.stats.quarantined == {} and r.stats.rows_emitted == len(expected)


# -- backtests ---------------------------------------------------------------------------------------


def _recording(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    mid = {"BTCUSDT": 60_000.0, "ETHUSDT": 2_600.0}
    u = {"BTCUSDT": 1, "ETHUSDT": 1}
    with RawRecorder(tmp_path, "binance-spot", background_flush=False) as rec:
        for k in range(3000):
            t = T0 + k * 100 * MS
            sym = "BTCUSDT" if k % 2 else "ETHUSDT"
            mid[sym] *= float(np.exp(rng.normal(0, 4e-4) + 6e-5 * np.sin(k / 300)))
            u[sym] += int(rng.integers(1, 4))
            b, a = f"{mid[sym] - 0.01:.2f}", f"{mid[sym] + 0.01:.2f}"
            rec.write(t, spot(sym, u[sym], b, a, "2.0", "3.0"))
            if k % 5 == 0:
                rec.write(t, TRADE)
            if k == 1500:
                rec.event(t, "reconnect", symbols=["BTCUSDT"])
    return tmp_path / "raw" / "binance-spot"


def test_backtest_on_a_recording_is_deterministic(tmp_path):
    path = _recording(tmp_path)
    cfg = BacktestConfig(
        strategy="momentum", strategy_params={"fast_span": 5, "slow_span": 20}, interval="raw", warmup_ticks=10
    )
    runs = [
        run_backtest(RawReplay(path, instrument_defaults={"lot_size": 0.0001}, chunk_rows=1000), cfg) for _ in range(2)
    ]
    a, b = runs
    assert a.quotes_in == 3000 and a.instruments == ["ETHUSDT", "BTCUSDT"]
    assert len(a.fills) > 10
    assert a.fill_hash() == b.fill_hash()
    assert a.resets_by_reason().get("RECONNECT", 0) >= 1


# -- real captures ---------------------------------------------------------------------------------


@pytest.fixture
def binance_raw() -> Path:
    d = SHARED / "binance-raw"
    if not d.is_dir():
        pytest.skip(f"shared data folder {d} is absent (only present on the developers' machine)")
    return d


def _count_streams(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with gzip.open(path, "rb") as fh:
        for line in fh:
            frame = line.split(b" ", 1)[1]
            if frame.startswith(b'{"stream":"'):
                stream = frame[11 : frame.index(b'"', 11)].decode().partition("@")[2]
            else:
                stream = "depthSnapshot" if b"lastUpdateId" in frame else "other"
            counts[stream] = counts.get(stream, 0) + 1
    return counts


@pytest.mark.shared_data
def test_real_binance_captures_replay_cleanly(binance_raw):
    files = sorted(binance_raw.glob("*.gz"))
    assert len(files) == 6
    for f in files:
        r = RawReplay(f)
        n = len(replay_all(r))
        counts = _count_streams(f)
        tickers = counts.pop("bookTicker")
        assert "malformed" not in r.stats.quarantined and r.notes == [] and r.truncated == []
        assert n == tickers - r.stats.quarantined_total, f
        assert r.ignored == counts, f
        assert r.stats.ts_unit == "ns" and r.stats.rows_read == tickers + sum(counts.values())


@pytest.mark.shared_data
def test_real_spot_days_merge_into_a_backtest(binance_raw):
    files = sorted(binance_raw.glob("spot_*.gz"))
    assert len(files) == 4
    r = RawReplay(files)
    res = run_backtest(r, BacktestConfig(strategy="none"))
    assert res.instruments == ["ETHUSDT", "BTCUSDT"] and res.quotes_in == r.stats.rows_emitted > 100_000
    assert r.stats.quarantined_total == 0 and len(res.fills) == 0
    assert res.equity_ts_ns[0] < 1_723_161_600 * S < res.equity_ts_ns[-1]  # across midnight
