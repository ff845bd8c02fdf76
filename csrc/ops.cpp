// ops.cpp — the gtkernels_C operator library: schemas (TORCH_LIBRARY), input checks and the CPU
// implementations (TORCH_LIBRARY_IMPL). Layout "segments of rows" (covers padded and packed batches):
//   q, k, v, out, dout : contiguous [R, H, D], one floating dtype (float32/float64), as are the ψ / φ
//   parameters [W0, b0, ..., Wn, bn] (nn.Linear layout, first in = 1, last out = 1);
//   pos : [R, 3] always float64 (distances in float64: far-apart fragments keep their precision);
//   seg   : int64 [B + 1], seg[0] = 0, seg[B] = R, non-decreasing (molecule b owns rows seg[b]..seg[b+1]-1);
//   valid : optional bool [R] (None: every row is an atom; False: padding row).
#include <torch/library.h>

#include "cpu/cpu_common.h"

namespace gtk {
namespace {

void check_rows_tensor(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, "gtkernels: ", name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "gtkernels: ", name, " must be contiguous");
  TORCH_CHECK(t.device().is_cpu(), "gtkernels: ", name, " must be a CPU tensor for the CPU kernels, got ",
              t.device());
}

void check_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, "gtkernels: ", name, " has dtype ", t.scalar_type(), " but expected ",
              dtype, " (all floating inputs must share one dtype)");
}

// seg: int64 [B+1] with seg[0] = 0, seg[B] = R, non-decreasing; valid: bool [R] when given.
void check_segments(const at::Tensor& seg, const std::optional<at::Tensor>& valid, int64_t R) {
  TORCH_CHECK(seg.scalar_type() == at::kLong, "gtkernels: seg must be int64, got ", seg.scalar_type());
  TORCH_CHECK(seg.dim() == 1 && seg.numel() >= 1, "gtkernels: seg must be 1-D of length B + 1 >= 1, got shape ",
              seg.sizes());
  TORCH_CHECK(seg.is_contiguous() && seg.device().is_cpu(), "gtkernels: seg must be a contiguous CPU tensor");
  const int64_t* s = seg.data_ptr<int64_t>();
  const int64_t B = seg.numel() - 1;
  TORCH_CHECK(s[0] == 0, "gtkernels: seg[0] must be 0, got ", s[0]);
  TORCH_CHECK(s[B] == R, "gtkernels: seg[-1] must equal the number of rows ", R, ", got ", s[B]);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(s[b] <= s[b + 1], "gtkernels: seg must be non-decreasing, got seg[", b, "] = ", s[b], " > seg[",
                b + 1, "] = ", s[b + 1]);
  }
  if (valid.has_value()) {
    const at::Tensor& m = *valid;
    TORCH_CHECK(m.scalar_type() == at::kBool, "gtkernels: valid must be a bool tensor, got ", m.scalar_type());
    TORCH_CHECK(m.dim() == 1 && m.size(0) == R, "gtkernels: valid must have shape [", R, "], got ", m.sizes());
    TORCH_CHECK(m.is_contiguous() && m.device().is_cpu(), "gtkernels: valid must be a contiguous CPU tensor");
  }
}

// MLP parameters [W0, b0, ..., Wn, bn]: 1..kMaxLayers Linear layers, W [out, in], b [out], layer 0 in = 1,
// last out = 1, consecutive widths matching, every width <= kMaxWidth, dtype as the inputs, CPU.
void check_mlp(at::TensorList params, const char* name, at::ScalarType dtype) {
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK(n >= 2 && n % 2 == 0, "gtkernels: ", name,
              " must be a list [W0, b0, ..., Wn, bn] of an even, non-zero number of tensors, got ", n);
  const int64_t L = n / 2;
  TORCH_CHECK(L <= gt::kMaxLayers, "gtkernels: ", name, " has ", L, " Linear layers; at most ", gt::kMaxLayers,
              " are supported");
  int64_t prev_out = 1;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& W = params[2 * l];
    const at::Tensor& b = params[2 * l + 1];
    TORCH_CHECK(W.dim() == 2, "gtkernels: ", name, " weight ", l, " must be 2-D [out, in], got shape ", W.sizes());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == W.size(0), "gtkernels: ", name, " bias ", l, " must have shape [",
                W.size(0), "], got ", b.sizes());
    TORCH_CHECK(W.size(1) == prev_out, "gtkernels: ", name, " weight ", l, " has in = ", W.size(1),
                " but the previous layer's out (or the scalar input) is ", prev_out);
    TORCH_CHECK(W.size(0) >= 1 && W.size(0) <= gt::kMaxWidth, "gtkernels: ", name, " weight ", l, " has width ",
                W.size(0), "; widths must be in 1..", gt::kMaxWidth);
    check_dtype(W, name, dtype);
    check_dtype(b, name, dtype);
    TORCH_CHECK(W.device().is_cpu() && b.device().is_cpu(), "gtkernels: ", name, " must be CPU tensors");
    prev_out = W.size(0);
  }
  TORCH_CHECK(prev_out == 1, "gtkernels: the last layer of ", name, " must have out = 1, got ", prev_out);
}

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "gtkernels: ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
                            at::TensorList psi, const at::Tensor& seg, const std::optional<at::Tensor>& valid) {
  check_floating(q, "q");
  check_rows_tensor(q, "q", 3);
  check_rows_tensor(k, "k", 3);
  check_rows_tensor(v, "v", 3);
  check_rows_tensor(pos, "pos", 2);
  const auto dtype = q.scalar_type();
  check_dtype(k, "k", dtype);
  check_dtype(v, "v", dtype);
  check_dtype(pos, "pos", at::kDouble);
  TORCH_CHECK(q.size(1) >= 1 && q.size(2) >= 1, "gtkernels: q must be [R, H, D] with H >= 1 and D >= 1, got ",
              q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "gtkernels: q, k, v must have the same shape [R, H, D], got ", q.sizes(), ", ", k.sizes(), ", ",
              v.sizes());
  TORCH_CHECK(pos.size(0) == q.size(0) && pos.size(1) == 3, "gtkernels: pos must have shape [", q.size(0),
              ", 3], got ", pos.sizes());
  check_mlp(psi, "psi", dtype);
  check_segments(seg, valid, q.size(0));
}

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const at::Tensor& pos, at::TensorList psi, const at::Tensor& seg,
                                                 const std::optional<at::Tensor>& valid, double scale) {
  check_attention_inputs(q, k, v, pos, psi, seg, valid);
  return attention_fwd_cpu(q, k, v, pos, psi, seg, valid, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> attention_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
    at::TensorList psi, const at::Tensor& seg, const std::optional<at::Tensor>& valid, double scale,
    const at::Tensor& out, const at::Tensor& lse) {
  check_attention_inputs(q, k, v, pos, psi, seg, valid);
  const auto dtype = q.scalar_type();
  check_rows_tensor(dout, "dout", 3);
  check_rows_tensor(out, "out", 3);
  check_rows_tensor(lse, "lse", 2);
  check_dtype(dout, "dout", dtype);
  check_dtype(out, "out", dtype);
  check_dtype(lse, "lse", dtype);
  TORCH_CHECK(dout.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "gtkernels: dout and out must have the shape of q ", q.sizes(), ", got ", dout.sizes(), " and ",
              out.sizes());
  TORCH_CHECK(lse.size(0) == q.size(0) && lse.size(1) == q.size(1), "gtkernels: lse must have shape [", q.size(0),
              ", ", q.size(1), "], got ", lse.sizes());
  return attention_bwd_cpu(dout, q, k, v, pos, psi, seg, valid, scale, out, lse);
}

void check_encoding_inputs(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                           const std::optional<at::Tensor>& valid) {
  check_rows_tensor(pos, "pos", 2);
  check_dtype(pos, "pos", at::kDouble);
  TORCH_CHECK(pos.size(1) == 3, "gtkernels: pos must have shape [R, 3], got ", pos.sizes());
  TORCH_CHECK(!phi.empty(), "gtkernels: phi must not be empty");
  check_floating(phi[0], "phi[0]");
  check_mlp(phi, "phi", phi[0].scalar_type());
  check_segments(seg, valid, pos.size(0));
}

at::Tensor encoding_fwd(const at::Tensor& pos, at::TensorList phi, const at::Tensor& seg,
                        const std::optional<at::Tensor>& valid) {
  check_encoding_inputs(pos, phi, seg, valid);
  return encoding_fwd_cpu(pos, phi, seg, valid);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> encoding_bwd(const at::Tensor& ds, const at::Tensor& pos,
                                                             at::TensorList phi, const at::Tensor& seg,
                                                             const std::optional<at::Tensor>& valid) {
  check_encoding_inputs(pos, phi, seg, valid);
  check_rows_tensor(ds, "ds", 1);
  check_dtype(ds, "ds", phi[0].scalar_type());
  TORCH_CHECK(ds.size(0) == pos.size(0), "gtkernels: ds must have shape [", pos.size(0), "], got ", ds.sizes());
  return encoding_bwd_cpu(ds, pos, phi, seg, valid);
}

}  // namespace
}  // namespace gtk

TORCH_LIBRARY(gtkernels_C, m) {
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, Tensor seg, Tensor? valid, "
      "float scale) -> (Tensor, Tensor)");
  m.def(
      "attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor pos, Tensor[] psi, Tensor seg, "
      "Tensor? valid, float scale, Tensor out, Tensor lse) -> (Tensor, Tensor, Tensor, Tensor, Tensor[])");
  m.def("encoding_fwd(Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid) -> Tensor");
  m.def("encoding_bwd(Tensor ds, Tensor pos, Tensor[] phi, Tensor seg, Tensor? valid) -> (Tensor, Tensor[])");
}

TORCH_LIBRARY_IMPL(gtkernels_C, CPU, m) {
  m.impl("attention_fwd", &gtk::attention_fwd);
  m.impl("attention_bwd", &gtk::attention_bwd);
  m.impl("encoding_fwd", &gtk::encoding_fwd);
  m.impl("encoding_bwd", &gtk::encoding_bwd);
}
