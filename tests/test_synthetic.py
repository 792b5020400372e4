"""The synthetic market: structure of its quotes, its stylized facts and its ground truth."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from engine.domain.calendar import SessionCalendar
from engine.domain.quote import QUOTE_DTYPE, mid_px
from engine.domain.source import QuoteSource
from feeds.synthetic import SyntheticConfig, SyntheticMarket, SyntheticSession

SECOND_NS = 1_000_000_000
DAY_NS = 86_400 * SECOND_NS

# Small and quick; spans a weekend (Thu 2024-01-04 .. Tue 2024-01-09) and has outages.
SMALL = SyntheticConfig(start="2024-01-04", n_sessions=4, quote_rate_hz=2.0, outages_per_session=1.0)
# For statistics on 1-min bars: the quote rate hardly matters, the number of sessions does.
BARS = SyntheticConfig(n_sessions=10, quote_rate_hz=1.0, outages_per_session=0.0)
NO_STYLIZED = dict(jumps_per_hour=0.0, vol_of_vol=0.0, turbulent_vol_mult=1.0)


@functools.lru_cache(maxsize=16)
def generate(cfg: SyntheticConfig) -> tuple[SyntheticSession, ...]:
    return tuple(SyntheticMarket(cfg).sessions())


def concat(sessions, field):
    parts = [getattr(s, field) for s in sessions]
    if field == "quotes":  # as opaque records: numpy's structured copies skip the padding bytes
        return np.concatenate([p.view(f"V{QUOTE_DTYPE.itemsize}") for p in parts]).view(QUOTE_DTYPE)
    return np.concatenate(parts)


def padding_bytes(q: np.ndarray) -> np.ndarray:
    covered = np.zeros(QUOTE_DTYPE.itemsize, bool)
    for name in QUOTE_DTYPE.names:
        dtype, offset = QUOTE_DTYPE.fields[name][:2]
        covered[offset : offset + dtype.itemsize] = True
    return q.view(np.uint8).reshape(len(q), -1)[:, ~covered]


def per_instrument(q: np.ndarray, i: int) -> np.ndarray:
    return q[q["instrument"] == i]


def bar_log_returns(sessions, n_inst: int, bar_s: float) -> list[np.ndarray]:
    """Per instrument: mid log-returns over consecutive bars inside each session (no overnight)."""
    out: list[list[np.ndarray]] = [[] for _ in range(n_inst)]
    for s in sessions:
        edges = np.arange(s.open_ns + int(bar_s * SECOND_NS), s.close_ns, int(bar_s * SECOND_NS))
        for i in range(n_inst):
            qi = per_instrument(s.quotes, i)
            at = np.searchsorted(qi["ts_event"], edges, side="right") - 1
            out[i].append(np.diff(np.log(mid_px(qi))[at[at >= 0]]))
    return [np.concatenate(r) for r in out]


def excess_kurtosis(x: np.ndarray) -> float:
    z = (x - x.mean()) / x.std()
    return float(np.mean(z**4) - 3.0)


def autocorr(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))


def rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


# ----------------------------------------------------------------------------- interface, structure


def test_is_a_quote_source_with_its_instrument_table():
    m = SyntheticMarket(SMALL.replace(n_instruments=4, calendar="24x7"))
    assert isinstance(m, QuoteSource)
    assert len(m.instruments) == 4
    assert m.instruments.symbols == ["SYN000", "SYN001", "SYN002", "SYN003"]
    assert {(i.venue, i.calendar, i.tick_size, i.lot_size) for i in m.instruments} == {("SYNTH", "24x7", 0.01, 1.0)}
    assert m.stats.source == "synthetic(seed=7)"


@pytest.mark.parametrize("changes", [dict(seed=7), dict(seed=7, outage_scope="one", block_quotes=3_000)])
def test_same_seed_same_bytes_other_seed_other_bytes(changes):
    cfg = SMALL.replace(**changes)
    a, b = list(SyntheticMarket(cfg).sessions()), list(SyntheticMarket(cfg).sessions())
    again = list(SyntheticMarket(cfg).sessions())  # a market re-iterates from scratch too
    for x, y, z in zip(a, b, again, strict=True):
        for field in ("quotes", "fair_px", "oracle_ret"):
            assert getattr(x, field).tobytes() == getattr(y, field).tobytes() == getattr(z, field).tobytes()
        assert (x.open_ns, x.close_ns) == (y.open_ns, y.close_ns)
    other = list(SyntheticMarket(cfg.replace(seed=8)).sessions())
    assert concat(other, "quotes").tobytes() != concat(a, "quotes").tobytes()
    assert concat(other, "fair_px").tobytes() != concat(a, "fair_px").tobytes()


def check_structure(cfg: SyntheticConfig, sessions) -> None:
    cal = SessionCalendar.parse(cfg.calendar)
    assert len(sessions) == cfg.n_sessions
    for k, s in enumerate(sessions):
        q = s.quotes
        assert q.dtype == QUOTE_DTYPE and len(q) > 0
        assert not padding_bytes(q).any()  # zeroed, so equal data means equal bytes
        assert s.fair_px.dtype == np.float64 and s.oracle_ret.dtype == np.float64
        assert len(s.fair_px) == len(s.oracle_ret) == len(q)
        assert np.all(np.diff(q["ts_recv"]) >= 0)
        assert np.all(q["ts_recv"] >= q["ts_event"])
        assert np.all(q["ts_recv"] - q["ts_event"] <= int(cfg.latency_max_us * 1000))
        # Every quote, by either timestamp, lies in this session and the calendar agrees.
        for col in ("ts_event", "ts_recv"):
            assert np.all((q[col] >= s.open_ns) & (q[col] < s.close_ns))
            assert np.all(cal.session_open_of(q[col]) == s.open_ns)
        if k:
            assert s.open_ns >= sessions[k - 1].close_ns
        assert np.all(q["bid_px"] < q["ask_px"])
        for col in ("bid_px", "ask_px"):
            ticks = q[col] / cfg.tick_size
            assert np.all(np.abs(ticks - np.round(ticks)) < 1e-6)
        assert np.all(q["ask_px"] - q["bid_px"] >= cfg.tick_size * (1 - 1e-9))
        for col in ("bid_sz", "ask_sz"):
            assert np.all(q[col] >= cfg.lot_size)
            assert np.all(q[col] % cfg.lot_size == 0)
        assert np.all(q["flags"] == 0)
        assert set(np.unique(q["instrument"])) <= set(range(cfg.n_instruments))
        # The fair value lies inside the quoted market (bid rounds down, ask rounds up).
        assert np.all((q["bid_px"] <= s.fair_px * (1 + 1e-12)) & (s.fair_px <= q["ask_px"] * (1 + 1e-12)))
        assert np.all(np.isfinite(s.oracle_ret))
    q = concat(sessions, "quotes")
    assert np.all(np.diff(q["ts_recv"]) >= 0)
    for i in range(cfg.n_instruments):
        qi = per_instrument(q, i)
        assert len(qi) > 0
        assert np.all(np.diff(qi["ts_event"]) > 0)
        assert np.all(np.diff(qi["ts_recv"]) >= 0)
        np.testing.assert_array_equal(qi["seq"], np.arange(1, len(qi) + 1, dtype=np.uint64))


@pytest.mark.parametrize(
    "cfg",
    [
        SMALL,
        SMALL.replace(calendar="24x7", n_sessions=3, quote_rate_hz=0.5, n_instruments=2),
        SMALL.replace(block_quotes=2_000, n_instruments=5),  # many blocks: rows straddle block edges
        SMALL.replace(outage_scope="one", tick_size=0.05, lot_size=100.0),
        SMALL.replace(n_instruments=1, calendar="FX", n_sessions=2),  # a session across midnight
    ],
    ids=["xnys", "24x7", "small-blocks", "one-outage-coarse-tick", "fx-overnight"],
)
def test_quote_structure(cfg):
    check_structure(cfg, generate(cfg))


def test_default_config_size():
    # 3 instruments x 10 quotes/s x 23_400 s: about 702k quotes per XNYS session.
    s = next(SyntheticMarket(SyntheticConfig(outages_per_session=0.0)).sessions())
    assert abs(len(s.quotes) - 702_000) < 5 * np.sqrt(702_000)


def test_xnys_sessions_are_weekdays_0930_1600_new_york():
    sessions = generate(SMALL)
    # 2024-01-04 .. 2024-01-09 in New York: Thu, Fri, (weekend), Mon, Tue; EST is UTC-5.
    est = -5 * 3600 * SECOND_NS
    for s, day in zip(sessions, ["2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09"], strict=True):
        midnight = int(np.datetime64(day, "ns").astype(np.int64)) - est
        assert s.open_ns == midnight + (9 * 3600 + 1800) * SECOND_NS
        assert s.close_ns == midnight + 16 * 3600 * SECOND_NS
    q = concat(sessions, "quotes")
    weekday = ((q["ts_event"] + est) // DAY_NS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    assert set(np.unique(weekday)) == {0, 1, 3, 4}


def test_24x7_is_continuous_utc_days():
    cfg = SMALL.replace(calendar="24x7", n_sessions=3, quote_rate_hz=0.5, outages_per_session=0.0)
    sessions = generate(cfg)
    start = int(np.datetime64("2024-01-04", "ns").astype(np.int64))
    assert [s.open_ns for s in sessions] == [start + k * DAY_NS for k in range(3)]
    assert all(s.close_ns == s.open_ns + DAY_NS for s in sessions)
    q = concat(sessions, "quotes")
    weekday = (q["ts_event"] // DAY_NS + 3) % 7
    assert 5 in set(weekday.tolist())  # Saturday 2024-01-06 trades
    # No overnight gap return: the fair value moves across midnight like at any other second.
    fair = concat(sessions, "fair_px")
    for i in range(cfg.n_instruments):
        sel = q["instrument"] == i
        ts, lf = q["ts_event"][sel], np.log(fair[sel])
        step = np.abs(np.diff(lf))
        at_midnight = np.flatnonzero(np.diff(ts // DAY_NS) > 0)
        assert np.all(step[at_midnight] < 10 * np.median(step) + 1e-3)


def test_prices_gap_between_sessions_and_more_over_weekends():
    cfg = SyntheticConfig(n_sessions=40, quote_rate_hz=0.2, outages_per_session=0.0, n_instruments=5, seed=3)
    sessions = generate(cfg)
    night, weekend, intraday = [], [], []
    for a, b in zip(sessions, sessions[1:]):
        for i in range(cfg.n_instruments):
            qa, qb = per_instrument(a.quotes, i), per_instrument(b.quotes, i)
            fa, fb = a.fair_px[a.quotes["instrument"] == i], b.fair_px[b.quotes["instrument"] == i]
            r = abs(np.log(fb[0] / fa[-1]))
            (weekend if b.open_ns - a.close_ns > DAY_NS else night).append(r)
            intraday.append(np.median(np.abs(np.diff(np.log(fa)))))
            assert qb["ts_event"][0] - qa["ts_event"][-1] > 17 * 3600 * SECOND_NS
    assert np.mean(night) > 20 * np.mean(intraday)
    assert np.mean(weekend) > 1.2 * np.mean(night)


# ----------------------------------------------------------------------------- statistics


def mean_pairwise_corr(returns: list[np.ndarray]) -> float:
    n = min(map(len, returns))
    c = np.corrcoef(np.vstack([r[:n] for r in returns]))
    return float(c[np.triu_indices(len(returns), 1)].mean())


@pytest.mark.parametrize("rho", [0.2, 0.8])
def test_one_minute_correlation_follows_the_config(rho):
    # Diffusion only: the measured correlation is the configured one.
    cfg = BARS.replace(correlation=rho, alpha_strength=0.0, jumps_per_hour=0.0, n_sessions=6)
    assert mean_pairwise_corr(bar_log_returns(generate(cfg), cfg.n_instruments, 60.0)) == pytest.approx(rho, abs=0.07)


def test_one_minute_correlation_full_model():
    # Idiosyncratic jumps and the planted alpha dilute the diffusive correlation a little.
    for seed in (1, 2):
        cfg = BARS.replace(seed=seed)
        assert 0.3 < mean_pairwise_corr(bar_log_returns(generate(cfg), cfg.n_instruments, 60.0)) < 0.55


def stylized(cfg: SyntheticConfig) -> tuple[float, np.ndarray, np.ndarray, int]:
    """Excess kurtosis, autocorrelations of |r| and of r at lags 1..10, per-instrument sample size."""
    returns = [r / r.std() for r in bar_log_returns(generate(cfg), cfg.n_instruments, 60.0)]
    kurt = np.mean([excess_kurtosis(r) for r in returns])  # per instrument: pooling vols would fatten tails
    acf_abs = np.array([np.mean([autocorr(np.abs(r), lag) for r in returns]) for lag in range(1, 11)])
    acf_raw = np.array([np.mean([autocorr(r, lag) for r in returns]) for lag in range(1, 11)])
    return kurt, acf_abs, acf_raw, min(map(len, returns))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stylized_facts_fat_tails_and_volatility_clustering(seed):
    kurt, acf_abs, acf_raw, n = stylized(BARS.replace(seed=seed))
    assert kurt > 2.0
    se = 1.0 / np.sqrt(n)
    assert np.all(acf_abs[:5] > max(0.08, 4 * se))
    assert np.all(acf_abs > 2 * se)
    assert np.mean(np.abs(acf_raw)) < 0.3 * np.mean(acf_abs)


def test_stylized_facts_vanish_without_jumps_stochastic_vol_and_regimes():
    kurt, acf_abs, _, _ = stylized(BARS.replace(seed=1, **NO_STYLIZED))
    assert abs(kurt) < 0.5
    assert np.mean(acf_abs[:5]) < 0.04


@pytest.mark.parametrize(
    "mechanism, fat_tails, clustering",
    [
        (dict(jumps_per_hour=0.5), True, False),
        (dict(vol_of_vol=0.35), True, True),
        (dict(turbulent_vol_mult=2.5), True, True),
    ],
    ids=["jumps", "stochastic-vol", "regimes"],
)
def test_each_mechanism_leaves_its_trace(mechanism, fat_tails, clustering):
    kurt, acf_abs, _, _ = stylized(BARS.replace(seed=2, **{**NO_STYLIZED, **mechanism}))
    assert (kurt > 0.8) == fat_tails
    assert (np.mean(acf_abs[:5]) > 0.05) == clustering


# ----------------------------------------------------------------------------- ground truth


def forward_fair_returns(s: SyntheticSession, i: int, cfg: SyntheticConfig):
    """For rows of instrument i whose horizon ends before the close: (oracle_ret, realized log
    return of the fair value to the last row of i at or before t + horizon_s, and the oracle
    rescaled to that slightly shorter horizon)."""
    h_ns = int(cfg.horizon_s * SECOND_NS)
    theta = np.log(2.0) / cfg.alpha_halflife_s
    sel = s.quotes["instrument"] == i
    ts, lf, oracle = s.quotes["ts_event"][sel], np.log(s.fair_px[sel]), s.oracle_ret[sel]
    ahead = np.searchsorted(ts, ts + h_ns, side="right") - 1
    ok = ts + h_ns < s.close_ns
    reached_s = (ts[ahead[ok]] - ts[ok]) / SECOND_NS
    rescaled = oracle[ok] * np.expm1(-theta * reached_s) / np.expm1(-theta * cfg.horizon_s)
    return oracle[ok], lf[ahead[ok]] - lf[ok], rescaled


def oracle_vs_realized(cfg: SyntheticConfig):
    parts = [forward_fair_returns(s, i, cfg) for s in generate(cfg) for i in range(cfg.n_instruments)]
    return [np.concatenate(p) for p in zip(*parts)]


def test_oracle_is_zero_without_alpha_and_the_drift_changes_nothing_else():
    cfg = SMALL.replace(n_sessions=2)
    off, on = generate(cfg.replace(alpha_strength=0.0)), generate(cfg)
    assert all(np.all(s.oracle_ret == 0.0) for s in off)
    assert not np.signbit(concat(off, "oracle_ret")).any()
    assert np.any(concat(on, "oracle_ret") != 0.0)
    # Random streams are per component: switching the alpha off keeps times, sizes' noise etc.
    for a, b in zip(off, on, strict=True):
        np.testing.assert_array_equal(a.quotes["ts_recv"], b.quotes["ts_recv"])
        np.testing.assert_array_equal(a.quotes["instrument"], b.quotes["instrument"])


def test_oracle_predicts_the_fair_value_at_the_default_strength():
    cfg = SyntheticConfig(n_sessions=3, quote_rate_hz=2.0, outages_per_session=0.0, seed=11)
    oracle, realized, _ = oracle_vs_realized(cfg)
    assert np.corrcoef(oracle, realized)[0, 1] > 0.08


@pytest.mark.parametrize(
    "changes, tolerance",
    [
        # Without diffusion and jumps only the alpha's own innovations blur the estimate.
        (dict(vol_bps_per_sqrt_hour=(1e-6, 1e-6), jumps_per_hour=0.0, tick_size=1e-6), 0.02),
        (dict(alpha_strength=3.0), 0.12),
    ],
    ids=["noise-free", "full-model"],
)
def test_oracle_is_the_exact_conditional_expectation(changes, tolerance):
    # E[realized | oracle] = oracle: regressing one on the other gives slope 1.
    cfg = SyntheticConfig(n_sessions=3, quote_rate_hz=2.0, outages_per_session=0.0, seed=11).replace(**changes)
    _, realized, rescaled = oracle_vs_realized(cfg)
    assert np.dot(rescaled, realized) / np.dot(rescaled, rescaled) == pytest.approx(1.0, abs=tolerance)


def test_oracle_shrinks_near_the_close():
    cfg = SMALL.replace(n_sessions=1, outages_per_session=0.0)
    s = generate(cfg)[0]
    q = s.quotes
    late = q["ts_event"] > s.close_ns - SECOND_NS  # under 1 s to the close: tau < 1 s of 10 s
    early = q["ts_event"] < s.close_ns - int(cfg.horizon_s * SECOND_NS)
    assert np.abs(s.oracle_ret[late]).mean() < 0.25 * np.abs(s.oracle_ret[early]).mean()


def test_size_imbalance_carries_partial_information_about_the_alpha():
    s = generate(SyntheticConfig(n_sessions=1, outages_per_session=0.0))[0]
    q = s.quotes
    imbalance = q["bid_sz"] / (q["bid_sz"] + q["ask_sz"])
    c = np.corrcoef(imbalance, s.oracle_ret)[0, 1]
    assert 0.15 < c < 0.8


def five_minute_buckets(s: SyntheticSession, i: int):
    """Per 5-min bucket: median spread (bps), median displayed size, dispersion of log sizes and
    realized vol of 10 s mid returns."""
    qi = per_instrument(s.quotes, i)
    mid = mid_px(qi)
    spread_bps = (qi["ask_px"] - qi["bid_px"]) / mid * 1e4
    size = qi["bid_sz"]
    edges = np.arange(s.open_ns, s.close_ns, 10 * SECOND_NS)
    at = np.searchsorted(qi["ts_event"], edges, side="right") - 1
    r10 = np.diff(np.log(mid[np.maximum(at, 0)]))
    rv = np.sqrt((r10[: len(r10) // 30 * 30] ** 2).reshape(-1, 30).sum(axis=1))
    bucket = (qi["ts_event"] - s.open_ns) // (300 * SECOND_NS)
    sp = np.array([np.median(spread_bps[bucket == b]) for b in range(len(rv))])
    sz = np.array([np.median(size[bucket == b]) for b in range(len(rv))])
    disp = np.array([np.std(np.log(size[bucket == b])) for b in range(len(rv))])
    return sp, sz, disp, rv


def test_spreads_widen_and_depth_thins_with_volatility():
    cfg = SyntheticConfig(n_sessions=4, quote_rate_hz=2.0, outages_per_session=0.0, base_px=(200.0, 400.0))
    sp, sz, disp, rv = map(np.concatenate, zip(*[five_minute_buckets(s, i) for s in generate(cfg) for i in range(3)]))
    assert rank_corr(sp, rv) > 0.3
    assert rank_corr(sz, rv) < -0.2
    assert rank_corr(disp, rv) > 0.1
    # Switched off, the response disappears: the checks above are not satisfied by chance.
    flat = cfg.replace(spread_vol_bps=0.0, spread_min_bps=3.0, depth_vol_elasticity=0.0, size_disp_vol_elasticity=0.0)
    sp, sz, disp, rv = map(np.concatenate, zip(*[five_minute_buckets(s, i) for s in generate(flat) for i in range(3)]))
    assert max(abs(rank_corr(sp, rv)), abs(rank_corr(sz, rv)), abs(rank_corr(disp, rv))) < 0.15


# ----------------------------------------------------------------------------- outages, chunks


def long_gaps(sessions, n_inst: int, gap_s: float = 60.0) -> list[tuple[int, int]]:
    """(session index, instrument) for each silence longer than gap_s inside a session."""
    found = []
    for k, s in enumerate(sessions):
        for i in range(n_inst):
            ts = per_instrument(s.quotes, i)["ts_event"]
            found += [(k, i)] * int(np.sum(np.diff(ts) > gap_s * SECOND_NS))
    return found


def test_outages_make_gaps_longer_than_the_gap_threshold():
    cfg = SyntheticConfig(n_sessions=3, quote_rate_hz=2.0, outages_per_session=3.0)
    gaps = long_gaps(generate(cfg), cfg.n_instruments)
    assert len(gaps) >= cfg.n_instruments  # at least one outage, seen by every instrument
    per_inst = np.bincount([i for _, i in gaps], minlength=cfg.n_instruments)
    assert np.all(per_inst == per_inst[0])  # scope "all": every instrument goes silent together
    one = long_gaps(generate(cfg.replace(outage_scope="one")), cfg.n_instruments)
    assert 0 < len(one) < len(gaps)
    assert long_gaps(generate(cfg.replace(outages_per_session=0.0)), cfg.n_instruments) == []


@pytest.mark.parametrize("chunk_rows", [1 << 20, 10_000, 777])
def test_chunks_are_the_sessions_rows_in_bounded_pieces(chunk_rows):
    cfg = SMALL.replace(chunk_rows=chunk_rows, block_quotes=5_000)
    m = SyntheticMarket(cfg)
    chunks = list(m.chunks())
    assert all(0 < len(c) <= chunk_rows for c in chunks)
    assert all(c.dtype == QUOTE_DTYPE for c in chunks)
    assert not any(padding_bytes(c).any() for c in chunks)
    rows = concat([SyntheticSession(c, None, None, 0, 0) for c in chunks], "quotes")
    assert rows.tobytes() == concat(generate(SMALL.replace(block_quotes=5_000)), "quotes").tobytes()
    assert m.stats.rows_read == m.stats.rows_emitted == len(rows)
    list(m.chunks())  # a second pass counts afresh
    assert m.stats.rows_emitted == len(rows)


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_instruments=0),
        dict(correlation=1.0),
        dict(correlation=-0.1),
        dict(quote_rate_hz=0.0),
        dict(outage_s=(300.0, 120.0)),
        dict(outage_scope="some"),
        dict(calendar="not a calendar"),
        dict(start="2024-13-01"),
        dict(tick_size=0.0),
    ],
)
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_config_is_a_frozen_value():
    cfg = SyntheticConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    assert cfg.replace(seed=1) == SyntheticConfig(seed=1) and hash(cfg) == hash(SyntheticConfig())
