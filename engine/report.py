"""Run summary: the table printed after a backtest, and the files written by ``--out``."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine import _core
from engine.backtest import RESET_REASONS, BacktestResult
from engine.domain.latency_model import format_latency_ns
from engine.domain.timestamps import DAY_NS, HOUR_NS, MINUTE_NS, format_ns_seconds
from engine.metrics import MIN_ANNUALIZE_DAYS, JobsonKorkie, Metrics

_RULE = "-" * 78


# Annualized figures exist only for long runs (engine.metrics.MIN_ANNUALIZE_DAYS); past these
# magnitudes they print in e-notation so the table's columns stay aligned.
_BIG_PCT = 1e5
_BIG_NUM = 1e6
# Enough of the fills' SHA-256 to tell runs apart by eye; summary.json holds all of it.
FILL_HASH_CHARS = 12
# The key of mids.parquet's schema metadata that holds mids_table's decimation record.
MIDS_METADATA_KEY = "nextick.mids"


def _pct(x: float, sign: str = "+") -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x * 100:{sign}.1e}%" if abs(x * 100) >= _BIG_PCT else f"{x * 100:{sign}.2f}%"


def _num(x: float, fmt: str = ".2f") -> str:
    if not math.isfinite(x):
        return "n/a"
    return format(x, ".2e") if abs(x) >= _BIG_NUM else format(x, fmt)


def _duration(ns: int) -> str:
    if ns >= DAY_NS:
        return f"{ns / DAY_NS:.1f}d"
    if ns >= HOUR_NS:
        return f"{ns / HOUR_NS:.1f}h"
    return f"{ns / MINUTE_NS:.1f}m"


def annualized_rows(m: Metrics) -> list[tuple[str, str]]:
    """The five annualized figures; each says why it is missing where the run is too short."""
    rows = [
        ("annualized return", _pct(m.annualized_return)),
        ("volatility (ann.)", _pct(m.volatility, "")),
        ("Sharpe (ann.)", _num(m.sharpe)),
        ("Sortino (ann.)", _num(m.sortino)),
        ("Calmar", _num(m.calmar)),
    ]
    if m.annualized:
        return rows
    return [(label, f"n/a: {m.n_days}d < {MIN_ANNUALIZE_DAYS}") for label, _ in rows]


def daily_rows(m: Metrics) -> list[tuple[str, str]]:
    return [
        ("days", f"{m.n_days:,}"),
        ("mean daily return", _pct(m.mean_daily_return)),
        ("daily volatility", _pct(m.daily_volatility, "")),
        ("daily Sharpe (not ann.)", _num(m.daily_sharpe)),
        ("best day", _pct(m.best_day)),
        ("worst day", _pct(m.worst_day)),
    ]


def activity_rows(r: BacktestResult) -> list[tuple[str, str]]:
    m = r.metrics
    return [
        ("max drawdown", _pct(-m.max_drawdown)),
        ("max DD duration", _duration(m.max_drawdown_duration_ns)),
        ("turnover (x capital)", _num(m.turnover, ".1f")),
        ("hit rate", _pct(m.hit_rate, "")),
        ("trades", f"{m.trade_count:,}"),
        ("fills", f"{m.fill_count:,}"),
        ("fees paid", f"{m.fees_paid:,.2f}"),
        ("exposure (avg gross/equity)", _num(m.exposure)),
        ("time in market", _pct(m.time_in_market, "")),
        ("fills SHA-256", r.fill_hash()[:FILL_HASH_CHARS]),
    ]


def _model_text(d: dict[str, Any]) -> str:
    return f"{d['model']} (p50 {format_latency_ns(d['p50_ns'])}, p99 {format_latency_ns(d['p99_ns'])})"


def order_latency_text(r: BacktestResult) -> str:
    """The order-latency model of the run, for the execution line."""
    order = (r.latency or {}).get("order")
    if not order or order.get("model") == "constant":
        return f"latency {r.config.latency_ns:,} ns"
    return f"order latency {_model_text(order)}, seed {order['seed']}"


def feed_latency_text(feed: dict[str, Any]) -> str:
    """The feed-latency model of the run and what restamping did."""
    text = (f"receive times redrawn from {_model_text(feed)}, seed {feed['seed']}; {feed['rows']:,} rows, "
            f"{feed['synthetic_kept']:,} without venue time kept as recorded, {feed['clamped']:,} clamped")
    if feed["clamped"]:
        text += f" (up to {format_latency_ns(feed['max_clamp_ns'])}: raise --feed-hold-s above {format_latency_ns(feed['hold_ns'])})"
    return text


def _metric_table(results: list[BacktestResult]) -> list[str]:
    """Per-day figures lead, and the annualized ones follow, unless a run is long enough to
    annualize: then they lead. When no run is, one line says so instead of five rows of n/a."""
    names = [x.strategy for x in results]
    width = max(14, *(len(n) + 2 for n in names))
    long_enough = any(x.metrics.annualized for x in results)
    columns = []
    for x in results:
        m = x.metrics
        rows = [("total return", _pct(m.total_return))]
        rows += annualized_rows(m) + daily_rows(m) if long_enough else daily_rows(m)
        columns.append(rows + activity_rows(x))
    lines = [f"{'metric':<28}" + "".join(f"{n:>{width}}" for n in names)]
    for k, (label, _) in enumerate(columns[0]):
        lines.append(f"{label:<28}" + "".join(f"{c[k][1]:>{width}}" for c in columns))
    if not long_enough:
        days = sorted({x.metrics.n_days for x in results})
        span = f"{days[0]:,}" if len(days) == 1 else f"{days[0]:,}-{days[-1]:,}"
        lines.append(
            f"{'annualized':<28}n/a: {span} days < {MIN_ANNUALIZE_DAYS} "
            "(return, volatility, Sharpe, Sortino, Calmar)"
        )
    return lines


def format_summary(results: list[BacktestResult], jk: JobsonKorkie | None = None) -> str:
    r = results[0]
    src = r.source
    lines = [
        f"nextick backtest: {len(r.instruments)} instruments ({', '.join(r.instruments[:6])}"
        f"{', ...' if len(r.instruments) > 6 else ''}), source {src.source}",
    ]
    if len(r.equity_ts_ns):
        lines.append(f"period       {format_ns_seconds(int(r.equity_ts_ns[0]))} .. {format_ns_seconds(int(r.equity_ts_ns[-1]))} UTC")
    unit = f", timestamps in {src.ts_unit} ({'detected' if src.ts_unit_detected else 'given'})" if src.ts_unit else ""
    lines += [
        f"data         {r.quotes_in:,} quotes -> {r.ticks:,} ticks (interval {r.config.interval}){unit}",
        f"days         {r.day_basis}; annualized figures need {MIN_ANNUALIZE_DAYS} days",
        f"execution    {order_latency_text(r)}, fee {r.config.fee_bps:g} bps"
        f"{'' if r.config.maker_fee_bps is None else f' (maker {r.config.maker_fee_bps:g})'}"
        f"{f' + {r.config.fee_per_fill:g}/fill' if r.config.fee_per_fill else ''}, fills at the next tick"
        f"{', size-capped' if r.config.size_cap else ''}{', flatten at close' if r.config.flatten_at_close else ''}"
        f", resting limits fill on a {'touch' if r.config.queue == 'touch' else 'trade-through'}",
    ]
    if (r.latency or {}).get("feed"):
        lines.append(f"feed         {feed_latency_text(r.latency['feed'])}")
    for x in results:
        if x.model is not None:
            lines.append(f"model        {x.strategy}: {x.model}")
    if any(x.strategy == "oracle" for x in results):
        lines.append("oracle       the same threshold rule on the true expected return (synthetic market): the ceiling")
    lines.append(_RULE)
    lines += _metric_table(results)
    if jk is not None:
        names = [x.strategy for x in results]
        lines.append(
            f"Jobson-Korkie (Memmel) {names[0]} vs {names[1]}: z = {_num(jk.z)}, p = {_num(jk.p_value, '.3f')} "
            f"over {jk.n:,} bars"
        )
    for x in results:
        if x.ruined_at_ns is not None:
            lines.append(
                f"CAPITAL EXHAUSTED: {x.strategy} equity reached {x.equity[x.equity <= 0][0]:,.2f} at "
                f"{format_ns_seconds(x.ruined_at_ns)} UTC; its metrics cover the run until then. Lower the notional or fees."
            )
    lines.append(_RULE)
    c = r.counters
    slip = float(np.mean(r.fills["slippage_bps"])) if len(r.fills) else float("nan")
    lines += [
        f"orders       {c['orders']:,} sent, {c['orders_replaced']:,} replaced; cancelled: "
        f"{c['cancelled_session_close']:,} at close, {c['cancelled_reset']:,} on reset, "
        f"{c['cancelled_remainder']:,} remainders, {c['cancelled_end']:,} at end",
        *(
            [
                f"explicit     {c['explicit_orders']:,} limit/stop orders accepted, {c['orders_rejected']:,} rejected, "
                f"{c['explicit_cancelled']:,} cancelled; {c['maker_fills']:,} fills resting (maker)"
            ]
            if c["explicit_orders"] or c["orders_rejected"]
            else []
        ),
        f"fills        {len(r.fills):,}, mean slippage vs decision mid {_num(slip)} bps"
        + (f", flatten missed {c['flatten_missed']:,}" if r.config.flatten_at_close else ""),
        "resets       " + ", ".join(f"{k} {c['resets'][k]:,}" for k in RESET_REASONS),
        *(
            [
                f"rebalances   {c['rebalances']:,}; targets skipped {c['targets_skipped']:,} "
                "(instrument not tradeable: out of session, unpriced or stale)"
            ]
            if c["rebalances"]
            else []
        ),
        f"sessions     {c['ticks_in_session']:,} ticks in session, {c['ticks_outside_session']:,} outside (ignored)",
        "quarantined  "
        + (
            ", ".join(f"{k} {v:,}" for k, v in sorted(src.quarantined.items())) + f" (of {src.rows_read:,} rows read)"
            if src.quarantined
            else f"none (of {src.rows_read:,} rows read)"
        ),
    ]
    if src.skipped:
        lines.append("skipped      " + ", ".join(f"{k} {v:,}" for k, v in src.skipped.items()) + " (not quotes; by design)")
    lines += [
        f"speed        {r.quotes_per_s:,.0f} quotes/s end to end ({r.wall_s:.2f} s); "
        f"core loop {r.core_ticks_per_s:,.0f} ticks/s",
    ]
    return "\n".join(lines)


def _structured_table(arr: np.ndarray, symbols: list[str], extra: dict[str, Any] | None = None) -> pa.Table:
    cols = {name: arr[name] for name in arr.dtype.names}
    if "instrument" in cols:
        sym = np.asarray(symbols, dtype=object)
        cols["symbol"] = sym[cols["instrument"].astype(np.int64)] if len(arr) else np.empty(0, dtype=object)
    cols.update(extra or {})
    return pa.table({k: pa.array(v) for k, v in cols.items()})


def pnl_by_instrument(r: BacktestResult) -> dict[str, dict[str, float]]:
    """Per instrument: cash from its fills (fees included) plus its final position at its final
    mark. Instruments interact only through cash, so these add up to the run's final equity less
    the initial capital."""
    n = len(r.instruments)
    inst = r.fills["instrument"].astype(np.int64)
    flow = np.bincount(inst, weights=-(r.fills["px"] * r.fills["sz"]) - r.fills["fee"], minlength=n)[:n]
    fees = np.bincount(inst, weights=r.fills["fee"], minlength=n)[:n]
    count = np.bincount(inst, minlength=n)[:n]
    pos = np.zeros(n)
    pos[: len(r.final_positions)] = r.final_positions[:n]
    mark = np.zeros(n)
    mark[: len(r.final_marks)] = r.final_marks[:n]
    # A flat instrument's PnL is its cash alone, even where it never had a mark.
    held = np.where(pos != 0, pos * mark, 0.0)
    return {
        sym: {"pnl": float(flow[i] + held[i]), "fees": float(fees[i]), "fills": int(count[i]),
              "final_position": float(pos[i]), "final_mark": float(mark[i])}
        for i, sym in enumerate(r.instruments)
    }


def mids_table(r: BacktestResult) -> pa.Table:
    """The decimated mids (engine.mid_trace) with, in the Parquet metadata, how they were decimated:
    per symbol the ticks seen and the stride kept, so a chart can say what it shows."""
    assert r.mids is not None and r.mid_ticks is not None and r.mid_stride is not None
    n = len(r.instruments)
    ticks, stride = np.zeros(n, np.int64), np.ones(n, np.int64)
    ticks[: len(r.mid_ticks)], stride[: len(r.mid_stride)] = r.mid_ticks[:n], r.mid_stride[:n]
    meta = {"ticks": dict(zip(r.instruments, ticks.tolist())), "stride": dict(zip(r.instruments, stride.tolist())),
            "rule": "every stride-th tick of each instrument, every tick with a fill, and its last tick"}
    t = _structured_table(r.mids, r.instruments)
    return t.replace_schema_metadata({MIDS_METADATA_KEY: json.dumps(meta)})



def summary_dict(r: BacktestResult, jk: JobsonKorkie | None = None) -> dict[str, Any]:
    d = {
        "strategy": r.strategy,
        "instruments": r.instruments,
        "config": msgspec.to_builtins(r.config),
        "metrics": msgspec.to_builtins(r.metrics),
        "counters": r.counters,
        "source": msgspec.to_builtins(r.source),
        "quotes_in": r.quotes_in,
        "ticks": r.ticks,
        "wall_s": r.wall_s,
        "core_s": r.core_s,
        "quotes_per_s": r.quotes_per_s,
        "fill_hash": r.fill_hash(),
        "model": r.model,
        "latency": r.latency,
        # What the daily metrics call a day, and how many a run needs before its annualized
        # metrics are given (null below that, with metrics.annualized false).
        "day_basis": r.day_basis,
        "annualize_min_days": MIN_ANNUALIZE_DAYS,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "core": _core.build_info()},
        "pnl_by_instrument": pnl_by_instrument(r),
    }
    if jk is not None:
        d["jobson_korkie"] = msgspec.to_builtins(jk)
    return d


def finite_json(x: Any) -> Any:
    """``x`` with every NaN or infinite float replaced by None: JSON has no such numbers."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_json(v) for v in x]
    return x


def write_outputs(out_dir: Path, results: list[BacktestResult], jk: JobsonKorkie | None = None) -> list[Path]:
    """fills, trades, resets, equity and, where the run recorded them, the decimated mids as
    Parquet, the summary as JSON; one subfolder per strategy when several ran."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    summaries = []
    for r in results:
        d = out_dir / r.strategy if len(results) > 1 else out_dir
        d.mkdir(parents=True, exist_ok=True)
        reason = np.asarray(RESET_REASONS, dtype=object)
        tables = {
            "fills": _structured_table(r.fills, r.instruments),
            "trades": _structured_table(r.trades, r.instruments),
            "resets": _structured_table(
                r.resets, r.instruments, {"reason_name": reason[r.resets["reason"].astype(np.int64)] if len(r.resets) else np.empty(0, object)}
            ),
            "equity": pa.table({"ts_ns": r.equity_ts_ns, "equity": r.equity, "gross_exposure": r.gross_exposure}),
        }
        if r.mids is not None:  # recorded on request (run_backtest(record_mids=True), as --out does)
            tables["mids"] = mids_table(r)
        for name, t in tables.items():
            pq.write_table(t, d / f"{name}.parquet")
            written.append(d / f"{name}.parquet")
        s = summary_dict(r, jk)
        summaries.append(s)
        (d / "summary.json").write_text(json.dumps(finite_json(s), indent=2))
        written.append(d / "summary.json")
    return written
