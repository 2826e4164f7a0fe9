// int8 inference on the CPU (fastrnn.quantized): one layer, one direction of an
// LSTM, GRU or RNN whose weights are int8 with a scale per output row, and
// whose activations (the layer's input rows, and h_{t-1} on every step) are
// quantized per row at run time (int8_gemm.h).  Gates, cell state and the
// output stay float32.  The input side is one product over all T x N rows;
// each step quantizes h, multiplies by W_hh (and, projected, the unprojected
// output by W_hr), then runs the gates.  Inference only: the op has no
// backward (fastrnn.quantized refuses one with its own message).
//
//   int8_pack(Tensor w) -> (Tensor packed, Tensor rowsum)
//   int8_layer(str mode, Tensor x, Tensor[] w, Tensor? b_ih, Tensor? b_hh,
//              Tensor h0, Tensor? c0, Tensor? lengths, bool reverse, str isa)
//       -> (Tensor y, Tensor h_n, Tensor c_n)
// w: [ih packed, ih rowsum, ih scale, hh packed, hh rowsum, hh scale] and, for a
// projected LSTM, [hr packed, hr rowsum, hr scale].  x (T, N, I) float32;
// h0 (N, R); c0 (N, H) for the LSTM; lengths (N,) int64 on the CPU, each in
// [1, T] (rows past their length keep their state and output zeros; reverse
// runs each row from its own last step).  c_n is empty but for the LSTM.
//
//   int8_stack(str mode, Tensor x, Tensor[] w, Tensor[] biases, Tensor h0,
//              Tensor? c0, str isa) -> (Tensor y, Tensor h_n, Tensor c_n)
// L unidirectional layers without projection or lengths in one call, pipelined
// across the threads (int8_stack_op): w, 6 tensors a layer as above; biases
// empty or (b_ih, b_hh) a layer; h0, c0 (L, N, H).  The per-layer op's bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "../cell_math.h"
#include "cells.h"
#include "int8_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FR_Q_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FR_Q_CLONES
#endif

namespace fastrnn {
namespace cpu {
namespace {

I8Isa isa_of(c10::string_view name) {
  for (I8Isa isa : {I8Isa::kVnni, I8Isa::kAvx2, I8Isa::kNeonDot, I8Isa::kScalar}) {
    if (name == i8_name(isa)) {
      TORCH_CHECK(i8_runs(isa), "fastrnn int8: the '", i8_name(isa), "' kernel needs ", i8_needs(isa),
                  ", which this CPU (or this build) lacks");
      return isa;
    }
  }
  TORCH_CHECK(false, "fastrnn int8: unknown kernel '", std::string(name), "'");
}

// One packed int8 operand (rows x k) with its per-row scales.
struct QW {
  const int8_t* p;
  const int32_t* rowsum;
  const float* scale;
  int64_t rows, k;
};

QW qw_of(const at::Tensor& packed, const at::Tensor& rowsum, const at::Tensor& scale, int64_t k, const char* name) {
  TORCH_CHECK(packed.scalar_type() == at::kChar && rowsum.scalar_type() == at::kInt &&
                  scale.scalar_type() == at::kFloat,
              "fastrnn int8: ", name, ": packed int8, rowsum int32, scale float32");
  TORCH_CHECK(packed.is_contiguous() && rowsum.is_contiguous() && scale.is_contiguous() && !packed.is_cuda(),
              "fastrnn int8: ", name, ": contiguous CPU tensors");
  const int64_t rows = scale.numel();
  TORCH_CHECK(k <= kI8MaxK, "fastrnn int8: ", name, " has ", k, " columns; the int8 kernels take at most ", kI8MaxK,
              " (their 32-bit sums)");
  TORCH_CHECK(packed.numel() == i8_packed_bytes(rows, k) && rowsum.numel() == i8_rpad(rows),
              "fastrnn int8: ", name, ": packed for ", packed.numel(), " bytes, expected ", rows, " rows of ", k);
  return QW{packed.data_ptr<int8_t>(), rowsum.data_ptr<int32_t>(), scale.data_ptr<float>(), rows, k};
}

// out (n x rows, row stride ldo) = dequant(W @ q^T) + bias (+ out), the blocks
// split across the intra-op threads where the product is big enough to pay
// for waking them: 2^21 multiply-adds a thread (~10 us of VNNI).  A step
// forks and joins once per product, and on a busy machine (2 cores, another
// library's threads still spinning) a fork can cost more than a small product:
// with 2^18, LSTM N 8 H 256 ran 1.6-3.5 ms a call between runs, 2.2 ms on one
// thread (bench/quantized.py, csrc/NOTES.md).
void gemm(I8Isa isa, const QW& w, int64_t n, const int8_t* q, const float* xscale, const float* bias,
          bool accumulate, float* out, int64_t ldo) {
  const int64_t blocks = i8_rpad(w.rows) / kI8Rows;
  const int64_t per_block = kI8Rows * i8_kpad(w.k) * n;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 21) / std::max<int64_t>(1, per_block));
  if (blocks <= grain || at::in_parallel_region()) {
    i8_gemm(isa, w.rows, n, w.k, w.p, w.rowsum, w.scale, q, xscale, bias, accumulate, out, ldo, 0, blocks);
    return;
  }
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    i8_gemm(isa, w.rows, n, w.k, w.p, w.rowsum, w.scale, q, xscale, bias, accumulate, out, ldo, b0, b1);
  });
}

void quantize(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, float* scale) {
  const int64_t kp = i8_kpad(k);
  if (m * k < (int64_t(1) << 16) || at::in_parallel_region()) {
    i8_quantize_rows(m, k, x, ldx, q, scale);
    return;
  }
  at::parallel_for(0, m, std::max<int64_t>(1, (int64_t(1) << 16) / k), [&](int64_t r0, int64_t r1) {
    i8_quantize_rows(r1 - r0, k, x + r0 * ldx, ldx, q + r0 * kp, scale + r0);
  });
}

// The gates of one batch row: pre-activations xg (input side, bias in) and gh
// (recurrent side) of H units per gate; act: scratch of G H floats.  Two passes,
// activations first, then the state, as the float path's rows (lstm.cpp: one
// loop per unit was too long a chain for out-of-order execution to overlap).
FR_Q_CLONES void lstm_row(int64_t H, const float* __restrict xg, const float* __restrict gh,
                          const float* __restrict c_prev, float* __restrict c, float* __restrict hu,
                          float* __restrict act) {
  for (int64_t q = 0; q < 4; ++q) {
    const float* x = xg + q * H;
    const float* g = gh + q * H;
    float* a = act + q * H;
    if (q == 2)
      for (int64_t j = 0; j < H; ++j) a[j] = fr_tanh(x[j] + g[j]);
    else
      for (int64_t j = 0; j < H; ++j) a[j] = fr_sigmoid(x[j] + g[j]);
  }
  for (int64_t j = 0; j < H; ++j) {
    const float cn = lstm_cell_state<float>(act[j], act[H + j], act[2 * H + j], c_prev[j]);
    c[j] = cn;
    hu[j] = lstm_cell_output<float>(act[3 * H + j], cn);
  }
}

FR_Q_CLONES void gru_row(int64_t H, const float* __restrict xg, const float* __restrict gh,
                         const float* __restrict h_prev, float* __restrict h, float* __restrict act) {
  for (int64_t j = 0; j < 2 * H; ++j) act[j] = fr_sigmoid(xg[j] + gh[j]);  // r, z
  for (int64_t j = 0; j < H; ++j) {
    const float n = gru_cell_n<float>(xg[2 * H + j], act[j], gh[2 * H + j]);
    h[j] = gru_cell_h<float>(act[H + j], n, h_prev[j]);
  }
}

FR_Q_CLONES void rnn_row(int64_t H, const float* __restrict xg, const float* __restrict gh, bool relu,
                         float* __restrict h) {
  if (relu)
    for (int64_t j = 0; j < H; ++j) h[j] = rnn_act<float>(xg[j] + gh[j], true);
  else
    for (int64_t j = 0; j < H; ++j) h[j] = fr_tanh(xg[j] + gh[j]);
}

std::tuple<at::Tensor, at::Tensor> int8_pack_op(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && !w.is_cuda(),
              "fastrnn int8_pack: a 2-D int8 CPU tensor");
  const at::Tensor W = w.contiguous();
  const int64_t rows = W.size(0), k = W.size(1);
  TORCH_CHECK(k >= 1, "fastrnn int8_pack: no columns");
  at::Tensor packed = at::empty({i8_packed_bytes(rows, k)}, w.options());
  at::Tensor rowsum = at::empty({i8_rpad(rows)}, w.options().dtype(at::kInt));
  i8_pack(W.data_ptr<int8_t>(), k, rows, k, packed.data_ptr<int8_t>(), rowsum.data_ptr<int32_t>());
  return {packed, rowsum};
}

// One layer and direction of an int8 recurrence: its operands checked and
// packed views taken, its biases folded, its state and per-step scratch.  The
// per-layer op runs one; the stack op runs several, pipelined across threads.
struct Layer {
  bool lstm, gru, relu, proj;
  I8Isa isa;
  int64_t T, N, I, G, H, R;
  QW ih{}, hh{}, hr{};
  std::vector<float> bin;  // the input side's bias: b_ih (+ b_hh but for the GRU)
  bool has_bin = false;
  at::Tensor bhh;  // (the GRU keeps b_hh on the recurrent side: its n gate multiplies it by r)
  const float* bhn = nullptr;
  at::Tensor h, c;  // the state, carried in place: h_n, c_n
  std::vector<float> gh, hnew, cnew, hu, act, hs;
  std::vector<int8_t> hq;

  Layer(c10::string_view mode, I8Isa isa_, int64_t T_, int64_t N_, int64_t I_, at::TensorList w,
        const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
        const c10::optional<at::Tensor>& c0)
      : lstm(cell_of(mode) == Cell::kLstm), gru(cell_of(mode) == Cell::kGru), relu(cell_of(mode) == Cell::kRelu),
        proj(w.size() == 9), isa(isa_), T(T_), N(N_), I(I_), G(gates_of(cell_of(mode))) {
    TORCH_CHECK(w.size() == 6 || (lstm && w.size() == 9), "fastrnn int8_layer: 6 weight tensors (9 projected)");
    ih = qw_of(w[0], w[1], w[2], I, "w_ih");
    TORCH_CHECK(ih.rows % G == 0, "fastrnn int8_layer: w_ih rows not a multiple of the gates");
    H = ih.rows / G;
    R = proj ? w[8].numel() : H;
    hh = qw_of(w[3], w[4], w[5], R, "w_hh");
    TORCH_CHECK(hh.rows == G * H, "fastrnn int8_layer: w_hh has ", hh.rows, " rows, expected ", G * H);
    if (proj) hr = qw_of(w[6], w[7], w[8], H, "w_hr");
    TORCH_CHECK(h0.dim() == 2 && h0.size(0) == N && h0.size(1) == R && h0.scalar_type() == at::kFloat,
                "fastrnn int8_layer: h0 must be (N, R) float32");
    TORCH_CHECK(!lstm || (c0.has_value() && c0->dim() == 2 && c0->size(0) == N && c0->size(1) == H &&
                          c0->scalar_type() == at::kFloat),
                "fastrnn int8_layer: c0 must be (N, H) float32");
    for (const auto* b : {&b_ih, &b_hh})
      TORCH_CHECK(!b->has_value() || ((*b)->numel() == G * H && (*b)->scalar_type() == at::kFloat),
                  "fastrnn int8_layer: biases of ", G * H, " float32");
    // the input side takes b_ih, and b_hh but for the GRU (whose n gate multiplies
    // it by r: it goes in with the recurrent product)
    bin.assign(G * H, 0.0f);
    has_bin = b_ih.has_value() || (!gru && b_hh.has_value());
    if (b_ih.has_value()) {
      const at::Tensor b = b_ih->contiguous();
      const float* bp = b.data_ptr<float>();  // once: data_ptr checks the dtype on every call (~10 us a call)
      for (int64_t j = 0; j < G * H; ++j) bin[j] += bp[j];
    }
    if (b_hh.has_value()) {
      bhh = b_hh->contiguous();
      const float* bp = bhh.data_ptr<float>();
      if (gru)
        bhn = bp;
      else
        for (int64_t j = 0; j < G * H; ++j) bin[j] += bp[j];
    }
    h = h0.contiguous().clone();
    c = lstm ? c0->contiguous().clone() : at::empty({0}, h0.options());
    gh.resize(N * G * H);
    hnew.resize(N * R);
    cnew.resize(lstm ? N * H : 0);
    hu.resize(proj ? N * H : 0);
    act.resize(G * H);
    hq.resize(N * std::max(i8_kpad(R), i8_kpad(H)));
    hs.resize(N);
  }

  // xg (m x G H) = the input side of the m rows of x (m x I): quantized per row,
  // times W_ih, plus the input side's bias
  void project(int64_t m, const float* x, float* xg) const {
    std::vector<int8_t> xq(m * i8_kpad(I));
    std::vector<float> xs(m);
    quantize(m, I, x, I, xq.data(), xs.data());
    gemm(isa, ih, m, xq.data(), xs.data(), has_bin ? bin.data() : nullptr, false, xg, G * H);
  }

  // Step s of the recurrence: row b (if s < len[b]) at time t = s (reverse: len[b]
  // - 1 - s) from its input side xg_of(t, b), into the state and y (T, N, R).
  template <typename XG>
  void step(int64_t s, const int64_t* len, bool reverse, float* yp, const XG& xg_of) {
    float* hp = h.data_ptr<float>();
    float* cp = lstm ? c.data_ptr<float>() : nullptr;
    quantize(N, R, hp, R, hq.data(), hs.data());
    gemm(isa, hh, N, hq.data(), hs.data(), bhn, false, gh.data(), G * H);
    for (int64_t b = 0; b < N; ++b) {
      if (s >= len[b]) continue;
      const int64_t t = reverse ? len[b] - 1 - s : s;
      const float* xr = xg_of(t, b);
      const float* ghr = gh.data() + b * G * H;
      if (lstm)
        lstm_row(H, xr, ghr, cp + b * H, cnew.data() + b * H, proj ? hu.data() + b * H : hnew.data() + b * R,
                 act.data());
      else if (gru)
        gru_row(H, xr, ghr, hp + b * R, hnew.data() + b * R, act.data());
      else
        rnn_row(H, xr, ghr, relu, hnew.data() + b * R);
    }
    if (proj) {
      quantize(N, H, hu.data(), H, hq.data(), hs.data());
      gemm(isa, hr, N, hq.data(), hs.data(), nullptr, false, hnew.data(), R);
    }
    for (int64_t b = 0; b < N; ++b) {
      if (s >= len[b]) continue;
      const int64_t t = reverse ? len[b] - 1 - s : s;
      std::copy(hnew.data() + b * R, hnew.data() + (b + 1) * R, hp + b * R);
      std::copy(hnew.data() + b * R, hnew.data() + (b + 1) * R, yp + (t * N + b) * R);
      if (lstm) std::copy(cnew.data() + b * H, cnew.data() + (b + 1) * H, cp + b * H);
    }
  }
};

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && !x.is_cuda(), "fastrnn ", op,
              ": x must be a (T, N, I) float32 CPU tensor");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_layer_op(
    c10::string_view mode, const at::Tensor& x_, at::TensorList w, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0_, const c10::optional<at::Tensor>& c0_,
    const c10::optional<at::Tensor>& lengths_, bool reverse, c10::string_view isa_name) {
  const I8Isa isa = isa_of(isa_name);
  check_x(x_, "int8_layer");
  const at::Tensor x = x_.contiguous();
  const int64_t T = x.size(0), N = x.size(1), I = x.size(2);
  Layer lay(mode, isa, T, N, I, w, b_ih, b_hh, h0_, c0_);
  std::vector<int64_t> len(N, T);
  if (lengths_.has_value()) {
    const at::Tensor L = lengths_->to(at::kLong).contiguous();
    TORCH_CHECK(L.numel() == N && !L.is_cuda(), "fastrnn int8_layer: lengths (N,) on the CPU");
    const int64_t* lp = L.data_ptr<int64_t>();
    for (int64_t b = 0; b < N; ++b) {
      TORCH_CHECK(lp[b] >= 1 && lp[b] <= T, "fastrnn int8_layer: lengths must be in [1, ", T, "], got ", lp[b]);
      len[b] = lp[b];
    }
  }
  // the input side, every (t, b) row at once
  const int64_t GH = lay.G * lay.H;
  at::Tensor xg = at::empty({T * N, GH}, x.options());
  lay.project(T * N, x.data_ptr<float>(), xg.data_ptr<float>());
  at::Tensor y = lengths_.has_value() ? at::zeros({T, N, lay.R}, x.options()) : at::empty({T, N, lay.R}, x.options());
  const float* xgp = xg.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t s = 0; s < T; ++s)
    lay.step(s, len.data(), reverse, yp, [&](int64_t t, int64_t b) { return xgp + (t * N + b) * GH; });
  return {y, lay.h, lay.c};
}

void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A stack of L unidirectional layers without projection or lengths, the layers
// pipelined across the threads: layer l runs on its own thread, step s as soon
// as layer l - 1 has published its step s, with its input side per step (N rows
// times W_ih).  Each thread keeps its layer's W_ih and W_hh in its own core's
// caches, and the layers' steps overlap: at batch 1 a step is bound by reading
// the weights (LSTM H 256: 512 KB of int8 a layer step), so two threads run a
// 2-layer stack in about the time of one layer (bench/quantized.py).  The
// results are the per-layer op's bits: every product's sums are exact integers,
// and each row of the input side is quantized alone either way.
//
// Each layer waits only on the layer below, which belongs to a lower index:
// at::parallel_for gives each thread a run of consecutive layers in order (the
// caller the first), so the lowest layer not done never waits and there is no
// deadlock, whatever the thread count; with one thread the layers run one after
// the other.  Waiting spins (yielding after a while, for a busy machine).
std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_stack_op(
    c10::string_view mode, const at::Tensor& x_, at::TensorList w, at::TensorList biases, const at::Tensor& h0,
    const c10::optional<at::Tensor>& c0, c10::string_view isa_name) {
  const I8Isa isa = isa_of(isa_name);
  check_x(x_, "int8_stack");
  const at::Tensor x = x_.contiguous();
  const int64_t T = x.size(0), N = x.size(1), I = x.size(2);
  const int64_t L = static_cast<int64_t>(w.size()) / 6;
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(w.size()) == 6 * L,
              "fastrnn int8_stack: 6 weight tensors a layer (no projection), got ", w.size());
  TORCH_CHECK(biases.empty() || static_cast<int64_t>(biases.size()) == 2 * L,
              "fastrnn int8_stack: no biases or 2 a layer (b_ih, b_hh), got ", biases.size());
  TORCH_CHECK(h0.dim() == 3 && h0.size(0) == L, "fastrnn int8_stack: h0 must be (L, N, H)");
  TORCH_CHECK(cell_of(mode) != Cell::kLstm || (c0.has_value() && c0->dim() == 3 && c0->size(0) == L),
              "fastrnn int8_stack: c0 must be (L, N, H)");
  std::vector<std::unique_ptr<Layer>> layers;
  for (int64_t l = 0; l < L; ++l) {
    auto opt = [&](int64_t i) { return biases.empty() ? c10::optional<at::Tensor>() : c10::optional<at::Tensor>(biases[i]); };
    layers.emplace_back(new Layer(mode, isa, T, N, l == 0 ? I : layers[l - 1]->H, w.slice(6 * l, 6), opt(2 * l),
                                  opt(2 * l + 1), h0[l], c0.has_value() ? c10::optional<at::Tensor>((*c0)[l])
                                                                        : c10::optional<at::Tensor>()));
    TORCH_CHECK(!layers.back()->proj, "fastrnn int8_stack: no projection");
  }
  std::vector<at::Tensor> ys;
  for (int64_t l = 0; l < L; ++l) ys.push_back(at::empty({T, N, layers[l]->H}, x.options()));
  std::vector<int64_t> len(N, T);
  std::unique_ptr<std::atomic<int64_t>[]> done(new std::atomic<int64_t>[L]);
  for (int64_t l = 0; l < L; ++l) done[l].store(0);
  // Pipelined where the layers can keep the threads busy (no more threads than
  // layers), or where a step's recurrent product is small enough that gemm()
  // would not split it across more than two threads anyway (its split is by
  // 2^21 multiply-adds a thread): on a machine of many cores a large batch's
  // products are better split across all of them, one layer after the other.
  // (Measured on 2 cores only: there every call of 2+ layers is pipelined.)
  const Layer& top = *layers.back();
  const bool pipelined = L >= 2 && at::get_num_threads() > 1 && !at::in_parallel_region() &&
                         (at::get_num_threads() <= L || top.G * top.H * top.R * N <= (int64_t(1) << 22));
  auto run = [&](int64_t l) {
    Layer& lay = *layers[l];
    const int64_t GH = lay.G * lay.H, In = lay.I;
    const float* in = l == 0 ? x.data_ptr<float>() : ys[l - 1].data_ptr<float>();
    float* yp = ys[l].data_ptr<float>();
    if (!pipelined) {  // the whole input side at once, as the per-layer op
      std::vector<float> xg(T * N * GH);
      lay.project(T * N, in, xg.data());
      for (int64_t s = 0; s < T; ++s)
        lay.step(s, len.data(), false, yp, [&](int64_t t, int64_t b) { return xg.data() + (t * N + b) * GH; });
      return;
    }
    std::vector<float> xg(N * GH);
    for (int64_t s = 0; s < T; ++s) {
      if (l > 0) {
        for (int64_t spins = 0; done[l - 1].load(std::memory_order_acquire) <= s; ++spins) {
          if (spins < 4096)
            spin_pause();
          else
            std::this_thread::yield();
        }
      }
      lay.project(N, in + s * N * In, xg.data());
      lay.step(s, len.data(), false, yp, [&](int64_t, int64_t b) { return xg.data() + b * GH; });
      done[l].store(s + 1, std::memory_order_release);
    }
  };
  if (pipelined)
    at::parallel_for(0, L, 1, [&](int64_t l0, int64_t l1) {
      for (int64_t l = l0; l < l1; ++l) run(l);
    });
  else
    for (int64_t l = 0; l < L; ++l) run(l);
  std::vector<at::Tensor> hs, cs;
  for (const auto& lay : layers) {
    hs.push_back(lay->h);
    if (lay->lstm) cs.push_back(lay->c);
  }
  return {ys.back(), at::stack(hs), cs.empty() ? at::empty({0}, x.options()) : at::stack(cs)};
}

}  // namespace

}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_FRAGMENT(fastrnn_ext, m) {
  m.def("int8_pack(Tensor w) -> (Tensor, Tensor)");
  m.def("int8_layer(str mode, Tensor x, Tensor[] w, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor? c0, "
        "Tensor? lengths, bool reverse, str isa) -> (Tensor, Tensor, Tensor)");
  m.def("int8_stack(str mode, Tensor x, Tensor[] w, Tensor[] biases, Tensor h0, Tensor? c0, str isa) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastrnn_ext, CPU, m) {
  m.impl("int8_pack", &fastrnn::cpu::int8_pack_op);
  m.impl("int8_layer", &fastrnn::cpu::int8_layer_op);
  m.impl("int8_stack", &fastrnn::cpu::int8_stack_op);
}

// no backward: called with tensors that require grad, its outputs say so when a
// backward reaches them (fastrnn.quantized refuses earlier, with its own message)
TORCH_LIBRARY_IMPL(fastrnn_ext, Autograd, m) {
  m.impl("int8_layer", torch::autograd::autogradNotImplementedFallback());
  m.impl("int8_stack", torch::autograd::autogradNotImplementedFallback());
  m.impl("int8_pack", torch::autograd::autogradNotImplementedFallback());
}
