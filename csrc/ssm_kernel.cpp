// The SSM step kernel: one block of rows through every layer (the contract is in ssm.hpp, the seam
// with SsmModel in ssm_kernel.hpp). CMake compiles this file once per instruction set, with
// NEXTICK_KERNEL_NAME naming the variant; compiled on its own it is the "generic" variant for
// whatever flags it gets. Everything here has internal linkage but the one registration function,
// so the variants' copies of the same code never meet at link time.
//
// Layout choices, all for the vectorizer (plain loops, GCC -O3, and GCC/Clang vector extensions
// where plain loops cannot say it; no intrinsics, so every variant computes the same bits through
// its own vector width):
//   * matrices are stored transposed, [in][ld] with ld = outputs rounded up to 16 and zero padding,
//     and cut into panels of 16 outputs (weight_panels.hpp), so a matvec is `for k: for j: acc[j] +=
//     wt[k][j] * u[k]`, vectorized across outputs, the accumulators of a block of outputs stay in
//     registers for the whole k loop, and the weights a block reads are a few sequential streams;
//   * up to max_rows consecutive rows with distinct slots go through each matvec together, so a
//     weight vector loaded once serves them all (one row alone is bound by streaming the ~225 KB of
//     weights of the default config from L2); every output keeps its own accumulator and order;
//   * the conv weights are stored [k][channel] for the same reason as the matrices;
//   * the conv window keeps the spec's layout; the ssm state puts d_state outermost ([n][h][p]
//     per slot, s4d [n][c], with dA, dB, C stored [n][c] to match), so that the update and
//     y = sum_n S*C run as long vector loops across all of d_inner with the sum over n still
//     sequential in n.
// Memory: a slot's states are ~20 KB (default config), so 1,024 instruments are 20 MB, past L2 and
// often past this core's share of L3. The matvecs of each block of rows prefetch the next block's
// states, two lines per k step (StatePrefetch), so the fetch overlaps the arithmetic.
#include <cmath>
#include <cstring>
#include <utility>

#include "ssm_kernel.hpp"

#ifndef NEXTICK_KERNEL_NAME
#define NEXTICK_KERNEL_NAME generic
#endif
// vmath's functions are inline: an inline namespace per variant keeps each variant's copy its own.
#define NEXTICK_VMATH_ISA NEXTICK_KERNEL_NAME
#include "vmath.hpp"

namespace nextick {
namespace {

// Up to max_lines consecutive lines of the current (slot, state array) region of pf into *p; 0 when
// all are handed out.
int take_lines(StatePrefetch& pf, int max_lines, const char** p) {
    while (pf.slot_i < pf.n_slots) {
        if (pf.array_i == pf.n_arrays) {
            ++pf.slot_i;
            pf.array_i = 0;
            continue;
        }
        const size_t bytes = pf.slot_floats[pf.array_i] * sizeof(float);
        const size_t n_lines = (bytes + 63) / 64;
        if (pf.line >= n_lines) {
            ++pf.array_i;
            pf.line = 0;
            continue;
        }
        const size_t n = n_lines - pf.line < static_cast<size_t>(max_lines) ? n_lines - pf.line : max_lines;
        *p = reinterpret_cast<const char*>(pf.bases[pf.array_i] + pf.slot_floats[pf.array_i] * pf.slots[pf.slot_i]) +
             pf.line * 64;
        pf.line += n;
        return static_cast<int>(n);
    }
    return 0;
}

// Vector types (GCC/Clang vector extensions: plain elementwise IEEE arithmetic, so every width
// computes the same bits). vfloat, for the mixer, is the target's widest; vmat, for the matvecs, may
// be narrower where that runs faster: on AMD Zen 4, whose AVX-512 units split 512-bit operations
// in two, 256-bit matvecs with AVX-512's 32 registers (6 rows x 4 vectors of accumulators) run
// ~15% faster than 512-bit ones (the avx512_256 variant, NEXTICK_KERNEL_MV_LANES=8).
#if defined(__AVX512F__)
constexpr int kVec = 16;
#elif defined(__AVX__)
constexpr int kVec = 8;
#else
constexpr int kVec = 4;
#endif
#if defined(NEXTICK_KERNEL_MV_LANES)
constexpr int kMv = NEXTICK_KERNEL_MV_LANES;
#else
constexpr int kMv = kVec;
#endif
static_assert(kMv <= kVec && kLane % kMv == 0, "matvec vectors divide the 16-float padding");
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int kRegs = 32;
#else
constexpr int kRegs = 16;
#endif

template <int N>
struct Vec {
    typedef float type __attribute__((vector_size(N * sizeof(float))));
    // The same vector at any float alignment, for loads and stores. Not memcpy into a vector: with
    // an Intel -mtune (which prefers 256-bit moves) GCC expands such a memcpy into two 256-bit
    // stores to the stack and one 512-bit reload, a failed store forward per weight vector, and
    // keeps the matvec accumulators in memory: the batched step ran 3.5x slower.
    typedef float unaligned __attribute__((vector_size(N * sizeof(float)), aligned(alignof(float)), may_alias));
};
using vfloat = Vec<kVec>::type;
using vmat = Vec<kMv>::type;

template <class V>
inline V vload(const float* p) {
    return *reinterpret_cast<const typename Vec<sizeof(V) / sizeof(float)>::unaligned*>(p);
}
template <class V>
inline void vstore(float* p, V v) {
    *reinterpret_cast<typename Vec<sizeof(V) / sizeof(float)>::unaligned*>(p) = v;
}

template <class V, size_t... I>
inline V splat_(float x, std::index_sequence<I...>) {
    return V{((void)I, x)...};
}
template <class V>
inline V splat(float x) {
    return splat_<V>(x, std::make_index_sequence<sizeof(V) / sizeof(float)>{});
}

// Keeps v in a register: the compiler would otherwise fold each use of a loaded weight vector into
// its multiply as a memory operand, loading it R times per k, and the loads, not the multiplies,
// then bound the matvec (pinned, batch 1024 runs ~8% faster on the Zen 5 dev box).
template <class V>
inline void pin(V& v) {
#if defined(__x86_64__) || defined(__i386__)
#if defined(__AVX512F__)
    asm("" : "+v"(v));
#else
    asm("" : "+x"(v));
#endif
#elif defined(__aarch64__)
    asm("" : "+w"(v));
#else
    (void)v;
#endif
}

// Lines 2k and 2k+1 of the run pf[0 : pf_lines), towards L2. always_inline: as a call, GCC 12's
// IPA finds it free of side effects and deletes it.
inline __attribute__((always_inline)) void prefetch_pair(const char* pf, int pf_lines, int k) {
    if (2 * k < pf_lines) __builtin_prefetch(pf + 128 * static_cast<size_t>(k), 0, 2);
    if (2 * k + 1 < pf_lines) __builtin_prefetch(pf + 128 * static_cast<size_t>(k) + 64, 0, 2);
}

// Matvec block for R rows at once: y[r][j0 + j] = init[j0 + j] (or 0) + sum_{k=0}^{K-1}
// W[k][j0 + j] * u[r][k], k ascending, for j < JB, W stored in panels (weight_panels.hpp). JB and R are
// compile-time so that the R*JB accumulators are registers for the whole k loop; each weight vector
// is loaded once for R rows (at batch 1 the weights stream from L2 and bound the speed; R rows
// share that stream), and the R*JB/kMv independent add chains hide the add latency. Each output is
// still one accumulator summed in the order k = 0..K-1, so the result of a row does not depend on
// R or on the other rows. Iteration k also prefetches lines 2k and 2k+1 of the run pf[0 : pf_lines)
// (two per k: the default config's matvecs take ~1,870 k steps for a block of 6 rows, and the next
// block's states are ~1,900 lines; each run ends where a state array does, bench/RESULTS.md).
//
// Several rows are written with the weights pinned in registers (pin), which plain loops cannot
// express; one row lets the compiler fold each weight load into its multiply (each is used once).
template <int R, int JB>
inline void mv_block(const float* __restrict wt, const float* const* u, int k_n, const float* __restrict init,
                     float* const* y, size_t j0, const char* pf, int pf_lines) {
    constexpr int NV = JB / kMv;
    static_assert(JB % kMv == 0, "blocks are whole vectors");
    vmat acc[R][NV];
    for (int v = 0; v < NV; ++v) {
        vmat a0 = vmat{};
        if (init) a0 = vload<vmat>(init + j0 + v * kMv);
        for (int r = 0; r < R; ++r) acc[r][v] = a0;
    }
    const float* up[R];
    for (int r = 0; r < R; ++r) up[r] = u[r];
    const float* wp[NV];  // vector v's weights at k = 0; kPanel floats further per k
    for (int v = 0; v < NV; ++v) wp[v] = wt + panel_at(k_n, 0, j0 + v * kMv);
    for (int k = 0; k < k_n; ++k) {
        prefetch_pair(pf, pf_lines, k);
        vmat wv[NV];
        for (int v = 0; v < NV; ++v) {
            wv[v] = vload<vmat>(wp[v] + static_cast<size_t>(k) * kPanel);
            if constexpr (R > 1) pin(wv[v]);
        }
        for (int r = 0; r < R; ++r) {
            const vmat uk = splat<vmat>(up[r][k]);
            for (int v = 0; v < NV; ++v) acc[r][v] += wv[v] * uk;
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) vstore(y[r] + j0 + v * kMv, acc[r][v]);
}

// Rows per block and the block width for R rows: the R*JB/kMv accumulators, JB/kMv weight vectors
// and a broadcast fit the register file, and the shapes are the fastest measured (bench/RESULTS.md,
// issue 12's section). Only speed depends on these, never the result.
constexpr int kMaxRows = kRegs == 32 ? (kMv == 8 ? 6 : 4) : (kVec >= 8 ? 4 : 2);
constexpr int block_width(int rows) {
    if (kRegs == 32 && kMv == 16) return rows <= 2 ? 128 : 64;  // zmm: 4 x 4 accumulators
    if (kRegs == 32 && kMv == 8) return rows <= 2 ? 64 : rows <= 4 ? 40 : 32;  // ymm: up to 6 x 4
    if (kMv == 8) return rows == 1 ? 64 : rows == 2 ? 32 : 16;  // AVX2: 16 ymm
    return rows == 1 ? 32 : 16;  // SSE2, NEON: 16 registers of 4
}

// One block of `width` outputs from j0 (a multiple of kMv, at most W): mv_block with the width
// made a compile-time constant.
template <int R, int W>
inline void mv_width(const float* wt, size_t width, const float* const* u, int k_n, const float* init,
                     float* const* y, size_t j0, const char* pf, int pf_lines) {
    if constexpr (W > 0) {
        if (width == static_cast<size_t>(W))
            mv_block<R, W>(wt, u, k_n, init, y, j0, pf, pf_lines);
        else
            mv_width<R, W - kMv>(wt, width, u, k_n, init, y, j0, pf, pf_lines);
    }
}

// The cols outputs in blocks of block_width(R), the last one narrower where cols is not a multiple.
// (Widths spread evenly instead, in_proj's 37 ymm columns as 7 blocks of 4 vectors and 3 of 3 in
// place of 9 of 4 and one of 1, ran ~6% slower: the blocks of 3 broadcast as often for fewer
// multiplies.)
template <int R>
void mv_rows(const float* wt, size_t cols, const float* const* u, int k_n, const float* init, float* const* y,
             StatePrefetch* pf) {
    constexpr int JB = block_width(R);
    const char* run = nullptr;
    for (size_t j = 0; j < cols; j += JB) {
        const size_t width = cols - j < static_cast<size_t>(JB) ? cols - j : JB;
        const int n = pf ? take_lines(*pf, 2 * k_n, &run) : 0;
        mv_width<R, JB>(wt, width, u, k_n, init, y, j, run, n);
    }
}

// y[r][0:n] = init (or 0) + W^T u[r] over k = 0..k_n-1 for r < rows <= kMaxRows, with W [k_n][ld]
// stored in panels (panel_at), ld a multiple of 16 and n <= ld. The outputs from n up to the next multiple of kMv
// are computed too (the padding's zero weights give zeros); those beyond are left as they are
// (nothing reads them). pf (may be null) supplies lines to prefetch on the way.
void matvec(const float* wt, int n, const float* const* u, int k_n, const float* init, float* const* y, int rows,
            StatePrefetch* pf) {
    static_assert(kMaxRows >= 2 && kMaxRows <= 6, "the switch covers 1..kMaxRows rows");
    const size_t cols = (static_cast<size_t>(n) + kMv - 1) / kMv * kMv;
    switch (rows) {
        case 1: mv_rows<1>(wt, cols, u, k_n, init, y, pf); break;
        case 2: mv_rows<2>(wt, cols, u, k_n, init, y, pf); break;
        case 3: if constexpr (kMaxRows >= 3) mv_rows<3>(wt, cols, u, k_n, init, y, pf); break;
        case 4: if constexpr (kMaxRows >= 4) mv_rows<4>(wt, cols, u, k_n, init, y, pf); break;
        case 5: if constexpr (kMaxRows >= 5) mv_rows<5>(wt, cols, u, k_n, init, y, pf); break;
        case 6: if constexpr (kMaxRows >= 6) mv_rows<6>(wt, cols, u, k_n, init, y, pf); break;
        default: break;
    }
}

// 1 / sqrt(mean(v*v) + eps), the scale of rmsnorm: out[i] = (v[i] * scale) * w[i]. The sum of
// squares runs in 16 interleaved partial sums (lane l takes i = l, l+16, ...; then lanes fold
// l += l+8, l+4, l+2, l+1): a fixed order that vectorizes, where one sequential sum would be a
// latency chain of n adds.
float rms_inv(const float* v, int n, float eps) {
#if defined(__AVX512F__)
    if (n % 16 == 0) {  // the same sums in the same order, the 16 lanes in one register
        vfloat acc{};
        for (int i = 0; i < n; i += 16) {
            const vfloat x = vload<vfloat>(v + i);
            acc += x * x;
        }
        const __m512 a = (__m512)acc;
        const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));  // l += l + 8
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));     // l += l + 4
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                                   // l += l + 2
        const float sum = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));               // 0 += 1
        return 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
    }
#endif
    float lane[kLane] = {};
    int i = 0;
    for (; i + static_cast<int>(kLane) <= n; i += kLane)
        for (size_t l = 0; l < kLane; ++l) lane[l] += v[i + l] * v[i + l];
    for (int l = 0; i + l < n; ++l) lane[l] += v[i + l] * v[i + l];
    for (size_t w2 = kLane / 2; w2 >= 1; w2 /= 2)
        for (size_t l = 0; l < w2; ++l) lane[l] += lane[l + w2];
    return 1.0f / std::sqrt(lane[0] / static_cast<float>(n) + eps);
}

// rmsnorm of each of the nb rows (out may be v). The scales first, for all rows: their latency
// chains (sum, fold, sqrt, divide) are independent and overlap, where row after row they would not.
void rmsnorm_rows(float* const* v, const float* w, float* const* out, int nb, int n, float eps) {
    float inv[kMaxBlockRows];
    for (int q = 0; q < nb; ++q) inv[q] = rms_inv(v[q], n, eps);
    for (int q = 0; q < nb; ++q)
        for (int j = 0; j < n; ++j) out[q][j] = (v[q][j] * inv[q]) * w[j];
}

// dt = softplus(dt_raw + dt_bias) and dA = exp(dt * A) for every head of the nb rows of a block,
// row q's head h in lane q*nheads + h of plan.dt and plan.da. Pad lanes compute softplus(0) and exp(0) and
// are never read.
void heads_mamba2(const SsmPlan& p, const SsmLayer& L, float* const* v_in, int nb) {
    const SsmConfig& c = p.cfg;
    float* const dt_ = p.dt;
    float* const da_ = p.da;
    const int nh = c.nheads, lanes = static_cast<int>(pad16(static_cast<size_t>(nb) * nh));
    const size_t dt_at = static_cast<size_t>(c.d_inner) + c.conv_dim();
    for (int q = 0; q < nb; ++q)
        for (int h = 0; h < nh; ++h) dt_[q * nh + h] = v_in[q][dt_at + h] + L.dt_bias[h];
    for (int i = nb * nh; i < lanes; ++i) dt_[i] = 0.0f;
    for (int i = 0; i < lanes; ++i) dt_[i] = vm::softplus(dt_[i], c.softplus_threshold);
    for (int q = 0; q < nb; ++q)
        for (int h = 0; h < nh; ++h) da_[q * nh + h] = dt_[q * nh + h] * L.A[h];
    for (int i = nb * nh; i < lanes; ++i) da_[i] = 0.0f;
    for (int i = 0; i < lanes; ++i) da_[i] = vm::exp(da_[i]);
}

// Causal depthwise conv for d_conv = 4 in one pass per channel: a = silu(b + w0*win0 + w1*win1 +
// w2*win2 + w3*x) summed in that order, and the window shifts (win0 <- win1 <- win2 <- x).
void conv4_silu(float* __restrict win0, float* __restrict win1, float* __restrict win2, const float* __restrict w0,
                const float* __restrict w1, const float* __restrict w2, const float* __restrict w3,
                const float* __restrict b, const float* __restrict x, float* __restrict a, int cd) {
    int ch = 0;
#if defined(__AVX512F__)
    for (; ch + 16 <= cd; ch += 16) {  // the same operations in the same order, 16 channels at a time
        const vfloat s0 = vload<vfloat>(win0 + ch), s1 = vload<vfloat>(win1 + ch), s2 = vload<vfloat>(win2 + ch);
        const vfloat xv = vload<vfloat>(x + ch);
        vfloat acc = vload<vfloat>(b + ch);
        acc += vload<vfloat>(w0 + ch) * s0;
        acc += vload<vfloat>(w1 + ch) * s1;
        acc += vload<vfloat>(w2 + ch) * s2;
        acc += vload<vfloat>(w3 + ch) * xv;
        vstore(win0 + ch, s1);
        vstore(win1 + ch, s2);
        vstore(win2 + ch, xv);
        vstore(a + ch, vm::silu16(acc));
    }
#endif
    for (; ch < cd; ++ch) {
        float acc = b[ch];
        acc += w0[ch] * win0[ch];
        acc += w1[ch] * win1[ch];
        acc += w2[ch] * win2[ch];
        acc += w3[ch] * x[ch];
        win0[ch] = win1[ch];
        win1[ch] = win2[ch];
        win2[ch] = x[ch];
        a[ch] = vm::silu(acc);
    }
}

// The same for any d_conv: window [d_conv-1][cd], oldest first.
void conv_silu(float* win, const float* wt, size_t ld, int dc, const float* b, const float* x, float* a, int cd) {
    for (int ch = 0; ch < cd; ++ch) a[ch] = b[ch];
    for (int k = 0; k < dc - 1; ++k) {
        const float* w = wt + static_cast<size_t>(k) * ld;
        const float* s = win + static_cast<size_t>(k) * cd;
        for (int ch = 0; ch < cd; ++ch) a[ch] += w[ch] * s[ch];
    }
    const float* w = wt + static_cast<size_t>(dc - 1) * ld;
    for (int ch = 0; ch < cd; ++ch) a[ch] += w[ch] * x[ch];
    if (dc > 1) {
        std::memmove(win, win + cd, static_cast<size_t>(dc - 2) * cd * sizeof(float));
        std::memcpy(win + static_cast<size_t>(dc - 2) * cd, x, static_cast<size_t>(cd) * sizeof(float));
    }
    vm::vsilu_inplace(a, cd);
}

// The per-element factors of the state update, exp(dt*A) and dt*xs, for element i of a run
// (element i belongs to head i / hd). PerHead: read from the heads' dt and exp(dt*A) and the conv
// output xs as they are used, with a vector never straddling two heads (hd a multiple of kVec);
// otherwise from the arrays da, xd that row_mamba2 fills first.
struct UpdateFactors {
    const float* dt_h;  // [heads of the run]
    const float* da_h;
    const float* xs;    // [w]
    int hd;
    const float* da;    // [w], when not per head
    const float* xd;
};

template <bool PerHead>
inline __attribute__((always_inline)) void factors_vec(const UpdateFactors& f, int i, vfloat& dav, vfloat& xdv) {
    if constexpr (PerHead) {
        const int h = i / f.hd;
        dav = splat<vfloat>(f.da_h[h]);
        xdv = splat<vfloat>(f.dt_h[h]) * vload<vfloat>(f.xs + i);
    } else {
        dav = vload<vfloat>(f.da + i);
        xdv = vload<vfloat>(f.xd + i);
    }
}

// One group's run of w elements: S[n, i] = da[i]*S[n, i] + xd[i]*B[n]; y[i] = sum_n S[n, i]*C[n]
// (n ascending, from zero). Tiles of kTileVecs vectors keep da, xd and the y accumulators in
// registers across the n loop, so each state vector costs one load and one store.
constexpr int kTileVecs = kVec == 16 ? 4 : 2;  // 3 * kTileVecs live vectors: within 16 or 32 registers
template <bool PerHead>
void ssm_update(float* __restrict S, size_t n_stride, int N, int w, const UpdateFactors& f,
                const float* __restrict B, const float* __restrict C, float* __restrict y) {
    constexpr int TW = kTileVecs * kVec;
    int i0 = 0;
    for (; i0 + TW <= w; i0 += TW) {
        vfloat dav[kTileVecs], xdv[kTileVecs], acc[kTileVecs];
        for (int t = 0; t < kTileVecs; ++t) {
            factors_vec<PerHead>(f, i0 + t * kVec, dav[t], xdv[t]);
            acc[t] = vfloat{};
        }
        for (int n = 0; n < N; ++n) {
            const vfloat bn = splat<vfloat>(B[n]);
            const vfloat cn = splat<vfloat>(C[n]);
            float* s = S + static_cast<size_t>(n) * n_stride + i0;
            for (int t = 0; t < kTileVecs; ++t) {
                const vfloat v = dav[t] * vload<vfloat>(s + t * kVec) + xdv[t] * bn;
                vstore(s + t * kVec, v);
                acc[t] += v * cn;
            }
        }
        for (int t = 0; t < kTileVecs; ++t) vstore<vfloat>(y + i0 + t * kVec, acc[t]);
    }
    if (i0 < w) {
        for (int i = i0; i < w; ++i) y[i] = 0.0f;
        for (int n = 0; n < N; ++n) {
            const float bn = B[n], cn = C[n];
            float* __restrict s = S + static_cast<size_t>(n) * n_stride;
            for (int i = i0; i < w; ++i) {
                const float da = PerHead ? f.da_h[i / f.hd] : f.da[i];
                const float xd = PerHead ? f.dt_h[i / f.hd] * f.xs[i] : f.xd[i];
                const float v = da * s[i] + xd * bn;
                s[i] = v;
                y[i] += v * cn;
            }
        }
    }
}


// From v_in = in_proj output of one row (and its heads' dt, exp(dt*A)) to y_out = the gated,
// normed input of out_proj, updating the slot's states.
void row_mamba2(const SsmPlan& P, const SsmLayer& L, int slot, const float* v_in, const float* dt, const float* da,
                float* y_out) {
    const SsmConfig& c = P.cfg;
    const int di = c.d_inner, cd = c.conv_dim(), dc = c.d_conv, nh = c.nheads, hd = c.headdim, N = c.d_state;
    const int G = c.ngroups, heads_per_group = nh / G;
    const float* z = v_in;
    const float* xbc = v_in + di;

    float* win = L.conv.get() + P.conv_slot * slot;
    float* a = P.a;
    if (dc == 4) {
        const size_t cds = static_cast<size_t>(cd);
        conv4_silu(win, win + cds, win + 2 * cds, L.conv_wt, L.conv_wt + P.ld_conv, L.conv_wt + 2 * P.ld_conv,
                   L.conv_wt + 3 * P.ld_conv, L.conv_b, xbc, a, cd);
    } else {
        conv_silu(win, L.conv_wt, P.ld_conv, dc, L.conv_b, xbc, a, cd);
    }

    // Per n, the heads of one group are one contiguous run of the pool ([n][h][p] per slot), so
    // the update runs across the whole run (d_inner for G = 1) with the per-head factors as
    // vectors: built as they are used where a vector holds one head's elements, else first
    // written out per element (plan.daf, plan.xdt).
    const bool per_head = hd % kVec == 0;
    if (!per_head)
        for (int h = 0; h < nh; ++h)
            for (int p = 0; p < hd; ++p) {
                P.xdt[h * hd + p] = dt[h] * a[h * hd + p];
                P.daf[h * hd + p] = da[h];
            }
    float* S = L.ssm.get() + P.ssm_slot * slot;
    const int run = heads_per_group * hd;
    for (int g = 0; g < G; ++g) {
        const size_t i0 = static_cast<size_t>(g) * run;
        const UpdateFactors f{dt + g * heads_per_group, da + g * heads_per_group, a + i0, hd, P.daf + i0, P.xdt + i0};
        const float* B = a + di + g * N;
        const float* C = a + di + G * N + g * N;
        if (per_head)
            ssm_update<true>(S + i0, di, N, run, f, B, C, y_out + i0);
        else
            ssm_update<false>(S + i0, di, N, run, f, B, C, y_out + i0);
    }

    // The gate of the spec: y = (y + D*xs) * silu(z).
    const float* D = L.D_elem;
    int i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= di; i += 16)
        vstore(y_out + i,
               (vload<vfloat>(y_out + i) + vload<vfloat>(D + i) * vload<vfloat>(a + i)) * vm::silu16(vload<vfloat>(z + i)));
#endif
    for (; i < di; ++i) y_out[i] = (y_out[i] + D[i] * a[i]) * vm::silu(z[i]);
}

void row_s4d(const SsmPlan& P, const SsmLayer& L, int slot, float* v_in, float* y_out) {
    const SsmConfig& c = P.cfg;
    const int di = c.d_inner, N = c.d_state;
    const float* xx = v_in;
    float* z = v_in + di;
    // S[n,:] = dA[n,:]*S[n,:] + dB[n,:]*xx; y += C[n,:]*S[n,:], n ascending (all stored [n][c]).
    float* S = L.ssm.get() + P.ssm_slot * slot;
    for (int ch = 0; ch < di; ++ch) y_out[ch] = 0.0f;
    for (int n = 0; n < N; ++n) {
        float* __restrict s = S + static_cast<size_t>(n) * di;
        const float* __restrict dA = L.dA + static_cast<size_t>(n) * P.ld_inner;
        const float* __restrict dB = L.dB + static_cast<size_t>(n) * P.ld_inner;
        const float* __restrict C = L.C + static_cast<size_t>(n) * P.ld_inner;
        float* __restrict y = y_out;
        for (int ch = 0; ch < di; ++ch) {
            const float v = dA[ch] * s[ch] + dB[ch] * xx[ch];
            s[ch] = v;
            y[ch] += C[ch] * v;
        }
    }
    for (int ch = 0; ch < di; ++ch) y_out[ch] = y_out[ch] + L.D[ch] * xx[ch];
    vm::vsilu_inplace(z, di);
    for (int j = 0; j < di; ++j) y_out[j] = y_out[j] * z[j];
}

// The rows of one block through every layer: the matvecs take the block's rows together, the mixer
// one row at a time.
void run_block(const SsmPlan& P, const int* rows, int nb, const int32_t* slots, const float* x, float* out,
               StatePrefetch* pf) {
    const SsmConfig& c = P.cfg;
    const int F = c.n_features, dm = c.d_model, n_out = c.n_out;
    const float* in[kMaxRows];
    float* h[kMaxRows];
    float* u[kMaxRows];
    float* v[kMaxRows];
    float* y[kMaxRows];
    float* t[kMaxRows];
    for (int q = 0; q < nb; ++q) {
        in[q] = x + static_cast<size_t>(rows[q]) * F;
        h[q] = P.rows[q].h;
        u[q] = P.rows[q].u;
        v[q] = P.rows[q].v;
        y[q] = P.rows[q].y;
        t[q] = P.rows[q].t;
    }

    matvec(P.enc_wt, dm, in, F, P.enc_b, h, nb, pf);
    for (int l = 0; l < c.n_layers; ++l) {
        const SsmLayer& L = P.layers[l];
        rmsnorm_rows(h, L.norm_w, u, nb, dm, c.norm_eps);
        matvec(L.in_wt, c.d_in_proj(), u, dm, nullptr, v, nb, pf);
        if (c.kind == SsmKind::kMamba2) heads_mamba2(P, L, v, nb);
        for (int q = 0; q < nb; ++q) {
            if (c.kind == SsmKind::kMamba2)
                row_mamba2(P, L, slots[rows[q]], v[q], P.dt + q * c.nheads, P.da + q * c.nheads, y[q]);
            else
                row_s4d(P, L, slots[rows[q]], v[q], y[q]);
        }
        // mamba2: RMSNorm of each row's gated product over all of d_inner at once (the spec's order).
        if (c.kind == SsmKind::kMamba2) rmsnorm_rows(y, L.gnorm_w, y, nb, c.d_inner, c.norm_eps);
        // h + out_proj @ y2, the product summed on its own first (as the spec writes it).
        matvec(L.out_wt, dm, y, c.d_inner, nullptr, t, nb, pf);
        if (P.drop) {  // h + m * t, as engine/model/ssm.py residual() writes it
            for (int q = 0; q < nb; ++q) {
                const size_t variant = static_cast<size_t>(slots[rows[q]] % P.n_drop);
                const float* m = P.drop + (variant * c.n_layers + l) * P.ld_model;
                for (int j = 0; j < dm; ++j) h[q][j] = h[q][j] + m[j] * t[q][j];
            }
        } else {
            for (int q = 0; q < nb; ++q)
                for (int j = 0; j < dm; ++j) h[q][j] = h[q][j] + t[q][j];
        }
    }
    rmsnorm_rows(h, P.norm_f, u, nb, dm, c.norm_eps);
    matvec(P.head_wt, n_out, u, dm, P.head_b, t, nb, pf);
    for (int q = 0; q < nb; ++q)
        for (int j = 0; j < n_out; ++j) out[static_cast<size_t>(rows[q]) * n_out + j] = t[q][j];
}

}  // namespace

#define NEXTICK_STR2(x) #x
#define NEXTICK_STR(x) NEXTICK_STR2(x)
#define NEXTICK_KERNEL_DEF2(name) ssm_kernel_##name
#define NEXTICK_KERNEL_DEF(name) NEXTICK_KERNEL_DEF2(name)

const SsmKernel& NEXTICK_KERNEL_DEF(NEXTICK_KERNEL_NAME)() {
    static_assert(kMaxRows <= kMaxBlockRows, "SsmPlan holds kMaxBlockRows rows of scratch");
    static const SsmKernel kernel{NEXTICK_STR(NEXTICK_KERNEL_NAME), kMaxRows, &run_block};
    return kernel;
}

}  // namespace nextick
