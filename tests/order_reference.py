"""A slow, plain reference model of the explicit-order fill rules of csrc/orders.hpp, for ONE instrument.

Written from the rule text in that header (not from the engine's code), so that the property tests in
tests/test_order_rules.py can hold the engine to it. Every step is spelled out; nothing is fast.

The model, as the header states it:

* A request decided at ``T`` (the ts of the tick batch it was written in) reaches the market at
  ``T + latency_ns``: only ticks with ``ts > T + latency_ns`` see it. That holds for submits, cancels
  and replaces alike, so until then the old order can still fill.
* A submit is checked when it is decided (size under one lot, missing price, a client id that an order
  that can still fill holds are rejected then, at ``T``). Its first tick after it is active is its *arrival*:
  a limit that crosses there (buy: ask <= limit) takes at the touch (taker); post-only is rejected
  (would cross) instead; IOC fills what crosses and cancels the rest; what does not cross rests (IOC:
  cancelled). From the tick after arrival a resting buy fills at its limit when ask < limit, or
  ask == limit under ``queue="touch"`` (maker). Sells mirror it on the bid.
* A stop triggers at a tick (arrival included) whose ask >= stop (sell: bid <= stop) and fills there
  at the ask (bid) like a market order; a stop-limit becomes a limit at that tick, taking what crosses
  there and resting from the next tick.
* A market order (and a triggered stop) fills at its first tick with its side present, at the touch.
* A side is present when its price is > 0 (one-sided ticks carry px 0, sz 0); nothing crosses,
  triggers or trades through a missing side.
* ``size_cap``: the fills of one tick take together at most its displayed size (whole lots) on the side they
  trade against, in the order they fill;
  a GTC / market / stop remainder keeps working, an IOC remainder is cancelled.
* A cancel or replace reaches the market with the latency, before that tick's fills; the order it names
  (by client id) is then cancelled (reason requested / replaced). One that names no order, or an order
  that a cancel (or cancel-all) already on its way ends, is rejected (unknown order) when decided.
  A cancel whose order filled while it was on its way does nothing (the fill said so). A replace puts
  a new order in place of the old one (same client id, type and time in force; the new fields where
  not NaN; NaN units keep what is left of the old order then), arriving at that same tick. If the old
  order is gone by then (filled), there is nothing to replace: the replace is rejected (unknown order)
  at that tick, and no new order is placed.

Within a tick: cancels and replaces that reach the market first (in decision order), then each order
in the order it was placed. Lot size 1, no warm-up, one session, no resets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# csrc/orders.hpp enums (kept here as numbers so this module needs nothing from the engine)
MARKET, LIMIT, STOP, STOP_LIMIT = 0, 1, 2, 3
GTC, IOC, POST_ONLY = 0, 1, 2
SUBMIT, CANCEL, REPLACE, CANCEL_ALL = 1, 2, 3, 4
FILL, REJECTED, CANCELLED = 1, 2, 3
TAKER, MAKER = 0, 1
# RejectReason / CancelReason
R_SIZE_UNDER_LOT, R_BAD_PRICE, R_WOULD_CROSS, R_UNKNOWN_ORDER, R_DUPLICATE_ID = 3, 4, 5, 6, 7
C_REQUESTED, C_REPLACED, C_IOC_REMAINDER = 0, 1, 4


@dataclass(frozen=True)
class Tick:
    ts: int
    bid: float
    ask: float
    bid_sz: float
    ask_sz: float


@dataclass(frozen=True)
class Req:
    """One request as the strategies.orders writers take it."""

    action: int
    client_id: int
    units: float = math.nan
    limit_px: float = math.nan
    stop_px: float = math.nan
    type: int = MARKET
    tif: int = GTC


@dataclass(frozen=True)
class RefFill:
    ts: int
    decision_ts: int
    px: float
    units: float
    liquidity: int
    order_type: int
    client_id: int
    fee: float


@dataclass(frozen=True)
class RefEvent:
    kind: int
    ts: int
    client_id: int
    units: float  # fill: signed units filled; reject / cancel: signed units not filled
    px: float  # fills only; NaN otherwise
    reason: int  # reject / cancel reason; 0 for fills
    order_type: int
    liquidity: int  # fills only; 0 otherwise


@dataclass
class _Order:
    seq: int  # the request that placed it, in decision order
    client_id: int
    type: int
    tif: int
    units: int  # signed lots still to fill
    limit_px: float
    stop_px: float
    decision_ts: int
    active_ts: int
    arrived: bool = False
    triggered: bool = False  # stops: once triggered, a market order; stop-limits: a limit


@dataclass
class _Message:  # a cancel / replace / cancel-all on its way to the market
    decision_ts: int
    reaches_ts: int
    req: Req
    seq: int  # its place in decision order: a cancel-all ends the orders placed by requests before it


@dataclass
class RefResult:
    fills: list[RefFill] = field(default_factory=list)
    events: list[RefEvent] = field(default_factory=list)

    @property
    def rejects(self) -> list[RefEvent]:
        return [e for e in self.events if e.kind == REJECTED]

    @property
    def cancels(self) -> list[RefEvent]:
        return [e for e in self.events if e.kind == CANCELLED]


def present(px: float) -> bool:
    return px > 0.0


class Reference:
    def __init__(self, *, latency_ns: int, size_cap: bool, queue: str, fee_bps: float = 0.0,
                 maker_fee_bps: float | None = None, fee_per_fill: float = 0.0) -> None:
        assert queue in ("through", "touch")
        self.latency_ns = latency_ns
        self.size_cap = size_cap
        self.touch = queue == "touch"
        self.fee_bps = fee_bps
        self.maker_fee_bps = maker_fee_bps
        self.fee_per_fill = fee_per_fill
        self.book: list[_Order] = []  # placed and not finished, in the order placed
        self.messages: list[_Message] = []
        self.next_seq = 1  # requests in decision order
        self.out = RefResult()

    # -- decisions ---------------------------------------------------------------------------------

    def decide(self, ts: int, requests: list[Req]) -> None:
        for req in requests:
            self.next_seq += 1
            if req.action == SUBMIT:
                self.submit(ts, req)
            elif req.action in (CANCEL, REPLACE, CANCEL_ALL):
                self.send(ts, req)
            else:
                raise ValueError(f"reference model: unknown action {req.action}")

    def submit(self, ts: int, req: Req) -> None:
        bad = self.bad_fields(req.type, req.units, req.limit_px, req.stop_px)
        if bad is None and self.working(req.client_id) is not None:
            bad = R_DUPLICATE_ID
        if bad is not None:
            self.emit(REJECTED, ts, req.client_id, req.units if math.isfinite(req.units) else 0.0, bad, req.type)
            return
        self.place(self.next_seq, req.client_id, req.type, req.tif, int(req.units), req.limit_px, req.stop_px, ts)

    def bad_fields(self, order_type: int, units: float, limit_px: float, stop_px: float) -> int | None:
        if not (abs(units) >= 1.0):
            return R_SIZE_UNDER_LOT
        needs_limit = order_type in (LIMIT, STOP_LIMIT)
        needs_stop = order_type in (STOP, STOP_LIMIT)
        if (needs_limit and not limit_px > 0.0) or (needs_stop and not stop_px > 0.0):
            return R_BAD_PRICE
        return None

    def place(self, seq, client_id, order_type, tif, lots, limit_px, stop_px, decision_ts) -> None:
        self.book.append(_Order(seq, client_id, order_type, tif, lots, limit_px, stop_px, decision_ts,
                                decision_ts + self.latency_ns))
        # Orders are stepped in decision order: a replacement, placed when its replace arrives, takes
        # the place of the replace request (it matters when orders share a tick's displayed size).
        self.book.sort(key=lambda o: o.seq)

    def send(self, ts: int, req: Req) -> None:
        if req.action != CANCEL_ALL and not self.live(req.client_id):
            self.emit(REJECTED, ts, req.client_id, 0.0, R_UNKNOWN_ORDER, MARKET)
            return
        self.messages.append(_Message(ts, ts + self.latency_ns, req, self.next_seq))

    def working(self, client_id: int) -> _Order | None:
        for o in self.book:
            if o.client_id == client_id:
                return o
        return None

    def live(self, client_id: int) -> bool:
        """The client id names an order a cancel or replace may still act on: one in the book, or a
        replacement on its way, that no cancel (or cancel-all) decided after it already ends."""
        o = self.working(client_id)
        # A replacement on its way is an order under the id too, even if the order it replaces has
        # filled meanwhile (it is then refused when it arrives, and a cancel of it does nothing).
        replaces = [m.seq for m in self.messages if m.req.action == REPLACE and m.req.client_id == client_id]
        if o is None and not replaces:
            return False
        latest = max(replaces + ([o.seq] if o is not None else []))
        for m in self.messages:
            if m.seq > latest and (m.req.action == CANCEL_ALL or (m.req.action == CANCEL and m.req.client_id == client_id)):
                return False
        return True

    # -- ticks -------------------------------------------------------------------------------------

    def tick(self, t: Tick) -> None:
        self.shown_used = {True: 0, False: 0}  # size cap: lots taken from this tick's ask (True) / bid
        for m in [m for m in self.messages if t.ts > m.reaches_ts]:
            self.messages.remove(m)
            self.deliver(m, t)
        for o in list(self.book):
            if t.ts > o.active_ts:
                self.step(o, t)

    def deliver(self, m: _Message, t: Tick) -> None:
        req = m.req
        if req.action == CANCEL_ALL:
            for o in [o for o in self.book if o.seq < m.seq]:
                self.finish(o, t.ts, C_REQUESTED)
            return
        o = self.working(req.client_id)
        if req.action == CANCEL:
            if o is not None:  # else it filled while the cancel was on its way: the fill said so
                self.finish(o, t.ts, C_REQUESTED)
            return
        if o is None:
            self.emit(REJECTED, t.ts, req.client_id, 0.0, R_UNKNOWN_ORDER, MARKET)
            return
        units = o.units if math.isnan(req.units) else req.units
        limit_px = o.limit_px if math.isnan(req.limit_px) else req.limit_px
        stop_px = o.stop_px if math.isnan(req.stop_px) else req.stop_px
        bad = self.bad_fields(o.type, units, limit_px, stop_px)
        if bad is not None:
            self.emit(REJECTED, t.ts, req.client_id, units, bad, o.type)
            return
        self.finish(o, t.ts, C_REPLACED)
        self.place(m.seq, o.client_id, o.type, o.tif, int(units), limit_px, stop_px, m.decision_ts)

    def step(self, o: _Order, t: Tick) -> None:
        arrival = not o.arrived
        o.arrived = True
        buy = o.units > 0
        touch_px = t.ask if buy else t.bid
        if o.type in (STOP, STOP_LIMIT) and not o.triggered:
            if not present(touch_px):
                return
            if not (t.ask >= o.stop_px if buy else t.bid <= o.stop_px):
                return
            o.triggered = True
            arrival = True  # from here on it is a market order, or a limit arriving at this tick
        if o.type == MARKET or (o.type == STOP and o.triggered):
            if present(touch_px):
                self.trade(o, t, touch_px, TAKER)
            return
        # a limit (or a triggered stop-limit)
        if arrival:
            crosses = present(touch_px) and (touch_px <= o.limit_px if buy else touch_px >= o.limit_px)
            if crosses and o.tif == POST_ONLY:
                self.book.remove(o)
                self.emit(REJECTED, t.ts, o.client_id, float(o.units), R_WOULD_CROSS, o.type)
                return
            if crosses:
                self.trade(o, t, touch_px, TAKER)
            if o.tif == IOC and o.units != 0:
                self.finish(o, t.ts, C_IOC_REMAINDER)
            return
        if not present(touch_px):
            return
        through = touch_px < o.limit_px if buy else touch_px > o.limit_px
        if through or (self.touch and touch_px == o.limit_px):
            self.trade(o, t, o.limit_px, MAKER)

    def trade(self, o: _Order, t: Tick, px: float, liquidity: int) -> None:
        buy = o.units > 0
        lots = o.units
        if self.size_cap:  # the tick's displayed size is shared by the orders filling on it, in turn
            shown = t.ask_sz if buy else t.bid_sz
            avail = (math.floor(shown + 1e-9) if shown > 0 else 0) - self.shown_used[buy]
            lots = min(lots, avail) if buy else max(lots, -avail)
            self.shown_used[buy] += abs(lots)
        if lots == 0:
            return
        bps = self.maker_fee_bps if liquidity == MAKER and self.maker_fee_bps is not None else self.fee_bps
        fee = abs(lots) * px * bps * 1e-4 + self.fee_per_fill
        self.out.fills.append(RefFill(t.ts, o.decision_ts, px, float(lots), liquidity, o.type, o.client_id, fee))
        self.out.events.append(RefEvent(FILL, t.ts, o.client_id, float(lots), px, 0, o.type, liquidity))
        o.units -= lots
        if o.units == 0:
            self.book.remove(o)

    def finish(self, o: _Order, ts: int, reason: int) -> None:
        self.book.remove(o)
        self.emit(CANCELLED, ts, o.client_id, float(o.units), reason, o.type)

    def emit(self, kind, ts, client_id, units, reason, order_type) -> None:
        self.out.events.append(RefEvent(kind, ts, client_id, float(units), math.nan, reason, order_type, 0))


def simulate(ticks: list[Tick], script: dict[int, list[Req]], *, latency_ns: int, size_cap: bool = False,
             queue: str = "through", fee_bps: float = 0.0, maker_fee_bps: float | None = None,
             fee_per_fill: float = 0.0) -> RefResult:
    """``script``: tick index -> the requests decided on that tick (two-sided ticks only: one-sided
    ones never reach a strategy). Orders still working at the end are left as they are."""
    ref = Reference(latency_ns=latency_ns, size_cap=size_cap, queue=queue, fee_bps=fee_bps,
                    maker_fee_bps=maker_fee_bps, fee_per_fill=fee_per_fill)
    for k, t in enumerate(ticks):
        ref.tick(t)
        if k in script:
            assert present(t.bid) and present(t.ask), f"tick {k} is one-sided: no strategy decides on it"
            ref.decide(t.ts, script[k])
    return ref.out
