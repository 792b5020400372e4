// silu16 and silu16_n (the 16-lane silu of the AVX-512 kernel variants, one vector or several in
// lockstep) against the scalar silu every variant shares, bit for bit: every float whose low 8 bits
// are 0, 0x55 or 0xff (2^26 inputs across all exponents and both signs, NaNs and infinities
// included), plus each variant of the special values. Inputs go in groups of four vectors of
// neighbouring values, so silu16_n meets groups where every lane takes the fast branch and groups
// where one lane sends all four to silu16. tests/test_ssm_isa.py compiles it for AVX-512 hosts;
// prints the number of mismatches.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

#include "vmath.hpp"

namespace {

using nextick::vm::vf16;

uint64_t checked = 0, bad = 0;

void compare(const float* in, const vf16* got, int n_lanes, const char* how) {
    float out[64];
    std::memcpy(out, got, sizeof(float) * 16 * ((n_lanes + 15) / 16));
    for (int i = 0; i < n_lanes; ++i) {
        const float want = nextick::vm::silu(in[i]);
        if (std::memcmp(&want, &out[i], 4) != 0) {
            if (bad < 5) {
                uint32_t u;
                std::memcpy(&u, &in[i], 4);
                std::printf("%s: mismatch at input 0x%08x\n", how, u);
            }
            ++bad;
        }
        ++checked;
    }
}

}  // namespace

int main() {
    alignas(64) float in[64];
    int k = 0;
    auto flush = [&]() {
        for (int i = k; i < 64; ++i) in[i] = 0.0f;
        vf16 v[4];
        std::memcpy(v, in, sizeof v);
        vf16 one[4], two[4], four[4];
        for (int m = 0; m < 4; ++m) one[m] = nextick::vm::silu16(v[m]);
        vf16 pair0[2] = {v[0], v[1]}, pair1[2] = {v[2], v[3]};
        nextick::vm::silu16_n<2>(pair0);
        nextick::vm::silu16_n<2>(pair1);
        two[0] = pair0[0], two[1] = pair0[1], two[2] = pair1[0], two[3] = pair1[1];
        for (int m = 0; m < 4; ++m) four[m] = v[m];
        nextick::vm::silu16_n<4>(four);
        compare(in, one, k, "silu16");
        compare(in, two, k, "silu16_n<2>");
        compare(in, four, k, "silu16_n<4>");
        k = 0;
    };
    for (uint64_t hi = 0; hi < (1u << 24); ++hi)
        for (uint32_t lo : {0x00u, 0x55u, 0xffu}) {
            const uint32_t u = static_cast<uint32_t>(hi << 8) | lo;
            std::memcpy(&in[k++], &u, 4);
            if (k == 64) flush();
        }
    if (k) flush();
    std::printf("checked %llu mismatches %llu\n", static_cast<unsigned long long>(checked),
                static_cast<unsigned long long>(bad));
    return bad != 0;
}
