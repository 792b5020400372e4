"""Fixed-size output chunks whatever the size of the pieces a reader validates: every reader's
``chunks()`` goes through one ``Coalescer``, so the engine's batches do not depend on how a file
happens to be split into blocks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.domain.quote import QUOTE_DTYPE, as_rows, take_rows


class Coalescer:
    """Regroups validated pieces into chunks of exactly ``chunk_rows`` rows (the last may be short),
    so downstream batch sizes do not depend on the reader's block boundaries. Pieces are copied
    straight into the chunk being filled, so at most one partial chunk is held."""

    def __init__(self, chunk_rows: int) -> None:
        self.chunk_rows = chunk_rows
        self.buf: np.ndarray | None = None
        self.n = 0

    def add(self, arr: np.ndarray) -> Iterator[np.ndarray]:
        if self.n == 0 and len(arr) == self.chunk_rows:
            yield arr  # already a whole chunk
            return
        src = as_rows(arr)
        while len(src):
            if self.buf is None:
                self.buf = np.empty(self.chunk_rows, dtype=QUOTE_DTYPE)
            take = min(self.chunk_rows - self.n, len(src))
            as_rows(self.buf)[self.n : self.n + take] = src[:take]
            self.n += take
            src = src[take:]
            if self.n == self.chunk_rows:
                out, self.buf, self.n = self.buf, None, 0
                yield out

    def flush(self) -> Iterator[np.ndarray]:
        if self.n:
            out = take_rows(self.buf, slice(0, self.n))  # exact size, not a view pinning the buffer
            self.buf, self.n = None, 0
            yield out
