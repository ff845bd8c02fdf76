// ops_cpu.cpp — the CPU implementations of the gtkernels_C ops (schemas in ../ops.cpp): the input checks
// (../op_checks.h, seg's values included: seg is on the host), then the kernels of attention_cpu.cpp,
// encoding_cpu.cpp and relative_attention_cpu.cpp. As cuda/ops_cuda.cpp for the CUDA kernels, this file
// registers and the kernel files compute: each kernel file is a translation unit of its own, so the
// registration's templates do not change how the compiler inlines the kernels.
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../op_checks.h"
#include "schedule.h"

namespace gtk {
namespace {

// code's length for seg (on the host here, as every CPU input): P = Σ_b n_b².
void check_code_length(const at::Tensor& code, const at::Tensor& seg) {
  const int64_t* s = seg.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t b = 0; b + 1 < seg.numel(); ++b) total += (s[b + 1] - s[b]) * (s[b + 1] - s[b]);
  TORCH_CHECK(code.numel() == total, "gtkernels: code must hold P = sum of n_b^2 = ", total,
              " pair codes for seg, got ", code.numel());
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& pos, at::TensorList psi,
                                                     const at::Tensor& seg, const std::optional<at::Tensor>& valid,
                                                     int64_t max_atoms, double scale, c10::string_view precision) {
  check_precision(precision);
  check_attention_inputs(q, k, v, pos, psi, seg, valid, max_atoms);
  check_segment_values(seg, q.size(0), max_atoms);
  return run_attention_fwd(q, k, v, pos, psi, seg, valid, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
    at::TensorList psi, const at::Tensor& seg, const std::optional<at::Tensor>& valid, int64_t max_atoms,
    double scale, c10::string_view precision, const at::Tensor& out, const at::Tensor& lse) {
  check_precision(precision);
  check_attention_inputs(q, k, v, pos, psi, seg, valid, max_atoms);
  check_segment_values(seg, q.size(0), max_atoms);
  check_attention_saved(q, dout, out, lse, q.scalar_type());
  return run_attention_bwd(dout, q, k, v, pos, psi, seg, valid, scale, out, lse);
}

at::Tensor encoding_fwd_cpu(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                            const std::optional<at::Tensor>& valid, int64_t max_atoms, c10::string_view precision) {
  check_precision(precision);
  check_encoding_inputs(pos, phi, seg, valid, max_atoms);
  check_segment_values(seg, pos.size(0), max_atoms);
  return run_encoding_fwd(pos, phi, seg, valid);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> encoding_bwd_cpu(const at::Tensor& ds, const at::Tensor& pos,
                                                                 at::TensorList phi, const at::Tensor& seg,
                                                                 const std::optional<at::Tensor>& valid,
                                                                 int64_t max_atoms, c10::string_view precision) {
  check_precision(precision);
  check_encoding_inputs(pos, phi, seg, valid, max_atoms);
  check_segment_values(seg, pos.size(0), max_atoms);
  check_encoding_upstream(ds, pos, phi[0].scalar_type());
  return run_encoding_bwd(ds, pos, phi, seg, valid);
}

std::tuple<at::Tensor, at::Tensor> relative_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos, const at::Tensor& code,
    at::TensorList phi_k, at::TensorList phi_v, const std::optional<at::Tensor>& v_rel, const at::Tensor& seg,
    const std::optional<at::Tensor>& valid, const std::optional<at::Tensor>& dummy, int64_t max_atoms) {
  check_relative_inputs(q, k, v, pos, code, phi_k, phi_v, v_rel, seg, valid, dummy, max_atoms);
  check_segment_values(seg, q.size(0), max_atoms);
  check_code_length(code, seg);
  return run_relative_attention_fwd(q, k, v, pos, code, phi_k, phi_v, v_rel, seg, valid, dummy);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           at::Tensor>
relative_attention_bwd_cpu(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& pos, const at::Tensor& code, at::TensorList phi_k,
                           at::TensorList phi_v, const std::optional<at::Tensor>& v_rel, const at::Tensor& seg,
                           const std::optional<at::Tensor>& valid, const std::optional<at::Tensor>& dummy,
                           int64_t max_atoms, const at::Tensor& out, const at::Tensor& lse) {
  check_relative_inputs(q, k, v, pos, code, phi_k, phi_v, v_rel, seg, valid, dummy, max_atoms);
  check_segment_values(seg, q.size(0), max_atoms);
  check_code_length(code, seg);
  check_attention_saved(q, dout, out, lse, q.scalar_type());
  return run_relative_attention_bwd(dout, q, k, v, pos, code, phi_k, phi_v, v_rel, seg, valid, dummy, out, lse);
}

}  // namespace
}  // namespace gtk

TORCH_LIBRARY_IMPL(gtkernels_C, CPU, m) {
  m.impl("attention_fwd", &gtk::attention_fwd_cpu);
  m.impl("attention_bwd", &gtk::attention_bwd_cpu);
  m.impl("encoding_fwd", &gtk::encoding_fwd_cpu);
  m.impl("encoding_bwd", &gtk::encoding_bwd_cpu);
  m.impl("relative_attention_fwd", &gtk::relative_attention_fwd_cpu);
  m.impl("relative_attention_bwd", &gtk::relative_attention_bwd_cpu);
}
