// Drives csrc/ssm.cpp through awkward batches and prints one hash per config of every output and
// final state bit. tests/test_ssm_isa.py compiles it for several instruction sets and requires the
// same hashes: the kernel's promise that native and portable builds compute the same bits.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ssm.hpp"

using nextick::SsmConfig;
using nextick::SsmKind;
using nextick::SsmModel;

namespace {

uint64_t lcg_state = 0x9e3779b97f4a7c15ull;
float uniform() {  // [-1, 1), the same sequence on every build
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<int32_t>(lcg_state >> 33) - (1 << 30)) / static_cast<float>(1 << 30);
}

struct Hash {
    uint64_t h = 1469598103934665603ull;
    void add(const float* p, size_t n) {
        for (size_t i = 0; i < n; ++i) {
            uint32_t u;
            std::memcpy(&u, p + i, 4);
            h = (h ^ u) * 1099511628211ull;
        }
    }
};

uint64_t run(const SsmConfig& c) {
    std::vector<std::vector<float>> store;
    SsmModel::TensorMap tensors;
    for (const auto& [name, shape] : SsmModel::tensor_shapes(c)) {
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
    const int n_slots = 37;
    SsmModel model(c, tensors, n_slots);
    Hash hash;
    const int batches[] = {1, 3, 4, 5, 16, 37, 64, 2, 1, 9};
    for (int call = 0; call < 60; ++call) {
        const int n = batches[call % 10];
        std::vector<int32_t> slots(n);
        std::vector<uint8_t> reset(n);
        std::vector<float> x(static_cast<size_t>(n) * c.n_features), out(static_cast<size_t>(n) * c.n_out);
        for (int i = 0; i < n; ++i) {
            const float r = uniform();
            slots[i] = r < -0.9f ? -1 : static_cast<int32_t>((uniform() + 1.0f) * 0.5f * n_slots) % n_slots;
            reset[i] = uniform() > 0.9f;
        }
        for (float& v : x) v = 3.0f * uniform();
        model.step(n, slots.data(), x.data(), reset.data(), out.data());
        for (int i = 0; i < n; ++i)
            if (slots[i] >= 0) hash.add(&out[static_cast<size_t>(i) * c.n_out], c.n_out);
    }
    for (int l = 0; l < c.n_layers; ++l) {
        const auto s = model.ssm_state(l);
        hash.add(s.data, s.shape[0] * s.strides[0]);
        if (c.kind == SsmKind::kMamba2) {
            const auto w = model.conv_state(l);
            hash.add(w.data, w.shape[0] * w.strides[0]);
        }
    }
    return hash.h;
}

}  // namespace

int main() {
    SsmConfig dflt;  // DESIGN.md's default
    SsmConfig odd;   // generic paths: d_conv != 4, two groups, head width not a multiple of 16
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
    std::printf("default %016llx\n", static_cast<unsigned long long>(run(dflt)));
    std::printf("odd %016llx\n", static_cast<unsigned long long>(run(odd)));
    std::printf("s4d %016llx\n", static_cast<unsigned long long>(run(s4d)));
}
