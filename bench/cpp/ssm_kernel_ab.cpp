// Two builds of the SSM kernel in one process, stepped alternately: on a shared VM a single run of
// `nextick bench` varies by 5-30% with the neighbours' load, so a kernel change worth a few percent
// can only be seen by timing both versions within milliseconds of each other, many times, and
// reading the median of the per-round ratios. bench/cpp/ssm_kernel_ab.sh builds this file with the
// old kernel source compiled as the `avx512` variant and the new one as `avx512_256` (both with the
// avx512_256 flags), so their plans must share csrc/ssm_kernel.hpp's layout. It checks first that
// both give the same bits.
//
//   ssm_kernel_ab BATCH ROUNDS [SECONDS_PER_ROUND]
//
// Weights are random (A negative, so the state stays bounded), one row per slot. Each round times
// each model for SECONDS_PER_ROUND (default 0.02), the order alternating from round to round.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ssm.hpp"

using nextick::SsmConfig;
using nextick::SsmModel;

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s BATCH ROUNDS [SECONDS_PER_ROUND]\n", argv[0]);
        return 2;
    }
    const int batch = std::atoi(argv[1]), rounds = std::atoi(argv[2]);
    const double round_s = argc > 3 ? std::atof(argv[3]) : 0.02;
    SsmConfig cfg;
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<std::vector<float>> data;
    SsmModel::TensorMap tensors;
    for (const auto& [name, shape] : SsmModel::tensor_shapes(cfg)) {
        size_t n = 1;
        for (size_t d : shape) n *= d;
        const float fan_in = shape.size() > 1 ? static_cast<float>(shape.back()) : 1.0f;
        std::vector<float> v(n);
        const bool is_a = name.size() > 2 && name.compare(name.size() - 2, 2, ".A") == 0;
        const bool is_norm = name.find("norm") != std::string::npos;
        for (float& x : v) x = is_a ? -(1.0f + static_cast<float>(rng() % 16)) : is_norm ? 1.0f + 0.1f * normal(rng)
                                                                                  : normal(rng) / std::sqrt(fan_in);
        data.push_back(std::move(v));
        tensors[name] = {shape, data.back().data()};
    }
    SsmModel old_model(cfg, tensors, batch), new_model(cfg, tensors, batch);
    old_model.set_kernel("avx512");
    new_model.set_kernel("avx512_256");
    std::vector<int32_t> slots(batch);
    for (int i = 0; i < batch; ++i) slots[i] = i;
    std::vector<float> x(static_cast<size_t>(batch) * cfg.n_features), out_old(batch * cfg.n_out), out_new(out_old.size());
    for (int step = 0; step < 30; ++step) {
        for (float& v : x) v = normal(rng);
        old_model.step(batch, slots.data(), x.data(), nullptr, out_old.data());
        new_model.step(batch, slots.data(), x.data(), nullptr, out_new.data());
        if (std::memcmp(out_old.data(), out_new.data(), out_old.size() * sizeof(float)) != 0) {
            std::printf("the two kernels give different bits at step %d\n", step);
            return 1;
        }
    }
    const int calls = std::max(1, static_cast<int>(round_s / (batch * 2e-6)));
    auto time_ns = [&](SsmModel& m, std::vector<float>& out) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int c = 0; c < calls; ++c) m.step(batch, slots.data(), x.data(), nullptr, out.data());
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls / batch * 1e9;
    };
    std::vector<double> t_old, t_new, ratio;
    for (int r = 0; r < rounds; ++r) {
        double a, b;
        if (r % 2) {
            a = time_ns(old_model, out_old);
            b = time_ns(new_model, out_new);
        } else {
            b = time_ns(new_model, out_new);
            a = time_ns(old_model, out_old);
        }
        t_old.push_back(a);
        t_new.push_back(b);
        ratio.push_back(b / a);
    }
    std::sort(t_old.begin(), t_old.end());
    std::sort(t_new.begin(), t_new.end());
    std::sort(ratio.begin(), ratio.end());
    const size_t mid = ratio.size() / 2, q1 = ratio.size() / 4, q3 = 3 * ratio.size() / 4;
    std::printf("batch %d, %d rounds: old min %.0f median %.0f ns, new min %.0f median %.0f ns per instrument; "
                "new/old median %.3f (quartiles %.3f-%.3f)\n",
                batch, rounds, t_old[0], t_old[mid], t_new[0], t_new[mid], ratio[mid], ratio[q1], ratio[q3]);
    return 0;
}
