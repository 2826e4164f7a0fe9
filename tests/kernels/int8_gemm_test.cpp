// The int8 kernels (csrc/cpu/int8_gemm.*) alone: every unit this CPU runs against
// exact integer sums, over shapes with partial blocks and quads, batches that
// split into every group size, and the quantizer's rounding, range and NaN.
// Usage: int8_gemm_test SEED (make test-kernels passes FASTRNN_TEST_SEED).
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../../csrc/cpu/int8_gemm.h"

using namespace fastrnn::cpu;

static int failures = 0;
#define CHECK(cond, ...)                                     \
  do {                                                       \
    if (!(cond)) {                                           \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                     \
      std::fprintf(stderr, "\n");                            \
      if (++failures > 20) std::exit(1);                     \
    }                                                        \
  } while (0)

int main(int argc, char** argv) {
  const unsigned seed = argc > 1 ? static_cast<unsigned>(std::strtoul(argv[1], nullptr, 10)) : 1u;
  std::printf("int8_gemm_test seed %u\n", seed);
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> wdist(-127, 127);
  std::normal_distribution<float> xdist(0.0f, 1.0f);
  const I8Isa all[] = {I8Isa::kScalar, I8Isa::kAvx2, I8Isa::kVnni, I8Isa::kNeonDot};
  std::vector<I8Isa> units;
  for (I8Isa isa : all)
    if (i8_runs(isa)) units.push_back(isa);
  std::printf("units:");
  for (I8Isa isa : units) std::printf(" %s", i8_name(isa));
  std::printf("\n");

  // the quantizer
  {
    const int64_t m = 5, k = 37, kp = i8_kpad(k);
    std::vector<float> x(m * k), scale(m);
    for (auto& v : x) v = 3.0f * xdist(gen);
    for (int64_t j = 0; j < k; ++j) x[1 * k + j] = 0.0f;  // a zero row
    x[3 * k + 7] = NAN;                                    // a NaN row
    std::vector<int8_t> q(m * kp, 99);
    i8_quantize_rows(m, k, x.data(), k, q.data(), scale.data());
    {  // the portable quantizer gives the same bits as the one this CPU takes
      std::vector<int8_t> q2(m * kp, 55);
      std::vector<float> s2(m);
      i8_quantize_rows_portable(m, k, x.data(), k, q2.data(), s2.data());
      CHECK(q2 == q, "portable quantizer's q differs");
      for (int64_t i = 0; i < m; ++i)
        CHECK(s2[i] == scale[i] || (std::isnan(s2[i]) && std::isnan(scale[i])), "portable scale differs");
    }
    CHECK(scale[1] == 0.0f, "zero row scale %g", scale[1]);
    CHECK(std::isnan(scale[3]), "NaN row scale %g", scale[3]);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = k; j < kp; ++j) CHECK(q[i * kp + j] == 0, "pad not zero");
      if (i == 1 || i == 3) continue;
      float amax = 0;
      for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(x[i * k + j]));
      CHECK(scale[i] == amax / 127.0f, "scale");
      bool hit = false;
      for (int64_t j = 0; j < k; ++j) {
        const int v = q[i * kp + j];
        CHECK(v >= -127 && v <= 127, "range %d", v);
        hit = hit || std::abs(v) == 127;
        CHECK(std::fabs(x[i * k + j] - v * scale[i]) <= 0.5f * scale[i] * 1.0001f, "rounding");
      }
      CHECK(hit, "the largest value maps to +-127");
    }
  }

  {  // a row too small for 127 / max: zeros, both quantizers
    std::vector<float> x(20, 1e-38f), sc(1);
    std::vector<int8_t> q(i8_kpad(20), 9);
    i8_quantize_rows(1, 20, x.data(), 20, q.data(), sc.data());
    for (int8_t v : q) CHECK(v == 0, "tiny row not zeros");
    CHECK(sc[0] == 0.0f, "tiny row scale %g", sc[0]);
    i8_quantize_rows_portable(1, 20, x.data(), 20, q.data(), sc.data());
    for (int8_t v : q) CHECK(v == 0, "tiny row not zeros (portable)");
  }

  // the products: exact integer sums (unit scales, sums below 2^24), then scales, bias, accumulate
  const int64_t shapes[][3] = {{1, 1, 1},  {16, 4, 1},   {17, 5, 2},   {33, 13, 3},  {64, 256, 1},
                               {48, 63, 4}, {40, 100, 8}, {31, 255, 9}, {128, 1000, 7}, {80, 32, 20},
                               {100, 33, 1}, {257, 70, 1},  {1024, 256, 1}};
  for (const auto& s : shapes) {
    const int64_t rows = s[0], k = s[1], n = s[2], kp = i8_kpad(k);
    std::vector<int8_t> w(rows * k), packed(i8_packed_bytes(rows, k), 7);
    for (auto& v : w) v = static_cast<int8_t>(wdist(gen));
    std::vector<int32_t> rowsum(i8_rpad(rows), -1);
    i8_pack(w.data(), k, rows, k, packed.data(), rowsum.data());
    for (int64_t r = 0; r < i8_rpad(rows); ++r) {
      int32_t want = 0;
      for (int64_t kk = 0; r < rows && kk < k; ++kk) want += w[r * k + kk];
      CHECK(rowsum[r] == want, "rowsum %lld", static_cast<long long>(r));
    }
    std::vector<float> x(n * k), xscale(n), ones(std::max(rows, n), 1.0f), wscale(rows), bias(rows);
    for (auto& v : x) v = xdist(gen);
    for (auto& v : wscale) v = 0.01f + 0.02f * std::fabs(xdist(gen));
    for (auto& v : bias) v = xdist(gen);
    std::vector<int8_t> q(n * kp);
    i8_quantize_rows(n, k, x.data(), k, q.data(), xscale.data());
    const int64_t ldo = rows + 3;
    std::vector<float> base(n * ldo);
    for (auto& v : base) v = xdist(gen);
    for (I8Isa isa : units) {
      // exact: the integer sums themselves
      std::vector<float> out(n * ldo, NAN);
      const int64_t blocks = i8_rpad(rows) / kI8Rows, mid = blocks / 2;
      i8_gemm(isa, rows, n, k, packed.data(), rowsum.data(), ones.data(), q.data(), ones.data(), nullptr, false,
              out.data(), ldo, 0, mid);
      i8_gemm(isa, rows, n, k, packed.data(), rowsum.data(), ones.data(), q.data(), ones.data(), nullptr, false,
              out.data(), ldo, mid, blocks);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t r = 0; r < rows; ++r) {
          int64_t want = 0;
          for (int64_t kk = 0; kk < k; ++kk) want += int64_t(w[r * k + kk]) * q[j * kp + kk];
          CHECK(out[j * ldo + r] == static_cast<float>(want), "%s %lldx%lldx%lld: out[%lld][%lld] %g != %lld",
                i8_name(isa), (long long)rows, (long long)k, (long long)n, (long long)j, (long long)r,
                out[j * ldo + r], (long long)want);
        }
        for (int64_t r = rows; r < ldo; ++r) CHECK(std::isnan(out[j * ldo + r]), "wrote past rows");
      }
      // scaled, biased, accumulated
      std::vector<float> acc = base;
      i8_gemm(isa, rows, n, k, packed.data(), rowsum.data(), wscale.data(), q.data(), xscale.data(), bias.data(),
              true, acc.data(), ldo, 0, blocks);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t r = 0; r < rows; ++r) {
          double want = 0;
          for (int64_t kk = 0; kk < k; ++kk) want += double(w[r * k + kk]) * q[j * kp + kk];
          want = want * wscale[r] * xscale[j] + bias[r] + base[j * ldo + r];
          const double got = acc[j * ldo + r];
          CHECK(std::fabs(got - want) <= 1e-5 * (1 + std::fabs(want)), "%s scaled [%lld][%lld] %g != %g",
                i8_name(isa), (long long)j, (long long)r, got, want);
        }
      // the same bits one block per call (the batch-1 VNNI pass runs several blocks at once)
      std::vector<float> one = base;
      for (int64_t b = 0; b < blocks; ++b)
        i8_gemm(isa, rows, n, k, packed.data(), rowsum.data(), wscale.data(), q.data(), xscale.data(), bias.data(),
                true, one.data(), ldo, b, b + 1);
      CHECK(std::memcmp(one.data(), acc.data(), acc.size() * sizeof(float)) == 0,
            "%s %lldx%lldx%lld: one block per call differs from one call", i8_name(isa), (long long)rows,
            (long long)k, (long long)n);
    }
  }
  if (failures) {
    std::printf("int8_gemm_test: %d failures\n", failures);
    return 1;
  }
  std::printf("int8_gemm_test: ok\n");
  return 0;
}
