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
import math
from functools import cached_property

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

    # A column's view is made on its first read and then found in the instance dict, with no call:
    # a host hands the same object to every batch of one size, so the per-tick path makes no views.
    __slots__ = ("__dict__", "rows")

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    def __setattr__(self, name: str, value: object) -> None:
        # A cached_property has no setter: `batch.mid = x` would put x in the instance dict, where
        # every later batch that reuses this object would read it instead of the rows' column.
        # AttributeError: what Python raises for an attribute without a setter.
        if isinstance(getattr(type(self), name, None), cached_property):
            raise AttributeError(  # noqa: TRY004
                f"{type(self).__name__}.{name} is a view of the engine's rows and cannot be reassigned "
                f"(the object is reused for later batches); keep your own array under another name")
        object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def instrument(self) -> np.ndarray:
        return self.rows["instrument"]

    @cached_property
    def bid_px(self) -> np.ndarray:
        return self.rows["bid_px"]

    @cached_property
    def ask_px(self) -> np.ndarray:
        return self.rows["ask_px"]

    @cached_property
    def bid_sz(self) -> np.ndarray:
        return self.rows["bid_sz"]

    @cached_property
    def ask_sz(self) -> np.ndarray:
        return self.rows["ask_sz"]

    @cached_property
    def mid(self) -> np.ndarray:
        return self.rows["mid"]

    @cached_property
    def position(self) -> np.ndarray:
        """Units held."""
        return self.rows["position"]

    @cached_property
    def warm(self) -> np.ndarray:
        return self.rows["warm"].view(np.bool_)


class TickBatch(QuoteRows):
    """Read-only views of one tick batch (length = number of instruments ticking now)."""

    __slots__ = ()

    @property
    def ts_ns(self) -> int:
        return int(self._ts[0])

    @cached_property
    def _ts(self) -> np.ndarray:
        return self.rows["ts"]

    @cached_property
    def pred_mid(self) -> np.ndarray:
        """The model's expected mid at its horizon (``BacktestConfig.model``); NaN without a model."""
        return self.rows["pred_mid"]

    @cached_property
    def pred_std(self) -> np.ndarray:
        """MC dropout (``BacktestConfig.mc_samples``): the spread of pred_mid across the model's
        variants, the epistemic part of its uncertainty; 0 with one variant, NaN without a model."""
        return self.rows["pred_std"]

    @cached_property
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
        self.batches = 0
        self._set_buffer(np.zeros(max(capacity, 1), dtype=BATCH_DTYPE))

    def grow(self, capacity: int) -> None:
        if capacity > len(self.buffer):
            self._set_buffer(np.zeros(capacity, dtype=BATCH_DTYPE))

    def _set_buffer(self, buffer: np.ndarray) -> None:
        self.buffer = buffer
        # Per batch size n: the TickBatch of buffer[:n] and its target column, made on first use.
        # Views into an old buffer must not survive it, hence a fresh table with each buffer.
        self._views: list[tuple[TickBatch, np.ndarray] | None] = [None] * (len(buffer) + 1)

    def _batch_views(self, n: int) -> tuple[TickBatch, np.ndarray]:
        rows = self.buffer[:n]
        views = self._views[n] = (TickBatch(rows), rows["target"])
        return views

    def __call__(self, n: int) -> None:
        self.batches += 1
        batch, target = self._views[n] or self._batch_views(n)
        targets = self.strategy.on_batch(batch)
        if targets is not None:
            self._write_targets(targets, target)

    def _write_targets(self, targets: object, target: np.ndarray) -> None:
        t = np.asarray(targets, dtype=np.float64)
        if t.shape != target.shape:
            raise StrategyError(
                f"{type(self.strategy).__name__}.on_batch returned shape {t.shape} for a batch of {len(target)} rows; "
                "return one target per row (NaN to keep)"
            )
        # t . t is finite when every target is: one cheap call in the usual case. NaN (keep) and
        # overflow make it non-finite too, so only then the exact test decides.
        if not math.isfinite(t.dot(t)) and np.isinf(t).any():
            raise StrategyError(f"{type(self.strategy).__name__}.on_batch returned an infinite target")
        target[...] = t
