"""`nextick ingest` then `nextick backtest --catalog`, as a user runs them."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from engine.cli import main

T0_MS = 1_704_153_600_000  # 2024-01-02 00:00:00 UTC


def binance_csv(path, n: int, *, crossed_at: int | None = None, start_ms: int = T0_MS) -> None:
    lines = ["update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time"]
    for k in range(n):
        bid, ask = 100 + (k % 7) * 0.01, 100.05 + (k % 7) * 0.01
        if k == crossed_at:
            bid, ask = ask + 0.1, ask
        t = start_ms + k * 500
        lines.append(f"{k + 1},{bid:.2f},1.5,{ask:.2f},2.5,{t},{t + 1}")
    path.write_text("\n".join(lines) + "\n")


def tardis_csv(path, n: int) -> None:
    lines = ["exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount"]
    for k in range(n):
        t = T0_MS * 1000 + k * 700_000
        lines.append(f"bybit,ETHUSDT,{t},{t + 5000},3,{2000.5 + k % 3:.1f},{2000.0 + k % 3:.1f},4")
    path.write_text("\n".join(lines) + "\n")


def test_ingest_then_backtest_over_the_catalog_with_quarantines_in_the_summary(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    binance_csv(src / "BTCUSDT-bookTicker-2024-01-02.csv", 2000, crossed_at=100)
    tardis_csv(src / "bybit_quotes_ETHUSDT_2024-01-02.csv", 1500)
    (src / "README.txt").write_text("not data\n")
    cat = tmp_path / "cat"
    assert main(["ingest", str(src), "--catalog", str(cat)]) == 0
    out = capsys.readouterr().out
    assert "ingested" in out and "crossed 1" in out and "README.txt" in out  # the README is noted, skipped
    assert main(["ingest", str(src), "--catalog", str(cat)]) == 0
    assert "already ingested" in capsys.readouterr().out

    assert main(["backtest", "--catalog", str(cat), "--strategy", "momentum", "--interval", "raw", "--json",
                 "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)[0]
    assert s["quotes_in"] == 1999 + 1500  # both instruments merged, minus the crossed row
    assert s["source"]["quarantined"] == {"crossed": 1}  # set aside at ingest, shown with the replay
    # Two strategies on one read of the catalog: each run has the fills it has alone, and the quarantine count.
    assert main(["backtest", "--catalog", str(cat), "--strategy", "mean_reversion", "--compare", "momentum",
                 "--interval", "raw", "--json", "--no-progress"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both[1]["fill_hash"] == s["fill_hash"] and both[1]["source"]["quarantined"] == {"crossed": 1}
    assert main(["backtest", "--catalog", str(cat), "--instruments", "ETHUSDT", "--interval", "raw",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "1 instruments (ETHUSDT)" in text or "1 instrument" in text
    # A window: the first 10 minutes only (the BTC file spans 2000 * 0.5 s = 16.7 min).
    assert main(["backtest", "--catalog", str(cat), "--instruments", "BTCUSDT", "--start", "2024-01-02T00:00:00",
                 "--end", "2024-01-02T00:10:00", "--interval", "raw", "--json", "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)[0]
    assert s["quotes_in"] == 1200 - 1  # 600 s / 0.5 s, minus the crossed row


def test_backtest_of_a_missing_catalog_says_how_to_make_one(tmp_path, capsys):
    assert main(["backtest", "--catalog", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--catalog" in err and "nextick ingest" in err


@pytest.mark.shared_data
def test_ingest_every_quote_folder_of_the_shared_data_then_backtest(tmp_path, capsys):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (only on the developers' machines)")
    folders = [SHARED_DATA / d for d in ("binance-raw", "tardis", "databento", "fx")]
    assert main(["ingest", *map(str, folders), "--catalog", str(tmp_path / "cat")]) == 0
    out = capsys.readouterr().out
    assert "9 sources (9 ingested)" in out
    assert main(["backtest", "--catalog", str(tmp_path / "cat"), "--strategy", "momentum", "--json", "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)[0]
    assert s["quotes_in"] == 252_013 + 9_999 + 10 + 2_168 + 20 + 4 + 2 + 266_219 + 9_500
    assert len(s["instruments"]) == 12
