// Autograd of fastrnn_ext::cell (schemas in ops.cpp): a C++ autograd Function,
// so a cell step costs one dispatch forward and one backward and no Python.
// Device-agnostic: it calls cell_forward / cell_backward through the dispatcher
// below autograd, so their per-device kernels (cpu/cells.cpp) serve it, and
// torch.compile traces those two ops with their fake implementations
// (fastrnn/backends/extension.py).  Without autograd (inference mode) the op
// runs cell_forward without a workspace.
#include <ATen/core/dispatch/Dispatcher.h>
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
    if (!lstm) ctx->mark_non_differentiable({cn});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["path"] = path;
    ctx->saved_data["bias"] = defined(b_ih);
    // the edges' order: x, h, [c], w_ih, w_hh, [b_ih, b_hh] (the defined ones)
    ctx->saved_data["first_param"] = static_cast<int64_t>(defined(c) ? 3 : 2);
    ctx->save_for_backward({x, h, defined(c) ? *c : Tensor(), w_ih, w_hh, rnn ? hn : ws});
    return {hn, cn};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "fastrnn: the cells' backward cannot be differentiated (no double backward)");
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const std::string path = ctx->saved_data["path"].toStringRef();
    const bool bias = ctx->saved_data["bias"].toBool();
    const int64_t p = ctx->saved_data["first_param"].toInt();
    const auto s = ctx->get_saved_variables();
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
