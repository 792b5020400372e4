"""Feed latency applied to a recording: each quote's receive time redrawn from a latency model.

``FeedLatencySource(source, dist, seed)`` gives every row ``ts_recv := ts_event + draw`` where ``draw``
is the ``k``-th delay of the row's instrument (its ``k``-th row in the stream, from 0) under ``seed``
(engine.domain.latency_model: counter-based, so a row's delay depends only on the seed, its instrument
and k). Rows whose ts_event is not the venue's (``SYNTHETIC_TS``) have no event time to add a delay
to: they keep their ts_recv and are counted (``synthetic_kept``).

New receive times reorder the stream. Rows are held back and emitted in (new ts_recv, arrival) order
once the new ts_recv is at or below the watermark: the newest original ts_recv read, less ``hold_ns``.
A later row's new ts_recv is at least its ts_event, which is its original ts_recv less its original
delay; so when every original delay (ts_recv - ts_event) is below ``hold_ns`` no row can arrive
behind one already emitted, and the output is the stable sort of the whole stream by new ts_recv,
whatever the chunking. A row that does arrive behind (an original delay beyond ``hold_ns``) is
clamped to the last emitted ts_recv, keeping the stream ordered, and counted (``clamped``, with the
largest shift in ``max_clamp_ns``): a run that clamps should raise ``hold_ns`` (``--feed-hold-s``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.domain.instrument import InstrumentTable
from engine.domain.latency_model import LatencyDistribution, parse_spec
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag, concat_rows, take_rows
from engine.domain.source import QuoteSource, SourceStats
from engine.domain.timestamps import SECOND_NS

DEFAULT_HOLD_NS = 2 * SECOND_NS  # above the ~1.3 s capture-clock skew seen in real Binance recordings


class FeedLatencySource:
    """``source`` with its receive times redrawn from ``dist`` (module docstring). Its instruments and
    stats are the wrapped source's; ``restamp`` counts what the restamping did."""

    def __init__(self, source: QuoteSource, dist: LatencyDistribution, seed: int, *, hold_ns: int = DEFAULT_HOLD_NS) -> None:
        if hold_ns < 0:
            raise ValueError(f"hold_ns must be >= 0, got {hold_ns}")
        self.source = source
        self.dist = dist
        self.seed = int(seed)
        self.hold_ns = int(hold_ns)
        self.restamp: dict[str, int] = {}

    @property
    def instruments(self) -> InstrumentTable:
        return self.source.instruments

    @property
    def stats(self) -> SourceStats:
        return self.source.stats

    def chunks(self) -> Iterator[np.ndarray]:
        self.restamp = counts = {"rows": 0, "synthetic_kept": 0, "clamped": 0, "max_clamp_ns": 0, "hold_ns": self.hold_ns}
        seen = np.zeros(0, np.int64)  # rows so far per instrument: the next k
        held = np.empty(0, QUOTE_DTYPE)  # restamped, sorted by new ts_recv, arrival order within a tie
        last_ns = np.iinfo(np.int64).min  # ts_recv of the last row emitted
        watermark_ns = np.iinfo(np.int64).min
        for chunk in self.source.chunks():
            if len(chunk) == 0:
                continue
            chunk = np.ascontiguousarray(chunk, dtype=QUOTE_DTYPE)
            new_ns, seen = self._redraw(chunk, seen, last_ns, counts)
            # The source's rows are copied, never written: held then the chunk, restamped in the copy.
            merged = concat_rows([held, chunk])
            merged["ts_recv"][len(held) :] = new_ns
            # A stable sort of held (already in order, and earlier) then the new rows keeps arrival order in ties.
            merged = take_rows(merged, np.argsort(merged["ts_recv"], kind="stable"))
            watermark_ns = max(watermark_ns, int(chunk["ts_recv"][-1]) - self.hold_ns)
            cut = int(np.searchsorted(merged["ts_recv"], watermark_ns, side="right"))
            held = take_rows(merged, slice(cut, None))
            if cut:
                last_ns = int(merged["ts_recv"][cut - 1])
                yield merged[:cut]
        if len(held):
            yield held

    def _redraw(self, rows: np.ndarray, seen: np.ndarray, last_ns: int, counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """The new ts_recv of ``rows`` and the per-instrument row counts after them."""
        inst = rows["instrument"].astype(np.int64)
        if len(seen) <= inst.max():
            seen = np.concatenate([seen, np.zeros(int(inst.max()) + 1 - len(seen), np.int64)])
        # k of each row: its instrument's rows before this chunk plus its rank among them in the chunk.
        by_inst = np.argsort(inst, kind="stable")
        sorted_inst = inst[by_inst]
        pos = np.arange(len(inst))
        first = np.ones(len(inst), bool)
        first[1:] = sorted_inst[1:] != sorted_inst[:-1]
        group_start = np.maximum.accumulate(np.where(first, pos, 0))
        k = np.empty(len(inst), np.int64)
        k[by_inst] = seen[sorted_inst] + pos - group_start
        seen += np.bincount(inst, minlength=len(seen))
        synthetic = (rows["flags"] & int(QuoteFlag.SYNTHETIC_TS)) != 0
        new_ns = np.where(synthetic, rows["ts_recv"], rows["ts_event"] + self.dist.draw_many(self.seed, inst, k))
        behind = new_ns < last_ns
        if behind.any():
            counts["clamped"] += int(np.count_nonzero(behind))
            counts["max_clamp_ns"] = max(counts["max_clamp_ns"], int(last_ns - new_ns[behind].min()))
            new_ns[behind] = last_ns
        counts["rows"] += len(rows)
        counts["synthetic_kept"] += int(np.count_nonzero(synthetic))
        return new_ns, seen


def read_recording(path: Path) -> Iterator[np.ndarray]:
    """The quote chunks of any recording the project reads: a catalog folder (feeds.catalog) or a
    file or folder one of feeds.vendors' readers recognizes."""
    from feeds.catalog import MANIFEST, Catalog
    from feeds.vendors import open_source

    path = Path(path)
    source = Catalog(path).source() if (path / MANIFEST).is_file() else open_source(path)
    return source.chunks()


# Models read from recordings, by spec and the recording's files (paths, sizes, mtimes): a sweep or
# a study builds one Engine per configuration, and each read the whole recording again (seconds to
# minutes for a day of quotes). Models are immutable (read-only tables), so they are shared.
_FILE_MODELS: dict[tuple[str, tuple[tuple[str, int, int], ...]], LatencyDistribution] = {}
_FILE_MODELS_MAX = 16


def _files_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])


def latency_from_spec(spec: str) -> LatencyDistribution:
    """``LatencyDistribution.from_spec`` with ``empirical:PATH`` reading any recording (``read_recording``).
    A model read from files is kept and handed out again while those files are unchanged."""
    kind, arg = parse_spec(spec)
    if kind not in ("empirical", "jitter") or not Path(str(arg)).exists():
        return LatencyDistribution.from_spec(spec, read_quotes=read_recording)
    key = (str(spec), _files_signature(Path(str(arg))))
    model = _FILE_MODELS.get(key)
    if model is None:
        model = LatencyDistribution.from_spec(spec, read_quotes=read_recording)
        if len(_FILE_MODELS) >= _FILE_MODELS_MAX:
            del _FILE_MODELS[next(iter(_FILE_MODELS))]
        _FILE_MODELS[key] = model
    return model
