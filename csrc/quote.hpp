// The quote record, laid out exactly as engine.quote.QUOTE_DTYPE (numpy, align=True).
#pragma once
#include <cstddef>
#include <cstdint>

namespace nextick {

struct Quote {
    int64_t ts_event;   // exchange time, ns UTC
    int64_t ts_recv;    // local receive time, ns UTC; replay ordering key
    double bid_px;
    double ask_px;
    double bid_sz;
    double ask_sz;
    uint64_t seq;       // venue update id, 0 if none
    uint32_t instrument;
    uint16_t flags;
};
static_assert(sizeof(Quote) == 64, "Quote must match QUOTE_DTYPE (64 bytes)");
static_assert(offsetof(Quote, instrument) == 56 && offsetof(Quote, flags) == 60, "QUOTE_DTYPE layout");

enum QuoteFlag : uint16_t {
    kSyntheticTs = 1u << 0,
    kCrossed = 1u << 1,
    kOneSided = 1u << 2,
    kAfterReconnect = 1u << 3,
    kConflated = 1u << 4,
    kStale = 1u << 5,
};

inline double mid_of(const Quote& q) { return 0.5 * (q.bid_px + q.ask_px); }

// Both sides present (validation lets through one-sided quotes: the missing side is 0).
inline bool two_sided(const Quote& q) { return q.bid_px > 0.0 && q.ask_px > 0.0; }

}  // namespace nextick
