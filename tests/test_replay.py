"""Generic CSV/Parquet replay: formats, column maps, timestamps, symbols, bad rows and their line
numbers, round trips and chunking invariance. Tests write their own small files in tmp_path; one
test reads the real FX files in ../shared/data when that folder is there."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag
from engine.domain.source import QuoteSource
from engine.domain.timestamps import local_ns_to_utc
from engine.domain.validate import BadInputError
from feeds.columns import localize
from feeds.replay import ColumnMap, FileReplay

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
T0_MS = 1_700_000_000_000  # 2023-11-14, a plausible epoch in ms


def write(path: Path, text: str) -> Path:
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, newline="")
    return path


def read_all(replay: FileReplay) -> np.ndarray:
    chunks = list(replay.chunks())
    for c in chunks:
        assert c.dtype == QUOTE_DTYPE and len(c) <= replay.chunk_rows
    return np.concatenate(chunks) if chunks else np.zeros(0, QUOTE_DTYPE)


def ms(i: int) -> int:
    return (T0_MS + i) * 1_000_000


BASIC = "symbol,ts_ms_utc,bid,ask,bid_volume,ask_volume\n" + "".join(
    f"EURUSD,{T0_MS + i},{1.1 + i * 1e-5:.5f},{1.1002 + i * 1e-5:.5f},{1.5 + i},{2.0}\n" for i in range(5)
)


def check_basic(q: np.ndarray) -> None:
    assert len(q) == 5
    np.testing.assert_array_equal(q["ts_recv"], [ms(i) for i in range(5)])
    np.testing.assert_array_equal(q["ts_event"], q["ts_recv"])
    np.testing.assert_allclose(q["bid_px"], [1.1 + i * 1e-5 for i in range(5)], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(q["bid_sz"], [1.5 + i for i in range(5)])
    np.testing.assert_array_equal(q["ask_sz"], 2.0)
    assert (q["instrument"] == 0).all() and (q["seq"] == 0).all()
    assert (q["flags"] == QuoteFlag.SYNTHETIC_TS).all()  # no ts_event column


# -- formats --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["q.csv", "q.csv.gz", "q.txt", "Q.CSV.GZ"])
def test_csv_plain_and_gzip(tmp_path: Path, name: str) -> None:
    r = FileReplay(write(tmp_path / name, BASIC))
    assert isinstance(r, QuoteSource)
    check_basic(read_all(r))
    assert r.instruments.symbols == ["EURUSD"]
    assert (r.stats.rows_read, r.stats.rows_emitted, r.stats.quarantined) == (5, 5, {})
    assert (r.stats.ts_unit, r.stats.ts_unit_detected) == ("ms", True)


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet(tmp_path: Path, suffix: str) -> None:
    csv_path = write(tmp_path / "q.csv", BASIC)
    table = pacsv.read_csv(csv_path)
    pq.write_table(table, tmp_path / f"q{suffix}", row_group_size=2)
    r = FileReplay(tmp_path / f"q{suffix}", chunk_rows=3)
    check_basic(read_all(r))
    assert r.stats.ts_unit == "ms"


def test_parquet_timestamp_type_and_bad_values(tmp_path: Path) -> None:
    ts = pa.array([ms(i) // 1000 for i in range(4)], pa.timestamp("us", "UTC"))
    table = pa.table(
        {
            "time": ts,
            "bid_price": pa.array([1.0, None, 1.0, 1.0]),
            "ask_price": pa.array([2.0, 2.0, 2.0, 2.0]),
            "bid_qty": pa.array([1, 2, 3, 4], pa.int32()),
            "seq": pa.array([7, 8, -1, 9], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    r = FileReplay(tmp_path / "x.parquet")
    q = read_all(r)
    np.testing.assert_array_equal(q["ts_recv"], [ms(0), ms(3)])
    np.testing.assert_array_equal(q["seq"], [7, 9])
    np.testing.assert_array_equal(q["bid_sz"], [1, 4])
    assert r.stats.quarantined == {"malformed": 2}  # a null price, a negative sequence number
    assert (r.stats.ts_unit, r.stats.ts_unit_detected) == ("us", False)
    with pytest.raises(BadInputError, match=r"x\.parquet:2: field 'bid_px' = None"):
        read_all(FileReplay(tmp_path / "x.parquet", policy="malformed=reject"))


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown file type.*\.csv, \.csv\.gz"):
        FileReplay(write(tmp_path / "q.json", BASIC))


def test_blank_first_line_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="first line is blank; expected the header"):
        FileReplay(write(tmp_path / "b.csv", "\n" + BASIC))


def test_empty_file_with_columns_yields_nothing(tmp_path: Path) -> None:
    r = FileReplay(write(tmp_path / "e.csv", ""), columns="ts=ts,bid=b,ask=a", symbol="X")
    assert read_all(r).size == 0 and r.stats.rows_read == 0
    with pytest.raises(ValueError, match="empty"):
        FileReplay(write(tmp_path / "e2.csv", ""))


# -- column maps ----------------------------------------------------------------------------------


def test_no_header_positional_columns(tmp_path: Path) -> None:
    text = "".join(f"x,{T0_MS + i},{1.1 + i * 1e-5:.5f},{1.1002 + i * 1e-5:.5f},{1.5 + i},2.0\n" for i in range(5))
    path = write(tmp_path / "EURUSD.csv", text)
    r = FileReplay(path, has_header=False, columns=ColumnMap.parse("ts=1,bid=2,ask=3,bid_sz=4,ask_sz=5"))
    check_basic(read_all(r))
    assert r.instruments.symbols == ["EURUSD"]  # named after the file stem
    with pytest.raises(ValueError, match=r"needs columns=.*'ts=0,bid=1,ask=2'"):
        FileReplay(path, has_header=False)
    with pytest.raises(ValueError, match=r"ts_recv='9' not in the file; its columns are \['0', '1'.*by position"):
        FileReplay(path, has_header=False, columns="ts=9,bid=2,ask=3")


def test_column_map_parse() -> None:
    cm = ColumnMap.parse("ts=ts_ms_utc, bid=bid,ask=ask,bid_sz=bid_volume,ask_sz=ask_volume,symbol=symbol,seq=u,ts_event=E")
    assert cm == ColumnMap(
        ts_recv="ts_ms_utc", bid_px="bid", ask_px="ask", bid_sz="bid_volume", ask_sz="ask_volume",
        symbol="symbol", seq="u", ts_event="E",
    )
    assert ColumnMap.parse("ts_recv=a,bid_px=b,ask_px=c") == ColumnMap(ts_recv="a", bid_px="b", ask_px="c")


@pytest.mark.parametrize(
    "text, match",
    [
        ("ts=a,bid=b,ask=c,volume=v", r"unknown column map key 'volume'; valid keys: ts, ts_recv, ts_event, bid"),
        ("ts=a,bid=b", r"lacks ask; ts, bid and ask are required"),
        ("ts=a,ts_recv=b,bid=c,ask=d", r"sets ts_recv twice"),
        ("ts=a,bid,ask=c", r"'bid' is not key=column"),
    ],
)
def test_column_map_parse_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ColumnMap.parse(text)


def test_column_map_infer() -> None:
    duka = ColumnMap.infer(["symbol", "ts_ms_utc", "bid", "ask", "bid_volume", "ask_volume"])
    assert duka == ColumnMap(ts_recv="ts_ms_utc", bid_px="bid", ask_px="ask", bid_sz="bid_volume", ask_sz="ask_volume", symbol="symbol")
    tardis = ColumnMap.infer(
        ["exchange", "symbol", "timestamp", "local_timestamp", "ask_amount", "ask_price", "bid_price", "bid_amount"]
    )
    assert tardis == ColumnMap(
        ts_recv="local_timestamp", ts_event="timestamp", bid_px="bid_price", ask_px="ask_price",
        bid_sz="bid_amount", ask_sz="ask_amount", symbol="symbol",
    )
    plain = ColumnMap.infer(["Time", "Bid Price", "Ask-Price", "Bid Size", "ask_qty", "Ticker", "Sequence"])
    assert plain == ColumnMap(ts_recv="Time", bid_px="Bid Price", ask_px="Ask-Price", bid_sz="Bid Size", ask_sz="ask_qty", symbol="Ticker", seq="Sequence")
    with pytest.raises(ValueError, match=r"cannot infer.*\['when', 'b', 'a'\]: no column for ts, bid, ask; pass it explicitly"):
        ColumnMap.infer(["when", "b", "a"])


def test_missing_mapped_column_lists_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bid_px='bidd' not in the file; its columns are \['symbol', 'ts_ms_utc'"):
        FileReplay(write(tmp_path / "q.csv", BASIC), columns="ts=ts_ms_utc,bid=bidd,ask=ask")


# -- timestamps -----------------------------------------------------------------------------------

SEC = 1_700_000_000


@pytest.mark.parametrize(
    "unit, values, want_ns",
    [
        ("s", [SEC, SEC + 1], [SEC * 10**9, (SEC + 1) * 10**9]),
        ("ms", [SEC * 1000 + 5, SEC * 1000 + 6], [SEC * 10**9 + 5 * 10**6, SEC * 10**9 + 6 * 10**6]),
        ("us", [SEC * 10**6 + 7, SEC * 10**6 + 8], [SEC * 10**9 + 7000, SEC * 10**9 + 8000]),
        ("ns", [SEC * 10**9 + 1, SEC * 10**9 + 2], [SEC * 10**9 + 1, SEC * 10**9 + 2]),
        ("s", ["1700000000.25", "1700000000.5"], [SEC * 10**9 + 250_000_000, SEC * 10**9 + 500_000_000]),
    ],
)
def test_unit_detection(tmp_path: Path, unit: str, values: list, want_ns: list[int]) -> None:
    text = "ts,bid,ask\n" + "".join(f"{v},1.0,1.1\n" for v in values)
    r = FileReplay(write(tmp_path / "u.csv", text))
    q = read_all(r)
    np.testing.assert_array_equal(q["ts_recv"], want_ns)
    assert (r.stats.ts_unit, r.stats.ts_unit_detected) == (unit, True)


def test_text_epochs_exact_and_bad(tmp_path: Path) -> None:
    text = (
        "ts,bid,ask\n"
        "1700000000.123456789,1,2\n"  # exact to the ns, beyond float64's 16 digits
        "1.7000000015e9,1,2\n"  # exponent form goes through float
        "nan,1,2\n"
        "1700000002.5x,1,2\n"
        "99999999999999999999,1,2\n"
        " 1700000003 ,1,2\n"
    )
    r = FileReplay(write(tmp_path / "t.csv", text))
    q = read_all(r)
    assert q["ts_recv"].tolist() == [1_700_000_000_123_456_789, 1_700_000_001_500_000_000, 1_700_000_003_000_000_000]
    assert r.stats.quarantined == {"malformed": 3} and r.stats.ts_unit == "s"
    ms_text = "ts,bid,ask\n1700000000123.5,1,2\n-5.5,1,2\n"
    q = read_all(FileReplay(write(tmp_path / "m.csv", ms_text), ts_unit="ms"))
    assert q["ts_recv"].tolist() == [1_700_000_000_123_500_000]  # -5.5 ms is a valid number, then out of order


def test_explicit_unit_and_undetectable_unit(tmp_path: Path) -> None:
    path = write(tmp_path / "u.csv", "ts,bid,ask\n5,1.0,1.1\n6,1.0,1.1\n")
    r = FileReplay(path, ts_unit="s")
    np.testing.assert_array_equal(read_all(r)["ts_recv"], [5 * 10**9, 6 * 10**9])
    assert (r.stats.ts_unit, r.stats.ts_unit_detected) == ("s", False)
    with pytest.raises(ValueError, match=r"u\.csv column 'ts'.*pass the unit explicitly"):
        read_all(FileReplay(path))
    with pytest.raises(ValueError, match="ts_unit 'min' is not one of auto, s, ms, us, ns"):
        FileReplay(path, ts_unit="min")


def test_ts_format_and_tz_histdata_like(tmp_path: Path) -> None:
    # HistData: no header, "YYYYMMDD HHMMSSmmm", EST without DST (UTC-5 all year).
    text = "20200101 170000065,1.121200,1.121720,0\n20200101 170010447,1.121200,1.121920,0\n20200701 120000000,1.1,1.2,0\n"
    r = FileReplay(
        write(tmp_path / "EURUSD.csv", text), has_header=False, columns="ts=0,bid=1,ask=2",
        ts_format="%Y%m%d %H%M%S%f", tz="Etc/GMT+5",
    )
    q = read_all(r)
    utc = np.array(["2020-01-01T22:00:00.065", "2020-01-01T22:00:10.447", "2020-07-01T17:00:00.000"], "datetime64[ns]")
    np.testing.assert_array_equal(q["ts_recv"], utc.astype(np.int64))
    assert r.stats.ts_unit == "text" and not r.stats.ts_unit_detected


@pytest.mark.parametrize(
    "fmt, value, want",
    [
        ("%Y-%m-%d %H:%M:%S.%f", "2020-01-01 00:00:01.5", "2020-01-01T00:00:01.500"),
        ("%Y-%m-%d %H:%M:%S.%f", "2020-01-01 00:00:01.123456789", "2020-01-01T00:00:01.123456789"),
        ("%d/%m/%Y %H:%M:%S", "02/01/2020 03:04:05", "2020-01-02T03:04:05"),
    ],
)
def test_ts_format_variants(tmp_path: Path, fmt: str, value: str, want: str) -> None:
    r = FileReplay(write(tmp_path / "f.csv", f"time;bid;ask\n{value};1;2\n"), ts_format=fmt, delimiter=";")
    assert read_all(r)["ts_recv"].tolist() == [np.datetime64(want, "ns").astype(np.int64)]


def test_ts_format_bad_value_is_malformed(tmp_path: Path) -> None:
    text = "time,bid,ask\n20200101 170000065,1,2\n2020-01-01 17:00,1,2\n20200101 170000066,1,2\n"
    path = write(tmp_path / "f.csv", text)
    r = FileReplay(path, ts_format="%Y%m%d %H%M%S%f")
    assert len(read_all(r)) == 2 and r.stats.quarantined == {"malformed": 1}
    with pytest.raises(BadInputError, match=r"f\.csv:3: field 'ts_recv' = '2020-01-01 17:00'.*format"):
        read_all(FileReplay(path, ts_format="%Y%m%d %H%M%S%f", policy="malformed=reject"))
    with pytest.raises(ValueError, match="%f .* only once, at the end"):
        FileReplay(path, ts_format="%f %Y")


def test_iso_text_with_tz_and_dst(tmp_path: Path) -> None:
    text = (
        "time,bid,ask\n"
        "2020-03-08 01:59:00,1,2\n"
        "2020-03-08 02:30:00,1,2\n"  # does not exist in New York (clocks jump 02:00 -> 03:00)
        "2020-03-08 03:00:00,1,2\n"
        "2020-07-01 12:00:00.5,1,2\n"
    )
    r = FileReplay(write(tmp_path / "iso.csv", text), tz="America/New_York")
    q = read_all(r)
    want = np.array(["2020-03-08T06:59", "2020-03-08T07:00", "2020-07-01T16:00:00.5"], "datetime64[ns]")
    np.testing.assert_array_equal(q["ts_recv"], want.astype(np.int64))
    assert r.stats.quarantined == {"malformed": 1}
    assert (r.stats.ts_unit, r.stats.ts_unit_detected) == ("iso8601", True)


def test_iso_text_with_offsets(tmp_path: Path) -> None:
    text = "time,bid,ask\n2020-01-01T00:00:00Z,1,2\n2020-01-01T01:00:01+01:00,1,2\n"
    q = read_all(FileReplay(write(tmp_path / "iso.csv", text), tz="Asia/Tokyo"))  # offsets win over tz
    want = np.array(["2020-01-01T00:00:00", "2020-01-01T00:00:01"], "datetime64[ns]")
    np.testing.assert_array_equal(q["ts_recv"], want.astype(np.int64))


def test_python_tz_fallback_matches_arrow() -> None:
    local = np.array(
        ["2020-03-08T01:59", "2020-03-08T02:30", "2020-11-01T01:30", "2020-06-01T12:00:00.123"], "datetime64[ns]"
    ).astype(np.int64)
    arr = pa.array(local, pa.timestamp("ns"))
    utc_a, gap_a = localize(arr, "America/New_York")
    utc_p, gap_p = local_ns_to_utc(local, "America/New_York")
    np.testing.assert_array_equal(gap_a, [False, True, False, False])
    np.testing.assert_array_equal(gap_p, gap_a)
    keep = ~gap_a
    np.testing.assert_array_equal(utc_p[keep], utc_a[keep])
    # Ambiguous 01:30 on the fold day takes the earlier instant (EDT, UTC-4).
    assert utc_a[2] == np.datetime64("2020-11-01T05:30", "ns").astype(np.int64)


def test_unknown_tz(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown time zone 'EST5'.*Etc/GMT\+5"):
        FileReplay(write(tmp_path / "q.csv", BASIC), tz="EST5")


def test_ts_event_column_and_synthetic_flag(tmp_path: Path) -> None:
    text = (
        "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount\n"
        f"x,BTCUSDT,{SEC * 10**6},{SEC * 10**6 + 900},1,101,100,2\n"
        f"x,BTCUSDT,,{SEC * 10**6 + 1000},1,101,100,3\n"
    )
    r = FileReplay(write(tmp_path / "tardis.csv", text))
    q = read_all(r)
    np.testing.assert_array_equal(q["ts_recv"], [SEC * 10**9 + 900_000, SEC * 10**9 + 1_000_000])
    np.testing.assert_array_equal(q["ts_event"], [SEC * 10**9, SEC * 10**9 + 1_000_000])
    np.testing.assert_array_equal(q["flags"], [0, QuoteFlag.SYNTHETIC_TS])  # blank exchange time
    np.testing.assert_array_equal(q["bid_px"], [100, 100])
    np.testing.assert_array_equal(q["bid_sz"], [2, 3])
    assert r.stats.ts_unit == "us"


def test_missing_sizes_are_zero_and_seq_parsed(tmp_path: Path) -> None:
    text = "ts,bid,ask,u\n" + "".join(f"{T0_MS + i},1.0,1.1,{100 + i}\n" for i in range(3))
    q = read_all(FileReplay(write(tmp_path / "q.csv", text), columns="ts=ts,bid=bid,ask=ask,seq=u"))
    np.testing.assert_array_equal(q["seq"], [100, 101, 102])
    assert (q["bid_sz"] == 0).all() and (q["ask_sz"] == 0).all()


# -- symbols --------------------------------------------------------------------------------------


MULTI = (
    "symbol,ts,bid,ask\n"
    f"EURUSD,{T0_MS},1.10,1.11\n"
    f"USDJPY,{T0_MS + 1},150.1,150.2\n"
    f"GBPUSD,{T0_MS + 2},1.25,1.26\n"
    f"EURUSD,{T0_MS + 3},1.10,1.12\n"
    f"USDJPY,{T0_MS + 4},150.1,150.3\n"
)


def test_multi_symbol_with_template(tmp_path: Path) -> None:
    tmpl = Instrument(symbol="TEMPLATE", venue="FX", tick_size=1e-5, calendar="24x7")
    r = FileReplay(write(tmp_path / "m.csv", MULTI), template=tmpl, chunk_rows=2, block_size=32)
    q = read_all(r)
    assert r.instruments.symbols == ["EURUSD", "USDJPY", "GBPUSD"]
    assert all(i.venue == "FX" and i.tick_size == 1e-5 for i in r.instruments)
    np.testing.assert_array_equal(q["instrument"], [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(q["bid_px"], [1.10, 150.1, 1.25, 1.10, 150.1])


def test_fixed_table_unknown_symbol(tmp_path: Path) -> None:
    table = InstrumentTable([Instrument(symbol="USDJPY"), Instrument(symbol="EURUSD")])
    path = write(tmp_path / "m.csv", MULTI)
    r = FileReplay(path, instruments=table)
    q = read_all(r)
    np.testing.assert_array_equal(q["instrument"], [1, 0, 1, 0])
    assert r.stats.quarantined == {"unknown_symbol": 1} and len(table) == 2
    with pytest.raises(BadInputError, match=r"m\.csv:4: field 'symbol' = 'GBPUSD' breaks rule 'unknown_symbol'.*known: USDJPY, EURUSD"):
        read_all(FileReplay(path, instruments=table, policy="unknown_symbol=reject"))
    # A starting table plus a template grows instead.
    grown = FileReplay(path, instruments=InstrumentTable([Instrument(symbol="USDJPY")]), template=Instrument(symbol="T"))
    read_all(grown)
    assert grown.instruments.symbols == ["USDJPY", "EURUSD", "GBPUSD"]


def test_single_instrument_naming(tmp_path: Path) -> None:
    text = f"ts,bid,ask\n{T0_MS},1,2\n"
    path = write(tmp_path / "EURUSD_2020.csv.gz", text)
    assert FileReplay(path).instruments.symbols == ["EURUSD_2020"]
    r = FileReplay(path, symbol="EURUSD", template=Instrument(symbol="x", tick_size=1e-5))
    assert r.instruments[0] == Instrument(symbol="EURUSD", tick_size=1e-5)
    table = InstrumentTable([Instrument(symbol="A"), Instrument(symbol="EURUSD")])
    assert read_all(FileReplay(path, symbol="EURUSD", instruments=table))["instrument"].tolist() == [1]
    with pytest.raises(ValueError, match=r"instrument 'GBP' is not in the instrument table \(A, EURUSD\)"):
        FileReplay(path, symbol="GBP", instruments=table)
    with pytest.raises(ValueError, match="pass one or the other"):
        FileReplay(write(tmp_path / "m.csv", MULTI), symbol="EURUSD")


# -- bad rows and line numbers --------------------------------------------------------------------

BAD = (
    "symbol,ts,bid,ask\n"  # line 1
    f"EURUSD,{T0_MS},1.10,1.11\n"  # 2
    f"EURUSD,{T0_MS + 1},1.10\n"  # 3: a field short
    f"EURUSD,{T0_MS + 2},abc,1.11\n"  # 4: non-numeric price
    "\n"  # 5: blank line
    f"EURUSD,{T0_MS + 3},1.10,1.11,extra\n"  # 6: a field too many
    f"EURUSD,{T0_MS + 4},1.12,1.11\n"  # 7: crossed
    f"EURUSD,{T0_MS + 5}, 1.10 ,1.11\n"  # 8: blanks around a number are fine
    f"EURUSD,{T0_MS + 6},,1.11\n"  # 9: empty price
    f"EURUSD,{T0_MS + 3},1.10,1.11\n"  # 10: out of order
    f"EURUSD,{T0_MS + 7},1.10,1.11\n"  # 11
)


def test_malformed_rows_counted(tmp_path: Path) -> None:
    r = FileReplay(write(tmp_path / "bad.csv", BAD))
    q = read_all(r)
    np.testing.assert_array_equal(q["ts_recv"], [ms(0), ms(5), ms(7)])
    assert r.stats.quarantined == {"malformed": 5, "crossed": 1, "out_of_order": 1}
    assert r.stats.rows_read == 10 and r.stats.rows_emitted == 3
    assert r.stats.rows_emitted + r.stats.quarantined_total == r.stats.rows_read


@pytest.mark.parametrize(
    "policy, line, field",
    [
        ("malformed=reject", 3, "row"),
        ("crossed=reject", 7, "bid_px"),
        ("out_of_order=reject", 10, "ts_recv"),
    ],
)
@pytest.mark.parametrize("block_size", [40, 64, 1 << 20])
def test_reject_names_the_right_line(tmp_path: Path, policy: str, line: int, field: str, block_size: int) -> None:
    r = FileReplay(write(tmp_path / "bad.csv", BAD), policy=policy, block_size=block_size, chunk_rows=2)
    got: list[np.ndarray] = []
    with pytest.raises(BadInputError) as ei:
        for chunk in r.chunks():
            got.append(chunk)
    assert (ei.value.line, ei.value.field) == (line, field)
    assert f"bad.csv:{line}" in str(ei.value)
    # Everything valid before the offending line was delivered first.
    delivered = np.concatenate(got) if got else np.zeros(0, QUOTE_DTYPE)
    want = [t for ln, t in ((2, ms(0)), (8, ms(5)), (11, ms(7))) if ln < line]
    assert delivered["ts_recv"].tolist() == want


def test_line_numbers_after_skipped_rows(tmp_path: Path) -> None:
    # Non-numeric values and wrong field counts before a rejected row must not shift its line.
    text = "ts,bid,ask\n" + "".join(
        f"{T0_MS + i},1.0,1.1\n" if i % 7 else f"{T0_MS + i},1.0\n" for i in range(1, 200)
    ) + f"{T0_MS + 300},1.0,abc\n" + "".join(f"{T0_MS + 400 + i},1.0,1.1\n" for i in range(50)) + f"{T0_MS + 500},1.2,1.1\n"
    path = write(tmp_path / "lines.csv", text)
    for block_size in (64, 1000, 1 << 20):
        with pytest.raises(BadInputError) as ei:
            read_all(FileReplay(path, policy="crossed=reject", block_size=block_size, chunk_rows=7))
        assert ei.value.line == 1 + 199 + 1 + 50 + 1
        with pytest.raises(BadInputError) as ei:
            read_all(FileReplay(path, policy="malformed=reject", block_size=block_size))
        assert ei.value.line == 8  # i == 7 is the first short row


def test_trailing_malformed_rows_are_counted(tmp_path: Path) -> None:
    r = FileReplay(write(tmp_path / "t.csv", f"ts,bid,ask\n{T0_MS},1,2\n1,2\n3\n"))
    assert len(read_all(r)) == 1 and r.stats.quarantined == {"malformed": 2}


def test_non_numeric_error_message(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as ei:
        read_all(FileReplay(write(tmp_path / "bad.csv", BAD), policy="malformed=reject", block_size=1 << 20))
    assert "expected 4 fields, found 3" in str(ei.value)
    text = f"ts,bid,ask\n{T0_MS},1,2\n{T0_MS + 1},1.5.5,2\n"
    with pytest.raises(BadInputError, match=r"x\.csv:3: field 'bid_px' = '1\.5\.5'.*column 'bid': expected a number"):
        read_all(FileReplay(write(tmp_path / "x.csv", text), policy="reject"))


def test_nan_text_is_nan_rule_not_malformed(tmp_path: Path) -> None:
    text = f"ts,bid,ask\n{T0_MS},NaN,2\n{T0_MS + 1},1,inf\n{T0_MS + 2},-1,2\n{T0_MS + 3},1,2\n"
    r = FileReplay(write(tmp_path / "n.csv", text))
    assert len(read_all(r)) == 1 and r.stats.quarantined == {"nan": 2, "negative": 1}


# -- round trips and chunking ---------------------------------------------------------------------

finite_px = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
quote_row = st.tuples(
    st.integers(0, 10**9),  # ns increment
    finite_px,
    st.floats(min_value=1e-9, max_value=1e3),  # spread
    st.floats(min_value=0, max_value=1e9, allow_nan=False),
    st.floats(min_value=0, max_value=1e9, allow_nan=False),
    st.integers(0, 2**63),
    st.sampled_from(["AAA", "BBB", "C.D"]),
)


def random_quotes(rows: list[tuple]) -> tuple[np.ndarray, list[str]]:
    q = np.zeros(len(rows), QUOTE_DTYPE)
    syms: list[str] = []
    ids: dict[str, int] = {}
    ts = SEC * 10**9
    for i, (dt, bid, spread, bsz, asz, seq, sym) in enumerate(rows):
        ts += dt
        ask = bid + spread
        if not ask > bid:
            ask = np.nextafter(bid, np.inf)
        ids.setdefault(sym, len(ids))
        q[i] = (ts - 5, ts, bid, ask, bsz, asz, seq, ids[sym], 0)
        syms.append(sym)
    # Equal rows at equal times would be duplicates; make each row unique by its time.
    return q, syms


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(quote_row, min_size=1, max_size=40), chunk_rows=st.integers(1, 50))
def test_round_trip_csv_and_parquet(tmp_path: Path, rows: list[tuple], chunk_rows: int) -> None:
    q, syms = random_quotes(rows)
    q["ts_recv"] += np.arange(len(q))  # strictly increasing: no duplicates by construction
    q["ts_event"] = q["ts_recv"] - 5
    lines = ["sym,ts_event,ts_recv,bid,ask,bid_sz,ask_sz,seq\n"]
    for s, r in zip(syms, q):
        # repr() of a float round-trips exactly.
        lines.append(
            f"{s},{int(r['ts_event'])},{int(r['ts_recv'])},{float(r['bid_px'])!r},{float(r['ask_px'])!r},"
            f"{float(r['bid_sz'])!r},{float(r['ask_sz'])!r},{int(r['seq'])}\n"
        )
    cmap = ColumnMap.parse("ts=ts_recv,ts_event=ts_event,bid=bid,ask=ask,bid_sz=bid_sz,ask_sz=ask_sz,symbol=sym,seq=seq")
    csv_path = write(tmp_path / "rt.csv.gz", "".join(lines))
    table = pa.table(
        {
            "sym": syms,
            "ts_event": q["ts_event"],
            "ts_recv": q["ts_recv"],
            "bid": q["bid_px"],
            "ask": q["ask_px"],
            "bid_sz": q["bid_sz"],
            "ask_sz": q["ask_sz"],
            "seq": q["seq"],
        }
    )
    pq_path = tmp_path / "rt.parquet"
    pq.write_table(table, pq_path, row_group_size=7)
    for path in (csv_path, pq_path):
        r = FileReplay(path, columns=cmap, ts_unit="ns", chunk_rows=chunk_rows, block_size=256)
        got = read_all(r)
        np.testing.assert_array_equal(got, q)
        assert r.instruments.symbols == list(dict.fromkeys(syms))
        assert r.stats.quarantined == {}


def test_chunking_invariance(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    out_lines = ["symbol,ts,bid,ask,bid_sz,ask_sz\n"]
    ts = T0_MS
    for i in range(3000):
        ts += int(rng.integers(-1, 3))  # some out of order, some equal (duplicates possible)
        sym = ("A", "B", "C")[int(rng.integers(0, 3))]
        bid = 1.0 + int(rng.integers(0, 3)) * 0.01
        ask = bid + (0.01 if rng.random() > 0.05 else -0.01)
        if rng.random() < 0.01:
            out_lines.append(f"{sym},{ts},oops,{ask}\n")
        elif rng.random() < 0.01:
            out_lines.append(f"{sym},{ts},{bid}\n")
        else:
            out_lines.append(f"{sym},{ts},{bid},{ask:.2f},1,1\n")
    path = write(tmp_path / "inv.csv", "".join(out_lines))
    results = []
    for block_size, chunk_rows in ((1 << 22, 1 << 18), (100, 1), (1000, 7), (4096, 256), (333, 1000)):
        r = FileReplay(path, block_size=block_size, chunk_rows=chunk_rows)
        results.append((read_all(r), dict(r.stats.quarantined), r.stats.rows_read, r.instruments.symbols))
    base = results[0]
    assert set(base[1]) >= {"malformed", "crossed", "out_of_order"}
    for got in results[1:]:
        np.testing.assert_array_equal(got[0], base[0])
        assert got[1:] == base[1:]


def test_replay_twice_gives_same_output_and_stats(tmp_path: Path) -> None:
    r = FileReplay(write(tmp_path / "bad.csv", BAD))
    a, sa = read_all(r), msgspec.structs.asdict(r.stats)
    b, sb = read_all(r), msgspec.structs.asdict(r.stats)
    np.testing.assert_array_equal(a, b)
    assert sa == sb


# -- real data ------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_shared_fx_files() -> None:
    fx = SHARED_DATA / "fx"
    if not fx.is_dir():
        pytest.skip(f"shared data folder {fx} is absent (it is not part of a fresh clone)")
    duka = FileReplay(fx / "dukascopy_EURUSD_2019-02-04_48h.csv.gz", chunk_rows=50_000)
    q = read_all(duka)
    assert len(q) + duka.stats.quarantined_total == duka.stats.rows_read == 266_219
    assert duka.stats.quarantined.get("crossed", 0) == 0 and duka.stats.quarantined.get("malformed", 0) == 0
    assert (duka.stats.ts_unit, duka.stats.ts_unit_detected) == ("ms", True)
    assert duka.instruments.symbols == ["EURUSD"]
    assert q["ts_recv"][0] == 1549238400994 * 10**6
    assert (np.diff(q["ts_recv"]) >= 0).all() and (q["bid_px"] < q["ask_px"]).all()
    assert q["bid_px"][0] == 1.14543 and q["bid_sz"][0] == 2.06

    hist = FileReplay(
        fx / "histdata_EURUSD_2020-01-01.csv", has_header=False, columns="ts=0,bid=1,ask=2,bid_sz=3",
        ts_format="%Y%m%d %H%M%S%f", tz="Etc/GMT+5", symbol="EURUSD",
    )
    h = read_all(hist)
    assert hist.stats.rows_read == 9_500 and len(h) + hist.stats.quarantined_total == 9_500
    assert hist.stats.quarantined.get("malformed", 0) == 0
    # First row "20200101 170000065" EST is 22:00:00.065 UTC; the file spans 17:00 to 23:00 EST.
    assert h["ts_recv"][0] == np.datetime64("2020-01-01T22:00:00.065", "ns").astype(np.int64)
    span_h = (h["ts_recv"][-1] - h["ts_recv"][0]) / 3.6e12
    assert 5.9 < span_h < 6.1
    assert (h["flags"] == QuoteFlag.SYNTHETIC_TS).all() and math.isfinite(h["bid_px"].sum())


def test_a_blank_side_is_a_one_sided_quote_and_a_blank_price_alone_is_malformed(tmp_path):
    from engine.domain.quote import QuoteFlag
    from feeds.replay import FileReplay

    path = tmp_path / "q.csv"
    path.write_text(
        "ts,bid,ask,bid_sz,ask_sz\n"
        "1704153600000,100.0,100.1,5,6\n"
        "1704153601000,,100.1,,6\n"  # no bid: one-sided
        "1704153602000,100.0,,5,\n"  # no ask: one-sided
        "1704153603000,,100.1,5,6\n"  # a blank bid with a size: malformed
    )
    src = FileReplay(path, columns="ts=ts,bid=bid,ask=ask,bid_sz=bid_sz,ask_sz=ask_sz", symbol="X")
    q = np.concatenate(list(src.chunks()))
    assert q["bid_px"].tolist() == [100.0, 0.0, 100.0] and q["ask_px"].tolist() == [100.1, 100.1, 0.0]
    assert [bool(f & QuoteFlag.ONE_SIDED) for f in q["flags"]] == [False, True, True]
    assert src.stats.quarantined == {"malformed": 1}
