"""Explicit orders and events through the Python strategy APIs, end to end on a synthetic market:
what the example strategy (strategies/dip_buyer.py, shown in the README) is promised, and the same
for a portfolio strategy. The fill rules themselves: tests/test_order_rules.py."""

from __future__ import annotations

import numpy as np

from engine.backtest import BacktestConfig, run_backtest
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies import orders as O
from strategies.dip_buyer import DipBuyer
from strategies.portfolio import PortfolioStrategy

MARKET = SyntheticConfig(n_instruments=3, n_sessions=2, seed=7, quote_rate_hz=2.0)
CONFIG = BacktestConfig(interval="1s", latency_ns=50_000_000, fee_bps=1.0, maker_fee_bps=-0.2, warmup_ticks=5)


class RecordingDipBuyer(DipBuyer):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.events: list[tuple] = []

    def on_fill(self, ev) -> None:
        self.events.append(("fill", int(ev["ts"]), int(ev["instrument"]), int(ev["client_id"]), float(ev["px"]), float(ev["units"])))
        super().on_fill(ev)

    def on_order_cancelled(self, ev) -> None:
        self.events.append(("cancelled", int(ev["ts"]), int(ev["instrument"]), int(ev["client_id"]), O.CANCEL_REASONS[ev["reason"]]))
        super().on_order_cancelled(ev)

    def on_order_rejected(self, ev) -> None:
        self.events.append(("rejected", int(ev["ts"]), int(ev["instrument"]), int(ev["client_id"]), O.REJECT_REASONS[ev["reason"]]))
        super().on_order_rejected(ev)

    def on_reset(self, ev) -> None:
        self.events.append(("reset", int(ev["ts"]), int(ev["instrument"]), int(ev["reason"])))


def run(strategy, config=CONFIG):
    return run_backtest(SyntheticMarket(MARKET), config, strategy=strategy)


def test_dip_buyer_entries_rest_at_their_limit_and_each_is_protected_by_a_stop():
    s = RecordingDipBuyer(dip_bps=1.0, stop_bps=3.0)
    r = run(s)
    f = r.fills
    entries, stops = f[f["order_type"] == O.LIMIT], f[f["order_type"] == O.STOP]
    assert len(entries) > 5 and len(stops) > 0, (len(entries), len(stops))
    # entries rest (post-only, 1 bp under the bid): maker fills at the limit, at the maker fee (a rebate here)
    assert (entries["liquidity"] == 1).all() and (entries["sz"] > 0).all()
    np.testing.assert_allclose(entries["fee"], -0.2e-4 * entries["px"] * entries["sz"], rtol=1e-12)
    # each stop fill closes the position the entry before it opened, at the bid, 3 bps or more under it
    for i in range(MARKET.n_instruments):
        fi = f[f["instrument"] == i]
        for k in np.flatnonzero(fi["order_type"] == O.STOP):
            entry = fi[k - 1]
            assert entry["order_type"] == O.LIMIT and fi[k]["sz"] == -entry["sz"]
            assert fi[k]["px"] <= entry["px"] * (1 - 3e-4) and fi[k]["liquidity"] == 0
            assert fi[k]["decision_ts"] == entry["fill_ts"]  # placed by on_fill at the entry's fill
    # the callbacks saw every fill, in time order, with the engine's numbers
    seen = [e for e in s.events if e[0] == "fill"]
    assert [(e[1], e[4], e[5]) for e in seen] == [(int(x["fill_ts"]), float(x["px"]), float(x["sz"])) for x in f]
    assert [e[1] for e in s.events] == sorted(e[1] for e in s.events)
    assert any(e[0] == "reset" for e in s.events)
    assert r.counters["explicit_orders"] >= len(entries) + len(stops)


def test_resets_and_session_closes_cancel_working_orders_and_say_why():
    s = RecordingDipBuyer(dip_bps=50.0)  # far under the bid: rarely filled, so the entries are cancelled instead
    r = run(s)
    reasons = {e[4] for e in s.events if e[0] == "cancelled"}
    assert reasons & {"reset", "session_close"}, reasons
    cancelled = sum(1 for e in s.events if e[0] == "cancelled")
    assert cancelled == r.counters["explicit_cancelled"]


def test_orders_and_events_are_deterministic():
    a, b = run(RecordingDipBuyer(dip_bps=1.0, stop_bps=3.0)), run(RecordingDipBuyer(dip_bps=1.0, stop_bps=3.0))
    assert a.fill_hash() == b.fill_hash() and a.counters == b.counters


class LimitEveryRebalance(PortfolioStrategy):
    """Every minute, a GTC buy limit 2 bps under each instrument's bid (replacing the last one)."""

    rebalance_ns = 60_000_000_000

    def __init__(self) -> None:
        self.fills: list[int] = []
        self.working: set[int] = set()

    def on_rebalance(self, book):
        for i, bid, ok in zip(book.instrument, book.bid_px, book.rows["tradeable"]):
            if not ok:
                continue
            if int(i) in self.working:
                O.replace(self.orders, i, 1, np.nan, bid * (1 - 2e-4), np.nan)
            else:
                O.limit(self.orders, i, 1.0, bid * (1 - 2e-4), 1)
                self.working.add(int(i))

    def on_fill(self, ev) -> None:
        self.fills.append(int(ev["instrument"]))
        self.working.discard(int(ev["instrument"]))

    def on_order_cancelled(self, ev) -> None:
        if O.CANCEL_REASONS[ev["reason"]] != "replaced":
            self.working.discard(int(ev["instrument"]))

    def on_order_rejected(self, ev) -> None:
        self.working.discard(int(ev["instrument"]))


def test_a_portfolio_strategy_sends_orders_and_hears_of_its_fills():
    s = LimitEveryRebalance()
    r = run(s, BacktestConfig(interval="1s", warmup_ticks=0))
    f = r.fills
    assert len(f) > 3 and (f["order_type"] == O.LIMIT).all() and (f["sz"] == 1.0).all()
    # mostly resting fills; a limit whose instrument fell through it before it arrived takes at the ask
    assert (f["liquidity"] == 1).mean() > 0.5
    assert s.fills == f["instrument"].tolist()


def test_flatten_at_close_cancels_explicit_orders_and_refuses_new_entries_in_its_window():
    from engine.domain.calendar import SessionCalendar

    cal = "09:30-10:00 America/New_York Mon-Fri"
    market = SyntheticConfig(n_instruments=2, n_sessions=3, seed=3, quote_rate_hz=2.0, calendar=cal)
    lead_ns = 5 * 60_000_000_000
    config = BacktestConfig(interval="1s", warmup_ticks=0, flatten_at_close=True, flatten_lead_ns=lead_ns)
    s = RecordingDipBuyer(dip_bps=0.5, stop_bps=2.0)
    r = run_backtest(SyntheticMarket(market), config, strategy=s)
    f = r.fills
    _, closes = SessionCalendar.parse(cal).sessions_between(int(r.equity_ts_ns[0]) - 86_400_000_000_000, int(r.equity_ts_ns[-1]))
    window = np.zeros(len(f), bool)
    for c in closes:
        window |= (f["fill_ts"] >= c - lead_ns) & (f["fill_ts"] < c)
    explicit = f["order_type"] != O.MARKET
    assert explicit.sum() > 5 and (window & ~explicit).any(), "the test should trade and flatten"
    assert not (window & explicit).any(), "no explicit order fills in the flatten window"
    reasons = [e[4] for e in s.events if e[0] in ("cancelled", "rejected")]
    assert "session_close" in reasons and "not_tradeable" in reasons
