"""The synthetic market's factor structure: sectors, betas and drifts (off by default)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeds.synthetic import SyntheticConfig, SyntheticMarket

SECOND_NS = 1_000_000_000

# Three sectors of three: the market factor explains 30% of diffusive variance, the sector 40%.
FACTORS = SyntheticConfig(
    n_instruments=9, n_sessions=3, quote_rate_hz=0.5, n_sectors=3, correlation=0.3, sector_correlation=0.4,
    beta_range=(0.8, 1.2), alpha_strength=0.0, jumps_per_hour=0.0, outages_per_session=0.0,
)


def quotes_sha256(cfg: SyntheticConfig) -> str:
    h = hashlib.sha256()
    for chunk in SyntheticMarket(cfg).chunks():
        h.update(np.ascontiguousarray(chunk).tobytes())
    return h.hexdigest()


def minute_log_returns(market: SyntheticMarket, step_s: float = 60.0) -> np.ndarray:
    """Per instrument (rows), the log return of the fair value over each ``step_s`` inside sessions,
    sampled at the same instants for every instrument (its last quote at or before each)."""
    out = []
    for s in market.sessions():
        grid = np.arange(s.open_ns + int(step_s * SECOND_NS), s.close_ns, int(step_s * SECOND_NS))
        cols = []
        for i in range(market.config.n_instruments):
            sel = s.quotes["instrument"] == i
            k = np.searchsorted(s.quotes["ts_event"][sel], grid, side="right") - 1
            cols.append(np.log(s.fair_px[sel][np.maximum(k, 0)]))
        out.append(np.diff(np.array(cols), axis=1))
    return np.concatenate(out, axis=1)


def test_defaults_leave_the_market_unchanged():
    # Computed on main before the factor options existed: the one-factor market, draw for draw.
    small = SyntheticConfig(n_sessions=2, quote_rate_hz=1.0, n_instruments=4)
    assert quotes_sha256(small) == "43bbe7874696f6137346fe041ee447cf7b7fb9289721379b09b16145d78f50a5"


def test_correlation_matrix_has_the_sector_blocks():
    market = SyntheticMarket(FACTORS)
    corr = np.corrcoef(minute_log_returns(market))
    same = market.sector[:, None] == market.sector[None, :]
    off_diagonal = ~np.eye(len(corr), dtype=bool)
    within, across = corr[same & off_diagonal], corr[~same]
    # Every within-sector pair above every cross-sector pair, each near its loading (0.3 b_i b_j + 0.4, 0.3 b_i b_j).
    assert within.min() > across.max()
    assert 0.55 < within.mean() < 0.85 and 0.15 < across.mean() < 0.45


def test_without_sectors_every_pair_correlates_alike():
    market = SyntheticMarket(FACTORS.replace(n_sectors=0, sector_correlation=0.0, correlation=0.5, beta_range=(1.0, 1.0)))
    corr = np.corrcoef(minute_log_returns(market))
    pairs = corr[~np.eye(len(corr), dtype=bool)]
    assert abs(pairs.mean() - 0.5) < 0.1 and pairs.max() - pairs.min() < 0.3


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_same_seed_same_bytes(seed):
    cfg = FACTORS.replace(seed=seed, n_sessions=2, quote_rate_hz=0.05, drift_bps_per_hour=(-3.0, 3.0))
    assert quotes_sha256(cfg) == quotes_sha256(cfg)
    assert quotes_sha256(cfg) != quotes_sha256(cfg.replace(seed=seed + 1))


def test_betas_and_drifts_are_drawn_per_instrument_within_their_ranges():
    market = SyntheticMarket(FACTORS.replace(n_instruments=20, beta_range=(0.5, 1.5), drift_bps_per_hour=(-2.0, 4.0)))
    assert np.all((market.beta >= 0.5) & (market.beta <= 1.5)) and len(np.unique(market.beta)) == 20
    drift_bps_per_hour = market.drift_per_s * 3600.0 * 1e4
    assert np.all((drift_bps_per_hour >= -2.0) & (drift_bps_per_hour <= 4.0))
    assert np.bincount(market.sector).tolist() == [7, 7, 6]


def test_drift_moves_the_fair_value_by_its_rate():
    # One instrument, no noise to speak of: log F grows by the drift over the session's trading seconds.
    cfg = SyntheticConfig(n_instruments=1, n_sessions=1, quote_rate_hz=0.1, n_sectors=1, sector_correlation=0.0,
                          drift_bps_per_hour=(10.0, 10.0), vol_bps_per_sqrt_hour=(1e-6, 1e-6), alpha_strength=0.0,
                          jumps_per_hour=0.0, outages_per_session=0.0)
    market = SyntheticMarket(cfg)
    s = next(market.sessions())
    hours = (s.quotes["ts_event"][-1] - s.quotes["ts_event"][0]) / SECOND_NS / 3600.0
    assert np.log(s.fair_px[-1] / s.fair_px[0]) * 1e4 == pytest.approx(10.0 * hours, rel=1e-4)


@pytest.mark.parametrize("bad, names", [
    (dict(sector_correlation=0.2), "n_sectors"),
    (dict(n_sectors=2, correlation=0.6, sector_correlation=0.5), "sector_correlation"),
    (dict(n_sectors=-1), "n_sectors"),
    (dict(beta_range=(1.2, 0.8)), "beta_range"),
    (dict(drift_bps_per_hour=(1.0, -1.0)), "drift_bps_per_hour"),
])
def test_bad_factor_options_are_rejected_by_name(bad, names):
    with pytest.raises(ValueError, match=names):
        SyntheticConfig(**bad)
