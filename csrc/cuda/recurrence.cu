// CUDA recurrences.  With the path "persistent" each op first tries the
// persistent kernel of persistent.cu (one cooperative launch for all steps;
// not for projected LSTMs or float64) and falls back to the path below when it
// does not fit on chip.
//
// Per-step CUDA recurrences: each time step is one cuBLAS product against the
// recurrent weights (in the accumulation type A: fp32 for fp32/fp16/bf16
// inputs, so state and products stay fp32) plus one fused pointwise kernel, one
// thread per (batch row, hidden unit).  Everything is queued on the current
// stream with no host synchronisation (CUDA-graph capturable) and no atomics
// (bit-identical run to run).  Projected LSTMs add a product against W_hr and
// a small commit kernel per step.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../cell_math.h"
#include "../checks.h"
#include "persistent.h"

namespace fastrnn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

__device__ __forceinline__ bool is_active(const int64_t* len, int64_t b, int64_t t) {
  return len == nullptr || t < len[b];
}

template <typename T>
__device__ __forceinline__ T zero() {
  return static_cast<T>(0.0f);
}

// ------------------------------------------------------------------ LSTM
// g: h_{t-1} @ W_hh^T (N, 4H); c: state; ws: (N, 5H); hu: o * tanh(c) (the h
// state itself when not projected, then y is written too).
template <typename D, typename A>
__global__ void lstm_fwd_step(int64_t N, int64_t H, int64_t t, const int64_t* len,
                              const D* __restrict__ xg, const A* __restrict__ g,
                              A* __restrict__ c, A* __restrict__ ws, A* __restrict__ hu,
                              D* __restrict__ y) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= N * H) return;
  const int64_t b = k / H, j = k - b * H;
  const D* x = xg + b * 4 * H;
  const A* gb = g + b * 4 * H;
  A* w = ws + b * 5 * H;
  if (!is_active(len, b, t)) {
    for (int q = 0; q < 4; ++q) w[q * H + j] = zero<A>();
    w[4 * H + j] = c[k];
    if (y != nullptr) y[k] = zero<D>();
    return;
  }
  A i, f, gg, o, cn, hn;
  lstm_cell_forward<A>(static_cast<A>(x[j]) + gb[j], static_cast<A>(x[H + j]) + gb[H + j],
                       static_cast<A>(x[2 * H + j]) + gb[2 * H + j],
                       static_cast<A>(x[3 * H + j]) + gb[3 * H + j], c[k], i, f, gg, o, cn, hn);
  w[j] = i;
  w[H + j] = f;
  w[2 * H + j] = gg;
  w[3 * H + j] = o;
  w[4 * H + j] = cn;
  c[k] = cn;
  hu[k] = hn;
  if (y != nullptr) y[k] = static_cast<D>(hn);
}

// Projected LSTM: the product hp = hu @ W_hr^T becomes the state and output of
// active rows; inactive rows keep their state and output 0.
template <typename D, typename A>
__global__ void commit_rows(int64_t N, int64_t R, int64_t t, const int64_t* len,
                            const A* __restrict__ hp, A* __restrict__ h, D* __restrict__ y) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= N * R) return;
  if (is_active(len, k / R, t)) {
    h[k] = hp[k];
    y[k] = static_cast<D>(hp[k]);
  } else {
    y[k] = zero<D>();
  }
}

// dhr = dh + dy on active rows (0 elsewhere); dh is zeroed where consumed so
// that the later dh += dG @ W_hh leaves inactive rows' gradient alone.
template <typename D, typename A>
__global__ void take_dh(int64_t N, int64_t R, int64_t t, const int64_t* len, A* __restrict__ dh,
                        const D* __restrict__ dy, A* __restrict__ dhr) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= N * R) return;
  if (is_active(len, k / R, t)) {
    dhr[k] = dh[k] + static_cast<A>(dy[k]);
    dh[k] = zero<A>();
  } else {
    dhr[k] = zero<A>();
  }
}

// dhu: gradient w.r.t. o * tanh(c_t) when projected; else (nullptr) it is
// dh + dy, taken here.  c_prev rows are cp_ld apart (5H inside ws, H in c0).
// Writes dG (A, for the product) and dxg (D).
template <typename D, typename A>
__global__ void lstm_bwd_step(int64_t N, int64_t H, int64_t t, const int64_t* len,
                              const A* __restrict__ ws, const A* __restrict__ c_prev,
                              int64_t cp_ld, const A* __restrict__ dhu, A* __restrict__ dh,
                              const D* __restrict__ dy, A* __restrict__ dc, A* __restrict__ dG,
                              D* __restrict__ dxg) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= N * H) return;
  const int64_t b = k / H, j = k - b * H;
  A* dg = dG + b * 4 * H;
  D* dx = dxg + b * 4 * H;
  if (!is_active(len, b, t)) {
    for (int q = 0; q < 4; ++q) {
      dg[q * H + j] = zero<A>();
      dx[q * H + j] = zero<D>();
    }
    return;
  }
  A d_hu;
  if (dhu != nullptr) {
    d_hu = dhu[k];
  } else {
    d_hu = dh[k] + static_cast<A>(dy[k]);
    dh[k] = zero<A>();
  }
  const A* w = ws + b * 5 * H;
  A dct = dc[k], di, df, dgg, d_o;
  lstm_cell_backward<A>(w[j], w[H + j], w[2 * H + j], w[3 * H + j], w[4 * H + j], c_prev[b * cp_ld + j], d_hu,
                        dct, di, df, dgg, d_o);
  dc[k] = dct;
  dg[j] = di;
  dg[H + j] = df;
  dg[2 * H + j] = dgg;
  dg[3 * H + j] = d_o;
  dx[j] = static_cast<D>(di);
  dx[H + j] = static_cast<D>(df);
  dx[2 * H + j] = static_cast<D>(dgg);
  dx[3 * H + j] = static_cast<D>(d_o);
}

// ------------------------------------------------------------------- GRU
template <typename D, typename A>
__global__ void gru_fwd_step(int64_t N, int64_t H, int64_t t, const int64_t* len,
                             const D* __restrict__ xg, const A* __restrict__ g,
                             const A* __restrict__ bh, A* __restrict__ h, A* __restrict__ ws,
                             D* __restrict__ y) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= N * H) return;
  const int64_t b = k / H, j = k - b * H;
  A* w = ws + b * 4 * H;
  if (!is_active(len, b, t)) {
    for (int q = 0; q < 4; ++q) w[q * H + j] = zero<A>();
    y[k] = zero<D>();
    return;
  }
  const D* x = xg + b * 3 * H;
  const A* gb = g + b * 3 * H;
  const A br = bh ? bh[j] : zero<A>(), bz = bh ? bh[H + j] : zero<A>();
  const A hn = gb[2 * H + j] + (bh ? bh[2 * H + j] : zero<A>());
  A r, z, n, hnew;
  gru_cell_forward<A>(static_cast<A>(x[j]), static_cast<A>(x[H + j]), static_cast<A>(x[2 * H + j]),
                      gb[j] + br, gb[H + j] + bz, hn, h[k], r, z, n, hnew);
  w[j] = r;
  w[H + j] = z;
  w[2 * H + j] = n;
  w[3 * H + j] = hn;
  h[k] = hnew;
  y[k] = static_cast<D>(hnew);
}

// dh: in, gradient from step t+1; out, the direct part dh_t * z (the product
// with W_hh is added afterwards).
template <typename D, typename A>
__global__ void gru_bwd_step(int64_t N, int64_t H, int64_t t, const int64_t* len,
                             const A* __restrict__ ws, const D* __restrict__ h_prev,
                             const D* __restrict__ dy, A* __restrict__ dh, A* __restrict__ dG,
                             D* __restrict__ dxg, D* __restrict__ dgh) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= N * H) return;
  const int64_t b = k / H, j = k - b * H;
  A* dg = dG + b * 3 * H;
  D* dx = dxg + b * 3 * H;
  D* dgo = dgh + b * 3 * H;
  if (!is_active(len, b, t)) {
    for (int q = 0; q < 3; ++q) {
      dg[q * H + j] = zero<A>();
      dx[q * H + j] = zero<D>();
      dgo[q * H + j] = zero<D>();
    }
    return;
  }
  const A* w = ws + b * 4 * H;
  A dr, dz, dn, dhn, dhd;
  gru_cell_backward<A>(w[j], w[H + j], w[2 * H + j], w[3 * H + j], static_cast<A>(h_prev[k]),
                       dh[k] + static_cast<A>(dy[k]), dr, dz, dn, dhn, dhd);
  dg[j] = dr;
  dg[H + j] = dz;
  dg[2 * H + j] = dhn;
  dx[j] = static_cast<D>(dr);
  dx[H + j] = static_cast<D>(dz);
  dx[2 * H + j] = static_cast<D>(dn);
  dgo[j] = static_cast<D>(dr);
  dgo[H + j] = static_cast<D>(dz);
  dgo[2 * H + j] = static_cast<D>(dhn);
  dh[k] = dhd;
}

// ------------------------------------------------------------------- RNN
template <typename D, typename A>
__global__ void rnn_fwd_step(int64_t N, int64_t H, int64_t t, const int64_t* len,
                             const D* __restrict__ xg, const A* __restrict__ g, bool relu,
                             A* __restrict__ h, D* __restrict__ y) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= N * H) return;
  if (!is_active(len, k / H, t)) {
    y[k] = zero<D>();
    return;
  }
  const A v = rnn_act<A>(static_cast<A>(xg[k]) + g[k], relu);
  h[k] = v;
  y[k] = static_cast<D>(v);
}

template <typename D, typename A>
__global__ void rnn_bwd_step(int64_t N, int64_t H, int64_t t, const int64_t* len,
                             const D* __restrict__ y, const D* __restrict__ dy, bool relu,
                             A* __restrict__ dh, A* __restrict__ dG, D* __restrict__ dxg) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= N * H) return;
  if (!is_active(len, k / H, t)) {
    dG[k] = zero<A>();
    dxg[k] = zero<D>();
    return;
  }
  const A d = (dh[k] + static_cast<A>(dy[k])) * rnn_act_grad<A>(static_cast<A>(y[k]), relu);
  dh[k] = zero<A>();
  dG[k] = d;
  dxg[k] = static_cast<D>(d);
}

// ----------------------------------------------------------------- hosts
template <typename T>
T* ptr(const at::Tensor& x) {
  return x.defined() && x.numel() > 0 ? x.data_ptr<T>() : nullptr;
}

const int64_t* len_ptr(const c10::optional<at::Tensor>& lengths) {
  return lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
}

#define FR_LAUNCH(kernel, n, ...)                                                   \
  do {                                                                              \
    if ((n) > 0) {                                                                  \
      kernel<<<blocks_for(n), kThreads, 0, stream>>>(__VA_ARGS__);                  \
      C10_CUDA_KERNEL_LAUNCH_CHECK();                                               \
    }                                                                               \
  } while (0)

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cuda(
    const at::Tensor& xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const c10::optional<at::Tensor>& lengths,
    bool need_ws, c10::string_view path) {
  const Dims d = check_lstm_forward(xg, w_hh, w_hr, h0, c0, lengths);
  const c10::cuda::CUDAGuard guard(xg.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto Ad = acc_type(xg.scalar_type());
  const auto acc = xg.options().dtype(Ad);
  const int64_t T = d.T, N = d.N, H = d.H, R = d.R;
  const bool proj = w_hr.has_value();
  if (!proj && persistent_path(path)) {
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
    if (lstm_forward_persistent(xg, w_hh, h0, c0, lengths, need_ws, out)) return out;
  }
  at::Tensor y = at::empty({T, N, R}, xg.options());
  at::Tensor ws = need_ws ? at::empty({T, N, 5 * H}, acc) : at::empty({0}, acc);
  at::Tensor scratch = need_ws ? at::Tensor() : at::empty({N, 5 * H}, acc);
  const at::Tensor Wt = w_hh.to(Ad).t();  // (R, 4H) view for h @ W_hh^T
  const at::Tensor Wrt = proj ? w_hr->to(Ad).t() : at::Tensor();
  at::Tensor h = h0.to(Ad, false, /*copy=*/true);
  at::Tensor c = c0.to(Ad, false, /*copy=*/true);
  at::Tensor g = at::empty({N, 4 * H}, acc);
  at::Tensor hu = proj ? at::empty({N, H}, acc) : h;
  at::Tensor hp = proj ? at::empty({N, R}, acc) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "lstm_forward", [&] {
    using D = scalar_t;
    using A = at::opmath_type<scalar_t>;
    for (int64_t t = 0; t < T; ++t) {
      at::mm_out(g, h, Wt);
      A* wst = need_ws ? ws.data_ptr<A>() + t * N * 5 * H : scratch.data_ptr<A>();
      D* yt = y.data_ptr<D>() + t * N * R;
      FR_LAUNCH((lstm_fwd_step<D, A>), N * H, N, H, t, len_ptr(lengths),
                xg.data_ptr<D>() + t * N * 4 * H, g.data_ptr<A>(), c.data_ptr<A>(), wst,
                hu.data_ptr<A>(), proj ? nullptr : yt);
      if (proj) {
        at::mm_out(hp, hu, Wrt);
        FR_LAUNCH((commit_rows<D, A>), N * R, N, R, t, len_ptr(lengths), hp.data_ptr<A>(),
                  h.data_ptr<A>(), yt);
      }
    }
  });
  return {y, h.to(xg.scalar_type()), c.to(xg.scalar_type()), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cuda(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& w_hr, const at::Tensor& c0, const at::Tensor& ws,
    const c10::optional<at::Tensor>& lengths, c10::string_view path) {
  const Dims d = check_lstm_backward(dy, dh_n, dc_n, w_hh, w_hr, c0, ws, lengths);
  const c10::cuda::CUDAGuard guard(dy.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto Ad = acc_type(dy.scalar_type());
  const auto acc = dy.options().dtype(Ad);
  const int64_t T = d.T, N = d.N, H = d.H, R = d.R;
  const bool proj = w_hr.has_value();
  if (!proj && persistent_path(path)) {
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
    if (lstm_backward_persistent(dy, dh_n, dc_n, w_hh, c0, ws, lengths, out)) return out;
  }
  at::Tensor dxg = at::empty({T, N, 4 * H}, dy.options());
  at::Tensor dhr = proj ? at::empty({T, N, R}, acc) : at::empty({0}, acc);
  const at::Tensor W = w_hh.to(Ad).contiguous();
  const at::Tensor Wr = proj ? w_hr->to(Ad).contiguous() : at::Tensor();
  const at::Tensor c0a = c0.to(Ad).contiguous();
  at::Tensor dh = dh_n.to(Ad, false, /*copy=*/true);
  at::Tensor dc = dc_n.to(Ad, false, /*copy=*/true);
  at::Tensor dG = at::empty({N, 4 * H}, acc);
  at::Tensor dhu = proj ? at::empty({N, H}, acc) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "lstm_backward", [&] {
    using D = scalar_t;
    using A = at::opmath_type<scalar_t>;
    for (int64_t t = T - 1; t >= 0; --t) {
      const D* dyt = dy.data_ptr<D>() + t * N * R;
      if (proj) {
        at::Tensor dhr_t = dhr.select(0, t);
        FR_LAUNCH((take_dh<D, A>), N * R, N, R, t, len_ptr(lengths), dh.data_ptr<A>(), dyt,
                  dhr_t.data_ptr<A>());
        at::mm_out(dhu, dhr_t, Wr);
      }
      const A* c_prev = t > 0 ? ws.data_ptr<A>() + (t - 1) * N * 5 * H + 4 * H : c0a.data_ptr<A>();
      FR_LAUNCH((lstm_bwd_step<D, A>), N * H, N, H, t, len_ptr(lengths),
                ws.data_ptr<A>() + t * N * 5 * H, c_prev, t > 0 ? 5 * H : H,
                proj ? dhu.data_ptr<A>() : nullptr,
                dh.data_ptr<A>(), dyt, dc.data_ptr<A>(), dG.data_ptr<A>(),
                dxg.data_ptr<D>() + t * N * 4 * H);
      dh.addmm_(dG, W);
    }
  });
  return {dxg, dh.to(dy.scalar_type()), dc.to(dy.scalar_type()), dhr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cuda(
    const at::Tensor& xg, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const c10::optional<at::Tensor>& lengths, bool need_ws, c10::string_view path) {
  const Dims d = check_gru_forward(xg, w_hh, b_hh, h0, lengths);
  const c10::cuda::CUDAGuard guard(xg.device());
  if (persistent_path(path)) {
    std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
    if (gru_forward_persistent(xg, w_hh, b_hh, h0, lengths, need_ws, out)) return out;
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto Ad = acc_type(xg.scalar_type());
  const auto acc = xg.options().dtype(Ad);
  const int64_t T = d.T, N = d.N, H = d.H;
  at::Tensor y = at::empty({T, N, H}, xg.options());
  at::Tensor ws = need_ws ? at::empty({T, N, 4 * H}, acc) : at::empty({0}, acc);
  at::Tensor scratch = need_ws ? at::Tensor() : at::empty({N, 4 * H}, acc);
  const at::Tensor Wt = w_hh.to(Ad).t();
  const at::Tensor bias = b_hh.has_value() ? b_hh->to(Ad).contiguous() : at::Tensor();
  at::Tensor h = h0.to(Ad, false, /*copy=*/true);
  at::Tensor g = at::empty({N, 3 * H}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "gru_forward", [&] {
    using D = scalar_t;
    using A = at::opmath_type<scalar_t>;
    for (int64_t t = 0; t < T; ++t) {
      at::mm_out(g, h, Wt);
      A* wst = need_ws ? ws.data_ptr<A>() + t * N * 4 * H : scratch.data_ptr<A>();
      FR_LAUNCH((gru_fwd_step<D, A>), N * H, N, H, t, len_ptr(lengths),
                xg.data_ptr<D>() + t * N * 3 * H, g.data_ptr<A>(), ptr<A>(bias), h.data_ptr<A>(),
                wst, y.data_ptr<D>() + t * N * H);
    }
  });
  return {y, h.to(xg.scalar_type()), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_backward_cuda(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& y, const at::Tensor& ws, const c10::optional<at::Tensor>& lengths, c10::string_view path) {
  const Dims d = check_gru_backward(dy, dh_n, w_hh, h0, y, ws, lengths);
  const c10::cuda::CUDAGuard guard(dy.device());
  if (persistent_path(path)) {
    std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
    if (gru_backward_persistent(dy, dh_n, w_hh, h0, y, ws, lengths, out)) return out;
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto Ad = acc_type(dy.scalar_type());
  const int64_t T = d.T, N = d.N, H = d.H;
  at::Tensor dxg = at::empty({T, N, 3 * H}, dy.options());
  at::Tensor dgh = at::empty({T, N, 3 * H}, dy.options());
  const at::Tensor W = w_hh.to(Ad).contiguous();
  at::Tensor dh = dh_n.to(Ad, false, /*copy=*/true);
  at::Tensor dG = at::empty({N, 3 * H}, dh.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "gru_backward", [&] {
    using D = scalar_t;
    using A = at::opmath_type<scalar_t>;
    for (int64_t t = T - 1; t >= 0; --t) {
      const D* hp = t > 0 ? y.data_ptr<D>() + (t - 1) * N * H : h0.data_ptr<D>();
      FR_LAUNCH((gru_bwd_step<D, A>), N * H, N, H, t, len_ptr(lengths),
                ws.data_ptr<A>() + t * N * 4 * H, hp, dy.data_ptr<D>() + t * N * H,
                dh.data_ptr<A>(), dG.data_ptr<A>(), dxg.data_ptr<D>() + t * N * 3 * H,
                dgh.data_ptr<D>() + t * N * 3 * H);
      dh.addmm_(dG, W);
    }
  });
  return {dxg, dgh, dh.to(dy.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> rnn_forward_cuda(const at::Tensor& xg, const at::Tensor& w_hh,
                                                    const at::Tensor& h0,
                                                    const c10::optional<at::Tensor>& lengths,
                                                    bool relu, bool need_ws, c10::string_view path) {
  const Dims d = check_rnn_forward(xg, w_hh, h0, lengths);
  const c10::cuda::CUDAGuard guard(xg.device());
  if (persistent_path(path)) {
    std::tuple<at::Tensor, at::Tensor> out;
    if (rnn_forward_persistent(xg, w_hh, h0, lengths, relu, out)) return out;
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto Ad = acc_type(xg.scalar_type());
  const int64_t T = d.T, N = d.N, H = d.H;
  at::Tensor y = at::empty({T, N, H}, xg.options());
  const at::Tensor Wt = w_hh.to(Ad).t();
  at::Tensor h = h0.to(Ad, false, /*copy=*/true);
  at::Tensor g = at::empty({N, H}, h.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xg.scalar_type(), "rnn_forward", [&] {
    using D = scalar_t;
    using A = at::opmath_type<scalar_t>;
    for (int64_t t = 0; t < T; ++t) {
      at::mm_out(g, h, Wt);
      FR_LAUNCH((rnn_fwd_step<D, A>), N * H, N, H, t, len_ptr(lengths),
                xg.data_ptr<D>() + t * N * H, g.data_ptr<A>(), relu, h.data_ptr<A>(),
                y.data_ptr<D>() + t * N * H);
    }
  });
  return {y, h.to(xg.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> rnn_backward_cuda(const at::Tensor& dy, const at::Tensor& dh_n,
                                                     const at::Tensor& w_hh, const at::Tensor& y,
                                                     const c10::optional<at::Tensor>& lengths,
                                                     bool relu, c10::string_view path) {
  const Dims d = check_rnn_backward(dy, dh_n, w_hh, y, lengths);
  const c10::cuda::CUDAGuard guard(dy.device());
  if (persistent_path(path)) {
    std::tuple<at::Tensor, at::Tensor> out;
    if (rnn_backward_persistent(dy, dh_n, w_hh, y, lengths, relu, out)) return out;
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto Ad = acc_type(dy.scalar_type());
  const int64_t T = d.T, N = d.N, H = d.H;
  at::Tensor dxg = at::empty({T, N, H}, dy.options());
  const at::Tensor W = w_hh.to(Ad).contiguous();
  at::Tensor dh = dh_n.to(Ad, false, /*copy=*/true);
  at::Tensor dG = at::empty({N, H}, dh.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "rnn_backward", [&] {
    using D = scalar_t;
    using A = at::opmath_type<scalar_t>;
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t o = t * N * H;
      FR_LAUNCH((rnn_bwd_step<D, A>), N * H, N, H, t, len_ptr(lengths), y.data_ptr<D>() + o,
                dy.data_ptr<D>() + o, relu, dh.data_ptr<A>(), dG.data_ptr<A>(),
                dxg.data_ptr<D>() + o);
      dh.addmm_(dG, W);
    }
  });
  return {dxg, dh.to(dy.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn_ext, CUDA, m) {
  m.impl("lstm_forward", &lstm_forward_cuda);
  m.impl("lstm_backward", &lstm_backward_cuda);
  m.impl("gru_forward", &gru_forward_cuda);
  m.impl("gru_backward", &gru_backward_cuda);
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("rnn_backward", &rnn_backward_cuda);
}

}  // namespace cuda
}  // namespace fastrnn
