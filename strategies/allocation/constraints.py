"""The feasible set of portfolio weights, and the nearest feasible point to any weights.

Weights are fractions of equity (negative: short). ``Constraints`` states the set

    |w_i| <= cap              (per asset; 0 <= w_i <= cap when long_only)
    sum |w_i| <= gross        (gross exposure limit)
    sum w_i == net            (net target; net=None leaves the net free)

``project(v, c)`` returns argmin ||w - v||_2 over that set (Euclidean projection). Method:

- long-only, and long-short without a net target: exact, by one scalar threshold (below, with the
  proof of optimality);
- long-short with a net target: the same threshold projection of v - nu, with the shift nu found
  by scipy.optimize.brentq (below).

Exact threshold algorithm. Long-only: the problem is min 0.5||w - v||^2 s.t. 0 <= w <= cap and
sum w = s (s = net), or sum w <= gross when the net is free. The objective is strictly convex and the
constraints linear, so the KKT conditions are necessary and sufficient and the minimiser unique.
With multiplier tau on the sum, the Lagrangian separates per asset, and minimising
0.5(w_i - v_i)^2 + tau w_i over [0, cap] gives w_i(tau) = clip(v_i - tau, 0, cap). So the optimum is
w(tau*) for the tau* that makes the sum constraint hold: for an equality, any tau with
f(tau) = sum_i clip(v_i - tau, 0, cap) = s (tau free in sign); for the inequality, tau* = 0 if
f(0) <= gross (the constraint is slack: complementary slackness), else the tau > 0 with
f(tau) = gross. f is continuous, nonincreasing and piecewise linear with breakpoints at v_i and
v_i - cap, from n*cap (tau -> -inf) to 0 (tau -> +inf); so a root exists iff 0 <= s <= n*cap, and
it is found exactly by evaluating f at the sorted breakpoints and interpolating linearly on the
segment that brackets s (f is linear there). Long-short without a net target is the same problem
on |v|: the projection keeps each sign (flipping w_i to sign(v_i) never increases the distance
and leaves |w_i| unchanged), so w = sign(v) * (capped long-only projection of |v| under the gross
inequality).

Long-short with a net target N. Let K = {|w_i| <= cap, sum |w_i| <= gross} (convex, compact) and
P_K the exact projection above. Dualising only sum w = N with multiplier nu:
min_{w in K} 0.5||w - v||^2 + nu (sum w - N) = min_{w in K} 0.5||w - (v - nu 1)||^2 + const, whose
unique minimiser is w(nu) = P_K(v - nu 1). The dual function is concave and differentiable (unique
minimiser) with derivative s(nu) - N, s(nu) = sum_i w_i(nu); constraints are linear, so strong
duality holds and the projection is w(nu*) for a root of s(nu) = N. s is continuous and
nonincreasing (a projection is monotone), equals min(n cap, gross) >= N for nu <= min v - cap -
gross - 1 and -min(n cap, gross) <= N for nu >= max v + cap + gross + 1: brentq finds the root in
that bracket to ~1e-15, so the sum meets N to about n * 1e-15.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Feasibility after a solver: SLSQP meets constraints to about its tolerance; ``repair`` then clips
# to the box and scales into the gross limit, leaving the net equality off by at most this much.
FEASIBILITY_TOL = 1e-9


@dataclass(frozen=True)
class Constraints:
    """Constraints on weights (fractions of equity): see the module doc.

    The default is fully invested long-only: 0 <= w_i <= 1, sum w = 1.
    """

    long_only: bool = True
    cap: float = 1.0  # max |w_i| per asset, fraction of equity (e.g. 0.2)
    gross: float = 1.0  # max sum |w_i|, fraction of equity (e.g. 2.0 for 130/30 style books)
    net: float | None = 1.0  # sum w_i exactly; None: free (0 with long_only=False: market neutral)

    def __post_init__(self) -> None:
        if not isinstance(self.long_only, (bool, np.bool_)):
            raise ValueError(f"long_only must be True or False, not {self.long_only!r}")
        if not (isinstance(self.cap, (int, float)) and math.isfinite(self.cap) and self.cap > 0):
            raise ValueError(f"cap must be a finite fraction of equity > 0 per asset (e.g. 0.2), not {self.cap!r}")
        if not (isinstance(self.gross, (int, float)) and math.isfinite(self.gross) and self.gross > 0):
            raise ValueError(f"gross must be a finite fraction of equity > 0 (e.g. 1.0), not {self.gross!r}")
        if self.net is not None:
            if not (isinstance(self.net, (int, float)) and math.isfinite(self.net)):
                raise ValueError(f"net must be a finite fraction of equity or None (free), not {self.net!r}")
            if abs(self.net) > self.gross:
                raise ValueError(
                    f"net {self.net} exceeds gross {self.gross} in size: raise gross to at least {abs(self.net)} "
                    "or lower net"
                )
            if self.long_only and self.net < 0:
                raise ValueError(f"net {self.net} < 0 with long_only: give net >= 0, None, or long_only=False")

    def check(self, n_assets: int) -> None:
        """Raise ValueError if no weights on ``n_assets`` assets satisfy the constraints."""
        if n_assets < 1:
            raise ValueError(f"n_assets is {n_assets}; give at least one asset")
        if self.net is not None and abs(self.net) > n_assets * self.cap * (1 + 1e-12):
            need = abs(self.net) / n_assets
            raise ValueError(
                f"cap {self.cap} x {n_assets} assets = {n_assets * self.cap:g} cannot reach net {self.net}: "
                f"raise cap to at least {need:.6g}, lower net, or set net=None"
            )

    def target_sum(self) -> float:
        """The sum of weights that a heuristic allocator scales to: net, or gross when net is free."""
        return self.gross if self.net is None else self.net

    def satisfied(self, w: np.ndarray, tol: float = FEASIBILITY_TOL) -> bool:
        """True if ``w`` is feasible to within ``tol`` (absolute, in fractions of equity)."""
        w = np.asarray(w, dtype=np.float64)
        ok = bool(np.all(np.abs(w) <= self.cap + tol)) and float(np.abs(w).sum()) <= self.gross + tol
        if self.long_only:
            ok = ok and bool(np.all(w >= -tol))
        if self.net is not None:
            ok = ok and abs(float(w.sum()) - self.net) <= tol
        return ok


def _as_vector(weights, name: str = "weights") -> np.ndarray:
    v = np.asarray(weights, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (one per asset), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite; drop or fill the assets without a value before projecting")
    return v


def _threshold(v: np.ndarray, cap: float, total: float) -> np.ndarray:
    """clip(v - tau, 0, cap) with tau such that the sum is ``total`` (0 <= total <= n*cap), exactly
    (see the module doc): f is linear between consecutive sorted breakpoints."""
    n = len(v)
    if total >= n * cap:
        return np.full(n, cap)
    if total <= 0:
        return np.zeros(n)
    b = np.unique(np.concatenate([v, v - cap]))  # sorted ascending; f is nonincreasing in tau
    f = np.clip(v[None, :] - b[:, None], 0.0, cap).sum(axis=1)
    # f(b[0]) = n*cap >= total (every v_i - b[0] >= cap) and f(b[-1]) = 0 <= total.
    k = int(np.searchsorted(-f, -total, side="right")) - 1  # last k with f[k] >= total
    k = min(max(k, 0), len(b) - 2)
    f0, f1 = f[k], f[k + 1]
    tau = b[k] if f0 == f1 else b[k] + (f0 - total) * (b[k + 1] - b[k]) / (f0 - f1)
    return np.clip(v - tau, 0.0, cap)


def project(weights, constraints: Constraints) -> np.ndarray:
    """The feasible weights nearest (Euclidean) to ``weights``; see the module doc for the method."""
    v = _as_vector(weights)
    c = constraints
    c.check(len(v))
    if c.long_only:
        if c.net is not None:
            return _threshold(v, c.cap, c.net)
        w = np.clip(v, 0.0, c.cap)
        return w if w.sum() <= c.gross else _threshold(v, c.cap, c.gross)
    if c.net is None:
        return _project_box_gross(v, c.cap, c.gross)
    net = c.net
    if abs(net) >= min(c.gross, len(v) * c.cap) * (1 - 1e-12):
        # The net is the most the set can hold: sum w = |net| >= sum |w| forces every w_i to the
        # sign of net, so the set is the capped simplex on sign(net) * w (and the bracket below
        # would touch the root only to rounding).
        sign = 1.0 if net >= 0 else -1.0
        return sign * _threshold(sign * v, c.cap, abs(net))
    from scipy.optimize import brentq

    def excess(nu: float) -> float:
        return float(_project_box_gross(v - nu, c.cap, c.gross).sum()) - net

    span = c.cap + c.gross + 1.0
    lo, hi = float(v.min()) - span, float(v.max()) + span
    nu = brentq(excess, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return _project_box_gross(v - nu, c.cap, c.gross)


def _project_box_gross(v: np.ndarray, cap: float, gross: float) -> np.ndarray:
    """Exact projection onto {|w_i| <= cap, sum |w_i| <= gross}: the signs of v, the magnitudes
    by the threshold algorithm on |v| (module doc)."""
    a = np.minimum(np.abs(v), cap)
    m = a if a.sum() <= gross else _threshold(np.abs(v), cap, gross)
    return np.sign(v) * m


def repair(w: np.ndarray, c: Constraints) -> np.ndarray:
    """Clip to the box and scale into the gross limit: feasible but for the net equality, which a
    solver's answer meets to its tolerance."""
    w = np.clip(w, 0.0 if c.long_only else -c.cap, c.cap)
    g = np.abs(w).sum()
    return w * (c.gross / g) if g > c.gross else w


def solve_qp(P: np.ndarray, q: np.ndarray, constraints: Constraints, x0: np.ndarray | None = None) -> np.ndarray:
    """argmin 0.5 w'Pw - q'w over the constraint set (P symmetric positive semidefinite), by scipy's
    SLSQP. Long-short weights are split as w = p - m with p, m >= 0, so that |w_i| <= cap becomes
    p_i + m_i <= cap and sum |w| <= gross becomes sum (p + m) <= gross, all linear (at an optimum
    one of p_i, m_i can be taken 0 without changing w, so the set of reachable w is the same).
    Deterministic: same inputs, same start, same iterates."""
    from scipy.optimize import minimize

    P = np.asarray(P, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    n = len(q)
    c = constraints
    c.check(n)
    # Scale so the objective is O(1): SLSQP's stopping rule is on the objective's change, and
    # covariances of returns are O(1e-4). A model's forecast (forecast_mv) can make q the larger
    # term by orders of magnitude (a 1e-3 expected return against a 1e-6 variance), and SLSQP then
    # stalls in its line search: scale by whichever term is larger (the argmin does not move).
    scale = max(float(np.mean(np.abs(np.diag(P)))), float(np.max(np.abs(q), initial=0.0))) or 1.0
    P, q = P / scale, q / scale
    w0 = repair(np.full(n, c.target_sum() / n) if x0 is None else np.asarray(x0, dtype=np.float64), c)
    if c.long_only:
        A = np.eye(n)  # w = x
        x_start = np.clip(w0, 0.0, c.cap)
        bounds = [(0.0, c.cap)] * n
        gross_row = np.ones(n)
        cap_rows = None
    else:
        A = np.hstack([np.eye(n), -np.eye(n)])  # w = p - m
        x_start = np.concatenate([np.maximum(w0, 0.0), np.maximum(-w0, 0.0)])
        bounds = [(0.0, c.cap)] * (2 * n)
        gross_row = np.ones(2 * n)
        cap_rows = np.hstack([np.eye(n), np.eye(n)])
    H = A.T @ P @ A
    g = A.T @ q

    def fun(x):
        return 0.5 * x @ H @ x - g @ x

    def jac(x):
        return H @ x - g

    cons = []
    # Long-only with a net target: sum w = net <= gross already, and a second, parallel active
    # constraint makes SLSQP's constraint Jacobian rank-deficient (it then stops at the start).
    if not (c.long_only and c.net is not None):
        cons.append({"type": "ineq", "fun": lambda x: c.gross - gross_row @ x, "jac": lambda x: -gross_row})
    if cap_rows is not None:
        cons.append({"type": "ineq", "fun": lambda x: c.cap - cap_rows @ x, "jac": lambda x: -cap_rows})
    if c.net is not None:
        net_row = A.sum(axis=0)
        cons.append({"type": "eq", "fun": lambda x: net_row @ x - c.net, "jac": lambda x: net_row})
    res = minimize(fun, x_start, jac=jac, bounds=bounds, constraints=cons, method="SLSQP",
                   options={"ftol": 1e-13, "maxiter": 1000})
    # Exit mode 8 ("positive directional derivative for linesearch") is SLSQP stalling at a point
    # it cannot improve in floating point, typically the optimum reached from a start on the
    # boundary: accepted when the point is feasible, like a converged one.
    stalled = res.status == 8 and _violation(res.x, cons) <= FEASIBILITY_TOL
    if not (res.success or stalled):
        raise RuntimeError(f"SLSQP did not converge ({res.message}); check the covariance for NaN or a huge scale")
    return repair(A @ res.x, c)


def _violation(x: np.ndarray, cons: list[dict]) -> float:
    worst = 0.0
    for con in cons:
        g = np.atleast_1d(con["fun"](x))
        worst = max(worst, float(np.abs(g).max()) if con["type"] == "eq" else float(np.maximum(-g, 0).max()))
    return worst
