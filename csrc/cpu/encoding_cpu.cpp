// encoding_cpu.cpp — fused geometric positional encoding on the CPU (OpenMP), forward and backward.
//
// s_i = Σ_j φ(rinv_ij) over the valid rows j of i's segment, j = i included (rinv_ii = 0 adds φ(0)).
// Same schedule as the attention (cpu_common.h): each unordered pair {i, j} is visited once, by the task
// that owns both rows. φ is evaluated per pair with the per-pair MLP of pair_math.h and added to s_i and s_j.
// Backward: the seed of the pair is ds_i + ds_j; d rinv goes to dpos_i and dpos_j; parameter gradients go to
// per-thread buffers reduced in thread order. The j = i terms all have x = 0: their parameter gradient is
// one backward pass with seed Σ_valid ds_i.
#include "cpu_common.h"

namespace gtk {
namespace {

template <class T>
struct EncProblem {
  const T* pos;
  const bool* valid;
  const gt::MlpView<T>* mv;
};

// Pairs of one task (see Schedule): s_i += φ(rinv_ij) and s_j += φ(rinv_ij), once per unordered pair.
template <class T>
void encoding_fwd_task(const EncProblem<T>& P, const PairTask& task, int64_t* vi, int64_t* vj_buf, T* s) {
  const gt::MlpView<T>& mv = *P.mv;
  T z[gt::kMaxLayers * gt::kMaxWidth], a[gt::kMaxLayers * gt::kMaxWidth];
  const bool diag = task.diag();
  const int nI = collect_valid(P.valid, task.i0, task.i1, vi);
  const int nJ = diag ? nI : collect_valid(P.valid, task.j0, task.j1, vj_buf);
  const int64_t* vj = diag ? vi : vj_buf;
  for (int ia = 0; ia < nI; ++ia) {
    const int64_t i = vi[ia];
    T acc = T(0);
    for (int b = diag ? ia + 1 : 0; b < nJ; ++b) {
      const int64_t j = vj[b];
      const T x = gt::inverse_distance<T>(P.pos + 3 * i, P.pos + 3 * j);
      const T val = gt::mlp_forward_pair<T>(mv, x, z, a);
      acc += val;
      s[j] += val;
    }
    s[i] += acc;
  }
}

// Pairs of one task: seed ds_i + ds_j (φ(rinv_ij) enters s_i and s_j), d rinv to dpos_i and dpos_j.
template <class T>
void encoding_bwd_task(const EncProblem<T>& P, const PairTask& task, const T* ds, int64_t* vi, int64_t* vj_buf,
                       T* dpos, T* grad) {
  const gt::MlpView<T>& mv = *P.mv;
  T z[gt::kMaxLayers * gt::kMaxWidth], a[gt::kMaxLayers * gt::kMaxWidth], dz[2 * gt::kMaxWidth];
  const bool diag = task.diag();
  const int nI = collect_valid(P.valid, task.i0, task.i1, vi);
  const int nJ = diag ? nI : collect_valid(P.valid, task.j0, task.j1, vj_buf);
  const int64_t* vj = diag ? vi : vj_buf;
  for (int ia = 0; ia < nI; ++ia) {
    const int64_t i = vi[ia];
    T* dpi = dpos + 3 * i;
    for (int b = diag ? ia + 1 : 0; b < nJ; ++b) {
      const int64_t j = vj[b];
      T gi[3];
      const T x = gt::inverse_distance<T>(P.pos + 3 * i, P.pos + 3 * j, gi);
      gt::mlp_forward_pair<T>(mv, x, z, a);
      const T dx = gt::mlp_backward_pair<T>(mv, x, z, a, ds[i] + ds[j], grad, dz);
      T* dpj = dpos + 3 * j;
      for (int c = 0; c < 3; ++c) {
        dpi[c] += dx * gi[c];
        dpj[c] -= dx * gi[c];
      }
    }
  }
}

template <class T>
void encoding_fwd_typed(const at::Tensor& pos, at::TensorList phi, const Schedule& sch,
                        const std::optional<at::Tensor>& valid, at::Tensor& s) {
  PackedMlp<T> pk = pack_mlp<T>(phi, gt::kActGelu, gt::kActGelu);
  EncProblem<T> P{pos.data_ptr<T>(), valid.has_value() ? valid->data_ptr<bool>() : nullptr, &pk.view};
  T z[gt::kMaxLayers * gt::kMaxWidth], a[gt::kMaxLayers * gt::kMaxWidth];
  const T phi0 = gt::mlp_forward_pair<T>(pk.view, T(0), z, a);  // the j = i term (rinv_ii = 0)
  T* ps = s.data_ptr<T>();
  const int64_t R = pos.size(0);
  const int nt = num_threads();
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) ps[r] = (P.valid == nullptr || P.valid[r]) ? phi0 : T(0);
    int64_t vi[kBlock], vj[kBlock];
    for (int64_t ph = 0; ph < sch.num_phases(); ++ph) {
#pragma omp for schedule(static, 1)
      for (int64_t t = sch.phase_begin[ph]; t < sch.phase_begin[ph + 1]; ++t) {
        encoding_fwd_task<T>(P, sch.tasks[t], vi, vj, ps);
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
  EncProblem<T> P{pos.data_ptr<T>(), pv, &pk.view};
  const T* pds = ds.data_ptr<T>();
  T* pdpos = dpos.data_ptr<T>();
  const int nt = num_threads();
  const int64_t gsize = pk.view.grad_size;
  std::vector<T> partials(static_cast<size_t>(nt * gsize), T(0));
#pragma omp parallel num_threads(nt)
  {
    int64_t vi[kBlock], vj[kBlock];
    T* grad = partials.data() + static_cast<int64_t>(thread_id()) * gsize;
    for (int64_t ph = 0; ph < sch.num_phases(); ++ph) {
#pragma omp for schedule(static, 1)
      for (int64_t t = sch.phase_begin[ph]; t < sch.phase_begin[ph + 1]; ++t) {
        encoding_bwd_task<T>(P, sch.tasks[t], pds, vi, vj, pdpos, grad);
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

at::Tensor encoding_fwd_cpu(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                            const std::optional<at::Tensor>& valid) {
  at::Tensor s = at::zeros({pos.size(0)}, pos.options());
  const Schedule sch = make_schedule(seg);
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "gtkernels encoding_fwd",
                             [&] { encoding_fwd_typed<scalar_t>(pos, phi, sch, valid, s); });
  return s;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> encoding_bwd_cpu(const at::Tensor& ds, const at::Tensor& pos,
                                                                 at::TensorList phi, const at::Tensor& seg,
                                                                 const std::optional<at::Tensor>& valid) {
  at::Tensor dpos = at::zeros_like(pos);
  std::vector<at::Tensor> dphi;
  const Schedule sch = make_schedule(seg);
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "gtkernels encoding_bwd",
                             [&] { dphi = encoding_bwd_typed<scalar_t>(ds, pos, phi, sch, valid, dpos); });
  return {dpos, dphi};
}

}  // namespace gtk
