// The host side of the CUDA backend that needs no CUDA: where the weights lie in SsmModel's arena
// (the device gets a copy of that arena, so the layout and the checks on the weights have one
// definition), the batch buckets, and the step driver that turns one ModelBackend::step call into
// launches. ssm_cuda.cu uses it with device memory and CUDA graphs; tests/cpp/cuda_emulate.cpp
// uses it with host memory and runs ssm_cuda_step.hpp's block function on the CPU, so everything
// here is checked on machines without a GPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../ssm.hpp"
#include "ssm_cuda_step.hpp"

namespace nextick {
namespace cuda {

constexpr size_t kAbsent = std::numeric_limits<size_t>::max();

// Offsets in floats from the start of the arena; kAbsent for what the kind does not have.
struct LayerOffsets {
    size_t norm_w = kAbsent, in_wt = kAbsent, conv_wt = kAbsent, conv_b = kAbsent, dt_bias = kAbsent, A = kAbsent,
           D = kAbsent, D_elem = kAbsent, gnorm_w = kAbsent, out_wt = kAbsent, dA = kAbsent, dB = kAbsent, C = kAbsent;
};

struct WeightImage {
    StepDims dims;
    size_t arena_floats = 0;
    size_t enc_wt = kAbsent, enc_b = kAbsent, norm_f = kAbsent, head_wt = kAbsent, head_b = kAbsent;
    std::vector<LayerOffsets> layers;
};

// The sizes and offsets of `model`'s arena (model.weight_arena(), weight_arena_size() floats).
WeightImage weight_image(const SsmModel& model);

// Pointers into an arena copied to f32 (every tensor as float) and, for the matrices, to mat (the
// same offsets, as W: float, or half_bits in the fp16 build of the weights).
template <class W>
std::vector<LayerWeights<W>> layer_weights(const WeightImage& img, const float* f32, const W* mat) {
    auto f = [&](size_t off) { return off == kAbsent ? nullptr : f32 + off; };
    auto m = [&](size_t off) { return off == kAbsent ? nullptr : mat + off; };
    std::vector<LayerWeights<W>> out;
    for (const LayerOffsets& o : img.layers) {
        LayerWeights<W> L;
        L.norm_w = f(o.norm_w), L.in_wt = m(o.in_wt), L.conv_wt = f(o.conv_wt), L.conv_b = f(o.conv_b);
        L.dt_bias = f(o.dt_bias), L.A = f(o.A), L.D = f(o.D), L.D_elem = f(o.D_elem), L.gnorm_w = f(o.gnorm_w);
        L.out_wt = m(o.out_wt), L.dA = f(o.dA), L.dB = f(o.dB), L.C = f(o.C);
        out.push_back(L);
    }
    return out;
}

// A launch's arguments but for its rows (n_rows, slots, reset, x, out) and rows_per_block.
template <class W>
StepArgs<W> step_args(const WeightImage& img, const float* f32, const W* mat, const LayerWeights<W>* layers,
                      float* pool) {
    StepArgs<W> a;
    a.d = img.dims;
    a.enc_wt = mat + img.enc_wt;
    a.enc_b = f32 + img.enc_b;
    a.norm_f = f32 + img.norm_f;
    a.head_wt = mat + img.head_wt;
    a.head_b = f32 + img.head_b;
    a.layers = layers;
    a.pool = pool;
    return a;
}

// Rows of a launch of n rows, padded: 1, 16, 256, 1024, then multiples of 1024. One CUDA graph is
// captured per bucket, so the buckets are few; the padding costs little, since a block whose rows
// are all padding returns at once.
int bucket_rows(int n);

// Most rows per block for which block_layout fits in smem_bytes of shared memory, at most
// `wanted`; 0 when not even one row fits.
int rows_per_block_within(const StepDims& d, int wanted, size_t smem_bytes);

// The buffers a launch reads its rows from and writes their outputs to (mapped pinned host memory
// on a GPU), `rows` rows each.
struct IoBuffers {
    int32_t* slots = nullptr;
    uint8_t* reset = nullptr;
    float* x = nullptr;
    float* out = nullptr;
    int rows = 0;
};

// ModelBackend::step in launches. The slots are checked first (std::out_of_range before anything
// is written), padding rows get NaN on the host and never reach the device, and the other rows go
// in waves: wave k holds each slot's k-th row of the batch, in row order. Rows of a wave have
// distinct slots, so the device may run them at once, and a slot's rows run in batch order, so the
// result is the row-by-row result of the contract (a batch without repeated slots, the engine's
// case, is one wave). Each wave is copied into the IoBuffers with slot -1 up to its bucket, and
// launch(bucket) must return with the outputs in io.out. Scratch grows only when a call brings
// more rows or slots than any before.
class StepDriver {
public:
    template <class Launch>
    void step(const char* who, int n_slots, int n_features, int n_out, int n_rows, const int32_t* slots,
              const float* x, const uint8_t* reset, float* out, const IoBuffers& io, Launch&& launch) {
        plan(who, n_slots, n_out, n_rows, slots, out);
        const size_t F = static_cast<size_t>(n_features), O = static_cast<size_t>(n_out);
        for (int w = 0; w < waves_; ++w) {
            const int begin = wave_start_[w], n = wave_start_[w + 1] - begin, bucket = bucket_rows(n);
            if (bucket > io.rows)
                throw std::logic_error(std::string(who) + ": a wave of " + std::to_string(n) + " rows needs " +
                                       std::to_string(bucket) + " rows of buffers, has " + std::to_string(io.rows) +
                                       " (internal error)");
            // The engine's batches (every row a distinct slot) are copied whole, not row by row.
            const bool whole = n == n_rows;
            if (whole) {
                std::memcpy(io.slots, slots, n * sizeof(int32_t));
                if (reset)
                    std::memcpy(io.reset, reset, n);
                else
                    std::memset(io.reset, 0, n);
                std::memcpy(io.x, x, n * F * sizeof(float));
            } else {
                for (int j = 0; j < n; ++j) {
                    const int row = order_[begin + j];
                    io.slots[j] = slots[row];
                    io.reset[j] = reset && reset[row] ? 1 : 0;
                    std::memcpy(io.x + j * F, x + row * F, F * sizeof(float));
                }
            }
            for (int j = n; j < bucket; ++j) io.slots[j] = -1;
            launch(bucket);
            if (whole)
                std::memcpy(out, io.out, n * O * sizeof(float));
            else
                for (int j = 0; j < n; ++j) std::memcpy(out + order_[begin + j] * O, io.out + j * O, O * sizeof(float));
        }
    }

    int waves() const { return waves_; }  // launches made by the last step

private:
    void plan(const char* who, int n_slots, int n_out, int n_rows, const int32_t* slots, float* out);

    int waves_ = 0;
    std::vector<int> seen_;        // per slot: its rows so far in this call (zero between calls)
    std::vector<int> wave_of_;     // per row
    std::vector<int> order_;       // rows by wave, in row order within a wave
    std::vector<int> wave_start_;  // wave w is order_[wave_start_[w] .. wave_start_[w+1])
};

}  // namespace cuda
}  // namespace nextick
