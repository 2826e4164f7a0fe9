// GRU recurrence on the CPU: per step one matrix product h_{t-1} @ W_hh^T and
// one fused pass over the gates (b_hh added there, since the n gate needs
// W_hn h + b_hn on its own); each thread runs the whole sequence for its block
// of batch rows (see for_row_blocks).
#include "cells.h"
#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

// xg: 3H input-side pre-activations; gh: 3H of h_{t-1} @ W_hh^T; bh: b_hh (3H,
// zeros when absent); h: state (in/out); ws: [r, z, n, hn].  Two passes, as
// in the LSTM (see lstm.cpp): r and z first, then n and h_t.
template <typename D, typename A>
FR_HD void fwd_row(int64_t H, const D* __restrict xg, const A* __restrict gh,
                   const A* __restrict bh, A* __restrict h, A* __restrict ws) {
  for (int64_t j = 0; j < 2 * H; ++j) ws[j] = fr_sigmoid(static_cast<A>(xg[j]) + gh[j] + bh[j]);
  for (int64_t j = 0; j < H; ++j) {
    const A hn = gh[2 * H + j] + bh[2 * H + j];
    const A n = gru_cell_n<A>(static_cast<A>(xg[2 * H + j]), ws[j], hn);
    ws[2 * H + j] = n;
    ws[3 * H + j] = hn;
    h[j] = gru_cell_h<A>(ws[H + j], n, h[j]);
  }
}

FR_CPU_CLONES void fwd_row_f32(int64_t H, const float* xg, const float* gh, const float* bh,
                               float* h, float* ws) {
  fwd_row<float, float>(H, xg, gh, bh, h, ws);
}

// dh: in, gradient w.r.t. h_t from step t+1; out, its direct part dh_t * z
// (the product with W_hh is added afterwards).  dx: dxg row (D), dg: dgh row (A).
template <typename D, typename A>
FR_HD void bwd_row(int64_t H, const A* __restrict ws, const D* __restrict h_prev,
                   const D* __restrict dy, A* __restrict dh, D* __restrict dx, A* __restrict dg) {
  for (int64_t j = 0; j < H; ++j) {
    A dr, dz, dn, dhn, dhd;
    gru_cell_backward<A>(ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j],
                         static_cast<A>(h_prev[j]), dh[j] + static_cast<A>(dy[j]), dr, dz, dn,
                         dhn, dhd);
    dx[j] = static_cast<D>(dr);
    dx[H + j] = static_cast<D>(dz);
    dx[2 * H + j] = static_cast<D>(dn);
    dg[j] = dr;
    dg[H + j] = dz;
    dg[2 * H + j] = dhn;
    dh[j] = dhd;
  }
}

FR_CPU_CLONES void bwd_row_f32(int64_t H, const float* ws, const float* h_prev, const float* dy,
                               float* dh, float* dx, float* dg) {
  bwd_row<float, float>(H, ws, h_prev, dy, dh, dx, dg);
}

FR_CPU_CLONES void fwd_row_bf16(int64_t H, const c10::BFloat16* xg, const float* gh, const float* bh,
                                float* h, float* ws) {
  fwd_row<c10::BFloat16, float>(H, xg, gh, bh, h, ws);
}

FR_CPU_CLONES void bwd_row_bf16(int64_t H, const float* ws, const c10::BFloat16* h_prev,
                                const c10::BFloat16* dy, float* dh, c10::BFloat16* dx, float* dg) {
  bwd_row<c10::BFloat16, float>(H, ws, h_prev, dy, dh, dx, dg);
}

// Forward over batch rows [r0, r1), the whole sequence (see for_row_blocks).
// With `in` (a stacked layer, D == A) the input side is in->x[t] @ W_ih^T + b_ih,
// formed per step, and xg is not read.
template <typename D, typename A>
void forward_rows(int64_t r0, int64_t r1, const Dims& d, const D* xg, const A* w, const A* bh,
                  const A* h0, const int64_t* len, A* ws_all, D* y, A* h_n,
                  const StepInput<A>* in = nullptr) {
  const int64_t T = d.T, N = d.N, H = d.H, M = r1 - r0;
  TORCH_CHECK(in == nullptr || (std::is_same<D, A>::value),
              "fastrnn: a fused stack runs in float32 or float64 only");
  const StepMatrix<A> Wmul(d.gemm, w, H, true, M, 3 * H, H);
  std::unique_ptr<StepMatrix<A>> Imul;
  if (in != nullptr) Imul = std::make_unique<StepMatrix<A>>(d.gemm, in->w_ih, in->I, true, M, 3 * H, in->I);
  A* h = h_n + r0 * H;  // the state lives in the output rows
  std::copy(h0 + r0 * H, h0 + r1 * H, h);
  at::Tensor buf = at::empty({M * (3 * H + (ws_all ? 0 : 4 * H) + (in ? 3 * H : 0))},
                             at::TensorOptions().dtype(dtype_of<A>()));
  A* g = buf.data_ptr<A>();    // (M, 3H)
  A* scratch = g + M * 3 * H;  // (M, 4H) ws when not kept
  A* gx = scratch + (ws_all ? 0 : M * 4 * H);  // (M, 3H) the stacked layer's input side
  const StepRows rows(len, r0, r1);
  for (int64_t t = 0; t < T; ++t) {
    Wmul.mul(h, H, A(0), g, 3 * H, rows.at(t));
    A* ws = ws_all ? ws_all + (t * N + r0) * 4 * H : scratch;
    const D* x = nullptr;
    if constexpr (std::is_same<D, A>::value) {
      if (in != nullptr) {
        Imul->mul(in->x + (t * N + r0) * in->I, in->I, A(0), gx, 3 * H);
        if (in->bias != nullptr)
          for (int64_t b = 0; b < M; ++b)
            for (int64_t j = 0; j < 3 * H; ++j) gx[b * 3 * H + j] += in->bias[j];
        x = gx;
      }
    }
    if (in == nullptr) x = xg + (t * N + r0) * 3 * H;
    D* yt = y + (t * N + r0) * H;
    for (int64_t b = 0; b < M; ++b) {
      if (!active(len, r0 + b, t)) {
        zero_row(yt + b * H, H);
        zero_row(ws + b * 4 * H, 4 * H);
        continue;
      }
      by_dtype<D>(fwd_row_f32, fwd_row_bf16, fwd_row<D, A>,
                  H, x + b * 3 * H, g + b * 3 * H, bh, h + b * H, ws + b * 4 * H);
      convert_row(yt + b * H, h + b * H, H);
    }
  }
}

// Backward over batch rows [r0, r1): gate pass, then dh += dG_t @ W_hh.
// With `up` (a stacked layer below the top, D == A), dh also receives
// up->dg[t] @ W_ih of the layer above at the start of step t.
template <typename D, typename A>
void backward_rows(int64_t r0, int64_t r1, const Dims& d, const D* dy, const A* w, const D* h0,
                   const D* y, const A* ws, const int64_t* len, D* dxg, D* dgh, A* dh_io,
                   const StepAbove<A>* up = nullptr) {
  const int64_t T = d.T, N = d.N, H = d.H, M = r1 - r0;
  constexpr bool same = std::is_same<D, A>::value;
  const StepMatrix<A> Wmul(d.gemm, w, H, false, M, H, 3 * H);
  std::unique_ptr<StepMatrix<A>> Umul;
  if (up != nullptr) Umul = std::make_unique<StepMatrix<A>>(d.gemm, up->w_ih, H, false, M, H, up->GH);
  A* dh = dh_io + r0 * H;
  at::Tensor buf = same ? at::Tensor()
                        : at::empty({M * 3 * H}, at::TensorOptions().dtype(dtype_of<A>()));
  const StepRows rows(len, r0, r1);
  for (int64_t t = T - 1; t >= 0; --t) {
    D* dxt = dxg + (t * N + r0) * 3 * H;
    D* dgt = dgh + (t * N + r0) * 3 * H;
    A* dg = same ? reinterpret_cast<A*>(dgt) : buf.data_ptr<A>();
    if (up != nullptr) Umul->mul(up->dg + (t * N + r0) * up->GH, up->GH, A(1), dh, H);
    for (int64_t b = 0; b < M; ++b) {
      if (!active(len, r0 + b, t)) {  // dh passes through; the product adds 0
        zero_row(dxt + b * 3 * H, 3 * H);
        zero_row(dg + b * 3 * H, 3 * H);
        if (!same) zero_row(dgt + b * 3 * H, 3 * H);
        continue;
      }
      const int64_t row = t * N + r0 + b;
      const D* hp = t > 0 ? y + (row - N) * H : h0 + (r0 + b) * H;
      by_dtype<D>(bwd_row_f32, bwd_row_bf16, bwd_row<D, A>,
                  H, ws + row * 4 * H, hp, dy + row * H, dh + b * H, dxt + b * 3 * H, dg + b * 3 * H);
      if (!same) convert_row(dgt + b * 3 * H, dg + b * 3 * H, 3 * H);
    }
    Wmul.mul(dg, 3 * H, A(1), dh, H, rows.at(t));
  }
}

template <typename D, typename A>
void forward(const Dims& d, const at::Tensor& xg, const at::Tensor& w_hh,
             const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0, const int64_t* len,
             bool need_ws, at::Tensor& y, at::Tensor& ws, at::Tensor& h_n) {
  const at::Tensor W = as_acc(w_hh, dtype_of<A>());
  const at::Tensor bias = b_hh.has_value() ? as_acc(*b_hh, dtype_of<A>())
                                           : at::zeros({3 * d.H}, W.options());
  const at::Tensor h0a = as_acc(h0, dtype_of<A>());
  h_n = at::empty({d.N, d.H}, h0a.options());
  for_row_blocks(d.N, [&](int64_t r0, int64_t r1) {
    forward_rows<D, A>(r0, r1, d, xg.data_ptr<D>(), W.data_ptr<A>(), bias.data_ptr<A>(),
                       h0a.data_ptr<A>(), len, need_ws ? ws.data_ptr<A>() : nullptr,
                       y.data_ptr<D>(), h_n.data_ptr<A>());
  }, len, d.T, 3 * d.H * d.R);
}

template <typename D, typename A>
void backward(const Dims& d, const at::Tensor& dy, const at::Tensor& dh_n,
              const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& y,
              const at::Tensor& ws, const int64_t* len, at::Tensor& dxg, at::Tensor& dgh,
              at::Tensor& dh) {
  const at::Tensor W = as_acc(w_hh, dtype_of<A>());
  dh = dh_n.to(dtype_of<A>(), false, /*copy=*/true);
  for_row_blocks(d.N, [&](int64_t r0, int64_t r1) {
    backward_rows<D, A>(r0, r1, d, dy.data_ptr<D>(), W.data_ptr<A>(), h0.data_ptr<D>(),
                        y.data_ptr<D>(), ws.data_ptr<A>(), len, dxg.data_ptr<D>(),
                        dgh.data_ptr<D>(), dh.data_ptr<A>());
  }, len, d.T, 3 * d.H * d.R);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const c10::optional<at::Tensor>& lengths, bool need_ws, c10::string_view path) {
  const Dims d = with_path(check_gru_forward(xg, w_hh, b_hh, h0, lengths), path, xg.scalar_type());
  const auto A = acc_type(xg.scalar_type());
  at::Tensor y = big_empty({d.T, d.N, d.H}, xg.options());
  at::Tensor ws = need_ws ? big_empty({d.T, d.N, 4 * d.H}, xg.options().dtype(A))
                          : at::empty({0}, xg.options().dtype(A));
  at::Tensor h;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "gru_forward", [&] {
    forward<scalar_t, at::opmath_type<scalar_t>>(d, xg, w_hh, b_hh, h0, lengths_ptr(lengths),
                                                 need_ws, y, ws, h);
  });
  return {y, h.to(xg.scalar_type()), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& y, const at::Tensor& ws, const c10::optional<at::Tensor>& lengths, c10::string_view path) {
  const Dims d = with_path(check_gru_backward(dy, dh_n, w_hh, h0, y, ws, lengths), path, dy.scalar_type());
  at::Tensor dxg = big_empty({d.T, d.N, 3 * d.H}, dy.options());
  at::Tensor dgh = big_empty({d.T, d.N, 3 * d.H}, dy.options());
  at::Tensor dh;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "gru_backward", [&] {
    backward<scalar_t, at::opmath_type<scalar_t>>(d, dy, dh_n, w_hh, h0, y, ws,
                                                  lengths_ptr(lengths), dxg, dgh, dh);
  });
  return {dxg, dgh, dh.to(dy.scalar_type())};
}

// Fused stacks (see StepInput in common.h): float32 and float64.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_stack_forward_cpu(
    const at::Tensor& xg0, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    bool need_ws, c10::string_view path) {
  const StackDims s = check_stack_forward(xg0, w_ih, b_ih, w_hh, h0, 3);
  if (b_hh.has_value()) detail::same(*b_hh, xg0, "b_hh", {s.L, 3 * s.H}, xg0.scalar_type());
  const int64_t L = s.L, T = s.T, N = s.N, H = s.H;
  at::Tensor y = big_empty({L, T, N, H}, xg0.options());
  at::Tensor hn = at::empty({L, N, H}, xg0.options());
  at::Tensor ws = need_ws ? big_empty({L, T, N, 4 * H}, xg0.options()) : at::empty({0}, xg0.options());
  const at::Tensor bhh = b_hh.has_value() ? *b_hh : at::zeros({L, 3 * H}, xg0.options());
  AT_DISPATCH_FLOATING_TYPES(xg0.scalar_type(), "gru_stack_forward", [&] {
    using A = scalar_t;
    const Dims d = with_path({T, N, H, H}, path, dtype_of<A>());
    const StackLayout<A> lay{T, N, H, 3};
    A *yp = y.data_ptr<A>(), *wsp = need_ws ? ws.data_ptr<A>() : nullptr;
    const A *wih = w_ih.data_ptr<A>(), *whh = w_hh.data_ptr<A>();
    const A* bp = b_ih.has_value() ? b_ih->data_ptr<A>() : nullptr;
    lay.forward(L, yp, wih, bp, [&](int64_t r0, int64_t r1, int64_t l, const StepInput<A>* in) {
      forward_rows<A, A>(r0, r1, d, xg0.data_ptr<A>(), whh + l * 3 * H * H,
                         bhh.data_ptr<A>() + l * 3 * H, h0.data_ptr<A>() + l * N * H, nullptr,
                         wsp != nullptr ? wsp + l * T * N * 4 * H : nullptr, yp + l * T * N * H,
                         hn.data_ptr<A>() + l * N * H, in);
    });
  });
  return {y, hn, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_stack_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& h0, const at::Tensor& y, const at::Tensor& ws, c10::string_view path) {
  const StackDims s = check_stack_backward(dy, dh_n, w_ih, w_hh, 3);
  const auto D = dy.scalar_type();
  detail::same(h0, dy, "h0", {s.L, s.N, s.H}, D);
  detail::same(y, dy, "y", {s.L, s.T, s.N, s.H}, D);
  detail::same(ws, dy, "ws", {s.L, s.T, s.N, 4 * s.H}, D);
  const int64_t L = s.L, T = s.T, N = s.N, H = s.H;
  at::Tensor dxg = big_empty({L, T, N, 3 * H}, dy.options());
  at::Tensor dgh = big_empty({L, T, N, 3 * H}, dy.options());
  at::Tensor dh = dh_n.clone();
  AT_DISPATCH_FLOATING_TYPES(D, "gru_stack_backward", [&] {
    using A = scalar_t;
    const Dims d = with_path({T, N, H, H}, path, dtype_of<A>());
    const StackLayout<A> lay{T, N, H, 3};
    A* dxp = dxg.data_ptr<A>();
    const A *wih = w_ih.data_ptr<A>(), *whh = w_hh.data_ptr<A>();
    lay.backward(L, dxp, wih, [&](int64_t r0, int64_t r1, int64_t l, const StepAbove<A>* up) {
      backward_rows<A, A>(r0, r1, d, dy.data_ptr<A>() + l * T * N * H, whh + l * 3 * H * H,
                          h0.data_ptr<A>() + l * N * H, y.data_ptr<A>() + l * T * N * H,
                          ws.data_ptr<A>() + l * T * N * 4 * H, nullptr, dxp + l * T * N * 3 * H,
                          dgh.data_ptr<A>() + l * T * N * 3 * H, dh.data_ptr<A>() + l * N * H, up);
    });
  });
  return {dxg, dgh, dh};
}

}  // namespace

// The Cell modules' step (cells.h).
namespace {
template <typename D, typename A>
void cell_rows(int64_t N, int64_t H, const D* x, const A* g, const A* bh, A* h, A* w) {
  for_cell_rows(N, 4 * H, [&](int64_t b) {
    by_dtype<D>(fwd_row_f32, fwd_row_bf16, fwd_row<D, A>,
                H, x + b * 3 * H, g + b * 3 * H, bh, h + b * H, w + b * 4 * H);
  });
}

template <typename D, typename A>
void cell_rows_backward(int64_t N, int64_t H, const A* w, const D* hp, const D* dy, A* dh, D* dx, A* dg) {
  for_cell_rows(N, 4 * H, [&](int64_t b) {
    A* dhb = dh + b * H;
    std::fill(dhb, dhb + H, A(0));  // no gradient from a later step
    by_dtype<D>(bwd_row_f32, bwd_row_bf16, bwd_row<D, A>,
                H, w + b * 4 * H, hp + b * H, dy + b * H, dhb, dx + b * 3 * H, dg + b * 3 * H);
  });
}
}  // namespace

void gru_cell_gates(const at::Tensor& xg, const at::Tensor& gh, const at::Tensor& bh,
                    const at::Tensor& h, const at::Tensor& ws) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "gru_cell", [&] {
    using A = at::opmath_type<scalar_t>;
    cell_rows<scalar_t, A>(h.size(0), h.size(1), xg.data_ptr<scalar_t>(), gh.data_ptr<A>(), bh.data_ptr<A>(),
                           h.data_ptr<A>(), ws.data_ptr<A>());
  });
}

void gru_cell_gates_backward(const at::Tensor& ws, const at::Tensor& h_prev, const at::Tensor& dy,
                             const at::Tensor& dh, const at::Tensor& dx, const at::Tensor& dg) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "gru_cell_backward", [&] {
    using A = at::opmath_type<scalar_t>;
    cell_rows_backward<scalar_t, A>(dh.size(0), dh.size(1), ws.data_ptr<A>(), h_prev.data_ptr<scalar_t>(),
                                    dy.data_ptr<scalar_t>(), dh.data_ptr<A>(), dx.data_ptr<scalar_t>(),
                                    dg.data_ptr<A>());
  });
}

TORCH_LIBRARY_IMPL(fastrnn_ext, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
  m.impl("gru_stack_forward", &gru_stack_forward_cpu);
  m.impl("gru_stack_backward", &gru_stack_backward_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
