"""Helpers shared by ``bench/run.py`` (``nextick bench``): timing, percentiles, CPU pinning and the
exchange simulator in a child process. No torch here: the runtime benchmarks must run without it."""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np


class SuiteSkipped(Exception):
    """A suite that cannot run here (a missing optional package, no GPU); the message is the reason."""


# ------------------------------------------------------------------------------------------- timing


def _calls_per_loop(fn: Callable[[], Any], target_s: float, sync: Callable[[], Any] | None = None) -> tuple[int, float]:
    """Calls of ``fn`` that take about ``target_s`` (at least one), found by timing growing loops;
    with the per-call time of the last loop."""
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if sync:
            sync()
        dt = time.perf_counter() - t0
        if dt >= target_s or calls >= 1 << 20:
            return calls, dt / calls
        calls = min(1 << 20, max(2 * calls, math.ceil(1.2 * calls * target_s / max(dt, 1e-9))))


def time_per_call(fn: Callable[[], Any], *, min_s: float = 0.3, repeats: int = 5, sync: Callable[[], Any] | None = None) -> float:
    """Best mean per-call time (s) over ``repeats`` loops, each long enough (about ``min_s / repeats``)
    to time; ``sync`` (e.g. torch.cuda.synchronize) is called before reading the clock."""
    fn()  # warm
    if sync:
        sync()
    calls, best = _calls_per_loop(fn, max(min_s / max(repeats, 1), 1e-4), sync)
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if sync:
            sync()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def time_rounds(fns: Sequence[Callable[[], Any]], *, rounds: int, round_s: float) -> list[dict[str, float]]:
    """Per-call time (s) of each of ``fns``, in ``rounds`` interleaved rounds of a loop of about
    ``round_s`` per function: {"best", "median", "rounds"} for each.

    On a shared machine the neighbours' load comes and goes over seconds and costs 5-30%; consecutive
    loops of one function land in one such stretch, so its best may be a busy one while the next
    function's is quiet. Interleaved rounds spread every function over the whole run: the best of
    each is taken from the same quiet stretches, and ratios between them compare like with like.
    The function order rotates from round to round, and each timed loop follows one untimed call
    (the function before it may have evicted this one's data from the caches)."""
    plan = []
    for fn in fns:
        fn()  # warm
        plan.append(_calls_per_loop(fn, max(round_s, 1e-4))[0])
    times: list[list[float]] = [[] for _ in fns]
    n = len(fns)
    for r in range(rounds):
        for j in range(n):
            i = (r + j) % n
            fn, calls = fns[i], plan[i]
            fn()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[i].append((time.perf_counter() - t0) / calls)
    return [{"best": min(t), "median": float(np.median(t)), "rounds": float(len(t))} for t in times]


def call_latencies_ns(fn: Callable[[], Any], n: int, *, warmup: int = 1000, sync: Callable[[], Any] | None = None) -> np.ndarray:
    """``n`` calls, each timed on its own with ``perf_counter_ns`` (includes the clock read, see
    ``timer_overhead_ns``)."""
    for _ in range(warmup):
        fn()
    out = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn()
        if sync:
            sync()
        out[i] = clock() - t0
    return out


def timer_overhead_ns(n: int = 20_000) -> float:
    """Median cost of one back-to-back pair of ``perf_counter_ns`` reads, as timed above."""
    clock = time.perf_counter_ns
    out = np.empty(n, np.int64)
    for i in range(n):
        t0 = clock()
        out[i] = clock() - t0
    return float(np.median(out))


def percentiles_us(ns: np.ndarray) -> dict[str, float]:
    """count, p50, p90, p99, p99.9, max and mean of nanosecond samples, in microseconds."""
    ns = np.asarray(ns, dtype=np.float64)
    p50, p90, p99, p999 = np.percentile(ns, [50, 90, 99, 99.9]) / 1e3
    return {"count": len(ns), "p50": float(p50), "p90": float(p90), "p99": float(p99), "p99.9": float(p999),
            "max": float(ns.max() / 1e3), "mean": float(ns.mean() / 1e3)}


_torch_threads_before: int | None = None


def import_torch(*, threads: int | None = 1):
    """torch set to ``threads`` threads (undone by ``restore_torch_threads``), or SuiteSkipped when
    it is not installed (it is a training extra, not a runtime need)."""
    global _torch_threads_before
    try:
        import torch
    except ImportError as e:
        raise SuiteSkipped(f"torch is not installed ({e}); pip install -e '.[train]'") from None
    if threads is not None:
        if _torch_threads_before is None:
            _torch_threads_before = torch.get_num_threads()
        torch.set_num_threads(threads)
    return torch


def restore_torch_threads() -> None:
    """torch's thread count as it was before the first ``import_torch``."""
    global _torch_threads_before
    if _torch_threads_before is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_torch_threads_before)
    _torch_threads_before = None


# ------------------------------------------------------------------------------------------ pinning


def can_pin() -> bool:
    """Two CPUs (0 and 1) to split: the simulator on CPU 1, the measured process on CPU 0."""
    return hasattr(os, "sched_setaffinity") and {0, 1} <= os.sched_getaffinity(0)


@contextlib.contextmanager
def pinned_to(cpu: int) -> Iterator[bool]:
    """This process (and threads started meanwhile) on one CPU while measuring, when ``can_pin()``."""
    if not can_pin():
        yield False
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------------------------- exchange sim


@contextlib.contextmanager
def sim_process(symbols: Sequence[str], *args: str, venue: str = "binance-usdm", cpu: int = 1) -> Iterator[str]:
    """``nextick exchange-sim`` in a child process (pinned to ``cpu`` when ``can_pin()``); yields its URL."""
    cmd = [sys.executable, "-m", "engine.cli", "exchange-sim", "--port", "0", "--venue", venue, "--symbols",
           ",".join(symbols), "--ping-interval-s", "60", *args]
    pin = can_pin()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if pin else None)
    try:
        line = p.stdout.readline() if p.stdout else ""
        if "ws://" not in line:
            rest = p.stdout.read() if p.stdout and p.poll() is not None else ""
            raise RuntimeError(f"exchange-sim did not start: {(line + rest).strip()[-500:]!r}")
        yield "ws://" + line.split("ws://", 1)[1].split()[0]
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if p.stdout:
            p.stdout.close()
