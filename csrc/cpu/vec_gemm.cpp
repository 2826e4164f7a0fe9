// fastrnn's vector kernels for the per-step recurrent products (vec_gemm.h):
// the float32 packed-panel kernel for AVX-512, AVX2 + FMA and NEON from one
// source (vec_tile.inc), and the x86-only AVX512-BF16 and unpacked kernels.  No
// ATen here: tests/kernels/ builds this file alone, natively and for aarch64.
//
// Why own kernels: the per-step product of a recurrence is small and repeated
// (e.g. 16 rows x 256 x 1024 per thread, 35 times per layer), and on AMD
// processors MKL takes its AVX2 code path: its packed GEMM reached ~40 GFLOP/s
// per core there at 16 rows, against the core's ~110 GFLOP/s of AVX-512 FMA
// (Zen 4).  The right-hand operand (W_hh or its transpose) is fixed for a whole
// call, so it is packed once into column panels of kNR floats, k-major,
// zero-padded to a full panel, and every step streams the panels through a
// register tile.  Sums run in k order with one FMA per term, as a BLAS does.
#include "vec_gemm.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FR_HAVE_X86 1
#else
#define FR_HAVE_X86 0
#endif

#if defined(__aarch64__) && defined(__GNUC__)
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#define FR_HAVE_NEON 1
#else
#define FR_HAVE_NEON 0
#endif

namespace fastrnn {
namespace cpu {

namespace {

#if FR_HAVE_X86
// ---------------------------------------------------------------- AVX-512F
namespace avx512 {
#define FR_TARGET __attribute__((target("avx512f")))
#define FR_LANES 16
#define FR_NV 2
#define FR_MR 8
#define FR_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define FR_SPLAT(x) _mm512_set1_ps(x)
#define FR_DOT_RR 4
#include "vec_tile.inc"
}  // namespace avx512

// ---------------------------------------------------------------- AVX2 + FMA
// A panel taken as two halves of 16 columns (a half's rows are whole cache
// lines, so a half panel stays in L1 for every row tile): 6 x 2 accumulators of
// 8 floats, 2 panel loads and a broadcast, 15 of the 16 ymm registers.
namespace avx2 {
#define FR_TARGET __attribute__((target("avx2,fma")))
#define FR_LANES 8
#define FR_NV 2
#define FR_MR 6
#define FR_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define FR_SPLAT(x) _mm256_set1_ps(x)
#define FR_DOT_RR 2
#include "vec_tile.inc"
}  // namespace avx2
#endif

#if FR_HAVE_NEON
// ---------------------------------------------------------------- NEON
// Half panels of 16 columns as 4 vectors of 4: 5 x 4 accumulators, 4 panel
// loads and the 5 rows' A values (multiplied by lane), 29 of the 32 registers
// (6 rows spilled two accumulators on every k).
namespace neon {
#define FR_TARGET
#define FR_LANES 4
#define FR_NV 4
#define FR_MR 5
#define FR_FMA(a, b, c) vf(vfmaq_f32(float32x4_t(c), float32x4_t(a), float32x4_t(b)))
#define FR_SPLAT(x) vf(vdupq_n_f32(x))
#define FR_DOT_RR 4
#include "vec_tile.inc"
}  // namespace neon
#endif

#if FR_HAVE_X86
#define FR_AVX512 __attribute__((target("avx512f")))
constexpr int kMR = 8;  // rows of the AVX-512 bf16 and unpacked kernels' tiles

// The column mask of a tile's lo (columns 0-15) or hi (16-31) half, nc columns.
inline __mmask16 tile_mask(int nc, int half) {
  const int n = nc - 16 * half;
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// C[0:MR, 0:nc] = the accumulators (lo: columns 0-15, hi: 16-31) + beta C.
template <int MR>
FR_AVX512 inline __attribute__((always_inline)) void store_tile(const __m512* lo, const __m512* hi,
                                                                float beta, float* __restrict c, int64_t ldc,
                                                                int nc) {
  const __mmask16 m0 = tile_mask(nc, 0), m1 = tile_mask(nc, 1);
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
    __m512 x0 = lo[r], x1 = hi[r];
    if (beta != 0.0f) {
      x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), x0);
      x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), x1);
    }
    _mm512_mask_storeu_ps(cr, m0, x0);
    _mm512_mask_storeu_ps(cr + 16, m1, x1);
  }
}

// The bf16 kernel (AVX512-BF16).  Per pair of k a panel's 32 columns are two
// 512-bit loads of 16 (even k, odd k) bf16 pairs; each row's pair of A values is
// broadcast as one 32-bit word, and vdpbf16ps adds both products of every lane
// to its float32 accumulator: 32 multiply-adds per instruction, twice the fp32
// FMA's, from half the bytes of W.
#define FR_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

template <int MR>
FR_AVX512BF16 void tile_bf16(int64_t k, const uint16_t* __restrict a, int64_t lda,
                             const uint16_t* __restrict p, float beta, float* __restrict c,
                             int64_t ldc, int nc) {
  __m512 lo[MR], hi[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    lo[r] = _mm512_setzero_ps();
    hi[r] = _mm512_setzero_ps();
  }
  const uint16_t* ar[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) ar[r] = a + r * lda;
  const int64_t k2 = k / 2;
  for (int64_t kk = 0; kk < k2; ++kk) {
    const __m512i b0 = _mm512_load_si512(p + kk * 2 * kNR);
    const __m512i b1 = _mm512_load_si512(p + kk * 2 * kNR + kNR);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, ar[r] + 2 * kk, sizeof(pair));
      const __m512i av = _mm512_set1_epi32(pair);
      lo[r] = _mm512_dpbf16_ps(lo[r], (__m512bh)av, (__m512bh)b0);
      hi[r] = _mm512_dpbf16_ps(hi[r], (__m512bh)av, (__m512bh)b1);
    }
  }
  if (k & 1) {  // the last k alone: its pair's odd half is zero in A and in P
    const __m512i b0 = _mm512_load_si512(p + k2 * 2 * kNR);
    const __m512i b1 = _mm512_load_si512(p + k2 * 2 * kNR + kNR);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(static_cast<int32_t>(ar[r][k - 1]));
      lo[r] = _mm512_dpbf16_ps(lo[r], (__m512bh)av, (__m512bh)b0);
      hi[r] = _mm512_dpbf16_ps(hi[r], (__m512bh)av, (__m512bh)b1);
    }
  }
  store_tile<MR>(lo, hi, beta, c, ldc, nc);
}

using TileBf16Fn = void (*)(int64_t, const uint16_t*, int64_t, const uint16_t*, float, float*,
                            int64_t, int);
constexpr TileBf16Fn kTilesBf16[kMR + 1] = {nullptr, tile_bf16<1>, tile_bf16<2>, tile_bf16<3>,
                                            tile_bf16<4>, tile_bf16<5>, tile_bf16<6>,
                                            tile_bf16<7>, tile_bf16<8>};

FR_AVX512BF16 void panels_bf16(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                               const uint16_t* packed, float beta, float* c, int64_t ldc,
                               int64_t p0, int64_t p1) {
  const int64_t k2 = (k + 1) / 2;
  for (int64_t p = p0; p < p1; ++p) {
    const uint16_t* pp = packed + p * k2 * 2 * kNR;
    const int nc = static_cast<int>(std::min<int64_t>(kNR, n - p * kNR));
    for (int64_t r = 0; r < m; r += kMR) {
      const int mr = static_cast<int>(std::min<int64_t>(kMR, m - r));
      kTilesBf16[mr](k, a + r * lda, lda, pp, beta, c + r * ldc + p * kNR, ldc, nc);
    }
  }
}

// The unpacked kernel (the Cell modules' products, cells.cpp: one product per
// call, so packing B would cost more than it saves): C = sum over terms of
// A_t @ B_t (+ a bias per row of C) + beta C.  Element (r, kk) of A_t is
// a[r ars + kk acs] (a row-major matrix or its transpose), B_t's rows are read
// in place (row stride ldb, the last panel's columns masked), and C is written
// row-major (ccs 1) or, with TransC, transposed (crs 1): through a buffer,
// column by column.
template <int MR, bool TransC>
FR_AVX512 void tile_strided(const StridedTerm* terms, int nterms, int64_t r0, int64_t j0,
                            const float* __restrict bias, float beta, float* __restrict c,
                            int64_t crs, int64_t ccs, int nc) {
  const __mmask16 m0 = tile_mask(nc, 0), m1 = tile_mask(nc, 1);
  __m512 lo[MR], hi[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    lo[r] = bias != nullptr ? _mm512_set1_ps(bias[r0 + r]) : _mm512_setzero_ps();
    hi[r] = lo[r];
  }
  for (int t = 0; t < nterms; ++t) {
    const StridedTerm& T = terms[t];
    const int64_t acs = T.acs, ldb = T.ldb;
    const float* ar[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) ar[r] = T.a + (r0 + r) * T.ars;
    const float* b = T.b + j0;
    for (int64_t kk = 0; kk < T.k; ++kk) {
      const float* br = b + kk * ldb;
      const __m512 b0 = _mm512_maskz_loadu_ps(m0, br);
      const __m512 b1 = _mm512_maskz_loadu_ps(m1, br + 16);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(ar[r][kk * acs]);
        lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
        hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
      }
    }
  }
  c += r0 * crs + j0 * ccs;
  if constexpr (!TransC) {
    store_tile<MR>(lo, hi, beta, c, crs, nc);
  } else {
    alignas(64) float buf[MR][kNR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      _mm512_store_ps(buf[r], lo[r]);
      _mm512_store_ps(buf[r] + 16, hi[r]);
    }
    for (int j = 0; j < nc; ++j) {
      float* cj = c + j * ccs;
      if (beta == 0.0f)
        for (int r = 0; r < MR; ++r) cj[r * crs] = buf[r][j];
      else
        for (int r = 0; r < MR; ++r) cj[r * crs] = beta * cj[r * crs] + buf[r][j];
    }
  }
}

using TileStridedFn = void (*)(const StridedTerm*, int, int64_t, int64_t, const float*, float, float*,
                               int64_t, int64_t, int);
template <bool TransC>
constexpr TileStridedFn kTilesStrided[kMR + 1] = {
    nullptr, tile_strided<1, TransC>, tile_strided<2, TransC>, tile_strided<3, TransC>,
    tile_strided<4, TransC>, tile_strided<5, TransC>, tile_strided<6, TransC>,
    tile_strided<7, TransC>, tile_strided<8, TransC>};

FR_AVX512BF16 void rows_to_bf16_kernel(int64_t m, int64_t k, const float* a, int64_t lda,
                                       uint16_t* dst) {
  for (int64_t r = 0; r < m; ++r) {
    const float* src = a + r * lda;
    uint16_t* d = dst + r * k;
    int64_t j = 0;
    for (; j + 16 <= k; j += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + j)));
    if (j < k) {
      const __mmask16 mk = __mmask16((1u << (k - j)) - 1u);
      _mm256_mask_storeu_epi16(d + j, mk, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, src + j)));
    }
  }
}
#endif

}  // namespace

// ------------------------------------------------------------- what the CPU has
bool has_avx512f() {
#if FR_HAVE_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

bool has_avx2_fma() {
#if FR_HAVE_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool has_avx512bf16() {
#if FR_HAVE_X86
  static const bool has = [] {  // asked per step (rows_to_bf16): probed once
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
#else
  return false;
#endif
}

bool has_amx_bf16() {
#if FR_HAVE_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("amx-bf16");
#else
  return false;
#endif
}

bool has_neon() {
#if FR_HAVE_NEON
  return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
  return false;
#endif
}

bool is_amd() {
#if FR_HAVE_X86
  __builtin_cpu_init();
  return __builtin_cpu_is("amd");
#else
  return false;
#endif
}

bool is_intel() {
#if FR_HAVE_X86
  __builtin_cpu_init();
  return __builtin_cpu_is("intel");
#else
  return false;
#endif
}

namespace {
// per VecIsa, in its order: (name, the instructions it needs)
constexpr const char* kVecNames[][2] = {
    {"avx512", "AVX-512F"}, {"avx2", "AVX2 and FMA"}, {"neon", "aarch64 Advanced SIMD (NEON)"}};
}  // namespace

const char* vec_name(VecIsa isa) { return kVecNames[static_cast<int>(isa)][0]; }

const char* vec_needs(VecIsa isa) { return kVecNames[static_cast<int>(isa)][1]; }

bool vec_built(VecIsa isa) {
  return isa == VecIsa::kNeon ? FR_HAVE_NEON : FR_HAVE_X86;
}

bool vec_runs(VecIsa isa) {
  switch (isa) {
    case VecIsa::kAvx512: return has_avx512f();
    case VecIsa::kAvx2: return has_avx2_fma();
    case VecIsa::kNeon: return has_neon();
  }
  return false;
}

// ------------------------------------------------------------- float32 kernel
int64_t packed_floats(int64_t k, int64_t n) {
  return ((n + kNR - 1) / kNR) * k * kNR;
}

void pack_b(const float* b, int64_t ldb, bool tb, int64_t k, int64_t n, float* dst) {
  const int64_t np = (n + kNR - 1) / kNR;
  for (int64_t p = 0; p < np; ++p) {
    float* d = dst + p * k * kNR;
    const int64_t j0 = p * kNR, nc = std::min<int64_t>(kNR, n - j0);
    if (tb) {
      // op(B)[kk][j0 + c] = b[j0 + c][kk]: read each of the panel's rows of b
      // sequentially and scatter it down a column of the (L2-resident) panel;
      // the column-gathering order read 32 strided streams and cost ~5 ms for a
      // 16 MB W_hh (H 1024).
      for (int64_t c = 0; c < nc; ++c) {
        const float* src = b + (j0 + c) * ldb;
        for (int64_t kk = 0; kk < k; ++kk) d[kk * kNR + c] = src[kk];
      }
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t c = nc; c < kNR; ++c) d[kk * kNR + c] = 0.0f;
    } else {
      for (int64_t kk = 0; kk < k; ++kk) {
        float* row = d + kk * kNR;
        std::memcpy(row, b + kk * ldb + j0, sizeof(float) * nc);
        for (int64_t c = nc; c < kNR; ++c) row[c] = 0.0f;
      }
    }
  }
}

void vec_panels(VecIsa isa, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                const float* packed, float beta, float* c, int64_t ldc, int64_t p0, int64_t p1) {
  switch (isa) {
#if FR_HAVE_X86
    case VecIsa::kAvx512: avx512::panels(m, n, k, a, lda, packed, beta, c, ldc, p0, p1); return;
    case VecIsa::kAvx2: avx2::panels(m, n, k, a, lda, packed, beta, c, ldc, p0, p1); return;
#endif
#if FR_HAVE_NEON
    case VecIsa::kNeon: neon::panels(m, n, k, a, lda, packed, beta, c, ldc, p0, p1); return;
#endif
    default: break;
  }
  __builtin_trap();  // callers ask vec_runs first (step_gemm.cpp's gemm_path)
}

// ------------------------------------------------------------- dot-product kernel
void vec_rows_dot(VecIsa isa, int64_t m, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
                  int64_t j0, int64_t j1, const float* bias, bool accumulate, float* c, int64_t ldc) {
  switch (isa) {
#if FR_HAVE_X86
    case VecIsa::kAvx512: avx512::rows_dot(m, k, a, lda, w, ldw, j0, j1, bias, accumulate, c, ldc); return;
    case VecIsa::kAvx2: avx2::rows_dot(m, k, a, lda, w, ldw, j0, j1, bias, accumulate, c, ldc); return;
#endif
#if FR_HAVE_NEON
    case VecIsa::kNeon: neon::rows_dot(m, k, a, lda, w, ldw, j0, j1, bias, accumulate, c, ldc); return;
#endif
    default: break;
  }
  __builtin_trap();  // callers ask vec_runs first
}

// ------------------------------------------------------------- bf16 kernel
int64_t packed_bf16_elems(int64_t k, int64_t n) {
  return ((n + kNR - 1) / kNR) * ((k + 1) / 2) * 2 * kNR;
}

void pack_b_bf16(const float* b, int64_t ldb, bool tb, int64_t k, int64_t n, uint16_t* dst) {
  const int64_t np = (n + kNR - 1) / kNR, k2 = (k + 1) / 2;
  std::memset(dst, 0, sizeof(uint16_t) * packed_bf16_elems(k, n));
  // b rounded to bf16 first (vectorised), then its pairs of k moved as 32-bit words
  const int64_t rows = tb ? n : k, cols = tb ? k : n;
  std::vector<uint16_t> t(static_cast<size_t>(rows * cols));
  rows_to_bf16(rows, cols, b, ldb, t.data());
  uint32_t* d32 = reinterpret_cast<uint32_t*>(dst);
  for (int64_t p = 0; p < np; ++p) {
    const int64_t j0 = p * kNR, nc = std::min<int64_t>(kNR, n - j0);
    uint32_t* d = d32 + p * k2 * kNR;
    if (tb) {  // op(B)[kk][j0 + c] = b[j0 + c][kk]: a row of b holds column c's pairs in order
      for (int64_t c = 0; c < nc; ++c) {
        const uint16_t* src = t.data() + (j0 + c) * k;
        for (int64_t i = 0; i < k / 2; ++i)
          d[i * kNR + c] = uint32_t(src[2 * i]) | (uint32_t(src[2 * i + 1]) << 16);
        if (k & 1) d[(k / 2) * kNR + c] = src[k - 1];
      }
    } else {  // rows 2i and 2i+1 of b interleaved
      for (int64_t i = 0; i < k2; ++i) {
        const uint16_t* r0 = t.data() + 2 * i * n + j0;
        uint32_t* di = d + i * kNR;
        if (2 * i + 1 < k) {
          const uint16_t* r1 = r0 + n;
          for (int64_t c = 0; c < nc; ++c) di[c] = uint32_t(r0[c]) | (uint32_t(r1[c]) << 16);
        } else {
          for (int64_t c = 0; c < nc; ++c) di[c] = r0[c];
        }
      }
    }
  }
}


void bf16_panels(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                 const uint16_t* packed, float beta, float* c, int64_t ldc, int64_t p0, int64_t p1) {
#if FR_HAVE_X86
  panels_bf16(m, n, k, a, lda, packed, beta, c, ldc, p0, p1);
#else
  (void)m, (void)n, (void)k, (void)a, (void)lda, (void)packed, (void)beta, (void)c, (void)ldc, (void)p0, (void)p1;
  __builtin_trap();  // callers ask has_avx512bf16 first
#endif
}

// ------------------------------------------------------------- unpacked kernel
int64_t strided_tiles(int64_t m, int64_t n) {
  return ((m + 8 - 1) / 8) * ((n + kNR - 1) / kNR);
}

void strided_run(int64_t m, int64_t n, const StridedTerm* terms, int nterms, const float* bias, float beta,
                 float* c, int64_t crs, int64_t ccs, int64_t t0, int64_t t1) {
#if FR_HAVE_X86
  // tiles of kMR rows x kNR columns, panel by panel (a panel of B stays in cache
  // for every row tile)
  const int64_t R = (m + kMR - 1) / kMR;
  const bool trans = ccs != 1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t p = t / R, r = (t % R) * kMR;
    const int mr = static_cast<int>(std::min<int64_t>(kMR, m - r));
    const int nc = static_cast<int>(std::min<int64_t>(kNR, n - p * kNR));
    if (trans)
      kTilesStrided<true>[mr](terms, nterms, r, p * kNR, bias, beta, c, crs, ccs, nc);
    else
      kTilesStrided<false>[mr](terms, nterms, r, p * kNR, bias, beta, c, crs, ccs, nc);
  }
#else
  (void)m, (void)n, (void)terms, (void)nterms, (void)bias, (void)beta, (void)c, (void)crs, (void)ccs, (void)t0, (void)t1;
  __builtin_trap();  // callers ask has_avx512f first
#endif
}

void transpose_rows(int64_t rows, int64_t cols, const float* src, float* dst) {
  // blocks of 16 x 16: both the rows read and the rows written stay in L1
  constexpr int64_t kB = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kB)
    for (int64_t c0 = 0; c0 < cols; c0 += kB) {
      const int64_t r1 = std::min(rows, r0 + kB), c1 = std::min(cols, c0 + kB);
      for (int64_t cc = c0; cc < c1; ++cc)
        for (int64_t r = r0; r < r1; ++r) dst[cc * rows + r] = src[r * cols + cc];
    }
}

// float -> bf16 bits, rounded to nearest even (NaN stays NaN), as c10::BFloat16 does.
uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

void rows_to_bf16(int64_t m, int64_t k, const float* a, int64_t lda, uint16_t* dst) {
#if FR_HAVE_X86
  if (has_avx512bf16()) {
    rows_to_bf16_kernel(m, k, a, lda, dst);
    return;
  }
#endif
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < k; ++j) dst[r * k + j] = bf16_bits(a[r * lda + j]);
}

}  // namespace cpu
}  // namespace fastrnn
