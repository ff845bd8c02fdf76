// encoding_cpu.cpp — fused geometric positional encoding on the CPU (OpenMP), forward and backward:
// run_encoding_fwd / run_encoding_bwd, called with checked inputs by ops_cpu.cpp.
//
// s_i = Σ_j φ(rinv_ij) over the valid rows j of i's segment, j = i included (rinv_ii = 0 adds φ(0)).
// Same schedule as the attention (schedule.h): each unordered pair {i, j} is visited once, by the task
// that owns both rows. φ is evaluated on SIMD tiles of pairs (simd_tiles.h) and added to s_i and s_j.
// Backward: the seed of the pair is ds_i + ds_j; d rinv goes to dpos_i and dpos_j; parameter gradients go to
// per-thread buffers reduced in thread order. The j = i terms all have x = 0: φ(0) is computed once with the
// per-pair MLP, and their parameter gradient is one per-pair backward pass with seed Σ_valid ds_i.
#include <optional>
#include <tuple>
#include <vector>

#include "schedule.h"

namespace gtk {
namespace {

template <class T>
struct EncProblem {
  const double* pos;  // [R, 3] float64 (see inverse_distance)
  const bool* valid;
  const gt::MlpView<T>* mv;
};

// Per-thread scratch, sized once.
template <class T>
struct EncScratch {
  TaskRows rows;
  std::vector<T> ws, bws;  // φ tile workspaces
  explicit EncScratch(const gt::MlpView<T>& mv)
      : ws(gt::tile_ws_size<T, kTilePairs>(mv)), bws(std::max<int64_t>(gt::tile_bws_size<T, kTilePairs>(mv), 1)) {}
};

// Pairs of one task (see Schedule): s_i += φ(rinv_ij) and s_j += φ(rinv_ij), once per unordered pair,
// φ evaluated on tiles of kTilePairs pairs.
template <class T>
void encoding_fwd_tile(const EncProblem<T>& P, const PairTask& task, EncScratch<T>& sc, T* s) {
  TaskRows& tr = sc.rows;
  if (!tr.load(task, P.valid)) return;
  const int64_t* vj = tr.rows_j();
  T x[kTilePairs], y[kTilePairs];
  for (int c0 = 0; c0 < tr.npairs; c0 += kTilePairs) {
    const int n = std::min(kTilePairs, tr.npairs - c0);
    for (int p = 0; p < kTilePairs; ++p) x[p] = T(0);  // padding pairs of the last tile
    for (int p = 0; p < n; ++p) {
      x[p] = gt::inverse_distance<T>(P.pos + 3 * tr.vi[tr.pa[c0 + p]], P.pos + 3 * vj[tr.pb[c0 + p]]);
    }
    gt::mlp_forward_simd<T, kTilePairs>(*P.mv, x, sc.ws.data(), y);
    for (int p = 0; p < n; ++p) {
      s[tr.vi[tr.pa[c0 + p]]] += y[p];
      s[vj[tr.pb[c0 + p]]] += y[p];
    }
  }
}

// Pairs of one task: seed ds_i + ds_j (φ(rinv_ij) enters s_i and s_j), d rinv to dpos_i and dpos_j.
template <class T>
void encoding_bwd_tile(const EncProblem<T>& P, const PairTask& task, const T* ds, EncScratch<T>& sc, double* dpos,
                       T* grad) {
  TaskRows& tr = sc.rows;
  if (!tr.load(task, P.valid)) return;
  const int64_t* vj = tr.rows_j();
  T x[kTilePairs], y[kTilePairs], dy[kTilePairs], dx[kTilePairs];
  double gi[kTilePairs][3];
  for (int c0 = 0; c0 < tr.npairs; c0 += kTilePairs) {
    const int n = std::min(kTilePairs, tr.npairs - c0);
    for (int p = 0; p < kTilePairs; ++p) {  // padding pairs of the last tile: no gradient
      x[p] = T(0);
      dy[p] = T(0);
    }
    for (int p = 0; p < n; ++p) {
      const int64_t i = tr.vi[tr.pa[c0 + p]], j = vj[tr.pb[c0 + p]];
      x[p] = gt::inverse_distance<T>(P.pos + 3 * i, P.pos + 3 * j, gi[p]);
      dy[p] = ds[i] + ds[j];
    }
    gt::mlp_forward_simd<T, kTilePairs>(*P.mv, x, sc.ws.data(), y);
    gt::mlp_backward_simd<T, kTilePairs>(*P.mv, x, sc.ws.data(), dy, grad, sc.bws.data(), dx);
    for (int p = 0; p < n; ++p) {
      double* dpi = dpos + 3 * tr.vi[tr.pa[c0 + p]];
      double* dpj = dpos + 3 * vj[tr.pb[c0 + p]];
      for (int c = 0; c < 3; ++c) {
        dpi[c] += dx[p] * gi[p][c];
        dpj[c] -= dx[p] * gi[p][c];
      }
    }
  }
}

template <class T>
void encoding_fwd_typed(const at::Tensor& pos, at::TensorList phi, const Schedule& sch,
                        const std::optional<at::Tensor>& valid, at::Tensor& s) {
  PackedMlp<T> pk = pack_mlp<T>(phi, gt::kActGelu, gt::kActGelu);
  EncProblem<T> P{pos.data_ptr<double>(), valid.has_value() ? valid->data_ptr<bool>() : nullptr, &pk.view};
  T z[gt::kMaxLayers * gt::kMaxWidth], a[gt::kMaxLayers * gt::kMaxWidth];
  const T phi0 = gt::mlp_forward_pair<T>(pk.view, T(0), z, a);  // the j = i term (rinv_ii = 0)
  T* ps = s.data_ptr<T>();
  const int64_t R = pos.size(0);
  const int nt = num_threads();
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) ps[r] = (P.valid == nullptr || P.valid[r]) ? phi0 : T(0);
    EncScratch<T> sc(pk.view);
    for (int64_t ph = 0; ph < sch.num_phases(); ++ph) {
#pragma omp for schedule(static, 1)
      for (int64_t t = sch.phase_begin[ph]; t < sch.phase_begin[ph + 1]; ++t) {
        encoding_fwd_tile<T>(P, sch.tasks[t], sc, ps);
      }
    }
  }
}

template <class T>
std::vector<at::Tensor> encoding_bwd_typed(const at::Tensor& ds, const at::Tensor& pos, at::TensorList phi,
                                           const Schedule& sch, const std::optional<at::Tensor>& valid,
                                           at::Tensor& dpos) {
  const int64_t R = pos.size(0);
  PackedMlp<T> pk = pack_mlp<T>(phi, gt::kActGelu, gt::kActGelu);
  const bool* pv = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  EncProblem<T> P{pos.data_ptr<double>(), pv, &pk.view};
  const T* pds = ds.data_ptr<T>();
  double* pdpos = dpos.data_ptr<double>();
  const int nt = num_threads();
  const int64_t gsize = pk.view.grad_size;
  std::vector<T> partials(static_cast<size_t>(nt * gsize), T(0));
#pragma omp parallel num_threads(nt)
  {
    EncScratch<T> sc(pk.view);
    T* grad = partials.data() + static_cast<int64_t>(thread_id()) * gsize;
    for (int64_t ph = 0; ph < sch.num_phases(); ++ph) {
#pragma omp for schedule(static, 1)
      for (int64_t t = sch.phase_begin[ph]; t < sch.phase_begin[ph + 1]; ++t) {
        encoding_bwd_tile<T>(P, sch.tasks[t], pds, sc, pdpos, grad);
      }
    }
  }
  std::vector<T> total = reduce_partials<T>(partials, nt, gsize);
  // Self terms j = i (rinv = 0, no position gradient): one pass with seed Σ_valid ds_i.
  T self_seed = T(0);
  for (int64_t r = 0; r < R; ++r) {
    if (pv == nullptr || pv[r]) self_seed += pds[r];
  }
  T z[gt::kMaxLayers * gt::kMaxWidth], a[gt::kMaxLayers * gt::kMaxWidth], dz[2 * gt::kMaxWidth];
  gt::mlp_forward_pair<T>(pk.view, T(0), z, a);
  gt::mlp_backward_pair<T>(pk.view, T(0), z, a, self_seed, total.data(), dz);
  return unpack_mlp_grad<T>(pk.view, total.data(), phi);
}

}  // namespace

at::Tensor run_encoding_fwd(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                            const std::optional<at::Tensor>& valid) {
  // s has the dtype of the φ parameters (the compute type); positions are float64.
  at::Tensor s = at::zeros({pos.size(0)}, phi[0].options());
  const Schedule sch = make_schedule(seg);
  AT_DISPATCH_FLOATING_TYPES(phi[0].scalar_type(), "gtkernels encoding_fwd",
                             [&] { encoding_fwd_typed<scalar_t>(pos, phi, sch, valid, s); });
  return s;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> run_encoding_bwd(const at::Tensor& ds, const at::Tensor& pos,
                                                                 at::TensorList phi, const at::Tensor& seg,
                                                                 const std::optional<at::Tensor>& valid) {
  at::Tensor dpos = at::zeros_like(pos);
  std::vector<at::Tensor> dphi;
  const Schedule sch = make_schedule(seg);
  AT_DISPATCH_FLOATING_TYPES(phi[0].scalar_type(), "gtkernels encoding_bwd",
                             [&] { dphi = encoding_bwd_typed<scalar_t>(ds, pos, phi, sch, valid, dpos); });
  return {dpos, dphi};
}

}  // namespace gtk
