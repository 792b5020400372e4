// Causal per-tick features of one instrument: the single definition used both to build training
// sets (through the backtester's feature tap) and as the SSM's input at inference.
//
// Order and meaning match engine.model.config.FEATURE_NAMES. Computed in double; the model input is
// float((f - mean) / std), the same IEEE operations numpy performs in training, so the normalized
// inputs are bit-identical on both sides.
#pragma once
#include <cmath>
#include <cstdint>

#include "quote.hpp"

namespace nextick {

constexpr int kNumFeatures = 5;

struct FeatureState {
    double prev_mid = 0.0;
    int64_t prev_ts = 0;
    bool has_prev = false;  // false after a reset: the feature history is cleared
};

// Relative spread floor: a locked book (validation normally rejects it) must not give log(0).
constexpr double kMinRelSpread = 1e-8;

inline void update_features(FeatureState& st, const Quote& q, int64_t open_ns, int64_t close_ns, double* f) {
    const double mid = mid_of(q);
    const bool two_sided = q.bid_px > 0.0 && q.ask_px > 0.0;
    const bool usable = two_sided && mid > 0.0 && std::isfinite(mid);
    f[0] = (st.has_prev && usable) ? std::log(mid / st.prev_mid) * 1e4 : 0.0;
    f[1] = usable ? std::log(std::fmax((q.ask_px - q.bid_px) / mid, kMinRelSpread)) : std::log(kMinRelSpread);
    const double depth = q.bid_sz + q.ask_sz;
    f[2] = depth > 0.0 ? (q.bid_sz - q.ask_sz) / depth : 0.0;
    f[3] = st.has_prev ? std::log1p(static_cast<double>(q.ts_recv - st.prev_ts) * 1e-6) : 0.0;
    f[4] = close_ns > open_ns ? static_cast<double>(q.ts_recv - open_ns) / static_cast<double>(close_ns - open_ns) : 0.0;
    if (usable) {
        st.prev_mid = mid;
        st.prev_ts = q.ts_recv;
        st.has_prev = true;
    } else if (st.has_prev) {
        st.prev_ts = q.ts_recv;
    }
}

}  // namespace nextick
