"""``nextick report RUN_DIR``: a run's figures as one self-contained HTML file, RUN_DIR/report.html.

What RUN_DIR may hold, each part drawn where present and absent from the page where not:

- a backtest's ``--out`` folder (engine/report.write_outputs): ``summary.json`` with fills, trades,
  resets, equity and mids ``.parquet`` beside it, or one such subfolder per strategy. Per strategy:
  equity, drawdown, fills over the mid per instrument, resets on a timeline, PnL per instrument
  and the key metrics;
- ``study.json`` (format ``nextick.study``, version 1): per model the priced-risk line (PML), total
  against priced risk, the rolling PML slope, the signal's decay by lag and a CAPM table;
- ``results.parquet`` from a sweep, one row per configuration: mean against std of daily return and
  the ten best configurations;
- ``compare.json`` from ``nextick compare --out`` (format ``nextick.compare``, version 1; its runs are
  the subfolders above): the pairwise Jobson-Korkie z of daily Sharpe ratios as a heatmap and a
  table with p-values (``*`` where p < 0.05), and the sub-period table.

plotly draws the figures; its plotly.js is inlined once, so the file opens offline and nothing
else is fetched. The page holds no time of writing and no absolute path, and every figure has a
fixed id: the same RUN_DIR gives the same bytes.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.compare import COMPARE_FORMAT, COMPARE_VERSION, SIGNIFICANCE
from engine.report import MIDS_METADATA_KEY

INSTALL_HINT = "pip install 'nextick[report]'"
REPORT_NAME = "report.html"
STUDY_FORMAT, STUDY_VERSION = "nextick.study", 1
# Equity samples drawn per strategy: above this the curve is thinned evenly (its drawdown is
# computed on every sample first, and the deepest point is always kept).
MAX_EQUITY_POINTS = 20_000
# Per-instrument fills charts drawn per strategy; a run over hundreds of instruments would
# otherwise make a page no browser scrolls. The page says how many were left out.
MAX_INSTRUMENT_CHARTS = 20
TOP_CONFIGS = 10
_NS_PER_MS = 1_000_000
_FIG_HEIGHT = 380
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


class ReportInputError(ValueError):
    """A file in RUN_DIR cannot be used; the message names it and what to do next."""


def _plotly():
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
        import plotly.offline
    except ImportError as e:
        raise ImportError(f"nextick report draws with plotly, which is not installed: {INSTALL_HINT} ({e})") from None
    return go, pio, plotly.offline.get_plotlyjs


# ------------------------------------------------------------------------------------------ input


def _read_parquet(path: Path, required: Iterable[str] = (), hint: str = "") -> pa.Table:
    try:
        t = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ReportInputError(f"{path}: not a readable Parquet file ({e}); {hint or 'write it again or remove it'}") from None
    missing = [c for c in required if c not in t.column_names]
    if missing:
        raise ReportInputError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(has {', '.join(t.column_names) or 'none'}); {hint or 'write it again or remove it'}"
        )
    return t


def _read_json(path: Path, hint: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportInputError(f"{path}: not readable JSON ({e}); {hint}") from None


def _col(t: pa.Table, name: str, dtype: Any = np.float64) -> np.ndarray:
    return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=dtype)


def strategy_dirs(run_dir: Path) -> list[Path]:
    """The backtest folders in RUN_DIR: RUN_DIR itself when it holds a summary.json, else each
    subfolder that does (one per strategy when several ran), by name."""
    if (run_dir / "summary.json").is_file():
        return [run_dir]
    return sorted(d for d in run_dir.iterdir() if d.is_dir() and (d / "summary.json").is_file())


# ------------------------------------------------------------------------------------------ page


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _f(x: Any) -> float:
    """A JSON number, or nan for null and anything else: nulls are missing values, not zeros."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def _fmt(x: Any, kind: str = "num") -> str:
    if isinstance(x, str):
        return x
    v = _f(x)
    if not math.isfinite(v):
        return "n/a"
    if kind == "pct":  # a return: signed
        return f"{v * 100:+.2f}%"
    if kind == "share":  # a volatility, a rate, a share of time
        return f"{v * 100:.2f}%"
    if kind == "loss":  # a drawdown, held as a positive depth
        return f"{-v * 100:.2f}%"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "money":
        return f"{v:,.2f}"
    return f"{v:.4g}"


def _ms(ts_ns: np.ndarray) -> np.ndarray:
    """ns since the epoch as ms since the epoch: what a plotly date axis reads as UTC time."""
    return np.asarray(ts_ns, dtype=np.int64) / _NS_PER_MS


def _thin(n: int, limit: int, keep: Iterable[int] = ()) -> np.ndarray:
    """Indices of an even thinning of n points to at most ~limit (first and last kept), plus ``keep``."""
    if n <= limit:
        return np.arange(n)
    step = -(-n // limit)
    idx = np.r_[np.arange(0, n, step), n - 1, np.fromiter(keep, np.int64)]
    return np.unique(idx)


class _Page:
    def __init__(self) -> None:
        self.go, self.pio, self.plotlyjs = _plotly()
        self.parts: list[str] = []
        self.figure_ids: list[str] = []
        self.nav: list[tuple[str, str]] = []

    def section(self, sid: str, title: str) -> None:
        if self.nav:
            self.parts.append("</section>")
        self.nav.append((sid, title))
        self.parts.append(f'<section id="{sid}"><h2>{html.escape(title)}</h2>')

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, tid: str, headers: list[str], rows: list[list[str]], caption: str = "") -> None:
        e = html.escape
        cap = f"<caption>{e(caption)}</caption>" if caption else ""
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        self.parts.append(f'<table id="{tid}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')

    def figure(self, div_id: str, fig: Any, title: str, subtitle: str = "", date_x: bool = False) -> None:
        text = f"{html.escape(title)}<br><sup>{html.escape(subtitle)}</sup>" if subtitle else html.escape(title)
        fig.update_layout(title={"text": text}, template="plotly_white", height=_FIG_HEIGHT,
                          margin={"l": 70, "r": 30, "t": 70 if subtitle else 50, "b": 50},
                          legend={"orientation": "h", "y": -0.18})
        if date_x:
            fig.update_xaxes(type="date")
        self.figure_ids.append(div_id)
        # A fixed div id: plotly's default is a random one, and the same RUN_DIR must give the same bytes.
        self.parts.append(self.pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                                           config=_PLOT_CONFIG, validate=True))

    def render(self, title: str) -> str:
        if self.nav:
            self.parts.append("</section>")
        nav = "".join(f'<li><a href="#{sid}">{html.escape(t)}</a></li>' for sid, t in self.nav)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            # plotly.js itself, once, so the page needs no network.
            f"<script type=\"text/javascript\">{self.plotlyjs()}</script></head>\n<body>"
            f"<h1>{html.escape(title)}</h1><nav><ul>{nav}</ul></nav>\n" + "\n".join(self.parts) + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222}"
    "h2{border-bottom:1px solid #ccc;margin-top:2em}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
    "td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:bold;padding:4px 0}"
    ".note{color:#555;font-size:90%}nav ul{columns:3}"
)


# ------------------------------------------------------------------------------------------ backtest

_METRIC_ROWS = [
    ("total return", "total_return", "pct"),
    ("days", "n_days", "int"),
    ("mean daily return", "mean_daily_return", "pct"),
    ("daily volatility", "daily_volatility", "share"),
    ("daily Sharpe (not ann.)", "daily_sharpe", "num"),
    ("best day", "best_day", "pct"),
    ("worst day", "worst_day", "pct"),
    ("max drawdown", "max_drawdown", "loss"),
    ("hit rate", "hit_rate", "share"),
    ("trades", "trade_count", "int"),
    ("fills", "fill_count", "int"),
    ("fees paid", "fees_paid", "money"),
    ("turnover (x capital)", "turnover", "num"),
    ("exposure (avg gross/equity)", "exposure", "num"),
    ("time in market", "time_in_market", "share"),
]
_ANNUALIZED_ROWS = [
    ("annualized return", "annualized_return", "pct"),
    ("volatility (ann.)", "volatility", "share"),
    ("Sharpe (ann.)", "sharpe", "num"),
    ("Sortino (ann.)", "sortino", "num"),
    ("Calmar", "calmar", "num"),
]
_RESET_SYMBOLS = {"SESSION_OPEN": "diamond", "GAP": "x", "RECONNECT": "triangle-up", "STALE": "square", "MANUAL": "star"}


def _metrics_table(page: _Page, sid: str, s: dict[str, Any]) -> None:
    m = s.get("metrics") or {}
    rows = [[label, _fmt(m.get(key), kind)] for label, key, kind in _METRIC_ROWS]
    if m.get("annualized"):
        rows += [[label, _fmt(m.get(key), kind)] for label, key, kind in _ANNUALIZED_ROWS]
    else:
        need = s.get("annualize_min_days", "enough")
        rows.append(["annualized figures", f"n/a: {_fmt(m.get('n_days'), 'int')} days < {need}"])
    cfg = s.get("config") or {}
    rows += [
        ["fee (bps)", _fmt(cfg.get("fee_bps"))],
        ["latency (ns)", _fmt(cfg.get("latency_ns"), "int")],
        ["interval", str(cfg.get("interval", "n/a"))],
        ["initial capital", _fmt(cfg.get("initial_capital"), "money")],
        ["resets", ", ".join(f"{k} {v:,}" for k, v in ((s.get("counters") or {}).get("resets") or {}).items()) or "n/a"],
        ["fills SHA-256", str(s.get("fill_hash", "n/a"))[:12]],
    ]
    page.table(f"{sid}-metrics", ["metric", str(s.get("strategy", ""))], rows, caption="key metrics (summary.json)")


def _equity_figures(page: _Page, sid: str, d: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = d / "equity.parquet"
    if not path.is_file():
        page.note(f"{path.name} is missing: no equity or drawdown chart.")
        return None
    t = _read_parquet(path, ("ts_ns", "equity"), "write it again with `nextick backtest --out`")
    ts, eq = _col(t, "ts_ns", np.int64), _col(t, "equity")
    if len(eq) == 0:
        page.note(f"{path.name} is empty: no equity or drawdown chart.")
        return None
    peak = np.maximum.accumulate(np.where(np.isfinite(eq), eq, -np.inf))
    dd = np.where(peak > 0, eq / peak - 1.0, np.nan)
    trough = int(np.nanargmin(dd)) if np.isfinite(dd).any() else 0
    idx = _thin(len(eq), MAX_EQUITY_POINTS, keep=[trough])
    sub = f"every sample ({len(eq):,})" if len(idx) == len(eq) else f"{len(idx):,} of {len(eq):,} samples, evenly thinned for size"
    go = page.go
    fig = go.Figure(go.Scatter(x=_ms(ts[idx]), y=eq[idx], mode="lines", name="equity"))
    fig.update_yaxes(title_text="equity")
    page.figure(f"{sid}-equity", fig, "equity", sub, date_x=True)
    fig = go.Figure(go.Scatter(x=_ms(ts[idx]), y=dd[idx] * 100, mode="lines", fill="tozeroy", name="drawdown",
                               line={"color": "#d62728"}))
    fig.update_yaxes(title_text="drawdown from peak (%)")
    page.figure(f"{sid}-drawdown", fig, "drawdown", f"deepest {dd[trough] * 100:.2f}%; {sub}", date_x=True)
    return ts, eq


def _fills_figures(page: _Page, sid: str, d: Path, symbols: list[str]) -> None:
    hint = "write it again with `nextick backtest --out`"
    fills_path, mids_path = d / "fills.parquet", d / "mids.parquet"
    if not fills_path.is_file():
        page.note(f"{fills_path.name} is missing: no fills charts.")
        return
    f = _read_parquet(fills_path, ("instrument", "fill_ts", "px", "sz"), hint)
    f_inst, f_ts = _col(f, "instrument", np.int64), _col(f, "fill_ts", np.int64)
    f_px, f_sz = _col(f, "px"), _col(f, "sz")
    f_fee = _col(f, "fee") if "fee" in f.column_names else np.full(len(f_px), np.nan)
    mids = meta = None
    if mids_path.is_file():
        mids = _read_parquet(mids_path, ("ts_ns", "instrument", "mid"), hint)
        raw = (mids.schema.metadata or {}).get(MIDS_METADATA_KEY.encode())
        meta = json.loads(raw) if raw else None
        m_inst, m_ts, m_mid = _col(mids, "instrument", np.int64), _col(mids, "ts_ns", np.int64), _col(mids, "mid")
    else:
        page.note(f"{mids_path.name} is missing (backtests write it since the report existed): the fills are drawn "
                  "without the mid; run the backtest again with --out to have it.")
    n_inst = max(len(symbols), int(f_inst.max()) + 1 if len(f_inst) else 0)
    reset_ts, reset_inst = _resets(d)
    go = page.go
    for i in range(min(n_inst, MAX_INSTRUMENT_CHARTS)):
        sym = symbols[i] if i < len(symbols) else f"instrument {i}"
        traces = []
        sub = "no mid recorded"
        if mids is not None:
            mine = m_inst == i
            x, y = _ms(m_ts[mine]), m_mid[mine]
            # A reset (session open, gap) is a break in the market: the line stops there rather
            # than drawing a straight line across the night.
            cut = np.unique(np.searchsorted(m_ts[mine], reset_ts[reset_inst == i], side="left"))
            cut = cut[(cut > 0) & (cut < len(x))]
            x, y = np.insert(x, cut, x[cut]), np.insert(y, cut, np.nan)
            traces.append(go.Scatter(x=x, y=y, mode="lines", name="mid", connectgaps=False,
                                     line={"color": "#7f7f7f", "width": 1}))
            ticks = (meta or {}).get("ticks", {}).get(sym)
            stride = (meta or {}).get("stride", {}).get(sym)
            if ticks is not None and stride is not None:
                every = "every tick" if stride == 1 else f"every {stride:,}th tick"
                sub = f"mid: {int(mine.sum()):,} of {ticks:,} ticks drawn ({every}, each fill's tick and the last; decimated for size)"
            else:
                sub = f"mid: {int(mine.sum()):,} points from mids.parquet"
        for side, sel, symbol, color in (("buy", f_sz > 0, "triangle-up", "#2ca02c"), ("sell", f_sz < 0, "triangle-down", "#d62728")):
            sel = sel & (f_inst == i)
            if sel.any():
                traces.append(go.Scatter(
                    x=_ms(f_ts[sel]), y=f_px[sel], mode="markers", name=f"{side} ({int(sel.sum()):,})",
                    marker={"symbol": symbol, "color": color, "size": 7},
                    customdata=np.c_[np.abs(f_sz[sel]), f_fee[sel]],
                    hovertemplate="%{x}<br>px %{y}<br>size %{customdata[0]}<br>fee %{customdata[1]:.2f}",
                ))
        n_fills = int((f_inst == i).sum())
        page.figure(f"{sid}-fills-{i}", go.Figure(traces), f"{sym}: {n_fills:,} fills over the mid", sub, date_x=True)
    if n_inst > MAX_INSTRUMENT_CHARTS:
        page.note(f"{n_inst - MAX_INSTRUMENT_CHARTS:,} more instruments not drawn (the first {MAX_INSTRUMENT_CHARTS} are).")


def _resets(d: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ts, instrument) of the run's resets; none when resets.parquet is absent."""
    path = d / "resets.parquet"
    if not path.is_file():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = _read_parquet(path, ("ts", "instrument"), "write it again with `nextick backtest --out`")
    return _col(t, "ts", np.int64), _col(t, "instrument", np.int64)


def _resets_figure(page: _Page, sid: str, d: Path, symbols: list[str]) -> None:
    path = d / "resets.parquet"
    if not path.is_file():
        page.note(f"{path.name} is missing: no resets timeline.")
        return
    t = _read_parquet(path, ("ts", "instrument", "reason_name"), "write it again with `nextick backtest --out`")
    if t.num_rows == 0:
        page.note("no resets in this run.")
        return
    ts, inst = _col(t, "ts", np.int64), _col(t, "instrument", np.int64)
    reason = np.asarray(t.column("reason_name").to_pylist(), dtype=object)
    sym = np.asarray([symbols[i] if i < len(symbols) else f"instrument {i}" for i in inst], dtype=object)
    go = page.go
    traces = []
    for name in [*_RESET_SYMBOLS, *sorted(set(reason) - set(_RESET_SYMBOLS))]:
        sel = reason == name
        if sel.any():
            traces.append(go.Scatter(x=_ms(ts[sel]), y=sym[sel], mode="markers", name=f"{name} ({int(sel.sum()):,})",
                                     marker={"symbol": _RESET_SYMBOLS.get(name, "circle"), "size": 9}))
    fig = go.Figure(traces)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=sorted(set(sym)))
    page.figure(f"{sid}-resets", fig, "resets", f"{t.num_rows:,} resets by reason, per instrument", date_x=True)


def _pnl_figure(page: _Page, sid: str, s: dict[str, Any]) -> None:
    pnl = s.get("pnl_by_instrument")
    if not pnl:
        page.note("summary.json has no pnl_by_instrument (written by backtests since the report existed): "
                  "run the backtest again with --out for the PnL per instrument.")
        return
    syms = list(pnl)
    values = [_f(pnl[k].get("pnl")) for k in syms]
    go = page.go
    fig = go.Figure(go.Bar(x=syms, y=values, name="PnL",
                           marker={"color": ["#2ca02c" if v >= 0 else "#d62728" for v in values]},
                           customdata=[[_f(pnl[k].get("fees")), _f(pnl[k].get("fills"))] for k in syms],
                           hovertemplate="%{x}<br>PnL %{y:,.2f}<br>fees %{customdata[0]:,.2f}<br>fills %{customdata[1]}"))
    fig.update_yaxes(title_text="PnL")
    total = sum(v for v in values if math.isfinite(v))
    page.figure(f"{sid}-pnl", fig, "PnL per instrument",
                f"total {total:,.2f}: each instrument's fills' cash, fees included, plus its final position at its mark")


def _backtest_section(page: _Page, d: Path, sid: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    s = _read_json(d / "summary.json", "write it again with `nextick backtest --out`")
    if not isinstance(s, dict):
        raise ReportInputError(f"{d / 'summary.json'}: not a backtest summary (a JSON object); write it again with `nextick backtest --out`")
    name = str(s.get("strategy", d.name))
    symbols = [str(x) for x in s.get("instruments") or []]
    page.section(sid, f"backtest: {name}")
    _metrics_table(page, sid, s)
    curve = _equity_figures(page, sid, d)
    _fills_figures(page, sid, d, symbols)
    _resets_figure(page, sid, d, symbols)
    _pnl_figure(page, sid, s)
    return (name, *curve) if curve is not None else None


def _compare_figure(page: _Page, curves: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    go = page.go
    traces = []
    for name, ts, eq in curves:
        idx = _thin(len(eq), MAX_EQUITY_POINTS)
        traces.append(go.Scatter(x=_ms(ts[idx]), y=(eq[idx] / eq[0] - 1) * 100, mode="lines", name=name))
    fig = go.Figure(traces)
    fig.update_yaxes(title_text="return since start (%)")
    page.figure("compare-equity", fig, "strategies compared", "equity as return since each run's start", date_x=True)


# ------------------------------------------------------------------------------------------ study


def _study_section(page: _Page, path: Path) -> None:
    hint = "it should be the nextick.study JSON a study run writes; write it again or remove it"
    st = _read_json(path, hint)
    if not isinstance(st, dict) or st.get("format") != STUDY_FORMAT:
        raise ReportInputError(f"{path}: not a {STUDY_FORMAT} file (its \"format\" is "
                               f"{st.get('format') if isinstance(st, dict) else type(st).__name__!r}); {hint}")
    if st.get("version") != STUDY_VERSION:
        raise ReportInputError(f"{path}: {STUDY_FORMAT} version {st.get('version')!r}; this nextick reads version "
                               f"{STUDY_VERSION}: upgrade nextick or write the study again")
    models = st.get("models")
    if not isinstance(models, dict):
        raise ReportInputError(f"{path}: \"models\" must be an object of model name -> sections; {hint}")
    rf_annual = _f(st.get("rf_annual"))
    go = page.go
    page.section("study", "study")
    if math.isfinite(rf_annual):
        page.note(f"risk-free rate {rf_annual * 100:.2f}% a year")

    pml_traces, risk_traces, rolling_traces, decay_traces, capm_rows = [], [], [], [], []
    for model, sec in models.items():
        sec = sec if isinstance(sec, dict) else {}
        pml = sec.get("pml")
        if isinstance(pml, dict):
            pts = [p for p in pml.get("points") or [] if isinstance(p, dict)]
            x = np.array([_f(p.get("priced_std")) for p in pts])
            y = np.array([_f(p.get("mean_daily_return")) for p in pts])
            ok = np.isfinite(x) & np.isfinite(y)
            ids = [str(p.get("config_id")) for p in pts]
            pml_traces.append(go.Scatter(x=x[ok], y=y[ok], mode="markers", name=f"{model} configurations",
                                         text=[ids[k] for k in np.flatnonzero(ok)],
                                         hovertemplate="config %{text}<br>priced std %{x}<br>mean daily return %{y}"))
            slope, se, b = _f(pml.get("slope")), _f(pml.get("slope_se")), _f(pml.get("intercept_daily"))
            if math.isfinite(slope) and math.isfinite(b) and ok.any():
                xs = np.array([0.0, float(x[ok].max())])
                label = (f"{model}: slope {_fmt(slope)} ± {_fmt(se)} (t {_fmt(pml.get('t_stat'))}, "
                         f"R² {_fmt(pml.get('r2'))}, n {_fmt(pml.get('n'), 'int')})")
                pml_traces.append(go.Scatter(x=xs, y=b + slope * xs, mode="lines", name=label))
            for key, marker in (("total_std", "circle"), ("priced_std", "x")):
                rx = np.array([_f(p.get(key)) for p in pts])
                sel = np.isfinite(rx) & np.isfinite(y)
                if sel.any():
                    risk_traces.append(go.Scatter(
                        x=rx[sel], y=y[sel], mode="markers", name=f"{model}: {key.replace('_std', '')} risk",
                        marker={"symbol": marker, "size": 8},
                        customdata=[[ids[k], _f(pts[k].get("epistemic_std"))] for k in np.flatnonzero(sel)],
                        hovertemplate="config %{customdata[0]}<br>std %{x}<br>mean %{y}<br>epistemic std %{customdata[1]}"))
        rolling = [r for r in sec.get("rolling_pml") or [] if isinstance(r, dict)]
        if rolling:
            days = [str(r.get("end_day")) for r in rolling]
            slope = np.array([_f(r.get("slope")) for r in rolling])
            se = np.array([_f(r.get("slope_se")) for r in rolling])
            rolling_traces.append(go.Scatter(
                x=days, y=slope, mode="lines+markers", name=model,
                # A missing standard error draws no bar (None), not a bar of zero.
                error_y={"type": "data", "array": [v if math.isfinite(v) else None for v in se.tolist()], "visible": True},
                customdata=[[str(r.get("start_day")), _fmt(r.get("r2"))] for r in rolling],
                hovertemplate="%{customdata[0]} .. %{x}<br>slope %{y}<br>R² %{customdata[1]}"))
        for dec in sec.get("decay") or []:
            if not isinstance(dec, dict):
                continue
            lags, corr = dec.get("lags") or [], dec.get("corr") or []
            if len(lags) != len(corr):
                raise ReportInputError(f"{path}: model {model!r} decay at {dec.get('resolution')!r} has {len(lags)} lags "
                                       f"and {len(corr)} correlations; {hint}")
            decay_traces.append(go.Scatter(x=[_f(v) for v in lags], y=[_f(v) for v in corr], mode="lines+markers",
                                           name=f"{model} @ {dec.get('resolution')}"))
        for c in sec.get("capm") or []:
            if isinstance(c, dict):
                capm_rows.append([str(model), str(c.get("config_id")), _fmt(c.get("alpha_daily"), "pct"), _fmt(c.get("alpha_t")),
                                  _fmt(c.get("beta")), _fmt(c.get("beta_t")), _fmt(c.get("n"), "int"), _fmt(c.get("lags"), "int")])

    if pml_traces:
        fig = go.Figure(pml_traces)
        fig.update_xaxes(title_text="priced std of daily return")
        fig.update_yaxes(title_text="mean daily return")
        page.figure("study-pml", fig, "priced-risk line (PML)", "fitted line from the risk-free intercept; slope ± its standard error")
    if risk_traces:
        fig = go.Figure(risk_traces)
        fig.update_xaxes(title_text="std of daily return")
        fig.update_yaxes(title_text="mean daily return")
        page.figure("study-risk", fig, "risk and return: total against priced risk", "each configuration twice: at its total and at its priced std")
    if rolling_traces:
        fig = go.Figure(rolling_traces)
        fig.update_yaxes(title_text="PML slope")
        page.figure("study-rolling", fig, "rolling PML slope", "at each window's last day; bars ± one standard error", date_x=True)
    if decay_traces:
        fig = go.Figure(decay_traces)
        fig.update_xaxes(title_text="lag (bars of the resolution)", dtick=1)
        fig.update_yaxes(title_text="correlation")
        page.figure("study-decay", fig, "signal decay", "correlation of the signal with returns by lag, per model and resolution")
    if capm_rows:
        page.table("study-capm", ["model", "config", "alpha (daily)", "alpha t", "beta", "beta t", "n", "lags"], capm_rows,
                   caption="CAPM regressions")


# ------------------------------------------------------------------------------------------ compare


def _compare_section(page: _Page, path: Path) -> None:
    hint = "it should be the nextick.compare JSON `nextick compare --out` writes; write it again or remove it"
    doc = _read_json(path, hint)
    if not isinstance(doc, dict) or doc.get("format") != COMPARE_FORMAT or doc.get("version") != COMPARE_VERSION:
        got = (doc.get("format"), doc.get("version")) if isinstance(doc, dict) else type(doc).__name__
        raise ReportInputError(f"{path}: not a {COMPARE_FORMAT} version {COMPARE_VERSION} file (got {got}); {hint}")
    try:
        labels = [str(s["label"]) for s in doc["strategies"]]
        z = np.array([[_f(v) for v in row] for row in doc["jk"]["z"]], dtype=float)
        p = np.array([[_f(v) for v in row] for row in doc["jk"]["p"]], dtype=float)
        blocks = doc["subperiods"]
        days = doc["days"]
    except (KeyError, TypeError, ValueError) as e:
        raise ReportInputError(f"{path}: missing or malformed {e}; {hint}") from None
    n = len(labels)
    if z.shape != (n, n) or p.shape != (n, n):
        raise ReportInputError(f"{path}: jk z and p must be {n} x {n} (one row per strategy); {hint}")
    alpha = _f(doc["jk"].get("alpha", SIGNIFICANCE))
    page.section("comparison", "comparison: Sharpe tests and sub-periods")
    page.note(f"{n} strategies on {len(days)} common days ({doc.get('day_basis', 'days')}); z[row][column] > 0: "
              f"the row's daily Sharpe ratio is the higher (Memmel-corrected Jobson-Korkie); * p < {alpha:g}")

    def cell(i: int, j: int) -> str:
        if i == j:
            return "-"
        if not math.isfinite(z[i, j]):
            return "n/a"
        return f"{z[i, j]:+.2f} (p {p[i, j]:.3f})" + ("*" if p[i, j] < alpha else "")

    text = [[cell(i, j).replace(" (", "<br>(") for j in range(n)] for i in range(n)]
    go = page.go
    fig = go.Figure(go.Heatmap(z=np.where(np.isfinite(z), z, None).tolist(), x=labels, y=labels, text=text,
                               texttemplate="%{text}", colorscale="RdBu", zmid=0,
                               colorbar={"title": {"text": "z"}}, hovertemplate="%{y} vs %{x}<br>%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="row")
    fig.update_xaxes(title_text="column")
    page.figure("compare-jk", fig, "pairwise Jobson-Korkie z of daily Sharpe", f"row against column; * p < {alpha:g}")
    page.table("compare-jk-table", ["row \\ column", *labels], [[a, *(cell(i, j) for j in range(n))] for i, a in enumerate(labels)],
               caption="Jobson-Korkie z (p), row against column")
    rows = []
    for b in blocks:
        by = b.get("by_strategy", {})
        rows.append([f"{b.get('block')}: {b.get('first_day')} .. {b.get('last_day')}", str(b.get("n_days")),
                     *(f"{_fmt(by.get(x, {}).get('total_return'), 'pct')} / {_fmt(by.get(x, {}).get('daily_sharpe'))}"
                       for x in labels)])
    page.table("compare-subperiods", ["block", "days", *labels], rows,
               caption="sub-periods: total return / daily Sharpe per strategy")


# ------------------------------------------------------------------------------------------ sweep


def _sweep_section(page: _Page, path: Path) -> None:
    t = _read_parquet(path, (), "it should be a sweep's results (one row per configuration); write it again or remove it")
    cols = t.column_names
    page.section("sweep", "sweep")
    page.note(f"{t.num_rows:,} configurations in {path.name}")

    def numeric(name: str) -> np.ndarray | None:
        if name not in cols:
            return None
        try:
            return _col(t, name)
        except (TypeError, ValueError, pa.ArrowException):
            return None

    mean, std, sharpe = numeric("mean_daily_return"), numeric("std_daily_return"), numeric("daily_sharpe")
    if mean is not None and std is not None:
        ok = np.isfinite(mean) & np.isfinite(std)
        go = page.go
        fig = go.Figure(go.Scatter(
            x=std[ok], y=mean[ok], mode="markers", name="configurations", text=[str(k) for k in np.flatnonzero(ok)],
            marker={"color": sharpe[ok] if sharpe is not None else None, "colorscale": "Viridis",
                    "showscale": sharpe is not None, "colorbar": {"title": {"text": "daily Sharpe"}} if sharpe is not None else None},
            hovertemplate="row %{text}<br>std %{x}<br>mean %{y}"))
        fig.update_xaxes(title_text="std of daily return")
        fig.update_yaxes(title_text="mean daily return")
        page.figure("sweep-scatter", fig, "mean against std of daily return", f"{int(ok.sum()):,} configurations with both")
    key_name, key = next(((k, v) for k, v in (("daily_sharpe", sharpe), ("mean_daily_return", mean)) if v is not None), (None, None))
    if key is not None:
        # Best first; a missing figure sorts last, ties keep the file's order.
        order = np.argsort(np.where(np.isfinite(key), -key, np.inf), kind="stable")[:TOP_CONFIGS]
        caption = f"top {len(order)} by {key_name}"
    else:
        order = np.arange(min(TOP_CONFIGS, t.num_rows))
        caption = f"first {len(order)} rows (no daily_sharpe or mean_daily_return column to rank by)"
    data = t.take(pa.array(order, pa.int64())).to_pylist()
    rows = [[_cell(r[c]) for c in cols] for r in data]
    page.table("sweep-top", ["row", *cols], [[str(int(k)), *r] for k, r in zip(order, rows)], caption=caption)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return _fmt(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "n/a" if v is None else str(v)


# ------------------------------------------------------------------------------------------ entry


def render_report(run_dir: Path) -> tuple[str, list[str]]:
    """The page for RUN_DIR and the ids of its figures (in page order)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportInputError(f"{run_dir}: no such folder; give a `nextick backtest --out` folder (or a study's)")
    dirs = strategy_dirs(run_dir)
    study, sweep, comparison = run_dir / "study.json", run_dir / "results.parquet", run_dir / "compare.json"
    if not dirs and not study.is_file() and not sweep.is_file():
        raise ReportInputError(
            f"{run_dir}: nothing to report: no summary.json (nor subfolders with one), study.json or results.parquet; "
            "write a backtest there first with `nextick backtest --out DIR`"
        )
    page = _Page()
    curves = []
    used: set[str] = set()
    for d in dirs:
        sid = "bt-" + _slug(d.name if d != run_dir else "run")
        while sid in used:
            sid += "_"
        used.add(sid)
        curve = _backtest_section(page, d, sid)
        if curve is not None:
            curves.append(curve)
    if len(curves) > 1:
        page.section("compare", "strategies compared")
        _compare_figure(page, curves)
    if comparison.is_file():
        _compare_section(page, comparison)
    if study.is_file():
        _study_section(page, study)
    if sweep.is_file():
        _sweep_section(page, sweep)
    return page.render(f"nextick report: {run_dir.resolve().name}"), page.figure_ids


def write_report(run_dir: Path, out: Path | None = None) -> tuple[Path, list[str]]:
    """Write RUN_DIR/report.html (or ``out``); the path written and the figures' ids."""
    text, ids = render_report(Path(run_dir))
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    # Bytes, not text mode: the same newlines on every platform, so the same file everywhere.
    path.write_bytes(text.encode("utf-8"))
    return path, ids
