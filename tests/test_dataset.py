"""QuoteDataset (feeds/dataset.py): a source read once, replayed by many runs with the same fills."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.backtest import BacktestConfig, BacktestResult, run_backtest
from engine.domain.instrument import Instrument
from engine.domain.quote import QUOTE_DTYPE
from engine.domain.validate import BadInputError
from feeds.dataset import MANIFEST_FILE, QUOTES_FILE, DatasetError, QuoteDataset
from feeds.memory import ArraySource
from feeds.replay import FileReplay
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies.ema_cross import EmaCross

ROOT = Path(__file__).resolve().parents[1]
SMALL = SyntheticConfig(n_sessions=2, quote_rate_hz=2.0, alpha_strength=3.0)
FAST = {"fast_span": 5, "slow_span": 20}
T0_MS = 1_704_189_600_000  # 2024-01-02 10:00 UTC


def same_run(a: BacktestResult, b: BacktestResult) -> None:
    """Bit for bit: fills, trades, resets, equity, counters, metrics, what the source reported."""
    assert a.fill_hash() == b.fill_hash()
    for field in ("fills", "trades", "resets", "equity_ts_ns", "equity", "gross_exposure", "outside_session", "final_positions"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert a.counters == b.counters and a.metrics == b.metrics
    assert a.source == b.source and a.instruments == b.instruments
    assert (a.quotes_in, a.ticks) == (b.quotes_in, b.ticks)


# -- a CSV with bad rows and an instrument that appears late ------------------------------------------


def csv_text(n: int = 3000, late_from: int = 1200) -> str:
    """Two symbols' quotes every 100 ms; DEF starts at row ``late_from``; one crossed row, one NaN size
    and one malformed line, so quarantine counts must travel with the data set."""
    rng = np.random.default_rng(5)
    lines = ["time_ms,sym,b,a,bs,as"]
    mids = {"ABC": 100.0, "DEF": 50.0}
    for k in range(n):
        sym = "DEF" if k >= late_from and k % 2 else "ABC"
        mids[sym] *= float(np.exp(rng.normal(0, 4e-4)))
        m = mids[sym]
        lines.append(f"{T0_MS + 100 * k},{sym},{m - 0.01:.2f},{m + 0.01:.2f},{rng.integers(1, 50)},{rng.integers(1, 50)}")
    lines[500] = lines[500].rsplit(",", 2)[0] + ",nan,7"
    b, a = lines[900].split(",")[2:4]
    lines[900] = lines[900].replace(f"{b},{a}", f"{a},{b}")
    lines[1500] = "garbage"
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def quotes_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dataset") / "quotes.csv"
    path.write_text(csv_text())
    return path


def replay(path: Path, chunk_rows: int = 256, block_size: int = 4096, cls=FileReplay) -> FileReplay:
    return cls(path, columns="ts=time_ms,symbol=sym,bid=b,ask=a,bid_sz=bs,ask_sz=as", template=Instrument(symbol="T"),
               chunk_rows=chunk_rows, block_size=block_size)


RAW_MOMENTUM = BacktestConfig(strategy="momentum", strategy_params=FAST, interval="raw", fee_bps=0.5)


def test_the_csv_exercises_the_late_instrument(quotes_csv):
    """Guard on the data the tests below use: a replay that knew every instrument from the start (an
    ArraySource over the same quotes) trades differently, so matching fills take the reveal order."""
    dataset = QuoteDataset.read(replay(quotes_csv))
    naive = run_backtest(ArraySource(dataset.quotes, dataset.instruments), RAW_MOMENTUM)
    assert naive.fill_hash() != run_backtest(replay(quotes_csv), RAW_MOMENTUM).fill_hash()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_rows=st.integers(16, 4000), block_size=st.integers(2048, 1 << 16), interval=st.sampled_from(["raw", "100ms", "1s"]))
def test_a_dataset_replays_a_file_with_the_fills_of_reading_it(quotes_csv, chunk_rows, block_size, interval):
    config = msgspec.structs.replace(RAW_MOMENTUM, interval=interval)
    direct = run_backtest(replay(quotes_csv, chunk_rows, block_size), config)
    dataset = QuoteDataset.read(replay(quotes_csv, chunk_rows, block_size))
    for _ in range(2):
        same_run(direct, run_backtest(dataset.source(), config))
    assert direct.metrics.fill_count > 0
    assert direct.source.quarantined == {"crossed": 1, "nan": 1, "malformed": 1}


def test_a_python_strategy_sees_the_same_batches_from_a_dataset(quotes_csv):
    dataset = QuoteDataset.read(replay(quotes_csv))
    config = BacktestConfig(strategy="ema_cross", interval="100ms")
    direct = run_backtest(replay(quotes_csv), config, strategy=EmaCross(**FAST))
    same_run(direct, run_backtest(dataset.source(), config, strategy=EmaCross(**FAST)))


class CountingReplay(FileReplay):
    """A real FileReplay that counts how often it is read."""

    reads = 0

    def chunks(self):
        CountingReplay.reads += 1
        yield from super().chunks()


def test_n_runs_read_the_source_once_and_each_reports_its_quarantines(quotes_csv):
    CountingReplay.reads = 0
    dataset = QuoteDataset.read(replay(quotes_csv, cls=CountingReplay))
    configs = [msgspec.structs.replace(RAW_MOMENTUM, fee_bps=fee, latency_ns=lat) for fee in (0.0, 1.0) for lat in (0, 10**8)]
    results = [run_backtest(dataset.source(), c) for c in configs]
    assert CountingReplay.reads == 1
    assert len({r.fill_hash() for r in results}) > 1  # the configurations differ, the data does not
    for r in results:
        assert r.source.quarantined == {"crossed": 1, "nan": 1, "malformed": 1} and r.source.rows_read == 3000
    results[0].source.quarantine("crossed")  # each run holds its own copy of the counts
    assert results[1].source.quarantined["crossed"] == 1 and dataset.stats.quarantined["crossed"] == 1


# -- the synthetic market -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> QuoteDataset:
    return QuoteDataset.read(SyntheticMarket(SMALL))


@pytest.mark.parametrize(
    "config",
    [
        BacktestConfig(strategy="momentum"),
        BacktestConfig(strategy="mean_reversion", interval="100ms", latency_ns=5_000_000),
        BacktestConfig(strategy="ssm", fee_bps=0.5),
    ],
    ids=["momentum", "mean_reversion", "ssm"],
)
def test_a_dataset_replays_the_synthetic_market_with_its_fills(synthetic, config):
    direct = run_backtest(SyntheticMarket(SMALL), config)
    same_run(direct, run_backtest(synthetic.source(), config))
    assert direct.metrics.fill_count > 0


def test_replays_slice_the_dataset_without_copying(synthetic):
    chunks = list(synthetic.source().chunks())
    assert sum(len(c) for c in chunks) == len(synthetic) > 0
    assert all(np.shares_memory(c, synthetic.quotes) for c in chunks)


# -- on disk ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory, synthetic) -> Path:
    folder = tmp_path_factory.mktemp("written")
    synthetic.save(folder)
    return folder


def test_a_written_dataset_is_memory_mapped_and_pickles_as_its_folder(written, synthetic):
    opened = QuoteDataset.open(written)
    assert isinstance(opened.quotes, np.memmap) and not opened.quotes.flags.writeable
    assert opened.sha256 == synthetic.sha256
    assert np.array_equal(opened.quotes, synthetic.quotes)
    assert np.load(written / QUOTES_FILE).dtype == QUOTE_DTYPE  # plain .npy
    blob = pickle.dumps(opened)
    assert len(blob) < 1000  # the folder, not 280k quotes
    again = pickle.loads(blob)
    assert isinstance(again.quotes, np.memmap) and Path(again.quotes.filename) == (written / QUOTES_FILE).resolve()
    config = BacktestConfig(strategy="momentum")
    same_run(run_backtest(synthetic.source(), config), run_backtest(again.source(), config))


WORKER = """
import json, sys
from engine.backtest import BacktestConfig, run_backtest
from feeds.dataset import QuoteDataset
dataset = QuoteDataset.open(sys.argv[1])
r = run_backtest(dataset.source(), BacktestConfig(strategy=sys.argv[2], interval=sys.argv[3]))
print(json.dumps({"fill_hash": r.fill_hash(), "quotes_in": r.quotes_in, "ticks": r.ticks, "instruments": r.instruments,
                  "stats": {"source": r.source.source, "rows_read": r.source.rows_read, "quarantined": r.source.quarantined}}))
"""


@pytest.mark.parametrize("kind", ["synthetic", "csv"])
def test_a_fresh_process_replays_the_file_with_the_same_fills_and_stats(tmp_path, quotes_csv, kind):
    source = (lambda: SyntheticMarket(SMALL)) if kind == "synthetic" else (lambda: replay(quotes_csv))
    strategy, interval = ("momentum", "1s") if kind == "synthetic" else ("momentum", "raw")
    QuoteDataset.read(source(), tmp_path / "ds")  # streamed to disk, never whole in memory
    out = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "ds"), strategy, interval], cwd=ROOT,
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "1"})
    seen = json.loads(out.stdout)
    direct = run_backtest(source(), BacktestConfig(strategy=strategy, interval=interval))
    assert seen == {"fill_hash": direct.fill_hash(), "quotes_in": direct.quotes_in, "ticks": direct.ticks,
                    "instruments": direct.instruments,
                    "stats": {"source": direct.source.source, "rows_read": direct.source.rows_read,
                              "quarantined": direct.source.quarantined}}
    assert direct.metrics.fill_count > 0


def test_the_file_bytes_depend_on_the_quotes_alone(tmp_path, synthetic):
    """Padding bytes are zeroed: quotes whose padding holds garbage give the same file and digest."""
    dirty = synthetic.quotes.copy()
    dirty.view(np.uint8).reshape(len(dirty), QUOTE_DTYPE.itemsize)[:, 62:] = 0xAB
    a = QuoteDataset.read(ArraySource(dirty, synthetic.instruments), tmp_path / "a")
    b = QuoteDataset.read(ArraySource(synthetic.quotes, synthetic.instruments, chunk_rows=1000), tmp_path / "b")
    assert a.sha256 == b.sha256 == QuoteDataset.read(ArraySource(dirty, synthetic.instruments)).sha256
    assert (tmp_path / "a" / QUOTES_FILE).read_bytes() == (tmp_path / "b" / QUOTES_FILE).read_bytes()


def test_an_empty_source_makes_an_empty_dataset(tmp_path):
    empty = ArraySource(np.zeros(0, QUOTE_DTYPE), SyntheticMarket(SMALL).instruments)
    opened = QuoteDataset.open(QuoteDataset.read(empty, tmp_path).folder)
    assert len(opened) == 0
    r = run_backtest(opened.source(), BacktestConfig())
    assert r.quotes_in == 0 and len(r.fills) == 0 and r.instruments == ["SYN000", "SYN001", "SYN002"]


def test_a_source_that_stops_with_an_error_leaves_no_dataset_behind(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(csv_text(n=2000))
    source = FileReplay(path, columns="ts=time_ms,symbol=sym,bid=b,ask=a,bid_sz=bs,ask_sz=as", policy="reject")
    with pytest.raises(BadInputError, match="bad.csv"):
        QuoteDataset.read(source, tmp_path / "ds")
    assert list((tmp_path / "ds").iterdir()) == []


# -- refused files ---------------------------------------------------------------------------------


def flip_a_quote_byte(folder: Path) -> None:
    data = bytearray((folder / QUOTES_FILE).read_bytes())
    data[-100] ^= 0x01
    (folder / QUOTES_FILE).write_bytes(bytes(data))


def truncate(folder: Path) -> None:
    data = (folder / QUOTES_FILE).read_bytes()
    (folder / QUOTES_FILE).write_bytes(data[: len(data) // 2])


def edit_manifest(**changes):
    def edit(folder: Path) -> None:
        m = json.loads((folder / MANIFEST_FILE).read_text())
        for key, value in changes.items():
            target = m["layout"] if key == "chunk_ends" else m
            target[key] = value
        (folder / MANIFEST_FILE).write_text(json.dumps(m))

    return edit


@pytest.mark.parametrize(
    "damage, expect",
    [
        (flip_a_quote_byte, "does not match the SHA-256"),
        (truncate, "not a readable .npy file"),
        (lambda f: (f / MANIFEST_FILE).write_text("{not json"), "not a quote data set manifest"),
        (lambda f: (f / MANIFEST_FILE).unlink(), f"no {MANIFEST_FILE} in it"),
        (lambda f: (f / QUOTES_FILE).unlink(), "missing"),
        (edit_manifest(version=99), "format version 99; this nextick reads version 1"),
        (edit_manifest(format="something else"), "not a quote data set"),
        (edit_manifest(rows="many"), "$.rows"),
        (edit_manifest(rows=5), "inconsistent layout"),
        (edit_manifest(chunk_ends=[1, 2]), "inconsistent layout"),
        (edit_manifest(dtype="[('x', '<f8')]"), "another quote record layout"),
    ],
    ids=["flipped-byte", "truncated", "bad-json", "no-manifest", "no-quotes", "version", "format", "rows-type",
         "rows-count", "chunk-table", "dtype"],
)
def test_a_corrupt_file_is_refused_with_what_is_wrong(tmp_path, synthetic, damage, expect):
    folder = tmp_path / "ds"
    synthetic.save(folder)
    damage(folder)
    with pytest.raises(DatasetError) as err:
        QuoteDataset.open(folder)
    what_next = ("write the data set again", "QuoteDataset.read(source, folder)")
    assert expect in str(err.value) and any(w in str(err.value) for w in what_next), str(err.value)


def test_quotes_from_another_dataset_are_refused(tmp_path, synthetic):
    synthetic.save(tmp_path / "a")
    other = synthetic.quotes.copy()
    other["bid_px"][7] -= 0.01
    QuoteDataset.read(ArraySource(other, synthetic.instruments), tmp_path / "b")
    os.replace(tmp_path / "b" / QUOTES_FILE, tmp_path / "a" / QUOTES_FILE)  # same rows, other quotes
    with pytest.raises(DatasetError, match="replaced by another data set's file"):
        QuoteDataset.open(tmp_path / "a")
    QuoteDataset.read(ArraySource(synthetic.quotes[:10], synthetic.instruments), tmp_path / "c")
    os.replace(tmp_path / "c" / QUOTES_FILE, tmp_path / "a" / QUOTES_FILE)  # other row count
    with pytest.raises(DatasetError, match="do not belong together"):
        QuoteDataset.open(tmp_path / "a", verify=False)


def test_a_missing_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(DatasetError, match=r"no such folder; write a data set there with QuoteDataset.read\(source, folder\)"):
        QuoteDataset.open(tmp_path / "nope")


# -- real market data, when present ----------------------------------------------------------------


@pytest.mark.shared_data
def test_a_dataset_replays_real_fx_quotes_with_their_fills(shared_data, tmp_path):
    path = shared_data / "fx" / "dukascopy_EURUSD_2019-02-04_48h.csv.gz"

    def source():
        return FileReplay(path, columns="ts=ts_ms_utc,bid=bid,ask=ask,bid_sz=bid_volume,ask_sz=ask_volume,symbol=symbol",
                          template=Instrument(symbol="T", tick_size=0.00001, lot_size=1000, calendar="FX"))

    config = BacktestConfig(strategy="momentum", initial_capital=100_000.0)
    direct = run_backtest(source(), config)
    same_run(direct, run_backtest(QuoteDataset.read(source(), tmp_path).source(), config))
    assert direct.metrics.fill_count > 0


def test_npy_header_has_room_for_any_row_count():
    """The header is written before the rows are counted: a count of 14 digits must fit as 1 does
    (a 20-session market outgrew the first, 256-byte, header)."""
    from feeds.dataset import _NPY_HEADER_BYTES, _npy_header

    for rows in (0, 7, 14_000_000, 10**14):
        assert len(_npy_header(rows)) == _NPY_HEADER_BYTES
