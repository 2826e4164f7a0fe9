// The persistent CUDA kernels' launch-shape search (csrc/cuda/persistent_plan.h)
// alone, on the CPU: no CUDA runtime, the occupancy query replaced by a model
// of the occupancy calculator with each GPU's published limits.  Over a grid of
// problems (N 1..256, H 32..1024 and a few odd H, G 1/3/4, fp32 and 16-bit
// weights, forward and backward) on H100 SXM, H100 PCIe, H200 and A100 numbers,
// at the kernels' ptxas register count and at the __launch_bounds__ cap:
//  * a returned plan fits: its dynamic shared memory (recomputed here) is within
//    the per-block opt-in limit, its grid within SMs x the model's blocks per
//    SM, its block within 512 threads; it covers N and H exactly (no block
//    wholly past either); the staging area is 16-byte aligned;
//  * wherever the old search (reimplemented below as an oracle) found a plan,
//    the same plan;
//  * exhaustive: a plan exists iff some power-of-two U is feasible, and the U
//    chosen is the rule's (the smallest feasible U >= U0, else the largest
//    feasible U below U0), the failure reason names the right constraint;
//  * the point of issue #28 item 5: LSTM fp32 at H 256 and batch 1..8 gets a
//    plan on the H100 and H200 (forward and backward), where the old search
//    had none at batch 1 and 2; and the shapes tests/test_ext_cuda.py asserts
//    about keep their answers (the 64 MB fallback has no plan, H 256 N 32 and
//    the staging shapes have one).
// Built and run by `make test-kernels` (the Makefile):
//     g++ -O2 -std=c++17 -Wall -Wextra -Werror tests/kernels/persistent_plan_test.cpp
#include "../../csrc/cuda/persistent_plan.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace fc = fastrnn::cuda;

namespace {

int64_t g_checks = 0, g_failed = 0;

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failed;
    if (g_failed <= 30) std::printf("FAIL: %s\n", what.c_str());
  }
}

// A GPU's limits as the CUDA occupancy calculator uses them (CUDA C
// Programming Guide, compute capability tables; smem_optin is
// cudaDevAttrMaxSharedMemoryPerBlockOptin, smem_sm the per-SM capacity, each
// block also takes `reserved` bytes of it).
struct Gpu {
  const char* name;
  int64_t sms, smem_optin, smem_sm, reserved;
  int max_blocks, max_threads, regs_sm;
};

const Gpu kGpus[] = {
    {"H100-SXM", 132, 227 * 1024, 228 * 1024, 1024, 32, 2048, 65536},
    {"H100-PCIe", 114, 227 * 1024, 228 * 1024, 1024, 32, 2048, 65536},
    {"H200", 132, 227 * 1024, 228 * 1024, 1024, 32, 2048, 65536},
    {"A100", 108, 163 * 1024, 164 * 1024, 1024, 32, 2048, 65536},
};

// Blocks of a kernel with `regs` registers per thread one SM holds: the
// minimum over threads, blocks, registers (256-register allocation per warp)
// and shared memory (128-byte granularity, plus the per-block reservation).
int model_blocks_per_sm(const Gpu& g, int regs, int threads, int64_t smem) {
  const int warps = (threads + 31) / 32;
  int n = g.max_blocks;
  const int by_threads = g.max_threads / (warps * 32);
  if (by_threads < n) n = by_threads;
  const int regs_warp = (regs * 32 + 255) / 256 * 256;
  const int by_regs = g.regs_sm / (regs_warp * warps);
  if (by_regs < n) n = by_regs;
  const int64_t per_block = (smem + g.reserved + 127) / 128 * 128;
  const int64_t by_smem = g.smem_sm / per_block;
  if (by_smem < n) n = static_cast<int>(by_smem);
  return n;
}

// The search as it was before issue #28 item 5 (persistent.cu's plan_for then):
// upward from U0 only, the first co-resident U.
fc::Plan old_search(const fc::PlanProblem& p, const Gpu& g, int regs) {
  fc::Plan best;
  const int64_t N = p.N, H = p.H, K = p.K;
  const int BN = static_cast<int>(N < 32 ? N : 32);
  const int KC = static_cast<int>(K < 256 ? K : 256);
  const int64_t stage = static_cast<int64_t>(BN) * (KC + 1) * 4;
  int64_t umax = 1;
  while (umax < H) umax *= 2;
  int64_t U = 1;
  while (U < umax && U * BN < 128) U *= 2;
  for (; U <= umax && U * BN <= 512; U *= 2) {
    const int64_t wbytes = p.G * U * H * p.es;
    const int64_t off = (wbytes + 15) / 16 * 16;
    const int64_t smem = off + stage;
    if (smem > g.smem_optin) break;
    const int64_t gx = (H + U - 1) / U, gy = (N + BN - 1) / BN;
    const int threads = static_cast<int>(U * BN);
    const int per_sm = model_blocks_per_sm(g, regs, threads, smem);
    if (static_cast<int64_t>(per_sm) * g.sms >= gx * gy) {
      best.ok = true;
      best.U = static_cast<int>(U);
      best.BN = BN;
      best.KC = KC;
      best.threads = threads;
      best.gx = static_cast<unsigned>(gx);
      best.gy = static_cast<unsigned>(gy);
      best.stage_off = off;
      best.smem = smem;
      break;
    }
  }
  return best;
}

fc::Plan search(const fc::PlanProblem& p, const Gpu& g, int regs, bool coop = true) {
  fc::PlanDevice d;
  d.sms = g.sms;
  d.smem_optin = g.smem_optin;
  d.coop = coop;
  return fc::persistent_plan_search(p, d, [&](int threads, int64_t smem) {
    expect(smem <= g.smem_optin && threads >= 1 && threads <= fc::kMaxThreads,
           "occupancy asked about a block that cannot launch");
    return model_blocks_per_sm(g, regs, threads, smem);
  });
}

fc::PlanProblem problem(int G, int64_t N, int64_t H, int64_t es, bool backward) {
  fc::PlanProblem p;
  p.G = G;
  p.N = N;
  p.H = H;
  p.K = backward ? G * H : H;
  p.es = es;
  return p;
}

std::string describe(const fc::PlanProblem& p, const Gpu& g, int regs) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s regs %d G %d N %lld H %lld K %lld es %lld", g.name, regs, p.G,
                static_cast<long long>(p.N), static_cast<long long>(p.H),
                static_cast<long long>(p.K), static_cast<long long>(p.es));
  return buf;
}

bool same(const fc::Plan& a, const fc::Plan& b) {
  return a.ok == b.ok && a.U == b.U && a.BN == b.BN && a.KC == b.KC && a.threads == b.threads &&
         a.gx == b.gx && a.gy == b.gy && a.stage_off == b.stage_off && a.smem == b.smem;
}

struct Tally {
  int64_t cases = 0, old_plans = 0, new_plans = 0, below_u0 = 0, max_gain_n = 0;
};

void check_case(const fc::PlanProblem& p, const Gpu& g, int regs, Tally& tally) {
  const std::string who = describe(p, g, regs);
  const fc::Plan pl = search(p, g, regs);
  const fc::Plan old = old_search(p, g, regs);
  ++tally.cases;
  tally.old_plans += old.ok;
  tally.new_plans += pl.ok;
  if (pl.ok && !old.ok && p.N > tally.max_gain_n) tally.max_gain_n = p.N;

  // an independent scan of every power-of-two U (no early exit)
  const int64_t BN = p.N < 32 ? p.N : 32, KC = p.K < 256 ? p.K : 256;
  int64_t umax = 1;
  while (umax < p.H) umax *= 2;
  int64_t U0 = 1;
  while (U0 < umax && U0 * BN < 128) U0 *= 2;
  int64_t min_above = 0, max_below = 0;
  bool any_fits = false;
  for (int64_t U = 1; U <= umax && U * BN <= 512; U *= 2) {
    const int64_t smem = (p.G * U * p.H * p.es + 15) / 16 * 16 + BN * (KC + 1) * 4;
    if (smem > g.smem_optin) continue;
    any_fits = true;
    const int64_t blocks = (p.H + U - 1) / U * ((p.N + BN - 1) / BN);
    if (model_blocks_per_sm(g, regs, static_cast<int>(U * BN), smem) * g.sms < blocks) continue;
    if (U >= U0 && min_above == 0) min_above = U;
    if (U < U0) max_below = U;
  }
  const int64_t want_u = min_above != 0 ? min_above : max_below;
  expect(pl.ok == (want_u != 0), who + ": a plan exactly when some U is feasible");
  if (pl.ok) {
    expect(pl.U == want_u, who + ": U " + std::to_string(pl.U) + ", the rule says " +
                               std::to_string(want_u));
    tally.below_u0 += pl.U < U0;
  } else {
    const fc::PlanFailure want = any_fits ? fc::PlanFailure::kNotCoResident
                                          : fc::PlanFailure::kSharedMemory;
    expect(pl.why == want, who + ": failure reason " + fc::plan_failure_name(pl.why));
  }
  if (old.ok) expect(same(pl, old), who + ": the old search's plan is kept");

  if (!pl.ok) return;
  const int64_t U = pl.U;
  expect(U >= 1 && (U & (U - 1)) == 0 && U <= umax, who + ": U a power of two <= the first >= H");
  expect(pl.BN == BN && pl.KC == KC, who + ": BN = min(N, 32), KC = min(K, 256)");
  expect(pl.threads == U * pl.BN && pl.threads <= fc::kMaxThreads, who + ": threads = U BN <= 512");
  // covers H and N exactly: enough blocks, none wholly past the end
  expect(static_cast<int64_t>(pl.gx) * U >= p.H && (static_cast<int64_t>(pl.gx) - 1) * U < p.H,
         who + ": grid x covers H exactly");
  expect(static_cast<int64_t>(pl.gy) * pl.BN >= p.N &&
             (static_cast<int64_t>(pl.gy) - 1) * pl.BN < p.N,
         who + ": grid y covers N exactly");
  // shared memory: the W slice, 16-byte aligned, then the staging rows
  expect(pl.stage_off % 16 == 0 && pl.stage_off >= p.G * U * p.H * p.es &&
             pl.stage_off < p.G * U * p.H * p.es + 16,
         who + ": staging offset");
  expect(pl.smem == pl.stage_off + static_cast<int64_t>(pl.BN) * (pl.KC + 1) * 4,
         who + ": dynamic shared memory = W slice + staging");
  expect(pl.smem <= g.smem_optin, who + ": fits the per-block opt-in limit");
  const int per_sm = model_blocks_per_sm(g, regs, pl.threads, pl.smem);
  expect(pl.blocks_per_sm == per_sm, who + ": blocks_per_sm as queried");
  expect(static_cast<int64_t>(per_sm) * g.sms >= static_cast<int64_t>(pl.gx) * pl.gy,
         who + ": the grid is co-resident");
}

}  // namespace

int main() {
  const int regs_list[] = {40, 128};  // ptxas (sm_80 / sm_90), __launch_bounds__(512) cap
  std::vector<int64_t> Hs;
  for (int64_t H = 32; H <= 1024; H *= 2) Hs.push_back(H);
  for (int64_t H : {40, 72, 96, 100, 200, 264, 384, 500, 768, 1000}) Hs.push_back(H);
  Tally tally;
  for (const Gpu& g : kGpus)
    for (int regs : regs_list)
      for (int G : {1, 3, 4})
        for (int64_t es : {4, 2})
          for (bool bwd : {false, true})
            for (int64_t H : Hs)
              for (int64_t N = 1; N <= 256; ++N) check_case(problem(G, N, H, es, bwd), g, regs, tally);

  // The point of the item: batch 1..8 at H 256, LSTM fp32 and bf16, forward and
  // backward, on the H100 and H200.
  for (const Gpu& g : kGpus) {
    if (std::string(g.name) == "A100") continue;
    for (int64_t es : {4, 2})
      for (bool bwd : {false, true})
        for (int64_t N = 1; N <= 8; ++N) {
          const fc::PlanProblem p = problem(4, N, 256, es, bwd);
          expect(search(p, g, 40).ok && search(p, g, 128).ok,
                 describe(p, g, 40) + ": batch 1-8 at H 256 gets a persistent plan");
        }
  }
  // what tests/test_ext_cuda.py asserts on any sm_80+ GPU
  for (const Gpu& g : kGpus)
    for (int regs : regs_list)
      for (bool bwd : {false, true}) {
        const fc::PlanProblem big = problem(4, 2, 2048, 4, bwd);  // test_persistent_fallback
        const fc::Plan pl = search(big, g, regs);
        expect(!pl.ok && pl.why == fc::PlanFailure::kNotCoResident,
               describe(big, g, regs) + ": the 64 MB W_hh has no plan");
        for (int G : {1, 3, 4})
          for (int64_t es : {4, 2})
            expect(search(problem(G, 32, 256, es, bwd), g, regs).ok,
                   describe(problem(G, 32, 256, es, bwd), g, regs) + ": H 256 N 32 fits");
        expect(search(problem(4, 2, 72, 4, bwd), g, regs).ok &&
                   search(problem(4, 34, 264, 4, bwd), g, regs).ok,
               g.name + std::string(": the staging shapes fit"));
      }
  // the reasons for no plan
  expect(search(problem(4, 8, 256, 4, false), kGpus[0], 40, false).why == fc::PlanFailure::kNoCoop,
         "no cooperative launch");
  expect(search(problem(4, 0, 256, 4, false), kGpus[0], 40).why == fc::PlanFailure::kEmpty,
         "N 0");
  expect(search(problem(4, 8, 16384, 4, false), kGpus[0], 40).why == fc::PlanFailure::kSharedMemory,
         "H 16384: one unit's four rows of W_hh (256 KB) exceed 227 KB");

  // The small-batch plans, for the record (H100 SXM, forward, 40 registers).
  std::printf("LSTM fp32 forward on H100-SXM: old U -> new U (blocks x threads, KB shared memory)\n");
  for (int64_t H : {256, 512, 1024}) {
    for (int64_t N : {1, 2, 4, 8, 16, 32}) {
      const fc::PlanProblem p = problem(4, N, H, 4, false);
      const fc::Plan o = old_search(p, kGpus[0], 40), n = search(p, kGpus[0], 40);
      char old_s[32] = "none";
      if (o.ok) std::snprintf(old_s, sizeof old_s, "%d", o.U);
      if (n.ok)
        std::printf("  H %4lld N %3lld: %4s -> %3d (%u x %d, %lld KB)\n", static_cast<long long>(H),
                    static_cast<long long>(N), old_s, n.U, n.gx * n.gy, n.threads,
                    static_cast<long long>((n.smem + 1023) / 1024));
      else
        std::printf("  H %4lld N %3lld: %4s -> none (%s)\n", static_cast<long long>(H),
                    static_cast<long long>(N), old_s, fc::plan_failure_name(n.why));
    }
  }
  std::printf("%lld problems: old search %lld plans, new %lld (%lld below U0, the largest batch "
              "gaining one %lld)\n",
              static_cast<long long>(tally.cases), static_cast<long long>(tally.old_plans),
              static_cast<long long>(tally.new_plans), static_cast<long long>(tally.below_u0),
              static_cast<long long>(tally.max_gain_n));
  std::printf("persistent_plan_test: %lld checks, %lld failed\n", static_cast<long long>(g_checks),
              static_cast<long long>(g_failed));
  return g_failed == 0 ? 0 : 1;
}
