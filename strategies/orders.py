"""Explicit orders and strategy events: the records of csrc/orders.hpp as numpy dtypes, and the
functions that write order requests.

Every strategy may return a target position per tick (the engine sends a market order toward it).
Beside that it can send explicit orders, each named by a ``client_id`` of its choosing:

    limit(orders, instrument, units, limit_px, client_id, tif=GTC)     # GTC, IOC or POST_ONLY
    stop(orders, instrument, units, stop_px, client_id)                # market once triggered
    stop_limit(orders, instrument, units, stop_px, limit_px, client_id)
    cancel(orders, instrument, client_id); replace(orders, instrument, client_id, units, limit_px, stop_px)
    cancel_all(orders, instrument)

``orders`` is the request buffer the engine hands the strategy (a REQUEST_DTYPE array). The writers
are plain functions over that array, so the same code runs in a Python strategy, in a compiled
strategy under numba (``strategies.compiled``), and in that strategy run uncompiled. They return
False when the buffer is full (the request is not sent).

Fill rules are in csrc/orders.hpp: never on the tick that placed the order, a buy never below the
ask of its tick nor above its limit; a resting limit fills on a trade-through of its price (or a
touch, with ``BacktestConfig.queue = "touch"``).
"""

from __future__ import annotations

import numpy as np

try:  # the writers run as plain Python, and inside numba-compiled strategies (strategies.compiled)
    from numba.extending import register_jitable as _jitable
except ImportError:  # pragma: no cover - numba is an optional extra

    def _jitable(fn):
        return fn

# csrc/orders.hpp RequestAction, OrderType, TimeInForce
NONE, SUBMIT, CANCEL, REPLACE, CANCEL_ALL = 0, 1, 2, 3, 4
MARKET, LIMIT, STOP, STOP_LIMIT = 0, 1, 2, 3
GTC, IOC, POST_ONLY = 0, 1, 2
ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
TIME_IN_FORCE = ("gtc", "ioc", "post_only")

# csrc/orders.hpp EventKind
FILL, REJECTED, CANCELLED, RESET, SESSION_OPEN, SESSION_CLOSE = 1, 2, 3, 4, 5, 6
EVENT_KINDS = {FILL: "fill", REJECTED: "rejected", CANCELLED: "cancelled", RESET: "reset",
               SESSION_OPEN: "session_open", SESSION_CLOSE: "session_close"}
REJECT_REASONS = ("none", "not_tradeable", "warmup", "size_under_lot", "bad_price", "would_cross", "unknown_order",
                  "duplicate_id", "too_many_orders", "bad_request")
CANCEL_REASONS = ("requested", "replaced", "session_close", "reset", "ioc_remainder", "end", "oco")
MAX_WORKING_ORDERS = 64  # per instrument (csrc/orders.hpp kMaxWorkingOrders)

REQUEST_DTYPE = np.dtype(
    [
        ("client_id", "<u8"),
        ("units", "<f8"),  # signed: + buy, - sell
        ("limit_px", "<f8"),
        ("stop_px", "<f8"),
        ("instrument", "<u4"),
        ("action", "u1"),
        ("type", "u1"),
        ("tif", "u1"),
        ("pad", "u1"),
    ],
    align=True,
)
assert REQUEST_DTYPE.itemsize == 40

EVENT_DTYPE = np.dtype(
    [
        ("ts", "<i8"),
        ("order_id", "<u8"),
        ("client_id", "<u8"),
        ("px", "<f8"),
        ("units", "<f8"),
        ("position", "<f8"),
        ("fee", "<f8"),
        ("instrument", "<u4"),
        ("kind", "u1"),
        ("reason", "u1"),  # REJECT_REASONS, CANCEL_REASONS or engine RESET_REASONS by kind
        ("order_type", "u1"),
        ("liquidity", "u1"),  # fills: 0 taker, 1 maker
    ],
    align=True,
)
assert EVENT_DTYPE.itemsize == 64


@_jitable
def _put(orders, action, instrument, units, limit_px, stop_px, client_id, order_type, tif):
    # The first free slot; the engine clears the buffer after reading it.
    for k in range(orders.shape[0]):
        if orders[k]["action"] == NONE:
            orders[k]["client_id"] = client_id
            orders[k]["units"] = units
            orders[k]["limit_px"] = limit_px
            orders[k]["stop_px"] = stop_px
            orders[k]["instrument"] = instrument
            orders[k]["action"] = action
            orders[k]["type"] = order_type
            orders[k]["tif"] = tif
            return True
    return False


@_jitable
def market(orders, instrument, units, client_id):
    return _put(orders, SUBMIT, instrument, units, np.nan, np.nan, client_id, MARKET, GTC)


@_jitable
def limit(orders, instrument, units, limit_px, client_id, tif=GTC):
    return _put(orders, SUBMIT, instrument, units, limit_px, np.nan, client_id, LIMIT, tif)


@_jitable
def stop(orders, instrument, units, stop_px, client_id):
    return _put(orders, SUBMIT, instrument, units, np.nan, stop_px, client_id, STOP, GTC)


@_jitable
def stop_limit(orders, instrument, units, stop_px, limit_px, client_id):
    return _put(orders, SUBMIT, instrument, units, limit_px, stop_px, client_id, STOP_LIMIT, GTC)


@_jitable
def cancel(orders, instrument, client_id):
    return _put(orders, CANCEL, instrument, np.nan, np.nan, np.nan, client_id, MARKET, GTC)


@_jitable
def replace(orders, instrument, client_id, units, limit_px, stop_px):
    """A new order in place of ``client_id`` (same client id, a new engine id, active after the
    latency like any order); NaN keeps the old value (a NaN size: what is left of the old order when
    the replacement arrives). Rejected as unknown_order if the old order filled on the way."""
    return _put(orders, REPLACE, instrument, units, limit_px, stop_px, client_id, MARKET, GTC)


@_jitable
def cancel_all(orders, instrument):
    return _put(orders, CANCEL_ALL, instrument, np.nan, np.nan, np.nan, 0, MARKET, GTC)
