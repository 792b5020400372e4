"""Explicit orders (issue 16): each order type's fill rule in the engine, held to the plain reference
model of csrc/orders.hpp in tests/order_reference.py on random quote streams, to the rule's invariants
on their own, to determinism over runs and chunkings, and to a few hand-computed examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import MS, T0, S, quotes, table
from hypothesis import given, settings
from hypothesis import strategies as st
from order_reference import (
    CANCEL,
    CANCEL_ALL,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    POST_ONLY,
    REPLACE,
    STOP,
    STOP_LIMIT,
    SUBMIT,
    RefEvent,
    Req,
    Tick,
    simulate,
)

from engine.backtest import BacktestConfig, Engine
from strategies import orders as O
from strategies.base import Strategy, TickBatch

START = T0 + 3600 * S  # well inside one UTC day of the 24x7 calendar: no session boundary in a stream
NO_GAP_NS = 10**15  # no GAP reset ever fires
C_END = O.CANCEL_REASONS.index("end")
UNKNOWN_ORDER = O.REJECT_REASONS.index("unknown_order")


# -- driving the engine ------------------------------------------------------------------------------


def write(orders: np.ndarray, req: Req) -> None:
    """One request through the public writers of strategies.orders (instrument 0)."""
    if req.action == SUBMIT:
        if req.type == LIMIT:
            ok = O.limit(orders, 0, req.units, req.limit_px, req.client_id, tif=req.tif)
        elif req.type == STOP:
            ok = O.stop(orders, 0, req.units, req.stop_px, req.client_id)
        elif req.type == STOP_LIMIT:
            ok = O.stop_limit(orders, 0, req.units, req.stop_px, req.limit_px, req.client_id)
        else:
            ok = O.market(orders, 0, req.units, req.client_id)
    elif req.action == CANCEL:
        ok = O.cancel(orders, 0, req.client_id)
    elif req.action == REPLACE:
        ok = O.replace(orders, 0, req.client_id, req.units, req.limit_px, req.stop_px)
    else:
        ok = O.cancel_all(orders, 0)
    assert ok, f"request buffer of {len(orders)} full; the test sends at most a few per batch"


def as_dict(ev) -> dict:
    """The event's fields; a NaN (px of a non-fill) as None, so that equal events compare equal."""
    out = {name: ev[name].item() for name in O.EVENT_DTYPE.names}
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


class OrderScript(Strategy):
    """Sends the requests scripted for each batch ts, targets nothing, and logs what it is told:
    ``log`` holds ("batch", ts) and ("event", event dict) in the order they reached it."""

    name = "order_script"

    def __init__(self, script_by_ts: dict[int, list[Req]]) -> None:
        self.script_by_ts = script_by_ts
        self.log: list[tuple[str, object]] = []

    def on_batch(self, batch: TickBatch) -> None:
        self.log.append(("batch", batch.ts_ns))
        for req in self.script_by_ts.get(batch.ts_ns, ()):
            write(self.orders, req)

    def _event(self, ev) -> None:
        self.log.append(("event", as_dict(ev)))

    on_fill = on_order_rejected = on_order_cancelled = _event
    on_reset = on_session_open = on_session_close = _event

    @property
    def events(self) -> list[dict]:
        return [e for kind, e in self.log if kind == "event"]


def quote_rows(ticks: list[Tick]) -> np.ndarray:
    return quotes([(t.ts, 0, t.bid, t.ask, t.bid_sz, t.ask_sz) for t in ticks])


def run_engine(ticks, script, *, cuts=(), warmup_ticks=0, **config):
    """The engine over ``ticks`` with ``script`` (tick index -> requests), fed in the chunks that
    ``cuts`` (row indices) make. Returns (fills array, strategy, counters)."""
    config.setdefault("interval", "raw")
    config.setdefault("fee_bps", 0.0)
    strategy = OrderScript({ticks[k].ts: reqs for k, reqs in script.items()})
    engine = Engine(BacktestConfig(**config), table(1, gap_ns=NO_GAP_NS, warmup_ticks=warmup_ticks), strategy)
    q = quote_rows(ticks)
    edges = [0, *sorted(set(cuts)), len(q)]
    for lo, hi in itertools.pairwise(edges):
        engine.run(q[lo:hi])
    engine.core.finish()
    return engine.core.fills(), strategy, engine.core.counters()


def order_events(strategy: OrderScript) -> list[dict]:
    """Fills, rejects and cancels, less the cancels at the end of data (the reference stops before)."""
    return [e for e in strategy.events
            if e["kind"] in (O.FILL, O.REJECTED, O.CANCELLED) and not (e["kind"] == O.CANCELLED and e["reason"] == C_END)]


def event_key(e) -> tuple:
    """What the reference predicts of an event (an engine event dict or a RefEvent)."""
    if isinstance(e, RefEvent):
        kind, ts, cid, units, px, reason, otype, liq = (e.kind, e.ts, e.client_id, e.units, e.px, e.reason,
                                                        e.order_type, e.liquidity)
    else:
        kind, ts, cid, units, px, reason, otype, liq = (e["kind"], e["ts"], e["client_id"], e["units"], e["px"],
                                                        e["reason"], e["order_type"], e["liquidity"])
    if kind == O.FILL:
        return (ts, kind, cid, units, px, 0, otype, liq)
    if kind == O.REJECTED and reason == UNKNOWN_ORDER:
        return (ts, kind, cid, None, None, reason, None, 0)  # no order: no size or type to name
    return (ts, kind, cid, units, None, reason, otype, 0)


def fill_key(f) -> tuple:
    return (int(f["fill_ts"]), int(f["decision_ts"]), float(f["px"]), float(f["sz"]), int(f["liquidity"]),
            int(f["order_type"]))


# -- random streams and scripts ------------------------------------------------------------------------

HALF = 0.5  # the tick grid


@st.composite
def scenarios(draw):
    """A quote stream (random walk on a half-point grid, so limits get touched and traded through;
    some one-sided ticks) and a script of requests on its two-sided ticks."""
    n = draw(st.integers(2, 36))
    ts, level = START, 200
    ticks: list[Tick] = []
    for k in range(n):
        if k:
            ts += draw(st.sampled_from([MS // 2, MS, MS, 2 * MS, 3 * MS]))
            level += draw(st.integers(-2, 2))
        bid = level * HALF
        ask = bid + draw(st.integers(1, 3)) * HALF
        bid_sz, ask_sz = float(draw(st.integers(1, 8))), float(draw(st.integers(1, 8)))
        side = draw(st.sampled_from(["both"] * 6 + ["bid", "ask"])) if k else "both"
        if side == "bid":
            ask, ask_sz = 0.0, 0.0
        elif side == "ask":
            bid, bid_sz = 0.0, 0.0
        ticks.append(Tick(ts, bid, ask, bid_sz, ask_sz))

    script: dict[int, list[Req]] = {}
    ids: list[int] = []
    for k, t in enumerate(ticks):
        if t.bid <= 0 or t.ask <= 0 or not draw(st.integers(0, 9)) < 4:
            continue
        reqs = []
        for _ in range(draw(st.integers(1, 2))):
            reqs.append(draw_request(draw, t, ids))
        script[k] = reqs
    return ticks, script


def draw_px(draw, t: Tick) -> float:
    return t.bid + draw(st.integers(-3, 5)) * HALF


def draw_request(draw, t: Tick, ids: list[int]) -> Req:
    what = draw(st.sampled_from(["limit"] * 4 + ["stop", "stop_limit", "market", "cancel", "replace", "cancel_all"]))
    if what in ("cancel", "replace") and ids:
        cid = draw(st.sampled_from(ids)) if draw(st.integers(0, 9)) else 999_999  # now and then an unknown id
        if what == "cancel":
            return Req(CANCEL, cid)
        maybe = st.one_of(st.just(math.nan), st.just(None))
        units = draw(maybe)
        units = units if units is not None else float(draw(st.sampled_from([-1, 1])) * draw(st.integers(1, 9)))
        lim = draw(maybe)
        stp = draw(maybe)
        return Req(REPLACE, cid, units, lim if lim is not None else draw_px(draw, t),
                   stp if stp is not None else draw_px(draw, t))
    if what == "cancel_all":
        return Req(CANCEL_ALL, 0)
    cid = len(ids) + 1
    ids.append(cid)
    units = float(draw(st.sampled_from([-1, 1])) * draw(st.integers(1, 9)))
    if what == "limit":
        return Req(SUBMIT, cid, units, limit_px=draw_px(draw, t), type=LIMIT, tif=draw(st.sampled_from([GTC, IOC, POST_ONLY])))
    if what == "stop":
        return Req(SUBMIT, cid, units, stop_px=draw_px(draw, t), type=STOP)
    if what == "stop_limit":
        return Req(SUBMIT, cid, units, limit_px=draw_px(draw, t), stop_px=draw_px(draw, t), type=STOP_LIMIT)
    return Req(SUBMIT, cid, units, type=MARKET)


configs = st.fixed_dictionaries({
    "latency_ns": st.sampled_from([0, 0, MS // 2, MS, 2 * MS, 5 * MS]),
    "size_cap": st.booleans(),
    "queue": st.sampled_from(["through", "touch"]),
    "fee_bps": st.sampled_from([0.0, 2.0]),
    "maker_fee_bps": st.sampled_from([None, -1.0]),
    "fee_per_fill": st.sampled_from([0.0, 0.25]),
})


# -- (a) the engine against the reference model --------------------------------------------------------


def explain(ticks, script, cfg, events, ref) -> str:
    """A failing case as a reader can check it by hand: times in ms from the first tick."""
    t0 = ticks[0].ts

    def ms(ts):
        return (ts - t0) / MS

    def req(r):
        names = {SUBMIT: ("market", "limit", "stop", "stop_limit")[r.type], CANCEL: "cancel", REPLACE: "replace",
                 CANCEL_ALL: "cancel_all"}
        tif = f" {O.TIME_IN_FORCE[r.tif]}" if r.action == SUBMIT and r.type == LIMIT else ""
        return f"{names[r.action]}{tif} id={r.client_id} units={r.units} limit={r.limit_px} stop={r.stop_px}"

    lines = [f"config {cfg}", "tick  ms  bid  ask  bid_sz  ask_sz  | requests decided on it"]
    for k, t in enumerate(ticks):
        lines.append(f"{k:3d} {ms(t.ts):6.1f}  {t.bid} {t.ask} {t.bid_sz:g} {t.ask_sz:g}  | "
                     + "; ".join(req(r) for r in script.get(k, ())))
    lines.append("events (ms, kind, client_id, units, px, reason, order_type, liquidity): engine | reference")
    for side, evs in (("engine", events), ("reference", ref.events)):
        lines += [f"  {side:9s} {(ms(k[0]), *k[1:])}" for k in map(event_key, evs)]
    return "\n".join(lines)


@settings(max_examples=150, deadline=None)
@given(scenarios(), configs)
def test_engine_fills_and_events_match_the_reference(scenario, cfg):
    ticks, script = scenario
    fills, strategy, counters = run_engine(ticks, script, **cfg)
    ref = simulate(ticks, script, **cfg)
    events = order_events(strategy)
    why = explain(ticks, script, cfg, events, ref)

    got = sorted(fill_key(f) for f in fills)
    want = sorted((f.ts, f.decision_ts, f.px, f.units, f.liquidity, f.order_type) for f in ref.fills)
    assert got == want, why
    assert sorted(fills["fee"].tolist()) == pytest.approx(sorted(f.fee for f in ref.fills)), why

    assert sorted(map(event_key, events), key=repr) == sorted(map(event_key, ref.events), key=repr), why
    # each order's own events in the order they happened
    for cid in {e.client_id for e in ref.events}:
        assert [event_key(e) for e in events if e["client_id"] == cid] == \
               [event_key(e) for e in ref.events if e.client_id == cid], why
    assert counters["orders_rejected"] == len(ref.rejects), why


# -- (b) the rules' invariants, on the engine alone ------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(scenarios(), configs)
def test_fill_invariants(scenario, cfg):
    ticks, script = scenario
    fills, strategy, _ = run_engine(ticks, script, **cfg)
    at = {t.ts: t for t in ticks}
    decided = {ticks[k].ts for k in script}
    limits: dict[int, list[float]] = {}  # client id -> every limit it was given
    for reqs in script.values():
        for r in reqs:
            if r.action in (SUBMIT, REPLACE) and not math.isnan(r.limit_px):
                limits.setdefault(r.client_id, []).append(r.limit_px)

    for f in fills:
        fill_ts, px, sz = int(f["fill_ts"]), float(f["px"]), float(f["sz"])
        assert fill_ts > f["decision_ts"] + cfg["latency_ns"], "filled before it was active (or on its placing tick)"
        assert int(f["decision_ts"]) in decided
        t = at[fill_ts]
        if sz > 0:
            assert t.ask > 0 and px >= t.ask, f"buy at {px} below the ask {t.ask} of its tick"
        else:
            assert t.bid > 0 and px <= t.bid, f"sell at {px} above the bid {t.bid} of its tick"
        if cfg["size_cap"]:
            assert abs(sz) <= (t.ask_sz if sz > 0 else t.bid_sz)
        if f["liquidity"] == 1:
            assert f["order_type"] in (O.LIMIT, O.STOP_LIMIT), "only a limit rests and makes"
            touched = px == (t.ask if sz > 0 else t.bid)
            assert not touched or cfg["queue"] == "touch", "a touch filled a resting limit under queue='through'"
        else:
            assert px == (t.ask if sz > 0 else t.bid), "a taker fills at the touch"

    position = 0.0
    for e in strategy.events:
        if e["kind"] != O.FILL:
            continue
        lims = limits.get(e["client_id"], [])
        if e["order_type"] in (O.LIMIT, O.STOP_LIMIT):
            assert (e["px"] <= max(lims)) if e["units"] > 0 else (e["px"] >= min(lims)), "beyond its limit"
        if e["liquidity"] == 1:
            assert e["px"] in lims, "a maker fill is at its limit"
        position += e["units"]
        assert e["position"] == pytest.approx(position)
    assert position == pytest.approx(float(fills["sz"].sum()))


# -- (c) determinism -----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(scenarios(), configs, st.data())
def test_same_fills_on_every_run_and_every_chunking(scenario, cfg, data):
    ticks, script = scenario
    first, s1, _ = run_engine(ticks, script, **cfg)
    again, s2, _ = run_engine(ticks, script, **cfg)
    assert first.tobytes() == again.tobytes()
    cuts = data.draw(st.lists(st.integers(1, len(ticks) - 1), max_size=4), label="cuts")
    chunked, s3, _ = run_engine(ticks, script, cuts=cuts, **cfg)
    one_by_one, s4, _ = run_engine(ticks, script, cuts=range(1, len(ticks)), **cfg)
    assert chunked.tobytes() == first.tobytes()
    assert one_by_one.tobytes() == first.tobytes()
    events = order_events(s1)
    assert order_events(s2) == events and order_events(s3) == events and order_events(s4) == events


# -- hand-computed examples ----------------------------------------------------------------------------------


def stream(*rows, step_ns=MS):
    """Ticks every ``step_ns`` from START: rows of (bid, ask[, bid_sz, ask_sz])."""
    out = []
    for k, r in enumerate(rows):
        bid_sz, ask_sz = (r[2], r[3]) if len(r) > 2 else (100.0, 100.0)
        out.append(Tick(START + k * step_ns, r[0], r[1], bid_sz, ask_sz))
    return out


def kinds(strategy) -> list[tuple]:
    return [(e["kind"], e["ts"], e["units"], e["reason"]) for e in order_events(strategy)]


def test_buy_limit_that_crosses_on_arrival_takes_the_ask():
    ticks = stream((100, 101), (100.5, 101.5), (99, 100))
    fills, _, _ = run_engine(ticks, {0: [Req(SUBMIT, 1, 5.0, limit_px=102.0, type=LIMIT)]})
    assert len(fills) == 1
    f = fills[0]
    assert (f["fill_ts"], f["px"], f["sz"], f["liquidity"], f["order_type"]) == (ticks[1].ts, 101.5, 5.0, 0, O.LIMIT)
    assert f["decision_ts"] == ticks[0].ts


@pytest.mark.parametrize("queue", ["through", "touch"])
def test_resting_buy_limit_fills_at_its_limit_on_a_trade_through_and_on_a_touch_only_under_touch(queue):
    # arrival at t1 (ask 101 > 100: rests); t2 touches 100; t3 trades through it at 99.5
    ticks = stream((100, 101), (100, 101), (99, 100), (99, 99.5), (99, 99.5))
    fills, _, _ = run_engine(ticks, {0: [Req(SUBMIT, 7, 3.0, limit_px=100.0, type=LIMIT)]}, queue=queue)
    assert len(fills) == 1
    f = fills[0]
    assert f["fill_ts"] == (ticks[2].ts if queue == "touch" else ticks[3].ts)
    assert (f["px"], f["sz"], f["liquidity"], f["order_type"]) == (100.0, 3.0, 1, O.LIMIT)


def test_maker_fee_applies_to_maker_fills_only():
    ticks = stream((100, 101), (100, 101), (99, 99.5), (99, 100))
    script = {0: [Req(SUBMIT, 1, 2.0, limit_px=100.0, type=LIMIT)], 2: [Req(SUBMIT, 2, 2.0, type=MARKET)]}
    fills, _, _ = run_engine(ticks, script, fee_bps=10.0, maker_fee_bps=-2.0)
    by_type = {int(f["order_type"]): f for f in fills}
    assert by_type[O.LIMIT]["fee"] == pytest.approx(2 * 100.0 * -2.0e-4)
    assert by_type[O.MARKET]["fee"] == pytest.approx(2 * 100.0 * 10.0e-4)


def test_post_only_that_would_cross_is_rejected():
    ticks = stream((100, 101), (100, 101), (99, 99.5))
    fills, s, counters = run_engine(ticks, {0: [Req(SUBMIT, 3, 2.0, limit_px=101.0, type=LIMIT, tif=POST_ONLY)]})
    assert len(fills) == 0
    assert kinds(s) == [(O.REJECTED, ticks[1].ts, 2.0, O.REJECT_REASONS.index("would_cross"))]
    assert counters["orders_rejected"] == 1


def test_post_only_that_does_not_cross_rests_and_makes():
    ticks = stream((100, 101), (100, 101), (99, 99.5))
    fills, _, _ = run_engine(ticks, {0: [Req(SUBMIT, 3, 2.0, limit_px=100.5, type=LIMIT, tif=POST_ONLY)]})
    assert [(f["fill_ts"], f["px"], f["liquidity"]) for f in fills] == [(ticks[2].ts, 100.5, 1)]


def test_ioc_with_size_cap_fills_the_displayed_size_and_cancels_the_rest():
    ticks = stream((100, 101), (100, 101, 5, 3), (100, 101, 5, 50))
    fills, s, _ = run_engine(ticks, {0: [Req(SUBMIT, 4, 10.0, limit_px=101.0, type=LIMIT, tif=IOC)]}, size_cap=True)
    assert [(f["fill_ts"], f["px"], f["sz"], f["liquidity"]) for f in fills] == [(ticks[1].ts, 101.0, 3.0, 0)]
    assert kinds(s) == [(O.FILL, ticks[1].ts, 3.0, 0),
                        (O.CANCELLED, ticks[1].ts, 7.0, O.CANCEL_REASONS.index("ioc_remainder"))]


def test_ioc_that_does_not_cross_is_cancelled_whole():
    ticks = stream((100, 101), (100, 101), (99, 99.5))
    fills, s, _ = run_engine(ticks, {0: [Req(SUBMIT, 4, -6.0, limit_px=100.5, type=LIMIT, tif=IOC)]})
    assert len(fills) == 0
    assert kinds(s) == [(O.CANCELLED, ticks[1].ts, -6.0, O.CANCEL_REASONS.index("ioc_remainder"))]


def test_stop_that_gaps_fills_at_the_gapped_ask_not_at_its_stop():
    ticks = stream((100, 101), (100, 101), (103, 104), (100, 101))
    fills, _, _ = run_engine(ticks, {0: [Req(SUBMIT, 5, 2.0, stop_px=102.0, type=STOP)]})
    assert [(f["fill_ts"], f["px"], f["sz"], f["liquidity"], f["order_type"]) for f in fills] == \
           [(ticks[2].ts, 104.0, 2.0, 0, O.STOP)]


def test_sell_stop_triggers_on_the_bid_at_arrival():
    ticks = stream((100, 101), (98.5, 99.5), (100, 101))
    fills, _, _ = run_engine(ticks, {0: [Req(SUBMIT, 5, -2.0, stop_px=99.0, type=STOP)]})
    assert [(f["fill_ts"], f["px"], f["sz"]) for f in fills] == [(ticks[1].ts, 98.5, -2.0)]


def test_stop_limit_triggered_above_its_limit_rests_then_fills_at_the_limit():
    # trigger at t1 (ask 103 >= 102) but 103 > limit 102.5: rests; t2 only touches 102.5; t3 trades through
    ticks = stream((100, 101), (102, 103), (101.5, 102.5), (101, 102), (101, 102))
    fills, _, _ = run_engine(ticks, {0: [Req(SUBMIT, 6, 4.0, limit_px=102.5, stop_px=102.0, type=STOP_LIMIT)]})
    assert [(f["fill_ts"], f["px"], f["sz"], f["liquidity"], f["order_type"]) for f in fills] == \
           [(ticks[3].ts, 102.5, 4.0, 1, O.STOP_LIMIT)]


def test_stop_limit_takes_what_crosses_on_its_trigger_tick():
    ticks = stream((100, 101), (101.5, 102.5, 5, 1), (101.5, 102.5, 5, 9), (100, 101, 5, 9))
    fills, _, _ = run_engine(ticks, {0: [Req(SUBMIT, 6, 4.0, limit_px=103.0, stop_px=102.0, type=STOP_LIMIT)]},
                             size_cap=True)
    # 1 taken at the ask on the trigger tick, the rest rests from t2: 102.5 < 103 trades through it
    assert [(f["fill_ts"], f["px"], f["sz"], f["liquidity"]) for f in fills] == \
           [(ticks[1].ts, 102.5, 1.0, 0), (ticks[2].ts, 103.0, 3.0, 1)]


def test_cancel_with_latency_lets_the_order_fill_until_it_arrives():
    # latency 2 ms, ticks every 1 ms. Submit at t0 -> arrives at t3 (ask 101: rests). Cancel decided at
    # t3 reaches the market at t3 + 2 ms = t5's ts: t4 and t5 (ts not > t3 + 2 ms) still fill it, t6 cancels.
    ticks = stream((100, 101), (100, 101), (100, 101), (100, 101), (99, 99.5, 5, 2), (99, 99.5, 5, 1),
                   (99, 99.5, 5, 9))
    fills, s, _ = run_engine(ticks, {0: [Req(SUBMIT, 8, 5.0, limit_px=100.0, type=LIMIT)], 3: [Req(CANCEL, 8)]},
                             latency_ns=2 * MS, size_cap=True)
    assert [(f["fill_ts"], f["sz"], f["px"]) for f in fills] == [(ticks[4].ts, 2.0, 100.0), (ticks[5].ts, 1.0, 100.0)]
    assert kinds(s) == [(O.FILL, ticks[4].ts, 2.0, 0), (O.FILL, ticks[5].ts, 1.0, 0),
                        (O.CANCELLED, ticks[6].ts, 2.0, O.CANCEL_REASONS.index("requested"))]


def test_replace_cancels_the_old_order_and_its_successor_arrives_after_the_latency():
    # a resting buy at 99 moved up to 101.5: it crosses the ask 101 when it arrives and takes there
    ticks = stream((100, 101), (100, 101), (100, 101), (100, 101))
    script = {0: [Req(SUBMIT, 9, 5.0, limit_px=99.0, type=LIMIT)], 1: [Req(REPLACE, 9, math.nan, 101.5, math.nan)]}
    fills, s, _ = run_engine(ticks, script)
    assert [(f["fill_ts"], f["decision_ts"], f["px"], f["sz"], f["liquidity"]) for f in fills] == \
           [(ticks[2].ts, ticks[1].ts, 101.0, 5.0, 0)]
    assert kinds(s) == [(O.CANCELLED, ticks[2].ts, 5.0, O.CANCEL_REASONS.index("replaced")), (O.FILL, ticks[2].ts, 5.0, 0)]


def test_replace_of_an_order_that_filled_before_the_replace_arrived_adds_no_second_order():
    # latency 2 ms, ticks every 1 ms. The buy decided at t0 arrives at t3 and takes all 5 at the ask;
    # the replace decided at t1 reaches the market only after t3's ts, when there is nothing left to
    # replace: the strategy asked for 5 units, it must not get 10.
    ticks = stream((100, 101), (100, 101), (100, 101), (100, 101), (100, 101), (100, 101))
    script = {0: [Req(SUBMIT, 1, 5.0, limit_px=101.0, type=LIMIT)], 1: [Req(REPLACE, 1, math.nan, 101.5, math.nan)]}
    fills, s, _ = run_engine(ticks, script, latency_ns=2 * MS)
    assert [(f["fill_ts"], f["px"], f["sz"]) for f in fills] == [(ticks[3].ts, 101.0, 5.0)]
    assert (O.REJECTED, ticks[4].ts, O.REJECT_REASONS.index("unknown_order")) in \
           [(e["kind"], e["ts"], e["reason"]) for e in order_events(s)]


def test_replace_keeping_the_size_replaces_what_is_left_when_it_arrives():
    # as above with the size cap: the old order takes 2 at t3, so the replace (units NaN: keep) that
    # reaches the market after t3 puts 3 in its place, and the position ends at 5
    ticks = stream((100, 101), (100, 101), (100, 101), (100, 101, 9, 2), (100, 101), (100, 101))
    script = {0: [Req(SUBMIT, 1, 5.0, limit_px=101.0, type=LIMIT)], 1: [Req(REPLACE, 1, math.nan, 101.5, math.nan)]}
    fills, s, _ = run_engine(ticks, script, latency_ns=2 * MS, size_cap=True)
    assert [(f["fill_ts"], f["px"], f["sz"]) for f in fills] == [(ticks[3].ts, 101.0, 2.0), (ticks[4].ts, 101.0, 3.0)]
    assert kinds(s) == [(O.FILL, ticks[3].ts, 2.0, 0), (O.CANCELLED, ticks[4].ts, 3.0, O.CANCEL_REASONS.index("replaced")),
                        (O.FILL, ticks[4].ts, 3.0, 0)]


def test_a_client_id_stays_taken_until_the_cancel_of_its_order_arrives():
    # latency 2 ms: the buy decided at t0 can fill until its cancel (decided at t1) reaches the market
    # after t3's ts, and it does take at t3; a submit reusing its client id at t1 is a duplicate
    ticks = stream((100, 101), (100, 101), (100, 101), (99, 99.5), (99, 99.5), (99, 99.5))
    script = {0: [Req(SUBMIT, 1, 2.0, limit_px=100.0, type=LIMIT)],
              1: [Req(CANCEL, 1), Req(SUBMIT, 1, 3.0, limit_px=100.0, type=LIMIT)]}
    fills, s, _ = run_engine(ticks, script, latency_ns=2 * MS)
    assert [(f["fill_ts"], f["sz"]) for f in fills] == [(ticks[3].ts, 2.0)]
    assert [(e["kind"], e["ts"], e["reason"]) for e in order_events(s) if e["kind"] == O.REJECTED] == \
           [(O.REJECTED, ticks[1].ts, O.REJECT_REASONS.index("duplicate_id"))]


def test_cancel_of_an_unknown_client_id_is_rejected_when_decided():
    ticks = stream((100, 101), (100, 101))
    _, s, counters = run_engine(ticks, {0: [Req(CANCEL, 42)]})
    assert [(e["kind"], e["ts"], e["client_id"], e["reason"]) for e in order_events(s)] == \
           [(O.REJECTED, ticks[0].ts, 42, O.REJECT_REASONS.index("unknown_order"))]
    assert counters["orders_rejected"] == 1


def test_events_reach_the_strategy_in_order_and_before_the_next_batch():
    # t1: IOC fills 3 then its remainder is cancelled; the cancel of unknown id 77 decided at t1 is
    # rejected then. All of it reaches the strategy before the batch of t2, in that order.
    ticks = stream((100, 101), (100, 101, 5, 3), (100, 101), (100, 101))
    script = {0: [Req(SUBMIT, 4, 10.0, limit_px=101.0, type=LIMIT, tif=IOC)], 1: [Req(CANCEL, 77)]}
    _, s, _ = run_engine(ticks, script, size_cap=True)
    log = [(k, v if k == "batch" else (v["kind"], v["ts"])) for k, v in s.log
           if k == "batch" or v["kind"] in (O.FILL, O.REJECTED, O.CANCELLED)]
    assert log == [
        ("batch", ticks[0].ts),
        ("event", (O.FILL, ticks[1].ts)),
        ("event", (O.CANCELLED, ticks[1].ts)),
        ("batch", ticks[1].ts),
        ("event", (O.REJECTED, ticks[1].ts)),
        ("batch", ticks[2].ts),
        ("batch", ticks[3].ts),
    ]
    fill = next(v for k, v in s.log if k == "event" and v["kind"] == O.FILL)
    assert fill["client_id"] == 4 and fill["position"] == 3.0 and fill["order_type"] == O.LIMIT


def test_an_order_that_would_open_a_position_during_warm_up_is_rejected():
    ticks = stream((100, 101), (100, 101), (100, 101), (100, 101), (99, 100))
    script = {0: [Req(SUBMIT, 1, 1.0, limit_px=102.0, type=LIMIT)], 3: [Req(SUBMIT, 2, 1.0, limit_px=102.0, type=LIMIT)]}
    fills, s, counters = run_engine(ticks, script, warmup_ticks=2)
    rejects = [e for e in order_events(s) if e["kind"] == O.REJECTED]
    assert [(e["client_id"], e["reason"]) for e in rejects] == [(1, O.REJECT_REASONS.index("warmup"))]
    assert [(f["fill_ts"], f["px"]) for f in fills] == [(ticks[4].ts, 100.0)]
    assert counters["orders_rejected"] == 1


def test_one_sided_arrival_tick_lets_nothing_cross():
    # the buy arrives at a tick without an ask: it cannot cross there, so it rests (GTC) and is made
    # later at its limit; the IOC is cancelled whole
    ticks = stream((100, 101), (100, 0.0, 5, 0.0), (99, 99.5))
    script = {0: [Req(SUBMIT, 1, 2.0, limit_px=101.0, type=LIMIT), Req(SUBMIT, 2, 2.0, limit_px=101.0, type=LIMIT, tif=IOC)]}
    fills, s, _ = run_engine(ticks, script)
    assert [(f["fill_ts"], f["px"], f["liquidity"]) for f in fills] == [(ticks[2].ts, 101.0, 1)]
    assert (O.CANCELLED, ticks[1].ts, 2.0, O.CANCEL_REASONS.index("ioc_remainder")) in kinds(s)


def test_gtc_order_is_cancelled_when_its_session_closes():
    # 24x7 sessions end at 00:00 UTC: the buy resting before midnight must not fill on the next day's
    # trade-through; it is cancelled for the close instead
    midnight = T0 + 86_400 * S
    ticks = [Tick(midnight - 3 * MS, 100, 101, 9, 9), Tick(midnight - 2 * MS, 100, 101, 9, 9),
             Tick(midnight + MS, 98, 99, 9, 9), Tick(midnight + 2 * MS, 98, 99, 9, 9)]
    fills, s, _ = run_engine(ticks, {0: [Req(SUBMIT, 1, 5.0, limit_px=100.0, type=LIMIT)]})
    assert len(fills) == 0
    cancels = [e for e in order_events(s) if e["kind"] == O.CANCELLED]
    assert [(e["client_id"], e["units"], e["reason"]) for e in cancels] == \
           [(1, 5.0, O.CANCEL_REASONS.index("session_close"))]
    assert cancels[0]["ts"] >= midnight - 2 * MS


def test_gtc_order_is_cancelled_by_a_reset_of_its_instrument():
    ticks = stream((100, 101), (100, 101), (100, 101), (98, 99), (98, 99))
    fills, s, _ = run_engine(ticks, {0: [Req(SUBMIT, 1, 5.0, limit_px=100.0, type=LIMIT)]},
                             manual_resets=[(ticks[3].ts, "I0")])
    assert len(fills) == 0
    assert [(e["ts"], e["units"], e["reason"]) for e in order_events(s) if e["kind"] == O.CANCELLED] == \
           [(ticks[3].ts, 5.0, O.CANCEL_REASONS.index("reset"))]
