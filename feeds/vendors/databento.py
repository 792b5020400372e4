"""Databento DBN files (``.dbn``, ``.dbn.zst``; also gzip): the top-of-book schemas as quotes.

Needs the optional ``databento-dbn`` package (``pip install 'nextick[dbn]'``), imported only when a
file is opened; it parses the metadata header (dataset, schema, symbology). The records themselves
are read straight from the DBN binary layout with numpy, a block of up to ``chunk_rows`` records at
a time (zstd and gzip are decompressed as a stream by Arrow), so memory is bounded and no Python
runs per record.

Schemas (all records of the ``MBP1Msg`` / ``BBOMsg`` layout, 80 bytes, 88 with ``ts_out``):

    mbp-1    every event at the top of the book, and every trade (action 'T'/'F'). By default
             (``changes_only=True``) a quote is made only from records whose top of book (bid and
             ask price and size) differs from the previous record of the same instrument: trades
             and other events that leave the BBO as it was are counted under
             ``stats.skipped["unchanged"]``. ``changes_only=False`` keeps every record's
             post-event BBO.
    tbbo     one record per trade with the BBO just before it: every record is a quote.
    bbo-1s   the BBO sampled each second / minute; ``ts_recv`` is the interval end and ``ts_event``
    bbo-1m   the last update's time, both kept as given.

Other schemas (trades, mbp-10, mbo, ohlcv-*, cmbp-1, cbbo-*, definition, ...) are refused with an
error naming these four.

Fields: ``levels[0]`` bid_px/ask_px (int64, 1e-9 units) and bid_sz/ask_sz; ``ts_recv`` (the replay
order) and the header's ``ts_event`` (``UNDEF_TIMESTAMP`` -> ``ts_recv`` and flag SYNTHETIC_TS);
``sequence`` -> ``seq``. A side at ``UNDEF_PRICE`` is missing (an empty book side): with
``one_sided="keep"`` (the default) such records become quotes with that side's price and size 0.0
and flag ONE_SIDED, as the live path builds them (the engine fills against the side that is there
and neither marks nor decides on them); ``one_sided="skip"`` counts them under
``stats.skipped["one_sided"]`` instead. Records of other types in the file
(system or error messages, symbol mappings of live data) are counted under ``skipped`` by type;
a symbol mapping record also names its instrument.

Instruments: the metadata's symbology maps each instrument_id to the symbol requested (for raw
symbols, the raw symbol). When the requested symbol stands for several instruments at once (a
parent such as ``ES.FUT``) the instrument_id (as text) names each; a symbol whose id changed over
the file's dates stays one instrument; an id with no mapping is named by the id. Ids reused for
different symbols on different dates are resolved by the UTC date of ``ts_recv``. Venue: the
dataset (``GLBX.MDP3``). Calendar (``calendar=`` overrides): ``CME`` for GLBX (CME Globex)
datasets; ``XNYS`` (09:30-16:00 New York) for US equities and options datasets (XNAS, XBOS, XPSX,
XNYS, ARCX, XASE, XCHI, XCIS, BATS, BATY, EDGA, EDGX, IEXG, MEMX, EPRL, DBEQ, EQUS, FINN, FINY,
OPRA; their pre- and post-market quotes then fall outside the session); ``24x7`` otherwise.

Errors name ``file:N`` where N is the 1-based record number.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.domain.instrument import InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag
from engine.domain.source import SourceStats
from engine.domain.timestamps import DAY_NS, epoch_day
from engine.domain.validate import BadInputError, QuoteValidator
from feeds.coalesce import Coalescer
from feeds.vendors.options import ReaderOptions, instrument_template, with_symbol

EXTRA_HINT = "reading DBN files needs the 'dbn' extra: pip install 'nextick[dbn]' (databento-dbn)"

SCHEMAS: dict[str, int] = {"mbp-1": 0x01, "tbbo": 0x01, "bbo-1s": 0xC3, "bbo-1m": 0xC4}  # schema -> rtype
_RTYPE_NAMES = {
    0x00: "mbp-0", 0x01: "mbp-1", 0x0A: "mbp-10", 0x0C: "status", 0x13: "definition", 0x14: "imbalance",
    0x15: "error", 0x16: "symbol_mapping", 0x17: "system", 0x18: "statistics", 0x20: "ohlcv-1s",
    0x21: "ohlcv-1m", 0x22: "ohlcv-1h", 0x23: "ohlcv-1d", 0x24: "ohlcv-eod", 0xA0: "mbo", 0xB1: "cmbp-1",
    0xC0: "cbbo-1s", 0xC1: "cbbo-1m", 0xC2: "tcbbo", 0xC3: "bbo-1s", 0xC4: "bbo-1m",
}
_SYMBOL_MAPPING = 0x16
CHUNK_ROWS = 1 << 18  # records per chunk unless the options say otherwise
_US_EQUITIES = frozenset({
    "XNAS", "XBOS", "XPSX", "XNYS", "ARCX", "XASE", "XCHI", "XCIS", "BATS", "BATY", "EDGA", "EDGX", "IEXG",
    "MEMX", "EPRL", "DBEQ", "EQUS", "FINN", "FINY", "OPRA",
})
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_UNDEF_PRICE = np.iinfo(np.int64).max
_ONE_SIDED = np.uint16(QuoteFlag.ONE_SIDED)
_SYNTHETIC_TS = np.uint16(QuoteFlag.SYNTHETIC_TS)


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed; the message says which extra to install."""


def _dbn():
    try:
        import databento_dbn
    except ImportError as exc:
        raise MissingExtraError(EXTRA_HINT) from exc
    return databento_dbn


def calendar_for(dataset: str) -> str:
    """The session calendar of a Databento dataset (see the module docstring)."""
    venue = dataset.split(".", 1)[0].upper()
    if venue == "GLBX":
        return "CME"
    if venue in _US_EQUITIES:
        return "XNYS"
    return "24x7"


def _record_dtype(size: int) -> np.dtype:
    """The fields nextick reads of an ``MBP1Msg``/``BBOMsg`` (same offsets in DBN v1 to v3)."""
    fields = {
        "length": ("u1", 0), "rtype": ("u1", 1), "instrument_id": ("<u4", 4), "ts_event": ("<i8", 8),
        "ts_recv": ("<i8", 32), "sequence": ("<u4", 44), "bid_px": ("<i8", 48), "ask_px": ("<i8", 56),
        "bid_sz": ("<u4", 64), "ask_sz": ("<u4", 68),
    }
    return np.dtype({
        "names": list(fields), "formats": [f for f, _ in fields.values()],
        "offsets": [o for _, o in fields.values()], "itemsize": size,
    })


# -- detection -------------------------------------------------------------------------------------


def _decompressed_head(path: Path, n: int = 8) -> bytes:
    import pyarrow as pa

    try:
        with pa.input_stream(str(path), compression="zstd") as f:
            return f.read(n)
    except (OSError, pa.ArrowException):
        return b""


def _is_dbn_head(head: bytes) -> bool:
    return len(head) >= 4 and head[:3] == b"DBN" and 1 <= head[3] <= 9


def sniff(path: Path, head: bytes) -> bool:
    if not path.is_file():
        return False
    name = path.name.lower()
    if name.endswith((".dbn", ".dbn.zst", ".dbn.zstd", ".dbn.gz")) or _is_dbn_head(head):
        return True
    if head[:4] == _ZSTD_MAGIC:  # head_of does not decompress zstd: look inside ourselves
        return _is_dbn_head(_decompressed_head(path))
    return False


def _open(path: Path):
    """The file's decompressed bytes as a stream (zstd or gzip by their magic bytes)."""
    import pyarrow as pa

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _ZSTD_MAGIC:
        return pa.input_stream(str(path), compression="zstd")
    if magic[:2] == _GZIP_MAGIC:
        return pa.input_stream(str(path), compression="gzip")
    return pa.input_stream(str(path))


def _read(f, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at the end of the stream."""
    data = f.read(n)
    if len(data) == n or not data:
        return bytes(data)
    parts = [bytes(data)]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(bytes(more))
        got += len(more)
    return b"".join(parts)


# -- symbology -------------------------------------------------------------------------------------


def _mapping_entries(mappings: dict[str, list[dict]], order: list[str] = ()) -> list[tuple[int, int, int, str]]:
    """(instrument_id, first day, end day (exclusive), name) from the metadata symbology, in the
    order the symbols were requested (``order``), then by name."""
    rank = {s: k for k, s in enumerate(order)}
    per_key: dict[str, list[tuple[int, int, int]]] = {}
    for key in sorted(mappings, key=lambda s: (rank.get(s, len(rank)), s)):
        intervals = mappings[key]
        for iv in intervals:
            sym = str(iv["symbol"]).strip()
            if not sym.isdigit():
                continue  # not an instrument_id (another stype_out): nothing to map from records
            per_key.setdefault(key, []).append((int(sym), epoch_day(iv["start_date"]), epoch_day(iv["end_date"])))
    out: list[tuple[int, int, int, str]] = []
    for key, ivs in per_key.items():
        ivs.sort(key=lambda t: t[1])
        # Several ids at the same time (a parent symbol): each id is its own instrument, named by id.
        overlapping = any(
            a[0] != b[0] and b[1] < a[2] for i, a in enumerate(ivs) for b in ivs[i + 1 :]
        ) if len({i for i, _, _ in ivs}) > 1 else False
        for iid, lo, hi in ivs:
            out.append((iid, lo, hi, str(iid) if overlapping else key))
    return out


class _Symbology:
    """instrument_id (and date, where an id names different symbols on different dates) -> name."""

    def __init__(self, entries: list[tuple[int, int, int, str]]) -> None:
        self.static: dict[int, str] = {}
        dynamic: dict[int, list[tuple[int, int, str]]] = {}
        names_of: dict[int, set[str]] = {}
        for iid, _, _, name in entries:
            names_of.setdefault(iid, set()).add(name)
        for iid, lo, hi, name in entries:
            if len(names_of[iid]) == 1:
                self.static[iid] = name
            else:
                dynamic.setdefault(iid, []).append((lo, hi, name))
        self.names = list(dict.fromkeys(e[3] for e in entries))
        self.dynamic_ids = np.array(sorted(dynamic), dtype=np.uint32)
        keys, ends, names = [], [], []
        for iid in sorted(dynamic):
            for lo, hi, name in sorted(dynamic[iid]):
                keys.append((iid << 20) | lo)
                ends.append(hi)
                names.append(name)
        self._keys = np.array(keys, dtype=np.int64)
        self._ends = np.array(ends, dtype=np.int64)
        self._names = names

    def learn(self, iid: int, name: str) -> None:
        """A symbol mapping record of live data names ``iid`` (unless the metadata already did)."""
        if iid not in self.static and not (len(self.dynamic_ids) and np.isin(iid, self.dynamic_ids)):
            self.static[iid] = name

    def resolve(self, ids: np.ndarray, ts_recv: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(index into the returned names for each record, names)."""
        uniq, inv = np.unique(ids, return_inverse=True)
        names = [self.static.get(int(i), str(int(i))) for i in uniq]
        idx = inv.astype(np.int64)
        if len(self.dynamic_ids):
            dyn = np.isin(ids, self.dynamic_ids)
            if dyn.any():
                rows = np.flatnonzero(dyn)
                day = ts_recv[rows] // DAY_NS
                rk = (ids[rows].astype(np.int64) << 20) | day
                pos = np.searchsorted(self._keys, rk, side="right") - 1
                ok = (pos >= 0) & ((self._keys[np.maximum(pos, 0)] >> 20) == ids[rows]) & (
                    day < self._ends[np.maximum(pos, 0)]
                )
                extra = {name: len(names) + k for k, name in enumerate(dict.fromkeys(self._names))}
                names = names + list(extra)
                mapped = np.array([extra[nm] for nm in self._names], dtype=np.int64)
                idx[rows[ok]] = mapped[pos[ok]]
        return idx, names


# -- the reader ------------------------------------------------------------------------------------


class DBNReplay:
    """A ``QuoteSource`` over one DBN file (see the module docstring; the options it reads: ``reader``)."""

    def __init__(self, path: str | Path, options: ReaderOptions = ReaderOptions()) -> None:
        if options.symbol:
            raise ValueError(
                f"{path}: a DBN file names its instruments in its symbology metadata; do not pass symbol="
            )
        dbn = _dbn()
        self.path = Path(path)
        self.source = str(self.path)
        chunk_rows = CHUNK_ROWS if options.chunk_rows is None else options.chunk_rows
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        if options.one_sided not in ("keep", "skip"):
            raise ValueError(f"one_sided must be 'keep' or 'skip', not {options.one_sided!r}")
        self.chunk_rows = int(chunk_rows)
        self.one_sided = options.one_sided
        self.now_ns = options.now_ns
        self.policy = options.validation_policy()
        self.stats = SourceStats(source=self.source, ts_unit="ns")

        with _open(self.path) as f:
            pre = _read(f, 8)
            if len(pre) < 8 or pre[:3] != b"DBN":
                raise ValueError(
                    f"{self.source}: not a DBN file (it does not start with 'DBN' and a version, after zstd/gzip "
                    "decompression)"
                )
            (meta_len,) = struct.unpack_from("<I", pre, 4)
            meta_bytes = pre + _read(f, meta_len)
        if len(meta_bytes) < 8 + meta_len:
            raise ValueError(f"{self.source}: the DBN metadata is cut short ({len(meta_bytes)} of {8 + meta_len} bytes)")
        try:
            meta = dbn.Metadata.decode(meta_bytes)
        except Exception as exc:  # DBNError: a version or layout this databento-dbn cannot read
            raise ValueError(f"{self.source}: cannot decode the DBN metadata: {exc}") from exc
        self.version = pre[3]
        self.records_offset = 8 + meta_len
        self.dataset = str(meta.dataset)
        schema = meta.schema
        self.schema = None if schema is None else str(getattr(schema, "value", schema))
        if self.schema not in SCHEMAS:
            what = "mixes several schemas" if self.schema is None else f"has schema {self.schema!r}"
            raise ValueError(
                f"{self.source}: the DBN file {what}; nextick reads top-of-book quotes from the schemas "
                f"{', '.join(SCHEMAS)}. Request one of those from Databento (e.g. schema='mbp-1')."
            )
        self.rtype = SCHEMAS[self.schema]
        self.ts_out = bool(meta.ts_out)
        self.record_size = 80 + (8 if self.ts_out else 0)
        changes_only = options.changes_only
        self.changes_only = (self.schema == "mbp-1") if changes_only is None else bool(changes_only)

        self.venue = options.venue or self.dataset
        self.template = instrument_template(options, venue=self.venue, calendar=calendar_for(self.dataset))
        self.calendar = self.template.calendar
        self._fixed = options.instruments is not None
        self.instruments = options.instruments if self._fixed else InstrumentTable()
        self._entries = _mapping_entries(meta.mappings or {}, list(meta.symbols or []))
        if not self._fixed:
            for name in dict.fromkeys(e[3] for e in self._entries):
                self._index_of(name)

    # -- QuoteSource -----------------------------------------------------------------------------

    def chunks(self) -> Iterator[np.ndarray]:
        st = self.stats
        st.rows_read = st.rows_emitted = 0
        st.quarantined = {}
        st.skipped = {}
        validator = QuoteValidator(self.policy, st, self.source, now_ns=self.now_ns)
        symbology = _Symbology(self._entries)
        out = Coalescer(self.chunk_rows)
        last: dict[int, tuple[int, int, int, int]] = {}  # instrument_id -> its last record's BBO
        segments = self._segments(symbology)
        while True:
            try:
                recs, first_no = next(segments)
            except StopIteration:
                break
            except BadInputError:  # a reader rule under a reject policy: deliver what came before
                yield from self._emit(out.flush())
                raise
            st.rows_read += len(recs)
            q, lines, err = self._convert(recs, first_no, symbology, last)
            try:
                kept = validator.check(q, lines)
            except BadInputError as verr:
                if verr.kept is not None and len(verr.kept):
                    yield from self._emit(out.add(verr.kept))
                yield from self._emit(out.flush())
                raise
            yield from self._emit(out.add(kept))
            if err is not None:
                yield from self._emit(out.flush())
                raise err
        yield from self._emit(out.flush())

    def _emit(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for c in chunks:
            self.stats.rows_emitted += len(c)
            yield c

    # -- reading ---------------------------------------------------------------------------------

    def _segments(self, symbology: _Symbology) -> Iterator[tuple[np.ndarray, int]]:
        """Runs of consecutive quote records (a structured array viewing the read buffer) and the
        1-based number of each run's first record. Other records are counted (and symbol mappings
        learned) here."""
        size = self.record_size
        want_len, rtype = size // 4, self.rtype
        dtype = _record_dtype(size)
        block = self.chunk_rows * size
        rec_no = 0  # records consumed so far
        carry = b""
        with _open(self.path) as f:
            _read(f, self.records_offset)  # the metadata, decoded already
            while True:
                try:
                    data = _read(f, block)
                except OSError as exc:  # a truncated or corrupt zstd/gzip stream
                    raise BadInputError(
                        self.source, rec_no + 1, "file", "malformed", str(exc)[:200],
                        "the file cannot be read past this point (a truncated or corrupt archive?)",
                    ) from exc
                eof = len(data) < block
                buf = carry + data if carry else data
                pos, end = 0, len(buf)
                while pos < end:
                    n = (end - pos) // size
                    if n:
                        hdr = np.frombuffer(buf, np.uint8, count=n * size, offset=pos).reshape(n, size)
                        good = (hdr[:, 0] == want_len) & (hdr[:, 1] == rtype)
                        k = n if good.all() else int(np.argmin(good))
                        if k:
                            yield np.frombuffer(buf, dtype, count=k, offset=pos), rec_no + 1
                            pos += k * size
                            rec_no += k
                            if k == n:
                                break  # what is left is shorter than a record
                    length = buf[pos] * 4
                    if length < 16:  # the next record cannot be found: nothing after this can be read
                        raise BadInputError(
                            self.source, rec_no + 1, "record", "malformed", buf[pos : pos + 16].hex(),
                            f"a record header says the record is {length} bytes long; the file is corrupt from here",
                        )
                    if end - pos < length:
                        break  # the rest of this record comes with the next block
                    self._other(buf[pos : pos + length], rec_no + 1, symbology)
                    pos += length
                    rec_no += 1
                carry = buf[pos:] if pos < end else b""
                if eof:
                    break
        if carry:
            self._malformed(rec_no + 1, carry[:16].hex(), f"the file ends inside a record ({len(carry)} bytes left)")

    def _other(self, rec: bytes, no: int, symbology: _Symbology) -> None:
        """A record that is not one of this schema's quote records."""
        st = self.stats
        st.rows_read += 1
        rt = rec[1]
        if rt == self.rtype:  # the right type with another length
            self._malformed(no, rec[:16].hex(), f"record length {len(rec)}, expected {self.record_size}", counted=True)
            return
        name = _RTYPE_NAMES.get(rt, f"rtype 0x{rt:02x}")
        st.skipped[name] = st.skipped.get(name, 0) + 1
        if rt == _SYMBOL_MAPPING:
            dbn = _dbn()
            try:
                dec = dbn.DBNDecoder(has_metadata=False, ts_out=self.ts_out, input_version=self.version)
                dec.write(rec)
                (msg,) = dec.decode()
            except (dbn.DBNError, ValueError):  # unreadable: it names nothing, the id names the instrument
                return
            out_sym = str(getattr(msg, "stype_out_symbol", "") or "")
            in_sym = str(getattr(msg, "stype_in_symbol", "") or "")
            name = out_sym if out_sym and not out_sym.isdigit() else in_sym
            if name:
                symbology.learn(int(msg.instrument_id), name)

    def _malformed(self, no: int, value: object, why: str, counted: bool = False) -> None:
        if not counted:
            self.stats.rows_read += 1
        if self.policy.rejects("malformed"):
            raise BadInputError(self.source, no, "record", "malformed", value, why)
        self.stats.quarantine("malformed")

    # -- conversion ------------------------------------------------------------------------------

    def _index_of(self, name: str) -> int:
        idx = self.instruments.get(name)
        if idx is None and not self._fixed:
            idx = self.instruments.add(with_symbol(self.template, name))
        return -1 if idx is None else idx

    def _convert(
        self, recs: np.ndarray, first_no: int, symbology: _Symbology, last: dict
    ) -> tuple[np.ndarray, np.ndarray, BadInputError | None]:
        """(quotes, record numbers, the error to raise once those quotes are delivered: the first
        record breaking a reader rule whose action is reject, with the quotes cut before it)."""
        n = len(recs)
        st = self.stats
        lines = np.arange(first_no, first_no + n, dtype=np.int64)
        ts_recv = recs["ts_recv"]
        ids = recs["instrument_id"]
        bid_i, ask_i = recs["bid_px"], recs["ask_px"]
        bsz_i, asz_i = recs["bid_sz"], recs["ask_sz"]

        # Records whose top of book did not change (mbp-1): judged on the raw records, per instrument.
        keep = _changed(ids, (bid_i, ask_i, bsz_i, asz_i), last) if self.changes_only else np.ones(n, dtype=bool)
        unchanged = ~keep
        bad_ts = (ts_recv < 0) & keep  # UNDEF_TIMESTAMP reads as -1: not a time
        name_idx, names = symbology.resolve(ids, ts_recv)
        table_idx = np.array([self._index_of(nm) for nm in names], dtype=np.int64)
        inst = table_idx[name_idx]
        unknown = (inst < 0) & keep & ~bad_ts

        # The first record breaking a rejecting rule ends the stream; what comes before it stays.
        err = None
        cut = n
        if self.policy.rejects("malformed") and bad_ts.any():
            cut = int(np.flatnonzero(bad_ts)[0])
            err = BadInputError(self.source, int(lines[cut]), "ts_recv", "malformed", int(ts_recv[cut]),
                                "ts_recv is undefined (UNDEF_TIMESTAMP)")
        if self.policy.rejects("unknown_symbol") and unknown[:cut].any():
            cut = int(np.flatnonzero(unknown)[0])
            name = names[int(name_idx[cut])]
            err = BadInputError(
                self.source, int(lines[cut]), "instrument_id", "unknown_symbol", name,
                f"symbol {name!r} (instrument_id {int(ids[cut])}) is not in the instrument table "
                f"(known: {', '.join(self.instruments.symbols[:20]) or 'none'})",
            )
        if cut < n:
            keep[cut:] = False
            for mask in (unchanged, bad_ts, unknown):
                mask[cut:] = False

        bid_missing = bid_i == _UNDEF_PRICE
        ask_missing = ask_i == _UNDEF_PRICE
        one_sided = (bid_missing | ask_missing) & keep & ~bad_ts & ~unknown if self.one_sided == "skip" else None
        for key, mask in (("unchanged", unchanged), ("one_sided", one_sided)):
            c = 0 if mask is None else int(np.count_nonzero(mask))
            if c:
                st.skipped[key] = st.skipped.get(key, 0) + c
        st.quarantine("malformed", int(np.count_nonzero(bad_ts)))
        st.quarantine("unknown_symbol", int(np.count_nonzero(unknown)))
        keep &= ~bad_ts & ~unknown
        if one_sided is not None:
            keep &= ~one_sided

        sel = None if keep.all() else np.flatnonzero(keep)

        def pick(a: np.ndarray) -> np.ndarray:
            return a if sel is None else a[sel]

        m = n if sel is None else len(sel)
        q = np.zeros(m, dtype=QUOTE_DTYPE)
        if m == 0:
            return q, lines[:0], err
        tr = pick(ts_recv)
        te = pick(recs["ts_event"])
        q["ts_recv"] = tr
        no_event = te < 0
        q["ts_event"] = np.where(no_event, tr, te)
        flags = np.where(no_event, _SYNTHETIC_TS, np.uint16(0)).astype(np.uint16)
        q["bid_px"] = pick(bid_i) / 1e9
        q["ask_px"] = pick(ask_i) / 1e9
        q["bid_sz"] = pick(bsz_i)
        q["ask_sz"] = pick(asz_i)
        if self.one_sided == "keep":
            bm, am = pick(bid_missing), pick(ask_missing)
            if bm.any() or am.any():
                for missing, px, sz in ((bm, "bid_px", "bid_sz"), (am, "ask_px", "ask_sz")):
                    q[px][missing] = 0.0
                    q[sz][missing] = 0.0
                flags |= np.where(bm | am, _ONE_SIDED, np.uint16(0)).astype(np.uint16)
        q["flags"] = flags
        q["seq"] = pick(recs["sequence"])
        q["instrument"] = pick(inst)
        return q, pick(lines), err


def _changed(ids: np.ndarray, cols: tuple[np.ndarray, ...], last: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """Whether each record's top of book differs from its instrument's previous record's (the first
    record of an instrument counts as changed). ``last`` carries the state across calls."""
    n = len(ids)
    first_id = int(ids[0])
    if bool((ids == first_id).all()):
        changed = np.zeros(n, dtype=bool)
        for c in cols:
            changed[1:] |= c[1:] != c[:-1]
        prev = last.get(first_id)
        changed[0] = prev is None or prev != tuple(int(c[0]) for c in cols)
        last[first_id] = tuple(int(c[-1]) for c in cols)
        return changed
    order = np.argsort(ids, kind="stable")
    sid = ids[order]
    scols = [c[order] for c in cols]
    ch = np.zeros(n, dtype=bool)
    for c in scols:
        ch[1:] |= c[1:] != c[:-1]
    starts = np.flatnonzero(np.concatenate(([True], sid[1:] != sid[:-1])))
    ends = np.concatenate((starts[1:], [n])) - 1
    for s, e in zip(starts.tolist(), ends.tolist()):
        iid = int(sid[s])
        prev = last.get(iid)
        ch[s] = prev is None or prev != tuple(int(c[s]) for c in scols)
        last[iid] = tuple(int(c[e]) for c in scols)
    changed = np.empty(n, dtype=bool)
    changed[order] = ch
    return changed


def reader(path: Path, options: ReaderOptions = ReaderOptions()) -> DBNReplay:
    """Options it reads: ``venue`` (default: the dataset), ``calendar`` (default: by dataset, see the
    module docstring), ``changes_only`` (default: True for mbp-1, False otherwise), ``one_sided``
    (``"keep"`` or ``"skip"``), ``policy``, ``instruments`` (a fixed table), ``template`` /
    ``instrument_defaults`` (tick_size, lot_size, gap_ns, ...), ``chunk_rows``, ``now_ns``."""
    return DBNReplay(path, options)


__all__ = ["EXTRA_HINT", "SCHEMAS", "DBNReplay", "MissingExtraError", "calendar_for", "reader", "sniff"]
