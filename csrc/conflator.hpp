// Conflator: raw quotes in, at most one snapshot per instrument per interval out.
//
// Interval k covers ts_recv in [k*I, (k+1)*I). Its snapshot is the last quote of that interval,
// restamped ts_recv = (k+1)*I (the moment the snapshot becomes available) with kConflated set, so a
// snapshot stamped T never carries a quote received at or after T. ts_event keeps the venue's time
// of the quote it carries. An interval with no quote emits nothing for that instrument.
// Snapshots leave in (T, instrument) order, so the output is itself a valid time-ordered stream.
#pragma once
#include <cstdint>
#include <vector>

#include "quote.hpp"

namespace nextick {

class Conflator {
public:
    explicit Conflator(int64_t interval_ns);

    // Appends to `out` every snapshot whose interval is complete once `in` has been seen.
    // `in` must continue the stream in non-decreasing ts_recv order.
    void push(const Quote* in, size_t n, std::vector<Quote>& out);
    // Emits snapshots of intervals ending at or before `now_ns` (a live feed's timer).
    void flush_until(int64_t now_ns, std::vector<Quote>& out);
    // Emits everything still pending (end of stream).
    void flush(std::vector<Quote>& out);

    int64_t interval_ns() const { return interval_ns_; }
    uint64_t quotes_in() const { return quotes_in_; }
    uint64_t snapshots_out() const { return snapshots_out_; }

private:
    void emit_pending(std::vector<Quote>& out);

    int64_t interval_ns_;
    int64_t bucket_ = INT64_MIN;            // interval index of the pending snapshots
    std::vector<Quote> pending_;            // by instrument id
    std::vector<uint8_t> has_pending_;      // by instrument id
    std::vector<uint32_t> touched_;         // instruments with a pending snapshot
    uint64_t quotes_in_ = 0;
    uint64_t snapshots_out_ = 0;
};

}  // namespace nextick
