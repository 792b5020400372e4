"""Any other CSV or Parquet file whose columns ``feeds.replay.ColumnMap.infer`` recognizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from feeds.replay import CSV_SUFFIXES, PARQUET_SUFFIXES, FileReplay


def sniff(path: Path, head: bytes) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)


def reader(path: Path, *, policy=None, template=None, symbol: str | None = None, **_: Any) -> FileReplay:
    return FileReplay(path, policy=policy, template=template, symbol=symbol or None)
