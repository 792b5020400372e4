// Prints LatencyTable draws for tests/test_latency_model.py to compare with the Python draw.
// stdin: "n seed" then n quantiles, then "m" then m lines "instrument k"; stdout: median, then m draws.
#include <cstdio>
#include <vector>

#include "latency.hpp"

int main() {
    unsigned long long n = 0, seed = 0, m = 0;
    if (std::scanf("%llu %llu", &n, &seed) != 2) return 2;
    std::vector<int64_t> q(n);
    for (auto& v : q) {
        long long x;
        if (std::scanf("%lld", &x) != 1) return 2;
        v = x;
    }
    nextick::LatencyTable table;
    if (!table.empty()) return 3;
    table.set(q, seed);
    std::printf("%lld\n", static_cast<long long>(table.median_ns()));
    if (std::scanf("%llu", &m) != 1) return 2;
    for (unsigned long long i = 0; i < m; ++i) {
        unsigned long long inst, k;
        if (std::scanf("%llu %llu", &inst, &k) != 2) return 2;
        std::printf("%lld\n", static_cast<long long>(table.draw(static_cast<uint32_t>(inst), k)));
    }
    return 0;
}
