"""Generic file replay: quotes from CSV (plain or gzip) and Parquet files through a column map.

The file is streamed in blocks (CSV: ``block_size`` bytes per Arrow batch; Parquet: ``chunk_rows``
rows per batch), converted to ``QUOTE_DTYPE`` chunks of at most ``chunk_rows`` rows, and validated
(``engine.domain.validate``), so memory stays bounded by the block and chunk sizes, never by the file.

Everything is parsed from text by Arrow's vectorized kernels. A value that does not parse is a
``malformed`` row (found by a regex pre-filter and, when that is not enough, by bisecting the
failing block), never a failed batch, and every row keeps its line number in the file so errors say
``file:line`` and the field.
"""

from __future__ import annotations

import csv
import gzip
import io
import queue
import re
import threading
import zipfile
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag, take_rows
from engine.domain.source import SourceStats
from engine.domain.timestamps import NS_PER, UNITS, detect_unit, to_ns
from engine.domain.validate import BadInputError, QuoteValidator, ValidationPolicy
from feeds.coalesce import Coalescer
from feeds.columns import (
    NUMERIC_RE,
    PARSE_ERRORS,
    bisect_bad,
    cast_lenient,
    localize,
    null_where,
    numbers,
)

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
ZIP_SUFFIXES = (".zip",)  # a zip archive holding one CSV (e.g. data.binance.vision), streamed

# ColumnMap.parse keys -> ColumnMap fields.
_KEYS = {
    "ts": "ts_recv",
    "ts_recv": "ts_recv",
    "ts_event": "ts_event",
    "bid": "bid_px",
    "bid_px": "bid_px",
    "ask": "ask_px",
    "ask_px": "ask_px",
    "bid_sz": "bid_sz",
    "ask_sz": "ask_sz",
    "symbol": "symbol",
    "seq": "seq",
}

# Header names ColumnMap.infer recognizes (compared after lower-casing, spaces/hyphens -> "_").
_RECV_NAMES = ("ts_recv", "local_timestamp", "local_ts", "recv_ts", "recv_time", "receive_time", "received_at")
_EVENT_NAMES = ("ts_event", "exchange_timestamp", "exchange_time", "event_time", "event_ts", "transact_time")
_TIME_NAMES = ("timestamp", "ts", "time", "datetime", "date_time", "ts_utc", "time_utc")
_TIME_PREFIXES = ("ts_", "timestamp_", "time_")
_BID_NAMES = ("bid", "bid_px", "bid_price", "bidprice", "best_bid", "best_bid_price", "bid_prc")
_ASK_NAMES = ("ask", "ask_px", "ask_price", "askprice", "best_ask", "best_ask_price", "ask_prc", "offer", "offer_price")
_BID_SZ_NAMES = (
    "bid_size", "bid_sz", "bid_qty", "bid_volume", "bid_amount", "bidsize", "bid_quantity", "bid_vol", "best_bid_qty",
)
_ASK_SZ_NAMES = (
    "ask_size", "ask_sz", "ask_qty", "ask_volume", "ask_amount", "asksize", "ask_quantity", "ask_vol", "best_ask_qty",
)
_SYMBOL_NAMES = ("symbol", "instrument", "ticker", "sym", "pair", "market")
_SEQ_NAMES = ("seq", "sequence", "seq_num", "sequence_number", "update_id")

_UTC_NAMES = {"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Z", "Etc/Zulu", "Zulu", "Universal", "Etc/Universal"}
# strptime directives of fixed width (in characters), to find where a trailing %f fraction starts.
_FIXED_WIDTH = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2, "y": 2, "j": 3, "%": 1}


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class ColumnMap(msgspec.Struct):
    """The source column of each quote field; None = not in the file.

    For files without a header, columns are named by their 0-based position: ``"0"``, ``"1"``, ...
    """

    ts_recv: str
    bid_px: str
    ask_px: str
    ts_event: str | None = None
    bid_sz: str | None = None
    ask_sz: str | None = None
    symbol: str | None = None
    seq: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ColumnMap":
        """``"ts=ts_ms_utc,bid=bid,ask=ask,bid_sz=bid_volume,ask_sz=ask_volume,symbol=symbol"``."""
        fields: dict[str, str] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, eq, col = (s.strip() for s in item.partition("="))
            if not eq or not col:
                raise ValueError(f"column map item {item!r} is not key=column; example: 'ts=timestamp,bid=bid,ask=ask'")
            if key not in _KEYS:
                raise ValueError(f"unknown column map key {key!r}; valid keys: {', '.join(_KEYS)}")
            field = _KEYS[key]
            if field in fields:
                raise ValueError(f"column map sets {field} twice (key {key!r}); give each field once")
            fields[field] = col
        missing = [k for k, f in (("ts", "ts_recv"), ("bid", "bid_px"), ("ask", "ask_px")) if f not in fields]
        if missing:
            raise ValueError(
                f"column map {text!r} lacks {', '.join(missing)}; ts, bid and ask are required, "
                f"e.g. 'ts=timestamp,bid=bid,ask=ask' (valid keys: {', '.join(_KEYS)})"
            )
        return cls(**fields)

    @classmethod
    def infer(cls, header: list[str]) -> "ColumnMap":
        """Map common column names (timestamp/ts/local_timestamp, bid/bid_price, bid_size/bid_qty, ...)."""
        by_norm: dict[str, str] = {}
        for h in header:
            by_norm.setdefault(_norm(h), h)

        def pick(names: tuple[str, ...], exclude: str | None = None) -> str | None:
            for n in names:
                col = by_norm.get(n)
                if col is not None and col != exclude:
                    return col
            return None

        ts_recv = pick(_RECV_NAMES)
        if ts_recv is not None:
            # A separate receive-time column makes a plain "timestamp" the exchange time (Tardis).
            ts_event = pick(_EVENT_NAMES + _TIME_NAMES, exclude=ts_recv)
        else:
            ts_event = pick(_EVENT_NAMES)
            ts_recv = pick(_TIME_NAMES, exclude=ts_event)
            if ts_recv is None:
                ts_recv = next(
                    (h for h in header if _norm(h).startswith(_TIME_PREFIXES) and h != ts_event), None
                )
            if ts_recv is None and ts_event is not None:
                ts_recv, ts_event = ts_event, None  # the only time there is orders the replay
        bid, ask = pick(_BID_NAMES), pick(_ASK_NAMES)
        missing = [n for n, c in (("ts", ts_recv), ("bid", bid), ("ask", ask)) if c is None]
        if missing:
            raise ValueError(
                f"cannot infer the column map from header {header}: no column for {', '.join(missing)}; "
                f"pass it explicitly, e.g. columns='ts=<time column>,bid=<bid column>,ask=<ask column>' "
                f"(valid keys: {', '.join(_KEYS)})"
            )
        return cls(
            ts_recv=ts_recv,
            bid_px=bid,
            ask_px=ask,
            ts_event=ts_event,
            bid_sz=pick(_BID_SZ_NAMES),
            ask_sz=pick(_ASK_SZ_NAMES),
            symbol=pick(_SYMBOL_NAMES),
            seq=pick(_SEQ_NAMES),
        )

    def mapped(self) -> dict[str, str]:
        """Quote field -> source column, for the fields present."""
        return {f: c for f in self.__struct_fields__ if (c := getattr(self, f)) is not None}


class FileReplay:
    """Replays one CSV (``.csv``, ``.txt``, optionally ``.gz``; or a ``.zip`` holding one CSV, streamed)
    or Parquet (``.parquet``, ``.pq``) file.

    Implements ``engine.domain.source.QuoteSource``. ``instruments`` is the table passed in (fixed: unknown
    symbols are ``unknown_symbol`` rows) or, when ``template`` is given or no table is, a table that
    grows with each new symbol (``template`` with the symbol replaced). With both, the passed table
    is the starting point and new symbols are added from the template.

    Timestamps: numeric epoch columns in ``ts_unit`` (``"auto"`` detects s/ms/us/ns on the first
    chunk, then keeps it); text with ``ts_format`` (strptime; a trailing ``%f`` takes 1 to 9
    fraction digits, so HistData's ``%Y%m%d %H%M%S%f`` reads ``170000065`` as 17:00:00.065); ISO-8601
    text without a format; Parquet timestamp columns by their type. Text and naive timestamps are
    local time in ``tz`` (IANA) and converted to UTC; local times that do not exist (a DST gap) are
    malformed, ambiguous ones (a DST fold) take the earlier instant. Epoch numbers are UTC already.

    Line numbers count the header as line 1 (and blank lines as malformed rows, so numbers stay
    physical); in Parquet the "line" is the 1-based row number.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        columns: ColumnMap | str | None = None,
        instruments: InstrumentTable | None = None,
        template: Instrument | None = None,
        symbol: str | None = None,
        ts_unit: str = "auto",
        ts_format: str | None = None,
        tz: str = "UTC",
        has_header: bool = True,
        policy: ValidationPolicy | str | None = None,
        chunk_rows: int = 1 << 18,
        block_size: int = 1 << 22,
        delimiter: str = ",",
        now_ns: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.source = str(self.path)
        self.format = _format_of(self.path)
        self._gzip = self.path.name.lower().endswith(".gz")
        if ts_unit != "auto" and ts_unit not in UNITS:
            raise ValueError(f"ts_unit {ts_unit!r} is not one of auto, {', '.join(UNITS)}")
        if chunk_rows < 1 or block_size < 1:
            raise ValueError("chunk_rows and block_size must be positive")
        _check_tz(tz)
        if ts_format is not None:
            _split_fraction_format(ts_format)  # fail here on a format we cannot handle, not mid-file
        self.ts_unit, self.ts_format, self.tz = ts_unit, ts_format, tz
        self.has_header = has_header
        self.delimiter = delimiter
        self.chunk_rows, self.block_size = int(chunk_rows), int(block_size)
        self.now_ns = now_ns
        if isinstance(policy, str):
            policy = ValidationPolicy.parse(policy)
        self.policy = policy or ValidationPolicy()
        self.stats = SourceStats(source=self.source)

        self._fixed = instruments is not None and template is None
        self.instruments = instruments if instruments is not None else InstrumentTable()
        self._template = template

        self.header = self._read_header()
        # Arrow names the columns of every block; positional names when there is no header.
        self._csv_names = self.header if self.format == "csv" else None
        if isinstance(columns, str):
            columns = ColumnMap.parse(columns)
        if columns is None:
            if self.format == "csv" and not has_header:
                raise ValueError(
                    f"{self.source}: a file without a header needs columns=, with columns named by "
                    f"0-based position, e.g. 'ts=0,bid=1,ask=2'"
                )
            if not self.header:
                raise ValueError(f"{self.source}: the file is empty, so there is no header to infer columns from")
            columns = ColumnMap.infer(self.header)
        self.columns = columns
        if self.header:  # an empty file has nothing to check against, and yields nothing
            absent = {f: c for f, c in columns.mapped().items() if c not in self.header}
            if absent:
                what = ", ".join(f"{f}={c!r}" for f, c in absent.items())
                raise ValueError(
                    f"{self.source}: mapped column(s) {what} not in the file; its columns are {self.header}. "
                    + ("Columns of a file without a header are named '0', '1', ... by position."
                       if not has_header else "Fix the column map.")
                )

        self._single_id: int | None = None
        if columns.symbol is not None:
            if symbol is not None:
                raise ValueError(
                    f"{self.source}: symbol={symbol!r} given but the file has a symbol column "
                    f"{columns.symbol!r}; pass one or the other"
                )
        else:
            name = symbol or _stem(self.path)
            sid = self.instruments.get(name)
            if sid is None:
                if self._fixed:
                    raise ValueError(
                        f"{self.source}: instrument {name!r} is not in the instrument table "
                        f"({', '.join(self.instruments.symbols) or 'empty'}); pass symbol= with one of those"
                    )
                sid = self.instruments.add(self._new_instrument(name))
            self._single_id = sid

    # -- QuoteSource -----------------------------------------------------------------------------

    def chunks(self) -> Iterator[np.ndarray]:
        """Validated ``QUOTE_DTYPE`` chunks of at most ``chunk_rows`` rows, in file order."""
        st = self.stats
        st.rows_read = st.rows_emitted = 0
        st.quarantined.clear()
        st.ts_unit, st.ts_unit_detected = None, False
        validator = QuoteValidator(self.policy, st, self.source, now_ns=self.now_ns)
        ts_recv = _TsColumn("ts_recv", self.columns.ts_recv, self)
        ts_event = _TsColumn("ts_event", self.columns.ts_event, self) if self.columns.ts_event else None
        out = Coalescer(self.chunk_rows)

        def emit(arrays: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
            for chunk in arrays:
                st.rows_emitted += len(chunk)
                yield chunk

        steps = self._csv_steps() if self.format == "csv" else self._parquet_steps()
        for batch, lines, reader_bad in steps:
            n_rows = 0 if batch is None else batch.num_rows
            st.rows_read += n_rows + len(reader_bad)
            if n_rows:
                quotes, code, describe = self._convert(batch, lines, ts_recv, ts_event)
                if st.ts_unit is None and ts_recv.label is not None:
                    st.ts_unit, st.ts_unit_detected = ts_recv.label, ts_recv.detected
            else:
                quotes, code, describe = np.zeros(0, QUOTE_DTYPE), np.zeros(0, np.int8), None
                lines = np.zeros(0, np.int64)

            # The first row of this step that breaks a rejecting reader rule, if any.
            reject: tuple[int, str, str, object, str] | None = None  # (line, rule, field, value, detail)
            if reader_bad and self.policy.rejects("malformed"):
                num, text, actual, expected = reader_bad[0]
                reject = (num, "malformed", "row", text[:200], f"expected {expected} fields, found {actual}")
            for rule_code, rule in ((_MALFORMED, "malformed"), (_UNKNOWN, "unknown_symbol")):
                if self.policy.rejects(rule) and len(code):
                    hits = np.flatnonzero(code == rule_code)
                    if len(hits) and (reject is None or lines[hits[0]] < reject[0]):
                        p = int(hits[0])
                        field, value, detail = describe(p)
                        reject = (int(lines[p]), rule, field, value, detail)
            if reject is not None:
                before = lines < reject[0]
                quotes, code, lines = take_rows(quotes, before), code[before], lines[before]
                reader_bad = [r for r in reader_bad if r[0] < reject[0]]

            # Quarantine what never became a quote (a rejecting rule has none before `reject`).
            if reader_bad:
                num, text, actual, expected = reader_bad[0]
                validator.reject_or_count("malformed", len(reader_bad), num, "row", text[:200])
            if len(code):
                for rule_code, rule in ((_MALFORMED, "malformed"), (_UNKNOWN, "unknown_symbol")):
                    n_bad = int(np.count_nonzero(code == rule_code))
                    if n_bad:
                        p = int(np.flatnonzero(code == rule_code)[0])
                        field, value, _ = describe(p)
                        validator.reject_or_count(rule, n_bad, int(lines[p]), field, value)
                good = code == 0
                if not good.all():
                    quotes, lines = take_rows(quotes, good), lines[good]
            try:
                kept = validator.check(quotes, lines)
            except BadInputError as err:
                # Deliver everything before the offending row, then stop.
                if err.kept is not None and len(err.kept):
                    yield from emit(out.add(err.kept))
                yield from emit(out.flush())
                raise
            yield from emit(out.add(kept))
            if reject is not None:
                yield from emit(out.flush())
                line, rule, field, value, detail = reject
                raise BadInputError(self.source, line, field, rule, value, detail)
        yield from emit(out.flush())

    # -- reading ---------------------------------------------------------------------------------

    def _read_header(self) -> list[str]:
        """Column names as the reader will name them ([] for an empty file)."""
        if self.format == "parquet":
            return list(pq.ParquetFile(self.path).schema_arrow.names)
        with io.TextIOWrapper(self._open_binary(), encoding="utf-8-sig", newline="") as f:
            first = f.readline()
        if not first:
            return []
        if not first.strip():
            raise ValueError(
                f"{self.source}: the first line is blank; expected "
                + ("the header" if self.has_header else "a data row to count the columns from")
                + ". Remove the blank line."
            )
        fields = next(csv.reader(io.StringIO(first), delimiter=self.delimiter))
        if self.has_header:
            return fields
        return [str(i) for i in range(len(fields))]

    def _open_binary(self, prefetch: bool = False):
        """The CSV's bytes as a stream: decompressed on the fly for gzip and for the one member of a
        zip archive (nothing is extracted to disk). With ``prefetch``, a compressed stream is
        decompressed one block ahead on a background thread (``read`` then returns whole blocks)."""
        if self._gzip:
            f = gzip.open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        elif self.path.name.lower().endswith(ZIP_SUFFIXES):
            f = _open_zip_member(self.path)
        else:
            return open(self.path, "rb")
        return _Prefetch(f, self.block_size) if prefetch else f

    def _read_columns(self) -> list[str]:
        """The source columns to read: the mapped ones (a subclass may add columns it uses in
        ``_convert``)."""
        return list(dict.fromkeys(self.columns.mapped().values()))

    def _csv_steps(self) -> Iterator[tuple[pa.RecordBatch | None, np.ndarray, list[tuple]]]:
        """(batch slice of <= chunk_rows rows, each row's line number, wrong-field-count rows
        before the slice's last line); a (None, [], rows) step carries bad rows after a block's
        last good row.

        The file is cut into blocks at line ends here and each block parsed on its own: Arrow's
        streaming CSV reader reads up to 32 blocks ahead on a background thread, which would make
        memory 32 x block_size; this way it is about 3 x block_size, and each block's first line
        number is known exactly (a line is one row: quoted newlines are not supported).
        """
        if not self.header:
            return
        bad: list[tuple[int, str, int, int]] = []  # this block's rows Arrow skipped

        def on_invalid(row: pacsv.InvalidRow) -> str:
            if row.number is None:  # only with a threaded reader, which we do not use
                return "error"
            bad.append((int(row.number), row.text, row.actual_columns, row.expected_columns))
            return "skip"

        cols = self._read_columns()
        parse_opts = pacsv.ParseOptions(
            delimiter=self.delimiter,
            invalid_row_handler=on_invalid,
            ignore_empty_lines=False,  # a blank line is a malformed row: counted, and lines stay physical
        )
        # Text columns; our own casts turn values that do not parse into malformed rows, where a
        # typed CSV column would fail the whole block.
        conv_opts = pacsv.ConvertOptions(
            include_columns=cols,
            column_types={c: pa.string() for c in cols},
            strings_can_be_null=False,
        )
        line0 = 1  # line number of the next block's first line
        first = True
        carry = b""
        with self._open_binary(prefetch=True) as f:
            while True:
                try:
                    data = f.read(self.block_size)
                except (OSError, EOFError, zipfile.BadZipFile) as exc:  # a truncated or corrupt archive
                    raise BadInputError(
                        self.source, line0, "file", "malformed", str(exc)[:200],
                        "the file cannot be read past this point (a truncated or corrupt archive?)",
                    ) from exc
                eof = not data
                buf = carry + data if carry else data
                if first and (buf or eof):
                    first = False
                    if buf.startswith(b"\xef\xbb\xbf"):
                        buf = buf[3:]
                    if self.has_header:
                        nl = buf.find(b"\n")
                        if nl < 0 and not eof:
                            carry, first = buf, True  # the header is longer than a block
                            continue
                        buf = buf[nl + 1 :] if nl >= 0 else b""
                        line0 = 2
                if eof:
                    cut, carry = len(buf) - 1, b""
                else:
                    cut = buf.rfind(b"\n")
                    if cut < 0:  # a line longer than the block: read on
                        carry = buf
                        continue
                    carry = buf[cut + 1 :]
                if cut >= 0:
                    block = memoryview(buf)[: cut + 1]  # no copy of the block
                    yield from self._csv_block(block, line0, bad, parse_opts, conv_opts)
                    line0 += buf.count(b"\n", 0, cut + 1) + (0 if buf[cut] == 0x0A else 1)
                    del block
                if eof:
                    break

    def _csv_block(self, block: memoryview, line0: int, bad: list, parse_opts, conv_opts):
        bad.clear()
        read_opts = pacsv.ReadOptions(
            use_threads=False,  # serial parsing is what gives the invalid-row handler row numbers
            block_size=len(block) + 1,  # one piece: the block is already bounded
            column_names=self._csv_names,
        )
        try:
            table = pacsv.read_csv(
                pa.BufferReader(pa.py_buffer(block)),
                read_options=read_opts, parse_options=parse_opts, convert_options=conv_opts,
            )
        except pa.ArrowInvalid as exc:
            raise BadInputError(
                self.source, line0, "file", "malformed", str(exc)[:200],
                "Arrow cannot parse the block of lines starting here (unbalanced quotes?)",
            ) from exc
        # Line of the k-th good row of the block: line0 + k + (skipped rows before it). With B_i the
        # skipped rows' 1-based numbers in the block, B_i comes first iff B_i - i <= k + 1.
        pending = sorted((line0 + num - 1, text, actual, expected) for num, text, actual, expected in bad)
        m = table.num_rows
        k = np.arange(m, dtype=np.int64)
        if pending:
            nums = np.fromiter((p[0] - line0 + 1 for p in pending), np.int64, len(pending))
            adj = nums - np.arange(len(nums), dtype=np.int64)
            lines = line0 + k + np.searchsorted(adj, k + 1, side="right")
        else:
            lines = line0 + k
        done = 0
        for batch in table.to_batches(max_chunksize=self.chunk_rows):
            ln = lines[done : done + batch.num_rows]
            done += batch.num_rows
            if not len(ln):
                continue
            last = int(ln[-1])
            n_take = 0
            while n_take < len(pending) and pending[n_take][0] < last:
                n_take += 1
            taken, pending = pending[:n_take], pending[n_take:]
            yield batch, ln, taken
        if pending:
            yield None, np.zeros(0, np.int64), pending

    def _parquet_steps(self) -> Iterator[tuple[pa.RecordBatch | None, np.ndarray, list[tuple]]]:
        pf = pq.ParquetFile(self.path)
        cols = self._read_columns()
        row0 = 0
        for batch in pf.iter_batches(batch_size=self.chunk_rows, columns=cols):
            m = batch.num_rows
            if m:
                yield batch, np.arange(row0 + 1, row0 + 1 + m, dtype=np.int64), []
            row0 += m

    # -- conversion ------------------------------------------------------------------------------

    def _convert(self, batch: pa.RecordBatch, lines: np.ndarray, ts_recv: "_TsColumn", ts_event: "_TsColumn | None"):
        """(quotes, code per row: 0 ok / malformed / unknown symbol, describe(row) -> (field, value, detail))."""
        n = batch.num_rows
        cmap = self.columns
        q = np.zeros(n, dtype=QUOTE_DTYPE)
        code = np.zeros(n, dtype=np.int8)
        problems: list[tuple[str, str, np.ndarray, str]] = []  # (field, column, bad mask, why)

        def note(field: str, column: str, bad: np.ndarray | None, why: str) -> None:
            if bad is not None and bad.any():
                problems.append((field, column, bad, why))

        recv_ns, bad = ts_recv.convert(batch.column(cmap.ts_recv))
        q["ts_recv"] = recv_ns
        note("ts_recv", cmap.ts_recv, bad, ts_recv.expectation())
        if ts_event is not None:
            arr = batch.column(cmap.ts_event)
            missing = _missing(arr)
            ev_ns, bad = ts_event.convert(arr if missing is None else null_where(arr, missing))
            if missing is not None:
                ev_ns = np.where(missing, recv_ns, ev_ns)
                q["flags"] = np.where(missing, np.uint16(QuoteFlag.SYNTHETIC_TS), np.uint16(0))
                bad = None if bad is None else bad & ~missing
            q["ts_event"] = ev_ns
            note("ts_event", cmap.ts_event, bad, ts_event.expectation())
        else:
            q["ts_event"] = recv_ns
            q["flags"] = np.uint16(QuoteFlag.SYNTHETIC_TS)

        # A side left blank, price and size both, is a missing side: a one-sided quote, the side at
        # 0/0, flagged. A blank price with a size, or in a file without sizes, is malformed (there
        # is no telling an empty book side from a broken row).
        blank_side: dict[str, np.ndarray | None] = {}
        for px, sz in (("bid_px", "bid_sz"), ("ask_px", "ask_sz")):
            size_col = getattr(cmap, sz)
            blank = _missing(batch.column(getattr(cmap, px))) if size_col is not None else None
            if blank is not None:
                size_blank = _missing(batch.column(size_col))
                blank = blank & size_blank if size_blank is not None else None
            blank_side[px] = blank_side[sz] = blank if blank is not None and blank.any() else None
        for field in ("bid_px", "ask_px", "bid_sz", "ask_sz"):
            column = getattr(cmap, field)
            if column is None:
                continue  # sizes absent: 0.0, which the zeroed array already holds
            vals, bad = numbers(batch.column(column), (pa.float64(),))
            side = blank_side[field]
            if side is not None:
                vals = np.where(side, 0.0, vals)
                bad = None if bad is None else bad & ~side
                q["flags"] |= np.where(side, np.uint16(QuoteFlag.ONE_SIDED), np.uint16(0))
            q[field] = vals
            note(field, column, bad, "expected a number")
        if cmap.seq is not None:
            vals, bad = numbers(batch.column(cmap.seq), (pa.uint64(),))
            q["seq"] = vals
            note("seq", cmap.seq, bad, "expected a non-negative integer")

        unknown = None
        if cmap.symbol is not None:
            ids, bad, unknown = self._symbol_ids(batch.column(cmap.symbol))
            q["instrument"] = np.where(ids >= 0, ids, 0)
            note("symbol", cmap.symbol, bad, "expected a symbol")
            if unknown is not None:
                code[unknown] = _UNKNOWN
        else:
            q["instrument"] = self._single_id

        for _, _, bad, _ in problems:
            code[bad] = _MALFORMED  # malformed comes before unknown_symbol in RULES

        def describe(p: int) -> tuple[str, object, str]:
            if code[p] == _UNKNOWN:
                value = batch.column(cmap.symbol)[p].as_py()
                known = ", ".join(self.instruments.symbols[:20]) or "none"
                return "symbol", value, f"symbol {value!r} is not in the instrument table (known: {known})"
            for field, column, bad, why in problems:
                if bad[p]:
                    value = batch.column(column)[p].as_py()
                    return field, value, f"column {column!r}: {why}"
            return "row", None, ""

        return q, code, describe

    def _symbol_ids(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Instrument id per row (-1 unknown, -2 missing), missing mask, unknown mask."""
        enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
        id_of = np.empty(len(enc.dictionary) + 1, dtype=np.int64)
        id_of[-1] = -2  # null index
        for i, value in enumerate(enc.dictionary.to_pylist()):
            sym = "" if value is None else str(value)
            if not sym:
                id_of[i] = -2
                continue
            sid = self.instruments.get(sym)
            if sid is None:
                if self._fixed:
                    sid = -1
                else:
                    sid = self.instruments.add(self._new_instrument(sym))
            id_of[i] = sid
        idx = enc.indices.fill_null(len(enc.dictionary)).to_numpy(zero_copy_only=False)
        ids = id_of[idx]
        missing, unknown = ids == -2, ids == -1
        return ids, (missing if missing.any() else None), (unknown if unknown.any() else None)

    def _new_instrument(self, symbol: str) -> Instrument:
        if self._template is None:
            return Instrument(symbol=symbol)
        return msgspec.structs.replace(self._template, symbol=symbol)


_MALFORMED, _UNKNOWN = 1, 2


# -- value conversion -----------------------------------------------------------------------------


def _missing(arr: pa.Array) -> np.ndarray | None:
    """Null or empty-text entries (an optional column left blank)."""
    m = arr.is_null()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        m = pc.or_(m, pc.equal(arr, ""))
    out = m.to_numpy(zero_copy_only=False)
    return out if out.any() else None


def _nulls(arr: pa.Array) -> np.ndarray | None:
    return arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None


def _fraction_ns(frac: pa.Array, scale: int) -> np.ndarray:
    """Decimal fraction digits (text, null = none) of a unit worth ``scale`` ns, in ns (truncated
    below 1 ns)."""
    keep = len(str(scale)) - 1  # digits that matter: 9 for s, 6 for ms, 3 for us
    f = pc.utf8_slice_codeunits(frac.fill_null(""), 0, keep)
    digits = pc.utf8_length(f).to_numpy(zero_copy_only=False)
    val = pc.cast(pc.if_else(pc.equal(f, ""), "0", f), pa.int64()).to_numpy(zero_copy_only=False)
    return val * (10 ** (keep - digits)).astype(np.int64)


def _check_tz(tz: str) -> None:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r}; use an IANA name such as 'UTC', 'America/New_York', "
            f"or 'Etc/GMT+5' for a fixed UTC-5 clock without DST (note the inverted sign)"
        ) from exc


def _split_fraction_format(fmt: str) -> tuple[str, str | None]:
    """(strptime format without a trailing %f, regex splitting head and fraction digits, or None)."""
    if "%f" not in fmt:
        return fmt, None
    if not fmt.endswith("%f") or fmt.count("%f") > 1:
        raise ValueError(f"ts_format {fmt!r}: %f (fraction digits) is supported only once, at the end")
    head = fmt[:-2]
    width, i = 0, 0
    while i < len(head):
        if head[i] == "%":
            d = head[i + 1 : i + 2]
            if d not in _FIXED_WIDTH:
                width = -1
                break
            width += _FIXED_WIDTH[d]
            i += 2
        else:
            width += 1
            i += 1
    if width >= 0:
        return head, rf"^(?P<head>.{{{width}}})(?P<frac>\d{{1,9}})\s*$"
    if head and head[-1] != "%" and not head[-1].isalnum():
        sep = re.escape(head[-1])
        return head, rf"^(?P<head>.*{sep})(?P<frac>\d{{1,9}})\s*$"
    raise ValueError(
        f"ts_format {fmt!r}: %f must follow fixed-width fields (%Y %m %d %H %M %S ...) or a separator such as '.'"
    )


_POW10 = np.array([10 ** (9 - k) if k <= 9 else 0 for k in range(11)], dtype=np.int64)


class _TsColumn:
    """Converts one timestamp column to int64 ns UTC, keeping the mode and unit it settles on at the
    first chunk so that every chunk is read the same way."""

    def __init__(self, field: str, column: str, replay: FileReplay) -> None:
        self.field, self.column = field, column
        self.source = replay.source
        self.tz = replay.tz
        self.fmt = replay.ts_format
        self.unit: str | None = None if replay.ts_unit == "auto" else replay.ts_unit
        self.detected = False
        self.label: str | None = None  # what stats.ts_unit reports
        self.mode: str | None = None  # "epoch", "format", "iso", "arrow"

    def expectation(self) -> str:
        if self.mode == "format":
            return f"expected a time in format {self.fmt!r}"
        if self.mode == "iso":
            return "expected an ISO-8601 time"
        return f"expected an epoch timestamp ({self.unit or 'number'})"

    def convert(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        t = arr.type
        if pa.types.is_timestamp(t):
            self.mode, self.label = "arrow", t.unit
            ts = pc.cast(arr, pa.timestamp("ns", t.tz))
            return self._finish(ts, naive=t.tz is None)
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            return self._epoch(arr)
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise ValueError(
                f"{self.source}: column {self.column!r} ({self.field}) has type {t}, not a time; check the column map"
            )
        if self.fmt is not None:
            return self._format(arr)
        if self.mode is None:
            filled = pc.filter(arr, pc.not_equal(pc.utf8_trim_whitespace(arr), ""))
            first = filled[0].as_py() if len(filled) else None
            if first is None or re.match(NUMERIC_RE, first):
                return self._epoch(arr)  # decide on a later chunk if this one has no value at all
            self.mode, self.label, self.detected = "iso", "iso8601", True
        if self.mode == "iso":
            return self._iso(arr)
        return self._epoch(arr)

    def _epoch(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
        self.mode = "epoch"
        t = arr.type
        if pa.types.is_integer(t):
            vals, bad = numbers(arr, (pa.int64(),))
            return self._scale(vals, bad, None, None)
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            vals, bad = numbers(arr, (pa.float64(),))
            return self._scale(None, bad, vals, None)
        try:
            ints = pc.cast(arr, pa.int64())
        except PARSE_ERRORS:
            return self._epoch_text(arr)
        return self._scale(ints.fill_null(0).to_numpy(zero_copy_only=False), _nulls(ints), None, None)

    def _epoch_text(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
        """Decimal text such as ``1700000000.123456789``, split at the point so the fraction is
        exact (a float64 holds only ~16 significant digits); other numbers (``1.7e9``) via float."""
        arr = pc.utf8_trim_whitespace(arr)
        parts = pc.extract_regex(arr, r"^(?P<int>[+-]?\d+)(?:\.(?P<frac>\d*))?$")
        decimal = ~parts.is_null().to_numpy(zero_copy_only=False)
        ip_text = pc.struct_field(parts, "int")
        ip = cast_lenient(ip_text, (pa.int64(),))
        whole = ip.fill_null(0).to_numpy(zero_copy_only=False)
        negative = pc.starts_with(ip_text, "-").fill_null(False).to_numpy(zero_copy_only=False)
        bad = ~decimal | ip.is_null().to_numpy(zero_copy_only=False)
        floats = None
        if not decimal.all():
            fvals, fbad = numbers(null_where(arr, decimal), (pa.float64(),))
            floats = np.where(decimal, np.nan, fvals)
            fbad = (fbad if fbad is not None else False) | ~np.isfinite(fvals)
            bad = np.where(decimal, bad, fbad)
        return self._scale(whole, bad if bad.any() else None, floats, (pc.struct_field(parts, "frac"), negative))

    def _scale(self, whole, bad, floats, frac) -> tuple[np.ndarray, np.ndarray | None]:
        """ns from integer parts ``whole`` (+ exact decimal fraction ``frac``) and/or ``floats``
        (used where not NaN), detecting the unit on the first values seen."""
        n = len(whole) if whole is not None else len(floats)
        if floats is not None:
            nonfinite = ~np.isfinite(floats)
            if whole is None:  # a float column: every row is a float
                bad = nonfinite if bad is None else bad | nonfinite
        if self.unit is None:
            approx = whole.astype(np.float64) if whole is not None else floats
            if floats is not None and whole is not None:
                approx = np.where(np.isnan(floats), approx, floats)
            valid = approx if bad is None else approx[~bad]
            if len(valid) == 0:
                return np.zeros(n, np.int64), bad
            self.unit = detect_unit(valid, source=f"{self.source} column {self.column!r} ({self.field})")
            self.detected = True
        self.label = self.unit
        scale = NS_PER[self.unit]
        limit = np.iinfo(np.int64).max // scale  # beyond this the product overflows: malformed
        ns = np.zeros(n, np.int64)
        if whole is not None:
            over = np.abs(whole) >= limit
            w = np.where(over, 0, whole)
            ns = to_ns(w, self.unit)
            if frac is not None and scale > 1:
                frac_ns = _fraction_ns(frac[0], scale)
                ns = ns + np.where(frac[1], -frac_ns, frac_ns)
            if over.any():
                bad = over if bad is None else bad | over
        if floats is not None:
            use = ~np.isnan(floats) if whole is not None else np.ones(n, bool)
            f = np.where(use & np.isfinite(floats) & (np.abs(floats) < limit), floats, 0.0)
            out_of_range = use & np.isfinite(floats) & (np.abs(floats) >= limit)
            ns = np.where(use, to_ns(f, self.unit), ns)
            if out_of_range.any():
                bad = out_of_range if bad is None else bad | out_of_range
        return ns, (bad if bad is not None and bad.any() else None)

    def _iso(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
        arr = pc.utf8_trim_whitespace(arr)
        for tz in ("UTC", None):  # with a zone offset, else local time in self.tz
            try:
                return self._finish(pc.cast(arr, pa.timestamp("ns", tz)), naive=tz is None)
            except PARSE_ERRORS:
                pass
        bad = bisect_bad(arr, lambda a: pc.cast(a, pa.timestamp("ns")))
        return self._finish(pc.cast(null_where(arr, bad), pa.timestamp("ns")), naive=True)

    def _format(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
        self.mode, self.label, self.detected = "format", "text", False
        head_fmt, frac_re = _split_fraction_format(self.fmt)
        frac_ns = None
        if frac_re is not None:
            parts = pc.extract_regex(arr, frac_re)  # null where the row does not fit the format
            head = pc.struct_field(parts, "head")
            frac = pc.struct_field(parts, "frac")
            digits = pc.utf8_length(frac).fill_null(0).to_numpy(zero_copy_only=False)
            frac_int = pc.cast(frac, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
            frac_ns = frac_int * _POW10[np.minimum(digits, 10)]
            arr = head
        ts = pc.strptime(arr, format=head_fmt, unit="ns", error_is_null=True)
        ns, bad = self._finish(ts, naive=ts.type.tz is None)
        if frac_ns is not None:
            ns = ns + frac_ns
        return ns, bad

    def _finish(self, ts: pa.Array, *, naive: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """int64 ns UTC from a timestamp[ns] array (naive ones are local time in self.tz)."""
        bad = ts.is_null().to_numpy(zero_copy_only=False) if ts.null_count else None
        if naive and self.tz not in _UTC_NAMES:
            ns, nonexistent = localize(ts, self.tz)
            if nonexistent is not None:
                bad = nonexistent if bad is None else bad | nonexistent
            return ns, bad
        return pc.cast(ts, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), bad


class _Prefetch:
    """Reads ``block_size`` blocks of a (decompressing) stream on a background thread, at most
    ``depth`` blocks ahead, so decompression overlaps parsing (zlib and Arrow release the GIL).
    ``read`` returns the next block whatever size is asked; errors surface from ``read``."""

    def __init__(self, f, block_size: int, depth: int = 2) -> None:
        self._f, self._eof = f, False
        self._q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(block_size,), name="nextick-prefetch", daemon=True)
        self._thread.start()

    def _run(self, n: int) -> None:
        try:
            while not self._stop.is_set():
                data = self._f.read(n)
                self._put((None, data))
                if not data:
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the reader, raised there
            self._put((exc, b""))

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                pass

    def read(self, _n: int = -1) -> bytes:
        if self._eof:
            return b""
        exc, data = self._q.get()
        if exc is not None:
            self._eof = True
            raise exc
        self._eof = not data
        return data

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _open_zip_member(path: Path):
    """A read stream over the single file in zip archive ``path``."""
    z = zipfile.ZipFile(path)
    try:
        members = [i for i in z.infolist() if not i.is_dir()]
        if len(members) != 1:
            raise ValueError(
                f"{path}: a zip archive must hold exactly one CSV file, this one holds {len(members)}; "
                "extract the one you want"
            )
        # The member stream keeps the archive file open after z.close() (zipfile shares it).
        return z.open(members[0])
    finally:
        z.close()


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES + ZIP_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(
        f"{path}: unknown file type; FileReplay reads {', '.join(CSV_SUFFIXES + ZIP_SUFFIXES + PARQUET_SUFFIXES)}. "
        "Rename the file or convert it."
    )


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem
