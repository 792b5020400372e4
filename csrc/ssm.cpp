// SSM step kernel; the contract is in ssm.hpp.
//
// Layout choices, all for the vectorizer (plain loops, GCC -O3; no intrinsics, so a portable build
// computes the same bits through narrower vectors):
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
#include "ssm.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>
#include <stdexcept>

#include "vmath.hpp"

namespace nextick {

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

// Matvec block for R rows at once: y[r][j0 + j] = init[j0 + j] (or 0) + sum_{k=0}^{K-1}
// wt[k*ld + j0 + j] * u[r][k], k ascending, for j < JB. JB and R are compile-time so that the R*JB
// accumulators are registers for the whole k loop; each weight vector is loaded once for R rows
// (at batch 1 the weights stream from L2 and bound the speed; R rows share that stream), and the
// R*JB/16 independent add chains hide the add latency. Each output is still one accumulator summed
// in the order k = 0..K-1, so the result of a row does not depend on R or on the other rows.
template <int R, int JB>
inline void mv_block(const float* __restrict wt, size_t ld, const float* const* u, int k_n,
                     const float* __restrict init, float* const* y, size_t j0) {
    float acc[R][JB];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < JB; ++j) acc[r][j] = init ? init[j0 + j] : 0.0f;
    const float* up[R];
    for (int r = 0; r < R; ++r) up[r] = u[r];
    for (int k = 0; k < k_n; ++k) {
        const float* w = wt + static_cast<size_t>(k) * ld + j0;
        for (int r = 0; r < R; ++r) {
            const float uk = up[r][k];
            for (int j = 0; j < JB; ++j) acc[r][j] += w[j] * uk;
        }
    }
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < JB; ++j) y[r][j0 + j] = acc[r][j];
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
                    size_t j0) {
    if constexpr (W > 0) {
        if (ld - j0 == static_cast<size_t>(W))
            mv_block<R, W>(wt, ld, u, k_n, init, y, j0);
        else
            mv_tail<R, W - 16>(wt, ld, u, k_n, init, y, j0);
    }
}

template <int R>
void mv_rows(const float* wt, size_t ld, const float* const* u, int k_n, const float* init, float* const* y) {
    constexpr int JB = block_width(R);
    size_t j = 0;
    for (; j + JB <= ld; j += JB) mv_block<R, JB>(wt, ld, u, k_n, init, y, j);
    mv_tail<R, JB - 16>(wt, ld, u, k_n, init, y, j);
}

// y[r][0:ld] = init (or 0) + wt^T u[r] over k = 0..k_n-1 for r < rows <= kMaxRows, with wt stored
// [k_n][ld], ld a multiple of 16.
void matvec(const float* wt, size_t ld, const float* const* u, int k_n, const float* init, float* const* y,
            int rows) {
    switch (rows) {
        case 1: mv_rows<1>(wt, ld, u, k_n, init, y); break;
        case 2: mv_rows<2>(wt, ld, u, k_n, init, y); break;
#if !defined(__AVX512F__) && !defined(__AVX__)
        default: break;
#else
        case 3: mv_rows<3>(wt, ld, u, k_n, init, y); break;
        default: mv_rows<4>(wt, ld, u, k_n, init, y); break;
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

// Prefetch n_floats from p towards L2 (a hint: no effect on results; compiles to nothing where
// the target has no prefetch instruction). L2, not L1: a row streams its weights (~225 KB for the
// default config) through L1, which would evict the lines before their use.
inline void prefetch_l2(const float* p, size_t n_floats) {
#if defined(__GNUC__)
    const char* c = reinterpret_cast<const char*>(p);
    for (size_t off = 0; off < n_floats * sizeof(float); off += 64) __builtin_prefetch(c + off, 0, 2);
#else
    (void)p;
    (void)n_floats;
#endif
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

int SsmConfig::conv_dim() const { return kind == SsmKind::kMamba2 ? d_inner + 2 * ngroups * d_state : 0; }

int SsmConfig::d_in_proj() const {
    return kind == SsmKind::kMamba2 ? 2 * d_inner + 2 * ngroups * d_state + nheads : 2 * d_inner;
}

void SsmConfig::validate() const {
    auto need = [](bool ok, const std::string& msg) {
        if (!ok) throw std::invalid_argument("SsmConfig." + msg);
    };
    auto dim = [&](const char* name, int v) {
        need(v >= 1 && v <= kMaxDim,
             std::string(name) + " must be in [1, " + std::to_string(kMaxDim) + "], got " + std::to_string(v));
    };
    need(kind == SsmKind::kMamba2 || kind == SsmKind::kS4D,
         "kind must be 0 (mamba2) or 1 (s4d), got " + std::to_string(static_cast<int>(kind)));
    dim("n_features", n_features);
    dim("d_model", d_model);
    dim("n_layers", n_layers);
    dim("d_inner", d_inner);
    dim("d_state", d_state);
    dim("n_out", n_out);
    need(std::isfinite(norm_eps) && norm_eps > 0.0f, "norm_eps must be finite and > 0, got " + std::to_string(norm_eps));
    if (kind == SsmKind::kMamba2) {
        dim("headdim", headdim);
        dim("nheads", nheads);
        dim("d_conv", d_conv);
        dim("ngroups", ngroups);
        need(static_cast<long long>(nheads) * headdim == d_inner,
             "nheads must equal d_inner / headdim (d_inner=" + std::to_string(d_inner) +
                 ", headdim=" + std::to_string(headdim) + "), got " + std::to_string(nheads));
        need(nheads % ngroups == 0,
             "ngroups must divide nheads (nheads=" + std::to_string(nheads) + "), got " + std::to_string(ngroups));
        need(static_cast<long long>(ngroups) * d_state <= kMaxDim,
             "ngroups * d_state must be <= " + std::to_string(kMaxDim) + ", got ngroups=" +
                 std::to_string(ngroups) + " d_state=" + std::to_string(d_state));
        need(!std::isnan(softplus_threshold), "softplus_threshold must not be NaN");
    }
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
    if (c.kind == SsmKind::kMamba2) {
        conv_slot_ = static_cast<size_t>(c.d_conv - 1) * c.conv_dim();
        ssm_slot_ = static_cast<size_t>(c.nheads) * c.headdim * c.d_state;
        head_w_ = c.headdim;
    } else {
        conv_slot_ = 0;
        ssm_slot_ = static_cast<size_t>(c.d_inner) * c.d_state;
        head_w_ = c.d_inner;
    }
    // Scratch: one set per row of a block (the matvecs take up to kMaxRows rows at once), plus one
    // set for the per-row mixer in between, which runs a row at a time.
    const size_t ld_heads = pad16(c.kind == SsmKind::kMamba2 ? c.nheads : 1);
    const size_t ld_t = ld_model_ > ld_out_ ? ld_model_ : ld_out_;
    const size_t per_row = 2 * ld_model_ + ld_in_ + ld_inner_ + ld_t;
    const size_t total = kRowBlock * per_row + ld_conv_ + 2 * ld_inner_ + 2 * ld_heads;
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
    dt_ = take(ld_heads);
    da_ = take(ld_heads);
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

    // Arena: each tensor starts on a 64-byte boundary; padding stays zero.
    const size_t dm = c.d_model, di = c.d_inner, N = c.d_state, F = c.n_features;
    const size_t per_layer =
        c.kind == SsmKind::kMamba2
            ? ld_model_ + dm * ld_in_ + static_cast<size_t>(c.d_conv) * ld_conv_ + ld_conv_ + 3 * pad16(c.nheads) +
                  ld_inner_ + di * ld_model_
            : ld_model_ + dm * ld_in_ + 3 * N * ld_inner_ + ld_inner_ + di * ld_model_;
    const size_t total = F * ld_model_ + 2 * ld_model_ + dm * ld_out_ + ld_out_ + c.n_layers * per_layer;
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
    if (static_cast<size_t>(cur - weights_->p) > pad16(total))
        throw std::logic_error("SsmModel: weight arena overflow (internal error)");
}

// New zeroed pool of n_slots slots; with keep, the first min(old, new) slots are copied over.
void SsmModel::alloc_states(int n_slots, bool keep) {
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
    for (size_t l = 0; l < layers_.size(); ++l) {
        layers_[l].conv = std::move(conv[l]);
        layers_[l].ssm = std::move(ssm[l]);
    }
    n_slots_ = n_slots;
}

void SsmModel::zero_slot(int slot) {
    for (Layer& L : layers_) {
        if (L.conv) std::memset(L.conv.get() + conv_slot_ * slot, 0, conv_slot_ * sizeof(float));
        std::memset(L.ssm.get() + ssm_slot_ * slot, 0, ssm_slot_ * sizeof(float));
    }
}

// The states of a slot a later block will use: with thousands of slots they live in L3 or DRAM,
// and the current block's compute hides the fetch.
void SsmModel::prefetch_slot(int slot) const {
    for (const Layer& L : layers_) {
        if (L.conv) prefetch_l2(L.conv.get() + conv_slot_ * slot, conv_slot_);
        prefetch_l2(L.ssm.get() + ssm_slot_ * slot, ssm_slot_);
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
    int block[kRowBlock];
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
        for (int j = i, seen = 0; j < n_rows && seen < kMaxRows; ++j)
            if (slots[j] >= 0) {
                prefetch_slot(slots[j]);
                ++seen;
            }
        if (nb > 0) run_block(block, nb, slots, x, reset, out);
    }
}

void SsmModel::run_block(const int* rows, int nb, const int32_t* slots, const float* x, const uint8_t* reset,
                         float* out) {
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

    matvec(enc_wt_, ld_model_, in, F, enc_b_, h, nb);
    for (const Layer& L : layers_) {
        for (int q = 0; q < nb; ++q) rmsnorm(h[q], L.norm_w, u[q], dm, c.norm_eps);
        matvec(L.in_wt, ld_in_, u, dm, nullptr, v, nb);
        for (int q = 0; q < nb; ++q) {
            if (c.kind == SsmKind::kMamba2)
                row_mamba2(L, slots[rows[q]], v[q], y[q]);
            else
                row_s4d(L, slots[rows[q]], v[q], y[q]);
        }
        // h + out_proj @ y2, the product summed on its own first (as the spec writes it).
        matvec(L.out_wt, ld_model_, y, c.d_inner, nullptr, t, nb);
        for (int q = 0; q < nb; ++q)
            for (int j = 0; j < dm; ++j) h[q][j] = h[q][j] + t[q][j];
    }
    for (int q = 0; q < nb; ++q) rmsnorm(h[q], norm_f_, u[q], dm, c.norm_eps);
    matvec(head_wt_, ld_out_, u, dm, head_b_, t, nb);
    for (int q = 0; q < nb; ++q)
        for (int j = 0; j < n_out; ++j) out[static_cast<size_t>(rows[q]) * n_out + j] = t[q][j];
}

// From v_in = in_proj output of one row to y_out = the gated, normed input of out_proj, updating
// the slot's states. v_in is overwritten (z goes through silu in place).
void SsmModel::row_mamba2(const Layer& L, int slot, float* v_in, float* y_out) {
    const SsmConfig& c = cfg_;
    const int di = c.d_inner, cd = c.conv_dim(), dc = c.d_conv, nh = c.nheads, hd = c.headdim, N = c.d_state;
    const int G = c.ngroups, heads_per_group = nh / G;
    float* z = v_in;
    const float* xbc = v_in + di;
    const float* dt_raw = v_in + di + cd;

    // Causal depthwise conv over the window plus this step's raw xBC, then the window shifts.
    float* win = L.conv.get() + conv_slot_ * slot;
    float* a = a_;
    for (int ch = 0; ch < cd; ++ch) a[ch] = L.conv_b[ch];
    for (int k = 0; k < dc - 1; ++k) {
        const float* w = L.conv_wt + static_cast<size_t>(k) * ld_conv_;
        const float* s = win + static_cast<size_t>(k) * cd;
        for (int ch = 0; ch < cd; ++ch) a[ch] += w[ch] * s[ch];
    }
    {
        const float* w = L.conv_wt + static_cast<size_t>(dc - 1) * ld_conv_;
        for (int ch = 0; ch < cd; ++ch) a[ch] += w[ch] * xbc[ch];
    }
    if (dc > 1) {
        std::memmove(win, win + cd, static_cast<size_t>(dc - 2) * cd * sizeof(float));
        std::memcpy(win + static_cast<size_t>(dc - 2) * cd, xbc, static_cast<size_t>(cd) * sizeof(float));
    }
    vm::vsilu_inplace(a, cd);

    for (int h = 0; h < nh; ++h) dt_[h] = vm::softplus(dt_raw[h] + L.dt_bias[h], c.softplus_threshold);
    for (int h = 0; h < nh; ++h) da_[h] = vm::exp(dt_[h] * L.A[h]);

    // S[n,i] = dA[h(i)]*S[n,i] + xdt[i]*B[g,n]; y[i] += S[n,i]*C[g,n], n ascending, i = h*headdim + p.
    // Per n, the heads of one group are one contiguous run of the pool, so the inner loop is long
    // (d_inner for G = 1) and the per-head factors come in as vectors (daf_, xdt_).
    float* S = L.ssm.get() + ssm_slot_ * slot;
    for (int h = 0; h < nh; ++h)
        for (int p = 0; p < hd; ++p) {
            xdt_[h * hd + p] = dt_[h] * a[h * hd + p];
            daf_[h * hd + p] = da_[h];
        }
    for (int j = 0; j < di; ++j) y_out[j] = 0.0f;
    const int run = heads_per_group * hd;
    for (int n = 0; n < N; ++n) {
        for (int g = 0; g < G; ++g) {
            const float bn = a[di + g * N + n];
            const float cn = a[di + G * N + g * N + n];
            const size_t i0 = static_cast<size_t>(g) * run;
            float* __restrict s = S + static_cast<size_t>(n) * di + i0;
            const float* __restrict da = daf_ + i0;
            const float* __restrict xd = xdt_ + i0;
            float* __restrict y = y_out + i0;
            for (int i = 0; i < run; ++i) {
                const float v = da[i] * s[i] + xd[i] * bn;
                s[i] = v;
                y[i] += v * cn;
            }
        }
    }
    for (int h = 0; h < nh; ++h) {
        const float Dh = L.D[h];
        for (int p = 0; p < hd; ++p) y_out[h * hd + p] = y_out[h * hd + p] + Dh * a[h * hd + p];
    }

    // Gate first, then RMSNorm of the gated product over all of d_inner at once (the spec's order).
    vm::vsilu_inplace(z, di);
    for (int j = 0; j < di; ++j) y_out[j] = y_out[j] * z[j];
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
