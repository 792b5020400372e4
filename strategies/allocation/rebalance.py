"""``Allocation``: a rebalancing PortfolioStrategy on the portfolio seam (strategies/portfolio.py).

At each rebalance (every ``rebalance_s`` seconds on the UTC clock of the seam) it

1. pushes the book's marks (``book.mid``) into its window (estimators.MarkWindow: returns per
   rebalance period, ``lookback`` of them);
2. picks the universe: instruments that are tradeable now and, for allocators that estimate, have a
   return in every period of the full window (an instrument without one is left alone);
3. calls the allocator (allocators.py, or cvar.mean_cvar on scenarios from the window) under the
   constraints, and answers ``Targets.weights`` on the universe, NaN elsewhere (leave alone);
4. records the turnover: sum |w_new - w_now| over the universe, w_now the positions' weights at
   their marks (``book.weight``), i.e. the fraction of equity it asks to trade.

``allocator="forecast_mv"`` is mean-variance on a model's forecast: the expected return of
instrument i per rebalance period is log(pred_mid_i / mid_i) x rebalance_s / forecast_horizon_s
(estimators.forecast_returns: the model's expected log return over its horizon, scaled linearly to
the period), the covariance Ledoit-Wolf from the window, the weights allocators.mean_variance under
the constraints. ``book.pred_mid`` is the prediction the model (``--model FILE``, any backend: the
SSM on ``cpu``, a zoo ``.onnx`` on ``onnxruntime``) made at the instrument's last tick; an instrument
without one is left alone.

Until the window is full an estimating allocator answers None (no change); equal_weight,
index_proxy and cap_weight need no history and trade from the first rebalance. When the universe
is too small for the cap to reach the net target (cap 0.2 and 3 instruments cannot hold 100%) the
net is lowered to n * cap for that rebalance: the rest stays in cash. Positions on instruments
outside the universe keep their weights and are not counted against the gross limit. A mean_cvar
rebalance whose scenarios cannot reach ``target_return`` changes nothing and is counted
(``infeasible``).

``poll_s`` > 0 decouples the decision from the clock's first tick: the seam then calls every
``poll_s`` seconds, and it rebalances at the first call at or after each multiple of ``rebalance_s``
at which every priced instrument is warm (``book.warm``). A daily or monthly clock on the seam fires
at the first batch after 00:00 UTC, which on a market that is shut at midnight is a session's first
tick, when no other instrument is tradeable yet and the one ticking is in its warm-up: the rebalance
would do nothing until the next period. With ``poll_s=3600`` it waits for the first whole hour at
which the market is up and warm. Calls in between do nothing (not even record a mark), so the
window still holds one return per rebalance period.

``hold=True`` makes it buy-and-hold: it trades at the first rebalance that allocates, then never
again (with ``allocator="index_proxy"`` or ``"cap_weight"``: buy-and-hold of the market proxy).

From the command line::

    nextick backtest --strategy strategies.allocation.rebalance:Allocation \\
        --param allocator=min_variance --param rebalance_s=600 --param lookback=30 --param cap=0.5
    nextick backtest --strategy strategies.allocation.rebalance:Allocation --model runs/tf/model.onnx \
        --backend onnxruntime --param allocator=forecast_mv --param rebalance_s=600 --param cap=0.5
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from engine.domain.timestamps import SECOND_NS
from strategies.allocation import allocators as al
from strategies.allocation import estimators
from strategies.allocation.constraints import Constraints
from strategies.allocation.cvar import InfeasibleTarget, mean_cvar
from strategies.allocation.estimators import MarkWindow, ledoit_wolf, sample_mean
from strategies.allocation.scenarios import GBM, GarchJump, block_bootstrap
from strategies.portfolio import Book, PortfolioStrategy, Targets

# Allocators that need no estimates: they trade from the first rebalance.
NO_HISTORY = ("equal_weight", "index_proxy", "cap_weight")
SCENARIOS = ("historical", "bootstrap", "gbm", "garch_jump")
NAMES = (*al.ALLOCATORS, "mean_cvar", "forecast_mv")


class Allocation(PortfolioStrategy):
    name = "allocation"

    def __init__(
        self,
        allocator: str = "equal_weight",
        rebalance_s: float = 3600.0,
        lookback: int = 20,
        long_only: bool = True,
        cap: float = 1.0,
        gross: float = 1.0,
        net: float | None = 1.0,
        risk_aversion: float = 1.0,
        index: int | str = 0,
        market_cap: Mapping[str, float] | None = None,
        hold: bool = False,
        alpha: float = 0.95,
        target_return: float | None = None,
        scenarios: str = "historical",
        n_scenarios: int = 2000,
        horizon: int = 1,
        seed: int = 0,
        forecast_horizon_s: float = 60.0,
        poll_s: float = 0.0,
    ) -> None:
        """``allocator``: one of NAMES. ``rebalance_s``: the clock, seconds (0: every tick batch).
        ``lookback``: returns (rebalance periods) in the estimation window. ``long_only``, ``cap``,
        ``gross``, ``net``: constraints.Constraints. ``risk_aversion``: mean_variance's lambda, or
        mean_cvar's (with ``target_return`` None). ``index``: index_proxy's instrument (symbol or
        position). ``market_cap``: cap_weight's capitalisations by symbol. ``hold``: buy-and-hold.
        ``alpha``, ``target_return``, ``scenarios`` (historical: the window's returns themselves;
        bootstrap, gbm, garch_jump: scenarios.py fitted to them), ``n_scenarios``, ``horizon``
        (rebalance periods per scenario), ``seed``: mean_cvar's. ``forecast_horizon_s``: forecast_mv's,
        the model's horizon in seconds (horizon ticks x interval; 60 for the packaged model).
        ``poll_s``: see the module doc (0: off)."""
        if allocator not in NAMES:
            raise ValueError(f"allocator {allocator!r} is unknown; give one of {', '.join(NAMES)}")
        if not (isinstance(rebalance_s, (int, float)) and math.isfinite(rebalance_s) and rebalance_s >= 0):
            raise ValueError(f"rebalance_s must be >= 0 seconds (0: every tick batch), not {rebalance_s!r}")
        if scenarios not in SCENARIOS:
            raise ValueError(f"scenarios {scenarios!r} is unknown; give one of {', '.join(SCENARIOS)}")
        if allocator == "cap_weight" and not isinstance(market_cap, Mapping):
            raise ValueError("cap_weight needs market_cap, a mapping {symbol: capitalisation}, e.g. "
                             "--param 'market_cap={\"SYN000\": 3e9, \"SYN001\": 1e9}'")
        if allocator == "forecast_mv" and not rebalance_s > 0:
            raise ValueError("forecast_mv scales the model's forecast to the rebalance period; give rebalance_s > 0")
        if allocator == "forecast_mv":
            estimators.forecast_returns([], [], forecast_horizon_s=forecast_horizon_s, period_s=rebalance_s)  # checks
        if not (isinstance(poll_s, (int, float)) and math.isfinite(poll_s) and 0 <= poll_s):
            raise ValueError(f"poll_s must be >= 0 seconds (0: decide at the clock's first batch), not {poll_s!r}")
        if poll_s > 0 and not (rebalance_s >= poll_s):
            raise ValueError(f"poll_s ({poll_s:g} s) must not exceed rebalance_s ({rebalance_s:g} s); "
                             "poll at least once per rebalance period")
        self.allocator = allocator
        self.rebalance_s = float(rebalance_s)
        self.forecast_horizon_s = float(forecast_horizon_s)
        self.period_ns = round(rebalance_s * SECOND_NS)
        self.poll_ns = round(poll_s * SECOND_NS)
        # With polling the seam calls every poll_s; on_rebalance keeps the period itself.
        self.rebalance_ns = self.poll_ns if self.poll_ns else self.period_ns
        self._last_period: int | None = None
        self.constraints = Constraints(long_only=long_only, cap=cap, gross=gross, net=net)
        self.window = MarkWindow(lookback)
        self.risk_aversion = risk_aversion
        self.index = index
        self.market_cap = dict(market_cap or {})
        self.hold = hold
        self.cvar_args = dict(alpha=alpha, target_return=target_return,
                              risk_aversion=risk_aversion if target_return is None else None)
        self.scenarios, self.n_scenarios, self.horizon, self.seed = scenarios, n_scenarios, horizon, seed
        self.turnover: list[float] = []  # per rebalance that traded: sum |w_new - w_now|
        self.decisions: list[tuple[int, np.ndarray]] = []  # (decision ts, weights; NaN: left alone)
        # forecast_mv: (decision ts, mu and covariance on the universe) per decision
        self.forecasts: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.infeasible = 0  # mean_cvar rebalances skipped: no weights reached target_return
        self._done = False

    def on_rebalance(self, book: Book) -> Targets | None:
        if self.poll_ns:
            period = book.ts_ns // self.period_ns if self.period_ns else book.ts_ns
            priced = np.isfinite(book.mid)
            if period == self._last_period or not priced.any() or not np.all(book.warm[priced]):
                return None  # not a new period yet, or the market is not up and warm: ask again at the next poll
            self._last_period = period
        self.window.push(book.mid)
        if self._done:
            return None
        universe = np.asarray(book.tradeable, dtype=bool).copy()
        needs_history = self.allocator not in NO_HISTORY
        if needs_history:
            if len(self.window) <= self.window.lookback:
                return None  # the window is not full yet
            returns = self.window.returns()
            universe &= np.all(np.isfinite(returns), axis=0)
        if self.allocator == "forecast_mv":
            forecast = estimators.forecast_returns(
                book.pred_mid, book.mid, forecast_horizon_s=self.forecast_horizon_s, period_s=self.rebalance_s
            )
            universe &= np.isfinite(forecast)  # no model, or no prediction yet: left alone
        if not universe.any():
            return None
        idx = np.flatnonzero(universe)
        c = self._constraints_for(len(idx))
        w_universe = self._allocate(book, idx, returns[:, idx] if needs_history else None, c,
                                    forecast if self.allocator == "forecast_mv" else None)
        if w_universe is None:
            return None
        w = np.full(len(book), np.nan)
        w[idx] = w_universe
        self.turnover.append(float(np.abs(w_universe - book.weight[idx]).sum()))
        self.decisions.append((book.ts_ns, w))
        self._done = self.hold
        return Targets.weights(w)

    @property
    def mean_turnover(self) -> float:
        """Mean of ``turnover`` over the rebalances that traded (NaN before the first)."""
        return float(np.mean(self.turnover)) if self.turnover else math.nan

    def _constraints_for(self, n: int) -> Constraints:
        c = self.constraints
        if c.net is not None and abs(c.net) > n * c.cap:
            return dataclasses.replace(c, net=math.copysign(n * c.cap, c.net))
        return c

    def _allocate(self, book: Book, idx: np.ndarray, returns: np.ndarray | None, c: Constraints,
                  forecast: np.ndarray | None = None) -> np.ndarray | None:
        n = len(idx)
        name = self.allocator
        if name == "equal_weight":
            return al.equal_weight(np.zeros(n), None, c)
        if name == "index_proxy":
            k = self._index_in(book, idx)
            return None if k is None else al.index_proxy(np.zeros(n), None, c, index=k)
        if name == "cap_weight":
            caps = np.array([float(self.market_cap.get(book.symbols[i], 0.0)) for i in idx])
            return al.cap_weight(caps, None, c)
        assert returns is not None
        if name == "momentum":
            trailing = np.expm1(np.log1p(returns).sum(axis=0))
            return al.momentum(trailing, None, c)
        if name == "mean_cvar":
            try:
                return mean_cvar(self._scenarios(returns), constraints=c, **self.cvar_args).weights
            except InfeasibleTarget:
                # The window's scenarios cannot reach target_return: keep the book as it is.
                self.infeasible += 1
                return None
        if name == "forecast_mv":
            cov = ledoit_wolf(returns)
            self.forecasts.append((book.ts_ns, forecast[idx], cov))
            return al.mean_variance(forecast[idx], cov, c, risk_aversion=self.risk_aversion)
        mu, cov = sample_mean(returns), ledoit_wolf(returns)
        if name == "mean_variance":
            return al.mean_variance(mu, cov, c, risk_aversion=self.risk_aversion)
        return al.ALLOCATORS[name](mu, cov, c)

    def _index_in(self, book: Book, idx: np.ndarray) -> int | None:
        """index_proxy's instrument as a position in the universe; None when it is not tradeable now
        (no change: the projection would otherwise spread the book over the other instruments)."""
        i = self.index
        if isinstance(i, str):
            if i not in book.symbols:
                raise ValueError(f"index {i!r} is not an instrument; give one of {', '.join(book.symbols)}")
            i = book.symbols.index(i)
        if not (isinstance(i, (int, np.integer)) and 0 <= i < len(book)):
            raise ValueError(f"index must be a symbol or an instrument position 0..{len(book) - 1}, not {i!r}")
        where = np.flatnonzero(idx == i)
        return int(where[0]) if len(where) else None

    def _scenarios(self, returns: np.ndarray) -> np.ndarray:
        kind, S, h, seed = self.scenarios, self.n_scenarios, self.horizon, self.seed
        if kind == "historical":
            return returns
        if kind == "bootstrap":
            return block_bootstrap(returns, S, horizon=h, block_len=min(5, len(returns)), seed=seed)
        if kind == "gbm":
            return GBM.fit(returns).sample(S, horizon=h, seed=seed)
        return GarchJump.fit(returns).sample(S, horizon=h, seed=seed)
