// fastrnn's int8 products for quantized inference (fastrnn.quantized): int8
// weights with one scale per output row (per output channel), activations
// quantized per row at run time, integer dot products with exact 32-bit sums,
// the result scaled back to float32.  Free of ATen and c10, like vec_gemm.h, so
// that tests/kernels/ builds and checks it alone, on x86 and under qemu for
// aarch64; threading and tensors are quantized.cpp's.
//
// One packed layout serves every unit: W (rows x k) in blocks of 16 rows, each a
// run of k-quads, a quad holding 4 consecutive k of each of the 16 rows (64
// bytes: one AVX-512 load, four NEON loads).  Per unit:
//   avx512_vnni  vpdpbusd: u8 x s8, four products summed into each 32-bit lane,
//                no saturation; the activation is offset by 128 to make it
//                unsigned and 128 * (the row's weight sum) is taken off again;
//   avx2         bytes sign-extended to 16 bits and vpmaddwd (pairs of 16-bit
//                products into 32 bits: |127 * 127 * 2| fits, so nothing
//                saturates, unlike vpmaddubsw's 16-bit pair sums);
//   neon_dot     sdot (s8 x s8, four products per lane; aarch64 with asimddp);
//   scalar       plain loops (any CPU; on aarch64 without asimddp the compiler's
//                widening multiply-accumulate).
// Every unit gives the same integer sums, so their results differ only in how
// the float scaling rounds (one multiply each way).
#pragma once

#include <cstdint>

namespace fastrnn {
namespace cpu {

enum class I8Isa : int { kScalar, kAvx2, kVnni, kNeonDot };

constexpr int64_t kI8Rows = 16;  // rows of a packed block

const char* i8_name(I8Isa isa);   // "scalar", "avx2", "avx512_vnni", "neon_dot"
const char* i8_needs(I8Isa isa);  // the instructions it needs, for error messages
bool i8_runs(I8Isa isa);          // built for this architecture, and this CPU has them
bool has_avx512vnni();            // AVX512-VNNI with AVX512F/BW (x86)
bool has_neon_dot();              // aarch64 sdot (HWCAP_ASIMDDP)

// k rounded up to whole quads: the row stride of quantized activations.
inline int64_t i8_kpad(int64_t k) { return (k + 3) / 4 * 4; }
// Rows rounded up to whole blocks.
inline int64_t i8_rpad(int64_t rows) { return (rows + kI8Rows - 1) / kI8Rows * kI8Rows; }
// Bytes of a packed (rows x k) operand.
inline int64_t i8_packed_bytes(int64_t rows, int64_t k) { return i8_rpad(rows) * i8_kpad(k); }

// Packs w (rows x k int8, row stride ldw, values in [-127, 127]) into dst
// (i8_packed_bytes(rows, k)), zero-padded:
//     dst[((b K4 + q) 16 + r) 4 + s] = w[16 b + r][4 q + s],  K4 = i8_kpad(k) / 4,
// and rowsum[r] = the sum of row r (i8_rpad(rows) entries, zeros past rows).
void i8_pack(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, int8_t* dst, int32_t* rowsum);

// Quantizes each of the m rows of x (m x k float32, row stride ldx) symmetrically:
// scale[i] = max_j |x[i][j]| / 127 (0 for a row of zeros), q[i][j] = x[i][j] /
// scale[i] rounded to nearest even, in [-127, 127]; q's rows have stride
// i8_kpad(k), zero-padded.  A NaN or infinity in a row makes its scale NaN, so
// the row's products are NaN (never a silently finite number); a row whose
// largest value is below ~4e-37 (127 / max overflows) is taken as zeros.
// AVX-512 intrinsics where the CPU has AVX512F, else loops compiled per unit;
// i8_quantize_rows_portable is the latter on any CPU (the same bits: tested).
void i8_quantize_rows(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, float* scale);
void i8_quantize_rows_portable(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, float* scale);

// The largest k whose sums cannot overflow 32 bits in any kernel (127 * 128 per
// term with VNNI's offset): the op refuses larger inputs.
constexpr int64_t kI8MaxK = (int64_t(1) << 31) / (127 * 128) - 4;

// For the n activation rows j and the weight rows r of blocks [b0, b1):
//     out[j ldo + r] = (sum_k W[r][k] q[j][k]) * wscale[r] * xscale[j]
//                      + (bias ? bias[r] : 0) + (accumulate ? out[j ldo + r] : 0)
// for r < rows (W packed by i8_pack with its rowsum; q and xscale from
// i8_quantize_rows, rows of stride i8_kpad(k)), through ``isa``'s kernel (which
// must be i8_runs).  One thread; k >= 1.
void i8_gemm(I8Isa isa, int64_t rows, int64_t n, int64_t k, const int8_t* packed, const int32_t* rowsum,
             const float* wscale, const int8_t* q, const float* xscale, const float* bias, bool accumulate,
             float* out, int64_t ldo, int64_t b0, int64_t b1);

}  // namespace cpu
}  // namespace fastrnn
