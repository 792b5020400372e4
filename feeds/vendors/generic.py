"""Any other CSV or Parquet file whose columns ``feeds.replay.ColumnMap.infer`` recognizes."""

from __future__ import annotations

from pathlib import Path

from feeds.replay import CSV_SUFFIXES, PARQUET_SUFFIXES, FileReplay
from feeds.vendors.options import ReaderOptions


def sniff(path: Path, head: bytes) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)


def reader(path: Path, options: ReaderOptions = ReaderOptions()) -> FileReplay:
    """Options it reads: ``policy``, ``template`` (the instrument new symbols are made from),
    ``symbol`` (for a file without a symbol column; default: the file's stem)."""
    return FileReplay(path, policy=options.policy, template=options.template, symbol=options.symbol or None)
