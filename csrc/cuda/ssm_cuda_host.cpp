// See ssm_cuda_host.hpp.
#include "ssm_cuda_host.hpp"

#include <algorithm>

#include "../ssm_kernel.hpp"

namespace nextick {
namespace cuda {

WeightImage weight_image(const SsmModel& model) {
    const SsmPlan& P = model.plan();
    const SsmConfig& c = P.cfg;
    const float* base = model.weight_arena();
    auto off = [&](const float* p) { return p ? static_cast<size_t>(p - base) : kAbsent; };

    WeightImage img;
    StepDims& d = img.dims;
    d.s4d = c.kind == SsmKind::kS4D;
    d.F = c.n_features, d.dm = c.d_model, d.di = c.d_inner, d.N = c.d_state, d.nh = c.nheads, d.hd = c.headdim;
    d.G = c.ngroups, d.dc = c.d_conv, d.cd = c.conv_dim(), d.d_in = c.d_in_proj(), d.n_out = c.n_out;
    d.n_layers = c.n_layers;
    d.eps = c.norm_eps, d.softplus_threshold = c.softplus_threshold;
    d.ld_model = static_cast<int>(P.ld_model), d.ld_in = static_cast<int>(P.ld_in), d.ld_out = static_cast<int>(P.ld_out);
    d.ld_conv = static_cast<int>(P.ld_conv), d.ld_inner = static_cast<int>(P.ld_inner);
    d.conv_slot = P.conv_slot, d.ssm_slot = P.ssm_slot;
    d.state_size = model.state_size();

    img.arena_floats = model.weight_arena_size();
    img.enc_wt = off(P.enc_wt), img.enc_b = off(P.enc_b), img.norm_f = off(P.norm_f);
    img.head_wt = off(P.head_wt), img.head_b = off(P.head_b);
    for (int l = 0; l < c.n_layers; ++l) {
        const SsmLayer& L = P.layers[l];
        LayerOffsets o;
        o.norm_w = off(L.norm_w), o.in_wt = off(L.in_wt), o.conv_wt = off(L.conv_wt), o.conv_b = off(L.conv_b);
        o.dt_bias = off(L.dt_bias), o.A = off(L.A), o.D = off(L.D), o.D_elem = off(L.D_elem), o.gnorm_w = off(L.gnorm_w);
        o.out_wt = off(L.out_wt), o.dA = off(L.dA), o.dB = off(L.dB), o.C = off(L.C);
        img.layers.push_back(o);
    }
    return img;
}

int bucket_rows(int n) {
    if (n <= 1) return 1;
    if (n <= 16) return 16;
    if (n <= 256) return 256;
    return (n + 1023) / 1024 * 1024;
}

int rows_per_block_within(const StepDims& d, int wanted, size_t smem_bytes) {
    for (int r = std::min(wanted, kMaxRowsPerBlock); r >= 1; --r)
        if (block_layout(d, r).floats * sizeof(float) <= smem_bytes) return r;
    return 0;
}

void StepDriver::plan(const char* who, int n_slots, int n_out, int n_rows, const int32_t* slots, float* out) {
    if (n_rows < 0) throw std::invalid_argument(std::string(who) + ".step: n_rows must be >= 0, got " + std::to_string(n_rows));
    for (int i = 0; i < n_rows; ++i)
        if (slots[i] >= n_slots)
            throw std::out_of_range(std::string(who) + ".step: row " + std::to_string(i) + " has slot " +
                                    std::to_string(slots[i]) + " >= n_slots " + std::to_string(n_slots));
    if (seen_.size() < static_cast<size_t>(n_slots)) seen_.resize(n_slots, 0);
    if (wave_start_.size() < static_cast<size_t>(n_rows) + 1) {
        wave_of_.resize(n_rows);
        order_.resize(n_rows);
        wave_start_.resize(static_cast<size_t>(n_rows) + 1);
    }
    const float nan = std::numeric_limits<float>::quiet_NaN();
    waves_ = 0;
    for (int i = 0; i < n_rows; ++i) {
        if (slots[i] < 0) {
            std::fill(out + static_cast<size_t>(i) * n_out, out + static_cast<size_t>(i + 1) * n_out, nan);
            wave_of_[i] = -1;
            continue;
        }
        wave_of_[i] = seen_[slots[i]]++;
        waves_ = std::max(waves_, wave_of_[i] + 1);
    }
    // Counting sort of the rows by wave, stable: row order within a wave.
    std::fill(wave_start_.begin(), wave_start_.begin() + waves_ + 1, 0);
    for (int i = 0; i < n_rows; ++i)
        if (wave_of_[i] >= 0) {
            ++wave_start_[wave_of_[i] + 1];
            seen_[slots[i]] = 0;
        }
    for (int w = 0; w < waves_; ++w) wave_start_[w + 1] += wave_start_[w];
    // wave_start_[w] is advanced while placing and restored after: no second array.
    for (int i = 0; i < n_rows; ++i)
        if (wave_of_[i] >= 0) order_[wave_start_[wave_of_[i]]++] = i;
    for (int w = waves_; w > 0; --w) wave_start_[w] = wave_start_[w - 1];
    wave_start_[0] = 0;
}

}  // namespace cuda
}  // namespace nextick
