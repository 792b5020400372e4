"""``nextick study``: where a model's strategies sit on the risk-return plane, and how much of their
risk is the model's own, end to end on one data set.

The method of published studies of foundation-model trading signals (fills at the next tick's quotes):

1. The data set is read once and cut by trading day: the first ``train_frac`` of the days train the
   models, the rest is the study period, never seen in training.
2. Each model kind is trained (``engine.training``; the SSM kinds with dropout on their residual
   branches), or a given model file is used.
3. Configurations of the threshold rule (``ssm_threshold``: buy when the predicted mid clears the ask
   by ``threshold_bps``, sell under the bid; stop-loss, take-profit and hold time) are drawn at random
   from ``PARAM_SPACE``, seeded.
4. MC dropout: every configuration is backtested with each of ``n_variants`` dropout variants of the
   model (``engine/model/dropout.py``) over the study period. The model is stepped once for all
   variants (one kernel call per tick for instruments x variants, recorded on a prediction tape) and
   the tape is replayed into every (configuration, variant) backtest (``csrc/tape_backend.hpp``):
   the model's arithmetic is not repeated per configuration. The SSM's variants mask its residual
   branches (C++ kernel); a zoo model's mask the input of its head, where it applies its last dropout
   (ONNX Runtime). A model trained without dropout runs one variant: its priced risk is its total.
5. Per model: each configuration's daily returns [configs, variants, days] are split into epistemic
   and priced risk (``engine.study.risk``); the Pretrained Market Line regresses mean daily return on
   priced std through the risk-free rate (slope: the model's Foundation Sharpe ratio, with its
   standard error and R^2); a rolling PML over windows of days; each configuration's CAPM against the
   equal-weighted market of the data's instruments (Newey-West errors); and the signal's decay, its
   surprise (log predicted mid over mid) against realized returns at lags -5..+5 bars per resolution.
6. ``study.json`` (``engine.study.io``), ``results.parquet`` (one row per model, configuration and
   variant), and ``report.html`` when plotly is installed (``engine.html_report``).

Deterministic: the same options give the same files, bit for bit, for any number of workers.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.backtest import BacktestConfig, record_predictions, save_tape, trading_days
from engine.domain.calendar import SessionCalendar
from engine.domain.timestamps import MINUTE_NS, SECOND_NS
from engine.model.weights import load_model
from engine.options import backtest_config, quote_source
from engine.study.capm import capm
from engine.study.decay import lag_profile
from engine.study.io import ModelStudy, capm_row, decay_row, pml_section, write_study_json
from engine.study.pml import fit_free_line, fit_pml, rolling_pml
from engine.study.risk import decompose
from engine.sweep import draw, run_config, split_periods
from feeds.dataset import QuoteDataset

# The threshold rule's configurations, each parameter drawn independently (engine.sweep's
# distributions). Ranges on the scale of 1 s crypto/equity quotes: a few bps of edge over the touch,
# stops and targets of tens of bps, holds of up to ten minutes of 1 s ticks.
#
# The threshold is drawn as a quantile of the model's own edge over the touch (the larger of
# predicted mid over the ask and the bid over the predicted mid, in bps) on the training days: a
# fixed range in bps would leave a model that predicts small moves with configurations that never
# trade, and one that predicts large moves with configurations that always do. Quantile q trades on
# roughly the top (1 - q) of ticks, for every model alike.
PARAM_SPACE: dict[str, str] = {
    "threshold_q": "uniform:0.97:0.9995",
    "stop_loss_bps": "uniform:2:60",
    "take_profit_bps": "uniform:2:60",
    "hold_ticks": "int:0:600",
}
SSM_KINDS = ("mamba2", "s4d")
# Bars of the signal-decay profile; those finer than the run's tick interval are left out.
DECAY_RESOLUTIONS_NS = (100_000_000, SECOND_NS, MINUTE_NS, 5 * MINUTE_NS)
INTERVAL_NS = {"100ms": 100_000_000, "1s": SECOND_NS, "raw": 0}


class StudyError(ValueError):
    """A study that cannot run as asked; the message says what to change."""


class StudyOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    source: dict[str, Any] = msgspec.field(default_factory=dict)  # engine.options source options
    run: dict[str, Any] = msgspec.field(default_factory=dict)  # run options every backtest shares (fee_bps, ...)
    kinds: list[str] = msgspec.field(default_factory=lambda: ["mamba2", "lstm", "mlp"])  # trained here
    models: dict[str, str] = msgspec.field(default_factory=dict)  # name -> model file, used as given
    n_configs: int = 200
    n_variants: int = 8
    dropout: float = 0.1
    train_frac: float = 0.5
    seed: int = 0
    epochs: int = 6
    d_model: int = 32
    rf_annual: float = 0.05
    window_days: int = 0  # rolling PML window; 0: half the study period
    step_days: int = 1

    def __post_init__(self) -> None:
        if self.n_configs < 2:
            raise StudyError(f"--configs {self.n_configs}: the PML needs at least 2 configurations")
        if self.n_variants < 1:
            raise StudyError(f"--variants {self.n_variants}: at least 1")
        if not 0 < self.train_frac < 1:
            raise StudyError(f"--train-frac {self.train_frac}: the share of days that train, in (0, 1)")
        if not self.kinds and not self.models:
            raise StudyError("nothing to study: give --kinds (models to train) or --model NAME=FILE")


class ModelRun(msgspec.Struct, kw_only=True):
    """One model's part of a study: what ran, and the daily returns it made."""

    name: str
    path: str
    kind: str
    variants: int
    days: list[str]
    returns: np.ndarray  # [configs, variants, days]
    record_s: float
    replay_s: float


# -- training ---------------------------------------------------------------------------------------


def train_kind(kind: str, dataset: QuoteDataset, end_ns: int, out: Path, opts: StudyOptions, interval: str) -> Path:
    """Train a model of ``kind`` on the data before ``end_ns``; returns its model file."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise StudyError(f"training --kinds {kind} needs torch: pip install 'nextick[train]', or pass "
                         "--model NAME=FILE") from None
    from engine.model.zoo_config import ZOO_KINDS, ZooConfig
    from engine.training.dataset import collect_segments, split_by_time
    from engine.training.train import TrainConfig, export, model_file_name, ssm_config, train

    if kind not in (*SSM_KINDS, *ZOO_KINDS):
        raise StudyError(f"--kinds {kind}: not a model kind; use {', '.join((*SSM_KINDS, *ZOO_KINDS))}")
    config = TrainConfig(interval=interval, epochs=opts.epochs, seed=opts.seed, dropout=opts.dropout)
    if kind in SSM_KINDS:
        model_config = ssm_config(config, kind=kind, d_model=opts.d_model, headdim=min(32, opts.d_model))
    else:
        model_config = ZooConfig(kind=kind, d_model=opts.d_model)
    segments = collect_segments(dataset.source(None, end_ns), interval=interval)
    result = train(split_by_time(segments), model_config, config)
    out.mkdir(parents=True, exist_ok=True)
    path = out / model_file_name(model_config)
    export(result, path, config, {"source": "nextick study", "train_end_ns": end_ns})
    return path


# -- replaying the configurations -------------------------------------------------------------------

def replay_config(folder: str, tape_path: str, start_ns: int, options: dict[str, Any], variants: int) -> list[list[float]]:
    """One configuration under every variant of a recorded tape: each variant's daily returns."""
    return [run_config(folder, options, start_ns, None, tape_path, variants, v if variants > 1 else -1).daily_returns
            for v in range(variants)]


def _configurations(opts: StudyOptions) -> list[dict[str, Any]]:
    rng = np.random.Generator(np.random.PCG64(opts.seed))
    draws = {name: draw(f"params.{name}", dist, rng, opts.n_configs) for name, dist in PARAM_SPACE.items()}
    return [{name: values[i] for name, values in draws.items()} for i in range(opts.n_configs)]


def _run_pool(tasks: list[tuple], workers: int, on_done: Callable[[int], None]) -> list[Any]:
    from engine.sweep import _process_context

    results: list[Any] = [None] * len(tasks)
    if workers <= 1:
        for i, t in enumerate(tasks):
            results[i] = replay_config(*t)
            on_done(1)
        return results
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_process_context()) as pool:
        futures = {pool.submit(replay_config, *t): i for i, t in enumerate(tasks)}
        for f in concurrent.futures.as_completed(futures):
            results[futures[f]] = f.result()
            on_done(1)
    return results


def _variants_for(model, opts: StudyOptions) -> int:
    """A model trained with dropout runs n_variants MC-dropout variants (the SSM's residual masks on
    the C++ kernel, a zoo model's head-input masks on ONNX Runtime); one without runs one."""
    dropout = getattr(model.config, "dropout", None)
    if dropout is None:  # a zoo model: the rate is its training run's
        dropout = float(model.training.get("train_config", {}).get("dropout", 0.0))
    return opts.n_variants if dropout > 0 and opts.n_variants > 1 else 1


def edge_bps(tap: np.ndarray) -> np.ndarray:
    """Per tick, how far the prediction clears the touch, bps of the mid: max(pred - ask, bid - pred)."""
    pred = tap["pred_mid"]
    edge = np.maximum(pred - tap["ask_px"], tap["bid_px"] - pred) / tap["mid"] * 1e4
    return edge[np.isfinite(edge)]


def strategy_params(config: dict[str, Any], edge: np.ndarray) -> dict[str, Any]:
    """A drawn configuration as ssm_threshold's parameters: threshold_q -> threshold_bps."""
    params = {k: v for k, v in config.items() if k != "threshold_q"}
    q = float(np.quantile(edge, config["threshold_q"])) if len(edge) else 0.0
    params["threshold_bps"] = max(q, 0.0)
    return params


def run_model(name: str, path: Path, dataset: QuoteDataset, folder: str, start_ns: int, out: Path,
              configs: list[dict[str, Any]], opts: StudyOptions, workers: int,
              on_done: Callable[[int], None]) -> tuple[ModelRun, np.ndarray, list[dict[str, Any]]]:
    """Record the model once over the study period, replay every configuration x variant."""
    model = load_model(path)
    backend = "onnxruntime" if str(path).endswith(".onnx") else "cpu"
    variants = _variants_for(model, opts)
    base = {**opts.run, "strategy": "ssm_threshold", "model": str(path), "backend": backend, "interval": model.signal.interval}
    # The threshold scale from the training days only: the study period is not looked at to set it.
    _, train_tap = record_predictions(dataset.source(None, start_ns), backtest_config(base), tap=True)
    edge = edge_bps(train_tap)
    params = [strategy_params(c, edge) for c in configs]
    record_cfg = backtest_config({**base, **({"mc_samples": variants, "mc_seed": opts.seed} if variants > 1 else {})})
    t0 = time.perf_counter()
    tape, tap = record_predictions(dataset.source(start_ns, None), record_cfg, tap=True)
    record_s = time.perf_counter() - t0
    tape_path = save_tape(out / "tapes" / f"{name}.npz", tape)
    tasks = [(folder, str(tape_path), start_ns, {**base, "params": p}, variants) for p in params]
    t0 = time.perf_counter()
    daily = _run_pool(tasks, workers, on_done)
    replay_s = time.perf_counter() - t0
    n_days = max(len(r) for per in daily for r in per)
    returns = np.full((len(configs), variants, n_days), np.nan)
    for c, per in enumerate(daily):
        for v, r in enumerate(per):
            returns[c, v, : len(r)] = r  # a ruined run ends early: its missing days are NaN
    calendars = [SessionCalendar.parse(i.calendar) for i in dataset.instruments]
    days = _study_days(calendars, tap)
    return ModelRun(name=name, path=str(path), kind=model.config.kind, variants=variants, days=days[:n_days],
                    returns=returns, record_s=record_s, replay_s=replay_s), tap, params


def _study_days(calendars: list[SessionCalendar], tap: np.ndarray) -> list[str]:
    if len(tap) == 0:
        return []
    starts, names, _ = trading_days(calendars, int(tap["ts"].min()), int(tap["ts"].max()))
    if starts is None:
        return sorted({str(np.datetime64(int(t), "ns").astype("datetime64[D]")) for t in tap["ts"]})
    present = np.unique(np.maximum(np.searchsorted(starts, tap["ts"], side="right") - 1, 0))
    return [names[int(d)] for d in present]


# -- the statistics ---------------------------------------------------------------------------------


def market_daily(tap: np.ndarray, calendars: list[SessionCalendar]) -> np.ndarray:
    """The equal-weighted market's daily simple return over the study period (engine.study.capm's
    proxy), from each instrument's last mid of each day."""
    from engine.study.capm import market_proxy_daily

    starts, _, _ = trading_days(calendars, int(tap["ts"].min()), int(tap["ts"].max()))
    day = (np.maximum(np.searchsorted(starts, tap["ts"], side="right") - 1, 0) if starts is not None
           else tap["ts"] // (86_400 * SECOND_NS))
    days = np.unique(day)
    n_inst = int(tap["instrument"].max()) + 1
    closes = np.full((n_inst, len(days)), np.nan)
    col = np.searchsorted(days, day)
    closes[tap["instrument"], col] = tap["mid"]  # the last write per cell wins: the day's last mid
    return market_proxy_daily(closes)


def segment_ids(tap: np.ndarray) -> np.ndarray:
    """A segment number per tick that changes at each reset of its instrument (its state restarts)."""
    seg = np.zeros(len(tap), np.int64)
    for i in np.unique(tap["instrument"]):
        rows = np.flatnonzero(tap["instrument"] == i)
        seg[rows] = np.cumsum(tap["reset"][rows].astype(np.int64))
    return seg


def model_study(run: ModelRun, tap: np.ndarray, calendars: list[SessionCalendar], opts: StudyOptions,
                interval_ns: int) -> tuple[ModelStudy, dict[str, Any]]:
    # A configuration needs a day on which every variant has a return (a ruined variant stops
    # early); those without one are left out of the fits and counted.
    usable = np.isfinite(run.returns).all(axis=1).any(axis=1)
    if usable.sum() < 2:
        raise StudyError(f"{run.name}: {int(usable.sum())} configurations have a day with every variant's return; "
                         "the PML needs 2 (fewer variants or a longer study period)")
    returns = run.returns[usable]
    ids = [str(c) for c in np.flatnonzero(usable)]
    risk = decompose(returns, missing="drop_days")
    fit = fit_pml(risk.mean_daily_return, risk.priced_std, opts.rf_annual)
    free = fit_free_line(risk.mean_daily_return, risk.priced_std)
    n_days = run.returns.shape[2]
    window = opts.window_days or max(2, n_days // 2)
    # The rolling PML compares windows, so it keeps the configurations with every day of every variant.
    whole = np.isfinite(returns).all(axis=(1, 2))
    rolling = (rolling_pml(returns[whole], run.days, window, opts.step_days, rf_annual=opts.rf_annual)
               if n_days >= window >= 2 and whole.sum() >= 2 else [])
    market = market_daily(tap, calendars)
    capms = []
    mean_paths = returns.mean(axis=1)  # [configs, days]: the variants' average strategy
    if len(market) >= 3:
        for c, path in enumerate(mean_paths):
            r = path[1 : 1 + len(market)]  # the market's returns start at the second day
            if len(r) == len(market) and np.isfinite(r).all():
                capms.append(capm_row(ids[c], capm(r, market, rf_annual=opts.rf_annual)))
    seg = segment_ids(tap)
    finite = np.isfinite(tap["pred_mid"]) & (tap["pred_mid"] > 0)
    decay = []
    for res in DECAY_RESOLUTIONS_NS:
        if res < interval_ns:
            continue
        try:
            decay.append(decay_row(lag_profile(tap["ts"][finite], tap["instrument"][finite], tap["mid"][finite],
                                               tap["pred_mid"][finite], seg[finite], res)))
        except ValueError:  # too few bars at this resolution over the study period
            continue
    study = ModelStudy(pml=pml_section(fit, risk, ids), rolling_pml=rolling, capm=capms, decay=decay)
    summary = {"kind": run.kind, "variants": run.variants, "days": n_days, "configs_used": int(usable.sum()),
               "configs_left_out": int((~usable).sum()), "slope": fit.slope, "slope_se": fit.slope_se,
               "t_stat": fit.t_stat, "r2": fit.r2, "free_slope": free.slope, "free_intercept": free.intercept_daily,
               "free_r2": free.r2, "mean_epistemic_share": float(np.nanmean(
                   risk.epistemic_std**2 / np.where(risk.total_std > 0, risk.total_std**2, np.nan))),
               "record_s": run.record_s, "replay_s": run.replay_s}
    return study, summary


# -- the whole study --------------------------------------------------------------------------------


class StudyOutcome(msgspec.Struct, kw_only=True):
    options: StudyOptions
    days_train: list[str]
    days_study: list[str]
    summaries: dict[str, dict[str, Any]]
    files: list[str]
    wall_s: float


def run_study(opts: StudyOptions, out: str | Path, *, workers: int = 1,
              on_progress: Callable[[str, int, int], None] | None = None) -> StudyOutcome:
    out = Path(out)
    t_start = time.perf_counter()
    say = on_progress or (lambda what, done, total: None)
    out.mkdir(parents=True, exist_ok=True)
    source = quote_source(opts.source)
    interval = str(opts.run.get("interval", BacktestConfig().interval))
    folder = out / "dataset"
    dataset = QuoteDataset.read(source, folder)
    periods = split_periods(dataset, split=opts.train_frac)
    if periods.boundary_ns is None or not periods.test_days:
        raise StudyError(f"the data's {len(periods.days)} trading days leave none for the study after training: "
                         "give more days or a smaller --train-frac")
    models = dict(opts.models)
    for i, kind in enumerate(opts.kinds):
        say(f"train {kind}", i, len(opts.kinds))
        models[kind] = str(train_kind(kind, dataset, periods.boundary_ns, out / "models" / kind, opts, interval))
    configs = _configurations(opts)
    calendars = [SessionCalendar.parse(i.calendar) for i in dataset.instruments]
    studies: dict[str, ModelStudy] = {}
    summaries: dict[str, dict[str, Any]] = {}
    rows: dict[str, list] = {k: [] for k in ("model", "config_id", "variant", *PARAM_SPACE, "threshold_bps",
                                             "mean_daily_return", "std_daily_return", "daily_returns")}
    for name, path in models.items():
        done = [0]

        def tick(n: int, name: str = name) -> None:
            done[0] += n
            say(f"replay {name}", done[0], len(configs))

        run, tap, params = run_model(name, Path(path), dataset, str(folder), periods.boundary_ns, out, configs, opts,
                                     workers, tick)
        studies[name], summaries[name] = model_study(run, tap, calendars, opts, INTERVAL_NS.get(interval, 0))
        for c, drawn in enumerate(configs):
            for v in range(run.variants):
                r = run.returns[c, v]
                rows["model"].append(name)
                rows["config_id"].append(c)
                rows["variant"].append(v)
                for k in PARAM_SPACE:
                    rows[k].append(drawn[k])
                rows["threshold_bps"].append(params[c]["threshold_bps"])
                rows["mean_daily_return"].append(float(np.nanmean(r)))
                rows["std_daily_return"].append(float(np.nanstd(r, ddof=1)) if np.isfinite(r).sum() > 1 else math.nan)
                rows["daily_returns"].append([float(x) for x in r])
    files = [str(write_study_json(out / "study.json", studies, opts.rf_annual))]
    pq.write_table(pa.table(rows), out / "results.parquet")
    files.append(str(out / "results.parquet"))
    (out / "study_options.json").write_bytes(msgspec.json.format(msgspec.json.encode(opts), indent=2))
    files.append(str(out / "study_options.json"))
    return StudyOutcome(options=opts, days_train=periods.validation_days, days_study=periods.test_days,
                        summaries=summaries, files=files, wall_s=time.perf_counter() - t_start)


def format_outcome(o: StudyOutcome) -> str:
    lines = [
        f"nextick study: {o.options.n_configs} configurations x up to {o.options.n_variants} dropout variants; "
        f"trained on {len(o.days_train)} days ({o.days_train[0]} .. {o.days_train[-1]}), studied on "
        f"{len(o.days_study)} ({o.days_study[0]} .. {o.days_study[-1]}); risk-free {o.options.rf_annual:.0%} a year",
        f"{'model':<14}{'variants':>9}{'configs':>8}{'PML slope':>12}{'(se)':>10}{'t':>7}{'R^2':>8}{'free R^2':>10}"
        f"{'epistemic':>11}{'record s':>10}{'replay s':>10}",
    ]
    for name, s in o.summaries.items():
        lines.append(f"{name:<14}{s['variants']:>9}{s['configs_used']:>8}{s['slope']:>12.4f}{s['slope_se']:>10.4f}"
                     f"{s['t_stat']:>7.2f}"
                     f"{s['r2']:>8.3f}{s['free_r2']:>10.3f}{s['mean_epistemic_share']:>11.1%}{s['record_s']:>10.1f}"
                     f"{s['replay_s']:>10.1f}")
    lines.append("PML slope: the Foundation Sharpe ratio (daily), mean daily return over priced std through the "
                 "risk-free rate; epistemic: the mean share of a configuration's variance across dropout variants; "
                 "configs: those with a day on which every variant has a return (a ruined variant stops early)")
    lines.append(f"wrote {', '.join(o.files)} in {o.wall_s:.0f} s")
    return "\n".join(lines)
