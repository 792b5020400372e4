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

  nextick backtest --strategy ssm --compare momentum --oracle --alpha-strength 3     (make demo)

Strategies: momentum, mean_reversion, buy_hold, ssm (= ssm_threshold: the packaged SSM model or
--model FILE), none (built into the C++ loop), or any Python class
"package.module:Class" subclassing strategies.base.Strategy (--param values go to its constructor).
Fills happen at the first tick of the same instrument strictly after decision time + --latency-ns:
buys at the ask, sells at the bid.
"""


TRAIN_EPILOG = """\
examples:
  nextick train --out runs/ssm                         synthetic market, 1 s ticks, horizon 10
  nextick train --data quotes.parquet --calendar XNYS --horizon 30 --out runs/spy
  nextick backtest --strategy ssm --model runs/ssm/model.safetensors --compare momentum

The packaged default model is made by the command in README.md ("Default model").
"""


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param wants key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """Data, instrument and synthetic-market options: the same for every command that reads quotes."""
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
    src.add_argument("--ts-unit", default="auto", choices=["auto", "s", "ms", "us", "ns"], help="epoch timestamp unit (default: detect)")
    src.add_argument("--ts-format", metavar="FMT", help='text timestamps, strptime format, e.g. "%%Y%%m%%d %%H%%M%%S%%f"')
    src.add_argument("--tz", default="UTC", help="time zone of text timestamps (IANA name, default UTC)")
    src.add_argument("--policy", default="quarantine", metavar="POLICY",
                     help="bad rows: 'quarantine' (count and skip, default), 'reject' (stop with file:line), "
                     "or per rule, e.g. crossed=reject,duplicate=quarantine")
    inst = p.add_argument_group("instruments (file data)")
    inst.add_argument("--venue", default="FILE", help="venue name recorded with the instruments")
    inst.add_argument("--tick-size", type=float, default=0.01, help="price increment (default 0.01)")
    inst.add_argument("--lot-size", type=float, default=1.0, help="size increment; positions are whole lots (default 1)")
    inst.add_argument("--calendar", default=None,
                      help="session calendar: 24x7, XNYS, CME, FX or 'HH:MM-HH:MM Zone Days' (default: 24x7 for files, "
                      "XNYS for the synthetic market)")
    inst.add_argument("--gap-s", type=float, default=60.0, help="silence inside a session that resets state (default 60 s)")
    inst.add_argument("--warmup-ticks", type=int, default=None,
                      help="ticks after a reset before positions may open, for every instrument (default: 50)")
    syn = p.add_argument_group("synthetic market")
    syn.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    syn.add_argument("--n-instruments", type=int, default=3, help="number of instruments (default 3)")
    syn.add_argument("--n-sessions", type=int, default=5, help="number of sessions (default 5)")
    syn.add_argument("--quote-rate-hz", type=float, default=10.0, help="mean quotes per second per instrument (default 10)")
    syn.add_argument("--alpha-strength", type=float, default=1.0, help="strength of the planted predictable component (default 1)")
    syn.add_argument("--start", default="2024-01-02", help="first local date of the synthetic sessions (default 2024-01-02)")


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
    _add_source_args(b)
    strat = b.add_argument_group("strategy")
    strat.add_argument("--strategy", default="momentum",
                       help="momentum | mean_reversion | buy_hold | ssm (= ssm_threshold) | none | package.module:Class")
    strat.add_argument("--model", metavar="FILE",
                       help="SSM weights (model.safetensors from `nextick train`); default: the packaged model")
    strat.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                       help="strategy parameter (repeatable), e.g. fast_span=20")
    strat.add_argument("--compare", metavar="STRATEGY",
                       help="also run this strategy (default parameters) on the same data and test the Sharpe difference")
    strat.add_argument("--oracle", action="store_true",
                       help="synthetic market only: also run the threshold rule on the true expected return, the ceiling")
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

    t = sub.add_parser(
        "train",
        help="train the SSM signal on replayed ticks and export model.safetensors",
        description="Replay quotes (synthetic by default, or any file `backtest` reads) through the engine, cut "
        "them into sessions at every reset, split by time into train/validation/test, train the SSM "
        "from zero state per session with early stopping on validation, and write model.safetensors "
        "plus training_report.json/.md (loss curves, information coefficient).",
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
    mo.add_argument("--kind", default="mamba2", choices=["mamba2", "s4d"], help="Mamba-2 selective SSM or the S4D LTI baseline")
    mo.add_argument("--discretization", default="zoh", choices=["zoh", "bilinear"], help="s4d only (default zoh)")
    mo.add_argument("--d-model", type=int, default=64, help="width of the residual stream (default 64)")
    mo.add_argument("--n-layers", type=int, default=2, help="SSM blocks (default 2)")
    mo.add_argument("--d-state", type=int, default=16, help="state size per channel (default 16)")
    mo.add_argument("--headdim", type=int, default=32, help="mamba2 head width; d_inner = 2 * d_model (default 32)")
    t.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR", help="output folder (default runs/train)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
    return p


def _source(args: argparse.Namespace, horizon_s: float | None = None):
    """The quote source the options describe. ``horizon_s`` sets the synthetic oracle's horizon
    (it changes only the exposed expected returns, not the quotes)."""
    from engine.instrument import Instrument

    if args.data is None:
        from feeds.synthetic import SyntheticConfig, SyntheticMarket

        extra = {} if horizon_s is None else {"horizon_s": horizon_s}
        return SyntheticMarket(
            SyntheticConfig(
                **extra,
                n_instruments=args.n_instruments,
                n_sessions=args.n_sessions,
                calendar=args.calendar or "XNYS",
                seed=args.seed,
                quote_rate_hz=args.quote_rate_hz,
                alpha_strength=args.alpha_strength,
                start=args.start,
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
            model=args.model,
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
    if args.oracle:
        results.append(_oracle_run(args, config_for("oracle", {}), results[0]))
    if args.json:
        print(json.dumps(_finite_json([summary_dict(r, jk) for r in results]), indent=2))
    else:
        print(format_summary(results, jk))
    if args.out:
        paths = write_outputs(args.out, results, jk)
        if not args.json:
            print(f"wrote {len(paths)} files to {args.out}/")
    return 0


def _oracle_run(args: argparse.Namespace, config, first):
    """The ssm_threshold rule fed the synthetic market's true expected return: what a perfect signal
    would have made under the same fills and fees."""
    from engine.backtest import run_backtest
    from strategies.oracle import OracleThreshold

    from engine.model.weights import load_model
    from strategies.builtin import builtin_spec

    if args.data is not None:
        raise ValueError("--oracle needs the synthetic market (its expected returns are known); drop --data")
    # The same horizon and threshold as the SSM run it bounds.
    model = load_model(args.model)
    tick_s = {"1s": 1.0, "100ms": 0.1}.get(args.interval, 1.0)
    params = dict(args.param) if args.strategy in ("ssm", "ssm_threshold") else {}
    threshold = builtin_spec("ssm_threshold", params).threshold_bps
    source = _source(args, horizon_s=model.signal.horizon_ticks * tick_s)
    return run_backtest(source, config, strategy=OracleThreshold(source, threshold_bps=threshold))


def cmd_train(args: argparse.Namespace) -> int:
    from engine.model.config import SSMConfig
    from engine.model.dataset import collect_segments, split_by_time
    from engine.progress import Progress

    try:
        import torch
    except ImportError:
        raise SystemExit("nextick train needs torch: pip install 'nextick[train]' (or torch==2.13.0)") from None
    from engine.model.train import TrainConfig, export, train, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        horizon=args.horizon, interval=args.interval, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        patience=args.patience, seed=args.train_seed, val_frac=args.val_frac, test_frac=args.test_frac,
    )
    model_config = SSMConfig(
        kind=args.kind, discretization=args.discretization, d_model=args.d_model, n_layers=args.n_layers,
        d_state=args.d_state, headdim=args.headdim,
    )
    source = _source(args)
    show = False if args.no_progress else None
    progress = Progress("replay", enabled=show, total=getattr(source, "expected_rows", None))
    try:
        segments = collect_segments(source, interval=args.interval, warmup_ticks=args.warmup_ticks, on_progress=progress.update)
    finally:
        progress.close()
    split = split_by_time(segments, args.val_frac, args.test_frac)
    progress = Progress("train", enabled=show, unit="steps",
                        total=args.epochs * -(-len(split.train) // args.batch_size))
    try:
        result = train(split, model_config, config, on_step=lambda n, note: (setattr(progress, "note", note), progress.update(n)))
    finally:
        progress.close()
    data_desc = (
        {"source": "synthetic", "seed": args.seed, "n_instruments": args.n_instruments, "n_sessions": args.n_sessions,
         "start": args.start, "alpha_strength": args.alpha_strength, "calendar": args.calendar or "XNYS"}
        if args.data is None else {"source": str(args.data)}
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.safetensors"
    export(result, model_path, config, data_desc)
    paths = [model_path, *write_report(result, args.out, config, model_config, data_desc)]
    s = result.scores
    print(f"trained {model_config.kind}: best epoch {result.best_epoch}/{len(result.history)}; "
          f"IC val {s['val'].ic:.4f} test {s['test'].ic:.4f}; rank IC val {s['val'].rank_ic:.4f} test {s['test'].rank_ic:.4f}")
    for path in paths:
        print(f"wrote {path}")
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
