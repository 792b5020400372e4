"""The live commands as a user runs them: paper with no arguments, exchange-sim, record then replay-raw,
reconcile."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.dataset as ds

from engine.cli import main

ENV = os.environ | {"PYTHONUNBUFFERED": "1"}


def nextick(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def test_paper_with_no_arguments_trades_the_simulator_offline_and_shows_its_status_line(tmp_path):
    # The only options: where to keep the run, and when to stop (the default runs until Ctrl-C).
    r = nextick("paper", "--run-dir", str(tmp_path / "run"), "--duration", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "local exchange simulator" in out and "offline" in out
    status = [line for line in out.splitlines() if line.startswith("eq ")]
    assert len(status) >= 2  # one a second
    assert "q/s" in status[-1] and "binance-usdm up" in status[-1]
    assert "paper run" in out and "binance-usdm:" in out and "latency (us)" in out
    assert (tmp_path / "run" / "journal.sqlite").exists()
    assert list((tmp_path / "run" / "raw" / "binance-usdm").glob("*.gz"))
    rc = nextick("reconcile", str(tmp_path / "run"))
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert "identical" in rc.stdout


def test_exchange_sim_prints_its_url_and_stops_after_duration():
    r = nextick("exchange-sim", "--port", "0", "--duration", "1.5", "--faults", "close@0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ws://127.0.0.1:" in r.stdout
    bad = nextick("exchange-sim", "--port", "0", "--duration", "1", "--faults", "explode@3")
    assert bad.returncode == 2 and "explode" in bad.stderr


def test_record_then_replay_raw_gives_the_recorded_quotes(tmp_path, capsys):
    out = tmp_path / "rec"
    r = nextick("record", "--sim", "--venue", "binance-usdm", "--venue", "bybit-linear", "--symbols", "BTCUSDT,ETHUSDT",
                "--out", str(out), "--duration", "2.5")
    assert r.returncode == 0, r.stderr[-2000:]
    raw = sorted((out / "raw").rglob("*.gz"))
    assert {p.parent.name for p in raw} == {"binance-usdm", "bybit-linear"}
    quotes = ds.dataset(out / "quotes", partitioning="hive").to_table()
    assert quotes.num_rows > 20
    assert set(quotes.column("venue").to_pylist()) == {"binance-usdm", "bybit-linear"}
    # Replaying the raw frames through the live decoders gives back exactly the quotes recorded.
    code = main(["replay-raw", str(out / "raw"), "--strategy", "none", "--interval", "raw", "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)[0]
    assert summary["quotes_in"] == quotes.num_rows


def test_reconcile_of_a_directory_without_a_journal_is_a_one_line_error(tmp_path, capsys):
    assert main(["reconcile", str(tmp_path)]) == 2
    assert "no journal" in capsys.readouterr().err


def test_replay_raw_summary_counts_skipped_streams(tmp_path, capsys):
    t = 1723161254087891268
    lines = [
        f'{t} {{"stream":"btcusdt@bookTicker","data":{{"u":1,"s":"BTCUSDT","b":"100.0","B":"1","a":"100.1","A":"1"}}}}',
        f'{t + 1000} {{"stream":"btcusdt@depth@100ms","data":{{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}}}',
        f'{t + 2000} {{"stream":"btcusdt@trade","data":{{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"100.0","q":"1"}}}}',
        f'{t + 3000} {{"stream":"btcusdt@bookTicker","data":{{"u":2,"s":"BTCUSDT","b":"100.0","B":"2","a":"100.1","A":"1"}}}}',
    ]
    path = tmp_path / "spot_btcusdt_20240808.txt"
    path.write_text("\n".join(lines) + "\n")
    assert main(["replay-raw", str(path), "--strategy", "none", "--interval", "raw", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped      depth@100ms 1, trade 1" in out
    assert "2 quotes" in out
