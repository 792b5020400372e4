"""Mean-CVaR: the Rockafellar-Uryasev linear program over return scenarios.

For scenarios r_s (s = 1..S, simple returns of n assets) the portfolio loss is L_s = -r_s'w, and
the CVaR at confidence alpha (the mean of the worst 1 - alpha of losses) is

    CVaR_alpha(w) = min_zeta  zeta + 1 / ((1 - alpha) S) * sum_s max(L_s - zeta, 0)

(Rockafellar and Uryasev 2000; the minimising zeta is the VaR). With u_s >= L_s - zeta, u_s >= 0
the max becomes linear, so minimising CVaR over w, zeta, u is one LP:

    min   zeta + 1 / ((1 - alpha) S) sum u_s          (target_return mode)
    or    -mean_r'w + risk_aversion * (the same)       (risk_aversion mode)
    s.t.  -r_s'w - zeta - u_s <= 0,  u_s >= 0          (S rows, sparse: n + 2 nonzeros each)
          mean_r'w >= target_return                    (target_return mode)
          w in the constraint set (constraints.Constraints)

Long-short weights are split w = p - m (p, m >= 0; see constraints.solve_qp). Solved by
scipy.optimize.linprog(method="highs") on scipy.sparse matrices: deterministic (HiGHS is
single-threaded here and the model is built in a fixed order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strategies.allocation.constraints import Constraints


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
    maximise mean - risk_aversion * CVaR; give exactly one of the two (neither: minimum CVaR)."""
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
    k = 1 if c.long_only else 2  # weight blocks: p, or p and m
    A_w = np.eye(n) if c.long_only else np.hstack([np.eye(n), -np.eye(n)])  # w = A_w @ x_w
    nw = k * n
    # Variables: x_w (nw), zeta (1), u (S).
    tail = 1.0 / ((1.0 - alpha) * S)
    cost = np.concatenate([np.zeros(nw), [1.0], np.full(S, tail)])
    if risk_aversion is not None:
        cost *= risk_aversion
        cost[:nw] = -(mean_r @ A_w)

    loss = sparse.csr_matrix(-R @ A_w) if c.long_only else sparse.hstack([sparse.csr_matrix(-R), sparse.csr_matrix(R)])
    rows = [sparse.hstack([loss, sparse.csr_matrix(-np.ones((S, 1))), -sparse.identity(S, format="csr")])]
    rhs = [np.zeros(S)]

    def dense_row(w_part: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix(np.concatenate([w_part, np.zeros(1 + S)])[None, :])

    if target_return is not None:
        rows.append(dense_row(-(mean_r @ A_w)))
        rhs.append(np.array([-target_return]))
    rows.append(dense_row(np.ones(nw)))  # sum |w| <= gross
    rhs.append(np.array([c.gross]))
    if not c.long_only:  # |w_i| <= cap as p_i + m_i <= cap
        rows.append(sparse.hstack([sparse.identity(n), sparse.identity(n), sparse.csr_matrix((n, 1 + S))]))
        rhs.append(np.full(n, c.cap))
    A_ub = sparse.vstack(rows, format="csr")
    b_ub = np.concatenate(rhs)
    A_eq = b_eq = None
    if c.net is not None:
        A_eq = dense_row(A_w.sum(axis=0))
        b_eq = np.array([c.net])
    bounds = [(0.0, c.cap)] * nw + [(None, None)] + [(0.0, None)] * S
    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status == 2:
        raise ValueError(
            f"no weights reach target_return {target_return} under the constraints (the best mean scenario "
            f"return is {mean_r.max():.6g}): lower target_return or loosen the constraints"
        )
    if not res.success:
        raise RuntimeError(f"HiGHS did not solve the Mean-CVaR LP: {res.message}")
    w = A_w @ res.x[:nw]
    zeta = float(res.x[nw])
    cvar = zeta + tail * float(res.x[nw + 1 :].sum())
    return MeanCVaR(weights=w, cvar=cvar, var=zeta, expected_return=float(mean_r @ w), alpha=float(alpha))


def empirical_cvar(losses, alpha: float) -> float:
    """CVaR_alpha of equally likely losses by the same formula at its minimising zeta (the
    ceil(alpha S)-th smallest loss): the mean of the worst (1 - alpha) share, with the boundary
    scenario counted fractionally when (1 - alpha) S is not whole."""
    x = np.sort(np.asarray(losses, dtype=np.float64))
    S = len(x)
    zeta = x[min(int(math.ceil(alpha * S)) - 1, S - 1)]
    return float(zeta + np.maximum(x - zeta, 0.0).sum() / ((1.0 - alpha) * S))
