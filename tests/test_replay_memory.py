"""A CSV far larger than the replay's memory budget streams in bounded memory.

The file (~165 MB, 3.3M rows) is written in slices so the writer never holds it whole; the replay
runs in a fresh interpreter so its peak RSS (ru_maxrss, a high-water mark) is its own, measured
after imports and again after the last chunk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

ROWS = 3_300_000
SLICE_ROWS = 250_000
T0_MS = 1_700_000_000_000

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from feeds.replay import FileReplay

    def peak_bytes():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    def vm_hwm_bytes():  # the same high-water mark, of this process image only
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

    path, warmup, block_size, chunk_rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    # Code, kernels and allocator arenas load on first use; that one-off cost is not the replay's
    # working set, so a small file goes first.
    for _ in FileReplay(warmup, block_size=block_size, chunk_rows=chunk_rows).chunks():
        pass
    replay = FileReplay(path, block_size=block_size, chunk_rows=chunk_rows)
    before, hwm_before = peak_bytes(), vm_hwm_bytes()
    rows, largest, last_ts, ordered = 0, 0, None, True
    for chunk in replay.chunks():  # consumed and dropped, as the engine does
        rows += len(chunk)
        largest = max(largest, len(chunk))
        ts = chunk["ts_recv"]
        ordered &= bool((np.diff(ts) >= 0).all() and (last_ts is None or ts[0] >= last_ts))
        last_ts = int(ts[-1])
    after = peak_bytes()
    print(json.dumps({"before": before, "hwm_before": hwm_before, "after": after, "rows": rows, "largest": largest,
                      "ordered": ordered, "rows_read": replay.stats.rows_read}))
    """
)


def write_big_csv(path: Path) -> None:
    rng = np.random.default_rng(3)
    with pacsv.CSVWriter(
        str(path),
        pa.schema([("symbol", pa.string()), ("ts_ms_utc", pa.int64()), ("bid", pa.float64()),
                   ("ask", pa.float64()), ("bid_volume", pa.float64()), ("ask_volume", pa.float64())]),
    ) as w:
        for start in range(0, ROWS, SLICE_ROWS):
            n = min(SLICE_ROWS, ROWS - start)
            ts = T0_MS + start * 10 + np.arange(n, dtype=np.int64) * 10  # strictly increasing: nothing quarantined
            bid = np.round(1.1 + rng.normal(0, 1e-3, n), 5)
            w.write_table(
                pa.table(
                    {
                        "symbol": pa.array(np.where(rng.random(n) < 0.5, "EURUSD", "GBPUSD")),
                        "ts_ms_utc": ts,
                        "bid": bid,
                        "ask": bid + 0.0002,
                        "bid_volume": np.round(rng.random(n) * 10, 2),
                        "ask_volume": np.round(rng.random(n) * 10, 2),
                    }
                )
            )


@pytest.mark.slow
def test_replay_streams_a_large_csv_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    write_big_csv(path)
    file_bytes = path.stat().st_size
    assert file_bytes > 150e6
    warmup = tmp_path / "head.csv"
    with path.open("rb") as f:
        warmup.write_bytes(b"".join(f.readline() for _ in range(5000)))

    block_size, chunk_rows = 1 << 18, 1 << 14
    repo = Path(__file__).resolve().parents[1]
    # Linux carries ru_maxrss across exec, so a child exec'd straight from pytest would start at
    # pytest's peak and hide the growth; forking it from a small shell gives it its own baseline.
    proc = subprocess.run(
        ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", CHILD, str(path), str(warmup), str(block_size), str(chunk_rows)],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["rows"] == got["rows_read"] == ROWS
    assert got["before"] <= got["hwm_before"] + (4 << 20), "ru_maxrss baseline was inherited from the parent"
    assert got["ordered"] and got["largest"] <= chunk_rows

    growth = got["after"] - got["before"]
    # The decoded quotes alone are 64 B x 3.3M = 211 MB, more than the file; a replay that held the
    # file or its quotes would grow by at least that. Streaming holds a few blocks (256 KiB) and
    # two chunks (1 MiB each): a few MB, plus allocator slack.
    print(f"\nfile {file_bytes / 1e6:.0f} MB, peak RSS growth {growth / 1e6:.1f} MB")
    assert growth < file_bytes / 8, f"peak RSS grew {growth / 1e6:.1f} MB replaying a {file_bytes / 1e6:.0f} MB file"
