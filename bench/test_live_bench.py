"""The live path over loopback: the local exchange simulator in its own process, the paper trader here.

- throughput: the simulator sends as fast as the socket takes (speed 0); the paper trader decodes,
  validates, runs the engine (raw ticks, built-in momentum) and journals. Quotes/s over a fixed
  window, with and without the raw recording. With two or more CPUs the simulator is pinned to CPU 1
  and the paper trader (all its threads, the recorder's compression included) to CPU 0: one core.
- latency: the simulator paces 1,000 quotes/s (2 symbols x 500/s); per-stage p50/p90/p99/p99.9 and
  frame receipt -> decision.

Figures are printed and kept in extra_info; nothing is asserted about speed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import uvloop

from bench.conftest import record_rate
from engine.backtest import BacktestConfig
from engine.paper import PaperConfig, PaperTrader
from feeds.live import FeedConfig

SYMS = "BTCUSDT,ETHUSDT"


@contextlib.contextmanager
def sim_process(*args: str):
    """``nextick exchange-sim`` in a child process; yields its URL."""
    cmd = [sys.executable, "-m", "engine.cli", "exchange-sim", "--port", "0", "--venue", "binance-usdm", "--symbols", SYMS,
           "--ping-interval-s", "60", *args]
    pin = _pinning()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if pin else None)
    try:
        line = p.stdout.readline()
        if "ws://" not in line:
            raise RuntimeError(f"exchange-sim did not start: {line!r}")
        url = line.split("ws://", 1)[1].split()[0]
        yield f"ws://{url}"
    finally:
        p.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)


def _pinning() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)


@contextlib.contextmanager
def one_core():
    """This process (and threads it starts) on CPU 0 while measuring, when there are two CPUs to split."""
    if not _pinning():
        yield False
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)


def paper(url: str, seconds: float, *, record: bool, interval: str = "raw"):
    cfg = PaperConfig(
        venues={"binance-usdm": SYMS.split(",")},
        url=url,
        record_raw=record,
        backtest=BacktestConfig(strategy="momentum", interval=interval),
        feed=FeedConfig(ping_interval_s=60.0, stale_after_s=30.0, stale_reconnect_s=60.0),
    )
    with tempfile.TemporaryDirectory() as d, one_core():
        trader = PaperTrader(cfg, Path(d), print_fn=lambda s: None, status_every_s=1.0)
        return uvloop.run(trader.run(seconds))


@pytest.mark.parametrize("record", [False, True], ids=["no-recording", "recording"])
def test_live_throughput(benchmark, record):
    with sim_process("--speed", "0") as url:
        s = benchmark.pedantic(paper, args=(url, 6.0), kwargs={"record": record}, rounds=1, iterations=1)
    rate = s.quotes_in / s.wall_s
    benchmark.extra_info.update(quotes=s.quotes_in, quotes_per_s=rate, engine_errors=s.engine_errors, pinned=_pinning())
    record_rate("live loopback throughput", "recording" if record else "no-recording", rate)
    print(f"\nlive throughput ({'with' if record else 'without'} recording, {'one core' if _pinning() else 'unpinned'}): "
          f"{s.quotes_in:,} quotes in "
          f"{s.wall_s:.1f} s = {rate:,.0f} quotes/s; errors {s.engine_errors}")


def test_live_latency_at_1k_quotes_per_s(benchmark):
    with sim_process("--rate-hz", "500") as url:
        s = benchmark.pedantic(paper, args=(url, 10.0), kwargs={"record": True}, rounds=1, iterations=1)
    benchmark.extra_info["latency_us"] = s.latency_us
    print(f"\nlive latency at ~1k quotes/s ({s.quotes_in:,} quotes, raw ticks, momentum, recording on), us:")
    print(f"  {'stage':<18}{'count':>8}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}")
    for stage, h in s.latency_us.items():
        print(f"  {stage:<18}{h['count']:>8,}{h['p50']:>9.1f}{h['p90']:>9.1f}{h['p99']:>9.1f}{h['p99.9']:>9.1f}{h['max']:>9.1f}")
