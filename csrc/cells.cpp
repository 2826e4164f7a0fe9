// Autograd of fastrnn_ext::cell (schemas in ops.cpp): a C++ autograd Function,
// so a cell step costs one dispatch forward and one backward and no Python.
// Device-agnostic: it calls cell_forward / cell_backward through the dispatcher
// below autograd, so their per-device kernels (cpu/cells.cpp) serve it, and
// torch.compile traces those two ops with their fake implementations
// (fastrnn/backends/extension.py).  Without autograd (inference mode) the op
// runs cell_forward without a workspace.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace fastrnn {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptT = c10::optional<Tensor>;

std::tuple<Tensor, Tensor, Tensor> call_forward(c10::string_view mode, const Tensor& x, const Tensor& h,
                                                const OptT& c, const Tensor& w_ih, const Tensor& w_hh,
                                                const OptT& b_ih, const OptT& b_hh, bool need_ws,
                                                c10::string_view path) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastrnn_ext::cell_forward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(c10::string_view, const Tensor&, const Tensor&,
                                                                const OptT&, const Tensor&, const Tensor&,
                                                                const OptT&, const OptT&, bool,
                                                                c10::string_view)>();
  return op.call(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, need_ws, path);
}

using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Grads call_backward(c10::string_view mode, const Tensor& dh, const OptT& dc, const Tensor& x, const Tensor& h,
                    const OptT& c, const Tensor& w_ih, const Tensor& w_hh, const Tensor& ws, bool bias,
                    std::array<bool, 3> mask, c10::string_view path) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastrnn_ext::cell_backward", "")
                       .typed<Grads(c10::string_view, const Tensor&, const OptT&, const Tensor&, const Tensor&,
                                    const OptT&, const Tensor&, const Tensor&, const Tensor&, bool,
                                    std::array<bool, 3>, c10::string_view)>();
  return op.call(mode, dh, dc, x, h, c, w_ih, w_hh, ws, bias, mask, path);
}

bool defined(const OptT& t) { return t.has_value() && t->defined(); }

struct CellFunction : public torch::autograd::Function<CellFunction> {
  // Forward arguments (backward returns one gradient per argument, in order):
  // mode, path, need_ws, x, h, c, w_ih, w_hh, b_ih, b_hh.
  static variable_list forward(AutogradContext* ctx, std::string mode, std::string path, bool need_ws,
                               const Tensor& x,
                               const Tensor& h, const OptT& c, const Tensor& w_ih, const Tensor& w_hh,
                               const OptT& b_ih, const OptT& b_hh) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [hn, cn, ws] = call_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, need_ws, path);
    const bool lstm = mode == "LSTM", rnn = mode.rfind("RNN", 0) == 0;
    TORCH_CHECK(defined(b_ih) == defined(b_hh), "fastrnn: a cell step takes both biases or neither");
    if (!lstm) ctx->mark_non_differentiable({cn});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["path"] = path;
    ctx->saved_data["bias"] = defined(b_ih);
    // the edges' order: x, h, [c], w_ih, w_hh, [b_ih, b_hh] (the defined ones)
    ctx->saved_data["first_param"] = static_cast<int64_t>(defined(c) ? 3 : 2);
    // the biases only for a backward that is itself differentiated (recorded_backward)
    ctx->save_for_backward({x, h, defined(c) ? *c : Tensor(), w_ih, w_hh, rnn ? hn : ws,
                            defined(b_ih) ? *b_ih : Tensor(), defined(b_hh) ? *b_hh : Tensor()});
    return {hn, cn};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const std::string path = ctx->saved_data["path"].toStringRef();
    const bool bias = ctx->saved_data["bias"].toBool();
    const int64_t p = ctx->saved_data["first_param"].toInt();
    const auto s = ctx->get_saved_variables();
    if (at::GradMode::is_enabled()) return recorded_backward(ctx, mode, bias, p, s, grads);
    const Tensor &x = s[0], &h = s[1], &c = s[2], &w_ih = s[3], &w_hh = s[4], &ws = s[5];
    const bool lstm = mode == "LSTM";
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_state = ctx->needs_input_grad(1) || (lstm && ctx->needs_input_grad(2));
    bool need_params = ctx->needs_input_grad(p) || ctx->needs_input_grad(p + 1);
    if (bias) need_params = need_params || ctx->needs_input_grad(p + 2) || ctx->needs_input_grad(p + 3);
    TORCH_CHECK(ws.numel() > 0 || mode.rfind("RNN", 0) == 0,
                "fastrnn: this cell step ran without a workspace, so it cannot be differentiated");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh] =
        call_backward(mode, grads[0], lstm ? OptT(grads[1]) : OptT(), x, h, lstm ? OptT(c) : OptT(), w_ih, w_hh,
                      ws, bias, {need_x, need_state, need_params}, path);
    const Tensor none;
    return {none,
            none,
            none,
            need_x ? dx : none,
            need_state ? dh : none,
            lstm && need_state ? dc : none,
            need_params ? dw_ih : none,
            need_params ? dw_hh : none,
            bias && need_params ? db_ih : none,
            bias && need_params ? db_hh : none};
  }

  // The backward when it is being recorded (create_graph=True: a gradient
  // penalty, meta-learning): the step recomputed from its saved inputs with ATen's
  // differentiable operations (in float32 for half types, as the kernels compute)
  // and differentiated by a nested autograd call that records its own graph, so
  // the gradients it returns can be differentiated again, to any order.  A step
  // is two small products, so recomputing costs about what the first-order step
  // does; the kernels' backward (cell_backward) records nothing.
  static variable_list recorded_backward(AutogradContext* ctx, const std::string& mode, bool bias, int64_t p,
                                         const variable_list& s, const variable_list& grads) {
    const bool lstm = mode == "LSTM";
    // exact, as the kernels: no autocast for a backward recorded inside its region
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    // The nested call differentiates with respect to aliases of the saved inputs:
    // with the inputs themselves it would also follow paths between them (an LSTM
    // state c computed from h would give h's gradient c's share a second time).
    variable_list a(s.size());
    for (size_t k = 0; k < s.size(); ++k) a[k] = s[k].defined() ? s[k].view_as(s[k]) : Tensor();
    const bool half = s[0].scalar_type() == at::kHalf || s[0].scalar_type() == at::kBFloat16;
    auto up = [half](const Tensor& t) { return half && t.defined() ? t.to(at::kFloat) : t; };
    const Tensor x = up(a[0]), h = up(a[1]), c = up(a[2]), w_ih = up(a[3]), w_hh = up(a[4]);
    const OptT b_ih = bias ? OptT(up(a[6])) : OptT(), b_hh = bias ? OptT(up(a[7])) : OptT();
    const Tensor gx = at::linear(x, w_ih, b_ih), gh = at::linear(h, w_hh, b_hh);
    variable_list outs;
    if (lstm) {
      const auto g = (gx + gh).chunk(4, 1);
      const Tensor c2 = at::sigmoid(g[1]) * c + at::sigmoid(g[0]) * at::tanh(g[2]);
      outs = {at::sigmoid(g[3]) * at::tanh(c2), c2};
    } else if (mode == "GRU") {
      const auto a = gx.chunk(3, 1), b = gh.chunk(3, 1);
      const Tensor r = at::sigmoid(a[0] + b[0]), z = at::sigmoid(a[1] + b[1]);
      const Tensor n = at::tanh(a[2] + r * b[2]);
      outs = {n + z * (h - n)};
    } else {
      const Tensor pre = gx + gh;
      outs = {mode == "RNN_RELU" ? at::relu(pre) : at::tanh(pre)};
    }
    // the edges' order: x, h, [c], w_ih, w_hh, [b_ih, b_hh]; each with its
    // saved index and its forward argument (mode, path, need_ws, x, h, c, w_ih,
    // w_hh, b_ih, b_hh)
    int saved_of[7], arg_of[7], n_edges = 0;
    auto edge = [&](int saved, int arg) { saved_of[n_edges] = saved, arg_of[n_edges++] = arg; };
    edge(0, 3), edge(1, 4);
    if (p == 3) edge(2, 5);
    edge(3, 6), edge(4, 7);
    if (bias) edge(6, 8), edge(7, 9);
    variable_list inputs;
    std::vector<int> args;
    for (int k = 0; k < n_edges; ++k) {
      if (!ctx->needs_input_grad(k)) continue;
      inputs.push_back(a[saved_of[k]]);
      args.push_back(arg_of[k]);
    }
    variable_list go;
    for (size_t k = 0; k < outs.size(); ++k)
      go.push_back(grads[k].defined() ? grads[k].to(outs[k].scalar_type()) : at::zeros_like(outs[k]));
    const variable_list got = inputs.empty() ? variable_list{}
                                             : torch::autograd::grad(outs, inputs, go, /*retain_graph=*/true,
                                                                     /*create_graph=*/true, /*allow_unused=*/true);
    variable_list out(10);
    for (size_t j = 0; j < args.size(); ++j)
      out[args[j]] = got[j].defined() ? got[j].to(inputs[j].scalar_type()) : at::zeros_like(inputs[j]);
    return out;
  }
};

bool any_requires_grad(std::initializer_list<const Tensor*> ts, std::initializer_list<const OptT*> opts) {
  for (const Tensor* t : ts)
    if (t->requires_grad()) return true;
  for (const OptT* t : opts)
    if (defined(*t) && (*t)->requires_grad()) return true;
  return false;
}

std::tuple<Tensor, Tensor> cell_autograd(c10::string_view mode, const Tensor& x, const Tensor& h, const OptT& c,
                                         const Tensor& w_ih, const Tensor& w_hh, const OptT& b_ih,
                                         const OptT& b_hh, c10::string_view path) {
  const bool need_ws = at::GradMode::is_enabled() && any_requires_grad({&x, &h, &w_ih, &w_hh}, {&c, &b_ih, &b_hh});
  auto out = CellFunction::apply(std::string(mode), std::string(path), need_ws, x, h, c, w_ih, w_hh, b_ih, b_hh);
  return {out[0], out[1]};
}

std::tuple<Tensor, Tensor> cell_plain(c10::string_view mode, const Tensor& x, const Tensor& h, const OptT& c,
                                      const Tensor& w_ih, const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh,
                                      c10::string_view path) {
  auto [hn, cn, ws] = call_forward(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, false, path);
  return {hn, cn};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn_ext, Autograd, m) { m.impl("cell", &cell_autograd); }

TORCH_LIBRARY_IMPL(fastrnn_ext, CompositeExplicitAutograd, m) { m.impl("cell", &cell_plain); }

}  // namespace fastrnn
