// fastrnn's own fp32 GEMM for the per-step recurrent products (step_gemm.cpp):
// the right-hand operand packed once per call, then C = A @ op(B) + beta C per
// step through an AVX-512 register tile.  Row-major throughout.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/string_view.h>

#include "../checks.h"

#include <cstdint>

namespace fastrnn {
namespace cpu {

constexpr int64_t kNR = 32;  // columns of a packed panel

// Whether this CPU can run the kernel (AVX-512F).
bool has_avx512f();

// Whether this CPU can run the AVX2 version of the kernel (AVX2 and FMA).
bool has_avx2_fma();

// Whether this CPU can run the bf16 kernel (AVX512-BF16: vdpbf16ps).
bool has_avx512bf16();

// The op's path argument as StepMatrix's choice: "own" (the float32 kernel; an
// error on a CPU without AVX-512F), "own_avx2" (its AVX2 + FMA version; an error
// on a CPU without them), "blas", or "bf16dot" (the AVX512-BF16
// kernel; an error on a CPU without it, or for any storage dtype but bfloat16,
// since it rounds its operands to bf16).
CpuGemm gemm_path(c10::string_view path, at::ScalarType storage);

// Floats needed to pack a k x n operand (n rounded up to whole panels).
int64_t packed_floats(int64_t k, int64_t n);

// Packs op(B) (k x n; op(B) = B^T, i.e. b is n x k, when tb) into dst, which
// must be 64-byte aligned and hold packed_floats(k, n) floats.
void pack_b(const float* b, int64_t ldb, bool tb, int64_t k, int64_t n, float* dst);

// C (m x n) = A (m x k) @ op(B) + beta C, op(B) as packed by pack_b, through the
// AVX-512 kernel or, with avx2, its AVX2 + FMA version.  C is not read when
// beta == 0.  Splits across threads only outside a parallel region.
void packed_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                 const float* packed, float beta, float* c, int64_t ldc, bool avx2 = false);

// The unpacked kernel (the Cell modules' products): C (m x n) = sum over the
// terms of A_t (m x k_t) @ B_t (k_t x n) + bias + beta C, where A_t's element
// (r, kk) is a[r ars + kk acs] (a row-major matrix or its transpose), B_t is
// row-major with row stride ldb, bias (m, one value per row of C) may be null,
// and C's element (r, j) is c[r crs + j ccs] with ccs == 1 (row-major) or
// crs == 1 (transposed).  C is not read when beta == 0.  Needs AVX-512F.
struct StridedTerm {
  const float* a;
  int64_t ars, acs;
  const float* b;
  int64_t ldb, k;
};
void strided_gemm(int64_t m, int64_t n, const StridedTerm* terms, int nterms, const float* bias, float beta,
                  float* c, int64_t crs, int64_t ccs);
// dst (cols x rows) = src (rows x cols)^T, both row-major and contiguous.
void transpose_rows(int64_t rows, int64_t cols, const float* src, float* dst);

// The bf16 kernel: op(B) packed as pairs of k (``P[((p K2 + kk) kNR + c) 2 + s]
// = op(B)[2 kk + s][p kNR + c]``, K2 = ceil(k / 2), zero-padded), bf16 bits.
int64_t packed_bf16_elems(int64_t k, int64_t n);
void pack_b_bf16(const float* b, int64_t ldb, bool tb, int64_t k, int64_t n, uint16_t* dst);
// Rows of a (m x k float32, row stride lda) rounded to bf16 (nearest even) into
// dst (row stride k).
void rows_to_bf16(int64_t m, int64_t k, const float* a, int64_t lda, uint16_t* dst);
// C (m x n, float32) = A (m x k, bf16 bits, row stride lda) @ op(B) + beta C,
// products of bf16 pairs summed in float32 (vdpbf16ps).
void packed_gemm_bf16(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                      const uint16_t* packed, float beta, float* c, int64_t ldc);

}  // namespace cpu
}  // namespace fastrnn
