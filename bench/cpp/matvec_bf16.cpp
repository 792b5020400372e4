// Does bf16 pay on the CPU (issue 13 item 6)? The default model's in_proj (64 -> 296, padded 304) for one
// block of 6 rows, as the avx512_256 kernel runs it (8-lane mul + add, no FMA: the contract), against
// the same product with AVX512_BF16 vdpbf16ps (weights and activations rounded to bf16, two products
// per lane per instruction, fp32 accumulation). Build and run where the CPU has avx512_bf16:
//   g++ -O3 -march=native -ffp-contract=off -o /tmp/mb bench/cpp/matvec_bf16.cpp && /tmp/mb
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
// y[r][j] = sum_k x[r][k] * W[k][j]; K=64, J=296 (pad 304), R=6 rows. fp32: mul+add (no FMA), ymm.
static uint16_t bf(float f){uint32_t u; std::memcpy(&u,&f,4); return (uint16_t)((u + 0x7fff + ((u>>16)&1))>>16);}
constexpr int K = 64, J = 304, R = 6;
alignas(64) float W[K][J];
alignas(64) float X[R][K];
alignas(64) float Y[R][J];
alignas(64) uint16_t Wb[K / 2][J][2];
alignas(64) uint16_t Xb[R][K];
__attribute__((noinline)) void mv_f32() {
    for (int j = 0; j < J; j += 32) {
        __m256 acc[R][4];
        for (int r = 0; r < R; ++r) for (int t = 0; t < 4; ++t) acc[r][t] = _mm256_setzero_ps();
        for (int k = 0; k < K; ++k) {
            __m256 w[4];
            for (int t = 0; t < 4; ++t) w[t] = _mm256_load_ps(&W[k][j + 8 * t]);
            for (int r = 0; r < R; ++r) {
                __m256 xv = _mm256_set1_ps(X[r][k]);
                for (int t = 0; t < 4; ++t) acc[r][t] = _mm256_add_ps(acc[r][t], _mm256_mul_ps(xv, w[t]));
            }
        }
        for (int r = 0; r < R; ++r) for (int t = 0; t < 4; ++t) _mm256_store_ps(&Y[r][j + 8 * t], acc[r][t]);
    }
}
__attribute__((noinline)) void mv_bf16() {
    for (int j = 0; j < J; j += 32) {
        __m256 acc[R][4];
        for (int r = 0; r < R; ++r) for (int t = 0; t < 4; ++t) acc[r][t] = _mm256_setzero_ps();
        for (int k = 0; k < K; k += 2) {
            __m256bh w[4];
            for (int t = 0; t < 4; ++t) w[t] = (__m256bh)_mm256_load_si256((const __m256i*)&Wb[k / 2][j + 8 * t][0]);
            for (int r = 0; r < R; ++r) {
                uint32_t pair; std::memcpy(&pair, &Xb[r][k], 4);
                __m256bh xv = (__m256bh)_mm256_set1_epi32(pair);
                for (int t = 0; t < 4; ++t) acc[r][t] = _mm256_dpbf16_ps(acc[r][t], xv, w[t]);
            }
        }
        for (int r = 0; r < R; ++r) for (int t = 0; t < 4; ++t) _mm256_store_ps(&Y[r][j + 8 * t], acc[r][t]);
    }
}
template <class F> double bench(F f) {
    double best = 1e30;
    for (int rep = 0; rep < 20; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < 20000; ++i) { f(); asm volatile("" ::: "memory"); }
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 20000;
        if (s < best) best = s;
    }
    return best;
}
int main() {
    for (int k = 0; k < K; ++k) for (int j = 0; j < J; ++j) { W[k][j] = rand() / (float)RAND_MAX; Wb[k/2][j][k%2] = bf(W[k][j]); }
    for (int r = 0; r < R; ++r) for (int k = 0; k < K; ++k) { X[r][k] = rand() / (float)RAND_MAX; Xb[r][k] = bf(X[r][k]); }
    double a = bench(mv_f32), b = bench(mv_bf16);
    printf("f32 %.1f ns, bf16 %.1f ns, ratio %.2fx (per 6-row in_proj)\n", a * 1e9, b * 1e9, a / b);
}
