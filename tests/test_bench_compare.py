"""`make bench`'s regression report: rates where a suite records one, median times otherwise."""

from __future__ import annotations

import json

from bench.compare import compare, main


def run_json(path, benches: dict[str, tuple[float, dict]], cpu: str = "AMD EPYC") -> None:
    path.write_text(json.dumps({
        "machine_info": {"cpu_model": cpu},
        "benchmarks": [{"fullname": k, "stats": {"median": t}, "extra_info": x} for k, (t, x) in benches.items()],
    }))


def test_regressions_and_improvements_beyond_the_threshold(tmp_path, capsys):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    run_json(base, {"a": (1.0, {}), "b": (1.0, {"quotes_per_s": 1e6}), "c": (1.0, {}), "d": (1.0, {}), "gone": (1.0, {})})
    run_json(new, {"a": (1.3, {}), "b": (9.9, {"quotes_per_s": 0.7e6}), "c": (0.5, {}), "d": (1.1, {}), "added": (1.0, {})})
    lines = compare(base, new)
    text = "\n".join(lines)
    assert "REGRESSION  a" in text  # 30% slower by time
    assert "REGRESSION  b" in text  # rate down 30% (its time is not what counts)
    assert "faster      c" in text and "d:" not in text  # 2x faster; 10% is within the threshold
    assert "missing     gone" in text and "new         added" in text
    assert lines[-1].startswith("4 benchmarks compared") and "2 regression(s) and 1 improvement(s)" in lines[-1]
    assert main([str(base), str(new)]) == 0  # a report, never a failure
    assert main([str(tmp_path / "none.json"), str(new)]) == 0
    assert "make bench-baseline" in capsys.readouterr().out


def test_a_different_machine_is_noted(tmp_path):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    run_json(base, {"a": (1.0, {})}, cpu="AMD EPYC")
    run_json(new, {"a": (1.0, {})}, cpu="Intel Xeon")
    assert compare(base, new)[0].startswith("note: baseline machine")
