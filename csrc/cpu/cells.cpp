// The Cell modules' step on the CPU: fastrnn_ext::cell_forward / cell_backward
// (schemas in ops.cpp, autograd in cells.cpp).  One call does a step's products
// and its fused gate pass (cells.h), so a cell pays one dispatch per direction
// where torch.nn's cell pays one per elementwise op and the layer op at T = 1
// would pack W_hh for a single product.  The products (product() below) are the
// unpacked AVX-512 kernel's for float32 data on the "own" path, the BLAS's
// (gemm() in common.h, no tensor bookkeeping) for other float32/float64 data and
// at::mm for the half types; gates, c and the gate gradients are in the
// accumulation type.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "cells.h"
#include "common.h"

namespace fastrnn {
namespace cpu {

Cell cell_of(c10::string_view mode) {
  if (mode == "LSTM") return Cell::kLstm;
  if (mode == "GRU") return Cell::kGru;
  if (mode == "RNN_TANH") return Cell::kTanh;
  if (mode == "RNN_RELU") return Cell::kRelu;
  TORCH_CHECK(false, "fastrnn: unknown cell mode '", std::string(mode), "'");
}

int64_t gates_of(Cell c) { return c == Cell::kLstm ? 4 : c == Cell::kGru ? 3 : 1; }

namespace {

using at::Tensor;

// out (m x n) = sum over the pairs (a, w) of a @ w^T (+ bias, one value per
// column of out) + beta out, float32, through the own kernel: as out^T = sum of
// w @ a^T, the a (a batch of rows: small) transposed first, out written
// transposed; one pass over out for all the pairs.
void own_nt(const Tensor& out, std::initializer_list<std::pair<const Tensor*, const Tensor*>> pairs,
            const float* bias, float beta) {
  const int64_t m = out.size(0), n = out.size(1);
  int64_t total = 0;
  for (const auto& p : pairs) total += p.first->size(1);
  std::vector<float> at(static_cast<size_t>(m * total));
  std::vector<StridedTerm> terms;
  int64_t off = 0;
  for (const auto& [a, w] : pairs) {
    const int64_t k = a->size(1);
    transpose_rows(m, k, a->data_ptr<float>(), at.data() + off);
    terms.push_back({w->data_ptr<float>(), k, 1, at.data() + off, m, k});
    off += m * k;
  }
  strided_gemm(n, m, terms.data(), static_cast<int>(terms.size()), bias, beta, out.data_ptr<float>(), 1, n);
}

// out (m x n) = op(a) @ op(b) + beta out; a, b, out contiguous, one dtype.
// float32 on the "own" path: strided_gemm (step_gemm.h), which reads op(a) and
// b in place, so NT runs as out^T = b @ a^T with a (small: a batch of rows)
// transposed first and out written transposed; else the BLAS (gemm()) for
// float32/float64 and at::mm for the half types.
void product(const Tensor& out, const Tensor& a, bool ta, const Tensor& b, bool tb, double beta, CpuGemm g) {
  const int64_t m = out.size(0), n = out.size(1), k = ta ? a.size(0) : a.size(1);
  const auto dt = out.scalar_type();
  // the unpacked kernel is AVX-512 only: the own kernel's AVX2 and NEON builds
  // (kOwnAvx2, kOwnNeon) pack W, which one cell step cannot repay, so their cells
  // take the BLAS products
  if (dt == at::kFloat && g == CpuGemm::kOwn) {
    const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
    float* cp = out.data_ptr<float>();
    const float fb = static_cast<float>(beta);
    if (!tb) {
      // element (r, kk) of op(a): a[r][kk] or, transposed, a[kk][r]
      const StridedTerm t{ap, ta ? 1 : k, ta ? m : 1, bp, n, k};
      strided_gemm(m, n, &t, 1, nullptr, fb, cp, n, 1);
    } else {
      TORCH_CHECK(!ta, "fastrnn: no TT product");
      own_nt(out, {{&a, &b}}, nullptr, fb);
    }
    return;
  }
  if (dt == at::kFloat || dt == at::kDouble) {
    AT_DISPATCH_FLOATING_TYPES(dt, "fastrnn_cell_product", [&] {
      gemm<scalar_t>(ta, tb, m, n, k, a.data_ptr<scalar_t>(), a.size(1), b.data_ptr<scalar_t>(),
                     b.size(1), static_cast<scalar_t>(beta), out.data_ptr<scalar_t>(), n);
    });
    return;
  }
  const Tensor A = ta ? a.t() : a, B = tb ? b.t() : b;
  if (beta == 0)
    at::mm_out(const_cast<Tensor&>(out), A, B);
  else
    const_cast<Tensor&>(out).addmm_(A, B, beta, 1);
}

// op(a) @ op(b) as a new (m x n) tensor of a's dtype.
Tensor product(const Tensor& a, bool ta, const Tensor& b, bool tb, CpuGemm g) {
  Tensor out = at::empty({ta ? a.size(1) : a.size(0), tb ? b.size(0) : b.size(1)}, a.options());
  product(out, a, ta, b, tb, 0.0, g);
  return out;
}

// rows (N, G) of x @ w^T + bias (bias (G) or undefined), in x's dtype.
Tensor input_side(const Tensor& x, const Tensor& w, const Tensor& bias, CpuGemm g) {
  Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  if (bias.defined()) out.copy_(bias.expand_as(out));
  product(out, x, false, w, true, bias.defined() ? 1.0 : 0.0, g);
  return out;
}

// h @ w^T in the data's dtype, widened to the accumulation type A (the gate
// passes read it so).
Tensor hidden_side(const Tensor& h, const Tensor& w, at::ScalarType A, CpuGemm g) {
  Tensor out = product(h, false, w, true, g);
  return out.scalar_type() == A ? out : out.to(A);
}

// t in dtype dt as a tensor of its own (a copy even when t already has it).
Tensor own_copy(const Tensor& t, at::ScalarType dt) {
  return t.to(dt, /*non_blocking=*/false, /*copy=*/true).contiguous();
}

Tensor empty_like_none(const Tensor& like) { return at::empty({0}, like.options()); }

void check_step(Cell cell, const Tensor& x, const Tensor& h, const c10::optional<Tensor>& c,
                const Tensor& w_ih, const Tensor& w_hh, const c10::optional<Tensor>& b_ih,
                const c10::optional<Tensor>& b_hh) {
  TORCH_CHECK(x.dim() == 2 && h.dim() == 2 && w_ih.dim() == 2 && w_hh.dim() == 2,
              "fastrnn: a cell step takes x (N, I), h (N, H), w_ih (G H, I), w_hh (G H, H)");
  const int64_t N = x.size(0), H = h.size(1), G = gates_of(cell) * H;
  TORCH_CHECK(h.size(0) == N && w_ih.size(0) == G && w_ih.size(1) == x.size(1) &&
                  w_hh.size(0) == G && w_hh.size(1) == H,
              "fastrnn: cell step shapes disagree: x ", x.sizes(), ", h ", h.sizes(), ", w_ih ",
              w_ih.sizes(), ", w_hh ", w_hh.sizes());
  TORCH_CHECK(cell != Cell::kLstm || (c.has_value() && c->sizes() == h.sizes()),
              "fastrnn: an LSTM cell step needs c with h's shape");
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "fastrnn: a cell has both biases or neither");
  for (const Tensor* t : {&h, &w_ih, &w_hh})
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "fastrnn: a cell step's tensors share x's dtype and device");
  for (const auto* t : {&c, &b_ih, &b_hh})
    if (t->has_value()) {
      TORCH_CHECK((*t)->scalar_type() == x.scalar_type() && (*t)->device() == x.device(),
                  "fastrnn: a cell step's tensors share x's dtype and device");
      TORCH_CHECK(t == &c || ((*t)->dim() == 1 && (*t)->size(0) == G), "fastrnn: a cell's bias is (G H)");
    }
}

// The step's products run in the data's dtype whatever autocast says.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// -> (h_t, c_t (LSTM; else empty), ws (need_ws, not RNN; else empty)).  ws: LSTM
// [i, f, g, o, c_t] (N, 5H), GRU [r, z, n, hn] (N, 4H), in the accumulation type.
std::tuple<Tensor, Tensor, Tensor> cell_forward_cpu(
    c10::string_view mode, const Tensor& x_, const Tensor& h_, const c10::optional<Tensor>& c_,
    const Tensor& w_ih_, const Tensor& w_hh_, const c10::optional<Tensor>& b_ih,
    const c10::optional<Tensor>& b_hh, bool need_ws, c10::string_view path) {
  const Cell cell = cell_of(mode);
  const CpuGemm g = gemm_path(path, x_.scalar_type());
  check_step(cell, x_, h_, c_, w_ih_, w_hh_, b_ih, b_hh);
  NoAutocast no_autocast;
  const Tensor x = x_.contiguous(), h = h_.contiguous(), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous();
  const auto D = x.scalar_type();
  const auto A = at::toOpMathType(D);
  const int64_t N = x.size(0), H = h.size(1);
  const bool bias = b_ih.has_value();
  if (cell == Cell::kGru) {
    const Tensor xg = input_side(x, w_ih, bias ? b_ih->contiguous() : Tensor(), g);
    const Tensor gh = hidden_side(h, w_hh, A, g);
    const Tensor bh = bias ? own_copy(*b_hh, A) : at::zeros({3 * H}, gh.options());
    Tensor hn = own_copy(h, A);
    Tensor ws = at::empty({N, 4 * H}, gh.options());
    gru_cell_gates(xg, gh, bh, hn, ws);
    return {hn.to(D), empty_like_none(x), need_ws ? ws : empty_like_none(ws)};
  }
  // xg: the input side with b_ih; gh: h @ W_hh^T + b_hh (undefined: both sides
  // and both biases are in xg)
  Tensor xg, gh;
  if (D == at::kFloat && g == CpuGemm::kOwn) {  // both sides in one pass of the own kernel
    const int64_t G = w_ih.size(0);
    std::vector<float> b(bias ? G : 0);
    if (bias) {
      const Tensor bi = b_ih->contiguous(), bh = b_hh->contiguous();
      const float *pi = bi.data_ptr<float>(), *ph = bh.data_ptr<float>();
      for (int64_t j = 0; j < G; ++j) b[j] = pi[j] + ph[j];
    }
    xg = at::empty({N, G}, x.options());
    own_nt(xg, {{&x, &w_ih}, {&h, &w_hh}}, bias ? b.data() : nullptr, 0.0f);
  } else {
    // each side with its own bias, rounded to the data's dtype as torch.nn's two
    // linear() calls round them, then summed in the accumulation type
    xg = input_side(x, w_ih, bias ? b_ih->contiguous() : Tensor(), g);
    gh = input_side(h, w_hh, bias ? b_hh->contiguous() : Tensor(), g);
    if (gh.scalar_type() != A) gh = gh.to(A);
  }
  Tensor hn = at::empty({N, H}, x.options().dtype(A));
  if (cell != Cell::kLstm) {
    rnn_cell_gates(xg, gh, cell == Cell::kRelu, hn);
    return {hn.to(D), empty_like_none(x), empty_like_none(hn)};
  }
  Tensor cn = own_copy(*c_, A);
  Tensor ws = at::empty({N, 5 * H}, hn.options());
  lstm_cell_gates(xg, gh, cn, ws, hn);
  return {hn.to(D), cn.to(D), need_ws ? ws : empty_like_none(ws)};
}

// -> (dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh): the gradients of x (mask[0]), of
// the state (mask[1]; dc for the LSTM only), of the parameters (mask[2]; the
// biases when ``bias``); empty tensors where not asked for or absent.  ws: the
// forward's workspace, for the RNN its output h_t.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cell_backward_cpu(
    c10::string_view mode, const Tensor& dh_, const c10::optional<Tensor>& dc_, const Tensor& x_,
    const Tensor& h_, const c10::optional<Tensor>& c_, const Tensor& w_ih_, const Tensor& w_hh_,
    const Tensor& ws_, bool bias, std::array<bool, 3> mask, c10::string_view path) {
  const Cell cell = cell_of(mode);
  const CpuGemm g = gemm_path(path, x_.scalar_type());
  check_step(cell, x_, h_, c_, w_ih_, w_hh_, c10::nullopt, c10::nullopt);
  NoAutocast no_autocast;
  const Tensor x = x_.contiguous(), h = h_.contiguous(), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous(), dh = dh_.contiguous(), ws = ws_.contiguous();
  const auto D = x.scalar_type();
  const auto A = at::toOpMathType(D);
  const int64_t N = x.size(0), H = h.size(1), G = gates_of(cell) * H;
  TORCH_CHECK(dh.sizes() == h.sizes() && dh.scalar_type() == D, "fastrnn: cell_backward: dh is h's shape and dtype");
  const int64_t ws_cols = cell == Cell::kLstm ? 5 * H : cell == Cell::kGru ? 4 * H : H;
  TORCH_CHECK(ws.dim() == 2 && ws.size(0) == N && ws.size(1) == ws_cols &&
                  ws.scalar_type() == (cell == Cell::kTanh || cell == Cell::kRelu ? D : A),
              "fastrnn: cell_backward: the workspace is not this cell's (was need_ws false?)");
  // an empty tensor of its own in every slot not computed (no two outputs alias)
  Tensor dx = empty_like_none(x), dhp = empty_like_none(x), dc = empty_like_none(x), dw_ih = empty_like_none(x),
         dw_hh = empty_like_none(x), db_ih = empty_like_none(x), db_hh = empty_like_none(x);
  // dgx: the gradients of the input-side pre-activations (D, for the products);
  // dgh those of the hidden side (A), the same tensor except in the GRU.
  Tensor dgx, dgh;
  Tensor dh_direct;  // GRU: dh_t * z, the part of dh_{t-1} not through W_hh
  if (cell == Cell::kLstm) {
    TORCH_CHECK(dc_.has_value() && dc_->sizes() == h.sizes(), "fastrnn: cell_backward: an LSTM needs dc");
    Tensor dc_io = own_copy(*dc_, A);
    dgh = at::empty({N, G}, ws.options());
    lstm_cell_gates_backward(ws, c_->to(A).contiguous(), dh.to(A).contiguous(), dc_io, dgh);
    if (mask[1]) dc = dc_io.to(D);
    dgx = dgh.to(D);
  } else if (cell == Cell::kGru) {
    dh_direct = at::empty({N, H}, ws.options());
    dgx = at::empty({N, G}, x.options());
    dgh = at::empty({N, G}, ws.options());
    gru_cell_gates_backward(ws, h, dh, dh_direct, dgx, dgh);
  } else {
    dgh = at::empty({N, G}, dh.options().dtype(A));
    rnn_cell_gates_backward(ws, dh, cell == Cell::kRelu, dgh);
    dgx = dgh.to(D);
  }
  const Tensor dghD = cell == Cell::kGru ? dgh.to(D) : dgx;
  if (mask[0]) dx = product(dgx, false, w_ih, false, g);
  if (mask[1]) {
    if (cell == Cell::kGru && D == A) {
      dhp = dh_direct;
      product(dhp, dghD, false, w_hh, false, 1.0, g);
    } else if (cell == Cell::kGru) {
      dhp = (dh_direct + product(dghD, false, w_hh, false, g).to(A)).to(D);
    } else {
      dhp = product(dghD, false, w_hh, false, g);
    }
  }
  if (mask[2]) {
    dw_ih = product(dgx, true, x, false, g);
    dw_hh = product(dghD, true, h, false, g);
    if (bias) {
      // summed in the accumulation type (dgh; the GRU's input side is dgx)
      db_ih = (cell == Cell::kGru ? dgx.sum(0, false, A) : dgh.sum(0)).to(D);
      db_hh = cell == Cell::kGru ? dgh.sum(0).to(D) : db_ih.clone();
    }
  }
  return {dx, dhp, dc, dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn_ext, CPU, m) {
  m.impl("cell_forward", &cell_forward_cpu);
  m.impl("cell_backward", &cell_backward_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
