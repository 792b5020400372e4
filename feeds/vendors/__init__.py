"""Readers for the files users already have, and the one function that picks the right one.

Each module reads one vendor's format into a ``engine.domain.source.QuoteSource`` (time-ordered
``QUOTE_DTYPE`` chunks, validated per DESIGN.md, timestamp unit detected and reported) with
``reader(path, options)``, and says whether a file looks like its format (``sniff``). Every reader
takes the same ``feeds.vendors.options.ReaderOptions``. ``open_source(path)`` asks them in turn:

    binance      Binance bookTicker CSV or zip (data.binance.vision), with or without the header
    tardis       Tardis.dev ``quotes`` / ``book_ticker`` CSV, plain or gz
    databento    Databento DBN (mbp-1, tbbo, bbo-1s, bbo-1m), via the optional ``databento-dbn``
    lobster      LOBSTER level-1 message + orderbook pairs
    histdata     HistData.com FX ticks (no header, EST without DST)
    dukascopy    Dukascopy tick CSV exports (``symbol,ts_ms_utc,...`` or dukascopy-node's layout)
    raw          raw websocket recordings ``<recv_ns> <frame>`` (feeds.raw_replay)
    generic      any other CSV/Parquet with recognizable columns (feeds.replay.FileReplay)
"""

from __future__ import annotations

import gzip
import importlib
import zipfile
from pathlib import Path
from typing import Any

from engine.domain.source import QuoteSource
from feeds.vendors.options import ReaderOptions

# Tried in this order; the generic reader last.
FORMATS: tuple[str, ...] = (
    "databento", "lobster", "raw", "binance", "tardis", "histdata", "dukascopy", "generic",
)
_MODULES = {
    "databento": "feeds.vendors.databento",
    "lobster": "feeds.vendors.lobster",
    "raw": "feeds.vendors.raw",
    "binance": "feeds.vendors.binance",
    "tardis": "feeds.vendors.tardis",
    "histdata": "feeds.vendors.histdata",
    "dukascopy": "feeds.vendors.dukascopy",
    "generic": "feeds.vendors.generic",
}
HEAD_BYTES = 4096


def head_of(path: Path, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of the (decompressed) content: gzip and single-member zip are opened."""
    path = Path(path)
    if path.is_dir():
        return b""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as g:
            try:
                return g.read(n)
            except (EOFError, OSError):
                return b""
    if magic == b"PK\x03\x04":
        with zipfile.ZipFile(path) as z:
            names = [i for i in z.infolist() if not i.is_dir()]
            if not names:
                return b""
            with z.open(names[0]) as m:
                return m.read(n)
    with open(path, "rb") as f:
        return f.read(n)


def module(fmt: str):
    if fmt not in _MODULES:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(_MODULES[fmt])


def detect(path: Path | str) -> str:
    """The format name of ``path`` (a file, or a directory for formats that are folders of files)."""
    path = Path(path)
    head = head_of(path)
    for fmt in FORMATS:
        if module(fmt).sniff(path, head):
            return fmt
    raise ValueError(
        f"{path}: not a format nextick recognizes ({', '.join(FORMATS)}); for another CSV or Parquet layout "
        "use `nextick backtest --data FILE --columns ts=...,bid=...,ask=...`"
    )


def open_source(
    path: Path | str, fmt: str | None = None, options: ReaderOptions | None = None, **option_values: Any
) -> QuoteSource:
    """A QuoteSource over ``path`` in format ``fmt`` (detected when None). The reader gets
    ``options`` with ``option_values`` set (``policy=``, ``symbol=``, ``venue=``, ...: the fields
    of ``ReaderOptions``; an unknown name is refused with the valid ones)."""
    opts = ReaderOptions.build(options, **option_values)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    fmt = fmt or detect(path)
    return module(fmt).reader(path, opts)
