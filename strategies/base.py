"""The strategy interface.

A strategy sees one *tick batch* at a time: every instrument whose tick carries the same timestamp
(each instrument at most once), and answers with a target position per row, in units. NaN means
"no opinion": whatever order is working stays, and no new one is sent. The engine turns targets into
orders that fill at the next tick (see DESIGN.md, Execution), clamps targets during warm-up so no
position is opened or increased, and flattens before the close when asked to.

Built-in strategies run inside the C++ loop (``strategies.builtin``); a Python strategy subclasses
``Strategy``::

    class Contrarian(Strategy):
        def on_batch(self, batch: TickBatch) -> np.ndarray:
            return np.where(batch.mid > batch.bid_px, -1.0, 1.0) * 10

A strategy cannot tell replayed from live data: both reach it through the same batches. One that
decides for every instrument at once, ticking or not, is a ``strategies.portfolio.PortfolioStrategy``.
"""

from __future__ import annotations

import abc

import numpy as np

from engine.domain.instrument import InstrumentTable
from strategies.events import StrategyCallbacks

# Layout of csrc/backtester.hpp BatchRow; the core writes rows in place, the strategy reads them.
BATCH_DTYPE = np.dtype(
    [
        ("ts", "<i8"),
        ("bid_px", "<f8"),
        ("ask_px", "<f8"),
        ("bid_sz", "<f8"),
        ("ask_sz", "<f8"),
        ("mid", "<f8"),
        ("pred_mid", "<f8"),  # the SSM's expected mid K ticks ahead; NaN when no model is loaded
        ("pred_std", "<f8"),  # MC dropout: std of pred_mid across the model's variants; 0 with one
        ("position", "<f8"),  # units held now
        ("target", "<f8"),  # written back: target units, NaN = keep
        ("instrument", "<u4"),
        ("reset", "u1"),  # 1: the instrument's state was reset at this tick
        ("warm", "u1"),  # 1: warm-up is over, the strategy may open positions
    ],
    align=True,
)
assert BATCH_DTYPE.itemsize == 88


class QuoteRows:
    """Column views of rows that carry a quote and a position: a tick batch, a portfolio's book."""

    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def instrument(self) -> np.ndarray:
        return self.rows["instrument"]

    @property
    def bid_px(self) -> np.ndarray:
        return self.rows["bid_px"]

    @property
    def ask_px(self) -> np.ndarray:
        return self.rows["ask_px"]

    @property
    def bid_sz(self) -> np.ndarray:
        return self.rows["bid_sz"]

    @property
    def ask_sz(self) -> np.ndarray:
        return self.rows["ask_sz"]

    @property
    def mid(self) -> np.ndarray:
        return self.rows["mid"]

    @property
    def position(self) -> np.ndarray:
        """Units held."""
        return self.rows["position"]

    @property
    def warm(self) -> np.ndarray:
        return self.rows["warm"].view(np.bool_)


class TickBatch(QuoteRows):
    """Read-only views of one tick batch (length = number of instruments ticking now)."""

    __slots__ = ()

    @property
    def ts_ns(self) -> int:
        return int(self.rows["ts"][0])

    @property
    def pred_mid(self) -> np.ndarray:
        """The model's expected mid at its horizon (``BacktestConfig.model``); NaN without a model."""
        return self.rows["pred_mid"]

    @property
    def pred_std(self) -> np.ndarray:
        """MC dropout (``BacktestConfig.mc_samples``): the spread of pred_mid across the model's
        variants, the epistemic part of its uncertainty; 0 with one variant, NaN without a model."""
        return self.rows["pred_std"]

    @property
    def reset(self) -> np.ndarray:
        return self.rows["reset"].view(np.bool_)


class Strategy(StrategyCallbacks, abc.ABC):
    """Base class of Python strategies.

    Beside targets, a strategy may send explicit orders (limit, stop, stop-limit, cancel, replace)
    by writing requests into ``self.orders`` with the functions of ``strategies.orders``, in
    ``on_batch`` or in an event callback; the engine reads them after the batch's targets. Events
    (fills, rejects, cancels, resets, sessions) reach the ``on_*`` callbacks below before the next
    batch, in the order they happened; each gets one ``strategies.orders.EVENT_DTYPE`` record.
    """

    name: str = "python"

    def on_start(self, instruments: InstrumentTable, *, initial_capital: float) -> None:
        """Called once before the first batch; size per-instrument state here."""

    @abc.abstractmethod
    def on_batch(self, batch: TickBatch) -> np.ndarray | None:
        """Target positions (units) for the rows of ``batch``; NaN or None = keep."""


class StrategyError(RuntimeError):
    pass


class BatchHost:
    """Owns the batch buffer the core writes into and calls the strategy once per batch."""

    def __init__(self, strategy: Strategy, capacity: int) -> None:
        self.strategy = strategy
        self.buffer = np.zeros(max(capacity, 1), dtype=BATCH_DTYPE)
        self.batches = 0

    def grow(self, capacity: int) -> None:
        if capacity > len(self.buffer):
            self.buffer = np.zeros(capacity, dtype=BATCH_DTYPE)

    def __call__(self, n: int) -> None:
        rows = self.buffer[:n]
        self.batches += 1
        targets = self.strategy.on_batch(TickBatch(rows))
        if targets is None:
            return
        t = np.asarray(targets, dtype=np.float64)
        if t.shape != (n,):
            raise StrategyError(
                f"{type(self.strategy).__name__}.on_batch returned shape {t.shape} for a batch of {n} rows; "
                "return one target per row (NaN to keep)"
            )
        if np.isinf(t).any():
            raise StrategyError(f"{type(self.strategy).__name__}.on_batch returned an infinite target")
        rows["target"] = t
