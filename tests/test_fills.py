"""Fill semantics (DESIGN.md, Execution): next tick of the instrument, after latency, at the far side."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MS, T0, S, Scripted, draw_quote, quotes, reference_fill, reference_order, run, table
from hypothesis import given, settings
from hypothesis import strategies as st


def test_no_fill_on_decision_tick_even_at_same_timestamp():
    # Two ticks of instrument 0 share a timestamp: an order decided on the first must not fill on the
    # second (ts is not > decision time); it fills at the next later tick.
    q = quotes([(T0, 0, 100, 101), (T0, 0, 100.5, 101.5), (T0 + MS, 0, 102, 103)])
    r = run(q, table(1), Scripted({(0, T0): 5.0}))
    assert len(r.fills) == 1
    f = r.fills[0]
    assert f["decision_ts"] == T0 and f["fill_ts"] == T0 + MS
    assert f["px"] == 103 and f["sz"] == 5


def test_fill_waits_for_the_same_instrument():
    # Ticks of other instruments in between never fill instrument 0's order.
    q = quotes([(T0, 0, 100, 101), (T0 + 1, 1, 50, 51), (T0 + 2, 1, 50, 51), (T0 + 3, 0, 99, 100)])
    r = run(q, table(2), Scripted({(0, T0): -2.0}))
    assert len(r.fills) == 1
    assert r.fills[0]["fill_ts"] == T0 + 3 and r.fills[0]["instrument"] == 0
    assert r.fills[0]["px"] == 99 and r.fills[0]["sz"] == -2  # a sell at the bid


@pytest.mark.parametrize("latency_ms", [0, 5, 10])
def test_latency_is_honoured_strictly(latency_ms):
    ts = [T0 + k * 5 * MS for k in range(5)]  # ticks every 5 ms
    q = quotes([(t, 0, 100 + k, 101 + k) for k, t in enumerate(ts)])
    r = run(q, table(1), Scripted({(0, T0): 1.0}), latency_ns=latency_ms * MS)
    f = r.fills[0]
    # the first tick strictly after decision + latency
    expect = next(t for t in ts if t > T0 + latency_ms * MS)
    assert f["fill_ts"] == expect
    assert f["px"] == 101 + ts.index(expect)


def test_fee_bps_fixed_fee_and_slippage():
    q = quotes([(T0, 0, 99, 101), (T0 + S, 0, 100, 102)])
    r = run(q, table(1), Scripted({(0, T0): 10.0}), fee_bps=2.5, fee_per_fill=1.0)
    f = r.fills[0]
    assert f["fee"] == pytest.approx(10 * 102 * 2.5e-4 + 1.0)
    assert f["decision_mid"] == 100.0
    assert f["slippage_bps"] == pytest.approx((102 - 100) / 100 * 1e4)
    # cash pays price and fee; equity marks the position at mid
    assert r.equity[-1] == pytest.approx(1_000_000 - 10 * 102 - f["fee"] + 10 * 101)


def test_size_cap_waits_for_later_ticks():
    q = quotes([(T0, 0, 100, 101, 50, 50)] + [(T0 + k * S, 0, 100, 101, 3, 3) for k in range(1, 6)])
    r = run(q, table(1), Scripted({(0, T0): 10.0}), size_cap=True)
    assert list(r.fills["sz"]) == [3, 3, 3, 1]
    assert len(set(r.fills["order_id"])) == 1
    assert r.final_positions[0] == 10


def test_size_cap_cancel_remainder():
    q = quotes([(T0, 0, 100, 101, 50, 50)] + [(T0 + k * S, 0, 100, 101, 3, 3) for k in range(1, 6)])
    r = run(q, table(1), Scripted({(0, T0): 10.0}), size_cap=True, cancel_remainder=True)
    assert list(r.fills["sz"]) == [3]
    assert r.counters["cancelled_remainder"] == 1
    assert r.final_positions[0] == 3


def test_replacing_target_cancels_working_order_and_same_target_keeps_its_place():
    # Decided at T0 with latency 10 ms; restating the same target at T0+1ms must not restart the
    # latency clock; a different target at T0+2ms replaces it.
    q = quotes([(T0 + k * MS, 0, 100, 101) for k in range(0, 30)])
    keep = run(q, table(1), Scripted({(0, T0): 4.0, (0, T0 + MS): 4.0}), latency_ns=10 * MS)
    assert keep.fills[0]["decision_ts"] == T0 and keep.fills[0]["fill_ts"] == T0 + 11 * MS
    repl = run(q, table(1), Scripted({(0, T0): 4.0, (0, T0 + 2 * MS): -3.0}), latency_ns=10 * MS)
    assert len(repl.fills) == 1
    assert repl.fills[0]["decision_ts"] == T0 + 2 * MS and repl.fills[0]["sz"] == -3
    assert repl.counters["orders_replaced"] == 1


def test_lot_size_rounds_targets_toward_zero():
    q = quotes([(T0, 0, 100, 101), (T0 + S, 0, 100, 101)])
    r = run(q, table(1, lot_size=0.1), Scripted({(0, T0): 0.37}))
    assert r.fills[0]["sz"] == pytest.approx(0.3)


def test_round_trip_trade_pnl_net_of_fees():
    q = quotes([(T0, 0, 100, 101), (T0 + S, 0, 100, 101), (T0 + 2 * S, 0, 110, 111), (T0 + 3 * S, 0, 110, 111)])
    r = run(q, table(1), Scripted({(0, T0): 10.0, (0, T0 + 2 * S): 0.0}), fee_bps=10)
    assert len(r.trades) == 1
    buy_fee, sell_fee = 10 * 101 * 1e-3, 10 * 110 * 1e-3
    assert r.trades[0]["pnl"] == pytest.approx(10 * (110 - 101) - buy_fee - sell_fee)
    assert r.metrics.trade_count == 1 and r.metrics.hit_rate == 1.0


def test_flip_closes_one_trade_and_opens_another():
    q = quotes([(T0 + k * S, 0, 100 + k, 101 + k) for k in range(5)])
    r = run(q, table(1), Scripted({(0, T0): 5.0, (0, T0 + 2 * S): -5.0, (0, T0 + 3 * S): 0.0}))
    # buy 5 at the t1 ask 102, sell 10 at the t3 bid 103 (closes +5, opens -5), buy 5 at the t4 ask 105
    assert list(r.fills["sz"]) == [5, -10, 5]
    assert list(r.trades["pnl"]) == pytest.approx([5 * (103 - 102), -5 * (105 - 103)])


# --- property test against a reference model of the rules -------------------------------------


def reference_fills(rows, script, latency_ns, fee_bps, fee_fixed, size_cap, cancel_rem):
    """The DESIGN.md fill rules written as plainly as possible (one session, no warm-up)."""
    pos: dict[int, int] = {}
    order: dict[int, list] = {}  # i -> [id, decision_ts, active_ts, remaining]
    fills = []
    next_id = 1
    for ts, i, bid, ask, bid_sz, ask_sz in rows:
        o = order.get(i)
        if o and o[3] != 0 and ts > o[2]:
            f = reference_fill(o, bid, ask, bid_sz, ask_sz, fee_bps=fee_bps, fee_fixed=fee_fixed, size_cap=size_cap,
                               cancel_rem=cancel_rem)
            if f:
                lots, px, fee = f
                fills.append((o[0], o[1], ts, px, float(lots), fee, i))
                pos[i] = pos.get(i, 0) + lots
        target = script.get((i, ts))
        if target is not None:
            next_id = reference_order(order, pos, i, target, ts, latency_ns, next_id)
    return fills


@st.composite
def streams(draw):
    n_inst = draw(st.integers(1, 3))
    n = draw(st.integers(1, 60))
    ts = T0 + 3600 * S
    rows, script, seen = [], {}, set()
    for _ in range(n):
        ts += draw(st.integers(0, 3)) * MS
        i = draw(st.integers(0, n_inst - 1))
        if (i, ts) in seen:
            continue
        seen.add((i, ts))
        rows.append(draw_quote(draw, ts, i))
        if draw(st.booleans()):
            script[(i, ts)] = float(draw(st.integers(-6, 6)))
    return n_inst, rows, script


@settings(max_examples=300, deadline=None)
@given(
    streams(),
    st.sampled_from([0, 1 * MS, 2 * MS]),
    st.sampled_from([0.0, 3.0]),
    st.booleans(),
    st.booleans(),
)
def test_fills_match_reference_model(stream, latency_ns, fee_bps, size_cap, cancel_rem):
    n_inst, rows, script = stream
    q = quotes(rows)
    r = run(
        q,
        table(n_inst),
        Scripted(script),
        latency_ns=latency_ns,
        fee_bps=fee_bps,
        fee_per_fill=0.25,
        size_cap=size_cap,
        cancel_remainder=cancel_rem,
    )
    want = reference_fills(rows, script, latency_ns, fee_bps, 0.25, size_cap, cancel_rem)
    got = [
        (int(f["order_id"]), int(f["decision_ts"]), int(f["fill_ts"]), f["px"], f["sz"], f["fee"], int(f["instrument"]))
        for f in r.fills
    ]
    assert got == want
    # and the invariants themselves, independent of the model
    for f in r.fills:
        assert f["fill_ts"] > f["decision_ts"] + latency_ns
    pos = np.zeros(n_inst)
    np.add.at(pos, r.fills["instrument"].astype(int), r.fills["sz"])
    assert np.array_equal(pos, r.final_positions)


# -- one-sided quotes ------------------------------------------------------------------------------------


def test_one_sided_quotes_fill_against_the_side_that_is_there_and_never_mark_or_decide():
    # ask missing at T0+1s: a working buy waits, the mark stays, the strategy is not asked.
    q = quotes([
        (T0, 0, 100, 101),
        (T0 + S, 0, 100.5, 0.0, 10, 0.0),  # no ask
        (T0 + 2 * S, 0, 100, 102),
    ])
    strat = Scripted({(0, T0): 5.0, (0, T0 + S): -5.0})
    r = run(q, table(1), strat)
    assert [s[1] for s in strat.seen] == [T0, T0 + 2 * S]  # the one-sided tick never reached it
    assert len(r.fills) == 1
    assert r.fills[0]["fill_ts"] == T0 + 2 * S and r.fills[0]["px"] == 102  # not at the missing ask
    assert np.isfinite(r.equity).all() and r.equity.min() > 999_000  # never marked at half the bid


def test_a_sell_fills_at_the_bid_while_the_ask_is_missing():
    q = quotes([(T0, 0, 100, 101), (T0 + S, 0, 99.5, 0.0, 10, 0.0)])
    r = run(q, table(1), Scripted({(0, T0): -3.0}))
    assert r.fills[0]["px"] == 99.5 and r.fills[0]["sz"] == -3


def test_a_reset_on_a_one_sided_tick_reaches_the_next_two_sided_tick():
    q = quotes([(T0, 0, 0.0, 101, 0.0, 10), (T0 + S, 0, 100, 101)])  # the session opens one-sided
    strat = Scripted({})
    r = run(q, table(1), strat)
    assert r.resets["ts"].tolist() == [T0]  # the reset took effect (and is recorded) at the first tick
    assert strat.seen == [(0, T0 + S, True, True)]  # the strategy starts over on the first two-sided one
