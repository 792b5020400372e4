"""A learned allocation policy: a PCA state, a linear map to scores, softmax weights, trained by the
cross-entropy method (CEM) on the Sharpe of daily portfolio returns.

- **State** at rebalance t: the trailing log return of every instrument over the last ``lookback``
  rebalance periods, log(mark_t / mark_{t-lookback}), embedded by a PCA (scikit-learn, ``k``
  components, whitened) fitted on the training period's states only.
- **Policy**: scores = W z + b (W [n, k], b [n]), weights = gross x softmax(scores) (long-only,
  fully invested at ``gross``), then ``constraints.project`` when a per-asset ``cap`` < 1 binds.
  theta = 0 is equal weight: the CEM's initial mean.
- **Objective**: a vectorized simulator (``simulate``) of the weights held from each mark to the
  next, drifting with prices between rebalances, paying ``cost_bps`` on the turnover
  sum |w_new - w_drifted|; period returns are compounded into UTC-day returns (the day of the mark
  a period ends on) and scored by their Sharpe, mean / std (ddof 1), unannualized, as the engine's
  ``daily_sharpe``.
- **Training** (``train``): days split by time into train / validation / test. CEM (seeded numpy:
  ``population`` draws from a diagonal Gaussian, the best ``elite_frac`` refit it, ``iterations``
  times) maximizes the train objective; after each iteration the Gaussian's mean is scored on
  validation and the best-scoring mean is kept (model selection); the test Sharpe is computed once,
  for the kept parameters, and never chooses anything. Each segment is scored on the marks up to its
  own end only, so nothing later can reach it; the PCA sees only training states.
- **Running it**: ``CEMPolicy`` (a PortfolioStrategy) loads the saved JSON and computes the same
  state and weights from the book's marks at each rebalance, so the engine gives next-tick fills,
  fees and lots where the simulator gave an approximation (marks, no spread, fractional units).

``bench/cem_policy_example.py`` trains one on the synthetic market and runs it in the engine
(README "A learned allocation policy").
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from pathlib import Path

import numpy as np

from engine.domain.timestamps import SECOND_NS
from strategies.allocation.constraints import Constraints, project
from strategies.portfolio import Book, PortfolioStrategy, Targets

FORMAT = "nextick-cem-policy"
VERSION = 1
DAY_NS = 86_400 * SECOND_NS


# --- the policy -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Embedding:
    """A fitted, whitened PCA as plain arrays: z = (x - mean) @ components.T / sqrt(variance)."""

    mean: np.ndarray  # [n]
    components: np.ndarray  # [k, n]
    variance: np.ndarray  # [k], the explained variance of each component

    @classmethod
    def fit(cls, states: np.ndarray, k: int) -> Embedding:
        from sklearn.decomposition import PCA

        x = np.asarray(states, dtype=np.float64)
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= min(x.shape)):
            raise ValueError(f"k must be an int in 1..{min(x.shape)} (instruments, training states), not {k!r}")
        pca = PCA(n_components=int(k), whiten=True, svd_solver="full").fit(x)
        return cls(pca.mean_.copy(), pca.components_.copy(), pca.explained_variance_.copy())

    def __call__(self, states: np.ndarray) -> np.ndarray:
        # Products summed along the last axis, not a matrix product: BLAS may order a row's sum by
        # how many rows it is given, and the engine embeds one row where training embeds thousands;
        # this way a row's bits do not depend on its batch.
        x = np.asarray(states, dtype=np.float64) - self.mean
        return (x[..., None, :] * self.components).sum(axis=-1) / np.sqrt(self.variance)


def trailing_states(marks: np.ndarray, lookback: int) -> np.ndarray:
    """[T, n] marks -> [T, n] trailing log returns over ``lookback`` periods (NaN for t < lookback)."""
    m = np.asarray(marks, dtype=np.float64)
    out = np.full(m.shape, np.nan)
    out[lookback:] = np.log(m[lookback:] / m[:-lookback])
    return out


def policy_weights(theta: np.ndarray, z: np.ndarray, n: int, constraints: Constraints) -> np.ndarray:
    """theta [..., n * (k + 1)] (W row-major, then b), z [T, k] -> weights [..., T, n]."""
    k = z.shape[-1]
    theta = np.asarray(theta, dtype=np.float64)
    W = theta[..., : n * k].reshape(*theta.shape[:-1], n, k)
    b = theta[..., n * k :]
    # Summed along the last axis for the same reason as Embedding.__call__: batch-independent bits.
    scores = (W[..., None, :, :] * z[:, None, :]).sum(axis=-1) + b[..., None, :]
    scores -= scores.max(axis=-1, keepdims=True)  # softmax without overflow
    e = np.exp(scores)
    w = constraints.gross * e / e.sum(axis=-1, keepdims=True)
    if constraints.cap < constraints.gross:
        # The cap can bind: the exact projection, row by row (softmax weights are already long-only
        # and at the target sum, so the projection only moves what exceeds the cap).
        flat = w.reshape(-1, n)
        for r in range(len(flat)):
            flat[r] = project(flat[r], constraints)
        w = flat.reshape(w.shape)
    return w


def simulate(weights: np.ndarray, marks: np.ndarray, cost_bps: float) -> np.ndarray:
    """Period returns of holding weights[..., t, :] from mark t to mark t+1 (cash earns 0), the
    turnover at t against the previous weights drifted by prices, charged ``cost_bps`` of it.
    weights [..., T, n], marks [T + 1, n] -> returns [..., T]."""
    r = np.asarray(marks[1:] / marks[:-1] - 1.0)  # [T, n] simple returns
    w = np.asarray(weights)
    gross = np.einsum("...ti,ti->...t", w, r)
    # What the previous rebalance's weights became by mark t: w (1 + r) / (1 + w.r), 0 before the first.
    drifted = np.zeros_like(w)
    drifted[..., 1:, :] = w[..., :-1, :] * (1.0 + r[:-1]) / (1.0 + gross[..., :-1, None])
    turnover = np.abs(w - drifted).sum(axis=-1)
    return gross - cost_bps * 1e-4 * turnover


def daily_sharpe(period_returns: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Compounded per day (``day``: [T] nondecreasing day numbers), then mean / std (ddof 1) over the
    days; returns [...] (NaN with fewer than 2 days or no variance)."""
    starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    if len(starts) < 2:
        return np.full(period_returns.shape[:-1], np.nan)
    daily = np.expm1(np.add.reduceat(np.log1p(period_returns), starts, axis=-1))
    sd = daily.std(axis=-1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, daily.mean(axis=-1) / sd, np.nan)


# --- training -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CEMConfig:
    k: int = 2  # PCA components of the state
    lookback: int = 6  # rebalance periods in the trailing return
    population: int = 64
    elite_frac: float = 0.2
    iterations: int = 20
    init_std: float = 1.0  # the search's initial std per parameter
    min_std: float = 0.02  # floor on the std, so the search does not collapse early
    cost_bps: float = 1.0  # bps of the notional traded
    seed: int = 0

    def check(self) -> None:
        for name in ("lookback", "population", "iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, not {v!r}")
        if not 0 < self.elite_frac <= 1 or round(self.elite_frac * self.population) < 2:
            raise ValueError(
                f"elite_frac {self.elite_frac!r} of population {self.population} must keep >= 2 elites (0 < frac <= 1)"
            )
        if not (self.init_std > 0 and self.min_std >= 0 and self.cost_bps >= 0):
            raise ValueError("init_std must be > 0, min_std and cost_bps >= 0")


@dataclasses.dataclass
class Split:
    """Day numbers (UTC days since the epoch) of each segment, in time order."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_days(days: np.ndarray, validation_frac: float = 0.2, test_frac: float = 0.2) -> Split:
    """Distinct days in time order: the first ones train, then validation, then test (each >= 2 days)."""
    u = np.unique(days)
    n_val, n_test = round(len(u) * validation_frac), round(len(u) * test_frac)
    n_train = len(u) - n_val - n_test
    if min(n_train, n_val, n_test) < 2:
        raise ValueError(
            f"{len(u)} days give {n_train} train, {n_val} validation and {n_test} test days; each needs >= 2 for a "
            "daily Sharpe: use more sessions or other fractions"
        )
    return Split(u[:n_train], u[n_train : n_train + n_val], u[n_train + n_val :])


@dataclasses.dataclass
class Trained:
    theta: np.ndarray
    embedding: Embedding
    config: CEMConfig
    constraints: Constraints
    sharpe: dict[str, float]  # train, validation, test: the daily Sharpe of the kept parameters
    history: list[dict]  # per iteration: train objective of the mean, its validation Sharpe, elite's best
    best_iteration: int  # 0: the initial mean
    split: Split


class Segment:
    """The marks up to the end of one segment and which of their periods it scores."""

    def __init__(self, marks: np.ndarray, day: np.ndarray, days: np.ndarray, lookback: int) -> None:
        last = int(np.flatnonzero(np.isin(day, days))[-1])
        self.marks = marks[: last + 1]  # nothing after the segment's last mark
        states = trailing_states(self.marks, lookback)
        end_day = day[1 : last + 1]  # period t runs from mark t to mark t + 1, on the day it ends
        self.scored = np.flatnonzero(np.isin(end_day, days) & np.isfinite(states[:-1]).all(axis=1))
        if len(self.scored) < 2:
            raise ValueError(
                f"days {days[0]}..{days[-1]} have {len(self.scored)} periods with a full lookback of {lookback}; "
                "lower lookback or give more marks per day (a shorter rebalance_s)"
            )
        self.states = states[:-1]
        self.day = end_day

    def sharpe(self, theta: np.ndarray, emb: Embedding, c: Constraints, cost_bps: float) -> np.ndarray:
        t0 = self.scored[0]
        z = emb(self.states[t0:])
        w = policy_weights(theta, z, self.marks.shape[1], c)
        p = simulate(w, self.marks[t0:], cost_bps)  # from cash at the segment's first scored period
        keep = self.scored - t0
        return daily_sharpe(p[..., keep], self.day[self.scored])


def train(marks: np.ndarray, ts_ns: np.ndarray, config: CEMConfig = CEMConfig(),
          constraints: Constraints = Constraints(), *, validation_frac: float = 0.2, test_frac: float = 0.2) -> Trained:
    """CEM on the marks [T, n] sampled at each rebalance (``ts_ns`` [T]); see the module doc."""
    config.check()
    if not (constraints.long_only and constraints.net is not None and constraints.net == constraints.gross):
        raise ValueError("the policy is long-only and fully invested: give Constraints(long_only=True, net=gross)")
    m = np.asarray(marks, dtype=np.float64)
    ts = np.asarray(ts_ns, dtype=np.int64)
    if m.ndim != 2 or len(m) != len(ts) or not np.all(m > 0):
        raise ValueError(f"marks must be [T, n] positive prices with one ts_ns each; got {m.shape} and {ts.shape}")
    if np.any(np.diff(ts) <= 0):
        raise ValueError("ts_ns must increase: marks in time order, one per rebalance")
    day = ts // DAY_NS
    split = split_days(day, validation_frac, test_frac)
    seg = {name: Segment(m, day, getattr(split, name), config.lookback) for name in ("train", "validation", "test")}
    tr = seg["train"]
    emb = Embedding.fit(tr.states[tr.scored], config.k)
    n = m.shape[1]
    d = n * (config.k + 1)
    rng = np.random.default_rng(config.seed)
    mean, std = np.zeros(d), np.full(d, config.init_std)
    n_elite = round(config.elite_frac * config.population)

    def score(name: str, theta: np.ndarray) -> float:
        return float(seg[name].sharpe(theta, emb, constraints, config.cost_bps))

    best = (score("validation", mean), 0, mean.copy())
    history = [dict(iteration=0, train=score("train", mean), validation=best[0], elite_best=math.nan)]
    for it in range(1, config.iterations + 1):
        pop = mean + std * rng.standard_normal((config.population, d))
        obj = np.nan_to_num(tr.sharpe(pop, emb, constraints, config.cost_bps), nan=-np.inf)
        elite = pop[np.argsort(-obj, kind="stable")[:n_elite]]
        mean, std = elite.mean(axis=0), np.maximum(elite.std(axis=0), config.min_std)
        val = score("validation", mean)
        history.append(dict(iteration=it, train=score("train", mean), validation=val, elite_best=float(obj.max())))
        if val > best[0] or math.isnan(best[0]):
            best = (val, it, mean.copy())
    theta = best[2]
    sharpe = {name: score(name, theta) for name in ("train", "validation", "test")}
    return Trained(theta, emb, config, constraints, sharpe, history, best[1], split)


def evaluate(marks: np.ndarray, ts_ns: np.ndarray, trained: Trained, theta: np.ndarray | None = None) -> dict[str, float]:
    """The daily Sharpe per segment of ``theta`` (default: the trained one; zeros: equal weight) on
    the trained split, scored as in training. For reporting baselines: it chooses nothing."""
    day = np.asarray(ts_ns, dtype=np.int64) // DAY_NS
    th = trained.theta if theta is None else np.asarray(theta, dtype=np.float64)
    m = np.asarray(marks, dtype=np.float64)
    return {name: float(Segment(m, day, getattr(trained.split, name), trained.config.lookback)
                        .sharpe(th, trained.embedding, trained.constraints, trained.config.cost_bps))
            for name in ("train", "validation", "test")}


def save(trained: Trained, path: str | Path, *, symbols: list[str], rebalance_s: float) -> Path:
    """The policy as JSON (floats written by repr: they read back bit for bit)."""
    t = trained
    doc = dict(
        format=FORMAT, version=VERSION, symbols=list(symbols), rebalance_s=float(rebalance_s),
        lookback=t.config.lookback, theta=t.theta.tolist(),
        embedding=dict(mean=t.embedding.mean.tolist(), components=t.embedding.components.tolist(),
                       variance=t.embedding.variance.tolist()),
        constraints=dataclasses.asdict(t.constraints), config=dataclasses.asdict(t.config),
        sharpe=t.sharpe, best_iteration=t.best_iteration, history=t.history,
        split={k: [int(x) for x in v] for k, v in dataclasses.asdict(t.split).items()},
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=1))
    return p


# --- in the engine --------------------------------------------------------------------------------


class CEMPolicy(PortfolioStrategy):
    """The trained policy on the portfolio seam: ``--strategy strategies.allocation.cem_policy:CEMPolicy
    --param path=runs/cem/policy.json``. At each rebalance it pushes the book's marks into a window of
    ``lookback + 1``; once full and every instrument is tradeable with a price, it answers the
    policy's weights (else None: no change). ``weights`` lists (ts, weights) of every decision."""

    name = "cem_policy"

    def __init__(self, path: str) -> None:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"path {path!r}: cannot read a CEM policy ({e}); train one with bench/cem_policy_example.py") from None
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"path {path!r} is not a {FORMAT} v{VERSION} file; retrain with bench/cem_policy_example.py")
        self.symbols = list(doc["symbols"])
        self.rebalance_ns = round(float(doc["rebalance_s"]) * SECOND_NS)
        self.lookback = int(doc["lookback"])
        self.theta = np.asarray(doc["theta"], dtype=np.float64)
        e = doc["embedding"]
        self.embedding = Embedding(np.asarray(e["mean"]), np.asarray(e["components"]), np.asarray(e["variance"]))
        self.constraints = Constraints(**doc["constraints"])
        self._marks: deque[np.ndarray] = deque(maxlen=self.lookback + 1)
        self.weights: list[tuple[int, np.ndarray]] = []

    def on_start(self, instruments, *, initial_capital: float) -> None:
        if list(instruments.symbols) != self.symbols:
            raise ValueError(
                f"the policy was trained on {', '.join(self.symbols)}; this run has {', '.join(instruments.symbols)}: "
                "run it on the same instruments or retrain"
            )

    def on_rebalance(self, book: Book) -> Targets | None:
        self._marks.append(np.array(book.mid, dtype=np.float64))
        if len(self._marks) <= self.lookback:
            return None
        state = trailing_states(np.vstack([self._marks[0], self._marks[-1]]), 1)[1]
        if not (np.all(np.isfinite(state)) and np.all(book.tradeable)):
            return None
        w = policy_weights(self.theta, self.embedding(state[None]), len(state), self.constraints)[0]
        self.weights.append((book.ts_ns, w))
        return Targets.weights(w)


class MarkRecorder(PortfolioStrategy):
    """Never trades; keeps (ts, marks) at each rebalance where every instrument has a price: the
    training data, sampled exactly as ``CEMPolicy`` will see it in the engine."""

    name = "mark_recorder"

    def __init__(self, rebalance_s: float) -> None:
        if not (isinstance(rebalance_s, (int, float)) and math.isfinite(rebalance_s) and rebalance_s > 0):
            raise ValueError(f"rebalance_s must be > 0 seconds, not {rebalance_s!r}")
        self.rebalance_ns = round(rebalance_s * SECOND_NS)
        self.ts_ns: list[int] = []
        self.marks: list[np.ndarray] = []

    def on_rebalance(self, book: Book) -> None:
        if np.all(book.mid > 0):
            self.ts_ns.append(book.ts_ns)
            self.marks.append(np.array(book.mid, dtype=np.float64))
        return None
