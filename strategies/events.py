"""Hands a Python strategy the engine's events and takes its order requests.

The core copies events (strategies.orders.EVENT_DTYPE) into ``events`` and calls the relay before a
strategy's next batch; the relay calls the strategy's callback for each, in order. The strategy's
requests go into ``requests`` (its ``orders`` attribute), which the core reads after each batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from strategies import orders as o

REQUEST_CAPACITY = 1024
EVENT_CAPACITY = 256
_CALLBACKS = {
    o.FILL: "on_fill",
    o.REJECTED: "on_order_rejected",
    o.CANCELLED: "on_order_cancelled",
    o.RESET: "on_reset",
    o.SESSION_OPEN: "on_session_open",
    o.SESSION_CLOSE: "on_session_close",
}


class StrategyCallbacks:
    """The event callbacks of Python strategies (Strategy, PortfolioStrategy): no-ops until overridden.
    Each gets one ``strategies.orders.EVENT_DTYPE`` record; ``self.orders`` is the request buffer
    (``strategies.orders.REQUEST_DTYPE``) its explicit orders go into, set by the engine before on_start."""

    orders: np.ndarray

    def on_fill(self, event: np.void) -> None:
        """A fill of any of its orders (``units`` signed, ``px``, ``fee``, ``liquidity``, ``position`` after)."""

    def on_order_rejected(self, event: np.void) -> None:
        """An explicit order refused (``reason``: strategies.orders.REJECT_REASONS)."""

    def on_order_cancelled(self, event: np.void) -> None:
        """An explicit order gone unfilled (``reason``: strategies.orders.CANCEL_REASONS)."""

    def on_reset(self, event: np.void) -> None:
        """The instrument's state was reset (``reason``: engine RESET_REASONS) at ``ts``."""

    def on_session_open(self, event: np.void) -> None:
        """The instrument's first tick of a new session."""

    def on_session_close(self, event: np.void) -> None:
        """The instrument's first tick after its session closed (its orders are cancelled then)."""


def overridden_callbacks(strategy: Any) -> list[str]:
    """The event callbacks ``strategy`` defines beyond the no-ops (the core records events only for those)."""
    return [name for name in _CALLBACKS.values() if getattr(type(strategy), name) is not getattr(StrategyCallbacks, name)]


class EventRelay:
    def __init__(self, strategy: Any) -> None:
        self.requests = np.zeros(REQUEST_CAPACITY, dtype=o.REQUEST_DTYPE)
        self.events = np.zeros(EVENT_CAPACITY, dtype=o.EVENT_DTYPE).view(np.recarray)
        self._handlers = {kind: getattr(strategy, name) for kind, name in _CALLBACKS.items()}
        strategy.orders = self.requests

    def __call__(self, n: int) -> None:
        handlers = self._handlers
        events = self.events
        for k in range(n):
            ev = events[k]
            handlers[int(ev.kind)](ev.copy())  # a copy: the buffer is reused for the next events
