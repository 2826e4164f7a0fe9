// Persistent CUDA recurrences: one cooperative launch per layer and direction.
//
// Grid (ceil(H / U), ceil(N / BN)) of blocks with BN * U threads.  Block (x, y)
// owns hidden units [x U, x U + U) -- all gates of them -- for batch rows
// [y BN, y BN + BN), one thread per (row, unit) pair, for the whole sequence;
// its thread keeps that pair's state (h, c, dh, dc) in registers.  The block's
// slice of W_hh is copied to shared memory once, in the storage dtype D, and
// every product accumulates in fp32 in a fixed order (no atomics: bit-identical
// run to run).
//
// Forward step t: stage h_{t-1} of the block's rows (fp32) chunk by chunk from
// global memory into shared memory, form the G gate products of each pair
// (W slice k-major: Ws[(k G + g) U + u] = W_hh[g H + j0 + u][k]), run the gate
// math, write y / ws and the pair's h_t into the exchange buffer hx[(t+1) & 1],
// then one grid barrier.  Step t reads hx[t & 1] (h0 itself at t = 0); a block
// only rewrites a parity two steps later, after a barrier every block passed
// after reading it, so one barrier per step suffices.
//
// Backward step s (t = T-1-s): dh_t of the pair is its carried part plus
// dG_{t+1} @ W_hh[:, j] -- all G H gate gradients of step t+1 of its row, staged
// from the exchange buffer gx[(s-1) & 1] (W slice by columns:
// Ws[q U + u] = W_hh[q][j0 + u]); then the gate gradients of step t, written to
// dxg (and dgh) and to gx[s & 1], then one grid barrier.  A last phase after
// the loop forms dh0 from the gradients of step 0.
//
// The host picks U before launching (persistent_plan.h: every power of two
// whose dynamic shared memory fits the opt-in limit and whose grid is
// co-resident by the occupancy query is a candidate) and launches with
// cudaLaunchCooperativeKernel, which refuses, rather than deadlocks on, a grid
// that cannot be co-resident; a refusal falls back to the per-step path.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "../cell_math.h"
#include "persistent.h"
#include "persistent_plan.h"

namespace fastrnn {
namespace cuda {
namespace {

namespace cg = cooperative_groups;

enum Cell : int { kLSTM = 0, kGRU = 1, kRNN = 2 };

__host__ __device__ constexpr int gates_of(int cell) {
  return cell == kLSTM ? 4 : (cell == kGRU ? 3 : 1);
}

// kMaxThreads (the __launch_bounds__ below), kMaxRows and kChunk: persistent_plan.h

template <typename D>
__device__ __forceinline__ float ld(const D* p) {
  return static_cast<float>(*p);
}

template <typename D>
__device__ __forceinline__ D st(float v) {
  return static_cast<D>(v);
}

// acc[g] += sum_k src[b][k] * Ws[(k NG + g) U + u] for k in [0, K), with src
// (fp32, rows K apart) written by other blocks, so read through L2 (__ldcg).
// Every thread of the block calls it (it contains __syncthreads) and
// accumulates, without branches: threads past H or N read zero W columns or
// zero staged rows and their results are never stored.
template <int NG, typename D>
__device__ __forceinline__ void stage_dot(float (&acc)[NG], const D* __restrict__ Ws,
                                          float* __restrict__ hs, const float* src, int K,
                                          int N, int b0, int BN, int KC, int U, int u,
                                          int rb) {
  const int LD = KC + 1;  // odd row stride: the rows of one warp hit distinct banks
  for (int k0 = 0; k0 < K; k0 += KC) {
    const int kc = static_cast<int>(K - k0 < KC ? K - k0 : KC);
    __syncthreads();  // the previous chunk (or step) is consumed
    for (int idx = threadIdx.x; idx < BN * kc; idx += blockDim.x) {
      const int r = idx / kc, kk = idx - r * kc;
      const int bb = b0 + r;
      hs[r * LD + kk] = bb < N ? __ldcg(src + bb * K + k0 + kk) : 0.0f;
    }
    __syncthreads();
    const float* hr = hs + rb * LD;
    const D* wk = Ws + k0 * NG * U + u;
#pragma unroll 8
    for (int kk = 0; kk < kc; ++kk) {
      const float hv = hr[kk];
#pragma unroll
      for (int g = 0; g < NG; ++g) acc[g] = fmaf(hv, ld(wk + (kk * NG + g) * U), acc[g]);
    }
  }
}

template <typename D>
struct FwdParams {
  int T, N, H;
  int U, BN, KC;
  int stage_off;  // bytes: the staging area follows the W slice
  const D* xg;        // (T, N, G H)
  const D* w;         // (G H, H)
  const D* bias;      // GRU b_hh (3H) or nullptr
  const D* h0;        // (N, H), read at the start (hx[0] holds it in fp32)
  const D* c0;        // (N, H), LSTM
  const int64_t* len; // (N) or nullptr
  D* y;               // (T, N, H)
  float* ws;          // (T, N, 5H | 4H) or nullptr
  float* hx;          // (2, N, H) exchange
  D* hn;              // (N, H)
  D* cn;              // (N, H), LSTM
  bool relu;
};

template <int CELL, typename D>
__global__ void __launch_bounds__(kMaxThreads) persistent_fwd(const __grid_constant__ FwdParams<D> p) {
  constexpr int G = gates_of(CELL);
  extern __shared__ float4 smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_raw);
  D* Ws = reinterpret_cast<D*>(smem);
  float* hs = reinterpret_cast<float*>(smem + p.stage_off);
  const int T = p.T, N = p.N, H = p.H;
  const int U = p.U;
  const int rb = static_cast<int>(threadIdx.x) / U, u = static_cast<int>(threadIdx.x) - rb * U;
  const int j0 = static_cast<int>(blockIdx.x) * U, b0 = static_cast<int>(blockIdx.y) * p.BN;
  const int j = j0 + u, b = b0 + rb;
  const bool mine = j < H && b < N;

  // The block's rows of W_hh, read along k (coalesced) and stored k-major.
  const int nw = static_cast<int>(G) * U * H;
  for (int idx = threadIdx.x; idx < nw; idx += blockDim.x) {
    const int k = idx % H, gu = idx / H;
    const int uu = static_cast<int>(gu % U), g = static_cast<int>(gu / U);
    const int jj = j0 + uu;
    Ws[(k * G + g) * U + uu] = jj < H ? p.w[(g * H + jj) * H + k] : st<D>(0.0f);
  }

  float h = 0.0f, c = 0.0f, br = 0.0f, bz = 0.0f, bn = 0.0f;
  int Lb = T;
  if (mine) {
    h = ld(p.h0 + b * H + j);
    if constexpr (CELL == kLSTM) c = ld(p.c0 + b * H + j);
    if constexpr (CELL == kGRU) {
      if (p.bias != nullptr) {
        br = ld(p.bias + j);
        bz = ld(p.bias + H + j);
        bn = ld(p.bias + 2 * H + j);
      }
    }
    if (p.len != nullptr) Lb = static_cast<int>(p.len[b]);
  }
  cg::grid_group grid = cg::this_grid();
  const int NH = N * H;
  for (int t = 0; t < T; ++t) {
    float acc[G];
#pragma unroll
    for (int g = 0; g < G; ++g) acc[g] = 0.0f;
    // h_{t-1} (the host put h0 into hx[0]); stage_dot's first __syncthreads
    // also orders the W slice stores above before their first use
    stage_dot<G, D>(acc, Ws, hs, p.hx + (t & 1) * NH, H, N, b0, p.BN, p.KC, U, u, rb);
    if (mine) {
      const bool active = t < Lb;
      const int row = t * N + b;
      if constexpr (CELL == kLSTM) {
        const D* x = p.xg + row * 4 * H + j;
        float* w = p.ws != nullptr ? p.ws + row * 5 * H + j : nullptr;
        if (active) {
          float i, f, gg, o, cnew, hnew;
          lstm_cell_forward<float>(ld(x) + acc[0], ld(x + H) + acc[1], ld(x + 2 * H) + acc[2],
                                   ld(x + 3 * H) + acc[3], c, i, f, gg, o, cnew, hnew);
          c = cnew;
          h = hnew;
          if (w != nullptr) {
            w[0] = i;
            w[H] = f;
            w[2 * H] = gg;
            w[3 * H] = o;
            w[4 * H] = cnew;
          }
        } else if (w != nullptr) {
          w[0] = 0.0f;
          w[H] = 0.0f;
          w[2 * H] = 0.0f;
          w[3 * H] = 0.0f;
          w[4 * H] = c;  // the saved c_t of an inactive step is the carried state
        }
      } else if constexpr (CELL == kGRU) {
        const D* x = p.xg + row * 3 * H + j;
        float* w = p.ws != nullptr ? p.ws + row * 4 * H + j : nullptr;
        if (active) {
          const float hn = acc[2] + bn;
          float r, z, n, hnew;
          gru_cell_forward<float>(ld(x), ld(x + H), ld(x + 2 * H), acc[0] + br, acc[1] + bz, hn, h,
                                  r, z, n, hnew);
          h = hnew;
          if (w != nullptr) {
            w[0] = r;
            w[H] = z;
            w[2 * H] = n;
            w[3 * H] = hn;
          }
        } else if (w != nullptr) {
          w[0] = 0.0f;
          w[H] = 0.0f;
          w[2 * H] = 0.0f;
          w[3 * H] = 0.0f;
        }
      } else {
        if (active) h = rnn_act<float>(ld(p.xg + row * H + j) + acc[0], p.relu);
      }
      p.y[row * H + j] = active ? st<D>(h) : st<D>(0.0f);
      p.hx[((t + 1) & 1) * NH + b * H + j] = h;  // carried unchanged when inactive
    }
    if (t + 1 < T) grid.sync();  // nothing reads hx after the last step
  }
  if (mine) {
    p.hn[b * H + j] = st<D>(h);
    if constexpr (CELL == kLSTM) p.cn[b * H + j] = st<D>(c);
  }
}

template <typename D>
struct BwdParams {
  int T, N, H;
  int U, BN, KC;
  int stage_off;
  const D* dy;         // (T, N, H)
  const D* dhn;        // (N, H)
  const D* dcn;        // (N, H), LSTM
  const D* w;          // (G H, H)
  const D* prev0;      // c0 (LSTM) / h0 (GRU), (N, H)
  const float* ws;     // LSTM (T, N, 5H), GRU (T, N, 4H)
  const D* y;          // GRU, RNN: (T, N, H)
  const int64_t* len;  // (N) or nullptr
  D* dxg;              // (T, N, G H)
  D* dgh;              // GRU (T, N, 3H)
  D* dh0;              // (N, H)
  D* dc0;              // (N, H), LSTM
  float* gx;           // (2, N, G H) exchange
  bool relu;
};

template <int CELL, typename D>
__global__ void __launch_bounds__(kMaxThreads) persistent_bwd(const __grid_constant__ BwdParams<D> p) {
  constexpr int G = gates_of(CELL);
  extern __shared__ float4 smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_raw);
  D* Ws = reinterpret_cast<D*>(smem);
  float* hs = reinterpret_cast<float*>(smem + p.stage_off);
  const int T = p.T, N = p.N, H = p.H, GH = G * H;
  const int U = p.U;
  const int rb = static_cast<int>(threadIdx.x) / U, u = static_cast<int>(threadIdx.x) - rb * U;
  const int j0 = static_cast<int>(blockIdx.x) * U, b0 = static_cast<int>(blockIdx.y) * p.BN;
  const int j = j0 + u, b = b0 + rb;
  const bool mine = j < H && b < N;

  // Columns j0 .. j0+U-1 of W_hh: Ws[q U + uu] = W_hh[q][j0 + uu].
  const int nw = GH * U;
  for (int idx = threadIdx.x; idx < nw; idx += blockDim.x) {
    const int q = idx / U;
    const int uu = static_cast<int>(idx - q * U);
    const int jj = j0 + uu;
    Ws[idx] = jj < H ? p.w[q * H + jj] : st<D>(0.0f);
  }

  // carry: the part of dL/dh_t that does not come through dG_{t+1} @ W_hh
  // (dh_n at the top; dh * z for GRU; everything on an inactive step)
  float carry = 0.0f, dc = 0.0f;
  int Lb = T;
  if (mine) {
    carry = ld(p.dhn + b * H + j);
    if constexpr (CELL == kLSTM) dc = ld(p.dcn + b * H + j);
    if (p.len != nullptr) Lb = static_cast<int>(p.len[b]);
  }
  cg::grid_group grid = cg::this_grid();
  const int NGH = N * GH;
  for (int s = 0; s <= T; ++s) {
    // dG of step T-s (written in phase s-1) times W_hh[:, j]; at s = 0 it reads
    // gx[1], which the host zeroed
    float rec[1] = {0.0f};
    stage_dot<1, D>(rec, Ws, hs, p.gx + ((s + 1) & 1) * NGH, GH, N, b0, p.BN, p.KC, U, u, rb);
    const float dh_in = carry + rec[0];
    if (s == T) {  // after step 0: dh0 (uniform exit, no barrier follows)
      if (mine) {
        p.dh0[b * H + j] = st<D>(dh_in);
        if constexpr (CELL == kLSTM) p.dc0[b * H + j] = st<D>(dc);
      }
      break;
    }
    const int t = T - 1 - s;
    if (mine) {
      const bool active = t < Lb;
      const int row = t * N + b;
      float* gq = p.gx + (s & 1) * NGH + b * GH + j;
      D* dx = p.dxg + row * GH + j;
      if constexpr (CELL == kLSTM) {
        float di = 0.0f, df = 0.0f, dg = 0.0f, d_o = 0.0f;
        if (active) {
          const float dht = dh_in + ld(p.dy + row * H + j);
          const float* w = p.ws + row * 5 * H + j;
          const float cp = t > 0 ? p.ws[(row - N) * 5 * H + 4 * H + j] : ld(p.prev0 + b * H + j);
          lstm_cell_backward<float>(w[0], w[H], w[2 * H], w[3 * H], w[4 * H], cp, dht, dc, di, df,
                                    dg, d_o);
          carry = 0.0f;
        } else {
          carry = dh_in;  // dy ignored, dc passes through
        }
        gq[0] = di;
        gq[H] = df;
        gq[2 * H] = dg;
        gq[3 * H] = d_o;
        dx[0] = st<D>(di);
        dx[H] = st<D>(df);
        dx[2 * H] = st<D>(dg);
        dx[3 * H] = st<D>(d_o);
      } else if constexpr (CELL == kGRU) {
        float dr = 0.0f, dz = 0.0f, dn = 0.0f, dhn = 0.0f;
        if (active) {
          const float dht = dh_in + ld(p.dy + row * H + j);
          const float* w = p.ws + row * 4 * H + j;
          const float hp = t > 0 ? ld(p.y + (row - N) * H + j) : ld(p.prev0 + b * H + j);
          float dhd;
          gru_cell_backward<float>(w[0], w[H], w[2 * H], w[3 * H], hp, dht, dr, dz, dn, dhn, dhd);
          carry = dhd;
        } else {
          carry = dh_in;
        }
        gq[0] = dr;
        gq[H] = dz;
        gq[2 * H] = dhn;
        dx[0] = st<D>(dr);
        dx[H] = st<D>(dz);
        dx[2 * H] = st<D>(dn);
        D* dgo = p.dgh + row * GH + j;
        dgo[0] = st<D>(dr);
        dgo[H] = st<D>(dz);
        dgo[2 * H] = st<D>(dhn);
      } else {
        float d = 0.0f;
        if (active) {
          d = (dh_in + ld(p.dy + row * H + j)) * rnn_act_grad<float>(ld(p.y + row * H + j), p.relu);
          carry = 0.0f;
        } else {
          carry = dh_in;
        }
        gq[0] = d;
        dx[0] = st<D>(d);
      }
    }
    grid.sync();  // gx[s & 1] complete before phase s+1 reads it
  }
}

// ------------------------------------------------------------------ host side
// Plan, PlanProblem, PlanDevice and the search itself: persistent_plan.h.
struct DeviceInfo {
  int sms = 0, smem_optin = 0, coop = 0;
};

std::mutex g_mutex;
std::atomic<int64_t> g_launches{0};

DeviceInfo device_info(int dev) {
  static std::map<int, DeviceInfo> cache;  // guarded by g_mutex
  auto it = cache.find(dev);
  if (it != cache.end()) return it->second;
  DeviceInfo d;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.coop, cudaDevAttrCooperativeLaunch, dev));
  cache[dev] = d;
  return d;
}

// The launch shape of `kernel` for G gates, N rows, H units and a staged row
// length K (H forward, G H backward), or !ok when it cannot be co-resident:
// persistent_plan_search over every block size, with the device's numbers and
// the occupancy query for each candidate (exact: the query sees the kernel's
// registers and static shared memory and the device's per-SM limits).  Host
// queries only (no synchronisation); cached per kernel, device and size.
Plan plan_for(const void* kernel, int G, int64_t N, int64_t H, int64_t K, size_t es, int dev) {
  std::lock_guard<std::mutex> lock(g_mutex);
  static std::map<std::tuple<const void*, int, int64_t, int64_t>, Plan> cache;
  const auto key = std::make_tuple(kernel, dev, N, H);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const DeviceInfo info = device_info(dev);
  PlanProblem prob;
  prob.G = G;
  prob.N = N;
  prob.H = H;
  prob.K = K;
  prob.es = static_cast<int64_t>(es);
  PlanDevice pd;
  pd.sms = info.sms;
  pd.smem_optin = info.smem_optin;
  pd.coop = info.coop != 0;
  if (pd.coop && N > 0 && H > 0) {
    // the occupancy query counts 0 blocks past 48 KB unless the kernel may use more
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        info.smem_optin));
  }
  const Plan best = persistent_plan_search(prob, pd, [&](int threads, int64_t smem) {
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads,
                                                                 static_cast<size_t>(smem)));
    return per_sm;
  });
  cache[key] = best;
  return best;
}

// Cooperative launch of `kernel` with one by-value parameter struct.  False when
// the driver refuses the grid as too large to be co-resident (nothing queued).
template <typename P>
bool launch(const void* kernel, const Plan& pl, P params) {
  void* args[] = {&params};
  const cudaError_t e = cudaLaunchCooperativeKernel(kernel, dim3(pl.gx, pl.gy), dim3(pl.threads),
                                                    args, static_cast<size_t>(pl.smem),
                                                    c10::cuda::getCurrentCUDAStream());
  if (e == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // clear it; the caller runs the per-step path
    return false;
  }
  C10_CUDA_CHECK(e);
  g_launches.fetch_add(1);
  return true;
}

// Calls f(D{}) for the storage dtypes the persistent kernels take, else false.
template <typename F>
bool dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(at::Half{});
    case at::kBFloat16: return f(at::BFloat16{});
    default: return false;
  }
}

template <typename T>
T* opt_ptr(const c10::optional<at::Tensor>& x) {
  return x.has_value() ? x->data_ptr<T>() : nullptr;
}

template <int CELL, typename D>
const void* fwd_kernel() {
  return reinterpret_cast<const void*>(&persistent_fwd<CELL, D>);
}
template <int CELL, typename D>
const void* bwd_kernel() {
  return reinterpret_cast<const void*>(&persistent_bwd<CELL, D>);
}

// The kernels index in int: every tensor they touch has at most T N 5H (ws) or
// 2 N 4H (the exchange buffers) elements.
bool int_indexable(int64_t T, int64_t N, int64_t H) {
  return T > 0 && N > 0 && H > 0 && (T > 2 ? 5 * T : 10) * N * H < (int64_t{1} << 31) - 1;
}

template <int CELL, typename D>
Plan plan_of(int64_t N, int64_t H, bool backward, int dev) {
  constexpr int G = gates_of(CELL);
  return backward ? plan_for(bwd_kernel<CELL, D>(), G, N, H, G * H, sizeof(D), dev)
                  : plan_for(fwd_kernel<CELL, D>(), G, N, H, H, sizeof(D), dev);
}

// One forward: allocate, fill the parameters, launch.  Returns false when the
// configuration does not fit; `fill` sets the cell-specific fields.
template <int CELL, typename D>
bool run_forward(const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0,
                 const c10::optional<at::Tensor>& lengths, bool need_ws, int ws_gates,
                 at::Tensor& y, at::Tensor& hn, at::Tensor& ws, FwdParams<D>& p) {
  const int64_t T = xg.size(0), N = xg.size(1), H = h0.size(1);
  if (!int_indexable(T, N, H)) return false;
  const Plan pl = plan_of<CELL, D>(N, H, false, xg.get_device());
  if (!pl.ok) return false;
  const auto acc = xg.options().dtype(at::kFloat);
  y = at::empty({T, N, H}, xg.options());
  hn = at::empty({N, H}, xg.options());
  ws = need_ws && ws_gates > 0 ? at::empty({T, N, ws_gates * H}, acc) : at::empty({0}, acc);
  at::Tensor hx = at::empty({2, N, H}, acc);
  hx.select(0, 0).copy_(h0);  // h_{-1}: step 0 reads hx[0]
  p.T = static_cast<int>(T);
  p.N = static_cast<int>(N);
  p.H = static_cast<int>(H);
  p.U = pl.U;
  p.BN = pl.BN;
  p.KC = pl.KC;
  p.stage_off = static_cast<int>(pl.stage_off);
  p.xg = xg.data_ptr<D>();
  p.w = w_hh.data_ptr<D>();
  p.h0 = h0.data_ptr<D>();
  p.len = opt_ptr<int64_t>(lengths);
  p.y = y.data_ptr<D>();
  p.ws = ws.numel() > 0 ? ws.data_ptr<float>() : nullptr;
  p.hx = hx.data_ptr<float>();
  p.hn = hn.data_ptr<D>();
  return launch(fwd_kernel<CELL, D>(), pl, p);
}

template <int CELL, typename D>
bool run_backward(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                  const c10::optional<at::Tensor>& lengths, at::Tensor& dxg, at::Tensor& dh0,
                  BwdParams<D>& p) {
  constexpr int G = gates_of(CELL);
  const int64_t T = dy.size(0), N = dy.size(1), H = dy.size(2);
  if (!int_indexable(T, N, H)) return false;
  const Plan pl = plan_of<CELL, D>(N, H, true, dy.get_device());
  if (!pl.ok) return false;
  dxg = at::empty({T, N, G * H}, dy.options());
  dh0 = at::empty({N, H}, dy.options());
  // gx[1] is read (as dG of step T) in phase 0: zero, as is the sum it feeds
  at::Tensor gx = at::zeros({2, N, G * H}, dy.options().dtype(at::kFloat));
  p.T = static_cast<int>(T);
  p.N = static_cast<int>(N);
  p.H = static_cast<int>(H);
  p.U = pl.U;
  p.BN = pl.BN;
  p.KC = pl.KC;
  p.stage_off = static_cast<int>(pl.stage_off);
  p.dy = dy.data_ptr<D>();
  p.dhn = dh_n.data_ptr<D>();
  p.w = w_hh.data_ptr<D>();
  p.len = opt_ptr<int64_t>(lengths);
  p.dxg = dxg.data_ptr<D>();
  p.dh0 = dh0.data_ptr<D>();
  p.gx = gx.data_ptr<float>();
  return launch(bwd_kernel<CELL, D>(), pl, p);
}

// ------------------------------------------------------------ query ops
// cuda_persistent_plan(w_hh, N, backward): [grid x, grid y, threads, dynamic
// smem bytes, units per block, rows per block] of the persistent kernel for
// w_hh's cell (from its shape: 4H, 3H or H rows of H), dtype and device and a
// batch of N, or [] when it would not fit (the per-step path runs).
std::vector<int64_t> plan_op(const at::Tensor& w_hh, int64_t N, bool backward) {
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(1) > 0 && w_hh.size(0) % w_hh.size(1) == 0,
              "fastrnn: cuda_persistent_plan needs w_hh of shape (G H, H)");
  const int64_t H = w_hh.size(1), G = w_hh.size(0) / H;
  TORCH_CHECK(G == 4 || G == 3 || G == 1, "fastrnn: w_hh must have 4H, 3H or H rows, got ",
              w_hh.size(0));
  const c10::cuda::CUDAGuard guard(w_hh.device());
  const int dev = w_hh.get_device();
  Plan pl;
  dispatch(w_hh.scalar_type(), [&](auto tag) {
    using D = decltype(tag);
    pl = G == 4 ? plan_of<kLSTM, D>(N, H, backward, dev)
                : (G == 3 ? plan_of<kGRU, D>(N, H, backward, dev) : plan_of<kRNN, D>(N, H, backward, dev));
    return true;
  });
  if (!pl.ok) return {};
  return {pl.gx, pl.gy, pl.threads, pl.smem, pl.U, pl.BN};
}

// Persistent launches so far in this process (tests use it to see the path taken).
int64_t launches_op() { return g_launches.load(); }

}  // namespace

bool persistent_path(c10::string_view path) {
  if (path == "per-step") return false;
  TORCH_CHECK(path == "persistent", "fastrnn: the cuda path is 'persistent' or 'per-step', not '",
              std::string(path), "'");
  return true;
}

bool lstm_forward_persistent(const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0,
                             const at::Tensor& c0, const c10::optional<at::Tensor>& lengths,
                             bool need_ws,
                             std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>& out) {
  return dispatch(xg.scalar_type(), [&](auto tag) {
    using D = decltype(tag);
    FwdParams<D> p{};
    at::Tensor y, hn, ws;
    at::Tensor cn = at::empty_like(c0);
    p.c0 = c0.data_ptr<D>();
    p.cn = cn.data_ptr<D>();
    if (!run_forward<kLSTM, D>(xg, w_hh, h0, lengths, need_ws, 5, y, hn, ws, p)) return false;
    out = std::make_tuple(y, hn, cn, ws);
    return true;
  });
}

bool gru_forward_persistent(const at::Tensor& xg, const at::Tensor& w_hh,
                            const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                            const c10::optional<at::Tensor>& lengths, bool need_ws,
                            std::tuple<at::Tensor, at::Tensor, at::Tensor>& out) {
  return dispatch(xg.scalar_type(), [&](auto tag) {
    using D = decltype(tag);
    FwdParams<D> p{};
    at::Tensor y, hn, ws;
    p.bias = opt_ptr<D>(b_hh);
    if (!run_forward<kGRU, D>(xg, w_hh, h0, lengths, need_ws, 4, y, hn, ws, p)) return false;
    out = std::make_tuple(y, hn, ws);
    return true;
  });
}

bool rnn_forward_persistent(const at::Tensor& xg, const at::Tensor& w_hh, const at::Tensor& h0,
                            const c10::optional<at::Tensor>& lengths, bool relu,
                            std::tuple<at::Tensor, at::Tensor>& out) {
  return dispatch(xg.scalar_type(), [&](auto tag) {
    using D = decltype(tag);
    FwdParams<D> p{};
    at::Tensor y, hn, ws;
    p.relu = relu;
    if (!run_forward<kRNN, D>(xg, w_hh, h0, lengths, false, 0, y, hn, ws, p)) return false;
    out = std::make_tuple(y, hn);
    return true;
  });
}

bool lstm_backward_persistent(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                              const at::Tensor& w_hh, const at::Tensor& c0, const at::Tensor& ws,
                              const c10::optional<at::Tensor>& lengths,
                              std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>& out) {
  return dispatch(dy.scalar_type(), [&](auto tag) {
    using D = decltype(tag);
    BwdParams<D> p{};
    at::Tensor dxg, dh0;
    at::Tensor dc0 = at::empty_like(c0);
    p.dcn = dc_n.data_ptr<D>();
    p.prev0 = c0.data_ptr<D>();
    p.ws = ws.data_ptr<float>();
    p.dc0 = dc0.data_ptr<D>();
    if (!run_backward<kLSTM, D>(dy, dh_n, w_hh, lengths, dxg, dh0, p)) return false;
    out = std::make_tuple(dxg, dh0, dc0, at::empty({0}, dy.options().dtype(at::kFloat)));
    return true;
  });
}

bool gru_backward_persistent(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                             const at::Tensor& h0, const at::Tensor& y, const at::Tensor& ws,
                             const c10::optional<at::Tensor>& lengths,
                             std::tuple<at::Tensor, at::Tensor, at::Tensor>& out) {
  return dispatch(dy.scalar_type(), [&](auto tag) {
    using D = decltype(tag);
    BwdParams<D> p{};
    at::Tensor dxg, dh0;
    at::Tensor dgh = at::empty({dy.size(0), dy.size(1), 3 * dy.size(2)}, dy.options());
    p.prev0 = h0.data_ptr<D>();
    p.ws = ws.data_ptr<float>();
    p.y = y.data_ptr<D>();
    p.dgh = dgh.data_ptr<D>();
    if (!run_backward<kGRU, D>(dy, dh_n, w_hh, lengths, dxg, dh0, p)) return false;
    out = std::make_tuple(dxg, dgh, dh0);
    return true;
  });
}

bool rnn_backward_persistent(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& w_hh,
                             const at::Tensor& y, const c10::optional<at::Tensor>& lengths,
                             bool relu, std::tuple<at::Tensor, at::Tensor>& out) {
  return dispatch(dy.scalar_type(), [&](auto tag) {
    using D = decltype(tag);
    BwdParams<D> p{};
    at::Tensor dxg, dh0;
    p.y = y.data_ptr<D>();
    p.relu = relu;
    if (!run_backward<kRNN, D>(dy, dh_n, w_hh, lengths, dxg, dh0, p)) return false;
    out = std::make_tuple(dxg, dh0);
    return true;
  });
}

// Query ops of the CUDA build only (not declared in ops.cpp: a CPU-only build
// has no persistent kernels to ask about).
TORCH_LIBRARY_FRAGMENT(fastrnn_ext, m) {
  m.def("cuda_persistent_plan(Tensor w_hh, int N, bool backward) -> int[]");
  m.def("cuda_persistent_launches() -> int", &launches_op);
}

TORCH_LIBRARY_IMPL(fastrnn_ext, CUDA, m) {
  m.impl("cuda_persistent_plan", &plan_op);
}

}  // namespace cuda
}  // namespace fastrnn
