"""Options -> configuration: the quote source and the ``BacktestConfig`` a set of named options describes.

The command line parses its flags into these options and takes its defaults from here; a sweep
builds one mapping per configuration and calls the same functions, without argparse:

    source = quote_source({"seed": 3, "alpha_strength": 2.0})
    config = backtest_config({"strategy": "momentum", "params": {"fast_span": 20}, "fee_bps": 0.5})

Option names are the command line's flags without the dashes (``--fee-bps`` is ``fee_bps``; the
repeatable ``--param key=value`` is ``params``, a dict). Durations are in seconds where the flag
says ``_s``. An unknown name, a value of the wrong type or out of range is a ``ValueError`` that
names the option.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from engine.backtest import INTERVALS_NS, BacktestConfig, load_strategy
from engine.domain.instrument import Instrument
from engine.domain.latency_model import parse_spec
from engine.domain.source import QuoteSource
from engine.domain.timestamps import SECOND_NS, UNITS, seconds_ns
from engine.domain.validate import ValidationPolicy
from feeds.catalog import DEFAULT_BUDGET
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies.builtin import builtin_spec, is_builtin

# The defaults below are read off the objects the options configure, so they cannot drift apart.
_CONFIG = BacktestConfig()
_INSTRUMENT = Instrument(symbol="DEFAULTS")
_SYNTHETIC = SyntheticConfig()

FILE_VENUE = "FILE"  # venue of a --data file's instruments unless --venue says otherwise
FILE_CALENDAR = "24x7"  # calendar of a --data file's instruments unless --calendar says otherwise
RAW_LOT_SIZE = 0.001  # raw venue recordings are crypto: fractional lots
SYNTHETIC_START = _SYNTHETIC.start
SYNTHETIC_CALENDAR = _SYNTHETIC.calendar


class SourceOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the quotes come from: the synthetic market (no ``data``, ``catalog`` or ``raw_paths``), one
    file (``data``), a catalog (``catalog``) or raw recordings (``raw_paths``)."""

    # One file.
    data: Path | None = None
    columns: str | None = None  # "ts=col,bid=col,..."; None: inferred from the header
    symbol: str | None = None
    no_header: bool = False
    ts_unit: str = "auto"
    ts_format: str | None = None
    tz: str = "UTC"
    policy: str = "quarantine"
    # Instruments learned from files and recordings.
    venue: str | None = None  # None: FILE_VENUE for a file, from the file names for raw recordings
    tick_size: float = _INSTRUMENT.tick_size
    lot_size: float | None = None  # None: the Instrument default for a file, RAW_LOT_SIZE for raw recordings
    calendar: str | None = None  # None: FILE_CALENDAR for a file, SYNTHETIC_CALENDAR for the synthetic market
    gap_s: float = _INSTRUMENT.gap_ns / SECOND_NS
    # The synthetic market.
    seed: int = _SYNTHETIC.seed
    n_instruments: int = _SYNTHETIC.n_instruments
    n_sessions: int = _SYNTHETIC.n_sessions
    quote_rate_hz: float = _SYNTHETIC.quote_rate_hz
    alpha_strength: float = _SYNTHETIC.alpha_strength
    correlation: float = _SYNTHETIC.correlation  # share of diffusive variance from the market factor
    n_sectors: int = _SYNTHETIC.n_sectors
    sector_correlation: float = _SYNTHETIC.sector_correlation
    beta_range: tuple[float, float] = _SYNTHETIC.beta_range
    drift_bps_per_hour: tuple[float, float] = _SYNTHETIC.drift_bps_per_hour
    start: str | None = None  # first synthetic date (None: SYNTHETIC_START), or a catalog replay's start
    # A catalog.
    catalog: Path | None = None
    instruments: str | list[str] | None = None  # "BTCUSDT,binance-usdm:ETHUSDT" or a list; None: all
    end: str | None = None
    memory_mb: float = DEFAULT_BUDGET / (1 << 20)
    # Any source, thinned to each instrument's last quote per bar of this many seconds (feeds.bars).
    resample_s: float | None = None
    # Raw recordings.
    raw_paths: list[Path] | None = None

    @property
    def synthetic(self) -> bool:
        return self.data is None and self.catalog is None and not self.raw_paths


class RunOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How one backtest runs over the quotes: strategy, execution and metrics."""

    strategy: str = _CONFIG.strategy
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    model: str | None = _CONFIG.model
    backend: str = _CONFIG.backend
    mc_samples: int = _CONFIG.mc_samples
    mc_variant: int | None = _CONFIG.mc_variant
    mc_seed: int = _CONFIG.mc_seed
    interval: str = _CONFIG.interval
    latency_ns: int = _CONFIG.latency_ns
    feed_latency: str | None = _CONFIG.feed_latency  # a latency model spec (engine.domain.latency_model)
    order_latency: str | None = _CONFIG.order_latency
    latency_seed: int = _CONFIG.latency_seed
    feed_hold_s: float = _CONFIG.feed_hold_ns / SECOND_NS  # how long the restamped feed holds rows back
    fee_bps: float = _CONFIG.fee_bps
    maker_fee_bps: float | None = _CONFIG.maker_fee_bps
    queue: str = _CONFIG.queue
    fee_per_fill: float = _CONFIG.fee_per_fill
    size_cap: bool = _CONFIG.size_cap
    cancel_remainder: bool = _CONFIG.cancel_remainder
    flatten_at_close: bool = _CONFIG.flatten_at_close
    flatten_lead_s: float = _CONFIG.flatten_lead_ns / SECOND_NS
    capital: float = _CONFIG.initial_capital
    bar_s: float = _CONFIG.bar_ns / SECOND_NS
    risk_free_rate: float = _CONFIG.risk_free_rate
    warmup_ticks: int | None = _CONFIG.warmup_ticks


SOURCE_OPTIONS: tuple[str, ...] = SourceOptions.__struct_fields__
RUN_OPTIONS: tuple[str, ...] = RunOptions.__struct_fields__

# How the command line spells an option whose flag is not its name with dashes.
_FLAGS = {"params": "--param", "raw_paths": "FILE (positional)"}


def option_label(name: str) -> str:
    """``fee_bps (--fee-bps)``: what an error calls an option, for mapping and command-line users alike."""
    return f"{name} ({_FLAGS.get(name, '--' + name.replace('_', '-'))})"


def _fail(name: str, what: str) -> ValueError:
    return ValueError(f"option {option_label(name)}: {what}")


# -- mapping -> options ----------------------------------------------------------------------------

_T = TypeVar("_T", SourceOptions, RunOptions)
_AT_FIELD = re.compile(r"^(?P<what>.*) - at `\$\.(?P<name>\w+)(?P<rest>[^`]*)`$")


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise NotImplementedError


def _convert(values: _T | Mapping[str, Any], cls: type[_T]) -> _T:
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise TypeError(f"{cls.__name__}: give a mapping of option names to values, not {type(values).__name__}")
    known = cls.__struct_fields__
    for name in values:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"unknown option {name!r}{hint} ({cls.__name__} has: {', '.join(known)})")
    try:
        return msgspec.convert(dict(values), cls, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        m = _AT_FIELD.match(str(e))
        if m is None:
            raise ValueError(f"{cls.__name__}: {e}") from None
        what = m["what"][0].lower() + m["what"][1:]
        raise _fail(m["name"], what + (f" at {m['rest']}" if m["rest"] else "")) from None


def source_options(values: SourceOptions | Mapping[str, Any]) -> SourceOptions:
    """``values`` as checked ``SourceOptions``; a mapping may name any subset of the options."""
    o = _convert(values, SourceOptions)
    given = [name for name in ("data", "catalog", "raw_paths") if getattr(o, name)]
    if len(given) > 1:
        raise _fail(given[1], f"give one of data, catalog and raw_paths, not {' and '.join(given)}")
    if o.ts_unit != "auto" and o.ts_unit not in UNITS:
        raise _fail("ts_unit", f"{o.ts_unit!r} is not one of auto, {', '.join(UNITS)}")
    if not o.tick_size > 0:
        raise _fail("tick_size", f"must be > 0, got {o.tick_size}")
    if o.lot_size is not None and not o.lot_size > 0:
        raise _fail("lot_size", f"must be > 0, got {o.lot_size}")
    if not o.gap_s > 0:
        raise _fail("gap_s", f"must be > 0 seconds, got {o.gap_s}")
    if not o.memory_mb > 0:
        raise _fail("memory_mb", f"must be > 0 MiB, got {o.memory_mb}")
    return o


def run_options(values: RunOptions | Mapping[str, Any]) -> RunOptions:
    """``values`` as checked ``RunOptions``; a mapping may name any subset of the options."""
    o = _convert(values, RunOptions)
    if o.interval not in INTERVALS_NS:
        raise _fail("interval", f"{o.interval!r} is not one of {', '.join(INTERVALS_NS)}")
    if o.latency_ns < 0:
        raise _fail("latency_ns", f"must be >= 0, got {o.latency_ns}")
    for name in ("feed_latency", "order_latency"):
        if getattr(o, name) is not None:
            try:
                parse_spec(getattr(o, name))
            except ValueError as e:
                raise _fail(name, str(e)) from None
    if not o.feed_hold_s >= 0:
        raise _fail("feed_hold_s", f"must be >= 0 seconds, got {o.feed_hold_s}")
    if not o.capital > 0:
        raise _fail("capital", f"must be > 0, got {o.capital}")
    if seconds_ns(o.bar_s) < 1:
        raise _fail("bar_s", f"must be at least 1 ns, got {o.bar_s} s")
    if not o.flatten_lead_s >= 0:
        raise _fail("flatten_lead_s", f"must be >= 0 seconds, got {o.flatten_lead_s}")
    if o.warmup_ticks is not None and o.warmup_ticks < 0:
        raise _fail("warmup_ticks", f"must be >= 0, got {o.warmup_ticks}")
    return o


# -- options -> configuration ----------------------------------------------------------------------


def backtest_config(options: RunOptions | Mapping[str, Any]) -> BacktestConfig:
    """The ``BacktestConfig`` the run options describe."""
    o = run_options(options)
    return BacktestConfig(
        strategy=o.strategy,
        strategy_params=dict(o.params),
        interval=o.interval,
        latency_ns=o.latency_ns,
        feed_latency=o.feed_latency,
        order_latency=o.order_latency,
        latency_seed=o.latency_seed,
        feed_hold_ns=seconds_ns(o.feed_hold_s),
        fee_bps=o.fee_bps,
        maker_fee_bps=o.maker_fee_bps,
        queue=o.queue,
        fee_per_fill=o.fee_per_fill,
        size_cap=o.size_cap,
        cancel_remainder=o.cancel_remainder,
        flatten_at_close=o.flatten_at_close,
        flatten_lead_ns=seconds_ns(o.flatten_lead_s),
        initial_capital=o.capital,
        bar_ns=seconds_ns(o.bar_s),
        risk_free_rate=o.risk_free_rate,
        warmup_ticks=o.warmup_ticks,
        model=o.model,
        backend=o.backend,
        mc_samples=o.mc_samples,
        mc_variant=o.mc_variant,
        mc_seed=o.mc_seed,
    )


def check_strategy(options: RunOptions | Mapping[str, Any]) -> None:
    """Raise now, before any data is read, if the strategy is unknown or its parameters are wrong
    (a Python strategy is imported and constructed once to find out)."""
    o = run_options(options)
    if is_builtin(o.strategy):
        builtin_spec(o.strategy, o.params)
    else:
        load_strategy(o.strategy, o.params)


def quote_source(options: SourceOptions | Mapping[str, Any], *, horizon_s: float | None = None) -> QuoteSource:
    """The quote source the options describe. ``horizon_s`` sets the synthetic market's oracle horizon
    (it changes only the exposed expected returns, not the quotes)."""
    o = source_options(options)
    if o.catalog is not None:
        source = _catalog_source(o)
    elif o.raw_paths:
        source = _raw_source(o)
    elif o.data is not None:
        source = _file_source(o)
    else:
        source = synthetic_market(o, horizon_s=horizon_s)
    if o.resample_s is None:
        return source
    from feeds.bars import BarSource

    return BarSource(source, o.resample_s)


def synthetic_market(options: SourceOptions | Mapping[str, Any], *, horizon_s: float | None = None) -> SyntheticMarket:
    o = source_options(options)
    extra = {} if horizon_s is None else {"horizon_s": horizon_s}
    return SyntheticMarket(
        SyntheticConfig(
            **extra,
            n_instruments=o.n_instruments,
            n_sessions=o.n_sessions,
            calendar=o.calendar or SYNTHETIC_CALENDAR,
            seed=o.seed,
            quote_rate_hz=o.quote_rate_hz,
            alpha_strength=o.alpha_strength,
            start=o.start or SYNTHETIC_START,
            correlation=o.correlation,
            n_sectors=o.n_sectors,
            sector_correlation=o.sector_correlation,
            beta_range=tuple(o.beta_range),
            drift_bps_per_hour=tuple(o.drift_bps_per_hour),
        )
    )


def _catalog_source(o: SourceOptions) -> QuoteSource:
    from feeds.catalog import Catalog

    if not o.catalog.exists():
        raise _fail("catalog", f"{o.catalog}: no such folder; make one with `nextick ingest`")
    names = o.instruments
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",") if s.strip()]
    return Catalog(o.catalog).source(names or None, o.start, o.end, memory_budget_bytes=int(o.memory_mb * (1 << 20)))


def _raw_source(o: SourceOptions) -> QuoteSource:
    from feeds.raw_replay import RawReplay

    return RawReplay(
        o.raw_paths,
        o.venue,
        instrument_defaults={
            "tick_size": o.tick_size,
            "lot_size": RAW_LOT_SIZE if o.lot_size is None else o.lot_size,
            "gap_ns": seconds_ns(o.gap_s),
        },
        policy=ValidationPolicy.parse(o.policy),
    )


def _file_source(o: SourceOptions) -> QuoteSource:
    from feeds.replay import ColumnMap, FileReplay

    if not o.data.exists():
        raise _fail("data", f"{o.data}: no such file")
    template = Instrument(
        symbol=o.symbol or "TEMPLATE",
        venue=o.venue or FILE_VENUE,
        tick_size=o.tick_size,
        lot_size=_INSTRUMENT.lot_size if o.lot_size is None else o.lot_size,
        calendar=o.calendar or FILE_CALENDAR,
        gap_ns=seconds_ns(o.gap_s),
    )
    return FileReplay(
        o.data,
        columns=ColumnMap.parse(o.columns) if o.columns else None,
        template=template,
        symbol=o.symbol,
        ts_unit=o.ts_unit,
        ts_format=o.ts_format,
        tz=o.tz,
        has_header=not o.no_header,
        policy=ValidationPolicy.parse(o.policy),
    )
