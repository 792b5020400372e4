// Simulated execution: one working order per instrument, filled at the next tick's quotes.
//
// An order decided at time T on instrument i becomes active at T + latency_ns and fills at the first
// tick of i with ts_recv > T + latency_ns (strictly later, so never on its decision tick): a buy at
// that tick's ask, a sell at its bid. With the size cap on, a fill takes at most the displayed size;
// the rest waits for later ticks or is cancelled. Orders live within the session they were decided
// in. Quantities are integer lots, so positions never drift.
#pragma once
#include <cstdint>
#include <limits>

namespace nextick {

struct ExecConfig {
    int64_t latency_ns = 0;
    double fee_bps = 0.0;          // of notional, per taking fill (market orders, limits that cross)
    double maker_fee_bps = std::numeric_limits<double>::quiet_NaN();  // resting limit fills; NaN: fee_bps
    double fee_per_fill = 0.0;     // fixed, currency
    bool size_cap = false;         // cap each fill at the displayed size of the filling tick
    bool cancel_remainder = false; // with size_cap: cancel what the displayed size did not fill
    bool flatten_at_close = false; // target flat from close - flatten_lead_ns on
    int64_t flatten_lead_ns = 60'000'000'000;
    uint8_t queue = 0;             // QueueModel (csrc/orders.hpp): 0 fill resting limits on a trade-through, 1 on a touch
};

struct Order {
    uint64_t id = 0;
    int64_t decision_ts = 0;
    int64_t active_ts = 0;   // decision_ts + latency; fills need ts_recv > active_ts
    int64_t session_open = -1;
    int64_t remaining_lots = 0;  // signed: + buy, - sell; 0 = no working order
    double decision_mid = 0.0;
    bool working() const { return remaining_lots != 0; }
};

struct Fill {
    uint64_t order_id;
    int64_t decision_ts;    // ns
    int64_t fill_ts;        // ns, ts_recv of the filling tick
    double px;
    double sz;              // signed units: + bought, - sold
    double fee;             // currency
    double decision_mid;
    double slippage_bps;    // (px - decision_mid)/decision_mid in bps, signed so that a cost is > 0
    uint32_t instrument;
    uint8_t liquidity;      // 0 taker, 1 maker (a resting limit)
    uint8_t order_type;     // OrderType (csrc/orders.hpp): 0 market (target orders and explicit ones)
    uint8_t pad[2];
};

// What became of an order, for the live journal and reconciliation: one event when it is placed and
// one when it is cancelled (a fill is a Fill). Recorded only while the order log is on.
enum class OrderEventKind : uint8_t {
    kNew = 0,
    kReplaced = 1,       // a different target arrived before it filled
    kSessionClose = 2,
    kReset = 3,
    kRemainder = 4,      // size cap with cancel_remainder
    kEnd = 5,            // end of data / shutdown
};

struct OrderEvent {
    uint64_t order_id;
    int64_t ts;             // ns: decision time (new) or the tick that cancelled it
    int64_t active_ts;      // ns: decision + latency
    double units;           // signed units still to fill (new: the whole order)
    double decision_mid;
    uint32_t instrument;
    uint8_t kind;           // OrderEventKind
    uint8_t pad[3];
};

struct Trade {              // a round trip: from flat to flat (a flip closes one and opens the next)
    int64_t entry_ts;
    int64_t exit_ts;
    double pnl;             // currency, net of fees
    double max_units;       // largest absolute position held during the trade
    uint32_t instrument;
    uint32_t fills;
};

}  // namespace nextick
