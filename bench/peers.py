"""The same quotes through nextick and two peer engines: NautilusTrader and hftbacktest.

Each ``*_ema_cross`` function runs one fast/slow EMA cross of the mid over one instrument's BBO
stream; each ``*_quote_only`` function runs a strategy that only receives the quotes. They all
return a :class:`PeerResult`, so ``nextick bench`` (bench/run.py, bench/report.py) can print the
engines side by side. Nothing here asserts speed.

The rule, identical in all three (csrc/strategies.hpp ``momentum``; strategies/ema_cross.py):

- ``mid = 0.5 * (bid + ask)``; at the first quote ``fast = slow = mid`` and nothing is decided;
- after it, ``fast += a_f * (mid - fast)`` and ``slow += a_s * (mid - slow)`` with
  ``a = 2 / (span + 1)``;
- ``d = sign(fast - slow)``; when ``d != 0`` and ``d`` differs from the current direction the
  strategy *flips*: target = ``d * floor(notional / mid)`` units and it sends one market order for
  ``target - position``. The first entry counts as a flip.

The EMAs are written out in every engine (not the engines' indicator classes) with the same
floating-point operations in the same order, and every engine sees the same mid bit for bit, so
the decisions are identical and ``flip_count`` gives the exact number each must report. Fills
differ by construction and are not compared:

- nextick fills the order at the next quote (latency 0: a fill needs ``ts > decision ts``), at the
  touch, the whole size in one fill;
- NautilusTrader gets a 1 ns ``LatencyModel`` so its market order, like nextick's, reaches the
  matching engine with the next quote; its L1 matching fills the displayed size at the touch and
  the rest one tick worse, so one order usually gives two fills;
- hftbacktest's ``NoPartialFillExchange`` fills the whole market order at the touch of the book as
  of the decision (1 ns order latency: same quote), one fill per order.

Flips are therefore counted as decisions (orders sent), which agree exactly across engines; fills
are reported but differ.

Peers are an optional extra: ``pip install -e '.[bench-peers]'``. A peer function raises
:class:`PeerUnavailable` (an ImportError) when its package is missing.
"""

from __future__ import annotations

import functools
import importlib
import math
import time
from typing import Any

import msgspec
import numpy as np

from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE

INSTALL_HINT = "pip install -e '.[bench-peers]'"
DEFAULT_NOTIONAL = 1_000_000.0  # nextick's default: initial capital 1e6 over one instrument
_FAR_FUTURE_GAP_NS = 1 << 62  # no GAP reset inside nextick: the peers have no such notion


class PeerUnavailable(ImportError):
    """A peer engine's package is not installed."""


class PeerResult(msgspec.Struct, kw_only=True):
    """One engine over one quote array.

    ``wall_s``: from the quote array to the end of the run (data conversion, engine set-up, run,
    results), compile time excluded (hftbacktest: ``extra["compile_s"]``). ``run_s``: the engine's
    event loop alone (nextick: ``BacktestResult.core_s``; NautilusTrader: ``engine.run()``;
    hftbacktest: the jitted loop). ``quotes_per_s`` is ``quotes / run_s``; ``wall_quotes_per_s``
    is ``quotes / wall_s``. ``trades_or_flips``: flips (decisions that sent an order) for the EMA
    cross; 0 for quote-only runs. ``orders``/``fills`` as the engine counts them.
    """

    engine: str  # "nextick", "nextick (compiled Python)", "nautilus_trader", "hftbacktest"
    strategy: str  # "ema_cross" or "quote_only"
    quotes: int
    wall_s: float
    run_s: float
    quotes_per_s: float
    orders: int
    fills: int
    trades_or_flips: int
    notes: list[str] = msgspec.field(default_factory=list)
    version: str = ""  # the engine package's version
    extra: dict[str, float] = msgspec.field(default_factory=dict)  # compile_s, setup_s, events...

    @property
    def wall_quotes_per_s(self) -> float:
        return self.quotes / self.wall_s if self.wall_s > 0 else float("nan")


def _rate(n: int, s: float) -> float:
    return n / s if s > 0 else float("nan")


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PeerUnavailable(
            f"{package} is not installed ({e}); install the benchmark peers with: {INSTALL_HINT}"
        ) from e


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def peers_available() -> dict[str, bool]:
    """Which peer packages import here."""
    out = {}
    for module, package in (("nautilus_trader", "nautilus_trader"), ("hftbacktest", "hftbacktest")):
        try:
            _require(module, package)
            out[package] = True
        except PeerUnavailable:
            out[package] = False
    return out


def _one_instrument(quotes: np.ndarray) -> np.ndarray:
    quotes = np.ascontiguousarray(quotes, dtype=QUOTE_DTYPE)
    if len(quotes) == 0:
        raise ValueError("no quotes")
    inst = quotes["instrument"]
    if (inst != inst[0]).any():
        raise ValueError("peer benchmarks run one instrument: pass the quotes of a single instrument")
    if inst[0] != 0:
        quotes = quotes.copy()
        quotes["instrument"] = 0
    return quotes


def quote_mid(quotes: np.ndarray) -> np.ndarray:
    """The mid every engine computes: ``0.5 * (bid + ask)``."""
    return 0.5 * (quotes["bid_px"] + quotes["ask_px"])


def _decimals(px: np.ndarray, max_decimals: int = 9) -> int:
    """Fewest decimals d with round(px, d) == px for every price (the price grid of the data)."""
    for d in range(max_decimals + 1):
        if np.array_equal(np.round(px, d), px):
            return d
    return max_decimals


# -- the reference ------------------------------------------------------------------------------


def ema_cross_directions(mid: np.ndarray, fast_span: float, slow_span: float) -> np.ndarray:
    """sign(fast - slow) after each quote (0 at the first, where both EMAs start at the mid).

    The recursion runs in Python floats (IEEE doubles, one rounding per operation, no fused
    multiply-add), the arithmetic of the compiled core (built with -ffp-contract=off)."""
    a_f = 2.0 / (fast_span + 1.0)
    a_s = 2.0 / (slow_span + 1.0)
    m = np.asarray(mid, dtype=np.float64).tolist()
    d = np.zeros(len(m), np.int8)
    if not m:
        return d
    fast = slow = m[0]
    out = [0] * len(m)
    for k in range(1, len(m)):
        x = m[k]
        fast += a_f * (x - fast)
        slow += a_s * (x - slow)
        out[k] = 1 if fast > slow else (-1 if fast < slow else 0)
    d[:] = out
    return d


def flip_count(mid: np.ndarray, fast_span: float, slow_span: float) -> int:
    """The exact number of flips (the first entry included) the EMA-cross rule makes on ``mid``.

    Assumes one continuous stream: no state reset after the first quote (nextick resets at a
    session open or a gap; the peer runs use a 24x7 calendar and no gap limit, but a stream that
    crosses 00:00 UTC opens a new 24x7 session in nextick)."""
    d = ema_cross_directions(mid, fast_span, slow_span)
    nz = d[d != 0]
    if len(nz) == 0:
        return 0
    return int(1 + np.count_nonzero(nz[1:] != nz[:-1]))


# -- nextick ------------------------------------------------------------------------------------


def _nextick_table() -> InstrumentTable:
    return InstrumentTable([Instrument(symbol="PEER", calendar="24x7", gap_ns=_FAR_FUTURE_GAP_NS, warmup_ticks=0)])


def _nextick(quotes: np.ndarray, strategy: str, params: dict[str, float], label: str, *,
             compiled: Any = None) -> PeerResult:
    """``compiled``: a strategies.compiled.CompiledStrategy run instead of the built-in ``strategy``;
    its numba compilation happens before the timing (``extra["compile_s"]``)."""
    from engine.backtest import BacktestConfig, run_backtest
    from feeds.memory import ArraySource

    quotes = _one_instrument(quotes)
    config = BacktestConfig(
        strategy=strategy, strategy_params=params, interval="raw", fee_bps=0.0, fee_per_fill=0.0, warmup_ticks=0
    )
    extra: dict[str, float] = {}
    if compiled is not None and compiled.compiled:
        compiled.cfuncs()
        extra["compile_s"] = compiled.compile_s
    t0 = time.perf_counter()
    result = run_backtest(ArraySource(quotes, _nextick_table()), config, strategy=compiled)
    wall_s = time.perf_counter() - t0
    counters = result.counters
    resets = sum(counters["resets"].values())
    what = ("built-in strategy in the compiled loop" if compiled is None else
            f"Python strategy {'compiled by numba' if compiled.compiled else 'run uncompiled'}, called from the loop")
    notes = [
        (f"{what}; raw ticks (no conflation), fee 0, latency 0 "
         "(fills at the next quote, at the touch, whole size)"),
        "wall_s: ArraySource + run_backtest end to end (incl. metrics); run_s: the compiled loop (core_s)",
    ]
    if resets != 1:
        notes.append(f"{resets} state resets (expected 1, the session open): flip counts can differ from peers")
    orders = int(counters["orders"])
    return PeerResult(
        engine="nextick" if compiled is None else "nextick (compiled Python)",
        strategy=label,
        quotes=len(quotes),
        wall_s=wall_s,
        run_s=result.core_s,
        quotes_per_s=_rate(len(quotes), result.core_s),
        orders=orders,
        fills=len(result.fills),
        trades_or_flips=orders if label == "ema_cross" else 0,
        notes=notes,
        version=_version("nextick"),
        extra={"resets": float(resets), "round_trips": float(len(result.trades)),
               "run_backtest_wall_s": result.wall_s, **extra},
    )


def nextick_ema_cross(quotes: np.ndarray, fast_span: float = 20.0, slow_span: float = 100.0,
                      *, notional: float = DEFAULT_NOTIONAL) -> PeerResult:
    """Built-in ``momentum`` (the EMA cross), warm-up 0, raw ticks, no fees."""
    params = {"fast_span": float(fast_span), "slow_span": float(slow_span), "notional": float(notional)}
    return _nextick(quotes, "momentum", params, "ema_cross")


def nextick_compiled_ema_cross(quotes: np.ndarray, fast_span: float = 20.0, slow_span: float = 100.0,
                               *, notional: float = DEFAULT_NOTIONAL, compile: bool | None = None) -> PeerResult:
    """The EMA cross written in Python (strategies/ema_cross_compiled.py), compiled with numba and
    called from nextick's loop through a C function pointer: the same decisions and fills as
    ``nextick_ema_cross``. Compile time is excluded from run_s and wall_s (``extra["compile_s"]``)."""
    from strategies.ema_cross_compiled import ema_cross_compiled

    strategy = ema_cross_compiled(float(fast_span), float(slow_span), float(notional), compile=compile)
    return _nextick(quotes, "momentum", {}, "ema_cross", compiled=strategy)


def nextick_quote_only(quotes: np.ndarray) -> PeerResult:
    """Built-in ``none``: sessions, resets and marks per quote, never an order."""
    return _nextick(quotes, "none", {}, "quote_only")


# -- NautilusTrader -----------------------------------------------------------------------------


@functools.cache
def _nautilus_strategies() -> tuple[type, type]:
    """The Nautilus strategy classes, defined on first use so this module imports without Nautilus."""
    _require("nautilus_trader", "nautilus_trader")
    from nautilus_trader.config import StrategyConfig
    from nautilus_trader.model.enums import OrderSide, TimeInForce
    from nautilus_trader.model.objects import Quantity
    from nautilus_trader.trading.strategy import Strategy

    class EmaCrossConfig(StrategyConfig, frozen=True):
        instrument_id: str
        fast_span: float
        slow_span: float
        notional: float
        split_flips: bool = False

    class NextickEmaCross(Strategy):
        """The EMA cross of the mid on every quote tick, a market order on each flip."""

        def __init__(self, config: EmaCrossConfig) -> None:
            super().__init__(config)
            self.a_fast = 2.0 / (config.fast_span + 1.0)
            self.a_slow = 2.0 / (config.slow_span + 1.0)
            self.notional = config.notional
            self.split_flips = config.split_flips
            self.fast = self.slow = 0.0
            self.started = False
            self.direction = 0
            self.position = 0.0  # units, as ordered (market orders always fill here)
            self.flips = 0
            self.fill_events = 0
            self.quotes_seen = 0

        def on_start(self) -> None:
            from nautilus_trader.model.identifiers import InstrumentId

            self.iid = InstrumentId.from_str(self.config.instrument_id)
            self.subscribe_quote_ticks(self.iid)

        def on_quote_tick(self, tick) -> None:
            self.quotes_seen += 1
            mid = 0.5 * (tick.bid_price.as_double() + tick.ask_price.as_double())
            if not self.started:
                self.fast = self.slow = mid
                self.started = True
                return
            fast = self.fast + self.a_fast * (mid - self.fast)
            slow = self.slow + self.a_slow * (mid - self.slow)
            self.fast, self.slow = fast, slow
            d = 1 if fast > slow else (-1 if fast < slow else 0)
            if d != 0 and d != self.direction:
                self.direction = d
                self.flips += 1
                target = d * math.floor(self.notional / mid)
                if self.split_flips and self.position != 0 and target != 0:
                    self._market(-self.position)  # to flat, then the new side: two orders
                    self._market(target)
                elif target != self.position:
                    self._market(target - self.position)
                self.position = target

        def _market(self, qty: float) -> None:
            order = self.order_factory.market(
                instrument_id=self.iid,
                order_side=OrderSide.BUY if qty > 0 else OrderSide.SELL,
                quantity=Quantity.from_int(int(abs(qty))),
                time_in_force=TimeInForce.GTC,
            )
            self.submit_order(order)

        def on_order_filled(self, event) -> None:
            self.fill_events += 1

    class QuoteOnlyConfig(StrategyConfig, frozen=True):
        instrument_id: str

    class QuoteOnly(Strategy):
        """Subscribes to the quotes and counts them; no orders."""

        def __init__(self, config: QuoteOnlyConfig) -> None:
            super().__init__(config)
            self.quotes_seen = 0

        def on_start(self) -> None:
            from nautilus_trader.model.identifiers import InstrumentId

            self.subscribe_quote_ticks(InstrumentId.from_str(self.config.instrument_id))

        def on_quote_tick(self, tick) -> None:
            self.quotes_seen += 1

    NextickEmaCross.Config = EmaCrossConfig
    QuoteOnly.Config = QuoteOnlyConfig
    return NextickEmaCross, QuoteOnly


def _nautilus_engine(quotes: np.ndarray, *, next_tick_fills: bool, balance: float):
    """A BacktestEngine with one venue and one FX-style pair on the quotes' price grid, the quotes
    added as QuoteTicks. Returns (engine, instrument id string, set-up notes)."""
    from decimal import Decimal

    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.backtest.models import FillModel, LatencyModel
    from nautilus_trader.config import LoggingConfig, RiskEngineConfig
    from nautilus_trader.model.currencies import EUR, USD
    from nautilus_trader.model.data import QuoteTick
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import InstrumentId, Symbol, Venue
    from nautilus_trader.model.instruments import CurrencyPair
    from nautilus_trader.model.objects import Money, Price, Quantity

    price_prec = _decimals(np.concatenate([quotes["bid_px"], quotes["ask_px"]]))
    size_prec = _decimals(np.concatenate([quotes["bid_sz"], quotes["ask_sz"]]))
    engine = BacktestEngine(
        BacktestEngineConfig(
            trader_id="BENCH-001",
            logging=LoggingConfig(bypass_logging=True),
            risk_engine=RiskEngineConfig(bypass=False),
            run_analysis=False,
        )
    )
    venue = Venue("SIM")
    engine.add_venue(
        venue=venue,
        oms_type=OmsType.NETTING,
        account_type=AccountType.MARGIN,
        base_currency=USD,
        starting_balances=[Money(balance, USD)],
        fill_model=FillModel(prob_fill_on_limit=1.0, prob_fill_on_stop=1.0, prob_slippage=0.0, random_seed=1),
        latency_model=LatencyModel(base_latency_nanos=1) if next_tick_fills else None,
        bar_execution=False,
    )
    iid = InstrumentId(Symbol("EUR/USD"), venue)
    instrument = CurrencyPair(
        instrument_id=iid,
        raw_symbol=Symbol("EUR/USD"),
        base_currency=EUR,
        quote_currency=USD,
        price_precision=price_prec,
        size_precision=size_prec,
        price_increment=Price(10.0**-price_prec, price_prec),
        size_increment=Quantity(10.0**-size_prec, size_prec),
        ts_event=0,
        ts_init=0,
        max_quantity=Quantity.from_int(10**12),
        min_quantity=Quantity(10.0**-size_prec, size_prec),
        margin_init=Decimal(0),
        margin_maint=Decimal(0),
        maker_fee=Decimal(0),
        taker_fee=Decimal(0),
    )
    engine.add_instrument(instrument)
    ticks = QuoteTick.from_raw_arrays_to_list(
        iid,
        price_prec,
        size_prec,
        np.ascontiguousarray(quotes["bid_px"]),
        np.ascontiguousarray(quotes["ask_px"]),
        np.ascontiguousarray(quotes["bid_sz"]),
        np.ascontiguousarray(quotes["ask_sz"]),
        quotes["ts_event"].astype(np.uint64),
        quotes["ts_recv"].astype(np.uint64),
    )
    # The quotes are sorted by ts_recv (= ts_init) already: no re-sort of the list.
    engine.add_data(ticks, validate=True, sort=False)
    notes = [
        (f"CurrencyPair EUR/USD.SIM, price precision {price_prec}, size precision {size_prec}, fees 0, margin 0, "
         f"NETTING/MARGIN account of {balance:,.0f} USD; L1_MBP book from QuoteTicks (ts_init = ts_recv)"),
        "FillModel(prob_slippage=0, prob_fill_on_limit=1): no randomness on market orders",
        "LatencyModel(base 1 ns): the market order reaches the matching engine with the next quote, as in nextick"
        if next_tick_fills else "no latency model: the market order fills at the same quote",
        "logging bypassed, run_analysis=False, QuoteTicks added with sort=False (already sorted)",
    ]
    return engine, str(iid), notes


def _nautilus_run(quotes: np.ndarray, strategy_factory, label: str, *, next_tick_fills: bool, balance: float,
                  extra_notes: list[str]) -> PeerResult:
    _require("nautilus_trader", "nautilus_trader")
    quotes = _one_instrument(quotes)
    t0 = time.perf_counter()
    engine, iid, notes = _nautilus_engine(quotes, next_tick_fills=next_tick_fills, balance=balance)
    strategy = strategy_factory(iid)
    engine.add_strategy(strategy)
    t1 = time.perf_counter()
    engine.run()
    t2 = time.perf_counter()
    orders = engine.cache.orders_total_count()
    flips = getattr(strategy, "flips", 0)
    fills = getattr(strategy, "fill_events", 0)
    seen = strategy.quotes_seen
    engine.dispose()
    wall_s = time.perf_counter() - t0
    if seen != len(quotes):
        notes.append(f"the strategy saw {seen:,} of {len(quotes):,} quotes")
    notes += extra_notes
    notes.append("wall_s: QuoteTick objects + engine set-up + add_data + run + dispose; run_s: engine.run()")
    return PeerResult(
        engine="nautilus_trader",
        strategy=label,
        quotes=len(quotes),
        wall_s=wall_s,
        run_s=t2 - t1,
        quotes_per_s=_rate(len(quotes), t2 - t1),
        orders=int(orders),
        fills=int(fills),
        trades_or_flips=int(flips),
        notes=notes,
        version=_version("nautilus_trader"),
        extra={"setup_s": t1 - t0, "quotes_seen": float(seen)},
    )


def nautilus_ema_cross(quotes: np.ndarray, fast_span: float = 20.0, slow_span: float = 100.0,
                       *, notional: float = DEFAULT_NOTIONAL, next_tick_fills: bool = True) -> PeerResult:
    """NautilusTrader BacktestEngine, a Python Strategy with the same EMA cross on every quote tick.

    ``next_tick_fills=False`` drops the 1 ns latency model (fills at the same quote); the flips do
    not change."""
    _require("nautilus_trader", "nautilus_trader")
    ema_cls, _ = _nautilus_strategies()

    def factory(iid: str):
        return ema_cls(ema_cls.Config(instrument_id=iid, fast_span=float(fast_span), slow_span=float(slow_span),
                                      notional=float(notional)))

    return _nautilus_run(
        quotes, factory, "ema_cross", next_tick_fills=next_tick_fills, balance=1000.0 * notional,
        extra_notes=[("EMAs written in the Strategy (init at the first mid, alpha 2/(span+1)), mid from "
                      "Price.as_double(); orders counted as flips; a market order larger than the displayed "
                      "size fills in two parts (L1 book: the rest one tick worse)")],
    )


def nautilus_quote_only(quotes: np.ndarray) -> PeerResult:
    """NautilusTrader BacktestEngine, a Strategy that only subscribes to the quotes (counts them)."""
    _require("nautilus_trader", "nautilus_trader")
    _, quote_cls = _nautilus_strategies()
    return _nautilus_run(
        quotes, lambda iid: quote_cls(quote_cls.Config(instrument_id=iid)), "quote_only",
        next_tick_fills=True, balance=1e9, extra_notes=["on_quote_tick only counts the quote"],
    )


# -- hftbacktest --------------------------------------------------------------------------------


def hftbacktest_events(quotes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """BBO quotes as hftbacktest L2 depth events.

    Per quote: for each side, the new level (price, size) and, when the price moved, a zero-size
    update deleting the previous level (the book is L2: a level stays until deleted). All of a
    quote's events share its timestamps (exch_ts = ts_event, local_ts = ts_recv), so
    ``wait_next_feed`` returns once per quote with the whole BBO applied. A local-only end marker
    follows the last quote. Returns (events, notes)."""
    hbt = _require("hftbacktest", "hftbacktest")
    notes = []
    n = len(quotes)
    exch_ts = quotes["ts_event"].astype(np.int64)
    local_ts = quotes["ts_recv"].astype(np.int64)
    if (np.diff(exch_ts) < 0).any() or (exch_ts > local_ts).any():
        notes.append("ts_event not monotonic or after ts_recv: exch_ts set to ts_recv")
        exch_ts = local_ts
    dup = int(np.count_nonzero(np.diff(local_ts) == 0))
    if dup:
        notes.append(f"{dup} quotes share a ts_recv with the previous one: hftbacktest sees them as one feed event")
    bid, ask = quotes["bid_px"], quotes["ask_px"]
    bid_moved = np.zeros(n, bool)
    ask_moved = np.zeros(n, bool)
    bid_moved[1:] = bid[1:] != bid[:-1]
    ask_moved[1:] = ask[1:] != ask[:-1]
    prev_bid = np.empty(n)
    prev_ask = np.empty(n)
    prev_bid[0], prev_ask[0] = bid[0], ask[0]
    prev_bid[1:], prev_ask[1:] = bid[:-1], ask[:-1]

    base = hbt.DEPTH_EVENT | hbt.EXCH_EVENT | hbt.LOCAL_EVENT
    buy, sell = np.uint64(base | hbt.BUY_EVENT), np.uint64(base | hbt.SELL_EVENT)
    # Four slots per quote: one side's new level then the delete of its old level (kept only where
    # the price moved), then the other side's. Adding before deleting keeps a best level on the
    # book, so the depth never scans far for the next best; the ask side goes first when the new
    # bid reaches the old ask (and the bid side otherwise), so the book is never crossed.
    ask_first = np.zeros(n, bool)
    ask_first[1:] = bid[1:] >= ask[:-1]
    zero = np.zeros(n)
    side_ev = (np.where(ask_first, sell, buy), np.where(ask_first, buy, sell))
    side_px = (np.where(ask_first, ask, bid), np.where(ask_first, bid, ask))
    side_old = (np.where(ask_first, prev_ask, prev_bid), np.where(ask_first, prev_bid, prev_ask))
    side_qty = (np.where(ask_first, quotes["ask_sz"], quotes["bid_sz"]),
                np.where(ask_first, quotes["bid_sz"], quotes["ask_sz"]))
    side_moved = (np.where(ask_first, ask_moved, bid_moved), np.where(ask_first, bid_moved, ask_moved))
    keep = np.stack([np.ones(n, bool), side_moved[0], np.ones(n, bool), side_moved[1]], axis=1).ravel()
    m = int(np.count_nonzero(keep))
    ev = np.zeros(m + 1, hbt.binding.event_dtype)
    ev["ev"][:m] = np.stack([side_ev[0], side_ev[0], side_ev[1], side_ev[1]], axis=1).ravel()[keep]
    ev["exch_ts"][:m] = np.repeat(exch_ts, 4)[keep]
    ev["local_ts"][:m] = np.repeat(local_ts, 4)[keep]
    ev["px"][:m] = np.stack([side_px[0], side_old[0], side_px[1], side_old[1]], axis=1).ravel()[keep]
    ev["qty"][:m] = np.stack([side_qty[0], zero, side_qty[1], zero], axis=1).ravel()[keep]
    # wait_next_feed answers "end of data" (not "feed") when the feed it just applied was the last
    # event: a trailing local-only trade event (ignored: no trade buffer) lets the loop see the last
    # quote like every other.
    ev["ev"][m] = hbt.TRADE_EVENT | hbt.LOCAL_EVENT
    ev["exch_ts"][m] = ev["local_ts"][m] = local_ts[-1] + 1
    return ev, notes


_HBT_LOOPS: dict[str, Any] = {}


def _hbt_loops() -> dict[str, Any]:
    """The numba-jitted strategy loops (compiled on first call with a backtester)."""
    if _HBT_LOOPS:
        return _HBT_LOOPS
    _require("hftbacktest", "hftbacktest")
    numba = _require("numba", "numba (an hftbacktest dependency)")
    from hftbacktest.order import GTC, MARKET

    @numba.njit(cache=False)
    def ema_cross_loop(hbt, a_fast, a_slow, notional, inv_tick, timeout):
        # Returns (feeds, flips, orders, status): status 1 at the end of the data, else the
        # unexpected wait_next_feed code (0 = timeout: not with this timeout). Prices are
        # tick / (1 / tick_size): on a decimal grid that is the same double as the quote's price,
        # so the mid matches nextick's bit for bit.
        fast = 0.0
        slow = 0.0
        started = False
        direction = 0
        position = 0.0
        feeds = 0
        flips = 0
        order_id = 0
        while True:
            r = hbt.wait_next_feed(False, timeout)
            if r != 2:
                return feeds, flips, order_id, r
            depth = hbt.depth(0)
            bid = depth.best_bid_tick / inv_tick
            ask = depth.best_ask_tick / inv_tick
            mid = 0.5 * (bid + ask)
            feeds += 1
            if not started:
                fast = mid
                slow = mid
                started = True
                continue
            fast += a_fast * (mid - fast)
            slow += a_slow * (mid - slow)
            d = 1 if fast > slow else (-1 if fast < slow else 0)
            if d != 0 and d != direction:
                direction = d
                flips += 1
                target = d * np.floor(notional / mid)
                qty = target - position
                if qty != 0.0:
                    order_id += 1
                    if qty > 0:
                        hbt.submit_buy_order(0, order_id, ask, qty, GTC, MARKET, False)
                    else:
                        hbt.submit_sell_order(0, order_id, bid, -qty, GTC, MARKET, False)
                    position = target
                    hbt.clear_inactive_orders(0)

    @numba.njit(cache=False)
    def quote_only_loop(hbt, inv_tick, timeout):
        # Returns (feeds, sum of mids: kept so the reads are not optimized away, status).
        feeds = 0
        acc = 0.0
        while True:
            r = hbt.wait_next_feed(False, timeout)
            if r != 2:
                return feeds, acc, r
            depth = hbt.depth(0)
            acc += 0.5 * (depth.best_bid_tick / inv_tick + depth.best_ask_tick / inv_tick)
            feeds += 1

    _HBT_LOOPS["ema_cross"] = ema_cross_loop
    _HBT_LOOPS["quote_only"] = quote_only_loop
    return _HBT_LOOPS


def _hbt_backtest(events: np.ndarray, tick_size: float, lot_size: float, depth: str):
    """One asset over ``events``. hftbacktest keeps a raw pointer to the array, not a copy: the
    caller must hold ``events`` until the backtester is closed."""
    hbt = _require("hftbacktest", "hftbacktest")
    asset = (
        hbt.BacktestAsset()
        .data(events)
        .linear_asset(1.0)
        .constant_order_latency(1, 1)
        .risk_adverse_queue_model()
        .no_partial_fill_exchange()
        .trading_value_fee_model(0.0, 0.0)
        .tick_size(tick_size)
        .lot_size(lot_size)
        .last_trades_capacity(0)
    )
    if depth == "roivec":
        px = events["px"][events["qty"] > 0]
        asset = asset.roi_lb(float(px.min()) - 1000 * tick_size).roi_ub(float(px.max()) + 1000 * tick_size)
        return hbt.ROIVectorMarketDepthBacktest([asset])
    if depth != "hashmap":
        raise ValueError(f"depth must be 'hashmap' or 'roivec', not {depth!r}")
    return hbt.HashMapMarketDepthBacktest([asset])


_HBT_COMPILE_S: dict[tuple[str, str], float] = {}  # (loop, depth) -> seconds its compilation took


def hftbacktest_warm_up(strategy: str = "ema_cross", depth: str = "roivec") -> float:
    """Compile hftbacktest's jitted loop (and the jitclass methods this module calls from Python)
    on a tiny input, once per process; returns the seconds that took (the first time)."""
    _require("hftbacktest", "hftbacktest")
    key = (strategy, depth)
    if key not in _HBT_COMPILE_S:
        from bench.quotes import random_walk_quotes

        t = time.perf_counter()
        q, _ = random_walk_quotes(200, 1)
        loop = _hbt_loops()[strategy]
        events = hftbacktest_events(q)[0]  # must outlive the backtester (see _hbt_backtest)
        warm = _hbt_backtest(events, 0.01, 1.0, depth)
        loop(warm, 0.1, 0.02, 1e6, 100.0, 1 << 60) if strategy == "ema_cross" else loop(warm, 100.0, 1 << 60)
        warm.state_values(0)  # jitclass methods called from Python compile on first use too
        warm.close()
        del events
        _HBT_COMPILE_S[key] = time.perf_counter() - t
    return _HBT_COMPILE_S[key]


def _hbt_run(quotes: np.ndarray, label: str, args: tuple, depth: str) -> tuple[tuple, dict[str, float], list[str], float, float]:
    """Build the events and the backtester, run the jitted loop; returns (loop result, extra, notes,
    wall_s, run_s). Compiles first if needed (``hftbacktest_warm_up``), outside the timings."""
    quotes = _one_instrument(quotes)
    px = np.concatenate([quotes["bid_px"], quotes["ask_px"]])
    decimals = _decimals(px)
    tick_size = 10.0**-decimals
    inv_tick = float(10**decimals)
    # A level whose size rounds to 0 lots is a delete in hftbacktest: the lot is the sizes' grid.
    lot_size = 10.0 ** -_decimals(np.concatenate([quotes["bid_sz"], quotes["ask_sz"]]))
    pre_notes = []
    if not np.array_equal(np.round(px * inv_tick) / inv_tick, px):
        pre_notes.append(f"prices are not on a {tick_size:g} grid: hftbacktest sees them rounded to ticks")
    if depth == "roivec" and (px.max() - px.min()) * inv_tick > 50_000_000:
        pre_notes.append("price range too wide for a ROI vector: hashmap depth instead")
        depth = "hashmap"
    loop = _hbt_loops()[label]
    timeout = 1 << 60  # wait for the next feed however long the gap
    extra: dict[str, float] = {"compile_s": hftbacktest_warm_up(label, depth)}
    t0 = time.perf_counter()
    events, notes = hftbacktest_events(quotes)
    t1 = time.perf_counter()
    bt = _hbt_backtest(events, tick_size, lot_size, depth)
    t2 = time.perf_counter()
    out = loop(bt, *args, inv_tick, timeout) if label == "ema_cross" else loop(bt, inv_tick, timeout)
    t3 = time.perf_counter()
    extra["num_trades"] = float(bt.state_values(0).num_trades) if label == "ema_cross" else 0.0
    bt.close()  # before `events` goes (hftbacktest reads it in place)
    wall_s = time.perf_counter() - t0
    extra.update(events=float(len(events) - 1), events_s=t1 - t0, build_s=t2 - t1, feeds=float(out[0]))
    notes = pre_notes + notes + [
        (f"{depth} market depth; tick {tick_size:g}, lot {lot_size:g}; linear asset; fees 0; "
         "NoPartialFillExchange, RiskAdverseQueueModel; constant order latency 1 ns entry / 1 ns response"),
        (f"{len(events) - 1:,} depth events for {len(quotes):,} BBO updates (level deletes when a price moves), "
         "plus one local-only end marker"),
        ("wall_s: event array + asset/backtester build + jitted loop (compile excluded: extra.compile_s, "
         "once per process); run_s: the jitted loop"),
    ]
    if out[-1] != 1:
        raise RuntimeError(f"hftbacktest wait_next_feed answered {out[-1]} after {out[0]:,} feed events")
    if out[0] != len(quotes):
        notes.append(f"the loop saw {out[0]:,} feed events for {len(quotes):,} quotes")
    return out, extra, notes, wall_s, t3 - t2


def hftbacktest_ema_cross(quotes: np.ndarray, fast_span: float = 20.0, slow_span: float = 100.0,
                          *, notional: float = DEFAULT_NOTIONAL, depth: str = "roivec") -> PeerResult:
    """hftbacktest 2.x: the BBO stream as L2 depth events, a numba loop that reads the best bid/ask
    on every feed event and sends a market order on each flip. ``depth``: "roivec" (the faster
    here) or "hashmap"."""
    _require("hftbacktest", "hftbacktest")
    args = (2.0 / (fast_span + 1.0), 2.0 / (slow_span + 1.0), float(notional))
    (_feeds, flips, orders, _), extra, notes, wall_s, run_s = _hbt_run(quotes, "ema_cross", args, depth)
    notes.append("market orders (GTC) fill whole at the touch of the exchange-side book at decision + 1 ns "
                 "(the same quote): fill prices differ from nextick, decisions do not")
    return PeerResult(
        engine="hftbacktest",
        strategy="ema_cross",
        quotes=len(quotes),
        wall_s=wall_s,
        run_s=run_s,
        quotes_per_s=_rate(len(quotes), run_s),
        orders=int(orders),
        fills=int(extra["num_trades"]),
        trades_or_flips=int(flips),
        notes=notes,
        version=_version("hftbacktest"),
        extra=extra,
    )


def hftbacktest_quote_only(quotes: np.ndarray, *, depth: str = "roivec") -> PeerResult:
    """hftbacktest 2.x: the numba loop reads the best bid/ask on every feed event, no orders."""
    _require("hftbacktest", "hftbacktest")
    _, extra, notes, wall_s, run_s = _hbt_run(quotes, "quote_only", (), depth)
    return PeerResult(
        engine="hftbacktest",
        strategy="quote_only",
        quotes=len(quotes),
        wall_s=wall_s,
        run_s=run_s,
        quotes_per_s=_rate(len(quotes), run_s),
        orders=0,
        fills=0,
        trades_or_flips=0,
        notes=notes,
        version=_version("hftbacktest"),
        extra=extra,
    )


def check_flips(results: list[PeerResult], expected: int, rel_tol: float = 0.01) -> list[str]:
    """The EMA-cross results whose flip count is off ``expected`` by more than ``rel_tol``."""
    bad = []
    for r in results:
        if r.strategy == "ema_cross" and abs(r.trades_or_flips - expected) > rel_tol * max(expected, 1):
            bad.append(f"{r.engine}: {r.trades_or_flips:,} flips, expected {expected:,}")
    return bad
