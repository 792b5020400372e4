"""nextick sweep: configurations from axes, the same results for any number of workers (processes or
Ray), errors before anything runs, and a validation period that the test period cannot influence."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import _build_parser, _options, main
from engine.domain.timestamps import DAY_NS
from engine.options import (
    RUN_OPTIONS,
    SOURCE_OPTIONS,
    RunOptions,
    SourceOptions,
    quote_source,
    run_options,
    source_options,
)
from engine.sweep import (
    METRIC_COLUMNS,
    SweepError,
    SweepSpec,
    axis_values,
    expand,
    run_sweep,
    split_periods,
)
from feeds.dataset import QuoteDataset

# A small market: 2 instruments, 4 NYSE-hours sessions, ~47k quotes; seconds per sweep.
SOURCE = {"n_instruments": 2, "n_sessions": 4, "quote_rate_hz": 0.5}
SPEC = SweepSpec(
    source=SOURCE,
    base={"strategy": "momentum", "interval": "1s"},
    grid={"fee_bps": [0.5, 2.0], "params.fast_span": [5, 20]},
    random={"params.slow_span": "int:40:120"},
    n=2,
    random_seed=3,
)


def table(out):
    return pq.read_table(out / "results.parquet")


def test_configurations_are_grid_times_draws_in_order():
    values = axis_values(SPEC)
    assert len(values) == 2 * 2 * 2
    assert [(v["fee_bps"], v["params.fast_span"]) for v in values[::2]] == [(0.5, 5), (0.5, 20), (2.0, 5), (2.0, 20)]
    # Every grid point gets the same draws.
    assert {tuple(v["params.slow_span"] for v in values[k : k + 2]) for k in range(0, 8, 2)} == {
        tuple(v["params.slow_span"] for v in values[:2])
    }
    _, configs = expand(SPEC)
    assert configs[3] == {"strategy": "momentum", "interval": "1s", "fee_bps": 0.5,
                          "params": {"fast_span": 20, "slow_span": values[3]["params.slow_span"]}}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), other=st.integers(0, 2**32 - 1), n=st.integers(1, 6))
def test_random_draws_are_a_function_of_the_seed(seed, other, n):
    spec = SweepSpec(grid={"fee_bps": [1, 2]}, n=n, random_seed=seed,
                     random={"latency_ns": "int:0:1000000", "params.entry_z": "uniform:0.5:3",
                             "capital": "loguniform:1000:1000000", "interval": "choice:1s,100ms"})
    first = axis_values(spec)
    assert axis_values(SweepSpec(**_fields(spec))) == first
    assert len(first) == 2 * n
    for v in first:
        assert 0 <= v["latency_ns"] <= 1_000_000 and isinstance(v["latency_ns"], int)
        assert 0.5 <= v["params.entry_z"] < 3 and 1000 <= v["capital"] <= 1_000_000
        assert v["interval"] in ("1s", "100ms")
    if other != seed:
        changed = axis_values(SweepSpec(grid=spec.grid, random=spec.random, n=n, random_seed=other))
        # Two continuous draws from different seeds coincide with probability 0.
        assert [v["params.entry_z"] for v in changed] != [v["params.entry_z"] for v in first]


@pytest.mark.parametrize(
    "spec, message",
    [
        (SweepSpec(grid={"fee": [1, 2]}), r"--grid fee: unknown option; did you mean fee_bps"),
        (SweepSpec(random={"fee_bps": "uniform:5:1"}), r"--random fee_bps=uniform:5:1: LO \(5.0\) must be below HI"),
        (SweepSpec(random={"capital": "loguniform:0:10"}), r"capital=loguniform:0:10: loguniform needs 0 < LO"),
        (SweepSpec(random={"latency_ns": "int:1.5:9"}), r"latency_ns=int:1.5:9: LO and HI must be integers"),
        (SweepSpec(random={"fee_bps": "normal:0:1"}), r"fee_bps=normal:0:1: unknown distribution 'normal'"),
        (SweepSpec(grid={"seed": [1, 2]}), r"--grid seed: seed is a data option"),
        (SweepSpec(grid={"fee_bps": ["cheap"]}), r"configuration 0 \(fee_bps='cheap'\): option fee_bps \(--fee-bps\)"),
        (SweepSpec(grid={"latency_ns": [-5]}), r"option latency_ns \(--latency-ns\): must be >= 0"),
        (SweepSpec(grid={"params.fast": [3]}), r"unknown parameter 'fast' for strategy 'momentum'"),
        (SweepSpec(rank_by="sortino"), r"--rank-by sortino: not a metric"),
        (SweepSpec(random={"fee_bps": "uniform:1:2"}, n=0), r"--n 0"),
        (SweepSpec(test_from="Jan 5"), r"--test-from Jan 5: write the first test day as YYYY-MM-DD"),
        (SweepSpec(split=0.0), r"--split 0.0: must be in \(0, 1\]"),
        (SweepSpec(pbo_blocks=5), r"--pbo-blocks 5: .* even number"),
    ],
)
def test_bad_sweeps_name_the_option_before_anything_runs(tmp_path, spec, message):
    out = tmp_path / "out"
    with pytest.raises(SweepError, match=message):
        run_sweep(SweepSpec(**{**_fields(spec), "source": SOURCE}), out)
    assert not out.exists()  # nothing was read, nothing written


def _fields(spec: SweepSpec) -> dict:
    return {name: getattr(spec, name) for name in spec.__struct_fields__}


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """The same sweep with 1 worker and with 2 worker processes."""
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path_factory.mktemp(f"sweep{workers}")
        run_sweep(SPEC, outs[workers], workers=workers)
    return outs


def test_results_do_not_depend_on_the_number_of_workers(processes):
    one, two = table(processes[1]), table(processes[2])
    assert one.equals(two)  # every column, row for row: metrics, fill hashes, daily returns
    assert one.num_rows == 8 and one.column("config_id").to_pylist() == list(range(8))
    assert len(set(one.column("fill_hash").to_pylist())) == 8  # the configurations really differ
    assert (processes[1] / "sweep.json").read_text() == (processes[2] / "sweep.json").read_text()


def test_results_file_has_the_expected_columns(processes):
    t = table(processes[2])
    assert t.column_names == ["config_id", "fee_bps", "params.fast_span", "params.slow_span", *METRIC_COLUMNS,
                              "rank", "fill_hash", "days", "daily_returns"]
    days, returns = t.column("days").to_pylist(), t.column("daily_returns").to_pylist()
    assert all(len(d) == len(r) == n for d, r, n in zip(days, returns, t.column("n_days").to_pylist()))
    # Validation only: the first 2 of the 4 sessions.
    assert days[0] == ["2024-01-02", "2024-01-03"]
    # The daily Sharpe ratio in the table is that of the daily returns beside it.
    r = np.array(returns[0])
    assert t.column("daily_sharpe")[0].as_py() == pytest.approx(r.mean() / r.std(ddof=1), rel=1e-12)
    assert sorted(t.column("rank").to_pylist()) == list(range(1, 9))


def test_sweep_json_runs_the_same_sweep_again(processes, tmp_path):
    doc = json.loads((processes[1] / "sweep.json").read_text())
    spec = SweepSpec.load(processes[1] / "sweep.json")
    assert spec == SPEC
    assert doc["test_days"] == ["2024-01-04", "2024-01-05"] and doc["test"]["days"] == doc["test_days"]
    again = run_sweep(spec, tmp_path / "again", workers=1)
    assert table(tmp_path / "again").equals(table(processes[1]))
    assert again.test.fill_hash == doc["test"]["fill_hash"]


def test_ray_tasks_give_the_processes_results(processes, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_sweep(SPEC, tmp_path / "ray", ray_address="auto", workers=2)
    finally:
        ray.shutdown()
    assert table(tmp_path / "ray").equals(table(processes[2]))


def test_period_replays_hold_their_quotes_only():
    dataset = QuoteDataset.read(quote_source(SOURCE))
    periods = split_periods(dataset)
    b = periods.boundary_ns
    ts = dataset.quotes["ts_recv"]
    before = np.concatenate(list(dataset.source(None, b).chunks()))
    after = np.concatenate(list(dataset.source(b, None).chunks()))
    assert np.array_equal(before, dataset.quotes[ts < b]) and np.array_equal(after, dataset.quotes[ts >= b])
    assert len(before) and len(after) and dataset.source(None, b).expected_rows == len(before)
    assert periods.days == ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
    assert split_periods(dataset, test_from="2024-01-05").n_validation == 3
    assert split_periods(dataset, split=1).boundary_ns is None
    with pytest.raises(SweepError, match="--test-from 2024-01-02"):
        split_periods(dataset, test_from="2024-01-02")


def test_test_days_cannot_change_the_choice(tmp_path):
    """Rewrite the test period's prices (a steep drift): the validation results and the chosen
    configuration stay bit for bit; only the chosen one's test figures move."""
    dataset = QuoteDataset.read(quote_source(SOURCE))
    b = split_periods(dataset).boundary_ns
    quotes = dataset.quotes.copy()
    later = quotes["ts_recv"] >= b
    drift = np.exp(0.05 * (quotes["ts_recv"][later] - b) / DAY_NS)
    for field in ("bid_px", "ask_px"):
        quotes[field][later] *= drift
    changed = QuoteDataset(quotes, dataset.layout)

    a = run_sweep(SPEC, tmp_path / "a", dataset=dataset, workers=2)
    c = run_sweep(SPEC, tmp_path / "c", dataset=changed, workers=2)
    assert table(tmp_path / "a").equals(table(tmp_path / "c"))
    assert a.chosen == c.chosen
    assert a.test.fill_hash != c.test.fill_hash
    assert not math.isclose(a.test.metrics["total_return"], c.test.metrics["total_return"])
    # The change matters to a ranking that sees those days: over the whole period (--split 1) every
    # configuration's figures move.
    whole = SweepSpec(**{**_fields(SPEC), "split": 1.0})
    run_sweep(whole, tmp_path / "wa", dataset=dataset, workers=2)
    run_sweep(whole, tmp_path / "wc", dataset=changed, workers=2)
    sharpe_a, sharpe_c = (table(tmp_path / w).column("daily_sharpe").to_pylist() for w in ("wa", "wc"))
    assert all(x != y for x, y in zip(sharpe_a, sharpe_c))


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main([
        "sweep", "--n-instruments", "2", "--n-sessions", "8", "--quote-rate-hz", "0.5", "--split", "0.5",
        "--grid", "fee_bps=0.5,1", "--random", "params.fast_span=int:5:30", "--n", "3", "--random-seed", "1",
        "--workers", "2", "--out", str(out), "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    for line in ("6 configurations (grid 2, 3 random draws (seed 1))", "validation   2024-01-02 .. 2024-01-05 (4 days)",
                 "test         2024-01-08 .. 2024-01-11 (4 days)", "deflated Sharpe ratio", "PBO "):
        assert line in printed
    t = pq.read_table(out / "results.parquet")
    assert t.num_rows == 6
    assert {"config_id", "fee_bps", "params.fast_span", "daily_sharpe", "fill_hash", "daily_returns", "days"} <= set(t.column_names)
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["spec"]["grid"] == {"fee_bps": [0.5, 1]} and doc["spec"]["source"]["n_sessions"] == 8
    assert doc["pbo"]["n_blocks"] == 4 and 0 <= doc["pbo"]["probability"] <= 1
    assert not any(p.name.startswith(".dataset-") for p in out.iterdir())  # the temporary data set is gone


def test_cli_bad_axis_is_one_line(tmp_path, capsys):
    assert main(["sweep", "--grid", "fee_bsp=1,2", "--out", str(tmp_path / "x")]) == 2
    assert "nextick: error: --grid fee_bsp: unknown option; did you mean fee_bps?" in capsys.readouterr().err


def test_sweep_flags_are_the_options_by_name_with_their_defaults():
    ns = _build_parser().parse_args(["sweep"])
    assert run_options(_options(ns, RUN_OPTIONS)) == RunOptions()
    assert source_options(_options(ns, SOURCE_OPTIONS)) == SourceOptions()
    for name in ("n", "random_seed", "split", "test_from", "rank_by", "pbo_blocks"):
        assert getattr(ns, name) == getattr(SweepSpec(), name), name


def test_cli_spec_runs_a_written_sweep_again(processes, tmp_path, capsys):
    spec = processes[1] / "sweep.json"
    assert main(["sweep", "--spec", str(spec), "--workers", "1", "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    assert table(tmp_path / "again").equals(table(processes[1]))
    assert main(["sweep", "--spec", str(spec), "--grid", "fee_bps=1", "--out", str(tmp_path / "x")]) == 2
    assert "--spec: the file gives the axes" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_configuration_failing_as_it_runs_is_named(tmp_path, workers):
    # A missing model file passes every check before the run (only loading it tells) and fails in the worker.
    spec = SweepSpec(source=SOURCE, grid={"model": [None, str(tmp_path / "missing.safetensors")]})
    with pytest.raises(SweepError, match=r"configuration 1 failed: .*missing\.safetensors"):
        run_sweep(spec, tmp_path / "out", workers=workers)


def test_progress_counts_configurations(tmp_path, capsys):
    run_sweep(SweepSpec(source=SOURCE, grid={"fee_bps": [0.5, 1, 2]}), tmp_path / "out", workers=1, show_progress=True)
    err = capsys.readouterr().err
    assert "sweep [" in err and "3/3 configs" in err


def test_ssm_configurations_replay_one_recording_with_the_same_fills(tmp_path):
    """Configurations of the SSM rule that share a model run replay one prediction tape: the same
    fills, configuration by configuration, as each stepping the model itself."""
    from engine.sweep import record_tapes, run_configs

    dataset = QuoteDataset.read(quote_source(SOURCE), tmp_path / "data")
    configs = [{"strategy": "ssm", "params": {"threshold_bps": t}, "fee_bps": f} for t in (0.5, 2.0) for f in (0.5, 1.0)]
    configs.append({"strategy": "momentum"})  # no model: runs as it is
    folder = str(dataset.folder)
    tapes = record_tapes(folder, configs, (None, None))
    assert len({t for t in tapes[:4]}) == 1 and tapes[0] is not None and tapes[4] is None
    replayed = run_configs(folder, configs, (None, None), replay=True)
    stepped = run_configs(folder, configs, (None, None), replay=False)
    assert [r.fill_hash for r in replayed] == [r.fill_hash for r in stepped]
    assert len({r.fill_hash for r in replayed[:4]}) == 4  # the configurations do differ
