"""Replay of raw venue recordings: ``<recv_stamp> <frame>`` lines, gzip or plain text.

The files ``feeds.recorder.RawRecorder`` writes, and captures in the same shape such as
``../shared/data/binance-raw``. Every frame goes through ``feeds.normalize.FrameNormalizer`` (one per
venue, shared by that venue's files), the code the live feed runs, so a recording replays into the
quotes the live run built, flags included; the quotes then pass ``engine.domain.validate.QuoteValidator``.

- Files: a directory means every ``*.gz``, ``*.txt`` and ``*.log`` under it. Gzip is recognized by
  its magic bytes; concatenated gzip members are read in turn. A gzip stream that ends without its
  trailer (a recorder killed with ``kill -9``) is read up to its last complete line and noted as
  truncated, not treated as an error; the same goes for a corrupt stream, from the corruption on.
- Venue: ``venue`` for every file, or per file from its name: ``spot_*`` (binance-spot), ``usdm_*``
  (binance-usdm), ``<venue>_*`` as the recorder names files.
- Order: files are merged by receive stamp (ties keep the file order, then the line order).
- Stamp unit: per file, from the magnitude of its first stamp (ns, us, ms, s), converted to ns;
  ``stats.ts_unit`` is that unit, or ``"mixed"`` when files differ.
- Instruments: with ``instruments`` given, frames for other symbols are ``unknown_symbol``;
  otherwise each new symbol is added to a growing table as ``Instrument(symbol, venue, "24x7",
  **instrument_defaults)``. When the files span several venues, learned symbols are qualified as
  ``<venue>:<symbol>`` (spot and futures both have a ``BTCUSDT``); a fixed table may name an
  instrument either way.
- Markers (``<stamp> #{"event": ...}``): ``reconnect`` (with optional ``symbols``) and ``restart``
  flag the next quote of those instruments (all of the file's venue for ``restart`` or no
  ``symbols``) ``AFTER_RECONNECT``; ``stale`` flags them ``STALE``; other events are counted in
  ``markers`` only.
- Bad input, never a crash: a line without a space or with a non-integer stamp, and a frame the venue
  cannot decode, are ``malformed`` (``stats.quarantined``, or ``BadInputError`` under a rejecting
  policy); the first ``MAX_NOTES`` problems are kept with ``file:line`` in ``notes``. Depth, trade and
  snapshot frames are counted by stream in ``ignored``. Repeated and regressing venue update ids are
  ``duplicate`` / ``out_of_order``; the validator adds its own rules (crossed, nan, ...).

``stats.rows_read`` counts the lines read other than well-formed marker lines (frames, and lines too
broken to tell), ``stats.rows_emitted`` the quotes handed out. Lines are bytes end to end: a frame is
handed to the venue's decoder as read, with no text decoding in between.
"""

from __future__ import annotations

import heapq
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, concat_rows, take_rows
from engine.domain.source import SourceStats
from engine.domain.timestamps import NS_PER, TimestampUnitError, detect_unit
from engine.domain.validate import BadInputError, QuoteValidator, ValidationPolicy
from feeds.normalize import FeedCounters, FrameNormalizer
from feeds.venues import ALIASES, VENUE_NAMES, get_venue

SUFFIXES = (".gz", ".txt", ".log")
MAX_NOTES = 20
# File-name prefixes of captures not written by RawRecorder (hftbacktest's Binance collector).
NAME_PREFIXES = {"spot": "binance-spot", "usdm": "binance-usdm"}
_READ_BYTES = 1 << 20
_LINE_BITS = 40  # a row's tag: file index << 40 | line number
_LINE_MASK = (1 << _LINE_BITS) - 1
_marker = msgspec.json.Decoder()


def venue_from_name(path: Path) -> str | None:
    """The venue a file name implies (``spot_btcusdt_20240808.gz`` -> binance-spot), None if none."""
    prefix = path.name.split("_", 1)[0].lower()
    if prefix in NAME_PREFIXES:
        return NAME_PREFIXES[prefix]
    if prefix in VENUE_NAMES:
        return prefix
    return ALIASES.get(prefix)


def list_files(paths: list[Path] | Path | str) -> list[Path]:
    """The files named, a directory standing for every ``*.gz``/``*.txt``/``*.log`` under it (sorted)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted((f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES), key=_natural)
            if not found:
                raise ValueError(f"{p}: no {', '.join('*' + s for s in SUFFIXES)} files in this directory")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    if not out:
        raise ValueError("no files to replay")
    return out


def _natural(path: Path) -> list:
    """Sort key that orders ``x_2.gz`` before ``x_10.gz`` (the recorder's file counter)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(path))]


class _File:
    """One recording: its venue, unit and reading state."""

    def __init__(self, idx: int, path: Path, venue: str) -> None:
        self.idx = idx
        self.path = path
        self.venue = venue
        self.unit: str | None = None
        self.mult = 1
        self.truncated = False


class RawReplay:
    """A ``QuoteSource`` over raw recordings (see the module docstring)."""

    def __init__(
        self,
        paths: list[Path] | Path | str,
        venue: str | None = None,
        *,
        instruments: InstrumentTable | None = None,
        instrument_defaults: dict | None = None,
        policy: ValidationPolicy | None = None,
        chunk_rows: int = 1 << 16,
        now_ns: int | None = None,
    ) -> None:
        if chunk_rows <= 0:
            raise ValueError("chunk_rows must be positive")
        files = list_files(paths)
        if venue is not None:
            get_venue(venue)  # unknown names fail here, with the list of known ones
            venue = ALIASES.get(venue, venue)
        self.files: list[_File] = []
        for k, f in enumerate(files):
            v = venue or venue_from_name(f)
            if v is None:
                raise ValueError(
                    f"{f}: cannot tell the venue from the file name; pass --venue (one of {', '.join(VENUE_NAMES)})"
                )
            self.files.append(_File(k, f, v))
        self.venues: list[str] = list(dict.fromkeys(f.venue for f in self.files))
        self.fixed = instruments is not None
        self.instruments = instruments if instruments is not None else InstrumentTable()
        self.instrument_defaults = dict(instrument_defaults or {})
        if {"symbol", "venue"} & self.instrument_defaults.keys():
            raise ValueError("instrument_defaults cannot set symbol or venue: they come from the frames")
        if not self.fixed:
            # Fail now, not at the first frame, on a bad default.
            Instrument(symbol="X", **self.instrument_defaults)
        self.policy = policy or ValidationPolicy()
        self.chunk_rows = int(chunk_rows)
        self.now_ns = now_ns
        self.source = str(self.files[0].path) if len(self.files) == 1 else f"{len(self.files)} raw files"
        self.stats = SourceStats(source=self.source)
        self._reset()

    # -- what the run summary shows ---------------------------------------------------------------
    def _reset(self) -> None:
        self.notes: list[str] = []  # the first MAX_NOTES problems, with file:line
        self.notes_total = 0
        self.ignored: dict[str, int] = {}  # non-quote streams by name (depth@100ms, trade, depthSnapshot)
        self.markers: dict[str, int] = {}  # marker lines by event
        self.truncated: list[Path] = []  # gzip files that ended without their trailer
        self.counters: dict[str, FeedCounters] = {v: FeedCounters() for v in self.venues}

    def _note(self, text: str) -> None:
        self.notes_total += 1
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    @property
    def stats_notes(self) -> list[str]:
        return self.notes

    # -- instruments ------------------------------------------------------------------------------
    def _ids_for(self, venue: str) -> dict[str, int]:
        """Venue symbol -> instrument id for ``venue``: the fixed table's, or (a second pass over a
        learning replay) what the first pass learned, so ids stay the same."""
        ids: dict[str, int] = {}
        prefix = venue + ":"
        loose = len(self.venues) == 1
        for idx, inst in enumerate(self.instruments):
            s = inst.symbol
            if s.startswith(prefix):
                ids.setdefault(s[len(prefix) :], idx)
            elif inst.venue == venue or (loose and inst.venue not in VENUE_NAMES):
                ids.setdefault(s, idx)
        return ids

    def _learner(self, venue: str):
        qualify = len(self.venues) > 1
        table, defaults = self.instruments, self.instrument_defaults

        def add_symbol(symbol: str) -> int:
            name = f"{venue}:{symbol}" if qualify else symbol
            return table.add(Instrument(symbol=name, venue=venue, **{"calendar": "24x7", **defaults}))

        return add_symbol

    # -- reading ----------------------------------------------------------------------------------
    def _lines(self, f: _File) -> Iterator[bytes]:
        """The file's lines (without the newline). Tolerates a gzip stream without its trailer."""
        with open(f.path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head != b"\x1f\x8b":
                rest = b""
                while block := fh.read(_READ_BYTES):
                    lines = (rest + block).split(b"\n")
                    rest = lines.pop()
                    yield from lines
                if rest:
                    yield rest
                return
            z = zlib.decompressobj(31)
            rest = b""
            inp = b""
            clean = False  # the last member ended with its trailer at the end of the file
            while True:
                if not inp:
                    inp = fh.read(_READ_BYTES)
                    if not inp:
                        break
                try:
                    data = z.decompress(inp)
                except zlib.error as e:
                    self._truncated(f, f"corrupt gzip data ({e})", rest)
                    return
                inp = b""
                if data:
                    lines = (rest + data).split(b"\n")
                    rest = lines.pop()
                    yield from lines
                if z.eof:  # a member ended: another may follow (concatenated gzip)
                    inp = z.unused_data or fh.read(_READ_BYTES)
                    if not inp:
                        clean = True
                        break
                    z = zlib.decompressobj(31)
            if not clean:
                self._truncated(f, "truncated gzip stream (no end-of-stream marker, as after a crash)", rest)
                return
            if rest:
                yield rest

    def _truncated(self, f: _File, why: str, rest: bytes) -> None:
        f.truncated = True
        self.truncated.append(f.path)
        partial = "; a partial last line was dropped" if rest else ""
        self._note(f"{f.path}: {why}: read up to the last complete line{partial}")

    def _frames(self, f: _File) -> Iterator[tuple[int, int, int, bytes]]:
        """(recv_ns, file index, line number, frame) for each well-formed line of ``f``."""
        fi = f.idx
        ln = 0
        mult = 0
        path = f.path
        for line in self._lines(f):
            ln += 1
            sp = line.find(b" ")
            stamp = line[:sp]
            if sp <= 0 or not stamp.isdigit():
                self._malformed(f, ln, "recv_ns", line[:60], "expected '<integer receive stamp> <frame>'")
                continue
            ts = int(stamp)
            if not mult:
                try:
                    unit = detect_unit(np.array([ts], dtype=np.int64), source=f"{path}:{ln}")
                except TimestampUnitError:
                    self._malformed(f, ln, "recv_ns", ts, "the stamp is no epoch time in ns, us, ms or s")
                    continue
                f.unit, f.mult = unit, NS_PER[unit]
                mult = f.mult
                self._saw_unit(unit)
            yield ts * mult, fi, ln, line[sp + 1 :]

    def _saw_unit(self, unit: str) -> None:
        st = self.stats
        st.ts_unit = unit if st.ts_unit in (None, unit) else "mixed"
        st.ts_unit_detected = True

    def _malformed(self, f: _File, ln: int, field: str, value: object, why: str) -> None:
        self.stats.rows_read += 1
        if self.policy.rejects("malformed"):
            raise BadInputError(str(f.path), ln, field, "malformed", value, why)
        self.stats.quarantine("malformed")
        self._note(f"{f.path}:{ln}: malformed: {why}: {value!r}")

    # -- the stream -------------------------------------------------------------------------------
    def chunks(self) -> Iterator[np.ndarray]:
        self._reset()
        st = self.stats
        st.rows_read = st.rows_emitted = 0
        st.quarantined = {}
        st.ts_unit, st.ts_unit_detected = None, False
        validator = QuoteValidator(self.policy, st, self.source, now_ns=self.now_ns)
        files = self.files
        venues = self.venues
        norms = {
            v: FrameNormalizer(
                get_venue(v),
                self._ids_for(v),
                self.counters[v],
                add_symbol=None if self.fixed else self._learner(v),
            )
            for v in venues
        }
        vidx = {v: k for k, v in enumerate(venues)}
        norm_of = [norms[f.venue] for f in files]
        tags: list[list[int]] = [[] for _ in venues]  # per normalizer: each pending row's file/line tag
        ords: list[list[int]] | None = [[] for _ in venues] if len(venues) > 1 else None  # merge order
        tag_list_of = [tags[vidx[f.venue]] for f in files]
        ord_list_of = [ords[vidx[f.venue]] for f in files] if ords is not None else None
        synced: dict[str, dict[str, int]] = {v: {} for v in venues}
        seq_rules = [r for r in ("unknown_symbol", "duplicate", "out_of_order") if self.policy.rejects(r)]
        reject_malformed = self.policy.rejects("malformed")

        if len(files) == 1:
            merged: Iterator[tuple[int, int, int, bytes]] = self._frames(files[0])
        else:
            merged = heapq.merge(*(self._frames(f) for f in files))  # (ts, file, line): ties by file, line

        chunk_rows = self.chunk_rows
        pending = 0
        g = 0  # frames so far: the merge order across venues
        for ts, fi, ln, frame in merged:
            if frame[:1] == b"#":
                self._on_marker(files[fi], ln, frame, norm_of[fi])
                continue
            nz = norm_of[fi]
            c = nz.counters
            n0 = c.quotes  # counts the rows the normalizer appends
            if seq_rules:
                q0 = [c.quarantined.get(r, 0) for r in seq_rules]
            kind = nz.on_frame(frame, ts)
            added = c.quotes - n0
            if kind is None:
                err = c.last_error
                if reject_malformed:
                    raise BadInputError(str(files[fi].path), ln, "frame", "malformed", frame[:80], err)
                self._note(f"{files[fi].path}:{ln}: malformed: {err}")
            elif seq_rules and [c.quarantined.get(r, 0) for r in seq_rules] != q0:
                rule = next(r for r, n in zip(seq_rules, q0) if c.quarantined.get(r, 0) != n)
                raise BadInputError(str(files[fi].path), ln, "frame", rule, frame[:120])
            if added:
                tag = fi << _LINE_BITS | ln
                if added == 1:
                    tag_list_of[fi].append(tag)
                    if ord_list_of is not None:
                        ord_list_of[fi].append(g)
                else:
                    tag_list_of[fi].extend([tag] * added)
                    if ord_list_of is not None:
                        ord_list_of[fi].extend([g] * added)
                pending += added
                if pending >= chunk_rows:
                    st.rows_read += g + 1
                    g = -1
                    out = self._flush(validator, norms, tags, ords, synced)
                    pending = 0
                    if len(out):
                        yield out
            g += 1
        st.rows_read += g
        out = self._flush(validator, norms, tags, ords, synced)
        if len(out):
            yield out
        self._sync(synced)

    def _flush(self, validator, norms, tags, ords, synced) -> np.ndarray:
        parts, tag_parts, ord_parts = [], [], []
        for k, nz in enumerate(norms.values()):
            if len(nz):
                parts.append(nz.take())
                tag_parts.append(tags[k])
                if ords is not None:
                    ord_parts.append(ords[k])
        self._sync(synced)
        if not parts:
            return np.zeros(0, QUOTE_DTYPE)
        if len(parts) == 1:
            q = parts[0]
            lines = np.array(tag_parts[0], dtype=np.int64)
        else:
            order = np.argsort(np.concatenate([np.asarray(o, dtype=np.int64) for o in ord_parts]), kind="stable")
            q = take_rows(concat_rows(parts), order)
            lines = np.concatenate([np.asarray(t, dtype=np.int64) for t in tag_parts])[order]
        for t in tags:
            t.clear()
        if ords is not None:
            for o in ords:
                o.clear()
        try:
            kept = validator.check(q, lines)
        except BadInputError as e:
            f = self.files[int(e.line) >> _LINE_BITS] if e.line is not None else None
            ln = int(e.line) & _LINE_MASK if e.line is not None else None
            raise BadInputError(str(f.path) if f else self.source, ln, e.field, e.rule, e.value, kept=e.kept) from None
        self.stats.rows_emitted += len(kept)
        return kept

    def _sync(self, synced: dict[str, dict[str, int]]) -> None:
        """Move the normalizers' quarantine counts (since the last call) into ``stats``; merge ``ignored``."""
        ignored: dict[str, int] = {}
        for v, c in self.counters.items():
            seen = synced[v]
            for rule, n in c.quarantined.items():
                d = n - seen.get(rule, 0)
                if d:
                    self.stats.quarantine(rule, d)
                    seen[rule] = n
            for stream, n in c.ignored.items():
                ignored[stream] = ignored.get(stream, 0) + n
        self.ignored = ignored
        self.stats.skipped = dict(sorted(ignored.items()))

    def _on_marker(self, f: _File, ln: int, frame: bytes, nz: FrameNormalizer) -> None:
        try:
            msg = _marker.decode(frame[1:])
            kind = msg["event"]
            if not isinstance(kind, str):
                raise TypeError("event is not a string")
            symbols = msg.get("symbols")
            if symbols is not None and not (isinstance(symbols, list) and all(isinstance(s, str) for s in symbols)):
                raise TypeError("symbols is not a list of strings")
        except (msgspec.DecodeError, KeyError, TypeError, AttributeError) as e:
            self._malformed(f, ln, "marker", frame[:60], f"marker line: {e}")
            return
        self.markers[kind] = self.markers.get(kind, 0) + 1
        if kind == "restart":
            nz.mark_reconnect(None)
        elif kind in ("reconnect", "stale"):
            ids = None
            if symbols is not None:
                ids = []
                for s in symbols:
                    i = nz.ids.get(s)
                    if i is None:
                        i = nz.ids.get(s.upper())
                    if i is not None:
                        ids.append(i)
            if kind == "reconnect":
                nz.mark_reconnect(ids)
            else:
                nz.mark_stale(ids)
