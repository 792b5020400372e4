"""Mean-CVaR: the Rockafellar-Uryasev linear program over return scenarios.

For scenarios r_s (s = 1..S, simple returns of n assets) the portfolio loss is L_s = -r_s'w, and
the CVaR at confidence alpha (the mean of the worst 1 - alpha of losses) is

    CVaR_alpha(w) = min_zeta  zeta + k * sum_s max(L_s - zeta, 0),   k = 1 / ((1 - alpha) S)

(Rockafellar and Uryasev 2000; the minimising zeta is a VaR). With u_s >= L_s - zeta, u_s >= 0 the
max becomes linear, so minimising CVaR over w, zeta, u is one LP, the primal:

    min   c_w'x + c_z zeta + c_u sum_s u_s
    s.t.  -R_w x - zeta 1 - u <= 0          (S rows; multiplier p)
          G x <= g                          (target return, gross, long-short caps; multiplier q)
          E x = e                           (net target; multiplier r)
          0 <= x <= cap,  u >= 0,  zeta free (upper bounds; multiplier s)

x are the weight variables: w = x (long-only) or w = x+ - x- (long-short, split as in
constraints.solve_qp), R_w the scenarios on x. Target-return mode: c_w = 0, c_z = 1, c_u = k and a
row mean_r'w >= target; risk-aversion mode (max mean - lambda CVaR): c_w = -mean_r on x, c_z =
lambda, c_u = lambda k.

What is solved is its LP dual, built here explicitly:

    min   g'q + e'r + cap 1's
    s.t.  R_w'p - G'q - E'r - s <= c_w       (one row per weight variable)
          1'p = c_z,   0 <= p <= c_u,   q >= 0,   s >= 0,   r free

(from the Lagrangian: zeta free gives 1'p = c_z, u >= 0 gives p <= c_u, x >= 0 gives the rows).
It has as many variables as the primal but only n + 1 (2n + 1 long-short) rows instead of S + a
few, so HiGHS's simplex works with a basis of that size: about 5x faster at 10,000 x 10 than the
primal. The primal solution comes back as the dual's row marginals: the dual's optimal value V is
minus the primal's P*, and by the envelope theorem dP*/dc_w = x* and dP*/dc_z = zeta*, so
x* = -(marginals of the weight rows) and zeta* = -(marginal of 1'p = c_z). A primal infeasible for
the target return shows as an unbounded dual. Solved by scipy.optimize.linprog(method="highs") on
scipy.sparse matrices; deterministic (the model is built in a fixed order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strategies.allocation.constraints import Constraints, repair

# HiGHS's default feasibility tolerances are 1e-7; the weights are read off the dual's marginals
# and should meet the constraints to about the projection's 1e-9.
_HIGHS_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


class InfeasibleTarget(ValueError):
    """No weights reach the target return under the constraints (a rebalancing strategy skips the
    rebalance; a direct caller lowers the target)."""


@dataclass(frozen=True)
class MeanCVaR:
    weights: np.ndarray  # [n], fractions of equity
    cvar: float  # CVaR_alpha of the loss at the weights (fraction of equity per scenario horizon)
    var: float  # the optimal zeta: a VaR_alpha of the loss
    expected_return: float  # mean scenario return at the weights
    alpha: float


def mean_cvar(
    scenarios,
    alpha: float = 0.95,
    *,
    target_return: float | None = None,
    risk_aversion: float | None = None,
    constraints: Constraints = Constraints(),
) -> MeanCVaR:
    """Minimum-CVaR weights with a mean return of at least ``target_return``, or the weights that
    maximise mean - risk_aversion * CVaR; give at most one of the two (neither: minimum CVaR)."""
    from scipy import sparse
    from scipy.optimize import linprog

    R = np.asarray(scenarios, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] < 1 or R.shape[1] < 1:
        raise ValueError(f"scenarios must be 2-D [n_scenarios, n_assets], got shape {R.shape}")
    if not np.all(np.isfinite(R)):
        raise ValueError("scenarios must be finite; drop the scenarios or assets with NaN")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a confidence level in (0, 1) (e.g. 0.95), not {alpha!r}")
    if target_return is not None and risk_aversion is not None:
        raise ValueError("give target_return or risk_aversion, not both")
    if target_return is not None and not math.isfinite(target_return):
        raise ValueError(f"target_return must be a finite return per scenario horizon, not {target_return!r}")
    if risk_aversion is not None and not (math.isfinite(risk_aversion) and risk_aversion > 0):
        raise ValueError(f"risk_aversion must be a finite number > 0, not {risk_aversion!r}")
    S, n = R.shape
    c = constraints
    c.check(n)
    mean_r = R.mean(axis=0)
    A_w = np.eye(n) if c.long_only else np.hstack([np.eye(n), -np.eye(n)])  # w = A_w @ x
    nw = A_w.shape[1]
    k = 1.0 / ((1.0 - alpha) * S)
    lam = 1.0 if risk_aversion is None else risk_aversion
    c_w = -(mean_r @ A_w) if risk_aversion is not None else np.zeros(nw)
    c_z, c_u = lam, lam * k

    # The primal's G x <= g rows (see the module doc), as columns of the dual.
    G_rows, g = [], []
    if target_return is not None:
        G_rows.append(-(mean_r @ A_w))
        g.append(-target_return)
    if not (c.long_only and c.net is not None):  # sum w = net <= gross already when long-only
        G_rows.append(np.ones(nw))
        g.append(c.gross)
    if not c.long_only:  # |w_i| <= cap as x+_i + x-_i <= cap
        G_rows.extend(np.hstack([np.eye(n), np.eye(n)]))
        g.extend([c.cap] * n)
    G = np.array(G_rows).reshape(len(G_rows), nw)
    E = A_w.sum(axis=0)[None, :] if c.net is not None else np.zeros((0, nw))
    e = [c.net] if c.net is not None else []

    # Dual variables: p (S), q (len g), r (len e), s (nw).
    R_w_T = sparse.csr_matrix((R @ A_w).T)
    A_ub = sparse.hstack([R_w_T, sparse.csr_matrix(-G.T), sparse.csr_matrix(-E.T), -sparse.identity(nw)], format="csr")
    A_eq = sparse.csr_matrix(np.concatenate([np.ones(S), np.zeros(len(g) + len(e) + nw)])[None, :])
    cost = np.concatenate([np.zeros(S), g, e, np.full(nw, c.cap)])
    bounds = [(0.0, c_u)] * S + [(0.0, None)] * len(g) + [(None, None)] * len(e) + [(0.0, None)] * nw
    res = linprog(cost, A_ub=A_ub, b_ub=c_w, A_eq=A_eq, b_eq=[c_z], bounds=bounds, method="highs",
                  options=_HIGHS_OPTIONS)
    if res.status in (2, 3):  # dual unbounded (or infeasible): the primal has no feasible point
        raise InfeasibleTarget(
            f"no weights reach target_return {target_return} under the constraints (the best mean scenario "
            f"return is {mean_r.max():.6g}): lower target_return or loosen the constraints"
        )
    if not res.success:
        raise RuntimeError(f"HiGHS did not solve the Mean-CVaR LP: {res.message}")
    w = repair(A_w @ -res.ineqlin.marginals, c)
    zeta = float(-res.eqlin.marginals[0])
    primal = -float(res.fun)
    expected = float(mean_r @ w)
    cvar = primal if risk_aversion is None else (primal + expected) / lam
    return MeanCVaR(weights=w, cvar=cvar, var=zeta, expected_return=expected, alpha=float(alpha))


def empirical_cvar(losses, alpha: float) -> float:
    """CVaR_alpha of equally likely losses by the same formula at its minimising zeta (the
    ceil(alpha S)-th smallest loss): the mean of the worst (1 - alpha) share, with the boundary
    scenario counted fractionally when (1 - alpha) S is not whole."""
    x = np.sort(np.asarray(losses, dtype=np.float64))
    S = len(x)
    zeta = x[min(int(math.ceil(alpha * S)) - 1, S - 1)]
    return float(zeta + np.maximum(x - zeta, 0.0).sum() / ((1.0 - alpha) * S))
