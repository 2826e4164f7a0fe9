// The Cell modules' gate passes on the CPU (cpu/cells.cpp runs the products around
// them).  Each is one time step of its layer's gate pass (lstm.cpp, gru.cpp,
// rnn.cpp), the same row functions, over the N rows of a batch.  "D" is the data's
// dtype, "A" its accumulation type (at::opmath_type: float for the half types);
// every tensor is contiguous and allocated by the caller.
#pragma once

#include <ATen/ATen.h>

namespace fastrnn {
namespace cpu {

// The recurrence a mode names (torch.nn's: "LSTM", "GRU", "RNN_TANH",
// "RNN_RELU"; an error naming any other), and its gate count.  The cells, the
// stream route and the int8 layers read their mode argument through these.
enum class Cell { kLstm, kGru, kTanh, kRelu };
Cell cell_of(c10::string_view mode);
int64_t gates_of(Cell c);

// xg (N, 4H, D) input side, gh (N, 4H, A) h_{t-1} @ W_hh^T (undefined: xg
// holds both sides), the biases in either,
// c (N, H, A) c_{t-1} in and c_t out; ws (N, 5H, A) [i, f, g, o, c_t] and
// h (N, H, A) o * tanh(c_t) out.
void lstm_cell_gates(const at::Tensor& xg, const at::Tensor& gh, const at::Tensor& c,
                     const at::Tensor& ws, const at::Tensor& h);
// ws, c_prev (N, H, A), dhu (N, H, A) gradient w.r.t. h_t, dc (N, H, A) gradient
// w.r.t. c_t in and w.r.t. c_{t-1} out; dg (N, 4H, A) out.
void lstm_cell_gates_backward(const at::Tensor& ws, const at::Tensor& c_prev,
                              const at::Tensor& dhu, const at::Tensor& dc, const at::Tensor& dg);

// xg (N, 3H, D) input side with b_ih, gh (N, 3H, A) h_{t-1} @ W_hh^T, bh (3H, A)
// b_hh or zeros, h (N, H, A) h_{t-1} in and h_t out; ws (N, 4H, A) [r, z, n, hn] out.
void gru_cell_gates(const at::Tensor& xg, const at::Tensor& gh, const at::Tensor& bh,
                    const at::Tensor& h, const at::Tensor& ws);
// ws, h_prev (N, H, D), dy (N, H, D) gradient w.r.t. h_t; dh (N, H, A) out: the
// direct part dy * z of the gradient w.r.t. h_{t-1}; dx (N, 3H, D) the input-side
// pre-activation gradients and dg (N, 3H, A) those of h_{t-1} @ W_hh^T + b_hh out.
void gru_cell_gates_backward(const at::Tensor& ws, const at::Tensor& h_prev, const at::Tensor& dy,
                             const at::Tensor& dh, const at::Tensor& dx, const at::Tensor& dg);

// xg (N, H, D) input side, gh (N, H, A) (undefined: xg holds both sides), the
// biases in either; h (N, H, A) out.
void rnn_cell_gates(const at::Tensor& xg, const at::Tensor& gh, bool relu, const at::Tensor& h);
// y (N, H, D) the step's output, dy (N, H, D) its gradient; dg (N, H, A) out.
void rnn_cell_gates_backward(const at::Tensor& y, const at::Tensor& dy, bool relu,
                             const at::Tensor& dg);

}  // namespace cpu
}  // namespace fastrnn
