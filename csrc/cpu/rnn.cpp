// Elman RNN (tanh or relu) recurrence on the CPU: per step one matrix product
// h_{t-1} @ W_hh^T and one fused pass for the activation; each thread runs the
// whole sequence for its block of batch rows (see for_row_blocks).
#include "cells.h"
#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

template <typename D, typename A>
FR_HD void fwd_row(int64_t H, const D* __restrict x, const A* __restrict gh, bool relu,
                   A* __restrict h) {
  for (int64_t j = 0; j < H; ++j) h[j] = rnn_act<A>(static_cast<A>(x[j]) + gh[j], relu);
}

FR_CPU_CLONES void fwd_row_f32(int64_t H, const float* x, const float* gh, bool relu, float* h) {
  if (relu)
    fwd_row<float, float>(H, x, gh, true, h);
  else
    fwd_row<float, float>(H, x, gh, false, h);
}

FR_CPU_CLONES void fwd_row_bf16(int64_t H, const c10::BFloat16* x, const float* gh, bool relu, float* h) {
  if (relu)
    fwd_row<c10::BFloat16, float>(H, x, gh, true, h);
  else
    fwd_row<c10::BFloat16, float>(H, x, gh, false, h);
}

// dh: in, gradient w.r.t. h_t from step t+1; zeroed (the product adds the rest).
template <typename D, typename A>
FR_HD void bwd_row(int64_t H, const D* __restrict y, const D* __restrict dy, bool relu,
                   A* __restrict dh, A* __restrict dg) {
  for (int64_t j = 0; j < H; ++j) {
    dg[j] = (dh[j] + static_cast<A>(dy[j])) * rnn_act_grad<A>(static_cast<A>(y[j]), relu);
    dh[j] = A(0);
  }
}

FR_CPU_CLONES void bwd_row_f32(int64_t H, const float* y, const float* dy, bool relu, float* dh, float* dg) {
  bwd_row<float, float>(H, y, dy, relu, dh, dg);
}

FR_CPU_CLONES void bwd_row_bf16(int64_t H, const c10::BFloat16* y, const c10::BFloat16* dy, bool relu, float* dh,
                                float* dg) {
  bwd_row<c10::BFloat16, float>(H, y, dy, relu, dh, dg);
}

// Forward over batch rows [r0, r1), the whole sequence (see for_row_blocks).
// With `in` (a stacked layer, D == A) the input side is in->x[t] @ W_ih^T + bias,
// formed per step, and xg is not read.
template <typename D, typename A>
void forward_rows(int64_t r0, int64_t r1, const Dims& d, const D* xg, const A* w, const A* h0,
                  const int64_t* len, bool relu, D* y, A* h_n, const StepInput<A>* in = nullptr) {
  const int64_t T = d.T, N = d.N, H = d.H, M = r1 - r0;
  TORCH_CHECK(in == nullptr || (std::is_same<D, A>::value),
              "fastrnn: a fused stack runs in float32 or float64 only");
  const auto acc = at::TensorOptions().dtype(dtype_of<A>());
  const StepMatrix<A> Wmul(d.gemm, w, H, true, M, H, H);
  std::unique_ptr<StepMatrix<A>> Imul;
  at::Tensor in_bias;
  if (in != nullptr) {
    Imul = std::make_unique<StepMatrix<A>>(d.gemm, in->w_ih, in->I, true, M, H, in->I);
    in_bias = in->bias != nullptr ? at::Tensor() : at::zeros({H}, acc);
  }
  A* h = h_n + r0 * H;
  std::copy(h0 + r0 * H, h0 + r1 * H, h);
  at::Tensor pre = at::empty({M, H}, acc);
  A* g = pre.data_ptr<A>();
  const StepRows rows(len, r0, r1);
  for (int64_t t = 0; t < T; ++t) {
    const D* x = nullptr;
    int64_t xrow = H;  // x's row stride: 0 when every row adds the same bias
    if constexpr (std::is_same<D, A>::value) {
      if (in != nullptr) {
        Imul->mul(in->x + (t * N + r0) * in->I, in->I, A(0), g, H);
        Wmul.mul(h, H, A(1), g, H);
        x = in->bias != nullptr ? in->bias : in_bias.data_ptr<A>();
        xrow = 0;
      }
    }
    if (in == nullptr) {
      Wmul.mul(h, H, A(0), g, H, rows.at(t));
      x = xg + (t * N + r0) * H;
    }
    D* yt = y + (t * N + r0) * H;
    for (int64_t b = 0; b < M; ++b) {
      if (!active(len, r0 + b, t)) {
        zero_row(yt + b * H, H);
        continue;
      }
      by_dtype<D>(fwd_row_f32, fwd_row_bf16, fwd_row<D, A>,
                  H, x + b * xrow, g + b * H, relu, h + b * H);
      convert_row(yt + b * H, h + b * H, H);
    }
  }
}

// With `up` (a stacked layer below the top, D == A), dh also receives
// up->dg[t] @ W_ih of the layer above at the start of step t.
template <typename D, typename A>
void backward_rows(int64_t r0, int64_t r1, const Dims& d, const D* dy, const A* w, const D* y,
                   const int64_t* len, bool relu, D* dxg, A* dh_io,
                   const StepAbove<A>* up = nullptr) {
  const int64_t T = d.T, N = d.N, H = d.H, M = r1 - r0;
  constexpr bool same = std::is_same<D, A>::value;
  const StepMatrix<A> Wmul(d.gemm, w, H, false, M, H, H);
  std::unique_ptr<StepMatrix<A>> Umul;
  if (up != nullptr) Umul = std::make_unique<StepMatrix<A>>(d.gemm, up->w_ih, H, false, M, H, up->GH);
  A* dh = dh_io + r0 * H;
  at::Tensor buf = same ? at::Tensor() : at::empty({M, H}, at::TensorOptions().dtype(dtype_of<A>()));
  const StepRows rows(len, r0, r1);
  for (int64_t t = T - 1; t >= 0; --t) {
    D* dxt = dxg + (t * N + r0) * H;
    A* dg = same ? reinterpret_cast<A*>(dxt) : buf.data_ptr<A>();
    if (up != nullptr) Umul->mul(up->dg + (t * N + r0) * up->GH, up->GH, A(1), dh, H);
    for (int64_t b = 0; b < M; ++b) {
      if (!active(len, r0 + b, t)) {
        zero_row(dg + b * H, H);
        if (!same) zero_row(dxt + b * H, H);
        continue;
      }
      const int64_t o = (t * N + r0 + b) * H;
      by_dtype<D>(bwd_row_f32, bwd_row_bf16, bwd_row<D, A>,
                  H, y + o, dy + o, relu, dh + b * H, dg + b * H);
      if (!same) convert_row(dxt + b * H, dg + b * H, H);
    }
    Wmul.mul(dg, H, A(1), dh, H, rows.at(t));
  }
}

template <typename D, typename A>
void forward(const Dims& d, const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0,
             const int64_t* len, bool relu, at::Tensor& y, at::Tensor& h_n) {
  const at::Tensor W = as_acc(w_hh, dtype_of<A>());
  const at::Tensor h0a = as_acc(h0, dtype_of<A>());
  h_n = at::empty({d.N, d.H}, h0a.options());
  for_row_blocks(d.N, [&](int64_t r0, int64_t r1) {
    forward_rows<D, A>(r0, r1, d, xg.data_ptr<D>(), W.data_ptr<A>(), h0a.data_ptr<A>(), len, relu,
                       y.data_ptr<D>(), h_n.data_ptr<A>());
  }, len, d.T, 1 * d.H * d.R);
}

template <typename D, typename A>
void backward(const Dims& d, const at::Tensor& dy, const at::Tensor& dh_n,
              const at::Tensor& w_hh, const at::Tensor& y, const int64_t* len, bool relu,
              at::Tensor& dxg, at::Tensor& dh) {
  const at::Tensor W = as_acc(w_hh, dtype_of<A>());
  dh = dh_n.to(dtype_of<A>(), false, /*copy=*/true);
  for_row_blocks(d.N, [&](int64_t r0, int64_t r1) {
    backward_rows<D, A>(r0, r1, d, dy.data_ptr<D>(), W.data_ptr<A>(), y.data_ptr<D>(), len, relu,
                        dxg.data_ptr<D>(), dh.data_ptr<A>());
  }, len, d.T, 1 * d.H * d.R);
}

std::tuple<at::Tensor, at::Tensor> rnn_forward_cpu(const at::Tensor& xg, const at::Tensor& w_hh,
                                                   const at::Tensor& h0,
                                                   const c10::optional<at::Tensor>& lengths,
                                                   bool relu, bool need_ws, c10::string_view path) {
  (void)need_ws;  // the RNN backward needs only y
  const Dims d = with_path(check_rnn_forward(xg, w_hh, h0, lengths), path, xg.scalar_type());
  at::Tensor y = big_empty({d.T, d.N, d.H}, xg.options());
  at::Tensor h;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "rnn_forward", [&] {
    forward<scalar_t, at::opmath_type<scalar_t>>(d, xg, w_hh, h0, lengths_ptr(lengths), relu, y,
                                                 h);
  });
  return {y, h.to(xg.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> rnn_backward_cpu(const at::Tensor& dy, const at::Tensor& dh_n,
                                                    const at::Tensor& w_hh, const at::Tensor& y,
                                                    const c10::optional<at::Tensor>& lengths,
                                                    bool relu, c10::string_view path) {
  const Dims d = with_path(check_rnn_backward(dy, dh_n, w_hh, y, lengths), path, dy.scalar_type());
  at::Tensor dxg = big_empty({d.T, d.N, d.H}, dy.options());
  at::Tensor dh;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "rnn_backward", [&] {
    backward<scalar_t, at::opmath_type<scalar_t>>(d, dy, dh_n, w_hh, y, lengths_ptr(lengths), relu,
                                                  dxg, dh);
  });
  return {dxg, dh.to(dy.scalar_type())};
}

// Fused stacks (see StepInput in common.h): float32 and float64.
std::tuple<at::Tensor, at::Tensor> rnn_stack_forward_cpu(const at::Tensor& xg0, const at::Tensor& w_ih,
                                                         const c10::optional<at::Tensor>& b,
                                                         const at::Tensor& w_hh, const at::Tensor& h0,
                                                         bool relu, bool need_ws, c10::string_view path) {
  (void)need_ws;  // the RNN backward needs only y
  const StackDims s = check_stack_forward(xg0, w_ih, b, w_hh, h0, 1);
  const int64_t L = s.L, T = s.T, N = s.N, H = s.H;
  at::Tensor y = big_empty({L, T, N, H}, xg0.options());
  at::Tensor hn = at::empty({L, N, H}, xg0.options());
  AT_DISPATCH_FLOATING_TYPES(xg0.scalar_type(), "rnn_stack_forward", [&] {
    using A = scalar_t;
    const Dims d = with_path({T, N, H, H}, path, dtype_of<A>());
    const StackLayout<A> lay{T, N, H, 1};
    A* yp = y.data_ptr<A>();
    const A *wih = w_ih.data_ptr<A>(), *whh = w_hh.data_ptr<A>();
    const A* bp = b.has_value() ? b->data_ptr<A>() : nullptr;
    lay.forward(L, yp, wih, bp, [&](int64_t r0, int64_t r1, int64_t l, const StepInput<A>* in) {
      forward_rows<A, A>(r0, r1, d, xg0.data_ptr<A>(), whh + l * H * H, h0.data_ptr<A>() + l * N * H,
                         nullptr, relu, yp + l * T * N * H, hn.data_ptr<A>() + l * N * H, in);
    });
  });
  return {y, hn};
}

std::tuple<at::Tensor, at::Tensor> rnn_stack_backward_cpu(const at::Tensor& dy, const at::Tensor& dh_n,
                                                          const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                          const at::Tensor& y, bool relu, c10::string_view path) {
  const StackDims s = check_stack_backward(dy, dh_n, w_ih, w_hh, 1);
  detail::same(y, dy, "y", {s.L, s.T, s.N, s.H}, dy.scalar_type());
  const int64_t L = s.L, T = s.T, N = s.N, H = s.H;
  at::Tensor dxg = big_empty({L, T, N, H}, dy.options());
  at::Tensor dh = dh_n.clone();
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "rnn_stack_backward", [&] {
    using A = scalar_t;
    const Dims d = with_path({T, N, H, H}, path, dtype_of<A>());
    const StackLayout<A> lay{T, N, H, 1};
    A* dxp = dxg.data_ptr<A>();
    const A *wih = w_ih.data_ptr<A>(), *whh = w_hh.data_ptr<A>();
    lay.backward(L, dxp, wih, [&](int64_t r0, int64_t r1, int64_t l, const StepAbove<A>* up) {
      backward_rows<A, A>(r0, r1, d, dy.data_ptr<A>() + l * T * N * H, whh + l * H * H,
                          y.data_ptr<A>() + l * T * N * H, nullptr, relu, dxp + l * T * N * H,
                          dh.data_ptr<A>() + l * N * H, up);
    });
  });
  return {dxg, dh};
}

}  // namespace

// The Cell modules' step (cells.h).
namespace {
// g: the rows of h_{t-1} @ W_hh^T, row stride gr (0: one row of zeros for all)
template <typename D, typename A>
void cell_rows(int64_t N, int64_t H, const D* x, const A* g, int64_t gr, bool relu, A* h) {
  for_cell_rows(N, H, [&](int64_t b) {
    by_dtype<D>(fwd_row_f32, fwd_row_bf16, fwd_row<D, A>,
                H, x + b * H, g + b * gr, relu, h + b * H);
  });
}
}  // namespace

void rnn_cell_gates(const at::Tensor& xg, const at::Tensor& gh, bool relu, const at::Tensor& h) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "rnn_cell", [&] {
    using A = at::opmath_type<scalar_t>;
    const int64_t H = h.size(1);
    std::vector<A> zeros(gh.defined() ? 0 : H, A(0));
    cell_rows<scalar_t, A>(h.size(0), H, xg.data_ptr<scalar_t>(), gh.defined() ? gh.data_ptr<A>() : zeros.data(),
                           gh.defined() ? H : 0, relu, h.data_ptr<A>());
  });
}

void rnn_cell_gates_backward(const at::Tensor& y, const at::Tensor& dy, bool relu,
                             const at::Tensor& dg) {
  const int64_t N = dg.size(0), H = dg.size(1);
  at::Tensor dh = at::zeros({N, H}, dg.options());  // no gradient from a later step
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "rnn_cell_backward", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t *yp = y.data_ptr<scalar_t>(), *dyp = dy.data_ptr<scalar_t>();
    A *dhp = dh.data_ptr<A>(), *dgp = dg.data_ptr<A>();
    for_cell_rows(N, H, [&](int64_t b) {
      by_dtype<scalar_t>(bwd_row_f32, bwd_row_bf16, bwd_row<scalar_t, A>,
                         H, yp + b * H, dyp + b * H, relu, dhp + b * H, dgp + b * H);
    });
  });
}

TORCH_LIBRARY_IMPL(fastrnn_ext, CPU, m) {
  m.impl("rnn_forward", &rnn_forward_cpu);
  m.impl("rnn_backward", &rnn_backward_cpu);
  m.impl("rnn_stack_forward", &rnn_stack_forward_cpu);
  m.impl("rnn_stack_backward", &rnn_stack_backward_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
