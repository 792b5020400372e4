"""feeds.vendors.options.ReaderOptions: the one options struct every vendor reader takes.

Every format's reader is given the struct and must honour it; an option no reader knows is refused
by open_source, Catalog.ingest and engine.ingest.ingest, with the valid names, before any file is
read. The sample files come from each format's own test module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_raw_replay import T0 as RAW_T0
from test_raw_replay import usdm
from test_raw_replay import write as write_raw
from test_vendor_dbn_lobster import ROWS as LOB_ROWS
from test_vendor_dbn_lobster import d as databento_dbn
from test_vendor_dbn_lobster import lob_pair, mapping, mbp1, px, write_dbn
from test_vendor_dbn_lobster import T0 as DBN_T0
from test_vendor_readers import BN_HEADER, BN_ROWS, DK_HEADER, DK_ROWS, HD_ROWS, TD_HEADER, TD_ROWS, write

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.validate import ValidationPolicy
from engine.ingest import ingest
from feeds import vendors
from feeds.catalog import Catalog
from feeds.vendors.options import ReaderOptions

MS = 1_000_000
FIELDS = ReaderOptions.__struct_fields__
CALENDAR = "08:00-17:00 Europe/London Mon-Fri"  # no reader's default


def sample(fmt: str, folder: Path) -> Path:
    """A small file (or folder) of format ``fmt``."""
    if fmt == "generic":
        return write(folder / "quotes.csv", ["ts,bid,ask", "1704067200000,1.0,1.1", "1704067201000,1.0,1.2"])
    if fmt == "binance":
        return write(folder / "BTCUSDT-bookTicker-2024-01-01.csv", [BN_HEADER, *BN_ROWS])
    if fmt == "tardis":
        return write(folder / "quotes.csv", [TD_HEADER, *TD_ROWS])
    if fmt == "histdata":
        return write(folder / "DAT_ASCII_EURUSD_T_202001.csv", HD_ROWS)
    if fmt == "dukascopy":
        return write(folder / "ticks.csv", [DK_HEADER, *DK_ROWS])
    if fmt == "databento":
        if databento_dbn is None:
            pytest.skip("databento-dbn (the 'dbn' extra) is not installed")
        recs = [mbp1(DBN_T0 + k, px(10), px(11 + k)) for k in range(3)]
        return write_dbn(folder / "a.dbn", "tbbo", recs, mappings=[mapping("ESU4", 118)])
    if fmt == "lobster":
        return lob_pair(folder, "AAPL", "2012-06-21", LOB_ROWS)[0]
    if fmt == "raw":
        return write_raw(folder / "usdm_btcusdt_20240808.txt", [(RAW_T0, usdm("BTCUSDT", 5, RAW_T0 // MS - 1300))])
    raise AssertionError(f"no sample file for format {fmt!r}: add one here")


@pytest.mark.parametrize("fmt", vendors.FORMATS)
def test_every_reader_takes_the_options_struct(tmp_path, fmt):
    path = sample(fmt, tmp_path)
    assert vendors.detect(path) == fmt
    options = ReaderOptions(
        policy="crossed=reject",
        calendar=CALENDAR,
        instrument_defaults={"warmup_ticks": 7},
        template=Instrument(symbol="T", calendar=CALENDAR, warmup_ticks=7),  # the generic reader's way
    )
    src = vendors.module(fmt).reader(path, options)
    chunks = list(src.chunks())
    assert sum(len(c) for c in chunks) > 0 and not src.stats.quarantined
    assert src.policy.rejects("crossed") and not src.policy.rejects("duplicate")
    assert len(src.instruments) > 0
    for inst in src.instruments:
        assert inst.warmup_ticks == 7, (fmt, inst)
        # Raw recordings are live venue streams: 24x7 whatever the options say.
        assert inst.calendar == ("24x7" if fmt == "raw" else CALENDAR), (fmt, inst)


def test_open_source_builds_the_struct_from_keywords(tmp_path):
    path = sample("binance", tmp_path)
    src = vendors.open_source(path, venue="binance-spot", symbol="ETHUSDT")
    assert [(i.symbol, i.venue) for i in src.instruments] == [("ETHUSDT", "binance-spot")]
    # A built struct and keywords on top of it: the keywords win.
    src = vendors.open_source(path, None, ReaderOptions(venue="binance-spot", symbol="X"), symbol="ETHUSDT")
    assert [(i.symbol, i.venue) for i in src.instruments] == [("ETHUSDT", "binance-spot")]


def test_an_unknown_option_is_refused_with_the_valid_ones(tmp_path):
    path = sample("binance", tmp_path)
    with pytest.raises(ValueError, match=r"unknown reader option 'calender'; valid options: policy, symbol") as e:
        vendors.open_source(path, calender="XNYS")
    assert all(name in str(e.value) for name in FIELDS)
    with pytest.raises(ValueError, match=r"unknown reader options 'calender', 'sybmol'"):
        vendors.open_source(path, sybmol="X", calender="XNYS")

    cat = Catalog(tmp_path / "cat")
    with pytest.raises(ValueError, match="unknown reader option 'calender'"):
        cat.ingest(path, calender="XNYS")
    assert cat.sources() == []

    lines: list[str] = []
    with pytest.raises(ValueError, match="unknown reader option 'calender'"):
        ingest([tmp_path], tmp_path / "cat2", print_fn=lines.append, calender="XNYS")
    assert lines == [] and not (tmp_path / "cat2").exists()  # refused before any file was looked at


@given(st.text(min_size=1, max_size=20).filter(lambda k: k not in FIELDS))
def test_any_other_name_is_refused(name):
    with pytest.raises(ValueError) as e:
        ReaderOptions.build(**{name: 1})
    text = str(e.value)
    assert repr(name) in text and f"valid options: {', '.join(FIELDS)}" in text


# Values unlike the defaults, one per option.
NOT_DEFAULT = {
    "policy": "reject", "symbol": "X", "venue": "V", "calendar": "XNYS",
    "instruments": InstrumentTable([Instrument(symbol="X")]),
    "template": Instrument(symbol="T", tick_size=0.5), "instrument_defaults": {"lot_size": 2.0},
    "ts_unit": "ms", "tz": "Etc/GMT+5", "chunk_rows": 17, "block_size": 4096, "now_ns": 5,
    "volume_scale": 1.0, "changes_only": True, "one_sided": "skip",
}


def test_every_option_has_a_non_default_example():
    assert set(NOT_DEFAULT) == set(FIELDS)


@given(st.sets(st.sampled_from(sorted(NOT_DEFAULT))))
def test_given_is_what_was_set(names):
    """The catalog records ``given()``: exactly the options a user set, whatever the mix."""
    chosen = {k: NOT_DEFAULT[k] for k in names}
    assert ReaderOptions.build(**chosen).given() == chosen
    assert ReaderOptions.build(ReaderOptions(), **chosen).given() == chosen


def test_policy_text_and_objects_parse_the_same():
    assert ReaderOptions(policy="crossed=reject").validation_policy() == ValidationPolicy.parse("crossed=reject")
    obj = ValidationPolicy.parse("reject")
    assert ReaderOptions(policy=obj).validation_policy() is obj
    assert ReaderOptions().validation_policy() == ValidationPolicy()
