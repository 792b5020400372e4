// Session tracker: per instrument, which session a tick belongs to and whether state must reset.
//
// Sessions arrive from Python (engine.calendar) as [open_ns, close_ns) intervals appended in time
// order; a cursor walks them as ticks advance, so a lookup is O(1) amortized.
#pragma once
#include <cstdint>
#include <vector>

#include "quote.hpp"

namespace nextick {

enum class ResetReason : uint8_t { kSessionOpen = 0, kGap = 1, kReconnect = 2, kStale = 3, kManual = 4, kNone = 255 };

struct ResetEvent {
    int64_t ts;           // ns, the tick at which the reset took effect
    uint32_t instrument;
    uint8_t reason;       // ResetReason
    uint8_t pad[3];
};

struct SessionState {
    std::vector<int64_t> opens, closes;
    size_t cursor = 0;
    int64_t open_ns = -1;      // open of the session the last in-session tick belonged to
    int64_t close_ns = -1;
    int64_t last_tick_ns = -1; // last in-session tick
    int64_t gap_ns = 0;
    int32_t warmup_ticks = 0;
    int32_t warm_left = 0;     // ticks of warm-up still to run after the last reset
    int64_t manual_at_ns = INT64_MAX;  // a MANUAL reset takes effect at the first tick at or after this

    void append(const int64_t* o, const int64_t* c, size_t n) {
        for (size_t k = 0; k < n; ++k) {
            if (!opens.empty() && o[k] <= opens.back()) continue;  // already known (idempotent)
            opens.push_back(o[k]);
            closes.push_back(c[k]);
        }
    }

    // A restarted process picks the run up at at_ns: if a session is open then, it counts as already
    // open, so the first tick is not a SESSION_OPEN (the caller flags it as a reconnect instead).
    void resume(int64_t at_ns) {
        while (cursor < opens.size() && closes[cursor] <= at_ns) ++cursor;
        if (cursor < opens.size() && opens[cursor] <= at_ns) {
            open_ns = opens[cursor];
            close_ns = closes[cursor];
        }
    }

    // Advances to ts. Returns false outside any session. In session, sets `reason` to the reset
    // this tick triggers (kNone if none); the caller applies it. `flags` are the quote's flags.
    inline bool advance(int64_t ts, uint16_t flags, ResetReason& reason) {
        while (cursor < opens.size() && closes[cursor] <= ts) ++cursor;
        if (cursor == opens.size() || ts < opens[cursor]) return false;
        reason = ResetReason::kNone;
        if (opens[cursor] != open_ns) {
            open_ns = opens[cursor];
            close_ns = closes[cursor];
            reason = ResetReason::kSessionOpen;
        } else if (flags & kAfterReconnect) {
            reason = ResetReason::kReconnect;
        } else if (flags & kStale) {
            reason = ResetReason::kStale;
        } else if (ts - last_tick_ns > gap_ns) {
            reason = ResetReason::kGap;
        } else if (ts >= manual_at_ns) {
            reason = ResetReason::kManual;
        }
        if (ts >= manual_at_ns) manual_at_ns = INT64_MAX;  // consumed, or folded into a stronger reset
        last_tick_ns = ts;
        return true;
    }
};

}  // namespace nextick
