// SSM step kernel; the contract is in ssm.hpp.
//
// Layout choices, all for the vectorizer (plain loops, GCC -O3, and GCC/Clang vector extensions
// where plain loops cannot say it; no intrinsics, so a portable build computes the same bits
// through narrower vectors):
//   * matrices are stored transposed, [in][ld] with ld = outputs rounded up to 16 and zero padding,
//     so a matvec is `for k: for j: acc[j] += wt[k][j] * u[k]`, vectorized across outputs, and the
//     accumulators of a block of outputs stay in registers for the whole k loop;
//   * step() runs up to 4 consecutive rows with distinct slots through each matvec together, so a
//     weight vector loaded once serves 4 rows (one row alone is bound by streaming the ~225 KB of
//     weights of the default config from L2); every output keeps its own accumulator and order;
//   * the conv weights are stored [k][channel] for the same reason as the matrices;
//   * the conv window keeps the spec's layout; the ssm state puts d_state outermost ([n][h][p]
//     per slot, s4d [n][c], with dA, dB, C stored [n][c] to match), so that the update and
//     y = sum_n S*C run as long vector loops across all of d_inner with the sum over n still
//     sequential in n. Python views it with strides, in the spec's shape, without copies.
// Memory: a slot's states are ~20 KB (default config), so 1,024 instruments are 20 MB, past L2 and
// often past this core's share of L3. The matvecs of each block of rows prefetch the next block's
// states, two lines per k step (StatePrefetch), so the fetch overlaps the arithmetic.
#include "ssm.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "vmath.hpp"

namespace nextick {

// The cache lines of the states the next block of rows will update, handed out a run at a time
// to the matvecs of the current block, which issue two lines per k (mv_block). Issued all at once
// (~80 KB for 4 rows of the default config) the prefetches fill the miss queues and stall the
// block's own loads; spread over its k loops they arrive while the block computes. Only speed
// depends on this, never a result.
struct StatePrefetch {
    static constexpr int kMaxSlots = 4;
    const float* const* bases = nullptr;  // per state array (conv and ssm of each layer): pool start
    const size_t* slot_floats = nullptr;  // per state array: floats per slot
    int n_arrays = 0;
    int32_t slots[kMaxSlots] = {};
    int n_slots = 0;
    int slot_i = 0, array_i = 0;
    size_t line = 0;  // next line within the current (slot, array) region

    void clear() {
        n_slots = slot_i = array_i = 0;
        line = 0;
    }

    // Up to max_lines consecutive lines of the current region into *p; 0 when all are handed out.
    int take(int max_lines, const char** p) {
        while (slot_i < n_slots) {
            if (array_i == n_arrays) {
                ++slot_i;
                array_i = 0;
                continue;
            }
            const size_t bytes = slot_floats[array_i] * sizeof(float);
            const size_t n_lines = (bytes + 63) / 64;
            if (line >= n_lines) {
                ++array_i;
                line = 0;
                continue;
            }
            const size_t n = n_lines - line < static_cast<size_t>(max_lines) ? n_lines - line : max_lines;
            *p = reinterpret_cast<const char*>(bases[array_i] + slot_floats[array_i] * slots[slot_i]) + line * 64;
            line += n;
            return static_cast<int>(n);
        }
        return 0;
    }
};

namespace {

constexpr size_t kLane = 16;  // floats per 64 bytes; every padded length is a multiple of this
constexpr int kMaxDim = 1 << 16;

size_t pad16(size_t n) { return (n + kLane - 1) / kLane * kLane; }

std::string shape_str(const std::vector<size_t>& s) {
    std::ostringstream o;
    o << '[';
    for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    o << ']';
    return o.str();
}

float* alloc_aligned(size_t n_floats) {
    size_t bytes = pad16(n_floats == 0 ? 1 : n_floats) * sizeof(float);
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    return static_cast<float*>(p);
}

std::shared_ptr<float> shared_aligned(size_t n_floats) {
    return std::shared_ptr<float>(alloc_aligned(n_floats), [](float* p) { std::free(p); });
}

// Vector type of the target's widest float registers (GCC/Clang vector extension: plain
// elementwise IEEE arithmetic, so every width computes the same bits).
#if defined(__AVX512F__)
constexpr int kVec = 16;
#elif defined(__AVX__)
constexpr int kVec = 8;
#else
constexpr int kVec = 4;
#endif
typedef float vfloat __attribute__((vector_size(kVec * sizeof(float))));

template <size_t... I>
inline vfloat splat(float x, std::index_sequence<I...>) {
    return vfloat{((void)I, x)...};
}

// Keeps v in a register: the compiler would otherwise fold each use of a loaded weight vector into
// its multiply as a memory operand, loading it R times per k, and the loads, not the multiplies,
// then bound the matvec (pinned, batch 1024 runs ~8% faster on the Zen 5 dev box).
inline void pin(vfloat& v) {
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
// wt[k*ld + j0 + j] * u[r][k], k ascending, for j < JB. JB and R are compile-time so that the R*JB
// accumulators are registers for the whole k loop; each weight vector is loaded once for R rows
// (at batch 1 the weights stream from L2 and bound the speed; R rows share that stream), and the
// R*JB/kVec independent add chains hide the add latency. Each output is still one accumulator
// summed in the order k = 0..K-1, so the result of a row does not depend on R or on the other
// rows. Iteration k also prefetches lines 2k and 2k+1 of the run pf[0 : pf_lines) (two per k: a
// block's matvecs have ~1,000 k steps, the next block's states ~1,300 lines).
//
// One row is a plain loop (each weight is used once, and GCC keeps the accumulators in registers);
// several rows are written in vectors with the weights pinned in registers (pin), which plain
// loops cannot express.
template <int R, int JB>
inline void mv_block(const float* __restrict wt, size_t ld, const float* const* u, int k_n,
                     const float* __restrict init, float* const* y, size_t j0, const char* pf, int pf_lines) {
    if constexpr (R == 1) {
        float acc[JB];
        for (int j = 0; j < JB; ++j) acc[j] = init ? init[j0 + j] : 0.0f;
        const float* u0 = u[0];
        for (int k = 0; k < k_n; ++k) {
            prefetch_pair(pf, pf_lines, k);
            const float* w = wt + static_cast<size_t>(k) * ld + j0;
            const float uk = u0[k];
            for (int j = 0; j < JB; ++j) acc[j] += w[j] * uk;
        }
        for (int j = 0; j < JB; ++j) y[0][j0 + j] = acc[j];
    } else {
        constexpr int NV = JB / kVec;
        static_assert(JB % kVec == 0, "blocks are whole vectors");
        vfloat acc[R][NV];
        for (int v = 0; v < NV; ++v) {
            vfloat a0 = vfloat{};
            if (init) std::memcpy(&a0, init + j0 + v * kVec, sizeof a0);
            for (int r = 0; r < R; ++r) acc[r][v] = a0;
        }
        const float* up[R];
        for (int r = 0; r < R; ++r) up[r] = u[r];
        for (int k = 0; k < k_n; ++k) {
            prefetch_pair(pf, pf_lines, k);
            const float* w = wt + static_cast<size_t>(k) * ld + j0;
            vfloat wv[NV];
            for (int v = 0; v < NV; ++v) {
                std::memcpy(&wv[v], w + v * kVec, sizeof(vfloat));
                pin(wv[v]);
            }
            for (int r = 0; r < R; ++r) {
                const vfloat uk = splat(up[r][k], std::make_index_sequence<kVec>{});
                for (int v = 0; v < NV; ++v) acc[r][v] += wv[v] * uk;
            }
        }
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) std::memcpy(y[r] + j0 + v * kVec, &acc[r][v], sizeof(vfloat));
    }
}

// Widest block for R rows whose accumulators fit the register file (AVX-512: 32 zmm of 16 floats;
// AVX: 16 ymm of 8; otherwise 16 registers of 4). Only speed depends on these, never the result.
#if defined(__AVX512F__)
constexpr int kMaxRows = 4;
constexpr int block_width(int rows) { return rows <= 2 ? 128 : 64; }
#elif defined(__AVX__)
constexpr int kMaxRows = 4;
constexpr int block_width(int rows) { return rows == 1 ? 64 : rows == 2 ? 32 : 16; }
#else
constexpr int kMaxRows = 2;
constexpr int block_width(int rows) { return rows == 1 ? 32 : 16; }
#endif

// The last (ld - j0) < block_width(R) outputs, a multiple of 16, in one block of that width.
template <int R, int W>
inline void mv_tail(const float* wt, size_t ld, const float* const* u, int k_n, const float* init, float* const* y,
                    size_t j0, const char* pf, int pf_lines) {
    if constexpr (W > 0) {
        if (ld - j0 == static_cast<size_t>(W))
            mv_block<R, W>(wt, ld, u, k_n, init, y, j0, pf, pf_lines);
        else
            mv_tail<R, W - 16>(wt, ld, u, k_n, init, y, j0, pf, pf_lines);
    }
}

template <int R>
void mv_rows(const float* wt, size_t ld, const float* const* u, int k_n, const float* init, float* const* y,
             StatePrefetch* pf) {
    constexpr int JB = block_width(R);
    const char* run = nullptr;
    size_t j = 0;
    for (; j + JB <= ld; j += JB) {
        const int n = pf ? pf->take(2 * k_n, &run) : 0;
        mv_block<R, JB>(wt, ld, u, k_n, init, y, j, run, n);
    }
    if (j < ld) {
        const int n = pf ? pf->take(2 * k_n, &run) : 0;
        mv_tail<R, JB - 16>(wt, ld, u, k_n, init, y, j, run, n);
    }
}

// y[r][0:ld] = init (or 0) + wt^T u[r] over k = 0..k_n-1 for r < rows <= kMaxRows, with wt stored
// [k_n][ld], ld a multiple of 16. pf (may be null) supplies lines to prefetch on the way.
void matvec(const float* wt, size_t ld, const float* const* u, int k_n, const float* init, float* const* y,
            int rows, StatePrefetch* pf) {
    switch (rows) {
        case 1: mv_rows<1>(wt, ld, u, k_n, init, y, pf); break;
        case 2: mv_rows<2>(wt, ld, u, k_n, init, y, pf); break;
#if !defined(__AVX512F__) && !defined(__AVX__)
        default: break;
#else
        case 3: mv_rows<3>(wt, ld, u, k_n, init, y, pf); break;
        default: mv_rows<4>(wt, ld, u, k_n, init, y, pf); break;
#endif
    }
}

// out[i] = (v[i] * (1 / sqrt(mean(v*v) + eps))) * w[i]. The sum of squares runs in 16 interleaved
// partial sums (lane l takes i = l, l+16, ...; then lanes fold l += l+8, l+4, l+2, l+1): a fixed
// order that vectorizes, where one sequential sum would be a latency chain of n adds.
void rmsnorm(const float* v, const float* w, float* out, int n, float eps) {
    float lane[kLane] = {};
    int i = 0;
    for (; i + static_cast<int>(kLane) <= n; i += kLane)
        for (size_t l = 0; l < kLane; ++l) lane[l] += v[i + l] * v[i + l];
    for (int l = 0; i + l < n; ++l) lane[l] += v[i + l] * v[i + l];
    for (size_t w2 = kLane / 2; w2 >= 1; w2 /= 2)
        for (size_t l = 0; l < w2; ++l) lane[l] += lane[l + w2];
    const float inv = 1.0f / std::sqrt(lane[0] / static_cast<float>(n) + eps);
    for (int j = 0; j < n; ++j) out[j] = (v[j] * inv) * w[j];
}

// Tensor reads go through memcpy: the caller's arrays need not be aligned.
float read_at(const float* p, size_t i) {
    float f;
    std::memcpy(&f, p + i, sizeof f);
    return f;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Config

const char* ssm_kind_name(SsmKind kind) { return kind == SsmKind::kS4D ? "s4d" : "mamba2"; }

SsmKind parse_ssm_kind(const std::string& name) {
    if (name == "mamba2") return SsmKind::kMamba2;
    if (name == "s4d") return SsmKind::kS4D;
    throw std::invalid_argument("SsmConfig.kind must be \"mamba2\" or \"s4d\", got \"" + name + "\"");
}

namespace {

// The channel counts behind conv_dim() and d_in_proj(), in double for footprint(), which must
// measure configs whose sizes overflow int.
double conv_channels(const SsmConfig& c) {
    return c.kind == SsmKind::kMamba2 ? c.d_inner + 2.0 * c.ngroups * c.d_state : 0.0;
}

double in_proj_rows(const SsmConfig& c) {
    return c.kind == SsmKind::kMamba2 ? 2.0 * c.d_inner + 2.0 * c.ngroups * c.d_state + c.nheads : 2.0 * c.d_inner;
}

double pad16d(double n) { return std::ceil(n / kLane) * kLane; }

// Floats per slot in one layer's conv window and SSM state (build_layout's conv_slot_, ssm_slot_).
double conv_slot_floats(const SsmConfig& c) {
    return c.kind == SsmKind::kMamba2 ? (c.d_conv - 1.0) * conv_channels(c) : 0.0;
}

double ssm_slot_floats(const SsmConfig& c) { return static_cast<double>(c.d_inner) * c.d_state; }

// Floats of load()'s weight arena: every tensor, transposed where load() transposes it, each
// padded to 16 floats, plus mamba2's D expanded per element.
double weight_arena_floats(const SsmConfig& c) {
    const double F = c.n_features, dm = c.d_model, di = c.d_inner, N = c.d_state;
    const double ld_model = pad16d(dm), ld_inner = pad16d(di), ld_out = pad16d(c.n_out), ld_in = pad16d(in_proj_rows(c));
    double per_layer = ld_model + dm * ld_in + di * ld_model;  // norm, in_proj, out_proj
    if (c.kind == SsmKind::kMamba2) {
        const double ld_conv = pad16d(conv_channels(c));
        // conv weight and bias, dt_bias, A, D; D per element and norm_gated
        per_layer += c.d_conv * ld_conv + ld_conv + 3 * pad16d(c.nheads) + 2 * ld_inner;
    } else {
        per_layer += 3 * N * ld_inner + ld_inner;  // dA, dB, C; D
    }
    // encoder weight and bias, norm_f, head weight and bias
    return F * ld_model + 2 * ld_model + dm * ld_out + ld_out + c.n_layers * per_layer;
}

}  // namespace

int SsmConfig::conv_dim() const { return static_cast<int>(conv_channels(*this)); }

int SsmConfig::d_in_proj() const { return static_cast<int>(in_proj_rows(*this)); }

SsmFootprint SsmConfig::footprint() const {
    const double per_slot = n_layers * (conv_slot_floats(*this) + ssm_slot_floats(*this));
    return {weight_arena_floats(*this) * sizeof(float), per_slot * sizeof(float)};
}

std::string SsmConfig::sizes() const {
    std::string s = std::string(ssm_kind_name(kind)) + " n_layers=" + std::to_string(n_layers) +
                    " d_model=" + std::to_string(d_model) + " d_inner=" + std::to_string(d_inner) +
                    " d_state=" + std::to_string(d_state);
    if (kind == SsmKind::kMamba2)
        s += " nheads=" + std::to_string(nheads) + " headdim=" + std::to_string(headdim) +
             " ngroups=" + std::to_string(ngroups) + " d_conv=" + std::to_string(d_conv);
    return s + " n_features=" + std::to_string(n_features) + " n_out=" + std::to_string(n_out);
}

std::string format_binary_bytes(double bytes) {
    static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = bytes;
    int u = 0;
    while (v >= 1024 && u < 6) {
        v /= 1024;
        ++u;
    }
    char out[32];
    std::snprintf(out, sizeof out, "%.1f %s", v, kUnits[u]);
    return out;
}

std::string format_bytes(double bytes) {
    char digits[64];
    std::snprintf(digits, sizeof digits, "%.0f", bytes);
    const std::string d = digits;
    std::string grouped;
    for (size_t i = 0; i < d.size(); ++i) {
        if (i > 0 && (d.size() - i) % 3 == 0) grouped += ',';
        grouped += d[i];
    }
    return grouped + " bytes (" + format_binary_bytes(bytes) + ")";
}

void SsmConfig::validate() const {
    auto need = [](bool ok, const std::string& msg) {
        if (!ok) throw std::invalid_argument("SsmConfig." + msg);
    };
    auto positive = [&](const char* name, int v) {
        need(v >= 1, std::string(name) + " must be >= 1, got " + std::to_string(v));
    };
    auto at_most = [&](const char* name, int v) {
        need(v <= kMaxDim, std::string(name) + " must be <= " + std::to_string(kMaxDim) + ", got " + std::to_string(v));
    };
    need(kind == SsmKind::kMamba2 || kind == SsmKind::kS4D,
         "kind must be 0 (mamba2) or 1 (s4d), got " + std::to_string(static_cast<int>(kind)));
    const bool mamba2 = kind == SsmKind::kMamba2;
    std::vector<std::pair<const char*, int>> dims = {{"n_features", n_features}, {"d_model", d_model},
                                                     {"n_layers", n_layers},     {"d_inner", d_inner},
                                                     {"d_state", d_state},       {"n_out", n_out}};
    if (mamba2) dims.insert(dims.end(), {{"headdim", headdim}, {"nheads", nheads}, {"d_conv", d_conv}, {"ngroups", ngroups}});
    for (const auto& [name, v] : dims) positive(name, v);
    need(std::isfinite(norm_eps) && norm_eps > 0.0f, "norm_eps must be finite and > 0, got " + std::to_string(norm_eps));
    if (mamba2) {
        need(static_cast<long long>(nheads) * headdim == d_inner,
             "nheads must equal d_inner / headdim (d_inner=" + std::to_string(d_inner) +
                 ", headdim=" + std::to_string(headdim) + "), got " + std::to_string(nheads));
        need(nheads % ngroups == 0,
             "ngroups must divide nheads (nheads=" + std::to_string(nheads) + "), got " + std::to_string(ngroups));
        need(!std::isnan(softplus_threshold), "softplus_threshold must not be NaN");
    }
    // The footprint before the per-dimension bounds, so that an absurd config (a corrupt or
    // hostile model file) is told what it would cost rather than only which field is too big.
    const SsmFootprint f = footprint();
    const bool weights_fit = f.weight_bytes <= kMaxWeightBytes, state_fits = f.state_bytes_per_slot <= kMaxStateBytes;
    if (!weights_fit || !state_fits)
        throw std::invalid_argument(
            "SsmConfig: model too large to run: " + sizes() + " needs " + format_bytes(f.weight_bytes) +
            " of weights" + (weights_fit ? "" : ", over the " + format_binary_bytes(kMaxWeightBytes) + " limit,") +
            " and " + format_bytes(f.state_bytes_per_slot) + " of state per instrument" +
            (state_fits ? "" : ", over the " + format_binary_bytes(kMaxStateBytes) + " limit for all instruments together") +
            ". The default model needs " + format_bytes(SsmConfig{}.footprint().weight_bytes) + " and " +
            format_bytes(SsmConfig{}.footprint().state_bytes_per_slot) +
            ": a model this size cannot step at tick speed, and a file asking for it is damaged or not made for "
            "this engine.");
    for (const auto& [name, v] : dims) at_most(name, v);
    if (mamba2)
        need(static_cast<long long>(ngroups) * d_state <= kMaxDim,
             "ngroups * d_state must be <= " + std::to_string(kMaxDim) + ", got ngroups=" +
                 std::to_string(ngroups) + " d_state=" + std::to_string(d_state));
}

// ------------------------------------------------------------------------------------------------
// Storage

struct SsmModel::Buffer {
    float* p = nullptr;
    explicit Buffer(size_t n) : p(alloc_aligned(n)) {}
    ~Buffer() { std::free(p); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
};

struct SsmModel::Layer {
    // Weights (inside weights_). mamba2 uses norm_w..out_wt; s4d uses norm_w, in_wt, dA, dB, C, D,
    // out_wt.
    const float* norm_w = nullptr;   // [ld_model]
    const float* in_wt = nullptr;    // [d_model][ld_in]
    const float* conv_wt = nullptr;  // [d_conv][ld_conv]
    const float* conv_b = nullptr;   // [ld_conv]
    const float* dt_bias = nullptr;  // [nheads]
    const float* A = nullptr;        // [nheads]
    const float* D = nullptr;        // mamba2 [nheads], s4d [d_inner]
    const float* D_elem = nullptr;   // mamba2: D[h] at every element h*headdim + p [ld_inner]
    const float* gnorm_w = nullptr;  // [ld_inner]
    const float* out_wt = nullptr;   // [d_inner][ld_model]
    const float* dA = nullptr;       // s4d, transposed: [N][ld_inner]
    const float* dB = nullptr;
    const float* C = nullptr;
    // State pool.
    std::shared_ptr<float> conv;  // [n_slots][d_conv-1][conv_dim]
    std::shared_ptr<float> ssm;   // [n_slots][N][nheads][headdim] or [n_slots][N][d_inner]
};

std::vector<std::pair<std::string, std::vector<size_t>>> SsmModel::tensor_shapes(const SsmConfig& c) {
    c.validate();
    using S = std::vector<size_t>;
    const size_t F = c.n_features, dm = c.d_model, di = c.d_inner, N = c.d_state;
    std::vector<std::pair<std::string, S>> t = {
        {"encoder.weight", S{dm, F}},
        {"encoder.bias", S{dm}},
    };
    for (int l = 0; l < c.n_layers; ++l) {
        const std::string p = "layers." + std::to_string(l) + ".";
        t.push_back({p + "norm.weight", S{dm}});
        t.push_back({p + "in_proj.weight", S{static_cast<size_t>(c.d_in_proj()), dm}});
        if (c.kind == SsmKind::kMamba2) {
            const size_t nh = c.nheads;
            t.push_back({p + "conv1d.weight", S{static_cast<size_t>(c.conv_dim()), static_cast<size_t>(c.d_conv)}});
            t.push_back({p + "conv1d.bias", S{static_cast<size_t>(c.conv_dim())}});
            t.push_back({p + "dt_bias", S{nh}});
            t.push_back({p + "A", S{nh}});
            t.push_back({p + "D", S{nh}});
            t.push_back({p + "norm_gated.weight", S{di}});
        } else {
            t.push_back({p + "dA", S{di, N}});
            t.push_back({p + "dB", S{di, N}});
            t.push_back({p + "C", S{di, N}});
            t.push_back({p + "D", S{di}});
        }
        t.push_back({p + "out_proj.weight", S{dm, di}});
    }
    t.push_back({"norm_f.weight", S{dm}});
    t.push_back({"head.weight", S{static_cast<size_t>(c.n_out), dm}});
    t.push_back({"head.bias", S{static_cast<size_t>(c.n_out)}});
    return t;
}

SsmModel::SsmModel(const SsmConfig& config, const TensorMap& tensors, int n_slots) : cfg_(config) {
    cfg_.validate();
    if (n_slots < 0) throw std::invalid_argument("SsmModel: n_slots must be >= 0, got " + std::to_string(n_slots));
    check_pool(n_slots);  // before the weights are copied: refuse what cannot run without allocating
    build_layout();
    load(tensors);
    alloc_states(n_slots, false);
}

SsmModel::~SsmModel() = default;

void SsmModel::build_layout() {
    const SsmConfig& c = cfg_;
    ld_model_ = pad16(c.d_model);
    ld_in_ = pad16(c.d_in_proj());
    ld_out_ = pad16(c.n_out);
    ld_conv_ = pad16(c.conv_dim());
    ld_inner_ = pad16(c.d_inner);
    // Exact in double: validate() bounded the footprint these are part of.
    conv_slot_ = static_cast<size_t>(conv_slot_floats(c));
    ssm_slot_ = static_cast<size_t>(ssm_slot_floats(c));
    head_w_ = c.kind == SsmKind::kMamba2 ? c.headdim : c.d_inner;
    // Scratch: one set per row of a block (the matvecs take up to kMaxRows rows at once), plus one
    // set for the per-row mixer in between, which runs a row at a time.
    const size_t ld_t = ld_model_ > ld_out_ ? ld_model_ : ld_out_;
    const size_t per_row = 2 * ld_model_ + ld_in_ + ld_inner_ + ld_t;
    const size_t ld_block_heads = pad16(static_cast<size_t>(kRowBlock) * (c.kind == SsmKind::kMamba2 ? c.nheads : 1));
    const size_t total = kRowBlock * per_row + ld_conv_ + 2 * ld_inner_ + 2 * ld_block_heads;
    scratch_ = std::make_unique<Buffer>(total);
    float* p = scratch_->p;
    auto take = [&](size_t n) {
        float* q = p;
        p += n;
        return q;
    };
    for (int r = 0; r < kRowBlock; ++r) {
        rows_[r].h = take(ld_model_);
        rows_[r].u = take(ld_model_);
        rows_[r].v = take(ld_in_);
        rows_[r].y = take(ld_inner_);
        rows_[r].t = take(ld_t);
    }
    a_ = take(ld_conv_);
    xdt_ = take(ld_inner_);
    daf_ = take(ld_inner_);
    dt_ = take(ld_block_heads);
    da_ = take(ld_block_heads);
}

void SsmModel::load(const TensorMap& tensors) {
    const SsmConfig& c = cfg_;
    const auto expected = tensor_shapes(c);
    for (const auto& kv : tensors) {
        bool known = false;
        for (const auto& e : expected) known = known || e.first == kv.first;
        if (!known) throw std::invalid_argument("SsmModel: unexpected tensor '" + kv.first + "' for this config");
    }
    auto get = [&](const std::string& name) -> const Tensor& {
        std::vector<size_t> shape;
        for (const auto& e : expected)
            if (e.first == name) shape = e.second;
        auto it = tensors.find(name);
        if (it == tensors.end())
            throw std::invalid_argument("SsmModel: missing tensor '" + name + "' (expected shape " + shape_str(shape) + ")");
        const Tensor& t = it->second;
        if (t.first != shape)
            throw std::invalid_argument("SsmModel: tensor '" + name + "' has shape " + shape_str(t.first) +
                                        ", expected " + shape_str(shape));
        size_t n = 1;
        for (size_t d : shape) n *= d;
        if (n > 0 && t.second == nullptr) throw std::invalid_argument("SsmModel: tensor '" + name + "' has no data");
        for (size_t i = 0; i < n; ++i)
            if (!std::isfinite(read_at(t.second, i)))
                throw std::invalid_argument("SsmModel: tensor '" + name + "' has a non-finite value at flat index " +
                                            std::to_string(i));
        return t;
    };
    for (const auto& e : expected) get(e.first);  // every check before any copy

    // Arena: each tensor starts on a 64-byte boundary; padding stays zero. Its size is the one
    // validate() checked against kMaxWeightBytes (exact in double below that limit).
    const size_t dm = c.d_model, di = c.d_inner, N = c.d_state, F = c.n_features;
    const size_t total = static_cast<size_t>(weight_arena_floats(c));
    weights_ = std::make_unique<Buffer>(total);
    float* cur = weights_->p;
    auto take = [&](size_t n) {
        float* p = cur;
        cur += pad16(n);
        return p;
    };
    // W [rows][cols] -> Wt [cols][ld]
    auto transposed = [&](const std::string& name, size_t rows, size_t cols, size_t ld) {
        const float* src = get(name).second;
        float* dst = take(cols * ld);
        for (size_t r = 0; r < rows; ++r)
            for (size_t k = 0; k < cols; ++k) dst[k * ld + r] = read_at(src, r * cols + k);
        return static_cast<const float*>(dst);
    };
    auto plain = [&](const std::string& name) {
        const Tensor& t = get(name);
        size_t n = 1;
        for (size_t d : t.first) n *= d;
        float* dst = take(n);
        for (size_t i = 0; i < n; ++i) dst[i] = read_at(t.second, i);
        return static_cast<const float*>(dst);
    };

    enc_wt_ = transposed("encoder.weight", dm, F, ld_model_);
    enc_b_ = plain("encoder.bias");
    layers_.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
        Layer& L = layers_[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        L.norm_w = plain(p + "norm.weight");
        L.in_wt = transposed(p + "in_proj.weight", c.d_in_proj(), dm, ld_in_);
        if (c.kind == SsmKind::kMamba2) {
            L.conv_wt = transposed(p + "conv1d.weight", c.conv_dim(), c.d_conv, ld_conv_);
            L.conv_b = plain(p + "conv1d.bias");
            L.dt_bias = plain(p + "dt_bias");
            L.A = plain(p + "A");
            L.D = plain(p + "D");
            float* d_elem = take(di);
            for (size_t i = 0; i < di; ++i) d_elem[i] = L.D[i / c.headdim];
            L.D_elem = d_elem;
            L.gnorm_w = plain(p + "norm_gated.weight");
        } else {
            L.dA = transposed(p + "dA", di, N, ld_inner_);
            L.dB = transposed(p + "dB", di, N, ld_inner_);
            L.C = transposed(p + "C", di, N, ld_inner_);
            L.D = plain(p + "D");
        }
        L.out_wt = transposed(p + "out_proj.weight", dm, di, ld_model_);
    }
    norm_f_ = plain("norm_f.weight");
    head_wt_ = transposed("head.weight", c.n_out, dm, ld_out_);
    head_b_ = plain("head.bias");
    // The footprint validate() measured must be what the layout takes, to the float.
    if (static_cast<size_t>(cur - weights_->p) != total)
        throw std::logic_error("SsmModel: weight arena of " + std::to_string(cur - weights_->p) + " floats, footprint " +
                               std::to_string(total) + " (internal error)");
}

// New zeroed pool of n_slots slots; with keep, the first min(old, new) slots are copied over.
void SsmModel::alloc_states(int n_slots, bool keep) {
    check_pool(n_slots);
    // Allocate everything first so that a bad_alloc leaves the old pool in place.
    std::vector<std::shared_ptr<float>> conv(layers_.size()), ssm(layers_.size());
    const size_t kept = keep ? static_cast<size_t>(n_slots < n_slots_ ? n_slots : n_slots_) : 0;
    for (size_t l = 0; l < layers_.size(); ++l) {
        if (conv_slot_ > 0) conv[l] = shared_aligned(conv_slot_ * n_slots);
        ssm[l] = shared_aligned(ssm_slot_ * n_slots);
    }
    for (size_t l = 0; l < layers_.size() && kept > 0; ++l) {
        if (conv_slot_ > 0) std::memcpy(conv[l].get(), layers_[l].conv.get(), conv_slot_ * kept * sizeof(float));
        std::memcpy(ssm[l].get(), layers_[l].ssm.get(), ssm_slot_ * kept * sizeof(float));
    }
    state_bases_.clear();
    state_slot_floats_.clear();
    for (size_t l = 0; l < layers_.size(); ++l) {
        layers_[l].conv = std::move(conv[l]);
        layers_[l].ssm = std::move(ssm[l]);
        if (conv_slot_ > 0) {
            state_bases_.push_back(layers_[l].conv.get());
            state_slot_floats_.push_back(conv_slot_);
        }
        state_bases_.push_back(layers_[l].ssm.get());
        state_slot_floats_.push_back(ssm_slot_);
    }
    n_slots_ = n_slots;
}

void SsmModel::check_pool(int n_slots) const {
    const double per_slot = cfg_.footprint().state_bytes_per_slot;
    const double total = per_slot * n_slots;
    if (total > kMaxStateBytes)
        throw std::invalid_argument("SsmModel: " + std::to_string(n_slots) + " instruments x " + format_bytes(per_slot) +
                                    " of state = " + format_bytes(total) + ", over the state pool's limit of " +
                                    format_binary_bytes(kMaxStateBytes) + " (" + cfg_.sizes() +
                                    "); run fewer instruments per engine or a smaller model.");
}

void SsmModel::zero_slot(int slot) {
    for (Layer& L : layers_) {
        if (L.conv) std::memset(L.conv.get() + conv_slot_ * slot, 0, conv_slot_ * sizeof(float));
        std::memset(L.ssm.get() + ssm_slot_ * slot, 0, ssm_slot_ * sizeof(float));
    }
}

void SsmModel::reset_slot(int slot) {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot < 0 || slot >= n_slots_)
        throw std::out_of_range("SsmModel.reset_slot: slot " + std::to_string(slot) + " not in [0, " +
                                std::to_string(n_slots_) + ")");
    zero_slot(slot);
}

void SsmModel::reset_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (Layer& L : layers_) {
        if (L.conv) std::memset(L.conv.get(), 0, conv_slot_ * n_slots_ * sizeof(float));
        std::memset(L.ssm.get(), 0, ssm_slot_ * n_slots_ * sizeof(float));
    }
}

void SsmModel::resize(int n_slots) {
    if (n_slots < 0) throw std::invalid_argument("SsmModel.resize: n_slots must be >= 0, got " + std::to_string(n_slots));
    std::lock_guard<std::mutex> lock(mu_);
    alloc_states(n_slots, false);
}

void SsmModel::grow(int n_slots) {
    std::lock_guard<std::mutex> lock(mu_);
    if (n_slots > n_slots_) alloc_states(n_slots, true);
}

SsmStateView SsmModel::conv_state(int layer) const {
    if (layer < 0 || layer >= cfg_.n_layers)
        throw std::out_of_range("SsmModel.conv_state: layer " + std::to_string(layer) + " not in [0, " +
                                std::to_string(cfg_.n_layers) + ")");
    if (cfg_.kind != SsmKind::kMamba2)
        throw std::invalid_argument("SsmModel.conv_state: s4d layers have no conv window");
    const Layer& L = layers_[layer];
    const size_t cd = cfg_.conv_dim();
    return SsmStateView{L.conv.get(),
                        {static_cast<size_t>(n_slots_), static_cast<size_t>(cfg_.d_conv - 1), cd},
                        {conv_slot_, cd, 1},
                        L.conv};
}

SsmStateView SsmModel::ssm_state(int layer) const {
    if (layer < 0 || layer >= cfg_.n_layers)
        throw std::out_of_range("SsmModel.ssm_state: layer " + std::to_string(layer) + " not in [0, " +
                                std::to_string(cfg_.n_layers) + ")");
    const Layer& L = layers_[layer];
    const size_t N = cfg_.d_state, w = head_w_;
    if (cfg_.kind == SsmKind::kMamba2) {  // stored [slot][n][h][p], shown [slot][h][p][n]
        const size_t nh = cfg_.nheads;
        return SsmStateView{L.ssm.get(), {static_cast<size_t>(n_slots_), nh, w, N}, {ssm_slot_, w, 1, nh * w}, L.ssm};
    }
    return SsmStateView{L.ssm.get(),  // stored [slot][n][c], shown [slot][c][n]
                        {static_cast<size_t>(n_slots_), w, N},
                        {ssm_slot_, 1, w},
                        L.ssm};
}

// ------------------------------------------------------------------------------------------------
// Step

void SsmModel::step(int n_rows, const int32_t* slots, const float* x, const uint8_t* reset, float* out) {
    if (n_rows < 0) throw std::invalid_argument("SsmModel.step: n_rows must be >= 0, got " + std::to_string(n_rows));
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < n_rows; ++i)
        if (slots[i] >= n_slots_)
            throw std::out_of_range("SsmModel.step: row " + std::to_string(i) + " has slot " +
                                    std::to_string(slots[i]) + " >= n_slots " + std::to_string(n_slots_));
    const int n_out = cfg_.n_out;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    // Blocks of up to kMaxRows consecutive non-padding rows with pairwise distinct slots: rows of
    // a block touch disjoint states, so running them together is running them in row order, and a
    // repeated slot starts a new block, after the earlier row has updated the state.
    static_assert(kMaxRows <= kRowBlock, "scratch holds kRowBlock rows");
    static_assert(kMaxRows <= StatePrefetch::kMaxSlots, "prefetch holds a block's slots");
    int block[kRowBlock];
    StatePrefetch pf;
    pf.bases = state_bases_.data();
    pf.slot_floats = state_slot_floats_.data();
    pf.n_arrays = static_cast<int>(state_bases_.size());
    int i = 0;
    while (i < n_rows) {
        int nb = 0;
        while (i < n_rows && nb < kMaxRows) {
            const int slot = slots[i];
            if (slot < 0) {
                for (int j = 0; j < n_out; ++j) out[static_cast<size_t>(i) * n_out + j] = nan;
                ++i;
                continue;
            }
            bool repeat = false;
            for (int q = 0; q < nb; ++q) repeat = repeat || slots[block[q]] == slot;
            if (repeat) break;
            block[nb++] = i++;
        }
        // The next block's slots (at most kMaxRows: a repeat there only prefetches more than needed).
        pf.clear();
        for (int j = i; j < n_rows && pf.n_slots < kMaxRows; ++j)
            if (slots[j] >= 0) pf.slots[pf.n_slots++] = slots[j];
        if (nb > 0) run_block(block, nb, slots, x, reset, out, &pf);
    }
}

void SsmModel::run_block(const int* rows, int nb, const int32_t* slots, const float* x, const uint8_t* reset,
                         float* out, StatePrefetch* pf) {
    const SsmConfig& c = cfg_;
    const int F = c.n_features, dm = c.d_model, n_out = c.n_out;
    const float* in[kRowBlock];
    for (int q = 0; q < nb; ++q) {
        if (reset && reset[rows[q]]) zero_slot(slots[rows[q]]);
        in[q] = x + static_cast<size_t>(rows[q]) * F;
    }
    auto ptrs = [&](float* RowScratch::*m, float** dst) {
        for (int q = 0; q < nb; ++q) dst[q] = rows_[q].*m;
    };
    float* h[kRowBlock];
    float* u[kRowBlock];
    float* v[kRowBlock];
    float* y[kRowBlock];
    float* t[kRowBlock];
    ptrs(&RowScratch::h, h);
    ptrs(&RowScratch::u, u);
    ptrs(&RowScratch::v, v);
    ptrs(&RowScratch::y, y);
    ptrs(&RowScratch::t, t);

    matvec(enc_wt_, ld_model_, in, F, enc_b_, h, nb, pf);
    for (const Layer& L : layers_) {
        for (int q = 0; q < nb; ++q) rmsnorm(h[q], L.norm_w, u[q], dm, c.norm_eps);
        matvec(L.in_wt, ld_in_, u, dm, nullptr, v, nb, pf);
        if (c.kind == SsmKind::kMamba2) heads_mamba2(L, v, nb);
        for (int q = 0; q < nb; ++q) {
            if (c.kind == SsmKind::kMamba2)
                row_mamba2(L, slots[rows[q]], v[q], dt_ + q * c.nheads, da_ + q * c.nheads, y[q]);
            else
                row_s4d(L, slots[rows[q]], v[q], y[q]);
        }
        // h + out_proj @ y2, the product summed on its own first (as the spec writes it).
        matvec(L.out_wt, ld_model_, y, c.d_inner, nullptr, t, nb, pf);
        for (int q = 0; q < nb; ++q)
            for (int j = 0; j < dm; ++j) h[q][j] = h[q][j] + t[q][j];
    }
    for (int q = 0; q < nb; ++q) rmsnorm(h[q], norm_f_, u[q], dm, c.norm_eps);
    matvec(head_wt_, ld_out_, u, dm, head_b_, t, nb, pf);
    for (int q = 0; q < nb; ++q)
        for (int j = 0; j < n_out; ++j) out[static_cast<size_t>(rows[q]) * n_out + j] = t[q][j];
}

// dt = softplus(dt_raw + dt_bias) and dA = exp(dt * A) for every head of the nb rows of a block,
// row q's head h in lane q*nheads + h of dt_ and da_. Pad lanes compute softplus(0) and exp(0) and
// are never read.
void SsmModel::heads_mamba2(const Layer& L, float* const* v_in, int nb) const {
    const SsmConfig& c = cfg_;
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

namespace {

// Causal depthwise conv for d_conv = 4 in one pass per channel: a = silu(b + w0*win0 + w1*win1 +
// w2*win2 + w3*x) summed in that order, and the window shifts (win0 <- win1 <- win2 <- x).
void conv4_silu(float* __restrict win0, float* __restrict win1, float* __restrict win2, const float* __restrict w0,
                const float* __restrict w1, const float* __restrict w2, const float* __restrict w3,
                const float* __restrict b, const float* __restrict x, float* __restrict a, int cd) {
    for (int ch = 0; ch < cd; ++ch) {
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

// One group's run of w elements: S[n, i] = da[i]*S[n, i] + xd[i]*B[n]; y[i] = sum_n S[n, i]*C[n]
// (n ascending, from zero); then y = (y + D*xs) * silu(z), the gate of the spec. Tiles of
// kTileVecs vectors keep da, xd and the y accumulators in registers across the n loop, so each
// state vector costs one load and one store.
constexpr int kTileVecs = kVec == 16 ? 4 : 2;  // 3 * kTileVecs live vectors: within 16 or 32 registers
void ssm_update(float* __restrict S, size_t n_stride, int N, int w, const float* __restrict da,
                const float* __restrict xd, const float* __restrict B, const float* __restrict C,
                const float* __restrict D, const float* __restrict xs, const float* __restrict z,
                float* __restrict y) {
    constexpr int TW = kTileVecs * kVec;
    int i0 = 0;
    for (; i0 + TW <= w; i0 += TW) {
        vfloat dav[kTileVecs], xdv[kTileVecs], acc[kTileVecs];
        for (int t = 0; t < kTileVecs; ++t) {
            std::memcpy(&dav[t], da + i0 + t * kVec, sizeof(vfloat));
            std::memcpy(&xdv[t], xd + i0 + t * kVec, sizeof(vfloat));
            acc[t] = vfloat{};
        }
        for (int n = 0; n < N; ++n) {
            const vfloat bn = splat(B[n], std::make_index_sequence<kVec>{});
            const vfloat cn = splat(C[n], std::make_index_sequence<kVec>{});
            float* s = S + static_cast<size_t>(n) * n_stride + i0;
            for (int t = 0; t < kTileVecs; ++t) {
                vfloat sv;
                std::memcpy(&sv, s + t * kVec, sizeof sv);
                const vfloat v = dav[t] * sv + xdv[t] * bn;
                std::memcpy(s + t * kVec, &v, sizeof v);
                acc[t] += v * cn;
            }
        }
        for (int t = 0; t < kTileVecs; ++t) std::memcpy(y + i0 + t * kVec, &acc[t], sizeof(vfloat));
    }
    if (i0 < w) {
        for (int i = i0; i < w; ++i) y[i] = 0.0f;
        for (int n = 0; n < N; ++n) {
            const float bn = B[n], cn = C[n];
            float* __restrict s = S + static_cast<size_t>(n) * n_stride;
            for (int i = i0; i < w; ++i) {
                const float v = da[i] * s[i] + xd[i] * bn;
                s[i] = v;
                y[i] += v * cn;
            }
        }
    }
    for (int i = 0; i < w; ++i) y[i] = (y[i] + D[i] * xs[i]) * vm::silu(z[i]);
}

}  // namespace

// From v_in = in_proj output of one row (and its heads' dt, exp(dt*A)) to y_out = the gated,
// normed input of out_proj, updating the slot's states.
void SsmModel::row_mamba2(const Layer& L, int slot, const float* v_in, const float* dt, const float* da,
                          float* y_out) {
    const SsmConfig& c = cfg_;
    const int di = c.d_inner, cd = c.conv_dim(), dc = c.d_conv, nh = c.nheads, hd = c.headdim, N = c.d_state;
    const int G = c.ngroups, heads_per_group = nh / G;
    const float* z = v_in;
    const float* xbc = v_in + di;

    float* win = L.conv.get() + conv_slot_ * slot;
    float* a = a_;
    if (dc == 4) {
        const size_t cds = static_cast<size_t>(cd);
        conv4_silu(win, win + cds, win + 2 * cds, L.conv_wt, L.conv_wt + ld_conv_, L.conv_wt + 2 * ld_conv_,
                   L.conv_wt + 3 * ld_conv_, L.conv_b, xbc, a, cd);
    } else {
        conv_silu(win, L.conv_wt, ld_conv_, dc, L.conv_b, xbc, a, cd);
    }

    // Per n, the heads of one group are one contiguous run of the pool ([n][h][p] per slot), so
    // the update runs across the whole run (d_inner for G = 1) with the per-head factors as
    // vectors (daf_, xdt_).
    for (int h = 0; h < nh; ++h)
        for (int p = 0; p < hd; ++p) {
            xdt_[h * hd + p] = dt[h] * a[h * hd + p];
            daf_[h * hd + p] = da[h];
        }
    float* S = L.ssm.get() + ssm_slot_ * slot;
    const int run = heads_per_group * hd;
    for (int g = 0; g < G; ++g) {
        const size_t i0 = static_cast<size_t>(g) * run;
        ssm_update(S + i0, di, N, run, daf_ + i0, xdt_ + i0, a + di + g * N, a + di + G * N + g * N, L.D_elem + i0,
                   a + i0, z + i0, y_out + i0);
    }
    // RMSNorm of the gated product over all of d_inner at once (the spec's order).
    rmsnorm(y_out, L.gnorm_w, y_out, di, c.norm_eps);
}

void SsmModel::row_s4d(const Layer& L, int slot, float* v_in, float* y_out) {
    const SsmConfig& c = cfg_;
    const int di = c.d_inner, N = c.d_state;
    const float* xx = v_in;
    float* z = v_in + di;
    // S[n,:] = dA[n,:]*S[n,:] + dB[n,:]*xx; y += C[n,:]*S[n,:], n ascending (all stored [n][c]).
    float* S = L.ssm.get() + ssm_slot_ * slot;
    for (int ch = 0; ch < di; ++ch) y_out[ch] = 0.0f;
    for (int n = 0; n < N; ++n) {
        float* __restrict s = S + static_cast<size_t>(n) * di;
        const float* __restrict dA = L.dA + static_cast<size_t>(n) * ld_inner_;
        const float* __restrict dB = L.dB + static_cast<size_t>(n) * ld_inner_;
        const float* __restrict C = L.C + static_cast<size_t>(n) * ld_inner_;
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

}  // namespace nextick
