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


def overridden_callbacks(strategy: Any, base: type) -> list[str]:
    """The event callbacks ``strategy`` defines beyond ``base``'s no-ops."""
    return [name for name in _CALLBACKS.values() if getattr(type(strategy), name, None) is not getattr(base, name, None)]


class EventRelay:
    def __init__(self, strategy: Any) -> None:
        self.requests = np.zeros(REQUEST_CAPACITY, dtype=o.REQUEST_DTYPE)
        self.events = np.zeros(EVENT_CAPACITY, dtype=o.EVENT_DTYPE).view(np.recarray)
        self.delivered = 0
        self._handlers = {kind: getattr(strategy, name) for kind, name in _CALLBACKS.items()}
        strategy.orders = self.requests

    def __call__(self, n: int) -> None:
        self.delivered += n
        handlers = self._handlers
        events = self.events
        for k in range(n):
            ev = events[k]
            handlers[int(ev.kind)](ev.copy())  # a copy: the buffer is reused for the next events
