"""Bad-input rules: each rule under both actions, first-rule-wins counting, state across chunks,
and a property test against a row-by-row reference of the rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.quote import QUOTE_DTYPE
from engine.domain.source import SourceStats
from engine.domain.validate import (
    RULES,
    BadInputError,
    QuoteValidator,
    ValidationPolicy,
)

NOW_NS = 1_700_000_000 * 10**9
SOURCE = "feed_2024.csv"


def quotes(rows: list[tuple]) -> np.ndarray:
    """rows of (ts_recv, bid_px, ask_px[, bid_sz, ask_sz[, instrument]])."""
    q = np.zeros(len(rows), dtype=QUOTE_DTYPE)
    for i, r in enumerate(rows):
        ts, bid, ask = r[:3]
        bsz, asz = r[3:5] if len(r) >= 5 else (1.0, 1.0)
        inst = r[5] if len(r) >= 6 else 0
        q[i] = (ts, ts, bid, ask, bsz, asz, 0, inst, 0)
    return q


def validator(policy: str = "quarantine", now_ns: int = NOW_NS, tolerance_ns: int = 0) -> QuoteValidator:
    pol = ValidationPolicy.parse(policy, future_tolerance_ns=tolerance_ns)
    return QuoteValidator(pol, SourceStats(source=SOURCE), SOURCE, now_ns=now_ns)


def lines_for(n: int, first: int = 2) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.int64)


T = NOW_NS - 10**12  # a time comfortably in the past

# rule -> (chunk whose row index 2 is the only bad row, the field the error must name)
BAD_CASES = {
    "nan": ([(T, 1.0, 1.1), (T + 1, 1.0, 1.1), (T + 2, 1.0, 1.1, 1.0, math.nan), (T + 3, 1.0, 1.1)], "ask_sz"),
    "negative": ([(T, 1.0, 1.1), (T + 1, 1.0, 1.1), (T + 2, -1.0, 1.1), (T + 3, 1.0, 1.1)], "bid_px"),
    "crossed": ([(T, 1.0, 1.1), (T + 1, 1.0, 1.1), (T + 2, 1.2, 1.1), (T + 3, 1.0, 1.1)], "bid_px"),
    "locked": ([(T, 1.0, 1.1), (T + 1, 1.0, 1.1), (T + 2, 1.1, 1.1), (T + 3, 1.0, 1.1)], "bid_px"),
    "future": ([(T, 1.0, 1.1), (T + 1, 1.0, 1.1), (NOW_NS + 1, 1.0, 1.1), (T + 3, 1.0, 1.1)], "ts_recv"),
    "out_of_order": ([(T, 1.0, 1.1), (T + 5, 1.0, 1.1), (T + 4, 1.0, 1.2), (T + 6, 1.0, 1.1)], "ts_recv"),
    "duplicate": ([(T, 1.0, 1.1), (T + 1, 1.0, 1.1), (T + 1, 1.0, 1.1), (T + 3, 1.0, 1.1)], "ts_recv"),
}


@pytest.mark.parametrize("rule", list(BAD_CASES))
def test_rule_quarantine_removes_and_counts(rule: str) -> None:
    rows, _ = BAD_CASES[rule]
    v = validator("quarantine")
    q = quotes(rows)
    kept = v.check(q, lines_for(len(q)))
    assert len(kept) == 3
    assert v.stats.quarantined == {rule: 1}
    np.testing.assert_array_equal(kept, q[[0, 1, 3]])


@pytest.mark.parametrize("rule", list(BAD_CASES))
def test_rule_reject_names_file_line_field(rule: str) -> None:
    rows, field = BAD_CASES[rule]
    v = validator(f"{rule}=reject")
    q = quotes(rows)
    with pytest.raises(BadInputError) as ei:
        v.check(q, lines_for(len(q), first=40))  # row 2 is line 42
    err = ei.value
    assert (err.rule, err.line, err.field, err.source) == (rule, 42, field, SOURCE)
    msg = str(err)
    assert f"{SOURCE}:42" in msg and field in msg and rule in msg
    assert "quarantine" in msg  # says what to do next
    # The rows before the offending one were validated and handed back on the error.
    np.testing.assert_array_equal(err.kept, q[:2])


@pytest.mark.parametrize("rule", ["malformed", "unknown_symbol"])
def test_reader_rules_reject_or_count(rule: str) -> None:
    v = validator("quarantine")
    v.reject_or_count(rule, 3, 7, "bid", "abc")
    v.reject_or_count(rule, 0, None, "bid", "abc")  # nothing to count, nothing raised
    assert v.stats.quarantined == {rule: 3}
    v = validator(f"{rule}=reject")
    with pytest.raises(BadInputError, match=rf"{SOURCE}:7: field 'bid' = 'abc' breaks rule '{rule}'"):
        v.reject_or_count(rule, 1, 7, "bid", "abc")


def test_reject_raises_at_first_offending_row_across_rules() -> None:
    # Row 1 is quarantined (locked), row 2 crossed and row 3 NaN both reject: the error is at row 2.
    v = validator("reject,locked=quarantine")
    q = quotes([(T, 1.0, 1.1), (T + 1, 1.1, 1.1), (T + 2, 1.2, 1.1), (T + 3, math.nan, 1.1)])
    with pytest.raises(BadInputError) as ei:
        v.check(q, lines_for(4))
    assert ei.value.rule == "crossed" and ei.value.line == 4
    assert v.stats.quarantined == {"locked": 1}  # rows before the error are accounted for


def test_nan_error_names_the_nan_field() -> None:
    v = validator("reject")
    q = quotes([(T, 1.0, math.nan)])
    with pytest.raises(BadInputError) as ei:
        v.check(q, lines_for(1))
    assert ei.value.field == "ask_px"


def test_infinite_counts_as_nan() -> None:
    v = validator()
    v.check(quotes([(T, 1.0, math.inf), (T + 1, 1.0, 1.1, math.inf, 1.0)]), lines_for(2))
    assert v.stats.quarantined == {"nan": 2}


def test_zero_size_is_valid_zero_price_is_not() -> None:
    v = validator()
    kept = v.check(quotes([(T, 1.0, 1.1, 0.0, 0.0), (T + 1, 0.0, 1.1)]), lines_for(2))
    assert len(kept) == 1 and v.stats.quarantined == {"negative": 1}


def test_a_missing_side_is_a_one_sided_quote_not_bad_input() -> None:
    v = validator()
    rows = [
        (T, 0.0, 1.1, 0.0, 5.0),  # no bid
        (T + 1, 1.0, 0.0, 5.0, 0.0),  # no ask
        (T + 2, 0.0, 0.0, 0.0, 0.0),  # no quote at all
        (T + 3, 0.0, 1.1, 2.0, 5.0),  # a zero bid with a size: bad
    ]
    kept = v.check(quotes(rows), lines_for(4))
    assert kept["ts_recv"].tolist() == [T, T + 1]
    assert v.stats.quarantined == {"negative": 2}
    # Scalar (small batch) and vectorized paths agree.
    w = validator()
    assert [len(w.check(quotes([r]), lines_for(1))) for r in rows] == [1, 1, 0, 0]
    with pytest.raises(BadInputError, match="both sides missing"):
        validator("reject").check(quotes(rows[2:3]), lines_for(1))


def test_first_rule_wins() -> None:
    v = validator(tolerance_ns=0)
    q = quotes(
        [
            (T, math.nan, -1.0),  # nan and negative -> nan
            (T, -2.0, -3.0),  # negative and crossed -> negative
            (NOW_NS + 5, 1.2, 1.1),  # crossed and future -> crossed
            (NOW_NS + 5, 1.1, 1.1),  # locked and future -> locked
            (T + 10, 1.0, 1.1),  # kept
            (NOW_NS + 5, 1.0, 1.1),  # future (and would raise the running max if it counted)
            (T + 9, 1.0, 1.1),  # out of order against T + 10 only
            (T + 10, 1.0, 1.1),  # duplicate of the kept row at T + 10
        ]
    )
    kept = v.check(q, lines_for(len(q)))
    assert list(kept["ts_recv"]) == [T + 10]
    assert v.stats.quarantined == {
        "nan": 1,
        "negative": 1,
        "crossed": 1,
        "locked": 1,
        "future": 1,
        "out_of_order": 1,
        "duplicate": 1,
    }
    assert v.stats.quarantined_total == len(q) - len(kept)


def test_out_of_order_compares_with_kept_rows_only() -> None:
    # 10, 5 (out), 7 (out: still below 10), 12 kept; a quarantined row never moves the bar.
    v = validator()
    kept = v.check(quotes([(T + 10, 1, 2), (T + 5, 1, 2), (T + 7, 1, 2), (T + 12, 1, 2)]), lines_for(4))
    assert list(kept["ts_recv"] - T) == [10, 12]
    assert v.stats.quarantined == {"out_of_order": 2}


def test_duplicate_is_against_the_instruments_last_kept_row() -> None:
    v = validator()
    q = quotes(
        [
            (T, 1.0, 1.1, 1, 1, 0),
            (T, 2.0, 2.1, 1, 1, 1),  # another instrument in between: still a duplicate below
            (T, 1.0, 1.1, 1, 1, 0),  # duplicate of instrument 0's last kept row
            (T, 1.0, 1.2, 1, 1, 0),  # different ask: kept
            (T, 1.0, 1.1, 1, 1, 0),  # equals an older row, not the last kept one: kept
            (T, 1.0, 1.1, 1, 2, 0),  # different size: kept
            (T + 1, 1.0, 1.1, 1, 2, 0),  # same values, later time: kept
        ]
    )
    kept = v.check(q, lines_for(len(q)))
    assert len(kept) == 6 and v.stats.quarantined == {"duplicate": 1}
    np.testing.assert_array_equal(kept, np.delete(q, 2))


def test_state_spans_chunks() -> None:
    v = validator()
    c1 = quotes([(T, 1.0, 1.1, 1, 1, 0), (T + 10, 1.0, 1.1, 1, 1, 0), (T + 10, 2.0, 2.1, 1, 1, 1)])
    c2 = quotes(
        [
            (T + 10, 1.0, 1.1, 1, 1, 0),  # duplicate of chunk 1's last row of instrument 0
            (T + 10, 2.0, 2.1, 1, 1, 1),  # duplicate of instrument 1
            (T + 9, 3.0, 3.1, 1, 1, 2),  # out of order against chunk 1
            (T + 10, 2.0, 2.2, 1, 1, 1),  # new values at the same time: kept
        ]
    )
    c3 = quotes([(T + 10, 2.0, 2.2, 1, 1, 1), (T + 11, 1.0, 1.1, 1, 1, 0)])  # dup of c2's last row
    out = [v.check(c, lines_for(len(c))) for c in (c1, c2, c3)]
    assert [len(o) for o in out] == [3, 1, 1]
    assert v.stats.quarantined == {"duplicate": 3, "out_of_order": 1}


def test_reject_out_of_order_across_chunk_boundary_names_line() -> None:
    v = validator("out_of_order=reject")
    v.check(quotes([(T + 10, 1, 2)]), np.array([2]))
    with pytest.raises(BadInputError) as ei:
        v.check(quotes([(T + 11, 1, 2), (T + 3, 1, 2)]), np.array([3, 4]))
    assert ei.value.line == 4 and ei.value.field == "ts_recv"
    assert str(T + 11) in str(ei.value)  # says what it was compared with


def test_future_uses_tolerance() -> None:
    v = validator(now_ns=NOW_NS, tolerance_ns=10**9)
    kept = v.check(quotes([(NOW_NS + 10**9, 1, 2), (NOW_NS + 10**9 + 1, 1, 2)]), lines_for(2))
    assert len(kept) == 1 and v.stats.quarantined == {"future": 1}


def test_default_now_is_wall_clock() -> None:
    pol = ValidationPolicy()
    v = QuoteValidator(pol, SourceStats(), "x")
    kept = v.check(quotes([(T, 1, 2), (4_000_000_000 * 10**9, 1, 2)]), lines_for(2))
    assert len(kept) == 1


def test_check_returns_a_new_array() -> None:
    v = validator()
    q = quotes([(T, 1.0, 1.1)])
    kept = v.check(q, lines_for(1))
    kept["bid_px"] = 0.5
    assert q["bid_px"][0] == 1.0


def test_empty_chunk() -> None:
    v = validator()
    assert len(v.check(np.zeros(0, QUOTE_DTYPE), np.zeros(0, np.int64))) == 0


# -- policy parsing -------------------------------------------------------------------------------


def test_policy_default_quarantines_everything() -> None:
    pol = ValidationPolicy()
    assert all(pol.action(r) == "quarantine" for r in RULES)


def test_policy_parse_forms() -> None:
    pol = ValidationPolicy.parse("crossed=reject,locked=quarantine")
    assert pol.action("crossed") == "reject" and pol.action("locked") == "quarantine"
    assert pol.action("nan") == "quarantine"
    assert all(ValidationPolicy.parse("reject").action(r) == "reject" for r in RULES)
    assert all(ValidationPolicy.parse("quarantine").action(r) == "quarantine" for r in RULES)
    mixed = ValidationPolicy.parse("reject, duplicate=quarantine")
    assert mixed.action("duplicate") == "quarantine" and mixed.action("future") == "reject"
    assert ValidationPolicy.parse("all=reject").rejects("malformed")
    assert ValidationPolicy.parse("").action("crossed") == "quarantine"


@pytest.mark.parametrize(
    "text, match",
    [
        ("crosed=reject", r"unknown validation rule 'crosed'; valid rules: malformed, unknown_symbol"),
        ("crossed=drop", r"unknown action 'drop' for rule 'crossed'; use 'reject' or 'quarantine'"),
        ("ignore", r"unknown action 'ignore'"),
    ],
)
def test_policy_parse_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ValidationPolicy.parse(text)


def test_policy_struct_checks_rules() -> None:
    with pytest.raises(ValueError, match="unknown validation rule"):
        ValidationPolicy(actions={"bogus": "reject"})
    assert ValidationPolicy(actions={"crossed": "reject"}).action("nan") == "quarantine"


# -- property: the vectorized validator equals the row-by-row rules ------------------------------


def reference(rows: list[tuple], future_limit_ns: int) -> tuple[list[int], dict[str, int]]:
    """Row-by-row definition of the rules: indices kept and counts per rule."""
    kept: list[int] = []
    counts: dict[str, int] = {}
    last_ts = -(2**63)
    last_by_inst: dict[int, tuple] = {}
    for i, (ts, bid, ask, bsz, asz, inst) in enumerate(rows):
        no_bid, no_ask = bid == 0 and bsz == 0, ask == 0 and asz == 0  # a missing side
        if not all(math.isfinite(x) for x in (bid, ask, bsz, asz)):
            rule = "nan"
        elif min(bid, ask, bsz, asz) < 0 or (bid == 0 and not no_bid) or (ask == 0 and not no_ask) or (no_bid and no_ask):
            rule = "negative"
        elif not (no_bid or no_ask) and bid > ask:
            rule = "crossed"
        elif not (no_bid or no_ask) and bid == ask:
            rule = "locked"
        elif ts > future_limit_ns:
            rule = "future"
        elif ts < last_ts:
            rule = "out_of_order"
        elif last_by_inst.get(inst) == (ts, bid, ask, bsz, asz):
            rule = "duplicate"
        else:
            kept.append(i)
            last_ts = ts
            last_by_inst[inst] = (ts, bid, ask, bsz, asz)
            continue
        counts[rule] = counts.get(rule, 0) + 1
    return kept, counts


prices = st.sampled_from([1.0, 1.0, 1.5, 2.0, 2.0, 0.0, -1.0, math.nan, math.inf])
sizes = st.sampled_from([0.0, 1.0, 1.0, 2.0, -1.0, math.nan])
row = st.tuples(st.integers(0, 12), prices, prices, sizes, sizes, st.integers(0, 2))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(row, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=4))
def test_property_matches_reference_across_any_chunking(rows: list[tuple], cuts: list[int]) -> None:
    future_limit = 10  # timestamps 11 and 12 are in the future
    v = QuoteValidator(ValidationPolicy(future_tolerance_ns=0), SourceStats(), "p", now_ns=future_limit)
    q = quotes([r for r in rows])
    lines = lines_for(len(q))
    bounds = sorted({0, len(q), *(min(c, len(q)) for c in cuts)})
    out = [v.check(q[a:b], lines[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    kept = np.concatenate(out) if out else np.zeros(0, QUOTE_DTYPE)

    want_idx, want_counts = reference(rows, future_limit)
    np.testing.assert_array_equal(kept, q[want_idx])
    assert v.stats.quarantined == want_counts
    # The invariants the engine relies on.
    assert len(kept) + v.stats.quarantined_total == len(rows)
    assert (np.diff(kept["ts_recv"]) >= 0).all()
    two = (kept["bid_px"] > 0) & (kept["ask_px"] > 0)
    assert (kept["bid_px"][two] < kept["ask_px"][two]).all()
    one = ~two  # one-sided: exactly one side missing, with price and size 0
    assert ((kept["bid_px"][one] == 0) & (kept["bid_sz"][one] == 0) ^ (kept["ask_px"][one] == 0) & (kept["ask_sz"][one] == 0)).all()
    for f in ("bid_px", "ask_px", "bid_sz", "ask_sz"):
        assert np.isfinite(kept[f]).all()
    assert (kept["bid_sz"] >= 0).all() and (kept["ask_sz"] >= 0).all()


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(row, min_size=1, max_size=40), rule=st.sampled_from(RULES[2:]))
def test_property_reject_stops_at_reference_first_offender(rows: list[tuple], rule: str) -> None:
    future_limit = 10
    pol = ValidationPolicy.parse(f"{rule}=reject", future_tolerance_ns=0)
    v = QuoteValidator(pol, SourceStats(), "p", now_ns=future_limit)
    q = quotes(rows)
    # Reference: the first row the reference classifies under `rule`.
    offender = None
    for n in range(1, len(rows) + 1):
        _, counts = reference(rows[:n], future_limit)
        if counts.get(rule):
            offender = n - 1
            break
    if offender is None:
        v.check(q, lines_for(len(q)))
        return
    with pytest.raises(BadInputError) as ei:
        v.check(q, lines_for(len(q)))
    assert ei.value.line == offender + 2 and ei.value.rule == rule
    want_idx, want_counts = reference(rows[:offender], future_limit)
    np.testing.assert_array_equal(ei.value.kept, q[want_idx])
    assert v.stats.quarantined == want_counts
