"""Latency models (engine/domain/latency_model.py), their C++ draw (csrc/latency.hpp), feed restamping
(feeds/restamp.py) and how a backtest takes and reports them."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _core
from engine.backtest import BacktestConfig, Engine, record_predictions, run_backtest, stream_ticks
from engine.cli import main
from engine.domain.latency_model import (
    FEED_STREAM,
    N_QUANTILES,
    ORDER_STREAM,
    LatencyDistribution,
    draw_index,
    draw_indices,
    feed_latency_from,
    parse_spec,
    stream_seed,
)
from engine.domain.quote import QUOTE_DTYPE, QuoteFlag, concat_rows, take_rows
from engine.domain.source import SourceStats
from engine.domain.timestamps import MS_NS, parse_duration_ns
from engine.options import backtest_config, quote_source, run_options
from engine.report import format_summary, summary_dict
from engine.sweep import SIGNAL_OPTIONS
from feeds.memory import ArraySource
from feeds.restamp import DEFAULT_HOLD_NS, FeedLatencySource, latency_from_spec
from tests.conftest import T0, table

ROOT = Path(__file__).resolve().parents[1]
U64 = st.integers(0, (1 << 64) - 1)
U32 = st.integers(0, (1 << 32) - 1)
SMALL = {"n_sessions": 1, "quote_rate_hz": 2.0}


# -- the draw ------------------------------------------------------------------------------------


@given(seed=U64, instrument=U32, k=U64, n=st.integers(1, 1 << 20))
def test_the_vector_draw_is_the_scalar_draw_bit_for_bit(seed, instrument, k, n):
    i = draw_index(seed, instrument, k, n)
    assert 0 <= i < n
    assert draw_indices(seed, np.array([instrument], np.uint32), np.array([k], np.uint64), n)[0] == i


@given(seed=U64, pairs=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10_000)), min_size=1, max_size=60),
       data=st.data())
def test_a_draw_depends_on_its_instrument_and_k_alone_not_on_batching_or_order(seed, pairs, data):
    dist = LatencyDistribution.lognormal(2 * MS_NS, 0.7)
    inst = np.array([p[0] for p in pairs])
    ks = np.array([p[1] for p in pairs])
    whole = dist.draw_many(seed, inst, ks)
    perm = data.draw(st.permutations(range(len(pairs))))
    shuffled = dist.draw_many(seed, inst[perm], ks[perm])
    assert np.array_equal(shuffled, whole[perm])
    one_by_one = [dist.draw(seed, int(i), int(k)) for i, k in zip(inst, ks)]
    assert whole.tolist() == one_by_one


def test_draws_cover_the_table_uniformly():
    n, per = 16, 20_000
    idx = draw_indices(11, np.repeat(np.arange(4), n * per // 4), np.tile(np.arange(n * per // 4), 4), n)
    counts = np.bincount(idx, minlength=n)
    # 16 cells of 20,000 expected: a chi-square beyond p = 1e-6 means the hash is biased.
    assert scipy.stats.chisquare(counts).pvalue > 1e-6


def test_feed_and_order_streams_of_one_seed_draw_differently():
    assert stream_seed(5, FEED_STREAM) != stream_seed(5, ORDER_STREAM)
    ks = np.arange(1000)
    a = draw_indices(stream_seed(5, FEED_STREAM), np.zeros(1000, int), ks, N_QUANTILES)
    b = draw_indices(stream_seed(5, ORDER_STREAM), np.zeros(1000, int), ks, N_QUANTILES)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.15
    assert not np.array_equal(draw_indices(6, np.zeros(1000, int), ks, N_QUANTILES), draw_indices(5, np.zeros(1000, int), ks, N_QUANTILES))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_the_cpp_latency_table_draws_the_same_bits_as_python(tmp_path):
    exe = tmp_path / "latency_draws"
    subprocess.run(["g++", "-O2", "-std=c++17", "-Wall", "-Werror", f"-I{ROOT / 'csrc'}",
                    str(ROOT / "tests" / "cpp" / "latency_draws.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, text=True, timeout=300)
    rng = np.random.default_rng(3)
    tables = [
        LatencyDistribution.constant(7),
        LatencyDistribution.lognormal(2 * MS_NS, 0.5),
        LatencyDistribution.empirical(rng.integers(0, 10**9, 5_001)),
        LatencyDistribution([0, 1, 1, 5, 9_223_372_036_854_775_807], "extremes"),
    ]
    edges = [(0, 0), ((1 << 32) - 1, (1 << 64) - 1), (1, (1 << 63)), ((1 << 31), 1)]
    for dist, seed in zip(tables, [0, (1 << 64) - 1, 12345, stream_seed(9, ORDER_STREAM)]):
        inst = np.concatenate([np.array([e[0] for e in edges], np.uint64), rng.integers(0, 1 << 32, 2000, dtype=np.uint64)])
        ks = np.concatenate([np.array([e[1] for e in edges], np.uint64), rng.integers(0, (1 << 64) - 1, 2000, dtype=np.uint64)])
        lines = [f"{dist.n} {seed}", " ".join(map(str, dist.quantiles_ns.tolist())), str(len(inst))]
        lines += [f"{i} {k}" for i, k in zip(inst.tolist(), ks.tolist())]
        run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stderr
        out = [int(x) for x in run.stdout.split()]
        assert out[0] == dist.median_ns
        assert out[1:] == dist.draw_many(seed, inst, ks).tolist()
        assert out[1:5] == [dist.draw(seed, int(i), int(k)) for i, k in edges]


# -- the models ----------------------------------------------------------------------------------


def test_a_constant_is_one_value():
    d = LatencyDistribution.constant(5 * MS_NS)
    assert d.quantiles_ns.tolist() == [5 * MS_NS]
    assert {d.draw(s, i, k) for s in range(3) for i in range(3) for k in range(5)} == {5 * MS_NS}
    with pytest.raises(ValueError, match=">= 0"):
        LatencyDistribution.constant(-1)


def test_lognormal_quantiles_are_the_inverse_cdf_at_the_table_masses():
    d = LatencyDistribution.lognormal(2 * MS_NS, 0.5)
    masses = (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES
    expected = scipy.stats.lognorm.ppf(masses, 0.5, scale=2 * MS_NS)
    assert np.abs(d.quantiles_ns - expected).max() <= 1.0
    assert d.median_ns == pytest.approx(2 * MS_NS, rel=2e-3)
    draws = d.draw_many(1, np.zeros(100_000, int), np.arange(100_000))
    assert np.median(draws) == pytest.approx(2 * MS_NS, rel=0.02)
    assert np.log(draws).std() == pytest.approx(0.5, rel=0.03)


@given(st.lists(st.integers(-1000, 10**12), min_size=1, max_size=300))
def test_empirical_quantiles_are_observed_values_and_negatives_are_clipped(samples):
    if max(samples) < 0:
        with pytest.raises(ValueError, match="negative"):
            LatencyDistribution.empirical(samples)
        return
    d = LatencyDistribution.empirical(samples, n=64)
    clipped = np.maximum(samples, 0)
    assert set(d.quantiles_ns.tolist()) <= set(clipped.tolist())
    assert np.all(np.diff(d.quantiles_ns) >= 0)
    assert d.excluded.get("negative_clipped", 0) == sum(s < 0 for s in samples)
    assert d.n_samples == len(samples)
    # Each table entry is the inverted-CDF quantile of the samples at its mass.
    masses = (np.arange(64) + 0.5) / 64
    assert d.quantiles_ns.tolist() == np.quantile(clipped, masses, method="inverted_cdf").astype(np.int64).tolist()


def test_empirical_refuses_no_samples_and_non_integers():
    with pytest.raises(ValueError, match="no latency samples"):
        LatencyDistribution.empirical([])
    with pytest.raises(ValueError, match="integer ns"):
        LatencyDistribution.empirical([1.5, 2.0])


def _quotes(ts_event: list[int], ts_recv: list[int], instrument: list[int] | None = None, flags: list[int] | None = None):
    q = np.zeros(len(ts_recv), QUOTE_DTYPE)
    q["ts_event"], q["ts_recv"] = ts_event, ts_recv
    q["bid_px"], q["ask_px"], q["bid_sz"], q["ask_sz"] = 100.0, 100.5, 1.0, 1.0
    q["instrument"] = instrument if instrument is not None else 0
    q["flags"] = flags if flags is not None else 0
    q["seq"] = np.arange(1, len(q) + 1)
    return q


def test_feed_latency_leaves_out_synthetic_timestamps_and_clips_skew():
    syn = int(QuoteFlag.SYNTHETIC_TS)
    q = _quotes([100, 200, 300, 400, 500], [150, 200, 290, 480, 510], flags=[0, syn, 0, 0, 0])
    d = feed_latency_from(q, source="rec")
    assert d.n_samples == 4
    assert d.excluded == {"synthetic_ts": 1, "negative_clipped": 1}
    assert sorted(set(d.quantiles_ns.tolist())) == [0, 10, 50, 80]
    # Chunks of a source give the same model as the whole array.
    assert np.array_equal(feed_latency_from([q[:2], q[2:]], source="rec").quantiles_ns, d.quantiles_ns)
    with pytest.raises(ValueError, match="synthetic_ts"):
        feed_latency_from(_quotes([1, 2], [1, 2], flags=[syn, syn]))


def test_jitter_is_the_delay_above_the_fastest_quote():
    q = _quotes([1000, 2000, 3000, 4000], [-300, 710, 1_700, 2_690])  # a clock 1.3 us behind: delays +0, +10, +0, -10
    with pytest.raises(ValueError, match="jitter:PATH"):
        feed_latency_from(q)
    d = feed_latency_from(q, floor=True)
    assert sorted(set(d.quantiles_ns.tolist())) == [0, 10, 20]
    assert "less their minimum -1.31 us" in d.description


def test_durations_and_specs_parse_with_units():
    assert [parse_duration_ns(t) for t in ("250ns", "40us", "5ms", "1.5s", "0.0000000015s", "7", " 2 ms ")] == [
        250, 40_000, 5_000_000, 1_500_000_000, 2, 7, 2_000_000]
    for bad in ("", "ms", "-5ms", "5 min", "1e3ms"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration_ns(bad)
    assert parse_spec("const:5ms") == ("const", 5 * MS_NS)
    assert parse_spec("constant:0") == ("const", 0)
    assert parse_spec("lognormal:2ms,0.5") == ("lognormal", (2 * MS_NS, 0.5))
    assert parse_spec("empirical:a/b.npy") == ("empirical", "a/b.npy")
    assert parse_spec("jitter:rec.gz") == ("jitter", "rec.gz")
    for bad in ("5ms", "uniform:1ms", "lognormal:2ms", "lognormal:0ms,0.5", "lognormal:2ms,-1", "empirical:", "const:fast"):
        with pytest.raises(ValueError, match="latency spec"):
            parse_spec(bad)


def test_from_spec_reads_npy_delays_and_npy_quotes(tmp_path):
    np.save(tmp_path / "d.npy", np.array([5, 1, 3, -2], np.int64))
    d = LatencyDistribution.from_spec(f"empirical:{tmp_path / 'd.npy'}")
    assert sorted(set(d.quantiles_ns.tolist())) == [0, 1, 3, 5] and d.excluded == {"negative_clipped": 1}
    assert sorted(set(LatencyDistribution.from_spec(f"jitter:{tmp_path / 'd.npy'}").quantiles_ns.tolist())) == [0, 3, 5, 7]
    np.save(tmp_path / "q.npy", _quotes([10, 20], [15, 40]))
    assert sorted(set(LatencyDistribution.from_spec(f"empirical:{tmp_path / 'q.npy'}").quantiles_ns.tolist())) == [5, 20]
    np.save(tmp_path / "f.npy", np.ones(3))
    with pytest.raises(ValueError, match="int64 ns delays"):
        LatencyDistribution.from_spec(f"empirical:{tmp_path / 'f.npy'}")
    with pytest.raises(ValueError, match="no such file"):
        LatencyDistribution.from_spec(f"empirical:{tmp_path / 'absent.npy'}")
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(ValueError, match="latency_from_spec"):
        LatencyDistribution.from_spec(f"empirical:{tmp_path / 'x.csv'}")


def test_latency_from_spec_reads_a_recording_through_the_project_readers(tmp_path):
    # A Tardis quotes CSV written by hand in the vendor's documented layout (timestamps in us).
    rows = ["exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount"]
    for k in range(50):
        t = 1_582_329_601_000_000 + k * 1000
        rows.append(f"binance-futures,BTCUSDT,{t},{t + 100 + k},1.0,10001.0,10000.0,2.0")
    path = tmp_path / "binance-futures_quotes_BTCUSDT_2020-02-22.csv"
    path.write_text("\n".join(rows) + "\n")
    d = latency_from_spec(f"empirical:{path}")
    assert d.n_samples == 50
    assert d.quantiles_ns.min() == 100_000 and d.quantiles_ns.max() == 149_000


# -- restamping a source -------------------------------------------------------------------------


class ChunkedSource:
    """Quotes cut into chunks at the given row offsets."""

    def __init__(self, quotes: np.ndarray, cuts: list[int], n_instruments: int) -> None:
        self.quotes, self.cuts = quotes, sorted(set(cuts))
        self.instruments = table(n_instruments)
        self.stats = SourceStats(source="chunked")

    def chunks(self):
        edges = [0, *[c for c in self.cuts if 0 < c < len(self.quotes)], len(self.quotes)]
        for lo, hi in itertools.pairwise(edges):
            yield self.quotes[lo:hi]


@st.composite
def recordings(draw, max_delay_ns: int = 5_000):
    """Quotes sorted by ts_recv with delays (ts_recv - ts_event) in [-max_delay_ns, max_delay_ns]
    and some synthetic timestamps."""
    n = draw(st.integers(1, 80))
    ts_recv = np.cumsum(draw(st.lists(st.integers(0, 3_000), min_size=n, max_size=n))) + T0
    delay = np.array(draw(st.lists(st.integers(-max_delay_ns, max_delay_ns), min_size=n, max_size=n)))
    syn = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    inst = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    ts_event = np.where(syn, ts_recv, ts_recv - delay)
    return _quotes(ts_event.tolist(), ts_recv.tolist(), inst, (syn * int(QuoteFlag.SYNTHETIC_TS)).tolist())


def _restamp(q, cuts, dist, seed, hold_ns):
    src = FeedLatencySource(ChunkedSource(q, cuts, 4), dist, seed, hold_ns=hold_ns)
    chunks = list(src.chunks())
    return (concat_rows(chunks) if chunks else np.empty(0, QUOTE_DTYPE)), src.restamp


def _expected(q, dist, seed):
    """Every row restamped, then stably sorted by the new ts_recv: what restamping must give when nothing clamps."""
    out = q.copy()
    k = np.zeros(len(q), np.int64)
    seen: dict[int, int] = {}
    for r, i in enumerate(q["instrument"].tolist()):
        k[r] = seen.get(i, 0)
        seen[i] = k[r] + 1
    syn = (q["flags"] & int(QuoteFlag.SYNTHETIC_TS)) != 0
    draws = np.array([dist.draw(seed, int(i), int(kk)) for i, kk in zip(q["instrument"], k)], np.int64)
    out["ts_recv"] = np.where(syn, q["ts_recv"], q["ts_event"] + draws)
    return take_rows(out, np.argsort(out["ts_recv"], kind="stable"))


DISTS = [LatencyDistribution.lognormal(2_000, 1.0), LatencyDistribution.constant(0), LatencyDistribution.constant(3_000)]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(q=recordings(), cuts_a=st.lists(st.integers(0, 80), max_size=10), cuts_b=st.lists(st.integers(0, 80), max_size=10),
       seed=U64, which=st.integers(0, len(DISTS) - 1))
def test_restamping_is_the_stable_sort_of_the_redrawn_times_whatever_the_chunking(q, cuts_a, cuts_b, seed, which):
    dist = DISTS[which]
    # Every original delay is below hold_ns: nothing can clamp (feeds/restamp.py's docstring).
    a, stats_a = _restamp(q, cuts_a, dist, seed, hold_ns=5_001)
    b, _ = _restamp(q, cuts_b, dist, seed, hold_ns=5_001)
    assert stats_a["clamped"] == 0
    assert stats_a["rows"] == len(q)
    assert stats_a["synthetic_kept"] == int(np.count_nonzero(q["flags"] & int(QuoteFlag.SYNTHETIC_TS)))
    expected = _expected(q, dist, seed)
    assert a.tolist() == expected.tolist()
    assert b.tolist() == expected.tolist()


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(q=recordings(max_delay_ns=20_000), cuts=st.lists(st.integers(0, 80), max_size=10), cuts_b=st.lists(st.integers(0, 80), max_size=10),
       hold_ns=st.integers(0, 20_000), seed=U64)
def test_a_short_hold_clamps_rows_that_come_too_late_and_counts_them(q, cuts, cuts_b, hold_ns, seed):
    dist = DISTS[0]
    out, stats = _restamp(q, cuts, dist, seed, hold_ns)
    assert np.all(np.diff(out["ts_recv"]) >= 0)  # the QuoteSource contract holds whatever clamps
    assert sorted(out["seq"].tolist()) == sorted(q["seq"].tolist())
    expected = _expected(q, dist, seed)
    # Each row moved only forward from its redrawn time, and only a clamped row moved at all.
    by_seq = dict(zip(expected["seq"].tolist(), expected["ts_recv"].tolist()))
    moved = [int(t) - by_seq[s] for s, t in zip(out["seq"].tolist(), out["ts_recv"].tolist())]
    assert min(moved) >= 0 and sum(m > 0 for m in moved) <= stats["clamped"]
    assert max(moved) <= stats["max_clamp_ns"]
    other, stats_b = _restamp(q, cuts_b, dist, seed, hold_ns)
    if stats["clamped"] == 0 and stats_b["clamped"] == 0:
        assert out.tolist() == other.tolist() == expected.tolist()


def test_rows_later_than_the_hold_are_clamped_and_counted():
    # Instrument 0's second row carries a 10 us delay; the redrawn delay is 0: it lands 10 us back.
    q = _quotes([0, 10_000, 2_000], [10_000, 20_000, 30_000], [1, 0, 1])
    q["ts_event"][0] = 10_000
    out, stats = _restamp(q, [1, 2], LatencyDistribution.constant(0), 0, hold_ns=1_000)
    assert out["ts_recv"].tolist() == [10_000, 10_000, 10_000]
    assert out["seq"].tolist() == [1, 2, 3]
    assert stats["clamped"] == 1 and stats["max_clamp_ns"] == 8_000


def test_a_model_read_from_a_recording_is_read_once_while_the_recording_is_unchanged(tmp_path):
    """One Engine per sweep configuration: each used to read the whole recording again."""
    import os

    path = tmp_path / "q.npy"
    np.save(path, _quotes([10, 20, 30], [15, 40, 31]))
    first = latency_from_spec(f"empirical:{path}")
    assert latency_from_spec(f"empirical:{path}") is first
    assert first.quantiles_ns.flags.writeable is False  # shared, so it must not change under a user
    jitter = latency_from_spec(f"jitter:{path}")
    assert jitter is not first and jitter.quantiles_ns.min() == 0
    np.save(path, _quotes([10, 20, 30], [115, 140, 131]))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime even on a coarse clock
    again = latency_from_spec(f"empirical:{path}")
    assert again is not first and sorted(set(again.quantiles_ns.tolist())) == [101, 105, 120]
    assert latency_from_spec("const:5ms") is not latency_from_spec("const:5ms")  # cheap models are just built


def test_the_restamped_source_keeps_the_wrapped_instruments_and_stats_and_refuses_a_negative_hold():
    src = ArraySource(_quotes([1, 2], [5, 6]), table(1))
    wrapped = FeedLatencySource(src, LatencyDistribution.constant(1), 0)
    assert wrapped.instruments is src.instruments and wrapped.stats is src.stats
    assert wrapped.hold_ns == DEFAULT_HOLD_NS
    assert [c["ts_recv"].tolist() for c in wrapped.chunks()] == [[2, 3]]
    assert src.quotes["ts_recv"].tolist() == [5, 6]  # the wrapped source's rows are not touched
    with pytest.raises(ValueError, match="hold_ns"):
        FeedLatencySource(src, LatencyDistribution.constant(1), 0, hold_ns=-1)


# -- the backtest --------------------------------------------------------------------------------


def test_defaults_run_no_latency_model():
    c = BacktestConfig()
    assert (c.feed_latency, c.order_latency, c.latency_seed) == (None, None, 0)
    assert backtest_config({}) == c
    with pytest.raises(ValueError, match=r"feed_latency \(--feed-latency\).*latency spec"):
        run_options({"feed_latency": "fast"})
    with pytest.raises(ValueError, match="latency spec"):
        BacktestConfig(order_latency="lognormal:1ms")


def test_a_backtest_with_feed_latency_restamps_and_says_so():
    base = run_backtest(quote_source(SMALL), backtest_config({}))
    assert base.latency == {"order": {"model": "constant", "latency_ns": 0}, "feed": None}
    text = format_summary([base])
    assert "execution    latency 0 ns, fee 1 bps" in text and "receive times redrawn" not in text

    config = backtest_config({"feed_latency": "lognormal:200ms,1", "latency_seed": 4})
    r = run_backtest(quote_source(SMALL), config)
    feed = r.latency["feed"]
    assert feed["rows"] == r.quotes_in == base.quotes_in
    assert feed["seed"] == 4 and feed["model"] == "lognormal median 200 ms sigma 1"
    assert feed["clamped"] == 0 and feed["synthetic_kept"] == 0
    assert r.fill_hash() != base.fill_hash()  # the delays moved ticks across conflation intervals
    again = run_backtest(quote_source(SMALL), config)
    assert again.fill_hash() == r.fill_hash()
    other_seed = run_backtest(quote_source(SMALL), backtest_config({"feed_latency": "lognormal:200ms,1", "latency_seed": 5}))
    assert other_seed.fill_hash() != r.fill_hash()
    text = format_summary([r])
    assert "feed         receive times redrawn from lognormal median 200 ms sigma 1 (p50 200" in text
    assert "seed 4" in text and "0 clamped" in text
    assert json.loads(json.dumps(summary_dict(r)))["latency"]["feed"]["p99_ns"] == r.latency["feed"]["p99_ns"]


def test_order_latency_is_drawn_per_order_and_reported(tmp_path):
    config = backtest_config({"order_latency": "lognormal:2ms,0.5", "latency_seed": 3, "strategy": "momentum",
                              "params": {"fast_span": 5, "slow_span": 20}})
    source = quote_source(SMALL)
    engine = Engine(config, source.instruments, None)
    assert isinstance(engine.order_latency, LatencyDistribution)
    assert engine.order_latency.median_ns == LatencyDistribution.lognormal(2 * MS_NS, 0.5).median_ns
    engine.core.set_order_log(True)
    for _, ticks in stream_ticks(source, config.interval):
        engine.run(ticks)
    new = engine.core.take_order_log()
    new = new[new["kind"] == 0]
    assert len(new) > 10
    # the k-th order of instrument i waits the k-th draw of i: the same bits as the Python draw
    seed = stream_seed(3, ORDER_STREAM)
    for i in np.unique(new["instrument"]):
        mine = new[new["instrument"] == i]
        want = engine.order_latency.draw_many(seed, np.full(len(mine), i), np.arange(len(mine)))
        np.testing.assert_array_equal(mine["active_ts"] - mine["ts"], want)
    assert len(np.unique(new["active_ts"] - new["ts"])) > 5  # drawn, not one constant
    r = run_backtest(quote_source(SMALL), config)
    order = r.latency["order"]
    assert order["seed"] == 3 and order["p50_ns"] == engine.order_latency.median_ns
    text = format_summary([r])
    assert "order latency lognormal median 2 ms sigma 0.5 (p50 2.001 ms, p99 6.37 ms), seed 3" in text


def test_the_command_line_takes_the_latency_flags(capsys, tmp_path):
    code = main(["backtest", "--n-sessions", "1", "--quote-rate-hz", "2", "--no-progress", "--feed-latency", "const:5ms",
                 "--order-latency", "const:1ms", "--latency-seed", "9", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "feed         receive times redrawn from constant 5 ms" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (s["config"]["feed_latency"], s["config"]["order_latency"], s["config"]["latency_seed"]) == ("const:5ms", "const:1ms", 9)
    assert s["latency"]["feed"]["p50_ns"] == 5 * MS_NS and s["latency"]["order"]["p99_ns"] == MS_NS


def test_the_feed_hold_is_an_option_and_a_longer_one_stops_the_clamping(capsys, tmp_path):
    """A row recorded 3.5 s late, redrawn to no delay, lands behind rows a 2 s hold has already let
    out: it is clamped, counted, and the summary names the flag that fixes it; a 4 s hold does."""
    S = 1_000_000_000
    t = [T0 + (3600 + k) * S for k in range(8)]
    q = _quotes(t[:4] + [t[0] + S // 2] + t[5:], t, [1, 1, 1, 1, 0, 1, 1, 1])

    def run(hold_s):
        config = backtest_config({"feed_latency": "const:0ms", "feed_hold_s": hold_s})
        return run_backtest(ArraySource(q, table(2), chunk_rows=2), config)

    short, long_ = run(2.0), run(4.0)
    assert BacktestConfig().feed_hold_ns == DEFAULT_HOLD_NS == backtest_config({}).feed_hold_ns
    assert short.latency["feed"]["hold_ns"] == 2 * S and short.latency["feed"]["clamped"] == 1
    assert short.latency["feed"]["max_clamp_ns"] == S // 2  # up to the last row out, at t[1]
    assert "raise --feed-hold-s above 2 s" in format_summary([short])
    assert long_.latency["feed"]["hold_ns"] == 4 * S and long_.latency["feed"]["clamped"] == 0
    with pytest.raises(ValueError, match=r"feed_hold_s \(--feed-hold-s\): must be >= 0"):
        run_options({"feed_hold_s": -1.0})
    assert "feed_hold_s" in SIGNAL_OPTIONS  # it decides which ticks the model sees
    code = main(["backtest", "--n-sessions", "1", "--quote-rate-hz", "2", "--no-progress", "--feed-latency", "const:5ms",
                 "--feed-hold-s", "3.5", "--out", str(tmp_path)])
    assert code == 0
    capsys.readouterr()
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["config"]["feed_hold_ns"] == 3_500_000_000 and s["latency"]["feed"]["hold_ns"] == 3_500_000_000


def test_a_prediction_tape_is_recorded_on_the_restamped_ticks():
    config = backtest_config({"strategy": "ssm", "feed_latency": "lognormal:200ms,1", "latency_seed": 2})
    tape = record_predictions(quote_source(SMALL), config)
    replay = _core.ReplayBackend(tape)
    got = run_backtest(quote_source(SMALL), config, model_backend=replay)
    assert replay.calls_replayed == tape.n_calls > 0
    assert got.fill_hash() == run_backtest(quote_source(SMALL), config).fill_hash()
    # A sweep shares one tape only between configurations whose ticks are the same.
    assert {"feed_latency", "latency_seed"} <= set(SIGNAL_OPTIONS)


# -- real recordings -----------------------------------------------------------------------------


def test_feed_latency_of_real_recordings(shared_data):
    """Databento stamps ts_recv at its capture: a true feed delay. The Binance USD-M raw capture's
    clock is ~1.27 s behind the exchange's, so only its jitter is a model."""
    dbn = latency_from_spec(f"empirical:{shared_data / 'databento' / 'glbx-esu4_mbp-1_2024-07-01T23-58_2024-07-02T00-02.dbn.zst'}")
    assert dbn.n_samples > 2000
    assert 20_000 < dbn.median_ns < 1_000_000 and dbn.median_ns < dbn.percentile_ns(99) < 5 * MS_NS
    raw = shared_data / "binance-raw" / "usdm_btcusdt_20240808.gz"
    with pytest.raises(ValueError, match="all 66,089 latency samples are negative"):
        latency_from_spec(f"empirical:{raw}")
    jitter = latency_from_spec(f"jitter:{raw}")
    assert jitter.n_samples == 66_089
    assert MS_NS < jitter.median_ns < 10 * MS_NS < jitter.percentile_ns(99) < 100 * MS_NS
    with pytest.raises(ValueError, match="synthetic_ts"):  # spot bookTicker frames carry no exchange time
        latency_from_spec(f"empirical:{shared_data / 'binance-raw' / 'spot_btcusdt_20240808.gz'}")
