// ops.cpp — the gtkernels_C operator library: schemas (TORCH_LIBRARY), input checks and the CPU
// implementations (TORCH_LIBRARY_IMPL). Layout "segments of rows" (covers padded and packed batches):
//   q, k, v, out, dout : contiguous [R, H, D], one floating dtype (float32/float64), as are the ψ / φ
//   parameters [W0, b0, ..., Wn, bn] (nn.Linear layout, first in = 1, last out = 1);
//   pos : [R, 3] always float64 (distances in float64: far-apart fragments keep their precision);
//   seg   : int64 [B + 1], seg[0] = 0, seg[B] = R, non-decreasing (molecule b owns rows seg[b]..seg[b+1]-1);
//   valid : optional bool [R] (None: every row is an atom; False: padding row);
//   max_atoms : an upper bound of seg[b+1] - seg[b], known on the host (FlashAttention's max_seqlen): the GPU
//               backends size their grids with it, so they need no host copy of seg. seg's values are checked
//               where seg is on the host (here, and in the host emulation of the CUDA kernels); on a GPU they are
//               not (the Python layer validates cu_seqlens / max_seqlen once per forward): the CUDA kernels clamp
//               seg into [0, R] and write NaN into every output of a molecule with more rows than max_atoms;
//   precision : "ieee" or "tf32", the float32 matmuls of the GPU backends (the CPU kernels are always exact).
#include <torch/library.h>

#include "cpu/cpu_common.h"
#include "op_checks.h"

namespace gtk {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const at::Tensor& pos, at::TensorList psi, const at::Tensor& seg,
                                                 const std::optional<at::Tensor>& valid, int64_t max_atoms,
                                                 double scale, c10::string_view precision) {
  check_precision(precision);
  check_attention_inputs(q, k, v, pos, psi, seg, valid, max_atoms);
  check_segment_values(seg, q.size(0), max_atoms);
  return attention_fwd_cpu(q, k, v, pos, psi, seg, valid, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> attention_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
    at::TensorList psi, const at::Tensor& seg, const std::optional<at::Tensor>& valid, int64_t max_atoms,
    double scale, c10::string_view precision, const at::Tensor& out, const at::Tensor& lse) {
  check_precision(precision);
  check_attention_inputs(q, k, v, pos, psi, seg, valid, max_atoms);
  check_segment_values(seg, q.size(0), max_atoms);
  check_attention_saved(q, dout, out, lse, q.scalar_type());
  return attention_bwd_cpu(dout, q, k, v, pos, psi, seg, valid, scale, out, lse);
}

at::Tensor encoding_fwd(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                        const std::optional<at::Tensor>& valid, int64_t max_atoms, c10::string_view precision) {
  check_precision(precision);
  check_encoding_inputs(pos, phi, seg, valid, max_atoms);
  check_segment_values(seg, pos.size(0), max_atoms);
  return encoding_fwd_cpu(pos, phi, seg, valid);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> encoding_bwd(const at::Tensor& ds, const at::Tensor& pos,
                                                             at::TensorList phi, const at::Tensor& seg,
                                                             const std::optional<at::Tensor>& valid, int64_t max_atoms,
                                                             c10::string_view precision) {
  check_precision(precision);
  check_encoding_inputs(pos, phi, seg, valid, max_atoms);
  check_segment_values(seg, pos.size(0), max_atoms);
  check_encoding_upstream(ds, pos, phi[0].scalar_type());
  return encoding_bwd_cpu(ds, pos, phi, seg, valid);
}

}  // namespace
}  // namespace gtk

TORCH_LIBRARY(gtkernels_C, m) {
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, Tensor seg, Tensor? valid, "
      "int max_atoms, float scale, str precision) -> (Tensor, Tensor)");
  m.def(
      "attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, Tensor seg, "
      "Tensor? valid, int max_atoms, float scale, str precision, Tensor out, Tensor lse) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor[])");
  m.def("encoding_fwd(Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid, int max_atoms, str precision) -> Tensor");
  m.def(
      "encoding_bwd(Tensor ds, Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid, int max_atoms, "
      "str precision) -> (Tensor, Tensor[])");
  // The CUDA kernels' program bodies run on the host (cpu/cuda_emulation.cpp), same schemas: for tests.
  m.def(
      "cuda_emulated_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, Tensor seg, "
      "Tensor? valid, int max_atoms, float scale, str precision) -> (Tensor, Tensor)");
  m.def(
      "cuda_emulated_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, "
      "Tensor seg, Tensor? valid, int max_atoms, float scale, str precision, Tensor out, Tensor lse) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor[])");
  m.def(
      "cuda_emulated_encoding_fwd(Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid, int max_atoms, "
      "str precision) -> Tensor");
  m.def(
      "cuda_emulated_encoding_bwd(Tensor ds, Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid, "
      "int max_atoms, str precision) -> (Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(gtkernels_C, CPU, m) {
  m.impl("attention_fwd", &gtk::attention_fwd);
  m.impl("attention_bwd", &gtk::attention_bwd);
  m.impl("encoding_fwd", &gtk::encoding_fwd);
  m.impl("encoding_bwd", &gtk::encoding_bwd);
}
