// LSTM recurrence on the CPU: per step one matrix product against W_hh (plus
// one against W_hr when projected) and one fused pass over the gates; each
// thread runs the whole sequence for its block of batch rows (see
// for_row_blocks).  State is kept in the accumulation type A.
#include "cells.h"
#include "common.h"

namespace fastrnn {
namespace cpu {
namespace {

// One batch row of the forward cell for n units.  Gate q of unit j is at
// xg[q*xs + j] (input side), gh[q*gs + j] (h_{t-1} @ W_hh^T) and ws[q*wss + j]
// ([i, f, g, o, c_t] out); c: state (in/out); h: o * tanh(c_t) out.  Two
// passes rather than one loop per unit: a unit's chain (activation -> c_t ->
// tanh(c_t)) is ~130 cycles of latency and the one-loop body was too large for
// out-of-order execution to overlap iterations (measured 6.4 ns/unit as one
// loop, 1.9 ns/unit as two, AVX-512).
template <typename D, typename A>
FR_HD void fwd_row(int64_t n, const D* __restrict xg, int64_t xs, const A* __restrict gh,
                   int64_t gs, A* __restrict c, A* __restrict ws, int64_t wss, A* __restrict h) {
  for (int64_t q = 0; q < 4; ++q) {
    const D* x = xg + q * xs;
    const A* g = gh + q * gs;
    A* w = ws + q * wss;
    if (q == 2)
      for (int64_t j = 0; j < n; ++j) w[j] = fr_tanh(static_cast<A>(x[j]) + g[j]);
    else
      for (int64_t j = 0; j < n; ++j) w[j] = fr_sigmoid(static_cast<A>(x[j]) + g[j]);
  }
  for (int64_t j = 0; j < n; ++j) {
    const A cn = lstm_cell_state<A>(ws[j], ws[wss + j], ws[2 * wss + j], c[j]);
    ws[4 * wss + j] = cn;
    c[j] = cn;
    h[j] = lstm_cell_output<A>(ws[3 * wss + j], cn);
  }
}

FR_CPU_CLONES void fwd_row_f32(int64_t n, const float* xg, int64_t xs, const float* gh,
                               int64_t gs, float* c, float* ws, int64_t wss, float* h) {
  fwd_row<float, float>(n, xg, xs, gh, gs, c, ws, wss, h);
}

// One batch row of the backward cell for n units.  ws: [i, f, g, o, c_t] with
// gate stride wss; dhu: gradient w.r.t. o * tanh(c_t); dc: in/out; dg: the
// pre-activation gradients, gate stride dgs.
template <typename A>
FR_HD void bwd_row(int64_t n, const A* __restrict ws, int64_t wss, const A* __restrict c_prev,
                   const A* __restrict dhu, A* __restrict dc, A* __restrict dg, int64_t dgs) {
  for (int64_t j = 0; j < n; ++j) {
    A dct = dc[j], di, df, dgg, dout;
    lstm_cell_backward<A>(ws[j], ws[wss + j], ws[2 * wss + j], ws[3 * wss + j], ws[4 * wss + j],
                          c_prev[j], dhu[j], dct, di, df, dgg, dout);
    dc[j] = dct;
    dg[j] = di;
    dg[dgs + j] = df;
    dg[2 * dgs + j] = dgg;
    dg[3 * dgs + j] = dout;
  }
}

FR_CPU_CLONES void bwd_row_f32(int64_t n, const float* ws, int64_t wss, const float* c_prev,
                               const float* dhu, float* dc, float* dg, int64_t dgs) {
  bwd_row<float>(n, ws, wss, c_prev, dhu, dc, dg, dgs);
}

FR_CPU_CLONES void fwd_row_bf16(int64_t n, const c10::BFloat16* xg, int64_t xs, const float* gh,
                                int64_t gs, float* c, float* ws, int64_t wss, float* h) {
  fwd_row<c10::BFloat16, float>(n, xg, xs, gh, gs, c, ws, wss, h);
}

// The backward pass (float32 state whatever the data) through its version compiled
// three ways for float32.
template <typename A>
inline void gate_bwd(int64_t n, const A* ws, int64_t wss, const A* c_prev, const A* dhu, A* dc, A* dg,
                     int64_t dgs) {
  if constexpr (std::is_same<A, float>::value)
    bwd_row_f32(n, ws, wss, c_prev, dhu, dc, dg, dgs);
  else
    bwd_row<A>(n, ws, wss, c_prev, dhu, dc, dg, dgs);
}

// Forward over batch rows [r0, r1), the whole sequence: per step one product
// h_{t-1} @ W_hh^T (W_hh packed once), the gate passes, and when projected
// one product hu @ W_hr^T.  Writes rows r0..r1 of y, ws, h_n and c_n.  With
// `in` (a stacked layer, D == A) the input side is in->x[t] @ W_ih^T + bias,
// formed per step, and xg is not read.
template <typename D, typename A>
void forward_rows(int64_t r0, int64_t r1, const Dims& d, const D* xg, const A* w, const A* wr,
                  const A* h0, const A* c0, const int64_t* len, A* ws_all, D* y, A* h_n,
                  A* c_n, const StepInput<A>* in = nullptr) {
  const int64_t T = d.T, N = d.N, H = d.H, R = d.R, M = r1 - r0;
  const bool proj = wr != nullptr;
  const auto acc = at::TensorOptions().dtype(dtype_of<A>());
  const StepMatrix<A> Wmul(d.gemm, w, R, true, M, 4 * H, R);
  std::unique_ptr<StepMatrix<A>> Imul;
  at::Tensor in_bias;
  if (in != nullptr) {
    Imul = std::make_unique<StepMatrix<A>>(d.gemm, in->w_ih, in->I, true, M, 4 * H, in->I);
    in_bias = in->bias != nullptr ? at::Tensor() : at::zeros({4 * H}, acc);
  }
  A* h = h_n + r0 * R;  // the state lives in the output rows
  A* c = c_n + r0 * H;
  std::copy(h0 + r0 * R, h0 + r1 * R, h);
  std::copy(c0 + r0 * H, c0 + r1 * H, c);
  at::Tensor buf = at::empty({M * (4 * H + (proj ? H + R : 0) + (ws_all ? 0 : 5 * H))}, acc);
  A* g = buf.data_ptr<A>();                              // (M, 4H)
  A* hu = proj ? g + M * 4 * H : h;                      // (M, H) o * tanh(c)
  A* hp = proj ? hu + M * H : nullptr;                   // (M, R) hu @ W_hr^T
  A* scratch = g + M * (4 * H + (proj ? H + R : 0));     // (M, 5H) ws when not kept
  TORCH_CHECK(in == nullptr || (std::is_same<D, A>::value),
              "fastrnn: a fused stack runs in float32 or float64 only");
  const StepRows rows(len, r0, r1);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t mt = rows.at(t);  // rows still running
    const D* x = nullptr;
    int64_t xrow = 4 * H;  // x's row stride: 0 when every row adds the same bias
    if constexpr (std::is_same<D, A>::value) {
      if (in != nullptr) {
        Imul->mul(in->x + (t * N + r0) * in->I, in->I, A(0), g, 4 * H);
        Wmul.mul(h, R, A(1), g, 4 * H);
        x = in->bias != nullptr ? in->bias : in_bias.data_ptr<A>();
        xrow = 0;
      }
    }
    if (in == nullptr) {
      Wmul.mul(h, R, A(0), g, 4 * H, mt);
      x = xg + (t * N + r0) * 4 * H;
    }
    A* ws = ws_all ? ws_all + (t * N + r0) * 5 * H : scratch;
    D* yt = y + (t * N + r0) * R;
    for (int64_t b = 0; b < M; ++b) {
      A* wsb = ws + b * 5 * H;
      if (!active(len, r0 + b, t)) {
        zero_row(yt + b * R, R);
        zero_row(wsb, 4 * H);
        std::copy(c + b * H, c + (b + 1) * H, wsb + 4 * H);  // the carried c_t
        continue;
      }
      by_dtype<D>(fwd_row_f32, fwd_row_bf16, fwd_row<D, A>,
                  H, x + b * xrow, H, g + b * 4 * H, H, c + b * H, wsb, H, hu + b * H);
      if (!proj) convert_row(yt + b * R, hu + b * H, H);
    }
    if (proj) {
      gemm<A>(false, true, mt, R, H, hu, H, wr, H, A(0), hp, R);
      for (int64_t b = 0; b < M; ++b) {
        if (!active(len, r0 + b, t)) continue;
        std::copy(hp + b * R, hp + (b + 1) * R, h + b * R);
        convert_row(yt + b * R, hp + b * R, R);
      }
    }
  }
}

// Backward over batch rows [r0, r1): per step the gate pass, then
// dh += dG_t @ W_hh (W_hh packed once; beta = 1 because dh is zeroed where it
// was consumed, which leaves inactive rows' carried gradient alone).
// With `up` (a stacked layer below the top, D == A), dh also receives
// up->dg[t] @ W_ih of the layer above at the start of step t.
template <typename D, typename A>
void backward_rows(int64_t r0, int64_t r1, const Dims& d, const D* dy, const A* w, const A* wr,
                   const A* c0, const A* ws, const int64_t* len, D* dxg, A* dhr_all, A* dh_io,
                   A* dc_io, const StepAbove<A>* up = nullptr) {
  const int64_t T = d.T, N = d.N, H = d.H, R = d.R, M = r1 - r0;
  constexpr bool same = std::is_same<D, A>::value;
  const bool proj = wr != nullptr;
  const StepMatrix<A> Wmul(d.gemm, w, R, false, M, R, 4 * H);
  std::unique_ptr<StepMatrix<A>> Umul;
  if (up != nullptr) Umul = std::make_unique<StepMatrix<A>>(d.gemm, up->w_ih, R, false, M, R, up->GH);
  A* dh = dh_io + r0 * R;
  A* dc = dc_io + r0 * H;
  at::Tensor buf = at::empty({M * (H + (same ? 0 : 4 * H))}, at::TensorOptions().dtype(dtype_of<A>()));
  A* dhu = buf.data_ptr<A>();  // (M, H) gradient w.r.t. o * tanh(c_t)
  const StepRows rows(len, r0, r1);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t mt = rows.at(t);  // rows running at t: the others' dG_t is zero
    const D* dyt = dy + (t * N + r0) * R;
    const A* wst = ws + (t * N + r0) * 5 * H;
    D* dxt = dxg + (t * N + r0) * 4 * H;
    A* dg = same ? reinterpret_cast<A*>(dxt) : dhu + M * H;
    if (up != nullptr) Umul->mul(up->dg + (t * N + r0) * up->GH, up->GH, A(1), dh, R);
    if (proj) {
      A* dhr = dhr_all + (t * N + r0) * R;
      for (int64_t b = 0; b < M; ++b) {
        if (!active(len, r0 + b, t)) {
          zero_row(dhr + b * R, R);
          continue;
        }
        for (int64_t j = 0; j < R; ++j) {
          dhr[b * R + j] = dh[b * R + j] + static_cast<A>(dyt[b * R + j]);
          dh[b * R + j] = A(0);
        }
      }
      gemm<A>(false, false, mt, H, R, dhr, R, wr, H, A(0), dhu, H);
    }
    for (int64_t b = 0; b < M; ++b) {
      if (!active(len, r0 + b, t)) {
        zero_row(dg + b * 4 * H, 4 * H);
        if (!same) zero_row(dxt + b * 4 * H, 4 * H);
        continue;
      }
      if (!proj) {
        for (int64_t j = 0; j < H; ++j) {
          dhu[b * H + j] = dh[b * H + j] + static_cast<A>(dyt[b * H + j]);
          dh[b * H + j] = A(0);
        }
      }
      const A* cp = t > 0 ? wst - N * 5 * H + b * 5 * H + 4 * H : c0 + (r0 + b) * H;
      gate_bwd<A>(H, wst + b * 5 * H, H, cp, dhu + b * H, dc + b * H, dg + b * 4 * H, H);
      if (!same) convert_row(dxt + b * 4 * H, dg + b * 4 * H, 4 * H);
    }
    Wmul.mul(dg, 4 * H, A(1), dh, R, mt);
  }
}

template <typename D, typename A>
void forward(const Dims& d, const at::Tensor& xg, const at::Tensor& w_hh,
             const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
             const int64_t* len, bool need_ws, at::Tensor& y, at::Tensor& ws, at::Tensor& h_n,
             at::Tensor& c_n) {
  const at::Tensor W = as_acc(w_hh, dtype_of<A>());
  const at::Tensor Wr = w_hr.has_value() ? as_acc(*w_hr, dtype_of<A>()) : at::Tensor();
  const at::Tensor h0a = as_acc(h0, dtype_of<A>()), c0a = as_acc(c0, dtype_of<A>());
  h_n = at::empty({d.N, d.R}, h0a.options());
  c_n = at::empty({d.N, d.H}, c0a.options());
  for_row_blocks(d.N, [&](int64_t r0, int64_t r1) {
    forward_rows<D, A>(r0, r1, d, xg.data_ptr<D>(), W.data_ptr<A>(),
                       Wr.defined() ? Wr.data_ptr<A>() : nullptr, h0a.data_ptr<A>(),
                       c0a.data_ptr<A>(), len, need_ws ? ws.data_ptr<A>() : nullptr,
                       y.data_ptr<D>(), h_n.data_ptr<A>(), c_n.data_ptr<A>());
  }, len, d.T, 4 * d.H * d.R);
}

template <typename D, typename A>
void backward(const Dims& d, const at::Tensor& dy, const at::Tensor& dh_n,
              const at::Tensor& dc_n, const at::Tensor& w_hh,
              const c10::optional<at::Tensor>& w_hr, const at::Tensor& c0, const at::Tensor& ws,
              const int64_t* len, at::Tensor& dxg, at::Tensor& dh, at::Tensor& dc,
              at::Tensor& dhr) {
  const at::Tensor W = as_acc(w_hh, dtype_of<A>());
  const at::Tensor Wr = w_hr.has_value() ? as_acc(*w_hr, dtype_of<A>()) : at::Tensor();
  const at::Tensor c0a = as_acc(c0, dtype_of<A>());
  dh = dh_n.to(dtype_of<A>(), false, /*copy=*/true);
  dc = dc_n.to(dtype_of<A>(), false, /*copy=*/true);
  for_row_blocks(d.N, [&](int64_t r0, int64_t r1) {
    backward_rows<D, A>(r0, r1, d, dy.data_ptr<D>(), W.data_ptr<A>(),
                        Wr.defined() ? Wr.data_ptr<A>() : nullptr, c0a.data_ptr<A>(),
                        ws.data_ptr<A>(), len, dxg.data_ptr<D>(),
                        Wr.defined() ? dhr.data_ptr<A>() : nullptr, dh.data_ptr<A>(),
                        dc.data_ptr<A>());
  }, len, d.T, 4 * d.H * d.R);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const c10::optional<at::Tensor>& lengths,
    bool need_ws, c10::string_view path) {
  const Dims d = with_path(check_lstm_forward(xg, w_hh, w_hr, h0, c0, lengths), path, xg.scalar_type());
  const auto A = acc_type(xg.scalar_type());
  at::Tensor y = big_empty({d.T, d.N, d.R}, xg.options());
  at::Tensor ws = need_ws ? big_empty({d.T, d.N, 5 * d.H}, xg.options().dtype(A))
                          : at::empty({0}, xg.options().dtype(A));
  at::Tensor h, c;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "lstm_forward", [&] {
    forward<scalar_t, at::opmath_type<scalar_t>>(d, xg, w_hh, w_hr, h0, c0, lengths_ptr(lengths),
                                                 need_ws, y, ws, h, c);
  });
  return {y, h.to(xg.scalar_type()), c.to(xg.scalar_type()), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& w_hr, const at::Tensor& c0, const at::Tensor& ws,
    const c10::optional<at::Tensor>& lengths, c10::string_view path) {
  const Dims d = with_path(check_lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths), path, dy.scalar_type());
  const auto A = acc_type(dy.scalar_type());
  at::Tensor dxg = big_empty({d.T, d.N, 4 * d.H}, dy.options());
  at::Tensor dhr = w_hr.has_value() ? big_empty({d.T, d.N, d.R}, dy.options().dtype(A))
                                    : at::empty({0}, dy.options().dtype(A));
  at::Tensor dh, dc;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "lstm_backward", [&] {
    backward<scalar_t, at::opmath_type<scalar_t>>(d, dy, dh_n, dc_n, w_hh, w_hr, c0, ws,
                                                  lengths_ptr(lengths), dxg, dh, dc, dhr);
  });
  return {dxg, dh.to(dy.scalar_type()), dc.to(dy.scalar_type()), dhr};
}

// Fused stacks (see StepInput in common.h): float32 and float64; the Python
// backend composes the per-layer ops for the half types.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_stack_forward_cpu(
    const at::Tensor& xg0, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b,
    const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0, bool need_ws, c10::string_view path) {
  const StackDims s = check_stack_forward(xg0, w_ih, b, w_hh, h0, 4);
  detail::same(c0, xg0, "c0", {s.L, s.N, s.H}, xg0.scalar_type());
  const int64_t L = s.L, T = s.T, N = s.N, H = s.H;
  at::Tensor y = big_empty({L, T, N, H}, xg0.options());
  at::Tensor hn = at::empty({L, N, H}, xg0.options()), cn = at::empty({L, N, H}, xg0.options());
  at::Tensor ws = need_ws ? big_empty({L, T, N, 5 * H}, xg0.options()) : at::empty({0}, xg0.options());
  AT_DISPATCH_FLOATING_TYPES(xg0.scalar_type(), "lstm_stack_forward", [&] {
    using A = scalar_t;
    const Dims d = with_path({T, N, H, H}, path, dtype_of<A>());
    const StackLayout<A> lay{T, N, H, 4};
    A *yp = y.data_ptr<A>(), *wsp = need_ws ? ws.data_ptr<A>() : nullptr;
    const A *wih = w_ih.data_ptr<A>(), *whh = w_hh.data_ptr<A>();
    const A* bp = b.has_value() ? b->data_ptr<A>() : nullptr;
    lay.forward(L, yp, wih, bp, [&](int64_t r0, int64_t r1, int64_t l, const StepInput<A>* in) {
      forward_rows<A, A>(r0, r1, d, xg0.data_ptr<A>(), whh + l * 4 * H * H, nullptr,
                         h0.data_ptr<A>() + l * N * H, c0.data_ptr<A>() + l * N * H, nullptr,
                         wsp != nullptr ? wsp + l * T * N * 5 * H : nullptr, yp + l * T * N * H,
                         hn.data_ptr<A>() + l * N * H, cn.data_ptr<A>() + l * N * H, in);
    });
  });
  return {y, hn, cn, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_stack_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& c0, const at::Tensor& ws, c10::string_view path) {
  const StackDims s = check_stack_backward(dy, dh_n, w_ih, w_hh, 4);
  const auto D = dy.scalar_type();
  detail::same(dc_n, dy, "dc_n", {s.L, s.N, s.H}, D);
  detail::same(c0, dy, "c0", {s.L, s.N, s.H}, D);
  detail::same(ws, dy, "ws", {s.L, s.T, s.N, 5 * s.H}, D);
  const int64_t L = s.L, T = s.T, N = s.N, H = s.H;
  at::Tensor dxg = big_empty({L, T, N, 4 * H}, dy.options());
  at::Tensor dh = dh_n.clone(), dc = dc_n.clone();
  AT_DISPATCH_FLOATING_TYPES(D, "lstm_stack_backward", [&] {
    using A = scalar_t;
    const Dims d = with_path({T, N, H, H}, path, dtype_of<A>());
    const StackLayout<A> lay{T, N, H, 4};
    A* dxp = dxg.data_ptr<A>();
    const A *wih = w_ih.data_ptr<A>(), *whh = w_hh.data_ptr<A>();
    lay.backward(L, dxp, wih, [&](int64_t r0, int64_t r1, int64_t l, const StepAbove<A>* up) {
      backward_rows<A, A>(r0, r1, d, dy.data_ptr<A>() + l * T * N * H, whh + l * 4 * H * H,
                          nullptr, c0.data_ptr<A>() + l * N * H, ws.data_ptr<A>() + l * T * N * 5 * H,
                          nullptr, dxp + l * T * N * 4 * H, nullptr, dh.data_ptr<A>() + l * N * H,
                          dc.data_ptr<A>() + l * N * H, up);
    });
  });
  return {dxg, dh, dc};
}

}  // namespace

// The Cell modules' step (cells.h).
namespace {
// g: the rows of h_{t-1} @ W_hh^T, row stride gr (0: one row of zeros for all,
// when x already holds both sides)
template <typename D, typename A>
void cell_rows(int64_t N, int64_t H, const D* x, const A* g, int64_t gr, A* c, A* w, A* h) {
  for_cell_rows(N, 5 * H, [&](int64_t b) {
    by_dtype<D>(fwd_row_f32, fwd_row_bf16, fwd_row<D, A>,
                H, x + b * 4 * H, H, g + b * gr, H, c + b * H, w + b * 5 * H, H, h + b * H);
  });
}

template <typename A>
void cell_rows_backward(int64_t N, int64_t H, const A* w, const A* cp, const A* du, A* dc, A* dg) {
  for_cell_rows(N, 5 * H, [&](int64_t b) {
    gate_bwd<A>(H, w + b * 5 * H, H, cp + b * H, du + b * H, dc + b * H, dg + b * 4 * H, H);
  });
}
}  // namespace

void lstm_cell_gates(const at::Tensor& xg, const at::Tensor& gh, const at::Tensor& c,
                     const at::Tensor& ws, const at::Tensor& h) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "lstm_cell", [&] {
    using A = at::opmath_type<scalar_t>;
    const int64_t H = c.size(1);
    std::vector<A> zeros(gh.defined() ? 0 : 4 * H, A(0));
    cell_rows<scalar_t, A>(c.size(0), H, xg.data_ptr<scalar_t>(), gh.defined() ? gh.data_ptr<A>() : zeros.data(),
                           gh.defined() ? 4 * H : 0, c.data_ptr<A>(), ws.data_ptr<A>(), h.data_ptr<A>());
  });
}

void lstm_cell_gates_backward(const at::Tensor& ws, const at::Tensor& c_prev,
                              const at::Tensor& dhu, const at::Tensor& dc, const at::Tensor& dg) {
  AT_DISPATCH_FLOATING_TYPES(ws.scalar_type(), "lstm_cell_backward", [&] {
    cell_rows_backward<scalar_t>(dc.size(0), dc.size(1), ws.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(),
                                 dhu.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), dg.data_ptr<scalar_t>());
  });
}

TORCH_LIBRARY_IMPL(fastrnn_ext, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
  m.impl("lstm_stack_forward", &lstm_stack_forward_cpu);
  m.impl("lstm_stack_backward", &lstm_stack_backward_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
