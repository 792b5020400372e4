"""feeds.recorder: raw frames to rotating gzip files that survive kill -9; quotes to hive Parquet."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import msgspec
import numpy as np
import pyarrow.dataset as ds
import pytest

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE
from feeds.raw_replay import RawReplay
from feeds.recorder import (
    QuoteRecorder,
    RawRecorder,
    instrument_dir_name,
    open_quotes,
    symbol_from_dir_name,
)

S = 1_000_000_000
T0 = 1_723_161_000 * S  # 2024-08-08 23:50:00 UTC
MIDNIGHT = 1_723_161_600 * S  # 2024-08-09 00:00:00 UTC
ROOT = Path(__file__).resolve().parents[1]
NAME_RE = re.compile(r"^binance-spot_(\d{8}T\d{6})_(\d+)\.gz$")


def ticker(sym: str, u: int, bid: str = "100.00", ask: str = "100.01") -> str:
    return f'{{"stream":"{sym.lower()}@bookTicker","data":{{"u":{u},"s":"{sym}","b":"{bid}","B":"1.5","a":"{ask}","A":"2.5"}}}}'


def tolerant_gunzip(path: Path) -> bytes:
    """Everything a gzip file decompresses to, with or without its trailer."""
    z = zlib.decompressobj(31)
    return z.decompress(path.read_bytes())


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def recorder(tmp_path: Path, **kw) -> RawRecorder:
    kw.setdefault("background_flush", False)
    return RawRecorder(tmp_path, "binance-spot", **kw)


def test_lines_round_trip_byte_for_byte(tmp_path):
    frames = [ticker("BTCUSDT", 1), ticker("ETHUSDT", 2).encode(), '{"stream":"x@trade","data":{"s":"é€"}}', "{}"]
    with recorder(tmp_path) as rec:
        for k, f in enumerate(frames):
            rec.write(T0 + k, f)
        rec.event(T0 + 10, "reconnect", symbols=["BTCUSDT"])
        rec.event(T0 + 11, "restart")
    assert len(rec.paths) == 1 and rec.paths[0].parent == tmp_path / "raw" / "binance-spot"
    assert NAME_RE.match(rec.paths[0].name).group(1) == "20240808T235000"
    expected = b"".join(b"%d %s\n" % (T0 + k, f if isinstance(f, bytes) else f.encode()) for k, f in enumerate(frames))
    marker = b'%d #{"event":"reconnect","symbols":["BTCUSDT"]}\n%d #{"event":"restart"}\n' % (T0 + 10, T0 + 11)
    assert gzip.decompress(rec.paths[0].read_bytes()) == expected + marker  # closed: a complete gzip file
    assert (rec.frames, rec.events, rec.escaped) == (4, 2, 0)


def test_rotation_by_bytes_keeps_every_line_in_order(tmp_path):
    lines = [ticker("BTCUSDT", 10 + k) for k in range(40)]  # equal lengths
    size = len(f"{T0} {lines[0]}\n")
    with recorder(tmp_path, rotate_bytes=5 * size) as rec:
        for k, f in enumerate(lines):
            rec.write(T0 + k, f)
    assert len(rec.paths) == 8
    assert len({p.name for p in rec.paths}) == 8  # same second: the counter keeps names apart
    texts = [gzip.decompress(p.read_bytes()) for p in rec.paths]
    assert all(len(t) <= 5 * size for t in texts)
    assert b"".join(texts) == "".join(f"{T0 + k} {f}\n" for k, f in enumerate(lines)).encode()
    assert sorted(rec.paths) == sorted((tmp_path / "raw" / "binance-spot").iterdir())


def test_rotation_by_receive_time(tmp_path):
    with recorder(tmp_path, rotate_s=10.0) as rec:
        for k in range(25):
            rec.write(T0 + k * S, ticker("BTCUSDT", k + 1))
    assert [NAME_RE.match(p.name).group(1) for p in rec.paths] == [
        "20240808T235000",
        "20240808T235010",
        "20240808T235020",
    ]
    counts = [gzip.decompress(p.read_bytes()).count(b"\n") for p in rec.paths]
    assert counts == [10, 10, 5]


def test_rotation_at_utc_midnight(tmp_path):
    stamps = [MIDNIGHT - S // 10, MIDNIGHT - 1, MIDNIGHT, MIDNIGHT + S]
    with recorder(tmp_path) as rec:  # an hour per file would otherwise hold all four
        for k, t in enumerate(stamps):
            rec.write(t, ticker("BTCUSDT", k + 1))
    assert [NAME_RE.match(p.name).group(1) for p in rec.paths] == ["20240808T235959", "20240809T000000"]
    assert [gzip.decompress(p.read_bytes()).count(b"\n") for p in rec.paths] == [2, 2]


def test_flushed_lines_are_readable_while_the_file_is_open(tmp_path):
    clock = Clock()
    rec = recorder(tmp_path, flush_s=1.0, clock=clock)
    for k in range(100):
        rec.write(T0 + k, ticker("BTCUSDT", k + 1))
    rec.flush()
    path = rec.path
    data = path.read_bytes()
    with pytest.raises(EOFError):  # no trailer: a strict reader gives up ...
        gzip.decompress(data)
    assert tolerant_gunzip(path).count(b"\n") == 100  # ... but every flushed line is there
    replay = RawReplay(path)
    q = np.concatenate(list(replay.chunks()))
    assert len(q) == 100 and list(q["seq"]) == list(range(1, 101))
    assert replay.truncated == [path] and len(replay.notes) == 1 and "truncated" in replay.notes[0]

    # Without flush(): a write after flush_s has passed makes everything before it readable.
    rec.write(T0 + 100, ticker("BTCUSDT", 101))
    assert tolerant_gunzip(path).count(b"\n") == 100  # still buffered inside zlib
    clock.t = 1.5
    rec.write(T0 + 101, ticker("BTCUSDT", 102))
    assert tolerant_gunzip(path).count(b"\n") == 102
    rec.close()
    assert gzip.decompress(path.read_bytes()).count(b"\n") == 102


def test_background_thread_flushes_when_frames_stop(tmp_path):
    rec = RawRecorder(tmp_path, "binance-spot", flush_s=0.05)
    try:
        rec.write(T0, ticker("BTCUSDT", 1))
        deadline = time.monotonic() + 5
        while tolerant_gunzip(rec.path).count(b"\n") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tolerant_gunzip(rec.path).count(b"\n") == 1
    finally:
        rec.close()


def test_kill_9_loses_nothing_that_was_flushed(tmp_path):
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from feeds.recorder import RawRecorder
rec = RawRecorder({str(tmp_path)!r}, "binance-spot", background_flush=False)
for k in range(500):
    rec.write({T0} + k, '{{"stream":"btcusdt@bookTicker","data":{{"u":%d,"s":"BTCUSDT","b":"1.0","B":"1","a":"2.0","A":"1"}}}}' % (k + 1))
rec.flush()
for k in range(500, 510):  # written but never flushed: may be lost
    rec.write({T0} + k, "never flushed")
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=ROOT, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (path,) = (tmp_path / "raw" / "binance-spot").iterdir()
    replay = RawReplay(path)
    q = np.concatenate(list(replay.chunks()))
    assert list(q["seq"]) == list(range(1, 501))
    assert replay.stats.quarantined == {} and replay.truncated == [path]


def test_frame_with_a_newline_stays_one_line(tmp_path):
    pretty = '{"stream":"btcusdt@bookTicker",\r\n "data":{"u":7,"s":"BTCUSDT","b":"1.5","B":"1","a":"1.6","A":"2"}}\n'
    with recorder(tmp_path) as rec:
        rec.write(T0, pretty)
        rec.write(T0 + 1, ticker("BTCUSDT", 8))
    text = gzip.decompress(rec.paths[0].read_bytes())
    assert text.count(b"\n") == 2 and rec.escaped == 1
    first = text.split(b"\n")[0]
    assert first == b"%d %s" % (T0, pretty.replace("\r", " ").replace("\n", " ").encode())
    assert msgspec.json.decode(first.split(b" ", 1)[1]) == msgspec.json.decode(pretty)
    q = np.concatenate(list(RawReplay(rec.paths[0]).chunks()))
    assert list(q["seq"]) == [7, 8]


def test_recorders_never_overwrite_each_other(tmp_path):
    a, b = recorder(tmp_path), recorder(tmp_path)
    a.write(T0, "a")
    b.write(T0, "b")
    a.close()
    b.close()
    assert a.paths[0] != b.paths[0]
    assert gzip.decompress(a.paths[0].read_bytes()) == b"%d a\n" % T0
    assert gzip.decompress(b.paths[0].read_bytes()) == b"%d b\n" % T0
    with pytest.raises(ValueError):
        a.write(T0, "closed")
    with pytest.raises(ValueError):
        RawRecorder(tmp_path, "bad_name")


# -- QuoteRecorder ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "symbol", ["BTC/USD", "BTCUSDT", "ES.c.0", "..", ".", "a b", "x%2Fy", "=", "é/€", "~_-", "BTC\\USD"]
)
def test_instrument_dir_name_is_a_safe_reversible_path_component(symbol):
    name = instrument_dir_name(symbol)
    assert re.fullmatch(r"[A-Za-z0-9_%-]+", name), name
    assert symbol_from_dir_name(name) == symbol
    assert symbol_from_dir_name(f"instrument={name}") == symbol
    assert instrument_dir_name("BTC/USD") == "BTC%2FUSD"


def make_quotes(n: int, instruments: int, t0: int, step: int) -> np.ndarray:
    q = np.zeros(n, QUOTE_DTYPE)
    k = np.arange(n)
    q["ts_recv"] = t0 + k * step
    q["ts_event"] = q["ts_recv"] - 7
    q["instrument"] = k % instruments
    q["bid_px"] = 100 + k * 0.25
    q["ask_px"] = q["bid_px"] + 0.5
    q["bid_sz"] = 1 + k % 3
    q["ask_sz"] = 2 + k % 5
    q["seq"] = 10_000 + k
    q["flags"] = k % 7
    return q


def test_quote_recorder_partitions_read_back_equal(tmp_path):
    table = InstrumentTable(
        [Instrument(symbol="BTC/USD", venue="kraken"), Instrument(symbol="ETHUSDT", venue="binance-spot")]
    )
    q = make_quotes(300, 2, MIDNIGHT - 100 * S, S)  # 100 s before midnight to 200 s after
    rec = QuoteRecorder(tmp_path, table, rotate_rows=64)
    for lo in range(0, 300, 37):
        rec.add(q[lo : lo + 37])
    rec.close()
    assert rec.rows_written == 300
    dirs = {p.parent.relative_to(tmp_path / "quotes").as_posix() for p in rec.paths}
    assert dirs == {
        "venue=kraken/instrument=BTC%2FUSD/date=2024-08-08",
        "venue=kraken/instrument=BTC%2FUSD/date=2024-08-09",
        "venue=binance-spot/instrument=ETHUSDT/date=2024-08-08",
        "venue=binance-spot/instrument=ETHUSDT/date=2024-08-09",
    }
    assert len(rec.paths) > 4  # rotate_rows split them
    for p in rec.paths:
        assert re.fullmatch(r"part-(\d+)-\d+\.parquet", p.name)
    got = ds.dataset(tmp_path / "quotes", partitioning="hive").to_table().to_pydict()
    assert set(got) == {
        "ts_event",
        "ts_recv",
        "bid_px",
        "ask_px",
        "bid_sz",
        "ask_sz",
        "seq",
        "flags",
        "venue",
        "instrument",
        "date",
    }
    cols = ("ts_event", "ts_recv", "bid_px", "ask_px", "bid_sz", "ask_sz", "seq", "flags")
    for i, inst in enumerate(table):
        for date, lo, hi in (("2024-08-08", 0, MIDNIGHT), ("2024-08-09", MIDNIGHT, 2 * MIDNIGHT)):
            want = q[(q["instrument"] == i) & (q["ts_recv"] >= lo) & (q["ts_recv"] < hi)]
            sel = [
                k
                for k in range(len(got["ts_recv"]))
                if got["instrument"][k] == inst.symbol and str(got["date"][k]) == date and got["venue"][k] == inst.venue
            ]
            rows = sorted((tuple(got[c][k] for c in cols) for k in sel), key=lambda r: r[1])
            assert rows == [tuple(r[c].item() for c in cols) for r in want]
    # Each file's name starts with its first ts_recv.
    for p in rec.paths:
        first = int(re.fullmatch(r"part-(\d+)-\d+\.parquet", p.name).group(1))
        assert ds.dataset(p).to_table()["ts_recv"][0].as_py() == first


def test_quote_recorder_numeric_symbol_stays_a_string(tmp_path):
    q = make_quotes(10, 1, T0, S)
    with QuoteRecorder(tmp_path, lambda i: ("okx", "1000")) as rec:
        rec.add(q)
    t = open_quotes(tmp_path).to_table()
    assert set(t["instrument"].to_pylist()) == {"1000"} and set(t["date"].to_pylist()) == {"2024-08-08"}
    assert t["seq"].to_pylist() == list(range(10_000, 10_010))
    with pytest.raises(TypeError):
        QuoteRecorder(tmp_path, [("v", "s")]).add(np.zeros(3))


def test_quote_recorder_writes_nothing_half_done(tmp_path):
    rec = QuoteRecorder(tmp_path, [("binance-spot", "BTCUSDT")], rotate_rows=1000)
    rec.add(make_quotes(10, 1, T0, S))
    assert not (tmp_path / "quotes").exists()  # buffered until rotate_rows or close
    rec.close()
    files = [p for p in (tmp_path / "quotes").rglob("*") if p.is_file()]
    assert [p.suffix for p in files] == [".parquet"] and not any(p.name.startswith(".") for p in files)
    assert os.path.getsize(files[0]) > 0
