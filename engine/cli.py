"""The ``nextick`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SECOND_NS = 1_000_000_000

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

Strategies: momentum, mean_reversion, buy_hold (built into the C++ loop), or any Python class
"package.module:Class" subclassing strategies.base.Strategy (--param values go to its constructor).
Fills happen at the first tick of the same instrument strictly after decision time + --latency-ns:
buys at the ask, sells at the bid.
"""


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param wants key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


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
        "5 XNYS sessions) and the momentum baseline.",
        epilog=BACKTEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = b.add_argument_group("data (default: the synthetic market)")
    src.add_argument("--data", type=Path, metavar="FILE", help="CSV (.csv, .csv.gz) or Parquet file of quotes")
    src.add_argument(
        "--columns",
        metavar="MAP",
        help="column map key=column,...; keys: ts (receive time), ts_event, bid, ask, bid_sz, ask_sz, symbol, seq. "
        "Default: inferred from the header",
    )
    src.add_argument("--symbol", help="instrument name when the file has no symbol column (default: file name)")
    src.add_argument("--no-header", action="store_true", help="the file has no header row; --columns uses 0-based positions")
    src.add_argument("--ts-unit", default="auto", choices=["auto", "s", "ms", "us", "ns"], help="epoch timestamp unit (default: detect)")
    src.add_argument("--ts-format", metavar="FMT", help='text timestamps, strptime format, e.g. "%%Y%%m%%d %%H%%M%%S%%f"')
    src.add_argument("--tz", default="UTC", help="time zone of text timestamps (IANA name, default UTC)")
    src.add_argument("--policy", default="quarantine", metavar="POLICY",
                     help="bad rows: 'quarantine' (count and skip, default), 'reject' (stop with file:line), "
                     "or per rule, e.g. crossed=reject,duplicate=quarantine")
    inst = b.add_argument_group("instruments (file data)")
    inst.add_argument("--venue", default="FILE", help="venue name recorded with the instruments")
    inst.add_argument("--tick-size", type=float, default=0.01, help="price increment (default 0.01)")
    inst.add_argument("--lot-size", type=float, default=1.0, help="size increment; positions are whole lots (default 1)")
    inst.add_argument("--calendar", default=None,
                      help="session calendar: 24x7, XNYS, CME, FX or 'HH:MM-HH:MM Zone Days' (default: 24x7 for files, "
                      "XNYS for the synthetic market)")
    inst.add_argument("--gap-s", type=float, default=60.0, help="silence inside a session that resets state (default 60 s)")
    inst.add_argument("--warmup-ticks", type=int, default=None,
                      help="ticks after a reset before positions may open, for every instrument (default: 50)")
    syn = b.add_argument_group("synthetic market")
    syn.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    syn.add_argument("--n-instruments", type=int, default=3, help="number of instruments (default 3)")
    syn.add_argument("--n-sessions", type=int, default=5, help="number of sessions (default 5)")
    syn.add_argument("--quote-rate-hz", type=float, default=10.0, help="mean quotes per second per instrument (default 10)")
    syn.add_argument("--alpha-strength", type=float, default=1.0, help="strength of the planted predictable component (default 1)")
    strat = b.add_argument_group("strategy")
    strat.add_argument("--strategy", default="momentum", help="momentum | mean_reversion | buy_hold | package.module:Class")
    strat.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                       help="strategy parameter (repeatable), e.g. fast_span=20")
    strat.add_argument("--compare", metavar="STRATEGY",
                       help="also run this strategy (default parameters) on the same data and test the Sharpe difference")
    ex = b.add_argument_group("execution")
    ex.add_argument("--interval", default="1s", choices=["100ms", "1s", "raw"], help="conflation interval (default 1s)")
    ex.add_argument("--latency-ns", type=int, default=0, help="decision to order-active delay in ns (default 0)")
    ex.add_argument("--fee-bps", type=float, default=1.0, help="fee in basis points of notional per fill (default 1)")
    ex.add_argument("--fee-per-fill", type=float, default=0.0, help="fixed fee per fill, currency (default 0)")
    ex.add_argument("--size-cap", action="store_true", help="cap fills at the displayed size; the rest waits")
    ex.add_argument("--cancel-remainder", action="store_true", help="with --size-cap: cancel what did not fill instead of waiting")
    ex.add_argument("--flatten-at-close", action="store_true", help="target flat from --flatten-lead-s before each session close")
    ex.add_argument("--flatten-lead-s", type=float, default=60.0, help="seconds before the close to flatten (default 60)")
    ex.add_argument("--capital", type=float, default=1_000_000.0, help="initial capital (default 1,000,000)")
    ex.add_argument("--bar-s", type=float, default=60.0, help="equity sampling period for metrics, seconds (default 60)")
    ex.add_argument("--risk-free-rate", type=float, default=0.0, help="annual risk-free rate for Sharpe/Sortino (default 0)")
    out = b.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="DIR", help="write fills, trades, resets, equity (Parquet) and summary.json here")
    out.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_backtest)
    return p


def _source(args: argparse.Namespace):
    from engine.instrument import Instrument

    if args.data is None:
        from feeds.synthetic import SyntheticConfig, SyntheticMarket

        return SyntheticMarket(
            SyntheticConfig(
                n_instruments=args.n_instruments,
                n_sessions=args.n_sessions,
                calendar=args.calendar or "XNYS",
                seed=args.seed,
                quote_rate_hz=args.quote_rate_hz,
                alpha_strength=args.alpha_strength,
            )
        )
    from engine.validate import ValidationPolicy
    from feeds.replay import ColumnMap, FileReplay

    if not args.data.exists():
        raise SystemExit(f"nextick: --data {args.data}: no such file")
    template = Instrument(
        symbol=args.symbol or "TEMPLATE",
        venue=args.venue,
        tick_size=args.tick_size,
        lot_size=args.lot_size,
        calendar=args.calendar or "24x7",
        gap_ns=int(args.gap_s * SECOND_NS),
    )
    return FileReplay(
        args.data,
        columns=ColumnMap.parse(args.columns) if args.columns else None,
        template=template,
        symbol=args.symbol,
        ts_unit=args.ts_unit,
        ts_format=args.ts_format,
        tz=args.tz,
        has_header=not args.no_header,
        policy=ValidationPolicy.parse(args.policy),
    )


def cmd_backtest(args: argparse.Namespace) -> int:
    from engine.backtest import BacktestConfig, compare, run_backtest
    from engine.progress import Progress
    from engine.report import _finite_json, format_summary, summary_dict, write_outputs

    def config_for(strategy: str, params: dict[str, Any]) -> BacktestConfig:
        return BacktestConfig(
            strategy=strategy,
            strategy_params=params,
            interval=args.interval,
            latency_ns=args.latency_ns,
            fee_bps=args.fee_bps,
            fee_per_fill=args.fee_per_fill,
            size_cap=args.size_cap,
            cancel_remainder=args.cancel_remainder,
            flatten_at_close=args.flatten_at_close,
            flatten_lead_ns=int(args.flatten_lead_s * SECOND_NS),
            initial_capital=args.capital,
            bar_ns=int(args.bar_s * SECOND_NS),
            risk_free_rate=args.risk_free_rate,
            warmup_ticks=args.warmup_ticks,
        )

    runs = [(args.strategy, dict(args.param))]
    if args.compare:
        runs.append((args.compare, {}))
    results = []
    for name, params in runs:
        source = _source(args)
        progress = Progress(f"backtest {name}", enabled=False if args.no_progress or args.json else None,
                            total=getattr(source, "expected_rows", None))
        try:
            results.append(run_backtest(source, config_for(name, params), on_progress=progress.update))
        finally:
            progress.close()
    jk = compare(results[0], results[1]) if len(results) == 2 else None
    if args.json:
        print(json.dumps(_finite_json([summary_dict(r, jk) for r in results]), indent=2))
    else:
        print(format_summary(results, jk))
    if args.out:
        paths = write_outputs(args.out, results, jk)
        if not args.json:
            print(f"wrote {len(paths)} files to {args.out}/")
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
