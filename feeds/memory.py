"""A quote source over an array already in memory (tests, notebooks, quotes built by hand)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.domain.instrument import InstrumentTable
from engine.domain.quote import QUOTE_DTYPE
from engine.domain.source import SourceStats


class ArraySource:
    def __init__(self, quotes: np.ndarray, instruments: InstrumentTable, *, chunk_rows: int = 1 << 20) -> None:
        quotes = np.ascontiguousarray(quotes, dtype=QUOTE_DTYPE)
        ts = quotes["ts_recv"]
        if len(ts) > 1 and (np.diff(ts) < 0).any():
            bad = int(np.argmax(np.diff(ts) < 0)) + 1
            raise ValueError(f"quotes row {bad}: ts_recv goes back in time; sort by ts_recv (stable) first")
        if len(quotes) and int(quotes["instrument"].max()) >= len(instruments):
            raise ValueError("quotes reference an instrument id beyond the instrument table")
        self.quotes = quotes
        self.instruments = instruments
        self.chunk_rows = chunk_rows
        self.stats = SourceStats(source="memory")

    def chunks(self) -> Iterator[np.ndarray]:
        for lo in range(0, len(self.quotes), self.chunk_rows):
            chunk = self.quotes[lo : lo + self.chunk_rows]
            self.stats.rows_read += len(chunk)
            self.stats.rows_emitted += len(chunk)
            yield chunk
