"""LOBSTER order-book files (https://lobsterdata.com/info/DataStructure.php) as level-1 quotes.

LOBSTER delivers, per ticker and day, a *message* file and an *orderbook* file, named
``TICKER_YYYY-MM-DD_START_END_message_N.csv`` and ``..._orderbook_N.csv`` (START/END: the window
in ms after midnight, e.g. ``34200000_57600000`` for 09:30-16:00; N: the book depth). Neither has a
header. Row k of one file goes with row k of the other:

    message    time (seconds after midnight, decimals to the ns), event type (1-7), order id, size,
               price (USD x 10000), direction (1 buy, -1 sell)
    orderbook  ask price 1, ask size 1, bid price 1, bid size 1, [level 2 ..., up to N] (prices x 10000);
               an empty side shows a dummy price (ask 9999999999, bid -9999999999) and size 0

Each message row becomes one quote: the best bid and offer *after* that event (the orderbook row).

* Times: the date comes from the file name, the time of day is America/New_York local time,
  converted to UTC with the zone's offset on that date (so across DST changes; on a day with a
  change, row by row). LOBSTER's times are NASDAQ's own event times: ``ts_event`` and ``ts_recv``
  are both that time, and SYNTHETIC_TS is not set (the time is the venue's, there is just no
  separate receive time).
* ``seq`` is the row's line number in its files (1-based).
* Instruments: one per ticker (``symbol=`` renames a single ticker), venue ``XNAS`` (LOBSTER rebuilds
  NASDAQ's book), calendar ``XNYS`` (09:30-16:00 New York); ``venue=``, ``calendar=``,
  ``template`` and ``instrument_defaults`` override.
* ``changes_only=True`` drops rows whose level-1 book (both prices and sizes) equals the previous
  row's (hidden executions, deeper-level events), counted under ``stats.skipped["unchanged"]``.
  Default False: one quote per message row.
* An empty side: with ``one_sided="keep"`` (default) the row becomes a quote with that side's price
  and size 0.0 and flag ONE_SIDED (the engine fills against the other side, never marks or decides
  on it); with ``"skip"`` it is counted under ``stats.skipped["one_sided"]``.

Input: either file of a pair (its partner must sit next to it) or a folder: every pair in it,
several tickers and dates merged into one stream in time order (a folder with several depths of
the same ticker and day uses the smallest). A missing partner or pair files whose line counts
differ is an error naming the files, raised before any quote is read.

Rows that do not parse (a wrong field count in either file; in the fields read, time and event type
of the message and the level-1 prices and sizes of the orderbook: a non-number, a time outside the
day or one that does not exist in New York, an event type outside 1-7) are ``malformed``: counted, or under a reject policy a ``BadInputError`` naming the
file, the line and the field. Both files are parsed by Arrow in blocks (``block_size`` bytes of the
message file and the matching lines of the orderbook file), so memory stays bounded.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import re
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from engine.domain.instrument import InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag, concat_rows, take_rows
from engine.domain.source import SourceStats
from engine.domain.timestamps import DAY_NS, SECOND_NS, epoch_day
from engine.domain.validate import BadInputError, QuoteValidator
from feeds.coalesce import Coalescer
from feeds.columns import localize, numbers
from feeds.vendors.headers import first_line, is_number
from feeds.vendors.options import ReaderOptions, instrument_template, with_symbol

NAME_RE = re.compile(
    r"^(?P<ticker>.+?)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_"
    r"(?P<kind>message|orderbook)_(?P<level>\d+)\.csv(?P<gz>\.gz)?$",
    re.IGNORECASE,
)
TZ = "America/New_York"
PRICE_SCALE = 10_000.0
ASK_DUMMY = 9_999_999_999  # an empty ask side shows this price (or more)
BID_DUMMY = -9_999_999_999  # an empty bid side shows this price (or less)
_LINE_BITS = 40
_LINE_MASK = (1 << _LINE_BITS) - 1
_ONE_SIDED = np.uint16(QuoteFlag.ONE_SIDED)
_I64_MIN = np.iinfo(np.int64).min
CHUNK_ROWS = 1 << 18  # quotes per chunk unless the options say otherwise
BLOCK_SIZE = 1 << 23  # message-file bytes parsed per block unless the options say otherwise


class Pair:
    """One ticker-day: its message and orderbook files."""

    def __init__(self, ticker: str, date: _dt.date, level: int, message: Path, orderbook: Path) -> None:
        self.ticker, self.date, self.level = ticker, date, level
        self.message, self.orderbook = message, orderbook
        self.lines = 0  # the counts below are filled in when the reader opens the pair
        self.message_fields = 6
        self.orderbook_fields = 4 * level

    def __repr__(self) -> str:
        return f"Pair({self.message.name}, {self.orderbook.name})"


def _partner_name(name: str) -> str:
    m = NAME_RE.match(name)
    assert m is not None
    other = "orderbook" if m["kind"].lower() == "message" else "message"
    a, b = m.span("kind")
    return name[:a] + other + name[b:]


def _date(text: str, path: Path) -> _dt.date:
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{path}: {text!r} in the file name is not a date (YYYY-MM-DD)") from None


def find_pairs(path: Path) -> list[Pair]:
    """The message/orderbook pairs ``path`` (a file of a pair, or a folder) stands for."""
    path = Path(path)
    if path.is_dir():
        named = sorted(p for p in path.iterdir() if p.is_file() and NAME_RE.match(p.name))
        if not named:
            raise ValueError(
                f"{path}: no LOBSTER files here (named TICKER_YYYY-MM-DD_START_END_message_N.csv and "
                "..._orderbook_N.csv)"
            )
        names = {p.name for p in named}
        lonely = [p for p in named if _partner_name(p.name) not in names]
        if lonely:
            listing = "; ".join(f"{p.name} has no {_partner_name(p.name)}" for p in lonely[:10])
            raise ValueError(f"{path}: LOBSTER files without their partner: {listing}")
        chosen: dict[tuple, Pair] = {}
        for p in named:
            m = NAME_RE.match(p.name)
            if m["kind"].lower() != "message":
                continue
            key = (m["ticker"], m["date"], m["start"], m["end"])
            level = int(m["level"])
            if key in chosen and chosen[key].level <= level:
                continue
            chosen[key] = Pair(m["ticker"], _date(m["date"], p), level, p, p.with_name(_partner_name(p.name)))
        return sorted(chosen.values(), key=lambda q: (q.date, q.ticker))
    m = NAME_RE.match(path.name)
    if m is None:
        raise ValueError(
            f"{path}: not a LOBSTER file name; expected TICKER_YYYY-MM-DD_START_END_message_N.csv or "
            "..._orderbook_N.csv (the date and the partner file are found from the name)"
        )
    partner = path.with_name(_partner_name(path.name))
    if not partner.is_file():
        raise ValueError(f"{path}: its LOBSTER partner file {partner} is missing; the two files pair up line by line")
    msg, ob = (path, partner) if m["kind"].lower() == "message" else (partner, path)
    return [Pair(m["ticker"], _date(m["date"], path), int(m["level"]), msg, ob)]


def sniff(path: Path, head: bytes) -> bool:
    if path.is_dir():
        try:
            return any(p.is_file() and NAME_RE.match(p.name) for p in path.iterdir())
        except OSError:
            return False
    m = NAME_RE.match(path.name)
    if m is None or not path.is_file():
        return False
    fields = first_line(head).split(",")
    need = 6 if m["kind"].lower() == "message" else 4
    return not head or (len(fields) >= need and all(is_number(f) for f in fields[:need]))


# -- reading lines -----------------------------------------------------------------------------------


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _newlines(data: bytes) -> int:
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == 10))


def count_lines(path: Path) -> int:
    """Lines in the file (a last line without a line end counts)."""
    n, last = 0, b"\n"
    with _open(path) as f:
        while True:
            data = f.read(1 << 24)
            if not data:
                break
            n += _newlines(data)
            last = data[-1:]
    return n + (last != b"\n")


def _field_count(path: Path) -> int:
    with _open(path) as f:
        line = f.readline()
    return line.rstrip(b"\r\n").count(b",") + 1 if line.strip() else 0


class _Lines:
    """Whole lines of a file, a block at a time."""

    def __init__(self, f, block_size: int) -> None:
        self.f, self.block_size = f, block_size
        self.buf = b""
        self.eof = False

    def _fill(self, n: int | None = None) -> bool:
        data = self.f.read(n or self.block_size)
        if not data:
            self.eof = True
            return False
        self.buf = self.buf + data if self.buf else data
        return True

    def block(self) -> tuple[bytes, int]:
        """About ``block_size`` bytes of whole lines, and how many lines (0 at the end)."""
        while True:
            cut = self.buf.rfind(b"\n")
            if cut >= 0 and (len(self.buf) >= self.block_size or self.eof):
                break
            if self.eof:
                break
            self._fill()
        if cut < 0:
            if not self.buf:
                return b"", 0
            out, self.buf = self.buf + b"\n", b""  # the last line, without a line end
            return out, 1
        out, self.buf = self.buf[: cut + 1], self.buf[cut + 1 :]
        return out, _newlines(out)

    def take(self, k: int) -> tuple[bytes, int]:
        """The next ``k`` lines (fewer at the end of the file)."""
        while True:
            arr = np.frombuffer(self.buf, np.uint8)
            nl = np.flatnonzero(arr == 10)
            if len(nl) >= k:
                cut = int(nl[k - 1]) + 1
                out, self.buf = self.buf[:cut], self.buf[cut:]
                return out, k
            # Read about what the missing lines need, judged by the lines at hand, in one go.
            per_line = len(self.buf) / len(nl) if len(nl) else 256
            need = int((k - len(nl)) * per_line * 1.05) + (1 << 16)
            if self.eof or not self._fill(max(need, 1 << 16)):
                out, self.buf = self.buf, b""
                if out and not out.endswith(b"\n"):
                    out += b"\n"
                return out, out.count(b"\n")


# -- parsing -----------------------------------------------------------------------------------------


def _parse(block: bytes, k: int, names: list[str], include: dict[str, pa.DataType]):
    """(values per included column (length k), bad mask per column or None, rows with a wrong field
    count (mask, or None), text of the first such row)."""
    conv = pacsv.ConvertOptions(include_columns=list(include), column_types=include)
    parse = pacsv.ParseOptions(ignore_empty_lines=False)
    try:
        tbl = pacsv.read_csv(
            pa.BufferReader(block),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=True, block_size=1 << 20),
            parse_options=parse, convert_options=conv,
        )
        if tbl.num_rows == k and all(tbl.column(c).null_count == 0 for c in include):
            return {c: tbl.column(c).to_numpy() for c in include}, {}, None, ""
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    # Slow path, for blocks with bad rows only: text columns, rows of the wrong width set aside.
    bad_rows: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append((int(row.number), row.text))
        return "skip"

    tbl = pacsv.read_csv(
        pa.BufferReader(block),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(block) + 1),
        parse_options=pacsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(include_columns=list(include), column_types=dict.fromkeys(include, pa.string())),
    )
    wrong = np.zeros(k, dtype=bool)
    if bad_rows:
        wrong[np.array([n - 1 for n, _ in bad_rows if 0 < n <= k], dtype=np.int64)] = True
    good = np.flatnonzero(~wrong)
    values, bad = {}, {}
    for c, t in include.items():
        vals, b = numbers(tbl.column(c).combine_chunks(), (t,) if t == pa.float64() else (t, pa.float64()))
        full = np.zeros(k, dtype=np.float64 if t == pa.float64() else np.int64)
        if vals.dtype.kind == "f" and full.dtype.kind == "i":
            integral = np.isfinite(vals) & (vals == np.round(vals)) & (np.abs(vals) < 2**62)
            b = ~integral if b is None else b | ~integral
            vals = np.where(integral, vals, 0).astype(np.int64)
        full[good[: len(vals)]] = vals
        values[c] = full
        if b is not None and b.any():
            mask = np.zeros(k, dtype=bool)
            mask[good[: len(b)]] = b
            bad[c] = mask
    first_text = bad_rows[0][1] if bad_rows else ""
    return values, bad, (wrong if wrong.any() else None), first_text


class _DayClock:
    """Seconds after local midnight on ``date`` -> ns UTC."""

    def __init__(self, date: _dt.date, tz: str) -> None:
        self.tz = tz
        zi = zoneinfo.ZoneInfo(tz)
        self.midnight_ns = epoch_day(date) * DAY_NS  # naive local midnight
        start = _dt.datetime.combine(date, _dt.time(0), tzinfo=zi).utcoffset()
        end = _dt.datetime.combine(date, _dt.time(23, 59, 59), tzinfo=zi).utcoffset()
        self.offset_ns = int(start.total_seconds()) * SECOND_NS if start == end else None  # None: DST changes today

    def utc(self, local_ns_of_day: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        local = self.midnight_ns + local_ns_of_day
        if self.offset_ns is not None:
            return local - self.offset_ns, None
        return localize(pa.array(local, pa.timestamp("ns")), self.tz)


# -- the reader --------------------------------------------------------------------------------------


class LobsterReplay:
    """A ``QuoteSource`` over LOBSTER pairs (see the module docstring; the options it reads: ``reader``)."""

    def __init__(self, path: str | Path, options: ReaderOptions = ReaderOptions()) -> None:
        self.path = Path(path)
        chunk_rows = CHUNK_ROWS if options.chunk_rows is None else options.chunk_rows
        block_size = BLOCK_SIZE if options.block_size is None else options.block_size
        if chunk_rows < 1 or block_size < 1:
            raise ValueError("chunk_rows and block_size must be positive")
        if options.one_sided not in ("keep", "skip"):
            raise ValueError(f"one_sided must be 'keep' or 'skip', not {options.one_sided!r}")
        self.pairs = find_pairs(self.path)
        self.source = str(self.pairs[0].message if len(self.pairs) == 1 and self.path.is_file() else self.path)
        self.changes_only, self.one_sided = bool(options.changes_only), options.one_sided
        self.chunk_rows, self.block_size = int(chunk_rows), int(block_size)
        self.now_ns = options.now_ns
        self.policy = options.validation_policy()
        self.stats = SourceStats(source=self.source, ts_unit="s")

        for p in self.pairs:
            nm, nb = count_lines(p.message), count_lines(p.orderbook)
            if nm != nb:
                raise ValueError(
                    f"LOBSTER pair does not line up: {p.message} has {nm:,} lines but {p.orderbook} has {nb:,}; "
                    "row k of one file goes with row k of the other, so both must have the same number of lines "
                    "(a truncated download, or files from different requests?)"
                )
            p.lines = nm
            p.message_fields = _field_count(p.message)
            p.orderbook_fields = _field_count(p.orderbook)
            if nm and p.message_fields < 6:
                raise ValueError(f"{p.message}: a LOBSTER message file has 6 fields a line, its first line has {p.message_fields}")
            if nm and p.orderbook_fields < 4:
                raise ValueError(
                    f"{p.orderbook}: a LOBSTER orderbook file has 4 fields per level, its first line has {p.orderbook_fields}"
                )

        tickers = list(dict.fromkeys(p.ticker for p in self.pairs))
        symbol = options.symbol
        if symbol and len(tickers) > 1:
            raise ValueError(f"{self.path}: symbol={symbol!r} can rename only one ticker; these files hold {', '.join(tickers)}")
        self.names = {t: (symbol or t) for t in tickers}
        self.template = instrument_template(options, venue=options.venue or "XNAS", calendar="XNYS")
        self._fixed = options.instruments is not None
        self.instruments = options.instruments if self._fixed else InstrumentTable()
        for t in tickers:
            name = self.names[t]
            if self.instruments.get(name) is None and not self._fixed:
                self.instruments.add(with_symbol(self.template, name))

    # -- QuoteSource -----------------------------------------------------------------------------

    def chunks(self) -> Iterator[np.ndarray]:
        st = self.stats
        st.rows_read = st.rows_emitted = 0
        st.quarantined = {}
        st.skipped = {}
        validator = QuoteValidator(self.policy, st, self.source, now_ns=self.now_ns)
        out = Coalescer(self.chunk_rows)
        streams = []
        for k, p in enumerate(self.pairs):
            inst = self.instruments.get(self.names[p.ticker])
            if inst is None:
                st.rows_read += p.lines
                if p.lines:
                    if self.policy.rejects("unknown_symbol"):
                        raise BadInputError(
                            str(p.message), 1, "symbol", "unknown_symbol", self.names[p.ticker],
                            f"ticker {self.names[p.ticker]!r} is not in the instrument table "
                            f"(known: {', '.join(self.instruments.symbols[:20]) or 'none'})",
                        )
                    st.quarantine("unknown_symbol", p.lines)
                continue
            streams.append(self._pair_quotes(k, p, inst))
        merged = iter(()) if not streams else streams[0] if len(streams) == 1 else _merge(streams)
        while True:
            try:
                q, tags = next(merged)
            except StopIteration:
                break
            except BadInputError:  # a malformed row under a reject policy: deliver what came before
                yield from self._emit(out.flush())
                raise
            try:
                kept = validator.check(q, tags)
            except BadInputError as err:
                if err.kept is not None and len(err.kept):
                    yield from self._emit(out.add(err.kept))
                yield from self._emit(out.flush())
                raise self._located(err) from None
            yield from self._emit(out.add(kept))
        yield from self._emit(out.flush())

    def _emit(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for c in chunks:
            self.stats.rows_emitted += len(c)
            yield c

    def _located(self, err: BadInputError) -> BadInputError:
        """The validator's error with its line tag turned into the file and line."""
        if err.line is None:
            return err
        p = self.pairs[int(err.line) >> _LINE_BITS]
        f = p.message if err.field in ("ts_recv", "ts_event") else p.orderbook
        return BadInputError(str(f), int(err.line) & _LINE_MASK, err.field, err.rule, err.value, kept=err.kept)

    # -- one pair --------------------------------------------------------------------------------

    def _pair_quotes(self, k: int, p: Pair, inst: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(quotes, line tags) blocks of one pair, unvalidated, in file order."""
        st = self.stats
        clock = _DayClock(p.date, TZ)
        msg_names = ["time", "type"] + [f"m{i}" for i in range(2, p.message_fields)]
        ob_names = ["ask_px", "ask_sz", "bid_px", "bid_sz"] + [f"o{i}" for i in range(4, p.orderbook_fields)]
        msg_cols = {"time": pa.float64(), "type": pa.int64()}
        ob_cols = {"ask_px": pa.int64(), "ask_sz": pa.int64(), "bid_px": pa.int64(), "bid_sz": pa.int64()}
        last: tuple[int, int, int, int] | None = None
        line0 = 1
        tag0 = k << _LINE_BITS
        with _open(p.message) as fm, _open(p.orderbook) as fo:
            msg_lines, ob_lines = _Lines(fm, self.block_size), _Lines(fo, self.block_size)
            while True:
                mblock, n = msg_lines.block()
                if n == 0:
                    break
                oblock, n_ob = ob_lines.take(n)
                if n_ob != n:  # the files changed since they were counted
                    raise ValueError(f"{p.orderbook} ends at line {line0 + n_ob - 1}, before {p.message} does")
                st.rows_read += n
                mv, mbad, mwrong, mtext = _parse(mblock, n, msg_names, msg_cols)
                ov, obad, owrong, otext = _parse(oblock, n, ob_names, ob_cols)
                lines = np.arange(line0, line0 + n, dtype=np.int64)
                t = mv["time"]
                # A time of day in [0, 24h) and an event type LOBSTER defines.
                tbad = ~(np.isfinite(t) & (t >= 0) & (t < 86_400))
                tbad |= mbad.get("time", False)
                ns_of_day = np.rint(np.where(tbad, 0.0, t) * 1e9).astype(np.int64)
                ts, gap = clock.utc(ns_of_day)
                if gap is not None:
                    tbad |= gap
                typ = mv["type"]
                ybad = ~((typ >= 1) & (typ <= 7)) | mbad.get("type", False)
                checks = [  # (mask, file, field, why): the first that applies names a bad row
                    (mwrong, p.message, "row", f"expected {p.message_fields} comma-separated fields"),
                    (owrong, p.orderbook, "row", f"expected {p.orderbook_fields} comma-separated fields"),
                    (tbad, p.message, "time", "expected seconds after midnight (0 to 86400), a time that exists in New York"),
                    (ybad, p.message, "type", "expected an event type 1 to 7"),
                ] + [(obad.get(c), p.orderbook, c, "expected an integer") for c in ob_cols]
                bad = np.zeros(n, dtype=bool)
                for mask, *_ in checks:
                    if mask is not None and mask is not False:
                        bad |= mask
                err = None
                keep = ~bad
                if bad.any():
                    first = int(np.flatnonzero(bad)[0])
                    if self.policy.rejects("malformed"):
                        # Deliver the rows before the first bad one, then stop there.
                        mask, path, field, why = next(c for c in checks if c[0] is not None and c[0] is not False and c[0][first])
                        if field == "row":
                            value = (mtext if path == p.message else otext)[:200]
                        else:
                            value = _line_field(mblock if path == p.message else oblock, first,
                                                (msg_names if path == p.message else ob_names).index(field))
                        err = BadInputError(str(path), line0 + first, field, "malformed", value, why)
                        keep[first:] = False
                    else:
                        st.quarantine("malformed", int(np.count_nonzero(bad)))
                ask_i, asz_i, bid_i, bsz_i = ov["ask_px"], ov["ask_sz"], ov["bid_px"], ov["bid_sz"]
                if self.changes_only:
                    good = np.flatnonzero(keep)
                    if len(good):
                        cols = [c[good] for c in (ask_i, asz_i, bid_i, bsz_i)]
                        changed = np.zeros(len(good), dtype=bool)
                        for c in cols:
                            changed[1:] |= c[1:] != c[:-1]
                        changed[0] = last is None or last != tuple(int(c[0]) for c in cols)
                        last = tuple(int(c[-1]) for c in cols)
                        n_same = len(good) - int(np.count_nonzero(changed))
                        if n_same:
                            st.skipped["unchanged"] = st.skipped.get("unchanged", 0) + n_same
                            keep[good[~changed]] = False
                ask_missing = ask_i >= ASK_DUMMY
                bid_missing = bid_i <= BID_DUMMY
                one_sided = ask_missing | bid_missing
                if self.one_sided == "skip":
                    n_os = int(np.count_nonzero(one_sided & keep))
                    if n_os:
                        st.skipped["one_sided"] = st.skipped.get("one_sided", 0) + n_os
                        keep &= ~one_sided
                sel = None if keep.all() else np.flatnonzero(keep)

                def pick(a: np.ndarray, sel=sel) -> np.ndarray:
                    return a if sel is None else a[sel]

                m = n if sel is None else len(sel)
                q = np.zeros(m, dtype=QUOTE_DTYPE)
                if m:
                    tsel = pick(ts)
                    q["ts_event"] = tsel
                    q["ts_recv"] = tsel
                    q["ask_px"] = pick(ask_i) / PRICE_SCALE
                    q["bid_px"] = pick(bid_i) / PRICE_SCALE
                    q["ask_sz"] = pick(asz_i)
                    q["bid_sz"] = pick(bsz_i)
                    q["seq"] = pick(lines)
                    q["instrument"] = inst
                    if self.one_sided == "keep":
                        am, bm = pick(ask_missing), pick(bid_missing)
                        if am.any() or bm.any():
                            q["ask_px"][am] = 0.0
                            q["ask_sz"][am] = 0.0
                            q["bid_px"][bm] = 0.0
                            q["bid_sz"][bm] = 0.0
                            q["flags"] = np.where(am | bm, _ONE_SIDED, np.uint16(0))
                    yield q, tag0 | pick(lines)
                if err is not None:
                    raise err
                line0 += n
            if ob_lines.take(1)[1]:
                raise ValueError(f"{p.orderbook} goes on after {p.message} ends at line {line0 - 1}")


def _line_field(block: bytes, row: int, col: int) -> str:
    """Field ``col`` of line ``row`` (0-based) of ``block``, for an error message."""
    start = 0
    for _ in range(row):
        start = block.index(b"\n", start) + 1
    end = block.find(b"\n", start)
    fields = block[start : end if end >= 0 else None].rstrip(b"\r").split(b",")
    return fields[col].decode("utf-8", "replace")[:80] if col < len(fields) else ""


def _merge(streams: list[Iterator[tuple[np.ndarray, np.ndarray]]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Blocks of several streams merged by ts_recv. Each stream keeps its own order: rows are placed
    by the running maximum of their stream's ts_recv, so a row out of order in its file stays right
    after its predecessor there (and the validator sees it out of order)."""
    k = len(streams)
    bufs: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * k
    done = [False] * k
    top = [_I64_MIN] * k  # each stream's running maximum so far

    def pull(i: int) -> None:
        for q, tags in streams[i]:
            if len(q):
                key = np.maximum.accumulate(np.maximum(q["ts_recv"], top[i]))
                top[i] = int(key[-1])
                bufs[i] = (q, tags, key)
                return
        done[i] = True

    while True:
        for i in range(k):
            if bufs[i] is None and not done[i]:
                pull(i)
        live = [i for i in range(k) if bufs[i] is not None]
        if not live:
            return
        waiting = [bufs[i][2][-1] for i in live if not done[i]]
        horizon = min(waiting) if waiting else None
        qs, tgs, keys = [], [], []
        for i in live:
            q, tags, key = bufs[i]
            cut = len(q) if horizon is None else int(np.searchsorted(key, horizon, side="right"))
            if cut == 0:
                continue
            qs.append(q[:cut])
            tgs.append(tags[:cut])
            keys.append(key[:cut])
            bufs[i] = None if cut == len(q) else (take_rows(q, slice(cut, None)), tags[cut:], key[cut:])
        if len(qs) == 1:
            yield qs[0], tgs[0]
            continue
        order = np.argsort(np.concatenate(keys), kind="stable")  # ties keep the streams' order
        yield take_rows(concat_rows(qs), order), np.concatenate(tgs)[order]


def reader(path: Path, options: ReaderOptions = ReaderOptions()) -> LobsterReplay:
    """Options it reads: ``symbol`` (rename a single ticker), ``venue`` (XNAS), ``calendar`` (XNYS),
    ``changes_only`` (False), ``one_sided`` (``"keep"`` or ``"skip"``), ``policy``, ``instruments``
    (a fixed table), ``template`` / ``instrument_defaults``, ``chunk_rows``, ``block_size``
    (message-file bytes per block), ``now_ns``."""
    return LobsterReplay(path, options)
