// Branch-free float32 exp, log, log1p, silu and softplus for the SSM kernel.
//
// Why not <cmath>: libm calls do not vectorize (GCC emits one call per element), and their results
// may differ between libm versions and between the native and portable builds. These are written as
// plain arithmetic and selects only, so that GCC at -O3 if-converts and vectorizes the array loops
// below with whatever vector unit -march allows, and every build (AVX-512, AVX2, SSE2, NEON) gives
// the same bits: each function is a fixed sequence of correctly rounded IEEE operations (with
// -ffp-contract=off no FMA contraction changes that sequence).
//
// Accuracy, measured over all 2^32 float32 inputs against float64 libm: max error exp 0.99 ulp,
// log 0.83, log1p 2.47, silu 2.40, softplus 2.81 (threshold 20), subnormal results included;
// overflow to +-inf and underflow to 0 where float64 rounds there too. NaN in -> NaN out. The
// same sweep gave identical bits from the AVX-512 and the SSE2 build. Polynomials are Cephes'
// (S. L. Moshier) single-precision ones.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// Under nvcc (csrc/cuda) the scalar functions are device functions too: the CUDA kernel runs the
// same IEEE operations in the same order (built with --fmad=false), so its results are these bits.
#if defined(__CUDACC__)
#define NEXTICK_VINLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define NEXTICK_VINLINE inline __attribute__((always_inline))
#else
#define NEXTICK_VINLINE inline
#endif

// Each kernel variant (ssm_kernel.cpp, once per instruction set) includes this with its own
// NEXTICK_VMATH_ISA, so the inline functions of different variants never share a symbol.
#ifndef NEXTICK_VMATH_ISA
#define NEXTICK_VMATH_ISA generic
#endif

namespace nextick {
namespace vm {
inline namespace NEXTICK_VMATH_ISA {

NEXTICK_VINLINE float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

NEXTICK_VINLINE uint32_t to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// c ? a : b on the bits. A float `c ? a : b` whose arms are computed only for that select lets GCC
// sink each arm's arithmetic into a branch; trapping float operations in a branch then stop the
// vectorizer's if-conversion ("control flow in loop"). A mask blend cannot be turned into branches.
NEXTICK_VINLINE float select(bool c, float a, float b) {
    uint32_t m = 0u - static_cast<uint32_t>(c);
    return from_bits((to_bits(a) & m) | (to_bits(b) & ~m));
}

// exp(x) as p * s1 * s2: p = exp(r) in [0.7, 1.42] and the scale 2^n split in two normal factors.
// Range reduction x = n*ln2 + r with n = floor(x*log2e + 0.5), |r| <= ln2/2, ln2 split in two parts
// (the first has 9 significant bits, so n*kLn2Hi and x - n*kLn2Hi are exact), then a degree-7
// polynomial 1 + r + r^2*P(r). |x| is clamped to 110 (beyond +-ln(2^150) = 103.97 the result is
// +inf or 0 anyway), so n lies in [-159, 159]; 2^n is applied as the two factors 2^(n/2) and
// 2^(n - n/2), each a normal float built from its bits, so results that overflow become +inf and
// results in the subnormal range are rounded once instead of flushed. Callers that multiply the
// result by something (silu) apply the scale last, which keeps their subnormal results accurate.
// x clamped, NaN kept, is returned in xr.
//
// The clamp is done on the bits with an integer min, not with `x < hi ? x : hi`: GCC propagates the
// constant arm of such a float select into the code after it, which duplicates that code into two
// branches of trapping float operations that the vectorizer then refuses to if-convert. Likewise
// floor is an int conversion minus a comparison, not a select between t and t - 1.
NEXTICK_VINLINE void exp_parts(float x, float& xr, float& p, float& s1, float& s2) {
    const uint32_t kAbsMax = 0x42dc0000u;  // bits of 110.0f
    const uint32_t kInfBits = 0x7f800000u;
    const float kLog2e = 1.44269504088896341f;
    const float kLn2Hi = 0.693359375f;
    const float kLn2Lo = -2.12194440e-4f;
    uint32_t b = to_bits(x);
    uint32_t sign = b & 0x80000000u;
    uint32_t mag = b & 0x7fffffffu;
    uint32_t mag_n = mag < kAbsMax ? mag : kAbsMax;  // NaN clamped too: n is always defined
    uint32_t mag_r = mag > kInfBits ? mag : mag_n;   // NaN kept: it flows through r into p
    float xn = from_bits(sign | mag_n);
    xr = from_bits(sign | mag_r);
    float t = xn * kLog2e + 0.5f;
    int32_t n = static_cast<int32_t>(t);                      // toward zero, |t| < 160
    n = n - static_cast<int32_t>(static_cast<float>(n) > t);  // floor
    float fn = static_cast<float>(n);
    float r = xr - fn * kLn2Hi;
    r = r - fn * kLn2Lo;
    float z = r * r;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    p = q * z + r + 1.0f;
    int32_t n1 = n / 2;  // toward zero; n1 and n - n1 both lie in [-80, 80]
    int32_t n2 = n - n1;
    s1 = from_bits(static_cast<uint32_t>(n1 + 127) << 23);
    s2 = from_bits(static_cast<uint32_t>(n2 + 127) << 23);
}

NEXTICK_VINLINE float exp(float x) {
    float xr, p, s1, s2;
    exp_parts(x, xr, p, s1, s2);
    return (p * s1) * s2;
}

// log(x). Mantissa and exponent come from the bits (subnormals are first scaled by 2^25 so their
// exponent field is meaningful); m in [sqrt(1/2), sqrt(2)) and the result is
// (m-1) + (m-1)^3*P(m-1) - (m-1)^2/2 + e*ln2, with ln2 split as in exp.
// Specials by select: log(+inf) = +inf, log(+-0) = -inf, log(x < 0) = NaN, log(NaN) = NaN.
NEXTICK_VINLINE float log(float x) {
    const float kMinNormal = std::numeric_limits<float>::min();
    const float kInf = std::numeric_limits<float>::infinity();
    const float kNaN = std::numeric_limits<float>::quiet_NaN();
    const float kSqrtHalf = 0.707106781186547524f;
    bool sub = x < kMinNormal;
    float xs = select(sub, x * 33554432.0f, x);  // 2^25
    uint32_t b = to_bits(xs);
    int32_t e = static_cast<int32_t>((b >> 23) & 0xffu) - 126 - (25 & -static_cast<int32_t>(sub));
    float m = from_bits((b & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
    bool lo = m < kSqrtHalf;
    e = e - static_cast<int32_t>(lo);
    m = select(lo, (m + m) - 1.0f, m - 1.0f);  // both exact (Sterbenz)
    float fe = static_cast<float>(e);
    float z = m * m;
    float p = 7.0376836292e-2f;
    p = p * m - 1.1514610310e-1f;
    p = p * m + 1.1676998740e-1f;
    p = p * m - 1.2420140846e-1f;
    p = p * m + 1.4249322787e-1f;
    p = p * m - 1.6668057665e-1f;
    p = p * m + 2.0000714765e-1f;
    p = p * m - 2.4999993993e-1f;
    p = p * m + 3.3333331174e-1f;
    float y = p * m * z;
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    float r = m + y;
    r = r + fe * 0.693359375f;
    r = select(x == kInf, x, r);
    r = select(x == 0.0f, -kInf, r);
    return select(x >= 0.0f, r, kNaN);  // false for x < 0 and for NaN
}

// log1p(u) by Goldberg's trick: w = 1 + u is rounded, but log(w) * (u / (w - 1)) cancels that
// rounding to first order; w == 1 means |u| is below half an ulp of 1 and log1p(u) = u. The ratio
// is formed first (rather than (log(w) * u) / (w - 1)) so that it cannot overflow for huge u.
NEXTICK_VINLINE float log1p(float u) {
    const float kInf = std::numeric_limits<float>::infinity();
    float w = 1.0f + u;
    float r = log(w) * (u / (w - 1.0f));
    r = select(w == 1.0f, u, r);
    return select(w == kInf, w, r);
}

// silu(v) = v / (1 + exp(-v)). Below -80, exp(-v) would overflow near -88.7 and the quotient flush
// to -0 although silu(v) is still representable; there 1 + exp(v) == 1 exactly, so v * exp(v) is the
// same formula without the overflow, with exp's scale applied after the multiplication by v so that
// subnormal results are rounded once. It uses exp's clamped argument, so that below -110 (and at
// -inf) the product rounds to -0 instead of becoming huge or NaN. One exp per element either way.
NEXTICK_VINLINE float silu(float v) {
    bool neg = v < -80.0f;
    float vr, p, s1, s2;
    exp_parts(select(neg, v, -v), vr, p, s1, s2);
    float rneg = ((vr * p) * s1) * s2;
    float rpos = v / (1.0f + (p * s1) * s2);
    return select(neg, rneg, rpos);
}

#if defined(__AVX512F__)
// silu() on 16 lanes at once, the same bits lane by lane (checked for every one of the 2^32 float
// inputs, NaN payloads included; tests/cpp/vmath_bits.cpp re-checks a sample on every run), ~30%
// fewer operations: the floor is one round instruction, and for the v / (1 + exp(-v)) branch the
// scale 2^n is one vscalefps. That is exact: (p * 2^n1) * 2^n2 equals p * 2^n rounded once while
// the result is normal, and where it is not (v > 87) exp(-v) < 2^-126, so 1 + exp(-v) rounds to 1
// whichever way it was formed. The branch below -80 keeps the two-factor scale (its subnormal
// results are rounded once only that way) and runs only when a lane needs it.
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef uint32_t vu16 __attribute__((vector_size(64)));

// exp's polynomial from the reduced argument on: p with exp(x) = p * 2^fn (see exp_parts).
NEXTICK_VINLINE vf16 exp16_poly(vf16 xr, vf16 fn) {
    const float kLn2Hi = 0.693359375f;
    const float kLn2Lo = -2.12194440e-4f;
    vf16 r = xr - fn * kLn2Hi;
    r = r - fn * kLn2Lo;
    const vf16 z = r * r;
    vf16 q = vf16{} + 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    return q * z + r + 1.0f;
}

NEXTICK_VINLINE vf16 floor16(vf16 t) {
    return (vf16)_mm512_roundscale_ps((__m512)t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
}

NEXTICK_VINLINE vf16 silu16(vf16 v) {
    const float kLog2e = 1.44269504088896341f;
    const __m512 abs_v = _mm512_abs_ps((__m512)v);
    if (_mm512_cmp_ps_mask(abs_v, _mm512_set1_ps(80.0f), _CMP_LE_OQ) == 0xffff) {
        // Every lane finite with |v| <= 80: exp_parts' clamp and NaN selects pass -v through
        // unchanged and the branch below -80 is not taken, so they are skipped.
        const vf16 x = -v;
        const vf16 fn = floor16(x * kLog2e + 0.5f);
        return v / (1.0f + (vf16)_mm512_scalef_ps((__m512)exp16_poly(x, fn), (__m512)fn));
    }
    const uint32_t kAbsMax = 0x42dc0000u;  // as exp_parts
    const uint32_t kInfBits = 0x7f800000u;
    const vi16 neg = v < -80.0f;
    const vu16 b = (vu16)(neg ? v : -v);
    const vu16 sign = b & 0x80000000u;
    const vu16 mag = b & 0x7fffffffu;
    const vu16 mag_n = mag < kAbsMax ? mag : kAbsMax;
    const vf16 xn = (vf16)(sign | mag_n);
    const vf16 xr = (vf16)(sign | (mag > kInfBits ? mag : mag_n));
    const vf16 fn = floor16(xn * kLog2e + 0.5f);
    const vf16 p = exp16_poly(xr, fn);
    vf16 out = v / (1.0f + (vf16)_mm512_scalef_ps((__m512)p, (__m512)fn));
    if (_mm512_test_epi32_mask((__m512i)neg, (__m512i)neg)) {
        const vi16 n = __builtin_convertvector(fn, vi16);
        const vi16 n1 = n / 2;
        const vi16 n2 = n - n1;
        const vf16 s1 = (vf16)((vu16)(n1 + 127) << 23);
        const vf16 s2 = (vf16)((vu16)(n2 + 127) << 23);
        out = neg ? ((xr * p) * s1) * s2 : out;
    }
    return out;
}
#endif

// softplus(v) = v > threshold ? v : log1p(exp(v)). Above 88 exp(v) overflows, while log1p(exp(v))
// rounds to v already from v > 16.7 on (exp(-v) < half an ulp of v), so v is returned there too:
// same value, no inf.
NEXTICK_VINLINE float softplus(float v, float threshold) {
    float r = log1p(exp(v));
    r = select(v > 88.0f, v, r);
    return select(v > threshold, v, r);
}

// Array forms. Plain loops over the inline functions: GCC vectorizes them at -O3 (check with
// -fopt-info-vec). Out-of-place forms allow y == x (GCC versions the loop on overlap).
inline void vexp(const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] = exp(x[i]);
}
inline void vlog(const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] = log(x[i]);
}
inline void vlog1p(const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] = log1p(x[i]);
}
inline void vsilu(const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] = silu(x[i]);
}
inline void vsilu_inplace(float* x, int n) {
    for (int i = 0; i < n; ++i) x[i] = silu(x[i]);
}
inline void vsoftplus(const float* x, float* y, int n, float threshold) {
    for (int i = 0; i < n; ++i) y[i] = softplus(x[i], threshold);
}
inline void vsoftplus_inplace(float* x, int n, float threshold) {
    for (int i = 0; i < n; ++i) x[i] = softplus(x[i], threshold);
}

}  // namespace NEXTICK_VMATH_ISA
}  // namespace vm
}  // namespace nextick
