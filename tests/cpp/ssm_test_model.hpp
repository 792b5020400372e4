// Test models for the C++ drivers (ssm_bits.cpp, cuda_emulate.cpp): a deterministic generator, the
// weights it draws for a config, and the configs whose code paths differ.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ssm.hpp"

namespace nextick {
namespace test {

// [-1, 1), the same sequence on every build.
inline float uniform() {
    static uint64_t state = 0x9e3779b97f4a7c15ull;
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<int32_t>(state >> 33) - (1 << 30)) / static_cast<float>(1 << 30);
}

// Weights for every tensor of `c`: norms near 1, decays (A < 0, s4d dA) in (0.1, 0.9), the rest
// small; the data lives in `store`, which must outlive the map.
inline SsmModel::TensorMap random_tensors(const SsmConfig& c, std::vector<std::vector<float>>& store) {
    SsmModel::TensorMap tensors;
    const auto shapes = SsmModel::tensor_shapes(c);
    store.reserve(store.size() + shapes.size());
    for (const auto& [name, shape] : shapes) {
        size_t n = 1;
        for (size_t d : shape) n *= d;
        store.emplace_back(n);
        const bool norm = name.find("norm") != std::string::npos;
        const bool decay = name.find(".A") != std::string::npos || name.find(".dA") != std::string::npos;
        for (float& v : store.back()) v = norm ? 1.0f + 0.1f * uniform() : decay ? 0.5f + 0.4f * uniform() : 0.3f * uniform();
        if (name.find(".A") != std::string::npos)
            for (float& v : store.back()) v = -v;
        tensors[name] = {shape, store.back().data()};
    }
    return tensors;
}

// A batch of n rows over n_slots slots with about 10% padding rows (slot -1), repeated slots (drawn
// with replacement) and about 10% resets; features in [-3, 3).
struct Batch {
    std::vector<int32_t> slots;
    std::vector<uint8_t> reset;
    std::vector<float> x;
};

inline Batch awkward_batch(int n, int n_slots, int n_features) {
    Batch b{std::vector<int32_t>(n), std::vector<uint8_t>(n), std::vector<float>(static_cast<size_t>(n) * n_features)};
    for (int i = 0; i < n; ++i) {
        const float r = uniform();
        b.slots[i] = r < -0.9f ? -1 : static_cast<int32_t>((uniform() + 1.0f) * 0.5f * n_slots) % n_slots;
        b.reset[i] = uniform() > 0.9f;
    }
    for (float& v : b.x) v = 3.0f * uniform();
    return b;
}

// DESIGN.md's default; "odd": the generic paths (d_conv != 4, two groups, a head width that is not
// a multiple of 16, several outputs); s4d.
inline std::vector<std::pair<std::string, SsmConfig>> test_configs() {
    SsmConfig odd;
    odd.d_model = 24;
    odd.d_inner = 36;
    odd.headdim = 9;
    odd.nheads = 4;
    odd.ngroups = 2;
    odd.d_state = 5;
    odd.d_conv = 3;
    odd.n_out = 3;
    SsmConfig s4d;
    s4d.kind = SsmKind::kS4D;
    return {{"default", SsmConfig{}}, {"odd", odd}, {"s4d", s4d}};
}

}  // namespace test
}  // namespace nextick
