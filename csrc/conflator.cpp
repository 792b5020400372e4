#include "conflator.hpp"

#include <algorithm>
#include <stdexcept>

namespace nextick {

static inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

Conflator::Conflator(int64_t interval_ns) : interval_ns_(interval_ns) {
    if (interval_ns <= 0) throw std::invalid_argument("conflation interval must be positive (ns)");
}

void Conflator::emit_pending(std::vector<Quote>& out) {
    if (touched_.empty()) return;
    // Instrument order inside one interval makes the output independent of arrival order.
    std::sort(touched_.begin(), touched_.end());
    const int64_t stamp = (bucket_ + 1) * interval_ns_;
    for (uint32_t inst : touched_) {
        Quote s = pending_[inst];
        s.ts_recv = stamp;
        s.flags = static_cast<uint16_t>(s.flags | kConflated);
        out.push_back(s);
        has_pending_[inst] = 0;
    }
    snapshots_out_ += touched_.size();
    touched_.clear();
}

void Conflator::push(const Quote* in, size_t n, std::vector<Quote>& out) {
    for (size_t r = 0; r < n; ++r) {
        const Quote& q = in[r];
        const int64_t b = floor_div(q.ts_recv, interval_ns_);
        if (b != bucket_) {
            if (b < bucket_) throw std::invalid_argument("conflator input went back in time (ts_recv decreased)");
            emit_pending(out);
            bucket_ = b;
        }
        if (q.instrument >= pending_.size()) {
            pending_.resize(q.instrument + 1);
            has_pending_.resize(q.instrument + 1, 0);
        }
        Quote& slot = pending_[q.instrument];
        if (!has_pending_[q.instrument]) {
            has_pending_[q.instrument] = 1;
            touched_.push_back(q.instrument);
            slot = q;
        } else {
            // Reconnect and stale marks must survive conflation: the engine resets on them.
            const uint16_t sticky = slot.flags & (kAfterReconnect | kStale);
            slot = q;
            slot.flags = static_cast<uint16_t>(slot.flags | sticky);
        }
    }
    quotes_in_ += n;
}

void Conflator::flush_until(int64_t now_ns, std::vector<Quote>& out) {
    if (bucket_ != INT64_MIN && (bucket_ + 1) * interval_ns_ <= now_ns) emit_pending(out);
}

void Conflator::flush(std::vector<Quote>& out) { emit_pending(out); }

}  // namespace nextick
