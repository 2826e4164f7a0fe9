// fastrnn's vector kernels for the CPU's per-step products (vec_gemm.cpp), free of
// ATen and c10 so that they build and are tested alone (tests/kernels/), on x86
// and on aarch64 alike.  Threading, error messages and tensors are step_gemm.cpp's.
//
// The float32 kernel is one source (vec_tile.inc) built for each vector unit
// (VecIsa) with GCC/Clang vector extensions under a target attribute; the CPU's
// units are asked at run time (CPUID on x86, HWCAP on aarch64), and a unit this
// build or this CPU lacks is never run (vec_runs).  All products sum in k order
// with one fused multiply-add per term, so every unit gives the same bits.
#pragma once

#include <cstdint>

namespace fastrnn {
namespace cpu {

constexpr int64_t kNR = 32;  // columns of a packed panel

// The vector units the float32 kernel is built for: AVX-512F (16 lanes, a tile of
// 8 rows x 32 columns), AVX2 + FMA (8 lanes, 6 x 16) and aarch64's Advanced SIMD
// (NEON: 4 lanes, 5 x 16, in 29 of its 32 registers).
enum class VecIsa : int { kAvx512, kAvx2, kNeon };

const char* vec_name(VecIsa isa);            // "avx512", "avx2", "neon"
const char* vec_needs(VecIsa isa);           // the instructions it needs, for error messages
bool vec_built(VecIsa isa);                  // compiled into this build (its architecture)
bool vec_runs(VecIsa isa);                   // built, and this CPU has the instructions

// What the CPU has (false on another architecture).
bool has_avx512f();
bool has_avx2_fma();
bool has_avx512bf16();  // AVX512-BF16 (vdpbf16ps), with AVX512F/BW/VL
bool has_amx_bf16();
bool has_neon();        // aarch64 Advanced SIMD with fp (HWCAP_ASIMD)
bool is_amd();
bool is_intel();

// Floats needed to pack a k x n operand (n rounded up to whole panels).
int64_t packed_floats(int64_t k, int64_t n);

// Packs op(B) (k x n; op(B) = B^T, i.e. b is n x k, when tb) into dst, which
// must be 64-byte aligned and hold packed_floats(k, n) floats:
//     P[(p k + kk) kNR + c] = op(B)[kk][p kNR + c], zero-padded to whole panels.
void pack_b(const float* b, int64_t ldb, bool tb, int64_t k, int64_t n, float* dst);

// Columns [p0 kNR, p1 kNR) of C (m x n) = A (m x k) @ op(B) + beta C, op(B) as
// packed by pack_b, on one thread, through the kernel built for ``isa`` (which
// must be vec_runs).  k >= 1; C is not read when beta == 0.
void vec_panels(VecIsa isa, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                const float* packed, float beta, float* c, int64_t ldc, int64_t p0, int64_t p1);

// float -> bf16 bits, rounded to nearest even (NaN stays NaN), as c10::BFloat16 does.
uint16_t bf16_bits(float x);

// The bf16 kernel (AVX512-BF16, x86 only): op(B) packed as pairs of k
// (``P[((p K2 + kk) kNR + c) 2 + s] = op(B)[2 kk + s][p kNR + c]``, K2 = ceil(k / 2),
// zero-padded), bf16 bits.
int64_t packed_bf16_elems(int64_t k, int64_t n);
void pack_b_bf16(const float* b, int64_t ldb, bool tb, int64_t k, int64_t n, uint16_t* dst);
// Rows of a (m x k float32, row stride lda) rounded to bf16 (nearest even) into
// dst (row stride k): vectorised where the CPU has AVX512-BF16, else bf16_bits.
void rows_to_bf16(int64_t m, int64_t k, const float* a, int64_t lda, uint16_t* dst);
// Columns [p0 kNR, p1 kNR) of C (m x n, float32) = A (m x k, bf16 bits, row
// stride lda) @ op(B) + beta C, products of bf16 pairs summed in float32
// (vdpbf16ps), on one thread.  Needs has_avx512bf16(); k >= 1.
void bf16_panels(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                 const uint16_t* packed, float beta, float* c, int64_t ldc, int64_t p0, int64_t p1);

// The unpacked kernel (the Cell modules' products; AVX-512F, x86 only): C (m x n)
// = sum over the terms of A_t (m x k_t) @ B_t (k_t x n) + bias + beta C, where
// A_t's element (r, kk) is a[r ars + kk acs] (a row-major matrix or its
// transpose), B_t is row-major with row stride ldb, bias (m, one value per row
// of C) may be null, and C's element (r, j) is c[r crs + j ccs] with ccs == 1
// (row-major) or crs == 1 (transposed).  C is not read when beta == 0.
struct StridedTerm {
  const float* a;
  int64_t ars, acs;
  const float* b;
  int64_t ldb, k;
};
// The tiles of such a product (rows x columns of tiles), and tiles [t0, t1) of it.
int64_t strided_tiles(int64_t m, int64_t n);
void strided_run(int64_t m, int64_t n, const StridedTerm* terms, int nterms, const float* bias, float beta,
                 float* c, int64_t crs, int64_t ccs, int64_t t0, int64_t t1);

// The unpacked dot-product kernel (streaming calls: one product per weight and
// call, where packing W would cost more than the product): for columns
// j in [j0, j1) of C (m x n, row stride ldc),
//     C[r][j] = (accumulate ? C[r][j] : bias[j], or 0 without a bias) + A[r] . W[j]
// with A (m x k, row stride lda) and W (n x k, row stride ldw: a torch weight)
// read in place.  Each dot product sums along k in the unit's lanes (one FMA a
// term), the lanes then summed as a tree: a unit's bits depend on its lane count,
// not on the rows or threads.  ``isa`` must be vec_runs.
void vec_rows_dot(VecIsa isa, int64_t m, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
                  int64_t j0, int64_t j1, const float* bias, bool accumulate, float* c, int64_t ldc);

// dst (cols x rows) = src (rows x cols)^T, both row-major and contiguous.
void transpose_rows(int64_t rows, int64_t cols, const float* src, float* dst);

}  // namespace cpu
}  // namespace fastrnn
