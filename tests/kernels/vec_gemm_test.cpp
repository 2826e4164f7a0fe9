// The CPU vector kernels (csrc/cpu/vec_gemm.h) alone, without ATen or Python:
// every float32 kernel this build and this CPU can run (AVX-512, AVX2 + FMA,
// NEON) against a scalar product that sums in the same order with one fused
// multiply-add per term, bit for bit; pack_b's zero padding; C's columns past n
// never written; C never read when beta == 0 (it holds NaN there); the panel
// ranges that threads take; the dot-product kernel (vec_rows_dot) against its
// lanes' sum order emulated; and the bf16 rounding (vectorised where the CPU has
// AVX512-BF16) against c10's rule.  Built and run natively by `make test` and,
// cross-compiled for aarch64, under qemu-user by `make test-aarch64`
// (the Makefile).  Random inputs from a printed seed:
//     vec_gemm_test [SEED]      (default: $FASTRNN_TEST_SEED, else 0)
// Build with -ffp-contract=off, so that the reference's own sums are not fused.
#include "../../csrc/cpu/vec_gemm.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using fastrnn::cpu::VecIsa;
namespace fc = fastrnn::cpu;

namespace {

uint64_t g_state = 0;
int g_passed = 0, g_failed = 0;

uint64_t next_u64() {  // splitmix64
  uint64_t z = (g_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float uniform() {  // [-1, 1)
  return static_cast<float>(static_cast<double>(next_u64() >> 40) / double(1ull << 24) * 2.0 - 1.0);
}

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL %s\n", what.c_str());
  }
}

struct Aligned {  // 64-byte aligned float buffer
  float* p = nullptr;
  explicit Aligned(int64_t n) {
    const size_t bytes = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
  }
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
};

// One product through ``isa`` (the panels split at ``split`` as two threads
// would take them), against the fused-sum reference.
void gemm_case(VecIsa isa, int64_t m, int64_t n, int64_t k, bool tb, float beta, int64_t split) {
  const int64_t lda = k + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
  std::vector<float> a(static_cast<size_t>(m * lda)), b(static_cast<size_t>((tb ? n : k) * ldb));
  for (float& x : a) x = uniform();
  for (float& x : b) x = uniform();
  std::vector<float> c0(static_cast<size_t>(m * ldc));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < ldc; ++j)
      c0[r * ldc + j] = j >= n ? 1234.5f : beta == 0.0f ? nan : uniform();  // past n: a sentinel
  const int64_t np = (n + fc::kNR - 1) / fc::kNR;
  Aligned packed(fc::packed_floats(k, n));
  for (int64_t i = 0; i < fc::packed_floats(k, n); ++i) packed.p[i] = nan;  // pack_b must write it all
  fc::pack_b(b.data(), ldb, tb, k, n, packed.p);
  bool pad_ok = true;
  for (int64_t p = 0; p < np; ++p)
    for (int64_t kk = 0; kk < k; ++kk)
      for (int64_t col = 0; col < fc::kNR; ++col) {
        const float v = packed.p[(p * k + kk) * fc::kNR + col];
        const int64_t j = p * fc::kNR + col;
        const float want = j < n ? (tb ? b[j * ldb + kk] : b[kk * ldb + j]) : 0.0f;
        pad_ok = pad_ok && bits_of(v) == bits_of(want);
      }
  std::vector<float> c = c0;
  const int64_t mid = split < np ? split : np;
  fc::vec_panels(isa, m, n, k, a.data(), lda, packed.p, beta, c.data(), ldc, 0, mid);
  fc::vec_panels(isa, m, n, k, a.data(), lda, packed.p, beta, c.data(), ldc, mid, np);
  int64_t bad = 0;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < ldc; ++j) {
      float want;
      if (j >= n) {
        want = 1234.5f;
      } else {
        float acc = 0.0f;
        for (int64_t kk = 0; kk < k; ++kk)
          acc = std::fma(a[r * lda + kk], tb ? b[j * ldb + kk] : b[kk * ldb + j], acc);
        want = beta != 0.0f ? std::fma(beta, c0[r * ldc + j], acc) : acc;
      }
      bad += bits_of(c[r * ldc + j]) != bits_of(want);
    }
  char what[160];
  std::snprintf(what, sizeof(what), "%s m %lld n %lld k %lld tb %d beta %g split %lld", fc::vec_name(isa),
                (long long)m, (long long)n, (long long)k, int(tb), double(beta), (long long)split);
  check(pad_ok, std::string(what) + ": pack_b's panels");
  check(bad == 0, std::string(what) + ": " + std::to_string(bad) + " elements differ from the fused sum");
}

// The dot-product kernel's sum for one (row of A, row of W) pair, emulated: lane l
// sums terms l, l + L, ... with one FMA each, the lanes then added as a tree
// (halves until one is left), then k's tail in order.
float dot_ref(int lanes, const float* a, const float* w, int64_t k) {
  std::vector<float> p(static_cast<size_t>(lanes), 0.0f);
  int64_t kk = 0;
  for (; kk + lanes <= k; kk += lanes)
    for (int l = 0; l < lanes; ++l) p[l] = std::fma(a[kk + l], w[kk + l], p[l]);
  for (int h = lanes / 2; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) p[l] += p[l + h];
  float s = p[0];
  for (; kk < k; ++kk) s = std::fma(a[kk], w[kk], s);
  return s;
}

// vec_rows_dot for columns [j0, j1) (taken as [j0, mid) and [mid, j1), as two
// threads would) with or without a bias, or accumulating, bit for bit against
// dot_ref; A's and W's padding past k is NaN (never read), and C's columns
// outside [j0, j1) keep their sentinel.
void dot_case(VecIsa isa, int lanes, int64_t m, int64_t n, int64_t k, int64_t j0, int64_t j1, int64_t mid,
              int mode) {
  const int64_t lda = k + 3, ldw = k + 5, ldc = n + 2;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> a(static_cast<size_t>(m * lda), nan), w(static_cast<size_t>(n * ldw), nan);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t kk = 0; kk < k; ++kk) a[r * lda + kk] = uniform();
  for (int64_t j = 0; j < n; ++j)
    for (int64_t kk = 0; kk < k; ++kk) w[j * ldw + kk] = uniform();
  std::vector<float> bias(static_cast<size_t>(n));
  for (float& x : bias) x = uniform();
  const bool acc = mode == 2;
  const float* bp = mode == 1 ? bias.data() : nullptr;
  std::vector<float> c0(static_cast<size_t>(m * ldc));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < ldc; ++j)
      c0[r * ldc + j] = j < j0 || j >= j1 ? 1234.5f : acc ? uniform() : nan;  // not read unless acc
  std::vector<float> c = c0;
  fc::vec_rows_dot(isa, m, k, a.data(), lda, w.data(), ldw, j0, mid, bp, acc, c.data(), ldc);
  fc::vec_rows_dot(isa, m, k, a.data(), lda, w.data(), ldw, mid, j1, bp, acc, c.data(), ldc);
  int64_t bad = 0;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < ldc; ++j) {
      float want = c0[r * ldc + j];
      if (j >= j0 && j < j1) {
        const float base = acc ? c0[r * ldc + j] : bp != nullptr ? bias[j] : 0.0f;
        want = base + dot_ref(lanes, a.data() + r * lda, w.data() + j * ldw, k);
      }
      bad += bits_of(c[r * ldc + j]) != bits_of(want);
    }
  char what[160];
  std::snprintf(what, sizeof(what), "%s rows_dot m %lld n %lld k %lld j [%lld, %lld | %lld) mode %d",
                fc::vec_name(isa), (long long)m, (long long)n, (long long)k, (long long)j0, (long long)mid,
                (long long)j1, mode);
  check(bad == 0, std::string(what) + ": " + std::to_string(bad) + " elements differ");
}

void bf16_cases() {
  // c10::BFloat16's rule: round to nearest, ties to even; NaN stays NaN (quiet)
  struct Case {
    uint32_t in;
    uint16_t out;
  };
  const Case cases[] = {{0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80}, {0x3f818000u, 0x3f82},
                        {0x3f808001u, 0x3f81}, {0xbf80ffffu, 0xbf81}, {0x7f7fffffu, 0x7f80},
                        {0x7f800000u, 0x7f80}, {0x00000001u, 0x0000}, {0x80000000u, 0x8000}};
  for (const Case& t : cases) {
    float x;
    std::memcpy(&x, &t.in, sizeof(x));
    char what[80];
    std::snprintf(what, sizeof(what), "bf16_bits(0x%08x) == 0x%04x", t.in, t.out);
    check(fc::bf16_bits(x) == t.out, what);
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const uint16_t nb = fc::bf16_bits(nan);
  check((nb & 0x7f80) == 0x7f80 && (nb & 0x7f) != 0, "bf16_bits(NaN) is a NaN");
  // rows_to_bf16 (AVX512-BF16 where present) against bf16_bits, ragged rows
  for (int64_t k : {1, 15, 16, 17, 40}) {
    const int64_t m = 3, lda = k + 2;
    std::vector<float> a(static_cast<size_t>(m * lda));
    for (float& x : a) x = uniform() * 1000.0f;
    std::vector<uint16_t> got(static_cast<size_t>(m * k), 0xdead);
    fc::rows_to_bf16(m, k, a.data(), lda, got.data());
    int64_t bad = 0;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < k; ++j) bad += got[r * k + j] != fc::bf16_bits(a[r * lda + j]);
    check(bad == 0, "rows_to_bf16 k " + std::to_string(k) + (fc::has_avx512bf16() ? " (AVX512-BF16)" : " (scalar)"));
  }
}

void transpose_cases() {
  for (int64_t rows : {1, 5, 16, 33})
    for (int64_t cols : {1, 7, 16, 40}) {
      std::vector<float> src(static_cast<size_t>(rows * cols)), dst(static_cast<size_t>(rows * cols));
      for (float& x : src) x = uniform();
      fc::transpose_rows(rows, cols, src.data(), dst.data());
      bool ok = true;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) ok = ok && dst[c * rows + r] == src[r * cols + c];
      check(ok, "transpose_rows " + std::to_string(rows) + " x " + std::to_string(cols));
    }
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("FASTRNN_TEST_SEED");
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : env ? std::strtoull(env, nullptr, 10) : 0;
  g_state = seed;
  std::printf("vec_gemm_test: seed %llu (replay: vec_gemm_test %llu)\n", (unsigned long long)seed,
              (unsigned long long)seed);
  int ran = 0;
  for (VecIsa isa : {VecIsa::kAvx512, VecIsa::kAvx2, VecIsa::kNeon}) {
    if (!fc::vec_runs(isa)) {
      std::printf("skip %s: %s\n", fc::vec_name(isa),
                  fc::vec_built(isa) ? "this CPU lacks its instructions" : "not built for this architecture");
      continue;
    }
    ++ran;
    const int before = g_failed;
    for (int64_t m : {1, 2, 4, 5, 6, 7, 8, 9, 13, 17})
      for (int64_t n : {1, 7, 16, 17, 31, 32, 33, 48, 100})
        for (int64_t k : {1, 2, 7, 33})
          for (bool tb : {false, true})
            for (float beta : {0.0f, 0.5f, 1.0f}) gemm_case(isa, m, n, k, tb, beta, 1 + (m + n) % 3);
    gemm_case(isa, 32, 1024, 256, true, 1.0f, 16);  // the time machine layer's step
    const int lanes = isa == VecIsa::kAvx512 ? 16 : isa == VecIsa::kAvx2 ? 8 : 4;
    for (int64_t m : {1, 2, 3, 4, 5, 9})
      for (int64_t n : {1, 3, 4, 5, 9, 13})
        for (int64_t k : {1, 3, 4, 8, 15, 16, 17, 33, 64, 100})
          for (int mode : {0, 1, 2}) {
            dot_case(isa, lanes, m, n, k, 0, n, n / 2 + (k % 2), mode);
            if (n > 2) dot_case(isa, lanes, m, n, k, 1, n - 1, 2, mode);
          }
    dot_case(isa, lanes, 1, 768, 256, 0, 768, 389, 0);  // a GRU layer's frame, hidden 256
    std::printf("%s: %s\n", fc::vec_name(isa), g_failed == before ? "bit-exact" : "FAILED");
  }
  check(ran > 0, "some float32 kernel runs on this machine");
  bf16_cases();
  transpose_cases();
  std::printf("vec_gemm_test: %d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
