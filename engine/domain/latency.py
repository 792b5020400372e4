"""Latency histograms: fixed memory, about 1.6% resolution, percentiles on demand.

A value v (ns) falls in bucket ``e * 64 + (v >> e)`` with ``e = max(0, bit_length(v) - 7)``: exact below
128 ns, then 64 buckets per power of two. ``add`` only appends to a list (tens of ns, so the live path
can stamp every quote); the list is binned in one vectorized pass once it holds ``_BIN_EVERY`` values or
when a percentile is asked for, so a run of any length uses the same few kilobytes.
"""

from __future__ import annotations

import numpy as np

_SUB = 64
_BIN_EVERY = 8192
_N_BUCKETS = 64 * _SUB + 2 * _SUB


def _bucket(v: np.ndarray) -> np.ndarray:
    v = np.maximum(v, 0)
    e = np.maximum(np.frexp(v.astype(np.float64))[1] - 7, 0)
    return (e * _SUB + (v >> e)).astype(np.int64)


def _upper(idx: np.ndarray) -> np.ndarray:
    """The largest value in each bucket: percentiles are reported on the safe side."""
    idx = np.asarray(idx, dtype=np.int64)
    e = np.maximum(idx // _SUB - 1, 0)
    m = idx - e * _SUB
    return ((m + 1) << e) - 1


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts = np.zeros(_N_BUCKETS, dtype=np.int64)
        self._n = 0
        self._max_ns = 0
        self.sum_ns = 0
        self._pending: list[int] = []

    def add(self, value_ns: int) -> None:
        """One sample; cheap enough for every quote."""
        self._pending.append(value_ns)
        if len(self._pending) >= _BIN_EVERY:
            self._bin()

    def record(self, values_ns: np.ndarray | list[int] | int) -> None:
        """Many samples at once."""
        self._bin()
        self._record(np.atleast_1d(np.asarray(values_ns, dtype=np.int64)))

    def _bin(self) -> None:
        if self._pending:
            v = np.asarray(self._pending, dtype=np.int64)
            self._pending = []
            self._record(v)

    def _record(self, v: np.ndarray) -> None:
        if len(v) == 0:
            return
        self.counts += np.bincount(_bucket(v), minlength=_N_BUCKETS)
        self._n += len(v)
        self._max_ns = max(self._max_ns, int(v.max()))
        self.sum_ns += int(np.maximum(v, 0).sum())

    @property
    def n(self) -> int:
        return self._n + len(self._pending)

    @property
    def max_ns(self) -> int:
        self._bin()
        return self._max_ns

    def percentile(self, p: float) -> float:
        """The value at percentile ``p`` (0-100), in ns; NaN when empty."""
        self._bin()
        if self.n == 0:
            return float("nan")
        rank = max(1, int(np.ceil(p / 100.0 * self.n)))
        idx = int(np.searchsorted(np.cumsum(self.counts), rank))
        return float(min(_upper(idx), self.max_ns))

    def summary(self) -> dict[str, float]:
        """count, p50, p90, p99, p99.9 and max, in microseconds."""
        out = {"count": self.n}
        for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
            out[name] = self.percentile(p) / 1e3
        out["max"] = self.max_ns / 1e3 if self.n else float("nan")
        return out

    def merge(self, other: "LatencyHistogram") -> None:
        self._bin()
        other._bin()
        self.counts += other.counts
        self._n += other._n
        self._max_ns = max(self._max_ns, other._max_ns)
        self.sum_ns += other.sum_ns


# The stages of the live path, in order (DESIGN.md "Latency stamps").
STAGES = (
    "decode",  # frame read -> quote rows
    "queue",  # decoded -> the engine picks the batch up
    "state",  # validation, conflation, sessions, resets, fills, marks
    "signal",  # features and SSM step
    "decision",  # strategy
    "order",  # orders placed
    "recv_to_decision",  # end to end: frame read -> decision
    "recv_to_order",
)


class StageLatency:
    """One histogram per stage."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.stages = {s: LatencyHistogram() for s in stages}

    def __getitem__(self, stage: str) -> LatencyHistogram:
        return self.stages[stage]

    def summary(self) -> dict[str, dict[str, float]]:
        return {s: h.summary() for s, h in self.stages.items() if h.n}
