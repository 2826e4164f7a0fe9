// Streaming calls on the CPU: fastrnn_ext::stream_stack, a whole stack of
// unidirectional layers for a call that records no graph and has a few steps
// (fastrnn/modules.py takes it for T = 1: a streaming recogniser's or a
// vocoder's frame, the state carried between calls).  What a whole-sequence
// call sets up once and repays over its steps (the layer-0 input projection as
// one GEMM, stacked weights, packed panels, a workspace for the backward) costs
// more than a one-step call's products, so this op takes the layers' weights as
// they are (torch.nn's flat list, no copy) and per step multiplies by each
// weight once, in place: the vector units' dot-product kernel (vec_gemm.h's
// vec_rows_dot) on the own paths, the BLAS (gemm(): MKL's sgemv at one row) on
// "blas".  Per layer and step the units split across threads when the products
// are big enough to repay a fork; each thread forms its units' rows of every
// gate and runs their cells, so a step needs no barrier but its end (and, with
// proj_size, one before the projection).  float32 only; inference only (no
// autograd kernel but a refusal, ops.cpp).
#include "cells.h"
#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

using at::Tensor;

// The products of one call: a vector unit's dot-product kernel, or the BLAS.
struct Dot {
  bool vec = false;
  VecIsa isa = VecIsa::kAvx2;

  // columns [j0, j1) of c (m rows, stride ldc) = a (m x k, stride k) @ w[j0:j1]^T
  // + bias[j0:j1] (zeros without one), or += when ``acc``
  void operator()(int64_t m, int64_t k, const float* a, const float* w, int64_t j0, int64_t j1,
                  const float* bias, bool acc, float* c, int64_t ldc) const {
    if (j1 <= j0 || m == 0) return;
    if (vec) {
      vec_rows_dot(isa, m, k, a, k, w, k, j0, j1, bias, acc, c, ldc);
      return;
    }
    if (!acc)
      for (int64_t r = 0; r < m; ++r)
        for (int64_t j = j0; j < j1; ++j) c[r * ldc + j] = bias != nullptr ? bias[j] : 0.0f;
    if (k > 0) cpu::gemm<float>(false, true, m, j1 - j0, k, a, k, w + j0 * k, k, 1.0f, c + j0, ldc);
  }

  // c (m x n) = a (m x k) @ w^T + bias (zeros without one), many rows: the BLAS
  // (torch's, threaded as torch is), whatever the path
  void gemm(int64_t m, int64_t n, int64_t k, const float* a, const float* w, const float* bias, float* c) const {
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < n; ++j) c[r * n + j] = bias != nullptr ? bias[j] : 0.0f;
    if (k > 0) cpu::gemm<float>(false, true, m, n, k, a, k, w, k, 1.0f, c, n);
  }
};

// The cells of a run of n units of one batch row, as loops the compiler
// vectorises (one clone per x86 vector unit, as the other gate passes).  LSTM:
// pre-activations at p, p + H, p + 2H, p + 3H; c in and out; h out.
FR_CPU_CLONES void lstm_units(int64_t n, int64_t H, const float* __restrict p, float* __restrict c,
                              float* __restrict h) {
  for (int64_t j = 0; j < n; ++j) {
    float i, f, g, o, cn, hn;
    lstm_cell_forward<float>(p[j], p[H + j], p[2 * H + j], p[3 * H + j], c[j], i, f, g, o, cn, hn);
    c[j] = cn;
    h[j] = hn;
  }
}

// GRU: the input side x (r, z, n at x, x + H, x + 2H) and the hidden side hs
// (likewise, b_hh in it), h_{t-1} at hp; h_t out.
FR_CPU_CLONES void gru_units(int64_t n, int64_t H, const float* __restrict x, const float* __restrict hs,
                             const float* __restrict hp, float* __restrict h) {
  for (int64_t j = 0; j < n; ++j) {
    float r, z, nn, hn;
    gru_cell_forward<float>(x[j], x[H + j], x[2 * H + j], hs[j], hs[H + j], hs[2 * H + j], hp[j], r, z, nn, hn);
    h[j] = hn;
  }
}

FR_CPU_CLONES void rnn_units(int64_t n, const float* __restrict p, bool relu, float* __restrict h) {
  if (relu)
    for (int64_t j = 0; j < n; ++j) h[j] = rnn_act<float>(p[j], true);
  else
    for (int64_t j = 0; j < n; ++j) h[j] = rnn_act<float>(p[j], false);
}

// Units [u0, u1) of a layer's step, or all of them, on this thread or split
// across threads in blocks of 16 when the step's work (multiply-adds) repays a
// fork.  16 units: every thread's run of cells starts at a multiple of the
// widest vector (AVX-512's 16 floats), so the vectorised loops leave the same
// units to their scalar tails (whose exp rounds differently) however many
// threads split the step: 1 and 2 threads give the same bits (tests/test_stream.py).
template <typename F>
void for_units(int64_t units, int64_t work, const F& fn) {
  constexpr int64_t kBlock = 16, kSplit = int64_t(1) << 17;
  const int64_t blocks = (units + kBlock - 1) / kBlock;
  if (work < kSplit || blocks < 2 || at::get_num_threads() < 2 || at::in_parallel_region()) {
    fn(int64_t(0), units);
    return;
  }
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    fn(b0 * kBlock, std::min(units, b1 * kBlock));
  });
}

std::tuple<Tensor, Tensor, Tensor> stream_stack_cpu(c10::string_view mode_, const Tensor& x_,
                                                    at::TensorList weights, const Tensor& h0_,
                                                    const c10::optional<Tensor>& c0_, bool has_bias,
                                                    bool proj, c10::string_view path) {
  const Cell mode = cell_of(mode_);
  const bool lstm = mode == Cell::kLstm, gru = mode == Cell::kGru;
  const int64_t G = lstm ? 4 : gru ? 3 : 1;
  TORCH_CHECK(!proj || lstm, "fastrnn: stream_stack: only the LSTM has proj_size");
  TORCH_CHECK(x_.dim() == 3 && x_.scalar_type() == at::kFloat && x_.device().is_cpu(),
              "fastrnn: stream_stack takes float32 CPU input (T, N, I), got ", x_.sizes(), " ", x_.scalar_type());
  TORCH_CHECK(h0_.dim() == 3 && h0_.scalar_type() == at::kFloat && h0_.device().is_cpu(),
              "fastrnn: stream_stack: h0 is float32 (L, N, R) on the CPU");
  const int64_t per = 2 + (has_bias ? 2 : 0) + (proj ? 1 : 0);
  const int64_t L = h0_.size(0), T = x_.size(0), N = x_.size(1), R = h0_.size(2);
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(weights.size()) == L * per,
              "fastrnn: stream_stack: expected ", L * per, " weights for ", L, " layers, got ", weights.size());
  TORCH_CHECK(h0_.size(1) == N, "fastrnn: stream_stack: h0 ", h0_.sizes(), " for a batch of ", N);
  TORCH_CHECK(T >= 1, "fastrnn: stream_stack: no steps");
  const Tensor& w_hr0 = weights[has_bias ? 4 : 2];
  const int64_t H = proj ? (w_hr0.dim() == 2 ? w_hr0.size(1) : -1) : R;
  TORCH_CHECK(lstm == c0_.has_value(), "fastrnn: stream_stack: c0 is the LSTM's, and only the LSTM's");
  std::vector<Tensor> ws(weights.size());
  for (int64_t l = 0; l < L; ++l) {
    const int64_t I = l == 0 ? x_.size(2) : R;
    for (int64_t q = 0; q < per; ++q) {
      const Tensor& w = weights[l * per + q];
      std::vector<int64_t> want;
      if (q == 0) want = {G * H, I};
      else if (q == 1) want = {G * H, R};
      else if (has_bias && q < 4) want = {G * H};
      else want = {R, H};  // w_hr
      TORCH_CHECK(w.sizes() == at::IntArrayRef(want) && w.scalar_type() == at::kFloat && w.device().is_cpu(),
                  "fastrnn: stream_stack: layer ", l, " weight ", q, " is ", w.sizes(), " ", w.scalar_type(),
                  ", expected float32 ", at::IntArrayRef(want));
      ws[l * per + q] = w.contiguous();
    }
  }
  if (lstm)
    TORCH_CHECK(c0_->sizes() == at::IntArrayRef({L, N, H}) && c0_->scalar_type() == at::kFloat &&
                    c0_->device().is_cpu(),
                "fastrnn: stream_stack: c0 is float32 (", L, ", ", N, ", ", H, ")");
  Dot dot;
  const CpuGemm g = gemm_path(path, at::kFloat);
  if (g == CpuGemm::kOwn || g == CpuGemm::kOwnAvx2 || g == CpuGemm::kOwnNeon) {
    dot.vec = true;
    dot.isa = own_isa(g);
  }
  const Tensor x = x_.contiguous(), h0 = h0_.contiguous();
  Tensor y = at::empty({T, N, R}, x.options());
  Tensor h_n = at::empty({L, N, R}, x.options());
  Tensor c_n = lstm ? c0_->to(at::kFloat, false, /*copy=*/true).contiguous() : at::empty({0}, x.options());
  // scratch: the gates (T, N, G H: every step's input side, when T > 1), the
  // GRU's hidden side (N, 3H), the layer's bias sum (G H), the unprojected output
  // (N, H), two layer outputs (T, N, R) for the layers below the top
  const int64_t nb = L > 1 ? 2 : 0;
  Tensor scratch = at::empty({T * N * G * H + (gru ? N * G * H : 0) + G * H + (proj ? N * H : 0) + nb * T * N * R},
                             x.options());
  float* gx = scratch.data_ptr<float>();
  float* gh = gx + T * N * G * H;
  float* bsum = gh + (gru ? N * G * H : 0);
  float* hu = bsum + G * H;
  float* below[2] = {hu + (proj ? N * H : 0), hu + (proj ? N * H : 0) + T * N * R};
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t GH = G * H;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t I = l == 0 ? x.size(2) : R;
    const float* in = l == 0 ? xp : below[(l - 1) % 2];
    float* out = l == L - 1 ? yp : below[l % 2];
    const float* w_ih = ws[l * per].data_ptr<float>();
    const float* w_hh = ws[l * per + 1].data_ptr<float>();
    const float* b_ih = has_bias ? ws[l * per + 2].data_ptr<float>() : nullptr;
    const float* b_hh = has_bias ? ws[l * per + 3].data_ptr<float>() : nullptr;
    const float* w_hr = proj ? ws[l * per + (has_bias ? 4 : 2)].data_ptr<float>() : nullptr;
    // the input side's bias: b_ih + b_hh where the cell adds both sides (LSTM, RNN)
    const float* bx = b_ih;
    if (has_bias && !gru) {
      for (int64_t j = 0; j < GH; ++j) bsum[j] = b_ih[j] + b_hh[j];
      bx = bsum;
    }
    float* c = lstm ? c_n.data_ptr<float>() + l * N * H : nullptr;
    // more than one step: the layer's input side for all of them first, as one
    // product (W_ih read once, not once a step); then a step reads W_hh alone
    const bool whole = T > 1;
    if (whole) dot.gemm(T * N, GH, I, in, w_ih, bx, gx);
    const int64_t work = N * GH * (whole ? R : I + R);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = in + t * N * I;
      float* gt = gx + t * N * GH;
      const float* hp = t == 0 ? h0.data_ptr<float>() + l * N * R : out + (t - 1) * N * R;
      float* ht = out + t * N * R;
      for_units(H, work, [&](int64_t u0, int64_t u1) {
        for (int64_t q = 0; q < G; ++q) {
          const int64_t j0 = q * H + u0, j1 = q * H + u1;
          if (!whole) dot(N, I, xt, w_ih, j0, j1, bx, false, gt, GH);
          if (gru)
            dot(N, R, hp, w_hh, j0, j1, b_hh, false, gh, GH);
          else
            dot(N, R, hp, w_hh, j0, j1, nullptr, true, gt, GH);
        }
        const int64_t n = u1 - u0;
        for (int64_t b = 0; b < N; ++b) {
          const float* pre = gt + b * GH + u0;
          if (lstm)
            lstm_units(n, H, pre, c + b * H + u0, (proj ? hu + b * H : ht + b * R) + u0);
          else if (gru)
            gru_units(n, H, pre, gh + b * GH + u0, hp + b * R + u0, ht + b * R + u0);
          else
            rnn_units(n, pre, mode == Cell::kRelu, ht + b * R + u0);
        }
      });
      if (proj)  // h_t = W_hr (o * tanh(c_t)), once every unit's is there
        for_units(R, N * R * H, [&](int64_t r0, int64_t r1) { dot(N, H, hu, w_hr, r0, r1, nullptr, false, ht, R); });
    }
    std::copy(out + (T - 1) * N * R, out + T * N * R, h_n.data_ptr<float>() + l * N * R);
  }
  return {y, h_n, c_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn_ext, CPU, m) {
  m.impl("stream_stack", &stream_stack_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
