// Where the matvec matrices keep each weight (the CPU kernel and the CUDA backend read the same
// arena, csrc/ssm.cpp lays it out). The four matrices (encoder, in_proj, out_proj, head) are stored
// transposed, W[k][j] for input k and output j, with the outputs padded to ld (a multiple of
// kPanel), and cut into panels of kPanel outputs: panel p holds W[0..K)[p*kPanel, (p+1)*kPanel)
// row after row. A block of the CPU kernel's matvec walks down a few panels, a few sequential
// streams of 64 bytes per k, where the plain [K][ld] layout had it stride ld floats per k: there
// the hardware prefetchers kept up worse and in_proj's matvec ran ~10% slower on Zen 4 (issue 12's
// section of bench/RESULTS.md). The layout changes where a weight is, never a result.
#pragma once
#include <cstddef>

#if defined(__CUDACC__)
#define NEXTICK_PANEL_HD __host__ __device__
#else
#define NEXTICK_PANEL_HD
#endif

namespace nextick {

constexpr size_t kPanel = 16;  // outputs per panel: 64 bytes, one cache line per k

// Index of W[k][j] in a matrix of K inputs.
NEXTICK_PANEL_HD constexpr size_t panel_at(size_t K, size_t k, size_t j) {
    return j / kPanel * K * kPanel + k * kPanel + j % kPanel;
}

}  // namespace nextick
