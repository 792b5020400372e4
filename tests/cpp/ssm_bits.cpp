// Drives csrc/ssm.cpp through awkward batches and prints one hash per config of every output and
// final state bit. tests/test_ssm_isa.py compiles it for several instruction sets and requires the
// same hashes: the kernel's promise that native and portable builds compute the same bits.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ssm.hpp"
#include "ssm_test_model.hpp"

using nextick::SsmConfig;
using nextick::SsmKind;
using nextick::SsmModel;

namespace {

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
    const SsmModel::TensorMap tensors = nextick::test::random_tensors(c, store);
    const int n_slots = 37;
    SsmModel model(c, tensors, n_slots);
    Hash hash;
    const int batches[] = {1, 3, 4, 5, 16, 37, 64, 2, 1, 9};
    for (int call = 0; call < 60; ++call) {
        const int n = batches[call % 10];
        nextick::test::Batch b = nextick::test::awkward_batch(n, n_slots, c.n_features);
        std::vector<float> out(static_cast<size_t>(n) * c.n_out);
        model.step(n, b.slots.data(), b.x.data(), b.reset.data(), out.data());
        for (int i = 0; i < n; ++i)
            if (b.slots[i] >= 0) hash.add(&out[static_cast<size_t>(i) * c.n_out], c.n_out);
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
    for (const auto& [name, config] : nextick::test::test_configs())
        std::printf("%s %016llx\n", name.c_str(), static_cast<unsigned long long>(run(config)));
}
