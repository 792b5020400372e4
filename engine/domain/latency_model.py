"""Latency models: a distribution of delays (ns) and a deterministic, counter-based draw from it.

A ``LatencyDistribution`` is a sorted table of quantiles: entry ``i`` is the ``(i + 0.5) / n`` quantile
of the model, so a uniform index into the table is a draw from the model discretized to ``n`` equal
masses (``N_QUANTILES`` = 1,024 of them, or one value for a constant). Models:

    constant(ns)                 "const:5ms"
    lognormal(median_ns, sigma)  "lognormal:2ms,0.5"
    empirical(samples_ns)        "empirical:PATH"  the quantiles of observed delays
    feed_latency_from(quotes)    (ts_recv - ts_event) of a recording's quotes whose venue stamped ts_event
                                 "empirical:PATH" reads a recording this way
    ... floor=True               the same less its smallest value                   "jitter:PATH"

Negative delays are clock skew between the venue's clock and ours, not time travel: they are clipped
to 0 and counted, never dropped, so every sample keeps its rank and each quantile above the negative
share is the raw samples' own (dropping them would shift every quantile up). A table never holds a
negative delay, so a latency added to a time never moves it back.

A recording whose capture clock is offset from the venue's by more than the delay (the Binance USD-M
raw captures in the project's test data: every receive time is ~1.27 s before its event time) gives
only negative delays; ``empirical:`` refuses it. ``jitter:`` subtracts the recording's smallest delay
(offset plus the fastest quote's true delay, which the recording cannot tell apart) and so models
the delay above the fastest quote: a lower bound on the true delay that keeps its shape.

The draw is counter-based: the ``k``-th draw of ``instrument`` under ``seed`` hashes (seed, instrument,
k) with splitmix64's finalizer and maps the top 32 bits onto the table (``draw_index``). It depends on
nothing else: not on other instruments' draws, not on how the draws are batched, not on the order
they are asked for. csrc/latency.hpp computes the same bits (tests/cpp/latency_draws.cpp checks it).
Feed and order latency draw from separate streams of one user seed (``stream_seed``) so that the
same (instrument, k) does not take the same quantile rank in both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from engine.domain.quote import QUOTE_DTYPE, QuoteFlag
from engine.domain.timestamps import MS_NS, SECOND_NS, US_NS, parse_duration_ns

N_QUANTILES = 1024
MAX_TABLE = 1 << 32  # the index maps 32 hash bits onto the table

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB

# Streams of one latency seed (stream_seed).
FEED_STREAM = 1
ORDER_STREAM = 2

SPEC_HELP = 'const:5ms, lognormal:MEDIAN,SIGMA (lognormal:2ms,0.5), empirical:PATH or jitter:PATH (units ns, us, ms, s)'


def mix64(z: int) -> int:
    """splitmix64's finalizer: a bijection of uint64 that scatters every input bit over the output."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _mix64_array(z: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps modulo 2**64, as C++'s does.
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def stream_seed(seed: int, stream: int) -> int:
    """The seed of one stream (``FEED_STREAM``, ``ORDER_STREAM``) of the user's latency seed."""
    return mix64((seed & _MASK) ^ mix64(stream * _GOLDEN))


def draw_index(seed: int, instrument: int, k: int, n: int) -> int:
    """The table index of the ``k``-th draw of ``instrument`` from a table of ``n`` entries."""
    h = mix64((seed & _MASK) + _GOLDEN)
    h = mix64(h ^ ((instrument + _GOLDEN) & _MASK))
    h = mix64(h ^ ((k + _GOLDEN) & _MASK))
    return ((h >> 32) * n) >> 32


def draw_indices(seed: int, instruments: np.ndarray, ks: np.ndarray, n: int) -> np.ndarray:
    """``draw_index`` for many (instrument, k) pairs at once (broadcast), bit for bit."""
    h_seed = np.uint64(mix64((seed & _MASK) + _GOLDEN))
    inst = np.asarray(instruments).astype(np.uint64)
    k = np.asarray(ks).astype(np.uint64)
    h = _mix64_array(h_seed ^ (inst + np.uint64(_GOLDEN)))
    h = _mix64_array(h ^ (k + np.uint64(_GOLDEN)))
    return (((h >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)).astype(np.int64)


def format_latency_ns(ns: int) -> str:
    """A delay for a summary: 850 ns, 42.5 us, 2.25 ms, 1.3 s."""
    for unit, scale in (("s", SECOND_NS), ("ms", MS_NS), ("us", US_NS)):
        if abs(ns) >= scale:
            return f"{ns / scale:.4g} {unit}"
    return f"{int(ns)} ns"


class LatencyDistribution:
    """A latency model: ``quantiles_ns`` (sorted int64 ns, >= 0) and what it is, in words.

    ``n_samples`` and ``excluded`` say what an empirical model was made of: the samples used and,
    by reason, the rows left out or altered (``synthetic_ts``: no venue time; ``negative_clipped``:
    clock skew, kept at 0)."""

    __slots__ = ("description", "excluded", "n_samples", "quantiles_ns")

    def __init__(self, quantiles_ns: np.ndarray | list[int], description: str, *, n_samples: int = 0,
                 excluded: dict[str, int] | None = None) -> None:
        q = np.ascontiguousarray(quantiles_ns, dtype=np.int64)
        if q.ndim != 1 or not 0 < len(q) < MAX_TABLE:
            raise ValueError(f"{description}: a latency table needs 1 to {MAX_TABLE - 1} values, got shape {q.shape}")
        if q[0] < 0 or np.any(np.diff(q) < 0):
            raise ValueError(f"{description}: a latency table must be sorted and >= 0")
        q.setflags(write=False)
        self.quantiles_ns = q
        self.description = description
        self.n_samples = int(n_samples)
        self.excluded = dict(excluded or {})

    # -- models

    @classmethod
    def constant(cls, ns: int) -> LatencyDistribution:
        if ns < 0:
            raise ValueError(f"a constant latency must be >= 0 ns, got {ns}")
        return cls([int(ns)], f"constant {format_latency_ns(int(ns))}")

    @classmethod
    def lognormal(cls, median_ns: float, sigma: float, n: int = N_QUANTILES) -> LatencyDistribution:
        """exp(N(log median, sigma**2)) ns: the usual shape of network delay (a floor and a long right tail)."""
        from scipy.special import ndtri

        if not (np.isfinite(median_ns) and median_ns > 0):
            raise ValueError(f"lognormal latency: the median must be > 0 ns, got {median_ns}")
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"lognormal latency: sigma must be >= 0, got {sigma}")
        z = ndtri((np.arange(n) + 0.5) / n)
        q = np.rint(median_ns * np.exp(sigma * z)).astype(np.int64)
        return cls(q, f"lognormal median {format_latency_ns(round(median_ns))} sigma {sigma:g}")

    @classmethod
    def empirical(cls, samples_ns: np.ndarray | list[int], *, source: str = "samples", n: int = N_QUANTILES,
                  excluded: dict[str, int] | None = None) -> LatencyDistribution:
        """The quantiles of observed delays (each one an observed value); negatives are clipped to 0 and counted."""
        s = np.asarray(samples_ns).ravel()
        if len(s) == 0:
            raise ValueError(f"{source}: no latency samples; an empirical model needs at least one")
        if s.dtype.kind not in "iu":
            raise ValueError(f"{source}: latency samples must be integer ns, got dtype {s.dtype}")
        s = s.astype(np.int64)
        negative = int(np.count_nonzero(s < 0))
        if negative == len(s):
            raise ValueError(
                f"{source}: all {len(s):,} latency samples are negative (receive before event): the two clocks "
                "disagree by more than the delay; model the delay above the fastest quote with jitter:PATH, or use "
                "const: or lognormal:"
            )
        s = np.sort(np.maximum(s, 0))
        # Inverted CDF at the table's masses: the smallest sample whose rank reaches (i + 0.5) / n.
        rank = np.ceil((np.arange(n) + 0.5) / n * len(s)).astype(np.int64) - 1
        out = dict(excluded or {})
        if negative:
            out["negative_clipped"] = negative
        return cls(s[np.clip(rank, 0, len(s) - 1)], f"empirical {source} ({len(s):,} samples)",
                   n_samples=len(s), excluded=out)

    @classmethod
    def from_spec(cls, spec: str, *, read_quotes: Callable[[Path], Iterable[np.ndarray]] | None = None) -> LatencyDistribution:
        """A model from its text form (``SPEC_HELP``). ``empirical:PATH`` reads a .npy of int64 ns
        delays or of ``QUOTE_DTYPE`` quotes here; any other recording through ``read_quotes`` (path ->
        quote chunks; ``feeds.restamp.latency_from_spec`` passes the project's readers); ``jitter:PATH``
        the same, less the smallest delay (``feed_latency_from(floor=True)``)."""
        kind, arg = parse_spec(spec)
        if kind == "const":
            return cls.constant(arg)
        if kind == "lognormal":
            return cls.lognormal(*arg)
        path = Path(arg)
        if not path.exists():
            raise ValueError(f"latency spec {spec!r}: {path}: no such file or folder")
        floor = kind == "jitter"
        if path.suffix == ".npy":
            return _from_npy(path, floor)
        if read_quotes is None:
            raise ValueError(
                f"latency spec {spec!r}: {path} is not a .npy of delays or quotes; read other recordings with "
                "feeds.restamp.latency_from_spec"
            )
        return feed_latency_from(read_quotes(path), source=path.name, floor=floor)

    # -- reading

    @property
    def n(self) -> int:
        return len(self.quantiles_ns)

    def percentile_ns(self, p: float) -> int:
        """The table entry at percentile ``p`` (0-100): entry floor(p / 100 * n), the last for 100."""
        return int(self.quantiles_ns[min(self.n - 1, int(p / 100.0 * self.n))])

    @property
    def median_ns(self) -> int:
        return self.percentile_ns(50)

    def draw(self, seed: int, instrument: int, k: int) -> int:
        """The ``k``-th delay of ``instrument`` under ``seed``, ns."""
        return int(self.quantiles_ns[draw_index(seed, instrument, k, self.n)])

    def draw_many(self, seed: int, instruments: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """``draw`` for many (instrument, k) pairs at once: int64 ns."""
        return self.quantiles_ns[draw_indices(seed, instruments, ks, self.n)]

    def summary(self) -> dict[str, object]:
        """What the run summary says of the model."""
        d: dict[str, object] = {"model": self.description, "p50_ns": self.median_ns, "p99_ns": self.percentile_ns(99),
                                "table_size": self.n}
        if self.n_samples:
            d["samples"] = self.n_samples
        if self.excluded:
            d["excluded"] = dict(self.excluded)
        return d

    def describe(self) -> str:
        if self.n == 1:
            return self.description
        return (f"{self.description}, p50 {format_latency_ns(self.median_ns)}, "
                f"p99 {format_latency_ns(self.percentile_ns(99))}")

    def __repr__(self) -> str:
        return f"LatencyDistribution({self.describe()!r})"


def parse_spec(spec: str) -> tuple[str, object]:
    """``spec`` checked without reading any file: ("const", ns), ("lognormal", (median_ns, sigma))
    or ("empirical" | "jitter", path text). Raises a ValueError that shows the accepted forms."""
    kind, sep, arg = str(spec).partition(":")
    kind = kind.strip().lower()
    try:
        if sep and kind in ("const", "constant"):
            return "const", parse_duration_ns(arg)
        if sep and kind == "lognormal":
            median, comma, sigma = arg.partition(",")
            if not comma:
                raise ValueError("give the median and sigma: lognormal:2ms,0.5")
            median_ns, sigma_f = parse_duration_ns(median), float(sigma)
            if median_ns <= 0 or not (np.isfinite(sigma_f) and sigma_f >= 0):
                raise ValueError("the median must be > 0 and sigma >= 0")
            return "lognormal", (median_ns, sigma_f)
        if sep and kind in ("empirical", "jitter") and arg.strip():
            return kind, arg.strip()
    except ValueError as e:
        raise ValueError(f"latency spec {spec!r}: {e}") from None
    raise ValueError(f"latency spec {spec!r}: write {SPEC_HELP}")


def _from_npy(path: Path, floor: bool) -> LatencyDistribution:
    arr = np.load(path, allow_pickle=False, mmap_mode="r")
    if arr.dtype.names is not None and set(QUOTE_DTYPE.names) <= set(arr.dtype.names):
        return feed_latency_from([arr], source=path.name, floor=floor)
    if arr.dtype.kind in "iu" and arr.ndim == 1:
        samples = np.asarray(arr, dtype=np.int64)
        return _floored(samples, path.name) if floor and len(samples) else LatencyDistribution.empirical(samples, source=path.name)
    raise ValueError(f"{path}: holds {arr.dtype} with shape {arr.shape}; give int64 ns delays (1-D) or QUOTE_DTYPE quotes")


def _floored(samples_ns: np.ndarray, source: str, excluded: dict[str, int] | None = None) -> LatencyDistribution:
    floor_ns = int(samples_ns.min())
    d = LatencyDistribution.empirical(samples_ns - floor_ns, source=source, excluded=excluded)
    d.description = f"jitter {source} ({d.n_samples:,} samples less their minimum {format_latency_ns(floor_ns)})"
    return d


def feed_latency_from(quotes: np.ndarray | Iterable[np.ndarray], *, source: str = "quotes",
                      floor: bool = False) -> LatencyDistribution:
    """The feed-latency model of one recording: the (ts_recv - ts_event) of its rows whose ts_event
    the venue gave. Rows flagged ``SYNTHETIC_TS`` (ts_event copied from ts_recv) are left out and
    counted as ``synthetic_ts``; negative delays are clipped to 0 and counted (module docstring).
    ``quotes``: one ``QUOTE_DTYPE`` array or an iterable of chunks (a source's ``chunks()``). ``floor``:
    the delays less their minimum (the jitter model, module docstring)."""
    chunks = [quotes] if isinstance(quotes, np.ndarray) else quotes
    parts: list[np.ndarray] = []
    synthetic = rows = 0
    for chunk in chunks:
        real = (np.asarray(chunk["flags"]) & int(QuoteFlag.SYNTHETIC_TS)) == 0
        rows += len(real)
        synthetic += int(len(real) - np.count_nonzero(real))
        parts.append(np.asarray(chunk["ts_recv"])[real].astype(np.int64) - np.asarray(chunk["ts_event"])[real])
    if synthetic == rows:
        raise ValueError(
            f"{source}: none of its {rows:,} rows has a venue ts_event (all are synthetic_ts), so it records no "
            "feed latency; use a recording whose venue stamps its quotes, or const: / lognormal:"
        )
    excluded = {"synthetic_ts": synthetic} if synthetic else {}
    samples = np.concatenate(parts)
    if floor:
        return _floored(samples, source, excluded)
    return LatencyDistribution.empirical(samples, source=source, excluded=excluded)
