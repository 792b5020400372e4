"""Features have one definition (csrc/features.hpp): the rows the training set is built from are the
rows the signal is fed. Checked tick for tick against an independent numpy reference, on the
synthetic market's sessions, gaps and resets."""

from __future__ import annotations

import numpy as np
import pytest

from engine import _core
from engine.model.config import FEATURE_NAMES
from engine.training.dataset import (
    collect_segments,
    horizon_target,
    split_by_time,
    split_segments,
)
from feeds.memory import ArraySource
from feeds.synthetic import SyntheticConfig, SyntheticMarket
from tests.conftest import MS, T0, S, quotes, table

SMALL = SyntheticConfig(n_instruments=2, n_sessions=3, calendar="09:30-10:00 America/New_York Mon-Fri", outages_per_session=1.0,
                        outage_s=(70.0, 90.0))


def reference_features(ticks: np.ndarray, reset: np.ndarray, opens: np.ndarray, closes: np.ndarray) -> np.ndarray:
    """Row-by-row numpy statement of FEATURE_NAMES for one instrument's in-session ticks."""
    out = np.zeros((len(ticks), len(FEATURE_NAMES)))
    prev_mid = prev_ts = None
    for k, q in enumerate(ticks):
        if reset[k]:
            prev_mid = prev_ts = None
        mid = 0.5 * (q["bid_px"] + q["ask_px"])
        out[k, 0] = np.log(mid / prev_mid) * 1e4 if prev_mid is not None else 0.0
        out[k, 1] = np.log(max((q["ask_px"] - q["bid_px"]) / mid, 1e-8))
        out[k, 2] = (q["bid_sz"] - q["ask_sz"]) / (q["bid_sz"] + q["ask_sz"])
        out[k, 3] = np.log1p((q["ts_recv"] - prev_ts) * 1e-6) if prev_ts is not None else 0.0
        out[k, 4] = (q["ts_recv"] - opens[k]) / (closes[k] - opens[k])
        prev_mid, prev_ts = mid, q["ts_recv"]
    return out


def test_tapped_features_match_the_reference_tick_for_tick():
    market = SyntheticMarket(SMALL)
    conflator = _core.Conflator(S)
    ticks = np.concatenate([conflator.push(c) for c in market.chunks()] + [conflator.flush()])
    segments = collect_segments(SyntheticMarket(SMALL), interval="1s")
    rows = np.concatenate([np.c_[np.full(len(s.ts_ns), s.instrument), s.ts_ns] for s in segments])
    from engine.domain.calendar import SessionCalendar

    cal = SessionCalendar.parse(SMALL.calendar)
    opens, closes = cal.sessions_between(int(ticks["ts_recv"][0]) - 86_400 * S, int(ticks["ts_recv"][-1]) + 1)
    k = np.searchsorted(opens, ticks["ts_recv"], side="right") - 1
    ticks = ticks[ticks["ts_recv"] < closes[k]]  # the snapshot stamped at the close is outside the session
    assert len(rows) == len(ticks)
    gaps = 0
    for seg in segments:
        mine = ticks[(ticks["instrument"] == seg.instrument) & np.isin(ticks["ts_recv"], seg.ts_ns)]
        assert np.array_equal(mine["ts_recv"], seg.ts_ns)
        k = np.searchsorted(opens, mine["ts_recv"], side="right") - 1
        reset = np.zeros(len(mine), bool)
        reset[0] = True
        ref = reference_features(mine, reset, opens[k], closes[k])
        np.testing.assert_allclose(seg.features, ref, rtol=1e-12, atol=1e-12)
        assert seg.features[0, 0] == 0.0 and seg.features[0, 3] == 0.0  # history cleared at the reset
        gaps += seg.features[0, 4] > 0.01  # a segment that starts after the open began at a GAP reset
    assert gaps >= 1, "the outages should have produced GAP segments"


def test_segments_split_at_every_reset_and_targets_stay_inside():
    q = quotes([(T0 + k * S, 0, 100.0 + k, 100.02 + k) for k in range(10)] + [(T0 + (100 + k) * S, 0, 50.0, 50.02) for k in range(5)])
    segs = collect_segments(ArraySource(q, table(1, gap_ns=30 * S)), interval="raw")
    assert [len(s.mid) for s in segs] == [10, 5]  # the 90 s silence is a GAP reset
    y, valid = horizon_target(segs[0].mid, 3)
    assert valid.sum() == 7 and not valid[-3:].any()  # no target reaches across the reset
    np.testing.assert_allclose(y[0], np.log(segs[0].mid[3] / segs[0].mid[0]) * 1e4)


def test_features_survive_odd_books():
    # Zero sizes give defined values; a one-sided quote (ask missing) has no mid, so it never reaches the
    # features or the model: the next tick's return and time step run from the last two-sided tick.
    q = quotes([(T0, 0, 100.0, 100.1), (T0 + 100 * MS, 0, 100.0, 0.0, 0.0, 0.0), (T0 + 200 * MS, 0, 100.0, 100.2, 0.0, 0.0)])
    segs = collect_segments(ArraySource(q, table(1)), interval="raw")
    f = segs[0].features
    assert len(f) == 2 and np.isfinite(f).all()
    assert f[1, 2] == 0.0  # zero sizes: no imbalance
    assert f[1, 0] == pytest.approx(np.log(100.1 / 100.05) * 1e4)
    assert f[1, 3] == pytest.approx(np.log1p(200.0))  # 200 ms since the last two-sided tick


def test_split_by_time_is_chronological():
    segs = collect_segments(SyntheticMarket(SyntheticConfig(n_instruments=1, n_sessions=5, calendar=SMALL.calendar)), interval="1s")
    sp = split_by_time(segs, 0.2, 0.2)
    assert sp.train and sp.val and sp.test
    assert max(s.start_ns for s in sp.train) < min(s.start_ns for s in sp.val) <= max(s.start_ns for s in sp.val) < min(
        s.start_ns for s in sp.test
    )


def test_split_segments_handles_rows_without_a_leading_reset():
    rows = np.zeros(4, dtype=[("ts", "<i8"), ("instrument", "<u4"), ("reset", "u1"), ("mid", "<f8"), ("f", "<f8", (5,))])
    rows["ts"] = [1, 2, 3, 4]
    rows["reset"] = [0, 0, 1, 0]
    assert [len(s.mid) for s in split_segments(rows)] == [2, 2]
