"""File replay throughput: rows/s read, converted and validated from CSV (plain, gzip) and Parquet,
and the validator alone on clean chunks. Files are generated in a temp folder, never read from
../shared. Figures are reported in extra_info and printed, not asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from bench.quotes import random_walk_quotes
from engine.domain.source import SourceStats
from engine.domain.validate import QuoteValidator, ValidationPolicy
from feeds.replay import FileReplay

N_ROWS = 1_000_000
N_INSTRUMENTS = 10


@pytest.fixture(scope="module")
def quote_files(tmp_path_factory) -> dict[str, Path]:
    quotes, table = random_walk_quotes(N_ROWS, N_INSTRUMENTS)
    symbols = np.array(table.symbols)[quotes["instrument"]]
    data = pa.table(
        {
            "symbol": symbols,
            "ts_ms": quotes["ts_recv"] // 1_000_000,  # ms, the common vendor resolution
            "bid": quotes["bid_px"],
            "ask": quotes["ask_px"],
            "bid_size": quotes["bid_sz"],
            "ask_size": quotes["ask_sz"],
        }
    )
    folder = tmp_path_factory.mktemp("replay_bench")
    files = {"csv": folder / "quotes.csv", "csv.gz": folder / "quotes.csv.gz", "parquet": folder / "quotes.parquet"}
    pacsv.write_csv(data, files["csv"])
    with pa.CompressedOutputStream(str(files["csv.gz"]), "gzip") as out:
        pacsv.write_csv(data, out)
    pq.write_table(data, files["parquet"])
    return files


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet"])
def test_replay_throughput(benchmark, quote_files, kind):
    path = quote_files[kind]

    def replay():
        r = FileReplay(path)
        rows = sum(len(c) for c in r.chunks())
        return r, rows

    r, rows = benchmark.pedantic(replay, rounds=3, iterations=1)
    rate = r.stats.rows_read / benchmark.stats.stats.min
    benchmark.extra_info.update(
        rows_per_s=rate,
        rows=r.stats.rows_read,
        rows_emitted=rows,
        file_mb=path.stat().st_size / 1e6,
        mb_per_s=path.stat().st_size / 1e6 / benchmark.stats.stats.min,
        quarantined=dict(r.stats.quarantined),
    )
    print(f"\nreplay {kind:8s}: {rate / 1e6:5.2f} M rows/s ({path.stat().st_size / 1e6:.0f} MB, {rows:,} rows kept)")


def test_validate_throughput(benchmark):
    quotes, _ = random_walk_quotes(N_ROWS, N_INSTRUMENTS)
    chunk_rows = 1 << 18
    chunks = [quotes[s : s + chunk_rows] for s in range(0, len(quotes), chunk_rows)]
    lines = np.arange(chunk_rows, dtype=np.int64)

    def validate():
        v = QuoteValidator(ValidationPolicy(), SourceStats(), "bench")
        return sum(len(v.check(c, lines[: len(c)])) for c in chunks)

    kept = benchmark.pedantic(validate, rounds=5, iterations=1)
    rate = len(quotes) / benchmark.stats.stats.min
    benchmark.extra_info.update(rows_per_s=rate, rows=len(quotes), kept=kept)
    print(f"\nvalidate: {rate / 1e6:5.1f} M rows/s ({kept:,} of {len(quotes):,} kept)")
