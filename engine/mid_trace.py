"""A bounded record of each instrument's mid, for the report's fills-over-the-mid charts.

A backtest's ticks can run to hundreds of millions; the chart needs a few thousand points per
instrument and the ticks where fills happened. ``MidTrace`` keeps, per instrument, every s-th tick
(by the instrument's own tick index, s a power of two doubled whenever more than ``max_points``
would be kept), every tick where a fill happened, and the instrument's last tick. Memory stays
bounded by ``max_points`` plus the fills, and what is kept depends only on the stream of ticks and
fills, never on how the stream was cut into chunks: s ends as the smallest power of two with
``ceil(ticks / s) <= max_points`` whatever the chunks were.
"""

from __future__ import annotations

import numpy as np

MID_DTYPE = np.dtype([("ts_ns", "<i8"), ("instrument", "<u4"), ("mid", "<f8")])
# Per instrument: the line is drawn from max_points/2 .. max_points evenly spaced ticks (plus fills),
# plenty for a chart a screen wide, and a few hundred KB of Parquet for a whole run.
MAX_MID_POINTS = 20_000

# A kept tick: its place in the whole stream (seq), its index among its instrument's ticks, and
# whether a fill or the end keeps it whatever the stride.
_ROW = np.dtype([("ts_ns", "<i8"), ("instrument", "<u4"), ("mid", "<f8"), ("seq", "<i8"), ("index", "<i8"), ("always", "?")])


class MidTrace:
    """Feed it each batch of ticks the engine ran (``push``) with the fills they made; ``mids()``
    is the decimated trace, in stream (time) order, and ``stride``/``ticks`` say how it was decimated."""

    def __init__(self, max_points: int = MAX_MID_POINTS) -> None:
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, not {max_points}")
        self.max_points = max_points
        self.ticks = np.zeros(0, np.int64)  # ticks seen per instrument
        self.stride = np.ones(0, np.int64)  # keep every stride-th tick per instrument
        self._kept: list[np.ndarray] = []
        self._last = np.zeros(0, _ROW)  # each instrument's newest tick, kept at the end
        self._seq = 0  # ticks pushed so far, all instruments

    def _grow(self, n: int) -> None:
        if n <= len(self.ticks):
            return
        k = n - len(self.ticks)
        self.ticks = np.concatenate([self.ticks, np.zeros(k, np.int64)])
        self.stride = np.concatenate([self.stride, np.ones(k, np.int64)])
        last = np.zeros(k, _ROW)
        last["index"] = -1
        self._last = np.concatenate([self._last, last])

    def push(self, ticks: np.ndarray, fills: np.ndarray | None = None) -> None:
        """``ticks``: quote records (instrument, ts_recv, bid_px, ask_px) in stream order;
        ``fills``: the fills they made (instrument, fill_ts), whose ticks are always kept."""
        n = len(ticks)
        if n == 0:
            return
        inst = ticks["instrument"]
        m = int(inst.max()) + 1
        self._grow(m)
        # The run pays for this on every tick, so few passes touch them all: a stable sort by
        # instrument (on a key as narrow as the instruments allow: numpy sorts 8- and 16-bit keys
        # by radix, in linear time) and a count per instrument; the rest is per kept tick. In sorted order instrument i's ticks are one run from starts[i], the
        # k-th of them has index seen[i] + k, and those with index % stride == 0 are evenly spaced.
        key = inst.astype(np.uint8 if m <= 1 << 8 else np.uint16 if m <= 1 << 16 else np.int64, copy=False)
        order = np.argsort(key, kind="stable")
        counts = np.bincount(key, minlength=m)
        starts = np.cumsum(counts) - counts
        seen, stride = self.ticks[:m].copy(), self.stride[:m]
        first = (-seen) % stride  # rank in the run of the first tick whose index is a multiple of stride
        n_keep = np.where(counts > first, -(-(counts - first) // stride), 0)
        owner = np.repeat(np.arange(m), n_keep)
        k = np.arange(int(n_keep.sum())) - np.repeat(np.cumsum(n_keep) - n_keep, n_keep)
        rank = first[owner] + k * stride[owner]
        pos, index = order[starts[owner] + rank], seen[owner] + rank
        always = np.zeros(len(pos), bool)
        if fills is not None and len(fills):
            # Ticks are in time order: the ticks at a fill's time are one run, found by bisection.
            ts = ticks["ts_recv"]
            lo = np.searchsorted(ts, fills["fill_ts"], side="left")
            span = np.searchsorted(ts, fills["fill_ts"], side="right") - lo
            at = np.repeat(lo - np.r_[0, np.cumsum(span)[:-1]], span) + np.arange(int(span.sum()))
            at = np.unique(at[inst[at] == np.repeat(fills["instrument"], span)])
            if len(at):
                always = np.isin(pos, at)
                at = at[~np.isin(at, pos)]  # a fill's tick the stride did not keep
                # Its index: how many ticks of its instrument come before it in this batch, found
                # in the sorted order, where each instrument's run lists its ticks' places in order.
                at_inst = key[at].astype(np.int64)
                before = np.array([np.searchsorted(order[starts[i]:starts[i] + counts[i]], p) for i, p in zip(at_inst, at)],
                                  dtype=np.int64)
                pos, index = np.r_[pos, at], np.r_[index, seen[at_inst] + before]
                always = np.r_[always, np.ones(len(at), bool)]
        # Rows stay in the order made here; mids() puts them in stream order once, by seq.
        self._kept.append(self._rows(ticks, pos, index, always))
        # The newest tick of each instrument in this batch: the last of its run.
        has = np.flatnonzero(counts)
        last = order[starts[has] + counts[has] - 1]
        self._last[has] = self._rows(ticks, last, seen[has] + counts[has] - 1, np.zeros(len(has), bool))
        self.ticks[:m] += counts
        self._seq += n

        stride = self.stride.copy()
        while np.any(-(-self.ticks // stride) > self.max_points):
            stride = np.where(-(-self.ticks // stride) > self.max_points, stride * 2, stride)
        if np.any(stride != self.stride):
            self.stride = stride
            kept = np.concatenate(self._kept)
            keep = kept["always"] | (kept["index"] % stride[kept["instrument"].astype(np.int64)] == 0)
            self._kept = [kept[keep]]

    def _rows(self, ticks: np.ndarray, pos: np.ndarray, index: np.ndarray, always: np.ndarray) -> np.ndarray:
        rows = np.empty(len(pos), _ROW)
        rows["seq"] = self._seq + pos
        bid, ask = ticks["bid_px"][pos], ticks["ask_px"][pos]
        rows["ts_ns"], rows["instrument"] = ticks["ts_recv"][pos], ticks["instrument"][pos]
        # The engine marks at the mid of two-sided quotes only (a missing side is 0): a one-sided
        # tick has no mid, and the line shows a gap there.
        rows["mid"] = np.where((bid > 0) & (ask > 0), 0.5 * (bid + ask), np.nan)
        rows["index"], rows["always"] = index, always
        return rows

    def mids(self) -> np.ndarray:
        """The kept ticks as ``MID_DTYPE`` (ts_ns, instrument, mid), in stream (time) order, each
        instrument's last tick included."""
        kept = np.concatenate([*self._kept, np.zeros(0, _ROW)])
        last = self._last[self._last["index"] >= 0]
        # The last tick is already there when the stride or a fill kept it.
        rows = np.concatenate([kept, last[~np.isin(last["seq"], kept["seq"])]])
        rows = rows[np.argsort(rows["seq"])]
        out = np.empty(len(rows), MID_DTYPE)
        for name in MID_DTYPE.names:
            out[name] = rows[name]
        return out
