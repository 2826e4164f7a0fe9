// fastrnn's own GEMMs for the per-step recurrent products: the vector kernels
// of vec_gemm.h (ATen-free) with their threading and the path choice's errors.
// Row-major throughout.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/string_view.h>

#include "../checks.h"
#include "vec_gemm.h"

#include <cstdint>

namespace fastrnn {
namespace cpu {

// The op's path argument as StepMatrix's choice: "own" (the float32 kernel's
// AVX-512 build; an error on a CPU without AVX-512F), "own_avx2" (its AVX2 + FMA
// build), "own_neon" (its aarch64 NEON build), "blas", or "bf16dot" (the
// AVX512-BF16 kernel; an error on a CPU without it, or for any storage dtype but
// bfloat16, since it rounds its operands to bf16).  A kernel this CPU or this
// build cannot run is an error naming the instructions it needs.
CpuGemm gemm_path(c10::string_view path, at::ScalarType storage);

// The float32 kernel's vector unit for an own path (kOwn, kOwnAvx2, kOwnNeon).
VecIsa own_isa(CpuGemm g);

// C (m x n) = A (m x k) @ op(B) + beta C, op(B) as packed by pack_b, through the
// float32 kernel built for ``isa``, which gemm_path has checked this build and
// CPU run (it is not asked again per step).  C is not read when beta == 0.
// Splits across threads only outside a parallel region.
void packed_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                 const float* packed, float beta, float* c, int64_t ldc, VecIsa isa);

// C (m x n) = A (m x k) @ W^T (+ C when ``accumulate``) with W (n x k, row stride
// ldw) read in place by the dot-product kernel built for ``isa`` (vec_rows_dot):
// for a few rows, where packing W would cost a good share of the products it
// serves.  Its columns split across threads in blocks of 16 past 2^17
// multiply-adds, outside a parallel region; the bits do not depend on the split.
void dot_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
              bool accumulate, float* c, int64_t ldc, VecIsa isa);

// The unpacked kernel (vec_gemm.h's strided_run), split across threads.  Needs AVX-512F.
void strided_gemm(int64_t m, int64_t n, const StridedTerm* terms, int nterms, const float* bias, float beta,
                  float* c, int64_t crs, int64_t ccs);

// The bf16 kernel (vec_gemm.h's bf16_panels), split across threads.  Needs AVX512-BF16.
void packed_gemm_bf16(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                      const uint16_t* packed, float beta, float* c, int64_t ldc);

}  // namespace cpu
}  // namespace fastrnn
