"""The Parquet catalog (feeds.catalog) and `nextick ingest` (engine.ingest): layout and manifest,
idempotent and atomic ingest, the k-way merged replay, and bounded memory."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

import feeds.catalog as fcat
import feeds.vendors
from engine.backtest import BacktestConfig, run_backtest
from engine.domain.instrument import Instrument
from engine.domain.quote import QUOTE_DTYPE, concat_rows
from engine.domain.timestamps import parse_time_ns as to_ns
from engine.domain.validate import BadInputError
from feeds.catalog import Catalog
from feeds.recorder import instrument_dir_name, quote_schema
from feeds.replay import FileReplay

REPO = Path(__file__).resolve().parents[1]
S = 1_000_000_000
DAY = 86_400 * S
T0 = 1_704_153_600 * S  # 2024-01-02 00:00:00 UTC


# -- data -------------------------------------------------------------------------------------------


def make_quotes(n: int, n_symbols: int, *, seed: int = 0, t0: int = T0, span_ns: int = DAY, ties: bool = True):
    """(quotes sorted by ts_recv with instrument = index into the symbol list, rng). With ``ties``
    some timestamps repeat, within and across instruments."""
    rng = np.random.default_rng(seed)
    if ties:
        ts = np.sort(t0 + rng.integers(0, span_ns // 1000, n) * 1000)
    else:
        ts = t0 + np.sort(rng.choice(span_ns // 1000, n, replace=False)) * 1000
    q = np.zeros(n, QUOTE_DTYPE)
    q["ts_recv"] = ts
    q["ts_event"] = ts - rng.integers(0, 1_000_000, n)
    inst = rng.integers(0, n_symbols, n)
    q["instrument"] = inst
    mid = 100.0 + np.cumsum(rng.normal(0, 0.01, n))
    q["bid_px"] = np.round(mid - 0.01, 2)
    q["ask_px"] = np.round(mid + 0.01, 2)
    q["bid_sz"] = rng.integers(1, 500, n).astype(float)
    q["ask_sz"] = np.round(rng.random(n) * 10, 3)
    q["seq"] = np.arange(1, n + 1, dtype=np.uint64) * 7
    return q


def write_file(path: Path, q: np.ndarray, symbols: list[str] | None) -> Path:
    """The quotes as a CSV or Parquet file the generic reader (feeds.replay.FileReplay) infers."""
    cols = {}
    if symbols is not None:
        cols["symbol"] = pa.array(np.asarray(symbols, dtype=object)[q["instrument"]])
    cols.update(
        ts_recv=q["ts_recv"], ts_event=q["ts_event"], bid_px=q["bid_px"], ask_px=q["ask_px"],
        bid_sz=q["bid_sz"], ask_sz=q["ask_sz"], seq=q["seq"],
    )
    table = pa.table(cols)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


def read_all(source) -> np.ndarray:
    chunks = list(source.chunks())
    return concat_rows(chunks) if chunks else np.zeros(0, QUOTE_DTYPE)


def expected(catalog: Catalog, files: list[Path], symbols=None, start=None, end=None, fmt="generic",
             **reader) -> np.ndarray:
    """What a replay must give: each file as its reader reads it, instruments renumbered to the
    catalog order, sorted by (ts_recv, instrument, ingest order, row) and filtered."""
    keys = [i.key for i in catalog.instruments()]
    if symbols is not None:
        keys = [k for k in keys if k in symbols or k.split(":", 1)[1] in symbols]
    ids = {k: n for n, k in enumerate(keys)}
    parts, ranks = [], []
    rank_of = {s.path: s.rank for s in catalog.sources()}
    for f in files:
        f, f_fmt = f if isinstance(f, tuple) else (f, fmt)  # (path, format) or a path
        src = feeds.vendors.open_source(f, f_fmt, **reader)
        q = read_all(src)
        key_of = np.array([fcat.InstrumentEntry.of(i).key for i in src.instruments] + [""], dtype=object)
        k = key_of[q["instrument"]]
        cat_id = np.array([ids.get(x, -1) for x in k], dtype=np.int64)
        q = q[cat_id >= 0]
        q["instrument"] = cat_id[cat_id >= 0]
        parts.append(q)
        ranks.append(np.full(len(q), rank_of[str(Path(f).absolute())]))
    q = concat_rows(parts)
    rank = np.concatenate(ranks)
    order = np.lexsort((rank, q["instrument"], q["ts_recv"]))  # stable: row order last
    q = q[order]
    lo = to_ns(start)
    hi = to_ns(end, end=True)
    keep = np.ones(len(q), bool)
    if lo is not None:
        keep &= q["ts_recv"] >= lo
    if hi is not None:
        keep &= q["ts_recv"] < hi
    return q[keep]


def assert_same_quotes(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == QUOTE_DTYPE
    assert len(got) == len(want)
    for f in QUOTE_DTYPE.names:
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (but the lock) with its content."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


SYMS = [f"S{k}" for k in range(12)]


@pytest.fixture
def three_files(tmp_path: Path) -> list[Path]:
    """Three sources over 12 instruments and 3 UTC days, overlapping in time, with timestamp ties."""
    files = []
    for k in range(3):
        q = make_quotes(3000, 12, seed=k, t0=T0 + k * DAY // 2, span_ns=2 * DAY)
        files.append(write_file(tmp_path / f"src{k}.{'parquet' if k == 1 else 'csv'}", q, SYMS))
    return files


# -- ingest: layout, manifest, reports --------------------------------------------------------------


def test_ingest_writes_partitions_and_manifest(tmp_path: Path) -> None:
    syms = ["BTC/USD", "ES.c.0", "EURUSD"]
    q = make_quotes(4000, 3, t0=T0 + DAY - 3600 * S, span_ns=2 * 3600 * S)  # spans midnight
    q["bid_px"][100] = q["ask_px"][100] + 1  # crossed
    q["bid_px"][200] = -1.0  # negative
    src = write_file(tmp_path / "in.csv", q, syms)
    with src.open("a") as f:
        f.write(f'"EURUSD",notatime,{q["ts_event"][-1]},2,3,4,5,6\n')  # malformed
    root = tmp_path / "cat"
    rep = Catalog(root).ingest(src)  # the format is detected

    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert rep.status == "ingested" and not rep.already_ingested
    assert rep.sha256 == sha and rep.size == src.stat().st_size and rep.format == "generic"
    assert rep.rows_read == 4001 and rep.rows_written == 3998
    assert rep.quarantined == {"crossed": 1, "negative": 1, "malformed": 1}
    assert rep.ts_unit == "ns" and rep.ts_unit_detected
    assert sorted(rep.instruments) == sorted(f"SIM:{s}" for s in syms)
    assert rep.partitions == 6  # 3 instruments x 2 days

    parts = sorted(p.relative_to(root).as_posix() for p in (root / "quotes").rglob("*.parquet"))
    assert parts == sorted(rep.parts) and len(parts) == 6
    for p in parts:
        m = re.fullmatch(r"quotes/venue=SIM/instrument=([^/]+)/date=(2024-01-0[23])/part-([0-9a-f]{20})-\d+\.parquet", p)
        assert m, p
        assert m.group(1) in {instrument_dir_name(s) for s in syms}
        assert m.group(3) == sha[:20]
        assert pq.ParquetFile(root / p).schema_arrow == quote_schema()
    assert "instrument=BTC%2FUSD" in parts[0] or any("instrument=BTC%2FUSD" in p for p in parts)
    assert not list(root.rglob(".tmp-*")) and not (root / ".pending").exists()

    man = json.loads((root / "catalog.json").read_text())
    assert man["format"] == "nextick-catalog" and man["version"] == 1
    (s,) = man["sources"]
    assert s["path"] == str(src.absolute()) and s["sha256"] == sha and s["size"] == src.stat().st_size
    assert s["format"] == "generic" and s["rows_read"] == 4001 and s["rows_written"] == 3998
    assert s["quarantined"] == {"crossed": 1, "negative": 1, "malformed": 1} and s["ts_unit"] == "ns"
    assert s["files"] == [{"path": str(src.absolute()), "sha256": sha, "size": src.stat().st_size,
                           "mtime_ns": src.stat().st_mtime_ns}]
    assert {i["symbol"] for i in s["instruments"]} == set(syms)
    assert set(s["instruments"][0]) == {"venue", "symbol", "tick_size", "lot_size", "calendar", "gap_ns", "warmup_ticks"}
    assert [i["symbol"] for i in man["instruments"]] == [i["symbol"] for i in s["instruments"]]
    assert sum(p["rows"] for p in s["parts"]) == 3998
    for p in s["parts"]:
        ts = pq.read_table(root / p["path"], columns=["ts_recv"])["ts_recv"].to_numpy()
        assert len(ts) == p["rows"] and ts[0] == p["ts_min"] and ts[-1] == p["ts_max"]
        assert (np.diff(ts) >= 0).all() and p["bytes"] == (root / p["path"]).stat().st_size
        assert p["date"] == p["path"].split("date=")[1][:10]

    # The hive layout reads back with pyarrow, symbols unescaped.
    t = Catalog(root).dataset().to_table()
    assert t.num_rows == 3998 and set(t["instrument"].to_pylist()) == set(syms)

    infos = {i.symbol: i for i in Catalog(root).instruments()}
    assert set(infos) == set(syms)
    assert all(i.first_date == "2024-01-02" and i.last_date == "2024-01-03" for i in infos.values())
    assert sum(i.rows for i in infos.values()) == 3998
    assert Catalog(root).date_range("BTC/USD") == ("2024-01-02", "2024-01-03")
    assert infos["EURUSD"].instrument == Instrument(symbol="EURUSD")


def test_same_file_twice_is_already_ingested(tmp_path: Path, three_files: list[Path]) -> None:
    cat = Catalog(tmp_path / "cat")
    first = cat.ingest(three_files[0])
    before = tree(cat.root)
    again = cat.ingest(three_files[0])
    assert again.status == "already ingested" and again.already_ingested
    assert again.rows_read == 0 and again.sha256 == first.sha256
    assert tree(cat.root) == before
    # The same content under another name is the same source.
    copy = tmp_path / "copy.csv"
    copy.write_bytes(three_files[0].read_bytes())
    dup = cat.ingest(copy)
    assert dup.already_ingested and dup.same_as == str(three_files[0].absolute())
    assert tree(cat.root) == before
    assert len(cat.sources()) == 1


def test_changed_content_replaces_the_source(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    write_file(path, make_quotes(2000, 3, seed=1), ["A", "B", "C"])
    other = write_file(tmp_path / "b.csv", make_quotes(500, 1, seed=2), ["D"])
    cat = Catalog(tmp_path / "cat")
    r1 = cat.ingest(path)
    cat.ingest(other)
    old_parts = set(r1.parts)
    write_file(path, make_quotes(1500, 2, seed=3), ["A", "E"])  # new content, one instrument gone
    r2 = cat.ingest(path)
    assert r2.status == "replaced" and r2.replaced_sha256 == r1.sha256 and r2.rows_written == 1500
    assert not any((cat.root / p).exists() for p in old_parts)
    assert not (cat.root / "quotes/venue=SIM/instrument=B").exists()
    srcs = cat.sources()
    assert [s.path for s in srcs] == [str(path.absolute()), str(other.absolute())]  # keeps its place
    assert [s.rank for s in srcs] == [0, 1]
    assert [i.symbol for i in cat.instruments()] == ["A", "D", "E"]
    on_disk = {p.relative_to(cat.root).as_posix() for p in cat.root.rglob("*.parquet")}
    assert on_disk == {p.path for s in srcs for p in s.parts}
    got = read_all(cat.source())
    assert len(got) == 2000  # 1500 + 500: no duplicates, nothing of the old content
    assert_same_quotes(got, expected(cat, [path, other]))
    assert cat.ingest(path).already_ingested


def test_two_files_of_one_instrument_and_day_merge(tmp_path: Path) -> None:
    a = make_quotes(3000, 1, seed=5, span_ns=3600 * S)
    b = make_quotes(2000, 1, seed=6, span_ns=3600 * S)
    b["ts_recv"][:50] = a["ts_recv"][:50]  # equal timestamps across the files
    b["ts_event"][:50] = a["ts_event"][:50]
    b.sort(order="ts_recv", kind="stable")
    fa = write_file(tmp_path / "a.csv", a, ["X"])
    fb = write_file(tmp_path / "b.parquet", b, ["X"])
    cat = Catalog(tmp_path / "cat")
    cat.ingest(fa)
    cat.ingest(fb)
    (info,) = cat.instruments()
    assert info.sources == 2 and info.partitions == 1 and info.rows == 5000
    day = cat.root / "quotes/venue=SIM/instrument=X/date=2024-01-02"
    assert len(list(day.glob("part-*.parquet"))) == 2  # one per source, names never collide
    for batch_rows in (None, 7, 1000):
        got = read_all(cat.source(batch_rows=batch_rows))
        want = expected(cat, [fa, fb])
        assert_same_quotes(got, want)
        assert (np.diff(got["ts_recv"]) >= 0).all()
    # Ties: the file ingested first comes first.
    got = read_all(cat.source())
    t = a["ts_recv"][0]
    same = got[got["ts_recv"] == t]
    assert same["seq"][0] == a["seq"][0] and same["seq"][-1] == b["seq"][np.flatnonzero(b["ts_recv"] == t)[-1]]


def test_many_parts_per_partition_when_writers_and_buffers_run_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fcat, "MAX_OPEN_PARTS", 3)  # 12 instruments: writers are finished and reopened
    monkeypatch.setattr(fcat, "INGEST_BUFFER_ROWS", 200)  # the largest buffers are written early
    real = feeds.vendors.open_source
    monkeypatch.setattr(feeds.vendors, "open_source", lambda *a, **kw: _small_chunks(real(*a, **kw)))
    q = make_quotes(6000, 12, seed=21, span_ns=3 * 3600 * S)
    f = write_file(tmp_path / "many.csv", q, SYMS)
    cat = Catalog(tmp_path / "cat", row_group_rows=64)
    rep = cat.ingest(f)
    monkeypatch.setattr(feeds.vendors, "open_source", real)
    assert rep.partitions == 12 and len(rep.parts) > 12  # several parts per partition
    seqs = [int(p.rsplit("-", 1)[1].split(".")[0]) for p in rep.parts]
    assert len(set(seqs)) == len(seqs)
    assert_same_quotes(read_all(cat.source(batch_rows=50)), expected(cat, [f]))


def test_replay_many_instruments_with_filters(tmp_path: Path, three_files: list[Path]) -> None:
    cat = Catalog(tmp_path / "cat", row_group_rows=97)  # many row groups: the time filter skips some
    for f in three_files:
        cat.ingest(f)
    assert len(cat.instruments()) == 12
    src = cat.source()
    got = read_all(src)
    want = expected(cat, three_files)
    assert len(got) == 9000
    assert_same_quotes(got, want)
    assert src.stats.rows_read == src.stats.rows_emitted == 9000
    assert src.instruments.symbols == [i.symbol for i in cat.instruments()]
    assert src.max_streams == 36

    sel = ["S3", "SIM:S5", "S11"]
    cases = [
        ("2024-01-02T12:00:00Z", "2024-01-03T06:30:00.5"),
        ("2024-01-03", "2024-01-03"),  # one whole day
        (T0 + DAY // 3, None),
        (None, "2024-01-02 18:00:00+01:00"),
    ]
    for start, end in cases:
        s = cat.source(sel, start, end)
        assert s.instruments.symbols == [i.symbol for i in cat.instruments() if i.symbol in ("S3", "S5", "S11")]
        got = read_all(s)
        want = expected(cat, three_files, symbols=sel, start=start, end=end)
        assert len(got) > 0
        assert_same_quotes(got, want)
        assert s.stats.rows_emitted == len(want)
    # nothing in range
    assert len(read_all(cat.source(None, "2030-01-01", None))) == 0
    with pytest.raises(ValueError, match="not in the catalog"):
        cat.source(["NOPE"])


def test_the_same_symbol_at_two_venues(tmp_path: Path) -> None:
    f1 = write_file(tmp_path / "sim.csv", make_quotes(300, 1, seed=1), ["BTC"])
    f2 = write_file(tmp_path / "bin.csv", make_quotes(300, 1, seed=2), ["BTC"])
    cat = Catalog(tmp_path / "cat")
    cat.ingest(f1)
    rep = cat.ingest(f2, template=Instrument(symbol="x", venue="BINANCE", tick_size=0.5, calendar="24x7"))
    assert rep.instruments == ["BINANCE:BTC"]
    assert [i.key for i in cat.instruments()] == ["SIM:BTC", "BINANCE:BTC"]
    both = cat.source()
    assert both.instruments.symbols == ["SIM:BTC", "BINANCE:BTC"]
    assert len(read_all(both)) == 600
    with pytest.raises(ValueError, match="ambiguous"):
        cat.source(["BTC"])
    one = cat.source(["BINANCE:BTC"])
    assert one.instruments.symbols == ["BTC"] and one.instruments[0].tick_size == 0.5
    assert one.instruments[0].venue == "BINANCE"
    assert cat.sources()[1].reader_options["template"]["venue"] == "BINANCE"


@pytest.fixture(scope="module")
def merge_catalog(tmp_path_factory) -> tuple[Catalog, list[Path]]:
    d = tmp_path_factory.mktemp("merge")
    files = []
    for k in range(3):
        q = make_quotes(700, 4, seed=10 + k, t0=T0 + k * 3600 * S, span_ns=4 * 3600 * S)
        files.append(write_file(d / f"m{k}.csv", q, ["A", "B", "C", "D"]))
    cat = Catalog(d / "cat", row_group_rows=50)
    for f in files:
        cat.ingest(f)
    return cat, files


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch_rows=hst.one_of(hst.none(), hst.integers(1, 300)),
    chunk_rows=hst.integers(1, 500),
    budget=hst.sampled_from([1 << 16, 1 << 20, 16 << 20, 256 << 20]),
    window=hst.one_of(hst.none(), hst.tuples(hst.integers(0, 5 * 3600), hst.integers(1, 6 * 3600))),
)
def test_budgets_and_chunk_sizes_do_not_change_the_output(merge_catalog, batch_rows, chunk_rows, budget, window):
    cat, files = merge_catalog
    start = end = None
    if window is not None:
        start, end = T0 + window[0] * S, T0 + (window[0] + window[1]) * S
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a budget below the minimum warns: tested below
        src = cat.source(None, start, end, memory_budget_bytes=budget, chunk_rows=chunk_rows, batch_rows=batch_rows)
    chunks = list(src.chunks())
    assert all(0 < len(c) <= chunk_rows for c in chunks)
    got = concat_rows(chunks) if chunks else np.zeros(0, QUOTE_DTYPE)
    assert_same_quotes(got, _reference(cat, files, start, end))


_REF: dict = {}


def _reference(cat, files, start, end):
    key = (str(cat.root), start, end)
    if key not in _REF:
        _REF[key] = expected(cat, files, start=start, end=end)
    return _REF[key]


def test_a_budget_too_small_for_the_streams_warns(merge_catalog) -> None:
    cat, _ = merge_catalog
    with pytest.warns(UserWarning, match="below what 12 instrument streams"):
        src = cat.source(memory_budget_bytes=1 << 20)
    assert src.batch_rows == fcat.MIN_BATCH_ROWS and src.min_budget_bytes > 1 << 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = cat.source()
    assert fcat.MIN_BATCH_ROWS < big.batch_rows <= fcat.MAX_BATCH_ROWS


def test_chunks_are_fresh_and_replays_repeat(merge_catalog) -> None:
    cat, files = merge_catalog
    src = cat.source(batch_rows=30, chunk_rows=64)
    kept = list(src.chunks())  # a consumer may keep every chunk: later rounds must not overwrite them
    again = list(src.chunks())
    a, b = concat_rows(kept), concat_rows(again)
    assert a.tobytes() == b.tobytes()  # deterministic, padding included
    assert_same_quotes(a, expected(cat, files))


def test_a_consumer_may_stop_early_and_errors_surface(merge_catalog, tmp_path: Path) -> None:
    import threading

    cat, _ = merge_catalog
    threads = threading.active_count()
    it = cat.source(batch_rows=40, chunk_rows=10).chunks()
    first = next(it)
    assert 0 < len(first) <= 10
    it.close()  # the read-ahead thread is stopped, nothing hangs
    assert threading.active_count() == threads
    # A damaged part file is an error of the replay, raised to the consumer (from the read-ahead too).
    import shutil

    copy = Catalog(shutil.copytree(cat.root, tmp_path / "copy"))
    victim = copy.root / copy.sources()[1].parts[2].path
    victim.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    for prefetch in (True, False):
        with pytest.raises((OSError, pa.ArrowException)):
            read_all(copy.source(batch_rows=40, prefetch=prefetch))
    assert threading.active_count() == threads


def test_backtest_over_the_catalog_matches_the_files(tmp_path: Path) -> None:
    syms = ["AAA", "BBB", "CCC"]
    q = make_quotes(30_000, 3, seed=9, span_ns=6 * 3600 * S, ties=False)
    src_file = write_file(tmp_path / "q.csv", q, syms)
    cat = Catalog(tmp_path / "cat")
    cat.ingest(src_file)
    cfg = BacktestConfig(strategy="momentum", interval="1s", fee_bps=0.5)
    direct = run_backtest(FileReplay(src_file), cfg)
    via = run_backtest(cat.source(memory_budget_bytes=4 << 20, batch_rows=999, chunk_rows=1000), cfg)
    assert len(direct.fills) > 0
    assert via.instruments == direct.instruments
    assert via.quotes_in == direct.quotes_in == 30_000
    assert via.fill_hash() == direct.fill_hash()
    np.testing.assert_array_equal(via.equity, direct.equity)


# -- crash safety -------------------------------------------------------------------------------------


def test_an_error_mid_ingest_leaves_the_catalog_as_it_was(tmp_path: Path, three_files, monkeypatch) -> None:
    cat = Catalog(tmp_path / "cat", row_group_rows=100)  # parts are written early
    cat.ingest(three_files[0])
    before = tree(cat.root)
    replay_before = read_all(cat.source())

    real = feeds.vendors.open_source

    class Failing:
        def __init__(self, inner):
            self.inner, self.instruments, self.stats = inner, inner.instruments, inner.stats

        def chunks(self):
            for k, c in enumerate(self.inner.chunks()):
                if k == 3:
                    raise RuntimeError("disk on fire")
                yield c

    monkeypatch.setattr(feeds.vendors, "open_source", lambda *a, **kw: Failing(_small_chunks(real(*a, **kw))))
    with pytest.raises(RuntimeError, match="disk on fire"):
        cat.ingest(three_files[2])
    monkeypatch.setattr(feeds.vendors, "open_source", real)
    assert tree(cat.root) == before
    assert_same_quotes(read_all(cat.source()), replay_before)

    # A rejecting policy stops the file at its bad row: the same.
    q = make_quotes(120_000, 2, seed=4)
    q["bid_px"][100_000] = q["ask_px"][100_000] + 1
    bad = write_file(tmp_path / "bad.csv", q, ["P", "Q"])  # > one 4 MiB read block before the bad row
    with pytest.raises(BadInputError, match="crossed"):
        cat.ingest(bad, policy="reject")
    assert tree(cat.root) == before
    # and a good ingest afterwards works normally
    assert cat.ingest(bad).rows_written == 119_999


def _small_chunks(src):
    """The reader, its chunks cut to 500 rows (so several come before the failure)."""

    class Small:
        instruments, stats = src.instruments, src.stats

        def chunks(self):
            for c in src.chunks():
                for a in range(0, len(c), 500):
                    yield c[a : a + 500]

    return Small()


CRASH_CHILD = textwrap.dedent(
    """
    import os, sys
    import feeds.catalog as fc
    where, root, path = sys.argv[1], sys.argv[2], sys.argv[3]
    if where == "publish":  # after the parts are renamed into place, before the manifest
        real = fc._PartWriter.publish
        def publish(self):
            real(self)
            os._exit(3)
        fc._PartWriter.publish = publish
    else:  # while parts are being written
        real = fc._PartWriter._flush
        n = [0]
        def flush(self, part):
            real(self, part)
            n[0] += 1
            if n[0] == 20:
                os._exit(3)
        fc._PartWriter._flush = flush
    fc.Catalog(root, row_group_rows=50).ingest(path)
    """
)


@pytest.mark.parametrize("where", ["write", "publish"])
def test_a_killed_ingest_is_invisible_and_cleaned_up(tmp_path: Path, three_files, where: str) -> None:
    root = tmp_path / "cat"
    cat = Catalog(root, row_group_rows=50)
    cat.ingest(three_files[0])
    before = tree(root)
    replay_before = read_all(cat.source())
    proc = subprocess.run([sys.executable, "-c", CRASH_CHILD, where, str(root), str(three_files[1])], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    leftovers = set(tree(root)) - set(before)
    assert leftovers, "the child died before writing anything"
    assert all(re.search(r"(\.tmp-|part-)[0-9a-f]{20}-\d+\.parquet$|\.pending/", p) for p in leftovers)
    assert (root / "catalog.json").read_bytes() == before["catalog.json"]
    assert_same_quotes(read_all(Catalog(root).source()), replay_before)  # the manifest decides
    # The next ingest removes what the crash left, then does its own work.
    rep = Catalog(root).ingest(three_files[1])
    assert rep.status == "ingested"
    listed = {p.path for s in Catalog(root).sources() for p in s.parts}
    on_disk = {p.relative_to(root).as_posix() for p in (root / "quotes").rglob("*.parquet")}
    assert on_disk == listed
    assert not list(root.rglob(".tmp-*")) and not (root / ".pending").exists()
    assert_same_quotes(read_all(Catalog(root).source()), expected(Catalog(root), three_files[:2]))


def test_vacuum_removes_unlisted_catalog_files_only(tmp_path: Path, three_files) -> None:
    cat = Catalog(tmp_path / "cat")
    cat.ingest(three_files[0])
    d = next((cat.root / "quotes").rglob("date=*"))
    stray = d / ("part-" + "ab" * 10 + "-0.parquet")
    stray.write_bytes(b"x")
    recorder_file = d / "part-1704153600000000000-0.parquet"  # QuoteRecorder's naming: not ours
    recorder_file.write_bytes(b"y")
    assert cat.vacuum() == [stray]
    assert recorder_file.exists()
    assert cat.remove(three_files[0]) and cat.sources() == []
    assert not cat.remove(three_files[0])


# -- small pieces ------------------------------------------------------------------------------------


def test_time_bounds() -> None:
    assert to_ns(None) is None
    assert to_ns(123) == 123 and to_ns("123") == 123
    assert to_ns("2024-01-02") == T0 and to_ns("2024-01-02", end=True) == T0 + DAY
    assert to_ns("2024-01-02T00:00:01Z") == T0 + S
    assert to_ns("2024-01-02T00:00:01.000000007") == T0 + S + 7
    assert to_ns("2024-01-02 01:00:00+01:00") == T0
    with pytest.raises(ValueError, match="ISO-8601"):
        to_ns("yesterday")


def test_empty_source_is_recorded(tmp_path: Path) -> None:
    f = tmp_path / "empty.csv"
    f.write_text("ts_recv,bid_px,ask_px\n")
    cat = Catalog(tmp_path / "cat")
    rep = cat.ingest(f)
    assert rep.status == "ingested" and rep.rows_written == 0 and rep.parts == []
    assert cat.ingest(f).already_ingested
    assert cat.instruments() == []


def test_ingest_command_over_a_folder(tmp_path: Path) -> None:
    from engine.ingest import ingest

    data = tmp_path / "data"
    (data / "more").mkdir(parents=True)
    write_file(data / "a.csv", make_quotes(400, 2, seed=1), ["A", "B"])
    write_file(data / "b.parquet", make_quotes(300, 1, seed=2), ["C"])
    write_file(data / "more" / "c.csv", make_quotes(200, 1, seed=3), ["D"])
    (data / "README.md").write_text("# quotes\n")
    (data / "notes.txt").write_text("these are notes\nnot quotes\n")
    (data / ".hidden.csv").write_text("junk\n")
    bad = make_quotes(100, 1, seed=4)
    bad["bid_px"][5] = np.nan
    write_file(data / "d.csv", bad, ["E"])
    catalog_dir = data / "catalog"  # inside the folder: never read as input

    lines: list[str] = []
    reports = ingest([data], catalog_dir, print_fn=lines.append)
    assert [Path(r.path).name for r in reports] == ["a.csv", "b.parquet", "d.csv", "c.csv"]
    assert all(r.status == "ingested" for r in reports)
    text = "\n".join(lines)
    assert re.search(r"skipped +\S*README\.md: not a recognized format", text)
    assert re.search(r"skipped +\S*notes\.txt", text)
    assert ".hidden" not in text
    assert re.search(r"ingested +\S*a\.csv \[generic\]: 400 rows read -> 400 quotes, 2 instruments", text)
    assert re.search(r"quarantined 1: nan 1", text)
    assert re.search(r"total +4 sources \(4 ingested\): 1,000 rows read -> 999 quotes", text)
    assert "rows/s" in text

    lines.clear()
    again = ingest([data / "a.csv", data], catalog_dir, print_fn=lines.append)
    assert len(again) == 4 and all(r.already_ingested for r in again)
    assert sum(x.startswith("already") for x in lines) == 4
    assert re.search(r"total +4 sources \(4 already ingested\): 0 rows read", "\n".join(lines))


@pytest.mark.shared_data
def test_real_recordings_replay_from_the_catalog(tmp_path: Path, shared_data: Path) -> None:
    raw = shared_data / "binance-raw"  # a folder source: spot and futures, the same symbols at two venues
    fx = shared_data / "fx" / "dukascopy_EURUSD_2019-02-04_48h.csv.gz"
    cat = Catalog(tmp_path / "cat")
    r1 = cat.ingest(raw)
    r2 = cat.ingest(fx)
    assert r1.format == "raw" and len(r1.instruments) == 4 and r1.skipped and r1.rows_written > 200_000
    assert r2.rows_written == 266_219 and r2.ts_unit == "ms"
    assert sorted(cat.sources()[0].files[i].path for i in range(6)) == sorted(str(p) for p in raw.iterdir())
    src = cat.source()
    assert "binance-spot:BTCUSDT" in src.instruments.symbols and "EURUSD" in src.instruments.symbols
    got = read_all(src)
    assert_same_quotes(got, expected(cat, [(raw, "raw"), (fx, "dukascopy")]))
    # A backtest over the catalog makes the same fills as over the file.
    cfg = BacktestConfig(strategy="momentum", interval="1s")
    direct = run_backtest(feeds.vendors.open_source(fx, "dukascopy"), cfg)
    via = run_backtest(cat.source(["EURUSD"]), cfg)
    assert len(direct.fills) > 0 and via.fill_hash() == direct.fill_hash()
    assert via.quotes_in == direct.quotes_in


# -- bounded memory -----------------------------------------------------------------------------------

MEM_CHILD = textwrap.dedent(
    """
    import json, resource, sys, warnings
    from engine.backtest import BacktestConfig, run_backtest
    from feeds.catalog import Catalog

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    root, budget = sys.argv[1], int(sys.argv[2])
    cat = Catalog(root)
    cfg = BacktestConfig(strategy="momentum", interval="1s")
    warnings.simplefilter("error")  # the budget must be one the source can keep
    # Code, codecs, the core and allocator arenas load on first use: a short run goes first.
    first = cat.instruments()[0].ts_min
    run_backtest(cat.source(None, None, first + 60 * 10**9, memory_budget_bytes=budget), cfg)
    before = peak()
    src = cat.source(memory_budget_bytes=budget)
    res = run_backtest(src, cfg)
    after = peak()
    print(json.dumps({"before": before, "after": after, "quotes": res.quotes_in, "batch_rows": src.batch_rows,
                      "streams": src.max_streams, "qps": res.quotes_per_s, "fills": len(res.fills)}))
    """
)
FIXED_OVERHEAD = 24 << 20  # allocator arenas and Arrow's pools beyond the budget model (see feeds/catalog.py)


@pytest.mark.slow
def test_replay_through_the_engine_stays_within_the_memory_budget(tmp_path: Path) -> None:
    n_inst, per = 20, 250_000  # 5M quotes: 320 MB as QUOTE_DTYPE, 10x the budget
    budget = 32 << 20
    rng = np.random.default_rng(0)
    files = []
    for i in range(n_inst):
        ts = T0 + 3600 * S + np.sort(rng.integers(0, 12 * 3600 * S, per))  # 12 hours, interleaved
        mid = 100 * np.exp(np.cumsum(rng.normal(0, 1e-4, per)))
        t = pa.table({
            "ts_recv": ts, "bid_px": np.round(mid - 0.01, 2), "ask_px": np.round(mid + 0.01, 2),
            "bid_sz": rng.integers(1, 100, per).astype(float), "ask_sz": rng.integers(1, 100, per).astype(float),
        })
        f = tmp_path / f"I{i:02d}.parquet"
        pq.write_table(t, f)
        files.append(f)
    cat = Catalog(tmp_path / "cat", fsync=False)
    for f in files:
        assert cat.ingest(f).rows_written == per
    assert sum(i.rows for i in cat.instruments()) == n_inst * per

    # Linux carries ru_maxrss across exec: a child forked from a small shell has its own baseline.
    proc = subprocess.run(
        ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", MEM_CHILD, str(cat.root), str(budget)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = got["after"] - got["before"]
    print(f"\n{got['quotes']:,} quotes ({got['quotes'] * 64 / 2**20:.0f} MiB as quotes) through the engine, "
          f"{got['streams']} streams x {got['batch_rows']} rows: peak RSS growth {growth / 2**20:.1f} MiB, "
          f"budget {budget >> 20} MiB (+{FIXED_OVERHEAD >> 20} MiB fixed), {got['qps'] / 1e6:.1f}M quotes/s")
    assert got["quotes"] == n_inst * per and got["streams"] == n_inst and got["fills"] > 0
    assert growth <= budget + FIXED_OVERHEAD, f"peak RSS grew {growth / 2**20:.1f} MiB"
    # ... and the budget is not met by accident: reading it all would take 10x as much.
    assert n_inst * per * 64 > 9 * budget
