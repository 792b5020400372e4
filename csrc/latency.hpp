// Latency draws from a quantile table: the same bits as engine/domain/latency_model.py (draw_index).
//
// The k-th draw of an instrument hashes (seed, instrument, k) with splitmix64's finalizer and maps the
// top 32 bits onto the table, so it depends on nothing else: not on other instruments, not on how
// many draws were taken before or in what order. tests/cpp/latency_draws.cpp checks the parity.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

namespace nextick {

inline constexpr uint64_t kLatencyGolden = 0x9E3779B97F4A7C15ull;

inline uint64_t latency_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

class LatencyTable {
public:
    // quantiles_ns: sorted, >= 0, fewer than 2^32 entries (LatencyDistribution.quantiles_ns).
    void set(std::vector<int64_t> quantiles_ns, uint64_t seed) {
        if (quantiles_ns.size() >= (uint64_t{1} << 32))
            throw std::invalid_argument("latency table: at most 2^32 - 1 quantiles");
        for (std::size_t i = 0; i < quantiles_ns.size(); ++i) {
            if (quantiles_ns[i] < 0 || (i > 0 && quantiles_ns[i] < quantiles_ns[i - 1]))
                throw std::invalid_argument("latency table: quantiles must be sorted and >= 0 ns");
        }
        table_ = std::move(quantiles_ns);
        seed_hash_ = latency_mix64(seed + kLatencyGolden);
    }

    bool empty() const { return table_.empty(); }
    std::size_t size() const { return table_.size(); }

    // The k-th delay of `instrument`, ns. Requires !empty().
    int64_t draw(uint32_t instrument, uint64_t k) const {
        uint64_t h = latency_mix64(seed_hash_ ^ (uint64_t{instrument} + kLatencyGolden));
        h = latency_mix64(h ^ (k + kLatencyGolden));
        return table_[((h >> 32) * table_.size()) >> 32];
    }

    // Entry floor(n / 2), as LatencyDistribution.median_ns. Requires !empty().
    int64_t median_ns() const { return table_[table_.size() / 2]; }

private:
    std::vector<int64_t> table_;
    uint64_t seed_hash_ = 0;
};

}  // namespace nextick
