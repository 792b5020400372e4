"""A Parquet catalog of normalized quotes: ingest vendor files once, replay any set of instruments fast.

Layout
------
The quotes use the layout, schema and partition escaping of ``feeds.recorder.QuoteRecorder``::

    root/catalog.json                      the manifest: the only thing a reader trusts
    root/quotes/venue=<v>/instrument=<s>/date=<YYYY-MM-DD>/part-<sha20>-<n>.parquet
    root/.lock                             held (flock) while an ingest writes
    root/.pending/<sha20>.jsonl            the journal of an ingest in progress

``venue`` and ``instrument`` are escaped with ``instrument_dir_name`` (``BTC/USD`` ->
``BTC%2FUSD``); ``date`` is the UTC date of ``ts_recv``. Columns: ``ts_event, ts_recv, bid_px,
ask_px, bid_sz, ask_sz, seq, flags`` (``feeds.recorder.quote_schema``), rows in ``ts_recv`` order.
``<sha20>`` is the first 20 hex digits of the source's SHA-256, so parts of different sources never
collide; ``<n>`` numbers the parts one ingest writes. A part holds one source's quotes of one
instrument on one day (normally one file per source and partition), in row groups of
``ROW_GROUP_ROWS`` with ``ts_recv`` statistics; timestamps and ``seq`` are delta-encoded, prices and
sizes dictionary-encoded, pages LZ4-compressed.

Manifest
--------
``catalog.json`` (``Manifest``): the instruments in the order they were first ingested (venue,
symbol, tick_size, lot_size, calendar, gap_ns, warmup_ticks: what a replay needs for its calendars
and resets), and one ``SourceEntry`` per ingested source: its path, SHA-256 and size (per file for a
folder source), format, the reader options given (``ReaderOptions.given``), rows read and written,
quarantined rows by rule, skipped rows by stream, timestamp unit, its instruments and every part
file it wrote (partition, rows, first and last ``ts_recv``, bytes). It is replaced atomically (write, fsync, rename).

Ingest (``Catalog.ingest``)
---------------------------
The source is opened with ``feeds.vendors.open_source`` and streamed chunk by chunk; rows are split
by UTC day and instrument and appended to one Parquet writer per partition, at most
``INGEST_BUFFER_ROWS`` rows buffered in all, so memory stays bounded whatever the file size.

- Idempotent: a source whose SHA-256 is already in the manifest is not read again ("already
  ingested"); a path whose content changed replaces the parts of its earlier content.
- Atomic: parts are written under hidden temporary names (``.tmp-<sha20>-<n>.parquet``), renamed
  to their final names once the source is read to the end, and the manifest, committed last, is
  what makes them visible. An exception mid-ingest deletes what was written; after a crash, the
  journal in ``.pending`` lets the next ingest delete the leftovers (``vacuum`` walks the whole
  tree). Files not named in the manifest are never read by ``Catalog.source``. One ingest writes at
  a time (``.lock``); a replay already running when an ingest replaces its source may fail once the
  old parts are deleted.

Replay (``Catalog.source`` -> ``CatalogSource``)
------------------------------------------------
A ``QuoteSource`` over chosen instruments and a time range. Each instrument's quotes from one
source form a *stream* (its part files in time order); streams of different sources of the same
instrument may overlap in time. Streams are read in row batches (``ParquetFile.iter_batches``,
row groups outside the range skipped by their statistics) and converted to ``QUOTE_DTYPE``
vectorized, and merged by a chunked k-way merge: every round tops up the streams whose buffer ran
low, takes the smallest "last buffered ts_recv" among the streams with data left to read (the
cutoff: no stream can later produce a row before it), and emits every buffered row before the cutoff
in one vectorized sort. Ties on ``ts_recv`` are ordered by instrument id, then by source (ingest
order), then by row order; at the cutoff itself, streams ranked at or before the stream that sets
it may emit their rows equal to the cutoff. The sort is one ``np.sort`` of int64 keys
``(ts - t0) << b | position`` (position in the concatenation encodes the tie-break; a stable argsort
when the keys would overflow), then one gather of the 64-byte rows per output chunk; a round whose
pieces do not overlap is concatenated, and a round with one piece is handed out as views. A stream
is opened only when the merge reaches its first timestamp, so only the streams that overlap in time
hold buffers, and one thread reads and converts each stream's next batch while the merge runs. The
buffer size per stream is derived from ``memory_budget_bytes`` and the largest number of streams
that overlap in time (``CatalogSource``).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import datetime as _dt
import fcntl
import hashlib
import itertools
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, as_rows, concat_rows, take_rows
from engine.domain.source import SourceStats
from engine.domain.timestamps import (
    DAY_NS,
    SECOND_NS,
    day_date,
    epoch_day,
    format_ns,
    parse_time_ns,
)
from feeds.recorder import instrument_dir_name, quote_schema
from feeds.vendors.options import ReaderOptions

MANIFEST = "catalog.json"
QUOTES_DIR = "quotes"
FORMAT_NAME = "nextick-catalog"
VERSION = 1

# -- writing ----------------------------------------------------------------------------------------
ROW_GROUP_ROWS = 1 << 17
INGEST_BUFFER_ROWS = 1 << 20  # rows buffered across all partitions before the largest are written
MAX_OPEN_PARTS = 512  # open Parquet writers (file descriptors); past this the least recently used part is finished
COMPRESSION = "lz4"  # decodes much faster than zstd; the delta and dictionary encodings do most of the shrinking
_DELTA = {"ts_event": "DELTA_BINARY_PACKED", "ts_recv": "DELTA_BINARY_PACKED", "seq": "DELTA_BINARY_PACKED"}
_DICT_COLUMNS = ["bid_px", "ask_px", "bid_sz", "ask_sz", "flags"]
_PAGE_BYTES = 64 << 10
_DICT_PAGE_BYTES = 128 << 10
_TAG_LEN = 20
_PART_RE = re.compile(rf"^part-([0-9a-f]{{{_TAG_LEN}}})-(\d+)\.parquet$")
_TMP_RE = re.compile(rf"^\.tmp-([0-9a-f]{{{_TAG_LEN}}})-(\d+)\.parquet$")

# -- reading: the memory model behind memory_budget_bytes (measured, see tests/test_catalog.py) -----
# Bytes held per row of batch_rows, per stream, all copies counted: the stream's QUOTE_DTYPE segments
# and ts_recv (up to 1.5 batches), the batch read ahead, Arrow's decoded batch and its reader's
# internal buffers, the merge round's share (concatenated rows, sort keys, output chunk), and the
# allocators' slack. Measured: 1 to 100 streams stay within the budget plus 2 to 13 MiB.
ROW_COST_BYTES = 768
STREAM_FIXED_BYTES = 576 << 10  # one open ParquetFile: footer, 8 column readers, pages, dictionaries
MIN_BATCH_ROWS = 1024
# 2 MiB of quotes. numpy asks for transparent huge pages for arrays of 4 MiB and more, and each
# fresh one then costs the kernel zeroing 2 MiB pages: a third of the replay's time, measured. Batches
# and output chunks stay below that size.
MAX_BATCH_ROWS = 1 << 15
DEFAULT_BUDGET = 256 << 20
_READ_BUFFER = 16 << 10

_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min
_COLUMNS = tuple(quote_schema().names)
assert _COLUMNS[:7] == QUOTE_DTYPE.names[:7] and _COLUMNS[7] == "flags"
# Offsets of instrument (u4) and flags (u2) in the last 8-byte word of a quote; the word is written
# whole, so the padding bytes are zero and equal data is equal byte for byte.
assert QUOTE_DTYPE.fields["instrument"][1] == 56 and QUOTE_DTYPE.fields["flags"][1] == 60


# -- manifest -----------------------------------------------------------------------------------------


class PartEntry(msgspec.Struct, kw_only=True):
    """One Parquet file: a source's quotes of one instrument on one UTC day."""

    path: str  # relative to the catalog root, '/'-separated
    venue: str
    symbol: str
    date: str  # YYYY-MM-DD, UTC date of ts_recv
    seq: int  # the <n> of the name: parts of one source and partition in write order
    rows: int
    ts_min: int  # first and last ts_recv, ns
    ts_max: int
    bytes: int


class FileEntry(msgspec.Struct, kw_only=True):
    path: str  # absolute; for a folder source, each file under it
    sha256: str
    size: int
    mtime_ns: int


class InstrumentEntry(msgspec.Struct, kw_only=True):
    """An instrument's metadata, as ``engine.domain.instrument.Instrument`` has it."""

    venue: str
    symbol: str
    tick_size: float = 0.01
    lot_size: float = 1.0
    calendar: str = "24x7"
    gap_ns: int = 60 * SECOND_NS
    warmup_ticks: int = 50

    @property
    def key(self) -> str:
        return f"{self.venue}:{self.symbol}"

    def instrument(self, symbol: str | None = None) -> Instrument:
        return Instrument(
            symbol=symbol or self.symbol,
            venue=self.venue,
            tick_size=self.tick_size,
            lot_size=self.lot_size,
            calendar=self.calendar,
            gap_ns=self.gap_ns,
            warmup_ticks=self.warmup_ticks,
        )

    @classmethod
    def of(cls, inst: Instrument) -> InstrumentEntry:
        venue = inst.venue
        symbol = inst.symbol
        # Readers over several venues qualify symbols as "<venue>:<symbol>"; the catalog keys by the pair.
        if symbol.startswith(venue + ":") and len(symbol) > len(venue) + 1:
            symbol = symbol[len(venue) + 1 :]
        return cls(
            venue=venue,
            symbol=symbol,
            tick_size=inst.tick_size,
            lot_size=inst.lot_size,
            calendar=inst.calendar,
            gap_ns=inst.gap_ns,
            warmup_ticks=inst.warmup_ticks,
        )


class SourceEntry(msgspec.Struct, kw_only=True):
    """One ingested source (a file, or a folder a reader takes whole)."""

    path: str  # absolute
    sha256: str  # of the file; of a folder: of its files' relative paths and hashes
    size: int  # bytes, all files
    format: str
    rank: int  # ingest order; orders ties between sources of one instrument
    ingested_at: str  # ISO-8601 UTC
    reader_options: dict[str, Any] = msgspec.field(default_factory=dict)
    files: list[FileEntry] = msgspec.field(default_factory=list)
    rows_read: int = 0
    rows_written: int = 0
    quarantined: dict[str, int] = msgspec.field(default_factory=dict)
    skipped: dict[str, int] = msgspec.field(default_factory=dict)
    ts_unit: str | None = None
    ts_unit_detected: bool = False
    instruments: list[InstrumentEntry] = msgspec.field(default_factory=list)
    parts: list[PartEntry] = msgspec.field(default_factory=list)
    elapsed_s: float = 0.0


class Manifest(msgspec.Struct, kw_only=True):
    format: str = FORMAT_NAME
    version: int = VERSION
    next_rank: int = 0
    instruments: list[InstrumentEntry] = msgspec.field(default_factory=list)  # first-ingest order
    sources: list[SourceEntry] = msgspec.field(default_factory=list)  # by rank


class IngestReport(msgspec.Struct, kw_only=True):
    """What one ``Catalog.ingest`` did. ``status``: ``ingested``, ``replaced`` (the path held other
    content before, whose parts were removed) or ``already ingested`` (nothing read or written)."""

    path: str
    status: str
    sha256: str
    size: int
    format: str | None = None
    rows_read: int = 0
    rows_written: int = 0
    quarantined: dict[str, int] = msgspec.field(default_factory=dict)
    skipped: dict[str, int] = msgspec.field(default_factory=dict)
    ts_unit: str | None = None
    ts_unit_detected: bool = False
    instruments: list[str] = msgspec.field(default_factory=list)  # "venue:symbol"
    partitions: int = 0
    parts: list[str] = msgspec.field(default_factory=list)  # relative paths
    bytes_written: int = 0
    elapsed_s: float = 0.0
    same_as: str | None = None  # already ingested: the path it was ingested from
    replaced_sha256: str | None = None
    notes: list[str] = msgspec.field(default_factory=list)

    @property
    def already_ingested(self) -> bool:
        return self.status == "already ingested"

    @property
    def quotes_per_s(self) -> float:
        return self.rows_read / self.elapsed_s if self.elapsed_s > 0 else float("nan")


class InstrumentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An instrument with data in the catalog: its metadata and what the catalog holds of it."""

    key: str  # "venue:symbol"
    venue: str
    symbol: str
    instrument: Instrument
    rows: int
    first_date: str
    last_date: str
    ts_min: int
    ts_max: int
    partitions: int  # dates
    sources: int


# -- helpers ------------------------------------------------------------------------------------------


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def source_files(path: Path) -> list[Path]:
    """The files a source consists of: the file itself, or every non-hidden file under a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    out = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(p)
    return out


def _fingerprint(path: Path) -> tuple[str, int, list[FileEntry]]:
    """(SHA-256, total size, per-file entries) of a file or folder source."""
    files = source_files(path)
    entries = []
    for f in files:
        st = f.stat()
        entries.append(FileEntry(path=str(f), sha256=_sha256_file(f), size=st.st_size, mtime_ns=st.st_mtime_ns))
    if path.is_file():
        return entries[0].sha256, entries[0].size, entries
    h = hashlib.sha256()
    for f, e in zip(files, entries):
        h.update(f"{f.relative_to(path).as_posix()}\0{e.sha256}\n".encode())
    return h.hexdigest(), sum(e.size for e in entries), entries


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in options.items():
        try:
            out[k] = msgspec.to_builtins(v, enc_hook=str)
        except (TypeError, ValueError):
            out[k] = str(v)
    return out


# -- ingest: the partition writer -----------------------------------------------------------------------


class _Part:
    __slots__ = (
        "bytes",
        "dir",
        "final",
        "inst",
        "key",
        "last_use",
        "pending",
        "pending_rows",
        "rows",
        "seq",
        "tmp",
        "ts_max",
        "ts_min",
        "writer",
    )

    def __init__(self, key: tuple[str, str, int], inst: InstrumentEntry, seq: int, d: Path, tag: str) -> None:
        self.key = key
        self.inst = inst
        self.seq = seq
        self.dir = d
        self.tmp = d / f".tmp-{tag}-{seq}.parquet"
        self.final = d / f"part-{tag}-{seq}.parquet"
        self.writer = None
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.rows = 0
        self.ts_min = _I64_MAX
        self.ts_max = _I64_MIN
        self.bytes = 0
        self.last_use = 0


class _PartWriter:
    """Splits a source's (ts_recv-ordered) chunks into partitions and writes them as hidden temporary
    Parquet files; ``publish`` renames them into place, ``abort`` deletes them."""

    def __init__(self, root: Path, tag: str, journal, *, fsync: bool = True, row_group_rows: int | None = None,
                 buffer_rows: int | None = None, max_open: int | None = None) -> None:
        self.root = root
        self.qdir = root / QUOTES_DIR
        self.tag = tag
        self.journal = journal
        self.fsync = fsync
        self.row_group_rows = row_group_rows or ROW_GROUP_ROWS
        self.buffer_rows = buffer_rows or INGEST_BUFFER_ROWS
        self.max_open = max_open or MAX_OPEN_PARTS
        self.open: dict[tuple[str, str, int], _Part] = {}
        self.done: list[_Part] = []
        self.buffered = 0
        self.seq = 0
        self.clock = 0
        self.rows = 0
        self.last_ts = _I64_MIN
        self._names: dict[int, InstrumentEntry] = {}  # reader's instrument id -> metadata
        self._dirs: set[Path] = set()

    # -- rows in
    def add(self, chunk: np.ndarray, table: InstrumentTable) -> None:
        n = len(chunk)
        if n == 0:
            return
        q = np.ascontiguousarray(chunk)
        if q.dtype != QUOTE_DTYPE:
            raise TypeError(f"expected QUOTE_DTYPE quotes, got {q.dtype}")
        ts = q["ts_recv"]
        if int(ts[0]) < self.last_ts or (n > 1 and bool((ts[1:] < ts[:-1]).any())):
            raise ValueError("the reader yielded quotes out of ts_recv order; the catalog needs time-ordered sources")
        self.last_ts = int(ts[-1])
        d0, d1 = int(ts[0]) // DAY_NS, int(ts[-1]) // DAY_NS
        # The stream is time-ordered: parts of earlier days are complete.
        for key in [k for k in self.open if k[2] < d0]:
            self._finish(self.open.pop(key))
        if d0 == d1:
            bounds = [0, n]
        else:
            cuts = np.searchsorted(ts, np.arange(d0 + 1, d1 + 1, dtype=np.int64) * DAY_NS, side="left")
            bounds = [0, *cuts.tolist(), n]
        for a, b in itertools.pairwise(bounds):
            if a == b:
                continue
            day = int(ts[a]) // DAY_NS
            piece = q[a:b]
            inst = piece["instrument"]
            first = inst[0]
            if len(inst) == 1 or not (inst != first).any():
                self._append(int(first), day, piece, table)
                continue
            # Stable, to keep time order within an instrument; on 16-bit keys numpy sorts by radix.
            key = inst.astype(np.uint16) if int(inst.max()) < 1 << 16 else inst
            order = np.argsort(key, kind="stable")
            grouped = take_rows(piece, order)
            si = inst[order]
            starts = np.flatnonzero(np.r_[True, si[1:] != si[:-1]])
            ends = np.r_[starts[1:], len(si)]
            for s, e in zip(starts.tolist(), ends.tolist()):
                self._append(int(si[s]), day, grouped[s:e], table)
        self.rows += n
        if self.buffered >= self.buffer_rows:
            # Write the largest buffers until half the allowance is free.
            for part in sorted(self.open.values(), key=lambda p: -p.pending_rows):
                if self.buffered <= self.buffer_rows // 2:
                    break
                self._flush(part)

    def _entry(self, inst_id: int, table: InstrumentTable) -> InstrumentEntry:
        e = self._names.get(inst_id)
        if e is None:
            e = InstrumentEntry.of(table[inst_id])
            if any(o.key == e.key for o in self._names.values()):
                raise ValueError(f"the reader has two instruments that are both {e.key}; the catalog keys by venue:symbol")
            self._names[inst_id] = e
        return e

    @property
    def instruments(self) -> dict[str, InstrumentEntry]:
        """The instruments that got rows, key -> metadata, in the reader's table order."""
        return {e.key: e for _, e in sorted(self._names.items())}

    def _append(self, inst_id: int, day: int, rows: np.ndarray, table: InstrumentTable) -> None:
        inst = self._entry(inst_id, table)
        key = (inst.venue, inst.symbol, day)
        part = self.open.get(key)
        if part is None:
            if len(self.open) >= self.max_open:
                lru = min(self.open.values(), key=lambda p: p.last_use)
                self._finish(self.open.pop(lru.key))
            d = (
                self.qdir / f"venue={instrument_dir_name(inst.venue)}"
                / f"instrument={instrument_dir_name(inst.symbol)}" / f"date={day_date(day).isoformat()}"
            )
            if d not in self._dirs:
                self.journal.add_dir(d.relative_to(self.root))
                d.mkdir(parents=True, exist_ok=True)
                self._dirs.add(d)
            part = self.open[key] = _Part(key, inst, self.seq, d, self.tag)
            self.seq += 1
        self.clock += 1
        part.last_use = self.clock
        part.pending.append(rows)
        part.pending_rows += len(rows)
        self.buffered += len(rows)
        if part.pending_rows >= self.row_group_rows:
            self._flush(part)

    # -- rows out
    def _flush(self, part: _Part) -> None:
        if not part.pending_rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = part.pending[0] if len(part.pending) == 1 else concat_rows(part.pending)
        part.pending = []
        self.buffered -= part.pending_rows
        part.pending_rows = 0
        schema = quote_schema()
        table = pa.Table.from_arrays([pa.array(np.ascontiguousarray(rows[c])) for c in _COLUMNS], schema=schema)
        if part.writer is None:
            part.writer = pq.ParquetWriter(
                part.tmp,
                schema,
                compression=COMPRESSION,
                use_dictionary=_DICT_COLUMNS,
                column_encoding=_DELTA,
                data_page_size=_PAGE_BYTES,
                dictionary_pagesize_limit=_DICT_PAGE_BYTES,
                write_statistics=["ts_recv"],
            )
        part.writer.write_table(table, row_group_size=self.row_group_rows)
        ts = rows["ts_recv"]
        part.rows += len(rows)
        part.ts_min = min(part.ts_min, int(ts[0]))
        part.ts_max = max(part.ts_max, int(ts[-1]))

    def _finish(self, part: _Part) -> None:
        self._flush(part)
        if part.writer is not None:
            part.writer.close()
            part.writer = None
            if self.fsync:
                _fsync_file(part.tmp)
            part.bytes = part.tmp.stat().st_size
            self.done.append(part)

    def finish(self) -> None:
        for key in list(self.open):
            self._finish(self.open.pop(key))

    def abort(self) -> bool:
        """Delete everything written (temporary and, after a failed ``publish``, final names); True
        when nothing is left behind."""
        clean = True
        for part in list(self.open.values()) + self.done:
            if part.writer is not None:
                with contextlib.suppress(Exception):
                    part.writer.close()
            for f in (part.tmp, part.final):
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    clean = False
        self.open.clear()
        self.done.clear()
        for d in self._dirs:
            _prune_empty(d, self.qdir)
        return clean

    def publish(self) -> list[PartEntry]:
        entries = []
        for part in self.done:
            os.replace(part.tmp, part.final)
            venue, symbol, day = part.key
            entries.append(
                PartEntry(
                    path=part.final.relative_to(self.root).as_posix(),
                    venue=venue,
                    symbol=symbol,
                    date=day_date(day).isoformat(),
                    seq=part.seq,
                    rows=part.rows,
                    ts_min=part.ts_min,
                    ts_max=part.ts_max,
                    bytes=part.bytes,
                )
            )
        if self.fsync:
            for d in self._dirs:
                _fsync_dir(d)
        entries.sort(key=lambda p: (p.venue, p.symbol, p.date, p.seq))
        return entries


def _prune_empty(d: Path, stop: Path) -> None:
    """Remove ``d`` and its parents up to (not including) ``stop`` while they are empty."""
    d = Path(d)
    while d != stop and stop in d.parents:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


class _Journal:
    """``.pending/<sha20>.jsonl``: the partition folders an ingest writes into and the files it will
    delete, so the next ingest can remove what a crash left behind."""

    def __init__(self, root: Path, tag: str) -> None:
        folder = root / ".pending"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{tag}.jsonl"
        self._f = open(self.path, "ab")  # noqa: SIM115 - appended to across the ingest

    def _write(self, obj: dict) -> None:
        self._f.write(msgspec.json.encode(obj) + b"\n")
        self._f.flush()

    def add_dir(self, rel: Path) -> None:
        self._write({"dir": rel.as_posix()})

    def delete(self, rel: str) -> None:
        self._write({"delete": rel})

    def close(self, remove: bool = True) -> None:
        self._f.close()
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
                self.path.parent.rmdir()


# -- the catalog -----------------------------------------------------------------------------------------


class Catalog:
    """A folder of quotes ingested from vendor files (see the module docstring)."""

    def __init__(self, root: Path | str, *, fsync: bool = True, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        if row_group_rows < 1:
            raise ValueError("row_group_rows must be positive")
        self.root = Path(root)
        self.fsync = fsync
        self.row_group_rows = int(row_group_rows)
        self._cache: tuple[tuple[int, int, int], Manifest] | None = None

    # -- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> Manifest:
        """The committed manifest (an empty one for a catalog not yet written)."""
        try:
            st = self.manifest_path.stat()
        except FileNotFoundError:
            return Manifest()
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == sig:
            return self._cache[1]
        man = msgspec.json.decode(self.manifest_path.read_bytes(), type=Manifest)
        if man.format != FORMAT_NAME or man.version > VERSION:
            raise ValueError(f"{self.manifest_path}: not a nextick catalog manifest of version <= {VERSION}")
        self._cache = (sig, man)
        return man

    def _commit(self, man: Manifest) -> None:
        tmp = self.root / f".{MANIFEST}.tmp"
        data = msgspec.json.format(msgspec.json.encode(man), indent=1)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.manifest_path)
        if self.fsync:
            _fsync_dir(self.root)
        self._cache = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- listing
    def sources(self) -> list[SourceEntry]:
        """Every ingested source, in ingest order."""
        return list(self.manifest().sources)

    def instruments(self) -> list[InstrumentInfo]:
        """Every instrument with data, in catalog order (first ingested first): its metadata, rows and
        date range."""
        man = self.manifest()
        agg: dict[str, list] = {}
        for src in man.sources:
            for p in src.parts:
                k = f"{p.venue}:{p.symbol}"
                a = agg.get(k)
                if a is None:
                    a = agg[k] = [0, p.date, p.date, p.ts_min, p.ts_max, set(), set()]
                a[0] += p.rows
                a[1] = min(a[1], p.date)
                a[2] = max(a[2], p.date)
                a[3] = min(a[3], p.ts_min)
                a[4] = max(a[4], p.ts_max)
                a[5].add(p.date)
                a[6].add(src.rank)
        out = []
        for e in man.instruments:
            a = agg.get(e.key)
            if a is None:
                continue
            out.append(
                InstrumentInfo(
                    key=e.key, venue=e.venue, symbol=e.symbol, instrument=e.instrument(), rows=a[0],
                    first_date=a[1], last_date=a[2], ts_min=a[3], ts_max=a[4], partitions=len(a[5]),
                    sources=len(a[6]),
                )
            )
        return out

    def date_range(self, instrument: str) -> tuple[str, str]:
        """(first, last) UTC date holding quotes of ``instrument`` ("symbol" or "venue:symbol")."""
        (info,) = self._select([instrument])
        got = {i.key: i for i in self.instruments()}[info.key]
        return got.first_date, got.last_date

    def files(self) -> list[Path]:
        """Every part file the manifest names (absolute paths)."""
        return [self.root / p.path for s in self.manifest().sources for p in s.parts]

    def dataset(self):
        """The committed quotes as a ``pyarrow.dataset.Dataset`` (venue, instrument and date partition
        columns as strings, symbols unescaped), for ad-hoc queries. Only files the manifest names."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        part = ds.partitioning(
            pa.schema([("venue", pa.string()), ("instrument", pa.string()), ("date", pa.string())]), flavor="hive"
        )
        return ds.dataset(
            [str(f) for f in self.files()], schema=None, format="parquet", partitioning=part,
            partition_base_dir=str(self.root / QUOTES_DIR),
        )

    # -- ingest
    def ingest(
        self, path: Path | str, *, fmt: str | None = None, options: ReaderOptions | None = None, **option_values: Any
    ) -> IngestReport:
        """Read ``path`` (a file, or a folder a reader takes whole) with ``feeds.vendors.open_source``
        into the catalog; see the module docstring for idempotency and atomicity. The reader gets
        ``options`` with ``option_values`` set (the fields of ``ReaderOptions``)."""
        from feeds.vendors import detect, open_source

        opts = ReaderOptions.build(options, **option_values)
        given = _jsonable(opts.given())
        path = Path(path).absolute()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        t0 = time.perf_counter()
        with self._locked():
            self._recover()
            man = self.manifest()
            sha, size, files = _fingerprint(path)
            tag = sha[:_TAG_LEN]
            same = next((s for s in man.sources if s.sha256 == sha), None)
            prior = next((s for s in man.sources if s.path == str(path) and s.sha256 != sha), None)
            if same is not None:
                report = IngestReport(
                    path=str(path), status="already ingested", sha256=sha, size=size, format=same.format,
                    same_as=same.path if same.path != str(path) else None,
                    instruments=[i.key for i in same.instruments],
                )
                if given != same.reader_options:
                    report.notes.append(
                        f"ingested before with reader options {same.reader_options or 'none'}, not {given or 'none'}; "
                        "to read it again with these, remove it first (Catalog.remove)"
                    )
                if prior is not None:
                    # The path now holds content ingested from elsewhere: its old content goes.
                    self._replace(man, prior, None, tag)
                    report.replaced_sha256 = prior.sha256
                    report.notes.append(f"removed the earlier content of this path (sha256 {prior.sha256[:12]})")
                report.elapsed_s = time.perf_counter() - t0
                return report

            fmt_name = fmt or detect(path)
            src = open_source(path, fmt_name, opts)
            journal = _Journal(self.root, tag)
            writer = _PartWriter(self.root, tag, journal, fsync=self.fsync, row_group_rows=self.row_group_rows)
            try:
                for chunk in src.chunks():
                    writer.add(chunk, src.instruments)
                writer.finish()
                parts = writer.publish()
            except BaseException:
                journal.close(remove=writer.abort())  # kept if files are left: the next ingest removes them
                raise
            st = src.stats
            entry = SourceEntry(
                path=str(path), sha256=sha, size=size, format=fmt_name,
                rank=prior.rank if prior is not None else man.next_rank,
                ingested_at=_now_iso(), reader_options=given, files=files,
                rows_read=st.rows_read, rows_written=writer.rows, quarantined=dict(st.quarantined),
                skipped=dict(st.skipped), ts_unit=st.ts_unit, ts_unit_detected=st.ts_unit_detected,
                instruments=list(writer.instruments.values()), parts=parts,
                elapsed_s=round(time.perf_counter() - t0, 6),
            )
            try:
                notes = self._replace(man, prior, entry, tag, journal=journal)
            except BaseException:
                journal.close(remove=False)  # not committed: the next ingest removes the published parts
                raise
            journal.close()
            return IngestReport(
                path=str(path), status="replaced" if prior is not None else "ingested", sha256=sha, size=size,
                format=fmt_name, rows_read=st.rows_read, rows_written=writer.rows, quarantined=dict(st.quarantined),
                skipped=dict(st.skipped), ts_unit=st.ts_unit, ts_unit_detected=st.ts_unit_detected,
                instruments=list(writer.instruments), partitions=len({(p.venue, p.symbol, p.date) for p in parts}),
                parts=[p.path for p in parts], bytes_written=sum(p.bytes for p in parts),
                elapsed_s=time.perf_counter() - t0, replaced_sha256=prior.sha256 if prior is not None else None,
                notes=notes,
            )

    def _replace(self, man: Manifest, prior: SourceEntry | None, entry: SourceEntry | None, tag: str,
                 journal: _Journal | None = None) -> list[str]:
        """Commit a manifest without ``prior`` and with ``entry``, then delete ``prior``'s files."""
        notes: list[str] = []
        own = journal is None
        if own:
            journal = _Journal(self.root, tag)
        if prior is not None:
            for p in prior.parts:
                journal.delete(p.path)
        sources = [s for s in man.sources if s is not prior]
        if entry is not None:
            sources.append(entry)
            sources.sort(key=lambda s: s.rank)
        instruments = list(man.instruments)
        index = {e.key: k for k, e in enumerate(instruments)}
        if entry is not None:
            for e in entry.instruments:
                k = index.get(e.key)
                if k is None:
                    index[e.key] = len(instruments)
                    instruments.append(e)
                elif instruments[k] != e:
                    notes.append(
                        f"{e.key}: metadata changed from {msgspec.to_builtins(instruments[k])} to "
                        f"{msgspec.to_builtins(e)}; the catalog now uses the new one"
                    )
                    instruments[k] = e
        used = {i.key for s in sources for i in s.instruments}
        instruments = [e for e in instruments if e.key in used]
        next_rank = max(man.next_rank, (entry.rank + 1) if entry is not None else 0)
        self._commit(Manifest(next_rank=next_rank, instruments=instruments, sources=sources))
        if prior is not None:
            qdir = self.root / QUOTES_DIR
            for p in prior.parts:
                f = self.root / p.path
                with contextlib.suppress(OSError):
                    f.unlink()
                _prune_empty(f.parent, qdir)
        if own:
            journal.close()
        return notes

    def _recover(self) -> None:
        """Delete what interrupted ingests left (journals in ``.pending``); caller holds the lock."""
        pending = self.root / ".pending"
        if not pending.is_dir():
            return
        journals = sorted(pending.glob("*.jsonl"))
        if not journals:
            return
        man = self.manifest()
        listed = {p.path for s in man.sources for p in s.parts}
        qdir = self.root / QUOTES_DIR
        for j in journals:
            tag = j.stem
            for line in j.read_bytes().splitlines():
                try:
                    item = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    continue  # a torn last line
                if "delete" in item:
                    rel = item["delete"]
                    if rel not in listed:
                        with contextlib.suppress(OSError):
                            (self.root / rel).unlink()
                        _prune_empty((self.root / rel).parent, qdir)
                elif "dir" in item:
                    d = self.root / item["dir"]
                    if not d.is_dir():
                        continue
                    for f in d.iterdir():
                        m = _TMP_RE.match(f.name) or _PART_RE.match(f.name)
                        if m and m.group(1) == tag and f.relative_to(self.root).as_posix() not in listed:
                            with contextlib.suppress(OSError):
                                f.unlink()
                    _prune_empty(d, qdir)
            with contextlib.suppress(OSError):
                j.unlink()

    def vacuum(self) -> list[Path]:
        """Delete every catalog-named file under ``quotes/`` that the manifest does not list
        (leftovers of a crash whose journal was lost) and empty folders; returns what it deleted.
        Files other writers put there (``QuoteRecorder``'s ``part-<ts>-<n>``) are left alone."""
        removed: list[Path] = []
        with self._locked():
            self._recover()
            listed = {p.path for s in self.manifest().sources for p in s.parts}
            qdir = self.root / QUOTES_DIR
            if not qdir.is_dir():
                return removed
            for dirpath, _, names in os.walk(qdir, topdown=False):
                d = Path(dirpath)
                for name in names:
                    f = d / name
                    if (_TMP_RE.match(name) or _PART_RE.match(name)) and f.relative_to(self.root).as_posix() not in listed:
                        f.unlink()
                        removed.append(f)
                if d != qdir:
                    with contextlib.suppress(OSError):
                        d.rmdir()
        return removed

    def remove(self, path_or_sha: str | Path) -> bool:
        """Drop one source (by its path or SHA-256) and its parts; False if there was none."""
        with self._locked():
            self._recover()
            man = self.manifest()
            key = str(path_or_sha)
            absolute = str(Path(key).absolute())
            victim = next((s for s in man.sources if s.sha256 == key or s.path in (key, absolute)), None)
            if victim is None:
                return False
            self._replace(man, victim, None, victim.sha256[:_TAG_LEN])
            return True

    # -- replay
    def _select(self, names: Sequence[str] | str | None) -> list[InstrumentEntry]:
        man = self.manifest()
        with_data = {f"{p.venue}:{p.symbol}" for s in man.sources for p in s.parts}
        entries = [e for e in man.instruments if e.key in with_data]
        if names is None:
            return entries
        if isinstance(names, str):
            names = [names]
        by_key = {e.key: e for e in entries}
        by_symbol: dict[str, list[InstrumentEntry]] = collections.defaultdict(list)
        for e in entries:
            by_symbol[e.symbol].append(e)
        picked: set[str] = set()
        for name in names:
            if name in by_key:
                picked.add(name)
            elif name in by_symbol:
                hits = by_symbol[name]
                if len(hits) > 1:
                    raise ValueError(
                        f"instrument {name!r} is ambiguous in {self.root}: {', '.join(e.key for e in hits)}; "
                        "name it as venue:symbol"
                    )
                picked.add(hits[0].key)
            else:
                known = ", ".join(e.key for e in entries[:20]) + (", ..." if len(entries) > 20 else "")
                raise ValueError(f"instrument {name!r} is not in the catalog {self.root} (known: {known or 'none'})")
        return [e for e in entries if e.key in picked]

    def source(
        self,
        instruments: Sequence[str] | str | None = None,
        start: Any = None,
        end: Any = None,
        *,
        memory_budget_bytes: int = DEFAULT_BUDGET,
        chunk_rows: int = 1 << 15,
        batch_rows: int | None = None,
        use_threads: bool | None = None,
        prefetch: bool = True,
    ) -> CatalogSource:
        """A ``QuoteSource`` over ``instruments`` (None: all; each "symbol" or "venue:symbol") from
        ``start`` (inclusive) to ``end`` (exclusive; a bare date includes that day), merged in
        ``ts_recv`` order. See ``CatalogSource``."""
        return CatalogSource(
            self, self._select(instruments), parse_time_ns(start), parse_time_ns(end, end=True),
            memory_budget_bytes=memory_budget_bytes, chunk_rows=chunk_rows, batch_rows=batch_rows,
            use_threads=use_threads, prefetch=prefetch,
        )


# -- replay ------------------------------------------------------------------------------------------------


def _convert(batch, inst_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A catalog record batch as (QUOTE_DTYPE rows, their ts_recv), column by column."""
    n = batch.num_rows
    out = np.empty(n, QUOTE_DTYPE)
    words = out.view(np.uint64).reshape(n, 8)
    cols = batch.columns
    ts = cols[1].to_numpy()
    for j in range(7):  # ts_event .. seq: the first seven 8-byte words, in the file's column order
        words[:, j] = ts.view(np.uint64) if j == 1 else cols[j].to_numpy().view(np.uint64)
    # instrument (u4) | flags (u2) << 32 | zero padding, as one word.
    last = cols[7].to_numpy().astype(np.uint64)
    last <<= np.uint64(32)
    last |= np.uint64(inst_id)
    words[:, 7] = last
    return out, ts


class _Stream:
    """One instrument's quotes from one source: its part files in time order, read in batches."""

    __slots__ = (
        "_it",
        "_next",
        "avail",
        "batch_rows",
        "cur",
        "hi",
        "inst",
        "last_ts",
        "lo",
        "max_ts",
        "min_ts",
        "more",
        "parts",
        "pool",
        "rank",
        "segs",
        "stats",
        "use_threads",
    )

    def __init__(self, rank: int, inst: int, parts: list[tuple[Path, int, int]], lo: int, hi: int,
                 batch_rows: int, use_threads: bool, stats: SourceStats, pool=None) -> None:
        self.rank = rank
        self.inst = inst
        self.parts = parts  # (path, ts_min, ts_max)
        self.lo, self.hi = lo, hi
        self.batch_rows = batch_rows
        self.use_threads = use_threads
        self.min_ts = max(lo, parts[0][1])
        self.max_ts = min(hi - 1, max(p[2] for p in parts))
        self.segs: collections.deque = collections.deque()
        self.cur = 0
        self.avail = 0
        self.more = True
        self.last_ts = _I64_MIN
        self._it: Iterator | None = None
        self.stats = stats
        # With a pool, the next batch is read and converted on its thread while the merge runs
        # (Arrow's decoding and numpy's copies release the GIL); one batch ahead per stream.
        self.pool = pool
        self._next = None

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import pyarrow.parquet as pq

        lo, hi = self.lo, self.hi
        for path, ts_min, ts_max in self.parts:
            if ts_max < lo or ts_min >= hi:
                continue
            trim = ts_min < lo or ts_max >= hi
            pf = pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
            groups = None
            if trim:
                md = pf.metadata
                groups = []
                for g in range(md.num_row_groups):
                    stt = md.row_group(g).column(1).statistics
                    if stt is not None and stt.has_min_max and (stt.max < lo or stt.min >= hi):
                        continue
                    groups.append(g)
                if not groups:
                    continue
            for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=groups, use_threads=self.use_threads):
                if batch.num_rows == 0:
                    continue
                if trim:
                    ts = batch.column(1).to_numpy()
                    a = int(np.searchsorted(ts, lo, "left")) if ts[0] < lo else 0
                    b = int(np.searchsorted(ts, hi, "left")) if ts[-1] >= hi else len(ts)
                    if a >= b:
                        if ts[0] >= hi:
                            break
                        continue
                    if a or b < len(ts):
                        batch = batch.slice(a, b - a)
                yield _convert(batch, self.inst)
            pf.close()

    def fill(self) -> None:
        """Read batches until at least ``batch_rows`` rows are buffered or the stream ends."""
        if not self.more:
            return
        if self._it is None:
            self._it = self._batches()
        while self.avail < self.batch_rows:
            if self._next is not None:
                nxt = self._next.result()
                self._next = None
            else:
                nxt = next(self._it, None)
            if nxt is None:
                self.more = False
                self._it = None
                return
            rows, ts = nxt
            self.segs.append((rows, ts))
            self.avail += len(ts)
            self.last_ts = int(ts[-1])
            self.stats.rows_read += len(ts)
        if self.pool is not None and self._next is None:
            self._next = self.pool.submit(next, self._it, None)

    def head_ts(self) -> int:
        return int(self.segs[0][1][self.cur]) if self.avail else _I64_MAX

    def take(self, cutoff: int, inclusive: bool, rows_out: list, ts_out: list) -> None:
        """Move the buffered rows before ``cutoff`` (or at it, when ``inclusive``) to the outputs."""
        segs = self.segs
        c = self.cur
        while segs:
            rows, ts = segs[0]
            last = int(ts[-1])
            if last < cutoff or (inclusive and last == cutoff):
                rows_out.append(rows[c:] if c else rows)
                ts_out.append(ts[c:] if c else ts)
                self.avail -= len(ts) - c
                segs.popleft()
                c = 0
                continue
            j = int(np.searchsorted(ts, cutoff, "right" if inclusive else "left"))
            if j > c:
                rows_out.append(rows[c:j])
                ts_out.append(ts[c:j])
                self.avail -= j - c
                c = j
            break
        self.cur = c


class _Merger:
    """Merges sorted pieces into one sorted array, reusing its scratch buffers (the concatenated
    rows and the sort keys) across rounds: fresh large arrays cost a page fault per 4 KiB."""

    def __init__(self) -> None:
        self._rows = np.empty(0, np.dtype((np.void, QUOTE_DTYPE.itemsize)))
        self._key = np.empty(0, np.int64)
        self._idx = np.empty(0, np.int64)

    def _scratch(self, n: int) -> None:
        if len(self._key) < n:
            size = max(n, 2 * len(self._key))
            self._rows = np.empty(size, self._rows.dtype)
            self._key = np.empty(size, np.int64)
            self._idx = np.arange(size, dtype=np.int64)

    def merge(self, rows: list[np.ndarray], ts: list[np.ndarray], chunk_rows: int) -> Iterator[np.ndarray]:
        """Pieces, each sorted by ts_recv and listed in tie-break order, merged into sorted chunks of
        at most ``chunk_rows`` rows: views of the piece when there is one; else the pieces are copied
        into the scratch buffer before this returns, and each chunk is gathered from it when the
        iterator reaches it (exhaust the iterator before the next ``merge``)."""
        if len(rows) == 1:
            one = rows[0]
            return iter([one[a : a + chunk_rows] for a in range(0, len(one), chunk_rows)])
        k = len(ts)
        n = sum(len(t) for t in ts)
        self._scratch(n)
        allrows = self._rows[:n]
        np.concatenate([as_rows(r) for r in rows], out=allrows)
        if all(ts[i][-1] <= ts[i + 1][0] for i in range(k - 1)):  # the pieces do not overlap
            return (allrows[a : a + chunk_rows].copy().view(QUOTE_DTYPE) for a in range(0, n, chunk_rows))
        key = self._key[:n]
        np.concatenate(ts, out=key)
        lo = min(int(t[0]) for t in ts)
        hi = max(int(t[-1]) for t in ts)
        bits = n.bit_length()
        if (hi - lo).bit_length() + bits <= 62:
            # (ts - lo) << bits | position: unique keys whose order is (ts, position), and position
            # encodes the tie-break (pieces are concatenated in stream rank order). A plain sort of
            # int64 values is several times faster than a stable argsort.
            key -= lo
            key <<= bits
            key |= self._idx[:n]
            key.sort()
            key &= (1 << bits) - 1
            order = key
        else:
            order = np.argsort(key, kind="stable")
        return (np.take(allrows, order[a : a + chunk_rows]).view(QUOTE_DTYPE) for a in range(0, n, chunk_rows))


def _max_overlap(intervals: Iterable[tuple[int, int]]) -> int:
    events = []
    for a, b in intervals:
        events.append((a, 0))  # opens sort before closes at the same time: closed intervals
        events.append((b, 1))
    events.sort()
    cur = best = 0
    for _, kind in events:
        cur += 1 if kind == 0 else -1
        best = max(best, cur)
    return best


class CatalogSource:
    """A ``QuoteSource`` over catalog instruments, merged in ``ts_recv`` order (module docstring).

    ``instruments`` holds the chosen instruments in catalog order, each with its catalog metadata;
    a symbol present at several of the chosen venues is named ``venue:symbol``. ``batch_rows`` (rows
    buffered per stream and read per Parquet batch) is derived from ``memory_budget_bytes`` and
    ``max_streams``, the largest number of streams overlapping in time:
    ``(budget - max_streams * STREAM_FIXED_BYTES) / (max_streams * ROW_COST_BYTES)``, within
    ``[MIN_BATCH_ROWS, MAX_BATCH_ROWS]``; pass ``batch_rows`` to set it directly. Chunks hold at most
    ``chunk_rows`` rows.

    Memory: the replay's peak stays within ``memory_budget_bytes`` plus a fixed overhead
    (allocator arenas, Arrow's pools, the read-ahead thread, one output chunk: measured 2 to 13 MiB,
    the test allows 24 MiB), whatever the amount of data, as long as the budget covers
    ``min_budget_bytes`` (about 1.3 MiB per stream open at once); below that it warns and uses
    ``MIN_BATCH_ROWS``. ``prefetch=False`` reads on the calling thread only; ``use_threads`` (default:
    for batches of 16k rows and more) lets Arrow decode a batch's columns in parallel.
    """

    def __init__(
        self,
        catalog: Catalog,
        entries: list[InstrumentEntry],
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        memory_budget_bytes: int = DEFAULT_BUDGET,
        chunk_rows: int = 1 << 15,
        batch_rows: int | None = None,
        use_threads: bool | None = None,
        prefetch: bool = True,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        if batch_rows is not None and batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        if memory_budget_bytes <= 0:
            raise ValueError("memory_budget_bytes must be positive")
        self.catalog = catalog
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.chunk_rows = int(chunk_rows)
        self.prefetch = bool(prefetch)
        self.memory_budget_bytes = int(memory_budget_bytes)
        counts = collections.Counter(e.symbol for e in entries)
        self.keys = [e.key for e in entries]
        self.instruments = InstrumentTable(
            e.instrument(e.key if counts[e.symbol] > 1 else e.symbol) for e in entries
        )
        span = ""
        if start_ns is not None or end_ns is not None:
            span = f" [{format_ns(start_ns)} .. {format_ns(end_ns)})"
        self.stats = SourceStats(source=f"catalog {catalog.root}{span}", ts_unit="ns")

        # Streams: per instrument (catalog order), per source (ingest order): the rank breaks ties.
        lo = _I64_MIN if start_ns is None else int(start_ns)
        hi = _I64_MAX if end_ns is None else int(end_ns)
        self._lo, self._hi = lo, hi
        ids = {e.key: k for k, e in enumerate(entries)}
        first_day = lo // DAY_NS
        last_day = (hi - 1) // DAY_NS
        groups: dict[tuple[int, int], list[PartEntry]] = collections.defaultdict(list)
        for src in catalog.manifest().sources:
            used = False
            for p in src.parts:
                i = ids.get(f"{p.venue}:{p.symbol}")
                if i is None or p.ts_max < lo or p.ts_min >= hi:
                    continue
                day = epoch_day(p.date)
                if first_day <= day <= last_day:
                    groups[(i, src.rank)].append(p)
                    used = True
            if used:
                # What the ingest of this source set aside, by rule: the run summary shows it with the
                # replay, so bad input is never out of sight because it was dropped a step earlier.
                for rule, n in src.quarantined.items():
                    self.stats.quarantine(rule, n)
                for kind, n in src.skipped.items():
                    self.stats.skipped[kind] = self.stats.skipped.get(kind, 0) + n
        self._plan: list[tuple[int, list[tuple[Path, int, int]]]] = []
        for (i, _), parts in sorted(groups.items()):
            parts.sort(key=lambda p: (p.ts_min, p.seq))
            self._plan.append((i, [(catalog.root / p.path, p.ts_min, p.ts_max) for p in parts]))
        self.planned_rows = sum(p.rows for ps in groups.values() for p in ps)
        self.max_streams = _max_overlap(
            (max(lo, ps[0][1]), min(hi - 1, max(p[2] for p in ps))) for _, ps in self._plan
        ) if self._plan else 0
        k = max(self.max_streams, 1)
        # The smallest budget this selection can keep to: every overlapping stream open at once.
        self.min_budget_bytes = k * (STREAM_FIXED_BYTES + MIN_BATCH_ROWS * ROW_COST_BYTES)
        if batch_rows is None:
            per = (self.memory_budget_bytes - k * STREAM_FIXED_BYTES) // (k * ROW_COST_BYTES)
            batch_rows = int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, per)))
            if per < MIN_BATCH_ROWS:
                warnings.warn(
                    f"memory_budget_bytes={self.memory_budget_bytes / 2**20:.0f} MiB is below what {k} instrument "
                    f"streams read at once need (~{self.min_budget_bytes / 2**20:.0f} MiB); the replay will use more. "
                    "Raise the budget or select fewer instruments.",
                    UserWarning,
                    stacklevel=3,
                )
        self.batch_rows = int(batch_rows)
        # Arrow's parallel column decoding pays off on large batches only.
        self.use_threads = self.batch_rows >= 16384 if use_threads is None else bool(use_threads)

    @property
    def streams(self) -> int:
        return len(self._plan)

    def chunks(self) -> Iterator[np.ndarray]:
        pool = ThreadPoolExecutor(1, thread_name_prefix="catalog-read") if self.prefetch and self._plan else None
        try:
            yield from self._chunks(pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _chunks(self, pool) -> Iterator[np.ndarray]:
        st = self.stats
        st.rows_read = st.rows_emitted = 0
        streams = [
            _Stream(rank, i, parts, self._lo, self._hi, self.batch_rows, self.use_threads, st, pool)
            for rank, (i, parts) in enumerate(self._plan)
        ]
        pending = sorted(streams, key=lambda s: (s.min_ts, s.rank))
        p = 0
        active: list[_Stream] = []  # by rank
        low = max(1, self.batch_rows // 2)
        chunk_rows = self.chunk_rows
        merger = _Merger()
        while True:
            for s in active:
                if s.more and s.avail < low:
                    s.fill()
            # Open the streams the merge has reached.
            if p < len(pending):
                head = min((s.head_ts() for s in active), default=_I64_MAX)
                if head == _I64_MAX:
                    head = pending[p].min_ts
                while p < len(pending) and pending[p].min_ts <= head:
                    s = pending[p]
                    p += 1
                    s.fill()
                    if s.avail:
                        bisect.insort(active, s, key=lambda x: x.rank)
            active = [s for s in active if s.avail or s.more]
            if not active and p >= len(pending):
                return
            # The cutoff: no stream can later produce a row before it.
            cutoff, star = _I64_MAX, _I64_MAX
            for s in active:
                if s.more and (s.last_ts < cutoff or (s.last_ts == cutoff and s.rank < star)):
                    cutoff, star = s.last_ts, s.rank
            if p < len(pending):
                s = pending[p]
                if s.min_ts < cutoff or (s.min_ts == cutoff and s.rank < star):
                    cutoff, star = s.min_ts, s.rank
            rows: list[np.ndarray] = []
            ts: list[np.ndarray] = []
            everything = cutoff == _I64_MAX and star == _I64_MAX
            for s in active:
                if s.avail:
                    s.take(cutoff, everything or s.rank <= star, rows, ts)
            if not rows:
                continue
            out = merger.merge(rows, ts, chunk_rows)
            del rows, ts
            for piece in out:
                st.rows_emitted += len(piece)
                yield piece
            del out, piece


def open_catalog(root: Path | str) -> Catalog:
    """A ``Catalog`` over an existing catalog folder (one with a manifest)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(f"{root}: not a catalog (no {MANIFEST}); create one with `nextick ingest SRC --catalog {root}`")
    return Catalog(root)

