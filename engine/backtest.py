"""Backtest orchestration: a quote source through the conflator into the compiled tick loop.

    source.chunks() -> [Conflator] -> Backtester.run / run_batched / run_portfolio -> fills, trades, resets, equity

Everything per tick happens in C++ (csrc/backtester.hpp). This module keeps the core in step with
what the stream reveals (instruments as they appear, session intervals as time advances), times the
run, and gathers the results.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine import _core
from engine.domain.calendar import SessionCalendar
from engine.domain.instrument import InstrumentTable
from engine.domain.latency_model import FEED_STREAM, ORDER_STREAM, LatencyDistribution, parse_spec, stream_seed
from engine.domain.quote import QUOTE_DTYPE
from engine.domain.source import QuoteSource, SourceStats
from engine.domain.timestamps import DAY_NS, SECOND_NS, local_date
from engine.metrics import JobsonKorkie, Metrics, compute_metrics, jobson_korkie_memmel
from engine.mid_trace import MidTrace
from feeds.restamp import DEFAULT_HOLD_NS, FeedLatencySource, latency_from_spec
from strategies.base import BatchHost, Strategy
from strategies.builtin import BUILTINS, builtin_spec, is_builtin
from strategies.compiled import CompiledStrategy
from strategies.events import EventRelay, overridden_callbacks
from strategies.orders import EVENT_DTYPE
from strategies.portfolio import PortfolioHost, PortfolioStrategy

INTERVALS_NS: dict[str, int | None] = {"raw": None, "100ms": 100_000_000, "1s": SECOND_NS}
RESET_REASONS: tuple[str, ...] = tuple(_core.RESET_REASONS)
# A Python strategy: per tick batch (Strategy), for the whole book (PortfolioStrategy), or per tick
# inside the compiled loop (CompiledStrategy).
AnyStrategy = Strategy | PortfolioStrategy | CompiledStrategy


class BacktestConfig(msgspec.Struct, kw_only=True):
    """How to run. Times in ns, fees in basis points of notional."""

    strategy: str = "momentum"  # a built-in name, or "package.module:Class" for a Python strategy
    strategy_params: dict[str, Any] = msgspec.field(default_factory=dict)
    interval: str = "1s"  # conflation: "100ms", "1s" or "raw"
    latency_ns: int = 0  # decision to order-active delay
    fee_bps: float = 1.0  # taking liquidity: market orders, limits that cross on arrival, triggered stops
    maker_fee_bps: float | None = None  # resting limit fills; None: fee_bps
    queue: str = "through"  # resting limits fill on a trade-through of their price, or also on a "touch"
    fee_per_fill: float = 0.0
    size_cap: bool = False
    cancel_remainder: bool = False
    flatten_at_close: bool = False
    flatten_lead_ns: int = 60 * SECOND_NS
    initial_capital: float = 1_000_000.0
    bar_ns: int = 60 * SECOND_NS  # equity sampling period for metrics
    risk_free_rate: float = 0.0
    warmup_ticks: int | None = None  # overrides every instrument's warm-up when set
    manual_resets: list[tuple[int, str]] = msgspec.field(default_factory=list)  # (ts_ns, symbol)
    # SSM weights (engine.model.weights). None: the packaged default when the strategy needs a
    # model (ssm_threshold), no model otherwise. A Python strategy given a model sees batch.pred_mid.
    model: str | None = None
    # What runs the model (engine.model.backend): "cpu" is the compiled C++ kernel.
    backend: str = "cpu"
    # MC dropout (engine/model/dropout.py; a model trained with dropout). mc_samples = N: every
    # instrument steps as N seeded dropout variants in the same batched kernel call, strategies see
    # the mean pred_mid and its std across them (pred_std). mc_variant = v: the whole run uses
    # variant v alone, one thinned network (a study backtests each variant on its own).
    mc_samples: int = 0
    mc_variant: int | None = None
    mc_seed: int = 0
    # Latency models (engine.domain.latency_model specs: "const:5ms", "lognormal:2ms,0.5",
    # "empirical:PATH", "jitter:PATH"). feed_latency redraws every quote's ts_recv from ts_event
    # (feeds.restamp); order_latency draws each order's delay instead of latency_ns. latency_seed
    # seeds both (separate streams). None: no model, as before. feed_hold_ns: how long the restamped
    # stream holds rows back to put them in their new order; a row whose recorded delay exceeds it
    # may arrive behind one already out, and is clamped and counted (feeds.restamp).
    feed_latency: str | None = None
    order_latency: str | None = None
    latency_seed: int = 0
    feed_hold_ns: int = DEFAULT_HOLD_NS

    def __post_init__(self) -> None:
        if self.interval not in INTERVALS_NS:
            raise ValueError(f"interval must be one of {', '.join(INTERVALS_NS)}, not {self.interval!r}")
        if self.latency_ns < 0:
            raise ValueError("latency_ns must be >= 0")
        if self.queue not in ("through", "touch"):
            raise ValueError(f"queue must be 'through' or 'touch', not {self.queue!r}")
        if self.mc_samples < 0 or self.mc_samples == 1:
            raise ValueError(f"mc_samples must be 0 (off) or >= 2 variants, got {self.mc_samples}")
        if self.mc_variant is not None and (self.mc_variant < 0 or self.mc_samples):
            raise ValueError("mc_variant must be >= 0 and excludes mc_samples: run one variant, or N together")
        for spec in (self.feed_latency, self.order_latency):
            if spec is not None:
                parse_spec(spec)
        if self.feed_hold_ns < 0:
            raise ValueError(f"feed_hold_ns must be >= 0, got {self.feed_hold_ns}")

    @property
    def mc_dropout(self) -> bool:
        return self.mc_samples > 0 or self.mc_variant is not None


class BacktestResult(msgspec.Struct, kw_only=True):
    config: BacktestConfig
    instruments: list[str]
    source: SourceStats
    strategy: str
    fills: np.ndarray
    trades: np.ndarray
    resets: np.ndarray
    equity_ts_ns: np.ndarray
    equity: np.ndarray
    gross_exposure: np.ndarray
    counters: dict[str, Any]
    outside_session: np.ndarray  # ticks outside session, per instrument
    final_positions: np.ndarray
    metrics: Metrics
    quotes_in: int  # quotes from the source
    ticks: int  # ticks into the engine after conflation
    wall_s: float  # whole run: source, conflation, loop
    core_s: float  # inside the compiled loop (and the Python strategy, if any)
    ruined_at_ns: int | None = None  # first equity sample <= 0; metrics stop before it
    model: str | None = None  # the model file that fed the signal, if any
    day_basis: str = "UTC dates"  # what a day of the daily metrics is (trading_day_starts)
    # With run_backtest(record_mids=True): each instrument's mid, decimated (engine.mid_trace,
    # MID_DTYPE): every stride-th tick, the fill ticks and the last one; mid_ticks and mid_stride
    # per instrument say how. For the report's charts. None when not recorded.
    mids: np.ndarray | None = None
    mid_ticks: np.ndarray | None = None
    mid_stride: np.ndarray | None = None
    final_marks: np.ndarray = msgspec.field(default_factory=lambda: np.empty(0))  # the mid each position is valued at
    # The latency models that ran (latency_summary): {"order": ..., "feed": ... or None}.
    latency: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def quotes_per_s(self) -> float:
        return self.quotes_in / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def core_ticks_per_s(self) -> float:
        return self.ticks / self.core_s if self.core_s > 0 else float("nan")

    def returns(self) -> np.ndarray:
        e = self.equity
        return e[1:] / e[:-1] - 1.0 if len(e) > 1 else np.empty(0)

    def fill_hash(self) -> str:
        """SHA-256 of the fills table: equal hashes mean bit-identical fills."""
        return hashlib.sha256(np.ascontiguousarray(self.fills).tobytes()).hexdigest()

    def resets_by_reason(self) -> dict[str, int]:
        return dict(self.counters["resets"])


def load_strategy(spec: str, params: dict[str, Any]) -> AnyStrategy:
    """Instantiate a Python strategy (a Strategy or a PortfolioStrategy) from "package.module:Class"
    with ``params`` as keywords."""
    module_name, _, cls_name = spec.partition(":")
    if not cls_name:
        raise ValueError(
            f"strategy {spec!r} is neither a built-in ({', '.join(BUILTINS)}) nor 'package.module:Class'"
        )
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load strategy {spec!r}: {e}") from None
    strategy = cls(**params)
    if not isinstance(strategy, (Strategy, PortfolioStrategy, CompiledStrategy)):
        raise TypeError(
            f"{spec} is not a strategies.base.Strategy, strategies.portfolio.PortfolioStrategy or "
            "strategies.compiled.CompiledStrategy"
        )
    return strategy


class Engine:
    """The core plus the bookkeeping that keeps it in step with a growing stream.

    ``run_backtest`` is the usual entry point; benchmarks drive an Engine directly to time the tick
    loop alone, without the source and conflator.
    """

    def __init__(self, config: BacktestConfig, instruments: InstrumentTable, strategy: AnyStrategy | None, *,
                 model_backend: Any = None, record: bool = False) -> None:
        """``model_backend``: a backend object to step instead of building ``config.backend`` (a
        ReplayBackend of a recorded run, say); the model file still gives the normalizer. ``record``:
        load the model even if the strategy needs none and record every step call (``recording``)."""
        c = config
        self.model_backend = model_backend
        self.record = record
        self.recording: Any = None  # the RecordingBackend of a run with record=True
        self.config = c
        self.instruments = instruments
        self.core = _core.Backtester(
            latency_ns=c.latency_ns,
            fee_bps=c.fee_bps,
            fee_per_fill=c.fee_per_fill,
            size_cap=c.size_cap,
            cancel_remainder=c.cancel_remainder,
            flatten_at_close=c.flatten_at_close,
            flatten_lead_ns=c.flatten_lead_ns,
            initial_capital=c.initial_capital,
            bar_ns=c.bar_ns,
            maker_fee_bps=math.nan if c.maker_fee_bps is None else c.maker_fee_bps,
            queue=c.queue,
        )
        self.strategy = strategy
        self.host: BatchHost | PortfolioHost | None = None
        self.relay: EventRelay | None = None
        if isinstance(strategy, PortfolioStrategy):
            self.host = PortfolioHost(strategy, instruments)
        elif isinstance(strategy, Strategy):
            self.host = BatchHost(strategy, len(instruments))
        if isinstance(strategy, (Strategy, PortfolioStrategy)):
            self.relay = EventRelay(strategy)
            # The core records events only for a strategy that listens.
            events = self.relay.events if overridden_callbacks(strategy) else self.relay.events[:0]
            self.core.set_host_buffers(self.relay.requests, np.asarray(events).view(EVENT_DTYPE), self.relay)
        self.started = False
        self.covered_hi_ns: list[int] = []
        self.calendars: list[SessionCalendar] = []
        self.core_s = 0.0
        self.model = None  # engine.model.weights.ModelFile once loaded
        # Sessions are handed to the core up to the newest tick plus this much. A live run looks a
        # day ahead so the calendar is not recomputed on every small batch.
        self.session_lookahead_ns = 0
        # Order k of instrument i waits draw(i, k) of the order-latency model instead of latency_ns
        # (csrc/latency.hpp, the same draw as engine/domain/latency_model.py).
        self.order_latency: LatencyDistribution | None = None
        if c.order_latency is not None:
            self.order_latency = latency_from_spec(c.order_latency)
            self.core.set_order_latency(self.order_latency.quantiles_ns, stream_seed(c.latency_seed, ORDER_STREAM))

    def _load_model(self, needed: bool) -> None:
        if self.config.model is None and not needed:
            return
        from engine.model.backend import make_backend
        from engine.model.weights import load_model

        m = load_model(self.config.model)
        if m.signal.interval != self.config.interval:
            raise ValueError(
                f"{m.path} was trained on {m.signal.interval} ticks; this run uses --interval {self.config.interval}. "
                "Use the model's interval or train one for this interval."
            )
        norm = m.normalizer
        variants = max(self.config.mc_samples, 1)
        if self.model_backend is not None:
            backend = self.model_backend
        else:
            backend = make_backend(self.config.backend, m, max(len(self.instruments), 1) * variants)
            if self.config.mc_dropout:
                self._set_dropout(backend, m)
        if self.record:
            backend = self.recording = _core.RecordingBackend(backend)
        self.core.set_model(
            backend,
            mean=np.asarray(norm.mean),
            std=np.asarray(norm.std),
            target_mean=norm.target_mean,
            target_std=norm.target_std,
            variants=variants,
        )
        self.model = m

    def _set_dropout(self, backend, m) -> None:
        from engine.model.dropout import dropout_masks, head_dropout_masks
        from engine.model.zoo_config import ZooConfig

        c = self.config
        zoo = isinstance(m.config, ZooConfig)
        if not hasattr(backend, "set_dropout_masks") or (not zoo and c.backend != "cpu"):
            raise ValueError(
                f"MC dropout (mc_samples / mc_variant) runs on the cpu backend for the SSM (its residual masks are "
                f"in the C++ kernel) and on onnxruntime for the zoo's models; not on --backend {c.backend} for "
                f"{m.config.kind}"
            )
        n, first = (1, c.mc_variant) if c.mc_variant is not None else (c.mc_samples, 0)
        if zoo:  # the zoo's last dropout, before its head
            rate = float(m.training.get("train_config", {}).get("dropout", 0.0))
            masks = head_dropout_masks(m.config.d_model, n, c.mc_seed, rate, first=first)
        else:
            masks = dropout_masks(m.config, n, c.mc_seed, first=first)
        backend.set_dropout_masks(masks)

    def _start(self) -> None:
        n = max(len(self.instruments), 1)
        spec = None if self.strategy is not None else builtin_spec(self.config.strategy, self.config.strategy_params)
        self._load_model(needed=self.record or self.model_backend is not None or (spec is not None and spec.needs_model))
        if isinstance(self.strategy, CompiledStrategy):
            self.strategy.bind(self.core, self.instruments, initial_capital=self.config.initial_capital)
        elif self.strategy is not None:
            self.core.set_python_strategy()
            if isinstance(self.host, PortfolioHost):
                self.core.set_rebalance_ns(int(self.strategy.rebalance_ns))
            self.strategy.on_start(self.instruments, initial_capital=self.config.initial_capital)
        else:
            assert spec is not None
            params = spec.params()
            if math.isnan(params["notional"]):  # not given: the initial capital split evenly
                params["notional"] = self.config.initial_capital / n
            self.core.set_strategy(spec.kind, params)
        self.started = True

    def _sync_instruments(self) -> None:
        for idx in range(self.core.n_instruments, len(self.instruments)):
            inst = self.instruments[idx]
            warmup = inst.warmup_ticks if self.config.warmup_ticks is None else self.config.warmup_ticks
            self.core.add_instrument(lot_size=inst.lot_size, gap_ns=inst.gap_ns, warmup_ticks=warmup)
            self.calendars.append(SessionCalendar.parse(inst.calendar))
            self.covered_hi_ns.append(-1)
            for at_ns, symbol in self.config.manual_resets:
                if symbol == inst.symbol:
                    self.core.request_reset(idx, at_ns)
        if self.host is not None:
            self.host.grow(len(self.instruments))

    def _sync_sessions(self, lo_ns: int, hi_ns: int) -> None:
        by_calendar: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        for idx, cal in enumerate(self.calendars):
            covered = self.covered_hi_ns[idx]
            if hi_ns <= covered:
                continue
            start = lo_ns if covered < 0 else covered
            key = (cal.spec, start)
            if key not in by_calendar:
                by_calendar[key] = cal.sessions_between(start, hi_ns)
            opens, closes = by_calendar[key]
            self.core.add_sessions(idx, opens, closes)
            self.covered_hi_ns[idx] = hi_ns

    def prepare(self) -> None:
        """Instruments into the core and the strategy (and model) set up; ``run`` does it on first use."""
        self._sync_instruments()
        if not self.started:
            self._start()

    def resume_at(self, at_ns: int) -> None:
        """A restarted live run picks up at ``at_ns``: each instrument's session open then counts as
        already open, so its first tick resets for the reconnect, not as a session open."""
        self.prepare()
        self._sync_sessions(at_ns - 8 * DAY_NS, at_ns + self.session_lookahead_ns)
        for i in range(len(self.instruments)):
            self.core.resume_session(i, at_ns)

    def run(self, ticks: np.ndarray) -> None:
        if len(ticks) == 0:
            return
        self.prepare()
        ts = ticks["ts_recv"]
        hi = int(ts[-1])
        if not self.covered_hi_ns or hi > min(self.covered_hi_ns):
            self._sync_sessions(int(ts[0]), hi + self.session_lookahead_ns)
        t0 = time.perf_counter()
        host = self.host
        if host is None:  # a built-in or a compiled strategy
            self.core.run(ticks)
            if isinstance(self.strategy, CompiledStrategy):
                self.strategy.check()  # compiled code cannot raise through the core: it records, this raises
        elif isinstance(host, PortfolioHost):
            self.core.run_portfolio(ticks, host.buffer, host.book, host.targets, host)
        else:
            self.core.run_batched(ticks, host.buffer, host)
        self.core_s += time.perf_counter() - t0


def stream_ticks(source: QuoteSource, interval: str) -> Iterator[tuple[int, np.ndarray]]:
    """What the engine's loop consumes: per source chunk, (quotes read, ticks out of the
    conflator); at the end, (0, the conflator's last snapshots)."""
    interval_ns = INTERVALS_NS[interval]
    conflator = _core.Conflator(interval_ns) if interval_ns else None
    for chunk in source.chunks():
        chunk = np.ascontiguousarray(chunk, dtype=QUOTE_DTYPE)
        yield len(chunk), (conflator.push(chunk) if conflator is not None else chunk)
    if conflator is not None:
        yield 0, conflator.flush()


def whole_batches(stream: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    """``stream`` with each chunk's last timestamp held back until the next chunk, so a tick batch is
    never split by where a chunk happens to end. A portfolio strategy decides for every instrument
    at once: split, the first part's decision would see the second part's instruments at their
    previous marks, and fills would depend on the chunking."""
    held = np.empty(0, QUOTE_DTYPE)
    for n_quotes, ticks in stream:
        if len(held):
            # Not np.concatenate: it promotes the aligned record dtype to a packed one the core refuses.
            joined = np.empty(len(held) + len(ticks), QUOTE_DTYPE)
            joined[: len(held)], joined[len(held) :] = held, ticks
            ticks = joined
        if len(ticks) == 0:
            yield n_quotes, ticks
            continue
        ts = ticks["ts_recv"]
        cut = int(np.searchsorted(ts, ts[-1], side="left"))
        held = ticks[cut:]
        yield n_quotes, ticks[:cut]
    yield 0, held


def with_feed_latency(source: QuoteSource, config: BacktestConfig) -> QuoteSource:
    """``source`` with its receive times redrawn from ``config.feed_latency`` (feeds.restamp), if set."""
    if config.feed_latency is None:
        return source
    dist = latency_from_spec(config.feed_latency)
    return FeedLatencySource(source, dist, stream_seed(config.latency_seed, FEED_STREAM), hold_ns=config.feed_hold_ns)


def record_predictions(source: QuoteSource, config: BacktestConfig, *, tap: bool = False):
    """Every model step of a run over ``source`` under ``config`` (its model, backend, interval,
    resets and MC-dropout settings; its strategy does not matter: the model sees the same ticks
    whatever the orders): the tape that ``run_backtest(..., model_backend=ReplayBackend(tape))``
    replays into any number of strategy configurations without stepping the model again. With
    ``tap``, also every in-session tick as the signal saw it (the core's feature tap: ts, mid,
    pred_mid, pred_std, reset, ...): returns ``(tape, tap)``."""
    config = msgspec.structs.replace(config, strategy="none", strategy_params={})
    source = with_feed_latency(source, config)
    engine = Engine(config, source.instruments, None, record=True)
    engine.core.set_tap(tap)
    taps = []
    for _, ticks in stream_ticks(source, config.interval):
        engine.run(ticks)
        if tap:
            taps.append(engine.core.take_tap())
    engine.core.finish()
    if engine.recording is None:  # no tick ever started the engine
        raise ValueError("record_predictions: the source had no ticks; nothing to record")
    if not tap:
        return engine.recording.tape()
    return engine.recording.tape(), np.concatenate(taps) if taps else engine.core.take_tap()


def save_tape(path: str | Path, tape: _core.PredictionTape) -> Path:
    """A prediction tape as a .npz of its arrays (no pickle: a data file loads as data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, n_features=np.int64(tape.n_features), counts=tape.counts, slots=tape.slots, out=tape.out)
    tmp.replace(path)  # whole or absent: a worker never reads half a tape
    return path


def load_tape(path: str | Path) -> _core.PredictionTape:
    try:
        with np.load(path, allow_pickle=False) as z:
            return _core.PredictionTape(int(z["n_features"]), z["counts"], z["slots"], z["out"])
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a prediction tape ({e}); record it again (record_predictions)") from None


def run_backtest(
    source: QuoteSource,
    config: BacktestConfig | None = None,
    *,
    strategy: AnyStrategy | None = None,
    on_progress: Callable[[int], None] | None = None,
    model_backend: Any = None,
    record_mids: bool = False,
) -> BacktestResult:
    """Replay ``source`` through the engine. ``strategy`` (a Python Strategy or PortfolioStrategy)
    overrides ``config.strategy``; otherwise a name that is not a built-in is imported as module:Class.
    ``model_backend`` steps instead of ``config.backend`` (see ``Engine``). ``record_mids`` keeps a
    decimated trace of each instrument's mid (``result.mids``) for the report; it is off by default
    because it passes over every tick in numpy, which costs about as much again as the compiled
    loop itself."""
    config = config or BacktestConfig()
    source = with_feed_latency(source, config)
    if strategy is None and not is_builtin(config.strategy):
        strategy = load_strategy(config.strategy, config.strategy_params)
    strategy_name = strategy.name if strategy is not None else config.strategy
    engine = Engine(config, source.instruments, strategy, model_backend=model_backend)

    t0 = time.perf_counter()
    quotes_in = ticks = 0
    stream = stream_ticks(source, config.interval)
    if isinstance(strategy, PortfolioStrategy):
        stream = whole_batches(stream)
    trace = MidTrace() if record_mids else None
    for n_quotes, out in stream:
        quotes_in += n_quotes
        ticks += len(out)
        if trace is None:
            engine.run(out)
        else:
            n_fills = engine.core.n_fills
            engine.run(out)
            trace.push(out, engine.core.fills_since(n_fills))
        if on_progress is not None and n_quotes:
            on_progress(n_quotes)
    core = engine.core
    core.finish()
    if isinstance(strategy, CompiledStrategy):
        strategy.check()  # on_event calls made by finish (orders cancelled at the end)
    unknown = {sym for _, sym in config.manual_resets} - set(source.instruments.symbols)
    if unknown:
        raise ValueError(f"manual_resets name symbols the source never had: {', '.join(sorted(unknown))}")
    wall_s = time.perf_counter() - t0

    fills, trades = core.fills(), core.trades()
    eq_ts, eq, gross = core.equity_curve()
    if len(eq) == 0:  # no tick at all: a flat curve of one point
        eq_ts, eq, gross = np.zeros(1, np.int64), np.array([config.initial_capital]), np.zeros(1)
    # Returns are undefined once equity is gone: metrics cover the run up to the last positive
    # sample, and the result says when capital ran out instead of hiding it.
    ruined = np.flatnonzero(eq <= 0)
    ruined_at_ns = int(eq_ts[ruined[0]]) if len(ruined) else None
    solvent = slice(0, int(ruined[0]) if len(ruined) else len(eq))
    day_starts_ns, day_basis = trading_day_starts(engine.calendars, eq_ts)
    metrics = compute_metrics(
        eq_ts[solvent],
        eq[solvent],
        gross_exposure=gross[solvent],
        fill_notional=np.abs(fills["px"] * fills["sz"]),
        fill_fee=fills["fee"],
        trade_pnl=trades["pnl"],
        risk_free_rate=config.risk_free_rate,
        day_starts_ns=day_starts_ns,
    )
    return BacktestResult(
        config=config,
        instruments=source.instruments.symbols,
        source=source.stats,
        strategy=strategy_name,
        fills=fills,
        trades=trades,
        resets=core.resets(),
        equity_ts_ns=eq_ts,
        equity=eq,
        gross_exposure=gross,
        counters=core.counters(),
        outside_session=core.outside_session_by_instrument(),
        final_positions=core.positions(),
        metrics=metrics,
        quotes_in=quotes_in,
        ticks=ticks,
        wall_s=wall_s,
        core_s=engine.core_s,
        ruined_at_ns=ruined_at_ns,
        model=engine.model.path if engine.model is not None else None,
        day_basis=day_basis,
        mids=trace.mids() if trace is not None else None,
        mid_ticks=trace.ticks if trace is not None else None,
        mid_stride=trace.stride if trace is not None else None,
        final_marks=core.marks(),
        latency=latency_summary(engine, source),
    )


def latency_summary(engine: Engine, source: QuoteSource) -> dict[str, Any]:
    """Which latency models ran: the order delay (constant latency_ns, or a distribution with its
    seed) and the feed restamping (None, or its model, seed and counts)."""
    c = engine.config
    order: dict[str, Any] = {"model": "constant", "latency_ns": c.latency_ns}
    if engine.order_latency is not None:
        order = {**engine.order_latency.summary(), "seed": c.latency_seed}
    feed = None
    if isinstance(source, FeedLatencySource):
        feed = {**source.dist.summary(), "seed": c.latency_seed, **source.restamp}
    return {"order": order, "feed": feed}


def trading_day_starts(calendars: list[SessionCalendar], ts_ns: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Where the run's days begin, for the daily metrics, and what a day is, in words.

    Instruments that share a calendar: its session opens, so a day is a session and the time until
    the next open (a CME or FX day starts at its 17:00 open, not at midnight UTC; a 24x7 day is the
    UTC date). Calendars that differ: UTC dates, since one market's session is no day of another.
    """
    if not len(ts_ns):
        return None, "UTC dates"
    starts, _, basis = trading_days(calendars, int(ts_ns[0]), int(ts_ns[-1]))
    return starts, basis


def trading_days(calendars: list[SessionCalendar], lo_ns: int, hi_ns: int) -> tuple[np.ndarray | None, list[str], str]:
    """The days of ``[lo_ns, hi_ns]`` as ``trading_day_starts`` cuts them: (their starts, a date naming
    each, what a day is). A session is named by the local date on which it closes (a CME or FX day
    that opens at 17:00 is the next day's, as the exchange calls it). None and no names for UTC dates:
    ``engine.metrics.daily_return_days`` numbers those days since the epoch."""
    if len({cal.spec for cal in calendars}) == 1:
        cal = calendars[0]
        opens, closes = cal.sessions_between(lo_ns, hi_ns)
        if len(opens):
            names = [local_date(int(c) - 1, cal.tz).isoformat() for c in closes]
            return opens, names, f"{cal.spec} sessions, open to next open"
    return None, [], "UTC dates"


def compare(a: BacktestResult, b: BacktestResult) -> JobsonKorkie:
    """Memmel-corrected Jobson-Korkie test of two runs' Sharpe ratios on their common bars."""
    common, ia, ib = np.intersect1d(a.equity_ts_ns, b.equity_ts_ns, assume_unique=True, return_indices=True)
    ea, eb = a.equity[ia], b.equity[ib]
    return jobson_korkie_memmel(ea[1:] / ea[:-1] - 1.0, eb[1:] / eb[:-1] - 1.0)
