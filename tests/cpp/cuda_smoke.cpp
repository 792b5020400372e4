// Links the CUDA backend (csrc/cuda/ssm_cuda.cu, compiled by nvcc) with the CPU core and runs what
// runs on this machine. Without a GPU: device_count() is 0, the constructor checks its arguments
// (the same errors as SsmModel) before it looks for a device, and then refuses with a
// std::runtime_error. With a GPU: the default, odd and s4d configs step awkward batches (padding,
// repeated slots, resets) on the device and on the CPU kernel, and every output and final state
// must be the same bits. Prints what it did; exits 1 on a failure.
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/ssm_cuda.hpp"
#include "ssm.hpp"
#include "ssm_test_model.hpp"

using nextick::CudaSsmModel;
using nextick::SsmConfig;
using nextick::SsmModel;

namespace {

template <class E, class F>
bool throws(F&& f, const char* want) {
    try {
        f();
    } catch (const E& e) {
        const bool ok = std::strstr(e.what(), want) != nullptr;
        std::printf("%s: %s\n", ok ? "refused" : "FAIL wrong message", e.what());
        return ok;
    }
    std::printf("FAIL no exception (expected one containing \"%s\")\n", want);
    return false;
}

bool same_bits_on_the_device(const std::string& name, const SsmConfig& c) {
    std::vector<std::vector<float>> store;
    const SsmModel::TensorMap tensors = nextick::test::random_tensors(c, store);
    const int n_slots = 37;
    SsmModel ref(c, tensors, n_slots);
    CudaSsmModel gpu(c, tensors, n_slots);
    int differ = 0;
    for (int call = 0; call < 40; ++call) {
        const int n = (call * 7) % 65 + 1;
        nextick::test::Batch b = nextick::test::awkward_batch(n, n_slots, c.n_features);
        std::vector<float> a(static_cast<size_t>(n) * c.n_out), g(a.size());
        ref.step(n, b.slots.data(), b.x.data(), b.reset.data(), a.data());
        gpu.step(n, b.slots.data(), b.x.data(), b.reset.data(), g.data());
        differ += std::memcmp(a.data(), g.data(), a.size() * sizeof(float)) != 0;
    }
    std::vector<float> sa(ref.state_size()), sg(gpu.state_size());
    for (int s = 0; s < n_slots; ++s) {
        ref.get_state(s, sa.data());
        gpu.get_state(s, sg.data());
        differ += std::memcmp(sa.data(), sg.data(), sa.size() * sizeof(float)) != 0;
    }
    std::printf("%s %s on %s: %d of 40 calls and 37 final states differ from the CPU kernel\n", differ ? "FAIL" : "ok",
                name.c_str(), gpu.device_name().c_str(), differ);
    return differ == 0;
}

}  // namespace

int main() {
    const int devices = CudaSsmModel::device_count();
    std::printf("devices %d\n", devices);
    const SsmConfig c;
    std::vector<std::vector<float>> store;
    const SsmModel::TensorMap tensors = nextick::test::random_tensors(c, store);
    bool ok = throws<std::invalid_argument>([&] { CudaSsmModel(c, tensors, 4, "fp8"); }, "precision must be");
    ok = throws<std::invalid_argument>([&] { CudaSsmModel(c, tensors, 4, "fp32", 0, 33); }, "rows_per_block") && ok;
    SsmModel::TensorMap missing = tensors;
    missing.erase("head.bias");
    ok = throws<std::invalid_argument>([&] { CudaSsmModel(c, missing, 4); }, "missing tensor 'head.bias'") && ok;
    if (devices == 0) {
        ok = throws<std::runtime_error>([&] { CudaSsmModel(c, tensors, 4); }, "no CUDA device") && ok;
    } else {
        for (const auto& [name, config] : nextick::test::test_configs()) ok = same_bits_on_the_device(name, config) && ok;
    }
    std::printf("cuda_smoke: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
