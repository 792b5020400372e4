// SsmModel: config, weights, the state pool, row blocks and the choice of kernel variant; the
// contract is in ssm.hpp, the step itself in ssm_kernel.cpp (compiled once per instruction set).
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

#include "ssm_kernel.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace nextick {

namespace {

constexpr int kMaxDim = 1 << 16;

std::string shape_str(const std::vector<size_t>& s) {
    std::ostringstream o;
    o << '[';
    for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    o << ']';
    return o.str();
}

float* alloc_aligned(size_t n_floats) {
    size_t bytes = pad16(n_floats == 0 ? 1 : n_floats) * sizeof(float);
    size_t align = 64;
#if defined(__linux__)
    // A state pool of a thousand instruments (20 MB) spans 5,000 4 KB pages, past the reach of the
    // second-level TLB: on transparent huge pages each step's state reads stop costing page walks.
    // Only speed depends on this.
    constexpr size_t kHugePage = size_t(2) << 20;
    if (bytes >= kHugePage / 2) {  // a layer's conv windows for 1,024 instruments are 1.9 MB
        align = kHugePage;
        bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    }
#endif
    void* p = std::aligned_alloc(align, bytes);
    if (!p) throw std::bad_alloc();
#if defined(__linux__)
    if (align > 64) madvise(p, bytes, MADV_HUGEPAGE);  // advisory: ignored where THP is off
#endif
    std::memset(p, 0, bytes);
    return static_cast<float*>(p);
}

std::shared_ptr<float> shared_aligned(size_t n_floats) {
    return std::shared_ptr<float>(alloc_aligned(n_floats), [](float* p) { std::free(p); });
}

// Tensor reads go through memcpy: the caller's arrays need not be aligned.
float read_at(const float* p, size_t i) {
    float f;
    std::memcpy(&f, p + i, sizeof f);
    return f;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Kernel variants

namespace {

// The variants compiled into this build (CMake defines NEXTICK_KERNEL_<NAME> for each one it
// builds; a build of ssm_kernel.cpp without CMake is the one "generic" variant) that this CPU runs,
// best first. __builtin_cpu_supports also checks that the OS saves the vector registers (XCR0).
#if defined(__x86_64__) || defined(__i386__)
bool cpu_has_avx512() {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2");
}

bool cpu_has_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("movbe");
}

// AMD family 19h with AVX-512 is Zen 4 (Zen 3, the same family, has none): its AVX-512 units run a
// 512-bit operation as two 256-bit halves, and 256-bit matvecs over AVX-512's 32 registers run
// ~15% faster there. Everything else with AVX-512 (Intel, Zen 5) takes 512-bit vectors.
bool cpu_splits_512() {
    if (!__builtin_cpu_is("amd")) return false;
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    unsigned family = (eax >> 8) & 0xf;
    if (family == 0xf) family += (eax >> 20) & 0xff;
    return family == 0x19;
}
#endif

const std::vector<const SsmKernel*>& runnable_kernels() {
    static const std::vector<const SsmKernel*> v = [] {
        std::vector<const SsmKernel*> out;
#if defined(NEXTICK_KERNEL_AVX512) && defined(NEXTICK_KERNEL_AVX512_256)
        if (cpu_has_avx512()) {
            const bool split = cpu_splits_512();
            out.push_back(split ? &ssm_kernel_avx512_256() : &ssm_kernel_avx512());
            out.push_back(split ? &ssm_kernel_avx512() : &ssm_kernel_avx512_256());
        }
#endif
#if defined(NEXTICK_KERNEL_AVX2)
        if (cpu_has_avx2()) out.push_back(&ssm_kernel_avx2());
#endif
#if defined(NEXTICK_KERNEL_SSE2)
        out.push_back(&ssm_kernel_sse2());
#endif
#if defined(NEXTICK_KERNEL_NEON)
        out.push_back(&ssm_kernel_neon());
#endif
#if !defined(NEXTICK_KERNEL_AVX512) && !defined(NEXTICK_KERNEL_AVX2) && !defined(NEXTICK_KERNEL_SSE2) && \
    !defined(NEXTICK_KERNEL_NEON)
        out.push_back(&ssm_kernel_generic());
#endif
        return out;
    }();
    return v;
}

const SsmKernel* find_kernel(const std::string& name) {
    std::vector<std::string> names;
    for (const SsmKernel* k : runnable_kernels()) {
        if (name == "auto" || name == k->name) return k;
        names.push_back(k->name);
    }
    std::string all;
    for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
    throw std::invalid_argument("SsmModel: kernel '" + name + "' is not one this build and CPU can run; use auto or one of: " +
                                all);
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

SsmModel::SsmModel(const SsmConfig& config, const TensorMap& tensors, int n_slots)
    : cfg_(config), plan_(std::make_unique<SsmPlan>()) {
    cfg_.validate();
    plan_->cfg = cfg_;
    if (n_slots < 0) throw std::invalid_argument("SsmModel: n_slots must be >= 0, got " + std::to_string(n_slots));
    check_pool(cfg_, n_slots, "SsmModel");  // before the weights are copied: refuse what cannot run without allocating
    const char* env = std::getenv("NEXTICK_SSM_KERNEL");
    kernel_ = find_kernel(env && *env ? env : "auto");
    build_layout();
    load(tensors);
    alloc_states(n_slots, false);
}

SsmModel::~SsmModel() = default;

void SsmModel::build_layout() {
    const SsmConfig& c = cfg_;
    plan_->ld_model = pad16(c.d_model);
    plan_->ld_in = pad16(c.d_in_proj());
    plan_->ld_out = pad16(c.n_out);
    plan_->ld_conv = pad16(c.conv_dim());
    plan_->ld_inner = pad16(c.d_inner);
    // Exact in double: validate() bounded the footprint these are part of.
    plan_->conv_slot = static_cast<size_t>(conv_slot_floats(c));
    plan_->ssm_slot = static_cast<size_t>(ssm_slot_floats(c));
    head_w_ = c.kind == SsmKind::kMamba2 ? c.headdim : c.d_inner;
    // Scratch: one set per row of a block (the matvecs take up to kMaxRows rows at once), plus one
    // set for the per-row mixer in between, which runs a row at a time.
    const size_t ld_t = plan_->ld_model > plan_->ld_out ? plan_->ld_model : plan_->ld_out;
    const size_t per_row = 2 * plan_->ld_model + plan_->ld_in + plan_->ld_inner + ld_t;
    const size_t ld_block_heads = pad16(static_cast<size_t>(kMaxBlockRows) * (c.kind == SsmKind::kMamba2 ? c.nheads : 1));
    const size_t total = kMaxBlockRows * per_row + plan_->ld_conv + 2 * plan_->ld_inner + 2 * ld_block_heads;
    scratch_ = std::make_unique<Buffer>(total);
    float* p = scratch_->p;
    auto take = [&](size_t n) {
        float* q = p;
        p += n;
        return q;
    };
    for (int r = 0; r < kMaxBlockRows; ++r) {
        plan_->rows[r].h = take(plan_->ld_model);
        plan_->rows[r].u = take(plan_->ld_model);
        plan_->rows[r].v = take(plan_->ld_in);
        plan_->rows[r].y = take(plan_->ld_inner);
        plan_->rows[r].t = take(ld_t);
    }
    plan_->a = take(plan_->ld_conv);
    plan_->xdt = take(plan_->ld_inner);
    plan_->daf = take(plan_->ld_inner);
    plan_->dt = take(ld_block_heads);
    plan_->da = take(ld_block_heads);
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
    // A matrix of the matvecs, W [rows][cols] -> W^T [cols][ld] in panels of 16 outputs (panel_at)
    auto panelled = [&](const std::string& name, size_t rows, size_t cols, size_t ld) {
        const float* src = get(name).second;
        float* dst = take(cols * ld);
        for (size_t r = 0; r < rows; ++r)
            for (size_t k = 0; k < cols; ++k) dst[panel_at(cols, k, r)] = read_at(src, r * cols + k);
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

    plan_->enc_wt = panelled("encoder.weight", dm, F, plan_->ld_model);
    plan_->enc_b = plain("encoder.bias");
    layers_.resize(c.n_layers);
    plan_->layers = layers_.data();
    for (int l = 0; l < c.n_layers; ++l) {
        SsmLayer& L = layers_[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        L.norm_w = plain(p + "norm.weight");
        L.in_wt = panelled(p + "in_proj.weight", c.d_in_proj(), dm, plan_->ld_in);
        if (c.kind == SsmKind::kMamba2) {
            L.conv_wt = transposed(p + "conv1d.weight", c.conv_dim(), c.d_conv, plan_->ld_conv);
            L.conv_b = plain(p + "conv1d.bias");
            L.dt_bias = plain(p + "dt_bias");
            L.A = plain(p + "A");
            L.D = plain(p + "D");
            float* d_elem = take(di);
            for (size_t i = 0; i < di; ++i) d_elem[i] = L.D[i / c.headdim];
            L.D_elem = d_elem;
            L.gnorm_w = plain(p + "norm_gated.weight");
        } else {
            L.dA = transposed(p + "dA", di, N, plan_->ld_inner);
            L.dB = transposed(p + "dB", di, N, plan_->ld_inner);
            L.C = transposed(p + "C", di, N, plan_->ld_inner);
            L.D = plain(p + "D");
        }
        L.out_wt = panelled(p + "out_proj.weight", dm, di, plan_->ld_model);
    }
    plan_->norm_f = plain("norm_f.weight");
    plan_->head_wt = panelled("head.weight", c.n_out, dm, plan_->ld_out);
    plan_->head_b = plain("head.bias");
    // The footprint validate() measured must be what the layout takes, to the float.
    if (static_cast<size_t>(cur - weights_->p) != total)
        throw std::logic_error("SsmModel: weight arena of " + std::to_string(cur - weights_->p) + " floats, footprint " +
                               std::to_string(total) + " (internal error)");
}

// New zeroed pool of n_slots slots; with keep, the first min(old, new) slots are copied over.
void SsmModel::alloc_states(int n_slots, bool keep) {
    check_pool(cfg_, n_slots, "SsmModel");
    // Allocate everything first so that a bad_alloc leaves the old pool in place.
    std::vector<std::shared_ptr<float>> conv(layers_.size()), ssm(layers_.size());
    const size_t kept = keep ? static_cast<size_t>(n_slots < n_slots_ ? n_slots : n_slots_) : 0;
    for (size_t l = 0; l < layers_.size(); ++l) {
        if (plan_->conv_slot > 0) conv[l] = shared_aligned(plan_->conv_slot * n_slots);
        ssm[l] = shared_aligned(plan_->ssm_slot * n_slots);
    }
    for (size_t l = 0; l < layers_.size() && kept > 0; ++l) {
        if (plan_->conv_slot > 0) std::memcpy(conv[l].get(), layers_[l].conv.get(), plan_->conv_slot * kept * sizeof(float));
        std::memcpy(ssm[l].get(), layers_[l].ssm.get(), plan_->ssm_slot * kept * sizeof(float));
    }
    state_bases_.clear();
    state_slot_floats_.clear();
    for (size_t l = 0; l < layers_.size(); ++l) {
        layers_[l].conv = std::move(conv[l]);
        layers_[l].ssm = std::move(ssm[l]);
        if (plan_->conv_slot > 0) {
            state_bases_.push_back(layers_[l].conv.get());
            state_slot_floats_.push_back(plan_->conv_slot);
        }
        state_bases_.push_back(layers_[l].ssm.get());
        state_slot_floats_.push_back(plan_->ssm_slot);
    }
    n_slots_ = n_slots;
}

void SsmModel::check_pool(const SsmConfig& cfg, int n_slots, const char* who) {
    const double per_slot = cfg.footprint().state_bytes_per_slot;
    const double total = per_slot * n_slots;
    if (total > kMaxStateBytes)
        throw std::invalid_argument(std::string(who) + ": " + std::to_string(n_slots) + " instruments x " + format_bytes(per_slot) +
                                    " of state = " + format_bytes(total) + ", over the state pool's limit of " +
                                    format_binary_bytes(kMaxStateBytes) + " (" + cfg.sizes() +
                                    "); run fewer instruments per engine or a smaller model.");
}

void SsmModel::zero_slot(int slot) {
    for (SsmLayer& L : layers_) {
        if (L.conv) std::memset(L.conv.get() + plan_->conv_slot * slot, 0, plan_->conv_slot * sizeof(float));
        std::memset(L.ssm.get() + plan_->ssm_slot * slot, 0, plan_->ssm_slot * sizeof(float));
    }
}

void SsmModel::reset_slot(int slot) {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot < 0 || slot >= n_slots_)
        throw std::out_of_range("SsmModel.reset_slot: slot " + std::to_string(slot) + " not in [0, " +
                                std::to_string(n_slots_) + ")");
    zero_slot(slot);
}

size_t SsmModel::state_size() const { return static_cast<size_t>(cfg_.n_layers) * (plan_->conv_slot + plan_->ssm_slot); }

void SsmModel::get_state(int slot, float* dst) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot < 0 || slot >= n_slots_)
        throw std::out_of_range("SsmModel.get_state: slot " + std::to_string(slot) + " not in [0, " +
                                std::to_string(n_slots_) + ")");
    const size_t cs = plan_->conv_slot, ss = plan_->ssm_slot;
    for (const SsmLayer& L : layers_) {
        if (cs) std::memcpy(dst, L.conv.get() + cs * slot, cs * sizeof(float));
        std::memcpy(dst + cs, L.ssm.get() + ss * slot, ss * sizeof(float));
        dst += cs + ss;
    }
}

void SsmModel::set_state(int slot, const float* src) {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot < 0 || slot >= n_slots_)
        throw std::out_of_range("SsmModel.set_state: slot " + std::to_string(slot) + " not in [0, " +
                                std::to_string(n_slots_) + ")");
    const size_t cs = plan_->conv_slot, ss = plan_->ssm_slot;
    for (SsmLayer& L : layers_) {
        if (cs) std::memcpy(L.conv.get() + cs * slot, src, cs * sizeof(float));
        std::memcpy(L.ssm.get() + ss * slot, src + cs, ss * sizeof(float));
        src += cs + ss;
    }
}

void SsmModel::reset_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (SsmLayer& L : layers_) {
        if (L.conv) std::memset(L.conv.get(), 0, plan_->conv_slot * n_slots_ * sizeof(float));
        std::memset(L.ssm.get(), 0, plan_->ssm_slot * n_slots_ * sizeof(float));
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
    const SsmLayer& L = layers_[layer];
    const size_t cd = cfg_.conv_dim();
    return SsmStateView{L.conv.get(),
                        {static_cast<size_t>(n_slots_), static_cast<size_t>(cfg_.d_conv - 1), cd},
                        {plan_->conv_slot, cd, 1},
                        L.conv};
}

SsmStateView SsmModel::ssm_state(int layer) const {
    if (layer < 0 || layer >= cfg_.n_layers)
        throw std::out_of_range("SsmModel.ssm_state: layer " + std::to_string(layer) + " not in [0, " +
                                std::to_string(cfg_.n_layers) + ")");
    const SsmLayer& L = layers_[layer];
    const size_t N = cfg_.d_state, w = head_w_;
    if (cfg_.kind == SsmKind::kMamba2) {  // stored [slot][n][h][p], shown [slot][h][p][n]
        const size_t nh = cfg_.nheads;
        return SsmStateView{L.ssm.get(), {static_cast<size_t>(n_slots_), nh, w, N}, {plan_->ssm_slot, w, 1, nh * w}, L.ssm};
    }
    return SsmStateView{L.ssm.get(),  // stored [slot][n][c], shown [slot][c][n]
                        {static_cast<size_t>(n_slots_), w, N},
                        {plan_->ssm_slot, 1, w},
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
    const int max_rows = kernel_->max_rows;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    // Blocks of up to max_rows consecutive non-padding rows with pairwise distinct slots: rows of
    // a block touch disjoint states, so running them together is running them in row order, and a
    // repeated slot starts a new block, after the earlier row has updated the state.
    int block[kMaxBlockRows];
    StatePrefetch pf;
    pf.bases = state_bases_.data();
    pf.slot_floats = state_slot_floats_.data();
    pf.n_arrays = static_cast<int>(state_bases_.size());
    int i = 0;
    while (i < n_rows) {
        int nb = 0;
        while (i < n_rows && nb < max_rows) {
            const int slot = slots[i];
            if (slot < 0) {
                for (int j = 0; j < n_out; ++j) out[static_cast<size_t>(i) * n_out + j] = nan;
                ++i;
                continue;
            }
            bool repeat = false;
            for (int q = 0; q < nb; ++q) repeat = repeat || slots[block[q]] == slot;
            if (repeat) break;
            if (reset && reset[i]) zero_slot(slot);
            block[nb++] = i++;
        }
        // The next block's slots (at most max_rows: a repeat there only prefetches more than needed).
        pf.n_slots = pf.slot_i = pf.array_i = 0;
        pf.line = 0;
        for (int j = i; j < n_rows && pf.n_slots < max_rows; ++j)
            if (slots[j] >= 0) pf.slots[pf.n_slots++] = slots[j];
        if (nb > 0) kernel_->run_block(*plan_, block, nb, slots, x, out, &pf);
    }
}

std::vector<std::string> SsmModel::kernels() {
    std::vector<std::string> names;
    for (const SsmKernel* k : runnable_kernels()) names.push_back(k->name);
    return names;
}

const char* SsmModel::kernel() const { return kernel_->name; }

const SsmPlan& SsmModel::plan() const { return *plan_; }

const float* SsmModel::weight_arena() const { return weights_->p; }

size_t SsmModel::weight_arena_size() const { return static_cast<size_t>(weight_arena_floats(cfg_)); }

void SsmModel::set_dropout_masks(const float* masks, int n_variants) {
    if (n_variants < 0)
        throw std::invalid_argument("SsmModel.set_dropout_masks: n_variants must be >= 0, got " + std::to_string(n_variants));
    const size_t ld = plan_->ld_model, L = static_cast<size_t>(cfg_.n_layers), dm = static_cast<size_t>(cfg_.d_model);
    std::vector<float> padded(static_cast<size_t>(n_variants) * L * ld, 0.0f);
    for (size_t r = 0; r < static_cast<size_t>(n_variants) * L; ++r)
        for (size_t j = 0; j < dm; ++j) {
            const float m = masks[r * dm + j];
            if (!std::isfinite(m) || m < 0.0f)
                throw std::invalid_argument("SsmModel.set_dropout_masks: mask " + std::to_string(r / L) + ", layer " +
                                            std::to_string(r % L) + ", channel " + std::to_string(j) +
                                            " is negative or not finite");
            padded[r * ld + j] = m;
        }
    std::lock_guard<std::mutex> lock(mu_);
    drop_.swap(padded);
    plan_->drop = n_variants > 0 ? drop_.data() : nullptr;
    plan_->n_drop = n_variants;
}

int SsmModel::dropout_variants() const { return plan_->n_drop; }

void SsmModel::set_kernel(const std::string& name) {
    const SsmKernel* k = find_kernel(name);
    std::lock_guard<std::mutex> lock(mu_);
    kernel_ = k;
}

}  // namespace nextick
