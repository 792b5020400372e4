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
    # ssm_threshold: predicted mid beyond the ask (bid) by this much to buy (sell). 3 bps was chosen for
    # the packaged model on a synthetic market disjoint from its training data and from the demo
    # (README, Default model).
    threshold_bps: float = 3.0
    stop_loss_bps: float = 0.0  # ssm_threshold: exit at this adverse mid move from entry; 0 = off
    take_profit_bps: float = 0.0  # ssm_threshold: exit at this favourable mid move from entry; 0 = off
    max_units: float = 0.0  # ssm_threshold: cap on |position| in units; 0 = notional / mid only
    hold_ticks: float = 0.0  # ssm_threshold: exit after this many ticks without a fresh signal; 0 = off

    @property
    def needs_model(self) -> bool:
        return self.kind == "ssm_threshold"


BUILTINS: dict[str, str] = {
    "momentum": "fast/slow EMA cross of the mid; long above, short below, flips on a cross",
    "mean_reversion": "z-score of the mid against its EMA; fades moves beyond entry_z, flat under exit_z",
    "buy_hold": "buys notional/mid units at the first in-session tick and holds",
    "none": "never trades: runs sessions, features and the signal only (training sets, benchmarks)",
    "ssm_threshold": "the SSM's predicted mid against the touch: long above ask + threshold, short below "
    "bid - threshold; stop-loss, take-profit, holding limit",
}
# Short names users type; they resolve to a built-in.
ALIASES: dict[str, str] = {"ssm": "ssm_threshold"}


def is_builtin(name: str) -> bool:
    return name in BUILTINS or name in ALIASES


def builtin_spec(name: str, params: dict[str, float] | None = None) -> BuiltinSpec:
    name = ALIASES.get(name, name)
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in strategy {name!r}; choose from {', '.join(BUILTINS)}")
    try:
        return msgspec.convert({"kind": name, **(params or {})}, BuiltinSpec)
    except msgspec.ValidationError as e:
        raise ValueError(f"bad parameters for strategy {name!r}: {e}") from None
