// Argument checks of the six recurrence ops, written once for every device.
//
// Each check_* function validates the shapes, dtypes and devices of one op
// against the contract in fastrnn/backends/__init__.py and returns the sizes
// the kernels need.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace fastrnn {

// CPU: how the per-step products run (the op's path argument, chosen in
// Python: fastrnn/settings.py): MKL/BLAS, fastrnn's float32 kernel (AVX-512,
// AVX2 + FMA or aarch64 NEON), or fastrnn's AVX512-BF16 kernel (bf16 operands, float32 sums; bf16
// storage only); kDirect: a single step's plain GEMM, nothing packed (cpu/common.h,
// with_path).
enum class CpuGemm : int { kBlas, kOwn, kOwnAvx2, kOwnNeon, kBf16Dot, kDirect };

struct Dims {
  int64_t T, N, H, R;
  CpuGemm gemm = CpuGemm::kBlas;
};

inline at::ScalarType acc_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

namespace detail {

inline void same(const at::Tensor& a, const at::Tensor& ref, const char* name,
                 at::IntArrayRef shape, at::ScalarType dtype) {
  TORCH_CHECK(a.sizes() == shape, "fastrnn: ", name, " must have shape ", shape,
              ", got ", a.sizes());
  TORCH_CHECK(a.scalar_type() == dtype, "fastrnn: ", name, " must be ", dtype,
              ", got ", a.scalar_type());
  TORCH_CHECK(a.device() == ref.device(), "fastrnn: ", name, " is on ", a.device(),
              ", expected ", ref.device());
  TORCH_CHECK(a.is_contiguous(), "fastrnn: ", name, " must be contiguous");
}

inline void check_lengths(const c10::optional<at::Tensor>& lengths, const at::Tensor& ref,
                          int64_t N) {
  if (lengths.has_value()) same(*lengths, ref, "lengths", {N}, at::kLong);
}

inline void check_first(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 3, "fastrnn: ", name, " must be 3-D (T, N, *), got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), "fastrnn: ", name, " must be contiguous");
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
              "fastrnn: unsupported dtype ", t);
}

}  // namespace detail

inline Dims check_lstm_forward(const at::Tensor& xg, const at::Tensor& w_hh,
                               const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                               const at::Tensor& c0, const c10::optional<at::Tensor>& lengths) {
  detail::check_first(xg, "xg");
  const auto D = xg.scalar_type();
  TORCH_CHECK(xg.size(2) % 4 == 0, "fastrnn: lstm xg last dim must be 4H, got ", xg.size(2));
  Dims d{xg.size(0), xg.size(1), xg.size(2) / 4, h0.dim() == 2 ? h0.size(1) : -1};
  if (!w_hr.has_value()) TORCH_CHECK(d.R == d.H, "fastrnn: h0 must be (N, H) without w_hr");
  detail::same(w_hh, xg, "w_hh", {4 * d.H, d.R}, D);
  if (w_hr.has_value()) detail::same(*w_hr, xg, "w_hr", {d.R, d.H}, D);
  detail::same(h0, xg, "h0", {d.N, d.R}, D);
  detail::same(c0, xg, "c0", {d.N, d.H}, D);
  detail::check_lengths(lengths, xg, d.N);
  return d;
}

inline Dims check_lstm_backward(const at::Tensor& dy, const at::Tensor& dh_n,
                                const at::Tensor& dc_n, const at::Tensor& w_hh,
                                const c10::optional<at::Tensor>& w_hr, const at::Tensor& c0,
                                const at::Tensor& ws, const c10::optional<at::Tensor>& lengths) {
  detail::check_first(dy, "dy");
  const auto D = dy.scalar_type();
  TORCH_CHECK(ws.dim() == 3 && ws.size(2) % 5 == 0,
              "fastrnn: lstm ws must be (T, N, 5H), got ", ws.sizes());
  Dims d{dy.size(0), dy.size(1), ws.size(2) / 5, dy.size(2)};
  if (!w_hr.has_value()) TORCH_CHECK(d.R == d.H, "fastrnn: dy must be (T, N, H) without w_hr");
  detail::same(ws, dy, "ws", {d.T, d.N, 5 * d.H}, acc_type(D));
  detail::same(dh_n, dy, "dh_n", {d.N, d.R}, D);
  detail::same(dc_n, dy, "dc_n", {d.N, d.H}, D);
  detail::same(w_hh, dy, "w_hh", {4 * d.H, d.R}, D);
  if (w_hr.has_value()) detail::same(*w_hr, dy, "w_hr", {d.R, d.H}, D);
  detail::same(c0, dy, "c0", {d.N, d.H}, D);
  detail::check_lengths(lengths, dy, d.N);
  return d;
}

inline Dims check_gru_forward(const at::Tensor& xg, const at::Tensor& w_hh,
                              const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                              const c10::optional<at::Tensor>& lengths) {
  detail::check_first(xg, "xg");
  const auto D = xg.scalar_type();
  TORCH_CHECK(xg.size(2) % 3 == 0, "fastrnn: gru xg last dim must be 3H, got ", xg.size(2));
  Dims d{xg.size(0), xg.size(1), xg.size(2) / 3, xg.size(2) / 3};
  detail::same(w_hh, xg, "w_hh", {3 * d.H, d.H}, D);
  if (b_hh.has_value()) detail::same(*b_hh, xg, "b_hh", {3 * d.H}, D);
  detail::same(h0, xg, "h0", {d.N, d.H}, D);
  detail::check_lengths(lengths, xg, d.N);
  return d;
}

inline Dims check_gru_backward(const at::Tensor& dy, const at::Tensor& dh_n,
                               const at::Tensor& w_hh, const at::Tensor& h0,
                               const at::Tensor& y, const at::Tensor& ws,
                               const c10::optional<at::Tensor>& lengths) {
  detail::check_first(dy, "dy");
  const auto D = dy.scalar_type();
  Dims d{dy.size(0), dy.size(1), dy.size(2), dy.size(2)};
  detail::same(dh_n, dy, "dh_n", {d.N, d.H}, D);
  detail::same(w_hh, dy, "w_hh", {3 * d.H, d.H}, D);
  detail::same(h0, dy, "h0", {d.N, d.H}, D);
  detail::same(y, dy, "y", {d.T, d.N, d.H}, D);
  detail::same(ws, dy, "ws", {d.T, d.N, 4 * d.H}, acc_type(D));
  detail::check_lengths(lengths, dy, d.N);
  return d;
}

inline Dims check_rnn_forward(const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0,
                              const c10::optional<at::Tensor>& lengths) {
  detail::check_first(xg, "xg");
  const auto D = xg.scalar_type();
  Dims d{xg.size(0), xg.size(1), xg.size(2), xg.size(2)};
  detail::same(w_hh, xg, "w_hh", {d.H, d.H}, D);
  detail::same(h0, xg, "h0", {d.N, d.H}, D);
  detail::check_lengths(lengths, xg, d.N);
  return d;
}

inline Dims check_rnn_backward(const at::Tensor& dy, const at::Tensor& dh_n,
                               const at::Tensor& w_hh, const at::Tensor& y,
                               const c10::optional<at::Tensor>& lengths) {
  detail::check_first(dy, "dy");
  const auto D = dy.scalar_type();
  Dims d{dy.size(0), dy.size(1), dy.size(2), dy.size(2)};
  detail::same(dh_n, dy, "dh_n", {d.N, d.H}, D);
  detail::same(w_hh, dy, "w_hh", {d.H, d.H}, D);
  detail::same(y, dy, "y", {d.T, d.N, d.H}, D);
  detail::check_lengths(lengths, dy, d.N);
  return d;
}

// Fused stacks (the *_stack_* ops): L >= 1 unidirectional layers of one cell
// with G gates, input size of layers >= 1 equal to H, float32 or float64.
struct StackDims {
  int64_t L, T, N, H;
};

namespace detail {

inline StackDims stack_dims(const at::Tensor& w_hh, const at::Tensor& w_ih, int64_t G,
                            const at::Tensor& ref, int64_t T, int64_t N) {
  TORCH_CHECK(w_hh.dim() == 3 && w_hh.size(0) >= 1 && w_hh.size(1) == G * w_hh.size(2),
              "fastrnn: w_hh must be (L, ", G, " H, H), got ", w_hh.sizes());
  const auto D = ref.scalar_type();
  TORCH_CHECK(D == at::kFloat || D == at::kDouble,
              "fastrnn: the CPU fused stack runs float32 and float64, got ", D);
  StackDims s{w_hh.size(0), T, N, w_hh.size(2)};
  same(w_hh, ref, "w_hh", {s.L, G * s.H, s.H}, D);
  same(w_ih, ref, "w_ih", {s.L - 1, G * s.H, s.H}, D);
  return s;
}

}  // namespace detail

// xg0 (T, N, G H), w_ih (L-1, G H, H), b (L-1, G H) or None, w_hh (L, G H, H),
// h0 (L, N, H).
inline StackDims check_stack_forward(const at::Tensor& xg0, const at::Tensor& w_ih,
                                     const c10::optional<at::Tensor>& b, const at::Tensor& w_hh,
                                     const at::Tensor& h0, int64_t G) {
  detail::check_first(xg0, "xg0");
  const StackDims s = detail::stack_dims(w_hh, w_ih, G, xg0, xg0.size(0), xg0.size(1));
  const auto D = xg0.scalar_type();
  detail::same(xg0, xg0, "xg0", {s.T, s.N, G * s.H}, D);
  if (b.has_value()) detail::same(*b, xg0, "b", {s.L - 1, G * s.H}, D);
  detail::same(h0, xg0, "h0", {s.L, s.N, s.H}, D);
  return s;
}

// dy (L, T, N, H), dh_n (L, N, H), w_ih, w_hh as in the forward.
inline StackDims check_stack_backward(const at::Tensor& dy, const at::Tensor& dh_n,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh, int64_t G) {
  TORCH_CHECK(dy.dim() == 4, "fastrnn: dy must be (L, T, N, H), got ", dy.sizes());
  const StackDims s = detail::stack_dims(w_hh, w_ih, G, dy, dy.size(1), dy.size(2));
  const auto D = dy.scalar_type();
  detail::same(dy, dy, "dy", {s.L, s.T, s.N, s.H}, D);
  detail::same(dh_n, dy, "dh_n", {s.L, s.N, s.H}, D);
  return s;
}

}  // namespace fastrnn
