// Gate math of the three cells, shared by the CPU and CUDA kernels.
//
// Every function works on one hidden unit in the accumulation type A (float for
// float/half/bfloat16 inputs, double for double), so the CPU loops vectorise
// them and the CUDA kernels run them one unit per thread.  The formulas are the
// ones of the contract in fastrnn/backends/__init__.py.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define FR_HOST inline __attribute__((always_inline))
#if defined(__CUDACC__)
#define FR_HD __host__ __device__ __forceinline__
#else
#define FR_HD FR_HOST
#endif

namespace fastrnn {

// exp for float on the host: Cody-Waite reduction plus a degree-7 polynomial
// (about 1 ulp), written as plain arithmetic so that the compiler vectorises the
// gate loops; libm's expf is a call per element and blocks vectorisation.
FR_HOST float host_expf(float x) {
  x = x < -87.0f ? -87.0f : x;  // ternaries, not fminf/fmaxf: they vectorise
  x = x > 88.0f ? 88.0f : x;
  // Adding 1.5 * 2^23 rounds x / ln2 to an integer n, which then sits in the
  // low mantissa bits of kn (cheaper than floorf, and it vectorises).
  const float kn = x * 1.44269504088896341f + 12582912.0f;
  const float n = kn - 12582912.0f;
  float r = x - n * 0.693359375f;  // ln2 split in a part exact in float
  r = r - n * -2.12194440e-4f;     // and the rest
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &kn, sizeof(bits));
  bits = (bits - 0x4B400000 + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

FR_HD float fr_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return host_expf(x);
#endif
}
FR_HD double fr_exp(double x) { return exp(x); }

FR_HD float fr_sigmoid(float x) { return 1.0f / (1.0f + fr_exp(-x)); }
FR_HD double fr_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

FR_HD float fr_tanh(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  // (1 - e) / (1 + e) with e = exp(-2|x|) loses relative accuracy near 0, where
  // the odd Taylor series to x^7 is exact to float rounding instead.
  const float ax = fabsf(x);
  const float e = host_expf(-2.0f * ax);
  float t = (1.0f - e) / (1.0f + e);
  const float x2 = x * x;
  const float s = ax * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f))));
  t = ax < 0.0625f ? s : t;
  return copysignf(t, x);
#endif
}
FR_HD double fr_tanh(double x) { return tanh(x); }

// ---------------------------------------------------------------- LSTM
// c_t from the activated gates i, f, g and c_{t-1}.
template <typename A>
FR_HD A lstm_cell_state(A i, A f, A g, A c_prev) {
  return f * c_prev + i * g;
}

// The unprojected output o * tanh(c_t).
template <typename A>
FR_HD A lstm_cell_output(A o, A c) {
  return o * fr_tanh(c);
}

// Pre-activations (pi, pf, pg, po) and c_{t-1} in; activated gates, c_t and the
// unprojected output o * tanh(c_t) out.
template <typename A>
FR_HD void lstm_cell_forward(A pi, A pf, A pg, A po, A c_prev,
                             A& i, A& f, A& g, A& o, A& c, A& h) {
  i = fr_sigmoid(pi);
  f = fr_sigmoid(pf);
  g = fr_tanh(pg);
  o = fr_sigmoid(po);
  c = lstm_cell_state(i, f, g, c_prev);
  h = lstm_cell_output(o, c);
}

// dhu: gradient w.r.t. o * tanh(c_t); dc: in, gradient w.r.t. c_t from step t+1;
// out, gradient w.r.t. c_{t-1}.  d* are the gradients of the pre-activations.
template <typename A>
FR_HD void lstm_cell_backward(A i, A f, A g, A o, A c, A c_prev, A dhu, A& dc,
                              A& di, A& df, A& dg, A& d_o) {
  const A one = A(1);
  const A tc = fr_tanh(c);
  const A dct = dc + dhu * o * (one - tc * tc);
  di = dct * g * (i * (one - i));
  df = dct * c_prev * (f * (one - f));
  dg = dct * i * (one - g * g);
  d_o = dhu * tc * (o * (one - o));
  dc = dct * f;
}

// ----------------------------------------------------------------- GRU
// n = tanh(xn + r * hn) and h_t = (1 - z) * n + z * h_{t-1}.
template <typename A>
FR_HD A gru_cell_n(A xn, A r, A hn) {
  return fr_tanh(xn + r * hn);
}
template <typename A>
FR_HD A gru_cell_h(A z, A n, A h_prev) {
  return (A(1) - z) * n + z * h_prev;
}

// xr, xz, xn: input side (b_ih included); hr, hz, hn: h_{t-1} @ W_hh^T + b_hh.
template <typename A>
FR_HD void gru_cell_forward(A xr, A xz, A xn, A hr, A hz, A hn, A h_prev,
                            A& r, A& z, A& n, A& h) {
  r = fr_sigmoid(xr + hr);
  z = fr_sigmoid(xz + hz);
  n = gru_cell_n(xn, r, hn);
  h = gru_cell_h(z, n, h_prev);
}

// dh: gradient w.r.t. h_t (incoming from above and from step t+1).  Out: the
// input-side pre-activation gradients (dr, dz, dn), the n block of dgh (dn * r)
// and the direct part dh * z of the gradient w.r.t. h_{t-1}.
template <typename A>
FR_HD void gru_cell_backward(A r, A z, A n, A hn, A h_prev, A dh,
                             A& dr, A& dz, A& dn, A& dhn, A& dh_direct) {
  const A one = A(1);
  dn = dh * (one - z) * (one - n * n);
  dr = dn * hn * (r * (one - r));
  dz = dh * (h_prev - n) * (z * (one - z));
  dhn = dn * r;
  dh_direct = dh * z;
}

// ----------------------------------------------------------------- RNN
template <typename A>
// (relu as "pre < 0 ? 0 : pre": a NaN pre-activation stays NaN, as torch.relu keeps it)
FR_HD A rnn_act(A pre, bool relu) {
  return relu ? (pre < A(0) ? A(0) : pre) : fr_tanh(pre);
}

// Derivative of the activation, taken from its output y.
template <typename A>
FR_HD A rnn_act_grad(A y, bool relu) {
  return relu ? (y > A(0) ? A(1) : A(0)) : A(1) - y * y;
}

}  // namespace fastrnn
