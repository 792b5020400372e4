"""feeds.vendors.databento (Databento DBN) and feeds.vendors.lobster (LOBSTER level-1 pairs).

DBN files are written here with databento-dbn's own record classes and metadata encoder; LOBSTER
pairs are written by hand per https://lobsterdata.com/info/DataStructure.php. The shared-data tests
read the real Databento samples in ../shared/data and skip when it is absent.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pyarrow as pa
import pytest

from engine.backtest import BacktestConfig, run_backtest
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag, concat_rows
from engine.domain.source import QuoteSource
from engine.domain.validate import BadInputError, ValidationPolicy
from feeds.vendors import databento as dbn_vendor
from feeds.vendors import detect, lobster, open_source
from feeds.vendors.options import ReaderOptions

try:  # the optional 'dbn' extra: without it the DBN tests skip, the LOBSTER ones still run
    import databento_dbn as d
except ImportError:  # pragma: no cover - the test extra installs it
    d = None
needs_dbn = pytest.mark.skipif(d is None, reason="databento-dbn (the 'dbn' extra) is not installed")

S = 1_000_000_000
T0 = 1_719_878_400 * S  # 2024-07-02 00:00:00 UTC
UNDEF = np.iinfo(np.int64).max  # databento_dbn.UNDEF_PRICE
PX = 1_000_000_000  # DBN price units per 1.0
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ONE_SIDED = int(QuoteFlag.ONE_SIDED)
SYNTHETIC = int(QuoteFlag.SYNTHETIC_TS)


def read_all(src: QuoteSource) -> np.ndarray:
    parts = list(src.chunks())
    return concat_rows(parts) if parts else np.zeros(0, QUOTE_DTYPE)


# -- writing DBN -------------------------------------------------------------------------------------


def mapping(symbol: str, iid: int, start=dt.date(2024, 7, 1), end=dt.date(2024, 7, 3)):
    return NS(raw_symbol=symbol, intervals=[NS(start_date=start, end_date=end, symbol=str(iid))])


def write_dbn(path: Path, schema: str, records: list, *, dataset: str = "GLBX.MDP3", mappings=None,
              version: int | None = None, ts_out: bool = False, stype_in=None) -> Path:
    stype_in = d.SType.RAW_SYMBOL if stype_in is None else stype_in
    meta = d.Metadata(
        dataset=dataset, start=T0, end=T0 + 3600 * S, stype_in=stype_in, stype_out=d.SType.INSTRUMENT_ID,
        schema=d.Schema(schema), symbols=[m.raw_symbol for m in mappings or []], mappings=mappings or [],
        ts_out=ts_out, **({} if version is None else {"version": version}),
    )
    data = meta.encode() + b"".join(bytes(r) for r in records)
    if path.name.endswith(".zst"):
        with pa.output_stream(str(path), compression="zstd") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def mbp1(ts, bid, ask, bsz=5, asz=7, *, iid=118, seq=0, action="A", ts_event=None, ts_out=None):
    kw = {} if ts_out is None else {"ts_out": ts_out}
    return d.MBP1Msg(
        publisher_id=1, instrument_id=iid, ts_event=ts - 1000 if ts_event is None else ts_event,
        price=bid, size=1, action=d.Action(action), side=d.Side.BID, depth=0, ts_recv=ts, flags=130,
        sequence=seq, levels=d.BidAskPair(bid_px=bid, ask_px=ask, bid_sz=bsz, ask_sz=asz), **kw,
    )


def bbo(rtype, ts, bid, ask, bsz=5, asz=7, *, iid=118, seq=0):
    return d.BBOMsg(
        rtype=rtype, publisher_id=1, instrument_id=iid, ts_event=ts - 5 * S, price=bid, size=1,
        side=d.Side.ASK, ts_recv=ts, sequence=seq, levels=d.BidAskPair(bid_px=bid, ask_px=ask, bid_sz=bsz, ask_sz=asz),
    )


def px(x: float) -> int:
    return round(x * PX)


def reference(path: Path) -> list:
    """The records as databento-dbn itself decodes them."""
    raw = pa.input_stream(str(path), compression="zstd" if path.name.endswith(".zst") else None).read()
    dec = d.DBNDecoder()
    dec.write(raw)
    return [r for r in dec.decode() if not isinstance(r, d.Metadata)]


# -- DBN: the four schemas ---------------------------------------------------------------------------


def make_records(schema: str, n: int = 6) -> list:
    rows = [(T0 + k * S, px(5500 + k * 0.25), px(5500.25 + k * 0.25), 5 + k, 7 + k) for k in range(n)]
    rows[2] = (rows[2][0], rows[2][1], UNDEF, 5, 0)  # an empty ask side
    if schema in ("mbp-1", "tbbo"):
        return [mbp1(ts, b, a, bs, as_, seq=100 + k, action="T" if schema == "tbbo" else "A")
                for k, (ts, b, a, bs, as_) in enumerate(rows)]
    rtype = d.RType.BBO_1S if schema == "bbo-1s" else d.RType.BBO_1M
    return [bbo(rtype, ts, b, a, bs, as_, seq=100 + k) for k, (ts, b, a, bs, as_) in enumerate(rows)]


@needs_dbn
@pytest.mark.parametrize("schema", ["mbp-1", "tbbo", "bbo-1s", "bbo-1m"])
@pytest.mark.parametrize("suffix", [".dbn", ".dbn.zst"])
def test_dbn_schemas_read_as_quotes(tmp_path, schema, suffix):
    recs = make_records(schema)
    f = write_dbn(tmp_path / f"es_{schema}{suffix}", schema, recs, mappings=[mapping("ESU4", 118)])
    assert detect(f) == "databento"
    src = open_source(f, now_ns=T0, one_sided="skip")
    q = read_all(src)
    assert src.instruments.symbols == ["ESU4"]
    inst = src.instruments[0]
    assert (inst.venue, inst.calendar) == ("GLBX.MDP3", "CME")
    assert src.stats.rows_read == 6 and src.stats.skipped == {"one_sided": 1} and not src.stats.quarantined
    keep = [0, 1, 3, 4, 5]
    ref = [recs[k] for k in keep]
    np.testing.assert_array_equal(q["ts_recv"], [r.ts_recv for r in ref])
    np.testing.assert_array_equal(q["ts_event"], [r.ts_event for r in ref])
    np.testing.assert_array_equal(q["bid_px"], [5500 + k * 0.25 for k in keep])  # exact: int / 1e9
    np.testing.assert_array_equal(q["ask_px"], [5500.25 + k * 0.25 for k in keep])
    np.testing.assert_array_equal(q["bid_sz"], [5 + k for k in keep])
    np.testing.assert_array_equal(q["ask_sz"], [7 + k for k in keep])
    np.testing.assert_array_equal(q["seq"], [100 + k for k in keep])
    assert (q["instrument"] == 0).all() and (q["flags"] == 0).all()
    assert src.stats.ts_unit == "ns"


@needs_dbn
def test_dbn_one_sided_records_are_kept_as_one_sided_quotes(tmp_path):
    f = write_dbn(tmp_path / "a.dbn", "bbo-1s", make_records("bbo-1s"), mappings=[mapping("ESU4", 118)])
    src = dbn_vendor.reader(f, ReaderOptions(now_ns=T0))  # one_sided="keep", the default
    q = read_all(src)
    assert len(q) == 6 and not src.stats.quarantined and not src.stats.skipped
    # The missing side is price 0 and size 0, flagged, as the live path builds it; the validator
    # lets it through even under a policy that rejects bad prices: it is not bad input.
    assert q["flags"][2] == ONE_SIDED and q["ask_px"][2] == 0.0 and q["ask_sz"][2] == 0.0
    assert q["bid_px"][2] == 5500.5
    assert len(read_all(dbn_vendor.reader(f, ReaderOptions(policy="negative=reject", now_ns=T0)))) == 6


@needs_dbn
def test_dbn_mbp1_keeps_bbo_changes_by_default(tmp_path):
    b, a = px(5500), px(5500.25)
    recs = [
        mbp1(T0, b, a, 5, 7, seq=1),
        mbp1(T0 + 1, b, a, 5, 7, seq=2, action="T"),  # a trade: the book is as it was
        mbp1(T0 + 2, b, a, 4, 7, seq=3, action="C"),  # the bid size changes
        mbp1(T0 + 3, b, a, 4, 7, seq=4, action="A"),  # a change below the top: same BBO
        mbp1(T0 + 4, b, px(5500.5), 4, 1, seq=5, action="C"),
    ]
    f = write_dbn(tmp_path / "m.dbn", "mbp-1", recs, mappings=[mapping("ESU4", 118)])
    src = open_source(f, now_ns=T0)
    q = read_all(src)
    assert q["seq"].tolist() == [1, 3, 5]
    assert src.stats.skipped == {"unchanged": 2} and src.stats.rows_read == 5
    src = open_source(f, changes_only=False, now_ns=T0)
    assert read_all(src)["seq"].tolist() == [1, 2, 3, 4, 5] and not src.stats.skipped


@needs_dbn
def test_dbn_changes_are_per_instrument_and_cross_chunks(tmp_path):
    rng = np.random.default_rng(3)
    recs, expect = [], []
    last: dict[int, tuple] = {}
    for k in range(400):
        iid = int(rng.choice([118, 119, 120]))
        prev = last.get(iid)
        if prev is not None and rng.random() < 0.4:
            book = prev
        else:
            lvl = int(rng.integers(0, 3))
            book = (px(5500 + lvl * 0.25), px(5500.25 + lvl * 0.25), int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        if book != prev:
            expect.append(k + 1)
        last[iid] = book
        recs.append(mbp1(T0 + k * 1000, *book, iid=iid, seq=k + 1))
    maps = [mapping("A", 118), mapping("B", 119), mapping("C", 120)]
    f = write_dbn(tmp_path / "m.dbn.zst", "mbp-1", recs, mappings=maps)
    for chunk_rows in (7, 64, 1 << 18):
        src = dbn_vendor.reader(f, ReaderOptions(chunk_rows=chunk_rows, now_ns=T0))
        q = read_all(src)
        assert q["seq"].tolist() == expect, chunk_rows
        assert src.instruments.symbols == ["A", "B", "C"]
        assert src.stats.skipped.get("unchanged", 0) == 400 - len(expect)
        np.testing.assert_array_equal(q["instrument"], [["A", "B", "C"].index(
            {118: "A", 119: "B", 120: "C"}[recs[s - 1].instrument_id]) for s in expect])


@needs_dbn
def test_dbn_matches_databento_decoder(tmp_path):
    rng = np.random.default_rng(1)
    recs = [
        mbp1(T0 + k * 997, px(5000 + int(rng.integers(0, 100)) * 0.25), px(5030 + int(rng.integers(0, 100)) * 0.25),
             int(rng.integers(0, 1000)), int(rng.integers(0, 1000)), iid=int(rng.choice([5, 6])), seq=k)
        for k in range(300)
    ]
    f = write_dbn(tmp_path / "x.dbn.zst", "tbbo", recs, mappings=[mapping("E", 5), mapping("N", 6)])
    q = read_all(dbn_vendor.reader(f, ReaderOptions(now_ns=T0, chunk_rows=50)))
    ref = reference(f)
    assert len(q) == len(ref) == 300
    np.testing.assert_array_equal(q["ts_recv"], [r.ts_recv for r in ref])
    np.testing.assert_array_equal(q["ts_event"], [r.ts_event for r in ref])
    np.testing.assert_array_equal(q["bid_px"], [r.levels[0].pretty_bid_px for r in ref])
    np.testing.assert_array_equal(q["ask_px"], [r.levels[0].pretty_ask_px for r in ref])
    np.testing.assert_array_equal(q["bid_sz"], [r.levels[0].bid_sz for r in ref])
    np.testing.assert_array_equal(q["ask_sz"], [r.levels[0].ask_sz for r in ref])
    np.testing.assert_array_equal(q["seq"], [r.sequence for r in ref])
    np.testing.assert_array_equal(q["instrument"], [0 if r.instrument_id == 5 else 1 for r in ref])


@needs_dbn
def test_dbn_undefined_ts_event_and_ts_out_and_v1(tmp_path):
    recs = [mbp1(T0 + k, px(10), px(10.5), seq=k, ts_event=d.UNDEF_TIMESTAMP if k == 1 else None, ts_out=T0 + k + 9)
            for k in range(3)]
    f = write_dbn(tmp_path / "o.dbn", "tbbo", recs, mappings=[mapping("X", 118)], ts_out=True)
    q = read_all(dbn_vendor.reader(f, ReaderOptions(now_ns=T0)))
    assert len(q) == 3 and q["flags"].tolist() == [0, SYNTHETIC, 0]
    assert q["ts_event"][1] == q["ts_recv"][1] == T0 + 1
    # A DBN version 1 file (as Databento wrote before 2024): same record layout, older metadata.
    f1 = write_dbn(tmp_path / "v1.dbn.zst", "mbp-1", [mbp1(T0, px(10), px(10.5))], mappings=[mapping("X", 118)], version=1)
    with open(f1, "rb") as fh:
        assert pa.input_stream(fh, compression="zstd").read(4) == b"DBN\x01"
    assert detect(f1) == "databento"
    q = read_all(dbn_vendor.reader(f1, ReaderOptions(now_ns=T0)))
    assert q["bid_px"].tolist() == [10.0] and q["ask_px"].tolist() == [10.5]


@needs_dbn
def test_dbn_symbology(tmp_path):
    recs = [mbp1(T0 + k, px(10 + k), px(11 + k), iid=iid) for k, iid in enumerate([7, 8, 9, 7])]
    # A parent symbol (several ids at once): each id is named by itself; an unmapped id too.
    parent = NS(raw_symbol="ES.FUT", intervals=[NS(start_date=dt.date(2024, 7, 1), end_date=dt.date(2024, 7, 3), symbol="7"),
                                                NS(start_date=dt.date(2024, 7, 1), end_date=dt.date(2024, 7, 3), symbol="8")])
    f = write_dbn(tmp_path / "p.dbn", "tbbo", recs, mappings=[parent], stype_in=d.SType.PARENT)
    src = dbn_vendor.reader(f, ReaderOptions(now_ns=T0))
    q = read_all(src)
    assert src.instruments.symbols == ["7", "8", "9"]
    assert q["instrument"].tolist() == [0, 1, 2, 0]
    # A raw symbol whose id changed between dates stays one instrument; an id reused by another
    # symbol on another date follows the date of ts_recv.
    day = 86_400 * S
    recs = [mbp1(T0 - day + 5, px(1), px(2), iid=7), mbp1(T0 + 5, px(1), px(2), iid=8), mbp1(T0 + 6, px(3), px(4), iid=7)]
    maps = [
        NS(raw_symbol="AAPL", intervals=[NS(start_date=dt.date(2024, 7, 1), end_date=dt.date(2024, 7, 2), symbol="7"),
                                         NS(start_date=dt.date(2024, 7, 2), end_date=dt.date(2024, 7, 3), symbol="8")]),
        NS(raw_symbol="MSFT", intervals=[NS(start_date=dt.date(2024, 7, 2), end_date=dt.date(2024, 7, 3), symbol="7")]),
    ]
    f = write_dbn(tmp_path / "r.dbn", "tbbo", recs, mappings=maps, dataset="XNAS.ITCH")
    src = dbn_vendor.reader(f, ReaderOptions(now_ns=T0))
    q = read_all(src)
    assert [src.instruments[i].symbol for i in q["instrument"]] == ["AAPL", "AAPL", "MSFT"]
    assert {(i.venue, i.calendar) for i in src.instruments} == {("XNAS.ITCH", "XNYS")}


@needs_dbn
def test_dbn_fixed_table_and_options(tmp_path):
    recs = [mbp1(T0 + k, px(10), px(11 + k), iid=iid) for k, iid in enumerate([7, 8, 7])]
    f = write_dbn(tmp_path / "f.dbn", "tbbo", recs, mappings=[mapping("A", 7), mapping("B", 8)])
    table = InstrumentTable([Instrument(symbol="A", venue="GLBX.MDP3", calendar="CME")])
    src = dbn_vendor.reader(f, ReaderOptions(instruments=table, now_ns=T0))
    assert len(read_all(src)) == 2 and src.stats.quarantined == {"unknown_symbol": 1}
    with pytest.raises(BadInputError, match="unknown_symbol"):
        read_all(dbn_vendor.reader(f, ReaderOptions(instruments=table, policy="reject", now_ns=T0)))
    src = dbn_vendor.reader(f, ReaderOptions(calendar="24x7", venue="CME", instrument_defaults={"tick_size": 0.25}, now_ns=T0))
    assert {(i.venue, i.calendar, i.tick_size) for i in src.instruments} == {("CME", "24x7", 0.25)}
    with pytest.raises(ValueError, match="symbology"):
        dbn_vendor.reader(f, ReaderOptions(symbol="ES"))
    with pytest.raises(ValueError, match="one_sided"):
        dbn_vendor.reader(f, ReaderOptions(one_sided="drop"))


def test_dbn_calendar_mapping():
    cal = dbn_vendor.calendar_for
    assert cal("GLBX.MDP3") == "CME"
    assert {cal(x) for x in ("XNAS.ITCH", "DBEQ.BASIC", "XNYS.PILLAR", "EQUS.MINI", "OPRA.PILLAR")} == {"XNYS"}
    assert {cal(x) for x in ("IFEU.IMPACT", "XEUR.EOBI", "NDEX.IMPACT")} == {"24x7"}


@needs_dbn
def test_dbn_other_schemas_are_refused(tmp_path):
    rec = d.TradeMsg(publisher_id=1, instrument_id=7, ts_event=T0, price=px(1), size=1, action=d.Action.TRADE,
                     side=d.Side.BID, depth=0, ts_recv=T0)
    f = write_dbn(tmp_path / "t.dbn", "trades", [rec])
    assert detect(f) == "databento"
    with pytest.raises(ValueError, match=r"schema 'trades'.*mbp-1, tbbo, bbo-1s, bbo-1m"):
        open_source(f)


@needs_dbn
def test_dbn_other_records_are_counted_and_mappings_learned(tmp_path):
    sm = d.SymbolMappingMsg(publisher_id=1, instrument_id=42, ts_event=T0, stype_in=d.SType.RAW_SYMBOL,
                            stype_in_symbol="NQU4", stype_out=d.SType.INSTRUMENT_ID, stype_out_symbol="NQU4",
                            start_ts=T0, end_ts=T0 + S)
    sysmsg = d.SystemMsg(ts_event=T0, msg="Heartbeat")
    recs = [sm, mbp1(T0 + 1, px(10), px(11), iid=42), sysmsg, mbp1(T0 + 2, px(10), px(12), iid=42)]
    f = write_dbn(tmp_path / "live.dbn", "mbp-1", recs)
    for chunk_rows in (1, 2, 100):
        src = dbn_vendor.reader(f, ReaderOptions(chunk_rows=chunk_rows, now_ns=T0))
        q = read_all(src)
        assert len(q) == 2 and src.instruments.symbols == ["NQU4"]
        assert src.stats.skipped == {"symbol_mapping": 1, "system": 1} and src.stats.rows_read == 4


@needs_dbn
def test_dbn_truncated_file(tmp_path):
    recs = [mbp1(T0 + k, px(10), px(11 + k)) for k in range(4)]
    f = write_dbn(tmp_path / "cut.dbn", "tbbo", recs, mappings=[mapping("X", 118)])
    f.write_bytes(f.read_bytes()[:-30])
    src = dbn_vendor.reader(f, ReaderOptions(now_ns=T0))
    assert len(read_all(src)) == 3 and src.stats.quarantined == {"malformed": 1}
    with pytest.raises(BadInputError) as e:
        read_all(dbn_vendor.reader(f, ReaderOptions(policy="malformed=reject", now_ns=T0)))
    assert e.value.line == 4 and "ends inside a record" in str(e.value) and str(f) in str(e.value)


@needs_dbn
def test_dbn_crossed_quote_rejects_with_record_number(tmp_path):
    recs = [mbp1(T0 + k, px(10), px(11)) for k in range(3)] + [mbp1(T0 + 9, px(12), px(11))]
    f = write_dbn(tmp_path / "x.dbn", "tbbo", recs, mappings=[mapping("X", 118)])
    with pytest.raises(BadInputError) as e:
        read_all(dbn_vendor.reader(f, ReaderOptions(policy="reject", now_ns=T0)))
    assert e.value.line == 4 and e.value.rule == "crossed" and f"{f}:4" in str(e.value)


@needs_dbn
def test_dbn_detection(tmp_path):
    recs = [mbp1(T0, px(10), px(11))]
    zst = write_dbn(tmp_path / "renamed.bin", "tbbo", recs)  # plain DBN, odd name: the magic says it
    assert detect(zst) == "databento"
    z = tmp_path / "blob"
    with pa.output_stream(str(z), compression="zstd") as f:
        f.write(zst.read_bytes())  # zstd without the extension: looked inside
    assert detect(z) == "databento"
    assert len(read_all(open_source(z, now_ns=T0))) == 1
    other = tmp_path / "notdbn.zst"
    with pa.output_stream(str(other), compression="zstd") as f:
        f.write(b"hello, world\n")
    assert not dbn_vendor.sniff(other, other.read_bytes()[:64])


def test_dbn_missing_extra_without_writing_dbn(tmp_path, monkeypatch):
    f = tmp_path / "a.dbn"
    f.write_bytes(b"DBN\x03" + bytes(60))  # the reader asks for the extra before it reads a byte more
    monkeypatch.setitem(sys.modules, "databento_dbn", None)
    assert detect(f) == "databento"
    with pytest.raises(dbn_vendor.MissingExtraError, match=r"pip install 'nextick\[dbn\]'"):
        open_source(f)


@needs_dbn
def test_dbn_missing_extra(tmp_path, monkeypatch):
    f = write_dbn(tmp_path / "a.dbn.zst", "tbbo", [mbp1(T0, px(10), px(11))], mappings=[mapping("X", 118)])
    monkeypatch.setitem(sys.modules, "databento_dbn", None)  # as if not installed
    assert detect(f) == "databento"  # detection needs no extra
    with pytest.raises(ImportError) as e:
        open_source(f)
    assert "pip install 'nextick[dbn]'" in str(e.value) and "'dbn' extra" in str(e.value)
    assert isinstance(e.value, ValueError)  # callers that report ValueErrors show it as it is


# -- DBN: the real samples ---------------------------------------------------------------------------

shared = pytest.mark.skipif(not (SHARED / "databento").is_dir(), reason=f"{SHARED} is absent (a fresh clone)")
SANE = {"ESU4": (5000, 6000), "ESM4": (5000, 6000), "NQM4": (17000, 20000), "ESH1": (3000, 4500)}


@needs_dbn
@pytest.mark.shared_data
@shared
@pytest.mark.parametrize("name", sorted(p.name for p in (SHARED / "databento").glob("*.dbn*")) or ["none"])
def test_shared_databento_files(name):
    path = SHARED / "databento" / name
    assert detect(path) == "databento"
    ref = reference(path)
    src = open_source(path)
    q = read_all(src)
    assert src.stats.rows_read == len(ref)
    if "esu4_mbp-1" in name:
        assert src.stats.rows_read == 2288  # the README's count
        assert len(q) + src.stats.skipped.get("unchanged", 0) + src.stats.skipped.get("one_sided", 0) == 2288
    assert not src.stats.quarantined
    assert len(q) > 0 and (np.diff(q["ts_recv"]) >= 0).all()
    for i, inst in enumerate(src.instruments):
        lo, hi = SANE[inst.symbol]
        mine = q[q["instrument"] == i]
        assert len(mine) and (mine["bid_px"] > lo).all() and (mine["ask_px"] < hi).all(), inst.symbol
        assert (mine["bid_px"] < mine["ask_px"]).all() and inst.calendar == "CME" and inst.venue == "GLBX.MDP3"
    res = run_backtest(open_source(path), BacktestConfig(strategy="none", interval="raw"))
    assert res.source.rows_emitted == len(q)


# -- LOBSTER -----------------------------------------------------------------------------------------


def lob_pair(folder: Path, ticker: str, date: str, rows: list[tuple], level: int = 1, *, extra_ob: list[str] = (),
             extra_msg: list[str] = ()) -> tuple[Path, Path]:
    """rows: (seconds after midnight as text, ask_px, ask_sz, bid_px, bid_sz) with prices x 10000."""
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{ticker}_{date}_34200000_57600000"
    msg = folder / f"{base}_message_{level}.csv"
    ob = folder / f"{base}_orderbook_{level}.csv"
    mlines = [f"{t},1,{1000 + k},100,{bid},1" for k, (t, _, _, bid, _) in enumerate(rows)] + list(extra_msg)
    olines = [f"{a},{asz},{b},{bsz}" + ",9999999999,0,-9999999999,0" * (level - 1) for _, a, asz, b, bsz in rows]
    msg.write_text("\n".join(mlines) + "\n")
    ob.write_text("\n".join(olines + list(extra_ob)) + "\n")
    return msg, ob


def utc_ns(date: str, hh: int, mm: int, ss: float, offset_h: int) -> int:
    d0 = dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc)
    return int((d0 - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).total_seconds()) * S + round(
        ((hh + offset_h) * 3600 + mm * 60 + ss) * S)


ROWS = [
    ("34200.004241176", 5859400, 200, 5853300, 18),
    ("34200.025552137", 5859400, 200, 5853300, 18),  # same book: a hidden execution
    ("34201.5", 5859100, 18, 5853300, 18),
    ("34260.123456789", 9999999999, 0, 5853300, 18),  # the ask side is empty
    ("57599.999999999", 5859100, 18, 5853600, 5),
]


def test_lobster_pair_reads_as_quotes(tmp_path):
    msg, ob = lob_pair(tmp_path, "AAPL", "2012-06-21", ROWS)
    for path in (msg, ob, tmp_path):
        assert detect(path) == "lobster"
        src = open_source(path, one_sided="skip")
        q = read_all(src)
        assert src.instruments.symbols == ["AAPL"]
        inst = src.instruments[0]
        assert (inst.venue, inst.calendar) == ("XNAS", "XNYS")
        assert src.stats.rows_read == 5 and src.stats.skipped == {"one_sided": 1} and not src.stats.quarantined
        assert q["seq"].tolist() == [1, 2, 3, 5]
        # 2012-06-21 is in daylight saving time: New York is UTC-4.
        assert q["ts_recv"][0] == utc_ns("2012-06-21", 9, 30, 0, 4) + 4_241_176
        assert q["ts_recv"][3] == utc_ns("2012-06-21", 15, 59, 59, 4) + 999_999_999
        assert (q["ts_event"] == q["ts_recv"]).all() and (q["flags"] == 0).all()  # venue times, not synthetic
        assert q["ask_px"].tolist() == [585.94, 585.94, 585.91, 585.91]
        assert q["bid_px"].tolist() == [585.33, 585.33, 585.33, 585.36]
        assert q["ask_sz"].tolist() == [200, 200, 18, 18] and q["bid_sz"].tolist() == [18, 18, 18, 5]


def test_lobster_options(tmp_path):
    msg, _ = lob_pair(tmp_path, "AAPL", "2012-06-21", ROWS)
    src = lobster.reader(msg, ReaderOptions(changes_only=True, one_sided="skip"))
    q = read_all(src)
    assert q["seq"].tolist() == [1, 3, 5] and src.stats.skipped == {"unchanged": 1, "one_sided": 1}
    src = lobster.reader(msg)  # one-sided rows kept, flagged
    q = read_all(src)
    assert q["seq"].tolist() == [1, 2, 3, 4, 5] and not src.stats.quarantined
    assert q["flags"][3] == ONE_SIDED
    src = lobster.reader(msg, ReaderOptions(symbol="AAPL.O", venue="NSDQ", calendar="09:30-16:00 America/New_York Mon-Fri",
                                            instrument_defaults={"tick_size": 0.0001}))
    read_all(src)
    inst = src.instruments[0]
    assert (inst.symbol, inst.venue, inst.tick_size) == ("AAPL.O", "NSDQ", 0.0001)


def test_lobster_dst(tmp_path):
    # Friday before the March 2012 change (EST, UTC-5) and the Monday after (EDT, UTC-4).
    lob_pair(tmp_path / "a", "X", "2012-03-09", [("36000", 101, 1, 100, 1)])
    lob_pair(tmp_path / "a", "X", "2012-03-12", [("36000", 101, 1, 100, 1)])
    q = read_all(open_source(tmp_path / "a"))
    assert q["ts_recv"].tolist() == [utc_ns("2012-03-09", 10, 0, 0, 5), utc_ns("2012-03-12", 10, 0, 0, 4)]
    # On the change days themselves: 02:30 on 2012-03-11 does not exist (malformed); 01:30 on
    # 2012-11-04 happens twice (the earlier, EDT, is taken); 03:00 that day is EST.
    lob_pair(tmp_path / "b", "Y", "2012-03-11", [("3600", 101, 1, 100, 1), ("9000", 101, 1, 100, 2), ("12600", 101, 2, 100, 1)])
    src = open_source(tmp_path / "b")
    q = read_all(src)
    assert src.stats.quarantined == {"malformed": 1}
    assert q["ts_recv"].tolist() == [utc_ns("2012-03-11", 1, 0, 0, 5), utc_ns("2012-03-11", 3, 30, 0, 4)]
    with pytest.raises(BadInputError) as e:
        read_all(lobster.reader(tmp_path / "b", ReaderOptions(policy="reject")))
    assert e.value.line == 2 and e.value.field == "time" and "message_1.csv:2" in str(e.value)
    lob_pair(tmp_path / "c", "Z", "2012-11-04", [("5400", 101, 1, 100, 1), ("10800", 101, 1, 100, 2)])
    q = read_all(open_source(tmp_path / "c"))
    assert q["ts_recv"].tolist() == [utc_ns("2012-11-04", 1, 30, 0, 4), utc_ns("2012-11-04", 3, 0, 0, 5)]


def test_lobster_folder_merges_tickers_and_dates(tmp_path):
    rng = np.random.default_rng(5)

    def rows(n):
        t = np.sort(rng.uniform(34200, 57600, n))
        return [(f"{x:.9f}", 10100 + k, 1, 10000, 1) for k, x in enumerate(t)]

    lob_pair(tmp_path, "AAA", "2012-06-21", rows(300))
    lob_pair(tmp_path, "BBB", "2012-06-21", rows(200))
    lob_pair(tmp_path, "AAA", "2012-06-22", rows(100))
    lob_pair(tmp_path, "BBB", "2012-06-21", rows(5), level=10)  # a deeper copy of the same day: not used
    # Many small blocks and chunks: the merge and the chunking must not change the stream.
    for kw in ({}, {"block_size": 200, "chunk_rows": 17}):
        src = lobster.reader(tmp_path, ReaderOptions(**kw))
        q = read_all(src)
        assert src.instruments.symbols == ["AAA", "BBB"]
        assert len(q) == 600 == src.stats.rows_read and not src.stats.quarantined
        assert (np.diff(q["ts_recv"]) >= 0).all()
        assert np.bincount(q["instrument"]).tolist() == [400, 200]
        if not kw:
            first = q
        else:
            assert first.tobytes() == q.tobytes()


def test_lobster_level_10_uses_level_1(tmp_path):
    msg, _ = lob_pair(tmp_path, "AAPL", "2012-06-21", ROWS, level=10)
    q = read_all(open_source(msg, one_sided="skip"))
    assert q["ask_px"].tolist() == [585.94, 585.94, 585.91, 585.91]


def test_lobster_malformed_rows(tmp_path):
    rows = [(f"{34200 + k}", 10100, 1, 10000, 1) for k in range(8)]
    msg, ob = lob_pair(tmp_path, "AAPL", "2012-06-21", rows)
    m = msg.read_text().splitlines()
    o = ob.read_text().splitlines()
    m[1] = "34201,1,1001,100"  # too few fields
    o[3] = "10100,1,abc,1"  # not a number
    m[4] = ""  # a blank line
    m[5] = "34205,9,1005,100,10000,1"  # no such event type
    m[6] = "99999,1,1006,100,10000,1"  # past the end of the day
    msg.write_text("\n".join(m) + "\n")
    ob.write_text("\n".join(o) + "\n")
    src = open_source(msg)
    q = read_all(src)
    assert q["seq"].tolist() == [1, 3, 8]
    assert src.stats.quarantined == {"malformed": 5} and src.stats.rows_read == 8
    with pytest.raises(BadInputError) as e:
        read_all(lobster.reader(msg, ReaderOptions(policy="malformed=reject")))
    assert e.value.line == 2 and e.value.field == "row" and f"{msg}:2" in str(e.value)
    o[1] = "10100,1,10000,1"
    m[1] = "34201,1,1001,100,10000,1"
    msg.write_text("\n".join(m) + "\n")
    ob.write_text("\n".join(o) + "\n")
    with pytest.raises(BadInputError) as e:
        read_all(lobster.reader(msg, ReaderOptions(policy="malformed=reject")))
    assert e.value.line == 4 and e.value.field == "bid_px" and f"{ob}:4" in str(e.value) and "'abc'" in str(e.value)


def test_lobster_validator_errors_name_the_file(tmp_path):
    rows = [("34200", 10100, 1, 10000, 1), ("34201", 10000, 1, 10100, 1), ("34199.5", 10100, 1, 10000, 1)]
    msg, ob = lob_pair(tmp_path, "AAPL", "2012-06-21", rows)
    src = open_source(msg)
    assert len(read_all(src)) == 1 and src.stats.quarantined == {"crossed": 1, "out_of_order": 1}
    with pytest.raises(BadInputError) as e:
        read_all(lobster.reader(msg, ReaderOptions(policy="reject")))
    assert f"{ob}:2" in str(e.value) and e.value.rule == "crossed"
    with pytest.raises(BadInputError) as e:
        read_all(lobster.reader(msg, ReaderOptions(policy="crossed=quarantine,out_of_order=reject")))
    assert f"{msg}:3" in str(e.value) and e.value.rule == "out_of_order"


def test_lobster_pair_errors(tmp_path):
    msg, ob = lob_pair(tmp_path / "m", "AAPL", "2012-06-21", ROWS, extra_ob=["5859100,18,5853600,5"])
    with pytest.raises(ValueError, match="does not line up") as e:
        open_source(msg)
    assert str(msg) in str(e.value) and str(ob) in str(e.value) and "5 lines" in str(e.value)
    msg, ob = lob_pair(tmp_path / "p", "AAPL", "2012-06-21", ROWS)
    ob.unlink()
    with pytest.raises(ValueError, match="partner") as e:
        open_source(msg, fmt="lobster")
    assert ob.name in str(e.value)
    with pytest.raises(ValueError, match="without their partner") as e:
        open_source(tmp_path / "p", fmt="lobster")
    assert ob.name in str(e.value)
    odd = tmp_path / "AAPL.csv"
    odd.write_text("34200,1,1,1,1,1\n")
    assert detect(odd) != "lobster"
    with pytest.raises(ValueError, match="not a LOBSTER file name"):
        open_source(odd, fmt="lobster")


def test_lobster_backtest_runs(tmp_path):
    rng = np.random.default_rng(2)
    t = np.sort(rng.uniform(34200, 57600, 2000))
    mid = 1_000_000 + np.cumsum(rng.integers(-1, 2, 2000)) * 100
    rows = [(f"{x:.9f}", int(m + 100), 5, int(m - 100), 5) for x, m in zip(t, mid)]
    msg, _ = lob_pair(tmp_path, "AAPL", "2012-06-21", rows)
    res = run_backtest(open_source(msg), BacktestConfig(strategy="none"))
    assert res.source.rows_emitted == 2000 and res.instruments == ["AAPL"]


def test_lobster_takes_a_policy_object(tmp_path):
    msg, _ = lob_pair(tmp_path, "AAPL", "2012-06-21", ROWS)
    assert len(read_all(lobster.reader(msg, ReaderOptions(policy=ValidationPolicy())))) == 5  # the one-sided row included


@needs_dbn
def test_dbn_takes_a_policy_object_and_names_unmapped_ids(tmp_path):
    f = write_dbn(tmp_path / "a.dbn", "tbbo", [mbp1(T0, px(10), px(11))])
    src = dbn_vendor.reader(f, ReaderOptions(policy=ValidationPolicy.parse("reject"), now_ns=T0))
    assert len(read_all(src)) == 1 and src.instruments.symbols == ["118"]  # no mapping: the id names it


def collect_until_error(src: QuoteSource) -> tuple[np.ndarray, BadInputError]:
    got: list[np.ndarray] = []
    chunks = src.chunks()
    with pytest.raises(BadInputError) as e:
        while True:
            got.append(next(chunks))
    return (concat_rows(got) if got else np.zeros(0, QUOTE_DTYPE)), e.value


def test_lobster_rows_before_a_rejected_row_are_delivered(tmp_path):
    rows = [(f"{34200 + k}", 10100, 1, 10000, 1) for k in range(6)]
    msg, ob = lob_pair(tmp_path, "AAPL", "2012-06-21", rows)
    o = ob.read_text().splitlines()
    o[3] = "10100,x,10000,1"
    ob.write_text("\n".join(o) + "\n")
    q, err = collect_until_error(lobster.reader(msg, ReaderOptions(policy="reject")))
    assert q["seq"].tolist() == [1, 2, 3] and err.line == 4 and err.field == "ask_sz"


@needs_dbn
def test_dbn_rows_before_a_rejected_row_are_delivered(tmp_path):
    recs = [mbp1(T0 + k, px(10), px(11), iid=7 if k != 3 else 8) for k in range(5)]
    f = write_dbn(tmp_path / "u.dbn", "tbbo", recs, mappings=[mapping("A", 7)])
    table = InstrumentTable([Instrument(symbol="A")])
    q, err = collect_until_error(dbn_vendor.reader(f, ReaderOptions(instruments=table, policy="unknown_symbol=reject", now_ns=T0)))
    assert len(q) == 3 and err.line == 4 and err.rule == "unknown_symbol" and "'8'" in str(err)


@needs_dbn
def test_dbn_corrupt_record_header_stops_the_stream(tmp_path):
    recs = [mbp1(T0 + k, px(10), px(11 + k)) for k in range(4)]
    f = write_dbn(tmp_path / "bad.dbn", "tbbo", recs, mappings=[mapping("X", 118)])
    data = bytearray(f.read_bytes())
    data[len(data) - 2 * 80] = 0  # the third record's length byte
    f.write_bytes(bytes(data))
    q, err = collect_until_error(dbn_vendor.reader(f, ReaderOptions(now_ns=T0)))  # even under the quarantine policy
    assert len(q) == 2 and err.line == 3 and "corrupt" in str(err)
