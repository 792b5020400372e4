"""Signal decay: how the model's surprise correlates with realized returns before and after it.

Each instrument's ticks are resampled to bars of ``resolution_ns`` (100 ms, 1 s, 1 min, 5 min:
``RESOLUTIONS_NS``; any positive width works), aligned to multiples of the width in UTC ns. A
bar's values are those of the last tick in it; a bar with no tick carries the previous bar's
values (the price did not move, the model said nothing new), so bars are a regular grid and a lag
of k bars is k widths of time. Bars never span a segment: ``segment_id`` changes where the
instrument's state was reset (session open, gap, reconnect), a bar holding ticks of two segments is
split into one per segment, nothing is carried across the change, and no return is taken across
it. A segment's grid runs from the bar of its first tick to the bar of its last (a segment over a
long span at a fine resolution makes a long grid: a day at 100 ms is 864,000 bars).

On bar t of a segment::

    surprise_t = log(pred_mid_t / mid_t)              what the model expects beyond the mid
    r_t        = log(mid_t / mid_{t-1})               the bar's realized log return (t >= 1)

and at lag k the profile pairs surprise_t with r_{t+k} wherever bars t, t+k-1 and t+k are in one
segment: k = +1 is the next bar's return (what the prediction is for), k <= 0 returns already
known when it was made. Per instrument, the Pearson correlation of the pairs at each lag; the
profile is the equal-weighted mean over instruments. An instrument is used only if it has at least
``min_bars`` pairs and a defined correlation (both sides varying) at every lag, so that each lag
averages the same instruments; the others are skipped and counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec
import numpy as np

from engine.domain.timestamps import MINUTE_NS, MS_NS, SECOND_NS
from engine.study._inputs import StudyInputError, float_array, positive_int

RESOLUTIONS_NS: dict[str, int] = {"100ms": 100 * MS_NS, "1s": SECOND_NS, "1min": MINUTE_NS, "5min": 5 * MINUTE_NS}
DEFAULT_LAGS = tuple(range(-5, 6))


def resolution_label(resolution_ns: int) -> str:
    """"100ms", "1s", "1min", "5min" for the usual widths; else the width in ns, e.g. "250000000ns"."""
    for label, ns in RESOLUTIONS_NS.items():
        if ns == resolution_ns:
            return label
    return f"{int(resolution_ns)}ns"


class Bars(msgspec.Struct, frozen=True):
    """One instrument's bars, in time order, segment after segment (arrays of one length).

    ``carried`` marks bars with no tick of their own; ``log_return`` is nan on each segment's
    first bar (there is no earlier bar in the segment to take it from)."""

    bar_start_ns: np.ndarray
    segment_id: np.ndarray
    mid: np.ndarray
    pred_mid: np.ndarray
    carried: np.ndarray
    log_return: np.ndarray
    surprise: np.ndarray


class LagProfile(msgspec.Struct, frozen=True):
    """The surprise/return correlation at each lag (see the module docstring).

    ``corr[j]`` is the mean over the ``n_instruments`` used instruments at ``lags[j]`` (nan when
    none was used), ``n_bars[j]`` the pairs behind it summed over them; ``n_skipped`` instruments
    had too few pairs or no variance."""

    resolution_ns: int
    lags: tuple[int, ...]
    corr: tuple[float, ...]
    n_bars: tuple[int, ...]
    n_instruments: int
    n_skipped: int


def _int_array(x, name: str, hint: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise StudyInputError(f"{name} must be 1-D ({hint}), got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise StudyInputError(f"{name} must be integers ({hint}), got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _resample(ts: np.ndarray, mid: np.ndarray, pred: np.ndarray, seg: np.ndarray, res: int) -> Bars:
    """Bars of one instrument's ticks, already checked and in time order."""
    bar = ts // res
    # The last tick of each run of ticks sharing a bar and a segment.
    brk = (bar[1:] != bar[:-1]) | (seg[1:] != seg[:-1])
    last = np.append(np.flatnonzero(brk), ts.size - 1)
    b, s = bar[last], seg[last]
    bounds = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1, [b.size]))
    src_parts, grid_parts, seg_parts, first_parts = [], [], [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        b0 = b[lo]
        length = int(b[hi - 1] - b0) + 1
        src = np.full(length, -1, dtype=np.int64)
        src[b[lo:hi] - b0] = np.arange(lo, hi)
        src_parts.append(np.maximum.accumulate(src))  # an empty bar takes the last filled one's tick
        grid_parts.append(b0 + np.arange(length, dtype=np.int64))
        seg_parts.append(np.full(length, s[lo], dtype=np.int64))
        first = np.zeros(length, dtype=bool)
        first[0] = True
        first_parts.append(first)
    src = np.concatenate(src_parts)
    grid = np.concatenate(grid_parts)
    tick = last[src]
    m, p = mid[tick], pred[tick]
    log_mid = np.log(m)
    ret = np.empty(m.size)
    ret[0] = math.nan
    ret[1:] = np.diff(log_mid)
    ret[np.concatenate(first_parts)] = math.nan  # never a return across a segment change
    carried = np.ones(grid.size, dtype=bool)
    carried[np.flatnonzero(np.diff(src, prepend=-1) != 0)] = False
    return Bars(
        bar_start_ns=grid * res,
        segment_id=np.concatenate(seg_parts),
        mid=m,
        pred_mid=p,
        carried=carried,
        log_return=ret,
        surprise=np.log(p) - log_mid,
    )


def _check_ticks(ts_ns, instrument, mid, pred_mid, segment_id, resolution_ns):
    ts = _int_array(ts_ns, "ts_ns", "UTC nanoseconds, one per tick")
    inst = _int_array(instrument, "instrument", "the instrument index of each tick")
    seg = _int_array(segment_id, "segment_id", "the state segment of each tick: it changes at each reset")
    m = float_array(mid, "mid", 1, positive=True, shape_hint="the mid of each tick")
    p = float_array(pred_mid, "pred_mid", 1, positive=True,
                    shape_hint="the model's predicted mid at each tick; drop ticks without a prediction first")
    for name, arr in (("instrument", inst), ("mid", m), ("pred_mid", p), ("segment_id", seg)):
        if arr.shape != ts.shape:
            raise StudyInputError(f"{name} has {arr.size} entries but ts_ns has {ts.size}; pass one per tick")
    res = positive_int(resolution_ns, "resolution_ns", "the bar width in ns, e.g. RESOLUTIONS_NS['1s']")
    return ts, inst, m, p, seg, res


def resample_bars(ts_ns, mid, pred_mid, segment_id, resolution_ns: int) -> Bars:
    """One instrument's ticks as bars of ``resolution_ns`` (see the module docstring). Ticks must
    be in time order, and a segment's ticks contiguous; each failure is a ``StudyInputError``."""
    ts, _, m, p, seg, res = _check_ticks(ts_ns, np.zeros(np.shape(ts_ns), np.int64), mid, pred_mid, segment_id, resolution_ns)
    if ts.size == 0:
        raise StudyInputError("ts_ns is empty: an instrument needs at least one tick to make a bar")
    _order_checked(ts, seg, np.arange(ts.size), None)
    return _resample(ts, m, p, seg, res)


def _order_checked(ts: np.ndarray, seg: np.ndarray, idx: np.ndarray, u: int | None) -> None:
    of = "" if u is None else f" of instrument {u}"
    back = np.flatnonzero(np.diff(ts) < 0)
    if back.size:
        i, j = int(idx[back[0]]), int(idx[back[0] + 1])
        raise StudyInputError(
            f"ts_ns goes back in time{of}: ts_ns[{j}] = {ts[back[0] + 1]} < ts_ns[{i}] = {ts[back[0]]}; "
            "pass the ticks in time order"
        )
    runs = seg[np.concatenate(([True], seg[1:] != seg[:-1]))]
    if np.unique(runs).size != runs.size:
        values, counts = np.unique(runs, return_counts=True)
        again = int(values[np.flatnonzero(counts > 1)[0]])
        raise StudyInputError(
            f"segment_id {again}{of} comes back after another segment; give each reset a new id "
            "(e.g. a running count of resets)"
        )


def _pairs(bars: Bars, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(surprise_t, r_{t+k}) for every t with t+k-1 and t+k in t's segment."""
    s, r, g = bars.surprise, bars.log_return, bars.segment_id
    n = s.size
    if abs(k) >= n:
        return s[:0], r[:0]
    if k >= 0:
        a, b, same = s[: n - k], r[k:], g[: n - k] == g[k:]
    else:
        a, b, same = s[-k:], r[: n + k], g[-k:] == g[: n + k]
    ok = same & np.isfinite(b)  # r is nan on a segment's first bar, so t+k-1 is in the segment too
    return a[ok], b[ok]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - a.mean(), b - b.mean()
    saa, sbb = float(np.dot(da, da)), float(np.dot(db, db))
    if saa == 0.0 or sbb == 0.0:
        return math.nan
    return max(-1.0, min(1.0, float(np.dot(da, db)) / math.sqrt(saa * sbb)))


def lag_profile(ts_ns, instrument, mid, pred_mid, segment_id, resolution_ns: int,
                lags: Iterable[int] = DEFAULT_LAGS, *, min_bars: int = 30) -> LagProfile:
    """Correlation of the model's surprise with realized returns at each of ``lags`` bars of
    ``resolution_ns``, equal-weighted over instruments (see the module docstring).

    One entry per tick in each 1-D array: ``ts_ns`` (int ns), ``instrument`` (int index), ``mid``
    and ``pred_mid`` (> 0), ``segment_id`` (int, changing at each reset of the instrument). Ticks
    of different instruments may interleave; each instrument's must be in time order. Raises
    ``StudyInputError`` naming the argument otherwise.
    """
    ts, inst, m, p, seg, res = _check_ticks(ts_ns, instrument, mid, pred_mid, segment_id, resolution_ns)
    lag_list = [int(k) for k in lags]
    if not lag_list or len(set(lag_list)) != len(lag_list):
        raise StudyInputError(f"lags must be distinct integers, at least one, got {lag_list}")
    need = positive_int(min_bars, "min_bars", "the fewest pairs an instrument needs at every lag to count")
    corr_sum = np.zeros(len(lag_list))
    n_bars = np.zeros(len(lag_list), dtype=np.int64)
    used = skipped = 0
    by_inst = np.argsort(inst, kind="stable")  # stable: each instrument's ticks keep their order
    cuts = np.flatnonzero(np.diff(inst[by_inst])) + 1
    for idx in np.split(by_inst, cuts) if inst.size else []:
        u = int(inst[idx[0]])
        _order_checked(ts[idx], seg[idx], idx, u)
        bars = _resample(ts[idx], m[idx], p[idx], seg[idx], res)
        pairs = [_pairs(bars, k) for k in lag_list]
        corrs = [_corr(a, b) if a.size >= need else math.nan for a, b in pairs]
        if any(math.isnan(c) for c in corrs):
            skipped += 1
            continue
        used += 1
        corr_sum += corrs
        n_bars += [a.size for a, _ in pairs]
    corr = corr_sum / used if used else np.full(len(lag_list), math.nan)
    return LagProfile(
        resolution_ns=res,
        lags=tuple(lag_list),
        corr=tuple(float(c) for c in corr),
        n_bars=tuple(int(c) for c in n_bars),
        n_instruments=used,
        n_skipped=skipped,
    )
