// fastrnn's own fp32 GEMM for the per-step recurrent products (step_gemm.cpp):
// the right-hand operand packed once per call, then C = A @ op(B) + beta C per
// step through an AVX-512 register tile.  Row-major throughout.
#pragma once

#include <c10/util/string_view.h>

#include <cstdint>

namespace fastrnn {
namespace cpu {

constexpr int64_t kNR = 32;  // columns of a packed panel

// Whether this CPU can run the kernel (AVX-512F).
bool has_avx512f();

// The op's path argument as StepMatrix's choice: "own" (this kernel; an error on
// a CPU without AVX-512F) or "blas".
bool own_path(c10::string_view path);

// Floats needed to pack a k x n operand (n rounded up to whole panels).
int64_t packed_floats(int64_t k, int64_t n);

// Packs op(B) (k x n; op(B) = B^T, i.e. b is n x k, when tb) into dst, which
// must be 64-byte aligned and hold packed_floats(k, n) floats.
void pack_b(const float* b, int64_t ldb, bool tb, int64_t k, int64_t n, float* dst);

// C (m x n) = A (m x k) @ op(B) + beta C, op(B) as packed by pack_b.  C is not
// read when beta == 0.  Splits across threads only outside a parallel region.
void packed_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                 const float* packed, float beta, float* c, int64_t ldc);

}  // namespace cpu
}  // namespace fastrnn
