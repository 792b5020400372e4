"""The synthetic market: the engine's embedded default data set, with its ground truth exposed.

``nextick backtest`` with no arguments runs on this source. It generates best-bid-offer quotes for
N correlated instruments from a latent fair value whose law is known exactly, so a signal can be
scored against the best possible one (the "oracle"). Everything is vectorized numpy and
deterministic by ``SyntheticConfig.seed``.

The model, top to bottom
========================

Time. Quotes exist only inside the sessions of ``config.calendar`` (``engine.domain.calendar``), each
``[open_ns, close_ns)`` in UTC nanoseconds; ``n_sessions`` sessions are generated starting at the
local date ``start``. The latent processes below live in calendar time and keep evolving between
sessions, so prices gap at the open.

Market volatility (common to all instruments). A two-state continuous-time Markov chain
``r_t in {calm, turbulent}`` with mean sojourns ``calm_mean_s`` / ``turbulent_mean_s``, and a log-
volatility ``h_t`` that is an Ornstein-Uhlenbeck process (stationary std ``vol_of_vol``, half-life
``vol_halflife_s``). Both are sampled on a coarse ``grid_s`` grid and looked up by time. The
volatility multiplier is::

    v_t = m(r_t) * exp(h_t - vol_of_vol**2) / sqrt(E[m(r)**2]),  m(calm) = 1, m(turbulent) = turbulent_vol_mult

normalized so ``E[v_t**2] = 1``: ``vol_bps_per_sqrt_hour`` is then each instrument's long-run
diffusive volatility.

Fair value. For instrument i, with ``sigma_i`` its volatility per sqrt(second)::

    d log F_i = kappa * a_i(t) dt + sigma_i * v_t * (sqrt(rho) dW_common + sqrt(1 - rho) dW_i) + dJ_i

- ``rho = correlation``: one common factor gives every pair of instruments diffusive-return
  correlation ``rho``. Idiosyncratic jumps and alphas dilute it: at the defaults, 1-min mid
  returns correlate at about 0.4 for ``rho = 0.5``.
- ``J_i``: compound Poisson jumps, idiosyncratic, ``jumps_per_hour`` per trading hour when calm and
  ``turbulent_jump_mult`` times more when turbulent; log sizes ``N(0, jump_bps)``, mean zero so they
  add no drift to ``log F``.
- ``a_i``: the planted predictable component, a latent OU process with stationary std 1 and rate
  ``theta = ln 2 / alpha_halflife_s``; ``kappa = alpha_strength * alpha_drift_bps_per_min / 60``
  (per second, as a log-return). With ``alpha_strength = 0``, ``log F`` is a martingale.
- The drift accrues only inside sessions (it is an intraday effect); overnight, ``log F`` takes a
  mean-zero gap return with variance ``overnight_var_ratio * sigma_i**2 * gap_s`` (weekends gap
  more than weeknights) and ``a_i`` keeps mean-reverting.

Factors (off by default). With ``n_sectors = S >= 1`` instrument i is in sector ``s(i) = i % S``
and its diffusion becomes::

    sigma_i * v_t * (beta_i sqrt(rho) dW_market + sqrt(rho_s) dW_sector(s(i)) + sqrt(1 - rho - rho_s) dW_i) + mu_i dt

``rho_s = sector_correlation``; ``beta_i`` and the drift ``mu_i`` (per trading second, from
``drift_bps_per_hour``) are drawn uniformly per instrument from the seed (``market.beta``,
``market.drift_per_s``, ``market.sector``). Two instruments of one sector then correlate at about
``beta_i beta_j rho + rho_s`` (over their total variance), of two sectors at ``beta_i beta_j rho``:
the block structure of an equity universe. The overnight gap has the same loadings; the drift, like
the alpha, accrues only inside sessions. With the defaults (0 sectors, betas 1, no drift) the code
path and every draw are those of the one-factor market.

Discretization. Quote events are the only times the fair value is materialized. Between two
consecutive events of instrument i at ``t0 < t1`` the drift increment is the exact conditional mean
``kappa * a_i(t0) * (1 - exp(-theta (t1 - t0))) / theta`` of the OU integral, and ``a_i`` itself
steps exactly (``a1 = a0 exp(-theta dt) + sqrt(1 - exp(-2 theta dt)) z``). These increments telescope,
so the oracle below is exact, not approximate. Diffusion uses ``v`` at the left end of each step.

Ground truth, one value per quote row:

- ``fair_px = F_i(ts_event)``;
- ``oracle_ret = E[log F_i(t + h) - log F_i(t) | a_i(t)] = kappa * a_i(t) * (1 - exp(-theta tau)) / theta``
  with ``h = horizon_s`` and ``tau = min(h, close - t)`` (no drift accrues past the close; the
  overnight gap is mean zero). It is exactly 0 when ``alpha_strength = 0``.

Quotes. Each instrument's quotes arrive as a Poisson process of rate ``quote_rate_hz`` (drawn as one
merged process of rate ``N * quote_rate_hz`` with iid instrument labels, which is the same thing).
For a quote of instrument i at ``t``:

- spread: ``spread_bps = (spread_min_bps + spread_vol_bps * v_t) * lognormal(spread_jitter)``,
  so spreads widen with volatility; ``bid_px = floor((F - spread/2) / tick) * tick`` and
  ``ask_px = ceil((F + spread/2) / tick) * tick``, at least one tick apart (never locked or crossed).
- sizes: ``log sz = log(depth_sz * v_t**-depth_vol_elasticity) + size_disp * v_t**size_disp_vol_elasticity * z
  +- (imbalance_loading * a_i + u_i) / 2`` (``+`` on the bid), rounded to lots and at least one lot:
  depth thins and disperses with volatility, and the size imbalance ``bid_sz / (bid_sz + ask_sz)``
  leans with the latent alpha. ``u_i`` is a persistent OU nuisance (std ``imbalance_noise``,
  half-life ``imbalance_noise_halflife_s``), so averaging many quotes cannot reveal ``a_i``: the
  imbalance carries partial information, as real book imbalance does.
- ``ts_recv = ts_event + latency``, latency ``latency_min_us + Exp(latency_jitter_us)`` capped at
  ``latency_max_us``, made non-decreasing per instrument. Rows are merged across instruments and
  stably sorted by ``ts_recv``. No quote has ``ts_event`` or ``ts_recv`` outside its session (the last
  ``latency_max_us`` of a session is quiet).
- ``seq`` counts each instrument's emitted quotes from 1 over the whole data set; ``flags = 0``.

Feed outages. Per session, ``Poisson(outages_per_session)`` windows of length ``U(outage_s)``
seconds, placed uniformly inside the session. With ``outage_scope = "all"`` (the default) a window
silences the whole feed, every instrument, as a dropped connection does; with ``"one"`` it silences
one instrument drawn uniformly. The latent processes run on through an outage (the market did not
stop, only our view of it), so the first quote after it may jump. The default outage length exceeds
the engine's 60 s gap threshold, so each outage triggers a GAP reset; Poisson gaps at 10 Hz never do.

Simulation. Sessions are simulated in time blocks of about ``block_quotes`` quotes (a multiple of
``grid_s``), carrying the latent state across blocks, sessions and nights, so memory stays bounded
regardless of session length. Every random stream is keyed by (seed, session, block, component)
through ``numpy.random.SeedSequence``, so output is bit-identical on every run of the same config
and switching one component off (jumps, outages, the alpha drift) leaves the other draws unchanged.

Not modelled: intraday seasonality of volatility or quote rates, market-wide jumps, holidays (the
calendar's days-of-week only), trades.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from engine.domain.calendar import SessionCalendar
from engine.domain.instrument import Instrument, InstrumentTable
from engine.domain.quote import QUOTE_DTYPE, concat_rows, take_rows
from engine.domain.source import SourceStats
from engine.domain.timestamps import DAY_NS, SECOND_NS, US_NS, datetime_ns

# Spawn-key namespaces of the random streams (see module docstring); never renumber, or every
# generated data set changes.
_KEY_STATIC = 0
_KEY_BLOCK = 1
_KEY_NIGHT = 2
_KEY_OUTAGE = 3
# Components within a block.
_STREAM_EVENTS = 0
_STREAM_MARKET = 1
_STREAM_JUMPS = 2
_STREAM_SECTOR = 3
# Factor-structure draws (betas, drifts; sector gaps overnight) have keys of their own, so the
# market without them is the one it always was, draw for draw.
_KEY_FACTOR = 4
_KEY_NIGHT_SECTOR = 5


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic market; the defaults are the engine's demo data set.

    The defaults give 3 instruments x 5 US-RTH (NYSE hours) sessions at 10 quotes/s each: about 702k quotes per
    session, 3.5M in all, with 1-2% daily volatility, 2-5 bps spreads and a modest planted alpha
    (the oracle's 10 s expected return has a std of about 0.45 bps against about 3 bps of 10 s
    noise; an EMA-cross momentum strategy paying a 2 bps taker fee loses money on it).
    """

    n_instruments: int = 3
    n_sessions: int = 5  # number of sessions generated (per the calendar)
    # Any engine.domain.calendar spec; "24x7" gives continuous UTC days. US-RTH is NYSE hours on every
    # weekday: a synthetic market has no holidays (and its data set and the default model stay
    # what they were before XNYS learned the NYSE holidays).
    calendar: str = "US-RTH"
    start: str = "2024-01-02"  # first local date considered for sessions (ISO date)
    seed: int = 7
    quote_rate_hz: float = 10.0  # mean Poisson quote arrival rate per instrument
    alpha_strength: float = 1.0  # scale of the planted predictable drift; 0 disables it
    alpha_halflife_s: float = 30.0  # half-life of the latent OU alpha signal
    horizon_s: float = 10.0  # horizon of the oracle's expected return
    correlation: float = 0.5  # pairwise correlation of diffusive returns via one common factor
    outages_per_session: float = 0.5  # mean number of intra-session feed outages (Poisson)
    outage_s: tuple[float, float] = (120.0, 300.0)  # uniform outage length range, > default gap threshold (60 s)
    outage_scope: str = "all"  # "all": an outage silences every instrument; "one": a random one

    # Factor structure (see "Factors" in the module doc). The defaults are the one-factor market
    # above, bit for bit: no sectors, every beta 1, no drift.
    n_sectors: int = 0  # instrument i is in sector i % n_sectors; 0: no sector factors
    sector_correlation: float = 0.0  # share of diffusive variance from the sector factor (needs n_sectors >= 1)
    beta_range: tuple[float, float] = (1.0, 1.0)  # per-instrument market beta, uniform over [lo, hi]
    drift_bps_per_hour: tuple[float, float] = (0.0, 0.0)  # per-instrument drift of log F per trading hour, uniform

    # Instruments: opening prices log-uniform over base_px, long-run diffusive vol uniform over
    # vol_bps_per_sqrt_hour (40-80 bps/sqrt(h) is 1.0-2.0% over a 6.5 h session).
    base_px: tuple[float, float] = (40.0, 400.0)
    vol_bps_per_sqrt_hour: tuple[float, float] = (40.0, 80.0)
    tick_size: float = 0.01
    lot_size: float = 1.0
    overnight_var_ratio: float = 0.05  # overnight variance per second, relative to trading hours

    # Planted alpha: drift of log F at a_t = 1 sd, in bps per minute (times alpha_strength).
    alpha_drift_bps_per_min: float = 3.0

    # Stochastic volatility (log-vol OU) and the calm/turbulent regime chain.
    vol_of_vol: float = 0.35  # stationary std of log volatility; 0 disables stochastic vol
    vol_halflife_s: float = 600.0
    calm_mean_s: float = 3600.0  # mean sojourn in the calm regime
    turbulent_mean_s: float = 900.0  # mean sojourn in the turbulent regime
    turbulent_vol_mult: float = 2.5  # vol of turbulent relative to calm; 1 disables regimes' effect on vol

    # Jumps (idiosyncratic, mean-zero log size).
    jumps_per_hour: float = 0.5  # calm-regime jump rate per instrument; 0 disables jumps
    turbulent_jump_mult: float = 4.0
    jump_bps: float = 25.0  # std of the log jump size

    # Book shape.
    spread_min_bps: float = 1.0
    spread_vol_bps: float = 2.0  # spread added per unit of the vol multiplier v_t (E[v^2] = 1)
    spread_jitter: float = 0.25  # lognormal dispersion of the spread quote to quote
    depth_sz: float = 500.0  # typical displayed size per side at v_t = 1
    depth_vol_elasticity: float = 1.0  # depth ~ v_t ** -elasticity
    size_disp: float = 0.5  # lognormal dispersion of sizes at v_t = 1
    size_disp_vol_elasticity: float = 0.5  # dispersion ~ v_t ** elasticity
    imbalance_loading: float = 0.5  # log(bid_sz / ask_sz) per sd of the latent alpha
    imbalance_noise: float = 1.0  # std of the persistent nuisance in log(bid_sz / ask_sz)
    imbalance_noise_halflife_s: float = 20.0

    # Receive latency: ts_recv - ts_event.
    latency_min_us: float = 50.0
    latency_jitter_us: float = 80.0  # mean of the exponential part
    latency_max_us: float = 500.0

    # Simulation layout (changing these changes the random draws, not the model).
    grid_s: float = 1.0  # grid of the regime chain, log-vol and jump rates
    block_quotes: int = 1 << 16  # target quotes per simulation block (bounds memory)
    chunk_rows: int = 1 << 20  # most rows per chunk yielded by chunks()

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticConfig: {what}")

        need(self.n_instruments >= 1, f"n_instruments must be >= 1, got {self.n_instruments}")
        need(self.n_sessions >= 0, f"n_sessions must be >= 0, got {self.n_sessions}")
        SessionCalendar.parse(self.calendar)
        dt.date.fromisoformat(self.start)
        need(self.quote_rate_hz > 0, "quote_rate_hz must be > 0")
        need(self.alpha_strength >= 0, "alpha_strength must be >= 0")
        need(self.alpha_halflife_s > 0 and self.horizon_s > 0, "alpha_halflife_s and horizon_s must be > 0")
        need(0.0 <= self.correlation < 1.0, f"correlation must be in [0, 1), got {self.correlation}")
        need(self.n_sectors >= 0, f"n_sectors must be >= 0, got {self.n_sectors}")
        need(self.sector_correlation >= 0, f"sector_correlation must be >= 0, got {self.sector_correlation}")
        need(self.n_sectors >= 1 or self.sector_correlation == 0,
             "sector_correlation needs sectors: give n_sectors >= 1, or leave sector_correlation at 0")
        need(self.correlation + self.sector_correlation < 1.0,
             f"correlation + sector_correlation must be < 1 (the rest is idiosyncratic), got "
             f"{self.correlation} + {self.sector_correlation}")
        need(self.beta_range[0] <= self.beta_range[1], f"beta_range must be lo <= hi, got {self.beta_range}")
        need(self.drift_bps_per_hour[0] <= self.drift_bps_per_hour[1],
             f"drift_bps_per_hour must be lo <= hi, got {self.drift_bps_per_hour}")
        need(self.outages_per_session >= 0, "outages_per_session must be >= 0")
        need(0 < self.outage_s[0] <= self.outage_s[1], f"outage_s must be 0 < lo <= hi, got {self.outage_s}")
        need(self.outage_scope in ("all", "one"), f"outage_scope must be 'all' or 'one', got {self.outage_scope!r}")
        need(0 < self.base_px[0] <= self.base_px[1], "base_px must be 0 < lo <= hi")
        lo_vol, hi_vol = self.vol_bps_per_sqrt_hour
        need(0 < lo_vol <= hi_vol, "vol_bps_per_sqrt_hour must be 0 < lo <= hi")
        need(self.tick_size > 0 and self.lot_size > 0, "tick_size and lot_size must be > 0")
        need(self.overnight_var_ratio >= 0, "overnight_var_ratio must be >= 0")
        need(self.vol_of_vol >= 0 and self.vol_halflife_s > 0, "vol_of_vol >= 0 and vol_halflife_s > 0 required")
        need(self.calm_mean_s > 0 and self.turbulent_mean_s > 0, "regime mean sojourns must be > 0")
        need(self.turbulent_vol_mult > 0 and self.turbulent_jump_mult >= 0, "turbulent multipliers must be positive")
        need(self.jumps_per_hour >= 0 and self.jump_bps >= 0, "jumps_per_hour and jump_bps must be >= 0")
        need(min(self.spread_min_bps, self.spread_vol_bps, self.spread_jitter) >= 0, "spread parameters must be >= 0")
        need(self.depth_sz > 0 and self.size_disp >= 0, "depth_sz > 0 and size_disp >= 0 required")
        need(self.imbalance_noise >= 0 and self.imbalance_noise_halflife_s > 0, "imbalance noise parameters invalid")
        need(0 <= self.latency_min_us <= self.latency_max_us and self.latency_jitter_us >= 0, "bad latency range")
        need(self.grid_s > 0 and min(self.block_quotes, self.chunk_rows) >= 1, "grid_s, block_quotes, chunk_rows: > 0")

    def replace(self, **changes: object) -> "SyntheticConfig":
        return dataclasses.replace(self, **changes)


class SyntheticSession(NamedTuple):
    quotes: np.ndarray  # QUOTE_DTYPE, sorted by ts_recv (stable), all instruments merged
    fair_px: np.ndarray  # float64 per row: latent fair value of the row's instrument at ts_event
    oracle_ret: np.ndarray  # float64 per row: E[log F(t+h) - log F(t) | information at t], h = horizon_s
    open_ns: int
    close_ns: int


_MAX_EXP = 40.0  # e**40 ~ 2e17: far from overflow, and cumsum error stays ~1e-16 relative


def _ou_path(x0: float, theta_dt: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Values x_1..x_n of ``x_k = exp(-theta_dt_k) x_{k-1} + eps_k`` without a per-step loop.

    Uses ``x_k = exp(-T_k) (x_0 + sum_j exp(T_j) eps_j)`` with ``T`` the cumulative decay,
    restarted every ``_MAX_EXP`` of decay so the weights never overflow; the Python loop runs
    once per restart (a handful per block), not per step.
    """
    n = len(theta_dt)
    out = np.empty(n)
    if n == 0:
        return out
    cum = np.cumsum(theta_dt)
    x_prev, t_prev, b = float(x0), 0.0, 0
    while b < n:
        e = int(np.searchsorted(cum, t_prev + _MAX_EXP, side="right"))
        if e <= b:  # one step decays by more than _MAX_EXP: the past is forgotten, step directly
            x_prev = math.exp(-theta_dt[b]) * x_prev + eps[b]
            out[b] = x_prev
            t_prev = cum[b]
            b += 1
            continue
        w = np.exp(cum[b:e] - t_prev)
        seg = np.cumsum(w * eps[b:e])
        seg += x_prev
        seg /= w
        out[b:e] = seg
        x_prev, t_prev, b = float(seg[-1]), float(cum[e - 1]), e
    return out


def _ou_step(x: np.ndarray | float, theta_dt: float, sd: float, z: np.ndarray | float):
    """Exact OU transition over one step of decay ``theta_dt`` (stationary std ``sd``)."""
    return x * math.exp(-theta_dt) + sd * math.sqrt(-math.expm1(-2.0 * theta_dt)) * z


class _Latent:
    """State carried between blocks, sessions and nights."""

    __slots__ = ("log_fair", "alpha", "imb_noise", "log_vol", "regime", "seq_next", "last_recv_ns")

    def __init__(self, n: int) -> None:
        self.log_fair = np.zeros(n)
        self.alpha = np.zeros(n)
        self.imb_noise = np.zeros(n)
        self.log_vol = 0.0
        self.regime = 0
        self.seq_next = np.ones(n, dtype=np.uint64)
        self.last_recv_ns = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)


class _Piece(NamedTuple):
    session: int
    quotes: np.ndarray
    fair_px: np.ndarray
    oracle_ret: np.ndarray


def _local_midnight_ns(day: dt.date, tz: dt.tzinfo) -> int:
    return datetime_ns(dt.datetime.combine(day, dt.time(0), tzinfo=tz))


class SyntheticMarket:
    """A ``QuoteSource`` over the synthetic market described in the module docstring.

    Besides the protocol's ``instruments`` and ``stats`` it exposes the session bounds
    (``opens_ns``, ``closes_ns``) and the instruments' drawn parameters (``base_px``, the opening
    fair value, and ``sigma_per_sqrt_s``, the long-run diffusive volatility).
    """

    def __init__(self, config: SyntheticConfig = SyntheticConfig()) -> None:
        self.config = config
        cfg = config
        n = cfg.n_instruments
        self.instruments = InstrumentTable(
            Instrument(
                symbol=f"SYN{i:03d}",
                venue="SYNTH",
                tick_size=cfg.tick_size,
                lot_size=cfg.lot_size,
                calendar=cfg.calendar,
            )
            for i in range(n)
        )
        self.stats = SourceStats(source=f"synthetic(seed={cfg.seed})", ts_unit="ns")
        self.opens_ns, self.closes_ns = self._session_bounds()
        # Poisson mean of the row count, for progress display (outages make the real count lower).
        session_s = float((self.closes_ns - self.opens_ns).sum()) / SECOND_NS
        self.expected_rows = int(n * cfg.quote_rate_hz * session_s)

        rng = self._rng(_KEY_STATIC)
        lo, hi = np.log(cfg.base_px)
        self.base_px = np.exp(rng.uniform(lo, hi, n))
        vol_bps = rng.uniform(*cfg.vol_bps_per_sqrt_hour, n)
        self.sigma_per_sqrt_s = vol_bps * 1e-4 / 60.0  # per sqrt(second) of trading time
        self._initial_draws = (rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(), rng.random())

        # Factor structure, from its own stream: the draws above are what they always were.
        frng = self._rng(_KEY_FACTOR)
        self.beta = frng.uniform(*cfg.beta_range, n)
        self.drift_per_s = frng.uniform(*cfg.drift_bps_per_hour, n) * 1e-4 / 3600.0  # log F per trading second
        self.sector = np.arange(n) % cfg.n_sectors if cfg.n_sectors else np.zeros(n, np.int64)
        # Off (the defaults): the one-factor code path, untouched, so the demo's data stay bit-identical.
        self._factors = (
            cfg.n_sectors > 0 or cfg.beta_range != (1.0, 1.0) or cfg.drift_bps_per_hour != (0.0, 0.0)
        )

        # Derived constants of the model.
        self._p_turb = cfg.turbulent_mean_s / (cfg.calm_mean_s + cfg.turbulent_mean_s)
        self._switch_rate = 1.0 / cfg.calm_mean_s + 1.0 / cfg.turbulent_mean_s
        m2 = (1.0 - self._p_turb) + self._p_turb * cfg.turbulent_vol_mult**2
        self._vol_mult = np.array([1.0, cfg.turbulent_vol_mult]) / math.sqrt(m2)
        self._theta_alpha = math.log(2.0) / cfg.alpha_halflife_s
        self._theta_vol = math.log(2.0) / cfg.vol_halflife_s
        self._theta_imb = math.log(2.0) / cfg.imbalance_noise_halflife_s
        self._kappa = cfg.alpha_strength * cfg.alpha_drift_bps_per_min * 1e-4 / 60.0
        self._grid_ns = max(1, int(round(cfg.grid_s * SECOND_NS)))
        cells = max(1, int(cfg.block_quotes / (n * cfg.quote_rate_hz) / cfg.grid_s))
        self._block_ns = cells * self._grid_ns
        self._lat_max_ns = int(round(cfg.latency_max_us * US_NS))
        inv_tick = 1.0 / cfg.tick_size
        # Dividing integer tick counts by an integral 1/tick gives the correctly rounded decimal
        # (100.01, not 100.01000000000001), so prices compare equal to the venue's decimal strings.
        self._ticks_per_unit = round(inv_tick) if abs(inv_tick - round(inv_tick)) < 1e-9 else None

    # ----------------------------------------------------------------------------- public

    def sessions(self) -> Iterator[SyntheticSession]:
        """One ``SyntheticSession`` per calendar session, in time order."""
        parts: list[_Piece] = []
        current = 0
        for piece in self._pieces():
            if piece.session != current and parts:
                yield self._assemble(current, parts)
                parts = []
            current = piece.session
            parts.append(piece)
        if parts:  # _pieces yields at least one (maybe empty) piece per session: none is skipped
            yield self._assemble(current, parts)

    def chunks(self) -> Iterator[np.ndarray]:
        """The quotes of ``sessions()`` in ``ts_recv`` order, in chunks of at most ``chunk_rows``.

        Streams block by block, so memory does not grow with session length. ``stats`` counts
        the current pass (reset when a new pass starts). A chunk never spans two sessions.
        """
        self.stats.rows_read = 0
        self.stats.rows_emitted = 0
        cap = self.config.chunk_rows
        for piece in self._pieces():
            q = piece.quotes
            self.stats.rows_read += len(q)
            for lo in range(0, len(q), cap):
                chunk = q[lo : lo + cap]
                self.stats.rows_emitted += len(chunk)
                yield chunk

    def __repr__(self) -> str:
        return f"SyntheticMarket({self.config!r})"

    # ----------------------------------------------------------------------------- internals

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.config.seed, spawn_key=key)))

    def _session_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        cal = SessionCalendar.parse(cfg.calendar)
        lo = _local_midnight_ns(dt.date.fromisoformat(cfg.start), cal.tz)
        if cfg.n_sessions == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        days = 2 * cfg.n_sessions + 14
        while True:
            opens, closes = cal.sessions_between(lo, lo + days * DAY_NS)
            keep = opens >= lo  # drop an overnight session opened the day before ``start``
            opens, closes = opens[keep], closes[keep]
            if len(opens) >= cfg.n_sessions:
                return opens[: cfg.n_sessions].copy(), closes[: cfg.n_sessions].copy()
            if days > 3660 * 10:
                raise ValueError(f"calendar {cfg.calendar!r} has fewer than {cfg.n_sessions} sessions in ten years")
            days *= 2

    def _assemble(self, k: int, parts: list[_Piece]) -> SyntheticSession:
        return SyntheticSession(
            quotes=concat_rows([p.quotes for p in parts]),
            fair_px=np.concatenate([p.fair_px for p in parts]),
            oracle_ret=np.concatenate([p.oracle_ret for p in parts]),
            open_ns=int(self.opens_ns[k]),
            close_ns=int(self.closes_ns[k]),
        )

    def _initial_state(self) -> _Latent:
        cfg = self.config
        st = _Latent(cfg.n_instruments)
        z_alpha, z_imb, z_vol, u_regime = self._initial_draws
        st.log_fair = np.log(self.base_px)
        st.alpha = z_alpha.copy()  # stationary draws: the first session is not a warm-up
        st.imb_noise = cfg.imbalance_noise * z_imb
        st.log_vol = cfg.vol_of_vol * float(z_vol)
        st.regime = int(u_regime < self._p_turb)
        return st

    def _outages(self, k: int, open_ns: int, close_ns: int) -> np.ndarray:
        """Outage windows of session k as rows (start_ns, end_ns, instrument or -1 for all)."""
        cfg = self.config
        rng = self._rng(_KEY_OUTAGE, k)
        count = int(rng.poisson(cfg.outages_per_session)) if cfg.outages_per_session > 0 else 0
        length_ns = (rng.uniform(*cfg.outage_s, count) * SECOND_NS).astype(np.int64)
        room_ns = np.maximum(close_ns - open_ns - length_ns, 0)
        start_ns = open_ns + (rng.random(count) * room_ns).astype(np.int64)
        inst = rng.integers(0, cfg.n_instruments, count) if cfg.outage_scope == "one" else np.full(count, -1)
        return np.stack([start_ns, start_ns + length_ns, inst.astype(np.int64)], axis=1)

    def _overnight(self, st: _Latent, k: int, gap_ns: int) -> None:
        """Evolve the latent state across the gap between session k's close and the next open."""
        if gap_ns <= 0:
            return
        cfg = self.config
        n = cfg.n_instruments
        gap_s = gap_ns / SECOND_NS
        rng = self._rng(_KEY_NIGHT, k)
        z_common = rng.standard_normal()
        z_idio, z_alpha, z_imb = rng.standard_normal((3, n))
        z_vol, u_regime = rng.standard_normal(), rng.random()
        rho = cfg.correlation
        gap_sd = self.sigma_per_sqrt_s * math.sqrt(cfg.overnight_var_ratio * gap_s)
        if self._factors:
            rho_s = cfg.sector_correlation
            z_sec = self._rng(_KEY_NIGHT_SECTOR, k).standard_normal(max(cfg.n_sectors, 1))[self.sector]
            st.log_fair = st.log_fair + gap_sd * (
                self.beta * math.sqrt(rho) * z_common + math.sqrt(rho_s) * z_sec + math.sqrt(1.0 - rho - rho_s) * z_idio
            )
        else:
            st.log_fair = st.log_fair + gap_sd * (math.sqrt(rho) * z_common + math.sqrt(1.0 - rho) * z_idio)
        st.alpha = _ou_step(st.alpha, self._theta_alpha * gap_s, 1.0, z_alpha)
        st.imb_noise = _ou_step(st.imb_noise, self._theta_imb * gap_s, cfg.imbalance_noise, z_imb)
        st.log_vol = float(_ou_step(st.log_vol, self._theta_vol * gap_s, cfg.vol_of_vol, z_vol))
        # Two-state chain: P(turbulent at +gap) relaxes to its stationary value at the switch rate.
        p = self._p_turb + (st.regime - self._p_turb) * math.exp(-self._switch_rate * gap_s)
        st.regime = int(u_regime < p)

    def _pieces(self) -> Iterator[_Piece]:
        """Quote pieces in ts_recv order; the pieces of one session concatenate to the session."""
        st = self._initial_state()
        n_sess = len(self.opens_ns)
        for k in range(n_sess):
            open_ns, close_ns = int(self.opens_ns[k]), int(self.closes_ns[k])
            outages = self._outages(k, open_ns, close_ns)
            pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            b0, blk = open_ns, 0
            while b0 < close_ns:
                b1 = min(b0 + self._block_ns, close_ns)
                last = b1 == close_ns
                q, fair, oracle = self._block(st, k, blk, b0, b1, close_ns, outages, last)
                if pending is not None and len(pending[0]):
                    # Rows of the previous block received after b0 interleave only with this
                    # block's first few hundred microseconds: merge that head, not the block.
                    head = int(np.searchsorted(q["ts_recv"], pending[0]["ts_recv"][-1], side="right"))
                    hq = concat_rows([pending[0], q[:head]])
                    order = np.argsort(hq["ts_recv"], kind="stable")
                    q = concat_rows([take_rows(hq, order), q[head:]])
                    fair = np.concatenate([np.concatenate([pending[1], fair[:head]])[order], fair[head:]])
                    oracle = np.concatenate([np.concatenate([pending[2], oracle[:head]])[order], oracle[head:]])
                if last:
                    pending = None
                    yield _Piece(k, q, fair, oracle)
                else:
                    cut = int(np.searchsorted(q["ts_recv"], b1, side="left"))
                    pending = (q[cut:], fair[cut:], oracle[cut:])
                    yield _Piece(k, q[:cut], fair[:cut], oracle[:cut])
                b0, blk = b1, blk + 1
            if k + 1 < n_sess:
                self._overnight(st, k, int(self.opens_ns[k + 1]) - close_ns)

    def _regime_switches(self, rng: np.random.Generator, state: int, span_s: float) -> np.ndarray:
        """Switch times (seconds from block start, < span_s) of the chain starting in ``state``."""
        cfg = self.config
        means = np.array([cfg.calm_mean_s, cfg.turbulent_mean_s])
        parts, total, parity = [], 0.0, state
        batch = int(2.0 * span_s * self._switch_rate) + 4
        while total < span_s:
            durations = rng.standard_exponential(batch) * means[(np.arange(batch) + parity) % 2]
            cum = total + np.cumsum(durations)
            parts.append(cum)
            total = float(cum[-1])
            parity = (parity + batch) % 2
        times = np.concatenate(parts)
        return times[times < span_s]

    def _block(
        self,
        st: _Latent,
        k: int,
        blk: int,
        b0: int,
        b1: int,
        close_ns: int,
        outages: np.ndarray,
        last: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Simulate [b0, b1) of session k, advance ``st`` to b1, return its quotes sorted by ts_recv."""
        cfg = self.config
        n_inst = cfg.n_instruments
        grid_ns = self._grid_ns
        rho = cfg.correlation
        factors = self._factors
        rho_s = cfg.sector_correlation
        sq_rho, sq_idio = math.sqrt(rho), math.sqrt(1.0 - rho - rho_s)
        sq_sec = math.sqrt(rho_s)
        theta_a, theta_u, kappa = self._theta_alpha, self._theta_imb, self._kappa

        # ---- coarse grid: regime chain, log-vol, vol multiplier, jump rates
        rng_m = self._rng(_KEY_BLOCK, k, blk, _STREAM_MARKET)
        span_ns = b1 - b0
        n_grid = -(-span_ns // grid_ns)
        grid_off_ns = np.arange(n_grid, dtype=np.int64) * grid_ns
        cell_s = np.minimum(grid_ns, span_ns - grid_off_ns) / SECOND_NS
        switches_s = self._regime_switches(rng_m, st.regime, span_ns / SECOND_NS)
        n_sw = np.searchsorted(switches_s, grid_off_ns / SECOND_NS, side="right")
        regime_g = st.regime ^ (n_sw & 1)
        z_vol = rng_m.standard_normal(n_grid)
        step_vol = self._theta_vol * cfg.grid_s
        eps_vol = cfg.vol_of_vol * math.sqrt(-math.expm1(-2.0 * step_vol)) * z_vol[:-1]
        log_vol_g = np.empty(n_grid)
        log_vol_g[0] = st.log_vol
        log_vol_g[1:] = _ou_path(st.log_vol, np.full(n_grid - 1, step_vol), eps_vol)
        vol_g = self._vol_mult[regime_g] * np.exp(log_vol_g - cfg.vol_of_vol**2)
        # Book-shape terms depend on time only through v_t: evaluate on the grid, look up per quote.
        spread_g = cfg.spread_min_bps + cfg.spread_vol_bps * vol_g
        log_depth_g = math.log(cfg.depth_sz / cfg.lot_size) - cfg.depth_vol_elasticity * np.log(vol_g)
        disp_g = cfg.size_disp * vol_g**cfg.size_disp_vol_elasticity
        st.log_vol = float(_ou_step(log_vol_g[-1], self._theta_vol * cell_s[-1], cfg.vol_of_vol, z_vol[-1]))
        st.regime = int(st.regime ^ (len(switches_s) & 1))

        # ---- jumps: Poisson counts per grid cell and instrument, uniform times within the cell
        rng_j = self._rng(_KEY_BLOCK, k, blk, _STREAM_JUMPS)
        if cfg.jumps_per_hour > 0:
            lam = cfg.jumps_per_hour / 3600.0 * np.where(regime_g == 1, cfg.turbulent_jump_mult, 1.0) * cell_s
            counts = rng_j.poisson(lam, size=(n_inst, n_grid))
            jump_inst, jump_cell = np.nonzero(counts)
            reps = counts[jump_inst, jump_cell]
            jump_inst, jump_cell = np.repeat(jump_inst, reps), np.repeat(jump_cell, reps)
            within_ns = (rng_j.random(len(jump_cell)) * cell_s[jump_cell] * SECOND_NS).astype(np.int64)
            jump_ts = b0 + grid_off_ns[jump_cell] + within_ns
            jump_ret = rng_j.standard_normal(len(jump_cell)) * (cfg.jump_bps * 1e-4)
            jorder = np.lexsort((jump_ts, jump_inst))
            jump_inst, jump_ts, jump_ret = jump_inst[jorder], jump_ts[jorder], jump_ret[jorder]
            jump_bounds = np.searchsorted(jump_inst, np.arange(n_inst + 1))
        else:
            jump_ts = np.empty(0, np.int64)
            jump_ret = np.empty(0)
            jump_bounds = np.zeros(n_inst + 1, np.int64)

        # ---- quote events: one merged Poisson process with iid instrument labels
        rng_e = self._rng(_KEY_BLOCK, k, blk, _STREAM_EVENTS)
        ev_end = close_ns - self._lat_max_ns if last else b1
        ev_span_ns = max(ev_end - b0, 0)
        n = int(rng_e.poisson(n_inst * cfg.quote_rate_hz * ev_span_ns / SECOND_NS))
        # Sorted uniforms as normalized exponential cumsums (no sort); + arange makes them distinct.
        cum = np.cumsum(rng_e.standard_exponential(n + 1))
        scale = max(ev_span_ns - n, 0) / cum[-1]
        ts = b0 + (cum[:n] * scale).astype(np.int64) + np.arange(n, dtype=np.int64)
        label = rng_e.integers(0, n_inst, n, dtype=np.uint32) if n_inst > 1 else np.zeros(n, np.uint32)
        z = rng_e.standard_normal((7, n))
        lat_ns = cfg.latency_min_us * US_NS + rng_e.standard_exponential(n) * (cfg.latency_jitter_us * US_NS)
        lat_ns = np.minimum(lat_ns, self._lat_max_ns).astype(np.int64)
        z_end = rng_e.standard_normal(1 + 3 * n_inst)

        cell = (ts - b0) // grid_ns
        # Common factor at the merged times; each instrument differences it at its own times.
        prev_ts = np.empty(n, np.int64)
        prev_cell = np.empty(n, np.int64)
        if n:
            prev_ts[0], prev_cell[0] = b0, 0
            prev_ts[1:], prev_cell[1:] = ts[:-1], cell[:-1]
        common = np.cumsum(vol_g[prev_cell] * np.sqrt((ts - prev_ts) / SECOND_NS) * z[0])
        last_vol = vol_g[cell[-1]] if n else vol_g[0]
        last_ts = int(ts[-1]) if n else b0
        common_end = (common[-1] if n else 0.0) + last_vol * math.sqrt((b1 - last_ts) / SECOND_NS) * z_end[0]
        if factors and cfg.n_sectors:
            # Sector factors at the merged times, as the market factor; their own stream.
            rng_s = self._rng(_KEY_BLOCK, k, blk, _STREAM_SECTOR)
            z_sec = rng_s.standard_normal((cfg.n_sectors, n))
            sector_path = np.cumsum(vol_g[prev_cell] * np.sqrt((ts - prev_ts) / SECOND_NS) * z_sec, axis=1)
            sector_end = (sector_path[:, -1] if n else np.zeros(cfg.n_sectors)) + last_vol * math.sqrt(
                (b1 - last_ts) / SECOND_NS
            ) * rng_s.standard_normal(cfg.n_sectors)

        # Outages: the latent path is simulated through them; only the quotes are dropped.
        keep = np.ones(n, bool)
        for start_ns, end_ns, inst in outages:
            if end_ns > b0 and start_ns < b1:
                hit = (ts >= start_ns) & (ts < end_ns)
                if inst >= 0:
                    hit &= label == inst
                keep &= ~hit

        log_fair = np.empty(n)
        alpha = np.empty(n)
        imb = np.empty(n)
        seq = np.zeros(n, np.uint64)
        ts_recv = ts + lat_ns
        by_inst = np.argsort(label, kind="stable")
        bounds = np.searchsorted(label[by_inst], np.arange(n_inst + 1))
        for i in range(n_inst):
            sel = by_inst[bounds[i] : bounds[i + 1]]
            m = len(sel)
            tau = ts[sel]
            dt_s = np.diff(tau, prepend=b0) / SECOND_NS
            g_prev = np.empty(m, np.int64)
            if m:
                g_prev[0] = 0
                g_prev[1:] = cell[sel[:-1]]
            c_i = common[sel]
            d_common = np.diff(c_i, prepend=0.0)
            d_idio = vol_g[g_prev] * np.sqrt(dt_s) * z[1, sel]
            if factors:
                beta_i, s_i = float(self.beta[i]), int(self.sector[i])
                market = beta_i * sq_rho * d_common
                if cfg.n_sectors:
                    sec_i = sector_path[s_i, sel]
                    market = market + sq_sec * np.diff(sec_i, prepend=0.0)
                diffusion = self.sigma_per_sqrt_s[i] * (market + sq_idio * d_idio) + self.drift_per_s[i] * dt_s
            else:
                diffusion = self.sigma_per_sqrt_s[i] * (sq_rho * d_common + sq_idio * d_idio)

            th_dt = theta_a * dt_s
            a = _ou_path(st.alpha[i], th_dt, np.sqrt(-np.expm1(-2.0 * th_dt)) * z[2, sel])
            a_prev = np.empty(m)
            if m:
                a_prev[0] = st.alpha[i]
                a_prev[1:] = a[:-1]
            # Exact conditional mean of the OU integral over the step: the increments telescope,
            # which is what makes oracle_ret an exact expectation.
            drift = (kappa / theta_a) * a_prev * -np.expm1(-th_dt)

            j_ts = jump_ts[jump_bounds[i] : jump_bounds[i + 1]]
            j_cum = np.concatenate(([0.0], np.cumsum(jump_ret[jump_bounds[i] : jump_bounds[i + 1]])))
            jumps = j_cum[np.searchsorted(j_ts, tau, side="right")]

            lf = st.log_fair[i] + np.cumsum(diffusion + drift) + jumps
            th_u = theta_u * dt_s
            u = _ou_path(st.imb_noise[i], th_u, cfg.imbalance_noise * np.sqrt(-np.expm1(-2.0 * th_u)) * z[3, sel])
            log_fair[sel], alpha[sel], imb[sel] = lf, a, u

            # Advance instrument i from its last event to b1.
            t_last = int(tau[-1]) if m else b0
            rem_s = (b1 - t_last) / SECOND_NS
            a_last = float(a[-1]) if m else float(st.alpha[i])
            v_last = float(vol_g[cell[sel[-1]]]) if m else float(vol_g[0])
            st.log_fair[i] = (
                (lf[-1] if m else st.log_fair[i])
                + self.sigma_per_sqrt_s[i]
                * (sq_rho * (common_end - (c_i[-1] if m else 0.0)) + sq_idio * v_last * math.sqrt(rem_s) * z_end[1 + i])
                + (kappa / theta_a) * a_last * -math.expm1(-theta_a * rem_s)
                + (j_cum[-1] - (jumps[-1] if m else 0.0))
            )
            if factors:
                # What the one-factor line above leaves out: the beta's excess, the sector, the drift.
                rest = (beta_i - 1.0) * sq_rho * (common_end - (c_i[-1] if m else 0.0))
                if cfg.n_sectors:
                    rest += sq_sec * (sector_end[s_i] - (sec_i[-1] if m else 0.0))
                st.log_fair[i] += self.sigma_per_sqrt_s[i] * rest + self.drift_per_s[i] * rem_s
            st.alpha[i] = _ou_step(a_last, theta_a * rem_s, 1.0, z_end[1 + n_inst + i])
            u_last = float(u[-1]) if m else float(st.imb_noise[i])
            st.imb_noise[i] = _ou_step(u_last, theta_u * rem_s, cfg.imbalance_noise, z_end[1 + 2 * n_inst + i])

            kept = sel[keep[sel]]
            if len(kept):
                seq[kept] = st.seq_next[i] + np.arange(len(kept), dtype=np.uint64)
                st.seq_next[i] += np.uint64(len(kept))
                r = np.maximum(np.maximum.accumulate(ts_recv[kept]), st.last_recv_ns[i])
                ts_recv[kept] = r
                st.last_recv_ns[i] = r[-1]

        # ---- quotes of the kept events
        if not keep.all():
            idx = np.flatnonzero(keep)
            ts, ts_recv, label, seq = ts[idx], ts_recv[idx], label[idx], seq[idx]
            log_fair, alpha, imb, cell = log_fair[idx], alpha[idx], imb[idx], cell[idx]
            z = z[:, idx]
        fair = np.exp(log_fair)
        tau_s = np.minimum(cfg.horizon_s, (close_ns - ts) / SECOND_NS)
        oracle = (kappa / theta_a) * alpha * -np.expm1(-theta_a * tau_s) + 0.0  # + 0.0: no -0.0

        spread_bps = spread_g[cell] * np.exp(cfg.spread_jitter * z[4] - 0.5 * cfg.spread_jitter**2)
        half_px = (0.5e-4 * spread_bps) * fair
        tick = cfg.tick_size
        bid_tk = np.maximum(np.floor((fair - half_px) / tick), 1.0)
        ask_tk = np.maximum(np.ceil((fair + half_px) / tick), bid_tk + 1.0)
        if self._ticks_per_unit is not None:
            bid_px, ask_px = bid_tk / self._ticks_per_unit, ask_tk / self._ticks_per_unit
        else:
            bid_px, ask_px = bid_tk * tick, ask_tk * tick

        log_depth = log_depth_g[cell]
        disp = disp_g[cell]
        lean = 0.5 * (cfg.imbalance_loading * alpha + imb)
        bid_sz = np.maximum(np.rint(np.exp(log_depth + disp * z[5] + lean)), 1.0) * cfg.lot_size
        ask_sz = np.maximum(np.rint(np.exp(log_depth + disp * z[6] - lean)), 1.0) * cfg.lot_size

        order = np.argsort(ts_recv, kind="stable")
        q = np.zeros(len(ts), QUOTE_DTYPE)  # zeros, not empty: padding bytes must be deterministic
        q["ts_event"] = ts[order]
        q["ts_recv"] = ts_recv[order]
        q["bid_px"] = bid_px[order]
        q["ask_px"] = ask_px[order]
        q["bid_sz"] = bid_sz[order]
        q["ask_sz"] = ask_sz[order]
        q["seq"] = seq[order]
        q["instrument"] = label[order]
        return q, fair[order], oracle[order]
