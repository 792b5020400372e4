"""Built-in strategies: run inside the C++ tick loop (csrc/strategies.hpp), configured from here."""

from __future__ import annotations

import msgspec


class BuiltinSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Parameters of a built-in strategy. ``notional`` (currency per instrument at entry) defaults
    to the initial capital split evenly across instruments."""

    kind: str
    notional: float | None = None
    fast_span: float = 120.0  # momentum: fast EMA span, ticks
    slow_span: float = 480.0  # momentum: slow EMA span, ticks
    span: float = 100.0  # mean_reversion: EMA span of mid and its variance, ticks
    entry_z: float = 2.0  # mean_reversion: enter against a move beyond this z-score
    exit_z: float = 0.5  # mean_reversion: go flat under this |z|


BUILTINS: dict[str, str] = {
    "momentum": "fast/slow EMA cross of the mid; long above, short below, flips on a cross",
    "mean_reversion": "z-score of the mid against its EMA; fades moves beyond entry_z, flat under exit_z",
    "buy_hold": "buys notional/mid units at the first in-session tick and holds",
}


def builtin_spec(name: str, params: dict[str, float] | None = None) -> BuiltinSpec:
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in strategy {name!r}; choose from {', '.join(BUILTINS)}")
    try:
        return msgspec.convert({"kind": name, **(params or {})}, BuiltinSpec)
    except msgspec.ValidationError as e:
        raise ValueError(f"bad parameters for strategy {name!r}: {e}") from None
