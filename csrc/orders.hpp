// Orders a strategy sends explicitly (beside the target position every strategy may return), the
// events the engine sends back, and the C ABI of compiled strategies. The structs here cross into
// Python and numba as numpy structured dtypes (strategies/orders.py), so their layouts are fixed.
//
// Fill rules on BBO data (the order is active from decision + latency; only ticks with a later
// ts_recv see it, so it never fills on the tick that placed it):
//   arrival   the first tick after it is active. A limit that crosses there (buy: ask <= limit;
//             sell: bid >= limit) takes liquidity at the touch (the ask / bid); post-only is
//             rejected instead, IOC fills what crosses and cancels the rest. One that does not
//             cross rests (IOC: cancelled).
//   resting   from the tick after arrival: a buy limit fills at its limit when the ask trades
//             through it (ask < limit), or touches it (ask == limit) under QueueModel::kTouch;
//             a sell mirrors it on the bid. The fill is at the limit (maker).
//   stops     a buy stop triggers at a tick whose ask >= stop (sell: bid <= stop), arrival
//             included, and fills at that tick's ask (bid) like a market order; a stop-limit
//             turns into a limit there, taking what crosses on that tick and resting from the next.
//   size cap  with ExecConfig::size_cap the fills of one tick take together at most its displayed
//             size on their side, in the order they fill (the target order first).
// A buy therefore never fills below the ask of its tick, nor above its limit; a sell mirrors it.
// Cancels and replaces take the order latency too: until decision + latency the old order can fill.
// A replacement arriving after its order filled is rejected (unknown order); one whose size is NaN
// takes what is left of the order when it arrives. A client id stays taken until its order is gone
// (a cancel on its way included), so a fill is never reported under two orders' names.
#pragma once
#include <cstdint>

#include "strategies.hpp"

namespace nextick {

enum class OrderType : uint8_t { kMarket = 0, kLimit = 1, kStop = 2, kStopLimit = 3 };
enum class TimeInForce : uint8_t { kGtc = 0, kIoc = 1, kPostOnly = 2 };  // post-only rests like GTC, never takes
enum class RequestAction : uint8_t { kNone = 0, kSubmit = 1, kCancel = 2, kReplace = 3, kCancelAll = 4 };
// How a resting limit is filled by a quote at its price: only when the other side trades through it
// (kThrough, the default: the queue ahead of it is unknown) or as soon as the other side touches it.
enum class QueueModel : uint8_t { kThrough = 0, kTouch = 1 };

enum class RejectReason : uint8_t {
    kNone = 0,
    kNotTradeable = 1,    // outside session, no mark yet, or stale
    kWarmup = 2,          // would open or increase a position during warm-up
    kSizeUnderLot = 3,    // |units| under one lot
    kBadPrice = 4,        // limit / stop price missing, NaN or <= 0 where the type needs it
    kWouldCross = 5,      // post-only that would take liquidity on arrival
    kUnknownOrder = 6,    // cancel / replace of a client id with no working order
    kDuplicateId = 7,     // submit with a client id whose order is still working or being cancelled
    kTooManyOrders = 8,   // kMaxWorkingOrders working on the instrument
    kBadRequest = 9,      // unknown action, type or time in force; instrument out of range
};
enum class CancelReason : uint8_t {
    kRequested = 0,
    kReplaced = 1,
    kSessionClose = 2,
    kReset = 3,
    kIocRemainder = 4,
    kEnd = 5,
    kOco = 6,             // its sibling filled (ssm_threshold's stop-loss and take-profit)
};
constexpr int kMaxWorkingOrders = 64;  // per instrument: bounds the per-tick scan

// One request, written by a strategy into its request buffer; the engine reads requests in order
// until one with action kNone, then clears them. Layout mirrors strategies.orders.REQUEST_DTYPE.
struct OrderRequest {
    uint64_t client_id;  // the strategy's name for the order (cancel / replace refer to it); 0 = anonymous
    double units;        // signed: + buy, - sell; replace: NaN keeps the size
    double limit_px;     // limit, stop-limit; replace: NaN keeps it
    double stop_px;      // stop, stop-limit trigger; replace: NaN keeps it
    uint32_t instrument;
    uint8_t action;      // RequestAction
    uint8_t type;        // OrderType
    uint8_t tif;         // TimeInForce
    uint8_t pad;
};
static_assert(sizeof(OrderRequest) == 40, "OrderRequest layout");

enum class EventKind : uint8_t {
    kFill = 1,
    kRejected = 2,
    kCancelled = 3,
    kReset = 4,          // reason: ResetReason
    kSessionOpen = 5,
    kSessionClose = 6,
};

// What happened, for a strategy's callbacks. Layout mirrors strategies.orders.EVENT_DTYPE.
struct StrategyEvent {
    int64_t ts;          // ts_recv of the tick it happened at
    uint64_t order_id;   // engine order id (fills, rejects, cancels); 0 otherwise
    uint64_t client_id;  // the strategy's id of the order; 0 for target orders
    double px;           // fill price; NaN otherwise
    double units;        // fill: signed units filled; reject / cancel: signed units not filled
    double position;     // units held after the event
    double fee;          // fill fee, currency
    uint32_t instrument;
    uint8_t kind;        // EventKind
    uint8_t reason;      // RejectReason, CancelReason or ResetReason
    uint8_t order_type;  // OrderType of the order concerned
    uint8_t liquidity;   // fills: 0 taker, 1 maker
};
static_assert(sizeof(StrategyEvent) == 64, "StrategyEvent layout");

// A compiled strategy (strategies/compiled.py builds these with numba's cfunc; the uncompiled
// path is a trampoline into the same Python function). `state` is the strategy's own
// [n_instruments x n_state] float64 array, `params` its read-only parameters, `orders` a request
// buffer of `orders_cap` entries. on_tick returns the target position in units (NaN: keep).
using CompiledTickFn = double (*)(void* user, const BatchRow* tick, const double* params, int64_t n_params,
                                  double* state, int64_t n_instruments, int64_t n_state, OrderRequest* orders,
                                  int64_t orders_cap);
using CompiledEventFn = void (*)(void* user, const StrategyEvent* ev, const double* params, int64_t n_params,
                                 double* state, int64_t n_instruments, int64_t n_state, OrderRequest* orders,
                                 int64_t orders_cap);

}  // namespace nextick
