"""The Allocation strategy (strategies/allocation/rebalance.py) on the portfolio seam: its rules on
a hand-made book, and in the engine on a synthetic market (next-tick fills, caps, determinism)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import S

from engine.backtest import BacktestConfig, load_strategy, run_backtest
from engine.cli import main
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from strategies.allocation.rebalance import NAMES, Allocation
from strategies.base import BATCH_DTYPE, TickBatch
from strategies.portfolio import BOOK_DTYPE, Book

SYMBOLS = ["A", "B", "C"]


def book(mids, *, position=(0.0, 0.0, 0.0), tradeable=(1, 1, 1), equity=100_000.0, ts=0) -> Book:
    rows = np.zeros(len(mids), BOOK_DTYPE)
    rows["mid"] = mids
    rows["position"] = position
    rows["tradeable"] = tradeable
    rows["instrument"] = np.arange(len(mids))
    return Book(ts, equity, equity, rows, TickBatch(np.zeros(0, BATCH_DTYPE)), SYMBOLS[: len(mids)])


PATH = [[100.0, 50.0, 20.0], [101.0, 50.5, 19.0], [99.0, 51.0, 19.5], [102.0, 50.0, 21.0], [103.0, 52.0, 20.0]]


def test_waits_for_a_full_window_then_allocates_within_the_cap():
    s = Allocation(allocator="min_variance", lookback=3, cap=0.5)
    answers = [s.on_rebalance(book(m)) for m in PATH]
    assert answers[:3] == [None, None, None]  # 4 marks make the 3 returns of a full window
    w = answers[3].values
    assert w.sum() == pytest.approx(1.0, abs=1e-9) and np.all(w <= 0.5 + 1e-9) and np.all(w >= -1e-12)
    assert s.turnover[0] == pytest.approx(1.0)  # from cash: the whole book traded
    # Turnover is against the positions' weights at their marks: holding w exactly trades nothing.
    held = book(PATH[4], position=tuple(w * 100_000.0 / np.array(PATH[4])))
    s2 = Allocation(allocator="equal_weight")
    s2.on_rebalance(held)
    assert s2.turnover[0] == pytest.approx(np.abs(np.full(3, 1 / 3) - w).sum())


def test_untradeable_or_unpriced_instruments_are_left_alone():
    s = Allocation(allocator="inverse_volatility", lookback=2)
    for m in PATH[:2]:
        s.on_rebalance(book(m))
    out = s.on_rebalance(book([99.0, np.nan, 19.5], tradeable=(1, 0, 1)))
    w = out.values
    assert np.isnan(w[1]) and w[[0, 2]].sum() == pytest.approx(1.0)
    # C is far more volatile than A: inverse volatility gives A the larger weight.
    assert w[0] > w[2]


def test_a_cap_too_small_for_the_universe_leaves_the_rest_in_cash():
    s = Allocation(allocator="equal_weight", cap=0.2)  # 3 instruments x 0.2 cannot hold 100%
    w = s.on_rebalance(book(PATH[0])).values
    assert np.allclose(w, [0.2, 0.2, 0.2])


def test_buy_and_hold_of_an_index_trades_once():
    s = Allocation(allocator="index_proxy", index="B", hold=True)
    assert s.on_rebalance(book(PATH[0], tradeable=(1, 0, 1))) is None  # the index cannot trade yet
    w = s.on_rebalance(book(PATH[1])).values
    assert w.tolist() == [0.0, 1.0, 0.0]
    assert all(s.on_rebalance(book(m)) is None for m in PATH[2:])
    cw = Allocation(allocator="cap_weight", market_cap={"A": 3.0, "C": 1.0})
    assert np.allclose(cw.on_rebalance(book(PATH[0])).values, [0.75, 0.0, 0.25])


def test_mean_cvar_with_an_unreachable_target_changes_nothing():
    s = Allocation(allocator="mean_cvar", lookback=3, target_return=0.5)
    assert all(s.on_rebalance(book(m)) is None for m in PATH)
    assert s.infeasible == 2 and s.turnover == []


@pytest.mark.parametrize("kwargs, match", [
    ({"allocator": "risk_parity"}, "allocator 'risk_parity' is unknown; give one of equal_weight"),
    ({"rebalance_s": -1}, "rebalance_s must be >= 0 seconds"),
    ({"lookback": 1}, "lookback must be an int >= 2"),
    ({"cap": 0}, "cap must be a finite fraction"),
    ({"scenarios": "copula"}, "scenarios 'copula' is unknown"),
    ({"allocator": "cap_weight"}, "cap_weight needs market_cap"),
])
def test_bad_parameters_say_what_to_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Allocation(**kwargs)


# --- in the engine ------------------------------------------------------------------------------------

CAP = 0.4
LATENCY_NS = 50_000_000


def market() -> SyntheticMarket:
    return SyntheticMarket(SyntheticConfig(n_instruments=4, n_sessions=1, quote_rate_hz=2.0, seed=3))


def quotes_of(src: SyntheticMarket) -> np.ndarray:
    return np.concatenate(list(src.chunks()))


@pytest.mark.parametrize("allocator", ["min_variance", "mean_cvar"])
def test_rebalance_orders_fill_at_each_instruments_next_tick_within_the_cap(allocator):
    cfg = BacktestConfig(interval="raw", fee_bps=1.0, latency_ns=LATENCY_NS)

    def strategy():
        return Allocation(allocator=allocator, rebalance_s=300, lookback=8, cap=CAP)

    s = strategy()
    r = run_backtest(market(), cfg, strategy=s)
    q = quotes_of(market())
    assert r.counters["rebalances"] > 40 and len(s.decisions) > 30 and len(r.fills) > 60
    for ts, w in s.decisions:
        ok = ~np.isnan(w)
        assert np.all(w[ok] <= CAP + 1e-9) and np.all(w[ok] >= -1e-12) and w[ok].sum() <= 1 + 1e-9
    for f in r.fills:
        mine = q[(q["instrument"] == f["instrument"]) & (q["ts_recv"] > f["decision_ts"] + LATENCY_NS)]
        nxt = mine[0]  # the instrument's first tick after the order became active
        assert f["fill_ts"] == nxt["ts_recv"] > f["decision_ts"]
        assert f["px"] == (nxt["ask_px"] if f["sz"] > 0 else nxt["bid_px"])
        assert f["fee"] == pytest.approx(abs(f["sz"] * f["px"]) * 1e-4)
    assert (r.fills["sz"] > 0).any() and (r.fills["sz"] < 0).any()
    # From cash the first turnover is the weight placed (the universe may still be small then:
    # an instrument joins once its returns fill the window, and the cap limits what it can hold).
    assert all(t >= 0 for t in s.turnover) and s.turnover[0] == pytest.approx(np.nansum(s.decisions[0][1]))
    assert sum(not np.isnan(w).any() for _, w in s.decisions) > 20  # all four in most decisions
    # Deterministic: a second run gives the same fills bit for bit, and the same turnover.
    s2 = strategy()
    r2 = run_backtest(market(), cfg, strategy=s2)
    assert r2.fill_hash() == r.fill_hash() and s2.turnover == s.turnover


def test_loads_by_import_path_and_from_the_command_line(capsys, tmp_path):
    spec = "strategies.allocation.rebalance:Allocation"
    s = load_strategy(spec, {"allocator": "min_variance", "rebalance_s": 600, "cap": 0.5})
    assert isinstance(s, Allocation) and s.rebalance_ns == 600 * S and s.constraints.cap == 0.5
    code = main(["backtest", "--n-sessions", "1", "--quote-rate-hz", "2", "--no-progress", "--strategy", spec,
                 "--param", "allocator=min_variance", "--param", "rebalance_s=600", "--param", "lookback=5",
                 "--param", "cap=0.5", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "allocation" in out and "rebalances" in out
    assert set(NAMES) >= {"equal_weight", "inverse_volatility", "min_variance", "mean_variance", "momentum",
                          "cap_weight", "index_proxy", "mean_cvar"}
