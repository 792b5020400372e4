"""`nextick report` (engine/html_report.py) on real backtest folders, checked in a real headless
Chromium over the DevTools protocol; and the mids.parquet the backtest now writes for it
(engine/mid_trace.py, engine/report.py)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main

pytest.importorskip("plotly", reason="nextick report needs plotly: pip install 'nextick[report]'")

STRATEGIES = ("momentum", "mean_reversion")
N_INSTRUMENTS = 2
BACKTEST_ARGS = ["--n-sessions", "1", "--n-instruments", str(N_INSTRUMENTS), "--no-progress"]

STUDY = {
    "format": "nextick.study",
    "version": 1,
    "rf_annual": 0.05,
    "models": {
        "ssm": {
            "pml": {"slope": 0.8, "slope_se": 0.2, "intercept_daily": 0.0002, "r2": 0.6, "n": 4, "t_stat": 4.0,
                    "points": [
                        {"config_id": 0, "mean_daily_return": 0.001, "total_std": 0.012, "priced_std": 0.001, "epistemic_std": 0.002},
                        {"config_id": 1, "mean_daily_return": 0.002, "total_std": 0.015, "priced_std": 0.002, "epistemic_std": 0.003},
                        {"config_id": 2, "mean_daily_return": 0.0035, "total_std": 0.02, "priced_std": 0.004, "epistemic_std": None},
                        {"config_id": 3, "mean_daily_return": None, "total_std": 0.01, "priced_std": 0.003, "epistemic_std": 0.001},
                    ]},
            "rolling_pml": [
                {"start_day": "2024-01-02", "end_day": "2024-01-31", "slope": 0.7, "slope_se": 0.3, "r2": 0.5},
                {"start_day": "2024-02-01", "end_day": "2024-02-29", "slope": 0.9, "slope_se": None, "r2": 0.4},
                {"start_day": "2024-03-01", "end_day": "2024-03-29", "slope": 1.1, "slope_se": 0.25, "r2": None},
            ],
            "capm": [{"config_id": 0, "alpha_daily": 0.0004, "alpha_t": 2.1, "beta": 0.3, "beta_t": 5.0, "n": 250, "lags": 5},
                     {"config_id": 1, "alpha_daily": None, "alpha_t": None, "beta": 0.1, "beta_t": 1.0, "n": 250, "lags": 5}],
            "decay": [{"resolution": "1s", "lags": list(range(-5, 6)),
                       "corr": [0.0, 0.01, 0.0, 0.02, 0.05, 0.3, 0.2, 0.12, 0.06, 0.03, None]},
                      {"resolution": "1m", "lags": list(range(-5, 6)),
                       "corr": [0.01, 0.0, 0.01, 0.02, 0.1, 0.4, 0.25, 0.1, 0.05, 0.02, 0.01]}],
        },
        "momentum": {
            "pml": {"slope": None, "slope_se": None, "intercept_daily": None, "r2": None, "n": 2, "t_stat": None,
                    "points": [{"config_id": 10, "mean_daily_return": -0.001, "total_std": 0.01, "priced_std": 0.0005, "epistemic_std": 0.001},
                               {"config_id": 11, "mean_daily_return": 0.0005, "total_std": 0.011, "priced_std": 0.0007, "epistemic_std": 0.001}]},
            "rolling_pml": [{"start_day": "2024-01-02", "end_day": "2024-01-31", "slope": 0.1, "slope_se": 0.4, "r2": 0.05},
                            {"start_day": "2024-02-01", "end_day": "2024-02-29", "slope": -0.2, "slope_se": 0.4, "r2": 0.02}],
        },
    },
}

# Ids the page must hold, from what the run folder has: independent of the module's own list.
BACKTEST_FIGURES = [f"bt-{s}-{kind}" for s in sorted(STRATEGIES)
                    for kind in ("equity", "drawdown", *(f"fills-{i}" for i in range(N_INSTRUMENTS)), "resets", "pnl")]
STUDY_FIGURES = ["study-pml", "study-risk", "study-rolling", "study-decay"]
EXPECTED_FIGURES = [*BACKTEST_FIGURES, "compare-equity", "compare-jk", *STUDY_FIGURES, "sweep-scatter"]

# What `nextick compare --out` writes beside its run folders (engine/compare.write_compare), for the
# two strategies of the backtest above: the JK matrices and sub-periods (None: a figure undefined).
COMPARE = {
    "format": "nextick.compare", "version": 1, "day_basis": "US-RTH sessions, open to next open",
    "strategies": [{"label": s} for s in sorted(STRATEGIES)],
    "days": ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"],
    "jk": {"alpha": 0.05, "z": [[0.0, 2.5], [-2.5, 0.0]], "p": [[1.0, 0.0124], [0.0124, 1.0]]},
    "subperiods": [
        {"block": 1, "first_day": "2024-01-02", "last_day": "2024-01-03", "n_days": 2,
         "by_strategy": {s: {"total_return": 0.01, "daily_sharpe": 0.3} for s in STRATEGIES}},
        {"block": 2, "first_day": "2024-01-04", "last_day": "2024-01-05", "n_days": 2,
         "by_strategy": {s: {"total_return": -0.02, "daily_sharpe": None} for s in STRATEGIES}},
    ],
}


def _backtest(out: Path) -> None:
    assert main(["backtest", "--strategy", STRATEGIES[0], "--compare", STRATEGIES[1], *BACKTEST_ARGS, "--out", str(out)]) == 0


def _sweep_table() -> pa.Table:
    rng = np.random.default_rng(3)
    n = 30
    std = rng.uniform(0.005, 0.02, n)
    mean = rng.normal(0.0005, 0.001, n)
    mean[4] = np.nan  # a configuration without the figure: drawn nowhere, ranked last
    return pa.table({"config_id": np.arange(n), "fee_bps": np.repeat([0.5, 1.0, 2.0], 10),
                     "mean_daily_return": mean, "std_daily_return": std, "daily_sharpe": mean / std})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report") / "run"
    _backtest(d)
    (d / "study.json").write_text(json.dumps(STUDY))
    (d / "compare.json").write_text(json.dumps(COMPARE))
    pq.write_table(_sweep_table(), d / "results.parquet")
    return d


@pytest.fixture(scope="module")
def report(run_dir) -> Path:
    assert main(["report", str(run_dir)]) == 0
    return run_dir / "report.html"


# ------------------------------------------------------------------------------------------ page


def test_report_is_self_contained(report, capsys):
    text = report.read_text()
    # Nothing fetched: no external script, stylesheet or image; plotly.js is in the page itself.
    for tag in ("<script src=", "<link ", "<img src=\"http", "<iframe"):
        assert tag not in text
    assert text.count("<script type=\"text/javascript\">") >= 1
    assert "Plotly.newPlot" in text
    for fid in EXPECTED_FIGURES:
        assert f'id="{fid}"' in text, fid
    assert 'id="study-capm"' in text and 'id="sweep-top"' in text
    assert 'id="compare-jk-table"' in text and 'id="compare-subperiods"' in text
    assert "+2.50 (p 0.012)*" in text and "-2.50 (p 0.012)*" in text  # significant both ways, marked
    # The fills charts say that their mid line is thinned, and how.
    assert text.count("decimated for size") == len(STRATEGIES) * N_INSTRUMENTS


def test_cli_prints_the_path(run_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.read_bytes() == (run_dir / "report.html").read_bytes()


def test_same_run_dir_same_bytes(tmp_path):
    """Two backtests of the same configuration in two places (their summaries differ in wall time,
    speed and machine, none of which the page shows) give byte-identical reports, and so does
    writing one report twice."""
    pages = []
    for side in ("a", "b"):
        d = tmp_path / side / "run"
        _backtest(d)
        if side == "b":  # whatever the two runs' timings were, make them differ for certain
            path = d / "momentum" / "summary.json"
            summary = json.loads(path.read_text())
            path.write_text(json.dumps({**summary, "wall_s": 1e6, "quotes_per_s": 1.0, "machine": {"python": "elsewhere"}}))
        (d / "study.json").write_text(json.dumps(STUDY))
        pq.write_table(_sweep_table(), d / "results.parquet")
        assert main(["report", str(d)]) == 0
        pages.append((d / "report.html").read_bytes())
        assert main(["report", str(d), "--out", str(d / "again.html")]) == 0
        assert (d / "again.html").read_bytes() == pages[-1]
    assert pages[0] == pages[1]


def test_no_study_json_no_study_section(tmp_path):
    d = tmp_path / "run"
    _backtest(d)
    assert main(["report", str(d)]) == 0
    text = (d / "report.html").read_text()
    assert 'id="bt-momentum-equity"' in text
    assert 'id="study' not in text and "study-" not in text and 'id="sweep' not in text


def test_folder_from_before_the_report_still_draws(tmp_path):
    """A backtest folder written before mids.parquet and pnl_by_instrument existed: the fills are
    drawn without the mid, the PnL chart is left out, and the page says why for each."""
    d = tmp_path / "run"
    _backtest(d)
    for s in STRATEGIES:
        (d / s / "mids.parquet").unlink()
        path = d / s / "summary.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "pnl_by_instrument"}))
    assert main(["report", str(d)]) == 0
    text = (d / "report.html").read_text()
    assert 'id="bt-momentum-fills-0"' in text and 'id="bt-momentum-pnl"' not in text
    assert text.count("mids.parquet is missing") == len(STRATEGIES)
    assert text.count("summary.json has no pnl_by_instrument") == len(STRATEGIES)


def test_sweep_with_missing_columns_is_skipped_not_an_error(tmp_path):
    d = tmp_path / "sweep"
    d.mkdir()
    pq.write_table(pa.table({"config_id": [101, 102, 103], "daily_sharpe": [0.1, 0.3, None]}), d / "results.parquet")
    assert main(["report", str(d)]) == 0
    text = (d / "report.html").read_text()
    assert 'id="sweep-top"' in text and 'id="sweep-scatter"' not in text
    # Ranked by daily Sharpe, best first, the missing one last.
    top = text[text.index('id="sweep-top"'):]
    assert top.index("<td>102</td>") < top.index("<td>101</td>") < top.index("<td>103</td>")


def test_broken_parquet_names_the_file(tmp_path, capsys):
    d = tmp_path / "run"
    _backtest(d)
    bad = d / "momentum" / "fills.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a readable Parquet file" in err and "nextick backtest --out" in err
    assert not (d / "report.html").exists()


def test_missing_column_and_bad_study_name_the_file(tmp_path, capsys):
    d = tmp_path / "run"
    _backtest(d)
    pq.write_table(pa.table({"ts_ns": [1, 2]}), d / "momentum" / "equity.parquet")
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert str(d / "momentum" / "equity.parquet") in err and "missing column equity" in err

    _backtest(d)
    (d / "study.json").write_text(json.dumps({**STUDY, "version": 99}))
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert str(d / "study.json") in err and "version 99" in err
    (d / "study.json").write_text("{not json")
    assert main(["report", str(d)]) == 2
    assert str(d / "study.json") in capsys.readouterr().err


def test_empty_folder_says_what_to_do(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "nextick backtest --out" in err


def test_without_plotly_says_how_to_install(run_dir, monkeypatch):
    for name in [m for m in sys.modules if m == "plotly" or m.startswith("plotly.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly -> ImportError
    with pytest.raises(SystemExit) as e:
        main(["report", str(run_dir), "--out", str(run_dir / "never.html")])
    assert "pip install 'nextick[report]'" in str(e.value)


# ------------------------------------------------------------------------------------------ browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _png_pixels(png: bytes) -> np.ndarray:
    """An 8-bit RGB/RGBA PNG (what Chromium's screenshots are) as an array (height, width, channels):
    the chunks, inflated, each scanline unfiltered (PNG spec, section 9)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos:pos + 4]), png[pos + 4:pos + 8]
        data = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum per channel
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            cur = (line + prev) % 256
        else:  # Average, Paeth: each byte needs the one before it
            cur = np.zeros(stride, np.int64)
            lv, pv = line.tolist(), prev.tolist()
            cv = [0] * stride
            for x in range(stride):
                a = cv[x - bpp] if x >= bpp else 0
                b = pv[x]
                if kind == 3:
                    cv[x] = (lv[x] + (a + b) // 2) % 256
                else:
                    c = pv[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa_, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa_ <= pb and pa_ <= pc else (b if pb <= pc else c)
                    cv[x] = (lv[x] + pred) % 256
            cur = np.asarray(cv, np.int64)
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)


class _Cdp:
    """The Chrome DevTools Protocol over one websocket: commands answered by id, events kept."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            else:
                self.events.append(msg)

    async def send(self, method: str, session: str | None = None, **params) -> dict:
        mid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        # A bound on a hung browser, not a timing assertion.
        reply = await asyncio.wait_for(fut, 120)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]


_PROBE = """(() => {
  const out = {};
  for (const id of %s) {
    const el = document.getElementById(id);
    if (!el) { out[id] = null; continue; }
    out[id] = {
      plot: el.classList.contains('js-plotly-plot'),
      svg: el.querySelectorAll('.main-svg').length,
      points: el.querySelectorAll('.scatterlayer .point, .barlayer .point').length,
      lines: [...el.querySelectorAll('.scatterlayer .js-line')].filter(p => (p.getAttribute('d') || '').length > 4).length,
      heat: el.querySelectorAll('.heatmaplayer image').length,
    };
  }
  return JSON.stringify(out);
})()"""


async def _load_in_chromium(chrome: str, url: str, figure_ids: list[str], profile: Path) -> tuple[dict, list[dict], bytes]:
    from websockets.asyncio.client import connect

    proc = subprocess.Popen(
        [chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         # No name resolves: a page that needed the network would fail to draw here.
         "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60  # a bound on start-up, not a timing assertion
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        async with connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as ws:
            cdp = _Cdp(ws)
            target = (await cdp.send("Target.createTarget", url="about:blank"))["targetId"]
            session = (await cdp.send("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                await cdp.send(f"{domain}.enable", session)
            await cdp.send("Page.navigate", session, url=url)
            state: dict = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                loaded = any(e.get("method") == "Page.loadEventFired" for e in cdp.events)
                if loaded:
                    res = await cdp.send("Runtime.evaluate", session, expression=_PROBE % json.dumps(figure_ids), returnByValue=True)
                    state = json.loads(res["result"]["value"])
                    if all(s and s["svg"] and (s["points"] or s["lines"] or s["heat"]) for s in state.values()):
                        break
                await asyncio.sleep(0.2)
            # A figure from the middle of the page: the fills over the mid, markers and line.
            rect = json.loads((await cdp.send(
                "Runtime.evaluate", session, returnByValue=True,
                expression="(() => { const r = document.getElementById(%s).getBoundingClientRect();"
                           " return JSON.stringify({x: r.x + scrollX, y: r.y + scrollY, w: r.width, h: r.height}); })()"
                           % json.dumps(figure_ids[2])))["result"]["value"])
            shot = await cdp.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                                  clip={"x": rect["x"], "y": rect["y"], "width": rect["w"], "height": rect["h"], "scale": 1})
            events = list(cdp.events)
            await cdp.send("Browser.close")
            cdp.reader.cancel()
        return state, events, base64.b64decode(shot["data"])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def test_report_renders_in_headless_chromium(report, tmp_path):
    chrome = _chromium()
    if chrome is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it as root)")
    state, events, png = asyncio.run(_load_in_chromium(chrome, report.resolve().as_uri(), EXPECTED_FIGURES, tmp_path / "profile"))

    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [e for e in events if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")]
    errors += [e for e in events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert errors == []

    for fid in EXPECTED_FIGURES:
        s = state.get(fid)
        assert s is not None, f"{fid}: no such element"
        assert s["plot"] and s["svg"] > 0, f"{fid}: not drawn by plotly: {s}"
        assert s["points"] + s["lines"] + s["heat"] > 0, f"{fid}: no trace drawn: {s}"
    for fid in BACKTEST_FIGURES:
        if "-fills-" in fid:
            # The mid line and the fills' markers on it.
            assert state[fid]["lines"] > 0 and state[fid]["points"] > 0, (fid, state[fid])
        if fid.endswith(("-resets", "-pnl")):
            assert state[fid]["points"] > 0, (fid, state[fid])

    pixels = _png_pixels(png)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 300
    colors = np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)
    assert len(colors) > 10, f"screenshot nearly uniform: {len(colors)} colors"
