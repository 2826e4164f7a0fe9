// The recurrence ops of fastrnn's backend seam: the schemas of
// fastrnn.backends.SCHEMAS (held to it by tests/test_ops.py) plus ``str path``,
// the kernel path the Python switchboard chose (fastrnn/settings.py): "own" or
// "blas" for the CPU's per-step products, "persistent" or "per-step" on CUDA.
// Kernels register per device in cpu/ and cuda/.  No pybind: PyInit__C only makes the
// library importable as fastrnn._C, which runs the registrations below.
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x03090000
#endif
#include <Python.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY(fastrnn_ext, m) {
  m.def("lstm_forward(Tensor xg, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0, "
        "Tensor? lengths, bool need_ws, str path) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor w_hh, Tensor? w_hr, "
        "Tensor c0, Tensor ws, Tensor? lengths, str path) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_forward(Tensor xg, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor? lengths, "
        "bool need_ws, str path) -> (Tensor, Tensor, Tensor)");
  m.def("gru_backward(Tensor dy, Tensor dh_n, Tensor w_hh, Tensor h0, Tensor y, Tensor ws, "
        "Tensor? lengths, str path) -> (Tensor, Tensor, Tensor)");
  m.def("rnn_forward(Tensor xg, Tensor w_hh, Tensor h0, Tensor? lengths, bool relu, "
        "bool need_ws, str path) -> (Tensor, Tensor)");
  m.def("rnn_backward(Tensor dy, Tensor dh_n, Tensor w_hh, Tensor y, Tensor? lengths, "
        "bool relu, str path) -> (Tensor, Tensor)");
  // Fused stacks of unidirectional layers (fastrnn.backends' *_stack_* functions);
  // CPU kernels only (float32, float64).
  m.def("lstm_stack_forward(Tensor xg0, Tensor w_ih, Tensor? b, Tensor w_hh, Tensor h0, "
        "Tensor c0, bool need_ws, str path) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("lstm_stack_backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor w_ih, Tensor w_hh, "
        "Tensor c0, Tensor ws, str path) -> (Tensor, Tensor, Tensor)");
  m.def("gru_stack_forward(Tensor xg0, Tensor w_ih, Tensor? b_ih, Tensor w_hh, Tensor? b_hh, "
        "Tensor h0, bool need_ws, str path) -> (Tensor, Tensor, Tensor)");
  m.def("gru_stack_backward(Tensor dy, Tensor dh_n, Tensor w_ih, Tensor w_hh, Tensor h0, "
        "Tensor y, Tensor ws, str path) -> (Tensor, Tensor, Tensor)");
  m.def("rnn_stack_forward(Tensor xg0, Tensor w_ih, Tensor? b, Tensor w_hh, Tensor h0, "
        "bool relu, bool need_ws, str path) -> (Tensor, Tensor)");
  m.def("rnn_stack_backward(Tensor dy, Tensor dh_n, Tensor w_ih, Tensor w_hh, Tensor y, "
        "bool relu, str path) -> (Tensor, Tensor)");
  // The Cell modules' step (fastrnn/cells.py, csrc/cells.cpp): mode "LSTM", "GRU",
  // "RNN_TANH" or "RNN_RELU"; c for the LSTM only; path as above.  ``cell`` is
  // differentiable, its autograd registered in C++ (no Python on a step's path);
  // cell_forward and cell_backward are its two directions (CPU kernels in
  // cpu/cells.cpp).
  m.def("cell(str mode, Tensor x, Tensor h, Tensor? c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, str path) -> (Tensor, Tensor)");
  m.def("cell_forward(str mode, Tensor x, Tensor h, Tensor? c, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, bool need_ws, str path) -> (Tensor, Tensor, Tensor)");
  m.def("cell_backward(str mode, Tensor dh, Tensor? dc, Tensor x, Tensor h, Tensor? c, "
        "Tensor w_ih, Tensor w_hh, Tensor ws, bool bias, bool[3] mask, str path) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // A streaming call's stack (cpu/stream.cpp): unidirectional layers in torch.nn's
  // flat weight order (w_ih, w_hh[, b_ih, b_hh][, w_hr] per layer), float32,
  // inference only -> (y, h_n, c_n: empty but for the LSTM).
  m.def("stream_stack(str mode, Tensor x, Tensor[] weights, Tensor h0, Tensor? c0, bool bias, bool proj, "
        "str path) -> (Tensor, Tensor, Tensor)");
}

// The kernels record no graph: fastrnn::* (fastrnn/_ops.py) and fastrnn_ext::cell
// call them below autograd.  Called directly on tensors that require grad, their
// outputs get a node that raises when differentiated, never PyTorch's warn-only
// fallback, which leaves out their share of a gradient: a silent wrong number.
TORCH_LIBRARY_IMPL(fastrnn_ext, Autograd, m) {
  for (const char* op : {"lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward",
                         "rnn_backward", "lstm_stack_forward", "lstm_stack_backward", "gru_stack_forward",
                         "gru_stack_backward", "rnn_stack_forward", "rnn_stack_backward", "cell_forward",
                         "cell_backward", "cpu_step_gemm", "stream_stack"})
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
}

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                      nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
}
