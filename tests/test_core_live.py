"""What the live path asks of the core: stage stamps that change nothing, an order log that accounts
for every order, and re-booking journaled fills that gives back the exact portfolio."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.backtest import BacktestConfig, Engine, stream_ticks
from feeds.synthetic import SyntheticConfig, SyntheticMarket

MARKET = SyntheticConfig(n_instruments=3, n_sessions=2, seed=5, quote_rate_hz=2.0, alpha_strength=3.0)


def ticks(interval: str = "1s") -> list[np.ndarray]:
    return [t for _, t in stream_ticks(SyntheticMarket(MARKET), interval) if len(t)]


def engine(strategy: str, *, stamping: bool = False, order_log: bool = False, params=None) -> Engine:
    e = Engine(BacktestConfig(strategy=strategy, strategy_params=params or {}), SyntheticMarket(MARKET).instruments, None)
    e.prepare()
    e.core.set_stamping(stamping)
    e.core.set_order_log(order_log)
    return e


@pytest.mark.parametrize("strategy", ["momentum", "ssm"])
def test_stamping_and_order_log_change_no_fill(strategy):
    a, b = engine(strategy), engine(strategy, stamping=True, order_log=True)
    for t in ticks():
        a.run(t)
        b.run(t)
    fa, fb = a.core.fills(), b.core.fills()
    assert len(fa) > 10
    assert fa.tobytes() == fb.tobytes()
    assert a.core.resets().tobytes() == b.core.resets().tobytes()
    assert a.core.cash == b.core.cash


def test_stage_stamps_are_ordered_and_on_the_monotonic_clock():
    e = engine("momentum", stamping=True)
    chunks = ticks()
    t0 = time.monotonic_ns()
    e.run(chunks[0])
    state, sig, decision, order, batches = e.core.stamps()
    assert t0 <= state <= sig <= decision <= order <= time.monotonic_ns()
    assert batches == len(np.unique(chunks[0]["ts_recv"]))  # one stamped batch per timestamp


def test_order_log_accounts_for_every_order_and_fill():
    e = engine("momentum", order_log=True)
    for t in ticks():
        e.run(t)
    e.core.finish()
    log = e.core.take_order_log()
    kinds = np.bincount(log["kind"], minlength=6)
    c = e.core.counters()
    assert kinds[0] == c["orders"]
    assert kinds[1] == c["orders_replaced"] and kinds[2] == c["cancelled_session_close"]
    assert kinds[3] == c["cancelled_reset"] and kinds[5] == c["cancelled_end"]
    new = {int(o["order_id"]): o for o in log[log["kind"] == 0]}
    for f in e.core.fills():
        o = new[int(f["order_id"])]
        assert o["ts"] == f["decision_ts"] and o["decision_mid"] == f["decision_mid"] and o["instrument"] == f["instrument"]
        assert np.sign(o["units"]) == np.sign(f["sz"])
    assert len(e.core.take_order_log()) == 0  # taken means gone


def test_restored_fills_give_back_the_exact_portfolio():
    chunks = ticks()
    half = len(chunks) // 2
    a = engine("momentum")
    for t in chunks[:half]:
        a.run(t)
    fills = a.core.fills()
    assert len(fills) > 5
    b = engine("momentum")
    b.core.restore_fills(fills)
    assert b.core.cash == a.core.cash  # the same arithmetic in the same order: bit for bit
    assert b.core.positions().tolist() == a.core.positions().tolist()
    assert b.core.fills().tobytes() == fills.tobytes()
    assert b.core.next_order_id == int(fills["order_id"].max()) + 1
    # A round trip open at the restore closes into the same trade record as without the restart.
    pos = a.core.positions()
    assert (pos != 0).any(), "pick a cut with an open position"
    close = np.zeros(int((pos != 0).sum()), dtype=fills.dtype)
    close["instrument"] = np.flatnonzero(pos != 0)
    close["sz"] = -pos[pos != 0]
    close["px"] = 123.0
    close["fill_ts"] = int(fills["fill_ts"].max()) + 1
    close["order_id"] = a.core.next_order_id
    n_before = len(b.core.trades())
    a.core.restore_fills(close)
    b.core.restore_fills(close)
    new_b = b.core.trades()[n_before:]
    assert len(new_b) == len(close)
    assert a.core.trades()[-len(close):].tobytes() == new_b.tobytes()
    assert a.core.cash == b.core.cash


def test_restore_refuses_fractional_lots():
    e = engine("momentum")
    f = np.zeros(1, dtype=e.core.fills().dtype)
    f["sz"] = 0.5  # lot size 1
    f["px"] = 100.0
    with pytest.raises(ValueError, match="whole number of lots"):
        e.core.restore_fills(f)


def test_zero_slippage_has_one_sign():
    e = engine("mean_reversion")
    for t in ticks():
        e.run(t)
    s = e.core.fills()["slippage_bps"]
    assert not (np.signbit(s) & (s == 0)).any()  # no -0.0: journals (SQLite) and hashes agree


def test_a_resumed_session_resets_for_the_reconnect_not_as_a_session_open():
    from conftest import T0, S, quotes, table

    from engine.backtest import BacktestConfig, Engine
    from engine.domain.quote import QuoteFlag

    def first_reset(resume: bool) -> str:
        e = Engine(BacktestConfig(strategy="none", interval="raw"), table(1), None)
        if resume:
            e.resume_at(T0 + 3600 * S)
        e.run(quotes([(T0 + 3601 * S, 0, 100, 101, 1, 1, int(QuoteFlag.AFTER_RECONNECT))]))
        return ("SESSION_OPEN", "GAP", "RECONNECT", "STALE", "MANUAL")[int(e.core.resets()["reason"][0])]

    assert first_reset(resume=False) == "SESSION_OPEN"
    assert first_reset(resume=True) == "RECONNECT"
