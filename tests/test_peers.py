"""bench/peers.py: every engine makes the EMA cross's flips that ``flip_count`` predicts.

Peers are optional (``pip install -e '.[bench-peers]'``); their tests skip without them.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench import peers
from bench.quotes import random_walk_quotes

FAST, SLOW = 20.0, 100.0


@pytest.fixture(scope="module")
def quotes():
    q, _ = random_walk_quotes(20_000, 1)
    return q


@pytest.fixture(scope="module")
def expected(quotes) -> int:
    n = peers.flip_count(peers.quote_mid(quotes), FAST, SLOW)
    assert n > 100  # enough flips for a 1% tolerance to mean something
    return n


def _agrees(r: peers.PeerResult, expected: int) -> None:
    print(f"{r.engine}: {r.trades_or_flips} flips, {r.orders} orders, {r.fills} fills; flip_count {expected}")
    assert r.quotes == 20_000
    assert abs(r.trades_or_flips - expected) <= 0.01 * expected


def test_flip_count_small_cases():
    assert peers.flip_count(np.array([100.0]), FAST, SLOW) == 0
    assert peers.flip_count(np.full(50, 100.0), FAST, SLOW) == 0  # fast == slow: no direction
    up_down = np.concatenate([np.linspace(100, 101, 50), np.linspace(101, 99, 100)])
    assert peers.flip_count(up_down, 5, 20) == 2  # long on the way up, short on the way down


def test_nextick(quotes, expected):
    r = peers.nextick_ema_cross(quotes, FAST, SLOW)
    _agrees(r, expected)
    assert r.orders == r.trades_or_flips and r.extra["resets"] == 1
    assert r.fills == r.orders  # each order fills at the next quote (the last flip is not the last quote here)
    q = peers.nextick_quote_only(quotes)
    assert q.orders == q.fills == q.trades_or_flips == 0 and q.quotes_per_s > 0


@pytest.mark.parametrize("compile", [None, False])
def test_nextick_compiled_python_makes_the_builtins_orders_and_fills(quotes, expected, compile):
    short = quotes[:5_000] if compile is False else quotes  # uncompiled: Python per quote
    builtin = peers.nextick_ema_cross(short, FAST, SLOW)
    r = peers.nextick_compiled_ema_cross(short, FAST, SLOW, compile=compile)
    if compile is None:
        _agrees(r, expected)
    assert (r.orders, r.fills, r.trades_or_flips) == (builtin.orders, builtin.fills, builtin.trades_or_flips)
    assert r.engine == "nextick (compiled Python)" and r.extra["resets"] == 1


def test_nautilus(quotes, expected):
    pytest.importorskip("nautilus_trader")
    r = peers.nautilus_ema_cross(quotes, FAST, SLOW)
    _agrees(r, expected)
    assert r.orders == r.trades_or_flips and r.fills >= r.orders
    assert r.extra["quotes_seen"] == len(quotes)
    q = peers.nautilus_quote_only(quotes)
    assert q.orders == 0 and q.extra["quotes_seen"] == len(quotes)


def test_hftbacktest(quotes, expected):
    pytest.importorskip("hftbacktest")
    r = peers.hftbacktest_ema_cross(quotes, FAST, SLOW)
    _agrees(r, expected)
    assert r.orders == r.fills == r.trades_or_flips
    assert r.extra["feeds"] == len(quotes)  # one feed event per BBO update, the last one included
    h = peers.hftbacktest_ema_cross(quotes, FAST, SLOW, depth="hashmap")
    assert h.trades_or_flips == r.trades_or_flips


def test_hftbacktest_book_is_the_quotes(quotes):
    """The depth events rebuild exactly the quoted BBO after every feed event."""
    pytest.importorskip("hftbacktest")
    numba = pytest.importorskip("numba")

    @numba.njit
    def trace(hbt, out):
        k = 0
        while hbt.wait_next_feed(False, 1 << 60) == 2:
            d = hbt.depth(0)
            out[k, 0] = d.best_bid_tick
            out[k, 1] = d.best_ask_tick
            k += 1
        return k

    q = quotes[:2_000]
    events, _ = peers.hftbacktest_events(q)
    bt = peers._hbt_backtest(events, 0.01, 1.0, "roivec")
    out = np.zeros((len(q) + 1, 2), np.int64)
    k = trace(bt, out)
    bt.close()
    assert k == len(q)
    assert np.array_equal(out[:k, 0] / 100.0, q["bid_px"]) and np.array_equal(out[:k, 1] / 100.0, q["ask_px"])


@pytest.mark.parametrize("fn,module", [
    (peers.nautilus_ema_cross, "nautilus_trader"),
    (peers.nautilus_quote_only, "nautilus_trader"),
    (peers.hftbacktest_ema_cross, "hftbacktest"),
    (peers.hftbacktest_quote_only, "hftbacktest"),
])
def test_missing_peer_says_how_to_install(monkeypatch, quotes, fn, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(peers.PeerUnavailable, match=r"pip install -e '\.\[bench-peers\]'") as e:
        fn(quotes[:100])
    assert module in str(e.value) and isinstance(e.value, ImportError)
