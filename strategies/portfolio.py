"""Portfolio strategies: one decision for every instrument at once.

A ``Strategy`` (strategies.base) answers for the rows ticking now. A ``PortfolioStrategy`` sees the
whole book (every instrument's last tick, positions, working orders, cash, equity, session state,
and the rows ticking now) and answers for every instrument, ticking now or not::

    class Balanced(PortfolioStrategy):
        rebalance_ns = 3_600 * SECOND_NS          # the first batch at or after each whole UTC hour

        def on_rebalance(self, book: Book) -> Targets:
            return Targets.weights(np.where(book.tradeable, 1.0 / len(book), np.nan))

When it is called: at every tick batch when ``rebalance_ns`` is 0 (the default), else at the first
tick batch at or after each multiple of ``rebalance_ns`` counted from the UTC epoch (00:00:00
1970-01-01), so a 1-hour clock fires on whole UTC hours and a 1-day clock at 00:00 UTC. Every batch
counts, also one whose ticks were all outside their sessions; periods with no batch at all are
skipped, not replayed.

What it answers: ``Targets.units(x)`` (target positions in units) or ``Targets.weights(w)`` (target
value as a fraction of equity; negative is short), one value per instrument (an array in instrument
order, or a mapping by symbol where absent means NaN); NaN means "leave that instrument alone", and
``None`` leaves all of them alone. The engine (csrc/backtester.cpp, ``place_targets``) applies the
rules of DESIGN.md "Execution" to every instrument alike:

- decision time T is the batch's timestamp; the order is active at T + latency and fills at the
  instrument's first tick with ts_recv > T + latency (an instrument not ticking now fills at its
  next tick), a buy at the ask, a sell at the bid, with fees and the size cap;
- the decision mid is the instrument's mark (``book.mid``, its last two-sided mid);
- a weight w becomes ``w * book.equity / book.mid`` units, rounded to whole lots toward zero, so
  the position's value at the decision mid never exceeds ``|w| * equity``;
- no order for an instrument that is not ``book.tradeable``: the target is skipped and counted
  (``targets_skipped``). Tradeable means in session (the session of its last tick is still open;
  one that has not ticked since a new session opened is not, as its first tick will reset it),
  priced (it has a mark), and not stale (a tick after T + latency would come within its gap
  threshold of its last tick; a later one resets it for the GAP, which would cancel the order
  unfilled). A weight on an instrument with no price is skipped this way, and the other weights
  are not rescaled (its share stays in cash);
- during an instrument's warm-up a target may reduce its position but not open or increase it;
- a target equal to the position plus the working order keeps that order (and its place in time);
  a different one replaces it; orders still open at the close are cancelled;
- with flatten-at-close, targets in the last ``flatten_lead_ns`` of a session are flat.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from functools import cached_property
from typing import Union

import numpy as np

from engine.domain.instrument import InstrumentTable
from strategies.base import BATCH_DTYPE, QuoteRows, StrategyError, TickBatch
from strategies.events import StrategyCallbacks

# Layout of csrc/backtester.hpp BookRow: one row per instrument, written by the core.
BOOK_DTYPE = np.dtype(
    [
        ("ts", "<i8"),  # ts_recv of its last in-session two-sided tick; 0 before the first
        ("bid_px", "<f8"),  # NaN before the first tick
        ("ask_px", "<f8"),
        ("bid_sz", "<f8"),  # 0 before the first tick
        ("ask_sz", "<f8"),
        ("mid", "<f8"),  # the mark: decision mid, and the price weights convert at; NaN before the first tick
        ("pred_mid", "<f8"),  # the model's expected mid at its horizon, as of the last tick; NaN without a model
        ("position", "<f8"),  # units held
        ("working", "<f8"),  # units still to fill on the working order, signed; 0 if none
        ("instrument", "<u4"),
        ("in_session", "u1"),  # 1: the session of its last tick is open at the decision time
        ("tradeable", "u1"),  # 1: an order is placed for a target on it (see the module doc)
        ("warm", "u1"),  # 1: tradeable and warm-up over (an order may open or increase a position)
    ],
    align=True,
)
assert BOOK_DTYPE.itemsize == 80

TargetValues = Union[np.ndarray, "list[float]", Mapping[Union[str, int], float]]


class Targets:
    """What ``on_rebalance`` returns: target units or target weights of equity, per instrument."""

    NONE, UNITS, WEIGHTS = 0, 1, 2  # csrc/backtester.hpp TargetKind
    __slots__ = ("kind", "values")

    def __init__(self, kind: int, values: TargetValues) -> None:
        if kind not in (self.UNITS, self.WEIGHTS):
            raise ValueError("use Targets.units(...) or Targets.weights(...)")
        self.kind = kind
        self.values = values

    @classmethod
    def units(cls, values: TargetValues) -> Targets:
        """Target positions in units (rounded to whole lots toward zero); NaN = leave alone."""
        return cls(cls.UNITS, values)

    @classmethod
    def weights(cls, values: TargetValues) -> Targets:
        """Target position values as fractions of equity at the decision mids; NaN = leave alone."""
        return cls(cls.WEIGHTS, values)

    @property
    def kind_name(self) -> str:
        return "units" if self.kind == self.UNITS else "weights"


class Book(QuoteRows):
    """Read-only view of every instrument at the decision time (length = number of instruments).

    Per instrument (arrays in instrument order): the last tick that reached the strategies
    (``last_ts_ns``, ``bid_px``, ``ask_px``, ``bid_sz``, ``ask_sz``, and ``pred_mid``, the model's
    prediction made at that tick), ``mid`` (the mark),
    ``position`` and ``working`` (units), ``in_session``, ``tradeable`` and ``warm``. ``ticking``
    holds the rows ticking now (a TickBatch; empty when the batch's ticks were all outside their
    sessions or one-sided). Arrays are views into buffers the core rewrites: copy what you keep.
    """

    __slots__ = ("ts_ns", "cash", "equity", "ticking", "symbols")

    def __init__(
        self, ts_ns: int, cash: float, equity: float, rows: np.ndarray, ticking: TickBatch, symbols: list[str],
        *, views: dict[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(rows)
        if views is not None:
            # The column views made so far by earlier Books over the same rows (the host makes one
            # Book per rebalance): reading a column then costs a dict lookup, not a view.
            self.__dict__ = views
        self.ts_ns = ts_ns  # the decision time: the batch's ts_recv, ns UTC
        self.cash = cash  # currency
        self.equity = equity  # cash + positions at their marks
        self.ticking = ticking
        self.symbols = symbols

    @cached_property
    def last_ts_ns(self) -> np.ndarray:
        return self.rows["ts"]

    @cached_property
    def working(self) -> np.ndarray:
        """Units still to fill on each working order (signed; 0 if none)."""
        return self.rows["working"]

    @cached_property
    def pred_mid(self) -> np.ndarray:
        """The model's expected mid at its horizon (``BacktestConfig.model``) as of each instrument's
        last tick (the same value that tick's batch row carried); NaN without a model or a tick."""
        return self.rows["pred_mid"]

    @cached_property
    def in_session(self) -> np.ndarray:
        return self.rows["in_session"].view(np.bool_)

    @cached_property
    def tradeable(self) -> np.ndarray:
        return self.rows["tradeable"].view(np.bool_)

    @property
    def weight(self) -> np.ndarray:
        """Each position's value at its mark as a fraction of equity (0 where nothing is held)."""
        value = np.where(self.position != 0, self.position * self.mid, 0.0)
        return value / self.equity


class PortfolioStrategy(StrategyCallbacks, abc.ABC):
    """Base class of strategies that decide for every instrument at once (see the module doc). Explicit
    orders and event callbacks work as for ``strategies.base.Strategy``."""

    name: str = "portfolio"
    # 0: decide at every tick batch; else at the first batch at or after each multiple of this
    # period since the UTC epoch.
    rebalance_ns: int = 0

    def on_start(self, instruments: InstrumentTable, *, initial_capital: float) -> None:
        """Called once before the first rebalance."""

    @abc.abstractmethod
    def on_rebalance(self, book: Book) -> Targets | None:
        """Targets for every instrument (``Targets.units`` or ``Targets.weights``); None = no change."""


class PortfolioHost:
    """Owns the buffers the core writes (the ticking rows, the book) and reads (the targets), and
    calls the strategy at each rebalance (``_core.Backtester.run_portfolio``'s callback)."""

    def __init__(self, strategy: PortfolioStrategy, instruments: InstrumentTable) -> None:
        period = strategy.rebalance_ns
        if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 0:
            raise ValueError(
                f"{type(strategy).__name__}.rebalance_ns is {period!r}; give an int >= 0 in ns (0: every tick batch)"
            )
        self.strategy = strategy
        self.instruments = instruments
        self.buffer = np.zeros(0, BATCH_DTYPE)
        self.book = np.zeros(0, BOOK_DTYPE)
        self.targets = np.zeros(0)
        self.grow(len(instruments))

    def grow(self, n: int) -> None:
        """Room for n instruments; the book keeps what it knew of the earlier ones."""
        if len(self.buffer) and n <= len(self.book):
            return
        old = self.book
        self.buffer = np.zeros(max(n, 1), BATCH_DTYPE)
        self.book = np.zeros(n, BOOK_DTYPE)
        for field in ("bid_px", "ask_px", "mid", "pred_mid"):
            self.book[field] = np.nan
        self.book["instrument"] = np.arange(n)
        self.book[: len(old)] = old
        self.targets = np.full(n, np.nan)
        # The strategy gets read-only views; the core writes through the arrays themselves.
        self._buffer_ro = self.buffer.view()
        self._buffer_ro.flags.writeable = False
        self._ticking: list[TickBatch | None] = [None] * (len(self.buffer) + 1)  # by row count, made on first use
        self._book_views: dict[str, np.ndarray] = {}  # shared by the Books over self._book_ro
        self._book_ro = self.book.view()
        self._book_ro.flags.writeable = False
        self.symbols = self.instruments.symbols[:n]

    def __call__(self, n_rows: int, ts_ns: int, cash: float, equity: float) -> int:
        ticking = self._ticking[n_rows]
        if ticking is None:  # not `or`: a TickBatch of no rows is falsy
            ticking = self._ticking[n_rows] = TickBatch(self._buffer_ro[:n_rows])
        book = Book(ts_ns, cash, equity, self._book_ro, ticking, self.symbols, views=self._book_views)
        out = self.strategy.on_rebalance(book)
        if out is None:
            return Targets.NONE
        if not isinstance(out, Targets):
            raise StrategyError(
                f"{self._who()} returned {type(out).__name__}; return Targets.units(x) (positions in units) or "
                "Targets.weights(w) (fractions of equity), one value per instrument, or None for no change"
            )
        self.targets[:] = self._values(out)
        return out.kind

    def _who(self) -> str:
        return f"{type(self.strategy).__name__}.on_rebalance"

    def _values(self, out: Targets) -> np.ndarray:
        n = len(self.book)
        what = out.kind_name
        if isinstance(out.values, Mapping):
            t = np.full(n, np.nan)
            for key, v in out.values.items():
                i = self._index(key, what)
                t[i] = self._number(v, what, key)
        else:
            try:
                t = np.asarray(out.values, dtype=np.float64)
            except (TypeError, ValueError):
                raise StrategyError(
                    f"{self._who()} gave {what} that are not numbers; give floats (NaN = leave alone)"
                ) from None
            if t.shape != (n,):
                raise StrategyError(
                    f"{self._who()} gave {what} of shape {t.shape} for {n} instruments; give one per instrument "
                    f"in instrument order ({', '.join(self.symbols)}), NaN to leave one alone, or a mapping by symbol"
                )
        bad = np.flatnonzero(np.isinf(t))
        if len(bad):
            names = ", ".join(self.symbols[i] for i in bad)
            raise StrategyError(
                f"{self._who()} gave infinite {what} for {names}; give finite values (NaN = leave alone)"
            )
        return t

    def _index(self, key: object, what: str) -> int:
        if isinstance(key, str):
            i = self.instruments.get(key)
            if i is not None and i < len(self.book):
                return i
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < len(self.book):
            return int(key)
        raise StrategyError(
            f"{self._who()} gave {what} for unknown instrument {key!r}; the instruments are "
            f"{', '.join(self.symbols)} (by symbol, or index 0..{len(self.book) - 1})"
        )

    def _number(self, v: object, what: str, key: object) -> float:
        try:
            return float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise StrategyError(
                f"{self._who()} gave {what} {v!r} for {key!r}; give a float (NaN = leave alone)"
            ) from None
