"""A quote source read once and replayed many times: the data set a sweep of configurations shares.

    QuoteDataset.read(source)           every chunk of ``source`` into one QUOTE_DTYPE array in memory
    QuoteDataset.read(source, folder)   the same, streamed into folder/quotes.npy + folder/dataset.json
    QuoteDataset.open(folder)           a written data set, memory-mapped read-only
    dataset.source()                    a fresh QuoteSource over zero-copy slices: run_backtest(dataset.source(), config)

A replay is exact: it yields the source's own chunks (same boundaries) and grows its instrument table
as the source's grew while it was read, so the engine sees what it saw on the original read (a
strategy's default notional divides the capital by the instruments known when the first tick
arrives; instruments a file reveals late must stay unknown until then). Every replay carries a copy of
the read's ``SourceStats``: its quarantine counts reach every run's summary.

On disk, ``quotes.npy`` is a plain .npy file (``numpy.load`` reads it) whose padding bytes are zeroed,
so its SHA-256 is a function of the quotes alone; ``dataset.json`` holds the instrument table, the
stats, the chunk layout, the row count and that SHA-256. Processes that open the same folder share
the file's pages instead of each holding a copy, and a file-backed data set pickles as its folder.
"""

from __future__ import annotations

import copy
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import numpy as np

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, concat_rows, take_rows
from engine.domain.source import QuoteSource, SourceStats

QUOTES_FILE = "quotes.npy"
MANIFEST_FILE = "dataset.json"
FORMAT = "nextick.quote_dataset"
FORMAT_VERSION = 1

_DESCR = repr(np.lib.format.dtype_to_descr(QUOTE_DTYPE))
# The bytes of a quote record that belong to no field (alignment padding).
_PADDING = np.setdiff1d(
    np.arange(QUOTE_DTYPE.itemsize),
    np.concatenate([np.arange(f[1], f[1] + f[0].itemsize) for f in QUOTE_DTYPE.fields.values()]),
)


class DatasetError(ValueError):
    """A data set folder that cannot be opened: missing, corrupt, or its two files do not belong together."""


class Layout(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the source revealed itself while it was read: enough to replay it exactly.

    ``chunk_ends[k]`` is the row after the source's k-th chunk; ``chunk_instruments[k]`` the size of
    its instrument table when it yielded that chunk; ``first_instruments`` the size before the first.
    """

    instruments: list[Instrument]
    first_instruments: int
    chunk_ends: list[int]
    chunk_instruments: list[int]
    stats: SourceStats


class Manifest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``dataset.json``."""

    format: str
    version: int
    rows: int
    dtype: str
    sha256: str
    layout: Layout


class QuoteDataset:
    """The quotes of one read of a ``QuoteSource``, with its instrument table and stats; see the module doc."""

    def __init__(self, quotes: np.ndarray, layout: Layout, *, folder: Path | None = None, sha256: str | None = None) -> None:
        self.quotes = quotes
        self.layout = layout
        self.instruments = InstrumentTable(layout.instruments)
        self.stats = layout.stats
        self.folder = folder
        self._sha256 = sha256

    # -- making one ------------------------------------------------------------------------------

    @classmethod
    def read(
        cls,
        source: QuoteSource,
        folder: str | Path | None = None,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> "QuoteDataset":
        """Read ``source`` to its end, once. With ``folder``, the quotes stream into a file there (memory
        stays bounded by one chunk) and the data set comes back memory-mapped; without, they are held
        in memory. A source that stops with an error (a ``reject`` policy) raises it here."""
        sink: _Sink = _FileSink(Path(folder)) if folder is not None else _MemorySink()
        try:
            first = len(source.instruments)
            ends: list[int] = []
            known: list[int] = []
            rows = 0
            for chunk in source.chunks():
                sink.add(chunk)
                rows += len(chunk)
                ends.append(rows)
                known.append(len(source.instruments))
                if on_progress is not None:
                    on_progress(len(chunk))
        except BaseException:
            sink.abort()
            raise
        layout = Layout(
            instruments=list(source.instruments),
            first_instruments=first,
            chunk_ends=ends,
            chunk_instruments=known,
            stats=copy.deepcopy(source.stats),
        )
        return sink.finish(layout)

    def save(self, folder: str | Path) -> "QuoteDataset":
        """Write this data set to ``folder`` and return it opened from there (memory-mapped)."""
        return QuoteDataset.read(self.source(), folder)

    @classmethod
    def open(cls, folder: str | Path, *, verify: bool = True) -> "QuoteDataset":
        """The data set written to ``folder``, its quotes memory-mapped read-only.

        Checks that the manifest is this format and version, that quotes.npy holds quote records
        and as many rows as the manifest says, and (``verify``, the default) that its SHA-256 matches,
        which reads the file once; a worker handed a data set its parent opened skips that.
        """
        folder = Path(folder)
        manifest = _read_manifest(folder)
        quotes = _map_quotes(folder, manifest)
        if verify:
            digest = _sha256(quotes)
            if digest != manifest.sha256:
                raise DatasetError(
                    f"{folder / QUOTES_FILE}: its content does not match the SHA-256 in {MANIFEST_FILE} "
                    f"(corrupt, or replaced by another data set's file); write the data set again"
                )
        return cls(quotes, manifest.layout, folder=folder, sha256=manifest.sha256)

    def __reduce_ex__(self, protocol):
        # A file-backed data set travels to worker processes as its folder: each maps the same
        # pages instead of receiving a copy of the quotes.
        if self.folder is None:
            return super().__reduce_ex__(protocol)
        return (_open_verified_by_parent, (str(self.folder),))

    # -- using one -------------------------------------------------------------------------------

    def source(self, start_ns: int | None = None, end_ns: int | None = None) -> "DatasetSource":
        """A fresh ``QuoteSource`` over this data set; each run needs its own. ``start_ns``/``end_ns``
        replay only the quotes with ``start_ns <= ts_recv < end_ns`` (a sweep's validation and test
        periods), in the same chunks, each cut to the period, with the same growth of the instrument
        table."""
        return DatasetSource(self, start_ns, end_ns)

    def __len__(self) -> int:
        return len(self.quotes)

    @property
    def sha256(self) -> str:
        """SHA-256 of the quote records (padding zeroed): equal digests mean the same quotes."""
        if self._sha256 is None:
            self._sha256 = _sha256(self.quotes)
        return self._sha256

    def __repr__(self) -> str:
        where = f"folder={str(self.folder)!r}" if self.folder is not None else "in memory"
        return f"QuoteDataset({len(self):,} quotes, {len(self.instruments)} instruments, {self.stats.source!r}, {where})"


class DatasetSource:
    """One replay of a ``QuoteDataset`` (implements ``engine.domain.source.QuoteSource``)."""

    def __init__(self, dataset: QuoteDataset, start_ns: int | None = None, end_ns: int | None = None) -> None:
        layout = dataset.layout
        self._dataset = dataset
        self.instruments = InstrumentTable(layout.instruments[: layout.first_instruments])
        # The read's counts, the same for every replay: a run's summary reports what its data had.
        self.stats = copy.deepcopy(dataset.stats)
        self._period = None if start_ns is None and end_ns is None else (start_ns, end_ns)
        self.expected_rows = len(dataset) if self._period is None else int(np.count_nonzero(self._in_period(dataset.quotes)))

    def _in_period(self, quotes: np.ndarray) -> np.ndarray:
        ts = quotes["ts_recv"]
        lo, hi = self._period
        keep = np.ones(len(ts), dtype=bool)
        if lo is not None:
            keep &= ts >= lo
        if hi is not None:
            keep &= ts < hi
        return keep

    def chunks(self) -> Iterator[np.ndarray]:
        layout, quotes = self._dataset.layout, self._dataset.quotes
        lo = 0
        for hi, known in zip(layout.chunk_ends, layout.chunk_instruments):
            self._reveal(known)
            # A mask, not a search: a source's receive times need not be sorted across instruments'
            # files, and a quote outside the period must go wherever it sits.
            yield quotes[lo:hi] if self._period is None else quotes[lo:hi][self._in_period(quotes[lo:hi])]
            lo = hi
        self._reveal(len(layout.instruments))

    def _reveal(self, n: int) -> None:
        everything = self._dataset.layout.instruments
        for k in range(len(self.instruments), n):
            self.instruments.add(everything[k])


def _open_verified_by_parent(folder: str) -> QuoteDataset:
    return QuoteDataset.open(folder, verify=False)


# -- writing ---------------------------------------------------------------------------------------


def _clean(chunk: np.ndarray) -> np.ndarray:
    """A copy of ``chunk`` (sources may reuse their buffers) with the padding bytes zeroed."""
    out = take_rows(np.ascontiguousarray(chunk, dtype=QUOTE_DTYPE))
    if len(_PADDING):
        out.view(np.uint8).reshape(len(out), QUOTE_DTYPE.itemsize)[:, _PADDING] = 0
    return out


def _sha256(quotes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(quotes).view(np.uint8)).hexdigest()


class _Sink:
    def add(self, chunk: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self, layout: Layout) -> QuoteDataset:
        raise NotImplementedError

    def abort(self) -> None:
        pass


class _MemorySink(_Sink):
    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, chunk: np.ndarray) -> None:
        self.parts.append(_clean(chunk))

    def finish(self, layout: Layout) -> QuoteDataset:
        quotes = concat_rows(self.parts) if self.parts else np.zeros(0, QUOTE_DTYPE)
        return QuoteDataset(quotes, layout)


# A .npy header of fixed size: written before the rows are counted, rewritten in place after.
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_HEADER_BYTES = 512  # room for the description and any row count (np.load needs a multiple of 64)


def _npy_header(rows: int) -> bytes:
    text = f"{{'descr': {_DESCR}, 'fortran_order': False, 'shape': ({rows},), }}"
    room = _NPY_HEADER_BYTES - len(_NPY_MAGIC) - 2
    text = text.ljust(room - 1) + "\n"
    assert len(text) == room, "QUOTE_DTYPE's description outgrew the fixed .npy header"
    return _NPY_MAGIC + struct.pack("<H", room) + text.encode("latin1")


class _FileSink(_Sink):
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        # Written under temporary names and renamed when complete: a crash mid-read leaves no
        # data set that looks whole (the manifest is renamed last).
        self.tmp = folder / f".{QUOTES_FILE}.partial"
        self.file = open(self.tmp, "wb")
        self.file.write(_npy_header(0))
        self.rows = 0
        self.digest = hashlib.sha256()

    def add(self, chunk: np.ndarray) -> None:
        data = _clean(chunk).view(np.uint8)
        self.file.write(data)
        self.digest.update(data)
        self.rows += len(chunk)

    def finish(self, layout: Layout) -> QuoteDataset:
        self.file.seek(0)
        self.file.write(_npy_header(self.rows))
        self.file.close()
        manifest = Manifest(
            format=FORMAT, version=FORMAT_VERSION, rows=self.rows, dtype=_DESCR, sha256=self.digest.hexdigest(), layout=layout
        )
        tmp_manifest = self.folder / f".{MANIFEST_FILE}.partial"
        tmp_manifest.write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
        # An earlier data set's manifest goes first: it must never describe the new quotes.
        (self.folder / MANIFEST_FILE).unlink(missing_ok=True)
        os.replace(self.tmp, self.folder / QUOTES_FILE)
        os.replace(tmp_manifest, self.folder / MANIFEST_FILE)
        return QuoteDataset.open(self.folder, verify=False)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


# -- opening ---------------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        what = "no such folder" if not folder.exists() else f"no {MANIFEST_FILE} in it"
        raise DatasetError(f"{folder}: {what}; write a data set there with QuoteDataset.read(source, folder)")
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except msgspec.DecodeError as e:  # ValidationError included: it names the field, e.g. `$.rows`
        raise DatasetError(f"{path}: not a quote data set manifest ({e}); write the data set again") from None
    if manifest.format != FORMAT:
        raise DatasetError(
            f"{path}: format is {manifest.format!r}, not {FORMAT!r}: not a quote data set; open a folder that "
            "QuoteDataset.read(source, folder) wrote"
        )
    if manifest.version != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format version {manifest.version}; this nextick reads version {FORMAT_VERSION}: "
            "write the data set again with this version"
        )
    if manifest.dtype != _DESCR:
        raise DatasetError(f"{path}: written with another quote record layout ({manifest.dtype}); write the data set again")
    _check_layout(path, manifest)
    return manifest


def _check_layout(path: Path, manifest: Manifest) -> None:
    lay = manifest.layout
    ends, known, n = lay.chunk_ends, lay.chunk_instruments, len(lay.instruments)
    problems = []
    if len(ends) != len(known):
        problems.append(f"{len(ends)} chunk_ends but {len(known)} chunk_instruments")
    if any(b < a for a, b in zip([0, *ends], ends)) or (ends[-1] if ends else 0) != manifest.rows:
        problems.append(f"chunk_ends must rise from 0 to rows ({manifest.rows})")
    if any(b < a for a, b in zip([lay.first_instruments, *known], known)) or any(k > n for k in [lay.first_instruments, *known]):
        problems.append(f"instrument counts must rise from first_instruments to at most {n}")
    if problems:
        raise DatasetError(f"{path}: inconsistent layout: {'; '.join(problems)}; write the data set again")


def _map_quotes(folder: Path, manifest: Manifest) -> np.ndarray:
    path = folder / QUOTES_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing; {MANIFEST_FILE} has no quotes to go with it: write the data set again")
    try:
        # An empty array cannot be mapped (mmap refuses length 0).
        quotes = np.load(path, mmap_mode="r" if manifest.rows else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable .npy file ({e}); write the data set again") from None
    if quotes.dtype != QUOTE_DTYPE or quotes.ndim != 1:
        raise DatasetError(f"{path}: holds {quotes.dtype} with shape {quotes.shape}, not quote records; write the data set again")
    if len(quotes) != manifest.rows:
        raise DatasetError(
            f"{path}: {len(quotes):,} rows, but {MANIFEST_FILE} says {manifest.rows:,}: the two files do not "
            "belong together; write the data set again"
        )
    return quotes
