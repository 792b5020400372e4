"""The command line end to end, on data the tests generate (and on ../shared/data when present)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.cli import _build_parser, main

SMALL = ["--n-sessions", "2", "--quote-rate-hz", "2", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_backtest_prints_the_summary(capsys):
    code, out, _ = run_cli(capsys, "backtest", *SMALL)
    assert code == 0
    for label in ("Sharpe", "Sortino", "max drawdown", "Calmar", "turnover", "hit rate", "fees paid",
                  "exposure", "resets", "SESSION_OPEN", "GAP", "quarantined", "quotes/s", "momentum"):
        assert label in out, label
    assert "3 instruments" in out


def test_out_dir_holds_fills_equity_and_a_consistent_summary(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "backtest", *SMALL, "--out", str(tmp_path))
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    fills = pq.read_table(tmp_path / "fills.parquet")
    equity = pq.read_table(tmp_path / "equity.parquet")
    resets = pq.read_table(tmp_path / "resets.parquet")
    assert fills.num_rows == summary["metrics"]["fill_count"] > 0
    assert set(fills.column("symbol").to_pylist()) <= set(summary["instruments"])
    assert resets.num_rows == sum(summary["counters"]["resets"].values())
    eq = equity.column("equity").to_numpy()
    assert eq[0] == summary["config"]["initial_capital"]
    assert eq[-1] / eq[0] - 1 == pytest.approx(summary["metrics"]["total_return"])
    assert (tmp_path / "trades.parquet").exists()


def test_two_runs_give_identical_fills_resets_and_metrics(capsys):
    outs = []
    for _ in range(2):
        code, out, _ = run_cli(capsys, "backtest", *SMALL, "--json", "--interval", "100ms", "--latency-ns", "250000")
        assert code == 0
        outs.append(json.loads(out)[0])
    a, b = outs
    assert a["fill_hash"] == b["fill_hash"]
    assert a["metrics"] == b["metrics"] and a["counters"] == b["counters"]
    assert a["metrics"]["fill_count"] > 0


def test_seed_changes_the_data(capsys):
    hashes = set()
    for seed in ("1", "2"):
        _, out, _ = run_cli(capsys, "backtest", *SMALL, "--json", "--seed", seed)
        hashes.add(json.loads(out)[0]["fill_hash"])
    assert len(hashes) == 2


def test_compare_prints_both_strategies_and_jobson_korkie(capsys):
    code, out, _ = run_cli(capsys, "backtest", *SMALL, "--compare", "buy_hold")
    assert code == 0
    assert "buy_hold" in out and "Jobson-Korkie (Memmel) momentum vs buy_hold: z =" in out


ANNUALIZED = ("annualized_return", "volatility", "sharpe", "sortino", "calmar")
PER_DAY = ("mean_daily_return", "daily_volatility", "daily_sharpe", "best_day", "worst_day")


def table_row(out: str, label: str) -> list[str]:
    """The cells of the summary table's row ``label`` (labels are padded to 28 characters)."""
    line = next(x for x in out.splitlines() if x.startswith(f"{label:<28}"))
    return line[28:].split()


def test_a_short_run_leads_with_per_day_figures_and_gives_no_annualized_number(capsys):
    code, out, _ = run_cli(capsys, "backtest", *SMALL)  # 2 sessions
    assert code == 0
    assert table_row(out, "days") == ["2"]
    for label in ("mean daily return", "daily volatility", "daily Sharpe (not ann.)", "best day", "worst day"):
        assert table_row(out, label)[0] != "n/a", label
    assert f"{'annualized':<28}n/a: 2 days < 60 (return, volatility, Sharpe, Sortino, Calmar)" in out
    assert "annualized return" not in out and "Sharpe (ann.)" not in out
    assert "days         US-RTH sessions, open to next open; annualized figures need 60 days" in out
    code, out, _ = run_cli(capsys, "backtest", *SMALL, "--json")
    summary = json.loads(out)[0]
    m = summary["metrics"]
    assert m["annualized"] is False and m["n_days"] == 2
    assert all(m[k] is None for k in ANNUALIZED)
    assert all(isinstance(m[k], float) for k in PER_DAY)
    assert (summary["day_basis"], summary["annualize_min_days"]) == ("US-RTH sessions, open to next open", 60)


def test_sixty_sessions_lead_with_annualized_figures_from_daily_returns(capsys, tmp_path):
    argv = ["backtest", "--n-sessions", "61", "--quote-rate-hz", "0.2", "--no-progress"]
    code, out, _ = run_cli(capsys, *argv, "--out", str(tmp_path))
    assert code == 0
    m = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert m["annualized"] is True and m["n_days"] == 61
    assert table_row(out, "Sharpe (ann.)") == [f"{m['sharpe']:.2f}"]
    assert table_row(out, "annualized return") == [f"{m['annualized_return'] * 100:+.2f}%"]
    assert out.index("annualized return") < out.index("mean daily return")
    # By hand from the equity file: a US-RTH session's close is its last sample (every sample of
    # a session lies on its UTC date); returns close to close, the first over the initial capital.
    eq = pq.read_table(tmp_path / "equity.parquet")
    ts, equity = eq.column("ts_ns").to_numpy(), eq.column("equity").to_numpy()
    date = ts // (86_400 * 10**9)
    closes = equity[np.append(np.flatnonzero(np.diff(date)), len(date) - 1)]
    r = closes / np.concatenate(([equity[0]], closes[:-1])) - 1
    years = (ts[-1] - ts[0]) / (365.25 * 86_400 * 10**9)
    assert len(r) == 61
    assert m["daily_sharpe"] == pytest.approx(r.mean() / r.std(ddof=1), rel=1e-9)
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(61 / years), rel=1e-9)
    assert m["annualized_return"] == pytest.approx((equity[-1] / equity[0]) ** (1 / years) - 1, rel=1e-9)


def test_days_are_sessions_of_the_calendar_not_utc_dates(capsys):
    # 3 CME sessions, each from 17:00 Chicago (23:00 UTC) to 16:00 the next day, span 4 UTC dates
    code, out, _ = run_cli(capsys, "backtest", "--n-sessions", "3", "--quote-rate-hz", "0.2", "--calendar", "CME",
                           "--no-progress", "--json")  # fmt: skip
    summary = json.loads(out)[0]
    assert summary["metrics"]["n_days"] == 3 and summary["day_basis"] == "CME sessions, open to next open"


def test_the_summary_prints_each_runs_fills_hash(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "backtest", *SMALL, "--compare", "buy_hold", "--out", str(tmp_path))
    assert code == 0
    full = [json.loads((tmp_path / name / "summary.json").read_text())["fill_hash"] for name in ("momentum", "buy_hold")]
    assert table_row(out, "fills SHA-256") == [h[:12] for h in full]
    # the same run again prints the same hash; other data, another
    _, again, _ = run_cli(capsys, "backtest", *SMALL)
    _, other, _ = run_cli(capsys, "backtest", *SMALL, "--seed", "2")
    assert table_row(again, "fills SHA-256") == [full[0][:12]] != table_row(other, "fills SHA-256")

def hashes(capsys, *argv: str) -> dict[str, str]:
    code, out, _ = run_cli(capsys, "backtest", *argv, "--json")
    assert code == 0
    return {r["strategy"]: r["fill_hash"] for r in json.loads(out)}


def test_compare_and_oracle_replay_one_read_with_the_fills_of_separate_runs(capsys):
    together = hashes(capsys, *SMALL, "--strategy", "ssm", "--compare", "momentum", "--oracle", "--alpha-strength", "3")
    alone = {**hashes(capsys, *SMALL, "--strategy", "ssm", "--alpha-strength", "3"),
             **hashes(capsys, *SMALL, "--strategy", "momentum", "--alpha-strength", "3")}
    assert {k: together[k] for k in alone} == alone and len(set(together.values())) == 3

    # The oracle on the market itself, not on a replay of it.
    from engine.backtest import BacktestConfig, run_backtest
    from engine.model.weights import load_model
    from feeds.synthetic import SyntheticConfig, SyntheticMarket
    from strategies.builtin import builtin_spec
    from strategies.oracle import OracleThreshold

    market = SyntheticMarket(SyntheticConfig(n_sessions=2, quote_rate_hz=2, alpha_strength=3,
                                             horizon_s=float(load_model(None).signal.horizon_ticks)))
    oracle = OracleThreshold(market, threshold_bps=builtin_spec("ssm").threshold_bps)
    assert together["oracle"] == run_backtest(market, BacktestConfig(strategy="oracle"), strategy=oracle).fill_hash()

    code, out, _ = run_cli(capsys, "backtest", *SMALL, "--compare", "buy_hold")
    assert code == 0 and "quotes read once in" in out and "replayed by 2 runs" in out


def test_compare_on_a_file_keeps_its_quarantines_in_both_summaries(capsys, tmp_path):
    rows = csv_rows()
    rows[100] = rows[100].replace(",10,12", ",nan,12")
    path = tmp_path / "quotes.csv"
    write_csv(path, rows)
    argv = ["--data", str(path), *COLS, "--interval", "raw", "--no-progress"]
    code, out, _ = run_cli(capsys, "backtest", *argv, "--strategy", "mean_reversion", "--compare", "momentum", "--json")
    assert code == 0
    both = json.loads(out)
    assert [s["source"]["quarantined"] for s in both] == [{"nan": 1}, {"nan": 1}]
    alone = hashes(capsys, *argv, "--strategy", "momentum")
    assert both[1]["fill_hash"] == alone["momentum"]


def test_oracle_on_file_data_is_refused_before_reading_it(capsys, tmp_path):
    code, _, err = run_cli(capsys, "backtest", "--data", str(tmp_path / "absent.csv"), "--oracle")
    assert code == 2 and "--oracle needs the synthetic market" in err


def test_python_strategy_by_import_path(capsys):
    code, out, _ = run_cli(capsys, "backtest", *SMALL, "--strategy", "strategies.ema_cross:EmaCross",
                           "--param", "fast_span=30", "--param", "slow_span=120")
    assert code == 0 and "ema_cross" in out


def test_portfolio_strategy_by_import_path(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "backtest", *SMALL, "--strategy", "strategies.equal_weight:EqualWeight",
                           "--param", "rebalance_s=600", "--param", "gross=0.9", "--out", str(tmp_path))
    assert code == 0 and "equal_weight" in out and "rebalances" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counters"]["rebalances"] > 2 and summary["metrics"]["fill_count"] > 0


def write_csv(path: Path, rows: list[str]) -> None:
    text = "time_ms,sym,b,a,bs,as\n" + "\n".join(rows) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


def csv_rows(n: int = 2000, start_ms: int = 1_704_189_600_000) -> list[str]:
    rng = np.random.default_rng(0)
    mid = 100 + np.cumsum(rng.normal(0, 0.02, n))
    return [f"{start_ms + k * 500},ABC,{m - 0.01:.2f},{m + 0.01:.2f},10,12" for k, m in enumerate(mid)]


COLS = ["--columns", "ts=time_ms,symbol=sym,bid=b,ask=a,bid_sz=bs,ask_sz=as"]


def test_csv_data_with_bad_rows_are_quarantined_and_counted(capsys, tmp_path):
    rows = csv_rows()
    rows[100] = rows[100].replace(",10,12", ",nan,12")  # a NaN size
    b, a = rows[200].split(",")[2:4]
    rows[200] = rows[200].replace(f"{b},{a}", f"{a},{b}")  # crossed
    path = tmp_path / "quotes.csv.gz"
    write_csv(path, rows)
    code, out, _ = run_cli(capsys, "backtest", "--data", str(path), *COLS, "--interval", "raw", "--no-progress")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("quarantined"))
    assert "crossed 1" in line and "nan 1" in line and "of 2,000 rows read" in line
    assert "timestamps in ms (detected)" in out


def test_reject_policy_stops_with_file_line_and_field(capsys, tmp_path):
    rows = csv_rows()
    rows[99] = rows[99].replace(",10,12", ",-5,12")  # line 101 counting the header
    path = tmp_path / "q.csv"
    write_csv(path, rows)
    code, _, err = run_cli(capsys, "backtest", "--data", str(path), *COLS, "--policy", "reject", "--no-progress")
    assert code == 2
    assert "q.csv" in err and "101" in err and "bid_sz" in err


def test_missing_file_and_bad_options_are_one_line_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "backtest", "--data", str(tmp_path / "nope.csv"))
    assert code == 2 and "--data" in err and "no such file" in err
    code, _, err = run_cli(capsys, "backtest", *SMALL, "--strategy", "not_a_strategy")
    assert code == 2 and "neither a built-in" in err


def test_every_option_has_help_text():
    parser = _build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no subcommands"
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"nextick {name} {action.option_strings} has no help"
        assert p.description and p.format_help()


def test_console_script_is_installed_and_runs():
    exe = Path(sys.executable).with_name("nextick")
    assert exe.exists(), "the nextick console script is not installed in this environment"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "backtest" in out
    out = subprocess.run([str(exe), "backtest", *SMALL, "--json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)[0]["metrics"]["fill_count"] > 0


@pytest.mark.shared_data
def test_readme_fx_command_on_real_dukascopy_data(capsys, shared_data):
    path = shared_data / "fx" / "dukascopy_EURUSD_2019-02-04_48h.csv.gz"
    code, out, _ = run_cli(
        capsys, "backtest", "--data", str(path),
        "--columns", "ts=ts_ms_utc,bid=bid,ask=ask,bid_sz=bid_volume,ask_sz=ask_volume,symbol=symbol",
        "--tick-size", "0.00001", "--lot-size", "1000", "--calendar", "FX", "--capital", "100000",
        "--no-progress", "--json",
    )
    assert code == 0
    s = json.loads(out)[0]
    assert s["quotes_in"] == 266_219 and s["source"]["quarantined"] == {}
    assert s["source"]["ts_unit"] == "ms" and s["source"]["ts_unit_detected"]
    assert s["metrics"]["fill_count"] > 0 and s["counters"]["resets"]["SESSION_OPEN"] >= 2
