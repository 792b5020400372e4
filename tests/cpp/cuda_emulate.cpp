// The CUDA backend's step, run on the CPU: csrc/cuda/ssm_cuda_host.hpp's driver (slot checks,
// padding, waves for repeated slots, buckets) with host buffers in place of mapped pinned memory,
// and csrc/cuda/ssm_cuda_step.hpp's block function for every block of each launch, either one host
// thread per block (its barriers are no-ops) or several host threads per block meeting at a real
// barrier, as a GPU block's threads do. Every output and final state must be the CPU kernel's bits
// (csrc/ssm.cpp) on awkward batches, for each config whose code paths differ, in fp32 and in fp16
// (whose reference is the CPU kernel on the matrices rounded to binary16). What this cannot check
// is the GPU itself: nvcc's code, the launch, graphs and memory (tests/test_cuda.py, on a GPU).
// Prints one line per check and "cuda_emulate: N checks, 0 failures"; exits 1 on a failure.
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cuda/ssm_cuda_host.hpp"
#include "ssm.hpp"
#include "ssm_test_model.hpp"

using nextick::SsmConfig;
using nextick::SsmModel;
namespace cuda = nextick::cuda;

namespace {

int checks = 0, failures = 0;

void check(bool ok, const std::string& what) {
    ++checks;
    if (!ok) {
        ++failures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

float via_half(float f) { return static_cast<float>(static_cast<_Float16>(f)); }

cuda::half_bits to_half_bits(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    cuda::half_bits b;
    std::memcpy(&b, &h, sizeof b);
    return b;
}

// The host threads that play one block's threads meet here at each sync().
class Barrier {
public:
    explicit Barrier(int n) : n_(n) {}
    void operator()() {
        std::unique_lock<std::mutex> lock(mu_);
        const long gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
            return;
        }
        cv_.wait(lock, [&] { return gen_ != gen; });
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    int n_, count_ = 0;
    long gen_ = 0;
};

struct NoSync {
    void operator()() const {}
};

// CudaSsmModel with host memory for device memory: the same weight image, driver and block
// function; launch(bucket) runs the grid's blocks one after another.
template <class W>
class Emulated {
public:
    Emulated(const SsmConfig& c, const SsmModel::TensorMap& tensors, int n_slots, int rows_per_block, int threads)
        : layout_(c, tensors, 0), img_(cuda::weight_image(layout_)), n_slots_(n_slots), R_(rows_per_block),
          threads_(threads) {
        const float* arena = layout_.weight_arena();
        f32_.assign(arena, arena + img_.arena_floats);
        for (float v : f32_) {
            if constexpr (sizeof(W) == 2)
                mat_.push_back(to_half_bits(v));
            else
                mat_.push_back(v);
        }
        layers_ = cuda::layer_weights<W>(img_, f32_.data(), mat_.data());
        pool_.assign(static_cast<size_t>(n_slots) * img_.dims.state_size, 0.0f);
        const int cap = cuda::bucket_rows(n_slots);
        slots_.resize(cap), reset_.resize(cap);
        x_.resize(static_cast<size_t>(cap) * c.n_features), out_.resize(static_cast<size_t>(cap) * c.n_out);
        io_ = {slots_.data(), reset_.data(), x_.data(), out_.data(), cap};
    }

    void step(int n, const int32_t* slots, const float* x, const uint8_t* reset, float* out) {
        const cuda::StepDims& d = img_.dims;
        driver_.step("Emulated", n_slots_, d.F, d.n_out, n, slots, x, reset, out, io_, [&](int bucket) { launch(bucket); });
    }

    const float* state(int slot) const { return pool_.data() + static_cast<size_t>(slot) * img_.dims.state_size; }
    const std::vector<float>& pool() const { return pool_; }
    int waves() const { return driver_.waves(); }
    int blocks_launched() const { return blocks_; }

private:
    void launch(int bucket) {
        cuda::StepArgs<W> a = cuda::step_args(img_, f32_.data(), mat_.data(), layers_.data(), pool_.data());
        a.n_rows = bucket;
        a.rows_per_block = R_;
        a.slots = io_.slots, a.reset = io_.reset, a.x = io_.x, a.out = io_.out;
        const int blocks = (bucket + R_ - 1) / R_;
        blocks_ += blocks;
        // NaN in every cell of shared memory before each block: a read of a cell the block has not
        // written shows up as a NaN output.
        const size_t smem_floats = cuda::block_layout(a.d, R_).floats;
        const float nan = std::numeric_limits<float>::quiet_NaN();
        if (threads_ == 1) {
            NoSync sync;
            for (int b = 0; b < blocks; ++b) {
                smem_.assign(smem_floats, nan);
                cuda::step_block(a, b, 0, 1, smem_.data(), sync);
            }
            return;
        }
        Barrier barrier(threads_);
        std::vector<std::thread> team;
        for (int t = 0; t < threads_; ++t)
            team.emplace_back([&, t] {
                for (int b = 0; b < blocks; ++b) {
                    if (t == 0) smem_.assign(smem_floats, nan);
                    barrier();
                    cuda::step_block(a, b, t, threads_, smem_.data(), barrier);
                    barrier();
                }
            });
        for (auto& th : team) th.join();
    }

    SsmModel layout_;  // no slots: the validated weights in the kernel's layout
    cuda::WeightImage img_;
    int n_slots_, R_, threads_, blocks_ = 0;
    std::vector<float> f32_;
    std::vector<W> mat_;
    std::vector<cuda::LayerWeights<W>> layers_;
    std::vector<float> pool_, smem_;
    std::vector<int32_t> slots_;
    std::vector<uint8_t> reset_;
    std::vector<float> x_, out_;
    cuda::IoBuffers io_;
    cuda::StepDriver driver_;
};

bool is_matrix(const std::string& name) {
    auto ends = [&](const char* s) {
        const size_t n = std::strlen(s);
        return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
    };
    return name == "encoder.weight" || name == "head.weight" || ends(".in_proj.weight") || ends(".out_proj.weight");
}

// Every output and final state of `emu` against the CPU kernel `ref` over the same batches.
template <class W>
void compare(const std::string& what, const SsmConfig& c, SsmModel& ref, Emulated<W>& emu, int n_slots,
             const std::vector<int>& sizes, int calls) {
    std::vector<float> ref_state(ref.state_size());
    int max_waves = 0, mismatched_rows = 0;
    for (int call = 0; call < calls; ++call) {
        const int n = sizes[call % sizes.size()];
        nextick::test::Batch b = nextick::test::awkward_batch(n, n_slots, c.n_features);
        std::vector<float> out_ref(static_cast<size_t>(n) * c.n_out, 7.0f), out_emu(out_ref.size(), 8.0f);
        ref.step(n, b.slots.data(), b.x.data(), b.reset.data(), out_ref.data());
        emu.step(n, b.slots.data(), b.x.data(), b.reset.data(), out_emu.data());
        max_waves = std::max(max_waves, emu.waves());
        for (size_t i = 0; i < out_ref.size(); ++i) mismatched_rows += bits(out_ref[i]) != bits(out_emu[i]);
    }
    int mismatched_states = 0;
    for (int s = 0; s < n_slots; ++s) {
        ref.get_state(s, ref_state.data());
        mismatched_states += std::memcmp(ref_state.data(), emu.state(s), ref_state.size() * sizeof(float)) != 0;
    }
    check(mismatched_rows == 0, what + ": " + std::to_string(mismatched_rows) + " output values differ from the CPU kernel");
    check(mismatched_states == 0, what + ": " + std::to_string(mismatched_states) + " slots' final states differ");
    std::printf("ran %s: %d calls, up to %d waves a call, %d blocks\n", what.c_str(), calls, max_waves, emu.blocks_launched());
}

template <class W>
void run_config(const std::string& name, const SsmConfig& c, const char* precision, int rows_per_block, int threads) {
    std::vector<std::vector<float>> store;
    const SsmModel::TensorMap tensors = nextick::test::random_tensors(c, store);
    // fp16's reference: the CPU kernel on the matrices as the device reads them.
    SsmModel::TensorMap ref_tensors = tensors;
    std::vector<std::vector<float>> rounded;
    rounded.reserve(tensors.size());
    if (sizeof(W) == 2)
        for (auto& [tname, t] : ref_tensors) {
            if (!is_matrix(tname)) continue;
            size_t n = 1;
            for (size_t d : t.first) n *= d;
            rounded.emplace_back(t.second, t.second + n);
            for (float& v : rounded.back()) v = via_half(v);
            t.second = rounded.back().data();
        }
    const int n_slots = 37;
    SsmModel ref(c, ref_tensors, n_slots);
    Emulated<W> emu(c, tensors, n_slots, rows_per_block, threads);
    const std::string what = name + " " + precision + " rows_per_block=" + std::to_string(rows_per_block) +
                             " threads=" + std::to_string(threads);
    compare(what, c, ref, emu, n_slots, {1, 3, 4, 5, 16, 37, 64, 2, 1, 9}, 40);

    // A slot past the pool is refused before anything is written.
    const std::vector<float> before = emu.pool();
    std::vector<int32_t> slots = {0, n_slots};
    std::vector<uint8_t> reset = {1, 0};
    std::vector<float> x(2 * static_cast<size_t>(c.n_features), 1.0f), out(2 * static_cast<size_t>(c.n_out), 5.0f);
    bool threw = false;
    try {
        emu.step(2, slots.data(), x.data(), reset.data(), out.data());
    } catch (const std::out_of_range&) {
        threw = true;
    }
    bool untouched = std::memcmp(emu.pool().data(), before.data(), before.size() * sizeof(float)) == 0;
    for (float v : out) untouched = untouched && v == 5.0f;
    check(threw && untouched, what + ": a slot >= n_slots must throw std::out_of_range before any write");
}

// Launches over several tiles and the large buckets: a pool of 1,100 slots, every slot each step.
void run_large() {
    const SsmConfig c;
    std::vector<std::vector<float>> store;
    const SsmModel::TensorMap tensors = nextick::test::random_tensors(c, store);
    const int n_slots = 1100;
    SsmModel ref(c, tensors, n_slots);
    Emulated<float> emu(c, tensors, n_slots, 8, 1);
    std::vector<float> ref_state(ref.state_size());
    int mismatches = 0;
    for (int t = 0; t < 3; ++t) {
        std::vector<int32_t> slots(n_slots);
        std::vector<uint8_t> reset(n_slots);
        for (int i = 0; i < n_slots; ++i) {
            slots[i] = (i * 7 + t) % n_slots;  // a permutation: one wave, bucket 2048
            reset[i] = t == 0 || (i % 13 == t);
        }
        std::vector<float> x(static_cast<size_t>(n_slots) * c.n_features);
        for (float& v : x) v = 3.0f * nextick::test::uniform();
        std::vector<float> out_ref(n_slots), out_emu(n_slots);
        ref.step(n_slots, slots.data(), x.data(), reset.data(), out_ref.data());
        emu.step(n_slots, slots.data(), x.data(), reset.data(), out_emu.data());
        mismatches += std::memcmp(out_ref.data(), out_emu.data(), out_ref.size() * sizeof(float)) != 0;
        check(emu.waves() == 1, "large: a batch of distinct slots is one wave");
    }
    for (int s = 0; s < n_slots; ++s) {
        ref.get_state(s, ref_state.data());
        mismatches += std::memcmp(ref_state.data(), emu.state(s), ref_state.size() * sizeof(float)) != 0;
    }
    check(mismatches == 0, "large: 1,100 slots in buckets of 2,048 differ from the CPU kernel");
    std::printf("ran large: 1100 slots x 3 steps, %d blocks\n", emu.blocks_launched());
}

void check_half_conversion() {
    int wrong = 0;
    for (uint32_t b = 0; b < 65536; ++b) {
        _Float16 h;
        const uint16_t b16 = static_cast<uint16_t>(b);
        std::memcpy(&h, &b16, sizeof h);
        const float want = static_cast<float>(h), got = cuda::half_to_float(b16);
        wrong += std::isnan(want) ? !std::isnan(got) : bits(want) != bits(got);
    }
    check(wrong == 0, "half_to_float differs from _Float16 on " + std::to_string(wrong) + " of 65536 values");
}

void check_buckets_and_waves() {
    bool ok = cuda::bucket_rows(1) == 1 && cuda::bucket_rows(2) == 16 && cuda::bucket_rows(16) == 16 &&
              cuda::bucket_rows(17) == 256 && cuda::bucket_rows(257) == 1024 && cuda::bucket_rows(1025) == 2048 &&
              cuda::bucket_rows(10000) == 10240;
    for (int n = 1; n <= 20000 && ok; ++n) ok = cuda::bucket_rows(n) >= n && cuda::bucket_rows(n) >= cuda::bucket_rows(n - 1);
    check(ok, "bucket_rows: 1, 16, 256, 1024, then multiples of 1024, never fewer than the rows");

    const SsmConfig c;
    cuda::StepDims d;
    {
        std::vector<std::vector<float>> store;
        const SsmModel m(c, nextick::test::random_tensors(c, store), 0);
        d = cuda::weight_image(m).dims;
    }
    const size_t per_row = cuda::block_layout(d, 2).floats - cuda::block_layout(d, 1).floats;
    check(cuda::rows_per_block_within(d, 8, 48 * 1024) == 8, "rows_per_block_within: 8 rows of the default model fit 48 KB");
    check(cuda::rows_per_block_within(d, 8, cuda::block_layout(d, 3).floats * sizeof(float)) == 3,
          "rows_per_block_within: exactly 3 rows' worth of shared memory gives 3");
    check(cuda::rows_per_block_within(d, 8, per_row) == 0, "rows_per_block_within: 0 when not one row fits");

    // Waves: slot 2 three times, slot 5 twice, padding rows between.
    struct Count {
        std::vector<std::vector<int32_t>> launches;
    } seen;
    std::vector<int32_t> slots_store(16), launch_slots;
    std::vector<uint8_t> reset_store(16);
    std::vector<float> x_store(16 * 5), out_store(16);
    cuda::IoBuffers io{slots_store.data(), reset_store.data(), x_store.data(), out_store.data(), 16};
    cuda::StepDriver driver;
    const std::vector<int32_t> slots = {2, -1, 5, 2, 7, 2, -1, 5};
    std::vector<float> x(slots.size() * 5), out(slots.size(), 0.0f);
    for (size_t i = 0; i < slots.size(); ++i) x[i * 5] = static_cast<float>(i);
    driver.step("driver", 8, 5, 1, static_cast<int>(slots.size()), slots.data(), x.data(), nullptr, out.data(), io,
                [&](int bucket) {
                    std::vector<int32_t> s(io.slots, io.slots + bucket);
                    seen.launches.push_back(s);
                    for (int j = 0; j < bucket; ++j) io.out[j] = io.x[j * 5];  // echo the row index back
                });
    const std::vector<std::vector<int32_t>> want = {
        {2, 5, 7, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1},
        {2, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1},
        {2},
    };
    check(driver.waves() == 3 && seen.launches == want, "waves: each slot's k-th row in wave k, in row order, padded to the bucket");
    bool rows_back = std::isnan(out[1]) && std::isnan(out[6]);
    for (size_t i = 0; i < slots.size(); ++i)
        if (slots[i] >= 0) rows_back = rows_back && out[i] == static_cast<float>(i);
    check(rows_back, "waves: every output lands in its own row, padding rows are NaN");
}

}  // namespace

int main() {
    check_half_conversion();
    check_buckets_and_waves();
    for (const auto& [name, c] : nextick::test::test_configs()) {
        run_config<float>(name, c, "fp32", 8, 1);
        run_config<cuda::half_bits>(name, c, "fp16", 8, 1);
    }
    // Several host threads per block, odd splits: a phase that reads another thread's write
    // without a barrier between them, or a split that skips an item, shows up here.
    const auto configs = nextick::test::test_configs();
    run_config<float>("default", configs[0].second, "fp32", 3, 7);
    run_config<float>("odd", configs[1].second, "fp32", 5, 32);
    run_config<cuda::half_bits>("s4d", configs[2].second, "fp16", 2, 3);
    run_large();
    std::printf("cuda_emulate: %d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
