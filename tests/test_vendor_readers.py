"""Vendor readers: Binance bookTicker, Tardis quotes/book_ticker, HistData and Dukascopy ticks.

Each reader on small files written here in the vendor's documented layout (good rows, malformed
rows counted by rule or rejected with file:line and field), format detection among them, property
tests for the Binance and Tardis parsers, and, when ../shared/data is present, the real files.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.backtest import BacktestConfig, run_backtest
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QuoteFlag
from engine.domain.validate import BadInputError
from feeds import vendors
from feeds.vendors import binance, dukascopy, histdata, tardis
from feeds.vendors.options import ReaderOptions

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MS, US = 1_000_000, 1_000
MINE = ("binance", "tardis", "histdata", "dukascopy")

BN_HEADER = "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time"
BN_ROWS = [
    "3745009483187,42283.50,4.524,42283.60,5.771,1704067200004,1704067200010",
    "3745009483190,42283.50,4.600,42283.60,5.771,1704067200007,1704067200012",
    "3745009483201,42283.40,1.000,42283.70,0.002,1704067200020,1704067200025",
]
TD_HEADER = "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount"
TD_ROWS = [
    "binance-futures,BTCUSDT,1582329601096000,1582329603502092,0.84,9682,9681.92,0.67",
    "binance-futures,ETHUSDT,1582329603401000,1582329603522418,12.5,265.31,265.3,3.1",
    "binance,BTCUSDT,1582329603411000,1582329603600000,1.5,9683.5,9683.1,0.25",
    "binance-futures,BTCUSDT,1582329603542000,1582329603663688,0.84,9682,9681.44,0.363",
]
HD_ROWS = [
    "20200101 170000065,1.121200,1.121720,0",
    "20200101 170010447,1.121200,1.121920,0",
    "20200101 170010498,1.121170,1.121610,0",
]
DK_HEADER = "symbol,ts_ms_utc,bid,ask,bid_volume,ask_volume"
DK_ROWS = [
    "EURUSD,1549238400994,1.14543,1.14545,2.06,1.0",
    "EURUSD,1549238401271,1.14544,1.14546,1.0,0.07",
    "USDJPY,1549238401300,109.912,109.915,1.5,2.25",
]


def write(path: Path, lines: list[str], *, newline_at_end: bool = True) -> Path:
    text = "\n".join(lines) + ("\n" if newline_at_end else "")
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(path.stem + ".csv", text)
    else:
        path.write_text(text)
    return path


def read(source) -> np.ndarray:
    parts = list(source.chunks())
    return np.concatenate(parts) if parts else np.zeros(0)


def sniffers(path: Path) -> list[str]:
    head = vendors.head_of(path)
    return [fmt for fmt in MINE if vendors.module(fmt).sniff(path, head)]


# -- Binance ---------------------------------------------------------------------------------------


def test_binance_header_csv_maps_every_field(tmp_path):
    src = binance.reader(write(tmp_path / "BTCUSDT-bookTicker-2024-01-01.csv", [BN_HEADER, *BN_ROWS]))
    q = read(src)
    assert len(q) == 3 and src.stats.rows_read == 3 and src.stats.quarantined == {}
    assert (src.stats.ts_unit, src.stats.ts_unit_detected) == ("ms", True)
    assert q["ts_recv"].tolist() == [t * MS for t in (1704067200010, 1704067200012, 1704067200025)]
    assert q["ts_event"].tolist() == [t * MS for t in (1704067200004, 1704067200007, 1704067200020)]
    assert q["seq"].tolist() == [3745009483187, 3745009483190, 3745009483201]
    assert q["bid_px"][0] == 42283.5 and q["ask_px"][0] == 42283.6
    assert q["bid_sz"][0] == 4.524 and q["ask_sz"][0] == 5.771
    assert (q["flags"] == 0).all()
    (inst,) = list(src.instruments)
    assert (inst.symbol, inst.venue, inst.calendar) == ("BTCUSDT", "binance-usdm", "24x7")


def test_binance_headerless_csv_and_zip_read_the_same(tmp_path):
    base = read(binance.reader(write(tmp_path / "BTCUSDT-bookTicker-2024-01-01.csv", [BN_HEADER, *BN_ROWS])))
    plain = binance.reader(write(tmp_path / "BTCUSDT-bookTicker-2020-01-01.csv", BN_ROWS))  # older: no header
    np.testing.assert_array_equal(read(plain), base)
    assert plain.stats.ts_unit == "ms"
    archives = tmp_path / "archives"
    archives.mkdir()
    for name, lines in (("BTCUSDT-bookTicker-2024-01-01.zip", [BN_HEADER, *BN_ROWS]),
                        ("BTCUSDT-bookTicker-2020-01-02.zip", BN_ROWS)):
        src = binance.reader(write(archives / name, lines))
        np.testing.assert_array_equal(read(src), base)
        assert src.instruments.symbols == ["BTCUSDT"] and src.stats.ts_unit == "ms"
    assert sorted(p.suffix for p in archives.iterdir()) == [".zip", ".zip"]  # nothing extracted


def test_binance_microsecond_times_are_detected(tmp_path):
    # Binance moved spot archives to microseconds in 2025; the unit follows the data, not the vendor.
    rows = [",".join(f[:5] + [f[5] + "123", f[6] + "456"]) for f in (r.split(",") for r in BN_ROWS)]
    path = write(tmp_path / "BTCUSDT-bookTicker-2025-01-01.csv", rows)
    assert vendors.detect(path) == "binance"
    src = binance.reader(path, ReaderOptions(venue="binance-spot"))
    q = read(src)
    assert (src.stats.ts_unit, src.stats.ts_unit_detected) == ("us", True)
    assert q["ts_recv"][0] == 1704067200010456 * US and q["ts_event"][0] == 1704067200004123 * US


def test_binance_zip_must_hold_one_file(tmp_path):
    path = tmp_path / "BTCUSDT-bookTicker-2024-01.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.csv", "\n".join(BN_ROWS))
        z.writestr("b.csv", "\n".join(BN_ROWS))
    with pytest.raises(ValueError, match="exactly one"):
        read(binance.reader(path))


def test_binance_options_and_venue_defaults(tmp_path):
    path = write(tmp_path / "quotes.csv", BN_ROWS)
    src = binance.reader(path, ReaderOptions(symbol="ETHUSDT", venue="binance-spot",
                                             instrument_defaults={"tick_size": 0.1, "lot_size": 0.001}))
    read(src)
    (inst,) = list(src.instruments)
    assert (inst.symbol, inst.venue, inst.tick_size, inst.lot_size) == ("ETHUSDT", "binance-spot", 0.1, 0.001)
    cm = binance.reader(write(tmp_path / "BTCUSD_PERP-bookTicker-2024-01-01.csv", BN_ROWS))
    assert cm.instruments[0].symbol == "BTCUSD_PERP" and cm.instruments[0].venue == "binance-coinm"
    folder = tmp_path / "futures" / "cm" / "daily"
    folder.mkdir(parents=True)
    assert binance.reader(write(folder / "ETHUSD_240329-bookTicker-2024-01-01.zip", BN_ROWS)).instruments[0].venue \
        == "binance-coinm"
    with pytest.raises(ValueError, match="not Binance bookTicker"):
        binance.reader(write(tmp_path / "other-bookTicker.csv", ["a,b,c", "1,2,3"]))


BN_BAD = [
    BN_HEADER,
    BN_ROWS[0],  # line 2
    "3745009483188,abc,4.524,42283.60,5.771,1704067200005,1704067200011",  # 3: non-numeric price
    "3745009483189,42283.50,4.524,42283.60,5.771,1704067200006",  # 4: a field missing
    "3745009483190,42283.90,4.524,42283.60,5.771,1704067200007,1704067200013",  # 5: crossed
    "3745009483191,42283.50,4.524,42283.60,5.771,1704067200001,1704067200002",  # 6: out of order
    BN_ROWS[2],  # 7
]


def test_binance_bad_rows_are_counted_by_rule(tmp_path):
    src = binance.reader(write(tmp_path / "BTCUSDT-bookTicker-2024-01-01.csv", BN_BAD))
    q = read(src)
    assert q["seq"].tolist() == [3745009483187, 3745009483201]
    assert src.stats.rows_read == 6
    assert src.stats.quarantined == {"malformed": 2, "crossed": 1, "out_of_order": 1}


@pytest.mark.parametrize(
    "line,field,rule",
    [(3, "bid_px", "malformed"), (4, "row", "malformed"), (5, "bid_px", "crossed"), (6, "ts_recv", "out_of_order")],
)
def test_binance_rejecting_policy_names_file_line_and_field(tmp_path, line, field, rule):
    lines = [BN_HEADER, BN_ROWS[0], BN_BAD[line - 1], BN_ROWS[2]]
    path = write(tmp_path / "BTCUSDT-bookTicker-2024-01-01.csv", lines)
    with pytest.raises(BadInputError) as exc:
        read(binance.reader(path, ReaderOptions(policy="reject")))
    assert (exc.value.line, exc.value.field, exc.value.rule) == (3, field, rule)
    assert f"{path}:3" in str(exc.value)


# -- Tardis ----------------------------------------------------------------------------------------


def test_tardis_quotes_one_instrument_per_exchange_and_symbol(tmp_path):
    src = tardis.reader(write(tmp_path / "quotes.csv", [TD_HEADER, *TD_ROWS]))
    q = read(src)
    assert len(q) == 4 and src.stats.quarantined == {}
    assert (src.stats.ts_unit, src.stats.ts_unit_detected) == ("us", True)
    got = [(i.symbol, i.venue, i.calendar) for i in src.instruments]
    assert got == [("BTCUSDT", "binance-futures", "24x7"), ("ETHUSDT", "binance-futures", "24x7"),
                   ("binance:BTCUSDT", "binance", "24x7")]
    assert q["instrument"].tolist() == [0, 1, 2, 0]
    # Ask columns come first in the file: the mapping must not swap sides.
    assert (q["bid_px"][0], q["ask_px"][0], q["bid_sz"][0], q["ask_sz"][0]) == (9681.92, 9682.0, 0.67, 0.84)
    assert q["ts_recv"][0] == 1582329603502092 * US and q["ts_event"][0] == 1582329601096000 * US
    gz = tardis.reader(write(tmp_path / "binance-futures_quotes_2020-02-22_BTCUSDT.csv.gz", [TD_HEADER, *TD_ROWS]))
    np.testing.assert_array_equal(read(gz), q)
    assert gz.stats.ts_unit == "us"


def test_tardis_book_ticker_columns_by_name(tmp_path):
    # Columns in another order, an extra one, and no amounts: sizes are 0.
    lines = ["symbol,exchange,local_timestamp,timestamp,bid_price,ask_price,extra",
             "BTCUSDT,binance,1700000000000100,1700000000000000,100.5,100.6,x",
             "BTCUSDT,binance,1700000000000200,1700000000000150,100.4,100.6,y"]
    src = tardis.reader(write(tmp_path / "binance_book_ticker_2023-11-14_BTCUSDT.csv.gz", lines))
    q = read(src)
    assert q["bid_px"].tolist() == [100.5, 100.4] and (q["bid_sz"] == 0).all() and (q["ask_sz"] == 0).all()
    assert src.instruments[0].venue == "binance"


TD_BAD = [
    TD_HEADER,
    TD_ROWS[0],  # 2
    "binance-futures,BTCUSDT,1582329603401000,1582329603522418,0.84,9682,,0.003",  # 3: empty bid (Tardis empty cell)
    "binance-futures,BTCUSDT,1582329603411000,1582329603532418,0.84,9682",  # 4: fields missing
    "binance-futures,BTCUSDT,1582329603421000,1582329603542418,0.84,9681,9682.5,0.01",  # 5: crossed
    "binance-futures,BTCUSDT,1582329603001000,1582329603002000,0.84,9682,9681.5,0.01",  # 6: out of order
    "binance-futures,BTCUSDT,1582329603431000,1582329603552418,0.84,9682,9681.5,oops",  # 7: non-numeric amount
    TD_ROWS[3],  # 8
]


def test_tardis_bad_rows_are_counted_by_rule(tmp_path):
    src = tardis.reader(write(tmp_path / "quotes.csv", TD_BAD))
    q = read(src)
    assert len(q) == 2 and src.stats.rows_read == 7
    assert src.stats.quarantined == {"malformed": 3, "crossed": 1, "out_of_order": 1}


@pytest.mark.parametrize(
    "line,field,rule",
    [(3, "bid_px", "malformed"), (4, "row", "malformed"), (5, "bid_px", "crossed"),
     (6, "ts_recv", "out_of_order"), (7, "bid_sz", "malformed")],
)
def test_tardis_rejecting_policy_names_file_line_and_field(tmp_path, line, field, rule):
    path = write(tmp_path / "quotes.csv.gz", [TD_HEADER, TD_ROWS[0], TD_BAD[line - 1], TD_ROWS[3]])
    with pytest.raises(BadInputError) as exc:
        read(tardis.reader(path, ReaderOptions(policy="reject")))
    assert (exc.value.line, exc.value.field, exc.value.rule) == (3, field, rule)
    assert f"{path}:3" in str(exc.value)


def test_tardis_fixed_instrument_table_and_refused_symbol(tmp_path):
    path = write(tmp_path / "quotes.csv", [TD_HEADER, *TD_ROWS])
    table = InstrumentTable([Instrument(symbol="binance-futures:BTCUSDT", venue="binance-futures")])
    src = tardis.reader(path, ReaderOptions(instruments=table))
    q = read(src)
    assert len(q) == 2 and (q["instrument"] == 0).all()
    assert src.stats.quarantined == {"unknown_symbol": 2} and len(table) == 1
    with pytest.raises(ValueError, match="symbol"):
        tardis.reader(path, ReaderOptions(symbol="BTCUSDT"))


def test_tardis_truncated_gzip_is_a_bad_input_error(tmp_path):
    rows = [TD_ROWS[0].replace("1582329603502092", str(1582329603502092 + k)) for k in range(20_000)]
    full = write(tmp_path / "full.csv.gz", [TD_HEADER, *rows]).read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(full[: len(full) // 2])
    src = tardis.reader(cut, ReaderOptions(block_size=1 << 14))
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        read(src)
    assert 0 < src.stats.rows_read < 20_000  # read up to the cut, then stopped with file:line


def test_tardis_empty_gzip_reads_nothing(tmp_path):
    src = tardis.reader(write(tmp_path / "quotes.csv.gz", [], newline_at_end=False))
    assert len(read(src)) == 0 and src.stats.rows_read == 0


# -- HistData --------------------------------------------------------------------------------------


def test_histdata_est_clock_zero_sizes_and_symbol_from_name(tmp_path):
    src = histdata.reader(write(tmp_path / "DAT_ASCII_EURUSD_T_202001.csv", HD_ROWS))
    q = read(src)
    assert len(q) == 3 and src.stats.quarantined == {}
    # 17:00:00.065 EST (UTC-5, no DST) is 22:00:00.065 UTC.
    assert q["ts_recv"][0] == np.datetime64("2020-01-01T22:00:00.065", "ns").astype(np.int64)
    assert (q["ts_event"] == q["ts_recv"]).all() and (q["flags"] == QuoteFlag.SYNTHETIC_TS).all()
    assert (q["bid_sz"] == 0).all() and (q["ask_sz"] == 0).all()
    (inst,) = list(src.instruments)
    assert (inst.symbol, inst.venue, inst.calendar, inst.tick_size) == ("EURUSD", "histdata", "FX", 0.00001)
    # A July time is still UTC-5: no daylight saving.
    july = read(histdata.reader(write(tmp_path / "histdata_USDJPY_2020-07-01.csv",
                                      ["20200701 120000000;107.512;107.515;0"])))
    assert july["ts_recv"][0] == np.datetime64("2020-07-01T17:00:00", "ns").astype(np.int64)
    assert histdata.symbol_from_name(tmp_path / "histdata_USDJPY_2020-07-01.csv") == "USDJPY"
    assert histdata.reader(tmp_path / "histdata_USDJPY_2020-07-01.csv").instruments[0].tick_size == 0.001


HD_BAD = [
    HD_ROWS[0],  # 1
    "2020-01-01 17:00:10,1.121200,1.121920,0",  # 2: time not in the format
    "20200101 170010447,1.12x,1.121920,0",  # 3: non-numeric price
    "20200101 170010448,1.121200",  # 4: fields missing
    "20200101 170010449,1.121900,1.121800,0",  # 5: crossed
    "20200101 165959000,1.121200,1.121720,0",  # 6: out of order
    HD_ROWS[2],  # 7
]


def test_histdata_bad_rows(tmp_path):
    path = write(tmp_path / "histdata_EURUSD_2020-01-01.csv", HD_BAD)
    src = histdata.reader(path)
    assert len(read(src)) == 2
    assert src.stats.quarantined == {"malformed": 3, "crossed": 1, "out_of_order": 1}
    for line, field in ((2, "ts_recv"), (3, "bid_px"), (4, "row")):
        bad = write(tmp_path / f"bad{line}_EURUSD.csv", [HD_ROWS[0], HD_BAD[line - 1]])
        with pytest.raises(BadInputError) as exc:
            read(histdata.reader(bad, ReaderOptions(policy="reject")))
        assert (exc.value.line, exc.value.field) == (2, field) and f"{bad}:2" in str(exc.value)


def test_histdata_zero_sizes_run_through_the_backtester(tmp_path):
    rows = [f"20200102 10{m:02d}{s:02d}000,1.1212{m % 10},1.1213{m % 10},0" for m in range(30) for s in (0, 30)]
    src = histdata.reader(write(tmp_path / "histdata_EURUSD_2020-01-02.csv", rows))
    res = run_backtest(src, BacktestConfig(strategy="none", interval="raw"))
    assert res.quotes_in == 60 and res.source.quarantined == {}


# -- Dukascopy -------------------------------------------------------------------------------------


def test_dukascopy_volumes_in_base_units_and_symbols(tmp_path):
    src = dukascopy.reader(write(tmp_path / "ticks.csv.gz", [DK_HEADER, *DK_ROWS]))
    q = read(src)
    assert (src.stats.ts_unit, src.stats.ts_unit_detected) == ("ms", True) and src.stats.quarantined == {}
    assert q["bid_sz"].tolist() == [2_060_000.0, 1_000_000.0, 1_500_000.0]
    assert q["ask_sz"].tolist() == [1_000_000.0, 70_000.0, 2_250_000.0]
    assert [(i.symbol, i.venue, i.calendar) for i in src.instruments] == [("EURUSD", "dukascopy", "FX"),
                                                                          ("USDJPY", "dukascopy", "FX")]
    kept = read(dukascopy.reader(tmp_path / "ticks.csv.gz", ReaderOptions(volume_scale=1)))
    assert kept["bid_sz"].tolist() == [2.06, 1.0, 1.5]


def test_dukascopy_node_layout(tmp_path):
    lines = ["timestamp,askPrice,bidPrice,askVolume,bidVolume",
             "1549238400994,1.14545,1.14543,1.0,2.06", "1549238401271,1.14546,1.14544,1,1"]
    src = dukascopy.reader(write(tmp_path / "eurusd-tick-2019-02-04-2019-02-05.csv", lines))
    q = read(src)
    assert src.instruments.symbols == ["EURUSD"]
    assert q["bid_px"][0] == 1.14543 and q["ask_px"][0] == 1.14545 and q["bid_sz"][0] == 2_060_000.0


def test_dukascopy_bad_rows(tmp_path):
    lines = [DK_HEADER, DK_ROWS[0], "EURUSD,1549238401000,1.14544,nan?,1.0,1.0", "EURUSD,1549238401100,1.1456,1.1455,1,1",
             "EURUSD,1549238400000,1.14544,1.14546,1,1", "EURUSD,1549238401200,1.14544"]
    path = write(tmp_path / "ticks.csv", lines)
    src = dukascopy.reader(path)
    assert len(read(src)) == 1
    assert src.stats.quarantined == {"malformed": 2, "crossed": 1, "out_of_order": 1}
    with pytest.raises(BadInputError) as exc:
        read(dukascopy.reader(path, ReaderOptions(policy="reject")))
    assert (exc.value.line, exc.value.field) == (3, "ask_px") and f"{path}:3" in str(exc.value)


# -- detection -------------------------------------------------------------------------------------


def test_detect_picks_each_format_and_no_other(tmp_path):
    cases = {
        write(tmp_path / "a.csv", [BN_HEADER, *BN_ROWS]): "binance",
        write(tmp_path / "b.csv", BN_ROWS): "binance",
        write(tmp_path / "c.zip", BN_ROWS): "binance",
        write(tmp_path / "ETHUSDT-bookTicker-2024-01-01.csv", [BN_HEADER]): "binance",  # by name
        write(tmp_path / "d.csv", [TD_HEADER, *TD_ROWS]): "tardis",
        write(tmp_path / "e.csv.gz", [TD_HEADER, *TD_ROWS]): "tardis",
        write(tmp_path / "f.csv", HD_ROWS): "histdata",
        write(tmp_path / "g.txt", [r.replace(",", ";") for r in HD_ROWS]): "histdata",
        write(tmp_path / "h.csv.gz", [DK_HEADER, *DK_ROWS]): "dukascopy",
        write(tmp_path / "i.csv", ["timestamp,askPrice,bidPrice,askVolume,bidVolume", "1549238400994,1.2,1.1,1,1"]):
            "dukascopy",
    }
    for path, fmt in cases.items():
        assert vendors.detect(path) == fmt, path.name
        assert sniffers(path) == [fmt], path.name
        assert len(read(vendors.open_source(path))) >= 0
    # A generic CSV is none of these.
    other = write(tmp_path / "plain.csv", ["ts,bid,ask", "1700000000000,1.0,1.1"])
    assert sniffers(other) == [] and vendors.detect(other) == "generic"


# -- properties ------------------------------------------------------------------------------------

_price = st.decimals(min_value="0.0001", max_value="999999", places=4, allow_nan=False, allow_infinity=False)
_size = st.decimals(min_value="0", max_value="100000", places=3, allow_nan=False, allow_infinity=False)
_row = st.tuples(_price, st.decimals(min_value="0.0001", max_value="1000", places=4), _size, _size,
                 st.integers(0, 5000), st.integers(1, 10_000), st.integers(0, 2**63 - 1))

_SETTINGS = settings(max_examples=40, deadline=None)


def _fmt(d) -> str:
    return f"{d:f}"


@_SETTINGS
@given(rows=st.lists(_row, min_size=1, max_size=30), header=st.booleans(), zipped=st.booleans())
def test_binance_rows_read_back_exactly(tmp_path_factory, rows, header, zipped):
    t, lines, want = 1_600_000_000_000, [], []
    for bid, spread, bq, aq, lag, step, uid in rows:
        t += step  # strictly increasing event time: no duplicates, no disorder
        ask = bid + spread
        lines.append(f"{uid},{_fmt(bid)},{_fmt(bq)},{_fmt(ask)},{_fmt(aq)},{t - lag},{t}")
        want.append((uid, float(_fmt(bid)), float(_fmt(bq)), float(_fmt(ask)), float(_fmt(aq)), t - lag, t))
    path = tmp_path_factory.mktemp("bn") / ("BTCUSDT-bookTicker-2024-01-01" + (".zip" if zipped else ".csv"))
    src = binance.reader(write(path, ([BN_HEADER] if header else []) + lines))
    q = read(src)
    assert src.stats.quarantined == {} and src.stats.ts_unit == "ms"
    got = list(zip(q["seq"].tolist(), q["bid_px"].tolist(), q["bid_sz"].tolist(), q["ask_px"].tolist(),
                   q["ask_sz"].tolist(), (q["ts_event"] // MS).tolist(), (q["ts_recv"] // MS).tolist()))
    assert got == want


_exchange = st.sampled_from(["binance-futures", "huobi-dm-swap", "deribit"])
_symbol = st.sampled_from(["BTCUSDT", "BTC-USD", "ETH-PERPETUAL"])


@_SETTINGS
@given(rows=st.lists(st.tuples(_exchange, _symbol, _row), min_size=1, max_size=30), gz=st.booleans())
def test_tardis_rows_read_back_exactly(tmp_path_factory, rows, gz):
    t, lines, want = 1_600_000_000_000_000, [TD_HEADER], []
    for ex, sym, (bid, spread, bq, aq, lag, step, _) in rows:
        t += step
        ask = bid + spread
        assume(float(_fmt(bid)) < float(_fmt(ask)))
        lines.append(f"{ex},{sym},{t - lag},{t},{_fmt(aq)},{_fmt(ask)},{_fmt(bid)},{_fmt(bq)}")
        want.append((ex, sym, float(_fmt(bid)), float(_fmt(bq)), float(_fmt(ask)), float(_fmt(aq)), t - lag, t))
    path = tmp_path_factory.mktemp("td") / ("quotes.csv.gz" if gz else "quotes.csv")
    src = tardis.reader(write(path, lines))
    q = read(src)
    assert src.stats.quarantined == {} and src.stats.ts_unit == "us"
    by_id = {k: i for k, i in enumerate(src.instruments)}
    keys = {(i.venue, i.symbol.split(":")[-1]) for i in src.instruments}
    assert keys == {(ex, sym) for ex, sym, _ in rows} and len(keys) == len(src.instruments)
    got = [(by_id[i].venue, by_id[i].symbol.split(":")[-1], b, bs, a, as_, te // US, tr // US)
           for i, b, bs, a, as_, te, tr in zip(q["instrument"].tolist(), q["bid_px"].tolist(), q["bid_sz"].tolist(),
                                               q["ask_px"].tolist(), q["ask_sz"].tolist(), q["ts_event"].tolist(),
                                               q["ts_recv"].tolist())]
    assert got == want


# -- real data -------------------------------------------------------------------------------------


def _shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (it is not part of a fresh clone)")
    return path


def _detect_read_and_backtest(path: Path, fmt: str):
    assert vendors.detect(path) == fmt
    src = vendors.open_source(path)
    q = read(src)
    res = run_backtest(vendors.open_source(path), BacktestConfig(strategy="none"))
    assert res.quotes_in == len(q)
    assert res.outside_session.sum() == 0  # every tick inside its calendar (FX: the EST clock lines up)
    return src, q


@pytest.mark.shared_data
@pytest.mark.parametrize("name,rows,venue,symbol", [
    ("binance-futures_quotes_BTCUSDT_2020-02-22.csv", 9_999, "binance-futures", "BTCUSDT"),
    ("huobi-dm-swap_quotes_BTC-USD_2020-05-01.csv", 10, "huobi-dm-swap", "BTC-USD"),
])
def test_shared_tardis_files(name, rows, venue, symbol):
    src, q = _detect_read_and_backtest(_shared("tardis", name), "tardis")
    assert src.stats.rows_read == rows and len(q) == rows
    assert src.stats.quarantined == {}  # the real files break no rule
    assert (src.stats.ts_unit, src.stats.ts_unit_detected) == ("us", True)
    assert [(i.venue, i.symbol) for i in src.instruments] == [(venue, symbol)]
    assert (q["bid_px"] < q["ask_px"]).all() and (np.diff(q["ts_recv"]) >= 0).all()
    assert (q["ts_event"] <= q["ts_recv"]).all()  # exchange time before arrival in both files


@pytest.mark.shared_data
def test_shared_dukascopy_file():
    src, q = _detect_read_and_backtest(_shared("fx", "dukascopy_EURUSD_2019-02-04_48h.csv.gz"), "dukascopy")
    assert src.stats.rows_read == len(q) == 266_219 and src.stats.quarantined == {}
    assert (src.stats.ts_unit, src.stats.ts_unit_detected) == ("ms", True)
    assert q["ts_recv"][0] == 1549238400994 * MS and q["bid_sz"][0] == 2_060_000.0
    assert src.instruments.symbols == ["EURUSD"] and src.instruments[0].calendar == "FX"


@pytest.mark.shared_data
def test_shared_histdata_file():
    src, q = _detect_read_and_backtest(_shared("fx", "histdata_EURUSD_2020-01-01.csv"), "histdata")
    assert src.stats.rows_read == len(q) == 9_500 and src.stats.quarantined == {}
    # First row 2020-01-01 17:00:00.065 EST = 22:00:00.065 UTC; the file spans 17:00 to 23:00 EST.
    assert q["ts_recv"][0] == np.datetime64("2020-01-01T22:00:00.065", "ns").astype(np.int64)
    assert 5.9 < (q["ts_recv"][-1] - q["ts_recv"][0]) / 3.6e12 < 6.1
    assert (q["bid_sz"] == 0).all() and src.instruments.symbols == ["EURUSD"]


def test_binance_header_with_quoted_names(tmp_path):
    # Spreadsheet tools and Arrow's CSV writer quote header names: still the Binance header.
    path = tmp_path / "BTCUSDT-bookTicker-2024-01-02.csv"
    path.write_text(
        '"update_id","best_bid_price","best_bid_qty","best_ask_price","best_ask_qty","transaction_time","event_time"\n'
        "1,100.0,1,100.1,2,1704153600000,1704153600001\n"
    )
    from feeds.vendors import detect, open_source

    assert detect(path) == "binance"
    q = np.concatenate(list(open_source(path).chunks()))
    assert q["seq"].tolist() == [1] and q["ask_px"].tolist() == [100.1]
