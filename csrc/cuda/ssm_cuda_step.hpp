// The CUDA step kernel's body: one block of rows through every layer, written once for nvcc (the
// device kernel in ssm_cuda.cu) and for a plain C++ compiler (tests/cpp/cuda_emulate.cpp runs it on
// the CPU, one block after another, so that its indexing and arithmetic are checked bit for bit
// against the CPU kernel on a machine without a GPU).
//
// Launch layout: a 1-D grid over tiles of rows_per_block rows of the launch (the batch bucket);
// inside a block every phase spreads its items over the block's threads, ggml-style (item = tid,
// tid + nth, ...): the matvecs over output columns (and groups of rows when the columns are fewer
// than the threads), the conv over rows x channels, the SSM update over rows x heads x headdim (as
// mamba's selective_state_update spreads it over its grid), rmsnorm's scale one thread per row. A
// barrier (sync) separates the phases; no phase reads what another thread writes in the same
// phase. Every output element is computed whole by one thread in the CPU kernel's order, so the
// result does not depend on the number of threads, on the rows per block, or on the other rows:
//   * matvecs: one accumulator per output, from the bias (or zero), k = 0..K-1;
//   * rmsnorm: the sum of squares in 16 interleaved lanes folded pairwise (ssm_kernel.cpp rms_inv);
//   * sum over d_state n = 0..N-1 from zero; conv taps k = 0..d_conv-1 from the bias;
//   * exp, softplus, silu from vmath.hpp, the same functions the CPU kernel calls.
// Built with --fmad=false (no contraction into fused multiply-adds), IEEE division and square root
// and no flush to zero, the fp32 step computes the CPU kernel's bits.
//
// Memory: weights are read from global memory (L2-resident: 236 KB for the default model, 123 KB
// with fp16 matrices), once per block for all its rows. A slot's state (the pool is slot-major,
// each slot state_size floats in get_state's order) is read and written in place by the one block
// that has its row; the host never launches two rows of the same slot together
// (ssm_cuda_host.hpp splits such batches into waves). Activations stay in shared memory. A reset row reads zeros instead of its
// stored state: every state element is rewritten by the step, so that is the CPU's zero-then-step.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define NEXTICK_HD __host__ __device__
#else
#define NEXTICK_HD
#endif
#if defined(__CUDA_ARCH__)
#define NEXTICK_UNROLL _Pragma("unroll")
#else
#define NEXTICK_UNROLL
#endif

#ifndef NEXTICK_VMATH_ISA
#define NEXTICK_VMATH_ISA cuda
#endif
#include "../vmath.hpp"
#include "../weight_panels.hpp"

namespace nextick {
namespace cuda {

// Most rows one block takes: a matvec item keeps one accumulator per row of its group in registers.
constexpr int kMaxRowsPerBlock = 32;

// Half-precision weights travel as their IEEE binary16 bits.
using half_bits = uint16_t;

// The model's sizes and the arena's layout (SsmPlan's leading dimensions, padded to 16 floats).
struct StepDims {
    int s4d = 0;  // 0: mamba2, 1: s4d
    int F = 0, dm = 0, di = 0, N = 0, nh = 0, hd = 0, G = 0, dc = 0, cd = 0, d_in = 0, n_out = 0, n_layers = 0;
    float eps = 0, softplus_threshold = 0;
    int ld_model = 0, ld_in = 0, ld_out = 0, ld_conv = 0, ld_inner = 0;
    size_t conv_slot = 0, ssm_slot = 0;  // floats per slot of one layer's conv window and ssm state
    size_t state_size = 0;               // floats per slot, all layers
};

// One layer's weights. W is float or half_bits for the matrices (in_proj, out_proj); the rest are
// float in either precision (mamba2 uses norm_w..out_wt, s4d norm_w, in_wt, dA, dB, C, D, out_wt).
template <class W>
struct LayerWeights {
    const float* norm_w = nullptr;
    const W* in_wt = nullptr;  // [d_model][ld_in] in panels (weight_panels.hpp)
    const float* conv_wt = nullptr;  // [d_conv][ld_conv]
    const float* conv_b = nullptr;
    const float* dt_bias = nullptr;
    const float* A = nullptr;
    const float* D = nullptr;       // s4d [d_inner]
    const float* D_elem = nullptr;  // mamba2: D[h] at every element h*headdim + p
    const float* gnorm_w = nullptr;
    const W* out_wt = nullptr;  // [d_inner][ld_model] in panels
    const float* dA = nullptr;  // s4d [N][ld_inner]
    const float* dB = nullptr;
    const float* C = nullptr;
};

// Everything one launch reads and writes. slots, reset, x and out hold n_rows rows (the bucket):
// rows with slot < 0 are padding and are neither read further nor written.
template <class W>
struct StepArgs {
    StepDims d;
    const W* enc_wt = nullptr;  // [F][ld_model] in panels
    const float* enc_b = nullptr;
    const float* norm_f = nullptr;
    const W* head_wt = nullptr;  // [d_model][ld_out] in panels
    const float* head_b = nullptr;
    const LayerWeights<W>* layers = nullptr;  // [n_layers]
    float* pool = nullptr;                    // [n_slots][state_size]
    int n_rows = 0;
    int rows_per_block = 1;
    const int32_t* slots = nullptr;
    const uint8_t* reset = nullptr;
    const float* x = nullptr;  // [n_rows][F]
    float* out = nullptr;      // [n_rows][n_out]
};

// Shared memory of one block, in floats from the start: per row the input features, the residual
// stream h, the normed input u, the in_proj output v, the conv output a (mamba2), the mixer output
// y; per row and head dt and exp(dt*A); per row rmsnorm's scale, slot and reset flag; the active
// rows' indices and their count (ints stored in float-sized cells).
struct BlockLayout {
    size_t x = 0, h = 0, u = 0, v = 0, a = 0, y = 0, dt = 0, da = 0, inv = 0, slot = 0, rst = 0, rows = 0, n_active = 0;
    size_t floats = 0;
};

NEXTICK_HD inline BlockLayout block_layout(const StepDims& d, int R) {
    BlockLayout L;
    const size_t r = static_cast<size_t>(R), heads = d.s4d ? 0 : static_cast<size_t>(d.nh);
    size_t o = 0;
    L.x = o, o += r * d.F;
    L.h = o, o += r * d.ld_model;
    L.u = o, o += r * d.ld_model;
    L.v = o, o += r * d.ld_in;
    L.a = o, o += d.s4d ? 0 : r * d.ld_conv;
    L.y = o, o += r * d.ld_inner;
    L.dt = o, o += r * heads;
    L.da = o, o += r * heads;
    L.inv = o, o += r;
    L.slot = o, o += r;
    L.rst = o, o += r;
    L.rows = o, o += r;
    L.n_active = o, o += 1;
    L.floats = o;
    return L;
}

NEXTICK_HD inline float half_to_float(half_bits b) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(b));
#else
    // Exact: every binary16 value is a float. Subnormals are man * 2^-24, a product of two exact
    // floats with an exact result.
    const uint32_t sign = static_cast<uint32_t>(b & 0x8000u) << 16, e = (b >> 10) & 0x1fu, man = b & 0x3ffu;
    if (e == 0) {
        const float f = static_cast<float>(man) * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    const uint32_t bits = sign | (e == 31 ? 0x7f800000u | (man << 13) : ((e + 112u) << 23) | (man << 13));
    return vm::from_bits(bits);
#endif
}

// A weight, read through the read-only cache on the device.
NEXTICK_HD inline float load_w(const float* p) {
#if defined(__CUDA_ARCH__)
    return __ldg(p);
#else
    return *p;
#endif
}

NEXTICK_HD inline float load_w(const half_bits* p) {
#if defined(__CUDA_ARCH__)
    return half_to_float(__ldg(reinterpret_cast<const unsigned short*>(p)));
#else
    return half_to_float(*p);
#endif
}

// 1 / sqrt(mean(v^2) + eps) in ssm_kernel.cpp rms_inv's order: lane l sums i = l, l+16, ... in
// ascending i, then lanes fold l += l+8, l+4, l+2, l+1.
NEXTICK_HD inline float rms_inv(const float* v, int n, float eps) {
    float lane[16] = {};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; ++l) lane[l] += v[i + l] * v[i + l];
    for (int l = 0; i + l < n; ++l) lane[l] += v[i + l] * v[i + l];
    for (int w2 = 8; w2 >= 1; w2 /= 2)
        for (int l = 0; l < w2; ++l) lane[l] += lane[l + w2];
    return 1.0f / sqrtf(lane[0] / static_cast<float>(n) + eps);
}

// y[q][j] = init[j] (or 0) + sum_k W[k][j] * u[q][k] (W in panels: weight_panels.hpp), k ascending, for j < n_cols and the nb
// rows of the block; with add, y[q][j] = y[q][j] + that sum (the residual: the sum first, as the
// CPU kernel adds out_proj's product). Output row q is y + q*y_ld, or y + out_rows[q]*y_ld.
// An item is one column for a group of rows, so that each weight is loaded once per group; the
// groups are as large as the threads allow (all rows when the columns alone occupy the block).
template <class W>
NEXTICK_HD void matvec(const W* wt, int n_cols, int K, const float* u, size_t u_ld, int nb, const float* init,
                       float* y, size_t y_ld, const int* out_rows, bool add, int tid, int nth) {
    int groups = nth / n_cols;
    groups = groups < 1 ? 1 : groups > nb ? nb : groups;
    const int per_group = (nb + groups - 1) / groups;
    for (int item = tid; item < n_cols * groups; item += nth) {
        const int j = item % n_cols, q0 = item / n_cols * per_group;
        const int cnt = nb - q0 < per_group ? nb - q0 : per_group;
        float acc[kMaxRowsPerBlock];
        const float a0 = init ? init[j] : 0.0f;
        NEXTICK_UNROLL
        for (int q = 0; q < kMaxRowsPerBlock; ++q) acc[q] = a0;
        for (int k = 0; k < K; ++k) {
            const float w = load_w(wt + panel_at(static_cast<size_t>(K), static_cast<size_t>(k), static_cast<size_t>(j)));
            NEXTICK_UNROLL
            for (int q = 0; q < kMaxRowsPerBlock; ++q)
                if (q < cnt) acc[q] += w * u[static_cast<size_t>(q0 + q) * u_ld + k];
        }
        NEXTICK_UNROLL
        for (int q = 0; q < kMaxRowsPerBlock; ++q)
            if (q < cnt) {
                float* dst = y + (out_rows ? static_cast<size_t>(out_rows[q0 + q]) : static_cast<size_t>(q0 + q)) * y_ld + j;
                *dst = add ? *dst + acc[q] : acc[q];
            }
    }
}

// out[q][j] = (v[q][j] * inv[q]) * w[j]: rmsnorm's second half (out may be v). Then sync.
template <class Sync>
NEXTICK_HD void rmsnorm_rows(float* v, size_t ld, int n, int nb, float eps, const float* w, float* out, float* inv,
                             int tid, int nth, Sync& sync) {
    for (int q = tid; q < nb; q += nth) inv[q] = rms_inv(v + static_cast<size_t>(q) * ld, n, eps);
    sync();
    for (int item = tid; item < nb * n; item += nth) {
        const int q = item / n, j = item % n;
        out[static_cast<size_t>(q) * ld + j] = (v[static_cast<size_t>(q) * ld + j] * inv[q]) * w[j];
    }
    sync();
}

// One block of a launch: rows block*R .. block*R + R - 1 (those < n_rows with slot >= 0) through
// every layer. tid in [0, nth); sync() is a barrier of the block's nth threads (a no-op when one
// host thread plays the whole block). smem holds block_layout(d, R).floats floats.
template <class W, class Sync>
NEXTICK_HD void step_block(const StepArgs<W>& A, int block, int tid, int nth, float* smem, Sync& sync) {
    const StepDims& d = A.d;
    const int R = A.rows_per_block;
    const BlockLayout L = block_layout(d, R);
    int* rows = reinterpret_cast<int*>(smem + L.rows);
    int* n_active = reinterpret_cast<int*>(smem + L.n_active);
    int* slot = reinterpret_cast<int*>(smem + L.slot);
    int* rst = reinterpret_cast<int*>(smem + L.rst);
    float* xs = smem + L.x;
    float* h = smem + L.h;
    float* u = smem + L.u;
    float* v = smem + L.v;
    float* a = smem + L.a;
    float* y = smem + L.y;
    float* sdt = smem + L.dt;
    float* sda = smem + L.da;
    float* inv = smem + L.inv;

    // The tile's inputs into shared memory, all rows at once (they may live in mapped host memory,
    // where each read is a bus round trip: one round trip for the whole tile), then the rows with a
    // slot moved to the front, in order.
    for (int q = tid; q < R; q += nth) {
        const int row = block * R + q;
        slot[q] = row < A.n_rows ? A.slots[row] : -1;
        rst[q] = row < A.n_rows && A.reset[row] != 0;
    }
    for (int item = tid; item < R * d.F; item += nth) {
        const int row = block * R + item / d.F;
        xs[item] = row < A.n_rows ? A.x[static_cast<size_t>(row) * d.F + item % d.F] : 0.0f;
    }
    sync();
    if (tid == 0) {
        int nb = 0;
        for (int q = 0; q < R; ++q) {
            if (slot[q] < 0) continue;
            slot[nb] = slot[q], rst[nb] = rst[q], rows[nb] = block * R + q;
            for (int k = 0; k < d.F; ++k) xs[nb * d.F + k] = xs[q * d.F + k];
            ++nb;
        }
        *n_active = nb;
    }
    sync();
    const int nb = *n_active;
    if (nb == 0) return;  // the same for every thread of the block: no barrier is left waiting

    const size_t lm = d.ld_model, li = d.ld_in, lc = d.ld_conv, ly = d.ld_inner;
    matvec(A.enc_wt, d.dm, d.F, xs, d.F, nb, A.enc_b, h, lm, nullptr, false, tid, nth);
    sync();
    const size_t layer_floats = d.conv_slot + d.ssm_slot;
    for (int l = 0; l < d.n_layers; ++l) {
        const LayerWeights<W>& W_ = A.layers[l];
        rmsnorm_rows(h, lm, d.dm, nb, d.eps, W_.norm_w, u, inv, tid, nth, sync);
        matvec(W_.in_wt, d.d_in, d.dm, u, lm, nb, nullptr, v, li, nullptr, false, tid, nth);
        sync();
        if (!d.s4d) {
            // Causal conv + silu over rows x channels (the window shifts in the raw xBC), and each
            // row's heads: dt = softplus(dt_raw + dt_bias), exp(dt * A).
            const int conv_items = nb * d.cd;
            for (int item = tid; item < conv_items + nb * d.nh; item += nth) {
                if (item < conv_items) {
                    const int q = item / d.cd, ch = item % d.cd;
                    float* win = A.pool + static_cast<size_t>(slot[q]) * d.state_size + l * layer_floats + ch;
                    const float xin = v[q * li + d.di + ch];
                    float acc = W_.conv_b[ch];
                    for (int k = 0; k < d.dc - 1; ++k) {
                        const float s = rst[q] ? 0.0f : win[static_cast<size_t>(k) * d.cd];
                        acc += W_.conv_wt[static_cast<size_t>(k) * d.ld_conv + ch] * s;
                    }
                    acc += W_.conv_wt[static_cast<size_t>(d.dc - 1) * d.ld_conv + ch] * xin;
                    for (int k = 0; k + 1 < d.dc - 1; ++k)
                        win[static_cast<size_t>(k) * d.cd] = rst[q] ? 0.0f : win[static_cast<size_t>(k + 1) * d.cd];
                    if (d.dc > 1) win[static_cast<size_t>(d.dc - 2) * d.cd] = xin;
                    a[q * lc + ch] = vm::silu(acc);
                } else {
                    const int q = (item - conv_items) / d.nh, hh = (item - conv_items) % d.nh;
                    const float dt = vm::softplus(v[q * li + d.di + d.cd + hh] + W_.dt_bias[hh], d.softplus_threshold);
                    sdt[q * d.nh + hh] = dt;
                    sda[q * d.nh + hh] = vm::exp(dt * W_.A[hh]);
                }
            }
            sync();
            // S[n][i] = dA*S + (dt*xs)*B[n]; y = sum_n S*C[n] + D*xs, gated by silu(z); over rows x
            // heads x headdim, the n loop sequential in each thread (the pool is [n][d_inner] per
            // slot, so a warp's threads touch consecutive floats).
            const int heads_per_group = d.nh / d.G;
            for (int item = tid; item < nb * d.di; item += nth) {
                const int q = item / d.di, i = item % d.di, hh = i / d.hd, g = hh / heads_per_group;
                float* S = A.pool + static_cast<size_t>(slot[q]) * d.state_size + l * layer_floats + d.conv_slot + i;
                const float* aq = a + q * lc;
                const float* B = aq + d.di + g * d.N;
                const float* C = aq + d.di + d.G * d.N + g * d.N;
                const float x_in = aq[i], da = sda[q * d.nh + hh], xd = sdt[q * d.nh + hh] * x_in;
                float acc = 0.0f;
                for (int n = 0; n < d.N; ++n) {
                    const size_t at = static_cast<size_t>(n) * d.di;
                    const float s = da * (rst[q] ? 0.0f : S[at]) + xd * B[n];
                    S[at] = s;
                    acc += s * C[n];
                }
                y[q * ly + i] = (acc + W_.D_elem[i] * x_in) * vm::silu(v[q * li + i]);
            }
            sync();
            rmsnorm_rows(y, ly, d.di, nb, d.eps, W_.gnorm_w, y, inv, tid, nth, sync);
        } else {
            // S4D: S[n][c] = dA*S + dB*x; y = sum_n C*S + D*x, gated by silu(z); over rows x channels.
            for (int item = tid; item < nb * d.di; item += nth) {
                const int q = item / d.di, c = item % d.di;
                float* S = A.pool + static_cast<size_t>(slot[q]) * d.state_size + l * layer_floats + c;
                const float xx = v[q * li + c];
                float acc = 0.0f;
                for (int n = 0; n < d.N; ++n) {
                    const size_t at = static_cast<size_t>(n) * d.di, w_at = static_cast<size_t>(n) * d.ld_inner + c;
                    const float s = W_.dA[w_at] * (rst[q] ? 0.0f : S[at]) + W_.dB[w_at] * xx;
                    S[at] = s;
                    acc += W_.C[w_at] * s;
                }
                y[q * ly + c] = (acc + W_.D[c] * xx) * vm::silu(v[q * li + d.di + c]);
            }
            sync();
        }
        matvec(W_.out_wt, d.dm, d.di, y, ly, nb, nullptr, h, lm, nullptr, true, tid, nth);
        sync();
    }
    rmsnorm_rows(h, lm, d.dm, nb, d.eps, A.norm_f, u, inv, tid, nth, sync);
    matvec(A.head_wt, d.n_out, d.dm, u, lm, nb, A.head_b, A.out, static_cast<size_t>(d.n_out), rows, false,
           tid, nth);
}

}  // namespace cuda
}  // namespace nextick
