"""Built-in strategy parameters are spelled once (csrc/strategies.hpp, NEXTICK_STRATEGY_PARAMS): every
one goes from ``--param key=value`` through BuiltinSpec and Engine to the core by name, and the core
reports back what it was configured with; an unknown one is refused with the valid names."""

from __future__ import annotations

import struct

import pytest
from conftest import table
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _core
from engine.backtest import Engine
from engine.cli import _build_parser, _options, main
from engine.options import RUN_OPTIONS, backtest_config
from strategies.builtin import ALIASES, BUILTINS, PARAMS, BuiltinSpec, builtin_spec

CAPITAL = 1_000_000.0
N_INSTRUMENTS = 2


def configured(argv: list[str]) -> dict:
    """What the core reports after ``nextick backtest ARGV`` set up its engine."""
    args = _build_parser().parse_args(["backtest", *argv])
    engine = Engine(backtest_config(_options(args, RUN_OPTIONS)), table(N_INSTRUMENTS), None)
    engine.prepare()
    return engine.core.strategy_params()


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(PARAMS)), st.floats(allow_nan=False, allow_infinity=False))
def test_every_parameter_round_trips_from_the_command_line_to_the_core(name, value):
    got = configured(["--strategy", "momentum", "--param", f"{name}={value!r}"])
    assert got["kind"] == "momentum"
    assert bits(got[name]) == bits(value)  # bit for bit, -0.0 included
    for other, (default, _) in PARAMS.items():
        if other != name:
            want = CAPITAL / N_INSTRUMENTS if other == "notional" else default
            assert bits(got[other]) == bits(want), other


@pytest.mark.parametrize("name", [*BUILTINS, *ALIASES])
def test_every_built_in_reaches_the_core_by_name(name):
    got = configured(["--strategy", name, "--param", "hold_ticks=7"])
    assert got["kind"] == ALIASES.get(name, name) and got["hold_ticks"] == 7.0


def test_the_core_table_is_the_spec():
    assert tuple(PARAMS) == tuple(n for n, _, _ in _core.STRATEGY_PARAMS)
    assert BuiltinSpec.__struct_fields__ == ("kind", *PARAMS)
    assert all(doc for _, doc in PARAMS.values())
    spec = builtin_spec("momentum")
    assert [bits(v) for v in spec.params().values()] == [bits(d) for d, _ in PARAMS.values()]


def test_an_unknown_parameter_is_refused_with_the_valid_ones(capsys):
    valid = ", ".join(PARAMS)
    code = main(["backtest", "--n-sessions", "1", "--no-progress", "--param", "fats_span=3"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown parameter 'fats_span'" in err and f"valid parameters: {valid}" in err
    # The core refuses it too, whoever calls it.
    core = _core.Backtester()
    with pytest.raises(ValueError, match=f"unknown parameter 'fats_span'.*valid parameters: {valid}"):
        core.set_strategy("momentum", {"notional": 1.0, "fats_span": 3.0})
    with pytest.raises(ValueError, match="notional"):
        core.set_strategy("momentum", {})  # NaN, the core's "not given": the engine must say
    with pytest.raises(ValueError, match="'fast_span' must be a number"):
        core.set_strategy("momentum", {"notional": 1.0, "fast_span": "x"})


@given(st.text(min_size=1, max_size=20).filter(lambda k: k not in PARAMS))
def test_any_other_name_is_refused(name):
    with pytest.raises(ValueError) as e:
        builtin_spec("mean_reversion", {name: 1.0})
    assert repr(name) in str(e.value) and f"valid parameters: {', '.join(PARAMS)}" in str(e.value)
