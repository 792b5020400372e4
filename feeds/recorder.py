"""Writers for a live run: the raw venue frames (``RawRecorder``) and the quotes built from them
(``QuoteRecorder``).

Raw recordings
--------------
``root/raw/<venue>/<venue>_<UTC YYYYmmddTHHMMSS>_<n>.gz``, gzip text, one line per frame::

    <recv_ns> <frame>\\n
    <recv_ns> #{"event":"reconnect","symbols":["BTCUSDT"]}\\n      (a marker line)

the format of ``../shared/data/binance-raw`` plus marker lines, which ``feeds.raw_replay`` turns back
into the resets the live run had (``connected``, ``reconnect``/``stale`` with ``symbols``,
``restart``). The timestamp in the name is the first line's ``recv_ns``; ``n`` counts the files this
recorder opened and is bumped past any file already there, so nothing is ever overwritten. A new file
starts after ``rotate_bytes`` uncompressed bytes, after ``rotate_s`` seconds of receive time, and
when the UTC date of ``recv_ns`` changes, so a file never spans two UTC days.

Cost on the caller: ``write`` only appends the line to a list. Compression (zlib, which releases the
GIL) happens on the background thread, on another core, every ``flush_s / 4`` or sooner once
``drain_bytes`` are waiting; without the thread, in ``write`` once ``drain_bytes`` are waiting.

Crash safety: at least every ``flush_s`` (the background thread checks even when no frames arrive)
and on ``flush()`` the compressor is flushed with ``Z_SYNC_FLUSH`` and the bytes handed to the
operating system. A ``kill -9`` therefore loses at most the last ``flush_s``
of frames: the file lacks the gzip trailer, but everything up to the last sync point decompresses
(``feeds.raw_replay`` reads such a file and notes it as truncated). With ``fsync=True`` the flushes
are also forced to disk, which covers a power loss too, at a cost in latency.

Frames never contain a line break in practice (venues send compact JSON). One that does has each
``\\r`` and ``\\n`` replaced by a space: JSON allows whitespace between tokens and forbids raw control
characters inside strings, so a valid JSON frame keeps its meaning, and the line structure stays
intact. Such frames are counted in ``RawRecorder.escaped``.

Quote recordings
----------------
``QuoteRecorder`` writes normalized quotes as Parquet, partitioned hive-style::

    root/quotes/venue=<venue>/instrument=<symbol>/date=<YYYY-MM-DD>/part-<first ts_recv>-<n>.parquet

with columns ``ts_event, ts_recv, bid_px, ask_px, bid_sz, ask_sz, seq, flags`` (the venue and the
instrument come from the path; the date is the UTC date of ``ts_recv``). Partition values are
escaped with ``instrument_dir_name``: percent-encoding (RFC 3986) of every byte outside
``[A-Za-z0-9_-]``, so ``BTC/USD`` becomes ``BTC%2FUSD`` and ``.``/``..`` can never be a path
component. It is the escaping pyarrow's hive partitioning undoes on reading
(``segment_encoding="uri"``, its default), so ``pyarrow.dataset.dataset(root / "quotes",
partitioning="hive")`` gives back the original symbols; ``symbol_from_dir_name`` is the inverse for
other readers. ``open_quotes`` opens the dataset with every partition key typed as a string (plain
"hive" discovery would read a symbol such as ``1000`` as an integer).

Files are written under a hidden temporary name and renamed into place, so a reader (or a crash)
never sees half a Parquet file.
"""

from __future__ import annotations

import collections
import datetime as _dt
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, unquote

import msgspec
import numpy as np

from engine.domain.quote import QUOTE_DTYPE
from engine.domain.timestamps import DAY_NS, SECOND_NS

_encode = msgspec.json.encode


def _utc_day(ns: int) -> int:
    return ns // DAY_NS


def _utc_stamp(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns // SECOND_NS, tz=_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")


class RawRecorder:
    """Appends one venue's frames, as received, to rotating gzip files (see the module docstring).

    ``clock`` (monotonic seconds) times the flushes; ``background_flush`` starts a daemon thread that
    flushes pending data every ``flush_s`` even when no frame arrives (tests turn it off and inject
    ``clock``). Thread-safe: one lock guards the file.
    """

    def __init__(
        self,
        root: Path | str,
        venue: str,
        *,
        rotate_bytes: int = 256 << 20,
        rotate_s: float = 3600.0,
        flush_s: float = 1.0,
        level: int = 1,  # zlib's fastest: a live recorder must keep up with the feed
        drain_bytes: int = 256 << 10,
        fsync: bool = False,
        clock: Callable[[], float] = time.monotonic,
        background_flush: bool = True,
    ) -> None:
        if not venue or "/" in venue or "_" in venue:
            raise ValueError(f"venue {venue!r} must be a non-empty name without '/' or '_' (it starts each file name)")
        if rotate_bytes <= 0 or rotate_s <= 0 or flush_s <= 0:
            raise ValueError("rotate_bytes, rotate_s and flush_s must be positive")
        self.venue = venue
        self.dir = Path(root) / "raw" / venue
        self.rotate_bytes = int(rotate_bytes)
        self.rotate_ns = int(rotate_s * SECOND_NS)
        self.flush_s = float(flush_s)
        self.level = level
        self.fsync = fsync
        self._clock = clock
        self._lock = threading.Lock()  # the pending list and the file state
        self._io = threading.Lock()  # the compressor and the file writes; taken before _lock
        self._pending: collections.deque[bytes] = collections.deque()  # lines written, not yet compressed
        # Each counter is written by one thread only (the writer, the drainer): no lost updates.
        self._queued_bytes = 0
        self._taken_bytes = 0
        self.drain_bytes = int(drain_bytes)
        self._wake = threading.Event()
        self._background = background_flush
        self._f = None  # the open file
        self._rotate_at_ns = -1  # no file yet: the first write opens one
        self._z = None  # its compressor
        self._n = 0  # files opened by this recorder
        self._start_ns = 0  # first recv_ns in the current file
        self._day = 0  # its UTC day
        self._bytes = 0  # uncompressed bytes in the current file
        self._dirty = False  # written since the last flush
        self._last_flush = clock()
        self._closed = False
        self.paths: list[Path] = []  # every file written, in order
        self.frames = 0
        self.events = 0
        self.escaped = 0  # frames whose line breaks were replaced by spaces
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background_flush:
            self._thread = threading.Thread(target=self._flusher, name=f"raw-recorder-{venue}", daemon=True)
            self._thread.start()

    # -- writing ----------------------------------------------------------------------------------
    def write(self, recv_ns: int, frame: str | bytes) -> None:
        """Append ``<recv_ns> <frame>``; ``recv_ns`` is the receive time, ns UTC."""
        data = frame.encode() if isinstance(frame, str) else frame
        if b"\n" in data or b"\r" in data:
            data = bytes(data).replace(b"\r", b" ").replace(b"\n", b" ")
            self.escaped += 1
        line = b"%d %s\n" % (recv_ns, data)
        n = len(line)
        if recv_ns >= self._rotate_at_ns or self._bytes + n > self.rotate_bytes or self._closed:
            self._append(int(recv_ns), line)  # rare: a new file (or a closed recorder's error)
        else:
            # The live path: a deque append (thread-safe against the flusher's popleft), no lock.
            self._pending.append(line)
            self._bytes += n
            self._queued_bytes += n
            self._dirty = True
            self._after_append()
        self.frames += 1

    def event(self, recv_ns: int, kind: str, **fields: Any) -> None:
        """Append a marker line ``<recv_ns> #{"event": kind, ...fields}`` (``connected``,
        ``reconnect``/``stale`` with ``symbols=[...]``, ``restart``)."""
        if not kind:
            raise ValueError("event kind must be non-empty")
        self._append(int(recv_ns), b"%d #%s\n" % (int(recv_ns), _encode({"event": kind, **fields})))
        self.events += 1

    def _append(self, recv_ns: int, line: bytes) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("RawRecorder is closed")
            rotate = self._f is None or self._must_rotate(recv_ns, len(line))
        if rotate:  # finish the old file (its pending lines first), open the next
            with self._io, self._lock:
                self._drain_locked()
                self._open(recv_ns)
        self._pending.append(line)
        self._bytes += len(line)
        self._queued_bytes += len(line)
        self._dirty = True
        self._after_append()

    def _after_append(self) -> None:
        big = self._queued_bytes - self._taken_bytes >= self.drain_bytes
        if self._background:
            if big:
                self._wake.set()
            return
        due = self._clock() - self._last_flush >= self.flush_s
        if big or due:
            with self._io:
                if due:
                    self._flush_io()
                else:
                    self._drain_io()

    def _must_rotate(self, recv_ns: int, size: int) -> bool:
        if self._bytes and self._bytes + size > self.rotate_bytes:
            return True
        if recv_ns - self._start_ns >= self.rotate_ns:
            return True
        return _utc_day(recv_ns) != self._day

    def _open(self, recv_ns: int) -> None:
        self._close_file()
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = _utc_stamp(recv_ns)
        while True:
            path = self.dir / f"{self.venue}_{stamp}_{self._n}.gz"
            self._n += 1
            try:
                f = open(path, "xb")  # noqa: SIM115 - kept open across writes; "x": never overwrite a recording
            except FileExistsError:
                continue
            break
        self._f = f
        # wbits 31: a gzip container (header, deflate, CRC32/size trailer written on close).
        self._z = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        self._start_ns = recv_ns
        self._day = _utc_day(recv_ns)
        # The first receive time that needs a new file: rotate_s later, or the next UTC midnight.
        self._rotate_at_ns = min(recv_ns + self.rotate_ns, (self._day + 1) * DAY_NS)
        self._bytes = 0
        self.paths.append(path)

    # -- flushing ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Make everything written so far readable from the file (a gzip sync point)."""
        with self._io:
            if not self._closed:
                self._flush_io()

    def _take_pending(self) -> bytes:
        """The lines pending now, oldest first; lines appended meanwhile stay for next time."""
        q = self._pending
        n = len(q)
        lines = [q.popleft() for _ in range(n)]
        data = b"".join(lines)
        self._taken_bytes += len(data)
        return data

    def _drain_io(self) -> None:
        """Compress the pending lines into the file; caller holds _io (and may hold _lock)."""
        data = self._take_pending()
        if data and self._z is not None:
            self._f.write(self._z.compress(data))  # zlib releases the GIL while it deflates

    def _drain_locked(self) -> None:
        """_drain_io for a caller that already holds both locks (rotation, close)."""
        self._drain_io()

    def _flush_io(self) -> None:
        self._drain_io()
        with self._lock:
            dirty = self._dirty
            self._dirty = False
            self._last_flush = self._clock()
        if self._f is not None and dirty:
            self._f.write(self._z.flush(zlib.Z_SYNC_FLUSH))
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())

    def _flusher(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s / 4)
            self._wake.clear()
            with self._io:
                if self._closed:
                    return
                if self._dirty and self._clock() - self._last_flush >= self.flush_s:
                    self._flush_io()
                elif self._pending:
                    self._drain_io()

    def _close_file(self) -> None:
        if self._f is not None:
            self._drain_locked()
            self._f.write(self._z.flush(zlib.Z_FINISH))  # the gzip trailer
            self._f.flush()
            if self.fsync:
                os.fsync(self._f.fileno())
            self._f.close()
            self._f = self._z = None
            self._dirty = False

    def close(self) -> None:
        """Finish the current file (gzip trailer) and stop the flush thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._io, self._lock:
            if self._closed:
                return
            self._close_file()
            self._closed = True

    @property
    def path(self) -> Path | None:
        """The file being written, None before the first line and after ``close()``."""
        return self.paths[-1] if self._f is not None else None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- quotes to Parquet ------------------------------------------------------------------------------

_SAFE = "-_"  # with letters and digits: everything else is percent-encoded


def instrument_dir_name(symbol: str) -> str:
    """A symbol (or venue) as a partition value: percent-encoding of every byte outside
    ``[A-Za-z0-9_-]`` (UTF-8), e.g. ``BTC/USD`` -> ``BTC%2FUSD``, ``ES.c.0`` -> ``ES%2Ec%2E0``."""
    if not symbol:
        raise ValueError("symbol must be non-empty")
    return quote(symbol, safe=_SAFE).replace(".", "%2E").replace("~", "%7E")


def symbol_from_dir_name(name: str) -> str:
    """The inverse of ``instrument_dir_name``; accepts the value or the whole ``key=value`` segment."""
    _, eq, value = name.partition("=")
    return unquote(value if eq else name)


_COLUMNS = ("ts_event", "ts_recv", "bid_px", "ask_px", "bid_sz", "ask_sz", "seq", "flags")


def quote_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("ts_event", pa.int64()),
            ("ts_recv", pa.int64()),
            ("bid_px", pa.float64()),
            ("ask_px", pa.float64()),
            ("bid_sz", pa.float64()),
            ("ask_sz", pa.float64()),
            ("seq", pa.uint64()),
            ("flags", pa.uint16()),
        ]
    )


def open_quotes(root: Path | str):
    """The quotes under ``root/quotes`` as a ``pyarrow.dataset.Dataset``; venue, instrument and
    date partition columns are strings (symbols unescaped)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    part = ds.partitioning(
        pa.schema([("venue", pa.string()), ("instrument", pa.string()), ("date", pa.string())]), flavor="hive"
    )
    return ds.dataset(Path(root) / "quotes", format="parquet", partitioning=part)


def _pair(item: Any) -> tuple[str, str]:
    if isinstance(item, tuple):
        venue, symbol = item
        return str(venue), str(symbol)
    return str(item.venue), str(item.symbol)  # an engine.domain.instrument.Instrument


class QuoteRecorder:
    """Buffers ``QUOTE_DTYPE`` rows and writes them as hive-partitioned Parquet (module docstring).

    ``symbols`` maps an instrument id to ``(venue, symbol)``: a callable, or a sequence indexed by id
    of ``(venue, symbol)`` pairs or ``Instrument`` objects (an ``InstrumentTable`` works, and keeps
    working as it grows). When ``rotate_rows`` rows are buffered in all, every partition's buffer
    is written as one file; ``flush()`` does the same on demand and ``close()`` at the end.
    """

    def __init__(
        self,
        root: Path | str,
        symbols: Callable[[int], tuple[str, str]] | Sequence,
        *,
        rotate_rows: int = 1_000_000,
        compression: str = "zstd",
    ) -> None:
        if rotate_rows <= 0:
            raise ValueError("rotate_rows must be positive")
        self.dir = Path(root) / "quotes"
        if callable(symbols):
            self._lookup = symbols
        else:
            seq = symbols
            self._lookup = lambda i: _pair(seq[i])
        self.rotate_rows = int(rotate_rows)
        self.compression = compression
        self._names: dict[int, Path] = {}  # instrument id -> venue=/instrument= directory
        self._buf: dict[tuple[int, int], list[np.ndarray]] = {}  # (instrument, UTC day) -> chunks
        self._buffered = 0
        self._n = 0
        self._closed = False
        self.paths: list[Path] = []
        self.rows_written = 0

    def add(self, quotes: np.ndarray) -> None:
        if self._closed:
            raise ValueError("QuoteRecorder is closed")
        q = np.ascontiguousarray(quotes)
        if q.dtype != QUOTE_DTYPE:
            raise TypeError(f"expected QUOTE_DTYPE quotes, got {q.dtype}")
        if len(q) == 0:
            return
        inst = q["instrument"].astype(np.int64)
        day = q["ts_recv"] // DAY_NS
        key = inst * (1 << 24) + (day - int(day.min()))
        if len(q) == 1 or not (key[1:] != key[:-1]).any():
            groups = [(int(inst[0]), int(day[0]), q.copy())]
        else:
            order = np.argsort(key, kind="stable")  # keeps stream order within a partition
            ks = key[order]
            starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
            ends = np.r_[starts[1:], len(ks)]
            groups = []
            for a, b in zip(starts, ends):
                rows = order[a:b]
                groups.append((int(inst[rows[0]]), int(day[rows[0]]), q[rows]))
        for i, d, rows in groups:
            self._buf.setdefault((i, d), []).append(rows)
        self._buffered += len(q)
        if self._buffered >= self.rotate_rows:
            self.flush()

    def flush(self) -> None:
        """Write every partition's buffered rows, one file each."""
        for (inst, day), parts in sorted(self._buf.items()):
            self._write(inst, day, np.concatenate(parts) if len(parts) > 1 else parts[0])
        self._buf.clear()
        self._buffered = 0

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _partition(self, inst: int) -> Path:
        d = self._names.get(inst)
        if d is None:
            venue, symbol = self._lookup(inst)
            d = self._names[inst] = (
                self.dir / f"venue={instrument_dir_name(venue)}" / f"instrument={instrument_dir_name(symbol)}"
            )
        return d

    def _write(self, inst: int, day: int, rows: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        date = (_dt.date(1970, 1, 1) + _dt.timedelta(days=day)).isoformat()
        d = self._partition(inst) / f"date={date}"
        d.mkdir(parents=True, exist_ok=True)
        first = int(rows["ts_recv"][0])
        while True:
            path = d / f"part-{first}-{self._n}.parquet"
            self._n += 1
            if not path.exists():
                break
        table = pa.Table.from_arrays([pa.array(np.ascontiguousarray(rows[c])) for c in _COLUMNS], schema=quote_schema())
        tmp = d / f".{path.name}.tmp"  # hidden from dataset discovery until complete
        pq.write_table(table, tmp, compression=self.compression)
        os.replace(tmp, path)
        self.paths.append(path)
        self.rows_written += len(rows)
