// schedule.h — the torch side shared by the CPU kernels (attention_cpu.cpp, encoding_cpu.cpp,
// relative_attention_cpu.cpp): the task schedule
// over segments (blocks of rows, phases of disjoint block pairs), the OpenMP thread count, the per-thread
// gradient buffers and their reduction, the unpacking of the flat MLP gradient, and the kernels' entries.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../mlp_pack.h"
#include "simd_tiles.h"

namespace gtk {

// Flat gradient buffer of the CPU kernels (host memory) → list of tensors shaped like params ([out, in]
// weights, [out] biases).
template <class T>
std::vector<at::Tensor> unpack_mlp_grad(const gt::MlpView<T>& m, const T* g, at::TensorList params) {
  std::vector<at::Tensor> out;
  out.reserve(params.size());
  for (int l = 0; l < m.n_layers; ++l) {
    at::Tensor dW = at::empty({m.out[l], m.in[l]}, params[2 * l].options());
    at::Tensor db = at::empty({m.out[l]}, params[2 * l + 1].options());
    T* dWp = dW.data_ptr<T>();
    T* dbp = db.data_ptr<T>();
    const T* gw = g + m.gwt[l];
    const T* gb = g + m.gb[l];
    for (int o = 0; o < m.out[l]; ++o) {
      for (int i = 0; i < m.in[l]; ++i) {
        dWp[static_cast<int64_t>(o) * m.in[l] + i] = gw[static_cast<int64_t>(i) * m.ld[l] + o];
      }
      dbp[o] = gb[o];
    }
    out.push_back(dW);
    out.push_back(db);
  }
  return out;
}

// Rows per block. A segment of up to kBlock rows (QM9: <= 29 atoms) is one block, hence one task.
constexpr int64_t kBlock = 64;
// Pairs per ψ tile (a multiple of gt::kTileRows).
constexpr int kTilePairs = 32;

inline int num_threads() { return std::max(1, at::get_num_threads()); }

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// A task: the pairs between the row blocks [i0, i1) and [j0, j1) of one segment, i0 <= j0; a diagonal task
// (i0 == j0) holds the pairs within one block. A task owns (writes) the per-row results of both blocks.
struct PairTask {
  int64_t i0, i1, j0, j1;
  bool diag() const { return i0 == j0; }
};

// Tasks grouped in phases: the tasks of one phase touch disjoint rows, so they run in parallel without
// atomics; phases run one after the other. Phase 0 holds the diagonal tasks of every segment; a segment of
// nb > 1 blocks spreads its nb(nb-1)/2 off-diagonal block pairs over the following rounds of a round-robin
// tournament (circle method), each block playing at most once per round. Every unordered pair of rows is
// therefore visited exactly once, and each row's accumulation order is fixed (independent of the thread
// count).
struct Schedule {
  std::vector<PairTask> tasks;
  std::vector<int64_t> phase_begin;  // tasks of phase p: phase_begin[p] .. phase_begin[p+1]-1
  int64_t num_phases() const { return static_cast<int64_t>(phase_begin.size()) - 1; }
};

inline Schedule make_schedule(const at::Tensor& seg) {
  const int64_t* s = seg.data_ptr<int64_t>();
  const int64_t B = seg.numel() - 1;
  std::vector<std::vector<PairTask>> phases(1);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t a0 = s[b], e = s[b + 1];
    const int64_t nb = (e - a0 + kBlock - 1) / kBlock;
    auto lo = [&](int64_t k) { return a0 + k * kBlock; };
    auto hi = [&](int64_t k) { return std::min(a0 + (k + 1) * kBlock, e); };
    for (int64_t k = 0; k < nb; ++k) phases[0].push_back({lo(k), hi(k), lo(k), hi(k)});
    if (nb < 2) continue;
    const int64_t nbp = nb + (nb & 1);  // with a dummy block when nb is odd
    const int64_t m = nbp - 1;
    for (int64_t r = 0; r < m; ++r) {
      if (static_cast<int64_t>(phases.size()) < r + 2) phases.resize(r + 2);
      auto add = [&](int64_t x, int64_t y) {
        if (x >= nb || y >= nb) return;  // the dummy block sits this round out
        const int64_t u = std::min(x, y), w = std::max(x, y);
        phases[r + 1].push_back({lo(u), hi(u), lo(w), hi(w)});
      };
      add(m, r);
      for (int64_t k = 1; k < nbp / 2; ++k) add((r + k) % m, (r - k + m) % m);
    }
  }
  Schedule sch;
  sch.phase_begin.push_back(0);
  for (const auto& ph : phases) {
    sch.tasks.insert(sch.tasks.end(), ph.begin(), ph.end());
    sch.phase_begin.push_back(static_cast<int64_t>(sch.tasks.size()));
  }
  return sch;
}

// Valid rows of [r0, r1) into idx; returns their count.
inline int collect_valid(const bool* valid, int64_t r0, int64_t r1, int64_t* idx) {
  int n = 0;
  for (int64_t r = r0; r < r1; ++r) {
    if (valid == nullptr || valid[r]) idx[n++] = r;
  }
  return n;
}

// Pairs (a, b) of a (query block, key block): a < b on the diagonal block (each unordered pair once),
// every (a, b) otherwise (the two blocks are disjoint).
inline int make_pairs(int nI, int nJ, bool diag, uint8_t* pa, uint8_t* pb) {
  int n = 0;
  for (int a = 0; a < nI; ++a) {
    for (int b = diag ? a + 1 : 0; b < nJ; ++b) {
      pa[n] = static_cast<uint8_t>(a);
      pb[n] = static_cast<uint8_t>(b);
      ++n;
    }
  }
  return n;
}
static_assert(kBlock <= 256, "pair indices are stored as uint8");

// Rows of the two blocks of a task and the list of their pairs.
struct TaskRows {
  std::vector<int64_t> vi, vj;
  std::vector<uint8_t> pa, pb;
  int nI = 0, nJ = 0, npairs = 0;
  bool diag = false;
  TaskRows() : vi(kBlock), vj(kBlock), pa(kBlock * kBlock), pb(kBlock * kBlock) {}
  const int64_t* rows_j() const { return diag ? vi.data() : vj.data(); }
  // Returns false when the task has no pair.
  bool load(const PairTask& t, const bool* valid) {
    diag = t.diag();
    nI = collect_valid(valid, t.i0, t.i1, vi.data());
    nJ = diag ? nI : collect_valid(valid, t.j0, t.j1, vj.data());
    if (nI == 0 || nJ == 0) return false;
    npairs = make_pairs(nI, nJ, diag, pa.data(), pb.data());
    return npairs > 0;
  }
};

// Sum of per-thread partial gradients [nt][size], in thread order (deterministic for a fixed thread count).
template <class T>
std::vector<T> reduce_partials(const std::vector<T>& partials, int nt, int64_t size) {
  std::vector<T> total(static_cast<size_t>(size), T(0));
  for (int t = 0; t < nt; ++t) {
    const T* p = partials.data() + static_cast<int64_t>(t) * size;
    for (int64_t e = 0; e < size; ++e) total[e] += p[e];
  }
  return total;
}

// ---------------------------------------------------------------------------------------------------------
// The CPU kernels (attention_cpu.cpp, encoding_cpu.cpp, relative_attention_cpu.cpp), run by the CPU entries of
// ops_cpu.cpp on checked inputs.
std::tuple<at::Tensor, at::Tensor> run_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& pos, at::TensorList psi,
                                                     const at::Tensor& seg, const std::optional<at::Tensor>& valid,
                                                     double scale);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> run_attention_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
    at::TensorList psi, const at::Tensor& seg, const std::optional<at::Tensor>& valid, double scale,
    const at::Tensor& out, const at::Tensor& lse);

at::Tensor run_encoding_fwd(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                            const std::optional<at::Tensor>& valid);

std::tuple<at::Tensor, std::vector<at::Tensor>> run_encoding_bwd(const at::Tensor& ds, const at::Tensor& pos,
                                                                 at::TensorList phi, const at::Tensor& seg,
                                                                 const std::optional<at::Tensor>& valid);

std::tuple<at::Tensor, at::Tensor> run_relative_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const at::Tensor& pos,
                                                              const at::Tensor& code, at::TensorList phi_k,
                                                              at::TensorList phi_v,
                                                              const std::optional<at::Tensor>& v_rel,
                                                              const at::Tensor& seg,
                                                              const std::optional<at::Tensor>& valid,
                                                              const std::optional<at::Tensor>& dummy);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           at::Tensor>
run_relative_attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& pos, const at::Tensor& code, at::TensorList phi_k,
                           at::TensorList phi_v, const std::optional<at::Tensor>& v_rel, const at::Tensor& seg,
                           const std::optional<at::Tensor>& valid, const std::optional<at::Tensor>& dummy,
                           const at::Tensor& out, const at::Tensor& lse);

}  // namespace gtk
