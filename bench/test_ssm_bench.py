"""SSM step: latency per instrument and throughput (instrument-steps/s) at batch 1 to 10,000, the
C++ kernel against torch eager on the same weights (DESIGN.md default config), one thread each,
in one run; the ratio is printed at the end (bench/conftest.py). Also the cost of the SSM inside
the backtest loop (ssm_threshold against momentum on the same ticks)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.conftest import record_rate
from bench.quotes import random_walk_quotes

torch = pytest.importorskip("torch")

from engine.model.config import SSMConfig  # noqa: E402
from engine.model.ssm import SSMModel  # noqa: E402

BATCHES = [1, 16, 256, 1024, 10_000]


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    model = SSMModel(SSMConfig()).eval()
    return model, model.export_tensors()


def _time_per_call(fn, min_s: float = 0.3, min_calls: int = 5) -> float:
    """Best per-call time over a few repeats of a loop long enough to time."""
    fn()  # warm
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_s / 5 or calls >= 1 << 20:
            break
        calls *= 2
    best = dt / calls
    for _ in range(min_calls - 1):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


@pytest.mark.parametrize("batch", BATCHES)
def test_ssm_step(benchmark, weights, batch):
    from engine import _core

    model, tensors = weights
    cfg = model.cfg
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, cfg.n_features)).astype(np.float32)
    slots = np.arange(batch, dtype=np.int32)
    reset = np.zeros(batch, np.uint8)
    out = np.empty((batch, cfg.n_out), np.float32)
    core = _core.SsmModel(cfg.core_dict(), tensors, batch)

    benchmark.pedantic(core.step, args=(slots, x, reset, out), rounds=20, iterations=max(1, 2000 // batch), warmup_rounds=2)
    cpp_s = benchmark.stats.stats.min

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        xt = torch.from_numpy(x)
        state = model.empty_state(batch)

        def torch_step():
            with torch.no_grad():
                model.step(xt, state)

        torch_s = _time_per_call(torch_step)
    finally:
        torch.set_num_threads(threads)

    cpp_rate, torch_rate = batch / cpp_s, batch / torch_s
    benchmark.extra_info.update(
        {"batch": batch, "cpp_steps_per_s": cpp_rate, "torch_steps_per_s": torch_rate, "cpp_ns_per_instrument": cpp_s / batch * 1e9,
         "torch_ns_per_instrument": torch_s / batch * 1e9, "speedup": torch_s / cpp_s}
    )
    record_rate(f"SSM step, batch {batch}", "C++", cpp_rate, "instrument-steps/s")
    record_rate(f"SSM step, batch {batch}", "torch eager", torch_rate, "instrument-steps/s")
    print(
        f"\nSSM step batch {batch:6d}: C++ {cpp_s * 1e6:9.1f} us/call {cpp_s / batch * 1e9:8.0f} ns/instrument "
        f"{cpp_rate:12,.0f} steps/s | torch eager {torch_s * 1e6:9.1f} us/call {torch_rate:12,.0f} steps/s | "
        f"C++ {torch_s / cpp_s:6.1f}x faster"
    )


@pytest.mark.parametrize("strategy", ["momentum", "ssm_threshold"])
def test_backtest_loop_with_ssm(benchmark, strategy):
    from engine.backtest import BacktestConfig, Engine
    from engine.model.weights import DEFAULT_MODEL_PATH

    n = 300_000
    quotes, table = random_walk_quotes(n, 10)

    def setup():
        # Ticks go straight into Engine.run (no conflator); the interval only has to match the model's.
        config = BacktestConfig(strategy=strategy, interval="1s", model=str(DEFAULT_MODEL_PATH) if strategy != "momentum" else None)
        engine = Engine(config, table, None)
        engine.run(quotes[:1])
        return (engine, quotes[1:]), {}

    benchmark.pedantic(lambda engine, rest: engine.run(rest), setup=setup, rounds=3, iterations=1)
    rate = (n - 1) / benchmark.stats.stats.min
    benchmark.extra_info["quotes_per_s"] = rate
    record_rate("backtest loop, 10 instruments", strategy, rate)
    print(f"\n{strategy:14s}: {rate / 1e6:7.3f} M quotes/s through the loop")


@pytest.mark.parametrize("n_slots", [64, 256, 1024, 4096])
def test_ssm_step_state_footprint(benchmark, weights, n_slots):
    """Batch 1024 over n_slots instruments (rows cycle over the slots): the same compute, a state
    pool of n_slots * ~20 KB. Separates the kernel's arithmetic from the cost of streaming state
    that no longer fits in cache."""
    from engine import _core

    model, tensors = weights
    cfg = model.cfg
    batch = 1024
    x = np.random.default_rng(0).standard_normal((batch, cfg.n_features)).astype(np.float32)
    slots = (np.arange(batch) % n_slots).astype(np.int32)
    core = _core.SsmModel(cfg.core_dict(), tensors, n_slots)
    out = np.empty((batch, cfg.n_out), np.float32)
    benchmark.pedantic(core.step, args=(slots, x, np.zeros(batch, np.uint8), out), rounds=15, iterations=1, warmup_rounds=2)
    rate = batch / benchmark.stats.stats.min
    state_mb = sum(np.array(core.ssm_state(k)).nbytes + np.array(core.conv_state(k)).nbytes for k in range(cfg.n_layers)) / 1e6
    benchmark.extra_info.update({"n_slots": n_slots, "steps_per_s": rate, "state_mb": state_mb})
    record_rate("SSM step batch 1024, by state pool size", f"{n_slots} slots", rate, "instrument-steps/s")
    print(f"\nbatch 1024 over {n_slots:5d} slots ({state_mb:6.1f} MB of state): {rate:12,.0f} steps/s")
