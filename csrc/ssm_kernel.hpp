// The seam between SsmModel (ssm.cpp: config, weights, state pool, row blocks, kernel choice) and the
// step kernel (ssm_kernel.cpp), which CMake compiles once per instruction set (sse2, avx2, avx512,
// avx512_256 on x86-64; one build elsewhere). ssm.cpp picks the variant this CPU runs best at
// construction; every variant computes the same bits (tests/test_ssm_isa.py).
//
// Only plain data crosses the seam: no inline function of this header holds vector code, so the
// variants' object files share no symbol the linker could pick from the wrong instruction set.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "ssm.hpp"
#include "weight_panels.hpp"

namespace nextick {

constexpr size_t kLane = 16;  // floats per 64 bytes; every padded length is a multiple of this

constexpr size_t pad16(size_t n) { return (n + kLane - 1) / kLane * kLane; }

// Most rows one kernel call may take (a variant's max_rows is at most this).
constexpr int kMaxBlockRows = 8;

// One layer: weights (inside SsmModel's weight arena) and its slice of the state pool.
struct SsmLayer {
    // mamba2 uses norm_w..out_wt; s4d uses norm_w, in_wt, dA, dB, C, D, out_wt.
    const float* norm_w = nullptr;   // [ld_model]
    const float* in_wt = nullptr;    // [d_model][ld_in] in panels
    const float* conv_wt = nullptr;  // [d_conv][ld_conv]
    const float* conv_b = nullptr;   // [ld_conv]
    const float* dt_bias = nullptr;  // [nheads]
    const float* A = nullptr;        // [nheads]
    const float* D = nullptr;        // mamba2 [nheads], s4d [d_inner]
    const float* D_elem = nullptr;   // mamba2: D[h] at every element h*headdim + p [ld_inner]
    const float* gnorm_w = nullptr;  // [ld_inner]
    const float* out_wt = nullptr;   // [d_inner][ld_model] in panels
    const float* dA = nullptr;       // s4d, transposed: [N][ld_inner]
    const float* dB = nullptr;
    const float* C = nullptr;
    std::shared_ptr<float> conv;  // [n_slots][d_conv-1][conv_dim]
    std::shared_ptr<float> ssm;   // [n_slots][N][nheads][headdim] or [n_slots][N][d_inner]
};

// Scratch of one row of a block; all lengths padded to 16 floats, zeros beyond the live length.
struct SsmRowScratch {
    float* h = nullptr;  // residual stream [ld_model]
    float* u = nullptr;  // normed input of a layer / of the head [ld_model]
    float* v = nullptr;  // in_proj output [ld_in]
    float* y = nullptr;  // mixer output, out_proj input [ld_inner]
    float* t = nullptr;  // out_proj / head output [max(ld_model, ld_out)]
};

// Everything a kernel call reads (and the scratch it writes): the padded layout, the weights, the
// layers and the scratch. The four matrices are stored transposed, [in][ld] with ld = outputs
// rounded up to 16 and zero padding, in panels (panel_at), so a matvec runs across outputs.
struct SsmPlan {
    SsmConfig cfg;
    size_t ld_model = 0, ld_in = 0, ld_out = 0, ld_conv = 0, ld_inner = 0;
    size_t conv_slot = 0, ssm_slot = 0;  // floats per slot in each layer's state arrays
    const float* enc_wt = nullptr;       // [F][ld_model] in panels
    const float* enc_b = nullptr;
    const float* norm_f = nullptr;
    const float* head_wt = nullptr;      // [d_model][ld_out] in panels
    const float* head_b = nullptr;
    const SsmLayer* layers = nullptr;    // [n_layers]
    SsmRowScratch rows[kMaxBlockRows];
    // Shared by the per-row mixer, which runs one row at a time.
    float* a = nullptr;    // conv output, silu'd [ld_conv]
    float* xdt = nullptr;  // mamba2 dt[h] * xs[h, p] [ld_inner]
    float* daf = nullptr;  // mamba2 exp(dt[h] * A[h]) per element h*headdim + p [ld_inner]
    // mamba2 dt and exp(dt*A) of every row of a block, row q's head h at q*nheads + h
    // [pad16(kMaxBlockRows*nheads)]: one vector pass for the block instead of a short one per row.
    float* dt = nullptr;
    float* da = nullptr;
    // MC-dropout masks of the residual branches, [n_drop][n_layers][ld_model]; slot s runs variant
    // s % n_drop. nullptr: no dropout (the plain step, unchanged bits).
    const float* drop = nullptr;
    int n_drop = 0;
};

// The cache lines of the states the next block of rows will update, handed out a run at a time to
// the matvecs of the current block (the kernel's take_lines). Issued all at once (~80 KB for 4 rows
// of the default config) the prefetches fill the miss queues and stall the block's own loads;
// spread over its k loops they arrive while the block computes. Only speed depends on this.
struct StatePrefetch {
    const float* const* bases = nullptr;  // per state array (conv and ssm of each layer): pool start
    const size_t* slot_floats = nullptr;  // per state array: floats per slot
    int n_arrays = 0;
    int32_t slots[kMaxBlockRows] = {};
    int n_slots = 0;
    int slot_i = 0, array_i = 0;
    size_t line = 0;  // next line within the current (slot, array) region
};

// One compiled variant of the kernel. run_block steps rows[0..nb) (nb <= max_rows, pairwise distinct
// slots, resets already applied) and writes their outputs; it allocates nothing.
struct SsmKernel {
    const char* name;
    int max_rows;  // rows that share one pass over the weights
    void (*run_block)(const SsmPlan& plan, const int* rows, int nb, const int32_t* slots, const float* x, float* out,
                      StatePrefetch* pf);
};

// Defined by each variant's object file (ssm_kernel.cpp with NEXTICK_KERNEL_NAME=<name>).
const SsmKernel& ssm_kernel_sse2();
const SsmKernel& ssm_kernel_avx2();
const SsmKernel& ssm_kernel_avx512();
const SsmKernel& ssm_kernel_avx512_256();
const SsmKernel& ssm_kernel_neon();
const SsmKernel& ssm_kernel_generic();

}  // namespace nextick
