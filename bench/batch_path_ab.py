"""Before/after of the batch Python path in one process: the BatchHost and EmaCross of a git revision
against the working tree's, on the same quotes, rounds interleaved so both see the same machine.

    python -m bench.batch_path_ab --base 4d7e8c1 [--quotes 200000] [--rounds 3]

Per shape (1 instrument and 100 instruments on raw ticks: 1-row batches; 100 instruments ticking
together: 100-row batches) it prints quotes/s of EmaCross and of a strategy that returns None (the
host's own cost), base and tree, their ratio, and whether the fills equal each other and the
built-in momentum's. The best of the rounds counts, as in the pytest-benchmark suites.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from bench.quotes import random_walk_quotes, whole_book_quotes
from engine.backtest import BacktestConfig, Engine

SPANS = {"fast_span": 20.0, "slow_span": 100.0}
REPO = Path(__file__).resolve().parents[1]


def module_at(rev: str, path: str, name: str) -> types.ModuleType:
    """The module at ``path`` as of git revision ``rev``, loaded under ``name``."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / Path(path).name
        file.write_text(src)
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def revision(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """strategies.base and strategies.ema_cross as of ``rev``; that EmaCross imports that base."""
    base = module_at(rev, "strategies/base.py", "strategies.base")
    tree_base = sys.modules["strategies.base"]
    sys.modules["strategies.base"] = base
    try:
        ema = module_at(rev, "strategies/ema_cross.py", "strategies.ema_cross")
    finally:
        sys.modules["strategies.base"] = tree_base
    return base, ema


def noop_strategy(base: types.ModuleType):
    class Noop(base.Strategy):
        def on_batch(self, batch):
            return None

    return Noop()


def run(base: types.ModuleType | None, strategy, quotes: np.ndarray, table) -> tuple[float, str]:
    """Seconds through the loop (instruments and sessions set up outside the timing) and a fills hash."""
    engine = Engine(BacktestConfig(strategy="momentum", strategy_params=SPANS, interval="raw"), table, strategy)
    if base is not None:
        engine.host = base.BatchHost(strategy, len(table))
    engine.run(quotes[:1])
    t0 = time.perf_counter()
    engine.run(quotes[1:])
    elapsed_s = time.perf_counter() - t0
    return elapsed_s, hashlib.sha256(np.ascontiguousarray(engine.core.fills()).tobytes()).hexdigest()


def compare(variants: dict, quotes: np.ndarray, table, rounds: int) -> dict[tuple[str, str], tuple[float, str]]:
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for _ in range(rounds):
        for which, (base, ema) in variants.items():
            for kind in ("ema_cross", "noop"):
                strategy = ema.EmaCross(**SPANS) if kind == "ema_cross" else noop_strategy(base)
                elapsed_s, fills = run(base, strategy, quotes, table)
                key = (which, kind)
                if key not in best or elapsed_s < best[key][0]:
                    best[key] = (elapsed_s, fills)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.batch_path_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare the working tree against")
    p.add_argument("--quotes", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    import strategies.base
    import strategies.ema_cross

    variants = {"base": revision(a.base), "tree": (strategies.base, strategies.ema_cross)}
    shapes = {
        "1 instrument, 1-row batches": random_walk_quotes(a.quotes, 1),
        "100 instruments, 1-row batches": random_walk_quotes(a.quotes, 100),
        "100 instruments, 100-row batches": whole_book_quotes(a.quotes, 100),
    }
    print(f"base {a.base} vs working tree; best of {a.rounds} rounds")
    for shape, (quotes, table) in shapes.items():
        best = compare(variants, quotes, table, a.rounds)
        _, builtin_fills = run(None, None, quotes, table)
        print(f"{shape} ({len(quotes):,} quotes)")
        for kind in ("ema_cross", "noop"):
            (base_s, base_fills), (tree_s, tree_fills) = best[("base", kind)], best[("tree", kind)]
            n = len(quotes) - 1
            same = f"fills equal: {base_fills == tree_fills}"
            if kind == "ema_cross":
                same += f", = built-in: {tree_fills == builtin_fills}"
            print(f"  {kind:9s} base {n / base_s:>12,.0f} q/s  tree {n / tree_s:>12,.0f} q/s  "
                  f"tree/base {base_s / tree_s:5.2f}x  ({same})")


if __name__ == "__main__":
    main()
