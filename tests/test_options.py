"""Options -> configuration (engine/options.py): one mapping for the command line and for sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.backtest import INTERVALS_NS, BacktestConfig
from engine.cli import _build_parser, _options
from engine.domain.instrument import Instrument
from engine.options import (
    FILE_CALENDAR,
    FILE_VENUE,
    RAW_LOT_SIZE,
    RUN_OPTIONS,
    SOURCE_OPTIONS,
    RunOptions,
    SourceOptions,
    backtest_config,
    check_strategy,
    quote_source,
    run_options,
    source_options,
)
from feeds.raw_replay import RawReplay
from feeds.replay import FileReplay
from feeds.synthetic import SyntheticConfig, SyntheticMarket

S = 1_000_000_000


def parse(*argv: str):
    return _build_parser().parse_args(list(argv))


# -- defaults are spelled once -----------------------------------------------------------------------


def test_backtest_flags_are_the_options_by_name_with_their_defaults():
    ns = parse("backtest")
    for name in RUN_OPTIONS:
        assert getattr(ns, name) == getattr(RunOptions(), name), name
    for name in SOURCE_OPTIONS:
        if name != "raw_paths":  # replay-raw's positional arguments
            assert getattr(ns, name) == getattr(SourceOptions(), name), name


def test_replay_raw_train_and_paper_flags_share_the_defaults(tmp_path):
    raw = parse("replay-raw", str(tmp_path / "x.gz"))
    assert source_options(_options(raw, SOURCE_OPTIONS)) == SourceOptions(raw_paths=[tmp_path / "x.gz"])
    assert run_options(_options(raw, RUN_OPTIONS)) == RunOptions()
    assert source_options(_options(parse("train"), SOURCE_OPTIONS)) == SourceOptions()
    paper = parse("paper")
    for name in ("model", "params", "interval", "latency_ns", "fee_bps", "capital"):
        assert getattr(paper, name) == getattr(RunOptions(), name), name


def test_option_defaults_are_the_defaults_of_what_they_configure(tmp_path):
    assert backtest_config({}) == BacktestConfig()
    market = quote_source({})
    assert isinstance(market, SyntheticMarket) and market.config == SyntheticConfig()
    path = tmp_path / "q.csv"
    path.write_text("ts,bid,ask\n1704189600000,99.99,100.01\n")
    replay = quote_source({"data": path})
    assert isinstance(replay, FileReplay)
    assert replay.instruments[0] == Instrument(symbol="q", venue=FILE_VENUE, calendar=FILE_CALENDAR)


def test_a_repeated_param_flag_builds_a_new_dict_each_parse():
    ns = parse("backtest", "--param", "fast_span=20", "--param", "slow_span=80.5", "--param", "tag=x")
    assert ns.params == {"fast_span": 20, "slow_span": 80.5, "tag": "x"}
    assert parse("backtest").params == {} and RunOptions().params == {}


# -- the command line and a mapping give the same configuration ---------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
run_values = st.fixed_dictionaries(
    {},
    optional={
        "strategy": st.sampled_from(["momentum", "mean_reversion", "buy_hold", "ssm", "none"]),
        "params": st.dictionaries(st.sampled_from(["fast_span", "slow_span", "span", "entry_z"]),
                                  st.integers(1, 500) | st.floats(0.5, 500.0), max_size=3),
        "interval": st.sampled_from(list(INTERVALS_NS)),
        "latency_ns": st.integers(0, 10**12),
        "fee_bps": finite.filter(lambda x: abs(x) < 1e6),
        "fee_per_fill": st.floats(0.0, 100.0),
        "size_cap": st.booleans(),
        "cancel_remainder": st.booleans(),
        "flatten_at_close": st.booleans(),
        "flatten_lead_s": st.floats(0.0, 7200.0),
        "capital": st.floats(1.0, 1e12),
        "bar_s": st.floats(0.001, 86400.0),
        "risk_free_rate": st.floats(-0.1, 0.5),
        "warmup_ticks": st.integers(0, 10_000),
    },
)


def argv_of(values: dict) -> list[str]:
    argv = ["backtest"]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if name == "params":
            argv += [f"--param={k}={json.dumps(v)}" for k, v in value.items()]
        elif isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv.append(f"{flag}={value!r}" if isinstance(value, float) else f"{flag}={value}")
    return argv


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=run_values)
def test_flags_and_a_mapping_of_the_same_options_give_the_same_config(values):
    from_cli = backtest_config(_options(parse(*argv_of(values)), RUN_OPTIONS))
    assert from_cli == backtest_config(values)
    if "bar_s" in values:
        assert from_cli.bar_ns == int(values["bar_s"] * S)
    if "capital" in values:
        assert from_cli.initial_capital == values["capital"]


def test_a_mapping_configures_each_field():
    c = backtest_config({"strategy": "momentum", "params": {"fast_span": 20}, "fee_bps": 0.5, "latency_ns": 250_000,
                         "flatten_lead_s": 1.5, "bar_s": 30, "capital": 5e5, "warmup_ticks": 7, "interval": "100ms"})
    assert (c.strategy_params, c.fee_bps, c.latency_ns, c.flatten_lead_ns, c.bar_ns, c.initial_capital, c.warmup_ticks,
            c.interval) == ({"fast_span": 20}, 0.5, 250_000, 1_500_000_000, 30 * S, 5e5, 7, "100ms")


def test_source_options_from_a_mapping_build_the_file_replay_they_name(tmp_path):
    path = tmp_path / "fx.csv"
    path.write_text("t,s,b,a\n1549238400000,EURUSD,1.14501,1.14503\n")
    replay = quote_source({"data": str(path), "columns": "ts=t,symbol=s,bid=b,ask=a", "tick_size": 0.00001,
                           "lot_size": 1000, "calendar": "FX", "venue": "dukascopy", "gap_s": 5})
    list(replay.chunks())
    assert replay.instruments[0] == Instrument(symbol="EURUSD", venue="dukascopy", tick_size=0.00001, lot_size=1000,
                                               calendar="FX", gap_ns=5 * S)


def test_raw_recordings_default_to_fractional_lots_as_replay_raw_does(tmp_path):
    frame = '{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"100.00","B":"1","a":"100.01","A":"2"}}'
    f = tmp_path / "spot_btcusdt.txt"
    f.write_text(f"1723161000000000000 {frame}\n")
    replay = quote_source({"raw_paths": [f]})
    assert isinstance(replay, RawReplay) and replay.instrument_defaults["lot_size"] == RAW_LOT_SIZE
    ns = parse("replay-raw", str(f))
    assert quote_source(_options(ns, SOURCE_OPTIONS)).instrument_defaults == replay.instrument_defaults


# -- bad options are errors that name the option -------------------------------------------------------


@pytest.mark.parametrize(
    "build, values, expect",
    [
        (backtest_config, {"fee_bp": 1.0}, ["unknown option 'fee_bp'", "did you mean fee_bps?"]),
        (backtest_config, {"fee_bps": "abc"}, ["option fee_bps (--fee-bps)", "expected `float`, got `str`"]),
        (backtest_config, {"params": {"a": 1}, "latency_ns": 1.5}, ["option latency_ns (--latency-ns)", "`int`"]),
        (backtest_config, {"params": [1]}, ["option params (--param)", "expected `object`"]),
        (backtest_config, {"interval": "2s"}, ["option interval (--interval)", "'2s' is not one of raw, 100ms, 1s"]),
        (backtest_config, {"latency_ns": -1}, ["option latency_ns", ">= 0"]),
        (backtest_config, {"capital": 0}, ["option capital (--capital)", "> 0"]),
        (backtest_config, {"bar_s": 0}, ["option bar_s (--bar-s)", "at least 1 ns"]),
        (backtest_config, {"warmup_ticks": -3}, ["option warmup_ticks", ">= 0"]),
        (quote_source, {"seeds": 3}, ["unknown option 'seeds'", "did you mean seed?"]),
        (quote_source, {"data": "a.csv", "catalog": "cat"}, ["option catalog (--catalog)", "not data and catalog"]),
        (quote_source, {"ts_unit": "min"}, ["option ts_unit (--ts-unit)", "'min' is not one of auto, s, ms, us, ns"]),
        (quote_source, {"lot_size": 0}, ["option lot_size (--lot-size)", "> 0"]),
        (quote_source, {"data": "/nonexistent/q.csv"}, ["option data (--data)", "no such file"]),
        (quote_source, {"catalog": "/nonexistent/cat"}, ["option catalog (--catalog)", "make one with `nextick ingest`"]),
        (quote_source, {"n_instruments": 0}, ["n_instruments must be >= 1"]),
    ],
)
def test_a_bad_option_is_an_error_naming_it(build, values, expect):
    with pytest.raises(ValueError) as err:
        build(values)
    for fragment in expect:
        assert fragment in str(err.value), str(err.value)


def test_options_are_given_as_a_mapping():
    with pytest.raises(TypeError, match="mapping of option names"):
        run_options(["fee_bps", 1.0])


def test_options_structs_are_checked_like_mappings():
    with pytest.raises(ValueError, match="option capital"):
        backtest_config(RunOptions(capital=-1.0))
    with pytest.raises(ValueError, match="option gap_s"):
        source_options(SourceOptions(gap_s=0.0))


@pytest.mark.parametrize(
    "values, expect",
    [
        ({"strategy": "momentun"}, "neither a built-in"),
        ({"strategy": "momentum", "params": {"fast_span": "fast"}}, "bad parameters for strategy 'momentum'"),
        ({"strategy": "strategies.ema_cross:NoSuchClass"}, "cannot load strategy"),
    ],
)
def test_a_strategy_that_cannot_run_fails_before_any_data_is_read(values, expect):
    with pytest.raises(ValueError, match=expect):
        check_strategy(values)
    check_strategy({"strategy": "strategies.ema_cross:EmaCross", "params": {"fast_span": 5, "slow_span": 20}})


def test_a_path_option_takes_text_or_a_path(tmp_path):
    assert source_options({"data": str(tmp_path)}).data == source_options({"data": Path(tmp_path)}).data == Path(tmp_path)
