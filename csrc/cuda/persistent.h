// Persistent CUDA recurrences (persistent.cu): one cooperative launch runs every
// time step of a layer and direction with the W_hh slices resident in shared
// memory.  recurrence.cu calls these first on the path "persistent"; each
// returns false, having queued nothing, when it does not handle the
// configuration (dtype float64, empty sizes, or the weights do not fit on chip),
// and the caller then runs its per-step path.  Arguments are already checked
// (checks.h) and the device guard is set by the caller.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <tuple>

namespace fastrnn {
namespace cuda {

// The op's path argument: "persistent" (try the persistent kernels first) or
// "per-step" (chosen in Python: fastrnn/settings.py, FASTRNN_CUDA_PERSISTENT).
bool persistent_path(c10::string_view path);

bool lstm_forward_persistent(const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0,
                             const at::Tensor& c0, const c10::optional<at::Tensor>& lengths,
                             bool need_ws,
                             std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>& out);
bool lstm_backward_persistent(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                              const at::Tensor& w_hh, const at::Tensor& c0, const at::Tensor& ws,
                              const c10::optional<at::Tensor>& lengths,
                              std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>& out);
bool gru_forward_persistent(const at::Tensor& xg, const at::Tensor& w_hh,
                            const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                            const c10::optional<at::Tensor>& lengths, bool need_ws,
                            std::tuple<at::Tensor, at::Tensor, at::Tensor>& out);
bool gru_backward_persistent(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                             const at::Tensor& h0, const at::Tensor& y, const at::Tensor& ws,
                             const c10::optional<at::Tensor>& lengths,
                             std::tuple<at::Tensor, at::Tensor, at::Tensor>& out);
bool rnn_forward_persistent(const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0,
                            const c10::optional<at::Tensor>& lengths, bool relu,
                            std::tuple<at::Tensor, at::Tensor>& out);
bool rnn_backward_persistent(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                             const at::Tensor& y, const c10::optional<at::Tensor>& lengths,
                             bool relu, std::tuple<at::Tensor, at::Tensor>& out);

}  // namespace cuda
}  // namespace fastrnn
