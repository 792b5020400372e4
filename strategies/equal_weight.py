"""Equal weight on a clock: the simplest portfolio strategy, and the example of the seam.

At each rebalance every instrument that can trade gets ``gross / n`` of equity (n = all instruments,
so one that cannot trade now, closed or stale, keeps its position untouched). Between rebalances the
weights drift with prices; the clock brings them back.
"""

from __future__ import annotations

import math

import numpy as np

from engine.domain.timestamps import SECOND_NS
from strategies.portfolio import Book, PortfolioStrategy, Targets


class EqualWeight(PortfolioStrategy):
    name = "equal_weight"

    def __init__(self, gross: float = 1.0, rebalance_s: float = 3600.0) -> None:
        if not math.isfinite(gross):
            raise ValueError(f"gross must be a finite fraction of equity, not {gross!r}")
        if not (math.isfinite(rebalance_s) and rebalance_s >= 0):
            raise ValueError(f"rebalance_s must be >= 0 seconds (0: every tick batch), not {rebalance_s!r}")
        self.gross = gross
        self.rebalance_ns = round(rebalance_s * SECOND_NS)

    def on_rebalance(self, book: Book) -> Targets:
        w = np.full(len(book), self.gross / max(len(book), 1))
        # NaN where it cannot trade: left alone rather than counted as a skipped target.
        return Targets.weights(np.where(book.tradeable, w, np.nan))
