"""``nextick bench``: the benchmark suites in one run, written up by ``bench/report.py``.

    run_bench(out_dir) -> out_dir/results.json, summary.md, report.html

Suites (one function each; each returns JSON-able results, or raises ``SuiteSkipped`` with the reason
when it cannot run here):

- ``ssm_step``: the compiled SSM step, per-call latency at batch 1 and throughput at batch 1 to
  10,000; torch eager (and CUDA torch) on the same weights where torch is installed, and the
  onnxruntime backend (the exported ONNX step) where onnxruntime is.
- ``ssm_vs_transformer``: per-tick cost of a Transformer encoder of the same size class over the last
  L ticks (window recomputed, and with a key/value cache) against the SSM's O(1) step.
- ``e2e_loopback``: the exchange simulator in a child process, the paper trader here: per-stage
  latency at several quote rates and instrument counts, and throughput as fast as possible.
- ``backtest``: the backtest loop's quotes/s by instrument count: built-in momentum, its Python
  twin (EmaCross) and the SSM strategy.
- ``compiled``: the EMA cross as a compiled Python strategy (numba, called from the loop) against
  the built-in momentum on the same quotes, 1 and 100 instruments; fills compared.
- ``peers``: the same quotes through other engines (bench/peers.py), when installed.

Every figure is measured in this run, one thread (torch is set to one thread too) unless a suite
says otherwise. ``quick=True`` is the smoke run of ``make test``: tiny sizes, about a minute.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench._util import (
    SuiteSkipped,
    call_latencies_ns,
    can_pin,
    import_torch,
    percentiles_us,
    pinned_to,
    restore_torch_threads,
    sim_process,
    time_per_call,
    time_rounds,
    timer_overhead_ns,
)
from bench.quotes import random_walk_quotes
from bench.report import KNOWN_TARGETS, machine, write_report

PrintFn = Callable[[str], None]
PEERS_HINT = "pip install -e '.[bench-peers]'"


def _target(suite: str, value: float | None, name: str | None = None) -> dict[str, Any]:
    """A project target of ``suite`` (bench/report.py KNOWN_TARGETS; the first, or the one called
    ``name``) against this run's value."""
    _, name, op, limit, unit = next(t for t in KNOWN_TARGETS if t[0] == suite and (name is None or t[1] == name))
    met = None if value is None or not np.isfinite(value) else bool(value <= limit if op == "<=" else value >= limit)
    return {"name": name, "target": f"{op} {limit:g} {unit}", "limit": limit, "unit": unit, "value": value, "met": met}


# ------------------------------------------------------------------------------------------ weights


def _ssm_weights():
    """(config, tensors, torch model or None, description): torch-initialised weights (seed 0, the
    packaged model's config) exported for the C++ kernel when torch is installed, so both run the
    same weights; the packaged model's weights otherwise. The cost of a step does not depend on the
    values."""
    from engine.model.weights import load_model

    packaged = load_model()
    cfg = packaged.config
    try:
        import torch
    except ImportError:
        return cfg, packaged.tensors, None, "packaged default model (torch not installed)"
    from engine.model.ssm import SSMModel

    torch.manual_seed(0)
    model = SSMModel(cfg).eval()
    return cfg, model.export_tensors(), model, "torch-initialised (seed 0), packaged model's config; same weights in C++ and torch"


class _BackendStep:
    """A model backend's step on its ``batch`` slots (one row each) with preallocated buffers:
    ``__call__`` is one step."""

    def __init__(self, backend, batch: int, seed: int = 0) -> None:
        self.backend = backend
        self.x = np.random.default_rng(seed).standard_normal((batch, backend.n_features)).astype(np.float32)
        self.slots = np.arange(batch, dtype=np.int32)
        self.reset = np.zeros(batch, np.uint8)
        self.out = np.empty((batch, backend.n_outputs), np.float32)

    def __call__(self) -> None:
        self.backend.step(self.slots, self.x, self.reset, self.out)


class _CoreStep(_BackendStep):
    """The compiled step (kernel variant ``kernel``) on ``batch`` slots."""

    def __init__(self, cfg, tensors, batch: int, seed: int = 0, kernel: str = "auto") -> None:
        from engine import _core

        self.core = _core.SsmModel(cfg.core_dict(), tensors, batch)
        self.core.set_kernel(kernel)
        super().__init__(self.core, batch, seed)


def _torch_step(torch, model, batch: int, device: str = "cpu", seed: int = 0) -> Callable[[], Any]:
    """One torch-eager step of ``model`` at ``batch`` (state carried, as in production)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.cfg.n_features, generator=g).to(device)
    state = [model.empty_state(batch)]

    def step() -> None:
        with torch.inference_mode():
            _, state[0] = model.step(x, state[0])

    return step


# ------------------------------------------------------------------------------------ 1. ssm_step


def suite_ssm_step(*, quick: bool, print_fn: PrintFn) -> dict[str, Any]:
    batches = [1, 16, 256, 1024, 10_000]
    min_s = 0.05 if quick else 0.5
    n_lat, n_lat_torch = (5_000, 300) if quick else (100_000, 5_000)
    cfg, tensors, model, weights = _ssm_weights()
    out: dict[str, Any] = {"config": cfg.core_dict(), "weights": weights, "threads": 1, "timer_overhead_ns": timer_overhead_ns()}

    step1 = _CoreStep(cfg, tensors, 1)
    lat = {"cpp": percentiles_us(call_latencies_ns(step1, n_lat))}
    torch = None
    if model is not None:
        torch = import_torch(threads=1)
        out["torch_version"] = torch.__version__
        lat["torch_eager"] = percentiles_us(call_latencies_ns(_torch_step(torch, model, 1), n_lat_torch, warmup=50))
    else:
        out["torch"] = {"skipped": "torch is not installed; pip install -e '.[train]'"}
    out["latency_batch1_us"] = lat
    print_fn(f"  SSM step, 1 instrument, C++: p50 {lat['cpp']['p50']:.2f} us  p99 {lat['cpp']['p99']:.2f} us"
             + (f" | torch eager p50 {lat['torch_eager']['p50']:.1f} us" if "torch_eager" in lat else ""))

    from engine import _core

    kernel = _CoreStep(cfg, tensors, 1).core.kernel
    out["kernel"] = kernel
    out["kernels"] = _core.SsmModel.kernels()
    print_fn(f"  kernel variant: {kernel} (this CPU runs {', '.join(out['kernels'])})")
    from engine.model.backend import backend_names

    out["backends"] = backend_names()
    print_fn(f"  model backends: {', '.join(out['backends'])}")
    # The C++ batches in interleaved rounds (time_rounds says why): the best round is the figure, as
    # the best loop is elsewhere in this file; the median round shows how much the neighbours took.
    rounds = 5 if quick else 20
    timed = time_rounds([_CoreStep(cfg, tensors, b, seed=b) for b in batches], rounds=rounds,
                        round_s=min_s / rounds)
    out["cpp_timing"] = f"best of {rounds} rounds, the batches interleaved, each round ~{min_s / rounds * 1e3:.0f} ms per batch"
    print_fn(f"  C++ batches: {out['cpp_timing']}")
    rows = []
    for b, t in zip(batches, timed):
        cpp_s = t["best"]
        row: dict[str, Any] = {"batch": b, "cpp_us_per_call": cpp_s * 1e6, "cpp_ns_per_instrument": cpp_s / b * 1e9,
                               "cpp_steps_per_s": b / cpp_s, "cpp_ns_per_instrument_median": t["median"] / b * 1e9,
                               "cpp_steps_per_s_median": b / t["median"]}
        if torch is not None:
            t_s = time_per_call(_torch_step(torch, model, b, seed=b), min_s=min_s, repeats=3)
            row.update(torch_us_per_call=t_s * 1e6, torch_steps_per_s=b / t_s, cpp_speedup_vs_torch=t_s / cpp_s)
        rows.append(row)
        print_fn(f"  batch {b:6d}: C++ {row['cpp_steps_per_s']:14,.0f} steps/s  {row['cpp_ns_per_instrument']:7,.0f} ns/instrument"
                 f" (median round {row['cpp_ns_per_instrument_median']:7,.0f})"
                 + (f" | torch eager {row['torch_steps_per_s']:12,.0f} steps/s ({row['cpp_speedup_vs_torch']:.1f}x)"
                    if "torch_steps_per_s" in row else ""))
    out["batches"] = rows
    out["onnxruntime"] = _ssm_onnxruntime(cfg, tensors, batches, min_s, n_lat_torch, print_fn)
    if "latency_batch1_us" in out["onnxruntime"]:
        lat["onnxruntime"] = out["onnxruntime"]["latency_batch1_us"]
    for row, o in zip(rows, out["onnxruntime"].get("batches", [])):
        row.update(ort_us_per_call=o["us_per_call"], ort_steps_per_s=o["steps_per_s"],
                   cpp_speedup_vs_ort=o["us_per_call"] / row["cpp_us_per_call"])
    out["gpu_backends"] = _ssm_gpu_backends(cfg, tensors, batches, min_s, n_lat_torch, print_fn)
    out["variants"] = _ssm_variants(cfg, tensors, out["kernels"], [1, 16, 1024], min_s, print_fn)
    out["cuda"] = _ssm_cuda(torch, model, batches, quick)
    for row, c in zip(rows, out["cuda"].get("batches", [])):
        row.update(cuda_steps_per_s=c["steps_per_s"], cpp_speedup_vs_cuda=c["us_per_call"] / row["cpp_us_per_call"])
    by_batch = {r["batch"]: r for r in rows}
    per_inst = {b: by_batch[b]["cpp_ns_per_instrument"] for b in by_batch}
    out["targets"] = [
        _target("ssm_step", lat["cpp"]["p50"]),
        _target("ssm_step", by_batch[1].get("cpp_speedup_vs_torch"), "SSM step, batch 1, C++ / torch eager"),
        _target("ssm_step", by_batch[1024]["cpp_steps_per_s"], "SSM step, batch 1,024 distinct instruments, one core (C++)"),
        _target("ssm_step", per_inst[16] / per_inst[1], "SSM step, batch 16 ns/instrument over batch 1"),
        _target("ssm_step", per_inst[1024] / per_inst[1], "SSM step, batch 1,024 ns/instrument over batch 1"),
    ]
    return out


def _ssm_variants(cfg, tensors, kernels: list[str], batches: list[int], min_s: float,
                  print_fn: PrintFn) -> list[dict[str, Any]]:
    """ns per instrument of every kernel variant this CPU runs (they compute the same bits), so a
    run shows whether the one picked for this CPU is the fastest here."""
    rows = []
    for kernel in kernels:
        row: dict[str, Any] = {"kernel": kernel}
        for b in batches:
            row[f"ns_per_instrument_b{b}"] = time_per_call(_CoreStep(cfg, tensors, b, seed=b, kernel=kernel), min_s=min_s) / b * 1e9
        rows.append(row)
        print_fn(f"  variant {kernel:>10}: " + ", ".join(f"batch {b} {row[f'ns_per_instrument_b{b}']:,.0f} ns" for b in batches)
                 + " per instrument")
    return rows


def _ssm_onnxruntime(cfg, tensors, batches: list[int], min_s: float, n_lat: int, print_fn: PrintFn) -> dict[str, Any]:
    """The onnxruntime backend (engine/model/onnx_backend.py) on the same weights, one thread: the
    model's exported ONNX step, the state pool gathered and scattered around each run."""
    from engine.model.onnx_backend import INSTALL_HINT, OnnxRuntimeBackend, import_onnxruntime, onnxruntime_installed

    if not onnxruntime_installed():
        return {"skipped": f"onnxruntime is not installed: {INSTALL_HINT}"}
    with tempfile.TemporaryDirectory(prefix="nextick-bench-") as folder:
        try:
            model = _onnx_model(cfg, tensors, Path(folder))
        except ImportError as e:  # torch without onnx/onnxscript: the weights cannot be exported
            return {"skipped": f"cannot export these weights to ONNX ({e}): {INSTALL_HINT}"}
        first = OnnxRuntimeBackend(model, 1)
        out: dict[str, Any] = {"version": import_onnxruntime().__version__, "providers": first.providers, "threads": 1}
        out["latency_batch1_us"] = percentiles_us(call_latencies_ns(_BackendStep(first, 1), n_lat, warmup=50))
        rows = []
        for b in batches:
            s = time_per_call(_BackendStep(OnnxRuntimeBackend(model, b), b, seed=b), min_s=min_s, repeats=3)
            rows.append({"batch": b, "us_per_call": s * 1e6, "steps_per_s": b / s})
    out["batches"] = rows
    print_fn(f"  ONNX Runtime {out['version']} ({out['providers'][0]}): p50 {out['latency_batch1_us']['p50']:.1f} us at batch 1; "
             + ", ".join(f"batch {r['batch']} {r['steps_per_s']:,.0f} steps/s" for r in rows))
    return out


# The GPU backends, by the name engine.model.backend registers them under when they are built or
# installed here: CUDA (a core built with `make core-cuda`) in fp32 and fp16, TensorRT (the tensorrt
# extra) in fp32 and fp16.
GPU_BACKENDS = ("cuda", "cuda-fp16", "tensorrt", "tensorrt-fp16")


def _ssm_gpu_backends(cfg, tensors, batches: list[int], min_s: float, n_lat: int,
                      print_fn: PrintFn) -> dict[str, dict[str, Any]]:
    """Each GPU backend on the same weights: batch-1 latency percentiles and time per call by batch,
    or why it did not run (not built, no device). A step's inputs and outputs go through mapped
    pinned host memory inside the one kernel launch, so there is no separate host<->device copy
    to time: each figure is the whole step as the engine sees it."""
    from engine.model.backend import backend_names, make_backend

    out: dict[str, dict[str, Any]] = {}
    for name in GPU_BACKENDS:
        if name not in backend_names():
            out[name] = {"skipped": "not built: engine._core has no CUDA backend (make core-cuda)"}
            continue
        with tempfile.TemporaryDirectory(prefix="nextick-bench-") as folder:
            model = _model_file(cfg, tensors, Path(folder))
            try:
                first = make_backend(name, model, 1)
            except (RuntimeError, ValueError) as e:  # built or listed, but no device or library to run on
                out[name] = {"skipped": str(e)}
                continue
            res: dict[str, Any] = {"latency_batch1_us": percentiles_us(call_latencies_ns(_BackendStep(first, 1), n_lat, warmup=50))}
            rows = []
            for b in batches:
                s_ = time_per_call(_BackendStep(make_backend(name, model, b), b, seed=b), min_s=min_s, repeats=3)
                rows.append({"batch": b, "us_per_call": s_ * 1e6, "steps_per_s": b / s_})
            res["batches"] = rows
            if hasattr(first, "profile"):  # copies timed apart from the compute (the tensorrt backends)
                first.profile = True
                call_latencies_ns(_BackendStep(first, 1), 200, warmup=0)
                total = first.copy_ms + first.compute_ms
                res["host_device_share_batch1"] = first.copy_ms / total if total > 0 else float("nan")
            else:  # the CUDA backend reads and writes mapped pinned memory inside its one launch
                res["host_device_share_batch1"] = "inside the kernel (mapped pinned memory)"
            out[name] = res
            print_fn(f"  {name}: p50 {res['latency_batch1_us']['p50']:.1f} us at batch 1; "
                     + ", ".join(f"batch {r['batch']} {r['steps_per_s']:,.0f} steps/s" for r in rows))
    for name, res in out.items():
        if "skipped" in res:
            print_fn(f"  {name}: skipped ({res['skipped']})")
    return out


def _is_packaged(model, cfg, tensors) -> bool:
    return model.config == cfg and model.tensors.keys() == tensors.keys() and all(
        np.array_equal(model.tensors[k], tensors[k]) for k in tensors)


def _model_file(cfg, tensors, folder: Path):
    """A model file of these weights: the packaged model when these are its weights, else a file
    written in ``folder``."""
    from engine.model.weights import load_model, save_model

    packaged = load_model()
    if _is_packaged(packaged, cfg, tensors):
        return packaged
    save_model(folder / "model.safetensors", tensors, cfg, packaged.normalizer, packaged.signal)
    return load_model(folder / "model.safetensors")


def _onnx_model(cfg, tensors, folder: Path):
    """A model file of these weights with its ONNX export beside it: the packaged model (and its
    shipped export) when these are its weights, else a file in ``folder`` exported now (torch)."""
    from engine.model.weights import DEFAULT_MODEL_PATH

    model = _model_file(cfg, tensors, folder)
    if Path(model.path) == DEFAULT_MODEL_PATH:  # its export ships beside it (engine/model/default.onnx)
        return model
    from engine.model.onnx_export import export_onnx
    from engine.model.onnx_format import sibling_path

    export_onnx(model, sibling_path(model.path))
    return model


def _ssm_cuda(torch, model, batches: list[int], quick: bool, device: str = "cuda") -> dict[str, Any]:
    """torch eager on the GPU, each step synchronised before the clock is read (``device`` is a
    parameter so the path can be exercised on the CPU)."""
    if torch is None:
        return {"skipped": "torch is not installed"}
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"}
    import copy

    sync = torch.cuda.synchronize if device == "cuda" else None
    m = copy.deepcopy(model).to(device)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda" else device}
    out["latency_batch1_us"] = percentiles_us(call_latencies_ns(_torch_step(torch, m, 1, device), 300 if quick else 5_000,
                                                                warmup=50, sync=sync))
    rows = []
    for b in batches:
        s = time_per_call(_torch_step(torch, m, b, device, seed=b), min_s=0.05 if quick else 0.5, repeats=3, sync=sync)
        rows.append({"batch": b, "us_per_call": s * 1e6, "steps_per_s": b / s})
    out["batches"] = rows
    return out


# ------------------------------------------------------------------------------- 1b. ssm_precision

# The matrices the CUDA backend's fp16 mode stores in binary16 (csrc/cuda/ssm_cuda.hpp).
FP16_MATRICES = ("encoder.weight", "in_proj.weight", "out_proj.weight", "head.weight")


def bf16_round(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest, ties to even) and back: what a bf16 matvec reads."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


# How each reduced precision rounds the four matrices. fp16 is exactly the `cuda-fp16` backend's
# arithmetic; bf16 rounds only the weights, a lower bound on what a bf16 CPU matvec (vdpbf16ps,
# which also rounds the activations) would move (bench/cpp/matvec_bf16.cpp times that product).
PRECISIONS = {"fp16": lambda v: v.astype(np.float16).astype(np.float32), "bf16 (weights only)": bf16_round}


def suite_ssm_precision(*, quick: bool, print_fn: PrintFn) -> dict[str, Any]:
    """The demo's decisions with reduced-precision matrices against fp32, run on the CPU: the
    `cuda-fp16` backend computes the CPU kernel's bits on the four matrices rounded to binary16
    (the rest in fp32), so the CPU kernel on those rounded weights makes its decisions without a
    GPU; bf16 is measured the same way for its weights. Counts the orders (decision time,
    instrument, side) that differ, and the largest relative error of the outputs."""
    import tempfile

    from engine.backtest import BacktestConfig, run_backtest
    from engine.model.onnx_backend import relative_error
    from engine.model.weights import load_model, save_model
    from feeds.dataset import QuoteDataset
    from feeds.synthetic import SyntheticConfig, SyntheticMarket

    model = load_model()
    market = SyntheticConfig(seed=7, n_instruments=3, n_sessions=1 if quick else 5, alpha_strength=3.0)
    data = QuoteDataset.read(SyntheticMarket(market))
    base = run_backtest(data.source(), BacktestConfig(strategy="ssm"))

    def orders(r) -> set[tuple[int, int, int]]:
        return {(int(f["decision_ts"]), int(f["instrument"]), int(np.sign(f["sz"]))) for f in r.fills}

    a = orders(base)
    out: dict[str, Any] = {
        "market": f"synthetic seed 7, 3 instruments, {market.n_sessions} sessions, alpha strength 3, 1 s ticks (the demo's)",
        "matrices": list(FP16_MATRICES),
        "fp32": {"orders": len(a), "fills_sha256": base.fill_hash(), "total_return": base.metrics.total_return},
    }
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((8, model.config.n_features)).astype(np.float32) for _ in range(64 if quick else 256)]
    for name, rounding in PRECISIONS.items():
        rounded = {k: rounding(v) if k.endswith(FP16_MATRICES) else v for k, v in model.tensors.items()}
        with tempfile.TemporaryDirectory(prefix="nextick-bench-") as folder:
            path = Path(folder) / "rounded.safetensors"
            save_model(path, rounded, model.config, model.normalizer, model.signal)
            run = run_backtest(data.source(), BacktestConfig(strategy="ssm", model=str(path)))
            low, full = load_model(path).core_model(8), model.core_model(8)
        slots, no_reset = np.arange(8, dtype=np.int32), np.zeros(8, np.uint8)
        err = max(relative_error(low.step(slots, x, no_reset), full.step(slots, x, no_reset)) for x in xs)
        b = orders(run)
        out[name] = {"orders": len(b), "fills_sha256": run.fill_hash(), "total_return": run.metrics.total_return,
                     "orders_only_fp32": len(a - b), "orders_only_here": len(b - a), "orders_common": len(a & b),
                     "output_rel_err": err}
        print_fn(f"  {name} matrices vs fp32 on the demo market: {len(a & b):,} orders in common, {len(a - b)} only in "
                 f"fp32, {len(b - a)} only in {name}; total return {base.metrics.total_return:+.4%} vs "
                 f"{run.metrics.total_return:+.4%}; outputs within {err:.1e} (relative)")
    return out


# ---------------------------------------------------------------------------- 2. ssm_vs_transformer


def suite_ssm_vs_transformer(*, quick: bool, print_fn: PrintFn) -> dict[str, Any]:
    torch = import_torch(threads=1)
    from bench._transformer import TickTransformer, parity_error

    windows = [64, 256] if quick else [64, 256, 512, 1024]
    batches = [1, 4] if quick else [1, 16]
    min_s = 0.03 if quick else 0.3
    cfg, tensors, ssm, _ = _ssm_weights()
    torch.manual_seed(0)
    tf = TickTransformer(n_features=cfg.n_features, d_model=64, n_layers=2, n_heads=4, d_ff=128, n_out=cfg.n_out).eval()
    out: dict[str, Any] = {
        "transformer": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "n_features": cfg.n_features,
                        "params": tf.n_params(), "positional_encoding": "none (causal mask only)",
                        "kv_cache_parity_max_abs_err": parity_error(tf)},
        "ssm": {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "d_state": cfg.d_state,
                "params": sum(p.numel() for p in ssm.parameters())},
        "threads": 1,
        "windows": windows,
        "batches": batches,
    }

    ssm_rows = {}
    for b in batches:
        cpp_s = time_per_call(_CoreStep(cfg, tensors, b), min_s=min_s)
        t_s = time_per_call(_torch_step(torch, ssm, b), min_s=min_s, repeats=3)
        ssm_rows[b] = {"cpp": cpp_s * 1e6, "torch": t_s * 1e6}

    rows = []
    for b in batches:
        for L in windows:
            rec_s = time_per_call(_window_recompute(torch, tf, b, L, cfg.n_features), min_s=min_s, repeats=3)
            kv_s = time_per_call(_kv_step(torch, tf, b, L, cfg.n_features), min_s=min_s, repeats=3)
            row = {
                "batch": b, "window": L,
                "transformer_recompute_us": rec_s * 1e6, "transformer_kv_cache_us": kv_s * 1e6,
                "ssm_cpp_us": ssm_rows[b]["cpp"], "ssm_torch_us": ssm_rows[b]["torch"],
            }
            for k in ("transformer_recompute", "transformer_kv_cache", "ssm_cpp", "ssm_torch"):
                row[f"{k}_ticks_per_s"] = b / (row[f"{k}_us"] / 1e6)
            row["recompute_over_ssm_cpp"] = row["transformer_recompute_us"] / row["ssm_cpp_us"]
            row["kv_cache_over_ssm_cpp"] = row["transformer_kv_cache_us"] / row["ssm_cpp_us"]
            rows.append(row)
            print_fn(f"  batch {b:3d} L {L:5d}: transformer recompute {row['transformer_recompute_us']:10.1f} us, "
                     f"KV cache {row['transformer_kv_cache_us']:8.1f} us | SSM C++ {row['ssm_cpp_us']:6.2f} us, "
                     f"torch {row['ssm_torch_us']:7.1f} us per tick")
    out["rows"] = rows
    growth = {}
    for b in batches:
        first, last = (next(r for r in rows if r["batch"] == b and r["window"] == L) for L in (windows[0], windows[-1]))
        growth[str(b)] = {k: last[f"{k}_us"] / first[f"{k}_us"]
                          for k in ("transformer_recompute", "transformer_kv_cache", "ssm_cpp", "ssm_torch")}
    out["growth_first_to_last_window"] = growth
    return out


def _window_recompute(torch, tf, batch: int, window: int, n_features: int) -> Callable[[], Any]:
    """Per tick: the newest tick appended to the last ``window`` ticks, the whole window re-run."""
    g = torch.Generator().manual_seed(window)
    buf = [torch.randn(batch, window, n_features, generator=g)]
    x = torch.randn(batch, 1, n_features, generator=g)

    def tick() -> None:
        with torch.inference_mode():
            buf[0] = torch.cat([buf[0][:, 1:], x], dim=1)
            tf(buf[0])

    return tick


def _kv_step(torch, tf, batch: int, window: int, n_features: int) -> Callable[[], Any]:
    """Per tick: one cached step against a full cache of ``window`` positions."""
    g = torch.Generator().manual_seed(window)
    x = torch.randn(batch, n_features, generator=g)
    cache = tf.empty_cache(batch, window)
    with torch.inference_mode():
        for _ in range(window):
            tf.step(x, cache)

    def tick() -> None:
        with torch.inference_mode():
            tf.step(x, cache)

    return tick


# ---------------------------------------------------------------------------------- 3. e2e_loopback


def suite_e2e_loopback(*, quick: bool, print_fn: PrintFn) -> dict[str, Any]:
    # (total quotes/s or None = as fast as possible, seconds) per run; every instrument count
    if quick:
        plan = [(2, 1000, 1.5)]
    else:
        rates = [(100, 20.0), (1000, 10.0), (10_000, 5.0), (None, 5.0)]  # >= 2,000 samples per percentile
        plan = [(n, r, s) for n in (2, 20, 200) for r, s in rates]
    warmup_s = 0.5 if quick else 3.0
    _e2e_run(2, 1000, warmup_s)  # discarded: the first run in a process pays for cold caches and lazy set-up
    runs = []
    for n_symbols, rate, seconds in plan:
        runs.append(_e2e_run(n_symbols, rate, seconds))
        r = runs[-1]
        e2e = r["latency_us"].get("recv_to_decision", {})
        print_fn(f"  {n_symbols:3d} symbols, {r['rate']:>6}: {r['quotes_per_s']:10,.0f} quotes/s, receipt->decision "
                 f"p50 {e2e.get('p50', float('nan')):8.1f} us p99 {e2e.get('p99', float('nan')):9.1f} us")
    out: dict[str, Any] = {"pinned": can_pin(), "strategy": "momentum (built-in)", "interval": "raw", "recording": True,
                           "warmup_s": warmup_s, "runs": runs}
    out["max_rate_quotes_per_s"] = {str(r["symbols"]): r["quotes_per_s"] for r in runs if r["rate"] == "max"}
    at_1k = next((r for r in runs if r["rate"] == 1000 and r["symbols"] == 2), None)
    p99 = at_1k["latency_us"].get("recv_to_decision", {}).get("p99") if at_1k else None
    out["targets"] = [_target("e2e_loopback", p99)]
    return out


def _e2e_run(n_symbols: int, rate: float | None, seconds: float) -> dict[str, Any]:
    from engine.backtest import BacktestConfig
    from engine.paper import PaperConfig, PaperTrader
    from feeds.live import FeedConfig

    symbols = [f"S{i:03d}USDT" for i in range(n_symbols)]
    args = ["--speed", "0"] if rate is None else ["--rate-hz", f"{rate / n_symbols:g}"]
    cfg_kw = {
        "venues": {"binance-usdm": symbols},
        "record_raw": True,
        "backtest": BacktestConfig(strategy="momentum", interval="raw"),
        "feed": FeedConfig(ping_interval_s=60.0, stale_after_s=30.0, stale_reconnect_s=60.0),
    }
    with sim_process(symbols, *args) as url, tempfile.TemporaryDirectory() as d, pinned_to(0):
        trader = PaperTrader(PaperConfig(url=url, **cfg_kw), Path(d), print_fn=lambda s: None, status_every_s=1.0)
        s = _run_loop(trader.run(seconds))
    return {
        "symbols": n_symbols, "rate": "max" if rate is None else int(rate), "seconds": seconds,
        "quotes_in": s.quotes_in, "wall_s": s.wall_s, "quotes_per_s": s.quotes_in / s.wall_s if s.wall_s else 0.0,
        "engine_errors": s.engine_errors, "last_error": s.last_error, "latency_us": s.latency_us,
    }


def _run_loop(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# -------------------------------------------------------------------------------------- 4. backtest


SPANS = {"fast_span": 20.0, "slow_span": 100.0}  # both momentum twins; fast enough to trade often


def suite_backtest(*, quick: bool, print_fn: PrintFn) -> dict[str, Any]:
    from strategies.ema_cross import EmaCross

    instruments = [1, 100] if quick else [1, 10, 100, 1000]
    sizes = ({"momentum": 100_000, "ema_cross": 5_000, "ssm_threshold": 20_000} if quick
             else {"momentum": 2_000_000, "ema_cross": 100_000, "ssm_threshold": 500_000})
    rounds = 1 if quick else 3
    rows, ratios = [], []
    for n_inst in instruments:
        quotes, table = random_walk_quotes(max(sizes.values()), n_inst)
        rates = {}
        for kind, n in sizes.items():
            rate, fills = _backtest_rate(kind, quotes[:n], table, rounds, EmaCross)
            rates[kind] = rate
            rows.append({"instruments": n_inst, "strategy": kind, "quotes": n, "quotes_per_s": rate, "fills": fills})
        ratios.append({"instruments": n_inst, "momentum_over_ema_cross": rates["momentum"] / rates["ema_cross"],
                       "momentum_over_ssm_threshold": rates["momentum"] / rates["ssm_threshold"]})
        print_fn(f"  {n_inst:5d} instruments: momentum {rates['momentum'] / 1e6:8.2f} M quotes/s | EmaCross (Python) "
                 f"{rates['ema_cross']:10,.0f} | ssm_threshold {rates['ssm_threshold']:10,.0f}")
    return {"ticks": "raw (no conflation)", "quotes": "bench.quotes.random_walk_quotes", "rounds": rounds,
            "strategy_params": SPANS, "rows": rows, "ratios": ratios,
            "notes": "ssm_threshold runs the packaged model; its ticks go straight into Engine.run (no conflator), "
                     "the config names the model's 1s interval"}


def _backtest_rate(kind: str, quotes: np.ndarray, table, rounds: int, ema_cls) -> tuple[float, int]:
    """Best quotes/s over ``rounds`` fresh engines (see ``_best_loop``)."""
    from engine.backtest import BacktestConfig, Engine
    from engine.model.weights import DEFAULT_MODEL_PATH

    def engine():
        if kind == "ssm_threshold":
            return Engine(BacktestConfig(strategy="ssm_threshold", interval="1s", model=str(DEFAULT_MODEL_PATH)), table, None)
        strategy = ema_cls(**SPANS) if kind == "ema_cross" else None
        return Engine(BacktestConfig(strategy="momentum", strategy_params=SPANS, interval="raw"), table, strategy)

    rate, fills = _best_loop(engine, quotes, rounds)
    return rate, len(fills)


def _best_loop(make_engine: Callable[[], Any], quotes: np.ndarray, rounds: int) -> tuple[float, np.ndarray]:
    """Best quotes/s of ``Engine.run`` over ``rounds`` fresh engines, and the fills of the last. The
    first quote (setup: instruments, sessions, strategy, model, a compiled strategy's binding) runs
    outside the timing, as in bench/test_backtest_bench.py."""
    best, fills = float("inf"), np.empty(0)
    for _ in range(rounds):
        engine = make_engine()
        engine.run(quotes[:1])
        t0 = time.perf_counter()
        engine.run(quotes[1:])
        best = min(best, time.perf_counter() - t0)
        engine.core.finish()
        fills = engine.core.fills()
    return (len(quotes) - 1) / best, fills


# ----------------------------------------------------------------------------- 4b. compiled Python


def suite_compiled(*, quick: bool, print_fn: PrintFn) -> dict[str, Any]:
    """The EMA cross written in Python (strategies/ema_cross_compiled.py), compiled with numba and
    called from the loop, against the built-in momentum on the same quotes: 1 and 100 instruments,
    the loop alone (Engine.run on preloaded quotes), compile time apart; uncompiled on a slice."""
    from engine.backtest import BacktestConfig, Engine
    from strategies import compiled as compiled_mod
    from strategies.ema_cross_compiled import ema_cross_compiled, on_tick

    if not compiled_mod.numba_available():
        raise SuiteSkipped("numba is not installed: pip install -e '.[compiled]'")
    n, n_plain, rounds = (100_000, 2_000, 1) if quick else (1_000_000, 20_000, 5)
    t0 = time.perf_counter()
    compiled_mod._compile.__wrapped__(on_tick, None)  # a fresh compilation, whatever this process did before
    compile_s = time.perf_counter() - t0

    config = BacktestConfig(strategy="momentum", strategy_params=SPANS, interval="raw")

    def engine(table, strategy_factory):
        return lambda: Engine(config, table, strategy_factory())

    rows = []
    for n_inst in (1, 100):
        quotes, table = random_walk_quotes(n, n_inst)
        builtin, builtin_fills = _best_loop(engine(table, lambda: None), quotes, rounds)
        compiled, compiled_fills = _best_loop(engine(table, lambda: ema_cross_compiled(**SPANS)), quotes, rounds)
        plain, plain_fills = _best_loop(engine(table, lambda: ema_cross_compiled(**SPANS, compile=False)), quotes[:n_plain], 1)
        _, builtin_head = _best_loop(engine(table, lambda: None), quotes[:n_plain], 1)
        rows.append({"instruments": n_inst, "quotes": n, "builtin_quotes_per_s": builtin, "compiled_quotes_per_s": compiled,
                     "compiled_over_builtin": compiled / builtin, "fills": len(builtin_fills),
                     "fills_identical": builtin_fills.tobytes() == compiled_fills.tobytes(),
                     "uncompiled_quotes": n_plain, "uncompiled_quotes_per_s": plain,
                     "uncompiled_fills_identical": builtin_head.tobytes() == plain_fills.tobytes()})
        print_fn(f"  {n_inst:4d} instruments: built-in {builtin / 1e6:7.2f} M quotes/s | compiled Python "
                 f"{compiled / 1e6:7.2f} M ({compiled / builtin:.2f}x) | uncompiled {plain:10,.0f} | "
                 f"fills identical: {rows[-1]['fills_identical'] and rows[-1]['uncompiled_fills_identical']}")
    one, hundred = rows[0], rows[1]
    return {"ticks": "raw (no conflation)", "quotes": "bench.quotes.random_walk_quotes", "rounds": rounds,
            "strategy_params": SPANS, "compile_s": compile_s, "rows": rows,
            "targets": [_target("compiled", one["compiled_quotes_per_s"], "compiled Python EMA cross, 1 instrument"),
                        _target("compiled", hundred["compiled_over_builtin"],
                                "compiled Python / built-in EMA cross, 100 instruments")]}


# ----------------------------------------------------------------------------------------- 5. peers


PEER_FUNCS = ("nextick_ema_cross", "nextick_compiled_ema_cross", "nextick_quote_only", "nautilus_ema_cross",
              "nautilus_quote_only", "hftbacktest_ema_cross")
NEXTICK_PEER_ROUNDS = 5
PEER_RATIOS = (  # (name, numerator, denominator): nextick over a peer on the same work
    ("nextick / nautilus, EMA cross", "nextick_ema_cross", "nautilus_ema_cross"),
    ("nextick / nautilus, quotes only", "nextick_quote_only", "nautilus_quote_only"),
    ("nextick / hftbacktest, EMA cross", "nextick_ema_cross", "hftbacktest_ema_cross"),
    ("nextick compiled Python / built-in, EMA cross", "nextick_compiled_ema_cross", "nextick_ema_cross"),
    ("nextick compiled Python / nautilus, EMA cross", "nextick_compiled_ema_cross", "nautilus_ema_cross"),
    ("nextick compiled Python / hftbacktest, EMA cross", "nextick_compiled_ema_cross", "hftbacktest_ema_cross"),
)


def suite_peers(*, quick: bool, print_fn: PrintFn) -> dict[str, Any]:
    try:
        from bench import peers
    except ImportError as e:
        raise SuiteSkipped(f"bench.peers cannot be imported ({e})") from None
    n = 50_000 if quick else 1_000_000
    quotes, _ = random_walk_quotes(n, 1)
    engines: dict[str, Any] = {}
    for name in PEER_FUNCS:
        fn = getattr(peers, name, None)
        if fn is None:
            engines[name] = {"skipped": f"bench.peers has no {name}"}
            continue
        try:
            # one instrument's quotes; default spans (20/100). nextick runs in tens of ms, where a
            # shared machine's noise is large: the best of NEXTICK_PEER_ROUNDS, as bench/test_peers_bench.py.
            rounds = NEXTICK_PEER_ROUNDS if name.startswith("nextick") else 1
            res = min((fn(quotes) for _ in range(rounds)), key=lambda r: r.run_s)
            engines[name] = _as_dict(res)
            if hasattr(res, "wall_quotes_per_s"):
                engines[name]["wall_quotes_per_s"] = res.wall_quotes_per_s
        except ImportError as e:  # PeerUnavailable
            reason = str(e) or type(e).__name__
            engines[name] = {"skipped": reason if "pip install" in reason else f"{reason}; {PEERS_HINT}"}
        r = engines[name]
        print_fn(f"  {name:24s}: " + (f"skipped ({r['skipped']})" if "skipped" in r else f"{r.get('quotes_per_s', float('nan')):14,.0f} quotes/s"))
    ratios = []
    for label, a, b in PEER_RATIOS:
        ea, eb = engines.get(a, {}), engines.get(b, {})
        if ea.get("quotes_per_s") and eb.get("quotes_per_s"):
            wa, wb = ea.get("wall_quotes_per_s"), eb.get("wall_quotes_per_s")
            ratios.append({"name": label, "ratio": ea["quotes_per_s"] / eb["quotes_per_s"],
                           "wall_ratio": wa / wb if wa and wb else None, "numerator": a, "denominator": b})
    out: dict[str, Any] = {"quotes": n, "instruments": 1, "nextick_rounds": NEXTICK_PEER_ROUNDS, "engines": engines,
                           "ratios": ratios}
    by_name = {x["name"]: x["ratio"] for x in ratios}
    known = {t[1] for t in KNOWN_TARGETS if t[0] == "peers"}
    out["targets"] = [_target("peers", by_name[label], label) for label, _, _ in PEER_RATIOS if label in by_name and label in known]
    flips = {k: v["trades_or_flips"] for k, v in engines.items() if k.endswith("_ema_cross") and "trades_or_flips" in v}
    if len(flips) > 1:  # the EMA-cross decisions are the same in every engine (bench/peers.py)
        out["ema_cross_flips"] = flips
        out["ema_cross_flips_agree"] = len(set(flips.values())) == 1
    ran_peer = [k for k, v in engines.items() if not k.startswith("nextick") and "skipped" not in v]
    if not ran_peer:
        out["skipped"] = f"no peer engine installed (nautilus_trader, hftbacktest): {PEERS_HINT}"
    return out


def _as_dict(obj: Any) -> dict[str, Any]:
    import dataclasses

    if isinstance(obj, dict):
        return dict(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    try:
        import msgspec

        return msgspec.to_builtins(obj)
    except TypeError:
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


# ------------------------------------------------------------------------------------------- runner


SUITES: dict[str, Callable[..., dict[str, Any]]] = {
    "ssm_step": suite_ssm_step,
    "ssm_precision": suite_ssm_precision,
    "ssm_vs_transformer": suite_ssm_vs_transformer,
    "e2e_loopback": suite_e2e_loopback,
    "backtest": suite_backtest,
    "compiled": suite_compiled,
    "peers": suite_peers,
}


def run_bench(out_dir: Path, *, quick: bool = False, suites: list[str] | None = None, print_fn: PrintFn = print) -> dict:
    """Run ``suites`` (all by default) and write results.json, summary.md and report.html into
    ``out_dir``. A suite that cannot run is recorded as ``{"skipped": reason}``; one that fails as
    ``{"error": traceback}``; neither stops the others. Returns the results."""
    names = list(SUITES) if suites is None else list(suites)
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine(),
        "suites": {},
    }
    for name in names:
        print_fn(f"[{name}]{' (quick)' if quick else ''}")
        t0 = time.perf_counter()
        try:
            res = SUITES[name](quick=quick, print_fn=print_fn)
        except SuiteSkipped as e:
            res = {"skipped": str(e)}
        except Exception as e:  # recorded, so one broken suite does not lose the others' figures
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        finally:
            restore_torch_threads()
        res["wall_s"] = time.perf_counter() - t0
        if "skipped" in res:
            print_fn(f"  skipped: {res['skipped']}")
        if "error" in res:
            print_fn(f"  ERROR: {res['error']}")
        results["suites"][name] = res
    results["wall_s"] = time.perf_counter() - t_start
    files = write_report(out_dir, results)
    print_fn(f"wrote {', '.join(str(p) for p in files.values())} in {results['wall_s']:.0f} s")
    return results
