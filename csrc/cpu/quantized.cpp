// int8 inference on the CPU (fastrnn.quantized): one layer, one direction of an
// LSTM, GRU or RNN whose weights are int8 with a scale per output row, and
// whose activations (the layer's input rows, and h_{t-1} on every step) are
// quantized per row at run time (int8_gemm.h).  Gates, cell state and the
// output stay float32.  The input side is one product over all T x N rows;
// each step quantizes h, multiplies by W_hh (and, projected, the unprojected
// output by W_hr), then runs the gates.  Inference only: the op has no
// backward (fastrnn.quantized refuses one with its own message).
//
//   int8_pack(Tensor w) -> (Tensor packed, Tensor rowsum)
//   int8_layer(str mode, Tensor x, Tensor[] w, Tensor? b_ih, Tensor? b_hh,
//              Tensor h0, Tensor? c0, Tensor? lengths, bool reverse, str isa)
//       -> (Tensor y, Tensor h_n, Tensor c_n)
// w: [ih packed, ih rowsum, ih scale, hh packed, hh rowsum, hh scale] and, for a
// projected LSTM, [hr packed, hr rowsum, hr scale].  x (T, N, I) float32;
// h0 (N, R); c0 (N, H) for the LSTM; lengths (N,) int64 on the CPU, each in
// [1, T] (rows past their length keep their state and output zeros; reverse
// runs each row from its own last step).  c_n is empty but for the LSTM.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../cell_math.h"
#include "int8_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FR_Q_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FR_Q_CLONES
#endif

namespace fastrnn {
namespace cpu {
namespace {

I8Isa isa_of(c10::string_view name) {
  for (I8Isa isa : {I8Isa::kVnni, I8Isa::kAvx2, I8Isa::kNeonDot, I8Isa::kScalar}) {
    if (name == i8_name(isa)) {
      TORCH_CHECK(i8_runs(isa), "fastrnn int8: the '", i8_name(isa), "' kernel needs ", i8_needs(isa),
                  ", which this CPU (or this build) lacks");
      return isa;
    }
  }
  TORCH_CHECK(false, "fastrnn int8: unknown kernel '", std::string(name), "'");
}

// One packed int8 operand (rows x k) with its per-row scales.
struct QW {
  const int8_t* p;
  const int32_t* rowsum;
  const float* scale;
  int64_t rows, k;
};

QW qw_of(const at::Tensor& packed, const at::Tensor& rowsum, const at::Tensor& scale, int64_t k, const char* name) {
  TORCH_CHECK(packed.scalar_type() == at::kChar && rowsum.scalar_type() == at::kInt &&
                  scale.scalar_type() == at::kFloat,
              "fastrnn int8: ", name, ": packed int8, rowsum int32, scale float32");
  TORCH_CHECK(packed.is_contiguous() && rowsum.is_contiguous() && scale.is_contiguous() && !packed.is_cuda(),
              "fastrnn int8: ", name, ": contiguous CPU tensors");
  const int64_t rows = scale.numel();
  TORCH_CHECK(k <= kI8MaxK, "fastrnn int8: ", name, " has ", k, " columns; the int8 kernels take at most ", kI8MaxK,
              " (their 32-bit sums)");
  TORCH_CHECK(packed.numel() == i8_packed_bytes(rows, k) && rowsum.numel() == i8_rpad(rows),
              "fastrnn int8: ", name, ": packed for ", packed.numel(), " bytes, expected ", rows, " rows of ", k);
  return QW{packed.data_ptr<int8_t>(), rowsum.data_ptr<int32_t>(), scale.data_ptr<float>(), rows, k};
}

// out (n x rows, row stride ldo) = dequant(W @ q^T) + bias (+ out), the blocks
// split across the intra-op threads where the product is big enough to pay
// for waking them: 2^21 multiply-adds a thread (~10 us of VNNI).  A step
// forks and joins once per product, and on a busy machine (2 cores, another
// library's threads still spinning) a fork can cost more than a small product:
// with 2^18, LSTM N 8 H 256 ran 1.6-3.5 ms a call between runs, 2.2 ms on one
// thread (bench/quantized.py, csrc/NOTES.md).
void gemm(I8Isa isa, const QW& w, int64_t n, const int8_t* q, const float* xscale, const float* bias,
          bool accumulate, float* out, int64_t ldo) {
  const int64_t blocks = i8_rpad(w.rows) / kI8Rows;
  const int64_t per_block = kI8Rows * i8_kpad(w.k) * n;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 21) / std::max<int64_t>(1, per_block));
  if (blocks <= grain || at::in_parallel_region()) {
    i8_gemm(isa, w.rows, n, w.k, w.p, w.rowsum, w.scale, q, xscale, bias, accumulate, out, ldo, 0, blocks);
    return;
  }
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    i8_gemm(isa, w.rows, n, w.k, w.p, w.rowsum, w.scale, q, xscale, bias, accumulate, out, ldo, b0, b1);
  });
}

void quantize(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, float* scale) {
  const int64_t kp = i8_kpad(k);
  if (m * k < (int64_t(1) << 16) || at::in_parallel_region()) {
    i8_quantize_rows(m, k, x, ldx, q, scale);
    return;
  }
  at::parallel_for(0, m, std::max<int64_t>(1, (int64_t(1) << 16) / k), [&](int64_t r0, int64_t r1) {
    i8_quantize_rows(r1 - r0, k, x + r0 * ldx, ldx, q + r0 * kp, scale + r0);
  });
}

// The gates of one batch row: pre-activations xg (input side, bias in) and gh
// (recurrent side) of H units per gate; act: scratch of G H floats.  Two passes,
// activations first, then the state, as the float path's rows (lstm.cpp: one
// loop per unit was too long a chain for out-of-order execution to overlap).
FR_Q_CLONES void lstm_row(int64_t H, const float* __restrict xg, const float* __restrict gh,
                          const float* __restrict c_prev, float* __restrict c, float* __restrict hu,
                          float* __restrict act) {
  for (int64_t q = 0; q < 4; ++q) {
    const float* x = xg + q * H;
    const float* g = gh + q * H;
    float* a = act + q * H;
    if (q == 2)
      for (int64_t j = 0; j < H; ++j) a[j] = fr_tanh(x[j] + g[j]);
    else
      for (int64_t j = 0; j < H; ++j) a[j] = fr_sigmoid(x[j] + g[j]);
  }
  for (int64_t j = 0; j < H; ++j) {
    const float cn = lstm_cell_state<float>(act[j], act[H + j], act[2 * H + j], c_prev[j]);
    c[j] = cn;
    hu[j] = lstm_cell_output<float>(act[3 * H + j], cn);
  }
}

FR_Q_CLONES void gru_row(int64_t H, const float* __restrict xg, const float* __restrict gh,
                         const float* __restrict h_prev, float* __restrict h, float* __restrict act) {
  for (int64_t j = 0; j < 2 * H; ++j) act[j] = fr_sigmoid(xg[j] + gh[j]);  // r, z
  for (int64_t j = 0; j < H; ++j) {
    const float n = gru_cell_n<float>(xg[2 * H + j], act[j], gh[2 * H + j]);
    h[j] = gru_cell_h<float>(act[H + j], n, h_prev[j]);
  }
}

FR_Q_CLONES void rnn_row(int64_t H, const float* __restrict xg, const float* __restrict gh, bool relu,
                         float* __restrict h) {
  if (relu)
    for (int64_t j = 0; j < H; ++j) h[j] = rnn_act<float>(xg[j] + gh[j], true);
  else
    for (int64_t j = 0; j < H; ++j) h[j] = fr_tanh(xg[j] + gh[j]);
}

std::tuple<at::Tensor, at::Tensor> int8_pack_op(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && !w.is_cuda(),
              "fastrnn int8_pack: a 2-D int8 CPU tensor");
  const at::Tensor W = w.contiguous();
  const int64_t rows = W.size(0), k = W.size(1);
  TORCH_CHECK(k >= 1, "fastrnn int8_pack: no columns");
  at::Tensor packed = at::empty({i8_packed_bytes(rows, k)}, w.options());
  at::Tensor rowsum = at::empty({i8_rpad(rows)}, w.options().dtype(at::kInt));
  i8_pack(W.data_ptr<int8_t>(), k, rows, k, packed.data_ptr<int8_t>(), rowsum.data_ptr<int32_t>());
  return {packed, rowsum};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_layer_op(
    c10::string_view mode, const at::Tensor& x_, at::TensorList w, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0_, const c10::optional<at::Tensor>& c0_,
    const c10::optional<at::Tensor>& lengths_, bool reverse, c10::string_view isa_name) {
  const bool lstm = mode == "LSTM", gru = mode == "GRU", relu = mode == "RNN_RELU";
  TORCH_CHECK(lstm || gru || relu || mode == "RNN_TANH", "fastrnn int8_layer: unknown mode '", std::string(mode), "'");
  const I8Isa isa = isa_of(isa_name);
  TORCH_CHECK(x_.dim() == 3 && x_.scalar_type() == at::kFloat && !x_.is_cuda(),
              "fastrnn int8_layer: x must be a (T, N, I) float32 CPU tensor");
  TORCH_CHECK(w.size() == 6 || (lstm && w.size() == 9), "fastrnn int8_layer: 6 weight tensors (9 projected)");
  const at::Tensor x = x_.contiguous();
  const int64_t T = x.size(0), N = x.size(1), I = x.size(2);
  const int64_t G = lstm ? 4 : gru ? 3 : 1;
  const QW ih = qw_of(w[0], w[1], w[2], I, "w_ih");
  TORCH_CHECK(ih.rows % G == 0, "fastrnn int8_layer: w_ih rows not a multiple of the gates");
  const int64_t H = ih.rows / G;
  const bool proj = w.size() == 9;
  const int64_t R = proj ? w[8].numel() : H;
  const QW hh = qw_of(w[3], w[4], w[5], R, "w_hh");
  TORCH_CHECK(hh.rows == G * H, "fastrnn int8_layer: w_hh has ", hh.rows, " rows, expected ", G * H);
  QW hr{};
  if (proj) hr = qw_of(w[6], w[7], w[8], H, "w_hr");
  TORCH_CHECK(h0_.dim() == 2 && h0_.size(0) == N && h0_.size(1) == R && h0_.scalar_type() == at::kFloat,
              "fastrnn int8_layer: h0 must be (N, R) float32");
  TORCH_CHECK(!lstm || (c0_.has_value() && c0_->dim() == 2 && c0_->size(0) == N && c0_->size(1) == H &&
                        c0_->scalar_type() == at::kFloat),
              "fastrnn int8_layer: c0 must be (N, H) float32");
  for (const auto* b : {&b_ih, &b_hh})
    TORCH_CHECK(!b->has_value() || ((*b)->numel() == G * H && (*b)->scalar_type() == at::kFloat),
                "fastrnn int8_layer: biases of ", G * H, " float32");
  std::vector<int64_t> len(N, T);
  if (lengths_.has_value()) {
    const at::Tensor L = lengths_->to(at::kLong).contiguous();
    TORCH_CHECK(L.numel() == N && !L.is_cuda(), "fastrnn int8_layer: lengths (N,) on the CPU");
    const int64_t* lp = L.data_ptr<int64_t>();
    for (int64_t b = 0; b < N; ++b) {
      TORCH_CHECK(lp[b] >= 1 && lp[b] <= T, "fastrnn int8_layer: lengths must be in [1, ", T, "], got ", lp[b]);
      len[b] = lp[b];
    }
  }
  const at::TensorOptions f32 = x.options();

  // the input side, every (t, b) row at once; LSTM and RNN fold b_hh in, the GRU
  // keeps it on the recurrent side (its n gate multiplies it by r)
  std::vector<float> bin(G * H, 0.0f);
  const bool has_bin = b_ih.has_value() || (!gru && b_hh.has_value());
  if (b_ih.has_value()) {
    const at::Tensor b = b_ih->contiguous();
    for (int64_t j = 0; j < G * H; ++j) bin[j] += b.data_ptr<float>()[j];
  }
  at::Tensor bhh;
  if (b_hh.has_value()) {
    bhh = b_hh->contiguous();
    if (!gru)
      for (int64_t j = 0; j < G * H; ++j) bin[j] += bhh.data_ptr<float>()[j];
  }
  const int64_t M = T * N;
  at::Tensor xg = at::empty({M, G * H}, f32);
  {
    at::Tensor xq = at::empty({M, i8_kpad(I)}, x.options().dtype(at::kChar));
    at::Tensor xs = at::empty({M}, f32);
    quantize(M, I, x.data_ptr<float>(), I, xq.data_ptr<int8_t>(), xs.data_ptr<float>());
    gemm(isa, ih, M, xq.data_ptr<int8_t>(), xs.data_ptr<float>(), has_bin ? bin.data() : nullptr, false,
         xg.data_ptr<float>(), G * H);
  }

  // the recurrence
  at::Tensor y = lengths_.has_value() ? at::zeros({T, N, R}, f32) : at::empty({T, N, R}, f32);
  at::Tensor h = h0_.contiguous().clone();
  at::Tensor c = lstm ? c0_->contiguous().clone() : at::empty({0}, f32);
  std::vector<float> gh(N * G * H), hnew(N * R), cnew(lstm ? N * H : 0), hu(proj ? N * H : 0), act(G * H);
  std::vector<int8_t> hq(N * std::max(i8_kpad(R), i8_kpad(H)));
  std::vector<float> hs(N);
  float* hp = h.data_ptr<float>();
  float* cp = lstm ? c.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const float* xgp = xg.data_ptr<float>();
  const float* bhn = gru && b_hh.has_value() ? bhh.data_ptr<float>() : nullptr;
  for (int64_t s = 0; s < T; ++s) {
    quantize(N, R, hp, R, hq.data(), hs.data());
    gemm(isa, hh, N, hq.data(), hs.data(), bhn, false, gh.data(), G * H);
    for (int64_t b = 0; b < N; ++b) {
      if (s >= len[b]) continue;
      const int64_t t = reverse ? len[b] - 1 - s : s;
      const float* xr = xgp + (t * N + b) * G * H;
      const float* ghr = gh.data() + b * G * H;
      if (lstm)
        lstm_row(H, xr, ghr, cp + b * H, cnew.data() + b * H, proj ? hu.data() + b * H : hnew.data() + b * R,
                 act.data());
      else if (gru)
        gru_row(H, xr, ghr, hp + b * R, hnew.data() + b * R, act.data());
      else
        rnn_row(H, xr, ghr, relu, hnew.data() + b * R);
    }
    if (proj) {
      quantize(N, H, hu.data(), H, hq.data(), hs.data());
      gemm(isa, hr, N, hq.data(), hs.data(), nullptr, false, hnew.data(), R);
    }
    for (int64_t b = 0; b < N; ++b) {
      if (s >= len[b]) continue;
      const int64_t t = reverse ? len[b] - 1 - s : s;
      std::copy(hnew.data() + b * R, hnew.data() + (b + 1) * R, hp + b * R);
      std::copy(hnew.data() + b * R, hnew.data() + (b + 1) * R, yp + (t * N + b) * R);
      if (lstm) std::copy(cnew.data() + b * H, cnew.data() + (b + 1) * H, cp + b * H);
    }
  }
  return {y, h, c};
}

}  // namespace

}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_FRAGMENT(fastrnn_ext, m) {
  m.def("int8_pack(Tensor w) -> (Tensor, Tensor)");
  m.def("int8_layer(str mode, Tensor x, Tensor[] w, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor? c0, "
        "Tensor? lengths, bool reverse, str isa) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastrnn_ext, CPU, m) {
  m.impl("int8_pack", &fastrnn::cpu::int8_pack_op);
  m.impl("int8_layer", &fastrnn::cpu::int8_layer_op);
}

// no backward: called with tensors that require grad, its outputs say so when a
// backward reaches them (fastrnn.quantized refuses earlier, with its own message)
TORCH_LIBRARY_IMPL(fastrnn_ext, Autograd, m) {
  m.impl("int8_layer", torch::autograd::autogradNotImplementedFallback());
  m.impl("int8_pack", torch::autograd::autogradNotImplementedFallback());
}
