"""A sweep: many configurations of a backtest on one data set, ranked on a validation period and the
chosen one reported on a later test period (``nextick sweep``).

    spec = SweepSpec(source={"n_instruments": 2}, base={"strategy": "momentum"},
                     grid={"fee_bps": [0.5, 1.0]}, random={"params.fast_span": "int:5:50"}, n=4)
    outcome = run_sweep(spec, "runs/sweep", workers=2)

Configurations. Base options (``engine.options`` names: the source options say where the quotes come
from, the run options how every configuration runs) plus axes over run options: grid axes list their
values, random axes draw ``n`` values each from a ``numpy`` PCG64 generator seeded with
``random_seed``, axis by axis in the order given. The configurations are the grid's cross product
(the last axis changing fastest) times the ``n`` random draws (changing fastest of all). A strategy
parameter is an axis named ``params.KEY``. Every configuration is checked before any data is read.

Data. The source is read once into a ``QuoteDataset`` folder, memory-mapped by every worker: local
processes (``workers``) or Ray tasks (``ray``). Each configuration's result comes back by its index,
so the output is the same for any number of workers.

Validation discipline. The trading days of the data are split into a validation period and the later
test period. Every configuration runs on the validation period alone; they are ranked on it; then,
and only then, the chosen one runs on the test period alone. Each period is its own run, starting
flat with the initial capital: splitting one run's daily returns instead would carry positions (and
their profit) opened on validation days into the test period, and let a test run be done before the
choice. The deflated Sharpe ratio and the PBO of the choice come from the validation returns
(``engine.overfit``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import datetime
import difflib
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from engine import _core
from engine.backtest import BacktestResult, load_tape, record_predictions, run_backtest, save_tape, trading_days
from engine.domain.calendar import SessionCalendar
from engine.domain.timestamps import DAY_NS, day_date
from engine.metrics import daily_return_days
from engine.options import (
    RUN_OPTIONS,
    SOURCE_OPTIONS,
    backtest_config,
    check_strategy,
    quote_source,
    run_options,
    source_options,
)
from engine.overfit import (
    DeflatedSharpe,
    Overfitting,
    default_blocks,
    deflated_sharpe_ratio,
    probability_of_overfitting,
)
from engine.progress import Progress
from feeds.dataset import QuoteDataset
from strategies.builtin import builtin_spec, is_builtin

FORMAT = "nextick.sweep"
FORMAT_VERSION = 1
RESULTS_FILE = "results.parquet"
SPEC_FILE = "sweep.json"
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# Metrics a sweep can rank by, and whether more is better.
RANKABLE: dict[str, bool] = {
    "daily_sharpe": True,
    "total_return": True,
    "mean_daily_return": True,
    "daily_volatility": False,
    "max_drawdown": False,
    "hit_rate": True,
    "turnover": False,
    "fees_paid": False,
}
METRIC_COLUMNS = (
    "total_return", "mean_daily_return", "daily_volatility", "daily_sharpe", "max_drawdown", "n_days",
    "n_orders", "n_fills", "n_trades", "turnover", "fees_paid", "hit_rate", "time_in_market",
)


class SweepError(ValueError):
    """A sweep that cannot run as given; the message names the option or axis and what to do."""


class SweepSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything that decides a sweep's result; ``sweep.json`` keeps it so the sweep can be run again."""

    source: dict[str, Any] = msgspec.field(default_factory=dict)  # engine.options source options
    base: dict[str, Any] = msgspec.field(default_factory=dict)  # engine.options run options
    grid: dict[str, list[Any]] = msgspec.field(default_factory=dict)  # axis -> values
    random: dict[str, str] = msgspec.field(default_factory=dict)  # axis -> "uniform:LO:HI" etc.
    n: int = 10  # random draws (used only with random axes)
    random_seed: int = 0
    split: float = 0.5  # share of the trading days in the validation period (1: no test period)
    test_from: str | None = None  # first test day, YYYY-MM-DD (overrides split)
    rank_by: str = "daily_sharpe"
    pbo_blocks: int = 16  # CSCV blocks, at most (fewer with fewer validation days)

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        """The spec inside a sweep's ``sweep.json``."""
        try:
            doc = json.loads(Path(path).read_text())
            return msgspec.convert(doc["spec"] if "spec" in doc else doc, cls)
        except (OSError, json.JSONDecodeError, KeyError, msgspec.ValidationError) as e:
            raise SweepError(f"{path}: not a sweep spec ({e}); give the sweep.json a sweep wrote") from None


# -- axes ------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A value as written on the command line: JSON where it parses (2, 0.5, true, "x"), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """``NAME=v1,v2,...`` (``--grid``) as (name, values)."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise SweepError(f"--grid wants NAME=v1,v2,..., got {text!r}")
    return name.strip(), [parse_value(v.strip()) for v in values.split(",")]


def parse_random(text: str) -> tuple[str, str]:
    """``NAME=DISTRIBUTION`` (``--random``) as (name, distribution); the distribution is checked by ``expand``."""
    name, sep, dist = text.partition("=")
    if not sep or not name.strip() or not dist.strip():
        raise SweepError(f"--random wants NAME=uniform:LO:HI, loguniform:LO:HI, int:LO:HI or choice:a,b,c; got {text!r}")
    return name.strip(), dist.strip()


def _check_axis(name: str, flag: str) -> None:
    if name.startswith("params."):
        if not name[len("params."):]:
            raise SweepError(f"{flag} {name}: name the strategy parameter, e.g. params.fast_span")
        return
    if name in RUN_OPTIONS and name != "params":
        return
    if name in SOURCE_OPTIONS:
        raise SweepError(
            f"{flag} {name}: {name} is a data option; a sweep reads its data once and sweeps run options only "
            f"({', '.join(o for o in RUN_OPTIONS if o != 'params')}, params.KEY). Give it once, as --{name.replace('_', '-')}"
        )
    candidates = [o for o in RUN_OPTIONS if o != "params"]
    close = difflib.get_close_matches(name, candidates + [f"params.{name}"], n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise SweepError(f"{flag} {name}: unknown option{hint} (run options: {', '.join(candidates)}, or params.KEY)")


def _bounds(name: str, kind: str, lo_text: str, hi_text: str) -> tuple[float, float]:
    what = f"--random {name}={kind}:{lo_text}:{hi_text}"
    try:
        lo, hi = (int(lo_text), int(hi_text)) if kind == "int" else (float(lo_text), float(hi_text))
    except ValueError:
        number = "integers" if kind == "int" else "numbers"
        raise SweepError(f"{what}: LO and HI must be {number}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise SweepError(f"{what}: LO and HI must be finite")
    if (hi < lo) if kind == "int" else (hi <= lo):
        raise SweepError(f"{what}: LO ({lo}) must be below HI ({hi}); swap them")
    if kind == "loguniform" and lo <= 0:
        raise SweepError(f"{what}: loguniform needs 0 < LO; use uniform for a range through 0")
    return lo, hi


def draw(name: str, dist: str, rng: np.random.Generator, n: int) -> list[Any]:
    """``n`` values of the random axis ``name`` from ``rng``."""
    kind, _, rest = dist.partition(":")
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"--random {name}={dist}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        values = [parse_value(v.strip()) for v in rest.split(",")] if rest.strip() else []
        if not values:
            raise SweepError(f"--random {name}={dist}: choice needs values, e.g. choice:0.5,1,2")
        return [values[int(k)] for k in rng.integers(0, len(values), n)]
    parts = rest.split(":")
    if len(parts) != 2:
        raise SweepError(f"--random {name}={dist}: write {kind}:LO:HI")
    lo, hi = _bounds(name, kind, *parts)
    if kind == "uniform":
        return [float(v) for v in rng.uniform(lo, hi, n)]
    if kind == "loguniform":
        return [float(v) for v in np.exp(rng.uniform(math.log(lo), math.log(hi), n))]
    return [int(v) for v in rng.integers(lo, hi + 1, n)]


def axis_values(spec: SweepSpec) -> list[dict[str, Any]]:
    """Per configuration, in order, the value of every axis (grid axes first, then random ones)."""
    for name in spec.grid:
        _check_axis(name, "--grid")
        if not spec.grid[name]:
            raise SweepError(f"--grid {name}: give at least one value")
    for name in spec.random:
        _check_axis(name, "--random")
        if name in spec.grid:
            raise SweepError(f"--random {name}: {name} is also a --grid axis; sweep it one way")
    if spec.random and spec.n < 1:
        raise SweepError(f"--n {spec.n}: random axes need at least one draw (--n 1 or more)")
    rng = np.random.Generator(np.random.PCG64(spec.random_seed))
    draws = {name: draw(name, dist, rng, spec.n) for name, dist in spec.random.items()}
    n_draws = spec.n if spec.random else 1
    out = []
    for point in itertools.product(*spec.grid.values()):
        for k in range(n_draws):
            values = dict(zip(spec.grid, point))
            values.update({name: d[k] for name, d in draws.items()})
            out.append(values)
    return out


def configuration(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The run options of one configuration: ``base`` with the axes' ``values`` set (``params.KEY``
    into ``params``)."""
    options = copy.deepcopy(base)
    for name, value in values.items():
        if name.startswith("params."):
            options["params"] = {**options.get("params", {}), name[len("params."):]: value}
        else:
            options[name] = value
    return options


def expand(spec: SweepSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(axis values, run options) of every configuration, in order, each checked: an unknown option,
    a value of the wrong type or out of range, or a strategy parameter the strategy lacks raises a
    ``SweepError`` naming it, before anything runs."""
    if spec.rank_by not in RANKABLE:
        raise SweepError(f"--rank-by {spec.rank_by}: not a metric to rank by; use one of {', '.join(RANKABLE)}")
    try:
        run_options(spec.base)
    except (ValueError, TypeError) as e:
        raise SweepError(f"base options: {e}") from None
    values = axis_values(spec)
    configs = []
    for i, v in enumerate(values):
        options = configuration(spec.base, v)
        try:
            check_strategy(options)  # checks the options too
        except (ValueError, TypeError) as e:
            where = ", ".join(f"{k}={x!r}" for k, x in v.items()) or "the base options"
            raise SweepError(f"configuration {i} ({where}): {e}") from None
        configs.append(options)
    return values, configs


# -- periods ---------------------------------------------------------------------------------------


class Periods(msgspec.Struct, kw_only=True):
    """The data's trading days and where the test period begins."""

    days: list[str]  # every day with quotes, in order
    n_validation: int  # the first n_validation days validate; the rest test
    boundary_ns: int | None  # the first test day's start; None without a test period
    basis: str  # what a day is

    @property
    def validation_days(self) -> list[str]:
        return self.days[: self.n_validation]

    @property
    def test_days(self) -> list[str]:
        return self.days[self.n_validation :]


def _calendars(dataset: QuoteDataset) -> list[SessionCalendar]:
    return [SessionCalendar.parse(inst.calendar) for inst in dataset.instruments]


def split_periods(dataset: QuoteDataset, split: float = 0.5, test_from: str | None = None) -> Periods:
    """Cut the data set's trading days (as the daily metrics count them) into validation and test."""
    ts = dataset.quotes["ts_recv"]
    if len(ts) == 0:
        raise SweepError("the data has no quotes; nothing to sweep")
    starts, names, basis = trading_days(_calendars(dataset), int(ts.min()), int(ts.max()))
    if starts is None:
        present = np.unique(ts // DAY_NS)
        days, day_starts = [day_date(int(d)).isoformat() for d in present], [int(d) * DAY_NS for d in present]
    else:
        present = np.unique(np.maximum(np.searchsorted(starts, ts, side="right") - 1, 0))
        days, day_starts = [names[int(d)] for d in present], [int(starts[int(d)]) for d in present]
    if test_from is not None:
        k = next((i for i, d in enumerate(days) if d >= test_from), len(days))
        if not 1 <= k < len(days):
            raise SweepError(
                f"--test-from {test_from}: the data's trading days run {days[0]} .. {days[-1]}; pick a day after the "
                "first, with one on or after it"
            )
    elif not 0 < split <= 1:
        raise SweepError(f"--split {split}: must be in (0, 1], the share of trading days that validate (1: no test period)")
    elif split == 1:
        k = len(days)
    else:
        if len(days) < 2:
            raise SweepError(f"--split {split}: the data has {len(days)} trading day ({days[0]}); give more days or --split 1")
        k = min(max(math.floor(len(days) * split), 1), len(days) - 1)
    return Periods(days=days, n_validation=k, boundary_ns=day_starts[k] if k < len(days) else None, basis=basis)


# -- one configuration -----------------------------------------------------------------------------


class RunSummary(msgspec.Struct, kw_only=True):
    """What a worker sends back of one run: the metrics and the fills' hash, never the fills."""

    metrics: dict[str, float]
    fill_hash: str
    days: list[str]
    daily_returns: list[float]


def summarize(result: BacktestResult, calendars: list[SessionCalendar]) -> RunSummary:
    m = result.metrics
    ts, eq = result.equity_ts_ns, result.equity
    solvent = len(eq) if result.ruined_at_ns is None else int(np.searchsorted(ts, result.ruined_at_ns))
    # The days as run_backtest cut them for the metrics (the same starts), with their names.
    starts, names, _ = trading_days(calendars, int(ts[0]), int(ts[-1])) if len(ts) else (None, [], "")
    returns, day = daily_return_days(ts[:solvent], eq[:solvent], starts)
    labels = [names[int(d)] if starts is not None else day_date(int(d)).isoformat() for d in day]
    metrics = {
        "total_return": m.total_return,
        "mean_daily_return": m.mean_daily_return,
        "daily_volatility": m.daily_volatility,
        "daily_sharpe": m.daily_sharpe,
        "max_drawdown": m.max_drawdown,
        "n_days": m.n_days,
        "n_orders": int(result.counters["orders"]),
        "n_fills": m.fill_count,
        "n_trades": m.trade_count,
        "turnover": m.turnover,
        "fees_paid": m.fees_paid,
        "hit_rate": m.hit_rate,
        "time_in_market": m.time_in_market,
    }
    return RunSummary(metrics=metrics, fill_hash=result.fill_hash(), days=labels,
                      daily_returns=[float(r) for r in returns])


# One data set per worker process, opened on its first task (pages shared through the file).
_OPENED: dict[str, QuoteDataset] = {}


def _open(folder: str) -> QuoteDataset:
    if folder not in _OPENED:
        _OPENED[folder] = QuoteDataset.open(folder, verify=False)  # the parent verified it
    return _OPENED[folder]


def run_config(folder: str, options: dict[str, Any], start_ns: int | None, end_ns: int | None,
               tape: str | None = None, variants: int = 1, variant: int = -1) -> RunSummary:
    """One configuration on one period of the data set in ``folder``: what every worker runs. With
    ``tape`` (a saved prediction tape), the model's outputs are replayed from it, not computed: all
    its rows, or one ``variant`` of a recording of ``variants`` MC-dropout variants."""
    dataset = _open(folder)
    backend = _core.ReplayBackend(_open_tape(tape), variants, variant) if tape is not None else None
    result = run_backtest(dataset.source(start_ns, end_ns), backtest_config(options), model_backend=backend)
    return summarize(result, _calendars(dataset))


# -- one model run for many configurations ----------------------------------------------------------

# The options that decide which ticks reach the model and how it steps them. Configurations that
# agree on these see the same model outputs whatever their strategy parameters, fees or latency
# (the signal is stepped on the data, not on the orders), so one recording serves all of them.
# What the model's outputs depend on: a feed-latency model reorders the ticks it sees.
SIGNAL_OPTIONS = ("model", "backend", "interval", "mc_samples", "mc_variant", "mc_seed", "feed_latency", "latency_seed", "feed_hold_s")
_TAPES: dict[str, Any] = {}


def _open_tape(path: str):
    if path not in _TAPES:
        _TAPES[path] = load_tape(path)
    return _TAPES[path]


def _steps_model(options: dict[str, Any]) -> bool:
    o = run_options(options)
    return is_builtin(o.strategy) and builtin_spec(o.strategy, o.params).needs_model


def record_tapes(folder: str, configs: list[dict[str, Any]], period: tuple[int | None, int | None]) -> list[str | None]:
    """Per configuration, the prediction tape its run can replay (None: it runs its model itself).
    Configurations of a built-in strategy with a model that agree on ``SIGNAL_OPTIONS`` share one
    tape, recorded here once over ``period``; a group of one is not worth a recording."""
    groups: dict[str, list[int]] = {}
    for i, options in enumerate(configs):
        if _steps_model(options):
            o = msgspec.to_builtins(run_options(options))
            key = json.dumps({k: o[k] for k in SIGNAL_OPTIONS}, sort_keys=True)
            groups.setdefault(key, []).append(i)
    tapes: list[str | None] = [None] * len(configs)
    dataset = _open(folder)
    for key, members in groups.items():
        if len(members) < 2:
            continue
        name = hashlib.sha256(f"{key}|{period}".encode()).hexdigest()[:16]
        path = Path(folder) / "tapes" / f"{name}.npz"
        if not path.is_file():
            save_tape(path, record_predictions(dataset.source(*period), backtest_config(configs[members[0]])))
        for i in members:
            tapes[i] = str(path)
    return tapes


# -- many configurations ---------------------------------------------------------------------------


def _process_context() -> multiprocessing.context.BaseContext:
    # Not fork: the parent may hold threads (Ray's, a BLAS pool) that a forked child would inherit
    # mid-lock. forkserver starts workers from a clean process; spawn where it is missing.
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # The server imports the engine once; each worker forked from it starts with it imported
    # (about a second less per worker than importing numpy, pyarrow and the core afresh).
    context.set_forkserver_preload([__name__])
    return context


def run_configs(
    folder: str,
    configs: list[dict[str, Any]],
    period: tuple[int | None, int | None],
    *,
    workers: int = 1,
    ray_address: str | None = None,
    on_done: Callable[[int], None] | None = None,
    replay: bool = True,
) -> list[RunSummary]:
    """Every configuration on ``period`` of the data set in ``folder``; results in the configurations'
    order, however many workers ran them and in whatever order they finished. ``replay``: the
    configurations that share a model run replay one recording of it (``record_tapes``), with the
    same fills as stepping the model in each run."""
    results: list[RunSummary | None] = [None] * len(configs)
    done = on_done or (lambda n: None)
    tapes = record_tapes(folder, configs, period) if replay else [None] * len(configs)
    if ray_address is not None:
        _run_ray(folder, configs, period, results, done, workers, ray_address, tapes)
    elif workers <= 1 or len(configs) <= 1:
        for i, options in enumerate(configs):
            with _failing(i):
                results[i] = run_config(folder, options, *period, tapes[i])
            done(1)
    else:
        n = min(workers, len(configs))
        with concurrent.futures.ProcessPoolExecutor(n, mp_context=_process_context()) as pool:
            futures = {pool.submit(run_config, folder, options, *period, tapes[i]): i for i, options in enumerate(configs)}
            try:
                for future in concurrent.futures.as_completed(futures):
                    with _failing(futures[future]):
                        results[futures[future]] = future.result()
                    done(1)
            except BaseException:
                # One configuration failed (or Ctrl-C): the queued ones would only delay the error.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def _failing(index: int):
    try:
        yield
    except (ValueError, TypeError, OSError) as e:
        raise SweepError(f"configuration {index} failed: {e}") from e


def _run_ray(folder, configs, period, results, done, workers: int, address: str, tapes: list[str | None]) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray: pip install 'nextick[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            # A cluster's workers must see the data set's folder at the same path (a shared file system).
            ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(run_config)
        refs = {task.remote(folder, options, *period, tapes[i]): i for i, options in enumerate(configs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    results[refs[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise SweepError(f"configuration {refs[ref]} failed: {e.cause!r}") from e
                done(1)
    finally:
        if started:
            ray.shutdown()


# -- the sweep -------------------------------------------------------------------------------------


class SweepOutcome(msgspec.Struct, kw_only=True):
    spec: SweepSpec
    axes: list[str]
    values: list[dict[str, Any]]  # per configuration
    results: list[RunSummary]  # per configuration, on the validation period
    ranking: list[int]  # configuration indices, best first (validation)
    periods: Periods
    test: RunSummary | None  # the chosen configuration on the test period
    deflated_sharpe: DeflatedSharpe | None
    overfitting: Overfitting | None
    overfitting_note: str
    n_quotes: int
    source: str
    instruments: list[str]
    read_s: float
    run_s: float
    workers: str

    @property
    def chosen(self) -> int:
        return self.ranking[0]


def rank(results: list[RunSummary], metric: str) -> list[int]:
    """Configuration indices, best first by ``metric`` (``RANKABLE`` says which way); nan last, ties by index."""
    sign = -1.0 if RANKABLE[metric] else 1.0

    def key(i: int) -> tuple[bool, float, int]:
        v = results[i].metrics[metric]
        return (math.isnan(v), sign * v if not math.isnan(v) else 0.0, i)

    return sorted(range(len(results)), key=key)


def _overfitting(results: list[RunSummary], most_blocks: int) -> tuple[Overfitting | None, str]:
    if len(results) < 2:
        return None, "n/a: one configuration"
    common = set(results[0].days).intersection(*(r.days for r in results[1:]))
    days = sorted(common)
    blocks = default_blocks(len(days), most_blocks)
    if not blocks:
        return None, f"n/a: {len(days)} validation days with returns; CSCV needs at least 4"
    matrix = np.array([[dict(zip(r.days, r.daily_returns))[d] for d in days] for r in results])
    return probability_of_overfitting(matrix, blocks), ""


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    dataset_dir: str | Path | None = None,
    dataset: QuoteDataset | None = None,
    show_progress: bool | None = False,
) -> SweepOutcome:
    """Run ``spec``; write ``out``/results.parquet and ``out``/sweep.json. The quotes are read once into
    ``dataset_dir`` (default: a temporary folder inside ``out``, removed afterwards), unless
    ``dataset`` is given (it is used as it is, and written to that folder first if held in memory)."""
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise SweepError(f"--workers {workers}: must be at least 1")
    if not 0 < spec.split <= 1 and spec.test_from is None:
        raise SweepError(f"--split {spec.split}: must be in (0, 1], the share of trading days that validate (1: no test period)")
    if spec.pbo_blocks < 2 or spec.pbo_blocks % 2:
        raise SweepError(f"--pbo-blocks {spec.pbo_blocks}: CSCV takes half the blocks in sample; give an even number >= 2")
    if spec.test_from is not None:
        try:
            datetime.date.fromisoformat(spec.test_from)
        except ValueError:
            raise SweepError(f"--test-from {spec.test_from}: write the first test day as YYYY-MM-DD") from None
    try:
        sources = source_options(spec.source)
    except (ValueError, TypeError) as e:
        raise SweepError(f"data options: {e}") from None
    values, configs = expand(spec)  # every error before any data is read
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spill = tempfile.TemporaryDirectory(prefix=".dataset-", dir=out) if dataset_dir is None else contextlib.nullcontext(dataset_dir)
    with spill as folder:
        t0 = time.perf_counter()
        if dataset is None:
            source = quote_source(sources)
            progress = Progress("read", enabled=show_progress, total=getattr(source, "expected_rows", None))
            try:
                dataset = QuoteDataset.read(source, folder, on_progress=progress.update)
            finally:
                progress.close()
        elif dataset.folder is None:
            dataset = dataset.save(folder)
        read_s = time.perf_counter() - t0
        periods = split_periods(dataset, spec.split, spec.test_from)
        where = str(dataset.folder)

        t0 = time.perf_counter()
        progress = Progress("sweep", enabled=show_progress, total=len(configs), unit="configs")
        try:
            results = run_configs(where, configs, (None, periods.boundary_ns), workers=workers,
                                  ray_address=ray_address, on_done=progress.update)
        finally:
            progress.close()
        ranking = rank(results, spec.rank_by)
        # The test period is replayed only now, for the configuration the validation period chose.
        test = None
        if periods.boundary_ns is not None:
            test = run_config(where, configs[ranking[0]], periods.boundary_ns, None)
        run_s = time.perf_counter() - t0
        n_quotes, source_name, instruments = len(dataset), dataset.stats.source, dataset.instruments.symbols
        del dataset
        _OPENED.pop(where, None)  # the temporary folder goes; so does this process's mapping of it

    chosen = results[ranking[0]]
    dsr = deflated_sharpe_ratio(chosen.daily_returns, [r.metrics["daily_sharpe"] for r in results]) if chosen.daily_returns else None
    pbo, pbo_note = _overfitting(results, spec.pbo_blocks)
    axes = [*spec.grid, *spec.random]
    outcome = SweepOutcome(
        spec=spec, axes=axes, values=values, results=results, ranking=ranking, periods=periods, test=test,
        deflated_sharpe=dsr, overfitting=pbo, overfitting_note=pbo_note, n_quotes=n_quotes, source=source_name,
        instruments=instruments, read_s=read_s, run_s=run_s,
        workers=f"Ray ({ray_address})" if ray_address else f"{workers} process{'es' if workers > 1 else ''}",
    )
    write_results(outcome, out)
    return outcome


# -- output ----------------------------------------------------------------------------------------


def results_table(outcome: SweepOutcome):
    """One row per configuration, in configuration order: its id, each axis's value, the validation
    metrics, its rank (1 = chosen), the fills' hash, its days and daily returns."""
    import pyarrow as pa

    columns: dict[str, Any] = {"config_id": pa.array(range(len(outcome.results)), pa.int32())}
    for name in outcome.axes:
        column = [v[name] for v in outcome.values]
        try:
            columns[name] = pa.array(column)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # values of mixed types (a choice of 1 and "a")
            columns[name] = pa.array([json.dumps(x) for x in column])
    for metric in METRIC_COLUMNS:
        kind = pa.int64() if metric.startswith("n_") else pa.float64()
        columns[metric] = pa.array([r.metrics[metric] for r in outcome.results], kind)
    ranks = np.empty(len(outcome.ranking), np.int32)
    ranks[outcome.ranking] = np.arange(1, len(outcome.ranking) + 1)
    columns["rank"] = pa.array(ranks)
    columns["fill_hash"] = pa.array([r.fill_hash for r in outcome.results], pa.string())
    columns["days"] = pa.array([r.days for r in outcome.results], pa.list_(pa.string()))
    columns["daily_returns"] = pa.array([r.daily_returns for r in outcome.results], pa.list_(pa.float64()))
    p = outcome.periods
    metadata = {"period": f"validation {p.validation_days[0]} .. {p.validation_days[-1]}", "rank_by": outcome.spec.rank_by}
    return pa.table(columns).replace_schema_metadata(metadata)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_results(outcome: SweepOutcome, out: Path) -> list[Path]:
    import pyarrow.parquet as pq

    from engine.report import finite_json

    table_path, spec_path = out / RESULTS_FILE, out / SPEC_FILE
    pq.write_table(results_table(outcome), table_path)
    chosen = outcome.chosen
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": _plain(msgspec.to_builtins(outcome.spec)),
        "data": {"source": outcome.source, "quotes": outcome.n_quotes, "instruments": outcome.instruments,
                 "days": outcome.periods.basis},
        "validation_days": outcome.periods.validation_days,
        "test_days": outcome.periods.test_days,
        "configurations": len(outcome.results),
        "chosen": {"config_id": chosen, "values": outcome.values[chosen], "validation": outcome.results[chosen].metrics,
                   "fill_hash": outcome.results[chosen].fill_hash},
        "test": None if outcome.test is None else {
            "metrics": outcome.test.metrics, "fill_hash": outcome.test.fill_hash,
            "days": outcome.test.days, "daily_returns": outcome.test.daily_returns,
        },
        "deflated_sharpe": None if outcome.deflated_sharpe is None else msgspec.to_builtins(outcome.deflated_sharpe),
        "pbo": None if outcome.overfitting is None else msgspec.to_builtins(outcome.overfitting),
        "pbo_note": outcome.overfitting_note,
    }
    spec_path.write_text(json.dumps(finite_json(_plain(doc)), indent=2) + "\n")
    return [table_path, spec_path]


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.2%}"


def _num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_summary(outcome: SweepOutcome, top: int = 10) -> str:
    """The printed summary: data, periods, the top configurations on validation, the chosen one on
    both periods, and how much of its edge may be selection."""
    s, p = outcome.spec, outcome.periods
    n = len(outcome.results)
    grid = " x ".join(str(len(v)) for v in s.grid.values())
    shape = ", ".join(filter(None, [f"grid {grid}" if s.grid else "", f"{s.n} random draws (seed {s.random_seed})" if s.random else ""]))
    val, tst = p.validation_days, p.test_days
    strategy = "several strategies" if "strategy" in outcome.axes else run_options(s.base).strategy
    lines = [
        f"nextick sweep: {n} configurations ({shape or 'the base options alone'}) of {strategy}",
        f"data         {outcome.n_quotes:,} quotes of {len(outcome.instruments)} instruments, {outcome.source}; read once in {outcome.read_s:.2f} s",
        f"days         {len(p.days)} ({p.basis})",
        f"validation   {val[0]} .. {val[-1]} ({len(val)} days): every configuration, ranked by {s.rank_by}",
        f"test         {tst[0]} .. {tst[-1]} ({len(tst)} days): the chosen configuration, run after the choice"
        if tst else "test         none (--split 1): the figures below are all in-sample",
        f"ran          {n} configurations on {outcome.workers} in {outcome.run_s:.2f} s ({n / outcome.run_s:.2f}/s)",
        "-" * 100,
    ]
    head = ["rank", "id", *outcome.axes, "daily Sharpe", "total return", "max drawdown", "fills", "fills SHA-256"]
    rows = []
    for k, i in enumerate(outcome.ranking[:top]):
        r = outcome.results[i]
        m = r.metrics
        rows.append([str(k + 1), str(i), *(_cell(outcome.values[i][a]) for a in outcome.axes), _num(m["daily_sharpe"]),
                     _pct(m["total_return"]), _pct(-m["max_drawdown"]), f"{int(m['n_fills']):,}", r.fill_hash[:12]])
    widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(head)]
    lines.append(f"top {min(top, n)} of {n} by {s.rank_by} on validation")
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append("-" * 100)
    c = outcome.chosen
    chosen_values = ", ".join(f"{k}={_cell(v)}" for k, v in outcome.values[c].items()) or "the base options"
    lines.append(f"chosen       configuration {c} ({chosen_values})")
    vm = outcome.results[c].metrics
    tm = outcome.test.metrics if outcome.test else None
    lines.append(f"{'':28}{'validation':>14}{'test':>14}")
    for label, key, fmt in [("total return", "total_return", _pct), ("mean daily return", "mean_daily_return", _pct),
                            ("daily volatility", "daily_volatility", lambda x: "n/a" if math.isnan(x) else f"{x:.2%}"),
                            ("daily Sharpe (not ann.)", "daily_sharpe", _num), ("max drawdown", "max_drawdown", lambda x: _pct(-x)),
                            ("fills", "n_fills", lambda x: f"{int(x):,}")]:
        lines.append(f"{label:28}{fmt(vm[key]):>14}{fmt(tm[key]) if tm else '':>14}")
    d = outcome.deflated_sharpe
    if d is not None and not math.isnan(d.probability):
        lines.append(f"deflated Sharpe ratio  {d.probability:.3f}: P(true daily Sharpe > {d.expected_max_sharpe:.3f}, the expected best of "
                     f"{d.n_trials} trials with Sharpe variance {d.trial_sharpe_variance:.3g}) over {d.n_returns} validation days")
    else:
        lines.append("deflated Sharpe ratio  n/a: the chosen configuration has no daily Sharpe ratio on validation")
    o = outcome.overfitting
    if o is not None:
        lines.append(f"PBO                    {o.probability:.3f}: share of {o.n_splits} CSCV splits ({o.n_periods} validation days "
                     f"in {o.n_blocks} blocks) where the in-sample best was at or below the median out of sample")
    else:
        lines.append(f"PBO                    {outcome.overfitting_note}")
    return "\n".join(lines)
