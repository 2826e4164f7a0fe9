// fastrnn's int8 products (int8_gemm.h): one packed layout, a kernel per vector
// unit, the integer sums exact in every one.  No ATen here: tests/kernels/
// builds this file alone, natively and for aarch64.
#include "int8_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FR_I8_X86 1
// GCC 12 reads the AVX-512 intrinsics' own "__Y = __Y" placeholders (the unused
// source of an unmasked operation) as uninitialised: not this file's code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#else
#define FR_I8_X86 0
#endif

#if defined(__aarch64__) && defined(__GNUC__)
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#define FR_I8_NEON 1
#else
#define FR_I8_NEON 0
#endif

namespace fastrnn {
namespace cpu {

namespace {

constexpr int kR = static_cast<int>(kI8Rows);
constexpr int kRowBlocks = 4;  // blocks a batch-1 VNNI pass runs at once (vnni_row_blocks)

// The loops below compiled for AVX-512, AVX2 and baseline x86-64 (picked at load
// time): the epilogue of the AVX2 and scalar kernels, and the quantizer where
// the CPU has no AVX512F.
#if FR_I8_X86 && !defined(__clang__)
#define FR_I8_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FR_I8_CLONES
#endif

// acc (nb x 16 exact sums) of block rows [r0, r0 + nr) -> out, scaled, biased.
FR_I8_CLONES void finish(const int32_t* acc, int nb, int64_t r0, int nr, const float* wscale, const float* xscale,
                   const float* bias, bool accumulate, float* out, int64_t ldo) {
  for (int j = 0; j < nb; ++j) {
    const float xs = xscale[j];
    float* o = out + j * ldo + r0;
    const int32_t* a = acc + j * kR;
    for (int r = 0; r < nr; ++r) {
      float v = static_cast<float>(a[r]) * (wscale[r0 + r] * xs);
      if (bias != nullptr) v += bias[r0 + r];
      if (accumulate) v += o[r];
      o[r] = v;
    }
  }
}

// ------------------------------------------------------------------ scalar
// acc[j][r] = sum over the block's quads of p[q][r][s] x[j][4 q + s].
void scalar_block(int nb, int64_t K4, const int8_t* p, const int8_t* const* x, int32_t* acc) {
  for (int j = 0; j < nb; ++j) {
    int32_t* a = acc + j * kR;
    for (int r = 0; r < kR; ++r) a[r] = 0;
    const int8_t* xj = x[j];
    for (int64_t q = 0; q < K4; ++q) {
      const int8_t* pq = p + q * 4 * kR;
      const int8_t* xq = xj + 4 * q;
      for (int r = 0; r < kR; ++r) {
        int32_t s = 0;
        for (int u = 0; u < 4; ++u) s += static_cast<int32_t>(pq[4 * r + u]) * static_cast<int32_t>(xq[u]);
        a[r] += s;
      }
    }
  }
}

#if FR_I8_X86
// ------------------------------------------------------------- AVX512-VNNI
#define FR_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// NB activation rows (u8: x + 128), U quads in flight per row (independent
// accumulators: at batch 1 one chain would wait on vpdpbusd's latency).
// The epilogue is here too (16 rows a vector): the sums, less 128 times the
// rows' weight sums, scaled by wscale[r] xscale[j], biased, stored under a mask.
struct Epi {
  const float* ws;    // wscale + r0
  const float* xs;    // xscale + j0
  const float* bias;  // bias + r0, or null
  bool accumulate;
  float* out;         // out + j0 ldo + r0
  int64_t ldo;
  int nr;             // rows of the block (16 but in the last)
};

template <int NB, int U>
FR_VNNI void vnni_block(int64_t K4, const int8_t* p, const uint8_t* const* xu, const int32_t* rs128,
                        const Epi& e) {
  __m512i a[NB][U];
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) a[j][u] = _mm512_setzero_si512();
  int64_t q = 0;
  for (; q + U <= K4; q += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const __m512i w = _mm512_loadu_si512(p + (q + u) * 64);
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        int32_t word;
        std::memcpy(&word, xu[j] + 4 * (q + u), 4);
        a[j][u] = _mm512_dpbusd_epi32(a[j][u], _mm512_set1_epi32(word), w);
      }
    }
  }
  for (; q < K4; ++q) {
    const __m512i w = _mm512_loadu_si512(p + q * 64);
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) {
      int32_t word;
      std::memcpy(&word, xu[j] + 4 * q, 4);
      a[j][0] = _mm512_dpbusd_epi32(a[j][0], _mm512_set1_epi32(word), w);
    }
  }
  const __m512i off = _mm512_loadu_si512(rs128);
  const __mmask16 mk = e.nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << e.nr) - 1u);
  const __m512 ws = _mm512_maskz_loadu_ps(mk, e.ws);
  const __m512 b = e.bias != nullptr ? _mm512_maskz_loadu_ps(mk, e.bias) : _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) {
    __m512i s = a[j][0];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) s = _mm512_add_epi32(s, a[j][u]);
    s = _mm512_sub_epi32(s, off);
    float* o = e.out + j * e.ldo;
    // (float(sum) * (ws * xs)) + bias (+ out): the scalar epilogue's order
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(ws, _mm512_set1_ps(e.xs[j])));
    v = _mm512_add_ps(v, b);
    if (e.accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, o));
    _mm512_mask_storeu_ps(o, mk, v);
  }
}

// One activation row against B consecutive blocks (stride bstride bytes) at
// once: each of the row's quads is broadcast once for all B blocks.  A block at
// a time (vnni_block<1, U>) loads the quad again for every block, two loads per
// vpdpbusd, which bound batch-1 steps (LSTM H 256: ~2.3 us of a ~4.6 us step on
// an AMD EPYC Zen 4); here B + 1 loads per B.  Two accumulators a block (2 B
// chains in flight).  Block i's rows start at e's + 16 i; e.nr counts the rows
// left from the first block's start (the last block may be short).  The same
// integer sums and epilogue as vnni_block, so the same bits.
template <int B>
FR_VNNI void vnni_row_blocks(int64_t K4, const int8_t* p, int64_t bstride, const uint8_t* xu,
                             const int32_t* rowsum, const Epi& e) {
  __m512i a[B][2];
#pragma GCC unroll 8
  for (int i = 0; i < B; ++i) a[i][0] = a[i][1] = _mm512_setzero_si512();
  int64_t q = 0;
  for (; q + 2 <= K4; q += 2) {
    int32_t w0, w1;
    std::memcpy(&w0, xu + 4 * q, 4);
    std::memcpy(&w1, xu + 4 * q + 4, 4);
    const __m512i x0 = _mm512_set1_epi32(w0), x1 = _mm512_set1_epi32(w1);
#pragma GCC unroll 8
    for (int i = 0; i < B; ++i) {
      const int8_t* pb = p + i * bstride + q * 64;
      a[i][0] = _mm512_dpbusd_epi32(a[i][0], x0, _mm512_loadu_si512(pb));
      a[i][1] = _mm512_dpbusd_epi32(a[i][1], x1, _mm512_loadu_si512(pb + 64));
    }
  }
  if (q < K4) {
    int32_t w0;
    std::memcpy(&w0, xu + 4 * q, 4);
    const __m512i x0 = _mm512_set1_epi32(w0);
#pragma GCC unroll 8
    for (int i = 0; i < B; ++i) a[i][0] = _mm512_dpbusd_epi32(a[i][0], x0, _mm512_loadu_si512(p + i * bstride + q * 64));
  }
  const __m512 xs = _mm512_set1_ps(e.xs[0]);
#pragma GCC unroll 8
  for (int i = 0; i < B; ++i) {
    const int nr = e.nr - 16 * i >= 16 ? 16 : e.nr - 16 * i;
    const __mmask16 mk = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1u);
    const __m512i off = _mm512_slli_epi32(_mm512_loadu_si512(rowsum + 16 * i), 7);  // 128 x the rows' sums
    const __m512 ws = _mm512_maskz_loadu_ps(mk, e.ws + 16 * i);
    const __m512 b = e.bias != nullptr ? _mm512_maskz_loadu_ps(mk, e.bias + 16 * i) : _mm512_setzero_ps();
    const __m512i s = _mm512_sub_epi32(_mm512_add_epi32(a[i][0], a[i][1]), off);
    float* o = e.out + 16 * i;
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(ws, xs));
    v = _mm512_add_ps(v, b);
    if (e.accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, o));
    _mm512_mask_storeu_ps(o, mk, v);
  }
}

FR_VNNI void vnni_run(int nb, int64_t K4, const int8_t* p, const uint8_t* const* xu, const int32_t* rs128,
                      const Epi& e) {
  switch (nb) {
    case 1: vnni_block<1, 8>(K4, p, xu, rs128, e); break;
    case 2: vnni_block<2, 4>(K4, p, xu, rs128, e); break;
    case 3: vnni_block<3, 2>(K4, p, xu, rs128, e); break;
    case 4: vnni_block<4, 2>(K4, p, xu, rs128, e); break;
    case 5: vnni_block<5, 1>(K4, p, xu, rs128, e); break;
    case 6: vnni_block<6, 1>(K4, p, xu, rs128, e); break;
    case 7: vnni_block<7, 1>(K4, p, xu, rs128, e); break;
    default: vnni_block<8, 1>(K4, p, xu, rs128, e); break;
  }
}

// -------------------------------------------------------------------- AVX2
#define FR_AVX2I __attribute__((target("avx2")))

// NB activation rows widened to int16 (x16), a quad broadcast as 64 bits; the 64
// bytes of a quad as four 16-byte chunks of 4 rows x 4 k, each widened to 16
// int16 and multiplied pairwise (vpmaddwd): lane 2 i + h of chunk c holds row
// 4 c + i's pair h, summed at the end.
template <int NB>
FR_AVX2I void avx2_block(int64_t K4, const int8_t* p, const int16_t* const* x16, int32_t* acc) {
  __m256i a[NB][4];
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j)
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) a[j][c] = _mm256_setzero_si256();
  for (int64_t q = 0; q < K4; ++q) {
    __m256i b[NB];
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) {
      long long word;
      std::memcpy(&word, x16[j] + 4 * q, 8);
      b[j] = _mm256_set1_epi64x(word);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + q * 64 + 16 * c)));
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) a[j][c] = _mm256_add_epi32(a[j][c], _mm256_madd_epi16(w, b[j]));
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    alignas(32) int32_t t[8];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(t), a[j][c]);
      for (int i = 0; i < 4; ++i) acc[j * kR + 4 * c + i] = t[2 * i] + t[2 * i + 1];
    }
  }
}

FR_AVX2I void avx2_run(int nb, int64_t K4, const int8_t* p, const int16_t* const* x16, int32_t* acc) {
  switch (nb) {
    case 1: avx2_block<1>(K4, p, x16, acc); break;
    case 2: avx2_block<2>(K4, p, x16, acc); break;
    default: avx2_block<3>(K4, p, x16, acc); break;
  }
}
#endif  // FR_I8_X86

#if FR_I8_NEON
// ---------------------------------------------------------------- NEON sdot
#define FR_DOT __attribute__((target("arch=armv8.2-a+dotprod")))

// A quad's 64 bytes as four 16-byte vectors of 4 rows x 4 k; sdot adds the four
// products of each row's k into its lane.
template <int NB>
FR_DOT void dot_block(int64_t K4, const int8_t* p, const int8_t* const* x, int32_t* acc) {
  int32x4_t a[NB][4];
  for (int j = 0; j < NB; ++j)
    for (int c = 0; c < 4; ++c) a[j][c] = vdupq_n_s32(0);
  for (int64_t q = 0; q < K4; ++q) {
    int8x16_t w[4];
    for (int c = 0; c < 4; ++c) w[c] = vld1q_s8(p + q * 64 + 16 * c);
    for (int j = 0; j < NB; ++j) {
      int32_t word;
      std::memcpy(&word, x[j] + 4 * q, 4);
      const int8x16_t b = vreinterpretq_s8_s32(vdupq_n_s32(word));
      for (int c = 0; c < 4; ++c) a[j][c] = vdotq_s32(a[j][c], w[c], b);
    }
  }
  for (int j = 0; j < NB; ++j)
    for (int c = 0; c < 4; ++c) vst1q_s32(acc + j * kR + 4 * c, a[j][c]);
}

FR_DOT void dot_run(int nb, int64_t K4, const int8_t* p, const int8_t* const* x, int32_t* acc) {
  switch (nb) {
    case 1: dot_block<1>(K4, p, x, acc); break;
    case 2: dot_block<2>(K4, p, x, acc); break;
    case 3: dot_block<3>(K4, p, x, acc); break;
    default: dot_block<4>(K4, p, x, acc); break;
  }
}
#endif  // FR_I8_NEON

int group_of(I8Isa isa) {
  switch (isa) {
    case I8Isa::kVnni: return 8;
    case I8Isa::kAvx2: return 3;
    case I8Isa::kNeonDot: return 4;
    default: return 4;
  }
}

}  // namespace

const char* i8_name(I8Isa isa) {
  switch (isa) {
    case I8Isa::kVnni: return "avx512_vnni";
    case I8Isa::kAvx2: return "avx2";
    case I8Isa::kNeonDot: return "neon_dot";
    default: return "scalar";
  }
}

const char* i8_needs(I8Isa isa) {
  switch (isa) {
    case I8Isa::kVnni: return "x86 AVX512F, AVX512BW and AVX512-VNNI";
    case I8Isa::kAvx2: return "x86 AVX2";
    case I8Isa::kNeonDot: return "aarch64 with the dot-product instructions (asimddp)";
    default: return "nothing";
  }
}

bool has_avx512vnni() {
#if FR_I8_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

bool has_neon_dot() {
#if FR_I8_NEON
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
  return false;
#endif
}

bool i8_runs(I8Isa isa) {
  switch (isa) {
    case I8Isa::kVnni: return has_avx512vnni();
#if FR_I8_X86
    case I8Isa::kAvx2: __builtin_cpu_init(); return __builtin_cpu_supports("avx2");
#else
    case I8Isa::kAvx2: return false;
#endif
    case I8Isa::kNeonDot: return has_neon_dot();
    default: return true;
  }
}

void i8_pack(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, int8_t* dst, int32_t* rowsum) {
  const int64_t K4 = i8_kpad(k) / 4, rp = i8_rpad(rows);
  for (int64_t r = 0; r < rp; ++r) {
    const int64_t b = r / kR, rr = r % kR;
    int32_t sum = 0;
    for (int64_t q = 0; q < K4; ++q)
      for (int s = 0; s < 4; ++s) {
        const int64_t kk = 4 * q + s;
        const int8_t v = (r < rows && kk < k) ? w[r * ldw + kk] : int8_t(0);
        dst[((b * K4 + q) * kR + rr) * 4 + s] = v;
        sum += v;
      }
    rowsum[r] = sum;
  }
}

namespace {
FR_I8_CLONES void quantize_generic(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, float* scale) {
  const int64_t kp = i8_kpad(k);
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * ldx;
    int8_t* qi = q + i * kp;
    // max |x| and whether any x is NaN or infinite, in 16 lanes (reductions the
    // compiler vectorises without reassociating: max and or are exact in any order)
    float lm[16] = {0.0f};
    int32_t lbad[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= k; j += 16)
      for (int l = 0; l < 16; ++l) {
        const float a = std::fabs(xi[j + l]);
        lm[l] = a > lm[l] ? a : lm[l];
        lbad[l] |= !(a <= 3.40282347e38f);  // NaN and infinity fail it
      }
    for (; j < k; ++j) {
      const float a = std::fabs(xi[j]);
      lm[0] = a > lm[0] ? a : lm[0];
      lbad[0] |= !(a <= 3.40282347e38f);
    }
    float amax = 0.0f;
    int32_t bad = 0;
    for (int l = 0; l < 16; ++l) {
      amax = lm[l] > amax ? lm[l] : amax;
      bad |= lbad[l];
    }
    if (bad) {
      scale[i] = NAN;
      std::memset(qi, 0, kp);
      continue;
    }
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    if (!(inv <= 3.40282347e38f)) amax = inv = 0.0f;  // a row below ~4e-37: taken as zeros
    scale[i] = amax / 127.0f;
    // the product rounded to float32, then to the nearest integer, ties to even
    // (rint: roundps in the AVX clones), so torch.round(x * inv) gives the same q
    for (int64_t j = 0; j < k; ++j) {
      float v = __builtin_rintf(xi[j] * inv);
      v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
      qi[j] = static_cast<int8_t>(v);
    }
    for (int64_t j = k; j < kp; ++j) qi[j] = 0;
  }
}

#if FR_I8_X86
// The same with AVX-512 intrinsics (16 values a step: max, then multiply, round to
// nearest even, clamp, narrow to bytes), where the CPU has AVX512F: the clones'
// vectorisation of the two loops took ~1 ns a value.  (GCC 12 takes the
// intrinsics' own "__Y = __Y" placeholders for uninitialised reads: silenced
// for this file, at its top.)
__attribute__((target("avx512f"))) void quantize_avx512(int64_t m, int64_t k, const float* x, int64_t ldx,
                                                          int8_t* q, float* scale) {
  const int64_t kp = i8_kpad(k);
  const __m512 big = _mm512_set1_ps(3.40282347e38f), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * ldx;
    int8_t* qi = q + i * kp;
    __m512 vm = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t j = 0; j < k; j += 16) {
      const __mmask16 mk = k - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - j)) - 1u);
      const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(mk, xi + j));
      vm = _mm512_max_ps(a, vm);
      bad |= _mm512_cmp_ps_mask(a, big, _CMP_NLE_UQ);  // NaN and infinity
    }
    if (bad) {
      scale[i] = NAN;
      std::memset(qi, 0, kp);
      continue;
    }
    float amax = _mm512_reduce_max_ps(vm);
    float inv1 = amax > 0.0f ? 127.0f / amax : 0.0f;
    if (!(inv1 <= 3.40282347e38f)) amax = inv1 = 0.0f;  // a row below ~4e-37: taken as zeros
    scale[i] = amax / 127.0f;
    const __m512 inv = _mm512_set1_ps(inv1);
    for (int64_t j = 0; j < kp; j += 16) {
      const int64_t left = k - j;
      const __mmask16 mk = left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1u);
      __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xi + j), inv),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
      const __m128i b = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v));
      const int64_t nb = kp - j >= 16 ? 16 : kp - j;
      std::memcpy(qi + j, &b, static_cast<size_t>(nb));
    }
  }
}
#endif
}  // namespace

void i8_quantize_rows_portable(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, float* scale) {
  quantize_generic(m, k, x, ldx, q, scale);
}

void i8_quantize_rows(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, float* scale) {
#if FR_I8_X86
  static const bool avx512 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  if (avx512) {
    quantize_avx512(m, k, x, ldx, q, scale);
    return;
  }
#endif
  quantize_generic(m, k, x, ldx, q, scale);
}

void i8_gemm(I8Isa isa, int64_t rows, int64_t n, int64_t k, const int8_t* packed, const int32_t* rowsum,
             const float* wscale, const int8_t* q, const float* xscale, const float* bias, bool accumulate,
             float* out, int64_t ldo, int64_t b0, int64_t b1) {
  const int64_t kp = i8_kpad(k), K4 = kp / 4;
  const int G = group_of(isa);
  // blocks in chunks of about 256 KB of weights, reused by every group of
  // activation rows from L2 (the input projection's many rows)
  const int64_t chunk = std::max<int64_t>(1, (int64_t(256) << 10) / (kR * kp));
  std::vector<uint8_t> xu;   // VNNI: the activations + 128
  std::vector<int16_t> x16;  // AVX2: the activations widened
  (void)xu;
  (void)x16;
  (void)rowsum;
  alignas(64) int32_t acc[8 * kR];
  alignas(64) int32_t rs128[kR];
  for (int64_t c0 = b0; c0 < b1; c0 += chunk) {
    const int64_t c1 = std::min(b1, c0 + chunk);
    for (int64_t j0 = 0; j0 < n; j0 += G) {
      const int nb = static_cast<int>(std::min<int64_t>(G, n - j0));
      const int8_t* xs[8];
      for (int j = 0; j < nb; ++j) xs[j] = q + (j0 + j) * kp;
#if FR_I8_X86
      const uint8_t* xus[8];
      const int16_t* x16s[8];
      if (isa == I8Isa::kVnni) {
        xu.resize(static_cast<size_t>(nb * kp));
        for (int j = 0; j < nb; ++j) {
          for (int64_t t = 0; t < kp; ++t) xu[j * kp + t] = static_cast<uint8_t>(xs[j][t] ^ int8_t(-128));
          xus[j] = xu.data() + j * kp;
        }
      } else if (isa == I8Isa::kAvx2) {
        x16.resize(static_cast<size_t>(nb * kp));
        for (int j = 0; j < nb; ++j) {
          for (int64_t t = 0; t < kp; ++t) x16[j * kp + t] = xs[j][t];
          x16s[j] = x16.data() + j * kp;
        }
      }
#endif
      for (int64_t b = c0; b < c1; ++b) {
        const int8_t* p = packed + b * kR * kp;
        const int64_t r0 = b * kR;
        const int nr = static_cast<int>(std::min<int64_t>(kR, rows - r0));
#if FR_I8_X86
        if (isa == I8Isa::kVnni && nb == 1 && c1 - b >= kRowBlocks) {  // a batch-1 step: B blocks at once
          const Epi e{wscale + r0, xscale + j0, bias != nullptr ? bias + r0 : nullptr, accumulate,
                      out + j0 * ldo + r0, ldo, static_cast<int>(std::min<int64_t>(kRowBlocks * kR, rows - r0))};
          vnni_row_blocks<kRowBlocks>(K4, p, kR * kp, xus[0], rowsum + r0, e);
          b += kRowBlocks - 1;
          continue;
        }
#endif
        switch (isa) {
#if FR_I8_X86
          case I8Isa::kVnni: {
            for (int r = 0; r < kR; ++r) rs128[r] = 128 * rowsum[r0 + r];
            const Epi e{wscale + r0, xscale + j0, bias != nullptr ? bias + r0 : nullptr, accumulate,
                        out + j0 * ldo + r0, ldo, nr};
            vnni_run(nb, K4, p, xus, rs128, e);
            continue;  // (its epilogue is its own)
          }
          case I8Isa::kAvx2:
            avx2_run(nb, K4, p, x16s, acc);
            break;
#endif
#if FR_I8_NEON
          case I8Isa::kNeonDot:
            dot_run(nb, K4, p, xs, acc);
            break;
#endif
          default:
            scalar_block(nb, K4, p, xs, acc);
            break;
        }
        finish(acc, nb, r0, nr, wscale, xscale + j0, bias, accumulate, out + j0 * ldo, ldo);
      }
    }
  }
  (void)rs128;
}

}  // namespace cpu
}  // namespace fastrnn
