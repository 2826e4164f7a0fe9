// The threading and path choice of fastrnn's own per-step GEMMs (step_gemm.h);
// the vector kernels themselves are vec_gemm.cpp's, free of ATen.
#include "step_gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>
#include <vector>

namespace fastrnn {
namespace cpu {

namespace {

// The driver the packed kernels share: C = beta C when there is nothing to
// multiply (k <= 0), else f(p0, p1) over the panels [p0, p1) of C's columns,
// split across threads outside a parallel region (small batches run as one row
// block) when the product has at least min_macs multiply-adds (a fork/join ~10
// us here).
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

void check_runs(VecIsa isa, const char* path) {
  TORCH_CHECK(vec_built(isa), "fastrnn: the '", path, "' cpu path needs ", vec_needs(isa),
              ", which this build's architecture lacks");
  TORCH_CHECK(vec_runs(isa), "fastrnn: the '", path, "' cpu path needs ", vec_needs(isa),
              ", which this CPU lacks");
}

}  // namespace

CpuGemm gemm_path(c10::string_view path, at::ScalarType storage) {
  if (path == "blas") return CpuGemm::kBlas;
  if (path == "own") {
    check_runs(VecIsa::kAvx512, "own");
    return CpuGemm::kOwn;
  }
  if (path == "own_avx2") {
    check_runs(VecIsa::kAvx2, "own_avx2");
    return CpuGemm::kOwnAvx2;
  }
  if (path == "own_neon") {
    check_runs(VecIsa::kNeon, "own_neon");
    return CpuGemm::kOwnNeon;
  }
  TORCH_CHECK(path == "bf16dot", "fastrnn: the cpu path is 'own', 'own_avx2', 'own_neon', 'blas' or 'bf16dot', not '",
              std::string(path), "'");
  TORCH_CHECK(has_avx512bf16(), "fastrnn: the 'bf16dot' cpu path needs AVX512-BF16, which this CPU lacks");
  TORCH_CHECK(storage == at::kBFloat16, "fastrnn: the 'bf16dot' cpu path rounds its operands to bfloat16, "
              "so it runs bfloat16 data only, not ", storage);
  return CpuGemm::kBf16Dot;
}

VecIsa own_isa(CpuGemm g) {
  switch (g) {
    case CpuGemm::kOwnAvx2: return VecIsa::kAvx2;
    case CpuGemm::kOwnNeon: return VecIsa::kNeon;
    default: return VecIsa::kAvx512;
  }
}

void dot_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* w, int64_t ldw,
              bool accumulate, float* c, int64_t ldc, VecIsa isa) {
  if (m <= 0 || n <= 0) return;
  constexpr int64_t kBlock = 16;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  if (at::in_parallel_region() || at::get_num_threads() < 2 || blocks < 2 || m * n * k < (int64_t(1) << 17)) {
    vec_rows_dot(isa, m, k, a, lda, w, ldw, 0, n, nullptr, accumulate, c, ldc);
    return;
  }
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    vec_rows_dot(isa, m, k, a, lda, w, ldw, b0 * kBlock, std::min(n, b1 * kBlock), nullptr, accumulate, c, ldc);
  });
}

void packed_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                 const float* packed, float beta, float* c, int64_t ldc, VecIsa isa) {
  over_panels(m, n, k, beta, c, ldc, int64_t(1) << 17, [&](int64_t p0, int64_t p1) {
    vec_panels(isa, m, n, k, a, lda, packed, beta, c, ldc, p0, p1);
  });
}

void strided_gemm(int64_t m, int64_t n, const StridedTerm* terms, int nterms, const float* bias, float beta,
                  float* c, int64_t crs, int64_t ccs) {
  TORCH_CHECK(has_avx512f(), "fastrnn: the AVX-512 GEMM needs AVX-512F, which this CPU lacks");
  if (m <= 0 || n <= 0) return;
  int64_t macs = 0;
  for (int t = 0; t < nterms; ++t) macs += m * n * std::max<int64_t>(terms[t].k, 0);
  const int64_t tiles = strided_tiles(m, n);
  auto run = [&](int64_t t0, int64_t t1) { strided_run(m, n, terms, nterms, bias, beta, c, crs, ccs, t0, t1); };
  if (!at::in_parallel_region() && at::get_num_threads() > 1 && tiles > 1 && macs >= (int64_t(1) << 17))
    at::parallel_for(0, tiles, 1, run);
  else
    run(0, tiles);
}

void packed_gemm_bf16(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda,
                      const uint16_t* packed, float beta, float* c, int64_t ldc) {
  TORCH_CHECK(has_avx512bf16(), "fastrnn: the bf16 step GEMM needs AVX512-BF16");
  // a bf16 multiply-add costs about half an fp32 one: twice packed_gemm's threshold
  over_panels(m, n, k, beta, c, ldc, int64_t(1) << 18, [&](int64_t p0, int64_t p1) {
    bf16_panels(m, n, k, a, lda, packed, beta, c, ldc, p0, p1);
  });
}

}  // namespace cpu
}  // namespace fastrnn

// ------------------------------------------------------------------ test op
// fastrnn_ext::cpu_step_gemm(a, b, tb, beta, c, impl) -> a @ op(b) + beta c
// through StepMatrix with the path impl ("own": the float32 kernel's AVX-512
// build, an error on a CPU without AVX-512F; "own_avx2": its AVX2 + FMA build;
// "own_neon": its NEON build; "blas"; "bf16dot": the bf16 kernel, a and b rounded
// to bf16; "strided": the unpacked kernel, as the cells call it; "direct": the
// unpacked BLAS product of a one-step call), for the tests;
// and cpu_features() -> what the switchboard decides the CPU path from ("amd",
// "intel", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "neon", and for the
// int8 kernels "avx512_vnni" and "asimddp").
#include <torch/library.h>

#include "common.h"
#include "int8_gemm.h"

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
  if (impl == "direct") {  // one product as a T = 1 call makes it (kDirect: gemm(), BLAS's gemv at one row)
    gemm<float>(false, tb, m, n, k, A.data_ptr<float>(), k, B.data_ptr<float>(), B.size(1), fb,
                C.data_ptr<float>(), n);
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
  if (is_amd()) f += "amd ";
  if (is_intel()) f += "intel ";
  if (has_avx2_fma()) f += "avx2 fma ";
  if (has_avx512f()) f += "avx512f ";
  if (has_avx512bf16()) f += "avx512_bf16 ";
  if (has_amx_bf16()) f += "amx_bf16 ";
  if (has_neon()) f += "neon ";
  if (has_avx512vnni()) f += "avx512_vnni ";  // the int8 kernels (fastrnn.quantized)
  if (has_neon_dot()) f += "asimddp ";
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
