// Shared pieces of the CPU recurrences: the per-step matrix product, the
// parallel loop over batch rows, dtype helpers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <vector>
#include <memory>
#include <type_traits>

#include "../cell_math.h"
#include "../checks.h"
#include "step_gemm.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

// The Fortran BLAS that torch links (MKL in the x86 wheels), taken as weak
// symbols so that the extension still loads against a torch without one; then
// the matrix product goes through at::mm instead.  Called directly because the
// per-step products are small (e.g. 32 x 256 x 1024): at::mm's dispatch and
// tensor bookkeeping cost a visible part of a 20-microsecond step.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
// One row of A (batch 1, one step: a streaming call) is a matrix-vector product,
// which MKL's sgemv runs ~1.5x faster than its sgemm at m = 1 (measured through
// torch on an AMD EPYC Zen 4, 1 thread, 384 x 128 and 768 x 256: 4.6 against 6.5
// us, 18 against 21 us).
void sgemv_(const char* t, const int* m, const int* n, const float* alpha, const float* a, const int* lda,
            const float* x, const int* incx, const float* beta, float* y, const int* incy) __attribute__((weak));
void dgemv_(const char* t, const int* m, const int* n, const double* alpha, const double* a, const int* lda,
            const double* x, const int* incx, const double* beta, double* y, const int* incy)
    __attribute__((weak));
// MKL's packed GEMM (the CBLAS enums passed as their int values): the recurrent
// weights are packed once per call and reused by every step, where sgemm would
// re-pack the whole (4H x R) operand for each 32-row product.
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

// Pointwise row loops of the float path are compiled for AVX-512, AVX2 and
// baseline x86-64, picked at load time, so one binary is fast on any x86 CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FR_CPU_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FR_CPU_CLONES
#endif

namespace fastrnn {
namespace cpu {

// Row-major C (m x n) = op(A) @ op(B) + beta * C, op(X) = X^T when tX.  A row-major
// matrix read as column-major is its transpose, so this is the column-major
// product C^T = op(B)^T op(A)^T with the operands swapped.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "");
  if (m == 0 || n == 0) return;
  const bool fits = std::max({m, n, k, lda, ldb, ldc}) < INT_MAX;
  const bool blas = std::is_same<T, float>::value ? sgemm_ != nullptr : dgemm_ != nullptr;
  const bool gemv = std::is_same<T, float>::value ? sgemv_ != nullptr : dgemv_ != nullptr;
  if (m == 1 && gemv && fits && k > 0) {
    // c (1 x n) = a (1 x k) @ op(B) + beta c: B row-major is, read column-major,
    // its transpose Bc (ld ldb), so op(B)^T a is Bc^T a when tb (B is n x k, Bc
    // k x n) and Bc a otherwise (B k x n, Bc n x k); a's k values are a row
    // (stride 1) or, when ta, a column of the stored k x 1 (stride lda)
    const char t = tb ? 'T' : 'N';
    const int rows = static_cast<int>(tb ? k : n), cols = static_cast<int>(tb ? n : k);
    const int lb = static_cast<int>(ldb), inc_a = ta ? static_cast<int>(lda) : 1, one_inc = 1;
    const T one = T(1);
    if constexpr (std::is_same<T, float>::value)
      sgemv_(&t, &rows, &cols, &one, b, &lb, a, &inc_a, &beta, c, &one_inc);
    else
      dgemv_(&t, &rows, &cols, &one, b, &lb, a, &inc_a, &beta, c, &one_inc);
    return;
  }
  if (blas && fits && k > 0) {
    const char tA = ta ? 'T' : 'N', tB = tb ? 'T' : 'N';
    const int M = static_cast<int>(m), Nn = static_cast<int>(n), K = static_cast<int>(k);
    const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
    const T one = T(1);
    if constexpr (std::is_same<T, float>::value)
      sgemm_(&tB, &tA, &Nn, &M, &K, &one, b, &lb, a, &la, &beta, c, &lc);
    else
      dgemm_(&tB, &tA, &Nn, &M, &K, &one, b, &lb, a, &la, &beta, c, &lc);
    return;
  }
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto A = at::from_blob(const_cast<T*>(a), {ta ? k : m, ta ? m : k}, {lda, 1}, opt);
  auto B = at::from_blob(const_cast<T*>(b), {tb ? n : k, tb ? k : n}, {ldb, 1}, opt);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, opt);
  if (ta) A = A.t();
  if (tb) B = B.t();
  if (beta == T(0))
    at::mm_out(C, A, B);
  else
    C.mul_(beta).addmm_(A, B);
}

// ``d`` with the op's path argument applied (see CpuGemm) for data of dtype
// ``storage`` (the bf16 kernel takes bf16 storage only: it rounds its operands).
// A call of one step (T == 1: streaming inference, a cell) multiplies by W once,
// so nothing is packed (packing W_hh costs more than the one product it would
// speed up): kDirect, the plain GEMM, whatever the path; its products run in
// float32 on the widened operands for half types, as the float path's do.
inline Dims with_path(Dims d, c10::string_view path, at::ScalarType storage) {
  d.gemm = gemm_path(path, storage);
  if (d.T == 1) d.gemm = CpuGemm::kDirect;
  return d;
}

// At most this many rows (a small batch's step) and at least kDotMinK columns of
// W, the own paths' products with B = W (n x k, op(B) = W^T: the forward's W_hh
// and a stack's W_ih) read W in place through the dot-product kernel instead of
// packing it first: a batch-1 forward spent ~35% of its product time packing
// W_hh (perf: pack_b 7.9% of samples against the kernel's 13.9%; LSTM H 256,
// T 35, training).  Measured (2 layers, T 35, training, paired, AMD EPYC Zen
// 4; against packing): LSTM batch 1 H 256 +4-11%, batch 2 +6%, H 1024 +15%,
// GRU H 1024 +19%, GRU H 256 -1 to -5%; at k 64-128 the dot products' lane sums
// cost more than the rows' FMAs: LSTM H 64 -14%, H 128 -7%.
constexpr int64_t kDotRows = 2;
constexpr int64_t kDotMinK = 256;

// The right-hand operand op(B) (k x n) of C (m x n) = A (m x k) @ op(B) + beta C,
// all row-major, fixed across the time steps of one call: packed once, for
// fastrnn's float32 kernel (CpuGemm::kOwn: AVX-512; kOwnAvx2: AVX2 + FMA; kOwnNeon:
// aarch64 NEON; vec_gemm.h), its AVX512-BF16 kernel (kBf16Dot:
// B packed as bf16, each step's A rows rounded to bf16 into a scratch buffer, sums
// in float32; step_gemm.h), or MKL's packed GEMM when the float path has them,
// else kept as a pointer for gemm().  One instance per thread (mul's scratch).
template <typename T>
class StepMatrix {
 public:
  StepMatrix(CpuGemm g, const T* b, int64_t ldb, bool tb, int64_t m, int64_t n, int64_t k)
      : b_(b), ldb_(ldb), tb_(tb), m_(m), n_(n), k_(k) {
    if constexpr (std::is_same<T, float>::value) {
      if (g == CpuGemm::kBf16Dot && m > 0 && n > 0 && k > 0) {
        bf16_ = at::empty({packed_bf16_elems(k, n)}, at::TensorOptions().dtype(at::kBFloat16));
        pack_b_bf16(b, ldb, tb, k, n, bits(bf16_));
        a16_ = at::empty({m * k}, at::TensorOptions().dtype(at::kBFloat16));
        return;
      }
      if ((g == CpuGemm::kOwn || g == CpuGemm::kOwnAvx2 || g == CpuGemm::kOwnNeon) && m > 0 && n > 0 && k > 0) {
        isa_ = own_isa(g);
        if (tb && m <= kDotRows && k >= kDotMinK) {  // W (n x k) read in place: see kDotRows
          dot_ = true;
          return;
        }
        own_ = at::empty({packed_floats(k, n)}, at::TensorOptions().dtype(at::kFloat));
        pack_b(b, ldb, tb, k, n, own_.data_ptr<float>());
        return;
      }
      if (g == CpuGemm::kDirect) return;  // one product: gemm() on B in place
      const bool fits = std::max({m, n, k, ldb}) < INT_MAX;
      if (cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
          cblas_sgemm_compute != nullptr && fits && m > 0 && n > 0 && k > 0) {
        const size_t bytes = cblas_sgemm_pack_get_size(kB, int(m), int(n), int(k));
        packed_ = at::empty({static_cast<int64_t>(bytes / sizeof(float) + 1)},
                            at::TensorOptions().dtype(at::kFloat));
        cblas_sgemm_pack(kRowMajor, kB, tb ? kTrans : kNoTrans, int(m), int(n), int(k), 1.0f, b,
                         int(ldb), packed_.data_ptr<float>());
      }
    }
  }
  // C = A @ op(B) + beta C for the first ``rows`` rows of A (all the m constructed
  // with when negative; a variable-length batch's step passes its active rows)
  void mul(const T* a, int64_t lda, T beta, T* c, int64_t ldc, int64_t rows = -1) const {
    const int64_t m = rows < 0 ? m_ : std::min(rows, m_);
    if (m == 0) return;
    if constexpr (std::is_same<T, float>::value) {
      if (bf16_.defined()) {
        rows_to_bf16(m, k_, a, lda, bits(a16_));
        packed_gemm_bf16(m, n_, k_, bits(a16_), k_, bits(bf16_), beta, c, ldc);
        return;
      }
      if (own_.defined()) {
        packed_gemm(m, n_, k_, a, lda, own_.data_ptr<float>(), beta, c, ldc, isa_);
        return;
      }
      if (dot_ && (beta == 0.0f || beta == 1.0f)) {
        dot_gemm(m, n_, k_, a, lda, b_, ldb_, beta == 1.0f, c, ldc, isa_);
        return;
      }
      if (packed_.defined()) {
        cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(m), int(n_), int(k_), a, int(lda),
                            packed_.data_ptr<float>(), int(ldb_), beta, c, int(ldc));
        return;
      }
    }
    gemm<T>(false, tb_, m, n_, k_, a, lda, b_, ldb_, beta, c, ldc);
  }

 private:
  static uint16_t* bits(const at::Tensor& t) {
    return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
  }
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kB = 162;
  const T* b_;
  int64_t ldb_;
  bool tb_;
  int64_t m_, n_, k_;
  at::Tensor packed_;  // MKL's packed format
  at::Tensor own_;     // step_gemm.h's panels (64-byte aligned: c10's CPU allocator)
  VecIsa isa_ = VecIsa::kAvx512;  // own_'s vector unit
  bool dot_ = false;   // the own kernel's unpacked dot products (dot_gemm) on B in place
  at::Tensor bf16_;    // step_gemm.h's bf16 panels
  at::Tensor a16_;     // (m, k) bf16 rows of the step's A
};

// Runs f(r0, r1) over blocks of batch rows, one block per thread.  Rows of an
// RNN never interact (h_t of row b depends on row b only), so each thread
// runs the whole sequence for its rows with its own single-threaded products
// and there is no synchronisation between time steps at all: a fork/join per
// step costs ~8 us here, against ~80 us of work per step at batch 32, H 256.
// Small batches run as one block, where the products thread inside BLAS.
// With lengths (a variable-length batch; T the padded length) the blocks hold
// equal numbers of tokens, not of rows: a PackedSequence's rows come sorted
// longest first, and equal counts would give the first thread all the long
// ones (each row costs its length in steps; StepRows).  w_floats: the weights
// a block multiplies by per step (W_hh, and a stack's W_ih).  Each block reads
// them once per step, so with few rows per block a product is bound by reading
// them, and past the caches (LSTM H 1024: 16 MB a layer) two blocks read them
// from memory twice: there a block takes at least 16 rows, and a small batch
// runs as one block whose products split W's panels across the threads (each
// thread reads its part once; measured, bench/cpu_sweep.py: LSTM N 8 H 1024,
// csrc/NOTES.md).
constexpr int64_t kBigWeights = int64_t(1) << 20;  // floats (4 MB)
template <typename F>
void for_row_blocks(int64_t N, const F& f, const int64_t* len = nullptr, int64_t T = 0, int64_t w_floats = 0) {
  const int64_t P = std::min<int64_t>(at::get_num_threads(), N / (w_floats > kBigWeights ? 16 : 4));
  if (P <= 1 || at::in_parallel_region()) {
    f(int64_t(0), N);
    return;
  }
  std::vector<int64_t> cut(P + 1, N);
  cut[0] = 0;
  if (len == nullptr) {
    for (int64_t p = 1; p < P; ++p) cut[p] = N * p / P;
  } else {
    std::vector<int64_t> sum(N + 1, 0);  // tokens of rows [0, b)
    for (int64_t b = 0; b < N; ++b) sum[b + 1] = sum[b] + std::max<int64_t>(0, std::min(len[b], T));
    for (int64_t p = 1; p < P; ++p) {
      const int64_t want = (sum[N] * p + P - 1) / P;
      int64_t b = std::lower_bound(sum.begin(), sum.end(), want) - sum.begin();
      // at least one row per block, and room for one in each block after
      cut[p] = std::min(std::max(b, cut[p - 1] + 1), N - (P - p));
    }
  }
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) f(cut[p], cut[p + 1]);
  });
}

// The rows of block [r0, r1) a step multiplies by the recurrent weights.  All
// of them without lengths; with lengths non-increasing over the block (a
// PackedSequence's order, which the modules pass) the rows still running at
// step t are a prefix, and only they are multiplied: a variable-length batch
// costs its tokens, not T times its rows.  Unsorted lengths (the op called
// directly) multiply every row; inactive rows' results are not read.
class StepRows {
 public:
  StepRows(const int64_t* len, int64_t r0, int64_t r1)
      : len_(len == nullptr ? nullptr : len + r0), m_(r1 - r0),
        prefix_(len != nullptr && std::is_sorted(len + r0, len + r1, std::greater<int64_t>())) {}
  int64_t at(int64_t t) const {
    if (!prefix_) return m_;
    return std::partition_point(len_, len_ + m_, [t](int64_t l) { return l > t; }) - len_;
  }

 private:
  const int64_t* len_;
  int64_t m_;
  bool prefix_;
};

// Fused stacks (the *_stack_* ops): each thread runs its batch rows through every
// layer in turn, so a layer above the first forms its input side per step from
// the layer below's output rows, which the same thread has just written, and the
// backward adds the layer above's contribution per step likewise.  No thread
// waits for another, and no (T, N, G H) input projection or (T, N, H) input
// gradient is materialised between layers.
//
// The input side of a stacked layer: x (T, N, I) the layer below's output,
// w_ih (G H, I), bias (G H) or nullptr.
template <typename A>
struct StepInput {
  const A* x;
  int64_t I;
  const A* w_ih;
  const A* bias;
};

// The layer above in the backward: its gate gradients w.r.t. its input-side
// pre-activations dg (T, N, G H) and its w_ih (G H, H); dg[t] @ w_ih is the
// gradient w.r.t. this layer's output at step t.
template <typename A>
struct StepAbove {
  const A* dg;
  int64_t GH;
  const A* w_ih;
};

// A stack of L layers with G gates each, hidden size H: where layer l's
// StepInput (l >= 1) and StepAbove (l < L-1) point.  y: (L, T, N, H) outputs;
// w_ih: (L-1, G H, H); b: (L-1, G H) or nullptr; dg: (L, T, N, G H).
template <typename A>
struct StackLayout {
  int64_t T, N, H, G;
  StepInput<A> input(const A* y, const A* w_ih, const A* b, int64_t l) const {
    return {y + (l - 1) * T * N * H, H, w_ih + (l - 1) * G * H * H,
            b != nullptr ? b + (l - 1) * G * H : nullptr};
  }
  StepAbove<A> above(const A* dg, const A* w_ih, int64_t l) const {
    return {dg + (l + 1) * T * N * G * H, G * H, w_ih + l * G * H * H};
  }
  // The fused stack's schedule: each thread's batch rows [r0, r1) through all
  // L layers, bottom up, layer l >= 1 reading layer l-1's outputs y step by step:
  // layer(r0, r1, l, in), in nullptr for the first layer.
  template <typename F>
  void forward(int64_t L, const A* y, const A* w_ih, const A* b, const F& layer) const {
    for_row_blocks(N, [&](int64_t r0, int64_t r1) {
      for (int64_t l = 0; l < L; ++l) {
        const StepInput<A> in = l > 0 ? input(y, w_ih, b, l) : StepInput<A>{};
        layer(r0, r1, l, l > 0 ? &in : nullptr);
      }
    }, nullptr, 0, 2 * G * H * H);
  }
  // Backward: top down, layer l < L-1 taking the gradient w.r.t. its output
  // from the gate gradients dg the layer above wrote: layer(r0, r1, l, up).
  template <typename F>
  void backward(int64_t L, const A* dg, const A* w_ih, const F& layer) const {
    for_row_blocks(N, [&](int64_t r0, int64_t r1) {
      for (int64_t l = L - 1; l >= 0; --l) {
        const StepAbove<A> up = l < L - 1 ? above(dg, w_ih, l) : StepAbove<A>{};
        layer(r0, r1, l, l < L - 1 ? &up : nullptr);
      }
    }, nullptr, 0, 2 * G * H * H);
  }
};

// Runs f(b) over the N batch rows of one cell step (cpu/cells.cpp): split over
// threads only when the rows hold enough units to pay for a fork/join (~8 us).
template <typename F>
void for_cell_rows(int64_t N, int64_t units_per_row, const F& f) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(units_per_row, 1));
  at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t b = r0; b < r1; ++b) f(b);
  });
}

// A gate pass for data D through its float32 or bfloat16 version (each compiled
// three ways, FR_CPU_CLONES) or, for other types, the plain template.
template <typename D, typename F32, typename BF16, typename Plain, typename... Args>
inline void by_dtype(F32* f32, BF16* bf16, Plain* plain, Args... args) {
  if constexpr (std::is_same<D, float>::value)
    f32(args...);
  else if constexpr (std::is_same<D, c10::BFloat16>::value)
    bf16(args...);
  else
    plain(args...);
}

template <typename T>
inline at::ScalarType dtype_of() {
  return c10::CppTypeToScalarType<T>::value;
}

// A contiguous copy of w in type A; the same tensor when it already is one.
inline at::Tensor as_acc(const at::Tensor& w, at::ScalarType A) {
  return w.to(A).contiguous();
}

// Converting row copies: fp32 state to the output dtype and back.
template <typename To, typename From>
inline void convert_row(To* __restrict dst, const From* __restrict src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<To>(static_cast<float>(src[j]));
}
template <>
inline void convert_row<double, double>(double* __restrict dst, const double* __restrict src,
                                        int64_t n) {
  std::copy(src, src + n, dst);
}
template <>
inline void convert_row<float, float>(float* __restrict dst, const float* __restrict src,
                                      int64_t n) {
  std::copy(src, src + n, dst);
}
// float32 state to bfloat16 output rows (rounded to nearest even, as c10::BFloat16),
// compiled three ways (common.cpp): the bf16 recurrences write one per row and step.
void convert_row_bf16(c10::BFloat16* __restrict dst, const float* __restrict src, int64_t n);
template <>
inline void convert_row<c10::BFloat16, float>(c10::BFloat16* __restrict dst, const float* __restrict src,
                                              int64_t n) {
  convert_row_bf16(dst, src, n);
}

template <typename T>
inline void zero_row(T* dst, int64_t n) {
  std::fill(dst, dst + n, T(0));
}

// A sequence-long buffer (y, ws, dxg: T x N rows) that the kernel is about to
// fill: at::empty, then, from 32 MiB, transparent huge pages asked for
// (madvise MADV_HUGEPAGE on its whole 2 MiB pages; THP's "madvise" mode, the
// usual default, gives them only when asked).  Buffers that large come from a
// fresh mmap on every call (glibc's threshold is at most 32 MiB; smaller ones
// may be reused from its heap, already faulted, and are left alone), and their
// first touch faulted 4 KiB at a time: measured (Zen 4 VM, one thread, LSTM
// H 256, T 500, N 32) 8.2 us per row and step with the 80 MB workspace against
// 5.4 without it.  Advice only: where the kernel refuses it nothing changes.
inline at::Tensor big_empty(at::IntArrayRef size, const at::TensorOptions& opt) {
  at::Tensor t = at::empty(size, opt);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t(2) << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (p + huge - 1) & ~(huge - 1), hi = (p + t.nbytes()) & ~(huge - 1);
  if (t.nbytes() >= (size_t(32) << 20) && hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
  return t;
}

inline bool active(const int64_t* len, int64_t b, int64_t t) {
  return len == nullptr || t < len[b];
}

inline const int64_t* lengths_ptr(const c10::optional<at::Tensor>& lengths) {
  return lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
}

}  // namespace cpu
}  // namespace fastrnn
