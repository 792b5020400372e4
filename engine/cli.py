"""The ``nextick`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.backtest import INTERVALS_NS
from engine.compare import FIVE_WAY_FEE_BPS, MONTH_S
from engine.domain.instrument import Instrument
from engine.domain.latency_model import SPEC_HELP as LATENCY_SPEC_HELP
from engine.domain.timestamps import SECOND_NS, UNITS
from engine.model.zoo_config import ZOO_HEADS, ZOO_KINDS, ZOO_WINDOW
from engine.options import (
    FILE_CALENDAR,
    FILE_VENUE,
    RAW_LOT_SIZE,
    RUN_OPTIONS,
    SOURCE_OPTIONS,
    SYNTHETIC_CALENDAR,
    SYNTHETIC_START,
    RunOptions,
    SourceOptions,
)
from engine.sweep import RANKABLE, SweepSpec

DESCRIPTION = """\
nextick: a low-latency streaming trading engine. Quotes stream through a conflator into per-instrument
state, strategies decide on each tick, and a simulator fills orders at the next tick's quotes.
"""

BACKTEST_EPILOG = """\
examples:
  nextick backtest                                   synthetic market, momentum baseline
  nextick backtest --strategy mean_reversion --compare momentum --out runs/mr
  nextick backtest --data ../shared/data/fx/dukascopy_EURUSD_2019-02-04_48h.csv.gz \\
      --columns ts=ts_ms_utc,bid=bid,ask=ask,bid_sz=bid_volume,ask_sz=ask_volume,symbol=symbol \\
      --tick-size 0.00001 --lot-size 1000 --calendar FX --capital 100000
  nextick backtest --strategy strategies.ema_cross:EmaCross --param fast_span=60 --param slow_span=240
  nextick backtest --strategy strategies.equal_weight:EqualWeight --param rebalance_s=600

  nextick backtest --strategy ssm --compare momentum --oracle --alpha-strength 3     (make demo)

Strategies: momentum, mean_reversion, buy_hold, ssm (= ssm_threshold: the packaged SSM model or
--model FILE), none (built into the C++ loop), or any Python class
"package.module:Class" subclassing strategies.base.Strategy (per tick batch) or
strategies.portfolio.PortfolioStrategy (every instrument at once, at each batch or on a rebalance
clock); --param values go to its constructor.
Fills happen at the first tick of the same instrument strictly after decision time + --latency-ns:
buys at the ask, sells at the bid.
"""


COMPARE_EPILOG = """\
examples:
  nextick compare --strategy momentum --strategy mean_reversion --param momentum.fast_span=20
  nextick compare --five-way --rebalance-s 86400 --n-instruments 20 --n-sectors 4 --sector-correlation 0.3 \\
      --drift-bps-per-hour=-1,2 --n-sessions 60 --quote-rate-hz 0.2 --interval 1s --out runs/five
  nextick compare --strategy ew=strategies.allocation.rebalance:Allocation --param ew.allocator=equal_weight \\
      --strategy bh=buy_hold --catalog cat --resample-s 1800 --warmup-ticks 0

JK: z[row][col] > 0 means the row's daily Sharpe ratio is the higher; * marks p < 0.05 (two-sided).
"""


SWEEP_EPILOG = """\
examples:
  nextick sweep --grid fee_bps=0.5,1,2 --grid params.fast_span=10,20,40 --out runs/sweep
  nextick sweep --strategy mean_reversion --random params.entry_z=uniform:1:3 --random params.span=int:20:200 \\
      --n 50 --random-seed 1 --workers 2
  nextick sweep --catalog cat --instruments BTCUSDT --grid latency_ns=0,1000000 --test-from 2024-01-20
  nextick sweep --spec runs/sweep/sweep.json --out runs/again --ray local      the same sweep, on Ray

An axis names a strategy or execution option as --help lists it, without the dashes, or a strategy
parameter as params.KEY. The data options (--seed, --data, --catalog, ...) are not axes: the data is
read once. results.parquet's metrics are the validation period's; sweep.json has the chosen
configuration's test figures.
"""


TRAIN_EPILOG = """\
examples:
  nextick train --out runs/ssm                         synthetic market, 1 s ticks, horizon 10
  nextick train --data quotes.parquet --calendar XNYS --horizon 30 --out runs/spy
  nextick backtest --strategy ssm --model runs/ssm/model.safetensors --compare momentum
  nextick train --kind lstm --dropout 0.1 --out runs/lstm                writes runs/lstm/model.onnx
  nextick backtest --strategy ssm --model runs/lstm/model.onnx --backend onnxruntime
  nextick train --kind gru --walk-forward --train-days 5 --refit-days 2 --n-sessions 20 --out runs/wf

Kinds: mamba2 and s4d (the SSM: model.safetensors, any backend), lstm, gru, mlp (over the last --window
ticks) and transformer (causal, over the last --window ticks): model.onnx, the step graph with its
weights, normalizer and config, run with --backend onnxruntime. Every kind trains on the same features,
splits and target, and writes the same report.

The packaged default model is made by the command in README.md ("Default model").
"""


SIM_EPILOG = """\
fault schedule: comma-separated name[:arg][xcount]@seconds[/venue] items, e.g.
  close@30                 drop every connection without a close frame (clients see 1006)
  stall:10@60              no data for 10 s while pings continue (clients go STALE)
  nopong:15@70             stop answering pings for 15 s
  reject:503x3@90          refuse the next 3 upgrades with HTTP 503 (also 429)
  malformed:5@100          5 broken frames;  gap:3@110  skip 3 update ids;  dup:2@120  repeat a frame
  shutdown@130             the venue's restart notice, then a normal close
"""

INGEST_EPILOG = """\
examples:
  nextick ingest ../shared/data/tardis ../shared/data/fx ../shared/data/databento --catalog cat
  nextick ingest BTCUSDT-bookTicker-2024-01-*.zip --catalog cat
  nextick backtest --catalog cat --instruments BTCUSDT,ETHUSDT --start 2024-01-02 --end 2024-01-05
"""

EXPORT_EPILOG = """\
examples:
  nextick export --format onnx --model runs/ssm/model.safetensors        writes runs/ssm/model.onnx
  nextick backtest --strategy ssm --model runs/ssm/model.safetensors --backend onnxruntime
"""

PAPER_EPILOG = """\
examples:
  nextick paper                                              the local simulator, ssm on 1 s ticks
  nextick paper --strategy momentum --interval raw --duration 60
  nextick paper --sim-faults close@20,stall:12@40,gap:2@60 --duration 90    watch it recover
  nextick paper --live --venue binance-usdm --symbols BTCUSDT,ETHUSDT --strategy ssm --interval 1s
  nextick reconcile runs/paper
"""


REPORT_EPILOG = """\
examples:
  nextick backtest --strategy ssm --compare momentum --out runs/demo
  nextick report runs/demo                              writes runs/demo/report.html
  nextick report runs/demo --out demo.html --open
"""


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param wants key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _pair(flag: str):
    """argparse type for ``LO,HI``: two floats."""

    def parse(text: str) -> tuple[float, float]:
        try:
            lo, hi = (float(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} wants LO,HI (two numbers), got {text!r}") from None
        return lo, hi

    return parse


class _ParamsAction(argparse.Action):
    """Repeated ``--param key=value`` into one dict (a new one: the default is never changed)."""

    def __call__(self, parser, namespace, value, option_string=None):
        key, item = value
        setattr(namespace, self.dest, {**getattr(namespace, self.dest), key: item})


def _add_params_arg(group) -> None:
    group.add_argument("--param", dest="params", type=_param, action=_ParamsAction, default=RunOptions().params,
                       metavar="KEY=VALUE", help="strategy parameter (repeatable), e.g. fast_span=20")


def _options(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The options ``names`` this command's parser has, by the same names."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """Data, instrument and synthetic-market options: the same for every command that reads quotes.
    Names and defaults are engine.options.SourceOptions'."""
    d = SourceOptions()
    src = p.add_argument_group("data (default: the synthetic market)")
    src.add_argument("--data", type=Path, metavar="FILE", help="CSV (.csv, .csv.gz) or Parquet file of quotes")
    src.add_argument(
        "--columns",
        metavar="MAP",
        help="column map key=column,...; keys: ts (receive time), ts_event, bid, ask, bid_sz, ask_sz, symbol, seq. "
        "Default: inferred from the header",
    )
    src.add_argument("--symbol", help="instrument name when the file has no symbol column (default: file name)")
    src.add_argument("--no-header", action="store_true", help="the file has no header row; --columns uses 0-based positions")
    src.add_argument("--ts-unit", default=d.ts_unit, choices=["auto", *UNITS], help="epoch timestamp unit (default: detect)")
    src.add_argument("--ts-format", metavar="FMT", help='text timestamps, strptime format, e.g. "%%Y%%m%%d %%H%%M%%S%%f"')
    src.add_argument("--tz", default=d.tz, help=f"time zone of text timestamps (IANA name, default {d.tz})")
    src.add_argument("--policy", default=d.policy, metavar="POLICY",
                     help="bad rows: 'quarantine' (count and skip, default), 'reject' (stop with file:line), "
                     "or per rule, e.g. crossed=reject,duplicate=quarantine")
    inst = p.add_argument_group("instruments (file data)")
    inst.add_argument("--venue", default=d.venue, help=f"venue name recorded with the instruments (default {FILE_VENUE})")
    inst.add_argument("--tick-size", type=float, default=d.tick_size, help=f"price increment (default {d.tick_size:g})")
    inst.add_argument("--lot-size", type=float, default=d.lot_size,
                      help=f"size increment; positions are whole lots (default {Instrument(symbol='X').lot_size:g})")
    inst.add_argument("--calendar", default=d.calendar,
                      help=f"session calendar: 24x7, XNYS, CME, FX or 'HH:MM-HH:MM Zone Days' (default: {FILE_CALENDAR} for "
                      f"files, {SYNTHETIC_CALENDAR} (NYSE hours, no holidays) for the synthetic market)")
    inst.add_argument("--gap-s", type=float, default=d.gap_s,
                      help=f"silence inside a session that resets state (default {d.gap_s:g} s)")
    inst.add_argument("--warmup-ticks", type=int, default=RunOptions().warmup_ticks,
                      help="ticks after a reset before positions may open, for every instrument "
                      f"(default: {Instrument(symbol='X').warmup_ticks})")
    syn = p.add_argument_group("synthetic market")
    syn.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    syn.add_argument("--n-instruments", type=int, default=d.n_instruments, help=f"number of instruments (default {d.n_instruments})")
    syn.add_argument("--n-sessions", type=int, default=d.n_sessions, help=f"number of sessions (default {d.n_sessions})")
    syn.add_argument("--quote-rate-hz", type=float, default=d.quote_rate_hz,
                     help=f"mean quotes per second per instrument (default {d.quote_rate_hz:g})")
    syn.add_argument("--alpha-strength", type=float, default=d.alpha_strength,
                     help=f"strength of the planted predictable component (default {d.alpha_strength:g})")
    syn.add_argument("--correlation", type=float, default=d.correlation,
                     help=f"share of each instrument's diffusive variance from the market factor (default {d.correlation:g})")
    syn.add_argument("--n-sectors", type=int, default=d.n_sectors,
                     help="sector factors: instrument i is in sector i %% N (default 0: one market factor only)")
    syn.add_argument("--sector-correlation", type=float, default=d.sector_correlation,
                     help="share of diffusive variance from the sector factor; needs --n-sectors (default 0)")
    syn.add_argument("--beta-range", type=_pair("--beta-range"), default=d.beta_range, metavar="LO,HI",
                     help="per-instrument market beta, uniform over LO..HI (default 1,1)")
    syn.add_argument("--drift-bps-per-hour", type=_pair("--drift-bps-per-hour"), default=d.drift_bps_per_hour,
                     metavar="LO,HI", help="per-instrument drift of the fair value per trading hour, uniform (default 0,0)")
    syn.add_argument("--start", default=d.start,
                     help=f"first date: of the synthetic sessions (default {SYNTHETIC_START}), or of a --catalog replay")
    cat = p.add_argument_group("catalog (`nextick ingest` output)")
    cat.add_argument("--catalog", type=Path, metavar="DIR", help="replay quotes from this Parquet catalog")
    cat.add_argument("--instruments", metavar="LIST",
                     help="comma-separated symbols or venue:symbol (default: every instrument in the catalog)")
    cat.add_argument("--end", default=d.end, help="last date (inclusive) or datetime (exclusive) of a --catalog replay")
    p.add_argument("--resample-s", type=float, default=d.resample_s, metavar="SECONDS",
                   help="replay each instrument's last quote per bar of SECONDS (1 .. 86400), bars anchored at session "
                   "opens; for daily studies pair it with --warmup-ticks 0 (feeds/bars.py)")
    cat.add_argument("--memory-mb", type=float, default=d.memory_mb,
                     help=f"memory budget of a --catalog replay, MiB (default {d.memory_mb:g}): peak use stays within it")


def _add_run_args(b: argparse.ArgumentParser, *, single: bool = True) -> None:
    """Strategy, execution and output options of a replay (backtest, replay-raw; a sweep, not
    ``single``, takes the first two groups only). Names and defaults of those are engine.options.RunOptions'."""
    d = RunOptions()
    strat = b.add_argument_group("strategy")
    strat.add_argument("--strategy", default=d.strategy,
                       help="momentum | mean_reversion | buy_hold | ssm (= ssm_threshold) | none | package.module:Class")
    strat.add_argument("--model", metavar="FILE", default=d.model,
                       help="SSM weights (model.safetensors from `nextick train`); default: the packaged model")
    strat.add_argument("--backend", default=d.backend, metavar="NAME",
                       help=f"what runs the model: {d.backend} (the compiled C++ kernel, default); engine.model.backend lists others")
    strat.add_argument("--mc-samples", type=int, default=d.mc_samples, metavar="N",
                       help="MC dropout (a model trained with --dropout): step N dropout variants per instrument; strategies "
                            "get the mean prediction and its std (ssm: --param uncertainty_k=K gates on it)")
    strat.add_argument("--mc-variant", type=int, default=d.mc_variant, metavar="V",
                       help="MC dropout: run the whole backtest on dropout variant V alone (one thinned network)")
    strat.add_argument("--mc-seed", type=int, default=d.mc_seed, help=f"seed of the dropout masks (default {d.mc_seed})")
    _add_params_arg(strat)
    if single:
        strat.add_argument("--compare", metavar="STRATEGY",
                           help="also run this strategy (default parameters) on the same data and test the Sharpe difference")
        strat.add_argument("--oracle", action="store_true",
                           help="synthetic market only: also run the threshold rule on the true expected return, the ceiling")
    _add_execution_args(b)
    if not single:
        return
    out = b.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="DIR", help="write fills, trades, resets, equity, decimated mids (Parquet) and summary.json here")
    out.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_execution_args(b: argparse.ArgumentParser) -> None:
    """The execution options of a replay; names and defaults are engine.options.RunOptions'."""
    d = RunOptions()
    ex = b.add_argument_group("execution")
    ex.add_argument("--interval", default=d.interval, choices=list(INTERVALS_NS), help=f"conflation interval (default {d.interval})")
    ex.add_argument("--latency-ns", type=int, default=d.latency_ns,
                    help=f"decision to order-active delay in ns (default {d.latency_ns})")
    ex.add_argument("--feed-latency", default=d.feed_latency, metavar="SPEC",
                    help="redraw every quote's receive time as ts_event + a delay from this model: "
                         f"{LATENCY_SPEC_HELP}; jitter: is a recording's delays less their minimum (default: as recorded)")
    ex.add_argument("--order-latency", default=d.order_latency, metavar="SPEC",
                    help="draw each order's decision to order-active delay from this model instead of --latency-ns "
                         "(same forms as --feed-latency)")
    ex.add_argument("--latency-seed", type=int, default=d.latency_seed, metavar="N",
                    help=f"seed of the latency draws (default {d.latency_seed})")
    ex.add_argument("--feed-hold-s", type=float, default=d.feed_hold_s, metavar="S",
                    help="with --feed-latency: how long rows are held back to be put in their new order; a row "
                         "recorded with a longer delay is clamped and counted in the summary (default "
                         f"{d.feed_hold_s:g})")
    ex.add_argument("--fee-bps", type=float, default=d.fee_bps,
                    help=f"fee in basis points of notional per taking fill (default {d.fee_bps:g})")
    ex.add_argument("--maker-fee-bps", type=float, default=d.maker_fee_bps,
                    help="fee in basis points of notional per resting limit fill; negative = rebate (default: --fee-bps)")
    ex.add_argument("--queue", choices=["through", "touch"], default=d.queue,
                    help="resting limit orders fill when the other side trades through their price (through, the "
                         f"default: the queue ahead is unknown) or also when it touches it (touch) (default {d.queue})")
    ex.add_argument("--fee-per-fill", type=float, default=d.fee_per_fill,
                    help=f"fixed fee per fill, currency (default {d.fee_per_fill:g})")
    ex.add_argument("--size-cap", action="store_true", default=d.size_cap, help="cap fills at the displayed size; the rest waits")
    ex.add_argument("--cancel-remainder", action="store_true", default=d.cancel_remainder,
                    help="with --size-cap: cancel what did not fill instead of waiting")
    ex.add_argument("--flatten-at-close", action="store_true", default=d.flatten_at_close,
                    help="target flat from --flatten-lead-s before each session close")
    ex.add_argument("--flatten-lead-s", type=float, default=d.flatten_lead_s,
                    help=f"seconds before the close to flatten (default {d.flatten_lead_s:g})")
    ex.add_argument("--capital", type=float, default=d.capital, help=f"initial capital (default {d.capital:,.0f})")
    ex.add_argument("--bar-s", type=float, default=d.bar_s,
                    help=f"equity sampling period for metrics, seconds (default {d.bar_s:g})")
    ex.add_argument("--risk-free-rate", type=float, default=d.risk_free_rate,
                    help=f"annual risk-free rate for Sharpe/Sortino (default {d.risk_free_rate:g})")


_SWEEP = SweepSpec()  # the sweep options' defaults


def _build_parser() -> argparse.ArgumentParser:
    from engine import __version__

    p = argparse.ArgumentParser(prog="nextick", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"nextick {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    b = sub.add_parser(
        "backtest",
        help="replay quotes (synthetic or a file) through a strategy with next-tick fills",
        description="Replay quotes through a strategy with next-tick fills and print a summary of metrics, fills, "
        "resets and quarantined rows. With no arguments: the embedded synthetic market (3 instruments, "
        "5 NYSE-hours sessions) and the momentum baseline.",
        epilog=BACKTEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(b)
    _add_run_args(b)
    b.set_defaults(func=cmd_backtest)

    cp = sub.add_parser(
        "compare",
        help="run several strategies on the same data: metrics, pairwise Sharpe tests, sub-periods",
        description="Run N strategies on one data set (read once), print their metrics, the pairwise "
        "Memmel-corrected Jobson-Korkie z and p of daily Sharpe ratios and a sub-period breakdown; with --out "
        "write compare.json, compare.parquet (daily returns) and each run's folder for `nextick report`.",
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(cp)
    cs = cp.add_argument_group("strategies")
    cs.add_argument("--strategy", dest="strategies", action="append", default=[], metavar="[LABEL=]SPEC",
                    help="a strategy to run (repeatable): a built-in or package.module:Class, labelled LABEL "
                    "(default: the built-in's or the class's name)")
    cs.add_argument("--param", dest="params", type=_param, action=_ParamsAction, default={}, metavar="LABEL.KEY=VALUE",
                    help="a parameter of the strategy labelled LABEL (repeatable), e.g. momentum.fast_span=20")
    cs.add_argument("--five-way", action="store_true",
                    help="add the allocation preset: equal_weight, min_variance, momentum, mean_variance, index "
                    f"(Allocation, long-only, --cap, --rebalance-s, --lookback; fee {FIVE_WAY_FEE_BPS:g} bps unless --fee-bps)")
    cs.add_argument("--rebalance-s", type=float, default=MONTH_S,
                    help=f"--five-way: rebalance clock, seconds on the UTC clock (default {MONTH_S:g}: 30 days)")
    cs.add_argument("--lookback", type=int, default=20, help="--five-way: returns (rebalance periods) in the estimation window (default 20)")
    cs.add_argument("--cap", type=float, default=0.2, help="--five-way: per-asset weight cap (default 0.2)")
    cs.add_argument("--blocks", type=int, default=2, help="sub-periods: equal blocks of the common days (default 2: halves)")
    cs.add_argument("--skip-days", type=int, default=0,
                    help="leave the first N common days out of the tables and tests (an estimation window: default 0)")
    _add_execution_args(cp)
    cp.set_defaults(fee_bps=None)  # None: the preset's 10 bps with --five-way, else the engine default
    co = cp.add_argument_group("output")
    co.add_argument("--out", type=Path, metavar="DIR", help="write compare.json, compare.parquet and one folder per strategy here")
    co.add_argument("--no-progress", action="store_true", help="no progress bar")
    cp.set_defaults(func=cmd_compare)

    sw = sub.add_parser(
        "sweep",
        help="backtest many configurations on data read once: grid and seeded random axes, ranked on a validation period",
        description="Run every configuration of a grid (--grid) and seeded random draws (--random) on one data set, "
        "read once and memory-mapped by parallel workers (local processes, or Ray). The trading days are split into "
        "a validation period, on which every configuration runs and is ranked, and a later test period, on which "
        "the chosen configuration runs after the choice. Prints the top configurations, the chosen one on both "
        "periods, its deflated Sharpe ratio and the probability of backtest overfitting (PBO); writes "
        "OUT/results.parquet (one row per configuration) and OUT/sweep.json (the spec, to run it again).",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(sw)
    _add_run_args(sw, single=False)
    ax = sw.add_argument_group("sweep (axes over the strategy and execution options above)")
    ax.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                    help="a grid axis (repeatable): fee_bps=0.5,1,2 or params.fast_span=10,20,40")
    ax.add_argument("--random", action="append", default=[], metavar="NAME=DIST",
                    help="a random axis (repeatable): uniform:LO:HI, loguniform:LO:HI, int:LO:HI or choice:a,b,c")
    ax.add_argument("--n", type=int, default=_SWEEP.n, metavar="N",
                    help=f"random draws, crossed with the grid (default {_SWEEP.n})")
    ax.add_argument("--random-seed", type=int, default=_SWEEP.random_seed, metavar="S",
                    help=f"seed of the random draws (default {_SWEEP.random_seed}; --seed is the synthetic market's)")
    ax.add_argument("--split", type=float, default=_SWEEP.split, metavar="FRACTION",
                    help=f"share of the trading days in the validation period (default {_SWEEP.split:g}; 1: no test period)")
    ax.add_argument("--test-from", metavar="DATE", help="first day of the test period, YYYY-MM-DD (instead of --split)")
    ax.add_argument("--rank-by", default=_SWEEP.rank_by, choices=list(RANKABLE),
                    help=f"validation metric that ranks the configurations (default {_SWEEP.rank_by})")
    ax.add_argument("--pbo-blocks", type=int, default=_SWEEP.pbo_blocks, metavar="S",
                    help=f"most CSCV blocks of validation days for the PBO, even (default {_SWEEP.pbo_blocks})")
    ax.add_argument("--spec", type=Path, metavar="FILE",
                    help="run the sweep a sweep.json describes (its data, base options and axes; not with --grid/--random)")
    ru = sw.add_argument_group("workers and output")
    ru.add_argument("--workers", type=int, default=None, help="local worker processes (default: the CPU count)")
    ru.add_argument("--ray", metavar="ADDRESS",
                    help="run the configurations as Ray tasks: a cluster's address, auto (a running cluster), or local "
                    "(start one here with --workers CPUs); needs pip install 'nextick[ray]'")
    ru.add_argument("--out", type=Path, default=Path("runs/sweep"), metavar="DIR",
                    help="write results.parquet and sweep.json here (default runs/sweep)")
    ru.add_argument("--dataset-dir", type=Path, metavar="DIR",
                    help="keep the data set (quotes.npy, dataset.json) here (default: a temporary folder in --out)")
    ru.add_argument("--top", type=int, default=10, help="configurations in the printed table (default 10)")
    ru.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    st = sub.add_parser(
        "study",
        help="the model-risk study: MC-dropout backtests of random configurations, the Pretrained Market Line, decay",
        description="Train each model kind on the first days of the data (or take --model files), draw random "
        "configurations of the threshold rule (threshold, stop-loss, take-profit, hold time), backtest every "
        "configuration under every MC-dropout variant of each model on the later days (the model stepped once, "
        "its predictions replayed into every backtest), split each configuration's risk into the model's own "
        "(epistemic) and the priced rest, and fit the Pretrained Market Line (mean daily return on priced std "
        "through the risk-free rate: the slope is the model's Foundation Sharpe ratio), a rolling PML, each "
        "configuration's CAPM against the equal-weighted market (Newey-West errors) and the signal's decay. "
        "Writes OUT/study.json, OUT/results.parquet and OUT/report.html (with plotly).",
    )
    _add_source_args(st)
    sa = st.add_argument_group("study")
    sa.add_argument("--kinds", default="mamba2,lstm,mlp",
                    help="model kinds to train, comma-separated: mamba2, s4d, lstm, gru, mlp, transformer; '' for none "
                    "(default mamba2,lstm,mlp)")
    sa.add_argument("--model", action="append", default=[], metavar="NAME=FILE",
                    help="study this model file as NAME too (repeatable); no training")
    sa.add_argument("--configs", type=int, default=200, help="random configurations of the threshold rule (default 200)")
    sa.add_argument("--variants", type=int, default=8, help="MC-dropout variants per configuration (default 8)")
    sa.add_argument("--dropout", type=float, default=0.1, help="dropout rate of the models trained here (default 0.1)")
    sa.add_argument("--train-frac", type=float, default=0.5,
                    help="share of the trading days that train the models; the rest is studied (default 0.5)")
    sa.add_argument("--study-seed", type=int, default=0, help="seed of training, configurations and masks (default 0)")
    sa.add_argument("--epochs", type=int, default=6, help="training epochs per model (default 6)")
    sa.add_argument("--d-model", type=int, default=32, help="width of the models trained here (default 32)")
    sa.add_argument("--rf", type=float, default=0.05, help="annual risk-free rate of the PML and CAPM (default 0.05)")
    sa.add_argument("--window-days", type=int, default=0, help="rolling PML window in days (default: half the period)")
    sa.add_argument("--interval", default="1s", choices=["100ms", "1s"], help="conflation interval (default 1s)")
    sa.add_argument("--fee-bps", type=float, default=1.0, help="fee per fill in bps of notional (default 1)")
    sa.add_argument("--latency-ns", type=int, default=0, help="decision to order-active delay, ns (default 0)")
    so = st.add_argument_group("workers and output")
    so.add_argument("--workers", type=int, default=None, help="local worker processes (default: the CPU count)")
    so.add_argument("--out", type=Path, default=Path("runs/study"), metavar="DIR", help="output folder (default runs/study)")
    so.add_argument("--no-report", action="store_true", help="do not write report.html")
    so.add_argument("--no-progress", action="store_true", help="no progress lines")
    st.set_defaults(func=cmd_study)

    t = sub.add_parser(
        "train",
        help="train a signal model (the SSM, or the zoo: LSTM, GRU, MLP, Transformer) on replayed ticks",
        description="Replay quotes (synthetic by default, or any file `backtest` reads) through the engine, cut "
        "them into sessions at every reset, split by time into train/validation/test, train the model "
        "from zero state per session with early stopping on validation, and write model.safetensors (SSM) or "
        "model.onnx (zoo) plus training_report.json/.md (loss curves, information coefficient). With "
        "--walk-forward: refit on a rolling window of days and score each fit on the days after it.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_source_args(t)
    tr = t.add_argument_group("training")
    tr.add_argument("--horizon", type=int, default=10, metavar="K", help="predict the mid K ticks ahead (default 10)")
    tr.add_argument("--interval", default="1s", choices=["100ms", "1s", "raw"], help="conflation interval (default 1s)")
    tr.add_argument("--epochs", type=int, default=30, help="most epochs (default 30)")
    tr.add_argument("--patience", type=int, default=4, help="stop after this many epochs without a better validation loss")
    tr.add_argument("--batch-size", type=int, default=2, help="sessions per step (default 2)")
    tr.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    tr.add_argument("--train-seed", type=int, default=0, help="seed of initialization and batch order (default 0)")
    tr.add_argument("--val-frac", type=float, default=0.2, help="share of days for validation (default 0.2)")
    tr.add_argument("--test-frac", type=float, default=0.2, help="share of days for test, the latest (default 0.2)")
    tr.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    mo = t.add_argument_group("model")
    mo.add_argument("--kind", default="mamba2", choices=["mamba2", "s4d", *ZOO_KINDS],
                    help="mamba2 (selective SSM, default), s4d (LTI baseline), or a zoo model: lstm, gru, mlp, transformer")
    mo.add_argument("--discretization", default="zoh", choices=["zoh", "bilinear"], help="s4d only (default zoh)")
    mo.add_argument("--d-model", type=int, default=64, help="width of the residual stream (default 64)")
    mo.add_argument("--n-layers", type=int, default=2, help="SSM blocks (default 2)")
    mo.add_argument("--d-state", type=int, default=16, help="state size per channel (default 16)")
    mo.add_argument("--headdim", type=int, default=32, help="mamba2 head width; d_inner = 2 * d_model (default 32)")
    mo.add_argument("--window", type=int, default=None,
                    help=f"mlp, transformer: the last W ticks the model sees (default {ZOO_WINDOW})")
    mo.add_argument("--n-heads", type=int, default=None,
                    help=f"transformer: attention heads (default {ZOO_HEADS})")
    mo.add_argument("--dropout", type=float, default=0.0, help="dropout rate in training (default 0: none)")
    wf = t.add_argument_group("walk-forward retraining")
    wf.add_argument("--walk-forward", action="store_true",
                    help="refit every --refit-days trading days on the --train-days before, score each fold on the days "
                    "after it; the report has per-fold scores and IC by days since the fit; the model file is the last fold's")
    wf.add_argument("--train-days", type=int, metavar="N", help="walk-forward: trading days each fold fits on")
    wf.add_argument("--refit-days", type=int, metavar="M", help="walk-forward: trading days each fold is scored on, and its step")
    t.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR", help="output folder (default runs/train)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    rr = sub.add_parser(
        "replay-raw",
        help="backtest over raw websocket recordings (`nextick record`, ../shared/data/binance-raw)",
        description="Replay raw frame recordings (`<recv_ns> <frame>` lines, gzip or plain; ns, us or ms stamps) "
        "through the live decoders into the engine: depth, trade and snapshot frames are counted and "
        "skipped, bad frames quarantined and counted. A directory means every recording under it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rr.add_argument("raw_paths", nargs="+", type=Path, metavar="FILE", help="recording files or directories")
    d = SourceOptions()
    rr.add_argument("--venue", default=d.venue, help="venue of every file (default: from the file names: spot_*, usdm_*, <venue>_*)")
    rr.add_argument("--tick-size", type=float, default=d.tick_size, help=f"tick size of the instruments (default {d.tick_size:g})")
    rr.add_argument("--lot-size", type=float, default=d.lot_size, help=f"lot size of the instruments (default {RAW_LOT_SIZE:g})")
    rr.add_argument("--gap-s", type=float, default=d.gap_s, help=f"silence that resets an instrument, seconds (default {d.gap_s:g})")
    rr.add_argument("--policy", default=d.policy, help=f"bad-row policy, as for backtest (default {d.policy})")
    _add_run_args(rr)
    rr.set_defaults(func=cmd_backtest)

    ig = sub.add_parser(
        "ingest",
        help="turn vendor files (Binance, Tardis, Databento, LOBSTER, HistData, raw recordings, CSV/Parquet) into a Parquet catalog",
        description="Read each source with the reader its format needs (detected, or --format), validate it, and "
        "write it into the catalog partitioned by venue, instrument and UTC date, with a manifest of source "
        "files (SHA-256), row counts and quarantines. Ingesting the same file again changes nothing; a "
        "changed file replaces its earlier rows. A folder means every file in it that a reader recognizes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=INGEST_EPILOG,
    )
    ig.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="files or folders")
    ig.add_argument("--catalog", type=Path, required=True, metavar="DIR", help="the catalog folder (created if needed)")
    ig.add_argument("--format", dest="fmt", choices=None, metavar="FORMAT",
                    help="skip detection: binance, tardis, databento, lobster, histdata, dukascopy, raw, generic")
    ig.add_argument("--venue", help="venue name, where the format does not say it")
    ig.add_argument("--symbol", help="symbol, where the file name does not say it")
    ig.add_argument("--policy", default="quarantine", help="bad-row policy, as for backtest (default quarantine)")
    ig.set_defaults(func=cmd_ingest)

    from feeds.venues import VENUE_NAMES

    es = sub.add_parser(
        "exchange-sim",
        help="serve a local exchange (Binance, Bybit, OKX, Kraken protocols) on 127.0.0.1, with fault switches",
        description="A websocket server speaking the venues' BBO protocols on one port (routed by path), streaming "
        "the synthetic market or a raw recording, with scheduled faults. `nextick paper` embeds it by default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SIM_EPILOG,
    )
    es.add_argument("--venue", action="append", choices=VENUE_NAMES, help="venue to serve (repeatable; default binance-usdm and bybit-linear)")
    es.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="symbols each venue lists (default BTCUSDT,ETHUSDT)")
    es.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    es.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    es.add_argument("--rate-hz", type=float, default=10.0, help="synthetic quotes per second per symbol (default 10)")
    es.add_argument("--speed", type=float, default=1.0, help="time acceleration; 0 = as fast as possible (default 1)")
    es.add_argument("--raw", type=Path, metavar="FILE", help="stream this raw recording instead of the synthetic market")
    es.add_argument("--faults", metavar="SCHEDULE", help="e.g. close@30,stall:10@60,reject:503x3@90 (see below)")
    es.add_argument("--ping-interval-s", type=float, default=20.0, help="websocket pings from the server (default 20)")
    es.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    es.set_defaults(func=cmd_exchange_sim)

    pa = sub.add_parser(
        "paper",
        help="paper trade live quotes (the local simulator by default) with next-tick fills and a journal",
        description="Run the backtest's engine and strategy on live quotes, with simulated fills at the next tick "
        "after --latency-ns. With no market option it trades the embedded local exchange simulator, offline. "
        "Everything is journaled in RUN_DIR/journal.sqlite and the raw frames recorded under RUN_DIR/raw: "
        "re-running with the same --run-dir resumes after a crash; `nextick reconcile RUN_DIR` replays the "
        "recording and checks every order and fill.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=PAPER_EPILOG,
    )
    pa.add_argument("--venue", action="append", choices=VENUE_NAMES, help="venue (repeatable; default binance-usdm)")
    pa.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="symbols in the venue's spelling (default BTCUSDT,ETHUSDT)")
    market = pa.add_mutually_exclusive_group()
    market.add_argument("--live", action="store_true", help="connect to the venues' production endpoints")
    market.add_argument("--url", help="websocket base URL for every venue (e.g. a running `nextick exchange-sim`)")
    d = RunOptions()
    pa.add_argument("--strategy", default="ssm", help="built-in strategy or package.module:Class (default ssm)")
    pa.add_argument("--model", metavar="FILE", default=d.model, help="SSM weights (default: the packaged model)")
    pa.add_argument("--backend", default=d.backend, metavar="NAME", help=f"what runs the model (default {d.backend}, the C++ kernel)")
    _add_params_arg(pa)
    pa.add_argument("--interval", default=d.interval, choices=list(INTERVALS_NS), help=f"conflation interval (default {d.interval})")
    pa.add_argument("--latency-ns", type=int, default=d.latency_ns, help=f"decision to order-active delay in ns (default {d.latency_ns})")
    pa.add_argument("--fee-bps", type=float, default=d.fee_bps, help=f"fee in basis points of notional (default {d.fee_bps:g})")
    pa.add_argument("--capital", type=float, default=d.capital, help=f"initial capital (default {d.capital:,.0f})")
    pa.add_argument("--lot-size", type=float, default=0.001, help="lot size (default 0.001)")
    pa.add_argument("--warmup-ticks", type=int, default=50, help="ticks after a reset before opening (default 50)")
    pa.add_argument("--stale-s", type=float, default=10.0, help="no data this long: STALE reset (default 10)")
    pa.add_argument("--run-dir", type=Path, default=Path("runs/paper"), help="journal and recording (default runs/paper)")
    pa.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    pa.add_argument("--sim-rate-hz", type=float, default=10.0, help="embedded simulator: quotes/s per symbol (default 10)")
    pa.add_argument("--sim-faults", metavar="SCHEDULE", help="embedded simulator: fault schedule, as exchange-sim --faults")
    pa.add_argument("--json", action="store_true", help="print the final summary as JSON")
    pa.set_defaults(func=cmd_paper)

    ex = sub.add_parser(
        "export",
        help="export a model's step for another runtime: ONNX, for `--backend onnxruntime`",
        description="Write one step of the model (the C++ kernel's math) as an ONNX graph: the recurrent states "
        "(conv window and SSM state per layer) as explicit inputs and outputs, a dynamic batch axis, the reset "
        "mask applied inside the graph. The file is checked with onnx's checker and, where onnxruntime is "
        "installed, run against the C++ kernel. Needs torch, onnx and onnxscript: pip install 'nextick[train,onnx]'.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("--format", dest="fmt", choices=["onnx"], default="onnx", help="what to write (default onnx)")
    ex.add_argument("--model", metavar="FILE", help="model.safetensors to export (default: the packaged model)")
    ex.add_argument("--out", type=Path, metavar="FILE",
                    help="output file (default: beside the model, NAME.onnx, where `--backend onnxruntime` looks first)")
    ex.set_defaults(func=cmd_export)

    rc = sub.add_parser(
        "reconcile",
        help="replay a paper run's recording through the backtester and compare orders and fills bit for bit",
        description="Replay RUN_DIR/raw (the paper run's own recording) through the same decoders, conflator, "
        "engine and strategy, segment by segment (a restart starts a segment, from the journaled fills), "
        "and compare every order, fill and reset with RUN_DIR/journal.sqlite. Exit status 1 on any divergence.",
    )
    rc.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a `nextick paper --run-dir` directory")
    rc.add_argument("--json", action="store_true", help="print the report as JSON")
    rc.set_defaults(func=cmd_reconcile)

    bn = sub.add_parser(
        "bench",
        help="measure this machine: SSM step, SSM vs Transformer, end to end over loopback, backtest throughput, peers",
        description="Run the benchmark suites and write results.json, summary.md and report.html (with plots) to "
        "--out, each with the machine described. The full run takes several minutes; --quick is a smoke run. "
        "Peers (NautilusTrader, hftbacktest) run when installed: pip install -e '.[bench-peers]'.",
    )
    bn.add_argument("--out", type=Path, default=Path("runs/bench"), metavar="DIR", help="output folder (default runs/bench)")
    bn.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every suite (about a minute)")
    bn.add_argument("--suite", action="append", metavar="NAME",
                    help="run only this suite (repeatable): ssm_step, ssm_precision, ssm_vs_transformer, e2e_loopback, backtest, compiled, peers")
    bn.set_defaults(func=cmd_bench)

    rp = sub.add_parser(
        "report",
        help="draw a run's figures into one self-contained HTML file (RUN_DIR/report.html)",
        description="Write RUN_DIR/report.html: per strategy of a `nextick backtest --out` folder its equity, "
        "drawdown, fills over the mid per instrument, resets, PnL per instrument and key metrics; the study's "
        "figures where RUN_DIR/study.json exists; a sweep's where RUN_DIR/results.parquet does. One file, "
        "plotly.js inlined: it opens offline. Needs plotly: pip install 'nextick[report]'.",
        epilog=REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rp.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a `nextick backtest --out` folder (or one holding study.json / results.parquet)")
    rp.add_argument("--out", type=Path, metavar="FILE", help="write here instead of RUN_DIR/report.html")
    rp.add_argument("--open", action="store_true", help="open the file in the default browser once written")
    rp.set_defaults(func=cmd_report)

    rec = sub.add_parser(
        "record",
        help="record raw frames (gzip, `<recv_ns> <frame>`) and normalized quotes (Parquet) from venue streams",
        description="Connect to venue BBO streams (production, --url, or the embedded simulator with --sim) and "
        "write raw frames to OUT/raw/<venue>/*.gz (rotating; the format of ../shared/data/binance-raw, plus "
        "reconnect/stale marker lines) and normalized quotes to OUT/quotes/venue=/instrument=/date=/*.parquet.",
    )
    rec.add_argument("--venue", action="append", choices=VENUE_NAMES, required=True, help="venue (repeatable)")
    rec.add_argument("--symbols", required=True, help="symbols in the venue's spelling, comma-separated")
    rec_market = rec.add_mutually_exclusive_group()
    rec_market.add_argument("--url", help="websocket base URL (default: the venues' production endpoints)")
    rec_market.add_argument("--sim", action="store_true", help="record the embedded local simulator")
    rec.add_argument("--out", type=Path, default=Path("recordings"), help="output root (default recordings/)")
    rec.add_argument("--no-quotes", action="store_true", help="raw frames only, no Parquet quotes")
    rec.add_argument("--rotate-mb", type=float, default=256.0, help="start a new raw file after this many MB (default 256)")
    rec.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    rec.set_defaults(func=cmd_record)
    return p


def cmd_backtest(args: argparse.Namespace) -> int:
    import msgspec

    from engine.backtest import compare, run_backtest
    from engine.options import (
        backtest_config,
        check_strategy,
        quote_source,
        run_options,
        source_options,
    )
    from engine.progress import Progress
    from engine.report import finite_json, format_summary, summary_dict, write_outputs

    sources = source_options(_options(args, SOURCE_OPTIONS))
    runs = [run_options(_options(args, RUN_OPTIONS))]
    if args.compare:
        runs.append(msgspec.structs.replace(runs[0], strategy=args.compare, params={}))
    if args.oracle and not sources.synthetic:
        raise ValueError("--oracle needs the synthetic market (its expected returns are known); drop --data/--catalog")
    for options in runs:  # a misspelt strategy fails now, not after the data is read
        check_strategy(options)
    show = False if args.no_progress or args.json else None
    source = quote_source(sources)
    with _replays(source, sources, len(runs) + args.oracle, show) as (replay, read_note):
        results = []
        for options in runs:
            run_source = replay()
            progress = Progress(f"backtest {options.strategy}", enabled=show, total=getattr(run_source, "expected_rows", None))
            try:
                # The mids only where they are written: recording them costs the loop's time again.
                results.append(run_backtest(run_source, backtest_config(options), on_progress=progress.update,
                                            record_mids=args.out is not None))
            finally:
                progress.close()
        jk = compare(results[0], results[1]) if len(results) == 2 else None
        if args.oracle:
            results.append(_oracle_run(sources, runs[0], replay(), record_mids=args.out is not None))
    if args.json:
        print(json.dumps(finite_json([summary_dict(r, jk) for r in results]), indent=2))
    else:
        print(format_summary(results, jk))
        if read_note:
            print(read_note)
    if args.out:
        paths = write_outputs(args.out, results, jk)
        if not args.json:
            print(f"wrote {len(paths)} files to {args.out}/")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import msgspec

    from engine.backtest import run_backtest
    from engine.compare import compare_runs, format_blocks, format_jk, parse_entries, write_compare
    from engine.options import backtest_config, check_strategy, quote_source, run_options, source_options
    from engine.progress import Progress
    from engine.report import format_summary

    entries = parse_entries(args.strategies, args.params, five_way=args.five_way, rebalance_s=args.rebalance_s,
                            lookback=args.lookback, cap=args.cap)
    base = _options(args, RUN_OPTIONS)
    if base["fee_bps"] is None:
        base["fee_bps"] = FIVE_WAY_FEE_BPS if args.five_way else RunOptions().fee_bps
    base.pop("params", None)
    runs = [run_options({**base, "strategy": e.strategy, "params": e.params}) for e in entries]
    for e, options in zip(entries, runs):  # a misspelt strategy fails now, naming its label, before the data is read
        try:
            check_strategy(options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"--strategy {e.label} ({e.strategy}): {err}") from None
    sources = source_options(_options(args, SOURCE_OPTIONS))
    show = False if args.no_progress else None
    source = quote_source(sources)
    t0 = time.perf_counter()
    with _replays(source, sources, len(runs), show) as (replay, read_note):
        results = []
        for e, options in zip(entries, runs):
            run_source = replay()
            progress = Progress(f"compare {e.label}", enabled=show, total=getattr(run_source, "expected_rows", None))
            try:
                results.append(run_backtest(run_source, backtest_config(options), on_progress=progress.update,
                                            record_mids=args.out is not None))
            finally:
                progress.close()
        instruments = replay().instruments
    labelled = [msgspec.structs.replace(r, strategy=e.label) for r, e in zip(results, entries)]
    c = compare_runs(labelled, [e.label for e in entries], instruments, args.blocks, args.skip_days)
    print(format_summary(labelled))
    print("\n".join(["", *format_jk(c), "", *format_blocks(c)]))
    if read_note:
        print(read_note)
    print(f"compare      {len(runs)} runs in {time.perf_counter() - t0:.1f} s")
    if args.out:
        execution = {k: v for k, v in msgspec.to_builtins(runs[0]).items() if k not in ("strategy", "params")}
        paths = write_compare(args.out, labelled, entries, c, execution)
        print(f"wrote {len(paths)} files to {args.out}/")
    return 0


@contextlib.contextmanager
def _replays(source, sources, n_runs: int, show: bool | None):
    """(a function that gives each run its source, a line for the summary). One run streams
    ``source`` itself. Several replay one ``QuoteDataset``, read once: the synthetic market's held in
    memory; a file's, catalog's or recording's memory-mapped from a temporary folder (in $TMPDIR), as
    such data may be larger than memory and its replay streams in bounded memory."""
    if n_runs == 1:
        yield (lambda: source), ""
        return
    from engine.progress import Progress
    from feeds.dataset import QuoteDataset

    spill = contextlib.nullcontext() if sources.synthetic else tempfile.TemporaryDirectory(prefix="nextick-")
    with spill as folder:
        progress = Progress("read", enabled=show, total=getattr(source, "expected_rows", None))
        t0 = time.perf_counter()
        try:
            dataset = QuoteDataset.read(source, folder, on_progress=progress.update)
        finally:
            progress.close()
        note = f"dataset      {len(dataset):,} quotes read once in {time.perf_counter() - t0:.2f} s, replayed by {n_runs} runs"
        yield dataset.source, note


def _oracle_run(sources, first, source, record_mids: bool = False):
    """The ssm_threshold rule fed the synthetic market's true expected return: what a perfect signal
    would have made under the same fills and fees. ``source`` replays the market's quotes; the truth
    comes from the market generated again (it is not part of the quotes)."""
    import msgspec

    from engine.backtest import run_backtest
    from engine.model.weights import load_model
    from engine.options import backtest_config, synthetic_market
    from strategies.builtin import builtin_spec
    from strategies.oracle import OracleThreshold

    # The same horizon and threshold as the SSM run it bounds.
    model = load_model(first.model)
    tick_s = (INTERVALS_NS[first.interval] or SECOND_NS) / SECOND_NS
    params = first.params if first.strategy in ("ssm", "ssm_threshold") else {}
    threshold = builtin_spec("ssm_threshold", params).threshold_bps
    market = synthetic_market(sources, horizon_s=model.signal.horizon_ticks * tick_s)
    config = backtest_config(msgspec.structs.replace(first, strategy="oracle", params={}))
    return run_backtest(source, config, strategy=OracleThreshold(market, threshold_bps=threshold), record_mids=record_mids)


def cmd_sweep(args: argparse.Namespace) -> int:
    from engine.sweep import (
        SweepError,
        SweepSpec,
        format_summary,
        parse_grid,
        parse_random,
        run_sweep,
    )

    if args.spec is not None:
        if args.grid or args.random:
            raise SweepError("--spec: the file gives the axes; drop --grid and --random (or drop --spec)")
        spec = SweepSpec.load(args.spec)
    else:
        grid: dict[str, list[Any]] = {}
        for text in args.grid:
            name, values = parse_grid(text)
            if name in grid:
                raise SweepError(f"--grid {name}: given twice; list every value in one --grid {name}=v1,v2,...")
            grid[name] = values
        random: dict[str, str] = {}
        for text in args.random:
            name, dist = parse_random(text)
            if name in random:
                raise SweepError(f"--random {name}: given twice; give one distribution per axis")
            random[name] = dist
        spec = SweepSpec(
            source=_options(args, SOURCE_OPTIONS), base=_options(args, RUN_OPTIONS), grid=grid, random=random,
            n=args.n, random_seed=args.random_seed, split=args.split, test_from=args.test_from,
            rank_by=args.rank_by, pbo_blocks=args.pbo_blocks,
        )
    outcome = run_sweep(spec, args.out, workers=args.workers, ray_address=args.ray, dataset_dir=args.dataset_dir,
                        show_progress=False if args.no_progress else None)
    print(format_summary(outcome, top=args.top))
    print(f"wrote {args.out / 'results.parquet'} and {args.out / 'sweep.json'}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from engine.model_study import StudyError, StudyOptions, format_outcome, run_study

    models = {}
    for text in args.model:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise StudyError(f"--model {text}: write NAME=FILE (e.g. ssm=runs/ssm/model.safetensors)")
        models[name] = path
    opts = StudyOptions(
        source=_options(args, SOURCE_OPTIONS), run={"interval": args.interval, "fee_bps": args.fee_bps,
                                                     "latency_ns": args.latency_ns},
        kinds=[k.strip() for k in args.kinds.split(",") if k.strip()], models=models, n_configs=args.configs,
        n_variants=args.variants, dropout=args.dropout, train_frac=args.train_frac, seed=args.study_seed,
        epochs=args.epochs, d_model=args.d_model, rf_annual=args.rf, window_days=args.window_days,
    )
    show = not args.no_progress and sys.stderr.isatty()
    last = {"what": ""}

    def progress(what: str, done: int, total: int) -> None:
        if show and (what != last["what"] or done == total or done % 20 == 0):
            print(f"\r  {what}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        last["what"] = what

    outcome = run_study(opts, args.out, workers=args.workers or os.cpu_count() or 1, on_progress=progress)
    print(format_outcome(outcome))
    if not args.no_report:
        try:
            from engine.html_report import write_report

            path, figures = write_report(args.out)
            print(f"wrote {path} ({len(figures)} figures)")
        except ImportError as e:
            print(f"no report.html: {e}")
    return 0


def _train_model_config(args: argparse.Namespace, config):
    """The model's config from the train command's options; an option the kind does not use is refused."""
    from engine.model.zoo_config import ZooConfig
    from engine.training.train import ssm_config

    if args.kind in ZOO_KINDS:
        zoo = {"window": args.window, "n_heads": args.n_heads}
        unused = {"--window": args.kind not in ("mlp", "transformer"), "--n-heads": args.kind != "transformer"}
        for flag, name in (("--window", "window"), ("--n-heads", "n_heads")):
            if zoo[name] is not None and unused[flag]:
                raise ValueError(f"{flag} means nothing to --kind {args.kind}; leave it out")
        return ZooConfig(kind=args.kind, d_model=args.d_model, n_layers=args.n_layers,
                         **{k: v for k, v in zoo.items() if v is not None})
    for flag, value in (("--window", args.window), ("--n-heads", args.n_heads)):
        if value is not None:
            raise ValueError(f"{flag} is for the zoo's window models (--kind mlp, transformer), not --kind {args.kind}")
    return ssm_config(config, kind=args.kind, discretization=args.discretization, d_model=args.d_model,
                      n_layers=args.n_layers, d_state=args.d_state, headdim=args.headdim)


def cmd_train(args: argparse.Namespace) -> int:
    from engine.options import quote_source
    from engine.progress import Progress
    from engine.training.dataset import collect_segments, split_by_time
    from feeds.synthetic import SyntheticMarket

    try:
        import torch
    except ImportError:
        raise SystemExit("nextick train needs torch: pip install 'nextick[train]' (or torch==2.13.0)") from None
    from engine.training.train import TrainConfig, export, model_file_name, train, write_report

    if not args.walk_forward and (args.train_days is not None or args.refit_days is not None):
        raise ValueError("--train-days and --refit-days are walk-forward options: add --walk-forward")
    if args.walk_forward and (args.train_days is None or args.refit_days is None):
        raise ValueError("--walk-forward needs --train-days N (days each fold fits on) and --refit-days M (days it is "
                         "scored on, and its step)")
    if args.kind in ZOO_KINDS:  # the zoo's file is its ONNX graph: fail now, not after training
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"nextick train --kind {args.kind} writes ONNX and needs onnx and onnxscript: "
                             f"pip install 'nextick[train,onnx]' ({e})") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        horizon=args.horizon, interval=args.interval, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        patience=args.patience, seed=args.train_seed, val_frac=args.val_frac, test_frac=args.test_frac,
        dropout=args.dropout,
    )
    model_config = _train_model_config(args, config)
    source = quote_source(_options(args, SOURCE_OPTIONS))
    show = False if args.no_progress else None
    progress = Progress("replay", enabled=show, total=getattr(source, "expected_rows", None))
    try:
        segments = collect_segments(source, interval=args.interval, warmup_ticks=args.warmup_ticks, on_progress=progress.update)
    finally:
        progress.close()
    extra, extra_md = None, None
    if args.walk_forward:
        from engine.training.walk_forward import walk_forward

        progress = Progress("walk-forward", enabled=show, unit="steps")
        try:
            wf = walk_forward(segments, model_config, config, train_days=args.train_days, refit_days=args.refit_days,
                              on_fold=lambda k, n: setattr(progress, "note", f"fold {k + 1}/{n}"),
                              on_step=lambda n, note: progress.update(n))
        finally:
            progress.close()
        result = wf.folds[-1].result  # the latest fit: the model to run next
        extra = {"walk_forward": {"train_days": args.train_days, "refit_days": args.refit_days, **wf.to_report()}}
        extra_md = wf.markdown()
    else:
        split = split_by_time(segments, args.val_frac, args.test_frac)
        progress = Progress("train", enabled=show, unit="steps",
                            total=args.epochs * -(-len(split.train) // args.batch_size))
        try:
            result = train(split, model_config, config, on_step=lambda n, note: (setattr(progress, "note", note), progress.update(n)))
        finally:
            progress.close()
    data_desc = (
        {"source": "synthetic", "seed": args.seed, "n_instruments": args.n_instruments, "n_sessions": args.n_sessions,
         "start": args.start or SYNTHETIC_START, "alpha_strength": args.alpha_strength, "calendar": args.calendar or SYNTHETIC_CALENDAR}
        if isinstance(source, SyntheticMarket) else {"source": source.stats.source}
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / model_file_name(model_config)
    export(result, model_path, config, data_desc)
    paths = [model_path, *write_report(result, args.out, config, model_config, data_desc, extra, extra_md)]
    s = result.scores
    print(f"trained {model_config.kind}: best epoch {result.best_epoch}/{len(result.history)}; "
          f"IC val {s['val'].ic:.4f} test {s['test'].ic:.4f}; rank IC val {s['val'].rank_ic:.4f} test {s['test'].rank_ic:.4f}")
    if args.walk_forward:
        decay = ", ".join(f"{d['days_since_fit']}: {d['ic_mean']:.4f}" for d in extra["walk_forward"]["decay"])
        print(f"walk-forward: {len(wf.folds)} folds; mean eval IC by days since the fit: {decay}")
    for path in paths:
        print(f"wrote {path}")
    if args.kind in ZOO_KINDS:
        print(f"run it: nextick backtest --strategy ssm --model {model_path} --backend onnxruntime")
    return 0


def _symbols(text: str) -> list[str]:
    syms = [s.strip() for s in text.split(",") if s.strip()]
    if not syms:
        raise ValueError("--symbols is empty")
    return syms


def _run_async(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # uvloop is not on Windows
        import asyncio

        return asyncio.run(coro)


def cmd_exchange_sim(args: argparse.Namespace) -> int:
    from feeds.exchange_sim import RawFileSource, SyntheticSource, run_exchange_sim

    venues = {v: _symbols(args.symbols) for v in (args.venue or ["binance-usdm", "bybit-linear"])}
    if args.raw is not None:
        if len(venues) != 1:
            raise ValueError("--raw streams one venue's recording: give exactly one --venue")
        source = RawFileSource(args.raw, next(iter(venues)), speed=args.speed)
    else:
        source = SyntheticSource(quote_rate_hz=args.rate_hz, speed=args.speed)
    try:
        _run_async(
            run_exchange_sim(venues, host=args.host, port=args.port, source=source,
                             ping_interval_s=args.ping_interval_s, faults=args.faults, duration_s=args.duration)
        )
    except KeyboardInterrupt:
        pass
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    from engine.options import backtest_config
    from engine.paper import PaperConfig, PaperTrader
    from engine.report import finite_json
    from feeds.live import FeedConfig

    venues = {v: _symbols(args.symbols) for v in (args.venue or ["binance-usdm"])}
    # Paper's --warmup-ticks goes to the live instruments (PaperConfig), not to the backtest config.
    backtest = backtest_config(_options(args, ("strategy", "params", "model", "backend", "interval", "latency_ns", "fee_bps", "capital")))
    feed = FeedConfig(stale_after_s=args.stale_s, stale_reconnect_s=3 * args.stale_s)

    async def main():
        config = PaperConfig(venues=venues, backtest=backtest, feed=feed, lot_size=args.lot_size,
                             warmup_ticks=args.warmup_ticks, url=args.url)
        if args.live or args.url:
            where = args.url or "the venues' production endpoints"
            print(f"paper: {', '.join(venues)} from {where}; journal {args.run_dir}/journal.sqlite")
            return await PaperTrader(config, args.run_dir).run(args.duration)
        import asyncio

        from feeds.exchange_sim import (
            ExchangeSim,
            SyntheticSource,
            parse_fault_schedule,
        )

        schedule = parse_fault_schedule(args.sim_faults) if args.sim_faults else []
        async with ExchangeSim(venues=venues, source=SyntheticSource(quote_rate_hz=args.sim_rate_hz)) as sim:
            print(f"paper: {', '.join(venues)} from the local exchange simulator at {sim.url} "
                  f"(offline; --live for the venues' production streams); journal {args.run_dir}/journal.sqlite")
            config.url = sim.url
            faults = [asyncio.create_task(_fire_later(sim, ev)) for ev in schedule]
            try:
                return await PaperTrader(config, args.run_dir).run(args.duration)
            finally:
                for t in faults:
                    t.cancel()

    summary = _run_async(main())
    import msgspec

    if args.json:
        print(json.dumps(finite_json(msgspec.to_builtins(summary)), indent=2))
    else:
        print()
        print(_format_paper(summary))
    return 0


async def _fire_later(sim, ev) -> None:
    import asyncio

    await asyncio.sleep(ev.at_s)
    print(f"\nsim fault: {ev.text}")
    ev.apply(sim)


def _format_paper(s) -> str:
    lat = s.latency_us.get("recv_to_decision", {})
    lines = [
        f"paper run {s.run_dir} (segment {s.segment}): {s.quotes_in:,} quotes, {s.ticks:,} ticks in {s.wall_s:.1f} s",
        f"  equity {s.equity:,.2f}  cash {s.cash:,.2f}  fills {s.fills} ({s.restored_fills} restored from the journal)",
        "  positions " + (", ".join(f"{k} {v:+g}" for k, v in s.positions.items() if v) or "flat"),
        "  resets " + ", ".join(f"{k} {v}" for k, v in s.resets.items() if v),
        "  quarantined " + (", ".join(f"{k} {v}" for k, v in s.quarantined.items()) or "none"),
    ]
    for venue, c in s.feeds.items():
        bad = ", ".join(f"{k} {v}" for k, v in c["quarantined"].items()) or "none"
        ign = ", ".join(f"{k} {v}" for k, v in c["ignored"].items()) or "none"
        lines.append(f"  {venue}: {c['frames']:,} frames, {c['quotes']:,} quotes, seq gaps {c['seq_gaps']}, "
                     f"bad {bad}, ignored {ign}")
    if lat:
        lines.append("  latency (us)      count      p50      p90      p99    p99.9      max")
        for stage, h in s.latency_us.items():
            lines.append(f"    {stage:<16}{h['count']:>7,}{h['p50']:>9.1f}{h['p90']:>9.1f}{h['p99']:>9.1f}"
                         f"{h['p99.9']:>9.1f}{h['max']:>9.1f}")
    if s.engine_errors:
        lines.append(f"  ENGINE ERRORS {s.engine_errors}: {s.last_error}")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from bench.run import run_bench
    except ImportError as e:
        raise SystemExit(f"nextick bench needs the bench package of the source tree (make venv): {e}") from None
    run_bench(args.out, quick=args.quick, suites=args.suite)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.model.onnx_format import sibling_path
    from engine.model.weights import load_model

    try:
        from engine.model.onnx_export import export_onnx
    except ImportError as e:
        raise SystemExit(f"nextick export needs torch, onnx and onnxscript: pip install 'nextick[train,onnx]' ({e})") from None
    model = load_model(args.model)
    if not hasattr(model, "tensors"):  # a zoo model: its file is already its ONNX step graph
        raise ValueError(f"{model.path} is a {model.config.kind} model's ONNX file already: run it with "
                         "--backend onnxruntime; `nextick export` writes the step graph of an SSM's .safetensors")
    path = export_onnx(model, args.out or sibling_path(model.path))
    print(f"wrote {path} ({path.stat().st_size:,} bytes): {model.config.kind}, one step, dynamic batch; onnx.checker passed")
    from engine.model.onnx_backend import INSTALL_HINT, onnxruntime_installed, parity_vs_kernel
    from engine.model.onnx_format import PARITY_RTOL

    if not onnxruntime_installed():
        print(f"onnxruntime is not installed: the file was not run ({INSTALL_HINT})")
        return 0
    rel = parity_vs_kernel(model, path)
    print(f"onnxruntime vs the C++ kernel, random inputs with resets: max relative error {rel:.2e} (tolerance {PARITY_RTOL:g})")
    if not rel <= PARITY_RTOL:
        print(f"nextick: error: {path} does not reproduce the C++ kernel within {PARITY_RTOL:g}", file=sys.stderr)
        return 1
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from engine.domain.validate import ValidationPolicy
    from engine.ingest import ingest
    from feeds.vendors.options import ReaderOptions

    options = ReaderOptions(
        policy=ValidationPolicy.parse(args.policy), venue=args.venue or None, symbol=args.symbol or None
    )
    ingest(args.sources, args.catalog, fmt=args.fmt, options=options)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    import msgspec

    from engine.reconcile import reconcile

    report = reconcile(args.run_dir)
    if args.json:
        print(json.dumps(msgspec.to_builtins(report), indent=2, default=str))
    else:
        print(report.format())
    return 0 if report.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from engine.html_report import write_report

    try:
        path, figures = write_report(args.run_dir, args.out)
    except ImportError as e:  # plotly is an extra: say how to get it, not a traceback
        raise SystemExit(f"nextick: error: {e}") from None
    print(f"wrote {path} ({len(figures)} figure{'s' if len(figures) != 1 else ''}, {path.stat().st_size:,} bytes)")
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from engine.record import record

    venues = {v: _symbols(args.symbols) for v in args.venue}
    stats = _run_async(record(venues, args.out, url=args.url, sim=args.sim, quotes=not args.no_quotes,
                              rotate_bytes=int(args.rotate_mb * (1 << 20)), duration_s=args.duration))
    print(stats)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:
        # Bad input, bad options: one line that says what is wrong, no traceback.
        print(f"nextick: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
