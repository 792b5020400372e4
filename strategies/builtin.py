"""Built-in strategies: run inside the C++ tick loop (csrc/strategies.hpp), configured from here.

Their parameters are spelled once, in csrc/strategies.hpp (``NEXTICK_STRATEGY_PARAMS``: name,
default, doc); the core exposes them as ``engine._core.STRATEGY_PARAMS`` and ``BuiltinSpec`` is
built from that table, so a parameter added there is a field here, a ``--param`` key and a value
the core receives by name (``Backtester.set_strategy(kind, spec.params())``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine import _core

# name -> (default, doc), in the core's order.
PARAMS: dict[str, tuple[float, str]] = {name: (default, doc) for name, default, doc in _core.STRATEGY_PARAMS}

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


def _needs_model(self) -> bool:
    return self.kind == "ssm_threshold"


def _params(self) -> dict[str, float]:
    """Every parameter by name, as ``Backtester.set_strategy`` takes them."""
    return {name: getattr(self, name) for name in PARAMS}


BuiltinSpec = msgspec.defstruct(
    "BuiltinSpec",
    [("kind", str)] + [(name, float, default) for name, (default, _) in PARAMS.items()],
    namespace={
        "__doc__": "A built-in strategy and its parameters (fields: ``PARAMS``, from the core).",
        "needs_model": property(_needs_model),
        "params": _params,
    },
    module=__name__,
    frozen=True,
    kw_only=True,
)


def is_builtin(name: str) -> bool:
    return name in BUILTINS or name in ALIASES


def builtin_spec(name: str, params: dict[str, Any] | None = None) -> BuiltinSpec:
    name = ALIASES.get(name, name)
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in strategy {name!r}; choose from {', '.join(BUILTINS)}")
    unknown = sorted(set(params or {}) - set(PARAMS))
    if unknown:
        raise ValueError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for strategy "
            f"{name!r}; valid parameters: {', '.join(PARAMS)}"
        )
    try:
        return msgspec.convert({"kind": name, **(params or {})}, BuiltinSpec)
    except msgspec.ValidationError as e:
        raise ValueError(f"bad parameters for strategy {name!r}: {e}") from None
