"""`nextick compare` (engine/compare.py): entries, the JK matrix, sub-periods, the five-way preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.compare import ALLOCATION, FIVE_WAY, jk_matrix, parse_entries, split_days
from engine.metrics import jobson_korkie_memmel

# Six instruments in two sectors over eight sessions at a low quote rate: seconds per run.
SMALL = ["--n-instruments", "6", "--n-sectors", "2", "--sector-correlation", "0.3", "--drift-bps-per-hour=-1,2",
         "--n-sessions", "8", "--quote-rate-hz", "0.2", "--interval", "1s", "--no-progress"]
FIVE = ["compare", "--five-way", "--rebalance-s", "86400", "--lookback", "3", *SMALL]


@settings(max_examples=25, deadline=None)
@given(n_days=st.integers(1, 400), n_blocks=st.integers(1, 400))
def test_split_days_covers_every_day_exactly_once_in_order(n_days, n_blocks):
    if n_blocks > n_days:
        with pytest.raises(ValueError, match="--blocks"):
            split_days(n_days, n_blocks)
        return
    blocks = split_days(n_days, n_blocks)
    assert len(blocks) == n_blocks
    assert np.array_equal(np.concatenate(blocks), np.arange(n_days))
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5), t=st.integers(5, 80))
def test_jk_matrix_is_antisymmetric_in_z_symmetric_in_p(seed, n, t):
    rng = np.random.default_rng(seed)
    daily = rng.normal(0.001, 0.01, (t, n)) + rng.normal(0, 0.01, (t, 1))
    z, p = jk_matrix(daily)
    assert np.array_equal(z, -z.T) and np.array_equal(p, p.T)
    assert np.all(np.diag(z) == 0) and np.all(np.diag(p) == 1)


def test_jk_matrix_matches_engine_metrics_on_a_hand_pair():
    a = np.array([0.01, -0.02, 0.015, 0.003, 0.007, -0.004, 0.012])
    b = np.array([0.002, -0.01, 0.004, 0.001, 0.0, -0.003, 0.005])
    z, p = jk_matrix(np.column_stack([a, b]))
    ref = jobson_korkie_memmel(a, b)
    assert (z[0, 1], p[0, 1]) == (ref.z, ref.p_value)
    assert z[1, 0] == -ref.z


def test_entries_labels_and_params():
    entries = parse_entries(["momentum", "mv=" + ALLOCATION], {"momentum.fast_span": 20, "mv.allocator": "min_variance"})
    assert [(e.label, e.strategy, e.params) for e in entries] == [
        ("momentum", "momentum", {"fast_span": 20}), ("mv", ALLOCATION, {"allocator": "min_variance"})]
    five = parse_entries([], {"index.hold": False}, five_way=True, rebalance_s=86400.0, lookback=10, cap=0.2)
    assert [e.label for e in five] == list(FIVE_WAY)
    assert all(e.params["cap"] == 0.2 and e.params["long_only"] and e.params["lookback"] == 10 for e in five)
    assert five[-1].params["hold"] is False  # --param overrides the preset


@pytest.mark.parametrize("strategies, params, match", [
    ([], {}, "nothing to compare"),
    (["momentum", "momentum"], {}, "label momentum names two"),
    (["momentum"], {"nosuch.fast_span": 3}, "no strategy labelled 'nosuch'"),
    (["momentum"], {"fast_span": 3}, "LABEL.key=value"),
    (["bad label=momentum"], {}, "LABEL=SPEC"),
])
def test_bad_entries_are_refused_by_name(strategies, params, match):
    with pytest.raises(ValueError, match=match):
        parse_entries(strategies, params)


@pytest.mark.parametrize("spec, match", [("momentm", "momentm"), ("nosuch.module:Thing", "nosuch.module:Thing")])
def test_bad_strategy_names_error_before_the_data_is_read(spec, match, capsys, monkeypatch):
    import engine.options

    def no_read(*args, **kwargs):
        raise AssertionError("the data was read before the strategies were checked")

    monkeypatch.setattr(engine.options, "quote_source", no_read)
    assert main(["compare", "--strategy", "momentum", "--strategy", spec, *SMALL]) != 0
    err = capsys.readouterr().err
    assert "--strategy" in err and f"({match})" in err


def test_five_way_runs_deterministically_and_writes_its_outputs(tmp_path: Path, capsys):
    assert main([*FIVE, "--blocks", "3", "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert "Jobson-Korkie" in text and "sub-periods: 3 blocks" in text
    assert main([*FIVE, "--blocks", "3", "--out", str(tmp_path / "b")]) == 0
    doc_a = json.loads((tmp_path / "a" / "compare.json").read_text())
    doc_b = json.loads((tmp_path / "b" / "compare.json").read_text())
    assert doc_a == doc_b  # bit for bit: fills hashes, z, p, sub-periods
    assert doc_a["format"] == "nextick.compare" and [s["label"] for s in doc_a["strategies"]] == list(FIVE_WAY)
    assert doc_a["execution"]["fee_bps"] == 10.0
    # Every strategy traded, each in its own labelled folder for `nextick report`.
    assert all(s["metrics"]["fill_count"] > 0 for s in doc_a["strategies"])
    for label in FIVE_WAY:
        assert json.loads((tmp_path / "a" / label / "summary.json").read_text())["strategy"] == label
    z = np.array(doc_a["jk"]["z"], dtype=float)
    assert np.allclose(z, -z.T, equal_nan=True)
    daily = pq.read_table(tmp_path / "a" / "compare.parquet")
    assert daily.column_names == ["day", *FIVE_WAY] and daily.num_rows == len(doc_a["days"])
    # The sub-periods cover the days once, in order.
    blocks = doc_a["subperiods"]
    assert sum(b["n_days"] for b in blocks) == len(doc_a["days"])
    assert blocks[0]["first_day"] == doc_a["days"][0] and blocks[-1]["last_day"] == doc_a["days"][-1]
    # `nextick report` draws the comparison and every labelled run.
    pytest.importorskip("plotly", reason="nextick report needs plotly: pip install 'nextick[report]'")
    assert main(["report", str(tmp_path / "a")]) == 0
    page = (tmp_path / "a" / "report.html").read_text()
    assert 'id="compare-jk"' in page and 'id="compare-subperiods"' in page
    assert all(f'id="bt-{label}-equity"' in page for label in FIVE_WAY)
    # The block returns compound to the whole.
    for label in FIVE_WAY:
        whole = np.prod(1.0 + daily.column(label).to_numpy()) - 1.0
        parts = np.prod([1.0 + b["by_strategy"][label]["total_return"] for b in blocks]) - 1.0
        assert parts == pytest.approx(whole, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("kwargs", [dict(poll_s=-1.0), dict(poll_s=float("nan")), dict(rebalance_s=600.0, poll_s=3600.0)])
def test_allocation_poll_s_out_of_range_is_refused_by_name(kwargs):
    from strategies.allocation.rebalance import Allocation

    with pytest.raises(ValueError, match="poll_s"):
        Allocation(**kwargs)
