// Streaming SSM inference: one recurrent step per row (instrument), states kept in a slot pool.
//
// The math is the export contract with engine/model/ssm.py (the torch reference); see the spec in
// the SsmModel comment below. Everything is float32. The step is written for two properties:
//   * a row's result depends only on its slot's state, its features and the weights: never on the
//     batch size or the other rows (every sum has a fixed order; rows that share a pass over the
//     weights never share an accumulator), so batch 1 and batch 1024 give the same bits;
//   * no heap allocation and no locking beyond one uncontended mutex per call, so the backtester's
//     tick loop can call it per tick batch.
// The results are also the same bits in the native (-march=native) and the portable build: only
// IEEE +, -, *, /, sqrt in a fixed order (vmath.hpp for exp/log), no FMA contraction.
// Free of pybind11 so that C++ code (the backtester) can hold a std::shared_ptr<SsmModel>.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "model_backend.hpp"

namespace nextick {

// ssm_kernel.hpp: the seam between SsmModel and the compiled kernel variants.
struct SsmLayer;
struct SsmPlan;
struct SsmKernel;

enum class SsmKind : int32_t { kMamba2 = 0, kS4D = 1 };

const char* ssm_kind_name(SsmKind kind);                // "mamba2" / "s4d"
SsmKind parse_ssm_kind(const std::string& name);        // throws std::invalid_argument

// Bytes a config needs, in double: a config far past every limit is measured and reported, not
// overflowed. weight_bytes is the kernel's weight arena (every tensor copied, padded to 64 bytes);
// state_bytes_per_slot is one instrument's conv windows and SSM states over all layers.
struct SsmFootprint {
    double weight_bytes = 0;
    double state_bytes_per_slot = 0;
};

// Memory limits, checked before any allocation (SsmConfig::validate, the SsmModel constructor,
// resize and grow). The step reads every weight once per tick: the default model's 236 KB stay in
// L2, while 1 GiB streamed from DRAM would take ~0.1 s per tick, tens of thousands of times the
// microseconds this engine is built for, so a file asking for more is corrupt or not meant for it.
// The state pool holds every instrument's states: the default model needs 20 KB per instrument
// (10,000 instruments: 200 MB); 4 GiB is 20 times that and still leaves a shared machine's memory
// to the rest of the run.
constexpr double kMaxWeightBytes = 1024.0 * 1024 * 1024;
constexpr double kMaxStateBytes = 4.0 * 1024 * 1024 * 1024;

struct SsmConfig {
    SsmKind kind = SsmKind::kMamba2;
    int n_features = 5;   // F
    int d_model = 64;
    int n_layers = 2;
    int d_inner = 128;
    int headdim = 32;     // mamba2 only
    int nheads = 4;       // mamba2 only; must equal d_inner / headdim
    int d_state = 16;     // N
    int d_conv = 4;       // mamba2 only
    int ngroups = 1;      // mamba2 only (G); must divide nheads
    int n_out = 1;
    float norm_eps = 1e-5f;
    float softplus_threshold = 20.0f;  // mamba2 only

    // mamba2: d_inner + 2*G*N (the channels that go through the causal conv); s4d: 0 (no conv).
    int conv_dim() const;
    // Rows of in_proj.weight. mamba2: z, xBC, dt = 2*d_inner + 2*G*N + nheads; s4d: x, z = 2*d_inner.
    int d_in_proj() const;
    // Throws std::invalid_argument naming the first bad field. A config whose footprint passes
    // kMaxWeightBytes or kMaxStateBytes is refused with its sizes and both byte counts, before
    // anything is allocated.
    void validate() const;
    // What SsmModel would allocate for this config; see SsmFootprint. Defined for any config with
    // positive dimensions, however large.
    SsmFootprint footprint() const;
    // "mamba2 n_layers=2 d_model=64 d_inner=128 ...": every size, for error messages.
    std::string sizes() const;
};

// "11,526,400,005,952 bytes (10.5 TiB)" and "10.5 TiB"
std::string format_bytes(double bytes);
std::string format_binary_bytes(double bytes);

// A view of one state array of the pool, float32: element [i0, i1, ...] is at
// data[i0*strides[0] + i1*strides[1] + ...] (shape and strides in elements). The conv window is
// C-contiguous; the ssm state is not (see ssm_state). `owner` keeps the memory alive: resize() and
// grow() replace the pool, after which an old view still reads valid memory but is no longer the
// model's state.
struct SsmStateView {
    float* data = nullptr;
    std::vector<size_t> shape;
    std::vector<size_t> strides;
    std::shared_ptr<float> owner;
};

// One step for one row (slot s, features x[F], reset flag r), for kind mamba2:
//   if r: zero every layer's state of slot s first
//   h = encoder.weight @ x + encoder.bias
//   per layer: u = rmsnorm(h) * norm.weight;  zxbcdt = in_proj.weight @ u = [z | xBC | dt_raw]
//     conv[c] = bias[c] + sum_k<d_conv-1 w[c,k]*win[k][c] + w[c,d_conv-1]*xBC[c]; window shifts in
//     the raw xBC; a = silu(conv) = [xs | B | C]; dt = softplus(dt_raw + dt_bias); dA = exp(dt*A)
//     S[h,p,n] = dA[h]*S[h,p,n] + (dt[h]*xs[h,p])*B[g,n]; y = sum_n S*C + D*xs
//     h += out_proj.weight @ (rmsnorm(y * silu(z)) * norm_gated.weight)
//   out = head.weight @ (rmsnorm(h) * norm_f.weight) + head.bias
// and for kind s4d: per layer [xx | z] = in_proj.weight @ u; S[c,n] = dA*S + dB*xx[c];
//   y[c] = sum_n C*S + D*xx; h += out_proj.weight @ (y * silu(z)).
// Summation orders: matvecs accumulate k = 0..K-1 from the bias (or zero) with one accumulator per
// output; sum_n in order 0..N-1 from zero; rmsnorm's sum of squares in 16 interleaved partial sums
// combined pairwise (a fixed order in the code, not a property of the vector width).
class SsmModel final : public ModelBackend {
public:
    // name -> (shape, row-major float32 data); read only during the constructor.
    using Tensor = std::pair<std::vector<size_t>, const float*>;
    using TensorMap = std::map<std::string, Tensor>;

    // Every tensor a config needs, with its shape, in a stable order.
    static std::vector<std::pair<std::string, std::vector<size_t>>> tensor_shapes(const SsmConfig& config);

    // Validates the config, copies the weights (exact names and shapes required, no extra names,
    // all values finite; errors are std::invalid_argument naming the tensor) and allocates a zeroed
    // state pool of n_slots slots plus every scratch buffer step() needs.
    SsmModel(const SsmConfig& config, const TensorMap& tensors, int n_slots);
    SsmModel(const SsmModel&) = delete;
    SsmModel& operator=(const SsmModel&) = delete;
    ~SsmModel() override;

    // Rows are processed in order, each independently. slots[i] < 0 marks a padding row: its out row
    // is NaN and no state is touched (its reset flag is ignored). A slot >= n_slots() throws
    // std::out_of_range before any state or output is written. reset[i] != 0 zeroes the slot's
    // states before the row (reset may be null: no resets). x is [n_rows, n_features], out is
    // [n_rows, n_out], both row-major. No heap allocation.
    void step(int n_rows, const int32_t* slots, const float* x, const uint8_t* reset, float* out) override;

    void reset_slot(int slot) override;  // std::out_of_range unless 0 <= slot < n_slots()
    void reset_all() override;
    // New pool of n_slots slots, all zero (existing states are dropped, not carried over). Views
    // taken before keep the old pool alive but no longer show the model's state.
    void resize(int n_slots) override;
    // At least n_slots slots: existing slots keep their states, added ones start at zero; no-op
    // when the pool is already that large. Reallocates like resize (old views detach).
    void grow(int n_slots) override;

    int n_slots() const override { return n_slots_; }
    const SsmConfig& config() const { return cfg_; }

    // ModelBackend: the C++ kernel on this CPU. A slot's state reads and writes layer by layer, the
    // conv window (mamba2) then the ssm state, each in its stored order.
    std::string backend_name() const override { return "cpu"; }
    int n_features() const override { return cfg_.n_features; }
    int n_outputs() const override { return cfg_.n_out; }
    size_t state_size() const override;
    void get_state(int slot, float* dst) const override;
    void set_state(int slot, const float* src) override;

    // Per layer: mamba2 conv window [n_slots, d_conv-1, conv_dim] (index 0 = oldest raw xBC) and
    // ssm state [n_slots, nheads, headdim, d_state]; s4d ssm state [n_slots, d_inner, d_state] and
    // no conv window (conv_state throws std::invalid_argument). Bad layer: std::out_of_range.
    // The ssm state is stored with d_state outermost (mamba2: [slot][n][h][p], s4d: [slot][n][c])
    // so that the update and the sum over n vectorize across all of d_inner with the sum still in
    // the order n = 0..N-1; the view's strides present it in the shapes above.
    // Reads and writes through a view are not synchronized with step() on another thread.
    SsmStateView conv_state(int layer) const;
    SsmStateView ssm_state(int layer) const;

    // The compiled variant of the step kernel that step() runs: "avx512", "avx2" or "sse2" on x86-64
    // (one per instruction set level, csrc/ssm_kernel.cpp), "neon" on arm64, "generic" elsewhere.
    // Every variant computes the same bits; only speed differs.
    const char* kernel() const;
    // Run the named variant from now on; "auto" (the default, or the NEXTICK_SSM_KERNEL environment
    // variable at construction) picks the best one this CPU runs. std::invalid_argument names the
    // variants this CPU can run.
    void set_kernel(const std::string& name);
    // The variants compiled into this build that this CPU can run, best first.
    static std::vector<std::string> kernels();

    // MC dropout (engine/model/dropout.py): masks [n_variants][n_layers][d_model] scale each layer's
    // residual branch, h + m * branch; slot s runs variant s % n_variants from its next step on.
    // n_variants = 0 clears them (the plain step, same bits as before).
    void set_dropout_masks(const float* masks, int n_variants);
    int dropout_variants() const;

    // The weight arena (every tensor in the kernel's layout, ssm_kernel.hpp: matrices transposed to
    // [in][ld] and cut into panels of 16 outputs, weight_panels.hpp; each tensor padded to 16
    // floats) and the plan whose pointers point into it. A
    // backend that runs this layout on another device (csrc/cuda) copies it from here, so that the
    // checks on the weights and the layout have one definition.
    const SsmPlan& plan() const;
    const float* weight_arena() const;
    size_t weight_arena_size() const;  // floats
    // std::invalid_argument, from `who` ("SsmModel"), when n_slots slots of this config's state pass
    // kMaxStateBytes: checked before a pool is allocated, by every backend.
    static void check_pool(const SsmConfig& config, int n_slots, const char* who);

private:
    struct Buffer;

    void build_layout();
    void load(const TensorMap& tensors);
    void alloc_states(int n_slots, bool keep);
    void zero_slot(int slot);

    SsmConfig cfg_;
    int n_slots_ = 0;
    mutable std::mutex mu_;  // step/reset/resize from different threads (GIL released) must not interleave
    int head_w_ = 0;  // mamba2 headdim; s4d d_inner

    std::unique_ptr<Buffer> weights_;
    std::unique_ptr<Buffer> scratch_;
    std::vector<SsmLayer> layers_;
    // Per state array, layer by layer (mamba2: conv window then ssm state; s4d: ssm state): the
    // pool's start and floats per slot, for prefetching a slot's states.
    std::vector<const float*> state_bases_;
    std::vector<size_t> state_slot_floats_;
    std::vector<float> drop_;  // dropout masks, padded rows of ld_model (plan_->drop points here)
    std::unique_ptr<SsmPlan> plan_;     // what the kernel reads: layout, weights, layers, scratch
    const SsmKernel* kernel_ = nullptr;
};

}  // namespace nextick
