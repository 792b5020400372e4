"""Performance metrics of one run: returns, risk ratios, drawdowns, trading activity.

Inputs are what the backtester records: an equity curve sampled at bar ends (``ts_ns`` int64 ns,
strictly increasing; ``equity`` float64, first point = initial capital at the run's first tick),
the gross exposure at the same samples, per-fill notional and fee, and per-round-trip net pnl.

Days. Risk ratios come from daily returns, not from the bars: a bar's return holds a whole overnight
gap where one falls, and per-bar ratios scaled by the square root of ~100,000 bars a year are not
what anyone means by a Sharpe ratio. A day's return is its close over the previous day's close,
where a close is the last sample of the day (the first day's base is the run's first sample, the
initial capital). What a day is comes from the caller as ``day_starts_ns``, the times days begin;
the backtest passes its instruments' session opens when they share one calendar, so a US equity
day runs from one 09:30 open to the next (its overnight gap lands in the next day, as in a
close-to-close return), a CME or FX day starts at its 17:00 open, and a 24x7 day is the UTC date
(that calendar's boundary is 00:00 UTC). Without it, a day is a UTC date. Days without samples
(weekends, holidays) are not days, and a day whose only sample is the run's first (its opening
mark, no time elapsed) has no return and is not counted.

Annualization. ``days_per_year = n_days / years`` (years of elapsed time, ``YEAR_NS``): ~365 for
a 24x7 market, ~252-260 for a weekday calendar, taken from the run rather than assumed. Annualized
figures exist only for runs of at least ``MIN_ANNUALIZE_DAYS`` days (``Metrics.annualized``); a
shorter run reports per-day figures and leaves the annualized ones nan.

Nothing here crashes on a degenerate run and nothing reports a number it cannot back: where a
quantity is undefined (no variance, too few samples, no trades, no drawdown, too few days to
annualize) it is ``nan`` and the docstring of the function says when. Note that ``msgspec.json``
encodes ``nan`` and ``inf`` as ``null``; reports that need to tell them apart should format floats
themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np

from engine.domain.timestamps import DAY_NS

ArrayLike = np.ndarray | Sequence[float]

YEAR_NS = 365.25 * DAY_NS  # Julian year: leap years average in, calendar-agnostic

# Annualized return, volatility, Sharpe, Sortino and Calmar need this many days; below it they are
# nan. Two reasons. Compounding: annualizing raises (1 + total return) to days_per_year / n_days,
# ~50 for a 5-session run, so a good week reads as +4e8 % a year. Noise: a Sharpe ratio estimated
# from n daily returns has a standard error of about sqrt(1 / n) a day, sqrt(252 / n) annualized:
# ~7 after 5 days, so an "annualized Sharpe of 10" from a week is indistinguishable from 0. Sixty
# trading days, about a quarter, keeps the exponent near 4 and the annualized error near 2: the
# shortest record whose yearly figures are at least of the right order, and the usual convention
# for the shortest track record annualized at all.
MIN_ANNUALIZE_DAYS = 60

# A spread of returns at or below this many ulps of (1 + |r|) is floating-point noise: returns are
# ratios of equities, each carrying about one ulp of relative rounding, so a "constant" growth
# curve such as 100, 110, 121 yields returns that differ by ~1e-17. Dividing by that noise would
# report a Sharpe of 1e16; treating it as zero variance reports nan, which is the truth.
_NOISE_ULPS = 16.0

# Leverage at or below this counts as flat for ``time_in_market``: a position summed from fills in
# float (0.1 + 0.2 - 0.3 lots) leaves residue of ~1e-17 of equity, and calling that "in the
# market" would be a lie. A billionth of equity is far below any real position.
FLAT_LEVERAGE = 1e-9


class MetricsInputError(ValueError):
    """An input array is malformed; the message names the argument and what to pass instead."""


class Metrics(msgspec.Struct, kw_only=True):
    """Summary of one run. ``nan`` means undefined for this run, never "zero" or "unknown bug".

    Per-field definitions (r_d = daily simple returns, see the module docstring for days;
    dpy = ``days_per_year``):

    - ``total_return``: ``equity[-1] / equity[0] - 1``; nan for an empty curve.
    - ``annualized``: ``n_days >= MIN_ANNUALIZE_DAYS``; when False, the five annualized fields
      below are nan, whatever the run.
    - ``annualized_return``: ``(1 + total) ** (1 / years) - 1``, years = elapsed / ``YEAR_NS``.
    - ``volatility`` (annualized): ``std(r_d, ddof=1) * sqrt(dpy)``.
    - ``sharpe``, ``sortino`` (annualized): ``sharpe_ratio`` and ``sortino_ratio`` of r_d at dpy.
    - ``calmar``: ``annualized_return / max_drawdown``; nan also when there is no drawdown.
    - ``n_days``: days with a return; ``days_per_year``: ``n_days / years``, nan with no elapsed
      time.
    - ``mean_daily_return``, ``best_day``, ``worst_day``: mean, max and min of r_d (nan without
      days); ``daily_volatility``: ``std(r_d, ddof=1)``; ``daily_sharpe``: ``(mean(r_d) - rf_d) /
      std(r_d)``, not annualized, with ``rf_d = (1 + rf) ** (1 / dpy) - 1`` (nan with fewer than 2
      days or no variance).
    - ``max_drawdown``, ``max_drawdown_duration_ns``: see ``max_drawdown``, on every sample.
    - ``turnover``: ``sum(fill notional) / equity[0]``; nan for an empty curve.
    - ``hit_rate``: share of closed trades with pnl > 0 (a scratch trade is not a hit); nan
      without trades.
    - ``exposure``: time-weighted mean of ``gross_exposure / equity`` (average leverage);
      ``time_in_market``: time-weighted share with ``gross_exposure > 0`` (above
      ``FLAT_LEVERAGE * equity``, so float residue of a closed position is flat). Each sample's value is
      held until the next sample (positions sampled at a bar end are what the run carries through
      the next bar, overnight included). nan without ``gross_exposure`` or with no elapsed time.
    - ``n_periods``: returns in the equity curve (bars); ``elapsed_ns``: first to last sample.
    """

    total_return: float
    annualized: bool
    annualized_return: float
    volatility: float
    sharpe: float
    sortino: float
    calmar: float
    n_days: int
    days_per_year: float
    mean_daily_return: float
    daily_volatility: float
    daily_sharpe: float
    best_day: float
    worst_day: float
    max_drawdown: float
    max_drawdown_duration_ns: int
    turnover: float
    hit_rate: float
    trade_count: int
    fill_count: int
    fees_paid: float
    exposure: float
    time_in_market: float
    n_periods: int
    elapsed_ns: int


class JobsonKorkie(msgspec.Struct):
    """Jobson-Korkie test of equal Sharpe ratios with Memmel's correction.

    ``sharpe_a``/``sharpe_b`` are per-period (not annualized); ``z`` > 0 means a has the higher
    Sharpe; ``p_value`` is two-sided.
    """

    z: float
    p_value: float
    sharpe_a: float
    sharpe_b: float
    correlation: float
    n: int


# --- validation ---------------------------------------------------------------------------------


def _float_array(x: ArrayLike, name: str, *, positive: bool = False, nonneg: bool = False) -> np.ndarray:
    return float_array(x, name, positive=positive, nonneg=nonneg)


def float_array(x: ArrayLike, name: str, *, ndim: int = 1, allow_nan: bool = False, positive: bool = False,
                nonneg: bool = False, axes: str = "", error: type[ValueError] = MetricsInputError) -> np.ndarray:
    """``x`` as a float64 array of ``ndim`` dimensions whose values are finite (NaN allowed where
    ``allow_nan``), and > 0 or >= 0 where asked; else ``error`` naming ``name``, the first bad
    index and value. ``axes`` says what the dimensions are, for the message (engine.study shares
    this check with its own error class)."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise error(f"{name} must be a {ndim}-D array of numbers: {exc}") from None
    if arr.ndim != ndim:
        raise error(f"{name} must be {ndim}-D{f' ({axes})' if axes else ''}, got shape {arr.shape}")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if positive:
        bad |= arr <= 0
        what = "finite and > 0"
    elif nonneg:
        bad |= arr < 0
        what = "finite and >= 0"
    else:
        what = "finite"
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        at = ", ".join(str(k) for k in i)
        raise error(f"{name} must be {what}: {name}[{at}] = {float(arr[i])!r}")
    return arr


def _ts_array(ts_ns: ArrayLike, name: str = "ts_ns") -> np.ndarray:
    arr = np.asarray(ts_ns)
    if arr.ndim != 1:
        raise MetricsInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)  # np.asarray([]) is float64; an empty curve has no unit to get wrong
    if arr.dtype.kind not in "iu":
        raise MetricsInputError(
            f"{name} must be integer nanoseconds, got dtype {arr.dtype}; "
            "convert with engine.domain.timestamps.to_ns"
        )
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise MetricsInputError(f"{name} does not fit int64 nanoseconds")
    arr = arr.astype(np.int64, copy=False)
    steps = np.diff(arr)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise MetricsInputError(
            f"{name} must be strictly increasing: {name}[{i}] = {arr[i]} <= {name}[{i - 1}] = {arr[i - 1]}"
        )
    return arr


def _same_length(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str, hint: str) -> None:
    if a.shape != b.shape:
        raise MetricsInputError(f"{a_name} has {a.size} entries but {b_name} has {b.size}; {hint}")


def _check_ppy(ppy: float) -> float:
    ppy = float(ppy)
    if not (math.isfinite(ppy) and ppy > 0):
        raise MetricsInputError(
            f"periods_per_year must be finite and > 0, got {ppy!r}; compute it with periods_per_year(ts_ns)"
        )
    return ppy


def _check_rf(risk_free_rate: float) -> float:
    rf = float(risk_free_rate)
    if not (math.isfinite(rf) and rf > -1):
        raise MetricsInputError(f"risk_free_rate must be a finite annual rate > -1 (0.05 = 5%), got {rf!r}")
    return rf


def _per_period_rate(risk_free_rate: float, ppy: float) -> float:
    rf = _check_rf(risk_free_rate)
    # Compounded, not rf / ppy, so that ppy periods of rf_p grow exactly to 1 + rf.
    return (1.0 + rf) ** (1.0 / ppy) - 1.0


def _noise_floor(r: np.ndarray) -> float:
    return _NOISE_ULPS * float(np.finfo(np.float64).eps) * (1.0 + float(np.max(np.abs(r))))


# --- core ---------------------------------------------------------------------------------------


def period_returns(equity: ArrayLike) -> np.ndarray:
    """Simple returns ``equity[1:] / equity[:-1] - 1`` (empty for fewer than 2 samples)."""
    e = _float_array(equity, "equity", positive=True)
    return e[1:] / e[:-1] - 1.0


def periods_per_year(ts_ns: ArrayLike) -> float:
    """Returns per year implied by the sample times: ``(len(ts_ns) - 1) / years``.

    nan with fewer than 2 samples (no elapsed time to annualize over).
    """
    ts = _ts_array(ts_ns)
    if ts.size < 2:
        return math.nan
    elapsed_ns = int(ts[-1] - ts[0])
    return (ts.size - 1) * YEAR_NS / elapsed_ns


def _per_period_sharpe(r: np.ndarray, rf_p: float) -> float:
    if r.size < 2:
        return math.nan
    sd = float(np.std(r, ddof=1))
    if sd <= _noise_floor(r):
        return math.nan
    return (float(np.mean(r)) - rf_p) / sd


def sharpe_ratio(returns: ArrayLike, periods_per_year: float, risk_free_rate: float = 0.0) -> float:
    """Annualized Sharpe ratio ``(mean(r) - rf_p) / std(r, ddof=1) * sqrt(periods_per_year)``.

    ``risk_free_rate`` is annual; per period ``rf_p = (1 + rf) ** (1 / periods_per_year) - 1``.
    nan with fewer than 2 returns or zero variance (a spread at floating-point noise level counts
    as zero: a ratio over rounding noise would be an arbitrary huge number).
    """
    r = _float_array(returns, "returns")
    ppy = _check_ppy(periods_per_year)
    return _per_period_sharpe(r, _per_period_rate(risk_free_rate, ppy)) * math.sqrt(ppy)


def sortino_ratio(returns: ArrayLike, periods_per_year: float, risk_free_rate: float = 0.0) -> float:
    """Annualized Sortino ratio ``(mean(r) - rf_p) / DD * sqrt(periods_per_year)``.

    ``DD = sqrt(mean(min(r - rf_p, 0) ** 2))`` over all periods (periods above the target count as
    zero shortfall, they are not dropped). Degenerate cases:

    - fewer than 2 returns, or zero variance: nan (same rule as ``sharpe_ratio``, so the two
      ratios are defined on the same runs);
    - no downside (DD == 0) and mean excess > 0: ``inf``; mean excess == 0: nan.
    """
    r = _float_array(returns, "returns")
    ppy = _check_ppy(periods_per_year)
    rf_p = _per_period_rate(risk_free_rate, ppy)
    if r.size < 2:
        return math.nan
    floor = _noise_floor(r)
    if float(np.std(r, ddof=1)) <= floor:
        return math.nan
    excess = r - rf_p
    mean_excess = float(np.mean(excess))
    downside = float(np.sqrt(np.mean(np.minimum(excess, 0.0) ** 2)))
    if downside <= floor:
        return math.inf if mean_excess > floor else math.nan
    return mean_excess / downside * math.sqrt(ppy)


def max_drawdown(ts_ns: ArrayLike, equity: ArrayLike) -> tuple[float, int]:
    """Deepest drawdown and longest underwater spell: ``(depth, duration_ns)``.

    ``depth = max_t (1 - equity_t / running_max_t)``, a fraction in [0, 1) (0 when equity never
    falls). ``duration_ns`` is the longest span from the last sample at a peak until the first
    sample at or above that peak again, or until the last sample if it never gets back. The two
    maxima may come from different drawdowns. An empty curve gives ``(nan, 0)``; a single sample
    ``(0.0, 0)``.
    """
    ts = _ts_array(ts_ns)
    e = _float_array(equity, "equity", positive=True)
    _same_length(ts, "ts_ns", e, "equity", "pass one equity value per sample time")
    if e.size == 0:
        return math.nan, 0
    peak = np.maximum.accumulate(e)
    depth = float(np.max(1.0 - e / peak))
    underwater = e < peak  # exact: a curve back at its peak to the last bit has recovered
    if not underwater.any():
        return depth, 0
    edges = np.diff(np.concatenate(([0], underwater.view(np.int8), [0])))
    first_under = np.flatnonzero(edges == 1)  # >= 1: sample 0 is its own peak
    first_above = np.flatnonzero(edges == -1)  # first sample back at the peak; n if never
    start_ns = ts[first_under - 1]
    end_ns = ts[np.minimum(first_above, ts.size - 1)]
    return depth, int(np.max(end_ns - start_ns))


def daily_returns(ts_ns: ArrayLike, equity: ArrayLike, day_starts_ns: ArrayLike | None = None) -> np.ndarray:
    """Close-to-close return of each day of the run, in order; see the module docstring for what a
    day is. ``day_starts_ns`` (strictly increasing int64 ns) are the times days begin, samples before
    the first belonging to the first day; None or empty: UTC dates. Empty for fewer than 2 samples."""
    ts = _ts_array(ts_ns)
    e = _float_array(equity, "equity", positive=True)
    _same_length(ts, "ts_ns", e, "equity", "pass one equity value per sample time")
    starts = None if day_starts_ns is None else _ts_array(day_starts_ns, "day_starts_ns")
    return _daily_returns(ts, e, starts)


def daily_return_days(
    ts_ns: ArrayLike, equity: ArrayLike, day_starts_ns: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``daily_returns`` and the day of each: its index into ``day_starts_ns``, or without them its UTC
    day number (days since the epoch). Runs over different stretches of one calendar name a day alike
    only through ``day_starts_ns`` taken from the same list of session opens."""
    ts = _ts_array(ts_ns)
    e = _float_array(equity, "equity", positive=True)
    _same_length(ts, "ts_ns", e, "equity", "pass one equity value per sample time")
    starts = None if day_starts_ns is None else _ts_array(day_starts_ns, "day_starts_ns")
    return _daily_return_days(ts, e, starts)


def _daily_returns(ts: np.ndarray, e: np.ndarray, starts: np.ndarray | None) -> np.ndarray:
    return _daily_return_days(ts, e, starts)[0]


def _daily_return_days(ts: np.ndarray, e: np.ndarray, starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if e.size < 2:
        return np.empty(0), np.empty(0, np.int64)
    if starts is None or starts.size == 0:
        day = ts // DAY_NS
    else:
        day = np.maximum(np.searchsorted(starts, ts, side="right") - 1, 0)
    closes = np.append(np.flatnonzero(np.diff(day)), e.size - 1)
    if closes[0] == 0:  # the first day holds only the opening mark: no time, no return
        closes = closes[1:]
    base = np.concatenate(([0], closes[:-1]))
    return e[closes] / e[base] - 1.0, day[closes].astype(np.int64)


def _annualized(total: float, years: float) -> float:
    try:
        return (1.0 + total) ** (1.0 / years) - 1.0
    except OverflowError:  # only reachable for a huge total: runs this short are not annualized
        return math.inf


def compute_metrics(
    ts_ns: ArrayLike,
    equity: ArrayLike,
    *,
    gross_exposure: ArrayLike | None = None,
    fill_notional: ArrayLike = (),
    fill_fee: ArrayLike = (),
    trade_pnl: ArrayLike = (),
    risk_free_rate: float = 0.0,
    day_starts_ns: ArrayLike | None = None,
) -> Metrics:
    """All metrics of one run; see ``Metrics`` for each definition and its degenerate cases, and
    ``daily_returns`` for ``day_starts_ns``.

    Raises ``MetricsInputError`` (a ``ValueError``) naming the argument when arrays differ in
    length, times do not strictly increase, equity is not finite and positive, gross exposure or
    notional is negative, or any value is NaN.
    """
    ts = _ts_array(ts_ns)
    e = _float_array(equity, "equity", positive=True)
    _same_length(ts, "ts_ns", e, "equity", "pass one equity value per sample time")
    gx = None
    if gross_exposure is not None:
        gx = _float_array(gross_exposure, "gross_exposure", nonneg=True)
        _same_length(gx, "gross_exposure", e, "equity", "pass one gross exposure per equity sample")
    notional = _float_array(fill_notional, "fill_notional", nonneg=True)
    fee = _float_array(fill_fee, "fill_fee")  # may be negative: maker rebates
    _same_length(fee, "fill_fee", notional, "fill_notional", "pass one fee per fill (0.0 where free)")
    pnl = _float_array(trade_pnl, "trade_pnl")
    starts = None if day_starts_ns is None else _ts_array(day_starts_ns, "day_starts_ns")
    _check_rf(risk_free_rate)  # fail on a bad rate even where the run is too short to use it

    n = int(e.size)
    nan = math.nan
    total = float(e[-1] / e[0] - 1.0) if n else nan
    turnover = float(np.sum(notional) / e[0]) if n else nan
    trade_count = int(pnl.size)
    hit_rate = float(np.count_nonzero(pnl > 0) / trade_count) if trade_count else nan
    depth, dd_ns = max_drawdown(ts, e)
    elapsed_ns = int(ts[-1] - ts[0]) if n else 0
    years = elapsed_ns / YEAR_NS

    r_d = _daily_returns(ts, e, starts)
    n_days = int(r_d.size)
    dpy = n_days / years if elapsed_ns > 0 else nan
    mean_day = best = worst = vol_day = sharpe_day = nan
    if n_days:
        mean_day, best, worst = float(np.mean(r_d)), float(np.max(r_d)), float(np.min(r_d))
    if n_days >= 2:
        vol_day = float(np.std(r_d, ddof=1))
        sharpe_day = _per_period_sharpe(r_d, _per_period_rate(risk_free_rate, dpy))

    annualized = n_days >= MIN_ANNUALIZE_DAYS
    ann_return = vol = sharpe = sortino = calmar = nan
    if annualized:
        ann_return = _annualized(total, years)
        vol = vol_day * math.sqrt(dpy)
        sharpe = sharpe_ratio(r_d, dpy, risk_free_rate)
        sortino = sortino_ratio(r_d, dpy, risk_free_rate)
        if depth > 0:
            calmar = ann_return / depth

    exposure = in_market = nan
    if gx is not None and elapsed_ns > 0:
        # Left-point rule: the exposure at a bar end is carried until the next sample.
        dt = np.diff(ts).astype(np.float64)
        leverage = gx[:-1] / e[:-1]
        exposure = float(np.sum(leverage * dt) / elapsed_ns)
        in_market = float(np.sum(dt[leverage > FLAT_LEVERAGE]) / elapsed_ns)

    return Metrics(
        total_return=total,
        annualized=annualized,
        annualized_return=ann_return,
        volatility=vol,
        sharpe=sharpe,
        sortino=sortino,
        calmar=calmar,
        n_days=n_days,
        days_per_year=dpy,
        mean_daily_return=mean_day,
        daily_volatility=vol_day,
        daily_sharpe=sharpe_day,
        best_day=best,
        worst_day=worst,
        max_drawdown=depth,
        max_drawdown_duration_ns=dd_ns,
        turnover=turnover,
        hit_rate=hit_rate,
        trade_count=trade_count,
        fill_count=int(notional.size),
        fees_paid=float(np.sum(fee)),
        exposure=exposure,
        time_in_market=in_market,
        n_periods=max(n - 1, 0),
        elapsed_ns=elapsed_ns,
    )


def jobson_korkie_memmel(returns_a: ArrayLike, returns_b: ArrayLike) -> JobsonKorkie:
    """Test H0: equal Sharpe ratios of two aligned return series (Jobson-Korkie 1981, Memmel 2003).

    With per-period ``SR_i = mean_i / std_i`` (ddof=1), ``rho = corr(a, b)`` and T periods::

        theta = (2 - 2 rho + 0.5 (SR_a^2 + SR_b^2 - 2 SR_a SR_b rho^2)) / T
        z = (SR_a - SR_b) / sqrt(theta),  p = erfc(|z| / sqrt(2))   (two-sided)

    Equal Sharpe ratios give ``z = 0, p = 1`` even where theta is 0 (identical series). A series
    with zero variance has no Sharpe ratio: z, p and the correlation are nan. Raises
    ``MetricsInputError`` for series of different length or shorter than 3.
    """
    a = _float_array(returns_a, "returns_a")
    b = _float_array(returns_b, "returns_b")
    if a.size != b.size:
        raise MetricsInputError(
            f"returns_a has {a.size} periods but returns_b has {b.size}; "
            "pass both strategies' returns over the same periods (align on timestamps first)"
        )
    t = int(a.size)
    if t < 3:
        raise MetricsInputError(f"need at least 3 aligned periods for the Jobson-Korkie test, got {t}")
    sd_a, sd_b = float(np.std(a, ddof=1)), float(np.std(b, ddof=1))
    sr_a = float(np.mean(a)) / sd_a if sd_a > _noise_floor(a) else math.nan
    sr_b = float(np.mean(b)) / sd_b if sd_b > _noise_floor(b) else math.nan
    if math.isnan(sr_a) or math.isnan(sr_b):
        return JobsonKorkie(math.nan, math.nan, sr_a, sr_b, math.nan, t)
    # Covariance over the product of the same ddof=1 stds; clipped because rounding can push
    # |rho| a hair past 1, which would make 2 - 2 rho negative for identical series.
    cov = float(np.sum((a - a.mean()) * (b - b.mean()))) / (t - 1)
    rho = min(1.0, max(-1.0, cov / (sd_a * sd_b)))
    diff = sr_a - sr_b
    theta = (2.0 - 2.0 * rho + 0.5 * (sr_a**2 + sr_b**2 - 2.0 * sr_a * sr_b * rho**2)) / t
    if diff == 0.0:
        z = 0.0
    elif theta <= 0.0:  # unreachable exactly (rho == 1 leaves theta = diff^2 / 2T); guards underflow
        z = math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(theta)
    return JobsonKorkie(z, math.erfc(abs(z) / math.sqrt(2.0)), sr_a, sr_b, rho, t)
