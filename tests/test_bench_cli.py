"""``nextick bench`` (bench/run.py, bench/report.py): the quick smoke run writes the three files, every
suite is there (figures or the reason it was skipped), the machine is described and the summary names
every project target. Speed is reported, never asserted."""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET

import pytest

from bench.report import (
    KNOWN_TARGETS,
    Chart,
    Series,
    machine,
    render_markdown,
    svg_chart,
    targets,
)
from bench.run import PEERS_HINT, SUITES

# what each suite's results hold when it ran
RESULT_KEYS = {"ssm_step": "batches", "ssm_precision": "fp32", "ssm_vs_transformer": "rows", "e2e_loopback": "runs", "backtest": "rows", "compiled": "rows",
               "peers": "engines"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`nextick bench --quick`, as a user runs it (the CLI prints what run_bench prints)."""
    import contextlib
    import io

    from engine.cli import main

    out = tmp_path_factory.mktemp("bench")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["bench", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    return out, results, buf.getvalue().splitlines()


def test_quick_run_writes_the_three_files(quick_run):
    out, results, lines = quick_run
    for name in ("results.json", "summary.md", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text())["suites"].keys() == results["suites"].keys()
    assert any(line.startswith("[ssm_step]") for line in lines)


def test_every_suite_has_results_or_a_skip_reason(quick_run):
    out, _, _ = quick_run
    data = json.loads((out / "results.json").read_text())
    assert data["quick"] is True
    assert set(data["suites"]) == set(SUITES) == set(RESULT_KEYS)
    for name, res in data["suites"].items():
        assert "error" not in res, f"{name}: {res.get('traceback', res['error'])}"
        assert isinstance(res["wall_s"], float)
        if "skipped" in res:
            assert isinstance(res["skipped"], str) and res["skipped"], name
        else:
            assert res[RESULT_KEYS[name]], name
    peers = data["suites"]["peers"]
    if "skipped" in peers and "cannot be imported" not in peers["skipped"]:
        assert PEERS_HINT in peers["skipped"]


def test_suite_figures(quick_run):
    _, results, _ = quick_run
    s = results["suites"]
    ssm = s["ssm_step"]
    assert [b["batch"] for b in ssm["batches"]] == [1, 16, 256, 1024, 10_000]
    assert ssm["latency_batch1_us"]["cpp"]["p50"] > 0 and ssm["batches"][0]["cpp_steps_per_s"] > 0
    assert "skipped" in ssm["cuda"] or ssm["cuda"]["batches"]
    assert "onnxruntime" in ssm["backends"]
    ort = ssm["onnxruntime"]  # runs wherever onnxruntime is installed (the [test] extra has it)
    assert ("skipped" in ort) == (importlib.util.find_spec("onnxruntime") is None)
    if "skipped" not in ort:
        assert [o["batch"] for o in ort["batches"]] == [1, 16, 256, 1024, 10_000] and "CPUExecutionProvider" in ort["providers"]
        assert ssm["latency_batch1_us"]["onnxruntime"]["p50"] > 0 and all(b["ort_steps_per_s"] > 0 for b in ssm["batches"])
    assert {t["name"] for t in ssm["targets"]} == {t[1] for t in KNOWN_TARGETS if t[0] == "ssm_step"}
    at_1024 = next(t for t in ssm["targets"] if "1,024" in t["name"])
    assert at_1024["value"] == ssm["batches"][3]["cpp_steps_per_s"] and isinstance(at_1024["met"], bool)
    if "skipped" not in s["ssm_vs_transformer"]:
        tr = s["ssm_vs_transformer"]
        assert tr["transformer"]["kv_cache_parity_max_abs_err"] < 1e-4
        assert {r["window"] for r in tr["rows"]} == set(tr["windows"])
    e2e = s["e2e_loopback"]
    assert e2e["runs"][0]["quotes_in"] > 0 and e2e["runs"][0]["engine_errors"] == 0
    assert "recv_to_decision" in e2e["runs"][0]["latency_us"]
    kinds = {r["strategy"] for r in s["backtest"]["rows"]}
    assert kinds == {"momentum", "ema_cross", "ssm_threshold"}
    comp = s["compiled"]
    assert ("skipped" in comp) == (importlib.util.find_spec("numba") is None)
    if "skipped" not in comp:
        assert [r["instruments"] for r in comp["rows"]] == [1, 100]
        assert all(r["fills"] > 0 and r["fills_identical"] and r["uncompiled_fills_identical"] for r in comp["rows"])
        assert {t["name"] for t in comp["targets"]} == {t[1] for t in KNOWN_TARGETS if t[0] == "compiled"}
        engines = s["peers"]["engines"]  # the compiled twin beside the built-in, peers installed or not
        assert engines["nextick_compiled_ema_cross"]["orders"] == engines["nextick_ema_cross"]["orders"] > 0


def test_machine_description(quick_run):
    out, _, _ = quick_run
    m = json.loads((out / "results.json").read_text())["machine"]
    for key in ("cpu_model", "logical_cores", "physical_cores", "vector_flags", "memory_gb", "os", "python", "numpy",
                "core_build", "torch", "cuda_device", "git_commit"):
        assert key in m, key
    assert m["logical_cores"] >= 1 and m["python"] and m["numpy"]
    assert {"avx2", "avx512", "neon"} <= set(m["vector_flags"])
    assert "simd" in m["core_build"] or "error" in m["core_build"]


def test_summary_and_html_name_every_target(quick_run):
    out, results, _ = quick_run
    md = (out / "summary.md").read_text()
    page = (out / "report.html").read_text()
    for _, name, op, limit, unit in KNOWN_TARGETS:
        assert name in md and f"{op} {limit:g} {unit}" in md
        assert name.replace(">", "&gt;") in page
    for t in targets(results):
        assert t["met"] is None or isinstance(t["met"], bool)
    assert "<svg" in page or "plotly" in page.lower()
    assert "## Machine" in md and "## Targets" in md


def test_targets_not_measured_when_the_suite_did_not_run():
    results = {"started": "now", "wall_s": 1.0, "quick": True, "machine": machine(),
               "suites": {"ssm_step": {"skipped": "no kernel here", "wall_s": 0.0}}}
    md = render_markdown(results, [])
    assert "not measured (skipped: no kernel here)" in md and "not measured (suite not run)" in md


def test_svg_chart_is_well_formed():
    line = Chart("t", "x", "y", [Series("a", [1, 10, 100], [1.0, 5.0, None]), Series("b", [1, 10, 100], [2.0, 2.0, 2.0], dash=True)],
                 log_x=True, log_y=True)
    bar = Chart("b", "", "v", [Series("v", ["a\nb", "c"], [3.0, 0.5])], kind="bar", categorical=True)
    for c in (line, bar):
        root = ET.fromstring(svg_chart(c))
        assert root.tag.endswith("svg")


def test_the_help_lists_every_suite(capsys):
    from engine.cli import _build_parser

    with pytest.raises(SystemExit):
        _build_parser().parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in SUITES:
        assert name in text, f"`nextick bench --help` does not list the {name} suite"
