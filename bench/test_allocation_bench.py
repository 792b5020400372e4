"""Mean-CVaR (strategies/allocation/cvar.py): the Rockafellar-Uryasev LP on 10,000 scenarios x 10
assets, the size issue 15 asks to solve in well under a second, and the scenario generation that
feeds it. Figures are reported (printed, extra_info), never asserted."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.allocation.constraints import Constraints
from strategies.allocation.cvar import mean_cvar
from strategies.allocation.scenarios import GBM, block_bootstrap

N_SCENARIOS = 10_000
N_ASSETS = 10


@pytest.fixture(scope="module")
def history() -> np.ndarray:
    rng = np.random.default_rng(0)
    factor = rng.standard_normal((2_000, 1)) * 0.008
    return np.expm1(0.0003 + factor + rng.standard_normal((2_000, N_ASSETS)) * 0.01)


@pytest.mark.parametrize("constraints", [
    Constraints(cap=0.2),
    Constraints(long_only=False, cap=0.3, gross=1.5, net=0.0),
], ids=["long_only_cap0.2", "long_short_neutral"])
def test_mean_cvar_10k_by_10(benchmark, history, constraints):
    scen = GBM.fit(history).sample(N_SCENARIOS, horizon=5, seed=1)
    target = float(np.quantile(scen.mean(axis=0), 0.6)) if constraints.long_only else 0.0005
    res = benchmark(mean_cvar, scen, 0.95, target_return=target, constraints=constraints)
    s = benchmark.stats.stats
    benchmark.extra_info.update(n_scenarios=N_SCENARIOS, n_assets=N_ASSETS, cvar=res.cvar, median_s=s.median)
    print(f"\nmean_cvar {N_SCENARIOS} x {N_ASSETS} ({constraints}): median {s.median * 1e3:.1f} ms, "
          f"min {s.min * 1e3:.1f} ms; CVaR_0.95 {res.cvar:.5f}")


def test_block_bootstrap_10k(benchmark, history):
    out = benchmark(block_bootstrap, history, N_SCENARIOS, horizon=20, block_len=5, seed=2)
    assert out.shape == (N_SCENARIOS, N_ASSETS)
    print(f"\nblock_bootstrap {N_SCENARIOS} x {N_ASSETS}, horizon 20: median {benchmark.stats.stats.median * 1e3:.2f} ms")
