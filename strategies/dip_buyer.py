"""An example of explicit orders and events (README, Orders beyond targets): rests a post-only buy
under the bid on each instrument and protects each fill with a stop. tests/test_orders_api.py runs it."""

from __future__ import annotations

import numpy as np

from strategies import orders as O
from strategies.base import Strategy


class DipBuyer(Strategy):
    """Rests a buy dip_bps under the bid on each instrument; protects each fill with a stop stop_bps under."""

    def __init__(self, dip_bps: float = 5.0, stop_bps: float = 100.0, units: float = 10.0) -> None:
        self.dip, self.stop, self.units = dip_bps * 1e-4, stop_bps * 1e-4, units

    def on_start(self, instruments, *, initial_capital):
        self.placed = np.zeros(len(instruments), bool)

    def on_batch(self, batch) -> None:  # no targets: explicit orders only
        for i, bid, warm in zip(batch.instrument, batch.bid_px, batch.warm):
            if warm and not self.placed[i]:
                self.placed[i] = O.limit(self.orders, i, self.units, bid * (1 - self.dip), 1, O.POST_ONLY)

    def on_fill(self, ev):              # one EVENT_DTYPE record: units, px, fee, liquidity, position
        if ev["client_id"] == 1:  # the entry: protect it
            O.stop(self.orders, ev["instrument"], -ev["units"], ev["px"] * (1 - self.stop), 2)
        else:  # stopped out: rest a new entry at the next tick
            self.placed[ev["instrument"]] = False

    def on_order_rejected(self, ev):    # O.REJECT_REASONS[ev["reason"]] says why
        if ev["client_id"] == 1:
            self.placed[ev["instrument"]] = False  # try again at the next tick

    on_order_cancelled = on_order_rejected  # a reset or the session close cancelled it
