"""Write-up of a ``nextick bench`` run (bench/run.py): results.json, summary.md and report.html.

- ``results.json``: everything the suites returned, the machine description and the run's settings.
- ``summary.md``: the targets (met or not), then one section of tables per suite, ratios included.
- ``report.html``: one self-contained file, the same tables plus charts: plotly (inlined) when it is
  importable, otherwise small SVG charts drawn here.

``machine()`` describes where the figures were taken: CPU and its vector extensions, cores, memory,
OS, Python and numpy, the compiled core's build, torch and any CUDA device, the repository's commit.
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    cpu = _cpuinfo()
    out: dict[str, Any] = {
        "cpu_model": cpu["model"] or platform.processor() or platform.machine(),
        "cpu_id": cpu["cpu_id"],
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": cpu["physical_cores"],
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "vector_flags": cpu["vector_flags"],
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "core_build": _core_build(),
        "torch": _version("torch"),
        "cuda_device": _cuda_device(),
        "git_commit": _git_commit(),
    }
    return out


def _cpuinfo() -> dict[str, Any]:
    model, flags, cores = "", set(), set()
    ident: dict[str, str] = {}  # vendor, family, model number: "AMD EPYC" alone does not say which Zen
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    phys = core = None
    for line in text.splitlines():
        key, _, val = (s.strip() for s in line.partition(":"))
        if key in ("vendor_id", "cpu family", "model", "stepping") and key not in ident:
            ident[key] = val
        if key in ("model name", "Hardware", "cpu model") and not model:
            model = val
        elif key in ("flags", "Features"):
            flags.update(val.split())
        elif key == "physical id":
            phys = val
        elif key == "core id":
            core = val
        elif not line.strip():
            if core is not None:
                cores.add((phys, core))
            phys = core = None
    if core is not None:
        cores.add((phys, core))
    vec = sorted(f for f in flags if f in ("avx", "avx2", "fma", "neon", "asimd", "sve", "sve2") or f.startswith("avx512"))
    summary = {"avx2": "avx2" in flags, "avx512": any(f.startswith("avx512") for f in flags),
               "neon": bool({"neon", "asimd"} & flags)}
    cpu_id = (f"{ident.get('vendor_id', '?')} family {ident.get('cpu family', '?')} model {ident.get('model', '?')} "
              f"stepping {ident.get('stepping', '?')}" if ident else None)
    return {"model": model, "cpu_id": cpu_id, "physical_cores": len(cores) or None, "vector_flags": {**summary, "all": vec}}


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _core_build() -> dict[str, str]:
    """engine._core.build_info(), e.g. 'version=0.1.0 simd=avx512 compiler="12.2.0"', as a dict."""
    try:
        from engine import _core

        info = _core.build_info()
    except Exception as e:  # a missing or broken build is itself the description
        return {"error": f"{type(e).__name__}: {e}"}
    if isinstance(info, dict):
        return {str(k): str(v) for k, v in info.items()}
    pairs = re.findall(r'(\w+)=("[^"]*"|\S+)', str(info))
    return {k: v.strip('"') for k, v in pairs} or {"info": str(info)}


def _cuda_device() -> str | None:
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               check=False, capture_output=True, text=True, timeout=10)
            if r.returncode == 0 and r.stdout.strip():
                return "; ".join(line.strip() for line in r.stdout.strip().splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    if _version("torch") is None:
        return None
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               check=False, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------- writer


def write_report(out_dir: Path, results: dict[str, Any]) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "summary.md", "html": out_dir / "report.html"}
    clean = _jsonable(results)
    paths["json"].write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    sections = build_sections(clean)
    paths["md"].write_text(render_markdown(clean, sections))
    paths["html"].write_text(render_html(clean, sections))
    return paths


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays to Python, NaN and infinities to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


# ------------------------------------------------------------------------------ tables and charts


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Series:
    name: str
    x: list[Any]
    y: list[float | None]
    dash: bool = False


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    kind: str = "line"  # "line" or "bar"
    log_x: bool = False
    log_y: bool = False
    categorical: bool = False  # x values are labels, evenly spaced
    hline: tuple[float, str] | None = None  # a reference level (value, label), e.g. a target


@dataclass
class Section:
    name: str
    title: str
    status: str = "ok"  # ok, skipped, error, not run
    note: str = ""
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


SUITE_TITLES = {
    "ssm_step": "SSM step (C++ kernel vs torch and ONNX Runtime)",
    "ssm_precision": "SSM decisions: fp16 matrices (the CUDA fp16 backend's arithmetic) and bf16 weights vs fp32",
    "ssm_vs_transformer": "SSM O(1) step vs Transformer O(L) window",
    "e2e_loopback": "End to end over loopback (exchange simulator -> paper trader)",
    "backtest": "Backtest loop throughput",
    "compiled": "Compiled Python strategy (numba, through a C function pointer) vs the built-in",
    "peers": "Peer engines on the same quotes",
}

# (suite, name, limit, unit): listed in every summary, measured or not
# (suite, name, op, limit, unit): "<=" a latency ceiling, ">=" a speed ratio floor.
KNOWN_TARGETS = (
    ("ssm_step", "SSM step, 1 instrument, p50 (C++)", "<=", 10.0, "us"),
    ("ssm_step", "SSM step, batch 1, C++ / torch eager", ">=", 30.0, "x"),
    ("ssm_step", "SSM step, batch 1,024 distinct instruments, one core (C++)", ">=", 500_000.0, "steps/s"),
    # Batching shares each weight pass across rows: it must never make an instrument slower.
    ("ssm_step", "SSM step, batch 16 ns/instrument over batch 1", "<=", 1.0, "x"),
    ("ssm_step", "SSM step, batch 1,024 ns/instrument over batch 1", "<=", 1.0, "x"),
    ("e2e_loopback", "frame receipt -> decision p99 at 1k quotes/s (2 symbols)", "<=", 200.0, "us"),
    ("compiled", "compiled Python EMA cross, 1 instrument", ">=", 20e6, "quotes/s"),
    ("compiled", "compiled Python / built-in EMA cross, 100 instruments", ">=", 0.2, "x"),
    ("peers", "nextick / nautilus, EMA cross", ">=", 100.0, "x"),
    ("peers", "nextick / nautilus, quotes only", ">=", 20.0, "x"),
    ("peers", "nextick / hftbacktest, EMA cross", ">=", 2.0, "x"),
)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every known target, with the value and verdict of this run or why there is none."""
    suites = results.get("suites", {})
    out = []
    for suite, name, op, limit, unit in KNOWN_TARGETS:
        res = suites.get(suite)
        found = next((t for t in (res or {}).get("targets", []) if t.get("name") == name), None)
        if found is not None:
            out.append({**found, "suite": suite})
            continue
        why = ("suite not run" if res is None else f"skipped: {res['skipped']}" if "skipped" in res
               else f"error: {res['error']}" if "error" in res else "not measured")
        out.append({"suite": suite, "name": name, "target": f"{op} {limit:g} {unit}", "limit": limit, "unit": unit,
                    "value": None, "met": None, "why": why})
    return out


def build_sections(results: dict[str, Any]) -> list[Section]:
    builders = {"ssm_step": _ssm_step, "ssm_precision": _ssm_precision, "ssm_vs_transformer": _ssm_vs_transformer, "e2e_loopback": _e2e,
                "backtest": _backtest, "compiled": _compiled, "peers": _peers}
    sections = []
    for name, res in results.get("suites", {}).items():
        sec = Section(name, SUITE_TITLES.get(name, name))
        wall = res.get("wall_s")
        sec.note = f"{wall:.1f} s" if isinstance(wall, (int, float)) else ""
        if "error" in res:
            sec.status, sec.note = "error", res["error"]
        elif "skipped" in res:
            sec.status, sec.note = "skipped", res["skipped"]
        if sec.status != "error" and name in builders:
            try:
                builders[name](res, sec)
            except Exception as e:  # a report that cannot draw a suite still shows the others
                sec.status, sec.note = "error", f"report: {type(e).__name__}: {e}"
        sections.append(sec)
    return sections


def _pct_row(label: str, h: dict[str, Any]) -> list[Any]:
    return [label, h.get("count"), h.get("p50"), h.get("p90"), h.get("p99"), h.get("p99.9"), h.get("max")]


PCT_HEADERS = ["count", "p50", "p90", "p99", "p99.9", "max"]


def _ssm_step(r: dict[str, Any], sec: Section) -> None:
    lat = dict(r.get("latency_batch1_us", {}))
    cuda = r.get("cuda", {})
    ort = r.get("onnxruntime", {})
    ort_label = f"ONNX Runtime ({', '.join(ort.get('providers', [])[:1]) or 'onnxruntime'})"
    labels = {"cpp": "C++ kernel", "torch_eager": "torch eager (CPU)", "onnxruntime": ort_label}
    rows = [_pct_row(labels.get(k, k), h) for k, h in lat.items()]
    if "latency_batch1_us" in cuda:
        rows.append(_pct_row(f"torch CUDA ({cuda.get('device')})", cuda["latency_batch1_us"]))
    sec.tables.append(Table("Per-call latency, 1 instrument (us; each call timed on its own)", ["engine", *PCT_HEADERS], rows))
    rows = []
    for b in r.get("batches", []):
        rows.append([b["batch"], b["cpp_us_per_call"], b["cpp_ns_per_instrument"], b.get("cpp_ns_per_instrument_median"),
                     b["cpp_steps_per_s"], b.get("torch_steps_per_s"), b.get("cpp_speedup_vs_torch"), b.get("cuda_steps_per_s"),
                     b.get("cpp_speedup_vs_cuda"), b.get("ort_steps_per_s"), b.get("cpp_speedup_vs_ort")])
    timing = r.get("cpp_timing", "best loop")
    sec.tables.append(Table(f"Throughput by batch (C++: {timing}; others: best loop; instrument-steps/s; "
                            "speedup = other time per call / C++ time per call)",
                            ["batch", "C++ us/call", "C++ ns/instrument", "C++ ns/instrument, median round", "C++ steps/s",
                             "torch steps/s", "C++ speedup vs torch",
                             "CUDA steps/s", "C++ speedup vs CUDA", "ONNX Runtime steps/s", "C++ speedup vs ONNX Runtime"], rows))
    notes = [f"weights: {r.get('weights')}", f"timer overhead ~{r.get('timer_overhead_ns', 0):.0f} ns per timed call"]
    if "skipped" in cuda:
        notes.append(f"CUDA: skipped ({cuda['skipped']})")
    if "torch" in r and "skipped" in r["torch"]:
        notes.append(f"torch: skipped ({r['torch']['skipped']})")
    if "skipped" in ort:
        notes.append(f"ONNX Runtime: skipped ({ort['skipped']})")
    elif ort:
        notes.append(f"ONNX Runtime {ort.get('version')} on {', '.join(ort.get('providers', []))}, {ort.get('threads')} thread")
    gpu = r.get("gpu_backends", {})
    if gpu:
        sizes = sorted({b["batch"] for g in gpu.values() for b in g.get("batches", [])})
        sec.tables.append(Table("GPU backends (steps/s; skipped ones say why)", ["backend", "p50 at batch 1 (us)",
                                *(f"batch {b}" for b in sizes), "note"],
                                [[name, g.get("latency_batch1_us", {}).get("p50"),
                                  *({x["batch"]: x["steps_per_s"] for x in g.get("batches", [])}.get(b) for b in sizes),
                                  g.get("skipped", "")] for name, g in gpu.items()]))
    if r.get("variants"):
        keys = [k for k in r["variants"][0] if k.startswith("ns_per_instrument_b")]
        sec.tables.append(Table(f"Kernel variants on this CPU (ns per instrument; same bits; this CPU runs {r.get('kernel')})",
                                ["variant", *(f"batch {k.removeprefix('ns_per_instrument_b')}" for k in keys)],
                                [[v["kernel"], *(v[k] for k in keys)] for v in r["variants"]]))
    if r.get("kernel"):
        notes.insert(0, f"kernel variant {r['kernel']}")
    sec.note = "; ".join(x for x in [sec.note, *notes] if x)
    bs = r.get("batches", [])
    series = [Series("C++ kernel", [b["batch"] for b in bs], [b["cpp_us_per_call"] for b in bs])]
    if any("torch_us_per_call" in b for b in bs):
        series.append(Series("torch eager (CPU)", [b["batch"] for b in bs], [b.get("torch_us_per_call") for b in bs]))
    if cuda.get("batches"):
        series.append(Series("torch CUDA", [c["batch"] for c in cuda["batches"]], [c["us_per_call"] for c in cuda["batches"]]))
    if ort.get("batches"):
        series.append(Series(ort_label, [o["batch"] for o in ort["batches"]], [o["us_per_call"] for o in ort["batches"]]))
    sec.charts.append(Chart("SSM step: time per call vs batch", "batch (instruments per call)", "us per call", series,
                            log_x=True, log_y=True))


def _ssm_precision(r: dict[str, Any], sec: Section) -> None:
    if "fp32" not in r:
        return
    names = [k for k, v in r.items() if isinstance(v, dict) and "orders_common" in v]
    sec.note = "; ".join(x for x in [sec.note, r.get("market", ""), "rounded: " + ", ".join(r.get("matrices", []))] if x)
    rows = [["fp32", r["fp32"]["orders"], r["fp32"]["total_return"], r["fp32"]["fills_sha256"][:12], "", "", "", ""]]
    rows += [[n, r[n]["orders"], r[n]["total_return"], r[n]["fills_sha256"][:12], r[n]["orders_common"],
              r[n]["orders_only_fp32"], r[n]["orders_only_here"], r[n]["output_rel_err"]] for n in names]
    sec.tables.append(Table("The demo's orders by precision (orders as decision time, instrument, side)",
                            ["precision", "orders", "total return", "fills SHA-256", "in both", "only fp32",
                             "only this precision", "output rel. error"], rows))


def _ssm_vs_transformer(r: dict[str, Any], sec: Section) -> None:
    if "rows" not in r:
        return
    tf, ssm = r.get("transformer", {}), r.get("ssm", {})
    sec.note = "; ".join(x for x in [sec.note, (f"Transformer {tf.get('params', 0):,} parameters ({tf.get('n_layers')} layers, "
                                     f"d_model {tf.get('d_model')}, {tf.get('n_heads')} heads, ff {tf.get('d_ff')}, "
                                     f"no positional encoding); SSM {ssm.get('params', 0):,} parameters; one thread; "
                                     f"KV-cache step vs window recompute max |diff| "
                                     f"{tf.get('kv_cache_parity_max_abs_err', float('nan')):.2g}")] if x)
    rows = [[x["batch"], x["window"], x["transformer_recompute_us"], x["transformer_kv_cache_us"], x["ssm_cpp_us"],
             x["ssm_torch_us"], x["recompute_over_ssm_cpp"], x["kv_cache_over_ssm_cpp"]] for x in r["rows"]]
    sec.tables.append(Table("Per-tick latency (us) by context length L",
                            ["batch", "L", "Transformer, window recomputed", "Transformer, KV cache", "SSM step C++",
                             "SSM step torch", "recompute / SSM C++", "KV cache / SSM C++"], rows))
    rows = [[x["batch"], x["window"], x["transformer_recompute_ticks_per_s"], x["transformer_kv_cache_ticks_per_s"],
             x["ssm_cpp_ticks_per_s"], x["ssm_torch_ticks_per_s"]] for x in r["rows"]]
    sec.tables.append(Table("Throughput (instrument-ticks/s)",
                            ["batch", "L", "Transformer, recomputed", "Transformer, KV cache", "SSM C++", "SSM torch"], rows))
    g = r.get("growth_first_to_last_window", {})
    ws = r.get("windows", [])
    label = f"L {ws[0]} -> {ws[-1]}" if ws else "first -> last L"
    sec.tables.append(Table(f"Latency growth, {label} (x)", ["batch", "Transformer, recomputed", "Transformer, KV cache",
                                                              "SSM C++", "SSM torch"],
                            [[b, v["transformer_recompute"], v["transformer_kv_cache"], v["ssm_cpp"], v["ssm_torch"]]
                             for b, v in g.items()]))
    for b in r.get("batches", []):
        rs = [x for x in r["rows"] if x["batch"] == b]
        L = [x["window"] for x in rs]
        sec.charts.append(Chart(
            f"Per-tick latency vs context length, batch {b}", "context length L (ticks)", "us per tick",
            [Series("Transformer, window recomputed", L, [x["transformer_recompute_us"] for x in rs]),
             Series("Transformer, KV cache", L, [x["transformer_kv_cache_us"] for x in rs]),
             Series("SSM step, torch", L, [x["ssm_torch_us"] for x in rs], dash=True),
             Series("SSM step, C++", L, [x["ssm_cpp_us"] for x in rs], dash=True)],
            log_x=True, log_y=True))


def _rate_label(rate: Any) -> str:
    return "max" if rate == "max" else f"{rate / 1000:g}k/s" if rate >= 1000 else f"{rate}/s"


def _e2e(r: dict[str, Any], sec: Section) -> None:
    runs = r.get("runs", [])
    if not runs:
        return
    sec.note = "; ".join(x for x in [sec.note, (f"paper trader on CPU 0, simulator on CPU 1: {'yes' if r.get('pinned') else 'no (fewer than 2 CPUs)'}; "
                                     f"{r.get('strategy')}, {r.get('interval')} ticks, raw recording "
                                     f"{'on' if r.get('recording') else 'off'}; a {r.get('warmup_s', 0):g} s warm-up run (2 symbols, 1k/s) "
                                     "discarded first")] if x)
    rows = []
    for x in runs:
        e = x["latency_us"].get("recv_to_decision", {})
        rows.append([x["symbols"], _rate_label(x["rate"]), x["quotes_in"], x["quotes_per_s"], e.get("p50"), e.get("p90"),
                     e.get("p99"), e.get("p99.9"), e.get("max"), x["engine_errors"]])
    sec.tables.append(Table("Frame receipt -> decision (us) by offered rate and symbols",
                            ["symbols", "offered", "quotes", "quotes/s", "p50", "p90", "p99", "p99.9", "max", "errors"], rows))
    rows = []
    for x in runs:
        for stage, h in x["latency_us"].items():
            rows.append([x["symbols"], _rate_label(x["rate"]), stage, *_pct_row("", h)[1:]])
    sec.tables.append(Table("Per stage (us)", ["symbols", "offered", "stage", *PCT_HEADERS], rows))
    mx = r.get("max_rate_quotes_per_s", {})
    if mx:
        sec.tables.append(Table("Throughput as fast as possible (quotes/s, one core)", ["symbols", "quotes/s"],
                                [[k, v] for k, v in mx.items()]))
    for n in sorted({x["symbols"] for x in runs}):
        rs = [x for x in runs if x["symbols"] == n]
        labels = [_rate_label(x["rate"]) for x in rs]
        series = [Series(p, labels, [x["latency_us"].get("recv_to_decision", {}).get(p) for x in rs])
                  for p in ("p50", "p90", "p99", "p99.9")]
        limit = next(t[3] for t in KNOWN_TARGETS if t[0] == "e2e_loopback")
        sec.charts.append(Chart(f"Frame receipt -> decision percentiles, {n} symbols", "offered rate", "us", series,
                                log_y=True, categorical=True, hline=(limit, f"target p99 at 1k/s: {limit:g} us")))


def _backtest(r: dict[str, Any], sec: Section) -> None:
    rows = r.get("rows", [])
    if not rows:
        return
    sec.note = "; ".join(x for x in [sec.note, f"{r.get('ticks')}; best of {r.get('rounds')}; {r.get('notes', '')}"] if x)
    sec.tables.append(Table("Quotes/s through the loop", ["instruments", "strategy", "quotes", "quotes/s", "fills"],
                            [[x["instruments"], x["strategy"], x["quotes"], x["quotes_per_s"], x["fills"]] for x in rows]))
    sec.tables.append(Table("Ratios (x)", ["instruments", "momentum / EmaCross (Python)", "momentum / ssm_threshold"],
                            [[x["instruments"], x["momentum_over_ema_cross"], x["momentum_over_ssm_threshold"]]
                             for x in r.get("ratios", [])]))
    names = {"momentum": "momentum (built-in)", "ema_cross": "EmaCross (Python)", "ssm_threshold": "ssm_threshold (built-in + SSM)"}
    series = []
    for kind in dict.fromkeys(x["strategy"] for x in rows):
        rs = [x for x in rows if x["strategy"] == kind]
        series.append(Series(names.get(kind, kind), [x["instruments"] for x in rs], [x["quotes_per_s"] for x in rs]))
    sec.charts.append(Chart("Backtest quotes/s vs instruments", "instruments", "quotes/s", series, log_x=True, log_y=True))


def _compiled(r: dict[str, Any], sec: Section) -> None:
    rows = r.get("rows", [])
    if not rows:
        return
    how = f"{r.get('ticks')}; best of {r.get('rounds')}; numba compile {r.get('compile_s', float('nan')):.2f} s (not in the rates)"
    sec.note = "; ".join(x for x in [sec.note, how] if x)
    sec.tables.append(Table("EMA cross: quotes/s through the loop (Engine.run on preloaded quotes)",
                            ["instruments", "quotes", "built-in", "compiled Python", "compiled / built-in", "fills",
                             "fills identical", "uncompiled (quotes)", "uncompiled quotes/s", "uncompiled fills identical"],
                            [[x["instruments"], x["quotes"], x["builtin_quotes_per_s"], x["compiled_quotes_per_s"],
                              x["compiled_over_builtin"], x["fills"], x["fills_identical"], x["uncompiled_quotes"],
                              x["uncompiled_quotes_per_s"], x["uncompiled_fills_identical"]] for x in rows]))


def _peers(r: dict[str, Any], sec: Section) -> None:
    engines = r.get("engines", {})
    if not engines:
        return
    first = ["quotes", "run_s", "wall_s", "wall_quotes_per_s", "orders", "fills", "trades_or_flips"]
    numeric = {k for v in engines.values() for k, x in v.items()
               if k not in ("quotes_per_s", "skipped") and isinstance(x, (int, float)) and not isinstance(x, bool)}
    extra = [k for k in first if k in numeric] + sorted(numeric - set(first))
    rows = [[name, v.get("version", ""), v.get("quotes_per_s"), *[v.get(k) for k in extra], v.get("skipped", "")]
            for name, v in engines.items()]
    sec.tables.append(Table(f"Engines ({r.get('quotes', 0):,} quotes, {r.get('instruments')} instrument)",
                            ["engine", "version", "quotes/s", *extra, "skipped"], rows))
    if r.get("ratios"):
        sec.tables.append(Table("Ratios (x; run = the engines' event loops, wall = end to end incl. data conversion)",
                                ["comparison", "run quotes/s ratio", "wall quotes/s ratio"],
                                [[x["name"], x["ratio"], x.get("wall_ratio")] for x in r["ratios"]]))
    if "ema_cross_flips" in r:
        flips = ", ".join(f"{k} {v:,}" for k, v in r["ema_cross_flips"].items())
        sec.note = "; ".join(x for x in [sec.note, (f"EMA-cross decisions (flips): {flips}: "
                                         f"{'identical' if r.get('ema_cross_flips_agree') else 'DIFFER'}")] if x)
    ran = [(k, v["quotes_per_s"]) for k, v in engines.items() if v.get("quotes_per_s")]
    if ran:
        labels = [k.replace("_", "\n", 1).replace("_", " ") for k, _ in ran]  # "nautilus\nema cross"
        sec.charts.append(Chart("Quotes/s by engine (event loop)", "", "quotes/s",
                                [Series("quotes/s", labels, [v for _, v in ran])], kind="bar", log_y=True,
                                categorical=True))


# -------------------------------------------------------------------------------------- markdown


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01 or a == 0:
            return f"{v:.2f}"
        return f"{v:.2g}"
    return str(v)


def _verdict(t: dict[str, Any]) -> str:
    if t.get("met") is None:
        return f"not measured ({t['why']})" if t.get("why") else "not measured"
    return "met" if t["met"] else "NOT met"


def _md_table(t: Table) -> str:
    lines = [f"**{t.title}**", "", "| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(fmt(c).replace("|", "\\|") for c in row) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def _machine_lines(m: dict[str, Any]) -> list[str]:
    vec = m.get("vector_flags", {})
    vec_s = ", ".join(k for k in ("avx2", "avx512", "neon") if vec.get(k)) or "none of avx2/avx512/neon"
    build = ", ".join(f"{k} {v}" for k, v in m.get("core_build", {}).items())
    return [
        (f"- CPU: {m.get('cpu_model')} ({m.get('arch')}{', ' + m['cpu_id'] if m.get('cpu_id') else ''}), "
         f"{m.get('physical_cores') or '?'} physical / "
        f"{m.get('logical_cores')} logical cores ({m.get('usable_cores')} usable); vector: {vec_s}"),
        f"- memory: {m.get('memory_gb')} GB; OS: {m.get('os')}",
        (f"- Python {m.get('python')}, numpy {m.get('numpy')}, torch {m.get('torch') or 'not installed'}; "
        f"CUDA device: {m.get('cuda_device') or 'none'}"),
        f"- nextick core: {build}",
        f"- git commit: {m.get('git_commit') or 'unknown'}",
    ]


def render_markdown(results: dict[str, Any], sections: list[Section]) -> str:
    out = [f"# nextick bench{' (quick)' if results.get('quick') else ''}", "",
           f"Run {results.get('started')}, {fmt(results.get('wall_s'))} s. Figures from this run only.", "",
           "## Machine", "", *_machine_lines(results.get("machine", {})), "", "## Targets", "",
           "| target | limit | value | verdict |", "|---|---|---|---|"]
    for t in targets(results):
        value = f"{fmt(t['value'])} {t['unit']}" if t.get("value") is not None else "-"
        out.append(f"| {t['name']} | {t['target']} | {value} | {_verdict(t)} |")
    out.append("")
    for sec in sections:
        out += [f"## {sec.title}", ""]
        status = {"skipped": "**Skipped**: ", "error": "**Error**: "}.get(sec.status, "")
        if sec.note:
            out += [f"{status}{sec.note}", ""]
        for t in sec.tables:
            out += [_md_table(t)]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------- html


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:600;padding:.3em 0}
.met{color:#137333;font-weight:600}.notmet{color:#b3261e;font-weight:600}.na{color:#777}
.note{color:#555;font-size:.9em}.skipped{color:#8a6d00}.error{color:#b3261e}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{border:1px solid #eee;padding:.3em}
details{margin:.5em 0}
"""


def render_html(results: dict[str, Any], sections: list[Section]) -> str:
    e = html.escape
    plot = _ChartRenderer()
    body = [f"<h1>nextick bench{' (quick)' if results.get('quick') else ''}</h1>",
            (f"<p class='note'>Run {e(str(results.get('started')))}, {fmt(results.get('wall_s'))} s. "
            "Every figure comes from this run.</p>"), "<h2>Machine</h2><ul>"]
    body += [f"<li>{e(line[2:])}</li>" for line in _machine_lines(results.get("machine", {}))]
    body += ["</ul>", "<h2>Targets</h2>", "<table><tr><th>target</th><th>limit</th><th>value</th><th>verdict</th></tr>"]
    for t in targets(results):
        cls = "na" if t.get("met") is None else "met" if t["met"] else "notmet"
        value = f"{fmt(t['value'])} {t['unit']}" if t.get("value") is not None else "-"
        body.append(f"<tr><td>{e(t['name'])}</td><td>{e(t['target'])}</td><td>{e(value)}</td>"
                    f"<td class='{cls}'>{e(_verdict(t))}</td></tr>")
    body.append("</table>")
    for sec in sections:
        body.append(f"<h2 id='{e(sec.name)}'>{e(sec.title)}</h2>")
        if sec.note:
            cls = {"skipped": "skipped", "error": "error"}.get(sec.status, "note")
            prefix = {"skipped": "Skipped: ", "error": "Error: "}.get(sec.status, "")
            body.append(f"<p class='{cls}'>{e(prefix + sec.note)}</p>")
        if sec.charts:
            body.append("<div class='charts'>" + "".join(f"<div class='chart'>{plot(c)}</div>" for c in sec.charts) + "</div>")
        for t in sec.tables:
            table = _html_table(t)
            body.append(f"<details><summary>{e(t.title)}</summary>{table}</details>" if len(t.rows) > 30 else table)
    raw = html.escape(json.dumps(results, indent=1))
    body.append(f"<h2>Raw results</h2><details><summary>results.json</summary><pre>{raw}</pre></details>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>nextick bench</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.headers)
    rows = "".join("<tr>" + "".join(f"<td>{e(fmt(c))}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<table><caption>{e(t.title)}</caption><tr>{head}</tr>{rows}</table>"


class _ChartRenderer:
    """plotly (its script inlined once) when importable, else the SVG below."""

    def __init__(self) -> None:
        try:
            import plotly.graph_objects as go
        except ImportError:
            go = None
        self.go = go
        self.script_done = False

    def __call__(self, c: Chart) -> str:
        if self.go is None:
            return svg_chart(c)
        go = self.go
        fig = go.Figure()
        for s in c.series:
            x = [str(v).replace("\n", "<br>") for v in s.x] if c.categorical else s.x
            if c.kind == "bar":
                fig.add_trace(go.Bar(name=s.name, x=x, y=s.y))
            else:
                fig.add_trace(go.Scatter(name=s.name, x=x, y=s.y, mode="lines+markers",
                                         line={"dash": "dash"} if s.dash else {}))
        fig.update_layout(title=c.title, width=520, height=360, margin={"l": 60, "r": 20, "t": 50, "b": 50},
                          xaxis_title=c.x_label, yaxis_title=c.y_label)
        if c.log_x and not c.categorical:
            fig.update_xaxes(type="log")
        if c.log_y:
            fig.update_yaxes(type="log")
        if c.hline:
            fig.add_hline(y=c.hline[0], line_dash="dot", annotation_text=c.hline[1])
        out = fig.to_html(full_html=False, include_plotlyjs="inline" if not self.script_done else False)
        self.script_done = True
        return out


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def svg_chart(c: Chart, width: int = 520, height: int = 340) -> str:
    """A line or bar chart as inline SVG: optional log axes, categorical x, a legend underneath."""
    e = html.escape
    ml, mr, mt, mb = 64, 16, 34, 46
    n_leg = len(c.series) if c.kind == "line" else 0
    leg_h = 16 * ((n_leg + 1) // 2)
    H = height + leg_h
    pw, ph = width - ml - mr, height - mt - mb
    ys = [y for s in c.series for y in s.y if isinstance(y, (int, float)) and (y > 0 or not c.log_y)]
    if ys and c.hline:
        ys.append(c.hline[0])
    if not ys:
        return f"<svg width='{width}' height='60'><text x='10' y='30'>{e(c.title)}: no data</text></svg>"
    cats: list[str] = []
    if c.categorical:
        for s in c.series:
            for x in s.x:
                if str(x) not in cats:
                    cats.append(str(x))

    def scale(lo: float, hi: float, log: bool):
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi - lo < 1e-12:
            lo, hi = lo - (1 if log else abs(lo) * 0.1 + 1), hi + (1 if log else abs(hi) * 0.1 + 1)
        pad = (hi - lo) * 0.06
        lo, hi = lo - pad, hi + pad
        if not log and lo < 0 <= min(ys):
            lo = 0.0
        return lo, hi

    y_lo, y_hi = scale(min(ys), max(ys), c.log_y)
    if c.kind == "bar" and not c.log_y:
        y_lo = 0.0

    def Y(v: float) -> float:
        t = math.log10(v) if c.log_y else v
        return mt + ph - (t - y_lo) / (y_hi - y_lo) * ph

    if c.categorical:
        def X(v: Any) -> float:
            return ml + (cats.index(str(v)) + 0.5) / len(cats) * pw
    else:
        xs = [x for s in c.series for x in s.x if not c.log_x or x > 0]
        x_lo, x_hi = scale(min(xs), max(xs), c.log_x)

        def X(v: Any) -> float:
            t = math.log10(v) if c.log_x else v
            return ml + (t - x_lo) / (x_hi - x_lo) * pw

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{H}' font-family='sans-serif' font-size='11'>",
             f"<text x='{width / 2}' y='16' text-anchor='middle' font-size='13' font-weight='600'>{e(c.title)}</text>",
             f"<rect x='{ml}' y='{mt}' width='{pw}' height='{ph}' fill='none' stroke='#bbb'/>"]
    for v in _ticks(y_lo, y_hi, c.log_y):
        y = Y(v)
        parts.append(f"<line x1='{ml}' x2='{ml + pw}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
                     f"<text x='{ml - 4}' y='{y + 4:.1f}' text-anchor='end'>{e(_tick_label(v))}</text>")
    if c.categorical:
        for cat in cats:  # a label may hold a line break: two lines
            lines = cat.split("\n")
            spans = "".join(f"<tspan x='{X(cat):.1f}' dy='{0 if j == 0 else 12}'>{e(t)}</tspan>" for j, t in enumerate(lines))
            parts.append(f"<text x='{X(cat):.1f}' y='{mt + ph + 14}' text-anchor='middle'>{spans}</text>")
    else:
        data_x = sorted({float(x) for s in c.series for x in s.x if not c.log_x or x > 0})
        for v in data_x if len(data_x) <= 8 else _ticks(x_lo, x_hi, c.log_x):  # few x values: tick each
            x = X(v)
            label = f"{int(v):,}" if v == int(v) and abs(v) < 1e4 else _tick_label(v)
            parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{mt}' y2='{mt + ph}' stroke='#f2f2f2'/>"
                         f"<text x='{x:.1f}' y='{mt + ph + 14}' text-anchor='middle'>{e(label)}</text>")
    parts.append(f"<text x='{ml + pw / 2}' y='{mt + ph + 34}' text-anchor='middle'>{e(c.x_label)}</text>"
                 f"<text transform='translate(14 {mt + ph / 2}) rotate(-90)' text-anchor='middle'>{e(c.y_label)}</text>")
    if c.hline:
        y = Y(c.hline[0])
        parts.append(f"<line x1='{ml}' x2='{ml + pw}' y1='{y:.1f}' y2='{y:.1f}' stroke='#555' stroke-dasharray='2 3'/>"
                     f"<text x='{ml + pw - 4}' y='{y - 4:.1f}' text-anchor='end' fill='#555'>{e(c.hline[1])}</text>")
    base = Y(10 ** y_lo) if c.log_y else Y(max(y_lo, 0.0))
    for i, s in enumerate(c.series):
        col = _COLORS[i % len(_COLORS)]
        pts = [(X(x), Y(y), x, y) for x, y in zip(s.x, s.y)
               if isinstance(y, (int, float)) and (y > 0 or not c.log_y) and (c.categorical or not c.log_x or x > 0)]
        if c.kind == "bar":
            bw = pw / max(len(cats), 1) * 0.6
            for px, py, x, y in pts:
                parts.append(f"<rect x='{px - bw / 2:.1f}' y='{py:.1f}' width='{bw:.1f}' height='{max(base - py, 0):.1f}' "
                             f"fill='{col}'><title>{e(str(x))}: {e(fmt(y))}</title></rect>"
                             f"<text x='{px:.1f}' y='{py - 3:.1f}' text-anchor='middle'>{e(_tick_label(y, 3))}</text>")
            continue
        dash = " stroke-dasharray='5 3'" if s.dash else ""
        if len(pts) > 1:
            d = " ".join(f"{'M' if j == 0 else 'L'}{px:.1f},{py:.1f}" for j, (px, py, _, _) in enumerate(pts))
            parts.append(f"<path d='{d}' fill='none' stroke='{col}' stroke-width='2'{dash}/>")
        for px, py, x, y in pts:
            parts.append(f"<circle cx='{px:.1f}' cy='{py:.1f}' r='3' fill='{col}'><title>{e(s.name)} @ {e(str(x))}: "
                         f"{e(fmt(y))}</title></circle>")
        lx, ly = ml + (i % 2) * (pw / 2), height + 4 + 16 * (i // 2)
        parts.append(f"<line x1='{lx}' x2='{lx + 18}' y1='{ly - 4}' y2='{ly - 4}' stroke='{col}' stroke-width='2'{dash}/>"
                     f"<text x='{lx + 24}' y='{ly}'>{e(s.name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Axis ticks inside [lo, hi] (log10 units when ``log``), returned as data values."""
    if log:
        decades = [10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1) if lo <= k <= hi]
        if len(decades) >= 2:
            return decades
        cand = [m * 10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
        return [v for v in cand if lo <= math.log10(v) <= hi]
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / 5)) if span > 0 else 1
    for m in (1, 2, 5, 10):
        if span / (step * m) <= 6:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _tick_label(v: float, digits: int = 6) -> str:
    a = abs(v)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if a >= scale:
            return f"{v / scale:.{digits}g}{unit}"
    return f"{v:.{digits}g}"
