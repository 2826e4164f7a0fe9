// The launch shape of the persistent recurrence kernels (persistent.cu): a pure
// search, no CUDA runtime calls, so that plain C++ (g++) can include it and the
// CPU test tests/kernels/persistent_plan_test.cpp reaches every branch.
// persistent.cu's plan_for asks the device (SM count, shared memory opt-in
// limit, cooperative launch, and cudaOccupancyMaxActiveBlocksPerMultiprocessor
// for each candidate) and calls persistent_plan_search.
//
// The kernels' shape: grid (ceil(H / U), ceil(N / BN)), block BN x U threads
// (thread = one batch row, one hidden unit), dynamic shared memory = the
// block's W_hh slice (G U H elements of the storage dtype, padded to 16 bytes)
// + the staging area (BN rows of KC + 1 fp32 values, KC = min(K, 256), K = H
// forward, G H backward).  Each thread's work per step is a length-K FMA chain
// per gate whatever U is; U only sets how many units share a block, and with
// it the block count, the shared memory per block and the threads per block.
//
// Feasible U (a power of two up to the first power of two >= H, BN U <= 512
// threads): the dynamic shared memory fits the per-block opt-in limit, and the
// whole grid is co-resident (blocks per SM at that block size and shared
// memory, as the occupancy query says, x SMs >= blocks; the grid barrier
// deadlocks otherwise, which cudaLaunchCooperativeKernel refuses).  Shared
// memory grows with U and the block count falls with it, while the occupancy
// falls with U too, so the feasible U need not be one interval: every
// candidate is checked.
//
// The choice among the feasible U, and why.  An SM has four warp schedulers:
// a block of 128 threads (four warps) gives each one a warp, and U0 = the
// smallest power of two with BN U0 >= 128 (or U0 = that first power of two
// >= H, when H is small) is the preferred size.
//  * At or above U0 (the only sizes the search tried before): the smallest
//    feasible U.  The same per-thread chains then spread over the most SMs
//    (fewer warps share an SM's schedulers and its shared-memory bandwidth).
//    This is exactly the old search's choice (it went upward from U0, stopped
//    at the first U whose shared memory overflowed, which every larger U does
//    too, and took the first co-resident one), kept wherever it found one.
//  * Only when no U >= U0 is feasible (small batch: at N 1, H 256, LSTM fp32,
//    U0 = 128 needs 512 KB of shared memory): the largest feasible U < U0.
//    Below U0 a block has fewer than four warps, each thread stages
//    BN KC / (BN U) = KC / U values of h (or dG) per chunk, and the grid
//    barrier waits on ceil(H / U) ceil(N / BN) blocks: the per-thread chains
//    are unchanged, so a larger U only shortens the staging and the barrier
//    (and the fewer the blocks, the likelier each has an SM to itself).
// Every U gives bit-identical results: each (row, unit) pair's dot products
// run over k in the same order, in the same chunks.
#pragma once

#include <cstdint>

namespace fastrnn {
namespace cuda {

constexpr int kMaxThreads = 512;  // per block; the kernels' __launch_bounds__
constexpr int kMinThreads = 128;  // preferred lower bound while units remain (U0)
constexpr int kMaxRows = 32;      // batch rows per block
constexpr int kChunk = 256;       // columns of h / dG staged per pass

// What is being launched: G gates (4 LSTM, 3 GRU, 1 RNN), N batch rows, H
// hidden units, K the staged row length (H forward, G H backward), es bytes
// per W_hh element (4 fp32, 2 fp16 / bf16).
struct PlanProblem {
  int G = 0;
  int64_t N = 0, H = 0, K = 0, es = 0;
};

// The device: SM count, per-block dynamic shared memory opt-in limit
// (cudaDevAttrMaxSharedMemoryPerBlockOptin; the per-SM capacity and the
// per-block reservation are the occupancy query's business), and whether it
// supports cooperative launch.
struct PlanDevice {
  int64_t sms = 0, smem_optin = 0;
  bool coop = false;
};

enum class PlanFailure : int {
  kNone = 0,        // a plan was found
  kNoCoop,          // the device cannot launch cooperatively
  kEmpty,           // N, H, K, G or es not positive
  kSharedMemory,    // even U = 1 needs more shared memory than one block may have
  kNotCoResident,   // some U fits a block's shared memory, none is co-resident
};

inline const char* plan_failure_name(PlanFailure f) {
  switch (f) {
    case PlanFailure::kNone: return "ok";
    case PlanFailure::kNoCoop: return "the device has no cooperative launch";
    case PlanFailure::kEmpty: return "empty sizes";
    case PlanFailure::kSharedMemory: return "one unit's slice of W_hh does not fit a block's shared memory";
    case PlanFailure::kNotCoResident: return "no block size whose shared memory fits is co-resident";
  }
  return "?";
}

struct Plan {
  bool ok = false;
  PlanFailure why = PlanFailure::kEmpty;
  int U = 0, BN = 0, KC = 0, threads = 0;
  unsigned gx = 0, gy = 0;
  int64_t stage_off = 0, smem = 0;  // bytes: staging offset (16-aligned), dynamic total
  int blocks_per_sm = 0;             // the occupancy the plan was accepted at
};

// Dynamic shared memory of a block of U units: the W slice padded to 16
// bytes, then BN staged rows of KC + 1 floats.  Also sets stage_off.
inline int64_t plan_smem(const PlanProblem& p, int64_t U, int64_t BN, int64_t KC,
                         int64_t* stage_off = nullptr) {
  const int64_t wbytes = p.G * U * p.H * p.es;
  const int64_t off = (wbytes + 15) / 16 * 16;
  if (stage_off != nullptr) *stage_off = off;
  return off + BN * (KC + 1) * 4;
}

// blocks_per_sm(threads, dynamic_smem_bytes) -> int: how many blocks of the
// kernel one SM holds at once (persistent.cu: the occupancy query; it is only
// called with dynamic_smem_bytes <= dev.smem_optin).
template <typename BlocksPerSm>
Plan persistent_plan_search(const PlanProblem& p, const PlanDevice& dev, BlocksPerSm&& blocks_per_sm) {
  Plan none;
  if (!dev.coop) {
    none.why = PlanFailure::kNoCoop;
    return none;
  }
  if (p.N <= 0 || p.H <= 0 || p.K <= 0 || p.G <= 0 || p.es <= 0 || dev.sms <= 0) {
    none.why = PlanFailure::kEmpty;
    return none;
  }
  const int64_t BN = p.N < kMaxRows ? p.N : kMaxRows;
  const int64_t KC = p.K < kChunk ? p.K : kChunk;
  const int64_t gy = (p.N + BN - 1) / BN;
  int64_t umax = 1;
  while (umax < p.H) umax *= 2;
  int64_t U0 = 1;
  while (U0 < umax && U0 * BN < kMinThreads) U0 *= 2;

  Plan above, below;  // smallest feasible U >= U0; largest feasible U < U0
  bool any_fits = false;
  for (int64_t U = 1; U <= umax && U * BN <= kMaxThreads; U *= 2) {
    int64_t off = 0;
    const int64_t smem = plan_smem(p, U, BN, KC, &off);
    if (smem > dev.smem_optin) break;  // every larger U needs more
    any_fits = true;
    const int64_t gx = (p.H + U - 1) / U;
    const int threads = static_cast<int>(U * BN);
    const int per_sm = blocks_per_sm(threads, smem);
    if (per_sm <= 0 || static_cast<int64_t>(per_sm) * dev.sms < gx * gy) continue;
    Plan& slot = U >= U0 ? above : below;
    if (U >= U0 && above.ok) continue;  // keep the smallest one at or above U0
    slot.ok = true;                     // below U0: a larger U replaces a smaller
    slot.why = PlanFailure::kNone;
    slot.U = static_cast<int>(U);
    slot.BN = static_cast<int>(BN);
    slot.KC = static_cast<int>(KC);
    slot.threads = threads;
    slot.gx = static_cast<unsigned>(gx);
    slot.gy = static_cast<unsigned>(gy);
    slot.stage_off = off;
    slot.smem = smem;
    slot.blocks_per_sm = per_sm;
  }
  if (above.ok) return above;
  if (below.ok) return below;
  none.why = any_fits ? PlanFailure::kNotCoResident : PlanFailure::kSharedMemory;
  return none;
}

}  // namespace cuda
}  // namespace fastrnn
