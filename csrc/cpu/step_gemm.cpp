// fastrnn's own fp32 GEMM for the per-step recurrent products, AVX-512 (and AVX2 + FMA).
//
// Why: the per-step product of a recurrence is small and repeated (e.g. 16 rows
// x 256 x 1024 per thread, 35 times per layer), and on AMD processors MKL takes
// its AVX2 code path: its packed GEMM reached ~40 GFLOP/s per core there at 16
// rows, against the core's ~110 GFLOP/s of AVX-512 FMA (Zen 4).  The right-hand
// operand (W_hh or its transpose) is fixed for a whole call, so it is packed
// once into column panels of kNR floats, k-major, zero-padded to a full panel:
//
//     P[(p k + kk) kNR + c] = op(B)[kk][p kNR + c]
//
// and every step streams the panels through a register tile of up to kMR rows
// x kNR columns (kMR * 2 accumulators of 16 floats, 2 panel loads and kMR
// broadcasts per k).  Sums run in k order with one FMA per term, as a BLAS does.
#include "step_gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FR_HAVE_X86 1
#else
#define FR_HAVE_X86 0
#endif

namespace fastrnn {
namespace cpu {

namespace {

constexpr int kMR = 8;  // rows of a register tile

#if FR_HAVE_X86
#define FR_AVX512 __attribute__((target("avx512f")))

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

// C[0:MR, 0:nc] = A[0:MR, 0:k] @ P (one panel) + beta C; nc <= kNR.
template <int MR>
FR_AVX512 void tile(int64_t k, const float* __restrict a, int64_t lda, const float* __restrict p,
                    float beta, float* __restrict c, int64_t ldc, int nc) {
  __m512 lo[MR], hi[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    lo[r] = _mm512_setzero_ps();
    hi[r] = _mm512_setzero_ps();
  }
  const float* ar[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) ar[r] = a + r * lda;
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m512 b0 = _mm512_load_ps(p + kk * kNR);
    const __m512 b1 = _mm512_load_ps(p + kk * kNR + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ar[r][kk]);
      lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
      hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
    }
  }
  store_tile<MR>(lo, hi, beta, c, ldc, nc);
}

using TileFn = void (*)(int64_t, const float*, int64_t, const float*, float, float*, int64_t, int);
constexpr TileFn kTiles[kMR + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>,
                                     tile<5>, tile<6>, tile<7>, tile<8>};

// Panels [p0, p1) for all m rows, row tiles innermost so that a panel is
// reused from L1 by every row tile.
FR_AVX512 void panels(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                      const float* packed, float beta, float* c, int64_t ldc, int64_t p0,
                      int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* pp = packed + p * k * kNR;
    const int nc = static_cast<int>(std::min<int64_t>(kNR, n - p * kNR));
    for (int64_t r = 0; r < m; r += kMR) {
      const int mr = static_cast<int>(std::min<int64_t>(kMR, m - r));
      kTiles[mr](k, a + r * lda, lda, pp, beta, c + r * ldc + p * kNR, ldc, nc);
    }
  }
}

// The AVX2 + FMA kernel: the same packed panels, each taken as two halves of 16
// columns (a half's rows are whole cache lines, so a half panel stays in L1 for
// every row tile) through a register tile of up to kMR2 rows x 16 columns:
// kMR2 * 2 accumulators of 8 floats, 2 panel loads and a broadcast, 15 of the 16
// ymm registers.  Sums in k order with one FMA per term, as the AVX-512 kernel.
#define FR_AVX2 __attribute__((target("avx2,fma")))
constexpr int kMR2 = 6;

// The column mask of an 8-float vector holding n valid columns (n may be <= 0 or > 8).
FR_AVX2 inline __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <int MR>
FR_AVX2 void tile_avx2(int64_t k, const float* __restrict a, int64_t lda, const float* __restrict p,
                       float beta, float* __restrict c, int64_t ldc, int nc) {
  __m256 lo[MR], hi[MR];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    lo[r] = _mm256_setzero_ps();
    hi[r] = _mm256_setzero_ps();
  }
  const float* ar[MR];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) ar[r] = a + r * lda;
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 b0 = _mm256_load_ps(p + kk * kNR);
    const __m256 b1 = _mm256_load_ps(p + kk * kNR + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(ar[r] + kk);
      lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
      hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
    }
  }
  const __m256i m0 = lane_mask(nc), m1 = lane_mask(nc - 8);
  const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
    __m256 x0 = lo[r], x1 = hi[r];
    if (beta != 0.0f) {
      x0 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr, m0), x0);
      x1 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr + 8, m1), x1);
    }
    _mm256_maskstore_ps(cr, m0, x0);
    _mm256_maskstore_ps(cr + 8, m1, x1);
  }
}

constexpr TileFn kTilesAvx2[kMR2 + 1] = {nullptr, tile_avx2<1>, tile_avx2<2>, tile_avx2<3>,
                                         tile_avx2<4>, tile_avx2<5>, tile_avx2<6>};

FR_AVX2 void panels_avx2(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                         const float* packed, float beta, float* c, int64_t ldc, int64_t p0,
                         int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* pp = packed + p * k * kNR;
    const int nc = static_cast<int>(std::min<int64_t>(kNR, n - p * kNR));
    for (int half = 0; half * 16 < nc; ++half) {
      const int nh = std::min(16, nc - 16 * half);
      for (int64_t r = 0; r < m; r += kMR2) {
        const int mr = static_cast<int>(std::min<int64_t>(kMR2, m - r));
        kTilesAvx2[mr](k, a + r * lda, lda, pp + 16 * half, beta, c + r * ldc + p * kNR + 16 * half, ldc, nh);
      }
    }
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

// float -> bf16 bits, rounded to nearest even (NaN stays NaN), as c10::BFloat16 does.
uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// The driver both kernels share: C = beta C when there is nothing to multiply
// (k <= 0), else f(p0, p1) over the panels [p0, p1) of C's columns, split
// across threads outside a parallel region (small batches run as one row block)
// when the product has at least min_macs multiply-adds (a fork/join ~10 us here).
template <typename F>
void over_panels(int64_t m, int64_t n, int64_t k, float beta, float* c, int64_t ldc,
                 int64_t min_macs, const F& f) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < n; ++j) c[r * ldc + j] = beta == 0.0f ? 0.0f : beta * c[r * ldc + j];
    return;
  }
  const int64_t np = (n + kNR - 1) / kNR;
  if (!at::in_parallel_region() && at::get_num_threads() > 1 && np > 1 && m * n * k >= min_macs)
    at::parallel_for(0, np, 1, f);
  else
    f(int64_t(0), np);
}

}  // namespace

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
  static const bool has = [] {  // asked per step (rows_to_bf16, packed_gemm_bf16): probed once
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
#else
  return false;
#endif
}

CpuGemm gemm_path(c10::string_view path, at::ScalarType storage) {
  if (path == "blas") return CpuGemm::kBlas;
  if (path == "own") {
    TORCH_CHECK(has_avx512f(), "fastrnn: the 'own' cpu path needs AVX-512F, which this CPU lacks");
    return CpuGemm::kOwn;
  }
  if (path == "own_avx2") {
    TORCH_CHECK(has_avx2_fma(), "fastrnn: the 'own_avx2' cpu path needs AVX2 and FMA, which this CPU lacks");
    return CpuGemm::kOwnAvx2;
  }
  TORCH_CHECK(path == "bf16dot", "fastrnn: the cpu path is 'own', 'own_avx2', 'blas' or 'bf16dot', not '",
              std::string(path), "'");
  TORCH_CHECK(has_avx512bf16(), "fastrnn: the 'bf16dot' cpu path needs AVX512-BF16, which this CPU lacks");
  TORCH_CHECK(storage == at::kBFloat16, "fastrnn: the 'bf16dot' cpu path rounds its operands to bfloat16, "
              "so it runs bfloat16 data only, not ", storage);
  return CpuGemm::kBf16Dot;
}

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

void packed_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                 const float* packed, float beta, float* c, int64_t ldc, bool avx2) {
#if FR_HAVE_X86
  over_panels(m, n, k, beta, c, ldc, int64_t(1) << 17, [&](int64_t p0, int64_t p1) {
    if (avx2)
      panels_avx2(m, n, k, a, lda, packed, beta, c, ldc, p0, p1);
    else
      panels(m, n, k, a, lda, packed, beta, c, ldc, p0, p1);
  });
#else
  (void)m, (void)n, (void)k, (void)a, (void)lda, (void)packed, (void)beta, (void)c, (void)ldc, (void)avx2;
  TORCH_CHECK(false, "fastrnn: the AVX-512 step GEMM is not built for this architecture");
#endif
}

void strided_gemm(int64_t m, int64_t n, const StridedTerm* terms, int nterms, const float* bias, float beta,
                  float* c, int64_t crs, int64_t ccs) {
#if FR_HAVE_X86
  TORCH_CHECK(has_avx512f(), "fastrnn: the AVX-512 GEMM needs AVX-512F, which this CPU lacks");
  if (m <= 0 || n <= 0) return;
  int64_t macs = 0;
  for (int t = 0; t < nterms; ++t) macs += m * n * std::max<int64_t>(terms[t].k, 0);
  // tiles of kMR rows x kNR columns, panel by panel (a panel of B stays in cache
  // for every row tile), split across threads in contiguous runs
  const int64_t R = (m + kMR - 1) / kMR, P = (n + kNR - 1) / kNR;
  const bool trans = ccs != 1;
  auto run = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t / R, r = (t % R) * kMR;
      const int mr = static_cast<int>(std::min<int64_t>(kMR, m - r));
      const int nc = static_cast<int>(std::min<int64_t>(kNR, n - p * kNR));
      if (trans)
        kTilesStrided<true>[mr](terms, nterms, r, p * kNR, bias, beta, c, crs, ccs, nc);
      else
        kTilesStrided<false>[mr](terms, nterms, r, p * kNR, bias, beta, c, crs, ccs, nc);
    }
  };
  if (!at::in_parallel_region() && at::get_num_threads() > 1 && R * P > 1 && macs >= (int64_t(1) << 17))
    at::parallel_for(0, R * P, 1, run);
  else
    run(0, R * P);
#else
  (void)m, (void)n, (void)terms, (void)nterms, (void)bias, (void)beta, (void)c, (void)crs, (void)ccs;
  TORCH_CHECK(false, "fastrnn: the AVX-512 GEMM is not built for this architecture");
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

void packed_gemm_bf16(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                      const uint16_t* packed, float beta, float* c, int64_t ldc) {
#if FR_HAVE_X86
  TORCH_CHECK(has_avx512bf16(), "fastrnn: the bf16 step GEMM needs AVX512-BF16");
  // a bf16 multiply-add costs about half an fp32 one: twice packed_gemm's threshold
  over_panels(m, n, k, beta, c, ldc, int64_t(1) << 18, [&](int64_t p0, int64_t p1) {
    panels_bf16(m, n, k, a, lda, packed, beta, c, ldc, p0, p1);
  });
#else
  (void)m, (void)n, (void)k, (void)a, (void)lda, (void)packed, (void)beta, (void)c, (void)ldc;
  TORCH_CHECK(false, "fastrnn: the bf16 step GEMM is not built for this architecture");
#endif
}

}  // namespace cpu
}  // namespace fastrnn

// ------------------------------------------------------------------ test op
// fastrnn_ext::cpu_step_gemm(a, b, tb, beta, c, impl) -> a @ op(b) + beta c
// through StepMatrix with the path impl ("own": this file's float32 kernel, an
// error on a CPU without AVX-512F; "own_avx2": its AVX2 + FMA version; "blas"; "bf16dot": the bf16 kernel, a and b
// rounded to bf16; "strided": the unpacked kernel, as the cells call it), for
// the tests; and cpu_features() -> what
// the switchboard decides the CPU path from ("amd", "intel", "avx2", "fma",
// "avx512f", "avx512_bf16", "amx_bf16").
#include <torch/library.h>

#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

at::Tensor step_gemm_op(const at::Tensor& a, const at::Tensor& b, bool tb, double beta,
                        const at::Tensor& c, c10::string_view impl) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && c.dim() == 2, "cpu_step_gemm: 2-D tensors");
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  c.scalar_type() == at::kFloat, "cpu_step_gemm: float32 tensors");
  const int64_t m = a.size(0), k = a.size(1), n = tb ? b.size(0) : b.size(1);
  TORCH_CHECK((tb ? b.size(1) : b.size(0)) == k && c.size(0) == m && c.size(1) == n,
              "cpu_step_gemm: shapes do not match");
  const at::Tensor A = a.contiguous(), B = b.contiguous();
  at::Tensor C = c.contiguous().clone();
  const float fb = static_cast<float>(beta);
  if (impl == "strided") {  // the unpacked kernel, as the cells' products call it (cells.cpp)
    if (!tb) {
      const StridedTerm t{A.data_ptr<float>(), k, 1, B.data_ptr<float>(), n, k};
      strided_gemm(m, n, &t, 1, nullptr, fb, C.data_ptr<float>(), n, 1);
    } else {  // C^T = B @ A^T, A transposed first, C written transposed
      std::vector<float> At(static_cast<size_t>(m * k));
      transpose_rows(m, k, A.data_ptr<float>(), At.data());
      const StridedTerm t{B.data_ptr<float>(), k, 1, At.data(), m, k};
      strided_gemm(n, m, &t, 1, nullptr, fb, C.data_ptr<float>(), 1, n);
    }
    return C;
  }
  // "bf16dot" rounds a and b to bf16 (the kernel's contract for bf16 storage)
  const CpuGemm g = gemm_path(impl, impl == "bf16dot" ? at::kBFloat16 : at::kFloat);
  const StepMatrix<float> W(g, B.data_ptr<float>(), B.size(1), tb, m, n, k);
  W.mul(A.data_ptr<float>(), k, fb, C.data_ptr<float>(), n);
  return C;
}

std::string cpu_features_op() {
  std::string f;
#if FR_HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_is("amd")) f += "amd ";
  if (__builtin_cpu_is("intel")) f += "intel ";
#endif
  if (has_avx2_fma()) f += "avx2 fma ";
  if (has_avx512f()) f += "avx512f ";
  if (has_avx512bf16()) f += "avx512_bf16 ";
#if FR_HAVE_X86
  if (__builtin_cpu_supports("amx-bf16")) f += "amx_bf16 ";
#endif
  if (!f.empty()) f.pop_back();
  return f;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn_ext, m) {
  m.def("cpu_step_gemm(Tensor a, Tensor b, bool tb, float beta, Tensor c, str impl) -> Tensor");
  m.def("cpu_features() -> str", &cpu_features_op);
}

TORCH_LIBRARY_IMPL(fastrnn_ext, CPU, m) {
  m.impl("cpu_step_gemm", &step_gemm_op);
}

}  // namespace cpu
}  // namespace fastrnn
