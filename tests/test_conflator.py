"""Conflator: one snapshot per instrument per interval, never from the future."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MS, T0, quotes
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _core
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag


@st.composite
def raw_streams(draw):
    n = draw(st.integers(0, 200))
    steps = draw(st.lists(st.integers(0, 70 * MS), min_size=n, max_size=n))
    insts = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    flags = draw(st.lists(st.sampled_from([0, 0, 0, int(QuoteFlag.AFTER_RECONNECT), int(QuoteFlag.STALE)]), min_size=n, max_size=n))
    ts = T0 + np.cumsum(np.asarray(steps, dtype=np.int64))
    q = quotes([(int(t), i, 100 + k * 0.01, 100.5 + k * 0.01, k, k, f) for k, (t, i, f) in enumerate(zip(ts, insts, flags))])
    return q


def conflate(q: np.ndarray, interval_ns: int, splits=()) -> np.ndarray:
    c = _core.Conflator(interval_ns)
    parts, lo = [], 0
    for hi in sorted(splits) + [len(q)]:
        parts.append(c.push(q[lo:hi]))
        lo = hi
    parts.append(c.flush())
    return np.concatenate(parts) if parts else np.zeros(0, QUOTE_DTYPE)


@settings(max_examples=300, deadline=None)
@given(raw_streams(), st.sampled_from([100 * MS, 1000 * MS]), st.data())
def test_snapshot_is_last_quote_received_before_its_stamp(q, interval_ns, data):
    out = conflate(q, interval_ns)
    # one snapshot per (instrument, interval) that saw a quote, in (stamp, instrument) order
    buckets = {(int(i), int(t) // interval_ns) for i, t in zip(q["instrument"], q["ts_recv"])}
    assert len(out) == len(buckets)
    keys = list(zip(out["ts_recv"].tolist(), out["instrument"].tolist()))
    assert keys == sorted(keys)
    for s in out:
        stamp, inst = int(s["ts_recv"]), int(s["instrument"])
        assert stamp % interval_ns == 0
        src = q[(q["instrument"] == inst) & (q["ts_recv"] < stamp) & (q["ts_recv"] >= stamp - interval_ns)]
        last = src[-1]
        # never a quote received at or after the stamp; exactly the last one before it
        assert last["ts_recv"] < stamp
        for f in ("ts_event", "bid_px", "ask_px", "bid_sz", "ask_sz", "seq"):
            assert s[f] == last[f]
        sticky = np.bitwise_or.reduce(src["flags"]) & int(QuoteFlag.AFTER_RECONNECT | QuoteFlag.STALE)
        assert s["flags"] == int(last["flags"]) | int(sticky) | int(QuoteFlag.CONFLATED)
    # splitting the input into arbitrary chunks changes nothing
    splits = data.draw(st.lists(st.integers(0, len(q)), max_size=5))
    assert conflate(q, interval_ns, splits).tobytes() == out.tobytes()


def test_flush_until_emits_only_complete_intervals():
    q = quotes([(T0 + 10 * MS, 0, 1, 2), (T0 + 20 * MS, 1, 1, 2)])
    c = _core.Conflator(100 * MS)
    assert len(c.push(q)) == 0
    assert len(c.flush_until(T0 + 99 * MS)) == 0
    out = c.flush_until(T0 + 100 * MS)
    assert list(out["instrument"]) == [0, 1] and set(out["ts_recv"]) == {T0 + 100 * MS}
    assert len(c.flush()) == 0


def test_going_back_in_time_is_refused():
    c = _core.Conflator(100 * MS)
    c.push(quotes([(T0 + 500 * MS, 0, 1, 2)]))
    with pytest.raises(ValueError, match="back in time"):
        c.push(quotes([(T0 + 100 * MS, 0, 1, 2)]))


def test_wrong_dtype_is_refused_not_copied():
    c = _core.Conflator(100 * MS)
    with pytest.raises(TypeError):
        c.push(np.zeros(3, dtype=np.float64))
