// silu16 (the 16-lane silu of the AVX-512 kernel variants) against the scalar silu every variant
// shares, bit for bit: every float whose low 8 bits are 0, 0x55 or 0xff (2^26 inputs across all
// exponents and both signs, NaNs and infinities included), plus each variant of the special values.
// tests/test_ssm_isa.py compiles it for AVX-512 hosts; prints the number of mismatches.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

#include "vmath.hpp"

int main() {
    using nextick::vm::vf16;
    uint64_t checked = 0, bad = 0;
    alignas(64) float in[16], got[16];
    int k = 0;
    auto flush = [&]() {
        vf16 v;
        std::memcpy(&v, in, sizeof v);
        const vf16 r = nextick::vm::silu16(v);
        std::memcpy(got, &r, sizeof r);
        for (int i = 0; i < k; ++i) {
            const float want = nextick::vm::silu(in[i]);
            if (std::memcmp(&want, &got[i], 4) != 0) {
                if (bad < 5) {
                    uint32_t u;
                    std::memcpy(&u, &in[i], 4);
                    std::printf("mismatch at input 0x%08x\n", u);
                }
                ++bad;
            }
            ++checked;
        }
        k = 0;
    };
    for (uint64_t hi = 0; hi < (1u << 24); ++hi)
        for (uint32_t lo : {0x00u, 0x55u, 0xffu}) {
            const uint32_t u = static_cast<uint32_t>(hi << 8) | lo;
            std::memcpy(&in[k++], &u, 4);
            if (k == 16) flush();
        }
    if (k) {
        for (int i = k; i < 16; ++i) in[i] = 0.0f;
        flush();
    }
    std::printf("checked %llu mismatches %llu\n", static_cast<unsigned long long>(checked),
                static_cast<unsigned long long>(bad));
    return bad != 0;
}
