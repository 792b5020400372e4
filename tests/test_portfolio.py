"""Portfolio strategies (strategies/portfolio.py): decisions for every instrument at once, filled by
the rules of DESIGN.md "Execution" also on instruments not ticking at the decision."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import MS, T0, S, draw_quote, quotes, reference_fill, reference_order, run, table
from hypothesis import given, settings
from hypothesis import strategies as st
from test_strategies import random_walk

from engine.backtest import BacktestConfig, Engine, load_strategy, run_backtest
from engine.domain.instrument import Instrument, InstrumentTable
from feeds.memory import ArraySource
from strategies.base import StrategyError
from strategies.equal_weight import EqualWeight
from strategies.portfolio import Book, PortfolioHost, PortfolioStrategy, Targets

H = 3600 * S
NAN = float("nan")


class ScriptedBook(PortfolioStrategy):
    """Answers script[ts] at the first call at each decision time; keeps a copy of every book."""

    name = "scripted_book"

    def __init__(self, script: dict[int, Targets] | None = None, rebalance_ns: int = 0) -> None:
        self.script = dict(script or {})
        self.rebalance_ns = rebalance_ns
        self.seen: list[dict] = []

    def on_rebalance(self, book: Book) -> Targets | None:
        self.seen.append(
            {
                "ts": book.ts_ns,
                "cash": book.cash,
                "equity": book.equity,
                "rows": book.rows.copy(),
                "ticking": [int(i) for i in book.ticking.instrument],
            }
        )
        return self.script.pop(book.ts_ns, None)


def instruments(*specs: dict) -> InstrumentTable:
    """One instrument per spec (keyword overrides of a 24x7 instrument named I<k>)."""
    base = dict(calendar="24x7", gap_ns=H, warmup_ticks=0, lot_size=1.0)
    return InstrumentTable(Instrument(symbol=f"I{k}", **{**base, **s}) for k, s in enumerate(specs))


# --- the fill rule for instruments that are not ticking ----------------------------------------------


def batches(rows):
    """Rows grouped as the engine groups them: consecutive rows at one ts, each instrument once."""
    out: list[list] = []
    for row in rows:
        if out and out[-1][0][0] == row[0] and all(r[1] != row[1] for r in out[-1]):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def reference_fills(rows, script, latency_ns, fee_bps, fee_fixed, size_cap, cancel_rem):
    """DESIGN.md's rules as plainly as possible for decisions made at any batch, on any instrument:
    an order for j decided at T fills at j's first tick with ts > T + latency, buys at the ask, sells
    at the bid; j needs a price (one session, no warm-up here)."""
    pos: dict[int, int] = {}
    mark: dict[int, float] = {}
    order: dict[int, list] = {}  # j -> [id, decision_ts, active_ts, remaining, decision_mid]
    fills = []
    next_id = 1
    script = dict(script)
    for batch in batches(rows):
        for ts, i, bid, ask, bid_sz, ask_sz in batch:
            o = order.get(i)
            if o and o[3] != 0 and ts > o[2]:
                f = reference_fill(o, bid, ask, bid_sz, ask_sz, fee_bps=fee_bps, fee_fixed=fee_fixed,
                                   size_cap=size_cap, cancel_rem=cancel_rem)
                if f:
                    lots, px, fee = f
                    fills.append((o[0], o[1], ts, px, float(lots), fee, o[4], i))
                    pos[i] = pos.get(i, 0) + lots
            mark[i] = 0.5 * (bid + ask)
        T = batch[0][0]
        for j, target in sorted(script.pop(T, {}).items()):  # placed in instrument order
            if j in mark:  # no price yet: no order
                next_id = reference_order(order, pos, j, target, T, latency_ns, next_id, mark[j])
    return fills


@st.composite
def portfolio_streams(draw):
    n_inst = draw(st.integers(2, 4))
    n = draw(st.integers(1, 50))
    ts = T0 + H
    rows, seen = [], set()
    for _ in range(n):
        ts += draw(st.integers(0, 3)) * MS
        # instrument 0 ticks most, the last rarely: most decisions are on instruments not ticking
        i = min(draw(st.integers(0, 2 * n_inst)) // 2, n_inst - 1) if draw(st.booleans()) else 0
        if (i, ts) in seen:
            continue
        seen.add((i, ts))
        rows.append(draw_quote(draw, ts, i))
    decision_ts = sorted({r[0] for r in rows})
    script = {}
    for T in decision_ts:
        if draw(st.booleans()):
            chosen = draw(st.lists(st.integers(0, n_inst - 1), max_size=n_inst, unique=True))
            script[T] = {j: float(draw(st.integers(-6, 6))) for j in chosen}
    return n_inst, rows, script


@settings(max_examples=300, deadline=None)
@given(portfolio_streams(), st.sampled_from([0, 1 * MS, 2 * MS]), st.sampled_from([0.0, 3.0]), st.booleans(), st.booleans())
def test_rebalance_orders_fill_at_each_instruments_next_tick(stream, latency_ns, fee_bps, size_cap, cancel_rem):
    n_inst, rows, script = stream
    targets = {
        T: Targets.units(np.array([t.get(j, NAN) for j in range(n_inst)])) for T, t in script.items()
    }
    r = run(quotes(rows), table(n_inst), ScriptedBook(targets), latency_ns=latency_ns, fee_bps=fee_bps,
            fee_per_fill=0.25, size_cap=size_cap, cancel_remainder=cancel_rem)
    got = [
        (int(f["order_id"]), int(f["decision_ts"]), int(f["fill_ts"]), f["px"], f["sz"], f["fee"], f["decision_mid"],
         int(f["instrument"]))
        for f in r.fills
    ]
    assert got == reference_fills(rows, script, latency_ns, fee_bps, 0.25, size_cap, cancel_rem)

    # The rule itself, independently of the reference: never at or before the decision, and the first
    # fill of an order is at the instrument's first tick after decision + latency, at the far side.
    first_fill: set[int] = set()
    for f in r.fills:
        i, d = int(f["instrument"]), int(f["decision_ts"])
        assert f["fill_ts"] > d + latency_ns
        tick = next(row for row in rows if row[1] == i and row[0] == f["fill_ts"])
        assert f["px"] == (tick[3] if f["sz"] > 0 else tick[2])
        assert f["fee"] == pytest.approx(abs(f["sz"]) * f["px"] * fee_bps * 1e-4 + 0.25)
        if int(f["order_id"]) not in first_fill:
            first_fill.add(int(f["order_id"]))
            if not size_cap:
                assert f["fill_ts"] == min(row[0] for row in rows if row[1] == i and row[0] > d + latency_ns)


def test_an_order_on_an_instrument_not_ticking_fills_at_its_next_tick():
    # I1 ticks at T, the decision is at T+1s (only I0 ticks), I1 ticks again at T+5s: the fill.
    q = quotes([(T0 + H, 0, 10, 11), (T0 + H, 1, 50, 51), (T0 + H + S, 0, 10, 11),
                (T0 + H + 2 * S, 0, 10, 11), (T0 + H + 5 * S, 1, 52, 53)])
    strat = ScriptedBook({T0 + H + S: Targets.units([NAN, 4.0])})
    r = run(q, table(2), strat, fee_bps=10)
    (f,) = r.fills
    assert (f["instrument"], f["decision_ts"], f["fill_ts"]) == (1, T0 + H + S, T0 + H + 5 * S)
    assert (f["px"], f["sz"], f["decision_mid"]) == (53, 4, 50.5)  # the ask of the filling tick; I1's last mark
    assert f["fee"] == pytest.approx(4 * 53 * 1e-3)
    assert strat.seen[1]["ticking"] == [0]


# --- weights -> units ---------------------------------------------------------------------------------


def test_weights_convert_to_whole_lots_at_the_decision_mid():
    inst = instruments({}, {"lot_size": 10.0}, {"lot_size": 7.0}, {})
    t = T0 + H
    q = quotes([
        (t, 0, 99, 101), (t, 1, 49.5, 50.5), (t, 2, 199, 201),  # I3 never ticks: no price
        (t + S, 0, 100, 102), (t + S, 1, 50, 51), (t + S, 2, 198, 200),
        (t + 2 * S, 0, 104, 106),
        (t + 3 * S, 0, 104, 106), (t + 3 * S, 1, 49, 50),
    ])
    strat = ScriptedBook({
        t: Targets.weights([0.5, 0.33, -0.123, 0.1]),
        t + 2 * S: Targets.weights({"I0": 0.25, "I1": 0.1}),  # I1 is not ticking at t + 2s
    })
    r = run(q, inst, strat, initial_capital=100_000.0)
    # t: equity 100,000. I0 0.5e5/100 = 500; I1 0.33e5/50 = 660 = 66 lots of 10;
    # I2 -0.123e5/200 = -61.5 units = -8.79 lots of 7 -> -8 lots = -56 units (toward zero); I3 skipped.
    # t+1s fills: cash = 1e5 - 500*102 - 660*51 + 56*198 = 26,428.
    # t+2s: equity = 26,428 + 500*105 + 660*50.5 - 56*199 = 101,114.
    #   I0: 0.25 * 101,114 / 105 = 240.75 -> 240, sell 260; I1: 0.1 * 101,114 / 50.5 = 200.2 -> 200, sell 460.
    assert strat.seen[2]["cash"] == 26_428 and strat.seen[2]["equity"] == 101_114
    fills = [(int(f["instrument"]), int(f["decision_ts"]), int(f["fill_ts"]), f["sz"], f["px"], f["decision_mid"])
             for f in r.fills]
    assert fills == [
        (0, t, t + S, 500, 102, 100), (1, t, t + S, 660, 51, 50), (2, t, t + S, -56, 198, 200),
        (0, t + 2 * S, t + 3 * S, -260, 104, 105), (1, t + 2 * S, t + 3 * S, -460, 49, 50.5),
    ]
    assert r.counters["targets_skipped"] == 1  # the weight on I3, which had no price
    assert r.final_positions.tolist() == [240, 200, -56, 0]


def test_targets_by_symbol_leave_the_others_alone():
    q = quotes([(T0 + H, 0, 99, 101), (T0 + H, 1, 9, 11), (T0 + H + S, 0, 99, 101), (T0 + H + S, 1, 9, 11)])
    r = run(q, table(2), ScriptedBook({T0 + H: Targets.units({"I1": 3.0})}))
    assert r.fills["instrument"].tolist() == [1] and r.final_positions.tolist() == [0, 3]


# --- warm-up and sessions for instruments not ticking -------------------------------------------------


def test_warm_up_clamp_applies_to_instruments_not_ticking():
    # I1 warms up for 3 ticks after each reset; I0 ticks every second and carries the decisions.
    inst = instruments({}, {"warmup_ticks": 3, "gap_ns": 10 * S})
    t = T0 + H
    i1_ticks = [t, t + 2 * S, t + 4 * S, t + 6 * S, t + 30 * S, t + 32 * S]  # a GAP reset at t + 30s
    rows = [(t + k * S, 0, 10, 11) for k in range(36)] + [(ts, 1, 50, 51) for ts in i1_ticks]
    rows.sort(key=lambda r: (r[0], r[1]))
    strat = ScriptedBook({
        t + 1 * S: Targets.units([NAN, 10.0]),  # after I1's 1st tick: warming, no order
        t + 5 * S: Targets.units([NAN, 10.0]),  # after its 3rd: warm, buy 10 (fills at t + 6s)
        t + 31 * S: Targets.units([NAN, 20.0]),  # warming again after the GAP: no increase
        t + 33 * S: Targets.units([NAN, 4.0]),  # still warming, but reducing is allowed
    })
    r = run(quotes(rows), inst, strat)
    assert r.resets_by_reason()["GAP"] == 1
    warm = {s["ts"]: bool(s["rows"]["warm"][1]) for s in strat.seen}
    assert (warm[t + S], warm[t + 5 * S], warm[t + 31 * S]) == (False, True, False)
    fills = [(int(f["decision_ts"]), int(f["fill_ts"]), f["sz"], f["px"]) for f in r.fills]
    # the reduction waits for I1's next tick; none came after t + 32s, so it is cancelled at the end
    assert fills == [(t + 5 * S, t + 6 * S, 10, 51)]
    assert r.counters["orders"] == 2 and r.counters["cancelled_end"] == 1


def test_warm_up_reduction_on_an_instrument_not_ticking_fills():
    inst = instruments({}, {"warmup_ticks": 3, "gap_ns": 10 * S})
    t = T0 + H
    i1_ticks = [t, t + 2 * S, t + 4 * S, t + 6 * S, t + 30 * S, t + 34 * S]
    rows = sorted([(t + k * S, 0, 10, 11) for k in range(36)] + [(ts, 1, 50, 51) for ts in i1_ticks],
                  key=lambda r: (r[0], r[1]))
    strat = ScriptedBook({t + 5 * S: Targets.units([NAN, 10.0]), t + 31 * S: Targets.units([NAN, 4.0])})
    r = run(quotes(rows), inst, strat)
    assert [(int(f["fill_ts"]), f["sz"], f["px"]) for f in r.fills] == [(t + 6 * S, 10, 51), (t + 34 * S, -6, 50)]


def test_no_orders_outside_the_session_and_cancel_at_close():
    # I0 trades 24x7; I1 09:30-16:00 New York = 14:30-21:00 UTC on 2024-01-02 and 01-03.
    inst = instruments({}, {"calendar": "09:30-16:00 America/New_York Mon-Fri"})
    day = 24 * H
    open_ = T0 + 14 * H + 30 * 60 * S
    close = T0 + 21 * H
    i1 = [open_ - 30 * 60 * S, open_ + 60 * S, open_ + 600 * S, close - 60 * S, day + open_ + 60 * S]
    i0 = [open_ - 20 * 60 * S, open_ + 5 * 60 * S, close - 30 * S, close + 30 * 60 * S, day + open_ + 30 * S,
          day + open_ + 120 * S]
    rows = sorted([(ts, 0, 10, 11) for ts in i0] + [(ts, 1, 50 + k, 51 + k) for k, ts in enumerate(i1)])
    strat = ScriptedBook({
        open_ - 20 * 60 * S: Targets.units([NAN, 5.0]),  # I1 has only ticked pre-market: no price, skipped
        open_ + 5 * 60 * S: Targets.units([NAN, 5.0]),  # in session: fills at I1's next tick (open + 10 min)
        close - 30 * S: Targets.units([NAN, 0.0]),  # in session, but I1 does not tick again before the close
        close + 30 * 60 * S: Targets.units([NAN, 0.0]),  # closed: skipped
        day + open_ + 30 * S: Targets.units([NAN, 0.0]),  # the next session is open but I1 has not ticked in it
    })
    r = run(quotes(rows), inst, strat)
    fills = [(int(f["decision_ts"]), int(f["fill_ts"]), f["sz"], f["px"], f["decision_mid"]) for f in r.fills]
    assert fills == [(open_ + 5 * 60 * S, open_ + 600 * S, 5, 53, 51.5)]
    assert r.counters["targets_skipped"] == 3
    assert r.counters["cancelled_session_close"] == 1  # the sell decided at close - 30 s died with the session
    assert [bool(s["rows"]["in_session"][1]) for s in strat.seen] == [
        False, False, True, True, True, True, True, False, False, True, True]
    assert [bool(s["rows"]["tradeable"][1]) for s in strat.seen] == [
        False, False, True, True, True, True, True, False, False, True, True]
    pre = strat.seen[0]["rows"][1]
    assert math.isnan(pre["mid"]) and math.isnan(pre["bid_px"]) and pre["ts"] == 0  # the pre-market tick is not in the book


@pytest.mark.parametrize("latency_s", [0, 1])
def test_no_orders_on_a_stale_instrument(latency_s):
    # I1 (gap threshold 10 s) ticks at t, t+8s and t+30s. Its tick at t+30s resets it for the GAP,
    # so an order decided when no fill before that reset is possible is not placed.
    inst = instruments({}, {"gap_ns": 10 * S})
    t = T0 + H
    rows = sorted([(t + k * S, 0, 10, 11) for k in range(32)] + [(t + k * S, 1, 50, 51) for k in (0, 8, 30)])
    script = {t + 5 * S: Targets.units([NAN, 3.0]), t + 17 * S: Targets.units([NAN, 0.0]),
              t + 19 * S: Targets.units([NAN, 0.0])}
    strat = ScriptedBook(script)
    r = run(quotes(rows), inst, strat, latency_ns=latency_s * S)
    book = {s["ts"]: s["rows"][1] for s in strat.seen}
    assert r.fills["sz"].tolist() == [3]
    # t+19s: 11 s since its last tick; t+17s: 9 s, plus the latency
    assert (book[t + 19 * S]["in_session"], book[t + 19 * S]["tradeable"]) == (1, 0)
    assert book[t + 17 * S]["tradeable"] == (1 if latency_s == 0 else 0)
    if latency_s == 0:  # placed at t+17s (I1 might have ticked by t+18s); its GAP reset cancels it
        assert (r.counters["targets_skipped"], r.counters["cancelled_reset"]) == (1, 1)
    else:
        assert (r.counters["targets_skipped"], r.counters["cancelled_reset"]) == (2, 0)


def test_flatten_at_close_overrides_a_target_on_an_instrument_not_ticking():
    q = quotes([(T0 + H, 0, 10, 11), (T0 + H, 1, 50, 51), (T0 + 2 * H, 0, 10, 11), (T0 + 2 * H + S, 1, 50, 51),
                (T0 + 23 * H + 59 * 60 * S + 30 * S, 0, 10, 11), (T0 + 23 * H + 59 * 60 * S + 40 * S, 1, 50, 51)])
    strat = ScriptedBook({T0 + H: Targets.units([NAN, 5.0]),
                          T0 + 23 * H + 59 * 60 * S + 30 * S: Targets.units([NAN, 9.0])})  # inside the last minute
    r = run(q, table(2, gap_ns=24 * H), strat, flatten_at_close=True, flatten_lead_ns=60 * S)
    assert r.fills["sz"].tolist() == [5, -5] and r.final_positions.tolist() == [0, 0]


# --- the clock ------------------------------------------------------------------------------------------


def test_the_clock_fires_at_the_first_batch_at_or_after_each_multiple():
    base = T0 + H  # a whole multiple of 10 s
    at = [1 * S, 9 * S, 10 * S, 10 * S + 500 * MS, 25 * S, 31 * S, 40 * S - 1, 40 * S, 41 * S]
    strat = ScriptedBook(rebalance_ns=10 * S)
    run(quotes([(base + a, 0, 10, 11) for a in at]), table(1), strat)
    assert [s["ts"] - base for s in strat.seen] == [1 * S, 10 * S, 25 * S, 31 * S, 40 * S]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 40_000), min_size=1, max_size=40),
    st.sampled_from([7 * MS, 1 * S, 10 * S, 60 * S]),
    st.sampled_from([1, 3, 1 << 20]),
)
def test_clock_property(steps_ms, period_ns, chunk_rows):
    ts = T0 + H + np.cumsum(np.array(steps_ms, dtype=np.int64) * MS)
    q = quotes([(int(t), k % 2, 10, 11) for k, t in enumerate(ts)])
    strat = ScriptedBook(rebalance_ns=period_ns)
    run_backtest(ArraySource(q, table(2), chunk_rows=chunk_rows), BacktestConfig(interval="raw"), strategy=strat)
    # a batch is due when a multiple of the period lies in (previous batch, this batch]
    due = [int(t) for k, t in enumerate(ts) if k == 0 or t // period_ns > ts[k - 1] // period_ns]
    assert [s["ts"] for s in strat.seen] == due


def test_every_batch_when_the_period_is_zero_and_batches_are_whole_across_chunks():
    q = quotes([(T0 + H + k * S, i, 10, 11) for k in range(4) for i in range(3)])
    strat = ScriptedBook()
    run_backtest(ArraySource(q, table(3), chunk_rows=1), BacktestConfig(interval="raw"), strategy=strat)
    assert [s["ticking"] for s in strat.seen] == [[0, 1, 2]] * 4


# --- determinism and the book ---------------------------------------------------------------------------


@pytest.mark.parametrize("interval", ["raw", "100ms"])
def test_equal_weight_is_deterministic_for_any_chunking(interval):
    q = random_walk(20_000, 4, seed=3)
    inst = table(4, gap_ns=120 * S, warmup_ticks=5)
    cfg = BacktestConfig(interval=interval, fee_bps=1.0, latency_ns=50 * MS)
    results = [
        run_backtest(ArraySource(q, inst, chunk_rows=c), cfg, strategy=EqualWeight(gross=0.8, rebalance_s=60))
        for c in (1 << 20, 1 << 20, 997, 1)
    ]
    assert len(results[0].fills) > 50 and results[0].counters["rebalances"] > 10
    assert len({r.fill_hash() for r in results}) == 1
    assert all(np.array_equal(results[0].equity, r.equity) for r in results)


def test_the_book_matches_the_fills_and_the_quotes():
    q = random_walk(3_000, 3, seed=8)
    q = q[~((q["instrument"] == 2) & (np.arange(len(q)) % 7 != 0))]  # I2 ticks rarely
    rng = np.random.default_rng(1)
    script = {int(t): Targets.units(rng.integers(-20, 20, 3).astype(float)) for t in np.unique(q["ts_recv"])[::25]}
    strat = ScriptedBook(script, rebalance_ns=0)
    r = run(q, table(3), strat, fee_bps=2.0, initial_capital=50_000.0)
    assert len(r.fills) > 50 and (r.fills["instrument"] == 2).any()
    f = r.fills
    for seen in strat.seen[::17]:
        T = seen["ts"]
        done = f[f["fill_ts"] <= T]
        pos = np.zeros(3)
        cash = 50_000.0
        for x in done:
            pos[x["instrument"]] += x["sz"]
            cash -= x["sz"] * x["px"] + x["fee"]
        rows = seen["rows"]
        assert np.array_equal(rows["position"], pos)
        assert seen["cash"] == pytest.approx(cash, rel=1e-12)
        past = q[q["ts_recv"] <= T]
        for i in range(3):
            mine = past[past["instrument"] == i]
            if len(mine) == 0:
                assert rows["ts"][i] == 0 and np.isnan(rows["mid"][i]) and np.isnan(rows["bid_px"][i])
                continue
            last = mine[-1]
            assert (rows["ts"][i], rows["bid_px"][i], rows["ask_px"][i], rows["ask_sz"][i]) == (
                last["ts_recv"], last["bid_px"], last["ask_px"], last["ask_sz"])
            assert rows["mid"][i] == 0.5 * (last["bid_px"] + last["ask_px"])
        value = np.where(pos != 0, pos * rows["mid"], 0.0).sum()
        assert seen["equity"] == pytest.approx(cash + value, rel=1e-12)


def test_the_book_is_the_cores_positions_cash_and_equity():
    # Decided at every batch: after the last one nothing fills, so the last book is the core's state.
    q = random_walk(2_000, 3, seed=4, gaps=False)
    rng = np.random.default_rng(2)
    script = {int(t): Targets.units(rng.integers(-9, 9, 3).astype(float)) for t in np.unique(q["ts_recv"])[::10]}
    strat = ScriptedBook(script)
    engine = Engine(BacktestConfig(interval="raw", fee_bps=1.0, latency_ns=300 * MS), table(3), strat)
    engine.run(q)
    core = engine.core
    last = strat.seen[-1]
    assert len(core.fills()) > 20
    assert np.array_equal(last["rows"]["position"], core.positions())
    assert (last["cash"], last["equity"]) == (core.cash, core.equity)


# --- bad input --------------------------------------------------------------------------------------------


class Returns(PortfolioStrategy):
    def __init__(self, value) -> None:
        self.value = value

    def on_rebalance(self, book: Book):
        return self.value


BAD = [
    (Returns(Targets.units([1.0, 2.0, 3.0])), r"units of shape \(3,\) for 2 instruments.*I0, I1"),
    (Returns(Targets.weights([0.1, np.inf])), r"infinite weights for I1"),
    (Returns(Targets.weights({"I0": 0.5, "BTC": 0.5})), r"weights for unknown instrument 'BTC'; the instruments are I0, I1"),
    (Returns(Targets.units({7: 1.0})), r"unknown instrument 7"),
    (Returns(np.array([1.0, 2.0])), r"returned ndarray; return Targets.units\(x\).*or Targets.weights\(w\)"),
    (Returns(Targets.units(["a", "b"])), r"units that are not numbers"),
    (Returns(Targets.weights({"I0": "half"})), r"weights 'half' for 'I0'; give a float"),
]


@pytest.mark.parametrize("strategy, match", BAD)
def test_bad_targets_are_errors_that_say_what_to_do(strategy, match):
    q = quotes([(T0 + H, 0, 1, 2), (T0 + H, 1, 1, 2), (T0 + H + S, 0, 1, 2)])
    with pytest.raises(StrategyError, match=match):
        run(q, table(2), strategy)


def test_a_bad_rebalance_period_is_refused():
    s = Returns(None)
    s.rebalance_ns = -5
    with pytest.raises(ValueError, match="rebalance_ns is -5; give an int >= 0"):
        run(quotes([(T0 + H, 0, 1, 2)]), table(1), s)
    with pytest.raises(ValueError, match="rebalance_s must be >= 0"):
        EqualWeight(rebalance_s=-1)


def test_book_views_are_read_only():
    class Writer(PortfolioStrategy):
        def on_rebalance(self, book: Book):
            book.position[0] = 1e9

    with pytest.raises(ValueError, match="read-only"):
        run(quotes([(T0 + H, 0, 1, 2)]), table(1), Writer())


def test_a_portfolio_strategy_loads_by_import_path():
    s = load_strategy("strategies.equal_weight:EqualWeight", {"gross": 0.5, "rebalance_s": 60})
    assert isinstance(s, EqualWeight) and s.rebalance_ns == 60 * S
    q = random_walk(3000, 2, seed=2, gaps=False)
    r = run(q, table(2), strategy="strategies.equal_weight:EqualWeight", strategy_params={"rebalance_s": 60})
    assert r.strategy == "equal_weight" and r.counters["rebalances"] > 1 and len(r.fills) > 0


def test_host_books_read_the_buffers_it_grew_into():
    """The host reuses its TickBatch per row count and one dict of Book column views: after grow,
    both must be of the new buffers, and each Book keeps its own time, cash and equity."""
    seen = []

    class Reader(PortfolioStrategy):
        def on_rebalance(self, book: Book) -> None:
            seen.append((book.ts_ns, book.equity, book.mid.tolist(), book.tradeable.tolist(), book.ticking.mid.tolist()))

    inst = instruments({}, {})
    host = PortfolioHost(Reader(), inst)
    host.book["mid"] = [1.0, 2.0]
    host.buffer["mid"][:1] = 5.0
    host(1, T0, 10.0, 11.0)
    inst.add(Instrument(symbol="I2", calendar="24x7"))
    host.grow(3)
    host.book["mid"][2] = 3.0
    host.book["tradeable"] = [0, 1, 1]
    host.buffer["mid"][:1] = 6.0
    host(1, T0 + S, 10.0, 12.0)
    assert seen == [
        (T0, 11.0, [1.0, 2.0], [False, False], [5.0]),
        (T0 + S, 12.0, [1.0, 2.0, 3.0], [False, True, True], [6.0]),
    ]
